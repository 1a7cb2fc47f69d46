/* dane: the TLSA lookups of a session's MX hosts (RFC 7672 2.2). */
#include "dane.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

bool
dane_tlsa_usable(const struct dns_tlsa *t)
{
    if (t->usage != 2 && t->usage != 3)
        return false; /* PKIX-TA/PKIX-EE: not for SMTP (3.1.3) */
    if (t->selector > 1)
        return false;
    switch (t->mtype) {
    case 0:
        return t->len > 0;
    case 1:
        return t->len == 32;
    case 2:
        return t->len == 64;
    default:
        return false;
    }
}

const struct dane_host *
dane_find(const struct dane_set *s, const char *name)
{
    for (size_t i = 0; s && name && i < s->nhosts; i++)
        if (!strcmp(s->hosts[i].name, name))
            return &s->hosts[i];
    return NULL;
}

bool
dane_wanted(const struct dns_result *res)
{
    for (size_t i = 0; res->status == DNS_OK && i < res->nhosts; i++)
        if (res->hosts[i].dnssec)
            return true;
    return false;
}

void
dane_set_copy(struct dane_set *to, const struct dane_set *from)
{
    to->nhosts = from->nhosts;
    to->hosts = xcalloc(from->nhosts ? from->nhosts : 1, sizeof *to->hosts);
    for (size_t i = 0; i < from->nhosts; i++) {
        const struct dane_host *f = &from->hosts[i];
        struct dane_host *t = &to->hosts[i];
        *t = *f;
        t->name = xstrdup(f->name);
        t->tlsa = xcalloc(f->ntlsa ? f->ntlsa : 1, sizeof *t->tlsa);
        for (size_t k = 0; k < f->ntlsa; k++) {
            t->tlsa[k] = f->tlsa[k];
            t->tlsa[k].data = xmalloc(f->tlsa[k].len);
            memcpy(t->tlsa[k].data, f->tlsa[k].data, f->tlsa[k].len);
        }
    }
}

void
dane_set_clear(struct dane_set *s)
{
    for (size_t i = 0; i < s->nhosts; i++) {
        struct dane_host *h = &s->hosts[i];
        for (size_t k = 0; k < h->ntlsa; k++)
            free(h->tlsa[k].data);
        free(h->tlsa);
        free(h->name);
    }
    free(s->hosts);
    s->hosts = NULL;
    s->nhosts = 0;
}

struct dane_lookup {
    struct dane_request *r;
    size_t host;
    struct dns_txt_request *q;
};

struct dane_request {
    struct dane_set *out;
    struct dane_lookup *lookups;
    size_t nlookups, pending;
    dane_cb cb;
    void *arg;
};

static void
request_free(struct dane_request *r)
{
    for (size_t i = 0; i < r->nlookups; i++)
        dns_txt_cancel(r->lookups[i].q);
    free(r->lookups);
    free(r);
}

static void
on_tlsa(const struct dns_tlsa_result *res, void *arg)
{
    struct dane_lookup *l = arg;
    struct dane_request *r = l->r;
    struct dane_host *h = &r->out->hosts[l->host];
    l->q = NULL;
    if (res->status == DNS_TEMPFAIL) {
        /* the MX host was validated: a failing TLSA lookup may hide a
         * downgrade (2.2.1), the host is not used */
        h->state = DANE_BOGUS;
    } else if (res->status == DNS_OK && res->validated) {
        h->tlsa = xcalloc(res->ntlsa ? res->ntlsa : 1, sizeof *h->tlsa);
        for (size_t i = 0; i < res->ntlsa; i++) {
            if (!dane_tlsa_usable(&res->tlsa[i]))
                continue;
            struct dns_tlsa *t = &h->tlsa[h->ntlsa++];
            *t = res->tlsa[i];
            t->data = xmalloc(t->len);
            memcpy(t->data, res->tlsa[i].data, t->len);
        }
        if (h->ntlsa > 0)
            h->state = DANE_REQUIRED;
    }
    log_debug("dane host=%s tlsa=%zu usable=%zu validated=%d state=%s", h->name, res->ntlsa,
              h->ntlsa, res->validated,
              h->state == DANE_REQUIRED ? "required"
              : h->state == DANE_BOGUS  ? "bogus"
                                        : "none");
    if (--r->pending > 0)
        return;
    dane_cb cb = r->cb;
    void *cbarg = r->arg;
    request_free(r);
    cb(cbarg);
}

struct dane_request *
dane_lookup(struct dns *d, const struct dns_result *res, struct dane_set *out, dane_cb cb,
            void *arg)
{
    struct dane_request *r = xcalloc(1, sizeof *r);
    r->out = out;
    r->cb = cb;
    r->arg = arg;
    out->hosts = xcalloc(res->nhosts ? res->nhosts : 1, sizeof *out->hosts);
    r->lookups = xcalloc(res->nhosts ? res->nhosts : 1, sizeof *r->lookups);
    for (size_t i = 0; i < res->nhosts; i++) {
        struct dane_host *h = &out->hosts[out->nhosts++];
        h->name = xstrdup(res->hosts[i].name);
        if (!res->hosts[i].dnssec)
            continue;
        struct dane_lookup *l = &r->lookups[r->nlookups++];
        l->r = r;
        l->host = i;
        r->pending++;
    }
    /* every lookup is registered before the first can answer (they answer
     * from the loop, never from here) */
    for (size_t i = 0; i < r->nlookups; i++) {
        char name[300];
        snprintf(name, sizeof name, "_25._tcp.%s", out->hosts[r->lookups[i].host].name);
        r->lookups[i].q = dns_resolve_tlsa(d, name, on_tlsa, &r->lookups[i]);
    }
    PGMTA_ASSERT(r->nlookups > 0);
    return r;
}

void
dane_cancel(struct dane_request *r)
{
    if (r)
        request_free(r);
}
