/* json: JSON writers over struct buf (see json.h). */
#include "json.h"

#include <stdbool.h>
#include <string.h>

#include "pg_oid.h"
#include "util.h"

void
json_append_string(struct buf *b, const char *s)
{
    buf_puts(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"':
            buf_puts(b, "\\\"");
            break;
        case '\\':
            buf_puts(b, "\\\\");
            break;
        case '\n':
            buf_puts(b, "\\n");
            break;
        case '\r':
            buf_puts(b, "\\r");
            break;
        case '\t':
            buf_puts(b, "\\t");
            break;
        case '<':
            buf_puts(b, "\\u003c");
            break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                buf_printf(b, "\\u%04x", *p);
            else
                buf_append(b, p, 1);
        }
    }
    buf_puts(b, "\"");
}

/* NaN and Infinity are numbers to PostgreSQL, not to JSON. */
static bool
is_json_number(const char *s)
{
    if (*s == '-')
        s++;
    if (*s < '0' || *s > '9')
        return false;
    for (; *s; s++)
        if (!strchr("0123456789.eE+-", *s))
            return false;
    return true;
}

void
json_append_value(struct buf *b, const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col)) {
        buf_puts(b, "null");
        return;
    }
    const char *v = PQgetvalue(res, row, col);
    Oid t = PQftype(res, col);
    if (t == OID_BOOL)
        buf_puts(b, v[0] == 't' ? "true" : "false");
    else if (pg_oid_is_numeric(t) && is_json_number(v))
        buf_puts(b, v);
    else if (t == OID_JSON || t == OID_JSONB)
        buf_puts(b, v);
    else
        json_append_string(b, v);
}

void
json_append_row(struct buf *b, const PGresult *res, int row)
{
    buf_puts(b, "{");
    for (int c = 0; c < PQnfields(res); c++) {
        if (c)
            buf_puts(b, ", ");
        json_append_string(b, PQfname(res, c));
        buf_puts(b, ": ");
        json_append_value(b, res, row, c);
    }
    buf_puts(b, "}");
}

void
json_append_rows(struct buf *b, const PGresult *res)
{
    int n = PQntuples(res);
    buf_puts(b, "[");
    for (int r = 0; r < n; r++) {
        buf_puts(b, r ? ",\n " : "\n ");
        json_append_row(b, res, r);
    }
    buf_puts(b, n ? "\n]\n" : "]\n");
}
