"""max-msg-rate counts messages, i.e. SMTP transactions (as PowerMTA does),
not recipients: with "3/h", three messages of four recipients each go out
(twelve recipients, three transactions) and the fourth message waits. And
the HELO name: node-name unless a virtual MTA sets helo, with a warning at
start when it is not a fully qualified domain name."""
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, free_port, main, mx_sink, wait_for

BODY = "Subject: rate\r\n\r\nhello\r\n"


class MessageRate(unittest.TestCase):
    def test_rate_counts_transactions(self):
        pg = PgServer()
        dns = DnsServer()
        port = free_port("127.0.0.80")
        sink = mx_sink(dns, "rate.test", "127.0.0.80", port)
        node = None
        try:
            for m in range(4):
                pg.query("SELECT mta.enqueue('s@example.com', %s, %s)",
                         (["m%d-r%d@rate.test" % (m, r) for r in range(4)], BODY))
            # one token every 2 s: counted per recipient, the 16 recipients
            # would take 30 s; counted per message, the 4 messages take 6 s
            node = Pgmtad(pg, dns, name="mta1.example.com", extra="smtp-port = %d;" % port,
                          domains=['{ name = "rate.test"; max-msg-rate = "30/m"; }'])
            start = time.monotonic()
            wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.recipients") == 0, timeout=25,
                     what="four messages delivered")
            took = time.monotonic() - start
            msgs = sink.messages()
            print("4 messages x 4 recipients at 30/m: %.1f s, %d transactions" % (took, len(msgs)))
            self.assertEqual(len(msgs), 4)
            self.assertEqual(sorted(len(x.rcpts) for x in msgs), [4, 4, 4, 4])
            for x in msgs:
                self.assertEqual(len({r.split("-")[0] for r in x.rcpts}), 1,
                                 "each transaction holds one whole message")
            self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"), 16)
            # the rate still holds for messages: 3 gaps of about 2 s
            spread = pg.scalar("SELECT extract(epoch FROM max(time_logged) - min(time_logged)) "
                               "FROM mta.acct WHERE type = 'd'")
            self.assertGreaterEqual(float(spread), 4.0)
            # HELO: node-name, a fully qualified one: no warning
            self.assertEqual({s.helo for s in sink.sessions() if s.messages},
                             {"mta1.example.com"})
            self.assertNotIn("event=helo-not-fqdn", node.log())
        finally:
            if node:
                node.stop()
            sink.stop()
            dns.stop()
            pg.stop()

    def test_helo_warning_and_vmta_helo(self):
        pg = PgServer()
        dns = DnsServer()
        port = free_port("127.0.0.81")
        sink = mx_sink(dns, ["plain.test", "via.test"], "127.0.0.81", port)
        node = None
        try:
            pg.query("SELECT mta.enqueue('s@example.com', ARRAY['a@plain.test'], %s)", (BODY,))
            pg.query("SELECT mta.enqueue('s@example.com', ARRAY['a@via.test'], %s, "
                     "vmta => 'vmta-h')", (BODY,))
            node = Pgmtad(pg, dns, name="shortname", extra='smtp-port = %d; virtual-mtas = '
                          '( { name = "vmta-h"; helo = "out.example.net"; } );' % port)
            wait_for(lambda: len(sink.messages()) >= 2, timeout=30, what="both delivered")
            helos = {s.messages[0].rcpts[0]: s.helo for s in sink.sessions() if s.messages}
            self.assertEqual(helos, {"a@plain.test": "shortname", "a@via.test": "out.example.net"})
            # every pipe process warns once at start
            log = node.log()
            self.assertGreaterEqual(log.count("event=helo-not-fqdn helo=\"shortname\""), 2)
            self.assertNotIn("helo=\"out.example.net\"", log)
        finally:
            if node:
                node.stop()
            sink.stop()
            dns.stop()
            pg.stop()


if __name__ == "__main__":
    main()
