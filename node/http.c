/* http: the HTTP API, the Prometheus metrics and the dashboard's static files,
 * served by evhttp in the root process's event loop (see http.h).
 *
 * Ownership: struct http owns the evhttp server, its bound socket, the
 * http_conn that binds it and limits its connections (http_conn.h), its own
 * database connection and the list of calls waiting for the database. An
 * injection call owns its inject_batch (http_inject.h): the SQL parameters
 * point into it until the call is freed. A call
 * (one API request waiting for SQL) belongs to the database request it was
 * handed to: db.c calls back exactly once, and that callback frees it. The
 * evhttp request belongs to libevent; a call keeps it until it replies
 * (libevent keeps a request whose client went away alive until the reply,
 * and the reply then frees it) and forgets it once answered early (database
 * timeout, shutdown), so nothing touches a request after its reply. */
#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "db.h"
#include "http_conn.h"
#include "http_inject.h"
#include "json.h"
#include "log.h"
#include "util.h"

#ifndef PGMTA_DASHBOARD_SOURCE_DIR
#define PGMTA_DASHBOARD_SOURCE_DIR ""
#endif
#ifndef PGMTA_DASHBOARD_DIR
#define PGMTA_DASHBOARD_DIR "/usr/local/share/pgmta/dashboard"
#endif

#define HTTP_MAX_FILE (4 * 1024 * 1024)
#define HTTP_MAX_NAME 128
#define TOKEN_HASH_LEN 32

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
    {"http_job", "SELECT * FROM mta.jobs WHERE job_id = $1", 1},
    {"http_pause_queue", "SELECT mta.pause_queue($1, $2)", 2},
    {"http_resume_queue", "SELECT mta.resume_queue($1, $2)", 2},
    {"http_pause_job", "SELECT mta.pause_job($1)", 1},
    {"http_resume_job", "SELECT mta.resume_job($1)", 1},
    {"http_metrics", METRICS_SQL, 0},
    {"http_inject", HTTP_INJECT_SQL, HTTP_INJECT_NPARAMS},
};

enum call_kind { CALL_ROWS, CALL_STATUS, CALL_STEER, CALL_METRICS, CALL_INJECT };

struct call {
    uint64_t id;
    struct http *h;
    struct evhttp_request *req; /* NULL once answered */
    enum call_kind kind;
    bool pause;                 /* CALL_STEER */
    char *queue;                /* CALL_STEER: "DOMAIN[/VMTA]" or NULL */
    char *job;                  /* CALL_STEER: job id or NULL */
    struct inject_batch *batch; /* CALL_INJECT */
    struct event *timer;
    struct call *prev, *next;
};

struct http {
    struct event_base *base;
    struct evhttp *evh;
    struct evhttp_bound_socket *bound;
    struct http_conn *hc;
    char *listen;      /* "ip:port" we listen on, or NULL */
    char *listen_host; /* its ip, without brackets */
    bool stopped;
    bool has_token;
    unsigned char token_hash[TOKEN_HASH_LEN];
    unsigned char (*inject_hashes)[TOKEN_HASH_LEN];
    size_t ninject_hashes;
    size_t max_body; /* POST /api/inject/v1, inflated too */
    char **allowed_hosts;
    size_t nallowed_hosts;
    char *dashboard_dir;
    char *node_name;
    char *default_pipe; /* of injected mail without "pipe" */
    char *db_url;
    struct db *db; /* only while listening */
    struct call *calls;
    size_t ncalls;
    uint64_t next_id;
    http_reload_fn reload;
    void *reload_arg;
};

/* ---- replies ------------------------------------------------------------------ */

static const char *
reason(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Error";
    }
}

static const char *
method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "?";
}

static void
reply(struct evhttp_request *req, int code, const char *ctype, const char *body, size_t len)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", ctype);
    evhttp_add_header(out, "Cache-Control", "no-store");
    evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    struct evbuffer *b = evbuffer_new();
    PGMTA_ASSERT(b != NULL);
    evbuffer_add(b, body, len);
    log_debug("http event=reply method=%s uri=\"%s\" status=%d bytes=%zu",
              method_name(evhttp_request_get_command(req)), evhttp_request_get_uri(req), code, len);
    evhttp_send_reply(req, code, reason(code), b);
    evbuffer_free(b);
}

