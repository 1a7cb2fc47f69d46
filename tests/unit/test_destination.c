/* Unit tests of the pure helpers of delivery: routes and the HELO check
 * (node/destination.c), and how many rows a claim asks for a number of
 * message tokens (node/batch.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "batch.h"
#include "destination.h"

static void
test_routes(void **state)
{
    (void)state;
    char host[256];
    unsigned port;
    destination_parse_route("127.0.0.1:2526", host, sizeof host, 25, &port);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 2526);
    destination_parse_route("mx.example.com", host, sizeof host, 25, &port);
    assert_string_equal(host, "mx.example.com");
    assert_int_equal(port, 25);
    destination_parse_route("[::1]:2525", host, sizeof host, 25, &port);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 2525);
    destination_parse_route("[2001:db8::5]", host, sizeof host, 587, &port);
    assert_string_equal(host, "2001:db8::5");
    assert_int_equal(port, 587);
}

static void
test_helo_fqdn(void **state)
{
    (void)state;
    assert_true(destination_helo_is_fqdn("mta1.example.com"));
    assert_true(destination_helo_is_fqdn("out-1.mail.example.net"));
    assert_false(destination_helo_is_fqdn("node-a"));
    assert_false(destination_helo_is_fqdn("localhost"));
    assert_false(destination_helo_is_fqdn("192.0.2.1"));
    assert_false(destination_helo_is_fqdn("[192.0.2.1]"));
    assert_false(destination_helo_is_fqdn("bad..example.com"));
    assert_false(destination_helo_is_fqdn("-x.example.com"));
    assert_false(destination_helo_is_fqdn(""));
    assert_false(destination_helo_is_fqdn(NULL));
}

static void
test_claim_rows(void **state)
{
    (void)state;
    /* whole transactions of max-rcpt-per-message, at most the batch */
    assert_int_equal(batch_claim_rows(100, 1, 100), 100);
    assert_int_equal(batch_claim_rows(100, 99, 100), 100);
    assert_int_equal(batch_claim_rows(4, 3, 100), 12);
    assert_int_equal(batch_claim_rows(1, 7, 100), 7);
    assert_int_equal(batch_claim_rows(100000, 100000, 100), 100);
    /* at least one row */
    assert_int_equal(batch_claim_rows(0, 0, 100), 1);
}

/* MTA-STS enforce keeps the MX hosts its patterns allow, and DANE wins:
 * a host with usable TLSA records stays whatever the patterns say; a host
 * whose TLSA answer was bogus, or that has none, does not. */
static void
test_sts_filter_dane_wins(void **state)
{
    (void)state;
    static const char policy[] = "version: STSv1\nmode: enforce\nmx: *.allowed.test\n"
                                 "max_age: 86400\n";
    struct mta_sts_policy sts = {0};
    char why[128];
    assert_int_equal(mta_sts_policy_parse(policy, sizeof policy - 1, &sts, why, sizeof why), 0);
    struct dns_host hosts[4] = {{.name = "mx1.other.test"},
                                {.name = "mx2.allowed.test"},
                                {.name = "mx3.dane.test"},
                                {.name = "mx4.bogus.test"}};
    struct dane_host dh[2] = {{.name = "mx3.dane.test", .state = DANE_REQUIRED},
                              {.name = "mx4.bogus.test", .state = DANE_BOGUS}};
    struct dane_set dane = {dh, 2};
    /* without DANE: the allowed host only */
    assert_int_equal(destination_sts_filter(hosts, 4, &sts, NULL), 1);
    assert_string_equal(hosts[0].name, "mx2.allowed.test");
    /* with DANE: the allowed one and the DANE one, in their order */
    struct dns_host again[4] = {{.name = "mx1.other.test"},
                                {.name = "mx2.allowed.test"},
                                {.name = "mx3.dane.test"},
                                {.name = "mx4.bogus.test"}};
    assert_int_equal(destination_sts_filter(again, 4, &sts, &dane), 2);
    assert_string_equal(again[0].name, "mx2.allowed.test");
    assert_string_equal(again[1].name, "mx3.dane.test");
    mta_sts_policy_clear(&sts);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_helo_fqdn),
        cmocka_unit_test(test_claim_rows),
        cmocka_unit_test(test_sts_filter_dane_wins),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
