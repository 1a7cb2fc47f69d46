/* http_api: the admin API's handlers and the database calls behind them
 * (see http_api.h).
 *
 * Ownership: struct http_api owns its own database connection (db.c, only
 * while http.c listens) and the list of calls waiting for it. A call (one
 * API request waiting for SQL) belongs to the database request it was
 * handed to: db.c calls back exactly once, always after db_exec returned,
 * and that callback unlinks the call and hands it to util_defer_free, so
 * it is never freed inside its own callback. An injection call owns its
 * inject_batch (http_inject.h). The evhttp request belongs to libevent; a
 * call keeps it until it replies (libevent keeps a request whose client
 * went away alive until the reply, and the reply then frees it) and forgets
 * it once answered early (database timeout, shutdown), so nothing touches a
 * request after its reply. */
#include "http_api.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <libpq-fe.h>

#include "db.h"
#include "http_inject.h"
#include "http_metrics.h"
#include "http_reply.h"
#include "json.h"
#include "log.h"
#include "util.h"

/* The totals of `pgmta show status` (admin/show.c): keep the two alike. */
#define STATUS_SQL                                                                                 \
    "SELECT coalesce(sum(q.queued), 0)::bigint AS queued, "                                        \
    "coalesce(sum(q.ready), 0)::bigint AS ready, "                                                 \
    "coalesce(sum(q.deferred), 0)::bigint AS deferred, "                                           \
    "coalesce(sum(q.in_flight), 0)::bigint AS in_flight, "                                         \
    "count(*) AS queues, "                                                                         \
    "count(*) FILTER (WHERE q.paused) AS paused_queues, "                                          \
    "(SELECT count(*) FROM mta.nodes n WHERE n.alive) AS nodes_alive, "                            \
    "(SELECT count(*) FROM mta.acct a WHERE a.type = 'd' "                                         \
    "  AND a.time_logged > now() - interval '1 hour') AS delivered_1h, "                           \
    "(SELECT count(*) FROM mta.acct a WHERE a.type = 'b' "                                         \
    "  AND a.time_logged > now() - interval '1 hour') AS bounced_1h "                              \
    "FROM mta.queues q"

/* One statement for /metrics: k = 'q' per queue, 'n' nodes (alive, all),
 * 'a' accounting rows of the last hour per type. Counting every accounting
 * row ever written would read the whole partitioned table on each scrape;
 * the last hour reads today's partition only, so the metric is a gauge
 * (pgmta_acct_events_last_hour), not a counter. */
#define METRICS_SQL                                                                                \
    "SELECT 'q' AS k, q.domain, coalesce(q.vmta, '') AS vmta, q.pipe, "                            \
    "       q.ready, q.deferred, q.in_flight, q.paused::int::bigint "                              \
    "  FROM mta.queues q "                                                                         \
    "UNION ALL "                                                                                   \
    "SELECT 'n', NULL, NULL, NULL, count(*) FILTER (WHERE n.alive), count(*), 0, 0 "               \
    "  FROM mta.nodes n "                                                                          \
    "UNION ALL "                                                                                   \
    "SELECT 'a', t.type, NULL, NULL, coalesce(a.n, 0), 0, 0, 0 "                                   \
    "  FROM (VALUES ('r'), ('d'), ('b'), ('t')) t(type) "                                          \
    "  LEFT JOIN (SELECT type::text AS type, count(*) AS n FROM mta.acct "                         \
    "              WHERE time_logged > now() - interval '1 hour' GROUP BY 1) a "                   \
    "  USING (type)"

static const struct {
    const char *name;
    const char *sql;
    int nparams;
} stmts[] = {
    {"http_status", STATUS_SQL, 0},
    {"http_queues", "SELECT * FROM mta.queues ORDER BY domain, vmta, pipe", 0},
    {"http_nodes", "SELECT * FROM mta.nodes ORDER BY 1", 0},
    {"http_jobs", "SELECT * FROM mta.jobs ORDER BY job_id", 0},
    {"http_warmup", "SELECT * FROM mta.warmup_status ORDER BY ip, key", 0},
    {"http_job", "SELECT * FROM mta.jobs WHERE job_id = $1", 1},
    {"http_pause_queue", "SELECT mta.pause_queue($1, $2)", 2},
    {"http_resume_queue", "SELECT mta.resume_queue($1, $2)", 2},
    {"http_pause_job", "SELECT mta.pause_job($1)", 1},
    {"http_resume_job", "SELECT mta.resume_job($1)", 1},
    {"http_metrics", http_metrics_sql, 0},
    {"http_stats", "SELECT * FROM mta.acct_minutes($1::int)", 1},
    {"http_dashboard", "SELECT mta.dashboard($1::int)", 1},
    {"http_inject", HTTP_INJECT_SQL, HTTP_INJECT_NPARAMS},
};

