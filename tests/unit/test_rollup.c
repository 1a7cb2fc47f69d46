/* Unit tests of the limit keys shared across queues (node/rollup.c): the
 * source IP's key and limits of a virtual MTA, and the MX rollup key of a
 * domain (configured, opted out, automatic from MX hosts as a DNS answer
 * gives them, providers entries), from a real configuration file loaded
 * with conf_load; and the configuration errors of both directives. */
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
#include "dns.h"
#include "rollup.h"

static struct conf *conf;

/* TEXT as a configuration file: the configuration, or NULL with ERR. */
static struct conf *
load_text(const char *text, char *err, size_t errlen)
{
    char path[] = "/tmp/pgmta-test-rollup-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
    struct conf *c = conf_load(path, err, errlen);
    unlink(path);
    return c;
}

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
          "domains = ( { name = \"*\"; max-smtp-out = 7; max-msg-per-connection = 9; },\n"
          "  { name = \"named.test\"; mx-rollup = \"grp\"; },\n"
          "  { name = \"off.test\"; mx-rollup = false; },\n"
          "  { name = \"on.test\"; mx-rollup = true; },\n"
          "  { name = \"routed.test\"; route = \"127.0.0.1:2526\"; } );\n"
          "providers = (\n"
          "  { name = \"google\"; mx-suffix = [ \".google.com\", \"GoogleMail.com.\" ];\n"
          "    max-smtp-out = 50; max-msg-rate = \"100/s\"; },\n"
          "  { name = \"mso\"; mx-suffix = [ \"outlook.com\" ]; } );\n"
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

/* ---- MX rollup ---- */

static void
test_rollup_modes(void **state)
{
    (void)state;
    const struct conf_domain *d = conf_domain_lookup(conf, "named.test");
    assert_false(rollup_automatic(d));
    char *k = rollup_static_key(d, "named.test");
    assert_string_equal(k, "rollup:grp");
    free(k);
    d = conf_domain_lookup(conf, "off.test");
    assert_false(rollup_automatic(d));
    k = rollup_static_key(d, "off.test");
    assert_string_equal(k, "off.test");
    free(k);
    assert_false(rollup_automatic(conf_domain_lookup(conf, "routed.test")));
    assert_true(rollup_automatic(conf_domain_lookup(conf, "on.test")));
    /* unset: automatic, the default */
    assert_true(rollup_automatic(conf_domain_lookup(conf, "other.test")));
}

static void
test_suffix_match(void **state)
{
    (void)state;
    assert_true(rollup_suffix_match("aspmx.l.google.com", ".google.com"));
    assert_true(rollup_suffix_match("ASPMX.L.Google.COM.", "google.com"));
    assert_true(rollup_suffix_match("google.com", ".google.com."));
    assert_false(rollup_suffix_match("xgoogle.com", "google.com"));
    assert_false(rollup_suffix_match("google.com.evil.test", ".google.com"));
    assert_false(rollup_suffix_match("com", "google.com"));
    assert_false(rollup_suffix_match("mx.test", "."));
}

#define HOST(n, p)                                                                                 \
    {                                                                                              \
        .name = (char *)(n), .preference = (p)                                                     \
    }

/* The key of DOMAIN for HOSTS; *prov the provider found. */
static char *
key_of(const char *domain, const struct dns_host *hosts, size_t n, const char **prov)
{
    const struct conf_provider *p = (const struct conf_provider *)1;
    char *k = rollup_mx_key(conf, domain, hosts, n, &p);
    *prov = p ? p->name : NULL;
    return k;
}

static void
assert_mx_key(const char *domain, const struct dns_host *hosts, size_t n, const char *want,
              const char *want_provider)
{
    const char *prov;
    char *k = key_of(domain, hosts, n, &prov);
    if (want)
        assert_string_equal(k, want);
    else
        assert_null(k);
    if (want_provider)
        assert_string_equal(prov, want_provider);
    else
        assert_null(prov);
    free(k);
}

static void
test_mx_key(void **state)
{
    (void)state;
    /* every lowest-preference host in one provider (its other suffix too);
     * a backup of higher preference elsewhere does not count */
    struct dns_host g[] = {HOST("alt1.aspmx.l.google.com", 5), HOST("aspmx.l.google.com.", 1),
                           HOST("ASPMX2.googlemail.com", 1), HOST("backup.example.net", 20)};
    assert_mx_key("customer.test", g, 4, "provider:google", "google");
    /* one host outside it: the MX set's own key, sorted, lower case, once
     * each, the trailing dot dropped */
    struct dns_host mixed[] = {HOST("mx2.Example.net.", 10), HOST("aspmx.l.google.com", 10),
                               HOST("mx2.example.net", 10), HOST("low.other.test", 30)};
    assert_mx_key("customer.test", mixed, 4, "mx:aspmx.l.google.com,mx2.example.net", NULL);
    /* the first matching provider wins; the order of hosts does not matter */
    struct dns_host o[] = {HOST("b.mail.protection.outlook.com", 0),
                           HOST("a.mail.protection.outlook.com", 0)};
    assert_mx_key("x.test", o, 2, "provider:mso", "mso");
    /* implicit MX (the domain itself), an MX of itself, or nothing: own key */
    struct dns_host self[] = {HOST("Self.test.", 10)};
    assert_mx_key("self.test", self, 1, NULL, NULL);
    assert_mx_key("self.test", NULL, 0, NULL, NULL);
    struct dns_host noname[] = {HOST(NULL, 0), HOST("", 1)};
    assert_mx_key("self.test", noname, 2, NULL, NULL);
    /* itself among others: a shared set */
    struct dns_host both[] = {HOST("self.test", 10), HOST("mx.shared.test", 10)};
    assert_mx_key("self.test", both, 2, "mx:mx.shared.test,self.test", NULL);
    /* a long set is hashed: "mx:" and 32 hex digits, the same for the same set */
    struct dns_host many[] = {HOST("a-very-long-mail-exchanger-name-number-one.example.net", 10),
                              HOST("a-very-long-mail-exchanger-name-number-two.example.net", 10),
                              HOST("a-very-long-mail-exchanger-name-number-three.example.net", 10)};
    struct dns_host many_rev[] = {many[2], many[1], many[0]};
    const char *prov;
    char *k1 = key_of("long.test", many, 3, &prov);
    char *k2 = key_of("long.test", many_rev, 3, &prov);
    assert_null(prov);
    assert_int_equal(strlen(k1), 3 + 32);
    assert_memory_equal(k1, "mx:", 3);
    assert_int_equal(strspn(k1 + 3, "0123456789abcdef"), 32);
    assert_string_equal(k1, k2);
    free(k1);
    free(k2);
}

