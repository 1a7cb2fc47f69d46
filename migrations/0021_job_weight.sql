-- 0021_job_weight: per-job weights in the claim's round robin (see README,
-- Priorities).
--
-- Within one priority of a queue the claim gives each job `weight` turns
-- per round (mta.claim_many): a job of weight 3 sends three messages for
-- every one of a job of weight 1. 1 to 100, default 1 (all jobs alike, as
-- before). Set with mta.set_job_weight() or `pgmta job weight JOB N`.
ALTER TABLE mta.job ADD COLUMN weight smallint NOT NULL DEFAULT 1
    CONSTRAINT job_weight_range CHECK (weight BETWEEN 1 AND 100);
