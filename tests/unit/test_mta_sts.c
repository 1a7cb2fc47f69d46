/* Unit tests of the MTA-STS parsers and MX matching (mta_sts_policy.h):
 * TXT records, policy files accepted and refused (strict: an invalid
 * policy is an error), and mx patterns with wildcards, table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mta_sts_policy.h"

struct txt_case {
    const char *in;
    bool ok;
    bool not_sts;
    const char *id;
};

static const struct txt_case txts[] = {
    {"v=STSv1; id=20160831085700Z;", true, false, "20160831085700Z"},
    {"v=STSv1; id=abc", true, false, "abc"},
    {"v=STSv1;id=abc;", true, false, "abc"},
    {"v=STSv1; id=abc; ext=1;", true, false, "abc"},
    {"v=STSv1 ; id=abc", true, false, "abc"},
    {"v=STSv1; id=12345678901234567890123456789012", true, false,
     "12345678901234567890123456789012"},
    {"v=STSv1; id=123456789012345678901234567890123", false, false, NULL},
    {"v=STSv1;", false, false, NULL},
    {"v=STSv1; id=", false, false, NULL},
    {"v=STSv1; id=a-b", false, false, NULL},
    {"v=STSv1; id=a; id=b", false, false, NULL},
    {"v=STSv1 id=abc", false, false, NULL},
    {"v=spf1 -all", false, true, NULL},
    {"v=STSv10; id=a", false, true, NULL},
    {"id=abc; v=STSv1", false, true, NULL},
    {"", false, true, NULL},
};

static void
test_txt(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof txts / sizeof txts[0]; i++) {
        char id[MTA_STS_ID_MAX + 1];
        bool not_sts;
        const char *why = NULL;
        bool ok = mta_sts_txt_parse(txts[i].in, strlen(txts[i].in), id, &not_sts, &why);
        if (ok != txts[i].ok || not_sts != txts[i].not_sts)
            fail_msg("txt \"%s\": ok=%d not_sts=%d (%s)", txts[i].in, ok, not_sts, why ? why : "");
        if (ok)
            assert_string_equal(id, txts[i].id);
        else
            assert_non_null(why);
    }
}

struct policy_case {
    const char *in;
    int rc;
    enum mta_sts_mode mode;
    uint32_t max_age;
    size_t nmx;
    const char *why; /* part of the refusal */
};

static const struct policy_case policies[] = {
    {"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
     "max_age: 604800\r\n",
     0, MTA_STS_ENFORCE, 604800, 2, NULL},
    {"version: STSv1\nmode: testing\nmx: MX.Example.COM.\nmax_age: 86400\n", 0, MTA_STS_TESTING,
     86400, 1, NULL},
    {"version: STSv1\r\nmode: none\r\nmax_age: 0\r\n", 0, MTA_STS_NONE, 0, 0, NULL},
    {"mode:enforce\r\nmax_age:31557600\r\nmx:   a.example   \r\nversion:STSv1", 0, MTA_STS_ENFORCE,
     31557600, 1, NULL},
    {"version: STSv1\r\nmode: enforce\r\nmx: a.example\r\nmax_age: 1\r\nfuture_key: x\r\n", 0,
     MTA_STS_ENFORCE, 1, 1, NULL},
    {"version: STSv1\r\nmode: enforce\r\nmx: a.example\r\n", -1, 0, 0, 0, "max_age"},
    {"mode: enforce\r\nmx: a.example\r\nmax_age: 1\r\n", -1, 0, 0, 0, "version"},
    {"version: STSv1\r\nmx: a.example\r\nmax_age: 1\r\n", -1, 0, 0, 0, "mode"},
    {"version: STSv2\r\nmode: enforce\r\nmx: a.example\r\nmax_age: 1\r\n", -1, 0, 0, 0, "version"},
    {"version: STSv1\r\nmode: enforced\r\nmx: a.example\r\nmax_age: 1\r\n", -1, 0, 0, 0, "mode"},
    {"version: STSv1\r\nmode: enforce\r\nmode: testing\r\nmx: a.example\r\nmax_age: 1\r\n", -1, 0,
     0, 0, "mode"},
    {"version: STSv1\r\nmode: enforce\r\nmx: a.example\r\nmax_age: 31557601\r\n", -1, 0, 0, 0,
     "max_age"},
    {"version: STSv1\r\nmode: enforce\r\nmx: a.example\r\nmax_age: -1\r\n", -1, 0, 0, 0, "max_age"},
    {"version: STSv1\r\nmode: enforce\r\nmx: a.example\r\nmax_age: 1d\r\n", -1, 0, 0, 0, "max_age"},
    {"version: STSv1\r\nmode: enforce\r\nmax_age: 1\r\n", -1, 0, 0, 0, "mx"},
    {"version: STSv1\r\nmode: enforce\r\nmx: *.*.example\r\nmax_age: 1\r\n", -1, 0, 0, 0, "mx"},
    {"version: STSv1\r\nmode: enforce\r\nmx: a*.example\r\nmax_age: 1\r\n", -1, 0, 0, 0, "mx"},
    {"version: STSv1\r\nmode: enforce\r\nmx: 192.0.2.1\r\nmax_age: 1\r\n", -1, 0, 0, 0, "mx"},
    {"version: STSv1\r\nmode: enforce\r\nmx: a b.example\r\nmax_age: 1\r\n", -1, 0, 0, 0, "mx"},
    {"version: STSv1\r\nmode: enforce\r\nmx:\r\nmax_age: 1\r\n", -1, 0, 0, 0, "mx"},
    {"version: STSv1\r\nmode enforce\r\nmx: a.example\r\nmax_age: 1\r\n", -1, 0, 0, 0, "key"},
    {"<html>not a policy</html>", -1, 0, 0, 0, "key"},
    {"", -1, 0, 0, 0, "missing"},
};

