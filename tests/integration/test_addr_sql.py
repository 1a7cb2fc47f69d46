"""One address validator: node/addr.c (used by the node) decides every
address exactly as mta.address_domain_full() in sql/010_validate.sql does,
on a real PostgreSQL, for a table of hand-written cases and for thousands
of generated ones built from the characters that matter (specials, quotes,
backslashes, dots, brackets, controls, non-ASCII, long labels). Where both
refuse, the reason is the same text (lengths aside: SQL names the count)."""
import random
import subprocess
import unittest

from pgmta_test import PgServer, main, tool

CASES = [
    "user@example.com", "a.b@c.d", "\"q u\"@example.com", "\"a\\\"b\"@x.org", "\"a@b\"@x.org",
    "\"\"@x.org", "\"a\\\u00e9\"@x.org", "a@[192.0.2.1]", "a@[300.1.1.1]", "a@[1.2.3]",
    "a@[IPv6:::1]", "a@[ipv6:1.2.3.4]", "a@[IPv6:1::2::3]", "a@[IPv6:zz]", "a@[x.org]",
    "a@x..org", "a@x.org.", "a@-x.org", "a@x-.org", "a@x_y.org", "a b@x.org", "a@x y.org",
    ".a@x.org", "a.@x.org", "a..b@x.org", "a@b@x.org", "@x.org", "a@", "", "<a@x.org>",
    "a\r\n@x.org", "a\t@x.org", "a\x7f@x.org", "j\u00f6rg@b\u00fccher.example",
    "l" * 64 + "@x.org", "l" * 65 + "@x.org", "a@" + "d" * 63 + ".org", "a@" + "d" * 64 + ".org",
    "\"" + "q" * 62 + "\"@x.org", "\"" + "q" * 63 + "\"@x.org",
    "a@" + ".".join(["d" * 60] * 4) + ".org", "a(b)@x.org", "a,b@x.org", "a\\b@x.org",
    "\"unclosed@x.org", "\"a\"b@x.org", "\"a\\", "a@[]", "a@[IPv6:]",
]

PIECES = ["a", "Z", "0", ".", "..", "@", "\"", "\\", " ", "-", "_", "[", "]", ":", "(", ")",
          ",", ";", "<", "\t", "\u00e9", "IPv6:", "1.2.3.4", "::1", "x.org", "255", "256",
          "!", "#", "+", "=", "~", "d" * 63, "l" * 30]


def generated(n, seed=20261202):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        k = rnd.randint(1, 8)
        s = "".join(rnd.choice(PIECES) for _ in range(k))
        if rnd.random() < 0.7 and "@" not in s:
            s = s + "@" + rnd.choice(["x.org", "[1.2.3.4]", "[IPv6:::1]", "ex-ample.com",
                                      "d" * 64 + ".org", "x..org", "b\u00fccher.de", ""])
        out.append(s)
    return out


class AddrMatchesSql(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()

    def sql_verdicts(self, addrs):
        c = self.pg.connect()
        with c.cursor() as cur:
            cur.execute("""
                CREATE FUNCTION pg_temp.chk(a text) RETURNS text LANGUAGE plpgsql AS $$
                BEGIN
                    PERFORM mta.address_domain_full(a, 'x');
                    RETURN NULL;
                EXCEPTION WHEN invalid_parameter_value THEN
                    RETURN SQLERRM;
                END $$""")
            cur.execute("SELECT pg_temp.chk(a) FROM unnest(%s::text[]) WITH ORDINALITY t(a, i) "
                        "ORDER BY i", (addrs,))
            return [r[0] for r in cur.fetchall()]

    def c_verdicts(self, addrs):
        data = "".join(a.encode("utf-8").hex() + "\n" for a in addrs)
        r = subprocess.run([tool("addr_probe")], input=data, capture_output=True, text=True,
                           timeout=60, check=True)
        return r.stdout.splitlines()

    def compare(self, addrs):
        sql = self.sql_verdicts(addrs)
        c = self.c_verdicts(addrs)
        self.assertEqual(len(c), len(addrs))
        mismatches = []
        for a, s, v in zip(addrs, sql, c):
            if (s is None) != (v == "ok"):
                mismatches.append((a, s, v))
            elif s is not None and "too long" not in v and not s.endswith(": " + v[4:]):
                mismatches.append((a, s, v))
        self.assertEqual(mismatches, [])
        return sum(1 for s in sql if s is None)

    def test_cases(self):
        accepted = self.compare(CASES)
        self.assertGreater(accepted, 10)
        self.assertLess(accepted, len(CASES) - 20)

    def test_generated(self):
        addrs = generated(5000)
        accepted = self.compare(addrs)
        # the generator makes both kinds in quantity
        self.assertGreater(accepted, 200)
        self.assertLess(accepted, len(addrs) - 200)


if __name__ == "__main__":
    main()
