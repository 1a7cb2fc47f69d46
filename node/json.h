/* json: JSON text from strings and libpq results, for the HTTP API and the
 * command line. Values keep their PostgreSQL type: booleans, numbers (but
 * NaN and Infinity, which JSON cannot carry, become strings), json/jsonb
 * as is, everything else a string; SQL NULL is null. */
#ifndef PGMTA_JSON_H
#define PGMTA_JSON_H

#include <libpq-fe.h>

struct buf;

/* A string literal; control characters and '<' are \u-escaped, so the
 * text is never markup even if a browser sniffs it. */
void json_append_string(struct buf *b, const char *s);
void json_append_value(struct buf *b, const PGresult *res, int row, int col);
/* {"column": value, ...} */
void json_append_row(struct buf *b, const PGresult *res, int row);
/* [ row, ... ] followed by a newline */
void json_append_rows(struct buf *b, const PGresult *res);

#endif
