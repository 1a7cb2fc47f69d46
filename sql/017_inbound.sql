-- 017_inbound: what the inbound listener stores for one report (see README,
-- Inbound bounces and feedback) and the suppression fed by hard bounces and
-- complaints. mta.inbound_report() is the listener's one call per message;
-- mta.feed_hard_bounces() is also called by mta.finish() for in-band 'b'
-- rows. Before 050_finish.sql, whose function names it.

-- How many hard bounces suppress an address: the setting
-- pgmta.suppress_after_hard_bounces (ALTER DATABASE ... SET, or per role),
-- default 1; 0 never suppresses.
CREATE OR REPLACE FUNCTION mta.hard_bounce_limit()
RETURNS int LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('pgmta.suppress_after_hard_bounces', true), '')::int, 1)
$$;

-- The bounce categories that mean the address will never take mail.
CREATE OR REPLACE FUNCTION mta.hard_bounce_cat(p_cat text)
RETURNS bool LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_cat IN ('bad-mailbox', 'inactive-mailbox')
$$;

-- Counts one hard bounce for each of p_rcpt (valid addresses) and
-- suppresses (globally, source 'bounce') those that reached the limit. An
-- existing entry is left as it is (a manual one keeps its reason). Returns
-- how many entries were added.
CREATE OR REPLACE FUNCTION mta.feed_hard_bounces(p_rcpt text[], p_reason text[])
RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    v_limit int := mta.hard_bounce_limit();
    v_add text[];
    v_why text[];
    n int;
BEGIN
    IF v_limit <= 0 OR p_rcpt IS NULL THEN
        RETURN 0;
    END IF;
    IF v_limit = 1 THEN
        SELECT array_agg(mta.suppression_entry(u.rcpt)), array_agg(u.why) INTO v_add, v_why
          FROM unnest(p_rcpt, p_reason) u(rcpt, why);
    ELSE
        WITH c AS (
            INSERT INTO mta.hard_bounces AS h (address, count)
                SELECT mta.suppression_entry(u.rcpt), count(*)
                  FROM unnest(p_rcpt) u(rcpt) GROUP BY 1 ORDER BY 1
                ON CONFLICT (address) DO UPDATE SET count = h.count + EXCLUDED.count, last = now()
            RETURNING h.address, h.count
        )
        SELECT array_agg(c.address), array_agg(v_limit || ' hard bounces') INTO v_add, v_why
          FROM c WHERE c.count >= v_limit;
    END IF;
    INSERT INTO mta.suppression (address, scope, reason, source)
        SELECT DISTINCT ON (a.address) a.address, NULL, mta.one_line(left(a.why, 200)), 'bounce'
          FROM unnest(v_add, v_why) a(address, why) WHERE a.address IS NOT NULL
        ON CONFLICT ON CONSTRAINT suppression_key DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- Feedback types that suppress the complainer (RFC 5965 §7.3; JMRP reports
-- say abuse).
CREATE OR REPLACE FUNCTION mta.complaint_type(p_type text)
RETURNS bool LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT lower(p_type) IN ('abuse', 'fraud', 'virus')
$$;

-- A report kept because it matched nothing or could not be read.
CREATE OR REPLACE FUNCTION mta.inbound_keep(p_report jsonb, p_headers text, p_reason text)
RETURNS text LANGUAGE sql AS $$
    INSERT INTO mta.inbound_unmatched (reason, kind, mail_from, rcpt_to, client_ip, report,
                                       headers)
        VALUES (p_reason, p_report->>'kind', p_report->>'mail_from', p_report->>'rcpt_to',
                p_report->>'client_ip', p_report, left(p_headers, 65536))
    RETURNING 'unmatched: ' || reason
$$;

-- The delivery a VERP address names: its 'd' row; or, when the report came
-- before the finish of that delivery committed (a relay that bounces at
-- once), the recipient still queued in flight, in the columns the report
-- rows copy (type 'd'). All columns NULL when there is neither.
CREATE OR REPLACE FUNCTION mta.inbound_delivery(p_rcpt_id bigint)
RETURNS mta.acct LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    x mta.acct;
BEGIN
    FOR attempt IN 1..2 LOOP
        SELECT a.* INTO x FROM mta.acct a
         WHERE a.rcpt_id = p_rcpt_id AND a.type = 'd' ORDER BY a.time_logged DESC LIMIT 1;
        IF FOUND THEN
            RETURN x;
        END IF;
        SELECT r.queued_at, m.mail_from, r.rcpt, nullif(r.vmta, ''), r.job_id, m.envid,
               mta.queue_name(r.domain, r.vmta), r.pipe, r.message_id, r.id, m.size
          INTO x.time_queued, x.orig, x.rcpt, x.vmta, x.job_id, x.envid, x.queue, x.pipe,
               x.message_id, x.rcpt_id, x.dlv_size
          FROM mta.recipients r JOIN mta.messages m ON m.id = r.message_id
         WHERE r.id = p_rcpt_id;
        IF FOUND THEN
            x.type := 'd';
            RETURN x;
        END IF;
        -- neither: the finish may have committed between the two reads
    END LOOP;
    RETURN x;
