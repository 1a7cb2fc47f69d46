/* warmup: the node's side of IP warm-up plans (sql/056_warmup.sql, README
 * IP warm-up): a session whose source virtual MTA is warming reserves its
 * messages for (source IP, limit key) in one statement before it starts, and
 * gives back what it did not send. */
#ifndef PGMTA_WARMUP_H
#define PGMTA_WARMUP_H

#include <stdbool.h>

#include "db.h"

struct conf;
struct conf_vmta;

/* Prepares the statements on DB (with the queue's). */
void warmup_prepare(struct db *db);

/* The source IP whose plans limit sessions through VMTA, or NULL when the
 * vmta does not take part in warm-up (`warmup` off and no overflow pool). */
const char *warmup_source_ip(const struct conf_vmta *vmta);

/* Reserves up to WANT messages of IP to KEY (mta.warmup_take); CB as for
 * db_exec. Returns -1 when not queued (CB not called). */
int warmup_take(struct db *db, const char *ip, const char *key, unsigned want, db_cb cb, void *arg);

/* The answer of warmup_take: false on an error. */
bool warmup_parse(const PGresult *res, unsigned *granted, bool *warming);

/* Gives back N reserved messages that were not sent (no answer awaited). */
void warmup_refund(struct db *db, const char *ip, const char *key, unsigned n);

/* A member of VMTA's overflow pool (turn by *NEXT), or NULL when it has
 * none. */
const char *warmup_overflow_member(const struct conf *c, const struct conf_vmta *vmta,
                                   unsigned *next);

#endif
