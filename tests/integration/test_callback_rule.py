"""The callback rule against real servers: db_exec, sched_take_slot,
sched_take_tokens, dns_resolve_mx and dns_resolve_host never call their
callback before they return, also when the answer is known at once (cache,
unlimited limits, literals) or the request fails at once (the database went
away while sending). tests/tools/callback_probe counts callbacks that ran
inside their request function; every count must be 0."""
import os
import subprocess
import time
import unittest
import uuid

from dnsserver import DnsServer
from pgmta_test import PgServer, main, tool


def answers(out):
    got = {}
    for line in out.splitlines():
        if line.startswith("answer="):
            parts = dict(p.split("=", 1) for p in line.split())
            got[parts.pop("answer")] = parts
    return got


class CallbackRule(unittest.TestCase):
    def run_probe(self, *args, stdin=None):
        r = subprocess.run([tool("callback_probe")] + [str(a) for a in args], input=stdin,
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PGMTA_LOG_LEVEL="trace"))
        return r

    def test_db_exec_fails_after_return_when_server_is_gone(self):
        """PostgreSQL stopped with -m immediate while the probe's loop is
        blocked: the requests issued next find the connection dead while
        sending; every callback still comes later, from the loop, with NULL,
        and the db freed from inside a failure callback is freed safely."""
        pg = PgServer()
        p = subprocess.Popen([tool("callback_probe"), "db", "--db", pg.dsn, "--requests", "20"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(p.stdout.readline().strip(), "ready")
            pg.stop("immediate")
            time.sleep(0.5)  # the backends are gone, the probe has not read it yet
            p.stdin.write("go\n")
            p.stdin.flush()
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual(p.returncode, 0, out + err)
        lines = dict(kv.split("=", 1) for ln in out.splitlines() for kv in ln.split()
                     if "=" in kv and (ln.startswith("queued=") or ln.startswith("callbacks=")))
        self.assertGreater(int(lines["queued"]), 0, out)
        self.assertEqual(lines["inside"], "0", out + err)
        # every queued request was answered once, with NULL: the server is gone
        self.assertEqual(lines["callbacks"], lines["queued"], out)
        self.assertEqual(lines["null"], lines["queued"], out)
        self.assertIn("event=connection-lost", err)
        self.assertNotIn("ERROR: AddressSanitizer", err)
        self.assertNotIn("runtime error", err)

    def test_sched_answers_from_the_loop(self):
        pg = PgServer()
        domain = "cb%s.example" % uuid.uuid4().hex[:8]
        r = self.run_probe("sched", "--db", pg.dsn, "--domain", domain)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        got = answers(r.stdout)
        for name in ("slot-unlimited", "slot-zero", "tokens-unlimited", "tokens-zero",
                     "tokens-fetched", "tokens-cached", "slot-max1"):
            self.assertIn(name, got, r.stdout)
            self.assertEqual(got[name]["inside"], "0", "%s answered inside the call" % name)
        self.assertEqual(got["slot-unlimited"]["value"], "0")
        self.assertEqual(got["slot-zero"]["value"], "-1")
        self.assertEqual(got["tokens-unlimited"]["value"], "5")
        self.assertEqual(got["tokens-zero"]["value"], "0")
        self.assertEqual(got["tokens-fetched"]["value"], "1")
        self.assertEqual(got["tokens-cached"]["value"], "1")
        self.assertEqual(got["slot-max1"]["value"], "0")
        self.assertIn("done inside=0", r.stdout)
        # one reservation from the database (trace line per answer of
        # mta.take_tokens): the second answer came from the cache
        self.assertEqual(r.stderr.count("event=tokens kind=msg"), 1, r.stderr[-3000:])

    def test_dns_answers_from_the_loop(self):
        dns = DnsServer()
        self.addCleanup(dns.stop)
        dns.add_mx("cb.test", 10, "mx.cb.test")
        dns.add_a("mx.cb.test", "127.0.0.9")
        r = self.run_probe("dns", "--server", dns.server_arg, "--domain", "cb.test")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        got = answers(r.stdout)
        for name in ("mx-first", "mx-cached", "host-literal", "domain-literal",
                     "invalid-name"):
            self.assertIn(name, got, r.stdout)
            self.assertEqual(got[name]["inside"], "0", "%s answered inside the call" % name)
        self.assertEqual(got["mx-first"]["status"], "0")
        self.assertEqual(got["mx-cached"]["status"], "0")
        self.assertEqual(got["host-literal"]["status"], "0")
        self.assertEqual(got["domain-literal"]["status"], "0")
        self.assertEqual(got["invalid-name"]["status"], "1")  # DNS_NXDOMAIN
        self.assertNotIn("cancelled", got)
        self.assertNotIn("cancelled-answered", r.stdout)
        self.assertIn("done inside=0", r.stdout)
        # the second lookup of cb.test came from the cache
        self.assertEqual(dns.queries("cb.test", "MX"), 1)


if __name__ == "__main__":
    main()
