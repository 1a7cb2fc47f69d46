/* Unit tests of the smtp_server parsers: command lines, MAIL/RCPT paths and
 * MAIL parameters (SIZE overflow), the DATA reader (un-stuffing, every SMTP
 * smuggling sequence, byte-at-a-time feeding, the size limit), X-Job and
 * X-Virtual-MTA extraction, base64, passwords and allow-list networks.
 * Table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "log.h"
#include "smtp_in_auth.h"
#include "smtp_in_batch.h"
#include "smtp_server.h"
#include "util.h"

/* ---- command lines ---- */

struct cmd_case {
    const char *line;
    enum smtp_server_verb verb;
    const char *arg; /* NULL: the line is refused */
};

static const struct cmd_case cmd_cases[] = {
    {"EHLO client.test", SMTP_VERB_EHLO, "client.test"},
    {"ehlo   client.test  ", SMTP_VERB_EHLO, "client.test"},
    {"HELO x", SMTP_VERB_HELO, "x"},
    {"MAIL FROM:<a@b.test> SIZE=10", SMTP_VERB_MAIL, "FROM:<a@b.test> SIZE=10"},
    {"rcpt to:<a@b.test>", SMTP_VERB_RCPT, "to:<a@b.test>"},
    {"DATA", SMTP_VERB_DATA, ""},
    {"data ", SMTP_VERB_DATA, ""},
    {"RSET", SMTP_VERB_RSET, ""},
    {"NOOP whatever", SMTP_VERB_NOOP, "whatever"},
    {"QUIT", SMTP_VERB_QUIT, ""},
    {"StartTLS", SMTP_VERB_STARTTLS, ""},
    {"AUTH PLAIN AGFsaWNlAHM=", SMTP_VERB_AUTH, "PLAIN AGFsaWNlAHM="},
    {"BDAT 10 LAST", SMTP_VERB_BDAT, "10 LAST"},
    {"MAILX FROM:<a@b>", SMTP_VERB_UNKNOWN, "FROM:<a@b>"},
    {"", SMTP_VERB_UNKNOWN, ""},
    {"EHLO a\rb", SMTP_VERB_UNKNOWN, NULL},
    {"EHLO a\nb", SMTP_VERB_UNKNOWN, NULL},
    {"EHLO \x7f", SMTP_VERB_UNKNOWN, NULL},
};

static void
test_parse_command(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cmd_cases / sizeof cmd_cases[0]; i++) {
        const struct cmd_case *c = &cmd_cases[i];
        struct smtp_server_cmd cmd;
        const char *err = smtp_server_parse_command(c->line, strlen(c->line), &cmd);
        if (!c->arg) {
            if (!err)
                fail_msg("case %zu \"%s\": accepted", i, c->line);
            continue;
        }
        if (err)
            fail_msg("case %zu \"%s\": %s", i, c->line, err);
        assert_int_equal(cmd.verb, c->verb);
        if (cmd.arglen != strlen(c->arg) || memcmp(cmd.arg, c->arg, cmd.arglen) != 0)
            fail_msg("case %zu \"%s\": arg \"%.*s\"", i, c->line, (int)cmd.arglen, cmd.arg);
    }
}

static void
test_parse_command_nul_and_length(void **state)
{
    (void)state;
    struct smtp_server_cmd cmd;
    const char nul[] = "NOOP a\0b";
    assert_non_null(smtp_server_parse_command(nul, sizeof nul - 1, &cmd));
    char *line = xmalloc(SMTP_SERVER_MAX_LINE + 2);
    memset(line, 'x', SMTP_SERVER_MAX_LINE + 1);
    memcpy(line, "NOOP ", 5);
    assert_null(smtp_server_parse_command(line, SMTP_SERVER_MAX_LINE, &cmd));
    const char *err = smtp_server_parse_command(line, SMTP_SERVER_MAX_LINE + 1, &cmd);
    assert_non_null(err);
    assert_string_equal(err, "500 5.5.2 Line too long");
    free(line);
}

/* ---- paths ---- */

struct path_case {
    bool mail;
    const char *arg;
    const char *addr;   /* NULL: refused */
    const char *params; /* what follows, when accepted */
};

