-- 0002_shaping: tables behind the cluster-wide traffic shaping (DESIGN §4.5,
-- §4.6). Functions and the view mta.connections live in sql/050_shaping.sql
-- and sql/080_shaping_views.sql.
--
-- Connection slots are session advisory locks held by one dedicated database
-- session per node; pg_locks shows their backend pid only. lock_pid is that
-- session's pid (set by mta.node_set_lock_pid() after every (re)connect), so
-- the view mta.connections can name the node holding each slot. lock_since is
-- when that session registered.
ALTER TABLE mta.node ADD COLUMN lock_pid int;
ALTER TABLE mta.node ADD COLUMN lock_since timestamptz;
CREATE INDEX node_lock_pid ON mta.node (lock_pid) WHERE lock_pid IS NOT NULL;

-- Rate limits (max-msg-rate, max-connect-rate): one token bucket per queue and
-- kind. tokens is refilled continuously at limit/period when a node takes some
-- (mta.take_tokens), capped at a burst of about one second's worth. Tiny rows,
-- updated on every reservation: a low fillfactor keeps the updates HOT.
CREATE TABLE mta.rate_bucket (
    domain text NOT NULL,
    vmta text NOT NULL DEFAULT '',
    kind text NOT NULL CHECK (kind IN ('msg', 'connect')),
    tokens float8 NOT NULL,
    refilled_at timestamptz NOT NULL,
    PRIMARY KEY (domain, vmta, kind)
) WITH (fillfactor = 50);
