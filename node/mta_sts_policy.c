/* mta_sts_policy: parsing of the _mta-sts TXT record and of the policy file,
 * and MX pattern matching (RFC 8461 3.1, 3.2, 4.1). A struct mta_sts_policy
 * owns its pattern strings. */
#include "mta_sts_policy.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hostport.h"
#include "util.h"

static const char *const mode_names[] = {"none", "testing", "enforce"};

const char *
mta_sts_mode_name(enum mta_sts_mode m)
{
    return (unsigned)m < 3 ? mode_names[m] : "none";
}

bool
mta_sts_mode_parse(const char *name, enum mta_sts_mode *m)
{
    for (unsigned i = 0; i < 3; i++) {
        if (strcmp(name, mode_names[i]) == 0) {
            *m = (enum mta_sts_mode)i;
            return true;
        }
    }
    return false;
}

static bool
is_wsp(char c)
{
    return c == ' ' || c == '\t';
}

bool
mta_sts_txt_parse(const char *txt, size_t len, char *id, bool *not_sts, const char **why)
{
    *not_sts = false;
    id[0] = '\0';
    if (len < 7 || memcmp(txt, "v=STSv1", 7) != 0 ||
        (len > 7 && txt[7] != ';' && !is_wsp(txt[7]))) {
        *not_sts = true;
        *why = "not an STSv1 record";
        return false;
    }
    /* sts-text-record = sts-version 1*(*WSP %x3B *WSP sts-field) [%x3B] */
    size_t i = 7;
    bool have_id = false;
    while (i < len) {
        while (i < len && is_wsp(txt[i]))
            i++;
        if (i == len)
            break;
        if (txt[i] != ';') {
            *why = "fields must be separated by ';'";
            return false;
        }
        i++;
        while (i < len && is_wsp(txt[i]))
            i++;
        if (i == len)
            break;
        size_t k = i;
        while (i < len &&
               (isalnum((unsigned char)txt[i]) || txt[i] == '_' || txt[i] == '-' || txt[i] == '.'))
            i++;
        if (i == k || i == len || txt[i] != '=') {
            *why = "malformed field";
            return false;
        }
        size_t klen = i - k;
        i++;
        size_t v = i;
        while (i < len && txt[i] != ';' && !is_wsp(txt[i]) && (unsigned char)txt[i] > 0x20 &&
               (unsigned char)txt[i] < 0x7f && txt[i] != '=')
            i++;
        size_t vlen = i - v;
        if (klen == 2 && memcmp(txt + k, "id", 2) == 0) {
            if (have_id) {
                *why = "more than one id";
                return false;
            }
            if (vlen == 0 || vlen > MTA_STS_ID_MAX) {
                *why = "id must have 1 to 32 characters";
                return false;
            }
            for (size_t j = 0; j < vlen; j++) {
                if (!isalnum((unsigned char)txt[v + j])) {
                    *why = "id must be letters and digits";
                    return false;
                }
            }
            memcpy(id, txt + v, vlen);
            id[vlen] = '\0';
            have_id = true;
        } else if (vlen == 0) {
            *why = "empty field value";
            return false;
        }
    }
    if (!have_id) {
        *why = "no id";
        return false;
    }
    return true;
}

void
mta_sts_policy_clear(struct mta_sts_policy *p)
{
    for (size_t i = 0; i < p->nmx; i++)
        free(p->mx[i]);
    free(p->mx);
    memset(p, 0, sizeof *p);
}

void
mta_sts_policy_copy(struct mta_sts_policy *dst, const struct mta_sts_policy *src)
{
    *dst = *src;
    dst->mx = src->nmx ? xcalloc(src->nmx, sizeof *dst->mx) : NULL;
    for (size_t i = 0; i < src->nmx; i++)
        dst->mx[i] = xstrdup(src->mx[i]);
}

bool
mta_sts_policy_add_mx(struct mta_sts_policy *p, const char *pattern, size_t len)
{
    if (p->nmx >= MTA_STS_MAX_MX)
        return false;
    const char *name = pattern;
    size_t nlen = len;
    if (nlen >= 2 && name[0] == '*' && name[1] == '.') {
        name += 2;
        nlen -= 2;
    }
    if (nlen > 0 && name[nlen - 1] == '.')
        nlen--; /* a trailing dot is the same name */
    if (nlen == 0 || nlen > 253 || memchr(name, '*', nlen))
        return false;
    size_t skip = (size_t)(name - pattern);
    char *s = xmalloc(skip + nlen + 1);
    for (size_t i = 0; i < skip + nlen; i++)
        s[i] = (char)tolower((unsigned char)pattern[i]);
    s[skip + nlen] = '\0';
    if (!hostport_is_hostname(s + skip, nlen) || hostport_is_ip_literal(s + skip)) {
        free(s);
        return false;
    }
    p->mx = xrealloc(p->mx, (p->nmx + 1) * sizeof *p->mx);
    p->mx[p->nmx++] = s;
    return true;
}

