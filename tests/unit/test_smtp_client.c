/* Unit tests of the smtp_client parsers: dot-stuffing and CRLF normalisation
 * (every SMTP smuggling sequence of RELIABILITY.md), the reply line parser
 * and enhanced status extraction. Table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "smtp_client.h"
#include "util.h"

struct stuff_case {
    const char *in;
    const char *out;
};

static const struct stuff_case stuff_cases[] = {
    {"", ""},
    {"a", "a\r\n"},
    {"a\r\n", "a\r\n"},
    {"a\n", "a\r\n"},
    {"a\r", "a\r\n"},
    {"\r\n", "\r\n"},
    {"\n\n", "\r\n\r\n"},
    {"\r\r", "\r\n\r\n"},
    {"\n\r", "\r\n\r\n"},
    {".", "..\r\n"},
    {".\r\n", "..\r\n"},
    {"..", "...\r\n"},
    {".a\r\nb\r\n.c", "..a\r\nb\r\n..c\r\n"},
    {"a.b\r\n.", "a.b\r\n..\r\n"},
    {" .a", " .a\r\n"},
    /* SMTP smuggling (CVE-2023-51764/5/6): none may end DATA early */
    {"A\n.\nMAIL FROM:<e@x>\r\n", "A\r\n..\r\nMAIL FROM:<e@x>\r\n"},
    {"A\r\n.\nMAIL FROM:<e@x>\r\n", "A\r\n..\r\nMAIL FROM:<e@x>\r\n"},
    {"A\n.\r\nMAIL FROM:<e@x>\r\n", "A\r\n..\r\nMAIL FROM:<e@x>\r\n"},
    {"A\r.\r\nMAIL FROM:<e@x>\r\n", "A\r\n..\r\nMAIL FROM:<e@x>\r\n"},
    {"A\r\n.\rMAIL FROM:<e@x>\r\n", "A\r\n..\r\nMAIL FROM:<e@x>\r\n"},
    {"A\r.\rB", "A\r\n..\r\nB\r\n"},
    {"A\r\n.\r\nB", "A\r\n..\r\nB\r\n"},
    {"A\r\r\n.\r\r\nB", "A\r\n\r\n..\r\n\r\nB\r\n"},
    {"\r\n.\r\n", "\r\n..\r\n"},
    {"Subject: x\r\n\r\nbody", "Subject: x\r\n\r\nbody\r\n"},
};

static void
test_dotstuff_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof stuff_cases / sizeof stuff_cases[0]; i++) {
        struct buf b;
        buf_init(&b);
        const char *in = stuff_cases[i].in;
        smtp_client_dotstuff(&b, (const unsigned char *)in, strlen(in));
        if (b.len != strlen(stuff_cases[i].out) ||
            memcmp(b.data ? b.data : "", stuff_cases[i].out, b.len) != 0)
            fail_msg("case %zu: got \"%s\"", i, b.data ? b.data : "");
        buf_free(&b);
    }
}

static void
test_dotstuff_appends_and_binary(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "X");
    const unsigned char bin[] = {'.', 0, 0xff, '\n', 0x80, '.', '\r'};
    smtp_client_dotstuff(&b, bin, sizeof bin);
    const unsigned char want[] = {'X', '.', '.', 0, 0xff, '\r', '\n', 0x80, '.', '\r', '\n'};
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    buf_free(&b);
}

static void
test_dotstuff_long_line(void **state)
{
    (void)state;
    size_t n = 1 << 20;
    unsigned char *in = xmalloc(n);
    memset(in, 'x', n);
    in[0] = '.';
    struct buf b;
    buf_init(&b);
    smtp_client_dotstuff(&b, in, n);
    assert_int_equal(b.len, n + 3);
    assert_memory_equal(b.data, "..x", 3);
    assert_memory_equal(b.data + b.len - 2, "\r\n", 2);
    free(in);
    buf_free(&b);
}

