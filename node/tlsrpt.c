/* tlsrpt: the daily TLS-RPT job (see tlsrpt.h and README, TLS-RPT).
 *
 * Ownership: struct tlsrpt owns its timer, an evdns base for https: hosts
 * and the reports of the round in flight. A report owns its TXT request,
 * its POSTs (each with its own https connection) and the rua URIs done;
 * it is freed when mta.tlsrpt_done has answered. The database answers
 * come through db_exec (NULL when the connection went: the report is then
 * claimable again once its claim expires). No transaction is open while a
 * lookup, an enqueue or a POST is in flight: the claim commits first. */
#include "tlsrpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <zlib.h>

#include "db.h"
#include "dns.h"
#include "log.h"
#include "mime.h"
#include "tls.h"
#include "util.h"
#include "webhook.h"

#define TLSRPT_CLAIM_LIMIT "20"
#define TLSRPT_HTTP_TIMEOUT_S 30
#define TLSRPT_ERR_LEN 256
/* How long after midnight (UTC) the previous day is reported. */
#define TLSRPT_DAY_SETTLE_S 900

struct report;

struct post {
    struct report *r;
    struct evhttp_connection *conn;
    char *rua;
    struct post *next;
};

struct report {
    struct tlsrpt *t;
    char *domain, *report_id, *json;
    char *done[TLSRPT_MAX_RUA]; /* rua URIs that took it (before or now) */
    size_t ndone;
    char *prev_done; /* from the database, separated by spaces */
    struct dns_txt_request *txt;
    struct post *posts;
    unsigned pending; /* lookups, enqueues and POSTs not answered */
    char error[TLSRPT_ERR_LEN];
    struct report *next;
};

struct tlsrpt {
    struct event_base *base;
    struct dns *dns;
    struct evdns_base *evdns;
    struct db *(*pick_db)(void *arg);
    void *arg;
    const struct conf *conf;
    char *node;
    struct event *timer;
    char day[16];
    char built_day[16]; /* the day this node's claim has built */
    bool building;      /* the claim in flight builds day */
    bool busy;          /* a round is in flight */
    bool closing;       /* tlsrpt_stop: no new request */
    struct report *reports;
};

/* ---- gzip ---- */

int
tlsrpt_gzip(struct buf *out, const void *data, size_t n, time_t mtime)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    /* 16 + MAX_WBITS: the gzip wrapper (RFC 1952) with its CRC-32 */
    if (deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) !=
        Z_OK)
        return -1;
    gz_header h;
    memset(&h, 0, sizeof h);
    h.time = mtime > 0 ? (uLong)mtime : 0;
    h.os = 255; /* unknown */
    if (deflateSetHeader(&z, &h) != Z_OK) {
        deflateEnd(&z);
        return -1;
    }
    z.next_in = (Bytef *)(uintptr_t)data;
    z.avail_in = (uInt)n;
    unsigned char chunk[16384];
    int rc;
    do {
        z.next_out = chunk;
        z.avail_out = sizeof chunk;
        rc = deflate(&z, Z_FINISH);
        if (rc != Z_OK && rc != Z_STREAM_END && rc != Z_BUF_ERROR) {
            deflateEnd(&z);
            return -1;
        }
        buf_append(out, chunk, sizeof chunk - z.avail_out);
    } while (rc != Z_STREAM_END);
    deflateEnd(&z);
    return 0;
}

/* ---- the record ---- */

int
tlsrpt_parse_record(const char *txt, char **out, size_t max)
{
    const char *p = txt;
    while (*p == ' ' || *p == '\t')
        p++;
    if (strncmp(p, "v=TLSRPTv1", 10) != 0 || (p[10] && p[10] != ';' && p[10] != ' '))
        return -1;
    size_t n = 0;
    p += 10;
    while (*p) {
        while (*p == ';' || *p == ' ' || *p == '\t')
            p++;
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > 4 && strncasecmp(p, "rua=", 4) == 0) {
            const char *u = p + 4;
            const char *stop = p + len;
            while (u < stop && n < max) {
                while (u < stop && (*u == ',' || *u == ' ' || *u == '\t'))
                    u++;
                const char *e = u;
                while (e < stop && *e != ',' && *e != ' ' && *e != '\t')
                    e++;
                if (e > u)
                    out[n++] = xstrndup(u, (size_t)(e - u));
                u = e;
            }
        }
        p += len;
    }
    return (int)n;
}

