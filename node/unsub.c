/* unsub: List-Unsubscribe headers and their tokens (see unsub.h).
 *
 * Ownership: struct unsub owns copies of the configured entries and the
 * secret (cleared before it is freed); it is read-only after unsub_new, so
 * the delivery sessions of a pipe and the listener share one without locks.
 * Every returned string belongs to the caller. Nothing here does I/O but
 * reading the secret file in unsub_new. */
#include "unsub.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "addr.h"
#include "conf.h"
#include "dkim.h"
#include "hdr.h"
#include "util.h"
#include "webhook.h"

/* The base URL plus a token of UNSUB_TOKEN_MAX characters must fit in one
 * header line of 998 octets. */
#define UNSUB_URL_MAX 200
#define UNSUB_LINE_MAX 998

struct unsub_entry {
    char *domain;
    char *job_prefix; /* NULL: any job */
    char *url;
    char *mailto; /* NULL: no mailto: URI */
    bool scope_job;
};

struct unsub {
    unsigned char *key;
    size_t keylen;
    struct unsub_entry *entries;
    size_t nentries;
};

/* ---- base64url (RFC 4648 §5), no padding ------------------------------------ */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void
b64url_encode(struct buf *out, const unsigned char *p, size_t n)
{
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        char q[4] = {b64url[v >> 18], b64url[(v >> 12) & 63], b64url[(v >> 6) & 63],
                     b64url[v & 63]};
        buf_append(out, q, 4);
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        char q[2] = {b64url[v >> 18], b64url[(v >> 12) & 63]};
        buf_append(out, q, 2);
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        char q[3] = {b64url[v >> 18], b64url[(v >> 12) & 63], b64url[(v >> 6) & 63]};
        buf_append(out, q, 3);
    }
}

static int
b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes S (N characters) into OUT (room for N * 3 / 4 octets). Strict:
 * only the alphabet, no padding, and the unused bits of the last character
 * zero, so that each token has exactly one spelling. Returns the octet
 * count or -1. */
static long
b64url_decode(const char *s, size_t n, unsigned char *out)
{
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1;
    return (long)o;
}

/* ---- tokens ------------------------------------------------------------------ */

static void
tag_of(const struct unsub *u, const unsigned char *data, size_t n, unsigned char tag[UNSUB_TAG_LEN])
{
    unsigned int len = 0;
    PGMTA_ASSERT(HMAC(EVP_sha256(), u->key, (int)u->keylen, data, n, tag, &len) != NULL &&
                 len == UNSUB_TAG_LEN);
}

char *
unsub_token_make(const struct unsub *u, const char *rcpt, const char *job, size_t scope_len)
{
    size_t rl = rcpt ? strlen(rcpt) : 0, jl = job ? strlen(job) : 0;
    if (!u || !u->key || rl == 0 || rl > UNSUB_RCPT_MAX || jl > UNSUB_JOB_MAX || scope_len > jl)
        return NULL;
    unsigned char raw[UNSUB_RAW_MAX];
    size_t n = 0;
    raw[n++] = UNSUB_TOKEN_VERSION;
    raw[n++] = (unsigned char)jl;
    raw[n++] = (unsigned char)scope_len;
    memcpy(raw + n, job ? job : "", jl);
    n += jl;
    memcpy(raw + n, rcpt, rl);
    n += rl;
    tag_of(u, raw, n, raw + n);
    n += UNSUB_TAG_LEN;
    struct buf out;
    buf_init(&out);
    b64url_encode(&out, raw, n);
    buf_append(&out, "", 1);
    return out.data;
}

static bool
has_nul_or_ctl(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 || p[i] == 0x7f)
            return true;
    return false;
}

