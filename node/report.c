/* report: the inbound report parser (see report.h). It walks the MIME
 * tree once, keeping the fields of the parts it knows; everything it keeps
 * is copied into the report, which the caller frees with report_free. */
#include "report.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bounce.h"
#include "hdr.h"
#include "mime.h"
#include "util.h"

/* Longest MIME boundary (RFC 2046 §5.1.1). */
#define BOUNDARY_MAX 70
/* Text scanned for the phrases of a non-standard bounce. */
#define TEXT_SCAN_MAX (64 * 1024)

struct walk {
    unsigned parts;
    bool dsn, arf;
    char *jmrp_rcpt;
    const char *text; /* the first text part, for non-standard bounces */
    size_t text_len;
    struct buf decoded_text; /* owns text when it was base64 */
    char *from;
};

/* A field value on one line: folding and control characters removed,
 * white space runs made one space, trimmed, at most REPORT_MAX_VALUE
 * octets; octets above 0x7f become '?' (reports are ASCII; what is kept
 * must be valid text for the database whatever arrives). NULL when
 * nothing is left. */
static char *
clean(const char *v, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t k = 0;
    bool space = false;
    for (size_t i = 0; i < n && k < REPORT_MAX_VALUE; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
            space = k > 0;
            continue;
        }
        if (c < 0x20 || c == 0x7f)
            continue;
        if (c > 0x7f)
            c = '?';
        if (space && k + 1 < REPORT_MAX_VALUE)
            out[k++] = ' ';
        space = false;
        out[k++] = (char)c;
    }
    out[k] = '\0';
    if (k == 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* "rfc822; <a@b>" -> "a@b"; "dns; host" -> "host": the part after the
 * type, angle brackets removed. Changes V in place. */
static char *
strip_type(char *v, bool address)
{
    if (!v)
        return NULL;
    char *semi = strchr(v, ';');
    char *p = semi ? semi + 1 : v;
    while (*p == ' ')
        p++;
    if (address) {
        char *lt = strchr(p, '<');
        if (lt) {
            char *gt = strchr(lt, '>');
            if (gt) {
                *gt = '\0';
                p = lt + 1;
            }
        }
    }
    memmove(v, p, strlen(p) + 1);
    if (!*v) {
        free(v);
        return NULL;
    }
    return v;
}

static void
keep(char **dst, const struct hdr_field *f)
{
    if (*dst)
        return;
    *dst = clean(f->value, f->value_len);
}

static void
keep_addr(char **dst, const struct hdr_field *f, bool typed)
{
    if (*dst)
        return;
    char *v = clean(f->value, f->value_len);
    *dst = typed ? strip_type(v, true) : v;
    if (*dst && !typed)
        *dst = strip_type(*dst, true);
}

/* ---- Content-Type ---------------------------------------------------------- */

struct ctype {
    char type[64]; /* lower case, "text/plain" when absent */
    char boundary[BOUNDARY_MAX + 1];
    char report_type[32];
};

/* Copies the value of parameter NAME (case-insensitive) of a Content-Type
 * value, quoted or not, into out; "" when absent. */
static void
ctype_param(const char *v, const char *name, char *out, size_t outlen)
{
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *p = strchr(v, ';'); p; p = strchr(p + 1, ';')) {
        const char *q = p + 1;
        while (*q == ' ')
            q++;
        if (strncasecmp(q, name, nl) != 0)
            continue;
        q += nl;
        while (*q == ' ')
            q++;
        if (*q != '=')
            continue;
        q++;
        while (*q == ' ')
            q++;
        bool quoted = *q == '"';
        if (quoted)
            q++;
        size_t k = 0;
        while (*q && k + 1 < outlen && (quoted ? *q != '"' : (*q != ';' && *q != ' ')))
            out[k++] = *q++;
        out[k] = '\0';
        return;
    }
}