static const struct path_case path_cases[] = {
    {true, "FROM:<a@b.test>", "a@b.test", ""},
    {true, "from:<a@b.test>", "a@b.test", ""},
    {true, "FROM: <a@b.test>", "a@b.test", ""},
    {true, "FROM:<>", "", ""},
    {true, "FROM:<> SIZE=10 BODY=8BITMIME", "", "SIZE=10 BODY=8BITMIME"},
    {true, "FROM:<a@b.test>  SIZE=1", "a@b.test", "SIZE=1"},
    {true, "FROM:a@b.test", NULL, NULL},
    {true, "FROM:<a@b.test", NULL, NULL},
    {true, "FROM:<a@b.test>x", NULL, NULL},
    {true, "TO:<a@b.test>", NULL, NULL},
    {true, "FROM:<a>", NULL, NULL},
    {false, "TO:<a@b.test>", "a@b.test", ""},
    {false, "TO:<>", NULL, NULL},
    {false, "TO:<postmaster>", NULL, NULL},
    {false, "TO:<a@>", NULL, NULL},
    {false, "TO:<@b.test>", NULL, NULL},
    {false, "TO:<a@b..test>", NULL, NULL},
    {false, "TO:<a@.b.test>", NULL, NULL},
    {false, "TO:<a@b.test.>", NULL, NULL},
    {false, "TO:<.a@b.test>", NULL, NULL},
    {false, "TO:<a..b@b.test>", NULL, NULL},
    {false, "TO:<a b@b.test>", NULL, NULL},
    {false, "TO:<a\tb@b.test>", NULL, NULL},
    {false, "TO:<a\rb@b.test>", NULL, NULL},
    {false, "TO:<a\nb@b.test>", NULL, NULL},
    {false, "TO:<a\xc3\xa9@b.test>", NULL, NULL},
    /* what SQL refuses (addr_validate): '_', leading or trailing '-', bad
     * address literals, '<' or '>' even quoted */
    {false, "TO:<a@b_c.test>", NULL, NULL},
    {false, "TO:<a@-b.test>", NULL, NULL},
    {false, "TO:<a@b-.test>", NULL, NULL},
    {false, "TO:<a@[999.0.0.1]>", NULL, NULL},
    {false, "TO:<a@[IPv6:zz::1]>", NULL, NULL},
    {false, "TO:<a@[hello]>", NULL, NULL},
    {false, "TO:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", ""},
    {false, "TO:<a@[127.0.0.1]>", "a@[127.0.0.1]", ""},
    {false, "TO:<a@[127.0.0.1>", NULL, NULL},
    {false, "TO:<v%ext@local.test>", "v%ext@local.test", ""},
    {false, "TO:<\"v@ext\"@local.test>", "\"v@ext\"@local.test", ""},
    {false, "TO:<\"a>b\"@local.test>", NULL, NULL},
    {false, "TO:<\"a\\\"b\"@local.test>", "\"a\\\"b\"@local.test", ""},
    {false, "TO:<\"unterminated@local.test>", NULL, NULL},
    {false, "TO:<@r1.test,@r2.test:a@b.test>", "a@b.test", ""},
    {false, "TO:<@r1.test>", NULL, NULL},
    {false, "TO:<a@b.test> NOTIFY=NEVER", "a@b.test", "NOTIFY=NEVER"},
    {false, "TO:<a>@b.test>", NULL, NULL},
};

static void
test_parse_path(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof path_cases / sizeof path_cases[0]; i++) {
        const struct path_case *c = &path_cases[i];
        char addr[SMTP_SERVER_MAX_ADDR];
        const char *params;
        const char *err =
            smtp_server_parse_path(c->arg, strlen(c->arg), c->mail, addr, sizeof addr, &params);
        if (!c->addr) {
            if (!err)
                fail_msg("case %zu \"%s\": accepted as \"%s\"", i, c->arg, addr);
            assert_true(err[0] == '5');
            continue;
        }
        if (err)
            fail_msg("case %zu \"%s\": %s", i, c->arg, err);
        assert_string_equal(addr, c->addr);
        assert_string_equal(params, c->params);
    }
}

