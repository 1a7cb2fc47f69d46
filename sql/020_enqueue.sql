-- 020_enqueue: mta.enqueue(), the SQL way to submit one message (DESIGN §6).
-- Everything is checked before anything is written; a failing check raises and
-- the caller's transaction stores nothing. The message is accepted once the
-- caller's transaction commits (synchronous_commit stays on).
--
-- Lock order, shared with mta.submit: job row, then queue rows in key order,
-- then new rows. Two enqueues creating the same new job or queue rows
-- therefore wait for each other instead of deadlocking.

-- The accounting "queue" field: domain, or domain/vmta.
CREATE OR REPLACE FUNCTION mta.queue_name(p_domain text, p_vmta text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN coalesce(p_vmta, '') = '' THEN p_domain ELSE p_domain || '/' || p_vmta END
$$;

-- Whether enqueue writes an 'r' (received) accounting row per recipient: the
-- setting mta.acct_received, on unless set to off (per database, role or
-- session: ALTER DATABASE pgmta SET mta.acct_received = off). PowerMTA's
-- accounting file records only deliveries and bounces by default; pgmta keeps
-- 'r' rows by default because the mta.acct contract lists them. See README,
-- From SQL.
CREATE OR REPLACE FUNCTION mta.acct_received() RETURNS bool
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v text := lower(current_setting('mta.acct_received', true));
BEGIN
    IF v IS NULL OR v IN ('', 'on', 'true', 'yes', '1') THEN
        RETURN true;
    END IF;
    IF v IN ('off', 'false', 'no', '0') THEN
        RETURN false;
    END IF;
    RAISE EXCEPTION 'invalid mta.acct_received %: on or off expected', mta.show(v)
        USING ERRCODE = 'invalid_parameter_value';
END
$$;

-- The work of both public overloads (and of the SMTP and HTTP injection
-- paths, which call it once per message). This runs once per injected
-- message, so it is kept to few statements: the checks are plain
-- expressions (no query each), and a message with one recipient, the usual
-- case for SMTP injection, takes a path with single-row statements instead
-- of array expansion and aggregation. Measured per call: 20-30% less
-- PostgreSQL CPU than one query per check (see README, Enqueue cost).
CREATE OR REPLACE FUNCTION mta.enqueue_bytes(p_mail_from text, p_rcpt_to text[], p_content bytea,
                                             p_job_id text, p_vmta text, p_pipe text,
                                             p_envid text, p_priority int,
                                             p_not_before timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_pipe text;
    v_vmta text;
    v_domains text[];
    v_domain text;
    v_rcpt text;
    v_id bigint;
    v_rid bigint;
    v_size int;
    v_n int;
    v_at timestamptz := coalesce(p_not_before, now());
    v_acct bool;
    v_ignore text;
    v_sup int[];
BEGIN
    -- Each check below first tests the common good case in a plain
    -- expression and calls the full check (which raises with the reason)
    -- only when that test fails.
    IF p_mail_from IS NULL
       OR (p_mail_from <> '' AND NOT coalesce(mta.address_plain(p_mail_from), false)) THEN
        v_ignore := mta.check_sender(p_mail_from);
    END IF;
    v_n := cardinality(p_rcpt_to);
    IF v_n IS NULL OR v_n = 0 THEN
        RAISE EXCEPTION 'rcpt_to is empty: at least one recipient is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF array_ndims(p_rcpt_to) > 1 THEN
        RAISE EXCEPTION 'rcpt_to must be a one-dimensional array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_n > 100000 THEN
        RAISE EXCEPTION 'rcpt_to has % recipients: at most 100000 per call',
            v_n USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_n = 1 THEN
        v_rcpt := p_rcpt_to[array_lower(p_rcpt_to, 1)];
        v_domain := mta.address_domain(v_rcpt, 'rcpt_to[1]');
    ELSE
        SELECT array_agg(mta.address_domain(u.r, 'rcpt_to[' || u.i || ']') ORDER BY u.i)
          INTO v_domains
          FROM unnest(p_rcpt_to) WITH ORDINALITY AS u(r, i);
    END IF;
    v_size := octet_length(p_content);
    IF v_size IS NULL OR v_size = 0 OR v_size > 67108864 THEN
        PERFORM mta.check_content(p_content);
    END IF;
    IF p_vmta IS NULL OR p_vmta = '' THEN
        v_vmta := '';
    ELSE
        v_vmta := mta.check_vmta(p_vmta);
    END IF;
    v_pipe := mta.resolve_pipe(p_pipe);
    PERFORM mta.check_job_id(p_job_id), mta.check_envid(p_envid);
    -- 0 (the default) to 100, higher first (README, Priorities).
    p_priority := greatest(0, least(100, coalesce(p_priority, 0)));
    v_acct := mta.acct_received();

    IF p_job_id IS NOT NULL THEN
        INSERT INTO mta.job (job_id) VALUES (p_job_id) ON CONFLICT DO NOTHING;
    END IF;
    -- Suppressed recipients get their 'b' row and are left out; a message
    -- none of whose recipients is left is not stored (NULL is returned).
    -- Their positions in p_rcpt_to are left in the transaction's setting
    -- mta.suppressed (only when there are some: nothing is set otherwise),
    -- where mta.inject_request finds them without a second lookup.
    -- One recipient (SMTP's usual case): a bare index probe first, as
    -- mta.suppress_rcpts costs several times more.
    IF v_n = 1 THEN
        PERFORM 1 FROM mta.suppression_match(v_rcpt, v_domain, p_job_id);
        IF FOUND THEN
            v_sup := mta.suppress_rcpts(ARRAY[v_rcpt], ARRAY[v_domain], NULL,
                                        ARRAY[p_mail_from], ARRAY[p_job_id], ARRAY[v_vmta],
                                        ARRAY[p_envid], ARRAY[v_pipe], ARRAY[v_size]);
        END IF;
        IF v_sup IS NOT NULL THEN
            PERFORM set_config('mta.suppressed', '{1}', true);
            RETURN NULL;
        END IF;
    ELSE
        v_sup := mta.suppress_rcpts(p_rcpt_to, v_domains, NULL, ARRAY[p_mail_from],
                                    ARRAY[p_job_id], ARRAY[v_vmta], ARRAY[p_envid],
                                    ARRAY[v_pipe], ARRAY[v_size]);
        IF v_sup IS NOT NULL THEN
            PERFORM set_config('mta.suppressed', v_sup::text, true);
            IF cardinality(v_sup) = v_n THEN
                RETURN NULL;
            END IF;
            SELECT array_agg(u.r ORDER BY u.i), array_agg(u.d ORDER BY u.i)
              INTO p_rcpt_to, v_domains
              FROM unnest(p_rcpt_to, v_domains) WITH ORDINALITY AS u(r, d, i)
             WHERE NOT EXISTS (SELECT 1 FROM unnest(v_sup) AS s(i) WHERE s.i = u.i);
        END IF;
    END IF;
    IF v_n = 1 THEN
        INSERT INTO mta.queue (pipe, domain, vmta) VALUES (v_pipe, v_domain, v_vmta)
            ON CONFLICT DO NOTHING;
    ELSE
        INSERT INTO mta.queue (pipe, domain, vmta)
            SELECT DISTINCT v_pipe, d, v_vmta FROM unnest(v_domains) AS d ORDER BY 2
            ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO mta.messages (mail_from, content, size, job_id, envid, vmta, pipe, priority,
                              message_id_header)
        VALUES (p_mail_from, p_content, v_size, p_job_id, p_envid, nullif(v_vmta, ''), v_pipe,
                p_priority, mta.header_message_id(p_content))
        RETURNING id INTO v_id;
    IF v_n = 1 THEN
        INSERT INTO mta.recipients (message_id, rcpt, domain, vmta, pipe, job_id, next_attempt,
                                    queued_at, priority)
            VALUES (v_id, v_rcpt, v_domain, v_vmta, v_pipe, p_job_id, v_at, now(), p_priority)
            RETURNING id INTO v_rid;
        IF v_acct THEN
            INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, vmta, job_id, envid,
                                  queue, pipe, message_id, rcpt_id, dlv_size)
                VALUES ('r', now(), now(), p_mail_from, v_rcpt, nullif(v_vmta, ''), p_job_id,
                        p_envid, mta.queue_name(v_domain, v_vmta), v_pipe, v_id, v_rid, v_size);
        END IF;
    ELSIF v_acct THEN
        WITH r AS (
            INSERT INTO mta.recipients (message_id, rcpt, domain, vmta, pipe, job_id,
                                        next_attempt, queued_at, priority)
                SELECT v_id, u.r, u.d, v_vmta, v_pipe, p_job_id, v_at, now(), p_priority
                  FROM unnest(p_rcpt_to, v_domains) WITH ORDINALITY AS u(r, d, i)
                 ORDER BY u.i
            RETURNING id, rcpt, domain
        )
        INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, vmta, job_id, envid,
                              queue, pipe, message_id, rcpt_id, dlv_size)
            SELECT 'r', now(), now(), p_mail_from, r.rcpt, nullif(v_vmta, ''), p_job_id, p_envid,
                   mta.queue_name(r.domain, v_vmta), v_pipe, v_id, r.id, v_size
              FROM r;
    ELSE
        INSERT INTO mta.recipients (message_id, rcpt, domain, vmta, pipe, job_id, next_attempt,
                                    queued_at, priority)
            SELECT v_id, u.r, u.d, v_vmta, v_pipe, p_job_id, v_at, now(), p_priority
              FROM unnest(p_rcpt_to, v_domains) WITH ORDINALITY AS u(r, d, i)
             ORDER BY u.i;
    END IF;
    RETURN v_id;
END
$$;

-- The SQL door: mta.enqueue_bytes, then the count of what it queued and
-- left out in mta.inject_count (migrations/0014_inject_count.sql): one row
-- inserted in the caller's transaction, no lock on a shared row. The SMTP and HTTP paths call
-- mta.enqueue_bytes directly: their nodes count them. A value of
-- mta.suppressed left by an earlier call of the transaction is cleared
-- first, so what is read after the call is this call's.
CREATE OR REPLACE FUNCTION mta.enqueue_counted(p_mail_from text, p_rcpt_to text[],
                                               p_content bytea, p_job_id text, p_vmta text,
                                               p_pipe text, p_envid text, p_priority int,
                                               p_not_before timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
    v_n int := cardinality(p_rcpt_to);
    v_sup int := 0;
BEGIN
    IF current_setting('mta.suppressed', true) <> '' THEN
        PERFORM set_config('mta.suppressed', '', true);
    END IF;
    v_id := mta.enqueue_bytes(p_mail_from, p_rcpt_to, p_content, p_job_id, p_vmta, p_pipe,
                              p_envid, p_priority, p_not_before);
    IF v_id IS NULL THEN
        v_sup := v_n; -- every recipient suppressed
    ELSIF v_n > 1 AND current_setting('mta.suppressed', true) <> '' THEN
        v_sup := cardinality(current_setting('mta.suppressed')::int[]);
    END IF;
    INSERT INTO mta.inject_count (door, recipients, suppressed)
        VALUES ('sql', v_n - v_sup, v_sup);
    RETURN v_id;
END
$$;

-- Folds the committed rows of mta.inject_count into one row per door (the
-- housekeeping of a node calls it): the sum of a door is the same before and
-- after, in any snapshot, because the rows deleted and the row inserted
-- commit together. Rows of transactions still open are invisible and stay;
-- SKIP LOCKED lets two nodes fold at once without waiting for each other
-- (each folds the rows it locked). Returns the number of rows folded.
CREATE OR REPLACE FUNCTION mta.inject_count_compact()
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    WITH gone AS (
        DELETE FROM mta.inject_count c
         WHERE c.ctid = ANY (ARRAY(SELECT x.ctid FROM mta.inject_count x
                                   FOR UPDATE SKIP LOCKED))
        RETURNING c.door, c.recipients, c.suppressed
    ), folded AS (
        INSERT INTO mta.inject_count (door, recipients, suppressed)
            SELECT g.door, sum(g.recipients), sum(g.suppressed) FROM gone g GROUP BY g.door
    )
    SELECT count(*) INTO n FROM gone;
    RETURN n;
END
$$;

-- Contract (DESIGN §6): the two public overloads. SECURITY DEFINER with a
-- fixed search_path, so a role with only EXECUTE (mta_inject) can enqueue
-- without any right on the tables (mta.suppression and mta.inject_count
-- included). NULL when every recipient is suppressed: no message was stored.
CREATE OR REPLACE FUNCTION mta.enqueue(mail_from text, rcpt_to text[], content bytea,
                                       job_id text DEFAULT NULL, vmta text DEFAULT NULL,
                                       pipe text DEFAULT NULL, envid text DEFAULT NULL,
                                       priority int DEFAULT 0,
                                       not_before timestamptz DEFAULT now())
RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT mta.enqueue_counted($1, $2, $3, $4, $5, $6, $7, $8, $9)
$$;

-- Text content is stored as its UTF-8 bytes.
CREATE OR REPLACE FUNCTION mta.enqueue(mail_from text, rcpt_to text[], content text,
                                       job_id text DEFAULT NULL, vmta text DEFAULT NULL,
                                       pipe text DEFAULT NULL, envid text DEFAULT NULL,
                                       priority int DEFAULT 0,
                                       not_before timestamptz DEFAULT now())
RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT mta.enqueue_counted($1, $2, convert_to($3, 'UTF8'), $4, $5, $6, $7, $8, $9)
$$;
