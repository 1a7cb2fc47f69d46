/* worker: one pipe process. Scheduling by destination queue (DESIGN §4.4):
 * a timer asks the database which queues of this pipe have ready work;
 * for each, up to max-smtp-out delivery sessions are started. A session
 * claims a batch of recipients of its queue (one statement, leased with a
 * fencing token, committed), resolves the destination, delivers over one
 * SMTP connection, finishes the batch with one statement that checks the
 * tokens, and claims the next batch for the same connection until
 * max-msg-per-connection or the queue is empty. No transaction is open
 * while SMTP or DNS I/O is in progress.
 *
 * The worker owns its event loop, database connections, resolver, the local
 * queue table and the sessions. A session owns its claimed batch (copied out
 * of the PGresult) and its SMTP client. Sessions are freed at the end of a
 * loop turn, never inside a callback of something they own. */
#include "worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "bounce.h"
#include "db.h"
#include "dkim.h"
#include "dns.h"
#include "admission.h"
#include "log.h"
#include "policy.h"
#include "sched.h"
#include "smtp_client.h"
#include "util.h"

/* Recipients claimed per statement at most (also bounded by
 * max-msg-per-connection). */
#define WORKER_BATCH_MAX 100
/* Delivery sessions per process at most. */
#define WORKER_MAX_SESSIONS 512
/* Message content held by the claimed batches of one process. Memory grows
 * with sessions x batch x message size, never with the queue (which lives
 * in PostgreSQL); this budget shrinks batches and holds back new sessions
 * once it is reached, so a process stays near it whatever the mix. */
#define WORKER_CONTENT_BUDGET (32u * 1024 * 1024)
/* Sessions started per queue per scheduler tick (ramp-up). */
#define WORKER_START_PER_TICK 4
#define WORKER_FAST_POLL_MS 20
/* After a queue had no free slot cluster-wide, ask again after this. */
#define WORKER_SLOT_RETRY_MS 200
#define WORKER_HEARTBEAT_MS 5000
/* Housekeeping (purging finished messages and empty queues, accounting
 * partitions, rate buckets) runs in one process per node: index 0 of the
 * default pipe. Concurrent runs on several nodes are safe. */
#define WORKER_HOUSEKEEPING_MS 30000

/* A session: slot (max-smtp-out) -> connect token (max-connect-rate) ->
 * message tokens (max-msg-rate) -> claim -> resolve -> send -> finish, then
 * tokens -> claim -> send -> finish ... on the same connection. */
enum sess_state {
    S_SLOT,
    S_CONNECT_TOKEN,
    S_TOKENS,
    S_THROTTLED,
    S_CLAIM,
    S_RESOLVE,
    S_SEND,
    S_FINISH,
    S_FINISH_WAIT,
    S_DONE
};
static const char *const sess_state_names[] = {
    "slot",    "connect-token", "tokens", "throttled",   "claim",
    "resolve", "send",          "finish", "finish-wait", "done"};

/* How long a connected session waits for message tokens before it quits. */
#define WORKER_MAX_TOKEN_WAIT_MS 5000

struct rcpt {
    long long id;
    long long token;
    long long message_id;
    char *rcpt;
    int attempt;
    long long queued_at_us;
    /* outcome */
    char type; /* 'd', 'b', 't' */
    char status[16];
    char *diag;
    const char *bounce_cat;
    long long retry_at_us;
};

/* One SMTP transaction. A message whose recipients are more than
 * max-rcpt-per-message becomes several transactions; they share its
 * content (held once, in the claim result) and its signed copy, both owned
 * by the first of them (owner < 0). */
struct msg {
    long long message_id;
    char *mail_from;
    char *envid;
    const unsigned char *content; /* inside the session's claim result */
    size_t content_len;
    unsigned char *signed_content; /* DKIM/BIMI headers + content, when signed */
    size_t signed_len;
    long owner;   /* index of the transaction that owns the content, -1 itself */
    size_t first; /* index of its first recipient in the batch */
    size_t nrcpts;
    const char **rcpt_ptrs;
};

struct worker;

struct session {
    uint64_t id;
    struct worker *w;
    struct admission_queue *q;
    const struct conf_domain *dom;
    enum sess_state state;
    struct smtp_client *smtp;
    struct dns_request *dnsreq;
    struct event *ev_retry;
    unsigned sent;
    bool usable;
    struct rcpt *rcpts;
    size_t nrcpts;
    struct msg *msgs;
    size_t nmsgs;
    struct smtp_message *smtp_msgs; /* what the SMTP client reads until its callback */
    PGresult *claim_res;            /* the claimed rows: content is read in place */
    size_t reserved;                /* content budget reserved for a claim in flight */
    char *dsn_mta;
    char *source_ip;
    char *dest_ip;
    char *tls_protocol;
    char *tls_cipher;
    long long lease_deadline_ms; /* monotonic */
    /* Shaping key: limits are per (destination, source virtual MTA); the
     * destination is the mx-rollup name when the domain has one. */
    char *limit_domain;
    const char *source_vmta; /* member of a pool, or the queue's vmta; "" none */
    int slot;                /* connection slot held, -1 none */
    unsigned tokens;         /* message tokens granted for the next claim */
    unsigned token_waited_ms;
    bool no_reuse;            /* quit after the current batch */
    unsigned pattern_effects; /* POLICY_EFFECT_* of this batch's replies */
    char *pattern_reply;
    bool pending; /* a database or sched callback is due: it frees an ended session */
    bool claim_waiting;
    bool connect_reported;      /* admission_connected was told about this connection */
    struct session *claim_next; /* in q->claim_wait */
    struct session *next;
};

struct worker {
    struct event_base *base;
    struct conf *conf;
    struct conf **old_confs;
    size_t nold_confs;
    char *pipe;
    unsigned index;
    char *node_label; /* "node-name/pipe/index" for accounting */
    long long node_id;
    struct db **dbs;
    size_t ndbs;
    size_t rr;
    struct dns *dns;
    struct sched *sched;
    struct dkim *dkim; /* keys of the current configuration (used only while sending) */
    struct event *ev_tick;
    struct event *ev_heartbeat;
    struct event *ev_housekeeping;
    struct event *ev_deadline;
    struct event *ev_signals[3];
    uint64_t poll_ms;
    bool tick_inflight;
    bool registering;
    bool stopping;
    bool exiting;
    struct admission *queues;
    long long last_prune; /* monotonic ms */
    struct session *sessions;
    unsigned nsessions;
    size_t content_bytes; /* content held by claimed batches and reserved for claims */
    double avg_row_bytes; /* running average of content bytes per claimed row */
    uint64_t next_session_id;
    int exit_status;
};

static void session_claim(struct session *s);
static void queue_unwait(struct admission_queue *q, struct session *s);
static void session_take_tokens(struct session *s);
static void session_finish(struct session *s);
static void session_end(struct session *s);
static void worker_schedule_tick(struct worker *w, uint64_t ms);
static void worker_maybe_exit(struct worker *w);

/* The wall clock, for what is stored or shown (retry times, expiry against
 * queued_at, backoff end); local deadlines use admission_now_ms. */
static long long
wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000000LL + tv.tv_usec;
}

static struct db *
worker_db(struct worker *w)
{
    for (size_t i = 0; i < w->ndbs; i++) {
        struct db *db = w->dbs[(w->rr + i) % w->ndbs];
        if (db_ready(db)) {
            w->rr = (w->rr + i + 1) % w->ndbs;
            return db;
        }
    }
    return NULL;
}

static void
session_set_state(struct session *s, enum sess_state st)
{
    log_trace("session=%llu queue=%s event=state from=%s to=%s", (unsigned long long)s->id,
              s->q->name, sess_state_names[s->state], sess_state_names[st]);
    s->state = st;
}

/* ---- batch memory ---- */