static void
test_parse_path_lengths(void **state)
{
    (void)state;
    char arg[600], addr[SMTP_SERVER_MAX_ADDR];
    const char *params;
    /* local part: 64 is the most */
    snprintf(arg, sizeof arg, "TO:<%.*s@b.test>", 64,
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_null(smtp_server_parse_path(arg, strlen(arg), false, addr, sizeof addr, &params));
    snprintf(arg, sizeof arg, "TO:<%.*s@b.test>", 65,
             "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    assert_non_null(smtp_server_parse_path(arg, strlen(arg), false, addr, sizeof addr, &params));
    /* a whole address longer than 254 */
    char dom[300];
    memset(dom, 0, sizeof dom);
    for (int i = 0; i < 5; i++)
        strcat(dom, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.");
    strcat(dom, "test");
    snprintf(arg, sizeof arg, "TO:<a@%s>", dom);
    assert_non_null(smtp_server_parse_path(arg, strlen(arg), false, addr, sizeof addr, &params));
    /* the output buffer is never overrun */
    char tiny[8];
    snprintf(arg, sizeof arg, "TO:<abcdef@b.test>");
    assert_non_null(smtp_server_parse_path(arg, strlen(arg), false, tiny, sizeof tiny, &params));
}

/* ---- MAIL parameters ---- */

struct param_case {
    const char *params;
    uint64_t max;
    int code; /* 0: accepted */
    uint64_t declared;
};

static const struct param_case param_cases[] = {
    {"", 1000, 0, 0},
    {"SIZE=1000", 1000, 0, 1000},
    {"size=999 body=8bitmime", 1000, 0, 999},
    {"BODY=7BIT", 1000, 0, 0},
    {"SIZE=1001", 1000, 552, 0},
    {"SIZE=18446744073709551615", UINT64_MAX, 0, UINT64_MAX},
    {"SIZE=18446744073709551616", UINT64_MAX, 552, 0},
    {"SIZE=18446744073709551616", 1000, 552, 0},
    {"SIZE=99999999999999999999999999999999999999999999", 1000, 552, 0},
    {"SIZE=", 1000, 501, 0},
    {"SIZE=-1", 1000, 501, 0},
    {"SIZE=1x", 1000, 501, 0},
    {"SIZE", 1000, 555, 0},
    {"BODY=BINARYMIME", 1000, 501, 0},
    {"SMTPUTF8", 1000, 555, 0},
    {"AUTH=<>", 1000, 0, 0},
    {"AUTH=a+40b.test SIZE=10", 1000, 0, 10},
    {"AUTH=", 1000, 501, 0},
    {"AUTH=a+4", 1000, 501, 0},
    {"AUTH=a=b", 1000, 501, 0},
};

static void
test_mail_params(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof param_cases / sizeof param_cases[0]; i++) {
        const struct param_case *c = &param_cases[i];
        uint64_t declared = 42;
        const char *err = smtp_server_mail_params(c->params, c->max, &declared, NULL);
        int code = err ? atoi(err) : 0;
        if (code != c->code)
            fail_msg("case %zu \"%s\": got %s", i, c->params, err ? err : "accepted");
        if (!err)
            assert_true(declared == c->declared);
    }
}

/* ---- DSN options (RFC 3461) ---- */

struct xtext_case {
    const char *in;
    long len; /* -1: refused */
    const char *out;
};

static const struct xtext_case xtext_cases[] = {
    {"abc", 3, "abc"},  {"a+2Bb", 3, "a+b"},
    {"+3D", 1, "="},    {"rfc822+3Ba+40b", 10, "rfc822;a@b"},
    {"+00", 1, ""},                         /* decodes, but a NUL: dsn_text refuses it */
    {"", -1, NULL},     {"a+2b", -1, NULL}, /* lower-case hex */
    {"a+2", -1, NULL},  {"a+", -1, NULL},
    {"a=b", -1, NULL},  {"a b", -1, NULL},
    {"\x7f", -1, NULL}, {"caf\xc3\xa9", -1, NULL},
};

static void
test_xtext(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof xtext_cases / sizeof xtext_cases[0]; i++) {
        const struct xtext_case *c = &xtext_cases[i];
        char out[32];
        long n = smtp_server_xtext_decode(c->in, strlen(c->in), out, sizeof out);
        if (n != c->len)
            fail_msg("case %zu \"%s\": got %ld", i, c->in, n);
        if (n > 0 && c->out[0])
            assert_string_equal(out, c->out);
    }
    char small[4];
    assert_int_equal(smtp_server_xtext_decode("abcd", 4, small, sizeof small), -1);
    assert_int_equal(smtp_server_xtext_decode("abc", 3, small, sizeof small), 3);
}

struct dsn_mail_case {
    const char *params;
    int code; /* 0: accepted */
    char ret;
    const char *envid;
};

static const struct dsn_mail_case dsn_mail_cases[] = {
    {"RET=FULL", 0, 'F', ""},
    {"ret=hdrs envid=QQ+2B314", 0, 'H', "QQ+314"},
    {"SIZE=10 ENVID=a+20b RET=HDRS", 0, 'H', "a b"},
    {"RET=", 501, 0, NULL},
    {"RET=ALL", 501, 0, NULL},
    {"RET=FULL RET=FULL", 501, 0, NULL},
    {"ENVID=", 501, 0, NULL},
    {"ENVID=a+0D+0Ab", 501, 0, NULL}, /* CR LF once decoded */
    {"ENVID=a+zz", 501, 0, NULL},
    {"ENVID=a ENVID=b", 501, 0, NULL},
    {"NOTIFY=NEVER", 555, 0, NULL}, /* a RCPT parameter */
};

static void
test_mail_params_dsn(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof dsn_mail_cases / sizeof dsn_mail_cases[0]; i++) {
        const struct dsn_mail_case *c = &dsn_mail_cases[i];
        uint64_t declared;
        struct smtp_server_mail_dsn dsn;
        const char *err = smtp_server_mail_params(c->params, 1000, &declared, &dsn);
        int code = err ? atoi(err) : 0;
        if (code != c->code)
            fail_msg("case %zu \"%s\": got %s", i, c->params, err ? err : "accepted");
        if (!err) {
            assert_int_equal(dsn.ret, c->ret);
            assert_string_equal(dsn.envid, c->envid);
        }
    }
    /* ENVID: 100 characters of xtext at most (RFC 3461 4.4) */
    char big[120];
    memcpy(big, "ENVID=", 6);
    memset(big + 6, 'x', 100);
    big[106] = '\0';
    uint64_t declared;
    struct smtp_server_mail_dsn dsn;
    assert_null(smtp_server_mail_params(big, 1000, &declared, &dsn));
    assert_int_equal(strlen(dsn.envid), 100);
    big[106] = 'x';
    big[107] = '\0';
    assert_non_null(smtp_server_mail_params(big, 1000, &declared, &dsn));
    /* without a place to store them, DSN parameters are unknown */
    const char *err = smtp_server_mail_params("RET=FULL", 1000, &declared, NULL);
    assert_non_null(err);
    assert_int_equal(atoi(err), 555);
}

