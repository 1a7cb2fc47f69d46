/* Unit tests of the List-Unsubscribe tokens (node/unsub.c): round trip with
 * and without a job and scope, every single-character change refused, a
 * token truncated at every length refused, another version, another key,
 * overlong and non-canonical spellings, the mailto: subject, and the
 * one-click body check of the listener (node/unsub_http.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "unsub.h"
#include "unsub_http.h"
#include "util.h"

static const char KEY[] = "0123456789abcdef0123456789abcdef";

static struct unsub *
mk(void)
{
    return unsub_new_key(KEY, sizeof KEY - 1);
}

static void
test_roundtrip(void **state)
{
    (void)state;
    struct unsub *u = mk();
    char *rcpt, *job, *scope;
    char *t = unsub_token_make(u, "Jane.Doe@Example.org", "news-2026-12", 5);
    assert_non_null(t);
    assert_true(strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
                strlen(t));
    assert_int_equal(unsub_token_verify(u, t, &rcpt, &job, &scope), 0);
    assert_string_equal(rcpt, "Jane.Doe@Example.org");
    assert_string_equal(job, "news-2026-12");
    assert_string_equal(scope, "news-");
    free(rcpt);
    free(job);
    free(scope);
    free(t);

    t = unsub_token_make(u, "a@b.c", NULL, 0);
    assert_non_null(t);
    assert_int_equal(unsub_token_verify(u, t, &rcpt, &job, &scope), 0);
    assert_string_equal(rcpt, "a@b.c");
    assert_null(job);
    assert_null(scope);
    free(rcpt);
    free(t);

    /* the longest job id and address a token carries */
    char longjob[UNSUB_JOB_MAX + 1], longrcpt[UNSUB_RCPT_MAX + 1];
    memset(longjob, 'j', UNSUB_JOB_MAX);
    longjob[UNSUB_JOB_MAX] = '\0';
    memset(longrcpt, 'l', UNSUB_RCPT_MAX);
    memcpy(longrcpt, "local@", 6);
    memcpy(longrcpt + UNSUB_RCPT_MAX - 4, ".com", 4);
    for (size_t i = 6 + 60; i < UNSUB_RCPT_MAX - 4; i += 60)
        longrcpt[i] = '.';
    longrcpt[UNSUB_RCPT_MAX] = '\0';
    t = unsub_token_make(u, longrcpt, longjob, UNSUB_JOB_MAX);
    assert_non_null(t);
    assert_true(strlen(t) <= UNSUB_TOKEN_MAX);
    assert_int_equal(unsub_token_verify(u, t, &rcpt, &job, &scope), 0);
    assert_string_equal(rcpt, longrcpt);
    assert_string_equal(scope, longjob);
    free(rcpt);
    free(job);
    free(scope);
    free(t);
    unsub_free(u);
}