static void
session_clear_batch(struct session *s)
{
    for (size_t i = 0; i < s->nrcpts; i++) {
        free(s->rcpts[i].rcpt);
        free(s->rcpts[i].diag);
    }
    free(s->rcpts);
    s->rcpts = NULL;
    s->nrcpts = 0;
    for (size_t i = 0; i < s->nmsgs; i++) {
        if (s->msgs[i].owner < 0) {
            s->w->content_bytes -= s->msgs[i].content_len + s->msgs[i].signed_len;
            free(s->msgs[i].signed_content);
        }
        free(s->msgs[i].mail_from);
        free(s->msgs[i].envid);
        free(s->msgs[i].rcpt_ptrs);
    }
    free(s->msgs);
    s->msgs = NULL;
    s->nmsgs = 0;
    free(s->smtp_msgs);
    s->smtp_msgs = NULL;
    if (s->claim_res) {
        PQclear(s->claim_res);
        s->claim_res = NULL;
    }
    free(s->dsn_mta);
    free(s->source_ip);
    free(s->dest_ip);
    free(s->tls_protocol);
    free(s->tls_cipher);
    s->dsn_mta = s->source_ip = s->dest_ip = s->tls_protocol = s->tls_cipher = NULL;
}

static void
session_unreserve(struct session *s)
{
    s->w->content_bytes -= s->reserved;
    s->reserved = 0;
}

static void
session_destroy(struct session *s)
{
    struct worker *w = s->w;
    session_unreserve(s);
    session_clear_batch(s);
    free(s->limit_domain);
    free(s->pattern_reply);
    if (s->ev_retry)
        event_free(s->ev_retry);
    free(s);
    worker_maybe_exit(w);
}

static void
session_free_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_destroy(arg);
}

/* Calls cb(s) after ms milliseconds: the session's one timer (finish
 * retries and token waits never overlap). */
static void
session_retry_in(struct session *s, unsigned ms, event_callback_fn cb)
{
    if (!s->ev_retry)
        s->ev_retry = evtimer_new(s->w->base, cb, s);
    evtimer_del(s->ev_retry);
    event_assign(s->ev_retry, s->w->base, -1, 0, cb, s);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(s->ev_retry, &tv);
}

/* Called first in every database or sched callback of a session: false
 * when the session ended meanwhile (it is freed here, the result ignored). */
static bool
session_returned(struct session *s)
{
    s->pending = false;
    if (s->state != S_DONE)
        return true;
    session_destroy(s);
    return false;
}

/* Unlinks the session and frees it at the end of this loop turn. */
static void
session_end(struct session *s)
{
    struct worker *w = s->w;
    if (s->state == S_DONE)
        return;
    session_set_state(s, S_DONE);
    if (s->dnsreq) {
        dns_cancel(s->dnsreq);
        s->dnsreq = NULL;
    }
    if (s->ev_retry)
        evtimer_del(s->ev_retry);
    if (s->claim_waiting)
        queue_unwait(s->q, s);
    if (s->slot >= 0) {
        sched_release_slot(w->sched, s->limit_domain, s->source_vmta, s->slot);
        s->slot = -1;
    }
    if (s->smtp) {
        if (s->usable)
            smtp_client_quit(s->smtp);
        else
            smtp_client_free(s->smtp);
        s->smtp = NULL;
    }
    for (struct session **pp = &w->sessions; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    w->nsessions--;
    s->q->active--;
    if (s->pending)
        return; /* freed by the database callback */
    struct timeval zero = {0, 0};
    event_base_once(w->base, -1, EV_TIMEOUT, session_free_cb, s, &zero);
}

/* ---- outcomes ---- */

static void
rcpt_set(struct rcpt *r, char type, const char *status, const char *diag, const char *cat)
{
    r->type = type;
    snprintf(r->status, sizeof r->status, "%s", status ? status : "");
    free(r->diag);
    r->diag = xstrdup(diag ? diag : "");
    r->bounce_cat = cat;
}

/* A transient failure: retry with exponential backoff and jitter, or
 * bounce with 4.4.7 once bounce-after has passed since queueing (see
 * policy.h). Transient rows carry a bounce category too. */
static void
rcpt_transient(struct session *s, struct rcpt *r, int code, const char *status, const char *diag)
{
    const struct conf_domain *d = s->dom;
    long long now = wall_us();
    if (policy_expired(d, r->queued_at_us, now)) {
        char *text = xasprintf("message expired after %llus in queue; last error: %s",
                               (unsigned long long)(d->bounce_after_ms / 1000), diag);
        rcpt_set(r, 'b', "4.4.7", text, "message-expired");
        free(text);
        return;
    }
    bool backoff = s->q->backoff || (s->pattern_effects & POLICY_EFFECT_BACKOFF);
    double u = (double)random() / (double)RAND_MAX;
    rcpt_set(r, 't', status, diag, bounce_category(code, status, diag));
    r->retry_at_us = policy_retry_at_us(d, r->attempt, backoff, r->queued_at_us, now, u);
}

static void
rcpt_permanent(struct rcpt *r, int code, const char *status, const char *diag)
{
    rcpt_set(r, 'b', status, diag, bounce_category(code, status, diag));
}

/* Applies one failure to every recipient of the batch. */
static void
session_fail_all(struct session *s, bool permanent, int code, const char *status, const char *diag)
{
    for (size_t i = 0; i < s->nrcpts; i++) {
        if (permanent)
            rcpt_permanent(&s->rcpts[i], code, status, diag);
        else
            rcpt_transient(s, &s->rcpts[i], code, status, diag);
    }
}

/* ---- finish ---- */

static void
append_ts(struct buf *b, long long us)
{
    time_t t = (time_t)(us / 1000000LL);
    struct tm tm;
    gmtime_r(&t, &tm);
    buf_printf(b, "\"%04d-%02d-%02d %02d:%02d:%02d.%06lld+00\"", tm.tm_year + 1900, tm.tm_mon + 1,
               tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, us % 1000000LL);
}

static void session_on_finished(const PGresult *res, void *arg);

static void
session_retry_finish_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_finish(arg);
}

static void
session_finish(struct session *s)
{
    struct worker *w = s->w;
    session_set_state(s, S_FINISH);
    enum {
        F_IDS,
        F_TOKENS,
        F_TYPES,
        F_RETRY,
        F_STATUS,
        F_DIAG,
        F_MTA,
        F_CAT,
        F_SRC,
        F_DST,
        F_TLSP,
        F_TLSC,
        F_N
    };
    struct buf a[F_N];
    for (int i = 0; i < F_N; i++) {
        buf_init(&a[i]);
        buf_puts(&a[i], "{");
    }
    for (size_t i = 0; i < s->nrcpts; i++) {
        struct rcpt *r = &s->rcpts[i];
        if (i > 0)
            for (int k = 0; k < F_N; k++)
                buf_puts(&a[k], ",");
        buf_printf(&a[F_IDS], "%lld", r->id);
        buf_printf(&a[F_TOKENS], "%lld", r->token);
        buf_printf(&a[F_TYPES], "%c", r->type);
        if (r->type == 't')
            append_ts(&a[F_RETRY], r->retry_at_us);
        else
            buf_puts(&a[F_RETRY], "NULL");
        db_array_append_text(&a[F_STATUS], r->status);
        db_array_append_text(&a[F_DIAG], r->diag);
        db_array_append_text(&a[F_MTA], s->dsn_mta);
        db_array_append_text(&a[F_CAT], r->type != 'd' ? r->bounce_cat : NULL);
        db_array_append_text(&a[F_SRC], s->source_ip);
        db_array_append_text(&a[F_DST], s->dest_ip);
        db_array_append_text(&a[F_TLSP], s->tls_protocol);
        db_array_append_text(&a[F_TLSC], s->tls_cipher);
    }
    for (int i = 0; i < F_N; i++)
        buf_puts(&a[i], "}");
    char node[32];
    snprintf(node, sizeof node, "%lld", w->node_id);
    const char *values[15] = {node,
                              w->node_label,
                              a[F_IDS].data,
                              a[F_TOKENS].data,
                              a[F_TYPES].data,
                              a[F_RETRY].data,
                              a[F_STATUS].data,
                              a[F_DIAG].data,
                              a[F_MTA].data,
                              a[F_CAT].data,
                              a[F_SRC].data,
                              a[F_DST].data,
                              a[F_TLSP].data,
                              a[F_TLSC].data,
                              w->conf->generate_bounces ? "true" : "false"};
    struct db *db = worker_db(w);
    int rc = db ? db_exec(db, "finish", 15, values, NULL, NULL, 0, session_on_finished, s) : -1;
    for (int i = 0; i < F_N; i++)
        buf_free(&a[i]);
    if (rc == 0)
        s->pending = true;
    else
        session_on_finished(NULL, s);
}

