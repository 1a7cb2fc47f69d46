"""Database high availability.

Failover: a pg_auto_failover formation (monitor, primary, synchronous
secondary) on loopback; one pgmtad (SMTP listener and delivery to a sink)
on the multi-host URI with target_session_attrs=read-write; mail injected
continuously over SMTP and SQL; kill -9 of the primary (postmaster and its
pg_autoctl keeper). The secondary is promoted and then: every message that
got 250 and every committed SQL enqueue is delivered with one final row,
the sink saw each at most twice (a delivery whose finish did not commit
before the crash may go out again), SMTP clients got only 4xx during the
outage, and delivery resumes within a bound that the test measures.

Read-only server: a connection whose writes fail with SQLSTATE 25006 (a
demoted primary; here default_transaction_read_only) is dropped and retried
with backoff, and the node recovers once the server takes writes again.

PgBouncer: injection through a transaction-pooling alias (psql, one
statement per transaction), pgmtad through a session-pooling alias (its
statements are named prepared statements, which PgBouncer 1.18 cannot carry
across transactions): everything delivered once."""
import collections
import os
import re
import smtplib
import socket
import subprocess
import threading
import time
import unittest

from dnsserver import DnsServer
from formation import Formation
from pgmta_test import (PgServer, Pgmtad, Proc, _chown_pg, free_port, main, mx_sink, tmpdir,
                        wait_for, wait_queue_empty)

DOMAINS = ["f%d.test" % i for i in range(4)]


def content(tag):
    return "Subject: %s\r\nMessage-ID: <%s@test>\r\n\r\nbody %s\r\n" % (tag, tag, tag)


class SmtpInjector(threading.Thread):
    """Sends one-recipient messages to the listener until stopped; records
    the recipients that got 250 and every other reply code."""

    def __init__(self, port, prefix, pause=0.05):
        super().__init__(daemon=True)
        self.port, self.prefix, self.pause = port, prefix, pause
        self.acked, self.codes, self.errors = [], collections.Counter(), 0
        self.acked_at = []  # time.time() of each 250
        self.stop_flag = threading.Event()

    def run(self):
        n, smtp = 0, None
        while not self.stop_flag.is_set():
            rcpt = "%s%d@%s" % (self.prefix, n, DOMAINS[n % len(DOMAINS)])
            n += 1
            try:
                if smtp is None:
                    smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
                    smtp.ehlo("injector.test")
                smtp.sendmail("s@sender.test", [rcpt], content(rcpt))
                self.acked.append(rcpt)
                self.acked_at.append(time.time())
            except smtplib.SMTPRecipientsRefused as e:
                self.codes.update(c for c, _ in e.recipients.values())
                smtp = self._drop(smtp)
            except smtplib.SMTPResponseException as e:
                self.codes[e.smtp_code] += 1
                smtp = self._drop(smtp)
            except (smtplib.SMTPException, OSError):
                self.errors += 1  # connection refused or closed: not acknowledged
                smtp = self._drop(smtp)
                time.sleep(0.1)
            time.sleep(self.pause)
        self._drop(smtp)

    @staticmethod
    def _drop(smtp):
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass
        return None


class SqlInjector(threading.Thread):
    """Calls mta.enqueue on the multi-host URI until stopped; records the
    recipients whose transaction committed."""

    def __init__(self, dsn, prefix, pause=0.1):
        super().__init__(daemon=True)
        self.dsn, self.prefix, self.pause = dsn, prefix, pause
        self.committed, self.failed = [], 0
        self.stop_flag = threading.Event()

    def run(self):
        import psycopg2
        n, conn = 0, None
        while not self.stop_flag.is_set():
            rcpt = "%s%d@%s" % (self.prefix, n, DOMAINS[n % len(DOMAINS)])
            n += 1
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn, connect_timeout=3)
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("SELECT mta.enqueue('s@sender.test', ARRAY[%s], %s)",
                                (rcpt, content(rcpt)))
                self.committed.append(rcpt)
            except psycopg2.Error:
                self.failed += 1  # outcome unknown only if the commit was cut: not counted
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.1)
            time.sleep(self.pause)
        if conn is not None:
            conn.close()