static void
ctype_parse(const char *v, struct ctype *ct)
{
    size_t k = 0;
    while (v[k] && v[k] != ';' && v[k] != ' ' && k + 1 < sizeof ct->type) {
        ct->type[k] = (char)tolower((unsigned char)v[k]);
        k++;
    }
    ct->type[k] = '\0';
    ctype_param(v, "boundary", ct->boundary, sizeof ct->boundary);
    ctype_param(v, "report-type", ct->report_type, sizeof ct->report_type);
    for (char *p = ct->report_type; *p; p++)
        *p = (char)tolower((unsigned char)*p);
}

/* ---- the parts ------------------------------------------------------------- */

static bool
is(const struct hdr_field *f, const char *name)
{
    return f->valid && hdr_name_is(f, name);
}

/* The groups of a message/delivery-status body: fields of the message
 * and, after each empty line, those of one recipient. */
static void
parse_dsn(struct report *r, const char *p, size_t n)
{
    size_t pos = 0;
    while (pos < n) {
        while (pos < n && (p[pos] == '\r' || p[pos] == '\n'))
            pos++;
        if (pos >= n)
            break;
        struct hdr_iter it;
        hdr_iter_init(&it, p + pos, n - pos);
        struct hdr_field f;
        struct report_rcpt *rc = NULL;
        while (hdr_next(&it, &f)) {
            if (is(&f, "Reporting-MTA")) {
                if (!r->reporting_mta)
                    r->reporting_mta = strip_type(clean(f.value, f.value_len), false);
                continue;
            }
            if (is(&f, "Original-Envelope-Id")) {
                keep(&r->envid, &f);
                continue;
            }
            bool per_rcpt = is(&f, "Final-Recipient") || is(&f, "Original-Recipient") ||
                            is(&f, "Action") || is(&f, "Status") || is(&f, "Diagnostic-Code") ||
                            is(&f, "Remote-MTA");
            if (!per_rcpt)
                continue;
            if (!rc) {
                if (r->nrcpts >= REPORT_MAX_RCPTS)
                    continue;
                rc = &r->rcpts[r->nrcpts++];
            }
            if (is(&f, "Final-Recipient")) {
                free(rc->rcpt); /* wins over Original-Recipient */
                rc->rcpt = strip_type(clean(f.value, f.value_len), true);
            } else if (is(&f, "Original-Recipient")) {
                keep_addr(&rc->rcpt, &f, true);
            } else if (is(&f, "Action")) {
                keep(&rc->action, &f);
            } else if (is(&f, "Status")) {
                keep(&rc->status, &f);
            } else if (is(&f, "Diagnostic-Code")) {
                keep(&rc->diag, &f);
            } else if (is(&f, "Remote-MTA")) {
                if (!rc->remote_mta)
                    rc->remote_mta = strip_type(clean(f.value, f.value_len), false);
            }
        }
        if (it.body == 0)
            break;
        pos += it.body;
    }
}

static void
parse_arf(struct report *r, const char *p, size_t n)
{
    struct hdr_iter it;
    hdr_iter_init(&it, p, n);
    struct hdr_field f;
    while (hdr_next(&it, &f)) {
        if (is(&f, "Feedback-Type"))
            keep(&r->feedback_type, &f);
        else if (is(&f, "User-Agent"))
            keep(&r->user_agent, &f);
        else if (is(&f, "Version"))
            keep(&r->version, &f);
        else if (is(&f, "Original-Mail-From"))
            keep_addr(&r->original_mail_from, &f, false);
        else if (is(&f, "Original-Rcpt-To"))
            keep_addr(&r->original_rcpt_to, &f, false);
        else if (is(&f, "Arrival-Date") || is(&f, "Received-Date"))
            keep(&r->arrival_date, &f);
        else if (is(&f, "Source-IP"))
            keep(&r->source_ip, &f);
        else if (is(&f, "Reported-Domain"))
            keep(&r->reported_domain, &f);
        else if (is(&f, "Reporting-MTA") && !r->reporting_mta)
            r->reporting_mta = strip_type(clean(f.value, f.value_len), false);
        else if (is(&f, "Original-Envelope-Id"))
            keep(&r->envid, &f);
    }
}