static void
session_on_finished(const PGresult *res, void *arg)
{
    struct session *s = arg;
    struct worker *w = s->w;
    if (!session_returned(s))
        return;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* Keep the outcome and try again while our leases are valid: the
         * database may be restarting. After that, the leases expire and the
         * recipients are delivered again (a duplicate, never a loss). */
        long long left = s->lease_deadline_ms - admission_now_ms();
        log_warn("session=%llu queue=%s event=finish-failed error=\"%s\" lease_left_ms=%lld",
                 (unsigned long long)s->id, s->q->name,
                 res ? PQresultErrorMessage(res) : "no database connection", left);
        if (left <= 1000) {
            session_end(s);
            return;
        }
        session_set_state(s, S_FINISH_WAIT);
        session_retry_in(s, 1000, session_retry_finish_cb);
        return;
    }
    long long finished = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    size_t counts[3] = {0, 0, 0};
    for (size_t i = 0; i < s->nrcpts; i++)
        counts[s->rcpts[i].type == 'd' ? 0 : s->rcpts[i].type == 'b' ? 1 : 2]++;
    log_info("session=%llu queue=%s event=finished rcpts=%zu delivered=%zu bounced=%zu "
             "deferred=%zu fenced=%lld",
             (unsigned long long)s->id, s->q->name, s->nrcpts, counts[0], counts[1], counts[2],
             (long long)s->nrcpts - finished);
    session_clear_batch(s);
    if (s->smtp && s->usable && !s->no_reuse && !w->stopping &&
        s->sent < s->dom->max_msg_per_connection) {
        session_take_tokens(s);
        return;
    }
    if (s->sent >= s->dom->max_msg_per_connection && s->dom->max_smtp_out != CONF_UNLIMITED) {
        /* The connection is used up and its slot goes back: let the other
         * nodes of the cluster have a turn at it before this one asks again
         * (a short random pause, shorter than the fast poll of the others). */
        long long pause_ms = WORKER_FAST_POLL_MS + random() % (3 * WORKER_FAST_POLL_MS);
        admission_hold(s->q, admission_now_ms(), pause_ms);
    }
    session_end(s);
}

/* ---- SMTP ---- */

static char *
fmt_diag(const struct smtp_rcpt_result *r)
{
    /* PowerMTA style: "smtp;550 5.1.1 user unknown", one line. */
    /* The reply text carries its code on every line already. */
    char *d = r->code ? xasprintf("smtp;%s", r->reply ? r->reply : "")
                      : xasprintf("%s", r->reply ? r->reply : "");
    for (char *p = d; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return d;
}

static void
worker_ignore_result(const PGresult *res, void *arg)
{
    (void)arg;
    if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("event=statement-failed error=\"%s\"", PQresultErrorMessage(res));
}

/* smtp-pattern-list (policy_apply_patterns): the outcome to apply to the
 * recipient; effects on the queue are collected for the batch. */
static enum smtp_outcome
session_apply_patterns(struct session *s, const struct smtp_rcpt_result *rr)
{
    unsigned before = s->pattern_effects;
    enum smtp_outcome o =
        policy_apply_patterns(s->dom, rr->outcome, rr->reply, &s->pattern_effects);
    if ((o != rr->outcome || s->pattern_effects != before) && !s->pattern_reply && rr->reply)
        s->pattern_reply = xstrdup(rr->reply);
    return o;
}

/* Makes the pattern effects of a batch known: backoff in the database (all
 * nodes see it, and it ends by itself backoff-to-normal-after after the last
 * matching reply), defer-queue as a pause of this queue on this process. */
static void
session_after_patterns(struct session *s)
{
    struct worker *w = s->w;
    if (s->pattern_effects & POLICY_EFFECT_BACKOFF) {
        s->q->backoff = true;
        long long until = wall_us() + (long long)s->dom->backoff_to_normal_after_ms * 1000LL;
        struct buf ts;
        buf_init(&ts);
        append_ts(&ts, until);
        /* append_ts quotes for array literals; a plain value wants none. */
        char *plain = xstrndup(ts.data + 1, ts.len - 2);
        const char *values[4] = {s->q->domain, s->q->vmta, plain, s->pattern_reply};
        struct db *db = worker_db(w);
        if (db)
            db_exec(db, "enter_backoff", 4, values, NULL, NULL, 0, worker_ignore_result, NULL);
        log_info("session=%llu queue=%s event=backoff until_s=%llu reply=\"%s\"",
                 (unsigned long long)s->id, s->q->name,
                 (unsigned long long)(s->dom->backoff_to_normal_after_ms / 1000),
                 s->pattern_reply ? s->pattern_reply : "");
        free(plain);
        buf_free(&ts);
    }
    if (s->pattern_effects & POLICY_EFFECT_DEFER_QUEUE) {
        admission_hold(s->q, admission_now_ms(), (long long)s->dom->retry_after_ms);
        s->no_reuse = true;
        log_info("session=%llu queue=%s event=defer-queue for_s=%llu", (unsigned long long)s->id,
                 s->q->name, (unsigned long long)(s->dom->retry_after_ms / 1000));
    }
    s->pattern_effects = 0;
    free(s->pattern_reply);
    s->pattern_reply = NULL;
}

static void
session_on_batch(struct smtp_client *c, const struct smtp_rcpt_result *const *results,
                 const struct smtp_conn_info *info, bool usable, void *arg)
{
    (void)c;
    struct session *s = arg;
    s->usable = usable;
    if (info->host || info->ip)
        s->dsn_mta = xasprintf("%s (%s)", info->host ? info->host : "", info->ip ? info->ip : "");
    s->source_ip = info->source_ip ? xstrdup(info->source_ip) : NULL;
    s->dest_ip = info->ip ? xstrdup(info->ip) : NULL;
    s->tls_protocol = info->tls_protocol ? xstrdup(info->tls_protocol) : NULL;
    s->tls_cipher = info->tls_cipher ? xstrdup(info->tls_cipher) : NULL;
    for (size_t m = 0; m < s->nmsgs; m++) {
        struct msg *msg = &s->msgs[m];
        for (size_t k = 0; k < msg->nrcpts; k++) {
            const struct smtp_rcpt_result *rr = &results[m][k];
            struct rcpt *r = &s->rcpts[msg->first + k];
            char *diag = fmt_diag(rr);
            const char *status = rr->status && *rr->status ? rr->status : NULL;
            enum smtp_outcome outcome = session_apply_patterns(s, rr);
            switch (outcome) {
            case SMTP_DELIVERED:
                rcpt_set(r, 'd', status ? status : "2.0.0", diag, NULL);
                break;
            case SMTP_PERMANENT:
                rcpt_permanent(r, rr->code, status ? status : "5.0.0", diag);
                break;
            case SMTP_TRANSIENT:
                rcpt_transient(s, r, rr->code, status ? status : "4.0.0", diag);
                break;
            }
            free(diag);
        }
    }
    s->sent += (unsigned)s->nmsgs;
    if (!s->connect_reported) {
        /* Feedback for admission: did any MX answer at all? */
        bool answered = false;
        for (size_t m = 0; m < s->nmsgs && !answered; m++)
            for (size_t k = 0; k < s->msgs[m].nrcpts && !answered; k++)
                answered = results[m][k].code != 0 || results[m][k].outcome == SMTP_DELIVERED;
        s->connect_reported = true;
        admission_connected(s->q, s->dom, answered, admission_now_ms());
    }
    session_after_patterns(s);
    if (!usable) {
        smtp_client_free(s->smtp);
        s->smtp = NULL;
    }
    session_finish(s);
}

static void
session_send(struct session *s)
{
    session_set_state(s, S_SEND);
    struct smtp_message *m = xcalloc(s->nmsgs, sizeof *m);
    for (size_t i = 0; i < s->nmsgs; i++) {
        struct msg *msg = &s->msgs[i];
        m[i].mail_from = msg->mail_from;
        m[i].envid = msg->envid;
        m[i].rcpts = msg->rcpt_ptrs;
        m[i].nrcpts = msg->nrcpts;
        bool utf8 = false;
        for (const char *p = msg->mail_from; *p; p++)
            utf8 |= (*p & 0x80) != 0;
        for (size_t k = 0; k < msg->nrcpts; k++)
            for (const char *p = msg->rcpt_ptrs[k]; *p; p++)
                utf8 |= (*p & 0x80) != 0;
        m[i].smtputf8 = utf8;
        if (msg->owner >= 0) {
            /* A later transaction of the same message: the same bytes. */
            m[i].content = m[msg->owner].content;
            m[i].content_len = m[msg->owner].content_len;
            m[i].eightbit = m[msg->owner].eightbit;
            continue;
        }
        m[i].content = msg->content;
        m[i].content_len = msg->content_len;
        /* DKIM signature and BIMI-Selector of the sender domain, once per
         * message (not per recipient or transaction). */
        char *hdr = dkim_headers(s->w->dkim, msg->mail_from, msg->content, msg->content_len);
        if (hdr) {
            size_t hl = strlen(hdr);
            msg->signed_content = xmalloc(hl + msg->content_len);
            memcpy(msg->signed_content, hdr, hl);
            memcpy(msg->signed_content + hl, msg->content, msg->content_len);
            m[i].content = msg->signed_content;
            m[i].content_len = hl + msg->content_len;
            msg->signed_len = m[i].content_len;
            s->w->content_bytes += msg->signed_len;
            free(hdr);
        }
        for (size_t k = 0; k < msg->content_len; k++) {
            if (msg->content[k] & 0x80) {
                m[i].eightbit = true;
                break;
            }
        }
    }
    /* The client reads the array until the batch callback. */
    s->smtp_msgs = m;
    smtp_client_send(s->smtp, m, s->nmsgs, session_on_batch, s);
}

static bool
parse_source(const char *ip, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        *len = sizeof *in4;
        return true;
    }
    if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        *len = sizeof *in6;
        return true;
    }
    return false;
}

