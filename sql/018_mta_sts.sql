-- 018_mta_sts: the shared MTA-STS policy cache (migrations/0012_mta_sts.sql),
-- read and written by the nodes (see README, MTA-STS). Grants: 090_roles.

-- The policy to use for p_domain and whether this node should fetch it now.
-- p_txt_id is the id of the domain's _mta-sts TXT record, NULL when there is
-- none (or DNS failed): then a cached policy that has not expired is used
-- and nothing is fetched (RFC 8461 §5.1). With an id, a fetch is due when
-- nothing is cached, the cached policy expired, its id differs, or half its
-- max_age (at most a day) has passed: the refresh before expiry. Only one
-- node fetches a domain at a time (fetching_until, 30 s); the others use the
-- cached policy meanwhile, or fetch too when nothing valid is cached (a
-- delivery never waits for another node).
--
-- Returns one row: the valid cached policy (mode NULL: none) with its
-- seconds left, and do_fetch.
CREATE OR REPLACE FUNCTION mta.mta_sts_get(p_domain text, p_txt_id text, p_node text)
RETURNS TABLE (mode text, mx text, max_age int, ttl_s int, txt_id text, do_fetch bool)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r mta.mta_sts;
    v_valid bool;
    v_due bool;
    v_fetch bool := false;
BEGIN
    SELECT * INTO r FROM mta.mta_sts s WHERE s.domain = lower(p_domain);
    v_valid := r.mode IS NOT NULL AND r.expires_at > now();
    IF p_txt_id IS NOT NULL THEN
        v_due := NOT v_valid OR r.txt_id IS DISTINCT FROM p_txt_id
                 OR r.fetched_at + least(make_interval(secs => r.max_age / 2), interval '1 day')
                    < now();
        IF v_due THEN
            IF r.domain IS NULL THEN
                INSERT INTO mta.mta_sts (domain, fetching_node, fetching_until)
                VALUES (lower(p_domain), p_node, now() + interval '30 seconds')
                ON CONFLICT (domain) DO NOTHING;
                v_fetch := FOUND OR NOT v_valid;
            ELSE
                UPDATE mta.mta_sts s
                   SET fetching_node = p_node, fetching_until = now() + interval '30 seconds'
                 WHERE s.domain = r.domain
                   AND (s.fetching_until IS NULL OR s.fetching_until < now());
                v_fetch := FOUND OR NOT v_valid;
            END IF;
        END IF;
    END IF;
    IF v_valid THEN
        RETURN QUERY SELECT r.mode, array_to_string(r.mx, ' '), r.max_age,
                            greatest(1, extract(epoch FROM r.expires_at - now())::int), r.txt_id,
                            v_fetch;
    ELSE
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::int, NULL::int, NULL::text, v_fetch;
    END IF;
END
$$;

-- A policy fetched and parsed by p_node: cached for every node, for max_age.
CREATE OR REPLACE FUNCTION mta.mta_sts_put(p_domain text, p_node text, p_txt_id text,
                                           p_mode text, p_mx text[], p_max_age int)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO mta.mta_sts AS s (domain, txt_id, mode, mx, max_age, fetched_at, expires_at)
    VALUES (lower(p_domain), p_txt_id, p_mode, p_mx, p_max_age, now(),
            now() + make_interval(secs => p_max_age))
    ON CONFLICT (domain) DO UPDATE
       SET txt_id = excluded.txt_id, mode = excluded.mode, mx = excluded.mx,
           max_age = excluded.max_age, fetched_at = excluded.fetched_at,
           expires_at = excluded.expires_at, fetching_node = NULL, fetching_until = NULL
$$;

-- A fetch that failed (p_error says why): the cached policy, if any, stays.
CREATE OR REPLACE FUNCTION mta.mta_sts_failed(p_domain text, p_node text, p_error text)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO mta.mta_sts AS s (domain, last_error, last_error_at)
    VALUES (lower(p_domain), left(p_error, 500), now())
    ON CONFLICT (domain) DO UPDATE
       SET last_error = excluded.last_error, last_error_at = excluded.last_error_at,
           fetching_node = NULL, fetching_until = NULL
$$;

-- The domains with a cached policy that still applies, for the nodes'
-- in-process list (node/mta_sts.c): a domain without a TXT record that is
-- not listed needs no mta_sts_get of its own, which spares the long tail
-- of domains without MTA-STS one statement each. A node reloads the list at
-- most every minute, so a policy another node cached applies here within a
-- minute of that node's fetch.
CREATE OR REPLACE FUNCTION mta.mta_sts_domains()
RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.domain FROM mta.mta_sts s WHERE s.mode IS NOT NULL AND s.expires_at > now()
$$;
