-- 0012_mta_sts: the MTA-STS policy cache shared by every node (RFC 8461 §5,
-- see README, MTA-STS), and the TLS outcome of every attempt in mta.acct for
-- TLS-RPT (RFC 8460).
--
-- mta.mta_sts, one row per policy domain (the recipient domain):
-- txt_id        the id of the _mta-sts TXT record the policy was fetched for
-- mode, mx,     the policy; NULL before the first successful fetch
--  max_age
-- fetched_at,   when it was fetched, fetched_at + max_age: after that the
--  expires_at   policy is no longer used
-- last_error,   the last failed fetch (kept apart from the policy: a failed
--  last_error_at refresh keeps the cached policy, RFC 8461 §5.1)
-- fetching_node, a node fetching it now, until then: the others use the
--  fetching_until cached policy meanwhile instead of fetching too
CREATE TABLE mta.mta_sts (
    domain text PRIMARY KEY CHECK (domain = lower(domain) AND domain <> ''),
    txt_id text,
    mode text CHECK (mode IN ('enforce', 'testing', 'none')),
    mx text[],
    max_age int CHECK (max_age BETWEEN 0 AND 31557600),
    fetched_at timestamptz,
    expires_at timestamptz,
    last_error text,
    last_error_at timestamptz,
    fetching_node text,
    fetching_until timestamptz,
    CHECK ((mode IS NULL) = (expires_at IS NULL))
);

-- Per attempt (d, b and t rows): tls_policy is RFC 8460's policy-type of the
-- policy that applied ('sts', 'no-policy-found'; NULL: none was looked up),
-- tls_failure its result-type when something failed
-- ('starttls-not-supported', 'certificate-host-mismatch',
-- 'certificate-expired', 'certificate-not-trusted', 'validation-failure',
-- 'sts-policy-fetch-error', 'sts-policy-invalid'), tls_policy_domain the
-- policy's domain.
ALTER TABLE mta.acct ADD COLUMN tls_policy text, ADD COLUMN tls_failure text,
    ADD COLUMN tls_policy_domain text;
