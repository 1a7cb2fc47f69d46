/* smtp_in_batch: group commit of the SMTP listener's messages (see
 * smtp_in_batch.h).
 *
 * Ownership: the batcher owns every message handed to smtp_in_batch_add
 * until its result has been delivered: first in the FIFO of messages
 * waiting to be sent, then in the array of the statement in flight on one
 * lane. A lane is one database connection with at most one statement in
 * flight; the batcher owns every lane's connection (the first is given to
 * smtp_in_batch_new, the others opened from limits.db_url). Several lanes
 * let a batch commit while the previous one waits for its WAL flush, and
 * PostgreSQL flushes concurrent commits together. Two events drive it: the wait
 * timer (armed when the FIFO goes from empty to non-empty) and the kick event (made active when the
 * FIFO reaches a limit, or to deliver a failure found while sending). Sending happens only from
 * those events, so no callback ever runs inside smtp_in_batch_add.
 *
 * The arrays go in PostgreSQL's binary array format: no quoting or escaping
 * of the message content, which is by far the largest parameter. */
#include "smtp_in_batch.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "db.h"
#include "log.h"
#include "metrics.h"

#define OID_TEXT_ 25
#define OID_BYTEA_ 17
#define OID_INT4_ 23
#define OID_INT2_ 21

struct qmsg {
    struct smtp_in_msg m;
    struct qmsg *next;
};

struct lane {
    struct smtp_in_batch *b;
    struct db *db;
    unsigned no;
    struct qmsg **flight; /* the statement in flight (NULL: none) */
    size_t nflight;
    uint64_t flight_started;
};

struct smtp_in_batch {
    struct event_base *base;
    struct lane lanes[SMTP_IN_BATCH_MAX_CONNS];
    unsigned nlanes;  /* opened */
    unsigned nactive; /* used for new batches (<= nlanes) */
    size_t ninflight;
    smtp_in_batch_cb cb;
    void *cb_arg;
    struct smtp_in_batch_limits lim;

    struct qmsg *head, *tail; /* waiting to be sent */
    size_t nwaiting;
    uint64_t waiting_bytes;
    bool due;       /* the wait timer fired while every lane was busy */
    size_t nflight; /* messages in flight, all lanes */
    /* messages taken for sending that failed before the statement was
     * queued; answered from the kick event */
    struct qmsg **failed;
    size_t nfailed;
    char failed_why[128];

    struct event *timer;
    struct event *kick;
    unsigned long batches;
    bool closing; /* smtp_in_batch_free: send nothing more */
};

static void
put_be32(struct buf *b, uint32_t v)
{
    uint32_t n = htonl(v);
    buf_append(b, &n, 4);
}

void
smtp_in_array_binary(struct buf *out, unsigned elem_oid, size_t n, const char *const *elems,
                     const size_t *lens)
{
    bool nulls = false;
    for (size_t i = 0; i < n; i++)
        nulls |= elems[i] == NULL;
    put_be32(out, n ? 1 : 0);
    put_be32(out, nulls ? 1 : 0);
    put_be32(out, elem_oid);
    if (n) {
        put_be32(out, (uint32_t)n);
        put_be32(out, 1);
    }
    for (size_t i = 0; i < n; i++) {
        if (!elems[i]) {
            put_be32(out, 0xffffffffu);
            continue;
        }
        size_t len = lens ? lens[i] : strlen(elems[i]);
        put_be32(out, (uint32_t)len);
        buf_append(out, elems[i], len);
    }
}

static void
msg_free(struct qmsg *q)
{
    free(q->m.mail_from);
    for (size_t i = 0; i < q->m.nrcpts; i++)
        free(q->m.rcpts[i]);
    free(q->m.rcpts);
    buf_free(&q->m.content);
    free(q->m.job_id);
    free(q->m.vmta);
    free(q->m.envid);
    if (q->m.orcpt)
        for (size_t i = 0; i < q->m.nrcpts; i++)
            free(q->m.orcpt[i]);
    free(q->m.orcpt);
    free(q->m.notify);
    free(q);
}

