"""pgmta show, pause, resume, delete and acct export against a real
PostgreSQL holding mail enqueued with mta.enqueue; usage and error exits."""
import csv
import io
import json
import os
import subprocess
import unittest

from pgmta_test import PgServer, PGMTA, main

CSV_HEADER = ("type,timeLogged,timeQueued,orig,rcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,"
              "bounceCat,srcType,srcMta,dlvSourceIp,dlvDestinationIp,dlvSize,vmta,jobId,"
              "envId,queue,pipe,node,messageId,attempt,tlsProtocol,tlsCipher,meta,dsnOrcpt,"
              "tlsPolicy,tlsFailure,tlsPolicyDomain,reportingMta,feedbackType,userAgent,"
              "arfVersion,arfOriginalMailFrom,arfOriginalRcptTo,arfArrivalDate,arfSourceIp,"
              "arfReportedDomain,arfMessageId,header_Message-Id")

CONTENT = "From: s@example.org\r\nSubject: test\r\n\r\nbody\r\n"
# a job id holds no control characters (mta.check_job_id): quotes, a comma
# and a backslash are what the CSV and JSON output must quote
ODD_JOB = 'job "quoted", comma\\back line \u00e9'


def run(*args, env=None):
    full = dict(os.environ)
    full.pop("PGMTA_DATABASE_URL", None)
    full.update(env or {})
    return subprocess.run([PGMTA] + list(args), capture_output=True, text=True, env=full,
                          timeout=120)


