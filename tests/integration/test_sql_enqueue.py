"""mta.enqueue(): good messages are stored with their queue and 'r' accounting
rows; every kind of bad input is refused with a clear message and stores
nothing; text that looks like SQL is stored as data."""

import psycopg2

from pgmta_test import DbTestCase, main

BAD_RECIPIENTS = [
    ("a\r\n@x.example", "contains CR or LF"),
    ("a@x.example\r\nRCPT TO:<b@y.example>", "contains CR or LF"),
    ("a@x.example\n", "contains CR or LF"),
    ("a\x01b@x.example", "contains a control character"),
    ("a\x7f@x.example", "contains a control character"),
    ("a\tb@x.example", "contains a control character"),
    ("<a@x.example>", "contains '<' or '>'"),
    ('"a>b"@x.example', "contains '<' or '>'"),
    ("x" * 65 + "@x.example", "local part is 65 octets long, at most 64"),
    ("é" * 33 + "@x.example", "local part is 66 octets long, at most 64"),
    ("a@" + ".".join(["b" * 60] * 5), "at most 254 allowed"),
    ("a@b@x.example", "more than one '@' outside a quoted local part"),
    ("a b@x.example", "space outside quotes"),
    ("@x.example", "empty local part"),
    ('""@x.example', "empty local part"),
    ("a@", "empty domain"),
    ("noatsign", "no '@'"),
    ("", "empty address"),
    ('"abc@x.example', "quoted local part not closed"),
    (".a@x.example", "local part starts or ends with '.'"),
    ("a.@x.example", "local part starts or ends with '.'"),
    ("a..b@x.example", "local part starts or ends with '.' or has '..'"),
    ("a(b)@x.example", "special character"),
    ("a,b@x.example", "special character"),
    ("a@x..example", "empty label in the domain"),
    ("a@x.example.", "empty label in the domain"),
    ("a@" + "b" * 64 + ".example", "domain label is 64 octets long, at most 63"),
    ("a@x_y.example", "domain has a character other than letters, digits"),
    ("a@x!.example", "domain has a character other than letters, digits"),
    ("a@x y.example", "space in the domain"),
    ("a@-x.example", "domain label starts or ends with '-'"),
    ("a@x-.example", "domain label starts or ends with '-'"),
    ("a@[192.0.2.256]", "invalid IPv4 address literal"),
    ("a@[IPv6:zz::1]", "invalid address literal"),
    ("a@[IPv6:1:2:3:4:5:6:7:8:9]", "invalid IPv6 address literal"),
    ("a@[foo]", "invalid address literal"),
]

COUNTED = ("mta.messages", "mta.recipients", "mta.acct", "mta.queue", "mta.job")