static void
test_provider_limits(void **state)
{
    (void)state;
    const struct conf_provider *g = &conf->providers[0], *m = &conf->providers[1];
    assert_int_equal(conf->nproviders, 2);
    assert_string_equal(g->name, "google");
    assert_int_equal(g->max_smtp_out, 50);
    assert_int_equal(g->max_msg_rate.count, 100);
    assert_int_equal(g->max_msg_per_connection, 9); /* unset: the "*" entry's */
    assert_int_equal(m->max_smtp_out, 7);
    assert_true(m->max_msg_rate.count == CONF_UNLIMITED);
    /* the provider's limits over the domain's other settings */
    const struct conf_domain *d = conf_domain_lookup(conf, "on.test");
    struct conf_domain out;
    rollup_apply_provider(&out, d, g);
    assert_int_equal(out.max_smtp_out, 50);
    assert_int_equal(out.max_msg_rate.count, 100);
    assert_int_equal(out.max_msg_rate.period_ms, 1000);
    assert_true(out.max_connect_rate.count == CONF_UNLIMITED);
    assert_int_equal(out.max_msg_per_connection, 9);
    assert_true(out.retry_after_ms == d->retry_after_ms);
    assert_ptr_equal(out.name, d->name);
}

static void
assert_conf_error(const char *body, const char *want)
{
    char text[2048], err[512];
    snprintf(text, sizeof text,
             "node-name = \"n\";\ndatabase = { url = \"postgresql://localhost/x\"; };\n%s", body);
    struct conf *c = load_text(text, err, sizeof err);
    if (c) {
        conf_free(c);
        fail_msg("accepted: %s", body);
    }
    if (!strstr(err, want))
        fail_msg("error \"%s\", want \"%s\"", err, want);
}

static void
test_conf_errors(void **state)
{
    (void)state;
    assert_conf_error("domains = ( { name = \"a.test\";\n mx-rollup = 5; } );\n",
                      ":4: mx-rollup: expected a rollup name");
    assert_conf_error("domains = ( { name = \"a.test\"; mx-rollup = \"a b\"; } );\n",
                      ":3: mx-rollup: expected a rollup name");
    assert_conf_error("providers = ( { name = \"p\"; max-smtp-out = 3; } );\n",
                      ":3: providers: entry without mx-suffix");
    assert_conf_error("providers = ( { name = \"p\";\n mx-suffix = [ \"..\" ]; } );\n",
                      ":4: mx-suffix: bad suffix \"..\"");
    assert_conf_error("providers = ( { name = \"p\"; mx-suffix = [ ]; } );\n",
                      ":3: mx-suffix: a provider needs at least one suffix");
    assert_conf_error("providers = ( { name = \"p\"; mx-suffix = [ \"x.test\" ];\n"
                      " max-smtp-out = 0; } );\n",
                      ":4: max-smtp-out");
    assert_conf_error("providers = ( { name = \"p\"; mx-suffix = [ \"x.test\" ]; },\n"
                      " { name = \"p\"; mx-suffix = [ \"y.test\" ]; } );\n",
                      ":4: duplicate provider \"p\"");
}

/* conf_dump writes mx-rollup and providers back as loaded. */
static void
test_conf_dump_round_trip(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    conf_dump(conf, f);
    fclose(f);
    assert_non_null(strstr(buf, "mx-rollup = \"grp\";"));
    assert_non_null(strstr(buf, "mx-rollup = false;"));
    assert_non_null(strstr(buf, "mx-suffix = [ \".google.com\", \"GoogleMail.com.\" ];"));
    char err[512];
    struct conf *c = load_text(buf, err, sizeof err);
    if (!c)
        fail_msg("dump not loadable: %s", err);
    assert_true(c->domains[0].mx_rollup == NULL && !c->domains[0].mx_rollup_off);
    assert_true(conf_domain_lookup(c, "off.test")->mx_rollup_off);
    assert_string_equal(conf_domain_lookup(c, "named.test")->mx_rollup, "grp");
    assert_int_equal(c->nproviders, 2);
    assert_int_equal(c->providers[0].max_smtp_out, 50);
    assert_int_equal(c->providers[1].max_smtp_out, 7);
    conf_free(c);
    free(buf);
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
        cmocka_unit_test(test_rollup_modes),
        cmocka_unit_test(test_suffix_match),
        cmocka_unit_test(test_mx_key),
        cmocka_unit_test(test_provider_limits),
        cmocka_unit_test(test_conf_errors),
        cmocka_unit_test(test_conf_dump_round_trip),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