class Failover(unittest.TestCase):
    def test_primary_killed_mid_run(self):
        f = Formation()
        print("formation (monitor + primary + secondary) ready in %.1fs: %s" %
              (f.setup_seconds, f.uri))
        f.migrate()
        self.assertEqual(f.primary(), "node1")
        dns = DnsServer()
        sink_port, smtp_port = free_port("127.0.0.140"), free_port()
        sink = mx_sink(dns, DOMAINS, "127.0.0.140", sink_port)
        node = Pgmtad(f, dns, extra='smtp-port = %d; lease-time = "10s";\n'
                      'listen = { smtp = [ "127.0.0.1:%d" ]; };\n'
                      'smtp-listener = { processes = 1; };' % (sink_port, smtp_port))
        node.wait_accepting([smtp_port], timeout=30)

        smtp_in = [SmtpInjector(smtp_port, "smtp%d-" % i) for i in range(2)]
        sql_in = SqlInjector(f.uri, "sql-")
        injectors = smtp_in + [sql_in]
        for t in injectors:
            t.start()
        wait_for(lambda: f.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'") >= 30,
                 timeout=30, what="deliveries before the failover")

        killed_at = time.time()
        f.kill9("node1")
        wait_for(lambda: f.primary() == "node2", timeout=60, what="node2 promoted")
        promoted = time.time() - killed_at

        def first_new_delivery():
            try:
                return f.scalar("SELECT extract(epoch FROM min(time_logged)) FROM mta.acct "
                                "WHERE type = 'd' AND time_logged > to_timestamp(%s)",
                                (killed_at,))
            except Exception:
                return None  # the new primary is not reachable yet
        resumed = float(wait_for(first_new_delivery, timeout=60, interval=0.2,
                                 what="a delivery after the failover")) - killed_at
        print("kill -9 of the primary: node2 promoted after %.1fs, first delivery "
              "recorded %.1fs after the kill" % (promoted, resumed))

        # Injection goes on against the new primary until the smtp-in
        # process, reconnected, acknowledges again (its reconnection backs
        # off: a fixed 3 s after the promotion was sometimes too short on a
        # loaded machine), and a little longer.
        t_smtp = wait_for(lambda: min((t for i in smtp_in for t in list(i.acked_at)
                                       if t > killed_at + promoted), default=None),
                          timeout=30, interval=0.1,
                          what="an SMTP message accepted after the failover")
        print("first SMTP acknowledgement %.1fs after the promotion"
              % (t_smtp - killed_at - promoted))
        time.sleep(2)
        for t in injectors:
            t.stop_flag.set()
        for t in injectors:
            t.join(30)
        wait_queue_empty(f, timeout=60, node=node)
        self.assertTrue(node.proc.alive(), "pgmtad died in the failover")

        acked = [r for t in smtp_in for r in t.acked]
        codes = collections.Counter()
        for t in smtp_in:
            codes.update(t.codes)
        print("smtp: %d acknowledged, refusals %s, %d connection errors; sql: %d committed, "
              "%d failed" % (len(acked), dict(codes), sum(t.errors for t in smtp_in),
                             len(sql_in.committed), sql_in.failed))
        self.assertEqual([c for c in codes if c >= 500], [], "5xx during the failover")
        self.assertGreater(sum(codes.values()) + sum(t.errors for t in smtp_in), 0,
                           "no SMTP client saw the outage")
        self.assertGreater(len(sql_in.committed), 0)
        # the smtp-in process reconnected too: 250s again after the promotion
        self.assertTrue(any(t > killed_at + promoted for i in smtp_in for t in i.acked_at),
                        "no SMTP message accepted after the failover")

        final = collections.Counter(r for r, in f.query(
            "SELECT rcpt FROM mta.acct WHERE type IN ('d', 'b')"))
        delivered = {r for r, in f.query("SELECT rcpt FROM mta.acct WHERE type = 'd'")}
        seen = collections.Counter(r for m in sink.messages() for r in m.rcpts)
        lost = [r for r in acked + sql_in.committed if r not in delivered and r not in seen]
        self.assertEqual(lost, [], "acknowledged messages lost")
        self.assertEqual(f.scalar("SELECT count(*) FROM (SELECT rcpt_id FROM mta.acct "
                                  "WHERE type IN ('d', 'b') GROUP BY rcpt_id "
                                  "HAVING count(*) > 1) x"), 0)
        self.assertEqual([r for r, n in final.items() if n > 1], [])
        self.assertEqual([r for r, n in seen.items() if n > 2], [])
        print("sink: %d recipients, %d delivered twice (finish not committed before the "
              "crash)" % (len(seen), sum(1 for n in seen.values() if n == 2)))
        # generous: measured about 5-10 s on a 2-core VM
        self.assertLess(resumed, 45, "delivery resumed too late")
        self.assertEqual(node.stop(), 0)


