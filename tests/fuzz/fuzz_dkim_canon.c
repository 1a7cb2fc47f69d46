/* libFuzzer target for the DKIM relaxed canonicalization (dkim_canon_header,
 * dkim_canon_body) and the sender domain parser. Checked on every input:
 * canonical output has CRLF line endings only (none at all for a header), no
 * tab, no run of two spaces, no space before a line end, no trailing empty
 * line; a header name is lower case with no space next to the colon;
 * canonicalizing twice changes nothing; a sender domain is lower-case
 * letters, digits, '-', '_' and '.'. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dkim.h"
#include "util.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_dkim_canon: %s\n", what);
        abort();
    }
}

static void
check_body(const uint8_t *data, size_t size)
{
    struct buf out, again;
    buf_init(&out);
    buf_init(&again);
    dkim_canon_body(&out, data, size);
    const char *o = out.data ? out.data : "";
    for (size_t i = 0; i < out.len; i++) {
        check(o[i] != '\t', "tab in canonical body");
        if (o[i] == '\r')
            check(i + 1 < out.len && o[i + 1] == '\n', "bare CR in canonical body");
        if (o[i] == '\n')
            check(i > 0 && o[i - 1] == '\r', "bare LF in canonical body");
        if (o[i] == ' ') {
            check(i + 1 < out.len && o[i + 1] != ' ', "two spaces in canonical body");
            check(o[i + 1] != '\r', "space at line end in canonical body");
        }
    }
    if (out.len) {
        check(out.len >= 2 && memcmp(o + out.len - 2, "\r\n", 2) == 0, "no final CRLF");
        check(out.len > 2, "empty line alone");
        check(out.len < 4 || memcmp(o + out.len - 4, "\r\n\r\n", 4) != 0, "trailing empty line");
    }
    dkim_canon_body(&again, (const unsigned char *)o, out.len);
    check(again.len == out.len && (out.len == 0 || memcmp(again.data, o, out.len) == 0),
          "body canonicalization not idempotent");
    buf_free(&out);
    buf_free(&again);
}

static void
check_header(const uint8_t *data, size_t size)
{
    struct buf out, again;
    buf_init(&out);
    buf_init(&again);
    int rc = dkim_canon_header(&out, (const char *)data, size);
    check((rc == 0) == (memchr(data, ':', size) != NULL), "colon handling");
    if (rc == 0) {
        const char *o = out.data;
        const char *colon = memchr(o, ':', out.len);
        check(colon != NULL, "no colon in canonical header");
        size_t nl = (size_t)(colon - o);
        for (size_t i = 0; i < nl; i++)
            check(tolower((unsigned char)o[i]) == (unsigned char)o[i], "upper case in name");
        check(nl == 0 || o[nl - 1] != ' ', "space before colon");
        check(nl + 1 == out.len || o[nl + 1] != ' ', "space after colon");
        for (size_t i = 0; i < out.len; i++) {
            check(o[i] != '\r' && o[i] != '\n' && o[i] != '\t', "CR, LF or tab in header");
            check(o[i] != ' ' || (i + 1 < out.len && o[i + 1] != ' '),
                  "two spaces or trailing space in header");
        }
        check(dkim_canon_header(&again, o, out.len) == 0, "canonical header refused");
        check(again.len == out.len && memcmp(again.data, o, out.len) == 0,
              "header canonicalization not idempotent");
    } else {
        check(out.len == 0, "output for a refused header");
    }
    buf_free(&out);
    buf_free(&again);
}

static void
check_domain(const uint8_t *data, size_t size)
{
    char *d = dkim_sender_domain("b@env.test", data, size);
    check(d != NULL, "no domain despite the envelope fallback");
    check(*d != '\0', "empty domain");
    for (const char *p = d; *p; p++)
        check(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '-' || *p == '_' ||
                  *p == '.',
              "bad character in domain");
    free(d);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_body(data, size);
    check_header(data, size);
    check_domain(data, size);
    return 0;
}
