-- 045_priority: cluster-wide slot priority (see README, Priorities).
--
-- Every queue has a priority (queue-priority, 0-100). When every slot of a
-- limit key (a queue, a rollup, a pool member) is taken, the queue that asked
-- waits in mta.slot_waiter with its priority; a queue of lower priority then
-- takes no slot of the key while a waiter above it is live, so the next free
-- slot goes to the highest waiting queue, whichever node frees it. A waiter
-- is live for p_wait_ms after its last try: a queue that stops asking (its
-- node died, its work was done elsewhere) stops holding the others back.

-- Contract (node, slot session): mta.take_slot for a queue of priority
-- p_priority: no row while a live waiter of higher priority waits for the
-- key (another queue), or when every slot is taken; the queue then waits
-- (its row refreshed) for p_wait_ms. A slot taken ends the queue's wait.
-- With no waiter for the key (the common case) one index probe more than
-- mta.take_slot, and no write.
CREATE OR REPLACE FUNCTION mta.take_slot_prio(p_key_domain text, p_key_vmta text, p_max int,
                                              p_held int[], p_domain text, p_vmta text,
                                              p_priority int, p_node bigint, p_wait_ms int)
RETURNS TABLE (slot int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_kvmta text := coalesce(p_key_vmta, '');
    v_domain text := coalesce(p_domain, p_key_domain);
    v_vmta text := coalesce(p_vmta, p_key_vmta, '');
    v_prio smallint := greatest(0, least(100, coalesce(p_priority, 50)));
    v_slot int;
    v_waiting bool;
BEGIN
    v_waiting := EXISTS (SELECT 1 FROM mta.slot_waiter w
                          WHERE w.key_domain = p_key_domain AND w.key_vmta = v_kvmta);
    IF v_waiting AND EXISTS (SELECT 1 FROM mta.slot_waiter w
                              WHERE w.key_domain = p_key_domain AND w.key_vmta = v_kvmta
                                AND w.priority > v_prio AND w.until > now()
                                AND (w.domain, w.vmta) <> (v_domain, v_vmta)) THEN
        v_slot := NULL;
    ELSE
        SELECT t.slot INTO v_slot
          FROM mta.take_slot(p_key_domain, p_key_vmta, p_max, p_held, p_domain, p_vmta) t;
    END IF;
    IF v_slot IS NOT NULL THEN
        IF v_waiting THEN
            DELETE FROM mta.slot_waiter w
             WHERE w.key_domain = p_key_domain AND w.key_vmta = v_kvmta
               AND ((w.domain = v_domain AND w.vmta = v_vmta) OR w.until <= now());
        END IF;
        slot := v_slot;
        RETURN NEXT;
        RETURN;
    END IF;
    -- A session lock may have been taken above: never fail the call here.
    -- Expired waiters of the key go with this write (a queue that stopped
    -- waiting leaves no row for ever).
    BEGIN
        DELETE FROM mta.slot_waiter w
         WHERE w.key_domain = p_key_domain AND w.key_vmta = v_kvmta AND w.until <= now();
        INSERT INTO mta.slot_waiter AS w (key_domain, key_vmta, domain, vmta, priority, node,
                                          until)
        VALUES (p_key_domain, v_kvmta, v_domain, v_vmta, v_prio, p_node,
                now() + greatest(coalesce(p_wait_ms, 2000), 100) * interval '1 millisecond')
        ON CONFLICT (key_domain, key_vmta, domain, vmta) DO UPDATE
            SET priority = excluded.priority, node = excluded.node, until = excluded.until;
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
END
$$;

-- Contract (node): the highest priority waiting now for each of the keys
-- (p_key_domains[i], p_key_vmtas[i]) that is above p_priorities[i]: one row
-- per such key. A node with interruptible connections (allow-priority-
-- interruption) asks this of the keys it holds slots of; a connection whose
-- key has a waiter above it ends after its current message.
CREATE OR REPLACE FUNCTION mta.slot_waiting(p_key_domains text[], p_key_vmtas text[],
                                            p_priorities int[])
RETURNS TABLE (key_domain text, key_vmta text, priority int)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT k.d, k.v, max(w.priority)::int
      FROM unnest(p_key_domains, p_key_vmtas, p_priorities) AS k(d, v, p)
      JOIN mta.slot_waiter w ON w.key_domain = k.d AND w.key_vmta = coalesce(k.v, '')
     WHERE w.priority > k.p AND w.until > now()
     GROUP BY k.d, k.v
$$;

-- Per-job weights (migration 0021, README Priorities): within one priority
-- of a queue, mta.claim_many gives each job `weight` turns per round of
-- its round robin. Sets the weight of job P_JOB (1-100; 1 is the default:
-- all jobs alike), creating the job's row when it has none yet, so that a
-- weight can be set before the job's first message. Returns the weight.
CREATE OR REPLACE FUNCTION mta.set_job_weight(p_job text, p_weight int)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_job IS NULL THEN
        RAISE EXCEPTION 'set_job_weight: a job id is required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM mta.check_job_id(p_job);
    IF p_weight IS NULL OR p_weight < 1 OR p_weight > 100 THEN
        RAISE EXCEPTION 'set_job_weight: weight % out of range (1 to 100)',
            coalesce(p_weight::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO mta.job AS j (job_id, weight) VALUES (p_job, p_weight)
    ON CONFLICT (job_id) DO UPDATE SET weight = excluded.weight;
    RETURN p_weight;
END
$$;
