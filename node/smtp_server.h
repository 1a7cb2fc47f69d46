/* smtp_server: the SMTP injection listener, run by each smtp-in process
 * (smtp_in.c; see README, Over SMTP).
 *
 * ESMTP with PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, STARTTLS and
 * AUTH PLAIN/LOGIN over TLS. Clients are allowed by address
 * (smtp-listener.allow) or by authentication; everyone else gets 5.7.1 for
 * every recipient. Messages are stored in groups by mta.enqueue_batch() on
 * the listener's own database connection (smtp_in_batch.c) and "250" is
 * sent only once that statement has committed. Only CRLF.CRLF ends DATA.
 * Limits per process: sessions in all, per stranger address and reserved
 * for allowed addresses; unsent replies (backpressure); the whole of DATA.
 *
 * The pure parsing functions below (smtp_server_parse.c) are exported for
 * the unit and fuzz tests; the daemon only uses
 * smtp_server_new/reload/stop_accepting/free. */
#ifndef PGMTA_SMTP_SERVER_H
#define PGMTA_SMTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"
#include "util.h"

struct event_base;
struct smtp_server;

/* Longest command line accepted, without its line ending. */
#define SMTP_SERVER_MAX_LINE 1000
/* Longest address accepted between < and >. */
#define SMTP_SERVER_MAX_ADDR 320

/* Opens every listen.smtp address of CONF (none: a server that accepts
 * nothing) and the listener's database connection. NULL with a reason in
 * err when an address cannot be bound or the TLS certificate or key cannot
 * be loaded. The server copies what it needs from CONF. */
struct smtp_server *smtp_server_new(struct event_base *base, const struct conf *conf, char *err,
                                    size_t errlen);
/* The inbound listener (listen.inbound, inbound { }): the same protocol
 * and limits, no AUTH, RCPT only for the bounce and feedback domains
 * (550 5.7.1 otherwise), and each message parsed and stored as a report
 * (inbound.c) instead of queued. */
struct smtp_server *smtp_server_new_inbound(struct event_base *base, const struct conf *conf,
                                            char *err, size_t errlen);
/* Applies a new configuration: limits, users, allow list and TLS files
 * apply to new commands at once; listeners are opened and closed to match
 * listen.smtp. The database URL is read at start only. On error (TLS files,
 * bind) returns -1 with a reason in err and keeps the old settings. */
int smtp_server_reload(struct smtp_server *s, const struct conf *conf, char *err, size_t errlen);
/* Closes the listening sockets. Sessions waiting for a command get 421;
 * those in DATA or waiting for the database finish their message first. */
void smtp_server_stop_accepting(struct smtp_server *s);
/* Closes every session and the database connection. NULL is ignored. */
void smtp_server_free(struct smtp_server *s);
size_t smtp_server_sessions(const struct smtp_server *s);

/* ---- parsing (pure functions) ---- */

enum smtp_server_verb {
    SMTP_VERB_UNKNOWN = 0,
    SMTP_VERB_EHLO,
    SMTP_VERB_HELO,
    SMTP_VERB_MAIL,
    SMTP_VERB_RCPT,
    SMTP_VERB_DATA,
    SMTP_VERB_RSET,
    SMTP_VERB_NOOP,
    SMTP_VERB_QUIT,
    SMTP_VERB_VRFY,
    SMTP_VERB_HELP,
    SMTP_VERB_STARTTLS,
    SMTP_VERB_AUTH,
    SMTP_VERB_BDAT,
};

struct smtp_server_cmd {
    enum smtp_server_verb verb;
    const char *arg; /* points into the line: after the verb and spaces */
    size_t arglen;   /* trailing spaces removed */
};

/* Splits a command line (without line ending) into verb and argument.
 * Returns NULL on success, else the reply to send ("500 5.5.2 ..."):
 * NUL or other control characters, or a line longer than
 * SMTP_SERVER_MAX_LINE. An unknown verb is not an error (verb UNKNOWN). */
const char *smtp_server_parse_command(const char *line, size_t len, struct smtp_server_cmd *cmd);

/* Parses the argument of MAIL ("FROM:<a> params") or RCPT ("TO:<a> params")
 * into addr (without brackets; "" for <> which only MAIL allows) and the
 * parameters that follow (*params points into arg, "" when none). Returns
 * NULL or the reply to send. The address has no CR, LF, NUL, control
 * characters or unquoted spaces, at most 64 octets of local part and 255 of
 * domain; a recipient needs a domain. */
const char *smtp_server_parse_path(const char *arg, size_t arglen, bool mail, char *addr,
                                   size_t addrlen, const char **params);

