"""Shared fixtures for pgmta's integration tests.

Every fixture starts a real server on a free loopback port and cleans up after
itself, so a test can run twice in a row and in parallel with others:

  PgServer    a private PostgreSQL 15 cluster (initdb once per build tree,
              copied per test; run as the `postgres` user when we are root)
  free_port   a free TCP port on a loopback address
  Proc        a background process with its output in a log file

DNS (dnsserver.py) and SMTP sinks (sink.py) live beside this file.
"""
import atexit
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

SOURCE_DIR = os.environ.get("PGMTA_SOURCE_DIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("PGMTA_BUILD_DIR") or os.path.join(SOURCE_DIR, "build")


def sanitizer_build():
    """Is the build under test instrumented (-DPGMTA_SANITIZE)? Its code runs
    several times slower, so bounds on time spent computing scale with it."""
    try:
        with open(os.path.join(BUILD_DIR, "CMakeCache.txt")) as f:
            return any(line.startswith("PGMTA_SANITIZE:STRING=") and line.strip()[22:]
                       for line in f)
    except OSError:
        return False
PG_BIN = os.environ.get("PGMTA_PG_BIN", "/usr/lib/postgresql/15/bin")
PGMTA = os.path.join(BUILD_DIR, "admin", "pgmta")
PGMTAD = os.path.join(BUILD_DIR, "node", "pgmtad")


def tool(name):
    """Path of a test helper program built from tests/tools/NAME.c."""
    return os.path.join(BUILD_DIR, "tests", name)


def free_port(host="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for(pred, timeout=10.0, interval=0.05, what="condition"):
    """Polls pred() until it returns a true value; returns it or fails."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


_cleanups = []


def _cleanup_all():
    while _cleanups:
        fn = _cleanups.pop()
        try:
            fn()
        except Exception as e:  # cleanup must go on
            print("cleanup failed: %s" % e, file=sys.stderr)


atexit.register(_cleanup_all)


def _on_signal(signum, frame):
    _cleanup_all()
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)


def tmpdir(prefix="pgmta-test-"):
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    _cleanups.append(lambda: shutil.rmtree(d, ignore_errors=True))
    return d


class Proc:
    """A background process whose stdout+stderr go to a log file."""

    def __init__(self, argv, log_path, env=None, cwd=None, user=None):
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "ab")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        if user and os.geteuid() == 0:
            argv = ["runuser", "-u", user, "--"] + list(argv)
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                  env=full_env, cwd=cwd, start_new_session=True)
        _cleanups.append(self.stop)

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.p.pid, sig)

    def kill9(self):
        """SIGKILL the process group (the process and any children)."""
        if self.alive():
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.p.wait()

    def stop(self, timeout=10):
        if self.alive():
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.log.close() if not self.log.closed else None
        return self.p.returncode

    def output(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


def _pg_user():
    return "postgres" if os.geteuid() == 0 else None


def _as_pg_user(argv):
    u = _pg_user()
    return (["runuser", "-u", u, "--"] + argv) if u else argv


def _chown_pg(path):
    u = _pg_user()
    if u:
        pw = pwd.getpwnam(u)
        for root, dirs, files in os.walk(path):
            os.chown(root, pw.pw_uid, pw.pw_gid)
            for f in files:
                os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)


def _template_cluster():
    """initdb once per build tree; later clusters are copies of it."""
    base = os.path.join(BUILD_DIR, "test-pg-template")
    lock_path = base + ".lock"
    os.makedirs(BUILD_DIR, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(base, "PG_VERSION")):
            shutil.rmtree(base, ignore_errors=True)
            os.makedirs(base)
            os.chmod(base, 0o700)
            _chown_pg(base)
            subprocess.run(_as_pg_user([os.path.join(PG_BIN, "initdb"), "-D", base,
                                        "-U", "postgres", "-A", "trust", "-E", "UTF8",
                                        "--locale=C.UTF-8", "--no-sync"]),
                           check=True, stdout=subprocess.DEVNULL)
    return base


class PgServer:
    """A private PostgreSQL on 127.0.0.1:<free port> with database `pgmta`."""

    def __init__(self, migrate=True, settings=None):
        self.dir = tmpdir("pgmta-pg-")
        self.data = os.path.join(self.dir, "data")
        shutil.copytree(_template_cluster(), self.data, symlinks=True)
        os.chmod(self.data, 0o700)
        self.port = free_port()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": "'%s'" % self.dir,
            "fsync": "off",  # test clusters only: durability is not under test here
            "max_connections": "200",
            "shared_buffers": "128MB",
            "max_locks_per_transaction": "256",
            "log_min_messages": "warning",
        }
        conf.update(settings or {})
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            for k, v in conf.items():
                f.write("%s = %s\n" % (k, v))
        _chown_pg(self.dir)
        self.log_path = os.path.join(self.dir, "postgres.log")
        self.start()
        _cleanups.append(self.stop)
        self.admin_dsn = "postgresql://postgres@127.0.0.1:%d/postgres" % self.port
        self.psql_admin("CREATE DATABASE pgmta")
        self.dsn = "postgresql://postgres@127.0.0.1:%d/pgmta" % self.port
        if migrate:
            self.migrate()

    def pg_ctl(self, *args):
        return subprocess.run(_as_pg_user([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data,
                                           "-l", self.log_path, "-w", "-t", "30"] + list(args)),
                              check=True, stdout=subprocess.DEVNULL)

    def start(self):
        self.pg_ctl("start")

    def stop(self, mode="fast"):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self.pg_ctl("stop", "-m", mode)

    def restart(self, mode="immediate"):
        self.pg_ctl("restart", "-m", mode)

    def migrate(self):
        r = subprocess.run([PGMTA, "migrate", "--db", self.dsn], capture_output=True, text=True)
        if r.returncode != 0:
            raise AssertionError("pgmta migrate failed: %s%s" % (r.stdout, r.stderr))
        return r

    def psql_admin(self, sql):
        return subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.admin_dsn,
                               "-c", sql], check=True, capture_output=True, text=True)

    def psql(self, sql, dsn=None, check=True):
        """Runs SQL with psql; returns the CompletedProcess (unaligned, tuples only)."""
        return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               dsn or self.dsn, "-c", sql], check=check,
                              capture_output=True, text=True)

    def connect(self, dsn=None, autocommit=True):
        import psycopg2
        c = psycopg2.connect(dsn or self.dsn)
        c.autocommit = autocommit
        _cleanups.append(lambda: c.closed or c.close())
        return c

    def query(self, sql, args=None):
        """One-shot query on a fresh autocommit connection; returns all rows."""
        c = self.connect()
        try:
            with c.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else []
        finally:
            c.close()

    def scalar(self, sql, args=None):
        rows = self.query(sql, args)
        return rows[0][0] if rows else None

    def role_dsn(self, role, password="secret"):
        """DSN logging in as ROLE (created with LOGIN and this password if needed)."""
        self.query("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) "
                   "THEN EXECUTE format('CREATE ROLE %%I LOGIN', %s); END IF; END$$",
                   (role + "_login", role + "_login"))
        self.query("GRANT %s TO %s" % (role, role + "_login"))
        return "postgresql://%s_login@127.0.0.1:%d/pgmta" % (role, self.port)


def main():
    """unittest.main with verbose output; used as the entry point of every test file."""
    unittest.main(verbosity=2)


class Pgmtad:
    """A pgmtad node started with a generated configuration.

    `domains` is a list of libconfig group bodies (strings) appended after the
    "*" defaults; `extra` is appended to the main file verbatim; `conf_d` maps
    file names to contents written into conf.d/ beside the main file.
    """

    def __init__(self, pg, dns=None, name="node-a", domains=(), extra="", conf_d=None,
                 defaults="", pipes=None, env=None, start=True):
        self.dir = tmpdir("pgmta-node-")
        self.name = name
        self.pg = pg
        self.conf_path = os.path.join(self.dir, "pgmta.conf")
        servers = '[ "%s" ]' % dns.server_arg if dns else "[ ]"
        pipes = pipes or '( { name = "transactional"; processes = 1; }, ' \
                         '{ name = "bulk"; processes = 1; } )'
        # Test defaults for "*" (fast retries, short timeouts); `defaults`
        # ("key = value; ...") overrides or adds to them. Automatic MX
        # rollup is off: the tests' domains share the sinks' MX hosts for
        # convenience, and their limits are meant per domain; the rollup
        # tests turn it on (defaults="mx-rollup = true").
        star = {"retry-after": '"2s"', "max-retry-after": '"4s"', "connect-timeout": '"3s"',
                "command-timeout": '"5s"', "data-timeout": '"10s"', "mx-rollup": "false"}
        for item in defaults.split(";"):
            if "=" in item:
                k, v = item.split("=", 1)
                star[k.strip()] = v.strip()
        doms = ['{ name = "*"; ' + " ".join("%s = %s;" % kv for kv in star.items()) + ' }'] + \
            list(domains)
        top = [("node-name", '"%s"' % name),
               ("database", '{ url = "%s"; connections = 2; }' % pg.dsn),
               ("dns", '{ servers = %s; timeout = "2s"; }' % servers),
               ("pipes", pipes), ("default-pipe", '"bulk"'), ("poll-interval", '"200ms"'),
               ("lease-time", '"60s"'), ("shutdown-timeout", '"10s"')]
        # a directive given in `extra` replaces the test default
        top = [(k, v) for k, v in top
               if not re.search(r"(^|[;\s])%s\s*=" % re.escape(k), extra)]
        text = "".join("%s = %s;\n" % kv for kv in top) + \
            "domains = (\n  %s\n);\n%s\n" % (",\n  ".join(doms), extra)
        with open(self.conf_path, "w") as f:
            f.write(text)
        if conf_d:
            os.makedirs(os.path.join(self.dir, "conf.d"), exist_ok=True)
            for fname, body in conf_d.items():
                with open(os.path.join(self.dir, "conf.d", fname), "w") as f:
                    f.write(body)
        self.env = env or {}
        self.proc = None
        if start:
            self.start()

    def start(self):
        self.proc = Proc([PGMTAD, "-c", self.conf_path],
                         os.path.join(self.dir, "pgmtad.log"), env=self.env)
        return self

    SANITIZER_REPORTS = ("runtime error:", "ERROR: AddressSanitizer", "ERROR: LeakSanitizer")

    def stop(self, timeout=30):
        """Stops the node; fails if any of its processes reported a
        sanitizer error (on a -DPGMTA_SANITIZE build a crashed pipe child is
        restarted by the root, so the log is where such errors show)."""
        rc = self.proc.stop(timeout) if self.proc else None
        log = self.log()
        for marker in self.SANITIZER_REPORTS:
            i = log.find(marker)
            if i >= 0:
                raise AssertionError("pgmtad sanitizer report:\n" + log[max(0, i - 2000):i + 3000])
        return rc

    def kill9(self):
        self.proc.kill9()

    def log(self):
        return self.proc.output() if self.proc else ""

    def wait_accepting(self, ports, timeout=20):
        """Waits until every port on 127.0.0.1 accepts, the pipes have
        registered (enqueue without a pipe works then) and an smtp-in
        process has its database connection; fails if pgmtad exits."""
        def up():
            if not self.proc.alive():
                raise AssertionError("pgmtad exited:\n" + self.log()[-3000:])
            try:
                for port in ports:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            return self.pg.scalar("SELECT count(*) FROM mta.pipes") > 0 and \
                "db=pgmtad-smtp-in event=connected" in self.log()
        wait_for(up, timeout=timeout, what="pgmtad accepting on %s" % list(ports))


def acct_counts(pg):
    """{type: count} of mta.acct."""
    return dict(pg.query("SELECT type, count(*) FROM mta.acct GROUP BY type"))


def wait_queue_empty(pg, timeout=60, node=None):
    """Waits until mta.recipients is empty; on timeout shows the node log."""
    def drained():
        if node is not None and node.proc and not node.proc.alive():
            raise AssertionError("pgmtad exited with %s:\n%s" %
                                 (node.proc.p.returncode, node.log()[-5000:]))
        return pg.scalar("SELECT count(*) = 0 FROM mta.recipients")
    try:
        return wait_for(drained, timeout=timeout, what="the queue to drain")
    except AssertionError:
        if node is not None:
            print(node.log()[-5000:], file=sys.stderr)
        raise


def copy_submit(pg, rows, columns=("mail_from", "rcpt_to", "content", "job_id")):
    """COPY rows (tuples matching columns; content as str) into mta.submit in
    one statement, CSV format; returns the number of rows sent."""
    import csv
    import io
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(["" if v is None else v for v in r])
    buf.seek(0)
    c = pg.connect()
    try:
        with c.cursor() as cur:
            cur.copy_expert("COPY mta.submit (%s) FROM STDIN WITH (FORMAT csv)" %
                            ", ".join(columns), buf)
    finally:
        c.close()
    return len(rows)


def make_cert(directory, cn="mx.test"):
    """Self-signed test certificate and key (openssl CLI); returns (cert, key)."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=" + cn, "-days", "1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def mx_sink(dns, domains, ip, port, **kw):
    """A scriptable Sink (tests/lib/sink.py) on ip:port, made the MX
    (preference 10) of each of domains (a name or a list) in dns."""
    from sink import Sink
    s = Sink(host=ip, port=port, **kw)
    name = "mx-%s.sinks.test" % ip.replace(".", "-")
    dns.add_a(name, ip)
    for d in ([domains] if isinstance(domains, str) else domains):
        dns.add_mx(d, 10, name)
    return s


class DbTestCase(unittest.TestCase):
    """A test class with its own PgServer and one autocommit connection."""

    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.conn = cls.pg.connect()

    @classmethod
    def q(cls, sql, args=None):
        """Runs SQL on the class connection; returns all rows ([] without any)."""
        with cls.conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    @classmethod
    def q1(cls, sql, args=None):
        return cls.q(sql, args)[0][0]

    def counts(self, tables):
        """{table: row count} for each of tables."""
        return {t: self.q1("SELECT count(*) FROM " + t) for t in tables}
