#!/usr/bin/python3
"""DANE for SMTP (RFC 7672) against real components: nsd serving dane.test,
a zone signed at test time with ldns-keygen and ldns-signzone, and the
unsigned plain.test; Debian's unbound validating with dane.test's DS as
trust anchor (stub to nsd), named by dns.dnssec = true as the node's
trusted resolver; a test CA and STARTTLS sinks. Both servers run on
loopback high ports (as root when the test runs as root: neither needs
privileges). A matching TLSA 3 1 1 delivers (acct tls_policy 'tlsa'); a
mismatching one defers with nothing sent, never falls back to clear text;
an answer without AD (unsigned zone) ignores its TLSA; 2 0 1 of the test CA
matches with the MX host name, and fails for another name; a TLSA record
whose signature fails (bogus, SERVFAIL) defers (dnssec-invalid); records
with unusable usages are plain opportunistic TLS; dane = false looks no
TLSA up; a node whose resolver is not marked dnssec ignores TLSA. Domains
with both DANE and an MTA-STS enforce policy (served over HTTPS by a policy
server on 127.0.0.62:443): an MX host with usable TLSA records is used and
authenticated by DANE though the policy does not list it, and one without
TLSA records is still held to the policy (deferred, nothing sent)."""
import hashlib
import http.server
import os
import ssl
import subprocess
import threading
import unittest

from pgmta_test import PgServer, Pgmtad, free_port, main, tmpdir, wait_for
from sink import Sink
from test_mta_sts import PolicyHandler, make_ca, make_ca_cert, policy

BODY = "Subject: dane test\r\n\r\nhello\r\n"
MX_IP, NOTLS_IP, POLICY_IP = "127.0.0.60", "127.0.0.61", "127.0.0.62"
# MTA-STS policies of the signed zone's domains, neither listing its MX host
STS_POLICIES = {"sts.dane.test": policy("enforce", "mx.elsewhere.test"),
                "stsnotlsa.dane.test": policy("enforce", "mx.elsewhere.test")}


class StsHandler(PolicyHandler):
    policies = {d: (200, body) for d, body in STS_POLICIES.items()}
    counts = {}


def run(*args, cwd=None):
    return subprocess.run(list(args), check=True, capture_output=True, text=True,
                          cwd=cwd).stdout


def openssl(*args):
    run("openssl", *args)


def der(pem, what):
    """DER of a certificate ("cert") or of its SubjectPublicKeyInfo ("spki")."""
    if what == "cert":
        return subprocess.run(["openssl", "x509", "-in", pem, "-outform", "DER"], check=True,
                              capture_output=True).stdout
    pub = subprocess.run(["openssl", "x509", "-in", pem, "-noout", "-pubkey"], check=True,
                         capture_output=True).stdout
    return subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                          check=True, capture_output=True).stdout


