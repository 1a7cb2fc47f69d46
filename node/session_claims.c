/* session_claims: one mta.claim_many for the claims of several sessions
 * (see session_claims.h). Each group owns its array literals and its
 * callbacks; the callers own their callback arguments. The groups of one
 * loop turn (a new one when the last is full or its key differs) are sent
 * by a zero timer at the next turn, never from within an add. The answer is split by its column q:
 * rows come ordered by queue, so each waiter's rows are one run, copied into a result of its own
 * (content included: a claim's content is bounded by the reservation its session made). */
#include "session_claims.h"

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

struct waiter {
    db_cb cb;
    void *arg;
};

struct group {
    struct group *next;
    struct buf domains, vmtas, limits, bytes; /* array literals, no closing brace */
    struct waiter waiters[SESSION_CLAIMS_MAX];
    size_t n;
    long long node_id;
    char *pipe;
    unsigned long long lease_ms;
};

struct session_claims {
    struct event *timer;
    struct db *(*pick_db)(void *arg);
    void *arg;
    struct group *first, *last; /* to send at the next turn */
};

static void
group_free(struct group *g)
{
    buf_free(&g->domains);
    buf_free(&g->vmtas);
    buf_free(&g->limits);
    buf_free(&g->bytes);
    free(g->pipe);
    free(g);
}

/* Every waiter gets the same answer: an error result or NULL. */
static void
group_fail(struct group *g, const PGresult *res)
{
    for (size_t i = 0; i < g->n; i++)
        g->waiters[i].cb(res, g->waiters[i].arg);
}

/* Rows [from, to) of RES as a result of their own. */
static PGresult *
rows_copy(const PGresult *res, int from, int to)
{
    PGresult *r = PQcopyResult(res, PG_COPYRES_ATTRS);
    if (!r)
        util_panic(__func__, "out of memory");
    int ncols = PQnfields(res);
    for (int row = from; row < to; row++) {
        for (int col = 0; col < ncols; col++) {
            bool null = PQgetisnull(res, row, col);
            if (!PQsetvalue(r, row - from, col, null ? NULL : PQgetvalue(res, row, col),
                            null ? -1 : PQgetlength(res, row, col)))
                util_panic(__func__, "out of memory");
        }
    }
    return r;
}

static void
on_group_done(const PGresult *res, void *arg)
{
    struct group *g = arg;
    int c_q = res ? PQfnumber(res, "q") : -1;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || c_q < 0) {
        group_fail(g, res);
        group_free(g);
        return;
    }
    int nrows = PQntuples(res), row = 0;
    for (size_t i = 0; i < g->n; i++) {
        int from = row;
        while (row < nrows && db_get_int4(res, row, c_q) == (int)i + 1)
            row++;
        db_call(g->waiters[i].cb, g->waiters[i].arg, rows_copy(res, from, row));
    }
    if (row != nrows)
        log_warn("event=claim-group-rows-unassigned rows=%d", nrows - row);
    group_free(g);
}

/* Sends G; with NULL to its callbacks when it cannot be sent (from the
 * timer, so after the adds returned). */
static void
group_send(struct session_claims *c, struct group *g)
{
    buf_puts(&g->domains, "}");
    buf_puts(&g->vmtas, "}");
    buf_puts(&g->limits, "}");
    buf_puts(&g->bytes, "}");
    char node[32], lease[32];
    snprintf(node, sizeof node, "%lld", g->node_id);
    snprintf(lease, sizeof lease, "%llu", g->lease_ms);
    const char *values[7] = {node,           g->pipe, g->domains.data, g->vmtas.data,
                             g->limits.data, lease,   g->bytes.data};
    struct db *db = c->pick_db(c->arg);
    log_debug("event=claim-group queues=%zu", g->n);
    if (!db || db_exec(db, "claim_many", 7, values, NULL, NULL, 1, on_group_done, g) < 0) {
        group_fail(g, NULL);
        group_free(g);
    }
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct session_claims *c = arg;
    struct group *g = c->first;
    c->first = c->last = NULL;
    while (g) {
        struct group *next = g->next;
        group_send(c, g);
        g = next;
    }
}

struct session_claims *
session_claims_new(struct event_base *base, struct db *(*pick_db)(void *arg), void *arg)
{
    struct session_claims *c = xcalloc(1, sizeof *c);
    c->pick_db = pick_db;
    c->arg = arg;
    c->timer = evtimer_new(base, on_timer, c);
    return c;
}

void
session_claims_free(struct session_claims *c)
{
    if (!c)
        return;
    struct group *g = c->first;
    while (g) {
        struct group *next = g->next;
        group_fail(g, NULL);
        group_free(g);
        g = next;
    }
    event_free(c->timer);
    free(c);
}

void
session_claims_add(struct session_claims *c, long long node_id, const char *pipe,
                   const char *domain, const char *vmta, unsigned limit,
                   unsigned long long lease_ms, size_t max_bytes, db_cb cb, void *cb_arg)
{
    struct group *g = c->last;
    if (!g || g->n == SESSION_CLAIMS_MAX || g->node_id != node_id || g->lease_ms != lease_ms ||
        strcmp(g->pipe, pipe) != 0) {
        /* none yet, full, or a new registration or a reload: not mixed */
        g = xcalloc(1, sizeof *g);
        buf_init(&g->domains);
        buf_init(&g->vmtas);
        buf_init(&g->limits);
        buf_init(&g->bytes);
        g->node_id = node_id;
        g->pipe = xstrdup(pipe);
        g->lease_ms = lease_ms;
        if (c->last)
            c->last->next = g;
        else
            c->first = g;
        c->last = g;
        struct timeval now = {0, 0};
        evtimer_add(c->timer, &now);
    }
    const char *sep = g->n ? "," : "{";
    buf_puts(&g->domains, sep);
    db_array_append_text(&g->domains, domain);
    buf_puts(&g->vmtas, sep);
    db_array_append_text(&g->vmtas, vmta ? vmta : "");
    buf_printf(&g->limits, "%s%u", sep, limit);
    buf_printf(&g->bytes, "%s%zu", sep, max_bytes);
    g->waiters[g->n++] = (struct waiter){cb, cb_arg};
}
