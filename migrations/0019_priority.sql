-- 0019_priority: priorities and job fairness in the claim (see README,
-- Priorities).
--
-- mta.recipients.priority is the message's priority (mta.enqueue's argument,
-- mta.submit's column), 0 to 100, copied onto each recipient at enqueue so
-- that the claim orders by it without reading mta.messages. Adding a column
-- with a constant default rewrites nothing.
ALTER TABLE mta.recipients ADD COLUMN priority smallint NOT NULL DEFAULT 0;

-- The claim band of a recipient: its priority (highest first) and its job,
-- in one sortable value, so that the claim can visit the (priority, job)
-- groups of a queue with one index probe each. Immutable: it is an index
-- expression, and every query must spell it the same way. No SET clause:
-- the function is inlined, so an insert pays no function call per row.
CREATE FUNCTION mta.claim_band(p_priority smallint, p_job_id text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT pg_catalog.lpad((100 - greatest(0, least(100, p_priority)))::text, 3, '0')
           OPERATOR(pg_catalog.||) '/' OPERATOR(pg_catalog.||) coalesce(p_job_id, '')
$$;

-- The claim path (mta.claim_many): the ready rows of one band of a queue,
-- oldest first, are one range scan; the next band is one probe.
CREATE INDEX recipients_claim_band ON mta.recipients
    (pipe, domain, vmta, mta.claim_band(priority, job_id), next_attempt);

-- Cluster-wide slot priority: a queue whose slot request found every slot
-- of its limit key taken waits here with its priority; a queue of lower
-- priority does not take a slot of the key while a waiter above it is
-- live (until). A waiter refreshes its row on every try and removes it
-- when it gets a slot; a waiter that died stops counting at until.
CREATE TABLE mta.slot_waiter (
    key_domain text NOT NULL,
    key_vmta text NOT NULL,
    domain text NOT NULL,
    vmta text NOT NULL,
    priority smallint NOT NULL,
    node bigint,
    until timestamptz NOT NULL,
    PRIMARY KEY (key_domain, key_vmta, domain, vmta)
);