/* ---- reports ---- */

static void tlsrpt_round_end(struct tlsrpt *t);

static void
conn_free_cb(void *p)
{
    evhttp_connection_free(p);
}

static void
report_free(struct report *r)
{
    for (struct report **pp = &r->t->reports; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    }
    while (r->posts) {
        struct post *p = r->posts;
        r->posts = p->next;
        /* from the loop: report_free may run inside the POST's callback */
        if (p->conn)
            util_defer_free(r->t->base, conn_free_cb, p->conn);
        free(p->rua);
        free(p);
    }
    if (r->txt)
        dns_txt_cancel(r->txt);
    for (size_t i = 0; i < r->ndone; i++)
        free(r->done[i]);
    free(r->domain);
    free(r->report_id);
    free(r->json);
    free(r->prev_done);
    free(r);
}

static void
on_done_recorded(const PGresult *res, void *arg)
{
    struct report *r = arg;
    struct tlsrpt *t = r->t;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("tlsrpt domain=%s event=done-not-recorded error=\"%s\"", r->domain,
                 res ? PQresultErrorMessage(res) : "connection lost");
    report_free(r);
    if (!t->reports)
        tlsrpt_round_end(t);
}

static void
report_fail(struct report *r, const char *fmt, const char *what)
{
    if (!r->error[0])
        snprintf(r->error, sizeof r->error, fmt, what);
}

static void
report_ok(struct report *r, const char *rua)
{
    if (r->ndone < TLSRPT_MAX_RUA)
        r->done[r->ndone++] = xstrdup(rua);
}

/* One answer less to wait for; the last one records the round. */
static void
report_settle(struct report *r)
{
    PGMTA_ASSERT(r->pending > 0);
    if (--r->pending > 0)
        return;
    struct tlsrpt *t = r->t;
    struct buf arr;
    buf_init(&arr);
    buf_puts(&arr, "{");
    for (size_t i = 0; i < r->ndone; i++) {
        if (i)
            buf_puts(&arr, ",");
        db_array_append_text(&arr, r->done[i]);
    }
    buf_puts(&arr, "}");
    buf_append(&arr, "", 1);
    uint64_t iv = t->conf->tls_report_interval_ms ? t->conf->tls_report_interval_ms
                                                  : TLSRPT_DEFAULT_INTERVAL_MS;
    char retry[32];
    snprintf(retry, sizeof retry, "%llu", (unsigned long long)((iv + 999) / 1000));
    const char *vals[6] = {r->domain, t->day, t->node, arr.data, r->error[0] ? r->error : NULL,
                           retry};
    if (r->error[0])
        log_warn("tlsrpt domain=%s day=%s event=not-sent error=\"%s\"", r->domain, t->day,
                 r->error);
    else
        log_info("tlsrpt domain=%s day=%s event=sent rua=%zu", r->domain, t->day, r->ndone);
    struct db *db = t->closing ? NULL : t->pick_db(t->arg);
    int rc = db ? db_exec(db, "tlsrpt_done", 6, vals, NULL, NULL, 0, on_done_recorded, r) : -1;
    buf_free(&arr);
    if (rc != 0) {
        /* the claim expires by itself: another round sends it */
        report_free(r);
        if (!t->reports)
            tlsrpt_round_end(t);
    }
}

static bool
report_done_before(const struct report *r, const char *rua)
{
    const char *p = r->prev_done;
    size_t n = strlen(rua);
    while (p && *p) {
        const char *e = strchr(p, ' ');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && memcmp(p, rua, n) == 0)
            return true;
        p += len + (e ? 1 : 0);
    }
    return false;
}

