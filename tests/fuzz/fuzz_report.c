/* libFuzzer target for the inbound report parser: any input gives a
 * report whose kind is known, an error exactly when nothing was
 * recognised, at most REPORT_MAX_RCPTS recipients each with a category,
 * and kept values that are short, printable ASCII. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "report.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_report: %s\n", what);
        abort();
    }
}

static void
value(const char *v)
{
    if (!v)
        return;
    size_t n = strlen(v);
    check(n > 0 && n <= REPORT_MAX_VALUE, "value length");
    for (size_t i = 0; i < n; i++)
        check(v[i] >= 0x20 && v[i] < 0x7f, "value octet");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct report r;
    report_parse(&r, (const char *)data, size);
    check(r.kind >= REPORT_UNKNOWN && r.kind <= REPORT_BOUNCE, "kind");
    check((r.kind == REPORT_UNKNOWN) == (r.error != NULL), "error iff unknown");
    check(r.nrcpts <= REPORT_MAX_RCPTS, "recipients");
    for (size_t i = 0; i < r.nrcpts; i++) {
        check(r.rcpts[i].cat != NULL, "category");
        value(r.rcpts[i].rcpt);
        value(r.rcpts[i].action);
        value(r.rcpts[i].status);
        value(r.rcpts[i].diag);
        value(r.rcpts[i].remote_mta);
    }
    const char *v[] = {r.subject,
                       r.reporting_mta,
                       r.envid,
                       r.msgid,
                       r.return_path,
                       r.feedback_type,
                       r.user_agent,
                       r.version,
                       r.original_mail_from,
                       r.original_rcpt_to,
                       r.arrival_date,
                       r.source_ip,
                       r.reported_domain};
    for (size_t i = 0; i < sizeof v / sizeof *v; i++)
        value(v[i]);
    report_free(&r);
    return 0;
}
