/* smtp_server_parse: the pure parsers of the SMTP injection listener:
 * command lines, MAIL/RCPT paths and MAIL parameters, the DATA reader
 * (dot-stuffing, only CRLF.CRLF ends the data), X-Job/X-Virtual-MTA
 * extraction, base64, password and allow-list checks. No I/O and no
 * state beyond the caller's structures; the unit and fuzz tests call them
 * directly, smtp_server.c drives them from its sessions. */
#include "smtp_server.h"

#include "smtp_in_auth.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "addr.h"
#include "hdr.h"
#include "util.h"

static const struct {
    const char *name;
    enum smtp_server_verb verb;
} verbs[] = {
    {"EHLO", SMTP_VERB_EHLO}, {"HELO", SMTP_VERB_HELO},         {"MAIL", SMTP_VERB_MAIL},
    {"RCPT", SMTP_VERB_RCPT}, {"DATA", SMTP_VERB_DATA},         {"RSET", SMTP_VERB_RSET},
    {"NOOP", SMTP_VERB_NOOP}, {"QUIT", SMTP_VERB_QUIT},         {"VRFY", SMTP_VERB_VRFY},
    {"HELP", SMTP_VERB_HELP}, {"STARTTLS", SMTP_VERB_STARTTLS}, {"AUTH", SMTP_VERB_AUTH},
    {"BDAT", SMTP_VERB_BDAT},
};

const char *
smtp_server_parse_command(const char *line, size_t len, struct smtp_server_cmd *cmd)
{
    cmd->verb = SMTP_VERB_UNKNOWN;
    cmd->arg = line + len;
    cmd->arglen = 0;
    if (len > SMTP_SERVER_MAX_LINE)
        return "500 5.5.2 Line too long";
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)line[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return "500 5.5.2 Invalid character in command";
    }
    size_t v = 0;
    while (v < len && line[v] != ' ' && line[v] != '\t')
        v++;
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        if (strlen(verbs[i].name) == v && strncasecmp(line, verbs[i].name, v) == 0) {
            cmd->verb = verbs[i].verb;
            break;
        }
    }
    size_t a = v;
    while (a < len && (line[a] == ' ' || line[a] == '\t'))
        a++;
    size_t end = len;
    while (end > a && (line[end - 1] == ' ' || line[end - 1] == '\t'))
        end--;
    cmd->arg = line + a;
    cmd->arglen = end - a;
    return NULL;
}

const char *
smtp_server_parse_path(const char *arg, size_t arglen, bool mail, char *addr, size_t addrlen,
                       const char **params)
{
    const char *syntax =
        mail ? "501 5.5.4 Syntax: MAIL FROM:<address>" : "501 5.5.4 Syntax: RCPT TO:<address>";
    const char *bad =
        mail ? "501 5.1.7 Bad sender address syntax" : "501 5.1.3 Bad recipient address syntax";
    const char *prefix = mail ? "FROM:" : "TO:";
    size_t plen = strlen(prefix);
    addr[0] = '\0';
    *params = arg + arglen;
    if (arglen < plen || strncasecmp(arg, prefix, plen) != 0)
        return syntax;
    size_t i = plen;
    while (i < arglen && arg[i] == ' ')
        i++;
    if (i >= arglen || arg[i] != '<')
        return syntax;
    size_t start = ++i;
    bool quoted = false;
    for (; i < arglen; i++) {
        char ch = arg[i];
        if (quoted && ch == '\\') {
            i++;
            continue;
        }
        if (ch == '"')
            quoted = !quoted;
        else if (!quoted && ch == '>')
            break;
    }
    if (i >= arglen)
        return bad;
    size_t end = i++;
    if (i < arglen && arg[i] != ' ')
        return syntax;
    while (i < arglen && arg[i] == ' ')
        i++;
    *params = arg + i;

    const char *a = arg + start;
    size_t n = end - start;
    /* A source route (RFC 5321 4.1.2 "@one,@two:") is accepted and ignored. */
    if (n > 0 && a[0] == '@') {
        const char *colon = memchr(a, ':', n);
        if (!colon)
            return bad;
        n -= (size_t)(colon + 1 - a);
        a = colon + 1;
    }
    if (n == 0) {
        if (mail)
            return NULL;
        return bad;
    }
    if (n >= addrlen || n > 254)
        return mail ? "501 5.1.7 Sender address too long" : "501 5.1.3 Recipient address too long";
    for (size_t k = 0; k < n; k++) {
        unsigned char ch = (unsigned char)a[k];
        if (ch < 0x20 || ch >= 0x7f)
            return bad;
    }
    const char *at = NULL;
    for (size_t k = n; k > 0; k--) {
        if (a[k - 1] == '@') {
            at = a + k - 1;
            break;
        }
    }
    if (!at)
        return mail ? "501 5.1.7 Sender address needs a domain"
                    : "501 5.1.3 Recipient address needs a domain";
    /* The one validator (addr.c, the rules of sql/010_validate.sql): what
     * RCPT accepts is what the enqueue stores. */
    if (!addr_validate(a, n, NULL, NULL))
        return bad;
    memcpy(addr, a, n);
    addr[n] = '\0';
    return NULL;
}

