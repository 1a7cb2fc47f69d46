"""The benchmark's peers besides pgmta: Postfix's smtp-sink receivers, the
smtp-source load generator and a private Postfix instance used as a relay,
plus what the benchmark reads from /proc (process trees, peak RSS, CPU time,
concurrent TCP sessions).

Everything runs on loopback, as the invoking user (root drops to `nobody`
for smtp-sink and to `postfix` inside Postfix), and is removed by the
pgmta_test cleanup machinery when the benchmark exits.
"""
import os
import re
import subprocess
import threading
import time

from pgmta_test import Proc, tmpdir, wait_for, _cleanups

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX = "/usr/sbin/postfix"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc

def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (index 0 = state)."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()


def proc_tree(root):
    """root and all its live descendants (by the ppid in /proc/*/stat)."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(name))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if os.path.exists("/proc/%d" % p):
            out.append(p)
            todo.extend(children.get(p, ()))
    return out


def proc_status(pid, key):
    """A kB value (VmHWM, VmRSS) of /proc/PID/status, in bytes; None if gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def tree_cpu_seconds(root):
    """CPU seconds (user+system) used by a process tree so far: for every live
    process its own time plus that of the children it has reaped, so work of
    exited workers (Postfix smtp, PostgreSQL backends) is counted too."""
    total = 0
    for p in proc_tree(root):
        try:
            f = _stat_fields(p)
        except OSError:
            continue
        # utime, stime, cutime, cstime are fields 14-17 of stat(5); index 11-14 here
        total += sum(int(x) for x in f[11:15])
    return total / CLK_TCK


class ConnSampler:
    """Samples, in a background thread, how many TCP connections are
    ESTABLISHED to a local port (the sinks' shared port) and keeps the peak."""

    def __init__(self, port, interval=0.2):
        self.port = port
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def count(self):
        want = ":%04X" % self.port
        n = 0
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(path) as f:
                    next(f)
                    for line in f:
                        parts = line.split(None, 4)
                        if parts[1].endswith(want) and parts[3] == "01":
                            n += 1
            except OSError:
                pass
        return n

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.count())

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak


# ---------------------------------------------------------------- sinks

class SinkSet:
    """K smtp-sink processes on 127.0.0.(base+i), all on one port, counting
    the messages they receive (-c writes running counters to stdout)."""

    def __init__(self, count, port, base=10, backlog=1000):
        self.port = port
        self.hosts = ["127.0.0.%d" % (base + i) for i in range(count)]
        self.procs = []
        self.logs = []
        d = tmpdir("pgmta-bench-sink-")
        for i, h in enumerate(self.hosts):
            log = os.path.join(d, "sink%d.out" % i)
            argv = [SMTP_SINK, "-c", "-m", str(backlog), "%s:%d" % (h, port), str(backlog)]
            if os.geteuid() == 0:
                argv[1:1] = ["-u", "nobody"]
            self.procs.append(Proc(argv, log))
            self.logs.append(log)
        wait_for(lambda: all(self._listening(h) for h in self.hosts), timeout=10,
                 what="smtp-sink listening")

    def _listening(self, host):
        import socket
        try:
            with socket.create_connection((host, self.port), timeout=1) as s:
                s.recv(100)
            return True
        except OSError:
            return False

    @staticmethod
    def _last_counter(path):
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 400))
            tail = f.read().decode("ascii", "replace")
        m = re.findall(r"mesg=(\d+)", tail)
        return int(m[-1]) if m else 0

    def messages(self):
        """Messages received by all sinks since they started."""
        return sum(self._last_counter(p) for p in self.logs)

    def cpu_seconds(self):
        return sum(tree_cpu_seconds(p.pid) for p in self.procs if p.alive())


# ---------------------------------------------------------------- smtp-source

