/* Unit tests of the TLS-RPT pure functions: the gzip stream (header with
 * its mtime, CRC and size trailer, read back by the HTTP door's gunzip,
 * compressed; Python's gzip reads the real reports in test_tlsrpt.py) and
 * the _smtp._tls record parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "http_inject.h"
#include "tlsrpt.h"
#include "util.h"

static uint32_t
le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The stream read back by the HTTP door's gunzip: DATA exactly. */
static void
assert_gunzips_to(const struct buf *gz, const char *data, size_t n)
{
    struct buf back;
    buf_init(&back);
    assert_int_equal(http_inject_gunzip(gz->data, gz->len, n + 1, &back), 0);
    assert_int_equal(back.len, n);
    assert_memory_equal(back.data, data, n);
    buf_free(&back);
}

static void
gzip_stream(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    assert_int_equal(tlsrpt_gzip(&b, "{}", 2, 1700000000), 0);
    const unsigned char *p = (const unsigned char *)b.data;
    assert_true(b.len >= 18);
    assert_int_equal(p[0], 0x1f);
    assert_int_equal(p[1], 0x8b);
    assert_int_equal(p[2], 8); /* deflate */
    assert_int_equal(le32(p + 4), 1700000000u);
    assert_int_equal(p[9], 255);
    assert_int_equal(le32(p + b.len - 8), (uint32_t)crc32(0, (const Bytef *)"{}", 2));
    assert_int_equal(le32(p + b.len - 4), 2);
    assert_gunzips_to(&b, "{}", 2);
    buf_free(&b);

    /* a report of 70,000 bytes of repeated policy entries is compressed */
    size_t n = 70000;
    char *big = xcalloc(1, n + 1);
    for (size_t i = 0; i < n; i++)
        big[i] = "{\"policy-type\":\"sts\"},"[i % 23];
    buf_init(&b);
    assert_int_equal(tlsrpt_gzip(&b, big, n, 0), 0);
    assert_true(b.len < n / 20);
    assert_int_equal(le32((const unsigned char *)b.data + b.len - 4), n);
    assert_gunzips_to(&b, big, n);
    buf_free(&b);

    /* empty */
    buf_init(&b);
    assert_int_equal(tlsrpt_gzip(&b, "", 0, 0), 0);
    assert_gunzips_to(&b, "", 0);
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
        cmocka_unit_test(gzip_stream),
        cmocka_unit_test(record_parser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