struct dsn_rcpt_case {
    const char *params;
    int code;
    int notify;
    const char *orcpt;
};

static const struct dsn_rcpt_case dsn_rcpt_cases[] = {
    {"", 0, -1, ""},
    {"NOTIFY=NEVER", 0, 0, ""},
    {"notify=never", 0, 0, ""},
    {"NOTIFY=SUCCESS", 0, 1, ""},
    {"NOTIFY=FAILURE,DELAY", 0, 6, ""},
    {"NOTIFY=DELAY,SUCCESS,FAILURE", 0, 7, ""},
    {"ORCPT=rfc822;a+40b.example", 0, -1, "rfc822;a@b.example"},
    {"ORCPT=rfc822;Ann+2BX@B.example NOTIFY=SUCCESS", 0, 1, "rfc822;Ann+X@B.example"},
    {"ORCPT=utf-8;a@b", 0, -1, "utf-8;a@b"},
    {"NOTIFY=", 501, 0, NULL},
    {"NOTIFY=NEVER,SUCCESS", 501, 0, NULL},
    {"NOTIFY=SUCCESS,", 501, 0, NULL},
    {"NOTIFY=,SUCCESS", 501, 0, NULL},
    {"NOTIFY=SOMETIMES", 501, 0, NULL},
    {"NOTIFY=SUCCESS NOTIFY=DELAY", 501, 0, NULL},
    {"ORCPT=rfc822", 501, 0, NULL},
    {"ORCPT=rfc822;", 501, 0, NULL},
    {"ORCPT=;a@b", 501, 0, NULL},
    {"ORCPT=rf(c;a@b", 501, 0, NULL},
    {"ORCPT=rfc822;a=b", 501, 0, NULL},
    {"ORCPT=rfc822;a+00b", 501, 0, NULL},
    {"ORCPT=rfc822;a ORCPT=rfc822;b", 501, 0, NULL},
    {"FOO=1", 555, 0, NULL},
    {"NOTIFY", 555, 0, NULL},
};

static void
test_rcpt_params(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof dsn_rcpt_cases / sizeof dsn_rcpt_cases[0]; i++) {
        const struct dsn_rcpt_case *c = &dsn_rcpt_cases[i];
        struct smtp_server_rcpt_dsn dsn;
        const char *err = smtp_server_rcpt_params(c->params, &dsn);
        int code = err ? atoi(err) : 0;
        if (code != c->code)
            fail_msg("case %zu \"%s\": got %s", i, c->params, err ? err : "accepted");
        if (!err) {
            assert_int_equal(dsn.notify, c->notify);
            assert_string_equal(dsn.orcpt, c->orcpt);
        } else if (code == 501) {
            assert_non_null(strstr(err, "5.5.4"));
        }
    }
    /* ORCPT: 500 characters of xtext at most (RFC 3461 4.2) */
    char big[600];
    memcpy(big, "ORCPT=rfc822;", 13);
    memset(big + 13, 'a', 493);
    big[506] = '\0';
    struct smtp_server_rcpt_dsn dsn;
    assert_null(smtp_server_rcpt_params(big, &dsn));
    assert_int_equal(strlen(dsn.orcpt), 500);
    big[506] = 'a';
    big[507] = '\0';
    assert_non_null(smtp_server_rcpt_params(big, &dsn));
}

/* ---- DATA ---- */

struct data_case {
    const char *in;  /* the bytes after DATA's 354 */
    const char *out; /* stored content; NULL: not finished */
    size_t rest;     /* bytes left after the terminator */
};

