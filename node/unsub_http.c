/* unsub_http: the one-click unsubscribe listener (see unsub_http.h).
 *
 * Ownership: struct unsub_http owns its evhttp server, the http_conn that
 * binds and limits its connections (http_conn.h), the bound socket, the
 * struct unsub holding the secret, the rate table, its own database
 * connection (db.c) and the calls waiting on it. A call belongs to the
 * database request it was handed to: db.c calls back exactly once, after
 * db_exec returned, and that callback unlinks the call and hands it to
 * util_defer_free. The evhttp request belongs to libevent; a call forgets
 * it once answered (database timeout), so nothing touches it after its
 * reply. */
#include "unsub_http.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <libpq-fe.h>

#include "conf.h"
#include "db.h"
#include "http.h"
#include "http_conn.h"
#include "http_reply.h"
#include "log.h"
#include "unsub.h"
#include "util.h"

#define UNSUB_SQL "SELECT mta.unsubscribe($1, $2, $3, $4)"
#define ONE_CLICK "List-Unsubscribe=One-Click"

struct rate_slot {
    uint64_t start_ms;
    uint32_t count;
};

struct ucall {
    uint64_t id;
    struct unsub_http *h;
    struct evhttp_request *req; /* NULL once answered */
    struct event *timer;
    struct ucall *prev, *next;
};

struct unsub_http {
    struct event_base *base;
    struct evhttp *evh;
    struct http_conn *hc;
    struct http_conn_listen listen; /* listen.unsubscribe */
    bool stopped;
    struct unsub *unsub;
    struct conf_rate rate;
    struct rate_slot slots[UNSUB_HTTP_RATE_SLOTS];
    char *db_url;
    struct db *db;
    struct ucall *calls;
    size_t ncalls;
    uint64_t next_id;
};

/* ---- pages ------------------------------------------------------------------------ */

static void
page(struct evhttp_request *req, int code, const char *title, const char *text, bool form)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b,
               "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
               "<meta name=\"viewport\" content=\"width=device-width\">"
               "<meta name=\"robots\" content=\"noindex\"><title>%s</title></head>\n"
               "<body><h1>%s</h1><p>%s</p>\n",
               title, title, text);
    if (form)
        /* posts to this same URL */
        buf_puts(&b, "<form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" "
                     "value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>\n");
    buf_puts(&b, "</body></html>\n");
    if (code == 429)
        evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "60");
    http_reply(req, code, "text/html; charset=utf-8", b.data, b.len);
    buf_free(&b);
}

static void
page_bad_link(struct evhttp_request *req)
{
    page(req, 400, "Invalid link",
         "This unsubscribe link is not valid. Use the link of a message you received.", false);
}

/* ---- the one-click body --------------------------------------------------------- */

int
unsub_http_one_click(const char *ctype, const char *body, size_t len)
{
    if (ctype && !strncasecmp(ctype, "multipart/form-data", 19)) {
        /* a part named List-Unsubscribe whose value is One-Click */
        static const char name[] = "name=\"List-Unsubscribe\"";
        for (size_t i = 0; i + sizeof name - 1 <= len; i++) {
            if (memcmp(body + i, name, sizeof name - 1) != 0)
                continue;
            const char *p = body + i, *end = body + len;
            const char *v = NULL;
            for (const char *q = p; q + 4 <= end; q++)
                if (!memcmp(q, "\r\n\r\n", 4)) {
                    v = q + 4;
                    break;
                }
            return v && end - v >= 9 && !memcmp(v, "One-Click", 9) &&
                   (end - v == 9 || v[9] == '\r' || v[9] == '\n');
        }
        return 0;
    }
    /* application/x-www-form-urlencoded (or no type): one of the pairs */
    size_t i = 0;
    while (i <= len) {
        size_t j = i;
        while (j < len && body[j] != '&')
            j++;
        size_t n = j - i;
        while (n && (body[i + n - 1] == '\r' || body[i + n - 1] == '\n' || body[i + n - 1] == ' '))
            n--;
        if (n == sizeof ONE_CLICK - 1 && !memcmp(body + i, ONE_CLICK, n))
            return 1;
        i = j + 1;
    }
    return 0;
}

/* ---- rate limit ------------------------------------------------------------------- */

