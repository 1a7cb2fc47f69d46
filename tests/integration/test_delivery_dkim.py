"""DKIM and BIMI through pgmtad: messages from configured sender domains
arrive at the receiver signed (rsa-sha256 and ed25519-sha256) and verify with
dkimpy; other domains arrive unchanged; a world-readable key is refused at
start like any configuration error."""
import base64
import os
import subprocess
import unittest

import dkim

from dnsserver import DnsServer
from pgmta_test import (PGMTAD, PgServer, Pgmtad, free_port, main, mx_sink, tmpdir,
                        wait_queue_empty)


def openssl(*args):
    return subprocess.run(["openssl"] + list(args), check=True, capture_output=True).stdout


BODY = ("From: News <news@%s>\r\nTo: you@dk.test\r\nSubject: signed\r\n"
        "Message-ID: <%s@example>\r\n\r\n.leading dot\r\nbody line\r\n")


class DkimDelivery(unittest.TestCase):
    def test_signed_on_the_wire(self):
        keys = tmpdir()
        rsa, ed = os.path.join(keys, "rsa.pem"), os.path.join(keys, "ed.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa)
        openssl("genpkey", "-algorithm", "ED25519", "-out", ed)
        os.chmod(rsa, 0o600)
        os.chmod(ed, 0o600)
        records = {
            b"s1._domainkey.brand.example.": b"v=DKIM1; k=rsa; p=" + base64.b64encode(
                openssl("pkey", "-in", rsa, "-pubout", "-outform", "DER")),
            b"e1._domainkey.ed.example.": b"v=DKIM1; k=ed25519; p=" + base64.b64encode(
                openssl("pkey", "-in", ed, "-pubout", "-outform", "DER")[-32:]),
        }
        pg, dns = PgServer(), DnsServer()
        port = free_port("127.0.0.57")
        sink = mx_sink(dns, "dk.test", "127.0.0.57", port)
        for n, dom in enumerate(("brand.example", "ed.example", "plain.example")):
            pg.query("SELECT mta.enqueue(%s, ARRAY['you@dk.test'], %s)",
                     ("bounces@" + dom, BODY % (dom, n)))
        extra = ('smtp-port = %d;\n'
                 'dkim = ( { domain = "brand.example"; selector = "s1"; key-file = "%s"; },\n'
                 '         { domain = "ed.example"; selector = "e1"; key-file = "%s"; } );\n'
                 'bimi = ( { domain = "brand.example"; selector = "v=BIMI1; s=brand;"; } );'
                 % (port, rsa, ed))
        node = Pgmtad(pg, dns, extra=extra)
        wait_queue_empty(pg, timeout=60, node=node)
        self.assertEqual(node.stop(), 0)

        got = {m.mail_from.split("@")[1]: m.content for m in sink.messages()}
        self.assertEqual(set(got), {"brand.example", "ed.example", "plain.example"})
        dnsfunc = lambda name, timeout=5: records.get(name)
        self.assertTrue(got["brand.example"].startswith(b"BIMI-Selector: v=BIMI1; s=brand;\r\n"))
        self.assertIn(b"a=rsa-sha256", got["brand.example"])
        self.assertTrue(dkim.verify(got["brand.example"], dnsfunc=dnsfunc))
        self.assertIn(b"a=ed25519-sha256", got["ed.example"])
        self.assertTrue(dkim.verify(got["ed.example"], dnsfunc=dnsfunc))
        self.assertEqual(got["plain.example"], (BODY % ("plain.example", 2)).encode())
        # a changed body no longer verifies: the signature covers what was sent
        self.assertFalse(dkim.verify(got["brand.example"].replace(b"body line", b"body lime"),
                                     dnsfunc=dnsfunc))

    def test_world_readable_key_refused_at_start(self):
        d = tmpdir()
        key = os.path.join(d, "open.pem")
        openssl("genpkey", "-algorithm", "ED25519", "-out", key)
        os.chmod(key, 0o644)
        conf = os.path.join(d, "pgmta.conf")
        with open(conf, "w") as f:
            f.write('database = { url = "postgresql:///none"; };\n'
                    'dkim = ( { domain = "x.example"; selector = "s"; key-file = "%s"; } );\n' % key)
        for args in (["--check", "-c", conf], ["-c", conf]):
            r = subprocess.run([PGMTAD] + args, capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(key, r.stderr)


if __name__ == "__main__":
    main()
