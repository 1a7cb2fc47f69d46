/* metrics: the node's shared counters (see metrics.h).
 *
 * Ownership: the segment is mapped once by the root and inherited by every
 * child; it lives as long as the node and is never unmapped (children exit
 * with it mapped). Each process keeps only a pointer to it and to its own
 * process slot.
 *
 * Queue label sets sit in an open-addressing table with more slots than
 * the cap, so a probe ends soon. A slot is claimed with a compare-and-swap
 * (free -> being written), its key written, then published (ready, with
 * release order); readers use ready slots only. Two processes that insert
 * the same key at the same moment may each claim a slot: the snapshot
 * merges equal keys, so the exposition never has a series twice. A process
 * killed while writing a key leaves a slot that is never published: it
 * costs one place under the cap and nothing else. Counters are relaxed
 * atomic adds: a scrape may see one counter a few increments ahead of
 * another, never a counter going down. */
#include "metrics.h"
#include "batch.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define QUEUE_SLOTS 256 /* > METRICS_QUEUES: probes stay short */

enum { SLOT_FREE, SLOT_WRITING, SLOT_READY };

const char *const metrics_categories[METRICS_NCATS] = {"bad-mailbox",         "bad-domain",
                                                       "inactive-mailbox",    "quota-issues",
                                                       "spam-related",        "policy-related",
                                                       "routing-errors",      "protocol-errors",
                                                       "content-related",     "message-expired",
                                                       "no-answer-from-host", "bad-connection",
                                                       "suppressed",          "other"};
const char *const metrics_door_names[METRICS_NDOORS] = {"smtp", "http"};
const char *const metrics_proc_kind_names[METRICS_NPROC_KINDS] = {"root", "pipe", "smtp-in",
                                                                  "webhooks"};

struct counts {
    _Atomic uint64_t delivered, deferred;
    _Atomic uint64_t bounced[METRICS_NCATS];
};

struct queue_slot {
    _Atomic uint32_t state;
    struct counts c;
    char domain[METRICS_DOMAIN_MAX];
    char vmta[METRICS_NAME_MAX];
    char pipe[METRICS_NAME_MAX];
};

struct hist {
    _Atomic uint64_t b[METRICS_MAX_BUCKETS + 1]; /* per bound, then +Inf; not cumulative */
    _Atomic uint64_t sum;
};

struct proc_slot {
    _Atomic pid_t pid; /* 0: free */
    uint32_t kind;
    uint32_t index;
    char name[METRICS_NAME_MAX];
    _Atomic int64_t smtp_connections;
};

struct segment {
    _Atomic uint32_t nqueues; /* slots claimed, at most METRICS_QUEUES */
    struct queue_slot q[QUEUE_SLOTS];
    struct counts other;
    _Atomic uint64_t injected[METRICS_NDOORS], suppressed[METRICS_NDOORS];
    struct hist h[METRICS_H_DB];
    struct hist db[METRICS_NPROC_KINDS];
    struct proc_slot procs[METRICS_PROCS];
};

static struct segment *seg;        /* inherited across fork */
static struct proc_slot *own_slot; /* this process's, or NULL */
static enum metrics_proc_kind own_kind = METRICS_PROC_ROOT;

/* Bucket bounds in the unit observed: microseconds or rows. */
static const uint64_t delivery_bounds[] = {5000,
                                           10000,
                                           25000,
                                           50000,
                                           100000,
                                           250000,
                                           500000,
                                           1000000,
                                           2500000,
                                           5000000,
                                           1000000 * 10ull,
                                           1000000 * 30ull,
                                           1000000 * 60ull,
                                           1000000 * 120ull,
                                           1000000 * 300ull};
static const uint64_t queue_time_bounds[] = {
    100000ull,     500000ull,     1000000ull,     5000000ull,     10000000ull,
    30000000ull,   60000000ull,   300000000ull,   600000000ull,   1800000000ull,
    3600000000ull, 7200000000ull, 21600000000ull, 86400000000ull, 259200000000ull};
static const uint64_t claim_bounds[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000};
static const uint64_t db_bounds[] = {250,   500,    1000,   2500,   5000,    10000,   25000,
                                     50000, 100000, 250000, 500000, 1000000, 2500000, 10000000};

struct hist_def {
    const char *name, *help;
    const uint64_t *bounds;
    size_t nbounds;
    double scale;
};

#define DEF(n, h, b, s)                                                                            \
    {                                                                                              \
        n, h, b, sizeof b / sizeof b[0], s                                                         \
    }
