/* libFuzzer target for SMTP reply parsing: the input is split into lines
 * (at LF, CR removed before it) as the session's reader does; each line
 * goes through smtp_reply_parse_line and smtp_reply_enhanced_status, and
 * whatever they accept must satisfy the protocol's shape. A multi-line reply
 * is assembled with the same limits as a session (SMTP_MAX_REPLY bytes,
 * SMTP_MAX_REPLY_LINES lines, one code). */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_client.h"
#include "util.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_smtp_reply: %s\n", what);
        abort();
    }
}

static void
check_status(const char *text)
{
    char st[16];
    if (smtp_reply_enhanced_status(text, st, sizeof st) != 0)
        return;
    size_t n = strlen(st);
    check(n >= 5 && n <= 9, "status length");
    check(st[0] == '2' || st[0] == '4' || st[0] == '5', "status class");
    check(st[1] == '.', "status dot");
    int dots = 0;
    for (size_t i = 1; i < n; i++) {
        check(st[i] == '.' || (st[i] >= '0' && st[i] <= '9'), "status character");
        dots += st[i] == '.';
    }
    check(dots == 2, "status parts");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct buf reply;
    buf_init(&reply);
    size_t lines = 0;
    int rcode = 0;
    size_t start = 0;
    while (start < size) {
        const uint8_t *nl = memchr(data + start, '\n', size - start);
        size_t end = nl ? (size_t)(nl - data) : size;
        size_t len = end - start;
        if (len && data[start + len - 1] == '\r')
            len--;
        const char *line = (const char *)data + start;
        start = end + 1;

        int code = -1;
        bool last = false;
        int r = smtp_reply_parse_line(line, len, &code, &last);
        if (r != 0) {
            buf_reset(&reply);
            lines = 0;
            continue;
        }
        check(code >= 200 && code <= 599, "code range");
        check(len >= 3, "line length");
        check(!memchr(line, '\0', len), "NUL accepted");
        check(last == (len == 3 || line[3] == ' '), "last flag");
        char *copy = xstrndup(line, len);
        check_status(copy);
        free(copy);

        if (lines > 0 && code != rcode) {
            buf_reset(&reply);
            lines = 0;
            continue;
        }
        rcode = code;
        if (++lines > SMTP_MAX_REPLY_LINES || reply.len + len + 1 > SMTP_MAX_REPLY) {
            buf_reset(&reply);
            lines = 0;
            continue;
        }
        if (reply.len)
            buf_append(&reply, "\n", 1);
        buf_append(&reply, line, len);
        if (last) {
            check(reply.len <= SMTP_MAX_REPLY, "reply size");
            check_status(reply.data);
            buf_reset(&reply);
            lines = 0;
        }
    }
    buf_free(&reply);
    return 0;
}
