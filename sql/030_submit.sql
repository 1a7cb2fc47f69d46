-- 030_submit: bulk enqueue through the staging table mta.submit (DESIGN §6).
--
--   INSERT INTO mta.submit (mail_from, rcpt_to, content, job_id, vmta, pipe) SELECT ...
--   COPY mta.submit (mail_from, rcpt_to, content, ...) FROM STDIN
--
-- One row is ONE recipient (rcpt_to holds a single address). Rows of the same
-- statement with equal mail_from, content, job_id, vmta, pipe, envid, priority
-- and not_before become one message with several recipients, so a campaign with
-- identical content stores that content once. Optional columns: envid,
-- priority (default 0), not_before (default now()).
--
-- An AFTER ... FOR EACH STATEMENT trigger with a transition table does the
-- work set-based: checks (a failing row aborts the whole statement, nothing is
-- stored), then job and queue rows, messages, recipients and 'r' accounting
-- rows (unless mta.acct_received is off, see sql/020_enqueue.sql) in a few
-- statements, then deletes the staged rows again. Suppressed recipients
-- (sql/015_suppression.sql) are found with an anti-join in the same
-- statement: they get a 'b' row instead, and a message none of whose rows
-- is left is not stored. The same statement adds the recipients queued and
-- suppressed to the SQL door's counter (mta.inject_count). There is no
-- per-row trigger: its call overhead would dominate the cost of COPY.

-- The transition table may be larger than work_mem and then lives in a temp
-- file, so it is read as few times as possible: once for the checks and the
-- job and queue keys, twice for the rows themselves (small columns, then the
-- content of the first row of each message). A bulk loader that sets a large
-- work_mem in its session (e.g. 256MB) keeps it in memory.
CREATE OR REPLACE FUNCTION mta.submit_flush() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB' AS $$
DECLARE
    v_default text;
    v_acct bool := mta.acct_received();
    v_sup bool := EXISTS (SELECT 1 FROM mta.suppression);
    c record;
    v text;
