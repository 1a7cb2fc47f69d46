"""Memory is bounded per message, not per recipient: 20 messages of 1 MB with
100 recipients each are delivered while the RSS of every pgmtad process
(the root and its children, sampled from /proc while the queue drains) stays
under 100 MB, and they go out as about one SMTP transaction per message and
destination (counted at the sink), not as hundreds of small ones."""
import collections
import os
import threading
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, free_port, main, mx_sink, wait_queue_empty

N_MESSAGES = 20
N_RCPTS = 100
SIZE = 1024 * 1024
RSS_BOUND = 100 * 1024 * 1024


def body(n):
    line = ("m%02d " % n) + "x" * 994 + "\r\n"   # 1000 bytes per line
    return "Subject: big %d\r\n\r\n" % n + line * (SIZE // len(line))


def descendants(pid):
    """pid and every process below it (from /proc/*/stat)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_bytes(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the RSS of every process of a pgmtad tree every 20 ms."""

    def __init__(self, root_pid):
        self.root = root_pid
        self.max = 0
        self.max_pid = None
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            for p in descendants(self.root):
                r = rss_bytes(p)
                if r > self.max:
                    self.max, self.max_pid = r, p
            self.samples += 1
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._t.join()


class Memory(unittest.TestCase):
    def run_case(self, domains, max_transactions):
        pg = PgServer()
        dns = DnsServer()
        port = free_port("127.0.0.60")
        sink = mx_sink(dns, domains, "127.0.0.60", port)
        try:
            expected = set()
            for n in range(N_MESSAGES):
                rcpts = ["u%02d-%03d@%s" % (n, k, domains[k % len(domains)])
                         for k in range(N_RCPTS)]
                expected.update(rcpts)
                pg.query("SELECT mta.enqueue('sender@example.com', %s, %s)", (rcpts, body(n)))
            # On a sanitizer build, AddressSanitizer's quarantine of freed
            # memory (256 MB by default) would be counted as ours: keep it
            # small so that the bound measures pgmtad, not the tool.
            asan = os.environ.get("ASAN_OPTIONS", "")
            asan = (asan + ":" if asan else "") + \
                "quarantine_size_mb=4:thread_local_quarantine_size_kb=64"
            node = Pgmtad(pg, dns, extra="smtp-port = %d;" % port, env={"ASAN_OPTIONS": asan})
            try:
                sampler = RssSampler(node.proc.pid)
                try:
                    wait_queue_empty(pg, timeout=240, node=node)
                finally:
                    sampler.stop()
            finally:
                node.stop()
            msgs = sink.messages()
            got = [r for m in msgs for r in m.rcpts]
            self.assertEqual(sorted(got), sorted(expected), "every recipient once")
            self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"),
                             N_MESSAGES * N_RCPTS)
            for m in msgs:
                self.assertGreater(len(m.content), SIZE - 4096)
            print("recipients per transaction: %s" %
                  sorted(collections.Counter(len(m.rcpts) for m in msgs).items()))
            print("domains=%d transactions=%d max_rss_mb=%.1f samples=%d" %
                  (len(domains), len(msgs), sampler.max / 1048576.0, sampler.samples))
            self.assertGreater(sampler.samples, 5, "RSS sampled while draining")
            self.assertLess(sampler.max, RSS_BOUND,
                            "pgmtad process %s reached %.1f MB" %
                            (sampler.max_pid, sampler.max / 1048576.0))
            # one transaction per message and destination, a few more at most
            # where a claim boundary split a message
            self.assertGreaterEqual(len(msgs), N_MESSAGES * len(domains))
            self.assertLessEqual(len(msgs), max_transactions)
        finally:
            sink.stop()
            dns.stop()
            pg.stop()

    def test_one_domain(self):
        self.run_case(["big.test"], max_transactions=30)

    def test_five_domains(self):
        self.run_case(["big%d.test" % i for i in range(5)], max_transactions=130)


if __name__ == "__main__":
    main()
