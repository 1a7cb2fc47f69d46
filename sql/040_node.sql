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
    v_pipe text[];
    v_domain text[];
    v_vmta text[];
BEGIN
    UPDATE mta.node SET state = 'stopped', stopped_at = now(), heartbeat_at = now()
     WHERE id = p_node;
    WITH u AS (
        UPDATE mta.recipients
           SET next_attempt = now(), owner = NULL, lease_until = NULL, lease_token = NULL,
               attempts = greatest(attempts - 1, 0)
         WHERE owner = p_node
        RETURNING pipe, domain, vmta
    ), k AS (
        SELECT DISTINCT u.pipe, u.domain, u.vmta FROM u
    )
    SELECT (SELECT count(*) FROM u), array_agg(k.pipe), array_agg(k.domain), array_agg(k.vmta)
      INTO n, v_pipe, v_domain, v_vmta
      FROM k;
    PERFORM mta.ready_note(v_pipe, v_domain, v_vmta, NULL);
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

-- ---- Ready markers (see README, Scheduling) ----
--
-- mta.queue_ready holds one marker per queue: next_at, a lower bound on the
-- time the queue may next have work a node can claim (NULL: no work known).
-- Whoever makes a recipient ready at time t (enqueue, a transient failure's
-- retry, release, node_stop, resume) lowers the marker to t through
-- mta.ready_note(); mta.ready_queues() reads only the markers that are due,
-- verifies each against mta.recipients, and raises the marker of a queue it
-- finds without claimable work (to the next attempt of its rows, or NULL).
-- A claim leaves the marker alone: the next verification finds the rows
-- leased and sets the marker to their lease expiry, so the rows of a node
-- that died become ready when their lease ends.
--
-- Lost wakeups. mta.ready_note() skips the update, and so takes no lock,
-- when the marker is already due by t (the common case: every enqueue to a
-- busy domain). A poller verifying with a snapshot that does not yet see
-- such an enqueue's rows would then raise the marker over rows that nobody
-- will mark again. So a queue found without work is not made idle at once;
-- it cools down first:
--   stage 0 -> 1  marker re-checked soon; ready_note() never skips while the
--                 stage is not 0, so every later lowering writes the row;
--   stage 1 -> 2  records the xmax of a snapshot taken after stage 1
--                 committed: every transaction that can have skipped (it
--                 read stage 0) has an xid below it;
--   stage 2 -> 0  only once no transaction below that xmax is running, so
--                 the verification's snapshot sees every skipped enqueue's
--                 rows; then the marker becomes the queue's next attempt or
--                 NULL.
-- Skipping is allowed only under READ COMMITTED (each statement has a fresh
-- snapshot taken after the transaction's xid was assigned); other isolation
-- levels always leave a wake row. The poller changes a marker only if its
-- row version is the one it verified (xmin), so a concurrent lowering always
-- wins. Locks: a lowering that finds the marker row locked (another
-- enqueue's lowering, a poller) does not wait: it inserts a row into
-- mta.queue_wake, which the pipe's next mta.ready_queues() applies. No
-- enqueue ever waits for another on a marker row.

-- Lowers the markers of the queues (p_pipe[i], p_domain[i], p_vmta[i]) to
-- p_at[i] (NULL: now), never below a postponement (hold_until). Creates
-- missing marker rows.
-- Runs on every enqueue: planned once per session (planning the statement
-- costs ten times more than running it), index probes only.
CREATE OR REPLACE FUNCTION mta.ready_note(p_pipe text[], p_domain text[], p_vmta text[],
                                          p_at timestamptz[])
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
SET enable_mergejoin = off AS $$
BEGIN
    IF coalesce(cardinality(p_pipe), 0) = 0 THEN
        RETURN;
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        -- One snapshot for the whole transaction: it may predate our own xid,
        -- and updating a row changed since would fail to serialise.
        INSERT INTO mta.queue_wake (pipe, domain, vmta, at)
            SELECT k.pipe, k.domain, coalesce(k.vmta, ''), min(coalesce(k.at, now()))
              FROM unnest(p_pipe, p_domain, p_vmta, p_at) AS k(pipe, domain, vmta, at)
             GROUP BY 1, 2, 3;
        RETURN;
    END IF;
    WITH k AS (
        SELECT k.pipe, k.domain, coalesce(k.vmta, '') AS vmta, min(coalesce(k.at, now())) AS at
          FROM unnest(p_pipe, p_domain, p_vmta, p_at) AS k(pipe, domain, vmta, at)
         GROUP BY 1, 2, 3
    ), cur AS (
        SELECT k.pipe, k.domain, k.vmta, k.at, m.pipe IS NOT NULL AS seen,
               coalesce(m.stage = 0 AND m.next_at <= greatest(k.at, m.hold_until), false) AS fine
          FROM k LEFT JOIN mta.queue_ready m
               ON m.pipe = k.pipe AND m.domain = k.domain AND m.vmta = k.vmta
    ), ins AS (
        INSERT INTO mta.queue_ready AS m (pipe, domain, vmta, next_at)
            SELECT c.pipe, c.domain, c.vmta, c.at FROM cur c WHERE NOT c.seen ORDER BY 1, 2, 3
        ON CONFLICT DO NOTHING
        RETURNING m.pipe, m.domain, m.vmta
    ), up AS (
        UPDATE mta.queue_ready m
           SET next_at = least(coalesce(m.next_at, 'infinity'), greatest(l.at, m.hold_until)),
               stage = 0, cool_xmax = NULL, cool_since = NULL
          FROM (SELECT mm.pipe, mm.domain, mm.vmta, c.at
                  FROM mta.queue_ready mm
                  JOIN cur c ON mm.pipe = c.pipe AND mm.domain = c.domain AND mm.vmta = c.vmta
                 WHERE c.seen AND NOT c.fine
                 ORDER BY 1, 2, 3
                   FOR NO KEY UPDATE OF mm SKIP LOCKED) l
         WHERE m.pipe = l.pipe AND m.domain = l.domain AND m.vmta = l.vmta
        RETURNING m.pipe, m.domain, m.vmta
    )
    INSERT INTO mta.queue_wake (pipe, domain, vmta, at)
        SELECT c.pipe, c.domain, c.vmta, c.at
          FROM cur c
         WHERE NOT c.fine
           AND NOT EXISTS (SELECT 1 FROM ins i
                            WHERE i.pipe = c.pipe AND i.domain = c.domain AND i.vmta = c.vmta)
           AND NOT EXISTS (SELECT 1 FROM up u
                            WHERE u.pipe = c.pipe AND u.domain = c.domain AND u.vmta = c.vmta);
END
$$;

-- Every path that inserts recipients (mta.enqueue, mta.submit, the DSNs of
-- mta.finish, an administrator's INSERT) marks their queues: one statement
-- trigger with a transition table, one mta.ready_note() per statement.
CREATE OR REPLACE FUNCTION mta.recipients_mark_ready() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    PERFORM mta.ready_note(array_agg(s.pipe), array_agg(s.domain), array_agg(s.vmta),
                           array_agg(s.at))
       FROM (SELECT n.pipe, n.domain, n.vmta, min(n.next_attempt) AS at
               FROM new_rows n GROUP BY 1, 2, 3) s;
    RETURN NULL;
END
$$;

-- Taking the trigger's lock waits for enqueues in flight and holds new ones
-- back until this file's transaction commits; the backfill below then sees
-- every recipient committed without the trigger.
CREATE OR REPLACE TRIGGER recipients_mark_ready AFTER INSERT ON mta.recipients
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mta.recipients_mark_ready();

INSERT INTO mta.queue_ready (pipe, domain, vmta, next_at)
SELECT q.pipe, q.domain, q.vmta, now()
  FROM mta.queue q
 WHERE NOT EXISTS (SELECT 1 FROM mta.queue_ready m
                    WHERE m.pipe = q.pipe AND m.domain = q.domain AND m.vmta = q.vmta)
   AND EXISTS (SELECT 1 FROM mta.recipients r
                WHERE r.pipe = q.pipe AND r.domain = q.domain AND r.vmta = q.vmta)
 ORDER BY 1, 2, 3
ON CONFLICT DO NOTHING;

-- Applies the pending wake rows of a pipe (at most 10,000 per call).
CREATE OR REPLACE FUNCTION mta.ready_apply_wakes(p_pipe text)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_pipe text[];
    v_domain text[];
    v_vmta text[];
    v_at timestamptz[];
    n int;
BEGIN
    WITH w AS (
        DELETE FROM mta.queue_wake w
         WHERE w.ctid = ANY (ARRAY(SELECT ww.ctid FROM mta.queue_wake ww
                                    WHERE ww.pipe = p_pipe LIMIT 10000
                                      FOR UPDATE SKIP LOCKED))
        RETURNING w.pipe, w.domain, w.vmta, w.at
    )
    SELECT array_agg(w.pipe), array_agg(w.domain), array_agg(w.vmta), array_agg(w.at), count(*)
      INTO v_pipe, v_domain, v_vmta, v_at, n
      FROM w;
    PERFORM mta.ready_note(v_pipe, v_domain, v_vmta, v_at);
    RETURN n;
END
$$;

-- Contract (node/worker.c): up to p_limit queues of the pipe that have
-- claimable work now: not paused, not postponed, at least one ready
-- recipient of a job that is not paused. backoff: the queue is in backoff
-- mode now (mta.queue_enter_backoff); the node then uses the domain's backoff
-- rate and retry interval.
--
-- Cost: O(p_limit) index entries of queue_ready_due and one verification
-- (a few index probes) per entry, whatever the number of queues.
--
-- Fairness: a rotation over the due markers in (next_at, domain, vmta)
-- order, from a cursor per pipe (mta.ready_cursor). A round covers the
-- markers due when it began (round_end); queues that become ready later
-- wait for the next round, so a steady stream of new queues cannot keep the
-- cursor from wrapping. A queue that was offered goes behind every queue not
-- yet offered in the round, however many queues are blocked; the node
-- removes a queue it cannot serve now with mta.queue_postpone(). Calls of the
-- same pipe take turns on the cursor row, so concurrent nodes get
-- consecutive slices of the rotation.
DROP FUNCTION IF EXISTS mta.ready_queues(text, int);
CREATE FUNCTION mta.ready_queues(p_pipe text, p_limit int)
RETURNS TABLE (domain text, vmta text, backoff bool, priority int)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- Planned once per session: planning the statement below costs more than
-- running it. Index probes only, so that a plan made while the tables were
-- small stays right when they are large.
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_hashjoin = off
SET enable_mergejoin = off SET enable_bitmapscan = off AS $$
#variable_conflict use_column
DECLARE
    v_limit int := least(p_limit, 100000);
    v_now timestamptz := now();
    v_pos_at timestamptz;
    v_pos_domain text;
    v_pos_vmta text;
    v_round_end timestamptz;
    v_page int;
    v_offered bigint;
BEGIN
    IF p_pipe IS NULL OR v_limit IS NULL OR v_limit < 1 THEN
        RETURN;
    END IF;
    SELECT rc.pos_at, rc.pos_domain, rc.pos_vmta, rc.round_end
      INTO v_pos_at, v_pos_domain, v_pos_vmta, v_round_end
      FROM mta.ready_cursor rc WHERE rc.pipe = p_pipe FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO mta.ready_cursor (pipe) VALUES (p_pipe) ON CONFLICT DO NOTHING;
        SELECT rc.pos_at, rc.pos_domain, rc.pos_vmta, rc.round_end
          INTO v_pos_at, v_pos_domain, v_pos_vmta, v_round_end
          FROM mta.ready_cursor rc WHERE rc.pipe = p_pipe FOR UPDATE;
    END IF;
    IF EXISTS (SELECT 1 FROM mta.queue_wake w WHERE w.pipe = p_pipe) THEN
        PERFORM mta.ready_apply_wakes(p_pipe);
    END IF;

    -- A page of candidates may hold no queue to offer: markers of queues
    -- served since they were set (a queue offered keeps its marker until a
    -- later page finds it without work, so mail enqueued in several
    -- transactions leaves such markers behind the first). Such a page only
    -- cools its markers; while the round has not ended, the next page is
    -- read in the same call, up to 32 pages, rather than after the
    -- caller's idle backoff (seconds of stalled delivery behind a thousand
    -- stale markers).
    FOR v_page IN 1..32 LOOP
    IF v_page > 1 THEN
        SELECT rc.pos_at, rc.pos_domain, rc.pos_vmta, rc.round_end
          INTO v_pos_at, v_pos_domain, v_pos_vmta, v_round_end
          FROM mta.ready_cursor rc WHERE rc.pipe = p_pipe;
        EXIT WHEN v_pos_at = 'infinity';
    END IF;
    RETURN QUERY
    WITH cand AS MATERIALIZED (
        SELECT u.*, row_number() OVER (ORDER BY u.part, u.next_at, u.domain, u.vmta) AS ord
          FROM ((SELECT 1 AS part, m.next_at, m.domain, m.vmta, m.stage, m.cool_xmax,
                        m.cool_since, m.xmin AS x
                   FROM mta.queue_ready m
                  WHERE m.pipe = p_pipe AND m.next_at IS NOT NULL
                    AND (m.next_at, m.domain, m.vmta) > (v_pos_at, v_pos_domain, v_pos_vmta)
                    AND m.next_at <= least(v_round_end, v_now)
                  ORDER BY m.next_at, m.domain, m.vmta
                  LIMIT v_limit)
                UNION ALL
                (SELECT 2, m.next_at, m.domain, m.vmta, m.stage, m.cool_xmax, m.cool_since,
                        m.xmin
                   FROM mta.queue_ready m
                  WHERE m.pipe = p_pipe AND m.next_at IS NOT NULL
                    AND (m.next_at, m.domain, m.vmta) <= (v_pos_at, v_pos_domain, v_pos_vmta)
                    AND m.next_at <= v_now
                  ORDER BY m.next_at, m.domain, m.vmta
                  LIMIT v_limit)) u
         ORDER BY u.part, u.next_at, u.domain, u.vmta
         LIMIT v_limit
    ), v AS MATERIALIZED (
        SELECT c.*, coalesce(q.backoff_until > v_now, false) AS in_backoff,
               CASE WHEN coalesce(q.paused, false) THEN 'paused'
                    WHEN w.ok THEN 'offer'
                    ELSE 'none' END AS verdict
          FROM cand c
          -- LATERAL + LIMIT: one index probe per candidate, in the generic
          -- plan too (a plain join may become a scan of every queue of the
          -- pipe per candidate, an EXISTS a hashed scan of every recipient).
          LEFT JOIN LATERAL (
               SELECT qq.paused, qq.backoff_until
                 FROM mta.queue qq
                WHERE qq.pipe = p_pipe AND qq.domain = c.domain AND qq.vmta = c.vmta
                LIMIT 1) q ON true
          LEFT JOIN LATERAL (
               SELECT true AS ok
                 FROM mta.recipients r
                 LEFT JOIN LATERAL (SELECT j.paused FROM mta.job j
                                     WHERE j.job_id = r.job_id LIMIT 1) jp ON true
                WHERE r.pipe = p_pipe AND r.domain = c.domain AND r.vmta = c.vmta
                  AND r.next_attempt <= v_now AND jp.paused IS NOT TRUE
                LIMIT 1) w ON true
    ), nv AS (
        -- New marker values of the queues found without claimable work.
        SELECT v.domain, v.vmta, v.x,
               CASE WHEN v.verdict = 'paused' THEN NULL
                    WHEN v.stage = 2 AND pg_snapshot_xmin(pg_current_snapshot()) >= v.cool_xmax
                    THEN f.next_attempt
                    ELSE least(f.next_attempt,
                               v_now + least(interval '30 s',
                                             greatest(interval '1 s',
                                                      v_now - coalesce(v.cool_since, v_now))))
                    END AS next_at,
               CASE WHEN v.verdict = 'paused' THEN 0
                    WHEN v.stage = 0 THEN 1
                    WHEN v.stage = 1 THEN 2
                    WHEN pg_snapshot_xmin(pg_current_snapshot()) >= v.cool_xmax THEN 0
                    ELSE 2 END AS stage,
               CASE WHEN v.verdict <> 'paused' AND v.stage = 1
                    THEN pg_snapshot_xmax(pg_current_snapshot())
                    WHEN v.verdict <> 'paused' AND v.stage = 2
                         AND NOT pg_snapshot_xmin(pg_current_snapshot()) >= v.cool_xmax
                    THEN v.cool_xmax END AS cool_xmax,
               CASE WHEN v.verdict <> 'paused' AND v.stage = 0 THEN v_now
                    WHEN v.verdict <> 'paused' AND v.stage = 2
                         AND pg_snapshot_xmin(pg_current_snapshot()) >= v.cool_xmax THEN NULL
                    WHEN v.verdict <> 'paused' THEN v.cool_since END AS cool_since
          FROM v
          LEFT JOIN LATERAL (SELECT min(r.next_attempt) AS next_attempt
                               FROM mta.recipients r
                              WHERE r.pipe = p_pipe AND r.domain = v.domain AND r.vmta = v.vmta
                                AND r.next_attempt > v_now) f ON v.verdict = 'none'
         WHERE v.verdict <> 'offer'
           -- Stage 1 -> 2 needs a snapshot taken after stage 1 committed: not
           -- within the transaction that wrote stage 1.
           AND NOT coalesce(v.verdict = 'none' AND v.stage = 1
                            AND v.x = pg_current_xact_id_if_assigned()::xid, false)
    ), clr AS (
        -- One primary-key probe and lock per marker, driven by nv (SKIP
        -- LOCKED never waits, so the order of the locks does not matter).
        UPDATE mta.queue_ready m
           SET next_at = l.next_at, stage = l.stage, cool_xmax = l.cool_xmax,
               cool_since = l.cool_since
          FROM (SELECT nv.*
                  FROM nv CROSS JOIN LATERAL (
                       SELECT 1 FROM mta.queue_ready m3
                        WHERE m3.pipe = p_pipe AND m3.domain = nv.domain AND m3.vmta = nv.vmta
                          FOR NO KEY UPDATE SKIP LOCKED) mm) l
         WHERE m.pipe = p_pipe AND m.domain = l.domain AND m.vmta = l.vmta
           AND m.xmin = l.x
    ), mv AS (
        -- The cursor moves to the last candidate (one pass over cand).
        UPDATE mta.ready_cursor rc
           SET (pos_at, pos_domain, pos_vmta, round_end) =
               (SELECT CASE WHEN n.cnt < v_limit THEN 'infinity' ELSE n.last_at END,
                       CASE WHEN n.cnt < v_limit THEN '' ELSE n.last_domain END,
                       CASE WHEN n.cnt < v_limit THEN '' ELSE n.last_vmta END,
                       CASE WHEN n.cnt < v_limit OR n.wrapped THEN v_now ELSE v_round_end END
                  FROM (SELECT count(*) AS cnt, coalesce(bool_or(c.part = 2), false) AS wrapped,
                               (array_agg(c.next_at ORDER BY c.ord DESC))[1] AS last_at,
                               (array_agg(c.domain ORDER BY c.ord DESC))[1] AS last_domain,
                               (array_agg(c.vmta ORDER BY c.ord DESC))[1] AS last_vmta
                          FROM cand c) n)
         WHERE rc.pipe = p_pipe
    )
    -- priority: the highest priority of the queue's ready recipients (README,
    -- Priorities: a queue waiting for a shared slot competes with it). Its
    -- claim bands (mta.claim_band) come highest priority first: the first
    -- band is one probe of recipients_claim_band, and when it is priority 0
    -- (the common case) that is the answer; else one more probe per band
    -- for a ready row, until one has one (at most 32 bands, as the claim;
    -- none found: 0).
    SELECT v.domain, v.vmta, v.in_backoff, coalesce(rp.prio, 0)
      FROM v
      LEFT JOIN LATERAL (
           WITH RECURSIVE gb(band, n, hit) AS (
               SELECT b.band, 1,
                      b.band IS NOT NULL
                      AND (left(b.band, 3) = '100'
                           OR (EXISTS (SELECT 1 FROM mta.recipients r
                                        WHERE r.pipe = p_pipe AND r.domain = v.domain
                                          AND r.vmta = v.vmta
                                          AND mta.claim_band(r.priority, r.job_id) = b.band
                                          AND r.next_attempt <= v_now)
                               AND NOT EXISTS (SELECT 1 FROM mta.job j
                                                WHERE j.job_id = substr(b.band, 5) AND j.paused)))
                 FROM (SELECT min(mta.claim_band(r.priority, r.job_id)) AS band
                         FROM mta.recipients r
                        WHERE r.pipe = p_pipe AND r.domain = v.domain AND r.vmta = v.vmta) b
               UNION ALL
               SELECT b.band, gb.n + 1,
                      b.band IS NOT NULL
                      AND (left(b.band, 3) = '100'
                           OR (EXISTS (SELECT 1 FROM mta.recipients r
                                        WHERE r.pipe = p_pipe AND r.domain = v.domain
                                          AND r.vmta = v.vmta
                                          AND mta.claim_band(r.priority, r.job_id) = b.band
                                          AND r.next_attempt <= v_now)
                               AND NOT EXISTS (SELECT 1 FROM mta.job j
                                                WHERE j.job_id = substr(b.band, 5) AND j.paused)))
                 FROM gb CROSS JOIN LATERAL (
                      SELECT min(mta.claim_band(r.priority, r.job_id)) AS band
                        FROM mta.recipients r
                       WHERE r.pipe = p_pipe AND r.domain = v.domain AND r.vmta = v.vmta
                         AND mta.claim_band(r.priority, r.job_id) > gb.band) b
                WHERE gb.band IS NOT NULL AND NOT gb.hit AND gb.n < 32
           )
           SELECT 100 - left(gb.band, 3)::int AS prio FROM gb WHERE gb.hit LIMIT 1) rp ON true
     WHERE v.verdict = 'offer'
     ORDER BY v.ord;
    GET DIAGNOSTICS v_offered = ROW_COUNT;
    EXIT WHEN v_offered > 0;
    END LOOP;
END
$$;

-- Contract (node): no node is offered the queue for p_ms milliseconds (at
-- most a day); the latest call wins, 0 ends a postponement. For a queue
-- that cannot be served now: rate tokens exhausted (the wait is known), every
-- connection slot taken, the destination throttled after failures. One
-- indexed UPDATE; it does not wait for a marker row another transaction
-- holds (the postponement is then dropped: the node will ask again).
CREATE OR REPLACE FUNCTION mta.queue_postpone(p_pipe text, p_domain text, p_vmta text, p_ms int)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_until timestamptz;
BEGIN
    IF p_pipe IS NULL OR p_domain IS NULL OR p_ms IS NULL OR p_ms < 0 THEN
        RAISE EXCEPTION 'queue_postpone: pipe, domain and a non-negative p_ms are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_until := now() + least(p_ms, 86400000) * interval '1 millisecond';
    UPDATE mta.queue_ready m
       SET hold_until = CASE WHEN p_ms = 0 THEN NULL ELSE v_until END,
           next_at = CASE WHEN m.next_at IS NULL THEN NULL
                          WHEN p_ms = 0 THEN least(m.next_at, v_until)
                          ELSE v_until END
     WHERE (m.pipe, m.domain, m.vmta) =
           (SELECT mm.pipe, mm.domain, mm.vmta FROM mta.queue_ready mm
             WHERE mm.pipe = p_pipe AND mm.domain = p_domain AND mm.vmta = coalesce(p_vmta, '')
               FOR NO KEY UPDATE SKIP LOCKED);
END
$$;

-- Claims ready recipients of several queues of one pipe in one statement:
-- queue i is (p_domains[i], p_vmtas[i]) (vmta NULL or '' = the queue without
-- a virtual MTA), up to p_limits[i] of its rows for p_lease_ms milliseconds,
-- its messages taken while the content before them is under p_max_bytes[i]
-- (NULL: no bound; the first message always comes). One call for many
-- queues pays the statement's fixed cost once: with a long tail of
-- destinations holding one or two messages each, that cost is most of a
-- claim. Rows come ordered by queue (column q = i), then message in claim
-- order (README, Priorities: priority, then the jobs in turn, then oldest
-- first), the rows of a message together so that the node can send several
-- recipients of one message in one SMTP transaction. A paused or deferred (mta.queue_defer) queue returns nothing. p_max_msgs[i] bounds the
-- messages of queue i as well (NULL, or p_max_msgs NULL: no bound): a claim
-- for k rate tokens (mta.claim_many_rated) takes at most k messages, whole,
-- and leaves the others ready.
-- The content of a message is returned once per queue, on its first row
-- (content_first), NULL on the others, so that a message with 100
-- recipients costs its size once on the wire and in the node. The rows of a
-- message that the byte bound leaves out stay ready, and capped (on every
-- row of the queue) says that some were left out: the node reserves that
-- many bytes of its content budget for the claim in flight, so the budget
-- holds whatever the queue has.
-- message_missing marks rows whose message row does not exist (the node sets
-- them aside). lease_until is the server's lease deadline and lease_left_ms
-- what is left of it when the rows are returned: the node times its finish
-- retries from that, not from its own clock.
DROP FUNCTION IF EXISTS mta.claim_many(bigint, text, text[], text[], int[], int, bigint[]);
DROP FUNCTION IF EXISTS mta.claim_many(bigint, text, text[], text[], int[], int, bigint[], int[]);
CREATE FUNCTION mta.claim_many(p_node bigint, p_pipe text, p_domains text[], p_vmtas text[],
                               p_limits int[], p_lease_ms int, p_max_bytes bigint[],
                               p_max_msgs int[] DEFAULT NULL)
RETURNS TABLE (q int, rcpt_id bigint, lease_token bigint, message_id bigint, mail_from text,
               rcpt text, content bytea, attempt int, envid text, job_id text,
               queued_at timestamptz, content_first bool, message_missing bool,
               lease_until timestamptz, lease_left_ms int, capped bool, dsn_notify smallint,
               dsn_orcpt text, dsn_ret text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- One plan for every call: planned afresh for each call's arrays (the
-- default while a custom plan looks cheaper), the statement cost more to plan
-- than to run (0.9 ms against 0.2 ms for one queue). A generic plan knows
-- neither the arrays' length nor, on a young queue, the tables' sizes, and
-- may then hash or scan whole tables: every join here goes through an
-- index, a few rows per queue. No JIT: the generic plan's estimates (a
-- row limit it cannot see, per claim band) pass the JIT threshold, and
-- compiling cost 200 ms against 1 ms of work (README, Priorities).
SET plan_cache_mode = force_generic_plan SET enable_hashjoin = off SET enable_mergejoin = off
SET jit = off AS $$
#variable_conflict use_column
DECLARE
    n int := coalesce(cardinality(p_domains), 0);
    v_until timestamptz := now() + p_lease_ms * interval '1 millisecond';
