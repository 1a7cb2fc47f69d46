"""Webhooks: pgmtad posts mta.acct events to HTTP receivers on loopback.

One run of deliveries to an SMTP sink while the receiver of consumer "all"
answers 500, then sleeps past the timeout, is stopped and started again on
the same port, and the sending process is killed with SIGKILL. At the end
every event of the run arrived at "all" (compared with mta.acct), in order,
with duplicates only around the failures; consumer "dj" (types "d", job
prefix "job-a") got exactly the delivered events of jobs job-a*. Every
request is checked against its HMAC-SHA256 signature."""
import hashlib
import hmac
import json
import os
import re
import signal
import threading
import time
import unittest
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, copy_submit, free_port, main, mx_sink, tmpdir, wait_for

N = 200
BATCH = 20
KEY = b"s3cret-webhook-key"


class Receiver:
    """An HTTP server in a thread that records the events of every batch it
    answers 200 to. mode: "ok", "fail" (500, nothing recorded) or "sleep"
    (sleeps past the sender's timeout, nothing recorded)."""

    def __init__(self, port):
        self.port = port
        self.mode = "ok"
        self.batches = []  # lists of event dicts, in the order acknowledged
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
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
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
        self.assertGreater(max(len(b) for b in ra.batches), 1)
        self.assertLessEqual(max(len(b) for b in ra.batches), BATCH)
        self.assertIn("d", {e["type"] for b in ra.batches for e in b})
        self.assertTrue(all(sink.messages()))
        log = node.log()
        self.assertNotIn(KEY.decode(), log)
        self.assertIn("event=post-failed", log)
        ra.stop()
        rb.stop()


if __name__ == "__main__":
    main()
