/* Unit tests of the inbound report parser (report.c) and of VERP
 * addresses (verp.c): a Postfix DSN, the RFC 5965 Appendix B example, a
 * JMRP complaint, a qmail bounce, base64 parts, limits and nonsense. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "report.h"
#include "util.h"
#include "verp.h"

static char *
slurp(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s/reports/%s", PGMTA_TEST_DATA, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    struct buf b;
    buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    *len = b.len;
    return b.data;
}

static void
parse_str(struct report *r, const char *s)
{
    report_parse(r, s, strlen(s));
}

static const char postfix_dsn[] =
    "Received: from x by y\r\n"
    "From: MAILER-DAEMON@postfix.bench.example (Mail Delivery System)\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\n"
    "To: bounces+17-0123456789@bounce.example\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/report; report-type=delivery-status;\r\n"
    "\tboundary=\"ABC.123/postfix.bench.example\"\r\n"
    "\r\n"
    "This is a MIME-encapsulated message.\r\n"
    "\r\n"
    "--ABC.123/postfix.bench.example\r\n"
    "Content-Description: Notification\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    "I'm sorry to have to inform you that your message could not be delivered.\r\n"
    "\r\n"
    "--ABC.123/postfix.bench.example\r\n"
    "Content-Description: Delivery report\r\n"
    "Content-Type: message/delivery-status\r\n"
    "\r\n"
    "Reporting-MTA: dns; postfix.bench.example\r\n"
    "X-Postfix-Queue-ID: ABC\r\n"
    "Original-Envelope-Id: env-42\r\n"
    "Arrival-Date: Thu,  3 Dec 2026 12:28:49 +0000 (UTC)\r\n"
    "\r\n"
    "Final-Recipient: rfc822; gone@rcpt.example\r\n"
    "Original-Recipient: rfc822;gone@rcpt.example\r\n"
    "Action: failed\r\n"
    "Status: 5.1.1\r\n"
    "Remote-MTA: dns; mx.rcpt.example\r\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <gone@rcpt.example>: Recipient address\r\n"
    "    rejected: User unknown\r\n"
    "\r\n"
    "Final-Recipient: rfc822; full@rcpt.example\r\n"
    "Action: failed\r\n"
    "Status: 5.2.2\r\n"
    "Diagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n"
    "\r\n"
    "--ABC.123/postfix.bench.example\r\n"
    "Content-Description: Undelivered Message Headers\r\n"
    "Content-Type: text/rfc822-headers\r\n"
    "\r\n"
    "From: news@sender.example\r\n"
    "Message-ID: <n1@sender.example>\r\n"
    "\r\n"
    "--ABC.123/postfix.bench.example--\r\n";

static void
test_postfix_dsn(void **state)
{
    (void)state;
    struct report r;
    parse_str(&r, postfix_dsn);
    assert_int_equal(r.kind, REPORT_DSN);
    assert_null(r.error);
    assert_string_equal(r.reporting_mta, "postfix.bench.example");
    assert_string_equal(r.envid, "env-42");
    assert_string_equal(r.msgid, "n1@sender.example");
    assert_int_equal(r.nrcpts, 2);
    assert_string_equal(r.rcpts[0].rcpt, "gone@rcpt.example");
    assert_string_equal(r.rcpts[0].action, "failed");
    assert_string_equal(r.rcpts[0].status, "5.1.1");
    assert_string_equal(r.rcpts[0].remote_mta, "mx.rcpt.example");
    assert_string_equal(r.rcpts[0].diag,
                        "smtp; 550 5.1.1 <gone@rcpt.example>: Recipient address rejected: User "
                        "unknown");
    assert_string_equal(r.rcpts[0].cat, "bad-mailbox");
    assert_string_equal(r.rcpts[1].rcpt, "full@rcpt.example");
    assert_string_equal(r.rcpts[1].cat, "quota-issues");
    report_free(&r);
}

static void
test_arf_appendix_b(void **state)
{
    (void)state;
    size_t len;
    char *m = slurp("arf_rfc5965_b1.eml", &len);
    struct report r;
    report_parse(&r, m, len);
    assert_int_equal(r.kind, REPORT_ARF);
    assert_string_equal(r.feedback_type, "abuse");
    assert_string_equal(r.user_agent, "SomeGenerator/1.0");
    assert_string_equal(r.version, "1");
    assert_string_equal(r.original_mail_from, "somespammer@example.net");
    assert_string_equal(r.original_rcpt_to, "user@example.com");
    assert_string_equal(r.arrival_date, "Thu, 8 Mar 2005 14:00:00 EDT");
    assert_string_equal(r.reporting_mta, "mail.example.com");
    assert_string_equal(r.source_ip, "192.0.2.1");
    assert_string_equal(r.reported_domain, "example.net");
    assert_string_equal(r.msgid, "8787KJKJ3K4J3K4J3K4J3.mail@example.net");
    assert_string_equal(r.subject, "FW: Earn money");
    report_free(&r);
    free(m);
}

static void
test_jmrp(void **state)
{
    (void)state;
    size_t len;
    char *m = slurp("jmrp.eml", &len);
    struct report r;
    report_parse(&r, m, len);
    assert_int_equal(r.kind, REPORT_JMRP);
    assert_string_equal(r.feedback_type, "abuse");
    assert_string_equal(r.user_agent, "JMRP");
    assert_string_equal(r.original_rcpt_to, "RCPT");
    assert_string_equal(r.return_path, "RETURN_PATH");
    assert_string_equal(r.msgid, "jmrp-original-1@sender.example");
    report_free(&r);
    free(m);
}

static void
test_qmail_bounce(void **state)
{
    (void)state;
    struct report r;
    parse_str(&r, "From: MAILER-DAEMON@mx.example\n"
                  "Subject: failure notice\n"
                  "\n"
                  "Hi. This is the qmail-send program at mx.example.\n"
                  "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
                  "This is a permanent error; I've given up. Sorry it didn't work out.\n"
                  "\n"
                  "<nobody@mx.example>:\n"
                  "Sorry, no mailbox here by that name. (#5.1.1)\n");
    assert_int_equal(r.kind, REPORT_BOUNCE);
    assert_int_equal(r.nrcpts, 1);
    assert_string_equal(r.rcpts[0].rcpt, "nobody@mx.example");
    assert_string_equal(r.rcpts[0].status, "5.1.1");
    assert_string_equal(r.rcpts[0].diag, "Sorry, no mailbox here by that name. (#5.1.1)");
    assert_string_equal(r.rcpts[0].cat, "bad-mailbox");
    report_free(&r);
    /* the same text from a person is not a bounce */
    parse_str(&r, "From: ann@example.net\nSubject: hi\n\nno such user here, just me\n");
    assert_int_equal(r.kind, REPORT_UNKNOWN);
    assert_non_null(r.error);
    report_free(&r);
}

