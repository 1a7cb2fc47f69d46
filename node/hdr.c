/* hdr: header-field iterator (see hdr.h). Owns nothing: fields point into
 * the caller's buffer. */
#include "hdr.h"

#include <string.h>
#include <strings.h>

static bool
is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

/* End of the line at pos without its ending; *next past the ending. */
static size_t
line_end(const char *b, size_t len, size_t pos, size_t *next, bool bare_cr)
{
    if (bare_cr) {
        size_t i = pos;
        while (i < len && b[i] != '\r' && b[i] != '\n')
            i++;
        *next = i;
        if (i < len)
            *next += (b[i] == '\r' && i + 1 < len && b[i + 1] == '\n') ? 2 : 1;
        return i;
    }
    const char *lf = memchr(b + pos, '\n', len - pos);
    if (!lf) {
        *next = len;
        return len;
    }
    size_t e = (size_t)(lf - b);
    *next = e + 1;
    if (e > pos && b[e - 1] == '\r')
        e--;
    return e;
}

void
hdr_iter_init(struct hdr_iter *it, const char *buf, size_t len)
{
    hdr_iter_init_flags(it, buf, len, 0);
}

void
hdr_iter_init_flags(struct hdr_iter *it, const char *buf, size_t len, unsigned flags)
{
    it->flags = flags;
    it->buf = buf;
    it->len = len;
    it->pos = 0;
    it->body = len;
    it->done = len == 0;
}

bool
hdr_next(struct hdr_iter *it, struct hdr_field *f)
{
    memset(f, 0, sizeof *f);
    if (it->done || it->pos >= it->len) {
        it->done = true;
        return false;
    }
    const char *b = it->buf;
    bool bare_cr = it->flags & HDR_BARE_CR;
    size_t next, e = line_end(b, it->len, it->pos, &next, bare_cr);
    if (e == it->pos) {
        /* the empty line: the body follows */
        it->body = next;
        it->done = true;
        it->pos = next;
        return false;
    }
    f->off = it->pos;
    /* continuation lines: the next lines starting with WSP */
    while (next < it->len && is_wsp(b[next])) {
        size_t n2, e2 = line_end(b, it->len, next, &n2, bare_cr);
        e = e2;
        next = n2;
    }
    f->len = e - f->off;
    f->end = next;
    it->pos = next;
    /* the name: printable ASCII but ':', then optional WSP, then ':' */
    size_t i = f->off;
    while (i < e && b[i] > 0x20 && b[i] < 0x7f && b[i] != ':')
        i++;
    size_t nl = i - f->off;
    while (i < e && is_wsp(b[i]))
        i++;
    if (nl > 0 && nl <= HDR_NAME_MAX && i < e && b[i] == ':') {
        f->valid = true;
        f->name = b + f->off;
        f->name_len = nl;
        f->value = b + i + 1;
        f->value_len = e - (i + 1);
    }
    return true;
}

size_t
hdr_body_offset(const char *buf, size_t len)
{
    struct hdr_iter it;
    struct hdr_field f;
    hdr_iter_init(&it, buf, len);
    while (hdr_next(&it, &f))
        ;
    return it.body;
}

bool
hdr_name_is(const struct hdr_field *f, const char *name)
{
    size_t n = strlen(name);
    return f->valid && f->name_len == n && strncasecmp(f->name, name, n) == 0;
}
