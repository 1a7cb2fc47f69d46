/* session_finish: one mta.finish for the batches of several sessions (see
 * session_finish.h). The group owns the encoded arrays and the list of
 * callbacks; the callers own their callback arguments. A group is sent when
 * its timer fires or when it is full; the statement's answer goes to every
 * callback of the group, in the order they were added. */
#include "session_finish.h"

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "log.h"
#include "util.h"

/* A group is sent at once when it holds this many sessions or rows. */
#define FINISH_MAX_SESSIONS 64
#define FINISH_MAX_ROWS 2000

struct waiter {
    db_cb cb;
    void *arg;
};

struct group {
    struct buf a[BATCH_F_N]; /* array literals without the closing brace */
    size_t nrows;
    struct waiter *waiters;
    size_t nwaiters, cap;
    long long node_id;
    char *node_label;
    bool generate_bounces;
};

struct session_finish {
    struct event_base *base;
    struct event *timer;
    unsigned delay_ms;
    struct db *(*pick_db)(void *arg);
    void *arg;
    struct group *open; /* collecting, or NULL */
};

static void
group_free(struct group *g)
{
    for (int i = 0; i < BATCH_F_N; i++)
        buf_free(&g->a[i]);
    free(g->waiters);
    free(g->node_label);
    free(g);
}

static void
group_answer(struct group *g, const PGresult *res)
{
    for (size_t i = 0; i < g->nwaiters; i++)
        g->waiters[i].cb(res, g->waiters[i].arg);
}

static void
on_group_done(const PGresult *res, void *arg)
{
    struct group *g = arg;
    group_answer(g, res);
    group_free(g);
}

/* Sends the open group; its callbacks run from the answer (or here, with
 * NULL, when it cannot be sent: always after the adds returned). */
static void
finish_send(struct session_finish *f)
{
    struct group *g = f->open;
    if (!g)
        return;
    f->open = NULL;
    evtimer_del(f->timer);
    for (int i = 0; i < BATCH_F_N; i++)
        buf_puts(&g->a[i], "}");
    char node[32];
    snprintf(node, sizeof node, "%lld", g->node_id);
    const char *values[20] = {node,
                              g->node_label,
                              g->a[BATCH_F_IDS].data,
                              g->a[BATCH_F_TOKENS].data,
                              g->a[BATCH_F_TYPES].data,
                              g->a[BATCH_F_RETRY].data,
                              g->a[BATCH_F_STATUS].data,
                              g->a[BATCH_F_DIAG].data,
                              g->a[BATCH_F_MTA].data,
                              g->a[BATCH_F_CAT].data,
                              g->a[BATCH_F_SRC].data,
                              g->a[BATCH_F_DST].data,
                              g->a[BATCH_F_TLSP].data,
                              g->a[BATCH_F_TLSC].data,
                              g->generate_bounces ? "true" : "false",
                              g->a[BATCH_F_TLSPOL].data,
                              g->a[BATCH_F_TLSFAIL].data,
                              g->a[BATCH_F_TLSDOM].data,
                              g->a[BATCH_F_HOPDSN].data,
                              g->a[BATCH_F_DELAY].data};
    struct db *db = f->pick_db(f->arg);
    log_debug("event=finish-group sessions=%zu rows=%zu", g->nwaiters, g->nrows);
    if (!db || db_exec(db, "finish", 20, values, NULL, NULL, 0, on_group_done, g) < 0) {
        group_answer(g, NULL);
        group_free(g);
    }
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    finish_send(arg);
}

struct session_finish *
session_finish_new(struct event_base *base, unsigned delay_ms, struct db *(*pick_db)(void *arg),
                   void *arg)
{
    struct session_finish *f = xcalloc(1, sizeof *f);
    f->base = base;
    f->delay_ms = delay_ms;
    f->pick_db = pick_db;
    f->arg = arg;
    f->timer = evtimer_new(base, on_timer, f);
    return f;
}

void
session_finish_free(struct session_finish *f)
{
    if (!f)
        return;
    if (f->open) {
        group_answer(f->open, NULL);
        group_free(f->open);
    }
    event_free(f->timer);
    free(f);
}

void
session_finish_add(struct session_finish *f, long long node_id, const char *node_label,
                   const struct batch *b, bool generate_bounces, db_cb cb, void *cb_arg)
{
    struct group *g = f->open;
    if (g && (g->node_id != node_id || g->generate_bounces != generate_bounces ||
              strcmp(g->node_label, node_label) != 0)) {
        finish_send(f); /* a new registration or a reload: not mixed */
        g = NULL;
    }
    if (!g) {
        g = xcalloc(1, sizeof *g);
        for (int i = 0; i < BATCH_F_N; i++) {
            buf_init(&g->a[i]);
            buf_puts(&g->a[i], "{");
        }
        g->node_id = node_id;
        g->node_label = xstrdup(node_label);
        g->generate_bounces = generate_bounces;
        f->open = g;
        struct timeval tv = {f->delay_ms / 1000, (f->delay_ms % 1000) * 1000};
        evtimer_add(f->timer, &tv);
    }
    if (b->nrcpts > 0) {
        struct buf a[BATCH_F_N];
        batch_finish_arrays(b, a);
        for (int i = 0; i < BATCH_F_N; i++) {
            /* "{x,y}" appended as "x,y" after a comma */
            if (g->nrows > 0)
                buf_puts(&g->a[i], ",");
            a[i].data[a[i].len - 1] = '\0';
            buf_puts(&g->a[i], a[i].data + 1);
            buf_free(&a[i]);
        }
        g->nrows += b->nrcpts;
    }
    if (g->nwaiters == g->cap) {
        g->cap = g->cap ? 2 * g->cap : 8;
        g->waiters = xrealloc(g->waiters, g->cap * sizeof *g->waiters);
    }
    g->waiters[g->nwaiters++] = (struct waiter){cb, cb_arg};
    if (g->nwaiters >= FINISH_MAX_SESSIONS || g->nrows >= FINISH_MAX_ROWS) {
        /* Full: sent from the next loop turn (never from within this call). */
        struct timeval now = {0, 0};
        evtimer_add(f->timer, &now);
    }
}
