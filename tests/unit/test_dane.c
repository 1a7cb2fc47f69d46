/* Unit tests of TLSA records: the reply parser (dns_parse_reply, type 52)
 * on wire-format answers, and which records SMTP may use (dane.h, RFC
 * 7672 3.1.3), table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dane.h"
#include "dns.h"

/* A reply to "_25._tcp.mx.example. TLSA" with the given flags byte 3 and
 * answer records (usage, selector, mtype, data of len). */
struct rec {
    uint8_t u, s, m;
    size_t len;
};

static size_t
reply(unsigned char *b, uint8_t flags3, const struct rec *recs, size_t n)
{
    static const unsigned char qname[] = "\x03_25\x04_tcp\x02mx\x07"
                                         "example";
    size_t off = 0;
    unsigned char hdr[12] = {0x12, 0x34, 0x81, flags3, 0, 1, 0, (unsigned char)n, 0, 0, 0, 0};
    memcpy(b, hdr, 12);
    off = 12;
    memcpy(b + off, qname, sizeof qname); /* with the root label's 0 */
    off += sizeof qname;
    b[off++] = 0, b[off++] = 52, b[off++] = 0, b[off++] = 1;
    for (size_t i = 0; i < n; i++) {
        b[off++] = 0xc0, b[off++] = 12; /* the question's name */
        b[off++] = 0, b[off++] = 52, b[off++] = 0, b[off++] = 1;
        b[off++] = 0, b[off++] = 0, b[off++] = 1, b[off++] = 44; /* ttl 300 */
        size_t rdlen = 3 + recs[i].len;
        b[off++] = (unsigned char)(rdlen >> 8), b[off++] = (unsigned char)rdlen;
        b[off++] = recs[i].u, b[off++] = recs[i].s, b[off++] = recs[i].m;
        memset(b + off, (int)(0xa0 + i), recs[i].len);
        off += recs[i].len;
    }
    return off;
}

struct seen {
    struct dns_tlsa t[8];
    size_t n;
};

static void
on_record(uint16_t pref, const char *name, const void *addr, void *arg)
{
    (void)pref;
    (void)name;
    struct seen *s = arg;
    const struct dns_tlsa *t = addr;
    s->t[s->n] = *t;
    s->t[s->n].data = NULL;
    assert_true(t->len == 0 || t->data[0] == 0xa0 + s->n);
    s->n++;
}

static void
test_parse(void **state)
{
    (void)state;
    unsigned char b[1024];
    const struct rec recs[] = {{3, 1, 1, 32}, {2, 0, 2, 64}, {1, 1, 1, 32}, {3, 0, 0, 100}};
    size_t len = reply(b, 0xa0, recs, 4);
    struct seen s = {0};
    size_t n;
    uint32_t ttl;
    char *error;
    assert_int_equal(dns_parse_reply(52, b, (int)len, 1, on_record, &s, &n, &ttl, &error), 0);
    assert_null(error);
    assert_int_equal(n, 4);
    assert_int_equal(ttl, 300);
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(s.t[i].usage, recs[i].u);
        assert_int_equal(s.t[i].selector, recs[i].s);
        assert_int_equal(s.t[i].mtype, recs[i].m);
        assert_int_equal(s.t[i].len, recs[i].len);
    }
    /* a record too short for its three fields is skipped, not an error */
    b[len - 100 - 3 - 1] = 2; /* the last record's rdlength: 2 */
    len = len - 100 - 1;
    s.n = 0;
    assert_int_equal(dns_parse_reply(52, b, (int)len, 1, on_record, &s, &n, &ttl, &error), 0);
    assert_int_equal(n, 3);
    /* SERVFAIL (a validating resolver's bogus answer): temporary */
    len = reply(b, 0x82, NULL, 0);
    assert_int_equal(dns_parse_reply(52, b, (int)len, 1, NULL, NULL, &n, &ttl, &error), 3);
    assert_string_equal(error, "SERVFAIL");
    free(error);
    /* no record: no data */
    len = reply(b, 0xa0, NULL, 0);
    assert_int_equal(dns_parse_reply(52, b, (int)len, 1, NULL, NULL, &n, &ttl, &error), 2);
}

struct usable_case {
    uint8_t u, s, m;
    size_t len;
    bool usable;
};

static const struct usable_case usables[] = {
    {3, 1, 1, 32, true},  {3, 0, 1, 32, true},  {3, 1, 2, 64, true},  {3, 1, 0, 91, true},
    {2, 0, 1, 32, true},  {2, 1, 2, 64, true},  {2, 0, 0, 300, true}, {0, 0, 1, 32, false},
    {1, 1, 1, 32, false}, {4, 1, 1, 32, false}, {3, 2, 1, 32, false}, {3, 1, 3, 32, false},
    {3, 1, 1, 31, false}, {3, 1, 2, 32, false}, {3, 1, 0, 0, false},  {255, 1, 1, 32, false},
};

static void
test_usable(void **state)
{
    (void)state;
    unsigned char data[300] = {0};
    for (size_t i = 0; i < sizeof usables / sizeof usables[0]; i++) {
        const struct usable_case *c = &usables[i];
        struct dns_tlsa t = {c->u, c->s, c->m, data, c->len};
        if (dane_tlsa_usable(&t) != c->usable)
            fail_msg("TLSA %u %u %u (%zu bytes): usable=%d expected %d", c->u, c->s, c->m, c->len,
                     !c->usable, c->usable);
    }
}

static void
test_find(void **state)
{
    (void)state;
    struct dane_host hosts[] = {{"mx1.example", DANE_REQUIRED, NULL, 0},
                                {"mx2.example", DANE_BOGUS, NULL, 0}};
    struct dane_set set = {hosts, 2};
    assert_ptr_equal(dane_find(&set, "mx2.example"), &hosts[1]);
    assert_null(dane_find(&set, "mx3.example"));
    assert_null(dane_find(NULL, "mx1.example"));
    struct dane_set copy;
    dane_set_copy(&copy, &set);
    assert_int_equal(dane_find(&copy, "mx1.example")->state, DANE_REQUIRED);
    dane_set_clear(&copy);
    assert_int_equal(copy.nhosts, 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_usable),
        cmocka_unit_test(test_find),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