static void
reply_json(struct evhttp_request *req, int code, const struct buf *body)
{
    reply(req, code, "application/json", body->data, body->len);
}

static void
reply_error(struct evhttp_request *req, int code, const char *msg)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "{\"error\": ");
    json_append_string(&b, msg);
    buf_puts(&b, "}\n");
    reply_json(req, code, &b);
    buf_free(&b);
}

static void
reply_405(struct evhttp_request *req, const char *allow)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
    reply_error(req, 405, "method not allowed");
}

/* ---- JSON from query results ---------------------------------------------------- */

/* ---- Prometheus text format ----------------------------------------------------- */

static void
prom_label(struct buf *b, const char *name, const char *value, bool first)
{
    buf_printf(b, "%s%s=\"", first ? "" : ",", name);
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            buf_puts(b, "\\\\");
        else if (*p == '"')
            buf_puts(b, "\\\"");
        else if (*p == '\n')
            buf_puts(b, "\\n");
        else
            buf_append(b, p, 1);
    }
    buf_puts(b, "\"");
}

static void
prom_family(struct buf *b, const char *name, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
}

static const char *
cell(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? "" : PQgetvalue(res, row, col);
}

static void
render_metrics(struct http *h, struct buf *b, const PGresult *res)
{
    int n = PQntuples(res);
    prom_family(b, "pgmta_build_info", "Version of the pgmtad answering, always 1.");
    buf_puts(b, "pgmta_build_info{");
    prom_label(b, "version", PGMTA_VERSION, true);
    prom_label(b, "node", h->node_name ? h->node_name : "", false);
    buf_puts(b, "} 1\n");
    prom_family(b, "pgmta_queue_recipients",
                "Queued recipients per queue (mta.queues) and state: ready, deferred, in_flight.");
    static const char *const states[] = {"ready", "deferred", "in_flight"};
    for (int s = 0; s < 3; s++) {
        for (int r = 0; r < n; r++) {
            if (strcmp(cell(res, r, 0), "q") != 0)
                continue;
            buf_puts(b, "pgmta_queue_recipients{");
            prom_label(b, "domain", cell(res, r, 1), true);
            prom_label(b, "vmta", cell(res, r, 2), false);
            prom_label(b, "pipe", cell(res, r, 3), false);
            prom_label(b, "state", states[s], false);
            buf_printf(b, "} %s\n", cell(res, r, 4 + s));
        }
    }
    prom_family(b, "pgmta_queue_paused", "1 when the queue is paused.");
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "q") != 0)
            continue;
        buf_puts(b, "pgmta_queue_paused{");
        prom_label(b, "domain", cell(res, r, 1), true);
        prom_label(b, "vmta", cell(res, r, 2), false);
        prom_label(b, "pipe", cell(res, r, 3), false);
        buf_printf(b, "} %s\n", cell(res, r, 7));
    }
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "n") != 0)
            continue;
        prom_family(b, "pgmta_nodes_alive",
                    "Node processes running with a heartbeat in the last 30 s (mta.nodes).");
        buf_printf(b, "pgmta_nodes_alive %s\n", cell(res, r, 4));
        prom_family(b, "pgmta_nodes_registered", "Node processes known to mta.nodes.");
        buf_printf(b, "pgmta_nodes_registered %s\n", cell(res, r, 5));
    }
    prom_family(b, "pgmta_acct_events_last_hour",
                "Accounting rows (mta.acct) logged in the last hour by type: r received, "
                "d delivered, b bounced, t transient failure.");
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "a") != 0)
            continue;
        buf_puts(b, "pgmta_acct_events_last_hour{");
        prom_label(b, "type", cell(res, r, 1), true);
        buf_printf(b, "} %s\n", cell(res, r, 4));
    }
}

/* ---- calls: API requests waiting for the database ------------------------------ */

