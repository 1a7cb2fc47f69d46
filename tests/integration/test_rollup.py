"""Limits shared across queues, cluster-wide, with three pgmtad nodes on one
PostgreSQL: source-ip-max-smtp-out on a virtual MTA holds for its source IP
across every destination (the sink sees the peer address), while another
virtual MTA's source IP is not limited by it; source-ip-max-connect-rate
likewise for new connections, and source-ip-max-msg-rate for the messages
the sink receives from the source IP.

MX rollup (README, "Traffic shaping, cluster-wide"), with the test DNS and
recording sinks: 50 domains whose MX is mx.provider.test share the limits
of a providers entry (max-smtp-out = 3: never more than 3 connections at
the sink from the cluster), listed under "provider:provider" in
mta.connections and mta.queues; 20 domains on two shared MX hosts share
the "*" entry's max-smtp-out = 2 under an "mx:" key without any provider;
mx-rollup = false keeps each domain's own limit (more connections than
one domain's limit at once); a configured mx-rollup = "NAME" still holds."""
import http.client
import re
import threading
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, copy_submit, free_port, main, mx_sink, wait_for
from sink import Delay, Sink


def concurrent_by_peer(log):
    """The most connections open at once from each peer IP."""
    now, most = {}, {}
    for _, what, _, peer in log:
        ip = peer[0]
        now[ip] = now.get(ip, 0) + (1 if what == "connect" else -1)
        most[ip] = max(most.get(ip, 0), now[ip])
    return most


class SourceIpLimits(unittest.TestCase):
    def test_source_ip_max_smtp_out_across_destinations(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.60")
        domains = ["d%d.test" % n for n in range(6)]
        sink = mx_sink(dns, domains, "127.0.0.60", port,
                       rules={"dot:*": Delay(0.05, "250 ok")})
        rows = []
        for n in range(240):
            vmta = "ip2" if n % 2 == 0 else "ip3"
            rows.append(("s@example.com", "u%d@%s" % (n, domains[n % 6]),
                         "Subject: %d\r\n\r\nx\r\n" % n, vmta))
        copy_submit(pg, rows, columns=("mail_from", "rcpt_to", "content", "vmta"))
        extra = ('smtp-port = %d; virtual-mtas = ( '
                 '{ name = "ip2"; smtp-source-host = "127.0.0.2"; source-ip-max-smtp-out = 2; }, '
                 '{ name = "ip3"; smtp-source-host = "127.0.0.3"; } );' % port)
        doms = ['{ name = "%s"; max-smtp-out = 4; max-msg-per-connection = 5; }' % d
                for d in domains]
        nodes = [Pgmtad(pg, dns, name="node-%s" % n, extra=extra, domains=doms,
                        env={"PGMTA_LOG_LEVEL": "warn"}) for n in "abc"]
        try:
            wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.recipients") == 0,
                     timeout=60, what="240 messages delivered")
        finally:
            for n in nodes:
                n.stop()
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 240)
        most = concurrent_by_peer(sink.connections_log())
        self.assertLessEqual(most.get("127.0.0.2", 0), 2, most)
        self.assertGreater(most.get("127.0.0.2", 0), 0, most)
        # the other source IP is limited per queue only: 6 queues x 4
        self.assertGreater(most.get("127.0.0.3", 0), 2, most)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' "
                                   "AND dlv_source_ip = '127.0.0.2'"), 120)

    def test_source_ip_max_connect_rate_across_destinations(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.61")
        domains = ["r%d.test" % n for n in range(4)]
        sink = mx_sink(dns, domains, "127.0.0.61", port)
        copy_submit(pg, [("s@example.com", "u%d@%s" % (n, domains[n % 4]),
                          "Subject: %d\r\n\r\nx\r\n" % n, "ip2") for n in range(40)],
                    columns=("mail_from", "rcpt_to", "content", "vmta"))
        extra = ('smtp-port = %d; virtual-mtas = ( { name = "ip2"; smtp-source-host = '
                 '"127.0.0.2"; source-ip-max-connect-rate = "5/s"; } );' % port)
        doms = ['{ name = "%s"; max-msg-per-connection = 1; }' % d for d in domains]
        nodes = [Pgmtad(pg, dns, name="node-%s" % n, extra=extra, domains=doms,
                        env={"PGMTA_LOG_LEVEL": "warn"}) for n in "ab"]
        try:
            wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.recipients") == 0,
                     timeout=60, what="40 messages delivered")
        finally:
            for n in nodes:
                n.stop()
        connects = sorted(t for t, what, _, peer in sink.connections_log()
                          if what == "connect" and peer[0] == "127.0.0.2")
        self.assertGreaterEqual(len(connects), 40)
        # 40 connections at 5/s across 4 destinations and 2 nodes: at
        # least ~7 s (a first burst of one bucket's worth allowed)
        self.assertGreater(connects[-1] - connects[0], 5.0, connects)

    def test_source_ip_max_msg_rate_across_destinations(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.62")
        domains = ["m%d.test" % n for n in range(6)]
        sink = mx_sink(dns, domains, "127.0.0.62", port)
        rows = []
        for n in range(160):
            vmta = "ip2" if n % 4 == 0 else "ip3"
            rows.append(("s@example.com", "u%d@%s" % (n, domains[n % 6]),
                         "Subject: %d\r\n\r\nx\r\n" % n, vmta))
        copy_submit(pg, rows, columns=("mail_from", "rcpt_to", "content", "vmta"))
        # 300/m: 5 tokens a second, a bucket of one second's worth (5)
        extra = ('smtp-port = %d; virtual-mtas = ( '
                 '{ name = "ip2"; smtp-source-host = "127.0.0.2"; '
                 'source-ip-max-msg-rate = "300/m"; }, '
                 '{ name = "ip3"; smtp-source-host = "127.0.0.3"; } );' % port)
        doms = ['{ name = "%s"; max-msg-per-connection = 10; }' % d for d in domains]
        nodes = [Pgmtad(pg, dns, name="node-%s" % n, extra=extra, domains=doms,
                        env={"PGMTA_LOG_LEVEL": "warn"}) for n in "abc"]
        try:
            wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.recipients") == 0,
                     timeout=60, what="160 messages delivered")
        finally:
            for n in nodes:
                n.stop()
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 160)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' "
                                   "AND dlv_source_ip = '127.0.0.2'"), 40)
        peer = {s.id: s.peer[0] for s in sink.sessions()}
        times = {}
        for m in sink.messages():
            times.setdefault(peer[m.session_id], []).append(m.time)
        t2, t3 = sorted(times.get("127.0.0.2", [])), sorted(times.get("127.0.0.3", []))
        self.assertEqual((len(t2), len(t3)), (40, 120))

        def most_within(ts, window):
            return max(sum(1 for u in ts[i:] if u - t <= window) for i, t in enumerate(ts))

        # Within any 2 s: 5/s x 2 s + the bucket (5), + 3 for the spread
        # between a claim and the messages reaching the sink.
        self.assertLessEqual(most_within(t2, 2.0), 18, t2)
        # 40 messages at 5/s after a first bucket of 5: at least 7 s
        self.assertGreater(t2[-1] - t2[0], 5.0, t2)
        # the other source IP is not held back: it goes faster than the
        # limit, and is done long before the limited one
        self.assertGreater(most_within(t3, 2.0), 18, t3)
        self.assertLess(t3[-1], t2[-1] - 2.0, (t3[-1], t2[-1]))


