/* Unit tests of the TLS-RPT pure functions: the CRC-32 check value, the
 * gzip framing with stored blocks (header, block headers, a second block
 * past 65,535 bytes, CRC and size trailer; Python's gzip reads the real
 * reports in test_tlsrpt.py) and the _smtp._tls record parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "tlsrpt.h"
#include "util.h"

static uint32_t
le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void
crc32_check_value(void **state)
{
    (void)state;
    assert_int_equal(tlsrpt_crc32("123456789", 9), 0xcbf43926u);
    assert_int_equal(tlsrpt_crc32("", 0), 0);
}

static void
gzip_stored_blocks(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    tlsrpt_gzip(&b, "{}", 2, 0);
    const unsigned char *p = (const unsigned char *)b.data;
    assert_int_equal(b.len, 10 + 5 + 2 + 8);
    assert_int_equal(p[0], 0x1f);
    assert_int_equal(p[1], 0x8b);
    assert_int_equal(p[2], 8);
    assert_int_equal(p[10], 1); /* BFINAL, stored */
    assert_int_equal(p[11] | p[12] << 8, 2);
    assert_int_equal(p[13] | p[14] << 8, 0xffff - 2);
    assert_memory_equal(p + 15, "{}", 2);
    assert_int_equal(le32(p + 17), tlsrpt_crc32("{}", 2));
    assert_int_equal(le32(p + 21), 2);
    buf_free(&b);

    size_t n = 70000;
    char *big = xcalloc(1, n);
    memset(big, 'x', n);
    buf_init(&b);
    tlsrpt_gzip(&b, big, n, 0);
    p = (const unsigned char *)b.data;
    assert_int_equal(b.len, 10 + 5 + 65535 + 5 + (n - 65535) + 8);
    assert_int_equal(p[10], 0);
    assert_int_equal(p[11] | p[12] << 8, 65535);
    const unsigned char *second = p + 10 + 5 + 65535;
    assert_int_equal(second[0], 1);
    assert_int_equal(second[1] | second[2] << 8, n - 65535);
    assert_int_equal(le32(p + b.len - 4), n);
    buf_free(&b);
    free(big);
}

static void
record_parser(void **state)
{
    (void)state;
    char *rua[TLSRPT_MAX_RUA];
    assert_int_equal(
        tlsrpt_parse_record("v=TLSRPTv1; rua=mailto:a@b.test,https://r.test/x", rua, 8), 2);
    assert_string_equal(rua[0], "mailto:a@b.test");
    assert_string_equal(rua[1], "https://r.test/x");
    free(rua[0]);
    free(rua[1]);
    assert_int_equal(tlsrpt_parse_record("v=TLSRPTv1;rua=mailto:x@y.test;", rua, 8), 1);
    free(rua[0]);
    assert_int_equal(tlsrpt_parse_record("v=TLSRPTv1", rua, 8), 0);
    assert_int_equal(tlsrpt_parse_record("v=spf1 -all", rua, 8), -1);
    assert_int_equal(tlsrpt_parse_record("v=TLSRPTv10; rua=mailto:a@b", rua, 8), -1);
    /* at most MAX kept */
    assert_int_equal(
        tlsrpt_parse_record("v=TLSRPTv1; rua=mailto:a@b,mailto:c@d,mailto:e@f", rua, 2), 2);
    free(rua[0]);
    free(rua[1]);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(crc32_check_value),
        cmocka_unit_test(gzip_stored_blocks),
        cmocka_unit_test(record_parser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
