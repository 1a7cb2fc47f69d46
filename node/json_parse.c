/* json_parse: recursive descent over a byte range (see json_parse.h).
 *
 * Ownership: json_parse returns a tree the caller owns; every string, key
 * and item array in it belongs to its parent value and is freed with it by
 * json_free. The recursion is bounded by JSON_MAX_DEPTH, the allocation by
 * JSON_MAX_VALUES values and by the input length for strings. */
#include "json_parse.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct parser {
    const unsigned char *p, *start, *end;
    size_t values;
    char *err;
    size_t errlen;
    bool failed;
};

static void
fail(struct parser *ps, const char *what)
{
    if (ps->failed)
        return;
    ps->failed = true;
    snprintf(ps->err, ps->errlen, "offset %zu: %s", (size_t)(ps->p - ps->start), what);
}

static void
skip_ws(struct parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static bool
literal(struct parser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) {
        fail(ps, "invalid literal");
        return false;
    }
    ps->p += n;
    return true;
}

static bool
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool
parse_number(struct parser *ps, struct json_value *v)
{
    const unsigned char *s = ps->p, *p = ps->p, *e = ps->end;
    if (p < e && *p == '-')
        p++;
    if (p >= e || !is_digit(*p)) {
        fail(ps, "invalid number");
        return false;
    }
    if (*p == '0')
        p++;
    else
        while (p < e && is_digit(*p))
            p++;
    if (p < e && *p == '.') {
        p++;
        if (p >= e || !is_digit(*p)) {
            ps->p = p;
            fail(ps, "invalid number: digit expected after '.'");
            return false;
        }
        while (p < e && is_digit(*p))
            p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (p >= e || !is_digit(*p)) {
            ps->p = p;
            fail(ps, "invalid number: digit expected in exponent");
            return false;
        }
        while (p < e && is_digit(*p))
            p++;
    }
    v->type = JSON_NUMBER;
    v->len = (size_t)(p - s);
    v->str = xstrndup((const char *)s, v->len);
    ps->p = p;
    return true;
}

static int
hex4(const unsigned char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        int c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static void
put_utf8(struct buf *b, uint32_t cp)
{
    unsigned char o[4];
    size_t n;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        o[0] = (unsigned char)(0xc0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        o[0] = (unsigned char)(0xe0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        o[0] = (unsigned char)(0xf0 | (cp >> 18));
        o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
        o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
        o[3] = (unsigned char)(0x80 | (cp & 0x3f));
        n = 4;
    }
    buf_append(b, o, n);
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), or 0. */
static size_t
utf8_seq(const unsigned char *p, const unsigned char *e)
{
    unsigned char c = p[0];
    size_t n;
    uint32_t cp, min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
        min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)(e - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* A string at ps->p (the opening quote). */
static bool
parse_string(struct parser *ps, char **out, size_t *outlen)
{
    struct buf b;
    buf_init(&b);
    ps->p++;
    for (;;) {
        const unsigned char *run = ps->p;
        while (ps->p < ps->end && *ps->p >= 0x20 && *ps->p < 0x80 && *ps->p != '"' &&
               *ps->p != '\\')
            ps->p++;
        if (ps->p > run)
            buf_append(&b, run, (size_t)(ps->p - run));
        if (ps->p >= ps->end) {
            fail(ps, "unterminated string");
            break;
        }
        unsigned char c = *ps->p;
        if (c == '"') {
            ps->p++;
            if (!b.data)
                buf_append(&b, "", 0);
            *out = b.data;
            *outlen = b.len;
            return true;
        }
        if (c < 0x20) {
            fail(ps, "control character in string");
            break;
        }
        if (c >= 0x80) {
            size_t n = utf8_seq(ps->p, ps->end);
            if (!n) {
                fail(ps, "invalid UTF-8");
                break;
            }
            buf_append(&b, ps->p, n);
            ps->p += n;
            continue;
        }
        /* backslash */
        if (ps->end - ps->p < 2) {
            fail(ps, "unterminated escape");
            break;
        }
        unsigned char e = ps->p[1];
        const char *simple = NULL;
        switch (e) {
        case '"':
            simple = "\"";
            break;
        case '\\':
            simple = "\\";
            break;
        case '/':
            simple = "/";
            break;
        case 'b':
            simple = "\b";
            break;
        case 'f':
            simple = "\f";
            break;
        case 'n':
            simple = "\n";
            break;
        case 'r':
            simple = "\r";
            break;
        case 't':
            simple = "\t";
            break;
        case 'u':
            break;
        default:
            fail(ps, "invalid escape");
            goto bad;
        }
        if (simple) {
            buf_append(&b, simple, 1);
            ps->p += 2;
            continue;
        }
        if (ps->end - ps->p < 6 || hex4(ps->p + 2) < 0) {
            fail(ps, "invalid \\u escape");
            break;
        }
        uint32_t cp = (uint32_t)hex4(ps->p + 2);
        if (cp >= 0xdc00 && cp <= 0xdfff) {
            fail(ps, "lone low surrogate");
            break;
        }
        if (cp >= 0xd800 && cp <= 0xdbff) {
            int lo =
                ps->end - ps->p >= 12 && ps->p[6] == '\\' && ps->p[7] == 'u' ? hex4(ps->p + 8) : -1;
            if (lo < 0xdc00 || lo > 0xdfff) {
                fail(ps, "high surrogate without low surrogate");
                break;
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + ((uint32_t)lo - 0xdc00);
            ps->p += 6;
        }
        ps->p += 6;
        put_utf8(&b, cp);
    }
bad:
    buf_free(&b);
    return false;
}

static bool parse_value(struct parser *ps, struct json_value *v, int depth);

static bool
count_value(struct parser *ps)
{
    if (++ps->values > JSON_MAX_VALUES) {
        fail(ps, "too many values");
        return false;
    }
    return true;
}

static bool
parse_array(struct parser *ps, struct json_value *v, int depth)
{
    size_t cap = 0;
    v->type = JSON_ARRAY;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == ']') {
        ps->p++;
        return true;
    }
    for (;;) {
        if (v->n == cap) {
            cap = cap ? cap * 2 : 4;
            v->items = xrealloc(v->items, cap * sizeof *v->items);
        }
        memset(&v->items[v->n], 0, sizeof v->items[v->n]);
        v->n++;
        if (!parse_value(ps, &v->items[v->n - 1], depth + 1))
            return false;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == ']') {
            ps->p++;
            return true;
        }
        fail(ps, "',' or ']' expected");
        return false;
    }
}

static bool
parse_object(struct parser *ps, struct json_value *v, int depth)
{
    size_t cap = 0;
    v->type = JSON_OBJECT;
    ps->p++;
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == '}') {
        ps->p++;
        return true;
    }
    for (;;) {
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != '"') {
            fail(ps, "string key expected");
            return false;
        }
        if (v->n == cap) {
            cap = cap ? cap * 2 : 4;
            v->items = xrealloc(v->items, cap * sizeof *v->items);
            v->keys = xrealloc(v->keys, cap * sizeof *v->keys);
            v->keylens = xrealloc(v->keylens, cap * sizeof *v->keylens);
        }
        size_t i = v->n;
        memset(&v->items[i], 0, sizeof v->items[i]);
        v->keys[i] = NULL;
        v->n++;
        if (!parse_string(ps, &v->keys[i], &v->keylens[i]))
            return false;
        skip_ws(ps);
        if (ps->p >= ps->end || *ps->p != ':') {
            fail(ps, "':' expected");
            return false;
        }
        ps->p++;
        if (!parse_value(ps, &v->items[i], depth + 1))
            return false;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == '}') {
            ps->p++;
            return true;
        }
        fail(ps, "',' or '}' expected");
        return false;
    }
}

