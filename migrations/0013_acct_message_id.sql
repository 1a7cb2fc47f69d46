-- 0013_acct_message_id: the Message-ID header of a delivered message in its
-- 'd' accounting rows, so that an inbound report without a VERP address or
-- a matching ENVID still finds the recipient by the Message-ID of the
-- enclosed original (sql/017_inbound.sql): the message itself is purged once
-- its recipients are final. Kept without the angle brackets, as reports quote
-- it either way. The partial index costs one more B-tree insertion per
-- delivered recipient whose message has a Message-ID.
ALTER TABLE mta.acct ADD COLUMN header_message_id text;
CREATE INDEX acct_delivered_msgid ON mta.acct (header_message_id, rcpt)
    WHERE type = 'd' AND header_message_id IS NOT NULL;
