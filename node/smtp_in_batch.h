/* smtp_in_batch: group commit for the SMTP injection listener.
 *
 * Messages whose DATA ends close together are stored by one call of
 * mta.enqueue_batch (sql/025_enqueue_batch.sql), one implicit transaction
 * and so one COMMIT and one WAL flush for all of them. A batch is sent when
 * it reaches max_messages or max_bytes, or max_wait_ms after its first
 * message arrived; while one batch is being committed the next one
 * collects, and up to `connections` batches are in flight at once, each on
 * its own database connection, so a new batch forms and commits while the
 * previous one waits for its WAL flush. Each message gets its own result: stored (with its id),
 * refused (the SQLSTATE and text that refused it alone), or a temporary
 * failure (the statement or its commit failed, the connection was lost or
 * not ready: then nothing of that batch is stored).
 *
 * Results are delivered from the event loop, never from inside
 * smtp_in_batch_add. */
#ifndef PGMTA_SMTP_IN_BATCH_H
#define PGMTA_SMTP_IN_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct event_base;
struct db;
struct smtp_in_batch;

/* The statement smtp_in_batch sends; prepare it on the connection under
 * SMTP_IN_BATCH_STMT (db_prepare) before handing the connection over. */
#define SMTP_IN_BATCH_STMT "smtp_enqueue_batch"
#define SMTP_IN_BATCH_SQL                                                                          \
    "SELECT ord, id, err_state, err_text FROM mta.enqueue_batch($1::text[], $2::int[], "           \
    "$3::text[], "                                                                                 \
    "$4::bytea[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int2[], "       \
    "$11::text[])"
#define SMTP_IN_BATCH_NPARAMS 11

/* One message; smtp_in_batch_add takes every pointer it holds. */
struct smtp_in_msg {
    char *mail_from;
    char **rcpts;
    size_t nrcpts;
    struct buf content;
    char *job_id; /* NULL: none */
    char *vmta;   /* NULL: none */
    /* DSN options (RFC 3461, see README "DSN options") */
    char *envid;            /* ENVID decoded from xtext, NULL: none */
    char ret;               /* RET: 'F' FULL, 'H' HDRS, 0 none */
    signed char *notify;    /* per recipient: NOTIFY bitmask, -1 none; NULL: none at all */
    char **orcpt;           /* per recipient: "type;address" or NULL; NULL: none at all */
    unsigned long sid, seq; /* handed back with the result */
};

enum smtp_in_status {
    SMTP_IN_STORED,   /* committed: id is set (SMTP_IN_ID_SUPPRESSED: nothing queued) */
    SMTP_IN_REFUSED,  /* this message failed its checks: sqlstate and error set */
    SMTP_IN_TEMPFAIL, /* nothing of the batch is stored: error set */
};

/* The id of a message whose every recipient is suppressed: accepted, its
 * 'b' rows committed, no message stored (see README, Suppression). */
#define SMTP_IN_ID_SUPPRESSED "-"

struct smtp_in_result {
    enum smtp_in_status status;
    const char *id;
    const char *sqlstate; /* may be NULL for TEMPFAIL */
    const char *error;
    size_t nrcpts;
    size_t size;
    size_t batch; /* messages in the same statement */
};

typedef void (*smtp_in_batch_cb)(void *arg, unsigned long sid, unsigned long seq,
                                 const struct smtp_in_result *r);

struct smtp_in_batch_limits {
    uint32_t max_messages;
    uint64_t max_bytes;
    uint64_t max_wait_ms;
    /* batches in flight at once, one database connection each (1 to
     * SMTP_IN_BATCH_MAX_CONNS; 0 means 1) */
    uint32_t connections;
    /* where extra connections go (read when one is opened; NULL: only the
     * connection given to smtp_in_batch_new) */
    const char *db_url;
};

#define SMTP_IN_BATCH_MAX_CONNS 16

/* DB becomes the batcher's (freed by smtp_in_batch_free), its first
 * connection; smtp_in_batch_set_limits opens the others. */
struct smtp_in_batch *smtp_in_batch_new(struct event_base *base, struct db *db, smtp_in_batch_cb cb,
                                        void *arg);
void smtp_in_batch_set_limits(struct smtp_in_batch *b, const struct smtp_in_batch_limits *lim);
/* Queues M (its contents now belong to the batcher; *m is cleared). The
 * callback is called exactly once for it, always from a later loop turn. */
void smtp_in_batch_add(struct smtp_in_batch *b, struct smtp_in_msg *m);
/* Messages queued and not yet answered (collecting or in flight). */
size_t smtp_in_batch_pending(const struct smtp_in_batch *b);
/* Statements in flight now. */
size_t smtp_in_batch_inflight(const struct smtp_in_batch *b);
/* Frees the connections (a statement in flight calls back with a temporary
 * failure, from inside this call), drops messages not yet sent without
 * callbacks, and frees. */
void smtp_in_batch_free(struct smtp_in_batch *b);

/* Builds a one-dimensional array in PostgreSQL's binary format (array_send)
 * of N elements of type ELEM_OID; elems[i] NULL is SQL NULL. Exported for
 * the unit tests. */
void smtp_in_array_binary(struct buf *out, unsigned elem_oid, size_t n, const char *const *elems,
                          const size_t *lens);

#endif
