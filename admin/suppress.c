/* suppress: "pgmta suppress add|remove|list|import", the command line of
 * the suppression list (mta.suppression, managed by mta.suppress and
 * mta.unsuppress; see README, Suppression). import parses its file here (one
 * address per line, or CSV "address,reason"), streams it with COPY into a
 * temporary table and stores it with one INSERT, so a bad line stores
 * nothing. Every string built here is freed before the command returns. */
#include "admin.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "conf.h"
#include "util.h"

static const char suppress_usage[] =
    "usage: pgmta suppress add ADDRESS|@DOMAIN [--scope S] [--reason R] [--source SRC]\n"
    "                          [--expires T] [--db URL]\n"
    "       pgmta suppress remove ADDRESS|@DOMAIN [--scope S] [--db URL]\n"
    "       pgmta suppress list [--scope S] [--json] [--db URL]\n"
    "       pgmta suppress import FILE [--scope S] [--reason R] [--expires T] [--db URL]\n"
    "\n"
    "A suppressed recipient is never queued: every injection path records it as\n"
    "bounced (bounce category 'suppressed') instead. An entry is an address (the\n"
    "domain is compared without case, the local part as given) or a whole domain\n"
    "(@DOMAIN). --scope S limits it to the jobs whose id starts with S (default:\n"
    "every job). --expires T: a duration from now (30d, 12h) or a timestamp;\n"
    "default never. --source: manual (default), import, bounce, complaint,\n"
    "unsubscribe.\n"
    "\n"
    "add adds an entry or updates the one of the same scope; remove deletes the\n"
    "entry of exactly that scope; list prints the entries (of scope S only).\n"
    "import reads FILE ('-': standard input): one address per line, or CSV\n"
    "lines 'address,reason' (fields may be quoted); empty lines, lines starting\n"
    "with '#' and a header line 'address[,reason]' are skipped. It is\n"
    "idempotent: an address already listed in that scope keeps its entry (its\n"
    "reason and expiry are updated). A bad line stores nothing.\n";

struct sopts {
    struct admin_opts db;
    const char *scope;
    const char *reason;
    const char *source;
    const char *expires;
};

/* Options after "suppress VERB"; positional arguments stay at argv[optind..].
 * Returns -1 when done, or an exit status to return at once. */
static int
parse_opts(int argc, char **argv, struct sopts *o)
{
    static const struct option longopts[] = {
        {"db", required_argument, NULL, 'd'},     {"json", no_argument, NULL, 'j'},
        {"scope", required_argument, NULL, 's'},  {"reason", required_argument, NULL, 'r'},
        {"source", required_argument, NULL, 'S'}, {"expires", required_argument, NULL, 'e'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0}};
    memset(o, 0, sizeof *o);
    o->db.json = admin_global.json;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->db.db = optarg;
            break;
        case 'j':
            o->db.json = true;
            break;
        case 's':
            o->scope = optarg;
            break;
        case 'r':
            o->reason = optarg;
            break;
        case 'S':
            o->source = optarg;
            break;
        case 'e':
            o->expires = optarg;
            break;
        case 'h':
            fputs(suppress_usage, stdout);
            return ADMIN_EXIT_OK;
        default:
            fputs(suppress_usage, stderr);
            return ADMIN_EXIT_USAGE;
        }
    }
    return -1;
}

/* The SQL expression of --expires as parameter $N: NULL, now() plus a
 * duration, or a timestamp (checked by PostgreSQL). *param gets the text to
 * bind (NULL for none); both are freed by the caller. */
static char *
expires_expr(const char *t, int n, char **param)
{
    uint64_t ms;
    *param = NULL;
    if (!t)
        return xasprintf("$%d::timestamptz", n);
    if (conf_parse_duration(t, &ms) == 0) {
        *param = xasprintf("%" PRIu64 " milliseconds", ms);
        return xasprintf("(now() + $%d::interval)", n);
    }
    *param = xstrdup(t);
    return xasprintf("$%d::timestamptz", n);
}

static int
cmd_add(PGconn *conn, const char *entry, const struct sopts *o)
{
    char *exp_param;
    char *exp = expires_expr(o->expires, 5, &exp_param);
    char *sql = xasprintf("SELECT mta.suppress($1, $2, $3, coalesce($4, 'manual'), %s)", exp);
    const char *params[] = {entry, o->scope, o->reason, o->source, exp_param};
    PGresult *r = admin_exec(conn, "suppress add", sql, 5, params);
    int st = ADMIN_EXIT_ERROR;
    if (r) {
        printf("suppressed %s%s%s\n", PQgetvalue(r, 0, 0), o->scope ? " in scope " : "",
               o->scope ? o->scope : "");
        st = ADMIN_EXIT_OK;
        PQclear(r);
    }
    free(sql);
    free(exp);
    free(exp_param);
    return st;
}

