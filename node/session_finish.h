/* session_finish: the finishes of several sessions in one mta.finish.
 *
 * With one or two messages per connection, a statement and a commit per
 * session bind the rate; sessions that finish within a few milliseconds of
 * each other share one statement (one round trip, one commit). The
 * outcomes of each batch are encoded when it is added, so a session may end
 * before the statement is sent. mta.finish is set-based and fences every
 * row by its lease token, so one call for many queues is the same as one
 * call per queue. */
#ifndef PGMTA_SESSION_FINISH_H
#define PGMTA_SESSION_FINISH_H

#include <stdbool.h>

#include "db.h"

struct batch;
struct event_base;
struct session_finish;

/* A group that waits at most DELAY_MS for more finishes; PICK_DB(ARG)
 * gives the connection when the group is sent. */
struct session_finish *session_finish_new(struct event_base *base, unsigned delay_ms,
                                          struct db *(*pick_db)(void *arg), void *arg);
/* Calls every waiting callback with NULL (not sent), then frees. */
void session_finish_free(struct session_finish *f);

/* Adds the outcomes of B; CB(res, CB_ARG) runs once the shared statement
 * returned (res NULL: not sent), never before this call returns. RES's
 * first column is the number of rows finished by the whole group. */
void session_finish_add(struct session_finish *f, long long node_id, const char *node_label,
                        const struct batch *b, bool generate_bounces, db_cb cb, void *cb_arg);

#endif
