/* http_reply: status lines, common headers and JSON error bodies of the
 * HTTP API (see http_reply.h).
 *
 * Ownership: nothing is kept. Each function sends the reply at once; the
 * evhttp request belongs to libevent, which frees it after the reply, so
 * callers never touch REQ afterwards. */
#include "http_reply.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "json.h"
#include "log.h"
#include "util.h"

const char *
http_reason(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Error";
    }
}

const char *
http_method_name(enum evhttp_cmd_type m)
{
    switch (m) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "?";
}

void
http_reply(struct evhttp_request *req, int code, const char *ctype, const char *body, size_t len)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", ctype);
    evhttp_add_header(out, "Cache-Control", "no-store");
    evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    struct evbuffer *b = evbuffer_new();
    PGMTA_ASSERT(b != NULL);
    evbuffer_add(b, body, len);
    log_debug("http event=reply method=%s uri=\"%s\" status=%d bytes=%zu",
              http_method_name(evhttp_request_get_command(req)), evhttp_request_get_uri(req), code,
              len);
    evhttp_send_reply(req, code, http_reason(code), b);
    evbuffer_free(b);
}

void
http_reply_json(struct evhttp_request *req, int code, const struct buf *body)
{
    http_reply(req, code, "application/json", body->data, body->len);
}

void
http_reply_error(struct evhttp_request *req, int code, const char *msg)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "{\"error\": ");
    json_append_string(&b, msg);
    buf_puts(&b, "}\n");
    http_reply_json(req, code, &b);
    buf_free(&b);
}

void
http_reply_405(struct evhttp_request *req, const char *allow)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
    http_reply_error(req, 405, "method not allowed");
}
