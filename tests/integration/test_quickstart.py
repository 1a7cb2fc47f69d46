"""admin/quickstart as documented: it starts a private PostgreSQL, applies the
migrations, starts a demo sink and pgmtad; a message enqueued with SQL and one
sent with swaks reach the sink; a second run reuses what is running."""
import os
import re
import subprocess
import unittest
import urllib.request

from pgmta_test import PG_BIN, SOURCE_DIR, free_port, main, tmpdir, wait_for


class Quickstart(unittest.TestCase):
    def setUp(self):
        self.var = tmpdir("pgmta-qs-")
        self.env = dict(os.environ, PGMTA_VAR_DIR=self.var,
                        PGMTA_PG_PORT=str(free_port()), PGMTA_SMTP_PORT=str(free_port()),
                        PGMTA_HTTP_PORT=str(free_port()), PGMTA_SINK_PORT=str(free_port()))
        self.env.pop("PGMTA_DATABASE_URL", None)
        self.addCleanup(self.stop_everything)

    def stop_everything(self):
        for name in ("pgmtad.pid", "sink.pid"):
            path = os.path.join(self.var, name)
            if os.path.exists(path):
                subprocess.run(["kill", self.read(name).strip()], capture_output=True)
        pg = os.path.join(self.var, "pg")
        if os.path.exists(os.path.join(pg, "PG_VERSION")):
            cmd = [os.path.join(PG_BIN, "pg_ctl"), "-D", pg, "stop", "-m", "fast"]
            if os.geteuid() == 0:
                cmd = ["runuser", "-u", "postgres", "--"] + cmd
            subprocess.run(cmd, capture_output=True)

    def read(self, name):
        with open(os.path.join(self.var, name)) as f:
            return f.read()

    def run_quickstart(self):
        r = subprocess.run([os.path.join(SOURCE_DIR, "admin", "quickstart")], env=self.env,
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def test_quickstart_delivers_and_is_idempotent(self):
        out = self.run_quickstart()
        url = re.search(r"database:\s+(\S+)", out).group(1)
        self.assertIn("SELECT mta.enqueue(", out)
        self.assertIn("swaks --server 127.0.0.1:%s" % self.env["PGMTA_SMTP_PORT"], out)
        pid1 = self.read("pgmtad.pid")

        # least privilege: passwords (scram) in a 0600 pgpass, no trust, pgmtad
        # as a login role with mta_node only, the token not printed
        pgpass = os.path.join(self.var, "pgpass")
        self.assertIn("PGPASSFILE=" + pgpass, out)
        for name in ("pgpass", "pgmta.conf"):
            self.assertEqual(os.stat(os.path.join(self.var, name)).st_mode & 0o777, 0o600, name)
        hba = self.read("pg/pg_hba.conf")
        self.assertNotRegex(hba, r"(?m)^[^#\n]*\btrust\b")
        self.assertIn("scram-sha-256", hba)
        self.assertIn('url = "postgresql://pgmta_node@127.0.0.1:', self.read("pgmta.conf"))
        env = dict(os.environ, PGPASSFILE=pgpass)
        noenv = dict(os.environ)
        noenv.pop("PGPASSFILE", None)
        r = subprocess.run(["psql", "-X", "-qAt", "-w", url, "-c", "SELECT 1"], env=noenv,
                           capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0, "connected without a password")
        psql = lambda sql: subprocess.run(["psql", "-X", "-qAt", url, "-c", sql], check=True,
                                          env=env, capture_output=True,
                                          text=True).stdout.strip()
        self.assertEqual(psql("SELECT string_agg(b.rolname, ',' ORDER BY b.rolname) "
                              "FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                              "JOIN pg_roles b ON b.oid = m.roleid "
                              "WHERE r.rolname = 'pgmta_node'"), "mta_node")
        self.assertEqual(psql("SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles "
                              "WHERE rolname = 'pgmta_node'"), "f")
        psql("SELECT mta.enqueue('me@example.com', ARRAY['you@demo.test'], "
             "E'Subject: hello\\r\\n\\r\\nHello from pgmta\\r\\n')")
        r = subprocess.run(["swaks", "--server", "127.0.0.1:" + self.env["PGMTA_SMTP_PORT"],
                            "--from", "me@example.com", "--to", "you2@demo.test"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        wait_for(lambda: psql("SELECT count(*) FROM mta.acct WHERE type = 'd'") == "2",
                 timeout=30, what="both messages delivered")
        wait_for(lambda: "rcpts=<you2@demo.test>" in self.read("sink.log"), timeout=10,
                 what="the sink's log")
        self.assertIn("rcpts=<you@demo.test>", self.read("sink.log"))

        token = re.search(r'token = "([0-9a-f]+)"',
                          self.read("pgmta.conf")).group(1)
        self.assertNotIn(token, out)
        req = urllib.request.Request("http://127.0.0.1:%s/api/status" % self.env["PGMTA_HTTP_PORT"],
                                     headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(req, timeout=10) as resp:
            self.assertEqual(resp.status, 200)

        # second run: same processes, same database, nothing re-created
        out2 = self.run_quickstart()
        self.assertIn("up to date", out2)
        self.assertEqual(self.read("pgmtad.pid"), pid1)
        self.assertEqual(psql("SELECT count(*) FROM mta.acct WHERE type = 'd'"), "2")


if __name__ == "__main__":
    main()
