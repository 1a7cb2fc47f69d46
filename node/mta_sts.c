/* mta_sts: policy lookup, shared cache and fetch (see mta_sts.h).
 *
 * Ownership: struct mta_sts owns its entries, one per domain asked for,
 * kept on one list (at most MTA_STS_MEM_ENTRIES; an idle one is reused when
 * full). An entry owns its answer (the policy that applies, valid until
 * valid_until_ms on the monotonic clock), the lookup in progress (DNS
 * request, HTTP connection) and its waiters. A lookup is a short chain:
 *   TXT (_mta-sts.<domain>) -> DB (mta.mta_sts_get: the cached policy and
 *   whether to fetch) -> [HOST (mta-sts.<domain>) -> FETCH (HTTPS GET) ->
 *   mta.mta_sts_put or mta.mta_sts_failed] -> IDLE.
 * Entries are never freed while a lookup runs, so the answers of the DNS,
 * the database and evhttp carry the entry itself. A request (a waiter) is
 * answered from its own event, never from within mta_sts_get nor from a
 * list being walked; cancelling frees it wherever it is. No transaction is
 * open across the fetch: get, then put or failed, are single statements. */
#include "mta_sts.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <libpq-fe.h>

#include "db.h"
#include "dns.h"
#include "log.h"
#include "tls.h"
#include "util.h"

#define MTA_STS_PORT 443
#define MTA_STS_PATH "/.well-known/mta-sts.txt"
#define MTA_STS_ERR_LEN 300
/* DNS trouble or no database: ask again soon */
#define MTA_STS_RETRY_S 5u
/* how old the list of domains with a shared policy may get */
#define MTA_STS_KNOWN_MS 60000u

enum estate { E_IDLE, E_TXT, E_DB, E_HOST, E_FETCH };
static const char *const estate_names[] = {"idle", "txt", "db", "host", "fetch"};

struct mta_sts_request {
    struct entry *e;
    bool waiting; /* on e's waiters; else its event is active */
    mta_sts_cb cb;
    void *arg;
    struct event *ev;
    struct mta_sts_request *next;
};

struct entry {
    struct mta_sts *m;
    char *domain;
    enum estate state;
    bool answered; /* the answer below is usable */
    uint64_t valid_until_ms;
    struct mta_sts_policy policy; /* mode NONE: none applies */
    const char *failure;
    char error[MTA_STS_ERR_LEN];
    /* the lookup in progress */
    bool have_txt;
    char txt_id[MTA_STS_ID_MAX + 1];
    uint32_t txt_ttl;
    bool have_cached;
    struct mta_sts_policy cached;
    uint32_t cached_ttl_s;
    struct dns_txt_request *txtreq;
    struct dns_request *hostreq;
    struct evhttp_connection *conn;
    struct mta_sts_request *waiters;
    unsigned answering; /* requests whose event is active */
    struct entry *next;
};

struct mta_sts {
    struct event_base *base;
    struct dns *dns;
    struct db *(*pick_db)(void *arg);
    void *db_arg;
    char *node;
    char *ca_file;
    struct entry *entries;
    size_t nentries;
    /* The domains the shared cache holds a policy for (mta.mta_sts_domains),
     * sorted, loaded at most every MTA_STS_KNOWN_MS: a domain without a TXT
     * record that is not among them needs no statement of its own. */
    char **known;
    size_t nknown;
    bool known_valid, known_loading;
    uint64_t known_at_ms;
};

static void entry_enter(struct entry *e, enum estate st);

void
mta_sts_prepare(struct db *db)
{
    db_prepare(db, "mta_sts_get", "SELECT * FROM mta.mta_sts_get($1, $2, $3)", 3);
    db_prepare(db, "mta_sts_put", "SELECT mta.mta_sts_put($1, $2, $3, $4, $5::text[], $6::int)", 6);
    db_prepare(db, "mta_sts_failed", "SELECT mta.mta_sts_failed($1, $2, $3)", 3);
    db_prepare(db, "mta_sts_domains", "SELECT d FROM mta.mta_sts_domains() d ORDER BY 1", 0);
}

