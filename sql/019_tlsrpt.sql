-- 019_tlsrpt: TLS-RPT reports (RFC 8460) from mta.acct, for the nodes
-- (node/tlsrpt.c) and `pgmta tlsrpt show` (see README, TLS-RPT). Tables:
-- migrations/0016_tlsrpt.sql. Grants: 090_roles.
--
-- A session, in the report's counts, is one delivery attempt of one message
-- (message_id, attempt): one SMTP transaction, whatever its recipients.

-- The RFC 8460 reports of the UTC day p_day, one row per policy domain
-- (only p_domain when given): every attempt whose tls_policy_domain is the
-- domain, one policy per policy type (and, for 'tlsa', per MX host). One
-- scan of the day's mta.acct partition for every domain (there is no index
-- on tls_policy_domain: see README, TLS-RPT).
CREATE OR REPLACE FUNCTION mta.tlsrpt_reports(p_day date, p_org text, p_contact text,
                                              p_domain text DEFAULT NULL)
RETURNS TABLE (policy_domain text, report json)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH att AS (
        SELECT a.tls_policy_domain AS dom, a.tls_policy AS ptype,
               CASE WHEN a.tls_policy = 'tlsa' THEN split_part(a.dsn_mta, ' (', 1) END AS tlsa_mx,
               a.tls_failure, a.message_id, a.attempt, a.dlv_source_ip, a.dlv_destination_ip,
               nullif(split_part(a.dsn_mta, ' (', 1), '') AS mx
          FROM mta.acct a
         WHERE a.time_logged >= (p_day::timestamp AT TIME ZONE 'UTC')
           AND a.time_logged < ((p_day + 1)::timestamp AT TIME ZONE 'UTC')
           AND a.tls_policy_domain IS NOT NULL
           AND (p_domain IS NULL OR a.tls_policy_domain = lower(p_domain))
           AND a.tls_policy IS NOT NULL
           AND a.type IN ('d', 'b', 't')
    ),
    -- one session: failed when any of its rows recorded a failure
    sess AS (
        SELECT dom, ptype, tlsa_mx, message_id, attempt, min(tls_failure) AS failure,
               min(dlv_source_ip) AS src, min(dlv_destination_ip) AS dst, min(mx) AS mx
          FROM att GROUP BY dom, ptype, tlsa_mx, message_id, attempt
    ),
    fail AS (
        SELECT dom, ptype, tlsa_mx,
               json_agg(json_strip_nulls(json_build_object(
                   'result-type', failure, 'sending-mta-ip', src,
                   'receiving-mx-hostname', mx, 'receiving-ip', dst,
                   'failed-session-count', n)) ORDER BY failure, mx, dst, src) AS details
          FROM (SELECT dom, ptype, tlsa_mx, failure, src, dst, mx, count(*) AS n
                  FROM sess WHERE failure IS NOT NULL
                 GROUP BY dom, ptype, tlsa_mx, failure, src, dst, mx) f
         GROUP BY dom, ptype, tlsa_mx
    ),
    pol AS (
        SELECT s.dom, s.ptype, s.tlsa_mx,
               count(*) FILTER (WHERE s.failure IS NULL) AS ok,
               count(*) FILTER (WHERE s.failure IS NOT NULL) AS failed
          FROM sess s GROUP BY s.dom, s.ptype, s.tlsa_mx
    )
    SELECT p.dom, json_build_object(
        'organization-name', p_org,
        'date-range', json_build_object(
            'start-datetime', to_char(p_day, 'YYYY-MM-DD') || 'T00:00:00Z',
            'end-datetime', to_char(p_day, 'YYYY-MM-DD') || 'T23:59:59Z'),
        'contact-info', coalesce(p_contact, p_org),
        'report-id', to_char(p_day, 'YYYY-MM-DD') || 'T00:00:00Z_' || p.dom,
        'policies', json_agg(json_build_object(
            'policy', json_strip_nulls(json_build_object(
                'policy-type', p.ptype,
                'policy-string', CASE
                    WHEN p.ptype = 'sts' THEN (
                        SELECT json_agg(l) FROM unnest(
                            ARRAY['version: STSv1', 'mode: ' || m.mode]
                            || ARRAY(SELECT 'mx: ' || x FROM unnest(m.mx) x)
                            || ARRAY['max_age: ' || m.max_age]) l)
                    END,
                'policy-domain', p.dom,
                'mx-host', CASE WHEN p.ptype = 'tlsa' THEN to_json(ARRAY[p.tlsa_mx])
                                WHEN p.ptype = 'sts' THEN to_json(m.mx) END)),
            'summary', json_build_object('total-successful-session-count', p.ok,
                                         'total-failure-session-count', p.failed),
            'failure-details', coalesce(f.details, '[]'::json))
            ORDER BY p.ptype, p.tlsa_mx))
      FROM pol p
      LEFT JOIN fail f ON f.dom = p.dom AND f.ptype = p.ptype
                      AND f.tlsa_mx IS NOT DISTINCT FROM p.tlsa_mx
      LEFT JOIN mta.mta_sts m ON m.domain = p.dom AND m.mode IS NOT NULL
     GROUP BY p.dom
