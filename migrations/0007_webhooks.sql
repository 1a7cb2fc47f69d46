-- 0007_webhooks: the per-consumer cursor of the webhook senders and the
-- event id they order by (see README, Webhooks). Functions, the lag view and
-- the grants live in sql/100_webhooks.sql.
--
--   mta.acct.id        a unique event id from mta.acct_id_seq. Added without
--                      rewriting the table: rows logged before this migration
--                      keep NULL and are never sent (a consumer starts at the
--                      time it is first seen).
--   acct_webhook       (time_logged, id): the order events are sent in and the
--                      index the next batch is read through (one more B-tree
--                      insertion per accounting row, the price of reading the
--                      next batch in O(batch) at any lag).
--   mta.webhook_cursor one row per consumer: the position (time_logged, id) of
--                      the last event the consumer acknowledged (2xx).
CREATE SEQUENCE mta.acct_id_seq;
ALTER TABLE mta.acct ADD COLUMN id bigint;
ALTER TABLE mta.acct ALTER COLUMN id SET DEFAULT nextval('mta.acct_id_seq');
CREATE INDEX acct_webhook ON mta.acct (time_logged, id);

CREATE TABLE mta.webhook_cursor (
    consumer text PRIMARY KEY,
    last_time timestamptz NOT NULL DEFAULT now(),
    last_id bigint NOT NULL DEFAULT 0,
    delivered bigint NOT NULL DEFAULT 0,  -- events acknowledged in all
    updated_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    failures int NOT NULL DEFAULT 0,      -- consecutive failed attempts
    last_attempt timestamptz,
    types text,                           -- the consumer's filters, as last used
    job_prefix text
);
