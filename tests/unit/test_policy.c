/* Unit tests of the outcome policy (node/policy.c): the retry schedule with
 * its cap and jitter bounds, the backoff cap, expiry after bounce-after, and
 * smtp-pattern-list actions, retry lists (retry-after, retry-recipients-after,
 * backoff-retry-after) and their parser. Domain settings come from a real configuration
 * file loaded with conf_load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "policy.h"

#define S 1000ULL              /* ms per second */
#define US 1000000LL           /* us per second */
#define T0 (1700000000LL * US) /* some wall-clock time */

static struct conf *conf;

static int
setup(void **state)
{
    (void)state;
    char path[] = "/tmp/pgmta-test-policy-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("node-name = \"policy.test\";\n"
          "database = { url = \"postgresql://localhost/x\"; };\n"
          "domains = (\n"
          "  { name = \"*\"; retry-after = \"10m\"; max-retry-after = \"2h\";\n"
          "    bounce-after = \"1d\"; backoff-retry-after = \"30m\"; },\n"
          "  { name = \"slow.test\"; backoff-retry-after = \"4h\"; },\n"
          "  { name = \"pat.test\"; smtp-pattern-list = (\n"
          "      { pattern = \"mailbox (is )?disabled\"; action = \"bounce-rcpt\"; },\n"
          "      { pattern = \"too many (connections|messages)\"; action = \"backoff\"; },\n"
          "      { pattern = \"try again tomorrow\"; action = \"defer-queue\"; },\n"
          "      { pattern = \"blocked ip\"; action = \"disable-source-ip\"; } ); },\n"
          "  { name = \"list.test\"; retry-after = \"5m, 10m,30m ,1h\";\n"
          "    retry-recipients-after = \"1m, 2m\"; backoff-retry-after = \"2h, 6h\"; },\n"
          "  { name = \"one.test\"; retry-recipients-after = 90; }\n"
          ");\n",
          f);
    fclose(f);
    char err[512];
    conf = conf_load(path, err, sizeof err);
    unlink(path);
    if (!conf)
        fail_msg("conf_load: %s", err);
    return 0;
}

static int
teardown(void **state)
{
    (void)state;
    conf_free(conf);
    return 0;
}

static void
test_retry_schedule_doubles_to_cap(void **state)
{
    (void)state;
    const struct conf_domain *d = conf_domain_lookup(conf, "any.test");
    assert_int_equal(policy_retry_delay_ms(d, 1, false), 600 * S);
    assert_int_equal(policy_retry_delay_ms(d, 2, false), 1200 * S);
    assert_int_equal(policy_retry_delay_ms(d, 3, false), 2400 * S);
    assert_int_equal(policy_retry_delay_ms(d, 4, false), 4800 * S);
    /* 9600 s > 2 h: capped, and stays capped for any attempt */
    assert_int_equal(policy_retry_delay_ms(d, 5, false), 7200 * S);
    assert_int_equal(policy_retry_delay_ms(d, 50, false), 7200 * S);
    assert_int_equal(policy_retry_delay_ms(d, 1000000, false), 7200 * S);
    /* attempt 0 or negative (nonsense) behaves like the first */
    assert_int_equal(policy_retry_delay_ms(d, 0, false), 600 * S);
}

static void
test_backoff_is_capped(void **state)
{
    (void)state;
    const struct conf_domain *d = conf_domain_lookup(conf, "any.test");
    /* backoff-retry-after 30m doubles like retry-after, up to max-retry-after */
    assert_int_equal(policy_retry_delay_ms(d, 1, true), 1800 * S);
    assert_int_equal(policy_retry_delay_ms(d, 2, true), 3600 * S);
    assert_int_equal(policy_retry_delay_ms(d, 3, true), 7200 * S);
    assert_int_equal(policy_retry_delay_ms(d, 4, true), 7200 * S);
    assert_int_equal(policy_retry_delay_ms(d, 40, true), 7200 * S);
    /* a backoff delay above max-retry-after is kept, never doubled */
    const struct conf_domain *slow = conf_domain_lookup(conf, "slow.test");
    assert_int_equal(policy_retry_delay_ms(slow, 1, true), 4 * 3600 * S);
    assert_int_equal(policy_retry_delay_ms(slow, 5, true), 4 * 3600 * S);
    assert_int_equal(policy_retry_delay_ms(slow, 100, true), 4 * 3600 * S);
}

