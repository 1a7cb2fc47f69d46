-- 040_node: the functions pgmtad calls (prepared statements, one round trip
-- each): node registration, finding queues with ready work, claiming with a
-- lease, finishing or releasing claimed recipients (DESIGN §4).
--
-- Leases: a claim sets owner, lease_until, a fresh lease_token and moves
-- next_attempt to lease_until, all in one short statement that commits before
-- any network I/O. A node that dies simply lets its leases expire: the rows
-- become ready again by themselves. Every later change of a claimed row
-- (finish, release, set_aside) must present the token (fencing), so a late
-- finish after another node took the row over changes nothing.

CREATE OR REPLACE FUNCTION mta.node_register(p_name text, p_pipe text, p_index int, p_pid int,
                                             p_host text)
RETURNS bigint LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO mta.node (name, pipe, process_index, pid, host)
    VALUES (p_name, p_pipe, p_index, p_pid, p_host)
    RETURNING id
$$;

CREATE OR REPLACE FUNCTION mta.node_heartbeat(p_node bigint)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE mta.node SET heartbeat_at = now() WHERE id = p_node
$$;

-- Marks the node stopped and gives its leases back: the attempt never
-- happened, so attempts is decremented. Returns the number released.
CREATE OR REPLACE FUNCTION mta.node_stop(p_node bigint)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    UPDATE mta.node SET state = 'stopped', stopped_at = now(), heartbeat_at = now()
     WHERE id = p_node;
    UPDATE mta.recipients
       SET next_attempt = now(), owner = NULL, lease_until = NULL, lease_token = NULL,
           attempts = greatest(attempts - 1, 0)
     WHERE owner = p_node;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Adds the node's configured pipes and makes p_default the default pipe
-- (p_default NULL keeps the current default). Pipes are never removed here:
-- other nodes may still use them.
CREATE OR REPLACE FUNCTION mta.register_pipes(p_pipes text[], p_default text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_pipes) p WHERE p IS NULL OR p !~ '^[A-Za-z0-9._-]{1,64}$') THEN
        RAISE EXCEPTION 'invalid pipe name in %', p_pipes
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO mta.pipes (name)
        SELECT DISTINCT p FROM unnest(p_pipes) p ORDER BY 1 ON CONFLICT DO NOTHING;
    IF p_default IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM mta.pipes WHERE name = p_default) THEN
            RAISE EXCEPTION 'default pipe % is not registered', mta.show(p_default)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- Two statements: the unique index allows one default at any moment.
        UPDATE mta.pipes SET is_default = false WHERE is_default AND name <> p_default;
        UPDATE mta.pipes SET is_default = true WHERE name = p_default AND NOT is_default;
    END IF;
END
$$;

-- Queues of the pipe, not paused, with at least one ready recipient of a job
-- that is not paused; the one whose oldest ready recipient waits longest comes
-- first. One index probe per queue row of the pipe (recipients_claim).
-- backoff: the queue is in backoff mode now (mta.queue_enter_backoff); the
-- node then uses the domain's backoff rate and retry interval. The result
-- type changed once (backoff added), hence the DROP; grants follow in
-- 090_roles.
DROP FUNCTION IF EXISTS mta.ready_queues(text, int);
CREATE FUNCTION mta.ready_queues(p_pipe text, p_limit int)
RETURNS TABLE (domain text, vmta text, backoff bool)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT q.domain, q.vmta, coalesce(q.backoff_until > now(), false)
      FROM mta.queue q
     CROSS JOIN LATERAL (
           SELECT r.next_attempt
             FROM mta.recipients r
            WHERE r.pipe = q.pipe AND r.domain = q.domain AND r.vmta = q.vmta
              AND r.next_attempt <= now()
              AND NOT EXISTS (SELECT 1 FROM mta.job j WHERE j.job_id = r.job_id AND j.paused)
            ORDER BY r.next_attempt
            LIMIT 1) f
     WHERE q.pipe = p_pipe AND NOT q.paused
     ORDER BY f.next_attempt
     LIMIT p_limit;
END
$$;