/* The enclosed original (message/rfc822 or its headers only). */
static void
parse_enclosed(struct report *r, struct walk *w, const char *p, size_t n)
{
    struct hdr_iter it;
    hdr_iter_init(&it, p, n);
    struct hdr_field f;
    while (hdr_next(&it, &f)) {
        if (is(&f, "Message-ID"))
            keep_addr(&r->msgid, &f, false);
        else if (is(&f, "Return-Path"))
            keep_addr(&r->return_path, &f, false);
        else if (is(&f, "X-HmXmrOriginalRecipient"))
            keep_addr(&w->jmrp_rcpt, &f, false);
    }
}

static void walk_entity(struct report *r, struct walk *w, const char *p, size_t n, int depth);

/* Is there a delimiter line "--B" at P (at a line start)? */
static bool
delimiter_at(const char *p, size_t n, const char *b, size_t bl)
{
    return n >= bl + 2 && p[0] == '-' && p[1] == '-' && memcmp(p + 2, b, bl) == 0;
}

static void
walk_multipart(struct report *r, struct walk *w, const char *p, size_t n, const char *b, int depth)
{
    size_t bl = strlen(b);
    if (bl == 0)
        return;
    size_t part = 0; /* start of the current part, 0 before the first delimiter */
    bool in_part = false;
    size_t line = 0;
    while (line < n) {
        const char *nl = memchr(p + line, '\n', n - line);
        size_t next = nl ? (size_t)(nl - p) + 1 : n;
        if (delimiter_at(p + line, n - line, b, bl)) {
            if (in_part && w->parts < REPORT_MAX_PARTS) {
                /* the line ending before the delimiter belongs to it */
                size_t end = line;
                if (end > part && p[end - 1] == '\n')
                    end--;
                if (end > part && p[end - 1] == '\r')
                    end--;
                w->parts++;
                walk_entity(r, w, p + part, end - part, depth + 1);
            }
            if (n - line >= bl + 4 && p[line + bl + 2] == '-' && p[line + bl + 3] == '-')
                return; /* the close delimiter */
            in_part = true;
            part = next;
        }
        line = next;
    }
    /* no close delimiter (a cut message): the last part runs to the end */
    if (in_part && part < n && w->parts < REPORT_MAX_PARTS) {
        w->parts++;
        walk_entity(r, w, p + part, n - part, depth + 1);
    }
}

static void
walk_entity(struct report *r, struct walk *w, const char *p, size_t n, int depth)
{
    struct hdr_iter it;
    hdr_iter_init(&it, p, n);
    struct hdr_field f;
    struct ctype ct = {.type = "text/plain"};
    bool base64 = false;
    while (hdr_next(&it, &f)) {
        if (is(&f, "Content-Type")) {
            char *v = clean(f.value, f.value_len);
            if (v)
                ctype_parse(v, &ct);
            free(v);
        } else if (is(&f, "Content-Transfer-Encoding")) {
            char *v = clean(f.value, f.value_len);
            base64 = v && strcasecmp(v, "base64") == 0;
            free(v);
        } else if (depth == 0 && is(&f, "Subject")) {
            keep(&r->subject, &f);
        } else if (depth == 0 && is(&f, "From")) {
            keep(&w->from, &f);
        } else if (depth == 0 && is(&f, "X-HmXmrOriginalRecipient")) {
            keep_addr(&w->jmrp_rcpt, &f, false);
        }
    }
    const char *body = p + it.body;
    size_t blen = n - it.body;
    if (strncmp(ct.type, "multipart/", 10) == 0) {
        if (depth < REPORT_MAX_DEPTH)
            walk_multipart(r, w, body, blen, ct.boundary, depth);
        return;
    }
    struct buf dec;
    buf_init(&dec);
    if (base64 && mime_base64_decode(&dec, body, blen) == 0) {
        body = dec.data ? dec.data : "";
        blen = dec.len;
    }
    if (strcmp(ct.type, "message/delivery-status") == 0 ||
        strcmp(ct.type, "message/global-delivery-status") == 0) {
        w->dsn = true;
        parse_dsn(r, body, blen);
    } else if (strcmp(ct.type, "message/feedback-report") == 0) {
        w->arf = true;
        parse_arf(r, body, blen);
    } else if (strcmp(ct.type, "message/rfc822") == 0 ||
               strcmp(ct.type, "text/rfc822-headers") == 0 ||
               strcmp(ct.type, "message/rfc822-headers") == 0 ||
               strcmp(ct.type, "message/global") == 0) {
        parse_enclosed(r, w, body, blen);
    } else if (strcmp(ct.type, "text/plain") == 0 && !w->text) {
        if (dec.data) {
            w->decoded_text = dec;
            buf_init(&dec);
        }
        w->text = body;
        w->text_len = blen;
    }
    buf_free(&dec);
}