enum call_kind { CALL_ROWS, CALL_VALUE, CALL_STATUS, CALL_STEER, CALL_METRICS, CALL_INJECT };

struct call {
    uint64_t id;
    struct http_api *a;
    struct evhttp_request *req; /* NULL once answered */
    enum call_kind kind;
    bool pause;                 /* CALL_STEER */
    char *queue;                /* CALL_STEER: "DOMAIN[/VMTA]" or NULL */
    char *job;                  /* CALL_STEER: job id or NULL */
    struct inject_batch *batch; /* CALL_INJECT */
    struct event *timer;        /* NULL until db_exec took the call */
    struct call *prev, *next;
};

struct http_api {
    struct event_base *base;
    size_t max_body; /* POST /api/inject/v1, inflated too */
    char *node_name;
    char *default_pipe; /* of injected mail without "pipe" */
    char *db_url;
    struct db *db;
    struct call *calls;
    size_t ncalls;
    uint64_t next_id;
    http_reload_fn reload;
    void *reload_arg;
};

/* ---- calls: API requests waiting for the database ------------------------------ */

static void
call_free(void *arg)
{
    struct call *c = arg;
    if (c->timer)
        event_free(c->timer);
    free(c->queue);
    free(c->job);
    http_inject_free(c->batch);
    free(c);
}

/* Takes C off the list of waiting calls and frees it once the running
 * callback (C's own) has returned. */
static void
call_retire(struct call *c)
{
    struct http_api *a = c->a;
    if (c->prev)
        c->prev->next = c->next;
    else
        a->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    a->ncalls--;
    evtimer_del(c->timer);
    util_defer_free(a->base, call_free, c);
}

/* The database did not answer in time: the client gets 503 now, the call
 * waits for the database's (late) callback to be freed. */
static void
call_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct call *c = arg;
    if (!c->req)
        return;
    log_warn("http call=%llu event=database-timeout", (unsigned long long)c->id);
    if (c->kind == CALL_INJECT)
        /* the statement may still commit: say so instead of "not stored" */
        http_reply_error(c->req, 504,
                         "database did not answer in time: the request may or may not "
                         "have been stored");
    else
        http_reply_error(c->req, 503, "database did not answer in time");
    c->req = NULL;
}

static int
sql_error_code(const PGresult *res)
{
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    /* Data exceptions, integrity violations and RAISE EXCEPTION: bad input. */
    if (st && (!strncmp(st, "22", 2) || !strncmp(st, "23", 2) || !strncmp(st, "P0", 2)))
        return 400;
    return 500;
}

static void
render_steer(struct buf *b, const struct call *c, const PGresult *res)
{
    buf_printf(b, "{\"action\": \"%s\", ", c->pause ? "pause" : "resume");
    if (c->queue) {
        buf_puts(b, "\"queue\": ");
        json_append_string(b, c->queue);
        buf_printf(b, ", \"queues\": %s}\n",
                   PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) ? PQgetvalue(res, 0, 0) : "0");
    } else {
        buf_puts(b, "\"job\": ");
        json_append_string(b, c->job);
        buf_puts(b, "}\n");
    }
}

