/* dane: DANE for SMTP (RFC 7672). For the MX hosts whose MX and address
 * answers were DNSSEC-validated (dns.dnssec), the TLSA records of
 * _25._tcp.<host>, validated too, decide per host: usable records (usages
 * 2 and 3, selectors 0/1, matching types 0/1/2) make TLS mandatory and
 * authenticated by them (tls_client_start_dane); records present but none
 * usable, an unvalidated answer or none: no DANE requirement (2.2); a
 * SERVFAIL (bogus) answer: the host is not used (dnssec-invalid). */
#ifndef PGMTA_DANE_H
#define PGMTA_DANE_H

#include <stdbool.h>
#include <stddef.h>

#include "dns.h"

enum dane_state { DANE_NONE = 0, DANE_REQUIRED, DANE_BOGUS };

struct dane_host {
    char *name;
    enum dane_state state;
    struct dns_tlsa *tlsa; /* the usable records (DANE_REQUIRED) */
    size_t ntlsa;
};

struct dane_set {
    struct dane_host *hosts;
    size_t nhosts;
};

/* A record RFC 7672 3.1.3 lets SMTP use: usage 2 or 3, selector 0 or 1,
 * matching type 0 (non-empty), 1 (32 bytes) or 2 (64 bytes). */
bool dane_tlsa_usable(const struct dns_tlsa *t);
/* The state of host NAME in S (NULL when S does not name it). */
const struct dane_host *dane_find(const struct dane_set *s, const char *name);
/* Whether any host of RES may have TLSA records to look up. */
bool dane_wanted(const struct dns_result *res);
void dane_set_copy(struct dane_set *to, const struct dane_set *from);
void dane_set_clear(struct dane_set *s);

struct dane_request;
typedef void (*dane_cb)(void *arg);
/* Looks up the TLSA records of every validated host of RES into OUT; cb
 * once when all are there, after this has returned. */
struct dane_request *dane_lookup(struct dns *d, const struct dns_result *res, struct dane_set *out,
                                 dane_cb cb, void *arg);
/* cb will not be called; OUT keeps what came. */
void dane_cancel(struct dane_request *r);

#endif
