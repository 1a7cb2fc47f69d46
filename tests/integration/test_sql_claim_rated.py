"""mta.claim_many_rated: the rate tokens and the claim of a queue in one
statement. Tokens are spent one per message claimed, never for rows that are
not there; a bucket with k tokens claims at most k messages; two callers at
once never exceed the bucket; an exhausted bucket answers with its wait; a
refused slot gives the rows and the tokens back (mta.release_refund). With a
source IP's message bucket (source-ip-max-msg-rate) the claim takes
min(queue tokens, IP tokens), gives what it did not use back to both, and
two callers that take the same buckets in opposite orders never deadlock."""
import threading
import uuid

from pgmta_test import DbTestCase, main

# A queue's answer: (q, rcpt_id, message_id, tokens, wait_ms) per row.
CLAIM = ("SELECT q, rcpt_id, message_id, tokens, wait_ms, lease_token"
         "  FROM mta.claim_many_rated(%(node)s, 'bulk', %(d)s, %(v)s, %(l)s, 60000, %(b)s,"
         "       %(want)s, %(keys)s, %(kv)s, %(ml)s, %(mp)s, %(cl)s, %(cp)s)")

# The same with the source IP's message bucket (source-ip-max-msg-rate).
CLAIM_IP = ("SELECT q, rcpt_id, message_id, tokens, wait_ms, lease_token"
            "  FROM mta.claim_many_rated(%(node)s, 'bulk', %(d)s, %(v)s, %(l)s, 60000, %(b)s,"
            "       %(want)s, %(keys)s, %(kv)s, %(ml)s, %(mp)s, %(cl)s, %(cp)s,"
            "       %(ik)s, %(il)s, %(ip)s)")


