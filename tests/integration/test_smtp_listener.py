"""The SMTP injection listener of pgmtad (DESIGN §6) against a real
PostgreSQL, driven by swaks, Python's smtplib and raw sockets: content stored
byte-exact after un-stuffing with a Received field in front, X-Job and
X-Virtual-MTA applied and removed, pipelining, SMTP smuggling, STARTTLS
injection, AUTH only over TLS, no open relay, size and line limits, and 451
(never 250) while the database is away.

Injected mail must stay in the queue so that its rows can be checked: every
test domain is paused and routed to a port where nothing listens."""
import base64
import hashlib
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import unittest

import pgmta_test
from pgmta_test import PgServer, Pgmtad, free_port, make_cert, tmpdir, wait_for

DOMAINS = ("example.test", "other.test", "ext.test")


def domain_conf(dead_port):
    return ['{ name = "%s"; route = "127.0.0.1:%d"; }' % (d, dead_port) for d in DOMAINS]


class Client:
    """A raw SMTP client: bytes out exactly as given, replies parsed."""

    def __init__(self, port, host="127.0.0.1", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed; buffered %r" % self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("latin-1")

    def reply(self):
        """One reply: (code, [text lines])."""
        lines = []
        while True:
            line = self.line()
            lines.append(line[4:])
            if len(line) < 4 or line[3] == " ":
                return int(line[:3]), lines

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return self.reply()

    def pending(self, wait=0.5):
        """Whatever else arrives within WAIT seconds (b"" for nothing)."""
        self.sock.settimeout(wait)
        data = self.buf
        self.buf = b""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, BlockingIOError):
            pass
        finally:
            self.sock.settimeout(10)
        return data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def strip_received(content):
    """Content without the first header field (the listener's Received)."""
    assert content.startswith(b"Received: from "), content[:200]
    m = re.match(rb"Received: [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*", content)
    return content[m.end():]


class ListenerBase(unittest.TestCase):
    """One PostgreSQL and one node for the class."""
    extra_listener = ""

    @classmethod
    def setUpClass(cls):
        cls.dir = tmpdir()
        cls.cert, cls.key = make_cert(cls.dir, cn="mx.pgmta.test")
        cls.pg = PgServer()
        cls.port = free_port()
        cls.dead = free_port()
        sha = hashlib.sha256(b"bobs pass").hexdigest()
        extra = ('listen = { smtp = [ "127.0.0.1:%d" ]; };\n'
                 'smtp-listener = { tls-cert = "%s"; tls-key = "%s"; '
                 'max-message-size = 100000; %s '
                 'users = ( { name = "alice"; password = "s3cret"; }, '
                 '{ name = "bob"; password = "{SHA256}%s"; } ); };\n'
                 'virtual-mtas = ( { name = "vmta-x"; } );\n'
                 % (cls.port, cls.cert, cls.key, cls.extra_listener, sha))
        for d in DOMAINS:
            cls.pg.query("SELECT mta.pause_queue(%s)", (d,))
            cls.pg.query("SELECT mta.pause_queue(%s, 'vmta-x')", (d,))
        cls.node = Pgmtad(cls.pg, domains=domain_conf(cls.dead), extra=extra)
        cls.wait_ready()

    @classmethod
    def wait_ready(cls):
        cls.node.wait_accepting([cls.port])

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def messages(self):
        return self.pg.scalar("SELECT count(*) FROM mta.messages")

    def message(self, mid):
        rows = self.pg.query("SELECT mail_from, content, job_id, vmta FROM mta.messages "
                             "WHERE id = %s", (mid,))
        self.assertEqual(len(rows), 1, "message %s not stored" % mid)
        mail_from, content, job, vmta = rows[0]
        return mail_from, bytes(content), job, vmta

    def rcpts(self, mid):
        return [r[0] for r in self.pg.query(
            "SELECT rcpt FROM mta.recipients WHERE message_id = %s ORDER BY id", (mid,))]

    def queued_id(self, reply):
        code, text = reply
        self.assertEqual(code, 250, reply)
        m = re.search(r"queued as (\d+)", text[-1])
        self.assertIsNotNone(m, reply)
        return int(m.group(1))

    def client(self):
        c = Client(self.port)
        self.addCleanup(c.close)
        self.assertEqual(c.greeting[0], 220)
        return c


