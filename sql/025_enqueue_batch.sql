-- 025_enqueue_batch: mta.enqueue_batch(), group commit for the SMTP listener.
--
-- One call enqueues several messages in the caller's (implicit) transaction:
-- messages whose DATA ended close together share one COMMIT and so one WAL
-- flush. Nothing is accepted before that commit: if the statement or its
-- commit fails, nothing of the batch is stored.
--
-- Arguments are parallel arrays, one element per message (1-based):
--   p_mail_from[i], p_content[i], p_job_id[i], p_vmta[i], p_envid[i], p_pipe[i]
-- and the recipients flattened: message i owns p_rcpt_count[i] consecutive
-- elements of p_rcpt_to.
--
-- The DSN options of RFC 3461 (migrations/0011_dsn.sql), each array NULL
-- when no message of the batch has them (then they cost nothing):
--   p_ret[i]       RET of message i: 'F' (FULL), 'H' (HDRS) or NULL
--   p_notify[k]    NOTIFY of recipient k (parallel to p_rcpt_to): bitmask
--                  1 SUCCESS, 2 FAILURE, 4 DELAY, 0 NEVER, NULL not given
--   p_orcpt[k]     ORCPT of recipient k, decoded: "rfc822;address"
-- The listener has checked their syntax; values outside these domains
-- refuse the whole call.
--
-- Returns one row per message, in order: its id, or the SQLSTATE and the
-- message text of the error that refused it, or neither when every
-- recipient of the message is suppressed (accepted, nothing stored: see
-- README, Suppression).
--
-- Two paths, with the same result and the same rows (mta.enqueue_bytes's):
--
--   set path   the whole batch is checked first, then written with one
--              statement per table (job rows, queue rows in key order,
--              messages, recipients, 'r' rows) and no subtransaction: the
--              rows carry the transaction's own xid, and the recipients'
--              statement trigger lowers the queue markers once per batch.
--              Taken when every message passes the fast tests that
--              mta.enqueue_bytes itself applies first (plain addresses,
--              content of 1 octet to 64 MB, 1 to 100000 recipients) and the
--              batch's distinct pipes, vmtas, job ids and envids pass
--              mta.resolve_pipe, mta.check_vmta, mta.check_job_id and
--              mta.check_envid. Those checks run in one exception block
--              that writes nothing (so it gets no subtransaction id); a
--              value they refuse sends the batch to the other path.
--   per message  any other batch (a message fails a check, or has an
--              address only the full check accepts, e.g. quoted or UTF-8):
--              each message goes through mta.enqueue_bytes inside its own
--              BEGIN ... EXCEPTION block (a subtransaction), so a message
--              that fails its checks is rolled back alone and reported in
--              its row; the others are stored. Every message writes and so
--              gets a subtransaction id; PostgreSQL caches 64 of them per
--              backend before snapshots get slower, which is why callers
--              keep batches at 64 messages or fewer
--              (smtp-listener.batch-max-messages).
--
-- Lock order, as mta.enqueue and mta.submit: job rows, then queue rows in
-- key order, then new rows. Two batches creating the same new job and queue
-- rows wait for each other instead of deadlocking.
--
-- Cost per message, PostgreSQL backend CPU (tests/bench/enqueue_batch:
-- 20,000 messages of the bench mix, 1 KB and 10 KB, one recipient each, in
-- 64-message calls, one transaction each, fsync on; the per-message path as
-- the "before", alternated three times on a 2-core VM shared with other
-- work, 2026-12-02, so noisy): 272-299 us before, 134-153 us on the set
-- path (2,200-2,700 -> 4,200-4,900 messages/s). Most of what is left is
-- writing the content (mta.messages, lz4 and TOAST) and the recipients'
-- ready-marker trigger. See README, "Enqueue cost".
DROP FUNCTION IF EXISTS mta.enqueue_batch(text[], int[], text[], bytea[], text[], text[], text[],
                                           text[]);
CREATE OR REPLACE FUNCTION mta.enqueue_batch(p_mail_from text[], p_rcpt_count int[],
                                             p_rcpt_to text[], p_content bytea[],
                                             p_job_id text[], p_vmta text[], p_envid text[],
                                             p_pipe text[], p_ret text[] DEFAULT NULL,
                                             p_notify smallint[] DEFAULT NULL,
                                             p_orcpt text[] DEFAULT NULL)
RETURNS TABLE (ord int, id bigint, err_state text, err_text text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    n int := coalesce(cardinality(p_mail_from), 0);
    v_nr int := coalesce(cardinality(p_rcpt_to), 0);
    v_off int := 0;
    v_cnt int;
    v_state text;
    v_msg text;
    v_ok bool;
    v_bad_counts bool;
    v_total bigint;
    v_has_job bool;
    v_need_default bool;
    v_default text;
    v_sizes int[];
    v_rids bigint[];
    v_acct bool;
    v_rmsg int[];
    v_rdom text[];
    v_ids bigint[];
    v_sup int[];
    v_kept bool[];
BEGIN
    IF coalesce(cardinality(p_rcpt_count), 0) <> n OR coalesce(cardinality(p_content), 0) <> n
       OR coalesce(cardinality(p_job_id), 0) <> n OR coalesce(cardinality(p_vmta), 0) <> n
       OR coalesce(cardinality(p_envid), 0) <> n OR coalesce(cardinality(p_pipe), 0) <> n THEN
        RAISE EXCEPTION 'enqueue_batch: the arrays differ in length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n > 1000 THEN
        RAISE EXCEPTION 'enqueue_batch: % messages: at most 1000 per call', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    IF (p_ret IS NOT NULL AND (cardinality(p_ret) <> n
                               OR EXISTS (SELECT 1 FROM unnest(p_ret) AS r
                                           WHERE r NOT IN ('F', 'H'))))
       OR (p_notify IS NOT NULL AND (cardinality(p_notify) <> v_nr
                                     OR EXISTS (SELECT 1 FROM unnest(p_notify) AS x
                                                 WHERE x NOT BETWEEN 0 AND 7)))
       OR (p_orcpt IS NOT NULL AND (cardinality(p_orcpt) <> v_nr
                                    OR EXISTS (SELECT 1 FROM unnest(p_orcpt) AS o
                                                WHERE o !~ '^[!-~]+;[\x20-\x7e]+$'
                                                   OR length(o) > 500))) THEN
        RAISE EXCEPTION 'enqueue_batch: bad DSN options (RET, NOTIFY or ORCPT)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The fast tests of mta.enqueue_bytes, for every message at once.
    SELECT bool_or(u.cnt IS NULL OR u.cnt < 0), sum(u.cnt),
           bool_and(u.mail_from IS NOT NULL
                    AND (u.mail_from = '' OR coalesce(mta.address_plain(u.mail_from), false))
                    AND u.cnt BETWEEN 1 AND 100000
                    AND coalesce(octet_length(u.content) BETWEEN 1 AND 67108864, false)),
           bool_or(u.pipe IS NULL), bool_or(u.job_id IS NOT NULL),
           array_agg(octet_length(u.content) ORDER BY u.i)
      INTO v_bad_counts, v_total, v_ok, v_need_default, v_has_job, v_sizes
      FROM unnest(p_mail_from, p_rcpt_count, p_content, p_job_id, p_pipe)
           WITH ORDINALITY AS u(mail_from, cnt, content, job_id, pipe, i);
    IF v_bad_counts OR v_total > v_nr THEN
        RAISE EXCEPTION 'enqueue_batch: recipient counts do not match rcpt_to'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The per-message path reads the arrays by subscript from 1; unnest
    -- would read other shapes differently, so they go that way.
    IF v_ok AND (array_ndims(p_mail_from) > 1 OR array_ndims(p_rcpt_count) > 1
                 OR array_ndims(p_rcpt_to) > 1 OR array_ndims(p_content) > 1
                 OR array_ndims(p_job_id) > 1 OR array_ndims(p_vmta) > 1
                 OR array_ndims(p_envid) > 1 OR array_ndims(p_pipe) > 1
                 OR array_lower(p_mail_from, 1) <> 1 OR array_lower(p_rcpt_count, 1) <> 1
                 OR array_lower(p_rcpt_to, 1) <> 1 OR array_lower(p_content, 1) <> 1
                 OR array_lower(p_job_id, 1) <> 1 OR array_lower(p_vmta, 1) <> 1
                 OR array_lower(p_envid, 1) <> 1 OR array_lower(p_pipe, 1) <> 1) THEN
        v_ok := false;
    END IF;

    IF v_ok THEN
        -- Recipients: the message each belongs to, its domain, and the fast
        -- address test (extra elements past the counts are ignored).
        v_rmsg := ARRAY(SELECT u.i FROM unnest(p_rcpt_count) WITH ORDINALITY AS u(cnt, i),
                               generate_series(1, u.cnt) AS g
                         ORDER BY u.i, g);
        SELECT bool_and(coalesce(mta.address_plain(r.rcpt), false)),
               array_agg(mta.address_domain_of(r.rcpt) ORDER BY r.k)
          INTO v_ok, v_rdom
          FROM unnest(p_rcpt_to) WITH ORDINALITY AS r(rcpt, k)
         WHERE r.k <= v_total;
    END IF;

    IF v_ok THEN
        -- The checks enqueue_bytes makes on every call, once per distinct
        -- value. Nothing is written here, so the block costs no
        -- subtransaction id; a refusal sends the batch to the path below,
        -- which names the message at fault.
        BEGIN
            v_acct := mta.acct_received();
            IF v_need_default THEN
                v_default := mta.resolve_pipe(NULL);
            END IF;
            PERFORM mta.resolve_pipe(p)
               FROM (SELECT DISTINCT p FROM unnest(p_pipe) AS p WHERE p IS NOT NULL) s;
            PERFORM mta.check_vmta(v)
               FROM (SELECT DISTINCT v FROM unnest(p_vmta) AS v WHERE v <> '') s;
            IF v_has_job THEN
                PERFORM mta.check_job_id(j)
                   FROM (SELECT DISTINCT j FROM unnest(p_job_id) AS j WHERE j IS NOT NULL) s;
            END IF;
            PERFORM mta.check_envid(e)
               FROM (SELECT DISTINCT e FROM unnest(p_envid) AS e WHERE e IS NOT NULL) s;
        EXCEPTION WHEN OTHERS THEN
            v_ok := false;
        END;
    END IF;

    IF v_ok THEN
        IF v_has_job THEN
            INSERT INTO mta.job (job_id)
                SELECT DISTINCT j FROM unnest(p_job_id) AS j WHERE j IS NOT NULL ORDER BY 1
                ON CONFLICT DO NOTHING;
        END IF;
        -- Suppressed recipients: their 'b' rows now, and left out below. A
        -- message with no recipient left is not stored; its row has no id
        -- and no error.
        v_sup := mta.suppress_rcpts(p_rcpt_to[1:v_total], v_rdom, v_rmsg, p_mail_from, p_job_id,
                                    p_vmta, p_envid,
                                    ARRAY(SELECT coalesce(p, v_default)
                                            FROM unnest(p_pipe) WITH ORDINALITY AS u(p, i)
                                           ORDER BY i),
                                    v_sizes);
        IF v_sup IS NOT NULL THEN
            -- joins, not "= ANY (v_sup)": both lists may be long
            v_rmsg := ARRAY(SELECT CASE WHEN s.k IS NULL THEN r.m END
                              FROM unnest(v_rmsg) WITH ORDINALITY AS r(m, k)
                              LEFT JOIN unnest(v_sup) AS s(k) ON s.k = r.k
                             ORDER BY r.k);
            v_kept := ARRAY(SELECT c.m IS NOT NULL
                              FROM generate_series(1, n) AS g
                              LEFT JOIN (SELECT DISTINCT m FROM unnest(v_rmsg) AS m) c ON c.m = g
                             ORDER BY g);
        END IF;
        INSERT INTO mta.queue (pipe, domain, vmta)
            SELECT DISTINCT coalesce(p_pipe[r.m], v_default), r.d, coalesce(p_vmta[r.m], '')
              FROM unnest(v_rmsg, v_rdom) AS r(m, d)
             WHERE r.m IS NOT NULL
             ORDER BY 1, 2, 3
            ON CONFLICT DO NOTHING;
        -- Ids are taken first, so that the recipients and 'r' rows can name
        -- their message and the 'r' rows their recipient without reading
        -- back what was inserted.
        v_ids := ARRAY(SELECT nextval('mta.messages_id_seq') FROM generate_series(1, n));
        v_rids := ARRAY(SELECT nextval('mta.recipients_id_seq') FROM generate_series(1, v_total));
        INSERT INTO mta.messages (id, mail_from, content, size, job_id, envid, vmta, pipe,
                                  priority, message_id_header, dsn_ret)
            SELECT v_ids[u.i], u.mail_from, u.content, octet_length(u.content), u.job_id,
                   u.envid, nullif(u.vmta, ''), coalesce(u.pipe, v_default), 0,
                   mta.header_message_id(u.content), p_ret[u.i]
              FROM unnest(p_mail_from, p_content, p_job_id, p_vmta, p_envid, p_pipe)
                   WITH ORDINALITY AS u(mail_from, content, job_id, vmta, envid, pipe, i)
             WHERE v_kept IS NULL OR v_kept[u.i]
             ORDER BY u.i;
        INSERT INTO mta.recipients (id, message_id, rcpt, domain, vmta, pipe, job_id,
                                    next_attempt, queued_at, dsn_notify, dsn_orcpt)
            SELECT v_rids[u.k], v_ids[u.m], u.rcpt, u.d, coalesce(p_vmta[u.m], ''),
                   coalesce(p_pipe[u.m], v_default), p_job_id[u.m], now(), now(),
                   p_notify[u.k], p_orcpt[u.k]
              FROM unnest(p_rcpt_to, v_rmsg, v_rdom) WITH ORDINALITY AS u(rcpt, m, d, k)
             WHERE u.m IS NOT NULL
             ORDER BY u.k;
        IF v_acct THEN
            INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, vmta, job_id,
                                  envid, queue, pipe, message_id, rcpt_id, dlv_size)
                SELECT 'r', now(), now(), p_mail_from[u.m], u.rcpt, nullif(p_vmta[u.m], ''),
                       p_job_id[u.m], p_envid[u.m], mta.queue_name(u.d, coalesce(p_vmta[u.m], '')),
                       coalesce(p_pipe[u.m], v_default), v_ids[u.m], v_rids[u.k], v_sizes[u.m]
                  FROM unnest(p_rcpt_to, v_rmsg, v_rdom) WITH ORDINALITY AS u(rcpt, m, d, k)
                 WHERE u.m IS NOT NULL
                 ORDER BY u.k;
        END IF;
        RETURN QUERY SELECT u.i::int, CASE WHEN v_kept IS NULL OR v_kept[u.i] THEN u.id END,
                            NULL::text, NULL::text
                       FROM unnest(v_ids) WITH ORDINALITY AS u(id, i)
                      ORDER BY u.i;
        RETURN;
    END IF;

    FOR i IN 1 .. n LOOP
        v_cnt := p_rcpt_count[i];
        ord := i;
        BEGIN
            id := mta.enqueue_bytes(p_mail_from[i], p_rcpt_to[v_off + 1 : v_off + v_cnt],
                                    p_content[i], p_job_id[i], p_vmta[i], p_pipe[i],
                                    p_envid[i], 0, now());
            IF id IS NOT NULL AND (p_ret[i] IS NOT NULL OR p_notify IS NOT NULL
                                   OR p_orcpt IS NOT NULL) THEN
                PERFORM mta.enqueue_dsn_options(id, p_ret[i],
                                                p_rcpt_to[v_off + 1 : v_off + v_cnt],
                                                p_notify[v_off + 1 : v_off + v_cnt],
                                                p_orcpt[v_off + 1 : v_off + v_cnt]);
            END IF;
            err_state := NULL;
            err_text := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
            id := NULL;
            err_state := v_state;
            err_text := v_msg;
        END;
        v_off := v_off + v_cnt;
        RETURN NEXT;
    END LOOP;
END
$$;
