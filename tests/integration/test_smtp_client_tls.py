"""smtp_client STARTTLS: opportunistic TLS 1.3 with a test certificate made
at run time (openssl CLI), capabilities re-read after TLS, require-starttls
never sending in clear, STARTTLS response injection (CVE-2011-0411 class),
certificate verification against the MX host name, clear-text retry after a
failed opportunistic handshake."""
import os
import subprocess
import unittest

import pgmta_test
from pgmta_test import tmpdir
from sink import Raw, Sink, smtp_send


def make_cert(d, cn="mx.test"):
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj",
                    "/CN=" + cn, "-addext", "subjectAltName=DNS:" + cn, "-days", "1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return cert, key


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tmpdir()
        cls.cert, cls.key = make_cert(cls.dir)

    def send(self, sink, *extra, to="r@b.test"):
        return smtp_send(["--host", "127.0.0.1:%d" % sink.port, "--name", "mx.test",
                          "--from", "s@a.test", "--to", to, "--timeout-ms", "5000"] + list(extra))

    def verbs(self, session):
        return [c.split(" ")[0].upper() for c in session.commands]

    def test_opportunistic_starttls(self):
        with Sink(tls_cert=self.cert, tls_key=self.key) as sink:
            r = self.send(sink, "--starttls")
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(r.conns[0]["tls"], "TLSv1.3")
            self.assertNotEqual(r.conns[0]["cipher"], "none")
            s = sink.sessions()[0]
            self.assertTrue(s.tls)
            self.assertEqual(s.tls_version, "TLSv1.3")
            self.assertEqual(r.conns[0]["cipher"], s.tls_cipher)
            self.assertEqual(self.verbs(s)[:4], ["EHLO", "STARTTLS", "EHLO", "MAIL"])
            self.assertEqual(len(sink.messages()), 1)

    def test_no_starttls_when_disabled(self):
        with Sink(tls_cert=self.cert, tls_key=self.key) as sink:
            r = self.send(sink)
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(r.conns[0]["tls"], "none")
            self.assertNotIn("STARTTLS", self.verbs(sink.sessions()[0]))

    def test_capabilities_reread_after_tls(self):
        # Before TLS the server claims a tiny SIZE; after TLS it has no limit.
        # A client trusting pre-TLS capabilities would refuse the message.
        def behaviour(sess, event, subject):
            if event == "ehlo" and not sess.tls:
                return "250-sink.test\n250-SIZE 10\n250 STARTTLS"
            return None
        with Sink(tls_cert=self.cert, tls_key=self.key, behaviour=behaviour) as sink:
            r = self.send(sink, "--starttls")
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(len(sink.messages()), 1)

    def test_require_tls_not_offered(self):
        with Sink() as sink:
            r = self.send(sink, "--require-tls")
            res = r.rcpt("r@b.test")
            self.assertEqual(res["outcome"], "transient", r)
            self.assertTrue(res["status"].startswith("4.7."), r)
            self.assertIn("TLS required", res["reply"])
            self.assertEqual(len(sink.sessions()), 1)
            self.assertNotIn("MAIL", self.verbs(sink.sessions()[0]))
            self.assertEqual(sink.messages(), [])

    def test_require_tls_next_host_offers_it(self):
        with Sink() as plain, Sink(tls_cert=self.cert, tls_key=self.key) as secure:
            r = smtp_send(["--host", "127.0.0.1:%d" % plain.port, "--host",
                           "127.0.0.1:%d" % secure.port, "--require-tls", "--from", "s@a.test",
                           "--to", "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(r.conns[0]["tls"], "TLSv1.3")
            self.assertEqual(plain.messages(), [])
            self.assertEqual(len(secure.messages()), 1)

    def test_starttls_injection(self):
        rules = {"starttls": Raw(b"220 2.0.0 ready\r\n250 2.1.0 injected\r\n")}
        with Sink(tls_cert=self.cert, tls_key=self.key, rules=rules) as sink:
            r = self.send(sink, "--require-tls")
            res = r.rcpt("r@b.test")
            self.assertEqual(res["outcome"], "transient", r)
            self.assertIn("after the 220", res["reply"])
            self.assertEqual([v for s in sink.sessions() for v in self.verbs(s) if v == "MAIL"],
                             [])

    def test_verify_ok(self):
        with Sink(tls_cert=self.cert, tls_key=self.key) as sink:
            r = self.send(sink, "--starttls", "--tls-verify", "--ca", self.cert)
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(r.conns[0]["tls"], "TLSv1.3")

    def test_verify_wrong_name(self):
        with Sink(tls_cert=self.cert, tls_key=self.key) as sink:
            r = smtp_send(["--host", "127.0.0.1:%d" % sink.port, "--name", "other.test",
                           "--from", "s@a.test", "--to", "r@b.test", "--starttls",
                           "--tls-verify", "--ca", self.cert])
            res = r.rcpt("r@b.test")
            self.assertEqual(res["outcome"], "transient", r)
            self.assertEqual(res["status"], "4.7.10")
            self.assertIn("verif", res["reply"])
            self.assertEqual(sink.messages(), [])
            self.assertEqual(len(sink.sessions()), 1, "no clear-text retry when verifying")

    def test_verify_unknown_ca(self):
        other = tmpdir()
        other_cert, _ = make_cert(other)
        with Sink(tls_cert=self.cert, tls_key=self.key) as sink:
            r = self.send(sink, "--starttls", "--tls-verify", "--ca", other_cert)
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "transient", r)
            self.assertEqual(sink.messages(), [])

    def test_opportunistic_handshake_failure_retries_in_clear(self):
        # The server says 220 to STARTTLS and hangs up: the handshake fails.
        # Opportunistic TLS reconnects once to the same address in clear text.
        rules = {"starttls": Raw(b"220 2.0.0 ready\r\n", close=True)}
        with Sink(tls_cert=self.cert, tls_key=self.key, rules=rules) as sink:
            r = self.send(sink, "--starttls")
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(r.conns[0]["tls"], "none")
            sessions = sink.sessions()
            self.assertEqual(len(sessions), 2)
            self.assertIn("STARTTLS", self.verbs(sessions[0]))
            self.assertNotIn("STARTTLS", self.verbs(sessions[1]))

    def test_starttls_refused_opportunistic(self):
        rules = {"starttls": "454 4.7.0 TLS not available"}
        with Sink(tls_cert=self.cert, tls_key=self.key, rules=rules) as sink:
            r = self.send(sink, "--starttls")
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(r.conns[0]["tls"], "none")
            self.assertEqual(self.verbs(sink.sessions()[0])[:3], ["EHLO", "STARTTLS", "MAIL"])
        with Sink(tls_cert=self.cert, tls_key=self.key, rules=rules) as sink:
            r = self.send(sink, "--require-tls")
            res = r.rcpt("r@b.test")
            self.assertEqual((res["outcome"], res["status"]), ("transient", "4.7.10"), r)
            self.assertEqual(sink.messages(), [])

    def test_required_handshake_failure(self):
        rules = {"starttls": Raw(b"220 2.0.0 ready\r\n", close=True)}
        with Sink(tls_cert=self.cert, tls_key=self.key, rules=rules) as sink:
            r = self.send(sink, "--require-tls")
            res = r.rcpt("r@b.test")
            self.assertEqual((res["outcome"], res["status"]), ("transient", "4.7.10"), r)
            self.assertEqual(len(sink.sessions()), 1)
            self.assertEqual(sink.messages(), [])

    def test_tls_many_messages_one_connection(self):
        d = tmpdir()
        args = []
        for i in range(5):
            p = os.path.join(d, "m%d" % i)
            with open(p, "wb") as f:
                f.write(b"Subject: %d\r\n\r\n.%s\r\n" % (i, b"z" * 5000 * i))
            args += ["--to", "r%d@b.test" % i, "--msg", p]
        with Sink(tls_cert=self.cert, tls_key=self.key) as sink:
            r = smtp_send(["--host", "127.0.0.1:%d" % sink.port, "--from", "s@a.test",
                           "--starttls", "--batches", "2"] + args)
            self.assertEqual(len(r.results), 10, r)
            self.assertTrue(all(x["outcome"] == "delivered" for x in r.results), r)
            self.assertEqual(len(sink.sessions()), 1)
            self.assertEqual(len(sink.messages()), 10)
            self.assertEqual(sink.messages()[4].content, b"Subject: 4\r\n\r\n." + b"z" * 20000
                             + b"\r\n")


if __name__ == "__main__":
    pgmta_test.main()
