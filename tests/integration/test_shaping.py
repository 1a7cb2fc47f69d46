"""Cluster-wide traffic shaping with three pgmtad nodes on one PostgreSQL:
max-smtp-out by advisory-lock slots, max-msg-rate by token buckets, slots
of a SIGKILLed node reused, backoff mode from smtp-pattern-list, pause and
resume of a queue, virtual MTAs with their own source address and HELO,
mx-rollups and virtual-MTA pools (shared limits, rotating sources, their
connections in mta.connections and mta.queues)."""
import collections
import subprocess
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import (PGMTA, PgServer, Pgmtad, copy_submit, free_port, main, mx_sink,
                        wait_for, wait_queue_empty)
from sink import Delay


def three_nodes(pg, dns, port, **kw):
    kw.setdefault("env", {"PGMTA_LOG_LEVEL": "warn"})
    extra = 'smtp-port = %d; ' % port + kw.pop("extra", "")
    return [Pgmtad(pg, dns, name="node-%s" % n, extra=extra, **kw) for n in "abc"]


def stop_all(nodes):
    for n in nodes:
        n.stop()


def delivered_times(pg, domain):
    return [r[0] for r in pg.query(
        "SELECT extract(epoch FROM time_logged)::float8 FROM mta.acct "
        "WHERE type = 'd' AND rcpt LIKE %s ORDER BY 1", ("%@" + domain,))]


class ConnectionLimit(unittest.TestCase):
    def test_max_smtp_out_2_cluster_wide(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.50")
        sink = mx_sink(dns, "two.test", "127.0.0.50", port, rules={"dot:*": Delay(0.002, "250 ok")})
        copy_submit(pg, [("s@example.com", "u%d@two.test" % n, "Subject: %d\r\n\r\nx\r\n" % n,
                          None) for n in range(2000)])
        nodes = three_nodes(pg, dns, port, domains=[
            '{ name = "two.test"; max-smtp-out = 2; max-msg-per-connection = 50; }'])
        seen = []
        def connections():
            seen.append(pg.scalar("SELECT count(*) FROM mta.connections WHERE domain = 'two.test'"))
            return pg.scalar("SELECT count(*) FROM mta.recipients") == 0
        wait_for(connections, timeout=180, what="2,000 messages at 2 connections")
        stop_all(nodes)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 2000)
        self.assertLessEqual(sink.concurrent_max(), 2)
        self.assertEqual(sink.concurrent_max(), 2)
        self.assertLessEqual(max(seen), 2)
        self.assertGreater(max(seen), 0, "mta.connections never showed a connection")
        # several nodes took part
        self.assertGreater(pg.scalar("SELECT count(DISTINCT split_part(node, '/', 1)) "
                                     "FROM mta.acct WHERE type = 'd'"), 1)
        self.assertEqual(len({m.rcpts[0] for m in sink.messages()}), 2000)