static void
test_base64_part(void **state)
{
    (void)state;
    struct report r;
    /* "Feedback-Type: fraud\r\nUser-Agent: X/2\r\n" */
    parse_str(&r, "Content-Type: multipart/report; report-type=feedback-report; boundary=b\n\n"
                  "--b\nContent-Type: message/feedback-report\nContent-Transfer-Encoding: base64\n"
                  "\nRmVlZGJhY2stVHlwZTogZnJhdWQNClVzZXItQWdlbnQ6IFgvMg0K\n--b--\n");
    assert_int_equal(r.kind, REPORT_ARF);
    assert_string_equal(r.feedback_type, "fraud");
    assert_string_equal(r.user_agent, "X/2");
    report_free(&r);
}

static void
test_limits_and_nonsense(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "Content-Type: multipart/report; boundary=\"q\"\r\n\r\n--q\r\n"
                 "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; m\r\n\r\n");
    for (int i = 0; i < 100; i++)
        buf_printf(&b,
                   "Final-Recipient: rfc822; u%d@x.example\r\nAction: failed\r\n"
                   "Status: 5.0.0\r\n\r\n",
                   i);
    buf_puts(&b, "Final-Recipient: rfc822; long@x\r\nDiagnostic-Code: smtp; ");
    for (int i = 0; i < 5000; i++)
        buf_puts(&b, "x\x01\xff");
    /* no closing delimiter: the part runs to the end */
    struct report r;
    report_parse(&r, b.data, b.len);
    assert_int_equal(r.kind, REPORT_DSN);
    assert_int_equal(r.nrcpts, REPORT_MAX_RCPTS);
    report_free(&r);
    /* empty, binary, and a boundary that never appears */
    report_parse(&r, "", 0);
    assert_int_equal(r.kind, REPORT_UNKNOWN);
    report_free(&r);
    report_parse(&r, "\0\0\0\n\n\0", 6);
    assert_int_equal(r.kind, REPORT_UNKNOWN);
    report_free(&r);
    parse_str(&r, "Content-Type: multipart/report; boundary=zz\n\nno parts at all\n");
    assert_int_equal(r.kind, REPORT_UNKNOWN);
    report_free(&r);
    buf_free(&b);
    /* a value is capped and holds no control character or 8-bit octet */
    buf_init(&b);
    buf_puts(&b, "Content-Type: message/feedback-report\n\nUser-Agent: ");
    for (int i = 0; i < 3000; i++)
        buf_puts(&b, "a\x02\xe9");
    buf_puts(&b, "\n");
    report_parse(&r, b.data, b.len);
    assert_int_equal(r.kind, REPORT_ARF);
    assert_true(strlen(r.user_agent) <= REPORT_MAX_VALUE);
    for (const char *p = r.user_agent; *p; p++)
        assert_true(*p >= 0x20 && *p < 0x7f);
    report_free(&r);
    buf_free(&b);
}

