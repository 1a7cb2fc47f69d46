/* db: asynchronous libpq connection in pipeline mode, driven by libevent.
 *
 * The db owns its PGconn, the libevent events on its socket, the list of
 * statements to prepare, and a FIFO of requests in flight. A request is
 * owned by the FIFO until its callback has returned. Statement preparation
 * uses the same FIFO (internal requests without callback), so a request
 * queued right after connecting is sent after the PREPAREs it needs.
 *
 * Callbacks run only from the db's own libevent events (socket, timer, and
 * ev_defer), never from inside db_exec or db_connect: a send failure that
 * db_exec finds is remembered (broken) and the connection is failed from
 * the next loop turn. Every event handler brackets its work with
 * db_enter/db_leave; db_free called from inside a callback (busy) fails
 * every pending request at once, as always, but leaves the memory to the
 * outermost handler, which frees it on the way out: no handler ever touches
 * a freed db.
 *
 * Multi-host URLs (host=a,b target_session_attrs=read-write, as a failover
 * setup gives them): libpq tries the hosts in order, but with PQconnectPoll
 * it ignores connect_timeout, so a host that never answers (a machine gone,
 * not just its postmaster) would hold every attempt until our own timer
 * ends it, and the next attempt would start with the same host. So the
 * timer is the URL's connect_timeout (10 s by default), and after it fires
 * the next attempt starts with the next host (the lists are rotated). */
#include "db.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

enum db_state { DB_DISCONNECTED, DB_CONNECTING, DB_READY };

struct db_stmt {
    char *name;
    char *sql;
    int nparams;
    struct db_stmt *next;
};

struct db_req {
    db_cb cb;
    void *arg;
    PGresult *res;
    bool internal;    /* PREPARE during connection set-up */
    uint64_t sent_us; /* metrics_now_us at db_exec */
    struct db_req *next;
};

struct db {
    struct event_base *base;
    char *url;
    char *name;
    enum db_state state;
    PGconn *conn;
    struct event *ev_read;
    struct event *ev_write;
    struct event *ev_timer; /* reconnect backoff and connect timeout */
    unsigned connect_timeout_s;
    char *hosts[3]; /* host, hostaddr, port lists of the URL, or NULL */
    unsigned nhosts;
    unsigned host_shift; /* the next attempt starts with this host */
    int sock;
    struct db_stmt *stmts;
    struct db_req *head, *tail;
    unsigned pending;
    unsigned backoff_ms;
    db_ready_cb ready_cb;
    void *ready_arg;
    struct event *ev_defer; /* runs a failure found inside db_exec */
    bool broken;            /* a send failed: fail at the next loop turn */
    char broken_why[256];
    bool read_only; /* the previous connection was dropped for 25006 */
    int busy;       /* depth of db handlers on the stack */
    bool freeing;
};

static void db_on_io(evutil_socket_t fd, short what, void *arg);
static void db_on_timer(evutil_socket_t fd, short what, void *arg);
static void db_fail(struct db *db, const char *why);
static void db_on_defer(evutil_socket_t fd, short what, void *arg);
static void db_destroy(struct db *db);

static void
db_enter(struct db *db)
{
    db->busy++;
}

/* Leaves a handler; the outermost one frees a db that db_free marked. */
static void
db_leave(struct db *db)
{
    PGMTA_ASSERT(db->busy > 0);
    if (--db->busy == 0 && db->freeing)
        db_destroy(db);
}

static const char *const db_host_keys[3] = {"host", "hostaddr", "port"};

static unsigned
db_list_len(const char *s)
{
    if (!s || !*s)
        return 0;
    unsigned n = 1;
    for (; *s; s++)
        n += *s == ',';
    return n;
}

/* LIST (N comma-separated entries) with its first SHIFT entries moved to
 * the end; a list of another length (one port for every host) as it is. */
static char *
db_rotate_list(const char *list, unsigned n, unsigned shift)
{
    if (shift == 0 || db_list_len(list) != n)
        return xstrdup(list);
    const char *p = list;
    for (unsigned i = 0; i < shift; i++)
        p = strchr(p, ',') + 1;
    size_t len = strlen(list), head = (size_t)(p - list), tail = len - head;
    char *out = xmalloc(len + 1);
    memcpy(out, p, tail);
    out[tail] = ',';
    memcpy(out + tail + 1, list, head - 1);
    out[len] = '\0';
    return out;
}

