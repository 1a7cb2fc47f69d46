/* tlsrpt: the daily TLS-RPT reports (RFC 8460) of the whole cluster (see
 * README, TLS-RPT).
 *
 * One process per node (the housekeeping one) runs the job: every
 * tls-report.interval it asks the database for the reports of the previous
 * UTC day still to send (mta.tlsrpt_claim builds them once per policy
 * domain and day for the whole cluster), looks up each domain's
 * _smtp._tls TXT record and sends the gzipped report to every rua:
 * mailto: through pgmta's own queue (mta.enqueue), https: by POST. What
 * failed is sent again on a later tick (mta.tlsrpt_done). */
#ifndef PGMTA_TLSRPT_H
#define PGMTA_TLSRPT_H
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <event2/event.h>

#include "conf.h"

struct db;
struct dns;
struct buf;
struct tlsrpt;

/* Default tls-report.interval. */
#define TLSRPT_DEFAULT_INTERVAL_MS 300000u
/* Most rua URIs used of one record. */
#define TLSRPT_MAX_RUA 8

/* NULL when conf has no tls-report.organization-name (reports off). conf,
 * dns and pick_db's connections must outlive the job. */
struct tlsrpt *tlsrpt_new(struct event_base *base, struct dns *dns,
                          struct db *(*pick_db)(void *arg), void *arg, const struct conf *conf,
                          const char *node);
/* Before the database connections are freed (their answers then come with
 * NULL): no new request, no new round. */
void tlsrpt_stop(struct tlsrpt *t);
/* After the database connections, before dns: cancels what is in flight. */
void tlsrpt_free(struct tlsrpt *t);
/* The statements the job uses, on DB (at every connection). */
void tlsrpt_prepare(struct db *db);

/* A gzip stream (RFC 1952, zlib's deflate at its best compression) of DATA
 * with MTIME in its header, appended to out. 0, or -1 when zlib failed
 * (out may then hold part of a stream). */
int tlsrpt_gzip(struct buf *out, const void *data, size_t n, time_t mtime);

/* The rua URIs of a _smtp._tls TXT record ("v=TLSRPTv1; rua=U1,U2"): up to
 * TLSRPT_MAX_RUA, malloc'ed into out. Returns how many, or -1 when TXT is
 * not a TLSRPTv1 record. */
int tlsrpt_parse_record(const char *txt, char **out, size_t max);
#endif