static const struct data_case data_cases[] = {
    {".\r\n", "", 0},
    {"a\r\n.\r\n", "a\r\n", 0},
    {"a\r\n.\r\nMAIL", "a\r\n", 4},
    {"..\r\n.\r\n", ".\r\n", 0},
    {".a\r\n..b\r\n.\r\n", "a\r\n.b\r\n", 0},
    {"a.\r\n.\r\n", "a.\r\n", 0},
    {"a\r\n", NULL, 0},
    {"a\r\n.", NULL, 0},
    {"a\r\n.\r", NULL, 0},
    /* SMTP smuggling: none of these ends DATA */
    {"A\n.\nB\r\n.\r\n", "A\n.\nB\r\n", 0},
    {"A\r\n.\nB\r\n.\r\n", "A\r\n\nB\r\n", 0},
    {"A\n.\r\nB\r\n.\r\n", "A\n.\r\nB\r\n", 0},
    {"A\r.\r\nB\r\n.\r\n", "A\r.\r\nB\r\n", 0},
    {"A\r\n.\rB\r\n.\r\n", "A\r\n\rB\r\n", 0},
    {"A\r\n.\r\rB\r\n.\r\n", "A\r\n\r\rB\r\n", 0},
    {"A\r\n.\r.\r\n.\r\n", "A\r\n\r.\r\n", 0},
    {"A\r\r\n.\r\n", "A\r\r\n", 0},
    {"A\n\r\n.\r\n", "A\n\r\n", 0},
    {"\n.\n", NULL, 0},
    {"\r\n.\n", NULL, 0},
    {"\r\n\r\n.\r\n", "\r\n\r\n", 0},
};

static void
check_data(const struct data_case *c, size_t i, size_t step)
{
    struct buf out;
    buf_init(&out);
    struct smtp_server_data d;
    smtp_server_data_init(&d, &out, 1 << 20);
    size_t len = strlen(c->in), pos = 0;
    while (pos < len && !d.done) {
        size_t n = len - pos < step ? len - pos : step;
        size_t used = smtp_server_data_feed(&d, c->in + pos, n);
        assert_true(used <= n);
        if (used < n)
            assert_true(d.done);
        pos += used;
    }
    if (!c->out) {
        if (d.done)
            fail_msg("case %zu step %zu: finished early", i, step);
    } else {
        if (!d.done)
            fail_msg("case %zu step %zu: not finished", i, step);
        if (out.len != strlen(c->out) || memcmp(out.data ? out.data : "", c->out, out.len) != 0)
            fail_msg("case %zu step %zu: got \"%.*s\"", i, step, (int)out.len, out.data);
        assert_int_equal(len - pos, c->rest);
        assert_false(d.overflow);
    }
    buf_free(&out);
}

static void
test_data_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof data_cases / sizeof data_cases[0]; i++) {
        check_data(&data_cases[i], i, 1);
        check_data(&data_cases[i], i, 2);
        check_data(&data_cases[i], i, 3);
        check_data(&data_cases[i], i, 1 << 20);
    }
}

static void
test_data_limit(void **state)
{
    (void)state;
    struct buf out;
    buf_init(&out);
    struct smtp_server_data d;
    smtp_server_data_init(&d, &out, 10);
    const char *in = "0123456789\r\nmore and more\r\n..\r\n.\r\n";
    size_t used = smtp_server_data_feed(&d, in, strlen(in));
    assert_int_equal(used, strlen(in));
    assert_true(d.done);
    assert_true(d.overflow);
    assert_true(out.len <= 10);
    assert_int_equal(d.total, strlen("0123456789\r\nmore and more\r\n.\r\n"));
    buf_free(&out);

    /* Exactly the maximum is accepted. */
    buf_init(&out);
    smtp_server_data_init(&d, &out, 5);
    smtp_server_data_feed(&d, "abc\r\n.\r\n", 8);
    assert_true(d.done);
    assert_false(d.overflow);
    assert_int_equal(out.len, 5);
    buf_free(&out);
}

/* ---- headers ---- */

struct header_case {
    const char *in;
    size_t start;
    const char *out;
    const char *job;
    const char *vmta;
};

static const struct header_case header_cases[] = {
    {"Subject: a\r\n\r\nbody\r\n", 0, "Subject: a\r\n\r\nbody\r\n", NULL, NULL},
    {"X-Job: j1\r\nSubject: a\r\n\r\nX-Job: body\r\n", 0, "Subject: a\r\n\r\nX-Job: body\r\n", "j1",
     NULL},
    {"Subject: a\r\nx-job:j2 \r\nX-VIRTUAL-MTA: \tv1\r\n\r\nb\r\n", 0, "Subject: a\r\n\r\nb\r\n",
     "j2", "v1"},
    {"X-Job: long\r\n  folded\r\n\tvalue\r\nS: 1\r\n\r\n", 0, "S: 1\r\n\r\n", "long  folded\tvalue",
     NULL},
    {"X-Job: a\r\nX-Job: b\r\n\r\n", 0, "\r\n", "b", NULL},
    {"X-Job:\r\n\r\n", 0, "\r\n", NULL, NULL},
    {"X-Jobs: no\r\nX-Job-Id: no\r\n\r\n", 0, "X-Jobs: no\r\nX-Job-Id: no\r\n\r\n", NULL, NULL},
    {"X-Job : spaced\r\n\r\n", 0, "\r\n", "spaced", NULL},
    {"Received: x\r\nX-Job: j\r\n\r\n", 13, "Received: x\r\n\r\n", "j", NULL},
    {"X-Job: lf\nS: 1\n\nX-Job: body\n", 0, "S: 1\n\nX-Job: body\n", "lf", NULL},
    {"S: 1\r\nnot a header\r\nX-Job: after\r\n", 0, "S: 1\r\nnot a header\r\nX-Job: after\r\n",
     NULL, NULL},
    {"X-Job: no-newline", 0, "", "no-newline", NULL},
    {"", 0, "", NULL, NULL},
};