int
unsub_token_verify(const struct unsub *u, const char *token, char **rcpt, char **job, char **scope)
{
    if (!u || !u->key || !token)
        return -1;
    size_t n = strnlen(token, UNSUB_TOKEN_MAX + 1);
    if (n > UNSUB_TOKEN_MAX)
        return -1;
    unsigned char raw[UNSUB_RAW_MAX + 3];
    long rn = b64url_decode(token, n, raw);
    /* version, two lengths, a recipient of at least "a@b", the tag */
    if (rn < 3 + 3 + UNSUB_TAG_LEN || raw[0] != UNSUB_TOKEN_VERSION)
        return -1;
    size_t len = (size_t)rn, jl = raw[1], sl = raw[2];
    if (sl > jl || 3 + jl + 3 + UNSUB_TAG_LEN > len)
        return -1;
    size_t rl = len - 3 - jl - UNSUB_TAG_LEN;
    if (rl > UNSUB_RCPT_MAX)
        return -1;
    unsigned char want[UNSUB_TAG_LEN];
    tag_of(u, raw, len - UNSUB_TAG_LEN, want);
    if (CRYPTO_memcmp(want, raw + len - UNSUB_TAG_LEN, UNSUB_TAG_LEN) != 0)
        return -1;
    /* Made by us, but made from rows: still no control octets in strings. */
    const unsigned char *jp = raw + 3, *rp = raw + 3 + jl;
    if (has_nul_or_ctl(jp, jl) || has_nul_or_ctl(rp, rl) ||
        !addr_validate((const char *)rp, rl, NULL, NULL))
        return -1;
    *rcpt = xstrndup((const char *)rp, rl);
    *job = jl ? xstrndup((const char *)jp, jl) : NULL;
    *scope = sl ? xstrndup((const char *)jp, sl) : NULL;
    return 0;
}

const char *
unsub_subject_token(const char *subject, size_t *len)
{
    size_t pl = strlen(UNSUB_MAILTO_SUBJECT);
    if (!subject)
        return NULL;
    while (*subject == ' ' || *subject == '\t')
        subject++;
    if (strncasecmp(subject, UNSUB_MAILTO_SUBJECT, pl) != 0)
        return NULL;
    const char *t = subject + pl;
    size_t n = 0;
    while (b64url_value((unsigned char)t[n]) >= 0)
        n++;
    for (const char *p = t + n; *p; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
            return NULL;
    if (n == 0)
        return NULL;
    *len = n;
    return t;
}

/* ---- headers ----------------------------------------------------------------- */

static bool
has_list_unsubscribe(const unsigned char *msg, size_t len)
{
    struct hdr_iter it;
    struct hdr_field f;
    hdr_iter_init_flags(&it, (const char *)msg, len, HDR_BARE_CR);
    while (hdr_next(&it, &f))
        if (f.valid && hdr_name_is(&f, "List-Unsubscribe"))
            return true;
    return false;
}

const struct unsub_entry *
unsub_match(const struct unsub *u, const char *mail_from, const char *job, const unsigned char *msg,
            size_t len)
{
    /* a job id no token can carry: no header, and no reason to split */
    if (!u || u->nentries == 0 || !u->key || (job && strlen(job) > UNSUB_JOB_MAX))
        return NULL;
    char *domain = dkim_sender_domain(mail_from, msg, len);
    if (!domain)
        return NULL;
    const struct unsub_entry *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < u->nentries; i++) {
        const struct unsub_entry *e = &u->entries[i];
        if (strcasecmp(e->domain, domain) != 0)
            continue;
        size_t pl = e->job_prefix ? strlen(e->job_prefix) : 0;
        if (pl && (!job || strncmp(job, e->job_prefix, pl) != 0))
            continue;
        if (!best || pl > best_len) {
            best = e;
            best_len = pl;
        }
    }
    free(domain);
    if (best && has_list_unsubscribe(msg, len))
        return NULL;
    return best;
}