class RateLimit(unittest.TestCase):
    def test_600_per_minute_cluster_wide(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.51")
        sink = mx_sink(dns, "rate.test", "127.0.0.51", port)
        copy_submit(pg, [("s@example.com", "u%d@rate.test" % n, "Subject: %d\r\n\r\nx\r\n" % n,
                          None) for n in range(1000)])
        nodes = three_nodes(pg, dns, port, domains=[
            '{ name = "rate.test"; max-msg-rate = "600/m"; max-smtp-out = 6; }'])
        wait_for(lambda: len(sink.messages()) > 0, timeout=30, what="first delivery")
        t0 = time.time()
        time.sleep(35)
        stop_all(nodes)
        times = delivered_times(pg, "rate.test")
        # a 30 s window after a 5 s warm-up: 600/m = 300 in 30 s, within 10%
        in_window = [t for t in times if t0 + 5 <= t < t0 + 35]
        self.assertGreaterEqual(len(in_window), 270, len(in_window))
        self.assertLessEqual(len(in_window), 330, len(in_window))
        self.assertGreater(pg.scalar("SELECT count(DISTINCT split_part(node, '/', 1)) "
                                     "FROM mta.acct WHERE type = 'd'"), 1)


class KilledNodeSlots(unittest.TestCase):
    def test_slots_of_killed_node_are_reused(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.52")
        # slow receiver: every message takes 1 s, so connections are long-lived
        sink = mx_sink(dns, "slow.test", "127.0.0.52", port, rules={"dot:*": Delay(1.0, "250 ok")})
        # enough that ready work remains while the killed node's leases run
        copy_submit(pg, [("s@example.com", "u%d@slow.test" % n, "Subject: %d\r\n\r\nx\r\n" % n,
                          None) for n in range(1000)])
        nodes = three_nodes(pg, dns, port, extra='lease-time = "60s";', domains=[
            '{ name = "slow.test"; max-smtp-out = 2; max-msg-per-connection = 1000; }'])
        holders = wait_for(lambda: pg.query(
            "SELECT split_part(node, '/', 1), count(*) FROM mta.connections "
            "WHERE domain = 'slow.test' GROUP BY 1") if pg.scalar(
            "SELECT count(*) FROM mta.connections WHERE domain = 'slow.test'") == 2 else None,
            timeout=30, what="two slots held")
        victim_name = max(holders, key=lambda r: r[1])[0]
        victim = [n for n in nodes if n.name == victim_name][0]
        victim.kill9()
        t_kill = time.time()
        # documented bound on loopback: PostgreSQL sees the closed connection
        # at once; allow 10 s for the surviving nodes' next scheduling turn
        wait_for(lambda: pg.scalar(
            "SELECT count(*) FROM mta.connections WHERE domain = 'slow.test' AND node NOT LIKE %s",
            (victim_name + "%",)) == 2, timeout=10, what="the survivors to take both slots")
        took = time.time() - t_kill
        self.assertLess(took, 10)
        self.assertLessEqual(sink.concurrent_max(), 2 + 2)  # killed sockets may linger briefly
        stop_all([n for n in nodes if n is not victim])


class Backoff(unittest.TestCase):
    def test_421_pattern_switches_queue_to_backoff_and_back(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.53")
        # the first 3 transactions get "421 rate limited", then the receiver is fine
        mx_sink(dns, "bo.test", "127.0.0.53", port,
                rules={"dot:*": ["421 4.7.28 rate limited, slow down"] * 3 + [None]})
        copy_submit(pg, [("s@example.com", "u%d@bo.test" % n, "Subject: %d\r\n\r\nx\r\n" % n,
                          None) for n in range(20)])
        nodes = three_nodes(pg, dns, port, domains=[
            '{ name = "bo.test"; max-smtp-out = 1; max-msg-per-connection = 1; '
            'backoff-to-normal-after = "4s"; backoff-retry-after = "1s"; '
            'backoff-max-msg-rate = "60/m"; '
            'smtp-pattern-list = ( { pattern = "rate limited"; action = "backoff"; } ); }'])
        wait_for(lambda: pg.scalar("SELECT bool_or(backoff) FROM mta.queues "
                                   "WHERE domain = 'bo.test'"), timeout=30, what="backoff")
        entered = time.time()
        # every node sees it: it is database state
        self.assertTrue(pg.scalar("SELECT bool_and(backoff_until > now()) FROM mta.queue "
                                  "WHERE domain = 'bo.test'"))
        # while in backoff the rate is 60/m (one a second): far below normal
        wait_for(lambda: not pg.scalar("SELECT bool_or(backoff) FROM mta.queues "
                                       "WHERE domain = 'bo.test'"), timeout=30,
                 what="return to normal")
        self.assertGreaterEqual(time.time() - entered, 2.5)
        wait_queue_empty(pg, timeout=60)
        stop_all(nodes)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 't' AND "
                                   "dsn_diag LIKE '%%rate limited%%'"), 3)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 20)