static bool
parse_value(struct parser *ps, struct json_value *v, int depth)
{
    if (depth > JSON_MAX_DEPTH) {
        fail(ps, "nested too deeply");
        return false;
    }
    if (!count_value(ps))
        return false;
    skip_ws(ps);
    if (ps->p >= ps->end) {
        fail(ps, "value expected");
        return false;
    }
    switch (*ps->p) {
    case '{':
        return parse_object(ps, v, depth);
    case '[':
        return parse_array(ps, v, depth);
    case '"':
        v->type = JSON_STRING;
        return parse_string(ps, &v->str, &v->len);
    case 't':
        v->type = JSON_TRUE;
        return literal(ps, "true");
    case 'f':
        v->type = JSON_FALSE;
        return literal(ps, "false");
    case 'n':
        v->type = JSON_NULL;
        return literal(ps, "null");
    default:
        return parse_number(ps, v);
    }
}

static void
free_members(struct json_value *v)
{
    for (size_t i = 0; i < v->n; i++) {
        free_members(&v->items[i]);
        if (v->keys)
            free(v->keys[i]);
    }
    free(v->items);
    free(v->keys);
    free(v->keylens);
    free(v->str);
}

struct json_value *
json_parse(const char *text, size_t len, char *err, size_t errlen)
{
    struct parser ps = {.p = (const unsigned char *)text,
                        .start = (const unsigned char *)text,
                        .end = (const unsigned char *)text + len,
                        .err = err,
                        .errlen = errlen};
    if (errlen)
        err[0] = '\0';
    struct json_value *v = xcalloc(1, sizeof *v);
    bool ok = parse_value(&ps, v, 1);
    if (ok) {
        skip_ws(&ps);
        if (ps.p != ps.end) {
            fail(&ps, "text after the value");
            ok = false;
        }
    }
    if (!ok) {
        json_free(v);
        return NULL;
    }
    return v;
}

void
json_free(struct json_value *v)
{
    if (!v)
        return;
    free_members(v);
    free(v);
}

const struct json_value *
json_get(const struct json_value *v, const char *key)
{
    if (!v || v->type != JSON_OBJECT)
        return NULL;
    size_t n = strlen(key);
    for (size_t i = 0; i < v->n; i++)
        if (v->keylens[i] == n && memcmp(v->keys[i], key, n) == 0)
            return &v->items[i];
    return NULL;
}

const char *
json_type_name(enum json_type t)
{
    switch (t) {
    case JSON_NULL:
        return "null";
    case JSON_FALSE:
    case JSON_TRUE:
        return "a boolean";
    case JSON_NUMBER:
        return "a number";
    case JSON_STRING:
        return "a string";
    case JSON_ARRAY:
        return "an array";
    case JSON_OBJECT:
        return "an object";
    }
    return "?";
}

bool
json_string_is_text(const struct json_value *v)
{
    return v->type == JSON_STRING && strlen(v->str) == v->len;
}
