-- 0020_warmup: IP warm-up plans per (source IP, provider key), their counters
-- and decisions. Functions and the view are in sql/056_warmup.sql.

-- One plan per source IP and provider key (the queue's limit key: the domain,
-- or "rollup:NAME"). day is the current day of the plan (1-based, a row of
-- mta.warmup_day); state is what the last daily decision did.
CREATE TABLE mta.warmup (
    ip text NOT NULL,
    key text NOT NULL,
    day int NOT NULL DEFAULT 1 CHECK (day >= 1),
    state text NOT NULL DEFAULT 'advancing'
        CHECK (state IN ('advancing', 'held', 'stepped-back', 'paused', 'done')),
    -- held (not advanced) when the previous day's rate is at or over these
    max_deferral_rate float8 NOT NULL DEFAULT 0.05 CHECK (max_deferral_rate >= 0),
    max_complaint_rate float8 NOT NULL DEFAULT 0.001 CHECK (max_complaint_rate >= 0),
    -- stepped back one day at or over these (higher) thresholds
    step_back_deferral_rate float8 NOT NULL DEFAULT 0.15 CHECK (step_back_deferral_rate >= 0),
    step_back_complaint_rate float8 NOT NULL DEFAULT 0.003 CHECK (step_back_complaint_rate >= 0),
    decided_for date,                   -- the last day mta.warmup_advance decided for
    reason text,                        -- why, in words
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ip, key)
);

-- The schedule of a plan: the allowance of each day.
CREATE TABLE mta.warmup_day (
    ip text NOT NULL,
    key text NOT NULL,
    day int NOT NULL CHECK (day >= 1),
    daily_limit int NOT NULL CHECK (daily_limit >= 0),
    hourly_limit int NOT NULL CHECK (hourly_limit >= 0),
    PRIMARY KEY (ip, key, day),
    FOREIGN KEY (ip, key) REFERENCES mta.warmup (ip, key) ON DELETE CASCADE
);

-- Messages reserved per plan and clock hour (counter-table style: one row per
-- window, taken in batches by mta.warmup_take). Old hours are deleted by
-- mta.warmup_advance.
CREATE TABLE mta.warmup_count (
    counter text NOT NULL,              -- 'warmup:IP:KEY'
    hour timestamptz NOT NULL,          -- date_trunc('hour', ...)
    sent int NOT NULL DEFAULT 0,
    PRIMARY KEY (counter, hour)
) WITH (fillfactor = 70);
