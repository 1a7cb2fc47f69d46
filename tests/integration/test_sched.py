"""Cluster-wide traffic shaping against a real PostgreSQL: connection slots
(session advisory locks, mta.connections, a killed holder, a lost session),
rate tokens (mta.take_tokens shared by several processes), unlimited limits
and the backoff state that ends by itself. The processes are sched_probe
(tests/tools/sched_probe.c), each with its own slot session, like nodes."""
import os
import signal
import time
import unittest
import uuid

from pgmta_test import PgServer, Proc, tmpdir, tool, wait_for, main

LOCK_CLASS = 1347223552


class SchedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.dir = tmpdir("pgmta-sched-")

    def queue(self, vmta=None):
        """A fresh queue with a row in mta.queue (enqueue creates it)."""
        domain = "d%s.example" % uuid.uuid4().hex[:10]
        self.pg.query("SELECT mta.enqueue('s@origin.example', ARRAY[%s], "
                      "'Subject: t\r\n\r\nbody\r\n', vmta => %s)",
                      ("r@" + domain, vmta))
        return domain

    def probe(self, *args, name=None, dsn=None):
        name = name or "probe-%s" % uuid.uuid4().hex[:8]
        log = os.path.join(self.dir, name + ".log")
        argv = [tool("sched_probe"), "--db", dsn or self.pg.dsn] + [str(a) for a in args]
        p = Proc(argv, log, env={"PGMTA_LOG_LEVEL": "debug"})
        p.name = name
        return p

    def lines(self, p, prefix):
        return [ln[len(prefix):] for ln in p.output().splitlines() if ln.startswith(prefix)]

    def wait_line(self, p, line, timeout=15):
        try:
            wait_for(lambda: line in p.output().splitlines(), timeout=timeout,
                     what="%r from %s" % (line, p.name))
        except AssertionError:
            print(p.output()[-3000:])
            raise

    def wait_prefix(self, p, prefix, timeout=15):
        try:
            return wait_for(lambda: self.lines(p, prefix), timeout=timeout,
                            what="%r from %s" % (prefix, p.name))
        except AssertionError:
            print(p.output()[-3000:])
            raise

    def exited_cleanly(self, p):
        """A probe that ends by itself exits 0 (sanitizer builds: no error, no leak)."""
        rc = p.p.wait(15)
        self.assertEqual(rc, 0, p.output()[-3000:])

    def connections(self, domain):
        return self.pg.query("SELECT domain, vmta, node, slot, since FROM mta.connections "
                             "WHERE domain = %s ORDER BY slot", (domain,))

    def count(self, domain, vmta=None):
        return self.pg.scalar("SELECT mta.queue_connections(%s, %s)", (domain, vmta))

    # ---- connection slots ----

    def test_three_nodes_share_two_slots(self):
        domain = self.queue()
        probes = [self.probe("--domain", domain, "--node", "node-%d" % i, "--max", 2,
                             "--slots", 3, "--hold-ms", 6000, "--linger-ms", 4000,
                             name="share-%d" % i)
                  for i in range(3)]
        for p in probes:
            self.wait_prefix(p, "held=")
        got = {p.name: [int(s) for s in self.lines(p, "slot=") if int(s) >= 0]
               for p in probes}
        for p in probes:
            self.assertEqual(len(self.lines(p, "slot=")), 3, p.output())
        granted = sum(len(v) for v in got.values())
        self.assertEqual(granted, 2, got)
        self.assertEqual(sorted(s for v in got.values() for s in v), [0, 1])
        # The view names the holders and the queue.
        rows = self.connections(domain)
        self.assertEqual(len(rows), 2, rows)
        expect = sorted(("node-%s" % p.name.split("-")[1], s)
                        for p in probes for s in got[p.name])
        self.assertEqual(sorted((r[2], r[3]) for r in rows), expect)
        for r in rows:
            self.assertEqual(r[0], domain)
            self.assertIsNone(r[1])
            self.assertIsNotNone(r[4])
        self.assertEqual(self.count(domain), 2)
        # Released explicitly while the sessions stay up: no row left.
        for p in probes:
            self.wait_line(p, "released")
        wait_for(lambda: not self.connections(domain), timeout=5, what="slots released")
        self.assertTrue(all(p.alive() for p in probes), "probes should still linger")
        self.assertEqual(self.count(domain), 0)
        for p in probes:
            self.exited_cleanly(p)

    def test_limit_takes_one_lock_and_skips_own_slots(self):
        domain = self.queue(vmta="vmta-a")
        a = self.probe("--domain", domain, "--vmta", "vmta-a", "--max", 5, "--slots", 1,
                       "--hold-ms", 30000, name="limit-a")
        self.assertEqual(self.wait_prefix(a, "held="), ["1"])
        self.assertEqual(self.lines(a, "slot="), ["0"])
        # generate_series(0, 4) with LIMIT 1: only slot 0 was locked.
        self.assertEqual(self.count(domain, "vmta-a"), 1)
        self.assertEqual(self.count(domain), 0)  # another queue: no vmta
        # Three at once from one session: distinct slots although advisory
        # locks are re-entrant within a session.
        b = self.probe("--domain", domain, "--vmta", "vmta-a", "--max", 5, "--slots", 3,
                       "--hold-ms", 30000, name="limit-b")
        self.assertEqual(self.wait_prefix(b, "held="), ["3"])
        self.assertEqual(sorted(self.lines(b, "slot=")), ["1", "2", "3"])
        self.assertEqual(self.count(domain, "vmta-a"), 4)
        rows = self.connections(domain)
        self.assertEqual([(r[1], r[3]) for r in rows], [("vmta-a", s) for s in range(4)])
        # pg_locks itself: exactly 4 pgmta locks on that key.
        n = self.pg.scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
            "AND classid::bigint BETWEEN %s AND %s + 65535 AND objid::bigint = "
            "mta.queue_key(%s, 'vmta-a')", (LOCK_CLASS, LOCK_CLASS, domain))
        self.assertEqual(n, 4)
        a.kill9()
        b.kill9()

    def test_slots_recorded_under_their_key(self):
        # Two domains of one mx-rollup share the key "rollup:NAME"; a pool's
        # queue holds its slots under a member's name. The connections show
        # under the key and count for every queue the key served.
        r1, r2 = self.queue(), self.queue()
        pool = self.queue(vmta="pool-a")
        rollup = "rollup:%s" % uuid.uuid4().hex[:8]
        a = self.probe("--domain", rollup, "--for-domain", r1, "--node", "rollup-node",
                       "--max", 3, "--slots", 2, "--hold-ms", 30000, name="key-r1")
        self.assertEqual(self.wait_prefix(a, "held="), ["2"])
        b = self.probe("--domain", rollup, "--for-domain", r2, "--max", 3, "--slots", 2,
                       "--hold-ms", 30000, name="key-r2")
        self.assertEqual(self.wait_prefix(b, "held="), ["1"])  # one slot of 3 was left
        self.assertEqual(sorted(self.lines(b, "slot=")), ["-1", "2"])
        c = self.probe("--domain", pool, "--vmta", "ip2", "--for-domain", pool,
                       "--for-vmta", "pool-a", "--max", 2, "--slots", 1, "--hold-ms", 30000,
                       name="key-pool")
        self.assertEqual(self.wait_prefix(c, "held="), ["1"])
        rows = self.pg.query("SELECT domain, vmta, node, slot FROM mta.connections "
                             "WHERE domain IN (%s, %s, %s, %s) ORDER BY 1, 2, 4",
                             (rollup, pool, r1, r2))
        self.assertEqual(sorted(rows, key=repr), sorted(
            [(rollup, None, "rollup-node", 0), (rollup, None, "rollup-node", 1),
             (rollup, None, None, 2), (pool, "ip2", None, 0)], key=repr))
        queues = dict(((d, v), n) for d, v, n in self.pg.query(
            "SELECT domain, vmta, connections FROM mta.queues WHERE domain IN (%s, %s, %s)",
            (r1, r2, pool)))
        # both rollup domains count the rollup's three connections
        self.assertEqual(queues, {(r1, None): 3, (r2, None): 3, (pool, "pool-a"): 1})
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.slot_key WHERE key_domain = %s",
                                        (rollup,)), 2)
        for p in (a, b, c):
            p.kill9()
        wait_for(lambda: not self.pg.scalar(
            "SELECT sum(connections) FROM mta.queues WHERE domain IN (%s, %s, %s)",
            (r1, r2, pool)), timeout=10, what="the keys' connections to go")

    def test_killed_holder_frees_its_slots(self):
        domain = self.queue()
        a = self.probe("--domain", domain, "--node", "victim", "--max", 2, "--slots", 2,
                       "--hold-ms", 60000, name="kill-a")
        self.assertEqual(self.wait_prefix(a, "held="), ["2"])
        b = self.probe("--domain", domain, "--max", 2, "--slots", 1, "--hold-ms", 0,
                       name="kill-b")
        self.wait_prefix(b, "held=")
        self.assertEqual(self.lines(b, "slot="), ["-1"])
        t0 = time.monotonic()
        a.kill9()
        wait_for(lambda: self.count(domain) == 0, timeout=10, what="the killed slots to go")
        c = self.probe("--domain", domain, "--max", 2, "--slots", 2, "--hold-ms", 0,
                       name="kill-c")
        self.assertEqual(self.wait_prefix(c, "held="), ["2"])
        self.assertEqual(sorted(self.lines(c, "slot=")), ["0", "1"])
        self.exited_cleanly(b)
        self.exited_cleanly(c)
        # On loopback the closed socket is seen at once.
        self.assertLess(time.monotonic() - t0, 5)

    def test_lost_session_is_reported(self):
        domain = self.queue()
        a = self.probe("--domain", domain, "--node", "lossy", "--max", 3, "--slots", 2,
                       "--hold-ms", 60000, name="lost-a")
        self.assertEqual(self.wait_prefix(a, "held="), ["2"])
        pid = wait_for(lambda: self.pg.scalar(
            "SELECT lock_pid FROM mta.node WHERE name = 'lossy'"), what="lock_pid")
        self.assertEqual(self.pg.scalar(
            "SELECT count(DISTINCT pid) FROM mta.slot_locks WHERE queue_key = "
            "mta.queue_key(%s, '')", (domain,)), 1)
        self.assertEqual(self.pg.scalar(
            "SELECT min(pid) FROM mta.slot_locks WHERE queue_key = mta.queue_key(%s, '')",
            (domain,)), pid)
        self.pg.query("SELECT pg_terminate_backend(%s)", (pid,))
        self.wait_line(a, "lost", timeout=10)
        self.assertEqual(self.count(domain), 0)
        # The session comes back and registers its new pid.
        wait_for(lambda: self.pg.scalar(
            "SELECT lock_pid FROM mta.node WHERE name = 'lossy'") not in (None, pid),
            timeout=15, what="a new lock_pid")
        a.kill9()

    def test_database_restart(self):
        # Its own server: the restart must not disturb the other tests.
        pg = PgServer()
        domain = "restart.example"
        pg.query("SELECT mta.enqueue('s@origin.example', ARRAY['r@restart.example'], "
                 "'Subject: t\r\n\r\nbody\r\n')")
        log = os.path.join(self.dir, "restart.log")
        a = Proc([tool("sched_probe"), "--db", pg.dsn, "--domain", domain, "--node", "phoenix",
                  "--max", "2", "--slots", "2", "--hold-ms", "60000", "--retake"], log)
        a.name = "restart"
        self.assertEqual(self.wait_prefix(a, "held="), ["2"])
        pid = pg.scalar("SELECT lock_pid FROM mta.node WHERE name = 'phoenix'")
        pg.restart("immediate")
        self.wait_line(a, "lost", timeout=15)
        # Back with a new session: slots taken again, the node re-registered.
        wait_for(lambda: len(self.lines(a, "held=")) == 2, timeout=30, what="slots again")
        self.assertEqual(self.lines(a, "held="), ["2", "2"])
        rows = pg.query("SELECT node, slot FROM mta.connections WHERE domain = %s ORDER BY slot",
                        (domain,))
        self.assertEqual(rows, [("phoenix", 0), ("phoenix", 1)])
        self.assertNotEqual(pg.scalar("SELECT lock_pid FROM mta.node WHERE name = 'phoenix'"),
                            pid)
        a.kill9()

    def test_unlimited_takes_no_lock(self):
        domain = self.queue()
        before = self.pg.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        a = self.probe("--domain", domain, "--node", "free", "--max", "unlimited",
                       "--slots", 3, "--hold-ms", 30000, name="unlimited")
        self.assertEqual(self.wait_prefix(a, "held="), ["0"])
        self.assertEqual(self.lines(a, "slot="), ["0", "0", "0"])
        pid = wait_for(lambda: self.pg.scalar(
            "SELECT lock_pid FROM mta.node WHERE name = 'free'"), what="lock_pid")
        self.assertEqual(self.pg.scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s", (pid,)), 0)
        self.assertEqual(self.count(domain), 0)
        self.assertLessEqual(
            self.pg.scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), before)
        a.kill9()
        # Unlimited tokens: granted locally, no bucket in the database.
        t = self.probe("--domain", domain, "--tokens", 5, "--rate", "unlimited",
                       "--for-ms", 200, name="unlimited-tokens")
        total = int(self.wait_prefix(t, "total=")[0])
        self.assertGreater(total, 100)
        self.assertEqual(self.pg.scalar(
            "SELECT count(*) FROM mta.rate_bucket WHERE domain = %s", (domain,)), 0)
        self.exited_cleanly(t)

    def test_view_survives_remigrate(self):
        self.pg.migrate()
        domain = self.queue()
        a = self.probe("--domain", domain, "--node", "again", "--max", 1, "--slots", 1,
                       "--hold-ms", 30000, name="remigrate")
        self.assertEqual(self.wait_prefix(a, "held="), ["1"])
        wait_for(lambda: self.connections(domain), timeout=5, what="a connection row")
        self.assertEqual([(r[2], r[3]) for r in self.connections(domain)], [("again", 0)])
        a.kill9()

    def test_least_privilege_roles(self):
        # A node logged in as mta_node does all of it; mta_monitor sees it.
        node_dsn = self.pg.role_dsn("mta_node")
        domain = self.queue()
        a = self.probe("--domain", domain, "--node", "unprivileged", "--max", 2, "--slots", 2,
                       "--hold-ms", 30000, name="role-slots", dsn=node_dsn)
        self.assertEqual(self.wait_prefix(a, "held="), ["2"])
        t = self.probe("--domain", domain, "--tokens", 1, "--rate", "5/s", "--for-ms", 500,
                       name="role-tokens", dsn=node_dsn)
        self.assertGreaterEqual(int(self.wait_prefix(t, "total=")[0]), 5)
        self.exited_cleanly(t)
        mon = self.pg.connect(self.pg.role_dsn("mta_monitor"))
        with mon.cursor() as cur:
            wait_for(lambda: self.connections(domain), timeout=5, what="connection rows")
            cur.execute("SELECT node, slot FROM mta.connections WHERE domain = %s ORDER BY slot",
                        (domain,))
            self.assertEqual(cur.fetchall(), [("unprivileged", 0), ("unprivileged", 1)])
            cur.execute("SELECT mta.queue_connections(%s, NULL)", (domain,))
            self.assertEqual(cur.fetchone()[0], 2)
        node = self.pg.connect(node_dsn)
        with node.cursor() as cur:
            cur.execute("SELECT mta.queue_enter_backoff(%s, NULL, now() + interval '1 min', "
                        "'x')", (domain,))
            cur.execute("SELECT backoff FROM mta.queue_backoff_state(%s, NULL)", (domain,))
            self.assertTrue(cur.fetchone()[0])
        a.kill9()

    # ---- rate tokens ----

    def test_rate_shared_by_three_nodes(self):
        domain = self.queue()
        secs = 10
        probes = [self.probe("--domain", domain, "--tokens", 1, "--rate", "600/m",
                             "--for-ms", secs * 1000, name="rate-%d" % i) for i in range(3)]
        grants = []
        for p in probes:
            self.wait_prefix(p, "total=", timeout=secs + 15)
            for ln in self.lines(p, "tokens="):
                n, _, at = ln.split(" ")
                grants.append((int(at.split("=")[1]), int(n)))
        total = sum(n for _, n in grants)
        # 10/s for 10 s plus the burst of 10 the bucket starts with.
        print("granted %d in %d s" % (total, secs))
        self.assertGreaterEqual(total, 90)
        self.assertLessEqual(total, 110 + 11)
        # Smooth: count per wall-clock second from the first grant.
        t0 = min(t for t, _ in grants)
        per = [0] * (secs + 1)
        for t, n in grants:
            per[min((t - t0) // 1000, secs)] += n
        print("per second: %s" % per)
        self.assertLessEqual(per[0], 21)
        for s in range(1, secs - 1):
            self.assertGreaterEqual(per[s], 6, per)
            self.assertLessEqual(per[s], 14, per)
        # All three got a share.
        for p in probes:
            self.assertGreater(int(self.lines(p, "total=")[0]), 5, p.output()[-500:])
            self.exited_cleanly(p)

    def test_wall_clock_step_neither_freezes_nor_floods(self):
        """Token cache and waits run on the monotonic clock: the wall clock
        stepped an hour back, or two hours ahead, in the middle of a
        throttled run (libfaketime, monotonic clock left alone) changes
        nothing about the rate."""
        lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
        self.assertTrue(os.path.exists(lib), "faketime is not installed (admin/deps.sh --tests)")
        for before, after in (("-1h", "-2h"), ("-1h", "+1h")):
            domain = self.queue()
            stamp = os.path.join(self.dir, "faketime-%s" % uuid.uuid4().hex[:8])
            with open(stamp, "w") as f:
                f.write(before + "\n")
            env = {"LD_PRELOAD": lib, "FAKETIME_TIMESTAMP_FILE": stamp, "FAKETIME_NO_CACHE": "1",
                   "FAKETIME_CACHE_DURATION": "1",
                   "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PGMTA_LOG_LEVEL": "info",
                   # on a sanitizer build: libfaketime is preloaded before ASan
                   "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "")
                   + ":verify_asan_link_order=0"}
            argv = [tool("sched_probe"), "--db", self.pg.dsn, "--domain", domain, "--tokens", 1,
                    "--rate", "10/s", "--for-ms", 5000]
            p = Proc([str(a) for a in argv], os.path.join(self.dir, stamp + ".log"), env=env)
            p.name = "clock-step-%s" % after
            # (the probe's output is buffered until it exits: wait by time)
            time.sleep(2.0)
            with open(stamp + ".new", "w") as f:
                f.write(after + "\n")
            os.rename(stamp + ".new", stamp)  # never an empty file to read
            self.wait_prefix(p, "total=", timeout=30)
            grants = []
            for ln in self.lines(p, "tokens="):
                n, t, at = ln.split(" ")
                grants.append((int(t.split("=")[1]), int(at.split("=")[1]), int(n)))
            # the probe really saw the wall clock jump, at t_jump
            steps = [(b[0], b[1] - a[1]) for a, b in zip(grants, grants[1:])
                     if abs(b[1] - a[1]) > 1800 * 1000]
            self.assertEqual(len(steps), 1, (before, after, grants[:5]))
            t_jump = steps[0][0]
            self.assertLess(t_jump, 4000, steps)
            # after the step the rate went on: neither frozen nor flooded
            late = sum(n for t, _, n in grants if t >= t_jump)
            want = (5000 - t_jump) / 1000.0 * 10
            total = sum(n for _, _, n in grants)
            print("step %s -> %s at %d ms: total %d, %d after the step (rate: %.0f)"
                  % (before, after, t_jump, total, late, want))
            self.assertGreaterEqual(late, want * 0.6, p.output()[-2000:])
            self.assertLessEqual(late, want * 1.4 + 2, p.output()[-2000:])
            self.assertLessEqual(total, 5 * 10 + 11 + 5)
            self.exited_cleanly(p)

    def test_connect_rate_per_vmta(self):
        domain = self.queue(vmta="v1")
        p = self.probe("--domain", domain, "--vmta", "v1", "--kind", "connect", "--tokens", 2,
                       "--rate", "5/s", "--for-ms", 3000, name="connect-rate")
        total = int(self.wait_prefix(p, "total=", timeout=20)[0])
        self.assertGreaterEqual(total, 15)
        self.assertLessEqual(total, 5 + 15 + 2)
        self.assertEqual(self.pg.query(
            "SELECT vmta, kind FROM mta.rate_bucket WHERE domain = %s", (domain,)),
            [("v1", "connect")])
        self.exited_cleanly(p)

    def test_take_tokens_sql(self):
        domain = self.queue()
        q = "SELECT granted, wait_ms FROM mta.take_tokens(%s, NULL, 'msg', 100, 3600000, %s)"
        # 100/h: burst of 1, then one every 36 s.
        self.assertEqual(self.pg.query(q, (domain, 5)), [(1, 0)])
        (g, w), = self.pg.query(q, (domain, 5))
        self.assertEqual(g, 0)
        self.assertTrue(30000 < w <= 36000, w)
        for bad in ["'bogus', 10, 1000, 1", "'msg', 0, 1000, 1", "'msg', 10, 0, 1",
                    "'msg', 10, 1000, 0"]:
            with self.assertRaises(Exception) as cm:
                self.pg.query("SELECT * FROM mta.take_tokens(%%s, NULL, %s)" % bad, (domain,))
            self.assertIn("invalid arguments", str(cm.exception))

    # ---- backoff ----

    def test_backoff_ends_by_itself(self):
        domain = self.queue()
        state = "SELECT backoff, backoff_until FROM mta.queue_backoff_state(%s, NULL)"
        self.assertEqual(self.pg.query(state, (domain,)), [(False, None)])
        n = self.pg.scalar("SELECT mta.queue_enter_backoff(%s, NULL, now() + interval '2 s', "
                           "'421 4.7.0 too many messages, slow down')", (domain,))
        self.assertEqual(n, 1)
        (on, until), = self.pg.query(state, (domain,))
        self.assertTrue(on)
        # An earlier deadline does not shorten it.
        self.pg.scalar("SELECT mta.queue_enter_backoff(%s, NULL, now(), NULL)", (domain,))
        self.assertEqual(self.pg.query(state, (domain,)), [(True, until)])
        self.assertEqual(self.pg.scalar("SELECT last_error FROM mta.queue WHERE domain = %s",
                                        (domain,)), "421 4.7.0 too many messages, slow down")
        wait_for(lambda: not self.pg.query(state, (domain,))[0][0], timeout=4,
                 what="backoff to end")
        self.assertEqual(self.pg.query(state, (domain,)), [(False, until)])
        # Housekeeping clears the flag column too.
        self.assertGreaterEqual(self.pg.scalar("SELECT mta.backoff_expire()"), 1)
        self.assertFalse(self.pg.scalar("SELECT backoff FROM mta.queue WHERE domain = %s",
                                        (domain,)))
        # Other queues are untouched; a missing queue says so.
        self.assertEqual(self.pg.scalar(
            "SELECT mta.queue_enter_backoff('nowhere.example', NULL, now(), NULL)"), 0)


if __name__ == "__main__":
    main()
