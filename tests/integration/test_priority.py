"""Priorities end to end (README, Priorities): nodes on one database, routed
to recording sinks.

- backlog: 5,000 bulk messages queued, the queue's two slots busy, then 100
  priority-90 messages to the same queue: they go out before the rest of the
  backlog (their p99 latency is printed and bounded);
- in-queue order: mixed priorities in one queue come out highest first;
- fairness: job A with 3,000 and job B with 100 in one queue, B after A: B is
  done before 20% of A;
- preemption: two domains share a configured mx-rollup with one slot; the
  low-priority one (allow-priority-interruption) holds it with a slow sink,
  two nodes serve the cluster; a high-priority queue of the rollup that
  starts waiting gets the slot within about one message time;
- message priority in the slot order: two domains of one rollup with one
  slot and the same queue-priority, a backlog on A, then priority-90 mail
  to B: B waits at 90 in mta.slot_waiter and gets the rollup's next free
  slot (without preemption: when A's connection in progress ends; with
  it: after A's current message); with priority 0 B waits for A's backlog;
- job weights: jobs of weight 3 and 1 in a queue with one connection share
  its deliveries about 3:1 (and 1:1 with equal weights)."""
import re
import subprocess
import time
import unittest

from pgmta_test import PGMTA, PgServer, Pgmtad, copy_submit, free_port, main, wait_for
from sink import Delay, Sink

COLS = ("mail_from", "rcpt_to", "content", "job_id", "priority")


def subjects(sink, suffix):
    """Subjects of the messages the sink got for rcpt domain SUFFIX, in
    arrival order."""
    out = []
    for m in sink.messages():
        if m.rcpts and m.rcpts[0].endswith(suffix):
            s = re.search(rb"^Subject: (\S+)", m.content, re.M)
            out.append(s.group(1).decode() if s else "")
    return out


