"""pgmta migrate: schema migrations and the SQL API applied to a real
PostgreSQL, once, in order, atomically, safely from concurrent runs, from the
build tree and from an installed tree."""
import os
import re
import shutil
import subprocess
import sys
import unittest

from pgmta_test import PgServer, PGMTA, SOURCE_DIR, BUILD_DIR, main, tmpdir


def run(argv, env=None):
    full = dict(os.environ)
    full.pop("PGMTA_DATABASE_URL", None)
    full.pop("PGMTA_SHARE_DIR", None)
    full.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, env=full, timeout=120)


def migration_names(share=SOURCE_DIR):
    names = [f[:-4] for f in os.listdir(os.path.join(share, "migrations"))
             if f.endswith(".sql")]
    return sorted(names, key=lambda n: int(n.split("_", 1)[0]))


def sql_api_count(share=SOURCE_DIR):
    d = os.path.join(share, "sql")
    return len([f for f in os.listdir(d) if f.endswith(".sql")]) if os.path.isdir(d) else 0


def copy_share():
    """A private copy of migrations/ and sql/ that a test may add files to."""
    d = tmpdir("pgmta-share-")
    for sub in ("migrations", "sql"):
        src = os.path.join(SOURCE_DIR, sub)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(d, sub))
        else:
            os.makedirs(os.path.join(d, sub))
    return d


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