/* ---- non-standard bounces ---------------------------------------------------- */

/* Phrases of bounces that are not RFC 3464 (qmail, old Exchange, hosted
 * mail's own texts), lower case, and the status they mean. The first
 * match wins; bounce_category() turns the status and the matched line into
 * a category. */
static const struct {
    const char *phrase;
    const char *status;
} bounce_phrases[] = {
    {"no mailbox here by that name", "5.1.1"},
    {"user unknown", "5.1.1"},
    {"unknown user", "5.1.1"},
    {"no such user", "5.1.1"},
    {"user doesn't exist", "5.1.1"},
    {"user does not exist", "5.1.1"},
    {"address does not exist", "5.1.1"},
    {"recipient address rejected", "5.1.1"},
    {"invalid recipient", "5.1.1"},
    {"mailbox not found", "5.1.1"},
    {"account has been disabled", "5.2.1"},
    {"account is disabled", "5.2.1"},
    {"account is inactive", "5.2.1"},
    {"mailbox is disabled", "5.2.1"},
    {"mailbox is full", "5.2.2"},
    {"mailbox full", "5.2.2"},
    {"over quota", "5.2.2"},
    {"quota exceeded", "5.2.2"},
    {"host not found", "5.1.2"},
    {"domain not found", "5.1.2"},
    {"rejected as spam", "5.7.1"},
};

/* Does the message look like a bounce at all (not a person's reply)? */
static bool
looks_like_bounce(const struct report *r, const struct walk *w)
{
    static const char *const from_words[] = {"mailer-daemon", "postmaster", "mail delivery"};
    static const char *const subject_words[] = {
        "undeliver",      "delivery fail",       "delivery status",       "returned mail",
        "failure notice", "delivery has failed", "could not be delivered"};
    for (size_t i = 0; w->from && i < sizeof from_words / sizeof *from_words; i++)
        if (strcasestr(w->from, from_words[i]))
            return true;
    for (size_t i = 0; r->subject && i < sizeof subject_words / sizeof *subject_words; i++)
        if (strcasestr(r->subject, subject_words[i]))
            return true;
    return false;
}

/* Offset of PHRASE (lower case) in T[0..N) ignoring case, or -1. */
static long
find_ci(const char *t, size_t n, const char *phrase)
{
    size_t pl = strlen(phrase);
    for (size_t i = 0; i + pl <= n; i++) {
        if (tolower((unsigned char)t[i]) != phrase[0])
            continue;
        size_t k = 1;
        while (k < pl && tolower((unsigned char)t[i + k]) == phrase[k])
            k++;
        if (k == pl)
            return (long)i;
    }
    return -1;
}