/* RFC 3461 xtext: printable ASCII but '=' and '+', "+XX" hex escapes. */
static bool
xtext_ok(const char *v, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '+') {
            if (i + 2 >= n)
                return false;
            for (int k = 1; k <= 2; k++) {
                unsigned char h = (unsigned char)v[i + (size_t)k];
                if (!((h >= '0' && h <= '9') || (h >= 'A' && h <= 'F')))
                    return false;
            }
            i += 2;
        } else if (c < '!' || c > '~' || c == '=') {
            return false;
        }
    }
    return true;
}

/* The next space-separated ESMTP parameter at *P: skips the spaces before
 * it, leaves *P at its start and its length in *N; false at the end. */
static bool
param_next(const char **p, size_t *n)
{
    while (**p == ' ')
        (*p)++;
    if (!**p)
        return false;
    *n = strcspn(*p, " ");
    return true;
}

/* Case-insensitive "KEY=" prefix test; *value gets what follows. */
static bool
param_is(const char *p, size_t n, const char *key, const char **value, size_t *vlen)
{
    size_t k = strlen(key);
    if (n <= k || strncasecmp(p, key, k) != 0 || p[k] != '=')
        return false;
    *value = p + k + 1;
    *vlen = n - k - 1;
    return true;
}

long
smtp_server_xtext_decode(const char *in, size_t n, char *out, size_t outlen)
{
    if (!xtext_ok(in, n))
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == '+') {
            unsigned v = 0;
            for (int k = 1; k <= 2; k++) {
                unsigned char h = (unsigned char)in[i + (size_t)k];
                v = v * 16 + (unsigned)(h <= '9' ? h - '0' : h - 'A' + 10);
            }
            c = (unsigned char)v;
            i += 2;
        }
        if (o + 1 >= outlen)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (long)o;
}

/* Decodes an xtext DSN value that must be printable ASCII once decoded
 * (ENVID, the address of ORCPT): what the next hop and the report get. */
static bool
dsn_text(const char *v, size_t n, char *out, size_t outlen)
{
    long len = smtp_server_xtext_decode(v, n, out, outlen);
    if (len <= 0)
        return false;
    for (long i = 0; i < len; i++)
        if (out[i] < 0x20 || out[i] > 0x7e)
            return false;
    return true;
}

/* RFC 3461 4.1: NEVER alone, or a list of SUCCESS, FAILURE and DELAY. */
static int
dsn_notify(const char *v, size_t n)
{
    if (n == 5 && strncasecmp(v, "NEVER", 5) == 0)
        return SMTP_DSN_NEVER;
    int mask = 0;
    size_t i = 0;
    while (i <= n) {
        size_t k = i;
        while (k < n && v[k] != ',')
            k++;
        size_t len = k - i;
        if (len == 7 && strncasecmp(v + i, "SUCCESS", 7) == 0)
            mask |= SMTP_DSN_SUCCESS;
        else if (len == 7 && strncasecmp(v + i, "FAILURE", 7) == 0)
            mask |= SMTP_DSN_FAILURE;
        else if (len == 5 && strncasecmp(v + i, "DELAY", 5) == 0)
            mask |= SMTP_DSN_DELAY;
        else
            return -1;
        i = k + 1;
    }
    return mask;
}

