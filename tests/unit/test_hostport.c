/* Unit tests of hostport_parse: every accepted form with its kind, host and
 * port, and the refusals with the flags that cause them, table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <string.h>

#include "hostport.h"

struct good {
    const char *in;
    unsigned flags;
    enum hostport_kind kind;
    const char *host;
    unsigned port;
    bool bracketed;
};

static const struct good goods[] = {
    {"1.2.3.4", 0, HOSTPORT_IPV4, "1.2.3.4", 0, false},
    {"1.2.3.4:25", 0, HOSTPORT_IPV4, "1.2.3.4", 25, false},
    {"[1.2.3.4]", 0, HOSTPORT_IPV4, "1.2.3.4", 0, true},
    {"[1.2.3.4]:2525", 0, HOSTPORT_IPV4, "1.2.3.4", 2525, true},
    {"[::1]", 0, HOSTPORT_IPV6, "::1", 0, true},
    {"[::1]:25", 0, HOSTPORT_IPV6, "::1", 25, true},
    {"[IPv6:::1]", 0, HOSTPORT_IPV6, "::1", 0, true},
    {"[ipv6:2001:db8::1]:587", 0, HOSTPORT_IPV6, "2001:db8::1", 587, true},
    {"::1", HOSTPORT_BARE_IPV6, HOSTPORT_IPV6, "::1", 0, false},
    {"2001:db8::25", HOSTPORT_BARE_IPV6, HOSTPORT_IPV6, "2001:db8::25", 0, false},
    {"mx.example", 0, HOSTPORT_NAME, "mx.example", 0, false},
    {"mx.example:65535", 0, HOSTPORT_NAME, "mx.example", 65535, false},
    {"localhost:1", HOSTPORT_PORT_REQUIRED, HOSTPORT_NAME, "localhost", 1, false},
    {"a_b.example", 0, HOSTPORT_NAME, "a_b.example", 0, false},
};

struct bad {
    const char *in;
    unsigned flags;
};

static const struct bad bads[] = {
    {"", 0},
    {":25", 0},
    {"host:", 0},
    {"host:0", 0},
    {"host:65536", 0},
    {"host:123456", 0},
    {"host:2a", 0},
    {"host:+25", 0},
    {"host: 25", 0},
    {"[1.2.3.4", 0},
    {"[1.2.3.4]x", 0},
    {"[1.2.3.4]:", 0},
    {"[mx.example]:25", 0},
    {"[IPv6:1.2.3.4]", 0},
    {"[]", 0},
    {"::1", 0},
    {"::1:25", 0},
    {"[::1]:25", HOSTPORT_NO_PORT},
    {"1.2.3.4:25", HOSTPORT_NO_PORT},
    {"mx.example", HOSTPORT_IP_ONLY},
    {"mx.example", HOSTPORT_PORT_REQUIRED},
    {"-mx.example", 0},
    {"mx-.example", 0},
    {"mx..example", 0},
    {".mx.example", 0},
    {"mx.example.", 0},
    {"mx example", 0},
    {"mx\texample:25", 0},
    {"1.2.3.4.5:25", HOSTPORT_IP_ONLY},
    {"1.2.3.256", HOSTPORT_IP_ONLY},
};

static void
test_good(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof goods / sizeof goods[0]; i++) {
        const struct good *g = &goods[i];
        struct hostport hp;
        const char *why = NULL;
        if (!hostport_parse_str(g->in, g->flags, &hp, &why))
            fail_msg("%s refused: %s", g->in, why);
        assert_int_equal(hp.kind, g->kind);
        assert_string_equal(hp.host, g->host);
        assert_int_equal(hp.port, g->port);
        assert_int_equal(hp.bracketed, g->bracketed);
    }
}

static void
test_bad(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        struct hostport hp;
        const char *why = NULL;
        if (hostport_parse_str(bads[i].in, bads[i].flags, &hp, &why))
            fail_msg("\"%s\" (flags %u) accepted", bads[i].in, bads[i].flags);
        assert_non_null(why);
    }
    /* a NUL inside the length is refused, not cut */
    struct hostport hp;
    assert_false(hostport_parse("a\0b:25", 6, 0, &hp, NULL));
    /* a label of 64 octets, a name of 254 */
    char name[300];
    memset(name, 'a', 64);
    name[64] = '\0';
    assert_false(hostport_is_hostname(name, strlen(name)));
    name[63] = '\0';
    assert_true(hostport_is_hostname(name, strlen(name)));
    memset(name, 'a', 254);
    for (int i = 50; i < 254; i += 50)
        name[i] = '.';
    name[254] = '\0';
    assert_false(hostport_is_hostname(name, 254));
    assert_true(hostport_is_hostname(name, 253));
}

static void
test_literals_and_sockaddr(void **state)
{
    (void)state;
    assert_true(hostport_is_ip_literal("1.2.3.4"));
    assert_true(hostport_is_ip_literal("[1.2.3.4]"));
    assert_true(hostport_is_ip_literal("::1"));
    assert_true(hostport_is_ip_literal("[IPv6:::1]"));
    assert_false(hostport_is_ip_literal("1.2.3.4:25"));
    assert_false(hostport_is_ip_literal("mx.example"));

    struct hostport hp;
    struct sockaddr_storage sa;
    socklen_t salen;
    assert_true(hostport_parse_str("[::1]:2525", 0, &hp, NULL));
    assert_true(hostport_sockaddr(&hp, 25, &sa, &salen));
    assert_int_equal(sa.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&sa)->sin6_port), 2525);
    assert_true(hostport_parse_str("10.0.0.1", 0, &hp, NULL));
    assert_true(hostport_sockaddr(&hp, 25, &sa, &salen));
    assert_int_equal(ntohs(((struct sockaddr_in *)&sa)->sin_port), 25);
    assert_int_equal(salen, sizeof(struct sockaddr_in));
    assert_true(hostport_parse_str("mx.example:26", 0, &hp, NULL));
    assert_false(hostport_sockaddr(&hp, 25, &sa, &salen));

    char out[HOSTPORT_HOST_MAX + 9];
    assert_true(hostport_parse_str("[::1]:25", 0, &hp, NULL));
    assert_string_equal(hostport_format(&hp, 0, out, sizeof out), "[::1]:25");
    assert_true(hostport_parse_str("mx.example", 0, &hp, NULL));
    assert_string_equal(hostport_format(&hp, 0, out, sizeof out), "mx.example");
    assert_string_equal(hostport_format(&hp, 587, out, sizeof out), "mx.example:587");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_bad),
        cmocka_unit_test(test_literals_and_sockaddr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
