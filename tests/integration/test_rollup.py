"""Limits shared across queues, cluster-wide, with three pgmtad nodes on one
PostgreSQL: source-ip-max-smtp-out on a virtual MTA holds for its source IP
across every destination (the sink sees the peer address), while another
virtual MTA's source IP is not limited by it; source-ip-max-connect-rate
likewise for new connections."""
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


if __name__ == "__main__":
    main()