class ReadOnlyServer(unittest.TestCase):
    def test_read_only_connection_dropped_and_retried(self):
        pg = PgServer()
        dns = DnsServer()
        port = free_port("127.0.0.141")
        sink = mx_sink(dns, DOMAINS, "127.0.0.141", port)
        node = Pgmtad(pg, dns, extra="smtp-port = %d;" % port)
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.pipes") > 0, timeout=20,
                 what="the pipes to register")
        # Every new session is read-only; the node's sessions are ended, so
        # it reconnects into read-only sessions (as on a demoted primary).
        pg.psql_admin("ALTER DATABASE pgmta SET default_transaction_read_only = on")
        pg.psql_admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = 'pgmta' AND application_name LIKE 'pgmtad%'")
        rw = pg.dsn + "?options=-c%20default_transaction_read_only%3Doff"
        pg.psql("SELECT mta.enqueue('s@sender.test', ARRAY['ro@f0.test'], 'Subject: ro\r\n\r\nx')",
                dsn=rw)
        time.sleep(6)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 0)
        log = node.log()
        pg.psql_admin("ALTER DATABASE pgmta RESET default_transaction_read_only")
        # The sessions opened while the database was read-only are not
        # kept: the node reconnects and delivers.
        wait_queue_empty(pg, timeout=60, node=node)
        # Dropped and retried with a growing backoff (250 ms doubling),
        # not a reconnect every 250 ms nor an error loop on one session.
        drops = collections.Counter(re.findall(
            r"db=(\S+) event=connection-lost error=\"read-only server", log))
        print("connections dropped for 25006 in 6 s, per connection: %s" % dict(drops))
        self.assertTrue(drops)
        self.assertLessEqual(max(drops.values()), 8, drops)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 1)
        self.assertEqual([r for m in sink.messages() for r in m.rcpts], ["ro@f0.test"])
        self.assertEqual(node.stop(), 0)


class SilentHost(unittest.TestCase):
    def test_first_host_never_answers(self):
        """The first host of a multi-host URL accepts TCP and never answers
        (a frozen or unreachable primary): after connect_timeout the node
        starts its next attempt with the second host."""
        pg = PgServer()
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        held = []
        threading.Thread(target=lambda: [held.append(silent.accept()) for _ in range(64)],
                         daemon=True).start()
        url = "postgresql://postgres@127.0.0.1:%d,127.0.0.1:%d/pgmta?connect_timeout=2" % (
            silent.getsockname()[1], pg.port)

        class Via:
            dsn = url
            scalar = staticmethod(pg.scalar)
        dns = DnsServer()
        port = free_port("127.0.0.143")
        sink = mx_sink(dns, DOMAINS, "127.0.0.143", port)
        node = Pgmtad(Via, dns, extra="smtp-port = %d;" % port)
        pg.psql("SELECT mta.enqueue('s@sender.test', ARRAY['silent@f1.test'], 'Subject: s')")
        wait_queue_empty(pg, timeout=40, node=node)
        self.assertEqual([r for m in sink.messages() for r in m.rcpts], ["silent@f1.test"])
        self.assertIn("connect timeout, next from host 2 of 2", node.log())
        self.assertEqual(node.stop(), 0)
        silent.close()


