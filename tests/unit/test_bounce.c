/* Unit tests of bounce_category: real-world replies from large mailbox
 * providers and common MTAs, and the enhanced status fallback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "bounce.h"

struct bounce_case {
    int code;
    const char *status;
    const char *text;
    const char *category;
};

static const struct bounce_case reply_cases[] = {
    /* Gmail */
    {550, "5.1.1",
     "550-5.1.1 The email account that you tried to reach does not exist. Please try\n"
     "550-5.1.1 double-checking the recipient's email address for typos or\n"
     "550-5.1.1 unnecessary spaces. Learn more at\n"
     "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser x1si123 - gsmtp",
     "bad-mailbox"},
    {550, "5.2.1",
     "550-5.2.1 The email account that you tried to reach is disabled. Learn more at\n"
     "550 5.2.1  https://support.google.com/mail/?p=DisabledUser - gsmtp",
     "inactive-mailbox"},
    {452, "4.2.2",
     "452-4.2.2 The email account that you tried to reach is over quota. Please direct\n"
     "452-4.2.2 the recipient to\n"
     "452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
     "quota-issues"},
    {552, "5.2.2",
     "552-5.2.2 The email account that you tried to reach is over quota and inactive.",
     "quota-issues"},
    {553, "5.1.2",
     "553-5.1.2 We weren't able to find the recipient domain. Please check for any\n"
     "553-5.1.2 spelling errors, and make sure you didn't enter any spaces, periods,\n"
     "553 5.1.2 or other punctuation after the recipient's email address. - gsmtp",
     "bad-domain"},
    {550, "5.7.1",
     "550-5.7.1 [192.0.2.1] Our system has detected that this message is\n"
     "550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail,\n"
     "550-5.7.1 this message has been blocked. - gsmtp",
     "spam-related"},
    {421, "4.7.0",
     "421-4.7.0 [192.0.2.1] Our system has detected an unusual rate of\n"
     "421-4.7.0 unsolicited mail originating from your IP address. To protect our\n"
     "421 4.7.0 users from spam, mail sent from your IP address has been temporarily rate limited.",
     "spam-related"},
    {550, "5.7.26",
     "550-5.7.26 This mail is unauthenticated, which poses a security risk to the\n"
     "550-5.7.26 sender and Gmail users, and has been blocked. The sender must\n"
     "550-5.7.26 authenticate with at least one of SPF or DKIM. - gsmtp",
     "policy-related"},
    {550, "5.7.26",
     "550-5.7.26 Unauthenticated email from example.com is not accepted due to domain's\n"
     "550-5.7.26 DMARC policy. Please contact the administrator of example.com domain",
     "policy-related"},
    {552, "5.2.3",
     "552-5.2.3 Your message exceeded Google's message size limits. Please visit\n"
     "552 5.2.3  https://support.google.com/mail/?p=MaxSizeError - gsmtp",
     "content-related"},
    {552, "5.7.0",
     "552-5.7.0 This message was blocked because its content presents a potential\n"
     "552-5.7.0 security issue. Please visit https://support.google.com/mail/?p=BlockedMessage",
     "content-related"},
    {550, "5.7.1",
     "550-5.7.1 [2001:db8::1] Our system has detected that this message does not meet\n"
     "550-5.7.1 IPv6 sending guidelines regarding PTR records and authentication.",
     "policy-related"},
    /* Outlook / Microsoft 365 */
    {550, "5.5.0", "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302).",
     "bad-mailbox"},
    {550, "5.1.10",
     "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "bad-mailbox"},
    {550, "5.7.1",
     "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
     "Internet service provider since part of their network is on our block list (S3150).",
     "spam-related"},
    {550, "5.7.606",
     "550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this "
     "list please visit https://sender.office.com/",
     "spam-related"},
    {550, "5.7.708",
     "550 5.7.708 Service unavailable. Access denied, traffic not accepted from "
     "this IP.",
     "policy-related"},
    {554, "5.2.2", "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException",
     "quota-issues"},
    {550, "5.4.1",
     "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [host.outlook.com]",
     "policy-related"},
    {550, "5.7.1",
     "550 5.7.1 Service unavailable, Client host [192.0.2.1] blocked using Spamhaus. To "
     "request removal from this list see https://www.spamhaus.org/query/ip/192.0.2.1",
     "spam-related"},
    /* Yahoo / AOL */
    {554, NULL,
     "554 delivery error: dd This user doesn't have a yahoo.com account "
     "(someone@yahoo.com) [0] - mta1.mail.yahoo.com",
     "bad-mailbox"},
    {554, NULL,
     "554 delivery error: dd Sorry your message to someone@yahoo.com cannot be "
     "delivered. This mailbox is disabled (554.30).",
     "inactive-mailbox"},
    {553, "5.7.1",
     "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.1, because "
     "the ip is in Spamhaus's list; see http://postmaster.yahoo.com/550-bl23.html",
     "spam-related"},
    {554, "5.7.9",
     "554 5.7.9 Message not accepted for policy reasons.  See "
     "https://help.yahoo.com/kb/postmaster/SLN7253.html",
     "policy-related"},
    {421, "4.7.0",
     "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or "
     "user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
     "spam-related"},
    {452, NULL, "452 Mailbox size limit exceeded", "quota-issues"},
    /* Postfix, Exim, Sendmail and others */
    {550, "5.1.1",
     "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual "
     "mailbox table",
     "bad-mailbox"},
    {554, "5.7.1", "554 5.7.1 <someone@example.net>: Relay access denied", "routing-errors"},
    {550, NULL, "550 Unrouteable address", "bad-mailbox"},
    {550, NULL, "550 5.7.1 Relaying denied. Proper authentication required.", "routing-errors"},
    {550, "5.1.1", "550 5.1.1 <x@example.org>... User unknown", "bad-mailbox"},
    {550, NULL, "550 No such user - psmtp", "bad-mailbox"},
    {552, "5.3.4", "552 5.3.4 Message size exceeds fixed maximum message size", "content-related"},
    {554, "5.7.1", "554 5.7.1 This message has been blocked because it contains a virus",
     "content-related"},
    {550, NULL, "550 Message content rejected, UBE id=abc", "content-related"},
    {450, "4.1.8", "450 4.1.8 <bounce@nowhere.invalid>: Sender address rejected: Domain not found",
     "bad-domain"},
    {556, "5.1.10", "556 5.1.10 Recipient address has null MX", "bad-domain"},
    {500, "5.5.2", "500 5.5.2 Error: bad syntax", "protocol-errors"},
    {503, "5.5.1", "503 5.5.1 Error: need MAIL command", "protocol-errors"},
    {554, "5.7.1",
     "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
     "zen.spamhaus.org",
     "spam-related"},
    {550, NULL, "550 Your IP 192.0.2.1 is listed at bl.spamcop.net", "spam-related"},
    {550, "5.2.1", "550 5.2.1 Mailbox inactive", "inactive-mailbox"},
    {550, NULL, "550 Account suspended", "inactive-mailbox"},
    {554, NULL, "554 Insufficient system storage", "quota-issues"},
    /* Generated by pgmtad itself */
    {0, "4.4.7", "Message expired: bounce-after 4d12h reached, last error: timeout",
     "message-expired"},
    {0, "4.4.1", "connect to 192.0.2.1:25: Connection timed out", "no-answer-from-host"},
    {0, "4.4.2", "connect to 192.0.2.1:25: Connection refused", "bad-connection"},
    {0, "5.1.10", "example.com: null MX (RFC 7505): domain does not accept mail", "bad-domain"},
};

