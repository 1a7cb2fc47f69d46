-- 026_inject: mta.inject_batch(), the one statement behind the HTTP injection
-- API (POST /api/inject/v1, see README "Over HTTP"): every message of one
-- request is enqueued with mta.enqueue_bytes in the caller's single
-- transaction, so a request is stored whole or not at all.
--
-- p_contents[i] is message i; p_rcpts holds the recipients of all messages
-- in message order and p_rcpt_msg[k] the (1-based) message of p_rcpts[k],
-- non-decreasing. Returns the message ids in message order.
--
-- Metadata (see migrations/0006_recipient_meta.sql): p_meta is the request's
-- JSON object, p_rcpt_meta[k] the object of p_rcpts[k] (NULL: none; the whole
-- array NULL: no recipient has any). Both NULL: the request is stored exactly
-- as without metadata, nothing else is written.
--
-- A refusal by enqueue_bytes is raised again with its SQLSTATE and text and
-- DETAIL 'message N' (N: the message it concerns), so the caller can name
-- the recipient at fault. One exception block for the whole loop: one
-- subtransaction per call, not per message.
--
-- mta.inject_request also returns the positions in p_rcpts (1-based) of the
-- recipients that were suppressed (NULL: none); a message whose every
-- recipient is suppressed has a NULL id. mta.inject_batch returns only the
-- ids.
CREATE OR REPLACE FUNCTION mta.inject_request(p_mail_from text, p_contents bytea[],
                                              p_rcpts text[], p_rcpt_msg int[], p_job_id text,
                                              p_vmta text, p_pipe text, p_envid text,
                                              p_meta jsonb, p_rcpt_meta text[],
                                              OUT ids bigint[], OUT suppressed int[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- local copies: plpgsql keeps them expanded, so subscripts are O(1)
    v_contents bytea[] := p_contents;
    v_msg int[] := p_rcpt_msg;
    v_rcpts text[] := p_rcpts;
    v_n int := coalesce(cardinality(p_contents), 0);
    v_nr int := coalesce(cardinality(p_rcpts), 0);
    v_ids bigint[] := '{}';
    v_list text[] := '{}';
    v_cur int := 1;
    v_s text;
    v_state text;
    v_text text;
    v_detail text;
    v_with_meta bool := p_meta IS NOT NULL OR p_rcpt_meta IS NOT NULL;
    v_acct bool;
    v_acct_setting text;
BEGIN
    IF v_n = 0 THEN
        RAISE EXCEPTION 'no message to inject' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(cardinality(p_rcpts), 0) <> coalesce(cardinality(p_rcpt_msg), 0)
       OR array_ndims(p_rcpts) > 1 OR array_ndims(p_rcpt_msg) > 1
       OR array_ndims(p_contents) > 1 THEN
        RAISE EXCEPTION 'p_rcpts and p_rcpt_msg must be one-dimensional and of equal length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_with_meta THEN
        IF p_meta IS NOT NULL AND jsonb_typeof(p_meta) <> 'object' THEN
            RAISE EXCEPTION 'metadata: an object expected' USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF p_rcpt_meta IS NOT NULL AND (array_ndims(p_rcpt_meta) > 1
               OR cardinality(p_rcpt_meta) <> coalesce(cardinality(p_rcpts), 0)) THEN
            RAISE EXCEPTION 'p_rcpt_meta must be one-dimensional and as long as p_rcpts'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- The 'r' rows are written below, with the metadata: enqueue_bytes
        -- writes none for this transaction's calls (restored after them).
        v_acct := mta.acct_received();
        IF v_acct THEN
            v_acct_setting := current_setting('mta.acct_received', true);
            PERFORM set_config('mta.acct_received', 'off', true);
        END IF;
    END IF;
    IF current_setting('mta.suppressed', true) <> '' THEN
        PERFORM set_config('mta.suppressed', '', true);
    END IF;
    BEGIN
        -- v_k = v_nr + 1 enqueues the last message.
        FOR v_k IN 1 .. v_nr + 1 LOOP
            IF v_k > v_nr OR v_msg[v_k] IS DISTINCT FROM v_cur THEN
                IF v_k <= v_nr AND (v_msg[v_k] IS NULL OR v_msg[v_k] <> v_cur + 1 OR v_k = 1) THEN
                    RAISE EXCEPTION 'p_rcpt_msg[%] = %: messages must follow each other from 1',
                        v_k, v_msg[v_k] USING ERRCODE = 'invalid_parameter_value';
                END IF;
                v_ids := v_ids || mta.enqueue_bytes(p_mail_from, v_list, v_contents[v_cur],
                                                    p_job_id, p_vmta, p_pipe, p_envid, 0, NULL);
                -- positions in v_list, which ends just before v_k
                v_s := current_setting('mta.suppressed', true);
                IF v_s <> '' THEN
                    suppressed := coalesce(suppressed, '{}')
                                  || ARRAY(SELECT v_k - cardinality(v_list) + x - 1
                                             FROM unnest(v_s::int[]) AS x);
                    PERFORM set_config('mta.suppressed', '', true);
                END IF;
                EXIT WHEN v_k > v_nr;
                v_cur := v_cur + 1;
                v_list := '{}';
            END IF;
            v_list := v_list || v_rcpts[v_k];
        END LOOP;
        IF v_cur <> v_n THEN
            RAISE EXCEPTION '% messages but recipients for %', v_n, v_cur
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF v_with_meta THEN
            v_cur := 0; -- a refusal from here on concerns no single message
            PERFORM mta.inject_meta(v_ids, p_rcpts, p_rcpt_msg, p_meta, p_rcpt_meta, v_acct);
            IF v_acct THEN
                PERFORM set_config('mta.acct_received', coalesce(v_acct_setting, ''), true);
            END IF;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT,
                                v_detail = PG_EXCEPTION_DETAIL;
        RAISE EXCEPTION USING ERRCODE = v_state, MESSAGE = v_text,
            DETAIL = CASE WHEN v_cur > 0 THEN 'message ' || v_cur || coalesce(': ' || nullif(v_detail, ''), '')
                          ELSE v_detail END;
    END;
    ids := v_ids;
END
$$;

CREATE OR REPLACE FUNCTION mta.inject_batch(p_mail_from text, p_contents bytea[], p_rcpts text[],
                                            p_rcpt_msg int[], p_job_id text, p_vmta text,
                                            p_pipe text, p_envid text, p_meta jsonb,
                                            p_rcpt_meta text[])
RETURNS bigint[] LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.ids FROM mta.inject_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) r
$$;

-- The metadata of the messages p_ids just enqueued (arguments as for
-- mta.inject_batch): the request's object on each message ('{}' when only
-- recipients have metadata), one mta.recipient_meta row per recipient with
-- its own, and the 'r' rows (p_acct) with the merged metadata, as
-- mta.enqueue_bytes writes them otherwise. A recipient row is matched to
-- its request entry by message, address and rank among equal addresses, so
-- a recipient that enqueue did not queue shifts no one else's metadata.
CREATE OR REPLACE FUNCTION mta.inject_meta(p_ids bigint[], p_rcpts text[], p_rcpt_msg int[],
                                           p_meta jsonb, p_rcpt_meta text[], p_acct bool)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE mta.messages m SET meta = coalesce(p_meta, '{}') WHERE m.id = ANY (p_ids);
    IF p_rcpt_meta IS NOT NULL THEN
        INSERT INTO mta.recipient_meta (message_id, rcpt_id, meta)
            SELECT r.message_id, r.id, u.meta
              FROM (SELECT p_ids[x.msg] AS message_id, x.rcpt, x.meta::jsonb AS meta,
                           row_number() OVER (PARTITION BY x.msg, x.rcpt ORDER BY x.k) AS rank
                      FROM unnest(p_rcpt_msg, p_rcpts, p_rcpt_meta) WITH ORDINALITY
                           AS x(msg, rcpt, meta, k)) u
              JOIN (SELECT rr.message_id, rr.id, rr.rcpt,
                           row_number() OVER (PARTITION BY rr.message_id, rr.rcpt
                                              ORDER BY rr.id) AS rank
                      FROM mta.recipients rr WHERE rr.message_id = ANY (p_ids)) r
                ON r.message_id = u.message_id AND r.rcpt = u.rcpt AND r.rank = u.rank
             WHERE u.meta IS NOT NULL AND u.meta <> '{}'
             ORDER BY 1, 2;
    END IF;
    IF p_acct THEN
        INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, vmta, job_id, envid,
                              queue, pipe, message_id, rcpt_id, dlv_size, meta)
            SELECT 'r', now(), now(), m.mail_from, r.rcpt, nullif(r.vmta, ''), r.job_id, m.envid,
                   mta.queue_name(r.domain, r.vmta), r.pipe, r.message_id, r.id, m.size,
                   m.meta || coalesce(rm.meta, '{}')
              FROM mta.recipients r
              JOIN mta.messages m ON m.id = r.message_id
              LEFT JOIN mta.recipient_meta rm ON rm.message_id = r.message_id AND rm.rcpt_id = r.id
             WHERE r.message_id = ANY (p_ids)
             ORDER BY r.id;
    END IF;
END
$$;

-- The call without metadata, as before it existed (nodes not yet upgraded).
CREATE OR REPLACE FUNCTION mta.inject_batch(p_mail_from text, p_contents bytea[], p_rcpts text[],
                                            p_rcpt_msg int[], p_job_id text, p_vmta text,
                                            p_pipe text, p_envid text)
RETURNS bigint[] LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT mta.inject_batch($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)
$$;