class Priority(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()

    def tearDown(self):
        # What a case left queued must not go to the next case's sink.
        self.pg.query("DELETE FROM mta.recipients RETURNING 1")

    @classmethod
    def tearDownClass(cls):
        cls.pg.stop()

    def node(self, port, domains, name="node-a"):
        return Pgmtad(self.pg, name=name, defaults='route = "127.0.0.1:%d"' % port,
                      env={"PGMTA_LOG_LEVEL": "warn"}, domains=domains)

    def delivered(self, like):
        return self.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 'd' AND rcpt LIKE %s",
                              (like,))

    def test_backlog_then_priority(self):
        sink = Sink(port=free_port())
        copy_submit(self.pg, [("s@example.com", "b%d@backlog.test" % i,
                               "Subject: bulk-%d\r\n\r\nx\r\n" % i, "bulk", 0)
                              for i in range(5000)], columns=COLS)
        node = self.node(sink.port, ['{ name = "backlog.test"; max-smtp-out = 2; }'])
        try:
            wait_for(lambda: self.delivered("%@backlog.test") >= 200, timeout=30,
                     what="the backlog under way")
            t0 = self.pg.scalar("SELECT now()")
            copy_submit(self.pg, [("s@example.com", "p%d@backlog.test" % i,
                                   "Subject: prio-%d\r\n\r\nx\r\n" % i, "urgent", 90)
                                  for i in range(100)], columns=COLS)
            wait_for(lambda: self.delivered("p%@backlog.test") == 100, timeout=30,
                     what="the 100 priority messages")
            lat = sorted(r[0] for r in self.pg.query(
                "SELECT extract(epoch FROM time_logged - %s)::float8 FROM mta.acct"
                " WHERE type = 'd' AND rcpt LIKE 'p%%@backlog.test'", (t0,)))
            p99 = lat[98]
            bulk_left = self.pg.scalar("SELECT count(*) FROM mta.recipients"
                                       " WHERE domain = 'backlog.test' AND job_id = 'bulk'")
            print("100 priority-90 messages behind 5,000: p99 latency %.3f s, max %.3f s,"
                  " bulk left %d" % (p99, lat[-1], bulk_left))
            order = subjects(sink, "@backlog.test")
            last_prio = max(i for i, s in enumerate(order) if s.startswith("prio-"))
            first_prio = min(i for i, s in enumerate(order) if s.startswith("prio-"))
            bulk_between = sum(1 for s in order[first_prio:last_prio] if s.startswith("bulk-"))
            # Batches already claimed when they came may still go out
            # meanwhile: at most a claim per connection (2 x 100).
            self.assertLessEqual(bulk_between, 200, "bulk interleaved with the priority mail")
            self.assertGreater(bulk_left, 1000, "the 100 came before the rest of the backlog")
            self.assertLess(p99, 10.0)
        finally:
            node.stop()
            sink.stop()

    def test_mixed_priorities_highest_first(self):
        sink = Sink(port=free_port())
        prios = [(i * 37) % 101 for i in range(60)]
        copy_submit(self.pg, [("s@example.com", "m%d@mixed.test" % i,
                               "Subject: p%03d-%d\r\n\r\nx\r\n" % (p, i), "mixed", p)
                              for i, p in enumerate(prios)], columns=COLS)
        node = self.node(sink.port, ['{ name = "mixed.test"; max-smtp-out = 1; }'])
        try:
            wait_for(lambda: self.delivered("%@mixed.test") == 60, timeout=30,
                     what="the mixed queue")
            got = [int(s[1:4]) for s in subjects(sink, "@mixed.test")]
            self.assertEqual(got, sorted(prios, reverse=True))
        finally:
            node.stop()
            sink.stop()

    def test_jobs_take_turns(self):
        sink = Sink(port=free_port())
        copy_submit(self.pg, [("s@example.com", "a%d@fair.test" % i,
                               "Subject: A-%d\r\n\r\nx\r\n" % i, "job-a", 0)
                              for i in range(3000)], columns=COLS)
        copy_submit(self.pg, [("s@example.com", "b%d@fair.test" % i,
                               "Subject: B-%d\r\n\r\nx\r\n" % i, "job-b", 0)
                              for i in range(100)], columns=COLS)
        node = self.node(sink.port, ['{ name = "fair.test"; max-smtp-out = 2; }'])
        try:
            wait_for(lambda: self.delivered("b%@fair.test") == 100, timeout=30,
                     what="job B")
            order = subjects(sink, "@fair.test")
            last_b = max(i for i, s in enumerate(order) if s.startswith("B-"))
            a_before = sum(1 for s in order[:last_b] if s.startswith("A-"))
            print("job B (100) done after %d of job A (3,000)" % a_before)
            self.assertLess(a_before, 600)
        finally:
            node.stop()
            sink.stop()

    def test_preemption_across_a_rollup(self):
        # Low's messages take 0.5 s each at the sink: without preemption its
        # connection would keep the rollup's one slot for 100 messages.
        sink = Sink(port=free_port(), rules={"dot:*@low.test": Delay(0.5, "250 2.0.0 ok")})
        domains = ['{ name = "low.test"; mx-rollup = "prov"; max-smtp-out = 1;'
                   ' allow-priority-interruption = true; }',
                   '{ name = "high.test"; mx-rollup = "prov"; max-smtp-out = 1;'
                   ' queue-priority = 90; }']
        copy_submit(self.pg, [("s@example.com", "l%d@low.test" % i,
                               "Subject: low-%d\r\n\r\nx\r\n" % i, "low", 0)
                              for i in range(200)], columns=COLS)
        nodes = [self.node(sink.port, domains, name=n) for n in ("node-a", "node-b")]
        try:
            wait_for(lambda: self.delivered("%@low.test") >= 3, timeout=20,
                     what="low under way")
            t0 = time.monotonic()
            copy_submit(self.pg, [("s@example.com", "h%d@high.test" % i,
                                   "Subject: high-%d\r\n\r\nx\r\n" % i, "high", 0)
                                  for i in range(5)], columns=COLS)
            wait_for(lambda: self.delivered("%@high.test") >= 1, timeout=20,
                     what="the high-priority queue started")
            waited = time.monotonic() - t0
            wait_for(lambda: self.delivered("%@high.test") == 5, timeout=20,
                     what="the high-priority queue")
            print("high-priority queue started %.2f s after it began waiting"
                  " (a low message takes 0.5 s)" % waited)
            self.assertLess(waited, 3.0)
            self.assertLessEqual(sink.concurrent_max(), 1, "the rollup's one slot")
            self.assertGreater(self.pg.scalar("SELECT count(*) FROM mta.recipients"
                                              " WHERE domain = 'low.test'"), 100)
        finally:
            for n in nodes:
                n.stop()
            sink.stop()

    def rollup_race(self, tag, b_prio, interruptible, backlog, a_delay=None):
        """Domains A and B (a.TAG.test, b.TAG.test) share an mx-rollup with
        one slot and the same queue-priority (0); A holds it with a backlog,
        then 40 messages of priority B_PRIO come for B (with A_DELAY, A's
        messages take that long at the sink, and B comes while A's second
        connection is under way). Returns (A delivered from B's enqueue to
        B's last delivery, A delivered after B's last delivery, from the
        accounting timestamps; the highest priority B's waiter row in
        mta.slot_waiter was seen with, None if it was never seen)."""
        a_dom, b_dom = "a.%s.test" % tag, "b.%s.test" % tag
        sink = Sink(port=free_port(),
                    rules={"dot:*@" + a_dom: Delay(a_delay, "250 2.0.0 ok")} if a_delay else None)
        a_conf = ('{ name = "%s"; mx-rollup = "r-%s"; max-smtp-out = 1;'
                  ' max-msg-per-connection = %d;%s }'
                  % (a_dom, tag, backlog if interruptible else 50,
                     " allow-priority-interruption = true;" if interruptible else ""))
        domains = [a_conf, '{ name = "%s"; mx-rollup = "r-%s"; max-smtp-out = 1; }'
                   % (b_dom, tag)]
        copy_submit(self.pg, [("s@example.com", "a%d@%s" % (i, a_dom),
                               "Subject: a-%d\r\n\r\nx\r\n" % i, "race-a", 0)
                              for i in range(backlog)], columns=COLS)
        node = self.node(sink.port, domains)
        try:
            wait_for(lambda: self.delivered("%@" + a_dom) >= 20, timeout=30,
                     what="A's backlog under way")
            if a_delay:
                # The first connection's batch is in the accounting at its
                # end: A's next connection starts within about 0.2 s.
                time.sleep(0.4)
            t0 = self.pg.scalar("SELECT now()")
            copy_submit(self.pg, [("s@example.com", "b%d@%s" % (i, b_dom),
                                   "Subject: b-%d\r\n\r\nx\r\n" % i, "race-b", b_prio)
                                  for i in range(40)], columns=COLS)
            seen = []

            def b_done():
                seen.extend(p for (p,) in self.pg.query(
                    "SELECT priority FROM mta.slot_waiter WHERE domain = %s", (b_dom,)))
                return self.delivered("%@" + b_dom) == 40
            wait_for(b_done, timeout=120, interval=0.02, what="B's 40 messages")
            wait_for(lambda: self.delivered("%@" + a_dom) == backlog, timeout=120,
                     what="A's backlog")
            self.assertLessEqual(sink.concurrent_max(), 1, "the rollup's one slot")
            t_b = self.pg.scalar("SELECT max(time_logged) FROM mta.acct WHERE type = 'd'"
                                 " AND rcpt LIKE %s AND time_logged >= %s", ("%@" + b_dom, t0))
            a_between, a_after = self.pg.query(
                "SELECT count(*) FILTER (WHERE time_logged > %s AND time_logged <= %s),"
                " count(*) FILTER (WHERE time_logged > %s) FROM mta.acct"
                " WHERE type = 'd' AND rcpt LIKE %s AND time_logged >= %s",
                (t0, t_b, t_b, "%@" + a_dom, t0))[0]
            b_wait = max(seen) if seen else None
            self.connects = sum(1 for _, what, _, _ in sink.connections_log() if what == "connect")
            print("B at priority %d%s: %d of A's backlog (%d) went out from B's enqueue to its"
                  " last delivery, %d after; B waited at priority %s"
                  % (b_prio, " (A interruptible)" if interruptible else "", a_between, backlog,
                     a_after, b_wait))
            return a_between, a_after, b_wait
        finally:
            node.stop()
            sink.stop()
            self.pg.query("DELETE FROM mta.slot_waiter RETURNING 1")

    def test_message_priority_takes_the_rollup_slot(self):
        # A's connections send 50 messages each (1 s at the sink); B comes
        # during one and waits at 90 (its ready mail, not its
        # queue-priority), so A's next connection is refused and B takes
        # the slot when A's connection in progress ends.
        a_between, a_after, b_wait = self.rollup_race("race1", 90, False, 400, a_delay=0.02)
        self.assertEqual(b_wait, 90, "B's waiter row carries its message priority")
        self.assertLessEqual(a_between, 60, "B waited for more than A's connection in progress")
        self.assertGreater(a_after, 200, "B went out before A's backlog")
        # At 0 B ties with A: A's next connections win the slot (they ask
        # sooner after each connection than B's 200 ms retry), and B waits.
        a_between, a_after, b_wait = self.rollup_race("race4", 0, False, 400, a_delay=0.02)
        self.assertEqual(b_wait, 0)
        self.assertGreater(a_between, 60, "B at priority 0 got the slot like B at 90")

    def test_message_priority_interrupts_and_priority_0_waits(self):
        # A's one connection would carry its whole backlog; it may be
        # interrupted by a queue above it. At 90, B's waiter is above it.
        a_between, a_after, b_wait = self.rollup_race("race2", 90, True, 300)
        self.assertEqual(b_wait, 90)
        self.assertLessEqual(a_between, 30, "A's connection was not interrupted for B")
        self.assertGreater(a_after, 200, "B went out before A's backlog")
        # At 0 (what B's queue-priority says) nothing is above A: B waits.
        a_between, a_after, b_wait = self.rollup_race("race3", 0, True, 300)
        self.assertEqual(b_wait, 0)
        self.assertLessEqual(a_after, 5, "B at priority 0 waits for A's connection")
        # An interruptible connection claims one message at a time, and a
        # claim that brings back fewer rows than asked for but more than
        # that one message does not end it: A's 300 and B's 40 go out on a
        # few connections, not one per message.
        self.assertLessEqual(self.connects, 6, "A's connection ended after each message")

    def weighted_share(self, tag, wa, wb):
        """Jobs A (weight WA) and B (weight WB) with 600 messages each in a
        queue with one connection: A's share of the first 400 deliveries."""
        for job, w in (("%s-a" % tag, wa), ("%s-b" % tag, wb)):
            r = subprocess.run([PGMTA, "job", "weight", job, str(w), "--db", self.pg.dsn],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout, "job %s weight %d\n" % (job, w))
        dom = "%s.weight.test" % tag
        for job in ("a", "b"):
            copy_submit(self.pg, [("s@example.com", "%s%d@%s" % (job, i, dom),
                                   "Subject: %s-%d\r\n\r\nx\r\n" % (job.upper(), i),
                                   "%s-%s" % (tag, job), 0) for i in range(600)], columns=COLS)
        sink = Sink(port=free_port())
        node = self.node(sink.port, ['{ name = "%s"; max-smtp-out = 1; }' % dom])
        try:
            wait_for(lambda: self.delivered("%%@%s" % dom) >= 400, timeout=60,
                     what="400 deliveries")
        finally:
            node.stop()
            sink.stop()
        first = subjects(sink, "@" + dom)[:400]
        self.assertEqual(len(first), 400)
        share = sum(1 for x in first if x.startswith("A-")) / 400.0
        print("jobs of weight %d and %d: A had %.3f of the first 400 deliveries" % (wa, wb, share))
        return share

    def test_job_weights(self):
        self.assertTrue(0.65 <= self.weighted_share("w31", 3, 1) <= 0.85)
        self.assertTrue(0.40 <= self.weighted_share("w11", 1, 1) <= 0.60)
        self.assertEqual(self.pg.scalar("SELECT weight FROM mta.job WHERE job_id = 'w31-a'"), 3)
        # out of range: refused by the command line and by the function
        for bad in ("0", "101", "x"):
            r = subprocess.run([PGMTA, "job", "weight", "w31-a", bad, "--db", self.pg.dsn],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 2, bad)
        with self.assertRaises(Exception):
            self.pg.query("SELECT mta.set_job_weight('w31-a', 101)")
        self.assertEqual(self.pg.scalar("SELECT weight FROM mta.job WHERE job_id = 'w31-a'"), 3)


if __name__ == "__main__":
    main()
