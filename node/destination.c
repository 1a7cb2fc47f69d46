/* destination: the connection side of a delivery session (see
 * destination.h). Pure helpers over the configuration and DNS results: the
 * session calls them between resolving and connecting and owns what they
 * return. */
#include "destination.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dane.h"
#include "hostport.h"
#include "util.h"

void
destination_parse_route(const char *route, char *host, size_t hostlen, unsigned default_port,
                        unsigned *port)
{
    /* Routes were checked by the configuration (the same parser). */
    struct hostport hp;
    if (!hostport_parse_str(route, HOSTPORT_BARE_IPV6, &hp, NULL)) {
        snprintf(host, hostlen, "%s", route);
        *port = default_port;
        return;
    }
    snprintf(host, hostlen, "%s", hp.host);
    *port = hp.port ? hp.port : default_port;
}

static bool
parse_source(const char *ip, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        *len = sizeof *in4;
        return true;
    }
    if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        *len = sizeof *in6;
        return true;
    }
    return false;
}

/* Whether BIN (an address of family FAM) is one of this machine's own
 * interface addresses (getifaddrs, read again at most every 10 s: it is a
 * local netlink query, but this runs for every delivery address). */
static bool
addr_is_local(int fam, const void *bin)
{
    static struct ifaddrs *ifs;
    static time_t read_at;
    time_t now = time(NULL);
    if (!ifs || now - read_at >= 10 || now < read_at) {
        if (ifs)
            freeifaddrs(ifs);
        ifs = NULL;
        if (getifaddrs(&ifs) != 0)
            ifs = NULL;
        read_at = now;
    }
    for (const struct ifaddrs *i = ifs; i; i = i->ifa_next) {
        if (!i->ifa_addr || i->ifa_addr->sa_family != fam)
            continue;
        if (fam == AF_INET &&
            !memcmp(&((const struct sockaddr_in *)(const void *)i->ifa_addr)->sin_addr, bin, 4))
            return true;
        if (fam == AF_INET6 &&
            !memcmp(&((const struct sockaddr_in6 *)(const void *)i->ifa_addr)->sin6_addr, bin, 16))
            return true;
    }
    return false;
}

/* Whether ADDR is one of this node's SMTP listeners (listen.smtp): an MX
 * that points at ourselves would loop the mail back into our own queue. A
 * wildcard listener counts for the loopback addresses and for the machine's
 * own addresses: 0.0.0.0 for its IPv4 ones, :: for all (dual stack). */
static bool
addr_is_ours(const struct conf *c, const struct dns_addr *a)
{
    char ip[INET6_ADDRSTRLEN];
    unsigned port;
    const void *bin;
    int fam = a->sa.ss_family;
    if (fam == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&a->sa;
        bin = &in->sin_addr;
        port = ntohs(in->sin_port);
    } else if (fam == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)&a->sa;
        bin = &in6->sin6_addr;
        port = ntohs(in6->sin6_port);
    } else {
        return false;
    }
    inet_ntop(fam, bin, ip, sizeof ip);
    bool loopback = fam == AF_INET ? strncmp(ip, "127.", 4) == 0 : strcmp(ip, "::1") == 0;
    for (size_t i = 0; i < c->nlisten_smtp; i++) {
        struct hostport l;
        if (!hostport_parse_str(c->listen_smtp[i], HOSTPORT_PORT_REQUIRED, &l, NULL) ||
            l.port != port)
            continue;
        if (strcmp(l.host, ip) == 0)
            return true;
        bool any4 = strcmp(l.host, "0.0.0.0") == 0, any6 = strcmp(l.host, "::") == 0;
        if (loopback && (any4 || any6))
            return true;
        if (((any4 && fam == AF_INET) || any6) && addr_is_local(fam, bin))
            return true;
    }
    return false;
}

struct dns_host *
destination_hosts(const struct conf *c, const struct dns_result *res, size_t *n)
{
    struct dns_host *out = xcalloc(res->nhosts ? res->nhosts : 1, sizeof *out);
    *n = 0;
    for (size_t i = 0; i < res->nhosts; i++) {
        const struct dns_host *h = &res->hosts[i];
        struct dns_host *o = &out[*n];
        *o = *h;
        o->addrs = xcalloc(h->naddrs ? h->naddrs : 1, sizeof *o->addrs);
        o->naddrs = 0;
        for (size_t k = 0; k < h->naddrs; k++)
            if (!addr_is_ours(c, &h->addrs[k]))
                o->addrs[o->naddrs++] = h->addrs[k];
        if (o->naddrs)
            (*n)++;
        else
            free(o->addrs);
    }
    return out;
}

void
destination_hosts_free(struct dns_host *hosts, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(hosts[i].addrs);
    free(hosts);
}