struct mta_sts *
mta_sts_new(struct event_base *base, struct dns *dns, struct db *(*pick_db)(void *arg), void *arg,
            const char *node, const char *ca_file)
{
    struct mta_sts *m = xcalloc(1, sizeof *m);
    m->base = base;
    m->dns = dns;
    m->pick_db = pick_db;
    m->db_arg = arg;
    m->node = xstrdup(node ? node : "");
    m->ca_file = ca_file ? xstrdup(ca_file) : NULL;
    return m;
}

static void
conn_free_cb(void *p)
{
    evhttp_connection_free(p);
}

static void
request_free(struct mta_sts_request *r)
{
    event_free(r->ev);
    free(r);
}

static void
entry_free(struct entry *e)
{
    while (e->waiters) {
        struct mta_sts_request *r = e->waiters;
        e->waiters = r->next;
        request_free(r);
    }
    dns_txt_cancel(e->txtreq);
    dns_cancel(e->hostreq);
    if (e->conn)
        evhttp_connection_free(e->conn);
    mta_sts_policy_clear(&e->policy);
    mta_sts_policy_clear(&e->cached);
    free(e->domain);
    free(e);
}

void
mta_sts_free(struct mta_sts *m)
{
    if (!m)
        return;
    while (m->entries) {
        struct entry *e = m->entries;
        m->entries = e->next;
        entry_free(e);
    }
    for (size_t i = 0; i < m->nknown; i++)
        free(m->known[i]);
    free(m->known);
    free(m->node);
    free(m->ca_file);
    free(m);
}

/* ---- the list of domains with a shared policy ---- */

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void
on_known(const PGresult *res, void *arg)
{
    struct mta_sts *m = arg;
    m->known_loading = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        m->known_valid = false; /* every domain asks the database again */
        return;
    }
    for (size_t i = 0; i < m->nknown; i++)
        free(m->known[i]);
    free(m->known);
    m->nknown = (size_t)PQntuples(res);
    m->known = xcalloc(m->nknown + 1, sizeof *m->known);
    for (size_t i = 0; i < m->nknown; i++)
        m->known[i] = xstrdup(PQgetvalue(res, (int)i, 0));
    qsort(m->known, m->nknown, sizeof *m->known, cmp_str); /* strcmp order, not the collation's */
    m->known_valid = true;
    m->known_at_ms = util_now_ms();
}

static void
known_refresh(struct mta_sts *m)
{
    if (m->known_loading || (m->known_valid && util_now_ms() - m->known_at_ms < MTA_STS_KNOWN_MS))
        return;
    struct db *db = m->pick_db(m->db_arg);
    if (db && db_exec(db, "mta_sts_domains", 0, NULL, NULL, NULL, 0, on_known, m) == 0)
        m->known_loading = true;
}

/* Can the shared cache hold a policy for DOMAIN? True unless a fresh list
 * says it does not. */
static bool
known_may_have(struct mta_sts *m, const char *domain)
{
    known_refresh(m);
    if (!m->known_valid || util_now_ms() - m->known_at_ms >= MTA_STS_KNOWN_MS)
        return true;
    return bsearch(&domain, m->known, m->nknown, sizeof *m->known, cmp_str) != NULL;
}

/* ---- answers ---- */

static void
on_request_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct mta_sts_request *r = arg;
    struct entry *e = r->e;
    e->answering--;
    struct mta_sts_result res = {
        .mode = e->policy.mode,
        .policy = &e->policy,
        .failure = e->failure,
        .error = e->error[0] ? e->error : NULL,
    };
    mta_sts_cb cb = r->cb;
    void *arg2 = r->arg;
    /* unlinked from the entry when it was activated */
    request_free(r);
    cb(&res, arg2);
}

/* Every waiter is answered from its own event (the callback rule, and no
 * callback runs while the list is being walked). */