/* Whether ADDR is one of this node's SMTP listeners (listen.smtp): an MX
 * that points at ourselves would loop the mail back into our own queue. A
 * wildcard listener (0.0.0.0, ::) counts for the loopback addresses. */
static bool
addr_is_ours(const struct conf *c, const struct dns_addr *a)
{
    char ip[INET6_ADDRSTRLEN];
    unsigned port;
    const void *bin;
    int fam = a->sa.ss_family;
    if (fam == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&a->sa;
        bin = &in->sin_addr;
        port = ntohs(in->sin_port);
    } else if (fam == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->sa;
        bin = &in6->sin6_addr;
        port = ntohs(in6->sin6_port);
    } else {
        return false;
    }
    inet_ntop(fam, bin, ip, sizeof ip);
    bool loopback = fam == AF_INET ? strncmp(ip, "127.", 4) == 0 : strcmp(ip, "::1") == 0;
    for (size_t i = 0; i < c->nlisten_smtp; i++) {
        const char *l = c->listen_smtp[i];
        const char *colon = strrchr(l, ':');
        if (!colon || (unsigned)strtoul(colon + 1, NULL, 10) != port)
            continue;
        char host[INET6_ADDRSTRLEN + 2];
        size_t hl = (size_t)(colon - l);
        if (l[0] == '[' && hl >= 2) {
            l++;
            hl -= 2;
        }
        if (hl >= sizeof host)
            continue;
        memcpy(host, l, hl);
        host[hl] = '\0';
        if (strcmp(host, ip) == 0)
            return true;
        if (loopback && (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0))
            return true;
    }
    return false;
}

/* The hosts of RES without the addresses that are our own listeners; the
 * caller frees the address arrays and the array. */
static struct dns_host *
hosts_not_ours(const struct conf *c, const struct dns_result *res, size_t *n)
{
    struct dns_host *out = xcalloc(res->nhosts ? res->nhosts : 1, sizeof *out);
    *n = 0;
    for (size_t i = 0; i < res->nhosts; i++) {
        const struct dns_host *h = &res->hosts[i];
        struct dns_host *o = &out[*n];
        *o = *h;
        o->addrs = xcalloc(h->naddrs ? h->naddrs : 1, sizeof *o->addrs);
        o->naddrs = 0;
        for (size_t k = 0; k < h->naddrs; k++)
            if (!addr_is_ours(c, &h->addrs[k]))
                o->addrs[o->naddrs++] = h->addrs[k];
        if (o->naddrs)
            (*n)++;
        else
            free(o->addrs);
    }
    return out;
}

static void
session_on_dns(const struct dns_result *res, void *arg)
{
    struct session *s = arg;
    struct worker *w = s->w;
    s->dnsreq = NULL;
    switch (res->status) {
    case DNS_OK:
        break;
    case DNS_NXDOMAIN:
    case DNS_NO_HOSTS: {
        char *diag = xasprintf("dns;%s", res->error ? res->error : "no such domain");
        session_fail_all(s, true, 550, "5.1.2", diag);
        free(diag);
        session_finish(s);
        return;
    }
    case DNS_NULL_MX: {
        char *diag =
            xasprintf("dns;%s", res->error ? res->error : "domain accepts no mail (null MX)");
        session_fail_all(s, true, 556, "5.1.10", diag);
        free(diag);
        session_finish(s);
        return;
    }
    case DNS_TEMPFAIL:
    default: {
        char *diag = xasprintf("dns;%s", res->error ? res->error : "temporary DNS failure");
        session_fail_all(s, false, 451, "4.4.3", diag);
        free(diag);
        session_finish(s);
        return;
    }
    }
    const struct conf *conf = w->conf;
    const struct conf_vmta *vmta =
        s->source_vmta[0] ? conf_vmta_lookup(conf, s->source_vmta) : NULL;
    struct sockaddr_storage src;
    socklen_t srclen = 0;
    bool have_src =
        vmta && vmta->smtp_source_host && parse_source(vmta->smtp_source_host, &src, &srclen);
    struct smtp_client_config cfg = {
        .helo_name = vmta && vmta->helo ? vmta->helo : conf->node_name,
        .source = have_src ? (const struct sockaddr *)&src : NULL,
        .source_len = have_src ? srclen : 0,
        .use_starttls = s->dom->use_starttls,
        .require_starttls = s->dom->require_starttls,
        .tls_verify = s->dom->tls_verify,
        .tls_ca_file = getenv("PGMTA_TLS_CA_FILE"),
        .connect_timeout_ms = s->dom->connect_timeout_ms,
        .command_timeout_ms = s->dom->command_timeout_ms,
        .data_timeout_ms = s->dom->data_timeout_ms,
        .id = s->q->name,
    };
    size_t nhosts;
    struct dns_host *hosts = hosts_not_ours(conf, res, &nhosts);
    if (nhosts == 0) {
        /* Every MX is this node: delivering would loop (Postfix: 5.4.6). */
        free(hosts);
        char *diag = xasprintf("dns;mail for %s loops back to myself", s->q->domain);
        session_fail_all(s, true, 554, "5.4.6", diag);
        free(diag);
        session_finish(s);
        return;
    }
    s->smtp = smtp_client_new(w->base, &cfg, hosts, nhosts);
    for (size_t i = 0; i < nhosts; i++)
        free(hosts[i].addrs);
    free(hosts);
    s->usable = true;
    session_send(s);
}

static void
session_resolve(struct session *s)
{
    struct worker *w = s->w;
    session_set_state(s, S_RESOLVE);
    const struct conf_domain *d = s->dom;
    if (d->route) {
        char host[256];
        unsigned port = 25;
        const char *colon = strrchr(d->route, ':');
        size_t hl = colon ? (size_t)(colon - d->route) : strlen(d->route);
        if (hl >= sizeof host)
            hl = sizeof host - 1;
        memcpy(host, d->route, hl);
        host[hl] = '\0';
        if (colon)
            port = (unsigned)strtoul(colon + 1, NULL, 10);
        /* strip [] of an IPv6 literal */
        char *h = host;
        if (h[0] == '[' && h[strlen(h) - 1] == ']') {
            h[strlen(h) - 1] = '\0';
            h++;
        }
        s->dnsreq = dns_resolve_host(w->dns, h, (uint16_t)port, session_on_dns, s);
    } else {
        s->dnsreq =
            dns_resolve_mx(w->dns, s->q->domain, (uint16_t)w->conf->smtp_port, session_on_dns, s);
    }
}

/* ---- claim ---- */

static char *
col_text(const PGresult *res, int row, int col)
{
    if (col < 0 || PQgetisnull(res, row, col))
        return NULL;
    return xstrndup(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col));
}

static void session_on_claimed(const PGresult *res, void *arg);

/* Largest content a node sends; larger rows are nonsense (enqueue refuses
 * more than 64 MB). */
