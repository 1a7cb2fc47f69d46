/* report: reads an inbound report (see README, Inbound bounces and
 * feedback): RFC 3464 delivery status notifications (multipart/report;
 * report-type=delivery-status), RFC 5965 feedback reports (ARF,
 * report-type=feedback-report), Microsoft JMRP complaints (the original
 * message enclosed with X-HmXmrOriginalRecipient) and common non-standard
 * bounces (plain text, recognised by the phrases of a table, like
 * bounce.c's categories).
 *
 * A pure parser: no I/O. It reads the message in place and copies the
 * fields it keeps (unfolded, control characters removed, at most
 * REPORT_MAX_VALUE octets each, at most REPORT_MAX_RCPTS recipients); the
 * report owns the copies. Linear in the input: MIME nesting is followed to
 * REPORT_MAX_DEPTH levels and at most REPORT_MAX_PARTS parts in all. */
#ifndef PGMTA_REPORT_H
#define PGMTA_REPORT_H

#include <stddef.h>

#define REPORT_MAX_RCPTS 32
#define REPORT_MAX_VALUE 998
#define REPORT_MAX_DEPTH 4
#define REPORT_MAX_PARTS 64

enum report_kind {
    REPORT_UNKNOWN = 0,
    REPORT_DSN,    /* RFC 3464 */
    REPORT_ARF,    /* RFC 5965 */
    REPORT_JMRP,   /* Microsoft's Junk Mail Reporting Program */
    REPORT_BOUNCE, /* a non-standard bounce recognised by its text */
};

struct report_rcpt {
    char *rcpt; /* Final-Recipient (else Original-Recipient), address only */
    char *action;
    char *status;
    char *diag;       /* Diagnostic-Code as given: "smtp; 550 5.1.1 ..." */
    char *remote_mta; /* host only */
    const char *cat;  /* bounce_category() of status and diag */
};

struct report {
    enum report_kind kind;
    const char *error; /* NULL, or why nothing could be read (static text) */
    char *subject;
    char *reporting_mta;
    char *envid;       /* Original-Envelope-Id */
    char *msgid;       /* the enclosed original's Message-ID */
    char *return_path; /* the enclosed original's Return-Path (a VERP address?) */
    struct report_rcpt rcpts[REPORT_MAX_RCPTS];
    size_t nrcpts;
    /* ARF and JMRP */
    char *feedback_type;
    char *user_agent;
    char *version;
    char *original_mail_from;
    char *original_rcpt_to;
    char *arrival_date;
    char *source_ip;
    char *reported_domain;
};

/* Reads MSG[0..LEN) into R (zeroed here). Always fills R; R->kind is
 * REPORT_UNKNOWN with R->error set when nothing was recognised. */
void report_parse(struct report *r, const char *msg, size_t len);
void report_free(struct report *r);
const char *report_kind_name(enum report_kind k);

#endif
