"""Suppression (mta.suppression) on every injection path, against a real
PostgreSQL: mta.enqueue, mta.enqueue_batch (both of its paths), INSERT and
COPY into mta.submit (100,000 rows with 10% suppressed in one statement),
SMTP through a node's listener (smtplib) and POST /api/inject/v1; address,
domain-wide, scoped and expiring entries; the roles; `pgmta suppress`.

A suppressed recipient is never queued and has exactly one 'b' row with
bounce_cat 'suppressed', dsn_status 5.7.1 and a dsn_diag naming the entry.
Injected mail stays queued (the node's test domains are paused and routed
to a port where nothing listens), so the rows can be counted."""
import http.client
import io
import json
import os
import smtplib
import subprocess
import time
import unittest

import psycopg2

from pgmta_test import PGMTA, DbTestCase, Pgmtad, PgServer, free_port, main, tmpdir, wait_for

CONTENT = "Subject: s\r\n\r\nbody\r\n"


class SqlPathsTest(DbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.q("SELECT mta.suppress('Ann@Sup.Example', NULL, 'hard bounce', 'bounce')")
        cls.q("SELECT mta.suppress('@blocked.example', NULL, 'domain gone')")
        cls.q("SELECT mta.suppress('t@scoped.example', 'tenantA', 'tenant list', 'unsubscribe')")
        cls.q("SELECT mta.suppress('old@sup.example', NULL, 'old', 'manual',"
              " now() - interval '1 minute')")
        cls.q("SELECT mta.suppress('new@sup.example', NULL, 'until later', 'manual',"
              " now() + interval '1 day')")

    def queued(self, rcpt):
        return self.q1("SELECT count(*) FROM mta.recipients WHERE rcpt = %s", (rcpt,))

    def bounces(self, rcpt):
        return self.q("SELECT dsn_action, dsn_status, bounce_cat, dsn_diag, message_id, rcpt_id,"
                      " job_id FROM mta.acct WHERE type = 'b' AND rcpt = %s", (rcpt,))

    def test_stored_form(self):
        self.assertEqual(self.q("SELECT address, scope, reason, source FROM mta.suppression"
                                " WHERE reason = 'hard bounce'"),
                         [("Ann@sup.example", None, "hard bounce", "bounce")])
        # add again: one entry, updated
        self.q("SELECT mta.suppress('Ann@SUP.example', NULL, 'hard bounce', 'bounce')")
        self.assertEqual(self.q1("SELECT count(*) FROM mta.suppression"
                                 " WHERE address = 'Ann@sup.example'"), 1)
        # named notation, as README shows it
        self.assertEqual(self.q1("SELECT mta.suppress('Named@X.Example', reason => 'r',"
                                 " scope => 'tenantN', expires => now() + interval '1 day')"),
                         "Named@x.example")
        self.assertTrue(self.q1("SELECT mta.suppressed(rcpt => 'Named@x.EXAMPLE',"
                                " job_id => 'tenantN-1')"))
        self.assertEqual(self.q1("SELECT mta.unsuppress(address => 'Named@x.example',"
                                 " scope => 'tenantN')"), 1)

    def test_enqueue_some_suppressed(self):
        mid = self.q1("SELECT mta.enqueue('s@sender.example',"
                      " ARRAY['Ann@SUP.example', 'bob@sup.example', 'x@Blocked.Example',"
                      "       'ann@sup.example'], %s, 'jobE')", (CONTENT,))
        self.assertIsNotNone(mid)
        self.assertEqual(self.q("SELECT rcpt FROM mta.recipients WHERE message_id = %s"
                                " ORDER BY id", (mid,)),
                         [("bob@sup.example",), ("ann@sup.example",)])  # local part as given
        b = self.bounces("Ann@SUP.example")
        self.assertEqual(len(b), 1)
        self.assertEqual(b[0][:3], ("failed", "5.7.1", "suppressed"))
        self.assertIn("hard bounce", b[0][3])
        self.assertIn("bounce", b[0][3])
        self.assertEqual(b[0][4:], (None, None, "jobE"))
        b = self.bounces("x@Blocked.Example")
        self.assertEqual(len(b), 1)
        self.assertIn("@blocked.example", b[0][3])
        self.assertEqual(self.q1("SELECT count(*) FROM mta.acct WHERE type = 'r'"
                                 " AND message_id = %s", (mid,)), 2)

    def test_enqueue_all_suppressed(self):
        before = self.q1("SELECT count(*) FROM mta.messages")
        self.assertIsNone(self.q1("SELECT mta.enqueue('s@sender.example', ARRAY['y@blocked.example'],"
                                  " %s)", (CONTENT,)))
        self.assertIsNone(self.q1("SELECT mta.enqueue('s@sender.example', ARRAY['y2@blocked.example',"
                                  " 'Ann@sup.example'], %s::bytea)", (CONTENT.encode(),)))
        self.assertEqual(self.q1("SELECT count(*) FROM mta.messages"), before)
        for r in ("y@blocked.example", "y2@blocked.example"):
            self.assertEqual(len(self.bounces(r)), 1)
            self.assertEqual(self.queued(r), 0)

    def test_enqueue_many_recipients(self):
        """One call with 20,000 recipients, every tenth suppressed."""
        self.q("INSERT INTO mta.suppression (address, source)"
               " SELECT 'm' || i || '@many.example', 'import' FROM generate_series(0, 19999, 10) i")
        mid = self.q1("SELECT mta.enqueue('s@sender.example',"
                      " ARRAY(SELECT 'm' || i || '@Many.example' FROM generate_series(0, 19999) i),"
                      " %s, 'jobMany')", (CONTENT,))
        self.assertEqual(self.q1("SELECT count(*) FROM mta.recipients WHERE message_id = %s",
                                 (mid,)), 18000)
        self.assertEqual(self.q("SELECT count(*), count(DISTINCT rcpt) FROM mta.acct"
                                " WHERE type = 'b' AND job_id = 'jobMany'"), [(2000, 2000)])
        self.assertEqual(self.q1("SELECT count(*) FROM mta.recipients r JOIN mta.suppression s"
                                 " ON s.address = mta.suppression_key(r.rcpt, r.domain)"
                                 " WHERE r.message_id = %s", (mid,)), 0)

    def test_scope(self):
        for job, expect_queued in (("tenantA-42", 0), ("tenantA", 0), ("tenantB-1", 1),
                                   (None, 1)):
            before = self.queued("t@scoped.example")
            self.q("SELECT mta.enqueue('s@sender.example', ARRAY['t@scoped.example'], %s, %s)",
                   (CONTENT, job))
            self.assertEqual(self.queued("t@scoped.example") - before, expect_queued, job)
        self.assertEqual(len(self.bounces("t@scoped.example")), 2)
        self.assertTrue(self.q1("SELECT mta.suppressed('t@scoped.example', 'tenantA-9')"))
        self.assertFalse(self.q1("SELECT mta.suppressed('t@scoped.example', NULL)"))

    def test_expiry(self):
        self.q("SELECT mta.enqueue('s@sender.example', ARRAY['old@sup.example',"
               " 'new@sup.example'], %s)", (CONTENT,))
        self.assertEqual(self.queued("old@sup.example"), 1)
        self.assertEqual(self.queued("new@sup.example"), 0)
        self.assertEqual(len(self.bounces("old@sup.example")), 0)
        self.assertEqual(len(self.bounces("new@sup.example")), 1)

    def test_enqueue_batch_both_paths(self):
        # set path: plain addresses only; per-message path: a quoted local part
        for tag, ok in (("set", "plain-set@ok.example"), ("per", '"q u-per"@ok.example')):
            rows = self.q(
                "SELECT ord, id, err_state FROM mta.enqueue_batch("
                " ARRAY['s@sender.example', 's@sender.example', 's@sender.example'],"
                " ARRAY[1, 2, 1],"
                " ARRAY[%s, %s, %s, %s],"
                " ARRAY[%s, %s, %s]::bytea[], ARRAY[NULL, NULL, NULL]::text[],"
                " ARRAY[NULL, NULL, NULL]::text[], ARRAY[NULL, NULL, NULL]::text[],"
                " ARRAY[NULL, NULL, NULL]::text[])",
                ("z-%s@blocked.example" % tag, ok,
                 "w-%s@blocked.example" % tag, "v-%s@ok.example" % tag,
                 CONTENT.encode(), CONTENT.encode(), CONTENT.encode()))
            self.assertEqual([(r[0], r[1] is None, r[2]) for r in rows],
                             [(1, True, None), (2, False, None), (3, False, None)], tag)
            self.assertEqual(self.q("SELECT rcpt FROM mta.recipients WHERE message_id = %s",
                                    (rows[1][1],)), [(ok,)])
            for r in ("z-%s@blocked.example" % tag, "w-%s@blocked.example" % tag):
                self.assertEqual(len(self.bounces(r)), 1, r)
                self.assertEqual(self.queued(r), 0, r)

    def test_submit_insert_select(self):
        self.q("INSERT INTO mta.submit (mail_from, rcpt_to, content, job_id)"
               " SELECT 's@sender.example', r, %s, 'tenantA-ins'"
               " FROM unnest(ARRAY['a@ins.example', 't@scoped.example', 'q@blocked.example',"
               "                   'Ann@sup.example']) r", (CONTENT,))
        self.assertEqual(self.q("SELECT rcpt FROM mta.recipients WHERE job_id = 'tenantA-ins'"),
                         [("a@ins.example",)])
        self.assertEqual(self.q("SELECT rcpt, bounce_cat FROM mta.acct WHERE type = 'b'"
                                " AND job_id = 'tenantA-ins' ORDER BY rcpt"),
                         [("Ann@sup.example", "suppressed"), ("q@blocked.example", "suppressed"),
                          ("t@scoped.example", "suppressed")])
        # every row suppressed: no message at all
        before = self.q1("SELECT count(*) FROM mta.messages")
        self.q("INSERT INTO mta.submit (mail_from, rcpt_to, content)"
               " VALUES ('s@sender.example', 'only@blocked.example', 'x')")
        self.assertEqual(self.q1("SELECT count(*) FROM mta.messages"), before)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.submit"), 0)

    def test_submit_copy_100k_10pct(self):
        """One COPY statement of 100,000 rows, every tenth suppressed (among
        a list of 110,000 entries): 90,000 queued, 10,000 with one 'b' row."""
        n = 100000
        self.q("SELECT mta.suppress('c%d@copy.example')" % 0)
        self.q("INSERT INTO mta.suppression (address, reason, source)"
               " SELECT 'c' || i || '@copy.example', 'list', 'import'"
               " FROM generate_series(10, %s, 10) i" % (n - 1))
        self.q("INSERT INTO mta.suppression (address, source)"
               " SELECT 'other' || i || '@elsewhere.example', 'import'"
               " FROM generate_series(1, 100000) i")
        self.q("ANALYZE mta.suppression")
        buf = io.StringIO()
        for i in range(n):
            buf.write("bulk@sender.example\tc%d@Copy.Example\tSubject: %d\\r\\n\\r\\nb\\r\\n"
                      "\tcopy10\n" % (i, i % 7))
        buf.seek(0)
        with self.conn.cursor() as cur:
            cur.copy_expert("COPY mta.submit (mail_from, rcpt_to, content, job_id) FROM STDIN",
                            buf)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.recipients WHERE job_id = 'copy10'"),
                         n - n // 10)
        self.assertEqual(self.q("SELECT count(*), count(DISTINCT rcpt),"
                                " count(*) FILTER (WHERE bounce_cat = 'suppressed'"
                                "  AND dsn_status = '5.7.1')"
                                " FROM mta.acct WHERE type = 'b' AND job_id = 'copy10'"),
                         [(n // 10, n // 10, n // 10)])
        self.assertEqual(self.q1("SELECT count(*) FROM mta.acct a JOIN mta.recipients r"
                                 " ON r.rcpt = a.rcpt WHERE a.type = 'b' AND a.job_id = 'copy10'"
                                 " AND r.job_id = 'copy10'"), 0)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.acct WHERE type = 'r'"
                                 " AND job_id = 'copy10'"), n - n // 10)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.acct WHERE job_id = 'copy10'"
                                 " AND type = 'b' AND right(split_part(rcpt, '@', 1), 1) <> '0'"),
                         0)

    def test_bad_input(self):
        for sql, msg in (
                ("SELECT mta.suppress('nope')", "no '@'"),
                ("SELECT mta.suppress('@bad domain')", "not a valid domain"),
                ("SELECT mta.suppress('a@b.example', '')", "scope"),
                ("SELECT mta.suppress('a@b.example', NULL, NULL, 'spam')", "invalid source"),
                ("SELECT mta.suppress(E'a\\r\\n@b.example')", "CR or LF"),
                ("SELECT mta.unsuppress('x')", "no '@'")):
            with self.assertRaises(psycopg2.Error, msg=sql) as cm:
                self.q(sql)
            self.assertIn(msg, str(cm.exception), sql)
            self.assertEqual(cm.exception.pgcode, "22023", sql)


class RolesTest(DbTestCase):
    def test_roles(self):
        self.q("SELECT mta.suppress('r@roles.example', NULL, 'role test')")
        inject = self.pg.connect(self.pg.role_dsn("mta_inject"))
        monitor = self.pg.connect(self.pg.role_dsn("mta_monitor"))
        node = self.pg.connect(self.pg.role_dsn("mta_node"))
        admin = self.pg.connect(self.pg.role_dsn("mta_admin"))

        def run(conn, sql, args=None):
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return cur.fetchall() if cur.description else None

        for conn in (inject, node):
            for sql in ("SELECT * FROM mta.suppression",
                        "INSERT INTO mta.suppression (address) VALUES ('x@y.example')",
                        "DELETE FROM mta.suppression",
                        "SELECT mta.suppress('x@y.example')",
                        "SELECT mta.unsuppress('r@roles.example')",
                        "SELECT mta.suppressed('r@roles.example')"):
                with self.assertRaises(psycopg2.errors.InsufficientPrivilege, msg=sql):
                    run(conn, sql)
        # mta_inject still enqueues, and the check applies inside enqueue
        self.assertIsNone(run(inject, "SELECT mta.enqueue('s@sender.example',"
                                      " ARRAY['r@roles.example'], 'x')")[0][0])
        run(inject, "INSERT INTO mta.submit (mail_from, rcpt_to, content)"
                    " VALUES ('s@sender.example', 'r@roles.example', 'y')")
        self.assertEqual(self.q1("SELECT count(*) FROM mta.acct WHERE type = 'b'"
                                 " AND rcpt = 'r@roles.example'"), 2)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.recipients"
                                 " WHERE rcpt = 'r@roles.example'"), 0)
        # mta_monitor reads, never writes
        self.assertEqual(run(monitor, "SELECT address, reason FROM mta.suppression"),
                         [("r@roles.example", "role test")])
        self.assertTrue(run(monitor, "SELECT mta.suppressed('r@roles.example')")[0][0])
        for sql in ("INSERT INTO mta.suppression (address) VALUES ('x@y.example')",
                    "SELECT mta.suppress('x@y.example')"):
            with self.assertRaises(psycopg2.errors.InsufficientPrivilege, msg=sql):
                run(monitor, sql)
        # mta_admin manages
        run(admin, "SELECT mta.suppress('a@roles.example')")
        self.assertEqual(run(admin, "SELECT mta.unsuppress('a@roles.example')"), [(1,)])
        for c in (inject, monitor, node, admin):
            c.close()


