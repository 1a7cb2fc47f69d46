"""A pg_auto_failover formation on loopback for the failover tests.

Formation starts a monitor and two data nodes (primary and synchronous
secondary), each a `pg_autoctl run` in its own process group, in a temporary
directory, on free ports, as the `postgres` user when we are root (PostgreSQL
refuses to run as root). The monitor's health checks are tightened so that a
failover takes seconds instead of the default half minute or more.
"""
import os
import subprocess
import time

from pgmta_test import (PG_BIN, PGMTA, Proc, _as_pg_user, _chown_pg, free_port,
                        tmpdir, wait_for)

PG_AUTOCTL = "/usr/bin/pg_autoctl"

# pgautofailover.* GUCs of the monitor (defaults: checks every 5 s, a node is
# unhealthy after 20 s, the primary is given 30 s to demote itself).
FAST_MONITOR = {
    "pgautofailover.health_check_period": "'1s'",
    "pgautofailover.health_check_timeout": "'1s'",
    "pgautofailover.health_check_max_retries": "1",
    "pgautofailover.health_check_retry_delay": "'500ms'",
    "pgautofailover.node_considered_unhealthy_timeout": "'2s'",
    "pgautofailover.primary_demote_timeout": "'2s'",
}


class Formation:
    """Monitor + node1 (first primary) + node2 (secondary), database `pgmta`."""

    def __init__(self, dbname="pgmta"):
        self.dir = tmpdir("pgmta-paf-")
        self.dbname = dbname
        self.env = {
            "HOME": self.dir,
            "XDG_CONFIG_HOME": os.path.join(self.dir, "config"),
            "XDG_DATA_HOME": os.path.join(self.dir, "share"),
            "XDG_RUNTIME_DIR": os.path.join(self.dir, "run"),
            "PGHOST": "127.0.0.1",
            "PATH": PG_BIN + ":" + os.environ.get("PATH", "/usr/bin:/bin"),
        }
        for k in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR"):
            os.makedirs(self.env[k], mode=0o700)
        _chown_pg(self.dir)
        self.procs = {}
        self.ports = {}
        t0 = time.monotonic()
        self._monitor()
        self.times = {"monitor": time.monotonic() - t0}
        self._node("node1")
        self.times["node1-created"] = time.monotonic() - t0
        wait_for(lambda: self.state("node1") == "single", timeout=60,
                 what="node1 to become the single primary")
        self.times["node1-single"] = time.monotonic() - t0
        self._node("node2")
        self.times["node2-created"] = time.monotonic() - t0
        wait_for(lambda: self.state("node1") == "primary" and
                 self.state("node2") == "secondary", timeout=60,
                 what="primary + secondary")
        self.setup_seconds = time.monotonic() - t0
        # pg_autoctl show uri names no user: the tests connect as postgres.
        self.uri = self.autoctl("show", "uri", "--pgdata", self.pgdata("monitor"),
                                "--formation", "default").strip().replace(
                                    "postgres://", "postgresql://postgres@", 1)

    def pgdata(self, name):
        return os.path.join(self.dir, name)

    def autoctl(self, *args, check=True):
        env = dict(os.environ)
        env.update(self.env)
        r = subprocess.run(_as_pg_user([PG_AUTOCTL] + list(args)), env=env, cwd=self.dir,
                           capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError("pg_autoctl %s failed (%d):\n%s%s" %
                                 (" ".join(args), r.returncode, r.stdout, r.stderr))
        return r.stdout

    def _run(self, name):
        """pg_autoctl run for NAME in its own process group (Proc uses setsid)."""
        p = Proc([PG_AUTOCTL, "run", "--pgdata", self.pgdata(name)],
                 os.path.join(self.dir, name + ".log"), env=self.env, cwd=self.dir,
                 user="postgres")
        self.procs[name] = p
        return p

    def _monitor(self):
        port = self.ports["monitor"] = free_port()
        self.autoctl("create", "monitor", "--pgdata", self.pgdata("monitor"), "--pgport",
                     str(port), "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl",
                     "--pgctl", os.path.join(PG_BIN, "pg_ctl"))
        with open(os.path.join(self.pgdata("monitor"), "postgresql.auto.conf"), "a") as f:
            for k, v in FAST_MONITOR.items():
                f.write("%s = %s\n" % (k, v))
        # create monitor has no --listen; without this it listens on '*'
        self.autoctl("config", "set", "--pgdata", self.pgdata("monitor"),
                     "postgresql.listen_addresses", "127.0.0.1")
        self._run("monitor")
        self.monitor_uri = "postgres://autoctl_node@127.0.0.1:%d/pg_auto_failover" \
            "?sslmode=disable" % port
        wait_for(lambda: self._monitor_up(), timeout=30, what="the monitor")

    def _monitor_up(self):
        r = subprocess.run(["psql", "-X", "-A", "-t", "-c", "SELECT 1", self.monitor_uri],
                           capture_output=True, text=True)
        return r.returncode == 0

    def _node(self, name):
        port = self.ports[name] = free_port()
        self.autoctl("create", "postgres", "--pgdata", self.pgdata(name), "--pgport", str(port),
                     "--hostname", "127.0.0.1", "--listen", "127.0.0.1", "--name", name,
                     "--dbname", self.dbname, "--monitor", self.monitor_uri, "--auth",
                     "trust", "--no-ssl", "--pgctl", os.path.join(PG_BIN, "pg_ctl"))
        self._run(name)

    def monitor_sql(self, sql):
        r = subprocess.run(["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql,
                            self.monitor_uri], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError("monitor query failed: %s" % r.stderr)
        return r.stdout.strip()

    def state(self, name):
        """The node's reported state on the monitor ('' while unknown)."""
        try:
            return self.monitor_sql("SELECT reportedstate FROM pgautofailover.node "
                                    "WHERE nodename = '%s'" % name)
        except AssertionError:
            return ""

    def primary(self):
        """Name of the node the monitor has as primary, or None."""
        v = self.monitor_sql("SELECT nodename FROM pgautofailover.node WHERE "
                             "reportedstate IN ('primary', 'single', 'wait_primary') AND "
                             "goalstate IN ('primary', 'single', 'wait_primary')")
        return v.split("\n")[0] if v else None

    def dsn(self, name):
        return "postgresql://postgres@127.0.0.1:%d/%s" % (self.ports[name], self.dbname)

    def kill9(self, name):
        """SIGKILL NAME's pg_autoctl and its PostgreSQL (the whole process group)."""
        self.procs[name].kill9()

    def migrate(self):
        r = subprocess.run([PGMTA, "migrate", "--db", self.uri], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError("pgmta migrate failed: %s%s" % (r.stdout, r.stderr))

    # What Pgmtad and the helpers of pgmta_test need from a database: the
    # multi-host URI, so every query goes to whichever node is primary.
    @property
    def dsn(self):
        return self.uri

    def query(self, sql, args=None):
        import psycopg2
        c = psycopg2.connect(self.uri, connect_timeout=5)
        c.autocommit = True
        try:
            with c.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else []
        finally:
            c.close()

    def scalar(self, sql, args=None):
        rows = self.query(sql, args)
        return rows[0][0] if rows else None
