"""mta.enqueue_batch(), the group-commit call of the smtp-in processes: a
batch of valid messages is written set-based, with no subtransaction (its
rows carry the transaction's own xid), and the rows are those that
mta.enqueue_bytes writes for the same input; a batch with an invalid message
refuses that message alone with its SQLSTATE and text and stores the others;
malformed calls are refused whole; two batches creating the same new job and
queue rows in different orders wait for each other instead of deadlocking."""

import threading
import time

import psycopg2

from pgmta_test import DbTestCase, main

CALL = ("SELECT ord, id, err_state, err_text FROM mta.enqueue_batch("
        "%s::text[], %s::int[], %s::text[], %s::bytea[], %s::text[], %s::text[], %s::text[],"
        " %s::text[])")

COUNTED = ("mta.messages", "mta.recipients", "mta.acct", "mta.queue", "mta.job")


def msg(rcpts, mail_from="s@example.org", content=b"Subject: x\r\n\r\nbody\r\n", job_id=None,
        vmta=None, envid=None, pipe=None):
    return dict(mail_from=mail_from, rcpts=rcpts, content=content, job_id=job_id, vmta=vmta,
                envid=envid, pipe=pipe)


def batch_args(msgs):
    flat = [r for m in msgs for r in m["rcpts"]]
    return ([m["mail_from"] for m in msgs], [len(m["rcpts"]) for m in msgs], flat,
            [None if m["content"] is None else psycopg2.Binary(m["content"]) for m in msgs],
            [m["job_id"] for m in msgs], [m["vmta"] for m in msgs], [m["envid"] for m in msgs],
            [m["pipe"] for m in msgs])


# Each kind of invalid field, as one message of a batch.
INVALID = [
    ("sender NULL", msg(["a@bad.example"], mail_from=None), "mail_from is NULL"),
    ("sender", msg(["a@bad.example"], mail_from="bad sender@x.example"), "invalid mail_from"),
    ("sender CRLF", msg(["a@bad.example"], mail_from="s@x.example\r\nRCPT TO:<v@x>"),
     "contains CR or LF"),
    ("recipient", msg(["ok@bad.example", "a..b@bad.example"]), "rcpt_to[2]"),
    ("recipient CRLF", msg(["a@bad.example\r\nDATA"]), "contains CR or LF"),
    ("recipient NULL", msg([None]), "rcpt_to[1] is NULL"),
    ("no recipient", msg([]), "rcpt_to is empty"),
    ("recipient domain", msg(["a@x_y.example"]), "domain has a character other than"),
    ("content empty", msg(["a@bad.example"], content=b""), "content is empty"),
    ("content NULL", msg(["a@bad.example"], content=None), "content is NULL"),
    ("vmta", msg(["a@bad.example"], vmta="a b"), 'invalid vmta "a b"'),
    ("pipe", msg(["a@bad.example"], pipe="nope"), 'unknown pipe "nope"'),
    ("job_id empty", msg(["a@bad.example"], job_id=""), 'invalid job_id ""'),
    ("job_id long", msg(["a@bad.example"], job_id="j" * 201), "at most 200 allowed"),
    ("job_id control", msg(["a@bad.example"], job_id="j\x01"), "contains a control character"),
    ("envid", msg(["a@bad.example"], envid="\u00e9t\u00e9"), "only printable ASCII"),
    ("envid long", msg(["a@bad.example"], envid="+" * 40), "longer than 100 characters"),
]


