-- 026_inject: mta.inject_batch(), the one statement behind the HTTP injection
-- API (POST /api/inject/v1, see README "Over HTTP"): every message of one
-- request is enqueued with mta.enqueue_bytes in the caller's single
-- transaction, so a request is stored whole or not at all.
--
-- p_contents[i] is message i; p_rcpts holds the recipients of all messages
-- in message order and p_rcpt_msg[k] the (1-based) message of p_rcpts[k],
-- non-decreasing. Returns the message ids in message order.
--
-- A refusal by enqueue_bytes is raised again with its SQLSTATE and text and
-- DETAIL 'message N' (N: the message it concerns), so the caller can name
-- the recipient at fault. One exception block for the whole loop: one
-- subtransaction per call, not per message.
CREATE OR REPLACE FUNCTION mta.inject_batch(p_mail_from text, p_contents bytea[], p_rcpts text[],
                                            p_rcpt_msg int[], p_job_id text, p_vmta text,
                                            p_pipe text, p_envid text)
RETURNS bigint[] LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- local copies: plpgsql keeps them expanded, so subscripts are O(1)
    v_contents bytea[] := p_contents;
    v_msg int[] := p_rcpt_msg;
    v_n int := coalesce(cardinality(p_contents), 0);
    v_ids bigint[] := '{}';
    v_list text[] := '{}';
    v_cur int := 1;
    v_k int := 0;
    v_r text;
    v_state text;
    v_text text;
    v_detail text;
BEGIN
    IF v_n = 0 THEN
        RAISE EXCEPTION 'no message to inject' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(cardinality(p_rcpts), 0) <> coalesce(cardinality(p_rcpt_msg), 0)
       OR array_ndims(p_rcpts) > 1 OR array_ndims(p_rcpt_msg) > 1
       OR array_ndims(p_contents) > 1 THEN
        RAISE EXCEPTION 'p_rcpts and p_rcpt_msg must be one-dimensional and of equal length'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        FOREACH v_r IN ARRAY p_rcpts LOOP
            v_k := v_k + 1;
            IF v_msg[v_k] IS DISTINCT FROM v_cur THEN
                IF v_msg[v_k] IS NULL OR v_msg[v_k] <> v_cur + 1 OR v_k = 1 THEN
                    RAISE EXCEPTION 'p_rcpt_msg[%] = %: messages must follow each other from 1',
                        v_k, v_msg[v_k] USING ERRCODE = 'invalid_parameter_value';
                END IF;
                v_ids := v_ids || mta.enqueue_bytes(p_mail_from, v_list, v_contents[v_cur],
                                                    p_job_id, p_vmta, p_pipe, p_envid, 0, NULL);
                v_cur := v_cur + 1;
                v_list := '{}';
            END IF;
            v_list := v_list || v_r;
        END LOOP;
        IF v_cur <> v_n THEN
            RAISE EXCEPTION '% messages but recipients for %', v_n, v_cur
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        v_ids := v_ids || mta.enqueue_bytes(p_mail_from, v_list, v_contents[v_cur], p_job_id,
                                            p_vmta, p_pipe, p_envid, 0, NULL);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_text = MESSAGE_TEXT,
                                v_detail = PG_EXCEPTION_DETAIL;
        RAISE EXCEPTION USING ERRCODE = v_state, MESSAGE = v_text,
            DETAIL = 'message ' || v_cur || coalesce(': ' || nullif(v_detail, ''), '');
    END;
    RETURN v_ids;
END
$$;
