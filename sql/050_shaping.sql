-- 050_shaping: cluster-wide traffic shaping (DESIGN §4.5, §4.6): connection
-- slots (max-smtp-out), rate tokens (max-msg-rate, max-connect-rate) and the
-- backoff mode of a queue. The view mta.connections is in 080_shaping_views.sql
-- (it must come after the views of 070).
--
-- Connection slots. A node holds one session advisory lock per open SMTP
-- connection, on a dedicated database session (node/sched.c):
--     pg_try_advisory_lock(1347223552 + slot, hashtext(domain || '/' || vmta))
-- 1347223552 = 0x504D0000 is pgmta's lock class; slot < 65536, so the first key
-- stays within 0x504D0000..0x504DFFFF. vmta is '' for the queue without a
-- virtual MTA. pg_locks shows such a lock as locktype 'advisory', objsubid 2,
-- classid = first key, objid = second key (both as oid, i.e. unsigned).
-- PostgreSQL releases the locks when the session ends, so a node that dies
-- frees its slots as soon as its session is gone.
--
-- Two queues whose hashes collide share their slots (the stricter limit wins)
-- and both show the other's connections; with 32-bit hashes this needs tens of
-- thousands of queues to become likely, and it only ever makes shaping stricter.

-- The granted connection-slot locks of this database. queue_key is the second
-- lock key as an unsigned number; compare it with mta.queue_key().
CREATE OR REPLACE VIEW mta.slot_locks AS
SELECT l.objid::bigint AS queue_key,
       (l.classid::bigint - 1347223552)::int AS slot,
       l.pid
  FROM pg_catalog.pg_locks l
 WHERE l.locktype = 'advisory'
   AND l.granted
   AND l.objsubid = 2
   AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                      WHERE d.datname = pg_catalog.current_database())
   AND l.classid::bigint BETWEEN 1347223552 AND 1347223552 + 65535;

-- The second lock key of a queue, unsigned as pg_locks shows it.
CREATE OR REPLACE FUNCTION mta.queue_key(p_domain text, p_vmta text)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT hashtext(p_domain || '/' || coalesce(p_vmta, ''))::bigint & 4294967295
$$;

-- Live SMTP connections of a queue, cluster-wide (all pipes together: a
-- queue's max-smtp-out counts for every pipe).
CREATE OR REPLACE FUNCTION mta.queue_connections(p_domain text, p_vmta text)
RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*)
      FROM mta.slot_locks l
     WHERE l.queue_key = hashtext(p_domain || '/' || coalesce(p_vmta, ''))::bigint & 4294967295
$$;

-- Called by a node's slot session after every (re)connect, so that
-- mta.connections can name the node holding each lock. A backend pid is
-- unique among live sessions only: a row of a dead node that had the same pid
-- is cleared.
CREATE OR REPLACE FUNCTION mta.node_set_lock_pid(p_node bigint)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE mta.node SET lock_pid = NULL
     WHERE lock_pid = pg_backend_pid() AND id <> p_node;
    UPDATE mta.node SET lock_pid = pg_backend_pid(), lock_since = now()
     WHERE id = p_node;
$$;

-- Rate tokens: a token bucket per queue and kind ('msg' or 'connect') that
-- fills at p_limit per p_period_ms and holds at most about one second's worth
-- (at least 1): "600/m" then allows 10 at once and 10 per second after,
-- never 600 at once, and no fixed window can burst twice its rate at a
-- boundary. Grants min(p_want, whole tokens available); when that is 0,
-- wait_ms tells when the next token is due.
--
-- The row lock of the bucket is the critical section: it is held from the
-- SELECT ... FOR UPDATE to the end of this statement's implicit transaction,
-- one round trip. Time is clock_timestamp() after the lock is taken, so a
-- caller that waited for the lock does not refill from a stale now().
CREATE OR REPLACE FUNCTION mta.take_tokens(p_domain text, p_vmta text, p_kind text, p_limit int,
                                           p_period_ms int, p_want int)
