/* http_conn: the HTTP server's listening sockets and connections, under
 * limits libevent's evhttp does not have by itself.
 *
 * - Listening sockets are our own, bound with SO_REUSEADDR and SO_REUSEPORT,
 *   so several pgmtad processes can serve HTTP on one address (the kernel
 *   spreads connections); a port held by a socket without SO_REUSEPORT
 *   still fails to bind.
 * - A connection cap: at max_conns open connections accepting pauses (the
 *   kernel's backlog holds newcomers) and resumes below it.
 * - accept() failing for want of descriptors (EMFILE, ENFILE, ENOBUFS,
 *   ENOMEM) pauses accepting for a moment instead of spinning on the
 *   readable socket; one log line per pause.
 * - A header timeout (the first byte of a request to the end of its header)
 *   and a request timeout (first byte to the whole body read); past either
 *   the connection is shut down. Idle keep-alive connections are evhttp's
 *   read timeout's business.
 *
 * Connections are seen through evhttp_set_bevcb (the bufferevent of each
 * accepted connection is ours to create; an input callback on it finds the
 * end of each request header) and the connection's close callback. */
#ifndef PGMTA_HTTP_CONN_H
#define PGMTA_HTTP_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/http.h>

struct http_conn;

#define HTTP_CONN_EMFILE_PAUSE_MS 250

struct http_conn *http_conn_new(struct event_base *base, struct evhttp *evh);
void http_conn_set_limits(struct http_conn *hc, unsigned max_conns, uint64_t header_timeout_ms,
                          uint64_t request_timeout_ms);
/* Binds IP:PORT (SO_REUSEPORT) and hands it to evhttp. NULL with errno
 * set and the reason in err on failure. */
struct evhttp_bound_socket *http_conn_bind(struct http_conn *hc, const char *ip, unsigned port,
                                           char *err, size_t errlen);
void http_conn_unbind(struct http_conn *hc, struct evhttp_bound_socket *s);

/* The one listening address of a server (listen.http, listen.unsubscribe),
 * kept across reloads. */
struct http_conn_listen {
    struct evhttp_bound_socket *bound;
    char *addr; /* "ip:port" listened on, or NULL */
    char *host; /* its ip, without brackets */
};
/* Listens on ADDR ("ip:port" or "[ip6]:port", the parser conf uses): nothing
 * changes when ADDR is the address in use; otherwise ADDR is bound beside
 * the old socket, or after releasing it when that fails (the addresses may
 * overlap), and the old socket is kept when ADDR cannot be bound. NULL
 * closes. Logged as "WHAT event=listening|listen-failed|listen-kept|closed". */
void http_conn_listen(struct http_conn *hc, struct http_conn_listen *l, const char *what,
                      const char *addr);
/* REQ's headers and body are in: its connection's timers stop. */
void http_conn_request_read(struct http_conn *hc, struct evhttp_request *req);
unsigned http_conn_count(const struct http_conn *hc);
/* Before evhttp_free: forgets the connections (evhttp frees them). */
void http_conn_free(struct http_conn *hc);

#endif