BEGIN
    SELECT p.name INTO v_default FROM mta.pipes p WHERE p.is_default;

    -- Checks, in one pass. Senders, pipes and vmtas repeat, so their distinct
    -- values are checked; addresses that the fast test does not accept get
    -- the full check, which raises with the reason.
    SELECT array_agg(DISTINCT n.mail_from) AS senders,
           array_agg(DISTINCT n.pipe) AS pipes,
           array_agg(DISTINCT n.vmta) AS vmtas,
           array_agg(n.rcpt_to) FILTER (WHERE NOT coalesce(mta.address_plain(n.rcpt_to), false))
               AS odd_rcpts,
           count(*) FILTER (WHERE n.content IS NULL) AS null_content,
           min(octet_length(n.content)) AS min_size,
           max(octet_length(n.content)) AS max_size,
           array_agg(DISTINCT n.job_id) FILTER (WHERE n.job_id IS NOT NULL) AS jobs,
           array_agg(DISTINCT coalesce(n.pipe, v_default) || E'\x01'
                              || mta.address_domain_of(n.rcpt_to) || E'\x01'
                              || coalesce(n.vmta, '')) AS queues
      INTO c
      FROM new_rows n;
    IF c.senders IS NULL THEN
        RETURN NULL; -- no rows
    END IF;
    FOREACH v IN ARRAY c.senders LOOP
        PERFORM mta.check_sender(v);
    END LOOP;
    FOREACH v IN ARRAY c.pipes LOOP
        PERFORM mta.resolve_pipe(v);
    END LOOP;
    FOREACH v IN ARRAY c.vmtas LOOP
        PERFORM mta.check_vmta(v);
    END LOOP;
    PERFORM mta.check_job_id(j) FROM unnest(c.jobs) j;
    PERFORM mta.check_envid(e) FROM (SELECT DISTINCT envid FROM new_rows WHERE envid IS NOT NULL) n(e);
    IF c.odd_rcpts IS NOT NULL THEN
        PERFORM mta.address_domain_full(r, 'rcpt_to') FROM unnest(c.odd_rcpts) r;
    END IF;
    IF c.null_content > 0 THEN
        PERFORM mta.check_content(NULL);
    END IF;
    IF c.min_size = 0 THEN
        PERFORM mta.check_content(''::bytea);
    END IF;
    IF c.max_size > 67108864 THEN
        RAISE EXCEPTION 'content is % octets, at most 67108864 (64 MB) allowed', c.max_size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Job and queue rows first, in key order, as mta.enqueue() does.
    INSERT INTO mta.job (job_id)
        SELECT j FROM unnest(c.jobs) j ORDER BY 1 ON CONFLICT DO NOTHING;
    INSERT INTO mta.queue (pipe, domain, vmta)
        SELECT split_part(k, E'\x01', 1), split_part(k, E'\x01', 2), split_part(k, E'\x01', 3)
          FROM unnest(c.queues) k ORDER BY 1, 2, 3
        ON CONFLICT DO NOTHING;

    -- Rows of equal (content, sender, job, vmta, pipe, envid, priority,
    -- not_before) form one message; its id comes from the first of them.
    WITH src AS MATERIALIZED (
        SELECT n.id, n.mail_from, n.rcpt_to, mta.address_domain_of(n.rcpt_to) AS domain,
               n.job_id, coalesce(n.vmta, '') AS vmta, coalesce(n.pipe, v_default) AS pipe,
               n.envid, coalesce(n.priority, 0) AS priority,
               coalesce(n.not_before, now()) AS not_before,
               octet_length(n.content) AS size, sha256(convert_to(n.content, 'UTF8')) AS h
          FROM new_rows n
    ), hit AS MATERIALIZED (
        -- The suppressed rows, with the entry mta.suppression_match would
        -- pick (the most specific). One probe of the unique index per row
        -- for both keys (address, '@domain'): cheaper than hashing a large
        -- list, and with no hashable condition the planner keeps to it.
        -- Skipped when the list is empty.
        SELECT DISTINCT ON (s.id) s.id, e.address, e.scope, e.reason, e.source
          FROM src s
          JOIN mta.suppression e
            ON e.address = ANY (ARRAY[mta.suppression_key(s.rcpt_to, s.domain), '@' || s.domain])
         WHERE v_sup AND (e.scope IS NULL OR starts_with(s.job_id, e.scope))
           AND (e.expires IS NULL OR e.expires > now())
         ORDER BY s.id, left(e.address, 1) = '@', length(e.scope) DESC NULLS LAST
    ), keyed AS MATERIALIZED (
        SELECT s.*, min(s.id) OVER (PARTITION BY s.h, s.mail_from, s.job_id, s.vmta, s.pipe,
                                                 s.envid, s.priority, s.not_before) AS first_id
          FROM src s
         WHERE NOT EXISTS (SELECT 1 FROM hit WHERE hit.id = s.id)
    ), bounced AS (
        INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, dsn_action, dsn_status,
                              dsn_diag, bounce_cat, vmta, job_id, envid, queue, pipe, dlv_size)
            SELECT 'b', now(), now(), s.mail_from, s.rcpt_to, 'failed', '5.7.1',
                   mta.suppression_diag(h.address, h.scope, h.reason, h.source), 'suppressed',
                   nullif(s.vmta, ''), s.job_id, s.envid, mta.queue_name(s.domain, s.vmta),
                   s.pipe, s.size
              FROM hit h JOIN src s ON s.id = h.id
             ORDER BY h.id
    ), grp AS MATERIALIZED (
        SELECT nextval('mta.messages_id_seq') AS message_id, k.*
          FROM keyed k WHERE k.id = k.first_id
    ), msg AS (
        INSERT INTO mta.messages (id, mail_from, content, size, job_id, envid, vmta, pipe,
                                  priority, message_id_header)
            SELECT g.message_id, g.mail_from, b.content, g.size, g.job_id, g.envid,
                   nullif(g.vmta, ''), g.pipe, g.priority, mta.header_message_id(b.content)
              FROM grp g JOIN new_rows n ON n.id = g.id,
                   LATERAL (SELECT convert_to(n.content, 'UTF8') AS content) b
    ), rc AS (
        INSERT INTO mta.recipients (message_id, rcpt, domain, vmta, pipe, job_id, next_attempt,
                                    queued_at, priority)
            SELECT g.message_id, k.rcpt_to, k.domain, k.vmta, k.pipe, k.job_id, k.not_before,
                   now(), greatest(0, least(100, k.priority))
              FROM keyed k JOIN grp g ON g.id = k.first_id
             ORDER BY k.id
        RETURNING id, message_id, rcpt, domain, vmta, pipe, job_id
    ), staged AS (
        DELETE FROM mta.submit s USING src WHERE s.id = src.id
    ), counted AS (
        -- the SQL door's count (migrations/0014_inject_count.sql): one
        -- row of its own per statement, no shared row locked
        INSERT INTO mta.inject_count (door, recipients, suppressed)
            SELECT 'sql', (SELECT count(*) FROM rc), (SELECT count(*) FROM hit)
    )
    INSERT INTO mta.acct (type, time_logged, time_queued, orig, rcpt, vmta, job_id, envid, queue,
                          pipe, message_id, rcpt_id, dlv_size)
        SELECT 'r', now(), now(), g.mail_from, rc.rcpt, nullif(rc.vmta, ''), rc.job_id, g.envid,
               mta.queue_name(rc.domain, rc.vmta), rc.pipe, rc.message_id, rc.id, g.size
          FROM rc JOIN grp g ON g.message_id = rc.message_id
         WHERE v_acct;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER submit_flush AFTER INSERT ON mta.submit
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION mta.submit_flush();