static void
call_unlink_free(struct call *c)
{
    struct http *h = c->h;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->ncalls--;
    event_free(c->timer);
    free(c->queue);
    free(c->job);
    http_inject_free(c->batch);
    free(c);
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
        reply_error(c->req, 504,
                    "database did not answer in time: the request may or may not "
                    "have been stored");
    else
        reply_error(c->req, 503, "database did not answer in time");
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
        call_unlink_free(c);
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
        reply_json(req, code, &b);
        buf_free(&b);
    } else if (!res) {
        reply_error(req, 503, "database unavailable");
    } else if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char msg[512];
        const char *e = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        snprintf(msg, sizeof msg, "%s", e ? e : "query failed");
        int code = sql_error_code(res);
        if (code == 500)
            log_warn("http call=%llu event=query-failed error=\"%s\"", (unsigned long long)c->id,
                     msg);
        reply_error(req, code, msg);
    } else {
        struct buf b;
        buf_init(&b);
        switch (c->kind) {
        case CALL_ROWS:
            json_append_rows(&b, res);
            reply_json(req, 200, &b);
            break;
        case CALL_STATUS:
            if (PQntuples(res) == 1) {
                json_append_row(&b, res, 0);
                b.len--; /* the closing brace: add the node's own facts */
                buf_puts(&b, ", \"version\": ");
                json_append_string(&b, PGMTA_VERSION);
                buf_puts(&b, ", \"node\": ");
                json_append_string(&b, c->h->node_name ? c->h->node_name : "");
                buf_puts(&b, "}\n");
                reply_json(req, 200, &b);
            } else {
                reply_error(req, 500, "status query returned no row");
            }
            break;
        case CALL_STEER:
            log_info("http call=%llu event=%s %s=\"%s\"", (unsigned long long)c->id,
                     c->pause ? "paused" : "resumed", c->queue ? "queue" : "job",
                     c->queue ? c->queue : c->job);
            render_steer(&b, c, res);
            reply_json(req, 200, &b);
            break;
        case CALL_METRICS:
            render_metrics(c->h, &b, res);
            reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
            break;
        case CALL_INJECT: /* answered above */
            break;
        }
        buf_free(&b);
    }
    call_unlink_free(c);
}

/* Sends STMT for REQ; the reply follows from call_done. C is consumed.
 * lengths and formats as for db_exec (NULL: text). */
static void
call_start_params(struct http *h, struct call *c, const char *stmt, int nparams,
                  const char *const *values, const int *lengths, const int *formats)
{
    if (!h->db || !db_ready(h->db) || h->ncalls >= HTTP_MAX_CALLS) {
        reply_error(c->req, 503,
                    h->ncalls >= HTTP_MAX_CALLS ? "too many requests in progress"
                                                : "database unavailable: nothing was stored");
        free(c->queue);
        free(c->job);
        http_inject_free(c->batch);
        free(c);
        return;
    }
    c->h = h;
    c->id = ++h->next_id;
    c->timer = evtimer_new(h->base, call_timeout, c);
    PGMTA_ASSERT(c->timer != NULL);
    c->next = h->calls;
    if (h->calls)
        h->calls->prev = c;
    h->calls = c;
    h->ncalls++;
    unsigned ms = c->kind == CALL_INJECT ? HTTP_INJECT_DB_TIMEOUT_MS : HTTP_DB_TIMEOUT_MS;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
    log_trace("http call=%llu event=query stmt=%s", (unsigned long long)c->id, stmt);
    /* db_exec may call call_done before it returns (connection lost while
     * sending): c must not be touched after a successful db_exec. */
    if (db_exec(h->db, stmt, nparams, values, lengths, formats, 0, call_done, c) < 0) {
        reply_error(c->req, 503, "database unavailable: nothing was stored");
        call_unlink_free(c);
    }
}

