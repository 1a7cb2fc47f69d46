/* webhook: the webhook sender process (see README, Webhooks).
 *
 * The root supervises one webhook process per node while the configuration
 * has webhooks entries and a database (pipe.c, kind PIPE_KIND_WEBHOOK:
 * restart with backoff, SIGTERM then SIGKILL on stop). It parses nothing
 * that comes from outside but HTTP status lines, so it stays out of the
 * root, and it runs apart from the pipes, so a consumer that is slow or
 * down never slows delivery. Each consumer is sent by the one process in
 * the cluster that holds its session advisory lock (mta.webhook_lock). */
#ifndef PGMTA_WEBHOOK_H
#define PGMTA_WEBHOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "conf.h"

#define WEBHOOK_DEFAULT_BATCH 100u
#define WEBHOOK_DEFAULT_TIMEOUT_MS 10000u
#define WEBHOOK_DEFAULT_MAX_RETRY_MS 300000u
#define WEBHOOK_MIN_RETRY_MS 1000u
#define WEBHOOK_MAX_TIMEOUT_MS 600000u
#define WEBHOOK_KEY_MAX 4096

/* A webhooks url: http:// or https://, a host, an optional port. */
struct webhook_url {
    bool https;
    char *host; /* an IPv6 literal without its brackets */
    unsigned port;
    char *path; /* the path (at least "/") and "?query" */
};

/* Parses URL into out (freed with webhook_url_free); -1 with the reason in
 * err. No user info (it would be logged) and no fragment. */
int webhook_url_parse(const char *url, struct webhook_url *out, char *err, size_t errlen);
void webhook_url_free(struct webhook_url *u);

/* The key in PATH: its first line without trailing blanks. The file must be
 * a regular file, not accessible by others (as DKIM keys), and the key not
 * empty. Returns the key (free(3)) and its length, or NULL with the reason
 * in err (which never holds the key). */
char *webhook_read_secret(const char *path, size_t *len, char *err, size_t errlen);

/* TYPES: event type letters (r, d, b, t) separated by commas. 0 or -1 with
 * the reason in err. */
int webhook_types_check(const char *types, char *err, size_t errlen);

/* PATH holds at least one PEM certificate. 0 or -1 with the reason. */
int webhook_ca_check(const char *path, char *err, size_t errlen);

/* Runs until SIGTERM/SIGINT; SIGHUP leaves too, so that the supervisor
 * starts it again with the configuration it has just reloaded. Takes
 * ownership of conf. Returns the exit status. */
int webhook_run(struct conf *conf, const char *name, unsigned index);

/* Delay before retry number FAILURES (1 for the first): doubles from
 * WEBHOOK_MIN_RETRY_MS up to cap_ms. */
uint64_t webhook_retry_delay_ms(unsigned failures, uint64_t cap_ms);

/* "sha256=" and the hex HMAC-SHA256 of "TIMESTAMP.BODY" under KEY, into out
 * (at least 72 bytes). */
void webhook_sign(const char *key, size_t keylen, const char *timestamp, const char *body,
                  size_t bodylen, char *out, size_t outlen);

#endif
