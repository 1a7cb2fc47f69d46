/* webhook: the webhook sender process (see webhook.h and README, Webhooks).
 *
 * Ownership: the process owns its event loop, its configuration, one
 * database connection (db.c) that holds the consumers' session advisory
 * locks, an evdns base for receivers named by host name, and one struct
 * consumer per webhooks entry, alive as long as the process. A consumer
 * owns its HTTP connection (evhttp, kept alive between batches; over https
 * one per POST, which the POST's reply frees when it comes, through
 * util_defer), its key and the batch in flight (JSON text from
 * mta.webhook_next). Replies of the
 * database and of the receiver carry the consumer's generation: a reply
 * from before a lost database connection (the locks went with it) is
 * ignored.
 *
 * One consumer's cycle: LOCK (mta.webhook_lock; not ours: try again later)
 * -> FETCH (mta.webhook_next) -> POST -> ADVANCE (mta.webhook_advance, only
 * after a 2xx) -> FETCH. A failed POST is recorded (mta.webhook_failed) and
 * the same batch is sent again after an exponential backoff. No transaction
 * is open while a POST is in flight. */
#include "webhook.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509.h>

#include "db.h"
#include "log.h"
#include "tls.h"
#include "util.h"

#define WEBHOOK_IDLE_POLL_MS 1000u
#define WEBHOOK_LOCK_RETRY_MS 5000u
#define WEBHOOK_ERR_LEN 256

enum cstate { C_OFF, C_LOCK, C_FETCH, C_POST, C_ADVANCE, C_WAIT };
static const char *const cstate_names[] = {"off", "lock", "fetch", "post", "advance", "wait"};

struct wproc;

struct consumer {
    struct wproc *w;
    const struct conf_webhook *cw;
    char *key;
    size_t keylen;
    struct webhook_url url;
    enum cstate state, after_wait; /* after_wait: what the timer starts */
    unsigned gen;                  /* bumped when the database connection is lost */
    struct event *timer;
    struct evhttp_connection *conn;
    const char *req_error; /* why the POST in flight failed, from evhttp */
    unsigned failures;
    /* the batch in flight */
    char *events;
    int n;
    char *pos_time, *pos_id;
};

struct wproc {
    struct event_base *base;
    struct evdns_base *dns;
    struct conf *conf;
    struct db *db;
    struct consumer *cs;
    size_t ncs;
    unsigned gen;
    struct event *signals[3];
    int status;
};

static void consumer_enter(struct consumer *c, enum cstate st);

uint64_t
webhook_retry_delay_ms(unsigned failures, uint64_t cap_ms)
{
    uint64_t d = WEBHOOK_MIN_RETRY_MS;
    for (unsigned i = 1; i < failures && d < cap_ms; i++)
        d *= 2;
    return d < cap_ms ? d : cap_ms;
}

void
webhook_sign(const char *key, size_t keylen, const char *timestamp, const char *body,
             size_t bodylen, char *out, size_t outlen)
{
    unsigned char mac[32];
    unsigned maclen = 0;
    /* HMAC over "timestamp.body" without copying the body */
    EVP_MAC *m = EVP_MAC_fetch(NULL, "HMAC", NULL);
    PGMTA_ASSERT(m != NULL);
    EVP_MAC_CTX *mc = EVP_MAC_CTX_new(m);
    PGMTA_ASSERT(mc != NULL);
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                           OSSL_PARAM_construct_end()};
    PGMTA_ASSERT(EVP_MAC_init(mc, (const unsigned char *)key, keylen, params) == 1);
    EVP_MAC_update(mc, (const unsigned char *)timestamp, strlen(timestamp));
    EVP_MAC_update(mc, (const unsigned char *)".", 1);
    EVP_MAC_update(mc, (const unsigned char *)body, bodylen);
    size_t ml = 0;
    PGMTA_ASSERT(EVP_MAC_final(mc, mac, &ml, sizeof mac) == 1);
    maclen = (unsigned)ml;
    EVP_MAC_CTX_free(mc);
    EVP_MAC_free(m);
    PGMTA_ASSERT(outlen >= 8 + 2 * maclen);
    memcpy(out, "sha256=", 7);
    for (unsigned i = 0; i < maclen; i++)
        snprintf(out + 7 + 2 * i, 3, "%02x", mac[i]);
}

