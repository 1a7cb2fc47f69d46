/* libFuzzer target for smtp_client_dotstuff: the output has CRLF line
 * endings only, every line starting with "." starts with "..", it ends with
 * CRLF (or is empty), it never contains CRLF.CRLF, and removing the stuffing
 * gives the input with every line ending (CRLF, bare CR, bare LF) turned
 * into CRLF, computed here independently. */
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
        fprintf(stderr, "fuzz_dotstuff: %s\n", what);
        abort();
    }
}

/* Reference normalisation, byte by byte. */
static void
normalise(struct buf *out, const uint8_t *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (in[i] == '\r') {
            buf_append(out, "\r\n", 2);
            if (i + 1 < n && in[i + 1] == '\n')
                i++;
        } else if (in[i] == '\n') {
            buf_append(out, "\r\n", 2);
        } else {
            buf_append(out, &in[i], 1);
        }
    }
    if (out->len && (out->len < 2 || memcmp(out->data + out->len - 2, "\r\n", 2) != 0))
        buf_append(out, "\r\n", 2);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct buf out, want, unstuffed;
    buf_init(&out);
    buf_init(&want);
    buf_init(&unstuffed);
    smtp_client_dotstuff(&out, data, size);
    normalise(&want, data, size);

    const char *o = out.data ? out.data : "";
    if (out.len)
        check(out.len >= 2 && memcmp(o + out.len - 2, "\r\n", 2) == 0, "no final CRLF");
    size_t line_start = 0;
    for (size_t i = 0; i < out.len; i++) {
        if (o[i] == '\r')
            check(i + 1 < out.len && o[i + 1] == '\n', "bare CR in output");
        if (o[i] == '\n') {
            check(i > 0 && o[i - 1] == '\r', "bare LF in output");
            size_t len = i - 1 - line_start;
            const char *line = o + line_start;
            if (len && line[0] == '.') {
                check(len >= 2 && line[1] == '.', "unstuffed leading dot");
                buf_append(&unstuffed, line + 1, len - 1);
            } else {
                buf_append(&unstuffed, line, len);
            }
            buf_append(&unstuffed, "\r\n", 2);
            line_start = i + 1;
        }
    }
    check(line_start == out.len, "trailing partial line");
    check(out.len < 3 || memcmp(o, ".\r\n", 3) != 0, "starts with end of data");
    for (size_t i = 0; i + 5 <= out.len; i++)
        check(memcmp(o + i, "\r\n.\r\n", 5) != 0, "CRLF.CRLF in output");
    check(unstuffed.len == want.len &&
              (want.len == 0 || memcmp(unstuffed.data, want.data, want.len) == 0),
          "unstuffed output differs from normalised input");
    buf_free(&out);
    buf_free(&want);
    buf_free(&unstuffed);
    return 0;
}