class AdminTest(unittest.TestCase):
    def setUp(self):
        self.pg = PgServer()
        self.enqueue(["a@alpha.test", "b@alpha.test"], job="job-1")
        self.enqueue(["c@beta.test"], job="job-2")
        self.enqueue(["d%d@big.test" % i for i in range(5)], job="job-big")
        self.enqueue(["e@gamma.test"], vmta="vmta-a", job=ODD_JOB)
        self.enqueue(["f@gamma.test"], vmta="vmta-b")

    def enqueue(self, rcpts, job=None, vmta=None):
        return self.pg.scalar("SELECT mta.enqueue(%s, %s, %s, job_id => %s, vmta => %s)",
                              ("s@example.org", rcpts, CONTENT, job, vmta))

    def cli(self, *args, rc=0):
        r = run(*args, "--db", self.pg.dsn)
        self.assertEqual(r.returncode, rc, "pgmta %s: %s%s" % (" ".join(args), r.stdout,
                                                                r.stderr))
        return r

    def queues(self):
        r = self.cli("show", "queues", "--json")
        return {(q["domain"], q["vmta"]): q for q in json.loads(r.stdout)}

    # show

    def test_show_queues_table_and_json(self):
        r = self.cli("show", "queues")
        lines = r.stdout.splitlines()
        for col in ("domain", "vmta", "pipe", "queued", "ready", "paused"):
            self.assertIn(col, lines[0].split())
        alpha = [l for l in lines if l.startswith("alpha.test")]
        self.assertEqual(len(alpha), 1, r.stdout)
        self.assertIn("2", alpha[0].split())
        q = self.queues()
        self.assertEqual(q[("alpha.test", None)]["queued"], 2)
        self.assertEqual(q[("big.test", None)]["queued"], 5)
        self.assertEqual(q[("gamma.test", "vmta-a")]["queued"], 1)
        self.assertIs(q[("alpha.test", None)]["paused"], False)
        # The global option form gives the same.
        r = run("--db", self.pg.dsn, "--json", "show", "queues")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(len(json.loads(r.stdout)), len(q))

    def test_show_topqueues_orders_by_queued(self):
        r = self.cli("show", "topqueues", "--json")
        rows = json.loads(r.stdout)
        self.assertEqual(rows[0]["domain"], "big.test")
        self.assertEqual([x["queued"] for x in rows], sorted((x["queued"] for x in rows),
                                                             reverse=True))
        for i in range(25):
            self.enqueue(["x@many%d.test" % i])
        self.assertEqual(len(json.loads(self.cli("show", "topqueues", "--json").stdout)), 20)
        self.assertEqual(len(self.cli("show", "topqueues").stdout.splitlines()), 21)

    def test_show_status(self):
        self.pg.query("SELECT mta.node_register('node-x', 'bulk', 0, 4242, 'host-x')")
        rows = json.loads(self.cli("show", "status", "--json").stdout)
        self.assertEqual(len(rows), 1)
        s = rows[0]
        self.assertEqual(s["queued"], 10)
        self.assertEqual(s["ready"], 10)
        self.assertEqual(s["in_flight"], 0)
        self.assertEqual(s["nodes_alive"], 1)
        self.assertEqual(s["delivered_1h"], 0)
        self.assertEqual(s["bounced_1h"], 0)
        self.cli("delete", "--queue", "beta.test")
        s = json.loads(self.cli("show", "status", "--json").stdout)[0]
        self.assertEqual(s["queued"], 9)
        self.assertEqual(s["bounced_1h"], 1)
        text = self.cli("show", "status").stdout
        self.assertRegex(text, r"(?m)^queued\s+9$")
        self.assertRegex(text, r"(?m)^nodes_alive\s+1$")

    def test_show_nodes_and_jobs(self):
        self.pg.query("SELECT mta.node_register('node-x', 'bulk', 0, 4242, 'host-x')")
        nodes = json.loads(self.cli("show", "nodes", "--json").stdout)
        self.assertEqual([n["name"] for n in nodes], ["node-x"])
        self.assertIs(nodes[0]["alive"], True)
        self.assertIn("node-x", self.cli("show", "nodes").stdout)
        jobs = {j["job_id"]: j for j in json.loads(self.cli("show", "jobs", "--json").stdout)}
        self.assertEqual(jobs["job-big"]["queued"], 5)
        # Quotes, backslashes, newlines and control characters survive JSON.
        self.assertIn(ODD_JOB, jobs)
        table = self.cli("show", "jobs").stdout
        self.assertIn("job-big", table)
        self.assertNotIn("\x01", table)

    def test_show_json_of_empty_view(self):
        pg = PgServer()
        r = run("show", "queues", "--json", "--db", pg.dsn)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), [])

    # pause, resume, delete

    def test_pause_resume_queue(self):
        r = self.cli("pause", "queue", "alpha.test")
        self.assertIn("paused queue alpha.test", r.stdout)
        q = self.queues()
        self.assertIs(q[("alpha.test", None)]["paused"], True)
        self.assertIs(q[("beta.test", None)]["paused"], False)
        self.assertEqual(q[("alpha.test", None)]["queued"], 2)
        ready = [x[0] for x in self.pg.query("SELECT domain FROM mta.ready_queues('bulk', 100)")]
        self.assertNotIn("alpha.test", ready)
        self.cli("resume", "queue", "alpha.test")
        self.assertIs(self.queues()[("alpha.test", None)]["paused"], False)

        self.cli("pause", "queue", "gamma.test/vmta-a")
        q = self.queues()
        self.assertIs(q[("gamma.test", "vmta-a")]["paused"], True)
        self.assertIs(q[("gamma.test", "vmta-b")]["paused"], False)
        self.cli("resume", "queue", "gamma.test/vmta-a")
        self.assertIs(self.queues()[("gamma.test", "vmta-a")]["paused"], False)

    def test_pause_resume_job(self):
        r = self.cli("pause", "job", "job-big")
        self.assertIn("paused job job-big", r.stdout)
        jobs = {j["job_id"]: j for j in json.loads(self.cli("show", "jobs", "--json").stdout)}
        self.assertIs(jobs["job-big"]["paused"], True)
        self.assertIs(jobs["job-1"]["paused"], False)
        ready = [x[0] for x in self.pg.query("SELECT domain FROM mta.ready_queues('bulk', 100)")]
        self.assertNotIn("big.test", ready)
        self.assertIn("alpha.test", ready)
        self.cli("resume", "job", "job-big")
        jobs = {j["job_id"]: j for j in json.loads(self.cli("show", "jobs", "--json").stdout)}
        self.assertIs(jobs["job-big"]["paused"], False)

    def test_delete_queue_and_job(self):
        r = self.cli("delete", "--queue", "alpha.test")
        self.assertEqual(r.stdout.strip(), "deleted 2 recipients")
        self.assertEqual(self.pg.scalar(
            "SELECT count(*) FROM mta.recipients WHERE domain = 'alpha.test'"), 0)
        self.assertEqual(self.pg.scalar(
            "SELECT count(*) FROM mta.acct WHERE type = 'b' AND rcpt LIKE '%@alpha.test' "
            "AND dsn_diag LIKE '%deleted by administrator%'"), 2)
        r = self.cli("delete", "--queue", "gamma.test/vmta-b")
        self.assertEqual(r.stdout.strip(), "deleted 1 recipient")
        self.assertEqual(self.pg.scalar(
            "SELECT count(*) FROM mta.recipients WHERE domain = 'gamma.test'"), 1)
        r = self.cli("delete", "--job", "job-big")
        self.assertEqual(r.stdout.strip(), "deleted 5 recipients")
        r = self.cli("delete", "--job", "job-big")
        self.assertEqual(r.stdout.strip(), "deleted 0 recipients")
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipients"), 2)

    def test_injection_looking_arguments_are_data(self):
        evil = "x'); DROP TABLE mta.acct; --"
        run("pause", "queue", evil, "--db", self.pg.dsn)
        run("delete", "--job", evil, "--db", self.pg.dsn)
        run("acct", "export", "--since", evil, "--db", self.pg.dsn)
        self.assertIsNotNone(self.pg.scalar("SELECT to_regclass('mta.acct')"))
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipients"), 10)

    # acct export

    def export(self, *args, rc=0):
        return self.cli("acct", "export", *args, rc=rc)

    def test_acct_export_csv(self):
        r = self.export("--since", "1h")
        lines = r.stdout.split("\n")
        self.assertEqual(lines[0], CSV_HEADER)
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        self.assertEqual(len(rows), 10)
        self.assertEqual({x["type"] for x in rows}, {"r"})
        self.assertEqual(sorted(x["rcpt"] for x in rows)[:2], ["a@alpha.test", "b@alpha.test"])
        odd = [x for x in rows if x["rcpt"] == "e@gamma.test"][0]
        self.assertEqual(odd["jobId"], ODD_JOB)  # quoting round-trips
        self.assertEqual(odd["vmta"], "vmta-a")
        self.assertEqual(odd["orig"], "s@example.org")
        times = [x["timeLogged"] for x in rows]
        self.assertEqual(times, sorted(times))
        self.assertEqual(self.export("--since", "1h", "--format", "csv").stdout, r.stdout)

    def test_acct_export_json(self):
        self.cli("delete", "--queue", "beta.test")
        r = self.export("--since", "30m", "--format", "json")
        rows = json.loads(r.stdout)
        self.assertEqual(len(rows), 11)
        self.assertEqual(list(rows[0].keys()), CSV_HEADER.split(","))
        b = [x for x in rows if x["type"] == "b"]
        self.assertEqual(len(b), 1)
        self.assertEqual(b[0]["rcpt"], "c@beta.test")
        self.assertEqual(b[0]["dsnStatus"], "5.0.0")
        self.assertIsInstance(b[0]["messageId"], int)
        self.assertIn(ODD_JOB, [x["jobId"] for x in rows])
        r = self.export("--since", "30m", "--format", "json", "--type", "b")
        self.assertEqual([x["rcpt"] for x in json.loads(r.stdout)], ["c@beta.test"])
        r = self.export("--since", "30m", "--format", "json", "--type", "d")
        self.assertEqual(json.loads(r.stdout), [])

    def test_acct_export_report_and_tls_columns(self):
        """The columns added after meta: a feedback report's fields, a TLS-RPT
        outcome, ORCPT and the Message-ID header, in CSV and JSON."""
        self.pg.query("INSERT INTO mta.acct (type, time_logged, rcpt, orig, queue, pipe,"
                      " feedback_type, user_agent, arf_source_ip, reporting_mta)"
                      " VALUES ('f', now(), 'fb@fbl.test', 's@example.org', 'fbl.test', 'bulk',"
                      " 'abuse', 'FBL/1.0', '192.0.2.7', 'fbl.example')")
        self.pg.query("INSERT INTO mta.acct (type, time_logged, rcpt, orig, queue, pipe,"
                      " tls_policy, tls_failure, tls_policy_domain, orcpt, header_message_id)"
                      " VALUES ('t', now(), 'tls@sts.test', 's@example.org', 'sts.test', 'bulk',"
                      " 'sts', 'certificate-expired', 'sts.test', 'rfc822;o@sts.test',"
                      " '<m1@example.org>')")
        rows = {x["rcpt"]: x for x in csv.DictReader(io.StringIO(
            self.export("--since", "1h", "--type", "f,t").stdout))}
        self.assertEqual(set(rows), {"fb@fbl.test", "tls@sts.test"})
        f = rows["fb@fbl.test"]
        self.assertEqual((f["type"], f["feedbackType"], f["userAgent"], f["arfSourceIp"],
                          f["reportingMta"], f["tlsPolicy"]),
                         ("f", "abuse", "FBL/1.0", "192.0.2.7", "fbl.example", ""))
        t = rows["tls@sts.test"]
        self.assertEqual((t["tlsPolicy"], t["tlsFailure"], t["tlsPolicyDomain"], t["dsnOrcpt"],
                          t["header_Message-Id"]),
                         ("sts", "certificate-expired", "sts.test", "rfc822;o@sts.test",
                          "<m1@example.org>"))
        j = json.loads(self.export("--since", "1h", "--type", "t", "--format", "json").stdout)
        self.assertEqual([(x["tlsFailure"], x["feedbackType"]) for x in j],
                         [("certificate-expired", None)])

    def test_acct_export_time_window(self):
        self.pg.query("INSERT INTO mta.acct (type, time_logged, rcpt, orig, queue, pipe) "
                      "VALUES ('d', now() - interval '3 hours', 'old@old.test', "
                      "'s@example.org', 'old.test', 'bulk')")
        rcpts = lambda r: [x["rcpt"] for x in csv.DictReader(io.StringIO(r.stdout))]
        self.assertNotIn("old@old.test", rcpts(self.export("--since", "2h")))
        got = rcpts(self.export("--since", "4h"))
        self.assertEqual(got[0], "old@old.test")
        self.assertEqual(len(got), 11)
        self.assertEqual(rcpts(self.export("--since", "4h", "--until", "1h")), ["old@old.test"])
        self.assertEqual(rcpts(self.export("--since", "1d", "--until", "2h30m")),
                         ["old@old.test"])
        # Absolute timestamps.
        since = self.pg.scalar("SELECT (now() - interval '5 hours')::text")
        until = self.pg.scalar("SELECT (now() - interval '2 hours')::text")
        self.assertEqual(rcpts(self.export("--since", since, "--until", until)),
                         ["old@old.test"])
        self.assertEqual(rcpts(self.export("--since", "2999-01-01")), [])
        self.assertEqual(self.export("--since", "2999-01-01").stdout, CSV_HEADER + "\n")

    def test_acct_export_streams_many_rows(self):
        self.pg.query("INSERT INTO mta.acct (type, time_logged, rcpt, orig, queue, pipe, "
                      "dlv_size, attempt) SELECT 'd', now() - i * interval '1 ms', "
                      "'r' || i || '@bulk.test', 's@example.org', 'bulk.test', 'bulk', i, 1 "
                      "FROM generate_series(1, 12345) i")
        r = self.export("--since", "1h", "--type", "d")
        rows = list(csv.DictReader(io.StringIO(r.stdout)))
        self.assertEqual(len(rows), 12345)
        self.assertEqual(rows[0]["rcpt"], "r12345@bulk.test")
        self.assertEqual(rows[-1]["rcpt"], "r1@bulk.test")
        rows = json.loads(self.export("--since", "1h", "--type", "d,b", "--format",
                                      "json").stdout)
        self.assertEqual(len(rows), 12345)
        self.assertEqual(rows[0]["dlvSize"], 12345)

    def test_acct_export_bad_arguments(self):
        r = self.export("--since", "yesterday-ish", rc=2)
        self.assertIn("--since", r.stderr)
        r = self.export("--since", "1h", "--until", "bogus", rc=2)
        self.assertIn("--until", r.stderr)
        self.export("--since", "1h", "--format", "xml", rc=2)
        self.export("--since", "1h", "--type", "x", rc=2)
        r = self.export(rc=2)
        self.assertIn("--since", r.stderr)
        self.cli("acct", "import", "--since", "1h", rc=2)


