/* sched: cluster-wide connection slots and rate tokens (see sched.h).
 *
 * The sched owns its database connection (the slot session: advisory locks
 * live and die with it), a hash table of the queues this process has asked
 * about, and every request until its callback has been called. A queue owns
 * the list of slots held on the current session, the FIFO of slot requests
 * (at most one of them in flight: advisory locks are re-entrant within a
 * session, so two concurrent tries would both get the same slot) and, per
 * kind, a token cache with its FIFO of token requests (at most one
 * reservation in flight). Invariant: a FIFO is non-empty only while its
 * request is in flight, so db_free completing the in-flight requests with
 * NULL completes every request.
 *
 * Queues nobody uses (no slots, nothing pending, no cached tokens) are
 * dropped by a periodic sweep, so memory follows the queues in use.
 *
 * The callback rule: a request function never calls its callback. Answers
 * known at once (unlimited limits, max-smtp-out 0, cached tokens, a retry
 * wait, the database not connected) go on the sched's answer FIFO, which
 * one event (ev_answer) empties from the next loop turn: one event for all
 * ready answers, however many. Answers from the database come from db
 * callbacks, which run from the loop too. Tokens answered from the cache
 * are taken from it at once, so a later request cannot count them twice.
 *
 * Time: every local deadline (token cache age, retry_at, the sweep) is
 * util_now_ms(), CLOCK_MONOTONIC, and the timers are libevent's, which use
 * the monotonic clock too: stepping the wall clock neither freezes nor
 * floods a throttled queue. */
#include "sched.h"

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "db.h"
#include "log.h"
#include "priority.h"
#include "util.h"

_Static_assert(SCHED_LOCK_CLASS == 1347223552, "lock class is spelled out in the SQL below");

#define SCHED_HASH_SIZE 1024
/* Cached tokens older than this are dropped: they were reserved for a moment
 * that has passed, and using them later would burst above the rate. */
#define SCHED_TOKEN_TTL_MS 1000
/* wait_ms answered after a database failure. */
#define SCHED_FAIL_WAIT_MS 1000
#define SCHED_CHECK_MS 1000
#define SCHED_SWEEP_MS 60000

static const char *const kind_names[] = {"msg", "connect"};

struct sched_req {
    union {
        sched_slot_cb slot;
        sched_tokens_cb tokens;
    } cb;
    void *arg;
    uint32_t n; /* slots: max-smtp-out; tokens: want */
    /* Slots: the queue the slot serves (recorded by mta.take_slot) and its
     * priority (mta.take_slot_prio). */
    char *qdomain, *qvmta;
    unsigned prio;
    /* On the answer FIFO: the answer to deliver. */
    bool is_slot;
    int slot;
    unsigned granted, wait_ms;
    struct sched_req *next;
};

struct sched_fifo {
    struct sched_req *head, *tail;
};

struct sched_bucket {
    unsigned cached;
    uint64_t cached_at; /* when the cached tokens were granted */
    uint64_t retry_at;  /* no token before this (after a 0 grant) */
    uint32_t count, period_ms;
    bool fetching;
    struct sched_fifo waiters;
};

struct sched_queue {
    char *domain;
    char *vmta; /* "" = none */
    uint16_t *held;
    unsigned nheld, capheld;
    bool taking;
    struct sched_req *taking_req;
    struct sched_fifo slot_waiters;
    struct sched_bucket bucket[2];
    struct sched_queue *next;
};

/* The argument of one database request. */
struct sched_call {
    struct sched *s;
    struct sched_queue *q;
    enum sched_kind kind;
    int slot;
};

struct sched {
    struct event_base *base;
    struct db *db;
    char *label;
    sched_lost_cb lost_cb;
    void *lost_arg;
    long long node_id;
    bool live; /* a session is (believed to be) up */
    bool freeing;
    unsigned sessions;
    struct event *ev_check;
    struct event *ev_answer; /* delivers the answer FIFO */
    struct sched_fifo answers;
    bool answering;    /* on_answer is running: sched_free leaves s to it */
    bool free_pending; /* sched_free ran inside on_answer */
    uint64_t next_sweep;
    struct sched_queue *table[SCHED_HASH_SIZE];
};

static void sched_slot_next(struct sched *s, struct sched_queue *q);
static void sched_bucket_fetch(struct sched *s, struct sched_queue *q, enum sched_kind kind);

/* ---- requests and queues ---- */

