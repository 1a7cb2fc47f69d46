/* session: one delivery session of a destination queue, as an explicit
 * state machine in the style of smtp_client.c: session_enter makes a state
 * current and starts what that state waits for, session_react handles one
 * named event (slot, tokens, claim turn, claimed, tokens claimed,
 * resolved, batch done, finished, timer); the callbacks of sched, db, dns
 * and the SMTP client only turn their arguments into an event.
 *
 * A new connection takes its slot and first claim in parallel: one round
 * trip before the first byte. For a queue with max-msg-rate or
 * max-connect-rate the claim takes its tokens in the same statement
 * (slot+tokens+claim, then tokens+claim for the next batches:
 * mta.claim_many_rated), so tokens are spent only for messages claimed;
 * otherwise, or when that cannot start at once:
 *
 *   slot (max-smtp-out) -> connect token (max-connect-rate) -> tokens
 *   (max-msg-rate, counted in messages) -> claim -> resolve -> send ->
 *   finish -> tokens -> claim -> send -> finish ... on the same connection,
 *   until max-msg-per-connection, an empty claim or a lost connection.
 *
 * No transaction is open while SMTP or DNS I/O is in progress. The sessions
 * of a process share a session_env (owned by the worker): the current
 * configuration, the connections, the resolver, the sched, the content
 * budget and the list of live sessions. A session owns its batch and its
 * SMTP client, and is freed at the end of a loop turn or by the answer it
 * still waits for, never inside a callback of something it owns. */
#ifndef PGMTA_SESSION_H
#define PGMTA_SESSION_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "admission.h"
#include "conf.h"

/* Recipient rows claimed per statement at most. */
#define SESSION_BATCH_MAX 100
/* Message content held by the claimed batches of one process. Memory grows
 * with what is held, never with the queue (which lives in PostgreSQL): each
 * claim in flight reserves what it may bring, and the database returns no
 * more (mta.claim's p_max_bytes; the first message of a claim always). */
#define SESSION_CONTENT_BUDGET (32u * 1024 * 1024)
/* The smallest reservation of a claim: a claim is sent once this fits
 * beside what is held and reserved (or nothing is). */
#define SESSION_CLAIM_MIN_BYTES (64u * 1024)
/* How long a connected session waits for message tokens before it quits. */
#define SESSION_MAX_TOKEN_WAIT_MS 5000
/* After a queue had no free slot cluster-wide, ask again after this. */
#define SESSION_SLOT_RETRY_MS 200
/* Content bytes per claimed row assumed until the first claims tell:
 * pessimistic, since the first tick starts many sessions at once. */
#define SESSION_ROW_BYTES_START (64 * 1024)
/* The worker's fast poll: used-up connections pause a little longer. */
#define SESSION_FAST_POLL_MS 20

struct db;
struct dkim;
struct verp;
struct dns;
struct unsub;
struct sched;
struct session;

struct session_env {
    struct event_base *base;
    struct conf *conf; /* current configuration (sessions keep their own domain) */
    struct dns *dns;
    struct mta_sts *sts; /* MTA-STS policies (mta_sts.h), or NULL */
    struct sched *sched;
    struct dkim *dkim;
    struct unsub *unsub; /* list-unsubscribe entries and secret */
    struct verp *verp;   /* VERP rules (verp.h), NULL: none */
    struct db **dbs;
    size_t ndbs;
    size_t rr;
    struct session_finish *finish; /* finishes shared by sessions (session_finish.h) */
    struct session_claims *claims; /* claims shared by sessions (session_claims.h) */
    struct srcip *srcip;           /* source IPs disabled per domain (srcip.h) */
    const char *pipe;
    const char *node_label;
    long long node_id;
    bool stopping;
    size_t content_bytes;  /* held by batches and reserved by claims in flight */
    double avg_row_bytes;  /* content bytes per claimed row, estimated */
    double avg_claim_rows; /* rows per claim that was not cut short by its reservation */
    unsigned nsessions;
    struct session *sessions;
    uint64_t next_id;
    /* called after a session was freed (the worker may exit) */
    void (*on_freed)(void *arg);
    void *arg;
};

/* A ready connection of the env, round robin, or NULL. */
struct db *session_env_db(struct session_env *e);

/* Starts a session of Q (domain settings DOM, which must outlive it). */
void session_start(struct session_env *e, struct admission_queue *q, const struct conf_domain *dom);
/* Ends every session now (shutdown deadline, exit): their recipients are
 * released by node_stop or by lease expiry. */
void session_end_all(struct session_env *e);
/* The slot connection was lost: sessions finish their batch and quit. */
void session_slots_lost(struct session_env *e);

#endif