const char *
smtp_server_mail_params(const char *params, uint64_t max_size, uint64_t *declared,
                        struct smtp_server_mail_dsn *dsn)
{
    *declared = 0;
    if (dsn) {
        dsn->ret = 0;
        dsn->envid[0] = '\0';
    }
    const char *p = params;
    size_t n;
    while (param_next(&p, &n)) {
        const char *v;
        size_t vlen;
        if (param_is(p, n, "SIZE", &v, &vlen)) {
            uint64_t size = 0;
            if (vlen == 0 || vlen > 40)
                return vlen ? "552 5.3.4 Message size exceeds fixed maximum message size"
                            : "501 5.5.4 Bad SIZE parameter";
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9')
                    return "501 5.5.4 Bad SIZE parameter";
                unsigned d = (unsigned)(v[i] - '0');
                if (size > (UINT64_MAX - d) / 10)
                    return "552 5.3.4 Message size exceeds fixed maximum message size";
                size = size * 10 + d;
            }
            if (size > max_size)
                return "552 5.3.4 Message size exceeds fixed maximum message size";
            *declared = size;
        } else if (param_is(p, n, "BODY", &v, &vlen)) {
            if (!((vlen == 4 && strncasecmp(v, "7BIT", 4) == 0) ||
                  (vlen == 8 && strncasecmp(v, "8BITMIME", 8) == 0)))
                return "501 5.5.4 Bad BODY parameter";
        } else if (param_is(p, n, "AUTH", &v, &vlen)) {
            /* RFC 4954: the authenticated sender as xtext, or <> for
             * unknown; accepted and not used (the sender is MAIL FROM). */
            if (!(vlen == 2 && v[0] == '<' && v[1] == '>') && !xtext_ok(v, vlen))
                return "501 5.5.4 Bad AUTH parameter";
        } else if (dsn && param_is(p, n, "RET", &v, &vlen)) {
            if (dsn->ret)
                return "501 5.5.4 Duplicate RET parameter";
            if (vlen == 4 && strncasecmp(v, "FULL", 4) == 0)
                dsn->ret = 'F';
            else if (vlen == 4 && strncasecmp(v, "HDRS", 4) == 0)
                dsn->ret = 'H';
            else
                return "501 5.5.4 Bad RET parameter (FULL or HDRS)";
        } else if (dsn && param_is(p, n, "ENVID", &v, &vlen)) {
            if (dsn->envid[0])
                return "501 5.5.4 Duplicate ENVID parameter";
            if (vlen > SMTP_SERVER_MAX_ENVID)
                return "501 5.5.4 ENVID longer than 100 characters";
            if (!dsn_text(v, vlen, dsn->envid, sizeof dsn->envid))
                return "501 5.5.4 Bad ENVID parameter (xtext of printable ASCII)";
        } else {
            return "555 5.5.4 Unsupported MAIL parameter";
        }
        p += n;
    }
    return NULL;
}

const char *
smtp_server_rcpt_params(const char *params, struct smtp_server_rcpt_dsn *dsn)
{
    dsn->notify = -1;
    dsn->orcpt[0] = '\0';
    const char *p = params;
    size_t n;
    while (param_next(&p, &n)) {
        const char *v;
        size_t vlen;
        if (param_is(p, n, "NOTIFY", &v, &vlen)) {
            if (dsn->notify >= 0)
                return "501 5.5.4 Duplicate NOTIFY parameter";
            dsn->notify = dsn_notify(v, vlen);
            if (dsn->notify < 0)
                return "501 5.5.4 Bad NOTIFY parameter (NEVER, or a list of SUCCESS, FAILURE, "
                       "DELAY)";
        } else if (param_is(p, n, "ORCPT", &v, &vlen)) {
            if (dsn->orcpt[0])
                return "501 5.5.4 Duplicate ORCPT parameter";
            if (vlen > SMTP_SERVER_MAX_ORCPT)
                return "501 5.5.4 ORCPT longer than 500 characters";
            /* addr-type ";" xtext; the type is an atom (RFC 3461 4.2) */
            const char *semi = memchr(v, ';', vlen);
            size_t tlen = semi ? (size_t)(semi - v) : 0;
            bool ok = tlen > 0 && tlen < vlen - 1;
            for (size_t i = 0; ok && i < tlen; i++) {
                unsigned char c = (unsigned char)v[i];
                ok = c > ' ' && c < 0x7f && !strchr("()<>[]:;@\\,.\"", c);
            }
            char addr[SMTP_SERVER_MAX_ORCPT + 1];
            if (!ok || !dsn_text(semi + 1, vlen - tlen - 1, addr, sizeof addr))
                return "501 5.5.4 Bad ORCPT parameter (addr-type;xtext)";
            /* decoded, it is no longer than the xtext (at most 500) */
            size_t alen = strlen(addr);
            memcpy(dsn->orcpt, v, tlen + 1);
            memcpy(dsn->orcpt + tlen + 1, addr, alen + 1);
        } else {
            return "555 5.5.4 Unsupported RCPT parameter";
        }
        p += n;
    }
    return NULL;
}

