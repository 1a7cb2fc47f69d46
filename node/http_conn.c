/* http_conn: listening sockets, connection cap, EMFILE pause and request
 * timers of the HTTP server (see http_conn.h).
 *
 * Ownership: struct http_conn owns the listener records and one struct conn
 * per open connection. A conn is created by the bevcb when evhttp accepts
 * and freed by the evhttp_connection's close callback when evhttp frees the
 * connection; nothing else frees it. evhttp owns the
 * connections and the bound sockets (LEV_OPT_CLOSE_ON_FREE closes ours). */
#include "http_conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "hostport.h"
#include "log.h"
#include "util.h"

#define MAX_LISTENERS 4
#define BACKLOG 1024

enum conn_state { CONN_IDLE, CONN_HEADERS, CONN_BODY };

struct conn {
    struct http_conn *hc;
    struct bufferevent *bev;
    struct event *timer;
    struct event *attach; /* sets evhttp's close callback */
    enum conn_state state;
    int nl; /* header-end scanner: 1 after LF, 2 after LF CR */
    uint64_t header_deadline, request_deadline;
    struct conn *prev, *next;
};

struct http_conn {
    struct event_base *base;
    struct evhttp *evh;
    struct evconnlistener *listeners[MAX_LISTENERS];
    struct evhttp_bound_socket *bound[MAX_LISTENERS];
    struct conn *conns;
    unsigned nconns, max_conns;
    uint64_t header_ms, request_ms;
    bool paused, emfile;
    uint64_t paused_at;
    struct event *resume_timer;
    struct http_conn *next_hc;
};

/* The listener's callback argument is evhttp's: accept errors find their
 * http_conn here (one per process in practice). */
static struct http_conn *all_hc;

static struct http_conn *
hc_of_listener(struct evconnlistener *l)
{
    for (struct http_conn *hc = all_hc; hc; hc = hc->next_hc)
        for (int i = 0; i < MAX_LISTENERS; i++)
            if (hc->listeners[i] == l)
                return hc;
    return NULL;
}

/* ---- pausing ---------------------------------------------------------------------- */

static void
set_enabled(struct http_conn *hc, bool on)
{
    for (int i = 0; i < MAX_LISTENERS; i++) {
        if (!hc->listeners[i])
            continue;
        if (on)
            evconnlistener_enable(hc->listeners[i]);
        else
            evconnlistener_disable(hc->listeners[i]);
    }
}

static void
pause_accept(struct http_conn *hc, const char *why)
{
    if (hc->paused)
        return;
    hc->paused = true;
    hc->paused_at = util_now_ms();
    set_enabled(hc, false);
    log_warn("http event=accept-paused reason=%s connections=%u", why, hc->nconns);
}

/* Resumes when neither the cap nor a descriptor shortage holds it. */
static void
maybe_resume(struct http_conn *hc)
{
    if (!hc->paused || hc->emfile || hc->nconns >= hc->max_conns)
        return;
    hc->paused = false;
    set_enabled(hc, true);
    log_info("http event=accept-resumed paused_ms=%llu connections=%u",
             (unsigned long long)(util_now_ms() - hc->paused_at), hc->nconns);
}

static void
on_resume_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_conn *hc = arg;
    hc->emfile = false;
    maybe_resume(hc);
}

static void
on_accept_error(struct evconnlistener *l, void *arg)
{
    (void)arg;
    int e = errno;
    struct http_conn *hc = hc_of_listener(l);
    if (!hc)
        return;
    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
        hc->emfile = true;
        pause_accept(hc, e == EMFILE ? "emfile" : e == ENFILE ? "enfile" : "no-memory");
        struct timeval tv = {0, HTTP_CONN_EMFILE_PAUSE_MS * 1000};
        evtimer_add(hc->resume_timer, &tv);
        return;
    }
    log_warn("http event=accept-failed error=\"%s\"", strerror(e));
}

/* ---- per-connection timers ------------------------------------------------------ */

static void
conn_arm(struct conn *c)
{
    uint64_t d = c->header_deadline;
    if (!d || (c->request_deadline && c->request_deadline < d))
        d = c->request_deadline;
    if (!d) {
        evtimer_del(c->timer);
        return;
    }
    uint64_t now = util_now_ms();
    uint64_t ms = d > now ? d - now : 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(c->timer, &tv);
}

static void
on_conn_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    uint64_t now = util_now_ms();
    bool hdr = c->header_deadline && now >= c->header_deadline;
    bool req = c->request_deadline && now >= c->request_deadline;
    if (!hdr && !req) {
        conn_arm(c);
        return;
    }
    log_debug("http event=timeout what=%s", hdr ? "header" : "request");
    c->header_deadline = c->request_deadline = 0;
    /* evhttp reads end-of-file next and frees the connection */
    evutil_socket_t s = bufferevent_getfd(c->bev);
    if (s >= 0)
        shutdown(s, SHUT_RDWR);
}