static const struct hist_def hist_defs[METRICS_NHISTS] = {
    DEF("pgmta_smtp_transaction_seconds",
        "Per SMTP transaction: from the start of its batch on the connection (the connect, for "
        "a connection's first batch) to the batch's last reply.",
        delivery_bounds, 1e6),
    DEF("pgmta_time_in_queue_seconds",
        "Per recipient with a final outcome (delivered or bounced): queued_at to the outcome.",
        queue_time_bounds, 1e6),
    DEF("pgmta_claim_batch_recipients", "Recipient rows per successful claim statement.",
        claim_bounds, 1),
    DEF("pgmta_db_statement_seconds",
        "Per database statement of the node: sent to its result (pipelined statements wait "
        "for the ones before them).",
        db_bounds, 1e6),
};
#undef DEF

_Static_assert(sizeof delivery_bounds / sizeof delivery_bounds[0] <= METRICS_MAX_BUCKETS,
               "delivery buckets");
_Static_assert(sizeof queue_time_bounds / sizeof queue_time_bounds[0] <= METRICS_MAX_BUCKETS,
               "queue-time buckets");
_Static_assert(sizeof db_bounds / sizeof db_bounds[0] <= METRICS_MAX_BUCKETS, "db buckets");

int
metrics_init(void)
{
    void *m = mmap(NULL, sizeof(struct segment), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    if (m == MAP_FAILED)
        return -1;
    if (seg)
        munmap(seg, sizeof *seg);
    seg = m; /* zero-filled: every counter 0, every slot free */
    own_slot = NULL;
    own_kind = METRICS_PROC_ROOT;
    return 0;
}

void
metrics_proc_attach(enum metrics_proc_kind kind, const char *name, unsigned index)
{
    own_kind = kind;
    own_slot = NULL;
    if (!seg)
        return;
    pid_t me = getpid();
    for (size_t i = 0; i < METRICS_PROCS; i++) {
        struct proc_slot *p = &seg->procs[i];
        pid_t free_pid = 0;
        if (!atomic_compare_exchange_strong(&p->pid, &free_pid, me))
            continue;
        p->kind = (uint32_t)kind;
        p->index = index;
        snprintf(p->name, sizeof p->name, "%s", name ? name : "");
        atomic_store_explicit(&p->smtp_connections, 0, memory_order_relaxed);
        own_slot = p;
        return;
    }
}

void
metrics_proc_detach(pid_t pid)
{
    if (!seg || pid <= 0)
        return;
    for (size_t i = 0; i < METRICS_PROCS; i++) {
        struct proc_slot *p = &seg->procs[i];
        if (atomic_load(&p->pid) == pid) {
            atomic_store(&p->smtp_connections, 0);
            atomic_store(&p->pid, 0);
        }
    }
}

size_t
metrics_category_index(const char *cat)
{
    for (size_t i = 0; cat && i < METRICS_NCATS - 1; i++)
        if (strcmp(cat, metrics_categories[i]) == 0)
            return i;
    return METRICS_NCATS - 1;
}

static uint32_t
key_hash(const char *domain, const char *vmta, const char *pipe)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    const char *parts[3] = {domain, vmta, pipe};
    for (int k = 0; k < 3; k++) {
        for (const char *p = parts[k]; *p; p++)
            h = (h ^ (unsigned char)*p) * 16777619u;
        h = (h ^ 0xff) * 16777619u; /* separator */
    }
    return h;
}

static bool
key_equal(const struct queue_slot *q, const char *domain, const char *vmta, const char *pipe)
{
    return strcmp(q->domain, domain) == 0 && strcmp(q->vmta, vmta) == 0 &&
           strcmp(q->pipe, pipe) == 0;
}

/* The counters of a label set: its slot, a new slot while under the cap,
 * else the shared "other". */