static void
test_jitter_bounds(void **state)
{
    (void)state;
    const struct conf_domain *d = conf_domain_lookup(conf, "any.test");
    long long base = 600 * US;
    long long lo = policy_retry_at_us(d, 1, false, T0, T0, 0.0) - T0;
    long long mid = policy_retry_at_us(d, 1, false, T0, T0, 0.5) - T0;
    long long hi = policy_retry_at_us(d, 1, false, T0, T0, 1.0) - T0;
    assert_true(lo == (long long)(base * (1 - POLICY_JITTER)));
    assert_true(mid == base);
    assert_true(hi == (long long)(base * (1 + POLICY_JITTER)));
    /* out-of-range draws are clamped into the bounds */
    assert_true(policy_retry_at_us(d, 1, false, T0, T0, -3.0) - T0 == lo);
    assert_true(policy_retry_at_us(d, 1, false, T0, T0, 7.0) - T0 == hi);
    /* for every draw, within +-20% of the capped delay */
    for (int k = 0; k <= 100; k++) {
        long long r = policy_retry_at_us(d, 9, false, T0, T0, k / 100.0) - T0;
        assert_true(r >= (long long)(7200 * US * (1 - POLICY_JITTER)));
        assert_true(r <= (long long)(7200 * US * (1 + POLICY_JITTER)));
    }
}

static void
test_expiry(void **state)
{
    (void)state;
    const struct conf_domain *d = conf_domain_lookup(conf, "any.test");
    long long day = 86400 * US;
    assert_false(policy_expired(d, T0, T0));
    assert_false(policy_expired(d, T0, T0 + day - 1));
    assert_true(policy_expired(d, T0, T0 + day));
    assert_true(policy_expired(d, T0, T0 + 10 * day));
    /* a retry is never scheduled after the expiry time */
    long long now = T0 + day - 60 * US;
    assert_true(policy_retry_at_us(d, 3, false, T0, now, 1.0) == T0 + day);
    assert_true(policy_retry_at_us(d, 1, false, T0, T0, 1.0) < T0 + day);
}

static void
test_pattern_actions(void **state)
{
    (void)state;
    const struct conf_domain *d = conf_domain_lookup(conf, "pat.test");
    unsigned fx = 0;
    /* bounce-rcpt: a 4xx that says the mailbox is gone is permanent */
    assert_int_equal(policy_apply_patterns(d, SMTP_TRANSIENT, "452 4.2.1 Mailbox is disabled", &fx),
                     SMTP_PERMANENT);
    assert_int_equal(fx, 0);
    /* backoff: transient, and the queue goes into backoff */
    assert_int_equal(policy_apply_patterns(d, SMTP_PERMANENT, "554 too many connections", &fx),
                     SMTP_TRANSIENT);
    assert_int_equal(fx, POLICY_EFFECT_BACKOFF);
    /* defer-queue: transient, the queue is deferred; effects accumulate */
    assert_int_equal(policy_apply_patterns(d, SMTP_TRANSIENT, "421 4.7.0 Try again tomorrow", &fx),
                     SMTP_TRANSIENT);
    assert_int_equal(fx, POLICY_EFFECT_BACKOFF | POLICY_EFFECT_DEFER_QUEUE);
    /* disable-source-ip: transient, the session's source IP is disabled */
    fx = 0;
    assert_int_equal(
        policy_apply_patterns(d, SMTP_PERMANENT, "554 5.7.1 Blocked IP 192.0.2.1", &fx),
        SMTP_TRANSIENT);
    assert_int_equal(fx, POLICY_EFFECT_DISABLE_SOURCE_IP);
    /* no match, no reply, or delivered: unchanged, no effect */
    fx = 0;
    assert_int_equal(policy_apply_patterns(d, SMTP_PERMANENT, "550 5.1.1 user unknown", &fx),
                     SMTP_PERMANENT);
    assert_int_equal(policy_apply_patterns(d, SMTP_TRANSIENT, NULL, &fx), SMTP_TRANSIENT);
    assert_int_equal(policy_apply_patterns(d, SMTP_DELIVERED, "250 too many messages", &fx),
                     SMTP_DELIVERED);
    assert_int_equal(fx, 0);
    /* a domain without patterns */
    const struct conf_domain *plain = conf_domain_lookup(conf, "any.test");
    assert_int_equal(policy_apply_patterns(plain, SMTP_TRANSIENT, "452 mailbox disabled", &fx),
                     SMTP_TRANSIENT);
    assert_int_equal(fx, 0);
}

