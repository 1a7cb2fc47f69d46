-- 0014_inject_count: recipients injected through the SQL door (mta.enqueue,
-- INSERT or COPY into mta.submit), counted by the statement that enqueues
-- them, in its transaction: a rolled-back enqueue counts nothing. Read by
-- GET /metrics (pgmta_sql_injected_recipients_total, see README, Metrics).
-- The SMTP and HTTP doors are counted by the node that serves them, not here.
--
-- door        'sql' (the only writer today)
-- recipients  recipients queued (suppressed ones not included)
-- suppressed  recipients left out because they are suppressed ('b' row)
--
-- Insert-only: every enqueue call (or mta.submit statement) adds a row of
-- its own, so injecting sessions never wait for each other's row locks
-- however long their transactions are. The housekeeping of a node folds the
-- committed rows into one row per door (mta.inject_count_compact). The total
-- of a door is the sum of its rows, and stays the same across a fold.
CREATE TABLE mta.inject_count (
    door text NOT NULL CHECK (door <> ''),
    recipients bigint NOT NULL CHECK (recipients >= 0),
    suppressed bigint NOT NULL CHECK (suppressed >= 0)
);