static void
call_start(struct http *h, struct call *c, const char *stmt, int nparams, const char *const *values)
{
    call_start_params(h, c, stmt, nparams, values, NULL, NULL);
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

static void
api_status(struct http *h, struct evhttp_request *req)
{
    call_start(h, call_new(req, CALL_STATUS), "http_status", 0, NULL);
}

static void
api_queues(struct http *h, struct evhttp_request *req)
{
    call_start(h, call_new(req, CALL_ROWS), "http_queues", 0, NULL);
}

static void
api_nodes(struct http *h, struct evhttp_request *req)
{
    call_start(h, call_new(req, CALL_ROWS), "http_nodes", 0, NULL);
}

static void
api_jobs(struct http *h, struct evhttp_request *req)
{
    struct params p;
    bool dup = false;
    if (params_parse(req, &p) < 0) {
        params_free(&p);
        reply_error(req, 400, "malformed query string");
        return;
    }
    const char *job = params_get(&p, "job", &dup);
    if (dup || (job && (!*job || has_ctl(job)))) {
        params_free(&p);
        reply_error(req, 400, "job: one non-empty job id expected");
        return;
    }
    if (job) {
        const char *values[1] = {job};
        call_start(h, call_new(req, CALL_ROWS), "http_job", 1, values);
    } else {
        call_start(h, call_new(req, CALL_ROWS), "http_jobs", 0, NULL);
    }
    params_free(&p);
}

static void
api_steer(struct http *h, struct evhttp_request *req, bool pause)
{
    struct params p;
    bool dup = false;
    if (params_parse(req, &p) < 0) {
        params_free(&p);
        reply_error(req, 400, "malformed parameters (expected a form body or a query string)");
        return;
    }
    const char *queue = params_get(&p, "queue", &dup);
    const char *job = params_get(&p, "job", &dup);
    if (dup || !queue == !job) {
        params_free(&p);
        reply_error(req, 400, "give exactly one of queue=DOMAIN[/VMTA] and job=ID");
        return;
    }
    struct call *c = call_new(req, CALL_STEER);
    c->pause = pause;
    if (job) {
        if (!*job || has_ctl(job)) {
            free(c);
            params_free(&p);
            reply_error(req, 400, "job: empty or with control characters");
            return;
        }
        c->job = xstrdup(job);
        const char *values[1] = {c->job};
        params_free(&p);
        call_start(h, c, pause ? "http_pause_job" : "http_resume_job", 1, values);
        return;
    }
    const char *slash = strchr(queue, '/');
    char *domain = slash ? xstrndup(queue, (size_t)(slash - queue)) : xstrdup(queue);
    char *vmta = slash ? xstrdup(slash + 1) : NULL;
    if (!*domain || has_ctl(queue) || (vmta && (!*vmta || strchr(vmta, '/')))) {
        free(domain);
        free(vmta);
        free(c);
        params_free(&p);
        reply_error(req, 400, "queue: expected DOMAIN or DOMAIN/VMTA");
        return;
    }
    c->queue = xstrdup(queue);
    params_free(&p);
    const char *values[2] = {domain, vmta};
    call_start(h, c, pause ? "http_pause_queue" : "http_resume_queue", 2, values);
    free(domain);
    free(vmta);
}

static void
api_pause(struct http *h, struct evhttp_request *req)
{
    api_steer(h, req, true);
}

static void
api_resume(struct http *h, struct evhttp_request *req)
{
    api_steer(h, req, false);
}

static void
api_reload(struct http *h, struct evhttp_request *req)
{
    char err[1024] = "";
    log_info("http event=reload-requested");
    /* The reload applies the new configuration to this module too
     * (http_apply): nothing of h that the reply needs may change. */
    int rc = h->reload ? h->reload(h->reload_arg, err, sizeof err) : -1;
    struct buf b;
    buf_init(&b);
    if (rc == 0) {
        buf_puts(&b, "{\"reloaded\": true}\n");
        reply_json(req, 200, &b);
    } else {
        buf_puts(&b, "{\"reloaded\": false, \"error\": ");
        json_append_string(&b, err[0] ? err : "configuration could not be loaded");
        buf_puts(&b, "}\n");
        reply_json(req, 422, &b);
    }
    buf_free(&b);
}

static void
api_metrics(struct http *h, struct evhttp_request *req)
{
    call_start(h, call_new(req, CALL_METRICS), "http_metrics", 0, NULL);
}

/* POST /api/inject/v1: the body (gzip inflated) -> one mta.inject_batch. */
static void
api_inject(struct http *h, struct evhttp_request *req)
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
            reply_error(req, 415, "Content-Encoding: only gzip is accepted");
            return;
        }
        int rc = http_inject_gunzip(body, n, h->max_body, &inflated);
        if (rc < 0) {
            buf_free(&inflated);
            if (rc == -2)
                reply_error(req, 413,
                            "request body: larger than http.max-body-size once "
                            "inflated");
            else
                reply_error(req, 400, "request body: not valid gzip");
            return;
        }
        body = inflated.data;
        n = inflated.len;
    }
    struct buf err;
    buf_init(&err);
    int status = 400;
    struct inject_batch *batch =
        http_inject_parse(body ? body : "", n, h->node_name, (long long)time(NULL), &err, &status);
    buf_free(&inflated);
    if (!batch) {
        log_info("http event=inject-refused status=%d", status);
        reply_json(req, status, &err);
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
        values[6] = h->default_pipe;
    call_start_params(h, c, "http_inject", HTTP_INJECT_NPARAMS, values, lengths, formats);
}

