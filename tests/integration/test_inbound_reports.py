"""Inbound bounces and feedback reports against real components: a
PostgreSQL server, one pgmtad node with VERP and its inbound listener, and
a private Postfix (Debian's binaries, as in tests/bench) that rejects two
recipients with its error transport and sends its own RFC 3464 bounces to
the VERP addresses, routed back to the inbound listener.

Also sent with smtplib: the RFC 5965 Appendix B example (verbatim: kept
unmatched; with a VERP Original-Mail-From: an 'f' row), a JMRP-style
complaint, a forged VERP tag, an unreadable message, a mailto: unsubscribe
and a recipient outside the bounce and feedback domains (550 5.7.1)."""
import base64
import hashlib
import hmac
import os
import smtplib
import socket
import sys
import unittest

from pgmta_test import Pgmtad, PgServer, free_port, main, tmpdir, wait_for

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from peers import PostfixInstance  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "reports")
SECRET = "verp-secret-for-tests-0123456789"
UNSUB_SECRET = b"unsubscribe-secret-for-tests-42"


def unsub_token(rcpt, job, key=UNSUB_SECRET):
    """The token of node/unsub.c: version 1, job and scope lengths, job,
    recipient, HMAC-SHA256 of all that; base64url without padding."""
    raw = bytes([1, len(job), 0]) + job.encode() + rcpt.encode()
    raw += hmac.new(key, raw, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
CONTENT = "From: news@sender.example\r\nSubject: news\r\nMessage-ID: <n1@sender.example>\r\n" \
          "\r\nnews\r\n"


def tag(rcpt_id):
    return hmac.new(SECRET.encode(), str(rcpt_id).encode(), hashlib.sha256).hexdigest()[:10]


def verp(rcpt_id):
    return "bounces+%d-%s@bounce.example" % (rcpt_id, tag(rcpt_id))


def report(name, **subst):
    with open(os.path.join(DATA, name)) as f:
        text = f.read()
    for k, v in subst.items():
        text = text.replace(k, v)
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


class InboundTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.smtp, cls.inbound, cls.pfport = free_port(), free_port(), free_port()
        # gone@ and left@ are accepted, then bounced by the error transport
        # (a real DSN to the VERP sender); inband@ is refused at RCPT.
        cls.postfix = PostfixInstance(
            cls.pfport, {"bounce.example": ("127.0.0.1", cls.inbound),
                         "rcpt.example": ("127.0.0.1", free_port())},
            extra_main={"smtpd_reject_unlisted_recipient": "no"})
        access = os.path.join(cls.postfix.conf, "access")
        with open(access, "w") as f:
            f.write("inband@rcpt.example 550 5.1.1 no such user here\n")
        with open(os.path.join(cls.postfix.conf, "main.cf"), "a") as f:
            f.write("smtpd_recipient_restrictions = check_recipient_access texthash:%s\n" % access)
        with open(os.path.join(cls.postfix.conf, "transport"), "a") as f:
            f.write("gone@rcpt.example error:5.1.1 mailbox unknown\n"
                    "left@rcpt.example error:5.1.1 no such user\n")
        cls.postfix.start()
        cls.node = Pgmtad(cls.pg, domains=['{ name = "rcpt.example"; route = "127.0.0.1:%d"; }'
                                           % cls.pfport], extra=(
            'listen = { smtp = [ "127.0.0.1:%d" ]; inbound = [ "127.0.0.1:%d" ]; };\n'
            'verp = ( { name = "news"; sender-domain = "sender.example";'
            ' bounce-domain = "bounce.example"; } );\n'
            'verp-secret = "%s";\ngenerate-bounces = false;\n'
            'inbound = { feedback-domains = [ "fbl.example" ];'
            ' unsubscribe-local-part = "unsubscribe"; max-sessions-per-client = 3;'
            ' max-message-size = 65536; };\n'
            'smtp-listener = { processes = 1; };\n'
            'unsubscribe-secret-file = "%s";\n'
            % (cls.smtp, cls.inbound, SECRET, cls.unsub_secret_file())))
        cls.node.wait_accepting([cls.smtp, cls.inbound])
        # delivered recipients that the reports sent by hand refer to
        for rid, rcpt, job, mid in ((900001, "complainer@example.net", "job-arf", None),
                                    (900002, "jm@hotmail.example", "job-jmrp", None),
                                    (900003, "mid@example.org", "job-mid", "m3@sender.example"),
                                    (900004, "other@example.org", "job-mid", "m3@sender.example")):
            cls.pg.query("INSERT INTO mta.acct (type, orig, rcpt, rcpt_id, message_id, job_id,"
                         " queue, header_message_id)"
                         " VALUES ('d', 'news@sender.example', %s, %s, %s, %s, %s, %s)",
                         (rcpt, rid, rid, job, rcpt.split("@")[1], mid))

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
        cls.postfix.stop()
        cls.pg.stop()

    @classmethod
    def unsub_secret_file(cls):
        path = os.path.join(tmpdir("pgmta-unsub-"), "unsubscribe.secret")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(UNSUB_SECRET + b"\n")
        return path

    def send(self, rcpt, text, mail_from="<>"):
        with smtplib.SMTP("127.0.0.1", self.inbound, timeout=30) as c:
            c.ehlo("reporter.example")
            return c.sendmail(mail_from, [rcpt], text.encode())

    def unmatched(self, reason_like):
        return self.pg.scalar("SELECT count(*) FROM mta.inbound_unmatched WHERE reason LIKE %s",
                              (reason_like,))

    def suppressed(self, addr):
        return self.pg.query("SELECT source, reason FROM mta.suppression WHERE address = %s",
                             (addr,))

    def test_postfix_bounce_to_verp(self):
        msg = self.pg.scalar("SELECT mta.enqueue('news@sender.example', ARRAY['gone@rcpt.example',"
                             " 'left@rcpt.example'], %s, 'job-7')", (CONTENT,))
        try:
            wait_for(lambda: self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'rb'"
                                            " AND message_id = %s", (msg,)) == 2,
                     timeout=60, what="two rb rows from Postfix's bounces")
        except AssertionError:
            with open(self.postfix.maillog) as f:
                print("postfix:\n" + f.read()[-4000:], "\npgmtad:\n" + self.node.log()[-4000:],
                      self.pg.query("SELECT * FROM mta.inbound_unmatched"),
                      self.pg.query("SELECT type, rcpt, dsn_diag FROM mta.acct"), file=sys.stderr)
            raise
        rows = self.pg.query(
            "SELECT rb.rcpt, rb.rcpt_id = d.rcpt_id, rb.job_id, rb.orig, rb.dsn_status,"
            " rb.bounce_cat, rb.reporting_mta FROM mta.acct rb"
            " JOIN mta.acct d ON d.type = 'd' AND d.rcpt = rb.rcpt AND d.message_id = rb.message_id"
            " WHERE rb.type = 'rb' AND rb.message_id = %s ORDER BY rb.rcpt", (msg,))
        self.assertEqual([r[:6] for r in rows],
                         [("gone@rcpt.example", True, "job-7", "news@sender.example", "5.1.1",
                           "bad-mailbox"),
                          ("left@rcpt.example", True, "job-7", "news@sender.example", "5.1.1",
                           "bad-mailbox")])
        self.assertEqual(rows[0][6], "postfix.bench.example")
        # one transaction per recipient, each with its own VERP sender
        with open(self.postfix.maillog) as f:
            log = f.read()
        for rid in self.pg.query("SELECT rcpt_id FROM mta.acct WHERE type = 'd'"
                                 " AND message_id = %s", (msg,)):
            self.assertIn("from=<%s>" % verp(rid[0]), log)
        self.assertEqual(self.suppressed("gone@rcpt.example")[0][0], "bounce")
        again = self.pg.scalar("SELECT mta.enqueue('news@sender.example',"
                               " ARRAY['gone@rcpt.example'], %s, 'job-8')", (CONTENT,))
        self.assertEqual(self.pg.query("SELECT bounce_cat FROM mta.acct WHERE type = 'b'"
                                       " AND job_id = 'job-8'"), [("suppressed",)])
        self.assertIsNone(again)  # no message stored: its only recipient is suppressed

    def test_bounce_matched_by_message_id(self):
        """A bounce to a plain address of the bounce domain (no VERP, no
        ENVID) finds its recipient by the enclosed original's Message-ID and
        the Final-Recipient; the d rows of real deliveries keep it."""
        dsn = ("From: MAILER-DAEMON@mx.example\r\nTo: bounces@bounce.example\r\n"
               "Subject: Undelivered\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report;"
               " report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\n"
               "Content-Type: text/plain\r\n\r\nfailed\r\n--b\r\n"
               "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n"
               "\r\nFinal-Recipient: rfc822; mid@example.org\r\nAction: failed\r\n"
               "Status: 5.2.2\r\nDiagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n\r\n--b\r\n"
               "Content-Type: text/rfc822-headers\r\n\r\nFrom: news@sender.example\r\n"
               "Message-ID: <m3@sender.example>\r\nSubject: news\r\n\r\n--b--\r\n")
        self.send("bounces@bounce.example", dsn)
        self.assertEqual(self.pg.query("SELECT rcpt, rcpt_id, job_id, dsn_status FROM mta.acct"
                                       " WHERE type = 'rb' AND job_id = 'job-mid'"),
                         [("mid@example.org", 900003, "job-mid", "5.2.2")])
        # the same report for a recipient the message did not have: unmatched
        self.send("bounces@bounce.example", dsn.replace("mid@example.org", "nobody@example.org"))
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'rb'"
                                        " AND job_id = 'job-mid'"), 1)
        # a delivery through the node records the Message-ID for it
        msg = self.pg.scalar("SELECT mta.enqueue('plain@sender2.example', ARRAY["
                             "'kept@rcpt.example'], %s, 'job-mid2')", (CONTENT,))
        wait_for(lambda: self.pg.scalar("SELECT header_message_id FROM mta.acct WHERE type = 'd'"
                                        " AND message_id = %s", (msg,)) == "n1@sender.example",
                 timeout=30, what="the d row with the Message-ID")

    def test_bounce_before_the_finish_matches_the_queued_recipient(self):
        """A relay that bounces at once can report before the finish of the
        delivery is committed: the VERP address still finds its recipient,
        then queued (here: in a paused queue)."""
        self.pg.query("SELECT mta.pause_queue('held.example')")
        msg = self.pg.scalar("SELECT mta.enqueue('news@sender.example', ARRAY['x@held.example'],"
                             " %s, 'job-held')", (CONTENT,))
        rid = self.pg.scalar("SELECT id FROM mta.recipients WHERE message_id = %s", (msg,))
        addr = verp(rid)
        dsn = ("From: MAILER-DAEMON@mx.example\r\nTo: %s\r\nSubject: Undelivered\r\n"
               "MIME-Version: 1.0\r\nContent-Type: multipart/report;"
               " report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\n"
               "Content-Type: text/plain\r\n\r\nfailed\r\n--b\r\n"
               "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n"
               "\r\nFinal-Recipient: rfc822; x@held.example\r\nAction: failed\r\n"
               "Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n--b--\r\n"
               % addr)
        self.send(addr, dsn)
        self.assertEqual(self.pg.query("SELECT rcpt, job_id, orig, queue FROM mta.acct"
                                       " WHERE type = 'rb' AND rcpt_id = %s", (rid,)),
                         [("x@held.example", "job-held", "news@sender.example", "held.example")])

    def test_inband_hard_bounce_suppresses(self):
        self.pg.query("SELECT mta.enqueue('news@sender.example', ARRAY['inband@rcpt.example'],"
                      " %s, 'job-9')", (CONTENT,))
        wait_for(lambda: self.suppressed("inband@rcpt.example"), timeout=30,
                 what="suppression of an in-band hard bounce")
        self.assertEqual(self.pg.query("SELECT bounce_cat, dsn_status FROM mta.acct"
                                       " WHERE type = 'b' AND job_id = 'job-9'"),
                         [("bad-mailbox", "5.1.1")])
        self.assertEqual(self.suppressed("inband@rcpt.example"),
                         [("bounce", "hard bounce: bad-mailbox 5.1.1")])

    def test_hard_bounce_count_setting(self):
        conn = self.pg.connect()
        try:
            cur = conn.cursor()
            cur.execute("SET pgmta.suppress_after_hard_bounces = 2")
            feed = "SELECT mta.feed_hard_bounces(ARRAY['twice@count.example'], ARRAY['hb'])"
            cur.execute(feed)
            self.assertEqual(cur.fetchone()[0], 0)
            self.assertEqual(self.suppressed("twice@count.example"), [])
            cur.execute(feed)
            self.assertEqual(cur.fetchone()[0], 1)
            self.assertEqual(self.suppressed("twice@count.example"), [("bounce", "2 hard bounces")])
            cur.execute("SET pgmta.suppress_after_hard_bounces = 0")
            cur.execute("SELECT mta.feed_hard_bounces(ARRAY['never@count.example'], ARRAY['hb'])")
            self.assertEqual(cur.fetchone()[0], 0)
        finally:
            conn.close()

    def test_arf_rfc5965_example_verbatim_is_kept_unmatched(self):
        self.send("fbl@fbl.example", report("arf_rfc5965_b1.eml"))
        self.assertEqual(self.unmatched("no VERP address, ENVID or Message-ID match"), 1)
        kind, mfrom = self.pg.query("SELECT kind, report->>'original_mail_from'"
                                    " FROM mta.inbound_unmatched WHERE kind = 'arf'")[0]
        self.assertEqual(mfrom, "somespammer@example.net")
        self.assertEqual(self.suppressed("user@example.com"), [])

    def test_arf_with_verp_sender(self):
        text = report("arf_rfc5965_b1.eml").replace("<somespammer@example.net>\r\nOriginal-Rcpt",
                                                     "<%s>\r\nOriginal-Rcpt" % verp(900001))
        self.send("fbl@fbl.example", text)
        rows = self.pg.query(
            "SELECT rcpt, job_id, feedback_type, user_agent, arf_version, arf_original_mail_from,"
            " arf_original_rcpt_to, arf_arrival_date, arf_source_ip, arf_reported_domain,"
            " reporting_mta, arf_message_id FROM mta.acct WHERE type = 'f' AND rcpt_id = 900001")
        self.assertEqual(rows, [("complainer@example.net", "job-arf", "abuse", "SomeGenerator/1.0",
                                 "1", verp(900001), "user@example.com",
                                 "Thu, 8 Mar 2005 14:00:00 EDT", "192.0.2.1", "example.net",
                                 "mail.example.com", "8787KJKJ3K4J3K4J3K4J3.mail@example.net")])
        self.assertEqual(self.suppressed("complainer@example.net")[0][0], "complaint")

    def test_jmrp(self):
        self.send("fbl@fbl.example", report("jmrp.eml", RCPT="jm@hotmail.example",
                                            RETURN_PATH=verp(900002)))
        self.assertEqual(self.pg.query("SELECT rcpt, job_id, feedback_type, user_agent,"
                                       " arf_original_rcpt_to, arf_message_id FROM mta.acct"
                                       " WHERE type = 'f' AND rcpt_id = 900002"),
                         [("jm@hotmail.example", "job-jmrp", "abuse", "JMRP",
                           "jm@hotmail.example", "jmrp-original-1@sender.example")])
        self.assertEqual(self.suppressed("jm@hotmail.example")[0][0], "complaint")

    def test_forged_tag_is_not_trusted(self):
        forged = "bounces+900001-%s@bounce.example" % ("0" * 10 if tag(900001) != "0" * 10
                                                       else "1" * 10)
        dsn = ("From: MAILER-DAEMON@mx.example\r\nTo: %s\r\nSubject: Undelivered\r\n"
               "MIME-Version: 1.0\r\nContent-Type: multipart/report;"
               " report-type=delivery-status; boundary=\"b\"\r\n\r\n--b\r\n"
               "Content-Type: text/plain\r\n\r\nfailed\r\n--b\r\n"
               "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n"
               "\r\nFinal-Recipient: rfc822; complainer@example.net\r\nAction: failed\r\n"
               "Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n--b--\r\n"
               % forged)
        before = self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'rb'"
                                " AND rcpt_id = 900001")
        self.send(forged, dsn)
        self.assertEqual(self.unmatched("VERP tag does not match"), 1)
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'rb'"
                                        " AND rcpt_id = 900001"), before)
        self.assertFalse(any(s == "bounce" for s, _ in self.suppressed("complainer@example.net")))

    def test_unreadable_and_unsubscribe_are_kept(self):
        self.send("bounces@bounce.example", "Subject: hello\r\n\r\njust saying hello\r\n",
                  mail_from="someone@else.example")
        self.assertEqual(self.unmatched("unparseable: %"), 1)
        self.send("unsubscribe@fbl.example", "Subject: unsubscribe\r\n\r\n\r\n",
                  mail_from="reader@else.example")
        self.assertEqual(self.unmatched("mailto: unsubscribe: no token in the Subject"), 1)

    def test_mailto_unsubscribe(self):
        """The mailto: URI of List-Unsubscribe: a mail to the unsubscribe
        address whose Subject carries the token suppresses the token's
        recipient; a forged token is kept unmatched and suppresses nothing."""
        good = unsub_token("reader@news.example", "job-news")
        self.send("unsubscribe@fbl.example",
                  "Subject: unsubscribe-%s\r\n\r\n\r\n" % good, mail_from="reader@news.example")
        rows = self.suppressed("reader@news.example")
        self.assertEqual([s for s, _ in rows], ["unsubscribe"])
        self.assertIn("mailto", rows[0][1])
        forged = unsub_token("victim@news.example", "job-news", key=b"another-key-of-16+chars")
        self.send("unsubscribe@fbl.example",
                  "Subject: unsubscribe-%s\r\n\r\n\r\n" % forged,
                  mail_from="attacker@else.example")
        self.assertEqual(self.unmatched("mailto: unsubscribe: the token does not verify"), 1)
        self.assertEqual(self.suppressed("victim@news.example"), [])

    def test_per_client_cap_and_size_limit(self):
        socks = [socket.create_connection(("127.0.0.1", self.inbound), timeout=10)
                 for _ in range(5)]
        try:
            codes = [s.recv(200)[:3] for s in socks]
            # 3 per client address (a session still closing may count)
            self.assertLessEqual(codes.count(b"220"), 3)
            self.assertEqual(codes[0], b"220")
            self.assertEqual(codes[3:], [b"421", b"421"])
        finally:
            for s in socks:
                s.close()

        def greeted():
            with socket.create_connection(("127.0.0.1", self.inbound), timeout=10) as s:
                return s.recv(200).startswith(b"220")
        wait_for(greeted, timeout=10, what="the closed sessions to be gone")
        with smtplib.SMTP("127.0.0.1", self.inbound, timeout=30) as c:
            c.ehlo("big.example")
            # SIZE declared at MAIL, and not declared: counted in DATA
            code, _ = c.mail("<>", ["SIZE=70000"])
            self.assertEqual(code, 552)
            c.mail("<>")
            c.rcpt("bounces@bounce.example")
            code, _ = c.data(b"Subject: big\r\n\r\n" + b"x" * 70000 + b"\r\n")
            self.assertEqual(code, 552)

    def test_other_domains_get_550(self):
        with smtplib.SMTP("127.0.0.1", self.inbound, timeout=30) as c:
            c.ehlo("relay.example")
            self.assertNotIn("auth", c.esmtp_features)
            c.mail("<>")
            code, text = c.rcpt("victim@elsewhere.example")
            self.assertEqual((code, text[:5]), (550, b"5.7.1"))
            code, _ = c.rcpt("fbl@fbl.example")
            self.assertEqual(code, 250)


if __name__ == "__main__":
    main()
