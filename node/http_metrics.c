/* http_metrics: the Prometheus exposition of GET /metrics (see
 * http_metrics.h).
 *
 * Ownership: nothing is kept; the result belongs to the caller (db.c), the
 * buffer to the caller too. The families from SQL are gauges (the
 * statement reads current counts, and the accounting rows of the last hour
 * only) except the SQL door's two counters, which are cluster-wide: every
 * node reports the same value. The node's own counters and histograms come
 * from a snapshot of the shared segment (metrics.h), the process gauges
 * from /proc. */
#include "http_metrics.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "util.h"

/* One statement for /metrics: k = 'q' per queue, 'n' nodes (alive, all),
 * 'a' accounting rows of the last hour per type, 'w' the lag of each
 * webhook consumer (configured names, at most 50: bounded labels), 'i' the
 * SQL door's counter (recipients queued, suppressed: the sum of its rows,
 * migrations/0014_inject_count.sql). Counting every accounting
 * row ever written would read the whole partitioned table on each scrape;
 * the last hour reads today's partition only, so the metric is a gauge
 * (pgmta_acct_events_last_hour), not a counter. */
const char http_metrics_sql[] =
    "SELECT 'q' AS k, q.domain, coalesce(q.vmta, '') AS vmta, q.pipe, "
    "       q.ready, q.deferred, q.in_flight, q.paused::int::bigint, q.connections::bigint, "
    "       coalesce(q.rollup_key, q.domain) AS rollup_key "
    "  FROM mta.queues q "
    "UNION ALL "
    "SELECT 'n', NULL, NULL, NULL, count(*) FILTER (WHERE n.alive), count(*), 0, 0, 0, NULL "
    "  FROM mta.nodes n "
    "UNION ALL "
    "SELECT 'a', t.type, NULL, NULL, coalesce(a.n, 0), 0, 0, 0, 0, NULL "
    "  FROM (VALUES ('r'), ('d'), ('b'), ('t')) t(type) "
    "  LEFT JOIN (SELECT type::text AS type, count(*) AS n FROM mta.acct "
    "              WHERE time_logged > now() - interval '1 hour' GROUP BY 1) a "
    "  USING (type) "
    "UNION ALL "
    "SELECT * FROM (SELECT 'w', w.consumer, NULL, NULL, w.events_behind, "
    "       w.seconds_behind::bigint, w.failures::bigint, 0, 0, NULL "
    "  FROM mta.webhook_lag w ORDER BY w.consumer LIMIT 50) w "
    "UNION ALL "
    "SELECT 'i', NULL, NULL, NULL, coalesce(sum(c.recipients), 0)::bigint, "
    "       coalesce(sum(c.suppressed), 0)::bigint, 0, 0, 0, NULL "
    "  FROM mta.inject_count c WHERE c.door = 'sql'";

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
prom_family_typed(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void
prom_family(struct buf *b, const char *name, const char *help)
{
    prom_family_typed(b, name, "gauge", help);
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

/* ---- the node's own families (metrics.h) ---- */

static void
counts_labels(struct buf *b, const struct metrics_queue_counts *q)
{
    prom_label(b, "domain", q->domain, true);
    prom_label(b, "vmta", q->vmta, false);
    prom_label(b, "pipe", q->pipe, false);
}

static void
render_outcomes(struct buf *b, const struct metrics_snap *s)
{
    prom_family_typed(b, "pgmta_delivered_total", "counter",
                      "Recipients delivered by this node since it started, per queue (the "
                      "first 100 label sets; later ones under domain=\"other\").");
    for (size_t i = 0; i < s->nqueues; i++) {
        buf_puts(b, "pgmta_delivered_total{");
        counts_labels(b, &s->queues[i]);
        buf_printf(b, "} %llu\n", (unsigned long long)s->queues[i].delivered);
    }
    prom_family_typed(b, "pgmta_bounced_total", "counter",
                      "Recipients bounced by this node since it started, per queue and bounce "
                      "category (categories seen only).");
    for (size_t i = 0; i < s->nqueues; i++) {
        for (size_t k = 0; k < METRICS_NCATS; k++) {
            if (!s->queues[i].bounced[k])
                continue;
            buf_puts(b, "pgmta_bounced_total{");
            counts_labels(b, &s->queues[i]);
            prom_label(b, "category", metrics_categories[k], false);
            buf_printf(b, "} %llu\n", (unsigned long long)s->queues[i].bounced[k]);
        }
    }
    prom_family_typed(b, "pgmta_deferred_total", "counter",
                      "Delivery attempts of a recipient that ended in a transient failure "
                      "(retried later), per queue, since this node started.");
    for (size_t i = 0; i < s->nqueues; i++) {
        buf_puts(b, "pgmta_deferred_total{");
        counts_labels(b, &s->queues[i]);
        buf_printf(b, "} %llu\n", (unsigned long long)s->queues[i].deferred);
    }
}

static void
render_doors(struct buf *b, const struct metrics_snap *s)
{
    prom_family_typed(b, "pgmta_injected_recipients_total", "counter",
                      "Recipients committed to the queue through this node, per door (SQL "
                      "injection is not seen by a node: see "
                      "pgmta_sql_injected_recipients_total).");
    for (int d = 0; d < METRICS_NDOORS; d++) {
        buf_puts(b, "pgmta_injected_recipients_total{");
        prom_label(b, "door", metrics_door_names[d], true);
        buf_printf(b, "} %llu\n", (unsigned long long)s->injected[d]);
    }
    prom_family_typed(b, "pgmta_suppressed_recipients_total", "counter",
                      "Recipients refused at this node's doors because they are suppressed "
                      "(a 'b' row with bounce_cat suppressed).");
    for (int d = 0; d < METRICS_NDOORS; d++) {
        buf_puts(b, "pgmta_suppressed_recipients_total{");
        prom_label(b, "door", metrics_door_names[d], true);
        buf_printf(b, "} %llu\n", (unsigned long long)s->suppressed[d]);
    }
}

/* A bound or a sum in the histogram's unit, as Prometheus reads it. */
static void
hist_value(struct buf *b, uint64_t v, double scale)
{
    if (scale == 1)
        buf_printf(b, "%llu", (unsigned long long)v);
    else
        buf_printf(b, "%.6g", (double)v / scale);
}

static void
hist_series(struct buf *b, const struct metrics_hist_snap *h, const char *label, const char *value)
{
    for (size_t i = 0; i <= h->nbounds; i++) {
        buf_printf(b, "%s_bucket{", h->name);
        if (label) {
            prom_label(b, label, value, true);
            buf_puts(b, ",");
        }
        buf_puts(b, "le=\"");
        if (i < h->nbounds)
            hist_value(b, h->bounds[i], h->scale);
        else
            buf_puts(b, "+Inf");
        buf_printf(b, "\"} %llu\n",
                   (unsigned long long)(i < h->nbounds ? h->buckets[i] : h->count));
    }
    const char *suffix[2] = {"_sum", "_count"};
    for (int k = 0; k < 2; k++) {
        buf_printf(b, "%s%s", h->name, suffix[k]);
        if (label) {
            buf_puts(b, "{");
            prom_label(b, label, value, true);
            buf_puts(b, "}");
        }
        buf_puts(b, " ");
        if (k == 0 && h->scale != 1)
            buf_printf(b, "%.6f", (double)h->sum / h->scale);
        else if (k == 0)
            hist_value(b, h->sum, h->scale);
        else
            buf_printf(b, "%llu", (unsigned long long)h->count);
        buf_puts(b, "\n");
    }
}

static void
render_histograms(struct buf *b, const struct metrics_snap *s)
{
    const struct metrics_hist_snap *plain[3] = {&s->delivery, &s->queue_time, &s->claim};
    for (int i = 0; i < 3; i++) {
        prom_family_typed(b, plain[i]->name, "histogram", plain[i]->help);
        hist_series(b, plain[i], NULL, NULL);
    }
    prom_family_typed(b, s->db[0].name, "histogram", s->db[0].help);
    for (int k = 0; k < METRICS_NPROC_KINDS; k++)
        hist_series(b, &s->db[k], "process", metrics_proc_kind_names[k]);
}

static void
proc_labels(struct buf *b, const struct metrics_proc_snap *p)
{
    char index[16];
    snprintf(index, sizeof index, "%u", p->index);
    prom_label(b, "process", metrics_proc_kind_names[p->kind], true);
    prom_label(b, "pipe", p->name, false);
    prom_label(b, "index", index, false);
}

static void
render_processes(struct buf *b, const struct metrics_snap *s)
{
    prom_family(b, "pgmta_process_resident_bytes",
                "Resident memory of each process of this node (/proc/PID/stat).");
    for (size_t i = 0; i < s->nprocs; i++) {
        if (!s->procs[i].usage)
            continue;
        buf_puts(b, "pgmta_process_resident_bytes{");
        proc_labels(b, &s->procs[i]);
        buf_printf(b, "} %llu\n", (unsigned long long)s->procs[i].rss_bytes);
    }
    prom_family_typed(b, "pgmta_process_cpu_seconds_total", "counter",
                      "User and system CPU time of each process of this node since it started "
                      "(a restarted process starts again from 0).");
    for (size_t i = 0; i < s->nprocs; i++) {
        if (!s->procs[i].usage)
            continue;
        buf_puts(b, "pgmta_process_cpu_seconds_total{");
        proc_labels(b, &s->procs[i]);
        buf_printf(b, "} %.2f\n", s->procs[i].cpu_seconds);
    }
    prom_family(b, "pgmta_smtp_connections_open",
                "Outbound SMTP connections open in each pipe process of this node.");
    for (size_t i = 0; i < s->nprocs; i++) {
        if (s->procs[i].kind != METRICS_PROC_PIPE)
            continue;
        buf_puts(b, "pgmta_smtp_connections_open{");
        prom_label(b, "pipe", s->procs[i].name, true);
        buf_printf(b, ",index=\"%u\"} %lld\n", s->procs[i].index,
                   (long long)s->procs[i].smtp_connections);
    }
}

static void
render_node(struct buf *b)
{
    struct metrics_snap *s = xcalloc(1, sizeof *s);
    metrics_snapshot(s);
    if (s->enabled) {
        render_outcomes(b, s);
        render_doors(b, s);
        render_histograms(b, s);
        render_processes(b, s);
    }
    free(s);
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
    prom_family(b, "pgmta_queue_connections",
                "SMTP connection slots held cluster-wide for the queue (mta.queues), with the "
                "limit key they are held under (rollup_key: the MX rollup, else the domain).");
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "q") != 0)
            continue;
        buf_puts(b, "pgmta_queue_connections{");
        queue_labels(b, res, r);
        prom_label(b, "rollup_key", cell(res, r, 9), false);
        buf_printf(b, "} %s\n", cell(res, r, 8));
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
    for (int r = 0; r < n; r++) {
        if (strcmp(cell(res, r, 0), "i") != 0)
            continue;
        prom_family_typed(b, "pgmta_sql_injected_recipients_total", "counter",
                          "Recipients queued through the SQL door (mta.enqueue, mta.submit), "
                          "counted in the database: cluster-wide, every node reports the same "
                          "value (take max over nodes, not sum).");
        buf_printf(b, "pgmta_sql_injected_recipients_total %s\n", cell(res, r, 4));
        prom_family_typed(b, "pgmta_sql_suppressed_recipients_total", "counter",
                          "Recipients left out at the SQL door because they are suppressed; "
                          "cluster-wide, as pgmta_sql_injected_recipients_total.");
        buf_printf(b, "pgmta_sql_suppressed_recipients_total %s\n", cell(res, r, 5));
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
    render_node(b);
}