/* Reads the host lists and connect_timeout of the URL; a URL libpq cannot
 * parse is left to fail at connect with libpq's message. */
static void
db_parse_url(struct db *db)
{
    db->connect_timeout_s = 10;
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(db->url, &err);
    if (!opts) {
        PQfreemem(err);
        return;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        if (strcmp(o->keyword, "connect_timeout") == 0) {
            int t = atoi(o->val);
            /* libpq's own floor; 0 (wait forever) keeps our default */
            if (t > 0)
                db->connect_timeout_s = t < 2 ? 2 : (unsigned)t;
        }
        for (int i = 0; i < 3; i++)
            if (strcmp(o->keyword, db_host_keys[i]) == 0)
                db->hosts[i] = xstrdup(o->val);
    }
    PQconninfoFree(opts);
    db->nhosts = db_list_len(db->hosts[0] ? db->hosts[0] : db->hosts[1]);
}

struct db *
db_new(struct event_base *base, const char *url, const char *name)
{
    struct db *db = xcalloc(1, sizeof *db);
    db->base = base;
    db->url = xstrdup(url);
    db->name = xstrdup(name);
    db->sock = -1;
    db->backoff_ms = 250;
    db_parse_url(db);
    db->ev_timer = evtimer_new(base, db_on_timer, db);
    db->ev_defer = event_new(base, -1, 0, db_on_defer, db);
    PGMTA_ASSERT(db->ev_timer && db->ev_defer);
    return db;
}

void
db_set_ready_cb(struct db *db, db_ready_cb cb, void *arg)
{
    db->ready_cb = cb;
    db->ready_arg = arg;
}

void
db_prepare(struct db *db, const char *stmt, const char *sql, int nparams)
{
    struct db_stmt *s = xcalloc(1, sizeof *s);
    s->name = xstrdup(stmt);
    s->sql = xstrdup(sql);
    s->nparams = nparams;
    s->next = db->stmts;
    db->stmts = s;
}

bool
db_ready(const struct db *db)
{
    return db->state == DB_READY && !db->broken && !db->freeing;
}

unsigned
db_pending(const struct db *db)
{
    return db->pending;
}

static void
db_unwatch(struct db *db)
{
    if (db->ev_read) {
        event_free(db->ev_read);
        db->ev_read = NULL;
    }
    if (db->ev_write) {
        event_free(db->ev_write);
        db->ev_write = NULL;
    }
    db->sock = -1;
}

/* (Re)creates the socket events when libpq's socket changed. */
static void
db_watch(struct db *db)
{
    int sock = PQsocket(db->conn);
    if (sock == db->sock && db->ev_read)
        return;
    db_unwatch(db);
    db->sock = sock;
    db->ev_read = event_new(db->base, sock, EV_READ | EV_PERSIST, db_on_io, db);
    db->ev_write = event_new(db->base, sock, EV_WRITE, db_on_io, db);
}

static void
db_push(struct db *db, struct db_req *r)
{
    r->next = NULL;
    if (db->tail)
        db->tail->next = r;
    else
        db->head = r;
    db->tail = r;
    db->pending++;
}

static struct db_req *
db_pop(struct db *db)
{
    struct db_req *r = db->head;
    if (!r)
        return NULL;
    db->head = r->next;
    if (!db->head)
        db->tail = NULL;
    db->pending--;
    return r;
}

static void
db_flush(struct db *db)
{
    int r = PQflush(db->conn);
    if (r < 0) {
        db_fail(db, PQerrorMessage(db->conn));
        return;
    }
    if (r == 1)
        event_add(db->ev_write, NULL);
}

static int
db_send_prepare(struct db *db, const struct db_stmt *s)
{
    if (!PQsendPrepare(db->conn, s->name, s->sql, s->nparams, NULL) || !PQpipelineSync(db->conn))
        return -1;
    struct db_req *r = xcalloc(1, sizeof *r);
    r->internal = true;
    db_push(db, r);
    return 0;
}

