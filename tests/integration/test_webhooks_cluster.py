"""Webhooks on two nodes of one database with the same webhooks configuration.

Consumer "all" posts to a receiver on loopback that records which node sent
each batch (X-Pgmta-Node); consumer "down" points at a port where nothing
listens. While both nodes live, one node holds each consumer's advisory
lock and every batch of "all" comes from it; 200 messages are delivered
within a generous bound while "down" keeps failing, and mta.webhook_lag
shows the events "down" is behind. Then the whole node that holds "all"
(root and every child) is killed with SIGKILL while batches are in flight:
PostgreSQL releases the lock when the dead backend's connection goes, the
other node takes "all" over within a bound, and at the end every event of
mta.acct reached the receiver, in (time_logged, id) order, signed, with
duplicates only of the batch in flight at the kill."""
import os
import re
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import Pgmtad, PgServer, copy_submit, free_port, main, mx_sink, tmpdir, wait_for
from test_webhooks import Receiver, first_occurrences, write_key

N = 200
BATCH = 20
LOCK_CLASS = 1464353867
# the holder's lock is gone once PostgreSQL sees the connection close (the
# kernel closes it with the process); the other node asks again every 5 s
RELEASE_BOUND_S = 5
TAKEOVER_BOUND_S = 15
DELIVERY_BOUND_S = 60


