/* Unit tests of the dkim module: relaxed header and body canonicalization
 * tables (RFC 6376 §3.4), the sender domain, the h= selection and the folding
 * of the DKIM-Signature header, and refused key files. Keys are generated
 * here with OpenSSL; verification against an independent verifier is in
 * tests/integration/test_dkim.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "conf.h"
#include "dkim.h"
#include "util.h"

struct canon_case {
    const char *in;
    const char *out; /* NULL: refused */
};

static const struct canon_case header_cases[] = {
    /* RFC 6376 §3.4.5 */
    {"A: X", "a:X"},
    {"B : Y\t\r\n\tZ  ", "b:Y Z"},
    {"Subject:   a   b  ", "subject:a b"},
    {"SUBJECT:x", "subject:x"},
    {"X-Empty:", "x-empty:"},
    {"X-Empty:  \t ", "x-empty:"},
    {"To: a@x,\r\n b@y", "to:a@x, b@y"},
    {"To: a@x,\n\tb@y", "to:a@x, b@y"},
    {"To: a@x,\r b@y", "to:a@x, b@y"},
    {"Subject: a:b: c", "subject:a:b: c"},
    {"Subject \t :\t v", "subject:v"},
    {"Content-Type: text/plain;\r\n  charset=\"utf-8\"",
     "content-type:text/plain; charset=\"utf-8\""},
    {"no colon here", NULL},
    {"", NULL},
};

static void
test_canon_header(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof header_cases / sizeof header_cases[0]; i++) {
        const struct canon_case *c = &header_cases[i];
        struct buf b;
        buf_init(&b);
        buf_puts(&b, "prefix|");
        int rc = dkim_canon_header(&b, c->in, strlen(c->in));
        if (!c->out) {
            assert_int_equal(rc, -1);
            assert_string_equal(b.data, "prefix|");
        } else {
            assert_int_equal(rc, 0);
            assert_string_equal(b.data + 7, c->out);
        }
        buf_free(&b);
    }
}

static const struct canon_case body_cases[] = {
    /* RFC 6376 §3.4.5 */
    {" C \r\nD \t E\r\n\r\n\r\n", " C\r\nD E\r\n"},
    {"", ""},
    {"\r\n", ""},
    {"\r\n\r\n\r\n", ""},
    {" \t \r\n\t\r\n", ""},
    {"a", "a\r\n"},
    {"a\r\n", "a\r\n"},
    {"a\n\n\n", "a\r\n"},
    {"a \t\nb", "a\r\nb\r\n"},
    {"\n\na", "\r\n\r\na\r\n"},
    {"a\n \nb\n", "a\r\n\r\nb\r\n"},
    {"a\r\rb\r", "a\r\n\r\nb\r\n"},
    {"a\t\tb  c", "a b c\r\n"},
    {"  a", " a\r\n"},
    {"x\r\n.\r\n..y\r\n", "x\r\n.\r\n..y\r\n"},
    {"mixed\r\nendings\nhere\rdone\r\n\n\r", "mixed\r\nendings\r\nhere\r\ndone\r\n"},
};

static void
test_canon_body(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof body_cases / sizeof body_cases[0]; i++) {
        const struct canon_case *c = &body_cases[i];
        struct buf b;
        buf_init(&b);
        dkim_canon_body(&b, (const unsigned char *)c->in, strlen(c->in));
        assert_string_equal(b.data ? b.data : "", c->out);
        buf_free(&b);
    }
}

struct domain_case {
    const char *mail_from;
    const char *msg;
    const char *domain; /* NULL: none */
};

static const struct domain_case domain_cases[] = {
    {"b@env.test", "From: a@Example.COM\r\n\r\nx", "example.com"},
    {"b@env.test", "From: Name <a@example.com>\n\nx", "example.com"},
    {"b@env.test", "FROM :\t\"Doe, J <j@evil.test>\" <a@example.com>\n\n", "example.com"},
    {"b@env.test", "From: a@example.com (comment@evil.test)\n\n", "example.com"},
    {"b@env.test", "From: (x@evil.test) Name\n <a@example.com.>\n\n", "example.com"},
    {"b@env.test", "From: a@example.com, c@other.test\n\n", "example.com"},
    {"b@env.test", "Subject: no from\n\nFrom: a@body.test\n", "env.test"},
    {"b@env.test", "From: undisclosed\n\n", "env.test"},
    {"b@env.test", "From: a@[192.0.2.1]\n\n", "env.test"},
    {"b@env.test", "From: a@bad..dots\n\n", "env.test"},
    {"b@Env.Test", "", "env.test"},
    {"", "Subject: x\n\n", NULL},
    {NULL, "Subject: x\n\n", NULL},
    {"b@env.test", "Subject: x\r\nX-From: a@other.test\r\n\r\n", "env.test"},
};