RETURNS TABLE (granted int, wait_ms int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_vmta text := coalesce(p_vmta, '');
    v_rate float8;      -- tokens per millisecond
    v_cap float8;
    v_tokens float8;
    v_at timestamptz;
    v_now timestamptz;
    v_grant int;
BEGIN
    IF p_domain IS NULL OR p_kind IS NULL OR p_kind NOT IN ('msg', 'connect')
       OR p_limit IS NULL OR p_limit < 1 OR p_period_ms IS NULL OR p_period_ms < 1
       OR p_want IS NULL OR p_want < 1 THEN
        RAISE EXCEPTION 'take_tokens: invalid arguments (domain %, kind %, limit %, period_ms %, want %)',
            p_domain, p_kind, p_limit, p_period_ms, p_want
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_rate := p_limit::float8 / p_period_ms;
    v_cap := greatest(1.0, p_limit::float8 * least(p_period_ms, 1000) / p_period_ms);

    SELECT b.tokens, b.refilled_at INTO v_tokens, v_at
      FROM mta.rate_bucket b
     WHERE b.domain = p_domain AND b.vmta = v_vmta AND b.kind = p_kind
       FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO mta.rate_bucket AS b (domain, vmta, kind, tokens, refilled_at)
        VALUES (p_domain, v_vmta, p_kind, v_cap, clock_timestamp())
        ON CONFLICT DO NOTHING;
        SELECT b.tokens, b.refilled_at INTO v_tokens, v_at
          FROM mta.rate_bucket b
         WHERE b.domain = p_domain AND b.vmta = v_vmta AND b.kind = p_kind
           FOR UPDATE;
    END IF;

    v_now := clock_timestamp();
    IF v_now > v_at THEN
        v_tokens := v_tokens + extract(epoch FROM v_now - v_at) * 1000.0 * v_rate;
        v_at := v_now;
    END IF;
    -- The cap also applies after a limit was lowered (e.g. backoff mode).
    v_tokens := least(v_tokens, v_cap);
    v_grant := least(p_want::float8, floor(v_tokens))::int;
    v_tokens := v_tokens - v_grant;

    UPDATE mta.rate_bucket b SET tokens = v_tokens, refilled_at = v_at
     WHERE b.domain = p_domain AND b.vmta = v_vmta AND b.kind = p_kind;

    granted := v_grant;
    IF v_grant > 0 THEN
        wait_ms := 0;
    ELSE
        wait_ms := least(greatest(1, ceil((1.0 - v_tokens) / v_rate)), p_period_ms)::int;
    END IF;
    RETURN NEXT;
END
$$;

-- Buckets not used for p_idle (their queue is gone or idle): they would be
-- full again anyway, so deleting them changes nothing. Returns the number
-- deleted.
CREATE OR REPLACE FUNCTION mta.purge_rate_buckets(p_idle interval DEFAULT interval '1 day')
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    DELETE FROM mta.rate_bucket WHERE refilled_at < now() - p_idle;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Backoff mode. A reply matching a smtp-pattern-list entry with mode=backoff
-- puts the queue (every pipe of it) into backoff until p_until (the node
-- passes now() + backoff-to-normal-after); every further matching reply
-- extends it, never shortens it. The queue is in backoff exactly while
-- backoff_until > now(): it returns to normal by itself, nobody has to clear
-- it. The column backoff only records that the queue has been in backoff
-- since the last mta.backoff_expire(). Returns the number of queue rows set.
CREATE OR REPLACE FUNCTION mta.queue_enter_backoff(p_domain text, p_vmta text,
                                                   p_until timestamptz, p_reason text)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    IF p_domain IS NULL OR p_until IS NULL THEN
        RAISE EXCEPTION 'queue_enter_backoff: domain and until are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE mta.queue q
       SET backoff = true,
           backoff_until = CASE WHEN q.backoff_until > p_until THEN q.backoff_until
                                ELSE p_until END,
           last_error = coalesce(p_reason, q.last_error),
           last_error_at = CASE WHEN p_reason IS NULL THEN q.last_error_at ELSE now() END
     WHERE q.domain = p_domain AND q.vmta = coalesce(p_vmta, '');
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Whether the queue is in backoff now, and until when (NULL if it never was).
-- Always one row.
CREATE OR REPLACE FUNCTION mta.queue_backoff_state(p_domain text, p_vmta text)
RETURNS TABLE (backoff bool, backoff_until timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(max(q.backoff_until) > now(), false), max(q.backoff_until)
      FROM mta.queue q
     WHERE q.domain = p_domain AND q.vmta = coalesce(p_vmta, '')
$$;

-- Housekeeping: clears the backoff flag of queues whose backoff ended, so
-- that a plain look at mta.queue.backoff is not misleading. Not needed for
-- correctness. Returns the number of rows cleared.
CREATE OR REPLACE FUNCTION mta.backoff_expire()
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    UPDATE mta.queue SET backoff = false
     WHERE backoff AND (backoff_until IS NULL OR backoff_until <= now());
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
