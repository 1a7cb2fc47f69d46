/* pg_oid: OIDs of PostgreSQL's built-in types (pg_type.dat), stable across
 * releases, for reading result column types without a catalog query. */
#ifndef PGMTA_PG_OID_H
#define PGMTA_PG_OID_H

#define OID_BOOL 16
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_OID 26
#define OID_JSON 114
#define OID_FLOAT4 700
#define OID_FLOAT8 701
#define OID_TIMESTAMPTZ 1184
#define OID_NUMERIC 1700
#define OID_JSONB 3802

#include <libpq-fe.h>
#include <stdbool.h>

/* Types whose text form is a number (right-aligned, JSON numbers). */
static inline bool
pg_oid_is_numeric(Oid t)
{
    return t == OID_INT2 || t == OID_INT4 || t == OID_INT8 || t == OID_OID || t == OID_FLOAT4 ||
           t == OID_FLOAT8 || t == OID_NUMERIC;
}

#endif
