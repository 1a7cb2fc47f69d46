/* session_claims: one mta.claim_many for the claims of several sessions
 * (see session_claims.h). Each group owns its array literals and its
 * callbacks; the callers own their callback arguments. The groups of one
 * loop turn (a new one when the last is full, its key differs or it is
 * the other statement) are sent by a zero timer at the next turn, never
 * from within an add. The answer is split by its column q:
 * rows come ordered by queue, so each waiter's rows are one run, copied into a result of its own
 * (content included: a claim's content is bounded by the reservation its session made). */
#include "session_claims.h"

#include <event2/event.h>
#include <libpq-fe.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "log.h"
#include "util.h"

struct waiter {
    db_cb cb;
    void *arg;
};

/* The array parameters of a group, as literals without their closing
 * brace: those of mta.claim_many, then the rate columns of
 * mta.claim_many_rated. */
enum {
    COL_DOMAINS,
    COL_VMTAS,
    COL_LIMITS,
    COL_BYTES,
    COL_WANT,
    COL_KEYS,
    COL_KEY_VMTAS,
    COL_MSG_LIMITS,
    COL_MSG_PERIODS,
    COL_CONN_LIMITS,
    COL_CONN_PERIODS,
    COL_IP_KEYS,
    COL_IP_MSG_LIMITS,
    COL_IP_MSG_PERIODS,
    COL_N
};
#define COL_N_PLAIN (COL_BYTES + 1)

struct group {
    struct group *next;
    struct buf cols[COL_N];
    struct waiter waiters[SESSION_CLAIMS_MAX];
    size_t n;
    bool rated; /* mta.claim_many_rated */
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
    for (int i = 0; i < COL_N; i++)
        buf_free(&g->cols[i]);
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
    int ncols = g->rated ? COL_N : COL_N_PLAIN;
    for (int i = 0; i < ncols; i++)
        buf_puts(&g->cols[i], "}");
    char node[32], lease[32];
    snprintf(node, sizeof node, "%lld", g->node_id);
    snprintf(lease, sizeof lease, "%llu", g->lease_ms);
    const char *values[COL_N + 3] = {node,
                                     g->pipe,
                                     g->cols[COL_DOMAINS].data,
                                     g->cols[COL_VMTAS].data,
                                     g->cols[COL_LIMITS].data,
                                     lease,
                                     g->cols[COL_BYTES].data};
    for (int i = COL_WANT; i < ncols; i++)
        values[i + 3] = g->cols[i].data;
    struct db *db = c->pick_db(c->arg);
    log_debug("event=claim-group queues=%zu rated=%d", g->n, g->rated);
    if (!db || db_exec(db, g->rated ? "claim_many_rated" : "claim_many", ncols + 3, values, NULL,
                       NULL, 1, on_group_done, g) < 0) {
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

/* A rate of an int array literal: NULL when unlimited or absent. */
static void
append_rate(struct buf *count, struct buf *period, const char *sep, const struct conf_rate *r)
{
    if (!r || r->count == CONF_UNLIMITED) {
        buf_printf(count, "%sNULL", sep);
        buf_printf(period, "%sNULL", sep);
        return;
    }
    buf_printf(count, "%s%u", sep, r->count > INT_MAX ? INT_MAX : r->count);
    buf_printf(period, "%s%u", sep, r->period_ms > INT_MAX ? INT_MAX : r->period_ms);
}

/* The group the next claim goes into, its separator in *SEP. */
static struct group *
group_for(struct session_claims *c, long long node_id, const char *pipe,
          unsigned long long lease_ms, bool rated, const char **sep)
{
    struct group *g = c->last;
    if (!g || g->n == SESSION_CLAIMS_MAX || g->node_id != node_id || g->lease_ms != lease_ms ||
        g->rated != rated || strcmp(g->pipe, pipe) != 0) {
        /* none yet, full, the other statement, or a new registration or a
         * reload: not mixed */
        g = xcalloc(1, sizeof *g);
        for (int i = 0; i < COL_N; i++)
            buf_init(&g->cols[i]);
        g->rated = rated;
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
    *sep = g->n ? "," : "{";
    return g;
}

/* Adds the columns of mta.claim_many and the waiter. */
static void
group_add(struct group *g, const char *sep, const char *domain, const char *vmta, unsigned limit,
          size_t max_bytes, db_cb cb, void *cb_arg)
{
    buf_puts(&g->cols[COL_DOMAINS], sep);
    db_array_append_text(&g->cols[COL_DOMAINS], domain);
    buf_puts(&g->cols[COL_VMTAS], sep);
    db_array_append_text(&g->cols[COL_VMTAS], vmta ? vmta : "");
    buf_printf(&g->cols[COL_LIMITS], "%s%u", sep, limit);
    buf_printf(&g->cols[COL_BYTES], "%s%zu", sep, max_bytes);
    g->waiters[g->n++] = (struct waiter){cb, cb_arg};
}

void
session_claims_add(struct session_claims *c, long long node_id, const char *pipe,
                   const char *domain, const char *vmta, unsigned limit,
                   unsigned long long lease_ms, size_t max_bytes, db_cb cb, void *cb_arg)
{
    const char *sep;
    struct group *g = group_for(c, node_id, pipe, lease_ms, false, &sep);
    group_add(g, sep, domain, vmta, limit, max_bytes, cb, cb_arg);
}

void
session_claims_add_rated(struct session_claims *c, long long node_id, const char *pipe,
                         const char *domain, const char *vmta, unsigned limit,
                         unsigned long long lease_ms, size_t max_bytes,
                         const struct session_claims_rate *rate, db_cb cb, void *cb_arg)
{
    const char *sep;
    struct group *g = group_for(c, node_id, pipe, lease_ms, true, &sep);
    buf_printf(&g->cols[COL_WANT], "%s%u", sep, rate->want > INT_MAX ? INT_MAX : rate->want);
    buf_puts(&g->cols[COL_KEYS], sep);
    db_array_append_text(&g->cols[COL_KEYS], rate->key_domain);
    buf_puts(&g->cols[COL_KEY_VMTAS], sep);
    db_array_append_text(&g->cols[COL_KEY_VMTAS], rate->key_vmta ? rate->key_vmta : "");
    append_rate(&g->cols[COL_MSG_LIMITS], &g->cols[COL_MSG_PERIODS], sep, rate->msg);
    append_rate(&g->cols[COL_CONN_LIMITS], &g->cols[COL_CONN_PERIODS], sep, rate->connect);
    buf_puts(&g->cols[COL_IP_KEYS], sep);
    if (rate->ip_key && rate->ip_msg)
        db_array_append_text(&g->cols[COL_IP_KEYS], rate->ip_key);
    else
        buf_puts(&g->cols[COL_IP_KEYS], "NULL");
    append_rate(&g->cols[COL_IP_MSG_LIMITS], &g->cols[COL_IP_MSG_PERIODS], sep,
                rate->ip_key ? rate->ip_msg : NULL);
    group_add(g, sep, domain, vmta, limit, max_bytes, cb, cb_arg);
}
