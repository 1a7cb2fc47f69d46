-- 100_webhooks: what the webhook senders call (see README, Webhooks), the
-- lag per consumer, and their grants. Tables in migrations/0007_webhooks.sql.
--
-- Order and commit order. Events are sent in (time_logged, id) order.
-- time_logged defaults to now(), the start of the transaction that logs the
-- row, so a row may become visible after rows with a later position (its
-- transaction started first and committed last). A batch therefore only
-- reaches up to the horizon: the start of the oldest transaction still open
-- in this database, and at most now() - settle. Every row before the horizon
-- belongs to a committed (or rolled back) transaction, so a cursor that has
-- passed a position never needs to look behind it again. The horizon is read
-- by its own statement before the rows are: a transaction that was not open
-- then either had committed (its rows are in the later snapshot) or started
-- after it (its rows are past the horizon).

-- A consumer's session advisory lock: one sender per consumer in the cluster
-- (the slots' scheme, with its own class).
CREATE OR REPLACE FUNCTION mta.webhook_lock(p_consumer text) RETURNS bool
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, mta AS $$
    SELECT pg_try_advisory_lock(1464353867, hashtext('webhook/' || p_consumer));
$$;

CREATE OR REPLACE FUNCTION mta.webhook_horizon(p_settle interval DEFAULT '1 second')
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, mta AS $$
BEGIN
    -- pg_stat_activity shows the transactions of other roles only to a
    -- superuser or a member of pg_read_all_stats; without that the horizon
    -- would pass open transactions and their events would be skipped.
    IF NOT (pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
            OR (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user)) THEN
        RAISE EXCEPTION 'webhooks: the owner of mta.webhook_horizon (%) must be a superuser or a member of pg_read_all_stats', current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'GRANT pg_read_all_stats TO the role that runs pgmta migrate, then run it again';
    END IF;
    RETURN least(clock_timestamp() - p_settle,
                 (SELECT min(a.xact_start) FROM pg_stat_activity a
                   WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL));
END
$$;

-- The record types of a webhook's types (comma-separated: "d,b,rb,f"; a
-- token other than "rb" is read letter by letter, as before 'rb' existed).
CREATE OR REPLACE FUNCTION mta.webhook_type_list(p_types text)
RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(x)
      FROM unnest(regexp_split_to_array(regexp_replace(p_types, '[^a-z,]', '', 'g'), ',')) t,
           LATERAL unnest(CASE WHEN t = 'rb' THEN ARRAY[t] ELSE regexp_split_to_array(t, '') END) x
     WHERE x <> ''
$$;

-- The next batch of consumer P_CONSUMER after its cursor: at most P_LIMIT
-- events whose type is in P_TYPES (letters, NULL: all) and whose job_id
-- starts with P_JOB_PREFIX (NULL: all), as a JSON array of objects with the
-- accounting columns. n is the number of events; (pos_time, pos_id) is the
-- position to pass to mta.webhook_advance once they are acknowledged (past
-- the events skipped by the filters too; with n = 0 the cursor may be
-- advanced at once). A consumer seen for the first time starts now.
CREATE OR REPLACE FUNCTION mta.webhook_next(p_consumer text, p_types text, p_job_prefix text,
                                            p_limit int, p_settle interval DEFAULT '1 second',
                                            OUT events text, OUT n int,
                                            OUT pos_time timestamptz, OUT pos_id bigint)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, mta AS $$
DECLARE
    v_horizon timestamptz;
    v_cur mta.webhook_cursor;
    v_types text[];
