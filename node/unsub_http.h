/* unsub_http: the public one-click unsubscribe listener (RFC 8058), served
 * by every smtp-in process on listen.unsubscribe (SO_REUSEPORT, like the
 * HTTP API, but its own evhttp server, socket, connections and route table:
 * nothing of the admin API is reachable here and no Bearer token is asked).
 *
 *   POST /u/TOKEN  body "List-Unsubscribe=One-Click" (form-urlencoded or
 *                  multipart/form-data): a valid token writes the
 *                  suppression with mta.unsubscribe() and the answer is 200
 *                  once that committed; a bad token 400 and nothing
 *                  written; another body 400; the database away 503
 *   GET  /u/TOKEN  a small HTML page whose form makes that POST; never
 *                  unsubscribes (link scanners follow links)
 *
 * Every request counts against unsubscribe-max-rate-per-client for its
 * client address (fixed windows, a bounded table per process; addresses
 * whose hashes collide share a counter); beyond it: 429. */
#ifndef PGMTA_UNSUB_HTTP_H
#define PGMTA_UNSUB_HTTP_H

#include <stddef.h>

#include <event2/event.h>

struct conf;
struct unsub_http;

#define UNSUB_HTTP_MAX_BODY 4096
#define UNSUB_HTTP_MAX_CALLS 256 /* database calls in flight; more: 503 */
#define UNSUB_HTTP_RATE_SLOTS 4096

struct unsub_http *unsub_http_new(struct event_base *base);
/* Applies a configuration (at start and after each reload): the secret, the
 * rate, the database and the listener (started, moved or stopped). A secret
 * that cannot be read keeps the old one (logged). */
void unsub_http_apply(struct unsub_http *h, const struct conf *conf);
/* Stops accepting connections; requests in progress finish. */
void unsub_http_stop(struct unsub_http *h);
/* Answers the requests still waiting (503) and frees. NULL is accepted. */
void unsub_http_free(struct unsub_http *h);

/* Whether BODY (LEN octets) of content type CTYPE (may be NULL) is the
 * one-click request of RFC 8058 §3.1. Exported for tests. */
int unsub_http_one_click(const char *ctype, const char *body, size_t len);

#endif
