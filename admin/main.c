/* main: entry point of the pgmta command line. Parses the options that may
 * come before the command name (--db, --json, --help), then hands argv to the
 * command's function from the table below. */
#include "admin.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct admin_opts admin_global;

static const char usage_text[] =
    "usage: pgmta [--db URL] [--json] COMMAND [ARGS]\n"
    "\n"
    "commands:\n"
    "  migrate [--sql-dir DIR]          apply pending schema migrations and the SQL API\n"
    "  show status|queues|topqueues|nodes|jobs [--json]\n"
    "                                   show the state of the cluster\n"
    "  pause queue DOMAIN[/VMTA]        stop delivery to a queue\n"
    "  pause job ID                     stop delivery of a job\n"
    "  resume queue DOMAIN[/VMTA]       resume delivery to a queue\n"
    "  resume job ID                    resume delivery of a job\n"
    "  job weight JOB N                 a job's weight (1-100) in its queues' round robin\n"
    "  delete --queue DOMAIN[/VMTA] | --job ID\n"
    "                                   remove queued recipients, print how many\n"
    "  acct export --since T [--until T] [--format csv|json]\n"
    "                                   stream accounting records\n"
    "  passwd [--sha512]                read a password on stdin, print its crypt(3)\n"
    "                                   hash for smtp-listener users\n"
    "  suppress add|remove|list|import  manage the suppression list\n"
    "  tlsrpt show                      print a TLS-RPT report (RFC 8460)\n"
    "  warmup show|set|hold|resume      IP warm-up plans\n"
    "\n"
    "options:\n"
    "  --db URL     PostgreSQL connection URL (default: $PGMTA_DATABASE_URL)\n"
    "  --json       JSON output (show)\n"
    "  --help       this text; 'pgmta COMMAND --help' describes one command\n"
    "  --version    print the version\n"
    "\n"
    "environment:\n"
    "  PGMTA_DATABASE_URL    database when --db is not given\n"
    "  PGMTA_SHARE_DIR       directory holding migrations/ and sql/ (migrate)\n"
    "  PGMTA_NO_SOURCE_TREE  when set, migrate ignores the source tree pgmta was\n"
    "                        built from and uses the installed files\n"
    "\n"
    "exit status: 0 success, 1 error (database, files), 2 usage error\n";

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
};

static const struct command commands[] = {
    {"migrate", admin_cmd_migrate}, {"show", admin_cmd_show},         {"pause", admin_cmd_pause},
    {"resume", admin_cmd_resume},   {"delete", admin_cmd_delete},     {"acct", admin_cmd_acct},
    {"passwd", admin_cmd_passwd},   {"suppress", admin_cmd_suppress}, {"tlsrpt", admin_cmd_tlsrpt},
    {"warmup", admin_cmd_warmup},   {"job", admin_cmd_job},
};

void
admin_err(const char *fmt, ...)
{
    va_list ap;
    fputs("pgmta: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int
admin_usage_error(const char *usage, const char *fmt, const char *arg)
{
    admin_err(fmt, arg);
    fputs(usage, stderr);
    return ADMIN_EXIT_USAGE;
}

int
admin_parse_opts(int argc, char **argv, const char *usage, struct admin_opts *o)
{
    static const struct option longopts[] = {{"db", required_argument, NULL, 'd'},
                                             {"json", no_argument, NULL, 'j'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    *o = admin_global;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->db = optarg;
            break;
        case 'j':
            o->json = true;
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

static int
usage(FILE *out, int status)
{
    fputs(usage_text, out);
    return status;
}

int
main(int argc, char **argv)
{
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return usage(stdout, ADMIN_EXIT_OK);
        if (!strcmp(a, "--version")) {
            printf("pgmta %s\n", PGMTA_VERSION);
            return ADMIN_EXIT_OK;
        }
        if (!strcmp(a, "--json")) {
            admin_global.json = true;
            i++;
        } else if (!strcmp(a, "--db")) {
            if (i + 1 >= argc) {
                admin_err("--db needs a URL");
                return usage(stderr, ADMIN_EXIT_USAGE);
            }
            admin_global.db = argv[i + 1];
            i += 2;
        } else if (!strncmp(a, "--db=", 5)) {
            admin_global.db = a + 5;
            i++;
        } else {
            admin_err("unknown option %s", a);
            return usage(stderr, ADMIN_EXIT_USAGE);
        }
    }
    if (i >= argc) {
        admin_err("no command given");
        return usage(stderr, ADMIN_EXIT_USAGE);
    }
    if (!strcmp(argv[i], "help"))
        return usage(stdout, ADMIN_EXIT_OK);
    for (size_t k = 0; k < sizeof commands / sizeof commands[0]; k++) {
        if (!strcmp(argv[i], commands[k].name)) {
            int status = commands[k].fn(argc - i, argv + i);
            if (fflush(stdout) != 0 && status == ADMIN_EXIT_OK) {
                admin_err("writing output failed");
                status = ADMIN_EXIT_ERROR;
            }
            return status;
        }
    }
    admin_err("unknown command '%s'", argv[i]);
    return usage(stderr, ADMIN_EXIT_USAGE);
}
