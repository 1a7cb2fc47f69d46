/* Unit tests of mime: encoders (base64 both ways, quoted-printable line
 * lengths and soft breaks), header folding and encoded-words, and the
 * structure mime_build gives each combination of parts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "mime.h"
#include "util.h"

static void
assert_lines(const struct buf *b, size_t max)
{
    size_t col = 0;
    for (size_t i = 0; i < b->len; i++) {
        if (b->data[i] == '\r') {
            assert_true(i + 1 < b->len && b->data[i + 1] == '\n');
            i++;
            col = 0;
            continue;
        }
        assert_true(b->data[i] != '\n');
        col++;
        if (col > max)
            fail_msg("line longer than %zu in:\n%s", max, b->data);
    }
}

static void
test_base64(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct buf e, d;
        buf_init(&e);
        buf_init(&d);
        mime_base64_encode(&e, cases[i][0], strlen(cases[i][0]));
        if (*cases[i][0]) {
            assert_int_equal(e.len, strlen(cases[i][1]) + 2);
            assert_memory_equal(e.data, cases[i][1], strlen(cases[i][1]));
        }
        assert_int_equal(mime_base64_decode(&d, cases[i][1], strlen(cases[i][1])), 0);
        assert_int_equal(d.len, strlen(cases[i][0]));
        assert_memory_equal(d.data, cases[i][0], d.len);
        buf_free(&e);
        buf_free(&d);
    }
    struct buf d;
    buf_init(&d);
    assert_int_equal(mime_base64_decode(&d, "Zm9v\r\nYg==", 10), 0);
    assert_string_equal(d.data, "foob");
    buf_reset(&d);
    assert_int_equal(mime_base64_decode(&d, "Zm!v", 4), -1);
    assert_int_equal(mime_base64_decode(&d, "Z", 1), -1);
    assert_int_equal(mime_base64_decode(&d, "Zg=a", 4), -1);
    assert_int_equal(mime_base64_decode(&d, "Zm9v=", 5), -1);
    buf_free(&d);
    /* long input: 76 characters a line */
    char big[1000];
    memset(big, 0xa5, sizeof big);
    struct buf e;
    buf_init(&e);
    mime_base64_encode(&e, big, sizeof big);
    assert_lines(&e, 76);
    buf_free(&e);
}

static void
test_qp(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    const char *text = "a=b \xc3\xa9 end \nnext\r\nlast";
    mime_qp_encode(&b, text, strlen(text));
    assert_string_equal(b.data, "a=3Db =C3=A9 end=20\r\nnext\r\nlast\r\n");
    buf_reset(&b);
    char line[500];
    memset(line, 'x', sizeof line);
    line[100] = '=';
    mime_qp_encode(&b, line, sizeof line);
    assert_lines(&b, 76);
    /* soft breaks only: removing "=\r\n" gives the line back */
    struct buf u;
    buf_init(&u);
    for (size_t i = 0; i < b.len; i++) {
        if (b.data[i] == '=' && i + 2 < b.len && b.data[i + 1] == '\r') {
            i += 2;
            continue;
        }
        buf_append(&u, b.data + i, 1);
    }
    assert_int_equal(u.len, 500 + 2 + 2); /* "=3D" for '=', final CRLF */
    buf_free(&u);
    buf_free(&b);
}

static void
test_headers(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    mime_put_header(&b, "Subject", "plain ascii");
    assert_string_equal(b.data, "Subject: plain ascii\r\n");
    buf_reset(&b);
    mime_put_header(&b, "To", "Ann \xc3\x84pfel <ann@x.test>");
    assert_string_equal(b.data, "To: Ann =?UTF-8?B?w4RwZmVs?= <ann@x.test>\r\n");
    buf_reset(&b);
    /* adjacent non-ASCII words: one run, the space encoded with it */
    mime_put_header(&b, "Subject",
                    "Gr\xc3\xbc\xc3\x9f"
                    "e \xc3\x84pfel");
    assert_string_equal(b.data, "Subject: =?UTF-8?B?R3LDvMOfZSDDhHBmZWw=?=\r\n");
    buf_reset(&b);
    char long_value[2000] = "";
    for (int i = 0; i < 100; i++)
        strcat(long_value, "w\xc3\xb6rd ascii ");
    mime_put_header(&b, "Subject", long_value);
    assert_lines(&b, 78);
    buf_reset(&b);
    char one_word[1200];
    memset(one_word, 'z', sizeof one_word - 1);
    one_word[sizeof one_word - 1] = '\0';
    mime_put_header(&b, "X-Long", one_word);
    assert_lines(&b, 998);
    buf_free(&b);
    assert_true(mime_field_name_ok("X-Job"));
    assert_false(mime_field_name_ok("Bad Name"));
    assert_false(mime_field_name_ok("Bad:Name"));
    assert_false(mime_field_name_ok(""));
}

