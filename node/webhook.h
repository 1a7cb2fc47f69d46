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

#include <stddef.h>
#include <stdint.h>

#include "conf.h"

#define WEBHOOK_DEFAULT_BATCH 100u
#define WEBHOOK_DEFAULT_TIMEOUT_MS 10000u
#define WEBHOOK_DEFAULT_MAX_RETRY_MS 300000u
#define WEBHOOK_MIN_RETRY_MS 1000u

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
