/* rollup: the limit keys shared by several queues (see rollup.h): a
 * virtual MTA's source IP key and limits, and the MX rollup key of a domain
 * from its configuration and its MX hosts. Pure functions of the
 * configuration and of a DNS answer the caller owns; the keys returned
 * belong to the caller. */
#include "rollup.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conf.h"
#include "dns.h"
#include "util.h"

static bool
has_source(const struct conf_vmta *vm)
{
    return vm && vm->smtp_source_host && vm->smtp_source_host[0];
}

uint32_t
rollup_ip_max_smtp_out(const struct conf_vmta *vm)
{
    if (!vm || vm->source_ip_max_smtp_out == 0)
        return CONF_UNLIMITED;
    return vm->source_ip_max_smtp_out;
}

const struct conf_rate *
rollup_ip_connect_rate(const struct conf_vmta *vm)
{
    if (!vm || vm->source_ip_max_connect_rate.count == 0 ||
        vm->source_ip_max_connect_rate.count == CONF_UNLIMITED)
        return NULL;
    return &vm->source_ip_max_connect_rate;
}

const struct conf_rate *
rollup_ip_msg_rate(const struct conf_vmta *vm)
{
    if (!has_source(vm) || vm->source_ip_max_msg_rate.count == 0 ||
        vm->source_ip_max_msg_rate.count == CONF_UNLIMITED)
        return NULL;
    return &vm->source_ip_max_msg_rate;
}

bool
rollup_ip_limits_connections(const struct conf_vmta *vm)
{
    return has_source(vm) &&
           (rollup_ip_max_smtp_out(vm) != CONF_UNLIMITED || rollup_ip_connect_rate(vm));
}

char *
rollup_ip_key(const struct conf_vmta *vm)
{
    if (!rollup_ip_limits_connections(vm) && !rollup_ip_msg_rate(vm))
        return NULL;
    return xasprintf("ip:%s", vm->smtp_source_host);
}

/* ---- MX rollup ---- */

bool
rollup_automatic(const struct conf_domain *d)
{
    return !d->mx_rollup && !d->mx_rollup_off && !d->route;
}

char *
rollup_static_key(const struct conf_domain *d, const char *domain)
{
    return d->mx_rollup ? xasprintf("rollup:%s", d->mx_rollup) : xstrdup(domain);
}

/* S without leading and trailing dots: *len bytes from the result. */
static const char *
trim_dots(const char *s, size_t *len)
{
    while (*s == '.')
        s++;
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '.')
        n--;
    *len = n;
    return s;
}

bool
rollup_suffix_match(const char *host, const char *suffix)
{
    size_t hl, sl;
    host = trim_dots(host, &hl);
    suffix = trim_dots(suffix, &sl);
    if (sl == 0 || hl < sl || strncasecmp(host + hl - sl, suffix, sl) != 0)
        return false;
    return hl == sl || host[hl - sl - 1] == '.';
}

void
rollup_apply_provider(struct conf_domain *out, const struct conf_domain *d,
                      const struct conf_provider *p)
{
    *out = *d;
    out->max_smtp_out = p->max_smtp_out;
    out->max_msg_rate = p->max_msg_rate;
    out->max_connect_rate = p->max_connect_rate;
    out->max_msg_per_connection = p->max_msg_per_connection;
}

static int
cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool
provider_matches(const struct conf_provider *p, char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t j;
        for (j = 0; j < p->nmx_suffix; j++)
            if (rollup_suffix_match(names[i], p->mx_suffix[j]))
                break;
        if (j == p->nmx_suffix)
            return false;
    }
    return true;
}

/* "mx:" and the names joined, or a hash of them when too long. */
static char *
mx_set_key(char *const *names, size_t n)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += strlen(names[i]) + 1;
    char *joined = xcalloc(1, len + 1);
    for (size_t i = 0; i < n; i++) {
        if (i)
            strcat(joined, ",");
        strcat(joined, names[i]);
    }
    if (strlen(joined) + 3 <= ROLLUP_KEY_MAX) {
        char *key = xasprintf("mx:%s", joined);
        free(joined);
        return key;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    PGMTA_ASSERT(EVP_Digest(joined, strlen(joined), md, &mdlen, EVP_sha256(), NULL) == 1);
    free(joined);
    char hex[2 * 16 + 1];
    for (unsigned i = 0; i < 16 && i < mdlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return xasprintf("mx:%s", hex);
}

char *
rollup_mx_key(const struct conf *c, const char *domain, const struct dns_host *hosts, size_t nhosts,
              const struct conf_provider **provider)
{
    *provider = NULL;
    bool any = false;
    uint16_t low = 0;
    for (size_t i = 0; i < nhosts; i++) {
        if (!hosts[i].name || !hosts[i].name[0])
            continue;
        if (!any || hosts[i].preference < low)
            low = hosts[i].preference;
        any = true;
    }
    if (!any)
        return NULL;
    char **names = xcalloc(nhosts, sizeof *names);
    size_t n = 0;
    size_t dl;
    const char *dom = trim_dots(domain, &dl);
    bool only_self = true;
    for (size_t i = 0; i < nhosts; i++) {
        if (!hosts[i].name || !hosts[i].name[0] || hosts[i].preference != low)
            continue;
        size_t hl;
        const char *h = trim_dots(hosts[i].name, &hl);
        if (hl == 0)
            continue;
        char *name = xasprintf("%.*s", (int)hl, h);
        util_strlower(name);
        if (hl != dl || strncasecmp(name, dom, dl) != 0)
            only_self = false;
        names[n++] = name;
    }
    char *key = NULL;
    if (n > 0 && !only_self) {
        qsort(names, n, sizeof *names, cmp_names);
        size_t u = 1;
        for (size_t i = 1; i < n; i++) {
            if (strcmp(names[i], names[u - 1]) == 0)
                free(names[i]);
            else
                names[u++] = names[i];
        }
        n = u;
        for (size_t i = 0; i < c->nproviders && !key; i++) {
            if (provider_matches(&c->providers[i], names, n)) {
                *provider = &c->providers[i];
                key = xasprintf("provider:%s", c->providers[i].name);
            }
        }
        if (!key)
            key = mx_set_key(names, n);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return key;
}