class Resolver:
    """nsd (authoritative for the signed dane.test and the unsigned
    plain.test) and unbound validating in front of it."""

    def __init__(self, signed, plain):
        d = self.dir = tmpdir("pgmta-dane-")
        zone = os.path.join(d, "dane.test.zone")
        with open(zone, "w") as f:
            f.write("$ORIGIN dane.test.\n$TTL 300\n"
                    "@ SOA ns1.dane.test. h.dane.test. 1 3600 600 86400 300\n"
                    "@ NS ns1.dane.test.\nns1 A 127.0.0.1\n" + signed)
        with open(os.path.join(d, "plain.test.zone"), "w") as f:
            f.write("$ORIGIN plain.test.\n$TTL 300\n"
                    "@ SOA ns1.plain.test. h.plain.test. 1 3600 600 86400 300\n"
                    "@ NS ns1.plain.test.\nns1 A 127.0.0.1\n" + plain)
        ksk = run("ldns-keygen", "-a", "ECDSAP256SHA256", "-k", "dane.test", cwd=d).strip()
        zsk = run("ldns-keygen", "-a", "ECDSAP256SHA256", "dane.test", cwd=d).strip()
        run("ldns-signzone", "-n", zone, ksk, zsk, cwd=d)
        # a record changed after signing: its RRSIG fails, unbound SERVFAILs
        with open(zone + ".signed") as f:
            text = f.read()
        with open(zone + ".signed", "w") as f:
            f.write(text.replace("11" * 32, "22" * 32))
        self.nsd_port, self.port = free_port(), free_port()
        with open(os.path.join(d, "nsd.conf"), "w") as f:
            f.write('server:\n  ip-address: 127.0.0.1@%d\n  port: %d\n  username: ""\n'
                    '  chroot: ""\n  zonesdir: "%s"\n  database: ""\n  pidfile: "%s/nsd.pid"\n'
                    '  xfrdfile: "%s/xfrd.state"\n  zonelistfile: "%s/zone.list"\n'
                    '  verbosity: 1\nremote-control:\n  control-enable: no\n'
                    'zone:\n  name: dane.test\n  zonefile: dane.test.zone.signed\n'
                    'zone:\n  name: plain.test\n  zonefile: plain.test.zone\n'
                    % (self.nsd_port, self.nsd_port, d, d, d, d))
        with open(os.path.join(d, "unbound.conf"), "w") as f:
            f.write('server:\n  interface: 127.0.0.1@%d\n  port: %d\n  username: ""\n'
                    '  chroot: ""\n  directory: "%s"\n  pidfile: "%s/unbound.pid"\n'
                    '  use-syslog: no\n  do-daemonize: no\n  do-not-query-localhost: no\n'
                    '  access-control: 127.0.0.0/8 allow\n  trust-anchor-file: "%s/%s.ds"\n'
                    '  local-zone: "test." nodefault\n  module-config: "validator iterator"\n'
                    '  domain-insecure: "plain.test"\n'
                    'stub-zone:\n  name: "dane.test"\n  stub-addr: 127.0.0.1@%d\n'
                    'stub-zone:\n  name: "plain.test"\n  stub-addr: 127.0.0.1@%d\n'
                    % (self.port, self.port, d, d, d, ksk, self.nsd_port, self.nsd_port))
        self.nsd = subprocess.Popen(["nsd", "-d", "-c", os.path.join(d, "nsd.conf")], cwd=d,
                                    stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "a"))
        self.unbound = subprocess.Popen(["unbound", "-d", "-c", os.path.join(d, "unbound.conf")], cwd=d,
                                        stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "a"))
        self.server_arg = "127.0.0.1:%d" % self.port
        try:
            wait_for(lambda: "ad" in self.flags("MX", "ee.dane.test"), timeout=10,
                     what="unbound validating dane.test")
        except AssertionError:
            self.stop()
            raise

    def flags(self, qtype, name):
        out = subprocess.run(["drill", "-D", "-p", str(self.port), "@127.0.0.1", qtype, name],
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith(";; flags:"):
                return line.split(";")[2].split()[1:]
        return []

    def stop(self):
        for p in (self.unbound, self.nsd):
            p.terminate()
            p.wait(timeout=10)


class Dane(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        d = tmpdir()
        ca, ca_key = make_ca(d, "pgmta dane test CA")
        key, csr, cert, ext = (os.path.join(d, "mx" + s) for s in (".key", ".csr", ".pem", ".ext"))
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:mx-ta.dane.test\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-subj", "/CN=mx-ta.dane.test", "-keyout", key, "-out", csr)
        openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                "-days", "2", "-out", cert, "-extfile", ext)
        ee = hashlib.sha256(der(cert, "spki")).hexdigest()
        ta = hashlib.sha256(der(ca, "cert")).hexdigest()
        zeros = "00" * 32
        signed = ""
        # host: TLSA records of _25._tcp.<host>
        cls.hosts = {"ee": "3 1 1 " + ee, "bad": "3 1 1 " + zeros, "ta": "2 0 1 " + ta,
                     "off": "3 1 1 " + zeros, "unusable": "1 1 1 " + zeros,
                     "taname": "2 0 1 " + ta, "bogus": "3 1 1 " + "11" * 32}
        for h, tlsa in cls.hosts.items():
            signed += "%s MX 10 mx-%s.dane.test.\nmx-%s A %s\n_25._tcp.mx-%s TLSA %s\n" % (
                h, h, h, MX_IP, h, tlsa)
        signed += "ee2 MX 10 mx-ee.dane.test.\n"  # another domain, the same MX host
        # a matching record, but the host offers no STARTTLS
        signed += "notls MX 10 mx-notls.dane.test.\nmx-notls A %s\n" \
            "_25._tcp.mx-notls TLSA 3 1 1 %s\n" % (NOTLS_IP, ee)
        # DANE and MTA-STS: sts's MX host has the matching TLSA record of
        # mx-ee, stsnotlsa's has none; both policies list other hosts
        signed += "sts MX 10 mx-ee.dane.test.\nstsnotlsa MX 10 mx-none.dane.test.\n" \
            "mx-none A %s\n" % MX_IP
        for dom in STS_POLICIES:
            name = dom[:-len(".dane.test")]
            signed += '_mta-sts.%s TXT "v=STSv1; id=1"\nmta-sts.%s A %s\n' % (
                name, name, POLICY_IP)
        plain = "@ MX 10 mx.plain.test.\nmx A %s\n_25._tcp.mx TLSA 3 1 1 %s\n" % (MX_IP, zeros)
        web_cert, web_key = make_ca_cert(d, ca, ca_key, "policy",
                                         ["mta-sts." + dom for dom in STS_POLICIES])
        cls.web = http.server.ThreadingHTTPServer((POLICY_IP, 443), StsHandler)
        cls.addClassCleanup(cls.web.server_close)
        cls.addClassCleanup(cls.web.shutdown)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(web_cert, web_key)
        cls.web.socket = ctx.wrap_socket(cls.web.socket, server_side=True)
        threading.Thread(target=cls.web.serve_forever, daemon=True).start()
        cls.resolver = Resolver(signed, plain)
        cls.addClassCleanup(cls.resolver.stop)  # also when setUpClass fails
        cls.pg = PgServer()
        port = free_port(MX_IP)
        # the chain with the CA: DANE-TA(2) needs its trust anchor sent
        chain = os.path.join(d, "chain.pem")
        with open(chain, "w") as f:
            f.write(open(cert).read() + open(ca).read())
        cls.sink = Sink(host=MX_IP, port=port, tls_cert=chain, tls_key=key)
        cls.addClassCleanup(cls.sink.stop)
        cls.notls = Sink(host=NOTLS_IP, port=port)
        cls.addClassCleanup(cls.notls.stop)
        cls.domains = [h + ".dane.test" for h in cls.hosts] + ["plain.test", "notls.dane.test"] \
            + list(STS_POLICIES)
        for dom in cls.domains:
            cls.pg.query("SELECT mta.enqueue(%s, ARRAY[%s], %s)",
                         ("s@sender.test", "a@" + dom, BODY))
        extra = 'smtp-port = %d; log-level = "debug"; tls-ca-file = "%s"; ' \
            'dns = { servers = [ "%s" ]; timeout = "5s"; dnssec = true; };' % (
                port, ca, cls.resolver.server_arg)
        cls.node = Pgmtad(cls.pg, None, extra=extra,
                          domains=['{ name = "off.dane.test"; dane = false; }'])
        deferred = ["a@bad.dane.test", "a@taname.dane.test", "a@bogus.dane.test",
                    "a@notls.dane.test", "a@stsnotlsa.dane.test"]
        wait_for(lambda: cls.pg.scalar(
            "SELECT count(DISTINCT rcpt) FROM mta.acct WHERE (type = 'd' AND rcpt <> ALL(%s)) "
            "OR (type = 't' AND rcpt = ANY(%s))", (deferred, deferred)) == len(cls.domains),
            timeout=20, what="a first outcome for every domain")
        # a new session to mx-ee.dane.test: its TLSA answer is cached
        cls.pg.query("SELECT mta.enqueue(%s, ARRAY[%s], %s)", ("s@sender.test", "a@ee2.dane.test",
                                                              BODY))
        wait_for(lambda: cls.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' AND "
                                       "rcpt = 'a@ee2.dane.test'") == 1,
                 timeout=20, what="a@ee2.dane.test delivered")
        cls.node.stop()
        cls.sent_by_a = {r for m in cls.sink.messages() + cls.notls.messages() for r in m.rcpts}
        cls.notls_sessions = cls.notls.sessions()
        # node B's resolver is not marked dnssec: the AD bit is not asked
        # for, TLSA records are not looked up, the deferred ones go
        cls.node_b = Pgmtad(cls.pg, None, name="node-b", extra=extra.replace(
            " dnssec = true;", ""))
        wait_for(lambda: {"a@bad.dane.test", "a@bogus.dane.test"} <=
                 {r for m in cls.sink.messages() for r in m.rcpts}, timeout=20,
                 what="node-b's deliveries")
        cls.node_b.stop()

    def first(self, rcpt):
        return self.pg.query("SELECT type, dsn_status, dsn_diag, tls_policy, tls_failure, "
                             "tls_policy_domain, tls_protocol FROM mta.acct "
                             "WHERE rcpt = %s AND type <> 'r' ORDER BY time_logged LIMIT 1",
                             (rcpt,))[0]

    def sent(self, rcpt):
        return rcpt in self.sent_by_a

    def test_resolver_not_marked_dnssec_ignores_tlsa(self):
        log = self.node_b.log()
        self.assertIn("dns domain=bad.dane.test status=OK hosts=1 dnssec=0", log)
        self.assertNotIn("dane host=", log)
        row = self.pg.query("SELECT tls_policy, tls_protocol FROM mta.acct WHERE type = 'd' "
                            "AND rcpt = 'a@bad.dane.test'")[0]
        self.assertNotEqual(row[0], "tlsa")
        self.assertTrue(row[1])

    def test_resolver_validates_signed_zone_only(self):
        self.assertIn("ad", self.resolver.flags("TLSA", "_25._tcp.mx-ee.dane.test"))
        self.assertNotIn("ad", self.resolver.flags("MX", "plain.test"))
        log = self.node.log()
        self.assertIn("dns domain=ee.dane.test status=OK hosts=1 dnssec=1", log)
        self.assertIn("dns domain=plain.test status=OK hosts=1 dnssec=0", log)

    def test_dane_ee_match_delivered(self):
        row = self.first("a@ee.dane.test")
        self.assertEqual(row[0], "d", row)
        self.assertEqual(row[3:6], ("tlsa", None, "ee.dane.test"), row)
        self.assertTrue(row[6], row)
        self.assertTrue(self.sent("a@ee.dane.test"))

    def test_tlsa_answer_cached(self):
        self.assertEqual(self.first("a@ee2.dane.test")[3], "tlsa")
        self.assertIn("dns query=_25._tcp.mx-ee.dane.test type=TLSA cached=1", self.node.log())

    def test_dane_ee_mismatch_deferred_nothing_sent(self):
        row = self.first("a@bad.dane.test")
        self.assertEqual(row[0], "t", row)
        self.assertEqual(row[1], "4.7.5", row)
        self.assertIn("DANE", row[2])
        self.assertEqual(row[3:6], ("tlsa", "tlsa-invalid", "bad.dane.test"), row)
        self.assertFalse(self.sent("a@bad.dane.test"))
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'b'"), 0)
        # the queue says why it is deferred (mta.queues, the dashboard)
        err = self.pg.scalar("SELECT last_error FROM mta.queues WHERE domain = 'bad.dane.test'")
        self.assertIn("DANE", err or "")

    def test_dane_wins_over_mta_sts(self):
        # the enforce policy was fetched and is in force for the domain ...
        self.assertGreater(StsHandler.counts.get("mta-sts.sts.dane.test", 0), 0)
        self.assertEqual(self.pg.scalar("SELECT mode FROM mta.mta_sts WHERE domain = "
                                        "'sts.dane.test'"), "enforce")
        # ... but its MX host has usable TLSA records: used, though the
        # policy does not list it, and authenticated by DANE
        row = self.first("a@sts.dane.test")
        self.assertEqual(row[0], "d", row)
        self.assertEqual(row[3:6], ("tlsa", None, "sts.dane.test"), row)
        self.assertTrue(self.sent("a@sts.dane.test"))

    def test_mta_sts_holds_without_tlsa(self):
        # the same policy, an MX host without TLSA records: MTA-STS applies
        self.assertGreater(StsHandler.counts.get("mta-sts.stsnotlsa.dane.test", 0), 0)
        row = self.first("a@stsnotlsa.dane.test")
        self.assertEqual(row[0], "t", row)
        self.assertEqual(row[1], "4.7.5", row)
        self.assertIn("MTA-STS", row[2])
        self.assertFalse(self.sent("a@stsnotlsa.dane.test"))

    def test_dane_ta_match_delivered(self):
        row = self.first("a@ta.dane.test")
        self.assertEqual(row[0], "d", row)
        self.assertEqual(row[3], "tlsa", row)
        self.assertTrue(self.sent("a@ta.dane.test"))

    def test_dane_ta_checks_mx_host_name(self):
        # 2 0 1 of the CA, but the certificate names mx-ta, not mx-taname
        row = self.first("a@taname.dane.test")
        self.assertEqual(row[0], "t", row)
        self.assertEqual(row[3:5], ("tlsa", "tlsa-invalid"), row)
        self.assertFalse(self.sent("a@taname.dane.test"))

    def test_bogus_tlsa_deferred(self):
        self.assertIn("SERVFAIL", subprocess.run(
            ["drill", "-p", str(self.resolver.port), "@127.0.0.1", "TLSA",
             "_25._tcp.mx-bogus.dane.test"], capture_output=True, text=True).stdout)
        row = self.first("a@bogus.dane.test")
        self.assertEqual(row[0], "t", row)
        self.assertEqual(row[1], "4.7.5", row)
        self.assertEqual(row[3:5], ("tlsa", "dnssec-invalid"), row)
        self.assertFalse(self.sent("a@bogus.dane.test"))

    def test_unsigned_zone_tlsa_ignored(self):
        row = self.first("a@plain.test")
        self.assertEqual(row[0], "d", row)
        self.assertNotEqual(row[3], "tlsa", row)
        self.assertTrue(row[6], row)  # opportunistic TLS all the same
        self.assertNotIn("dane host=mx.plain.test", self.node.log())

    def test_unusable_usage_is_plain_opportunistic(self):
        row = self.first("a@unusable.dane.test")
        self.assertEqual(row[0], "d", row)
        self.assertNotEqual(row[3], "tlsa", row)
        self.assertIn("dane host=mx-unusable.dane.test tlsa=1 usable=0 validated=1 state=none",
                      self.node.log())

    def test_dane_false_looks_no_tlsa_up(self):
        row = self.first("a@off.dane.test")
        self.assertEqual(row[0], "d", row)
        self.assertNotEqual(row[3], "tlsa", row)
        self.assertNotIn("dane host=mx-off.dane.test", self.node.log())

    def test_no_starttls_deferred_nothing_in_clear(self):
        row = self.first("a@notls.dane.test")
        self.assertEqual(row[0], "t", row)
        self.assertEqual(row[1], "4.7.5", row)
        self.assertEqual(row[3:5], ("tlsa", "starttls-not-supported"), row)
        self.assertFalse(self.sent("a@notls.dane.test"))
        self.assertTrue(self.notls_sessions)
        for s in self.notls_sessions:
            self.assertFalse([c for c in s.commands if c.upper().startswith("MAIL")], s)

    def test_no_plaintext_mail(self):
        for s in self.sink.sessions():
            if not s.tls:
                self.assertFalse([c for c in s.commands if c.upper().startswith("MAIL")], s)


if __name__ == "__main__":
    main()
