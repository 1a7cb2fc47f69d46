/* acct: "pgmta acct export". Streams rows of mta.acct in time order as CSV
 * (PowerMTA's accounting column names and order) or as a JSON array, through
 * a server-side cursor fetched in batches so memory stays bounded whatever
 * the number of rows. */
#include "admin.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "util.h"

#define FETCH_BATCH 5000

static const char acct_usage[] =
    "usage: pgmta acct export --since T [--until T] [--format csv|json]\n"
    "                         [--type LIST] [--db URL]\n"
    "\n"
    "Writes the accounting records logged in [since, until) to stdout, oldest\n"
    "first. T is a duration before now (30m, 2h, 1d, 4d12h) or a timestamp\n"
    "('2024-05-01', '2024-05-01 12:00:00+02'). --until defaults to now.\n"
    "--type keeps only the listed record types, e.g. d,b (r received,\n"
    "d delivered, b bounced, t transient failure).\n"
    "CSV (the default) has a header line with PowerMTA's field names; JSON is an\n"
    "array of objects with the same names.\n";

/* Output name, and the SQL expression that yields it from mta.acct. */
struct column {
    const char *name;
    const char *expr;
};

static const struct column columns[] = {
    {"type", "type"},
    {"timeLogged", "time_logged"},
    {"timeQueued", "time_queued"},
    {"orig", "orig"},
    {"rcpt", "rcpt"},
    {"dsnAction", "dsn_action"},
    {"dsnStatus", "dsn_status"},
    {"dsnDiag", "dsn_diag"},
    {"dsnMta", "dsn_mta"},
    {"bounceCat", "bounce_cat"},
    /* The source of a record is not kept in mta.acct yet. */
    {"srcType", "NULL::text"},
    {"srcMta", "NULL::text"},
    {"dlvSourceIp", "dlv_source_ip"},
    {"dlvDestinationIp", "dlv_destination_ip"},
    {"dlvSize", "dlv_size"},
    {"vmta", "vmta"},
    {"jobId", "job_id"},
    {"envId", "envid"},
    {"queue", "queue"},
    {"pipe", "pipe"},
    {"node", "node"},
    {"messageId", "message_id"},
    {"attempt", "attempt"},
    {"tlsProtocol", "tls_protocol"},
    {"tlsCipher", "tls_cipher"},
    /* per-recipient metadata (HTTP injection): JSON, a string in CSV */
    {"meta", "meta"},
    /* Columns added since, after meta so that readers of the columns above
     * by position keep working: the DSN ORCPT (migration 0011), the TLS-RPT
     * outcome (0012), the fields of rb and f records (0010) and the
     * message's Message-ID header (0013, PowerMTA's header_ field name). */
    {"dsnOrcpt", "orcpt"},
    {"tlsPolicy", "tls_policy"},
    {"tlsFailure", "tls_failure"},
    {"tlsPolicyDomain", "tls_policy_domain"},
    {"reportingMta", "reporting_mta"},
    {"feedbackType", "feedback_type"},
    {"userAgent", "user_agent"},
    {"arfVersion", "arf_version"},
    {"arfOriginalMailFrom", "arf_original_mail_from"},
    {"arfOriginalRcptTo", "arf_original_rcpt_to"},
    {"arfArrivalDate", "arf_arrival_date"},
    {"arfSourceIp", "arf_source_ip"},
    {"arfReportedDomain", "arf_reported_domain"},
    {"arfMessageId", "arf_message_id"},
    {"header_Message-Id", "header_message_id"},
};
#define NCOLUMNS (sizeof columns / sizeof columns[0])

/* Turns T into an SQL expression of type timestamptz. A duration becomes
 * "now() - interval"; anything else must be a valid timestamptz and is passed
 * as an escaped literal. Returns NULL (message printed) when T is neither. */
static char *
time_expr(PGconn *conn, const char *opt, const char *t)
{
    uint64_t ms;
    if (conf_parse_duration(t, &ms) == 0)
        return xasprintf("(now() - interval '%" PRIu64 " milliseconds')", ms);
    const char *params[] = {t};
    PGresult *r = PQexecParams(conn, "SELECT $1::timestamptz", 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
        admin_err("acct export: %s '%s' is neither a duration (30m, 2h, 1d) nor a timestamp%s%s",
                  opt, t, msg ? ": " : "", msg ? msg : "");
        PQclear(r);
        return NULL;
    }
    PQclear(r);
    char *lit = PQescapeLiteral(conn, t, strlen(t));
    if (!lit) {
        admin_err("acct export: %s: %s", opt, PQerrorMessage(conn));
        return NULL;
    }
    char *e = xasprintf("%s::timestamptz", lit);
    PQfreemem(lit);
    return e;
}

/* "d,b,rb" -> "ARRAY['d','b','rb']" after checking each is a known record
 * type (r, d, b, t, rb remote bounce, f feedback report). */
static char *
type_filter(const char *list)
{
    struct buf b;
    buf_init(&b);
    buf_puts(&b, " AND type = ANY (ARRAY[");
    bool first = true;
    for (const char *p = list; *p;) {
        if (*p == ',' || *p == ' ') {
            p++;
            continue;
        }
        size_t n = strcspn(p, ", ");
        if (!((n == 1 && strchr("rdbtf", *p)) || (n == 2 && p[0] == 'r' && p[1] == 'b'))) {
            buf_free(&b);
            return NULL;
        }
        buf_printf(&b, "%s'%.*s'", first ? "" : ",", (int)n, p);
        first = false;
        p += n;
    }
    if (first) {
        buf_free(&b);
        return NULL;
    }
    buf_puts(&b, "]::text[])");
    return b.data;
}

