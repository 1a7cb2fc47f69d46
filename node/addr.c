/* addr: e-mail address validation with the rules of sql/010_validate.sql
 * (mta.address_domain_full), check for check and in the same order, so the
 * first reason found is the one SQL reports. Owns nothing. */
#include "addr.h"

#include <arpa/inet.h>
#include <string.h>
#include <strings.h>

static bool
fail(const char **why, const char *reason)
{
    if (why)
        *why = reason;
    return false;
}

static bool
has(const char *s, size_t len, char c)
{
    return memchr(s, c, len) != NULL;
}

/* "[d.d.d.d]" with 1..3 digits per octet, each <= 255. */
static int
ipv4_literal(const char *d, size_t n)
{
    if (n < 9 || d[0] != '[' || d[n - 1] != ']')
        return 0;
    size_t i = 1;
    for (int part = 0; part < 4; part++) {
        size_t digits = 0;
        unsigned v = 0;
        while (i < n - 1 && d[i] >= '0' && d[i] <= '9' && digits < 4) {
            v = v * 10 + (unsigned)(d[i] - '0');
            digits++;
            i++;
        }
        if (digits == 0 || digits > 3)
            return 0;
        if (v > 255)
            return -1; /* the shape is right, the value is not */
        if (part < 3) {
            if (i >= n - 1 || d[i] != '.')
                return 0;
            i++;
        }
    }
    return i == n - 1 ? 1 : 0;
}

/* "[IPv6:...]" (case-insensitive tag) of [0-9a-fA-F:.]: 1 valid, -1 shape
 * right but no address (SQL's inet cast fails), 0 not this shape. */
static int
ipv6_literal(const char *d, size_t n)
{
    if (n < 8 || d[0] != '[' || d[n - 1] != ']' || strncasecmp(d + 1, "ipv6:", 5) != 0)
        return 0;
    const char *a = d + 6;
    size_t al = n - 7;
    for (size_t i = 0; i < al; i++) {
        char c = a[i];
        bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                  c == ':' || c == '.';
        if (!ok)
            return 0;
    }
    char tmp[64];
    if (al >= sizeof tmp)
        return -1;
    memcpy(tmp, a, al);
    tmp[al] = '\0';
    unsigned char buf[16];
    /* PostgreSQL's inet takes IPv4 text too */
    if (inet_pton(AF_INET6, tmp, buf) == 1 || inet_pton(AF_INET, tmp, buf) == 1)
        return 1;
    return -1;
}

static bool
check_domain(const char *d, size_t n, const char **why)
{
    if (has(d, n, ' '))
        return fail(why, "space in the domain");
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && d[i] != '.')
            continue;
        size_t ll = i - start;
        const char *l = d + start;
        if (ll == 0)
            return fail(why, "empty label in the domain");
        if (ll > 63)
            return fail(why, "domain label is too long, at most 63 octets allowed");
        for (size_t k = 0; k < ll; k++) {
            unsigned char c = (unsigned char)l[k];
            bool ok = c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9') || c == '-';
            if (!ok)
                return fail(why, "domain has a character other than letters, digits, '-' and '.'");
        }
        if (l[0] == '-' || l[ll - 1] == '-')
            return fail(why, "domain label starts or ends with '-'");
        start = i + 1;
    }
    return true;
}

bool
addr_validate(const char *s, size_t len, struct addr_parts *out, const char **why)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!s || len == 0)
        return fail(why, "empty address");
    if (has(s, len, '\r') || has(s, len, '\n'))
        return fail(why, "contains CR or LF");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return fail(why, c ? "contains a control character" : "contains a NUL byte");
    }
    if (has(s, len, '<') || has(s, len, '>'))
        return fail(why, "contains '<' or '>'");
    if (len > ADDR_MAX)
        return fail(why, "address is too long, at most 254 octets allowed");
    size_t local_len, dom_off;
    bool quoted = s[0] == '"';
    if (quoted) {
        /* ^("(?:[^"\\]|\\.)*")@(.*)$ */
        size_t i = 1;
        while (i < len && s[i] != '"') {
            if (s[i] == '\\') {
                if (i + 1 >= len)
                    break;
                i++;
            }
            i++;
        }
        if (i >= len || s[i] != '"' || i + 1 >= len || s[i + 1] != '@')
            return fail(why, "quoted local part not closed or not followed by '@'");
        local_len = i + 1;
        dom_off = i + 2;
        if (local_len == 2)
            return fail(why, "empty local part");
        for (size_t k = 0; k + 1 < local_len; k++) {
            unsigned char n = (unsigned char)s[k + 1];
            if (s[k] == '\\' && (n < 0x20 || n > 0x7e))
                return fail(why, "backslash in the quoted local part not followed by a "
                                 "printable character");
        }
    } else {
        const char *at = NULL;
        for (size_t i = 0; i < len; i++)
            if (s[i] == '@')
                at = s + i;
        if (!at)
            return fail(why, "no '@'");
        local_len = (size_t)(at - s);
        dom_off = local_len + 1;
        if (has(s, local_len, '@'))
            return fail(why, "more than one '@' outside a quoted local part");
        if (local_len == 0)
            return fail(why, "empty local part");
        if (has(s, local_len, ' '))
            return fail(why, "space outside quotes");
        for (size_t i = 0; i < local_len; i++)
            if (strchr("\"(),:;[]\\", s[i]))
                return fail(why,
                            "local part contains a special character (\"(),:;[]\\) outside quotes");
        for (size_t i = 0; i < local_len; i++)
            if (s[i] == '.' && (i == 0 || i + 1 == local_len || s[i + 1] == '.'))
                return fail(why, "local part starts or ends with '.' or has '..'");
    }
    if (local_len > ADDR_LOCAL_MAX)
        return fail(why, "local part is too long, at most 64 octets allowed");
    const char *d = s + dom_off;
    size_t dl = len - dom_off;
    if (dl == 0)
        return fail(why, "empty domain");
    if (dl > ADDR_DOMAIN_MAX)
        return fail(why, "domain is too long, at most 255 octets allowed");
    bool literal = false;
    if (d[0] == '[') {
        int v4 = ipv4_literal(d, dl);
        if (v4 < 0)
            return fail(why, "invalid IPv4 address literal");
        if (v4 == 0) {
            int v6 = ipv6_literal(d, dl);
            if (v6 < 0)
                return fail(why, "invalid IPv6 address literal");
            if (v6 == 0)
                return fail(why, "invalid address literal");
        }
        literal = true;
    } else if (!check_domain(d, dl, why)) {
        return false;
    }
    if (out) {
        out->local_len = local_len;
        out->domain_off = dom_off;
        out->domain_len = dl;
        out->quoted = quoted;
        out->literal = literal;
    }
    return true;
}

bool
addr_validate_str(const char *s, struct addr_parts *out, const char **why)
{
    return addr_validate(s, s ? strlen(s) : 0, out, why);
}
