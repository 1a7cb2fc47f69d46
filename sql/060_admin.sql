-- 060_admin: steering (pause, resume, delete) and housekeeping (purging
-- delivered messages and empty queues, daily accounting partitions).
--
-- Queue arguments: the domain is matched lower-cased; p_vmta NULL means every
-- queue of the domain (all virtual MTAs, all pipes), '' the queue without a
-- virtual MTA, anything else that virtual MTA.

-- Pauses queues: they leave mta.ready_queues() and cannot be claimed. A queue
-- that does not exist yet is created paused (in every pipe), so mail for it
-- waits from the first message on. Returns the number of queue rows paused.
CREATE OR REPLACE FUNCTION mta.pause_queue(p_domain text, p_vmta text DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    PERFORM mta.check_domain(p_domain);
    UPDATE mta.queue SET paused = true
     WHERE domain = lower(p_domain) AND (p_vmta IS NULL OR vmta = p_vmta);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        INSERT INTO mta.queue (pipe, domain, vmta, paused)
            SELECT p.name, lower(p_domain), mta.check_vmta(p_vmta), true
              FROM mta.pipes p ORDER BY 1
            ON CONFLICT (pipe, domain, vmta) DO UPDATE SET paused = true;
        GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    RETURN n;
END
$$;

-- A paused queue's ready marker is cleared by the next mta.ready_queues()
-- that meets it; resuming marks the queue ready again (sql/040_node.sql).
CREATE OR REPLACE FUNCTION mta.resume_queue(p_domain text, p_vmta text DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
    v_pipe text[];
    v_domain text[];
    v_vmta text[];
BEGIN
    WITH u AS (
        UPDATE mta.queue SET paused = false
         WHERE domain = lower(p_domain) AND (p_vmta IS NULL OR vmta = p_vmta) AND paused
        RETURNING pipe, domain, vmta
    )
    SELECT count(*), array_agg(u.pipe), array_agg(u.domain), array_agg(u.vmta)
      INTO n, v_pipe, v_domain, v_vmta
      FROM u;
    PERFORM mta.ready_note(v_pipe, v_domain, v_vmta, NULL);
    RETURN n;
END
$$;

-- Pausing a job changes no marker: a queue whose ready recipients all belong
-- to paused jobs is found without claimable work and cools down like an
-- empty one. Resuming marks every queue holding recipients of the job ready
-- (one scan of mta.recipients: there is no index on job_id).
CREATE OR REPLACE FUNCTION mta.pause_job(p_job text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO mta.job (job_id, paused) VALUES (p_job, true)
    ON CONFLICT (job_id) DO UPDATE SET paused = true
$$;

CREATE OR REPLACE FUNCTION mta.resume_job(p_job text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_pipe text[];
    v_domain text[];
    v_vmta text[];
BEGIN
    UPDATE mta.job SET paused = false WHERE job_id = p_job AND paused;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT array_agg(k.pipe), array_agg(k.domain), array_agg(k.vmta)
      INTO v_pipe, v_domain, v_vmta
      FROM (SELECT DISTINCT r.pipe, r.domain, r.vmta FROM mta.recipients r
             WHERE r.job_id = p_job) k;
    PERFORM mta.ready_note(v_pipe, v_domain, v_vmta, NULL);
END
$$;

-- Deletes recipients (leased ones too: the node's finish then no longer
-- matches its token and records nothing), each with a final 'b' accounting
-- row. Returns the number deleted.
CREATE OR REPLACE FUNCTION mta.delete_recipients_where(p_domain text, p_vmta text, p_job text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    WITH d AS (
        DELETE FROM mta.recipients r
         WHERE (p_domain IS NULL
                OR (r.pipe, r.domain, r.vmta) IN (
                       SELECT q.pipe, q.domain, q.vmta FROM mta.queue q
                        WHERE q.domain = lower(p_domain) AND (p_vmta IS NULL OR q.vmta = p_vmta)))
           AND (p_job IS NULL OR r.job_id = p_job)
        RETURNING r.*
    )
    INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, dsn_action, dsn_status,
                          dsn_diag, bounce_cat, dlv_size, vmta, job_id, envid, queue, pipe,
                          message_id, attempt, rcpt_id)
        SELECT 'b', now(), d.queued_at, m.mail_from, d.rcpt, 'failed', '5.0.0',
               'deleted by administrator', 'other', m.size, nullif(d.vmta, ''), d.job_id,
               m.envid, mta.queue_name(d.domain, d.vmta), d.pipe, d.message_id, d.attempts, d.id
          FROM d JOIN mta.messages m ON m.id = d.message_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION mta.delete_queue(p_domain text, p_vmta text DEFAULT NULL)
RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT mta.delete_recipients_where(coalesce(p_domain, ''), p_vmta, NULL)
$$;

-- Scans the recipients table (there is no index on job_id: it would cost every
-- enqueue and finish for an operation that is rare).
CREATE OR REPLACE FUNCTION mta.delete_job(p_job text)
RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN p_job IS NULL THEN 0
                ELSE mta.delete_recipients_where(NULL, NULL, p_job) END
$$;

-- Deletes up to p_batch messages that no recipient (queued or quarantined)
-- refers to any more, oldest first. Returns the number deleted; call again
-- while it returns p_batch. A message and its recipients are committed
-- together, so a message being enqueued is never seen without its recipients.
CREATE OR REPLACE FUNCTION mta.purge_messages(p_batch int DEFAULT 10000)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    -- A message's metadata rows go with it; only messages with metadata
    -- (meta not NULL) have any, so the others cost no lookup.
    WITH d AS (
        DELETE FROM mta.messages m
         WHERE m.id IN (
               SELECT mm.id FROM mta.messages mm
                WHERE NOT EXISTS (SELECT 1 FROM mta.recipients r WHERE r.message_id = mm.id)
                  AND NOT EXISTS (SELECT 1 FROM mta.quarantine q WHERE q.message_id = mm.id)
                ORDER BY mm.id
                LIMIT p_batch
                  FOR UPDATE SKIP LOCKED)
        RETURNING m.id, m.meta IS NOT NULL AS has_meta
    ), dm AS (
        DELETE FROM mta.recipient_meta rm USING d
         WHERE d.has_meta AND rm.message_id = d.id
    )
    SELECT count(*) INTO n FROM d;
    RETURN n;
END
$$;

-- Deletes queue rows that have no recipients, are not paused and carry no
-- backoff, so mta.ready_queues() does not probe dead queues forever. Enqueue
-- inserts queue rows with ON CONFLICT DO NOTHING, which takes no row lock, so
-- a concurrent enqueue could be about to add recipients to a queue row we
-- delete. The SHARE ROW EXCLUSIVE table lock waits for those enqueues to
-- commit and holds new ones back for the few milliseconds of the delete; if
-- it is not granted within a second (a long bulk load), nothing is purged
-- this time. Returns the number of queue rows deleted, -1 if skipped.
CREATE OR REPLACE FUNCTION mta.purge_queues()
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s' AS $$
DECLARE
    n int;
BEGIN
    BEGIN
        LOCK TABLE mta.queue IN SHARE ROW EXCLUSIVE MODE;
    EXCEPTION WHEN lock_not_available THEN
        RETURN -1;
    END;
    DELETE FROM mta.queue q
     WHERE NOT q.paused AND NOT q.backoff
       AND NOT EXISTS (SELECT 1 FROM mta.recipients r
                        WHERE r.pipe = q.pipe AND r.domain = q.domain AND r.vmta = q.vmta);
    GET DIAGNOSTICS n = ROW_COUNT;
    -- Ready markers of queues without recipients: no enqueue is in flight
    -- (the table lock above), and every other marking path concerns queues
    -- that have recipients. SKIP LOCKED: never wait for a poller.
    DELETE FROM mta.queue_ready m
     WHERE m.ctid = ANY (ARRAY(
           SELECT mm.ctid FROM mta.queue_ready mm
            WHERE NOT EXISTS (SELECT 1 FROM mta.recipients r
                               WHERE r.pipe = mm.pipe AND r.domain = mm.domain
                                 AND r.vmta = mm.vmta)
              FOR UPDATE SKIP LOCKED));
    -- Slot keys of queues that are gone.
    DELETE FROM mta.slot_key k
     WHERE NOT EXISTS (SELECT 1 FROM mta.queue q WHERE q.domain = k.domain AND q.vmta = k.vmta);
    RETURN n;
END
$$;

-- Creates the missing daily (UTC) partitions of mta.acct from yesterday to
-- days_ahead days ahead; returns how many it created. `pgmta migrate` calls
-- it, and nodes call it once a day so that a partition always exists before
-- its day starts. A day whose rows already went to the default partition is
-- skipped (its rows are not moved). Old partitions are dropped by the
-- operator (DROP TABLE mta.acct_YYYYMMDD), never deleted row by row.
CREATE OR REPLACE FUNCTION mta.acct_ensure_partitions(days_ahead int DEFAULT 7)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s' AS $$
DECLARE
    d date;
    v_name text;
    v_from timestamptz;
    v_to timestamptz;
    n int := 0;
BEGIN
    FOR d IN SELECT generate_series((now() AT TIME ZONE 'UTC')::date - 1,
                                    (now() AT TIME ZONE 'UTC')::date + days_ahead,
                                    interval '1 day')::date LOOP
        v_name := 'acct_' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('mta.' || v_name) IS NOT NULL;
        v_from := d::timestamp AT TIME ZONE 'UTC';
        v_to := (d + 1)::timestamp AT TIME ZONE 'UTC';
        CONTINUE WHEN EXISTS (SELECT 1 FROM mta.acct_default a
                               WHERE a.time_logged >= v_from AND a.time_logged < v_to);
        EXECUTE format('CREATE TABLE mta.%I PARTITION OF mta.acct FOR VALUES FROM (%L) TO (%L)',
                       v_name, v_from, v_to);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
