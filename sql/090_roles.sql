-- 090_roles: least-privilege roles (DESIGN §6). Group roles without LOGIN;
-- grant them to login roles. Re-applied by every `pgmta migrate`: it first
-- takes everything in schema mta away from PUBLIC, then grants exactly this.
--
--   mta_inject   enqueue only: EXECUTE mta.enqueue (both overloads), INSERT
--                (and so COPY) into mta.submit. Cannot read any table, not
--                even mta.submit.
--   mta_node     what pgmtad needs: the node functions, enqueue (SMTP
--                injection), pause/resume (HTTP API), housekeeping, the
--                views, and the queue's backoff columns.
--   mta_admin    everything in schema mta.
--   mta_monitor  SELECT on the views, mta.acct, mta.suppression and
--                mta.inject_count, and mta.suppressed(), nothing else.
--
-- All API functions are SECURITY DEFINER with a fixed search_path, so the
-- roles need no rights on the tables behind them.
--
-- Other sql/ files may grant their own functions to these roles (e.g. the
-- shaping functions to mta_node): only PUBLIC's rights are revoked here, so
-- such grants survive, whichever file comes first.
--
-- mta_node's idle_in_transaction_session_timeout applies to sessions that log
-- in as mta_node itself; role settings are not inherited by member roles, so
-- set it on the daemon's login role too (or in the daemon's session).

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['mta_inject', 'mta_node', 'mta_admin', 'mta_monitor'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created meanwhile by a migration of another database
            END;
        END IF;
    END LOOP;
END
$$;

ALTER ROLE mta_node SET idle_in_transaction_session_timeout = '30s';

REVOKE ALL ON ALL TABLES IN SCHEMA mta FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA mta FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA mta FROM PUBLIC;
REVOKE ALL ON SCHEMA mta FROM PUBLIC;
-- New functions are executable by PUBLIC when created; all sql/ files are
-- applied in one transaction, so the REVOKE above closes that before commit.

GRANT USAGE ON SCHEMA mta TO mta_inject, mta_node, mta_admin, mta_monitor;

-- mta_inject
GRANT EXECUTE ON FUNCTION mta.enqueue(text, text[], text, text, text, text, text, int, timestamptz),
                          mta.enqueue(text, text[], bytea, text, text, text, text, int, timestamptz)
    TO mta_inject;
GRANT INSERT ON mta.submit TO mta_inject;
GRANT USAGE ON SEQUENCE mta.submit_id_seq TO mta_inject;

-- mta_node
GRANT EXECUTE ON FUNCTION mta.enqueue(text, text[], text, text, text, text, text, int, timestamptz),
                          mta.enqueue(text, text[], bytea, text, text, text, text, int, timestamptz),
                          mta.node_register(text, text, int, int, text),
                          mta.node_heartbeat(bigint),
                          mta.node_stop(bigint),
                          mta.register_pipes(text[], text),
                          mta.ready_queues(text, int),
                          mta.claim(bigint, text, text, text, int, int, bigint),
                          mta.claim_many(bigint, text, text[], text[], int[], int, bigint[], int[]),
                          mta.finish(bigint, text, bigint[], bigint[], text[], timestamptz[],
                                     text[], text[], text[], text[], text[], text[], text[],
                                     text[], bool, text[], text[], text[], bool[], int[]),
                          mta.mta_sts_get(text, text, text),
                          mta.mta_sts_put(text, text, text, text, text[], int),
                          mta.mta_sts_failed(text, text, text),
                          mta.mta_sts_domains(),
                          mta.release(bigint, bigint[], bigint[]),
                          mta.set_aside(bigint[], bigint[], text),
                          mta.pause_queue(text, text),
                          mta.resume_queue(text, text),
                          mta.pause_job(text),
                          mta.resume_job(text),
                          mta.purge_messages(int),
                          mta.purge_queues(),
                          mta.acct_ensure_partitions(int),
                          mta.inject_count_compact(),
                          mta.inject_batch(text, bytea[], text[], int[], text, text, text, text)
    TO mta_node;
GRANT INSERT ON mta.submit TO mta_node;
GRANT USAGE ON SEQUENCE mta.submit_id_seq TO mta_node;
GRANT SELECT ON mta.queues, mta.connections, mta.nodes, mta.jobs TO mta_node;
GRANT SELECT ON mta.queue, mta.pipes, mta.node, mta.job TO mta_node;
-- HTTP injection with the suppressed recipients named (026_inject.sql)
GRANT EXECUTE ON FUNCTION mta.inject_request(text, bytea[], text[], int[], text, text, text,
                                             text, jsonb, text[])
    TO mta_node;
-- group commit of the SMTP listener (025_enqueue_batch.sql)
GRANT EXECUTE ON FUNCTION mta.enqueue_batch(text[], int[], text[], bytea[], text[], text[],
                                            text[], text[], text[], smallint[], text[])
    TO mta_node;
GRANT UPDATE (backoff, backoff_until, last_error, last_error_at) ON mta.queue TO mta_node;
-- cluster-wide pattern actions: defer-queue, disable-source-ip (055_retry.sql)
GRANT EXECUTE ON FUNCTION mta.queue_defer(text, text, int, text),
                          mta.source_ip_disable(text, text, int, text),
                          mta.source_ips_disabled(),
                          mta.source_ip_expire()
    TO mta_node;
GRANT SELECT ON mta.source_ip_disabled TO mta_node, mta_monitor;
-- one-click and mailto: unsubscribes (016_unsubscribe.sql)
GRANT EXECUTE ON FUNCTION mta.unsubscribe(text, text, text, text) TO mta_node;
-- the node's HTTP API (status, dashboard, metrics) reads the accounting
GRANT SELECT ON mta.acct TO mta_node;
-- and the SQL door's counter (GET /metrics; written only by the SECURITY
-- DEFINER enqueue functions, so mta_inject needs no right on it)
GRANT SELECT ON mta.inject_count TO mta_node;