static void
test_verp(void **state)
{
    (void)state;
    const char *key = "verp-secret-for-tests-0123456789";
    char tag[VERP_TAG_LEN + 1];
    verp_tag(key, strlen(key), 1234, tag);
    assert_int_equal(strlen(tag), VERP_TAG_LEN);
    char addr[128], upper[128];
    snprintf(addr, sizeof addr, "bounces+1234-%s@bounce.example", tag);
    long long id = 0;
    assert_int_equal(verp_check(addr, key, strlen(key), &id), VERP_OK);
    assert_int_equal(id, 1234);
    /* relays may change the case of the local part */
    snprintf(upper, sizeof upper, "BOUNCES+1234-%s@bounce.example", tag);
    for (char *p = upper; *p != '@'; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    assert_int_equal(verp_check(upper, key, strlen(key), &id), VERP_OK);
    /* another id with this tag, another key, another tag */
    snprintf(addr, sizeof addr, "bounces+1235-%s@bounce.example", tag);
    assert_int_equal(verp_check(addr, key, strlen(key), &id), VERP_FORGED);
    snprintf(addr, sizeof addr, "bounces+1234-%s@bounce.example", tag);
    assert_int_equal(verp_check(addr, "other-key-0123456789", 20, &id), VERP_FORGED);
    assert_int_equal(verp_check("bounces+1234-zzzzzzzzzz@b", key, strlen(key), &id), VERP_NONE);
    assert_int_equal(verp_check("bounces@b", key, strlen(key), &id), VERP_NONE);
    assert_int_equal(verp_check("bounces+1234-abc@b", key, strlen(key), &id), VERP_NONE);
    assert_int_equal(verp_check("+1-0123456789@b", key, strlen(key), &id), VERP_NONE);
    assert_int_equal(verp_check("no-at-sign", key, strlen(key), &id), VERP_NONE);
    assert_int_equal(verp_check(NULL, key, strlen(key), &id), VERP_NONE);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_postfix_dsn), cmocka_unit_test(test_arf_appendix_b),
        cmocka_unit_test(test_jmrp),        cmocka_unit_test(test_qmail_bounce),
        cmocka_unit_test(test_base64_part), cmocka_unit_test(test_limits_and_nonsense),
        cmocka_unit_test(test_verp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
