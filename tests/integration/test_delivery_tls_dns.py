"""pgmtad with STARTTLS receivers and with DNS answers that end delivery:
TLS 1.3 negotiated and recorded in mta.acct; require-starttls against a
receiver without STARTTLS defers and sends nothing in clear; null MX,
NXDOMAIN and SERVFAIL; an RFC 3464 report to the sender of a bounce, and
none for a message from <>."""
import unittest

from dnsserver import DnsServer
from pgmta_test import (PgServer, Pgmtad, free_port, main, make_cert, tmpdir, wait_for)
from sink import Sink

BODY = "Subject: tls/dns test\r\nMessage-ID: <orig-1@example.com>\r\n\r\nhello\r\n"


class TlsAndDns(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.dns = DnsServer()
        port = free_port("127.0.0.30")
        cert, key = make_cert(tmpdir(), "mx-tls.test")
        cls.tls_sink = Sink(host="127.0.0.30", port=port, tls_cert=cert, tls_key=key,
                            rules={"rcpt:nouser@*": "550 5.1.1 no such user",
                                   "rcpt:later@*": "452 4.2.2 mailbox full"})
        cls.clear_sink = Sink(host="127.0.0.31", port=port)
        cls.report_sink = Sink(host="127.0.0.32", port=port)
        cls.dns.add_mx("tls.test", 10, "mx-tls.test")
        cls.dns.add_a("mx-tls.test", "127.0.0.30")
        cls.dns.add_mx("strict.test", 10, "mx-clear.test")
        cls.dns.add_a("mx-clear.test", "127.0.0.31")
        cls.dns.add_mx("sender.test", 10, "mx-reports.test")
        cls.dns.add_a("mx-reports.test", "127.0.0.32")
        # MX records that point at this node's own SMTP listener (127.0.0.33)
        cls.dns.add_mx("loop.test", 10, "mx-self.test")
        cls.dns.add_mx("halfloop.test", 10, "mx-self.test")
        cls.dns.add_mx("halfloop.test", 20, "mx-tls.test")
        cls.dns.add_a("mx-self.test", "127.0.0.33")
        cls.dns.null_mx("nullmx.test")
        cls.dns.nxdomain("gone.test")
        cls.dns.servfail("broken.test")
        q = "SELECT mta.enqueue(%s, ARRAY[%s], %s)"
        cls.pg.query(q, ("s@sender.test", "a@tls.test", BODY))
        cls.pg.query(q, ("s@sender.test", "a@strict.test", BODY))
        cls.pg.query(q, ("s@sender.test", "a@nullmx.test", BODY))
        cls.pg.query(q, ("s@sender.test", "a@gone.test", BODY))
        cls.pg.query(q, ("s@sender.test", "a@broken.test", BODY))
        cls.pg.query(q, ("", "b@gone.test", BODY))
        cls.pg.query(q, ("", "a@loop.test", BODY))
        cls.pg.query(q, ("", "a@halfloop.test", BODY))
        cls.pg.query("SELECT mta.enqueue('', ARRAY['nouser@tls.test', 'later@tls.test'], %s)",
                     (BODY,))
        cls.node = Pgmtad(cls.pg, cls.dns, extra='smtp-port = %d; listen = { smtp = '
                          '[ "127.0.0.33:%d" ]; };' % (port, port),
                          domains=['{ name = "strict.test"; require-starttls = true; }'])
        # Everything final except strict.test and broken.test (deferred), plus
        # the reports: wait for the two reports to reach the sender's sink.
        wait_for(lambda: len(cls.report_sink.messages()) >= 2 and
                 cls.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 't' AND "
                               "rcpt IN ('a@strict.test', 'a@broken.test')") >= 2 and
                 cls.pg.scalar("SELECT count(*) FROM mta.acct WHERE type IN ('d', 'b') AND "
                               "rcpt IN ('a@loop.test', 'a@halfloop.test')") == 2 and
                 cls.pg.scalar("SELECT count(*) FROM mta.acct WHERE (type, rcpt) IN "
                               "(('b', 'nouser@tls.test'), ('t', 'later@tls.test'))") >= 2,
                 timeout=60, what="deliveries, reports and deferrals")

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def acct(self, rcpt, types=("d", "b", "t")):
        return self.pg.query("SELECT type, dsn_status, bounce_cat, tls_protocol, tls_cipher, "
                             "dsn_diag FROM mta.acct WHERE rcpt = %s AND type = ANY(%s) "
                             "ORDER BY time_logged", (rcpt, list(types)))

    def test_tls13_recorded(self):
        rows = self.acct("a@tls.test")
        self.assertEqual(rows[0][0], "d")
        self.assertEqual(rows[0][3], "TLSv1.3")
        self.assertTrue(rows[0][4])
        sess = [s for s in self.tls_sink.sessions() if s.messages]
        self.assertTrue(sess and sess[0].tls)
        self.assertEqual(sess[0].tls_version, "TLSv1.3")

    def test_tls_on_bounced_and_deferred_rows(self):
        # b and t rows of a TLS session carry its protocol and cipher, and
        # t rows a bounce category, as d rows and PowerMTA's rows do
        b = self.acct("nouser@tls.test", types=("b",))[0]
        self.assertEqual((b[1], b[2], b[3]), ("5.1.1", "bad-mailbox", "TLSv1.3"))
        self.assertTrue(b[4])
        t = self.acct("later@tls.test", types=("t",))[0]
        self.assertEqual((t[1], t[2], t[3]), ("4.2.2", "quota-issues", "TLSv1.3"))
        self.assertTrue(t[4])

    def test_require_starttls_defers_without_sending(self):
        rows = self.acct("a@strict.test")
        self.assertEqual(rows[0][0], "t")
        self.assertTrue(rows[0][1].startswith("4.7."), rows[0])
        cmds = [c for _, c in self.clear_sink.commands()]
        self.assertFalse(any(c.upper().startswith("MAIL") for c in cmds), cmds)
        self.assertEqual(self.clear_sink.messages(), [])
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipients "
                                        "WHERE rcpt = 'a@strict.test'"), 1)

    def test_null_mx_bounces_5_1_10(self):
        rows = self.acct("a@nullmx.test")
        self.assertEqual([(r[0], r[1]) for r in rows], [("b", "5.1.10")])

    def test_nxdomain_bounces_5_1_2(self):
        rows = self.acct("a@gone.test")
        self.assertEqual([(r[0], r[1]) for r in rows], [("b", "5.1.2")])
        self.assertEqual(rows[0][2], "bad-domain")

    def test_servfail_is_transient(self):
        rows = self.acct("a@broken.test")
        self.assertEqual(rows[0][0], "t")
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipients "
                                        "WHERE rcpt = 'a@broken.test'"), 1)

    def test_mx_pointing_to_ourselves(self):
        rows = self.acct("a@loop.test")
        self.assertEqual([(r[0], r[1]) for r in rows], [("b", "5.4.6")])
        self.assertIn("loops back to myself", rows[0][5])
        # with another MX left, that one is used and ours is skipped
        self.assertEqual([r[0] for r in self.acct("a@halfloop.test")], ["d"])

    def test_bounce_report_to_sender(self):
        msgs = self.report_sink.messages()
        self.assertEqual(len(msgs), 2)  # a@nullmx.test and a@gone.test
        for m in msgs:
            self.assertEqual(m.mail_from, "")
            self.assertEqual(m.rcpts, ["s@sender.test"])
            text = m.content.decode("utf-8", "replace")
            self.assertIn("multipart/report", text)
            self.assertIn("report-type=delivery-status", text)
            self.assertIn("Action: failed", text)
            self.assertIn("orig-1@example.com", text)
        # no report for the message from <>: b@gone.test bounced silently
        self.assertEqual([r[0] for r in self.acct("b@gone.test")], ["b"])
        self.assertFalse(any("b@gone.test" in m.content.decode("utf-8", "replace")
                             for m in msgs))


if __name__ == "__main__":
    main()
