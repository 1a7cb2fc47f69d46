"""HTTP API and dashboard of pgmtad (served by its smtp-in processes), driven
over real HTTP against a real pgmtad and a real PostgreSQL.

The node runs only the "transactional" pipe; test mail is enqueued into the
"bulk" pipe (it exists from the first migration), so nothing claims it and
the queue stays exactly as the test left it: pause and resume can be seen in
mta.ready_queues('bulk', ...) without racing a delivery.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
import unittest

from pgmta_test import PGMTAD, Pgmtad, PgServer, free_port, main, tmpdir, wait_for

TOKEN = "t0k"
DASHBOARD_SRC = os.path.join(os.environ.get("PGMTA_SOURCE_DIR") or
                             os.path.join(os.path.dirname(__file__), "..", ".."),
                             "admin", "dashboard")


def node_extra(port, token=TOKEN, more=""):
    return ('default-pipe = "transactional";\n'
            'listen = { http = "127.0.0.1:%d"; };\n'
            'http = { token = "%s"; %s };\n' % (port, token, more))


PIPES = '( { name = "transactional"; processes = 1; } )'


class Client:
    def __init__(self, port):
        self.port = port

    def request(self, method, path, token=TOKEN, body=None, headers=None, host=None):
        """Returns (status, headers as a dict with lower-case names, body bytes)."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            c.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            c.putheader("Host", host if host is not None else "127.0.0.1:%d" % self.port)
            if token is not None:
                c.putheader("Authorization", "Bearer " + token)
            for k, v in (headers or {}).items():
                c.putheader(k, v)
            if body is not None:
                if isinstance(body, str):
                    body = body.encode()
                c.putheader("Content-Length", str(len(body)))
            c.endheaders(body)
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def json(self, method, path, **kw):
        st, hdrs, data = self.request(method, path, **kw)
        return st, hdrs, (json.loads(data) if data else None)

    def form(self, path, body, **kw):
        return self.json("POST", path, body=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, **kw)

    def up(self):
        try:
            return self.request("GET", "/api/status")[0] == 200
        except OSError:
            return False


def start_node(pg, port, **kw):
    node = Pgmtad(pg, pipes=PIPES, extra=node_extra(port, **kw))
    client = Client(port)
    try:
        wait_for(client.up, timeout=20, what="the HTTP API to answer")
    except AssertionError:
        print(node.log()[-4000:])
        raise
    return node, client


def stop_node(node):
    """Stops pgmtad; a clean exit (status 0, no sanitizer report) is required."""
    rc = node.stop()
    log = node.log()
    assert rc == 0, "pgmtad exited with %s:\n%s" % (rc, log[-5000:])
    for bad in ("Sanitizer", "runtime error:", "fatal:"):
        assert bad not in log, log[-5000:]


def enqueue(pg, rcpts, job=None, pipe="bulk"):
    return pg.scalar("SELECT mta.enqueue('s@sender.test', %s, "
                     "E'Subject: t\\r\\n\\r\\nhi\\r\\n', %s, NULL, %s)", (rcpts, job, pipe))


PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*'
                       r'(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\[\\"n])*",?)*\})?'
                       r' [-+]?([0-9.]+([eE][-+]?[0-9]+)?|NaN|Inf)$')


