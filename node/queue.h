/* queue: the SQL side of delivery for one pipe process - the statements a
 * session sends about its rows (claim, finish, release, set aside, enter
 * backoff), their text and parameters in one place. Every function sends
 * one prepared statement on DB and returns db_exec's result (0 sent, -1
 * not sent: the callback will not run). Callbacks follow db.h. */
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

/* mta.claim: up to LIMIT rows of (domain, vmta) in PIPE leased to NODE_ID
 * for LEASE_MS, the messages taken while the content before them is under
 * MAX_BYTES (the first always); binary results (see batch_decode), the
 * column "capped" true when MAX_BYTES left rows out. */
int queue_claim(struct db *db, long long node_id, const char *pipe, const char *domain,
                const char *vmta, unsigned limit, unsigned long long lease_ms, size_t max_bytes,
                db_cb cb, void *arg);
/* mta.finish with the outcomes of B (fenced by the lease tokens). */
int queue_finish(struct db *db, long long node_id, const char *node_label, const struct batch *b,
                 bool generate_bounces, db_cb cb, void *arg);
/* mta.release of the rows in IDS/TOKENS (array literals); fire and forget. */
void queue_release(struct db *db, long long node_id, const char *ids, const char *tokens);
/* mta.set_aside of one row with REASON; fire and forget. */
void queue_set_aside(struct db *db, long long id, long long token, const char *reason);
/* mta.queue_enter_backoff until UNTIL_US (wall clock); fire and forget. */
void queue_enter_backoff(struct db *db, const char *domain, const char *vmta, long long until_us,
                         const char *reply);

/* mta.queue_postpone: no node is offered (domain, vmta) of PIPE for MS
 * milliseconds; fire and forget. */
void queue_postpone(struct db *db, const char *pipe, const char *domain, const char *vmta,
                    long long ms);

#endif
