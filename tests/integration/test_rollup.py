"""Limits shared across queues, cluster-wide, with three pgmtad nodes on one
PostgreSQL: source-ip-max-smtp-out on a virtual MTA holds for its source IP
across every destination (the sink sees the peer address), while another
virtual MTA's source IP is not limited by it; source-ip-max-connect-rate
likewise for new connections, and source-ip-max-msg-rate for the messages
the sink receives from the source IP."""
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, copy_submit, free_port, main, mx_sink, wait_for
from sink import Delay


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


if __name__ == "__main__":
    main()
