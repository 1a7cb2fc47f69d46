"""End to end: queues held back for a long time never starve the others.
1,100 queues are throttled by max-msg-rate = "1/h" with older mail waiting
(one message each delivered, the second must wait an hour); then 200
messages to 200 other domains arrive and must all be delivered within 30 s
(mta.ready_queues rotates over the ready queues instead of offering the
oldest ones for ever)."""
import time
import unittest

from pgmta_test import PgServer, Pgmtad, copy_submit, free_port, main, wait_for
from sink import Sink

N_BLOCKED = 1100
N_FRESH = 200


class Starvation(unittest.TestCase):
    def test_blocked_queues_do_not_starve_new_ones(self):
        pg = PgServer()
        port = free_port()
        sink = Sink(host="127.0.0.1", port=port)
        blocked = ["b%04d.slow.test" % i for i in range(N_BLOCKED)]
        copy_submit(pg, [("s@example.com", "u%d@%s" % (k, d), "Subject: %s %d\r\n\r\nx\r\n" % (d, k),
                          None) for k in range(2) for d in blocked])
        node = Pgmtad(pg, defaults='route = "127.0.0.1:%d"' % port,
                      env={"PGMTA_LOG_LEVEL": "warn"},
                      domains=['{ name = "*.slow.test"; max-msg-rate = "1/h"; }'])
        # One message of each throttled queue goes out; the second waits.
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'") >= N_BLOCKED,
                 timeout=180, interval=0.5, what="one delivery per throttled queue")
        time.sleep(2)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), N_BLOCKED)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.recipients"), N_BLOCKED)
        self.assertEqual(pg.scalar("SELECT count(DISTINCT domain) FROM mta.recipients"
                                   " WHERE next_attempt <= now() OR owner IS NOT NULL"),
                         N_BLOCKED, "every throttled queue still has its older mail waiting")

        fresh = ["f%03d.fast.test" % i for i in range(N_FRESH)]
        t0 = time.monotonic()
        copy_submit(pg, [("s@example.com", "u@" + d, "Subject: %s\r\n\r\nx\r\n" % d, None)
                         for d in fresh])

        def fresh_delivered():
            return pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"
                             " AND rcpt LIKE '%%@f%%.fast.test'")
        try:
            wait_for(lambda: fresh_delivered() == N_FRESH, timeout=30, interval=0.2,
                     what="the 200 new messages")
        finally:
            took = time.monotonic() - t0
            print("200 new messages: %d delivered after %.1f s" % (fresh_delivered(), took))
        self.assertEqual(len({m.rcpts[0] for m in sink.messages()
                              if m.rcpts[0].endswith(".fast.test")}), N_FRESH)
        # The throttled queues are still held: no second message went out.
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"
                                   " AND rcpt LIKE '%%.slow.test'"), N_BLOCKED)
        node.stop()


if __name__ == "__main__":
    main()
