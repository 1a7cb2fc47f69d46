"""TLS-RPT reports (RFC 8460) for a cluster: two nodes on one database, the
test DNS serving _smtp._tls TXT records with mailto: and https: rua, a day
of mixed outcomes written into mta.acct for yesterday (UTC). Both nodes run
the job at once: exactly one report per policy domain; the JSON has RFC
8460's fields and counts matching the rows; the mailto: report reaches a
sink as a multipart/report message with an application/tlsrpt+gzip
attachment; the https: report is POSTed (the first POST fails: it is sent
again on a later tick, and the mailto: report is not); `pgmta tlsrpt show`
prints the same JSON; a domain without a TLSRPT record is not sent."""
import base64
import email
import email.policy
import gzip
import http.server
import json
import os
import ssl
import subprocess
import threading
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import PGMTA, PgServer, Pgmtad, free_port, main, tmpdir, wait_for
from sink import Sink
from test_mta_sts import make_ca, make_ca_cert

ORG, CONTACT = "Example Sender Inc.", "mailto:tls-admin@sender.test"


class ReportHandler(http.server.BaseHTTPRequestHandler):
    posts = []
    lock = threading.Lock()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.lock:
            self.posts.append((self.path, self.headers.get("Content-Type"), body))
            first = len(self.posts) == 1
        self.send_response(500 if first else 201)  # the first one fails
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


# (policy_domain, policy, failure, message_id, attempt, mx, ip) for yesterday
ROWS = [("a.test", "sts", None, 1, 1, "mx1.a.test", "192.0.2.1"),
        ("a.test", "sts", None, 2, 1, "mx1.a.test", "192.0.2.1"),
        ("a.test", "sts", None, 3, 2, "mx1.a.test", "192.0.2.1"),
        # one session, two recipients
        ("a.test", "sts", None, 4, 1, "mx1.a.test", "192.0.2.1"),
        ("a.test", "sts", None, 4, 1, "mx1.a.test", "192.0.2.1"),
        ("a.test", "sts", "certificate-expired", 5, 1, "mx2.a.test", "192.0.2.2"),
        ("a.test", "sts", "certificate-expired", 6, 1, "mx2.a.test", "192.0.2.2"),
        ("a.test", "sts", "validation-failure", 7, 1, "mx9.other.test", "192.0.2.9"),
        ("b.test", "tlsa", None, 8, 1, "mx1.b.test", "192.0.2.11"),
        ("b.test", "tlsa", "tlsa-invalid", 9, 1, "mx1.b.test", "192.0.2.11"),
        ("b.test", "no-policy-found", None, 10, 1, "mx2.b.test", "192.0.2.12"),
        ("c.test", "sts", None, 11, 1, "mx1.c.test", "192.0.2.21")]