static void
test_retry_list(void **state)
{
    (void)state;
    const struct conf_domain *d = conf_domain_lookup(conf, "list.test");
    assert_int_equal(d->retry_after.n, 4);
    /* entry n after attempt n, the last repeating, max-retry-after (2h)
     * not applied to list entries */
    const uint64_t want[] = {300, 300, 600, 1800, 3600, 3600, 3600};
    for (int a = 0; a < 7; a++)
        assert_int_equal(policy_retry_delay_ms(d, a, false), want[a] * S);
    assert_int_equal(policy_retry_delay_ms(d, 1000000, false), 3600 * S);
    /* backoff's own list, beyond max-retry-after */
    assert_int_equal(policy_retry_delay_ms(d, 1, true), 7200 * S);
    assert_int_equal(policy_retry_delay_ms(d, 2, true), 6 * 3600 * S);
    assert_int_equal(policy_retry_delay_ms(d, 9, true), 6 * 3600 * S);
    /* the schedule for a 4xx at RCPT, with jitter +-20% */
    assert_true(policy_schedule(d, false, true) == &d->retry_recipients_after);
    assert_true(policy_schedule(d, true, true) == &d->backoff_retry_after);
    assert_true(policy_retry_at_rcpt_us(d, 1, false, true, T0, T0, 0.5) == T0 + 60 * US);
    assert_true(policy_retry_at_rcpt_us(d, 5, false, true, T0, T0, 0.0) == T0 + 96 * US);
    assert_true(policy_retry_at_rcpt_us(d, 5, false, true, T0, T0, 1.0) == T0 + 144 * US);
    assert_true(policy_retry_at_rcpt_us(d, 3, false, false, T0, T0, 0.5) == T0 + 1800 * US);
    /* a single value keeps doubling to max-retry-after, also at RCPT */
    const struct conf_domain *one = conf_domain_lookup(conf, "one.test");
    assert_int_equal(one->retry_recipients_after.n, 1);
    assert_true(policy_retry_at_rcpt_us(one, 1, false, true, T0, T0, 0.5) == T0 + 90 * US);
    assert_true(policy_retry_at_rcpt_us(one, 3, false, true, T0, T0, 0.5) == T0 + 360 * US);
    assert_true(policy_retry_at_rcpt_us(one, 30, false, true, T0, T0, 0.5) == T0 + 7200 * US);
    /* retry-recipients-after unset: retry-after applies at RCPT too */
    const struct conf_domain *plain = conf_domain_lookup(conf, "any.test");
    assert_true(policy_schedule(plain, false, true) == &plain->retry_after);
    assert_int_equal(plain->retry_recipients_after.ms[0], 0);
}

static void
test_delays_parser(void **state)
{
    (void)state;
    struct conf_delays d;
    char why[96], out[CONF_MAX_DELAYS * 16];
    assert_int_equal(conf_parse_delays("5m, 10m, 30m, 1h, 2h, 4h", &d, why, sizeof why), 0);
    assert_int_equal(d.n, 6);
    assert_int_equal(d.ms[0], 300 * S);
    assert_int_equal(d.ms[5], 4 * 3600 * S);
    conf_format_delays(&d, out, sizeof out);
    assert_string_equal(out, "5m, 10m, 30m, 1h, 2h, 4h");
    assert_int_equal(conf_parse_delays(" 90 ,\t1h30m", &d, why, sizeof why), 0);
    assert_int_equal(d.n, 2);
    assert_int_equal(d.ms[0], 90 * S);
    assert_int_equal(d.ms[1], 5400 * S);
    conf_format_delays(&d, out, sizeof out);
    assert_string_equal(out, "1m30s, 1h30m");
    /* 30 entries are allowed, 31 are not */
    char list[400] = "";
    for (int i = 0; i < 30; i++)
        strcat(list, i ? ",1s" : "1s");
    assert_int_equal(conf_parse_delays(list, &d, why, sizeof why), 0);
    assert_int_equal(d.n, 30);
    conf_format_delays(&d, out, sizeof out);
    assert_int_equal(strlen(out), 30 * 2 + 29 * 2);
    strcat(list, ",1s");
    assert_int_equal(conf_parse_delays(list, &d, why, sizeof why), -1);
    assert_string_equal(why, "more than 30 entries");
    assert_int_equal(d.n, 30); /* unchanged on error */
    assert_int_equal(conf_parse_delays("1m, x", &d, why, sizeof why), -1);
    assert_string_equal(why, "bad entry 2 \"x\"");
    assert_int_equal(conf_parse_delays("1m,", &d, why, sizeof why), -1);
    assert_int_equal(conf_parse_delays("", &d, why, sizeof why), -1);
    assert_int_equal(conf_parse_delays("1m, 99999999999999999999d", &d, why, sizeof why), -1);
    assert_int_equal(
        conf_parse_delays("1m, 1234567890123456789012345678901234567890s", &d, why, sizeof why),
        -1);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_schedule_doubles_to_cap),
        cmocka_unit_test(test_backoff_is_capped),
        cmocka_unit_test(test_jitter_bounds),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_pattern_actions),
        cmocka_unit_test(test_retry_list),
        cmocka_unit_test(test_delays_parser),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