BEGIN
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
        RAISE EXCEPTION 'invalid batch size %', p_limit;
    END IF;
    v_horizon := mta.webhook_horizon(p_settle);
    INSERT INTO mta.webhook_cursor (consumer, last_time) VALUES (p_consumer, v_horizon)
        ON CONFLICT (consumer) DO NOTHING;
    UPDATE mta.webhook_cursor SET types = p_types, job_prefix = p_job_prefix,
                                  last_attempt = now()
     WHERE consumer = p_consumer RETURNING * INTO v_cur;
    IF p_types IS NOT NULL THEN
        v_types := mta.webhook_type_list(p_types);
    END IF;
    SELECT coalesce(json_agg(json_build_object(
               'id', e.id, 'type', e.type, 'time_logged', e.time_logged,
               'time_queued', e.time_queued, 'orig', e.orig, 'rcpt', e.rcpt,
               'dsn_action', e.dsn_action, 'dsn_status', e.dsn_status, 'dsn_diag', e.dsn_diag,
               'dsn_mta', e.dsn_mta, 'bounce_cat', e.bounce_cat,
               'dlv_source_ip', e.dlv_source_ip, 'dlv_destination_ip', e.dlv_destination_ip,
               'dlv_size', e.dlv_size, 'vmta', e.vmta, 'job_id', e.job_id, 'envid', e.envid,
               'queue', e.queue, 'pipe', e.pipe, 'node', e.node, 'message_id', e.message_id,
               'attempt', e.attempt, 'tls_protocol', e.tls_protocol,
               'tls_cipher', e.tls_cipher, 'reporting_mta', e.reporting_mta,
               'feedback_type', e.feedback_type, 'user_agent', e.user_agent,
               'arf_version', e.arf_version, 'arf_original_mail_from', e.arf_original_mail_from,
               'arf_original_rcpt_to', e.arf_original_rcpt_to,
               'arf_arrival_date', e.arf_arrival_date, 'arf_source_ip', e.arf_source_ip,
               'arf_reported_domain', e.arf_reported_domain,
               'arf_message_id', e.arf_message_id) ORDER BY e.time_logged, e.id)::text, '[]'),
           count(*),
           (array_agg(e.time_logged ORDER BY e.time_logged DESC, e.id DESC))[1],
           (array_agg(e.id ORDER BY e.time_logged DESC, e.id DESC))[1]
      INTO events, n, pos_time, pos_id
      FROM (SELECT a.* FROM mta.acct a
             WHERE (a.time_logged, a.id) > (v_cur.last_time, v_cur.last_id)
               AND a.time_logged < v_horizon AND a.id IS NOT NULL
               AND (v_types IS NULL OR a.type = ANY (v_types))
               AND (p_job_prefix IS NULL OR starts_with(a.job_id, p_job_prefix))
             ORDER BY a.time_logged, a.id
             LIMIT p_limit) e;
    IF n < p_limit THEN
        -- everything before the horizon was seen
        pos_time := v_horizon;
        pos_id := 0;
    END IF;
END
$$;

-- Moves the cursor of P_CONSUMER to (p_time, p_id) after the receiver
-- acknowledged P_N events; never backwards (a stale sender changes nothing).
CREATE OR REPLACE FUNCTION mta.webhook_advance(p_consumer text, p_time timestamptz, p_id bigint,
                                               p_n int) RETURNS bool
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, mta AS $$
    UPDATE mta.webhook_cursor
       SET last_time = p_time, last_id = p_id, delivered = delivered + greatest(p_n, 0),
           updated_at = now(), failures = 0, last_error = NULL
     WHERE consumer = p_consumer AND (p_time, p_id) > (last_time, last_id)
    RETURNING true;
$$;

-- Records a failed attempt (non-2xx, timeout, connection trouble).
CREATE OR REPLACE FUNCTION mta.webhook_failed(p_consumer text, p_error text) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, mta AS $$
    UPDATE mta.webhook_cursor
       SET failures = failures + 1, last_error = left(p_error, 500), last_attempt = now()
     WHERE consumer = p_consumer;
$$;

-- Lag per consumer: the events past its cursor that its filters select, and
-- the age of the oldest of them (0 when none is waiting).
CREATE OR REPLACE VIEW mta.webhook_lag AS
SELECT c.consumer, c.last_time, c.last_id, c.delivered, c.updated_at, c.failures, c.last_error,
       b.events_behind,
       coalesce(extract(epoch FROM now() - b.oldest), 0)::float8 AS seconds_behind
  FROM mta.webhook_cursor c
  CROSS JOIN LATERAL (
      SELECT count(*) AS events_behind, min(a.time_logged) AS oldest
        FROM mta.acct a
       WHERE (a.time_logged, a.id) > (c.last_time, c.last_id) AND a.id IS NOT NULL
         AND (c.types IS NULL OR a.type = ANY (mta.webhook_type_list(c.types)))
         AND (c.job_prefix IS NULL OR starts_with(a.job_id, c.job_prefix))) b;

GRANT EXECUTE ON FUNCTION mta.webhook_lock(text),
                          mta.webhook_horizon(interval),
                          mta.webhook_next(text, text, text, int, interval),
                          mta.webhook_advance(text, timestamptz, bigint, int),
                          mta.webhook_failed(text, text)
    TO mta_node;
GRANT SELECT ON mta.webhook_lag TO mta_node, mta_monitor;
