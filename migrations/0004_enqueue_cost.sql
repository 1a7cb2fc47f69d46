-- 0004_enqueue_cost: a cheaper staging row for mta.submit.
--
-- The staging table's primary key was never used: the statement trigger
-- (sql/030_submit.sql) reads its rows from the transition table and deletes
-- them with a hash join over a scan of the table, and every staged row is
-- gone when its statement ends. Keeping the index cost one B-tree insertion
-- (and its page splits) per COPY row. The ids still come from
-- mta.submit_id_seq and stay unique within and across statements.
ALTER TABLE mta.submit DROP CONSTRAINT IF EXISTS submit_pkey;
