"""IP warm-up against a real PostgreSQL: a simulated day clock drives
mta.warmup_advance with accounting rows written for those days (advance
under the thresholds, hold over them, step back over the second ones), the
batch reservations of mta.warmup_take hold the day's hourly allowance, and
mta.warmup_status, `pgmta warmup show` and GET /api/warmup report the state."""
import datetime
import http.client
import json
import subprocess

from pgmta_test import PGMTA, DbTestCase, Pgmtad, free_port, main, wait_for

IP = "127.0.0.2"


class WarmupTest(DbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.day0 = datetime.date(2026, 11, 1)

    def plan(self, key, days=((100, 20), (200, 40), (400, 80))):
        self.q("SELECT mta.warmup_set(%s, %s, %s, %s)",
               (IP, key, [d for d, _ in days], [h for _, h in days]))

    def traffic(self, key, day, delivered, deferred, complaints=0):
        """Accounting rows of one simulated day from IP to a domain of key."""
        at = datetime.datetime.combine(day, datetime.time(12, 0), datetime.timezone.utc)
        base = self.q1("SELECT coalesce(max(rcpt_id), 0) FROM mta.acct") + 1
        rows = [("d", base + i) for i in range(delivered)] + \
               [("t", base + delivered + i) for i in range(deferred)]
        for t, rid in rows:
            self.q("INSERT INTO mta.acct (type, time_logged, rcpt, dlv_source_ip, rcpt_id)"
                   " VALUES (%s, %s, %s, %s, %s)", (t, at, "u%d@%s" % (rid, key), IP, rid))
        for i in range(complaints):
            self.q("INSERT INTO mta.acct (type, time_logged, rcpt, rcpt_id)"
                   " VALUES ('f', %s, %s, %s)", (at, "u@%s" % key, base + i))

    def status(self, key):
        return self.q("SELECT day, daily_limit, hourly_limit, state, reason FROM mta.warmup_status"
                      " WHERE ip = %s AND key = %s", (IP, key))[0]

    def advance(self, day):
        return self.q1("SELECT mta.warmup_advance(%s)", (day,))

    def test_day_clock(self):
        key = "clock.test"
        self.plan(key)
        d = self.day0
        # day 1 -> 2: 2 deferrals in 100 (2% < 5%)
        self.traffic(key, d, 98, 2)
        self.assertGreaterEqual(self.advance(d + datetime.timedelta(days=1)), 1)
        self.assertEqual(self.status(key)[:4], (2, 200, 40, "advancing"))
        # the same day again decides nothing
        self.advance(d + datetime.timedelta(days=1))
        self.assertEqual(self.status(key)[0], 2)
        # 10% deferrals: held on day 2
        self.traffic(key, d + datetime.timedelta(days=1), 90, 10)
        self.advance(d + datetime.timedelta(days=2))
        st = self.status(key)
        self.assertEqual(st[:4], (2, 200, 40, "held"))
        self.assertIn("deferrals 10", st[4])
        # under the thresholds again: advances to day 3
        self.traffic(key, d + datetime.timedelta(days=2), 100, 1)
        self.advance(d + datetime.timedelta(days=3))
        self.assertEqual(self.status(key)[:4], (3, 400, 80, "advancing"))
        # 20% deferrals (over the step-back threshold of 15%): back to day 2
        self.traffic(key, d + datetime.timedelta(days=3), 80, 20)
        self.advance(d + datetime.timedelta(days=4))
        self.assertEqual(self.status(key)[:4], (2, 200, 40, "stepped-back"))
        # complaints over 0.1% of deliveries hold it
        self.traffic(key, d + datetime.timedelta(days=4), 500, 0, complaints=1)
        self.advance(d + datetime.timedelta(days=5))
        self.assertEqual(self.status(key)[3], "held")
        self.assertIn("complaints 0.2", self.status(key)[4])
        # a day without traffic holds it too
        self.advance(d + datetime.timedelta(days=6))
        self.assertIn("no traffic", self.status(key)[4])

    def test_other_ip_and_domain_do_not_count(self):
        key = "other.test"
        self.plan(key)
        d = self.day0 + datetime.timedelta(days=20)
        self.traffic(key, d, 50, 0)
        at = datetime.datetime.combine(d, datetime.time(13), datetime.timezone.utc)
        for i in range(50):
            self.q("INSERT INTO mta.acct (type, time_logged, rcpt, dlv_source_ip)"
                   " VALUES ('t', %s, 'x@other.test', '127.0.0.9'), "
                   "('t', %s, 'x@unrelated.test', %s)", (at, at, IP))
        self.advance(d + datetime.timedelta(days=1))
        self.assertEqual(self.status(key)[:2 + 2], (2, 200, 40, "advancing"))

    def test_take_hourly_allowance(self):
        key = "take.test"
        self.plan(key)
        got = [self.q("SELECT granted, warming FROM mta.warmup_take(%s, %s, 8)", (IP, key))[0]
               for _ in range(4)]
        self.assertEqual(got, [(8, True), (8, True), (4, True), (0, True)])
        self.q("SELECT mta.warmup_refund(%s, %s, 3)", (IP, key))
        self.assertEqual(self.q1("SELECT sent_this_hour FROM mta.warmup_status WHERE key = %s",
                                 (key,)), 17)
        self.assertEqual(self.q("SELECT * FROM mta.warmup_take(%s, %s, 8)", (IP, key))[0],
                         (3, True))
        # no plan, or a paused one: not warming, all granted
        self.assertEqual(self.q("SELECT * FROM mta.warmup_take(%s, 'none.test', 8)", (IP,))[0],
                         (8, False))
        self.assertTrue(self.q1("SELECT mta.warmup_pause(%s, %s, true)", (IP, key)))
        self.assertEqual(self.q("SELECT * FROM mta.warmup_take(%s, %s, 8)", (IP, key))[0],
                         (8, False))
        self.q("SELECT mta.warmup_pause(%s, %s, false)", (IP, key))

    def test_cli_show(self):
        key = "cli.test"
        self.plan(key)
        cli = PGMTA
        out = subprocess.run([cli, "warmup", "show", "--db", self.pg.dsn], capture_output=True,
                             text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        line = [ln for ln in out.stdout.splitlines() if key in ln]
        self.assertEqual(len(line), 1, out.stdout)
        self.assertIn(IP, line[0])
        self.assertIn("advancing", line[0])
        out = subprocess.run([cli, "warmup", "hold", IP, key, "--db", self.pg.dsn],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.status(key)[3], "paused")
        subprocess.run([cli, "warmup", "resume", IP, key, "--db", self.pg.dsn], check=True,
                       capture_output=True, timeout=30)
        self.assertEqual(self.status(key)[3], "advancing")

    def test_http_api(self):
        key = "api.test"
        self.plan(key)
        port = free_port()
        node = Pgmtad(self.pg, pipes='( { name = "bulk"; processes = 1; } )',
                      extra='listen = { http = "127.0.0.1:%d"; };\nhttp = { token = "tk"; };\n'
                      % port)

        def get():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                c.request("GET", "/api/warmup", headers={"Authorization": "Bearer tk"})
                r = c.getresponse()
                return r.status, r.read()
            except OSError:
                return None, b""
            finally:
                c.close()
        try:
            wait_for(lambda: get()[0] == 200, timeout=20, what="GET /api/warmup")
            st, body = get()
            rows = [r for r in json.loads(body) if r["key"] == key]
            self.assertEqual(len(rows), 1, body)
            self.assertEqual((rows[0]["ip"], rows[0]["day"], rows[0]["hourly_limit"],
                              rows[0]["state"]), (IP, 1, 20, "advancing"))
        finally:
            self.assertEqual(node.stop(), 0, node.log()[-3000:])

    def test_enforcement_and_overflow(self):
        """Hourly limit 20 on 127.0.0.2 for the provider, warm pool on
        127.0.0.3: of 50 messages the sink sees at most 20 from 127.0.0.2 and
        the rest from 127.0.0.3, none deferred."""
        from sink import Sink
        key = "enforce.test"
        self.plan(key, days=((1000, 20), (2000, 40)))
        sink = Sink(host="127.0.0.1")
        vmtas = ('virtual-mtas = ( { name = "cold"; smtp-source-host = "127.0.0.2"; '
                 'warmup-overflow-pool = "warm"; },\n'
                 '  { name = "hot"; smtp-source-host = "127.0.0.3"; } );\n'
                 'virtual-mta-pools = ( { name = "warm"; virtual-mtas = [ "hot" ]; } );\n')
        self.plan("job.test")
        node = Pgmtad(self.pg, pipes='( { name = "bulk"; processes = 1; } )', extra=vmtas,
                      env={"PGMTA_HOUSEKEEPING_MS": "300"},
                      domains=['{ name = "%s"; route = "127.0.0.1:%d"; max-smtp-out = 4; '
                               'max-msg-per-connection = 10; }' % (key, sink.port)])
        try:
            for n in range(50):
                self.q("SELECT mta.enqueue('s@sender.test', %s, %s, vmta => 'cold')",
                       (["r%d@%s" % (n, key)], "Subject: %d\r\n\r\nx\r\n" % n))
            wait_for(lambda: len(sink.messages()) >= 50, timeout=20,
                     what="50 messages at the sink")
            by_ip = {}
            for sess in sink.sessions():
                by_ip[sess.peer[0]] = by_ip.get(sess.peer[0], 0) + len(sess.messages)
            self.assertLessEqual(by_ip.get("127.0.0.2", 0), 20, by_ip)
            self.assertGreater(by_ip.get("127.0.0.2", 0), 0, by_ip)
            self.assertEqual(by_ip.get("127.0.0.2", 0) + by_ip.get("127.0.0.3", 0), 50, by_ip)
            self.assertEqual(self.q1("SELECT count(*) FROM mta.acct WHERE type = 't' "
                                     "AND rcpt LIKE %s", ("%@" + key,)), 0)
            self.assertEqual(self.q1("SELECT sent_this_hour FROM mta.warmup_status "
                                     "WHERE key = %s", (key,)), by_ip["127.0.0.2"])
            # the node's housekeeping makes today's decision (no traffic yesterday)
            wait_for(lambda: self.q1("SELECT decided_for = current_date FROM mta.warmup_status"
                                     " WHERE key = 'job.test'"), timeout=10,
                     what="the daily decision by the node")
            self.assertEqual(self.status("job.test")[3], "held")
        finally:
            rc = node.stop()
            sink.stop()
            self.assertEqual(rc, 0, node.log()[-3000:])


if __name__ == "__main__":
    main()
