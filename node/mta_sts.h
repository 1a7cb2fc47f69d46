/* mta_sts: the MTA-STS policy of a recipient domain (RFC 8461), as delivery
 * sessions ask for it while they resolve the MX hosts: the _mta-sts TXT
 * record (c-ares), the policy cache in the database that every node shares
 * (sql/018_mta_sts.sql), the HTTPS fetch of
 * https://mta-sts.<domain>/.well-known/mta-sts.txt (evhttp over a verifying
 * OpenSSL bufferevent) when the cache has nothing valid, the TXT id changed
 * or a refresh is due, and a small in-process cache in front of it all so a
 * hot domain costs no statement per connection. See README, MTA-STS. */
#ifndef PGMTA_MTA_STS_H
#define PGMTA_MTA_STS_H

#include <event2/event.h>

#include "mta_sts_policy.h"

struct db;
struct dns;
struct mta_sts;
struct mta_sts_request;

#define MTA_STS_FETCH_TIMEOUT_MS 10000u
#define MTA_STS_MEM_MAX_S 300u /* in-process answers are kept at most this long */
#define MTA_STS_MEM_ENTRIES 4096u

/* What applies to a domain. mode NONE: deliver as without MTA-STS (no TXT
 * record, mode "none", or nothing could be fetched); failure then says
 * why a policy announced by TXT could not be had, for TLS-RPT
 * ("sts-policy-fetch-error", "sts-policy-invalid"), else NULL. */
struct mta_sts_result {
    enum mta_sts_mode mode;
    const struct mta_sts_policy *policy; /* mode != NONE */
    const char *failure;
    const char *error; /* human text for failure */
};

/* The result is valid during the call only. */
typedef void (*mta_sts_cb)(const struct mta_sts_result *r, void *arg);

/* PICK_DB(ARG) gives a ready database connection or NULL; NODE names this
 * node in the cache's fetch claims; CA_FILE (NULL: system bundle) verifies
 * the policy servers. */
struct mta_sts *mta_sts_new(struct event_base *base, struct dns *dns,
                            struct db *(*pick_db)(void *arg), void *arg, const char *node,
                            const char *ca_file);
/* After the database connections are freed (their answers came), before
 * the dns: cancels lookups and fetches; no more callbacks. */
void mta_sts_free(struct mta_sts *m);
/* Prepares the statements on DB (at every connection). */
void mta_sts_prepare(struct db *db);

/* The policy of DOMAIN. The callback rule: cb once, always after this has
 * returned (unless cancelled). */
struct mta_sts_request *mta_sts_get(struct mta_sts *m, const char *domain, mta_sts_cb cb,
                                    void *arg);
void mta_sts_cancel(struct mta_sts_request *r);

#endif
