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
-- boundary.
--
-- The row lock of the bucket is the critical section: it is held from
-- mta.bucket_refill to the end of the caller's statement (its implicit
-- transaction, one round trip). Time is clock_timestamp() after the lock is
-- taken, so a caller that waited for the lock does not refill from a stale
-- now().

-- Lock order. A statement that takes several buckets (mta.claim_many_rated,
-- mta.release_refund) locks them in one order, (domain, vmta, kind), before
-- it reads or spends any: two statements that need the same buckets, e.g.
-- the source IP's bucket "ip:ADDR" of two queues claimed by two nodes in
-- opposite orders, then wait for each other in turn instead of deadlocking.

-- Locks the bucket for the rest of the transaction, creating it full if it
-- is missing; reads and changes nothing else (mta.bucket_refill does).
-- p_what names the caller in the error for invalid arguments.
DROP FUNCTION IF EXISTS mta.bucket_lock(text, text, text, int, int);
CREATE OR REPLACE FUNCTION mta.bucket_lock(p_domain text, p_vmta text, p_kind text,
                                           p_limit int, p_period_ms int,
                                           p_what text DEFAULT 'bucket_lock')
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_vmta text := coalesce(p_vmta, '');
BEGIN
    IF p_domain IS NULL OR p_kind IS NULL OR p_kind NOT IN ('msg', 'connect')
       OR p_limit IS NULL OR p_limit < 1 OR p_period_ms IS NULL OR p_period_ms < 1 THEN
        RAISE EXCEPTION '%: invalid arguments (domain %, kind %, limit %, period_ms %)',
            p_what, p_domain, p_kind, p_limit, p_period_ms
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM 1 FROM mta.rate_bucket b
      WHERE b.domain = p_domain AND b.vmta = v_vmta AND b.kind = p_kind
        FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO mta.rate_bucket AS b (domain, vmta, kind, tokens, refilled_at)
        VALUES (p_domain, v_vmta, p_kind,
                greatest(1.0, p_limit::float8 * least(p_period_ms, 1000) / p_period_ms),
                clock_timestamp())
        ON CONFLICT DO NOTHING;
        PERFORM 1 FROM mta.rate_bucket b
          WHERE b.domain = p_domain AND b.vmta = v_vmta AND b.kind = p_kind
            FOR UPDATE;
    END IF;
END
$$;

-- Locks the bucket (created full if missing), refills it up to now within
-- its cap, stores that and returns the whole-and-fractional tokens it holds
-- and its rate in tokens per millisecond. The caller spends with
-- mta.bucket_spend in the same transaction.
CREATE OR REPLACE FUNCTION mta.bucket_refill(p_domain text, p_vmta text, p_kind text,
                                             p_limit int, p_period_ms int,
                                             OUT tokens float8, OUT rate float8)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_vmta text := coalesce(p_vmta, '');
    v_cap float8;
    v_at timestamptz;
    v_now timestamptz;
BEGIN
    PERFORM mta.bucket_lock(p_domain, p_vmta, p_kind, p_limit, p_period_ms, 'take_tokens');
    rate := p_limit::float8 / p_period_ms;
    v_cap := greatest(1.0, p_limit::float8 * least(p_period_ms, 1000) / p_period_ms);
    SELECT b.tokens, b.refilled_at INTO tokens, v_at
      FROM mta.rate_bucket b
     WHERE b.domain = p_domain AND b.vmta = v_vmta AND b.kind = p_kind;

    v_now := clock_timestamp();
    IF v_now > v_at THEN
        tokens := tokens + extract(epoch FROM v_now - v_at) * 1000.0 * rate;
        v_at := v_now;
    END IF;
    -- The cap also applies after a limit was lowered (e.g. backoff mode).
    tokens := least(tokens, v_cap);
    UPDATE mta.rate_bucket b SET tokens = bucket_refill.tokens, refilled_at = v_at
     WHERE b.domain = p_domain AND b.vmta = v_vmta AND b.kind = p_kind;
END
$$;

-- Takes (p_n > 0) or gives back (p_n < 0) tokens of a bucket. A refund may
-- fill it over its cap: the next mta.bucket_refill caps it again.
CREATE OR REPLACE FUNCTION mta.bucket_spend(p_domain text, p_vmta text, p_kind text, p_n int)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE mta.rate_bucket b SET tokens = b.tokens - p_n
     WHERE p_n <> 0 AND b.domain = p_domain AND b.vmta = coalesce(p_vmta, '') AND b.kind = p_kind
$$;

-- When a bucket holding p_tokens (less than one) has its next token due.
CREATE OR REPLACE FUNCTION mta.bucket_wait_ms(p_tokens float8, p_rate float8, p_period_ms int)
RETURNS int LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT least(greatest(1, ceil((1.0 - p_tokens) / p_rate)), p_period_ms)::int
$$;

