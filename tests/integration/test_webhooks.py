"""Webhooks: pgmtad posts mta.acct events to HTTP receivers on loopback.

One run of deliveries to an SMTP sink while the receiver of consumer "all"
answers 500, then sleeps past the timeout, is stopped and started again on
the same port, and the sending process is killed with SIGKILL. At the end
every event of the run arrived at "all" (compared with mta.acct), in order,
with duplicates only around the failures; consumer "dj" (types "d", job
prefix "job-a") got exactly the delivered events of jobs job-a*. Every
request is checked against its HMAC-SHA256 signature.

Over https the receiver is a Python http.server wrapped in ssl with a
certificate of a private CA made by the openssl command: events arrive with
ca-file naming that CA; with another CA, or at an address the certificate
does not name, nothing is accepted and the cursor stays; once the
configuration names the right CA (reload) every event arrives. The webhooks entries are checked at load: pgmtad --check names the
file and line of a bad entry and never prints the key."""
import hashlib
import hmac
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import unittest
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dnsserver import DnsServer
from pgmta_test import (PGMTAD, PgServer, Pgmtad, copy_submit, free_port, main, mx_sink, tmpdir,
                        wait_for)

N = 200
BATCH = 20
KEY = b"s3cret-webhook-key"


class Receiver:
    """An HTTP server in a thread that records the events of every batch it
    answers 200 to, with the node that sent it (X-Pgmta-Node). mode: "ok",
    "fail" (500, nothing recorded) or "sleep" (sleeps past the sender's
    timeout, nothing recorded); delay: seconds an "ok" answer waits."""

    def __init__(self, port, tls=None, host="127.0.0.1"):
        self.port = port
        self.host = host
        self.tls = tls  # (cert, key) to serve https
        self.mode = "ok"
        self.delay = 0
        self.batches = []  # lists of event dicts, in the order acknowledged
        self.senders = []  # per batch: (X-Pgmta-Node, time.monotonic() at arrival)
        self.requests = 0
        self.bad_signatures = 0
        self.lock = threading.Lock()
        self.server = None
        self.start()

    def start(self):
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ts = self.headers.get("X-Pgmta-Timestamp", "")
                want = "sha256=" + hmac.new(KEY, ts.encode() + b"." + body,
                                            hashlib.sha256).hexdigest()
                got = self.headers.get("X-Pgmta-Signature", "")
                with rec.lock:
                    rec.requests += 1
                    mode = rec.mode
                    if not hmac.compare_digest(want, got) or \
                            abs(time.time() - int(ts or 0)) > 300:
                        rec.bad_signatures += 1
                        mode = "fail"
                if mode == "sleep":
                    time.sleep(3)
                if mode != "ok":
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                events = json.loads(body)
                with rec.lock:
                    rec.batches.append(events)
                    rec.senders.append((self.headers.get("X-Pgmta-Node"), time.monotonic()))
                time.sleep(rec.delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer((self.host, self.port), Handler)
        self.server.daemon_threads = True
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*self.tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def ids(self):
        with self.lock:
            return [e["id"] for b in self.batches for e in b]

    def count(self):
        with self.lock:
            return sum(len(b) for b in self.batches)


def first_occurrences(ids):
    seen, out = set(), []
    for i in ids:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def make_ca(directory, name):
    """A private CA: (cert, key) in directory."""
    cert = os.path.join(directory, name + "-ca.pem")
    key = os.path.join(directory, name + "-ca.key")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=pgmta test CA " + name, "-keyout", key, "-out", cert,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_server_cert(directory, ca):
    """A server certificate for 127.0.0.1 and localhost signed by ca."""
    key = os.path.join(directory, "server.key")
    csr = os.path.join(directory, "server.csr")
    cert = os.path.join(directory, "server.pem")
    ext = os.path.join(directory, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName = IP:127.0.0.1, DNS:localhost\n"
                "extendedKeyUsage = serverAuth\nbasicConstraints = CA:FALSE\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", key,
            "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
            "-days", "1", "-extfile", ext, "-out", cert)
    return cert, key


def write_key(directory, mode=0o600):
    path = os.path.join(directory, "esp.key")
    with open(path, "wb") as f:
        f.write(KEY + b"\n")
    os.chmod(path, mode)
    return path


class Webhooks(unittest.TestCase):
    def test_horizon_refuses_an_owner_blind_to_other_roles(self):
        """Without pg_read_all_stats the horizon would pass other roles' open
        transactions and skip their events: it fails loudly instead."""
        import psycopg2
        pg = PgServer()
        pg.psql("CREATE ROLE wh_owner NOLOGIN; GRANT USAGE, CREATE ON SCHEMA mta TO wh_owner;"
                " ALTER FUNCTION mta.webhook_horizon(interval) OWNER TO wh_owner")
        with self.assertRaises(psycopg2.Error) as cm:
            pg.scalar("SELECT mta.webhook_horizon()")
        self.assertEqual(cm.exception.pgcode, "42501")
        self.assertIn("pg_read_all_stats", str(cm.exception))
        pg.psql("GRANT pg_read_all_stats TO wh_owner")
        self.assertIsNotNone(pg.scalar("SELECT mta.webhook_horizon()"))

    def test_https_verified_against_ca_file(self):
        pg = PgServer()
        dns = DnsServer()
        d = tmpdir("pgmta-webhook-tls-")
        keyfile = write_key(d)
        good, other = make_ca(d, "good"), make_ca(d, "other")
        server = make_server_cert(d, good)
        pa = free_port()
        ra = Receiver(pa, tls=server)
        smtp = free_port("127.0.0.42")
        sink = mx_sink(dns, ["h%d.test" % i for i in range(2)], "127.0.0.42", smtp)
        # the same certificate (127.0.0.1, localhost) on 127.0.0.2: a mismatch
        pm = free_port("127.0.0.2")
        rm = Receiver(pm, tls=server, host="127.0.0.2")
        # "ip": the address literal, matched against the IP SAN, first with
        # the wrong CA; "name": localhost (SNI, DNS SAN) with the right one;
        # "mismatch": the right CA, an address the certificate does not name
        hooks = ('webhooks = ( { name = "ip"; url = "https://127.0.0.1:%d/events"; '
                 'secret-file = "%s"; ca-file = "%%s"; batch = 10; timeout = "2s"; '
                 'max-retry-after = "1s"; },\n'
                 '  { name = "name"; url = "https://localhost:%d/hook"; secret-file = "%s"; '
                 'ca-file = "%s"; types = "d"; },\n'
                 '  { name = "mismatch"; url = "https://127.0.0.2:%d/"; secret-file = "%s"; '
                 'ca-file = "%s"; max-retry-after = "1s"; } );\n'
                 % (pa, keyfile, pa, keyfile, good[0], pm, keyfile, good[0]))
        extra = 'smtp-port = %d;\n%s' % (smtp, hooks % other[0])
        node = Pgmtad(pg, dns, extra=extra)
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.webhook_cursor") == 3,
                 timeout=30, what="webhook cursors")
        start = pg.scalar("SELECT min(last_time) FROM mta.webhook_cursor")
        n = 30
        copy_submit(pg, [("s@example.com", "u%d@h%d.test" % (i, i % 2),
                          "Subject: %d\r\n\r\nbody\r\n" % i, "job-%d" % i)
                         for i in range(n)])

        def ids_of(where):
            return [r[0] for r in pg.query(
                "SELECT id FROM mta.acct WHERE id IS NOT NULL AND time_logged >= %s " + where +
                " ORDER BY time_logged, id", (start,))]
        wait_for(lambda: len(ids_of("AND type = 'd'")) >= n, timeout=60, what="deliveries")
        want = ids_of("")
        self.assertEqual(len(want), 2 * n)
        # the name consumer verified the certificate and got its events
        wait_for(lambda: len(set(ra.ids()) & set(want)) >= n, timeout=60,
                 what="events of 'name' over https")
        # the ip consumer: refused certificate, several times, nothing accepted
        wait_for(lambda: len(re.findall(r"consumer=ip event=post-failed error=\"TLS: "
                                        r"certificate verification failed", node.log())) >= 2,
                 timeout=30, what="verification failures logged")
        row = pg.query("SELECT delivered, failures, last_error FROM mta.webhook_lag "
                       "WHERE consumer = 'ip'")[0]
        self.assertEqual(row[0], 0, "the cursor of 'ip' moved")
        self.assertGreaterEqual(row[1], 2)
        self.assertIn("certificate verification failed", row[2])
        wait_for(lambda: pg.scalar("SELECT events_behind FROM mta.webhook_lag "
                                   "WHERE consumer = 'ip'") == 2 * n,
                 timeout=10, what="every event behind for 'ip'")
        self.assertEqual(len(ra.ids()), n, "only 'name' events were accepted")
        self.assertNotIn("event=delivered", "".join(
            l for l in node.log().splitlines() if "consumer=ip " in l))
        # the configuration names the right CA: reload, every event arrives
        with open(node.conf_path) as f:
            text = f.read()
        with open(node.conf_path, "w") as f:
            f.write(text.replace(other[0], good[0]))
        node.proc.signal(signal.SIGHUP)
        wait_for(lambda: set(ra.ids()) >= set(want), timeout=60, what="every event over https")
        self.assertEqual(ra.bad_signatures, 0)
        # the mismatch never got through: one log line per failed POST
        wait_for(lambda: re.search(r"consumer=mismatch event=post-failed error=\"TLS: certificate "
                                   r"verification failed: IP address mismatch\" failures=2 ",
                                   node.log()), timeout=20, what="mismatch failures logged")
        self.assertEqual(pg.scalar("SELECT delivered FROM mta.webhook_lag "
                                   "WHERE consumer = 'mismatch'"), 0)
        self.assertEqual(rm.requests, 0)
        self.assertEqual(node.stop(), 0)
        self.assertTrue(all(sink.messages()))
        self.assertEqual(set(ra.ids()), set(want))
        self.assertNotIn(KEY.decode(), node.log())
        ra.stop()
        rm.stop()

    def test_faults_kill_and_filters(self):
        pg = PgServer()
        dns = DnsServer()
        d = tmpdir("pgmta-webhook-")
        keyfile = os.path.join(d, "esp.key")
        with open(keyfile, "wb") as f:
            f.write(KEY + b"\n")
        os.chmod(keyfile, 0o600)
        pa, pb = free_port(), free_port()
        ra, rb = Receiver(pa), Receiver(pb)
        smtp = free_port("127.0.0.41")
        sink = mx_sink(dns, ["w%d.test" % i for i in range(3)], "127.0.0.41", smtp)
        hport = free_port()
        extra = ('smtp-port = %d;\n'
                 'listen = { http = "127.0.0.1:%d"; };\nhttp = { token = "tok"; };\n'
                 'webhooks = ( { name = "all"; url = "http://127.0.0.1:%d/events"; '
                 'secret-file = "%s"; batch = %d; timeout = "1s"; max-retry-after = "2s"; },\n'
                 '  { name = "dj"; url = "http://127.0.0.1:%d/hook?x=1"; secret-file = "%s"; '
                 'types = "d"; job-prefix = "job-a"; } );'
                 % (smtp, hport, pa, keyfile, BATCH, pb, keyfile))
        node = Pgmtad(pg, dns, extra=extra)
        # the cursors exist once the sender has taken its consumers
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.webhook_cursor") == 2,
                 timeout=30, what="webhook cursors")
        start = pg.scalar("SELECT min(last_time) FROM mta.webhook_cursor")

        def inject(lo, hi):
            copy_submit(pg, [("s@example.com", "u%d@w%d.test" % (n, n % 3),
                              "Subject: %d\r\n\r\nbody\r\n" % n,
                              "job-a%d" % (n % 2) if n % 4 < 2 else "job-b")
                             for n in range(lo, hi)])

        def delivered():
            return pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'")

        inject(0, 40)
        wait_for(lambda: ra.count() >= 40, timeout=60, what="first events at the receiver")
        # 1. the receiver fails
        ra.mode = "fail"
        before = ra.requests
        inject(40, 80)
        wait_for(lambda: ra.requests >= before + 2, timeout=30, what="failed posts")
        # 2. the receiver times out
        ra.mode = "sleep"
        before = ra.requests
        wait_for(lambda: ra.requests >= before + 2, timeout=30, what="timed-out posts")
        ra.mode = "ok"
        failed = pg.scalar("SELECT failures FROM mta.webhook_cursor WHERE consumer = 'all'")
        self.assertGreaterEqual(failed, 1)
        lag = pg.query("SELECT events_behind, seconds_behind FROM mta.webhook_lag "
                       "WHERE consumer = 'all'")
        self.assertEqual(len(lag), 1)
        # 3. the receiver is stopped and started again on the same port
        ra.stop()
        inject(80, 120)
        time.sleep(3)
        ra.start()
        wait_for(lambda: delivered() >= 120, timeout=60, what="deliveries")
        # 4. the sending process is killed mid-run
        inject(120, N)
        pids = re.findall(r"webhook event=started pid=(\d+)", node.log())
        self.assertTrue(pids)
        os.kill(int(pids[-1]), signal.SIGKILL)
        wait_for(lambda: len(re.findall(r"webhook event=started pid=", node.log())) >= 2,
                 timeout=30, what="the sender restarted")
        wait_for(lambda: delivered() >= N, timeout=90, what="all deliveries")

        def expected(where=""):
            return [r[0] for r in pg.query(
                "SELECT id FROM mta.acct WHERE id IS NOT NULL AND time_logged >= %s " + where +
                " ORDER BY time_logged, id", (start,))]

        want = expected()
        self.assertEqual(len(want), 2 * N)  # 'r' and 'd' per recipient
        wait_for(lambda: set(ra.ids()) >= set(want), timeout=60, what="every event at 'all'")
        want_dj = expected("AND type = 'd' AND job_id LIKE 'job-a%%'")
        self.assertEqual(len(want_dj), N // 2)
        wait_for(lambda: set(rb.ids()) >= set(want_dj), timeout=60, what="every event at 'dj'")
        lag = wait_for(lambda: pg.query(
            "SELECT consumer, events_behind FROM mta.webhook_lag WHERE events_behind = 0 "
            "ORDER BY consumer") if pg.scalar(
                "SELECT count(*) FROM mta.webhook_lag WHERE events_behind = 0") == 2 else None,
            timeout=30, what="no lag")
        self.assertEqual([r[0] for r in lag], ["all", "dj"])

        def metrics():
            req = urllib.request.Request("http://127.0.0.1:%d/metrics" % hport,
                                         headers={"Authorization": "Bearer tok"})
            try:
                return urllib.request.urlopen(req, timeout=5).read().decode()
            except OSError:
                return None
        text = wait_for(metrics, timeout=20, what="/metrics")
        for c in ("all", "dj"):
            self.assertIn('pgmta_webhook_events_behind{consumer="%s"} 0' % c, text)
            self.assertIn('pgmta_webhook_failures{consumer="%s"} 0' % c, text)
        self.assertEqual(node.stop(), 0)

        got = ra.ids()
        self.assertEqual(set(got), set(want), "events lost or unknown at 'all'")
        self.assertEqual(first_occurrences(got), want, "events out of order at 'all'")
        # duplicates only around the failures: the timed-out batches (the
        # receiver never answered 200 to them, so none) and the batch in
        # flight when the sender was killed
        self.assertLessEqual(len(got) - len(want), 2 * BATCH)
        got_dj = rb.ids()
        self.assertEqual(first_occurrences(got_dj), want_dj, "filtered consumer 'dj'")
        self.assertEqual(len(got_dj), len(want_dj), "'dj' never failed: no duplicates")
        for b in rb.batches:
            for e in b:
                self.assertEqual(e["type"], "d")
                self.assertTrue(e["job_id"].startswith("job-a"))
                self.assertIn("@w", e["rcpt"])
                self.assertEqual(e["orig"], "s@example.com")
        self.assertEqual(ra.bad_signatures + rb.bad_signatures, 0)
        self.assertEqual({s[0] for s in ra.senders + rb.senders}, {"node-a"})
        self.assertGreater(max(len(b) for b in ra.batches), 1)
        self.assertLessEqual(max(len(b) for b in ra.batches), BATCH)
        self.assertIn("d", {e["type"] for b in ra.batches for e in b})
        self.assertTrue(all(sink.messages()))
        log = node.log()
        self.assertNotIn(KEY.decode(), log)
        self.assertIn("event=post-failed", log)
        ra.stop()
        rb.stop()


class WebhookConfig(unittest.TestCase):
    """A bad webhooks entry fails pgmtad --check (and startup) with the file
    and line of the directive at fault; the key is never printed."""

    def setUp(self):
        self.dir = tmpdir("pgmta-webhook-conf-")
        self.conf = os.path.join(self.dir, "pgmta.conf")
        self.key = write_key(self.dir)
        self.ca = make_ca(self.dir, "conf")[0]

    def run_pgmtad(self, *args):
        return subprocess.run([PGMTAD] + list(args), capture_output=True, text=True,
                              timeout=30)

    def write(self, *entries):
        """The configuration with one webhooks entry per line from line 4;
        each entry is "field = value; ..." added to a valid entry."""
        lines = ['database = { url = "postgresql://nobody@127.0.0.1:1/none"; };',
                 'node-name = "conf-test";', "webhooks = ("]
        for i, e in enumerate(entries):
            fields = {"name": '"h%d"' % i, "url": '"https://127.0.0.1:1/e"',
                      "secret-file": '"%s"' % self.key}
            for item in e.split(";"):
                if "=" in item:
                    k, v = item.split("=", 1)
                    fields[k.strip()] = v.strip()
            lines.append("  { " + " ".join("%s = %s;" % kv for kv in fields.items()
                                           if kv[1] != "-") +
                         " }" + ("," if i + 1 < len(entries) else ""))
        lines.append(");")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def check_refused(self, entries, line, reason):
        self.write(*entries)
        r = self.run_pgmtad("--check", "-c", self.conf)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"^%s:%d: .*%s" % (re.escape(self.conf), line, reason))
        self.assertEqual(r.stdout, "")
        self.assertNotIn(KEY.decode(), r.stderr)
        return r

    def test_good_entries_pass_without_the_key(self):
        self.write('', 'url = "http://localhost:8080/x?y=1"; types = "d, b,t,r"; batch = 10000; '
                   'timeout = "10m"', 'ca-file = "%s"; url = "https://[::1]/e"' % self.ca)
        r = self.run_pgmtad("--check", "-c", self.conf)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(self.key, r.stdout)
        self.assertNotIn(KEY.decode(), r.stdout + r.stderr)

    def test_url(self):
        for url, reason in (('"ftp://127.0.0.1/e"', 'scheme "ftp" is not http or https'),
                            ('"127.0.0.1:80/e"', "bad url|scheme"),
                            ('"http:///e"', "no host"),
                            ('"https://127.0.0.1:0/e"', "port 0"),
                            ('"https://127.0.0.1:70000/e"', "bad url"),
                            ('"https://u:pw@127.0.0.1/e"', "no user info"),
                            ('"https://127.0.0.1/e#x"', "no fragment")):
            with self.subTest(url=url):
                self.check_refused(["", "url = %s" % url], 5, 'webhook "h1": (url: )?(%s)' % reason)

    def test_secret_file(self):
        missing = os.path.join(self.dir, "none.key")
        empty = os.path.join(self.dir, "empty.key")
        with open(empty, "w") as f:
            f.write("\n  \n")
        os.chmod(empty, 0o600)
        shared = write_key(tmpdir("pgmta-webhook-key-"), 0o604)
        for path, reason in ((missing, "cannot open secret-file .*No such file"),
                             (self.dir, "is not a regular file"),
                             (empty, "is empty"),
                             (shared, r"accessible by others \(mode 0604\)")):
            with self.subTest(path=path):
                self.check_refused(['secret-file = "%s"' % path], 4, reason)
        self.check_refused(['secret-file = -'], 4, "entry without secret-file")

    def test_types_batch_timeout_ca_and_names(self):
        self.check_refused(["", "", 'types = "d,x"'], 6, 'unknown event type "x"')
        self.check_refused(['types = "db"'], 4, 'unknown event type "db"')
        self.check_refused(['types = "d,"'], 4, 'unknown event type ""')
        self.check_refused(["batch = 0"], 4, "batch")
        self.check_refused(["batch = 10001"], 4, "batch")
        self.check_refused(['timeout = "0s"'], 4, "timeout")
        self.check_refused(['timeout = "11m"'], 4, "timeout: at most 600s")
        self.check_refused(['url = "http://127.0.0.1/e"; ca-file = "%s"' % self.ca], 4,
                           "ca-file needs an https url")
        self.check_refused(['ca-file = "%s"' % self.key], 4, "holds no PEM certificate")
        self.check_refused(['ca-file = "/nonexistent/ca.pem"'], 4, "cannot open ca-file")
        self.check_refused(["", 'name = "h0"'], 5, 'duplicate webhook "h0" \\(also at line 4\\)')

    def test_startup_refuses_a_bad_entry(self):
        self.write('types = "q"')
        r = self.run_pgmtad("-c", self.conf)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"^%s:4: .*unknown event type" % re.escape(self.conf))


if __name__ == "__main__":
    main()
