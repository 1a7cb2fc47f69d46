/* bounce: classifies failed deliveries into PowerMTA's bounce categories.
 *
 * Two ordered tables decide. The reply text is tried first against
 * case-insensitive POSIX regular expressions (first match wins), because the
 * text is more specific than the status code in practice: receivers answer
 * "5.7.1" for spam blocks, policy refusals and relay denials alike. When no
 * text rule matches, the enhanced status code decides (exact subject.detail
 * first, then the subject class), and "other" is the last resort.
 *
 * The compiled expressions are module-owned and built once on first use;
 * every process of pgmtad is single-threaded. */
#include "bounce.h"

#include <ctype.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

/* Longest part of a reply that is classified; replies are bounded by the SMTP
 * client anyway (SMTP_MAX_REPLY). */
#define BOUNCE_MAX_TEXT 4096

struct text_rule {
    const char *category;
    const char *regex; /* POSIX extended, matched case-insensitively */
};

/* Order matters: a reply often fits several rules ("unauthenticated mail
 * ... has been blocked", "over quota and inactive"), so the narrower and
 * more telling rules come first. */
static const struct text_rule text_rules[] = {
    /* Relay refusals say "5.7.1" and often "authentication"; catch the exact
     * phrases first so that a DNSBL reply about "open relays" is not taken
     * for one. */
    {"routing-errors", "relay(ing)? (access )?(denied|not (permitted|allowed)|prohibited|refused)"
                       "|unable to relay|(not permitted|not allowed|cannot|do not|don't) relay"},
    /* Sender authentication (DMARC, SPF, DKIM) before spam words: such
     * replies also say "blocked". */
    {"policy-related", "dmarc|\\<spf\\>|dkim|unauthenticated|not authenticated"
                       "|authentication (failed|required|failure)|sender authentication"},
    {"quota-issues", "quota|mailbox (is |was )?full|insufficient (system )?storage"
                     "|storage (allocation|space|limit)|out of storage|exceeded storage"
                     "|mailbox size limit|mailbox (has )?exceeded|disk full|user is over"},
    {"inactive-mailbox", "disabled|inactive|suspended|deactivated|dormant|not activated"
                         "|account (has )?expired|no longer active|expired account"},
    {"message-expired", "expired|bounce-after|too long in (the )?queue|delivery time"},
    {"bad-domain", "domain (name )?(not found|does not exist|doesn't exist|unknown|invalid"
                   "|retired|obsolete|no longer)|(no such|unknown|invalid) domain"
                   "|recipient domain|find the (recipient )?domain|host (or domain name )?not found"
                   "|\\<no mx\\>|null mx|does not accept mail|nxdomain"},
    {"bad-mailbox", "user unknown|unknown user|(no such|invalid|unknown|bad) "
                    "(user|mailbox|recipient|account|address|local part|addressee)"
                    "|mailbox (is )?(unavailable|not found|unknown|not available|does not exist)"
                    "|does not exist|doesn't exist|recipient( address)? (not found|unknown|invalid)"
                    "|recipientnotfound|user not found|not a valid (mailbox|recipient|user|address)"
                    "|no mailbox|no longer valid|not our customer|doesn't have an? .* account"
                    "|address (is )?(not valid|invalid|unknown)|unrouteable address"},
    /* Strong content signals before spam words: "blocked because its content
     * presents a security issue" is about content, not reputation. */
    {"content-related", "virus|malware|phishing|message (is )?too (large|big)|size limit"
                        "|message size|exceeds? (the )?(fixed )?(maximum )?(message )?size"
                        "|attachment|security issue|message too long"},
    {"spam-related", "spam|\\<junk|unsolicited|black ?list|block ?list|blocked|denylist"
                     "|listed (at|in|on|by)|reputation|dnsbl|\\<rbl\\>|banned|bulk mail"
                     "|blackhole|complaints?\\>"},
    {"content-related", "content"},
    {"no-answer-from-host", "no answer|connection timed out|connect(ion)? timeout"
                            "|timed out while connecting"},
    {"bad-connection", "connection (refused|reset|closed|lost|dropped)|lost connection"
                       "|network is unreachable|no route to host|broken pipe|tls handshake"
                       "|closed the connection|too many connections"},
    {"policy-related", "policy|not authori[sz]ed|unauthori[sz]ed|not permitted|not allowed"
                       "|prohibited|denied|refused|suspicious|rate limit|rejected for"},
    {"routing-errors", "\\<relay|unroutable|\\<routing\\>|\\<route\\>|mail loop|loops back"},
    {"protocol-errors", "syntax error|bad sequence|out of sequence|command (not recognized"
                        "|unrecognized)|unrecognized command|not implemented|line too long"
                        "|protocol error|invalid command"},
};

#define NTEXT_RULES (sizeof text_rules / sizeof text_rules[0])

struct status_rule {
    int subject; /* middle number of the enhanced status */
    int detail;  /* last number, -1 for any */
    const char *category;
};

/* Classes 4 and 5 share the table: the class says transient or permanent,
 * the subject and detail say why. */
