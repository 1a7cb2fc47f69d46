"""A small authoritative DNS server for tests (standard library only).

It answers over UDP and TCP on one loopback address and port from a zone held
as Python data, which a test changes while the server runs:

    dns = DnsServer()                      # 127.0.0.1, free port, own thread
    dns.add_mx("example.test", 10, "mx1.example.test", ttl=300)
    dns.add_a("mx1.example.test", "127.0.0.10")
    dns.add_aaaa("mx1.example.test", "::1")
    dns.null_mx("nomail.test")             # MX 0 .
    dns.nxdomain("gone.test")              # explicit (unknown names are NXDOMAIN too)
    dns.servfail("broken.test")            # rcode 2
    dns.refused("closed.test")             # rcode 5
    dns.timeout("slow.test")               # never answers
    dns.silent = True                      # never answers anything
    dns.queries("example.test", "MX")      # how many queries it received
    dns.stop()

Unknown names get NXDOMAIN and known names without records of the asked
type get NOERROR/NODATA; both carry an SOA in the authority section whose
minimum is `neg_ttl` (default 300 s). UDP answers longer than 512 bytes (or
the EDNS size the client offers) are truncated with the TC bit, so the
client retries over TCP (2-byte length prefix), as real servers do.

Standalone: python3 dnsserver.py [--host H] --port P [--zone zone.json]
zone.json: {"mx": {"example.test": [[10, "mx1.example.test"]]},
            "a": {"mx1.example.test": ["127.0.0.1"]}, "aaaa": {...},
            "null_mx": [...], "nxdomain": [...], "servfail": [...],
            "timeout": [...], "ttl": 300}
"""
import argparse
import ipaddress
import json
import select
import signal
import socket
import struct
import sys
import threading

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
          "AAAA": 28, "SRV": 33, "OPT": 41, "ANY": 255}
QTYPE_NAMES = {v: k for k, v in QTYPES.items()}

RCODE_NOERROR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_REFUSED = 0, 2, 3, 5


def _qtype(t):
    if isinstance(t, int):
        return t
    return QTYPES[t.upper()]


def _norm(name):
    name = name.strip().lower()
    if name.endswith(".") and name != ".":
        name = name[:-1]
    return name


