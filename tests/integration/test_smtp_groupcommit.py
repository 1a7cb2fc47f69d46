"""Group commit of the SMTP injection listener and its smtp-in processes,
against a real PostgreSQL with raw SMTP clients and smtplib: 50 concurrent
sessions share commits and every 250 has its rows; PostgreSQL restarted with
-m immediate in the middle: every session that got 250 has its message and
every one that did not has none; one invalid message in a batch is refused
alone; kill -9 of one smtp-in process: the root restarts it, the other one
keeps accepting, nothing acknowledged is lost.

Injected mail stays in the queue (every test domain is paused and routed to
a port where nothing listens), so its rows can be checked."""
import os
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time
import unittest
import uuid

import pgmta_test
from pgmta_test import PgServer, Pgmtad, free_port, wait_for

DOMAINS = ("example.test", "other.test")


def domain_conf(dead_port):
    return ['{ name = "%s"; route = "127.0.0.1:%d"; }' % (d, dead_port) for d in DOMAINS]


def read_reply(sock, buf):
    """One SMTP reply from SOCK: (code, text, rest of buffer)."""
    lines = []
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        lines.append(line.decode("latin-1"))
        if len(line) < 4 or line[3:4] == b" ":
            return int(line[:3]), "\n".join(lines), buf


class Session:
    """A raw SMTP session that stops right before the final dot, so that
    many sessions can end DATA at the same moment."""

    def __init__(self, port, tag, rcpts=("a@example.test",), headers=b""):
        self.tag = tag
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""
        assert self.reply()[0] == 220
        for cmd in [b"EHLO client.test", b"MAIL FROM:<s@sender.test>"] + \
                [b"RCPT TO:<%s>" % r.encode() for r in rcpts]:
            self.sock.sendall(cmd + b"\r\n")
            code, text = self.reply()
            assert code == 250, text
        self.sock.sendall(b"DATA\r\n")
        assert self.reply()[0] == 354
        self.sock.sendall(headers + b"Message-ID: <" + tag.encode() + b"@test>\r\n"
                          b"Subject: " + tag.encode() + b"\r\n\r\nbody " + tag.encode() + b"\r\n")

    def reply(self):
        code, text, self.buf = read_reply(self.sock, self.buf)
        return code, text

    def finish(self):
        self.sock.sendall(b".\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        self.sock.close()


def send_one(port, tag, timeout=20):
    """One message over a new connection; its reply (code, text), or
    (0, error) when the connection failed."""
    try:
        s = Session(port, tag)
        try:
            return s.finish()
        finally:
            s.close()
    except (OSError, AssertionError, ConnectionError) as e:
        return 0, repr(e)


def stored_tags(pg):
    """Subject tags of every stored message."""
    tags = set()
    for (content,) in pg.query("SELECT content FROM mta.messages"):
        m = re.search(rb"\r\nSubject: (\S+)\r\n", bytes(content))
        if m:
            tags.add(m.group(1).decode())
    return tags


def smtp_in_pids(pg):
    """Pids of the live smtp-in processes (a process killed with -9 keeps
    its 'running' row: only /proc tells)."""
    return sorted(r[0] for r in pg.query(
        "SELECT pid FROM mta.nodes WHERE pipe = 'smtp-in' AND state = 'running'")
        if os.path.exists("/proc/%d" % r[0]))


class GroupCommitTest(unittest.TestCase):
    batch_max = 8  # below the 25 sessions per process: the limit is exercised

    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.port = free_port()
        cls.dead = free_port()
        for d in DOMAINS:
            cls.pg.query("SELECT mta.pause_queue(%s)", (d,))
        cls.node = Pgmtad(cls.pg, domains=domain_conf(cls.dead), extra=(
            'listen = { smtp = [ "127.0.0.1:%d" ]; };\n'
            'smtp-listener = { processes = 2; batch-max-wait = "10ms"; '
            'batch-max-messages = %d; };\n' % (cls.port, cls.batch_max)))
        wait_for(lambda: len(smtp_in_pids(cls.pg)) == 2 and
                 cls.node.log().count("db=pgmtad-smtp-in event=connected") >= 2 and
                 cls.pg.scalar("SELECT count(*) FROM mta.pipes") > 0,
                 timeout=30, what="two smtp-in processes")

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def test_a_processes_registered(self):
        rows = self.pg.query("SELECT process_index, pid, alive FROM mta.nodes "
                             "WHERE pipe = 'smtp-in' AND state = 'running' ORDER BY 1")
        self.assertEqual([r[0] for r in rows], [0, 1])
        self.assertTrue(all(r[2] for r in rows), rows)
        # and they heartbeat
        wait_for(lambda: self.pg.scalar(
            "SELECT count(*) FROM mta.nodes WHERE pipe = 'smtp-in' AND state = 'running' "
            "AND heartbeat_at > started_at + interval '1 second'") == 2,
            timeout=20, what="smtp-in heartbeats")
        # the root parses no mail: its pid is not among the listeners' owners
        root = self.node.proc.pid
        self.assertNotIn(root, [r[1] for r in rows])
        out = subprocess.run(["ss", "-Htlnp", "sport = :%d" % self.port], capture_output=True,
                             text=True, check=True).stdout
        self.assertEqual(out.count("LISTEN"), 2, out)  # one socket per process (SO_REUSEPORT)
        self.assertNotIn("pid=%d," % root, out)

    def test_concurrent_sessions_share_commits(self):
        before = self.node.log()
        n = 50
        sessions = [None] * n
        tags = ["gc-%d-%s" % (i, uuid.uuid4().hex[:8]) for i in range(n)]

        def open_one(i):
            sessions[i] = Session(self.port, tags[i], rcpts=("a@example.test", "b@other.test"))
        threads = [threading.Thread(target=open_one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertTrue(all(sessions), "every session reached DATA")
        # every session ends DATA at (nearly) the same moment
        for s in sessions:
            s.sock.sendall(b".\r\n")
        replies = [s.reply() for s in sessions]
        for s in sessions:
            s.close()
        for code, text in replies:
            self.assertEqual(code, 250, text)
        ids = [int(re.search(r"queued as (\d+)", t).group(1)) for _, t in replies]
        self.assertEqual(len(set(ids)), n)
        # every 250 has its rows: the message with its content and both recipients
        for tag, mid in zip(tags, ids):
            content = bytes(self.pg.scalar("SELECT content FROM mta.messages WHERE id = %s",
                                           (mid,)))
            self.assertIn(b"Subject: " + tag.encode(), content)
            self.assertEqual(self.pg.scalar(
                "SELECT count(*) FROM mta.recipients WHERE message_id = %s", (mid,)), 2)
        # batching happened: fewer statements than messages
        log = self.node.log()[len(before):]
        sizes = [int(m) for m in re.findall(r"event=batch batch=\d+ [^\n]*?messages=(\d+)", log)]
        self.assertEqual(sum(sizes), n, sizes)
        self.assertLess(len(sizes), n / 2, sizes)
        self.assertGreater(max(sizes), 1, sizes)
        self.assertLessEqual(max(sizes), self.batch_max, sizes)
        # several batches were in flight at once in one process: a batch
        # finished while another statement was still running
        inflight = [int(m) for m in re.findall(r"event=batch batch=\d+ lane=\d+ inflight=(\d+)",
                                               log)]
        self.assertEqual(len(inflight), len(sizes), log)
        self.assertGreaterEqual(max(inflight), 2, inflight)
        lanes = set(re.findall(r"event=batch batch=\d+ lane=(\d+)", log))
        self.assertGreaterEqual(len(lanes), 2, lanes)

    def test_invalid_message_refused_alone(self):
        before = self.node.log()
        tags = ["inv-%d-%s" % (i, uuid.uuid4().hex[:8]) for i in range(10)]
        # a virtual MTA the configuration does not know (refused by the
        # listener), and a 4,000-character job id (refused by SQL inside the
        # batch)
        bad = {4: b"X-Virtual-MTA: bad name!\r\n",
               7: b"X-Job: " + os.urandom(2000).hex().encode() + b"\r\n"}
        sessions = []
        for i, tag in enumerate(tags):
            sessions.append(Session(self.port, tag, headers=bad.get(i, b"X-Job: job-ok\r\n")))
        for s in sessions:
            s.sock.sendall(b".\r\n")
        replies = [s.reply() for s in sessions]
        for s in sessions:
            s.close()
        for i, (code, text) in enumerate(replies):
            if i in bad:
                self.assertEqual(code // 100, 5, text)
            else:
                self.assertEqual(code, 250, text)
        self.assertIn("X-Virtual-MTA", replies[4][1])
        self.assertIn("job_id", replies[7][1])
        stored = stored_tags(self.pg)
        for i, tag in enumerate(tags):
            self.assertEqual(tag in stored, i not in bad, tag)
        # the refused message shared a statement with others
        log = self.node.log()[len(before):]
        sizes = [int(m) for m in re.findall(r"event=batch batch=\d+ [^\n]*?messages=(\d+)", log)]
        self.assertLess(len(sizes), len(tags), sizes)

    def test_several_invalid_messages_of_different_kinds(self):
        before = self.node.log()
        tags = ["minv-%d-%s" % (i, uuid.uuid4().hex[:8]) for i in range(16)]
        # refused by the listener (unknown virtual MTA, too many hops) and by
        # SQL inside the batch (job ids over 200 characters, two lengths),
        # next to good messages in the same batches
        bad = {1: b"X-Virtual-MTA: nope-unknown\r\n",
               3: b"X-Job: " + b"j" * 201 + b"\r\n",
               6: b"Received: from x by y\r\n" * 200,
               9: b"X-Job: " + b"k" * 5000 + b"\r\n",
               12: b"X-Job: " + b"q" * 300 + b"\r\n"}
        sessions = [Session(self.port, tag, headers=bad.get(i, b"X-Job: job-ok\r\n"))
                    for i, tag in enumerate(tags)]
        for s in sessions:
            s.sock.sendall(b".\r\n")
        replies = [s.reply() for s in sessions]
        for s in sessions:
            s.close()
        for i, (code, text) in enumerate(replies):
            if i in bad:
                self.assertEqual(code // 100, 5, (i, text))
            else:
                self.assertEqual(code, 250, (i, text))
        for i in (3, 9, 12):
            self.assertIn("job_id", replies[i][1])
        stored = stored_tags(self.pg)
        for i, tag in enumerate(tags):
            self.assertEqual(tag in stored, i not in bad, tag)
        log = self.node.log()[len(before):]
        sizes = [int(m) for m in re.findall(r"event=batch batch=\d+ [^\n]*?messages=(\d+)", log)]
        stored_n = [int(m) for m in re.findall(r"event=batch batch=\d+ [^\n]*?stored=(\d+)", log)]
        # the SQL refusals shared statements with good messages
        self.assertLess(len(sizes), len(tags) - 2, sizes)
        self.assertEqual(sum(sizes) - sum(stored_n), 3, (sizes, stored_n))

    def test_smtplib(self):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as c:
            refused = c.sendmail("s@sender.test", ["lib@example.test"],
                                 b"Subject: smtplib-gc\r\n\r\nx\r\n")
        self.assertEqual(refused, {})
        self.assertIn("smtplib-gc", stored_tags(self.pg))

    def test_z_kill9_one_process(self):
        pids = smtp_in_pids(self.pg)
        self.assertEqual(len(pids), 2)
        victim = pids[0]
        results = []
        stop = threading.Event()

        def sender(k):
            i = 0
            while not stop.is_set():
                tag = "k9-%d-%d-%s" % (k, i, uuid.uuid4().hex[:6])
                results.append((time.monotonic(), tag) + send_one(self.port, tag))
                i += 1
        threads = [threading.Thread(target=sender, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # the root restarts it (1 s backoff) under a new pid
        wait_for(lambda: len(set(smtp_in_pids(self.pg)) - set(pids)) == 1 and
                 len(smtp_in_pids(self.pg)) == 2,
                 timeout=20, what="the smtp-in process restarted")
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        self.assertRegex(self.node.log(), r"proc=smtp-in index=\d pid=%d exited status=SIGKILL"
                         % victim)
        # the other process kept accepting while the victim was down
        early = [r for r in results if killed_at + 0.1 < r[0] < killed_at + 0.9 and r[2] == 250]
        self.assertGreater(len(early), 0, "no 250 between the kill and the restart")
        # nothing acknowledged is lost; nothing refused is stored
        stored = stored_tags(self.pg)
        acked = [r[1] for r in results if r[2] == 250]
        self.assertGreater(len(acked), 20)
        lost = [t for t in acked if t not in stored]
        self.assertEqual(lost, [])
        self.assertTrue(self.node.proc.alive())


class DatabaseRestartTest(unittest.TestCase):
    def test_restart_immediate_mid_batch(self):
        pg = PgServer()
        port = free_port()
        dead = free_port()
        for d in DOMAINS:
            pg.query("SELECT mta.pause_queue(%s)", (d,))
        node = Pgmtad(pg, domains=domain_conf(dead), extra=(
            'listen = { smtp = [ "127.0.0.1:%d" ]; };\n'
            'smtp-listener = { processes = 2; batch-max-wait = "5ms"; };\n' % port))
        self.addCleanup(node.stop)
        wait_for(lambda: send_one(port, "warmup-%s" % uuid.uuid4().hex[:6])[0] == 250,
                 timeout=30, what="a first injection")
        results = []
        stop = threading.Event()

        def sender(k):
            i = 0
            while not stop.is_set():
                tag = "rs-%d-%d-%s" % (k, i, uuid.uuid4().hex[:6])
                results.append((tag,) + send_one(port, tag))
                i += 1
        threads = [threading.Thread(target=sender, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        before_restart = len(results)
        pg.restart("immediate")
        time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()
        self.assertGreater(before_restart, 20, "sessions were committing when PG went down")
        codes = [r[1] for r in results]
        self.assertIn(250, codes)
        self.assertTrue(any(c != 250 for c in codes), "the restart was seen by some session")
        self.assertNotIn(550, codes)
        self.assertFalse(any(500 <= c < 600 for c in codes), codes)
        # after the restart: every 250 stored, every other answer not stored
        wait_for(lambda: send_one(port, "after-%s" % uuid.uuid4().hex[:6])[0] == 250,
                 timeout=40, what="injection after the restart")
        stored = stored_tags(pg)
        acked = [r[0] for r in results if r[1] == 250]
        refused = [r[0] for r in results if r[1] != 250]
        self.assertEqual([t for t in acked if t not in stored], [], "acknowledged and lost")
        self.assertEqual([t for t in refused if t in stored], [], "refused and stored")
        self.assertIn("event=batch-failed", node.log())
        self.assertTrue(node.proc.alive())


if __name__ == "__main__":
    pgmta_test.main()
