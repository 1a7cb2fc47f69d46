"""POST /api/inject/v1 (KumoMTA's injection API shape) against a real pgmtad,
a real PostgreSQL and a real SMTP sink, and the HTTP server's limits
(connection cap, header timeout, EMFILE on accept).

The node runs only the "transactional" pipe, the default one: messages
injected there are delivered to the sink (the MX of inject.test). Requests
that name "pipe": "bulk" stay queued, so their rows can be counted.
"""
import base64
import email
import email.policy
import gzip
import http.client
import json
import os
import re
import socket
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import (PGMTAD, Pgmtad, PgServer, Proc, free_port, main, mx_sink, wait_for)

ADMIN = "adm1n-t0k"
INJECT = "inj3ct-t0k"
MAX_BODY = 1048576
PIPES = '( { name = "transactional"; processes = 1; } )'


def extra(port, more=""):
    return ('default-pipe = "transactional";\n'
            'listen = { http = "127.0.0.1:%d"; };\n'
            'http = { token = "%s"; inject-tokens = [ "%s" ]; max-body-size = %d; %s };\n'
            % (port, ADMIN, INJECT, MAX_BODY, more))


class Client:
    def __init__(self, port):
        self.port = port

    def post(self, body, token=INJECT, headers=None, path="/api/inject/v1", method="POST"):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            if not isinstance(body, bytes):
                body = (json.dumps(body) if not isinstance(body, str) else body).encode()
            h = {"Host": "127.0.0.1", "Content-Type": "application/json"}
            if token:
                h["Authorization"] = "Bearer " + token
            h.update(headers or {})
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            data = r.read()
            try:
                return r.status, json.loads(data)
            except ValueError:
                return r.status, data
        finally:
            c.close()

    def up(self):
        try:
            st, _ = self.post(b"", token=ADMIN, path="/api/status", method="GET")
            return st == 200
        except OSError:
            return False


def parts_request(rcpts, **kw):
    req = {"envelope_sender": "bounce@sender.test", "recipients": rcpts}
    req.update(kw)
    return req


class InjectTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg, cls.dns = PgServer(), DnsServer()
        sport = free_port("127.0.0.58")
        cls.sink = mx_sink(cls.dns, "inject.test", "127.0.0.58", sport,
                           rules={"rcpt:reject*@*": "550 5.1.1 no such user"})
        cls.port = free_port()
        cls.node = Pgmtad(cls.pg, cls.dns, pipes=PIPES,
                          extra="smtp-port = %d;\n" % sport + extra(cls.port))
        cls.c = Client(cls.port)
        wait_for(cls.c.up, timeout=20, what="the HTTP API")

    @classmethod
    def tearDownClass(cls):
        rc = cls.node.stop()
        cls.sink.stop()
        cls.dns.stop()
        cls.pg.stop()
        assert rc == 0, rc

    def count_job(self, job):
        return self.pg.scalar("SELECT count(*) FROM mta.recipients WHERE job_id = %s", (job,))

    def wait_sink(self, rcpt, timeout=40):
        def find():
            return [m for m in self.sink.messages() if rcpt in m.rcpts]
        wait_for(lambda: find(), timeout=timeout, what="a message for %s at the sink" % rcpt)
        return find()

    def test_parts_with_substitutions_at_the_sink(self):
        gif = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
        pdf = os.urandom(3000)
        long_line = "word " * 400
        req = parts_request(
            [{"email": "ann@inject.test", "name": "Ann Äpfel",
              "substitutions": {"greeting": "Hallo", "n": 7}},
             {"email": "bob@inject.test", "name": "Bob"}],
            substitutions={"greeting": "Hello", "campaign": "Winter ☃"},
            content={
                "from": {"email": "news@brand.test", "name": "Brand Ñews"},
                "reply_to": {"email": "reply@brand.test"},
                "subject": "{{ greeting }} {{name}}, Grüße from {{campaign}}",
                "headers": {"X-Campaign": "{{campaign}}", "To": "{{ name }} <{{ email }}>"},
                "text_body": "{{greeting}} {{name}}! n={{n}}\n" + long_line + "\nÜmlaut end\n",
                "html_body": "<p>{{greeting}} <b>{{name}}</b></p><img src=\"cid:logo\">",
                "attachments": [
                    {"data": base64.b64encode(gif).decode(), "base64": True,
                     "content_type": "image/gif", "content_id": "logo"},
                    {"data": base64.b64encode(pdf).decode(), "base64": True,
                     "content_type": "application/pdf", "file_name": "Rechnung März.pdf"},
                ]},
            job_id="J-parts")
        st, r = self.c.post(req)
        self.assertEqual(st, 200, r)
        self.assertEqual(r["success_count"], 2)
        self.assertEqual(r["fail_count"], 0)
        self.assertEqual(r["failed_recipients"], [])
        self.assertEqual(r["errors"], [])
        ids = {x["email"]: x["message_id"] for x in r["recipients"]}
        self.assertEqual(set(ids), {"ann@inject.test", "bob@inject.test"})
        self.assertNotEqual(ids["ann@inject.test"], ids["bob@inject.test"])
        for rcpt, greet, name, n in (("ann@inject.test", "Hallo", "Ann Äpfel", "7"),
                                     ("bob@inject.test", "Hello", "Bob", "")):
            (m,) = self.wait_sink(rcpt)
            raw = m.content
            self.assertNotIn(b"{{", raw)
            # CRLF only, no line over 78 octets (998 is the hard limit)
            self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))
            self.assertNotIn(b"\r", raw.replace(b"\r\n", b""))
            for line in raw.split(b"\r\n"):
                self.assertLessEqual(len(line), 78, line)
            msg = email.message_from_bytes(raw, policy=email.policy.default)
            self.assertEqual(msg.defects, [])
            self.assertEqual(str(msg["Subject"]),
                             "%s %s, Grüße from Winter ☃" % (greet, name))
            self.assertEqual(msg["From"].addresses[0].display_name, "Brand Ñews")
            self.assertEqual(msg["From"].addresses[0].addr_spec, "news@brand.test")
            self.assertEqual(msg["Reply-To"].addresses[0].addr_spec, "reply@brand.test")
            self.assertEqual(str(msg["X-Campaign"]), "Winter ☃")
            self.assertEqual(msg["To"].addresses[0].addr_spec, rcpt)
            self.assertTrue(msg["Date"].datetime)
            self.assertRegex(str(msg["Message-ID"]), r"^<[0-9a-f]+@brand\.test>$")
            self.assertEqual(msg["MIME-Version"], "1.0")
            self.assertEqual(msg.get_content_type(), "multipart/mixed")
            related, att = msg.get_payload()
            self.assertEqual(related.get_content_type(), "multipart/related")
            alt, logo = related.get_payload()
            self.assertEqual(alt.get_content_type(), "multipart/alternative")
            text, html = alt.get_payload()
            self.assertEqual(text.get_content_type(), "text/plain")
            self.assertEqual(text["Content-Transfer-Encoding"], "quoted-printable")
            self.assertEqual(text.get_content().replace("\r\n", "\n"),
                             "%s %s! n=%s\n%s\nÜmlaut end\n" % (greet, name, n, long_line))
            self.assertEqual(html.get_content_type(), "text/html")
            self.assertIn("<p>%s <b>%s</b></p>" % (greet, name), html.get_content())
            self.assertEqual(logo["Content-ID"], "<logo>")
            self.assertEqual(logo.get_content(), gif)
            self.assertEqual(att.get_filename(), "Rechnung März.pdf")
            self.assertEqual(att.get_content_type(), "application/pdf")
            self.assertEqual(att.get_content(), pdf)

    def test_raw_content_shared_message(self):
        raw = "From: a@sender.test\nSubject: raw one\n\nline one\nline two\n"
        st, r = self.c.post(parts_request(
            [{"email": "r1@inject.test"}, {"email": "r2@inject.test"}], content=raw))
        self.assertEqual(st, 200, r)
        self.assertEqual(r["success_count"], 2)
        # no template: both recipients share one message
        self.assertEqual(r["recipients"][0]["message_id"], r["recipients"][1]["message_id"])
        (m,) = self.wait_sink("r1@inject.test")
        (m2,) = self.wait_sink("r2@inject.test")
        self.assertEqual(m.content, m2.content)  # one stored message, Message-ID included
        self.assertIn(b"\r\nSubject: raw one\r\n\r\nline one\r\nline two\r\n", m.content)
        msg = email.message_from_bytes(m.content, policy=email.policy.default)
        self.assertTrue(msg["Date"].datetime)
        self.assertTrue(msg["Message-ID"])

    def test_raw_content_with_substitutions(self):
        raw = "Subject: hi {{name}}\r\nMessage-ID: <fixed-{{k}}@x.test>\r\n\r\nDear {{ name }}\r\n"
        st, r = self.c.post(parts_request(
            [{"email": "s1@inject.test", "name": "Sue", "substitutions": {"k": 1}},
             {"email": "s2@inject.test", "name": "Sam", "substitutions": {"k": 2}}],
            content=raw))
        self.assertEqual(st, 200, r)
        (m,) = self.wait_sink("s2@inject.test")
        self.assertIn(b"Subject: hi Sam\r\nMessage-ID: <fixed-2@x.test>\r\n\r\nDear Sam\r\n",
                      m.content)
        self.assertEqual(m.content.count(b"Message-ID:"), 1)

    def acct_meta(self, rcpt, typ):
        return self.pg.scalar("SELECT meta::text FROM mta.acct WHERE rcpt = %s AND type = %s",
                              (rcpt, typ))

    def test_metadata_in_accounting(self):
        req = parts_request(
            [{"email": "meta1@inject.test", "metadata": {"customer": "u1", "campaign": "c2"}},
             {"email": "meta2@inject.test"},
             {"email": "reject-meta@inject.test", "metadata": {"customer": "u3", "vip": True}}],
            metadata={"campaign": "c1", "batch": 7},
            content="Subject: meta\r\n\r\nm\r\n", job_id="J-meta")
        st, r = self.c.post(req)
        self.assertEqual(st, 200, r)
        wait_for(lambda: self.acct_meta("meta2@inject.test", "d"), timeout=40,
                 what="the d row of meta2")
        wait_for(lambda: self.acct_meta("reject-meta@inject.test", "b"), timeout=40,
                 what="the b row of reject-meta")
        wait_for(lambda: self.acct_meta("meta1@inject.test", "d"), timeout=40,
                 what="the d row of meta1")
        self.assertEqual(json.loads(self.acct_meta("meta1@inject.test", "d")),
                         {"customer": "u1", "campaign": "c2", "batch": 7})
        self.assertEqual(json.loads(self.acct_meta("meta2@inject.test", "d")),
                         {"campaign": "c1", "batch": 7})
        self.assertEqual(json.loads(self.acct_meta("reject-meta@inject.test", "b")),
                         {"customer": "u3", "vip": True, "campaign": "c1", "batch": 7})
        self.assertEqual(json.loads(self.acct_meta("meta1@inject.test", "r")),
                         {"customer": "u1", "campaign": "c2", "batch": 7})
        # a request without metadata: no meta anywhere
        st, r = self.c.post(parts_request([{"email": "nometa@inject.test"}],
                                          content="Subject: n\r\n\r\nn\r\n"))
        self.assertEqual(st, 200, r)
        wait_for(lambda: self.pg.scalar("SELECT count(*) FROM mta.acct WHERE "
                                        "rcpt = 'nometa@inject.test' AND type = 'd'"),
                 timeout=40, what="the d row of nometa")
        self.assertEqual(self.pg.scalar("SELECT count(meta) FROM mta.acct WHERE "
                                        "rcpt = 'nometa@inject.test'"), 0)

    def test_bad_metadata(self):
        base = parts_request([{"email": "x@inject.test"}], content="Subject: x\r\n\r\nx",
                             job_id="J-badmeta", pipe="bulk")
        cases = [
            (dict(base, metadata=[1]), "metadata: an object expected"),
            (dict(base, metadata={"a": {"b": 1}}), "metadata.a: a string, number or boolean"),
            (dict(base, metadata={"a": None}), "metadata.a: a string, number or boolean"),
            (dict(base, metadata={"k%d" % i: i for i in range(33)}), "metadata: more than 32"),
            (dict(base, metadata={"k" * 65: 1}), "key longer than 64"),
            (dict(base, metadata={"a": "v" * 1025}), "metadata.a: value longer"),
            (dict(base, metadata={"a": "x\u0000y"}), "metadata.a: NUL"),
            (dict(base, recipients=[{"email": "x@inject.test", "metadata": "c1"}]),
             "recipients[0].metadata: an object expected"),
            (dict(base, recipients=[{"email": "x@inject.test"},
                                    {"email": "y@inject.test", "metadata": {"l": [1]}}]),
             "recipients[1].metadata.l"),
        ]
        for body, frag in cases:
            self.assert_refused(body, 400, frag, "J-badmeta")
        self.assert_refused('{"envelope_sender": "a@b.test", "metadata": {"a": 1e999}, '
                            '"recipients": [{"email": "x@inject.test"}], "content": "S: x\\r\\n\\r\\nx", '
                            '"job_id": "J-badmeta"}', 400, "metadata.a: number out of range",
                            "J-badmeta")
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipient_meta"),
                         self.pg.scalar("SELECT count(*) FROM mta.recipient_meta rm JOIN "
                                        "mta.messages m ON m.id = rm.message_id "
                                        "WHERE m.job_id IS DISTINCT FROM 'J-badmeta'"))

    def assert_refused(self, body, status, fragment, job, **kw):
        st, r = self.c.post(body, **kw)
        self.assertEqual(st, status, r)
        self.assertIsInstance(r, dict, r)
        self.assertIn(fragment, r["error"])
        self.assertEqual(self.count_job(job), 0)
        return r

    def test_malformed_json(self):
        good = json.dumps(parts_request([{"email": "x@inject.test"}], content="Subject: x\r\n\r\nx",
                                        job_id="J-bad", pipe="bulk"))
        for body, frag in ((good[:-1], "malformed JSON"),
                           (good + "x", "text after the value"),
                           (good.replace(":", "=", 1), "':' expected"),
                           (good.replace("Subject", "Sub\\ud800ject"), "surrogate"),
                           (good.encode().replace(b"Subject", b"Sub\xc3ject"), "UTF-8"),
                           ("[" * 100 + "]" * 100, "nested too deeply"),
                           ("", "value expected")):
            self.assert_refused(body, 400, frag, "J-bad")

    def test_missing_and_wrong_fields(self):
        base = parts_request([{"email": "x@inject.test"}, {"email": "y@inject.test"}],
                             content={"subject": "s", "text_body": "t"}, job_id="J-f",
                             pipe="bulk")
        cases = []
        b = dict(base)
        del b["recipients"]
        cases.append((b, "recipients: missing"))
        b = dict(base)
        del b["envelope_sender"]
        cases.append((b, "envelope_sender: missing"))
        b = dict(base)
        del b["content"]
        cases.append((b, "content: missing"))
        b = dict(base, recipients=[{"email": "x@inject.test"}, {"name": "no address"}])
        cases.append((b, "recipients[1].email: missing"))
        b = dict(base, recipients="x@inject.test")
        cases.append((b, "recipients: an array expected"))
        b = dict(base, recipients=[])
        cases.append((b, "recipients: empty"))
        b = dict(base, recipients=[{"email": 5}])
        cases.append((b, "recipients[0].email: a string expected"))
        b = dict(base, content=42)
        cases.append((b, "content: a string (raw message) or an object expected"))
        b = dict(base, content={"subject": "only a subject"})
        cases.append((b, "text_body or html_body"))
        b = dict(base, content={"text_body": "t", "headers": {"Bad Name": "x"}})
        cases.append((b, "content.headers.Bad Name"))
        b = dict(base, content={"text_body": "t", "attachments": [{"data": "!!", "base64": True}]})
        cases.append((b, "content.attachments[0].data: not valid base64"))
        b = dict(base, substitutions={"x": [1]})
        cases.append((b, "substitutions.x"))
        b = dict(base, content={"text_body": "{{ a | upper }}"})
        cases.append((b, "content.text_body"))
        b = dict(base, surprise=1)
        cases.append((b, "surprise: unknown field"))
        b = dict(base, vmta=3)
        cases.append((b, "vmta: a string expected"))
        # header injection through a substitution value
        b = dict(base, recipients=[{"email": "x@inject.test",
                                    "substitutions": {"s": "a\r\nBcc: evil@x.test"}}],
                 content={"subject": "{{s}}", "text_body": "t"})
        cases.append((b, "recipients[0]: content.subject"))
        for body, frag in cases:
            self.assert_refused(body, 400, frag, "J-f")
        self.assert_refused("[1]", 400, "request: a JSON object expected", "J-f")

    def test_sql_refusal_is_one_transaction(self):
        # three messages (per-recipient substitutions); the third recipient's
        # domain is refused by mta.enqueue_bytes: nothing of the request stays
        rcpts = [{"email": "t%d@inject.test" % i, "substitutions": {"i": i}} for i in range(2)]
        rcpts.append({"email": "t2@bad..domain", "substitutions": {"i": 2}})
        body = parts_request(rcpts, content={"subject": "n {{i}}", "text_body": "{{i}}"},
                             job_id="J-tx", pipe="bulk")
        r = self.assert_refused(body, 400, "recipients[2]", "J-tx")
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.messages WHERE job_id = 'J-tx'"),
                         0)
        # a bad envelope sender is named as such
        body = dict(body, envelope_sender="not an address", recipients=rcpts[:2])
        r = self.assert_refused(body, 400, "envelope_sender", "J-tx")
        # unknown pipe: refused by SQL, nothing stored
        body = dict(body, envelope_sender="b@sender.test", pipe="no-such-pipe")
        st, r = self.c.post(body)
        self.assertEqual(st, 400, r)
        self.assertEqual(self.count_job("J-tx"), 0)
        # the same request made good is stored whole
        body = dict(body, pipe="bulk")
        st, r = self.c.post(body)
        self.assertEqual(st, 200, r)
        self.assertEqual(self.count_job("J-tx"), 2)
        self.assertEqual(
            sorted(self.pg.scalar("SELECT array_agg(message_id) FROM mta.recipients "
                                  "WHERE job_id = 'J-tx'")),
            sorted(x["message_id"] for x in r["recipients"]))

    def test_too_large(self):
        big = parts_request([{"email": "x@inject.test"}], job_id="J-big", pipe="bulk",
                            content={"text_body": "x" * (MAX_BODY + 10)})
        # evhttp answers from Content-Length, before the body: read the
        # reply without sending the body (the server closes after it)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        s.sendall(b"POST /api/inject/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                  + INJECT.encode() + b"\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1))
        got = s.recv(100)
        self.assertTrue(got.startswith(b"HTTP/1.1 413"), got)
        s.close()
        # a body just over the limit sent whole
        try:
            st, _ = self.c.post(big)
            self.assertEqual(st, 413)
        except (ConnectionResetError, BrokenPipeError):
            pass
        self.assertEqual(self.count_job("J-big"), 0)
        # other routes keep their 64 KB limit even though evhttp takes more
        st, _ = self.c.post(b"queue=x&pad=" + b"x" * 70000, token=ADMIN, path="/api/pause",
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(st, 413)
        # too many recipients
        many = parts_request([{"email": "m%d@inject.test" % i} for i in range(100001)],
                             content="Subject: x\r\n\r\nx", job_id="J-big", pipe="bulk")
        st, _ = self.c.post(gzip.compress(json.dumps(many).encode()),
                            headers={"Content-Encoding": "gzip"})
        self.assertIn(st, (413,))
        self.assertEqual(self.count_job("J-big"), 0)

    def test_gzip(self):
        body = parts_request([{"email": "g@inject.test"}], content="Subject: gz\r\n\r\nzipped\r\n",
                             job_id="J-gz", pipe="bulk")
        st, r = self.c.post(gzip.compress(json.dumps(body).encode()),
                            headers={"Content-Encoding": "gzip"})
        self.assertEqual(st, 200, r)
        self.assertEqual(self.count_job("J-gz"), 1)
        # a zip bomb: small on the wire, larger than max-body-size inflated
        bomb = gzip.compress(b" " * (MAX_BODY * 20))
        self.assertLess(len(bomb), MAX_BODY // 10)
        st, r = self.c.post(bomb, headers={"Content-Encoding": "gzip"})
        self.assertEqual(st, 413, r)
        st, r = self.c.post(b"\x1f\x8b not gzip", headers={"Content-Encoding": "gzip"})
        self.assertEqual(st, 400, r)
        st, r = self.c.post(gzip.compress(json.dumps(body).encode())[:-6],
                            headers={"Content-Encoding": "gzip"})
        self.assertEqual(st, 400, r)
        st, r = self.c.post(json.dumps(body), headers={"Content-Encoding": "br"})
        self.assertEqual(st, 415, r)
        self.assertEqual(self.count_job("J-gz"), 1)

    def test_tokens(self):
        body = parts_request([{"email": "k@inject.test"}], content="Subject: k\r\n\r\nk\r\n",
                             job_id="J-tok", pipe="bulk")
        for tok in (None, "wrong", ADMIN, INJECT + "x"):
            st, r = self.c.post(body, token=tok)
            self.assertEqual(st, 401, (tok, r))
        self.assertEqual(self.count_job("J-tok"), 0)
        # the inject token does not open the admin API
        for method, path in (("GET", "/api/status"), ("POST", "/api/pause"),
                             ("POST", "/api/reload"), ("GET", "/metrics")):
            st, _ = self.c.post(b"", token=INJECT, path=path, method=method)
            self.assertEqual(st, 401, path)
        st, r = self.c.post(b"", token=INJECT, method="GET")
        self.assertEqual(st, 405, r)
        # injection takes any Host (programs, not browsers); admin routes do not
        st, _ = self.c.post(b"", token=ADMIN, path="/api/status", method="GET",
                            headers={"Host": "mta.example.net"})
        self.assertEqual(st, 400)
        st, r = self.c.post(dict(body, job_id="J-host"), headers={"Host": "mta.example.net"})
        self.assertEqual(st, 200, r)
        self.assertEqual(self.count_job("J-host"), 1)
        st, r = self.c.post(body)
        self.assertEqual(st, 200, r)
        self.assertEqual(self.count_job("J-tok"), 1)


class InjectDatabaseDownTest(unittest.TestCase):
    def test_database_down_503_nothing_stored(self):
        pg = PgServer()
        port = free_port()
        node = Pgmtad(pg, pipes=PIPES, extra=extra(port))
        c = Client(port)
        try:
            wait_for(c.up, timeout=20, what="the HTTP API")
            body = parts_request([{"email": "d@inject.test"}], content="Subject: d\r\n\r\nd\r\n",
                                 job_id="J-down", pipe="bulk")
            pg.stop(mode="immediate")
            st, r = c.post(body)
            self.assertEqual(st, 503, r)
            self.assertIn("nothing was stored", r["error"])
            pg.start()
            wait_for(c.up, timeout=30, what="the API after PostgreSQL is back")
            self.assertEqual(pg.scalar("SELECT count(*) FROM mta.recipients "
                                       "WHERE job_id = 'J-down'"), 0)
            st, r = c.post(body)
            self.assertEqual(st, 200, r)
        finally:
            self.assertEqual(node.stop(), 0)
            pg.stop()


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The HTTP API runs in every smtp-in process and its limits count per
# process: the limit tests run one.
ONE_HTTP_PROCESS = "smtp-listener = { processes = 1; };\n"


def smtp_in_pid(node):
    """The pid of the (one) smtp-in process, which serves listen.http."""
    m = wait_for(lambda: re.search(r"proc=smtp-in index=0 pid=(\d+) started", node.log()),
                 what="the smtp-in process")
    return int(m.group(1))


class HttpLimitsTest(unittest.TestCase):
    def test_header_timeout_and_connection_cap(self):
        pg = PgServer()
        port = free_port()
        node = Pgmtad(pg, pipes=PIPES,
                      extra=extra(port, 'max-connections = 8; header-timeout = "2s";')
                      + ONE_HTTP_PROCESS)
        c = Client(port)
        socks = []
        try:
            wait_for(c.up, timeout=20, what="the HTTP API")
            # a header trickled byte by byte is cut at the header timeout
            s = socket.create_connection(("127.0.0.1", port))
            t0 = time.monotonic()
            closed = False
            for ch in b"GET /api/status HTTP/1.1\r\nX-Slow: " + b"a" * 40:
                try:
                    s.send(bytes([ch]))
                except OSError:
                    closed = True
                    break
                s.settimeout(0.25)
                try:
                    if s.recv(100) == b"":
                        closed = True
                        break
                except socket.timeout:
                    pass
            s.close()
            self.assertTrue(closed, "a trickling header was not cut")
            self.assertLess(time.monotonic() - t0, 8)
            # eight idle connections fill the cap: the ninth waits ...
            for _ in range(8):
                socks.append(socket.create_connection(("127.0.0.1", port)))
                socks[-1].send(b"GET")
            wait_for(lambda: "accept-paused reason=max-connections" in node.log(), timeout=10,
                     what="the pause at the cap")
            s9 = socket.create_connection(("127.0.0.1", port), timeout=1)
            s9.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                       + ADMIN.encode() + b"\r\n\r\n")
            with self.assertRaises(socket.timeout):
                s9.recv(100)  # kept in the backlog: not served for now
            s9.close()
            # ... and is served once they go (here: cut by the header timeout)
            wait_for(c.up, timeout=15, what="the API after the cap's connections closed")
            self.assertIn("accept-resumed", node.log())
        finally:
            for s in socks:
                s.close()
            self.assertEqual(node.stop(), 0)
            pg.stop()

    def test_reuseport_and_foreign_socket(self):
        pg = PgServer()
        port = free_port()
        node = Pgmtad(pg, pipes=PIPES, extra=extra(port))
        c = Client(port)
        try:
            wait_for(c.up, timeout=20, what="the HTTP API")
            # pgmtad's socket has SO_REUSEPORT: another one may join it
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            s.close()
        finally:
            self.assertEqual(node.stop(), 0)
        # a port held by a socket without SO_REUSEPORT still fails, clearly
        port2 = free_port()
        holder = socket.socket()
        holder.bind(("127.0.0.1", port2))
        holder.listen(1)
        node = Pgmtad(pg, pipes=PIPES, extra=extra(port2))
        try:
            wait_for(lambda: "http event=listen-failed" in node.log(), timeout=20,
                     what="the listen failure")
            self.assertIn("held by a socket without SO_REUSEPORT", node.log())
        finally:
            holder.close()
            self.assertEqual(node.stop(), 0)
            pg.stop()

    def test_emfile_pauses_accepting_without_spinning(self):
        pg = PgServer()
        port = free_port()
        node = Pgmtad(pg, pipes=PIPES, start=False,
                      extra=extra(port, 'max-connections = 100000; header-timeout = "600s"; '
                                        'request-timeout = "600s";') + ONE_HTTP_PROCESS)
        node.proc = Proc(["prlimit", "--nofile=64:64", PGMTAD, "-c", node.conf_path],
                         os.path.join(node.dir, "pgmtad.log"))
        c = Client(port)
        socks = []
        try:
            wait_for(c.up, timeout=20, what="the HTTP API")
            http_pid = smtp_in_pid(node)
            for _ in range(150):  # more than the descriptors pgmtad may hold
                s = socket.create_connection(("127.0.0.1", port))
                s.send(b"GET /api/status HTTP/1.1\r\n")
                socks.append(s)
            wait_for(lambda: "accept-paused reason=emfile" in node.log(), timeout=10,
                     what="the EMFILE pause")
            cpu0, log0 = cpu_seconds(http_pid), len(node.log())
            time.sleep(5)
            cpu = cpu_seconds(http_pid) - cpu0
            grown = len(node.log()) - log0
            self.assertLess(cpu, 1.5, "the accept loop spins: %.2fs CPU in 5s" % cpu)
            self.assertLess(grown, 20000, "the log grew by %d bytes in 5s" % grown)
            self.assertNotIn("Too many open files", node.log())
            for s in socks:
                s.close()
            socks = []
            wait_for(c.up, timeout=20, what="the API after the connections closed")
        finally:
            for s in socks:
                s.close()
            self.assertEqual(node.stop(), 0)
            pg.stop()


if __name__ == "__main__":
    main()