static void
answer(struct smtp_in_batch *b, struct qmsg *q, enum smtp_in_status st, const char *id,
       const char *sqlstate, const char *error, size_t batch)
{
    struct smtp_in_result r = {
        .status = st,
        .id = id,
        .sqlstate = sqlstate,
        .error = error,
        .nrcpts = q->m.nrcpts,
        .size = q->m.content.len,
        .batch = batch,
    };
    b->cb(b->cb_arg, q->m.sid, q->m.seq, &r);
}

static void
arm_wait(struct smtp_in_batch *b)
{
    uint64_t ms = b->lim.max_wait_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(b->timer, &tv);
}

static bool
limit_reached(const struct smtp_in_batch *b)
{
    return b->nwaiting >= b->lim.max_messages || b->waiting_bytes >= b->lim.max_bytes;
}

static void batch_done(const PGresult *res, void *arg);

/* A lane free for the next batch: a ready one first; else, when nothing is
 * in flight at all, the first free one, whose db_exec then fails at once
 * and answers the batch (a database that is down is reported now, not
 * after a connection comes back). NULL: wait for a lane. */
static struct lane *
pick_lane(struct smtp_in_batch *b)
{
    struct lane *idle = NULL;
    for (unsigned i = 0; i < b->nactive; i++) {
        struct lane *l = &b->lanes[i];
        if (l->flight)
            continue;
        if (db_ready(l->db))
            return l;
        if (!idle)
            idle = l;
    }
    return b->ninflight == 0 ? idle : NULL;
}

/* Takes messages from the FIFO up to the limits (at least one) and sends
 * them as one statement on lane L. */
