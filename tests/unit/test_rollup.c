/* Unit tests of the limit keys shared across queues (node/rollup.c): the
 * source IP's key and limits of a virtual MTA, from a real configuration
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
#include "rollup.h"

static struct conf *conf;

static int
setup(void **state)
{
    (void)state;
    char path[] = "/tmp/pgmta-test-rollup-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs("node-name = \"rollup.test\";\n"
          "database = { url = \"postgresql://localhost/x\"; };\n"
          "domains = ( { name = \"*\"; } );\n"
          "virtual-mtas = (\n"
          "  { name = \"both\"; smtp-source-host = \"192.0.2.1\";\n"
          "    source-ip-max-smtp-out = 3; source-ip-max-connect-rate = \"10/m\"; },\n"
          "  { name = \"slots\"; smtp-source-host = \"192.0.2.2\"; source-ip-max-smtp-out = 1; },\n"
          "  { name = \"rate\"; smtp-source-host = \"2001:db8::1\";\n"
          "    source-ip-max-connect-rate = \"5/s\"; },\n"
          "  { name = \"plain\"; smtp-source-host = \"192.0.2.4\"; },\n"
          "  { name = \"msgs\"; smtp-source-host = \"192.0.2.5\";\n"
          "    source-ip-max-msg-rate = \"60/m\"; },\n"
          "  { name = \"nohost\"; source-ip-max-smtp-out = 2; },\n"
          "  { name = \"nohostmsgs\"; source-ip-max-msg-rate = \"60/m\"; }\n"
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
assert_key(const char *vmta, const char *want)
{
    char *key = rollup_ip_key(conf_vmta_lookup(conf, vmta));
    if (want)
        assert_string_equal(key, want);
    else
        assert_null(key);
    free(key);
}

static void
test_ip_key(void **state)
{
    (void)state;
    assert_key("both", "ip:192.0.2.1");
    assert_key("slots", "ip:192.0.2.2");
    assert_key("rate", "ip:2001:db8::1");
    assert_key("plain", NULL);          /* no IP limit */
    assert_key("msgs", "ip:192.0.2.5"); /* the message rate alone */
    assert_key("nohost", NULL);         /* no source address to key on */
    assert_key("nohostmsgs", NULL);
    assert_null(rollup_ip_key(NULL));
}

static void
test_ip_limits(void **state)
{
    (void)state;
    assert_int_equal(rollup_ip_max_smtp_out(conf_vmta_lookup(conf, "both")), 3);
    assert_int_equal(rollup_ip_max_smtp_out(conf_vmta_lookup(conf, "slots")), 1);
    assert_true(rollup_ip_max_smtp_out(conf_vmta_lookup(conf, "rate")) == CONF_UNLIMITED);
    assert_true(rollup_ip_max_smtp_out(NULL) == CONF_UNLIMITED);
    const struct conf_rate *r = rollup_ip_connect_rate(conf_vmta_lookup(conf, "both"));
    assert_non_null(r);
    assert_int_equal(r->count, 10);
    assert_int_equal(r->period_ms, 60000);
    r = rollup_ip_connect_rate(conf_vmta_lookup(conf, "rate"));
    assert_non_null(r);
    assert_int_equal(r->count, 5);
    assert_int_equal(r->period_ms, 1000);
    assert_null(rollup_ip_connect_rate(conf_vmta_lookup(conf, "slots")));
    assert_null(rollup_ip_connect_rate(NULL));
}

static void
test_ip_msg_rate(void **state)
{
    (void)state;
    const struct conf_rate *r = rollup_ip_msg_rate(conf_vmta_lookup(conf, "msgs"));
    assert_non_null(r);
    assert_int_equal(r->count, 60);
    assert_int_equal(r->period_ms, 60000);
    assert_null(rollup_ip_msg_rate(conf_vmta_lookup(conf, "both")));
    assert_null(rollup_ip_msg_rate(conf_vmta_lookup(conf, "nohostmsgs")));
    assert_null(rollup_ip_msg_rate(NULL));
    /* a message rate alone takes no IP slot or connect token */
    assert_false(rollup_ip_limits_connections(conf_vmta_lookup(conf, "msgs")));
    assert_true(rollup_ip_limits_connections(conf_vmta_lookup(conf, "both")));
    assert_true(rollup_ip_limits_connections(conf_vmta_lookup(conf, "rate")));
    assert_false(rollup_ip_limits_connections(conf_vmta_lookup(conf, "plain")));
    assert_false(rollup_ip_limits_connections(conf_vmta_lookup(conf, "nohost")));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ip_key),
        cmocka_unit_test(test_ip_limits),
        cmocka_unit_test(test_ip_msg_rate),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
