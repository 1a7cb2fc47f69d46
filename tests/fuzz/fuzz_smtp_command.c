/* libFuzzer target for the smtp_server parsers. The same input goes to:
 * the command line parser (the argument lies inside the line), the MAIL
 * and RCPT path parsers (an accepted address has no control, space or 8-bit
 * bytes outside quotes, fits its buffer and has a domain), the MAIL
 * parameter parser, the DATA reader (fed whole and in pieces of every size
 * from 1 to 7, compared with an independent line-by-line reference:
 * only CRLF "." CRLF ends the data, leading dots of CRLF lines are removed),
 * the header extractor (run twice: nothing left to take the second time)
 * and the base64 decoder. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "smtp_server.h"
#include "util.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_smtp_command: %s\n", what);
        abort();
    }
}

/* Reference DATA reader: finds the first line (at the start or after CRLF)
 * that is exactly "." CRLF; removes the first byte of every line that
 * starts with "." before it. Returns the bytes consumed, or 0 if the
 * terminator is not there. */
static size_t
reference_data(const uint8_t *in, size_t n, struct buf *out)
{
    size_t line = 0;
    for (;;) {
        if (line + 3 <= n && memcmp(in + line, ".\r\n", 3) == 0)
            return line + 3;
        size_t end = line;
        while (end + 1 < n && !(in[end] == '\r' && in[end + 1] == '\n'))
            end++;
        if (end + 1 >= n)
            return 0;
        size_t start = (in[line] == '.') ? line + 1 : line;
        buf_append(out, in + start, end + 2 - start);
        line = end + 2;
    }
}

static void
fuzz_data(const uint8_t *data, size_t size)
{
    struct buf want;
    buf_init(&want);
    size_t want_used = reference_data(data, size, &want);

    for (size_t step = 0; step <= 7; step++) {
        struct buf out;
        buf_init(&out);
        struct smtp_server_data d;
        smtp_server_data_init(&d, &out, 1 << 24);
        size_t pos = 0;
        while (pos < size && !d.done) {
            size_t n = step == 0 ? size - pos : (size - pos < step ? size - pos : step);
            size_t used = smtp_server_data_feed(&d, (const char *)data + pos, n);
            check(used <= n, "consumed more than given");
            check(used == n || d.done, "stopped early without the end");
            pos += used;
        }
        if (want_used) {
            check(d.done, "terminator missed");
            check(pos == want_used, "ended at another place than the reference");
            check(out.len == want.len && (!out.len || memcmp(out.data, want.data, out.len) == 0),
                  "content differs from the reference");
        } else {
            check(!d.done, "ended without CRLF.CRLF");
        }
        buf_free(&out);
    }

    /* A small limit: memory stays bounded, the end is still found. */
    struct buf out;
    buf_init(&out);
    struct smtp_server_data d;
    smtp_server_data_init(&d, &out, 16);
    size_t used = smtp_server_data_feed(&d, (const char *)data, size);
    check(out.len <= 16, "stored beyond the limit");
    check(d.done == (want_used != 0), "limit changed where the data ends");
    if (d.done) {
        check(used == want_used, "limit changed the end");
        check(d.overflow == (want.len > 16), "overflow flag wrong");
    }
    buf_free(&out);
    buf_free(&want);
}

static void
fuzz_command(const char *line, size_t size)
{
    struct smtp_server_cmd cmd;
    const char *err = smtp_server_parse_command(line, size, &cmd);
    if (!err) {
        check(cmd.arg >= line && cmd.arg + cmd.arglen <= line + size, "argument outside line");
        for (size_t i = 0; i < size; i++)
            check(line[i] == '\t' || ((unsigned char)line[i] >= 0x20 && line[i] != 0x7f),
                  "control character accepted");
    } else {
        check(err[0] == '5', "error reply not 5xx");
    }
    for (int mail = 0; mail <= 1; mail++) {
        char addr[SMTP_SERVER_MAX_ADDR];
        const char *params;
        const char *perr = smtp_server_parse_path(line, size, mail, addr, sizeof addr, &params);
        if (perr) {
            check(perr[0] == '5', "path error reply not 5xx");
            continue;
        }
        size_t alen = strlen(addr);
        check(alen < sizeof addr, "address too long");
        check(params >= line && params <= line + size, "params outside line");
        check(alen > 0 || mail, "empty recipient accepted");
        if (alen)
            check(strchr(addr, '@') != NULL, "address without @");
        int quoted = 0;
        for (size_t i = 0; i < alen; i++) {
            unsigned char ch = (unsigned char)addr[i];
            check(ch >= 0x20 && ch < 0x7f, "control or 8-bit byte in address");
            if (quoted && ch == '\\' && i + 1 < alen) {
                i++;
                continue;
            }
            if (ch == '"')
                quoted = !quoted;
            if (!quoted)
                check(ch != ' ' && ch != '<' && ch != '>', "bad byte outside quotes");
        }
    }
    char *z = xstrndup(line, size);
    uint64_t declared;
    struct smtp_server_mail_dsn md;
    const char *merr = smtp_server_mail_params(z, UINT64_MAX / 2, &declared, &md);
    check(!merr || merr[0] == '5', "param error reply not 5xx");
    if (!merr) {
        check(md.ret == 0 || md.ret == 'F' || md.ret == 'H', "bad RET");
        for (const char *q = md.envid; *q; q++)
            check(*q >= 0x20 && *q <= 0x7e, "ENVID not printable ASCII");
    }
    struct smtp_server_rcpt_dsn rd;
    const char *rerr = smtp_server_rcpt_params(z, &rd);
    check(!rerr || rerr[0] == '5', "RCPT param error reply not 5xx");
    if (!rerr) {
        check(rd.notify >= -1 && rd.notify <= 7, "bad NOTIFY mask");
        check(!rd.orcpt[0] || strchr(rd.orcpt, ';'), "ORCPT without a type");
        for (const char *q = rd.orcpt; *q; q++)
            check(*q >= 0x20 && *q <= 0x7e, "ORCPT not printable ASCII");
    }
    free(z);
}

static void
fuzz_headers(const uint8_t *data, size_t size)
{
    struct buf b;
    buf_init(&b);
    buf_append(&b, data, size);
    size_t start = size ? data[0] % (size + 1) : 0;
    char *job, *vmta;
    smtp_server_take_headers(&b, start, &job, &vmta);
    check(b.len <= size, "content grew");
    check(start == 0 || memcmp(b.data, data, start) == 0, "bytes before start changed");
    check(!job || (strchr(job, '\r') == NULL && strchr(job, '\n') == NULL), "CR/LF in job");
    check(!vmta || (strchr(vmta, '\r') == NULL && strchr(vmta, '\n') == NULL), "CR/LF in vmta");
    free(job);
    free(vmta);
    size_t len = b.len;
    smtp_server_take_headers(&b, start, &job, &vmta);
    check(b.len == len, "second pass removed more");
    check(!job && !vmta, "second pass found a field");
    buf_free(&b);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_data(data, size);
    fuzz_command((const char *)data, size);
    fuzz_headers(data, size);
    unsigned char out[256];
    long n = smtp_server_base64_decode((const char *)data, size, out, sizeof out);
    check(n >= -1 && n <= (long)sizeof out, "base64 length out of range");
    return 0;
}