class ListenerTest(ListenerBase):

    def test_swaks_content_headers_recipients(self):
        body = ("Subject: hello\r\nX-Job: job-42\r\nFrom: s@sender.test\r\n"
                "x-virtual-mta:\r\n  vmta-x\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\n"
                "X-Job: in the body stays")  # swaks ends the data with CRLF . CRLF
        path = os.path.join(self.dir, "swaks.eml")
        with open(path, "w") as f:
            f.write(body)
        r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(self.port),
                            "--from", "s@sender.test", "--to",
                            "a@example.test,b@other.test,c@example.test",
                            "--data", "@" + path, "--timeout", "20"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        m = re.search(r"<[-~]\s+250 2\.0\.0 Ok: queued as (\d+)", r.stdout)
        self.assertIsNotNone(m, r.stdout)
        mid = int(m.group(1))
        mail_from, content, job, vmta = self.message(mid)
        self.assertEqual(mail_from, "s@sender.test")
        self.assertEqual(job, "job-42")
        self.assertEqual(vmta, "vmta-x")
        want = ("Subject: hello\r\nFrom: s@sender.test\r\n\r\nline one\r\n.leading dot\r\n"
                "..two dots\r\nX-Job: in the body stays\r\n").encode()
        self.assertEqual(strip_received(content), want)
        received = content[:len(content) - len(want)].decode()
        self.assertIn("from ", received)
        self.assertIn("[127.0.0.1]", received)
        self.assertIn("with ESMTP", received)
        self.assertEqual(self.rcpts(mid), ["a@example.test", "b@other.test", "c@example.test"])
        acct = self.pg.query("SELECT rcpt, job_id, vmta FROM mta.acct WHERE type = 'r' AND "
                             "message_id = %s ORDER BY rcpt", (mid,))
        self.assertEqual(acct, [("a@example.test", "job-42", "vmta-x"),
                                ("b@other.test", "job-42", "vmta-x"),
                                ("c@example.test", "job-42", "vmta-x")])
        self.assertRegex(self.node.log(), r"smtp-in session=\d+ from=127\.0\.0\.1 msg=%d "
                         r"rcpts=3 size=\d+" % mid)

    def test_null_sender_and_8bitmime(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<> BODY=8BITMIME SIZE=100")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<n@example.test>")[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send("Subject: caf\u00e9\r\n\r\n\u00e9t\u00e9\r\n.\r\n".encode())
        mid = self.queued_id(c.reply())
        mail_from, content, job, vmta = self.message(mid)
        self.assertEqual(mail_from, "")
        self.assertIsNone(job)
        self.assertIsNone(vmta)
        self.assertEqual(strip_received(content),
                         "Subject: caf\u00e9\r\n\r\n\u00e9t\u00e9\r\n".encode())

    def test_ehlo_capabilities(self):
        c = self.client()
        code, lines = c.cmd("EHLO client.test")
        self.assertEqual(code, 250)
        caps = [l.split(" ")[0] for l in lines[1:]]
        for cap in ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS"):
            self.assertIn(cap, caps)
        self.assertIn("SIZE 100000", lines)
        self.assertNotIn("AUTH", caps)  # only over TLS

    def test_pipelining(self):
        c = self.client()
        c.send(b"EHLO client.test\r\nMAIL FROM:<p@sender.test>\r\nRCPT TO:<p1@example.test>\r\n"
               b"RCPT TO:<p2@other.test>\r\nDATA\r\n")
        self.assertEqual(c.reply()[0], 250)
        self.assertEqual([c.reply()[0] for _ in range(3)], [250, 250, 250])
        self.assertEqual(c.reply()[0], 354)
        # The end of one message and the whole next transaction in one write:
        # the commands wait while the first enqueue commits.
        c.send(b"Subject: one\r\n\r\nfirst\r\n.\r\nMAIL FROM:<p@sender.test>\r\n"
               b"RCPT TO:<p3@example.test>\r\nDATA\r\n")
        first = self.queued_id(c.reply())
        self.assertEqual([c.reply()[0] for _ in range(3)], [250, 250, 354])
        c.send(b"Subject: two\r\n\r\nsecond\r\n.\r\nQUIT\r\n")
        second = self.queued_id(c.reply())
        self.assertEqual(c.reply()[0], 221)
        self.assertEqual(self.rcpts(first), ["p1@example.test", "p2@other.test"])
        self.assertEqual(self.rcpts(second), ["p3@example.test"])
        self.assertEqual(strip_received(self.message(first)[1]), b"Subject: one\r\n\r\nfirst\r\n")
        self.assertEqual(strip_received(self.message(second)[1]),
                         b"Subject: two\r\n\r\nsecond\r\n")

    def test_smtp_smuggling(self):
        before = self.messages()
        c = self.client()
        c.send(b"EHLO client.test\r\nMAIL FROM:<s@sender.test>\r\nRCPT TO:<v@example.test>\r\n"
               b"DATA\r\n")
        self.assertEqual([c.reply()[0] for _ in range(4)], [250, 250, 250, 354])
        body = (b"Subject: smuggling\r\n\r\n"
                b"A\n.\nMAIL FROM:<e1@evil.test>\nRCPT TO:<x1@example.test>\nDATA\nB\r\n"
                b".\nMAIL FROM:<e2@evil.test>\r\nRCPT TO:<x2@example.test>\r\nDATA\r\nC\n"
                b".\r\nMAIL FROM:<e3@evil.test>\r\nRCPT TO:<x3@example.test>\r\nDATA\r\nD\r"
                b".\r\nMAIL FROM:<e4@evil.test>\r\nRCPT TO:<x4@example.test>\r\nDATA\r\n"
                b"E\r\n..\r\nend\r\n")
        c.send(body + b".\r\nQUIT\r\n")
        mid = self.queued_id(c.reply())
        self.assertEqual(c.reply()[0], 221)  # nothing answered in between
        self.assertEqual(self.messages(), before + 1)
        # Only a dot at the start of a CRLF line is un-stuffed: the one after
        # "B\r\n" and one of "..".
        want = body.replace(b"B\r\n.\nMAIL", b"B\r\n\nMAIL").replace(b"E\r\n..\r\n", b"E\r\n.\r\n")
        self.assertEqual(strip_received(self.message(mid)[1]), want)
        self.assertEqual(self.rcpts(mid), ["v@example.test"])
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.messages WHERE mail_from "
                                        "LIKE '%%evil.test'"), 0)

    def test_starttls_injection(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        c.send(b"STARTTLS\r\nRSET\r\n")
        self.assertEqual(c.reply()[0], 220)
        # Nothing more in clear text: the RSET was not answered.
        self.assertEqual(c.pending(0.5), b"")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.pgmta.test")
        # After TLS the first reply is the EHLO's, not the RSET's "250 2.0.0 Ok".
        code, lines = c.cmd("EHLO client.test")
        self.assertEqual(code, 250)
        self.assertIn("Hello client.test", lines[0])
        self.assertNotIn("STARTTLS", lines)
        self.assertIn("AUTH PLAIN LOGIN", lines)
        self.assertEqual(c.cmd("NOOP")[0], 250)
        self.assertEqual(c.pending(0.3), b"")

    def test_starttls_resets_session(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test>")[0], 250)
        self.assertEqual(c.cmd("STARTTLS")[0], 220)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock)
        # Neither the EHLO nor the transaction survive STARTTLS.
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test>")[0], 503)
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<t@example.test>")[0], 503)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test>")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<t@example.test>")[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send(b"Subject: tls\r\n\r\nover tls\r\n.\r\n")
        mid = self.queued_id(c.reply())
        self.assertIn(b"with ESMTPS", self.message(mid)[1])

    def test_auth_refused_before_tls(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        cred = base64.b64encode(b"\0alice\0s3cret").decode()
        code, lines = c.cmd("AUTH PLAIN " + cred)
        self.assertEqual(code, 538, lines)
        self.assertTrue(lines[0].startswith("5.7.11"), lines)
        self.assertEqual(c.cmd("AUTH LOGIN")[0], 538)

    def test_line_too_long(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        code, lines = c.cmd("NOOP " + "x" * 1100)
        self.assertEqual(code, 500)
        self.assertTrue(lines[0].startswith("5.5.2"), lines)
        self.assertEqual(c.cmd("MAIL FROM:<" + "a" * 990 + "@sender.test>")[0], 500)
        self.assertEqual(c.cmd("NOOP")[0], 250)

    def test_ten_megabyte_command(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        got = []

        def reader():
            try:
                while True:
                    data = c.sock.recv(65536)
                    if not data:
                        break
                    got.append(data)
            except OSError:
                got.append(b"<reset>")
        t = threading.Thread(target=reader)
        t.start()
        try:
            c.sock.sendall(b"MAIL FROM:<" + b"x" * (10 * 1024 * 1024) + b">\r\n")
        except OSError:
            pass  # the server closed the connection while we were sending
        t.join(20)
        self.assertFalse(t.is_alive(), "the server kept the connection open")
        data = b"".join(got)
        self.assertTrue(data.startswith(b"500 5.5.2") or data == b"<reset>", data[:200])
        # The node is fine afterwards.
        c2 = self.client()
        self.assertEqual(c2.cmd("EHLO client.test")[0], 250)
        self.assertTrue(self.node.proc.alive())

    def test_size_limits(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        for size in ("18446744073709551616", "18446744073709551615", "99999999999999999999999",
                     "100001"):
            code, lines = c.cmd("MAIL FROM:<s@sender.test> SIZE=" + size)
            self.assertEqual(code, 552, (size, lines))
            self.assertTrue(lines[0].startswith("5.3.4"), lines)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test> SIZE=x")[0], 501)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test> FOO=bar")[0], 555)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test> SIZE=99999")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<big@example.test>")[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        before = self.messages()
        line = b"y" * 998 + b"\r\n"
        c.send(b"Subject: big\r\n\r\n" + line * 120 + b".\r\n")
        code, lines = c.reply()
        self.assertEqual(code, 552, lines)
        self.assertTrue(lines[0].startswith("5.3.4"), lines)
        self.assertEqual(self.messages(), before)
        # The session goes on with a fresh transaction.
        self.assertEqual(c.cmd("RCPT TO:<big@example.test>")[0], 503)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test>")[0], 250)

    def test_too_many_recipients(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test>")[0], 250)
        c.send(b"".join(b"RCPT TO:<r%d@example.test>\r\n" % i for i in range(1001)))
        codes = [c.reply() for _ in range(1001)]
        self.assertEqual([x[0] for x in codes[:1000]], [250] * 1000)
        self.assertEqual(codes[1000][0], 452)
        self.assertTrue(codes[1000][1][0].startswith("4.5.3"), codes[1000])
        self.assertEqual(c.cmd("RSET")[0], 250)

    def test_address_syntax(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<a@example.test>")[0], 503)  # no MAIL yet
        for bad in ("MAIL FROM:s@sender.test", "MAIL FROM:<s@sender.test", "MAIL FROM:<s@>",
                    "MAIL FROM:<s>", "MAIL FROM:<s @sender.test>", "MAIL TO:<s@sender.test>"):
            self.assertEqual(c.cmd(bad)[0], 501, bad)
        c.send(b"MAIL FROM:<s\0x@sender.test>\r\n")
        self.assertEqual(c.reply()[0], 500)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test>")[0], 250)
        for bad in ("RCPT TO:<>", "RCPT TO:<postmaster>", "RCPT TO:<a@b..test>",
                    "RCPT TO:<a\x01b@example.test>", "RCPT TO:<\u00e9@example.test>"):
            self.assertIn(c.cmd(bad)[0], (500, 501), bad)
        c.send(b"RCPT TO:<a\rb@example.test>\r\n")
        self.assertEqual(c.reply()[0], 500)
        self.assertEqual(c.cmd('RCPT TO:<"odd name"@example.test>')[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<@relay.test:r@example.test>")[0], 250)
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send(b"Subject: q\r\n\r\nq\r\n.\r\n")
        mid = self.queued_id(c.reply())
        self.assertEqual(self.rcpts(mid), ['"odd name"@example.test', "r@example.test"])

    def test_enqueue_error_is_permanent(self):
        # A job id too long for the queue (folded over two lines) gets past
        # SMTP and is refused by mta.enqueue: 554 with the reason, nothing
        # stored; a virtual MTA the configuration does not know is refused
        # by the listener itself.
        before = self.messages()
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        for header, reason in ((b"X-Job: " + b"j" * 150 + b"\r\n " + b"k" * 150, "job_id"),
                               (b"X-Virtual-MTA: no-such-vmta", "X-Virtual-MTA"),
                               (b"X-Virtual-MTA: bad name!", "X-Virtual-MTA")):
            self.assertEqual(c.cmd("MAIL FROM:<s@sender.test>")[0], 250)
            self.assertEqual(c.cmd("RCPT TO:<e@example.test>")[0], 250)
            self.assertEqual(c.cmd("DATA")[0], 354)
            c.send(header + b"\r\nSubject: x\r\n\r\nx\r\n.\r\n")
            code, lines = c.reply()
            self.assertEqual(code, 554, lines)
            self.assertIn(reason, lines[0])
            self.assertEqual(self.messages(), before)
            self.assertEqual(c.cmd("NOOP")[0], 250)

    def test_smtplib_send(self):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as s:
            refused = s.sendmail("lib@sender.test", ["l1@example.test", "l2@example.test"],
                                 b"Subject: lib\r\nX-Job: lib-job\r\n\r\nbody\r\n")
            self.assertEqual(refused, {})
        rows = self.pg.query("SELECT id FROM mta.messages WHERE job_id = 'lib-job'")
        self.assertEqual(len(rows), 1)
        self.assertEqual(self.rcpts(rows[0][0]), ["l1@example.test", "l2@example.test"])


class AuthTest(ListenerBase):
    """allow = [ ]: loopback is not trusted, only authenticated clients may
    inject."""
    extra_listener = "allow = [ ];"

    def tls_client(self):
        # generous: a failed AUTH is answered after a delay that grows with
        # every failure from 127.0.0.1 in this class
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=60)
        self.addCleanup(s.close)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s.starttls(context=ctx)
        s.ehlo("client.test")
        return s

    def messages(self):
        return self.pg.scalar("SELECT count(*) FROM mta.messages WHERE mail_from <> ''")

    def test_no_open_relay(self):
        before = self.messages()
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test>")[0], 250)
        for rcpt in ("v@ext.test", "v%ext.test@example.test", '"v@ext.test"@example.test',
                     "v@example.test"):
            code, lines = c.cmd("RCPT TO:<%s>" % rcpt)
            self.assertEqual(code, 550, (rcpt, lines))
            self.assertTrue(lines[0].startswith("5.7.1"), lines)
        self.assertEqual(c.cmd("DATA")[0], 554)
        self.assertEqual(self.messages(), before)
        # STARTTLS alone does not make a client trusted either.
        s = self.tls_client()
        s.mail("s@sender.test")
        code, msg = s.rcpt("v@ext.test")
        self.assertEqual(code, 550)
        self.assertTrue(msg.startswith(b"5.7.1"), msg)
        self.assertEqual(self.messages(), before)

    def test_auth_plain(self):
        s = self.tls_client()
        self.assertIn("PLAIN", s.esmtp_features.get("auth", ""))
        with self.assertRaises(smtplib.SMTPAuthenticationError) as e:
            s.login("alice", "wrong")
        self.assertEqual(e.exception.smtp_code, 535)
        s.login("alice", "s3cret")
        cred = base64.b64encode(b"\0alice\0s3cret").decode()
        self.assertEqual(s.docmd("AUTH", "PLAIN " + cred)[0], 503)  # once per session
        refused = s.sendmail("alice@sender.test", ["v@ext.test", "w@example.test"],
                             b"Subject: auth\r\nX-Job: auth-job\r\n\r\nauthenticated\r\n")
        self.assertEqual(refused, {})
        rows = self.pg.query("SELECT id, content FROM mta.messages WHERE job_id = 'auth-job'")
        self.assertEqual(len(rows), 1)
        self.assertEqual(self.rcpts(rows[0][0]), ["v@ext.test", "w@example.test"])
        self.assertIn(b"with ESMTPSA", bytes(rows[0][1]))
        self.assertIn('user="alice"', self.node.log())

    def test_auth_login_sha256(self):
        s = self.tls_client()
        s.user, s.password = "bob", "wrong"
        with self.assertRaises(smtplib.SMTPAuthenticationError):
            s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        s.user, s.password = "bob", "bobs pass"
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        self.assertEqual(code, 235)
        s.sendmail("bob@sender.test", ["b@other.test"], b"Subject: bob\r\nX-Job: bob-job\r\n\r\nb\r\n")
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.messages "
                                        "WHERE job_id = 'bob-job'"), 1)

    def test_auth_cancel_and_garbage(self):
        s = self.tls_client()
        code, _ = s.docmd("AUTH", "PLAIN")
        self.assertEqual(code, 334)
        code, _ = s.docmd("*")
        self.assertEqual(code, 501)
        code, _ = s.docmd("AUTH", "PLAIN !!!notbase64")
        self.assertEqual(code, 501)
        code, _ = s.docmd("AUTH", "CRAM-MD5")
        self.assertEqual(code, 504)
        code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0nobody\0s3cret").decode())
        self.assertEqual(code, 535)
        code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"bob\0alice\0s3cret").decode())
        self.assertEqual(code, 535)  # authorisation identity of someone else


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class LimitsAndReloadTest(unittest.TestCase):
    """max-sessions, idle-timeout, the error limit, an IPv6 listener and a
    reload that moves the listener and changes the allow list."""

    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.port = free_port()
        cls.port6 = free_port("::1") if have_ipv6_loopback() else None
        cls.dead = free_port()
        for d in DOMAINS:
            cls.pg.query("SELECT mta.pause_queue(%s)", (d,))
        addrs = ['"127.0.0.1:%d"' % cls.port]
        if cls.port6:
            addrs.append('"[::1]:%d"' % cls.port6)
        cls.listen = "listen = { smtp = [ %s ]; };\n" % ", ".join(addrs)
        # max-sessions is per smtp-in process: one process, so 2 in all
        cls.limits = 'smtp-listener = { processes = 1; max-sessions = 2; idle-timeout = "1s"; };\n'
        cls.node = Pgmtad(cls.pg, domains=domain_conf(cls.dead), extra=cls.listen + cls.limits)
        wait_for(lambda: "db=pgmtad-smtp-in event=connected" in cls.node.log() and
                 cls.pg.scalar("SELECT count(*) FROM mta.pipes") > 0,
                 timeout=20, what="the listener")

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def client(self, port=None, host="127.0.0.1"):
        """A session once a slot is free (max-sessions = 2; sessions of the
        previous test may still be closing)."""
        got = []

        def connect():
            c = Client(port or self.port, host=host)
            if c.greeting[0] == 220:
                got.append(c)
                return True
            c.close()
            return False
        wait_for(connect, timeout=10, what="a session slot")
        self.addCleanup(got[0].close)
        return got[0]

    def test_max_sessions(self):
        a, b = self.client(), self.client()
        c = Client(self.port)
        self.addCleanup(c.close)
        self.assertEqual(c.greeting[0], 421, c.greeting)
        self.assertTrue(c.greeting[1][0].startswith("4.3.2"), c.greeting)
        self.assertEqual(c.pending(2), b"")  # and closed
        a.cmd("QUIT")
        a.close()

        def third():
            d = Client(self.port)
            try:
                return d.greeting[0] == 220
            finally:
                d.close()
        wait_for(third, timeout=5, what="a free session slot")

    def test_idle_timeout(self):
        c = self.client()
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        start = time.monotonic()
        code, lines = c.reply()
        self.assertEqual(code, 421, lines)
        self.assertTrue(lines[0].startswith("4.4.2"), lines)
        self.assertLess(time.monotonic() - start, 5)
        self.assertEqual(c.pending(1), b"")

    def test_too_many_errors(self):
        c = self.client()
        codes = [c.cmd("BOGUS %d" % i)[0] for i in range(19)]
        self.assertEqual(codes, [502] * 19)
        code, lines = c.cmd("BOGUS 19")
        self.assertEqual(code, 502)
        code, lines = c.reply()
        self.assertEqual(code, 421, lines)

    def test_ipv6_listener(self):
        self.assertTrue(self.port6, "no IPv6 loopback: tests/run enables it")
        c = self.client(self.port6, host="::1")
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<s6@sender.test>")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<six@example.test>")[0], 250)  # ::1/128 is allowed
        self.assertEqual(c.cmd("DATA")[0], 354)
        c.send(b"Subject: v6\r\n\r\nx\r\n.\r\n")
        code, lines = c.reply()
        self.assertEqual(code, 250, lines)
        content = bytes(self.pg.scalar("SELECT content FROM mta.messages WHERE mail_from = "
                                       "'s6@sender.test'"))
        self.assertIn(b"[IPv6:::1]", content)

    def test_zz_reload(self):
        # Runs last: it moves the listener and stops trusting loopback.
        new_port = free_port()
        with open(self.node.conf_path) as f:
            text = f.read()
        text = text.replace(self.listen, 'listen = { smtp = [ "127.0.0.1:%d" ]; };\n' % new_port)
        text = text.replace(self.limits, "smtp-listener = { allow = [ ]; };\n")
        with open(self.node.conf_path, "w") as f:
            f.write(text)
        self.node.proc.signal(signal.SIGHUP)

        def moved():
            try:
                socket.create_connection(("127.0.0.1", new_port), timeout=1).close()
            except OSError:
                return False
            return True
        wait_for(moved, timeout=10, what="the listener on the new port")

        # Every smtp-in process reloads on its own signal: the old port
        # closes once the last of them has applied the new configuration.
        def old_closed():
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            except OSError:
                return True
            return False
        wait_for(old_closed, timeout=10, what="the old port to close")
        c = Client(new_port)
        self.addCleanup(c.close)
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        self.assertEqual(c.cmd("MAIL FROM:<s@sender.test>")[0], 250)
        self.assertEqual(c.cmd("RCPT TO:<r@example.test>")[0], 550)