/* Counts a request of the client at ADDR; false when it is over the rate. */
static bool
rate_take(struct unsub_http *h, const char *addr)
{
    if (h->rate.count == CONF_UNLIMITED)
        return true;
    uint64_t x = 1469598103934665603ULL; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)addr; *p; p++)
        x = (x ^ *p) * 1099511628211ULL;
    struct rate_slot *s = &h->slots[x % UNSUB_HTTP_RATE_SLOTS];
    uint64_t now = util_now_ms();
    if (s->count == 0 || now - s->start_ms >= h->rate.period_ms) {
        s->start_ms = now;
        s->count = 0;
    }
    if (s->count >= h->rate.count)
        return false;
    s->count++;
    return true;
}

/* ---- calls: POSTs waiting for the database ------------------------------------------ */

static void
ucall_free(void *arg)
{
    struct ucall *c = arg;
    if (c->timer)
        event_free(c->timer);
    free(c);
}

static void
ucall_retire(struct ucall *c)
{
    struct unsub_http *h = c->h;
    if (c->prev)
        c->prev->next = c->next;
    else
        h->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    h->ncalls--;
    evtimer_del(c->timer);
    util_defer_free(h->base, ucall_free, c);
}

static void
ucall_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct ucall *c = arg;
    if (!c->req)
        return;
    log_warn("unsubscribe call=%llu event=database-timeout", (unsigned long long)c->id);
    page(c->req, 503, "Try again later", "The request could not be handled now.", false);
    c->req = NULL;
}

static void
ucall_done(const PGresult *res, void *arg)
{
    struct ucall *c = arg;
    if (c->req) {
        if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
            log_info("unsubscribe call=%llu event=suppressed", (unsigned long long)c->id);
            page(c->req, 200, "Unsubscribed", "You will not receive these messages any more.",
                 false);
        } else if (!res) {
            log_warn("unsubscribe call=%llu event=database-unavailable", (unsigned long long)c->id);
            page(c->req, 503, "Try again later", "The request could not be handled now.", false);
        } else {
            log_error("unsubscribe call=%llu event=failed error=\"%s\"", (unsigned long long)c->id,
                      PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
            page(c->req, 500, "Error", "The request could not be handled.", false);
        }
        c->req = NULL;
    }
    ucall_retire(c);
}

static void
post(struct unsub_http *h, struct evhttp_request *req, const char *token)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (len > UNSUB_HTTP_MAX_BODY) {
        page(req, 413, "Request too large", "The request body is too large.", false);
        return;
    }
    char *rcpt, *job, *scope;
    if (unsub_token_verify(h->unsub, token, &rcpt, &job, &scope) != 0) {
        page_bad_link(req);
        return;
    }
    const char *body = len ? (const char *)evbuffer_pullup(in, (ssize_t)len) : "";
    const char *ctype = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    if (!unsub_http_one_click(ctype, body, len)) {
        page(req, 400, "Not a one-click request",
             "Use the button of the unsubscribe page (body List-Unsubscribe=One-Click).", false);
    } else if (!h->db || !db_ready(h->db) || h->ncalls >= UNSUB_HTTP_MAX_CALLS) {
        page(req, 503, "Try again later", "The request could not be handled now.", false);
    } else {
        struct ucall *c = xcalloc(1, sizeof *c);
        c->id = ++h->next_id;
        c->h = h;
        c->req = req;
        const char *vals[4] = {rcpt, job, "list-unsubscribe", scope};
        if (db_exec(h->db, "unsubscribe", 4, vals, NULL, NULL, 0, ucall_done, c) != 0) {
            free(c);
            page(req, 503, "Try again later", "The request could not be handled now.", false);
        } else {
            c->timer = evtimer_new(h->base, ucall_timeout, c);
            PGMTA_ASSERT(c->timer != NULL);
            struct timeval tv = {HTTP_DB_TIMEOUT_MS / 1000, (HTTP_DB_TIMEOUT_MS % 1000) * 1000};
            evtimer_add(c->timer, &tv);
            c->next = h->calls;
            if (h->calls)
                h->calls->prev = c;
            h->calls = c;
            h->ncalls++;
        }
    }
    free(rcpt);
    free(job);
    free(scope);
}

