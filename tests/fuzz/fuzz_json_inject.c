/* libFuzzer target for the injection API's request handling
 * (http_inject_parse: JSON, fields, templates, MIME): no crash or leak on
 * any input; an accepted request yields messages with CRLF line endings
 * only and no line over 998 octets; a refused one a JSON error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http_inject.h"
#include "util.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_json_inject: %s\n", what);
        abort();
    }
}

static uint32_t
be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct buf err;
    buf_init(&err);
    int status = 0;
    struct inject_batch *b =
        http_inject_parse((const char *)data, size, "node.test", 1764633600LL, &err, &status);
    if (!b) {
        check(status >= 400 && status < 500, "refusal without a 4xx status");
        check(err.len > 10 && !strncmp(err.data, "{\"error\": ", 10), "refusal without JSON");
        buf_free(&err);
        return 0;
    }
    const char *values[HTTP_INJECT_NPARAMS];
    int lengths[HTTP_INJECT_NPARAMS], formats[HTTP_INJECT_NPARAMS];
    http_inject_params(b, values, lengths, formats);
    /* the bytea[] parameter: header of 20 bytes, then length + content */
    const unsigned char *p = (const unsigned char *)values[1];
    size_t n = (size_t)lengths[1];
    check(n >= 20 && be32(p + 12) == http_inject_nmessages(b), "bad array header");
    size_t off = 20;
    for (size_t m = 0; m < http_inject_nmessages(b); m++) {
        check(off + 4 <= n, "array too short");
        size_t len = be32(p + off);
        off += 4;
        check(off + len <= n, "element too long");
        const unsigned char *c = p + off;
        size_t col = 0;
        for (size_t i = 0; i < len; i++) {
            if (c[i] == '\r') {
                check(i + 1 < len && c[i + 1] == '\n', "bare CR");
                i++;
                col = 0;
                continue;
            }
            check(c[i] != '\n', "bare LF");
            check(++col <= 998, "line over 998 octets");
        }
        off += len;
    }
    check(off == n, "trailing bytes in the array");
    http_inject_free(b);
    buf_free(&err);
    return 0;
}