/* Text that matches no rule: the enhanced status decides. */
static const struct bounce_case status_cases[] = {
    {550, "5.1.1", "Go away", "bad-mailbox"},
    {550, "5.1.0", "nope", "bad-mailbox"},
    {550, "5.1.2", "nope", "bad-domain"},
    {556, "5.1.10", "nope", "bad-domain"},
    {550, "5.2.1", "nope", "inactive-mailbox"},
    {552, "5.2.2", "nope", "quota-issues"},
    {452, "4.2.2", "nope", "quota-issues"},
    {550, "5.7.1", "nope", "policy-related"},
    {550, "5.7.23", "nope", "policy-related"},
    {550, "5.4.4", "nope", "routing-errors"},
    {550, "5.5.4", "nope", "protocol-errors"},
    {554, "5.6.0", "nope", "content-related"},
    {552, "5.3.4", "nope", "content-related"},
    {451, "4.4.7", "nope", "message-expired"},
    {451, "4.4.1", "nope", "no-answer-from-host"},
    {451, "4.4.2", "nope", "bad-connection"},
    {451, "4.3.0", "nope", "other"},
    {550, NULL, "nope", "other"},
    {0, NULL, NULL, "other"},
    {550, "", "", "other"},
    /* Malformed status strings are ignored. */
    {550, "5.1", "nope", "other"},
    {550, "5.1.1.1", "nope", "other"},
    {550, "7.1.1", "nope", "other"},
    {550, "5.1000.1", "nope", "other"},
    {550, "x5.1.1", "nope", "other"},
    /* The status at the start of the text is used when none is given. */
    {550, NULL, "550-5.1.1 go away\n550 5.1.1 really", "bad-mailbox"},
    {550, NULL, "5.2.2 nope", "quota-issues"},
    /* An explicit status wins over one in the text. */
    {550, "5.2.1", "550 5.1.1 nope", "inactive-mailbox"},
};

