"""pgmtad against receivers that misbehave: temporary and permanent replies,
silence, a disconnect in the middle of DATA, a 421 greeting. Each case is a
domain of its own whose MX points at a scripted sink; one node serves all."""
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, free_port, main, wait_for, wait_queue_empty
from sink import DisconnectAfter, Silence, Sink

BODY = "Subject: fault test\r\n\r\nhello\r\n"


class Faults(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.dns = DnsServer()
        port = free_port("127.0.0.20")
        cls.port = port
        cls.sinks = {}

        def sink(domain, ip, mx_pref=10, **kw):
            s = Sink(host=ip, port=port, **kw)
            name = "mx-%s-%s" % (domain.split(".")[0], ip.split(".")[-1])
            cls.dns.add_mx(domain, mx_pref, name + ".test")
            cls.dns.add_a(name + ".test", ip)
            cls.sinks[(domain, ip)] = s
            return s

        # 451 for the first attempt, 250 for the second
        sink("retry.test", "127.0.0.20", rules={"rcpt:later@*": ["451 4.3.0 try again later",
                                                                 "250 2.1.5 ok"]})
        # 550 per recipient, other recipients of the same message fine
        sink("reject.test", "127.0.0.21", rules={"rcpt:nouser@*": "550 5.1.1 user unknown"})
        # silence after DATA on the first session, normal afterwards
        sink("silent.test", "127.0.0.22", rules={"dot:*": [Silence(), None]})
        # disconnect in the middle of DATA, then normal
        sink("cut.test", "127.0.0.23", rules={"data": [DisconnectAfter(10), None]})
        # first MX greets with 421, the second MX takes the mail
        sink("busy.test", "127.0.0.24", mx_pref=10, rules={"greeting": "421 4.3.2 busy"})
        sink("busy.test", "127.0.0.25", mx_pref=20)
        # connection refused on the first MX (nothing listens on .26)
        cls.dns.add_mx("refused.test", 10, "mx-refused-26.test")
        cls.dns.add_a("mx-refused-26.test", "127.0.0.26")
        sink("refused.test", "127.0.0.27", mx_pref=20)

        cls.pg.query("SELECT mta.enqueue('s@example.com', ARRAY['later@retry.test'], %s)",
                     (BODY,))
        cls.pg.query("SELECT mta.enqueue('s@example.com', ARRAY['nouser@reject.test', "
                     "'ok@reject.test'], %s)", (BODY,))
        cls.pg.query("SELECT mta.enqueue('s@example.com', ARRAY['a@silent.test'], %s)", (BODY,))
        cls.pg.query("SELECT mta.enqueue('s@example.com', ARRAY['a@cut.test'], %s)", (BODY,))
        cls.pg.query("SELECT mta.enqueue('s@example.com', ARRAY['a@busy.test'], %s)", (BODY,))
        cls.pg.query("SELECT mta.enqueue('s@example.com', ARRAY['a@refused.test'], %s)", (BODY,))
        # smtp-pattern-list: a 4xx whose text says the mailbox is gone bounces at once
        sink("pat.test", "127.0.0.29", rules={"rcpt:*": "452 4.2.1 mailbox disabled for good"})
        cls.pg.query("SELECT mta.enqueue('s@example.com', ARRAY['a@pat.test'], %s)", (BODY,))
        # rows that hold nonsense, written behind mta.enqueue's back: a
        # recipient with CR/LF in it, one whose message row is gone
        sink("odd.test", "127.0.0.28")
        cls.pg.query("SELECT mta.enqueue('s@example.com', ARRAY['good@odd.test'], %s)", (BODY,))
        cls.pg.query("INSERT INTO mta.recipients (message_id, rcpt, domain, vmta, pipe, "
                     "next_attempt, queued_at) SELECT message_id, E'bad\\r\\nRSET@odd.test', "
                     "domain, vmta, pipe, now(), now() FROM mta.recipients "
                     "WHERE rcpt = 'good@odd.test'")
        cls.pg.query("INSERT INTO mta.recipients (message_id, rcpt, domain, vmta, pipe, "
                     "next_attempt, queued_at) SELECT 999999, 'orphan@odd.test', "
                     "domain, vmta, pipe, now(), now() FROM mta.recipients "
                     "WHERE rcpt = 'good@odd.test'")
        # a quoted local part that enqueue accepts is delivered as given; a
        # domain that enqueue refuses (a '_' in it), written behind its
        # back, is set aside like the other nonsense
        cls.pg.query("SELECT mta.enqueue('s@example.com', ARRAY['\"john doe\"@odd.test'], %s)",
                     (BODY,))
        cls.pg.query("INSERT INTO mta.recipients (message_id, rcpt, domain, vmta, pipe, "
                     "next_attempt, queued_at) SELECT message_id, 'u@odd_domain.test', "
                     "domain, vmta, pipe, now(), now() FROM mta.recipients "
                     "WHERE rcpt = 'good@odd.test'")
        cls.node = Pgmtad(cls.pg, cls.dns, extra="smtp-port = %d; generate-bounces = false;" % port,
                          defaults='data-timeout = "2s";',
                          domains=['{ name = "pat.test"; smtp-pattern-list = ( { pattern = '
                                   '"mailbox disabled"; action = "bounce-rcpt"; } ); }'])
        wait_queue_empty(cls.pg, timeout=90, node=cls.node)

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def acct(self, rcpt):
        return self.pg.query("SELECT type, dsn_status, bounce_cat, dsn_diag, dsn_mta FROM mta.acct "
                             "WHERE rcpt = %s AND type <> 'r' ORDER BY time_logged", (rcpt,))

    def test_451_then_250(self):
        rows = self.acct("later@retry.test")
        self.assertEqual([r[0] for r in rows], ["t", "d"])
        self.assertEqual(rows[0][1], "4.3.0")
        self.assertIn("try again later", rows[0][3])
        self.assertEqual(len(self.sinks[("retry.test", "127.0.0.20")].messages()), 1)

    def test_550_bounces_with_category(self):
        rows = self.acct("nouser@reject.test")
        self.assertEqual([r[0] for r in rows], ["b"])
        self.assertEqual(rows[0][1], "5.1.1")
        self.assertEqual(rows[0][2], "bad-mailbox")
        self.assertIn("user unknown", rows[0][3])
        self.assertEqual([r[0] for r in self.acct("ok@reject.test")], ["d"])
        msgs = self.sinks[("reject.test", "127.0.0.21")].messages()
        self.assertEqual([m.rcpts for m in msgs], [["ok@reject.test"]])

    def test_silence_times_out_then_retries(self):
        rows = self.acct("a@silent.test")
        self.assertEqual([r[0] for r in rows], ["t", "d"])
        self.assertTrue(rows[0][1].startswith("4."), rows[0])

    def test_disconnect_mid_data_retries(self):
        rows = self.acct("a@cut.test")
        self.assertEqual([r[0] for r in rows], ["t", "d"])
        self.assertEqual(len(self.sinks[("cut.test", "127.0.0.23")].messages()), 1)

    def test_421_greeting_uses_next_mx(self):
        rows = self.acct("a@busy.test")
        self.assertEqual([r[0] for r in rows], ["d"])
        self.assertIn("127.0.0.25", rows[0][4])
        self.assertGreaterEqual(len(self.sinks[("busy.test", "127.0.0.24")].sessions()), 1)
        self.assertEqual(len(self.sinks[("busy.test", "127.0.0.24")].messages()), 0)
        self.assertEqual(len(self.sinks[("busy.test", "127.0.0.25")].messages()), 1)

    def test_connection_refused_uses_next_mx(self):
        rows = self.acct("a@refused.test")
        self.assertEqual([r[0] for r in rows], ["d"])
        self.assertIn("127.0.0.27", rows[0][4])

    def test_pattern_bounces_a_4xx(self):
        rows = self.acct("a@pat.test")
        self.assertEqual([(r[0], r[1]) for r in rows], [("b", "4.2.1")])
        self.assertEqual(rows[0][2], "inactive-mailbox")

    def test_nonsense_rows_are_set_aside(self):
        rows = dict(self.pg.query("SELECT rcpt, reason FROM mta.quarantine"))
        self.assertEqual(rows, {"bad\r\nRSET@odd.test": "invalid recipient address",
                                "u@odd_domain.test": "invalid recipient address",
                                "orphan@odd.test": "message content missing"})
        self.assertEqual([r[0] for r in self.acct("good@odd.test")], ["d"])
        self.assertEqual([r[0] for r in self.acct('"john doe"@odd.test')], ["d"])
        cmds = [c for _, c in self.sinks[("odd.test", "127.0.0.28")].commands()]
        self.assertFalse(any("RSET@odd.test" in c or "orphan" in c or "odd_domain" in c
                             for c in cmds), cmds)
        self.assertIn('RCPT TO:<"john doe"@odd.test>', cmds)
        self.assertTrue(self.node.proc.alive())

    def test_one_final_row_per_recipient(self):
        bad = self.pg.query("SELECT rcpt_id, count(*) FROM mta.acct WHERE type IN ('d', 'b') "
                            "GROUP BY rcpt_id HAVING count(*) <> 1")
        self.assertEqual(bad, [])
        # every enqueued recipient (the rows written behind enqueue's back
        # have no 'r' row) ends with one final row
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type IN ('d','b')"),
                         self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'r'"))


if __name__ == "__main__":
    main()
