"""A rate-limited queue's new connection: one round trip before it
connects (the slot, and in parallel one statement with the connect token,
the message tokens and the claim: state slot+tokens+claim, then resolve),
and a queue holding one message spends one message token, not a burst."""
import os
import re
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, copy_submit, free_port, main, mx_sink, wait_for


class RatedSession(unittest.TestCase):
    def test_one_round_trip_and_one_token(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.53")
        sink = mx_sink(dns, "one.test", "127.0.0.53", port)
        node = Pgmtad(pg, dns, extra="smtp-port = %d;" % port, domains=[
            '{ name = "one.test"; max-msg-rate = "600/m"; max-connect-rate = "60/m";'
            ' max-smtp-out = 2; max-msg-per-connection = 100; }'],
            env=dict(os.environ, PGMTA_LOG_LEVEL="trace"))
        copy_submit(pg, [("s@example.com", "u@one.test", "Subject: 1\r\n\r\nx\r\n", None)])
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'") == 1,
                 timeout=30, what="the message delivered")
        node.stop()
        self.assertEqual(len(sink.messages()), 1)

        log = node.log()
        lines = [l for l in log.splitlines() if "queue=one.test" in l and "session=" in l]
        sessions = {re.search(r"session=(\d+)", l).group(1) for l in lines}
        self.assertEqual(len(sessions), 1, "one session for one message")
        states = [re.search(r"to=(\S+)", l).group(1) for l in lines if "event=state" in l]
        self.assertEqual(states[:2], ["slot+tokens+claim", "resolve"], states)
        events = [re.search(r"event=(\S+) state=slot\+tokens\+claim", l).group(1)
                  for l in lines if "state=slot+tokens+claim" in l]
        # the two answers of the one round trip (slot and claim in parallel)
        self.assertEqual(sorted(events), ["slot", "tokens-claimed"], events)
        for st in ("connect-token", "tokens", "claim"):
            self.assertNotIn(st, states[:2])

        # The claim spent one of the 10 message tokens of 600/m's burst and
        # the one connect token of 60/m; nothing has used the buckets since,
        # so their rows hold what the claim left.
        msg = pg.scalar("SELECT tokens FROM mta.rate_bucket WHERE domain = 'one.test'"
                        " AND kind = 'msg'")
        conn = pg.scalar("SELECT tokens FROM mta.rate_bucket WHERE domain = 'one.test'"
                         " AND kind = 'connect'")
        self.assertAlmostEqual(msg, 9.0, places=3)
        self.assertAlmostEqual(conn, 0.0, places=3)

    def test_exhausted_tokens_postpone_and_resume(self):
        """A bucket without tokens: the new connection gets the wait in the
        claim's answer, no row is leased, and the mail goes once a token is
        due."""
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.54")
        sink = mx_sink(dns, "slow.test", "127.0.0.54", port)
        # 30/m: one token every 2 s, a burst of 1
        node = Pgmtad(pg, dns, extra="smtp-port = %d;" % port, domains=[
            '{ name = "slow.test"; max-msg-rate = "30/m"; max-smtp-out = 2; }'],
            env=dict(os.environ, PGMTA_LOG_LEVEL="debug"))
        copy_submit(pg, [("s@example.com", "u%d@slow.test" % n, "Subject: %d\r\n\r\nx\r\n" % n,
                          None) for n in range(3)])
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'") == 3,
                 timeout=30, what="3 messages at 30/m")
        node.stop()
        first, last = pg.query("SELECT min(time_logged), max(time_logged) FROM mta.acct"
                               " WHERE type = 'd'")[0]
        # 3 messages with a burst of 1 at one per 2 s: about 4 s
        self.assertGreaterEqual((last - first).total_seconds(), 3.0)
        self.assertLess((last - first).total_seconds(), 20.0)
        self.assertEqual(len(sink.messages()), 3)


if __name__ == "__main__":
    main()