/* The attachment's name (RFC 8460 §5.3): submitter!domain!begin!end!id */
static void
report_filename(struct buf *out, const struct report *r, const char *submitter, time_t begin)
{
    buf_printf(out, "%s!%s!%lld!%lld!", submitter, r->domain, (long long)begin,
               (long long)(begin + 86399));
    for (const char *p = r->report_id; *p; p++) {
        char c = *p;
        buf_append(out,
                   (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                           c == '.' || c == '-' || c == '_'
                       ? &c
                       : "_",
                   1);
    }
    buf_puts(out, ".json.gz");
}

static time_t
day_start(const char *day)
{
    struct tm tm = {0};
    if (sscanf(day, "%d-%d-%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday) != 3)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return timegm(&tm);
}

/* The message of RFC 8460 §5.3 to TO, the report gzipped and in base64. */
static void
report_message(struct buf *out, const struct report *r, const char *to, const struct buf *gz)
{
    const struct tlsrpt *t = r->t;
    const char *submitter =
        t->conf->tls_report_submitter ? t->conf->tls_report_submitter : t->conf->node_name;
    time_t now = time(NULL);
    char date[64];
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
    char boundary[64];
    snprintf(boundary, sizeof boundary, "tlsrpt-%08lx%08lx", (unsigned long)random(),
             (unsigned long)random());
    const char *at = strrchr(t->conf->tls_report_from, '@');
    buf_printf(out, "From: %s\r\nTo: %s\r\nDate: %s\r\n", t->conf->tls_report_from, to, date);
    buf_printf(out, "Message-ID: <%s.%08lx@%s>\r\n", boundary, (unsigned long)random(),
               at ? at + 1 : submitter);
    buf_printf(out, "Subject: Report Domain: %s Submitter: %s Report-ID: <%s>\r\n", r->domain,
               submitter, r->report_id);
    buf_printf(out, "TLS-Report-Domain: %s\r\nTLS-Report-Submitter: %s\r\n", r->domain, submitter);
    buf_printf(out,
               "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=\"tlsrpt\";\r\n"
               " boundary=\"%s\"\r\n\r\n",
               boundary);
    buf_printf(out,
               "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
               "This is an aggregate TLS report (RFC 8460) from %s\r\nfor %s, day %s (UTC).\r\n"
               "\r\n",
               boundary, submitter, r->domain, t->day);
    buf_printf(out,
               "--%s\r\nContent-Type: application/tlsrpt+gzip\r\n"
               "Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment;\r\n"
               " filename=\"",
               boundary);
    report_filename(out, r, submitter, day_start(t->day));
    buf_puts(out, "\"\r\n\r\n");
    mime_base64_encode(out, gz->data, gz->len);
    buf_printf(out, "\r\n--%s--\r\n", boundary);
}

struct enq {
    struct report *r;
    char *rua;
};

static void
on_enqueued(const PGresult *res, void *arg)
{
    struct enq *q = arg;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
        report_ok(q->r, q->rua);
    else
        report_fail(q->r, "%s", res ? PQresultErrorMessage(res) : "enqueue: connection lost");
    struct report *r = q->r;
    free(q->rua);
    free(q);
    report_settle(r);
}

static void
send_mailto(struct report *r, const char *rua, const struct buf *gz)
{
    char *to = xstrdup(rua + 7);
    to[strcspn(to, "?")] = '\0';
    struct buf msg, rcpts;
    buf_init(&msg);
    buf_init(&rcpts);
    report_message(&msg, r, to, gz);
    buf_append(&msg, "", 1);
    buf_puts(&rcpts, "{");
    db_array_append_text(&rcpts, to);
    buf_puts(&rcpts, "}");
    buf_append(&rcpts, "", 1);
    const char *vals[3] = {r->t->conf->tls_report_from, rcpts.data, msg.data};
    struct enq *q = xcalloc(1, sizeof *q);
    q->r = r;
    q->rua = xstrdup(rua);
    struct db *db = r->t->closing ? NULL : r->t->pick_db(r->t->arg);
    r->pending++;
    if (!db || db_exec(db, "tlsrpt_enqueue", 3, vals, NULL, NULL, 0, on_enqueued, q) != 0) {
        r->pending--;
        report_fail(r, "%s: no database connection", rua);
        free(q->rua);
        free(q);
    }
    buf_free(&msg);
    buf_free(&rcpts);
    free(to);
}

static void
on_http(struct evhttp_request *req, void *arg)
{
    struct post *p = arg;
    struct report *r = p->r;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    if (code >= 200 && code < 300) {
        report_ok(r, p->rua);
    } else if (code == 0) {
        char tls[TLSRPT_ERR_LEN - 64];
        tls_client_failure(evhttp_connection_get_bufferevent(p->conn), tls, sizeof tls);
        char why[TLSRPT_ERR_LEN];
        snprintf(why, sizeof why, "%s: no response%s%s", p->rua, tls[0] ? ": " : "", tls);
        report_fail(r, "%s", why);
    } else {
        char why[TLSRPT_ERR_LEN];
        snprintf(why, sizeof why, "%s: HTTP %d", p->rua, code);
        report_fail(r, "%s", why);
    }
    /* the connection is freed with the report, outside evhttp's callback */
    report_settle(r);
}

static void
send_https(struct report *r, const char *rua, const struct buf *gz)
{
    struct tlsrpt *t = r->t;
    struct webhook_url u;
    char err[TLSRPT_ERR_LEN - 64];
    if (strncasecmp(rua, "https:", 6) != 0 || webhook_url_parse(rua, &u, err, sizeof err) != 0) {
        report_fail(r, "%s: not an https URL", rua);
        return;
    }
    struct bufferevent *bev =
        tls_client_socket_new(t->base, u.host, t->conf->tls_ca_file, err, sizeof err);
    struct evhttp_connection *conn = bev ? evhttp_connection_base_bufferevent_new(
                                               t->base, t->evdns, bev, u.host, (uint16_t)u.port)
                                         : NULL;
    if (!conn) {
        if (bev)
            bufferevent_free(bev);
        report_fail(r, "%s: cannot connect", rua);
        webhook_url_free(&u);
        return;
    }
    struct timeval tv = {TLSRPT_HTTP_TIMEOUT_S, 0};
    evhttp_connection_set_timeout_tv(conn, &tv);
    evhttp_connection_set_retries(conn, 0);
    struct post *p = xcalloc(1, sizeof *p);
    p->r = r;
    p->conn = conn;
    p->rua = xstrdup(rua);
    p->next = r->posts;
    r->posts = p;
    struct evhttp_request *req = evhttp_request_new(on_http, p);
    PGMTA_ASSERT(req != NULL);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    char hostport[300];
    bool v6 = strchr(u.host, ':') != NULL;
    snprintf(hostport, sizeof hostport, "%s%s%s:%u", v6 ? "[" : "", u.host, v6 ? "]" : "", u.port);
    evhttp_add_header(h, "Host", hostport);
    evhttp_add_header(h, "Content-Type", "application/tlsrpt+gzip");
    evhttp_add_header(h, "User-Agent", "pgmta/" PGMTA_VERSION);
    evbuffer_add(evhttp_request_get_output_buffer(req), gz->data, gz->len);
    r->pending++;
    if (evhttp_make_request(conn, req, EVHTTP_REQ_POST, u.path) != 0) {
        /* libevent freed the request; its callback will not come */
        r->pending--;
        report_fail(r, "%s: cannot send the request", rua);
    }
    webhook_url_free(&u);
}

static void
on_txt(const struct dns_txt_result *res, void *arg)
{
    struct report *r = arg;
    r->txt = NULL;
    char *rua[TLSRPT_MAX_RUA];
    int n = -1;
    for (size_t i = 0; res->status == DNS_OK && i < res->ntexts && n < 0; i++)
        n = tlsrpt_parse_record(res->texts[i], rua, TLSRPT_MAX_RUA);
    if (res->status == DNS_TEMPFAIL)
        report_fail(r, "_smtp._tls TXT: %s", res->error ? res->error : "temporary failure");
    else if (n <= 0)
        report_fail(r, "%s", "no _smtp._tls TXT record with v=TLSRPTv1 and a rua");
    struct buf gz;
    buf_init(&gz);
    if (n > 0 && tlsrpt_gzip(&gz, r->json, strlen(r->json), time(NULL)) != 0) {
        report_fail(r, "%s", "the report could not be compressed");
        for (int i = 0; i < n; i++)
            free(rua[i]);
        n = 0;
    }
    if (n > 0) {
        for (int i = 0; i < n; i++) {
            if (report_done_before(r, rua[i]))
                report_ok(r, rua[i]);
            else if (strncasecmp(rua[i], "mailto:", 7) == 0)
                send_mailto(r, rua[i], &gz);
            else
                send_https(r, rua[i], &gz);
            free(rua[i]);
        }
    }
    buf_free(&gz);
    report_settle(r);
}

/* ---- the round ---- */

void
tlsrpt_prepare(struct db *db)
{
    db_prepare(db, "tlsrpt_claim",
               "SELECT policy_domain, report_id, report, done_rua "
               "FROM mta.tlsrpt_claim($1, $2::date, $3, $4, $5::bool, $6::int)",
               6);
    db_prepare(db, "tlsrpt_done",
               "SELECT mta.tlsrpt_done($1, $2::date, $3, $4::text[], $5, $6::int)", 6);
    db_prepare(db, "tlsrpt_enqueue", "SELECT mta.enqueue($1, $2::text[], $3::text)", 3);
}

static void
on_claim(const PGresult *res, void *arg)
{
    struct tlsrpt *t = arg;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_warn("tlsrpt day=%s event=claim-failed error=\"%s\"", t->day,
                 res ? PQresultErrorMessage(res) : "connection lost");
        tlsrpt_round_end(t);
        return;
    }
    if (t->building)
        memcpy(t->built_day, t->day, sizeof t->day);
    int n = t->closing ? 0 : PQntuples(res);
    for (int i = 0; i < n; i++) {
        struct report *r = xcalloc(1, sizeof *r);
        r->t = t;
        r->domain = xstrdup(PQgetvalue(res, i, 0));
        r->report_id = xstrdup(PQgetvalue(res, i, 1));
        r->json = xstrdup(PQgetvalue(res, i, 2));
        r->prev_done = xstrdup(PQgetvalue(res, i, 3));
        r->next = t->reports;
        t->reports = r;
    }
    if (!t->reports) {
        tlsrpt_round_end(t);
        return;
    }
    for (struct report *r = t->reports; r; r = r->next) {
        char *name = xasprintf("_smtp._tls.%s", r->domain);
        r->pending = 1;
        r->txt = dns_resolve_txt(t->dns, name, on_txt, r);
        free(name);
    }
}

static void
tlsrpt_schedule(struct tlsrpt *t)
{
    uint64_t ms = t->conf->tls_report_interval_ms ? t->conf->tls_report_interval_ms
                                                  : TLSRPT_DEFAULT_INTERVAL_MS;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(t->timer, &tv);
}

static void
tlsrpt_round_end(struct tlsrpt *t)
{
    t->busy = false;
    if (!t->closing)
        tlsrpt_schedule(t);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct tlsrpt *t = arg;
    if (t->busy)
        return;
    /* always the previous UTC day (the database refuses a day not over),
     * once it has been over for a while: attempts that were under way at
     * midnight have been recorded by then */
    time_t y = time(NULL) - 86400 - TLSRPT_DAY_SETTLE_S;
    struct tm tm;
    gmtime_r(&y, &tm);
    strftime(t->day, sizeof t->day, "%Y-%m-%d", &tm);
    const struct conf *c = t->conf;
    t->building = strcmp(t->built_day, t->day) != 0;
    const char *vals[6] = {t->node,
                           t->day,
                           c->tls_report_org,
                           c->tls_report_contact ? c->tls_report_contact : c->tls_report_org,
                           t->building ? "true" : "false",
                           TLSRPT_CLAIM_LIMIT};
    struct db *db = t->pick_db(t->arg);
    if (!db || db_exec(db, "tlsrpt_claim", 6, vals, NULL, NULL, 0, on_claim, t) != 0) {
        tlsrpt_schedule(t);
        return;
    }
    t->busy = true;
}

struct tlsrpt *
tlsrpt_new(struct event_base *base, struct dns *dns, struct db *(*pick_db)(void *arg), void *arg,
           const struct conf *conf, const char *node)
{
    if (!conf->tls_report_org)
        return NULL;
    struct tlsrpt *t = xcalloc(1, sizeof *t);
    t->base = base;
    t->dns = dns;
    t->pick_db = pick_db;
    t->arg = arg;
    t->conf = conf;
    t->node = xstrdup(node);
    /* https: hosts resolved by the node's own resolvers */
    t->evdns = evdns_base_new(base, conf->ndns_servers ? 0 : EVDNS_BASE_INITIALIZE_NAMESERVERS);
    PGMTA_ASSERT(t->evdns != NULL);
    for (size_t i = 0; i < conf->ndns_servers; i++)
        evdns_base_nameserver_ip_add(t->evdns, conf->dns_servers[i]);
    t->timer = evtimer_new(base, on_timer, t);
    PGMTA_ASSERT(t->timer != NULL);
    tlsrpt_schedule(t);
    log_info("tlsrpt event=started node=%s", node);
    return t;
}

void
tlsrpt_stop(struct tlsrpt *t)
{
    if (!t)
        return;
    t->closing = true;
    evtimer_del(t->timer);
}

void
tlsrpt_free(struct tlsrpt *t)
{
    if (!t)
        return;
    while (t->reports)
        report_free(t->reports);
    event_free(t->timer);
    util_defer_run(t->base); /* the https connections, before their resolver */
    evdns_base_free(t->evdns, 0);
    free(t->node);
    free(t);
}
