/* http: the HTTP server of the admin API, the metrics, injection and the
 * dashboard (see http.h): the evhttp server and its listener, the access
 * checks (Host header, Bearer tokens) and the route table. The handlers
 * live in http_api.c (admin API, metrics, injection: everything that needs
 * the database), http_metrics.c (the Prometheus text) and http_files.c (the
 * dashboard's files); the replies' common form in http_reply.c.
 *
 * Ownership: struct http owns the evhttp server, its bound socket, the
 * http_conn that binds it and limits its connections (http_conn.h), the
 * token hashes, the allowed hosts, the dashboard directory's name and the
 * http_api with its database connection (only while listening). */
#include "http.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "hostport.h"
#include "http_api.h"
#include "http_conn.h"
#include "http_files.h"
#include "http_inject.h"
#include "http_reply.h"
#include "log.h"
#include "util.h"

#define TOKEN_HASH_LEN 32

struct http {
    struct event_base *base;
    struct evhttp *evh;
    struct http_conn *hc;
    struct http_conn_listen listen; /* listen.http */
    bool stopped;
    bool has_token;
    unsigned char token_hash[TOKEN_HASH_LEN];
    unsigned char (*inject_hashes)[TOKEN_HASH_LEN];
    size_t ninject_hashes;
    char **allowed_hosts;
    size_t nallowed_hosts;
    char *dashboard_dir;
    struct http_api *api;
};

#define M_GET (EVHTTP_REQ_GET | EVHTTP_REQ_HEAD)
#define M_POST EVHTTP_REQ_POST

static const struct route {
    const char *path;
    int methods;
    const char *allow;
    http_api_fn fn;
} routes[] = {
    {"/api/status", M_GET, "GET, HEAD", http_api_status},
    {"/api/queues", M_GET, "GET, HEAD", http_api_queues},
    {"/api/nodes", M_GET, "GET, HEAD", http_api_nodes},
    {"/api/jobs", M_GET, "GET, HEAD", http_api_jobs},
    {"/api/warmup", M_GET, "GET, HEAD", http_api_warmup},
    {"/api/stats", M_GET, "GET, HEAD", http_api_stats},
    {"/api/dashboard", M_GET, "GET, HEAD", http_api_dashboard},
    {"/api/pause", M_POST, "POST", http_api_pause},
    {"/api/resume", M_POST, "POST", http_api_resume},
    {"/api/reload", M_POST, "POST", http_api_reload},
    {"/metrics", M_GET, "GET, HEAD", http_api_metrics},
};

/* ---- access checks -------------------------------------------------------------- */

static void
token_hash(const char *token, unsigned char out[TOKEN_HASH_LEN])
{
    unsigned int len = 0;
    PGMTA_ASSERT(EVP_Digest(token, strlen(token), out, &len, EVP_sha256(), NULL) == 1 &&
                 len == TOKEN_HASH_LEN);
}

const char *
http_bearer_token(const char *v)
{
    if (!v || strncasecmp(v, "Bearer ", 7) != 0)
        return NULL;
    v += 7;
    while (*v == ' ')
        v++;
    return v;
}

/* "Authorization: Bearer TOKEN", compared in constant time (hashes of equal
 * length, so the token's length does not leak either). */
