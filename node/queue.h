/* queue: the SQL side of delivery for one pipe process - the statements a
 * session sends about its rows, their text in one place (queue_prepare)
 * and the parameters of finish, release, set aside and enter backoff here
 * (claims go through session_claims). Every function sends one prepared
 * statement on DB and returns db_exec's result (0 sent, -1 not sent: the
 * callback will not run). Callbacks follow db.h. */
#ifndef PGMTA_QUEUE_H
#define PGMTA_QUEUE_H

#include <stdbool.h>
#include <stddef.h>

#include "db.h"

struct batch;

/* A ready connection among DBS, round robin from *RR, or NULL. */
struct db *queue_pick_db(struct db *const *dbs, size_t n, size_t *rr);
/* Prepares the statements below on DB. */
void queue_prepare(struct db *db);

/* mta.finish with the outcomes of B (fenced by the lease tokens). */
int queue_finish(struct db *db, long long node_id, const char *node_label, const struct batch *b,
                 bool generate_bounces, db_cb cb, void *arg);
/* mta.release of the rows in IDS/TOKENS (array literals); fire and forget. */
void queue_release(struct db *db, long long node_id, const char *ids, const char *tokens);
/* queue_release that also gives MSGS message and CONNECTS connect tokens
 * back to the buckets of the limit key, and MSGS message tokens to the
 * source IP's bucket IP_KEY unless NULL (mta.release_refund). */
void queue_release_refund(struct db *db, long long node_id, const char *ids, const char *tokens,
                          const char *key_domain, const char *key_vmta, unsigned msgs,
                          unsigned connects, const char *ip_key);
/* mta.set_aside of one row with REASON; fire and forget. */
void queue_set_aside(struct db *db, long long id, long long token, const char *reason);
/* mta.queue_enter_backoff until UNTIL_US (wall clock); fire and forget. */
void queue_enter_backoff(struct db *db, const char *domain, const char *vmta, long long until_us,
                         const char *reply);

/* mta.queue_defer: no node claims from (domain, vmta) for MS milliseconds
 * (defer-queue); fire and forget. */
void queue_defer(struct db *db, const char *domain, const char *vmta, long long ms,
                 const char *reason);

/* mta.queue_postpone: no node is offered (domain, vmta) of PIPE for MS
 * milliseconds; fire and forget. */
void queue_postpone(struct db *db, const char *pipe, const char *domain, const char *vmta,
                    long long ms);

#endif
