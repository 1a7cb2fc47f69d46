/* show: "pgmta show", "pause", "resume" and "delete": read the views of the
 * SQL API (mta.queues, mta.nodes, mta.jobs, mta.acct) and call its steering
 * functions (mta.pause_queue, mta.resume_queue, mta.pause_job,
 * mta.resume_job, mta.delete_queue, mta.delete_job). */
#include "admin.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const char show_usage[] =
    "usage: pgmta show status|queues|topqueues|nodes|jobs [--json] [--db URL]\n"
    "\n"
    "  status     totals: queued, ready, deferred, in flight, paused queues, live\n"
    "             nodes, delivered and bounced in the last hour\n"
    "  queues     every queue (domain, virtual MTA, pipe) from mta.queues\n"
    "  topqueues  the 20 queues with the most queued recipients\n"
    "  nodes      delivery nodes from mta.nodes\n"
    "  jobs       jobs from mta.jobs\n"
    "\n"
    "--json prints a JSON array of objects (status: an array of one object).\n";

static const char pause_usage[] =
    "usage: pgmta pause queue DOMAIN[/VMTA] [--db URL]\n"
    "       pgmta pause job ID [--db URL]\n"
    "\n"
    "Stops delivery to a queue (without /VMTA: every virtual MTA of DOMAIN) or of a\n"
    "job. Queued recipients stay queued until 'pgmta resume'.\n";

static const char resume_usage[] = "usage: pgmta resume queue DOMAIN[/VMTA] [--db URL]\n"
                                   "       pgmta resume job ID [--db URL]\n"
                                   "\n"
                                   "Resumes delivery of a paused queue or job.\n";

static const char delete_usage[] =
    "usage: pgmta delete --queue DOMAIN[/VMTA] [--db URL]\n"
    "       pgmta delete --job ID [--db URL]\n"
    "\n"
    "Removes the queued recipients of a queue (without /VMTA: every virtual MTA\n"
    "of DOMAIN) or of a job, records them as bounced ('deleted by administrator')\n"
    "and prints how many were removed.\n";

/* Parses --db, --json, --help (and --queue/--job for delete) into opts;
 * positional arguments stay at argv[optind..]. Returns -1 when done, or an
 * exit status to return at once. */
static int
parse_common(int argc, char **argv, const char *usage, struct admin_opts *opts, const char **queue,
             const char **job)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},    {"json", no_argument, NULL, 'j'},
        {"queue", required_argument, NULL, 'q'}, {"job", required_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
    opts->db = NULL;
    opts->json = admin_global.json;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            opts->db = optarg;
            break;
        case 'j':
            opts->json = true;
            break;
        case 'q':
        case 'J':
            if (!queue) {
                admin_err("%s: unknown option --%s", argv[0], c == 'q' ? "queue" : "job");
                fputs(usage, stderr);
                return ADMIN_EXIT_USAGE;
            }
            *(c == 'q' ? queue : job) = optarg;
            break;
        case 'h':
            fputs(usage, stdout);
            return ADMIN_EXIT_OK;
        default:
            fputs(usage, stderr);
            return ADMIN_EXIT_USAGE;
        }
    }
    return -1;
}

struct view {
    const char *name;
    const char *sql;
};

static const struct view views[] = {
    {"status", "SELECT coalesce(sum(q.queued), 0)::bigint AS queued, "
               "coalesce(sum(q.ready), 0)::bigint AS ready, "
               "coalesce(sum(q.deferred), 0)::bigint AS deferred, "
               "coalesce(sum(q.in_flight), 0)::bigint AS in_flight, "
               "count(*) AS queues, "
               "count(*) FILTER (WHERE q.paused) AS paused_queues, "
               "(SELECT count(*) FROM mta.nodes n WHERE n.alive) AS nodes_alive, "
               "(SELECT count(*) FROM mta.acct a WHERE a.type = 'd' "
               "  AND a.time_logged > now() - interval '1 hour') AS delivered_1h, "
               "(SELECT count(*) FROM mta.acct a WHERE a.type = 'b' "
               "  AND a.time_logged > now() - interval '1 hour') AS bounced_1h "
               "FROM mta.queues q"},
    {"queues", "SELECT * FROM mta.queues ORDER BY domain, vmta, pipe"},
    {"topqueues", "SELECT * FROM mta.queues WHERE queued > 0 "
                  "ORDER BY queued DESC, domain, vmta, pipe LIMIT 20"},
    {"nodes", "SELECT * FROM mta.nodes ORDER BY 1"},
    {"jobs", "SELECT * FROM mta.jobs ORDER BY job_id"},
};

/* One row as "name   value" lines: easier to read than a wide table. */
static void
print_vertical(FILE *out, const PGresult *res)
{
    size_t w = 0;
    for (int c = 0; c < PQnfields(res); c++)
        if (strlen(PQfname(res, c)) > w)
            w = strlen(PQfname(res, c));
    for (int c = 0; c < PQnfields(res); c++)
        fprintf(out, "%-*s  %s\n", (int)w, PQfname(res, c),
                PQntuples(res) ? PQgetvalue(res, 0, c) : "");
}

