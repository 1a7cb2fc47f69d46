-- 0005_ready_queues: finding work in O(what is returned) (see README,
-- Scheduling). Functions and triggers that maintain these tables live in
-- sql/040_node.sql.
--
--   mta.queue_ready   one marker per queue: next_at is a lower bound on when
--                     the queue may next have work a node can claim (NULL: no
--                     work known). mta.ready_queues() reads only the markers
--                     that are due, through ready_due, and verifies each.
--                     Kept apart from mta.queue so that enqueue, which may
--                     lock a marker row until it commits, never holds up the
--                     node's backoff, pause or last-error updates of mta.queue,
--                     and so that the frequent marker updates touch one small
--                     row and two indexes only.
--   mta.queue_wake    insert-only: a marker lowering that could not take the
--                     marker row at once (another transaction holds it). The
--                     next mta.ready_queues() of the pipe applies it.
--   mta.ready_cursor  per pipe, where the rotation over due markers stands.
CREATE TABLE mta.queue_ready (
    pipe text NOT NULL,
    domain text NOT NULL,
    vmta text NOT NULL DEFAULT '',
    next_at timestamptz,                -- NULL: idle
    hold_until timestamptz,             -- mta.queue_postpone(): not offered before
    -- Cooling (see mta.ready_queues): 0 = normal; 1 and 2 = found without work,
    -- not yet known to be idle. cool_xmax: snapshot xmax recorded at stage 2.
    stage smallint NOT NULL DEFAULT 0 CHECK (stage IN (0, 1, 2)),
    cool_xmax xid8,
    cool_since timestamptz,
    PRIMARY KEY (pipe, domain, vmta)
) WITH (fillfactor = 70);
CREATE INDEX queue_ready_due ON mta.queue_ready (pipe, next_at, domain, vmta)
    WHERE next_at IS NOT NULL;

CREATE TABLE mta.queue_wake (
    pipe text NOT NULL,
    domain text NOT NULL,
    vmta text NOT NULL,
    at timestamptz NOT NULL
);
CREATE INDEX queue_wake_pipe ON mta.queue_wake (pipe);

CREATE TABLE mta.ready_cursor (
    pipe text PRIMARY KEY,
    pos_at timestamptz NOT NULL DEFAULT 'infinity',
    pos_domain text NOT NULL DEFAULT '',
    pos_vmta text NOT NULL DEFAULT '',
    round_end timestamptz NOT NULL DEFAULT '-infinity'
);

-- Connection-slot keys: which (destination, source virtual MTA) a slot lock
-- is held under, for which queue. A slot of a queue whose domain has an
-- mx-rollup is held under "rollup:NAME", one of a virtual-MTA pool under the
-- member's name; the lock itself shows only a hash, so the node records the
-- key when it takes the slot (mta.take_slot). queue_key is mta.queue_key()
-- of (key_domain, key_vmta).
CREATE TABLE mta.slot_key (
    key_domain text NOT NULL,
    key_vmta text NOT NULL,
    domain text NOT NULL,
    vmta text NOT NULL,
    queue_key bigint NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_domain, key_vmta, domain, vmta)
);
CREATE INDEX slot_key_hash ON mta.slot_key (queue_key);
CREATE INDEX slot_key_queue ON mta.slot_key (domain, vmta);

-- Backfill: every existing queue with recipients is due now; the first
-- mta.ready_queues() of its pipe verifies it.
INSERT INTO mta.queue_ready (pipe, domain, vmta, next_at)
SELECT q.pipe, q.domain, q.vmta,
       (SELECT min(r.next_attempt) FROM mta.recipients r
         WHERE r.pipe = q.pipe AND r.domain = q.domain AND r.vmta = q.vmta)
  FROM mta.queue q
 ORDER BY 1, 2, 3;