class SourceFleet:
    """smtp-source processes, one per (domain, size) group, each with its own
    sessions; started together, waited for together, CPU time collected."""

    def __init__(self, groups, host_of, port, sessions_each=1, log_dir=None,
                 keep_connection=True):
        """groups: list of (domain, size, count). keep_connection=False sends
        one message per connection (smtp-source without -d)."""
        self.groups = groups
        self.host_of = host_of
        self.port = port
        self.sessions_each = sessions_each
        self.log_dir = log_dir or tmpdir("pgmta-bench-src-")
        self.procs = []
        self.cpu = 0.0
        self.failed = []
        self.keep_connection = keep_connection

    def start(self):
        for i, (domain, size, count) in enumerate(self.groups):
            if count <= 0:
                continue
            argv = [SMTP_SOURCE] + (["-d"] if self.keep_connection else []) + [
                "-s", str(self.sessions_each), "-m", str(count), "-l", str(size),
                "-f", "sender@bench.example", "-M", "bench.example",
                "-t", "rcpt@%s" % domain, "-N",
                "%s:%d" % (self.host_of(domain), self.port)]
            log = open(os.path.join(self.log_dir, "src%d.log" % i), "wb")
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            self.procs.append((p, argv))

    def wait(self):
        for p, argv in self.procs:
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            self.cpu += ru.ru_utime + ru.ru_stime
            if p.returncode != 0:
                self.failed.append((p.returncode, " ".join(argv)))
        return not self.failed

    def kill(self):
        for p, _ in self.procs:
            if p.poll() is None:
                p.kill()


class LoadFleet:
    """tests/tools/smtp_load: one process keeping `sessions` SMTP sessions
    open, each message to its own recipient, message n to domain n mod D
    (the long tail: smtp-source sends to one domain per process). The same
    interface as SourceFleet."""

    def __init__(self, tool, n, domains, domain_format, contents, host, port, sessions):
        self.argv = [tool, "--host", host, "--port", str(port), "--connections", str(sessions),
                     "--messages", str(n), "--domains", str(domains),
                     "--domain-format", domain_format]
        for c in contents:
            self.argv += ["--content", c]
        self.sessions_each = sessions
        self.procs = []
        self.cpu = 0.0
        self.failed = []
        self.output = ""

    def start(self):
        p = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.procs.append((p, self.argv))

    def wait(self):
        for p, argv in self.procs:
            out = p.stdout.read().decode(errors="replace")
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            self.cpu += ru.ru_utime + ru.ru_stime
            self.output = out.strip()
            if p.returncode != 0:
                self.failed.append((p.returncode, self.output))
        return not self.failed

    def kill(self):
        for p, _ in self.procs:
            if p.poll() is None:
                p.kill()


# ---------------------------------------------------------------- Postfix