#define WORKER_MAX_CONTENT (64u * 1024 * 1024)

static bool
address_sane(const char *a, bool allow_empty)
{
    if (!a)
        return false;
    if (!*a)
        return allow_empty;
    if (strlen(a) > 320 || !strchr(a, '@'))
        return false;
    for (const unsigned char *p = (const unsigned char *)a; *p; p++)
        if (*p < 0x21 || *p == 0x7f || *p == '<' || *p == '>')
            return false;
    return true;
}

/* A binary boolean column; NULL reads as false. */
static bool
col_bool(const PGresult *res, int row, int col)
{
    return col >= 0 && !PQgetisnull(res, row, col) && PQgetlength(res, row, col) == 1 &&
           PQgetvalue(res, row, col)[0] != 0;
}

/* Why the content of a message (its first claimed row) cannot be sent, or
 * NULL when it can. */
static const char *
content_nonsense(const PGresult *res, int row, int c_content, int c_missing)
{
    if (col_bool(res, row, c_missing) || PQgetisnull(res, row, c_content))
        return "message content missing";
    if (PQgetlength(res, row, c_content) == 0)
        return "message content empty";
    if ((unsigned)PQgetlength(res, row, c_content) > WORKER_MAX_CONTENT)
        return "message content too large";
    return NULL;
}

/* Why a claimed recipient row cannot be delivered, or NULL when it can.
 * Such rows are set aside (mta.quarantine) with the reason; the node keeps
 * running. */
static const char *
row_nonsense(const PGresult *res, int row, int c_rcpt, int c_from, int c_att)
{
    if (PQgetisnull(res, row, c_rcpt) || !address_sane(PQgetvalue(res, row, c_rcpt), false))
        return "invalid recipient address";
    if (PQgetisnull(res, row, c_from) || !address_sane(PQgetvalue(res, row, c_from), true))
        return "invalid sender address";
    if (db_get_int4(res, row, c_att) < 1)
        return "invalid attempt count";
    return NULL;
}

static void
worker_set_aside(struct worker *w, long long id, long long token, const char *reason)
{
    char ids[32], tokens[32];
    snprintf(ids, sizeof ids, "{%lld}", id);
    snprintf(tokens, sizeof tokens, "{%lld}", token);
    const char *values[3] = {ids, tokens, reason};
    struct db *db = worker_db(w);
    log_warn("pipe=%s event=set-aside rcpt_id=%lld reason=\"%s\"", w->pipe, id, reason);
    if (db)
        db_exec(db, "set_aside", 3, values, NULL, NULL, 0, worker_ignore_result, NULL);
}

static void session_claim_now(struct session *s);

/* Rows to claim for TOKENS messages: message tokens (max-msg-rate) and
 * max-msg-per-connection count messages, i.e. SMTP transactions, as
 * PowerMTA does; a claim is in recipient rows. The queue's recent
 * recipients per transaction turn one into the other; transactions claimed
 * beyond TOKENS are given back (session_trim). */
static unsigned
session_claim_rows(const struct session *s, unsigned tokens)
{
    double per = s->q->rows_per_msg >= 1 ? s->q->rows_per_msg : 1;
    if (per > s->dom->max_rcpt_per_message)
        per = s->dom->max_rcpt_per_message;
    double rows = (double)tokens * per + 0.5;
    return rows > WORKER_BATCH_MAX ? WORKER_BATCH_MAX : rows < 1 ? 1 : (unsigned)rows;
}

static void
session_claim(struct session *s)
{
    struct admission_queue *q = s->q;
    session_set_state(s, S_CLAIM);
    if (q->claiming) {
        s->claim_waiting = true;
        s->claim_next = NULL;
        if (!q->claim_wait)
            q->claim_wait_tail = &q->claim_wait;
        *q->claim_wait_tail = s;
        q->claim_wait_tail = &s->claim_next;
        return;
    }
    session_claim_now(s);
}

static void
queue_unwait(struct admission_queue *q, struct session *s)
{
    for (struct session **pp = &q->claim_wait; *pp; pp = &(*pp)->claim_next) {
        if (*pp == s) {
            *pp = s->claim_next;
            if (!*pp)
                q->claim_wait_tail = pp;
            break;
        }
    }
    s->claim_waiting = false;
}

/* The queue's claim returned: the next waiting session claims. */
static void
queue_claim_done(struct admission_queue *q)
{
    q->claiming = false;
    struct session *s = q->claim_wait;
    if (!s)
        return;
    queue_unwait(q, s);
    session_claim_now(s);
}

/* Gives back the transactions of the claimed batch beyond KEEP (their
 * recipients become claimable again at once, their attempt not counted). */
static void
session_trim(struct session *s, size_t keep)
{
    struct worker *w = s->w;
    if (s->nmsgs <= keep)
        return;
    size_t first = s->msgs[keep].first;
    struct buf ids, tokens;
    buf_init(&ids);
    buf_init(&tokens);
    buf_puts(&ids, "{");
    buf_puts(&tokens, "{");
    for (size_t i = first; i < s->nrcpts; i++) {
        buf_printf(&ids, "%s%lld", i > first ? "," : "", s->rcpts[i].id);
        buf_printf(&tokens, "%s%lld", i > first ? "," : "", s->rcpts[i].token);
        free(s->rcpts[i].rcpt);
        free(s->rcpts[i].diag);
    }
    buf_puts(&ids, "}");
    buf_puts(&tokens, "}");
    log_debug("session=%llu queue=%s event=trim messages=%zu rcpts=%zu", (unsigned long long)s->id,
              s->q->name, s->nmsgs - keep, s->nrcpts - first);
    s->nrcpts = first;
    for (size_t i = keep; i < s->nmsgs; i++) {
        struct msg *m = &s->msgs[i];
        if (m->owner < 0)
            w->content_bytes -= m->content_len;
        free(m->mail_from);
        free(m->envid);
        free(m->rcpt_ptrs);
    }
    s->nmsgs = keep;
    char node[32];
    snprintf(node, sizeof node, "%lld", w->node_id);
    const char *values[3] = {node, ids.data, tokens.data};
    struct db *db = worker_db(w);
    if (db)
        db_exec(db, "release", 3, values, NULL, NULL, 0, worker_ignore_result, NULL);
    buf_free(&ids);
    buf_free(&tokens);
}

static void
session_claim_now(struct session *s)
{
    struct worker *w = s->w;
    unsigned limit = session_claim_rows(s, s->tokens);
    /* Claims in flight count against the budget until their rows arrive. */
    s->reserved = (size_t)((double)limit * w->avg_row_bytes);
    w->content_bytes += s->reserved;
    char node[32], lim[16], lease[32];
    snprintf(node, sizeof node, "%lld", w->node_id);
    snprintf(lim, sizeof lim, "%u", limit);
    snprintf(lease, sizeof lease, "%llu", (unsigned long long)w->conf->lease_ms);
    const char *values[6] = {node, w->pipe, s->q->domain, s->q->vmta, lim, lease};
    struct db *db = worker_db(w);
    s->q->claiming = true;
    s->pending = true;
    if (!db || db_exec(db, "claim", 6, values, NULL, NULL, 1, session_on_claimed, s) < 0) {
        s->pending = false;
        session_unreserve(s);
        session_end(s);
        queue_claim_done(s->q);
        return;
    }
}

