-- 0014_inject_counter: recipients injected through the SQL door (mta.enqueue,
-- INSERT or COPY into mta.submit), counted by the statement that enqueues
-- them, in its transaction: a rolled-back enqueue counts nothing. Read by
-- GET /metrics (pgmta_sql_injected_recipients_total, see README, Metrics).
-- The SMTP and HTTP doors are counted by the node that serves them, not here.
--
-- door        'sql' (the only writer today)
-- shard       pg_backend_pid() % 16 of the writing session: each enqueue
--             adds to one row and holds its lock until commit, so sessions
--             injecting at once mostly write different rows
-- recipients  recipients queued (suppressed ones not included)
-- suppressed  recipients left out because they are suppressed ('b' row)
--
-- The total of a door is the sum of its rows; rows are never deleted.
CREATE TABLE mta.inject_counter (
    door text NOT NULL CHECK (door <> ''),
    shard smallint NOT NULL CHECK (shard BETWEEN 0 AND 15),
    recipients bigint NOT NULL DEFAULT 0,
    suppressed bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (door, shard)
);