BEGIN
    IF coalesce(cardinality(p_vmtas), 0) <> n OR coalesce(cardinality(p_limits), 0) <> n
       OR coalesce(cardinality(p_max_bytes), 0) <> n
       OR (p_max_msgs IS NOT NULL AND cardinality(p_max_msgs) <> n) THEN
        RAISE EXCEPTION 'claim_many: the arrays differ in length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n > 1000 THEN
        RAISE EXCEPTION 'claim_many: % queues: at most 1000 per call', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    WITH w AS (
        SELECT w.i::int AS i, w.d, coalesce(w.v, '') AS v, w.l, w.b, p_max_msgs[w.i] AS m
          FROM unnest(p_domains, p_vmtas, p_limits, p_max_bytes) WITH ORDINALITY AS w(d, v, l, b, i)
         WHERE (w.l IS NULL OR w.l > 0) AND (p_max_msgs[w.i] IS NULL OR p_max_msgs[w.i] > 0)
    ), g AS (
        -- The claim bands of each queue (mta.claim_band: priority, then
        -- job), highest priority first: one index probe per band, at most
        -- 32 bands. The paused and deferred test depends on the queue only: checked once
        -- per queue (one index probe), not per row. wt: the band's job's
        -- weight (mta.job.weight, one probe per band; no row or no job: 1);
        -- wsum: the weights of the bands of its priority.
        SELECT w.i, w.d, w.v, w.l, w.b, w.m, gb.band, gb.wt,
               count(*) OVER (PARTITION BY w.i, left(gb.band, 3)) AS njobs,
               sum(gb.wt) OVER (PARTITION BY w.i, left(gb.band, 3)) AS wsum
          FROM w CROSS JOIN LATERAL (
              WITH RECURSIVE gb(band, n) AS (
                  SELECT (SELECT min(mta.claim_band(r.priority, r.job_id))
                            FROM mta.recipients r
                           WHERE r.pipe = p_pipe AND r.domain = w.d AND r.vmta = w.v), 1
                  UNION ALL
                  SELECT (SELECT min(mta.claim_band(r.priority, r.job_id))
                            FROM mta.recipients r
                           WHERE r.pipe = p_pipe AND r.domain = w.d AND r.vmta = w.v
                             AND mta.claim_band(r.priority, r.job_id) > gb.band), gb.n + 1
                    FROM gb WHERE gb.band IS NOT NULL AND gb.n < 32
              )
              SELECT gb.band,
                     coalesce((SELECT greatest(j.weight, 1) FROM mta.job j
                                WHERE j.job_id = substr(gb.band, 5)), 1)::int AS wt
                FROM gb WHERE gb.band IS NOT NULL) gb
         WHERE NOT coalesce((SELECT mq.paused OR mq.deferred_until > now() FROM mta.queue mq
                              WHERE mq.pipe = p_pipe AND mq.domain = w.d AND mq.vmta = w.v),
                            false)
    ), c0 AS (
        -- Ready rows of each band, oldest first (message_id after
        -- next_attempt: the recipients of one message stay together); rk
        -- numbers the band's messages. Of the jobs of a priority, each
        -- band reads twice its share of l by weight, wt / wsum (all l when
        -- alone): every row read is locked, and 32 bands of l rows cost
        -- five times the claim.
        SELECT g.i, g.b, g.m, g.l, g.wt, left(g.band, 3) AS prio, x.id, x.message_id,
               x.next_attempt,
               dense_rank() OVER (PARTITION BY g.i, g.band
                                  ORDER BY x.next_attempt, x.message_id) AS rk
          FROM g CROSS JOIN LATERAL (
              SELECT r.id, r.message_id, r.next_attempt
                FROM mta.recipients r
               WHERE r.pipe = p_pipe AND r.domain = g.d AND r.vmta = g.v
                 AND mta.claim_band(r.priority, r.job_id) = g.band
                 AND r.next_attempt <= now()
                 AND NOT EXISTS (SELECT 1 FROM mta.job j WHERE j.job_id = r.job_id AND j.paused)
               ORDER BY r.next_attempt, r.message_id
               LIMIT CASE WHEN g.njobs = 1 THEN g.l
                          ELSE least(g.l, 2 * ((g.l * g.wt + g.wsum - 1) / g.wsum)) END
                 FOR UPDATE OF r SKIP LOCKED) x
    ), c1 AS (
        -- Priority first; within a priority the jobs take turns (round
        -- robin by job: a small job is not starved behind a large one in
        -- the same queue), each job wt messages per turn: its messages
        -- rk 1..wt go in the first turn, wt+1..2wt in the second.
        SELECT c0.*, row_number() OVER (PARTITION BY c0.i
                                        ORDER BY c0.prio, (c0.rk - 1) / c0.wt, c0.next_attempt,
                                                 c0.message_id, c0.id) AS pos
          FROM c0
    ), c AS (
        SELECT c1.i, c1.b, c1.m, c1.id, c1.message_id, c1.pos
          FROM c1 WHERE c1.l IS NULL OR c1.pos <= c1.l
    ), s0 AS (
        -- The content stays out of the window passes below (each pass
        -- copies its rows): it is joined once, at the end, for the rows
        -- that carry it.
        SELECT c.i, c.b, c.m, c.id, c.message_id, m.id IS NULL AS missing, m.mail_from, m.envid,
               m.dsn_ret, coalesce(m.size, 0) AS size,
               c.pos AS ord
          FROM c LEFT JOIN mta.messages m ON m.id = c.message_id
    ), s1 AS (
        -- first: the row that carries the content (the message's lowest
        -- id in the queue); lead: the message's first row in claim order.
        SELECT s0.*,
               row_number() OVER (PARTITION BY s0.i, s0.message_id ORDER BY s0.id) = 1 AS first,
               row_number() OVER (PARTITION BY s0.i, s0.message_id ORDER BY s0.ord) = 1 AS lead
          FROM s0
    ), s2 AS (
        -- The content of the queue's messages that come before each row,
        -- and the row's message number in claim order.
        SELECT s1.*,
               sum(s1.lead::int) OVER (PARTITION BY s1.i ORDER BY s1.ord) AS msg_no,
               coalesce(sum(CASE WHEN s1.lead THEN s1.size ELSE 0 END)
                            OVER (PARTITION BY s1.i ORDER BY s1.ord
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
          FROM s1
    ), k0 AS (
        -- A message is taken whole, when what comes before its first row is
        -- under the queue's bound (the first message always) and it is
        -- within the message bound.
        SELECT s2.*, (min(s2.before) OVER (PARTITION BY s2.i, s2.message_id) = 0
                      OR min(s2.before) OVER (PARTITION BY s2.i, s2.message_id) < s2.b
                      OR s2.b IS NULL)
                     AND (s2.m IS NULL
                          OR min(s2.msg_no) OVER (PARTITION BY s2.i, s2.message_id) <= s2.m)
                     AS taken
          FROM s2
    ), k AS (
        SELECT k0.*, bool_or(NOT k0.taken) OVER (PARTITION BY k0.i) AS capped,
               min(k0.ord) OVER (PARTITION BY k0.i, k0.message_id) AS msg_pos
          FROM k0
    ), u AS (
        -- RETURNING carries what the answer needs of k: no join of u and k
        -- (CTE scans without statistics, which a nested loop would pair
        -- row by row).
        UPDATE mta.recipients r
           SET owner = p_node, lease_until = v_until, next_attempt = v_until,
               lease_token = nextval('mta.lease_token_seq'), attempts = r.attempts + 1
          FROM k
         WHERE r.id = k.id AND k.taken
        RETURNING k.i, r.id, r.lease_token, r.message_id, k.mail_from, r.rcpt, r.attempts,
                  k.envid, r.job_id, r.queued_at, k.first, k.missing, k.capped, r.dsn_notify,
                  r.dsn_orcpt, k.dsn_ret, k.msg_pos
    )
    SELECT u.i, u.id, u.lease_token, u.message_id, u.mail_from, u.rcpt, mc.content, u.attempts,
           u.envid, u.job_id, u.queued_at, u.first, u.missing, v_until,
           greatest(0, (extract(epoch FROM v_until - clock_timestamp()) * 1000)::int),
           u.capped, u.dsn_notify, u.dsn_orcpt, u.dsn_ret::text
      -- LEFT JOIN in s0: a recipient whose message row is missing comes
      -- back with message_missing, and the node sets it aside instead of
      -- leasing it for ever.
      FROM u LEFT JOIN mta.messages mc ON u.first AND mc.id = u.message_id
     ORDER BY u.i, u.msg_pos, u.message_id, u.id;
END
$$;

-- mta.claim_many for one queue: up to p_limit ready recipients of
-- (p_domain, p_vmta), the same columns without q.
DROP FUNCTION IF EXISTS mta.claim(bigint, text, text, text, int, int);
DROP FUNCTION IF EXISTS mta.claim(bigint, text, text, text, int, int, bigint);
CREATE FUNCTION mta.claim(p_node bigint, p_pipe text, p_domain text, p_vmta text,
                          p_limit int, p_lease_ms int, p_max_bytes bigint DEFAULT NULL)
RETURNS TABLE (rcpt_id bigint, lease_token bigint, message_id bigint, mail_from text,
               rcpt text, content bytea, attempt int, envid text, job_id text,
               queued_at timestamptz, content_first bool, message_missing bool,
               lease_until timestamptz, lease_left_ms int, capped bool)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.rcpt_id, c.lease_token, c.message_id, c.mail_from, c.rcpt, c.content, c.attempt,
           c.envid, c.job_id, c.queued_at, c.content_first, c.message_missing, c.lease_until,
           c.lease_left_ms, c.capped
      FROM mta.claim_many(p_node, p_pipe, ARRAY[p_domain], ARRAY[p_vmta], ARRAY[p_limit],
                          p_lease_ms, ARRAY[p_max_bytes]) c
$$;

-- Gives leases back untouched: ready at once, the attempt did not count.
CREATE OR REPLACE FUNCTION mta.release(p_node bigint, p_rcpt_ids bigint[], p_tokens bigint[])
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
    v_pipe text[];
    v_domain text[];
    v_vmta text[];
BEGIN
    WITH u AS (
        UPDATE mta.recipients r
           SET next_attempt = now(), owner = NULL, lease_until = NULL, lease_token = NULL,
               attempts = greatest(r.attempts - 1, 0)
          FROM unnest(p_rcpt_ids, p_tokens) AS f(id, token)
         WHERE r.id = f.id AND r.lease_token = f.token
        RETURNING r.pipe, r.domain, r.vmta
    ), k AS (
        SELECT DISTINCT u.pipe, u.domain, u.vmta FROM u
    )
    SELECT (SELECT count(*) FROM u), array_agg(k.pipe), array_agg(k.domain), array_agg(k.vmta)
      INTO n, v_pipe, v_domain, v_vmta
      FROM k;
    PERFORM mta.ready_note(v_pipe, v_domain, v_vmta, NULL);
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
