/* srcip: the source IPs that disable-source-ip took out of use for a
 * domain, cluster-wide. The node that saw the reply writes the row
 * (mta.source_ip_disable, with reenable-after) and notes it here at once;
 * every node reads the table once a second (mta.source_ips_disabled), so a
 * pool's other members take the domain's traffic on every node within about
 * a second. The entries end by themselves at their time. */
#ifndef PGMTA_SRCIP_H
#define PGMTA_SRCIP_H

#include <stdbool.h>

#include "db.h"

struct event_base;
struct srcip;

/* Refreshes every REFRESH_MS milliseconds through PICK_DB(ARG). */
struct srcip *srcip_new(struct event_base *base, unsigned refresh_ms,
                        struct db *(*pick_db)(void *arg), void *arg);
/* Free after the database connections (their callbacks may still come). */
void srcip_free(struct srcip *s);
void srcip_prepare(struct db *db);

/* Whether IP is disabled for DOMAIN at NOW_US (wall clock). */
bool srcip_disabled(const struct srcip *s, const char *domain, const char *ip, long long now_us);
/* Disables IP for DOMAIN until UNTIL_US here at once, and in the database
 * for MS milliseconds with REASON (fire and forget). */
void srcip_disable(struct srcip *s, struct db *db, const char *domain, const char *ip,
                   long long until_us, long long ms, const char *reason);

#endif