static void
test_take_headers(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof header_cases / sizeof header_cases[0]; i++) {
        const struct header_case *c = &header_cases[i];
        struct buf b;
        buf_init(&b);
        buf_puts(&b, c->in);
        char *job = (char *)"x", *vmta = (char *)"x";
        smtp_server_take_headers(&b, c->start, &job, &vmta);
        const char *got = b.data ? b.data : "";
        if (b.len != strlen(c->out) || memcmp(got, c->out, b.len) != 0)
            fail_msg("case %zu: got \"%.*s\"", i, (int)b.len, got);
        if ((c->job == NULL) != (job == NULL) || (job && strcmp(job, c->job) != 0))
            fail_msg("case %zu: job %s", i, job ? job : "(null)");
        if ((c->vmta == NULL) != (vmta == NULL) || (vmta && strcmp(vmta, c->vmta) != 0))
            fail_msg("case %zu: vmta %s", i, vmta ? vmta : "(null)");
        free(job);
        free(vmta);
        buf_free(&b);
    }
}

/* Many removed fields interleaved with kept ones: the kept ones stay in
 * order, the last values win, and the work is linear (a memmove per removed
 * field made 200,000 of them take minutes; the bound is generous). */
static void
test_take_headers_many(void **state)
{
    (void)state;
    const size_t n = 200000;
    struct buf in, want;
    buf_init(&in);
    buf_init(&want);
    buf_puts(&in, "Received: x\r\n");
    buf_puts(&want, "Received: x\r\n");
    for (size_t i = 0; i < n; i++) {
        buf_printf(&in, "X-Job: j%zu\r\nKeep-%zu: v\r\n x-virtual-mta : \r\n\tv%zu\r\n", i, i, i);
        buf_printf(&want, "Keep-%zu: v\r\n x-virtual-mta : \r\n\tv%zu\r\n", i, i);
    }
    buf_puts(&in, "X-Virtual-MTA: last\r\n\r\nX-Job: body\r\n");
    buf_puts(&want, "\r\nX-Job: body\r\n");
    char *job = NULL, *vmta = NULL;
    clock_t t0 = clock();
    smtp_server_take_headers(&in, strlen("Received: x\r\n"), &job, &vmta);
    double cpu = (double)(clock() - t0) / CLOCKS_PER_SEC;
    assert_true(cpu < 2.0);
    assert_int_equal(in.len, want.len);
    assert_memory_equal(in.data, want.data, want.len);
    char last[32];
    snprintf(last, sizeof last, "j%zu", n - 1);
    assert_string_equal(job, last);
    assert_string_equal(vmta, "last");
    free(job);
    free(vmta);
    buf_free(&in);
    buf_free(&want);
}

/* ---- the binary arrays of mta.enqueue_batch ---- */

static void
test_array_binary(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    const char *elems[3] = {"ab", NULL, ""};
    smtp_in_array_binary(&b, 25, 3, elems, NULL);
    static const unsigned char want[] = {
        0,    0,    0,    1,    0,   0,   0, 1, 0, 0, 0, 25, /* ndim 1, has nulls, text */
        0,    0,    0,    3,    0,   0,   0, 1,              /* 3 elements from 1 */
        0,    0,    0,    2,    'a', 'b',                    /* "ab" */
        0xff, 0xff, 0xff, 0xff,                              /* NULL */
        0,    0,    0,    0,                                 /* "" */
    };
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    buf_reset(&b);
    const char bytes[3] = {'\0', '\r', 'x'};
    const char *bin[1] = {bytes};
    size_t lens[1] = {3};
    smtp_in_array_binary(&b, 17, 1, bin, lens);
    static const unsigned char want2[] = {0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 17,   0,  0,
                                          0, 1, 0, 0, 0, 1, 0, 0, 0, 3, 0, '\r', 'x'};
    assert_int_equal(b.len, sizeof want2);
    assert_memory_equal(b.data, want2, sizeof want2);
    buf_free(&b);
}

/* ---- base64, passwords, networks ---- */

