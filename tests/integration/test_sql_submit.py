"""mta.submit: bulk enqueue with COPY and INSERT ... SELECT, one recipient per
row; identical content in one statement is stored once; a bad row refuses the
whole statement."""
import io

import psycopg2

from pgmta_test import DbTestCase, main

COUNTED = ("mta.messages", "mta.recipients", "mta.acct", "mta.queue", "mta.job", "mta.submit")


class SubmitTest(DbTestCase):
    def counts(self, tables=COUNTED):
        return super().counts(tables)

    def test_copy_100k(self):
        n, ndomains = 100000, 20
        buf = io.StringIO()
        for i in range(n):
            # Every recipient gets its own content, as in a personalised campaign.
            buf.write("bulk@sender.example\tuser%d@Copy%02d.Example\t"
                      "Subject: hello %d\\r\\nMessage-ID: <c%d@sender.example>\\r\\n\\r\\nbody\\r\\n"
                      "\tcopyjob\n" % (i, i % ndomains, i, i))
        buf.seek(0)
        with self.conn.cursor() as cur:
            cur.copy_expert("COPY mta.submit (mail_from, rcpt_to, content, job_id) FROM STDIN", buf)
        self.assertEqual(self.q("SELECT count(*) FROM mta.submit"), [(0,)])
        rows = self.q("SELECT domain, queued, ready, deferred, in_flight, vmta, pipe"
                      " FROM mta.queues WHERE domain LIKE 'copy%%' ORDER BY domain")
        self.assertEqual(rows, [("copy%02d.example" % d, n // ndomains, n // ndomains, 0, 0,
                                 None, "bulk") for d in range(ndomains)])
        self.assertEqual(self.q("SELECT count(*), count(DISTINCT message_id) FROM mta.recipients"
                                " WHERE job_id = 'copyjob'"), [(n, n)])
        self.assertEqual(self.q("SELECT count(*) FROM mta.acct WHERE type = 'r'"
                                " AND job_id = 'copyjob'"), [(n,)])
        # Spot check one row end to end.
        self.assertEqual(self.q(
            "SELECT r.rcpt, r.domain, m.mail_from, convert_from(m.content, 'UTF8'),"
            " m.message_id_header, a.queue, a.rcpt_id = r.id, a.dlv_size = m.size"
            " FROM mta.recipients r JOIN mta.messages m ON m.id = r.message_id"
            " JOIN mta.acct a ON a.rcpt_id = r.id WHERE r.rcpt = 'user12345@Copy05.Example'"),
            [("user12345@Copy05.Example", "copy05.example", "bulk@sender.example",
              "Subject: hello 12345\r\nMessage-ID: <c12345@sender.example>\r\n\r\nbody\r\n",
              "<c12345@sender.example>", "copy05.example", True, True)])
        self.assertEqual(self.q("SELECT queued FROM mta.jobs WHERE job_id = 'copyjob'"), [(n,)])

    def test_acct_received_off(self):
        """mta.acct_received = off: COPY and INSERT store messages and
        recipients but no 'r' rows; the staging table is left empty."""
        c = self.pg.connect()
        with c.cursor() as cur:
            cur.execute("SET mta.acct_received = off")
            cur.copy_expert("COPY mta.submit (mail_from, rcpt_to, content, job_id) FROM STDIN",
                            io.StringIO("s@sender.example\ta@offcopy.example\tx\toffjob\n"
                                        "s@sender.example\tb@offcopy.example\ty\toffjob\n"))
            cur.execute("INSERT INTO mta.submit (mail_from, rcpt_to, content, job_id)"
                        " VALUES ('s@sender.example', 'c@offins.example', 'z', 'offjob')")
        c.close()
        self.assertEqual(self.q("SELECT rcpt FROM mta.recipients WHERE job_id = 'offjob'"
                                " ORDER BY 1"),
                         [("a@offcopy.example",), ("b@offcopy.example",), ("c@offins.example",)])
        self.assertEqual(self.q("SELECT count(*) FROM mta.messages WHERE job_id = 'offjob'"),
                         [(3,)])
        self.assertEqual(self.q("SELECT count(*) FROM mta.acct WHERE job_id = 'offjob'"), [(0,)])
        self.assertEqual(self.q("SELECT count(*) FROM mta.submit"), [(0,)])

    def test_insert_select_groups_identical_content(self):
        self.q("INSERT INTO mta.submit (mail_from, rcpt_to, content, job_id, vmta, pipe)"
               " SELECT 'news@sender.example', 'r' || i || '@ins' || (i % 3) || '.example',"
               "        'Subject: same for all\r\n\r\nbody ' || (i % 2), 'insjob', 'vm1',"
               "        'transactional'"
               " FROM generate_series(1, 1000) i")
        self.assertEqual(self.q("SELECT count(*), count(DISTINCT message_id) FROM mta.recipients"
                                " WHERE job_id = 'insjob'"), [(1000, 2)])
        self.assertEqual(self.q("SELECT count(*) FROM mta.messages WHERE job_id = 'insjob'"),
                         [(2,)])
        self.assertEqual(self.q("SELECT domain, vmta, pipe, queued FROM mta.queues"
                                " WHERE domain LIKE 'ins%%' ORDER BY domain"),
                         [("ins0.example", "vm1", "transactional", 333),
                          ("ins1.example", "vm1", "transactional", 334),
                          ("ins2.example", "vm1", "transactional", 333)])
        self.assertEqual(self.q("SELECT DISTINCT queue FROM mta.acct WHERE job_id = 'insjob'"
                                " AND rcpt LIKE '%%@ins0.example'"), [("ins0.example/vm1",)])
        self.assertEqual(self.q("SELECT count(*) FROM mta.submit"), [(0,)])

    def test_optional_columns(self):
        self.q("INSERT INTO mta.submit (mail_from, rcpt_to, content, envid, priority, not_before)"
               " VALUES ('', 'x@opt.example', 'x', 'env-opt', 7, '2099-01-01Z')")
        self.assertEqual(self.q("SELECT m.mail_from, m.envid, m.priority, m.pipe,"
                                " r.next_attempt = '2099-01-01Z'"
                                " FROM mta.recipients r JOIN mta.messages m ON m.id = r.message_id"
                                " WHERE r.rcpt = 'x@opt.example'"),
                         [("", "env-opt", 7, "bulk", True)])

    def assert_refused(self, expect, rows):
        before = self.counts()
        with self.assertRaises(psycopg2.Error) as cm:
            with self.conn.cursor() as cur:
                cur.execute("INSERT INTO mta.submit (mail_from, rcpt_to, content, vmta, pipe)"
                            " VALUES " + ", ".join(["(%s, %s, %s, %s, %s)"] * len(rows)),
                            [v for r in rows for v in r])
        self.assertIn(expect, cm.exception.diag.message_primary)
        self.assertEqual(self.counts(), before)

    def test_bad_rows_refuse_the_statement(self):
        good = ("s@sender.example", "ok@bad.example", "x", None, None)
        self.assert_refused("contains CR or LF",
                            [good, ("s@sender.example", "a@b.example\r\nRSET", "x", None, None)])
        self.assert_refused("more than one '@'",
                            [good, ("s@sender.example", "a@b@bad.example", "x", None, None)])
        self.assert_refused("is NULL", [good, ("s@sender.example", None, "x", None, None)])
        self.assert_refused("mail_from is NULL", [good, (None, "a@bad.example", "x", None, None)])
        self.assert_refused("invalid mail_from",
                            [good, ("a b@sender.example", "a@bad.example", "x", None, None)])
        self.assert_refused("content is empty", [good, ("s@sender.example", "a@bad.example", "",
                                                        None, None)])
        self.assert_refused("content is NULL", [good, ("s@sender.example", "a@bad.example", None,
                                                       None, None)])
        self.assert_refused('unknown pipe "nope"', [good, ("s@sender.example", "a@bad.example",
                                                           "x", None, "nope")])
        self.assert_refused("invalid vmta", [good, ("s@sender.example", "a@bad.example", "x",
                                                    "a;b", None)])

    def test_bad_copy_refused(self):
        before = self.counts()
        buf = io.StringIO("s@sender.example\tgood@copybad.example\tx\n"
                          "s@sender.example\t<evil@copybad.example>\tx\n")
        with self.assertRaises(psycopg2.Error) as cm:
            with self.conn.cursor() as cur:
                cur.copy_expert("COPY mta.submit (mail_from, rcpt_to, content) FROM STDIN", buf)
        self.assertIn("contains '<' or '>'", cm.exception.diag.message_primary)
        self.assertEqual(self.counts(), before)

    def test_injection_strings_are_data(self):
        nasty = "'); DROP TABLE mta.recipients; --"
        content = "Subject: $$ \\ \u2603\r\n\r\n%s\r\n" % nasty
        self.q("INSERT INTO mta.submit (mail_from, rcpt_to, content, job_id, envid)"
               " VALUES (%s, %s, %s, %s, %s)",
               ("s@sender.example", '"%s"@inj.example' % nasty.replace('"', ''), content, nasty,
                "$$"))
        self.assertEqual(self.q("SELECT r.rcpt, r.job_id, m.envid, convert_from(m.content, 'UTF8')"
                                " FROM mta.recipients r JOIN mta.messages m ON m.id = r.message_id"
                                " WHERE r.domain = 'inj.example'"),
                         [('"%s"@inj.example' % nasty, nasty, "$$", content)])


if __name__ == "__main__":
    main()
