"""The Debian package: configured with -DCMAKE_INSTALL_PREFIX=/usr into a
scratch build directory, built and packed with `cpack -G DEB`, its contents
and control fields checked with dpkg-deb, then extracted into a scratch root
whose `pgmta migrate` sets up a real PostgreSQL and whose `pgmtad` serves the
dashboard from the packaged share directory and delivers to a real sink.
As root, the package's postinst also runs, against a copy-on-write overlay
of /etc in a private mount namespace (the machine's /etc is not touched).
"""
import glob
import http.client
import os
import re
import shutil
import stat
import subprocess
import tarfile
import unittest

from pgmta_test import (BUILD_DIR, SOURCE_DIR, Pgmtad, PgServer, Proc, free_port, main,
                        tmpdir, wait_for)
from sink import Sink

TOKEN = "pkg-t0k"


def cache_value(name):
    """A value of the main build's CMakeCache.txt, or None."""
    try:
        with open(os.path.join(BUILD_DIR, "CMakeCache.txt")) as f:
            m = re.search(r"^%s:[A-Z]+=(.*)$" % re.escape(name), f.read(), re.M)
    except OSError:
        return None
    return m.group(1) if m and m.group(1) else None


def run(argv, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s%s" % (" ".join(argv), r.returncode,
                                                         r.stdout[-4000:], r.stderr[-4000:]))
    return r