enum { D_BOL = 0, D_MID, D_CR, D_DOT, D_DOT_CR };

void
smtp_server_data_init(struct smtp_server_data *d, struct buf *out, size_t max)
{
    memset(d, 0, sizeof *d);
    d->state = D_BOL;
    d->max = max;
    d->out = out;
}

static void
data_emit(struct smtp_server_data *d, const char *p, size_t n)
{
    d->total += n;
    if (d->overflow)
        return;
    if (d->total > d->max) {
        d->overflow = true;
        return;
    }
    buf_append(d->out, p, n);
}

size_t
smtp_server_data_feed(struct smtp_server_data *d, const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && !d->done) {
        char ch = p[i];
        switch (d->state) {
        case D_MID: {
            /* Only CR can begin a line ending: copy up to it in one go. */
            const char *cr = memchr(p + i, '\r', n - i);
            size_t run = cr ? (size_t)(cr - (p + i)) : n - i;
            if (run) {
                data_emit(d, p + i, run);
                i += run;
                continue;
            }
            data_emit(d, "\r", 1);
            d->state = D_CR;
            i++;
            break;
        }
        case D_CR:
            data_emit(d, &ch, 1);
            d->state = ch == '\n' ? D_BOL : ch == '\r' ? D_CR : D_MID;
            i++;
            break;
        case D_BOL:
            if (ch == '.') {
                d->state = D_DOT; /* stuffing or the end: not content yet */
            } else {
                data_emit(d, &ch, 1);
                d->state = ch == '\r' ? D_CR : D_MID;
            }
            i++;
            break;
        case D_DOT:
            /* The leading dot of a line other than "." is removed. */
            if (ch == '\r') {
                d->state = D_DOT_CR;
            } else {
                data_emit(d, &ch, 1);
                d->state = D_MID;
            }
            i++;
            break;
        case D_DOT_CR:
            if (ch == '\n') {
                d->done = true;
                i++;
                break;
            }
            /* ".\r" then something else: the dot was stuffing, the CR is
             * content and CH is handled as the byte after a CR. */
            data_emit(d, "\r", 1);
            d->state = D_CR;
            break;
        default:
            PGMTA_ASSERT(!"bad data state");
        }
    }
    return i;
}