/* Input callback of the connection's bufferevent: scans the bytes just
 * read for the end of a request header (an empty line). */
static void
on_input(struct evbuffer *in, const struct evbuffer_cb_info *info, void *arg)
{
    struct conn *c = arg;
    if (!info->n_added)
        return;
    if (c->state == CONN_IDLE) {
        c->state = CONN_HEADERS;
        c->nl = 0;
        uint64_t now = util_now_ms();
        c->header_deadline = c->hc && c->hc->header_ms ? now + c->hc->header_ms : 0;
        c->request_deadline = c->hc && c->hc->request_ms ? now + c->hc->request_ms : 0;
        conn_arm(c);
    }
    if (c->state != CONN_HEADERS)
        return;
    struct evbuffer_ptr at;
    if (evbuffer_ptr_set(in, &at, info->orig_size, EVBUFFER_PTR_SET) < 0)
        return;
    struct evbuffer_iovec v[16];
    int nv = evbuffer_peek(in, (ev_ssize_t)info->n_added, &at, v, 16);
    size_t left = info->n_added;
    for (int i = 0; i < nv && i < 16 && left; i++) {
        const unsigned char *p = v[i].iov_base;
        for (size_t k = 0; k < v[i].iov_len && left; k++, left--) {
            if (p[k] == '\n') {
                if (c->nl) {
                    c->state = CONN_BODY;
                    c->header_deadline = 0;
                    conn_arm(c);
                    return;
                }
                c->nl = 1;
            } else if (p[k] == '\r') {
                if (c->nl == 1)
                    c->nl = 2;
            } else {
                c->nl = 0;
            }
        }
    }
}

static void
conn_unlink(struct conn *c)
{
    struct http_conn *hc = c->hc;
    if (!hc)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        hc->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    hc->nconns--;
    c->hc = NULL;
    /* a freed descriptor: a good moment to try accepting again */
    hc->emfile = false;
    maybe_resume(hc);
}

/* evhttp frees the connection (and its bufferevent right after). */
static void
on_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    struct conn *c = arg;
    conn_unlink(c);
    evbuffer_remove_cb(bufferevent_get_input(c->bev), on_input, c);
    event_free(c->timer);
    event_free(c->attach);
    free(c);
}

/* From the loop turn of the accept, before any I/O on the connection:
 * evhttp has set its callbacks on the bufferevent, whose argument is the
 * evhttp_connection; its close callback tells us when it goes. */
static void
on_attach(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    void *evcon = NULL;
    bufferevent_getcb(c->bev, NULL, NULL, NULL, &evcon);
    PGMTA_ASSERT(evcon != NULL);
    evhttp_connection_set_closecb(evcon, on_close, c);
}

static struct bufferevent *
new_bev(struct event_base *base, void *arg)
{
    struct http_conn *hc = arg;
    struct conn *c = xcalloc(1, sizeof *c);
    c->hc = hc;
    c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
    c->timer = evtimer_new(base, on_conn_timer, c);
    c->attach = event_new(base, -1, 0, on_attach, c);
    PGMTA_ASSERT(c->bev != NULL && c->timer != NULL && c->attach != NULL);
    PGMTA_ASSERT(evbuffer_add_cb(bufferevent_get_input(c->bev), on_input, c) != NULL);
    event_active(c->attach, 0, 0);
    c->next = hc->conns;
    if (hc->conns)
        hc->conns->prev = c;
    hc->conns = c;
    if (++hc->nconns >= hc->max_conns)
        pause_accept(hc, "max-connections");
    return c->bev;
}

/* ---- public ----------------------------------------------------------------------- */

struct http_conn *
http_conn_new(struct event_base *base, struct evhttp *evh)
{
    struct http_conn *hc = xcalloc(1, sizeof *hc);
    hc->base = base;
    hc->evh = evh;
    hc->max_conns = 512;
    hc->header_ms = 10000;
    hc->request_ms = 60000;
    hc->resume_timer = evtimer_new(base, on_resume_timer, hc);
    PGMTA_ASSERT(hc->resume_timer != NULL);
    evhttp_set_bevcb(evh, new_bev, hc);
    hc->next_hc = all_hc;
    all_hc = hc;
    return hc;
}

void
http_conn_set_limits(struct http_conn *hc, unsigned max_conns, uint64_t header_timeout_ms,
                     uint64_t request_timeout_ms)
{
    hc->max_conns = max_conns ? max_conns : 1;
    hc->header_ms = header_timeout_ms;
    hc->request_ms = request_timeout_ms;
    if (hc->nconns >= hc->max_conns)
        pause_accept(hc, "max-connections");
    else
        maybe_resume(hc);
}