class PauseResume(unittest.TestCase):
    def test_pause_stops_queue_on_every_node_within_a_second(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.54")
        sink = mx_sink(dns, ["p.test", "other.test"], "127.0.0.54", port,
                       rules={"dot:*": Delay(0.01, "250 ok")})
        copy_submit(pg, [("s@example.com", "u%d@%s" % (n, d), "Subject: %d\r\n\r\nx\r\n" % n,
                          None) for n in range(3000) for d in ("p.test", "other.test")])
        nodes = three_nodes(pg, dns, port, defaults="max-smtp-out = 3; max-msg-per-connection = 20;")
        count = lambda d: sum(1 for m in sink.messages() if m.rcpts[0].endswith("@" + d))
        wait_for(lambda: count("p.test") > 50, timeout=30, what="deliveries")
        r = subprocess.run([PGMTA, "pause", "queue", "p.test", "--db", pg.dsn],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        time.sleep(1.0)
        after_1s = count("p.test")
        other_1s = count("other.test")
        time.sleep(2.0)
        self.assertEqual(count("p.test"), after_1s, "deliveries went on after the pause")
        self.assertGreater(count("other.test"), other_1s, "other queue stopped too")
        self.assertTrue(pg.scalar("SELECT bool_and(paused) FROM mta.queues WHERE domain = 'p.test'"))
        r = subprocess.run([PGMTA, "resume", "queue", "p.test", "--db", pg.dsn],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        wait_for(lambda: count("p.test") > after_1s, timeout=10, what="deliveries after resume")
        wait_queue_empty(pg, timeout=120)
        stop_all(nodes)


class VirtualMtas(unittest.TestCase):
    def test_source_address_and_helo_per_vmta(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.55")
        sink = mx_sink(dns, "v.test", "127.0.0.55", port)
        for n in range(20):
            vmta = "vmta-a" if n % 2 == 0 else "vmta-b"
            pg.query("SELECT mta.enqueue('s@example.com', ARRAY[%s], %s, vmta => %s)",
                     ("u%d-%s@v.test" % (n, vmta), "Subject: %d\r\n\r\nx\r\n" % n, vmta))
        vmtas = ('virtual-mtas = ( { name = "vmta-a"; smtp-source-host = "127.0.0.2"; '
                 'helo = "a.example.com"; }, { name = "vmta-b"; smtp-source-host = "127.0.0.3"; '
                 'helo = "b.example.com"; } );')
        nodes = three_nodes(pg, dns, port, extra=vmtas)
        wait_queue_empty(pg, timeout=60, node=nodes[0])
        stop_all(nodes)
        sessions = {s.id: s for s in sink.sessions()}
        self.assertEqual(len(sink.messages()), 20)
        for m in sink.messages():
            s = sessions[m.session_id]
            if m.rcpts[0].endswith("-vmta-a@v.test"):
                self.assertEqual((s.peer[0], s.helo), ("127.0.0.2", "a.example.com"))
            else:
                self.assertEqual((s.peer[0], s.helo), ("127.0.0.3", "b.example.com"))
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' AND "
                                   "dlv_source_ip = '127.0.0.2' AND vmta = 'vmta-a'"), 10)


class RollupAndPools(unittest.TestCase):
    def test_mx_rollup_shares_limits_and_pool_rotates_sources(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.56")
        sink = mx_sink(dns, ["r1.test", "r2.test", "pool.test"], "127.0.0.56", port,
                       rules={"dot:*": Delay(0.01, "250 ok")})
        rows = [("s@example.com", "u%d@%s" % (n, d), "Subject: %d\r\n\r\nx\r\n" % n, None)
                for n in range(150) for d in ("r1.test", "r2.test")]
        copy_submit(pg, rows)
        copy_submit(pg, [("s@example.com", "p%d@pool.test" % n, "Subject: %d\r\n\r\nx\r\n" % n,
                          "pool-a") for n in range(40)],
                    columns=("mail_from", "rcpt_to", "content", "vmta"))
        extra = ('virtual-mtas = ( { name = "ip2"; smtp-source-host = "127.0.0.2"; }, '
                 '{ name = "ip3"; smtp-source-host = "127.0.0.3"; } ); '
                 'virtual-mta-pools = ( { name = "pool-a"; virtual-mtas = [ "ip2", "ip3" ]; } );')
        nodes = three_nodes(pg, dns, port, extra=extra, domains=[
            '{ name = "r1.test"; mx-rollup = "shared-provider"; max-smtp-out = 1; '
            'max-msg-per-connection = 20; }',
            '{ name = "r2.test"; mx-rollup = "shared-provider"; max-smtp-out = 1; '
            'max-msg-per-connection = 20; }',
            '{ name = "pool.test"; max-msg-per-connection = 5; }'])
        wait_queue_empty(pg, timeout=120, node=nodes[0])
        stop_all(nodes)
        # r1.test and r2.test share one connection slot: never two at once
        sessions = {s.id: s for s in sink.sessions()}
        intervals = sorted((s.connect_time, s.close_time) for s in sessions.values()
                           if any(m.rcpts[0].split("@")[1] in ("r1.test", "r2.test")
                                  for m in s.messages))
        overlaps = sum(1 for a, b in zip(intervals, intervals[1:]) if b[0] < a[1] - 0.05)
        self.assertEqual(overlaps, 0, "rolled-up domains had parallel connections")
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' AND "
                                   "rcpt LIKE 'u%%'"), 300)
        # the pool's members take turns: both source addresses were used
        sources = collections.Counter(sessions[m.session_id].peer[0] for m in sink.messages()
                                      if m.rcpts[0].endswith("@pool.test"))
        self.assertEqual(set(sources), {"127.0.0.2", "127.0.0.3"}, sources)
        self.assertEqual(sum(sources.values()), 40)

    def test_connections_listed_under_their_keys(self):
        # Every message is held 3 s after its DATA, so the connections stay
        # open while the views are read. One message per connection, in
        # rounds of 3 s: the rollup's 2 slots serve k1 and k2 (a domain counts
        # the rollup's connections once it has had one of them, at the latest
        # in the second round, when k1 has one message left), the pool's 2
        # sessions go out through one member each.
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.57")
        sink = mx_sink(dns, ["k1.test", "k2.test", "kpool.test"], "127.0.0.57", port,
                       rules={"dot:*": Delay(3.0, "250 ok")})
        copy_submit(pg, [("s@example.com", "u%d@%s" % (n, d), "Subject: %d\r\n\r\nx\r\n" % n,
                          None) for n in range(3) for d in ("k1.test", "k2.test")])
        copy_submit(pg, [("s@example.com", "p%d@kpool.test" % n, "Subject: %d\r\n\r\nx\r\n" % n,
                          "pool-k") for n in range(6)],
                    columns=("mail_from", "rcpt_to", "content", "vmta"))
        extra = ('smtp-port = %d; ' % port +
                 'virtual-mtas = ( { name = "ip2"; smtp-source-host = "127.0.0.2"; }, '
                 '{ name = "ip3"; smtp-source-host = "127.0.0.3"; } ); '
                 'virtual-mta-pools = ( { name = "pool-k"; virtual-mtas = [ "ip2", "ip3" ]; } );')
        node = Pgmtad(pg, dns, name="node-k", extra=extra, env={"PGMTA_LOG_LEVEL": "warn"},
                      defaults="max-msg-per-connection = 1;", domains=[
                          '{ name = "k1.test"; mx-rollup = "held-provider"; max-smtp-out = 2; }',
                          '{ name = "k2.test"; mx-rollup = "held-provider"; max-smtp-out = 2; }',
                          '{ name = "kpool.test"; max-smtp-out = 2; }'])
        expected_queues = {("k1.test", None): 2, ("k2.test", None): 2, ("kpool.test", "pool-k"): 2}

        def snapshot():
            conns = pg.query("SELECT domain, vmta, split_part(node, '/', 1), slot "
                             "FROM mta.connections ORDER BY 1, 2, 4")
            queues = {(d, v): n for d, v, n in pg.query(
                "SELECT domain, vmta, connections FROM mta.queues WHERE connections > 0")}
            keys = sorted((d, v) for d, v, _, _ in conns)
            if keys == [("kpool.test", "ip2"), ("kpool.test", "ip3"),
                        ("rollup:held-provider", None), ("rollup:held-provider", None)] \
                    and queues == expected_queues and sink.active() == len(conns):
                return conns
            if conns or not snapshot.last:
                snapshot.last = (conns, queues, sink.active())
            return None
        snapshot.last = None
        try:
            conns = wait_for(snapshot, timeout=20, interval=0.2,
                             what="connections under their keys")
        except AssertionError:
            raise AssertionError("connections, queues, open at the sink: %r" % (snapshot.last,))
        # each row is one connection the sink has open, held by this node
        self.assertEqual({n for _, _, n, _ in conns}, {"node-k"})
        self.assertEqual(sorted(s for d, _, _, s in conns if d.startswith("rollup:")), [0, 1])
        wait_queue_empty(pg, timeout=60, node=node)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 12)
        wait_for(lambda: not pg.query("SELECT 1 FROM mta.connections"), timeout=10,
                 what="connections closed")
        node.stop()
        # the rollup's 2 slots and the pool's 2 sessions: never more at once
        self.assertLessEqual(sink.concurrent_max(), 4)


if __name__ == "__main__":
    main()
