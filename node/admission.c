/* admission: the queue table of one pipe process and the decision whether
 * a destination queue may start a delivery session now (see admission.h).
 *
 * The table owns its queues (struct admission_queue) and their name
 * strings; sessions point at their queue while they run, which is why a
 * queue with sessions (active > 0) or a claim in flight is never pruned.
 * Nothing here does I/O: the session module reports connection outcomes,
 * the worker's tick asks admission_check, and unit tests drive both
 * (tests/unit/test_admission.c). */
#include "admission.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

struct admission {
    struct admission_queue **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
};

long long
admission_now_ms(void)
{
    return (long long)util_now_ms();
}

/* FNV-1a over "domain\0vmta". */
static uint64_t
queue_hash(const char *domain, const char *vmta)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)domain; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h = (h ^ 0) * 1099511628211ULL;
    for (const unsigned char *p = (const unsigned char *)vmta; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

struct admission *
admission_new(void)
{
    struct admission *a = xcalloc(1, sizeof *a);
    a->nbuckets = 64;
    a->buckets = xcalloc(a->nbuckets, sizeof *a->buckets);
    return a;
}

static void
queue_free(struct admission_queue *q)
{
    free(q->domain);
    free(q->vmta);
    free(q->name);
    free(q);
}

void
admission_free(struct admission *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->nbuckets; i++) {
        while (a->buckets[i]) {
            struct admission_queue *q = a->buckets[i];
            a->buckets[i] = q->hnext;
            queue_free(q);
        }
    }
    free(a->buckets);
    free(a);
}

static void
grow(struct admission *a)
{
    size_t n = a->nbuckets * 2;
    struct admission_queue **b = xcalloc(n, sizeof *b);
    for (size_t i = 0; i < a->nbuckets; i++) {
        while (a->buckets[i]) {
            struct admission_queue *q = a->buckets[i];
            a->buckets[i] = q->hnext;
            size_t k = (size_t)queue_hash(q->domain, q->vmta) & (n - 1);
            q->hnext = b[k];
            b[k] = q;
        }
    }
    free(a->buckets);
    a->buckets = b;
    a->nbuckets = n;
}

struct admission_queue *
admission_find(struct admission *a, const char *domain, const char *vmta)
{
    size_t k = (size_t)queue_hash(domain, vmta) & (a->nbuckets - 1);
    for (struct admission_queue *q = a->buckets[k]; q; q = q->hnext)
        if (strcmp(q->domain, domain) == 0 && strcmp(q->vmta, vmta) == 0)
            return q;
    return NULL;
}

struct admission_queue *
admission_queue(struct admission *a, const char *domain, const char *vmta)
{
    struct admission_queue *q = admission_find(a, domain, vmta);
    if (q)
        return q;
    if (a->count >= a->nbuckets)
        grow(a);
    q = xcalloc(1, sizeof *q);
    q->domain = xstrdup(domain);
    q->vmta = xstrdup(vmta);
    q->name = vmta[0] ? xasprintf("%s/%s", domain, vmta) : xstrdup(domain);
    q->last_active = admission_now_ms();
    size_t k = (size_t)queue_hash(domain, vmta) & (a->nbuckets - 1);
    q->hnext = a->buckets[k];
    a->buckets[k] = q;
    a->count++;
    return q;
}

size_t
admission_count(const struct admission *a)
{
    return a->count;
}

static bool
queue_idle(const struct admission_queue *q, long long now)
{
    /* A dead destination is remembered until its throttle has been over
     * for a while (its mail is deferred meanwhile, so no probe came). */
    bool throttle_over = q->throttle_level == 0 || now - q->throttle_until >= ADMISSION_IDLE_MS;
    return q->active == 0 && !q->claiming && !q->claim_wait && q->hold_until <= now &&
           throttle_over && now - q->last_active >= ADMISSION_IDLE_MS;
}

size_t
admission_prune(struct admission *a, long long now)
{
    size_t removed = 0;
    for (size_t i = 0; i < a->nbuckets; i++) {
        for (struct admission_queue **pp = &a->buckets[i]; *pp;) {
            struct admission_queue *q = *pp;
            if (queue_idle(q, now)) {
                *pp = q->hnext;
                queue_free(q);
                a->count--;
                removed++;
            } else {
                pp = &q->hnext;
            }
        }
    }
    return removed;
}