def build_package():
    """Configures a fresh build with the package's prefix, builds it and
    runs cpack; returns the .deb's path. The compiler, build type and
    sanitizers are those of the build tree under test."""
    build = tmpdir("pgmta-pkg-build-")
    args = ["-DCMAKE_INSTALL_PREFIX=/usr", "-DPGMTA_TESTS=OFF"]
    for var in ("CMAKE_BUILD_TYPE", "CMAKE_C_COMPILER", "PGMTA_SANITIZE"):
        v = cache_value(var)
        if v:
            args.append("-D%s=%s" % (var, v))
    run(["cmake", "-S", SOURCE_DIR, "-B", build] + args)
    run(["cmake", "--build", build, "-j2"])
    run(["cpack", "-G", "DEB"], cwd=build)
    debs = glob.glob(os.path.join(build, "pgmta_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def source_files(sub):
    return sorted(os.listdir(os.path.join(SOURCE_DIR, sub)))


class PackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.deb = build_package()
        cls.root = tmpdir("pgmta-pkg-root-")
        run(["dpkg-deb", "-x", cls.deb, cls.root])
        cls.control = tmpdir("pgmta-pkg-control-")
        run(["dpkg-deb", "-e", cls.deb, cls.control])

    def field(self, name):
        return run(["dpkg-deb", "-f", self.deb, name]).stdout.strip()

    def contents(self):
        """{path without "./": (mode string, owner)} from dpkg-deb -c."""
        out = {}
        for line in run(["dpkg-deb", "-c", self.deb]).stdout.splitlines():
            mode, owner, _size, _date, _time, path = line.split(None, 5)
            out[path[2:].rstrip("/")] = (mode, owner)
        return out

    def test_contents(self):
        c = self.contents()
        for path in ("usr/bin/pgmta", "usr/sbin/pgmtad"):
            self.assertEqual(c[path][0], "-rwxr-xr-x", path)
        share = "usr/share/pgmta/"
        for sub, names in (("migrations", source_files("migrations")),
                           ("sql", source_files("sql")),
                           ("dashboard", source_files("admin/dashboard"))):
            self.assertTrue(names)
            for n in names:
                self.assertIn(share + sub + "/" + n, c)
        self.assertIn("usr/lib/systemd/system/pgmtad.service", c)
        self.assertIn("usr/share/doc/pgmta/README.md", c)
        # the configuration is never world-readable, even before postinst
        self.assertEqual(c["etc/pgmta/pgmta.conf"][0], "-rw-r-----")
        self.assertEqual(c["etc/pgmta"][0], "drwxr-x---")
        self.assertEqual(c["etc/pgmta/conf.d"][0], "drwxr-x---")
        self.assertTrue(all(owner == "root/root" for _, owner in c.values()), c)
        # Debian's layout only: nothing in /usr/local or /usr/etc, no
        # headers or static libraries, no test programs
        for path in c:
            self.assertTrue(path.split("/")[0] in ("usr", "etc"), path)
            self.assertFalse(re.match(r"usr/(local|etc|include)(/|$)", path), path)
            self.assertFalse(path.endswith(".a"), path)
        self.assertEqual(sorted(p for p in c if p.startswith(("usr/bin/", "usr/sbin/"))),
                         ["usr/bin/pgmta", "usr/sbin/pgmtad"])

    def test_control(self):
        self.assertEqual(self.field("Package"), "pgmta")
        self.assertEqual(self.field("Section"), "mail")
        arch = run(["dpkg", "--print-architecture"]).stdout.strip()
        self.assertEqual(self.field("Architecture"), arch)
        depends = {d.strip().split()[0] for d in self.field("Depends").split(",")}
        for lib in ("libc6", "libpq5", "libevent-2.1-7", "libevent-openssl-2.1-7",
                    "libc-ares2", "libconfig9", "libssl3", "libcrypt1", "zlib1g", "adduser"):
            self.assertIn(lib, depends)
        with open(os.path.join(self.control, "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/pgmta/pgmta.conf"])
        for script in ("postinst", "prerm", "postrm"):
            path = os.path.join(self.control, script)
            self.assertTrue(os.stat(path).st_mode & stat.S_IXUSR, script)
            run(["sh", "-n", path])
        with open(os.path.join(self.control, "postinst")) as f:
            postinst = f.read()
        self.assertIn("adduser --quiet --system --group", postinst)
        self.assertIn("conf_dir=/etc/pgmta\n", postinst)

    def test_unit_and_example_configuration(self):
        with open(os.path.join(self.root, "usr/lib/systemd/system/pgmtad.service")) as f:
            unit = f.read()
        self.assertIn("\nExecStart=/usr/sbin/pgmtad -c /etc/pgmta/pgmta.conf\n", unit)
        self.assertIn("\nExecReload=/bin/kill -HUP $MAINPID\n", unit)
        self.assertIn("\nUser=pgmta\n", unit)
        self.assertIn("\nNoNewPrivileges=yes\n", unit)
        self.assertIn("\nProtectSystem=strict\n", unit)
        self.assertIn("\nReadOnlyPaths=/etc/pgmta\n", unit)
        self.assertIn("Documentation=file:///usr/share/doc/pgmta/README.md", unit)
        self.assertNotIn("/usr/local", unit)
        # systemd accepts it (ExecStart= pointed at the extracted binary)
        d = tmpdir()
        path = os.path.join(d, "pgmtad.service")
        with open(path, "w") as f:
            f.write(unit.replace("/usr/sbin/pgmtad", os.path.join(self.root, "usr/sbin/pgmtad")))
        r = subprocess.run(["systemd-analyze", "verify", path], capture_output=True, text=True,
                           timeout=60)
        own = [l for l in (r.stdout + r.stderr).splitlines() if "pgmtad" in l]
        self.assertEqual((r.returncode, own), (0, []))
        # the example configuration is one the packaged pgmtad accepts
        r = subprocess.run([os.path.join(self.root, "usr/sbin/pgmtad"), "--check", "-c",
                            os.path.join(self.root, "etc/pgmta/pgmta.conf")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('default-pipe = "bulk";', r.stdout)

    def test_extracted_package_runs(self):
        root = self.root
        share = os.path.join(root, "usr/share/pgmta")
        # Proof that the packaged files are the ones read, not the source
        # tree's: a migration and a mark in the page that only the
        # extracted copy has.
        with open(os.path.join(share, "migrations", "9400_packaged.sql"), "w") as f:
            f.write("CREATE TABLE mta.from_package (x int);\n")
        index = os.path.join(share, "dashboard", "index.html")
        with open(index, "a") as f:
            f.write("<!-- packaged copy -->\n")
        env = dict(os.environ)
        for var in ("PGMTA_SHARE_DIR", "PGMTA_NO_SOURCE_TREE"):
            env.pop(var, None)

        pg = PgServer(migrate=False)
        r = run([os.path.join(root, "usr/bin/pgmta"), "migrate", "--db", pg.dsn], env=env)
        applied = re.findall(r"^applied (\S+)$", r.stdout, re.M)
        self.assertEqual(applied, [n[:-4] for n in source_files("migrations")] +
                         ["9400_packaged"])
        self.assertEqual(pg.scalar("SELECT count(*) FROM mta.from_package"), 0)
        self.assertTrue(pg.scalar("SELECT to_regprocedure('mta.enqueue(text,text[],text,text,"
                                  "text,text,text,integer,timestamptz)') IS NOT NULL"))

        sink = Sink()
        port = free_port()
        node = Pgmtad(pg, start=False, pipes='( { name = "bulk"; processes = 1; } )',
                      domains=['{ name = "pkg.test"; route = "127.0.0.1:%d"; '
                               'use-starttls = false; }' % sink.port],
                      extra='listen = { http = "127.0.0.1:%d"; };\nhttp = { token = "%s"; };\n'
                            % (port, TOKEN))
        node.proc = Proc([os.path.join(root, "usr/sbin/pgmtad"), "-c", node.conf_path],
                         os.path.join(node.dir, "pgmtad.log"), env=env)
        try:
            def index_page():
                if not node.proc.alive():
                    raise AssertionError("pgmtad exited:\n" + node.log()[-3000:])
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    c.request("GET", "/", headers={"Host": "127.0.0.1"})
                    r = c.getresponse()
                    return (r.status, r.read())
                except OSError:
                    return None
                finally:
                    c.close()
            st, body = wait_for(index_page, timeout=30, what="the packaged pgmtad's dashboard")
            self.assertEqual(st, 200)
            with open(index) as f:
                self.assertEqual(body.decode(), f.read())
            self.assertIn(b"<!-- packaged copy -->", body)

            pg.query("SELECT mta.enqueue('s@sender.test', ARRAY['u@pkg.test'], "
                     "E'Subject: packaged\\r\\n\\r\\nfrom the package\\r\\n')")
            wait_for(lambda: sink.messages(), timeout=30, what="delivery to the sink")
            self.assertEqual(sink.messages()[0].rcpts, ["u@pkg.test"])
            self.assertIn(b"from the package", sink.messages()[0].content)
            wait_for(lambda: pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' "
                                       "AND rcpt = 'u@pkg.test'") == 1,
                     what="the d accounting row")
        finally:
            rc = node.stop()
            sink.stop()
            pg.stop()
        self.assertEqual(rc, 0, node.log()[-3000:])

    def test_postinst(self):
        # never skipped: tests/run runs as root, as the postinst must
        self.assertEqual(os.geteuid(), 0, "the postinst creates a system user: run as root")
        # /etc overlaid (copy-on-write) in a private mount namespace, the
        # package's /etc/pgmta copied in, postinst run twice as dpkg would
        # on install and on upgrade; a conf.d file left world-readable
        # becomes 0640.
        d = tmpdir("pgmta-pkg-etc-")
        for sub in ("upper", "work"):
            os.makedirs(os.path.join(d, sub))
        script = r"""
set -e
mount --make-rprivate /
mount -t overlay overlay -o lowerdir=/etc,upperdir=%(d)s/upper,workdir=%(d)s/work /etc
cp -a %(root)s/etc/pgmta /etc/pgmta
echo 'log-level = "debug";' > /etc/pgmta/conf.d/10-local.conf
chmod 0644 /etc/pgmta/conf.d/10-local.conf
sh %(ctl)s/postinst configure
sh %(ctl)s/postinst configure 0.1.0
echo "user=$(getent passwd pgmta)"
stat -c 'mode %%a %%U:%%G %%n' /etc/pgmta /etc/pgmta/conf.d /etc/pgmta/pgmta.conf \
    /etc/pgmta/conf.d/10-local.conf
sh %(ctl)s/prerm remove
sh %(ctl)s/postrm remove
""" % {"d": d, "root": self.root, "ctl": self.control}
        r = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertFalse(os.path.exists("/etc/pgmta"), "the machine's /etc was changed")
        user = re.search(r"^user=(.*)$", r.stdout, re.M).group(1).split(":")
        self.assertEqual(user[0], "pgmta", r.stdout)
        self.assertLess(int(user[2]), 1000, user)  # a system user
        self.assertEqual(user[5], "/var/lib/pgmta")
        self.assertTrue(user[6].endswith("nologin"), user)
        modes = dict((n, m) for m, n in re.findall(r"^mode (\S+ \S+) (\S+)$", r.stdout, re.M))
        self.assertEqual(modes, {"/etc/pgmta": "750 root:pgmta",
                                 "/etc/pgmta/conf.d": "750 root:pgmta",
                                 "/etc/pgmta/pgmta.conf": "640 root:pgmta",
                                 "/etc/pgmta/conf.d/10-local.conf": "640 root:pgmta"},
                         r.stdout)


if __name__ == "__main__":
    main()
