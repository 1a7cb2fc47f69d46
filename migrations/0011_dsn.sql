-- 0011_dsn: the DSN options of RFC 3461 given at injection (see README,
-- "DSN options"), stored so that every node can pass them on or honour them.
--
--   mta.recipients.dsn_notify    NOTIFY as a bitmask: 1 SUCCESS, 2 FAILURE,
--                                4 DELAY; 0 is NEVER; NULL: not given
--                                (a failure DSN, no delay or success DSN)
--   mta.recipients.dsn_orcpt     ORCPT decoded from xtext, "addr-type;address"
--                                (e.g. "rfc822;ann@example.net"); NULL: none
--   mta.recipients.dsn_delay_at  when the last delay DSN for the recipient
--                                was enqueued; NULL: none yet. Written by
--                                mta.finish() in the statement that defers
--                                the recipient, so the cluster sends each
--                                one once.
--   mta.messages.dsn_ret         RET: 'F' FULL, 'H' HDRS; NULL: not given
--                                (headers only)
--   mta.acct.orcpt               the recipient's ORCPT, as PowerMTA's field
--
-- On the hot recipient table because the claim returns them with each row
-- (no lookup elsewhere) and mta.finish() reads them in the row it updates or
-- deletes anyway. Every column is nullable without a default: no table is
-- rewritten, and a recipient without DSN options costs nothing but its null
-- bits.
ALTER TABLE mta.recipients ADD COLUMN dsn_notify smallint,
                           ADD COLUMN dsn_orcpt text,
                           ADD COLUMN dsn_delay_at timestamptz;
ALTER TABLE mta.messages ADD COLUMN dsn_ret char(1) CHECK (dsn_ret IN ('F', 'H'));
ALTER TABLE mta.acct ADD COLUMN orcpt text;
