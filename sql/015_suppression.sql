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
-- The public parameter names (for named notation) are the column names;
-- the bodies use the p_ aliases, and columns win where both could be meant.
CREATE OR REPLACE FUNCTION mta.suppress(address text, scope text DEFAULT NULL,
                                        reason text DEFAULT NULL,
                                        source text DEFAULT 'manual',
                                        expires timestamptz DEFAULT NULL)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    p_address ALIAS FOR $1;
    p_scope ALIAS FOR $2;
    p_reason ALIAS FOR $3;
    p_source ALIAS FOR $4;
    p_expires ALIAS FOR $5;
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
CREATE OR REPLACE FUNCTION mta.unsuppress(address text, scope text DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    p_address ALIAS FOR $1;
    p_scope ALIAS FOR $2;
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
CREATE OR REPLACE FUNCTION mta.suppressed(rcpt text, job_id text DEFAULT NULL)
RETURNS bool LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM mta.suppression_match($1, mta.address_domain($1, 'rcpt'), $2))
$$;

-- The recipients among p_rcpt (lower-cased domains p_domain) that are
-- suppressed: writes each one's 'b' accounting row and returns their
-- positions (1-based, ascending), or NULL when there is none. The message
-- fields are per message: recipient k belongs to message p_msg[k] (p_msg
-- NULL: every recipient to message 1). p_pipe holds resolved pipe names.
-- The 'b' rows name no message and no recipient row: neither is stored for
-- a suppressed recipient.
--
-- The lookup is a plain SELECT and the INSERT runs only after a hit: an
-- INSERT into the partitioned mta.acct costs its executor setup even for
-- no row, which would double the cost of a one-recipient enqueue.
CREATE OR REPLACE FUNCTION mta.suppress_rcpts(p_rcpt text[], p_domain text[], p_msg int[],
                                              p_orig text[], p_job_id text[], p_vmta text[],
                                              p_envid text[], p_pipe text[], p_size int[])
RETURNS int[] LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    v_k int[];
    v_diag text[];
    v_rcpt text[];
    v_domain text[];
BEGIN
    SELECT array_agg(u.k ORDER BY u.k),
           array_agg(mta.suppression_diag(s.address, s.scope, s.reason, s.source) ORDER BY u.k),
           array_agg(u.rcpt ORDER BY u.k), array_agg(u.domain ORDER BY u.k)
      INTO v_k, v_diag, v_rcpt, v_domain
      FROM unnest(p_rcpt, p_domain) WITH ORDINALITY AS u(rcpt, domain, k)
     CROSS JOIN LATERAL mta.suppression_match(u.rcpt, u.domain,
                                              p_job_id[coalesce(p_msg[u.k], 1)]) s;
    IF v_k IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, dsn_action, dsn_status,
                          dsn_diag, bounce_cat, vmta, job_id, envid, queue, pipe, dlv_size)
        SELECT 'b', now(), now(), p_orig[h.m], h.rcpt, 'failed', '5.7.1', h.diag,
               'suppressed', nullif(p_vmta[h.m], ''), p_job_id[h.m], p_envid[h.m],
               mta.queue_name(h.domain, coalesce(p_vmta[h.m], '')), p_pipe[h.m], p_size[h.m]
          FROM (SELECT x.k, coalesce(p_msg[x.k], 1) AS m, x.diag, x.rcpt, x.domain
                  FROM unnest(v_k, v_diag, v_rcpt, v_domain) AS x(k, diag, rcpt, domain)) h
         ORDER BY h.k;
    RETURN v_k;
END
$$;