#define M_GET (EVHTTP_REQ_GET | EVHTTP_REQ_HEAD)
#define M_POST EVHTTP_REQ_POST

static const struct route {
    const char *path;
    int methods;
    const char *allow;
    void (*fn)(struct http *h, struct evhttp_request *req);
} routes[] = {
    {"/api/status", M_GET, "GET, HEAD", api_status},
    {"/api/queues", M_GET, "GET, HEAD", api_queues},
    {"/api/nodes", M_GET, "GET, HEAD", api_nodes},
    {"/api/jobs", M_GET, "GET, HEAD", api_jobs},
    {"/api/pause", M_POST, "POST", api_pause},
    {"/api/resume", M_POST, "POST", api_resume},
    {"/api/reload", M_POST, "POST", api_reload},
    {"/metrics", M_GET, "GET, HEAD", api_metrics},
};

/* ---- access checks -------------------------------------------------------------- */

static void
token_hash(const char *token, unsigned char out[TOKEN_HASH_LEN])
{
    unsigned int len = 0;
    PGMTA_ASSERT(EVP_Digest(token, strlen(token), out, &len, EVP_sha256(), NULL) == 1 &&
                 len == TOKEN_HASH_LEN);
}

/* "Authorization: Bearer TOKEN", compared in constant time (hashes of equal
 * length, so the token's length does not leak either). */
static bool
authorized(const struct http *h, struct evhttp_request *req)
{
    if (!h->has_token)
        return false;
    const char *a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!a || strncasecmp(a, "Bearer ", 7) != 0)
        return false;
    a += 7;
    while (*a == ' ')
        a++;
    unsigned char got[TOKEN_HASH_LEN];
    token_hash(a, got);
    return CRYPTO_memcmp(got, h->token_hash, TOKEN_HASH_LEN) == 0;
}

/* An inject token (http.inject-tokens); never the admin token. */
static bool
inject_authorized(const struct http *h, struct evhttp_request *req)
{
    const char *a = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    if (!h->ninject_hashes || !a || strncasecmp(a, "Bearer ", 7) != 0)
        return false;
    a += 7;
    while (*a == ' ')
        a++;
    unsigned char got[TOKEN_HASH_LEN];
    token_hash(a, got);
    bool ok = false;
    for (size_t i = 0; i < h->ninject_hashes; i++)
        ok |= CRYPTO_memcmp(got, h->inject_hashes[i], TOKEN_HASH_LEN) == 0;
    return ok;
}

/* Splits a Host header value into the host name (brackets of an IPv6
 * literal removed) and checks the optional port. */
static bool
split_host(const char *v, char *name, size_t namelen)
{
    const char *end, *port;
    if (v[0] == '[') {
        end = strchr(v, ']');
        if (!end)
            return false;
        v++;
        port = end + 1;
    } else {
        end = strchr(v, ':');
        if (!end)
            end = v + strlen(v);
        port = end;
    }
    size_t n = (size_t)(end - v);
    if (n == 0 || n >= namelen)
        return false;
    memcpy(name, v, n);
    name[n] = '\0';
    if (*port == ':') {
        port++;
        size_t d = strspn(port, "0123456789");
        if (d == 0 || d > 5 || port[d])
            return false;
    } else if (*port) {
        return false;
    }
    return true;
}