class EnqueueTest(DbTestCase):
    def enqueue(self, mail_from, rcpts, content, **kw):
        names = ", ".join("%s => %%(%s)s" % (k, k) for k in kw)
        args = dict(kw, mail_from=mail_from, rcpts=rcpts, content=content)
        sql = "SELECT mta.enqueue(%(mail_from)s, %(rcpts)s, %(content)s" + \
            (", " + names if names else "") + ")"
        return self.q(sql, args)[0][0]

    def counts(self, tables=COUNTED):
        return super().counts(tables)

    def assert_refused(self, expect, mail_from, rcpts, content="Subject: x\r\n\r\nbody\r\n", **kw):
        before = self.counts()
        with self.assertRaises(psycopg2.Error) as cm:
            self.enqueue(mail_from, rcpts, content, **kw)
        msg = cm.exception.diag.message_primary
        self.assertIn(expect, msg)
        self.assertEqual(cm.exception.pgcode, "22023", msg)
        self.assertEqual(self.counts(), before, "rows stored despite: " + msg)
        return msg

    # --- good input -------------------------------------------------------

    def test_text_message(self):
        content = "Subject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\nbody\r\n"
        mid = self.enqueue("sender@example.org",
                           ["One@Example.COM", "two@example.com", "three@Other.Example"],
                           content, job_id="job-text", envid="env-1")
        msg = self.q("SELECT mail_from, convert_from(content, 'UTF8'), size, job_id, envid, pipe,"
                     " vmta, message_id_header FROM mta.messages WHERE id = %s", (mid,))
        self.assertEqual(msg, [("sender@example.org", content, len(content.encode()), "job-text",
                                "env-1", "bulk", None, "<m1@example.org>")])
        rows = self.q("SELECT rcpt, domain, vmta, pipe, job_id, attempts, owner, lease_token,"
                      " next_attempt <= now() FROM mta.recipients WHERE message_id = %s"
                      " ORDER BY id", (mid,))
        self.assertEqual(rows, [
            ("One@Example.COM", "example.com", "", "bulk", "job-text", 0, None, None, True),
            ("two@example.com", "example.com", "", "bulk", "job-text", 0, None, None, True),
            ("three@Other.Example", "other.example", "", "bulk", "job-text", 0, None, None, True),
        ])
        queues = self.q("SELECT pipe, domain, vmta, paused FROM mta.queue"
                        " WHERE domain IN ('example.com', 'other.example') ORDER BY domain")
        self.assertEqual(queues, [("bulk", "example.com", "", False),
                                  ("bulk", "other.example", "", False)])
        acct = self.q("SELECT a.type, a.orig, a.rcpt, a.queue, a.pipe, a.job_id, a.envid,"
                      " a.dlv_size, a.rcpt_id = r.id, a.time_queued IS NOT NULL"
                      " FROM mta.acct a JOIN mta.recipients r ON r.id = a.rcpt_id"
                      " WHERE a.message_id = %s ORDER BY a.rcpt_id", (mid,))
        size = len(content.encode())
        self.assertEqual(acct, [
            ("r", "sender@example.org", "One@Example.COM", "example.com", "bulk", "job-text",
             "env-1", size, True, True),
            ("r", "sender@example.org", "two@example.com", "example.com", "bulk", "job-text",
             "env-1", size, True, True),
            ("r", "sender@example.org", "three@Other.Example", "other.example", "bulk",
             "job-text", "env-1", size, True, True),
        ])
        self.assertEqual(self.q("SELECT paused FROM mta.job WHERE job_id = 'job-text'"),
                         [(False,)])

    def test_bytea_message(self):
        content = b"Subject: bin\r\n\r\n\x00\x01\xff\xfe binary \x80\r\n"
        mid = self.enqueue("", ["a@bytes.example"], psycopg2.Binary(content),
                           pipe="transactional", vmta="vmta-a", priority=5)
        row = self.q("SELECT mail_from, content, size, pipe, vmta, priority, message_id_header"
                     " FROM mta.messages WHERE id = %s", (mid,))[0]
        self.assertEqual(row[0], "")
        self.assertEqual(bytes(row[1]), content)
        self.assertEqual(row[2:], (len(content), "transactional", "vmta-a", 5, None))
        self.assertEqual(self.q("SELECT domain, vmta, pipe FROM mta.recipients"
                                " WHERE message_id = %s", (mid,)),
                         [("bytes.example", "vmta-a", "transactional")])
        self.assertEqual(self.q("SELECT queue, vmta, orig FROM mta.acct WHERE message_id = %s",
                                (mid,)), [("bytes.example/vmta-a", "vmta-a", "")])
        self.assertEqual(self.q("SELECT count(*) FROM mta.queue WHERE pipe = 'transactional'"
                                " AND domain = 'bytes.example' AND vmta = 'vmta-a'"), [(1,)])

    def test_not_before(self):
        mid = self.enqueue("s@example.org", ["later@later.example"], "x",
                           not_before="2099-01-01T00:00:00Z")
        self.assertEqual(self.q("SELECT next_attempt = '2099-01-01T00:00:00Z' FROM mta.recipients"
                                " WHERE message_id = %s", (mid,)), [(True,)])

    def test_unusual_but_valid_addresses(self):
        good = {
            "x" * 64 + "@long-local.example": "long-local.example",
            '"quoted local @ part"@Quoted.Example': "quoted.example",
            '"a\\"b"@esc.example': "esc.example",
            "o'brien+tag@apos.example": "apos.example",
            "üser@bücher.DE": "bücher.de",
            "literal@[192.0.2.1]": "[192.0.2.1]",
            "v6@[IPv6:2001:db8::1]": "[ipv6:2001:db8::1]",
            "a@localhost": "localhost",
            "a@" + "b" * 63 + ".example": "b" * 63 + ".example",
        }
        for addr, domain in good.items():
            with self.subTest(addr=addr):
                mid = self.enqueue(addr, [addr], "x")
                self.assertEqual(self.q("SELECT rcpt, domain FROM mta.recipients"
                                        " WHERE message_id = %s", (mid,)), [(addr, domain)])

    def test_single_recipient_array_not_one_based(self):
        mid = self.q1("SELECT mta.enqueue('s@example.org', '[0:0]={Zero@Based.Example}'::text[],"
                      " 'x', job_id => 'job-zero')")
        self.assertEqual(self.q("SELECT rcpt, domain, job_id FROM mta.recipients"
                                " WHERE message_id = %s", (mid,)),
                         [("Zero@Based.Example", "based.example", "job-zero")])
        self.assertEqual(self.q("SELECT type, rcpt, queue FROM mta.acct WHERE message_id = %s",
                                (mid,)), [("r", "Zero@Based.Example", "based.example")])

    def test_acct_received_off(self):
        """mta.acct_received = off: the message and its recipients are stored,
        no 'r' row is written; the setting is read per call."""
        c = self.pg.connect()
        with c.cursor() as cur:
            cur.execute("SET mta.acct_received = off")
            cur.execute("SELECT mta.enqueue('s@example.org', ARRAY['a@off.example'], 'x')")
            one = cur.fetchone()[0]
            cur.execute("SELECT mta.enqueue('s@example.org',"
                        " ARRAY['b@off.example', 'c@off2.example'], 'y', vmta => 'v1')")
            two = cur.fetchone()[0]
            cur.execute("SET mta.acct_received = on")
            cur.execute("SELECT mta.enqueue('s@example.org', ARRAY['d@off.example'], 'z')")
            three = cur.fetchone()[0]
        c.close()
        self.assertEqual(self.q("SELECT message_id, count(*) FROM mta.recipients"
                                " WHERE message_id IN (%s, %s, %s) GROUP BY 1 ORDER BY 1",
                                (one, two, three)), [(one, 1), (two, 2), (three, 1)])
        self.assertEqual(self.q("SELECT message_id, rcpt FROM mta.acct"
                                " WHERE message_id IN (%s, %s, %s)", (one, two, three)),
                         [(three, "d@off.example")])
        self.assertEqual(self.q("SELECT domain, vmta FROM mta.queue WHERE domain LIKE 'off%%'"
                                " ORDER BY 1, 2"),
                         [("off.example", ""), ("off.example", "v1"), ("off2.example", "v1")])

    def test_acct_received_bad_value(self):
        c = self.pg.connect()
        with c.cursor() as cur:
            cur.execute("SET mta.acct_received = maybe")
            before = self.counts()
            with self.assertRaises(psycopg2.Error) as cm:
                cur.execute("SELECT mta.enqueue('s@example.org', ARRAY['a@bad.example'], 'x')")
        c.close()
        self.assertIn('invalid mta.acct_received "maybe": on or off expected',
                      cm.exception.diag.message_primary)
        self.assertEqual(self.counts(), before)

    # --- bad input --------------------------------------------------------

    def test_bad_recipients(self):
        for addr, expect in BAD_RECIPIENTS:
            with self.subTest(addr=addr):
                msg = self.assert_refused(expect, "s@example.org", ["ok@good.example", addr])
                self.assertIn("rcpt_to[2]", msg)

    def test_bad_single_recipient(self):
        """A message with one recipient takes its own path: the same checks."""
        for addr, expect in BAD_RECIPIENTS:
            with self.subTest(addr=addr):
                msg = self.assert_refused(expect, "s@example.org", [addr])
                self.assertIn("rcpt_to[1]", msg)
        self.assert_refused("rcpt_to[1] is NULL", "s@example.org", [None])

    def test_message_shows_control_characters_escaped(self):
        msg = self.assert_refused("contains CR or LF", "s@example.org", ["a@b.example\r\nDATA"])
        self.assertIn('"a@b.example\\x0d\\x0aDATA"', msg)

    def test_bad_recipient_lists(self):
        self.assert_refused("rcpt_to is empty", "s@example.org", [])
        self.assert_refused("rcpt_to is empty", "s@example.org", None)
        self.assert_refused("rcpt_to[2] is NULL", "s@example.org", ["a@x.example", None])
        self.assert_refused("at most 100000 per call", "s@example.org",
                            ["r%d@many.example" % i for i in range(100001)])

    def test_bad_sender(self):
        self.assert_refused("mail_from is NULL", None, ["a@x.example"])
        self.assert_refused('invalid mail_from "bad sender@x.example": space outside quotes',
                            "bad sender@x.example", ["a@x.example"])
        self.assert_refused("invalid mail_from", "s@x.example\r\n", ["a@x.example"])

    def test_bad_content_pipe_vmta(self):
        self.assert_refused("content is empty", "s@example.org", ["a@x.example"], "")
        self.assert_refused("content is NULL", "s@example.org", ["a@x.example"], None)
        self.assert_refused('unknown pipe "nope"', "s@example.org", ["a@x.example"], pipe="nope")
        self.assert_refused("invalid vmta \"a b\"", "s@example.org", ["a@x.example"], vmta="a b")
        self.assert_refused("invalid vmta", "s@example.org", ["a@x.example"], vmta="v'; --")

    def test_content_over_64mb(self):
        before = self.counts()
        with self.assertRaises(psycopg2.Error) as cm:
            self.q("SELECT mta.enqueue('s@example.org', ARRAY['a@x.example'],"
                   " repeat('x', 64 * 1024 * 1024 + 1))")
        self.assertIn("content is 67108865 octets, at most 67108864",
                      cm.exception.diag.message_primary)
        self.assertEqual(self.counts(), before)

    def test_bad_input_in_a_transaction_stores_nothing(self):
        """A refused enqueue aborts the caller's transaction: an earlier good
        enqueue in the same transaction is not stored either."""
        before = self.counts()
        c = self.pg.connect(autocommit=False)
        with c.cursor() as cur:
            cur.execute("SELECT mta.enqueue('s@example.org', ARRAY['good@tx.example'], 'x')")
            with self.assertRaises(psycopg2.Error):
                cur.execute("SELECT mta.enqueue('s@example.org', ARRAY['bad@@tx.example'], 'x')")
        c.rollback()
        c.close()
        self.assertEqual(self.counts(), before)

    # --- SQL-looking text is data -----------------------------------------

    def test_injection_strings_are_data(self):
        nasty = "'); DROP TABLE mta.messages; --"
        dollar = "$$; DELETE FROM mta.recipients; $$ \\' \\\\ \u2603 \U0001F600 ' OR 1=1 --"
        content = "Subject: %s\r\n\r\n%s\r\n\\x00 \\\\ E'\\n' \u00e9\u4e2d\r\n" % (nasty, dollar)
        local = '"\'); DROP TABLE mta.acct; --"@inject.example'
        # an envid is printable ASCII (RFC 3461): the same text without the
        # non-ASCII characters
        dollar = dollar.encode("ascii", "ignore").decode()
        mid = self.enqueue("s@example.org", [local, "plain@inject.example"], content,
                           job_id=nasty, envid=dollar)
        self.assertEqual(self.q("SELECT job_id, envid, convert_from(content, 'UTF8')"
                                " FROM mta.messages WHERE id = %s", (mid,)),
                         [(nasty, dollar, content)])
        self.assertEqual(self.q("SELECT rcpt, job_id FROM mta.recipients WHERE message_id = %s"
                                " ORDER BY id", (mid,)),
                         [(local, nasty), ("plain@inject.example", nasty)])
        self.assertEqual(self.q("SELECT job_id, envid, rcpt FROM mta.acct WHERE message_id = %s"
                                " ORDER BY rcpt_id", (mid,)),
                         [(nasty, dollar, local), (nasty, dollar, "plain@inject.example")])
        self.assertEqual(self.q("SELECT count(*) FROM mta.job WHERE job_id = %s", (nasty,)),
                         [(1,)])
        # Every table is still there.
        for t in ("mta.messages", "mta.recipients", "mta.acct"):
            self.q("SELECT 1 FROM %s LIMIT 1" % t)


if __name__ == "__main__":
    main()