/* ---- configuration ---- */

int
webhook_url_parse(const char *url, struct webhook_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct evhttp_uri *u = evhttp_uri_parse_with_flags(url, 0);
    const char *scheme = u ? evhttp_uri_get_scheme(u) : NULL;
    const char *host = u ? evhttp_uri_get_host(u) : NULL;
    int rc = -1;
    if (!u || !scheme)
        snprintf(err, errlen, "bad url (expected http[s]://host[:port]/path)");
    else if (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)
        snprintf(err, errlen, "url: scheme \"%s\" is not http or https", scheme);
    else if (!host || !*host || (host[0] == '[' && strlen(host) < 3))
        snprintf(err, errlen, "url: no host");
    else if (evhttp_uri_get_port(u) == 0)
        snprintf(err, errlen, "url: port 0");
    else if (evhttp_uri_get_userinfo(u))
        snprintf(err, errlen, "url: no user info allowed (use secret-file)");
    else if (evhttp_uri_get_fragment(u))
        snprintf(err, errlen, "url: no fragment allowed");
    else
        rc = 0;
    if (rc == 0) {
        out->https = strcmp(scheme, "https") == 0;
        size_t hl = strlen(host);
        out->host = host[0] == '[' ? xstrndup(host + 1, hl - 2) : xstrdup(host);
        int port = evhttp_uri_get_port(u);
        out->port = port > 0 ? (unsigned)port : out->https ? 443 : 80;
        const char *path = evhttp_uri_get_path(u);
        const char *query = evhttp_uri_get_query(u);
        path = path && *path ? path : "/";
        out->path = query ? xasprintf("%s?%s", path, query) : xstrdup(path);
    }
    if (u)
        evhttp_uri_free(u);
    return rc;
}

void
webhook_url_free(struct webhook_url *u)
{
    free(u->host);
    free(u->path);
    u->host = u->path = NULL;
}

char *
webhook_read_secret(const char *path, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open secret-file %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "secret-file %s is not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_mode & S_IRWXO) {
        snprintf(err, errlen,
                 "secret-file %s is accessible by others (mode %04o); allow only the "
                 "daemon's user (chmod 600)",
                 path, (unsigned)(st.st_mode & 07777));
        close(fd);
        return NULL;
    }
    char *k = xcalloc(1, WEBHOOK_KEY_MAX + 1);
    size_t n = 0;
    while (n < WEBHOOK_KEY_MAX) {
        ssize_t r = read(fd, k + n, WEBHOOK_KEY_MAX - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "cannot read secret-file %s: %s", path, strerror(errno));
            close(fd);
            free(k);
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    char *nl = memchr(k, '\n', n);
    if (nl)
        n = (size_t)(nl - k);
    while (n > 0 && (k[n - 1] == '\r' || k[n - 1] == ' ' || k[n - 1] == '\t'))
        n--;
    if (n == 0) {
        snprintf(err, errlen, "secret-file %s is empty", path);
        free(k);
        return NULL;
    }
    /* the key ends at the first line: nothing of the rest stays around */
    memset(k + n, 0, WEBHOOK_KEY_MAX + 1 - n);
    *len = n;
    return k;
}

int
webhook_types_check(const char *types, char *err, size_t errlen)
{
    const char *p = types;
    for (;;) {
        while (*p == ' ')
            p++;
        const char *e = p + strcspn(p, ",");
        const char *end = e;
        while (end > p && end[-1] == ' ')
            end--;
        bool rb = end - p == 2 && p[0] == 'r' && p[1] == 'b';
        if (!rb && (end - p != 1 || !strchr("rdbtf", *p))) {
            snprintf(err, errlen,
                     "types: unknown event type \"%.*s\" (expected r, d, b, t, rb, f separated "
                     "by commas)",
                     (int)(end - p > 32 ? 32 : end - p), p);
            return -1;
        }
        if (!*e)
            return 0;
        p = e + 1;
    }
}