static void
entry_answer_waiters(struct entry *e)
{
    while (e->waiters) {
        struct mta_sts_request *r = e->waiters;
        e->waiters = r->next;
        r->next = NULL;
        r->waiting = false;
        e->answering++;
        event_active(r->ev, 0, 0);
    }
}

static void
entry_done(struct entry *e, uint32_t keep_s)
{
    if (keep_s < 1)
        keep_s = 1;
    if (keep_s > MTA_STS_MEM_MAX_S)
        keep_s = MTA_STS_MEM_MAX_S;
    e->valid_until_ms = util_now_ms() + (uint64_t)keep_s * 1000;
    e->answered = true;
    log_debug("mta-sts domain=%s event=policy mode=%s mx=%zu failure=%s keep_s=%u", e->domain,
              mta_sts_mode_name(e->policy.mode), e->policy.nmx, e->failure ? e->failure : "-",
              keep_s);
    entry_enter(e, E_IDLE);
    entry_answer_waiters(e);
}

/* The answer: POLICY (taken) or none with FAILURE. */
static void
entry_set(struct entry *e, struct mta_sts_policy *policy, const char *failure, const char *error)
{
    mta_sts_policy_clear(&e->policy);
    if (policy) {
        e->policy = *policy;
        memset(policy, 0, sizeof *policy);
    }
    e->failure = failure;
    snprintf(e->error, sizeof e->error, "%s", error ? error : "");
}

static uint32_t
keep_for(const struct entry *e, uint32_t policy_ttl_s)
{
    uint32_t k = e->txt_ttl;
    if (policy_ttl_s && policy_ttl_s < k)
        k = policy_ttl_s;
    return k;
}

/* ---- the database ---- */

static void
ignore_result(const PGresult *res, void *arg)
{
    (void)arg;
    if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("mta-sts event=statement-failed error=\"%s\"", PQresultErrorMessage(res));
}

static void
db_note(struct entry *e, const char *stmt, int n, const char *const *v)
{
    struct db *db = e->m->pick_db(e->m->db_arg);
    if (db)
        db_exec(db, stmt, n, v, NULL, NULL, 0, ignore_result, NULL);
}

/* Reads mta.mta_sts_get's row: the valid cached policy, if any; returns
 * whether to fetch. */
static bool
take_cached(struct entry *e, const PGresult *res)
{
    mta_sts_policy_clear(&e->cached);
    e->have_cached = false;
    if (PQntuples(res) != 1 || PQnfields(res) < 6)
        return e->have_txt;
    bool fetch = strcmp(PQgetvalue(res, 0, 5), "t") == 0;
    if (PQgetisnull(res, 0, 0))
        return fetch;
    struct mta_sts_policy p = {0};
    if (!mta_sts_mode_parse(PQgetvalue(res, 0, 0), &p.mode))
        return e->have_txt;
    p.max_age_s = (uint32_t)strtoul(PQgetvalue(res, 0, 2), NULL, 10);
    const char *mx = PQgetvalue(res, 0, 1);
    while (*mx) {
        size_t n = strcspn(mx, " ");
        if (n && !mta_sts_policy_add_mx(&p, mx, n)) {
            mta_sts_policy_clear(&p);
            return e->have_txt; /* not what we store: fetch again */
        }
        mx += n;
        mx += strspn(mx, " ");
    }
    e->cached = p;
    e->have_cached = true;
    e->cached_ttl_s = (uint32_t)strtoul(PQgetvalue(res, 0, 3), NULL, 10);
    return fetch;
}

static void
use_cached(struct entry *e, const char *failure, const char *error)
{
    if (e->have_cached) {
        e->have_cached = false;
        entry_set(e, &e->cached, NULL, NULL);
        entry_done(e, keep_for(e, e->cached_ttl_s));
        return;
    }
    entry_set(e, NULL, failure, error);
    entry_done(e, failure ? MTA_STS_RETRY_S : keep_for(e, 0));
}

