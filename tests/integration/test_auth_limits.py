"""AUTH on the SMTP listener under load and across processes (see README,
Security): password checks never stall the other sessions of an smtp-in
process, and the per-address failure count is one for the whole node, kept
across a crash of an smtp-in process. Against a real PostgreSQL and the real
listener, from outside."""
import ctypes
import os
import re
import signal
import socket
import threading
import time
import unittest

from listener_test import ListenerNode, auth_plain, smtp_reply, starttls_session
from pgmta_test import wait_for

_libcrypt = ctypes.CDLL("libcrypt.so.1")
_libcrypt.crypt_gensalt.restype = ctypes.c_char_p
_libcrypt.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                    ctypes.c_int]
_libcrypt.crypt.restype = ctypes.c_char_p
_libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]


def yescrypt(password, cost):
    """A yescrypt hash of password with the given cost (5 is crypt(3)'s
    default; each step up doubles the work), and the seconds one check of it
    takes here."""
    salt = _libcrypt.crypt_gensalt(b"$y$", cost, None, 0)
    h = _libcrypt.crypt(password, salt)
    start = time.monotonic()
    _libcrypt.crypt(b"not it", h)
    return h.decode(), time.monotonic() - start


def read_reply(fh):
    return smtp_reply(fh)[0]


def close(t, tf):
    """Closes the session's socket for real (the file object from makefile
    would keep it open)."""
    tf.close()
    t.close()


class Node(ListenerNode):
    processes = 1
    extra_listener = "max-auth-failures = 3;"
    start_timeout = 30

    def started_pids(self, index):
        return re.findall(r"smtp-in index=%d event=started pid=(\d+)" % index, self.node.log())


class ChecksOffTheLoop(Node):
    """A slow hash (yescrypt of a high cost) is checked on worker threads: a
    flood of AUTH attempts does not delay the replies of another session of
    the same (single) smtp-in process."""
    processes = 1

    @classmethod
    def setUpClass(cls):
        # The cheapest cost whose check takes at least 0.2 s here.
        for cost in range(6, 11):
            cls.hash, cls.cost = yescrypt(b"Slow pass", cost)
            if cls.cost >= 0.2:
                break
        cls.users = '{ name = "slow"; password = "%s"; }' % cls.hash
        super().setUpClass()

    def test_other_session_answered_promptly_during_flood(self):
        stop = threading.Event()
        checked = []  # one entry per 535 (a check done) or 454 (pool full)
        errors = []

        def flood(k):
            n = 0
            while not stop.is_set():
                n += 1
                # A fresh address per attempt: the first failure's delay only.
                src = "127.1.%d.%d" % (k, n % 250 + 1)
                try:
                    t, tf = starttls_session(self.port, src)
                    t.sendall(auth_plain(b"slow", b"wrong %d" % n))
                    checked.append(read_reply(tf))
                    close(t, tf)
                except (OSError, ConnectionError, AssertionError) as e:
                    errors.append(repr(e))

        threads = [threading.Thread(target=flood, args=(k,), daemon=True) for k in range(8)]
        other = socket.create_connection(("127.0.0.1", self.port), timeout=60,
                                         source_address=("127.0.0.2", 0))
        of = other.makefile("rb")
        self.assertEqual(read_reply(of), 220)
        for th in threads:
            th.start()
        time.sleep(1.0)  # the flood is on: checks queued
        worst = 0.0
        samples = 0
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            start = time.monotonic()
            other.sendall(b"NOOP\r\n" if samples % 2 else b"EHLO other.test\r\n")
            self.assertEqual(read_reply(of), 250)
            worst = max(worst, time.monotonic() - start)
            samples += 1
            time.sleep(0.02)
        stop.set()
        for th in threads:
            th.join(timeout=120)
        other.sendall(b"QUIT\r\n")
        close(other, of)
        done = checked.count(535)
        # the flood did cost the process several checks in the window
        self.assertGreaterEqual(done, 4, (checked, errors[:5]))
        self.assertLess(worst, max(0.15, self.cost / 2),
                        "worst reply %.3fs, one check %.3fs, %d checks" % (worst, self.cost, done))
        self.assertGreater(samples, 20)
        # The right password still works, and at once once the flood is over.
        t, tf = starttls_session(self.port, "127.0.0.3")
        t.sendall(auth_plain(b"slow", b"Slow pass"))
        self.assertEqual(read_reply(tf), 235)
        t.sendall(b"NOOP\r\n")
        self.assertEqual(read_reply(tf), 250)
        close(t, tf)

    def test_full_pool_and_clients_gone_while_checked(self):
        """Many checks at once: those beyond the pool's queue get 454 and
        count as nothing (the session goes on); clients that disconnect while
        their check is pending leave a result that is dropped, and the
        process lives on."""
        log_before = len(self.node.log())
        pids = self.started_pids(0)
        conns = [starttls_session(self.port, "127.2.0.%d" % (i + 1)) for i in range(48)]
        for t, _ in conns:
            t.sendall(auth_plain(b"slow", b"wrong"))
        # half of them go away at once, their checks still pending
        for t, tf in conns[::2]:
            close(t, tf)
        codes = {}
        for i in range(1, 48, 2):
            t, tf = conns[i]
            codes[i] = read_reply(tf)
        self.assertIn(454, codes.values(), codes)
        self.assertIn(535, codes.values(), codes)
        for i, code in codes.items():
            t, tf = conns[i]
            if code == 454:  # not a failure: no delay, the session goes on
                start = time.monotonic()
                t.sendall(b"NOOP\r\n")
                self.assertEqual(read_reply(tf), 250)
                self.assertLess(time.monotonic() - start, 0.9)
            close(t, tf)

        def dropped():
            return "event=auth-result-dropped" in self.node.log()[log_before:]
        wait_for(dropped, timeout=60, what="a dropped result")
        log = self.node.log()[log_before:]
        self.assertIn("event=auth-busy", log)
        # a 454 is no failure: its address has none
        busy = [i for i, c in codes.items() if c == 454]
        for i in busy:
            self.assertNotRegex(log, r"from=127\.2\.0\.%d event=auth-failed" % (i + 1))
        self.assertEqual(self.started_pids(0), pids)  # no restart
        self.assertNotIn("exited status", log)
        t, tf = starttls_session(self.port, "127.0.0.4")
        t.sendall(auth_plain(b"slow", b"Slow pass"))
        self.assertEqual(read_reply(tf), 235)
        close(t, tf)


