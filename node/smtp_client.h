/* smtp_client: the outbound SMTP client, one state machine per connection.
 *
 * A session is opened for one destination queue with an ordered list of
 * hosts (from dns). It connects to the first address that accepts and greets
 * with 220 (next address/host on refusal, timeout or 421 greeting), does
 * EHLO (HELO fallback), STARTTLS per policy (EHLO again after TLS), then
 * delivers batches of messages handed to it with smtp_client_send, using
 * PIPELINING when offered, RSET between messages, dot-stuffing and CRLF
 * normalisation. After each batch it reports one result per recipient and
 * waits for the next batch or smtp_client_quit. The caller never frees a
 * session inside one of its callbacks: it calls smtp_client_quit or
 * smtp_client_free, which defer the free to the end of the loop turn. */
#ifndef PGMTA_SMTP_CLIENT_H
#define PGMTA_SMTP_CLIENT_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dns.h"

#define SMTP_MAX_REPLY 4096 /* bytes of one reply (all lines); more: protocol error */
#define SMTP_MAX_REPLY_LINES 64

struct smtp_client_config {
    const char *helo_name;         /* EHLO argument */
    const struct sockaddr *source; /* bind address or NULL */
    socklen_t source_len;
    bool use_starttls;       /* try STARTTLS when offered */
    bool require_starttls;   /* never send in clear: defer instead */
    bool tls_verify;         /* verify the certificate against the host name */
    bool tls_check;          /* verify, but only report (tls_failure), never fail */
    const char *tls_ca_file; /* extra CA file for verification, or NULL */
    /* the policy that requires TLS ("MTA-STS"), or NULL: its failures are
     * 4.7.5 and their text starts with "MTA-STS: " */
    const char *tls_policy_name;
    uint64_t connect_timeout_ms;
    uint64_t command_timeout_ms;
    uint64_t data_timeout_ms;
    const char *id; /* for log lines, e.g. the queue name */
};

/* One message of a batch. The session copies nothing: the caller keeps
 * messages alive until the batch callback. content is the raw message
 * (headers and body) as stored; line endings are normalised to CRLF and
 * dots stuffed on the wire. */
struct smtp_message {
    const char *mail_from; /* without <>; "" for the null sender */
    const char *envid;     /* ENVID= when the server offers DSN, or NULL */
    char ret;              /* RET=FULL ('F') or HDRS ('H') when DSN is offered, or 0 */
    const char *const *rcpts;
    size_t nrcpts;
    const unsigned char *prefix; /* header lines of this transaction only, sent before
                                    content (ending in CRLF), or NULL */
    size_t prefix_len;
    /* per recipient, sent when the server offers DSN; either may be NULL */
    const signed char
        *notify;              /* NOTIFY bitmask (1 SUCCESS, 2 FAILURE, 4 DELAY, 0 NEVER), -1 none */
    const char *const *orcpt; /* ORCPT "addr-type;address" (decoded), or NULL */
    const unsigned char *content;
    size_t content_len;
    bool eightbit; /* content has 8-bit bytes: BODY=8BITMIME if offered */
    bool smtputf8; /* addresses have UTF-8: SMTPUTF8 required */
};

enum smtp_outcome {
    SMTP_DELIVERED = 0, /* 2xx after DATA */
    SMTP_TRANSIENT,     /* 4xx, timeout, connection trouble, TLS policy */
    SMTP_PERMANENT,     /* 5xx */
};

/* Result for one recipient. Strings are valid during the callback only. */
struct smtp_rcpt_result {
    enum smtp_outcome outcome;
    int code;           /* SMTP reply code, 0 when none (e.g. connect failure) */
    const char *status; /* enhanced status "4.2.0" from the reply or derived */
    const char *reply;  /* full reply text (lines joined by "\n"), or our error text */
    bool at_rcpt;       /* the outcome is the RCPT reply (not connection, MAIL or DATA) */
};

/* Facts about the connection, for accounting. */
struct smtp_conn_info {
    const char *host;         /* MX host name connected to, NULL if none */
    const char *ip;           /* remote IP as text, NULL if none */
    const char *source_ip;    /* local IP as text, NULL if none */
    const char *tls_protocol; /* e.g. "TLSv1.3", NULL when clear text */
    const char *tls_cipher;
    /* RFC 8460 result type of a TLS check that failed on this connection
     * (tls_check or tls_verify), or NULL */
    const char *tls_failure;
    /* filled by the caller, not by the client: the policy that applied */
    const char *tls_policy;
    const char *tls_policy_domain;
    bool dsn; /* the server offered DSN (RFC 3461): it reports success */
};

struct smtp_client;

/* Called once per smtp_client_send batch. results[i] is an array of
 * messages[i].nrcpts results. After this returns, the session is idle
 * (send another batch or quit) unless 'usable' is false (connection lost:
 * the caller must free it). */
typedef void (*smtp_batch_cb)(struct smtp_client *c, const struct smtp_rcpt_result *const *results,
                              const struct smtp_conn_info *info, bool usable, void *arg);

/* Creates a session and starts connecting. hosts are copied. */
struct smtp_client *smtp_client_new(struct event_base *base, const struct smtp_client_config *cfg,
                                    const struct dns_host *hosts, size_t nhosts);
/* DANE requirements of the hosts (RFC 7672), copied, applied from the next
 * TLS decision on. */
struct dane_set;
void smtp_client_set_dane(struct smtp_client *c, const struct dane_set *dane);
/* Hands a batch to the session: it is sent as soon as the session is ready
 * (connected, greeted, EHLO/TLS done). Only one batch at a time. If every
 * host fails, every recipient gets SMTP_TRANSIENT (or SMTP_PERMANENT if a
 * host answered 5xx to the greeting/EHLO/MAIL). */
void smtp_client_send(struct smtp_client *c, const struct smtp_message *messages, size_t nmessages,
                      smtp_batch_cb cb, void *arg);
/* Sends QUIT if connected and frees the session later; no more callbacks. */
void smtp_client_quit(struct smtp_client *c);
/* Frees without QUIT (deferred to the end of the loop turn); no more callbacks. */
void smtp_client_free(struct smtp_client *c);

/* Helpers exported for unit tests and fuzzing. */
/* Appends MSG to OUT with bare CR and bare LF turned into CRLF, a leading
 * "." of every line doubled, and a final CRLF added if missing. Does not
 * append the terminating ".\r\n". */
struct buf;
void smtp_client_dotstuff(struct buf *out, const unsigned char *msg, size_t len);
/* Parses one reply line: returns 0 and sets code and *last (space vs dash)
 * for "NNN-text" / "NNN text" / "NNN"; -1 for anything else. */
int smtp_reply_parse_line(const char *line, size_t len, int *code, bool *last);
/* Extracts the enhanced status code ("5.1.1") at the start of reply text
 * into out (size >= 16); returns 0 if found. */
int smtp_reply_enhanced_status(const char *text, char *out, size_t outlen);

/* Process-wide TLS client context (OpenSSL); created on first use. */
void smtp_client_tls_cleanup(void);

#endif
