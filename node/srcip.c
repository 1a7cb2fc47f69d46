/* srcip: cache of mta.source_ip_disabled (see srcip.h). Owns its entries
 * (domain and IP strings), its refresh timer and at most one refresh in
 * flight; a refresh answer replaces every entry. Entries are few (a domain
 * has a handful of source IPs), so a linear scan is the lookup. */
#include "srcip.h"

#include <event2/event.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "util.h"

/* More rows than this are nonsense for a cache read every second. */
#define SRCIP_MAX 4096

struct srcip_entry {
    char *domain;
    char *ip;
    long long until_us;
};

struct srcip {
    struct event *timer;
    struct db *(*pick_db)(void *arg);
    void *arg;
    bool inflight;
    struct srcip_entry *v;
    size_t n, cap;
};

static void
entries_clear(struct srcip *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->v[i].domain);
        free(s->v[i].ip);
    }
    s->n = 0;
}

static void
entry_put(struct srcip *s, const char *domain, const char *ip, long long until_us)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i].domain, domain) == 0 && strcmp(s->v[i].ip, ip) == 0) {
            if (until_us > s->v[i].until_us)
                s->v[i].until_us = until_us;
            return;
        }
    if (s->n == SRCIP_MAX)
        return;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = (struct srcip_entry){xstrdup(domain), xstrdup(ip), until_us};
}

static void
on_rows(const PGresult *res, void *arg)
{
    struct srcip *s = arg;
    s->inflight = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (res)
            log_warn("event=statement-failed stmt=source_ips_disabled error=\"%s\"",
                     PQresultErrorMessage(res));
        return; /* keep the entries we have */
    }
    entries_clear(s);
    int rows = PQntuples(res);
    for (int i = 0; i < rows; i++)
        entry_put(s, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
                  strtoll(PQgetvalue(res, i, 2), NULL, 10));
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct srcip *s = arg;
    if (s->inflight)
        return;
    struct db *db = s->pick_db(s->arg);
    if (!db)
        return;
    s->inflight = true;
    if (db_exec(db, "source_ips_disabled", 0, NULL, NULL, NULL, 0, on_rows, s) < 0)
        s->inflight = false;
}

struct srcip *
srcip_new(struct event_base *base, unsigned refresh_ms, struct db *(*pick_db)(void *arg), void *arg)
{
    struct srcip *s = xcalloc(1, sizeof *s);
    s->pick_db = pick_db;
    s->arg = arg;
    s->timer = event_new(base, -1, EV_PERSIST, on_timer, s);
    struct timeval tv = {refresh_ms / 1000, (refresh_ms % 1000) * 1000};
    evtimer_add(s->timer, &tv);
    return s;
}

void
srcip_free(struct srcip *s)
{
    if (!s)
        return;
    event_free(s->timer);
    entries_clear(s);
    free(s->v);
    free(s);
}

void
srcip_prepare(struct db *db)
{
    db_prepare(db, "source_ips_disabled",
               "SELECT domain, source_ip, (extract(epoch FROM until) * 1000000)::bigint "
               "FROM mta.source_ips_disabled()",
               0);
    db_prepare(db, "source_ip_disable", "SELECT mta.source_ip_disable($1, $2, $3::int, $4)", 4);
}

bool
srcip_disabled(const struct srcip *s, const char *domain, const char *ip, long long now_us)
{
    if (!s || !ip)
        return false;
    for (size_t i = 0; i < s->n; i++)
        if (s->v[i].until_us > now_us && strcmp(s->v[i].ip, ip) == 0 &&
            strcmp(s->v[i].domain, domain) == 0)
            return true;
    return false;
}

static void
ignore_result(const PGresult *res, void *arg)
{
    (void)arg;
    if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("event=statement-failed stmt=source_ip_disable error=\"%s\"",
                 PQresultErrorMessage(res));
}

void
srcip_disable(struct srcip *s, struct db *db, const char *domain, const char *ip,
              long long until_us, long long ms, const char *reason)
{
    entry_put(s, domain, ip, until_us);
    if (!db)
        return;
    char v[32];
    snprintf(v, sizeof v, "%lld", ms > 604800000 ? 604800000LL : ms < 1 ? 1LL : ms);
    const char *values[4] = {domain, ip, v, reason};
    db_exec(db, "source_ip_disable", 4, values, NULL, NULL, 0, ignore_result, NULL);
}
