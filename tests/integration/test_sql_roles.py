"""Least-privilege roles: mta_inject can only enqueue, mta_monitor can only
read the views, mta_node can drive the queue functions but not touch the
tables, mta_admin can do everything."""
import io
import unittest

import psycopg2
import psycopg2.errors

from pgmta_test import PgServer, main


class RolesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.inject = cls.pg.connect(cls.pg.role_dsn("mta_inject"))
        cls.monitor = cls.pg.connect(cls.pg.role_dsn("mta_monitor"))
        cls.node = cls.pg.connect(cls.pg.role_dsn("mta_node"))
        cls.admin = cls.pg.connect(cls.pg.role_dsn("mta_admin"))

    def run_as(self, conn, sql, args=None):
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []

    def denied(self, conn, sql, args=None):
        with self.assertRaises(psycopg2.errors.InsufficientPrivilege, msg=sql) as cm:
            self.run_as(conn, sql, args)
        self.assertIn("permission denied", str(cm.exception))

    def test_inject_can_enqueue(self):
        mid = self.run_as(self.inject, "SELECT mta.enqueue('s@roles.example',"
                          " ARRAY['a@inj-role.example'], 'Subject: t\r\n\r\nx')")[0][0]
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipients WHERE message_id = %s",
                                        (mid,)), 1)
        mid = self.run_as(self.inject, "SELECT mta.enqueue('s@roles.example',"
                          " ARRAY['b@inj-role.example'], %s)",
                          (psycopg2.Binary(b"Subject: b\r\n\r\n\xff"),))[0][0]
        self.assertEqual(bytes(self.pg.scalar("SELECT content FROM mta.messages WHERE id = %s",
                                              (mid,))), b"Subject: b\r\n\r\n\xff")

    def test_inject_can_insert_and_copy_into_submit(self):
        self.run_as(self.inject, "INSERT INTO mta.submit (mail_from, rcpt_to, content)"
                    " VALUES ('s@roles.example', 'ins@submit-role.example', 'x')")
        with self.inject.cursor() as cur:
            cur.copy_expert("COPY mta.submit (mail_from, rcpt_to, content) FROM STDIN",
                            io.StringIO("s@roles.example\tcopy@submit-role.example\tx\n"))
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.recipients"
                                        " WHERE domain = 'submit-role.example'"), 2)

    def test_inject_cannot_read_or_steer(self):
        for t in ("mta.messages", "mta.recipients", "mta.acct", "mta.submit", "mta.queue",
                  "mta.queues", "mta.job", "mta.acct_default"):
            with self.subTest(table=t):
                self.denied(self.inject, "SELECT * FROM %s LIMIT 1" % t)
        self.denied(self.inject, "DELETE FROM mta.recipients")
        self.denied(self.inject, "UPDATE mta.queue SET paused = true")
        self.denied(self.inject, "SELECT * FROM mta.claim(1, 'bulk', 'x.example', NULL, 10, 1000)")
        self.denied(self.inject, "SELECT mta.pause_queue('x.example')")
        self.denied(self.inject, "SELECT mta.enqueue_bytes('', ARRAY['a@x.example'], 'x',"
                    " NULL, NULL, NULL, NULL, 0, now())")
        self.denied(self.inject, "INSERT INTO mta.submit (mail_from, rcpt_to, content)"
                    " VALUES ('', 'r@x.example', 'x') RETURNING id")

    def test_inject_counts_only_through_the_functions(self):
        """mta_inject adds to the SQL door's counter by enqueuing, and has no
        right on the table itself; mta_monitor and mta_node read it."""
        total = "SELECT coalesce(sum(recipients), 0) FROM mta.inject_count"
        before = self.pg.scalar(total)
        self.run_as(self.inject, "SELECT mta.enqueue('s@roles.example',"
                    " ARRAY['c1@count-role.example', 'c2@count-role.example'], 'x')")
        self.assertEqual(self.pg.scalar(total), before + 2)
        self.denied(self.inject, "SELECT * FROM mta.inject_count")
        self.denied(self.inject, "UPDATE mta.inject_count SET recipients = 0")
        self.denied(self.inject, "INSERT INTO mta.inject_count VALUES ('sql', 1, 0)")
        self.denied(self.inject, "SELECT mta.enqueue_counted('', ARRAY['a@x.example'], 'x',"
                    " NULL, NULL, NULL, NULL, 0, now())")
        for conn in (self.monitor, self.node):
            self.assertEqual(self.run_as(conn, total)[0][0], before + 2)
            self.denied(conn, "UPDATE mta.inject_count SET recipients = 0")
            self.denied(conn, "DELETE FROM mta.inject_count")
        self.denied(self.inject, "SELECT mta.inject_count_compact()")
        self.denied(self.monitor, "SELECT mta.inject_count_compact()")

    def test_inject_count_never_waits(self):
        """Two injecting sessions with open transactions count without
        waiting for each other (no shared row is locked), and a fold by a node
        keeps the total, leaves an open transaction's row alone, and counts it
        once it commits."""
        total = "SELECT coalesce(sum(recipients), 0) FROM mta.inject_count"
        before = self.pg.scalar(total)
        a = self.pg.connect(self.pg.role_dsn("mta_inject"), autocommit=False)
        b = self.pg.connect(self.pg.role_dsn("mta_inject"), autocommit=False)
        enqueue = "SELECT mta.enqueue('s@roles.example', %s, 'x')"
        try:
            with a.cursor() as ca, b.cursor() as cb:
                ca.execute(enqueue, (["w1@wait-a.example"],))
                cb.execute("SET LOCAL lock_timeout = '2s'")
                cb.execute(enqueue, (["w2@wait-b.example", "w3@wait-b.example"],))
                cb.copy_expert("COPY mta.submit (mail_from, rcpt_to, content) FROM STDIN",
                               io.StringIO("s@roles.example\tw4@wait-b.example\tx\n"))
                ca.execute(enqueue, (["w5@wait-a.example"],))
                b.commit()
                self.assertEqual(self.pg.scalar(total), before + 3)
                # a's transaction is still open: its rows are not folded
                self.run_as(self.node, "SELECT mta.inject_count_compact()")
                self.assertEqual(self.pg.scalar(total), before + 3)
                a.commit()
        finally:
            a.close()
            b.close()
        self.assertEqual(self.pg.scalar(total), before + 5)
        self.run_as(self.node, "SELECT mta.inject_count_compact()")
        self.assertEqual(self.pg.scalar(total), before + 5)
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.inject_count"), 1)

    def test_monitor_reads_views_only(self):
        self.pg.query("SELECT mta.enqueue('s@roles.example', ARRAY['m@monitor.example'], 'x')")
        rows = self.run_as(self.monitor, "SELECT domain, queued FROM mta.queues"
                           " WHERE domain = 'monitor.example'")
        self.assertEqual(rows, [("monitor.example", 1)])
        for v in ("mta.connections", "mta.nodes", "mta.jobs"):
            self.run_as(self.monitor, "SELECT * FROM %s" % v)
        for sql in ("SELECT * FROM mta.recipients",
                    "SELECT * FROM mta.messages",
                    "INSERT INTO mta.submit (mail_from, rcpt_to, content) VALUES ('', 'a@x.example', 'x')",
                    "UPDATE mta.queue SET paused = true",
                    "DELETE FROM mta.recipients",
                    "SELECT mta.enqueue('', ARRAY['a@x.example'], 'x')",
                    "SELECT mta.pause_queue('monitor.example')"):
            with self.subTest(sql=sql):
                self.denied(self.monitor, sql)

    def test_node_drives_the_queue(self):
        self.pg.query("SELECT mta.enqueue('s@roles.example', ARRAY['n@node-role.example'], 'x')")
        node = self.run_as(self.node, "SELECT mta.node_register('n1', 'bulk', 0, 1, 'h')")[0][0]
        self.run_as(self.node, "SELECT mta.node_heartbeat(%s)", (node,))
        self.assertIn(("node-role.example", ""),
                      self.run_as(self.node, "SELECT domain, vmta FROM mta.ready_queues('bulk', 1000)"))
        rows = self.run_as(self.node, "SELECT rcpt_id, lease_token FROM mta.claim(%s, 'bulk',"
                           " 'node-role.example', NULL, 10, 60000)", (node,))
        self.assertEqual(len(rows), 1)
        n = self.run_as(self.node, "SELECT mta.finish(%s, 'n1', %s, %s, ARRAY['d'], NULL, NULL,"
                        " NULL, NULL, NULL, NULL, NULL, NULL, NULL, false)",
                        (node, [rows[0][0]], [rows[0][1]]))[0][0]
        self.assertEqual(n, 1)
        self.run_as(self.node, "SELECT mta.node_stop(%s)", (node,))
        self.denied(self.node, "SELECT * FROM mta.recipients")
        self.denied(self.node, "DELETE FROM mta.acct")
        self.denied(self.node, "SELECT mta.delete_queue('node-role.example')")

    def test_admin_has_everything(self):
        self.run_as(self.admin, "SELECT count(*) FROM mta.recipients")
        self.run_as(self.admin, "SELECT count(*) FROM mta.acct")
        self.run_as(self.admin, "SELECT mta.pause_queue('admin.example')")
        self.run_as(self.admin, "SELECT mta.delete_queue('admin.example')")

    def test_node_role_idle_timeout(self):
        self.assertIn("idle_in_transaction_session_timeout=30s",
                      self.pg.scalar("SELECT array_to_string(setconfig, ',')"
                                     " FROM pg_db_role_setting s JOIN pg_roles r"
                                     " ON r.oid = s.setrole WHERE r.rolname = 'mta_node'"))

    def test_migrate_twice(self):
        """The SQL API is re-appliable: a second migrate keeps the grants."""
        self.pg.migrate()
        self.run_as(self.inject, "SELECT mta.enqueue('s@roles.example', ARRAY['a@again.example'],"
                    " 'x')")
        self.denied(self.inject, "SELECT * FROM mta.messages")


if __name__ == "__main__":
    main()