class CliTest(DbTestCase):
    def cli(self, *args, stdin=None):
        return subprocess.run([PGMTA, "--db", self.pg.dsn, "suppress"] + list(args),
                              capture_output=True, text=True, input=stdin, timeout=60)

    def test_add_list_remove(self):
        r = self.cli("add", "Cli@Example.COM", "--reason", "asked", "--expires", "30d")
        self.assertEqual((r.returncode, r.stdout), (0, "suppressed Cli@example.com\n"), r.stderr)
        r = self.cli("add", "@cli-domain.example", "--scope", "tenantC", "--source", "complaint")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.cli("list", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = {x["address"]: x for x in json.loads(r.stdout)}
        self.assertEqual(rows["Cli@example.com"]["reason"], "asked")
        self.assertIsNotNone(rows["Cli@example.com"]["expires"])
        self.assertEqual(rows["Cli@example.com"]["expired"], False)
        self.assertEqual(rows["@cli-domain.example"]["scope"], "tenantC")
        self.assertEqual(rows["@cli-domain.example"]["source"], "complaint")
        r = self.cli("list", "--scope", "tenantC")
        self.assertIn("@cli-domain.example", r.stdout)
        self.assertNotIn("Cli@example.com", r.stdout)
        self.assertTrue(self.q1("SELECT mta.suppressed('x@CLI-domain.example', 'tenantC-1')"))
        # remove: scope must match
        r = self.cli("remove", "@cli-domain.example")
        self.assertEqual(r.returncode, 1)
        self.assertIn("not suppressed globally", r.stderr)
        r = self.cli("remove", "@cli-domain.example", "--scope", "tenantC")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(self.q1("SELECT mta.suppressed('x@cli-domain.example', 'tenantC-1')"))

    def test_bad_input(self):
        for args, code, msg in (
                (("add", "not-an-address"), 1, "no '@'"),
                (("add", "a@b.example", "--source", "spam"), 1, "invalid source"),
                (("add", "a@b.example", "--expires", "tomorrowish"), 1, "timestamp"),
                (("add",), 2, "needs exactly one argument"),
                (("frobnicate", "x"), 2, "unknown action"),
                (("list", "extra"), 2, "takes no argument"),
                (("remove", "a@b.example", "--reason", "r"), 2, "--reason"),
                (("import", "/nonexistent/file"), 1, "No such file"),
                ((), 2, "what?")):
            r = self.cli(*args)
            self.assertEqual(r.returncode, code, (args, r.stderr))
            self.assertIn(msg, r.stderr, args)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.suppression"
                                 " WHERE address = 'a@b.example'"), 0)

    def test_import(self):
        d = tmpdir()
        good = os.path.join(d, "good.csv")
        with open(good, "w") as f:
            f.write("address,reason\n"
                    "# a comment\n"
                    "imp1@Import.Example\n"
                    "\n"
                    "imp2@import.example, complained\n"
                    "\"imp3@import.example\",\"reason, with comma and \"\"quotes\"\"\"\r\n"
                    "@whole-import.example,domain\n"
                    "imp1@import.example,again\n")
        r = self.cli("import", good, "--reason", "default reason")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "imported 5 lines: 4 new, 0 already listed\n")
        self.assertEqual(self.q("SELECT address, reason, source FROM mta.suppression"
                                " WHERE address LIKE '%%import.example' ORDER BY address"),
                         [("@whole-import.example", "domain", "import"),
                          ("imp1@import.example", "again", "import"),
                          ("imp2@import.example", "complained", "import"),
                          ("imp3@import.example", 'reason, with comma and "quotes"', "import")])
        # idempotent
        r = self.cli("import", good)
        self.assertEqual(r.stdout, "imported 5 lines: 0 new, 4 already listed\n")
        self.assertEqual(self.q1("SELECT count(*) FROM mta.suppression"
                                 " WHERE address LIKE '%%import.example'"), 4)
        # from stdin, scoped
        r = self.cli("import", "-", "--scope", "tenantI", stdin="s1@import.example\n")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.q1("SELECT scope FROM mta.suppression"
                                 " WHERE address = 's1@import.example'"), "tenantI")
        # a bad line stores nothing and names the line
        bad = os.path.join(d, "bad.txt")
        with open(bad, "w") as f:
            f.write("ok1@bad-import.example\nnot an address\nok2@bad-import.example\n")
        r = self.cli("import", bad)
        self.assertEqual(r.returncode, 1)
        self.assertIn("line 2", r.stderr)
        with open(bad, "w") as f:
            f.write("ok1@bad-import.example\n\"unclosed@bad-import.example,x\n")
        r = self.cli("import", bad)
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad.txt:2: bad CSV", r.stderr)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.suppression"
                                 " WHERE address LIKE '%%bad-import.example'"), 0)

    def test_import_large(self):
        d = tmpdir()
        path = os.path.join(d, "large.txt")
        with open(path, "w") as f:
            for i in range(50000):
                f.write("bulk%d@large-import.example,r%d\n" % (i, i % 3))
        r = self.cli("import", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.suppression"
                                 " WHERE address LIKE '%%@large-import.example'"), 50000)