class ClaimRatedTest(DbTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node = cls.q1("SELECT mta.node_register('node-a', 'bulk', 0, 100, 'host-a')")

    def domain(self):
        return "r%s.example" % uuid.uuid4().hex[:10]

    def enqueue(self, domain, n, rcpts_each=1):
        for i in range(n):
            self.q("SELECT mta.enqueue('s@origin.example', %s,"
                   " 'From: <s@origin.example>\r\n\r\nbody\r\n')",
                   (["m%d-%d@%s" % (i, k, domain) for k in range(rcpts_each)],))

    def freeze(self, domain, kind, tokens):
        """The bucket holds TOKENS and does not refill while the test runs."""
        self.q("INSERT INTO mta.rate_bucket (domain, vmta, kind, tokens, refilled_at)"
               " VALUES (%s, '', %s, %s, now() + interval '1 hour')"
               " ON CONFLICT (domain, vmta, kind) DO UPDATE"
               " SET tokens = excluded.tokens, refilled_at = excluded.refilled_at",
               (domain, kind, tokens))

    def tokens(self, domain, kind="msg"):
        return self.q1("SELECT tokens FROM mta.rate_bucket WHERE domain = %s AND vmta = ''"
                       " AND kind = %s", (domain, kind))

    def claim(self, domains, want=100, rate=(600, 60000), connect=None, conn=None, limit=100):
        n = len(domains)
        args = dict(node=self.node, d=domains, v=[""] * n, l=[limit] * n, b=[None] * n,
                    want=[want] * n, keys=domains, kv=[""] * n, ml=[rate[0]] * n,
                    mp=[rate[1]] * n, cl=[connect[0] if connect else None] * n,
                    cp=[connect[1] if connect else None] * n)
        with (conn or self.conn).cursor() as cur:
            cur.execute(CLAIM, args)
            return cur.fetchall()

    def messages(self, rows):
        return len({r[2] for r in rows if r[1] is not None})

    def test_tokens_spent_equal_messages_claimed(self):
        d = self.domain()
        self.enqueue(d, 3, rcpts_each=2)
        self.freeze(d, "msg", 10)
        rows = self.claim([d])
        self.assertEqual(len(rows), 6, "every recipient of the 3 messages")
        self.assertEqual(self.messages(rows), 3)
        self.assertEqual({r[3] for r in rows}, {10}, "tokens column: the grant")
        self.assertEqual({r[4] for r in rows}, {0})
        self.assertAlmostEqual(self.tokens(d), 7.0)

    def test_bucket_with_k_tokens_claims_at_most_k_messages(self):
        d = self.domain()
        self.enqueue(d, 8, rcpts_each=2)
        self.freeze(d, "msg", 3)
        rows = self.claim([d])
        self.assertEqual(self.messages(rows), 3)
        self.assertEqual(len(rows), 6, "messages are taken whole")
        self.assertAlmostEqual(self.tokens(d), 0.0)
        ready = self.q1("SELECT count(*) FROM mta.recipients WHERE domain = %s"
                        " AND lease_token IS NULL", (d,))
        self.assertEqual(ready, 10, "the other 5 messages stay ready, not leased")
        # want bounds as well
        self.freeze(d, "msg", 10)
        rows = self.claim([d], want=2)
        self.assertEqual(self.messages(rows), 2)
        self.assertAlmostEqual(self.tokens(d), 8.0)

    def test_empty_queue_takes_no_tokens(self):
        d = self.domain()
        self.freeze(d, "msg", 5)
        self.freeze(d, "connect", 2)
        rows = self.claim([d], connect=(6000, 60000))
        self.assertEqual(rows, [(1, None, None, 0, 0, None)], "one status row, no wait")
        self.assertAlmostEqual(self.tokens(d), 5.0)
        self.assertAlmostEqual(self.tokens(d, "connect"), 2.0)
        # with rows, one connect token per call
        self.enqueue(d, 2)
        rows = self.claim([d], connect=(6000, 60000))
        self.assertEqual(self.messages(rows), 2)
        self.assertAlmostEqual(self.tokens(d), 3.0)
        self.assertAlmostEqual(self.tokens(d, "connect"), 1.0)

    def test_wait_returned_when_exhausted(self):
        d = self.domain()
        self.enqueue(d, 2)
        self.freeze(d, "msg", 0.5)
        rows = self.claim([d], rate=(60, 60000))
        self.assertEqual(len(rows), 1)
        q, rcpt_id, _, tokens, wait_ms, _ = rows[0]
        self.assertEqual((q, rcpt_id, tokens), (1, None, 0))
        # half a token missing at one per second
        self.assertTrue(400 <= wait_ms <= 600, wait_ms)
        # connect bucket exhausted: no message token spent either
        self.freeze(d, "msg", 5)
        self.freeze(d, "connect", 0)
        rows = self.claim([d], rate=(60, 60000), connect=(1, 10000))
        self.assertEqual(len(rows), 1)
        self.assertIsNone(rows[0][1])
        self.assertEqual(rows[0][4], 10000)
        self.assertAlmostEqual(self.tokens(d), 5.0)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.recipients WHERE domain = %s"
                                 " AND lease_token IS NOT NULL", (d,)), 0)

    def test_several_queues_and_a_shared_key(self):
        """Queues of one call each get their rows and their own answer; queues
        with one key share its tokens: a later one gets what the earlier ones
        reserved only after the statement (never more than the bucket)."""
        a, b, empty = self.domain(), self.domain(), self.domain()
        self.enqueue(a, 4)
        self.enqueue(b, 4)
        key = self.domain()
        self.freeze(key, "msg", 5)
        args = dict(node=self.node, d=[a, empty, b], v=[""] * 3, l=[100] * 3, b=[None] * 3,
                    want=[100] * 3, keys=[key] * 3, kv=[""] * 3, ml=[600] * 3, mp=[60000] * 3,
                    cl=[None] * 3, cp=[None] * 3)
        rows = self.q(CLAIM, args)
        per_q = {i: len({r[2] for r in rows if r[0] == i and r[1] is not None})
                 for i in (1, 2, 3)}
        self.assertEqual(per_q, {1: 4, 2: 0, 3: 0})
        self.assertEqual([r[:4] for r in rows if r[0] == 2], [(2, None, None, 0)])
        self.assertAlmostEqual(self.tokens(key), 1.0, "the unused reservation is back")
        self.assertTrue([r for r in rows if r[0] == 3 and r[1] is None and r[4] > 0])

    def test_two_callers_never_exceed_the_bucket(self):
        d = self.domain()
        self.enqueue(d, 200)
        self.freeze(d, "msg", 37)
        got = [[], []]
        errors = []

        def worker(k):
            try:
                conn = self.pg.connect()
                while True:
                    rows = self.claim([d], want=3, rate=(6000, 60000), conn=conn)
                    if rows[0][1] is None:
                        break
                    got[k].extend(r[1] for r in rows)
                conn.close()
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertFalse(set(got[0]) & set(got[1]))
        self.assertEqual(len(got[0]) + len(got[1]), 37, "exactly the bucket's tokens")
        self.assertAlmostEqual(self.tokens(d), 0.0)

    def test_release_refund(self):
        d = self.domain()
        self.enqueue(d, 2)
        self.freeze(d, "msg", 4)
        self.freeze(d, "connect", 1)
        rows = self.claim([d], connect=(60, 60000))
        self.assertEqual(self.messages(rows), 2)
        self.assertAlmostEqual(self.tokens(d), 2.0)
        self.assertAlmostEqual(self.tokens(d, "connect"), 0.0)
        n = self.q1("SELECT mta.release_refund(%s, %s, %s, %s, '', 2, 1)",
                    (self.node, [r[1] for r in rows], [r[5] for r in rows], d))
        self.assertEqual(n, 2)
        self.assertAlmostEqual(self.tokens(d), 4.0)
        self.assertAlmostEqual(self.tokens(d, "connect"), 1.0)
        rows = self.claim([d], connect=(60, 60000))
        self.assertEqual(self.messages(rows), 2, "released rows are ready again")

    def claim_ip(self, domains, ip_key, ip_rate=(600, 60000), want=100, rate=(600, 60000),
                 conn=None):
        """A claim whose queues are all sent from the source IP of IP_KEY
        (source-ip-max-msg-rate IP_RATE)."""
        n = len(domains)
        args = dict(node=self.node, d=domains, v=[""] * n, l=[100] * n, b=[None] * n,
                    want=[want] * n, keys=domains, kv=[""] * n, ml=[rate[0]] * n,
                    mp=[rate[1]] * n, cl=[None] * n, cp=[None] * n, ik=[ip_key] * n,
                    il=[ip_rate[0]] * n, ip=[ip_rate[1]] * n)
        with (conn or self.conn).cursor() as cur:
            cur.execute(CLAIM_IP, args)
            return cur.fetchall()

    def test_source_ip_tokens_bound_the_claim(self):
        """The claim takes min(queue tokens, IP tokens) and spends both."""
        d, ip = self.domain(), "ip:" + self.domain()
        self.enqueue(d, 8)
        self.freeze(d, "msg", 10)
        self.freeze(ip, "msg", 3)
        rows = self.claim_ip([d], ip)
        self.assertEqual(self.messages(rows), 3)
        self.assertEqual({r[3] for r in rows}, {3})
        self.assertAlmostEqual(self.tokens(d), 7.0)
        self.assertAlmostEqual(self.tokens(ip), 0.0)
        # the IP exhausted: nothing claimed, the queue's tokens untouched,
        # the wait of the IP's bucket (half a token at 1/s)
        self.freeze(ip, "msg", 0.5)
        rows = self.claim_ip([d], ip, ip_rate=(60, 60000))
        self.assertEqual(len(rows), 1)
        self.assertIsNone(rows[0][1])
        self.assertTrue(400 <= rows[0][4] <= 600, rows[0][4])
        self.assertAlmostEqual(self.tokens(d), 7.0)
        self.assertAlmostEqual(self.tokens(ip), 0.5)
        # the queue without a rate of its own: the IP's alone
        self.freeze(ip, "msg", 2)
        rows = self.claim_ip([d], ip, rate=(None, None))
        self.assertEqual(self.messages(rows), 2)
        self.assertAlmostEqual(self.tokens(ip), 0.0)

    def test_source_ip_unused_tokens_go_back_to_both(self):
        d, ip = self.domain(), "ip:" + self.domain()
        self.enqueue(d, 2)
        self.freeze(d, "msg", 10)
        self.freeze(ip, "msg", 5)
        rows = self.claim_ip([d], ip)
        self.assertEqual(self.messages(rows), 2)
        self.assertAlmostEqual(self.tokens(d), 8.0)
        self.assertAlmostEqual(self.tokens(ip), 3.0)
        # a refused slot gives both back
        n = self.q1("SELECT mta.release_refund(%s, %s, %s, %s, '', 2, 0, %s)",
                    (self.node, [r[1] for r in rows], [r[5] for r in rows], d, ip))
        self.assertEqual(n, 2)
        self.assertAlmostEqual(self.tokens(d), 10.0)
        self.assertAlmostEqual(self.tokens(ip), 5.0)

    def test_source_ip_shared_by_queues_of_one_call(self):
        a, b, ip = self.domain(), self.domain(), "ip:" + self.domain()
        self.enqueue(a, 3)
        self.enqueue(b, 3)
        self.freeze(ip, "msg", 4)
        rows = self.claim_ip([a, b], ip, rate=(None, None))
        per_q = {i: len({r[2] for r in rows if r[0] == i and r[1] is not None})
                 for i in (1, 2)}
        self.assertEqual(per_q, {1: 3, 2: 0}, "the first reserved the IP's 4 tokens")
        self.assertAlmostEqual(self.tokens(ip), 1.0, "the unused reservation is back")

    def test_source_ip_bucket_across_callers_never_deadlocks(self):
        """Two callers claim the same two queues of one source IP in opposite
        orders, over and over: the buckets are locked in one order, so
        neither waits for the other in a cycle (PostgreSQL would abort one
        with a deadlock error), and together they never exceed the IP's
        tokens."""
        a, b, ip = self.domain(), self.domain(), "ip:" + self.domain()
        self.enqueue(a, 150)
        self.enqueue(b, 150)
        self.freeze(a, "msg", 1000)
        self.freeze(b, "msg", 1000)
        self.freeze(ip, "msg", 120)  # caps: 2000 per queue, 200 for the IP
        got, errors = [[], []], []

        def worker(k):
            try:
                conn = self.pg.connect()
                order = [a, b] if k == 0 else [b, a]
                for _ in range(100):
                    rows = self.claim_ip(order, ip, ip_rate=(12000, 60000), want=1,
                                         rate=(120000, 60000), conn=conn)
                    got[k].extend(r[1] for r in rows if r[1] is not None)
                conn.close()
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertFalse(set(got[0]) & set(got[1]))
        self.assertEqual(len(got[0]) + len(got[1]), 120, "exactly the IP's tokens")
        self.assertAlmostEqual(self.tokens(ip), 0.0)
        self.assertAlmostEqual(self.tokens(a) + self.tokens(b), 2000.0 - 120)

    def test_unlimited_rate_claims_like_claim_many(self):
        d = self.domain()
        self.enqueue(d, 5)
        rows = self.claim([d], rate=(None, None), want=3)
        self.assertEqual(self.messages(rows), 3)
        self.assertEqual(self.q1("SELECT count(*) FROM mta.rate_bucket WHERE domain = %s",
                                 (d,)), 0)


if __name__ == "__main__":
    main()
