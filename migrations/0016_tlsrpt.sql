-- 0016_tlsrpt: the TLS-RPT reports (RFC 8460) built for the whole cluster
-- (see README, TLS-RPT). One row per policy domain and UTC day: the primary
-- key is what makes it exactly one report per domain per day, whichever
-- node builds it.
--
-- report        the JSON built once (mta.tlsrpt_report), sent as is on
--               every retry
-- claimed_by,   the node sending it now; after claimed_until another node
--  claimed_until (or a later tick) may try again
-- done_rua      the rua URIs that already took the report (not sent again)
-- sent_at       every rua took it; NULL: still to send
-- attempts,     failed rounds and the last reason
--  last_error
CREATE TABLE mta.tlsrpt_sent (
    policy_domain text NOT NULL CHECK (policy_domain = lower(policy_domain)),
    day date NOT NULL,
    report_id text NOT NULL,
    report json NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text,
    claimed_by text,
    claimed_until timestamptz,
    done_rua text[] NOT NULL DEFAULT '{}',
    sent_at timestamptz,
    attempts int NOT NULL DEFAULT 0,
    last_error text,
    PRIMARY KEY (policy_domain, day)
);
CREATE INDEX tlsrpt_sent_unsent ON mta.tlsrpt_sent (day) WHERE sent_at IS NULL;