static void
test_base64(void **state)
{
    (void)state;
    unsigned char out[64];
    assert_int_equal(smtp_server_base64_decode("", 0, out, sizeof out), 0);
    assert_int_equal(smtp_server_base64_decode("YQ==", 4, out, sizeof out), 1);
    assert_memory_equal(out, "a", 1);
    assert_int_equal(smtp_server_base64_decode("YWI=", 4, out, sizeof out), 2);
    assert_int_equal(smtp_server_base64_decode("AGFsaWNlAHMzY3JldA==", 20, out, sizeof out), 13);
    assert_memory_equal(out, "\0alice\0s3cret", 13);
    assert_int_equal(smtp_server_base64_decode("YQ=", 3, out, sizeof out), -1);
    assert_int_equal(smtp_server_base64_decode("Y===", 4, out, sizeof out), -1);
    assert_int_equal(smtp_server_base64_decode("YQ==YQ==", 8, out, sizeof out), -1);
    assert_int_equal(smtp_server_base64_decode("Y!==", 4, out, sizeof out), -1);
    assert_int_equal(smtp_server_base64_decode("YWJj", 4, out, 2), -1);
}

static void
test_password(void **state)
{
    (void)state;
    assert_true(smtp_server_password_ok("s3cret", "s3cret", 6));
    assert_false(smtp_server_password_ok("s3cret", "s3cre", 5));
    assert_false(smtp_server_password_ok("s3cret", "s3cret!", 7));
    assert_false(smtp_server_password_ok("s3cret", "s3cret\0", 7));
    /* sha256("bobs pass") */
    const char *h = "{SHA256}"
                    "10acab055ab00a2ae3d78bec97efe5a589d7f2292914cc26244dfa472e076e1c";
    assert_true(smtp_server_password_ok(h, "bobs pass", 9));
    assert_false(smtp_server_password_ok(h, "bobs pas", 8));
    /* a configured "{SHA256}..." is never compared as plain text */
    assert_false(smtp_server_password_ok(h, h, strlen(h)));
    const char *good = "{SHA256}"
                       "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
    assert_true(smtp_server_password_ok(good, "secret", 6));
    assert_false(smtp_server_password_ok(good, "Secret", 6));
    const char *upper = "{SHA256}"
                        "2BB80D537B1DA3E38BD30361AA855686BDE0EACD7162FEF6A25FE97BF527A25B";
    assert_true(smtp_server_password_ok(upper, "secret", 6));
    assert_false(smtp_server_password_ok("{SHA256}abc", "secret", 6));
    /* crypt(3): yescrypt and SHA-512-crypt of "hunter2" */
    const char *y = "$y$j9T$qKQuvO5TjrFLans02Lslv/$FZuvB1tqm0f6S6.5ryR8vbfNphJOvOFp6ieZZ0MIK8A";
    assert_true(smtp_server_password_ok(y, "hunter2", 7));
    assert_false(smtp_server_password_ok(y, "hunter3", 7));
    assert_false(smtp_server_password_ok(y, "hunter2\0x", 9));
    assert_false(smtp_server_password_ok(y, y, strlen(y)));
    const char *six = "$6$N9diYfyzbAFhiLd3$jtj70sOV279rg.Mcw/ZYzTkJaHQ.PISxK0pxG/"
                      "2rtCTWa5E4//WBQqmuM80081aUNndqeFJCJVy6exSTpCpJh1";
    assert_true(smtp_server_password_ok(six, "hunter2", 7));
    assert_false(smtp_server_password_ok(six, "Hunter2", 7));
    /* a damaged hash never matches */
    assert_false(smtp_server_password_ok("$y$j9T$qKQuvO5TjrFLans02Lslv/$", "hunter2", 7));
}

/* The failed-AUTH table: counts per address, expiry, a full table making
 * room, and the delay doubling up to its cap. */
static void
test_auth_table(void **state)
{
    (void)state;
    struct smtp_in_auth_table *t = smtp_in_auth_table_new();
    unsigned char a[16] = {192, 0, 2, 1}, b[16] = {192, 0, 2, 2};
    uint64_t now = 1000000;
    assert_int_equal(smtp_in_auth_failures(t, AF_INET, a, now), 0);
    assert_int_equal(smtp_in_auth_failed(t, AF_INET, a, now), 1);
    assert_int_equal(smtp_in_auth_failed(t, AF_INET, a, now + 10), 2);
    assert_int_equal(smtp_in_auth_failed(t, AF_INET, b, now + 20), 1);
    assert_int_equal(smtp_in_auth_failures(t, AF_INET6, a, now + 20), 0); /* other family */
    /* forgotten after SMTP_IN_AUTH_FORGET_MS without a failure */
    assert_int_equal(smtp_in_auth_failures(t, AF_INET, a, now + 10 + SMTP_IN_AUTH_FORGET_MS), 0);
    assert_int_equal(smtp_in_auth_failed(t, AF_INET, a, now + 10 + SMTP_IN_AUTH_FORGET_MS), 1);
    /* a full table replaces its oldest entry, and never grows */
    uint64_t t0 = now + 2 * SMTP_IN_AUTH_FORGET_MS;
    for (unsigned i = 0; i < SMTP_IN_AUTH_TABLE_SIZE; i++) {
        unsigned char x[16] = {10, (unsigned char)(i >> 8), (unsigned char)i, 1};
        assert_int_equal(smtp_in_auth_failed(t, AF_INET, x, t0 + i), 1);
    }
    unsigned char first[16] = {10, 0, 0, 1}, last[16] = {10, 3, 255, 1};
    assert_int_equal(smtp_in_auth_failed(t, AF_INET, a, t0 + 5000), 1);
    assert_int_equal(smtp_in_auth_failures(t, AF_INET, first, t0 + 5000), 0);
    assert_int_equal(smtp_in_auth_failures(t, AF_INET, last, t0 + 5000), 1);
    smtp_in_auth_table_free(t);
    assert_int_equal(smtp_in_auth_delay_ms(1000, 1), 1000);
    assert_int_equal(smtp_in_auth_delay_ms(1000, 2), 2000);
    assert_int_equal(smtp_in_auth_delay_ms(1000, 3), 4000);
    assert_int_equal(smtp_in_auth_delay_ms(1000, 1000), 1000u << SMTP_IN_AUTH_MAX_SHIFT);
}

