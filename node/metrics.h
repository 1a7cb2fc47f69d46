/* metrics: the node's own counters, histograms and per-process gauges for
 * GET /metrics (see README, Metrics).
 *
 * One shared segment per node (MAP_SHARED | MAP_ANONYMOUS), created by the
 * root before it forks: every process of the node (pipes, smtp-in,
 * webhooks, root) adds to it with relaxed atomics, the smtp-in process
 * that answers a scrape reads it (metrics_snapshot) and http_metrics.c
 * renders the snapshot. Nothing on the hot path takes a lock, writes to
 * the database or allocates. The counters live in the segment, not in the
 * process that counted them, so a restarted child neither loses nor
 * double counts what the dead one counted; they reset when the node (the
 * root) restarts.
 *
 * Every function is a no-op (a snapshot is empty) before metrics_init:
 * unit tests and tools that link the core library pay nothing. */
#ifndef PGMTA_METRICS_H
#define PGMTA_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Queue label sets (domain, vmta, pipe) counted one by one; the ones seen
 * after these are counted together under domain="other". */
#define METRICS_QUEUES 100
#define METRICS_DOMAIN_MAX 256
#define METRICS_NAME_MAX 64
/* Process slots: every process of the node at the same time. */
#define METRICS_PROCS 256
#define METRICS_MAX_BUCKETS 16

enum metrics_door { METRICS_DOOR_SMTP, METRICS_DOOR_HTTP, METRICS_NDOORS };

enum metrics_proc_kind {
    METRICS_PROC_ROOT,
    METRICS_PROC_PIPE,
    METRICS_PROC_SMTP_IN,
    METRICS_PROC_WEBHOOK,
    METRICS_NPROC_KINDS
};

enum metrics_hist {
    METRICS_H_DELIVERY,   /* seconds, per SMTP transaction */
    METRICS_H_QUEUE_TIME, /* seconds, queued_at to final outcome, per recipient */
    METRICS_H_CLAIM,      /* recipient rows per claim */
    METRICS_H_DB,         /* seconds, send to result, per process kind */
    METRICS_NHISTS
};

/* The bounce categories counted one by one (bounce.h's list); any other
 * string counts as "other". */
#define METRICS_NCATS 14
extern const char *const metrics_categories[METRICS_NCATS];
extern const char *const metrics_door_names[METRICS_NDOORS];
extern const char *const metrics_proc_kind_names[METRICS_NPROC_KINDS];

/* Creates the node's segment (in the root, before the first fork); 0 or
 * -1 when it cannot be mapped (then nothing is counted). Calling it again
 * starts a fresh segment (unit tests). */
int metrics_init(void);

/* The calling process takes a slot (its kind, the pipe's name or "",
 * its index) for its process gauges and labels its database latency with
 * KIND. */
void metrics_proc_attach(enum metrics_proc_kind kind, const char *name, unsigned index);
/* The root frees the slot of a child it reaped. */
void metrics_proc_detach(pid_t pid);

/* Counts the final outcome ('d', 'b' or 't') of one recipient of queue
 * (DOMAIN, VMTA, PIPE); CAT is the bounce category of a 'b'. */
void metrics_count_outcome(const char *domain, const char *vmta, const char *pipe, char type,
                           const char *cat);
/* The outcomes of a batch whose finish committed, per recipient, and the
 * time in queue of the final ones (NOW_US: the wall clock). */
struct batch;
void metrics_count_finished(const struct batch *b, const char *domain, const char *vmta,
                            const char *pipe, long long now_us);
/* Recipients accepted at a door (their message committed), and how many of
 * them were known to be suppressed (a 'b' row, nothing queued). */
void metrics_count_injected(enum metrics_door door, size_t accepted, size_t suppressed);
/* An SMTP connection of this process opened (+1) or closed (-1). */
void metrics_smtp_connections(int delta);

/* Observes V (microseconds for the _seconds histograms, rows for the
 * claim histogram). */
void metrics_observe(enum metrics_hist h, uint64_t v);
/* Monotonic microseconds, for the start of what metrics_observe_since
 * measures. */
uint64_t metrics_now_us(void);
/* Observes the time since START_US (metrics_now_us); ignores 0. */
void metrics_observe_since(enum metrics_hist h, uint64_t start_us);

/* ---- reading ---- */

struct metrics_queue_counts {
    char domain[METRICS_DOMAIN_MAX];
    char vmta[METRICS_NAME_MAX];
    char pipe[METRICS_NAME_MAX];
    uint64_t delivered, deferred;
    uint64_t bounced[METRICS_NCATS];
};

struct metrics_hist_snap {
    const char *name; /* family name */
    const char *help;
    const uint64_t *bounds; /* upper bounds, in the unit observed */
    size_t nbounds;
    double scale;                          /* rendered value = observed / scale */
    uint64_t buckets[METRICS_MAX_BUCKETS]; /* cumulative, per bound */
    uint64_t count, sum;
};

struct metrics_proc_snap {
    pid_t pid;
    enum metrics_proc_kind kind;
    char name[METRICS_NAME_MAX];
    unsigned index;
    int64_t smtp_connections;
    bool usage;         /* /proc/PID/stat was read: */
    uint64_t rss_bytes; /* resident set */
    double cpu_seconds; /* user + system since the process started */
};

struct metrics_snap {
    bool enabled; /* false: metrics_init never ran */
    /* one entry per label set, equal ones merged; the last is
     * domain="other" when queues beyond METRICS_QUEUES were counted */
    struct metrics_queue_counts queues[METRICS_QUEUES + 1];
    size_t nqueues;
    bool other;
    uint64_t injected[METRICS_NDOORS], suppressed[METRICS_NDOORS];
    struct metrics_hist_snap delivery, queue_time, claim;
    struct metrics_hist_snap db[METRICS_NPROC_KINDS];
    struct metrics_proc_snap procs[METRICS_PROCS];
    size_t nprocs;
};

/* Copies the node's counters into S (heap: it is large), with each live
 * process's resident size and CPU time from /proc/PID/stat (procfs: memory,
 * never a disk wait). */
void metrics_snapshot(struct metrics_snap *s);

/* The category index of CAT (METRICS_NCATS - 1, "other", when unknown). */
size_t metrics_category_index(const char *cat);

#endif