unsigned
admission_check(const struct admission_queue *q, const struct conf_domain *d,
                const struct admission_process *p, long long now)
{
    unsigned why = 0;
    if (p->stopping)
        why |= ADMISSION_LIMIT_STOPPING;
    if (p->sessions >= p->max_sessions)
        why |= ADMISSION_LIMIT_PROCESS;
    if (p->content_bytes >= p->content_budget)
        why |= ADMISSION_LIMIT_BUDGET;
    if (d->max_smtp_out != CONF_UNLIMITED && q->active >= d->max_smtp_out)
        why |= ADMISSION_LIMIT_CONNS;
    /* Without the slot connection the cluster-wide limit cannot be
     * enforced: no new connection for limited queues. */
    if (d->max_smtp_out != CONF_UNLIMITED && !p->slots_db_ready)
        why |= ADMISSION_LIMIT_NO_SLOTS_DB;
    if (q->hold_until > now)
        why |= ADMISSION_LIMIT_HOLD;
    if (q->throttle_level > 0) {
        if (q->throttle_until > now)
            why |= ADMISSION_LIMIT_THROTTLED;
        else if (q->active > 0)
            why |= ADMISSION_LIMIT_PROBING; /* one probe at a time */
    }
    return why;
}

void
admission_reasons(unsigned reasons, char *out, size_t outlen)
{
    static const char *const names[] = {"process",   "budget",  "conns",    "hold",
                                        "throttled", "probing", "slots-db", "stopping"};
    size_t used = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (!(reasons & (1u << i)))
            continue;
        int n = snprintf(out + used, outlen - used, "%s%s", used ? "," : "", names[i]);
        if (n < 0 || (size_t)n >= outlen - used)
            break;
        used += (size_t)n;
    }
}

void
admission_hold(struct admission_queue *q, long long now, long long ms)
{
    if (now + ms > q->hold_until)
        q->hold_until = now + ms;
}

bool
admission_connected(struct admission_queue *q, const struct conf_domain *d, bool connected,
                    long long now)
{
    q->last_active = now;
    if (connected) {
        if (q->throttle_level > 0)
            log_info("queue=%s event=unthrottled after=%u", q->name, q->throttle_level);
        q->fail_run = 0;
        q->throttle_level = 0;
        q->throttle_until = 0;
        return false;
    }
    q->fail_run++;
    /* A failed probe throttles again at once; otherwise a run of failures. */
    if (q->throttle_level == 0 && q->fail_run < ADMISSION_DEAD_AFTER)
        return false;
    if (q->throttle_level > 0 && q->throttle_until > now)
        return false; /* a session started before the throttle failed too */
    q->throttle_level++;
    uint64_t cap =
        d->max_retry_after_ms > d->retry_after_ms ? d->max_retry_after_ms : d->retry_after_ms;
    uint64_t wait = d->retry_after_ms;
    for (unsigned i = 1; i < q->throttle_level && wait < cap; i++)
        wait = wait > cap / 2 ? cap : wait * 2;
    q->throttle_until = now + (long long)wait;
    log_warn("queue=%s event=throttled failures=%u level=%u probe_in_ms=%llu", q->name, q->fail_run,
             q->throttle_level, (unsigned long long)wait);
    return true;
}

void
admission_claim_wait(struct admission_queue *q, struct admission_waiter *w, void *owner)
{
    w->next = NULL;
    w->owner = owner;
    if (!q->claim_wait)
        q->claim_wait_tail = &q->claim_wait;
    *q->claim_wait_tail = w;
    q->claim_wait_tail = &w->next;
}

void
admission_claim_leave(struct admission_queue *q, struct admission_waiter *w)
{
    for (struct admission_waiter **pp = &q->claim_wait; *pp; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            if (!*pp)
                q->claim_wait_tail = pp;
            return;
        }
    }
}

void *
admission_claim_next(struct admission_queue *q)
{
    struct admission_waiter *w = q->claim_wait;
    if (!w)
        return NULL;
    admission_claim_leave(q, w);
    return w->owner;
}