static void
send_batch(struct smtp_in_batch *b, struct lane *l)
{
    PGMTA_ASSERT(l->flight == NULL && b->head != NULL);
    evtimer_del(b->timer);
    b->due = false;
    size_t n = 0;
    uint64_t bytes = 0;
    for (struct qmsg *q = b->head; q && n < b->lim.max_messages; q = q->next) {
        if (n > 0 && bytes + q->m.content.len > b->lim.max_bytes)
            break;
        bytes += q->m.content.len;
        n++;
    }
    struct qmsg **take = xcalloc(n, sizeof *take);
    size_t nrcpt = 0;
    for (size_t i = 0; i < n; i++) {
        take[i] = b->head;
        b->head = b->head->next;
        take[i]->next = NULL;
        nrcpt += take[i]->m.nrcpts;
    }
    if (!b->head)
        b->tail = NULL;
    /* What a limit left behind has waited long enough: it goes as soon as
     * this statement has completed. */
    b->due = b->head != NULL;
    b->nwaiting -= n;
    b->waiting_bytes -= bytes;

    const char **from = xcalloc(n, sizeof *from);
    const char **content = xcalloc(n, sizeof *content);
    size_t *content_len = xcalloc(n, sizeof *content_len);
    const char **job = xcalloc(n, sizeof *job);
    const char **vmta = xcalloc(n, sizeof *vmta);
    const char **none = xcalloc(n, sizeof *none);
    char(*counts)[4] = xcalloc(n, sizeof *counts);
    const char **countp = xcalloc(n, sizeof *countp);
    size_t *count_len = xcalloc(n, sizeof *count_len);
    const char **rcpt = xcalloc(nrcpt + 1, sizeof *rcpt);
    /* DSN options: each array is sent only when some message has it */
    const char **envid = xcalloc(n, sizeof *envid);
    char(*rets)[2] = xcalloc(n, sizeof *rets);
    const char **ret = xcalloc(n, sizeof *ret);
    char(*notifies)[2] = xcalloc(nrcpt + 1, sizeof *notifies);
    const char **notify = xcalloc(nrcpt + 1, sizeof *notify);
    size_t *notify_len = xcalloc(nrcpt + 1, sizeof *notify_len);
    const char **orcpt = xcalloc(nrcpt + 1, sizeof *orcpt);
    bool any_ret = false, any_notify = false, any_orcpt = false;
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        const struct smtp_in_msg *m = &take[i]->m;
        envid[i] = m->envid;
        if (m->ret) {
            rets[i][0] = m->ret;
            ret[i] = rets[i];
            any_ret = true;
        }
        for (size_t k = 0; k < m->nrcpts; k++) {
            if (m->notify && m->notify[k] >= 0) {
                uint16_t v = htons((uint16_t)m->notify[k]);
                memcpy(notifies[r + k], &v, 2);
                notify[r + k] = notifies[r + k];
                notify_len[r + k] = 2;
                any_notify = true;
            }
            if (m->orcpt && m->orcpt[k]) {
                orcpt[r + k] = m->orcpt[k];
                any_orcpt = true;
            }
        }
        from[i] = m->mail_from;
        content[i] = m->content.data ? m->content.data : "";
        content_len[i] = m->content.len;
        job[i] = m->job_id;
        vmta[i] = m->vmta;
        uint32_t c = htonl((uint32_t)m->nrcpts);
        memcpy(counts[i], &c, 4);
        countp[i] = counts[i];
        count_len[i] = 4;
        for (size_t k = 0; k < m->nrcpts; k++)
            rcpt[r++] = m->rcpts[k];
    }
    struct buf p[SMTP_IN_BATCH_NPARAMS];
    for (int i = 0; i < SMTP_IN_BATCH_NPARAMS; i++)
        buf_init(&p[i]);
    smtp_in_array_binary(&p[0], OID_TEXT_, n, from, NULL);
    smtp_in_array_binary(&p[1], OID_INT4_, n, countp, count_len);
    smtp_in_array_binary(&p[2], OID_TEXT_, nrcpt, rcpt, NULL);
    smtp_in_array_binary(&p[3], OID_BYTEA_, n, content, content_len);
    smtp_in_array_binary(&p[4], OID_TEXT_, n, job, NULL);
    smtp_in_array_binary(&p[5], OID_TEXT_, n, vmta, NULL);
    smtp_in_array_binary(&p[6], OID_TEXT_, n, envid, NULL);
    smtp_in_array_binary(&p[7], OID_TEXT_, n, none, NULL); /* pipe: default */
    if (any_ret)
        smtp_in_array_binary(&p[8], OID_TEXT_, n, ret, NULL);
    if (any_notify)
        smtp_in_array_binary(&p[9], OID_INT2_, nrcpt, notify, notify_len);
    if (any_orcpt)
        smtp_in_array_binary(&p[10], OID_TEXT_, nrcpt, orcpt, NULL);
    const char *values[SMTP_IN_BATCH_NPARAMS];
    int lengths[SMTP_IN_BATCH_NPARAMS], formats[SMTP_IN_BATCH_NPARAMS];
    for (int i = 0; i < SMTP_IN_BATCH_NPARAMS; i++) {
        values[i] = p[i].len ? p[i].data : NULL; /* an empty buffer: SQL NULL */
        lengths[i] = (int)p[i].len;
        formats[i] = 1;
    }
    l->flight = take;
    l->nflight = n;
    l->flight_started = util_now_ms();
    b->nflight += n;
    b->ninflight++;
    int rc = db_exec(l->db, SMTP_IN_BATCH_STMT, SMTP_IN_BATCH_NPARAMS, values, lengths, formats, 0,
                     batch_done, l);
    if (rc == 0)
        log_debug("smtp-in event=batch-sent lane=%u messages=%zu bytes=%llu inflight=%zu", l->no, n,
                  (unsigned long long)bytes, b->ninflight);
    for (int i = 0; i < SMTP_IN_BATCH_NPARAMS; i++)
        buf_free(&p[i]);
    free(from);
    free(content);
    free(content_len);
    free(job);
    free(vmta);
    free(none);
    free(counts);
    free(countp);
    free(count_len);
    free(rcpt);
    free(envid);
    free(rets);
    free(ret);
    free(notifies);
    free(notify);
    free(notify_len);
    free(orcpt);
    if (rc != 0) {
        /* Not queued: answered from the kick event, then the FIFO goes on. */
        l->flight = NULL;
        l->nflight = 0;
        b->nflight -= n;
        b->ninflight--;
        b->failed = take;
        b->nfailed = n;
        snprintf(b->failed_why, sizeof b->failed_why, "database not ready");
        event_active(b->kick, EV_TIMEOUT, 0);
    }
}