/* DNS rebinding protection: a browser led to us through a foreign name
 * sends that name in Host. Accepted: loopback names, the listen address
 * and http.allowed-hosts. */
static bool
host_allowed(const struct http *h, struct evhttp_request *req)
{
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), "Host");
    char name[256];
    if (!v || !split_host(v, name, sizeof name))
        return false;
    if (!strcasecmp(name, "localhost") || !strcmp(name, "127.0.0.1") || !strcmp(name, "::1"))
        return true;
    if (h->listen_host && !strcasecmp(name, h->listen_host))
        return true;
    for (size_t i = 0; i < h->nallowed_hosts; i++)
        if (!strcasecmp(name, h->allowed_hosts[i]) || !strcasecmp(v, h->allowed_hosts[i]))
            return true;
    return false;
}

/* ---- static files --------------------------------------------------------------- */

static const char *
content_type(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
    };
    const char *dot = strrchr(name, '.');
    if (!dot)
        return NULL;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(dot, types[i].ext))
            return types[i].type;
    return NULL;
}

/* Only plain names directly in the dashboard directory: letters, digits,
 * '.', '_', '-', not starting with '.'; percent-encoded paths are never
 * decoded, so "%2e%2e" stays a name that does not exist. */
static bool
valid_file_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > HTTP_MAX_NAME || name[0] == '.' || strstr(name, ".."))
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static void
serve_file(struct http *h, struct evhttp_request *req, const char *path)
{
    if (!(evhttp_request_get_command(req) & M_GET)) {
        reply_405(req, "GET, HEAD");
        return;
    }
    const char *name = strcmp(path, "/") == 0 ? "index.html" : path + 1;
    const char *ctype = path[0] == '/' && valid_file_name(name) ? content_type(name) : NULL;
    if (!ctype || !h->dashboard_dir) {
        reply_error(req, 404, "not found");
        return;
    }
    char *file = xasprintf("%s/%s", h->dashboard_dir, name);
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    free(file);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > HTTP_MAX_FILE) {
        if (fd >= 0)
            close(fd);
        reply_error(req, 404, "not found");
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", ctype);
    evhttp_add_header(out, "Cache-Control", "no-cache");
    evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(out, "X-Frame-Options", "DENY");
    evhttp_add_header(out, "Referrer-Policy", "no-referrer");
    evhttp_add_header(out, "Content-Security-Policy",
                      "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                      "form-action 'self'");
    struct evbuffer *b = evbuffer_new();
    PGMTA_ASSERT(b != NULL);
    if (st.st_size > 0 && evbuffer_add_file(b, fd, 0, st.st_size) != 0) {
        evbuffer_free(b);
        reply_error(req, 500, "cannot read file");
        return;
    }
    if (st.st_size == 0)
        close(fd);
    log_debug("http event=reply method=%s uri=\"%s\" status=200 bytes=%lld",
              method_name(evhttp_request_get_command(req)), evhttp_request_get_uri(req),
              (long long)st.st_size);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

/* ---- dispatch ------------------------------------------------------------------- */

static void
on_request(struct evhttp_request *req, void *arg)
{
    struct http *h = arg;
    http_conn_request_read(h->hc, req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    /* The Host check keeps browsers led here by DNS rebinding away from
     * the dashboard and the admin API; injection is for programs, which
     * send a Bearer token a rebinding page cannot know, under whatever
     * name they reach us by. */
    if (!(path && !strcmp(path, HTTP_INJECT_PATH)) && !host_allowed(h, req)) {
        reply_error(req, 400, "Host not allowed");
        return;
    }
    if (!path || !*path) {
        reply_error(req, 404, "not found");
        return;
    }
    if (strncmp(path, "/api/", 5) != 0 && strcmp(path, "/metrics") != 0) {
        serve_file(h, req, path);
        return;
    }
    if (!strcmp(path, HTTP_INJECT_PATH)) {
        if (!inject_authorized(h, req)) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                              "Bearer realm=\"pgmta-inject\"");
            reply_error(req, 401,
                        "missing or wrong Bearer token (an http.inject-tokens entry "
                        "is required)");
        } else if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
            reply_405(req, "POST");
        } else {
            api_inject(h, req);
        }
        return;
    }
    /* Only the injection API takes large bodies. */
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > HTTP_MAX_BODY) {
        reply_error(req, 413, "request body too large");
        return;
    }
    if (!authorized(h, req)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Bearer realm=\"pgmta\"");
        reply_error(req, 401, "missing or wrong Bearer token");
        return;
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(path, routes[i].path) != 0)
            continue;
        if (!(evhttp_request_get_command(req) & routes[i].methods)) {
            reply_405(req, routes[i].allow);
            return;
        }
        routes[i].fn(h, req);
        return;
    }
    reply_error(req, 404, "not found");
}

