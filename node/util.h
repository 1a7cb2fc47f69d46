/* util: allocation that aborts on failure, growable byte buffers, small
 * string helpers, and the one deferred-call mechanism of the event loop.
 * Every module uses these instead of raw malloc. */
#ifndef PGMTA_UTIL_H
#define PGMTA_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Abort with the function name: for broken invariants only. */
#define PGMTA_ASSERT(cond)                                                                         \
    do {                                                                                           \
        if (!(cond))                                                                               \
            util_panic(__func__, #cond);                                                           \
    } while (0)
void util_panic(const char *func, const char *what) __attribute__((noreturn));

/* A growable byte buffer, always NUL-terminated after len bytes. */
struct buf {
    char *data;
    size_t len;
    size_t cap;
};
void buf_init(struct buf *b);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_puts(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Lower-cases ASCII in place; returns s. */
char *util_strlower(char *s);
/* Monotonic clock in milliseconds. */
uint64_t util_now_ms(void);
/* REL under the directory of the running binary ("DIR/REL", heap string:
 * the caller frees it), or NULL when /proc/self/exe cannot be read. */
char *util_exe_relative(const char *rel);

/* ---- Deferred calls: "free at the end of this loop turn" ----
 *
 * util_defer_call(base, fn, arg) runs fn(arg) from base's event loop after
 * the callback that is running now (and every function that called it) has
 * returned: one libevent event per event_base (a zero timer, armed when the
 * first call is queued) runs the calls in the order they were queued, at the
 * next loop turn. A call queued while the queue runs waits for the turn
 * after, so a chain of deferred calls never starves I/O. This is how an object is freed from
 * inside its own callback (never free yourself in place: mark yourself dead,
 * unlink, and defer the free), and how a request function delivers an answer
 * it found at once without calling its callback before it returns.
 *
 * util_defer_free(base, fn, ptr) is the same with fn a destructor (NULL:
 * free(3)). util_defer_run(base) runs what is queued now (at shutdown, after
 * the loop stopped); util_defer_base_free(base) runs the rest and forgets
 * base: call it before event_base_free. Single-threaded per process, like
 * the rest of pgmta's loop. */
struct event_base;
typedef void (*util_defer_fn)(void *arg);
void util_defer_call(struct event_base *base, util_defer_fn fn, void *arg);
void util_defer_free(struct event_base *base, util_defer_fn fn, void *ptr);
/* Number of calls queued for base (tests). */
size_t util_defer_pending(struct event_base *base);
void util_defer_run(struct event_base *base);
void util_defer_base_free(struct event_base *base);

#endif