static struct counts *
queue_counts(const char *domain, const char *vmta, const char *pipe)
{
    if (strlen(domain) >= METRICS_DOMAIN_MAX || strlen(vmta) >= METRICS_NAME_MAX ||
        strlen(pipe) >= METRICS_NAME_MAX)
        return &seg->other;
    uint32_t h = key_hash(domain, vmta, pipe);
    for (uint32_t n = 0; n < QUEUE_SLOTS; n++) {
        struct queue_slot *q = &seg->q[(h + n) % QUEUE_SLOTS];
        uint32_t st = atomic_load_explicit(&q->state, memory_order_acquire);
        if (st == SLOT_READY) {
            if (key_equal(q, domain, vmta, pipe))
                return &q->c;
            continue;
        }
        if (st == SLOT_WRITING)
            continue;
        /* A free slot: the key is not in the table. */
        if (atomic_fetch_add_explicit(&seg->nqueues, 1, memory_order_relaxed) >= METRICS_QUEUES) {
            atomic_fetch_sub_explicit(&seg->nqueues, 1, memory_order_relaxed);
            return &seg->other;
        }
        uint32_t free_state = SLOT_FREE;
        if (!atomic_compare_exchange_strong(&q->state, &free_state, SLOT_WRITING)) {
            /* Taken meanwhile (a slot never becomes free again): ours if
             * it is published with this key by now, else probe on. */
            atomic_fetch_sub_explicit(&seg->nqueues, 1, memory_order_relaxed);
            if (atomic_load_explicit(&q->state, memory_order_acquire) == SLOT_READY &&
                key_equal(q, domain, vmta, pipe))
                return &q->c;
            continue;
        }
        memcpy(q->domain, domain, strlen(domain) + 1);
        memcpy(q->vmta, vmta, strlen(vmta) + 1);
        memcpy(q->pipe, pipe, strlen(pipe) + 1);
        atomic_store_explicit(&q->state, SLOT_READY, memory_order_release);
        return &q->c;
    }
    return &seg->other;
}

static void
add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

void
metrics_count_outcome(const char *domain, const char *vmta, const char *pipe, char type,
                      const char *cat)
{
    if (!seg)
        return;
    struct counts *c = queue_counts(domain ? domain : "", vmta ? vmta : "", pipe ? pipe : "");
    if (type == 'd')
        add(&c->delivered, 1);
    else if (type == 'b')
        add(&c->bounced[metrics_category_index(cat)], 1);
    else if (type == 't')
        add(&c->deferred, 1);
}

void
metrics_count_finished(const struct batch *b, const char *domain, const char *vmta,
                       const char *pipe, long long now_us)
{
    for (size_t i = 0; seg && i < b->nrcpts; i++) {
        const struct batch_rcpt *r = &b->rcpts[i];
        metrics_count_outcome(domain, vmta, pipe, r->type, r->bounce_cat);
        if (r->type != 't')
            metrics_observe(METRICS_H_QUEUE_TIME,
                            now_us > r->queued_at_us ? (uint64_t)(now_us - r->queued_at_us) : 0);
    }
}

void
metrics_count_injected(enum metrics_door door, size_t accepted, size_t suppressed)
{
    if (!seg || (unsigned)door >= METRICS_NDOORS)
        return;
    add(&seg->injected[door], accepted);
    add(&seg->suppressed[door], suppressed);
}

void
metrics_smtp_connections(int delta)
{
    if (own_slot)
        atomic_fetch_add_explicit(&own_slot->smtp_connections, delta, memory_order_relaxed);
}

void
metrics_observe(enum metrics_hist h, uint64_t v)
{
    if (!seg || (unsigned)h >= METRICS_NHISTS)
        return;
    struct hist *x = h == METRICS_H_DB ? &seg->db[own_kind] : &seg->h[h];
    const struct hist_def *d = &hist_defs[h];
    size_t i = 0;
    while (i < d->nbounds && v > d->bounds[i])
        i++;
    add(&x->b[i], 1);
    add(&x->sum, v);
}

uint64_t
metrics_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void
metrics_observe_since(enum metrics_hist h, uint64_t start_us)
{
    if (!seg || start_us == 0)
        return;
    uint64_t now = metrics_now_us();
    metrics_observe(h, now > start_us ? now - start_us : 0);
}

/* ---- reading ---- */