class PostfixInstance:
    """A private Postfix (Debian's binaries) with its own config_directory and
    queue_directory under a temporary directory, listening on 127.0.0.1:PORT
    and relaying every bench domain to its sink with transport_maps
    (`smtp:[127.0.0.x]:PORT`). The system instance (/etc/postfix) is neither
    used nor touched. Queue-manager and delivery settings are Postfix's
    defaults (default_process_limit 100, destination concurrency 20)."""

    def __init__(self, port, routes, extra_main=None):
        """routes: {domain: (host, port)}."""
        self.dir = tmpdir("pgmta-bench-postfix-")
        self.conf = os.path.join(self.dir, "etc")
        self.spool = os.path.join(self.dir, "spool")
        self.data = os.path.join(self.dir, "data")
        self.maillog = os.path.join(self.dir, "maillog")
        self.port = port
        for d in (self.conf, self.spool, self.data):
            os.makedirs(d)
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postfix")
            os.chown(self.data, pw.pw_uid, pw.pw_gid)
        with open(os.path.join(self.conf, "transport"), "w") as f:
            for dom, (h, p) in sorted(routes.items()):
                f.write("%s smtp:[%s]:%d\n" % (dom, h, p))
        # a table, not a list in main.cf: the long tail has 10,000 domains
        with open(os.path.join(self.conf, "relay"), "w") as f:
            for dom in sorted(routes):
                f.write("%s OK\n" % dom)
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.spool,
            "data_directory": self.data,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.example",
            "mydomain": "bench.example",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "texthash:" + os.path.join(self.conf, "relay"),
            "transport_maps": "texthash:" + os.path.join(self.conf, "transport"),
            "smtpd_relay_restrictions":
                "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination",
            # loopback only and no resolver here: no reverse lookup of clients
            "smtpd_peername_lookup": "no",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.dir,
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "smtpd_banner": "$myhostname ESMTP",
        }
        main.update(extra_main or {})
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        # Debian's master.cf with chroot off (the private queue has no chroot
        # tree) and the SMTP listener moved to our port.
        out = []
        proto = next((p for p in ("/etc/postfix/master.cf", "/etc/postfix/master.cf.proto",
                                  "/usr/share/postfix/master.cf.dist") if os.path.exists(p)),
                     None)
        if proto is None:
            raise RuntimeError("no master.cf from the postfix package found")
        with open(proto) as f:
            for line in f:
                cols = line.split()
                if line[:1] not in ("#", " ", "\t", "\n") and len(cols) >= 8:
                    if cols[0] == "smtp" and cols[1] == "inet":
                        cols[0] = "127.0.0.1:%d" % port
                    if cols[4] == "y":
                        cols[4] = "n"
                    line = "%-10s %-5s %-7s %-7s %-7s %-7s %-7s %s\n" % (
                        cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6],
                        " ".join(cols[7:]))
                out.append(line)
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.writelines(out)
        self.started = False

    def _postfix(self, *args, check=True):
        return subprocess.run([POSTFIX, "-c", self.conf] + list(args), check=check,
                              capture_output=True, text=True)

    def start(self):
        r = self._postfix("check", check=False)
        if r.returncode != 0:
            raise RuntimeError("postfix check failed: %s%s" % (r.stdout, r.stderr))
        r = self._postfix("start", check=False)
        if r.returncode != 0:
            raise RuntimeError("postfix start failed: %s%s\n%s" %
                               (r.stdout, r.stderr, self.log_tail()))
        self.started = True
        _cleanups.append(self.stop)
        import socket

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    return s.recv(100).startswith(b"220")
            except OSError:
                return False
        wait_for(up, timeout=30, what="postfix smtpd on 127.0.0.1:%d" % self.port)

    def stop(self):
        if self.started:
            self.started = False
            self._postfix("stop", check=False)
            # master exits asynchronously; wait so the temp dir can go
            pidf = os.path.join(self.spool, "pid", "master.pid")
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                pid = self.master_pid()
                if pid is None or not os.path.exists("/proc/%d" % pid):
                    break
                time.sleep(0.1)
            if os.path.exists(pidf):
                os.unlink(pidf)

    def master_pid(self):
        try:
            with open(os.path.join(self.spool, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def queued(self):
        """Messages anywhere in the queue (files under the queue directories)."""
        n = 0
        for q in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt"):
            for _root, _dirs, files in os.walk(os.path.join(self.spool, q)):
                n += len(files)
        return n

    def log_counts(self):
        """(sent, deferred, bounced) delivery lines in the private maillog."""
        sent = deferred = bounced = 0
        try:
            with open(self.maillog, "rb") as f:
                for line in f:
                    if b" status=sent " in line:
                        sent += 1
                    elif b" status=deferred " in line:
                        deferred += 1
                    elif b" status=bounced " in line:
                        bounced += 1
        except OSError:
            pass
        return sent, deferred, bounced

    def log_tail(self, n=30):
        try:
            with open(self.maillog, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode("utf-8", "replace")
        except OSError:
            return "(no maillog)"

    def settings(self, *names):
        r = subprocess.run(["postconf", "-c", self.conf] + list(names), check=True,
                           capture_output=True, text=True)
        return dict(line.split(" = ", 1) for line in r.stdout.strip().splitlines())


