/* http: the HTTP API and the web dashboard, served by every smtp-in process.
 *
 * libevent's evhttp on listen.http, in the process's event loop; every
 * smtp-in process binds the same address (SO_REUSEPORT, http_conn.h) and
 * the kernel spreads the connections. Every /api/... and /metrics request
 * needs "Authorization: Bearer <http.token>"; the dashboard's static files
 * do not (the page asks for the token and sends it with its API calls). The
 * API reads and steers the queue through its own non-blocking database
 * connection (db.c); replies are sent from the database callbacks.
 *
 * Modules: http.c (server, access checks, routes), http_api.c (handlers and
 * database calls), http_metrics.c (Prometheus), http_files.c (dashboard),
 * http_reply.c (replies), http_inject.c (injection bodies), http_conn.c
 * (binding and connection limits).
 *
 * Endpoints:
 *   GET  /api/status            totals (the same as `pgmta show status`)
 *   GET  /api/queues            rows of mta.queues
 *   GET  /api/nodes             rows of mta.nodes
 *   GET  /api/jobs[?job=ID]     rows of mta.jobs
 *   POST /api/pause, /api/resume  queue=DOMAIN[/VMTA] or job=ID (query or
 *                               form body)
 *   POST /api/reload            reloads the configuration like SIGHUP
 *   POST /api/inject/v1         injection (http_inject.h): its own Bearer
 *                               tokens, http.inject-tokens; the admin
 *                               token does not inject
 *   GET  /metrics               Prometheus text format
 *   GET  /, /NAME.{html,js,css,svg,png,ico}  the dashboard
 *
 * The dashboard's files come from http.dashboard-dir; without it from the
 * source tree's admin/dashboard when that exists, else from the installed
 * <datadir>/pgmta/dashboard. */
#ifndef PGMTA_HTTP_H
#define PGMTA_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include <event2/event.h>

#include "conf.h"

struct http;

/* Pure parts of request handling, for tests and fuzzing. */
/* The token of an Authorization header value "Bearer TOKEN" (scheme in any
 * case, spaces before the token skipped): a pointer into V, or NULL when V
 * is NULL or of another scheme. */
const char *http_bearer_token(const char *v);
/* The host of a Host header value V ("name", "1.2.3.4", "[v6]", each with
 * an optional ":port" of 1..65535) into NAME (brackets removed); false for
 * anything else or a host that does not fit in NAMELEN. */
bool http_host_name(const char *v, char *name, size_t namelen);

/* Reloads the configuration (POST /api/reload). Returns 0 when the new
 * configuration is in place, else -1 with "file:line: reason" in err and the
 * running configuration kept. */
typedef int (*http_reload_fn)(void *arg, char *err, size_t errlen);

/* Limits (exported for the tests' sake: they are part of the behaviour).
 * HTTP_MAX_BODY holds for every route but /api/inject/v1, whose bodies are
 * bounded by http.max-body-size. Connections, header and request timeouts:
 * http_conn.h. */
#define HTTP_MAX_BODY (64 * 1024)
#define HTTP_MAX_HEADERS (16 * 1024)
#define HTTP_TIMEOUT_S 30
#define HTTP_DB_TIMEOUT_MS 10000 /* a database answer slower than this: 503 */
#define HTTP_MAX_CALLS 256       /* database calls in flight; more: 503 */
/* mta.inject_batch slower than this: 504, outcome unknown */
#define HTTP_INJECT_DB_TIMEOUT_MS 120000

struct http *http_new(struct event_base *base, http_reload_fn reload, void *reload_arg);
/* Applies a configuration (at start and after each reload): starts, moves
 * or stops the listener, takes the token, allowed hosts, dashboard
 * directory and database URL. Keeps its own copies: conf may be freed
 * afterwards. Without http.token the listener is not started (logged). */
void http_apply(struct http *h, const struct conf *conf);
/* Stops accepting connections (shutdown); requests in progress finish. */
void http_stop(struct http *h);
/* Answers every request still waiting (503), closes the database
 * connection and every HTTP connection. NULL is accepted. */
void http_free(struct http *h);

#endif
