"""End to end: the long tail of destinations. 5,000 domains with 2 messages
each, one pgmtad, every domain routed to one sink by a "*" route: every
recipient is delivered exactly once and has exactly one 'd' accounting row,
and no queue is left behind. The claims of the sessions a poll starts go
out together, several queues per mta.claim_many."""
import collections
import re
import time
import unittest

from pgmta_test import PgServer, Pgmtad, copy_submit, free_port, main, wait_queue_empty
from sink import Sink

N_DOMAINS = 5000
PER_DOMAIN = 2


class LongTail(unittest.TestCase):
    def test_five_thousand_domains_two_messages_each(self):
        pg = PgServer()
        port = free_port()
        sink = Sink(host="127.0.0.1", port=port)
        rcpts = ["u%d@t%04d.tail.test" % (k, i) for i in range(N_DOMAINS)
                 for k in range(PER_DOMAIN)]
        copy_submit(pg, [("s@example.com", r, "Subject: %s\r\n\r\nbody %s\r\n" % (r, r), None)
                         for r in rcpts])
        self.assertEqual(pg.scalar("SELECT count(DISTINCT domain) FROM mta.recipients"),
                         N_DOMAINS)
        t0 = time.monotonic()
        # One Python sink takes the connections of 5,000 destinations, up to
        # 512 at once: it greets some of them after more than the tests'
        # usual 5 s (a real receiver has 5 minutes, RFC 5321 4.5.3.2).
        node = Pgmtad(pg, defaults='route = "127.0.0.1:%d"; command-timeout = "60s"' % port,
                      env={"PGMTA_LOG_LEVEL": "warn"})
        wait_queue_empty(pg, timeout=400, node=node)
        took = time.monotonic() - t0
        node.stop()
        print("%d messages over %d domains: %.1f s" % (len(rcpts), N_DOMAINS, took))
        got = collections.Counter(r for m in sink.messages() for r in m.rcpts)
        self.assertEqual(set(got), set(rcpts))
        self.assertEqual(max(got.values()), 1, "a recipient was delivered twice")
        rows = dict(pg.query("SELECT rcpt, count(*) FROM mta.acct WHERE type = 'd'"
                             " GROUP BY rcpt"))
        self.assertEqual(set(rows), set(rcpts))
        self.assertEqual(set(rows.values()), {1})
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type IN ('b', 't')"), 0)
        for m in sink.messages()[:50]:
            self.assertIn(b"body " + m.rcpts[0].encode(), m.content)

    def test_claims_of_many_queues_in_one_statement(self):
        pg = PgServer()
        port = free_port()
        sink = Sink(host="127.0.0.1", port=port)
        rcpts = ["u@g%03d.group.test" % i for i in range(300)]
        copy_submit(pg, [("s@example.com", r, "Subject: x\r\n\r\nbody\r\n", None)
                         for r in rcpts])
        node = Pgmtad(pg, defaults='route = "127.0.0.1:%d"; command-timeout = "60s"' % port,
                      env={"PGMTA_LOG_LEVEL": "debug"})
        wait_queue_empty(pg, timeout=120, node=node)
        node.stop()
        self.assertEqual(sorted(r for m in sink.messages() for r in m.rcpts), sorted(rcpts))
        groups = [int(n) for n in re.findall(r"event=claim-group queues=(\d+)", node.log())]
        claimed = len(re.findall(r"event=claimed rcpts=1 ", node.log()))
        self.assertEqual(claimed, 300, "one claim per queue")
        self.assertEqual(sum(groups), 300, "every claim went in a group")
        self.assertLess(len(groups), 30, "claims were sent together: %s" % groups)
        self.assertLessEqual(max(groups), 64)


if __name__ == "__main__":
    main()