def submit_to(pg, domains, per_domain):
    copy_submit(pg, [("s@example.com", "u%d@%s" % (n, d), "Subject: %d\r\n\r\nx\r\n" % n, None)
                     for n in range(per_domain) for d in domains])


TOKEN = "rollup-test-token"


def metrics_rollup_keys(port):
    """The rollup_key labels of pgmta_queue_connections on /metrics."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", "/metrics", headers={"Authorization": "Bearer " + TOKEN})
        body = c.getresponse().read().decode()
    finally:
        c.close()
    return set(re.findall(r'^pgmta_queue_connections\{[^}]*rollup_key="([^"]*)"', body, re.M))


class Watcher:
    """Reads mta.connections and mta.queues every 0.1 s while the nodes
    deliver: the keys connections were listed under, the most listed at
    once, and the queues seen with connections > 0; with http_port, the
    rollup_key labels /metrics gives the queues' connections."""

    def __init__(self, pg, http_port=None):
        self.pg, self.keys, self.most, self.queues = pg, set(), 0, set()
        self.http_port, self.metric_keys = http_port, set()
        self.stop_ev = threading.Event()
        self.conn = pg.connect()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        cur = self.conn.cursor()
        while not self.stop_ev.is_set():
            # a slot is visible in pg_locks a moment before the statement
            # that took it commits its key (domain NULL until then)
            cur.execute("SELECT domain FROM mta.connections")
            rows = [r[0] for r in cur.fetchall()]
            self.keys.update(k for k in rows if k is not None)
            self.most = max(self.most, len(rows))
            cur.execute("SELECT domain, rollup_key FROM mta.queues WHERE connections > 0")
            self.queues.update(cur.fetchall())
            if self.http_port:
                try:
                    self.metric_keys.update(metrics_rollup_keys(self.http_port))
                except OSError:
                    pass
            time.sleep(0.1)

    def stop(self):
        self.stop_ev.set()
        self.thread.join()
        self.conn.close()


def deliver(pg, nodes, total, timeout=120, http_port=None):
    watch = Watcher(pg, http_port)
    try:
        wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.recipients") == 0,
                 timeout=timeout, what="%d messages delivered" % total)
    finally:
        watch.stop()
        for n in nodes:
            n.stop()
    return watch


