/* mime: MIME builder and encoders (see mime.h).
 *
 * Ownership: nothing is kept between calls; every function appends to the
 * caller's buffer and reads the caller's strings. Boundaries and Message-ID
 * local parts are random (OpenSSL RAND_bytes). */
#include "mime.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>

#include <openssl/rand.h>

#include "util.h"

#define LINE_MAX_SOFT 76 /* quoted-printable and base64 line length */
#define FOLD_AT 78
#define EW_CHUNK 39 /* bytes of text per encoded-word: 52 base64 chars + 12 */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void
b64_run(struct buf *out, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        char o[4] = {b64[(v >> 18) & 63], b64[(v >> 12) & 63], i + 1 < n ? b64[(v >> 6) & 63] : '=',
                     i + 2 < n ? b64[v & 63] : '='};
        buf_append(out, o, 4);
    }
}

void
mime_base64_encode(struct buf *out, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i += 57) { /* 57 bytes = 76 characters */
        b64_run(out, p + i, n - i < 57 ? n - i : 57);
        buf_puts(out, "\r\n");
    }
}

static int
b64_val(unsigned char c)
{
    const char *q = c ? strchr(b64, c) : NULL;
    return q ? (int)(q - b64) : -1;
}

int
mime_base64_decode(struct buf *out, const char *s, size_t n)
{
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64_val(c);
        if (v < 0 || pad)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            unsigned char byte = (unsigned char)(acc >> bits);
            buf_append(out, &byte, 1);
        }
    }
    /* leftover bits: 0 (complete), 4 (one byte from two characters: "=="),
     * 2 (two bytes from three: "="); padding is optional but never wrong */
    if (bits == 6 || (pad && pad != (bits == 4 ? 2 : bits == 2 ? 1 : -1)))
        return -1;
    if (!out->data)
        buf_append(out, "", 0);
    return 0;
}

/* ---- quoted-printable ----------------------------------------------------------- */

void
mime_qp_encode(struct buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\r' || c == '\n') {
            if (c == '\r' && i + 1 < n && s[i + 1] == '\n')
                i++;
            buf_puts(out, "\r\n");
            col = 0;
            continue;
        }
        bool at_eol = i + 1 == n || s[i + 1] == '\r' || s[i + 1] == '\n';
        bool literal = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_eol);
        size_t w = literal ? 1 : 3;
        /* a soft break keeps every line within 76 characters, "=" included */
        if (col + w > (at_eol ? LINE_MAX_SOFT : LINE_MAX_SOFT - 1)) {
            buf_puts(out, "=\r\n");
            col = 0;
        }
        if (literal) {
            buf_append(out, &c, 1);
        } else {
            char e[3] = {'=', hex[c >> 4], hex[c & 15]};
            buf_append(out, e, 3);
        }
        col += w;
    }
    if (col)
        buf_puts(out, "\r\n");
}

/* 7bit will do: printable ASCII (and tab), lines of at most 76 octets. */
static bool
plain_7bit(const char *s)
{
    size_t col = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\n' || *p == '\r') {
            col = 0;
            continue;
        }
        if ((*p < 0x20 && *p != '\t') || *p >= 0x7f || ++col > LINE_MAX_SOFT)
            return false;
    }
    return true;
}

/* Text with its line endings made CRLF, ending with CRLF. */
static void
put_7bit(struct buf *out, const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\r' || s[i] == '\n') {
            if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
                i++;
            buf_puts(out, "\r\n");
        } else {
            buf_append(out, s + i, 1);
        }
    }
    if (n && s[n - 1] != '\n' && s[n - 1] != '\r')
        buf_puts(out, "\r\n");
}

/* ---- header fields -------------------------------------------------------------- */

static bool
is_ascii(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p >= 0x80)
            return false;
    return true;
}

static bool
has_crlf_or_ctl(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return true;
    return false;
}

bool
mime_field_name_ok(const char *name)
{
    if (!*name || strlen(name) > 76)
        return false;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        if (*p < 33 || *p > 126 || *p == ':')
            return false;
    return true;
}

/* Before a token of LEN characters: a space, or a fold when the line
 * would pass FOLD_AT. */
static void
separate(struct buf *out, size_t *col, size_t len)
{
    if (*col + 1 + len > FOLD_AT) {
        buf_puts(out, "\r\n ");
        *col = 1;
    } else {
        buf_puts(out, " ");
        (*col)++;
    }
}

/* Encoded-words of S[0..n), each at most EW_CHUNK bytes of whole UTF-8
 * characters; the first one follows a separator unless *first. */
