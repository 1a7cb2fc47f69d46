"""MTA-STS (RFC 8461) against real components: a test CA made with the
openssl CLI, an HTTPS server (Python's http.server over ssl, 127.0.0.1:443)
serving policies per Host header, the test DNS serving _mta-sts TXT, MX and
A records, and STARTTLS sinks. enforce with a good certificate delivers and
records the policy in mta.acct; enforce with an MX outside the policy or a
self-signed certificate defers (4.7.5, nothing sent, "MTA-STS:" in
mta.queues); testing delivers and records the failure (untrusted issuer,
host name mismatch); an invalid policy is an error recorded; a failed fetch
keeps the cached policy; a policy cached by one node serves another without
a fetch, and one node fetches at a time; mta-sts = false looks nothing up.
The policy and the MX lookup run in parallel: an MX answer that comes
first waits for the policy and is filtered by it, and a node stopped while
both are due frees its session cleanly (sanitizer build)."""
import http.server
import os
import ssl
import subprocess
import threading
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, free_port, main, tmpdir, wait_for
from sink import Sink

BODY = "Subject: mta-sts test\r\n\r\nhello\r\n"
GOOD_MX_IP, SELF_MX_IP, OTHER_MX_IP = "127.0.0.40", "127.0.0.41", "127.0.0.42"
EXPIRED_MX_IP = "127.0.0.43"


def policy(mode, *mx, max_age=86400):
    return "version: STSv1\r\nmode: %s\r\n%smax_age: %d\r\n" % (
        mode, "".join("mx: %s\r\n" % m for m in mx), max_age)


# Host name -> (status, body) served at /.well-known/mta-sts.txt
POLICIES = {
    "good.test": (200, policy("enforce", "*.good.test")),
    "mismatch.test": (200, policy("enforce", "mx.mismatch.test")),
    "selfsigned.test": (200, policy("enforce", "mx.selfsigned.test")),
    "testing.test": (200, policy("testing", "mx.testing.test")),
    "wrongname.test": (200, policy("testing", "mx.wrongname.test")),
    "expired.test": (200, policy("testing", "mx.expired.test")),
    "invalid.test": (200, "version: STSv1\r\nmode: enforce\r\nmx: mx.invalid.test\r\n"),
    "cached.test": (404, "gone\n"),
    "shared.test": (200, policy("enforce", "mx.shared.test")),
    "off.test": (200, policy("enforce", "mx.nowhere.test")),
    # answered only once the node has resolved the MX hosts (parallel lookups)
    "slow.test": (200, policy("enforce", "mx2.slow.test")),
    # answered only when the test lets it (a node stopped meanwhile)
    "hang.test": (200, policy("enforce", "mx.hang.test")),
}
RELEASE_HANG = threading.Event()


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True)