def pid_gone(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class WebhooksCluster(unittest.TestCase):
    def test_one_sender_per_consumer_takeover_after_kill(self):
        pg = PgServer()
        dns = DnsServer()
        keyfile = write_key(tmpdir("pgmta-webhook-cluster-"))
        rport, down = free_port(), free_port()  # nothing listens on down
        rec = Receiver(rport)
        smtp = free_port("127.0.0.42")
        sink = mx_sink(dns, ["c%d.test" % i for i in range(3)], "127.0.0.42", smtp)
        extra = ('smtp-port = %d;\n'
                 'webhooks = ( { name = "all"; url = "http://127.0.0.1:%d/events"; '
                 'secret-file = "%s"; batch = %d; timeout = "2s"; max-retry-after = "2s"; },\n'
                 '  { name = "down"; url = "http://127.0.0.1:%d/events"; secret-file = "%s"; '
                 'max-retry-after = "1s"; } );' % (smtp, rport, keyfile, BATCH, down, keyfile))
        nodes = {n: Pgmtad(pg, dns, name=n, extra=extra) for n in ("node-a", "node-b")}
        # both webhook processes connected: each has asked for both locks
        for node in nodes.values():
            wait_for(lambda: "webhook event=db-ready" in node.log(), timeout=30,
                     what="the webhook process of %s connected" % node.name)
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.webhook_cursor") == 2,
                 timeout=30, what="webhook cursors")
        time.sleep(1)
        for consumer in ("all", "down"):
            holders = [n for n, node in nodes.items()
                       if "consumer=%s event=locked" % consumer in node.log()]
            self.assertEqual(len(holders), 1, "holders of %s: %s" % (consumer, holders))
        holder = [n for n, node in nodes.items() if "consumer=all event=locked" in node.log()][0]
        other = [n for n in nodes if n != holder][0]
        start = pg.scalar("SELECT min(last_time) FROM mta.webhook_cursor")

        def inject(lo, hi):
            copy_submit(pg, [("s@example.com", "u%d@c%d.test" % (n, n % 3),
                              "Subject: %d\r\n\r\nbody\r\n" % n, "job-%d" % (n % 5))
                             for n in range(lo, hi)])

        def delivered():
            return pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' AND time_logged >= %s",
                             (start,))

        def acct_ids():
            return [r[0] for r in pg.query(
                "SELECT id FROM mta.acct WHERE id IS NOT NULL AND time_logged >= %s "
                "ORDER BY time_logged, id", (start,))]

        # 1. "down" refuses connections (it posts, and fails, once there are
        # events): delivery and "all" keep their pace
        t0 = time.monotonic()
        inject(0, N)
        wait_for(lambda: delivered() >= N, timeout=DELIVERY_BOUND_S,
                 what="%d deliveries while 'down' fails" % N)
        took = time.monotonic() - t0
        print("%d messages delivered in %.1fs while 'down' failed" % (N, took))
        want = acct_ids()
        wait_for(lambda: set(rec.ids()) >= set(want), timeout=30, what="the events at 'all'")
        lag = wait_for(lambda: pg.query(
            "SELECT events_behind, seconds_behind, failures, last_error, delivered "
            "FROM mta.webhook_lag WHERE consumer = 'down' AND events_behind >= %s "
            "AND failures >= 2", (2 * N,)),
            timeout=10, what="'down' behind by every event")[0]
        self.assertGreater(lag[1], 0)
        self.assertGreaterEqual(lag[2], 2)
        self.assertIn("no response", lag[3])
        self.assertEqual(lag[4], 0)
        self.assertEqual(pg.scalar("SELECT events_behind FROM mta.webhook_lag "
                                   "WHERE consumer = 'all'"), 0)
        # while both nodes live, only the holder posted
        self.assertEqual({s[0] for s in rec.senders}, {holder})

        # 2. the holder dies with batches in flight
        inject(N, 2 * N)
        wait_for(lambda: delivered() >= 2 * N, timeout=DELIVERY_BOUND_S, what="all deliveries")
        rec.delay = 0.2  # ~10 batches of backlog: some are in flight at the kill
        lock_pid = pg.scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s "
            "AND objsubid = 2 AND objid = (hashtext('webhook/all')::bigint & 4294967295)::oid",
            (LOCK_CLASS,))
        self.assertIsNotNone(lock_pid)
        before = rec.count()
        wait_for(lambda: rec.count() >= before + 2 * BATCH, timeout=20, what="batches after phase 2")
        pids = [int(p) for p in re.findall(r"pid=(\d+)", nodes[holder].log())]
        pids.append(nodes[holder].proc.pid)
        t_kill = time.monotonic()
        nodes[holder].kill9()  # the process group: root and every child
        wait_for(lambda: all(pid_gone(p) for p in pids), timeout=5,
                 what="every process of %s gone" % holder)
        wait_for(lambda: not pg.scalar("SELECT count(*) FROM pg_locks WHERE pid = %s",
                                       (lock_pid,)),
                 timeout=RELEASE_BOUND_S, interval=0.01, what="the dead holder's lock released")
        released = time.monotonic() - t_kill
        wait_for(lambda: any(s[0] == other for s in rec.senders), timeout=TAKEOVER_BOUND_S,
                 interval=0.01, what="%s posting 'all'" % other)
        first_post = min(s[1] for s in rec.senders if s[0] == other) - t_kill
        print("lock released %.2fs after the kill, first post of %s after %.2fs"
              % (released, other, first_post))
        wait_for(lambda: "consumer=down event=locked" in nodes[other].log(), timeout=15,
                 what="%s holding 'down'" % other)
        want = acct_ids()
        self.assertEqual(len(want), 4 * N)  # 'r' and 'd' per recipient
        wait_for(lambda: set(rec.ids()) >= set(want), timeout=30, what="every event at 'all'")
        self.assertEqual(nodes[other].stop(), 0)
        rec.stop()

        got = rec.ids()
        self.assertEqual(set(got), set(want), "events lost or unknown")
        self.assertEqual(first_occurrences(got), want, "events out of (time_logged, id) order")
        by_holder = [b for b, s in zip(rec.batches, rec.senders) if s[0] == holder]
        by_other = [b for b, s in zip(rec.batches, rec.senders) if s[0] == other]
        self.assertEqual(len(by_holder) + len(by_other), len(rec.batches))
        # the sender changed once; the only events both posted are of the
        # holder's last batch, whose 2xx it did not record before it died
        names = [s[0] for s in rec.senders]
        self.assertEqual(names, [holder] * len(by_holder) + [other] * len(by_other))
        both = set(e["id"] for b in by_holder for e in b) & set(e["id"] for b in by_other
                                                                for e in b)
        self.assertLessEqual(both, set(e["id"] for e in by_holder[-1]))
        self.assertLessEqual(len(got) - len(want), BATCH)
        self.assertEqual(rec.bad_signatures, 0)
        self.assertTrue(all(sink.messages()))
        self.assertLess(released, RELEASE_BOUND_S)
        self.assertLess(first_post, TAKEOVER_BOUND_S)


if __name__ == "__main__":
    main()