class DatabaseDownTest(unittest.TestCase):
    def test_451_while_database_is_away(self):
        pg = PgServer()
        port = free_port()
        dead = free_port()
        for d in DOMAINS:
            pg.query("SELECT mta.pause_queue(%s)", (d,))
        node = Pgmtad(pg, domains=domain_conf(dead),
                      extra='listen = { smtp = [ "127.0.0.1:%d" ]; };' % port)
        self.addCleanup(node.stop)

        def inject(tag):
            c = Client(port)
            try:
                r = [c.cmd("EHLO client.test")[0], c.cmd("MAIL FROM:<s@sender.test>")[0],
                     c.cmd("RCPT TO:<d@example.test>")[0], c.cmd("DATA")[0]]
                if r != [250, 250, 250, 354]:
                    return r
                c.send(b"Subject: " + tag.encode() + b"\r\n\r\nx\r\n.\r\n")
                return c.reply()
            finally:
                c.close()

        def works():
            try:
                return inject("up")[0] == 250
            except OSError:
                return False
        wait_for(works, timeout=30, what="a first injection")
        pg.stop()
        for i in range(3):
            code, lines = inject("down-%d" % i)
            self.assertEqual(code, 451, lines)
            self.assertTrue(lines[0].startswith("4.3."), lines)
        pg.start()
        wait_for(works, timeout=40, what="injection after the database came back")
        subjects = [bytes(r[0]) for r in pg.query("SELECT content FROM mta.messages")]
        self.assertFalse(any(b"Subject: down-" in s for s in subjects))
        self.assertTrue(node.proc.alive())

        # Shutdown: a session between commands is told 421, the port closes.
        c = Client(port)
        self.addCleanup(c.close)
        self.assertEqual(c.cmd("EHLO client.test")[0], 250)
        node.proc.signal(signal.SIGTERM)
        code, lines = c.reply()
        self.assertEqual(code, 421, lines)
        self.assertTrue(lines[0].startswith("4.3.2"), lines)
        node.proc.p.wait(30)
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


if __name__ == "__main__":
    pgmta_test.main()