-- Claims up to p_limit ready recipients of one queue for p_lease_ms
-- milliseconds, in one statement. Ordered by message so that the node can
-- send several recipients of one message in one SMTP transaction. vmta NULL
-- or '' = the queue without a virtual MTA.
-- The content of a message is returned once,
-- on its first row (content_first), NULL on the others, so that a message
-- with 100 recipients costs its size once on the wire and in the node.
-- message_missing marks rows whose message row does not exist (the node sets
-- them aside). lease_until is the server's lease deadline and lease_left_ms
-- what is left of it when the rows are returned: the node times its finish
-- retries from that, not from its own clock.
DROP FUNCTION IF EXISTS mta.claim(bigint, text, text, text, int, int);
CREATE FUNCTION mta.claim(p_node bigint, p_pipe text, p_domain text, p_vmta text,
                          p_limit int, p_lease_ms int)
RETURNS TABLE (rcpt_id bigint, lease_token bigint, message_id bigint, mail_from text,
               rcpt text, content bytea, attempt int, envid text, job_id text,
               queued_at timestamptz, content_first bool, message_missing bool,
               lease_until timestamptz, lease_left_ms int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_vmta text := coalesce(p_vmta, '');
    v_until timestamptz := now() + p_lease_ms * interval '1 millisecond';
BEGIN
    IF EXISTS (SELECT 1 FROM mta.queue q
                WHERE q.pipe = p_pipe AND q.domain = p_domain AND q.vmta = v_vmta AND q.paused) THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH c AS (
        -- message_id after next_attempt: the recipients of one message stay
        -- together in one claim (an incremental sort over the claim index).
        SELECT r.id
          FROM mta.recipients r
         WHERE r.pipe = p_pipe AND r.domain = p_domain AND r.vmta = v_vmta
           AND r.next_attempt <= now()
           AND NOT EXISTS (SELECT 1 FROM mta.job j WHERE j.job_id = r.job_id AND j.paused)
         ORDER BY r.next_attempt, r.message_id
         LIMIT p_limit
           FOR UPDATE OF r SKIP LOCKED
    ), u AS (
        UPDATE mta.recipients r
           SET owner = p_node, lease_until = v_until, next_attempt = v_until,
               lease_token = nextval('mta.lease_token_seq'), attempts = r.attempts + 1
          FROM c
         WHERE r.id = c.id
        RETURNING r.id, r.lease_token, r.message_id, r.rcpt, r.attempts, r.job_id, r.queued_at
    ), o AS (
        SELECT u.*, row_number() OVER (PARTITION BY u.message_id ORDER BY u.id) = 1 AS first
          FROM u
    )
    SELECT o.id, o.lease_token, o.message_id, m.mail_from, o.rcpt,
           CASE WHEN o.first THEN m.content END, o.attempts, m.envid, o.job_id, o.queued_at,
           o.first, m.id IS NULL, v_until,
           greatest(0, (extract(epoch FROM v_until - clock_timestamp()) * 1000)::int)
      -- LEFT JOIN: a recipient whose message row is missing comes back with
      -- message_missing, and the node sets it aside instead of leasing it for ever.
      FROM o LEFT JOIN mta.messages m ON m.id = o.message_id
     ORDER BY o.message_id, o.id;
END
$$;

-- Gives leases back untouched: ready at once, the attempt did not count.
CREATE OR REPLACE FUNCTION mta.release(p_node bigint, p_rcpt_ids bigint[], p_tokens bigint[])
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    UPDATE mta.recipients r
       SET next_attempt = now(), owner = NULL, lease_until = NULL, lease_token = NULL,
           attempts = greatest(r.attempts - 1, 0)
      FROM unnest(p_rcpt_ids, p_tokens) AS f(id, token)
     WHERE r.id = f.id AND r.lease_token = f.token;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Moves recipients to mta.quarantine with a reason. The token must match the
-- row's lease; a NULL token matches a row that is not leased (for an
-- administrator setting aside queued rows).
CREATE OR REPLACE FUNCTION mta.set_aside(p_rcpt_ids bigint[], p_tokens bigint[], p_reason text)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    WITH d AS (
        DELETE FROM mta.recipients r
         USING unnest(p_rcpt_ids, p_tokens) AS f(id, token)
         WHERE r.id = f.id AND r.lease_token IS NOT DISTINCT FROM f.token
        RETURNING r.*
    )
    INSERT INTO mta.quarantine (id, message_id, rcpt, domain, vmta, pipe, job_id, next_attempt,
                                attempts, queued_at, owner, lease_until, lease_token,
                                last_error, reason)
        SELECT d.id, d.message_id, d.rcpt, d.domain, d.vmta, d.pipe, d.job_id, d.next_attempt,
               d.attempts, d.queued_at, d.owner, d.lease_until, d.lease_token, d.last_error,
               coalesce(p_reason, 'no reason given')
          FROM d;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
