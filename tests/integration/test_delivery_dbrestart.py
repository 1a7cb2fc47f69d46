"""PostgreSQL restarted (pg_ctl restart -m immediate) in the middle of a run:
pgmtad keeps running, reconnects with backoff and loses nothing; every
recipient ends with exactly one final accounting row. Housekeeping then
purges the content of finished messages. And the database gone for a
while (stopped, so every request of the pipe process fails at once) and
back: the pipe process keeps starting delivery sessions for new mail."""
import collections
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import (PgServer, Pgmtad, copy_submit, free_port, main, mx_sink, wait_for,
                        wait_queue_empty)
from sink import Delay

N = 2000


class DatabaseRestart(unittest.TestCase):
    def test_restart_immediate_mid_run(self):
        pg = PgServer()
        dns = DnsServer()
        port = free_port("127.0.0.45")
        sink = mx_sink(dns, ["r%d.test" % i for i in range(4)], "127.0.0.45", port,
                       rules={"dot:*": Delay(0.01, "250 ok")})
        copy_submit(pg, [("s@example.com", "u%d@r%d.test" % (n, n % 4),
                          "Subject: %d\r\n\r\nbody\r\n" % n, None) for n in range(N)])
        node = Pgmtad(pg, dns, extra='smtp-port = %d; lease-time = "20s";' % port,
                      defaults="max-smtp-out = 3; max-msg-per-connection = 30;",
                      env={"PGMTA_HOUSEKEEPING_MS": "500"})
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'") > N // 4,
                 timeout=60, what="deliveries to start")
        pg.restart("immediate")
        wait_queue_empty(pg, timeout=120, node=node)
        self.assertTrue(node.proc.alive(), "pgmtad died with the database")
        log = node.log()
        self.assertIn("event=connection-lost", log)

        bad = pg.query("SELECT rcpt_id, count(*) FROM mta.acct WHERE type IN ('d', 'b') "
                       "GROUP BY rcpt_id HAVING count(*) <> 1")
        self.assertEqual(bad, [])
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), N)
        seen = collections.Counter(r for m in sink.messages() for r in m.rcpts)
        self.assertEqual(len(seen), N)
        # housekeeping removes the content of finished messages
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.messages") == 0, timeout=30,
                 what="finished messages to be purged")
        self.assertEqual(node.stop(), 0)

    def test_sessions_start_after_database_away_and_back(self):
        pg = PgServer()
        dns = DnsServer()
        port = free_port("127.0.0.46")
        sink = mx_sink(dns, ["b%d.test" % i for i in range(3)], "127.0.0.46", port)
        node = Pgmtad(pg, dns, extra='smtp-port = %d;' % port)
        copy_submit(pg, [("s@example.com", "first%d@b%d.test" % (n, n % 3),
                          "Subject: %d\r\n\r\nbody\r\n" % n, None) for n in range(30)])
        wait_queue_empty(pg, timeout=60, node=node)
        for rnd in range(2):
            # Away long enough for every tick, heartbeat and the slot
            # session to fail against the dead server, then back.
            pg.stop("immediate")
            wait_for(lambda: node.log().count("event=connection-lost") > 0, timeout=30,
                     what="the node to notice the database is gone")
            time.sleep(3)
            pg.start()
            copy_submit(pg, [("s@example.com", "r%d-%d@b%d.test" % (rnd, n, n % 3),
                              "Subject: %d\r\n\r\nbody\r\n" % n, None) for n in range(30)])
            # New sessions start: the new mail is delivered, not just queued
            wait_queue_empty(pg, timeout=60, node=node)
            self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' "
                                       "AND rcpt LIKE %s", ("r%d-%%" % rnd,)), 30)
        self.assertTrue(node.proc.alive(), "pgmtad died with the database")
        seen = collections.Counter(r for m in sink.messages() for r in m.rcpts)
        self.assertEqual(len([r for r in seen if r.startswith("r")]), 60)
        self.assertEqual(node.stop(), 0)


if __name__ == "__main__":
    main()