static void
write_row(FILE *out, const PGresult *r, int row, bool json, bool first)
{
    if (json) {
        fputs(first ? "\n {" : ",\n {", out);
        for (size_t c = 0; c < NCOLUMNS; c++) {
            if (c)
                fputs(", ", out);
            admin_json_string(out, columns[c].name);
            fputs(": ", out);
            admin_json_value(out, r, row, (int)c);
        }
        fputc('}', out);
        return;
    }
    for (size_t c = 0; c < NCOLUMNS; c++) {
        if (c)
            fputc(',', out);
        if (!PQgetisnull(r, row, (int)c))
            admin_csv_field(out, PQgetvalue(r, row, (int)c));
    }
    fputc('\n', out);
}

static int export(PGconn *conn, const char *since_expr, const char *until_expr, const char *types,
                  bool json)
{
    struct buf q;
    buf_init(&q);
    buf_puts(&q, "DECLARE acct_export NO SCROLL CURSOR FOR SELECT ");
    for (size_t c = 0; c < NCOLUMNS; c++)
        buf_printf(&q, "%s%s", c ? ", " : "", columns[c].expr);
    buf_printf(&q,
               " FROM mta.acct WHERE time_logged >= %s AND time_logged < %s%s "
               "ORDER BY time_logged",
               since_expr, until_expr, types ? types : "");
    PGresult *r =
        admin_exec(conn, "acct export", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL);
    PQclear(r);
    if (r)
        r = admin_exec(conn, "acct export", q.data, 0, NULL);
    buf_free(&q);
    PQclear(r);
    if (!r)
        return ADMIN_EXIT_ERROR;
    FILE *out = stdout;
    if (json) {
        fputc('[', out);
    } else {
        for (size_t c = 0; c < NCOLUMNS; c++)
            fprintf(out, "%s%s", c ? "," : "", columns[c].name);
        fputc('\n', out);
    }
    uint64_t rows = 0;
    for (;;) {
        char fetch[64];
        snprintf(fetch, sizeof fetch, "FETCH FORWARD %d FROM acct_export", FETCH_BATCH);
        r = admin_exec(conn, "acct export", fetch, 0, NULL);
        if (!r)
            return ADMIN_EXIT_ERROR;
        int n = PQntuples(r);
        for (int i = 0; i < n; i++, rows++)
            write_row(out, r, i, json, rows == 0);
        PQclear(r);
        if (ferror(out)) {
            admin_err("acct export: writing output failed");
            return ADMIN_EXIT_ERROR;
        }
        if (n < FETCH_BATCH)
            break;
    }
    if (json)
        fputs(rows ? "\n]\n" : "]\n", out);
    r = admin_exec(conn, "acct export", "COMMIT", 0, NULL);
    PQclear(r);
    return r ? ADMIN_EXIT_OK : ADMIN_EXIT_ERROR;
}

int
admin_cmd_acct(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},    {"since", required_argument, NULL, 's'},
        {"until", required_argument, NULL, 'u'}, {"format", required_argument, NULL, 'f'},
        {"type", required_argument, NULL, 't'},  {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
    struct admin_opts opts = {.json = admin_global.json};
    const char *since = NULL, *until = NULL, *types = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            opts.db = optarg;
            break;
        case 's':
            since = optarg;
            break;
        case 'u':
            until = optarg;
            break;
        case 't':
            types = optarg;
            break;
        case 'j':
            opts.json = true;
            break;
        case 'f':
            if (!strcmp(optarg, "json")) {
                opts.json = true;
            } else if (!strcmp(optarg, "csv")) {
                opts.json = false;
            } else {
                admin_err("acct export: unknown format '%s' (csv or json)", optarg);
                fputs(acct_usage, stderr);
                return ADMIN_EXIT_USAGE;
            }
            break;
        case 'h':
            fputs(acct_usage, stdout);
            return ADMIN_EXIT_OK;
        default:
            fputs(acct_usage, stderr);
            return ADMIN_EXIT_USAGE;
        }
    }
    if (optind >= argc || strcmp(argv[optind], "export") || optind + 1 < argc) {
        admin_err(optind < argc ? "acct: unknown subcommand '%s'" : "acct: expected 'export'%s",
                  optind < argc ? argv[optind] : "");
        fputs(acct_usage, stderr);
        return ADMIN_EXIT_USAGE;
    }
    if (!since) {
        admin_err("acct export: --since is required");
        fputs(acct_usage, stderr);
        return ADMIN_EXIT_USAGE;
    }
    char *type_sql = NULL;
    if (types && !(type_sql = type_filter(types))) {
        admin_err("acct export: bad --type '%s' (r, d, b, t, rb, f separated by commas)", types);
        return ADMIN_EXIT_USAGE;
    }
    PGconn *conn = admin_connect(&opts);
    if (!conn) {
        free(type_sql);
        return ADMIN_EXIT_ERROR;
    }
    int status = ADMIN_EXIT_USAGE;
    char *since_sql = time_expr(conn, "--since", since);
    char *until_sql =
        since_sql ? (until ? time_expr(conn, "--until", until) : xstrdup("now()")) : NULL;
    if (since_sql && until_sql)
        status = export(conn, since_sql, until_sql, type_sql, opts.json);
    free(since_sql);
    free(until_sql);
    free(type_sql);
    PQfinish(conn);
    return status;
}
