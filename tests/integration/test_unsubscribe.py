"""One-click unsubscribe (RFC 8058) through pgmtad: the List-Unsubscribe and
List-Unsubscribe-Post headers reach a real SMTP sink, per recipient and DKIM
signed (dkimpy verifies with both in h=); POSTing the URL of the received
header to the unsubscribe listener suppresses the recipient (200, a row in
mta.suppression, the next enqueue bounced 'suppressed'); a forged or
truncated token is 400 and writes nothing; GET never suppresses; the per-
client rate limit answers 429; a message with its own List-Unsubscribe keeps
it; a missing, open or short secret file is a clear configuration error.

One PostgreSQL, DNS server, sink and node serve every case: the messages are
delivered once in setUpClass."""
import base64
import email
import email.policy
import http.client
import os
import re
import subprocess
import unittest
import urllib.parse

import dkim

from dnsserver import DnsServer
from pgmta_test import (PGMTAD, PgServer, Pgmtad, free_port, main, mx_sink, tmpdir,
                        wait_for, wait_queue_empty)

BASE_URL = "https://unsub.example.com/u/"
RATE = 20  # unsubscribe-max-rate-per-client, per minute


def openssl(*args):
    return subprocess.run(["openssl"] + list(args), check=True, capture_output=True).stdout


def message(frm, subject, extra=""):
    return ("From: News <%s>\r\nTo: you@rcv.test\r\nSubject: %s\r\n%s"
            "Message-ID: <%s@example>\r\n\r\n.leading dot\r\nbody line\r\n"
            % (frm, subject, extra, subject.replace(" ", "-")))


