/* db: the command line's database access (blocking libpq: the CLI has no
 * event loop) and the printing of results as tables, JSON and CSV. Results
 * belong to the caller, who PQclear()s them. */
#include "admin.h"

#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "pg_oid.h"
#include "util.h"

PGconn *
admin_connect(const struct admin_opts *opts)
{
    const char *url = opts->db ? opts->db : admin_global.db;
    if (!url)
        url = getenv("PGMTA_DATABASE_URL");
    if (!url || !*url) {
        admin_err("no database: give --db URL or set PGMTA_DATABASE_URL");
        return NULL;
    }
    PGconn *conn = PQconnectdb(url);
    if (PQstatus(conn) != CONNECTION_OK) {
        const char *msg = PQerrorMessage(conn);
        size_t n = strlen(msg);
        while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
            n--;
        admin_err("cannot connect to the database: %.*s", (int)n, msg);
        PQfinish(conn);
        return NULL;
    }
    PGresult *r = PQexec(conn, "SET client_min_messages = warning; SET datestyle = 'ISO, YMD'; "
                               "SET application_name = 'pgmta'");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        admin_report_pg_error("session setup", r, NULL);
        PQclear(r);
        PQfinish(conn);
        return NULL;
    }
    PQclear(r);
    return conn;
}

/* 1-based line of the 1-based character position pos in sql (UTF-8). */
static int
line_of_position(const char *sql, long pos)
{
    int line = 1;
    long chars = 0;
    for (const unsigned char *p = (const unsigned char *)sql; *p; p++) {
        if ((*p & 0xC0) == 0x80)
            continue;
        if (++chars >= pos)
            break;
        if (*p == '\n')
            line++;
    }
    return line;
}

static void
print_trimmed(const char *label, const char *s)
{
    if (!s || !*s)
        return;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' '))
        n--;
    fprintf(stderr, "  %s: %.*s\n", label, (int)n, s);
}

void
admin_report_pg_error(const char *what, const PGresult *res, const char *sql)
{
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *sev = res ? PQresultErrorField(res, PG_DIAG_SEVERITY) : NULL;
    const char *pos = res ? PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION) : NULL;
    if (!msg) {
        /* Client-side errors (lost connection, ...) have no fields. */
        const char *m = res ? PQresultErrorMessage(res) : "";
        size_t n = strlen(m);
        while (n > 0 && (m[n - 1] == '\n' || m[n - 1] == ' '))
            n--;
        fprintf(stderr, "pgmta: %s: %.*s\n", what, (int)n, n ? m : "unknown error");
        return;
    }
    if (pos && sql)
        fprintf(stderr, "pgmta: %s: line %d: %s: %s\n", what, line_of_position(sql, atol(pos)),
                sev ? sev : "ERROR", msg);
    else
        fprintf(stderr, "pgmta: %s: %s: %s\n", what, sev ? sev : "ERROR", msg);
    print_trimmed("DETAIL", PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL));
    print_trimmed("HINT", PQresultErrorField(res, PG_DIAG_MESSAGE_HINT));
    print_trimmed("CONTEXT", PQresultErrorField(res, PG_DIAG_CONTEXT));
}

PGresult *
admin_exec(PGconn *conn, const char *what, const char *sql, int nparams, const char *const *params)
{
    PGresult *r =
        nparams ? PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0) : PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY)
        return r;
    admin_report_pg_error(what, r, sql);
    PQclear(r);
    return NULL;
}

/* Display width of a UTF-8 string (one column per code point). */
static size_t
utf8_width(const char *s)
{
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xC0) != 0x80)
            w++;
    return w;
}

/* Control characters would break the table layout; show them as '?'. */
static void
put_cell(struct buf *line, const char *s, size_t width, bool right)
{
    size_t w = utf8_width(s);
    if (right)
        for (size_t k = w; k < width; k++)
            buf_append(line, " ", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        buf_append(line, *p < 0x20 || *p == 0x7F ? "?" : (const char *)p, 1);
    if (!right)
        for (size_t k = w; k < width; k++)
            buf_append(line, " ", 1);
}

/* Writes line without trailing blanks, then a newline, and empties it. */
static void
flush_line(FILE *out, struct buf *line)
{
    size_t n = line->len;
    while (n > 0 && line->data[n - 1] == ' ')
        n--;
    if (n)
        fwrite(line->data, 1, n, out);
    fputc('\n', out);
    buf_reset(line);
}

/* A cell as shown in a table: timestamps without fractions of a second. */
static char *
table_value(const PGresult *res, int row, int col)
{
    const char *v = PQgetvalue(res, row, col);
    const char *dot = PQftype(res, col) == OID_TIMESTAMPTZ ? strchr(v, '.') : NULL;
    if (!dot)
        return xstrdup(v);
    size_t frac = strspn(dot + 1, "0123456789");
    return xasprintf("%.*s%s", (int)(dot - v), v, dot + 1 + frac);
}

void
admin_print_table(FILE *out, const PGresult *res)
{
    int nf = PQnfields(res), nt = PQntuples(res);
    size_t *width = xcalloc(nf ? nf : 1, sizeof *width);
    char **cells = xcalloc((size_t)nt * nf + 1, sizeof *cells);
    for (int c = 0; c < nf; c++) {
        width[c] = utf8_width(PQfname(res, c));
        for (int r = 0; r < nt; r++) {
            char *v = cells[(size_t)r * nf + c] = table_value(res, r, c);
            size_t w = utf8_width(v);
            if (w > width[c])
                width[c] = w;
        }
    }
    struct buf line;
    buf_init(&line);
    for (int c = 0; c < nf; c++) {
        if (c)
            buf_puts(&line, "  ");
        put_cell(&line, PQfname(res, c), width[c], false);
    }
    flush_line(out, &line);
    for (int r = 0; r < nt; r++) {
        for (int c = 0; c < nf; c++) {
            if (c)
                buf_puts(&line, "  ");
            put_cell(&line, cells[(size_t)r * nf + c], width[c],
                     pg_oid_is_numeric(PQftype(res, c)));
        }
        flush_line(out, &line);
    }
    buf_free(&line);
    for (size_t i = 0; i < (size_t)nt * nf; i++)
        free(cells[i]);
    free(cells);
    free(width);
}

/* Writes B to OUT and frees it. */
static void
put_buf(FILE *out, struct buf *b)
{
    fwrite(b->data, 1, b->len, out);
    buf_free(b);
}

void
admin_json_string(FILE *out, const char *s)
{
    struct buf b;
    buf_init(&b);
    json_append_string(&b, s);
    put_buf(out, &b);
}

void
admin_json_value(FILE *out, const PGresult *res, int row, int col)
{
    struct buf b;
    buf_init(&b);
    json_append_value(&b, res, row, col);
    put_buf(out, &b);
}

void
admin_print_json(FILE *out, const PGresult *res)
{
    struct buf b;
    buf_init(&b);
    json_append_rows(&b, res);
    put_buf(out, &b);
}

void
admin_csv_field(FILE *out, const char *s)
{
    if (!s || !*s)
        return;
    bool quote = strpbrk(s, ",\"\r\n") != NULL || *s == ' ' || s[strlen(s) - 1] == ' ';
    if (!quote) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            fputc('"', out);
        fputc(*p, out);
    }
    fputc('"', out);
}
