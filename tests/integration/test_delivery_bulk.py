"""End to end: pgmtad delivers 10,000 messages queued with COPY to 20 test
domains whose MX records point at four sinks, each recipient exactly once,
bodies byte-identical after the dot-stuffing round trip, one 'd' row each."""
import collections
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, copy_submit, free_port, main, wait_queue_empty
from sink import Sink

N_DOMAINS = 20
N_MESSAGES = 10000

SPECIAL_BODIES = [
    # lines starting with ".", a lone ".", "..": stuffed on the wire, restored by the sink
    "Subject: dots\r\n\r\n.leading dot\r\n.\r\n..two\r\nend\r\n",
    # a 10 kB line
    "Subject: long\r\n\r\n" + "x" * 10000 + "\r\nafter\r\n",
    # 8-bit content
    "Subject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGr\u00fc\u00dfe \u2603 \u00e9t\u00e9\r\n",
    # would-be smuggling sequences inside the body
    "Subject: smuggle\r\n\r\nA\n.\nMAIL FROM:<x@y>\r\nB\r\n.\nC\n.\r\nD\r.\r\nE\r\n",
]


def normalise(text):
    """What the wire carries for stored content: every CR, LF or CRLF is CRLF."""
    b = text.encode("utf-8").replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    b = b.replace(b"\n", b"\r\n")
    return b if b.endswith(b"\r\n") else b + b"\r\n"


class BulkDelivery(unittest.TestCase):
    def test_ten_thousand_messages_twenty_domains(self):
        pg = PgServer()
        dns = DnsServer()
        port = free_port("127.0.0.10")
        sinks = [Sink(host="127.0.0.%d" % (10 + i), port=port) for i in range(4)]
        domains = ["d%02d.test" % i for i in range(N_DOMAINS)]
        for i, d in enumerate(domains):
            # two MX hosts per domain, different preferences, spread over the sinks
            dns.add_mx(d, 10, "mx%d.%s" % (i % 4, "sinks.test"))
            dns.add_mx(d, 20, "mx%d.%s" % ((i + 1) % 4, "sinks.test"))
        for i in range(4):
            dns.add_a("mx%d.sinks.test" % i, "127.0.0.%d" % (10 + i))

        rows = []
        expected = {}
        for n in range(N_MESSAGES):
            rcpt = "user%d@%s" % (n, domains[n % N_DOMAINS])
            if n < 400:
                body = SPECIAL_BODIES[n % len(SPECIAL_BODIES)]
            else:
                body = "Subject: m%d\r\nX-N: %d\r\n\r\nbody %d\r\n" % (n, n, n)
            rows.append(("sender@example.com", rcpt, body, "bulk-job"))
            expected[rcpt] = normalise(body)
        copy_submit(pg, rows)
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.recipients"), N_MESSAGES)

        node = Pgmtad(pg, dns, extra="smtp-port = %d;" % port,
                      defaults="max-smtp-out = 4; max-msg-per-connection = 200;")
        wait_queue_empty(pg, timeout=300, node=node)
        self.assertEqual(node.stop(), 0, node.log()[-3000:])

        got = collections.defaultdict(list)
        for s in sinks:
            for m in s.messages():
                for r in m.rcpts:
                    got[r].append(m.content)
        self.assertEqual(len(got), N_MESSAGES)
        dup = [r for r, v in got.items() if len(v) != 1]
        self.assertEqual(dup, [], "recipients delivered more than once")
        bad = [r for r, v in got.items() if v[0] != expected[r]]
        self.assertEqual(bad[:5], [], "bodies differ after the round trip")

        rows = dict(pg.query("SELECT type, count(*) FROM mta.acct GROUP BY type"))
        self.assertEqual(rows.get("r"), N_MESSAGES)
        self.assertEqual(rows.get("d"), N_MESSAGES)
        self.assertNotIn("b", rows)
        self.assertEqual(pg.scalar("SELECT count(DISTINCT rcpt_id) FROM mta.acct WHERE type = 'd'"),
                         N_MESSAGES)
        # the 'd' rows say where it went
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' AND "
                                   "(dlv_destination_ip IS NULL OR dsn_status NOT LIKE '2.%%')"), 0)
        # every sink got work (MX preference with several hosts)
        for s in sinks:
            self.assertGreater(len(s.messages()), 0)
        # the connection limit per domain held
        self.assertLessEqual(max(s.concurrent_max() for s in sinks), 4 * N_DOMAINS)


if __name__ == "__main__":
    main()
