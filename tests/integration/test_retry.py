"""Retry schedules and the cluster-wide actions of smtp-pattern-list, on one
PostgreSQL: retry-after as a list (entry n after attempt n, the last
repeating), retry-recipients-after for a 4xx at RCPT, defer-queue from one
node stopping the queue on all three nodes within a second,
disable-source-ip moving a pool's traffic to its other member until
reenable-after, and the configuration errors of a bad list."""
import os
import subprocess
import threading
import time
import unittest

from dnsserver import DnsServer
from sink import Delay
from pgmta_test import PGMTAD, PgServer, Pgmtad, copy_submit, free_port, main, mx_sink, tmpdir, \
    wait_for, wait_queue_empty

# Jitter: a delay d is drawn in [0.8 d, 1.2 d] (POLICY_JITTER); on top come
# the attempt itself and the node picking the queue up again (poll-interval
# 200 ms in the tests): at most SLACK seconds.
JITTER = 0.2
SLACK = 0.9


def attempt_times(pg, rcpt):
    return [r[0] for r in pg.query(
        "SELECT extract(epoch FROM time_logged)::float8 FROM mta.acct "
        "WHERE type = 't' AND rcpt = %s ORDER BY time_logged", (rcpt,))]


class Retry(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg, cls.dns = PgServer(), DnsServer()

    def check_gaps(self, times, want):
        gaps = [b - a for a, b in zip(times, times[1:])]
        self.assertEqual(len(gaps), len(want), (gaps, want))
        for g, d in zip(gaps, want):
            self.assertGreaterEqual(g, d * (1 - JITTER), (gaps, want))
            self.assertLessEqual(g, d * (1 + JITTER) + SLACK, (gaps, want))

    def test_retry_list_and_rcpt_list(self):
        pg = self.pg
        port = free_port("127.0.0.61")
        # DATA always 451; RCPT of rcpt-*@ always 450
        sink = mx_sink(self.dns, "rl.test", "127.0.0.61", port,
                       rules={"rcpt:rcpt-*": "450 4.2.1 mailbox busy",
                              "dot:*": "451 4.3.0 try again later"})
        copy_submit(pg, [("s@example.com", "data-1@rl.test", "Subject: 1\r\n\r\nx\r\n", None),
                         ("s@example.com", "rcpt-1@rl.test", "Subject: 2\r\n\r\nx\r\n", None)])
        node = Pgmtad(pg, self.dns, name="node-rl", extra="smtp-port = %d;" % port,
                      env={"PGMTA_LOG_LEVEL": "warn"}, domains=[
                          '{ name = "rl.test"; retry-after = "1s, 2s, 5s"; '
                          'retry-recipients-after = "2s, 1s"; max-retry-after = "1s"; }'])
        try:
            # data-1: 1, 2, 5, 5 (the last repeats; max-retry-after does not cap a list)
            wait_for(lambda: len(attempt_times(pg, "data-1@rl.test")) >= 5, timeout=30,
                     what="five attempts")
            rcpt = attempt_times(pg, "rcpt-1@rl.test")
        finally:
            node.stop()
            sink.stop()
        self.check_gaps(attempt_times(pg, "data-1@rl.test")[:5], [1, 2, 5, 5])
        # rcpt-1, refused at RCPT: its own list 2, 1, 1, ...
        self.assertGreaterEqual(len(rcpt), 6, rcpt)
        self.check_gaps(rcpt[:6], [2, 1, 1, 1, 1])
        # the next attempt written for data-1 follows the last entry
        nxt = pg.scalar("SELECT extract(epoch FROM next_attempt - (SELECT max(time_logged) "
                        "FROM mta.acct WHERE rcpt = 'data-1@rl.test'))::float8 "
                        "FROM mta.recipients WHERE rcpt = 'data-1@rl.test'")
        if nxt is not None and nxt > 0:
            self.assertGreaterEqual(nxt, 5 * (1 - JITTER) - 0.1)
            self.assertLessEqual(nxt, 5 * (1 + JITTER) + 0.1)
        pg.query("DELETE FROM mta.recipients WHERE domain = 'rl.test'")

    def test_defer_queue_stops_every_node_within_a_second(self):
        pg = self.pg
        port = free_port("127.0.0.62")
        lock = threading.Lock()
        state = {"dots": [], "matched": None}

        def behaviour(sess, event, subject):
            if event != "dot":
                return None
            with lock:
                now = time.time()
                state["dots"].append(now)
                if len(state["dots"]) == 60:
                    state["matched"] = now
                    return "451 4.7.0 too much mail, try again tomorrow"
            return "250 ok"

        sink = mx_sink(self.dns, "dq.test", "127.0.0.62", port,
                       behaviour=behaviour)
        copy_submit(pg, [("s@example.com", "u%d@%s" % (n, d), "Subject: %d\r\n\r\nx\r\n" % n,
                          None) for n in range(250) for d in ("dq.test",)])
        # A rate limit makes every connection claim small batches again and
        # again: the connections of B and C stay open across the defer, so
        # only the claim's check can stop them.
        domains = ['{ name = "dq.test"; retry-after = "3s"; max-smtp-out = 6; '
                   'max-msg-per-connection = 1000; max-msg-rate = "60/s"; '
                   'smtp-pattern-list = ( { pattern = "try again tomorrow"; '
                   'action = "defer-queue"; } ); }']
        nodes = [Pgmtad(pg, self.dns, name="node-dq-%s" % n, extra="smtp-port = %d;" % port,
                        env={"PGMTA_LOG_LEVEL": "warn"}, domains=domains) for n in "abc"]
        try:
            wait_for(lambda: state["matched"], timeout=30, what="the defer-queue reply")
            t = state["matched"]
            # visible in SQL on every pipe of the queue, with the reason
            row = wait_for(lambda: pg.query(
                "SELECT extract(epoch FROM deferred_until)::float8, last_error FROM mta.queues "
                "WHERE domain = 'dq.test' AND deferred_until IS NOT NULL"), timeout=2,
                what="deferred_until in mta.queues")
            self.assertGreater(row[0][0], t + 2.0)
            self.assertLess(row[0][0], t + 3.6)
            self.assertIn("try again tomorrow", row[0][1])
            time.sleep(max(0.0, t + 2.5 - time.time()))
            with lock:
                late = [d - t for d in state["dots"] if t + 1.0 < d < t + 2.5]
            conns = [s.connect_time - t for s in sink.sessions()
                     if t + 1.0 < s.connect_time < t + 2.5]
            self.assertEqual(late, [], "messages accepted after the defer")
            self.assertEqual(conns, [], "connections opened after the defer")
            # it ends by itself
            wait_queue_empty(pg, timeout=60, node=nodes[0])
            with lock:
                resumed = [d - t for d in state["dots"] if d > t + 2.5]
            self.assertGreater(len(resumed), 0)
            self.assertGreaterEqual(min(resumed), 3.0 * 0.9)
            self.assertIsNone(pg.scalar("SELECT deferred_until FROM mta.queues "
                                        "WHERE domain = 'dq.test' LIMIT 1"))
        finally:
            for n in nodes:
                n.stop()
            sink.stop()
        # more than one node was sending: the stop was cluster-wide, not one node's
        self.assertGreaterEqual(pg.scalar("SELECT count(DISTINCT node) FROM mta.acct "
                                          "WHERE type = 'd' AND rcpt LIKE '%%@dq.test'"), 2)

    def test_disable_source_ip_moves_the_pool_to_its_other_member(self):
        pg = self.pg
        port = free_port("127.0.0.63")
        lock = threading.Lock()
        state = {"blocked": None}

        def behaviour(sess, event, subject):
            # the receiver refuses one source address only
            if event == "dot" and sess.peer[0] == "127.0.0.2":
                with lock:
                    if state["blocked"] is None:
                        state["blocked"] = time.time()
                return "451 4.7.1 blocked ip 127.0.0.2, try another"
            return None

        sink = mx_sink(self.dns, "dis.test", "127.0.0.63", port, behaviour=behaviour,
                       rules={"dot:*": Delay(0.05, "250 ok")})
        copy_submit(pg, [("s@example.com", "p%d@dis.test" % n, "Subject: %d\r\n\r\nx\r\n" % n,
                          "pool-dis") for n in range(150)],
                    columns=("mail_from", "rcpt_to", "content", "vmta"))
        extra = ('smtp-port = %d; virtual-mtas = ( { name = "dis2"; smtp-source-host = "127.0.0.2"; }, '
                 '{ name = "dis3"; smtp-source-host = "127.0.0.3"; } ); '
                 'virtual-mta-pools = ( { name = "pool-dis"; virtual-mtas = [ "dis2", "dis3" ]; } );'
                 % port)
        domains = ['{ name = "dis.test"; max-smtp-out = 2; max-msg-per-connection = 2; '
                   'reenable-after = "4s"; smtp-pattern-list = ( { pattern = "blocked ip"; '
                   'action = "disable-source-ip"; } ); }']
        nodes = [Pgmtad(pg, self.dns, name="node-dis-%s" % n, extra=extra, domains=domains,
                        env={"PGMTA_LOG_LEVEL": "warn"}) for n in "ab"]
        try:
            wait_for(lambda: state["blocked"], timeout=20, what="the blocked reply")
            t = state["blocked"]
            row = wait_for(lambda: pg.query(
                "SELECT extract(epoch FROM until)::float8, reason FROM mta.source_ip_disabled "
                "WHERE domain = 'dis.test' AND source_ip = '127.0.0.2' AND until > now()"),
                timeout=2, what="the disabled source IP in SQL")
            self.assertGreater(row[0][0], t + 3.0)
            self.assertLess(row[0][0], t + 5.0)
            self.assertIn("blocked ip", row[0][1])
            time.sleep(max(0.0, t + 3.8 - time.time()))
            during = [s.peer[0] for s in sink.sessions() if t + 1.0 < s.connect_time < t + 3.8]
            self.assertGreater(len(during), 0, "no traffic while the address was disabled")
            self.assertEqual(set(during), {"127.0.0.3"}, during)
            # reenabled after reenable-after: 127.0.0.2 is used again
            wait_for(lambda: [s for s in sink.sessions()
                              if s.peer[0] == "127.0.0.2" and s.connect_time > t + 4.0],
                     timeout=10, what="127.0.0.2 used again after reenable-after")
        finally:
            for n in nodes:
                n.stop()
            sink.stop()
        pg.query("DELETE FROM mta.recipients WHERE domain = 'dis.test'")

    def test_config_errors(self):
        d = tmpdir("pgmta-retry-conf-")
        cases = [
            ('retry-after = "%s";' % ", ".join(["1m"] * 31), "more than 30 entries"),
            ('retry-recipients-after = "5m, soon";', 'bad entry 2 "soon"'),
            ('backoff-retry-after = "1m, 0s";', "entry 2 must be longer than 0"),
        ]
        for body, why in cases:
            path = os.path.join(d, "pgmta.conf")
            with open(path, "w") as f:
                f.write('database = { url = "postgresql:///mta"; };\n'
                        'domains = ( { name = "*";\n  %s } );\n' % body)
            r = subprocess.run([PGMTAD, "--check", "-c", path], capture_output=True, text=True)
            self.assertNotEqual(r.returncode, 0, body)
            self.assertIn("%s:3: " % path, r.stderr, r.stderr)
            self.assertIn(why, r.stderr)
        # 30 entries are fine
        with open(path, "w") as f:
            f.write('database = { url = "postgresql:///mta"; };\n'
                    'domains = ( { name = "*";\n  retry-after = "%s"; } );\n'
                    % ", ".join(["1m"] * 30))
        r = subprocess.run([PGMTAD, "--check", "-c", path], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('retry-after = "%s"' % ", ".join(["1m"] * 30), r.stdout)


if __name__ == "__main__":
    main()