static void
db_connected(struct db *db)
{
    PQsetnonblocking(db->conn, 1);
    if (!PQenterPipelineMode(db->conn)) {
        db_fail(db, "cannot enter pipeline mode");
        return;
    }
    for (struct db_stmt *s = db->stmts; s; s = s->next) {
        if (db_send_prepare(db, s) < 0) {
            db_fail(db, PQerrorMessage(db->conn));
            return;
        }
    }
    evtimer_del(db->ev_timer);
    db->state = DB_READY;
    /* After a drop for 25006 the backoff keeps growing: without
     * target_session_attrs=read-write, connecting to a read-only server
     * succeeds, and we would otherwise reconnect to it every 250 ms. */
    if (!db->read_only)
        db->backoff_ms = 250;
    db->read_only = false;
    event_add(db->ev_read, NULL);
    db_flush(db);
    log_info("db=%s event=connected prepared=%u", db->name, db->pending);
    if (db->state == DB_READY && db->ready_cb)
        db->ready_cb(db, db->ready_arg);
}

static void
db_poll_connect(struct db *db)
{
    PostgresPollingStatusType st = PQconnectPoll(db->conn);
    switch (st) {
    case PGRES_POLLING_OK:
        db_watch(db);
        db_connected(db);
        return;
    case PGRES_POLLING_FAILED:
        db_fail(db, PQerrorMessage(db->conn));
        return;
    case PGRES_POLLING_READING:
        db_watch(db);
        event_del(db->ev_write);
        event_add(db->ev_read, NULL);
        return;
    case PGRES_POLLING_WRITING:
        db_watch(db);
        event_del(db->ev_read);
        event_add(db->ev_write, NULL);
        return;
    default:
        return;
    }
}

void
db_connect(struct db *db)
{
    if (db->state != DB_DISCONNECTED)
        return;
    /* TCP keepalives so that PostgreSQL and we both notice a dead peer
     * within about a minute; the URL may override them. */
    /* idle_in_transaction_session_timeout: a node never leaves a
     * transaction open (every request is its own implicit transaction);
     * should one hang, PostgreSQL ends it instead of holding row locks. */
    const char *keys[12] = {"keepalives",
                            "keepalives_idle",
                            "keepalives_interval",
                            "keepalives_count",
                            "application_name",
                            "connect_timeout",
                            "options",
                            "dbname"};
    const char *vals[12] = {
        "1", "10", "5", "3", db->name, "10", "-c idle_in_transaction_session_timeout=30s", db->url};
    /* After the dbname (the URL), so that they override its lists. */
    char *rotated[3] = {NULL, NULL, NULL};
    int n = 8;
    for (int i = 0; i < 3 && db->host_shift; i++)
        if (db->hosts[i]) {
            rotated[i] = db_rotate_list(db->hosts[i], db->nhosts, db->host_shift);
            keys[n] = db_host_keys[i];
            vals[n++] = rotated[i];
        }
    keys[n] = vals[n] = NULL;
    db->conn = PQconnectStartParams(keys, vals, 1);
    for (int i = 0; i < 3; i++)
        free(rotated[i]);
    if (!db->conn || PQstatus(db->conn) == CONNECTION_BAD) {
        db_fail(db, db->conn ? PQerrorMessage(db->conn) : "out of memory");
        return;
    }
    db->state = DB_CONNECTING;
    struct timeval tv = {db->connect_timeout_s, 0};
    evtimer_add(db->ev_timer, &tv);
    /* libpq: after PQconnectStart, act as if PQconnectPoll had answered
     * PGRES_POLLING_WRITING. Polling from the socket event (never from
     * here) keeps the ready callback out of db_connect's caller. */
    db_watch(db);
    event_add(db->ev_write, NULL);
}

/* Completes every pending request with NULL, drops the connection and
 * schedules a reconnect. */
