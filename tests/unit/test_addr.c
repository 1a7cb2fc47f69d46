/* Unit tests of addr_validate, table-driven, with the decisions and reasons
 * of mta.address_domain_full() in sql/010_validate.sql (the integration test
 * test_addr_sql compares the two on a real PostgreSQL). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "addr.h"
#include "util.h"

struct c {
    const char *in;
    const char *why; /* NULL: valid */
};

static const struct c cases[] = {
    {"user@example.com", NULL},
    {"first.last+tag@sub.example.co", NULL},
    {"!#$%&'*+/=?^_`{|}~-@example.com", NULL},
    {"\"quoted local\"@example.com", NULL},
    {"\"a\\\"b\"@example.com", NULL},
    {"\"a@b\"@example.com", NULL},
    {"user@[192.0.2.1]", NULL},
    {"user@[IPv6:2001:db8::1]", NULL},
    {"user@[ipv6:::1]", NULL},
    {"j\xc3\xb6rg@b\xc3\xbc"
     "cher.example",
     NULL},
    {"user@xn--bcher-kva.example", NULL},
    {"", "empty address"},
    {"a\r\nb@example.com", "contains CR or LF"},
    {"a\tb@example.com", "contains a control character"},
    {"a\x7f@example.com", "contains a control character"},
    {"<a@example.com>", "contains '<' or '>'"},
    {"\"a<b\"@example.com", "contains '<' or '>'"},
    {"\"unclosed@example.com", "quoted local part not closed or not followed by '@'"},
    {"\"a\"b@example.com", "quoted local part not closed or not followed by '@'"},
    {"\"\"@example.com", "empty local part"},
    {"\"a\\\xc3\xa9\"@example.com",
     "backslash in the quoted local part not followed by a printable character"},
    {"userexample.com", "no '@'"},
    {"a@b@example.com", "more than one '@' outside a quoted local part"},
    {"@example.com", "empty local part"},
    {"a b@example.com", "space outside quotes"},
    {"a(b)@example.com", "local part contains a special character (\"(),:;[]\\) outside quotes"},
    {"a\\b@example.com", "local part contains a special character (\"(),:;[]\\) outside quotes"},
    {".a@example.com", "local part starts or ends with '.' or has '..'"},
    {"a.@example.com", "local part starts or ends with '.' or has '..'"},
    {"a..b@example.com", "local part starts or ends with '.' or has '..'"},
    {"user@", "empty domain"},
    {"user@[300.1.1.1]", "invalid IPv4 address literal"},
    {"user@[IPv6:zz::1]", "invalid address literal"},
    {"user@[IPv6:1::2::3]", "invalid IPv6 address literal"},
    {"user@[example.com]", "invalid address literal"},
    {"user@exa mple.com", "space in the domain"},
    {"user@example..com", "empty label in the domain"},
    {"user@example.com.", "empty label in the domain"},
    {"user@.example.com", "empty label in the domain"},
    {"user@exa_mple.com", "domain has a character other than letters, digits, '-' and '.'"},
    {"user@-example.com", "domain label starts or ends with '-'"},
    {"user@example-.com", "domain label starts or ends with '-'"},
};

static void
test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *why = NULL;
        bool ok = addr_validate_str(cases[i].in, NULL, &why);
        if (cases[i].why == NULL && !ok)
            fail_msg("\"%s\" refused: %s", cases[i].in, why);
        if (cases[i].why != NULL) {
            if (ok)
                fail_msg("\"%s\" accepted", cases[i].in);
            if (strcmp(why, cases[i].why) != 0)
                fail_msg("\"%s\": \"%s\", want \"%s\"", cases[i].in, why, cases[i].why);
        }
    }
}

static void
test_limits(void **state)
{
    (void)state;
    char a[600];
    const char *why;
    /* local part of 64 octets: fine; 65: too long */
    memset(a, 'l', 64);
    strcpy(a + 64, "@example.com");
    assert_true(addr_validate_str(a, NULL, &why));
    memset(a, 'l', 65);
    strcpy(a + 65, "@example.com");
    assert_false(addr_validate_str(a, NULL, &why));
    assert_string_equal(why, "local part is too long, at most 64 octets allowed");
    /* a quoted local part counts its quotes: 62 + 2 fine, 63 + 2 not */
    a[0] = '"';
    memset(a + 1, 'q', 62);
    strcpy(a + 63, "\"@example.com");
    assert_true(addr_validate_str(a, NULL, &why));
    memset(a + 1, 'q', 63);
    strcpy(a + 64, "\"@example.com");
    assert_false(addr_validate_str(a, NULL, &why));
    /* label of 63 fine, 64 not */
    strcpy(a, "u@");
    memset(a + 2, 'd', 63);
    strcpy(a + 65, ".com");
    assert_true(addr_validate_str(a, NULL, &why));
    memset(a + 2, 'd', 64);
    strcpy(a + 66, ".com");
    assert_false(addr_validate_str(a, NULL, &why));
    assert_string_equal(why, "domain label is too long, at most 63 octets allowed");
    /* address of 254 octets fine, 255 not */
    strcpy(a, "u@");
    size_t n = 2;
    while (n < 254) {
        size_t l = 254 - n > 60 ? 60 : 254 - n;
        memset(a + n, 'd', l);
        n += l;
        if (n < 254)
            a[n++] = '.';
    }
    a[254] = '\0';
    if (a[253] == '.')
        a[253] = 'd';
    assert_true(addr_validate_str(a, NULL, &why));
    a[254] = 'd';
    a[255] = '\0';
    assert_false(addr_validate_str(a, NULL, &why));
    assert_string_equal(why, "address is too long, at most 254 octets allowed");
    /* NUL inside the length */
    assert_false(addr_validate("a\0b@example.com", 15, NULL, &why));
    assert_string_equal(why, "contains a NUL byte");
}

static void
test_parts(void **state)
{
    (void)state;
    struct addr_parts p;
    const char *s = "\"a@b\"@[192.0.2.1]";
    assert_true(addr_validate_str(s, &p, NULL));
    assert_true(p.quoted);
    assert_true(p.literal);
    assert_int_equal(p.local_len, 5);
    assert_int_equal(p.domain_off, 6);
    assert_int_equal(p.domain_len, strlen("[192.0.2.1]"));
    s = "x@Example.COM";
    assert_true(addr_validate_str(s, &p, NULL));
    assert_false(p.quoted);
    assert_int_equal(p.local_len, 1);
    assert_memory_equal(s + p.domain_off, "Example.COM", p.domain_len);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
