/* job: "pgmta job weight JOB N", the weight of a job in the claim's round
 * robin between the jobs of one priority (mta.set_job_weight; see README,
 * Priorities). Nothing is kept past the command. */
#include "admin.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char job_usage[] =
    "usage: pgmta job weight JOB N [--json] [--db URL]\n"
    "\n"
    "weight sets the weight of job JOB, 1 to 100 (default 1): within one\n"
    "priority of a queue, each job gets N turns per round of the claim's round\n"
    "robin, so a job of weight 3 sends three messages for every one of a job of\n"
    "weight 1. The job need not have mail queued yet.\n";

/* "1" .. "100", nothing else. */
static bool
parse_weight(const char *s, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < 1 || v > 100)
        return false;
    *out = v;
    return true;
}

int
admin_cmd_job(int argc, char **argv)
{
    struct admin_opts opts;
    int st = admin_parse_opts(argc, argv, job_usage, &opts);
    if (st >= 0)
        return st;
    if (optind >= argc)
        return admin_usage_error(job_usage, "job: %s", "missing verb");
    const char *verb = argv[optind];
    if (strcmp(verb, "weight"))
        return admin_usage_error(job_usage, "job: unknown verb '%s' (weight)", verb);
    if (argc - optind != 3)
        return admin_usage_error(job_usage, "job weight: expected JOB N%s", "");
    const char *job = argv[optind + 1], *n = argv[optind + 2];
    long weight;
    if (!*job)
        return admin_usage_error(job_usage, "job weight: empty job id%s", "");
    if (!parse_weight(n, &weight))
        return admin_usage_error(job_usage, "job weight: bad weight '%s' (1 to 100)", n);
    PGconn *conn = admin_connect(&opts);
    if (!conn)
        return ADMIN_EXIT_ERROR;
    const char *params[] = {job, n};
    PGresult *r =
        admin_exec(conn, "mta.set_job_weight", "SELECT mta.set_job_weight($1, $2::int)", 2, params);
    int status = ADMIN_EXIT_ERROR;
    if (r) {
        if (opts.json) {
            fputs("[{\"job_id\": ", stdout);
            admin_json_string(stdout, job);
            printf(", \"weight\": %ld}]\n", weight);
        } else {
            printf("job %s weight %ld\n", job, weight);
        }
        status = ADMIN_EXIT_OK;
        PQclear(r);
    }
    PQfinish(conn);
    return status;
}
