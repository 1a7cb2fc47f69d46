"""smtp_client delivery against real SMTP peers: the scriptable sink and
Postfix's smtp-sink. Several messages with several recipients on one
connection, with and without PIPELINING, byte-exact bodies after
dot-stuffing, HELO name and source address binding, RSET between messages."""
import glob
import os
import unittest

import pgmta_test
from pgmta_test import Proc, free_port, tmpdir, wait_for
from sink import Raw, Silence, Sink, smtp_send


def write(d, name, data):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def normalise(b):
    """What the client must put on the wire (before stuffing): CRLF everywhere."""
    b = b.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if b and not b.endswith(b"\r\n"):
        b += b"\r\n"
    return b


class DeliveryTest(unittest.TestCase):
    def setUp(self):
        self.dir = tmpdir()
        self.m1 = write(self.dir, "m1", b"Subject: one\r\n\r\nfirst message\r\n")
        self.m2 = write(self.dir, "m2", b"Subject: two\r\n\r\nsecond message\r\n")

    def several(self, sink):
        return smtp_send(["--host", "127.0.0.1", "--port", sink.port, "--from", "s@a.test",
                          "--to", "r1@b.test", "--to", "r2@b.test", "--msg", self.m1,
                          "--to", "r3@b.test", "--to", "r4@b.test", "--to", "r5@b.test",
                          "--msg", self.m2, "--batches", "2"])

    def check_several(self, sink, r):
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(len(r.results), 10, r)
        for res in r.results:
            self.assertEqual(res["outcome"], "delivered", r)
            self.assertEqual(res["code"], 250)
            self.assertEqual(res["status"], "2.0.0")
        self.assertEqual([c["usable"] for c in r.conns], [True, True])
        msgs = wait_for(lambda: len(sink.messages()) == 4 and sink.messages(), what="4 messages")
        self.assertEqual([m.rcpts for m in msgs],
                         [["r1@b.test", "r2@b.test"], ["r3@b.test", "r4@b.test", "r5@b.test"]] * 2)
        self.assertEqual(msgs[0].content, b"Subject: one\r\n\r\nfirst message\r\n")
        self.assertEqual(msgs[1].content, b"Subject: two\r\n\r\nsecond message\r\n")
        sessions = wait_for(lambda: [s for s in sink.sessions() if s.close_time], what="close")
        self.assertEqual(len(sink.sessions()), 1, "all batches on one connection")
        cmds = [c.split(" ")[0] for c in sessions[0].commands]
        self.assertEqual(cmds[0], "EHLO")
        self.assertEqual(cmds[-1], "QUIT")
        self.assertEqual(cmds.count("MAIL"), 4)
        self.assertEqual(cmds.count("RCPT"), 10)
        self.assertEqual(cmds.count("DATA"), 4)
        return sessions[0]

    def test_several_messages_pipelining(self):
        with Sink() as sink:
            r = self.several(sink)
            s = self.check_several(sink, r)
            self.assertGreater(s.pipelined, 0, "MAIL/RCPT/DATA were pipelined")
            self.assertEqual(r.conns[0]["ip"], "127.0.0.1")

    def test_several_messages_without_pipelining(self):
        with Sink(pipelining=False) as sink:
            r = self.several(sink)
            s = self.check_several(sink, r)
            self.assertEqual(s.pipelined, 0, "one command at a time when not offered")

    def test_body_round_trip(self):
        bodies = [
            b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n...\r\nend\r\n",
            b"Subject: long\r\n\r\n" + b"x" * 10240 + b"\r\n" + b"." + b"y" * 10240 + b"\r\n",
            b"Subject: 8bit\r\n\r\n\xc3\xa4\xc3\xb6\xc3\xbc \xff\xfe binary-ish\r\n",
            b"Subject: bare lf\n\nline one\nline two\n.dot after lf\n",
            b"Subject: bare cr\r\rline\rmore",
            b"Subject: smuggle1\r\n\r\nA\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@x>\r\nDATA\r\n",
            b"Subject: smuggle2\r\n\r\nA\r\n.\nMAIL FROM:<evil@x>\r\n",
            b"Subject: smuggle3\r\n\r\nA\n.\r\nMAIL FROM:<evil@x>\r\n",
            b"Subject: smuggle4\r\n\r\nA\r.\r\nMAIL FROM:<evil@x>\r\n",
            b"Subject: smuggle5\r\n\r\nA\r\n.\rMAIL FROM:<evil@x>\r\n",
            b"no final newline",
            b"",
        ]
        args = ["--host", "127.0.0.1", "--from", "s@a.test"]
        for i, b in enumerate(bodies):
            args += ["--to", "r%d@b.test" % i, "--msg", write(self.dir, "b%d" % i, b)]
        with Sink() as sink:
            r = smtp_send(args + ["--port", sink.port])
            self.assertEqual(r.rc, 0, r)
            self.assertTrue(all(x["outcome"] == "delivered" for x in r.results), r)
            msgs = wait_for(lambda: len(sink.messages()) >= len(bodies) and sink.messages(),
                            what="messages")
            self.assertEqual(len(msgs), len(bodies), "exactly one message per body (no smuggling)")
            for b, m in zip(bodies, msgs):
                self.assertEqual(m.content, normalise(b), "content of %r" % b[:30])
                # on the wire: CRLF only, and every line starting with "." was stuffed
                self.assertNotIn(b"\r\n.\r\n", b"\r\n" + m.raw)
                for line in m.raw.split(b"\r\n"):
                    self.assertNotIn(b"\r", line)
                    self.assertNotIn(b"\n", line)
                    if line.startswith(b"."):
                        self.assertTrue(line.startswith(b".."), line)
            self.assertEqual(len([c for _, c in sink.commands() if c.startswith("MAIL")]),
                             len(bodies))
            eight = msgs[2]
            self.assertIn("BODY=8BITMIME", eight.mail_params)
            self.assertNotIn("BODY=8BITMIME", msgs[0].mail_params)

    def test_helo_name_and_source_address(self):
        with Sink(host="127.0.0.1") as sink:
            r = smtp_send(["--host", "127.0.0.1", "--port", sink.port, "--source", "127.0.0.2",
                           "--helo", "vmta-a.example.com", "--from", "s@a.test", "--to",
                           "r@b.test"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertEqual(r.conns[0]["source"], "127.0.0.2")
            s = sink.sessions()[0]
            self.assertEqual(s.peer[0], "127.0.0.2")
            self.assertEqual(s.helo, "vmta-a.example.com")

    def test_rset_after_rejected_sender(self):
        rules = {"mail:bad@*": "550 5.7.1 sender rejected"}
        for pipelining in (True, False):
            with Sink(rules=rules, pipelining=pipelining) as sink:
                r = smtp_send(["--host", "127.0.0.1", "--port", sink.port, "--from", "bad@a.test",
                               "--to", "r1@b.test", "--to", "r2@b.test", "--msg", self.m1,
                               "--from", "good@a.test", "--to", "r3@b.test", "--msg", self.m2])
                self.assertEqual(r.rcpt("r1@b.test")["outcome"], "permanent", r)
                self.assertEqual(r.rcpt("r1@b.test")["status"], "5.7.1")
                self.assertEqual(r.rcpt("r2@b.test")["outcome"], "permanent")
                self.assertIn("sender rejected", r.rcpt("r2@b.test")["reply"])
                self.assertEqual(r.rcpt("r3@b.test")["outcome"], "delivered", r)
                cmds = [c.split(" ")[0] for _, c in sink.commands()]
                self.assertIn("RSET", cmds)
                self.assertLess(cmds.index("RSET"), cmds.index("MAIL", cmds.index("MAIL") + 1))
                self.assertEqual([m.rcpts for m in sink.messages()], [["r3@b.test"]])


    def test_envid_xtext(self):
        with Sink() as sink:
            r = smtp_send(["--host", "127.0.0.1", "--port", sink.port, "--from", "s@a.test",
                           "--to", "r@b.test", "--envid", "job+1=x y"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertIn("ENVID=job+2B1+3Dx+20y", sink.messages()[0].mail_params)

    def test_quit_without_answer(self):
        with Sink(rules={"quit": Silence()}) as sink:
            r = smtp_send(["--host", "127.0.0.1", "--port", sink.port, "--from", "s@a.test",
                           "--to", "r@b.test", "--timeout-ms", "20000"])
            self.assertEqual(r.rcpt("r@b.test")["outcome"], "delivered", r)
            self.assertLess(r.elapsed, 6, "QUIT waits a short time only")
            self.assertEqual(sink.sessions()[0].commands[-1], "QUIT")

    def test_server_closes_between_batches(self):
        rules = {"dot:*": [Raw(b"250 2.0.0 ok\r\n421 4.4.2 idle, closing\r\n", close=True),
                           "250 2.0.0 ok"]}
        with Sink(rules=rules) as sink:
            r = smtp_send(["--host", "127.0.0.1", "--port", sink.port, "--from", "s@a.test",
                           "--to", "r@b.test", "--batches", "3"])
            self.assertEqual(r.rcpt("r@b.test", 0)["outcome"], "delivered", r)
            b1 = r.rcpt("r@b.test", 1)
            self.assertEqual((b1["outcome"], b1["code"]), ("transient", 421), r)
            self.assertEqual(r.rcpt("r@b.test", 2)["outcome"], "delivered", r)
            self.assertEqual([c["usable"] for c in r.conns], [True, False, True])
            self.assertEqual(len(sink.sessions()), 2)
            self.assertEqual(len(sink.messages()), 2)


class PostfixSinkTest(unittest.TestCase):
    def run_against_smtp_sink(self, extra):
        d = tmpdir()
        os.chmod(d, 0o777)
        port = free_port()
        argv = ["/usr/sbin/smtp-sink"] + extra + ["-d", os.path.join(d, "%M."),
                                                  "127.0.0.1:%d" % port, "100"]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "nobody"]
        sink = Proc(argv, os.path.join(tmpdir(), "smtp-sink.log"))
        wait_for(lambda: _can_connect(port), what="smtp-sink listening")
        m = write(d, "in.msg", b"Subject: pf\n\n.dot line\nbody\n")
        r = smtp_send(["--host", "127.0.0.1", "--port", port, "--from", "s@a.test",
                       "--to", "a@b.test", "--to", "b@b.test", "--msg", m, "--to", "c@b.test",
                       "--msg", m, "--batches", "3"])
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(len(r.results), 9, r)
        self.assertTrue(all(x["outcome"] == "delivered" for x in r.results), r)
        self.assertEqual(len(r.conns), 3)
        self.assertTrue(all(c["usable"] for c in r.conns))
        dumps = wait_for(lambda: len(glob.glob(os.path.join(d, "*.*"))) >= 7 and
                         [p for p in glob.glob(os.path.join(d, "*.*")) if not
                          p.endswith("in.msg")], what="dumps")
        self.assertEqual(len(dumps), 6)
        for p in dumps:
            with open(p, "rb") as f:
                data = f.read()
            self.assertIn(b"Subject: pf", data)
            self.assertIn(b"\n.dot line", data)
            self.assertNotIn(b"\n..dot line", data, "smtp-sink removed our stuffing")
        sink.stop()

    def test_smtp_sink_pipelining(self):
        self.run_against_smtp_sink([])

    def test_smtp_sink_no_pipelining(self):
        self.run_against_smtp_sink(["-p"])


def _can_connect(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


if __name__ == "__main__":
    pgmta_test.main()