int
mta_sts_policy_parse(const char *text, size_t len, struct mta_sts_policy *p, char *why,
                     size_t whylen)
{
    memset(p, 0, sizeof *p);
    if (len > MTA_STS_MAX_POLICY_BYTES) {
        snprintf(why, whylen, "policy larger than %u bytes", MTA_STS_MAX_POLICY_BYTES);
        return -1;
    }
    bool have_version = false, have_mode = false, have_age = false;
    size_t lineno = 0;
    for (size_t i = 0; i < len;) {
        size_t start = i;
        while (i < len && text[i] != '\n')
            i++;
        size_t end = i;
        if (i < len)
            i++; /* the LF */
        if (end > start && text[end - 1] == '\r')
            end--;
        lineno++;
        const char *l = text + start;
        size_t n = end - start;
        if (n == 0)
            continue; /* an empty line (e.g. the final CRLF) */
        if (memchr(l, '\0', n) || memchr(l, '\r', n)) {
            snprintf(why, whylen, "line %zu: control character", lineno);
            goto fail;
        }
        const char *colon = memchr(l, ':', n);
        if (!colon || colon == l) {
            snprintf(why, whylen, "line %zu: no \"key: value\"", lineno);
            goto fail;
        }
        size_t klen = (size_t)(colon - l);
        for (size_t j = 0; j < klen; j++) {
            unsigned char c = (unsigned char)l[j];
            if (!isalnum(c) && c != '_' && c != '-' && c != '.') {
                snprintf(why, whylen, "line %zu: bad key", lineno);
                goto fail;
            }
        }
        const char *v = colon + 1;
        const char *vend = l + n;
        while (v < vend && is_wsp(*v))
            v++;
        while (vend > v && is_wsp(vend[-1]))
            vend--;
        size_t vlen = (size_t)(vend - v);
        char val[256];
        bool fits = vlen < sizeof val;
        if (fits) {
            memcpy(val, v, vlen);
            val[vlen] = '\0';
        }
        if (klen == 7 && memcmp(l, "version", 7) == 0) {
            if (have_version || !fits || strcmp(val, "STSv1") != 0) {
                snprintf(why, whylen, "line %zu: version must be STSv1, once", lineno);
                goto fail;
            }
            have_version = true;
        } else if (klen == 4 && memcmp(l, "mode", 4) == 0) {
            if (have_mode || !fits || !mta_sts_mode_parse(val, &p->mode)) {
                snprintf(why, whylen, "line %zu: mode must be enforce, testing or none, once",
                         lineno);
                goto fail;
            }
            have_mode = true;
        } else if (klen == 7 && memcmp(l, "max_age", 7) == 0) {
            bool digits = fits && vlen > 0 && vlen <= 10;
            for (size_t j = 0; digits && j < vlen; j++)
                digits = isdigit((unsigned char)val[j]) != 0;
            unsigned long long age = digits ? strtoull(val, NULL, 10) : 0;
            if (have_age || !digits || age > MTA_STS_MAX_AGE_S) {
                snprintf(why, whylen, "line %zu: max_age must be 0 to %u seconds, once", lineno,
                         MTA_STS_MAX_AGE_S);
                goto fail;
            }
            p->max_age_s = (uint32_t)age;
            have_age = true;
        } else if (klen == 2 && memcmp(l, "mx", 2) == 0) {
            if (!mta_sts_policy_add_mx(p, v, vlen)) {
                snprintf(why, whylen, "line %zu: %s", lineno,
                         p->nmx >= MTA_STS_MAX_MX ? "too many mx patterns" : "bad mx pattern");
                goto fail;
            }
        }
        /* other keys: ignored (RFC 8461 3.2 extensions) */
    }
    if (!have_version || !have_mode || !have_age) {
        snprintf(why, whylen, "missing %s",
                 !have_version ? "version"
                 : !have_mode  ? "mode"
                               : "max_age");
        goto fail;
    }
    if (p->mode != MTA_STS_NONE && p->nmx == 0) {
        snprintf(why, whylen, "no mx pattern");
        goto fail;
    }
    return 0;
fail:
    mta_sts_policy_clear(p);
    return -1;
}

bool
mta_sts_mx_match(const char *pattern, const char *host)
{
    size_t hl = strlen(host);
    if (hl > 0 && host[hl - 1] == '.')
        hl--;
    if (hl == 0)
        return false;
    if (pattern[0] == '*' && pattern[1] == '.') {
        /* one label, then the rest: "*.example.com" matches
         * "mx.example.com", not "a.b.example.com" nor "example.com" */
        const char *dot = memchr(host, '.', hl);
        if (!dot || dot == host)
            return false;
        size_t rest = hl - (size_t)(dot + 1 - host);
        return strlen(pattern + 2) == rest && strncasecmp(pattern + 2, dot + 1, rest) == 0;
    }
    return strlen(pattern) == hl && strncasecmp(pattern, host, hl) == 0;
}

bool
mta_sts_policy_allows(const struct mta_sts_policy *p, const char *host)
{
    if (!host)
        return false;
    for (size_t i = 0; i < p->nmx; i++)
        if (mta_sts_mx_match(p->mx[i], host))
            return true;
    return false;
}