static int
cmd_remove(PGconn *conn, const char *entry, const struct sopts *o)
{
    const char *params[] = {entry, o->scope};
    PGresult *r = admin_exec(conn, "suppress remove", "SELECT mta.unsuppress($1, $2)", 2, params);
    if (!r)
        return ADMIN_EXIT_ERROR;
    bool found = strcmp(PQgetvalue(r, 0, 0), "0") != 0;
    PQclear(r);
    if (!found) {
        admin_err("suppress remove: %s is not suppressed%s%s", entry,
                  o->scope ? " in scope " : " globally", o->scope ? o->scope : "");
        return ADMIN_EXIT_ERROR;
    }
    printf("removed %s%s%s\n", entry, o->scope ? " from scope " : "", o->scope ? o->scope : "");
    return ADMIN_EXIT_OK;
}

static int
cmd_list(PGconn *conn, const struct sopts *o)
{
    const char *params[] = {o->scope};
    PGresult *r = admin_exec(conn, "suppress list",
                             "SELECT address, scope, reason, source, created, expires,"
                             " (expires IS NOT NULL AND expires <= now()) AS expired"
                             " FROM mta.suppression"
                             " WHERE $1::text IS NULL OR scope = $1"
                             " ORDER BY address, scope NULLS FIRST",
                             1, params);
    if (!r)
        return ADMIN_EXIT_ERROR;
    if (o->db.json)
        admin_print_json(stdout, r);
    else
        admin_print_table(stdout, r);
    PQclear(r);
    return ADMIN_EXIT_OK;
}

/* ---- import ------------------------------------------------------------ */

/* COPY text format: backslash, tab and newline escaped. */
static void
copy_field(struct buf *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\')
            buf_puts(b, "\\\\");
        else if (s[i] == '\t')
            buf_puts(b, "\\t");
        else if (s[i] == '\n')
            buf_puts(b, "\\n");
        else
            buf_append(b, &(char){s[i]}, 1);
    }
}

static const char *
skip_blank(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* One CSV field at *pp (RFC 4180 quoting, blanks around it trimmed) into
 * out; *pp is left at the ',' or the end. Returns false for a quoted field
 * that is not closed or is followed by something other than ','. */
static bool
csv_field(const char **pp, struct buf *out)
{
    const char *p = skip_blank(*pp);
    if (*p == '"') {
        for (p++;; p++) {
            if (!*p)
                return false;
            if (*p == '"') {
                if (p[1] != '"')
                    break;
                p++;
            }
            buf_append(out, &(char){*p}, 1);
        }
        p = skip_blank(p + 1);
        if (*p && *p != ',')
            return false;
    } else {
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        buf_append(out, start, (size_t)(end - start));
    }
    *pp = p;
    return true;
}

/* Parses FILE into COPY rows "line\taddress\treason" in rows. Returns the
 * number of entries, or -1 (message printed). */
static long
read_import(FILE *f, const char *name, struct buf *rows)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    long lineno = 0, n = 0;
    bool first = true;
    struct buf addr, reason;
    buf_init(&addr);
    buf_init(&reason);
    while ((len = getline(&line, &cap, f)) != -1) {
        lineno++;
        if (memchr(line, '\0', (size_t)len)) {
            admin_err("suppress import: %s:%ld: NUL byte", name, lineno);
            n = -1;
            break;
        }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        const char *p = skip_blank(line);
        if (!*p || *p == '#')
            continue;
        buf_reset(&addr);
        buf_reset(&reason);
        bool ok = csv_field(&p, &addr);
        bool has_reason = ok && *p == ',';
        if (has_reason) {
            p++;
            ok = csv_field(&p, &reason) && !*p;
        }
        if (!ok) {
            admin_err("suppress import: %s:%ld: bad CSV (expected address or address,reason)", name,
                      lineno);
            n = -1;
            break;
        }
        bool header = first && !strcasecmp(addr.data ? addr.data : "", "address");
        first = false;
        if (header)
            continue;
        for (size_t i = 0; i < reason.len; i++)
            if ((unsigned char)reason.data[i] < 0x20 || reason.data[i] == 0x7f) {
                admin_err("suppress import: %s:%ld: control character in the reason", name, lineno);
                n = -1;
                break;
            }
        if (n < 0)
            break;
        buf_printf(rows, "%ld\t", lineno);
        copy_field(rows, addr.data ? addr.data : "", addr.len);
        buf_puts(rows, "\t");
        if (has_reason && reason.len)
            copy_field(rows, reason.data, reason.len);
        else
            buf_puts(rows, "\\N");
        buf_puts(rows, "\n");
        n++;
    }
    if (n >= 0 && ferror(f)) {
        admin_err("suppress import: %s: %s", name, strerror(errno));
        n = -1;
    }
    free(line);
    buf_free(&addr);
    buf_free(&reason);
    return n;
}

