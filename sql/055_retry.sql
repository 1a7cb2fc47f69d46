-- 055_retry: the cluster-wide actions of smtp-pattern-list, written by the
-- node that saw the reply and honoured by every node (see README, Traffic
-- shaping, cluster-wide). Tables in migrations/0017_retry.sql. Neither is
-- part of mta.finish(): a node calls them only when a pattern matched.

-- defer-queue: the queue (every pipe of it) is deferred for p_ms
-- milliseconds (at most a day); a later call extends it, never shortens it.
-- mta.claim_many() claims nothing from a deferred queue, so no node opens a
-- new connection for it once this commits; its ready markers move to the
-- end of the deferral so that mta.ready_queues() does not offer it before.
-- Returns the number of queue rows deferred.
CREATE OR REPLACE FUNCTION mta.queue_defer(p_domain text, p_vmta text, p_ms int, p_reason text)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_until timestamptz;
    n int;
BEGIN
    IF p_domain IS NULL OR p_ms IS NULL OR p_ms <= 0 THEN
        RAISE EXCEPTION 'queue_defer: domain and a positive p_ms are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_until := now() + least(p_ms, 86400000) * interval '1 millisecond';
    UPDATE mta.queue q
       SET deferred_until = greatest(q.deferred_until, v_until),
           last_error = left('defer-queue: ' || coalesce(p_reason, ''), 1000),
           last_error_at = now()
     WHERE q.domain = p_domain AND q.vmta = coalesce(p_vmta, '');
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE mta.queue_ready m
       SET hold_until = greatest(m.hold_until, v_until),
           next_at = CASE WHEN m.next_at IS NULL THEN NULL ELSE greatest(m.next_at, v_until) END
     WHERE (m.pipe, m.domain, m.vmta) IN
           (SELECT mm.pipe, mm.domain, mm.vmta FROM mta.queue_ready mm
             WHERE mm.domain = p_domain AND mm.vmta = coalesce(p_vmta, '')
               FOR NO KEY UPDATE SKIP LOCKED);
    RETURN n;
END
$$;

-- disable-source-ip: source IP p_ip is not used for p_domain for p_ms
-- milliseconds (reenable-after, at most a week); a later call extends it.
CREATE OR REPLACE FUNCTION mta.source_ip_disable(p_domain text, p_ip text, p_ms int,
                                                 p_reason text)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_until timestamptz;
BEGIN
    IF p_domain IS NULL OR p_ip IS NULL OR p_ms IS NULL OR p_ms <= 0 THEN
        RAISE EXCEPTION 'source_ip_disable: domain, ip and a positive p_ms are required'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_until := now() + least(p_ms, 604800000) * interval '1 millisecond';
    INSERT INTO mta.source_ip_disabled AS s (domain, source_ip, until, reason)
    VALUES (p_domain, p_ip, v_until, left(p_reason, 1000))
    ON CONFLICT (domain, source_ip) DO UPDATE
       SET until = CASE WHEN s.until > now() THEN greatest(s.until, excluded.until)
                        ELSE excluded.until END,
           since = CASE WHEN s.until > now() THEN s.since ELSE now() END,
           reason = excluded.reason;
END
$$;

-- The source IPs disabled now, for a node's cache (one small read a second).
CREATE OR REPLACE FUNCTION mta.source_ips_disabled()
RETURNS TABLE (domain text, source_ip text, until timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.domain, s.source_ip, s.until FROM mta.source_ip_disabled s WHERE s.until > now()
$$;

-- Housekeeping: removes disables that ended. Returns the number removed.
CREATE OR REPLACE FUNCTION mta.source_ip_expire()
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int;
BEGIN
    DELETE FROM mta.source_ip_disabled WHERE until <= now();
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
