-- 095_shaping_grants: rights on the traffic-shaping functions of
-- 050_shaping.sql. After 090_roles, which first takes every function in
-- schema mta away from the roles and then grants its own list; these grants
-- add to that list (mta_admin already has everything).
--
-- The slot statements themselves (pg_try_advisory_lock, pg_advisory_unlock,
-- hashtext) are PostgreSQL built-ins every role may call.

GRANT EXECUTE ON FUNCTION mta.take_tokens(text, text, text, int, int, int),
                          mta.claim_many_rated(bigint, text, text[], text[], int[], int,
                                               bigint[], int[], text[], text[], int[], int[],
                                               int[], int[], text[], int[], int[]),
                          mta.release_refund(bigint, bigint[], bigint[], text, text, int, int,
                                             text),
                          mta.node_set_lock_pid(bigint),
                          mta.queue_enter_backoff(text, text, timestamptz, text),
                          mta.queue_backoff_state(text, text),
                          mta.queue_connections(text, text),
                          mta.queue_key(text, text),
                          mta.purge_rate_buckets(interval),
                          mta.backoff_expire()
    TO mta_node;

-- Read-only: the views (mta.queues counts connections with
-- mta.queue_connections, and a view's caller needs EXECUTE on the functions
-- it calls).
GRANT EXECUTE ON FUNCTION mta.queue_backoff_state(text, text),
                          mta.queue_connections(text, text),
                          mta.queue_key(text, text)
    TO mta_monitor;
GRANT SELECT ON mta.slot_locks TO mta_node, mta_monitor;

-- Scheduling (sql/040_node.sql) and connection slots with their key
-- (080_shaping_views.sql).
GRANT EXECUTE ON FUNCTION mta.queue_postpone(text, text, text, int),
                          mta.take_slot(text, text, int, int[], text, text),
                          mta.take_slot_prio(text, text, int, int[], text, text, int, bigint, int),
                          mta.slot_waiting(text[], text[], int[])
    TO mta_node;