/* ---- life cycle ----------------------------------------------------------------- */

struct http *
http_new(struct event_base *base, http_reload_fn reload, void *reload_arg)
{
    struct http *h = xcalloc(1, sizeof *h);
    h->base = base;
    h->reload = reload;
    h->reload_arg = reload_arg;
    h->evh = evhttp_new(base);
    PGMTA_ASSERT(h->evh != NULL);
    evhttp_set_timeout(h->evh, HTTP_TIMEOUT_S);
    h->max_body = 32 * 1024 * 1024;
    evhttp_set_max_body_size(h->evh, h->max_body);
    h->hc = http_conn_new(base, h->evh);
    evhttp_set_max_headers_size(h->evh, HTTP_MAX_HEADERS);
    /* Every method reaches on_request, which answers 405 with Allow. */
    evhttp_set_allowed_methods(h->evh, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                           EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                           EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
                                           EVHTTP_REQ_PATCH);
    evhttp_set_gencb(h->evh, on_request, h);
    return h;
}

static void
unbind(struct http *h)
{
    if (h->bound) {
        http_conn_unbind(h->hc, h->bound);
        h->bound = NULL;
        log_info("http event=closed listen=%s", h->listen);
    }
    free(h->listen);
    free(h->listen_host);
    h->listen = h->listen_host = NULL;
}

/* "ip:port" or "[ip6]:port" (validated by conf) -> ip and port. */
static bool
split_listen(const char *s, char *ip, size_t iplen, unsigned *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon)
        return false;
    const char *a = s, *e = colon;
    if (*a == '[' && e > a && e[-1] == ']') {
        a++;
        e--;
    }
    size_t n = (size_t)(e - a);
    if (n == 0 || n >= iplen)
        return false;
    memcpy(ip, a, n);
    ip[n] = '\0';
    char *end;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (*end || p == 0 || p > 65535)
        return false;
    *port = (unsigned)p;
    return true;
}

static struct evhttp_bound_socket *
bind_listen(struct http *h, const char *listen, const char *ip, unsigned port)
{
    char err[256];
    struct evhttp_bound_socket *s = http_conn_bind(h->hc, ip, port, err, sizeof err);
    if (!s)
        log_error("http event=listen-failed listen=%s error=\"%s\"", listen, err);
    return s;
}

static void
listen_on(struct http *h, const char *listen)
{
    char ip[64];
    unsigned port;
    if (!split_listen(listen, ip, sizeof ip, &port)) {
        log_error("http event=listen-failed listen=%s error=\"bad address\"", listen);
        unbind(h);
        return;
    }
    struct evhttp_bound_socket *s = bind_listen(h, listen, ip, port);
    if (!s && h->bound) {
        /* The new address may overlap the old one: release it and retry. */
        unbind(h);
        s = bind_listen(h, listen, ip, port);
    }
    if (!s) {
        if (h->bound)
            log_warn("http event=listen-kept listen=%s", h->listen);
        return;
    }
    unbind(h);
    h->bound = s;
    h->listen = xstrdup(listen);
    h->listen_host = xstrdup(ip);
    log_info("http event=listening listen=%s dashboard=%s", listen,
             h->dashboard_dir ? h->dashboard_dir : "-");
}

static void
db_start(struct http *h, const char *url)
{
    if (h->db && h->db_url && !strcmp(h->db_url, url))
        return;
    db_free(h->db);
    free(h->db_url);
    h->db_url = xstrdup(url);
    h->db = db_new(h->base, url, "pgmtad-http");
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        db_prepare(h->db, stmts[i].name, stmts[i].sql, stmts[i].nparams);
    db_connect(h->db);
}