-- mta_admin
GRANT ALL ON ALL TABLES IN SCHEMA mta TO mta_admin;
GRANT ALL ON ALL SEQUENCES IN SCHEMA mta TO mta_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA mta TO mta_admin;

-- mta_monitor
GRANT SELECT ON mta.queues, mta.connections, mta.nodes, mta.jobs TO mta_monitor;
-- the suppression list (managed by mta_admin; mta_inject and mta_node only
-- meet it inside the enqueue functions)
GRANT SELECT ON mta.suppression TO mta_monitor;
GRANT EXECUTE ON FUNCTION mta.suppressed(text, text) TO mta_monitor;
-- and the accounting, as README (Watching and steering) says
GRANT SELECT ON mta.acct TO mta_monitor;
-- the shared MTA-STS policy cache (sql/018_mta_sts.sql)
GRANT SELECT ON mta.mta_sts TO mta_monitor;
-- the SQL door's counter (migrations/0014_inject_count.sql)
GRANT SELECT ON mta.inject_count TO mta_monitor;
-- TLS-RPT reports (sql/019_tlsrpt.sql)
GRANT EXECUTE ON FUNCTION mta.tlsrpt_claim(text, date, text, text, bool, int),
                          mta.tlsrpt_done(text, date, text, text[], text, int),
                          mta.tlsrpt_report(text, date, text, text),
                          mta.tlsrpt_reports(date, text, text, text)
    TO mta_node;
GRANT EXECUTE ON FUNCTION mta.tlsrpt_report(text, date, text, text),
                          mta.tlsrpt_reports(date, text, text, text)
    TO mta_monitor;
GRANT SELECT ON mta.tlsrpt_sent TO mta_monitor;
-- IP warm-up (sql/056_warmup.sql): the node reserves, refunds and decides;
-- the status view is for everyone who watches
GRANT EXECUTE ON FUNCTION mta.warmup_take(text, text, int), mta.warmup_refund(text, text, int),
    mta.warmup_advance(date) TO mta_node;
GRANT SELECT ON mta.warmup_status TO mta_node, mta_monitor;
GRANT EXECUTE ON FUNCTION mta.warmup_sent(text, text, timestamptz),
    mta.warmup_counter(text, text) TO mta_node, mta_monitor;
