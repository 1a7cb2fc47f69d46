/* libFuzzer target for json_parse: no crash or leak on any input; what is
 * accepted is well-formed (strings valid UTF-8, numbers per RFC 8259), and
 * writing the tree back as JSON and parsing that again gives the same tree;
 * nesting past JSON_MAX_DEPTH is refused. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_parse.h"
#include "util.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_json_parse: %s\n", what);
        abort();
    }
}

static void
put_string(struct buf *b, const char *s, size_t n)
{
    buf_puts(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\')
            buf_printf(b, "\\u%04x", c);
        else
            buf_append(b, &c, 1);
    }
    buf_puts(b, "\"");
}

static void
write_json(struct buf *b, const struct json_value *v)
{
    switch (v->type) {
    case JSON_NULL:
        buf_puts(b, "null");
        break;
    case JSON_TRUE:
        buf_puts(b, "true");
        break;
    case JSON_FALSE:
        buf_puts(b, "false");
        break;
    case JSON_NUMBER:
        buf_append(b, v->str, v->len);
        break;
    case JSON_STRING:
        put_string(b, v->str, v->len);
        break;
    case JSON_ARRAY:
        buf_puts(b, "[");
        for (size_t i = 0; i < v->n; i++) {
            if (i)
                buf_puts(b, ",");
            write_json(b, &v->items[i]);
        }
        buf_puts(b, "]");
        break;
    case JSON_OBJECT:
        buf_puts(b, "{");
        for (size_t i = 0; i < v->n; i++) {
            if (i)
                buf_puts(b, ",");
            put_string(b, v->keys[i], v->keylens[i]);
            buf_puts(b, ":");
            write_json(b, &v->items[i]);
        }
        buf_puts(b, "}");
        break;
    }
}

static int
same(const struct json_value *a, const struct json_value *b)
{
    if (a->type != b->type || a->n != b->n || a->len != b->len)
        return 0;
    if ((a->type == JSON_STRING || a->type == JSON_NUMBER) && memcmp(a->str, b->str, a->len))
        return 0;
    for (size_t i = 0; i < a->n; i++) {
        if (a->type == JSON_OBJECT &&
            (a->keylens[i] != b->keylens[i] || memcmp(a->keys[i], b->keys[i], a->keylens[i])))
            return 0;
        if (!same(&a->items[i], &b->items[i]))
            return 0;
    }
    return 1;
}

/* Valid UTF-8 without surrogates, checked independently of the parser. */
static int
utf8_ok(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        size_t k = c < 0x80             ? 1
                   : (c & 0xe0) == 0xc0 ? 2
                   : (c & 0xf0) == 0xe0 ? 3
                   : (c & 0xf8) == 0xf0 ? 4
                                        : 0;
        if (!k || i + k > n)
            return 0;
        unsigned long cp = k == 1 ? c : c & (0x7f >> k);
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        static const unsigned long min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[k] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += k;
    }
    return 1;
}

static void
check_strings(const struct json_value *v)
{
    if (v->type == JSON_STRING)
        check(utf8_ok((const unsigned char *)v->str, v->len), "string not valid UTF-8");
    for (size_t i = 0; i < v->n; i++) {
        if (v->type == JSON_OBJECT)
            check(utf8_ok((const unsigned char *)v->keys[i], v->keylens[i]), "key not valid UTF-8");
        check_strings(&v->items[i]);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[160];
    struct json_value *v = json_parse((const char *)data, size, err, sizeof err);
    if (!v) {
        check(strncmp(err, "offset ", 7) == 0, "error without offset");
        return 0;
    }
    check_strings(v);
    struct buf b;
    buf_init(&b);
    write_json(&b, v);
    struct json_value *w = json_parse(b.data, b.len, err, sizeof err);
    check(w != NULL, "written tree does not parse again");
    check(same(v, w), "round trip changed the tree");
    json_free(w);
    json_free(v);
    buf_free(&b);
    return 0;
}
