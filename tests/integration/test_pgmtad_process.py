"""pgmtad's root process: --check, supervision of the pipe processes
(restart with backoff, reload, shutdown) against a real PostgreSQL.

The children are the real pipe workers; the tests look at them from outside
(/proc, the log lines, mta.node) only.
"""
import os
import re
import signal
import subprocess
import time
import unittest

import pgmta_test as t


def proc_stat(pid):
    """(state, ppid) of PID from /proc, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def alive(pid):
    """True if PID exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[0] != "Z"


def children_of(ppid):
    """Live (non-zombie) children of PPID."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st and st[1] == ppid and st[0] != "Z":
            out.append(int(name))
    return sorted(out)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def config(dsn, dns_port, pipes, extra=""):
    plist = ", ".join('{ name = "%s"; processes = %d; }' % p for p in pipes)
    return """# pgmtad process test
node-name = "proc-test";
database = { url = "%s"; connections = 1; };
dns = { servers = [ "127.0.0.1:%d" ]; timeout = "1s"; };
shutdown-timeout = "2s";
pipes = ( %s );
default-pipe = "bulk";
%s""" % (dsn, dns_port, plist, extra)


class CheckTest(unittest.TestCase):
    """pgmtad --check and the command line, no database needed."""

    def setUp(self):
        self.dir = t.tmpdir()
        self.conf = os.path.join(self.dir, "pgmta.conf")

    def run_pgmtad(self, *args):
        return subprocess.run([t.PGMTAD] + list(args), capture_output=True, text=True,
                              timeout=30)

    def test_check_good_config_prints_merged_config(self):
        write(self.conf, config("postgresql://nobody@127.0.0.1:1/none", 53,
                                [("transactional", 1), ("bulk", 2)]))
        os.mkdir(os.path.join(self.dir, "conf.d"))
        write(os.path.join(self.dir, "conf.d", "10-more.conf"),
              'pipes = ( { name = "priority"; processes = 3; } );\n')
        r = self.run_pgmtad("--check", "-c", self.conf)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("proc-test", r.stdout)
        for name in ("transactional", "bulk", "priority"):
            self.assertRegex(r.stdout, r'name\s*=\s*"%s"' % name)
        # The dump is itself a valid configuration that loads to the same dump.
        again = os.path.join(t.tmpdir(), "again.conf")
        write(again, r.stdout)
        r2 = self.run_pgmtad("--check", "-c", again)
        self.assertEqual(r2.returncode, 0, r2.stderr)
        self.assertEqual(r2.stdout, r.stdout)

    def test_check_bad_config_exits_2_with_file_and_line(self):
        write(self.conf, 'node-name = "x";\n\npipes = ( { name = "bulk"; processes = 1; } )\n'
                         'default-pipe = = "bulk";\n')
        r = self.run_pgmtad("--check", "-c", self.conf)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"^%s:\d+: \S" % re.escape(self.conf))
        self.assertEqual(r.stdout, "")

    def test_check_bad_file_in_conf_d_names_that_file(self):
        write(self.conf, config("postgresql://nobody@127.0.0.1:1/none", 53, [("bulk", 1)]))
        os.mkdir(os.path.join(self.dir, "conf.d"))
        bad = os.path.join(self.dir, "conf.d", "20-bad.conf")
        write(bad, "# comment\n\nsmtp-port = \"twenty-five\";\n")
        r = self.run_pgmtad("--check", "-c", self.conf)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"^%s:3: \S" % re.escape(bad))

    def test_start_with_bad_config_exits_2(self):
        write(self.conf, "pipes = ( { name = \"bulk\"; processes = 1; } \n")
        r = self.run_pgmtad("-c", self.conf)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"^%s:\d+: \S" % re.escape(self.conf))

    def test_missing_file(self):
        missing = os.path.join(self.dir, "nope.conf")
        r = self.run_pgmtad("--check", "-c", missing)
        self.assertEqual(r.returncode, 2)
        self.assertIn(missing, r.stderr)

    def test_usage(self):
        r = self.run_pgmtad()
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage:", r.stderr)
        r = self.run_pgmtad("-c", self.conf, "--bogus")
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage:", r.stderr)
        r = self.run_pgmtad("-h")
        self.assertEqual(r.returncode, 0)
        self.assertIn("usage:", r.stdout)
        r = self.run_pgmtad("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^pgmtad \d+\.\d+")


class SupervisionTest(unittest.TestCase):
    """The root process with real pipe workers against a real PostgreSQL."""

    @classmethod
    def setUpClass(cls):
        cls.pg = t.PgServer()

    def setUp(self):
        self.dir = t.tmpdir()
        self.conf = os.path.join(self.dir, "pgmta.conf")
        self.dns_port = t.free_port()
        self.good = config(self.pg.dsn, self.dns_port, [("transactional", 1), ("bulk", 2)])
        write(self.conf, self.good)
        self.log = os.path.join(self.dir, "pgmtad.log")
        self.proc = t.Proc([t.PGMTAD, "-c", self.conf], self.log,
                           env={"PGMTA_LOG_LEVEL": "info"})
        self.root = self.proc.pid

    def tearDown(self):
        kids = children_of(self.root)
        self.proc.stop(timeout=15)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait_children(self, n, timeout=15):
        return t.wait_for(lambda: (lambda k: k if len(k) == n else None)(children_of(self.root)),
                          timeout=timeout, what="%d children of pgmtad; log:\n%s"
                          % (n, self.proc.output()))

    def started(self):
        """{(pipe, index): pid} of the latest 'started' line per process."""
        m = {}
        for line in self.proc.output().splitlines():
            g = re.search(r"pipe=(\S+) index=(\d+) pid=(\d+) started", line)
            if g:
                m[(g.group(1), int(g.group(2)))] = int(g.group(3))
        return m

    def test_children_restart_reload_and_stop(self):
        kids = self.wait_children(3)
        self.assertTrue(self.proc.alive())
        started = t.wait_for(lambda: (lambda m: m if len(m) == 3 else None)(self.started()),
                             what="3 started lines")
        self.assertEqual(set(started), {("transactional", 0), ("bulk", 0), ("bulk", 1)})
        self.assertEqual(sorted(started.values()), kids)
        # Each child runs the worker under its own ident.
        t.wait_for(lambda: all("pgmtad[%s/%d]" % k in self.proc.output() for k in started),
                   what="worker log lines")

        # SIGKILL a child: it is replaced after the first backoff step (1 s).
        victim = started[("bulk", 1)]
        os.kill(victim, signal.SIGKILL)
        t.wait_for(lambda: self.started()[("bulk", 1)] != victim, timeout=6,
                   what="bulk/1 restarted")
        kids2 = self.wait_children(3)
        self.assertNotIn(victim, kids2)
        self.assertRegex(self.proc.output(),
                         r"pipe=bulk index=1 pid=%d exited status=SIGKILL .*restart_in=1s" % victim)

        # Killing it again right away doubles the delay.
        victim2 = self.started()[("bulk", 1)]
        t0 = time.monotonic()
        os.kill(victim2, signal.SIGKILL)
        t.wait_for(lambda: self.started()[("bulk", 1)] != victim2, timeout=8,
                   what="bulk/1 restarted again")
        self.assertGreaterEqual(time.monotonic() - t0, 1.5)
        self.assertRegex(self.proc.output(),
                         r"pipe=bulk index=1 pid=%d exited status=SIGKILL .*restart_in=2s"
                         % victim2)
        # The other children were left alone.
        self.assertTrue(alive(started[("transactional", 0)]))
        self.assertTrue(alive(started[("bulk", 0)]))

        # SIGHUP with a broken file: logged, the running configuration stays.
        before = children_of(self.root)
        write(self.conf, self.good + "\nsmtp-port = ;\n")
        os.kill(self.root, signal.SIGHUP)
        t.wait_for(lambda: "event=reload-failed" in self.proc.output(),
                   what="reload failure logged")
        self.assertRegex(self.proc.output(),
                         r"event=reload-failed .*%s:\d+:" % re.escape(self.conf))
        time.sleep(1.0)
        self.assertTrue(self.proc.alive())
        self.assertEqual(children_of(self.root), before)

        # SIGHUP with a changed file: bulk shrinks to 1, transactional grows to 2.
        write(self.conf, config(self.pg.dsn, self.dns_port, [("transactional", 2), ("bulk", 1)]))
        old = self.started()
        os.kill(self.root, signal.SIGHUP)
        t.wait_for(lambda: ("transactional", 1) in self.started(), what="transactional/1")
        t.wait_for(lambda: not alive(old[("bulk", 1)]), what="bulk/1 stopped")
        kids3 = self.wait_children(3)
        now = self.started()
        self.assertIn(now[("transactional", 1)], kids3)
        self.assertNotIn(old[("bulk", 1)], kids3)
        # Kept children were told to reload, not restarted.
        self.assertIn(old[("bulk", 0)], kids3)
        self.assertIn(old[("transactional", 0)], kids3)
        # the root logs the exit once it has reaped the child: the line may
        # come a moment after the process is gone
        stopped = r"pipe=bulk index=1 pid=%d stopped status=0" % old[("bulk", 1)]
        t.wait_for(lambda: re.search(stopped, self.proc.output()), what="the stop logged")
        # A stopped entry is not restarted.
        time.sleep(1.5)
        self.assertEqual(children_of(self.root), kids3)

        # SIGTERM: everything exits within shutdown-timeout + 5 s, status 0.
        t0 = time.monotonic()
        self.proc.signal(signal.SIGTERM)
        rc = self.proc.p.wait(timeout=2 + 5 + 3)
        self.assertEqual(rc, 0, self.proc.output())
        self.assertLess(time.monotonic() - t0, 2 + 5 + 3)
        for pid in kids3:
            self.assertFalse(alive(pid), "child %d left behind" % pid)

    def test_root_registers_in_database(self):
        self.wait_children(3)
        row = t.wait_for(lambda: self.pg.query(
            "SELECT name, state, host FROM mta.node WHERE pipe IS NULL AND pid = %s",
            (self.root,)), timeout=15, what="root row in mta.node; log:\n" + self.proc.output())
        self.assertEqual(row[0][0], "proc-test")
        self.assertEqual(row[0][1], "running")
        # Heartbeats move heartbeat_at forward.
        first = self.pg.scalar("SELECT heartbeat_at FROM mta.node WHERE pipe IS NULL AND pid = %s",
                               (self.root,))
        t.wait_for(lambda: self.pg.scalar(
            "SELECT heartbeat_at FROM mta.node WHERE pipe IS NULL AND pid = %s",
            (self.root,)) > first, timeout=12, what="root heartbeat")
        self.proc.signal(signal.SIGTERM)
        self.assertEqual(self.proc.p.wait(timeout=15), 0)
        self.assertEqual(self.pg.scalar(
            "SELECT state FROM mta.node WHERE pipe IS NULL AND pid = %s", (self.root,)),
            "stopped")

    def test_children_follow_a_killed_root(self):
        kids = self.wait_children(3)
        os.kill(self.root, signal.SIGKILL)
        self.proc.p.wait(timeout=5)
        # PR_SET_PDEATHSIG: the orphans get SIGTERM and stop gracefully.
        t.wait_for(lambda: not any(alive(p) for p in kids), timeout=2 + 5,
                   what="orphaned children gone")

    def test_stuck_child_is_killed_at_the_deadline(self):
        kids = self.wait_children(3)
        stuck = kids[0]
        os.kill(stuck, signal.SIGSTOP)  # cannot act on SIGTERM any more
        t0 = time.monotonic()
        self.proc.signal(signal.SIGTERM)
        rc = self.proc.p.wait(timeout=2 + 5 + 5)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, self.proc.output())
        # shutdown-timeout (2 s) + 5 s of grace, then SIGKILL.
        self.assertGreaterEqual(took, 2 + 5 - 0.5)
        self.assertFalse(alive(stuck))
        self.assertRegex(self.proc.output(), r"pid=%d did not stop in time" % stuck)
        self.assertRegex(self.proc.output(), r"pid=%d stopped status=SIGKILL" % stuck)
        for pid in kids:
            self.assertFalse(alive(pid))

    def test_sigint_stops_like_sigterm(self):
        kids = self.wait_children(3)
        self.proc.signal(signal.SIGINT)
        self.assertEqual(self.proc.p.wait(timeout=10), 0, self.proc.output())
        for pid in kids:
            self.assertFalse(alive(pid))
        self.assertIn("event=stopping signal=SIGINT", self.proc.output())


if __name__ == "__main__":
    t.main()