def make_ca(d, cn="pgmta test CA"):
    """A test CA in D, valid for two days: (cert, key)."""
    ca, ca_key = os.path.join(d, "ca.pem"), os.path.join(d, "ca.key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-subj", "/CN=" + cn, "-days", "2", "-keyout", ca_key,
            "-out", ca, "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return ca, ca_key


def make_ca_cert(d, ca, ca_key, name, sans, days=2):
    """A certificate for SANS signed by the test CA: (cert, key); days < 0:
    one that expired (notAfter before notBefore, now)."""
    key, csr, cert, ext = (os.path.join(d, name + s) for s in (".key", ".csr", ".pem", ".ext"))
    with open(ext, "w") as f:
        f.write("subjectAltName=%s\n" % ",".join("DNS:" + s for s in sans))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=" + sans[0], "-keyout", key, "-out", csr)
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-days", str(days), "-out", cert, "-extfile", ext)
    return cert, key


class PolicyHandler(http.server.BaseHTTPRequestHandler):
    """Serves policies[domain] for Host mta-sts.<domain> and counts the
    requests per Host; a subclass may serve a table of its own."""
    policies = POLICIES
    counts = {}
    lock = threading.Lock()
    dns = None
    slow_saw_mx = None  # slow.test: the MX host was resolved before the policy was served

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        domain = host[len("mta-sts."):] if host.startswith("mta-sts.") else ""
        with self.lock:
            self.counts[host] = self.counts.get(host, 0) + 1
        if domain == "slow.test":
            # a serial lookup would ask for the MX hosts only after this answer
            deadline = time.monotonic() + 5
            while not self.dns.queries("mx2.slow.test", "A") and time.monotonic() < deadline:
                time.sleep(0.05)
            PolicyHandler.slow_saw_mx = self.dns.queries("mx2.slow.test", "A") >= 1
            time.sleep(0.3)  # the MX answer has come: it waits for this one
        if domain == "hang.test":
            RELEASE_HANG.wait(20)
        status, body = self.policies.get(domain, (404, "no such policy\n"))
        if self.path != "/.well-known/mta-sts.txt":
            status, body = 404, "not here\n"
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def fetches(domain):
    with PolicyHandler.lock:
        return PolicyHandler.counts.get("mta-sts." + domain, 0)


class MtaSts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        d = tmpdir()
        ca, ca_key = make_ca(d)
        web_cert, web_key = make_ca_cert(d, ca, ca_key, "web",
                                         ["mta-sts." + dom for dom in POLICIES])
        mx_cert, mx_key = make_ca_cert(d, ca, ca_key, "mx",
                                       ["mx1.good.test", "mx.shared.test", "mx.cached.test",
                                        "mx.invalid.test", "mx.off.test", "mx.other.test",
                                        "mx2.slow.test"])
        expired_cert, expired_key = make_ca_cert(d, ca, ca_key, "expired", ["mx.expired.test"],
                                                 days=-1)
        self_cert, self_key = os.path.join(d, "self.pem"), os.path.join(d, "self.key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-subj", "/CN=mx.selfsigned.test", "-days", "2",
                "-addext", "subjectAltName=DNS:mx.selfsigned.test,DNS:mx.testing.test",
                "-keyout", self_key, "-out", self_cert)

        cls.web = http.server.ThreadingHTTPServer(("127.0.0.1", 443), PolicyHandler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(web_cert, web_key)
        cls.web.socket = ctx.wrap_socket(cls.web.socket, server_side=True)
        threading.Thread(target=cls.web.serve_forever, daemon=True).start()

        cls.pg = PgServer()
        cls.dns = DnsServer()
        port = free_port(GOOD_MX_IP)
        cls.good = Sink(host=GOOD_MX_IP, port=port, tls_cert=mx_cert, tls_key=mx_key)
        cls.selfsigned = Sink(host=SELF_MX_IP, port=port, tls_cert=self_cert, tls_key=self_key)
        cls.other = Sink(host=OTHER_MX_IP, port=port, tls_cert=mx_cert, tls_key=mx_key)
        cls.expired = Sink(host=EXPIRED_MX_IP, port=port, tls_cert=expired_cert,
                           tls_key=expired_key)
        dns = cls.dns
        PolicyHandler.dns = dns
        for dom in POLICIES:
            dns.add_txt("_mta-sts." + dom, "v=STSv1; id=20261203;")
            dns.add_a("mta-sts." + dom, "127.0.0.1")
        # cached.test announces a new id: the node must try to fetch
        dns.remove("_mta-sts.cached.test")
        dns.add_txt("_mta-sts.cached.test", "v=STSv1; id=new1;")
        for dom, mx, ip in [("good.test", "mx1.good.test", GOOD_MX_IP),
                            ("mismatch.test", "mx.other.test", OTHER_MX_IP),
                            ("selfsigned.test", "mx.selfsigned.test", SELF_MX_IP),
                            ("testing.test", "mx.testing.test", SELF_MX_IP),
                            ("wrongname.test", "mx.wrongname.test", GOOD_MX_IP),
                            ("expired.test", "mx.expired.test", EXPIRED_MX_IP),
                            ("invalid.test", "mx.invalid.test", GOOD_MX_IP),
                            ("cached.test", "mx.cached.test", GOOD_MX_IP),
                            ("shared.test", "mx.shared.test", GOOD_MX_IP),
                            ("off.test", "mx.off.test", GOOD_MX_IP),
                            ("slow.test", "mx.slow.test", OTHER_MX_IP)]:
            dns.add_mx(dom, 10, mx)
            dns.add_a(mx, ip)
        # slow.test's best MX is outside its policy: only mx2 may be used
        dns.add_mx("slow.test", 20, "mx2.slow.test")
        dns.add_a("mx2.slow.test", GOOD_MX_IP)
        # hang.test: neither its MX hosts nor its policy answer while node C runs
        dns.timeout("hang.test")
        # A policy cached by an earlier fetch that the failing one must not
        # replace: enforce, with an MX pattern that excludes mx.cached.test.
        cls.pg.query("INSERT INTO mta.mta_sts (domain, txt_id, mode, mx, max_age, fetched_at, "
                     "expires_at) VALUES ('cached.test', 'old1', 'enforce', "
                     "ARRAY['mx.elsewhere.test'], 86400, now(), now() + interval '1 day')")
        for dom in POLICIES:
            if dom != "hang.test":
                cls.pg.query("SELECT mta.enqueue(%s, ARRAY[%s], %s)",
                             ("s@sender.test", "a@" + dom, BODY))
        conf = dict(extra='smtp-port = %d; tls-ca-file = "%s";' % (port, ca),
                    domains=['{ name = "off.test"; mta-sts = false; }'])
        cls.node_a = Pgmtad(cls.pg, cls.dns, name="node-a", **conf)
        deferred = ("mismatch.test", "selfsigned.test", "cached.test")
        wait_for(lambda: cls.pg.scalar(
            "SELECT count(DISTINCT rcpt) FROM mta.acct WHERE (type = 'd' AND rcpt <> ALL(%s)) "
            "OR (type = 't' AND rcpt = ANY(%s))",
            (["a@" + x for x in deferred], ["a@" + x for x in deferred])) == len(POLICIES) - 1,
            timeout=30, what="a first outcome for every domain")
        cls.node_a.stop()
        # node B: a second message to shared.test, the policy from the database
        cls.fetches_before_b = fetches("shared.test")
        cls.pg.query("SELECT mta.enqueue(%s, ARRAY[%s], %s)", ("s@sender.test", "b@shared.test",
                                                              BODY))
        cls.node_b = Pgmtad(cls.pg, cls.dns, name="node-b", **conf)
        wait_for(lambda: cls.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' AND "
                                       "rcpt = 'b@shared.test'") == 1,
                 timeout=20, what="node-b's delivery")
        cls.node_b.stop()
        # node C: stopped while a@hang.test's session waits for both its
        # policy and its MX hosts; the shutdown deadline frees the session
        cls.pg.query("SELECT mta.enqueue(%s, ARRAY[%s], %s)", ("s@sender.test", "a@hang.test",
                                                              BODY))
        extra_c = conf["extra"] + ' dns = { servers = [ "%s" ]; timeout = "10s"; }; ' \
            'shutdown-timeout = "1s";' % dns.server_arg
        cls.node_c = Pgmtad(cls.pg, cls.dns, name="node-c", extra=extra_c,
                            domains=conf["domains"])
        wait_for(lambda: fetches("hang.test") >= 1 and dns.queries("hang.test", "MX") >= 1,
                 timeout=20, what="hang.test's policy fetch and MX lookup")
        try:
            cls.node_c.stop()  # fails on a sanitizer report
        finally:
            RELEASE_HANG.set()

    @classmethod
    def tearDownClass(cls):
        RELEASE_HANG.set()
        for s in (cls.good, cls.selfsigned, cls.other, cls.expired):
            s.stop()
        cls.web.shutdown()
        cls.web.server_close()

    def first(self, rcpt):
        return self.pg.query("SELECT type, dsn_status, dsn_diag, tls_policy, tls_failure, "
                             "tls_policy_domain, tls_protocol, node FROM mta.acct "
                             "WHERE rcpt = %s AND type <> 'r' ORDER BY time_logged LIMIT 1",
                             (rcpt,))[0]

    def sent_mail(self, sink, rcpt):
        return any(rcpt in m.rcpts for m in sink.messages())

    def test_enforce_good_certificate_delivered(self):
        row = self.first("a@good.test")
        self.assertEqual(row[0], "d", row)
        self.assertEqual(row[3:6], ("sts", None, "good.test"))
        self.assertEqual(row[6], "TLSv1.3")
        self.assertTrue(self.sent_mail(self.good, "a@good.test"))
        self.assertEqual(self.pg.query("SELECT mode, mx, txt_id FROM mta.mta_sts "
                                       "WHERE domain = 'good.test'"),
                         [("enforce", ["*.good.test"], "20261203")])

    def test_enforce_mx_not_in_policy_deferred_not_connected(self):
        row = self.first("a@mismatch.test")
        self.assertEqual(row[0:2], ("t", "4.7.5"), row)
        self.assertTrue(row[2].startswith("MTA-STS:"), row)
        self.assertEqual(row[3:6], ("sts", "validation-failure", "mismatch.test"))
        self.assertEqual(self.other.sessions(), [])
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipients "
                                        "WHERE rcpt = 'a@mismatch.test'"), 1)
        err = self.pg.scalar("SELECT last_error FROM mta.queues WHERE domain = 'mismatch.test'")
        self.assertTrue(err and err.startswith("MTA-STS:"), err)

    def test_enforce_self_signed_deferred_nothing_in_clear(self):
        row = self.first("a@selfsigned.test")
        self.assertEqual(row[0:2], ("t", "4.7.5"), row)
        self.assertIn("MTA-STS:", row[2])
        self.assertEqual(row[3:5], ("sts", "certificate-not-trusted"))
        cmds = [c for _, c in self.selfsigned.commands()]
        self.assertFalse([c for c in cmds if "selfsigned.test" in c.lower()], cmds)
        self.assertFalse([m for m in self.selfsigned.messages()
                          if "a@selfsigned.test" in m.rcpts])

    def test_testing_mode_delivers_and_records_failure(self):
        row = self.first("a@testing.test")
        self.assertEqual(row[0], "d", row)
        self.assertEqual(row[3:6], ("sts", "certificate-not-trusted", "testing.test"))
        self.assertTrue(self.sent_mail(self.selfsigned, "a@testing.test"))

    def test_testing_mode_records_host_mismatch(self):
        # a certificate from the trusted CA, but not for this MX name
        row = self.first("a@wrongname.test")
        self.assertEqual(row[0], "d", row)
        self.assertEqual(row[3:5], ("sts", "certificate-host-mismatch"))

    def test_testing_mode_records_expired_certificate(self):
        # X509_V_ERR_CERT_HAS_EXPIRED from a certificate of the trusted CA
        row = self.first("a@expired.test")
        self.assertEqual(row[0], "d", row)
        self.assertEqual(row[3:6], ("sts", "certificate-expired", "expired.test"))
        self.assertTrue(self.sent_mail(self.expired, "a@expired.test"))

    def test_invalid_policy_is_an_error(self):
        row = self.first("a@invalid.test")
        self.assertEqual(row[0], "d", row)
        self.assertEqual(row[3:5], ("no-policy-found", "sts-policy-invalid"))
        err = self.pg.scalar("SELECT last_error FROM mta.mta_sts WHERE domain = 'invalid.test'")
        self.assertIn("max_age", err)

    def test_fetch_fails_cached_policy_applies(self):
        self.assertGreaterEqual(fetches("cached.test"), 1)
        row = self.first("a@cached.test")
        self.assertEqual(row[0:2], ("t", "4.7.5"), row)
        self.assertEqual(row[3], "sts")
        self.assertEqual(self.pg.query("SELECT txt_id, mx FROM mta.mta_sts "
                                       "WHERE domain = 'cached.test'"),
                         [("old1", ["mx.elsewhere.test"])])
        err = self.pg.scalar("SELECT last_error FROM mta.mta_sts WHERE domain = 'cached.test'")
        self.assertIn("HTTP 404", err)
        self.assertFalse(self.sent_mail(self.good, "a@cached.test"))

    def test_policy_cached_by_node_a_used_by_node_b(self):
        self.assertEqual(self.fetches_before_b, 1)
        self.assertEqual(fetches("shared.test"), 1)
        row = self.first("b@shared.test")
        self.assertEqual((row[0], row[3]), ("d", "sts"))
        self.assertTrue(row[7].startswith("node-b"), row)
        self.assertTrue(self.first("a@shared.test")[7].startswith("node-a"))

    def test_one_node_fetches_at_a_time(self):
        # a valid policy whose TXT id changed: the first node to ask fetches,
        # another node asking meanwhile uses the cached policy
        self.pg.query("INSERT INTO mta.mta_sts (domain, txt_id, mode, mx, max_age, fetched_at, "
                      "expires_at) VALUES ('race.test', 'a1', 'testing', ARRAY['mx.race.test'], "
                      "600, now(), now() + interval '10 minutes')")
        get = "SELECT mode, mx, do_fetch FROM mta.mta_sts_get('race.test', %s, %s)"
        self.assertEqual(self.pg.query(get, ("a1", "n1")), [("testing", "mx.race.test", False)])
        self.assertEqual(self.pg.query(get, ("b2", "n1")), [("testing", "mx.race.test", True)])
        self.assertEqual(self.pg.query(get, ("b2", "n2")), [("testing", "mx.race.test", False)])
        # no TXT record: the cached policy, no fetch
        self.assertEqual(self.pg.query(get, (None, "n2")), [("testing", "mx.race.test", False)])
        self.pg.query("SELECT mta.mta_sts_put('race.test', 'n1', 'b2', 'enforce', "
                      "ARRAY['mx.race.test'], 600)")
        self.assertEqual(self.pg.query(get, ("b2", "n2")), [("enforce", "mx.race.test", False)])
        # expired: nothing to use, every node that asks fetches
        self.pg.query("UPDATE mta.mta_sts SET expires_at = now() - interval '1 s' "
                      "WHERE domain = 'race.test'")
        self.assertEqual(self.pg.query(get, ("b2", "n1")), [(None, None, True)])
        self.assertEqual(self.pg.query(get, ("b2", "n2")), [(None, None, True)])

    def test_mx_answer_first_waits_for_policy_and_is_filtered(self):
        self.assertTrue(PolicyHandler.slow_saw_mx, "no MX lookup during the policy fetch")
        row = self.first("a@slow.test")
        self.assertEqual(row[0], "d", row)
        self.assertEqual(row[3:6], ("sts", None, "slow.test"))
        self.assertTrue(self.sent_mail(self.good, "a@slow.test"))
        self.assertFalse(self.sent_mail(self.other, "a@slow.test"))

    def test_session_freed_with_policy_and_mx_due(self):
        self.assertIn("event=shutdown-deadline", self.node_c.log())
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct "
                                        "WHERE rcpt = 'a@hang.test' AND type <> 'r'"), 0)
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipients "
                                        "WHERE rcpt = 'a@hang.test'"), 1)

    def test_mta_sts_false_looks_nothing_up(self):
        self.assertEqual(self.dns.queries("_mta-sts.off.test", "TXT"), 0)
        self.assertEqual(fetches("off.test"), 0)
        row = self.first("a@off.test")
        self.assertEqual(row[0], "d")
        self.assertEqual(row[3:6], (None, None, None))


if __name__ == "__main__":
    main()