static bool
parse_text_bounce(struct report *r, const struct walk *w)
{
    if (!w->text || !looks_like_bounce(r, w))
        return false;
    size_t n = w->text_len < TEXT_SCAN_MAX ? w->text_len : TEXT_SCAN_MAX;
    const char *t = w->text;
    for (size_t i = 0; i < sizeof bounce_phrases / sizeof *bounce_phrases; i++) {
        long at = find_ci(t, n, bounce_phrases[i].phrase);
        if (at < 0)
            continue;
        size_t s = (size_t)at, e = (size_t)at;
        while (s > 0 && t[s - 1] != '\n')
            s--;
        while (e < n && t[e] != '\n')
            e++;
        struct report_rcpt *rc = &r->rcpts[r->nrcpts++];
        rc->action = xstrdup("failed");
        rc->status = xstrdup(bounce_phrases[i].status);
        rc->diag = clean(t + s, e - s);
        /* the first <address> of the text, qmail style */
        const char *lt = memchr(t, '<', n);
        if (lt) {
            const char *gt = memchr(lt, '>', n - (size_t)(lt - t));
            if (gt && memchr(lt, '@', (size_t)(gt - lt)))
                rc->rcpt = clean(lt + 1, (size_t)(gt - lt - 1));
        }
        return true;
    }
    return false;
}

/* ---- public ---------------------------------------------------------------- */

const char *
report_kind_name(enum report_kind k)
{
    switch (k) {
    case REPORT_DSN:
        return "dsn";
    case REPORT_ARF:
        return "arf";
    case REPORT_JMRP:
        return "jmrp";
    case REPORT_BOUNCE:
        return "bounce";
    default:
        return "unknown";
    }
}

/* The SMTP code at the start of a Diagnostic-Code's text, or 0. */
static int
diag_code(const char *d)
{
    if (!d)
        return 0;
    const char *p = strchr(d, ';');
    p = p ? p + 1 : d;
    while (*p == ' ')
        p++;
    if (p[0] >= '2' && p[0] <= '5' && isdigit((unsigned char)p[1]) &&
        isdigit((unsigned char)p[2]) && !isdigit((unsigned char)p[3]))
        return (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    return 0;
}

void
report_parse(struct report *r, const char *msg, size_t len)
{
    memset(r, 0, sizeof *r);
    struct walk w = {0};
    buf_init(&w.decoded_text);
    walk_entity(r, &w, msg, len, 0);
    if (w.arf) {
        r->kind = REPORT_ARF;
    } else if (w.dsn && r->nrcpts > 0) {
        r->kind = REPORT_DSN;
    } else if (w.jmrp_rcpt) {
        r->kind = REPORT_JMRP;
        if (!r->feedback_type)
            r->feedback_type = xstrdup("abuse");
        if (!r->user_agent)
            r->user_agent = xstrdup("JMRP");
        if (!r->original_rcpt_to) {
            r->original_rcpt_to = w.jmrp_rcpt;
            w.jmrp_rcpt = NULL;
        }
    } else if (r->nrcpts == 0 && parse_text_bounce(r, &w)) {
        r->kind = REPORT_BOUNCE;
    } else {
        r->kind = REPORT_UNKNOWN;
        r->error = w.dsn ? "delivery-status part without recipients"
                         : "no delivery-status or feedback-report part, and no known bounce text";
    }
    for (size_t i = 0; i < r->nrcpts; i++) {
        struct report_rcpt *rc = &r->rcpts[i];
        rc->cat = bounce_category(diag_code(rc->diag), rc->status, rc->diag);
    }
    free(w.jmrp_rcpt);
    free(w.from);
    buf_free(&w.decoded_text);
}

void
report_free(struct report *r)
{
    for (size_t i = 0; i < r->nrcpts; i++) {
        free(r->rcpts[i].rcpt);
        free(r->rcpts[i].action);
        free(r->rcpts[i].status);
        free(r->rcpts[i].diag);
        free(r->rcpts[i].remote_mta);
    }
    free(r->subject);
    free(r->reporting_mta);
    free(r->envid);
    free(r->msgid);
    free(r->return_path);
    free(r->feedback_type);
    free(r->user_agent);
    free(r->version);
    free(r->original_mail_from);
    free(r->original_rcpt_to);
    free(r->arrival_date);
    free(r->source_ip);
    free(r->reported_domain);
    memset(r, 0, sizeof *r);
}
