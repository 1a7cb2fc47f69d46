/* verp: VERP addresses made and checked (see verp.h). A struct verp owns
 * copies of the verp entries and of the key; nothing points back into the
 * configuration. */
#include "verp.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "util.h"

struct verp_rule {
    char *sender_domain;
    char *job_prefix;
    char *bounce_domain;
    char *prefix;
};

struct verp {
    struct verp_rule *rules;
    size_t nrules;
    char *key;
};

struct verp *
verp_new(const struct conf *c)
{
    if (c->nverp == 0 || !c->verp_secret)
        return NULL;
    struct verp *v = xcalloc(1, sizeof *v);
    v->rules = xcalloc(c->nverp, sizeof *v->rules);
    for (size_t i = 0; i < c->nverp; i++) {
        const struct conf_verp *e = &c->verp[i];
        struct verp_rule *r = &v->rules[v->nrules++];
        r->sender_domain = e->sender_domain ? xstrdup(e->sender_domain) : NULL;
        r->job_prefix = e->job_prefix ? xstrdup(e->job_prefix) : NULL;
        r->bounce_domain = xstrdup(e->bounce_domain);
        r->prefix = xstrdup(e->prefix ? e->prefix : VERP_DEFAULT_PREFIX);
    }
    v->key = xstrdup(c->verp_secret);
    return v;
}

void
verp_free(struct verp *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->nrules; i++) {
        free(v->rules[i].sender_domain);
        free(v->rules[i].job_prefix);
        free(v->rules[i].bounce_domain);
        free(v->rules[i].prefix);
    }
    free(v->rules);
    OPENSSL_cleanse(v->key, strlen(v->key));
    free(v->key);
    free(v);
}

void
verp_tag(const char *key, size_t keylen, long long rcpt_id, char out[VERP_TAG_LEN + 1])
{
    char id[32];
    int n = snprintf(id, sizeof id, "%lld", rcpt_id);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    PGMTA_ASSERT(HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)id, (size_t)n, mac,
                      &maclen) != NULL);
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < VERP_TAG_LEN; i++)
        out[i] = hex[(mac[i / 2] >> (i % 2 ? 0 : 4)) & 15];
    out[VERP_TAG_LEN] = '\0';
}

static bool
rule_matches(const struct verp_rule *r, const char *from, const char *job_id)
{
    if (r->job_prefix && (!job_id || strncmp(job_id, r->job_prefix, strlen(r->job_prefix)) != 0))
        return false;
    if (r->sender_domain) {
        const char *at = strrchr(from, '@');
        if (!at || strcasecmp(at + 1, r->sender_domain) != 0)
            return false;
    }
    return true;
}

char *
verp_sender(const struct verp *v, const char *from, const char *job_id, long long rcpt_id)
{
    if (!v || !from || !*from)
        return NULL;
    for (size_t i = 0; i < v->nrules; i++) {
        const struct verp_rule *r = &v->rules[i];
        if (!rule_matches(r, from, job_id))
            continue;
        char tag[VERP_TAG_LEN + 1];
        verp_tag(v->key, strlen(v->key), rcpt_id, tag);
        return xasprintf("%s+%lld-%s@%s", r->prefix, rcpt_id, tag, r->bounce_domain);
    }
    return NULL;
}

enum verp_check
verp_check(const char *addr, const char *key, size_t keylen, long long *rcpt_id)
{
    const char *at = addr ? strrchr(addr, '@') : NULL;
    if (!at)
        return VERP_NONE;
    /* the last '+' of the local part: a prefix may not hold one (F_NAME) */
    const char *plus = NULL;
    for (const char *p = addr; p < at; p++)
        if (*p == '+')
            plus = p;
    if (!plus || plus == addr)
        return VERP_NONE;
    const char *p = plus + 1;
    long long id = 0;
    size_t digits = 0;
    while (p < at && isdigit((unsigned char)*p) && digits < 18) {
        id = id * 10 + (*p++ - '0');
        digits++;
    }
    if (digits == 0 || p >= at || *p != '-' || (size_t)(at - p - 1) != VERP_TAG_LEN)
        return VERP_NONE;
    const char *tag = p + 1;
    for (size_t i = 0; i < VERP_TAG_LEN; i++)
        if (!isxdigit((unsigned char)tag[i]))
            return VERP_NONE;
    char want[VERP_TAG_LEN + 1];
    verp_tag(key, keylen, id, want);
    /* some relays change the case of local parts */
    unsigned diff = 0;
    for (size_t i = 0; i < VERP_TAG_LEN; i++)
        diff |= (unsigned)(tolower((unsigned char)tag[i]) ^ want[i]);
    if (diff)
        return VERP_FORGED;
    *rcpt_id = id;
    return VERP_OK;
}