int
webhook_ca_check(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open ca-file %s: %s", path, strerror(errno));
        return -1;
    }
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    ERR_clear_error();
    if (!x) {
        snprintf(err, errlen, "ca-file %s holds no PEM certificate", path);
        return -1;
    }
    X509_free(x);
    return 0;
}

/* ---- setup ---- */

static int
consumer_setup(struct consumer *c, char *err, size_t errlen)
{
    if (webhook_url_parse(c->cw->url, &c->url, err, errlen) != 0)
        return -1;
    c->key = webhook_read_secret(c->cw->secret_file, &c->keylen, err, errlen);
    if (!c->key)
        return -1;
    return 0;
}

/* The connection for the next POST: http keeps one alive between batches;
 * https makes one per POST, with a fresh TLS handshake (an OpenSSL
 * bufferevent cannot be connected again by evhttp). NULL with the reason. */
static struct evhttp_connection *
consumer_conn(struct consumer *c, char *err, size_t errlen)
{
    if (c->conn)
        return c->conn;
    if (c->url.https) {
        struct bufferevent *bev =
            tls_client_socket_new(c->w->base, c->url.host, c->cw->ca_file, err, errlen);
        if (!bev)
            return NULL;
        c->conn = evhttp_connection_base_bufferevent_new(c->w->base, c->w->dns, bev, c->url.host,
                                                         (uint16_t)c->url.port);
        if (!c->conn) {
            bufferevent_free(bev);
            snprintf(err, errlen, "cannot create the https connection");
            return NULL;
        }
    } else {
        c->conn =
            evhttp_connection_base_new(c->w->base, c->w->dns, c->url.host, (uint16_t)c->url.port);
        PGMTA_ASSERT(c->conn != NULL);
    }
    uint64_t to = c->cw->timeout_ms ? c->cw->timeout_ms : WEBHOOK_DEFAULT_TIMEOUT_MS;
    struct timeval tv = {(time_t)(to / 1000), (suseconds_t)((to % 1000) * 1000)};
    evhttp_connection_set_timeout_tv(c->conn, &tv);
    evhttp_connection_set_retries(c->conn, 0);
    return c->conn;
}

static void
conn_free_cb(void *p)
{
    evhttp_connection_free(p);
}

/* A connection that cannot be used (its request could not be made): freed
 * from the loop, not from within evhttp's callbacks. */
static void
consumer_conn_drop(struct consumer *c)
{
    if (!c->conn)
        return;
    util_defer_free(c->w->base, conn_free_cb, c->conn);
    c->conn = NULL;
}

static void
batch_clear(struct consumer *c)
{
    free(c->events);
    free(c->pos_time);
    free(c->pos_id);
    c->events = c->pos_time = c->pos_id = NULL;
    c->n = 0;
}

/* ---- replies ---- */

struct reply {
    struct consumer *c;
    unsigned gen;
    struct evhttp_connection *conn; /* https: the POST's own connection */
};

static struct reply *
reply_new(struct consumer *c)
{
    struct reply *r = xcalloc(1, sizeof *r);
    r->c = c;
    r->gen = c->gen;
    return r;
}

/* The consumer a reply belongs to, or NULL when it is stale (freed). */
static struct consumer *
reply_take(struct reply *r)
{
    struct consumer *c = r->gen == r->c->gen ? r->c : NULL;
    free(r);
    return c;
}

static void
wait_then(struct consumer *c, uint64_t ms, enum cstate next)
{
    c->after_wait = next;
    consumer_enter(c, C_WAIT);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(c->timer, &tv);
}

static void
on_lock(const PGresult *res, void *arg)
{
    struct consumer *c = reply_take(arg);
    if (!c || !res)
        return; /* the ready callback starts over */
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
        strcmp(PQgetvalue(res, 0, 0), "t") == 0) {
        log_info("webhook consumer=%s event=locked", c->cw->name);
        consumer_enter(c, C_FETCH);
        return;
    }
    log_debug("webhook consumer=%s event=lock-held-elsewhere", c->cw->name);
    wait_then(c, WEBHOOK_LOCK_RETRY_MS, C_LOCK);
}