static void
test_out_of_bounds_not_made(void **state)
{
    (void)state;
    struct unsub *u = mk();
    char big[UNSUB_JOB_MAX + 2];
    memset(big, 'j', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_null(unsub_token_make(u, "a@b.c", big, 0));
    assert_null(unsub_token_make(u, "a@b.c", "job", 4)); /* scope longer than the job */
    assert_null(unsub_token_make(u, "", "job", 0));
    assert_null(unsub_token_make(u, NULL, NULL, 0));
    struct unsub *nokey = unsub_new_key(NULL, 0);
    assert_null(unsub_token_make(nokey, "a@b.c", NULL, 0));
    unsub_free(nokey);
    unsub_free(u);
}

static void
assert_refused(const struct unsub *u, const char *t)
{
    char *rcpt = (char *)1, *job = (char *)1, *scope = (char *)1;
    assert_int_equal(unsub_token_verify(u, t, &rcpt, &job, &scope), -1);
    /* nothing set */
    assert_ptr_equal(rcpt, (char *)1);
    assert_ptr_equal(job, (char *)1);
    assert_ptr_equal(scope, (char *)1);
}

static void
test_forged(void **state)
{
    (void)state;
    struct unsub *u = mk();
    char *t = unsub_token_make(u, "user@example.com", "job-1", 0);
    size_t n = strlen(t);
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    /* every position changed to every other character: never accepted */
    for (size_t i = 0; i < n; i++) {
        char orig = t[i];
        for (const char *a = alpha; *a; a++) {
            if (*a == orig)
                continue;
            t[i] = *a;
            assert_refused(u, t);
        }
        t[i] = '=';
        assert_refused(u, t);
        t[i] = orig;
    }
    /* the same token under another key */
    struct unsub *other = unsub_new_key("another secret of 32 characters!", 32);
    assert_refused(other, t);
    unsub_free(other);
    free(t);
    unsub_free(u);
}

static void
test_truncated_and_overlong(void **state)
{
    (void)state;
    struct unsub *u = mk();
    char *t = unsub_token_make(u, "user@example.com", "job-1", 0);
    size_t n = strlen(t);
    for (size_t k = 0; k < n; k++) {
        char *p = xstrndup(t, k);
        assert_refused(u, p);
        free(p);
    }
    /* appended characters, padding, spaces */
    char *longer = xasprintf("%sAA", t);
    assert_refused(u, longer);
    free(longer);
    longer = xasprintf("%s=", t);
    assert_refused(u, longer);
    free(longer);
    longer = xasprintf("%s ", t);
    assert_refused(u, longer);
    free(longer);
    /* far beyond the longest token */
    char *huge = xmalloc(UNSUB_TOKEN_MAX * 4 + 1);
    memset(huge, 'A', UNSUB_TOKEN_MAX * 4);
    huge[UNSUB_TOKEN_MAX * 4] = '\0';
    assert_refused(u, huge);
    huge[UNSUB_TOKEN_MAX + 1] = '\0';
    assert_refused(u, huge);
    free(huge);
    assert_refused(u, "");
    assert_refused(u, NULL);
    free(t);
    unsub_free(u);
}

/* A token spelt as unsub.h says, with a valid tag: what only the holder of
 * the secret could make. */
static char *
craft(const unsigned char *raw, size_t n)
{
    unsigned char buf[UNSUB_RAW_MAX + 64];
    memcpy(buf, raw, n);
    unsigned int tl = 0;
    HMAC(EVP_sha256(), KEY, (int)(sizeof KEY - 1), raw, n, buf + n, &tl);
    char *out = xmalloc(4 * ((n + tl + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, buf, (int)(n + tl));
    for (char *p = out; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
    char *eq = strchr(out, '=');
    if (eq)
        *eq = '\0';
    return out;
}

static void
test_wrong_version(void **state)
{
    (void)state;
    struct unsub *u = mk();
    char *rcpt, *job, *scope;
    /* the crafted form of version 1 is what unsub_token_make makes */
    unsigned char raw[64] = {1, 3, 0, 'j', 'o', 'b'};
    memcpy(raw + 6, "user@example.com", 16);
    char *t = craft(raw, 22);
    char *made = unsub_token_make(u, "user@example.com", "job", 0);
    assert_string_equal(t, made);
    assert_int_equal(unsub_token_verify(u, t, &rcpt, &job, &scope), 0);
    free(rcpt);
    free(job);
    free(t);
    free(made);
    /* versions 0, 2 and 255 with valid tags */
    static const unsigned char versions[] = {0, 2, 255};
    for (size_t i = 0; i < sizeof versions; i++) {
        raw[0] = versions[i];
        t = craft(raw, 22);
        assert_refused(u, t);
        free(t);
    }
    raw[0] = 1;
    /* lengths that do not add up, with valid tags: a scope longer than the
     * job, a job longer than what follows */
    raw[2] = 4;
    t = craft(raw, 22);
    assert_refused(u, t);
    free(t);
    raw[2] = 0;
    raw[1] = 200;
    t = craft(raw, 22);
    assert_refused(u, t);
    free(t);
    /* a recipient that is no address */
    raw[1] = 3;
    memcpy(raw + 6, "user\r\nexample.com", 17);
    t = craft(raw, 23);
    assert_refused(u, t);
    free(t);
    /* no key: nothing verifies */
    struct unsub *nokey = unsub_new_key(NULL, 0);
    t = unsub_token_make(u, "user@example.com", NULL, 0);
    assert_refused(nokey, t);
    free(t);
    unsub_free(nokey);
    unsub_free(u);
}

static void
test_subject_token(void **state)
{
    (void)state;
    size_t n = 0;
    const char *s = "unsubscribe-AbC_-9";
    assert_ptr_equal(unsub_subject_token(s, &n), s + 12);
    assert_int_equal(n, 6);
    assert_non_null(unsub_subject_token("  Unsubscribe-xyz \r\n", &n));
    assert_int_equal(n, 3);
    assert_null(unsub_subject_token("Re: unsubscribe-xyz", &n));
    assert_null(unsub_subject_token("unsubscribe-", &n));
    assert_null(unsub_subject_token("unsubscribe-abc def", &n));
    assert_null(unsub_subject_token(NULL, &n));
}

static void
test_one_click_body(void **state)
{
    (void)state;
    const char *form = "application/x-www-form-urlencoded";
    assert_true(unsub_http_one_click(form, "List-Unsubscribe=One-Click", 26));
    assert_true(unsub_http_one_click(NULL, "List-Unsubscribe=One-Click\r\n", 28));
    assert_true(unsub_http_one_click(form, "a=b&List-Unsubscribe=One-Click&c=d", 34));
    assert_false(unsub_http_one_click(form, "", 0));
    assert_false(unsub_http_one_click(form, "List-Unsubscribe=One-Clicks", 27));
    assert_false(unsub_http_one_click(form, "XList-Unsubscribe=One-Click", 27));
    const char *mp = "--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
                     "One-Click\r\n--b--\r\n";
    assert_true(unsub_http_one_click("multipart/form-data; boundary=b", mp, strlen(mp)));
    const char *mp2 = "--b\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
                      "Other\r\n--b--\r\n";
    assert_false(unsub_http_one_click("multipart/form-data; boundary=b", mp2, strlen(mp2)));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip),      cmocka_unit_test(test_out_of_bounds_not_made),
        cmocka_unit_test(test_forged),         cmocka_unit_test(test_truncated_and_overlong),
        cmocka_unit_test(test_wrong_version),  cmocka_unit_test(test_subject_token),
        cmocka_unit_test(test_one_click_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