/* Sends batches while one is due and a lane is free. */
static void
maybe_send(struct smtp_in_batch *b)
{
    while (!b->closing && !b->failed && b->head && (b->due || limit_reached(b))) {
        struct lane *l = pick_lane(b);
        if (!l)
            return;
        send_batch(b, l);
    }
}

/* The first line of a PostgreSQL error, printable ASCII only. */
static void
error_text(const PGresult *res, char *out, size_t outlen)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!m)
        m = res ? PQresultErrorMessage(res) : "connection lost";
    size_t o = 0;
    for (const char *p = m ? m : ""; *p && *p != '\n' && o + 1 < outlen; p++)
        out[o++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
    out[o] = '\0';
}

static void
batch_done(const PGresult *res, void *arg)
{
    struct lane *l = arg;
    struct smtp_in_batch *b = l->b;
    struct qmsg **take = l->flight;
    size_t n = l->nflight;
    size_t inflight = b->ninflight;
    l->flight = NULL;
    l->nflight = 0;
    b->nflight -= n;
    b->ninflight--;
    uint64_t ms = util_now_ms() - l->flight_started;
    b->batches++;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && (size_t)PQntuples(res) == n) {
        size_t stored = 0;
        for (size_t i = 0; i < n; i++) {
            /* rows come in order; ord is checked anyway */
            int row = (int)i;
            if (strtol(PQgetvalue(res, row, 0), NULL, 10) != (long)(i + 1))
                util_panic(__func__, "enqueue_batch rows out of order");
            if (!PQgetisnull(res, row, 1)) {
                stored++;
                metrics_count_injected(METRICS_DOOR_SMTP, take[i]->m.nrcpts, 0);
                answer(b, take[i], SMTP_IN_STORED, PQgetvalue(res, row, 1), NULL, NULL, n);
            } else if (PQgetisnull(res, row, 2)) {
                /* no id and no error: every recipient is suppressed; the
                 * 'b' rows are committed, nothing is queued */
                metrics_count_injected(METRICS_DOOR_SMTP, take[i]->m.nrcpts, take[i]->m.nrcpts);
                answer(b, take[i], SMTP_IN_STORED, SMTP_IN_ID_SUPPRESSED, NULL, NULL, n);
            } else {
                char msg[256];
                const char *e = PQgetisnull(res, row, 3) ? "refused" : PQgetvalue(res, row, 3);
                size_t o = 0;
                for (const char *p = e; *p && *p != '\n' && o + 1 < sizeof msg; p++)
                    msg[o++] = (*p >= 0x20 && *p < 0x7f) ? *p : '?';
                msg[o] = '\0';
                answer(b, take[i], SMTP_IN_REFUSED, NULL,
                       PQgetisnull(res, row, 2) ? "XX000" : PQgetvalue(res, row, 2), msg, n);
            }
        }
        log_info("smtp-in event=batch batch=%lu lane=%u inflight=%zu messages=%zu stored=%zu "
                 "ms=%llu",
                 b->batches, l->no, inflight, n, stored, (unsigned long long)ms);
    } else {
        char msg[256];
        error_text(res, msg, sizeof msg);
        const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        log_warn("smtp-in event=batch-failed batch=%lu lane=%u messages=%zu sqlstate=%s "
                 "error=\"%s\"",
                 b->batches, l->no, n, state ? state : "-", msg);
        for (size_t i = 0; i < n; i++)
            answer(b, take[i], SMTP_IN_TEMPFAIL, NULL, state, msg, n);
    }
    for (size_t i = 0; i < n; i++)
        msg_free(take[i]);
    free(take);
    /* Messages that arrived during the commit were collecting; their wait
     * timer (or a limit) decides when they go. */
    maybe_send(b);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_in_batch *b = arg;
    b->due = true;
    maybe_send(b);
}