class UsageTest(unittest.TestCase):
    def test_help_and_usage_errors(self):
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        for word in ("migrate", "show", "pause", "resume", "delete", "acct export",
                     "PGMTA_DATABASE_URL", "PGMTA_NO_SOURCE_TREE"):
            self.assertIn(word, r.stdout)
        for cmd in (["show"], ["pause"], ["resume"], ["delete"], ["acct"], ["migrate"]):
            r = run(*cmd, "--help")
            self.assertEqual(r.returncode, 0, cmd)
            self.assertIn("usage: pgmta " + cmd[0], r.stdout)
        for argv in ([], ["bogus"], ["--bogus"], ["show"], ["show", "bogus"],
                     ["show", "queues", "extra"], ["pause"], ["pause", "queue"],
                     ["pause", "thing", "x"], ["pause", "queue", "/vmta"],
                     ["resume", "job"], ["delete"], ["delete", "--queue", "a", "--job", "b"],
                     ["delete", "--queue", "a/"], ["acct"], ["show", "queues", "--bogus"]):
            r = run(*argv, env={"PGMTA_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
            self.assertEqual(r.returncode, 2, argv)
            self.assertEqual(r.stdout, "", argv)
            self.assertIn("usage", r.stderr, argv)

    def test_database_errors_exit_1(self):
        r = run("show", "queues")
        self.assertEqual(r.returncode, 1)
        self.assertIn("PGMTA_DATABASE_URL", r.stderr)
        r = run("show", "queues", env={"PGMTA_DATABASE_URL": "postgresql://x@127.0.0.1:1/x"})
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot connect", r.stderr)
        pg = PgServer(migrate=False)  # no schema: every view is missing
        for argv in (["show", "queues"], ["show", "status"], ["pause", "job", "j"],
                     ["delete", "--job", "j"], ["acct", "export", "--since", "1h"]):
            r = run(*argv, "--db", pg.dsn)
            self.assertEqual(r.returncode, 1, argv)
            self.assertIn("does not exist", r.stderr, argv)
            self.assertEqual(r.stdout, "", argv)


if __name__ == "__main__":
    main()
