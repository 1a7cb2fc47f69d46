/* warmup: see warmup.h. Owns nothing: the strings it is given belong to the
 * configuration or the caller. */
#include "warmup.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "log.h"

void
warmup_prepare(struct db *db)
{
    db_prepare(db, "warmup_take", "SELECT granted, warming FROM mta.warmup_take($1, $2, $3::int)",
               3);
    db_prepare(db, "warmup_refund", "SELECT mta.warmup_refund($1, $2, $3::int)", 3);
    /* housekeeping: today's decision, once per day whoever calls it */
    db_prepare(db, "warmup_advance", "SELECT mta.warmup_advance(current_date)", 0);
}

const char *
warmup_source_ip(const struct conf_vmta *vmta)
{
    if (!vmta || !vmta->smtp_source_host || (!vmta->warmup && !vmta->warmup_overflow_pool))
        return NULL;
    return vmta->smtp_source_host;
}

int
warmup_take(struct db *db, const char *ip, const char *key, unsigned want, db_cb cb, void *arg)
{
    char n[16];
    snprintf(n, sizeof n, "%u", want);
    const char *params[] = {ip, key, n};
    return db_exec(db, "warmup_take", 3, params, NULL, NULL, 0, cb, arg);
}

bool
warmup_parse(const PGresult *res, unsigned *granted, bool *warming)
{
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
        PQgetisnull(res, 0, 0))
        return false;
    *granted = (unsigned)strtoul(PQgetvalue(res, 0, 0), NULL, 10);
    *warming = PQgetvalue(res, 0, 1)[0] == 't';
    return true;
}

static void
on_refunded(const PGresult *res, void *arg)
{
    (void)arg;
    if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("warmup event=refund-failed error=\"%s\"", PQresultErrorMessage(res));
}

void
warmup_refund(struct db *db, const char *ip, const char *key, unsigned n)
{
    if (!db || n == 0)
        return;
    char s[16];
    snprintf(s, sizeof s, "%u", n);
    const char *params[] = {ip, key, s};
    db_exec(db, "warmup_refund", 3, params, NULL, NULL, 0, on_refunded, NULL);
}

const char *
warmup_overflow_member(const struct conf *c, const struct conf_vmta *vmta, unsigned *next)
{
    if (!vmta || !vmta->warmup_overflow_pool)
        return NULL;
    const struct conf_vmta_pool *pool = conf_vmta_pool_lookup(c, vmta->warmup_overflow_pool);
    if (!pool || !pool->nmembers)
        return NULL;
    return pool->members[(*next)++ % pool->nmembers];
}