static void
on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_in_batch *b = arg;
    if (b->failed) {
        struct qmsg **take = b->failed;
        size_t n = b->nfailed;
        b->failed = NULL;
        b->nfailed = 0;
        log_warn("smtp-in event=batch-failed messages=%zu error=\"%s\"", n, b->failed_why);
        for (size_t i = 0; i < n; i++) {
            answer(b, take[i], SMTP_IN_TEMPFAIL, NULL, NULL, b->failed_why, n);
            msg_free(take[i]);
        }
        free(take);
        /* Whatever is left would fail the same way now: answer it too, from
         * the next turn, rather than keep it waiting for the timer. */
        if (b->head)
            b->due = true;
    }
    maybe_send(b);
}

struct smtp_in_batch *
smtp_in_batch_new(struct event_base *base, struct db *db, smtp_in_batch_cb cb, void *arg)
{
    struct smtp_in_batch *b = xcalloc(1, sizeof *b);
    b->base = base;
    b->lanes[0] = (struct lane){.b = b, .db = db, .no = 0};
    b->nlanes = b->nactive = 1;
    b->cb = cb;
    b->cb_arg = arg;
    b->lim.max_messages = 64;
    b->lim.max_bytes = 8u << 20;
    b->lim.max_wait_ms = 1;
    b->timer = evtimer_new(base, on_timer, b);
    b->kick = evtimer_new(base, on_kick, b);
    PGMTA_ASSERT(b->timer && b->kick);
    return b;
}

void
smtp_in_batch_set_limits(struct smtp_in_batch *b, const struct smtp_in_batch_limits *lim)
{
    b->lim = *lim;
    if (b->lim.max_messages == 0)
        b->lim.max_messages = 1;
    if (b->lim.max_bytes == 0)
        b->lim.max_bytes = 1;
    unsigned want = b->lim.connections ? b->lim.connections : 1;
    if (want > SMTP_IN_BATCH_MAX_CONNS)
        want = SMTP_IN_BATCH_MAX_CONNS;
    while (b->nlanes < want && b->lim.db_url) {
        struct db *db = db_new(b->base, b->lim.db_url, "pgmtad-smtp-in");
        db_prepare(db, SMTP_IN_BATCH_STMT, SMTP_IN_BATCH_SQL, SMTP_IN_BATCH_NPARAMS);
        db_connect(db);
        b->lanes[b->nlanes] = (struct lane){.b = b, .db = db, .no = b->nlanes};
        b->nlanes++;
    }
    /* Fewer after a reload: the others finish what they hold, stay open
     * and get no new batch. */
    b->nactive = want < b->nlanes ? want : b->nlanes;
    b->lim.db_url = NULL; /* owned by the caller's settings */
}

void
smtp_in_batch_add(struct smtp_in_batch *b, struct smtp_in_msg *m)
{
    struct qmsg *q = xcalloc(1, sizeof *q);
    q->m = *m;
    memset(m, 0, sizeof *m);
    buf_init(&m->content);
    bool was_empty = b->head == NULL;
    if (b->tail)
        b->tail->next = q;
    else
        b->head = q;
    b->tail = q;
    b->nwaiting++;
    b->waiting_bytes += q->m.content.len;
    if (was_empty && !b->due)
        arm_wait(b);
    if (limit_reached(b) || b->due)
        event_active(b->kick, EV_TIMEOUT, 0);
}

size_t
smtp_in_batch_pending(const struct smtp_in_batch *b)
{
    return b ? b->nwaiting + b->nflight + b->nfailed : 0;
}

size_t
smtp_in_batch_inflight(const struct smtp_in_batch *b)
{
    return b ? b->ninflight : 0;
}

void
smtp_in_batch_free(struct smtp_in_batch *b)
{
    if (!b)
        return;
    b->closing = true;
    /* A statement in flight completes now with NULL: its sessions get 451
     * (if the owner still looks for them), nothing else is sent. */
    for (unsigned i = 0; i < b->nlanes; i++) {
        db_free(b->lanes[i].db);
        b->lanes[i].db = NULL;
        PGMTA_ASSERT(b->lanes[i].flight == NULL);
    }
    while (b->head) {
        struct qmsg *q = b->head;
        b->head = q->next;
        msg_free(q);
    }
    for (size_t i = 0; i < b->nfailed; i++)
        msg_free(b->failed[i]);
    free(b->failed);
    event_free(b->timer);
    event_free(b->kick);
    free(b);
}
