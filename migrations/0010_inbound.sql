-- 0010_inbound: what the inbound listener learns from bounces and feedback
-- reports (see README, Inbound bounces and feedback).
--
-- mta.acct.type widens from one letter to PowerMTA's record types: 'rb' (a
-- remote bounce: a DSN that arrived after the message was delivered) and
-- 'f' (a feedback report, ARF or JMRP). Changing the column's type rewrites
-- mta.acct once (every partition). The views that read the column are
-- dropped here and created again by sql/070_views.sql and
-- sql/100_webhooks.sql, which pgmta migrate applies right after.
DROP VIEW IF EXISTS mta.jobs;
DROP VIEW IF EXISTS mta.webhook_lag;
ALTER TABLE mta.acct DROP CONSTRAINT IF EXISTS acct_type_check;
ALTER TABLE mta.acct ALTER COLUMN type TYPE text;
ALTER TABLE mta.acct ADD CONSTRAINT acct_type_check
    CHECK (type IN ('r', 'd', 'b', 't', 'rb', 'f'));

-- PowerMTA's fields of 'rb' and 'f' records, in snake_case.
ALTER TABLE mta.acct
    ADD COLUMN reporting_mta text,          -- rb, f: Reporting-MTA or the report's sender host
    ADD COLUMN feedback_type text,          -- f: abuse, fraud, virus, not-spam, other, ...
    ADD COLUMN user_agent text,             -- f: the reporter's User-Agent
    ADD COLUMN arf_version text,
    ADD COLUMN arf_original_mail_from text,
    ADD COLUMN arf_original_rcpt_to text,
    ADD COLUMN arf_arrival_date text,
    ADD COLUMN arf_source_ip text,
    ADD COLUMN arf_reported_domain text,
    ADD COLUMN arf_message_id text;         -- the reported message's Message-ID

-- A report finds its delivery row: by recipient id (VERP) or by envelope id
-- and recipient. Only 'd' rows are indexed, and for ENVID only those that
-- have one: one more index entry per delivered recipient, no statement.
CREATE INDEX acct_delivered_rcpt ON mta.acct (rcpt_id) WHERE type = 'd';
CREATE INDEX acct_delivered_envid ON mta.acct (envid, rcpt)
    WHERE type = 'd' AND envid IS NOT NULL;

-- Reports that matched no delivery or could not be read, with the reason;
-- never dropped silently. headers holds the report's header section and
-- its first part's headers, cut at 16 KB by the listener.
CREATE TABLE mta.inbound_unmatched (
    id bigserial PRIMARY KEY,
    received timestamptz NOT NULL DEFAULT now(),
    reason text NOT NULL,
    kind text,                          -- dsn, arf, jmrp, bounce, unsubscribe, unknown
    mail_from text,
    rcpt_to text,
    client_ip text,
    report jsonb,                       -- what the parser read
    headers text CHECK (length(headers) <= 65536)
);
CREATE INDEX inbound_unmatched_received ON mta.inbound_unmatched (received);

-- Hard bounces counted per address, when suppression waits for more than
-- one (pgmta.suppress_after_hard_bounces > 1).
CREATE TABLE mta.hard_bounces (
    address text PRIMARY KEY,           -- mta.suppression_entry() form
    count int NOT NULL,
    last timestamptz NOT NULL DEFAULT now()
);