DOMAINS = ("ok.test", "blocked.test")
INJECT = "inj3ct-supp"


class NodePathsTest(unittest.TestCase):
    """The SMTP listener and the HTTP injection API of a real node."""

    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        for d in DOMAINS:
            cls.pg.query("SELECT mta.pause_queue(%s)", (d,))
        cls.pg.query("SELECT mta.suppress('@blocked.test', NULL, 'test domain')")
        cls.pg.query("SELECT mta.suppress('gone@ok.test', NULL, 'left', 'unsubscribe')")
        cls.smtp, cls.http, dead = free_port(), free_port(), free_port()
        cls.node = Pgmtad(cls.pg, domains=['{ name = "%s"; route = "127.0.0.1:%d"; }'
                                           % (d, dead) for d in DOMAINS], extra=(
            'listen = { smtp = [ "127.0.0.1:%d" ]; http = "127.0.0.1:%d"; };\n'
            'http = { token = "adm1n"; inject-tokens = [ "%s" ]; };\n'
            % (cls.smtp, cls.http, INJECT)))
        cls.node.wait_accepting([cls.smtp, cls.http])

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
        cls.pg.stop()

    def rows(self, job):
        return (self.pg.query("SELECT rcpt FROM mta.recipients WHERE job_id = %s ORDER BY rcpt",
                              (job,)),
                self.pg.query("SELECT rcpt, bounce_cat, dsn_status FROM mta.acct WHERE type = 'b'"
                              " AND job_id = %s ORDER BY rcpt", (job,)))

    def test_smtp(self):
        """Accepted (250), the suppressed recipients bounced in the same
        commit: see README, Suppression, for why RCPT is not refused."""
        with smtplib.SMTP("127.0.0.1", self.smtp, timeout=20) as c:
            c.ehlo()
            c.mail("s@sender.test")
            for r in ("a@ok.test", "gone@ok.test", "b@blocked.test"):
                self.assertEqual(c.rcpt(r)[0], 250)
            code, msg = c.data(b"X-Job: smtpjob\r\nSubject: x\r\n\r\nx\r\n")
            self.assertEqual(code, 250, msg)
            self.assertIn(b"queued as", msg)
            c.mail("s@sender.test")
            c.rcpt("c@blocked.test")
            code, msg = c.data(b"X-Job: smtpjob2\r\nSubject: y\r\n\r\ny\r\n")
            self.assertEqual(code, 250, msg)
            self.assertIn(b"suppressed", msg)
        self.assertEqual(self.rows("smtpjob"),
                         ([("a@ok.test",)], [("b@blocked.test", "suppressed", "5.7.1"),
                                              ("gone@ok.test", "suppressed", "5.7.1")]))
        self.assertEqual(self.rows("smtpjob2"), ([], [("c@blocked.test", "suppressed", "5.7.1")]))

    def post(self, body):
        # The listener accepts before its database connection is up; until
        # then a request gets 503 with nothing stored, and is sent again.
        deadline = time.monotonic() + 20
        while True:
            c = http.client.HTTPConnection("127.0.0.1", self.http, timeout=30)
            try:
                c.request("POST", "/api/inject/v1", body=json.dumps(body).encode(),
                          headers={"Authorization": "Bearer " + INJECT,
                                   "Content-Type": "application/json"})
                r = c.getresponse()
                status, reply = r.status, json.loads(r.read())
            finally:
                c.close()
            if status != 503 or time.monotonic() > deadline:
                return status, reply
            time.sleep(0.2)

    def test_http(self):
        st, r = self.post({"envelope_sender": "s@sender.test", "job_id": "httpjob",
                           "content": "Subject: h\r\n\r\nh\r\n",
                           "recipients": [{"email": "h1@ok.test"}, {"email": "gone@ok.test"},
                                          {"email": "h2@blocked.test"}, {"email": "h3@ok.test"}]})
        self.assertEqual(st, 200, r)
        self.assertEqual((r["success_count"], r["fail_count"]), (2, 2))
        self.assertEqual(r["failed_recipients"], ["gone@ok.test", "h2@blocked.test"])
        self.assertEqual(r["errors"], ["recipients[1]: suppressed", "recipients[2]: suppressed"])
        out = {x["email"]: x for x in r["recipients"]}
        self.assertIsInstance(out["h1@ok.test"]["message_id"], int)
        self.assertEqual(out["h1@ok.test"]["message_id"], out["h3@ok.test"]["message_id"])
        self.assertEqual(out["gone@ok.test"], {"email": "gone@ok.test", "message_id": None,
                                               "suppressed": True})
        self.assertEqual(self.rows("httpjob"),
                         ([("h1@ok.test",), ("h3@ok.test",)],
                          [("gone@ok.test", "suppressed", "5.7.1"),
                           ("h2@blocked.test", "suppressed", "5.7.1")]))
        # templated: one message per recipient; a wholly suppressed one has none
        st, r = self.post({"envelope_sender": "s@sender.test", "job_id": "httpjob2",
                           "content": "Subject: {{ name }}\r\n\r\nx\r\n",
                           "recipients": [{"email": "t1@blocked.test", "name": "T1"},
                                          {"email": "t2@ok.test", "name": "T2"}]})
        self.assertEqual(st, 200, r)
        self.assertEqual([x["message_id"] is None for x in r["recipients"]], [True, False])
        self.assertEqual(r["failed_recipients"], ["t1@blocked.test"])


if __name__ == "__main__":
    main()
