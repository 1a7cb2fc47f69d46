/* http_metrics: the Prometheus exposition of GET /metrics (see
 * http_metrics.h).
 *
 * Ownership: nothing is kept; the result belongs to the caller (db.c), the
 * buffer to the caller too. Every family is a gauge: the statement reads
 * current counts, and the accounting rows of the last hour only. */
#include "http_metrics.h"

#include <stdbool.h>
#include <string.h>

#include "util.h"

/* One statement for /metrics: k = 'q' per queue, 'n' nodes (alive, all),
 * 'a' accounting rows of the last hour per type, 'w' the lag of each
 * webhook consumer (configured names, at most 50: bounded labels). Counting every accounting
 * row ever written would read the whole partitioned table on each scrape;
 * the last hour reads today's partition only, so the metric is a gauge
 * (pgmta_acct_events_last_hour), not a counter. */
const char http_metrics_sql[] =
    "SELECT 'q' AS k, q.domain, coalesce(q.vmta, '') AS vmta, q.pipe, "
    "       q.ready, q.deferred, q.in_flight, q.paused::int::bigint "
    "  FROM mta.queues q "
    "UNION ALL "
    "SELECT 'n', NULL, NULL, NULL, count(*) FILTER (WHERE n.alive), count(*), 0, 0 "
    "  FROM mta.nodes n "
    "UNION ALL "
    "SELECT 'a', t.type, NULL, NULL, coalesce(a.n, 0), 0, 0, 0 "
    "  FROM (VALUES ('r'), ('d'), ('b'), ('t')) t(type) "
    "  LEFT JOIN (SELECT type::text AS type, count(*) AS n FROM mta.acct "
    "              WHERE time_logged > now() - interval '1 hour' GROUP BY 1) a "
    "  USING (type) "
    "UNION ALL "
    "SELECT * FROM (SELECT 'w', w.consumer, NULL, NULL, w.events_behind, "
    "       w.seconds_behind::bigint, w.failures::bigint, 0 "
    "  FROM mta.webhook_lag w ORDER BY w.consumer LIMIT 50) w";

static void
prom_label(struct buf *b, const char *name, const char *value, bool first)
{
    buf_printf(b, "%s%s=\"", first ? "" : ",", name);
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            buf_puts(b, "\\\\");
        else if (*p == '"')
            buf_puts(b, "\\\"");
        else if (*p == '\n')
            buf_puts(b, "\\n");
        else
            buf_append(b, p, 1);
    }
    buf_puts(b, "\"");
}

static void
prom_family(struct buf *b, const char *name, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
}

static const char *
cell(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? "" : PQgetvalue(res, row, col);
}

static void
queue_labels(struct buf *b, const PGresult *res, int r)
{
    prom_label(b, "domain", cell(res, r, 1), true);
    prom_label(b, "vmta", cell(res, r, 2), false);
    prom_label(b, "pipe", cell(res, r, 3), false);
}

void
http_metrics_render(struct buf *b, const PGresult *res, const char *node_name)
{
    int n = PQntuples(res);
    prom_family(b, "pgmta_build_info", "Version of the pgmtad answering, always 1.");
    buf_puts(b, "pgmta_build_info{");
    prom_label(b, "version", PGMTA_VERSION, true);
    prom_label(b, "node", node_name ? node_name : "", false);
    buf_puts(b, "} 1\n");
    prom_family(b, "pgmta_queue_recipients",
                "Queued recipients per queue (mta.queues) and state: ready, deferred, in_flight.");
    static const char *const states[] = {"ready", "deferred", "in_flight"};
    for (int s = 0; s < 3; s++) {
        for (int r = 0; r < n; r++) {
            if (strcmp(cell(res, r, 0), "q") != 0)
                continue;
            buf_puts(b, "pgmta_queue_recipients{");
            queue_labels(b, res, r);
            prom_label(b, "state", states[s], false);
            buf_printf(b, "} %s\n", cell(res, r, 4 + s));
        }
    }
    prom_family(b, "pgmta_queue_paused", "1 when the queue is paused.");
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "q") != 0)
            continue;
        buf_puts(b, "pgmta_queue_paused{");
        queue_labels(b, res, r);
        buf_printf(b, "} %s\n", cell(res, r, 7));
    }
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "n") != 0)
            continue;
        prom_family(b, "pgmta_nodes_alive",
                    "Node processes running with a heartbeat in the last 30 s (mta.nodes).");
        buf_printf(b, "pgmta_nodes_alive %s\n", cell(res, r, 4));
        prom_family(b, "pgmta_nodes_registered", "Node processes known to mta.nodes.");
        buf_printf(b, "pgmta_nodes_registered %s\n", cell(res, r, 5));
    }
    prom_family(b, "pgmta_acct_events_last_hour",
                "Accounting rows (mta.acct) logged in the last hour by type: r received, "
                "d delivered, b bounced, t transient failure.");
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "a") != 0)
            continue;
        buf_puts(b, "pgmta_acct_events_last_hour{");
        prom_label(b, "type", cell(res, r, 1), true);
        buf_printf(b, "} %s\n", cell(res, r, 4));
    }
    prom_family(b, "pgmta_webhook_events_behind",
                "Events past the cursor of each webhook consumer that its filters select.");
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "w") != 0)
            continue;
        buf_puts(b, "pgmta_webhook_events_behind{");
        prom_label(b, "consumer", cell(res, r, 1), true);
        buf_printf(b, "} %s\n", cell(res, r, 4));
    }
    prom_family(b, "pgmta_webhook_seconds_behind",
                "Age of the oldest event a webhook consumer has not acknowledged, 0 if none.");
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "w") != 0)
            continue;
        buf_puts(b, "pgmta_webhook_seconds_behind{");
        prom_label(b, "consumer", cell(res, r, 1), true);
        buf_printf(b, "} %s\n", cell(res, r, 5));
    }
    prom_family(b, "pgmta_webhook_failures",
                "Consecutive failed requests of each webhook consumer.");
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "w") != 0)
            continue;
        buf_puts(b, "pgmta_webhook_failures{");
        prom_label(b, "consumer", cell(res, r, 1), true);
        buf_printf(b, "} %s\n", cell(res, r, 6));
    }
}