static void
on_fetch(const PGresult *res, void *arg)
{
    struct consumer *c = reply_take(arg);
    if (!c || !res)
        return;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        log_error("webhook consumer=%s event=fetch-failed error=\"%s\"", c->cw->name,
                  PQresultErrorMessage(res));
        wait_then(c, WEBHOOK_LOCK_RETRY_MS, C_FETCH);
        return;
    }
    batch_clear(c);
    c->events = xstrdup(PQgetvalue(res, 0, 0));
    c->n = atoi(PQgetvalue(res, 0, 1));
    c->pos_time = xstrdup(PQgetvalue(res, 0, 2));
    c->pos_id = xstrdup(PQgetvalue(res, 0, 3));
    consumer_enter(c, c->n > 0 ? C_POST : C_ADVANCE);
}

static void
on_advance(const PGresult *res, void *arg)
{
    struct consumer *c = reply_take(arg);
    if (!c || !res)
        return;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_error("webhook consumer=%s event=advance-failed error=\"%s\"", c->cw->name,
                  PQresultErrorMessage(res));
        wait_then(c, WEBHOOK_LOCK_RETRY_MS, C_ADVANCE);
        return;
    }
    int n = c->n;
    if (n > 0)
        log_debug("webhook consumer=%s event=delivered events=%d", c->cw->name, n);
    batch_clear(c);
    /* a full batch: more may be waiting; else poll */
    uint32_t batch = c->cw->batch ? c->cw->batch : WEBHOOK_DEFAULT_BATCH;
    if ((uint32_t)n >= batch)
        consumer_enter(c, C_FETCH);
    else
        wait_then(c, WEBHOOK_IDLE_POLL_MS, C_FETCH);
}

static void
on_failed_recorded(const PGresult *res, void *arg)
{
    (void)res;
    free(arg); /* best effort: the retry does not wait for it */
}

static void
post_failed(struct consumer *c, const char *why)
{
    c->failures++;
    uint64_t cap = c->cw->max_retry_ms ? c->cw->max_retry_ms : WEBHOOK_DEFAULT_MAX_RETRY_MS;
    uint64_t delay = webhook_retry_delay_ms(c->failures, cap);
    log_warn("webhook consumer=%s event=post-failed error=\"%s\" failures=%u retry_in=%llums",
             c->cw->name, why, c->failures, (unsigned long long)delay);
    const char *v[2] = {c->cw->name, why};
    struct reply *r = reply_new(c);
    if (db_exec(c->w->db, "wh_failed", 2, v, NULL, NULL, 0, on_failed_recorded, r) != 0)
        free(r);
    wait_then(c, delay, C_POST);
}

static const char *
req_error_name(enum evhttp_request_error e)
{
    switch (e) {
    case EVREQ_HTTP_TIMEOUT:
        return "timed out";
    case EVREQ_HTTP_EOF:
        return "connection closed";
    case EVREQ_HTTP_INVALID_HEADER:
        return "invalid reply";
    case EVREQ_HTTP_BUFFER_ERROR:
        return "connection failed";
    case EVREQ_HTTP_REQUEST_CANCEL:
        return "cancelled";
    case EVREQ_HTTP_DATA_TOO_LONG:
        return "reply too long";
    }
    return "failed";
}

static void
on_http_error(enum evhttp_request_error e, void *arg)
{
    struct reply *r = arg;
    if (r->gen == r->c->gen)
        r->c->req_error = req_error_name(e);
}