class TlsRpt(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        d = tmpdir()
        ca, ca_key = make_ca(d)
        cert, key = make_ca_cert(d, ca, ca_key, "web", ["reports.rpt.test"])
        cls.web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ReportHandler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        cls.web.socket = ctx.wrap_socket(cls.web.socket, server_side=True)
        web_port = cls.web.server_address[1]
        threading.Thread(target=cls.web.serve_forever, daemon=True).start()

        cls.pg = PgServer()
        cls.dns = DnsServer()
        cls.sink = Sink()
        cls.https_rua = "https://reports.rpt.test:%d/tlsrpt/v1" % web_port
        cls.dns.add_a("reports.rpt.test", "127.0.0.1")
        cls.dns.add_txt("_smtp._tls.a.test", "v=TLSRPTv1; rua=mailto:tlsrpt@rpt.test,%s"
                        % cls.https_rua)
        cls.dns.add_txt("_smtp._tls.b.test", "v=TLSRPTv1;rua=mailto:b-reports@rpt.test")
        cls.dns.add_txt("_smtp._tls.b.test", "v=spf1 -all")
        # c.test: no record
        cls.pg.query("INSERT INTO mta.mta_sts (domain, txt_id, mode, mx, max_age, fetched_at, "
                     "expires_at) VALUES ('a.test', 'x', 'enforce', "
                     "ARRAY['mx1.a.test', '*.a.test'], 86400, now(), now() + interval '1 day')")
        # The node reports the UTC day before (now - 15 min) (TLSRPT_DAY_SETTLE_S):
        # from 00:00 to 00:15 UTC that is two days back. Near 00:15 the day
        # could change during the test: wait until it has.
        settle = 900
        since_midnight = int(time.time()) % 86400
        if settle - 60 <= since_midnight <= settle + 5:
            time.sleep(settle + 6 - since_midnight)
        cls.day = cls.pg.scalar("SELECT (((now() - interval '%d seconds') AT TIME ZONE 'UTC')"
                                "::date - 1)::text" % settle)
        for dom, pol, fail, mid, att, mx, ip in ROWS:
            cls.pg.query(
                "INSERT INTO mta.acct (type, time_logged, rcpt, queue, message_id, attempt, "
                "dsn_mta, dlv_source_ip, dlv_destination_ip, tls_policy, tls_failure, "
                "tls_policy_domain) VALUES (%s, (%s::date + time '12:00') AT TIME ZONE 'UTC', "
                "%s, %s, %s, %s, %s, '198.51.100.7', %s, %s, %s, %s)",
                ("t" if fail else "d", cls.day, "r%d@%s" % (mid, dom), dom, mid, att,
                 "%s (%s)" % (mx, ip), ip, pol, fail, dom))
        # today's attempts are not in yesterday's report
        cls.pg.query("INSERT INTO mta.acct (type, rcpt, message_id, attempt, tls_policy, "
                     "tls_failure, tls_policy_domain) VALUES ('t', 'x@a.test', 99, 1, 'sts', "
                     "'starttls-not-supported', 'a.test')")
        conf = dict(extra='tls-ca-file = "%s"; tls-report = { organization-name = "%s"; '
                    'contact-info = "%s"; submitter = "mta.sender.test"; '
                    'from = "tlsrpt@sender.test"; interval = "1s"; };' % (ca, ORG, CONTACT),
                    domains=['{ name = "rpt.test"; route = "127.0.0.1:%d"; }' % cls.sink.port])
        cls.nodes = [Pgmtad(cls.pg, cls.dns, name=n, **conf) for n in ("node-a", "node-b")]
        sent = "SELECT count(*) FROM mta.tlsrpt_sent WHERE sent_at IS NOT NULL"
        wait_for(lambda: cls.pg.scalar(sent) == 2 and len(cls.sink.messages()) >= 2,
                 timeout=20, what="the reports of a.test and b.test")
        wait_for(lambda: cls.pg.scalar("SELECT attempts FROM mta.tlsrpt_sent "
                                       "WHERE policy_domain = 'c.test'") >= 2,
                 timeout=10, what="c.test tried twice")
        for n in cls.nodes:
            n.stop()

    @classmethod
    def tearDownClass(cls):
        cls.sink.stop()
        cls.web.shutdown()
        cls.web.server_close()

    def stored(self, dom):
        return self.pg.scalar("SELECT report::text FROM mta.tlsrpt_sent WHERE policy_domain = %s",
                              (dom,))

    def mails(self, rcpt):
        return [m for m in self.sink.messages() if rcpt in m.rcpts]

    def report_of(self, msg):
        m = email.message_from_bytes(msg.content, policy=email.policy.default)
        parts = [p for p in m.iter_parts() if p.get_content_type() == "application/tlsrpt+gzip"]
        self.assertEqual(len(parts), 1)
        return m, parts[0], json.loads(gzip.decompress(parts[0].get_content()))

    def test_one_report_per_domain_for_the_cluster(self):
        rows = self.pg.query("SELECT policy_domain, day::text FROM mta.tlsrpt_sent "
                             "ORDER BY 1")
        self.assertEqual(rows, [("a.test", self.day), ("b.test", self.day),
                                ("c.test", self.day)])
        self.assertEqual(len(self.mails("tlsrpt@rpt.test")), 1)
        self.assertEqual(len(self.mails("b-reports@rpt.test")), 1)
        self.assertEqual(len(self.sink.messages()), 2)
        # both nodes ran the job
        for n in self.nodes:
            self.assertIn("tlsrpt event=started", n.log())
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.tlsrpt_sent WHERE claimed_by "
                                        "IS NOT NULL AND sent_at IS NOT NULL"), 0)

    def test_report_fields_and_counts(self):
        r = json.loads(self.stored("a.test"))
        for k in ("organization-name", "date-range", "contact-info", "report-id", "policies"):
            self.assertIn(k, r)
        self.assertEqual(r["organization-name"], ORG)
        self.assertEqual(r["contact-info"], CONTACT)
        self.assertEqual(r["date-range"], {"start-datetime": self.day + "T00:00:00Z",
                                           "end-datetime": self.day + "T23:59:59Z"})
        self.assertEqual(len(r["policies"]), 1)
        p = r["policies"][0]
        self.assertEqual(p["policy"], {
            "policy-type": "sts", "policy-domain": "a.test",
            "policy-string": ["version: STSv1", "mode: enforce", "mx: mx1.a.test",
                              "mx: *.a.test", "max_age: 86400"],
            "mx-host": ["mx1.a.test", "*.a.test"]})
        self.assertEqual(p["summary"], {"total-successful-session-count": 4,
                                        "total-failure-session-count": 3})
        self.assertEqual(p["failure-details"], [
            {"result-type": "certificate-expired", "sending-mta-ip": "198.51.100.7",
             "receiving-mx-hostname": "mx2.a.test", "receiving-ip": "192.0.2.2",
             "failed-session-count": 2},
            {"result-type": "validation-failure", "sending-mta-ip": "198.51.100.7",
             "receiving-mx-hostname": "mx9.other.test", "receiving-ip": "192.0.2.9",
             "failed-session-count": 1}])

    def test_tlsa_and_no_policy_found(self):
        r = json.loads(self.stored("b.test"))
        pols = {p["policy"]["policy-type"]: p for p in r["policies"]}
        self.assertEqual(sorted(pols), ["no-policy-found", "tlsa"])
        self.assertEqual(pols["tlsa"]["policy"]["mx-host"], ["mx1.b.test"])
        self.assertEqual(pols["tlsa"]["summary"], {"total-successful-session-count": 1,
                                                   "total-failure-session-count": 1})
        self.assertEqual(pols["tlsa"]["failure-details"][0]["result-type"], "tlsa-invalid")
        self.assertEqual(pols["no-policy-found"]["summary"]["total-successful-session-count"], 1)

    def test_mailto_is_a_multipart_report(self):
        msg = self.mails("tlsrpt@rpt.test")[0]
        self.assertEqual(msg.mail_from, "tlsrpt@sender.test")
        m, part, report = self.report_of(msg)
        self.assertEqual(m.get_content_type(), "multipart/report")
        self.assertEqual(m.get_param("report-type"), "tlsrpt")
        self.assertEqual(m["TLS-Report-Domain"], "a.test")
        self.assertEqual(m["TLS-Report-Submitter"], "mta.sender.test")
        self.assertEqual(m["Subject"], "Report Domain: a.test Submitter: mta.sender.test "
                         "Report-ID: <%s>" % report["report-id"])
        self.assertTrue(part.get_filename().startswith("mta.sender.test!a.test!"))
        self.assertTrue(part.get_filename().endswith(".json.gz"))
        self.assertEqual(report, json.loads(self.stored("a.test")))

    def test_https_post_retried_on_a_later_tick(self):
        posts = ReportHandler.posts
        self.assertEqual(len(posts), 2, [p[:2] for p in posts])
        for path, ctype, body in posts:
            self.assertEqual(path, "/tlsrpt/v1")
            self.assertEqual(ctype, "application/tlsrpt+gzip")
            self.assertEqual(json.loads(gzip.decompress(body)), json.loads(self.stored("a.test")))
        row = self.pg.query("SELECT attempts, done_rua FROM mta.tlsrpt_sent "
                            "WHERE policy_domain = 'a.test'")[0]
        self.assertEqual(row, (1, sorted(["mailto:tlsrpt@rpt.test", self.https_rua])))

    def test_domain_without_record_not_sent(self):
        sent, err = self.pg.query("SELECT sent_at, last_error FROM mta.tlsrpt_sent "
                                  "WHERE policy_domain = 'c.test'")[0]
        self.assertIsNone(sent)
        self.assertIn("TLSRPTv1", err)

    def test_cli_show_prints_the_same_json(self):
        r = subprocess.run([PGMTA, "tlsrpt", "show", "--domain", "a.test", "--day", self.day,
                            "--organization", ORG, "--contact", CONTACT, "--db", self.pg.dsn],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), json.loads(self.stored("a.test")))
        r = subprocess.run([PGMTA, "tlsrpt", "show", "--domain", "none.test", "--day", self.day,
                            "--db", self.pg.dsn], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no attempt", r.stderr)

    def test_day_not_over_refused(self):
        with self.assertRaises(Exception) as cm:
            self.pg.query("SELECT * FROM mta.tlsrpt_claim('n', (now() AT TIME ZONE 'UTC')::date, "
                          "'o', 'c', true)")
        self.assertIn("not over", str(cm.exception))


if __name__ == "__main__":
    main()