static void
call_done(const PGresult *res, void *arg)
{
    struct call *c = arg;
    struct evhttp_request *req = c->req;
    if (!req) {
        call_retire(c);
        return;
    }
    c->req = NULL;
    if (c->kind == CALL_INJECT) {
        struct buf b;
        buf_init(&b);
        int code = http_inject_reply(c->batch, res, &b);
        log_info("http call=%llu event=%s status=%d recipients=%zu messages=%zu",
                 (unsigned long long)c->id, code == 200 ? "injected" : "inject-refused", code,
                 http_inject_nrecipients(c->batch), http_inject_nmessages(c->batch));
        http_reply_json(req, code, &b);
        buf_free(&b);
    } else if (!res) {
        http_reply_error(req, 503, "database unavailable");
    } else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char msg[512];
        const char *e = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        snprintf(msg, sizeof msg, "%s", e ? e : "query failed");
        int code = sql_error_code(res);
        if (code == 500)
            log_warn("http call=%llu event=query-failed error=\"%s\"", (unsigned long long)c->id,
                     msg);
        http_reply_error(req, code, msg);
    } else {
        struct buf b;
        buf_init(&b);
        switch (c->kind) {
        case CALL_ROWS:
            json_append_rows(&b, res);
            http_reply_json(req, 200, &b);
            break;
        case CALL_VALUE: /* one row, one json column: the body as is */
            if (PQntuples(res) == 1 && PQnfields(res) == 1) {
                json_append_value(&b, res, 0, 0);
                buf_puts(&b, "\n");
                http_reply_json(req, 200, &b);
            } else {
                http_reply_error(req, 500, "query returned no row");
            }
            break;
        case CALL_STATUS:
            if (PQntuples(res) == 1) {
                json_append_row(&b, res, 0);
                b.len--; /* the closing brace: add the node's own facts */
                buf_puts(&b, ", \"version\": ");
                json_append_string(&b, PGMTA_VERSION);
                buf_puts(&b, ", \"node\": ");
                json_append_string(&b, c->a->node_name ? c->a->node_name : "");
                buf_puts(&b, "}\n");
                http_reply_json(req, 200, &b);
            } else {
                http_reply_error(req, 500, "status query returned no row");
            }
            break;
        case CALL_STEER:
            log_info("http call=%llu event=%s %s=\"%s\"", (unsigned long long)c->id,
                     c->pause ? "paused" : "resumed", c->queue ? "queue" : "job",
                     c->queue ? c->queue : c->job);
            render_steer(&b, c, res);
            http_reply_json(req, 200, &b);
            break;
        case CALL_METRICS:
            http_metrics_render(&b, res, c->a->node_name);
            http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
            break;
        case CALL_INJECT: /* answered above */
            break;
        }
        buf_free(&b);
    }
    call_retire(c);
}

/* Sends STMT for REQ; the reply follows from call_done. C is consumed.
 * lengths and formats as for db_exec (NULL: text). */

/* Sends STMT for REQ; the reply follows from call_done. C is consumed.
 * lengths and formats as for db_exec (NULL: text). */
