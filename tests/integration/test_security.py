"""Security of pgmtad seen from outside (see README, Security): no secret in
`pgmtad --check` or in the debug log, log lines that a remote peer cannot
split, against a real PostgreSQL and the real SMTP listener."""
import base64
import hashlib
import http.client
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import unittest

import psycopg2

import pgmta_test
from pgmta_test import PgServer, Pgmtad, free_port, make_cert, tmpdir, wait_for
from listener_test import ListenerNode, auth_plain, smtp_reply, starttls_session
from sink import Sink, smtp_send

SECRETS = ("Tok3n-admin-secret", "Inj3ct-secret-one", "Inj3ct-secret-two", "Db-pa55word",
           "Us3r-pa55word", "Db-kw-pa55")


class CheckRedactsSecrets(unittest.TestCase):
    def check(self, url):
        d = tmpdir()
        path = os.path.join(d, "pgmta.conf")
        with open(path, "w") as f:
            f.write('node-name = "sec";\n'
                    'database = { url = "%s"; };\n'
                    'pipes = ( { name = "bulk"; processes = 1; } );\n'
                    'default-pipe = "bulk";\n'
                    'listen = { http = "127.0.0.1:1"; };\n'
                    'http = { token = "Tok3n-admin-secret"; '
                    'inject-tokens = [ "Inj3ct-secret-one", "Inj3ct-secret-two" ]; };\n'
                    'smtp-listener = { users = ( { name = "alice"; '
                    'password = "Us3r-pa55word"; } ); };\n' % url)
        r = subprocess.run([pgmta_test.PGMTAD, "--check", "-c", path], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        for s in SECRETS:
            self.assertNotIn(s, r.stdout + r.stderr)
        self.assertIn('token = "***";', r.stdout)
        self.assertIn('inject-tokens = [ "***", "***" ];', r.stdout)
        self.assertRegex(r.stdout, r'name = "alice";\s*password = "\*\*\*";')
        return r.stdout

    def test_uri_password(self):
        out = self.check("postgresql://mta:Db-pa55word@127.0.0.1:5432/mta?password=Db-kw-pa55"
                         "&sslmode=disable")
        self.assertIn('url = "postgresql://mta:***@127.0.0.1:5432/mta?password=***'
                      '&sslmode=disable";', out)

    def test_keyword_password(self):
        out = self.check("host=127.0.0.1 password = 'Db-kw-pa55' user=mta dbname=mta")
        self.assertIn("url = \"host=127.0.0.1 password = *** user=mta dbname=mta\";", out)

    def test_url_without_password_unchanged(self):
        out = self.check("postgresql://mta@127.0.0.1:5432/mta")
        self.assertIn('url = "postgresql://mta@127.0.0.1:5432/mta";', out)


def tls_socket(port, source="127.0.0.1"):
    """A raw STARTTLS connection to the listener from the loopback address
    source, after EHLO, and the function that reads a reply."""
    t, tf = starttls_session(port, source)
    return t, tf, smtp_reply


class NodeBase(ListenerNode):
    users = '{ name = "alice"; password = "Us3r-pa55word"; }'


class LogHasNoCredentials(NodeBase):
    def test_auth_lines_redacted_and_log_not_split(self):
        secret = b"Us3r-pa55word"
        wrong = b"Wr0ng-pa55word"
        plain_ok = base64.b64encode(b"\0alice\0" + secret)
        plain_bad = base64.b64encode(b"\0alice\0" + wrong)
        # A user name that would forge a log line if written raw.
        forged = base64.b64encode(b"\0evil\r\n2026-01-01T00:00:00.000Z forged: x\x1b[31m\0"
                                  + wrong)
        t, tf, reply = tls_socket(self.port)
        # Spellings of AUTH with an initial response, each a failure here.
        for cmd in (b"AUTH\tPLAIN " + plain_bad, b"auth  plain " + plain_bad,
                    b"AUTH PLAIN " + forged):
            t.sendall(cmd + b"\r\n")
            code, lines = reply(tf)
            self.assertIn(code, (535, 501), (cmd, lines))
            if code == 501:  # a listener that refuses the odd spelling is fine
                continue
        t.close()
        t, tf, reply = tls_socket(self.port)
        # AUTH LOGIN with the credentials in the continuation lines after 334.
        t.sendall(b"AUTH LOGIN\r\n")
        self.assertEqual(reply(tf)[0], 334)
        t.sendall(base64.b64encode(b"alice") + b"\r\n")
        self.assertEqual(reply(tf)[0], 334)
        t.sendall(base64.b64encode(secret) + b"\r\n")
        self.assertEqual(reply(tf)[0], 235)
        t.close()
        t, tf, reply = tls_socket(self.port)
        t.sendall(b"AUTH PLAIN " + plain_ok + b"\r\n")
        self.assertEqual(reply(tf)[0], 235)
        t.sendall(b"QUIT\r\n")
        t.close()

        def logged():
            return self.node.log().count("event=auth user=\"alice\"") >= 2
        wait_for(logged, timeout=10, what="the auth log lines")
        log = self.node.log()
        self.assertIn("command=", log)  # the debug log is on
        for s in (secret, wrong, plain_ok, plain_bad, forged, base64.b64encode(secret),
                  base64.b64encode(b"alice")):
            self.assertNotIn(s.decode(), log)
        for line in log.splitlines():
            self.assertFalse(line.startswith("2026-01-01T00:00:00.000Z forged"), line)
            self.assertNotIn("\x1b", line)
        self.assertIn('user="evil\\r\\n2026-01-01T00:00:00.000Z forged: x\\x1b[31m"', log)


def passwd(password, *args):
    r = subprocess.run([pgmta_test.PGMTA, "passwd"] + list(args), input=password + "\n",
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise AssertionError("pgmta passwd: " + r.stderr)
    return r.stdout.strip()


class AuthLimits(NodeBase):
    """Failed AUTH: a delay of at least a second before the 535, growing per
    failure of the client address across its connections, the connection
    closed after max-auth-failures; passwords stored as crypt(3) hashes.
    Each test uses its own loopback source address (the backoff is per
    address)."""
    extra_listener = "max-auth-failures = 3;"
    processes = 1
    users = None

    @classmethod
    def setUpClass(cls):
        cls.hash_y = passwd("Yes-crypt pass")
        cls.hash_6 = passwd("Sha-crypt pass", "--sha512")
        sha = hashlib.sha256(b"old pass").hexdigest()
        cls.users = ('{ name = "yes"; password = "%s"; }, { name = "six"; password = "%s"; }, '
                     '{ name = "old"; password = "{SHA256}%s"; }'
                     % (cls.hash_y, cls.hash_6, sha))
        super().setUpClass()

    def test_passwd_prints_salted_hashes(self):
        self.assertRegex(self.hash_y, r"^\$y\$[./A-Za-z0-9]+\$[./A-Za-z0-9]+\$[./A-Za-z0-9]{20,}$")
        self.assertRegex(self.hash_6, r"^\$6\$[./A-Za-z0-9]+\$[./A-Za-z0-9]{80,}$")
        self.assertNotEqual(passwd("Yes-crypt pass"), self.hash_y)  # salted
        self.assertNotIn("Yes-crypt", self.hash_y)
        r = subprocess.run([pgmta_test.PGMTA, "passwd"], input="", capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stdout, "")

    def test_crypt_hashes_and_old_form(self):
        for i, (user, pw) in enumerate(((b"yes", b"Yes-crypt pass"), (b"six", b"Sha-crypt pass"),
                                        (b"old", b"old pass"))):
            t, tf, reply = tls_socket(self.port, "127.0.0.%d" % (10 + i))
            t.sendall(auth_plain(user, pw))
            self.assertEqual(reply(tf)[0], 235, user)
            # RFC 4954 AUTH=<> on MAIL FROM
            t.sendall(b"MAIL FROM:<a@sender.test> AUTH=<>\r\n")
            self.assertEqual(reply(tf)[0], 250)
            t.sendall(b"RSET\r\nMAIL FROM:<a@sender.test> AUTH=a+40sender.test\r\n")
            self.assertEqual(reply(tf)[0], 250)
            self.assertEqual(reply(tf)[0], 250)
            t.close()
        log = self.node.log()
        self.assertRegex(log, r'user="old" event=weak-password-form form=\{SHA256\}')
        self.assertNotRegex(log, r'user="(yes|six)" event=weak-password-form')

    def test_failure_delayed_and_connection_closed(self):
        src = "127.0.0.20"
        t, tf, reply = tls_socket(self.port, src)
        # A failed attempt with a command pipelined behind it: nothing is
        # answered before the delay is over, the NOOP after the 535.
        start = time.monotonic()
        t.sendall(auth_plain(b"yes", b"wrong one") + b"NOOP\r\n")
        code, _ = reply(tf)
        first = time.monotonic() - start
        self.assertEqual(code, 535)
        self.assertGreaterEqual(first, 0.95)
        self.assertEqual(reply(tf)[0], 250)
        start = time.monotonic()
        t.sendall(auth_plain(b"yes", b"wrong two"))
        self.assertEqual(reply(tf)[0], 535)
        second = time.monotonic() - start
        self.assertGreaterEqual(second, 1.9)  # doubled
        # The third failure closes the connection, the right password too late.
        t.sendall(auth_plain(b"yes", b"wrong three"))
        self.assertEqual(reply(tf)[0], 535)
        self.assertEqual(reply(tf)[0], 421)
        self.assertEqual(tf.readline(), b"")
        t.close()
        self.assertIn("reason=too-many-auth-failures", self.node.log())

    def test_backoff_across_connections(self):
        src = "127.0.0.30"
        for want in (0.95, 1.9, 3.8):
            t, tf, reply = tls_socket(self.port, src)
            start = time.monotonic()
            t.sendall(auth_plain(b"six", b"wrong"))
            self.assertEqual(reply(tf)[0], 535)
            self.assertGreaterEqual(time.monotonic() - start, want)
            t.close()
        # Another address is not slowed down by these failures.
        t, tf, reply = tls_socket(self.port, "127.0.0.31")
        start = time.monotonic()
        t.sendall(auth_plain(b"six", b"wrong"))
        self.assertEqual(reply(tf)[0], 535)
        self.assertLess(time.monotonic() - start, 1.9)
        # The right password is still accepted, but from an address with
        # failures only after the delay a failure would get now: a client
        # that hangs up when no 235 came in time learns nothing sooner.
        start = time.monotonic()
        t.sendall(auth_plain(b"six", b"Sha-crypt pass") + b"NOOP\r\n")
        self.assertEqual(reply(tf)[0], 235)
        self.assertGreaterEqual(time.monotonic() - start, 1.9)
        self.assertEqual(reply(tf)[0], 250)  # the pipelined NOOP, after the 235
        t.close()
        # from an address without failures, at once
        t, tf, reply = tls_socket(self.port, "127.0.0.32")
        start = time.monotonic()
        t.sendall(auth_plain(b"six", b"Sha-crypt pass"))
        self.assertEqual(reply(tf)[0], 235)
        self.assertLess(time.monotonic() - start, 0.9)
        t.close()


def hops(n):
    return b"".join(b"Received: from h%d.test by h%d.test; Mon, 1 Dec 2026 00:00:00 +0000\r\n"
                    % (i, i + 1) for i in range(n))


class FieldChecks(unittest.TestCase):
    """job_id, envid, vmta and addresses checked once, with the same rules
    on every door: SQL (22023 naming the field), SMTP (5xx), HTTP (400)."""

    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.port, cls.http = free_port(), free_port()
        cls.pg.query("SELECT mta.pause_queue('example.test')")
        cls.pg.query("SELECT mta.pause_queue('example.test', 'known')")
        extra = ('listen = { smtp = [ "127.0.0.1:%d" ]; http = "127.0.0.1:%d"; };\n'
                 'http = { token = "adm1n"; inject-tokens = [ "inj3ct" ]; };\n'
                 'virtual-mtas = ( { name = "known"; } );\n'
                 'hop-count-limit = 10;\n' % (cls.port, cls.http))
        cls.node = Pgmtad(cls.pg, extra=extra)

        cls.node.wait_accepting([cls.port, cls.http])

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def stored(self):
        return self.pg.scalar("SELECT count(*) FROM mta.messages WHERE mail_from <> ''")

    def sql_error(self, sql, args):
        c = self.pg.connect()
        try:
            with c.cursor() as cur:
                cur.execute(sql, args)
        except psycopg2.Error as e:
            return e.pgcode, e.pgerror
        finally:
            c.close()
        return None, None

    BAD = (("job_id", "j" * 201, "at most 200"), ("job_id", "a\x01b", "control character"),
           ("job_id", "a\nb", "control character"), ("envid", "e" * 101, "100"),
           ("envid", "+" * 34, "100"), ("envid", "caf\u00e9", "printable ASCII"),
           ("envid", "a\tb", "printable ASCII"))

    def test_sql_enqueue_and_submit(self):
        before = self.stored()
        for field, value, why in self.BAD:
            code, msg = self.sql_error(
                "SELECT mta.enqueue('s@sender.test', ARRAY['r@example.test'], "
                "'Subject: x\r\n\r\nx\r\n'::bytea, %s => %%s)" % field, (value,))
            self.assertEqual(code, "22023", (field, value, msg))
            self.assertIn("invalid %s" % field, msg)
            self.assertIn(why, msg)
            code, msg = self.sql_error(
                "INSERT INTO mta.submit (mail_from, rcpt_to, content, %s) VALUES "
                "('s@sender.test', 'r@example.test', 'Subject: x\r\n\r\nx\r\n'::bytea, %%s)"
                % field, (value,))
            self.assertEqual(code, "22023", (field, value, msg))
            self.assertIn("invalid %s" % field, msg)
        # the limits themselves are allowed
        self.pg.query("SELECT mta.enqueue('s@sender.test', ARRAY['r@example.test'], "
                      "'Subject: x\r\n\r\nx\r\n'::bytea, job_id => %s, envid => %s)",
                      ("j" * 200, "e" * 97 + "+"))
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.messages WHERE job_id = %s",
                                        ("j" * 200,)), 1)

    def http_inject(self, **kw):
        req = {"envelope_sender": "s@sender.test", "recipients": [{"email": "r@example.test"}],
               "content": "Subject: x\r\n\r\nx\r\n"}
        req.update(kw)
        c = http.client.HTTPConnection("127.0.0.1", self.http, timeout=30)
        try:
            c.request("POST", "/api/inject/v1", body=json.dumps(req).encode(),
                      headers={"Host": "127.0.0.1", "Content-Type": "application/json",
                               "Authorization": "Bearer inj3ct"})
            r = c.getresponse()
            return r.status, r.read().decode()
        finally:
            c.close()

    def test_http(self):
        before = self.stored()
        for field, value, why in self.BAD:
            st, body = self.http_inject(**{field: value})
            self.assertEqual(st, 400, (field, value, body))
            self.assertIn(field, body)
        # a virtual MTA the configuration does not know
        st, body = self.http_inject(vmta="unknown-vmta", pipe="bulk")
        self.assertEqual(st, 400, body)
        self.assertIn("vmta", body)
        self.assertEqual(self.stored(), before)
        st, body = self.http_inject(vmta="known", pipe="bulk")
        self.assertEqual(st, 200, body)
        self.assertEqual(self.stored(), before + 1)

    def smtp(self):
        c = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        self.addCleanup(c.close)
        c.ehlo("client.test")
        return c

    def test_smtp_fields(self):
        before = self.stored()
        s = self.smtp()
        for header, why in ((b"X-Job: " + b"j" * 201, b"job_id"),
                            (b"X-Virtual-MTA: unknown-vmta", b"X-Virtual-MTA")):
            with self.assertRaises(smtplib.SMTPDataError) as e:
                s.sendmail("s@sender.test", ["r@example.test"], header + b"\r\n\r\nx\r\n")
            self.assertEqual(e.exception.smtp_code, 554)
            self.assertIn(why, e.exception.smtp_error)
        self.assertEqual(self.stored(), before)
        s.sendmail("s@sender.test", ["r@example.test"], b"X-Virtual-MTA: known\r\n\r\nx\r\n")
        self.assertEqual(self.stored(), before + 1)

    def test_hop_count_limit(self):
        before = self.stored()
        s = self.smtp()
        with self.assertRaises(smtplib.SMTPDataError) as e:
            s.sendmail("s@sender.test", ["r@example.test"], hops(10) + b"Subject: loop\r\n\r\nx\r\n")
        self.assertEqual(e.exception.smtp_code, 554)
        self.assertIn(b"5.4.6", e.exception.smtp_error)
        self.assertEqual(self.stored(), before)
        # folded Received fields count once each
        s.sendmail("s@sender.test", ["r@example.test"],
                   hops(9).replace(b" by", b"\r\n by") + b"Subject: ok\r\n\r\nx\r\n")
        self.assertEqual(self.stored(), before + 1)
        # HTTP: a raw message carrying its Received fields
        st, body = self.http_inject(content=(hops(50) + b"Subject: loop\r\n\r\nx\r\n").decode())
        self.assertEqual(st, 400, body)
        self.assertIn("hops", body)
        st, body = self.http_inject(content=(hops(3) + b"Subject: ok\r\n\r\nx\r\n").decode())
        self.assertEqual(st, 200, body)
        self.assertEqual(self.stored(), before + 2)

    def test_rcpt_refuses_what_sql_refuses(self):
        s = self.smtp()
        s.mail("s@sender.test")
        for rcpt in ("r@ex_ample.test", "r@-example.test", "r@example-.test", "r@[300.1.1.1]",
                     "r@[IPv6:1:2:3]", "r@[example.test]"):
            code, msg = s.rcpt(rcpt)
            self.assertIn(code, (501, 553), (rcpt, msg))
            # and SQL agrees
            code, _ = self.sql_error("SELECT mta.enqueue('s@sender.test', ARRAY[%s], "
                                     "'Subject: x\r\n\r\nx\r\n'::bytea)", (rcpt,))
            self.assertEqual(code, "22023", rcpt)
        self.assertEqual(s.rcpt("r@[127.0.0.1]")[0], 250)
        self.assertEqual(s.rcpt("r@[IPv6:2001:db8::1]")[0], 250)


