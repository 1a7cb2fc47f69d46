"""Two pgmtad nodes on one database; one is killed with SIGKILL in the middle
of the run. Every recipient still ends with exactly one final accounting row,
none is lost; the killed node's leases expire and the other node delivers."""
import collections
import os
import signal
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import (PgServer, Pgmtad, copy_submit, free_port, main, mx_sink, wait_for,
                        wait_queue_empty)
from sink import Delay

N = 3000


class KillOneNode(unittest.TestCase):
    def test_sigkill_mid_run(self):
        pg = PgServer()
        dns = DnsServer()
        port = free_port("127.0.0.40")
        # a slow receiver so that the kill lands while deliveries are in flight
        sink = mx_sink(dns, ["k%d.test" % i for i in range(5)], "127.0.0.40", port,
                       rules={"dot:*": Delay(0.03, "250 2.0.0 ok")})
        copy_submit(pg, [("s@example.com", "u%d@k%d.test" % (n, n % 5),
                          "Subject: %d\r\n\r\nbody\r\n" % n, None) for n in range(N)])
        common = dict(extra='smtp-port = %d; lease-time = "5s";' % port,
                      defaults="max-smtp-out = 3; max-msg-per-connection = 50;")
        a = Pgmtad(pg, dns, name="node-a", **common)
        b = Pgmtad(pg, dns, name="node-b", **common)
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'") > N // 5,
                 timeout=60, what="deliveries to start")
        # Slots are cluster-wide, so either node may be doing the work at a
        # given moment, and a node may finish its last batch between a look
        # at the leases and the kill. Freeze a node (SIGSTOP on its process
        # group: it can finish nothing more), and kill it only if it holds
        # leases then; otherwise let it go on and try again.
        victim = None
        deadline = time.time() + 30
        while victim is None and time.time() < deadline:
            for node in (a, b):
                os.killpg(node.proc.pid, signal.SIGSTOP)
                time.sleep(0.2)  # a statement already sent commits or fails meanwhile
                held = pg.scalar(
                    "SELECT count(*) FROM mta.recipients r JOIN mta.node n ON n.id = r.owner "
                    "WHERE r.lease_until > now() AND n.name = %s", (node.name,))
                if held > 0:
                    victim = node
                    break
                os.killpg(node.proc.pid, signal.SIGCONT)
            else:
                time.sleep(0.05)
        self.assertIsNotNone(victim, "neither node held leases")
        survivor = b if victim is a else a
        victim.kill9()
        killed_at = time.time()
        wait_queue_empty(pg, timeout=120, node=survivor)
        self.assertEqual(survivor.stop(), 0)

        bad = pg.query("SELECT rcpt_id, count(*) FROM mta.acct WHERE type IN ('d', 'b') "
                       "GROUP BY rcpt_id HAVING count(*) <> 1")
        self.assertEqual(bad, [], "recipients without exactly one final row")
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), N)
        # every recipient reached the sink; duplicates only for deliveries the
        # killed node had made but not yet recorded (at most one batch per session)
        seen = collections.Counter(r for m in sink.messages() for r in m.rcpts)
        self.assertEqual(len(seen), N)
        dups = sum(c - 1 for c in seen.values())
        self.assertLessEqual(dups, 5 * 3 * 50)
        self.assertLess(time.time() - killed_at, 120)
        # the killed node held leases: node-b took them over after they expired
        self.assertGreater(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' AND "
                                     "attempt > 1 AND node LIKE %s", (survivor.name + "/%",)), 0)


if __name__ == "__main__":
    main()