static void
call_start_params(struct http_api *a, struct call *c, const char *stmt, int nparams,
                  const char *const *values, const int *lengths, const int *formats)
{
    if (!a->db || !db_ready(a->db) || a->ncalls >= HTTP_MAX_CALLS) {
        http_reply_error(c->req, 503,
                         a->ncalls >= HTTP_MAX_CALLS ? "too many requests in progress"
                                                     : "database unavailable: nothing was stored");
        call_free(c);
        return;
    }
    c->a = a;
    c->id = ++a->next_id;
    log_trace("http call=%llu event=query stmt=%s", (unsigned long long)c->id, stmt);
    if (db_exec(a->db, stmt, nparams, values, lengths, formats, 0, call_done, c) < 0) {
        /* not queued: call_done will not run */
        http_reply_error(c->req, 503, "database unavailable: nothing was stored");
        call_free(c);
        return;
    }
    /* call_done runs from a later loop turn, never inside db_exec: the
     * call joins the list and its timer starts now. */
    c->next = a->calls;
    if (a->calls)
        a->calls->prev = c;
    a->calls = c;
    a->ncalls++;
    c->timer = evtimer_new(a->base, call_timeout, c);
    PGMTA_ASSERT(c->timer != NULL);
    unsigned ms = c->kind == CALL_INJECT ? HTTP_INJECT_DB_TIMEOUT_MS : HTTP_DB_TIMEOUT_MS;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static void
call_start(struct http_api *a, struct call *c, const char *stmt, int nparams,
           const char *const *values)
{
    call_start_params(a, c, stmt, nparams, values, NULL, NULL);
}

static struct call *
call_new(struct evhttp_request *req, enum call_kind kind)
{
    struct call *c = xcalloc(1, sizeof *c);
    c->req = req;
    c->kind = kind;
    return c;
}

/* ---- request parameters --------------------------------------------------------- */

struct params {
    struct evkeyvalq query;
    struct evkeyvalq body;
};

static void
params_free(struct params *p)
{
    evhttp_clear_headers(&p->query);
    evhttp_clear_headers(&p->body);
}

/* Parses the query string and a form body (application/x-www-form-urlencoded
 * or no Content-Type). Returns -1 on a malformed query or body. */
static int
params_parse(struct evhttp_request *req, struct params *p)
{
    TAILQ_INIT(&p->query);
    TAILQ_INIT(&p->body);
    const char *q = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (q && evhttp_parse_query_str(q, &p->query) < 0)
        return -1;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    if (n == 0)
        return 0;
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    if (ct && strncasecmp(ct, "application/x-www-form-urlencoded", 33) != 0)
        return -1;
    char *body = xmalloc(n + 1);
    evbuffer_copyout(in, body, n);
    body[n] = '\0';
    if (strlen(body) != n) { /* NUL bytes */
        free(body);
        return -1;
    }
    int rc = evhttp_parse_query_str(body, &p->body);
    free(body);
    return rc < 0 ? -1 : 0;
}

/* The value of NAME from query or body; *dup is set when it is given more
 * than once. */
static const char *
params_get(struct params *p, const char *name, bool *dup)
{
    const char *found = NULL;
    struct evkeyvalq *lists[2] = {&p->query, &p->body};
    for (int i = 0; i < 2; i++) {
        for (struct evkeyval *kv = lists[i]->tqh_first; kv; kv = kv->next.tqe_next) {
            if (strcmp(kv->key, name) != 0)
                continue;
            if (found)
                *dup = true;
            found = kv->value;
        }
    }
    return found;
}

static bool
has_ctl(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return true;
    return false;
}

/* ---- endpoints ------------------------------------------------------------------ */

void
http_api_status(struct http_api *a, struct evhttp_request *req)
{
    call_start(a, call_new(req, CALL_STATUS), "http_status", 0, NULL);
}

void
http_api_queues(struct http_api *a, struct evhttp_request *req)
{
    call_start(a, call_new(req, CALL_ROWS), "http_queues", 0, NULL);
}

/* GET /api/warmup: the IP warm-up plans (mta.warmup_status). */
void
http_api_warmup(struct http_api *a, struct evhttp_request *req)
{
    call_start(a, call_new(req, CALL_ROWS), "http_warmup", 0, NULL);
}

void
http_api_nodes(struct http_api *a, struct evhttp_request *req)
{
    call_start(a, call_new(req, CALL_ROWS), "http_nodes", 0, NULL);
}

/* Parses the parameters of a GET into P and finds NAME in *value (NULL if
 * absent, *dup if given more than once). A malformed query string is
 * answered here (400, P freed): false. */
static bool
params_parse_get(struct evhttp_request *req, struct params *p, const char *name, const char **value,
                 bool *dup)
{
    if (params_parse(req, p) < 0) {
        params_free(p);
        http_reply_error(req, 400, "malformed query string");
        return false;
    }
    *value = params_get(p, name, dup);
    return true;
}

void
http_api_jobs(struct http_api *a, struct evhttp_request *req)
{
    struct params p;
    bool dup = false;
    const char *job;
    if (!params_parse_get(req, &p, "job", &job, &dup))
        return;
    if (dup || (job && (!*job || has_ctl(job)))) {
        params_free(&p);
        http_reply_error(req, 400, "job: one non-empty job id expected");
        return;
    }
    if (job) {
        const char *values[1] = {job};
        call_start(a, call_new(req, CALL_ROWS), "http_job", 1, values);
    } else {
        call_start(a, call_new(req, CALL_ROWS), "http_jobs", 0, NULL);
    }
    params_free(&p);
}

/* GET with one optional integer parameter NAME in [min, max] (default DEF)
 * passed to STMT: bad values are refused here, before any SQL. */
static void
api_window(struct http_api *a, struct evhttp_request *req, enum call_kind kind, const char *stmt,
           const char *name, long min, long max, long def)
{
    struct params p;
    bool dup = false;
    const char *v;
    if (!params_parse_get(req, &p, name, &v, &dup))
        return;
    long n = def;
    if (v) {
        char *end;
        n = strtol(v, &end, 10);
        if (!isdigit((unsigned char)v[0]) || *end)
            n = min - 1;
    }
    params_free(&p);
    if (dup || n < min || n > max) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: one whole number from %ld to %ld expected", name, min, max);
        http_reply_error(req, 400, msg);
        return;
    }
    char num[24];
    snprintf(num, sizeof num, "%ld", n);
    const char *values[1] = {num};
    call_start(a, call_new(req, kind), stmt, 1, values);
}