def parse_prometheus(text):
    """{(name, frozenset(labels)): value}; fails on any malformed line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if line.startswith("#"):
                assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        assert PROM_LINE.match(line), "not Prometheus text: %r" % line
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        pairs = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
        out[(name, pairs)] = float(value)
    return out


class HttpApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.port = free_port()
        # the dashboard from a copy (http.dashboard-dir) with a file beside it
        # that path traversal would reach
        d = tmpdir()
        cls.dash = os.path.join(d, "dash")
        shutil.copytree(DASHBOARD_SRC, cls.dash)
        with open(os.path.join(cls.dash, "only-here.css"), "w") as f:
            f.write("/* only in the configured directory */\n")
        with open(os.path.join(d, "secret.html"), "w") as f:
            f.write("root:secret\n")
        os.makedirs(os.path.join(cls.dash, "sub"))
        with open(os.path.join(cls.dash, "sub", "x.html"), "w") as f:
            f.write("root:sub\n")
        cls.node, cls.c = start_node(cls.pg, cls.port,
                                     more='allowed-hosts = [ "mta.example.net" ]; '
                                          'dashboard-dir = "%s";' % cls.dash)
        cls.pg.query("SELECT mta.pause_job('held')")
        enqueue(cls.pg, ["a@api.test", "b@api.test", "c@api.test"], job="J1")
        enqueue(cls.pg, ["x@other.test"], job="held")

    @classmethod
    def tearDownClass(cls):
        stop_node(cls.node)
        cls.pg.stop()

    def tearDown(self):
        self.assertTrue(self.node.proc.alive(), self.node.log()[-3000:])

    def test_served_by_the_smtp_in_processes(self):
        # Every smtp-in process binds listen.http (SO_REUSEPORT); the root
        # parses no request.
        pids = [int(p) for p in re.findall(r"proc=smtp-in index=\d+ pid=(\d+) started",
                                           self.node.log())]
        self.assertGreaterEqual(len(pids), 1)
        out = subprocess.run(["ss", "-Htlnp", "sport = :%d" % self.port], capture_output=True,
                             text=True, check=True).stdout
        owners = sorted(int(p) for p in re.findall(r"pid=(\d+),", out))
        self.assertEqual(owners, sorted(pids), out)
        self.assertNotIn(self.node.proc.pid, owners)

    # ---- authentication ----

    def test_token_required(self):
        for path in ("/api/status", "/api/queues", "/api/nodes", "/api/jobs", "/metrics",
                     "/api/no-such-thing"):
            st, hdrs, body = self.c.request("GET", path, token=None)
            self.assertEqual(st, 401, path)
            self.assertTrue(hdrs.get("www-authenticate", "").startswith("Bearer"), hdrs)
            st, hdrs, _ = self.c.request("GET", path, token="wrong")
            self.assertEqual(st, 401, path)
            st, _, _ = self.c.request("GET", path, token=TOKEN + "x")
            self.assertEqual(st, 401, path)
            st, _, _ = self.c.request("GET", path, token=TOKEN[:-1])
            self.assertEqual(st, 401, path)
        st, _, _ = self.c.request("GET", "/api/status", token=None,
                                  headers={"Authorization": "Basic dDBrOg=="})
        self.assertEqual(st, 401)
        st, _, _ = self.c.request("POST", "/api/pause", token=None, body="queue=api.test")
        self.assertEqual(st, 401)
        self.assertFalse(self.pg.scalar("SELECT bool_or(paused) FROM mta.queues "
                                        "WHERE domain = 'api.test'"))
        st, hdrs, _ = self.c.request("GET", "/api/status")
        self.assertEqual(st, 200)
        self.assertEqual(hdrs["content-type"], "application/json")

    # ---- reading ----

    def test_status(self):
        st, _, s = self.c.json("GET", "/api/status")
        self.assertEqual(st, 200)
        for k in ("queued", "ready", "deferred", "in_flight", "queues", "paused_queues",
                  "nodes_alive", "delivered_1h", "bounced_1h", "version", "node"):
            self.assertIn(k, s)
        self.assertEqual(s["queued"], 4)
        self.assertEqual(s["queued"], s["ready"] + s["deferred"] + s["in_flight"])
        self.assertEqual(s["node"], "node-a")
        wait_for(lambda: self.c.json("GET", "/api/status")[2]["nodes_alive"] >= 1,
                 what="a live node in /api/status")

    def test_queues(self):
        st, _, rows = self.c.json("GET", "/api/queues")
        self.assertEqual(st, 200)
        self.assertIsInstance(rows, list)
        q = [r for r in rows if r["domain"] == "api.test" and r["pipe"] == "bulk"]
        self.assertEqual(len(q), 1, rows)
        q = q[0]
        self.assertEqual(set(q), {"domain", "vmta", "pipe", "queued", "ready", "deferred",
                                  "in_flight", "oldest", "next_attempt", "paused", "backoff",
                                  "connections", "last_error", "deferred_until",
                                  "rollup_key"})
        self.assertEqual(q["queued"], 3)
        self.assertIsNone(q["deferred_until"])
        self.assertIsNone(q["vmta"])
        self.assertIsInstance(q["paused"], bool)

    def test_nodes(self):
        st, _, rows = self.c.json("GET", "/api/nodes")
        self.assertEqual(st, 200)
        mine = [r for r in rows if r["name"] == "node-a"]
        self.assertTrue(mine, rows)
        self.assertIn("alive", mine[0])
        self.assertIn("transactional", [r["pipe"] for r in mine])

    def test_jobs(self):
        st, _, rows = self.c.json("GET", "/api/jobs")
        self.assertEqual(st, 200)
        self.assertIn("held", [r["job_id"] for r in rows])
        st, _, rows = self.c.json("GET", "/api/jobs?job=held")
        self.assertEqual(st, 200)
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0]["job_id"], "held")
        self.assertTrue(rows[0]["paused"])
        self.assertEqual(rows[0]["queued"], 1)
        st, _, rows = self.c.json("GET", "/api/jobs?job=nope")
        self.assertEqual((st, rows), (200, []))
        # SQL injection through the parameter is data
        st, _, rows = self.c.json("GET", "/api/jobs?job=%27%20OR%20%271%27%3D%271")
        self.assertEqual((st, rows), (200, []))
        st, _, _ = self.c.json("GET", "/api/jobs?job=")
        self.assertEqual(st, 400)

    def test_head(self):
        st, hdrs, body = self.c.request("HEAD", "/api/status")
        self.assertEqual(st, 200)
        self.assertEqual(body, b"")

    # ---- steering ----

    def ready_bulk(self):
        return [d for (d,) in self.pg.query("SELECT domain FROM mta.ready_queues('bulk', 100)")]

    def test_pause_resume_queue(self):
        self.assertIn("api.test", self.ready_bulk())
        st, _, r = self.c.form("/api/pause", "queue=api.test")
        self.assertEqual(st, 200, r)
        self.assertEqual(r, {"action": "pause", "queue": "api.test", "queues": 1})
        self.assertTrue(self.pg.scalar("SELECT paused FROM mta.queues WHERE domain = 'api.test'"))
        self.assertNotIn("api.test", self.ready_bulk())
        st, _, rows = self.c.json("GET", "/api/queues")
        self.assertTrue([q for q in rows if q["domain"] == "api.test"][0]["paused"])
        # resume with the parameter in the query string instead of the body
        st, _, r = self.c.json("POST", "/api/resume?queue=API.test")
        self.assertEqual(st, 200, r)
        self.assertEqual(r["queues"], 1)
        self.assertFalse(self.pg.scalar("SELECT paused FROM mta.queues WHERE domain = 'api.test'"))
        self.assertIn("api.test", self.ready_bulk())

    def test_pause_resume_queue_without_vmta(self):
        # the dashboard's button on the queue "vmq.test" (no vmta) sends vmta=
        # and must leave "vmq.test/vmta-a" alone, and the other way round
        self.pg.query("INSERT INTO mta.queue (pipe, domain, vmta) SELECT p.name, 'vmq.test', v "
                      "FROM mta.pipes p, (VALUES (''), ('vmta-a')) AS t(v)")
        paused = ("SELECT string_agg(DISTINCT vmta || ':' || paused, ',' ORDER BY vmta || ':' || paused)"
                  " FROM mta.queue WHERE domain = 'vmq.test'")
        st, _, r = self.c.form("/api/pause", "queue=vmq.test&vmta=")
        self.assertEqual(st, 200, r)
        self.assertEqual(r["queue"], "vmq.test")
        self.assertGreaterEqual(r["queues"], 1)
        self.assertEqual(self.pg.scalar(paused), ":true,vmta-a:false")
        st, _, r = self.c.form("/api/resume", "queue=vmq.test&vmta=")
        self.assertEqual(st, 200, r)
        self.assertEqual(self.pg.scalar(paused), ":false,vmta-a:false")
        st, _, r = self.c.form("/api/pause", "queue=vmq.test&vmta=vmta-a")
        self.assertEqual((st, r["queue"]), (200, "vmq.test/vmta-a"), r)
        self.assertEqual(self.pg.scalar(paused), ":false,vmta-a:true")
        st, _, r = self.c.form("/api/resume", "queue=vmq.test&vmta=vmta-a")
        self.assertEqual(self.pg.scalar(paused), ":false,vmta-a:false")
        # the domain alone still means every queue of the domain
        st, _, r = self.c.form("/api/pause", "queue=vmq.test")
        self.assertEqual(self.pg.scalar(paused), ":true,vmta-a:true")
        st, _, r = self.c.form("/api/resume", "queue=vmq.test")
        self.assertEqual(self.pg.scalar(paused), ":false,vmta-a:false")
        for body in ("vmta=", "job=J1&vmta=", "queue=vmq.test/vmta-a&vmta=",
                     "queue=vmq.test&vmta=a/b", "queue=vmq.test&vmta=&vmta=x"):
            st, _, r = self.c.form("/api/pause", body)
            self.assertEqual(st, 400, body)
        self.assertEqual(self.pg.scalar(paused), ":false,vmta-a:false")
        # the dashboard sends the queue's vmta, never the domain alone
        with open(os.path.join(self.dash, "app.js")) as f:
            js = f.read()
        self.assertIn('vmta: value.vmta || ""', js)

    def test_pause_resume_job(self):
        st, _, r = self.c.form("/api/pause", "job=J1")
        self.assertEqual((st, r), (200, {"action": "pause", "job": "J1"}))
        self.assertTrue(self.pg.scalar("SELECT paused FROM mta.jobs WHERE job_id = 'J1'"))
        self.assertNotIn("api.test", self.ready_bulk())
        st, _, r = self.c.form("/api/resume", "job=J1")
        self.assertEqual(st, 200)
        self.assertFalse(self.pg.scalar("SELECT paused FROM mta.jobs WHERE job_id = 'J1'"))
        self.assertIn("api.test", self.ready_bulk())

    def test_steer_bad_parameters(self):
        for body in ("", "queue=a.test&job=J1", "queue=", "queue=a.test/", "queue=/v",
                     "queue=a.test/v/w", "queue=a.test&queue=b.test", "job="):
            st, _, r = self.c.form("/api/pause", body)
            self.assertEqual(st, 400, body)
            self.assertIn("error", r)
        st, _, r = self.c.json("POST", "/api/pause", body="queue=a.test",
                               headers={"Content-Type": "application/json"})
        self.assertEqual(st, 400)
        # a virtual MTA name the SQL API refuses is bad input, not a server error
        st, _, r = self.c.form("/api/pause", "queue=zz.test/bad%20vmta")
        self.assertEqual(st, 400, r)
        self.assertFalse(self.pg.scalar("SELECT count(*) FROM mta.queue WHERE domain = 'zz.test'"))

    # ---- metrics ----

    def test_metrics(self):
        st, hdrs, body = self.c.request("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(hdrs["content-type"].startswith("text/plain; version=0.0.4"), hdrs)
        m = parse_prometheus(body.decode())
        lab = lambda **kw: frozenset(kw.items())
        self.assertEqual(m[("pgmta_queue_recipients",
                            lab(domain="api.test", vmta="", pipe="bulk", state="ready"))], 3)
        self.assertEqual(m[("pgmta_queue_recipients",
                            lab(domain="api.test", vmta="", pipe="bulk", state="deferred"))], 0)
        self.assertEqual(m[("pgmta_queue_recipients",
                            lab(domain="api.test", vmta="", pipe="bulk", state="in_flight"))], 0)
        self.assertIn(("pgmta_nodes_alive", frozenset()), m)
        # rollup_key: the key the connections are held under, the domain
        # itself without an MX rollup
        self.assertEqual(m[("pgmta_queue_connections",
                            lab(domain="api.test", vmta="", pipe="bulk", rollup_key="api.test"))],
                         0)
        # the node's own families (test_metrics checks their values)
        self.assertEqual(m[("pgmta_injected_recipients_total", lab(door="smtp"))], 0)
        self.assertIn(("pgmta_smtp_transaction_seconds_count", frozenset()), m)
        self.assertTrue(any(k[0] == "pgmta_process_resident_bytes" for k in m))
        self.assertEqual(m[("pgmta_acct_events_last_hour", lab(type="r"))], 4)
        builds = [k for k in m if k[0] == "pgmta_build_info"]
        self.assertEqual(len(builds), 1)
        self.assertIn("version", dict(builds[0][1]))
        # every sample of a family follows its TYPE line, families are not split
        seen, current = set(), None
        for line in body.decode().splitlines():
            if line.startswith("# TYPE"):
                current = line.split()[2]
                self.assertNotIn(current, seen)
                seen.add(current)
            elif line and not line.startswith("#"):
                self.assertTrue(line.startswith(current), line)

    # ---- errors ----

    def test_method_not_allowed(self):
        for method, path, allow in (("GET", "/api/pause", "POST"), ("PUT", "/api/resume", "POST"),
                                    ("GET", "/api/reload", "POST"),
                                    ("POST", "/api/status", "GET, HEAD"),
                                    ("DELETE", "/api/queues", "GET, HEAD"),
                                    ("PATCH", "/metrics", "GET, HEAD"),
                                    ("POST", "/", "GET, HEAD")):
            st, hdrs, _ = self.c.request(method, path, body="" if method != "GET" else None)
            self.assertEqual(st, 405, (method, path))
            self.assertEqual(hdrs.get("allow"), allow, (method, path))

    def test_not_found(self):
        for path in ("/api/nope", "/api/status/x", "/api/", "/nope.html", "/index.php",
                     "/metrics2"):
            st, _, _ = self.c.request("GET", path)
            self.assertEqual(st, 404, path)

    def test_body_too_large(self):
        body = "queue=api.test&pad=" + "x" * (70 * 1024)
        st, _, _ = self.c.request("POST", "/api/pause", body=body,
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(st, 413)
        self.assertFalse(self.pg.scalar("SELECT bool_or(paused) FROM mta.queues "
                                        "WHERE domain = 'api.test'"))
        # just under the limit is accepted
        body = "job=J2&pad=" + "x" * (60 * 1024)
        st, _, _ = self.c.form("/api/resume", body)
        self.assertEqual(st, 200)

    def test_foreign_host(self):
        for host in ("evil.example", "evil.example:%d" % self.port, "127.0.0.1.evil.example",
                     "localhost.evil.example", "", "127.0.0.1:80x", "[::1", "mta.example.net.x"):
            st, _, _ = self.c.request("GET", "/api/status", host=host)
            self.assertEqual(st, 400, host)
            st, _, _ = self.c.request("GET", "/", host=host)
            self.assertEqual(st, 400, host)
        for host in ("localhost", "localhost:%d" % self.port, "LOCALHOST", "127.0.0.1",
                     "[::1]:%d" % self.port, "[::1]", "mta.example.net",
                     "mta.example.net:443"):
            st, _, _ = self.c.request("GET", "/api/status", host=host)
            self.assertEqual(st, 200, host)

    def test_host_header_parsing(self):
        # Host goes through the one host:port parser (node/hostport.c): a
        # host name, an IPv4 address or a bracketed IP address, with an
        # optional port of 1..65535.
        p = self.port
        for host in ("[::1]:%d" % p, "[::1]", "127.0.0.1:%d" % p,
                     "[127.0.0.1]:%d" % p, "localhost:1", "localhost:65535", "LocalHost:%d" % p,
                     "MTA.Example.NET:8080"):
            st, _, body = self.c.request("GET", "/api/status", host=host)
            self.assertEqual(st, 200, (host, body))
        for host in ("localhost:notaport", "127.0.0.1:notaport", "[::1]:notaport",
                     "localhost:0", "localhost:65536", "localhost:99999", "localhost:",
                     "[::1]:", "[::1]:123456", "::1", "::1:%d" % p, "[::1]x", "[::1]:%dx" % p,
                     "[localhost]", "[localhost]:%d" % p, "[IPv6:::1]:%d" % p, "localhost.",
                     "local host", "localhost:%d:%d" % (p, p), "[::2]:%d" % p,
                     "mta.example.net:x", "[mta.example.net]"):
            for path in ("/api/status", "/"):
                st, _, body = self.c.request("GET", path, host=host)
                self.assertEqual(st, 400, (host, path, body))
                if path == "/api/status":
                    self.assertIn(b"Host not allowed", body)

    def test_idle_client_goes_away(self):
        # a client that disconnects before its answer must not hurt the daemon
        import socket
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", self.port))
            s.sendall(b"GET /api/queues HTTP/1.1\r\nHost: localhost\r\n"
                      b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
            s.close()
        s = socket.create_connection(("127.0.0.1", self.port))
        s.sendall(b"GET /api/status HTTP/1.1\r\nHost: localhost\r\n" + b"X-Big: " +
                  b"a" * 40000 + b"\r\n\r\n")
        s.settimeout(10)
        try:
            data = s.recv(100)
            self.assertFalse(data.startswith(b"HTTP/1.1 200"), data)
        except OSError:
            pass
        s.close()
        self.assertTrue(self.c.up())

    def test_slow_database(self):
        # A query stuck behind a lock: the client gets 503 after the API's
        # database timeout, a client that left meanwhile costs nothing, and
        # the late answer is dropped without harm.
        import socket
        lock = self.pg.connect(autocommit=False)
        cur = lock.cursor()
        cur.execute("LOCK TABLE mta.queue IN ACCESS EXCLUSIVE MODE")
        try:
            gone = socket.create_connection(("127.0.0.1", self.port))
            gone.sendall(b"GET /api/queues HTTP/1.1\r\nHost: localhost\r\n"
                         b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
            time.sleep(0.2)
            gone.close()
            t0 = time.monotonic()
            st, _, r = self.c.json("GET", "/api/status")
            self.assertEqual(st, 503, r)
            self.assertIn("in time", r["error"])
            self.assertGreater(time.monotonic() - t0, 5)
            # static files do not wait for the database
            self.assertEqual(self.c.request("GET", "/", token=None)[0], 200)
        finally:
            lock.rollback()
            lock.close()
        wait_for(self.c.up, what="the API after the lock is gone")
        self.assertTrue(self.node.proc.alive(), self.node.log()[-3000:])

    # ---- dashboard ----

    def test_dashboard(self):
        st, hdrs, body = self.c.request("GET", "/", token=None)
        self.assertEqual(st, 200)
        self.assertTrue(hdrs["content-type"].startswith("text/html"), hdrs)
        self.assertIn(b"<title>pgmta</title>", body)
        self.assertIn("default-src 'self'", hdrs["content-security-policy"])
        self.assertEqual(hdrs["x-frame-options"], "DENY")
        for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css"),
                            ("index.html", "text/html")):
            st, hdrs, body = self.c.request("GET", "/" + name, token=None)
            self.assertEqual(st, 200, name)
            self.assertTrue(hdrs["content-type"].startswith(ctype), hdrs)
            with open(os.path.join(DASHBOARD_SRC, name), "rb") as f:
                self.assertEqual(body, f.read())
        st, _, body = self.c.request("GET", "/only-here.css", token=None)
        self.assertEqual((st, body), (200, b"/* only in the configured directory */\n"))

    def chromium(self, *args):
        profile = tmpdir()
        r = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                            "--user-data-dir=" + profile, "--virtual-time-budget=5000"] +
                           list(args), capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        return r.stdout

    def test_dashboard_in_browser(self):
        # The page takes the token from the fragment, calls the API and
        # renders what it answers.
        url = "http://127.0.0.1:%d/" % self.port
        dom = self.chromium("--dump-dom", url + "#token=" + TOKEN)
        queues = dom[dom.index('id="queues"'):dom.index('id="nodes"')]
        self.assertRegex(queues, r"<td>api\.test</td><td></td><td>bulk</td>"
                                 r'<td class="n">3</td><td class="n">3</td>')
        self.assertIn("<td>other.test</td>", queues)
        self.assertIn("<dt>queued</dt><dd>4</dd>", dom)
        self.assertIn("<td>held</td><td class=\"yes\">yes</td>", dom)
        self.assertIn("<td>(root)</td>", dom)
        self.assertRegex(dom, r'<form id="login" hidden')
        # a wrong token brings the login form back with a message
        dom = self.chromium("--dump-dom", url + "#token=wrong")
        self.assertRegex(dom, r'<main id="main" hidden')
        self.assertIn("The token was refused.", dom)
        png = os.path.join(tmpdir(), "dashboard.png")
        self.chromium("--window-size=1400,900", "--screenshot=" + png, url + "#token=" + TOKEN)
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_path_traversal(self):
        for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/%2e%2e/",
                     "/..%2f..%2fetc%2fpasswd", "/.%2e/etc/passwd", "//etc/passwd",
                     "/./index.html", "/dashboard/../index.html", "/..", "/.htaccess",
                     "/index.html%00.js", "/%2fetc%2fpasswd", "/etc/passwd",
                     "/../secret.html", "/%2e%2e/secret.html", "/..%2fsecret.html",
                     "/sub/x.html", "/sub%2fx.html", "/sub", "/.", "/"+"a" * 300 + ".html"):
            st, _, body = self.c.request("GET", path, token=None)
            self.assertIn(st, (400, 404), path)
            self.assertNotIn(b"root:", body, path)


def minute_epoch(text):
    """Seconds since the epoch of a timestamptz as the API renders it."""
    import datetime
    return datetime.datetime.fromisoformat(text).timestamp()


# Known accounting rows, relative to T0 = the start of the current minute:
# (count, type, offset, queue, vmta, node, bounce_cat).
KNOWN_ACCT = [
    (3, "d", "-2 minutes +5 seconds", "a.test/v1", "v1", "node-x", None),
    (2, "b", "-2 minutes +7 seconds", "a.test/v1", "v1", "node-x", "bad-mailbox"),
    (1, "t", "-2 minutes +9 seconds", "a.test/v1", "v1", "node-x", "other"),
    (1, "b", "-30 minutes", "b.test/v2", "v2", "node-y", "spam-related"),
    (4, "t", "-30 minutes", "b.test/v2", "v2", "node-y", "other"),
    (5, "d", "-90 minutes", "c.test", None, "node-x", None),   # outside 60 minutes
    (7, "d", "-7 hours", "c.test", None, "node-x", None),      # outside 6 hours
    (2, "d", "-3 days", "c.test", None, "node-x", None),       # outside everything
]


class HttpStatsTest(unittest.TestCase):
    """GET /api/stats and /api/dashboard against accounting rows inserted
    with known times (a database of their own: the rows would change what
    HttpApiTest counts)."""

    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.port = free_port()
        cls.node, cls.c = start_node(cls.pg, cls.port)
        for n, typ, off, queue, vmta, node, cat in KNOWN_ACCT:
            cls.pg.query("INSERT INTO mta.acct (type, time_logged, queue, vmta, node, bounce_cat, "
                         "rcpt) SELECT %s, date_trunc('minute', now()) + %s::interval, %s, %s, "
                         "%s, %s, 'r' || i || '@' || split_part(%s, '/', 1) "
                         "FROM generate_series(1, %s) i", (typ, off, queue, vmta, node, cat,
                                                           queue, n))
        enqueue(cls.pg, ["u%d@big.test" % i for i in range(5)])
        enqueue(cls.pg, ["u@small.test"])
        cls.pg.query("INSERT INTO mta.webhook_cursor (consumer, last_time) "
                     "VALUES ('hook-a', now() - interval '45 minutes')")
        cls.pg.query("INSERT INTO mta.suppression (address, source) VALUES "
                     "('x@y.test', 'manual'), ('@z.test', 'import'), ('w@y.test', 'import')")

    @classmethod
    def tearDownClass(cls):
        stop_node(cls.node)
        cls.pg.stop()

    def test_token_required(self):
        for path in ("/api/stats", "/api/stats?hours=2", "/api/dashboard"):
            st, hdrs, _ = self.c.request("GET", path, token=None)
            self.assertEqual(st, 401, path)
            self.assertTrue(hdrs.get("www-authenticate", "").startswith("Bearer"), hdrs)
            self.assertEqual(self.c.request("GET", path, token="wrong")[0], 401, path)
        self.assertEqual(self.c.request("HEAD", "/api/stats")[0], 200)
        self.assertEqual(self.c.request("POST", "/api/dashboard", body="")[0], 405)

    def test_bad_parameters(self):
        for path in ("/api/stats?hours=0", "/api/stats?hours=49", "/api/stats?hours=x",
                     "/api/stats?hours=", "/api/stats?hours=-1", "/api/stats?hours=+2",
                     "/api/stats?hours=2&hours=3", "/api/stats?hours=99999999999999999999",
                     "/api/stats?hours=1%3BDROP%20TABLE%20mta.acct",
                     "/api/dashboard?minutes=0", "/api/dashboard?minutes=1441",
                     "/api/dashboard?minutes=1.5", "/api/dashboard?minutes=%2060",
                     "/api/dashboard?minutes=%0960", "/api/dashboard?minutes=0x10"):
            st, _, body = self.c.json("GET", path)
            self.assertEqual(st, 400, path)
            self.assertIn("error", body)
        self.assertGreater(self.pg.scalar("SELECT count(*) FROM mta.acct"), 0)

    def sql_minutes(self, first, last):
        """{minute epoch: (r, d, b, t)} of mta.acct for the minutes first..last."""
        return {int(e): tuple(c) for e, *c in self.pg.query(
            "SELECT extract(epoch FROM date_trunc('minute', time_logged)), "
            "count(*) FILTER (WHERE type = 'r'), count(*) FILTER (WHERE type = 'd'), "
            "count(*) FILTER (WHERE type = 'b'), count(*) FILTER (WHERE type = 't') "
            "FROM mta.acct WHERE time_logged >= to_timestamp(%s) "
            "AND time_logged < to_timestamp(%s) + interval '1 minute' GROUP BY 1",
            (first, last))}

    def test_stats_per_minute(self):
        for hours, delivered in ((None, 3 + 5), (1, 3), (8, 3 + 5 + 7), (48, 3 + 5 + 7)):
            st, hdrs, rows = self.c.json("GET", "/api/stats" + ("?hours=%d" % hours
                                                                if hours else ""))
            self.assertEqual(st, 200)
            self.assertEqual(hdrs["content-type"], "application/json")
            self.assertEqual(len(rows), (hours or 6) * 60)
            self.assertEqual(set(rows[0]), {"minute", "received", "delivered", "bounced",
                                            "deferred"})
            epochs = [int(minute_epoch(r["minute"])) for r in rows]
            self.assertEqual(epochs, list(range(epochs[0], epochs[0] + 60 * len(rows), 60)))
            self.assertLessEqual(abs(epochs[-1] - time.time()), 120)
            got = {e: (r["received"], r["delivered"], r["bounced"], r["deferred"])
                   for e, r in zip(epochs, rows) if any((r["received"], r["delivered"],
                                                         r["bounced"], r["deferred"]))}
            self.assertEqual(got, self.sql_minutes(epochs[0], epochs[-1]), hours)
            self.assertEqual(sum(r["delivered"] for r in rows), delivered, hours)
            self.assertEqual(sum(r["received"] for r in rows), 6, hours)
        # the minute two minutes back holds exactly the first three groups
        st, _, rows = self.c.json("GET", "/api/stats?hours=1")
        t0 = self.pg.scalar("SELECT extract(epoch FROM date_trunc('minute', now()) "
                            "- interval '2 minutes')")
        row = [r for r in rows if int(minute_epoch(r["minute"])) == int(t0)]
        if row:  # absent only if the clock passed an hour boundary meanwhile
            self.assertEqual((row[0]["delivered"], row[0]["bounced"], row[0]["deferred"]),
                             (3, 2, 1))

    def test_dashboard_breakdowns(self):
        st, hdrs, d = self.c.json("GET", "/api/dashboard")
        self.assertEqual(st, 200)
        self.assertEqual(hdrs["content-type"], "application/json")
        self.assertEqual(set(d), {"minutes", "totals", "bounce_categories", "top_backlog",
                                  "top_deferral", "vmtas", "nodes", "webhooks",
                                  "suppression"})
        self.assertEqual(d["minutes"], 60)
        sql = dict(self.pg.query("SELECT type, count(*) FROM mta.acct "
                                 "WHERE time_logged >= now() - interval '60 minutes' "
                                 "GROUP BY 1"))
        self.assertEqual(d["totals"], {"received": sql.get("r", 0), "delivered": sql.get("d", 0),
                                       "bounced": sql.get("b", 0), "deferred": sql.get("t", 0)})
        self.assertEqual(d["totals"], {"received": 6, "delivered": 3, "bounced": 3,
                                       "deferred": 5})
        self.assertEqual(d["bounce_categories"], [{"category": "bad-mailbox", "bounced": 2},
                                                  {"category": "spam-related", "bounced": 1}])
        self.assertEqual(d["top_deferral"], [
            {"queue": "b.test/v2", "delivered": 0, "bounced": 1, "deferred": 4, "rate": 0.8},
            {"queue": "a.test/v1", "delivered": 3, "bounced": 2, "deferred": 1,
             "rate": 0.1667}])
        self.assertEqual(d["vmtas"], [
            {"vmta": "v1", "delivered": 3, "bounced": 2, "deferred": 1, "delivered_5m": 3},
            {"vmta": "v2", "delivered": 0, "bounced": 1, "deferred": 4, "delivered_5m": 0}])
        self.assertEqual(d["nodes"], [
            {"node": "node-x", "delivered": 3, "bounced": 2, "deferred": 1, "delivered_5m": 3},
            {"node": "node-y", "delivered": 0, "bounced": 1, "deferred": 4, "delivered_5m": 0}])
        backlog = self.pg.query("SELECT domain, vmta, pipe, queued, paused, backoff "
                                "FROM mta.queues WHERE queued > 0 "
                                "ORDER BY queued DESC, domain LIMIT 10")
        self.assertEqual([(q["domain"], q["vmta"], q["pipe"], q["queued"], q["paused"],
                           q["backoff"]) for q in d["top_backlog"]], backlog)
        self.assertEqual(backlog[0][:4], ("big.test", None, "bulk", 5))
        self.assertEqual(set(d["top_backlog"][0]), {"domain", "vmta", "pipe", "queued", "ready",
                                                    "deferred", "in_flight", "paused",
                                                    "backoff", "last_error"})
        behind = self.pg.scalar("SELECT events_behind FROM mta.webhook_lag "
                                "WHERE consumer = 'hook-a'")
        self.assertGreater(behind, 0)
        self.assertEqual([(w["consumer"], w["events_behind"]) for w in d["webhooks"]],
                         [("hook-a", behind)])
        self.assertGreater(d["webhooks"][0]["seconds_behind"], 0)
        self.assertEqual(d["suppression"], [{"source": "import", "entries": 2},
                                            {"source": "manual", "entries": 1}])
        # a shorter window: only the rows of two minutes back
        st, _, d = self.c.json("GET", "/api/dashboard?minutes=5")
        self.assertEqual(st, 200)
        self.assertEqual((d["minutes"], d["totals"]["delivered"], d["totals"]["bounced"],
                          d["totals"]["deferred"]), (5, 3, 2, 1))
        st, _, d = self.c.json("GET", "/api/dashboard?minutes=1440")
        self.assertEqual((st, d["totals"]["delivered"]), (200, 3 + 5 + 7))

    def test_roles(self):
        # the node's role and the monitoring role may read them, the
        # injecting role may not
        for role in ("mta_node", "mta_monitor"):
            r = self.pg.psql("SELECT count(*) FROM mta.acct_minutes(2); "
                             "SELECT mta.dashboard(10) IS NOT NULL",
                             dsn=self.pg.role_dsn(role))
            self.assertEqual(r.stdout.split(), ["120", "t"], role)
        r = self.pg.psql("SELECT mta.dashboard(10)", dsn=self.pg.role_dsn("mta_inject"),
                         check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("permission denied", r.stderr)


class HttpReloadTest(unittest.TestCase):
    def setUp(self):
        self.pg = PgServer()
        self.port = free_port()
        self.node, self.c = start_node(self.pg, self.port)
        with open(self.node.conf_path) as f:
            self.conf = f.read()

    def tearDown(self):
        stop_node(self.node)
        self.pg.stop()

    def write_conf(self, text):
        with open(self.node.conf_path, "w") as f:
            f.write(text)

    def test_reload_good_and_broken(self):
        # a good change: new token, a new allowed host
        self.write_conf(self.conf.replace('token = "t0k";',
                                          'token = "n3w"; allowed-hosts = [ "mta.test" ];'))
        st, _, r = self.c.json("POST", "/api/reload")
        self.assertEqual((st, r), (200, {"reloaded": True}))
        # The root reloads and tells every process that serves listen.http;
        # new connections land on any of them, so ask several times.
        wait_for(lambda: all(self.c.request("GET", "/api/status")[0] == 401 for _ in range(10)),
                 what="every HTTP process on the new configuration")
        self.assertEqual(self.c.request("GET", "/api/status", token="n3w")[0], 200)
        self.assertEqual(self.c.request("GET", "/api/status", token="n3w", host="mta.test")[0],
                         200)
        # a broken file: 422 with file:line, the running configuration stays
        self.write_conf(self.conf.replace('token = "t0k";', 'token = "x";')
                        + "\nsmtp-port = 0;\n")
        st, _, r = self.c.json("POST", "/api/reload", token="n3w")
        self.assertEqual(st, 422, r)
        self.assertFalse(r["reloaded"])
        self.assertRegex(r["error"], r"pgmta\.conf:\d+: smtp-port")
        self.assertEqual(self.c.request("GET", "/api/status", token="n3w")[0], 200)
        self.assertEqual(self.c.request("GET", "/api/status", token="x")[0], 401)
        self.assertTrue(self.node.proc.alive())
        # listen.http without a token is refused the same way
        self.write_conf(self.conf.replace('token = "t0k";', ''))
        st, _, r = self.c.json("POST", "/api/reload", token="n3w")
        self.assertEqual(st, 422, r)
        self.assertIn("http.token", r["error"])
        self.assertEqual(self.c.request("GET", "/api/status", token="n3w")[0], 200)

    def test_reload_moves_listener(self):
        port2 = free_port()
        self.write_conf(self.conf.replace("127.0.0.1:%d" % self.port, "127.0.0.1:%d" % port2))
        st, _, r = self.c.json("POST", "/api/reload")
        self.assertEqual(st, 200, r)
        c2 = Client(port2)
        wait_for(c2.up, what="the API on the new port")

        def old_port_closed():
            # every smtp-in process moves on its own SIGHUP from the root
            try:
                self.c.request("GET", "/api/status")
                return False
            except OSError:
                return True
        wait_for(old_port_closed, what="the old port closed in every smtp-in process")
        # SIGHUP reloads the same way
        self.write_conf(self.conf)
        self.node.proc.signal(signal.SIGHUP)
        wait_for(self.c.up, what="the API back on the first port")


class HttpDatabaseDownTest(unittest.TestCase):
    def test_database_down_503_then_back(self):
        pg = PgServer()
        port = free_port()
        node, c = start_node(pg, port)
        try:
            pg.stop(mode="immediate")
            wait_for(lambda: c.request("GET", "/api/status")[0] == 503, timeout=20,
                     what="503 with the database down")
            for path in ("/api/queues", "/api/nodes", "/api/jobs", "/metrics"):
                st, _, body = c.request("GET", path)
                self.assertEqual(st, 503, path)
            st, _, r = c.form("/api/pause", "queue=x.test")
            self.assertEqual(st, 503, r)
            self.assertIn("error", r)
            # the dashboard's files need no database
            self.assertEqual(c.request("GET", "/", token=None)[0], 200)
            self.assertEqual(c.request("GET", "/api/status", token=None)[0], 401)
            time.sleep(1)
            self.assertTrue(node.proc.alive(), node.log()[-3000:])
            pg.start()
            wait_for(c.up, timeout=30, what="the API answering after PostgreSQL is back")
            st, _, r = c.form("/api/pause", "queue=x.test")
            self.assertEqual(st, 200, r)
        finally:
            stop_node(node)
            pg.stop()


class HttpConfigTest(unittest.TestCase):
    def test_listen_http_needs_token(self):
        d = tmpdir()
        path = os.path.join(d, "pgmta.conf")
        with open(path, "w") as f:
            f.write('database = { url = "postgresql:///x"; };\n'
                    'listen = { http = "127.0.0.1:8080"; };\n')
        r = subprocess.run([PGMTAD, "-c", path, "--check"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("pgmta.conf:2: listen.http: the HTTP API needs http.token", r.stderr)
        with open(path, "a") as f:
            f.write('http = { token = "s"; allowed-hosts = [ "a.test" ]; '
                    'dashboard-dir = "/srv/dash"; };\n')
        r = subprocess.run([PGMTAD, "-c", path, "--check"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('allowed-hosts = [ "a.test" ];', r.stdout)
        self.assertIn('dashboard-dir = "/srv/dash";', r.stdout)


if __name__ == "__main__":
    main()