def san_cert(d, san):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=mx.test", "-addext", "subjectAltName=" + san, "-days", "1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


class SniRecorder:
    """A minimal STARTTLS server that records the SNI name of the handshake
    (None when the client sends none)."""

    def __init__(self, cert, key):
        self.names = []
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.sni_callback = lambda sock, name, ctx: self.names.append(name)
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.srv.accept()
            conn.settimeout(10)
            f = conn.makefile("rb")
            conn.sendall(b"220 sni.test ESMTP\r\n")
            f.readline()
            conn.sendall(b"250-sni.test\r\n250 STARTTLS\r\n")
            f.readline()
            conn.sendall(b"220 go\r\n")
            t = self.ctx.wrap_socket(conn, server_side=True)
            t.sendall(b"421 bye\r\n")
            t.close()
        except (OSError, ssl.SSLError):
            pass

    def close(self):
        self.thread.join(15)
        self.srv.close()


class TlsToAddressLiterals(unittest.TestCase):
    """The SMTP client's TLS to an address literal: the certificate's IP
    SAN is checked, no SNI is sent; an empty host name is checked against
    the address connected to, never skipped."""

    @classmethod
    def setUpClass(cls):
        cls.ip_cert, cls.ip_key = san_cert(tmpdir(), "DNS:mx.test,IP:127.0.0.1")
        cls.dns_cert, cls.dns_key = san_cert(tmpdir(), "DNS:mx.test")

    def send(self, sink, cert, name):
        args = ["--host", "127.0.0.1:%d" % sink.port]
        if name is not None:
            args += ["--name", name]
        return smtp_send(args + ["--from", "s@a.test", "--to", "r@b.test", "--starttls",
                                 "--tls-verify", "--ca", cert, "--timeout-ms", "5000"])

    def outcome(self, cert, key, name):
        with Sink(tls_cert=cert, tls_key=key) as sink:
            r = self.send(sink, cert, name)
            return r.rcpt("r@b.test")["outcome"], r

    def test_ip_san_checked(self):
        for name in ("127.0.0.1", "[127.0.0.1]", None):
            out, r = self.outcome(self.ip_cert, self.ip_key, name)
            self.assertEqual(out, "delivered", (name, r))
            out, r = self.outcome(self.dns_cert, self.dns_key, name)
            self.assertEqual(out, "transient", (name, r))
        # a name still matches the DNS SAN
        out, r = self.outcome(self.dns_cert, self.dns_key, "mx.test")
        self.assertEqual(out, "delivered", r)

    def test_no_sni_for_literals(self):
        for name, want in (("127.0.0.1", None), ("[127.0.0.1]", None), (None, None),
                           ("mx.test", "mx.test")):
            rec = SniRecorder(self.ip_cert, self.ip_key)
            try:
                args = ["--host", "127.0.0.1:%d" % rec.port]
                if name is not None:
                    args += ["--name", name]
                smtp_send(args + ["--from", "s@a.test", "--to", "r@b.test", "--starttls",
                                  "--timeout-ms", "5000"])
            finally:
                rec.close()
            self.assertEqual(rec.names, [want], name)


