-- 0017_retry: cluster-wide actions of smtp-pattern-list (functions in
-- sql/055_retry.sql).
--
-- defer-queue: no node claims from the queue while deferred_until > now()
-- (checked once per queue by mta.claim_many); it ends by itself, nobody
-- clears it. last_error says why.
ALTER TABLE mta.queue ADD COLUMN deferred_until timestamptz;

-- disable-source-ip: the source IP is not used for the domain while
-- until > now(); the other members of a pool take the traffic. A few rows
-- at most per domain; expired rows are ignored and removed by the next
-- disable of the same pair or by mta.source_ip_expire().
CREATE TABLE mta.source_ip_disabled (
    domain text NOT NULL,
    source_ip text NOT NULL,
    until timestamptz NOT NULL,
    since timestamptz NOT NULL DEFAULT now(),
    reason text,
    PRIMARY KEY (domain, source_ip)
);