static void
on_http(struct evhttp_request *req, void *arg)
{
    struct reply *r = arg;
    struct evhttp_connection *conn = r->conn;
    struct wproc *w = r->c->w;
    if (conn && r->c->conn == conn)
        r->c->conn = NULL; /* freed below, after the reason is read */
    struct consumer *c = reply_take(r);
    if (!c) {
        if (conn)
            util_defer_free(w->base, conn_free_cb, conn);
        return;
    }
    int code = req ? evhttp_request_get_response_code(req) : 0;
    char why[WEBHOOK_ERR_LEN];
    why[0] = '\0';
    if (code == 0 && conn) {
        /* the handshake's reason, certificate verification first */
        char tls[WEBHOOK_ERR_LEN - 8];
        tls_client_failure(evhttp_connection_get_bufferevent(conn), tls, sizeof tls);
        if (strncmp(tls, "certificate", 11) == 0 || strncmp(tls, "error:", 6) == 0)
            snprintf(why, sizeof why, "TLS: %s", tls);
    }
    if (conn)
        util_defer_free(w->base, conn_free_cb, conn);
    if (code >= 200 && code < 300) {
        c->failures = 0;
        consumer_enter(c, C_ADVANCE);
        return;
    }
    if (why[0] == '\0' && code == 0)
        snprintf(why, sizeof why, "no response (%s)",
                 c->req_error ? c->req_error : "connection failed or timed out");
    else if (why[0] == '\0')
        snprintf(why, sizeof why, "HTTP %d", code);
    post_failed(c, why);
}

/* ---- the state machine ---- */

static void
do_post(struct consumer *c)
{
    char err[WEBHOOK_ERR_LEN];
    if (!consumer_conn(c, err, sizeof err)) {
        post_failed(c, err);
        return;
    }
    c->req_error = NULL;
    struct reply *r = reply_new(c);
    if (c->url.https)
        r->conn = c->conn;
    struct evhttp_request *req = evhttp_request_new(on_http, r);
    PGMTA_ASSERT(req != NULL);
    evhttp_request_set_error_cb(req, on_http_error);
    char ts[32], sig[80];
    snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
    size_t len = strlen(c->events);
    webhook_sign(c->key, c->keylen, ts, c->events, len, sig, sizeof sig);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char hostport[300];
    bool v6 = strchr(c->url.host, ':') != NULL;
    snprintf(hostport, sizeof hostport, "%s%s%s:%u", v6 ? "[" : "", c->url.host, v6 ? "]" : "",
             c->url.port);
    evhttp_add_header(h, "Host", hostport);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "User-Agent", "pgmta/" PGMTA_VERSION);
    evhttp_add_header(h, "X-Pgmta-Consumer", c->cw->name);
    if (c->w->conf->node_name)
        evhttp_add_header(h, "X-Pgmta-Node", c->w->conf->node_name);
    evhttp_add_header(h, "X-Pgmta-Timestamp", ts);
    evhttp_add_header(h, "X-Pgmta-Signature", sig);
    evbuffer_add(evhttp_request_get_output_buffer(req), c->events, len);
    if (evhttp_make_request(c->conn, req, EVHTTP_REQ_POST, c->url.path) != 0) {
        /* libevent freed the request; the reply will not come */
        free(r);
        consumer_conn_drop(c);
        post_failed(c, "cannot send the request");
    }
}

static void
consumer_enter(struct consumer *c, enum cstate st)
{
    log_trace("webhook consumer=%s state=%s->%s", c->cw->name, cstate_names[c->state],
              cstate_names[st]);
    c->state = st;
    struct wproc *w = c->w;
    struct reply *r;
    switch (st) {
    case C_OFF:
    case C_WAIT:
        return;
    case C_POST:
        do_post(c);
        return;
    case C_LOCK: {
        const char *v[1] = {c->cw->name};
        r = reply_new(c);
        if (db_exec(w->db, "wh_lock", 1, v, NULL, NULL, 0, on_lock, r) != 0)
            free(r); /* the ready callback starts over */
        return;
    }
    case C_FETCH: {
        char batch[16];
        snprintf(batch, sizeof batch, "%u", c->cw->batch ? c->cw->batch : WEBHOOK_DEFAULT_BATCH);
        const char *v[4] = {c->cw->name, c->cw->types, c->cw->job_prefix, batch};
        r = reply_new(c);
        if (db_exec(w->db, "wh_next", 4, v, NULL, NULL, 0, on_fetch, r) != 0)
            free(r);
        return;
    }
    case C_ADVANCE: {
        char n[16];
        snprintf(n, sizeof n, "%d", c->n);
        const char *v[4] = {c->cw->name, c->pos_time, c->pos_id, n};
        r = reply_new(c);
        if (db_exec(w->db, "wh_advance", 4, v, NULL, NULL, 0, on_advance, r) != 0)
            free(r);
        return;
    }
    }
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct consumer *c = arg;
    if (c->state == C_WAIT)
        consumer_enter(c, c->after_wait);
}