static void
session_on_claimed(const PGresult *res, void *arg)
{
    struct session *s = arg;
    struct worker *w = s->w;
    struct admission_queue *q = s->q;
    session_unreserve(s);
    bool alive = session_returned(s);
    queue_claim_done(q);
    if (!alive)
        return;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_warn("session=%llu queue=%s event=claim-failed error=\"%s\"", (unsigned long long)s->id,
                 s->q->name, res ? PQresultErrorMessage(res) : "no database connection");
        session_end(s);
        return;
    }
    int n = PQntuples(res);
    if (n == 0) {
        session_end(s);
        return;
    }
    int c_id = PQfnumber(res, "rcpt_id"), c_tok = PQfnumber(res, "lease_token"),
        c_mid = PQfnumber(res, "message_id"), c_from = PQfnumber(res, "mail_from"),
        c_rcpt = PQfnumber(res, "rcpt"), c_content = PQfnumber(res, "content"),
        c_att = PQfnumber(res, "attempt"), c_envid = PQfnumber(res, "envid"),
        c_qat = PQfnumber(res, "queued_at");
    int c_first = PQfnumber(res, "content_first"), c_missing = PQfnumber(res, "message_missing"),
        c_left = PQfnumber(res, "lease_left_ms");
    s->rcpts = xcalloc((size_t)n, sizeof *s->rcpts);
    s->msgs = xcalloc((size_t)n, sizeof *s->msgs);
    /* The lease deadline is the server's (lease_until, as time left when
     * the rows were sent), on our monotonic clock. */
    s->lease_deadline_ms = admission_now_ms() + db_get_int4(res, 0, c_left);
    /* Rows come ordered by message, its content on the first row only;
     * consecutive rows of one message become one SMTP transaction with
     * several RCPTs (max-rcpt-per-message), and the transactions of one
     * message share its content. */
    struct msg *cur = NULL;
    long long content_mid = -1; /* the message whose content is below */
    const unsigned char *content = NULL;
    size_t content_len = 0;
    const char *content_why = NULL;
    long owner = -1;
    size_t held = 0;
    for (int i = 0; i < n; i++) {
        long long mid = db_get_int8(res, i, c_mid);
        if (mid != content_mid) {
            content_mid = mid;
            owner = -1;
            content_why = col_bool(res, i, c_first) ? content_nonsense(res, i, c_content, c_missing)
                                                    : "message content missing";
            content = content_why ? NULL : (const unsigned char *)PQgetvalue(res, i, c_content);
            content_len = content_why ? 0 : (size_t)PQgetlength(res, i, c_content);
        }
        const char *why = content_why ? content_why : row_nonsense(res, i, c_rcpt, c_from, c_att);
        if (why) {
            worker_set_aside(w, db_get_int8(res, i, c_id), db_get_int8(res, i, c_tok), why);
            continue;
        }
        struct rcpt *r = &s->rcpts[s->nrcpts++];
        r->id = db_get_int8(res, i, c_id);
        r->token = db_get_int8(res, i, c_tok);
        r->message_id = mid;
        r->rcpt = col_text(res, i, c_rcpt);
        r->attempt = db_get_int4(res, i, c_att);
        r->queued_at_us = db_get_timestamptz_us(res, i, c_qat);
        if (!r->rcpt)
            r->rcpt = xstrdup("");
        if (!cur || cur->message_id != r->message_id ||
            cur->nrcpts >= s->dom->max_rcpt_per_message) {
            cur = &s->msgs[s->nmsgs++];
            cur->message_id = r->message_id;
            cur->mail_from = col_text(res, i, c_from);
            if (!cur->mail_from)
                cur->mail_from = xstrdup("");
            cur->envid = col_text(res, i, c_envid);
            cur->content = content;
            cur->content_len = content_len;
            cur->owner = owner;
            if (owner < 0) {
                /* The first transaction of this message holds its content. */
                owner = (long)(s->nmsgs - 1);
                w->content_bytes += content_len;
                held += content_len;
            }
            cur->first = s->nrcpts - 1;
            cur->rcpt_ptrs = xcalloc((size_t)n, sizeof(char *));
        }
        cur->rcpt_ptrs[cur->nrcpts++] = r->rcpt;
    }
    /* What a claimed row costs on average: a message with many recipients
     * at this queue costs its size once, whatever the number of rows. */
    if (s->nrcpts > 0) {
        /* Up at once, down by halves: a claim in flight reserves by this
         * estimate, and an estimate too low lets several large claims in. */
        double sample = (double)held / (double)s->nrcpts;
        w->avg_row_bytes =
            sample > w->avg_row_bytes ? sample : 0.5 * w->avg_row_bytes + 0.5 * sample;
    }
    if (s->nmsgs > 0)
        q->rows_per_msg = 0.5 * (q->rows_per_msg >= 1 ? q->rows_per_msg : 1) +
                          0.5 * ((double)s->nrcpts / (double)s->nmsgs);
    session_trim(s, s->tokens);
    s->claim_res = db_take_result(res);
    log_debug("session=%llu queue=%s event=claimed rcpts=%zu messages=%zu",
              (unsigned long long)s->id, s->q->name, s->nrcpts, s->nmsgs);
    if (s->nrcpts == 0) {
        session_end(s);
        return;
    }
    if (s->smtp)
        session_send(s);
    else
        session_resolve(s);
}

/* ---- shaping: slot, connect token, message tokens ---- */

static void session_on_tokens(unsigned granted, unsigned wait_ms, void *arg);

static void
session_retry_tokens_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_take_tokens(arg);
}

static void
session_take_tokens(struct session *s)
{
    struct worker *w = s->w;
    session_set_state(s, S_TOKENS);
    unsigned want = s->dom->max_msg_per_connection - s->sent;
    if (want > WORKER_BATCH_MAX)
        want = WORKER_BATCH_MAX;
    /* The content budget admits a whole claim or none: the first row of a
     * message costs its whole size and the others nothing, so shrinking a
     * claim to fit would only split messages into more transactions. A
     * claim is admitted when what it is expected to hold fits beside what
     * is held, or when nothing is held (progress). Over the budget, a new
     * connection gives up and a connected one waits a little. */
    size_t expect = (size_t)((double)session_claim_rows(s, want) * w->avg_row_bytes);
    if (w->content_bytes > 0 && w->content_bytes + expect > WORKER_CONTENT_BUDGET) {
        if (s->smtp && !w->stopping && s->token_waited_ms + 50 <= WORKER_MAX_TOKEN_WAIT_MS) {
            session_set_state(s, S_THROTTLED);
            s->token_waited_ms += 50;
            session_retry_in(s, 50, session_retry_tokens_cb);
            return;
        }
        session_end(s);
        return;
    }
    const struct conf_rate *rate =
        s->q->backoff ? &s->dom->backoff_max_msg_rate : &s->dom->max_msg_rate;
    s->pending = true;
    sched_take_tokens(w->sched, s->limit_domain, s->source_vmta, SCHED_MSG, rate, want,
                      session_on_tokens, s);
}

static void
session_on_tokens(unsigned granted, unsigned wait_ms, void *arg)
{
    struct session *s = arg;
    struct worker *w = s->w;
    if (!session_returned(s))
        return;
    if (granted > 0) {
        s->tokens = granted;
        s->token_waited_ms = 0;
        session_claim(s);
        return;
    }
    if (wait_ms < 20)
        wait_ms = 20;
    if (wait_ms > 1000)
        wait_ms = 1000;
    /* A connected session waits a little for the rate to allow the next
     * message; an unconnected one gives up its slot at once. */
    if (s->smtp && !w->stopping && s->token_waited_ms + wait_ms <= WORKER_MAX_TOKEN_WAIT_MS) {
        session_set_state(s, S_THROTTLED);
        s->token_waited_ms += wait_ms;
        session_retry_in(s, wait_ms, session_retry_tokens_cb);
        return;
    }
    admission_hold(s->q, admission_now_ms(), wait_ms);
    session_end(s);
}

static void
session_on_connect_token(unsigned granted, unsigned wait_ms, void *arg)
{
    struct session *s = arg;
    if (!session_returned(s))
        return;
    if (granted == 0) {
        admission_hold(s->q, admission_now_ms(), wait_ms ? wait_ms : 100);
        session_end(s);
        return;
    }
    session_take_tokens(s);
}

static void
session_on_slot(int slot, void *arg)
{
    struct session *s = arg;
    struct worker *w = s->w;
    if (!session_returned(s))
        return;
    if (slot < 0) {
        /* Every slot of the queue is taken somewhere in the cluster: do not
         * ask again on every scheduler tick. */
        admission_hold(s->q, admission_now_ms(), WORKER_SLOT_RETRY_MS);
        session_end(s);
        return;
    }
    s->slot = slot;
    session_set_state(s, S_CONNECT_TOKEN);
    s->pending = true;
    sched_take_tokens(w->sched, s->limit_domain, s->source_vmta, SCHED_CONNECT,
                      &s->dom->max_connect_rate, 1, session_on_connect_token, s);
}

/* ---- scheduler ---- */