void
http_api_stats(struct http_api *a, struct evhttp_request *req)
{
    api_window(a, req, CALL_ROWS, "http_stats", "hours", 1, 48, 6);
}

void
http_api_dashboard(struct http_api *a, struct evhttp_request *req)
{
    api_window(a, req, CALL_VALUE, "http_dashboard", "minutes", 1, 1440, 60);
}

static void
api_steer(struct http_api *a, struct evhttp_request *req, bool pause)
{
    struct params p;
    bool dup = false;
    if (params_parse(req, &p) < 0) {
        params_free(&p);
        http_reply_error(req, 400, "malformed parameters (expected a form body or a query string)");
        return;
    }
    const char *queue = params_get(&p, "queue", &dup);
    const char *job = params_get(&p, "job", &dup);
    /* vmta= (possibly empty) names exactly one queue of the domain: "" is the
     * queue without a virtual MTA; queue=DOMAIN alone means all of them */
    const char *vmta_p = params_get(&p, "vmta", &dup);
    if (dup || !queue == !job || (vmta_p && !queue)) {
        params_free(&p);
        http_reply_error(
            req, 400,
            "give exactly one of queue=DOMAIN[/VMTA] (or queue=DOMAIN&vmta=VMTA) and job=ID");
        return;
    }
    struct call *c = call_new(req, CALL_STEER);
    c->pause = pause;
    if (job) {
        if (!*job || has_ctl(job)) {
            free(c);
            params_free(&p);
            http_reply_error(req, 400, "job: empty or with control characters");
            return;
        }
        c->job = xstrdup(job);
        const char *values[1] = {c->job};
        params_free(&p);
        call_start(a, c, pause ? "http_pause_job" : "http_resume_job", 1, values);
        return;
    }
    const char *slash = strchr(queue, '/');
    char *domain = slash ? xstrndup(queue, (size_t)(slash - queue)) : xstrdup(queue);
    char *vmta = slash ? xstrdup(slash + 1) : NULL;
    bool bad = !*domain || has_ctl(queue) || (vmta && (!*vmta || strchr(vmta, '/')));
    if (vmta_p) {
        bad = bad || slash || has_ctl(vmta_p) || strchr(vmta_p, '/');
        if (!bad)
            vmta = xstrdup(vmta_p);
    }
    if (bad) {
        free(domain);
        free(vmta);
        free(c);
        params_free(&p);
        http_reply_error(req, 400, "queue: expected DOMAIN or DOMAIN/VMTA");
        return;
    }
    if (vmta && *vmta && !slash) {
        size_t n = strlen(domain) + strlen(vmta) + 2;
        c->queue = xmalloc(n);
        snprintf(c->queue, n, "%s/%s", domain, vmta);
    } else {
        c->queue = xstrdup(queue);
    }
    params_free(&p);
    const char *values[2] = {domain, vmta};
    call_start(a, c, pause ? "http_pause_queue" : "http_resume_queue", 2, values);
    free(domain);
    free(vmta);
}

void
http_api_pause(struct http_api *a, struct evhttp_request *req)
{
    api_steer(a, req, true);
}

void
http_api_resume(struct http_api *a, struct evhttp_request *req)
{
    api_steer(a, req, false);
}

void
http_api_reload(struct http_api *a, struct evhttp_request *req)
{
    char err[1024] = "";
    log_info("http event=reload-requested");
    /* The reload may apply the new configuration to this module before it
     * returns (http_apply): the reply uses nothing of a. */
    int rc = a->reload ? a->reload(a->reload_arg, err, sizeof err) : -1;
    struct buf b;
    buf_init(&b);
    if (rc == 0) {
        buf_puts(&b, "{\"reloaded\": true}\n");
        http_reply_json(req, 200, &b);
    } else {
        buf_puts(&b, "{\"reloaded\": false, \"error\": ");
        json_append_string(&b, err[0] ? err : "configuration could not be loaded");
        buf_puts(&b, "}\n");
        http_reply_json(req, 422, &b);
    }
    buf_free(&b);
}