static void
fifo_push(struct sched_fifo *f, struct sched_req *r)
{
    r->next = NULL;
    if (f->tail)
        f->tail->next = r;
    else
        f->head = r;
    f->tail = r;
}

static struct sched_req *
fifo_pop(struct sched_fifo *f)
{
    struct sched_req *r = f->head;
    if (r) {
        f->head = r->next;
        if (!f->head)
            f->tail = NULL;
    }
    return r;
}

/* ---- answers known at once (the callback rule) ---- */

static void
answer_push(struct sched *s, struct sched_req *r)
{
    fifo_push(&s->answers, r);
    /* a zero timer: the next loop turn, after I/O (see util_defer_call) */
    static const struct timeval zero = {0, 0};
    if (!event_pending(s->ev_answer, EV_TIMEOUT, NULL))
        evtimer_add(s->ev_answer, &zero);
}

static void
answer_slot(struct sched *s, struct sched_req *r, int slot)
{
    r->is_slot = true;
    r->slot = slot;
    answer_push(s, r);
}

static void
answer_tokens(struct sched *s, struct sched_req *r, unsigned granted, unsigned wait_ms)
{
    r->is_slot = false;
    r->granted = granted;
    r->wait_ms = wait_ms;
    answer_push(s, r);
}

static struct sched_req *
req_new(uint32_t n, void *arg)
{
    struct sched_req *r = xcalloc(1, sizeof *r);
    r->n = n;
    r->arg = arg;
    return r;
}

static void
req_free(struct sched_req *r)
{
    free(r->qdomain);
    free(r->qvmta);
    free(r);
}

static void
answer_call(struct sched_req *r)
{
    if (r->is_slot)
        r->cb.slot(r->slot, r->arg);
    else
        r->cb.tokens(r->granted, r->wait_ms, r->arg);
    req_free(r);
}

/* Delivers the answers queued before this turn; a callback that asks again
 * is answered at the next activation. A callback may call sched_free. */
static void
on_answer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sched *s = arg;
    struct sched_req *r = s->answers.head;
    s->answers.head = s->answers.tail = NULL;
    s->answering = true;
    while (r && !s->free_pending) {
        struct sched_req *next = r->next;
        answer_call(r);
        r = next;
    }
    s->answering = false;
    if (!s->free_pending)
        return;
    /* sched_free ran inside a callback: fail the rest as it would have,
     * then free what it left to us */
    while (r) {
        struct sched_req *next = r->next;
        if (r->is_slot)
            r->slot = -1;
        else
            r->granted = 0, r->wait_ms = SCHED_FAIL_WAIT_MS;
        answer_call(r);
        r = next;
    }
    event_free(s->ev_answer);
    free(s);
}

