/* warmup: "pgmta warmup show|set|hold|resume", the command line of the IP
 * warm-up plans (mta.warmup, mta.warmup_status; see README, IP warm-up).
 * Nothing is kept past the command. */
#include "admin.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

static const char warmup_usage[] =
    "usage: pgmta warmup show [--json] [--db URL]\n"
    "       pgmta warmup set IP KEY DAILY/HOURLY[,DAILY/HOURLY...] [--db URL]\n"
    "       pgmta warmup hold|resume IP KEY [--db URL]\n"
    "\n"
    "show prints every plan: source IP, provider key (the domain, or rollup:NAME),\n"
    "plan day, the day's limits, messages sent today and this hour, state and the\n"
    "reason of the last daily decision. set creates or replaces a plan, one\n"
    "DAILY/HOURLY pair per day starting at day 1 (e.g. 500/50,1000/100). hold\n"
    "pauses a plan (it neither limits nor advances); resume restarts it.\n";

/* "500/50,1000/100" as two PostgreSQL array literals; false when malformed. */
static bool
parse_days(const char *s, struct buf *daily, struct buf *hourly)
{
    buf_puts(daily, "{");
    buf_puts(hourly, "{");
    for (const char *p = s; *p;) {
        char *end;
        unsigned long d = strtoul(p, &end, 10);
        if (end == p || *end != '/')
            return false;
        p = end + 1;
        unsigned long h = strtoul(p, &end, 10);
        if (end == p || (*end != ',' && *end) || d > 2000000000UL || h > 2000000000UL)
            return false;
        buf_printf(daily, "%s%lu", daily->len > 1 ? "," : "", d);
        buf_printf(hourly, "%s%lu", hourly->len > 1 ? "," : "", h);
        p = *end ? end + 1 : end;
    }
    buf_puts(daily, "}");
    buf_puts(hourly, "}");
    return daily->len > 2;
}

int
admin_cmd_warmup(int argc, char **argv)
{
    if (argc < 2)
        return admin_usage_error(warmup_usage, "warmup: %s", "missing verb");
    const char *verb = argv[1];
    struct admin_opts o;
    int rc = admin_parse_opts(argc - 1, argv + 1, warmup_usage, &o);
    if (rc >= 0)
        return rc;
    char **pos = argv + 1 + optind;
    int npos = argc - 1 - optind;
    bool show = !strcmp(verb, "show"), set = !strcmp(verb, "set");
    bool hold = !strcmp(verb, "hold"), resume = !strcmp(verb, "resume");
    if (!show && !set && !hold && !resume)
        return admin_usage_error(warmup_usage, "warmup: unknown verb %s", verb);
    if (npos != (show ? 0 : set ? 3 : 2))
        return admin_usage_error(warmup_usage, "warmup %s: wrong number of arguments", verb);
    PGconn *conn = admin_connect(&o);
    if (!conn)
        return ADMIN_EXIT_ERROR;
    PGresult *r = NULL;
    rc = ADMIN_EXIT_OK;
    if (show) {
        r = admin_exec(conn, "warmup show",
                       "SELECT ip, key, day, daily_limit, hourly_limit, sent_today, "
                       "sent_this_hour, state, reason FROM mta.warmup_status ORDER BY ip, key",
                       0, NULL);
        if (r && o.json)
            admin_print_json(stdout, r);
        else if (r)
            admin_print_table(stdout, r);
    } else if (set) {
        struct buf daily, hourly;
        buf_init(&daily);
        buf_init(&hourly);
        if (!parse_days(pos[2], &daily, &hourly)) {
            buf_free(&daily);
            buf_free(&hourly);
            PQfinish(conn);
            return admin_usage_error(warmup_usage, "warmup set: bad schedule %s", pos[2]);
        }
        const char *params[] = {pos[0], pos[1], daily.data, hourly.data};
        r = admin_exec(conn, "warmup set", "SELECT mta.warmup_set($1, $2, $3::int[], $4::int[])", 4,
                       params);
        buf_free(&daily);
        buf_free(&hourly);
    } else {
        const char *params[] = {pos[0], pos[1], hold ? "true" : "false"};
        r = admin_exec(conn, "warmup", "SELECT mta.warmup_pause($1, $2, $3::bool)", 3, params);
        if (r && (PQntuples(r) == 0 || PQgetisnull(r, 0, 0))) {
            admin_err("warmup %s: no plan for %s %s", verb, pos[0], pos[1]);
            rc = ADMIN_EXIT_ERROR;
        }
    }
    if (!r)
        rc = ADMIN_EXIT_ERROR;
    PQclear(r);
    PQfinish(conn);
    return rc;
}