class MonitorRole(unittest.TestCase):
    def test_monitor_reads_views_and_acct_only(self):
        pg = PgServer()
        dsn = pg.role_dsn("mta_monitor")
        for rel in ("mta.queues", "mta.connections", "mta.nodes", "mta.jobs", "mta.acct"):
            r = pg.psql("SELECT count(*) FROM %s" % rel, dsn=dsn, check=False)
            self.assertEqual(r.returncode, 0, (rel, r.stderr))
        for rel in ("mta.messages", "mta.recipients"):
            r = pg.psql("SELECT count(*) FROM %s" % rel, dsn=dsn, check=False)
            self.assertNotEqual(r.returncode, 0, rel)
            self.assertIn("permission denied", r.stderr)


    def test_pause_queue_refuses_invalid_domains(self):
        pg = PgServer()
        before = pg.scalar("SELECT count(*) FROM mta.queue")
        for bad in ("bad_domain.test", "-x.test", "a..b", "", "x.test\n", "a b.test",
                    "[300.0.0.1]"):
            r = pg.psql("SELECT mta.pause_queue(%s)" % pg.scalar("SELECT quote_literal(%s)",
                                                                 (bad,)), check=False)
            self.assertNotEqual(r.returncode, 0, bad)
            self.assertIn("invalid domain", r.stderr, bad)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.queue"), before)
        pg.query("SELECT mta.pause_queue('Good.Example')")
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.queue WHERE domain = 'good.example' "
                                   "AND paused"),
                         pg.scalar("SELECT count(*) FROM mta.pipes"))