struct reply_case {
    const char *line;
    int ret;
    int code;
    bool last;
};

static const struct reply_case reply_cases[] = {
    {"250 ok", 0, 250, true},  {"250-PIPELINING", 0, 250, false}, {"250", 0, 250, true},
    {"220 ", 0, 220, true},    {"354 go", 0, 354, true},          {"421 4.3.2 busy", 0, 421, true},
    {"599 x", 0, 599, true},   {"200 x", 0, 200, true},           {"25", -1, 0, false},
    {"", -1, 0, false},        {"2500 x", -1, 0, false},          {"250x", -1, 0, false},
    {"abc def", -1, 0, false}, {"2x0 what", -1, 0, false},        {"150 x", -1, 0, false},
    {"650 x", -1, 0, false},   {"260 x", 0, 260, true},           {" 250 x", -1, 0, false},
    {"250\tx", -1, 0, false},
};

static void
test_reply_parse_line(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof reply_cases / sizeof reply_cases[0]; i++) {
        const struct reply_case *rc = &reply_cases[i];
        int code = 0;
        bool last = false;
        int r = smtp_reply_parse_line(rc->line, strlen(rc->line), &code, &last);
        if (r != rc->ret)
            fail_msg("case \"%s\": ret %d", rc->line, r);
        if (r == 0 && (code != rc->code || last != rc->last))
            fail_msg("case \"%s\": code %d last %d", rc->line, code, last);
    }
}

static void
test_reply_parse_nul(void **state)
{
    (void)state;
    int code;
    bool last;
    assert_int_equal(smtp_reply_parse_line("250 o\0k", 7, &code, &last), -1);
    assert_int_equal(smtp_reply_parse_line("25\0 ok", 6, &code, &last), -1);
    /* the length is what counts, not a NUL terminator */
    assert_int_equal(smtp_reply_parse_line("250 okXXX", 6, &code, &last), 0);
}

struct status_case {
    const char *text;
    int ret;
    const char *status;
};

static const struct status_case status_cases[] = {
    {"5.1.1 no such user", 0, "5.1.1"},
    {"550 5.1.1 no such user", 0, "5.1.1"},
    {"550-5.1.1 first\n550 5.1.1 second", 0, "5.1.1"},
    {"4.7.0", 0, "4.7.0"},
    {"2.0.0 Ok: queued", 0, "2.0.0"},
    {"5.123.456 long parts", 0, "5.123.456"},
    {"4.4.7\tx", 0, "4.4.7"},
    {"5.1234.1 too long", -1, NULL},
    {"5.1.1234 too long", -1, NULL},
    {"3.1.1 bad class", -1, NULL},
    {"5..1 x", -1, NULL},
    {"5.1. x", -1, NULL},
    {"5.1.1x", -1, NULL},
    {"550 no status here", -1, NULL},
    {"Ok", -1, NULL},
    {"", -1, NULL},
    {"250 ", -1, NULL},
};

static void
test_enhanced_status(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof status_cases / sizeof status_cases[0]; i++) {
        const struct status_case *sc = &status_cases[i];
        char out[16] = "";
        int r = smtp_reply_enhanced_status(sc->text, out, sizeof out);
        if (r != sc->ret)
            fail_msg("case \"%s\": ret %d", sc->text, r);
        if (r == 0 && strcmp(out, sc->status) != 0)
            fail_msg("case \"%s\": got %s", sc->text, out);
    }
    char small[4];
    assert_int_equal(smtp_reply_enhanced_status("5.1.1 x", small, sizeof small), -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dotstuff_table),
        cmocka_unit_test(test_dotstuff_appends_and_binary),
        cmocka_unit_test(test_dotstuff_long_line),
        cmocka_unit_test(test_reply_parse_line),
        cmocka_unit_test(test_reply_parse_nul),
        cmocka_unit_test(test_enhanced_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