static void
worker_start_session(struct worker *w, struct admission_queue *q, const struct conf_domain *dom)
{
    struct session *s = xcalloc(1, sizeof *s);
    s->id = ++w->next_session_id;
    s->w = w;
    s->q = q;
    s->dom = dom;
    s->state = S_SLOT;
    s->slot = -1;
    s->limit_domain = dom->mx_rollup ? xasprintf("rollup:%s", dom->mx_rollup) : xstrdup(q->domain);
    /* A queue whose virtual MTA is a pool sends through its members in turn;
     * limits then apply per member (per source address). */
    const struct conf_vmta_pool *pool = q->vmta[0] ? conf_vmta_pool_lookup(w->conf, q->vmta) : NULL;
    s->source_vmta =
        pool && pool->nmembers ? pool->members[q->pool_next++ % pool->nmembers] : q->vmta;
    s->next = w->sessions;
    w->sessions = s;
    w->nsessions++;
    q->active++;
    log_debug("session=%llu queue=%s event=start active=%u source=%s", (unsigned long long)s->id,
              q->name, q->active, s->source_vmta);
    s->pending = true;
    sched_take_slot(w->sched, s->limit_domain, s->source_vmta, dom->max_smtp_out, session_on_slot,
                    s);
}

static void
worker_on_ready_queues(const PGresult *res, void *arg)
{
    struct worker *w = arg;
    w->tick_inflight = false;
    if (w->stopping)
        return;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (res)
            log_warn("pipe=%s event=ready-queues-failed error=\"%s\"", w->pipe,
                     PQresultErrorMessage(res));
        worker_schedule_tick(w, w->conf->poll_interval_ms);
        return;
    }
    int n = PQntuples(res);
    long long now = admission_now_ms();
    for (int i = 0; i < n; i++) {
        const char *domain = PQgetvalue(res, i, 0);
        const char *vmta = PQgetvalue(res, i, 1);
        struct admission_queue *q = admission_queue(w->queues, domain, vmta);
        q->backoff = PQgetvalue(res, i, 2)[0] == 't';
        q->last_active = now;
        const struct conf_domain *dom = conf_domain_lookup(w->conf, domain);
        for (int k = 0; k < WORKER_START_PER_TICK; k++) {
            struct admission_process p = {
                .sessions = w->nsessions,
                .max_sessions = WORKER_MAX_SESSIONS,
                .content_bytes = w->content_bytes,
                .content_budget = WORKER_CONTENT_BUDGET,
                .slots_db_ready = sched_ready(w->sched),
                .stopping = w->stopping,
            };
            unsigned why = admission_check(q, dom, &p, now);
            if (why) {
                if (log_threshold >= LOG_TRACE) {
                    char reasons[128];
                    admission_reasons(why, reasons, sizeof reasons);
                    log_trace("queue=%s event=not-admitted reasons=%s", q->name, reasons);
                }
                break;
            }
            worker_start_session(w, q, dom);
        }
    }
    if (now - w->last_prune >= ADMISSION_IDLE_MS) {
        w->last_prune = now;
        size_t gone = admission_prune(w->queues, now);
        if (gone)
            log_debug("pipe=%s event=queues-pruned removed=%zu left=%zu", w->pipe, gone,
                      admission_count(w->queues));
    }
    if (n > 0) {
        w->poll_ms = WORKER_FAST_POLL_MS;
    } else {
        w->poll_ms = w->poll_ms * 2;
        if (w->poll_ms > w->conf->poll_interval_ms)
            w->poll_ms = w->conf->poll_interval_ms;
    }
    worker_schedule_tick(w, w->poll_ms);
}

static void
worker_on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    if (w->stopping || w->tick_inflight)
        return;
    if (w->node_id == 0) {
        worker_schedule_tick(w, 200);
        return;
    }
    char lim[16];
    snprintf(lim, sizeof lim, "%d", 1000);
    const char *values[2] = {w->pipe, lim};
    struct db *db = worker_db(w);
    if (!db ||
        db_exec(db, "ready_queues", 2, values, NULL, NULL, 0, worker_on_ready_queues, w) < 0) {
        worker_schedule_tick(w, 500);
        return;
    }
    w->tick_inflight = true;
}

static void
worker_schedule_tick(struct worker *w, uint64_t ms)
{
    if (w->stopping)
        return;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(w->ev_tick, &tv);
}

/* ---- node registry ---- */

static void
worker_on_registered(const PGresult *res, void *arg)
{
    struct worker *w = arg;
    w->registering = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_error("pipe=%s event=register-failed error=\"%s\"", w->pipe,
                  res ? PQresultErrorMessage(res) : "no database connection");
        return; /* retried on the next ready callback */
    }
    w->node_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    sched_set_node_id(w->sched, w->node_id);
    log_info("pipe=%s index=%u event=registered node_id=%lld", w->pipe, w->index, w->node_id);
    worker_schedule_tick(w, 0);
}

static void
worker_on_db_ready(struct db *db, void *arg)
{
    struct worker *w = arg;
    if (w->node_id != 0 || w->stopping || w->registering)
        return;
    char idx[16], pid[16], host[256];
    snprintf(idx, sizeof idx, "%u", w->index);
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    const char *values[5] = {w->conf->node_name, w->pipe, idx, pid, host};
    if (db_exec(db, "node_register", 5, values, NULL, NULL, 0, worker_on_registered, w) == 0)
        w->registering = true;
}

static void
worker_on_heartbeat_done(const PGresult *res, void *arg)
{
    (void)arg;
    if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("event=heartbeat-failed error=\"%s\"", PQresultErrorMessage(res));
}

static void
worker_on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    if (w->node_id == 0)
        return;
    char node[32];
    snprintf(node, sizeof node, "%lld", w->node_id);
    const char *values[1] = {node};
    struct db *db = worker_db(w);
    if (db)
        db_exec(db, "node_heartbeat", 1, values, NULL, NULL, 0, worker_on_heartbeat_done, w);
}

static void
worker_on_slots_lost(void *arg)
{
    struct worker *w = arg;
    /* PostgreSQL released our slots with the connection: open connections
     * finish their batch and quit; new ones wait for the slot connection. */
    log_warn("pipe=%s index=%u event=slots-lost sessions=%u", w->pipe, w->index, w->nsessions);
    for (struct session *s = w->sessions; s; s = s->next) {
        s->slot = -1;
        s->no_reuse = true;
    }
}

static void
worker_on_housekeeping(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    static const char *const stmts[] = {"purge_messages", "purge_queues", "acct_partitions",
                                        "purge_rate_buckets", "backoff_expire"};
    struct db *db = worker_db(w);
    if (!db || w->node_id == 0)
        return;
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        db_exec(db, stmts[i], 0, NULL, NULL, NULL, 0, worker_ignore_result, NULL);
}

/* ---- shutdown and reload ---- */

static void
worker_on_stopped(const PGresult *res, void *arg)
{
    struct worker *w = arg;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
        log_info("pipe=%s index=%u event=stopped released=%s", w->pipe, w->index,
                 PQgetvalue(res, 0, 0));
    else
        log_warn("pipe=%s index=%u event=stop-unrecorded error=\"%s\"", w->pipe, w->index,
                 res ? PQresultErrorMessage(res) : "no database connection");
    event_base_loopexit(w->base, NULL);
}

static void
worker_exit_now(struct worker *w)
{
    if (w->exiting)
        return;
    w->exiting = true;
    char node[32];
    snprintf(node, sizeof node, "%lld", w->node_id);
    const char *values[1] = {node};
    struct db *db = worker_db(w);
    if (w->node_id == 0 || !db ||
        db_exec(db, "node_stop", 1, values, NULL, NULL, 0, worker_on_stopped, w) < 0) {
        event_base_loopexit(w->base, NULL);
        return;
    }
    /* Do not wait for ever for the database. */
    struct timeval tv = {3, 0};
    event_base_loopexit(w->base, &tv);
}

static void
worker_maybe_exit(struct worker *w)
{
    if (w->stopping && w->nsessions == 0)
        worker_exit_now(w);
}

static void
worker_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    log_warn("pipe=%s index=%u event=shutdown-deadline sessions=%u", w->pipe, w->index,
             w->nsessions);
    /* In-flight recipients are released by node_stop (their lease is
     * cleared), so another node delivers them; a delivery that had already
     * reached the receiver may be duplicated, never lost. */
    while (w->sessions)
        session_end(w->sessions);
    worker_exit_now(w);
}