static unsigned
queue_hash(const char *domain, const char *vmta)
{
    uint32_t h = 2166136261u;
    for (const char *p = domain; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    h = (h ^ '/') * 16777619u;
    for (const char *p = vmta; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % SCHED_HASH_SIZE;
}

static struct sched_queue *
queue_find(struct sched *s, const char *domain, const char *vmta, bool create)
{
    if (!vmta)
        vmta = "";
    unsigned h = queue_hash(domain, vmta);
    for (struct sched_queue *q = s->table[h]; q; q = q->next)
        if (!strcmp(q->domain, domain) && !strcmp(q->vmta, vmta))
            return q;
    if (!create)
        return NULL;
    struct sched_queue *q = xcalloc(1, sizeof *q);
    q->domain = xstrdup(domain);
    q->vmta = xstrdup(vmta);
    q->next = s->table[h];
    s->table[h] = q;
    return q;
}

static void
queue_free(struct sched_queue *q)
{
    free(q->domain);
    free(q->vmta);
    free(q->held);
    free(q);
}

static bool
queue_idle(const struct sched_queue *q, uint64_t now)
{
    if (q->nheld || q->taking || q->slot_waiters.head)
        return false;
    for (int k = 0; k < 2; k++) {
        const struct sched_bucket *b = &q->bucket[k];
        if (b->fetching || b->waiters.head || now < b->retry_at ||
            (b->cached && now - b->cached_at <= SCHED_TOKEN_TTL_MS))
            return false;
    }
    return true;
}

static void
sched_sweep(struct sched *s, uint64_t now)
{
    unsigned dropped = 0;
    for (unsigned i = 0; i < SCHED_HASH_SIZE; i++) {
        struct sched_queue **pp = &s->table[i];
        while (*pp) {
            struct sched_queue *q = *pp;
            if (queue_idle(q, now)) {
                *pp = q->next;
                queue_free(q);
                dropped++;
            } else {
                pp = &q->next;
            }
        }
    }
    if (dropped)
        log_debug("sched=%s event=sweep dropped=%u", s->label, dropped);
}

static struct sched_call *
call_new(struct sched *s, struct sched_queue *q, enum sched_kind kind, int slot)
{
    struct sched_call *c = xmalloc(sizeof *c);
    c->s = s;
    c->q = q;
    c->kind = kind;
    c->slot = slot;
    return c;
}

/* ---- the slot session ---- */

/* Every slot is gone with the session that held it. */
static void
sched_lose(struct sched *s, const char *why)
{
    if (!s->live)
        return;
    s->live = false;
    unsigned n = 0;
    for (unsigned i = 0; i < SCHED_HASH_SIZE; i++)
        for (struct sched_queue *q = s->table[i]; q; q = q->next) {
            n += q->nheld;
            q->nheld = 0;
        }
    log_warn("sched=%s event=slots-lost slots=%u reason=%s", s->label, n, why);
    if (s->lost_cb && !s->freeing)
        s->lost_cb(s->lost_arg);
}

static void
on_set_lock_pid(const PGresult *res, void *arg)
{
    struct sched_call *c = arg;
    struct sched *s = c->s;
    free(c);
    if (!res) {
        sched_lose(s, "connection-lost");
        return;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        log_error("sched=%s event=set-lock-pid-failed error=\"%s\"", s->label,
                  PQresultErrorMessage(res));
}

static void
sched_send_lock_pid(struct sched *s)
{
    if (s->node_id <= 0 || !db_ready(s->db))
        return;
    char id[32];
    snprintf(id, sizeof id, "%lld", s->node_id);
    const char *values[] = {id};
    struct sched_call *c = call_new(s, NULL, SCHED_MSG, -1);
    if (db_exec(s->db, "sched_set_lock_pid", 1, values, NULL, NULL, 0, on_set_lock_pid, c) < 0)
        free(c);
}

static void
on_ready(struct db *db, void *arg)
{
    (void)db;
    struct sched *s = arg;
    /* A reconnect we did not see coming: the old session, and its slots,
     * are gone. */
    sched_lose(s, "reconnected");
    s->live = true;
    s->sessions++;
    log_info("sched=%s event=session-up session=%u", s->label, s->sessions);
    sched_send_lock_pid(s);
}

static void
on_check(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sched *s = arg;
    if (s->live && !db_ready(s->db))
        sched_lose(s, "connection-lost");
    uint64_t now = util_now_ms();
    if (now >= s->next_sweep) {
        s->next_sweep = now + SCHED_SWEEP_MS;
        sched_sweep(s, now);
    }
}

struct sched *
sched_new(struct event_base *base, const char *db_url, const char *node_label)
{
    struct sched *s = xcalloc(1, sizeof *s);
    s->base = base;
    s->label = xstrdup(node_label);
    char *name = xasprintf("%s/sched", node_label);
    s->db = db_new(base, db_url, name);
    free(name);
    /* mta.take_slot tries slots 0..max-1 of the key ($1, $2) in order and
     * stops at the first one it locks, so at most one lock is taken; slots
     * this session already holds ($4) are skipped, since
     * pg_try_advisory_lock would succeed again on them. It records that the
     * key serves the queue ($5, $6), for mta.connections and
     * mta.queues.connections (see README, Scheduling). */
    db_prepare(s->db, "sched_take_slot",
               "SELECT slot FROM mta.take_slot_prio($1::text, $2::text, $3::int, $4::int[],"
               " $5::text, $6::text, $7::int, $8::bigint, $9::int)",
               9);
    db_prepare(s->db, "sched_release_slot",
               "SELECT pg_advisory_unlock(1347223552 + $3::int,"
               " hashtext($1::text || '/' || $2::text))",
               3);
    db_prepare(s->db, "sched_take_tokens",
               "SELECT granted, wait_ms FROM mta.take_tokens($1, $2, $3, $4, $5, $6)", 6);
    db_prepare(s->db, "sched_set_lock_pid", "SELECT mta.node_set_lock_pid($1)", 1);
    db_set_ready_cb(s->db, on_ready, s);
    s->ev_check = event_new(base, -1, EV_PERSIST, on_check, s);
    s->ev_answer = event_new(base, -1, 0, on_answer, s);
    PGMTA_ASSERT(s->ev_check && s->ev_answer);
    struct timeval tv = {SCHED_CHECK_MS / 1000, (SCHED_CHECK_MS % 1000) * 1000};
    event_add(s->ev_check, &tv);
    s->next_sweep = util_now_ms() + SCHED_SWEEP_MS;
    db_connect(s->db);
    return s;
}

void
sched_set_lost_cb(struct sched *s, sched_lost_cb cb, void *arg)
{
    s->lost_cb = cb;
    s->lost_arg = arg;
}

void
sched_set_node_id(struct sched *s, long long node_id)
{
    s->node_id = node_id;
    sched_send_lock_pid(s);
}

int
sched_ready(const struct sched *s)
{
    return s->live && db_ready(s->db);
}

void
sched_free(struct sched *s)
{
    if (!s)
        return;
    if (s->freeing)
        return;
    s->freeing = true;
    event_free(s->ev_check);
    /* Completes the requests in flight with NULL; their handlers fail the
     * queued ones (db_exec refuses from now on) onto the answer FIFO. */
    db_free(s->db);
    /* Answers not delivered yet: failures now, as promised in sched.h. */
    struct sched_req *r;
    while ((r = fifo_pop(&s->answers))) {
        if (r->is_slot)
            r->slot = -1;
        else
            r->granted = 0, r->wait_ms = SCHED_FAIL_WAIT_MS;
        answer_call(r);
    }
    for (unsigned i = 0; i < SCHED_HASH_SIZE; i++)
        while (s->table[i]) {
            struct sched_queue *q = s->table[i];
            s->table[i] = q->next;
            PGMTA_ASSERT(!q->slot_waiters.head && !q->taking);
            PGMTA_ASSERT(!q->bucket[0].waiters.head && !q->bucket[1].waiters.head);
            queue_free(q);
        }
    free(s->label);
    s->label = NULL;
    if (s->answering) {
        s->free_pending = true; /* on_answer frees s when the callback returns */
        return;
    }
    event_free(s->ev_answer);
    free(s);
}

/* ---- slots ---- */

static void
held_add(struct sched_queue *q, int slot)
{
    if (q->nheld == q->capheld) {
        q->capheld = q->capheld ? q->capheld * 2 : 4;
        q->held = xrealloc(q->held, q->capheld * sizeof *q->held);
    }
    q->held[q->nheld++] = (uint16_t)slot;
}

static bool
held_remove(struct sched_queue *q, int slot)
{
    for (unsigned i = 0; i < q->nheld; i++)
        if (q->held[i] == slot) {
            q->held[i] = q->held[--q->nheld];
            return true;
        }
    return false;
}

static void
on_slot(const PGresult *res, void *arg)
{
    struct sched_call *c = arg;
    struct sched *s = c->s;
    struct sched_queue *q = c->q;
    free(c);
    struct sched_req *r = q->taking_req;
    q->taking = false;
    q->taking_req = NULL;
    int slot = -1;
    if (!res) {
        sched_lose(s, "connection-lost");
    } else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_error("sched=%s queue=%s/%s event=take-slot-failed error=\"%s\"", s->label, q->domain,
                  q->vmta, PQresultErrorMessage(res));
    } else if (PQntuples(res) == 1) {
        slot = atoi(PQgetvalue(res, 0, 0));
        held_add(q, slot);
    }
    log_debug("sched=%s queue=%s/%s event=take-slot max=%u slot=%d held=%u", s->label, q->domain,
              q->vmta, r->n, slot, q->nheld);
    r->cb.slot(slot, r->arg);
    req_free(r);
    sched_slot_next(s, q);
}

/* Sends the next slot request of the queue unless one is in flight. */
static void
sched_slot_next(struct sched *s, struct sched_queue *q)
{
    struct sched_req *r;
    while (!q->taking && (r = fifo_pop(&q->slot_waiters))) {
        if (s->live && db_ready(s->db)) {
            struct buf held;
            buf_init(&held);
            buf_puts(&held, "{");
            for (unsigned i = 0; i < q->nheld; i++)
                buf_printf(&held, "%s%u", i ? "," : "", q->held[i]);
            buf_puts(&held, "}");
            char max[16], prio[16], node[24], wait[16];
            snprintf(max, sizeof max, "%u", r->n);
            snprintf(prio, sizeof prio, "%u", r->prio);
            snprintf(node, sizeof node, "%lld", s->node_id);
            snprintf(wait, sizeof wait, "%d", PRIORITY_WAIT_MS);
            const char *values[] = {q->domain,  q->vmta,  max,  held.data,
                                    r->qdomain, r->qvmta, prio, s->node_id > 0 ? node : NULL,
                                    wait};
            struct sched_call *c = call_new(s, q, SCHED_MSG, -1);
            q->taking = true;
            q->taking_req = r;
            int rc = db_exec(s->db, "sched_take_slot", 9, values, NULL, NULL, 0, on_slot, c);
            buf_free(&held);
            if (rc == 0)
                return;
            free(c);
            q->taking = false;
            q->taking_req = NULL;
        }
        answer_slot(s, r, -1);
    }
}

void
sched_take_slot_prio(struct sched *s, const char *key_domain, const char *key_vmta,
                     const char *domain, const char *vmta, uint32_t max_smtp_out, unsigned prio,
                     sched_slot_cb cb, void *arg)
{
    struct sched_req *r = req_new(max_smtp_out, arg);
    r->cb.slot = cb;
    r->prio = prio;
    if (max_smtp_out == CONF_UNLIMITED || max_smtp_out == 0) {
        answer_slot(s, r, max_smtp_out ? 0 : -1);
        return;
    }
    if (max_smtp_out > SCHED_MAX_SLOTS)
        r->n = max_smtp_out = SCHED_MAX_SLOTS;
    r->qdomain = xstrdup(domain ? domain : key_domain);
    r->qvmta = xstrdup(domain ? (vmta ? vmta : "") : (key_vmta ? key_vmta : ""));
    struct sched_queue *q = queue_find(s, key_domain, key_vmta, true);
    fifo_push(&q->slot_waiters, r);
    sched_slot_next(s, q);
}

void
sched_take_slot_for(struct sched *s, const char *key_domain, const char *key_vmta,
                    const char *domain, const char *vmta, uint32_t max_smtp_out, sched_slot_cb cb,
                    void *arg)
{
    sched_take_slot_prio(s, key_domain, key_vmta, domain, vmta, max_smtp_out, 0, cb, arg);
}

void
sched_take_slot(struct sched *s, const char *domain, const char *vmta, uint32_t max_smtp_out,
                sched_slot_cb cb, void *arg)
{
    sched_take_slot_for(s, domain, vmta, NULL, NULL, max_smtp_out, cb, arg);
}

static void
on_release(const PGresult *res, void *arg)
{
    struct sched_call *c = arg;
    struct sched *s = c->s;
    if (!res)
        sched_lose(s, "connection-lost");
    else if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
             strcmp(PQgetvalue(res, 0, 0), "t"))
        log_error("sched=%s event=release-slot-failed slot=%d error=\"%s\"", s->label, c->slot,
                  PQresultErrorMessage(res));
    free(c);
}

void
sched_release_slot(struct sched *s, const char *domain, const char *vmta, int slot)
{
    if (slot < 0)
        return;
    struct sched_queue *q = queue_find(s, domain, vmta, false);
    if (!q || !held_remove(q, slot))
        return; /* unlimited, or stale after a lost session */
    log_debug("sched=%s queue=%s/%s event=release-slot slot=%d held=%u", s->label, q->domain,
              q->vmta, slot, q->nheld);
    if (!db_ready(s->db))
        return; /* the session is gone and the lock with it */
    char slot_s[16];
    snprintf(slot_s, sizeof slot_s, "%d", slot);
    const char *values[] = {q->domain, q->vmta, slot_s};
    struct sched_call *c = call_new(s, NULL, SCHED_MSG, slot);
    if (db_exec(s->db, "sched_release_slot", 3, values, NULL, NULL, 0, on_release, c) < 0)
        free(c);
}

unsigned
sched_slots_held(struct sched *s, const char *domain, const char *vmta)
{
    struct sched_queue *q = queue_find(s, domain, vmta, false);
    return q ? q->nheld : 0;
}

/* ---- rate tokens ---- */

/* Answers every waiting request with 0 tokens, from the answer FIFO. */
static void
bucket_fail_all(struct sched *s, struct sched_bucket *b, unsigned wait_ms)
{
    struct sched_req *r;
    while ((r = fifo_pop(&b->waiters)))
        answer_tokens(s, r, 0, wait_ms);
}

static void
on_tokens(const PGresult *res, void *arg)
{
    struct sched_call *c = arg;
    struct sched *s = c->s;
    struct sched_queue *q = c->q;
    enum sched_kind kind = c->kind;
    free(c);
    struct sched_bucket *b = &q->bucket[kind];
    b->fetching = false;
    uint64_t now = util_now_ms();
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        if (!res)
            sched_lose(s, "connection-lost");
        else
            log_error("sched=%s queue=%s/%s event=take-tokens-failed kind=%s error=\"%s\"",
                      s->label, q->domain, q->vmta, kind_names[kind], PQresultErrorMessage(res));
        b->retry_at = now + SCHED_FAIL_WAIT_MS;
        bucket_fail_all(s, b, SCHED_FAIL_WAIT_MS);
        return;
    }
    unsigned granted = (unsigned)atoi(PQgetvalue(res, 0, 0));
    unsigned wait_ms = (unsigned)atoi(PQgetvalue(res, 0, 1));
    log_trace("sched=%s queue=%s/%s event=tokens kind=%s granted=%u wait_ms=%u", s->label,
              q->domain, q->vmta, kind_names[kind], granted, wait_ms);
    if (granted) {
        b->cached += granted;
        b->cached_at = now;
    } else {
        b->retry_at = now + wait_ms;
    }
    struct sched_req *r;
    while (b->cached && (r = fifo_pop(&b->waiters))) {
        unsigned g = r->n < b->cached ? r->n : b->cached;
        b->cached -= g;
        r->cb.tokens(g, 0, r->arg);
        free(r);
    }
    if (!b->waiters.head || b->fetching)
        return;
    if (granted)
        sched_bucket_fetch(s, q, kind); /* the batch did not cover everyone */
    else
        bucket_fail_all(s, b, wait_ms ? wait_ms : 1);
}

