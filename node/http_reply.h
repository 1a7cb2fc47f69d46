/* http_reply: the replies of the HTTP API and the dashboard (http.h):
 * status reason phrases, the headers every reply carries, JSON error
 * bodies. Shared by http.c, http_api.c and http_files.c. */
#ifndef PGMTA_HTTP_REPLY_H
#define PGMTA_HTTP_REPLY_H

#include <stddef.h>

#include <event2/http.h>

struct buf;

/* "GET", "POST", ... for logs; "?" for an unknown method. */
const char *http_method_name(enum evhttp_cmd_type m);
/* The reason phrase of CODE ("Error" for a code not used by pgmta). */
const char *http_reason(int code);
/* Sends CODE with BODY (LEN bytes) as CTYPE, not cacheable, no sniffing. */
void http_reply(struct evhttp_request *req, int code, const char *ctype, const char *body,
                size_t len);
void http_reply_json(struct evhttp_request *req, int code, const struct buf *body);
/* {"error": MSG} */
void http_reply_error(struct evhttp_request *req, int code, const char *msg);
/* 405 with "Allow: ALLOW". */
void http_reply_405(struct evhttp_request *req, const char *allow);

#endif