/* A new database connection: the old one's locks are gone, so every consumer
 * starts over from LOCK; a batch in flight is dropped (its cursor was not
 * advanced, so it is fetched again: at least once). */
static void
on_db_ready(struct db *db, void *arg)
{
    (void)db;
    struct wproc *w = arg;
    log_info("webhook event=db-ready consumers=%zu", w->ncs);
    for (size_t i = 0; i < w->ncs; i++) {
        struct consumer *c = &w->cs[i];
        if (c->state == C_OFF && !c->key)
            continue;
        c->gen++;
        if (c->url.https)
            c->conn = NULL; /* a POST in flight frees its own connection */
        evtimer_del(c->timer);
        batch_clear(c);
        consumer_enter(c, C_LOCK);
    }
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct wproc *w = arg;
    log_info("webhook event=stopping signal=%s", sig == SIGHUP ? "SIGHUP" : "SIGTERM");
    event_base_loopbreak(w->base);
}

int
webhook_run(struct conf *conf, const char *name, unsigned index)
{
    (void)name;
    (void)index;
    signal(SIGPIPE, SIG_IGN);
    struct wproc w = {.conf = conf};
    w.base = event_base_new();
    if (!w.base || !conf->database_url) {
        log_error("webhook event=cannot-start");
        conf_free(conf);
        return 1;
    }
    w.dns = evdns_base_new(w.base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    static const int sigs[3] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < 3; i++) {
        w.signals[i] = evsignal_new(w.base, sigs[i], on_signal, &w);
        PGMTA_ASSERT(w.signals[i] != NULL && evsignal_add(w.signals[i], NULL) == 0);
    }
    w.db = db_new(w.base, conf->database_url, "pgmtad-webhooks");
    db_prepare(w.db, "wh_lock", "SELECT mta.webhook_lock($1)", 1);
    db_prepare(w.db, "wh_next",
               "SELECT events, n, pos_time, pos_id FROM mta.webhook_next($1, $2, $3, $4::int)", 4);
    db_prepare(w.db, "wh_advance",
               "SELECT mta.webhook_advance($1, $2::timestamptz, $3::bigint, $4::int)", 4);
    db_prepare(w.db, "wh_failed", "SELECT mta.webhook_failed($1, $2)", 2);
    db_set_ready_cb(w.db, on_db_ready, &w);

    w.ncs = conf->nwebhooks;
    w.cs = xcalloc(w.ncs ? w.ncs : 1, sizeof *w.cs);
    size_t usable = 0;
    for (size_t i = 0; i < w.ncs; i++) {
        struct consumer *c = &w.cs[i];
        c->w = &w;
        c->cw = &conf->webhooks[i];
        c->timer = evtimer_new(w.base, on_timer, c);
        PGMTA_ASSERT(c->timer != NULL);
        char err[WEBHOOK_ERR_LEN] = "";
        if (consumer_setup(c, err, sizeof err) != 0) {
            log_error("webhook consumer=%s event=disabled error=\"%s\"", c->cw->name, err);
            free(c->key);
            c->key = NULL;
            continue;
        }
        usable++;
    }
    log_info("webhook event=started pid=%d consumers=%zu", (int)getpid(), usable);
    db_connect(w.db);
    event_base_dispatch(w.base);

    db_free(w.db);
    for (size_t i = 0; i < w.ncs; i++) {
        struct consumer *c = &w.cs[i];
        if (c->conn)
            evhttp_connection_free(c->conn);
        event_free(c->timer);
        batch_clear(c);
        free(c->key);
        webhook_url_free(&c->url);
    }
    free(w.cs);
    if (w.dns)
        evdns_base_free(w.dns, 0);
    for (size_t i = 0; i < 3; i++)
        event_free(w.signals[i]);
    util_defer_base_free(w.base);
    event_base_free(w.base);
    conf_free(conf);
    return 0;
}