static void
run_cases(const struct bounce_case *cases, size_t n)
{
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        const char *got = bounce_category(cases[i].code, cases[i].status, cases[i].text);
        if (strcmp(got, cases[i].category) != 0) {
            print_error("case %zu (%d %s \"%.60s\"): got %s, want %s\n", i, cases[i].code,
                        cases[i].status ? cases[i].status : "-",
                        cases[i].text ? cases[i].text : "(null)", got, cases[i].category);
            failures++;
        }
    }
    assert_int_equal(failures, 0);
}

static void
test_real_world_replies(void **state)
{
    (void)state;
    run_cases(reply_cases, sizeof reply_cases / sizeof reply_cases[0]);
}

static void
test_status_fallback(void **state)
{
    (void)state;
    run_cases(status_cases, sizeof status_cases / sizeof status_cases[0]);
}

/* A phrase broken across continuation lines still matches. */
static void
test_phrase_across_lines(void **state)
{
    (void)state;
    assert_string_equal(bounce_category(550, "5.0.0", "550-5.0.0 the user\r\n550 5.0.0 unknown"),
                        "bad-mailbox");
    assert_string_equal(bounce_category(550, "5.0.0", "550-5.0.0 no such\r\n550 5.0.0 user here"),
                        "bad-mailbox");
    assert_string_equal(bounce_category(452, "4.0.0", "452-4.0.0 mailbox\n452 4.0.0 full"),
                        "quota-issues");
}

/* Matching is case-insensitive and long replies are handled. */
static void
test_case_and_length(void **state)
{
    (void)state;
    assert_string_equal(bounce_category(550, NULL, "550 USER UNKNOWN"), "bad-mailbox");
    char big[20000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_string_equal(bounce_category(550, "5.2.2", big), "quota-issues");
    memcpy(big + 100, " over quota ", 12);
    assert_string_equal(bounce_category(550, NULL, big), "quota-issues");
}

/* Every category the function returns is one of PowerMTA's names. */
static void
test_known_names(void **state)
{
    (void)state;
    static const char *const names[] = {"bad-mailbox",
                                        "bad-domain",
                                        "inactive-mailbox",
                                        "quota-issues",
                                        "spam-related",
                                        "policy-related",
                                        "routing-errors",
                                        "protocol-errors",
                                        "content-related",
                                        "message-expired",
                                        "no-answer-from-host",
                                        "bad-connection",
                                        "other"};
    const struct bounce_case *all[] = {reply_cases, status_cases};
    size_t counts[] = {sizeof reply_cases / sizeof reply_cases[0],
                       sizeof status_cases / sizeof status_cases[0]};
    for (size_t t = 0; t < 2; t++) {
        for (size_t i = 0; i < counts[t]; i++) {
            const char *got = bounce_category(all[t][i].code, all[t][i].status, all[t][i].text);
            int found = 0;
            for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
                found |= strcmp(got, names[k]) == 0;
            assert_true(found);
        }
    }
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_world_replies),  cmocka_unit_test(test_status_fallback),
        cmocka_unit_test(test_phrase_across_lines), cmocka_unit_test(test_case_and_length),
        cmocka_unit_test(test_known_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