char *
unsub_headers(const struct unsub *u, const struct unsub_entry *e, const char *rcpt, const char *job)
{
    size_t scope = e->scope_job && e->job_prefix ? strlen(e->job_prefix) : 0;
    char *token = unsub_token_make(u, rcpt, job, scope);
    if (!token)
        return NULL;
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "List-Unsubscribe: <%s%s>", e->url, token);
    /* The mailto: URI on a continuation line, left out in the rare case
     * where it would not fit in one (the https URI is the one that counts). */
    if (e->mailto && strlen(" <mailto:?subject=>") + strlen(UNSUB_MAILTO_SUBJECT) +
                             strlen(e->mailto) + strlen(token) <=
                         UNSUB_LINE_MAX)
        buf_printf(&b, ",\r\n <mailto:%s?subject=%s%s>", e->mailto, UNSUB_MAILTO_SUBJECT, token);
    buf_puts(&b, "\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    free(token);
    return b.data;
}

/* ---- configuration ------------------------------------------------------------- */

char *
unsub_read_secret(const char *path, size_t *len, char *err, size_t errlen)
{
    char *k = webhook_read_secret(path, len, err, errlen);
    if (k && *len < UNSUB_SECRET_MIN) {
        snprintf(err, errlen, "secret-file %s: the secret is shorter than %d characters", path,
                 UNSUB_SECRET_MIN);
        OPENSSL_cleanse(k, *len);
        free(k);
        return NULL;
    }
    return k;
}

int
unsub_url_check(const char *url, char *err, size_t errlen)
{
    if (strncasecmp(url, "https://", 8) != 0 || !url[8]) {
        snprintf(err, errlen, "url: an https:// URL is required (RFC 8058)");
        return -1;
    }
    if (strlen(url) > UNSUB_URL_MAX) {
        snprintf(err, errlen, "url: longer than %d characters", UNSUB_URL_MAX);
        return -1;
    }
    /* The token is appended as it is and the URI goes inside <...>. */
    for (const unsigned char *p = (const unsigned char *)url; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f || strchr("<>\"{}|\\^`#", *p)) {
            snprintf(err, errlen, "url: character 0x%02x not allowed", *p);
            return -1;
        }
    }
    return 0;
}

struct unsub *
unsub_new_key(const void *key, size_t keylen)
{
    struct unsub *u = xcalloc(1, sizeof *u);
    if (keylen) {
        u->key = xmalloc(keylen);
        memcpy(u->key, key, keylen);
        u->keylen = keylen;
    }
    return u;
}

struct unsub *
unsub_new(const struct conf *conf, char *err, size_t errlen)
{
    struct unsub *u = xcalloc(1, sizeof *u);
    if (conf->unsubscribe_secret_file) {
        size_t len = 0;
        char *k = unsub_read_secret(conf->unsubscribe_secret_file, &len, err, errlen);
        if (!k) {
            free(u);
            return NULL;
        }
        u->key = (unsigned char *)k;
        u->keylen = len;
    }
    u->entries = xcalloc(conf->nlist_unsubscribe + 1, sizeof *u->entries);
    for (size_t i = 0; i < conf->nlist_unsubscribe; i++) {
        const struct conf_list_unsubscribe *c = &conf->list_unsubscribe[i];
        struct unsub_entry *e = &u->entries[u->nentries++];
        e->domain = xstrdup(c->domain);
        e->job_prefix = c->job_prefix ? xstrdup(c->job_prefix) : NULL;
        e->url = xstrdup(c->url);
        e->mailto = c->mailto ? xstrdup(c->mailto) : NULL;
        e->scope_job = c->suppression_scope && !strcmp(c->suppression_scope, "job-prefix");
    }
    return u;
}

bool
unsub_has_secret(const struct unsub *u)
{
    return u && u->key;
}

void
unsub_free(struct unsub *u)
{
    if (!u)
        return;
    if (u->key)
        OPENSSL_cleanse(u->key, u->keylen);
    free(u->key);
    for (size_t i = 0; i < u->nentries; i++) {
        free(u->entries[i].domain);
        free(u->entries[i].job_prefix);
        free(u->entries[i].url);
        free(u->entries[i].mailto);
    }
    free(u->entries);
    free(u);
}
