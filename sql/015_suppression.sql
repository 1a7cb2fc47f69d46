-- 015_suppression: the suppression list (migrations/0008_suppression.sql)
-- managed and looked up. The enqueue paths (020, 025, 026, 030) call
-- mta.suppression_match() or join mta.suppression the way it does; managing
-- is for mta_admin (mta.suppress, mta.unsuppress), reading for mta_monitor
-- (the table, mta.suppressed). See README, Suppression.
--
-- Before the enqueue files: their SQL-language functions are checked when
-- created and may name these.

-- The stored key of a valid recipient whose lower-cased domain is p_domain:
-- the local part as given (up to the last '@'), then p_domain.
CREATE OR REPLACE FUNCTION mta.suppression_key(p_rcpt text, p_domain text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT left(p_rcpt, length(p_rcpt) - strpos(reverse(p_rcpt), '@') + 1) || p_domain
$$;

-- The stored form of an entry as given to mta.suppress: an address (checked
-- as mta.enqueue checks recipients) or '@domain'. p_field names it in errors.
CREATE OR REPLACE FUNCTION mta.suppression_entry(p_address text, p_field text DEFAULT 'address')
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_address IS NULL THEN
        RAISE EXCEPTION '% is NULL', p_field USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF left(p_address, 1) = '@' THEN
        RETURN '@' || mta.check_domain(substr(p_address, 2), p_field);
    END IF;
    RETURN mta.suppression_key(p_address, mta.address_domain(p_address, p_field));
END
$$;

-- A scope: NULL (every job) or a job id prefix, under a job id's rules.
CREATE OR REPLACE FUNCTION mta.check_scope(p_scope text)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_scope = '' THEN
        RAISE EXCEPTION 'invalid scope "": empty (use NULL for every job)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(p_scope) > 200 OR p_scope ~ '[\x01-\x1f\x7f]' THEN
        RAISE EXCEPTION 'invalid scope %: a job id prefix of at most 200 characters without control characters',
            mta.show(p_scope) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_scope;
END
$$;

-- The entry that suppresses a recipient (valid address p_rcpt, lower-cased
-- domain p_domain) of job p_job_id, if any: at most two index probes. An
-- address entry wins over a domain entry, a longer scope over a shorter one
-- and over a global entry, so the reason given is the most specific.
CREATE OR REPLACE FUNCTION mta.suppression_match(p_rcpt text, p_domain text, p_job_id text)
RETURNS TABLE (address text, scope text, reason text, source text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT s.address, s.scope, s.reason, s.source
      FROM mta.suppression s
     WHERE s.address IN (mta.suppression_key(p_rcpt, p_domain), '@' || p_domain)
       AND (s.scope IS NULL OR starts_with(p_job_id, s.scope))
       AND (s.expires IS NULL OR s.expires > now())
     ORDER BY left(s.address, 1) = '@', length(s.scope) DESC NULLS LAST
     LIMIT 1
$$;

-- The dsn_diag of a suppressed recipient's 'b' row: which entry, and why.
CREATE OR REPLACE FUNCTION mta.suppression_diag(p_address text, p_scope text, p_reason text,
                                                p_source text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'recipient suppressed (' || p_source || coalesce(': ' || p_reason, '') || '; entry '
           || p_address || coalesce(', scope ' || p_scope, '') || ')'
$$;

-- Adds an entry (ADDRESS or '@DOMAIN'), or updates the reason, source and
-- expiry of an existing one for the same scope. Returns the stored entry.
CREATE OR REPLACE FUNCTION mta.suppress(p_address text, p_scope text DEFAULT NULL,
                                        p_reason text DEFAULT NULL,
                                        p_source text DEFAULT 'manual',
                                        p_expires timestamptz DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v text := mta.suppression_entry(p_address);
BEGIN
    PERFORM mta.check_scope(p_scope);
    IF p_source IS NULL OR p_source NOT IN ('manual', 'import', 'bounce', 'complaint',
                                            'unsubscribe') THEN
        RAISE EXCEPTION 'invalid source %: manual, import, bounce, complaint or unsubscribe',
            mta.show(p_source) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_reason ~ '[\x00-\x1f\x7f]' THEN
        RAISE EXCEPTION 'invalid reason %: contains a control character', mta.show(p_reason)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO mta.suppression AS s (address, scope, reason, source, expires)
        VALUES (v, p_scope, p_reason, p_source, p_expires)
        ON CONFLICT ON CONSTRAINT suppression_key DO UPDATE
            SET reason = EXCLUDED.reason, source = EXCLUDED.source, expires = EXCLUDED.expires;
    RETURN v;
END
$$;

-- Removes the entry for ADDRESS or '@DOMAIN' in exactly that scope (NULL:
-- the global one). Returns how many entries were removed (0 or 1).
CREATE OR REPLACE FUNCTION mta.unsuppress(p_address text, p_scope text DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v text := mta.suppression_entry(p_address);
    n int;
BEGIN
    DELETE FROM mta.suppression s WHERE s.address = v AND s.scope IS NOT DISTINCT FROM p_scope;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Whether a recipient of job p_job_id would be suppressed now (an invalid
-- address raises, as at enqueue).
CREATE OR REPLACE FUNCTION mta.suppressed(p_rcpt text, p_job_id text DEFAULT NULL)
RETURNS bool LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM mta.suppression_match(p_rcpt,
                                                       mta.address_domain(p_rcpt, 'rcpt'),
                                                       p_job_id))
$$;

-- The recipients among p_rcpt (lower-cased domains p_domain) that are
-- suppressed: writes each one's 'b' accounting row and returns their
-- positions (1-based, ascending), or NULL when there is none. The message
-- fields are per message: recipient k belongs to message p_msg[k] (p_msg
-- NULL: every recipient to message 1). p_pipe holds resolved pipe names.
-- The 'b' rows name no message and no recipient row: neither is stored for
-- a suppressed recipient.
CREATE OR REPLACE FUNCTION mta.suppress_rcpts(p_rcpt text[], p_domain text[], p_msg int[],
                                              p_orig text[], p_job_id text[], p_vmta text[],
                                              p_envid text[], p_pipe text[], p_size int[])
RETURNS int[] LANGUAGE plpgsql AS $$
DECLARE
    v int[];
BEGIN
    WITH hit AS MATERIALIZED (
        SELECT u.k, coalesce(p_msg[u.k], 1) AS m, u.rcpt, u.domain, s.address, s.scope,
               s.reason, s.source
          FROM unnest(p_rcpt, p_domain) WITH ORDINALITY AS u(rcpt, domain, k)
         CROSS JOIN LATERAL mta.suppression_match(u.rcpt, u.domain,
                                                  p_job_id[coalesce(p_msg[u.k], 1)]) s
    ), bounced AS (
        INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, dsn_action, dsn_status,
                              dsn_diag, bounce_cat, vmta, job_id, envid, queue, pipe, dlv_size)
            SELECT 'b', now(), now(), p_orig[h.m], h.rcpt, 'failed', '5.7.1',
                   mta.suppression_diag(h.address, h.scope, h.reason, h.source), 'suppressed',
                   nullif(p_vmta[h.m], ''), p_job_id[h.m], p_envid[h.m],
                   mta.queue_name(h.domain, coalesce(p_vmta[h.m], '')), p_pipe[h.m], p_size[h.m]
              FROM hit h
             ORDER BY h.k
    )
    SELECT array_agg(h.k ORDER BY h.k) INTO v FROM hit h;
    RETURN v;
END
$$;