static void
test_policy(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++) {
        const struct policy_case *c = &policies[i];
        struct mta_sts_policy p;
        char why[200] = "";
        int rc = mta_sts_policy_parse(c->in, strlen(c->in), &p, why, sizeof why);
        if (rc != c->rc)
            fail_msg("policy %zu: rc=%d (%s)", i, rc, why);
        if (rc == 0) {
            assert_int_equal(p.mode, c->mode);
            assert_int_equal(p.max_age_s, c->max_age);
            assert_int_equal(p.nmx, c->nmx);
            mta_sts_policy_clear(&p);
        } else if (!strstr(why, c->why)) {
            fail_msg("policy %zu: reason \"%s\" does not name %s", i, why, c->why);
        }
    }
}

static void
test_policy_limits(void **state)
{
    (void)state;
    /* the mx patterns come out lower-cased, without the trailing dot */
    const char *in = "version: STSv1\nmode: enforce\nmx: MX.Example.COM.\nmx: *.B.example\n"
                     "max_age: 5\n";
    struct mta_sts_policy p, copy;
    char why[200];
    assert_int_equal(mta_sts_policy_parse(in, strlen(in), &p, why, sizeof why), 0);
    assert_string_equal(p.mx[0], "mx.example.com");
    assert_string_equal(p.mx[1], "*.b.example");
    mta_sts_policy_copy(&copy, &p);
    mta_sts_policy_clear(&p);
    assert_string_equal(copy.mx[1], "*.b.example");
    mta_sts_policy_clear(&copy);

    /* more than 64 KB: refused whatever it holds */
    size_t big = MTA_STS_MAX_POLICY_BYTES + 1;
    char *text = malloc(big);
    memset(text, '\n', big);
    assert_int_equal(mta_sts_policy_parse(text, big, &p, why, sizeof why), -1);
    free(text);

    /* more than MTA_STS_MAX_MX patterns */
    char buf[8192];
    size_t n = (size_t)snprintf(buf, sizeof buf, "version: STSv1\nmode: enforce\nmax_age: 5\n");
    for (int i = 0; i <= MTA_STS_MAX_MX; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "mx: mx%d.example\n", i);
    assert_int_equal(mta_sts_policy_parse(buf, n, &p, why, sizeof why), -1);
    assert_non_null(strstr(why, "too many"));

    /* a NUL inside a line */
    const char nul[] = "version: STSv1\nmode: en\0force\nmx: a.example\nmax_age: 5\n";
    assert_int_equal(mta_sts_policy_parse(nul, sizeof nul - 1, &p, why, sizeof why), -1);
}

struct match_case {
    const char *pattern, *host;
    bool match;
};

static const struct match_case matches[] = {
    {"mail.example.com", "mail.example.com", true},
    {"mail.example.com", "MAIL.Example.com.", true},
    {"mail.example.com", "mail.example.co", false},
    {"mail.example.com", "xmail.example.com", false},
    {"*.example.com", "mx.example.com", true},
    {"*.example.com", "MX1.EXAMPLE.COM.", true},
    {"*.example.com", "a.b.example.com", false},
    {"*.example.com", "example.com", false},
    {"*.example.com", ".example.com", false},
    {"*.example.com", "mx.example.net", false},
    {"*.example.com", "", false},
};

static void
test_mx_match(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof matches / sizeof matches[0]; i++) {
        bool got = mta_sts_mx_match(matches[i].pattern, matches[i].host);
        if (got != matches[i].match)
            fail_msg("\"%s\" vs \"%s\": %d", matches[i].pattern, matches[i].host, got);
    }
    struct mta_sts_policy p = {0};
    assert_true(mta_sts_policy_add_mx(&p, "*.example.com", 13));
    assert_true(mta_sts_policy_allows(&p, "mx.example.com"));
    assert_false(mta_sts_policy_allows(&p, "mx.other.com"));
    assert_false(mta_sts_policy_allows(&p, NULL));
    mta_sts_policy_clear(&p);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txt),
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_policy_limits),
        cmocka_unit_test(test_mx_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
