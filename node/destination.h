/* destination: where and how a delivery session connects for its queue:
 * the route or MX name to resolve, the resolved hosts without this node's
 * own listeners (mail to them would loop), what a DNS answer that names no
 * usable host means for the recipients, and the SMTP client settings of the
 * domain and source virtual MTA (HELO name, source address, TLS, timeouts). */
#ifndef PGMTA_DESTINATION_H
#define PGMTA_DESTINATION_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "conf.h"
#include "dane.h"
#include "dns.h"
#include "mta_sts_policy.h"
#include "smtp_client.h"

/* Splits a route "host:port", "[v6]:port" or "host" into HOST (brackets
 * removed) and *PORT (DEFAULT_PORT when none). */
void destination_parse_route(const char *route, char *host, size_t hostlen, unsigned default_port,
                             unsigned *port);

/* The hosts of RES without the addresses that are our own listeners
 * (listen.smtp; a wildcard listener counts for the loopback addresses).
 * Free with destination_hosts_free. */
struct dns_host *destination_hosts(const struct conf *c, const struct dns_result *res, size_t *n);
void destination_hosts_free(struct dns_host *hosts, size_t n);

/* A DNS answer that gives no host to try: fills the failure for every
 * recipient and returns true; false for DNS_OK. DIAG is allocated. */
struct destination_failure {
    bool permanent;
    int code;
    const char *status;
    char *diag;
    const char *tls_failure; /* RFC 8460 result type, or NULL */
};
bool destination_dns_failure(const struct dns_result *res, struct destination_failure *f);

/* SMTP client settings for domain D sent from SOURCE_VMTA ("" none). SRC is
 * storage for the source address that cfg->source may point into. The HELO
 * name is the virtual MTA's helo, else node-name (default: the host name). */
void destination_client_config(const struct conf *c, const struct conf_domain *d,
                               const char *source_vmta, const char *id,
                               struct smtp_client_config *cfg, struct sockaddr_storage *src);

/* The SMTP client for DOMAIN after its DNS answer RES, connecting to the
 * hosts that are not ours; or NULL with *F filled (DNS failure, or 5.4.6
 * when every MX is this node: delivering would loop). With an MTA-STS
 * policy STS (NULL or mode none: nothing to apply): enforce connects only
 * to the MX hosts it names, with TLS and a verified certificate required
 * (else 4.7.5, "MTA-STS: ..."); testing checks the certificate and reports
 * (smtp_conn_info.tls_failure) without failing. DANE wins over MTA-STS
 * (RFC 8461 2): a host with usable TLSA records in DANE is kept whatever
 * the policy's mx patterns, and the client authenticates it by DANE. */
struct smtp_client *destination_connect(struct event_base *base, const struct conf *c,
                                        const struct conf_domain *d, const char *source_vmta,
                                        const char *domain, const char *id,
                                        const struct dns_result *res,
                                        const struct mta_sts_policy *sts,
                                        const struct dane_set *dane, struct destination_failure *f);

/* Keeps at the front, in order, the hosts STS allows or DANE requires
 * (DANE_REQUIRED in DANE, which may be NULL); returns how many. The others
 * are moved behind them, not freed. */
size_t destination_sts_filter(struct dns_host *hosts, size_t n, const struct mta_sts_policy *sts,
                              const struct dane_set *dane);

/* Whether NAME looks like a fully qualified domain name (two labels or
 * more, letters, digits and hyphens, no address literal): strict receivers
 * refuse a HELO that is not one. */
bool destination_helo_is_fqdn(const char *name);

#endif