int
admin_cmd_show(int argc, char **argv)
{
    struct admin_opts opts;
    int st = parse_common(argc, argv, show_usage, &opts, NULL, NULL);
    if (st >= 0)
        return st;
    if (optind >= argc)
        return admin_usage_error(show_usage, "show: what? (%s)",
                                 "status|queues|topqueues|nodes|jobs");
    if (optind + 1 < argc)
        return admin_usage_error(show_usage, "show: unexpected argument '%s'", argv[optind + 1]);
    const struct view *v = NULL;
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++)
        if (!strcmp(argv[optind], views[i].name))
            v = &views[i];
    if (!v)
        return admin_usage_error(show_usage, "show: unknown view '%s'", argv[optind]);
    PGconn *conn = admin_connect(&opts);
    if (!conn)
        return ADMIN_EXIT_ERROR;
    char *what = xasprintf("show %s", v->name);
    PGresult *r = admin_exec(conn, what, v->sql, 0, NULL);
    free(what);
    if (!r) {
        PQfinish(conn);
        return ADMIN_EXIT_ERROR;
    }
    if (opts.json)
        admin_print_json(stdout, r);
    else if (!strcmp(v->name, "status"))
        print_vertical(stdout, r);
    else
        admin_print_table(stdout, r);
    PQclear(r);
    PQfinish(conn);
    return ADMIN_EXIT_OK;
}

/* Splits "DOMAIN[/VMTA]" into two new strings; vmta is NULL without '/'. */
static bool
split_queue(const char *q, char **domain, char **vmta)
{
    const char *slash = strchr(q, '/');
    *domain = slash ? xstrndup(q, slash - q) : xstrdup(q);
    *vmta = slash ? xstrdup(slash + 1) : NULL;
    if (!**domain || (*vmta && (!**vmta || strchr(*vmta, '/')))) {
        free(*domain);
        free(*vmta);
        return false;
    }
    return true;
}

/* SELECT mta.FN(p1[, p2]) with text parameters (p2 may be NULL). */
static PGresult *
call(PGconn *conn, const char *fn, int nparams, const char *p1, const char *p2)
{
    char *sql =
        nparams == 2 ? xasprintf("SELECT mta.%s($1, $2)", fn) : xasprintf("SELECT mta.%s($1)", fn);
    const char *params[] = {p1, p2};
    char *what = xasprintf("mta.%s", fn);
    PGresult *r = admin_exec(conn, what, sql, nparams, params);
    free(what);
    free(sql);
    return r;
}

/* "pause"/"resume" share everything but the verb. */
static int
steer(int argc, char **argv, const char *verb, const char *usage)
{
    struct admin_opts opts;
    int st = parse_common(argc, argv, usage, &opts, NULL, NULL);
    if (st >= 0)
        return st;
    if (argc - optind != 2)
        return admin_usage_error(usage, "%s: expected 'queue DOMAIN[/VMTA]' or 'job ID'", verb);
    const char *kind = argv[optind], *arg = argv[optind + 1];
    bool is_queue = !strcmp(kind, "queue");
    if (!is_queue && strcmp(kind, "job"))
        return admin_usage_error(usage, "unknown object '%s' (queue or job)", kind);
    char *domain = NULL, *vmta = NULL;
    if (is_queue && !split_queue(arg, &domain, &vmta))
        return admin_usage_error(usage, "bad queue '%s' (DOMAIN or DOMAIN/VMTA)", arg);
    if (!is_queue && !*arg)
        return admin_usage_error(usage, "%s: empty job id", verb);
    int status = ADMIN_EXIT_ERROR;
    PGconn *conn = admin_connect(&opts);
    if (conn) {
        char *fn = xasprintf("%s_%s", verb, kind);
        PGresult *r = is_queue ? call(conn, fn, 2, domain, vmta) : call(conn, fn, 1, arg, NULL);
        if (r) {
            const char *done = !strcmp(verb, "pause") ? "paused" : "resumed";
            /* The queue functions return how many queue rows changed. */
            if (is_queue && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
                printf("%s queue %s (%s queue%s)\n", done, arg, PQgetvalue(r, 0, 0),
                       strcmp(PQgetvalue(r, 0, 0), "1") ? "s" : "");
            else
                printf("%s %s %s\n", done, kind, arg);
            status = ADMIN_EXIT_OK;
            PQclear(r);
        }
        free(fn);
        PQfinish(conn);
    }
    free(domain);
    free(vmta);
    return status;
}

int
admin_cmd_pause(int argc, char **argv)
{
    return steer(argc, argv, "pause", pause_usage);
}

int
admin_cmd_resume(int argc, char **argv)
{
    return steer(argc, argv, "resume", resume_usage);
}

int
admin_cmd_delete(int argc, char **argv)
{
    struct admin_opts opts;
    const char *queue = NULL, *job = NULL;
    int st = parse_common(argc, argv, delete_usage, &opts, &queue, &job);
    if (st >= 0)
        return st;
    if (optind < argc)
        return admin_usage_error(delete_usage, "delete: unexpected argument '%s'", argv[optind]);
    if (!queue == !job)
        return admin_usage_error(delete_usage, "delete: give exactly one of --queue and --job%s",
                                 "");
    char *domain = NULL, *vmta = NULL;
    if (queue && !split_queue(queue, &domain, &vmta))
        return admin_usage_error(delete_usage, "bad queue '%s' (DOMAIN or DOMAIN/VMTA)", queue);
    if (job && !*job)
        return admin_usage_error(delete_usage, "delete: empty job id%s", "");
    int status = ADMIN_EXIT_ERROR;
    PGconn *conn = admin_connect(&opts);
    if (conn) {
        PGresult *r = queue ? call(conn, "delete_queue", 2, domain, vmta)
                            : call(conn, "delete_job", 1, job, NULL);
        if (r) {
            const char *n = PQntuples(r) && !PQgetisnull(r, 0, 0) ? PQgetvalue(r, 0, 0) : "0";
            if (opts.json)
                printf("[{\"deleted\": %s}]\n", n);
            else
                printf("deleted %s recipient%s\n", n, strcmp(n, "1") ? "s" : "");
            status = ADMIN_EXIT_OK;
            PQclear(r);
        }
        PQfinish(conn);
    }
    free(domain);
    free(vmta);
    return status;
}
