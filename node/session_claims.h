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

/* The rate tokens of a claim (mta.claim_many_rated): at most WANT messages,
 * within the message tokens of MSG and, for a new connection, one connect
 * token of CONNECT (NULL or CONF_UNLIMITED: none needed), from the buckets
 * of the limit key (KEY_DOMAIN, KEY_VMTA; see sched.h); and within the
 * message tokens IP_MSG of the source IP's key IP_KEY ("ip:ADDR", rollup.h;
 * both NULL: no source-ip-max-msg-rate). */
struct conf_rate;
struct session_claims_rate {
    const char *key_domain, *key_vmta;
    unsigned want;
    const struct conf_rate *msg, *connect;
    const char *ip_key;
    const struct conf_rate *ip_msg;
};

/* session_claims_add with the rate tokens taken in the same statement: the
 * rows of a queue then carry tokens (messages granted) and wait_ms; a queue
 * that claimed nothing comes back as one row with rcpt_id NULL and wait_ms,
 * when its next token is due (0: nothing ready). Sent as its own
 * statement, grouped with the rated claims of the same loop turn. */
void session_claims_add_rated(struct session_claims *c, long long node_id, const char *pipe,
                              const char *domain, const char *vmta, unsigned limit,
                              unsigned long long lease_ms, size_t max_bytes,
                              const struct session_claims_rate *rate, db_cb cb, void *cb_arg);

#endif