def encode_name(name):
    name = _norm(name)
    if name in ("", "."):
        return b"\x00"
    out = b""
    for label in name.split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError("bad label in %r" % name)
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def decode_name(msg, off):
    """Returns (name, offset after the name in the original position)."""
    labels = []
    end = None
    hops = 0
    while True:
        if off >= len(msg):
            raise ValueError("name past end")
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise ValueError("bad pointer")
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            hops += 1
            if hops > 64:
                raise ValueError("pointer loop")
            continue
        if n == 0:
            off += 1
            break
        labels.append(msg[off + 1:off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    return ".".join(labels), (end if end is not None else off)


class DnsServer:
    """Authoritative test DNS server on UDP+TCP host:port in a background thread."""

    def __init__(self, host="127.0.0.1", port=None, neg_ttl=300):
        self.host = host
        self.neg_ttl = neg_ttl
        self._lock = threading.Lock()
        self._records = {}  # name -> {qtype: [(ttl, rdata bytes, text)]}
        self._modes = {}  # name -> "nxdomain" | "servfail" | "refused" | "timeout"
        self._counts = {}  # (name, qtype) -> n
        self._tcp_counts = {}
        self._stop = False
        self.silent = False
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.udp, self.tcp = self._bind(fam, host, port)
        self.port = self.udp.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @staticmethod
    def _bind(fam, host, port):
        for _ in range(50):
            udp = socket.socket(fam, socket.SOCK_DGRAM)
            tcp = socket.socket(fam, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                udp.bind((host, port or 0))
                tcp.bind((host, udp.getsockname()[1]))
                tcp.listen(64)
                return udp, tcp
            except OSError:
                udp.close()
                tcp.close()
                if port:
                    raise
        raise OSError("no free UDP+TCP port pair on %s" % host)

    @property
    def server_arg(self):
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)

    # ---- zone editing -------------------------------------------------

    def _add(self, name, qtype, ttl, rdata, text):
        with self._lock:
            name = _norm(name)
            self._modes.pop(name, None)
            self._records.setdefault(name, {}).setdefault(qtype, []).append((ttl, rdata, text))

    def add_name(self, name):
        """Makes NAME exist without records (NODATA for every type)."""
        with self._lock:
            name = _norm(name)
            self._modes.pop(name, None)
            self._records.setdefault(name, {})

    def add_mx(self, domain, pref, exchange, ttl=300):
        self._add(domain, QTYPES["MX"], ttl, struct.pack("!H", pref) + encode_name(exchange),
                  "%d %s" % (pref, exchange))

    def null_mx(self, domain, ttl=300):
        self.remove(domain, "MX")
        self.add_mx(domain, 0, ".", ttl)

    def add_a(self, name, ip, ttl=300):
        self._add(name, QTYPES["A"], ttl, ipaddress.IPv4Address(ip).packed, ip)

    def add_aaaa(self, name, ip, ttl=300):
        self._add(name, QTYPES["AAAA"], ttl, ipaddress.IPv6Address(ip).packed, ip)

    def add_txt(self, name, text, ttl=300):
        """One TXT record: TEXT split into character-strings of 255 bytes."""
        raw = text.encode()
        chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
        self._add(name, QTYPES["TXT"], ttl, b"".join(bytes([len(c)]) + c for c in chunks), text)

    def add_cname(self, name, target, ttl=300):
        self._add(name, QTYPES["CNAME"], ttl, encode_name(target), target)

    def remove(self, name, qtype=None):
        with self._lock:
            name = _norm(name)
            if qtype is None:
                self._records.pop(name, None)
            elif name in self._records:
                self._records[name].pop(_qtype(qtype), None)

    def _mode(self, name, mode):
        with self._lock:
            self._modes[_norm(name)] = mode

    def nxdomain(self, name):
        self._mode(name, "nxdomain")

    def servfail(self, name):
        self._mode(name, "servfail")

    def refused(self, name):
        self._mode(name, "refused")

    def timeout(self, name):
        self._mode(name, "timeout")

    def clear(self):
        with self._lock:
            self._records.clear()
            self._modes.clear()
            self._counts.clear()
            self._tcp_counts.clear()

    def queries(self, name, qtype="MX"):
        """Queries received for (NAME, QTYPE) over UDP and TCP together."""
        with self._lock:
            return self._counts.get((_norm(name), _qtype(qtype)), 0)

    def tcp_queries(self, name, qtype="MX"):
        with self._lock:
            return self._tcp_counts.get((_norm(name), _qtype(qtype)), 0)

    def reset_queries(self):
        with self._lock:
            self._counts.clear()
            self._tcp_counts.clear()

    def load_zone(self, zone):
        ttl = int(zone.get("ttl", 300))
        for domain, mxs in zone.get("mx", {}).items():
            for pref, host in mxs:
                self.add_mx(domain, int(pref), host, ttl)
        for name, ips in zone.get("a", {}).items():
            for ip in ips:
                self.add_a(name, ip, ttl)
        for name, ips in zone.get("aaaa", {}).items():
            for ip in ips:
                self.add_aaaa(name, ip, ttl)
        for name in zone.get("null_mx", []):
            self.null_mx(name, ttl)
        for mode in ("nxdomain", "servfail", "refused", "timeout"):
            for name in zone.get(mode, []):
                self._mode(name, mode)

    # ---- answering ----------------------------------------------------

    def _soa(self, name):
        labels = name.split(".") if name else []
        apex = ".".join(labels[-2:]) if len(labels) >= 2 else name
        rdata = (encode_name("ns." + apex if apex else "ns") +
                 encode_name("hostmaster." + apex if apex else "hostmaster") +
                 struct.pack("!IIIII", 1, 3600, 600, 86400, self.neg_ttl))
        return encode_name(apex) + struct.pack("!HHIH", 6, 1, self.neg_ttl, len(rdata)) + rdata

    def answer(self, query, tcp=False):
        """Builds the reply to one query message, or None to stay silent."""
        if len(query) < 12:
            return None
        qid, flags, qdcount, _an, _ns, arcount = struct.unpack("!HHHHHH", query[:12])
        if flags & 0x8000 or qdcount != 1:
            return None
        try:
            qname, off = decode_name(query, 12)
            qtype, qclass = struct.unpack("!HH", query[off:off + 4])
        except (ValueError, struct.error):
            return None
        question = query[12:off + 4]
        udp_max = 512
        if arcount:  # EDNS: the OPT record's class is the client's UDP size
            try:
                _n, o2 = decode_name(query, off + 4)
                t, cls = struct.unpack("!HH", query[o2:o2 + 4])
                if t == 41:
                    udp_max = max(512, cls)
            except (ValueError, struct.error):
                pass
        name = _norm(qname)
        with self._lock:
            key = (name, qtype)
            self._counts[key] = self._counts.get(key, 0) + 1
            if tcp:
                self._tcp_counts[key] = self._tcp_counts.get(key, 0) + 1
            mode = self._modes.get(name)
            rrs = self._records.get(name)
            answers, authority, rcode = [], [], RCODE_NOERROR
            if mode == "timeout" or self.silent:
                return None
            elif mode == "servfail":
                rcode = RCODE_SERVFAIL
            elif mode == "refused":
                rcode = RCODE_REFUSED
            elif mode == "nxdomain" or rrs is None:
                rcode = RCODE_NXDOMAIN
                authority.append(self._soa(name))
            else:
                owner = b"\xc0\x0c"  # pointer to the question's name
                cname = rrs.get(QTYPES["CNAME"])
                if cname and qtype != QTYPES["CNAME"]:
                    ttl, rdata, target = cname[0]
                    answers.append(owner + struct.pack("!HHIH", 5, 1, ttl, len(rdata)) + rdata)
                    trr = self._records.get(_norm(target), {})
                    for ttl, rdata, _t in trr.get(qtype, []):
                        answers.append(encode_name(target) +
                                       struct.pack("!HHIH", qtype, 1, ttl, len(rdata)) + rdata)
                else:
                    for ttl, rdata, _t in rrs.get(qtype, []):
                        answers.append(owner + struct.pack("!HHIH", qtype, 1, ttl, len(rdata)) +
                                       rdata)
                if not answers:
                    authority.append(self._soa(name))
        rflags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
        msg = (struct.pack("!HHHHHH", qid, rflags, 1, len(answers), len(authority), 0) +
               question + b"".join(answers) + b"".join(authority))
        if not tcp and len(msg) > udp_max:
            msg = struct.pack("!HHHHHH", qid, rflags | 0x0200, 1, 0, 0, 0) + question
        return msg

    def _serve(self):
        while not self._stop:
            try:
                r, _w, _x = select.select([self.udp, self.tcp], [], [], 0.1)
            except (OSError, ValueError):
                return
            if self.udp in r:
                try:
                    data, peer = self.udp.recvfrom(65535)
                except OSError:
                    continue
                reply = self.answer(data)
                if reply is not None:
                    try:
                        self.udp.sendto(reply, peer)
                    except OSError:
                        pass
            if self.tcp in r:
                try:
                    conn, _peer = self.tcp.accept()
                except OSError:
                    continue
                threading.Thread(target=self._serve_tcp, args=(conn,), daemon=True).start()

    def _serve_tcp(self, conn):
        def read_exact(n):
            out = b""
            while len(out) < n:
                chunk = conn.recv(n - len(out))
                if not chunk:
                    return None
                out += chunk
            return out

        conn.settimeout(30)
        try:
            while not self._stop:
                hdr = read_exact(2)
                if hdr is None:
                    return
                data = read_exact(struct.unpack("!H", hdr)[0])
                if data is None:
                    return
                reply = self.answer(data, tcp=True)
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self._stop = True
        self._thread.join(2)
        self.udp.close()
        self.tcp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _main():
    ap = argparse.ArgumentParser(description="authoritative test DNS server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5353)
    ap.add_argument("--zone", help="zone as JSON (see the module's docstring)")
    ap.add_argument("--neg-ttl", type=int, default=300)
    args = ap.parse_args()
    srv = DnsServer(args.host, args.port, neg_ttl=args.neg_ttl)
    if args.zone:
        with open(args.zone) as f:
            srv.load_zone(json.load(f))
    print("dnsserver listening on %s (udp+tcp)" % srv.server_arg, flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    while not done.wait(1):
        pass
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