static bool
authorized(const struct http *h, struct evhttp_request *req)
{
    if (!h->has_token)
        return false;
    const char *a = http_bearer_token(
        evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization"));
    if (!a)
        return false;
    unsigned char got[TOKEN_HASH_LEN];
    token_hash(a, got);
    return CRYPTO_memcmp(got, h->token_hash, TOKEN_HASH_LEN) == 0;
}

/* An inject token (http.inject-tokens); never the admin token. */
static bool
inject_authorized(const struct http *h, struct evhttp_request *req)
{
    const char *a = http_bearer_token(
        evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization"));
    if (!h->ninject_hashes || !a)
        return false;
    unsigned char got[TOKEN_HASH_LEN];
    token_hash(a, got);
    bool ok = false;
    for (size_t i = 0; i < h->ninject_hashes; i++)
        ok |= CRYPTO_memcmp(got, h->inject_hashes[i], TOKEN_HASH_LEN) == 0;
    return ok;
}

/* The host of a Host header value (RFC 9110 7.2: uri-host [":" port]) in
 * NAME, through the one host:port parser (hostport.h): a host name, an IPv4
 * address, or an IP address in brackets ("[::1]", the brackets removed),
 * with an optional port of 1..65535. Stricter than a plain split for these
 * reasons: a name must be a valid host name (no trailing dot, no
 * characters outside letters, digits, '-', '_', '.'), a port must be a
 * real port (":0" and ":99999" are refused), and "[IPv6:...]", SMTP's form
 * of an address literal, is no URI host. */
bool
http_host_name(const char *v, char *name, size_t namelen)
{
    struct hostport hp;
    if (!strncasecmp(v, "[IPv6:", 6) || !hostport_parse_str(v, 0, &hp, NULL))
        return false;
    size_t n = strlen(hp.host);
    if (n == 0 || n >= namelen)
        return false;
    memcpy(name, hp.host, n + 1);
    return true;
}

/* DNS rebinding protection: a browser led to us through a foreign name
 * sends that name in Host. Accepted: loopback names, the listen address
 * and http.allowed-hosts. */
static bool
host_allowed(const struct http *h, struct evhttp_request *req)
{
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), "Host");
    char name[HOSTPORT_HOST_MAX + 1];
    if (!v || !http_host_name(v, name, sizeof name))
        return false;
    if (!strcasecmp(name, "localhost") || !strcmp(name, "127.0.0.1") || !strcmp(name, "::1"))
        return true;
    if (h->listen.host && !strcasecmp(name, h->listen.host))
        return true;
    for (size_t i = 0; i < h->nallowed_hosts; i++)
        if (!strcasecmp(name, h->allowed_hosts[i]) || !strcasecmp(v, h->allowed_hosts[i]))
            return true;
    return false;
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
        http_reply_error(req, 400, "Host not allowed");
        return;
    }
    if (!path || !*path) {
        http_reply_error(req, 404, "not found");
        return;
    }
    if (strncmp(path, "/api/", 5) != 0 && strcmp(path, "/metrics") != 0) {
        http_files_serve(h->dashboard_dir, req, path);
        return;
    }
    if (!strcmp(path, HTTP_INJECT_PATH)) {
        if (!inject_authorized(h, req)) {
            evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                              "Bearer realm=\"pgmta-inject\"");
            http_reply_error(req, 401,
                             "missing or wrong Bearer token (an http.inject-tokens entry "
                             "is required)");
        } else if (evhttp_request_get_command(req) != EVHTTP_REQ_POST) {
            http_reply_405(req, "POST");
        } else {
            http_api_inject(h->api, req);
        }
        return;
    }
    /* Only the injection API takes large bodies. */
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > HTTP_MAX_BODY) {
        http_reply_error(req, 413, "request body too large");
        return;
    }
    if (!authorized(h, req)) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
                          "Bearer realm=\"pgmta\"");
        http_reply_error(req, 401, "missing or wrong Bearer token");
        return;
    }
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp(path, routes[i].path) != 0)
            continue;
        if (!(evhttp_request_get_command(req) & routes[i].methods)) {
            http_reply_405(req, routes[i].allow);
            return;
        }
        routes[i].fn(h->api, req);
        return;
    }
    http_reply_error(req, 404, "not found");
}

/* ---- life cycle ----------------------------------------------------------------- */

struct http *
http_new(struct event_base *base, http_reload_fn reload, void *reload_arg)
{
    struct http *h = xcalloc(1, sizeof *h);
    h->base = base;
    h->api = http_api_new(base, reload, reload_arg);
    h->evh = evhttp_new(base);
    PGMTA_ASSERT(h->evh != NULL);
    evhttp_set_timeout(h->evh, HTTP_TIMEOUT_S);
    evhttp_set_max_body_size(h->evh, 32 * 1024 * 1024);
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

void
http_apply(struct http *h, const struct conf *conf)
{
    free(h->inject_hashes);
    h->ninject_hashes = conf->nhttp_inject_tokens;
    h->inject_hashes = xcalloc(h->ninject_hashes + 1, sizeof *h->inject_hashes);
    for (size_t i = 0; i < h->ninject_hashes; i++)
        token_hash(conf->http_inject_tokens[i], h->inject_hashes[i]);
    /* evhttp refuses larger bodies itself (413); the other routes check
     * HTTP_MAX_BODY once the body is in. */
    size_t max_body = conf->http_max_body_size;
    evhttp_set_max_body_size(h->evh, max_body > HTTP_MAX_BODY ? max_body : HTTP_MAX_BODY);
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
        conf->http_dashboard_dir ? xstrdup(conf->http_dashboard_dir) : http_files_default_dir();
    http_api_apply(h->api, conf);

    const char *want = conf->listen_http;
    if (want && !conf->http_token) {
        log_error("http event=not-started listen=%s error=\"http.token is not set: the HTTP "
                  "API always wants a token\"",
                  want);
        want = NULL;
    }
    if (h->stopped || !conf->database_url)
        want = NULL;
    http_api_set_db(h->api, want ? conf->database_url : NULL);
    bool was = h->listen.bound != NULL;
    http_conn_listen(h->hc, &h->listen, "http", want);
    if (!was && h->listen.bound)
        log_info("http event=dashboard dir=%s", h->dashboard_dir ? h->dashboard_dir : "-");
}

void
http_stop(struct http *h)
{
    if (!h)
        return;
    h->stopped = true;
    http_conn_listen(h->hc, &h->listen, "http", NULL);
}

void
http_free(struct http *h)
{
    if (!h)
        return;
    http_api_free(h->api);
    http_conn_listen(h->hc, &h->listen, "http", NULL);
    http_conn_free(h->hc);
    evhttp_free(h->evh);
    free(h->inject_hashes);
    for (size_t i = 0; i < h->nallowed_hosts; i++)
        free(h->allowed_hosts[i]);
    free(h->allowed_hosts);
    free(h->dashboard_dir);
    free(h);
}