static void
db_fail(struct db *db, const char *why)
{
    char msg[256];
    snprintf(msg, sizeof msg, "%s", why ? why : "");
    for (char *p = msg; *p; p++)
        if (*p == '\n')
            *p = ' ';
    bool was_ready = db->state == DB_READY;
    db->broken = false;
    event_del(db->ev_defer);
    db_unwatch(db);
    if (db->conn) {
        PQfinish(db->conn);
        db->conn = NULL;
    }
    db->state = DB_DISCONNECTED;
    struct timeval tv = {db->backoff_ms / 1000, (db->backoff_ms % 1000) * 1000};
    evtimer_add(db->ev_timer, &tv);
    log_warn("db=%s event=%s error=\"%s\" retry_in=%ums", db->name,
             was_ready ? "connection-lost" : "connect-failed", msg, db->backoff_ms);
    db->backoff_ms = db->backoff_ms * 2 > 10000 ? 10000 : db->backoff_ms * 2;
    struct db_req *r;
    while ((r = db_pop(db))) {
        if (r->res)
            PQclear(r->res);
        if (r->cb)
            r->cb(NULL, r->arg);
        free(r);
    }
}

static void
db_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct db *db = arg;
    db_enter(db);
    if (!db->freeing && db->state == DB_CONNECTING) {
        char why[64] = "connect timeout";
        if (db->nhosts > 1) {
            db->host_shift = (db->host_shift + 1) % db->nhosts;
            snprintf(why, sizeof why, "connect timeout, next from host %u of %u",
                     db->host_shift + 1, db->nhosts);
        }
        db_fail(db, why);
    } else if (!db->freeing && db->state == DB_DISCONNECTED)
        db_connect(db);
    db_leave(db);
}

/* The send failure db_exec found: the connection fails now, from the loop,
 * after db_exec's caller has returned. */
static void
db_on_defer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct db *db = arg;
    db_enter(db);
    if (db->broken && !db->freeing && db->state == DB_READY)
        db_fail(db, db->broken_why);
    db_leave(db);
}

/* The result a callback took with db_take_result (single-threaded). */
static const PGresult *db_taken;

PGresult *
db_take_result(const PGresult *res)
{
    db_taken = res;
    return (PGresult *)res;
}

void
db_call(db_cb cb, void *arg, PGresult *res)
{
    const PGresult *outer = db_taken;
    db_taken = NULL;
    cb(res, arg);
    if (res && res != db_taken)
        PQclear(res);
    db_taken = outer;
}

static void
db_complete(struct db *db)
{
    struct db_req *r = db_pop(db);
    if (r->internal) {
        if (r->res && PQresultStatus(r->res) != PGRES_COMMAND_OK)
            log_error("db=%s event=prepare-failed error=\"%s\"", db->name,
                      PQresultErrorMessage(r->res));
    } else if (r->cb) {
        metrics_observe_since(METRICS_H_DB, r->sent_us);
        db_taken = NULL;
        r->cb(r->res, r->arg);
    }
    if (r->res && r->res != db_taken)
        PQclear(r->res);
    db_taken = NULL;
    free(r);
}

/* SQLSTATE 25006 (read_only_sql_transaction): the server we are connected
 * to does not take writes any more, typically a primary demoted to standby
 * by a failover (or default_transaction_read_only). Every later write on
 * this session would fail the same way, so the connection is dropped and
 * the reconnect path (target_session_attrs=read-write in a multi-host URL)
 * finds the new primary. */
static bool
db_is_read_only(const PGresult *res)
{
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return PQresultStatus(res) == PGRES_FATAL_ERROR && st && strcmp(st, "25006") == 0;
}

static void
db_read(struct db *db)
{
    if (!PQconsumeInput(db->conn)) {
        db_fail(db, PQerrorMessage(db->conn));
        return;
    }
    while (db->head && db->state == DB_READY) {
        if (PQisBusy(db->conn))
            break;
        PGresult *res = PQgetResult(db->conn);
        if (!res)
            continue; /* end of one query's results; its sync follows */
        if (db_is_read_only(res)) {
            char why[256];
            snprintf(why, sizeof why, "read-only server: %s", PQresultErrorMessage(res));
            PQclear(res);
            /* The request gets NULL like any other whose connection was
             * lost: nothing of it committed. */
            db->read_only = true;
            db_fail(db, why);
            return;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            db_complete(db);
            continue;
        }
        if (!db->head->res)
            db->head->res = res;
        else
            PQclear(res);
    }
    if (db->state == DB_READY && PQstatus(db->conn) == CONNECTION_BAD)
        db_fail(db, PQerrorMessage(db->conn));
}