/* log_escape: every control character escaped, nothing cut in the middle of
 * an escape. */
static void
test_log_escape(void **state)
{
    (void)state;
    char out[64];
    const char in[] = "a\r\nb\tc\\d\x1b[31m\x7f\x01";
    size_t n = log_escape(out, sizeof out, in, sizeof in - 1);
    assert_string_equal(out, "a\\r\\nb\\tc\\\\d\\x1b[31m\\x7f\\x01");
    assert_int_equal(n, strlen(out));
    n = log_escape(out, 5, "ab\ncd", 5);
    assert_string_equal(out, "ab\\n");
    n = log_escape(out, 4, "ab\ncd", 5);
    assert_string_equal(out, "ab");
    assert_int_equal(n, 2);
}

static void
test_cidr(void **state)
{
    (void)state;
    struct smtp_server_cidr n;
    unsigned char a[16];
    assert_int_equal(smtp_server_parse_cidr("127.0.0.0/8", &n), 0);
    inet_pton(AF_INET, "127.1.2.3", a);
    assert_true(smtp_server_cidr_match(&n, AF_INET, a));
    inet_pton(AF_INET, "128.0.0.1", a);
    assert_false(smtp_server_cidr_match(&n, AF_INET, a));
    inet_pton(AF_INET6, "::ffff:127.0.0.9", a);
    assert_true(smtp_server_cidr_match(&n, AF_INET6, a));
    inet_pton(AF_INET6, "::1", a);
    assert_false(smtp_server_cidr_match(&n, AF_INET6, a));

    assert_int_equal(smtp_server_parse_cidr("10.1.2.0/23", &n), 0);
    inet_pton(AF_INET, "10.1.3.255", a);
    assert_true(smtp_server_cidr_match(&n, AF_INET, a));
    inet_pton(AF_INET, "10.1.4.0", a);
    assert_false(smtp_server_cidr_match(&n, AF_INET, a));

    assert_int_equal(smtp_server_parse_cidr("::1/128", &n), 0);
    inet_pton(AF_INET6, "::1", a);
    assert_true(smtp_server_cidr_match(&n, AF_INET6, a));
    inet_pton(AF_INET6, "::2", a);
    assert_false(smtp_server_cidr_match(&n, AF_INET6, a));

    assert_int_equal(smtp_server_parse_cidr("192.0.2.7", &n), 0);
    assert_int_equal(n.prefix, 32);
    assert_int_equal(smtp_server_parse_cidr("0.0.0.0/0", &n), 0);
    inet_pton(AF_INET, "203.0.113.5", a);
    assert_true(smtp_server_cidr_match(&n, AF_INET, a));

    const char *bad[] = {"",           "/8",           "127.0.0.1/33", "::1/129",
                         "127.0.0.1/", "127.0.0.1/8x", "localhost",    "127.0.0.1/0008",
                         "1.2.3.4/-1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (smtp_server_parse_cidr(bad[i], &n) == 0)
            fail_msg("\"%s\" accepted", bad[i]);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_command),   cmocka_unit_test(test_parse_command_nul_and_length),
        cmocka_unit_test(test_parse_path),      cmocka_unit_test(test_parse_path_lengths),
        cmocka_unit_test(test_mail_params),     cmocka_unit_test(test_xtext),
        cmocka_unit_test(test_mail_params_dsn), cmocka_unit_test(test_rcpt_params),
        cmocka_unit_test(test_data_table),      cmocka_unit_test(test_data_limit),
        cmocka_unit_test(test_take_headers),    cmocka_unit_test(test_take_headers_many),
        cmocka_unit_test(test_array_binary),    cmocka_unit_test(test_base64),
        cmocka_unit_test(test_password),        cmocka_unit_test(test_auth_table),
        cmocka_unit_test(test_log_escape),      cmocka_unit_test(test_cidr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
