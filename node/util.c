/* util: allocation wrappers (abort on failure), struct buf, helpers, and
 * the deferred calls of each event_base (see util.h). The deferred-call
 * queues are owned here: one per event_base in use, on a short list (a
 * process has one or two bases), each with its libevent event and a
 * growable array of pending calls. */
#include "util.h"

#include <ctype.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void
util_panic(const char *func, const char *what)
{
    fprintf(stderr, "pgmta: fatal: %s: %s\n", func, what);
    fflush(stderr);
    abort();
}

void *
xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        util_panic(__func__, "out of memory");
    return p;
}

void *
xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        util_panic(__func__, "out of memory");
    return p;
}

void *
xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        util_panic(__func__, "out of memory");
    return q;
}

char *
xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
    char *p = xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *
xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *p = NULL;
    int r = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (r < 0)
        util_panic(__func__, "out of memory");
    return p;
}

void
buf_init(struct buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void
buf_free(struct buf *b)
{
    free(b->data);
    buf_init(b);
}

void
buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void
buf_reserve(struct buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2)
            util_panic(__func__, "buffer too large");
        cap *= 2;
    }
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void
buf_append(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void
buf_puts(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void
buf_printf(struct buf *b, const char *fmt, ...)
{
    buf_reserve(b, 128);
    va_list ap;
    va_start(ap, fmt);
    size_t room = b->cap - b->len;
    int n = vsnprintf(b->data + b->len, room, fmt, ap);
    va_end(ap);
    if (n < 0)
        util_panic(__func__, "format error");
    if ((size_t)n >= room) {
        buf_reserve(b, (size_t)n);
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

char *
util_strlower(char *s)
{
    for (char *p = s; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return s;
}

uint64_t
util_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- deferred calls ---- */

struct defer_item {
    util_defer_fn fn;
    void *arg;
};

struct defer_queue {
    struct event_base *base;
    struct event *ev;
    struct defer_item *items;
    size_t n, cap;
    int draining; /* util_defer_run: run to the end, queued-meanwhile too */
    struct defer_queue *next;
};

static struct defer_queue *defer_queues;

static void
defer_free_plain(void *p)
{
    free(p);
}

/* Runs the calls queued before this activation; later ones wait for the
 * next (the event is activated again when they are queued). */
static void
defer_run_queue(struct defer_queue *q)
{
    while (q->n) {
        struct defer_item *items = q->items;
        size_t n = q->n;
        q->items = NULL;
        q->n = q->cap = 0;
        for (size_t i = 0; i < n; i++)
            items[i].fn(items[i].arg);
        free(items);
        if (!q->draining)
            break; /* inside the loop: the rest runs at the next activation */
    }
}

static void
defer_on_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    defer_run_queue(arg);
}

static struct defer_queue *
defer_queue_of(struct event_base *base, int create)
{
    for (struct defer_queue *q = defer_queues; q; q = q->next)
        if (q->base == base)
            return q;
    if (!create)
        return NULL;
    struct defer_queue *q = xcalloc(1, sizeof *q);
    q->base = base;
    q->ev = event_new(base, -1, 0, defer_on_event, q);
    PGMTA_ASSERT(q->ev != NULL);
    q->next = defer_queues;
    defer_queues = q;
    return q;
}

void
util_defer_call(struct event_base *base, util_defer_fn fn, void *arg)
{
    PGMTA_ASSERT(base && fn);
    struct defer_queue *q = defer_queue_of(base, 1);
    if (q->n == q->cap) {
        q->cap = q->cap ? q->cap * 2 : 16;
        q->items = xrealloc(q->items, q->cap * sizeof *q->items);
    }
    q->items[q->n++] = (struct defer_item){fn, arg};
    /* A zero timer, not event_active: libevent runs events activated
     * while it runs active events in the same pass, so a chain of deferred
     * calls could starve I/O; a timer waits for the next loop turn. */
    static const struct timeval zero = {0, 0};
    if (!q->draining && !event_pending(q->ev, EV_TIMEOUT, NULL))
        evtimer_add(q->ev, &zero);
}

void
util_defer_free(struct event_base *base, util_defer_fn fn, void *ptr)
{
    if (!ptr)
        return;
    util_defer_call(base, fn ? fn : defer_free_plain, ptr);
}

size_t
util_defer_pending(struct event_base *base)
{
    struct defer_queue *q = defer_queue_of(base, 0);
    return q ? q->n : 0;
}

void
util_defer_run(struct event_base *base)
{
    struct defer_queue *q = defer_queue_of(base, 0);
    if (!q)
        return;
    q->draining++;
    defer_run_queue(q);
    q->draining--;
    event_del(q->ev);
}

void
util_defer_base_free(struct event_base *base)
{
    struct defer_queue **pp = &defer_queues;
    while (*pp && (*pp)->base != base)
        pp = &(*pp)->next;
    struct defer_queue *q = *pp;
    if (!q)
        return;
    util_defer_run(base);
    *pp = q->next;
    event_free(q->ev);
    free(q->items);
    free(q);
}

char *
util_exe_relative(const char *rel)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return NULL;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    return xasprintf("%s/%s", exe, rel);
}