static const char *
find(const struct buf *b, const char *s)
{
    const char *p = strstr(b->data, s);
    if (!p)
        fail_msg("\"%s\" not in:\n%s", s, b->data);
    return p;
}

static void
test_build(void **state)
{
    (void)state;
    struct mime_attachment atts[2] = {
        {.data = "GIF89a", .len = 6, .content_type = "image/gif", .content_id = "logo"},
        {.data = "%PDF",
         .len = 4,
         .content_type = "application/pdf",
         .file_name = "R\xc3\xa4"
                      "chnung.pdf"},
    };
    struct mime_header hdrs[1] = {{"X-Campaign", "winter"}};
    struct mime_message m = {.from = {"news@brand.test", "Brand"},
                             .subject = "Hello",
                             .headers = hdrs,
                             .nheaders = 1,
                             .text_body = "text\n",
                             .html_body = "<p>html</p>",
                             .attachments = atts,
                             .nattachments = 2,
                             .msgid_domain = "brand.test",
                             .date = 1764633600};
    struct buf b;
    char err[256];
    buf_init(&b);
    assert_int_equal(mime_build(&b, &m, err, sizeof err), 0);
    assert_lines(&b, 78);
    assert_true(
        !strncmp(b.data, "From: \"Brand\"\r\n <news@brand.test>\r\nSubject: Hello\r\n", 49));
    find(&b, "Date: Tue, 02 Dec 2025 00:00:00 +0000\r\n");
    find(&b, "@brand.test>\r\nX-Campaign: winter\r\nMIME-Version: 1.0\r\n");
    const char *mixed = find(&b, "Content-Type: multipart/mixed;");
    const char *related = find(&b, "Content-Type: multipart/related;");
    const char *alt = find(&b, "Content-Type: multipart/alternative;");
    assert_true(mixed < related && related < alt);
    find(&b, "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit");
    find(&b, "Content-ID: <logo>");
    find(&b, "filename*=utf-8''R%C3%A4chnung.pdf");
    buf_reset(&b);

    /* text only: a single part, no multipart */
    struct mime_message t = {.text_body = "caf\xc3\xa9", .date = 0};
    assert_int_equal(mime_build(&b, &t, err, sizeof err), 0);
    assert_null(strstr(b.data, "multipart"));
    find(&b, "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n");
    buf_reset(&b);

    /* refusals name the field */
    struct mime_message e = {.text_body = "x", .subject = "a\r\nBcc: x"};
    assert_int_equal(mime_build(&b, &e, err, sizeof err), -1);
    assert_non_null(strstr(err, "content.subject"));
    buf_reset(&b);
    struct mime_header ct[1] = {{"Content-Type", "text/plain"}};
    struct mime_message e2 = {.text_body = "x", .headers = ct, .nheaders = 1};
    assert_int_equal(mime_build(&b, &e2, err, sizeof err), -1);
    assert_non_null(strstr(err, "content.headers.Content-Type"));
    buf_reset(&b);
    struct mime_message e3 = {.subject = "x"};
    assert_int_equal(mime_build(&b, &e3, err, sizeof err), -1);
    buf_free(&b);
}

static void
test_raw(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    const char *raw = "Subject: x\nDate: Mon, 1 Dec 2025 00:00:00 +0000\n\nbody\rline\n";
    mime_raw(&b, raw, strlen(raw), "n.test", 0);
    assert_true(!strncmp(b.data, "Message-ID: <", 13));
    find(&b, "@n.test>\r\nSubject: x\r\nDate: Mon, 1 Dec 2025 00:00:00 +0000\r\n\r\nbody\r\n"
             "line\r\n");
    assert_null(strstr(b.data + 13, "Date: Thu"));
    buf_reset(&b);
    /* a Message-ID in the body does not count */
    raw = "Subject: y\r\n\r\nMessage-ID: <no@x>";
    mime_raw(&b, raw, strlen(raw), "n.test", 0);
    assert_true(!strncmp(b.data, "Date: Thu, 01 Jan 1970 00:00:00 +0000\r\nMessage-ID: <", 52));
    buf_free(&b);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64), cmocka_unit_test(test_qp),  cmocka_unit_test(test_headers),
        cmocka_unit_test(test_build),  cmocka_unit_test(test_raw),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
