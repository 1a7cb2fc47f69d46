/* http_metrics: GET /metrics in the Prometheus text format (version
 * 0.0.4): the statement that reads the queue's counters and the rendering
 * of its result. Called by http_api.c, which runs the statement. */
#ifndef PGMTA_HTTP_METRICS_H
#define PGMTA_HTTP_METRICS_H

#include <libpq-fe.h>

struct buf;

/* The one statement of a scrape (no parameters), prepared as
 * "http_metrics". */
extern const char http_metrics_sql[];
/* Appends the exposition of RES (a result of http_metrics_sql) to B;
 * node_name labels pgmta_build_info (NULL: ""). */
void http_metrics_render(struct buf *b, const PGresult *res, const char *node_name);

#endif