class MigrateTest(unittest.TestCase):
    def versions(self, pg):
        return [r[0] for r in pg.query(
            "SELECT version FROM mta.schema_migrations ORDER BY version")]

    def test_from_empty_then_up_to_date(self):
        pg = PgServer(migrate=False)
        r = run([PGMTA, "migrate", "--db", pg.dsn])
        self.assertEqual(r.returncode, 0, r.stderr)
        names = migration_names()
        applied = re.findall(r"^applied (\S+)$", r.stdout, re.M)
        self.assertEqual(applied, names)
        self.assertIn("sql api: %d files applied" % sql_api_count(), r.stdout)
        self.assertNotIn("up to date", r.stdout)
        self.assertEqual(self.versions(pg), [int(n.split("_")[0]) for n in names])
        self.assertEqual([x[0] for x in pg.query(
            "SELECT name FROM mta.schema_migrations ORDER BY version")], names)
        stamps = pg.query("SELECT version, applied_at FROM mta.schema_migrations")

        # Second run: nothing pending, the SQL API is re-applied, records untouched.
        r = run([PGMTA, "migrate"], env={"PGMTA_DATABASE_URL": pg.dsn})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("up to date", r.stdout)
        self.assertNotIn("applied 0", r.stdout)
        self.assertIn("sql api: %d files applied" % sql_api_count(), r.stdout)
        self.assertEqual(sorted(stamps),
                         sorted(pg.query("SELECT version, applied_at FROM mta.schema_migrations")))

    def test_concurrent_runs(self):
        pg = PgServer(migrate=False)
        procs = [subprocess.Popen([PGMTA, "migrate", "--db", pg.dsn], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=120) + (p.returncode,) for p in procs]
        for out, err, rc in outs:
            self.assertEqual(rc, 0, err)
        applied = []
        for out, _, _ in outs:
            applied += re.findall(r"^applied (\S+)$", out, re.M)
        self.assertEqual(sorted(applied), sorted(migration_names()))
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.schema_migrations"),
                         len(migration_names()))
        self.assertEqual(pg.scalar(
            "SELECT count(*) FROM (SELECT version FROM mta.schema_migrations "
            "GROUP BY version HAVING count(*) > 1) d"), 0)

    def test_broken_migration_is_not_applied(self):
        pg = PgServer(migrate=False)
        share = copy_share()
        mig = os.path.join(share, "migrations")
        write(os.path.join(mig, "9001_good.sql"),
              "CREATE TABLE mta.cli_good (x int);\n")
        write(os.path.join(mig, "9002_broken.sql"),
              "CREATE TABLE mta.cli_broken_a (x int);\n"
              "INSERT INTO mta.cli_broken_a VALUES (1);\n"
              "CREATE TABLE mta.cli_broken_b (x int;\n")
        write(os.path.join(mig, "9003_later.sql"),
              "CREATE TABLE mta.cli_later (x int);\n")
        r = run([PGMTA, "migrate", "--db", pg.dsn, "--sql-dir", share])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("9002_broken.sql", r.stderr)
        self.assertIn("line 3", r.stderr)
        self.assertIn("syntax error", r.stderr)
        self.assertIn("applied 9001_good", r.stdout)
        self.assertNotIn("9003", r.stdout)
        self.assertNotIn("sql api", r.stdout)
        vers = self.versions(pg)
        self.assertIn(9001, vers)
        self.assertNotIn(9002, vers)
        self.assertNotIn(9003, vers)
        self.assertIsNone(pg.scalar("SELECT to_regclass('mta.cli_broken_a')"))
        self.assertIsNotNone(pg.scalar("SELECT to_regclass('mta.cli_good')"))

        # A run-time error (not a syntax error) also leaves nothing behind.
        write(os.path.join(mig, "9002_broken.sql"),
              "CREATE TABLE mta.cli_broken_a (x int);\n"
              "INSERT INTO mta.cli_broken_a VALUES (1 / 0);\n")
        r = run([PGMTA, "migrate", "--db", pg.dsn, "--sql-dir", share])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("9002_broken.sql", r.stderr)
        self.assertIn("division by zero", r.stderr)
        self.assertIsNone(pg.scalar("SELECT to_regclass('mta.cli_broken_a')"))

        # Fixed: the rest is applied, the good one is not applied twice.
        write(os.path.join(mig, "9002_broken.sql"), "CREATE TABLE mta.cli_broken_a (x int);\n")
        r = run([PGMTA, "migrate", "--db", pg.dsn, "--sql-dir", share])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(re.findall(r"^applied (\S+)$", r.stdout, re.M),
                         ["9002_broken", "9003_later"])
        self.assertEqual(self.versions(pg)[-3:], [9001, 9002, 9003])

    def test_broken_sql_api_file_applies_nothing_of_the_api(self):
        pg = PgServer(migrate=False)
        share = copy_share()
        write(os.path.join(share, "sql", "000_cli_marker.sql"),
              "CREATE OR REPLACE FUNCTION mta.cli_marker() RETURNS int "
              "LANGUAGE sql AS 'SELECT 1';\n")
        write(os.path.join(share, "sql", "zzz_cli_broken.sql"),
              "SELECT 1;\nSELECT no_such_function();\n")
        r = run([PGMTA, "migrate", "--db", pg.dsn, "--sql-dir", share])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("zzz_cli_broken.sql", r.stderr)
        self.assertIn("no_such_function", r.stderr)
        self.assertIn("line 2", r.stderr)
        self.assertIsNone(pg.scalar("SELECT to_regproc('mta.cli_marker')"))
        # The migrations before it stay applied and recorded.
        self.assertEqual(len(self.versions(pg)), len(migration_names(share)))

    def test_sql_dir_from_environment(self):
        pg = PgServer(migrate=False)
        share = copy_share()
        write(os.path.join(share, "migrations", "9100_env.sql"),
              "CREATE TABLE mta.cli_env (x int);\n")
        r = run([PGMTA, "migrate", "--db", pg.dsn], env={"PGMTA_SHARE_DIR": share})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("applied 9100_env", r.stdout)
        # The source tree lacks 9100: the database is newer than those files.
        r = run([PGMTA, "migrate", "--db", pg.dsn])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("up to date", r.stdout)
        self.assertIn("warning", r.stderr)
        self.assertIn("9100_env", r.stderr)

    def test_bad_migration_names_are_refused(self):
        pg = PgServer(migrate=False)
        share = copy_share()
        write(os.path.join(share, "migrations", "init.sql"), "SELECT 1;\n")
        r = run([PGMTA, "migrate", "--db", pg.dsn, "--sql-dir", share])
        self.assertEqual(r.returncode, 1)
        self.assertIn("init.sql", r.stderr)
        self.assertIn("NNNN_name.sql", r.stderr)
        os.unlink(os.path.join(share, "migrations", "init.sql"))
        write(os.path.join(share, "migrations", "9200_a.sql"), "SELECT 1;\n")
        write(os.path.join(share, "migrations", "09200_b.sql"), "SELECT 1;\n")
        r = run([PGMTA, "migrate", "--db", pg.dsn, "--sql-dir", share])
        self.assertEqual(r.returncode, 1)
        self.assertIn("same number", r.stderr)
        self.assertIsNone(pg.scalar("SELECT to_regclass('mta.schema_migrations')"))

    def test_errors(self):
        r = run([PGMTA, "migrate"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("PGMTA_DATABASE_URL", r.stderr)
        r = run([PGMTA, "migrate", "--db", "postgresql://nobody@127.0.0.1:1/x"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot connect", r.stderr)
        r = run([PGMTA, "migrate", "--db", "postgresql://x@127.0.0.1:1/x",
                 "--sql-dir", "/nonexistent-pgmta"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("/nonexistent-pgmta/migrations", r.stderr)
        r = run([PGMTA, "migrate", "--bogus"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("usage", r.stderr)
        r = run([PGMTA, "migrate", "--help"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("PGMTA_NO_SOURCE_TREE", r.stdout)


class InstallLayoutTest(unittest.TestCase):
    def test_installed_pgmta_finds_its_files(self):
        prefix = tmpdir("pgmta-install-")
        r = subprocess.run(["cmake", "--install", BUILD_DIR, "--prefix", prefix],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        exe = os.path.join(prefix, "bin", "pgmta")
        share = os.path.join(prefix, "share", "pgmta")
        self.assertTrue(os.path.isdir(os.path.join(share, "migrations")))
        pg = PgServer(migrate=False)
        env = {"PGMTA_NO_SOURCE_TREE": "1"}
        r = run([exe, "migrate", "--db", pg.dsn], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(re.findall(r"^applied (\S+)$", r.stdout, re.M), migration_names())
        # Proof that the installed copy is the one read: a migration added
        # there only is applied.
        with open(os.path.join(share, "migrations", "9300_installed.sql"), "w") as f:
            f.write("CREATE TABLE mta.cli_installed (x int);\n")
        r = run([exe, "migrate", "--db", pg.dsn], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("applied 9300_installed", r.stdout)
        shutil.rmtree(os.path.join(share, "migrations"))
        r = run([exe, "migrate", "--db", pg.dsn], env=env)
        self.assertEqual(r.returncode, 1)
        self.assertIn("migrations", r.stderr)


if __name__ == "__main__":
    main()
