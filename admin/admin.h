/* admin: the pgmta command line. main.c dispatches to one function per
 * command; db.c owns the blocking libpq connection and result printing;
 * migrate.c, show.c, acct.c, passwd.c, suppress.c, job.c and the others
 * implement the commands. Every command returns the process exit status: 0
 * success, 1 runtime or database error, 2 usage. */
#ifndef PGMTA_ADMIN_H
#define PGMTA_ADMIN_H

#include <stdbool.h>
#include <stdio.h>

#include <libpq-fe.h>

#define ADMIN_EXIT_OK 0
#define ADMIN_EXIT_ERROR 1
#define ADMIN_EXIT_USAGE 2

/* Options that every command accepts (--db URL, --json, --help). */
struct admin_opts {
    const char *db; /* NULL: PGMTA_DATABASE_URL */
    bool json;
};

/* Set by main.c from options given before the command name. */
extern struct admin_opts admin_global;

/* Commands. argv[0] is the command name; options follow. */
int admin_cmd_migrate(int argc, char **argv);
int admin_cmd_show(int argc, char **argv);
int admin_cmd_pause(int argc, char **argv);
int admin_cmd_resume(int argc, char **argv);
int admin_cmd_delete(int argc, char **argv);
int admin_cmd_acct(int argc, char **argv);
int admin_cmd_passwd(int argc, char **argv);
int admin_cmd_suppress(int argc, char **argv);
int admin_cmd_tlsrpt(int argc, char **argv);
int admin_cmd_warmup(int argc, char **argv);
int admin_cmd_job(int argc, char **argv);

/* Prints "pgmta: " + message to stderr. */
void admin_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* A usage error: admin_err(FMT, ARG), then USAGE to stderr; returns
 * ADMIN_EXIT_USAGE. */
int admin_usage_error(const char *usage, const char *fmt, const char *arg)
    __attribute__((format(printf, 2, 0)));

/* Parses --db, --json and --help (USAGE to stdout) into O, from the options
 * given before the command name; positional arguments stay at
 * argv[optind..]. Returns -1 when done, or an exit status to return at once
 * (a bad option: USAGE to stderr, ADMIN_EXIT_USAGE). */
int admin_parse_opts(int argc, char **argv, const char *usage, struct admin_opts *o);

/* Connects to opts->db or PGMTA_DATABASE_URL; on failure prints why and
 * returns NULL. The session gets client_min_messages=warning and ISO dates. */
PGconn *admin_connect(const struct admin_opts *opts);

/* Runs SQL with parameters (text format). On failure prints "what: error"
 * (with the line when PostgreSQL reports a position) and returns NULL. */
PGresult *admin_exec(PGconn *conn, const char *what, const char *sql, int nparams,
                     const char *const *params);

/* Prints a PostgreSQL error result: "pgmta: WHAT: message (line N)" plus
 * detail, hint and context when present. SQL is the text that was sent, used
 * to turn the error position into a line number (may be NULL). */
void admin_report_pg_error(const char *what, const PGresult *res, const char *sql);

/* Output of query results: an aligned table with a header, or a JSON array
 * of objects (numbers and booleans typed by column type). */
void admin_print_table(FILE *out, const PGresult *res);
void admin_print_json(FILE *out, const PGresult *res);

/* JSON string escaping of s (with the quotes). */
void admin_json_string(FILE *out, const char *s);
/* Appends one JSON value of row/col to out, typed by column type. */
void admin_json_value(FILE *out, const PGresult *res, int row, int col);
/* CSV field quoting (RFC 4180); NULL and "" print nothing. */
void admin_csv_field(FILE *out, const char *s);

#endif
