-- 0006_recipient_meta: per-recipient metadata (campaign id, customer id, ...)
-- given at injection and returned in every accounting row of the recipient
-- (see README, "Over HTTP").
--
-- Kept off the hot recipient state (mta.recipients is untouched):
--   mta.messages.meta      the request's metadata, '{}' when only recipients
--                          carry some; NULL (every message injected without
--                          metadata) means "no recipient of this message has
--                          metadata", so mta.finish() looks nothing up for it
--   mta.recipient_meta     a recipient's own metadata, one row only for the
--                          recipients that have some; merged over the
--                          message's (the recipient's keys win). Keyed by
--                          (message_id, rcpt_id): mta.finish() finds a row by
--                          both, mta.purge_messages() deletes a message's rows
--                          with the message.
--   mta.acct.meta          the merged metadata of the event's recipient, NULL
--                          for recipients without metadata.
-- Every column added is nullable without a default: no table is rewritten.
ALTER TABLE mta.messages ADD COLUMN meta jsonb;

CREATE TABLE mta.recipient_meta (
    message_id bigint NOT NULL,
    rcpt_id bigint NOT NULL,            -- mta.recipients id (no foreign key, as
                                        -- mta.acct.rcpt_id: the recipient row goes
                                        -- when final, this row with the message)
    meta jsonb NOT NULL,
    PRIMARY KEY (message_id, rcpt_id)
);

ALTER TABLE mta.acct ADD COLUMN meta jsonb;
