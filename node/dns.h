/* dns: asynchronous MX and address resolution with c-ares, driven by the
 * node's libevent loop (c-ares sockets watched with libevent events; c-ares
 * timeouts with one libevent timer). Results are cached by TTL. */
#ifndef PGMTA_DNS_H
#define PGMTA_DNS_H

#include <event2/event.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum dns_status {
    DNS_OK = 0,
    DNS_NXDOMAIN, /* the domain does not exist: bounce 5.1.2 */
    DNS_NULL_MX,  /* RFC 7505 "MX 0 .": bounce 5.1.10 */
    DNS_NO_HOSTS, /* MX/A lookups succeeded but gave no usable address: bounce 5.1.2 */
    DNS_TEMPFAIL, /* SERVFAIL, timeout, refused: retry later (4.4.3) */
};

struct dns_addr {
    struct sockaddr_storage sa; /* port set to the requested port */
    socklen_t salen;
};

struct dns_host {
    char *name; /* MX exchange (or the domain itself for A/AAAA fallback, or route host) */
    uint16_t preference;
    /* dns.dnssec: the MX answer and this host's address answers all had the
     * validating resolver's AD bit (RFC 7672 2.2.2: TLSA may be looked up) */
    bool dnssec;
    struct dns_addr *addrs;
    size_t naddrs;
};

/* Hosts in the order to try: preference ascending, random order among equal
 * preferences (shuffled per lookup, also for cached answers). At most
 * DNS_MAX_HOSTS hosts and DNS_MAX_ADDRS addresses per host are kept. */
#define DNS_MAX_HOSTS 16
#define DNS_MAX_ADDRS 8
struct dns_result {
    enum dns_status status;
    char *error; /* human-readable reason when status != DNS_OK */
    struct dns_host *hosts;
    size_t nhosts;
};

struct dns;
struct dns_request;

/* servers: "ip" or "ip:port" or "[v6]:port"; nservers == 0 uses
 * /etc/resolv.conf. Returns NULL and fills err on a bad server string. */
struct dns *dns_new(struct event_base *base, const char *const *servers, size_t nservers,
                    uint64_t timeout_ms, char *err, size_t errlen);
void dns_free(struct dns *d); /* cancels outstanding requests (no callbacks) */

/* The callback owns nothing: result is valid only during the call. */
typedef void (*dns_cb)(const struct dns_result *result, void *arg);

/* Resolves the delivery hosts of DOMAIN: MX records (preference order), each
 * MX host's A and AAAA records; no MX -> the domain's own A/AAAA (implicit
 * MX); null MX -> DNS_NULL_MX. port is stored in every address.
 *
 * The callback rule: cb is called exactly once (unless cancelled), always
 * after this function has returned, also when the answer is known at once
 * (cache hit, IP or domain literal, invalid name: from the next loop turn).
 * Returns the handle for dns_cancel, valid until cb is called. */
struct dns_request *dns_resolve_mx(struct dns *d, const char *domain, uint16_t port, dns_cb cb,
                                   void *arg);
/* Resolves one host name or IP literal (A/AAAA) for a configured route;
 * same rule and handle as dns_resolve_mx. */
struct dns_request *dns_resolve_host(struct dns *d, const char *host, uint16_t port, dns_cb cb,
                                     void *arg);
/* The callback will not be called (also when its answer was ready). */
void dns_cancel(struct dns_request *r);

/* Drops every cached answer (tests, reload). */
void dns_cache_clear(struct dns *d);

/* TXT records of one name (MTA-STS's _mta-sts.<domain>), not cached here
 * (the caller keeps what it derives, for ttl). Each record's strings are
 * joined; at most DNS_MAX_TXT records of at most DNS_MAX_TXT_LEN bytes are
 * kept. status: DNS_OK, DNS_NXDOMAIN (no such name or no TXT record) or
 * DNS_TEMPFAIL. */
#define DNS_MAX_TXT 16
#define DNS_MAX_TXT_LEN 4096
struct dns_txt_result {
    enum dns_status status;
    const char *error; /* when status != DNS_OK */
    char **texts;
    size_t ntexts;
    uint32_t ttl; /* of the answer, or the negative TTL */
};
struct dns_txt_request;
typedef void (*dns_txt_cb)(const struct dns_txt_result *result, void *arg);
/* Same callback rule as dns_resolve_mx: cb once, after this has returned. */
struct dns_txt_request *dns_resolve_txt(struct dns *d, const char *name, dns_txt_cb cb, void *arg);
void dns_txt_cancel(struct dns_txt_request *r);

/* TLSA records (RFC 6698) of one name, as TXT lookups: uncached here.
 * status DNS_OK with ntlsa records, DNS_NXDOMAIN (no such name or no
 * record), DNS_TEMPFAIL (SERVFAIL: with a validating resolver, bogus).
 * validated: the answer had the AD bit. */
#define DNS_MAX_TLSA 16
struct dns_tlsa {
    uint8_t usage, selector, mtype;
    unsigned char *data;
    size_t len;
};
struct dns_tlsa_result {
    enum dns_status status;
    const char *error;
    const struct dns_tlsa *tlsa;
    size_t ntlsa;
    bool validated;
    uint32_t ttl;
};
typedef void (*dns_tlsa_cb)(const struct dns_tlsa_result *result, void *arg);
/* Same callback rule as dns_resolve_mx; cancel with dns_txt_cancel. */
struct dns_txt_request *dns_resolve_tlsa(struct dns *d, const char *name, dns_tlsa_cb cb,
                                         void *arg);

/* Queries set the AD bit (RFC 6840 5.7) and answers record it: the
 * configured resolver is trusted to validate (dns.dnssec). */
void dns_set_dnssec(struct dns *d, bool on);

/* The resolver's reply parser, pure (for tests and fuzzing): parses BUF, a
 * reply to a query of QTYPE (1 A, 15 MX, 16 TXT, 28 AAAA, 52 TLSA), as an answer is parsed
 * before it is cached. Returns 0 records found, 1 NXDOMAIN, 2 no data,
 * 3 temporary failure (SERVFAIL, truncated, malformed: *error says which,
 * malloc'ed, NULL otherwise). *n records kept (MX sorted by preference, at
 * most 64, ties shuffled with SEED), *ttl the answer's or negative TTL. EACH,
 * when given, sees every record kept: MX as (pref, name, NULL), A and AAAA as
 * (0, NULL, struct in_addr * or struct in6_addr *), TXT as (0, text, NULL),
 * TLSA as (0, NULL, struct dns_tlsa *). */
int dns_parse_reply(int qtype, const unsigned char *buf, int len, uint64_t seed,
                    void (*each)(uint16_t pref, const char *name, const void *addr, void *arg),
                    void *arg, size_t *n, uint32_t *ttl, char **error);

#endif