class EnqueueBatchTest(DbTestCase):
    def batch(self, msgs, cur=None):
        if cur is None:
            return self.q(CALL, batch_args(msgs))
        cur.execute(CALL, batch_args(msgs))
        return cur.fetchall()

    def counts(self, tables=COUNTED):
        return super().counts(tables)

    def xmins(self, ids):
        """The distinct xmins of the rows of messages ids in every table written."""
        out = set()
        for sql in ("SELECT xmin::text FROM mta.messages WHERE id = ANY (%s)",
                    "SELECT xmin::text FROM mta.recipients WHERE message_id = ANY (%s)",
                    "SELECT xmin::text FROM mta.acct WHERE message_id = ANY (%s)"):
            out |= {r[0] for r in self.q(sql, (ids,))}
        return out

    def in_transaction(self, msgs):
        """Runs the batch in an explicit transaction; (rows, the transaction's xid)."""
        c = self.pg.connect(autocommit=False)
        with c.cursor() as cur:
            rows = self.batch(msgs, cur)
            cur.execute("SELECT pg_current_xact_id()::xid::text")
            xid = cur.fetchone()[0]
        c.commit()
        c.close()
        return rows, xid

    # --- the set path -----------------------------------------------------

    def test_valid_batch_takes_the_set_path(self):
        """Every row of a valid batch is written by the top transaction itself:
        no message got a subtransaction. The same batch with one invalid
        message takes the per-message path: one xid per stored message."""
        msgs = [msg(["p%d@set.example" % i], job_id="job-set", vmta="v1" if i % 2 else None,
                    envid="env-%d" % i) for i in range(20)]
        rows, xid = self.in_transaction(msgs)
        self.assertEqual([r[0] for r in rows], list(range(1, 21)))
        self.assertTrue(all(r[1] is not None and r[2] is None for r in rows), rows)
        ids = [r[1] for r in rows]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(self.xmins(ids), {xid})

        msgs[7] = msg(["bad@@set.example"])
        rows, xid = self.in_transaction(msgs)
        ids = [r[1] for r in rows if r[1] is not None]
        self.assertEqual(len(ids), 19)
        x = self.xmins(ids)
        self.assertEqual(len(x), 19, x)
        self.assertNotIn(xid, x)

    def test_several_recipients_at_several_domains(self):
        msgs = [msg(["A@One.Example", "b@two.example", "c@one.example"], job_id="job-multi",
                    envid="e1"),
                msg(["d@three.example"], vmta="vm-multi", pipe="transactional"),
                msg(["e@two.example", "f@Two.Example"], mail_from="")]
        rows, xid = self.in_transaction(msgs)
        ids = [r[1] for r in rows]
        self.assertEqual(self.xmins(ids), {xid})
        got = self.q("SELECT r.message_id, r.rcpt, r.domain, r.vmta, r.pipe, r.job_id"
                     " FROM mta.recipients r WHERE r.message_id = ANY (%s) ORDER BY r.id",
                     (ids,))
        self.assertEqual(got, [
            (ids[0], "A@One.Example", "one.example", "", "bulk", "job-multi"),
            (ids[0], "b@two.example", "two.example", "", "bulk", "job-multi"),
            (ids[0], "c@one.example", "one.example", "", "bulk", "job-multi"),
            (ids[1], "d@three.example", "three.example", "vm-multi", "transactional", None),
            (ids[2], "e@two.example", "two.example", "", "bulk", None),
            (ids[2], "f@Two.Example", "two.example", "", "bulk", None),
        ])
        self.assertEqual(self.q("SELECT pipe, domain, vmta FROM mta.queue WHERE domain IN"
                                " ('one.example', 'two.example', 'three.example')"
                                " ORDER BY 1, 2, 3"),
                         [("bulk", "one.example", ""), ("bulk", "two.example", ""),
                          ("transactional", "three.example", "vm-multi")])
        self.assertEqual(self.q("SELECT a.rcpt, a.queue, a.orig, a.envid, a.rcpt_id = r.id"
                                " FROM mta.acct a JOIN mta.recipients r ON r.id = a.rcpt_id"
                                " WHERE a.message_id = ANY (%s) ORDER BY a.rcpt_id", (ids,)),
                         [("A@One.Example", "one.example", "s@example.org", "e1", True),
                          ("b@two.example", "two.example", "s@example.org", "e1", True),
                          ("c@one.example", "one.example", "s@example.org", "e1", True),
                          ("d@three.example", "three.example/vm-multi", "s@example.org", None,
                           True),
                          ("e@two.example", "two.example", "", None, True),
                          ("f@Two.Example", "two.example", "", None, True)])
        self.assertEqual(self.q("SELECT count(*) FROM mta.job WHERE job_id = 'job-multi'"),
                         [(1,)])

    # --- refusals ---------------------------------------------------------

    def test_invalid_message_refused_alone(self):
        """Each kind of invalid field: the message is refused with the SQLSTATE
        and text mta.enqueue gives it alone; its neighbours are stored."""
        for name, bad, expect in INVALID:
            with self.subTest(name):
                tag = name.replace(" ", "-").replace("_", "-").lower()
                good1 = msg(["g1@%s.good.example" % tag], job_id="job-" + tag)
                good2 = msg(["g2@%s.good.example" % tag, "g3@%s.good.example" % tag])
                before = self.counts()
                rows = self.batch([good1, bad, good2])
                self.assertEqual([r[0] for r in rows], [1, 2, 3])
                self.assertIsNotNone(rows[0][1])
                self.assertIsNotNone(rows[2][1])
                self.assertEqual(rows[1][1:3], (None, "22023"), rows[1])
                self.assertIn(expect, rows[1][3])
                # the same text as mta.enqueue_bytes gives for the message alone
                with self.assertRaises(psycopg2.Error) as cm:
                    self.q("SELECT mta.enqueue_bytes(%s, %s::text[], %s, %s, %s, %s, %s, 0,"
                           " now())", (bad["mail_from"], bad["rcpts"],
                                       None if bad["content"] is None
                                       else psycopg2.Binary(bad["content"]),
                                       bad["job_id"], bad["vmta"], bad["pipe"], bad["envid"]))
                self.assertEqual(cm.exception.pgcode, "22023")
                self.assertEqual(cm.exception.diag.message_primary, rows[1][3])
                after = self.counts()
                self.assertEqual(after["mta.messages"], before["mta.messages"] + 2)
                self.assertEqual(after["mta.recipients"], before["mta.recipients"] + 3)
                self.assertEqual(self.q("SELECT rcpt FROM mta.recipients"
                                        " WHERE message_id = ANY (%s) ORDER BY id",
                                        ([rows[0][1], rows[2][1]],)),
                                 [("g1@%s.good.example" % tag,), ("g2@%s.good.example" % tag,),
                                  ("g3@%s.good.example" % tag,)])

    def test_valid_but_unusual_addresses_are_stored(self):
        """Addresses only the full check accepts (quoted, UTF-8, literals) do
        not take the set path, and are stored all the same."""
        rows = self.batch([msg(['"quoted @ local"@Unusual.Example']),
                           msg(["üser@bücher.DE"], mail_from="ü@bücher.de"),
                           msg(["lit@[192.0.2.1]"])])
        self.assertTrue(all(r[2] is None for r in rows), rows)
        self.assertEqual(self.q("SELECT rcpt, domain FROM mta.recipients"
                                " WHERE message_id = ANY (%s) ORDER BY id",
                                ([r[1] for r in rows],)),
                         [('"quoted @ local"@Unusual.Example', "unusual.example"),
                          ("üser@bücher.DE", "bücher.de"), ("lit@[192.0.2.1]", "[192.0.2.1]")])

    def test_bad_acct_setting_refuses_each_message(self):
        c = self.pg.connect()
        with c.cursor() as cur:
            cur.execute("SET mta.acct_received = maybe")
            before = self.counts()
            rows = self.batch([msg(["a@acct.example"]), msg(["b@acct.example"])], cur)
        c.close()
        self.assertEqual([(r[1], r[2]) for r in rows], [(None, "22023"), (None, "22023")])
        self.assertIn('invalid mta.acct_received "maybe"', rows[0][3])
        self.assertEqual(self.counts(), before)

    def test_arrays_of_different_lengths_refused(self):
        msgs = [msg(["a@len.example"]), msg(["b@len.example"])]
        for k in range(8):
            if k == 2:
                continue  # rcpt_to: its length is the sum of the counts
            with self.subTest(array=k):
                args = list(batch_args(msgs))
                args[k] = args[k][:1]
                before = self.counts()
                with self.assertRaises(psycopg2.Error) as cm:
                    self.q(CALL, args)
                self.assertEqual(cm.exception.pgcode, "22023")
                self.assertIn("the arrays differ in length", cm.exception.diag.message_primary)
                self.assertEqual(self.counts(), before)
        for counts in ([1, 2], [1, None], [-1, 3]):
            with self.subTest(counts=counts):
                args = list(batch_args(msgs))
                args[1] = counts
                before = self.counts()
                with self.assertRaises(psycopg2.Error) as cm:
                    self.q(CALL, args)
                self.assertEqual(cm.exception.pgcode, "22023")
                self.assertIn("recipient counts do not match rcpt_to",
                              cm.exception.diag.message_primary)
                self.assertEqual(self.counts(), before)
        self.assertEqual(self.q(CALL, ([],) * 8), [])

    def test_other_array_shapes_read_as_before(self):
        """A two-dimensional array is read by subscript from 1, as the
        per-message path always did (here: no sender), not flattened."""
        args = list(batch_args([msg(["a@shape.example"]), msg(["b@shape.example"])]))
        args[0] = [["s@example.org", "s@example.org"]]
        before = self.counts()
        rows = self.q(CALL, args)
        self.assertEqual([(r[1], r[2]) for r in rows], [(None, "22023"), (None, "22023")])
        self.assertIn("mail_from is NULL", rows[0][3])
        self.assertEqual(self.counts(), before)

    # --- concurrency ------------------------------------------------------

    def test_same_new_rows_from_two_batches_without_deadlock(self):
        """A holds a new job or queue row that B's batch also creates; B's
        batch names a second new row first, which A then creates too. Taken
        in message order, B would hold the second row and wait for A, and A
        for B: a deadlock. Taken in key order, B waits without holding it."""
        cases = {
            "queue": (msg(["x@dl-a.example"]),
                      [msg(["y@dl-b.example"]), msg(["z@dl-a.example"])],
                      msg(["w@dl-b.example"])),
            "job": (msg(["x@dl-job.example"], job_id="dl-job-a"),
                    [msg(["y@dl-job.example"], job_id="dl-job-b"),
                     msg(["z@dl-job.example"], job_id="dl-job-a")],
                    msg(["w@dl-job.example"], job_id="dl-job-b")),
        }
        for name, (first, other, second) in cases.items():
            with self.subTest(name):
                a = self.pg.connect(autocommit=False)
                b = self.pg.connect()
                with b.cursor() as cur:
                    cur.execute("SELECT pg_backend_pid()")
                    b_pid = cur.fetchone()[0]
                    cur.execute("SET deadlock_timeout = '100ms'")
                acur = a.cursor()
                acur.execute("SET deadlock_timeout = '100ms'")
                self.assertIsNone(self.batch([first], acur)[0][2])
                result = {}

                def run_b():
                    try:
                        with b.cursor() as cur:
                            result["rows"] = self.batch(other, cur)
                    except psycopg2.Error as e:
                        result["error"] = e

                t = threading.Thread(target=run_b)
                t.start()
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if self.q("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                              (b_pid,)) == [("Lock",)]:
                        break
                    time.sleep(0.02)
                else:
                    self.fail("B never waited for A")
                try:
                    rows = self.batch([second], acur)
                    a.commit()
                except psycopg2.Error as e:
                    a.rollback()
                    rows = e
                t.join(10)
                self.assertFalse(t.is_alive())
                self.assertNotIsInstance(rows, psycopg2.Error, rows)
                self.assertIsNone(rows[0][2])
                self.assertNotIn("error", result, result.get("error"))
                self.assertTrue(all(r[2] is None for r in result["rows"]), result["rows"])
                a.close()
                b.close()

    # --- the same rows as mta.enqueue_bytes -------------------------------

    def snapshot(self):
        """Every column of the rows enqueue writes, except ids and times,
        with the links between them resolved to values."""
        def cols(table, skip):
            names = [r[0] for r in self.q(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'mta' AND table_name = %s ORDER BY ordinal_position",
                (table,))]
            self.assertTrue(names, table)
            return [n for n in names if n not in skip]

        out = {}
        m = cols("messages", {"id", "created_at"})
        out["messages"] = self.q("SELECT %s FROM mta.messages m ORDER BY m.id"
                                 % ", ".join("m." + c for c in m))
        r = cols("recipients", {"id", "message_id", "next_attempt", "queued_at"})
        out["recipients"] = self.q(
            "SELECT %s, mm.message_id_header, r.next_attempt = r.queued_at,"
            " r.next_attempt <= now() FROM mta.recipients r"
            " JOIN mta.messages mm ON mm.id = r.message_id ORDER BY r.id"
            % ", ".join("r." + c for c in r))
        a = cols("acct", {"id", "time_logged", "time_queued", "message_id", "rcpt_id"})
        out["acct"] = self.q(
            "SELECT %s, mm.message_id_header, rr.rcpt, a.time_logged = a.time_queued"
            " FROM mta.acct a JOIN mta.messages mm ON mm.id = a.message_id"
            " JOIN mta.recipients rr ON rr.id = a.rcpt_id AND rr.message_id = a.message_id"
            " ORDER BY a.rcpt_id" % ", ".join("a." + c for c in a))
        q = cols("queue", {"created_at"})
        out["queue"] = self.q("SELECT %s FROM mta.queue ORDER BY 1, 2, 3" % ", ".join(q))
        j = cols("job", {"created_at"})
        out["job"] = self.q("SELECT %s FROM mta.job ORDER BY 1" % ", ".join(j))
        k = cols("queue_ready", {"next_at"})
        out["queue_ready"] = self.q(
            "SELECT %s, next_at IS NOT NULL AND next_at <= now() FROM mta.queue_ready"
            " ORDER BY 1, 2, 3" % ", ".join(k))
        out["queue_wake"] = self.q("SELECT pipe, domain, vmta FROM mta.queue_wake ORDER BY 1, 2, 3")
        out["recipient_meta"] = self.q("SELECT count(*) FROM mta.recipient_meta")
        return out

    def clear(self):
        self.q("TRUNCATE mta.messages, mta.recipients, mta.acct, mta.queue, mta.job,"
               " mta.queue_ready, mta.queue_wake, mta.recipient_meta")

    def test_rows_equal_enqueue_bytes(self):
        msgs = [
            msg(["one@eq-a.example", "Two@EQ-B.example", "three@eq-a.example"],
                content=b"Subject: a\r\nMessage-ID: <eq1@example.org>\r\n\r\nbody\r\n",
                job_id="eq-job-1", envid="eq env+1"),
            msg(["four@eq-c.example"], mail_from="",
                content=b"Subject: b\r\nmessage-id:\r\n <eq2@example.org>\r\n\r\n\x00\xff\r\n",
                vmta="eq-vmta", pipe="transactional"),
            msg(["five@eq-a.example"], content=b"no header at all", job_id="eq-job-0",
                vmta=""),
            msg(["six@eq-b.example", "seven@eq-d.example"],
                content=b"Message-ID: <eq4@example.org>\r\n\r\nx", job_id="eq-job-1",
                pipe="bulk", vmta="eq-vmta"),
        ]
        for acct in ("on", "off"):
            with self.subTest(acct_received=acct):
                c = self.pg.connect(autocommit=False)
                cur = c.cursor()
                cur.execute("SET mta.acct_received = %s" % acct)
                self.clear()
                rows = self.batch(msgs, cur)
                cur.execute("SELECT pg_current_xact_id()::xid::text")
                xid = cur.fetchone()[0]
                c.commit()
                self.assertTrue(all(r[2] is None for r in rows), rows)
                self.assertEqual(self.xmins([r[1] for r in rows]), {xid})  # the set path
                got = self.snapshot()

                self.clear()
                for m in msgs:
                    cur.execute("SELECT mta.enqueue_bytes(%s, %s::text[], %s, %s, %s, %s, %s,"
                                " 0, now())",
                                (m["mail_from"], m["rcpts"], psycopg2.Binary(m["content"]),
                                 m["job_id"], m["vmta"], m["pipe"], m["envid"]))
                c.commit()
                c.close()
                want = self.snapshot()
                self.assertEqual(len(want["recipients"]), 7)
                self.assertEqual(len(want["acct"]), 7 if acct == "on" else 0)
                for table in want:
                    self.assertEqual(got[table], want[table], table)
        self.clear()


if __name__ == "__main__":
    main()