$$;

-- The report of p_domain for p_day (NULL: no attempt), for `pgmta tlsrpt
-- show`: what mta.tlsrpt_claim stores for the domain.
CREATE OR REPLACE FUNCTION mta.tlsrpt_report(p_domain text, p_day date,
                                             p_org text DEFAULT 'pgmta',
                                             p_contact text DEFAULT NULL)
RETURNS json LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.report FROM mta.tlsrpt_reports(p_day, p_org, p_contact, p_domain) r
$$;

-- The reports of p_day that p_node should send now: first, with p_build
-- (a node's first claim of a day: building scans the day's accounting),
-- under a transaction advisory lock (one builder at a time in the
-- cluster), a row in mta.tlsrpt_sent for every policy domain of the day
-- that has none (the primary key keeps it at one per domain and day even
-- without the lock);
-- then up to p_limit unsent reports not claimed by another node, claimed
-- for 5 minutes. Returns the domain, the report id, the report and the rua
-- URIs that already took it (separated by spaces).
CREATE OR REPLACE FUNCTION mta.tlsrpt_claim(p_node text, p_day date, p_org text, p_contact text,
                                            p_build bool, p_limit int DEFAULT 20)
RETURNS TABLE (policy_domain text, report_id text, report json, done_rua text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_day >= (now() AT TIME ZONE 'UTC')::date THEN
        RAISE EXCEPTION 'tlsrpt: the day % is not over yet (UTC)', p_day;
    END IF;
    IF p_build THEN
        PERFORM pg_advisory_xact_lock(hashtext('mta.tlsrpt_claim'), hashtext(p_day::text));
        INSERT INTO mta.tlsrpt_sent (policy_domain, day, report_id, report, created_by)
        SELECT r.policy_domain, p_day, r.report->>'report-id', r.report, p_node
          FROM mta.tlsrpt_reports(p_day, p_org, p_contact) r
         WHERE NOT EXISTS (SELECT 1 FROM mta.tlsrpt_sent s
                            WHERE s.policy_domain = r.policy_domain AND s.day = p_day)
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN QUERY
    UPDATE mta.tlsrpt_sent s SET claimed_by = p_node, claimed_until = now() + interval '5 minutes'
      FROM (SELECT t.policy_domain FROM mta.tlsrpt_sent t
             WHERE t.day = p_day AND t.sent_at IS NULL
               AND (t.claimed_until IS NULL OR t.claimed_until < now()) AND t.attempts < 48
             ORDER BY t.policy_domain LIMIT p_limit FOR UPDATE SKIP LOCKED) c
     WHERE s.policy_domain = c.policy_domain AND s.day = p_day
    RETURNING s.policy_domain, s.report_id, s.report, array_to_string(s.done_rua, ' ');
END
$$;

-- A sending round of p_node ended: p_done the rua URIs that took the
-- report; p_error NULL when every rua did (the report is sent), else why
-- not, and the report is claimable again after p_retry_s seconds.
CREATE OR REPLACE FUNCTION mta.tlsrpt_done(p_domain text, p_day date, p_node text, p_done text[],
                                           p_error text, p_retry_s int DEFAULT 600)
RETURNS void LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE mta.tlsrpt_sent s
       SET done_rua = ARRAY(SELECT DISTINCT u FROM unnest(s.done_rua || coalesce(p_done, '{}')) u
                             ORDER BY u),
           sent_at = CASE WHEN p_error IS NULL THEN now() END,
           attempts = s.attempts + CASE WHEN p_error IS NULL THEN 0 ELSE 1 END,
           last_error = left(p_error, 500),
           claimed_by = NULL,
           claimed_until = CASE WHEN p_error IS NULL THEN NULL
                                ELSE now() + make_interval(secs => p_retry_s) END
     WHERE s.policy_domain = lower(p_domain) AND s.day = p_day AND s.claimed_by = p_node
$$;
