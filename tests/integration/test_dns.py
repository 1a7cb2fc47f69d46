"""DNS resolution (node/dns.c) against the test DNS server on loopback.

Each case starts its own DnsServer (tests/lib/dnsserver.py), fills a zone and
runs tests/tools/dns_probe, which resolves names with the real dns module on
a libevent loop and prints one line per result.
"""
import json
import os
import socket
import subprocess
import time
import unittest

from dnsserver import DnsServer
from pgmta_test import Proc, free_port, main, tmpdir, tool, wait_for


def parse_line(line):
    """'NAME status=S ms=N [hosts=H/P/A,A;...] [error=TEXT]' -> dict."""
    out = {"error": None, "hosts": []}
    if " error=" in line:
        line, out["error"] = line.split(" error=", 1)
    out["name"], rest = line.split(" status=", 1)
    for p in ("status=" + rest).split(" "):
        k, v = p.split("=", 1)
        if k == "hosts":
            for h in v.split(";"):
                name, pref, addrs = h.split("/", 2)
                out["hosts"].append((name, int(pref), addrs.split(",")))
        elif k == "ms":
            out["ms"] = int(v)
        else:
            out[k] = v
    return out


class DnsTest(unittest.TestCase):
    def setUp(self):
        self.dns = DnsServer()
        self.addCleanup(self.dns.stop)

    def probe(self, *args, server=None, timeout_ms=3000, check_exit=True):
        argv = [tool("dns_probe"), "--server", server or self.dns.server_arg,
                "--timeout-ms", str(timeout_ms)] + [str(a) for a in args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if check_exit:
            self.assertEqual(r.returncode, 0, "dns_probe failed: %s" % r.stderr)
        return [parse_line(line) for line in r.stdout.splitlines() if line.strip()]

    def one(self, *args, **kw):
        res = self.probe(*args, **kw)
        self.assertEqual(len(res), 1, res)
        return res[0]

    # ---- MX answers --------------------------------------------------------

    def test_mx_preference_order(self):
        d = self.dns
        d.add_mx("example.test", 30, "mx3.example.test")
        d.add_mx("example.test", 10, "mx1.example.test")
        d.add_mx("example.test", 20, "mx2.example.test")
        d.add_a("mx1.example.test", "127.0.0.11")
        d.add_a("mx2.example.test", "127.0.0.12")
        d.add_a("mx3.example.test", "127.0.0.13")
        r = self.one("--port", "2526", "example.test")
        self.assertEqual(r["status"], "OK")
        self.assertEqual(r["hosts"], [
            ("mx1.example.test", 10, ["127.0.0.11:2526"]),
            ("mx2.example.test", 20, ["127.0.0.12:2526"]),
            ("mx3.example.test", 30, ["127.0.0.13:2526"]),
        ])

    def test_equal_preferences_shuffled_also_on_cache_hits(self):
        d = self.dns
        for name, ip in (("a.shuf.test", "127.0.1.1"), ("b.shuf.test", "127.0.1.2"),
                         ("c.shuf.test", "127.0.1.3")):
            d.add_a(name, ip)
        d.add_mx("shuf.test", 10, "a.shuf.test")
        d.add_mx("shuf.test", 10, "b.shuf.test")
        d.add_mx("shuf.test", 5, "c.shuf.test")
        res = self.probe("--repeat", 60, "shuf.test")
        self.assertEqual(len(res), 60)
        orders = set()
        for r in res:
            self.assertEqual(r["status"], "OK")
            names = [h[0] for h in r["hosts"]]
            self.assertEqual(names[0], "c.shuf.test")  # lowest preference always first
            self.assertEqual(sorted(names[1:]), ["a.shuf.test", "b.shuf.test"])
            orders.add(tuple(names))
        self.assertEqual(len(orders), 2, "equal preferences were not shuffled: %s" % orders)
        # all but the first came from the cache
        self.assertEqual(d.queries("shuf.test", "MX"), 1)
        self.assertEqual(d.queries("a.shuf.test", "A"), 1)

    def test_no_mx_falls_back_to_address(self):
        self.dns.add_a("plain.test", "127.0.0.40")
        self.dns.add_aaaa("plain.test", "::1")
        r = self.one("plain.test")
        self.assertEqual(r["status"], "OK")
        self.assertEqual(r["hosts"], [("plain.test", 0, ["127.0.0.40:25", "[::1]:25"])])
        self.assertEqual(self.dns.queries("plain.test", "MX"), 1)

    def test_no_mx_and_no_address_is_no_hosts(self):
        self.dns.add_name("empty.test")
        r = self.one("empty.test")
        self.assertEqual(r["status"], "NO_HOSTS")
        self.assertIn("empty.test", r["error"])

    def test_null_mx(self):
        self.dns.null_mx("nomail.test")
        self.dns.add_a("nomail.test", "127.0.0.50")  # must not be used
        r = self.one("nomail.test")
        self.assertEqual(r["status"], "NULL_MX")
        self.assertEqual(r["hosts"], [])
        self.assertEqual(self.dns.queries("nomail.test", "A"), 0)

    def test_nxdomain(self):
        self.dns.nxdomain("gone.test")
        res = self.probe("gone.test", "never-heard-of.test")
        for r in res:
            self.assertEqual(r["status"], "NXDOMAIN")
            self.assertIn("%s does not exist (NXDOMAIN)" % r["name"], r["error"])

    def test_servfail_and_refused_are_tempfail(self):
        self.dns.servfail("broken.test")
        self.dns.refused("closed.test")
        res = {r["name"]: r for r in self.probe("--repeat", 2, "broken.test", "closed.test")}
        self.assertEqual(res["broken.test"]["status"], "TEMPFAIL")
        self.assertIn("SERVFAIL", res["broken.test"]["error"])
        self.assertEqual(res["closed.test"]["status"], "TEMPFAIL")
        self.assertIn("REFUSED", res["closed.test"]["error"])
        # one query per lookup (NOCHECKRESP: no silent retries) and not cached
        self.assertEqual(self.dns.queries("broken.test", "MX"), 2)

    def test_timeout_is_tempfail_within_the_timeout(self):
        self.dns.timeout("slow.test")
        t0 = time.monotonic()
        r = self.one("slow.test", timeout_ms=1000)
        elapsed = time.monotonic() - t0
        self.assertEqual(r["status"], "TEMPFAIL")
        self.assertLessEqual(r["ms"], 1100)
        self.assertGreaterEqual(r["ms"], 200)
        self.assertLess(elapsed, 3.0)
        self.assertGreaterEqual(self.dns.queries("slow.test", "MX"), 1)

    def test_timeout_of_address_lookup_is_tempfail(self):
        self.dns.add_mx("half.test", 10, "slowmx.half.test")
        self.dns.timeout("slowmx.half.test")
        r = self.one("half.test", timeout_ms=1000)
        self.assertEqual(r["status"], "TEMPFAIL")
        self.assertLessEqual(r["ms"], 1100)

    def test_no_server_answering_is_tempfail(self):
        # a port nobody listens on: ICMP port unreachable -> connection refused
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        r = self.one("example.test", server="127.0.0.1:%d" % port, timeout_ms=1000)
        self.assertEqual(r["status"], "TEMPFAIL")
        self.assertLessEqual(r["ms"], 1100)

    # ---- cache -------------------------------------------------------------

    def test_cache_within_ttl(self):
        self.dns.add_mx("cache.test", 10, "mx.cache.test", ttl=300)
        self.dns.add_a("mx.cache.test", "127.0.0.60", ttl=300)
        res = self.probe("--repeat", 3, "--interval-ms", 1200, "cache.test")
        self.assertEqual([r["status"] for r in res], ["OK"] * 3)
        self.assertEqual(self.dns.queries("cache.test", "MX"), 1)
        self.assertEqual(self.dns.queries("mx.cache.test", "A"), 1)
        self.assertEqual(self.dns.queries("mx.cache.test", "AAAA"), 1)

    def test_cache_expires_after_ttl(self):
        self.dns.add_mx("short.test", 10, "mx.short.test", ttl=1)
        self.dns.add_a("mx.short.test", "127.0.0.61", ttl=1)
        res = self.probe("--repeat", 2, "--interval-ms", 1500, "short.test")
        self.assertEqual([r["status"] for r in res], ["OK"] * 2)
        self.assertEqual(self.dns.queries("short.test", "MX"), 2)
        self.assertEqual(self.dns.queries("mx.short.test", "A"), 2)

    def test_cache_uses_smallest_ttl_of_the_answer(self):
        self.dns.add_mx("mixed.test", 10, "mx1.mixed.test", ttl=300)
        self.dns.add_mx("mixed.test", 20, "mx2.mixed.test", ttl=1)
        self.dns.add_a("mx1.mixed.test", "127.0.0.62")
        self.dns.add_a("mx2.mixed.test", "127.0.0.63")
        self.probe("--repeat", 2, "--interval-ms", 1500, "mixed.test")
        self.assertEqual(self.dns.queries("mixed.test", "MX"), 2)

    def test_negative_answers_cached_by_soa_minimum(self):
        self.dns.nxdomain("nx.test")
        self.dns.add_name("nodata.test")
        self.probe("--repeat", 3, "nx.test", "nodata.test")
        self.assertEqual(self.dns.queries("nx.test", "MX"), 1)
        self.assertEqual(self.dns.queries("nodata.test", "MX"), 1)
        self.assertEqual(self.dns.queries("nodata.test", "A"), 1)

    def test_negative_cache_expires(self):
        srv = DnsServer(neg_ttl=1)
        self.addCleanup(srv.stop)
        srv.nxdomain("nx.test")
        self.probe("--repeat", 2, "--interval-ms", 1500, "nx.test", server=srv.server_arg)
        self.assertEqual(srv.queries("nx.test", "MX"), 2)

    def test_cache_is_case_insensitive(self):
        self.dns.add_mx("case.test", 10, "MX.Case.Test")
        self.dns.add_a("mx.case.test", "127.0.0.64")
        res = self.probe("case.test", "CASE.Test", "case.test.")
        self.assertEqual([r["status"] for r in res], ["OK"] * 3)
        self.assertEqual(res[1]["hosts"], [("mx.case.test", 10, ["127.0.0.64:25"])])
        self.assertEqual(self.dns.queries("case.test", "MX"), 1)

    def test_concurrent_lookups_share_one_query(self):
        self.dns.add_mx("shared.test", 10, "mx.shared.test")
        self.dns.add_mx("other.test", 10, "mx.shared.test")
        self.dns.add_a("mx.shared.test", "127.0.0.65")
        res = self.probe("--parallel", "shared.test", "shared.test", "shared.test", "other.test")
        self.assertEqual([r["status"] for r in res], ["OK"] * 4)
        self.assertEqual(self.dns.queries("shared.test", "MX"), 1)
        self.assertEqual(self.dns.queries("mx.shared.test", "A"), 1)

    def test_cancelled_lookup_never_calls_back(self):
        self.dns.add_mx("c1.test", 10, "mx.c.test")
        self.dns.add_mx("c2.test", 10, "mx.c.test")
        self.dns.add_a("mx.c.test", "127.0.0.66")
        res = self.probe("--parallel", "--cancel-first", "c1.test", "c2.test")
        self.assertEqual([r["name"] for r in res], ["c2.test"])
        self.assertEqual(res[0]["status"], "OK")
        # a cancelled lookup that shares its query with a live one
        res = self.probe("--parallel", "--cancel-first", "c1.test", "c1.test")
        self.assertEqual(len(res), 1)
        self.assertEqual(res[0]["status"], "OK")

    def raw_probe(self, *args, timeout_ms=3000):
        argv = [tool("dns_probe"), "--server", self.dns.server_arg,
                "--timeout-ms", str(timeout_ms)] + [str(a) for a in args]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, "dns_probe failed: %s" % r.stderr)
        return r.stdout.splitlines()

    def test_free_with_lookups_outstanding(self):
        self.dns.timeout("slow1.test")
        self.dns.add_mx("slow2.test", 10, "mx.slow2.test")
        self.dns.timeout("mx.slow2.test")
        lines = self.raw_probe("--free-after-ms", 300, "slow1.test", "slow2.test")
        self.assertEqual(lines, ["freed outstanding=2"])

    def test_free_inside_callback(self):
        self.dns.add_mx("fast.test", 10, "mx.fast.test")
        self.dns.add_a("mx.fast.test", "127.0.0.67")
        self.dns.timeout("slow.test")
        self.dns.add_mx("late.test", 10, "mx.late.test")  # answered with fast.test
        self.dns.add_a("mx.late.test", "127.0.0.68")
        lines = self.raw_probe("--parallel", "--free-in-callback", 1, "slow.test", "fast.test",
                               "late.test")
        self.assertEqual(len(lines), 2, lines)
        self.assertTrue(lines[0].startswith(("fast.test status=OK", "late.test status=OK")))
        self.assertEqual(lines[1], "freed outstanding=2")
        # the callback of a cache hit frees the resolver before dns_resolve_mx returns
        self.dns.reset_queries()
        lines = self.raw_probe("--repeat", 3, "--free-in-callback", 2, "fast.test")
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(lines[1].startswith("fast.test status=OK"))
        self.assertEqual(lines[2], "freed outstanding=0")
        self.assertEqual(self.dns.queries("fast.test", "MX"), 1)

    # ---- big and odd answers -----------------------------------------------

    def test_thousand_mx_records_keep_best_16_over_tcp(self):
        d = self.dns
        n = 1000
        # preferences 1000..1 in zone order, so the best are at the end
        for i in range(n):
            d.add_mx("big.test", n - i, "mx%d.big.test" % i)
            d.add_a("mx%d.big.test" % i, "127.1.%d.%d" % (i // 256, i % 256))
        r = self.one("big.test")
        self.assertEqual(r["status"], "OK")
        self.assertEqual(len(r["hosts"]), 16)
        self.assertEqual([h[1] for h in r["hosts"]], list(range(1, 17)))
        self.assertEqual(r["hosts"][0][0], "mx999.big.test")
        self.assertEqual(r["hosts"][0][2], ["127.1.3.231:25"])
        self.assertGreaterEqual(d.tcp_queries("big.test", "MX"), 1)  # TC -> TCP
        self.assertEqual(d.queries("mx0.big.test", "A"), 0)  # only the best were resolved

    def test_many_equal_preferences_give_16_random_hosts(self):
        d = self.dns
        for i in range(200):
            d.add_mx("flat.test", 10, "h%d.flat.test" % i)
            d.add_a("h%d.flat.test" % i, "127.2.%d.%d" % (i // 256, i % 256))
        res = self.probe("--repeat", 5, "flat.test")
        firsts = set()
        for r in res:
            self.assertEqual(r["status"], "OK")
            self.assertEqual(len(r["hosts"]), 16)
            self.assertEqual(len({h[0] for h in r["hosts"]}), 16)
            firsts.add(r["hosts"][0][0])
        self.assertGreater(len(firsts), 1)

    def test_ipv6_addresses_after_ipv4(self):
        d = self.dns
        d.add_mx("v6.test", 10, "dual.v6.test")
        d.add_mx("v6.test", 20, "only6.v6.test")
        d.add_aaaa("dual.v6.test", "2001:db8::1")
        d.add_a("dual.v6.test", "127.0.0.70")
        d.add_aaaa("only6.v6.test", "::1")
        r = self.one("v6.test")
        self.assertEqual(r["status"], "OK")
        self.assertEqual(r["hosts"], [
            ("dual.v6.test", 10, ["127.0.0.70:25", "[2001:db8::1]:25"]),
            ("only6.v6.test", 20, ["[::1]:25"]),
        ])

    def test_addresses_per_host_are_capped(self):
        for i in range(12):
            self.dns.add_a("many.test", "127.0.3.%d" % (i + 1))
        self.dns.add_aaaa("many.test", "::1")
        r = self.one("many.test")
        self.assertEqual(r["status"], "OK")
        addrs = r["hosts"][0][2]
        self.assertEqual(len(addrs), 8)
        self.assertTrue(all(a.startswith("127.0.3.") for a in addrs))

    def test_mx_host_without_address_is_skipped(self):
        d = self.dns
        d.add_mx("skip.test", 10, "missing.skip.test")   # NXDOMAIN
        d.add_mx("skip.test", 15, "noaddr.skip.test")    # exists, no A/AAAA
        d.add_mx("skip.test", 20, "good.skip.test")
        d.add_name("noaddr.skip.test")
        d.add_a("good.skip.test", "127.0.0.80")
        r = self.one("skip.test")
        self.assertEqual(r["status"], "OK")
        self.assertEqual(r["hosts"], [("good.skip.test", 20, ["127.0.0.80:25"])])

    def test_no_mx_host_with_address_is_no_hosts(self):
        self.dns.add_mx("dead.test", 10, "missing.dead.test")
        self.dns.add_mx("dead.test", 20, "also-missing.dead.test")
        r = self.one("dead.test")
        self.assertEqual(r["status"], "NO_HOSTS")
        self.assertIn("dead.test", r["error"])

    def test_mx_hosts_failing_temporarily_is_tempfail(self):
        self.dns.add_mx("flaky.test", 10, "mx.flaky.test")
        self.dns.add_mx("flaky.test", 20, "gone.flaky.test")
        self.dns.servfail("mx.flaky.test")
        r = self.one("flaky.test")
        self.assertEqual(r["status"], "TEMPFAIL")
        self.assertIn("SERVFAIL", r["error"])

    def test_mx_ip_literal_is_skipped(self):
        self.dns.add_mx("lit.test", 5, "127.0.0.99")
        self.dns.add_mx("lit.test", 10, "mx.lit.test")
        self.dns.add_a("mx.lit.test", "127.0.0.81")
        r = self.one("lit.test")
        self.assertEqual(r["status"], "OK")
        self.assertEqual(r["hosts"], [("mx.lit.test", 10, ["127.0.0.81:25"])])
        self.assertEqual(self.dns.queries("127.0.0.99", "A"), 0)

    def test_mx_through_cname(self):
        self.dns.add_mx("cn.test", 10, "alias.cn.test")
        self.dns.add_cname("alias.cn.test", "real.cn.test")
        self.dns.add_a("real.cn.test", "127.0.0.82")
        r = self.one("cn.test")
        self.assertEqual(r["status"], "OK")
        self.assertEqual(r["hosts"], [("alias.cn.test", 10, ["127.0.0.82:25"])])

    def test_domain_literal(self):
        r = self.one("[127.0.0.83]")
        self.assertEqual(r["hosts"], [("[127.0.0.83]", 0, ["127.0.0.83:25"])])
        r = self.one("[IPv6:::1]")
        self.assertEqual(r["hosts"], [("[IPv6:::1]", 0, ["[::1]:25"])])

    def test_invalid_names(self):
        for bad in ("bad name.test", "a..b.test", ".", ""):
            r = self.one("--", bad)
            self.assertEqual(r["status"], "NXDOMAIN", bad)
            self.assertIn("invalid domain name", r["error"])

    # ---- routes ------------------------------------------------------------

    def test_route_ip_literal_needs_no_dns(self):
        res = self.probe("--route", "--port", 2526, "127.0.0.5", "::1", "[127.0.0.6]")
        self.assertEqual([r["status"] for r in res], ["OK"] * 3)
        self.assertEqual(res[0]["hosts"], [("127.0.0.5", 0, ["127.0.0.5:2526"])])
        self.assertEqual(res[1]["hosts"], [("::1", 0, ["[::1]:2526"])])
        self.assertEqual(res[2]["hosts"], [("[127.0.0.6]", 0, ["127.0.0.6:2526"])])
        self.assertEqual(self.dns.queries("127.0.0.5", "A"), 0)

    def test_route_host_name(self):
        self.dns.add_mx("relay.test", 10, "elsewhere.test")  # a route ignores MX
        self.dns.add_a("relay.test", "127.0.0.7")
        r = self.one("--route", "relay.test")
        self.assertEqual(r["hosts"], [("relay.test", 0, ["127.0.0.7:25"])])
        self.assertEqual(self.dns.queries("relay.test", "MX"), 0)
        r = self.one("--route", "nohost.test")
        self.assertEqual(r["status"], "NXDOMAIN")
        self.dns.add_name("noaddr.test")
        r = self.one("--route", "noaddr.test")
        self.assertEqual(r["status"], "NO_HOSTS")

    # ---- servers -----------------------------------------------------------

    def test_ipv6_server(self):
        srv = DnsServer(host="::1")  # tests/run enables the IPv6 loopback
        self.addCleanup(srv.stop)
        srv.add_mx("six.test", 10, "mx.six.test")
        srv.add_a("mx.six.test", "127.0.0.90")
        r = self.one("six.test", server=srv.server_arg)
        self.assertEqual(r["status"], "OK")
        self.assertEqual(srv.queries("six.test", "MX"), 1)

    def test_bad_server_string_is_refused(self):
        for bad in ("example.com", "127.0.0.1:99999", "[::1", "1.2.3.4:x"):
            r = subprocess.run([tool("dns_probe"), "--server", bad, "example.test"],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn("bad DNS server", r.stderr)

    def test_second_server_used_when_first_is_silent(self):
        silent = DnsServer()
        self.addCleanup(silent.stop)
        silent.silent = True
        self.dns.add_mx("fallback.test", 10, "mx.fallback.test")
        self.dns.add_a("mx.fallback.test", "127.0.0.91")
        argv = [tool("dns_probe"), "--server", silent.server_arg, "--server",
                self.dns.server_arg, "--timeout-ms", "4000", "fallback.test"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        res = parse_line(r.stdout.strip())
        self.assertEqual(res["status"], "OK", r.stdout)
        self.assertEqual(res["hosts"], [("mx.fallback.test", 10, ["127.0.0.91:25"])])
        self.assertGreaterEqual(silent.queries("fallback.test", "MX"), 1)

    def test_standalone_server_with_zone_file(self):
        d = tmpdir()
        zone = {"mx": {"example.test": [[10, "mx1.example.test"], [20, "mx2.example.test"]]},
                "a": {"mx1.example.test": ["127.0.0.10"], "mx2.example.test": ["127.0.0.20"]},
                "aaaa": {"mx2.example.test": ["::1"]},
                "null_mx": ["nomail.test"], "servfail": ["broken.test"]}
        path = os.path.join(d, "zone.json")
        with open(path, "w") as f:
            json.dump(zone, f)
        port = free_port()
        script = os.path.join(os.path.dirname(os.path.abspath(__import__("dnsserver").__file__)),
                              "dnsserver.py")
        p = Proc(["/usr/bin/python3", script, "--port", str(port), "--zone", path],
                 os.path.join(d, "dns.log"))
        self.addCleanup(p.stop)
        wait_for(lambda: "listening" in p.output(), what="dnsserver.py to start")
        res = {r["name"]: r for r in self.probe("example.test", "nomail.test", "broken.test",
                                                server="127.0.0.1:%d" % port)}
        self.assertEqual(res["example.test"]["hosts"], [
            ("mx1.example.test", 10, ["127.0.0.10:25"]),
            ("mx2.example.test", 20, ["127.0.0.20:25", "[::1]:25"]),
        ])
        self.assertEqual(res["nomail.test"]["status"], "NULL_MX")
        self.assertEqual(res["broken.test"]["status"], "TEMPFAIL")


if __name__ == "__main__":
    main()
