-- 080_shaping_views: the view mta.connections (DESIGN §6), one row per live
-- SMTP connection cluster-wide, read from the connection-slot advisory locks
-- (see 050_shaping.sql), and mta.take_slot(), which takes a slot and records
-- the key it is held under. It comes after 070_views so that it replaces the
-- placeholder defined there; the columns are the placeholder's.
--
-- A lock shows only a hash of its key. The key is a queue's (domain, vmta)
-- for a plain queue, but "rollup:NAME" for a domain with an mx-rollup and
-- the member's name for a queue whose virtual MTA is a pool: names that only
-- the node's configuration knows. mta.take_slot() therefore records each
-- (key, queue) pair it takes a slot for in mta.slot_key; keys of plain
-- queues are also found from mta.queue, so slots taken without it still show.
--
--   domain, vmta  the key the slot is held under (vmta NULL for none);
--                 domain NULL for a slot whose key is unknown here
--   node          name of the node holding the slot (mta.node.lock_pid is the
--                 pid of its slot session); NULL if the holder never registered
--   slot          0 .. max-smtp-out - 1
--   since         when the holder's slot session was established (PostgreSQL
--                 does not record when a lock was granted)

-- Contract (node, slot session): takes the first free slot of the key
-- (p_key_domain, p_key_vmta) with at most p_max slots cluster-wide, skipping
-- the slots this session holds already (p_held: advisory locks are
-- re-entrant), and records that the key serves the queue (p_domain,
-- p_vmta). One row with the slot, or no row when every slot is taken. The
-- same lock as
--     pg_try_advisory_lock(1347223552 + slot, hashtext(key_domain || '/' || key_vmta)),
-- so nodes that take it that way share the slots.
CREATE OR REPLACE FUNCTION mta.take_slot(p_key_domain text, p_key_vmta text, p_max int,
                                         p_held int[], p_domain text DEFAULT NULL,
                                         p_vmta text DEFAULT NULL)
RETURNS TABLE (slot int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_kvmta text := coalesce(p_key_vmta, '');
    v_domain text := coalesce(p_domain, p_key_domain);
    v_vmta text := coalesce(p_vmta, p_key_vmta, '');
    v_hash int := hashtext(p_key_domain || '/' || v_kvmta);
    s int;
BEGIN
    IF p_key_domain IS NULL OR p_max IS NULL THEN
        RAISE EXCEPTION 'take_slot: key domain and max are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR s IN 0 .. least(p_max, 65536) - 1 LOOP
        CONTINUE WHEN s = ANY (coalesce(p_held, '{}'));
        IF pg_try_advisory_lock(1347223552 + s, v_hash) THEN
            -- A plain queue is its own key: the views find it by hash, and
            -- recording it would cost a write per new connection.
            IF (v_domain <> p_key_domain OR v_vmta <> v_kvmta)
               AND NOT EXISTS (SELECT 1 FROM mta.slot_key k
                            WHERE k.key_domain = p_key_domain AND k.key_vmta = v_kvmta
                              AND k.domain = v_domain AND k.vmta = v_vmta) THEN
                -- A session lock outlives an aborted transaction: never let
                -- the bookkeeping fail the call that took it.
                BEGIN
                    INSERT INTO mta.slot_key (key_domain, key_vmta, domain, vmta, queue_key)
                    VALUES (p_key_domain, v_kvmta, v_domain, v_vmta,
                            v_hash::bigint & 4294967295)
                    ON CONFLICT DO NOTHING;
                EXCEPTION WHEN OTHERS THEN
                    NULL;
                END;
            END IF;
            slot := s;
            RETURN NEXT;
            RETURN;
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE VIEW mta.connections AS
SELECT c.domain, c.vmta, c.node, c.slot, c.since
  FROM (SELECT DISTINCT ON (l.pid, l.queue_key, l.slot)
               k.key_domain AS domain, nullif(k.key_vmta, '') AS vmta, n.name AS node, l.slot,
               n.lock_since AS since
          FROM mta.slot_locks l
          LEFT JOIN mta.slot_keys k ON k.queue_key = l.queue_key
          LEFT JOIN mta.node n ON n.lock_pid = l.pid
         ORDER BY l.pid, l.queue_key, l.slot, k.pref) c;