static bool
is_wsp(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* The unfolded, trimmed value of the field in [p, p+n) after its colon. */
static char *
field_value(const char *p, size_t n)
{
    const char *colon = memchr(p, ':', n);
    struct buf v;
    buf_init(&v);
    for (const char *q = colon + 1; q < p + n; q++)
        if (*q != '\r' && *q != '\n')
            buf_append(&v, q, 1);
    size_t s = 0, e = v.len;
    while (s < e && is_wsp(v.data[s]))
        s++;
    while (e > s && is_wsp(v.data[e - 1]))
        e--;
    char *out = e > s ? xstrndup(v.data + s, e - s) : NULL;
    buf_free(&v);
    return out;
}

void
smtp_server_take_headers(struct buf *content, size_t start, char **job_id, char **vmta)
{
    /* One pass over the fields (hdr.c): kept fields are copied down to
     * OUT, so the time is linear in the size of the header section however
     * many fields are removed (a memmove per removed field was quadratic:
     * 400,000 X-Job lines took 25 s). Only the last field of each name
     * matters: its raw bytes are kept aside (a copy into a reused buffer,
     * since later kept fields may overwrite them) and unfolded at the end.
     * A line that is not a valid field ends the header section. */
    *job_id = NULL;
    *vmta = NULL;
    if (start >= content->len)
        return;
    char *d = content->data;
    size_t len = content->len;
    size_t out = start, rest = start; /* rest: first octet not yet handled */
    struct buf last[2];               /* raw X-Job, X-Virtual-MTA fields */
    bool seen[2] = {false, false};
    buf_init(&last[0]);
    buf_init(&last[1]);
    struct hdr_iter it;
    struct hdr_field f;
    hdr_iter_init(&it, d + start, len - start);
    while (hdr_next(&it, &f) && f.valid) {
        size_t off = start + f.off, end = start + f.end;
        int which = hdr_name_is(&f, "X-Job") ? 0 : hdr_name_is(&f, "X-Virtual-MTA") ? 1 : -1;
        if (which >= 0) {
            buf_reset(&last[which]);
            buf_append(&last[which], d + off, end - off);
            seen[which] = true;
        } else {
            if (out != off)
                memmove(d + out, d + off, end - off);
            out += end - off;
        }
        rest = end;
    }
    if (out != rest) {
        memmove(d + out, d + rest, len - rest);
        content->len = out + (len - rest);
        d[content->len] = '\0';
    }
    if (seen[0])
        *job_id = field_value(last[0].data, last[0].len);
    if (seen[1])
        *vmta = field_value(last[1].data, last[1].len);
    buf_free(&last[0]);
    buf_free(&last[1]);
}

static int
b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

long
smtp_server_base64_decode(const char *in, size_t inlen, unsigned char *out, size_t outlen)
{
    if (inlen % 4 != 0)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < inlen; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char ch = (unsigned char)in[i + k];
            if (ch == '=' && i + 4 == inlen && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad)
                return -1; /* data after padding */
            v[k] = b64_value(ch);
            if (v[k] < 0)
                return -1;
        }
        unsigned long triple = ((unsigned long)v[0] << 18) | ((unsigned long)v[1] << 12) |
                               ((unsigned long)v[2] << 6) | (unsigned long)v[3];
        unsigned char bytes[3] = {(unsigned char)(triple >> 16), (unsigned char)(triple >> 8),
                                  (unsigned char)triple};
        size_t take = 3 - (size_t)pad;
        if (o + take > outlen)
            return -1;
        memcpy(out + o, bytes, take);
        o += take;
    }
    return (long)o;
}

unsigned
smtp_server_hop_count(const char *buf, size_t len, unsigned limit)
{
    unsigned n = 0;
    struct hdr_iter it;
    struct hdr_field f;
    hdr_iter_init(&it, buf, len);
    while (n < limit && hdr_next(&it, &f))
        if (f.valid && hdr_name_is(&f, "Received"))
            n++;
    return n;
}

bool
smtp_server_password_ok(const char *configured, const char *given, size_t givenlen)
{
    return smtp_in_password_ok(configured, given, givenlen);
}

int
smtp_server_parse_cidr(const char *s, struct smtp_server_cidr *out)
{
    char ip[64];
    const char *slash = strchr(s, '/');
    size_t len = slash ? (size_t)(slash - s) : strlen(s);
    if (len == 0 || len >= sizeof ip)
        return -1;
    memcpy(ip, s, len);
    ip[len] = '\0';
    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, ip, out->addr) == 1) {
        out->family = AF_INET;
        out->prefix = 32;
    } else if (inet_pton(AF_INET6, ip, out->addr) == 1) {
        out->family = AF_INET6;
        out->prefix = 128;
    } else {
        return -1;
    }
    if (slash) {
        const char *p = slash + 1;
        unsigned v = 0;
        if (!*p || strlen(p) > 3)
            return -1;
        for (; *p; p++) {
            if (*p < '0' || *p > '9')
                return -1;
            v = v * 10 + (unsigned)(*p - '0');
        }
        if (v > out->prefix)
            return -1;
        out->prefix = v;
    }
    return 0;
}

bool
smtp_server_cidr_match(const struct smtp_server_cidr *net, int family, const unsigned char *addr)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (family == AF_INET6 && memcmp(addr, mapped, 12) == 0) {
        family = AF_INET;
        addr += 12;
    }
    if (family != net->family)
        return false;
    unsigned full = net->prefix / 8, rest = net->prefix % 8;
    if (memcmp(addr, net->addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (addr[full] & mask) == (net->addr[full] & mask);
}
