-- 025_enqueue_batch: mta.enqueue_batch(), group commit for the SMTP listener.
--
-- One call enqueues several messages in the caller's (implicit) transaction:
-- messages whose DATA ended close together share one COMMIT and so one WAL
-- flush. Each message goes through mta.enqueue_bytes inside its own
-- BEGIN ... EXCEPTION block (a subtransaction), so a message that fails its
-- checks is rolled back alone and reported in its row; the others are stored
-- when the statement commits. Nothing is accepted before that commit: if the
-- statement or its commit fails, nothing of the batch is stored.
--
-- Arguments are parallel arrays, one element per message (1-based):
--   p_mail_from[i], p_content[i], p_job_id[i], p_vmta[i], p_envid[i], p_pipe[i]
-- and the recipients flattened: message i owns p_rcpt_count[i] consecutive
-- elements of p_rcpt_to.
--
-- Returns one row per message, in order: its id, or the SQLSTATE and the
-- message text of the error that refused it.
--
-- Every message writes and so gets a subtransaction id; PostgreSQL caches 64
-- of them per backend before snapshots get slower, which is why callers keep
-- batches at 64 messages or fewer (smtp-listener.batch-max-messages).
CREATE OR REPLACE FUNCTION mta.enqueue_batch(p_mail_from text[], p_rcpt_count int[],
                                             p_rcpt_to text[], p_content bytea[],
                                             p_job_id text[], p_vmta text[], p_envid text[],
                                             p_pipe text[])
RETURNS TABLE (ord int, id bigint, err_state text, err_text text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n int := coalesce(cardinality(p_mail_from), 0);
    v_off int := 0;
    v_cnt int;
    v_state text;
    v_msg text;
BEGIN
    IF coalesce(cardinality(p_rcpt_count), 0) <> n OR coalesce(cardinality(p_content), 0) <> n
       OR coalesce(cardinality(p_job_id), 0) <> n OR coalesce(cardinality(p_vmta), 0) <> n
       OR coalesce(cardinality(p_envid), 0) <> n OR coalesce(cardinality(p_pipe), 0) <> n THEN
        RAISE EXCEPTION 'enqueue_batch: the arrays differ in length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n > 1000 THEN
        RAISE EXCEPTION 'enqueue_batch: % messages: at most 1000 per call', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. n LOOP
        v_cnt := p_rcpt_count[i];
        IF v_cnt IS NULL OR v_cnt < 0 OR v_off + v_cnt > coalesce(cardinality(p_rcpt_to), 0) THEN
            RAISE EXCEPTION 'enqueue_batch: recipient counts do not match rcpt_to'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        ord := i;
        BEGIN
            id := mta.enqueue_bytes(p_mail_from[i], p_rcpt_to[v_off + 1 : v_off + v_cnt],
                                    p_content[i], p_job_id[i], p_vmta[i], p_pipe[i],
                                    p_envid[i], 0, now());
            err_state := NULL;
            err_text := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
            id := NULL;
            err_state := v_state;
            err_text := v_msg;
        END;
        v_off := v_off + v_cnt;
        RETURN NEXT;
    END LOOP;
END
$$;