/* Reserves a batch for the waiting requests: about one second's worth of
 * the rate, or what they want together if that is more (the database grants
 * at most its burst). */
static void
sched_bucket_fetch(struct sched *s, struct sched_queue *q, enum sched_kind kind)
{
    struct sched_bucket *b = &q->bucket[kind];
    uint64_t per_second = ((uint64_t)b->count * 1000 + b->period_ms - 1) / b->period_ms;
    uint64_t want = 0;
    for (struct sched_req *r = b->waiters.head; r; r = r->next)
        want += r->n;
    uint64_t n = per_second > want ? per_second : want;
    if (n < 1)
        n = 1;
    if (n > INT_MAX)
        n = INT_MAX;
    char count[16], period[16], n_s[16];
    snprintf(count, sizeof count, "%u", b->count > INT_MAX ? INT_MAX : b->count);
    snprintf(period, sizeof period, "%u", b->period_ms > INT_MAX ? INT_MAX : b->period_ms);
    snprintf(n_s, sizeof n_s, "%llu", (unsigned long long)n);
    const char *values[] = {q->domain, q->vmta, kind_names[kind], count, period, n_s};
    struct sched_call *c = call_new(s, q, kind, -1);
    b->fetching = true;
    if (db_ready(s->db) &&
        db_exec(s->db, "sched_take_tokens", 6, values, NULL, NULL, 0, on_tokens, c) == 0)
        return;
    free(c);
    b->fetching = false;
    b->retry_at = util_now_ms() + SCHED_FAIL_WAIT_MS;
    bucket_fail_all(s, b, SCHED_FAIL_WAIT_MS);
}