static void
put_encoded_words(struct buf *out, const char *s, size_t n, size_t *col, bool *first)
{
    const unsigned char *p = (const unsigned char *)s;
    while (n > 0) {
        size_t take = n < EW_CHUNK ? n : EW_CHUNK;
        while (take < n && take > 0 && (p[take] & 0xc0) == 0x80)
            take--; /* do not split a character */
        if (take == 0)
            take = n < EW_CHUNK ? n : EW_CHUNK;
        size_t len = 12 + (take + 2) / 3 * 4;
        if (!*first)
            separate(out, col, len);
        buf_puts(out, "=?UTF-8?B?");
        b64_run(out, p, take);
        buf_puts(out, "?=");
        *col += len;
        *first = false;
        p += take;
        n -= take;
    }
}

/* The longest run of non-blank characters. */
static size_t
longest_word(const char *s)
{
    size_t best = 0, cur = 0;
    for (; *s; s++) {
        cur = (*s == ' ' || *s == '\t') ? 0 : cur + 1;
        if (cur > best)
            best = cur;
    }
    return best;
}

static bool
word_ascii(const char *w, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)w[i] >= 0x80)
            return false;
    return n < 2 || !memmem(w, n, "=?", 2);
}

/* Words are split at spaces (tabs become spaces); a run of words with
 * non-ASCII characters becomes encoded-words (the spaces inside the run
 * encoded with it, as white space between encoded-words is dropped when
 * decoding), ASCII words stay as they are, so addresses in structured
 * fields (To: Name <a@b>) survive. Lines fold at the spaces. */
void
mime_put_header(struct buf *out, const char *name, const char *value)
{
    buf_printf(out, "%s:", name);
    size_t col = strlen(name) + 1;
    bool first = false; /* a space follows the colon */
    if (longest_word(value) > 900) {
        put_encoded_words(out, value, strlen(value), &col, &first);
        buf_puts(out, "\r\n");
        return;
    }
    const char *p = value;
    for (;;) {
        const char *e = p;
        while (*e && *e != ' ' && *e != '\t')
            e++;
        if (word_ascii(p, (size_t)(e - p))) {
            separate(out, &col, (size_t)(e - p));
            buf_append(out, p, (size_t)(e - p));
            col += (size_t)(e - p);
        } else {
            /* extend the run over the following non-ASCII words */
            const char *end = e;
            while (*end) {
                const char *w = end + 1, *we = w;
                while (*we && *we != ' ' && *we != '\t')
                    we++;
                if (word_ascii(w, (size_t)(we - w)))
                    break;
                end = we;
            }
            put_encoded_words(out, p, (size_t)(end - p), &col, &first);
            e = end;
        }
        if (!*e)
            break;
        p = e + 1;
    }
    buf_puts(out, "\r\n");
}

static int
put_address(struct buf *out, const char *field, const char *path, const struct mime_address *a,
            char *err, size_t errlen)
{
    const char *at = strrchr(a->email, '@');
    if (!at || at == a->email || !at[1] || has_crlf_or_ctl(a->email) ||
        strpbrk(a->email, " <>()\",;")) {
        snprintf(err, errlen, "%s.email: not an e-mail address", path);
        return -1;
    }
    buf_printf(out, "%s: ", field);
    if (a->name && *a->name) {
        if (has_crlf_or_ctl(a->name)) {
            snprintf(err, errlen, "%s.name: control characters", path);
            return -1;
        }
        if (is_ascii(a->name) && !strstr(a->name, "=?") && strlen(a->name) < 200) {
            buf_puts(out, "\"");
            for (const char *p = a->name; *p; p++) {
                if (*p == '"' || *p == '\\')
                    buf_puts(out, "\\");
                buf_append(out, p, 1);
            }
            buf_puts(out, "\"");
        } else {
            size_t col = strlen(field) + 1;
            bool first = true;
            put_encoded_words(out, a->name, strlen(a->name), &col, &first);
        }
        buf_puts(out, "\r\n ");
    }
    buf_printf(out, "<%s>\r\n", a->email);
    return 0;
}

/* ---- structure ------------------------------------------------------------------ */

static void
random_hex(char *out, size_t bytes)
{
    unsigned char r[32];
    PGMTA_ASSERT(bytes <= sizeof r && RAND_bytes(r, (int)bytes) == 1);
    for (size_t i = 0; i < bytes; i++)
        snprintf(out + 2 * i, 3, "%02x", r[i]);
}

static void
new_boundary(char out[48])
{
    memcpy(out, "=_pgmta_", 8);
    random_hex(out + 8, 16);
}