/* Checks the MAIL parameters: SIZE=n (n > max_size, or not a number that
 * fits 64 bits: 552 5.3.4), BODY=7BIT|8BITMIME, anything else 555 5.5.4.
 * Returns NULL or the reply to send; *declared gets SIZE or 0. */
/* Received: fields in the header section of buf[0..len) (hdr.c), counting
 * stops at limit: the hop count of a message, for the loop check
 * (hop-count-limit, see README, Security). */
unsigned smtp_server_hop_count(const char *buf, size_t len, unsigned limit);

/* The DSN options of RFC 3461 (see README, "DSN options"). */
#define SMTP_DSN_NEVER 0
#define SMTP_DSN_SUCCESS 1
#define SMTP_DSN_FAILURE 2
#define SMTP_DSN_DELAY 4
#define SMTP_SERVER_MAX_ENVID 100 /* RFC 3461 4.4, as xtext */
#define SMTP_SERVER_MAX_ORCPT 500 /* RFC 3461 4.2, as xtext */

struct smtp_server_mail_dsn {
    char ret;                              /* 'F' FULL, 'H' HDRS, 0 none */
    char envid[SMTP_SERVER_MAX_ENVID + 1]; /* decoded, "" none */
};

struct smtp_server_rcpt_dsn {
    int notify;                            /* SMTP_DSN_* bits, -1 none */
    char orcpt[SMTP_SERVER_MAX_ORCPT + 1]; /* "addr-type;decoded address", "" none */
};

/* With DSN non-NULL, also RET=FULL|HDRS and ENVID=xtext (decoded into DSN;
 * bad syntax or a decoded byte outside printable ASCII: 501 5.5.4). */
const char *smtp_server_mail_params(const char *params, uint64_t max_size, uint64_t *declared,
                                    struct smtp_server_mail_dsn *dsn);
/* Checks the RCPT parameters: NOTIFY=NEVER or a list of SUCCESS, FAILURE,
 * DELAY, and ORCPT=addr-type;xtext (bad syntax or a duplicate: 501 5.5.4),
 * anything else 555 5.5.4. Returns NULL or the reply to send. */
const char *smtp_server_rcpt_params(const char *params, struct smtp_server_rcpt_dsn *dsn);
/* Decodes RFC 3461 xtext ("+XX" hex escapes, upper-case hex) of IN[0..N)
 * into OUT (NUL-terminated). Returns the decoded length, -1 when IN is not
 * xtext (empty, '=' or a byte outside '!'..'~', a bad escape) or OUT is too
 * small. */
long smtp_server_xtext_decode(const char *in, size_t n, char *out, size_t outlen);

/* Reads DATA content: removes dot-stuffing and stops after CRLF "." CRLF
 * (only that sequence; a dot after a bare LF or CR is content). The
 * terminator is not stored; the content keeps the CRLF before it. At most
 * max bytes are stored; beyond that, overflow is set and the rest is
 * counted and discarded. */
struct smtp_server_data {
    int state;
    size_t max;
    uint64_t total; /* content bytes seen, stored or not */
    bool overflow;
    bool done;
    struct buf *out;
};
void smtp_server_data_init(struct smtp_server_data *d, struct buf *out, size_t max);
/* Consumes bytes of P up to and including the terminator; returns how many
 * were consumed (fewer than n only when d->done became true). */
size_t smtp_server_data_feed(struct smtp_server_data *d, const char *p, size_t n);

/* Removes every X-Job and X-Virtual-MTA header field (any case, with its
 * continuation lines) from the header section of CONTENT, which starts at
 * offset START, and returns their unfolded, trimmed values (the last one
 * wins; NULL when absent or empty; caller frees). */
void smtp_server_take_headers(struct buf *content, size_t start, char **job_id, char **vmta);

/* Base64 (RFC 4648, padding required) into out; returns the decoded length
 * or -1. */
long smtp_server_base64_decode(const char *in, size_t inlen, unsigned char *out, size_t outlen);

/* Compares a password given by a client with the configured one: plain
 * text, or "{SHA256}" followed by the hex digest. Constant time. */
bool smtp_server_password_ok(const char *configured, const char *given, size_t givenlen);

/* An allow list entry: "ip/prefix" or "ip". */
struct smtp_server_cidr {
    int family; /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    unsigned prefix;
};
int smtp_server_parse_cidr(const char *s, struct smtp_server_cidr *out);
/* Does the address (AF_INET or AF_INET6 bytes; IPv4-mapped IPv6 counts as
 * IPv4) fall into the network? */
bool smtp_server_cidr_match(const struct smtp_server_cidr *net, int family,
                            const unsigned char *addr);

#endif
