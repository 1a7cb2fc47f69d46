/* http_api: the admin API's handlers (status, queues, nodes, jobs, pause,
 * resume, reload, metrics) and POST /api/inject/v1, with the database
 * connection they share and the calls waiting on it. http.c routes a
 * request here once its Host, token, method and size are checked; every
 * handler answers the request exactly once, now or from a database
 * callback. */
#ifndef PGMTA_HTTP_API_H
#define PGMTA_HTTP_API_H

#include <event2/event.h>
#include <event2/http.h>

#include "conf.h"
#include "http.h"

struct http_api;

struct http_api *http_api_new(struct event_base *base, http_reload_fn reload, void *reload_arg);
/* Takes the node name, the default pipe and http.max-body-size from CONF
 * (copies). */
void http_api_apply(struct http_api *a, const struct conf *conf);
/* Connects to URL (kept when it is the URL in use), or with NULL closes the
 * database connection: the calls still waiting are answered 503 then. */
void http_api_set_db(struct http_api *a, const char *url);
/* Answers every call still waiting (503) and frees everything. To be called
 * after the event loop stopped. NULL is accepted. */
void http_api_free(struct http_api *a);

typedef void (*http_api_fn)(struct http_api *a, struct evhttp_request *req);
void http_api_status(struct http_api *a, struct evhttp_request *req);
void http_api_queues(struct http_api *a, struct evhttp_request *req);
void http_api_warmup(struct http_api *a, struct evhttp_request *req);
void http_api_nodes(struct http_api *a, struct evhttp_request *req);
void http_api_jobs(struct http_api *a, struct evhttp_request *req);
/* GET /api/stats?hours=H: accounting events per minute (mta.acct_minutes) */
void http_api_stats(struct http_api *a, struct evhttp_request *req);
/* GET /api/dashboard?minutes=M: the dashboard's breakdowns (mta.dashboard) */
void http_api_dashboard(struct http_api *a, struct evhttp_request *req);
void http_api_pause(struct http_api *a, struct evhttp_request *req);
void http_api_resume(struct http_api *a, struct evhttp_request *req);
void http_api_reload(struct http_api *a, struct evhttp_request *req);
void http_api_metrics(struct http_api *a, struct evhttp_request *req);
/* POST /api/inject/v1, the Bearer token already checked. */
void http_api_inject(struct http_api *a, struct evhttp_request *req);

#endif
