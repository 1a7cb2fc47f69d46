"""A dead destination is throttled, probed and reopened; other queues go on.

dead.test's only MX accepts TCP connections and closes them at once (no
greeting), so every connection attempt fails and is counted. After a run of
failures the queue is throttled: the attempts stop except for a probe now and
then, while ok.test, served by a normal sink, is delivered meanwhile. Then a
real sink takes over dead.test's address and port: the next probe reaches it,
the queue opens and every recipient is delivered once."""
import socket
import threading
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, free_port, main, mx_sink, wait_for, wait_queue_empty

BODY = "Subject: dead destination\r\n\r\nhello\r\n"
N_DEAD = 100
N_OK = 50


class Closer:
    """Accepts connections and closes them at once, recording when."""

    def __init__(self, host, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.times = []
        self._lock = threading.Lock()
        self._stop = False
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                self.times.append(time.monotonic())
            c.close()

    def attempts(self, since=None, until=None):
        with self._lock:
            return sum(1 for t in self.times if (since is None or t >= since) and
                       (until is None or t < until))

    def stop(self):
        self._stop = True
        self._t.join()
        self.sock.close()


class DeadDestination(unittest.TestCase):
    def test_throttle_probe_reopen(self):
        pg = PgServer()
        dns = DnsServer()
        port = free_port("127.0.0.71")
        dns.add_a("mx-dead.test", "127.0.0.71")
        dns.add_mx("dead.test", 10, "mx-dead.test")
        closer = Closer("127.0.0.71", port)
        ok_sink = mx_sink(dns, "ok.test", "127.0.0.72", port)
        node = None
        sink = None
        try:
            for i in range(N_DEAD):
                pg.query("SELECT mta.enqueue('s@example.com', %s, %s)",
                         (["d%03d@dead.test" % i], BODY))
            # one message per connection: without throttling, every
            # recipient would open a connection of its own, again and again
            node = Pgmtad(pg, dns, extra="smtp-port = %d;" % port,
                          domains=['{ name = "dead.test"; max-msg-per-connection = 1; }'])
            wait_for(lambda: "event=throttled" in node.log(), timeout=30,
                     what="dead.test to be throttled")
            throttled_at = time.monotonic()
            # other queues are unaffected while dead.test is throttled
            for i in range(N_OK):
                pg.query("SELECT mta.enqueue('s@example.com', %s, %s)",
                         (["o%03d@ok.test" % i], BODY))
            wait_for(lambda: len(ok_sink.messages()) >= N_OK, timeout=30,
                     what="ok.test to be delivered")
            # watch the throttled queue for 12 s: only probes reach the MX
            # (retry-after 2s doubling to max-retry-after 4s: about 3)
            time.sleep(13)
            window = closer.attempts(since=throttled_at + 1, until=throttled_at + 13)
            before = closer.attempts(until=throttled_at)
            print("attempts before throttle=%d, in 12 s throttled=%d" % (before, window))
            self.assertGreaterEqual(before, 3)
            self.assertGreaterEqual(window, 1, "the dead destination is probed again")
            self.assertLessEqual(window, 8, "throttled: only probes, no connection storm")
            self.assertGreater(pg.scalar("SELECT count(*) FROM mta.recipients "
                                         "WHERE domain = 'dead.test'"), 0)
            # the destination comes back: the next probe opens the queue
            closer.stop()
            closer = None
            from sink import Sink
            sink = Sink(host="127.0.0.71", port=port)
            wait_queue_empty(pg, timeout=60, node=node)
            got = sorted(r for m in sink.messages() for r in m.rcpts)
            self.assertEqual(got, sorted("d%03d@dead.test" % i for i in range(N_DEAD)))
            self.assertIn("event=unthrottled", node.log())
            self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"),
                             N_DEAD + N_OK)
            # transient rows of the failed attempts carry a bounce category
            self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 't' "
                                       "AND bounce_cat IS NULL"), 0)
            self.assertGreater(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 't'"), 0)
        finally:
            if node:
                node.stop()
            if closer:
                closer.stop()
            if sink:
                sink.stop()
            ok_sink.stop()
            dns.stop()
            pg.stop()


if __name__ == "__main__":
    main()
