/* callback_probe: checks the callback rule of db, sched and dns against real
 * servers: a request function never calls its callback before it returns,
 * even when the answer or the failure is known at once.
 *
 *   callback_probe db --db URL [--requests N] [--size BYTES]
 *   callback_probe sched --db URL --domain D
 *   callback_probe dns --server IP:PORT --domain D
 *
 * db: connects, prints "ready", then blocks reading one line from stdin
 * (the driver stops PostgreSQL meanwhile, so libpq has not yet noticed),
 * issues N requests (default 20) carrying BYTES each (default 1000: small
 * enough for libpq to buffer, so db_exec's own flush meets the dead socket)
 * without running the loop, and prints "queued=Q refused=R"; then runs the loop until every
 * queued callback came and prints "callbacks=C null=N inside=I". A callback
 * with NULL issues another db_exec (must be refused); the first one frees
 * the db from inside the callback, which must answer every other request
 * before db_free returns ("pending-after-db_free=K" otherwise).
 *
 * sched: unlimited slot, max-smtp-out 0, unlimited tokens, want 0, then a
 * rate of 1000/s asked twice (the second answer comes from the cache), a
 * slot of the queue with max 1 and another one (none free): prints one line
 * per answer "answer=NAME value=V inside=0|1" and "done inside=I".
 *
 * dns: resolves D twice (the second from the cache), an IP literal route,
 * a domain literal, an invalid name, and a cached answer cancelled at once
 * (must never answer): one line per answer "answer=NAME status=S inside=0|1"
 * and "done inside=I".
 *
 * "inside" counts callbacks that ran before their request function returned
 * (0 is correct). Exit status 0 when the run completed, 1 otherwise, 2 on
 * bad usage. */
#include "conf.h"
#include "db.h"
#include "dns.h"
#include "log.h"
#include "sched.h"
#include "util.h"

#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct event_base *base;
static int in_call;       /* a request function is on the stack */
static unsigned inside;   /* callbacks that came while in_call */
static unsigned expected; /* answers still to come */
static int status = 1;

static void
usage(void)
{
    fprintf(stderr, "usage: callback_probe db --db URL [--requests N] [--size BYTES]\n"
                    "       callback_probe sched --db URL --domain D\n"
                    "       callback_probe dns --server IP:PORT --domain D\n");
    exit(2);
}

static void
note(const char *what, const char *name, long long value)
{
    if (in_call)
        inside++;
    printf("answer=%s %s=%lld inside=%d\n", name, what, value, in_call ? 1 : 0);
    fflush(stdout);
}

static void
on_give_up(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    printf("timeout expected=%u\n", expected);
    fflush(stdout);
    event_base_loopexit(base, NULL);
}

static void
answered(void)
{
    if (--expected == 0) {
        printf("done inside=%u\n", inside);
        fflush(stdout);
        status = 0;
        event_base_loopexit(base, NULL);
    }
}

/* ---- db ---- */

static struct db *db;
static unsigned db_requests = 20, db_queued, db_callbacks, db_nulls;
static size_t db_size = 1000;

static void
db_on_result(const PGresult *res, void *arg)
{
    (void)arg;
    if (in_call)
        inside++;
    db_callbacks++;
    if (!res) {
        db_nulls++;
        /* Asking again from inside a failure callback must be refused. */
        const char *v[] = {"x"};
        if (db && db_exec(db, "probe", 1, v, NULL, NULL, 0, db_on_result, NULL) == 0)
            db_queued++;
    }
    if (db && db_callbacks == 1) {
        /* db_free from inside the first callback: every other request is
         * failed before it returns, and the handler running now frees the
         * memory only when it is done (ASan checks). */
        struct db *d = db;
        db = NULL;
        db_free(d);
        if (db_callbacks != db_queued) {
            printf("pending-after-db_free=%u\n", db_queued - db_callbacks);
            inside++;
        }
        printf("callbacks=%u null=%u inside=%u\n", db_callbacks, db_nulls, inside);
        fflush(stdout);
        status = 0;
        event_base_loopexit(base, NULL);
    }
}

static void
db_on_ready(struct db *d, void *arg)
{
    (void)arg;
    printf("ready\n");
    fflush(stdout);
    char line[64];
    /* Blocks the loop on purpose: the server goes away meanwhile, and libpq
     * must not have read the end of the connection yet. */
    if (!fgets(line, sizeof line, stdin))
        exit(1);
    size_t len = db_size;
    char *big = xmalloc(len + 1);
    memset(big, 'x', len);
    big[len] = '\0';
    unsigned refused = 0;
    for (unsigned i = 0; i < db_requests; i++) {
        const char *v[] = {big};
        in_call = 1;
        int rc = db_exec(d, "probe", 1, v, NULL, NULL, 0, db_on_result, NULL);
        in_call = 0;
        if (rc == 0)
            db_queued++;
        else
            refused++;
    }
    free(big);
    printf("queued=%u refused=%u inside=%u\n", db_queued, refused, inside);
    fflush(stdout);
    if (db_queued == 0) {
        printf("callbacks=0 null=0 inside=%u\n", inside);
        fflush(stdout);
        status = 0;
        event_base_loopexit(base, NULL);
    }
}

static void
run_db(const char *url)
{
    db = db_new(base, url, "callback_probe");
    db_prepare(db, "probe", "SELECT length($1::text)", 1);
    db_set_ready_cb(db, db_on_ready, NULL);
    in_call = 1;
    db_connect(db);
    in_call = 0;
    if (inside)
        printf("ready-callback-inside-db_connect\n");
}

