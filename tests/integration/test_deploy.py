"""The deployment files: admin/pgmtad.service is a unit systemd accepts
(systemd-analyze verify, with ExecStart= pointed at the built pgmtad) and has
the hardening README's "Deployment" section promises; README shows the role
set-up, pg_hba.conf lines and file modes."""
import os
import re
import shutil
import subprocess
import unittest

from pgmta_test import PGMTAD, SOURCE_DIR, main, tmpdir

UNIT = os.path.join(SOURCE_DIR, "admin", "pgmtad.service")


def unit_keys(text):
    """{(section, key): [values]} of a systemd unit file."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        m = re.match(r"^\[(.+)\]$", line)
        if m:
            section = m.group(1)
            continue
        key, sep, value = line.partition("=")
        assert sep and section, "not a unit line: %r" % line
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


class Deploy(unittest.TestCase):
    def setUp(self):
        with open(UNIT) as f:
            self.text = f.read()

    def verify(self, text):
        d = tmpdir()
        path = os.path.join(d, "pgmtad.service")
        with open(path, "w") as f:
            f.write(text.replace("/usr/local/sbin/pgmtad", PGMTAD))
        r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True,
                           text=True, timeout=60)
        # only complaints about this unit count (not about the host's own units)
        own = [l for l in (r.stdout + r.stderr).splitlines() if "pgmtad" in l]
        return r.returncode, own

    def test_unit_verifies(self):
        self.assertTrue(shutil.which("systemd-analyze"), "systemd-analyze missing (admin/deps.sh)")
        rc, own = self.verify(self.text)
        self.assertEqual((rc, own), (0, []))
        # and the check can fail: a bad value of a key the unit relies on
        rc, own = self.verify(self.text.replace("NoNewPrivileges=yes", "NoNewPrivileges=maybe"))
        self.assertTrue(rc != 0 or own, "a bad value passed systemd-analyze verify")

    def test_unit_hardening(self):
        k = unit_keys(self.text)
        s = lambda key: k.get(("Service", key), [])
        self.assertEqual(s("User"), ["pgmta"])
        self.assertEqual(s("NoNewPrivileges"), ["yes"])
        self.assertEqual(s("ProtectSystem"), ["strict"])
        self.assertEqual(s("Restart"), ["on-failure"])
        self.assertTrue(s("ReadWritePaths"))
        self.assertGreaterEqual(int(s("LimitNOFILE")[0]), 4096)
        self.assertIn("-c /etc/pgmta/pgmta.conf", s("ExecStart")[0])
        self.assertEqual(s("ExecReload"), ["/bin/kill -HUP $MAINPID"])
        # getifaddrs (the loop check for wildcard listeners) needs netlink
        self.assertIn("AF_NETLINK", s("RestrictAddressFamilies")[0].split())
        self.assertEqual(k.get(("Install", "WantedBy")), ["multi-user.target"])

    def test_readme_deployment(self):
        with open(os.path.join(SOURCE_DIR, "README.md")) as f:
            readme = f.read()
        m = re.search(r"^## Deployment\n(.*?)(?=^## )", readme, re.S | re.M)
        self.assertTrue(m, "README has no Deployment section")
        sec = m.group(1)
        for needle in ("GRANT mta_node TO", "GRANT mta_inject TO", "mta_monitor", "mta_admin",
                       "scram-sha-256", "hostssl", "0600", "0640", "root:pgmta",
                       "admin/pgmtad.service"):
            self.assertIn(needle, sec)


if __name__ == "__main__":
    main()
