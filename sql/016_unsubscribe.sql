-- 016_unsubscribe: what a one-click unsubscribe (POST /u/TOKEN on the
-- unsubscribe listener, node/unsub_http.c) or a mail to the mailto: address
-- writes, once the node has checked the token (see README, One-click
-- unsubscribe). The token's secret stays in the node: the database gets the
-- recipient and job the token carried.
--
-- After 015_suppression.sql: the entry is written by mta.suppress.

-- Suppresses p_rcpt for p_scope (NULL: every job; else a prefix of p_job,
-- the job the message belonged to) with source 'unsubscribe' and the reason
-- "p_source, job p_job". p_source says how it came: 'list-unsubscribe' (the
-- one-click POST) or 'mailto'. An existing entry for the same address and
-- scope is updated and no longer expires: an unsubscribe is for good.
-- Returns the stored entry. Repeating it is harmless (mail clients retry).
CREATE OR REPLACE FUNCTION mta.unsubscribe(p_rcpt text, p_job text, p_source text,
                                           p_scope text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_source IS NULL OR p_source NOT IN ('list-unsubscribe', 'mailto') THEN
        RAISE EXCEPTION 'invalid source %: list-unsubscribe or mailto', mta.show(p_source)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_scope IS NOT NULL AND (p_job IS NULL OR NOT starts_with(p_job, p_scope)) THEN
        RAISE EXCEPTION 'invalid scope %: not a prefix of the job id %', mta.show(p_scope),
            mta.show(p_job) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN mta.suppress(p_rcpt, p_scope, p_source || coalesce(', job ' || p_job, ''),
                        'unsubscribe', NULL);
END
$$;