/* ---- sched ---- */

static struct sched *sched;
static const char *domain;
static struct conf_rate rate_1000 = {1000, 1000};
static int slot_held = -1;

static void
on_slot(int slot, void *arg)
{
    note("value", arg, slot);
    if (!strcmp(arg, "slot-max1") && slot >= 0)
        slot_held = slot;
    answered();
}

static void
on_tokens(unsigned granted, unsigned wait_ms, void *arg)
{
    (void)wait_ms;
    note("value", arg, granted);
    answered();
}

static void sched_second_round(void);

static void
on_first_tokens(unsigned granted, unsigned wait_ms, void *arg)
{
    on_tokens(granted, wait_ms, arg);
    sched_second_round();
}

#define CALL(expr)                                                                                 \
    do {                                                                                           \
        in_call = 1;                                                                               \
        expr;                                                                                      \
        in_call = 0;                                                                               \
    } while (0)

/* Second round, from a callback: the cache holds tokens now. */
static void
sched_second_round(void)
{
    CALL(
        sched_take_tokens(sched, domain, "", SCHED_MSG, &rate_1000, 1, on_tokens, "tokens-cached"));
    CALL(sched_take_slot(sched, domain, "", 1, on_slot, "slot-max1"));
}

static void on_wait_ready(evutil_socket_t fd, short what, void *arg);

static void
sched_start(void)
{
    struct conf_rate unlimited = {CONF_UNLIMITED, 1000};
    expected = 7;
    CALL(sched_take_slot(sched, domain, "", CONF_UNLIMITED, on_slot, "slot-unlimited"));
    CALL(sched_take_slot(sched, domain, "", 0, on_slot, "slot-zero"));
    CALL(sched_take_tokens(sched, domain, "", SCHED_MSG, &unlimited, 5, on_tokens,
                           "tokens-unlimited"));
    CALL(sched_take_tokens(sched, domain, "", SCHED_CONNECT, &rate_1000, 0, on_tokens,
                           "tokens-zero"));
    CALL(sched_take_tokens(sched, domain, "", SCHED_MSG, &rate_1000, 1, on_first_tokens,
                           "tokens-fetched"));
}

static void
on_wait_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (!sched_ready(sched)) {
        struct timeval tv = {0, 50000};
        event_base_once(base, -1, EV_TIMEOUT, on_wait_ready, NULL, &tv);
        return;
    }
    sched_start();
}

/* ---- dns ---- */

static struct dns *dns;

static void
on_dns(const struct dns_result *res, void *arg)
{
    note("status", arg, res->status);
    answered();
}

static void
on_dns_never(const struct dns_result *res, void *arg)
{
    (void)res;
    (void)arg;
    if (in_call)
        inside++;
    printf("answer=cancelled-answered\n");
    fflush(stdout);
    inside++; /* counts as a failure */
}

static void
on_dns_first(const struct dns_result *res, void *arg)
{
    /* From inside a callback: every answer below is known at once. */
    expected += 4;
    on_dns(res, arg);
    CALL(dns_resolve_mx(dns, domain, 25, on_dns, "mx-cached"));
    CALL(dns_resolve_host(dns, "127.0.0.1", 2525, on_dns, "host-literal"));
    CALL(dns_resolve_mx(dns, "[127.0.0.1]", 25, on_dns, "domain-literal"));
    CALL(dns_resolve_mx(dns, "bad..name", 25, on_dns, "invalid-name"));
    struct dns_request *r;
    CALL(r = dns_resolve_mx(dns, domain, 25, on_dns_never, "cancelled"));
    if (!r) {
        printf("cancelled-no-handle\n");
        inside++;
    }
    dns_cancel(r);
}

int
main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *mode = argv[1];
    const char *url = NULL, *server = NULL;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--db") && i + 1 < argc)
            url = argv[++i];
        else if (!strcmp(argv[i], "--server") && i + 1 < argc)
            server = argv[++i];
        else if (!strcmp(argv[i], "--domain") && i + 1 < argc)
            domain = argv[++i];
        else if (!strcmp(argv[i], "--size") && i + 1 < argc)
            db_size = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--requests") && i + 1 < argc)
            db_requests = (unsigned)atoi(argv[++i]);
        else
            usage();
    }
    log_set_ident("callback_probe");
    base = event_base_new();
    struct timeval give_up = {20, 0};
    event_base_once(base, -1, EV_TIMEOUT, on_give_up, NULL, &give_up);
    if (!strcmp(mode, "db") && url) {
        run_db(url);
    } else if (!strcmp(mode, "sched") && url && domain) {
        sched = sched_new(base, url, "callback_probe");
        struct timeval tv = {0, 0};
        event_base_once(base, -1, EV_TIMEOUT, on_wait_ready, NULL, &tv);
    } else if (!strcmp(mode, "dns") && server && domain) {
        char err[256];
        const char *servers[] = {server};
        dns = dns_new(base, servers, 1, 3000, err, sizeof err);
        if (!dns) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        expected = 1;
        CALL(dns_resolve_mx(dns, domain, 25, on_dns_first, "mx-first"));
    } else {
        usage();
    }
    event_base_dispatch(base);
    if (sched) {
        if (slot_held >= 0)
            sched_release_slot(sched, domain, "", slot_held);
        sched_free(sched);
    }
    if (db)
        db_free(db);
    dns_free(dns);
    util_defer_base_free(base);
    event_base_free(base);
    if (inside)
        status = 1;
    return status;
}