void
http_api_metrics(struct http_api *a, struct evhttp_request *req)
{
    call_start(a, call_new(req, CALL_METRICS), "http_metrics", 0, NULL);
}

/* POST /api/inject/v1: the body (gzip inflated) -> one mta.inject_request. */
void
http_api_inject(struct http_api *a, struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    const unsigned char *raw = evbuffer_pullup(in, -1);
    const char *enc = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Encoding");
    struct buf inflated;
    buf_init(&inflated);
    const char *body = (const char *)raw;
    if (enc && strcasecmp(enc, "identity") != 0) {
        if (strcasecmp(enc, "gzip") != 0) {
            http_reply_error(req, 415, "Content-Encoding: only gzip is accepted");
            return;
        }
        int rc = http_inject_gunzip(body, n, a->max_body, &inflated);
        if (rc < 0) {
            buf_free(&inflated);
            if (rc == -2)
                http_reply_error(req, 413,
                                 "request body: larger than http.max-body-size once "
                                 "inflated");
            else
                http_reply_error(req, 400, "request body: not valid gzip");
            return;
        }
        body = inflated.data;
        n = inflated.len;
    }
    struct buf err;
    buf_init(&err);
    int status = 400;
    struct inject_batch *batch =
        http_inject_parse(body ? body : "", n, a->node_name, (long long)time(NULL), &err, &status);
    buf_free(&inflated);
    if (!batch) {
        log_info("http event=inject-refused status=%d", status);
        http_reply_json(req, status, &err);
        buf_free(&err);
        return;
    }
    buf_free(&err);
    struct call *c = call_new(req, CALL_INJECT);
    c->batch = batch;
    const char *values[HTTP_INJECT_NPARAMS];
    int lengths[HTTP_INJECT_NPARAMS], formats[HTTP_INJECT_NPARAMS];
    http_inject_params(batch, values, lengths, formats);
    if (!values[6]) /* "pipe" absent: the node's default-pipe, as for SMTP */
        values[6] = a->default_pipe;
    call_start_params(a, c, "http_inject", HTTP_INJECT_NPARAMS, values, lengths, formats);
}

/* ---- life cycle ----------------------------------------------------------------- */

struct http_api *
http_api_new(struct event_base *base, http_reload_fn reload, void *reload_arg)
{
    struct http_api *a = xcalloc(1, sizeof *a);
    a->base = base;
    a->reload = reload;
    a->reload_arg = reload_arg;
    a->max_body = 32 * 1024 * 1024;
    return a;
}

void
http_api_apply(struct http_api *a, const struct conf *conf)
{
    a->max_body = conf->http_max_body_size;
    free(a->node_name);
    a->node_name = conf->node_name ? xstrdup(conf->node_name) : NULL;
    free(a->default_pipe);
    a->default_pipe = conf->default_pipe ? xstrdup(conf->default_pipe) : NULL;
}

void
http_api_set_db(struct http_api *a, const char *url)
{
    if (url && a->db && a->db_url && !strcmp(a->db_url, url))
        return;
    /* Fails the calls still queued: call_done answers and retires them. */
    db_free(a->db);
    a->db = NULL;
    free(a->db_url);
    a->db_url = NULL;
    if (!url)
        return;
    a->db_url = xstrdup(url);
    a->db = db_new(a->base, url, "pgmtad-http");
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        db_prepare(a->db, stmts[i].name, stmts[i].sql, stmts[i].nparams);
    db_connect(a->db);
}

void
http_api_free(struct http_api *a)
{
    if (!a)
        return;
    for (struct call *c = a->calls; c; c = c->next) {
        if (c->req) {
            http_reply_error(c->req, 503, "shutting down");
            c->req = NULL;
        }
    }
    http_api_set_db(a, NULL);
    PGMTA_ASSERT(a->calls == NULL);
    /* The loop has stopped: release the retired calls now. */
    util_defer_run(a->base);
    free(a->node_name);
    free(a->default_pipe);
    free(a);
}
