/* batch: the recipients a session claimed in one statement, decoded from
 * the claim result, and their outcomes encoded for the finish statement.
 *
 * A batch owns the claim's PGresult: message content is read in place and
 * held once per message (the claim sends it on the message's first row
 * only), shared by the SMTP transactions of that message and by its signed
 * copy. Rows that hold nonsense are handed to a reject callback (the
 * session sets them aside) and never enter the batch. Functions that change
 * what the batch holds return the byte count they added or released, so
 * that the owner keeps its content budget exact. */
#ifndef PGMTA_BATCH_H
#define PGMTA_BATCH_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "smtp_client.h"

struct buf;
struct dkim;
struct unsub;
struct verp;

/* Largest content a node sends; larger rows are nonsense (enqueue refuses
 * more than 64 MB). */
#define BATCH_MAX_CONTENT (64u * 1024 * 1024)

struct batch_rcpt {
    long long id;
    long long token;
    long long message_id;
    char *rcpt;
    int attempt;
    long long queued_at_us; /* wall clock */
    /* outcome */
    char type; /* 'd', 'b', 't' */
    char status[16];
    char *diag;
    const char *bounce_cat;
    long long retry_at_us; /* wall clock, for 't' */
};

/* One SMTP transaction. A message whose recipients are more than
 * max-rcpt-per-message becomes several transactions; they share its
 * content and its signed copy, both owned by the first of them (owner < 0). */
struct batch_msg {
    long long message_id;
    char *mail_from;
    char *orig_from; /* the message's own sender when mail_from is a VERP address */
    char *envid;
    char *job_id;
    /* A list-unsubscribe entry applied at decoding: one recipient per
     * transaction, its headers in prefix (owned by each transaction). */
    bool unsub;
    unsigned char *prefix;
    size_t prefix_len;
    const unsigned char *content; /* inside the claim result */
    size_t content_len;
    unsigned char *signed_content; /* DKIM/BIMI headers + content, when signed */
    size_t signed_len;
    long owner;   /* index of the transaction that owns the content, -1 itself */
    size_t first; /* index of its first recipient */
    size_t nrcpts;
    const char **rcpt_ptrs;
    /* DSN options (see README, "DSN options"): parallel to rcpt_ptrs, NULL
     * when no recipient of the transaction has one; strings inside the
     * claim result */
    signed char *notify; /* NOTIFY bitmask, -1 none */
    const char **orcpt;
    char ret; /* RET: 'F', 'H' or 0 */
};

struct batch {
    struct batch_rcpt *rcpts;
    size_t nrcpts;
    struct batch_msg *msgs;
    size_t nmsgs;
    struct smtp_message *smtp_msgs; /* what the SMTP client reads until its callback */
    PGresult *res;                  /* the claimed rows */
    const struct verp *verp;        /* the session's VERP rules (NULL: none), read by decode */
    /* the connection the batch went over, for accounting */
    char *dsn_mta;
    char *source_ip;
    char *dest_ip;
    char *tls_protocol;
    char *tls_cipher;
    char *tls_policy; /* TLS-RPT policy type, failure and policy domain */
    char *tls_failure;
    char *tls_policy_domain;
    bool hop_dsn;                  /* the next hop offered DSN: it reports success */
    unsigned notify_delay_every_s; /* the domain's notify-of-delay-every */
};

/* A row that cannot be delivered: set it aside with REASON. */
typedef void (*batch_reject_cb)(long long id, long long token, const char *reason, void *arg);

/* Decodes a claim result (called from the claim's db callback: the batch
 * takes the result). Consecutive rows of one message become transactions
 * of at most MAX_RCPT recipients, of one when a list-unsubscribe entry of
 * UNSUB (may be NULL) applies to the message; a recipient whose message gets a
 * VERP sender (b->verp) is a transaction of its own. Returns the content bytes now held;
 * *LEASE_LEFT_MS is the lease time the server gave (0 without rows). */
size_t batch_decode(struct batch *b, const PGresult *res, unsigned max_rcpt,
                    const struct unsub *unsub, batch_reject_cb reject, void *arg,
                    int *lease_left_ms);
/* Rows to claim for TOKENS messages, at most MAX_ROWS: message tokens
 * (max-msg-rate) and max-msg-per-connection count messages, i.e. SMTP
 * transactions, as PowerMTA does, while a claim counts recipient rows. A
 * claim asks for enough rows for TOKENS whole transactions of MAX_RCPT
 * recipients (max-rcpt-per-message), so that a message is never cut by
 * the limit; transactions claimed beyond the tokens are given back
 * (batch_trim). */
unsigned batch_claim_rows(unsigned max_rcpt, unsigned tokens, unsigned max_rows);
/* Learns from a decoded batch that holds HELD content bytes: the content
 * bytes per row (up at once, down by halves: claims in flight reserve by
 * this estimate, and one too low lets several large claims in). */
void batch_learn(const struct batch *b, size_t held, double *avg_row_bytes);
/* Drops the transactions from KEEP on, appending their recipient ids and
 * lease tokens to the array literals IDS and TOKENS (written with braces).
 * Returns the content bytes released. */
size_t batch_trim(struct batch *b, size_t keep, struct buf *ids, struct buf *tokens);
/* Frees everything the batch holds; returns the content bytes released. */
size_t batch_clear(struct batch *b);

/* Builds b->smtp_msgs: DKIM signature and BIMI-Selector once per message
 * (KEYS may be NULL), 8BITMIME and SMTPUTF8 flags. A transaction with a
 * list-unsubscribe entry gets its List-Unsubscribe headers and a signature
 * of its own as a prefix, the content shared. Returns the bytes of the
 * signed copies and prefixes now held. */
size_t batch_smtp_messages(struct batch *b, struct dkim *keys, const struct unsub *unsub);
/* Records the connection facts of INFO for accounting. */
void batch_set_connection(struct batch *b, const struct smtp_conn_info *info);

void batch_rcpt_set(struct batch_rcpt *r, char type, const char *status, const char *diag,
                    const char *cat);
/* "smtp;550 5.1.1 user unknown" (PowerMTA style), one line; the caller frees. */
char *batch_reply_diag(const struct smtp_rcpt_result *r);

/* The finish statement's array parameters, in order. */
enum {
    BATCH_F_IDS,
    BATCH_F_TOKENS,
    BATCH_F_TYPES,
    BATCH_F_RETRY,
    BATCH_F_STATUS,
    BATCH_F_DIAG,
    BATCH_F_MTA,
    BATCH_F_CAT,
    BATCH_F_SRC,
    BATCH_F_DST,
    BATCH_F_TLSP,
    BATCH_F_TLSC,
    BATCH_F_TLSPOL,
    BATCH_F_TLSFAIL,
    BATCH_F_TLSDOM,
    BATCH_F_HOPDSN,
    BATCH_F_DELAY,
    BATCH_F_N
};
/* Encodes the outcomes into BATCH_F_N array literals (initialised here; the
 * caller frees them with buf_free). Every row carries the connection's TLS
 * protocol and cipher; 'b' and 't' rows their bounce category. */
void batch_finish_arrays(const struct batch *b, struct buf *a);
/* Appends a wall-clock time (microseconds) as a timestamptz literal,
 * double-quoted when QUOTED (inside an array literal). */
void batch_append_ts(struct buf *out, long long us, bool quoted);

#endif