class BackoffSharedByProcesses(Node):
    """Two smtp-in processes: the failures of one client address over many
    connections, whichever process answers each, are counted once for the
    node, and the count survives a kill -9 of a process."""
    processes = 2
    users = '{ name = "bob"; password = "Bob pass 1"; }'

    FAILED = re.compile(r"pgmtad\[smtp-in/(\d)\]\[(\d+)\] \w+: smtp-in session=\d+ "
                        r"from=127\.0\.0\.77 event=auth-failed .*address-failures=(\d+)")

    def failures(self):
        return [(int(i), int(p), int(n)) for i, p, n in self.FAILED.findall(self.node.log())]

    def fail_once(self):
        """One failed AUTH on a new connection; returns (index, pid,
        address-failures) of the process that answered. The connection is
        closed once the failure is logged, without waiting for the 535."""
        before = len(self.failures())
        t, tf = starttls_session(self.port, "127.0.0.77")
        t.sendall(auth_plain(b"bob", b"guess"))
        wait_for(lambda: len(self.failures()) > before, timeout=30, what="the failure")
        close(t, tf)
        return self.failures()[before]

    def test_count_shared_and_kept_across_restart(self):
        seen = []
        while len(seen) < 30:
            seen.append(self.fail_once())
            indexes = {i for i, _, _ in seen}
            if len(seen) >= 6 and indexes == {0, 1}:
                break
        self.assertEqual({i for i, _, _ in seen}, {0, 1}, seen)  # both processes answered
        # One count for the node: 1, 2, 3, ... whichever process answered.
        self.assertEqual([n for _, _, n in seen], list(range(1, len(seen) + 1)), seen)

        old = int(self.started_pids(0)[-1])
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: len(self.started_pids(0)) >= 2 and
                 int(self.started_pids(0)[-1]) != old, timeout=30, what="the restart")
        new = int(self.started_pids(0)[-1])
        wait_for(lambda: self.node.log().count("db=pgmtad-smtp-in event=connected") >= 3,
                 timeout=30, what="the restarted process")
        more = []
        while len(more) < 30:
            more.append(self.fail_once())
            if any(p == new for _, p, _ in more):
                break
        self.assertIn(new, [p for _, p, _ in more], more)  # the restarted one answered
        self.assertEqual([n for _, _, n in more],
                         list(range(len(seen) + 1, len(seen) + len(more) + 1)), more)
        # the right password still works
        t, tf = starttls_session(self.port, "127.0.0.78")
        t.sendall(auth_plain(b"bob", b"Bob pass 1"))
        self.assertEqual(read_reply(tf), 235)
        close(t, tf)


if __name__ == "__main__":
    unittest.main()