END
$$;

-- The listener's one call per inbound message, after it parsed the report
-- (node/report.c) and checked any VERP tag (node/verp.c): "rcpt_id" is
-- there only when the tag was right. Writes 'rb' rows (one per failed
-- recipient of a DSN or bounce) or an 'f' row, each copying the delivery
-- row it matched, and feeds the suppression list; or keeps the report in
-- mta.inbound_unmatched with the reason; or, for a verified mailto:
-- unsubscribe, writes the suppression. Returns what it did: 'rb', 'f',
-- 'unsubscribed' or 'unmatched: REASON'.
CREATE OR REPLACE FUNCTION mta.inbound_report(p_report jsonb, p_headers text)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_kind text := p_report->>'kind';
    v_rcpt_id bigint := (p_report->>'rcpt_id')::bigint;
    v_envid text := nullif(p_report->>'envid', '');
    -- the enclosed original's Message-ID, as the 'd' rows keep it
    v_msgid text := nullif(btrim(p_report->>'msgid', '<> '), '');
    v_orcpt text := p_report->>'original_rcpt_to';
    d record;
    r record;
    n int := 0;
    v_found bool := false;
    h_rcpt text[];
    h_why text[];
BEGIN
    IF p_report->>'keep' IS NOT NULL THEN
        RETURN mta.inbound_keep(p_report, p_headers, p_report->>'keep');
    END IF;
    -- A mailto: unsubscribe whose token the listener verified: the same
    -- suppression as a one-click POST (sql/016_unsubscribe.sql).
    IF v_kind = 'unsubscribe' AND p_report ? 'unsub_rcpt' THEN
        PERFORM mta.unsubscribe(p_report->>'unsub_rcpt', p_report->>'unsub_job', 'mailto',
                                p_report->>'unsub_scope');
        RETURN 'unsubscribed';
    END IF;
    IF p_report->>'error' IS NOT NULL THEN
        RETURN mta.inbound_keep(p_report, p_headers, 'unparseable: ' || (p_report->>'error'));
    END IF;
    IF p_report->>'verp' = 'forged' THEN
        RETURN mta.inbound_keep(p_report, p_headers, 'VERP tag does not match');
    END IF;
    IF v_kind IN ('arf', 'jmrp') THEN
        IF v_rcpt_id IS NOT NULL THEN
            d := mta.inbound_delivery(v_rcpt_id);
            v_found := d.rcpt_id IS NOT NULL;
        ELSE
            IF v_envid IS NOT NULL AND v_orcpt IS NOT NULL THEN
                SELECT a.* INTO d FROM mta.acct a
                 WHERE a.envid = v_envid AND a.rcpt = v_orcpt AND a.type = 'd'
                 ORDER BY a.time_logged DESC LIMIT 1;
                v_found := FOUND;
            END IF;
            -- By Message-ID: with the reported recipient when the report
            -- names it, else only if the message had one recipient.
            IF NOT v_found AND v_msgid IS NOT NULL THEN
                SELECT a.* INTO d FROM mta.acct a
                 WHERE a.header_message_id = v_msgid AND a.type = 'd'
                   AND (v_orcpt IS NULL OR a.rcpt = v_orcpt)
                 ORDER BY a.time_logged DESC LIMIT 1;
                v_found := FOUND AND (v_orcpt IS NOT NULL OR NOT EXISTS (
                    SELECT 1 FROM mta.acct a
                     WHERE a.header_message_id = v_msgid AND a.type = 'd' AND a.rcpt <> d.rcpt));
            END IF;
        END IF;
        IF NOT v_found THEN
            RETURN mta.inbound_keep(p_report, p_headers,
                                    CASE WHEN v_rcpt_id IS NOT NULL THEN 'no delivery of that recipient'
                                         ELSE 'no VERP address, ENVID or Message-ID match' END);
        END IF;
        INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, vmta, job_id, envid,
                              queue, pipe, message_id, rcpt_id, dsn_mta, reporting_mta,
                              feedback_type, user_agent, arf_version, arf_original_mail_from,
                              arf_original_rcpt_to, arf_arrival_date, arf_source_ip,
                              arf_reported_domain, arf_message_id)
            VALUES ('f', now(), d.time_queued, d.orig, d.rcpt, d.vmta, d.job_id, d.envid,
                    d.queue, d.pipe, d.message_id, d.rcpt_id, d.dsn_mta,
                    p_report->>'reporting_mta', p_report->>'feedback_type',
                    p_report->>'user_agent', p_report->>'version',
                    p_report->>'original_mail_from', p_report->>'original_rcpt_to',
                    p_report->>'arrival_date', p_report->>'source_ip',
                    p_report->>'reported_domain', p_report->>'msgid');
        IF mta.complaint_type(coalesce(p_report->>'feedback_type', 'abuse')) THEN
            INSERT INTO mta.suppression (address, scope, reason, source)
                VALUES (mta.suppression_entry(d.rcpt), NULL,
                        mta.one_line(left('feedback report: '
                                          || coalesce(p_report->>'feedback_type', 'abuse')
                                          || coalesce(' from ' || (p_report->>'user_agent'), ''),
                                          200)), 'complaint')
                ON CONFLICT ON CONSTRAINT suppression_key DO NOTHING;
        END IF;
        RETURN 'f';
    END IF;
    IF v_kind NOT IN ('dsn', 'bounce') THEN
        RETURN mta.inbound_keep(p_report, p_headers, 'not a delivery or feedback report');
    END IF;
    FOR r IN
        SELECT x->>'rcpt' AS rcpt, x->>'action' AS action, x->>'status' AS status,
               x->>'diag' AS diag, x->>'remote_mta' AS remote_mta, x->>'cat' AS cat
          FROM jsonb_array_elements(coalesce(p_report->'rcpts', '[]')) x
         WHERE lower(x->>'action') = 'failed' OR (x->>'action' IS NULL AND x->>'status' ~ '^5')
    LOOP
        v_found := false;
        IF v_rcpt_id IS NOT NULL THEN
            d := mta.inbound_delivery(v_rcpt_id);
            v_found := d.rcpt_id IS NOT NULL;
        ELSE
            IF v_envid IS NOT NULL THEN
                SELECT a.* INTO d FROM mta.acct a
                 WHERE a.envid = v_envid AND a.rcpt = r.rcpt AND a.type = 'd'
                 ORDER BY a.time_logged DESC LIMIT 1;
                v_found := FOUND;
            END IF;
            IF NOT v_found AND v_msgid IS NOT NULL THEN
                SELECT a.* INTO d FROM mta.acct a
                 WHERE a.header_message_id = v_msgid AND a.rcpt = r.rcpt AND a.type = 'd'
                 ORDER BY a.time_logged DESC LIMIT 1;
                v_found := FOUND;
            END IF;
        END IF;
        CONTINUE WHEN NOT v_found;
        INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, dsn_action, dsn_status,
                              dsn_diag, dsn_mta, bounce_cat, vmta, job_id, envid, queue, pipe,
                              message_id, rcpt_id, reporting_mta, dlv_size, arf_message_id)
            VALUES ('rb', now(), d.time_queued, d.orig, d.rcpt, 'failed',
                    coalesce(r.status, '5.0.0'), r.diag, r.remote_mta, r.cat, d.vmta, d.job_id,
                    d.envid, d.queue, d.pipe, d.message_id, d.rcpt_id,
                    p_report->>'reporting_mta', d.dlv_size, p_report->>'msgid');
        n := n + 1;
        IF mta.hard_bounce_cat(r.cat) THEN
            h_rcpt := h_rcpt || d.rcpt;
            h_why := h_why || ('hard bounce: ' || r.cat || ' ' || coalesce(r.status, ''));
        END IF;
        -- A VERP address names one recipient: one row, whatever the report lists.
        EXIT WHEN v_rcpt_id IS NOT NULL;
    END LOOP;
    IF n = 0 THEN
        RETURN mta.inbound_keep(p_report, p_headers,
                                CASE WHEN NOT EXISTS (
                                         SELECT 1 FROM jsonb_array_elements(
                                             coalesce(p_report->'rcpts', '[]')) x
                                          WHERE lower(x->>'action') = 'failed'
                                             OR (x->>'action' IS NULL AND x->>'status' ~ '^5'))
                                     THEN 'no failed recipient in the report'
                                     WHEN v_rcpt_id IS NOT NULL THEN 'no delivery of that recipient'
                                     ELSE 'no VERP address, ENVID or Message-ID match' END);
    END IF;
    PERFORM mta.feed_hard_bounces(h_rcpt, h_why);
    RETURN 'rb';
END
$$;