class MxRollup(unittest.TestCase):
    def test_provider_limit_across_50_domains_and_3_nodes(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.62")
        sink = Sink(host="127.0.0.62", port=port, rules={"dot:*": Delay(0.05, "250 ok")})
        dns.add_a("mx.provider.test", "127.0.0.62")
        domains = ["p%d.test" % n for n in range(50)]
        for d in domains:
            dns.add_mx(d, 10, "mx.provider.test")
        submit_to(pg, domains, 4)
        extra = ('smtp-port = %d; providers = ( { name = "provider"; '
                 'mx-suffix = [ ".Provider.test." ]; max-smtp-out = 3; } );' % port)
        http_port = free_port()
        api = 'listen = { http = "127.0.0.1:%d"; }; http = { token = "%s"; };' % (http_port, TOKEN)
        nodes = [Pgmtad(pg, dns, name="node-%s" % n, extra=extra + (api if n == "a" else ""),
                        defaults="mx-rollup = true", env={"PGMTA_LOG_LEVEL": "warn"})
                 for n in "abc"]
        watch = deliver(pg, nodes, 200, http_port=http_port)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 200)
        # without the rollup each domain would have its own 20 slots
        self.assertLessEqual(sink.concurrent_max(), 3)
        self.assertGreater(sink.concurrent_max(), 0)
        self.assertEqual(watch.keys, {"provider:provider"})
        self.assertGreater(watch.most, 0)
        self.assertLessEqual(watch.most, 3)
        # the queues served counted the provider's connections, under its key
        self.assertTrue(watch.queues, "no queue showed a connection")
        self.assertEqual({k for _, k in watch.queues}, {"provider:provider"})
        self.assertGreater(len({d for d, _ in watch.queues}), 1, watch.queues)
        # /metrics labels the queues' connections with the key
        self.assertIn("provider:provider", watch.metric_keys)

    def test_automatic_key_from_shared_mx_hosts(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.63")
        sink = Sink(host="127.0.0.63", port=port, rules={"dot:*": Delay(0.05, "250 ok")})
        dns.add_a("mxa.shared.test", "127.0.0.63")
        dns.add_a("mxb.shared.test", "127.0.0.63")
        domains = ["a%d.test" % n for n in range(20)]
        for d in domains:
            dns.add_mx(d, 10, "mxb.shared.test")
            dns.add_mx(d, 10, "MXA.shared.test.")
            dns.add_mx(d, 20, "backup.other.test")
        dns.add_a("backup.other.test", "127.0.0.63")
        submit_to(pg, domains, 5)
        nodes = [Pgmtad(pg, dns, name="node-%s" % n, extra="smtp-port = %d;" % port,
                        defaults="mx-rollup = true; max-smtp-out = 2",
                        env={"PGMTA_LOG_LEVEL": "warn"}) for n in "ab"]
        watch = deliver(pg, nodes, 100)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 100)
        self.assertLessEqual(sink.concurrent_max(), 2)
        key = "mx:mxa.shared.test,mxb.shared.test"
        self.assertEqual(watch.keys, {key})
        self.assertEqual({k for _, k in watch.queues}, {key})

    def test_opt_out_keeps_per_domain_limits(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.64")
        domains = ["o%d.test" % n for n in range(8)]
        sink = mx_sink(dns, domains, "127.0.0.64", port, rules={"dot:*": Delay(0.3, "250 ok")})
        submit_to(pg, domains, 6)
        # automatic rollup would give the 8 domains one key of 2 slots
        nodes = [Pgmtad(pg, dns, name="node-o", extra="smtp-port = %d;" % port,
                        defaults="mx-rollup = true; max-smtp-out = 2; "
                                 "max-msg-per-connection = 2",
                        domains=['{ name = "%s"; mx-rollup = false; }' % d for d in domains],
                        env={"PGMTA_LOG_LEVEL": "warn"})]
        watch = deliver(pg, nodes, 48)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 48)
        self.assertGreater(sink.concurrent_max(), 2)
        self.assertTrue(watch.keys <= set(domains), watch.keys)
        self.assertTrue(watch.queues)
        self.assertEqual({k for _, k in watch.queues}, {None})

    def test_configured_rollup_still_holds(self):
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.65")
        domains = ["c%d.test" % n for n in range(10)]
        sink = mx_sink(dns, domains, "127.0.0.65", port, rules={"dot:*": Delay(0.05, "250 ok")})
        submit_to(pg, domains, 5)
        # a providers entry matching the MX host does not override the
        # configured rollup
        extra = ('smtp-port = %d; providers = ( { name = "sinks"; mx-suffix = [ "sinks.test" ]; '
                 'max-smtp-out = 10; } );' % port)
        nodes = [Pgmtad(pg, dns, name="node-%s" % n, extra=extra, defaults="mx-rollup = true",
                        domains=['{ name = "%s"; mx-rollup = "grp"; max-smtp-out = 2; }' % d
                                 for d in domains],
                        env={"PGMTA_LOG_LEVEL": "warn"}) for n in "ab"]
        watch = deliver(pg, nodes, 50)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 50)
        self.assertLessEqual(sink.concurrent_max(), 2)
        self.assertEqual(watch.keys, {"rollup:grp"})
        self.assertEqual({k for _, k in watch.queues}, {"rollup:grp"})


if __name__ == "__main__":
    main()
