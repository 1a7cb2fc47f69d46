"""GET /metrics: the node's own counters, histograms and process gauges
(node/metrics.c, rendered by node/http_metrics.c) against a real node, a
real PostgreSQL, real DNS and a real SMTP sink.

One node, one traffic run in setUpClass: messages injected over SMTP, over
HTTP (/api/inject/v1) and with SQL (mta.enqueue, 106 queues at once, more
than the node counts one by one), delivered to a sink that answers 250, 550
(two bounce categories) and 451 once (then 250), some recipients
suppressed. Then the scrape is compared with mta.acct: exact counters per
queue and category, histogram counts equal to the transactions and
outcomes, the cap on label sets ("other"), and the text parsed by
Prometheus's own parser plus a strict line check. The SQL door's
cluster-wide counters (mta.inject_count) count exactly what mta.enqueue,
COPY and INSERT into mta.submit queued and suppressed, nothing of the SMTP
and HTTP doors, and nothing of a rolled-back enqueue or COPY. Last, the bulk pipe
process is killed with SIGKILL: its restart neither loses nor doubles what
it had counted. The Grafana dashboard (admin/grafana/pgmta.json) may name
only metrics this exposition has."""
import csv
import http.client
import io
import json
import os
import re
import signal
import smtplib
import threading
import unittest

from prometheus_client.parser import text_string_to_metric_families