static const struct status_rule status_rules[] = {
    {1, 0, "bad-mailbox"},         /* other address status */
    {1, 1, "bad-mailbox"},         /* bad destination mailbox address */
    {1, 3, "bad-mailbox"},         /* bad destination mailbox address syntax */
    {1, 6, "bad-mailbox"},         /* mailbox has moved */
    {1, 2, "bad-domain"},          /* bad destination system address */
    {1, 10, "bad-domain"},         /* null MX (RFC 7505) */
    {2, 1, "inactive-mailbox"},    /* mailbox disabled */
    {2, 2, "quota-issues"},        /* mailbox full */
    {2, 3, "content-related"},     /* message length exceeds administrative limit */
    {3, 4, "content-related"},     /* message too big for system */
    {4, 1, "no-answer-from-host"}, /* no answer from host */
    {4, 2, "bad-connection"},      /* bad connection */
    {4, 7, "message-expired"},     /* delivery time expired */
    {4, -1, "routing-errors"},
    {5, -1, "protocol-errors"},
    {6, -1, "content-related"},
    /* 5.7.1 lands here too: spam wording was already tried on the text. */
    {7, -1, "policy-related"},
};

#define NSTATUS_RULES (sizeof status_rules / sizeof status_rules[0])

static regex_t text_regex[NTEXT_RULES];
static bool text_regex_ready;

static void
compile_rules(void)
{
    for (size_t i = 0; i < NTEXT_RULES; i++) {
        int rc = regcomp(&text_regex[i], text_rules[i].regex, REG_EXTENDED | REG_ICASE | REG_NOSUB);
        PGMTA_ASSERT(rc == 0);
    }
    text_regex_ready = true;
}

/* Reads one number of at most 3 digits; returns the position after it or
 * NULL. */
static const char *
read_number(const char *p, int *out)
{
    int n = 0, digits = 0;
    while (isdigit((unsigned char)*p) && digits < 4) {
        n = n * 10 + (*p - '0');
        p++;
        digits++;
    }
    if (digits == 0 || digits > 3)
        return NULL;
    *out = n;
    return p;
}

/* Parses "C.S.D" (RFC 3463) with class 2, 4 or 5; returns 0 on success and
 * the position after it in *end. */
static int
parse_status(const char *s, int *subject, int *detail, const char **end)
{
    int cls;
    const char *p = read_number(s, &cls);
    if (!p || (cls != 2 && cls != 4 && cls != 5) || p != s + 1 || *p != '.')
        return -1;
    p = read_number(p + 1, subject);
    if (!p || *p != '.')
        return -1;
    p = read_number(p + 1, detail);
    if (!p || isdigit((unsigned char)*p) || *p == '.')
        return -1;
    *end = p;
    return 0;
}

/* Copies the reply into out as one line: line breaks and the "NNN-" /
 * "NNN " code prefix and repeated enhanced status of continuation lines
 * become a single space, so that phrases broken across lines still match.
 * When the text carries an enhanced status and none was given, it is
 * stored in subject and detail. */
static void
flatten_text(const char *text, char *out, size_t outlen, int *subject, int *detail,
             bool *have_status)
{
    size_t n = 0;
    const char *p = text;
    bool line_start = true;
    while (*p && n + 1 < outlen) {
        if (line_start) {
            if (isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1]) &&
                isdigit((unsigned char)p[2]) &&
                (p[3] == '-' || p[3] == ' ' || p[3] == '\0' || p[3] == '\r' || p[3] == '\n'))
                p += p[3] == '-' || p[3] == ' ' ? 4 : 3;
            int s, d;
            const char *end;
            if (parse_status(p, &s, &d, &end) == 0) {
                if (!*have_status) {
                    *subject = s;
                    *detail = d;
                    *have_status = true;
                }
                p = end;
                while (*p == ' ')
                    p++;
            }
            line_start = false;
            continue;
        }
        if (*p == '\r' || *p == '\n') {
            while (*p == '\r' || *p == '\n')
                p++;
            if (n > 0 && out[n - 1] != ' ')
                out[n++] = ' ';
            line_start = true;
            continue;
        }
        out[n++] = *p++;
    }
    out[n] = '\0';
}

const char *
bounce_category(int code, const char *status, const char *text)
{
    (void)code; /* the basic code says transient or permanent, not why */
    if (!text_regex_ready)
        compile_rules();

    int subject = -1, detail = -1;
    bool have_status = false;
    const char *end;
    if (status && parse_status(status, &subject, &detail, &end) == 0 && *end == '\0')
        have_status = true;

    if (text && *text) {
        char flat[BOUNCE_MAX_TEXT];
        flatten_text(text, flat, sizeof flat, &subject, &detail, &have_status);
        for (size_t i = 0; i < NTEXT_RULES; i++) {
            if (regexec(&text_regex[i], flat, 0, NULL, 0) == 0)
                return text_rules[i].category;
        }
    }

    if (have_status) {
        for (size_t i = 0; i < NSTATUS_RULES; i++) {
            const struct status_rule *r = &status_rules[i];
            if (r->subject == subject && (r->detail == -1 || r->detail == detail))
                return r->category;
        }
    }
    return "other";
}
