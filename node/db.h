/* db: one asynchronous PostgreSQL connection driven by libevent.
 *
 * libpq is used non-blocking only, in pipeline mode: every request is a
 * prepared statement followed by its own sync point, so each request is its
 * own implicit transaction and many requests can be in flight on one
 * connection. Requests complete in order; each callback gets the request's
 * result, or NULL when the connection failed before the result arrived.
 * A lost connection is re-established with exponential backoff; the
 * statements registered with db_prepare are prepared again on every new
 * connection, before any request.
 *
 * The callback rule: no function of this module calls a callback (db_cb or
 * the ready callback) before it returns. Callbacks run from the db's own
 * libevent events only, so a caller may set its "in flight" state after a
 * db_exec that returned 0. A failure db_exec finds at once (the send fails)
 * reaches the callback with NULL from the next loop turn. db_free may be
 * called from inside a callback: the db is freed when that callback's
 * handler returns. */
#ifndef PGMTA_DB_H
#define PGMTA_DB_H

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdbool.h>

struct db;

/* res is owned by db and valid during the call only (unless the callback
 * takes it with db_take_result); NULL: connection lost. */
typedef void (*db_cb)(const PGresult *res, void *arg);
/* Called from inside a db_cb with its res: the caller now owns the result
 * and frees it with PQclear. Saves copying large values (message content). */
PGresult *db_take_result(const PGresult *res);
/* Called when the connection becomes ready (after preparing statements). */
typedef void (*db_ready_cb)(struct db *db, void *arg);

struct db *db_new(struct event_base *base, const char *url, const char *name);
void db_set_ready_cb(struct db *db, db_ready_cb cb, void *arg);
/* Registers a statement to prepare on every (re)connection. Call before the
 * first connection is up (right after db_new) for it to apply at once. */
void db_prepare(struct db *db, const char *stmt, const char *sql, int nparams);
/* Starts connecting (idempotent); the ready callback comes from the loop. */
void db_connect(struct db *db);
/* Fails every pending request (callbacks with NULL, before db_free returns)
 * and frees; from inside a callback of this db, the memory is released when
 * that callback's handler returns. */
void db_free(struct db *db);

bool db_ready(const struct db *db);
/* Number of requests sent and not yet answered. */
unsigned db_pending(const struct db *db);

/* Queues a prepared statement. params are text unless formats says
 * otherwise; result_format 0 = text, 1 = binary. Returns 0 when queued: the
 * callback will be called exactly once, always after db_exec has returned
 * (with NULL if the connection fails first, even when the failure was found
 * inside this call). Returns -1 if the request was not queued (connection
 * not ready, or found broken): the callback will not be called. */
int db_exec(struct db *db, const char *stmt, int nparams, const char *const *values,
            const int *lengths, const int *formats, int result_format, db_cb cb, void *arg);

/* Calls CB(RES, ARG) as the answer of a request is delivered: CB may keep
 * RES with db_take_result, else it is cleared when CB returns. For a
 * module that splits one answer into several (RES made with PQcopyResult). */
void db_call(db_cb cb, void *arg, PGresult *res);

/* Helpers to read binary results. */
long long db_get_int8(const PGresult *res, int row, int col);
int db_get_int4(const PGresult *res, int row, int col);
/* Binary timestamptz -> Unix time in microseconds. */
long long db_get_timestamptz_us(const PGresult *res, int row, int col);

/* Appends S to a PostgreSQL array literal being built in B (text[]):
 * quoted and escaped, or NULL when s is NULL. The caller writes "{" and "}"
 * and the commas. */
struct buf;
void db_array_append_text(struct buf *b, const char *s);

#endif