static void
db_on_io(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct db *db = arg;
    db_enter(db);
    if (db->freeing) {
        /* nothing: db_leave frees */
    } else if (db->state == DB_CONNECTING) {
        db_poll_connect(db);
    } else if (db->state == DB_READY) {
        if (what & EV_WRITE)
            db_flush(db);
        if (db->state == DB_READY && (what & EV_READ))
            db_read(db);
    }
    db_leave(db);
}

/* Remembers a failure found inside a request function; db_on_defer fails
 * the connection from the loop. */
static void
db_defer_fail(struct db *db, const char *why)
{
    if (db->broken)
        return;
    db->broken = true;
    snprintf(db->broken_why, sizeof db->broken_why, "%s", why ? why : "send failed");
    event_active(db->ev_defer, EV_TIMEOUT, 0);
}

int
db_exec(struct db *db, const char *stmt, int nparams, const char *const *values, const int *lengths,
        const int *formats, int result_format, db_cb cb, void *arg)
{
    if (db->state != DB_READY || db->broken || db->freeing)
        return -1;
    if (!PQsendQueryPrepared(db->conn, stmt, nparams, values, lengths, formats, result_format) ||
        !PQpipelineSync(db->conn)) {
        log_warn("db=%s event=send-failed stmt=%s error=\"%s\"", db->name, stmt,
                 PQerrorMessage(db->conn));
        /* libpq found the connection dead while sending (it may have
         * closed the socket, so no socket event will ever tell us): fail
         * it from the next loop turn. */
        if (PQstatus(db->conn) == CONNECTION_BAD)
            db_defer_fail(db, PQerrorMessage(db->conn));
        return -1;
    }
    struct db_req *r = xcalloc(1, sizeof *r);
    r->cb = cb;
    r->arg = arg;
    r->sent_us = metrics_now_us();
    db_push(db, r);
    /* Never db_fail here: that would call this request's callback (and
     * every other pending one) before db_exec returns. */
    int f = PQflush(db->conn);
    if (f < 0 || PQstatus(db->conn) == CONNECTION_BAD)
        db_defer_fail(db, PQerrorMessage(db->conn));
    else if (f == 1)
        event_add(db->ev_write, NULL);
    return 0;
}

void
db_free(struct db *db)
{
    if (!db || db->freeing)
        return;
    /* Every pending request is failed now, also from inside a callback:
     * callers free what the callbacks point to right after db_free. From
     * now on db_exec refuses, so a callback cannot queue another. */
    db->freeing = true;
    db->state = DB_DISCONNECTED;
    db->busy++;
    struct db_req *r;
    while ((r = db_pop(db))) {
        if (r->res)
            PQclear(r->res);
        if (r->cb)
            r->cb(NULL, r->arg);
        free(r);
    }
    /* Inside one of this db's handlers: it frees the db when it returns
     * (db_leave), so that it never touches freed memory. */
    db_leave(db);
}

/* Frees the db; nothing is pending any more (db_free failed it). */
static void
db_destroy(struct db *db)
{
    PGMTA_ASSERT(db->head == NULL);
    db_unwatch(db);
    if (db->conn)
        PQfinish(db->conn);
    event_free(db->ev_timer);
    event_free(db->ev_defer);
    while (db->stmts) {
        struct db_stmt *s = db->stmts;
        db->stmts = s->next;
        free(s->name);
        free(s->sql);
        free(s);
    }
    for (int i = 0; i < 3; i++)
        free(db->hosts[i]);
    free(db->url);
    free(db->name);
    free(db);
}

static uint64_t
db_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

long long
db_get_int8(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return 0;
    return (long long)db_be64((const unsigned char *)PQgetvalue(res, row, col));
}

int
db_get_int4(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 4)
        return 0;
    uint32_t v;
    memcpy(&v, PQgetvalue(res, row, col), 4);
    return (int)ntohl(v);
}

long long
db_get_timestamptz_us(const PGresult *res, int row, int col)
{
    /* PostgreSQL's epoch is 2000-01-01, 946684800 s after Unix's. */
    return db_get_int8(res, row, col) + 946684800LL * 1000000LL;
}

void
db_array_append_text(struct buf *b, const char *s)
{
    if (!s) {
        buf_puts(b, "NULL");
        return;
    }
    buf_append(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            buf_append(b, "\\", 1);
        buf_append(b, p, 1);
    }
    buf_append(b, "\"", 1);
}