static void
on_db_get(const PGresult *res, void *arg)
{
    struct entry *e = arg;
    bool fetch;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_warn("mta-sts domain=%s event=cache-failed error=\"%s\"", e->domain,
                 res ? PQresultErrorMessage(res) : "no database connection");
        fetch = e->have_txt;
    } else {
        fetch = take_cached(e, res);
    }
    if (fetch && e->have_txt)
        entry_enter(e, E_HOST);
    else
        use_cached(e, NULL, NULL);
}

/* ---- the fetch ---- */

static void
fetch_failed(struct entry *e, const char *failure, const char *why)
{
    log_warn("mta-sts domain=%s event=fetch-failed failure=%s cached=%d error=\"%s\"", e->domain,
             failure, e->have_cached, why);
    char err[MTA_STS_ERR_LEN];
    snprintf(err, sizeof err, "%s: %s", failure, why);
    const char *v[3] = {e->domain, e->m->node, err};
    db_note(e, "mta_sts_failed", 3, v);
    /* RFC 8461 5.1: a valid cached policy stays in force */
    use_cached(e, failure, err);
}

static void
fetched(struct entry *e, const char *body, size_t len)
{
    struct mta_sts_policy p;
    char why[200];
    if (mta_sts_policy_parse(body, len, &p, why, sizeof why) != 0) {
        fetch_failed(e, "sts-policy-invalid", why);
        return;
    }
    struct buf mx;
    buf_init(&mx);
    buf_puts(&mx, "{");
    for (size_t i = 0; i < p.nmx; i++) {
        if (i)
            buf_puts(&mx, ",");
        db_array_append_text(&mx, p.mx[i]);
    }
    buf_puts(&mx, "}");
    char age[16];
    snprintf(age, sizeof age, "%u", p.max_age_s);
    const char *v[6] = {e->domain, e->m->node, e->txt_id, mta_sts_mode_name(p.mode), mx.data, age};
    db_note(e, "mta_sts_put", 6, v);
    buf_free(&mx);
    log_info("mta-sts domain=%s event=fetched id=%s mode=%s mx=%zu max_age=%u", e->domain,
             e->txt_id, mta_sts_mode_name(p.mode), p.nmx, p.max_age_s);
    uint32_t age_s = p.max_age_s;
    mta_sts_policy_clear(&e->cached);
    e->have_cached = false;
    entry_set(e, &p, NULL, NULL);
    entry_done(e, keep_for(e, age_s));
}

static void
on_http(struct evhttp_request *req, void *arg)
{
    struct entry *e = arg;
    struct evhttp_connection *conn = e->conn;
    e->conn = NULL;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    char why[MTA_STS_ERR_LEN];
    if (code == 0) {
        char tls[200];
        tls_client_failure(evhttp_connection_get_bufferevent(conn), tls, sizeof tls);
        snprintf(why, sizeof why, "https://mta-sts.%s: no response (%s)", e->domain, tls);
        util_defer_free(e->m->base, conn_free_cb, conn);
        fetch_failed(e, "sts-policy-fetch-error", why);
        return;
    }
    if (code != 200) {
        /* redirects are not followed (RFC 8461 3.3) */
        snprintf(why, sizeof why, "https://mta-sts.%s" MTA_STS_PATH ": HTTP %d", e->domain, code);
        util_defer_free(e->m->base, conn_free_cb, conn);
        fetch_failed(e, "sts-policy-fetch-error", why);
        return;
    }
    const char *ct = evhttp_find_header(evhttp_request_get_input_headers(req), "Content-Type");
    size_t ctl = ct ? strcspn(ct, "; \t") : 0;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (!ct || ctl != 10 || strncasecmp(ct, "text/plain", 10) != 0) {
        snprintf(why, sizeof why, "media type %.60s, not text/plain", ct ? ct : "missing");
        util_defer_free(e->m->base, conn_free_cb, conn);
        fetch_failed(e, "sts-policy-invalid", why);
        return;
    }
    char *body = xmalloc(len + 1);
    evbuffer_remove(in, body, len);
    body[len] = '\0';
    util_defer_free(e->m->base, conn_free_cb, conn);
    fetched(e, body, len);
    free(body);
}