static uint64_t
load(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

static bool
same_key(const struct metrics_queue_counts *a, const struct queue_slot *q)
{
    return key_equal(q, a->domain, a->vmta, a->pipe);
}

static void
counts_add(struct metrics_queue_counts *out, struct counts *c)
{
    out->delivered += load(&c->delivered);
    out->deferred += load(&c->deferred);
    for (size_t k = 0; k < METRICS_NCATS; k++)
        out->bounced[k] += load(&c->bounced[k]);
}

static void
hist_snap(struct metrics_hist_snap *out, const struct hist_def *d, struct hist *h)
{
    out->name = d->name;
    out->help = d->help;
    out->bounds = d->bounds;
    out->nbounds = d->nbounds;
    out->scale = d->scale;
    uint64_t cum = 0;
    for (size_t i = 0; i <= d->nbounds; i++) {
        cum += load(&h->b[i]);
        if (i < d->nbounds)
            out->buckets[i] = cum;
    }
    out->count = cum;
    out->sum = load(&h->sum);
}

/* Fields 14, 15 (utime, stime, clock ticks) and 24 (rss, pages) of
 * /proc/PID/stat, counted after the ")" that ends the command name. */
static bool
proc_usage(pid_t pid, uint64_t *rss_bytes, double *cpu_seconds)
{
    char path[64], line[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return false;
    bool ok = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    const char *p = ok ? strrchr(line, ')') : NULL;
    unsigned long utime, stime;
    long rss;
    if (!p || sscanf(p + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d "
                     "%*d %*d %*u %*u %ld",
                     &utime, &stime, &rss) != 3)
        return false;
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    *cpu_seconds = (double)(utime + stime) / (double)(tick > 0 ? tick : 100);
    *rss_bytes = rss > 0 ? (uint64_t)rss * (uint64_t)(page > 0 ? page : 4096) : 0;
    return true;
}

void
metrics_snapshot(struct metrics_snap *s)
{
    memset(s, 0, sizeof *s);
    for (int h = 0; h < METRICS_H_DB; h++)
        hist_snap(h == METRICS_H_DELIVERY     ? &s->delivery
                  : h == METRICS_H_QUEUE_TIME ? &s->queue_time
                                              : &s->claim,
                  &hist_defs[h], &(struct hist){0});
    for (int k = 0; k < METRICS_NPROC_KINDS; k++)
        hist_snap(&s->db[k], &hist_defs[METRICS_H_DB], &(struct hist){0});
    if (!seg)
        return;
    s->enabled = true;
    for (size_t i = 0; i < QUEUE_SLOTS; i++) {
        struct queue_slot *q = &seg->q[i];
        if (atomic_load_explicit(&q->state, memory_order_acquire) != SLOT_READY)
            continue;
        size_t j = 0;
        while (j < s->nqueues && !same_key(&s->queues[j], q))
            j++;
        if (j == s->nqueues) {
            if (s->nqueues == METRICS_QUEUES)
                continue; /* cannot happen: the cap bounds the slots claimed */
            memcpy(s->queues[j].domain, q->domain, sizeof q->domain);
            memcpy(s->queues[j].vmta, q->vmta, sizeof q->vmta);
            memcpy(s->queues[j].pipe, q->pipe, sizeof q->pipe);
            s->nqueues++;
        }
        counts_add(&s->queues[j], &q->c);
    }
    struct metrics_queue_counts other = {.domain = "other"};
    counts_add(&other, &seg->other);
    uint64_t any = other.delivered + other.deferred;
    for (size_t k = 0; k < METRICS_NCATS; k++)
        any += other.bounced[k];
    if (any) {
        s->queues[s->nqueues++] = other;
        s->other = true;
    }
    for (int d = 0; d < METRICS_NDOORS; d++) {
        s->injected[d] = load(&seg->injected[d]);
        s->suppressed[d] = load(&seg->suppressed[d]);
    }
    hist_snap(&s->delivery, &hist_defs[METRICS_H_DELIVERY], &seg->h[METRICS_H_DELIVERY]);
    hist_snap(&s->queue_time, &hist_defs[METRICS_H_QUEUE_TIME], &seg->h[METRICS_H_QUEUE_TIME]);
    hist_snap(&s->claim, &hist_defs[METRICS_H_CLAIM], &seg->h[METRICS_H_CLAIM]);
    for (int k = 0; k < METRICS_NPROC_KINDS; k++)
        hist_snap(&s->db[k], &hist_defs[METRICS_H_DB], &seg->db[k]);
    for (size_t i = 0; i < METRICS_PROCS; i++) {
        struct proc_slot *p = &seg->procs[i];
        pid_t pid = atomic_load(&p->pid);
        if (pid <= 0)
            continue;
        struct metrics_proc_snap *o = &s->procs[s->nprocs++];
        o->pid = pid;
        o->kind = p->kind < METRICS_NPROC_KINDS ? (enum metrics_proc_kind)p->kind : 0;
        memcpy(o->name, p->name, sizeof o->name);
        o->name[sizeof o->name - 1] = '\0';
        o->index = p->index;
        o->smtp_connections = atomic_load_explicit(&p->smtp_connections, memory_order_relaxed);
        o->usage = proc_usage(pid, &o->rss_bytes, &o->cpu_seconds);
    }
}