static void
put_date(struct buf *out, time_t t)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct tm tm;
    gmtime_r(&t, &tm);
    buf_printf(out, "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n", days[tm.tm_wday], tm.tm_mday,
               months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

static void
put_message_id(struct buf *out, const char *domain)
{
    char r[33];
    random_hex(r, 16);
    buf_printf(out, "Message-ID: <%s@%s>\r\n", r, domain && *domain ? domain : "localhost");
}

static void
text_part(struct buf *out, const char *subtype, const char *s)
{
    bool plain = plain_7bit(s);
    buf_printf(out, "Content-Type: text/%s; charset=utf-8\r\nContent-Transfer-Encoding: %s\r\n\r\n",
               subtype, plain ? "7bit" : "quoted-printable");
    if (plain)
        put_7bit(out, s);
    else
        mime_qp_encode(out, s, strlen(s));
}

static bool
param_plain(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p >= 0x7f || *p == '"' || *p == '\\')
            return false;
    return strlen(s) < 60;
}

/* filename="x" or filename*=utf-8''%XX... (RFC 2231). */
static void
put_filename(struct buf *out, const char *param, const char *name)
{
    if (param_plain(name)) {
        buf_printf(out, ";\r\n %s=\"%s\"", param, name);
        return;
    }
    buf_printf(out, ";\r\n %s*=utf-8''", param);
    size_t col = strlen(param) + 10;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        /* RFC 2231 continuations are not needed for the lengths allowed */
        if (isalnum(*p) || strchr("-._~", *p)) {
            buf_append(out, p, 1);
            col++;
        } else {
            buf_printf(out, "%%%02X", *p);
            col += 3;
        }
    }
    (void)col;
}

static int
attachment_part(struct buf *out, const struct mime_attachment *a, size_t i, char *err,
                size_t errlen)
{
    const char *ct =
        a->content_type && *a->content_type ? a->content_type : "application/octet-stream";
    if (has_crlf_or_ctl(ct) || !is_ascii(ct) || !strchr(ct, '/') || strlen(ct) > 200) {
        snprintf(err, errlen, "content.attachments[%zu].content_type: expected type/subtype", i);
        return -1;
    }
    if (a->file_name && (has_crlf_or_ctl(a->file_name) || strlen(a->file_name) > 255)) {
        snprintf(err, errlen,
                 "content.attachments[%zu].file_name: control characters or longer "
                 "than 255 bytes",
                 i);
        return -1;
    }
    if (a->content_id &&
        (!*a->content_id || has_crlf_or_ctl(a->content_id) || !is_ascii(a->content_id) ||
         strpbrk(a->content_id, "<> ") || strlen(a->content_id) > 200)) {
        snprintf(err, errlen,
                 "content.attachments[%zu].content_id: printable ASCII without "
                 "'<', '>' or spaces expected",
                 i);
        return -1;
    }
    buf_printf(out, "Content-Type: %s", ct);
    if (a->file_name && *a->file_name)
        put_filename(out, "name", a->file_name);
    buf_puts(out, "\r\nContent-Transfer-Encoding: base64\r\n");
    buf_printf(out, "Content-Disposition: %s", a->content_id ? "inline" : "attachment");
    if (a->file_name && *a->file_name)
        put_filename(out, "filename", a->file_name);
    buf_puts(out, "\r\n");
    if (a->content_id)
        buf_printf(out, "Content-ID: <%s>\r\n", a->content_id);
    buf_puts(out, "\r\n");
    mime_base64_encode(out, a->data, a->len);
    return 0;
}

static void
alternative(struct buf *out, const struct mime_message *m)
{
    if (m->text_body && m->html_body) {
        char b[48];
        new_boundary(b);
        buf_printf(out, "Content-Type: multipart/alternative;\r\n boundary=\"%s\"\r\n\r\n", b);
        buf_printf(out, "--%s\r\n", b);
        text_part(out, "plain", m->text_body);
        buf_printf(out, "\r\n--%s\r\n", b);
        text_part(out, "html", m->html_body);
        buf_printf(out, "\r\n--%s--\r\n", b);
    } else {
        text_part(out, m->text_body ? "plain" : "html", m->text_body ? m->text_body : m->html_body);
    }
}

/* The attachments with (inline) or without a content_id, after the
 * multipart's first part; -1 on a bad attachment. Every part ends with
 * CRLF, and the CRLF before a delimiter belongs to the delimiter. */
static int
attachments(struct buf *out, const struct mime_message *m, bool inline_ones, const char *b,
            char *err, size_t errlen)
{
    for (size_t i = 0; i < m->nattachments; i++) {
        if ((m->attachments[i].content_id != NULL) != inline_ones)
            continue;
        buf_printf(out, "\r\n--%s\r\n", b);
        if (attachment_part(out, &m->attachments[i], i, err, errlen) < 0)
            return -1;
    }
    buf_printf(out, "\r\n--%s--\r\n", b);
    return 0;
}

