/* util: allocation that aborts on failure, growable byte buffers, small
 * string helpers. Every module uses these instead of raw malloc. */
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

#endif
