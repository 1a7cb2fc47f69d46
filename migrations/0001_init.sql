-- 0001_init: the queue schema of pgmta (DESIGN §4).
--
-- Layout, from hot to cold:
--   mta.recipients  per-recipient queue state: tiny rows, updated by every
--                   claim and finish, low fillfactor so updates stay on the page
--   mta.queue       one row per destination queue (domain, vmta, pipe); the
--                   scheduler reads this small table, never scans recipients
--   mta.messages    insert-only message content, deleted by mta.purge_messages()
--                   once no recipient refers to it
--   mta.acct        insert-only accounting, partitioned by day (UTC) so old days
--                   are dropped, not deleted
-- Functions, views and roles live in sql/ and are re-applied by `pgmta migrate`.

CREATE SCHEMA IF NOT EXISTS mta;

-- `pgmta migrate` creates this table itself before the first migration.
CREATE TABLE IF NOT EXISTS mta.schema_migrations (
    version int PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Traffic classes. Nodes add their configured pipes with mta.register_pipes().
CREATE TABLE mta.pipes (
    name text PRIMARY KEY,
    is_default bool NOT NULL DEFAULT false
);
-- At most one default pipe: enqueue without a pipe must be unambiguous.
CREATE UNIQUE INDEX pipes_one_default ON mta.pipes ((true)) WHERE is_default;
INSERT INTO mta.pipes (name, is_default) VALUES ('transactional', false), ('bulk', true);

CREATE TABLE mta.messages (
    id bigserial PRIMARY KEY,
    mail_from text NOT NULL,            -- '' is the null sender <>
    content bytea NOT NULL,
    size int NOT NULL,
    job_id text,
    envid text,
    vmta text,
    pipe text NOT NULL,
    priority int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    message_id_header text              -- the Message-ID header value, NULL if absent
);

-- Domains are stored lower-cased exactly as given otherwise: an internationalised
-- domain stays in its UTF-8 form (no IDNA/punycode conversion here), so a queue of
-- "bücher.example" and one of "xn--bcher-kva.example" are two queues. The SMTP
-- client decides how to look such a domain up.
CREATE TABLE mta.recipients (
    id bigserial PRIMARY KEY,
    -- No foreign key to mta.messages: it would cost a lookup per recipient on
    -- the bulk enqueue path (measured: ~10% of a COPY into mta.submit). A
    -- message and its recipients are inserted in one statement or transaction,
    -- and mta.purge_messages() deletes only messages no recipient refers to.
    message_id bigint NOT NULL,
    rcpt text NOT NULL,
    domain text NOT NULL,               -- lower-cased domain part of rcpt
    vmta text NOT NULL DEFAULT '',      -- '' = no virtual MTA chosen
    pipe text NOT NULL,
    job_id text,
    next_attempt timestamptz NOT NULL,  -- ready when <= now(); a claim sets it to the
                                        -- lease expiry, so leased rows are not ready
                                        -- and expired leases become ready by themselves
    attempts int NOT NULL DEFAULT 0,
    queued_at timestamptz NOT NULL,
    owner bigint,                       -- mta.node id holding the lease
    lease_until timestamptz,
    lease_token bigint,                 -- fencing token: finish/release must present it
    last_error text
) WITH (fillfactor = 70);

-- The claim path: "ready rows of one queue, oldest first" is one index range
-- scan (equality on the queue key, range on next_attempt); mta.ready_queues()
-- probes it once per queue. Deferred rows sort after the ready ones, so they
-- never slow the claim.
CREATE INDEX recipients_claim ON mta.recipients (pipe, domain, vmta, next_attempt);
-- mta.purge_messages() asks "does any recipient still refer to this message?".
CREATE INDEX recipients_message ON mta.recipients (message_id);
-- mta.node_stop() releases the leases of one node; only leased rows are indexed,
-- which are few, so the index stays small.
CREATE INDEX recipients_owner ON mta.recipients (owner) WHERE owner IS NOT NULL;

-- Lease tokens: unique over all claims, so a late finish after a takeover never
-- matches the new lease.
CREATE SEQUENCE mta.lease_token_seq;

-- One row per destination queue, created at enqueue (INSERT ... ON CONFLICT DO
-- NOTHING). vmta '' = no virtual MTA.
CREATE TABLE mta.queue (
    pipe text NOT NULL,
    domain text NOT NULL,
    vmta text NOT NULL DEFAULT '',
    paused bool NOT NULL DEFAULT false,
    backoff bool NOT NULL DEFAULT false,
    backoff_until timestamptz,
    last_error text,
    last_error_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipe, domain, vmta)
);
-- mta.pause_queue(domain) and the views look queues up by domain across pipes.
CREATE INDEX queue_domain ON mta.queue (domain, vmta);