-- Grants min(p_want, whole tokens available); when that is 0, wait_ms tells
-- when the next token is due.
CREATE OR REPLACE FUNCTION mta.take_tokens(p_domain text, p_vmta text, p_kind text, p_limit int,
                                           p_period_ms int, p_want int)
RETURNS TABLE (granted int, wait_ms int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_tokens float8;
    v_rate float8;
BEGIN
    IF p_want IS NULL OR p_want < 1 THEN
        RAISE EXCEPTION 'take_tokens: invalid arguments (want %)', p_want
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT b.tokens, b.rate INTO v_tokens, v_rate
      FROM mta.bucket_refill(p_domain, p_vmta, p_kind, p_limit, p_period_ms) b;
    granted := least(p_want::float8, floor(v_tokens))::int;
    PERFORM mta.bucket_spend(p_domain, p_vmta, p_kind, granted);
    wait_ms := CASE WHEN granted > 0 THEN 0
                    ELSE mta.bucket_wait_ms(v_tokens, v_rate, p_period_ms) END;
    RETURN NEXT;
END
$$;

-- Contract (node): mta.claim_many with the rate tokens of each queue taken
-- in the same statement, so that a rate-limited queue's new connection costs
-- one round trip (beside its slot) and tokens are spent only for messages
-- claimed. Queue i is claimed as in mta.claim_many (p_limits[i] rows at
-- most) for at most p_want[i] messages, and at most as many as its bucket
-- (p_keys[i], p_key_vmtas[i], 'msg') has whole tokens, when p_msg_limits[i]
-- (per p_msg_periods[i] ms) is not NULL; when p_conn_limits[i] is not NULL
-- it also needs one connect token (p_conn_limits[i] per p_conn_periods[i]
-- ms). When p_ip_keys[i] and p_ip_msg_limits[i] are not NULL, the messages
-- are also within the whole tokens of the source IP's bucket (p_ip_keys[i]
-- = 'ip:ADDR', vmta '', 'msg'; p_ip_msg_limits[i] per p_ip_msg_periods[i]
-- ms: source-ip-max-msg-rate), shared by every queue sent from that IP: the
-- queue takes min(its tokens, the IP's). The key is what the limit applies
-- to (see sched.h: the mx-rollup or the pool member); the buckets are those
-- of mta.take_tokens, so every caller of either shares the same limits. One
-- message token (of each message bucket) is spent per message claimed and
-- one connect token when anything was claimed. A queue's rows carry tokens,
-- the messages it was granted (the claim brought at most that many), and
-- wait_ms 0. A queue that claimed nothing spends nothing and comes back as
-- one row with rcpt_id NULL: wait_ms is then when its next token is due (of
-- the bucket that had none; 0: no ready rows). Queues of one call with the
-- same key share its tokens: a later one sees what the earlier ones reserved
-- as taken, their unused rest returns at the end of the call. Every bucket
-- of the call is locked first, in the lock order (see mta.bucket_lock).
DROP FUNCTION IF EXISTS mta.claim_many_rated(bigint, text, text[], text[], int[], int, bigint[],
                                             int[], text[], text[], int[], int[], int[], int[]);
DROP FUNCTION IF EXISTS mta.claim_many_rated(bigint, text, text[], text[], int[], int, bigint[],
                                             int[], text[], text[], int[], int[], int[], int[],
                                             text[], int[], int[]);
CREATE FUNCTION mta.claim_many_rated(p_node bigint, p_pipe text, p_domains text[],
                                     p_vmtas text[], p_limits int[], p_lease_ms int,
                                     p_max_bytes bigint[], p_want int[], p_keys text[],
                                     p_key_vmtas text[], p_msg_limits int[],
                                     p_msg_periods int[], p_conn_limits int[],
                                     p_conn_periods int[], p_ip_keys text[] DEFAULT NULL,
                                     p_ip_msg_limits int[] DEFAULT NULL,
                                     p_ip_msg_periods int[] DEFAULT NULL)
RETURNS TABLE (q int, rcpt_id bigint, lease_token bigint, message_id bigint, mail_from text,
               rcpt text, content bytea, attempt int, envid text, job_id text,
               queued_at timestamptz, content_first bool, message_missing bool,
               lease_until timestamptz, lease_left_ms int, capped bool, tokens int,
               wait_ms int, dsn_notify smallint, dsn_orcpt text, dsn_ret text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int := coalesce(cardinality(p_domains), 0);
    v_ip boolean[];
    v_grant int[];
    v_wait int[];
    v_got int[];
    v_tokens float8;
    v_rate float8;
    v_last bigint;
    v_q int := 0;
    r record;
BEGIN
    IF coalesce(cardinality(p_want), 0) <> n OR coalesce(cardinality(p_keys), 0) <> n
       OR coalesce(cardinality(p_key_vmtas), 0) <> n
       OR coalesce(cardinality(p_msg_limits), 0) <> n
       OR coalesce(cardinality(p_msg_periods), 0) <> n
       OR coalesce(cardinality(p_conn_limits), 0) <> n
       OR coalesce(cardinality(p_conn_periods), 0) <> n
       OR (p_ip_keys IS NOT NULL AND (cardinality(p_ip_keys) <> n
           OR coalesce(cardinality(p_ip_msg_limits), 0) <> n
           OR coalesce(cardinality(p_ip_msg_periods), 0) <> n)) THEN
        RAISE EXCEPTION 'claim_many_rated: the arrays differ in length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. n LOOP
        v_ip[i] := p_ip_keys IS NOT NULL AND p_ip_keys[i] IS NOT NULL
                   AND p_ip_msg_limits[i] IS NOT NULL;
    END LOOP;
    -- Every bucket this call may touch, locked in the lock order before any
    -- is read: the IP's bucket is shared by queues of many calls.
    FOR r IN
        SELECT DISTINCT ON (k.d, k.v, k.kind) k.d, k.v, k.kind, k.lim, k.per
          FROM (SELECT p_keys[i] AS d, coalesce(p_key_vmtas[i], '') AS v, 'connect' AS kind,
                       p_conn_limits[i] AS lim, p_conn_periods[i] AS per
                  FROM generate_series(1, n) i
                 WHERE p_want[i] > 0 AND p_conn_limits[i] IS NOT NULL
                UNION ALL
                SELECT p_keys[i], coalesce(p_key_vmtas[i], ''), 'msg', p_msg_limits[i],
                       p_msg_periods[i]
                  FROM generate_series(1, n) i
                 WHERE p_want[i] > 0 AND p_msg_limits[i] IS NOT NULL
                UNION ALL
                SELECT p_ip_keys[i], '', 'msg', p_ip_msg_limits[i], p_ip_msg_periods[i]
                  FROM generate_series(1, n) i
                 WHERE p_want[i] > 0 AND v_ip[i]) k
         ORDER BY k.d, k.v, k.kind
    LOOP
        PERFORM mta.bucket_lock(r.d, r.v, r.kind, r.lim, r.per);
    END LOOP;
    -- Tokens first, each bucket locked until the end of the statement: what
    -- a queue may take is reserved now and what it did not claim given back
    -- below, so two queues of one call with the same key share its tokens.
    FOR i IN 1 .. n LOOP
        v_grant[i] := greatest(coalesce(p_want[i], 0), 0);
        v_wait[i] := 0;
        v_got[i] := 0;
        IF v_grant[i] > 0 AND p_conn_limits[i] IS NOT NULL THEN
            SELECT b.tokens, b.rate INTO v_tokens, v_rate
              FROM mta.bucket_refill(p_keys[i], p_key_vmtas[i], 'connect', p_conn_limits[i],
                                     p_conn_periods[i]) b;
            IF v_tokens < 1 THEN
                v_grant[i] := 0;
                v_wait[i] := mta.bucket_wait_ms(v_tokens, v_rate, p_conn_periods[i]);
            END IF;
        END IF;
        IF v_grant[i] > 0 AND p_msg_limits[i] IS NOT NULL THEN
            SELECT b.tokens, b.rate INTO v_tokens, v_rate
              FROM mta.bucket_refill(p_keys[i], p_key_vmtas[i], 'msg', p_msg_limits[i],
                                     p_msg_periods[i]) b;
            v_grant[i] := least(v_grant[i]::float8, floor(v_tokens))::int;
            IF v_grant[i] = 0 THEN
                v_wait[i] := mta.bucket_wait_ms(v_tokens, v_rate, p_msg_periods[i]);
            END IF;
        END IF;
        IF v_grant[i] > 0 AND v_ip[i] THEN
            SELECT b.tokens, b.rate INTO v_tokens, v_rate
              FROM mta.bucket_refill(p_ip_keys[i], '', 'msg', p_ip_msg_limits[i],
                                     p_ip_msg_periods[i]) b;
            v_grant[i] := least(v_grant[i]::float8, floor(v_tokens))::int;
            IF v_grant[i] = 0 THEN
                v_wait[i] := mta.bucket_wait_ms(v_tokens, v_rate, p_ip_msg_periods[i]);
            END IF;
        END IF;
        IF v_grant[i] > 0 THEN
            IF p_msg_limits[i] IS NOT NULL THEN
                PERFORM mta.bucket_spend(p_keys[i], p_key_vmtas[i], 'msg', v_grant[i]);
            END IF;
            IF v_ip[i] THEN
                PERFORM mta.bucket_spend(p_ip_keys[i], '', 'msg', v_grant[i]);
            END IF;
            IF p_conn_limits[i] IS NOT NULL THEN
                PERFORM mta.bucket_spend(p_keys[i], p_key_vmtas[i], 'connect', 1);
            END IF;
        END IF;
    END LOOP;

    FOR r IN SELECT c.* FROM mta.claim_many(p_node, p_pipe, p_domains, p_vmtas, p_limits,
                                            p_lease_ms, p_max_bytes, v_grant) c LOOP
        -- Rows come by queue, then message: count the messages.
        IF r.q <> v_q THEN
            v_q := r.q;
            v_last := NULL;
        END IF;
        IF r.message_id IS DISTINCT FROM v_last THEN
            v_got[r.q] := v_got[r.q] + 1;
            v_last := r.message_id;
        END IF;
        q := r.q; rcpt_id := r.rcpt_id; lease_token := r.lease_token;
        message_id := r.message_id; mail_from := r.mail_from; rcpt := r.rcpt;
        content := r.content; attempt := r.attempt; envid := r.envid; job_id := r.job_id;
        queued_at := r.queued_at; content_first := r.content_first;
        message_missing := r.message_missing; lease_until := r.lease_until;
        lease_left_ms := r.lease_left_ms; capped := r.capped; tokens := v_grant[r.q];
        wait_ms := 0; dsn_notify := r.dsn_notify; dsn_orcpt := r.dsn_orcpt;
        dsn_ret := r.dsn_ret;
        RETURN NEXT;
    END LOOP;

    FOR i IN 1 .. n LOOP
        IF v_got[i] < v_grant[i] THEN
            IF p_msg_limits[i] IS NOT NULL THEN
                PERFORM mta.bucket_spend(p_keys[i], p_key_vmtas[i], 'msg', v_got[i] - v_grant[i]);
            END IF;
            IF v_ip[i] THEN
                PERFORM mta.bucket_spend(p_ip_keys[i], '', 'msg', v_got[i] - v_grant[i]);
            END IF;
            IF v_got[i] = 0 AND p_conn_limits[i] IS NOT NULL THEN
                PERFORM mta.bucket_spend(p_keys[i], p_key_vmtas[i], 'connect', -1);
            END IF;
        END IF;
        IF v_got[i] = 0 THEN
            q := i; rcpt_id := NULL; lease_token := NULL; message_id := NULL;
            mail_from := NULL; rcpt := NULL; content := NULL; attempt := NULL; envid := NULL;
            job_id := NULL; queued_at := NULL; content_first := NULL; message_missing := NULL;
            lease_until := NULL; lease_left_ms := NULL; capped := NULL; tokens := 0;
            wait_ms := v_wait[i]; dsn_notify := NULL; dsn_orcpt := NULL; dsn_ret := NULL;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

-- mta.release that also gives back the tokens taken for the released rows
-- (a new connection whose slot was refused after its claim had spent them):
-- p_msgs message and p_connects connect tokens of the key's buckets, and
-- p_msgs message tokens of the source IP's bucket (p_ip_key, vmta '') when
-- it is not NULL. The buckets are locked in the lock order.
DROP FUNCTION IF EXISTS mta.release_refund(bigint, bigint[], bigint[], text, text, int, int);
DROP FUNCTION IF EXISTS mta.release_refund(bigint, bigint[], bigint[], text, text, int, int, text);
CREATE FUNCTION mta.release_refund(p_node bigint, p_rcpt_ids bigint[], p_tokens bigint[],
                                   p_key text, p_key_vmta text, p_msgs int, p_connects int,
                                   p_ip_key text DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT k.d, k.v, k.kind, k.n
          FROM (VALUES (p_key, coalesce(p_key_vmta, ''), 'msg', greatest(coalesce(p_msgs, 0), 0)),
                       (p_key, coalesce(p_key_vmta, ''), 'connect',
                        greatest(coalesce(p_connects, 0), 0)),
                       (p_ip_key, '', 'msg', greatest(coalesce(p_msgs, 0), 0))) k (d, v, kind, n)
         WHERE k.d IS NOT NULL AND k.n > 0
         ORDER BY k.d, k.v, k.kind
    LOOP
        PERFORM mta.bucket_spend(r.d, r.v, r.kind, -r.n);
    END LOOP;
    RETURN mta.release(p_node, p_rcpt_ids, p_tokens);
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