struct evhttp_bound_socket *
http_conn_bind(struct http_conn *hc, const char *ip, unsigned port, char *err, size_t errlen)
{
    int slot = -1;
    for (int i = 0; i < MAX_LISTENERS && slot < 0; i++)
        if (!hc->listeners[i])
            slot = i;
    PGMTA_ASSERT(slot >= 0);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        len = sizeof *s4;
    } else if (inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        len = sizeof *s6;
    } else {
        snprintf(err, errlen, "not an IP address: %s", ip);
        errno = EINVAL;
        return NULL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return NULL;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
        (ss.ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) ||
        bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, BACKLOG) != 0) {
        int e = errno;
        snprintf(err, errlen, "%s%s", strerror(e),
                 e == EADDRINUSE ? " (held by a socket without SO_REUSEPORT, or by another "
                                   "user)"
                                 : "");
        close(fd);
        errno = e;
        return NULL;
    }
    /* backlog 0: already listening */
    struct evconnlistener *l =
        evconnlistener_new(hc->base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE, 0, fd);
    if (!l) {
        snprintf(err, errlen, "evconnlistener_new failed");
        close(fd);
        return NULL;
    }
    struct evhttp_bound_socket *b = evhttp_bind_listener(hc->evh, l);
    if (!b) {
        evconnlistener_free(l);
        snprintf(err, errlen, "evhttp_bind_listener failed");
        return NULL;
    }
    evconnlistener_set_error_cb(l, on_accept_error);
    hc->listeners[slot] = l;
    hc->bound[slot] = b;
    if (hc->paused)
        evconnlistener_disable(l);
    return b;
}

void
http_conn_unbind(struct http_conn *hc, struct evhttp_bound_socket *s)
{
    for (int i = 0; i < MAX_LISTENERS; i++) {
        if (hc->bound[i] == s) {
            hc->bound[i] = NULL;
            hc->listeners[i] = NULL;
        }
    }
    evhttp_del_accept_socket(hc->evh, s);
}

void
http_conn_request_read(struct http_conn *hc, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    for (struct conn *c = hc->conns; c; c = c->next) {
        if (c->bev != bev)
            continue;
        c->state = CONN_IDLE;
        c->header_deadline = c->request_deadline = 0;
        conn_arm(c);
        return;
    }
}

unsigned
http_conn_count(const struct http_conn *hc)
{
    return hc->nconns;
}

void
http_conn_free(struct http_conn *hc)
{
    if (!hc)
        return;
    for (struct conn *c = hc->conns; c; c = c->next) {
        c->hc = NULL;
        evtimer_del(c->timer);
    }
    for (struct http_conn **p = &all_hc; *p; p = &(*p)->next_hc) {
        if (*p == hc) {
            *p = hc->next_hc;
            break;
        }
    }
    event_free(hc->resume_timer);
    free(hc);
}

static void
listen_close(struct http_conn *hc, struct http_conn_listen *l, const char *what)
{
    if (l->bound) {
        http_conn_unbind(hc, l->bound);
        l->bound = NULL;
        log_info("%s event=closed listen=%s", what, l->addr);
    }
    free(l->addr);
    free(l->host);
    l->addr = l->host = NULL;
}

static struct evhttp_bound_socket *
listen_bind(struct http_conn *hc, const char *what, const char *addr, const struct hostport *hp)
{
    char err[256];
    struct evhttp_bound_socket *s = http_conn_bind(hc, hp->host, hp->port, err, sizeof err);
    if (!s)
        log_error("%s event=listen-failed listen=%s error=\"%s\"", what, addr, err);
    return s;
}

void
http_conn_listen(struct http_conn *hc, struct http_conn_listen *l, const char *what,
                 const char *addr)
{
    if (!addr) {
        listen_close(hc, l, what);
        return;
    }
    if (l->addr && !strcmp(l->addr, addr))
        return;
    struct hostport hp;
    const char *why = "bad address";
    if (!hostport_parse_str(addr, HOSTPORT_IP_ONLY | HOSTPORT_PORT_REQUIRED, &hp, &why)) {
        log_error("%s event=listen-failed listen=%s error=\"%s\"", what, addr, why);
        listen_close(hc, l, what);
        return;
    }
    struct evhttp_bound_socket *s = listen_bind(hc, what, addr, &hp);
    if (!s && l->bound) {
        /* The new address may overlap the old one: release it and retry. */
        listen_close(hc, l, what);
        s = listen_bind(hc, what, addr, &hp);
    }
    if (!s) {
        if (l->bound)
            log_warn("%s event=listen-kept listen=%s", what, l->addr);
        return;
    }
    listen_close(hc, l, what);
    l->bound = s;
    l->addr = xstrdup(addr);
    l->host = xstrdup(hp.host);
    log_info("%s event=listening listen=%s", what, addr);
}
