"""DSN options (RFC 3461) end to end: messages injected over SMTP with
NOTIFY, ORCPT, RET and ENVID, delivered by pgmtad to a sink that offers DSN
and to one that does not, and the delivery status notifications that reach
the sender's sink, parsed with Python's email package: NOTIFY=NEVER and
NOTIFY without FAILURE (none), RET=HDRS (headers, no body) and RET=FULL
(the whole message), ENVID and ORCPT in the report, NOTIFY=DELAY with a
short notify-of-delay-every (delayed reports, then the failure), NOTIFY=SUCCESS
to a hop without DSN (relayed) and to one with DSN (parameters passed on,
no report from pgmta); bad parameters refused with 501 5.5.4."""
import email
import email.policy
import smtplib
import unittest

from pgmta_test import PgServer, Pgmtad, free_port, main, wait_for
from sink import Sink

BODY = ("From: s@sender.test\r\nSubject: dsn test %s\r\nMessage-ID: <%s@sender.test>\r\n\r\n"
        "the body line %s\r\n")


def body(tag):
    return BODY % (tag, tag, tag)


class DsnTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.port = free_port()
        cls.dsn_sink = Sink(rules={"rcpt:fail*@*": "550 5.1.1 no such user",
                                   "rcpt:never@*": "550 5.1.1 no such user",
                                   "rcpt:delay@*": ["451 4.2.0 try later"] * 3 +
                                                   ["550 5.2.1 gave up"]})
        cls.plain_sink = Sink(ehlo_keywords=["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"])
        cls.report_sink = Sink()
        route = '{ name = "%s"; route = "127.0.0.1:%d"; }'
        cls.node = Pgmtad(
            cls.pg, domains=[route % ("dsn.test", cls.dsn_sink.port),
                             route % ("nodsn.test", cls.plain_sink.port),
                             route % ("sender.test", cls.report_sink.port)],
            defaults='retry-after = "1s"; max-retry-after = "1s"; '
                     'notify-of-delay-every = "1s"',
            extra='listen = { smtp = [ "127.0.0.1:%d" ]; };\n' % cls.port)
        cls.node.wait_accepting([cls.port])
        s = smtplib.SMTP("127.0.0.1", cls.port, timeout=10)
        cls.ehlo = s.ehlo()
        cls.send(s, "never-s@sender.test", [], [("never@dsn.test", ["NOTIFY=NEVER"])], "never")
        cls.send(s, "nofail-s@sender.test", [],
                 [("fail-nf@dsn.test", ["NOTIFY=SUCCESS,DELAY"])], "nofail")
        cls.send(s, "hdrs-s@sender.test", ["RET=HDRS", "ENVID=env+2Bhdrs+3D1"],
                 [("fail-hdrs@dsn.test",
                   ["NOTIFY=FAILURE", "ORCPT=rfc822;Orig+2BHdrs@Sender.test"])], "hdrs")
        cls.send(s, "full-s@sender.test", ["RET=FULL"], [("fail-full@dsn.test", [])], "full")
        cls.send(s, "relay-s@sender.test", ["ENVID=relay-1"],
                 [("ok@nodsn.test", ["NOTIFY=SUCCESS", "ORCPT=rfc822;ok@nodsn.test"])], "relay")
        cls.send(s, "hop-s@sender.test", ["RET=HDRS", "ENVID=hop+2B1"],
                 [("ok@dsn.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;first+2Bok@dsn.test"]),
                  ("plain@dsn.test", [])], "hop")
        cls.send(s, "delay-s@sender.test", [],
                 [("delay@dsn.test", ["NOTIFY=DELAY,FAILURE"])], "delay")
        s.quit()
        # final: never, fail-nf, fail-hdrs, fail-full, ok x2, plain, delay;
        # reports: hdrs, full, relayed, the delay failure and its delays
        wait_for(lambda: cls.pg.scalar("SELECT count(*) FROM mta.acct WHERE type IN ('d', 'b')"
                                       " AND orig <> ''") >= 8 and
                 cls.pg.scalar("SELECT count(*) FROM mta.recipients") == 0,
                 timeout=60, what="final rows and reports delivered")
        cls.reports = {}
        for m in cls.report_sink.messages():
            cls.reports.setdefault(m.rcpts[0], []).append(
                email.message_from_bytes(m.content, policy=email.policy.compat32))

    @classmethod
    def send(cls, s, sender, mail_opts, rcpts, tag):
        code, text = s.mail(sender, mail_opts)
        assert code == 250, (code, text)
        for rcpt, opts in rcpts:
            code, text = s.rcpt(rcpt, opts)
            assert code == 250, (rcpt, code, text)
        code, text = s.data(body(tag).encode())
        assert code == 250, (code, text)

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def report(self, sender):
        """The parts of the one report to SENDER: (message, text, status
        groups, returned part)."""
        msgs = self.reports.get(sender, [])
        self.assertEqual(len(msgs), 1, [m["Subject"] for m in msgs])
        return self.parts(msgs[0])

    def parts(self, msg):
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        sub = msg.get_payload()
        self.assertEqual(sub[1].get_content_type(), "message/delivery-status")
        # the per-message group, then one group per recipient
        groups = sub[1].get_payload()
        return msg, sub[0].get_payload(), groups, sub[2] if len(sub) > 2 else None

    def commands(self, sink, verb):
        return [c for _, c in sink.commands() if c.upper().startswith(verb)]

    def test_ehlo_offers_dsn(self):
        self.assertIn(b"DSN", self.ehlo[1].split(b"\n"))

    def test_notify_never_no_report(self):
        self.assertEqual(self.pg.scalar("SELECT type FROM mta.acct WHERE rcpt = 'never@dsn.test'"
                                        " AND type IN ('d', 'b')"), "b")
        self.assertNotIn("never-s@sender.test", self.reports)

    def test_notify_without_failure_no_failure_report(self):
        self.assertEqual(self.pg.scalar("SELECT type FROM mta.acct WHERE rcpt = "
                                        "'fail-nf@dsn.test' AND type IN ('d', 'b')"), "b")
        self.assertNotIn("nofail-s@sender.test", self.reports)

    def test_ret_hdrs_headers_only_with_envid_and_orcpt(self):
        msg, _, groups, returned = self.report("hdrs-s@sender.test")
        self.assertEqual(msg["From"].split("<")[0].strip(), "Mail Delivery System")
        self.assertEqual(groups[0]["Original-Envelope-Id"], "env+hdrs=1")
        rcpt = groups[1]
        self.assertEqual(rcpt["Action"], "failed")
        self.assertEqual(rcpt["Status"], "5.1.1")
        self.assertEqual(rcpt["Original-Recipient"], "rfc822;Orig+Hdrs@Sender.test")
        self.assertEqual(rcpt["Final-Recipient"], "rfc822; fail-hdrs@dsn.test")
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        text = returned.get_payload()
        self.assertIn("Subject: dsn test hdrs", text)
        self.assertNotIn("the body line", text)

    def test_ret_full_whole_message(self):
        _, _, groups, returned = self.report("full-s@sender.test")
        self.assertEqual(groups[1]["Action"], "failed")
        self.assertIsNone(groups[1]["Original-Recipient"])
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        orig = returned.get_payload()[0]
        self.assertEqual(orig["Subject"], "dsn test full")
        self.assertIn("the body line full", orig.get_payload())

    def test_success_to_hop_without_dsn_relayed(self):
        msg, text, groups, returned = self.report("relay-s@sender.test")
        self.assertEqual(msg["Subject"], "Successful Mail Delivery Report")
        self.assertEqual(groups[0]["Original-Envelope-Id"], "relay-1")
        self.assertEqual(groups[1]["Action"], "relayed")
        self.assertTrue(groups[1]["Status"].startswith("2."), groups[1]["Status"])
        self.assertEqual(groups[1]["Original-Recipient"], "rfc822;ok@nodsn.test")
        self.assertIn("127.0.0.1", groups[1]["Remote-MTA"])
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        # and the hop got no DSN parameters: it did not offer the extension
        for c in self.commands(self.plain_sink, "MAIL") + self.commands(self.plain_sink, "RCPT"):
            self.assertNotIn("NOTIFY", c.upper())
            self.assertNotIn("ENVID", c.upper())

    def test_success_to_hop_with_dsn_passed_on(self):
        self.assertNotIn("hop-s@sender.test", self.reports)
        mails = [c for c in self.commands(self.dsn_sink, "MAIL") if "hop-s@" in c]
        self.assertEqual(len(mails), 1, mails)
        self.assertIn(" RET=HDRS", mails[0])
        self.assertIn(" ENVID=hop+2B1", mails[0])
        rcpts = self.commands(self.dsn_sink, "RCPT")
        self.assertIn("RCPT TO:<ok@dsn.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;first+2Bok@dsn.test",
                      rcpts)
        self.assertIn("RCPT TO:<plain@dsn.test>", rcpts)
        self.assertEqual(self.pg.query("SELECT rcpt, type, orcpt FROM mta.acct WHERE rcpt IN "
                                       "('ok@dsn.test', 'plain@dsn.test') AND type = 'd' "
                                       "ORDER BY 1"),
                         [("ok@dsn.test", "d", "rfc822;first+ok@dsn.test"),
                          ("plain@dsn.test", "d", None)])

    def test_orcpt_in_bounce_row(self):
        self.assertEqual(self.pg.scalar("SELECT orcpt FROM mta.acct WHERE type = 'b' AND "
                                        "rcpt = 'fail-hdrs@dsn.test'"),
                         "rfc822;Orig+Hdrs@Sender.test")

    def test_notify_delay_reports_then_failure(self):
        msgs = self.reports.get("delay-s@sender.test", [])
        actions = [self.parts(m)[2][1]["Action"] for m in msgs]
        # deferred three times, 1 s apart, with a delay report due every
        # second: at least one delayed report, then exactly one failure
        self.assertGreaterEqual(actions.count("delayed"), 1, actions)
        self.assertEqual(actions[-1], "failed", actions)
        self.assertEqual(actions.count("failed"), 1, actions)
        delayed = [m for m in msgs if self.parts(m)[2][1]["Action"] == "delayed"]
        _, text, groups, returned = self.parts(delayed[0])
        self.assertEqual(delayed[0]["Subject"], "Delayed Mail (still being retried)")
        self.assertEqual(groups[1]["Status"], "4.2.0")
        self.assertIn("still being retried", text)
        self.assertEqual(returned.get_content_type(), "text/rfc822-headers")
        # one report per deferral at most: the state is in the database
        self.assertLessEqual(len(delayed), self.pg.scalar(
            "SELECT count(*) FROM mta.acct WHERE type = 't' AND rcpt = 'delay@dsn.test'"))

    def test_enqueue_batch_both_paths_store_options(self):
        # a quoted local part sends the batch down the per-message path; a
        # plain one stays on the set path: both store RET, NOTIFY and ORCPT
        conn = self.pg.connect(autocommit=False)
        try:
            cur = conn.cursor()
            for rcpt in ("plain@paused.test", '"q u"@paused.test'):
                cur.execute("SELECT id FROM mta.enqueue_batch(ARRAY['s@sender.test'], ARRAY[2], "
                            "ARRAY[%s, 'other@paused.test'], ARRAY[%s::bytea], ARRAY[NULL], "
                            "ARRAY[NULL], ARRAY['e1'], ARRAY[NULL], ARRAY['H'], "
                            "ARRAY[3, NULL]::smallint[], ARRAY['rfc822;o@x.test', NULL])",
                            (rcpt, body("sql").encode()))
                mid = cur.fetchone()[0]
                self.assertIsNotNone(mid)
                cur.execute("SELECT dsn_ret, envid FROM mta.messages WHERE id = %s", (mid,))
                self.assertEqual(cur.fetchone(), ("H", "e1"))
                cur.execute("SELECT rcpt, dsn_notify, dsn_orcpt FROM mta.recipients "
                            "WHERE message_id = %s ORDER BY id", (mid,))
                self.assertEqual(cur.fetchall(), [(rcpt, 3, "rfc822;o@x.test"),
                                                  ("other@paused.test", None, None)])
            with self.assertRaisesRegex(Exception, "bad DSN options"):
                cur.execute("SELECT * FROM mta.enqueue_batch(ARRAY['s@sender.test'], ARRAY[1], "
                            "ARRAY['a@paused.test'], ARRAY['x'::bytea], ARRAY[NULL], "
                            "ARRAY[NULL], ARRAY[NULL], ARRAY[NULL], NULL, ARRAY[8]::smallint[])")
        finally:
            conn.rollback()
            conn.close()

    def test_bad_parameters_501(self):
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        s.ehlo()
        cases = [("MAIL FROM:<a@sender.test> RET=ALL", "RET"),
                 ("MAIL FROM:<a@sender.test> ENVID=a+zz", "ENVID"),
                 ("MAIL FROM:<a@sender.test> ENVID=a+0D", "ENVID"),
                 ("MAIL FROM:<a@sender.test> RET=FULL RET=HDRS", "RET"),
                 ("MAIL FROM:<a@sender.test> ENVID=" + "x" * 101, "ENVID")]
        for line, word in cases:
            code, text = s.docmd(line)
            self.assertEqual((code, text[:5]), (501, b"5.5.4"), line)
            self.assertIn(word.encode(), text)
        self.assertEqual(s.docmd("MAIL FROM:<a@sender.test> RET=HDRS ENVID=ok")[0], 250)
        for line, word in [("RCPT TO:<x@dsn.test> NOTIFY=NEVER,SUCCESS", "NOTIFY"),
                           ("RCPT TO:<x@dsn.test> NOTIFY=SOMETIMES", "NOTIFY"),
                           ("RCPT TO:<x@dsn.test> NOTIFY=", "NOTIFY"),
                           ("RCPT TO:<x@dsn.test> NOTIFY=SUCCESS,", "NOTIFY"),
                           ("RCPT TO:<x@dsn.test> ORCPT=rfc822", "ORCPT"),
                           ("RCPT TO:<x@dsn.test> ORCPT=rfc822;a=b", "ORCPT"),
                           ("RCPT TO:<x@dsn.test> ORCPT=;a@b", "ORCPT")]:
            code, text = s.docmd(line)
            self.assertEqual((code, text[:5]), (501, b"5.5.4"), line)
            self.assertIn(word.encode(), text)
        self.assertEqual(s.docmd("RCPT TO:<x@dsn.test> FOO=1")[0], 555)
        self.assertEqual(s.docmd("RCPT TO:<x@dsn.test> notify=delay orcpt=rfc822;x@dsn.test")[0],
                         250)
        s.docmd("RSET")
        s.quit()


if __name__ == "__main__":
    main()