void
sched_take_tokens(struct sched *s, const char *domain, const char *vmta, enum sched_kind kind,
                  const struct conf_rate *rate, unsigned want, sched_tokens_cb cb, void *arg)
{
    PGMTA_ASSERT(kind == SCHED_MSG || kind == SCHED_CONNECT);
    struct sched_req *r = req_new(want, arg);
    r->cb.tokens = cb;
    if (rate->count == CONF_UNLIMITED || want == 0) {
        answer_tokens(s, r, want, 0);
        return;
    }
    PGMTA_ASSERT(rate->count > 0 && rate->period_ms > 0);
    struct sched_queue *q = queue_find(s, domain, vmta, true);
    struct sched_bucket *b = &q->bucket[kind];
    b->count = rate->count;
    b->period_ms = rate->period_ms;
    uint64_t now = util_now_ms();
    if (b->cached && now - b->cached_at > SCHED_TOKEN_TTL_MS)
        b->cached = 0;
    if (!b->waiters.head) {
        if (b->cached) {
            unsigned g = want < b->cached ? want : b->cached;
            b->cached -= g; /* taken now, delivered from the loop */
            answer_tokens(s, r, g, 0);
            return;
        }
        if (now < b->retry_at) {
            answer_tokens(s, r, 0, (unsigned)(b->retry_at - now));
            return;
        }
    }
    fifo_push(&b->waiters, r);
    if (!b->fetching)
        sched_bucket_fetch(s, q, kind);
}
