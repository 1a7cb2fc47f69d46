"""DKIM signing and BIMI-Selector (node/dkim.c) checked by an independent verifier.

Keys are generated at run time with openssl. tests/tools/dkim_sign loads a
pgmta configuration with the real conf and dkim modules and prints the headers
dkim_headers() adds followed by the message; the result, with line endings
made CRLF as smtp_client sends them, is verified with dkimpy (Debian's
python3-dkim), whose DNS lookup is answered from the generated public keys.
"""
import base64
import os
import re
import subprocess
import unittest

from pgmta_test import main, tmpdir, tool

try:
    import dkim
except ImportError:  # pragma: no cover - reported as a failure below
    dkim = None

BIMI = "v=BIMI1; s=brand;"


def openssl(*args, **kw):
    return subprocess.run(["openssl"] + list(args), check=True, capture_output=True, **kw).stdout


def wire(msg):
    """What smtp_client puts on the wire: every line ending CRLF, final CRLF."""
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", msg)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def sig_header(signed):
    """The DKIM-Signature field (unfolded text) of a signed message, or None."""
    m = re.search(rb"^DKIM-Signature:(.*?)\r\n(?![ \t])", wire(signed), re.M | re.S)
    return m.group(1).decode() if m else None


def tags(header):
    t = {}
    for part in re.sub(r"\r\n[ \t]", " ", header).split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            t[k.strip()] = re.sub(r"\s+", "", v)
    return t


class DkimTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if dkim is None:
            raise AssertionError("python3-dkim is not installed (apt-get install python3-dkim)")
        cls.dir = tmpdir()
        cls.records = {}
        rsa = os.path.join(cls.dir, "rsa1.pem")
        ed = os.path.join(cls.dir, "ed1.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa)
        openssl("genpkey", "-algorithm", "ED25519", "-out", ed)
        for path in (rsa, ed):
            os.chmod(path, 0o600)
        der = openssl("pkey", "-in", rsa, "-pubout", "-outform", "DER")
        cls.records[b"rsa1._domainkey.example.com."] = (
            b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))
        der = openssl("pkey", "-in", ed, "-pubout", "-outform", "DER")
        cls.records[b"ed1._domainkey.ed.example."] = (
            b"v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:]))
        cls.conf = os.path.join(cls.dir, "pgmta.conf")
        with open(cls.conf, "w") as f:
            f.write(f"""
database = {{ url = "postgresql:///mta"; }};
dkim = (
  {{ domain = "example.com"; selector = "rsa1"; key-file = "{rsa}"; }},
  {{ domain = "ed.example"; selector = "ed1"; key-file = "{ed}"; }}
);
bimi = ( {{ domain = "example.com"; selector = "{BIMI}"; }},
         {{ domain = "bimi-only.example"; selector = "v=BIMI1; s=other;"; }} );
""")

    def dnsfunc(self, name, timeout=5):
        return self.records.get(name)

    def sign(self, msg, mail_from="bounces@example.net", conf=None):
        r = subprocess.run([tool("dkim_sign"), "-c", conf or self.conf, "--from", mail_from],
                           input=msg, capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        return r.stdout

    def verify(self, signed):
        return dkim.verify(wire(signed), dnsfunc=self.dnsfunc)

    def assert_signed(self, msg, domain="example.com", alg="rsa-sha256", **kw):
        signed = self.sign(msg, **kw)
        self.assertTrue(signed.endswith(msg), "the message must follow the added headers")
        h = sig_header(signed)
        self.assertIsNotNone(h, signed[:400])
        t = tags(h)
        self.assertEqual(t["a"], alg)
        self.assertEqual(t["d"], domain)
        self.assertEqual(t["c"], "relaxed/relaxed")
        self.assertTrue(self.verify(signed), "verification failed:\n%s" % signed[:2000].decode())
        return signed, t

    def test_rsa_crlf_message_with_bimi(self):
        msg = (b"From: News <news@example.com>\r\nTo: a@dest.test\r\nSubject: hello\r\n"
               b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n"
               b"\r\nHello  world \r\n")
        signed, t = self.assert_signed(msg)
        self.assertTrue(signed.startswith(b"BIMI-Selector: " + BIMI.encode() + b"\r\n"))
        h = t["h"].split(":")
        self.assertEqual(h.count("from"), 2, "From must be oversigned")
        for name in ("to", "subject", "date", "message-id", "bimi-selector"):
            self.assertIn(name, h)
        self.assertNotIn("cc", h)

    def test_ed25519(self):
        msg = (b"From: x@ed.example\r\nTo: a@dest.test\r\nSubject: ed\r\n\r\nbody\r\n")
        signed, t = self.assert_signed(msg, domain="ed.example", alg="ed25519-sha256")
        self.assertNotIn(b"BIMI-Selector", signed)
        self.assertNotIn("bimi-selector", t["h"].split(":"))

    def test_bare_lf_and_whitespace(self):
        msg = (b"From:   Someone\t <someone@Example.COM>  \nTo: a@dest.test\n"
               b"Subject:  spaced \t out   \nMIME-Version: 1.0\n"
               b"Content-Type: text/plain;\n\tcharset=utf-8\n\n"
               b"line one  \t\nline\t\ttwo\n\n  \n.leading dot\n\n\n\n")
        self.assert_signed(msg)
        self.assert_signed(msg.replace(b"example.com", b"ed.example")
                           .replace(b"Example.COM", b"ed.example"),
                           domain="ed.example", alg="ed25519-sha256")

    def test_bare_cr_and_no_final_newline(self):
        msg = b"From: a@example.com\rSubject: cr\r\rbody\rlast line without end"
        self.assert_signed(msg)

    def test_long_and_folded_headers(self):
        to = ",\r\n ".join("user%d@dest%d.test" % (i, i) for i in range(60))
        msg = (b"From: \"Long Sender Name, Inc.\" <marketing@example.com>\r\n"
               b"To: " + to.encode() + b"\r\n"
               b"Subject: " + b"very long subject " * 40 + b"\r\n"
               b"Subject2: not signed\r\n"
               b"List-Unsubscribe: <https://example.com/u?x=" + b"a" * 300 + b">,\r\n"
               b"\t<mailto:unsub@example.com>\r\n"
               b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
               b"Cc: c1@dest.test\r\nCc: c2@dest.test\r\n"
               b"\r\n" + b"x" * 5000 + b"\r\n")
        signed, t = self.assert_signed(msg)
        h = t["h"].split(":")
        self.assertEqual(h.count("cc"), 2)
        self.assertIn("list-unsubscribe", h)
        self.assertIn("list-unsubscribe-post", h)
        # The added header is folded with CRLF TAB into short lines.
        lines = re.search(rb"^DKIM-Signature:.*?\r\n(?![ \t])", signed, re.M | re.S).group(0)
        lines = lines.split(b"\r\n")[:-1]
        self.assertGreater(len(lines), 3)
        for line in lines:
            self.assertLessEqual(len(line.expandtabs(8)), 78, line)
        for line in lines[1:]:
            self.assertTrue(line.startswith(b"\t"), line)

    def test_empty_body(self):
        self.assert_signed(b"From: a@example.com\r\nSubject: empty\r\n\r\n")
        self.assert_signed(b"From: a@example.com\r\nSubject: no separator\r\n")
        self.assert_signed(b"From: a@ed.example\n\n\n\n", domain="ed.example",
                           alg="ed25519-sha256")

    def test_tampering_fails(self):
        msg = (b"From: news@example.com\r\nTo: a@dest.test\r\nSubject: original\r\n\r\n"
               b"Pay 10 EUR\r\n")
        for domain in ("example.com", "ed.example"):
            signed = self.sign(msg.replace(b"example.com", domain.encode()))
            self.assertTrue(self.verify(signed))
            self.assertFalse(self.verify(signed.replace(b"Pay 10", b"Pay 90")), "body")
            self.assertFalse(self.verify(signed.replace(b"original", b"changed")), "subject")
            hdr_end = signed.index(b"\r\nFrom:") + 2
            extra_from = signed[:hdr_end] + b"From: evil@attacker.test\r\n" + signed[hdr_end:]
            self.assertFalse(self.verify(extra_from), "added From must break the signature")
        signed = self.sign(msg)
        self.assertFalse(self.verify(signed.replace(BIMI.encode(), b"v=BIMI1; s=evil;")),
                         "the BIMI-Selector is signed")

    def test_envelope_domain_without_from(self):
        msg = b"To: a@dest.test\r\nSubject: no from\r\n\r\nbody\r\n"
        signed = self.sign(msg, mail_from="bounce@ed.example")
        t = tags(sig_header(signed))
        self.assertEqual(t["d"], "ed.example")
        self.assertEqual(t["a"], "ed25519-sha256")
        # An unparsable From: falls back to the envelope too.
        signed = self.sign(b"From: undisclosed\r\n" + msg, mail_from="b@example.com")
        self.assertEqual(tags(sig_header(signed))["d"], "example.com")
        self.assertTrue(self.verify(signed))

    def test_from_wins_over_envelope_and_display_name_tricks(self):
        msg = (b"From: \"evil@ed.example <x@ed.example>\" (c@ed.example) <news@Example.com>\r\n"
               b"Subject: alignment\r\n\r\nbody\r\n")
        signed, t = self.assert_signed(msg, mail_from="bounce@ed.example")
        self.assertEqual(t["s"], "rsa1")

    def test_no_matching_domain_leaves_message_unchanged(self):
        msg = b"From: a@other.test\nSubject: unsigned\n\nbody\n"
        self.assertEqual(self.sign(msg, mail_from="b@other.test"), msg)
        # A subdomain is not the domain.
        msg = b"From: a@sub.example.com\r\n\r\nbody\r\n"
        self.assertEqual(self.sign(msg, mail_from="b@sub.example.com"), msg)

    def test_bimi_without_dkim_key(self):
        msg = b"From: a@BIMI-only.example\r\n\r\nbody\r\n"
        signed = self.sign(msg)
        self.assertEqual(signed, b"BIMI-Selector: v=BIMI1; s=other;\r\n" + msg)

    def test_world_readable_key_refused(self):
        d = tmpdir()
        key = os.path.join(d, "k.pem")
        openssl("genpkey", "-algorithm", "ED25519", "-out", key)
        conf = os.path.join(d, "pgmta.conf")
        with open(conf, "w") as f:
            f.write('database = { url = "postgresql:///mta"; };\n'
                    'dkim = ( { domain = "example.com"; selector = "s"; key-file = "%s"; } );\n'
                    % key)
        for mode in (0o644, 0o604, 0o601):
            os.chmod(key, mode)
            r = subprocess.run([tool("dkim_sign"), "-c", conf], input=b"From: a@example.com\n\n",
                               capture_output=True, timeout=30)
            self.assertEqual(r.returncode, 1, oct(mode))
            self.assertIn(key + ": DKIM key is accessible by others", r.stderr.decode())
            self.assertEqual(r.stdout, b"")
        os.chmod(key, 0o640)
        r = subprocess.run([tool("dkim_sign"), "-c", conf], input=b"From: a@example.com\n\n",
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertIn(b"a=ed25519-sha256", r.stdout)

    def test_bad_key_files_refused(self):
        d = tmpdir()
        conf = os.path.join(d, "pgmta.conf")
        small = os.path.join(d, "small.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512", "-out", small)
        garbage = os.path.join(d, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("not a key\n")
        ec = os.path.join(d, "ec.pem")
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ec)
        cases = [(small, "at least 1024"), (garbage, "not a PEM private key"),
                 (ec, "unsupported key type"), (os.path.join(d, "missing.pem"), "cannot open")]
        for key, want in cases:
            if os.path.exists(key):
                os.chmod(key, 0o600)
            with open(conf, "w") as f:
                f.write('database = { url = "postgresql:///mta"; };\n'
                        'dkim = ( { domain = "example.com"; selector = "s"; key-file = "%s"; } );\n'
                        % key)
            r = subprocess.run([tool("dkim_sign"), "-c", conf], input=b"",
                               capture_output=True, timeout=30)
            self.assertEqual(r.returncode, 1, key)
            self.assertIn(key + ": ", r.stderr.decode())
            self.assertIn(want, r.stderr.decode())


if __name__ == "__main__":
    main()
