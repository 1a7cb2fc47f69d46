-- 056_warmup: closed-loop IP warm-up (tables in migrations/0020_warmup.sql).
-- A warming source IP sends at most its plan day's daily and hourly counts to
-- a provider key; nodes reserve those messages in batches per session
-- (mta.warmup_take, one statement per new connection, not per message) and
-- give back what they did not send (mta.warmup_refund). Once a day one node
-- decides for every plan (mta.warmup_advance): advance, hold or step back by
-- the previous day's deferral and complaint rates. See README, IP warm-up.

-- The counter of a plan in mta.warmup_count.
CREATE OR REPLACE FUNCTION mta.warmup_counter(p_ip text, p_key text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'warmup:' || p_ip || ':' || p_key
$$;

-- Messages counted for a plan since p_since.
CREATE OR REPLACE FUNCTION mta.warmup_sent(p_ip text, p_key text, p_since timestamptz)
RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(sum(c.sent), 0)::bigint FROM mta.warmup_count c
     WHERE c.counter = mta.warmup_counter(p_ip, p_key) AND c.hour >= p_since
$$;

-- Contract (node): reserves up to p_want messages of source IP p_ip to
-- provider key p_key. warming false: no plan limits this pair (none, paused,
-- or past its last day), granted = p_want. Otherwise granted is what the
-- day's daily and hourly allowances have left (0: overflow or wait). The
-- plan row lock is the critical section, for the statement only.
CREATE OR REPLACE FUNCTION mta.warmup_take(p_ip text, p_key text, p_want int,
                                           OUT granted int, OUT warming bool)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_day int;
    v_daily int;
    v_hourly int;
    v_now timestamptz;
    v_day_sent bigint;
    v_hour_sent bigint;
BEGIN
    IF p_want IS NULL OR p_want < 1 OR p_ip IS NULL OR p_key IS NULL THEN
        RAISE EXCEPTION 'warmup_take: invalid arguments (ip %, key %, want %)', p_ip, p_key, p_want
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT w.day INTO v_day FROM mta.warmup w
     WHERE w.ip = p_ip AND w.key = p_key AND w.state NOT IN ('paused', 'done')
       FOR UPDATE;
    IF FOUND THEN
        SELECT d.daily_limit, d.hourly_limit INTO v_daily, v_hourly FROM mta.warmup_day d
         WHERE d.ip = p_ip AND d.key = p_key AND d.day = v_day;
    END IF;
    IF v_daily IS NULL THEN
        granted := p_want;
        warming := false;
        RETURN;
    END IF;
    warming := true;
    v_now := clock_timestamp();
    v_day_sent := mta.warmup_sent(p_ip, p_key, date_trunc('day', v_now));
    v_hour_sent := mta.warmup_sent(p_ip, p_key, date_trunc('hour', v_now));
    granted := greatest(0, least(p_want::bigint, v_daily - v_day_sent, v_hourly - v_hour_sent))::int;
    IF granted > 0 THEN
        INSERT INTO mta.warmup_count AS c (counter, hour, sent)
        VALUES (mta.warmup_counter(p_ip, p_key), date_trunc('hour', v_now), granted)
        ON CONFLICT (counter, hour) DO UPDATE SET sent = c.sent + excluded.sent;
    END IF;
END
$$;

-- Contract (node): gives back p_n reserved messages that were not sent.
CREATE OR REPLACE FUNCTION mta.warmup_refund(p_ip text, p_key text, p_n int)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE mta.warmup_count c SET sent = greatest(0, c.sent - p_n)
     WHERE p_n > 0 AND c.counter = mta.warmup_counter(p_ip, p_key)
       AND c.hour = (SELECT max(c2.hour) FROM mta.warmup_count c2
                      WHERE c2.counter = mta.warmup_counter(p_ip, p_key))
$$;

-- Whether recipient domain p_domain belongs to provider key p_key: the key
-- itself, or a domain a node served under that key (mta.slot_key).
CREATE OR REPLACE FUNCTION mta.warmup_key_has(p_key text, p_domain text)
RETURNS bool LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT p_domain = p_key
        OR EXISTS (SELECT 1 FROM mta.slot_key k WHERE k.key_domain = p_key AND k.domain = p_domain)
$$;

-- The outcome counts of a plan on one day from mta.acct: deliveries 'd' and
-- deferrals 't' from that source IP to the key's domains, complaints 'f' on
-- messages delivered from it (matched by recipient row).
CREATE OR REPLACE FUNCTION mta.warmup_day_stats(p_ip text, p_key text, p_day date,
                                                OUT delivered bigint, OUT deferred bigint,
                                                OUT complaints bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH a AS (
        SELECT a.type, a.rcpt_id FROM mta.acct a
         WHERE a.time_logged >= p_day::timestamptz AND a.time_logged < (p_day + 1)::timestamptz
           AND a.type IN ('d', 't') AND a.dlv_source_ip = p_ip
           AND mta.warmup_key_has(p_key, lower(split_part(a.rcpt, '@', 2))))
    SELECT count(*) FILTER (WHERE a.type = 'd'), count(*) FILTER (WHERE a.type = 't'),
           (SELECT count(*) FROM mta.acct f
             WHERE f.type = 'f' AND f.time_logged >= p_day::timestamptz
               AND f.time_logged < (p_day + 1)::timestamptz
               AND f.rcpt_id IN (SELECT a2.rcpt_id FROM a a2 WHERE a2.type = 'd'))
      FROM a
$$;

-- Contract (node, tests): the daily decision for p_day, by one caller at a
-- time (a transaction advisory lock; another caller returns -1 at once).
-- Each plan not yet decided for p_day and not paused looks at p_day - 1:
--   deferral rate = t / (d + t), complaint rate = f / d;
--   either at or over its step_back_* threshold: one day back (not below 1);
--   else either at or over its max_* threshold: held;
--   else, with traffic that day: the next day (past the last: 'done');
--   no traffic: held.
-- Returns the plans decided. Old counter hours are deleted.
CREATE OR REPLACE FUNCTION mta.warmup_advance(p_day date DEFAULT current_date)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w record;
    s record;
    v_def float8;
    v_cmp float8;
    v_last int;
    v_n int := 0;
BEGIN
    -- 0x504D5755 ('PMWU'): pgmta's warm-up decision lock
    IF NOT pg_try_advisory_xact_lock(1347245909) THEN
        RETURN -1;
    END IF;
    FOR w IN SELECT * FROM mta.warmup
              WHERE state NOT IN ('paused', 'done') AND (decided_for IS NULL OR decided_for < p_day)
              ORDER BY ip, key FOR UPDATE LOOP
        SELECT * INTO s FROM mta.warmup_day_stats(w.ip, w.key, p_day - 1);
        v_def := CASE WHEN s.delivered + s.deferred > 0
                      THEN s.deferred::float8 / (s.delivered + s.deferred) ELSE 0 END;
        v_cmp := CASE WHEN s.delivered > 0 THEN s.complaints::float8 / s.delivered ELSE 0 END;
        SELECT max(d.day) INTO v_last FROM mta.warmup_day d WHERE d.ip = w.ip AND d.key = w.key;
        IF v_def >= w.step_back_deferral_rate OR v_cmp >= w.step_back_complaint_rate THEN
            UPDATE mta.warmup SET day = greatest(1, day - 1), state = 'stepped-back',
                   decided_for = p_day,
                   reason = format('%s: deferrals %s%%, complaints %s%% (step back at %s%%/%s%%)',
                                   p_day - 1, round((v_def * 100)::numeric, 2),
                                   round((v_cmp * 100)::numeric, 3),
                                   w.step_back_deferral_rate * 100, w.step_back_complaint_rate * 100)
             WHERE ip = w.ip AND key = w.key;
        ELSIF v_def >= w.max_deferral_rate OR v_cmp >= w.max_complaint_rate THEN
            UPDATE mta.warmup SET state = 'held', decided_for = p_day,
                   reason = format('%s: deferrals %s%%, complaints %s%% (hold at %s%%/%s%%)',
                                   p_day - 1, round((v_def * 100)::numeric, 2),
                                   round((v_cmp * 100)::numeric, 3),
                                   w.max_deferral_rate * 100, w.max_complaint_rate * 100)
             WHERE ip = w.ip AND key = w.key;
        ELSIF s.delivered + s.deferred = 0 THEN
            UPDATE mta.warmup SET state = 'held', decided_for = p_day,
                   reason = format('%s: no traffic', p_day - 1)
             WHERE ip = w.ip AND key = w.key;
        ELSE
            UPDATE mta.warmup
               SET day = CASE WHEN w.day >= coalesce(v_last, 0) THEN day ELSE day + 1 END,
                   state = CASE WHEN w.day >= coalesce(v_last, 0) THEN 'done' ELSE 'advancing' END,
                   decided_for = p_day,
                   reason = format('%s: deferrals %s%%, complaints %s%% of %s', p_day - 1,
                                   round((v_def * 100)::numeric, 2),
                                   round((v_cmp * 100)::numeric, 3), s.delivered + s.deferred)
             WHERE ip = w.ip AND key = w.key;
        END IF;
        v_n := v_n + 1;
    END LOOP;
    DELETE FROM mta.warmup_count c WHERE c.hour < (p_day - 2)::timestamptz;
    RETURN v_n;
END
$$;

-- Admin: creates or replaces the plan of (p_ip, p_key) with one day per
-- array element, starting at day 1 (thresholds keep their values).
CREATE OR REPLACE FUNCTION mta.warmup_set(p_ip text, p_key text, p_daily int[], p_hourly int[])
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF coalesce(cardinality(p_daily), 0) = 0 OR cardinality(p_daily) <> cardinality(p_hourly) THEN
        RAISE EXCEPTION 'warmup_set: daily and hourly limits must be two arrays of one length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO mta.warmup (ip, key) VALUES (p_ip, p_key)
    ON CONFLICT (ip, key) DO UPDATE SET day = 1, state = 'advancing', decided_for = NULL,
                                        reason = 'plan set';
    DELETE FROM mta.warmup_day WHERE ip = p_ip AND key = p_key;
    INSERT INTO mta.warmup_day (ip, key, day, daily_limit, hourly_limit)
    SELECT p_ip, p_key, i, p_daily[i], p_hourly[i] FROM generate_subscripts(p_daily, 1) i;
END
$$;

-- Admin: pauses (hold) or resumes a plan: a paused plan neither limits nor
-- advances. Returns whether the plan exists.
CREATE OR REPLACE FUNCTION mta.warmup_pause(p_ip text, p_key text, p_paused bool)
RETURNS bool LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE mta.warmup SET state = CASE WHEN p_paused THEN 'paused' ELSE 'advancing' END,
                          reason = CASE WHEN p_paused THEN 'paused by admin'
                                        ELSE 'resumed by admin' END
     WHERE ip = p_ip AND key = p_key
    RETURNING true
$$;

CREATE OR REPLACE VIEW mta.warmup_status AS
SELECT w.ip, w.key, w.day, d.daily_limit, d.hourly_limit,
       mta.warmup_sent(w.ip, w.key, date_trunc('day', now())) AS sent_today,
       mta.warmup_sent(w.ip, w.key, date_trunc('hour', now())) AS sent_this_hour,
       w.state, w.reason, w.decided_for,
       w.max_deferral_rate, w.max_complaint_rate,
       w.step_back_deferral_rate, w.step_back_complaint_rate
  FROM mta.warmup w
  LEFT JOIN mta.warmup_day d ON d.ip = w.ip AND d.key = w.key AND d.day = w.day;
