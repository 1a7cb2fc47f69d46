-- 075_dashboard: what the web dashboard draws (GET /api/stats and
-- GET /api/dashboard, see README, HTTP API), readable from psql too.
--
-- Both read mta.acct only through a time_logged range from at most two days
-- back to now, so PostgreSQL prunes every daily partition but the recent
-- ones and the default (the bounds are computed once per statement, so the
-- pruning happens at executor start).

-- Accounting events per minute over the last p_hours hours (1 to 48): one row
-- for every minute, oldest first, the current (incomplete) minute last, with
-- zeros for minutes without events.
CREATE OR REPLACE FUNCTION mta.acct_minutes(p_hours int DEFAULT 6)
RETURNS TABLE (minute timestamptz, received bigint, delivered bigint, bounced bigint,
               deferred bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, mta SET jit = off AS $$
#variable_conflict use_column
DECLARE
    v_from timestamptz;
BEGIN
    IF p_hours IS NULL OR p_hours < 1 OR p_hours > 48 THEN
        RAISE EXCEPTION 'hours must be between 1 and 48, not %', p_hours
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_from := date_trunc('minute', now()) - (p_hours * 60 - 1) * interval '1 minute';
    RETURN QUERY
    SELECT m.minute,
           coalesce(a.received, 0), coalesce(a.delivered, 0), coalesce(a.bounced, 0),
           coalesce(a.deferred, 0)
      FROM generate_series(v_from, date_trunc('minute', now()), interval '1 minute') m(minute)
      LEFT JOIN (SELECT date_trunc('minute', e.time_logged) AS minute,
                        count(*) FILTER (WHERE e.type = 'r') AS received,
                        count(*) FILTER (WHERE e.type = 'd') AS delivered,
                        count(*) FILTER (WHERE e.type = 'b') AS bounced,
                        count(*) FILTER (WHERE e.type = 't') AS deferred
                   FROM mta.acct e
                  WHERE e.time_logged >= v_from
                    AND e.time_logged < date_trunc('minute', now()) + interval '1 minute'
                  GROUP BY 1) a USING (minute)
     ORDER BY m.minute;
END
$$;

-- Everything else the dashboard shows about the last p_minutes minutes (1 to
-- 1440), as one JSON object:
--   totals             events per type in the window
--   bounce_categories  bounces per bounce_cat, most frequent first
--   top_backlog        the 10 queues (mta.queues) with most recipients queued
--   top_deferral       the 10 queues with the highest share of deferrals among
--                      their delivery attempts (d, b, t) in the window
--   vmtas, nodes       delivered, bounced, deferred per virtual MTA and per
--                      node (all its processes), delivered in the last 5
--                      minutes too
--   webhooks           mta.webhook_lag
--   suppression        entries of mta.suppression per source
-- The window is read once (one scan, grouping sets); plpgsql because
-- mta.webhook_lag is created by a later file. No JIT: the planner's estimate
-- for mta.webhook_lag is high enough to make it compile the statement, which
-- takes seconds on every call, several times the work itself.
CREATE OR REPLACE FUNCTION mta.dashboard(p_minutes int DEFAULT 60) RETURNS json
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, mta SET jit = off AS $$
DECLARE
    v_from timestamptz;
    v_recent timestamptz := now() - interval '5 minutes';
BEGIN
    IF p_minutes IS NULL OR p_minutes < 1 OR p_minutes > 1440 THEN
        RAISE EXCEPTION 'minutes must be between 1 and 1440, not %', p_minutes
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_from := now() - p_minutes * interval '1 minute';
    RETURN (
    WITH g AS (
        SELECT grouping(e.bounce_cat, e.queue, e.vmta, e.node) AS gs,
               e.bounce_cat, e.queue, e.vmta, e.node,
               count(*) FILTER (WHERE e.type = 'r') AS received,
               count(*) FILTER (WHERE e.type = 'd') AS delivered,
               count(*) FILTER (WHERE e.type = 'b') AS bounced,
               count(*) FILTER (WHERE e.type = 't') AS deferred,
               count(*) FILTER (WHERE e.type = 'd' AND e.time_logged >= v_recent)
                   AS delivered_5m
          FROM mta.acct e
         WHERE e.time_logged >= v_from AND e.time_logged < now() + interval '1 minute'
         GROUP BY GROUPING SETS ((), (e.bounce_cat), (e.queue), (e.vmta), (e.node))),
    -- grouping() has one bit per argument, the first the highest: the set
    -- grouped by bounce_cat alone is 0b0111, by queue 0b1011, and so on
    t AS (SELECT * FROM g WHERE gs = 15),
    c AS (SELECT * FROM g WHERE gs = 7 AND bounced > 0),
    q AS (SELECT * FROM g WHERE gs = 11 AND deferred > 0),
    v AS (SELECT * FROM g WHERE gs = 13),
    -- the node, not its processes ("NAME/PIPE/INDEX")
    n AS (SELECT regexp_replace(g.node, '/[^/]*/[0-9]+$', '') AS node,
                 sum(g.delivered)::bigint AS delivered, sum(g.bounced)::bigint AS bounced,
                 sum(g.deferred)::bigint AS deferred, sum(g.delivered_5m)::bigint AS delivered_5m
            FROM g WHERE gs = 14 GROUP BY 1)
    SELECT json_build_object(
        'minutes', p_minutes,
        'totals', (SELECT json_build_object('received', coalesce(max(t.received), 0),
                                            'delivered', coalesce(max(t.delivered), 0),
                                            'bounced', coalesce(max(t.bounced), 0),
                                            'deferred', coalesce(max(t.deferred), 0))
                     FROM t),
        'bounce_categories', (SELECT coalesce(json_agg(json_build_object(
                                         'category', coalesce(c.bounce_cat, 'other'),
                                         'bounced', c.bounced)
                                     ORDER BY c.bounced DESC, c.bounce_cat), '[]')
                                FROM c),
        'top_backlog', (SELECT coalesce(json_agg(b ORDER BY b.queued DESC, b.domain, b.vmta,
                                                   b.pipe), '[]')
                          FROM (SELECT s.domain, s.vmta, s.pipe, s.queued, s.ready, s.deferred,
                                       s.in_flight, s.paused, s.backoff, s.last_error
                                  FROM mta.queues s
                                 WHERE s.queued > 0
                                 ORDER BY s.queued DESC, s.domain, s.vmta, s.pipe
                                 LIMIT 10) b),
        'top_deferral', (SELECT coalesce(json_agg(d ORDER BY d.rate DESC, d.deferred DESC,
                                                    d.queue), '[]')
                           FROM (SELECT q.queue, q.delivered, q.bounced, q.deferred,
                                        round(q.deferred::numeric
                                              / (q.delivered + q.bounced + q.deferred), 4)
                                            AS rate
                                   FROM q
                                  ORDER BY 5 DESC, q.deferred DESC, q.queue
                                  LIMIT 10) d),
        'vmtas', (SELECT coalesce(json_agg(json_build_object(
                             'vmta', v.vmta, 'delivered', v.delivered, 'bounced', v.bounced,
                             'deferred', v.deferred, 'delivered_5m', v.delivered_5m)
                         ORDER BY v.delivered DESC, v.vmta NULLS FIRST), '[]')
                    FROM v WHERE v.delivered + v.bounced + v.deferred > 0),
        'nodes', (SELECT coalesce(json_agg(json_build_object(
                             'node', n.node, 'delivered', n.delivered, 'bounced', n.bounced,
                             'deferred', n.deferred, 'delivered_5m', n.delivered_5m)
                         ORDER BY n.delivered DESC, n.node), '[]')
                    FROM n WHERE n.node IS NOT NULL AND n.delivered + n.bounced + n.deferred > 0),
        'webhooks', (SELECT coalesce(json_agg(json_build_object(
                                'consumer', w.consumer, 'events_behind', w.events_behind,
                                'seconds_behind', round(w.seconds_behind::numeric, 1),
                                'failures', w.failures, 'last_error', w.last_error,
                                'updated_at', w.updated_at)
                            ORDER BY w.consumer), '[]')
                       FROM mta.webhook_lag w),
        'suppression', (SELECT coalesce(json_agg(json_build_object('source', s.source,
                                                                   'entries', s.entries)
                                                 ORDER BY s.entries DESC, s.source), '[]')
                          FROM (SELECT x.source, count(*) AS entries FROM mta.suppression x
                                 GROUP BY x.source) s))
    );
END
$$;

-- This file runs before 090_roles, which creates the roles on a first
-- migration: the two granted to must exist already.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['mta_node', 'mta_monitor'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
END
$$;

GRANT EXECUTE ON FUNCTION mta.acct_minutes(int), mta.dashboard(int) TO mta_node, mta_monitor;
