/* libFuzzer target for smtp_server_take_headers: the linear one-pass removal
 * must give exactly what the straightforward field-by-field removal below
 * gives (same remaining bytes, same last X-Job and X-Virtual-MTA values,
 * unfolded and trimmed), for any bytes. A line that is not a valid field
 * ends the header section. The first input byte chooses where
 * the header section starts. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "smtp_server.h"
#include "util.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_smtp_headers: %s\n", what);
        abort();
    }
}

static bool
wsp(char ch)
{
    return ch == ' ' || ch == '\t';
}

static char *
value_of(const char *p, size_t n)
{
    const char *colon = memchr(p, ':', n);
    struct buf v;
    buf_init(&v);
    for (const char *q = colon + 1; q < p + n; q++)
        if (*q != '\r' && *q != '\n')
            buf_append(&v, q, 1);
    size_t s = 0, e = v.len;
    while (s < e && wsp(v.data[s]))
        s++;
    while (e > s && wsp(v.data[e - 1]))
        e--;
    char *out = e > s ? xstrndup(v.data + s, e - s) : NULL;
    buf_free(&v);
    return out;
}

static bool
named(const char *p, size_t n, const char *name)
{
    while (n > 0 && wsp(p[n - 1]))
        n--;
    return n == strlen(name) && strncasecmp(p, name, n) == 0;
}

/* The reference: remove one field at a time, moving the rest down. */
static void
reference(struct buf *b, size_t pos, char **job, char **vmta)
{
    *job = *vmta = NULL;
    while (pos < b->len) {
        char *d = b->data;
        const char *nl = memchr(d + pos, '\n', b->len - pos);
        size_t end = nl ? (size_t)(nl - d) + 1 : b->len;
        if (d[pos] == '\n' || (d[pos] == '\r' && pos + 1 < b->len && d[pos + 1] == '\n'))
            break;
        /* a field: 1..996 printable octets but ':', WSP, ':' on its first
         * line; anything else ends the header section */
        size_t i = pos;
        while (i < end && d[i] > 0x20 && d[i] < 0x7f && d[i] != ':')
            i++;
        size_t namelen = i - pos;
        while (i < end && wsp(d[i]))
            i++;
        if (namelen == 0 || namelen > 996 || i >= end || d[i] != ':')
            break;
        const char *colon = d + i;
        while (end < b->len && wsp(d[end])) {
            nl = memchr(d + end, '\n', b->len - end);
            end = nl ? (size_t)(nl - d) + 1 : b->len;
        }
        (void)colon;
        char **t = named(d + pos, namelen, "X-Job")           ? job
                   : named(d + pos, namelen, "X-Virtual-MTA") ? vmta
                                                              : NULL;
        if (!t) {
            pos = end;
            continue;
        }
        free(*t);
        *t = value_of(d + pos, end - pos);
        memmove(d + pos, d + end, b->len - end);
        b->len -= end - pos;
        d[b->len] = '\0';
    }
}

static bool
same(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t start = data[0] % 8;
    data++;
    size--;
    if (start > size)
        start = size;
    struct buf a, b;
    buf_init(&a);
    buf_init(&b);
    buf_append(&a, data, size);
    buf_append(&b, data, size);
    char *job_a, *vmta_a, *job_b, *vmta_b;
    smtp_server_take_headers(&a, start, &job_a, &vmta_a);
    reference(&b, start, &job_b, &vmta_b);
    check(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0), "content differs");
    check(same(job_a, job_b), "job differs");
    check(same(vmta_a, vmta_b), "vmta differs");
    free(job_a);
    free(vmta_a);
    free(job_b);
    free(vmta_b);
    buf_free(&a);
    buf_free(&b);
    return 0;
}