static void
db_stop(struct http *h)
{
    db_free(h->db);
    h->db = NULL;
    free(h->db_url);
    h->db_url = NULL;
}

static char *
default_dashboard_dir(void)
{
    struct stat st;
    char *index = xasprintf("%s/index.html", PGMTA_DASHBOARD_SOURCE_DIR);
    bool in_source = PGMTA_DASHBOARD_SOURCE_DIR[0] && stat(index, &st) == 0;
    free(index);
    return xstrdup(in_source ? PGMTA_DASHBOARD_SOURCE_DIR : PGMTA_DASHBOARD_DIR);
}

void
http_apply(struct http *h, const struct conf *conf)
{
    free(h->inject_hashes);
    h->ninject_hashes = conf->nhttp_inject_tokens;
    h->inject_hashes = xcalloc(h->ninject_hashes + 1, sizeof *h->inject_hashes);
    for (size_t i = 0; i < h->ninject_hashes; i++)
        token_hash(conf->http_inject_tokens[i], h->inject_hashes[i]);
    h->max_body = conf->http_max_body_size;
    /* evhttp refuses larger bodies itself (413); the other routes check
     * HTTP_MAX_BODY once the body is in. */
    evhttp_set_max_body_size(h->evh, h->max_body > HTTP_MAX_BODY ? h->max_body : HTTP_MAX_BODY);
    http_conn_set_limits(h->hc, conf->http_max_connections, conf->http_header_timeout_ms,
                         conf->http_request_timeout_ms);
    h->has_token = conf->http_token != NULL;
    if (h->has_token)
        token_hash(conf->http_token, h->token_hash);
    else
        memset(h->token_hash, 0, sizeof h->token_hash);
    for (size_t i = 0; i < h->nallowed_hosts; i++)
        free(h->allowed_hosts[i]);
    free(h->allowed_hosts);
    h->nallowed_hosts = conf->nhttp_allowed_hosts;
    h->allowed_hosts = xcalloc(h->nallowed_hosts + 1, sizeof *h->allowed_hosts);
    for (size_t i = 0; i < h->nallowed_hosts; i++)
        h->allowed_hosts[i] = xstrdup(conf->http_allowed_hosts[i]);
    free(h->dashboard_dir);
    h->dashboard_dir =
        conf->http_dashboard_dir ? xstrdup(conf->http_dashboard_dir) : default_dashboard_dir();
    free(h->node_name);
    h->node_name = conf->node_name ? xstrdup(conf->node_name) : NULL;
    free(h->default_pipe);
    h->default_pipe = conf->default_pipe ? xstrdup(conf->default_pipe) : NULL;

    const char *want = conf->listen_http;
    if (want && !conf->http_token) {
        log_error("http event=not-started listen=%s error=\"http.token is not set: the HTTP "
                  "API always wants a token\"",
                  want);
        want = NULL;
    }
    if (h->stopped || !conf->database_url)
        want = NULL;
    if (!want) {
        unbind(h);
        db_stop(h);
        return;
    }
    db_start(h, conf->database_url);
    if (!h->listen || strcmp(h->listen, want) != 0)
        listen_on(h, want);
}

void
http_stop(struct http *h)
{
    if (!h)
        return;
    h->stopped = true;
    unbind(h);
}

void
http_free(struct http *h)
{
    if (!h)
        return;
    for (struct call *c = h->calls; c; c = c->next) {
        if (c->req) {
            reply_error(c->req, 503, "shutting down");
            c->req = NULL;
        }
    }
    /* Fails the calls still queued: their callbacks free them. */
    db_stop(h);
    PGMTA_ASSERT(h->calls == NULL);
    unbind(h);
    http_conn_free(h->hc);
    evhttp_free(h->evh);
    free(h->inject_hashes);
    for (size_t i = 0; i < h->nallowed_hosts; i++)
        free(h->allowed_hosts[i]);
    free(h->allowed_hosts);
    free(h->dashboard_dir);
    free(h->node_name);
    free(h->default_pipe);
    free(h);
}