CREATE TABLE mta.job (
    job_id text PRIMARY KEY,
    paused bool NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Nodes (one row per process start); the view mta.nodes (sql/) shows them.
CREATE TABLE mta.node (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    pipe text,                          -- NULL for the root process
    process_index int,
    pid int,
    host text,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at timestamptz,
    state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'stopped'))
);

-- Accounting: one row per event. Partitioned by day (UTC); the daily partitions
-- are created ahead by mta.acct_ensure_partitions(), which `pgmta migrate` runs
-- and nodes call once a day. Rows of a day without a partition land in the
-- DEFAULT partition and stay there.
--
-- Indexes are kept off this table: every enqueue, delivery and bounce inserts
-- here, and each index is one more B-tree insertion per row on that hot path.
-- The only index is the small partial one the mta.jobs view needs (sql/).
CREATE TABLE mta.acct (
    type char(1) NOT NULL CHECK (type IN ('r', 'd', 'b', 't')),
    time_logged timestamptz NOT NULL DEFAULT now(),
    time_queued timestamptz,
    orig text,
    rcpt text,
    dsn_action text,
    dsn_status text,
    dsn_diag text,
    dsn_mta text,
    bounce_cat text,
    dlv_source_ip text,
    dlv_destination_ip text,
    dlv_size int,
    vmta text,
    job_id text,
    envid text,
    queue text,                         -- domain, or domain/vmta
    pipe text,
    node text,
    message_id bigint,
    attempt int,
    tls_protocol text,
    tls_cipher text,
    rcpt_id bigint                      -- mta.recipients id (not a foreign key: the
                                        -- recipient row is gone once final)
) PARTITION BY RANGE (time_logged);
CREATE TABLE mta.acct_default PARTITION OF mta.acct DEFAULT;
-- mta.jobs counts delivered and bounced recipients per job; only final rows of
-- jobs are indexed (partial), created on each partition automatically.
CREATE INDEX acct_job ON mta.acct (job_id) WHERE job_id IS NOT NULL AND type IN ('d', 'b');

-- Recipients set aside because they cannot be processed (a row holding
-- nonsense, or an administrator's decision), with the reason.
CREATE TABLE mta.quarantine (
    id bigint PRIMARY KEY,              -- the former mta.recipients id
    message_id bigint NOT NULL,
    rcpt text,
    domain text,
    vmta text,
    pipe text,
    job_id text,
    next_attempt timestamptz,
    attempts int,
    queued_at timestamptz,
    owner bigint,
    lease_until timestamptz,
    lease_token bigint,
    last_error text,
    reason text NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now()
);
-- mta.purge_messages() keeps the content of quarantined recipients.
CREATE INDEX quarantine_message ON mta.quarantine (message_id);

-- Bulk enqueue staging table: INSERT or COPY one row per recipient; a statement
-- trigger (sql/030_submit.sql) moves the rows into the queue and deletes them
-- within the same statement, so the table is always empty when seen from
-- outside. UNLOGGED: the rows never outlive their transaction, so writing them
-- to the WAL would be wasted work.
CREATE UNLOGGED TABLE mta.submit (
    id bigserial PRIMARY KEY,
    mail_from text,
    rcpt_to text,
    content text,
    job_id text,
    vmta text,
    pipe text,
    envid text,
    priority int,
    not_before timestamptz
);