/* The policy host's address is known: GET the policy from it over TLS,
 * verified against mta-sts.<domain> (RFC 8461 3.3). evhttp gets the
 * address as text, so it connects without a resolver of its own. */
static void
start_fetch(struct entry *e, const struct dns_result *res)
{
    char host[300], why[MTA_STS_ERR_LEN];
    snprintf(host, sizeof host, "mta-sts.%s", e->domain);
    if (res->status != DNS_OK || res->nhosts == 0 || res->hosts[0].naddrs == 0) {
        snprintf(why, sizeof why, "%.100s: %.190s", host, res->error ? res->error : "no address");
        fetch_failed(e, "sts-policy-fetch-error", why);
        return;
    }
    const struct sockaddr *sa = (const struct sockaddr *)&res->hosts[0].addrs[0].sa;
    char ip[INET6_ADDRSTRLEN];
    const void *a = sa->sa_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    inet_ntop(sa->sa_family, a, ip, sizeof ip);
    char err[200];
    struct bufferevent *bev =
        tls_client_socket_new(e->m->base, host, e->m->ca_file, err, sizeof err);
    if (!bev) {
        snprintf(why, sizeof why, "%.100s: %.190s", host, err);
        fetch_failed(e, "sts-policy-fetch-error", why);
        return;
    }
    e->conn = evhttp_connection_base_bufferevent_new(e->m->base, NULL, bev, ip, MTA_STS_PORT);
    if (!e->conn) {
        bufferevent_free(bev);
        fetch_failed(e, "sts-policy-fetch-error", "cannot create the https connection");
        return;
    }
    struct timeval tv = {MTA_STS_FETCH_TIMEOUT_MS / 1000, (MTA_STS_FETCH_TIMEOUT_MS % 1000) * 1000};
    evhttp_connection_set_timeout_tv(e->conn, &tv);
    evhttp_connection_set_retries(e->conn, 0);
    evhttp_connection_set_max_body_size(e->conn, MTA_STS_MAX_POLICY_BYTES);
    evhttp_connection_set_max_headers_size(e->conn, 16384);
    struct evhttp_request *req = evhttp_request_new(on_http, e);
    PGMTA_ASSERT(req != NULL);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Host", host);
    evhttp_add_header(h, "User-Agent", "pgmta/" PGMTA_VERSION);
    evhttp_add_header(h, "Connection", "close");
    if (evhttp_make_request(e->conn, req, EVHTTP_REQ_GET, MTA_STS_PATH) != 0) {
        util_defer_free(e->m->base, conn_free_cb, e->conn);
        e->conn = NULL;
        fetch_failed(e, "sts-policy-fetch-error", "cannot send the request");
    }
}

static void
on_host(const struct dns_result *res, void *arg)
{
    struct entry *e = arg;
    e->hostreq = NULL;
    entry_enter(e, E_FETCH);
    start_fetch(e, res);
}

/* ---- the TXT record ---- */

static void
on_txt(const struct dns_txt_result *res, void *arg)
{
    struct entry *e = arg;
    e->txtreq = NULL;
    e->have_txt = false;
    e->txt_id[0] = '\0';
    /* NXDOMAIN or no TXT: no policy announced (a cached one may still
     * apply); trouble: the same for now, asked again soon */
    e->txt_ttl = res->status == DNS_TEMPFAIL ? MTA_STS_RETRY_S : res->ttl;
    size_t nsts = 0;
    bool valid = false;
    for (size_t i = 0; i < res->ntexts; i++) {
        bool not_sts;
        const char *why;
        char id[MTA_STS_ID_MAX + 1];
        bool ok = mta_sts_txt_parse(res->texts[i], strlen(res->texts[i]), id, &not_sts, &why);
        if (not_sts)
            continue;
        nsts++;
        if (ok) {
            memcpy(e->txt_id, id, sizeof id);
            valid = true;
        } else {
            log_info("mta-sts domain=%s event=bad-txt error=\"%s\"", e->domain, why);
        }
    }
    /* exactly one valid STSv1 record, else none (RFC 8461 3.1) */
    e->have_txt = nsts == 1 && valid;
    entry_enter(e, E_DB);
}

