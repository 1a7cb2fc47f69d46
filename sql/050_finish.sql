-- 050_finish: mta.finish(), the end of a delivery attempt for a whole batch of
-- claimed recipients in one call, and the RFC 3464 bounce (DSN) it may enqueue.
--
-- Fencing: a recipient is finished only if its id AND lease_token match; a
-- late finish after the lease expired and another node claimed the row
-- changes nothing and writes no accounting. So every recipient gets exactly
-- one final ('d' or 'b') accounting row.

-- Text usable on one header or DSN field line: control characters become spaces.
CREATE OR REPLACE FUNCTION mta.one_line(p_text text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(coalesce(p_text, ''), '[\x01-\x1f\x7f]+', ' ', 'g')
$$;

-- The RFC 3464 delivery status notification for recipients p_rcpts (with
-- their status, diagnostic, remote MTA and ORCPT) of message p_message_id,
-- all with one action (RFC 3464 2.3.3):
--   'failed'   bounced; with RET=FULL (and an original of at most 1 MB) the
--              whole original as message/rfc822, else its headers
--   'delayed'  still deferred and retried (NOTIFY=DELAY)
--   'relayed'  handed to a next hop that does not offer DSN (NOTIFY=SUCCESS)
-- multipart/report with a human-readable part, the message/delivery-status
-- part and the original's headers (text/rfc822-headers), or whole.
DROP FUNCTION IF EXISTS mta.dsn_content(bigint, text, text[], text[], text[], text[]);
CREATE OR REPLACE FUNCTION mta.dsn_content(p_message_id bigint, p_reporting_mta text,
                                           p_rcpts text[], p_status text[], p_diag text[],
                                           p_remote_mta text[], p_action text DEFAULT 'failed',
                                           p_orcpt text[] DEFAULT NULL)
RETURNS bytea LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    m record;
    nl constant text := E'\r\n';
    v_host text;
    v_boundary text;
    v_human text := '';
    v_report text := '';
    v_status text;
    v_hdr bytea;
    v_end int;
    v_full bool;
    i int;
BEGIN
    SELECT mm.mail_from, mm.envid, mm.created_at, mm.content, mm.dsn_ret INTO m
      FROM mta.messages mm WHERE mm.id = p_message_id;
    v_full := p_action = 'failed' AND m.dsn_ret = 'F' AND octet_length(m.content) <= 1048576;
    v_host := coalesce(nullif(regexp_replace(coalesce(p_reporting_mta, ''), '[^A-Za-z0-9.-]', '',
                                             'g'), ''), 'localhost');
    v_boundary := p_message_id || '.' || md5(random()::text || clock_timestamp()::text) || '/'
                  || v_host;
    FOR i IN 1 .. coalesce(cardinality(p_rcpts), 0) LOOP
        v_status := CASE
            WHEN p_action = 'failed' AND p_status[i] ~ '^[245]\.[0-9]{1,3}\.[0-9]{1,3}$'
                THEN p_status[i]
            WHEN p_action = 'failed' THEN '5.0.0'
            WHEN p_action = 'delayed' AND p_status[i] ~ '^4\.[0-9]{1,3}\.[0-9]{1,3}$'
                THEN p_status[i]
            WHEN p_action = 'delayed' THEN '4.0.0'
            WHEN p_status[i] ~ '^2\.[0-9]{1,3}\.[0-9]{1,3}$' THEN p_status[i]
            ELSE '2.0.0' END;
        v_human := v_human || '<' || mta.one_line(p_rcpts[i]) || '>: '
                   || mta.one_line(coalesce(nullif(p_diag[i], ''),
                                            CASE p_action WHEN 'failed' THEN 'delivery failed'
                                                          WHEN 'delayed' THEN 'delivery delayed'
                                                          ELSE 'relayed' END)) || nl || nl;
        v_report := v_report
            || CASE WHEN coalesce(p_orcpt[i], '') <> ''
                    THEN 'Original-Recipient: ' || mta.one_line(p_orcpt[i]) || nl ELSE '' END
            || CASE WHEN p_rcpts[i] ~ '[^\x01-\x7f]' THEN 'Final-Recipient: utf-8; '
                    ELSE 'Final-Recipient: rfc822; ' END || mta.one_line(p_rcpts[i]) || nl
            || 'Action: ' || p_action || nl
            || 'Status: ' || v_status || nl
            || CASE WHEN coalesce(p_remote_mta[i], '') <> ''
                    THEN 'Remote-MTA: dns; ' || mta.one_line(p_remote_mta[i]) || nl ELSE '' END
            || CASE WHEN coalesce(p_diag[i], '') <> ''
                    THEN 'Diagnostic-Code: smtp; ' || mta.one_line(p_diag[i]) || nl ELSE '' END
            || nl;
    END LOOP;
    IF v_full THEN
        v_hdr := m.content;
    ELSE
        -- The original's header section: up to the first empty line, at most 64 KB.
        v_hdr := substr(m.content, 1, 65536);
        v_end := position('\x0d0a0d0a'::bytea IN v_hdr);
        IF v_end > 0 THEN
            v_hdr := substr(v_hdr, 1, v_end + 1);
        ELSE
            v_end := position('\x0a0a'::bytea IN v_hdr);
            IF v_end > 0 THEN
                v_hdr := substr(v_hdr, 1, v_end);
            END IF;
        END IF;
    END IF;
    RETURN convert_to(
        'From: Mail Delivery System <MAILER-DAEMON@' || v_host || '>' || nl
        || 'To: <' || mta.one_line(m.mail_from) || '>' || nl
        || 'Subject: ' || CASE p_action WHEN 'failed' THEN 'Undelivered Mail Returned to Sender'
                                        WHEN 'delayed' THEN 'Delayed Mail (still being retried)'
                                        ELSE 'Successful Mail Delivery Report' END || nl
        || 'Date: ' || to_char(now() AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS') || ' +0000' || nl
        || 'Message-ID: <dsn.' || p_message_id || '.'
        || substr(md5(random()::text), 1, 12) || '@' || v_host || '>' || nl
        || 'Auto-Submitted: auto-replied' || nl
        || 'MIME-Version: 1.0' || nl
        || 'Content-Type: multipart/report; report-type=delivery-status;' || nl
        || E'\tboundary="' || v_boundary || '"' || nl
        || nl
        || 'This is a MIME-encapsulated message.' || nl
        || nl
        || '--' || v_boundary || nl
        || 'Content-Description: Notification' || nl
        || 'Content-Type: text/plain; charset=utf-8' || nl
        || nl
        || 'This is the mail system at host ' || v_host || '.' || nl
        || nl
        || CASE p_action
               WHEN 'failed' THEN 'Your message could not be delivered to one or more recipients.'
               WHEN 'delayed' THEN 'Your message has not been delivered yet to the recipients'
                                   || ' below. It is still being retried; you need not resend it.'
               ELSE 'Your message was relayed to the recipients below, to a system that does'
                    || ' not send delivery notifications: this is the last report you get.' END
        || nl || nl
        || v_human
        || '--' || v_boundary || nl
        || 'Content-Description: Delivery report' || nl
        || 'Content-Type: message/delivery-status' || nl
        || nl
        || 'Reporting-MTA: dns; ' || v_host || nl
        || CASE WHEN coalesce(m.envid, '') <> ''
                THEN 'Original-Envelope-Id: ' || mta.one_line(m.envid) || nl ELSE '' END
        || 'Arrival-Date: ' || to_char(m.created_at AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS')
        || ' +0000' || nl
        || nl
        || v_report
        || '--' || v_boundary || nl
        || CASE WHEN v_full THEN 'Content-Description: Undelivered Message' || nl
                                 || 'Content-Type: message/rfc822' || nl
                ELSE 'Content-Description: ' || CASE p_action WHEN 'failed' THEN 'Undelivered'
                                                                WHEN 'delayed' THEN 'Delayed'
                                                                ELSE 'Relayed' END
                     || ' Message Headers' || nl || 'Content-Type: text/rfc822-headers' || nl END
        || nl, 'UTF8')
        || v_hdr
        || convert_to(nl || '--' || v_boundary || '--' || nl, 'UTF8');
END
$$;

-- Contract: finishes a batch. Per element i: p_types[i] is 'd' (delivered),
-- 'b' (bounced) or 't' (transient failure, retried at p_retry_at[i]). Arrays
-- that do not apply may be NULL. Returns the number of recipients whose token
-- matched. With p_generate_bounces, DSNs are enqueued from <> to the
-- original sender (never to <>), in the same pipe, one per message and
-- action, honouring the recipients' NOTIFY (migrations/0011_dsn.sql):
--   failed    for 'b' rows, unless NOTIFY was given without FAILURE (or NEVER)
--   relayed   for 'd' rows with NOTIFY=SUCCESS whose next hop did not offer
--             DSN (p_hop_dsn[i] false); a hop that offers it got NOTIFY and
--             reports itself
--   delayed   for 't' rows with NOTIFY=DELAY, at most once per
--             p_delay_every[i] seconds (the domain's notify-of-delay-every)
--             counted from queueing, then from the last delay DSN; the time
--             is kept in the recipient row this statement updates anyway.
-- p_hop_dsn and p_delay_every may be NULL: no relayed or delayed DSN.
-- p_tls_policy, p_tls_failure, p_tls_policy_domain: the TLS policy outcome
-- per element for TLS-RPT (migrations/0012_mta_sts.sql), NULL when none.
-- The arguments after p_generate_bounces have defaults, so that the older
-- 15- and 18-argument calls keep working; the older functions themselves go.
DROP FUNCTION IF EXISTS mta.finish(bigint, text, bigint[], bigint[], text[], timestamptz[],
                                   text[], text[], text[], text[], text[], text[], text[], text[],
                                   bool);
DROP FUNCTION IF EXISTS mta.finish(bigint, text, bigint[], bigint[], text[], timestamptz[],
                                   text[], text[], text[], text[], text[], text[], text[], text[],
                                   bool, text[], text[], text[]);
CREATE OR REPLACE FUNCTION mta.finish(p_node bigint, p_node_name text, p_rcpt_ids bigint[],
                                      p_tokens bigint[], p_types text[],
                                      p_retry_at timestamptz[], p_dsn_status text[],
                                      p_dsn_diag text[], p_dsn_mta text[], p_bounce_cat text[],
                                      p_source_ip text[], p_dest_ip text[],
                                      p_tls_protocol text[], p_tls_cipher text[],
                                      p_generate_bounces bool,
                                      p_tls_policy text[] DEFAULT NULL,
                                      p_tls_failure text[] DEFAULT NULL,
                                      p_tls_policy_domain text[] DEFAULT NULL,
                                      p_hop_dsn bool[] DEFAULT NULL,
                                      p_delay_every int[] DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n_final int;
    n_defer int;
    b_msg bigint[];
    b_rcpt text[];
    b_status text[];
    b_diag text[];
    b_mta text[];
    b_orcpt text[];
    b_action text[];
    l_msg bigint[];
    l_rcpt text[];
    l_status text[];
    l_diag text[];
    l_mta text[];
    l_orcpt text[];
    v_dsn record;
    k_pipe text[];
    k_domain text[];
    k_vmta text[];
    k_at timestamptz[];
    h_rcpt text[];
    h_why text[];
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_types) t WHERE t IS NULL OR t NOT IN ('d', 'b', 't')) THEN
        RAISE EXCEPTION 'finish: p_types must hold only ''d'', ''b'' or ''t'', got %', p_types
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Final outcomes: delete the recipient, one accounting row each.
    WITH f AS (
        SELECT * FROM unnest(p_rcpt_ids, p_tokens, p_types, p_dsn_status, p_dsn_diag, p_dsn_mta,
                             p_bounce_cat, p_source_ip, p_dest_ip, p_tls_protocol, p_tls_cipher,
                             p_tls_policy, p_tls_failure, p_tls_policy_domain)
                      WITH ORDINALITY
                   AS f(id, token, type, status, diag, dsn_mta, cat, src_ip, dst_ip, tls_proto,
                        tls_cipher, tls_pol, tls_fail, tls_dom, i)
         WHERE f.type IN ('d', 'b')
    ), d AS (
        DELETE FROM mta.recipients r USING f
         WHERE r.id = f.id AND r.lease_token = f.token
        RETURNING r.id AS rid, r.message_id, r.rcpt, r.domain, r.vmta, r.pipe, r.job_id,
                  r.queued_at, r.attempts, f.type, f.status, f.diag, f.dsn_mta, f.cat, f.src_ip,
                  f.dst_ip, f.tls_proto, f.tls_cipher, f.tls_pol, f.tls_fail, f.tls_dom,
                  r.dsn_notify, r.dsn_orcpt, coalesce(p_hop_dsn[f.i], true) AS hop_dsn
    ), a AS (
        INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, dsn_action, dsn_status,
                              dsn_diag, dsn_mta, bounce_cat, dlv_source_ip, dlv_destination_ip,
                              dlv_size, vmta, job_id, envid, queue, pipe, node, message_id,
                              attempt, tls_protocol, tls_cipher, rcpt_id, meta, tls_policy,
                              tls_failure, tls_policy_domain, orcpt, header_message_id)
            SELECT d.type, now(), d.queued_at, m.mail_from, d.rcpt,
                   CASE d.type WHEN 'd' THEN 'relayed' ELSE 'failed' END, d.status, d.diag,
                   d.dsn_mta, d.cat, d.src_ip, d.dst_ip, m.size, nullif(d.vmta, ''), d.job_id,
                   m.envid, mta.queue_name(d.domain, d.vmta), d.pipe, p_node_name, d.message_id,
                   d.attempts, d.tls_proto, d.tls_cipher, d.rid,
                   -- metadata (migrations/0006): no lookup for a message without
                   CASE WHEN m.meta IS NOT NULL
                        THEN m.meta || coalesce((SELECT rm.meta FROM mta.recipient_meta rm
                                                  WHERE rm.message_id = d.message_id
                                                    AND rm.rcpt_id = d.rid), '{}') END,
                   d.tls_pol, d.tls_fail, d.tls_dom, d.dsn_orcpt,
                   -- reports without VERP or ENVID match by it (migrations/0013)
                   CASE WHEN d.type = 'd' THEN nullif(btrim(m.message_id_header, '<> '), '') END
              FROM d JOIN mta.messages m ON m.id = d.message_id
            RETURNING type, rcpt, dsn_status, bounce_cat
    ), w AS (
        -- The rows a DSN is due for (the sender is checked where the DSN
        -- is made: most rows are neither, and look nothing up).
        SELECT d.message_id, d.rcpt, d.status, d.diag, d.dsn_mta, d.dsn_orcpt,
               CASE d.type WHEN 'b' THEN 'failed' ELSE 'relayed' END AS action
          FROM d
         WHERE (d.type = 'b' AND (d.dsn_notify IS NULL OR d.dsn_notify & 2 <> 0))
            OR (d.type = 'd' AND d.dsn_notify & 1 <> 0 AND NOT d.hop_dsn)
    )
    SELECT (SELECT count(*) FROM a), array_agg(w.message_id ORDER BY w.message_id),
           array_agg(w.rcpt ORDER BY w.message_id), array_agg(w.status ORDER BY w.message_id),
           array_agg(w.diag ORDER BY w.message_id), array_agg(w.dsn_mta ORDER BY w.message_id),
           array_agg(w.dsn_orcpt ORDER BY w.message_id), array_agg(w.action ORDER BY w.message_id),
           -- hard bounces feed the suppression list (sql/017_inbound.sql)
           (SELECT array_agg(a.rcpt) FROM a
             WHERE a.type = 'b' AND mta.hard_bounce_cat(a.bounce_cat)),
           (SELECT array_agg('hard bounce: ' || a.bounce_cat || ' ' || a.dsn_status) FROM a
             WHERE a.type = 'b' AND mta.hard_bounce_cat(a.bounce_cat))
      INTO n_final, b_msg, b_rcpt, b_status, b_diag, b_mta, b_orcpt, b_action, h_rcpt, h_why
      FROM w;
    IF h_rcpt IS NOT NULL THEN
        PERFORM mta.feed_hard_bounces(h_rcpt, h_why);
    END IF;

    -- Transient failures: back to the queue at retry_at, lease cleared.
    WITH f AS (
        SELECT * FROM unnest(p_rcpt_ids, p_tokens, p_types, p_retry_at, p_dsn_status, p_dsn_diag,
                             p_dsn_mta, p_bounce_cat, p_source_ip, p_dest_ip, p_tls_protocol,
                             p_tls_cipher, p_tls_policy, p_tls_failure, p_tls_policy_domain)
                      WITH ORDINALITY
                   AS f(id, token, type, retry_at, status, diag, dsn_mta, cat, src_ip, dst_ip,
                        tls_proto, tls_cipher, tls_pol, tls_fail, tls_dom, i)
         WHERE f.type = 't'
    ), u AS (
        -- NOTIFY=DELAY: a delay DSN is due when notify-of-delay-every has
        -- passed since queueing or the last one; now() marks it (no earlier
        -- transaction wrote this now()), and RETURNING sees the new value.
        UPDATE mta.recipients r
           SET next_attempt = coalesce(f.retry_at, now()), owner = NULL, lease_until = NULL,
               lease_token = NULL, last_error = f.diag,
               dsn_delay_at = CASE WHEN r.dsn_notify & 4 <> 0
                                        AND coalesce(r.dsn_delay_at, r.queued_at)
                                            + p_delay_every[f.i] * interval '1 second' <= now()
                                   THEN now() ELSE r.dsn_delay_at END
          FROM f
         WHERE r.id = f.id AND r.lease_token = f.token
        RETURNING r.id AS rid, r.message_id, r.rcpt, r.domain, r.vmta, r.pipe, r.job_id,
                  r.queued_at, r.attempts, f.status, f.diag, f.dsn_mta, f.cat, f.src_ip,
                  f.dst_ip, f.tls_proto, f.tls_cipher, r.next_attempt, f.tls_pol, f.tls_fail,
                  f.tls_dom, r.dsn_orcpt,
                  coalesce(r.dsn_notify & 4 <> 0 AND r.dsn_delay_at = now(), false) AS delay_due
    ), a AS (
        INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, dsn_action, dsn_status,
                              dsn_diag, dsn_mta, bounce_cat, dlv_source_ip, dlv_destination_ip,
                              dlv_size, vmta, job_id, envid, queue, pipe, node, message_id,
                              attempt, tls_protocol, tls_cipher, rcpt_id, meta, tls_policy,
                              tls_failure, tls_policy_domain, orcpt)
            SELECT 't', now(), u.queued_at, m.mail_from, u.rcpt, 'delayed', u.status, u.diag,
                   u.dsn_mta, u.cat, u.src_ip, u.dst_ip, m.size, nullif(u.vmta, ''), u.job_id,
                   m.envid, mta.queue_name(u.domain, u.vmta), u.pipe, p_node_name,
                   u.message_id, u.attempts, u.tls_proto, u.tls_cipher, u.rid,
                   -- metadata (migrations/0006): no lookup for a message without
                   CASE WHEN m.meta IS NOT NULL
                        THEN m.meta || coalesce((SELECT rm.meta FROM mta.recipient_meta rm
                                                  WHERE rm.message_id = u.message_id
                                                    AND rm.rcpt_id = u.rid), '{}') END,
                   u.tls_pol, u.tls_fail, u.tls_dom, u.dsn_orcpt
              FROM u JOIN mta.messages m ON m.id = u.message_id
            RETURNING 1
    ), x AS (
        -- The queues' last error: one row per queue, skipped when unchanged and
        -- fresh or when another node is writing it (SKIP LOCKED: it is only
        -- information, never worth a wait or a deadlock).
        SELECT DISTINCT ON (u.pipe, u.domain, u.vmta) u.pipe, u.domain, u.vmta, u.diag
          FROM u ORDER BY u.pipe, u.domain, u.vmta
    ), l AS (
        SELECT q.pipe, q.domain, q.vmta, x.diag
          FROM mta.queue q JOIN x ON q.pipe = x.pipe AND q.domain = x.domain AND q.vmta = x.vmta
         WHERE q.last_error IS DISTINCT FROM x.diag OR q.last_error_at IS NULL
            OR q.last_error_at < now() - interval '10 seconds'
           FOR UPDATE OF q SKIP LOCKED
    ), qu AS (
        UPDATE mta.queue q SET last_error = l.diag, last_error_at = now()
          FROM l WHERE q.pipe = l.pipe AND q.domain = l.domain AND q.vmta = l.vmta
    ), k AS (
        -- The retry times, for the queues' ready markers (sql/040_node.sql).
        SELECT u.pipe, u.domain, u.vmta, min(u.next_attempt) AS at
          FROM u GROUP BY 1, 2, 3
    ), l2 AS (
        SELECT array_agg(u.message_id ORDER BY u.message_id) AS msg,
               array_agg(u.rcpt ORDER BY u.message_id) AS rcpt,
               array_agg(u.status ORDER BY u.message_id) AS status,
               array_agg(u.diag ORDER BY u.message_id) AS diag,
               array_agg(u.dsn_mta ORDER BY u.message_id) AS dsn_mta,
               array_agg(u.dsn_orcpt ORDER BY u.message_id) AS orcpt
          FROM u WHERE u.delay_due
    )
    SELECT (SELECT count(*) FROM a), array_agg(k.pipe), array_agg(k.domain), array_agg(k.vmta),
           array_agg(k.at), (SELECT l2.msg FROM l2), (SELECT l2.rcpt FROM l2),
           (SELECT l2.status FROM l2), (SELECT l2.diag FROM l2), (SELECT l2.dsn_mta FROM l2),
           (SELECT l2.orcpt FROM l2)
      INTO n_defer, k_pipe, k_domain, k_vmta, k_at, l_msg, l_rcpt, l_status, l_diag, l_mta,
           l_orcpt
      FROM k;
    PERFORM mta.ready_note(k_pipe, k_domain, k_vmta, k_at);

    IF l_msg IS NOT NULL THEN
        b_msg := b_msg || l_msg;
        b_rcpt := b_rcpt || l_rcpt;
        b_status := b_status || l_status;
        b_diag := b_diag || l_diag;
        b_mta := b_mta || l_mta;
        b_orcpt := b_orcpt || l_orcpt;
        b_action := b_action || array_fill('delayed'::text, ARRAY[cardinality(l_msg)]);
    END IF;
    IF p_generate_bounces AND b_msg IS NOT NULL THEN
        FOR v_dsn IN
            SELECT g.message_id, g.action, m.mail_from, m.pipe,
                   array_agg(g.rcpt ORDER BY g.i) AS rcpts,
                   array_agg(g.status ORDER BY g.i) AS status,
                   array_agg(g.diag ORDER BY g.i) AS diag,
                   array_agg(g.mta ORDER BY g.i) AS mta,
                   array_agg(g.orcpt ORDER BY g.i) AS orcpt
              FROM unnest(b_msg, b_rcpt, b_status, b_diag, b_mta, b_orcpt, b_action)
                   WITH ORDINALITY AS g(message_id, rcpt, status, diag, mta, orcpt, action, i)
              JOIN mta.messages m ON m.id = g.message_id
             WHERE m.mail_from <> ''
             GROUP BY g.message_id, g.action, m.mail_from, m.pipe
             ORDER BY g.message_id, g.action
        LOOP
            PERFORM mta.enqueue_bytes('', ARRAY[v_dsn.mail_from],
                                      mta.dsn_content(v_dsn.message_id, p_node_name,
                                                      v_dsn.rcpts, v_dsn.status, v_dsn.diag,
                                                      v_dsn.mta, v_dsn.action, v_dsn.orcpt),
                                      NULL, NULL, v_dsn.pipe, NULL, 0, now());
        END LOOP;
    END IF;
    RETURN n_final + n_defer;
END
$$;
