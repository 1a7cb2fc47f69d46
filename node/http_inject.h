/* http_inject: the HTTP injection API, POST /api/inject/v1 (see README,
 * "Over HTTP"). The request body is JSON in the shape of KumoMTA's inject
 * API (envelope_sender, recipients[{email, name, substitutions, metadata}],
 * substitutions, metadata, content as a raw message or as parts) plus the pgmta
 * extensions job_id, vmta, pipe and envid.
 *
 * This module is pure: it turns a request body into the parameters of one
 * SQL statement (mta.inject_request, every message of the request in one
 * transaction) and that statement's result into the reply. http.c owns the
 * HTTP request, the token check and the database call. */
#ifndef PGMTA_HTTP_INJECT_H
#define PGMTA_HTTP_INJECT_H

#include <stddef.h>

#include <libpq-fe.h>

struct buf;
struct inject_batch;

#define HTTP_INJECT_PATH "/api/inject/v1"
#define HTTP_INJECT_SQL                                                                            \
    "SELECT ids, suppressed FROM mta.inject_request($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
#define HTTP_INJECT_NPARAMS 10
#define HTTP_INJECT_MAX_RCPT 100000
/* Every message of one request together, after substitution. */
#define HTTP_INJECT_MAX_TOTAL (256u * 1024 * 1024)

struct conf;
/* Takes hop-count-limit (a message carrying that many Received: fields is
 * refused: 400, "too many hops"; 50 until called) and the virtual MTA and
 * pool names that "vmta" may give (400 otherwise; not checked until
 * called). Process-wide; called at start and on every reload. */
void http_inject_configure(const struct conf *conf);

/* Parses BODY and builds every message. Returns the batch, or NULL with
 * *status (400, 413, 422) and a JSON error in ERRBODY naming the field at
 * fault. node_name is the Message-ID domain of last resort; now the Date. */
struct inject_batch *http_inject_parse(const char *body, size_t len, const char *node_name,
                                       long long now, struct buf *errbody, int *status);
/* The statement's parameters (valid while the batch lives). */
void http_inject_params(const struct inject_batch *b, const char *values[HTTP_INJECT_NPARAMS],
                        int lengths[HTTP_INJECT_NPARAMS], int formats[HTTP_INJECT_NPARAMS]);
size_t http_inject_nrecipients(const struct inject_batch *b);
size_t http_inject_nmessages(const struct inject_batch *b);
/* The reply to the statement's result RES (NULL: the connection was lost).
 * Returns the HTTP status: 200 (stored), 400 (refused data: the field is
 * named), 503 (database unavailable, nothing stored), 500. */
int http_inject_reply(const struct inject_batch *b, const PGresult *res, struct buf *out);
void http_inject_free(struct inject_batch *b);

/* Inflates a gzip body into OUT. Returns 0, -1 when it is not valid gzip,
 * -2 when the inflated size would exceed MAX. */
int http_inject_gunzip(const char *in, size_t n, size_t max, struct buf *out);

#endif
