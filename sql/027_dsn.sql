-- 027_dsn: the DSN options of RFC 3461 (migrations/0011_dsn.sql) for the
-- enqueue paths that store a message through mta.enqueue_bytes, which knows
-- nothing of them: mta.enqueue_batch's per-message path.

-- Sets RET on message p_id and NOTIFY/ORCPT on its recipients, matched by
-- address (p_rcpts[k] has p_notify[k] and p_orcpt[k]; either array may be
-- NULL). Suppressed recipients have no row and are skipped.
CREATE OR REPLACE FUNCTION mta.enqueue_dsn_options(p_id bigint, p_ret text, p_rcpts text[],
                                                   p_notify smallint[], p_orcpt text[])
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_ret IS NOT NULL THEN
        UPDATE mta.messages SET dsn_ret = p_ret WHERE id = p_id;
    END IF;
    IF p_notify IS NOT NULL OR p_orcpt IS NOT NULL THEN
        UPDATE mta.recipients r SET dsn_notify = x.notify, dsn_orcpt = x.orcpt
          FROM (SELECT DISTINCT ON (lower(u.rcpt)) lower(u.rcpt) AS rcpt, p_notify[u.k] AS notify,
                       p_orcpt[u.k] AS orcpt
                  FROM unnest(p_rcpts) WITH ORDINALITY AS u(rcpt, k)
                 ORDER BY lower(u.rcpt), u.k) x
         WHERE r.message_id = p_id AND lower(r.rcpt) = x.rcpt;
    END IF;
END
$$;
