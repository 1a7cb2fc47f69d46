/* tlsrpt: "pgmta tlsrpt show", the TLS-RPT report (RFC 8460) of one policy
 * domain and UTC day as the nodes would build it: mta.tlsrpt_report, the
 * function the nodes use too (see README, TLS-RPT). Printed as PostgreSQL
 * returns it, one line of JSON. */
#include "admin.h"

#include <getopt.h>
#include <string.h>

static const char tlsrpt_usage[] =
    "usage: pgmta tlsrpt show --domain D --day YYYY-MM-DD [--organization O]\n"
    "                         [--contact C] [--db URL]\n"
    "\n"
    "Prints the RFC 8460 JSON report of policy domain D for the UTC day, built\n"
    "from mta.acct as the nodes build it; --organization and --contact are the\n"
    "node's tls-report organization-name and contact-info (defaults: pgmta, and\n"
    "the organization). Exit status 1 when the day has no attempt for D.\n";

int
admin_cmd_tlsrpt(int argc, char **argv)
{
    static const struct option longopts[] = {{"db", required_argument, NULL, 'd'},
                                             {"domain", required_argument, NULL, 'D'},
                                             {"day", required_argument, NULL, 'y'},
                                             {"organization", required_argument, NULL, 'o'},
                                             {"contact", required_argument, NULL, 'c'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    struct admin_opts db = admin_global;
    const char *domain = NULL, *day = NULL, *org = "pgmta", *contact = NULL;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            db.db = optarg;
            break;
        case 'D':
            domain = optarg;
            break;
        case 'y':
            day = optarg;
            break;
        case 'o':
            org = optarg;
            break;
        case 'c':
            contact = optarg;
            break;
        case 'h':
            fputs(tlsrpt_usage, stdout);
            return ADMIN_EXIT_OK;
        default:
            fputs(tlsrpt_usage, stderr);
            return ADMIN_EXIT_USAGE;
        }
    }
    if (optind >= argc || strcmp(argv[optind], "show") != 0 || optind + 1 != argc)
        return admin_usage_error(tlsrpt_usage, "tlsrpt: %s", "the action is 'show'");
    if (!domain || !*domain || !day || !*day)
        return admin_usage_error(tlsrpt_usage, "tlsrpt: %s", "show needs --domain and --day");
    PGconn *conn = admin_connect(&db);
    if (!conn)
        return ADMIN_EXIT_ERROR;
    const char *params[4] = {domain, day, org, contact};
    PGresult *res = admin_exec(conn, "tlsrpt show",
                               "SELECT mta.tlsrpt_report($1, $2::date, $3, $4)", 4, params);
    int st = ADMIN_EXIT_ERROR;
    if (res) {
        if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
            printf("%s\n", PQgetvalue(res, 0, 0));
            st = ADMIN_EXIT_OK;
        } else {
            admin_err("tlsrpt show: no attempt for %s on %s", domain, day);
        }
        PQclear(res);
    }
    PQfinish(conn);
    return st;
}