static void
test_sender_domain(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof domain_cases / sizeof domain_cases[0]; i++) {
        const struct domain_case *c = &domain_cases[i];
        char *d = dkim_sender_domain(c->mail_from, (const unsigned char *)c->msg, strlen(c->msg));
        if (!c->domain) {
            assert_null(d);
        } else {
            assert_non_null(d);
            assert_string_equal(d, c->domain);
        }
        free(d);
    }
}

/* Writes a new private key of ALG ("ED25519", "RSA") to a temporary file with
 * MODE; returns its path (caller unlinks and frees). */
static char *
write_key(const char *alg, unsigned bits, mode_t mode)
{
    EVP_PKEY *k = strcmp(alg, "RSA") == 0 ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits)
                                          : EVP_PKEY_Q_keygen(NULL, NULL, alg);
    assert_non_null(k);
    char *path = xstrdup("/tmp/pgmta-dkim-key-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
    EVP_PKEY_free(k);
    return path;
}

static struct dkim *
make_dkim(const char *key_file, const char *bimi, char *err, size_t errlen)
{
    struct conf c;
    memset(&c, 0, sizeof c);
    c.path = "test.conf";
    struct conf_dkim k = {"example.com", "s1", (char *)key_file};
    struct conf_bimi b = {"example.com", (char *)bimi};
    c.dkim = &k;
    c.ndkim = 1;
    if (bimi) {
        c.bimi = &b;
        c.nbimi = 1;
    }
    return dkim_new(&c, err, errlen);
}

/* The value of tag NAME of the unfolded DKIM-Signature in HEADERS. */
static char *
sig_tag(const char *headers, const char *name)
{
    const char *s = strstr(headers, "DKIM-Signature:");
    assert_non_null(s);
    struct buf u;
    buf_init(&u);
    for (; *s; s++)
        if (*s != '\r' && *s != '\n' && *s != '\t' && *s != ' ')
            buf_append(&u, s, 1);
    char want[32];
    snprintf(want, sizeof want, ";%s=", name);
    char *p = strstr(u.data, want);
    assert_non_null(p);
    p += strlen(want);
    char *end = strchr(p, ';');
    char *v = end ? xstrndup(p, (size_t)(end - p)) : xstrdup(p);
    buf_free(&u);
    return v;
}

static void
check_folding(const char *headers)
{
    const char *s = strstr(headers, "DKIM-Signature: ");
    assert_non_null(s);
    size_t n = 0;
    for (const char *l = s; *l;) {
        const char *e = strstr(l, "\r\n");
        assert_non_null(e); /* every line ends in CRLF */
        size_t width = (size_t)(e - l) + (l[0] == '\t' ? 7 : 0);
        assert_true(width <= 78);
        assert_null(memchr(l, '\n', (size_t)(e - l)));
        if (n > 0)
            assert_int_equal(l[0], '\t');
        n++;
        l = e + 2;
    }
    assert_true(n >= 3);
}