/* ---- the entry's state machine ---- */

static void
entry_enter(struct entry *e, enum estate st)
{
    log_trace("mta-sts domain=%s state=%s->%s", e->domain, estate_names[e->state],
              estate_names[st]);
    e->state = st;
    switch (st) {
    case E_IDLE:
    case E_FETCH:
        return;
    case E_TXT: {
        char name[300];
        snprintf(name, sizeof name, "_mta-sts.%s", e->domain);
        e->txtreq = dns_resolve_txt(e->m->dns, name, on_txt, e);
        return;
    }
    case E_DB: {
        if (!e->have_txt && !known_may_have(e->m, e->domain)) {
            /* no policy announced and none shared: nothing to ask */
            mta_sts_policy_clear(&e->cached);
            e->have_cached = false;
            use_cached(e, NULL, NULL);
            return;
        }
        struct db *db = e->m->pick_db(e->m->db_arg);
        const char *v[3] = {e->domain, e->have_txt ? e->txt_id : NULL, e->m->node};
        if (!db || db_exec(db, "mta_sts_get", 3, v, NULL, NULL, 0, on_db_get, e) != 0) {
            /* without the database: fetch whenever a policy is announced */
            mta_sts_policy_clear(&e->cached);
            e->have_cached = false;
            if (e->have_txt)
                entry_enter(e, E_HOST);
            else
                use_cached(e, NULL, NULL);
        }
        return;
    }
    case E_HOST: {
        char host[300];
        snprintf(host, sizeof host, "mta-sts.%s", e->domain);
        struct dns_request *r = dns_resolve_host(e->m->dns, host, MTA_STS_PORT, on_host, e);
        if (e->state == E_HOST)
            e->hostreq = r;
        return;
    }
    }
}

/* ---- requests ---- */

static struct entry *
entry_get(struct mta_sts *m, const char *domain)
{
    struct entry *idle = NULL;
    for (struct entry *e = m->entries; e; e = e->next) {
        if (strcasecmp(e->domain, domain) == 0)
            return e;
        if (e->state == E_IDLE && !e->waiters && !e->answering)
            idle = e;
    }
    struct entry *e;
    if (m->nentries >= MTA_STS_MEM_ENTRIES && idle) {
        e = idle; /* reused: the list stays bounded */
        mta_sts_policy_clear(&e->policy);
        mta_sts_policy_clear(&e->cached);
        free(e->domain);
        struct entry *next = e->next;
        memset(e, 0, sizeof *e);
        e->next = next;
    } else {
        e = xcalloc(1, sizeof *e);
        e->next = m->entries;
        m->entries = e;
        m->nentries++;
    }
    e->m = m;
    e->domain = util_strlower(xstrdup(domain));
    return e;
}

struct mta_sts_request *
mta_sts_get(struct mta_sts *m, const char *domain, mta_sts_cb cb, void *arg)
{
    struct entry *e = entry_get(m, domain);
    struct mta_sts_request *r = xcalloc(1, sizeof *r);
    r->e = e;
    r->cb = cb;
    r->arg = arg;
    r->ev = event_new(m->base, -1, 0, on_request_event, r);
    PGMTA_ASSERT(r->ev != NULL);
    if (e->state == E_IDLE && e->answered && util_now_ms() < e->valid_until_ms) {
        e->answering++;
        event_active(r->ev, 0, 0);
        return r;
    }
    r->waiting = true;
    r->next = e->waiters;
    e->waiters = r;
    if (e->state == E_IDLE)
        entry_enter(e, E_TXT);
    return r;
}

void
mta_sts_cancel(struct mta_sts_request *r)
{
    if (!r)
        return;
    if (r->waiting) {
        for (struct mta_sts_request **p = &r->e->waiters; *p; p = &(*p)->next) {
            if (*p == r) {
                *p = r->next;
                break;
            }
        }
    } else {
        r->e->answering--;
    }
    request_free(r);
}
