"""smtp_client against misbehaving receivers (RELIABILITY.md "Receiver
faults"): per-recipient 4xx/5xx, 421 greeting and refused connections (next
MX), silence (timeouts), disconnect mid-DATA, endless continuation lines, 1 MB
replies, NUL bytes and bad codes (protocol error, memory bounded), 421 in a
transaction, SIZE and SMTPUTF8 limits."""
import os
import socket
import unittest

import pgmta_test
from pgmta_test import free_port, tmpdir, wait_for
from sink import Delay, Disconnect, DisconnectAfter, Endless, Raw, Silence, Sink, smtp_send

# Peak RSS allowed for smtp_send while a peer floods it (the flood is far
# larger: 512 MB of continuation lines).
MAX_RSS_KB = 64 * 1024


def base_args(*sinks, **kw):
    args = []
    for s in sinks:
        args += ["--host", "127.0.0.1:%d" % (s if isinstance(s, int) else s.port)]
    args += ["--from", "s@a.test", "--timeout-ms", str(kw.get("timeout_ms", 10000))]
    return args


def mails(sink):
    return [c for _, c in sink.commands() if c.upper().startswith("MAIL")]


class RecipientRepliesTest(unittest.TestCase):
    def test_550_and_451_per_recipient(self):
        rules = {"rcpt:fail550@*": "550 5.1.1 no such user",
                 "rcpt:tmp451@*": "451 4.3.0 try later"}
        for pipelining in (True, False):
            with Sink(rules=rules, pipelining=pipelining) as sink:
                r = smtp_send(base_args(sink) + ["--to", "ok1@b.test", "--to", "fail550@b.test",
                                                 "--to", "tmp451@b.test", "--to", "ok2@b.test"])
                ok1, f, t, ok2 = (r.rcpt(a) for a in ("ok1@b.test", "fail550@b.test",
                                                      "tmp451@b.test", "ok2@b.test"))
                self.assertEqual((ok1["outcome"], ok2["outcome"]), ("delivered", "delivered"), r)
                self.assertEqual(f["outcome"], "permanent")
                self.assertEqual((f["code"], f["status"]), (550, "5.1.1"))
                self.assertEqual(f["reply"], "550 5.1.1 no such user")
                self.assertEqual(t["outcome"], "transient")
                self.assertEqual((t["code"], t["status"]), (451, "4.3.0"))
                self.assertEqual([m.rcpts for m in sink.messages()],
                                 [["ok1@b.test", "ok2@b.test"]])

    def test_sequence_first_451_then_250(self):
        with Sink(rules={"rcpt:seq@*": ["451 4.2.0 greylisted", "250 2.1.5 ok"]}) as sink:
            r1 = smtp_send(base_args(sink) + ["--to", "seq@b.test"])
            r2 = smtp_send(base_args(sink) + ["--to", "seq@b.test"])
            self.assertEqual(r1.rcpt("seq@b.test")["outcome"], "transient", r1)
            self.assertEqual(r1.rcpt("seq@b.test")["status"], "4.2.0")
            self.assertEqual(r2.rcpt("seq@b.test")["outcome"], "delivered", r2)
            self.assertEqual(len(sink.messages()), 1)

    def test_final_reply_applies_to_accepted_recipients(self):
        with Sink(rules={"dot:*@perm.test": "554 5.7.1 spam detected",
                         "dot:*@temp.test": "452 4.3.1 out of storage"}) as sink:
            r = smtp_send(base_args(sink) + ["--to", "a@perm.test", "--to", "b@perm.test",
                                             "--msg", _msg(), "--to", "c@temp.test", "--msg",
                                             _msg(), "--to", "d@ok.test", "--msg", _msg()])
            self.assertEqual(r.rcpt("a@perm.test")["outcome"], "permanent", r)
            self.assertEqual(r.rcpt("b@perm.test")["status"], "5.7.1")
            self.assertEqual(r.rcpt("c@temp.test")["outcome"], "transient")
            self.assertEqual(r.rcpt("c@temp.test")["code"], 452)
            self.assertEqual(r.rcpt("d@ok.test")["outcome"], "delivered")

    def test_no_recipient_accepted_354_anyway(self):
        # With PIPELINING, DATA is sent before the RCPT replies are known.
        # A server answering 354 without recipients gets "." alone.
        rules = {"rcpt:*": "550 5.1.1 nobody", "data": "354 go ahead"}
        with Sink(rules=rules) as sink:
            r = smtp_send(base_args(sink) + ["--to", "x@b.test", "--to", "y@b.test", "--msg",
                                             _msg(), "--to", "z@b.test", "--msg", _msg()])
            self.assertTrue(all(x["outcome"] == "permanent" for x in r.results), r)
            msgs = wait_for(lambda: len(sink.messages()) == 2 and sink.messages(), what="msgs")
            self.assertEqual([m.raw for m in msgs], [b"", b""], "no content after 354")

    def test_421_in_transaction(self):
        with Sink(rules={"rcpt:closing@*": Raw(b"421 4.3.2 shutting down\r\n", close=True)}) \
                as sink:
            r = smtp_send(base_args(sink) + ["--to", "ok@b.test", "--to", "closing@b.test",
                                             "--to", "later@b.test", "--msg", _msg(), "--to",
                                             "next@b.test", "--msg", _msg()])
            for a in ("ok@b.test", "closing@b.test", "later@b.test", "next@b.test"):
                self.assertEqual(r.rcpt(a)["outcome"], "transient", r)
            self.assertEqual(r.rcpt("ok@b.test")["code"], 421)
            self.assertFalse(r.conns[0]["usable"])
            self.assertEqual(sink.messages(), [])

    def test_size_limit(self):
        with Sink(size=1000) as sink:
            big = _msg(b"x" * 2000)
            r = smtp_send(base_args(sink) + ["--to", "big@b.test", "--msg", big,
                                             "--to", "small@b.test", "--msg", _msg()])
            self.assertEqual(r.rcpt("big@b.test")["outcome"], "permanent", r)
            self.assertEqual(r.rcpt("big@b.test")["status"], "5.3.4")
            self.assertEqual(r.rcpt("small@b.test")["outcome"], "delivered")
            self.assertEqual(len(mails(sink)), 1)
            self.assertIn("SIZE=", mails(sink)[0])

    def test_smtputf8_not_offered(self):
        with Sink(smtputf8=False) as sink:
            r = smtp_send(base_args(sink) + ["--to", "j\u00fcrgen@b.test", "--msg", _msg(),
                                             "--to", "plain@b.test", "--msg", _msg()])
            self.assertEqual(r.rcpt("j\u00fcrgen@b.test")["outcome"], "permanent", r)
            self.assertEqual(r.rcpt("j\u00fcrgen@b.test")["status"], "5.6.7")
            self.assertEqual(r.rcpt("plain@b.test")["outcome"], "delivered")
        with Sink() as sink:
            r = smtp_send(base_args(sink) + ["--to", "j\u00fcrgen@b.test"])
            self.assertEqual(r.rcpt("j\u00fcrgen@b.test")["outcome"], "delivered", r)
            self.assertIn("SMTPUTF8", mails(sink)[0])

    def test_helo_fallback(self):
        with Sink(rules={"ehlo": "502 5.5.2 what?"}) as sink:
            r = smtp_send(base_args(sink) + ["--to", "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            verbs = [c.split(" ")[0] for _, c in sink.commands()]
            self.assertEqual(verbs[:3], ["EHLO", "HELO", "MAIL"])
            self.assertEqual(sink.sessions()[0].pipelined, 0, "no PIPELINING after HELO")


class HostFailoverTest(unittest.TestCase):
    def test_421_greeting_next_host(self):
        with Sink(rules={"greeting": "421 4.3.2 busy"}) as busy, Sink() as good:
            r = smtp_send(base_args(busy, good) + ["--to", "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(len(good.messages()), 1)
            self.assertEqual(mails(busy), [])
            self.assertEqual(len(busy.sessions()), 1)

    def test_421_greeting_only_host(self):
        with Sink(rules={"greeting": "421 4.3.2 busy"}) as busy:
            r = smtp_send(base_args(busy) + ["--to", "r@b.test"])
            res = r.rcpt("r@b.test")
            self.assertEqual((res["outcome"], res["code"], res["status"]),
                             ("transient", 421, "4.3.2"), r)
            self.assertFalse(r.conns[0]["usable"])

    def test_554_greeting_permanent(self):
        with Sink(rules={"greeting": "554 5.7.1 go away"}) as bad:
            r = smtp_send(base_args(bad) + ["--to", "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "permanent", r)

    def test_connection_refused_next_host(self):
        closed = free_port()
        with Sink() as good:
            r = smtp_send(base_args(closed, good) + ["--to", "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(r.conns[0]["ip"], "127.0.0.1")
        r = smtp_send(base_args(closed) + ["--to", "r@b.test"])
        res = r.rcpt("r@b.test")
        self.assertEqual((res["outcome"], res["code"], res["status"]), ("transient", 0, "4.4.1"))
        self.assertIn("refused", res["reply"])

    def test_disconnect_before_greeting_next_host(self):
        with Sink(rules={"connect": Disconnect()}) as rude, Sink() as good:
            r = smtp_send(base_args(rude, good) + ["--to", "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)

    def test_connect_timeout_next_host(self):
        # A listener that never accepts, with its backlog full: Linux drops
        # further SYNs, so the connect hangs until connect_timeout_ms.
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        fillers = []
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        try:
            with Sink() as good:
                r = smtp_send(base_args(port, good, timeout_ms=1000) + ["--to", "r@b.test"])
                self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
                self.assertGreaterEqual(r.elapsed, 0.9, r)
            r = smtp_send(base_args(port, timeout_ms=1000) + ["--to", "r@b.test"])
            res = r.rcpt("r@b.test")
            self.assertEqual(res["outcome"], "transient", r)
            self.assertIn(res["status"], ("4.4.1", "4.4.2"))
            self.assertLess(r.elapsed, 5)
        finally:
            for c in fillers:
                c.close()
            srv.close()


class TimeoutTest(unittest.TestCase):
    def assert_transient_within(self, r, addr, limit):
        res = r.rcpt(addr)
        self.assertEqual(res["outcome"], "transient", r)
        self.assertEqual(res["status"], "4.4.2", r)
        self.assertLess(r.elapsed, limit, r)

    def test_silent_greeting(self):
        with Sink(rules={"greeting": Silence()}) as sink:
            r = smtp_send(base_args(sink, timeout_ms=1000) + ["--to", "r@b.test"])
            self.assert_transient_within(r, "r@b.test", 5)
            self.assertGreaterEqual(r.elapsed, 0.9)
            self.assertIn("timeout", r.rcpt("r@b.test")["reply"])

    def test_silent_greeting_next_host(self):
        with Sink(rules={"greeting": Silence()}) as silent, Sink() as good:
            r = smtp_send(base_args(silent, good, timeout_ms=1000) + ["--to", "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)

    def test_silent_rcpt(self):
        with Sink(rules={"rcpt:*": Silence()}) as sink:
            r = smtp_send(base_args(sink, timeout_ms=1000) + ["--to", "r@b.test"])
            self.assert_transient_within(r, "r@b.test", 5)

    def test_slow_reply_within_timeout(self):
        with Sink(rules={"rcpt:*": Delay(0.5, "250 2.1.5 ok, slowly")}) as sink:
            r = smtp_send(base_args(sink, timeout_ms=3000) + ["--to", "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)

    def test_silent_after_data(self):
        with Sink(rules={"dot:*": Silence()}) as sink:
            r = smtp_send(base_args(sink) + ["--data-timeout-ms", "1500", "--to", "r@b.test"])
            self.assert_transient_within(r, "r@b.test", 6)
            self.assertGreaterEqual(r.elapsed, 1.4)
            self.assertIn("end of data", r.rcpt("r@b.test")["reply"])
            self.assertEqual(len(wait_for(sink.messages, what="message")), 1)


class BrokenPeerTest(unittest.TestCase):
    def assert_protocol_error(self, rules, addr="r@b.test"):
        with Sink(rules=rules) as sink:
            r = smtp_send(base_args(sink) + ["--to", addr])
            res = r.rcpt(addr)
            self.assertEqual(res["outcome"], "transient", r)
            self.assertIn(res["status"], ("4.4.2",), r)
            self.assertEqual(r.rc, 0)
            self.assertLess(r.maxrss_kb, MAX_RSS_KB, "memory stays bounded")
            self.assertEqual(sink.messages(), [])
            return r

    def test_disconnect_mid_data(self):
        with Sink(rules={"data": DisconnectAfter(5000)}) as sink:
            body = _msg(b"line of text\r\n" * 2000)
            r = smtp_send(base_args(sink) + ["--to", "r1@b.test", "--to", "r2@b.test", "--msg",
                                             body, "--to", "r3@b.test", "--msg", body])
            for a in ("r1@b.test", "r2@b.test", "r3@b.test"):
                self.assertEqual(r.rcpt(a)["outcome"], "transient", r)
            self.assertIn("4.4.2", r.rcpt("r1@b.test")["status"])
            self.assertFalse(r.conns[0]["usable"])
            self.assertEqual(sink.messages(), [])

    def test_endless_continuation_lines(self):
        r = self.assert_protocol_error({"ehlo": Endless(b"250-more")})
        self.assertIn("too long", r.rcpt("r@b.test")["reply"])

    def test_endless_continuation_in_transaction(self):
        self.assert_protocol_error({"rcpt:*": Endless(b"250-" + b"y" * 60)})

    def test_one_megabyte_reply_line(self):
        r = self.assert_protocol_error({"rcpt:*": Raw(b"250 " + b"x" * (1 << 20) + b"\r\n")})
        self.assertIn("too long", r.rcpt("r@b.test")["reply"])

    def test_one_megabyte_without_newline(self):
        self.assert_protocol_error({"greeting": Raw(b"220 " + b"x" * (1 << 20))})

    def test_nul_bytes(self):
        self.assert_protocol_error({"mail:*": Raw(b"250 o\x00k\r\n")})

    def test_bad_code(self):
        self.assert_protocol_error({"rcpt:*": Raw(b"2x0 what\r\n")})

    def test_inconsistent_codes(self):
        self.assert_protocol_error({"mail:*": Raw(b"250-ok\r\n550 no\r\n")})

    def test_greeting_garbage_next_host(self):
        with Sink(rules={"greeting": Raw(b"hello there\r\n")}) as bad, Sink() as good:
            r = smtp_send(base_args(bad, good) + ["--to", "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)


_count = [0]


def _msg(body=b"hello\r\n"):
    d = _msg.dir = getattr(_msg, "dir", None) or tmpdir()
    _count[0] += 1
    p = os.path.join(d, "m%d" % _count[0])
    with open(p, "wb") as f:
        f.write(b"Subject: t\r\n\r\n" + body)
    return p


if __name__ == "__main__":
    pgmta_test.main()