static void
test_h_selection_and_folding(void **state)
{
    (void)state;
    const char *algs[] = {"ED25519", "RSA"};
    for (size_t a = 0; a < 2; a++) {
        char *key = write_key(algs[a], 2048, 0600);
        char err[512] = "";
        struct dkim *d = make_dkim(key, NULL, err, sizeof err);
        assert_non_null(d);
        const char *msg = "Received: from x\r\nFrom: a@example.com\r\nTo: b@x.test\r\n"
                          "X-Other: y\r\nTo: c@x.test\r\nSubject: s\r\nDate: today\r\n"
                          "Message-ID: <1@x>\r\nReply-To: r@x\r\nSubject2: no\r\n\r\nbody\r\n";
        char *h = dkim_headers(d, "b@env.test", (const unsigned char *)msg, strlen(msg));
        assert_non_null(h);
        assert_memory_equal(h, "DKIM-Signature: v=1; a=", 23);
        assert_null(strstr(h, "BIMI-Selector"));
        char *v = sig_tag(h, "h");
        assert_string_equal(v, "from:from:to:to:subject:date:message-id:reply-to");
        free(v);
        v = sig_tag(h, "a");
        assert_string_equal(v, a == 0 ? "ed25519-sha256" : "rsa-sha256");
        free(v);
        v = sig_tag(h, "c");
        assert_string_equal(v, "relaxed/relaxed");
        free(v);
        v = sig_tag(h, "d");
        assert_string_equal(v, "example.com");
        free(v);
        v = sig_tag(h, "s");
        assert_string_equal(v, "s1");
        free(v);
        /* bh of "body\r\n" */
        v = sig_tag(h, "bh");
        assert_string_equal(v, "Ck5SoRNWUpSR4X0COv7R5ub2pUTtl6xz4dTFz++ji4M=");
        free(v);
        v = sig_tag(h, "b");
        assert_int_equal(strlen(v), a == 0 ? 88 : 344);
        free(v);
        check_folding(h);
        free(h);

        /* Bare LF and added whitespace give the same bh. */
        const char *lf = "From: a@example.com\nSubject:  s\n\nbody \t\n\n\n";
        h = dkim_headers(d, NULL, (const unsigned char *)lf, strlen(lf));
        v = sig_tag(h, "bh");
        assert_string_equal(v, "Ck5SoRNWUpSR4X0COv7R5ub2pUTtl6xz4dTFz++ji4M=");
        free(v);
        v = sig_tag(h, "h");
        assert_string_equal(v, "from:from:subject");
        free(v);
        free(h);

        /* Empty body: the hash of nothing. */
        const char *empty = "From: a@example.com\r\n\r\n";
        h = dkim_headers(d, NULL, (const unsigned char *)empty, strlen(empty));
        v = sig_tag(h, "bh");
        assert_string_equal(v, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        free(v);
        free(h);

        /* No From: at all: From is still listed; other domains: nothing. */
        const char *nofrom = "Subject: x\r\n\r\nb\r\n";
        h = dkim_headers(d, "x@EXAMPLE.com", (const unsigned char *)nofrom, strlen(nofrom));
        v = sig_tag(h, "h");
        assert_string_equal(v, "from:subject");
        free(v);
        free(h);
        assert_null(dkim_headers(d, "x@other.test", (const unsigned char *)nofrom, strlen(nofrom)));
        dkim_free(d);
        unlink(key);
        free(key);
    }
}

static void
test_bimi_selector_signed(void **state)
{
    (void)state;
    char *key = write_key("ED25519", 0, 0600);
    char err[512] = "";
    struct dkim *d = make_dkim(key, "v=BIMI1; s=brand;", err, sizeof err);
    assert_non_null(d);
    const char *msg = "From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n";
    char *h = dkim_headers(d, NULL, (const unsigned char *)msg, strlen(msg));
    assert_non_null(h);
    assert_memory_equal(h, "BIMI-Selector: v=BIMI1; s=brand;\r\nDKIM-Signature: ", 50);
    char *v = sig_tag(h, "h");
    assert_string_equal(v, "from:from:subject:bimi-selector");
    free(v);
    free(h);
    dkim_free(d);
    unlink(key);
    free(key);
}

static void
test_bad_keys_refused(void **state)
{
    (void)state;
    char err[512];
    char *key = write_key("ED25519", 0, 0644);
    assert_null(make_dkim(key, NULL, err, sizeof err));
    char *want = xasprintf("%s: DKIM key is accessible by others (mode 0644)", key);
    assert_memory_equal(err, want, strlen(want));
    free(want);
    assert_int_equal(chmod(key, 0640), 0);
    struct dkim *d = make_dkim(key, NULL, err, sizeof err);
    assert_non_null(d);
    dkim_free(d);
    /* A header value with a line break would inject headers. */
    assert_null(make_dkim(key, "v=BIMI1;\r\nBcc: x@evil.test", err, sizeof err));
    assert_non_null(strstr(err, "bimi entry"));
    unlink(key);
    free(key);

    key = write_key("RSA", 512, 0600);
    assert_null(make_dkim(key, NULL, err, sizeof err));
    assert_non_null(strstr(err, "RSA key of 512 bits"));
    unlink(key);
    free(key);

    assert_null(make_dkim("/nonexistent/key.pem", NULL, err, sizeof err));
    assert_string_equal(err,
                        "/nonexistent/key.pem: cannot open DKIM key: No such file or directory");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canon_header),         cmocka_unit_test(test_canon_body),
        cmocka_unit_test(test_sender_domain),        cmocka_unit_test(test_h_selection_and_folding),
        cmocka_unit_test(test_bimi_selector_signed), cmocka_unit_test(test_bad_keys_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
