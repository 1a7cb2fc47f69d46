"""The node side of the queue: ready_queues, claim with a lease, finish with a
fencing token, transient failures, expired leases, release, node_stop, pauses,
RFC 3464 bounces, set_aside, delete, purge, and two claimers racing."""
import threading
import time
import uuid

import psycopg2

from pgmta_test import DbTestCase, main

FINISH = ("SELECT mta.finish(%(node)s, %(name)s, %(ids)s, %(tokens)s, %(types)s,"
          " %(retry)s::timestamptz[], %(status)s, %(diag)s, %(mta)s, %(cat)s, %(src)s, %(dst)s,"
          " %(proto)s, %(cipher)s, %(bounces)s)")


class ClaimTest(DbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node_a = cls.q1("SELECT mta.node_register('node-a', 'bulk', 0, 100, 'host-a')")
        cls.node_b = cls.q1("SELECT mta.node_register('node-b', 'bulk', 1, 101, 'host-b')")

    def domain(self):
        return "d%s.example" % uuid.uuid4().hex[:10]

    def enqueue(self, rcpts, mail_from="sender@origin.example", **kw):
        names = "".join(", %s => %%(%s)s" % (k, k) for k in kw)
        return self.q1("SELECT mta.enqueue(%(f)s, %(r)s, %(c)s" + names + ")",
                       dict(kw, f=mail_from, r=rcpts,
                            c="From: <%s>\r\nSubject: test\r\nMessage-ID: <orig@origin.example>"
                              "\r\n\r\nbody\r\n" % mail_from))

    def claim(self, domain, node=None, limit=100, lease_ms=60000, vmta=None, pipe="bulk",
              conn=None):
        with (conn or self.conn).cursor() as cur:
            cur.execute("SELECT rcpt_id, lease_token, message_id, mail_from, rcpt, attempt,"
                        " envid, job_id FROM mta.claim(%s, %s, %s, %s, %s, %s)",
                        (node or self.node_a, pipe, domain, vmta, limit, lease_ms))
            return cur.fetchall()

    def finish(self, rows, types, node=None, name="node-a", retry=None, status=None, diag=None,
               bounces=False):
        n = len(rows)
        return self.q1(FINISH, dict(
            node=node or self.node_a, name=name, ids=[r[0] for r in rows],
            tokens=[r[1] for r in rows], types=types if isinstance(types, list) else [types] * n,
            retry=retry, status=status or ["2.0.0"] * n,
            diag=diag or ["250 2.0.0 ok"] * n, mta=["mx.dest.example"] * n,
            cat=[None] * n, src=["127.0.0.2"] * n, dst=["127.0.0.3"] * n,
            proto=["TLSv1.3"] * n, cipher=["TLS_AES_256_GCM_SHA384"] * n, bounces=bounces))

    def ready(self, pipe="bulk"):
        return {d for d, v in self.q("SELECT domain, vmta FROM mta.ready_queues(%s, 100000)",
                                     (pipe,))}

    def acct(self, domain, types="dbt"):
        return self.q("SELECT type, rcpt, dsn_action, attempt, node FROM mta.acct"
                      " WHERE queue = %s AND type = ANY(%s) ORDER BY rcpt_id, time_logged",
                      (domain, list(types)))

    # ----------------------------------------------------------------------

    def test_claim_bounded_by_bytes(self):
        """p_max_bytes: whole messages in claim order while the content before
        them is under the bound, the first always; the rest stays ready and
        capped says so; content comes once per message."""
        d = self.domain()
        mids = [self.enqueue(["a%d@%s" % (i, d), "b%d@%s" % (i, d)]) for i in range(5)]
        size = self.q1("SELECT size FROM mta.messages WHERE id = %s", (mids[0],))

        def claim(limit, max_bytes):
            return self.q("SELECT message_id, content IS NOT NULL, content_first, capped"
                          "  FROM mta.claim(%s, 'bulk', %s, NULL, %s, 60000, %s)",
                          (self.node_a, d, limit, max_bytes))

        # under 2.5 messages before a message: three are taken, whole
        rows = claim(100, int(size * 2.5))
        self.assertEqual([r[0] for r in rows], [m for m in mids[:3] for _ in (0, 1)])
        self.assertEqual([r[1] for r in rows], [True, False] * 3, "content once per message")
        self.assertEqual([r[2] for r in rows], [True, False] * 3)
        self.assertTrue(all(r[3] for r in rows), "capped: rows were left out")
        self.assertEqual(self.q1("SELECT count(*) FROM mta.recipients WHERE domain = %s"
                                 " AND owner IS NULL AND next_attempt <= now()", (d,)), 4)
        # a bound below one message still brings the first message
        rows = claim(100, 1)
        self.assertEqual([r[0] for r in rows], [mids[3]] * 2)
        self.assertTrue(rows[0][3])
        # no bound (NULL) and the limit reached before it: not capped
        rows = claim(100, None)
        self.assertEqual([(r[0], r[3]) for r in rows], [(mids[4], False)] * 2)
        self.assertEqual(claim(100, 10 ** 9), [])

    def test_claim_many_queues_in_one_call(self):
        """mta.claim_many: each queue's rows under its own limit and byte
        bound, tagged with its index, ordered by queue then message; a
        message with recipients in two queues brings its content once in
        each; a paused queue gives nothing and does not stop the others;
        arrays of different lengths are refused."""
        d1, d2, d3, d4 = (self.domain() for _ in range(4))
        m12 = self.enqueue(["a@" + d1, "b@" + d1, "c@" + d2])
        m1 = [self.enqueue(["x%d@%s" % (i, d1)]) for i in range(3)]
        m3 = self.enqueue(["p@" + d3])
        self.enqueue(["q@" + d4])
        self.q("SELECT mta.pause_queue(%s)", (d4,))
        size = self.q1("SELECT size FROM mta.messages WHERE id = %s", (m1[0],))
        rows = self.q("SELECT q, message_id, rcpt, content IS NOT NULL, content_first, capped,"
                      "       attempt, lease_until > now()"
                      "  FROM mta.claim_many(%s, 'bulk', %s, %s, %s, 60000, %s)",
                      (self.node_a, [d4, d1, d2, d3], [None, "", None, ""], [10, 3, 10, 10],
                       [None, None, 1, None]))
        self.assertEqual([r[0] for r in rows], [2, 2, 2, 3, 4], "paused d4 (q=1) gives nothing")
        # d1: limit 3 of its 5 rows, m12's two recipients together, content once
        self.assertEqual([(r[1], r[2], r[3]) for r in rows if r[0] == 2],
                         [(m12, "a@" + d1, True), (m12, "b@" + d1, False),
                          (m1[0], "x0@" + d1, True)])
        # d2: the same message m12, its content again (another session sends it)
        self.assertEqual([(r[1], r[3], r[4]) for r in rows if r[0] == 3], [(m12, True, True)])
        self.assertEqual([(r[1], r[3]) for r in rows if r[0] == 4], [(m3, True)])
        self.assertTrue(all(r[6] == 1 and r[7] for r in rows))
        self.assertFalse(any(r[5] for r in rows), "no queue was cut by its byte bound")
        # the rest of d1 under a byte bound of about one message: capped
        rows = self.q("SELECT q, message_id, capped FROM mta.claim_many(%s, 'bulk', %s, %s,"
                      " %s, 60000, %s)", (self.node_a, [d1], [""], [10], [size]))
        self.assertEqual(rows, [(1, m1[1], True)])
        self.assertEqual(self.q1("SELECT count(*) FROM mta.recipients WHERE domain = %s"
                                 " AND owner IS NULL", (d1,)), 1)
        with self.assertRaises(psycopg2.Error) as cm:
            self.q("SELECT * FROM mta.claim_many(%s, 'bulk', %s, %s, %s, 60000, %s)",
                   (self.node_a, [d1, d2], [""], [1, 1], [None, None]))
        self.assertEqual(cm.exception.pgcode, "22023")
        self.conn.rollback()

    def test_claim_one_queue_with_lease(self):
        d1, d2 = self.domain(), self.domain()
        self.enqueue(["a@" + d1, "b@" + d1, "c@" + d2], envid="env-x", job_id="job-claim")
        self.assertTrue({d1, d2} <= self.ready())
        rows = self.claim(d1)
        self.assertEqual(sorted(r[4] for r in rows), ["a@" + d1, "b@" + d1])
        self.assertEqual({(r[3], r[5], r[6], r[7]) for r in rows},
                         {("sender@origin.example", 1, "env-x", "job-claim")})
        self.assertEqual(len({r[1] for r in rows}), 2, "distinct lease tokens")
        state = self.q("SELECT owner, lease_token, attempts,"
                       " lease_until BETWEEN now() + interval '50 s' AND now() + interval '70 s',"
                       " next_attempt = lease_until FROM mta.recipients WHERE domain = %s"
                       " ORDER BY id", (d1,))
        self.assertEqual(state, [(self.node_a, rows[0][1], 1, True, True),
                                 (self.node_a, rows[1][1], 1, True, True)])
        self.assertEqual(self.claim(d1, node=self.node_b), [], "a second claim gets nothing")
        self.assertNotIn(d1, self.ready())
        self.assertIn(d2, self.ready())
        self.assertEqual(self.q("SELECT queued, ready, in_flight, deferred FROM mta.queues"
                                " WHERE domain = %s", (d1,)), [(2, 0, 2, 0)])

    def test_claim_limit_and_message_order(self):
        d = self.domain()
        m1 = self.enqueue(["%d@%s" % (i, d) for i in range(3)])
        m2 = self.enqueue(["%d@%s" % (i, d) for i in range(3, 6)])
        first = self.claim(d, limit=4)
        self.assertEqual(len(first), 4)
        self.assertEqual([r[2] for r in first], sorted(r[2] for r in first))
        rest = self.claim(d, limit=10)
        self.assertEqual(len(rest), 2)
        self.assertFalse({r[0] for r in first} & {r[0] for r in rest})
        self.assertEqual({r[2] for r in first + rest}, {m1, m2})

    def test_finish_delivered(self):
        d = self.domain()
        self.enqueue(["a@" + d, "b@" + d])
        rows = self.claim(d)
        self.assertEqual(self.finish(rows, "d"), 2)
        self.assertEqual(self.q("SELECT count(*) FROM mta.recipients WHERE domain = %s", (d,)),
                         [(0,)])
        self.assertEqual(self.acct(d), [("d", "a@" + d, "relayed", 1, "node-a"),
                                        ("d", "b@" + d, "relayed", 1, "node-a")])
        full = self.q("SELECT dsn_status, dsn_diag, dsn_mta, dlv_source_ip, dlv_destination_ip,"
                      " tls_protocol, tls_cipher, orig, pipe, rcpt_id, time_queued IS NOT NULL,"
                      " dlv_size > 0 FROM mta.acct WHERE queue = %s AND type = 'd'"
                      " ORDER BY rcpt_id LIMIT 1", (d,))
        self.assertEqual(full, [("2.0.0", "250 2.0.0 ok", "mx.dest.example", "127.0.0.2",
                                 "127.0.0.3", "TLSv1.3", "TLS_AES_256_GCM_SHA384",
                                 "sender@origin.example", "bulk", rows[0][0], True, True)])
        # Finishing again (a duplicate call) changes nothing.
        self.assertEqual(self.finish(rows, "d"), 0)
        self.assertEqual(len(self.acct(d)), 2)

    def test_stale_token_after_takeover(self):
        d = self.domain()
        self.enqueue(["a@" + d])
        old = self.claim(d, lease_ms=1)
        time.sleep(0.05)
        new = self.claim(d, node=self.node_b)
        self.assertEqual([r[0] for r in new], [old[0][0]])
        self.assertNotEqual(new[0][1], old[0][1])
        self.assertEqual(new[0][5], 2, "second attempt")
        # The first node's late finish is a no-op, whatever its outcome.
        for t in ("d", "b", "t"):
            self.assertEqual(self.finish(old, t, retry=["2099-01-01Z"]), 0)
        self.assertEqual(self.q("SELECT set_aside FROM mta.set_aside(%s, %s, 'x') set_aside",
                                ([old[0][0]], [old[0][1]])), [(0,)])
        self.assertEqual(self.q1("SELECT mta.release(%s, %s, %s)",
                                 (self.node_a, [old[0][0]], [old[0][1]])), 0)
        self.assertEqual(self.acct(d), [])
        self.assertEqual(self.q("SELECT owner, lease_token FROM mta.recipients WHERE domain = %s",
                                (d,)), [(self.node_b, new[0][1])])
        self.assertEqual(self.finish(new, "d", node=self.node_b, name="node-b"), 1)
        self.assertEqual(self.acct(d), [("d", "a@" + d, "relayed", 2, "node-b")])

    def test_transient_failure_defers(self):
        d = self.domain()
        self.enqueue(["a@" + d, "b@" + d])
        rows = self.claim(d)
        n = self.finish(rows, "t", retry=["2099-01-01Z", "2000-01-01Z"], status=["4.2.0"] * 2,
                        diag=["451 4.2.0 try later", "451 4.2.0 try later"])
        self.assertEqual(n, 2)
        self.assertEqual(self.q("SELECT rcpt, next_attempt = '2099-01-01Z', owner, lease_token,"
                                " lease_until, attempts, last_error FROM mta.recipients"
                                " WHERE domain = %s ORDER BY id", (d,)),
                         [("a@" + d, True, None, None, None, 1, "451 4.2.0 try later"),
                          ("b@" + d, False, None, None, None, 1, "451 4.2.0 try later")])
        self.assertEqual(self.acct(d, "t"), [("t", "a@" + d, "delayed", 1, "node-a"),
                                             ("t", "b@" + d, "delayed", 1, "node-a")])
        self.assertEqual(self.q("SELECT last_error, queued, ready, deferred FROM mta.queues"
                                " WHERE domain = %s", (d,)), [("451 4.2.0 try later", 2, 1, 1)])
        # Only the recipient whose retry time has come is claimable.
        again = self.claim(d)
        self.assertEqual([(r[4], r[5]) for r in again], [("b@" + d, 2)])
        self.finish(again, "d")
        self.assertNotIn(d, self.ready(), "deferred rows do not make a queue ready")
        self.assertEqual(self.claim(d), [])

    def test_retry_time_comes(self):
        d = self.domain()
        self.enqueue(["a@" + d])
        rows = self.claim(d)
        self.finish(rows, "t", retry=[self.q1("SELECT now() + interval '300 ms'")])
        self.assertEqual(self.claim(d), [])
        time.sleep(0.4)
        self.assertIn(d, self.ready())
        self.assertEqual([r[5] for r in self.claim(d)], [2])

    def test_expired_lease_is_claimable(self):
        d = self.domain()
        self.enqueue(["a@" + d, "b@" + d])
        first = self.claim(d, lease_ms=300)
        self.assertEqual(self.claim(d, node=self.node_b), [])
        time.sleep(0.4)
        self.assertIn(d, self.ready())
        second = self.claim(d, node=self.node_b)
        self.assertEqual(sorted(r[0] for r in second), sorted(r[0] for r in first))
        self.assertEqual({r[5] for r in second}, {2})

    def test_node_stop_releases(self):
        d = self.domain()
        self.enqueue(["a@" + d, "b@" + d, "c@" + d])
        node = self.q1("SELECT mta.node_register('node-stop', 'bulk', 2, 102, 'host-c')")
        self.assertEqual(self.q("SELECT name, state, alive FROM mta.nodes WHERE id = %s", (node,)),
                         [("node-stop", "running", True)])
        self.assertEqual(len(self.claim(d, node=node, limit=2)), 2)
        self.assertEqual(self.q1("SELECT mta.node_stop(%s)", (node,)), 2)
        self.assertEqual(self.q("SELECT count(*), max(attempts), count(owner), bool_and(next_attempt"
                                " <= now()) FROM mta.recipients WHERE domain = %s", (d,)),
                         [(3, 0, 0, True)])
        self.assertEqual(self.q("SELECT state, alive, stopped_at IS NOT NULL FROM mta.nodes"
                                " WHERE id = %s", (node,)), [("stopped", False, True)])
        self.assertEqual(len(self.claim(d)), 3)

    def test_release(self):
        d = self.domain()
        self.enqueue(["a@" + d])
        rows = self.claim(d)
        self.assertEqual(self.q1("SELECT mta.release(%s, %s, %s)",
                                 (self.node_a, [rows[0][0]], [rows[0][1] + 1000000])), 0)
        self.assertEqual(self.q1("SELECT mta.release(%s, %s, %s)",
                                 (self.node_a, [rows[0][0]], [rows[0][1]])), 1)
        self.assertEqual(self.q("SELECT attempts, owner FROM mta.recipients WHERE domain = %s",
                                (d,)), [(0, None)])
        self.assertEqual([r[5] for r in self.claim(d)], [1])

    def test_not_before_not_ready(self):
        d = self.domain()
        self.enqueue(["a@" + d], not_before="2099-01-01Z")
        self.assertNotIn(d, self.ready())
        self.assertEqual(self.claim(d), [])

    def test_paused_queue(self):
        d = self.domain()
        self.enqueue(["a@" + d])
        self.enqueue(["v@" + d], vmta="vm-p")
        self.assertEqual(self.q1("SELECT mta.pause_queue(%s, '')", (d.upper(),)), 1)
        self.assertNotIn((d, ""), self.q("SELECT domain, vmta FROM mta.ready_queues('bulk', 100000)"))
        self.assertIn((d, "vm-p"), self.q("SELECT domain, vmta FROM mta.ready_queues('bulk', 100000)"))
        self.assertEqual(self.claim(d), [])
        self.assertEqual(self.q("SELECT vmta, paused FROM mta.queues WHERE domain = %s"
                                " ORDER BY vmta NULLS FIRST", (d,)), [(None, True), ("vm-p", False)])
        self.q("SELECT mta.pause_queue(%s)", (d,))
        self.assertNotIn(d, self.ready())
        self.assertEqual(self.claim(d, vmta="vm-p"), [])
        self.assertEqual(self.q1("SELECT mta.resume_queue(%s)", (d,)), 2)
        self.assertEqual(len(self.claim(d)), 1)
        self.assertEqual(len(self.claim(d, vmta="vm-p")), 1)

    def test_pause_queue_before_mail_arrives(self):
        d = self.domain()
        self.q("SELECT mta.pause_queue(%s)", (d,))
        self.enqueue(["a@" + d])
        self.assertNotIn(d, self.ready())
        self.assertEqual(self.claim(d), [])
        self.q("SELECT mta.resume_queue(%s)", (d,))
        self.assertEqual(len(self.claim(d)), 1)

    def test_paused_job(self):
        d = self.domain()
        self.enqueue(["a@" + d], job_id="job-paused-1")
        self.q("SELECT mta.pause_job('job-paused-1')")
        self.assertNotIn(d, self.ready())
        self.assertEqual(self.claim(d), [])
        self.enqueue(["b@" + d], job_id="job-running-1")
        self.enqueue(["c@" + d])
        self.assertIn(d, self.ready())
        self.assertEqual(sorted(r[4] for r in self.claim(d)), ["b@" + d, "c@" + d])
        self.assertEqual(self.q("SELECT paused, queued FROM mta.jobs WHERE job_id = 'job-paused-1'"),
                         [(True, 1)])
        self.q("SELECT mta.resume_job('job-paused-1')")
        self.assertEqual([r[4] for r in self.claim(d)], ["a@" + d])

    def dsns_to(self, sender):
        return self.q("SELECT m.id, m.mail_from, m.pipe, convert_from(m.content, 'UTF8')"
                      " FROM mta.messages m JOIN mta.recipients r ON r.message_id = m.id"
                      " WHERE r.rcpt = %s ORDER BY m.id", (sender,))

    def test_bounce_generates_one_dsn_per_message(self):
        d = self.domain()
        sender = "owner@%s" % self.domain()
        self.enqueue(["a@" + d, "b@" + d, "ok@" + d], mail_from=sender, envid="ENV-77",
                     pipe="transactional")
        rows = self.claim(d, pipe="transactional")
        n = self.finish(rows, ["b", "b", "d"], status=["5.1.1", "5.2.2", "2.0.0"],
                        diag=["550 5.1.1 no such user", "552 5.2.2 mailbox full\r\nX: y",
                              "250 ok"], bounces=True)
        self.assertEqual(n, 3)
        dsns = self.dsns_to(sender)
        self.assertEqual(len(dsns), 1, "one DSN for the message")
        _, mail_from, pipe, text = dsns[0]
        self.assertEqual((mail_from, pipe), ("", "transactional"))
        head, _, body = text.partition("\r\n\r\n")
        self.assertIn("To: <%s>" % sender, head)
        self.assertIn("Auto-Submitted: auto-replied", head)
        self.assertRegex(head, r"Content-Type: multipart/report; report-type=delivery-status;"
                               r"\r\n\tboundary=\"[^\"]+\"")
        boundary = head.split('boundary="')[1].split('"')[0]
        parts = body.split("--" + boundary)
        self.assertEqual(parts[-1], "--\r\n")
        self.assertEqual(len(parts), 5)  # preamble, 3 parts, closing
        self.assertIn("Content-Type: text/plain", parts[1])
        self.assertIn("<a@%s>: 550 5.1.1 no such user" % d, parts[1])
        self.assertIn("Content-Type: message/delivery-status", parts[2])
        self.assertIn("Reporting-MTA: dns; node-a\r\n", parts[2])
        self.assertIn("Original-Envelope-Id: ENV-77\r\n", parts[2])
        self.assertIn("Final-Recipient: rfc822; a@%s\r\nAction: failed\r\nStatus: 5.1.1\r\n"
                      "Remote-MTA: dns; mx.dest.example\r\n"
                      "Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n" % d, parts[2])
        self.assertIn("Final-Recipient: rfc822; b@%s\r\nAction: failed\r\nStatus: 5.2.2\r\n" % d,
                      parts[2])
        self.assertIn("Diagnostic-Code: smtp; 552 5.2.2 mailbox full X: y\r\n", parts[2],
                      "CR/LF in a diagnostic never starts a new field")
        self.assertNotIn("ok@" + d, parts[2])
        self.assertIn("Content-Type: text/rfc822-headers", parts[3])
        self.assertIn("Message-ID: <orig@origin.example>\r\n", parts[3])
        self.assertNotIn("body", parts[3])
        self.assertEqual(self.acct(d, "b"), [("b", "a@" + d, "failed", 1, "node-a"),
                                             ("b", "b@" + d, "failed", 1, "node-a")])

    def test_no_dsn_for_null_sender_or_when_off(self):
        d = self.domain()
        self.enqueue(["a@" + d], mail_from="")
        before = self.q1("SELECT count(*) FROM mta.messages WHERE mail_from = ''")
        self.assertEqual(self.finish(self.claim(d), "b", status=["5.1.1"], bounces=True), 1)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.messages WHERE mail_from = ''"), before)
        sender = "quiet@%s" % self.domain()
        self.enqueue(["b@" + d], mail_from=sender)
        self.assertEqual(self.finish(self.claim(d), "b", status=["5.1.1"], bounces=False), 1)
        self.assertEqual(self.dsns_to(sender), [])

    def test_set_aside(self):
        d = self.domain()
        self.enqueue(["a@" + d, "b@" + d])
        rows = self.claim(d, limit=1)
        self.assertEqual(self.q1("SELECT mta.set_aside(%s, %s, 'nonsense in row')",
                                 ([rows[0][0]], [rows[0][1]])), 1)
        self.assertEqual(self.q("SELECT rcpt, reason, lease_token FROM mta.quarantine"
                                " WHERE domain = %s", (d,)),
                         [(rows[0][4], "nonsense in row", rows[0][1])])
        other = self.q1("SELECT id FROM mta.recipients WHERE domain = %s", (d,))
        self.assertEqual(self.q1("SELECT mta.set_aside(%s, %s, 'by admin')", ([other], [None])), 1)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.recipients WHERE domain = %s", (d,)), 0)
        # Quarantined content is kept by the purge.
        self.q("SELECT mta.purge_messages()")
        self.assertEqual(self.q1("SELECT count(*) FROM mta.quarantine q JOIN mta.messages m"
                                 " ON m.id = q.message_id WHERE q.domain = %s", (d,)), 2)

    def test_delete_queue_and_job(self):
        d = self.domain()
        self.enqueue(["a@" + d, "b@" + d], job_id="job-del")
        self.enqueue(["c@" + d])
        leased = self.claim(d, limit=1)
        self.assertEqual(self.q1("SELECT mta.delete_job('job-del')"), 2)
        self.assertEqual(self.finish(leased, "d"), 0, "late finish of a deleted recipient")
        self.assertEqual(self.q1("SELECT mta.delete_queue(%s)", (d.upper(),)), 1)
        self.assertEqual(self.q("SELECT rcpt, bounce_cat, dsn_status, dsn_diag FROM mta.acct"
                                " WHERE queue = %s AND type <> 'r' ORDER BY rcpt", (d,)),
                         [("%s@%s" % (x, d), "other", "5.0.0", "deleted by administrator")
                          for x in "abc"])
        self.assertEqual(self.q1("SELECT count(*) FROM mta.recipients WHERE domain = %s", (d,)), 0)

    def test_exactly_one_final_row_per_recipient(self):
        d = self.domain()
        self.enqueue(["%d@%s" % (i, d) for i in range(50)])
        while True:
            rows = self.claim(d, limit=7, lease_ms=1)
            if not rows:
                break
            time.sleep(0.005)
            # Half the batches are taken over before they finish.
            stolen = self.claim(d, node=self.node_b, limit=3)
            self.finish(rows, "d")
            self.finish(stolen, "b", node=self.node_b, name="node-b", status=["5.0.0"] * 3)
        rows = self.q("SELECT rcpt_id, count(*) FROM mta.acct WHERE queue = %s AND type IN"
                      " ('d', 'b') GROUP BY rcpt_id", (d,))
        self.assertEqual(len(rows), 50)
        self.assertEqual({c for _, c in rows}, {1})

    def test_purge_messages_and_queues(self):
        d = self.domain()
        keep = self.enqueue(["a@" + d, "b@" + d])
        gone = self.enqueue(["c@" + d])
        rows = [r for r in self.claim(d) if r[2] in (keep, gone)]
        self.finish([r for r in rows if r[4] in ("a@" + d, "c@" + d)], "d")
        while self.q1("SELECT mta.purge_messages(1000)") == 1000:
            pass
        self.assertEqual(self.q1("SELECT count(*) FROM mta.messages WHERE id = %s", (keep,)), 1)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.messages WHERE id = %s", (gone,)), 0)
        self.finish([r for r in rows if r[4] == "b@" + d], "d")
        self.q("SELECT mta.purge_messages()")
        self.assertEqual(self.q1("SELECT count(*) FROM mta.messages WHERE id = %s", (keep,)), 0)
        self.assertGreaterEqual(self.q1("SELECT mta.purge_queues()"), 1)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.queue WHERE domain = %s", (d,)), 0)

    def test_register_pipes(self):
        self.q("SELECT mta.register_pipes(ARRAY['bulk', 'transactional', 'priority'], 'priority')")
        try:
            self.assertEqual(self.q("SELECT name FROM mta.pipes WHERE is_default"), [("priority",)])
            d = self.domain()
            self.enqueue(["a@" + d])
            self.assertEqual(self.q("SELECT pipe FROM mta.recipients WHERE domain = %s", (d,)),
                             [("priority",)])
            self.assertIn(d, self.ready("priority"))
            self.assertNotIn(d, self.ready("bulk"))
            with self.assertRaises(psycopg2.Error) as cm:
                self.q("SELECT mta.register_pipes(ARRAY['bad pipe'], NULL)")
            self.assertIn("invalid pipe name", str(cm.exception))
        finally:
            self.q("SELECT mta.register_pipes(ARRAY[]::text[], 'bulk')")
        self.assertEqual(self.q("SELECT name FROM mta.pipes WHERE is_default"), [("bulk",)])

    def test_views_shape(self):
        cols = {v: [c for (c,) in self.q("SELECT column_name FROM information_schema.columns"
                                         " WHERE table_schema = 'mta' AND table_name = %s"
                                         " ORDER BY ordinal_position", (v,))]
                for v in ("queues", "connections", "nodes", "jobs")}
        self.assertEqual(cols["queues"], ["domain", "vmta", "pipe", "queued", "ready", "deferred",
                                          "in_flight", "oldest", "next_attempt", "paused",
                                          "backoff", "connections", "last_error", "deferred_until",
                                          "rollup_key"])
        self.assertEqual(cols["connections"], ["domain", "vmta", "node", "slot", "since"])
        self.assertIn("alive", cols["nodes"])
        self.assertEqual(cols["jobs"][:6], ["job_id", "paused", "queued", "delivered", "bounced",
                                            "deferred"])
        self.assertEqual(self.q("SELECT count(*) FROM mta.connections"), [(0,)])

    def test_acct_partitions(self):
        today = self.q1("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')")
        self.assertEqual(self.q1("SELECT to_regclass(%s) IS NOT NULL", ("mta.acct_" + today,)),
                         True)
        self.assertEqual(self.q1("SELECT mta.acct_ensure_partitions()"), 0)
        self.assertEqual(self.q1("SELECT mta.acct_ensure_partitions(10)"), 3)
        d = self.domain()
        self.enqueue(["a@" + d])
        self.assertEqual(self.q1("SELECT tableoid::regclass::text FROM mta.acct WHERE queue = %s",
                                 (d,)), "mta.acct_" + today)

    def test_concurrent_claims_never_overlap(self):
        d = self.domain()
        total = 3000
        self.enqueue(["%d@%s" % (i, d) for i in range(total)])
        got = [[], []]
        errors = []

        def worker(k, node):
            try:
                conn = self.pg.connect()
                while True:
                    rows = self.claim(d, node=node, limit=13, conn=conn)
                    if not rows:
                        break
                    got[k].extend(r[0] for r in rows)
                conn.close()
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k, n))
                   for k, n in enumerate((self.node_a, self.node_b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertFalse(set(got[0]) & set(got[1]), "a recipient was claimed twice")
        self.assertEqual(len(got[0]) + len(got[1]), total)
        self.assertEqual(len(set(got[0]) | set(got[1])), total)
        self.assertTrue(got[0] and got[1], "both claimers got work")


if __name__ == "__main__":
    main()