static void
on_request(struct evhttp_request *req, void *arg)
{
    struct unsub_http *h = arg;
    http_conn_request_read(h->hc, req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    struct evhttp_connection *conn = evhttp_request_get_connection(req);
    char *peer = NULL;
    ev_uint16_t port = 0;
    if (conn)
        evhttp_connection_get_peer(conn, &peer, &port);
    if (!rate_take(h, peer ? peer : "")) {
        log_warn("unsubscribe event=rate-limited client=%s", peer ? peer : "-");
        page(req, 429, "Too many requests", "Try again in a minute.", false);
        return;
    }
    if (!path || strncmp(path, "/u/", 3) != 0 || !path[3] || strchr(path + 3, '/')) {
        page(req, 404, "Not found", "There is nothing here.", false);
        return;
    }
    const char *token = path + 3;
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (m == EVHTTP_REQ_POST) {
        post(h, req, token);
        return;
    }
    if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", "GET, HEAD, POST");
        page(req, 405, "Method not allowed", "Use the unsubscribe page.", false);
        return;
    }
    /* GET never unsubscribes: it shows the button that posts. */
    char *rcpt, *job, *scope;
    if (unsub_token_verify(h->unsub, token, &rcpt, &job, &scope) != 0) {
        page_bad_link(req);
        return;
    }
    free(rcpt);
    free(job);
    free(scope);
    page(req, 200, "Unsubscribe", "Unsubscribe from these messages?", true);
}

/* ---- life cycle --------------------------------------------------------------------- */

struct unsub_http *
unsub_http_new(struct event_base *base)
{
    struct unsub_http *h = xcalloc(1, sizeof *h);
    h->base = base;
    h->evh = evhttp_new(base);
    PGMTA_ASSERT(h->evh != NULL);
    evhttp_set_timeout(h->evh, HTTP_TIMEOUT_S);
    evhttp_set_max_body_size(h->evh, UNSUB_HTTP_MAX_BODY);
    evhttp_set_max_headers_size(h->evh, HTTP_MAX_HEADERS);
    h->hc = http_conn_new(base, h->evh);
    evhttp_set_allowed_methods(h->evh, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                           EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                           EVHTTP_REQ_PATCH);
    evhttp_set_gencb(h->evh, on_request, h);
    h->unsub = unsub_new_key(NULL, 0);
    return h;
}

static void
set_db(struct unsub_http *h, const char *url)
{
    if (url && h->db_url && !strcmp(url, h->db_url))
        return;
    /* db_free answers the calls waiting (503 from their callbacks). */
    db_free(h->db);
    h->db = NULL;
    free(h->db_url);
    h->db_url = NULL;
    if (!url)
        return;
    h->db_url = xstrdup(url);
    h->db = db_new(h->base, url, "pgmtad-unsubscribe");
    db_prepare(h->db, "unsubscribe", UNSUB_SQL, 4);
    db_connect(h->db);
}

void
unsub_http_apply(struct unsub_http *h, const struct conf *conf)
{
    char err[512];
    struct unsub *u = unsub_new(conf, err, sizeof err);
    if (u) {
        unsub_free(h->unsub);
        h->unsub = u;
    } else {
        log_error("unsubscribe event=secret-kept error=\"%s\"", err);
    }
    h->rate = conf->unsubscribe_max_rate;
    /* Bodies are a few octets: the whole request within the header timeout. */
    http_conn_set_limits(h->hc, conf->http_max_connections, conf->http_header_timeout_ms,
                         conf->http_header_timeout_ms);
    const char *want = conf->listen_unsubscribe;
    if (want && !unsub_has_secret(h->unsub)) {
        log_error("unsubscribe event=not-started listen=%s error=\"no unsubscribe-secret-file\"",
                  want);
        want = NULL;
    }
    if (h->stopped || !conf->database_url)
        want = NULL;
    set_db(h, want ? conf->database_url : NULL);
    http_conn_listen(h->hc, &h->listen, "unsubscribe", want);
}

void
unsub_http_stop(struct unsub_http *h)
{
    if (!h)
        return;
    h->stopped = true;
    http_conn_listen(h->hc, &h->listen, "unsubscribe", NULL);
}

void
unsub_http_free(struct unsub_http *h)
{
    if (!h)
        return;
    set_db(h, NULL);
    http_conn_listen(h->hc, &h->listen, "unsubscribe", NULL);
    http_conn_free(h->hc);
    evhttp_free(h->evh);
    unsub_free(h->unsub);
    free(h);
}