bool
destination_dns_failure(const struct dns_result *res, struct destination_failure *f)
{
    switch (res->status) {
    case DNS_OK:
        return false;
    case DNS_NXDOMAIN:
    case DNS_NO_HOSTS:
        *f = (struct destination_failure){true, 550, "5.1.2", NULL, NULL};
        f->diag = xasprintf("dns;%s", res->error ? res->error : "no such domain");
        return true;
    case DNS_NULL_MX:
        *f = (struct destination_failure){true, 556, "5.1.10", NULL, NULL};
        f->diag = xasprintf("dns;%s", res->error ? res->error : "domain accepts no mail (null MX)");
        return true;
    case DNS_TEMPFAIL:
    default:
        *f = (struct destination_failure){false, 451, "4.4.3", NULL, NULL};
        f->diag = xasprintf("dns;%s", res->error ? res->error : "temporary DNS failure");
        return true;
    }
}

void
destination_client_config(const struct conf *c, const struct conf_domain *d,
                          const char *source_vmta, const char *id, struct smtp_client_config *cfg,
                          struct sockaddr_storage *src)
{
    const struct conf_vmta *vmta = source_vmta[0] ? conf_vmta_lookup(c, source_vmta) : NULL;
    socklen_t srclen = 0;
    bool have_src =
        vmta && vmta->smtp_source_host && parse_source(vmta->smtp_source_host, src, &srclen);
    *cfg = (struct smtp_client_config){
        .helo_name = vmta && vmta->helo ? vmta->helo : c->node_name,
        .source = have_src ? (const struct sockaddr *)src : NULL,
        .source_len = have_src ? srclen : 0,
        .use_starttls = d->use_starttls,
        .require_starttls = d->require_starttls,
        .tls_verify = d->tls_verify,
        .tls_ca_file = c->tls_ca_file ? c->tls_ca_file : getenv("PGMTA_TLS_CA_FILE"),
        .connect_timeout_ms = d->connect_timeout_ms,
        .command_timeout_ms = d->command_timeout_ms,
        .data_timeout_ms = d->data_timeout_ms,
        .id = id,
    };
}

size_t
destination_sts_filter(struct dns_host *hosts, size_t n, const struct mta_sts_policy *sts,
                       const struct dane_set *dane)
{
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        const struct dane_host *dh = dane ? dane_find(dane, hosts[i].name) : NULL;
        if ((dh && dh->state == DANE_REQUIRED) || mta_sts_policy_allows(sts, hosts[i].name)) {
            struct dns_host t = hosts[kept];
            hosts[kept++] = hosts[i];
            hosts[i] = t;
        }
    }
    return kept;
}

struct smtp_client *
destination_connect(struct event_base *base, const struct conf *c, const struct conf_domain *d,
                    const char *source_vmta, const char *domain, const char *id,
                    const struct dns_result *res, const struct mta_sts_policy *sts,
                    const struct dane_set *dane, struct destination_failure *f)
{
    if (destination_dns_failure(res, f))
        return NULL;
    size_t nhosts;
    struct dns_host *hosts = destination_hosts(c, res, &nhosts);
    size_t total = nhosts;
    bool enforce = sts && sts->mode == MTA_STS_ENFORCE;
    if (enforce && nhosts > 0) {
        size_t kept = destination_sts_filter(hosts, nhosts, sts, dane);
        if (kept == 0) {
            destination_hosts_free(hosts, nhosts);
            *f = (struct destination_failure){false, 451, "4.7.5", NULL, "validation-failure"};
            f->diag = xasprintf("MTA-STS: no MX host of %s matches the policy", domain);
            return NULL;
        }
        nhosts = kept;
    }
    if (nhosts == 0) {
        /* Every MX is this node: delivering would loop (Postfix: 5.4.6). */
        destination_hosts_free(hosts, 0);
        *f = (struct destination_failure){true, 554, "5.4.6", NULL, NULL};
        f->diag = xasprintf("dns;mail for %s loops back to myself", domain);
        return NULL;
    }
    struct smtp_client_config cfg;
    struct sockaddr_storage src;
    destination_client_config(c, d, source_vmta, id, &cfg, &src);
    if (enforce) {
        cfg.use_starttls = cfg.require_starttls = cfg.tls_verify = true;
        cfg.tls_policy_name = "MTA-STS";
    } else if (sts && sts->mode == MTA_STS_TESTING) {
        cfg.tls_check = true;
    }
    struct smtp_client *client = smtp_client_new(base, &cfg, hosts, nhosts);
    destination_hosts_free(hosts, total);
    return client;
}

bool
destination_helo_is_fqdn(const char *name)
{
    if (!name || !hostport_is_hostname(name, strlen(name)) || !strchr(name, '.'))
        return false;
    /* "1.2.3.4" is an address written without brackets, not a name. */
    return !hostport_is_ip_literal(name);
}