static int
related(struct buf *out, const struct mime_message *m, size_t ninline, char *err, size_t errlen)
{
    if (!ninline) {
        alternative(out, m);
        return 0;
    }
    char b[48];
    new_boundary(b);
    buf_printf(out, "Content-Type: multipart/related;\r\n boundary=\"%s\"\r\n\r\n--%s\r\n", b, b);
    alternative(out, m);
    return attachments(out, m, true, b, err, errlen);
}

static bool
is_field(const char *name, const char *want)
{
    return strcasecmp(name, want) == 0;
}

int
mime_build(struct buf *out, const struct mime_message *m, char *err, size_t errlen)
{
    if (!m->text_body && !m->html_body) {
        snprintf(err, errlen, "content: text_body or html_body is required");
        return -1;
    }
    bool has_date = false, has_msgid = false;
    for (size_t i = 0; i < m->nheaders; i++) {
        const struct mime_header *h = &m->headers[i];
        if (!mime_field_name_ok(h->name)) {
            snprintf(err, errlen, "content.headers: \"%.80s\" is not a header field name", h->name);
            return -1;
        }
        if (has_crlf_or_ctl(h->value) || strlen(h->value) > 16384) {
            snprintf(err, errlen,
                     "content.headers.%s: control characters or longer than 16384 bytes", h->name);
            return -1;
        }
        if (is_field(h->name, "MIME-Version") || !strncasecmp(h->name, "Content-", 8)) {
            snprintf(err, errlen, "content.headers.%s: set by pgmta from the content's parts",
                     h->name);
            return -1;
        }
        if ((is_field(h->name, "From") && m->from.email) ||
            (is_field(h->name, "Reply-To") && m->reply_to.email) ||
            (is_field(h->name, "Subject") && m->subject)) {
            snprintf(err, errlen, "content.headers.%s: given twice (also as a content field)",
                     h->name);
            return -1;
        }
        has_date |= is_field(h->name, "Date");
        has_msgid |= is_field(h->name, "Message-ID");
    }
    if (m->from.email && put_address(out, "From", "content.from", &m->from, err, errlen) < 0)
        return -1;
    if (m->reply_to.email &&
        put_address(out, "Reply-To", "content.reply_to", &m->reply_to, err, errlen) < 0)
        return -1;
    if (m->subject) {
        if (has_crlf_or_ctl(m->subject) || strlen(m->subject) > 16384) {
            snprintf(err, errlen,
                     "content.subject: control characters or longer than 16384 "
                     "bytes");
            return -1;
        }
        mime_put_header(out, "Subject", m->subject);
    }
    if (!has_date)
        put_date(out, m->date);
    if (!has_msgid)
        put_message_id(out, m->msgid_domain);
    for (size_t i = 0; i < m->nheaders; i++)
        mime_put_header(out, m->headers[i].name, m->headers[i].value);
    buf_puts(out, "MIME-Version: 1.0\r\n");

    size_t ninline = 0, nmixed = 0;
    for (size_t i = 0; i < m->nattachments; i++) {
        if (m->attachments[i].content_id)
            ninline++;
        else
            nmixed++;
    }
    if (!nmixed)
        return related(out, m, ninline, err, errlen);
    char b[48];
    new_boundary(b);
    buf_printf(out, "Content-Type: multipart/mixed;\r\n boundary=\"%s\"\r\n\r\n--%s\r\n", b, b);
    if (related(out, m, ninline, err, errlen) < 0)
        return -1;
    return attachments(out, m, false, b, err, errlen);
}

/* ---- raw messages --------------------------------------------------------------- */

/* Does the header section (up to the first empty line) have field NAME? */
static bool
header_has(const char *s, size_t n, const char *name)
{
    size_t nl = strlen(name);
    size_t i = 0;
    while (i < n) {
        if (s[i] == '\r' || s[i] == '\n')
            return false; /* empty line: end of the header */
        if (n - i > nl && !strncasecmp(s + i, name, nl) && s[i + nl] == ':')
            return true;
        const char *eol = memchr(s + i, '\n', n - i);
        if (!eol)
            return false;
        i = (size_t)(eol - s) + 1;
    }
    return false;
}

void
mime_raw(struct buf *out, const char *s, size_t n, const char *msgid_domain, time_t date)
{
    if (!header_has(s, n, "Date"))
        put_date(out, date);
    if (!header_has(s, n, "Message-ID"))
        put_message_id(out, msgid_domain);
    buf_reserve(out, n + n / 16);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\r' && s[i] != '\n')
            continue;
        buf_append(out, s + run, i - run);
        buf_puts(out, "\r\n");
        if (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n')
            i++;
        run = i + 1;
    }
    buf_append(out, s + run, n - run);
    if (n && s[n - 1] != '\n' && s[n - 1] != '\r')
        buf_puts(out, "\r\n");
}
