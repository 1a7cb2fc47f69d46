/* registry: the mta.node row of one process (see registry.h). The registry
 * owns its heartbeat timer and its stop timer; the connections are its
 * owner's. A request whose answer arrives after registry_free is ignored:
 * every pending answer holds a reference (pending count) and the last one
 * frees a registry that was freed meanwhile. */
#include "registry.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "db.h"
#include "log.h"
#include "util.h"

struct registry {
    struct event_base *base;
    char *node_name;
    char *pipe; /* NULL: the root */
    unsigned index;
    char *label;
    registry_pick_cb pick;
    registry_registered_cb registered;
    void *arg;
    long long node_id;
    bool registering;
    bool stopping;
    bool freed;
    unsigned pending; /* requests in flight */
    struct event *ev_heartbeat;
    struct event *ev_stop;
    registry_stopped_cb stopped;
    void *stopped_arg;
};

void
registry_prepare(struct db *db)
{
    db_prepare(db, "node_register", "SELECT mta.node_register($1, $2, $3::int, $4::int, $5)", 5);
    db_prepare(db, "node_heartbeat", "SELECT mta.node_heartbeat($1::bigint)", 1);
    db_prepare(db, "node_stop", "SELECT mta.node_stop($1::bigint)", 1);
}

static void
registry_destroy(struct registry *r)
{
    event_free(r->ev_heartbeat);
    event_free(r->ev_stop);
    free(r->node_name);
    free(r->pipe);
    free(r->label);
    free(r);
}

/* First thing in every answer: false when the registry was freed (and is
 * freed now if this was its last answer). */
static bool
registry_answered(struct registry *r)
{
    r->pending--;
    if (!r->freed)
        return true;
    if (r->pending == 0)
        registry_destroy(r);
    return false;
}

static void
registry_on_heartbeat_done(const PGresult *res, void *arg)
{
    struct registry *r = arg;
    if (!registry_answered(r))
        return;
    if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("%s event=heartbeat-failed error=\"%s\"", r->label, PQresultErrorMessage(res));
}

static void
registry_on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct registry *r = arg;
    if (r->node_id == 0 || r->stopping)
        return;
    struct db *db = r->pick(r->arg);
    if (!db)
        return;
    char node[32];
    snprintf(node, sizeof node, "%lld", r->node_id);
    const char *values[1] = {node};
    r->pending++;
    if (db_exec(db, "node_heartbeat", 1, values, NULL, NULL, 0, registry_on_heartbeat_done, r) < 0)
        r->pending--;
}

struct registry *
registry_new(struct event_base *base, const char *node_name, const char *pipe, unsigned index,
             unsigned heartbeat_ms, const char *label, registry_pick_cb pick,
             registry_registered_cb registered, void *arg)
{
    struct registry *r = xcalloc(1, sizeof *r);
    r->base = base;
    r->node_name = xstrdup(node_name);
    r->pipe = pipe ? xstrdup(pipe) : NULL;
    r->index = index;
    r->label = xstrdup(label);
    r->pick = pick;
    r->registered = registered;
    r->arg = arg;
    r->ev_heartbeat = event_new(base, -1, EV_PERSIST, registry_on_heartbeat, r);
    struct timeval tv = {heartbeat_ms / 1000, (heartbeat_ms % 1000) * 1000};
    evtimer_add(r->ev_heartbeat, &tv);
    r->ev_stop = evtimer_new(base, NULL, NULL);
    return r;
}

void
registry_free(struct registry *r)
{
    if (!r)
        return;
    evtimer_del(r->ev_heartbeat);
    evtimer_del(r->ev_stop);
    if (r->pending) {
        r->freed = true; /* the last answer frees it */
        return;
    }
    registry_destroy(r);
}

long long
registry_node_id(const struct registry *r)
{
    return r->node_id;
}

static void
registry_on_registered(const PGresult *res, void *arg)
{
    struct registry *r = arg;
    if (!registry_answered(r))
        return;
    r->registering = false;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        log_error("%s event=register-failed error=\"%s\"", r->label,
                  res ? PQresultErrorMessage(res) : "no database connection");
        if (r->registered)
            r->registered(0, r->arg);
        return;
    }
    r->node_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    log_info("%s index=%u event=registered node_id=%lld", r->label, r->index, r->node_id);
    if (r->registered)
        r->registered(r->node_id, r->arg);
}

void
registry_db_ready(struct registry *r, struct db *db)
{
    if (r->node_id != 0 || r->stopping || r->registering)
        return;
    char idx[16], pid[16], host[256];
    snprintf(idx, sizeof idx, "%u", r->index);
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    const char *values[5] = {r->node_name, r->pipe, idx, pid, host};
    r->registering = true;
    r->pending++;
    if (db_exec(db, "node_register", 5, values, NULL, NULL, 0, registry_on_registered, r) < 0) {
        r->registering = false;
        r->pending--;
    }
}

static void
registry_stop_done(struct registry *r, bool ok)
{
    evtimer_del(r->ev_stop);
    registry_stopped_cb cb = r->stopped;
    r->stopped = NULL;
    if (cb)
        cb(ok, r->stopped_arg);
}

static void
registry_on_stopped(const PGresult *res, void *arg)
{
    struct registry *r = arg;
    if (!registry_answered(r))
        return;
    bool ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
    if (ok)
        log_info("%s index=%u event=stopped released=%s", r->label, r->index,
                 PQntuples(res) ? PQgetvalue(res, 0, 0) : "0");
    else
        log_warn("%s index=%u event=stop-unrecorded error=\"%s\"", r->label, r->index,
                 res ? PQresultErrorMessage(res) : "no database connection");
    registry_stop_done(r, ok);
}

static void
registry_on_stop_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    registry_stop_done(arg, false);
}

void
registry_stop(struct registry *r, unsigned wait_ms, registry_stopped_cb done, void *arg)
{
    r->stopping = true;
    evtimer_del(r->ev_heartbeat);
    r->stopped = done;
    r->stopped_arg = arg;
    event_assign(r->ev_stop, r->base, -1, 0, registry_on_stop_timer, r);
    struct db *db = r->node_id ? r->pick(r->arg) : NULL;
    char node[32];
    snprintf(node, sizeof node, "%lld", r->node_id);
    const char *values[1] = {node};
    struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
    if (db) {
        r->pending++;
        if (db_exec(db, "node_stop", 1, values, NULL, NULL, 0, registry_on_stopped, r) == 0) {
            evtimer_add(r->ev_stop, &tv);
            return;
        }
        r->pending--;
    }
    /* Nothing to record: DONE from the next loop turn. */
    struct timeval zero = {0, 0};
    evtimer_add(r->ev_stop, &zero);
}