class PgBouncer(unittest.TestCase):
    def test_transaction_pool_injection_session_pool_node(self):
        pg = PgServer()
        d = tmpdir("pgmta-pgbouncer-")
        bport = free_port()
        with open(os.path.join(d, "users.txt"), "w") as fh:
            fh.write('"postgres" ""\n')
        with open(os.path.join(d, "pgbouncer.ini"), "w") as fh:
            fh.write(
                "[databases]\n"
                "pgmta = host=127.0.0.1 port=%d dbname=pgmta pool_mode=session\n"
                "pgmta_inject = host=127.0.0.1 port=%d dbname=pgmta pool_mode=transaction "
                "pool_size=4\n"
                "[pgbouncer]\n"
                "listen_addr = 127.0.0.1\nlisten_port = %d\nunix_socket_dir =\n"
                "auth_type = trust\nauth_file = %s/users.txt\nadmin_users = postgres\n"
                "max_client_conn = 200\ndefault_pool_size = 20\n"
                # pgmtad sets idle_in_transaction_session_timeout through
                # the startup parameter `options`, which PgBouncer refuses
                "ignore_startup_parameters = options,extra_float_digits\n"
                % (pg.port, pg.port, bport, d))
        _chown_pg(d)
        bouncer = Proc(["/usr/sbin/pgbouncer", os.path.join(d, "pgbouncer.ini")],
                       os.path.join(d, "pgbouncer.log"), user="postgres")
        session_dsn = "postgresql://postgres@127.0.0.1:%d/pgmta" % bport
        inject_dsn = "postgresql://postgres@127.0.0.1:%d/pgmta_inject" % bport
        wait_for(lambda: subprocess.run(["psql", "-X", "-c", "SELECT 1", inject_dsn],
                                        capture_output=True).returncode == 0,
                 timeout=20, what="pgbouncer")

        class Via:
            dsn = session_dsn
            scalar = staticmethod(pg.scalar)
        dns = DnsServer()
        port, smtp_port = free_port("127.0.0.142"), free_port()
        sink = mx_sink(dns, DOMAINS, "127.0.0.142", port)
        node = Pgmtad(Via, dns, extra='smtp-port = %d;\nlisten = { smtp = [ "127.0.0.1:%d" ]; };'
                      '\nsmtp-listener = { processes = 1; };' % (port, smtp_port))
        node.wait_accepting([smtp_port], timeout=30)

        # 8 injectors at once, 4 server connections: statements of several
        # clients share each server connection, one transaction at a time.
        want = set()
        procs = []
        for i in range(8):
            sql = []
            for n in range(10):
                r = "tx%d-%d@%s" % (i, n, DOMAINS[n % 4])
                want.add(r)
                sql += ["-c", "SELECT mta.enqueue('s@sender.test', ARRAY['%s'], "
                        "'Subject: %s\r\n\r\nx')" % (r, r)]
            procs.append(subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
                                           inject_dsn] + sql, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=20) as s:
            for n in range(20):
                r = "smtp%d@%s" % (n, DOMAINS[n % 4])
                s.sendmail("s@sender.test", [r], content(r))
                want.add(r)
        for p in procs:
            _, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, err)
        wait_queue_empty(pg, timeout=60, node=node)

        seen = collections.Counter(r for m in sink.messages() for r in m.rcpts)
        self.assertEqual(set(seen), want)
        self.assertEqual(max(seen.values()), 1)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), len(want))
        # the node's connections really went through PgBouncer's session pool
        clients = subprocess.run(["psql", "-X", "-A", "-t", "-c", "SHOW CLIENTS",
                                  "postgresql://postgres@127.0.0.1:%d/pgbouncer" % bport],
                                 capture_output=True, text=True, check=True).stdout
        self.assertIn("pgmtad", clients)
        self.assertEqual(node.stop(), 0)
        bouncer.stop()


if __name__ == "__main__":
    main()
