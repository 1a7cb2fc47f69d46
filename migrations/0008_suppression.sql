-- 0008_suppression: addresses and domains that are never queued (see README,
-- Suppression). Every injection path (mta.enqueue, mta.enqueue_batch,
-- mta.inject_batch, mta.submit) looks its recipients up here in the
-- statement that enqueues them; a match is not queued and gets a 'b'
-- accounting row with bounce_cat 'suppressed'.
--
-- address   an address entry: the local part as given (as mta.recipients.rcpt
--           keeps it: local parts may be case-sensitive, RFC 5321 §2.4) and
--           the domain lower-cased (as mta.recipients.domain);
--           a domain entry: '@' and the lower-cased domain.
--           mta.suppression_entry() (sql/015_suppression.sql) makes both.
-- scope     NULL: every job. Otherwise a job id prefix: the entry applies to
--           the jobs whose id starts with it (a tenant or a campaign).
-- expires   NULL: never; once past, the entry no longer suppresses.
--
-- The unique index is the lookup: a recipient is one or two index probes
-- (its address, its domain), a bulk load one hash or merge join on address.
CREATE TABLE mta.suppression (
    address text NOT NULL CHECK (address <> '' AND address !~ '[\x01-\x1f\x7f]'),
    scope text CHECK (scope <> ''),
    reason text,
    source text NOT NULL DEFAULT 'manual'
        CHECK (source IN ('manual', 'import', 'bounce', 'complaint', 'unsubscribe')),
    created timestamptz NOT NULL DEFAULT now(),
    expires timestamptz,
    CONSTRAINT suppression_key UNIQUE NULLS NOT DISTINCT (address, scope)
);
