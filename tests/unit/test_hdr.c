/* Unit tests of the header-field iterator: names, values with continuation
 * lines, offsets, CRLF and bare LF, the end of the header section, invalid
 * lines, and linear time on a pathological header. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "hdr.h"

static void
test_fields(void **state)
{
    (void)state;
    const char *m = "From: a@example.com\r\n"
                    "Subject: one\r\n two\r\n\tthree\r\n"
                    "X-Empty:\r\n"
                    "Name  : spaced\n"
                    "\r\n"
                    "Body: not a header\r\n";
    struct hdr_iter it;
    struct hdr_field f;
    hdr_iter_init(&it, m, strlen(m));

    assert_true(hdr_next(&it, &f));
    assert_true(f.valid);
    assert_true(hdr_name_is(&f, "from"));
    assert_int_equal(f.off, 0);
    assert_int_equal(f.len, strlen("From: a@example.com"));
    assert_int_equal(f.end, strlen("From: a@example.com\r\n"));
    assert_memory_equal(f.value, " a@example.com", f.value_len);

    assert_true(hdr_next(&it, &f));
    assert_true(hdr_name_is(&f, "Subject"));
    assert_int_equal(f.value_len, strlen(" one\r\n two\r\n\tthree"));
    assert_memory_equal(f.value, " one\r\n two\r\n\tthree", f.value_len);
    assert_memory_equal(m + f.end, "X-Empty", 7);

    assert_true(hdr_next(&it, &f));
    assert_true(hdr_name_is(&f, "x-empty"));
    assert_int_equal(f.value_len, 0);

    assert_true(hdr_next(&it, &f));
    assert_true(f.valid);
    assert_int_equal(f.name_len, 4); /* WSP before the colon is not the name */
    assert_memory_equal(f.value, " spaced", f.value_len);

    assert_false(hdr_next(&it, &f));
    assert_string_equal(m + it.body, "Body: not a header\r\n");
    assert_false(hdr_next(&it, &f)); /* stays at the end */
    assert_int_equal(hdr_body_offset(m, strlen(m)), it.body);
}

static void
test_invalid_and_edges(void **state)
{
    (void)state;
    struct hdr_iter it;
    struct hdr_field f;
    const char *m = " leading continuation\r\nno colon here\r\nBad Name: x\r\n:empty\r\nok:1";
    hdr_iter_init(&it, m, strlen(m));
    for (int i = 0; i < 4; i++) {
        assert_true(hdr_next(&it, &f));
        assert_false(f.valid);
    }
    assert_true(hdr_next(&it, &f));
    assert_true(f.valid);
    assert_true(hdr_name_is(&f, "OK"));
    assert_int_equal(f.end, strlen(m)); /* no final line ending */
    assert_false(hdr_next(&it, &f));
    assert_int_equal(it.body, strlen(m)); /* no body */

    /* empty input; only the empty line */
    hdr_iter_init(&it, "", 0);
    assert_false(hdr_next(&it, &f));
    assert_int_equal(it.body, 0);
    hdr_iter_init(&it, "\nbody", 5);
    assert_false(hdr_next(&it, &f));
    assert_int_equal(it.body, 1);
    /* a bare CR is an octet of the line, not a line ending */
    hdr_iter_init(&it, "A: x\ry\r\n\r\n", 10);
    assert_true(hdr_next(&it, &f));
    assert_int_equal(f.value_len, 4);
    assert_false(hdr_next(&it, &f));
    assert_int_equal(it.body, 10);
    /* ... unless HDR_BARE_CR: then it ends the line, and "\r" alone is the
     * empty line */
    hdr_iter_init_flags(&it, "A: x\ry\r\rbody", 14, HDR_BARE_CR);
    assert_true(hdr_next(&it, &f));
    assert_int_equal(f.value_len, 2);
    assert_true(hdr_next(&it, &f));
    assert_false(f.valid); /* "y" */
    assert_false(hdr_next(&it, &f));
    assert_int_equal(it.body, 8);
    /* NUL octets do not stop the iterator */
    hdr_iter_init(&it, "A: \0x\r\nB: y\r\n", 13);
    assert_true(hdr_next(&it, &f));
    assert_int_equal(f.value_len, 3);
    assert_true(hdr_next(&it, &f));
    assert_true(hdr_name_is(&f, "b"));
}

/* One million continuation lines and a million one-letter fields: done in
 * one pass (a quadratic walk would not finish within the test timeout). */
static void
test_linear(void **state)
{
    (void)state;
    size_t n = 1000000;
    char *m = malloc(n * 3 + 16);
    size_t len = 0;
    memcpy(m, "A:", 2);
    len = 2;
    for (size_t i = 0; i < n; i++) {
        memcpy(m + len, "\n x", 3);
        len += 3;
    }
    struct hdr_iter it;
    struct hdr_field f;
    hdr_iter_init(&it, m, len);
    assert_true(hdr_next(&it, &f));
    assert_int_equal(f.len, len);
    assert_false(hdr_next(&it, &f));
    len = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(m + len, "a:\n", 3);
        len += 3;
    }
    hdr_iter_init(&it, m, len);
    size_t count = 0;
    while (hdr_next(&it, &f))
        count++;
    assert_int_equal(count, n);
    free(m);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_invalid_and_edges),
        cmocka_unit_test(test_linear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