class TlsKeyMode(unittest.TestCase):
    def test_listener_refuses_key_readable_by_others(self):
        pg = PgServer()
        d = tmpdir()
        cert, key = make_cert(d, cn="mx.pgmta.test")
        os.chmod(key, 0o644)
        port = free_port()
        node = Pgmtad(pg, extra='listen = { smtp = [ "127.0.0.1:%d" ]; };\n'
                                'smtp-listener = { tls-cert = "%s"; tls-key = "%s"; };\n'
                                % (port, cert, key))
        try:
            wait_for(lambda: "accessible by others" in node.log(), timeout=20,
                     what="the refusal of the key")
            self.assertIn("%s: smtp-listener.tls-key is accessible by others (mode 0644)" % key,
                          node.log())
            with self.assertRaises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        finally:
            node.stop()


def own_ipv4_addresses():
    """The machine's IPv4 interface addresses other than loopback."""
    import fcntl
    import struct
    out = []
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915,  # SIOCGIFADDR
                                  struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        ip = socket.inet_ntoa(raw[20:24])
        if not ip.startswith("127."):
            out.append(ip)
    return out


class WildcardListenerLoop(unittest.TestCase):
    """An MX that points at this machine while the node listens on 0.0.0.0
    (or ::) loops back: bounce 5.4.6, by loopback and by the machine's own
    interface addresses."""

    def test_mx_to_own_address_with_wildcard_listener(self):
        from dnsserver import DnsServer
        pg = PgServer()
        self.addCleanup(pg.stop)
        dns = DnsServer()
        own = own_ipv4_addresses()
        # the machine's own non-loopback address when it has one (the case
        # the loopback rule does not cover), and a loopback one
        targets = {"self-own.test": own[0] if own else "127.0.0.45",
                   "self-lo.test": "127.0.0.46"}
        for dom, ip in targets.items():
            dns.add_mx(dom, 10, "mx." + dom)
            dns.add_a("mx." + dom, ip)
        for listen in ("0.0.0.0", "::"):
            port = free_port(listen)
            node = Pgmtad(pg, dns, name="wild-" + ("v4" if listen == "0.0.0.0" else "v6"),
                          extra='smtp-port = %d; listen = { smtp = [ "%s:%d" ]; };'
                          % (port, listen if listen == "0.0.0.0" else "[::]", port))
            try:
                rcpts = ["%s@%s" % (listen.replace(":", "x").replace(".", "z") or "a", d)
                         for d in targets]
                for r in rcpts:
                    pg.query("SELECT mta.enqueue('', ARRAY[%s], %s)",
                             (r, "Subject: loop\r\n\r\nx\r\n"))
                wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.acct WHERE rcpt = ANY(%s) "
                                           "AND type IN ('d', 'b')", (rcpts,)) == len(rcpts),
                         timeout=60, what="both loops bounced (%s)" % listen)
                rows = pg.query("SELECT rcpt, type, dsn_status, dsn_diag FROM mta.acct "
                                "WHERE rcpt = ANY(%s) AND type IN ('d', 'b') ORDER BY rcpt",
                                (rcpts,))
                for rcpt, typ, status, diag in rows:
                    self.assertEqual((typ, status), ("b", "5.4.6"), (listen, rcpt, diag))
                    self.assertIn("loops back to myself", diag)
            finally:
                node.stop()


if __name__ == "__main__":
    unittest.main()
