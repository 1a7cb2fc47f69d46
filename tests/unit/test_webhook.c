/* Unit tests of the webhook sender's pure functions: the retry backoff
 * (doubling from 1 s, capped) and the request signature (HMAC-SHA256 of
 * "timestamp.body", checked against a value computed with Python's hmac). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "webhook.h"

static void
retry_delay_doubles_to_cap(void **state)
{
    (void)state;
    assert_int_equal(webhook_retry_delay_ms(1, 300000), 1000);
    assert_int_equal(webhook_retry_delay_ms(2, 300000), 2000);
    assert_int_equal(webhook_retry_delay_ms(3, 300000), 4000);
    assert_int_equal(webhook_retry_delay_ms(9, 300000), 256000);
    assert_int_equal(webhook_retry_delay_ms(10, 300000), 300000);
    assert_int_equal(webhook_retry_delay_ms(1000000, 300000), 300000);
    assert_int_equal(webhook_retry_delay_ms(5, 2500), 2500);
    /* a cap below the first delay wins */
    assert_int_equal(webhook_retry_delay_ms(1, 500), 500);
}

static void
signature_matches_reference(void **state)
{
    (void)state;
    const char body[] = "[{\"id\":1}]";
    char sig[80];
    webhook_sign("key", 3, "1700000000", body, strlen(body), sig, sizeof sig);
    assert_string_equal(sig,
                        "sha256=b0c2c833d25ba74c01fbd10467a303334d8c0a25f2e82b1ce5faabb3c1e2fd45");
    /* another timestamp, another signature */
    char other[80];
    webhook_sign("key", 3, "1700000001", body, strlen(body), other, sizeof other);
    assert_string_not_equal(sig, other);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(retry_delay_doubles_to_cap),
        cmocka_unit_test(signature_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
