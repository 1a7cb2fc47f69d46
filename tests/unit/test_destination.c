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

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_helo_fqdn),
        cmocka_unit_test(test_claim_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