static void
worker_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    evtimer_del(w->ev_tick);
    log_info("pipe=%s index=%u event=stopping sessions=%u", w->pipe, w->index, w->nsessions);
    struct timeval tv = {(time_t)(w->conf->shutdown_timeout_ms / 1000),
                         (suseconds_t)((w->conf->shutdown_timeout_ms % 1000) * 1000)};
    evtimer_add(w->ev_deadline, &tv);
    /* Sessions waiting for a claim result finish that batch and stop. */
    worker_maybe_exit(w);
}

static void
worker_reload(struct worker *w)
{
    char err[1024];
    struct conf *c = conf_load(w->conf->path, err, sizeof err);
    if (!c) {
        log_error("pipe=%s event=reload-failed error=\"%s\" keeping=old", w->pipe, err);
        return;
    }
    struct dkim *keys = dkim_new(c, err, sizeof err);
    if (!keys) {
        log_error("pipe=%s event=reload-failed error=\"%s\" keeping=old", w->pipe, err);
        conf_free(c);
        return;
    }
    dkim_free(w->dkim);
    w->dkim = keys;
    /* Sessions keep pointers into the old configuration: keep it until
     * exit (reloads are rare). */
    w->old_confs = xrealloc(w->old_confs, (w->nold_confs + 1) * sizeof *w->old_confs);
    w->old_confs[w->nold_confs++] = w->conf;
    w->conf = c;
    log_info("pipe=%s event=reloaded", w->pipe);
}

static void
worker_on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct worker *w = arg;
    if (sig == SIGHUP)
        worker_reload(w);
    else
        worker_stop(w);
}

/* ---- statements ---- */

static void
worker_prepare(struct db *db)
{
    db_prepare(db, "node_register", "SELECT mta.node_register($1, $2, $3::int, $4::int, $5)", 5);
    db_prepare(db, "node_heartbeat", "SELECT mta.node_heartbeat($1::bigint)", 1);
    db_prepare(db, "node_stop", "SELECT mta.node_stop($1::bigint)", 1);
    db_prepare(db, "ready_queues",
               "SELECT domain, vmta, backoff FROM mta.ready_queues($1, $2::int)", 2);
    db_prepare(db, "purge_messages", "SELECT mta.purge_messages(10000)", 0);
    db_prepare(db, "purge_queues", "SELECT mta.purge_queues()", 0);
    db_prepare(db, "acct_partitions", "SELECT mta.acct_ensure_partitions(7)", 0);
    db_prepare(db, "purge_rate_buckets", "SELECT mta.purge_rate_buckets()", 0);
    db_prepare(db, "backoff_expire", "SELECT mta.backoff_expire()", 0);
    db_prepare(db, "release", "SELECT mta.release($1::bigint, $2::bigint[], $3::bigint[])", 3);
    db_prepare(db, "set_aside", "SELECT mta.set_aside($1::bigint[], $2::bigint[], $3)", 3);
    db_prepare(db, "enter_backoff", "SELECT mta.queue_enter_backoff($1, $2, $3::timestamptz, $4)",
               4);
    db_prepare(db, "claim", "SELECT * FROM mta.claim($1::bigint, $2, $3, $4, $5::int, $6::int)", 6);
    db_prepare(db, "finish",
               "SELECT mta.finish($1::bigint, $2, $3::bigint[], $4::bigint[], $5::text[], "
               "$6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], "
               "$12::text[], $13::text[], $14::text[], $15::bool)",
               15);
}

/* libevent's own messages, as our log lines. A forked child's new event
 * base takes over the signals from the root's base (whose descriptors the
 * child closed); libevent warns about that once, which is expected here. */
static void
worker_libevent_log(int severity, const char *msg)
{
    if (strncmp(msg, "Added a signal to event base", 28) == 0) {
        log_debug("libevent: %s", msg);
        return;
    }
    log_msg(severity >= EVENT_LOG_ERR    ? LOG_ERROR
            : severity >= EVENT_LOG_WARN ? LOG_WARN
            : severity >= EVENT_LOG_MSG  ? LOG_INFO
                                         : LOG_DEBUG,
            "libevent: %s", msg);
}

int
worker_run(struct conf *conf, const char *pipe_name, unsigned index)
{
    event_set_log_callback(worker_libevent_log);
    struct worker *w = xcalloc(1, sizeof *w);
    srandom((unsigned)(getpid() ^ time(NULL)));
    signal(SIGPIPE, SIG_IGN);
    w->base = event_base_new();
    w->conf = conf;
    w->pipe = xstrdup(pipe_name);
    w->index = index;
    w->node_label = xasprintf("%s/%s/%u", conf->node_name, pipe_name, index);
    w->poll_ms = WORKER_FAST_POLL_MS;
    w->queues = admission_new();
    /* Pessimistic until the first claims tell: the first tick starts many
     * sessions at once, before any content size is known. */
    w->avg_row_bytes = 64 * 1024;
    char err[512];
    w->dkim = dkim_new(conf, err, sizeof err);
    if (!w->dkim) {
        log_error("pipe=%s event=dkim-init-failed error=\"%s\"", pipe_name, err);
        return 2;
    }
    w->dns = dns_new(w->base, (const char *const *)conf->dns_servers, conf->ndns_servers,
                     conf->dns_timeout_ms, err, sizeof err);
    if (!w->dns) {
        log_error("pipe=%s event=dns-init-failed error=\"%s\"", pipe_name, err);
        return 1;
    }
    w->sched = sched_new(w->base, conf->database_url, w->node_label);
    sched_set_lost_cb(w->sched, worker_on_slots_lost, w);
    w->ndbs = conf->database_connections ? conf->database_connections : 1;
    w->dbs = xcalloc(w->ndbs, sizeof *w->dbs);
    for (size_t i = 0; i < w->ndbs; i++) {
        char *name = xasprintf("pgmtad-%s-%u-%zu", pipe_name, index, i);
        w->dbs[i] = db_new(w->base, conf->database_url, name);
        free(name);
        worker_prepare(w->dbs[i]);
        db_set_ready_cb(w->dbs[i], worker_on_db_ready, w);
        db_connect(w->dbs[i]);
    }
    w->ev_tick = evtimer_new(w->base, worker_on_tick, w);
    w->ev_deadline = evtimer_new(w->base, worker_on_deadline, w);
    w->ev_heartbeat = event_new(w->base, -1, EV_PERSIST, worker_on_heartbeat, w);
    struct timeval hb = {WORKER_HEARTBEAT_MS / 1000, 0};
    evtimer_add(w->ev_heartbeat, &hb);
    w->ev_housekeeping = event_new(w->base, -1, EV_PERSIST, worker_on_housekeeping, w);
    if (index == 0 && conf->default_pipe && strcmp(pipe_name, conf->default_pipe) == 0) {
        /* PGMTA_HOUSEKEEPING_MS overrides the interval (tests, tuning). */
        const char *env = getenv("PGMTA_HOUSEKEEPING_MS");
        long ms = env ? strtol(env, NULL, 10) : WORKER_HOUSEKEEPING_MS;
        if (ms <= 0)
            ms = WORKER_HOUSEKEEPING_MS;
        struct timeval hk = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(w->ev_housekeeping, &hk);
    }
    int sigs[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        w->ev_signals[i] = evsignal_new(w->base, sigs[i], worker_on_signal, w);
        evsignal_add(w->ev_signals[i], NULL);
    }
    log_info("pipe=%s index=%u event=started", pipe_name, index);

    event_base_dispatch(w->base);

    w->exiting = true;
    int status = w->exit_status;
    log_info("pipe=%s index=%u event=exit status=%d", w->pipe, w->index, status);
    while (w->sessions)
        session_end(w->sessions);
    /* Run the deferred frees. */
    event_base_loop(w->base, EVLOOP_NONBLOCK);
    sched_free(w->sched);
    dkim_free(w->dkim);
    for (size_t i = 0; i < w->ndbs; i++)
        db_free(w->dbs[i]);
    free(w->dbs);
    dns_free(w->dns);
    for (int i = 0; i < 3; i++)
        event_free(w->ev_signals[i]);
    event_free(w->ev_tick);
    event_free(w->ev_deadline);
    event_free(w->ev_heartbeat);
    event_free(w->ev_housekeeping);
    admission_free(w->queues);
    event_base_free(w->base);
    for (size_t i = 0; i < w->nold_confs; i++)
        conf_free(w->old_confs[i]);
    free(w->old_confs);
    conf_free(w->conf);
    free(w->pipe);
    free(w->node_label);
    free(w);
    smtp_client_tls_cleanup();
    return status;
}