static bool
copy_in(PGconn *conn, const struct buf *rows)
{
    PGresult *r = PQexec(conn, "COPY pg_temp.suppress_import (line, address, reason) FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        admin_report_pg_error("suppress import", r, NULL);
        PQclear(r);
        return false;
    }
    PQclear(r);
    bool ok = PQputCopyData(conn, rows->data ? rows->data : "", (int)rows->len) == 1 &&
              PQputCopyEnd(conn, NULL) == 1;
    if (!ok)
        admin_err("suppress import: %s", PQerrorMessage(conn));
    while ((r = PQgetResult(conn))) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            if (ok)
                admin_report_pg_error("suppress import", r, NULL);
            ok = false;
        }
        PQclear(r);
    }
    return ok;
}

static int
cmd_import(PGconn *conn, const char *file, const struct sopts *o)
{
    FILE *f = strcmp(file, "-") ? fopen(file, "r") : stdin;
    if (!f) {
        admin_err("suppress import: %s: %s", file, strerror(errno));
        return ADMIN_EXIT_ERROR;
    }
    struct buf rows;
    buf_init(&rows);
    long n = read_import(f, file, &rows);
    if (f != stdin)
        fclose(f);
    int st = ADMIN_EXIT_ERROR;
    PGresult *r = NULL;
    char *exp_param = NULL, *exp = NULL, *sql = NULL;
    if (n < 0)
        goto out;
    r = admin_exec(conn, "suppress import",
                   "CREATE TEMP TABLE suppress_import (line bigint, address text, reason text)", 0,
                   NULL);
    if (!r || (PQclear(r), !copy_in(conn, &rows)))
        goto out;
    /* One statement: a bad address raises (naming its line) and nothing is
     * stored. The last line of a repeated address wins. */
    exp = expires_expr(o->expires, 3, &exp_param);
    sql = xasprintf(
        "WITH e AS (SELECT DISTINCT ON (address) address, reason FROM ("
        "  SELECT mta.suppression_entry(i.address, 'address on line ' || i.line) AS address,"
        "         coalesce(i.reason, $2) AS reason, i.line"
        "    FROM pg_temp.suppress_import i) x ORDER BY address, line DESC),"
        " ins AS (INSERT INTO mta.suppression AS s (address, scope, reason, source, expires)"
        "  SELECT e.address, mta.check_scope($1), e.reason, 'import', %s FROM e"
        "  ON CONFLICT ON CONSTRAINT suppression_key DO UPDATE"
        "   SET reason = coalesce(EXCLUDED.reason, s.reason), expires = EXCLUDED.expires"
        "  RETURNING (xmax = 0) AS added)"
        " SELECT count(*) FILTER (WHERE added), count(*) FILTER (WHERE NOT added) FROM ins",
        exp);
    const char *params[] = {o->scope, o->reason, exp_param};
    r = admin_exec(conn, "suppress import", sql, 3, params);
    if (!r)
        goto out;
    printf("imported %ld line%s: %s new, %s already listed\n", n, n == 1 ? "" : "s",
           PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
    PQclear(r);
    st = ADMIN_EXIT_OK;
out:
    buf_free(&rows);
    free(sql);
    free(exp);
    free(exp_param);
    return st;
}

int
admin_cmd_suppress(int argc, char **argv)
{
    if (argc < 2)
        return admin_usage_error(suppress_usage, "suppress: what? (%s)",
                                 "add, remove, list or import");
    const char *verb = argv[1];
    if (!strcmp(verb, "--help") || !strcmp(verb, "-h")) {
        fputs(suppress_usage, stdout);
        return ADMIN_EXIT_OK;
    }
    struct sopts o;
    int st = parse_opts(argc - 1, argv + 1, &o);
    if (st >= 0)
        return st;
    int npos = argc - 1 - optind;
    char **pos = argv + 1 + optind;
    bool is_add = !strcmp(verb, "add"), is_remove = !strcmp(verb, "remove");
    bool is_list = !strcmp(verb, "list"), is_import = !strcmp(verb, "import");
    if (!is_add && !is_remove && !is_list && !is_import)
        return admin_usage_error(
            suppress_usage, "suppress: unknown action '%s' (add, remove, list or import)", verb);
    if (npos != (is_list ? 0 : 1))
        return admin_usage_error(suppress_usage,
                                 is_list ? "suppress: %s takes no argument"
                                         : "suppress: %s needs exactly one argument",
                                 verb);
    if (!is_add && !is_import && (o.reason || o.expires))
        return admin_usage_error(
            suppress_usage, "suppress: %s: --reason and --expires are for add and import", verb);
    if (!is_add && o.source)
        return admin_usage_error(suppress_usage, "suppress: %s: --source is for add", verb);
    if (is_list ? false : !*pos[0])
        return admin_usage_error(suppress_usage, "suppress: %s: empty argument", verb);
    PGconn *conn = admin_connect(&o.db);
    if (!conn)
        return ADMIN_EXIT_ERROR;
    if (is_add)
        st = cmd_add(conn, pos[0], &o);
    else if (is_remove)
        st = cmd_remove(conn, pos[0], &o);
    else if (is_list)
        st = cmd_list(conn, &o);
    else
        st = cmd_import(conn, pos[0], &o);
    PQfinish(conn);
    return st;
}
