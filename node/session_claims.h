/* session_claims: the claims of several sessions in one mta.claim_many.
 *
 * With a long tail of destinations holding one or two messages each, every
 * new connection starts with a claim of its own queue, and the statement's
 * fixed cost (plan start, window sorts, commit) is most of what a claim
 * costs. The claims added within one loop turn - a poll that offers many
 * queues starts many sessions at once - go out as one statement at the
 * next turn, up to SESSION_CLAIMS_MAX queues; each session gets a result of
 * its own with exactly its queue's rows, as if it had claimed alone. */
#ifndef PGMTA_SESSION_CLAIMS_H
#define PGMTA_SESSION_CLAIMS_H

#include <stddef.h>

#include "db.h"

/* Queues per statement. */
#define SESSION_CLAIMS_MAX 64

struct event_base;
struct session_claims;

/* PICK_DB(ARG) gives the connection when a group is sent. */
struct session_claims *session_claims_new(struct event_base *base, struct db *(*pick_db)(void *arg),
                                          void *arg);
/* Calls every waiting callback with NULL (not sent), then frees. */
void session_claims_free(struct session_claims *c);

/* Claims up to LIMIT rows of (DOMAIN, VMTA) in PIPE for NODE_ID, leased for
 * LEASE_MS, content under MAX_BYTES (see mta.claim_many). CB(res, CB_ARG)
 * runs once, never before this call returns: res holds the rows of this
 * queue only, with the columns of mta.claim_many (binary; the callback may
 * keep it with db_take_result), or is the statement's error result, or NULL
 * when the statement could not be sent. */
void session_claims_add(struct session_claims *c, long long node_id, const char *pipe,
                        const char *domain, const char *vmta, unsigned limit,
                        unsigned long long lease_ms, size_t max_bytes, db_cb cb, void *cb_arg);

#endif
