/* queue: statements about queue rows (see queue.h). The SQL text of the
 * delivery statements lives here and nowhere else; callers own their
 * callbacks' arguments, this module owns nothing. */
#include "queue.h"

#include <libpq-fe.h>
#include <stdio.h>

#include "batch.h"
#include "log.h"
#include "util.h"
#include "warmup.h"

struct db *
queue_pick_db(struct db *const *dbs, size_t n, size_t *rr)
{
    for (size_t i = 0; i < n; i++) {
        struct db *db = dbs[(*rr + i) % n];
        if (db_ready(db)) {
            *rr = (*rr + i + 1) % n;
            return db;
        }
    }
    return NULL;
}

void
queue_prepare(struct db *db)
{
    warmup_prepare(db);
    db_prepare(db, "claim_many",
               "SELECT * FROM mta.claim_many($1::bigint, $2, $3::text[], $4::text[], $5::int[], "
               "$6::int, $7::bigint[])",
               7);
    db_prepare(db, "claim_many_rated",
               "SELECT * FROM mta.claim_many_rated($1::bigint, $2, $3::text[], $4::text[], "
               "$5::int[], $6::int, $7::bigint[], $8::int[], $9::text[], $10::text[], $11::int[], "
               "$12::int[], $13::int[], $14::int[], $15::text[], $16::int[], $17::int[])",
               17);
    db_prepare(db, "finish",
               "SELECT mta.finish($1::bigint, $2, $3::bigint[], $4::bigint[], $5::text[], "
               "$6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], "
               "$12::text[], $13::text[], $14::text[], $15::bool, $16::text[], $17::text[], "
               "$18::text[], $19::bool[], $20::int[])",
               20);
    db_prepare(db, "release", "SELECT mta.release($1::bigint, $2::bigint[], $3::bigint[])", 3);
    db_prepare(db, "release_refund",
               "SELECT mta.release_refund($1::bigint, $2::bigint[], $3::bigint[], $4, $5, $6::int, "
               "$7::int, $8)",
               8);
    db_prepare(db, "set_aside", "SELECT mta.set_aside($1::bigint[], $2::bigint[], $3)", 3);
    db_prepare(db, "postpone", "SELECT mta.queue_postpone($1, $2, $3, $4::int)", 4);
    db_prepare(db, "enter_backoff", "SELECT mta.queue_enter_backoff($1, $2, $3::timestamptz, $4)",
               4);
    db_prepare(db, "queue_defer", "SELECT mta.queue_defer($1, $2, $3::int, $4)", 4);
}

static void
ignore_result(const PGresult *res, void *arg)
{
    (void)arg;
    if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("event=statement-failed error=\"%s\"", PQresultErrorMessage(res));
}

int
queue_finish(struct db *db, long long node_id, const char *node_label, const struct batch *b,
             bool generate_bounces, db_cb cb, void *arg)
{
    struct buf a[BATCH_F_N];
    batch_finish_arrays(b, a);
    char node[32];
    snprintf(node, sizeof node, "%lld", node_id);
    const char *values[20] = {node,
                              node_label,
                              a[BATCH_F_IDS].data,
                              a[BATCH_F_TOKENS].data,
                              a[BATCH_F_TYPES].data,
                              a[BATCH_F_RETRY].data,
                              a[BATCH_F_STATUS].data,
                              a[BATCH_F_DIAG].data,
                              a[BATCH_F_MTA].data,
                              a[BATCH_F_CAT].data,
                              a[BATCH_F_SRC].data,
                              a[BATCH_F_DST].data,
                              a[BATCH_F_TLSP].data,
                              a[BATCH_F_TLSC].data,
                              generate_bounces ? "true" : "false",
                              a[BATCH_F_TLSPOL].data,
                              a[BATCH_F_TLSFAIL].data,
                              a[BATCH_F_TLSDOM].data,
                              a[BATCH_F_HOPDSN].data,
                              a[BATCH_F_DELAY].data};
    int rc = db_exec(db, "finish", 20, values, NULL, NULL, 0, cb, arg);
    for (int i = 0; i < BATCH_F_N; i++)
        buf_free(&a[i]);
    return rc;
}

void
queue_release(struct db *db, long long node_id, const char *ids, const char *tokens)
{
    char node[32];
    snprintf(node, sizeof node, "%lld", node_id);
    const char *values[3] = {node, ids, tokens};
    db_exec(db, "release", 3, values, NULL, NULL, 0, ignore_result, NULL);
}

void
queue_release_refund(struct db *db, long long node_id, const char *ids, const char *tokens,
                     const char *key_domain, const char *key_vmta, unsigned msgs, unsigned connects,
                     const char *ip_key)
{
    char node[32], msgs_s[16], connects_s[16];
    snprintf(node, sizeof node, "%lld", node_id);
    snprintf(msgs_s, sizeof msgs_s, "%u", msgs);
    snprintf(connects_s, sizeof connects_s, "%u", connects);
    const char *values[8] = {node,   ids,        tokens, key_domain, key_vmta ? key_vmta : "",
                             msgs_s, connects_s, ip_key};
    db_exec(db, "release_refund", 8, values, NULL, NULL, 0, ignore_result, NULL);
}

void
queue_set_aside(struct db *db, long long id, long long token, const char *reason)
{
    char ids[32], tokens[32];
    snprintf(ids, sizeof ids, "{%lld}", id);
    snprintf(tokens, sizeof tokens, "{%lld}", token);
    const char *values[3] = {ids, tokens, reason};
    db_exec(db, "set_aside", 3, values, NULL, NULL, 0, ignore_result, NULL);
}

void
queue_enter_backoff(struct db *db, const char *domain, const char *vmta, long long until_us,
                    const char *reply)
{
    struct buf until;
    buf_init(&until);
    batch_append_ts(&until, until_us, false);
    const char *values[4] = {domain, vmta, until.data, reply};
    db_exec(db, "enter_backoff", 4, values, NULL, NULL, 0, ignore_result, NULL);
    buf_free(&until);
}

void
queue_defer(struct db *db, const char *domain, const char *vmta, long long ms, const char *reason)
{
    char v[32];
    snprintf(v, sizeof v, "%lld", ms > 86400000 ? 86400000LL : ms < 1 ? 1LL : ms);
    const char *values[4] = {domain, vmta, v, reason};
    db_exec(db, "queue_defer", 4, values, NULL, NULL, 0, ignore_result, NULL);
}

void
queue_postpone(struct db *db, const char *pipe, const char *domain, const char *vmta, long long ms)
{
    char v[32];
    snprintf(v, sizeof v, "%lld", ms > 86400000 ? 86400000LL : ms);
    const char *values[4] = {pipe, domain, vmta, v};
    db_exec(db, "postpone", 4, values, NULL, NULL, 0, ignore_result, NULL);
}