def request(port, method, path, body=None, ctype="application/x-www-form-urlencoded",
            source="127.0.0.1"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    try:
        headers = {"Content-Type": ctype} if body is not None else {}
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def urls(msg):
    """(https path, mailto URI) of the message's List-Unsubscribe."""
    v = " ".join(msg["List-Unsubscribe"].split())
    got = re.findall(r"<([^>]*)>", v)
    https = [u for u in got if u.startswith(BASE_URL)]
    mailto = [u for u in got if u.startswith("mailto:")]
    return urllib.parse.urlsplit(https[0]).path if https else None, mailto[0] if mailto else None


class Unsubscribe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        d = tmpdir()
        key = os.path.join(d, "ed.pem")
        openssl("genpkey", "-algorithm", "ED25519", "-out", key)
        os.chmod(key, 0o600)
        cls.records = {b"e1._domainkey.brand.example.": b"v=DKIM1; k=ed25519; p=" +
                       base64.b64encode(openssl("pkey", "-in", key, "-pubout", "-outform",
                                                "DER")[-32:])}
        cls.secret = os.path.join(d, "unsub.secret")
        with open(cls.secret, "w") as f:
            f.write("9f8e7d6c5b4a39281706f5e4d3c2b1a0\n")
        os.chmod(cls.secret, 0o600)
        cls.pg, cls.dns = PgServer(), DnsServer()
        port = free_port("127.0.0.58")
        cls.sink = mx_sink(cls.dns, "rcv.test", "127.0.0.58", port)
        cls.uport = free_port()
        q = "SELECT mta.enqueue(%s, %s, %s, %s)"
        cls.pg.query(q, ("bounces@brand.example", ["a@rcv.test", "b@rcv.test", "c@rcv.test"],
                         message("news@brand.example", "news one"), "news-1"))
        cls.pg.query(q, ("bounces@brand.example", ["t@rcv.test"],
                         message("news@brand.example", "tenant one"), "t1-spring"))
        cls.pg.query(q, ("bounces@brand.example", ["own@rcv.test"],
                         message("news@brand.example", "own header",
                                 "List-Unsubscribe: <https://sender.example/own>\r\n"), "news-1"))
        cls.pg.query(q, ("bounces@other.example", ["plain@rcv.test"],
                         message("news@other.example", "other domain"), "news-1"))
        extra = ('smtp-port = %d;\n'
                 'listen = { unsubscribe = "127.0.0.1:%d"; };\n'
                 'smtp-listener = { processes = 1; };\n'
                 'unsubscribe-secret-file = "%s";\n'
                 'unsubscribe-max-rate-per-client = "%d/m";\n'
                 'dkim = ( { domain = "brand.example"; selector = "e1"; key-file = "%s"; } );\n'
                 'list-unsubscribe = (\n'
                 '  { name = "brand"; domain = "brand.example"; url = "%s";\n'
                 '    mailto = "unsub@brand.example"; },\n'
                 '  { name = "tenant"; domain = "brand.example"; job-prefix = "t1-"; url = "%s";\n'
                 '    suppression-scope = "job-prefix"; } );\n'
                 % (port, cls.uport, cls.secret, RATE, key, BASE_URL, BASE_URL))
        cls.node = Pgmtad(cls.pg, cls.dns, extra=extra)
        wait_queue_empty(cls.pg, timeout=60, node=cls.node)
        wait_for(lambda: "db=pgmtad-unsubscribe event=connected" in cls.node.log(), timeout=20,
                 what="the unsubscribe listener's database connection")
        cls.got = {}
        for m in cls.sink.messages():
            for r in m.rcpts:
                cls.got[r] = m

    @classmethod
    def tearDownClass(cls):
        rc = cls.node.stop()
        cls.sink.stop()
        assert rc == 0, cls.node.log()[-3000:]

    def parsed(self, rcpt):
        return email.message_from_bytes(self.got[rcpt].content, policy=email.policy.compat32)

    def suppressed(self, rcpt):
        return self.pg.query("SELECT scope, source, reason FROM mta.suppression WHERE address = %s",
                             (rcpt,))

    def post(self, path, body="List-Unsubscribe=One-Click", **kw):
        return request(self.uport, "POST", path, body=body, **kw)[0]

    def dnsfunc(self, name, timeout=5):
        return self.records.get(name)

    def test_headers_per_recipient_and_signed(self):
        # one body per recipient: three transactions of one recipient each
        for r in ("a@rcv.test", "b@rcv.test", "c@rcv.test"):
            self.assertEqual(self.got[r].rcpts, [r])
        paths = set()
        for r in ("a@rcv.test", "b@rcv.test", "c@rcv.test"):
            msg = self.parsed(r)
            self.assertEqual(msg["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
            path, mailto = urls(msg)
            self.assertTrue(path.startswith("/u/"), msg["List-Unsubscribe"])
            self.assertEqual(mailto, "mailto:unsub@brand.example?subject=unsubscribe-" + path[3:])
            paths.add(path)
            raw = self.got[r].content
            self.assertTrue(dkim.verify(raw, dnsfunc=self.dnsfunc), r)
            sig = " ".join(msg["DKIM-Signature"].split())
            h = re.search(r"(?:^|[; ])h=([^;]*);", sig).group(1).replace(" ", "").lower().split(":")
            # signed, and listed once more than they occur: none can be added
            self.assertEqual(h.count("list-unsubscribe"), 2)
            self.assertEqual(h.count("list-unsubscribe-post"), 2)
            # (above ours: the signature's first instance is still ours)
            added = b"List-Unsubscribe: <https://evil.example/x>\r\n"
            self.assertFalse(dkim.verify(added + raw, dnsfunc=self.dnsfunc))
            # the signature covers the header: another URL no longer verifies
            self.assertFalse(dkim.verify(raw.replace(b"/u/", b"/x/", 1), dnsfunc=self.dnsfunc))
        self.assertEqual(len(paths), 3)
        # another sender domain: no header
        self.assertIsNone(self.parsed("plain@rcv.test")["List-Unsubscribe"])

    def test_post_suppresses(self):
        path, _ = urls(self.parsed("a@rcv.test"))
        self.assertEqual(self.suppressed("a@rcv.test"), [])
        self.assertEqual(self.post(path), 200)
        self.assertEqual(self.suppressed("a@rcv.test"),
                         [(None, "unsubscribe", "list-unsubscribe, job news-1")])
        # a mail client's retry is harmless
        self.assertEqual(self.post(path), 200)
        self.assertEqual(len(self.suppressed("a@rcv.test")), 1)
        # the next enqueue for that recipient is refused with a 'b' row
        self.pg.query("SELECT mta.enqueue(%s, ARRAY['a@rcv.test'], %s, 'news-2')",
                      ("bounces@brand.example", message("news@brand.example", "news two")))
        self.assertEqual(self.pg.query("SELECT type, bounce_cat FROM mta.acct WHERE "
                                       "rcpt = 'a@rcv.test' AND job_id = 'news-2'"),
                         [("b", "suppressed")])
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipients "
                                        "WHERE rcpt = 'a@rcv.test'"), 0)

    def test_forged_or_truncated_token_writes_nothing(self):
        path, _ = urls(self.parsed("b@rcv.test"))
        tok = path[3:]
        i = len(tok) // 2
        forged = tok[:i] + ("B" if tok[i] != "B" else "C") + tok[i + 1:]
        src = "127.0.0.61"  # its own rate budget
        for bad in (forged, tok[:-1], tok[:-10], tok + "A", "x", tok[:40]):
            self.assertEqual(self.post("/u/" + bad, source=src), 400, bad)
            self.assertEqual(request(self.uport, "GET", "/u/" + bad, source=src)[0], 400)
        self.assertEqual(self.suppressed("b@rcv.test"), [])
        # a valid token with another body is no one-click request either
        self.assertEqual(self.post(path, body="hello=1", source=src), 400)
        self.assertEqual(self.suppressed("b@rcv.test"), [])

    def test_get_shows_form_and_does_not_suppress(self):
        path, _ = urls(self.parsed("c@rcv.test"))
        st, body = request(self.uport, "GET", path)
        self.assertEqual(st, 200)
        self.assertIn(b'<form method="post">', body)
        self.assertIn(b'name="List-Unsubscribe" value="One-Click"', body)
        self.assertEqual(self.suppressed("c@rcv.test"), [])
        self.assertEqual(request(self.uport, "GET", "/api/status")[0], 404)

    def test_job_prefix_scope(self):
        path, mailto = urls(self.parsed("t@rcv.test"))
        self.assertIsNone(mailto)
        self.assertEqual(self.post(path), 200)
        self.assertEqual(self.suppressed("t@rcv.test"),
                         [("t1-", "unsubscribe", "list-unsubscribe, job t1-spring")])
        self.assertTrue(self.pg.scalar("SELECT mta.suppressed('t@rcv.test', 't1-autumn')"))
        self.assertFalse(self.pg.scalar("SELECT mta.suppressed('t@rcv.test', 't2-other')"))

    def test_database_down_is_503(self):
        # the tenant's token: test_job_prefix_scope posts it too, in either order
        path, _ = urls(self.parsed("t@rcv.test"))
        src = "127.0.0.62"
        self.pg.stop(mode="immediate")
        try:
            self.assertEqual(self.post(path, source=src), 503)
        finally:
            self.pg.start()
        tries = iter(range(100, 250))  # a fresh client address each, below any rate limit
        wait_for(lambda: self.post(path, source="127.0.1.%d" % next(tries)) == 200, timeout=30,
                 interval=0.25, what="the unsubscribe listener to reconnect")
        self.assertEqual(len(self.suppressed("t@rcv.test")), 1)

    def test_own_list_unsubscribe_kept(self):
        msg = self.parsed("own@rcv.test")
        self.assertEqual(msg.get_all("List-Unsubscribe"), ["<https://sender.example/own>"])
        self.assertIsNone(msg["List-Unsubscribe-Post"])
        self.assertTrue(dkim.verify(self.got["own@rcv.test"].content, dnsfunc=self.dnsfunc))

    def test_rate_limit_per_client(self):
        # another client address than the other cases use
        codes = [request(self.uport, "GET", "/u/x", source="127.0.0.77")[0]
                 for _ in range(RATE + 5)]
        self.assertEqual(codes[:RATE], [400] * RATE)
        self.assertEqual(codes[RATE:], [429] * 5)
        self.assertEqual(request(self.uport, "GET", "/u/x", source="127.0.0.78")[0], 400)

    def test_secret_file_errors(self):
        d = tmpdir()
        conf = os.path.join(d, "pgmta.conf")
        open_secret = os.path.join(d, "open.secret")
        short = os.path.join(d, "short.secret")
        with open(open_secret, "w") as f:
            f.write("0123456789abcdef0123456789abcdef\n")
        os.chmod(open_secret, 0o644)
        with open(short, "w") as f:
            f.write("short\n")
        os.chmod(short, 0o600)
        cases = [(os.path.join(d, "absent"), "No such file or directory"),
                 (open_secret, "accessible by others"),
                 (short, "shorter than 16 characters")]
        for path, why in cases:
            with open(conf, "w") as f:
                f.write('database = { url = "postgresql:///none"; };\n'
                        'unsubscribe-secret-file = "%s";\n'
                        'list-unsubscribe = ( { name = "n"; domain = "x.example"; '
                        'url = "https://u.example/u/"; } );\n' % path)
            r = subprocess.run([PGMTAD, "--check", "-c", conf], capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn("unsubscribe-secret-file", r.stderr)
            self.assertIn(why, r.stderr)
            self.assertNotIn("0123456789abcdef", r.stderr + r.stdout)
        with open(conf, "w") as f:
            f.write('database = { url = "postgresql:///none"; };\n'
                    'list-unsubscribe = ( { name = "n"; domain = "x.example"; '
                    'url = "http://u.example/u/"; } );\n')
        r = subprocess.run([PGMTAD, "--check", "-c", conf], capture_output=True, text=True,
                           timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("https:// URL is required", r.stderr)


if __name__ == "__main__":
    main()
