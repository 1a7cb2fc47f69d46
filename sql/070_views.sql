-- 070_views: the views for psql, the command line and the HTTP API (DESIGN §6,
-- contract names and columns). In the views a queue without a virtual MTA has
-- vmta NULL (the tables store '').
--
-- Counting is done when the view is read (one pass over the recipients of each
-- queue); nothing on the enqueue or delivery path maintains counters.

-- Every key a slot can be held under, with the queue it serves: the
-- recorded pairs, and each queue's own key.
CREATE OR REPLACE VIEW mta.slot_keys AS
SELECT k.queue_key, k.key_domain, k.key_vmta, k.domain, k.vmta, 0 AS pref
  FROM mta.slot_key k
UNION ALL
SELECT mta.queue_key(q.domain, q.vmta), q.domain, q.vmta, q.domain, q.vmta, 1
  FROM (SELECT DISTINCT qq.domain, qq.vmta FROM mta.queue qq) q;

-- Connections serving each queue (all pipes together: a queue's
-- max-smtp-out counts for every pipe): slots held under its own key or
-- under a key recorded for it (its rollup, its pool's members). Domains of
-- one rollup share their connections, so each of them counts all of them.
CREATE OR REPLACE VIEW mta.queue_slot_counts AS
SELECT s.domain, s.vmta, count(*) AS connections
  FROM mta.slot_locks l
  JOIN (SELECT DISTINCT k.queue_key, k.domain, k.vmta FROM mta.slot_keys k) s
    ON s.queue_key = l.queue_key
 GROUP BY 1, 2;

-- One row per queue. ready: next_attempt has come (including expired leases,
-- which are claimable again); in_flight: leased and the lease still runs;
-- deferred: waiting for a later attempt. next_attempt: the earliest attempt
-- not in flight. connections: slots held cluster-wide that serve the queue
-- (mta.queue_slot_counts), from pg_locks. rollup_key: the limit key other
-- than the queue's own that a node last took a slot under for it (an MX
-- rollup: "rollup:NAME", "provider:NAME", "mx:HOSTS"; recorded in
-- mta.slot_key by mta.take_slot), NULL when none (an opted-out or plain
-- domain, or no connection yet). Added last: columns keep their places.
CREATE OR REPLACE VIEW mta.queues AS
SELECT q.domain,
       nullif(q.vmta, '') AS vmta,
       q.pipe,
       coalesce(s.queued, 0) AS queued,
       coalesce(s.ready, 0) AS ready,
       coalesce(s.deferred, 0) AS deferred,
       coalesce(s.in_flight, 0) AS in_flight,
       s.oldest,
       s.next_attempt,
       q.paused,
       coalesce(q.backoff_until > now(), false) AS backoff,
       coalesce(c.connections, 0) AS connections,
       q.last_error,
       CASE WHEN q.deferred_until > now() THEN q.deferred_until END AS deferred_until,
       rk.key_domain AS rollup_key
  FROM mta.queue q
  LEFT JOIN LATERAL (
       SELECT count(*) AS queued,
              count(*) FILTER (WHERE r.next_attempt <= now()) AS ready,
              count(*) FILTER (WHERE r.next_attempt > now()
                                 AND NOT (r.owner IS NOT NULL AND r.lease_until > now()))
                  AS deferred,
              count(*) FILTER (WHERE r.owner IS NOT NULL AND r.lease_until > now())
                  AS in_flight,
              min(r.queued_at) AS oldest,
              min(r.next_attempt) FILTER (WHERE NOT (r.owner IS NOT NULL
                                                     AND r.lease_until > now()))
                  AS next_attempt
         FROM mta.recipients r
        WHERE r.pipe = q.pipe AND r.domain = q.domain AND r.vmta = q.vmta) s ON true
  LEFT JOIN mta.queue_slot_counts c ON c.domain = q.domain AND c.vmta = q.vmta
  LEFT JOIN LATERAL (
       SELECT k.key_domain
         FROM mta.slot_key k
        WHERE k.domain = q.domain AND k.vmta = q.vmta AND k.key_domain <> k.domain
        ORDER BY k.seen_at DESC
        LIMIT 1) rk ON true;

-- mta.connections (live SMTP connections cluster-wide, from pg_locks) is
-- defined in 080_shaping_views.

-- Node processes; alive: running and a heartbeat within the last 30 seconds.
CREATE OR REPLACE VIEW mta.nodes AS
SELECT n.id, n.name, n.pipe, n.process_index, n.pid, n.host, n.started_at, n.heartbeat_at,
       n.stopped_at, n.state,
       (n.state = 'running' AND n.heartbeat_at > now() - interval '30 seconds') AS alive
  FROM mta.node n;

-- One row per job. queued: recipients still in the queue; deferred: those of
-- them waiting for a retry; delivered/bounced: final accounting rows (through
-- the partial index acct_job, so asking for one job is cheap; listing every
-- job reads all of its accounting).
CREATE OR REPLACE VIEW mta.jobs AS
SELECT j.job_id,
       j.paused,
       coalesce(r.queued, 0) AS queued,
       coalesce(a.delivered, 0) AS delivered,
       coalesce(a.bounced, 0) AS bounced,
       coalesce(r.deferred, 0) AS deferred,
       j.created_at
  FROM mta.job j
  LEFT JOIN (SELECT rr.job_id, count(*) AS queued,
                    count(*) FILTER (WHERE rr.attempts > 0 AND rr.next_attempt > now()
                                       AND NOT (rr.owner IS NOT NULL AND rr.lease_until > now()))
                        AS deferred
               FROM mta.recipients rr
              WHERE rr.job_id IS NOT NULL
              GROUP BY rr.job_id) r ON r.job_id = j.job_id
  LEFT JOIN (SELECT aa.job_id, count(*) FILTER (WHERE aa.type = 'd') AS delivered,
                    count(*) FILTER (WHERE aa.type = 'b') AS bounced
               FROM mta.acct aa
              WHERE aa.job_id IS NOT NULL AND aa.type IN ('d', 'b')
              GROUP BY aa.job_id) a ON a.job_id = j.job_id;
