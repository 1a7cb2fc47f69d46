/* admission: the destination queues one pipe process knows, and whether a
 * queue may start a delivery session now.
 *
 * The queue table is a hash table keyed by (domain, virtual MTA), pruned of
 * queues that have been idle for a while. admission_check is the one place
 * that says whether a new session may start for a queue and, if not, why
 * (a bit mask of ADMISSION_LIMIT_*, as OpenSMTPD's CONNECTOR_LIMIT_*).
 *
 * Feedback: the outcome of each connection attempt is reported with
 * admission_connected. After ADMISSION_DEAD_AFTER consecutive connection
 * failures (no reply at all from any MX) the queue is throttled: no new
 * session for retry-after, then one probe session; a failed probe throttles
 * again for twice as long (at most max-retry-after), a successful one
 * opens the queue (Postfix's qmgr_queue_throttle). Holds (rate limits, full
 * slots, defer-queue patterns) are simpler: no session before a time.
 *
 * Times are milliseconds of the monotonic clock (admission_now_ms), never
 * the wall clock: a clock step neither freezes nor releases a queue. */
#ifndef PGMTA_ADMISSION_H
#define PGMTA_ADMISSION_H

#include <stdbool.h>
#include <stddef.h>

#include "conf.h"

/* Consecutive connection failures that throttle a destination. */
#define ADMISSION_DEAD_AFTER 3
/* A queue without sessions for this long is forgotten by admission_prune. */
#define ADMISSION_IDLE_MS 60000

/* Why a session may not start (bit mask; 0 = it may). */
enum {
    ADMISSION_LIMIT_PROCESS = 1u << 0,     /* the process runs its most sessions */
    ADMISSION_LIMIT_BUDGET = 1u << 1,      /* the content budget is used up */
    ADMISSION_LIMIT_CONNS = 1u << 2,       /* max-smtp-out sessions of this process */
    ADMISSION_LIMIT_HOLD = 1u << 3,        /* held: rate, slots or defer-queue */
    ADMISSION_LIMIT_THROTTLED = 1u << 4,   /* dead destination, waiting to probe */
    ADMISSION_LIMIT_PROBING = 1u << 5,     /* dead destination, a probe is running */
    ADMISSION_LIMIT_NO_SLOTS_DB = 1u << 6, /* limited queue, slot connection down */
    ADMISSION_LIMIT_STOPPING = 1u << 7,    /* the process is shutting down */
};

/* A place in a queue's claim line, embedded in its owner (a session). */
struct admission_waiter {
    struct admission_waiter *next;
    void *owner;
};

struct admission_queue {
    char *domain;
    char *vmta;
    char *name;         /* "domain" or "domain/vmta", for log lines */
    unsigned active;    /* sessions of this process */
    bool backoff;       /* in backoff mode (from the database) */
    unsigned pool_next; /* round robin over a virtual MTA pool */
    /* The highest priority of its ready recipients (0-100) when the poll
     * last offered it (mta.ready_queues; see README, Priorities). */
    unsigned ready_prio;
    /* holds and throttling (monotonic ms) */
    long long hold_until;
    unsigned fail_run;       /* consecutive connection failures */
    unsigned throttle_level; /* 0 open; n: throttled n times in a row */
    long long throttle_until;
    long long last_active; /* when a session last ran or the queue was seen */
    /* One claim of the queue in flight per process (concurrent claims of
     * one queue take alternate rows and split its messages); the others
     * wait in line, in order (admission_claim_*). */
    bool claiming;
    /* The last claim of the queue came back full (as many rows as asked):
     * more sessions may help. Until then a tick starts one session only,
     * so that a queue of one or two messages costs one slot and one claim. */
    bool more_work;
    struct admission_waiter *claim_wait;
    struct admission_waiter **claim_wait_tail;
    struct admission_queue *hnext;
};

/* What the process allows, for admission_check. */
struct admission_process {
    unsigned sessions, max_sessions;
    size_t content_bytes, content_budget;
    bool slots_db_ready;
    bool stopping;
};

struct admission;

struct admission *admission_new(void);
void admission_free(struct admission *a);
/* The queue (created when new). */
struct admission_queue *admission_queue(struct admission *a, const char *domain, const char *vmta);
/* The queue or NULL. */
struct admission_queue *admission_find(struct admission *a, const char *domain, const char *vmta);
size_t admission_count(const struct admission *a);
/* Forgets queues idle since ADMISSION_IDLE_MS: no session, no claim, no
 * hold or throttle pending. Returns how many were removed. */
size_t admission_prune(struct admission *a, long long now);

/* Whether queue Q with domain settings D may start a session at NOW:
 * 0, or the ADMISSION_LIMIT_* reasons. */
unsigned admission_check(const struct admission_queue *q, const struct conf_domain *d,
                         const struct admission_process *p, long long now);
/* Formats reasons as "conns,hold" into out. */
void admission_reasons(unsigned reasons, char *out, size_t outlen);

/* No new session of Q before NOW + MS (rate tokens, full slots, defer). */
void admission_hold(struct admission_queue *q, long long now, long long ms);
/* A session of Q tried to connect: CONNECTED when some MX answered at all
 * (even with an error), false when none did. Returns true when this
 * throttled the queue. */
bool admission_connected(struct admission_queue *q, const struct conf_domain *d, bool connected,
                         long long now);

/* The claim line of Q: join at the end, leave (when ending while in line),
 * and the owner of the next in line (removed from the line), or NULL. */
void admission_claim_wait(struct admission_queue *q, struct admission_waiter *w, void *owner);
void admission_claim_leave(struct admission_queue *q, struct admission_waiter *w);
void *admission_claim_next(struct admission_queue *q);

/* The monotonic clock, in milliseconds. */
long long admission_now_ms(void);

#endif
