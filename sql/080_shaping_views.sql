-- 080_shaping_views: the view mta.connections (DESIGN §6), one row per live
-- SMTP connection cluster-wide, read from the connection-slot advisory locks
-- (see 050_shaping.sql). It comes after 070_views so that it replaces the
-- placeholder defined there; the columns are the placeholder's.
--
--   domain, vmta  the queue (vmta NULL for none); a lock whose queue has no row
--                 in mta.queue (deleted meanwhile) is not shown
--   node          name of the node holding the slot (mta.node.lock_pid is the
--                 pid of its slot session); NULL if the holder never registered
--   slot          0 .. max-smtp-out - 1
--   since         when the holder's slot session was established (PostgreSQL
--                 does not record when a lock was granted)
CREATE OR REPLACE VIEW mta.connections AS
SELECT q.domain,
       nullif(q.vmta, '') AS vmta,
       n.name AS node,
       l.slot,
       n.lock_since AS since
  FROM mta.slot_locks l
  JOIN (SELECT DISTINCT qq.domain, qq.vmta FROM mta.queue qq) q
    ON (hashtext(q.domain || '/' || q.vmta)::bigint & 4294967295) = l.queue_key
  LEFT JOIN mta.node n ON n.lock_pid = l.pid;