from dnsserver import DnsServer
from pgmta_test import Pgmtad, PgServer, free_port, main, mx_sink, wait_for, wait_queue_empty

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(ROOT, "admin", "grafana", "pgmta.json")
ADMIN, INJECT = "adm1n-m", "inj3ct-m"
CONTENT = "Subject: m\r\n\r\nmetrics\r\n"
CAP = 100  # METRICS_QUEUES
CAP_DOMAINS = ["cap%03d.test" % i for i in range(CAP + 6)]
DOMAINS = ["m1.test", "m2.test", "m3.test", "m4.test", "blocked.test"]

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)'
                    r'(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*\})?'
                    r' ([-+]?(?:[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|NaN|\+Inf|-Inf))$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def strict_parse(text):
    """{family: type} and [(name, {labels}, value)]; fails on a malformed
    line, a family declared twice or split, a sample outside its family."""
    types, samples, current = {}, [], None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ")
            assert typ in ("counter", "gauge", "histogram"), line
            assert name not in types, "family declared twice: " + name
            types[name], current = typ, name
            continue
        m = SAMPLE.match(line)
        assert m, "not Prometheus text: %r" % line
        name = m.group(1)
        assert current and name in (current, current + "_bucket", current + "_sum",
                                    current + "_count"), "sample outside its family: " + line
        if types[current] == "counter":
            assert name.endswith("_total"), line
        labels = dict(LABEL.findall(m.group(2) or ""))
        samples.append((name, labels, float(m.group(3))))
    return types, samples


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg, cls.dns = PgServer(), DnsServer()
        cls.pg.query("SELECT mta.suppress('@blocked.test', NULL, 'test domain')")
        cls.pg.query("SELECT mta.suppress('gone@m1.test', NULL, 'left', 'unsubscribe')")
        seen, lock = set(), threading.Lock()

        def behaviour(sess, event, rcpt):
            if event != "rcpt" or not rcpt:
                return None
            if rcpt.startswith("tmp"):
                with lock:  # 451 on the first attempt only
                    first = rcpt not in seen
                    seen.add(rcpt)
                return "451 4.3.0 try again later" if first else None
            if rcpt.startswith("bad"):
                return "550 5.1.1 no such user"
            if rcpt.startswith("spam"):
                return "550 5.7.1 message rejected as spam"
            return None
        sport = free_port("127.0.0.59")
        cls.sink = mx_sink(cls.dns, DOMAINS + CAP_DOMAINS, "127.0.0.59", sport,
                           behaviour=behaviour)
        cls.smtp, cls.http = free_port(), free_port()
        cls.node = Pgmtad(cls.pg, cls.dns, defaults='max-msg-per-connection = 10;', extra=(
            'smtp-port = %d;\n'
            'listen = { smtp = [ "127.0.0.1:%d" ]; http = "127.0.0.1:%d"; };\n'
            'http = { token = "%s"; inject-tokens = [ "%s" ]; };\n'
            % (sport, cls.smtp, cls.http, ADMIN, INJECT)))
        cls.node.wait_accepting([cls.smtp, cls.http])
        cls.smtp_rcpts = ["ok1@m1.test", "ok2@m1.test", "bad1@m1.test", "tmp1@m2.test",
                          "spam1@m3.test", "ok3@m3.test", "x@blocked.test"]
        with smtplib.SMTP("127.0.0.1", cls.smtp, timeout=20) as c:
            for r in cls.smtp_rcpts:
                assert c.sendmail("s@sender.test", [r], CONTENT) == {}, r
        cls.http_req1 = ["h1@m1.test", "h2@m2.test", "bad2@m2.test", "gone@m1.test",
                         "y@blocked.test"]
        cls.http_req2 = ["t1@m4.test", "tmp2@m4.test"]
        for rcpts, pipe in ((cls.http_req1, None), (cls.http_req2, "transactional")):
            body = {"envelope_sender": "s@sender.test", "content": CONTENT,
                    "recipients": [{"email": r} for r in rcpts]}
            if pipe:
                body["pipe"] = pipe
            st, r = cls.post("/api/inject/v1", body, INJECT)
            assert st == 200, (st, r)
        # the label sets above are the first the node counts (named), then
        # SQL: one message to more queues than the node counts one by one
        named = {("m1.test", "bulk"), ("m2.test", "bulk"), ("m3.test", "bulk"),
                 ("m4.test", "transactional")}
        wait_for(lambda: named <= {(l["domain"], l["pipe"]) for n, l, _ in
                                   strict_parse(cls.scrape())[1]
                                   if n == "pgmta_delivered_total"},
                 timeout=30, what="the first outcomes of m1..m4")
        cls.pg.query("SELECT mta.enqueue('s@sender.test', %s, %s)",
                     (["c@" + d for d in CAP_DOMAINS], CONTENT))
        cls.inject_sql()
        wait_queue_empty(cls.pg, timeout=90, node=cls.node)
        # the node counts a finish when its answer arrives, a moment after
        # the commit that emptied the queue
        final = cls.pg.scalar("SELECT count(*) FROM mta.acct WHERE type IN ('d', 'b', 't')"
                              " AND bounce_cat IS DISTINCT FROM 'suppressed'")

        def counted():
            cls.text = cls.scrape()
            return sum(v for n, _, v in strict_parse(cls.text)[1]
                       if n in ("pgmta_delivered_total", "pgmta_bounced_total",
                                "pgmta_deferred_total")) == final
        wait_for(counted, timeout=10, what="the node's counters to reach mta.acct's rows")

    @classmethod
    def tearDownClass(cls):
        rc = cls.node.stop()
        cls.sink.stop()
        cls.dns.stop()
        cls.pg.stop()
        assert rc == 0, rc

    @classmethod
    def inject_sql(cls):
        """More of the SQL door, as an injector (mta_inject) would: with
        mta.enqueue 4 recipients queued and 3 suppressed, by COPY 3 and 2,
        by INSERT 1; then an enqueue and a COPY rolled back. Recipients
        e<N>@ to the cap domains (queued) or blocked.test (suppressed)."""
        c = cls.pg.connect(cls.pg.role_dsn("mta_inject"), autocommit=False)
        cap = ["e%d@%s" % (i, d) for i, d in enumerate(CAP_DOMAINS[:10])]
        enqueue = "SELECT mta.enqueue('s@sender.test', %s, %s)"

        def copy(cur, rcpts):
            buf = io.StringIO()
            csv.writer(buf).writerows(("s@sender.test", r, CONTENT) for r in rcpts)
            buf.seek(0)
            cur.copy_expert("COPY mta.submit (mail_from, rcpt_to, content) FROM STDIN"
                            " WITH (FORMAT csv)", buf)
        with c.cursor() as cur:
            # two calls in one transaction: the second suppresses none
            cur.execute(enqueue, ([cap[0], "e1@blocked.test", "e2@blocked.test"], CONTENT))
            cur.execute(enqueue, ([cap[3], cap[4]], CONTENT))
            c.commit()
            cur.execute(enqueue, (["e5@blocked.test"], CONTENT))
            assert cur.fetchone()[0] is None  # every recipient suppressed
            cur.execute("SELECT mta.enqueue('s@sender.test', %s, %s::bytea)",
                        ([cap[6]], CONTENT.encode()))
            c.commit()
            copy(cur, [cap[7], "e7@blocked.test", cap[8], "e8@blocked.test", cap[9]])
            c.commit()
            cur.execute("INSERT INTO mta.submit (mail_from, rcpt_to, content)"
                        " VALUES ('s@sender.test', %s, %s)", (cap[5], CONTENT))
            c.commit()
            cur.execute(enqueue, (["rb1@" + CAP_DOMAINS[0], "rb2@blocked.test"], CONTENT))
            copy(cur, ["rb3@" + CAP_DOMAINS[1], "rb4@blocked.test"])
            c.rollback()
        c.close()
        cls.sql_queued = len(CAP_DOMAINS) + 4 + 3 + 1
        cls.sql_suppressed = 3 + 2

    @classmethod
    def post(cls, path, body, token):
        c = http.client.HTTPConnection("127.0.0.1", cls.http, timeout=30)
        try:
            c.request("POST", path, body=json.dumps(body).encode(),
                      headers={"Authorization": "Bearer " + token, "Host": "127.0.0.1",
                               "Content-Type": "application/json"})
            r = c.getresponse()
            return r.status, json.loads(r.read())
        finally:
            c.close()

    @classmethod
    def scrape(cls):
        c = http.client.HTTPConnection("127.0.0.1", cls.http, timeout=30)
        try:
            c.request("GET", "/metrics", headers={"Authorization": "Bearer " + ADMIN,
                                                  "Host": "127.0.0.1"})
            r = c.getresponse()
            body = r.read().decode()
            assert r.status == 200, (r.status, body)
            return body
        finally:
            c.close()

    def samples(self, name, text=None):
        return [(lab, v) for n, lab, v in strict_parse(text or self.text)[1] if n == name]

    def value(self, name, text=None, **labels):
        got = [v for lab, v in self.samples(name, text) if lab == labels]
        self.assertEqual(len(got), 1, (name, labels))
        return got[0]

    def acct(self, where):
        """{(domain, pipe): n} of mta.acct rows matching where (no vmta here)."""
        return {(q, p): n for q, p, n in self.pg.query(
            "SELECT queue, pipe, count(*) FROM mta.acct WHERE " + where + " GROUP BY 1, 2")}

    # ---- format ----

    def test_text_parses(self):
        types, samples = strict_parse(self.text)
        families = {f.name: f for f in text_string_to_metric_families(self.text)}
        for name, typ in types.items():
            base = name[:-len("_total")] if typ == "counter" else name
            self.assertIn(base, families)
            self.assertEqual(families[base].type, typ)
        self.assertLess(len(samples), 3000)  # bounded, whatever the traffic
        # the SQL gauges are still there
        self.assertEqual(types["pgmta_queue_recipients"], "gauge")
        self.assertEqual(types["pgmta_queue_connections"], "gauge")

    # ---- counters ----

    def check_per_queue(self, family, where, **extra):
        want = self.acct(where)
        got = {(lab["domain"], lab["pipe"]): v for lab, v in self.samples(family)
               if all(lab.get(k) == x for k, x in extra.items())}
        for lab, _ in self.samples(family):
            self.assertEqual(lab["vmta"], "", lab)
        other = got.pop(("other", ""), 0)
        for key, v in got.items():
            self.assertEqual(v, want.pop(key, 0), (family, key, extra))
        # what is not named is in "other", exactly
        self.assertEqual(other, sum(want.values()), (family, extra, want))
        return got, other

    def test_delivered_bounced_deferred_equal_acct(self):
        got, other = self.check_per_queue("pgmta_delivered_total", "type = 'd'")
        self.assertEqual(got[("m1.test", "bulk")], 3)  # ok1, ok2 (SMTP), h1 (HTTP)
        self.assertEqual(got[("m4.test", "transactional")], 2)  # t1, tmp2 after its 451
        self.assertGreater(other, 0)
        self.check_per_queue("pgmta_deferred_total", "type = 't'")
        self.assertEqual(self.value("pgmta_deferred_total", domain="m2.test", vmta="",
                                    pipe="bulk"), 1)
        cats = {lab["category"] for lab, _ in self.samples("pgmta_bounced_total")}
        self.assertIn("bad-mailbox", cats)
        self.assertGreaterEqual(len(cats), 2, cats)
        self.assertNotIn("suppressed", cats)  # refused at the door, never delivered
        for cat in cats:
            self.check_per_queue("pgmta_bounced_total",
                                 "type = 'b' AND bounce_cat = '%s'" % cat, category=cat)

    def test_label_sets_capped(self):
        delivered = self.samples("pgmta_delivered_total")
        keys = [(l["domain"], l["vmta"], l["pipe"]) for l, _ in delivered]
        self.assertEqual(len(keys), len(set(keys)))
        self.assertEqual(len(keys), CAP + 1)  # the first 100 label sets, and "other"
        self.assertIn(("other", "", ""), keys)
        total = sum(v for _, v in delivered)
        self.assertEqual(total, self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd'"))

    def test_doors(self):
        self.assertEqual(self.value("pgmta_injected_recipients_total", door="smtp"),
                         len(self.smtp_rcpts))
        self.assertEqual(self.value("pgmta_suppressed_recipients_total", door="smtp"), 1)
        self.assertEqual(self.value("pgmta_injected_recipients_total", door="http"),
                         len(self.http_req1) + len(self.http_req2))
        self.assertEqual(self.value("pgmta_suppressed_recipients_total", door="http"), 2)
        # the same suppressed recipients as mta.acct, with the SQL door's
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct"
                                        " WHERE bounce_cat = 'suppressed'"),
                         3 + self.sql_suppressed)

    def test_sql_door(self):
        """Cluster-wide counters of what the SQL door queued: exact, the SMTP
        and HTTP doors not in them, rolled-back statements neither."""
        types = strict_parse(self.text)[0]
        for fam in ("pgmta_sql_injected_recipients_total",
                    "pgmta_sql_suppressed_recipients_total"):
            self.assertEqual(types[fam], "counter")
        self.assertEqual(self.value("pgmta_sql_injected_recipients_total"), self.sql_queued)
        self.assertEqual(self.value("pgmta_sql_suppressed_recipients_total"),
                         self.sql_suppressed)
        # what mta.acct holds of those recipients (c@ and e<N>@ are SQL's)
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'r'"
                                        " AND rcpt ~ '^(c|e[0-9]+)@'"), self.sql_queued)
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct WHERE bounce_cat ="
                                        " 'suppressed' AND rcpt ~ '^e[0-9]+@'"),
                         self.sql_suppressed)
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct WHERE rcpt ~ '^rb'"), 0)
        # the rows add up to the scraped values, and still do once folded
        total = ("SELECT sum(recipients), sum(suppressed) FROM mta.inject_count"
                 " WHERE door = 'sql'")
        self.assertEqual(self.pg.query(total), [(self.sql_queued, self.sql_suppressed)])
        self.pg.query("SELECT mta.inject_count_compact()")
        self.assertEqual(self.pg.query(total), [(self.sql_queued, self.sql_suppressed)])
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.inject_count"), 1)

    # ---- histograms ----

    def histogram(self, name, text=None, **labels):
        buckets = [(lab["le"], v) for lab, v in self.samples(name + "_bucket", text)
                   if {k: x for k, x in lab.items() if k != "le"} == labels]
        self.assertGreater(len(buckets), 3, name)
        bounds = [float(le) for le, _ in buckets]
        self.assertEqual(bounds, sorted(bounds))
        self.assertEqual(buckets[-1][0], "+Inf")
        counts = [v for _, v in buckets]
        self.assertEqual(counts, sorted(counts), name)  # cumulative
        count = self.value(name + "_count", text, **labels)
        self.assertEqual(counts[-1], count)
        return count, self.value(name + "_sum", text, **labels)

    def test_histograms(self):
        final = "type IN ('d', 'b', 't') AND bounce_cat IS DISTINCT FROM 'suppressed'"
        # one SMTP transaction per message, queue and attempt; the bounces
        # (DSNs) to sender.test, which has no DNS, failed without one
        transactions = self.pg.scalar("SELECT count(DISTINCT (message_id, queue, attempt))"
                                      " FROM mta.acct WHERE queue <> 'sender.test' AND " + final)
        self.assertEqual(self.pg.scalar("SELECT count(*) FROM mta.acct WHERE queue ="
                                        " 'sender.test' AND dsn_status = '5.1.2'"), 3)
        count, total = self.histogram("pgmta_smtp_transaction_seconds")
        self.assertEqual(count, transactions)
        self.assertGreater(total, 0)
        self.assertLess(total / count, 10)
        outcomes = self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type IN ('d', 'b')"
                                  " AND bounce_cat IS DISTINCT FROM 'suppressed'")
        count, total = self.histogram("pgmta_time_in_queue_seconds")
        self.assertEqual(count, outcomes)
        self.assertGreater(total, 0)
        # every attempt of every recipient was claimed once
        attempts = self.pg.scalar("SELECT count(*) FROM mta.acct WHERE " + final)
        count, rows = self.histogram("pgmta_claim_batch_recipients")
        self.assertGreater(count, 0)
        self.assertEqual(rows, attempts)
        for proc in ("root", "pipe", "smtp-in"):
            count, total = self.histogram("pgmta_db_statement_seconds", process=proc)
            self.assertGreater(count, 0, proc)

    # ---- processes ----

    def test_process_gauges(self):
        procs = {(l["process"], l["pipe"], l["index"]): v
                 for l, v in self.samples("pgmta_process_resident_bytes")}
        for key in (("root", "", "0"), ("pipe", "bulk", "0"), ("pipe", "transactional", "0"),
                    ("smtp-in", "", "0")):
            self.assertGreater(procs.get(key, 0), 1 << 20, key)
            self.assertGreaterEqual(self.value("pgmta_process_cpu_seconds_total", process=key[0],
                                               pipe=key[1], index=key[2]), 0)
        conns = {l["pipe"]: v for l, v in self.samples("pgmta_smtp_connections_open")}
        self.assertEqual(set(conns), {"bulk", "transactional"})
        self.assertTrue(all(0 <= v <= 20 for v in conns.values()), conns)

    def test_zz_pipe_restart_keeps_counts(self):
        """Runs last (name order): SIGKILL of the bulk pipe process."""
        before = self.scrape()
        pids = re.findall(r"pipe=bulk index=0 pid=(\d+) started", self.node.log())
        os.kill(int(pids[-1]), signal.SIGKILL)
        wait_for(lambda: len(re.findall(r"pipe=bulk index=0 pid=(\d+) started",
                                        self.node.log())) == len(pids) + 1,
                 timeout=20, what="the bulk pipe restarted")
        wait_for(lambda: len([l for l, _ in self.samples("pgmta_process_resident_bytes",
                                                         self.scrape())
                              if l["pipe"] == "bulk"]) == 1,
                 timeout=10, what="one bulk process slot")
        after = self.scrape()
        for fam in ("pgmta_delivered_total", "pgmta_bounced_total", "pgmta_deferred_total"):
            self.assertEqual(self.samples(fam, after), self.samples(fam, before), fam)
        c0, _ = self.histogram("pgmta_time_in_queue_seconds", before)
        c1, _ = self.histogram("pgmta_time_in_queue_seconds", after)
        self.assertEqual(c0, c1)

    # ---- the Grafana dashboard ----

    def test_grafana_dashboard_names_exposed_metrics(self):
        with open(DASHBOARD) as f:
            dash = json.load(f)
        exprs = []

        def walk(x):
            if isinstance(x, dict):
                for k, v in x.items():
                    if k in ("expr", "query") and isinstance(v, str):
                        exprs.append(v)
                    else:
                        walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)
        walk(dash)
        self.assertGreater(len(exprs), 8)
        # every family declared, with or without series (no webhook here)
        exposed = set()
        for name, typ in strict_parse(self.text)[0].items():
            exposed.add(name)
            if typ == "histogram":
                exposed.update(name + s for s in ("_bucket", "_sum", "_count"))
        names = set()
        for e in exprs:
            found = re.findall(r"\bpgmta_[a-z0-9_]+", e)
            self.assertTrue(found, e)
            names.update(found)
        for n in names:
            self.assertIn(n, exposed, "the dashboard names %s, /metrics has no such series" % n)


if __name__ == "__main__":
    main()
