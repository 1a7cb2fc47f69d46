/* worker: one pipe process - the tick, signals, reload and shutdown.
 *
 * Scheduling by destination queue: a timer asks the database which queues
 * of this pipe have ready work; for each, admission (admission.c) says
 * whether a session may start now, and sessions (session.c) claim, deliver
 * and finish the queue's recipients. No transaction is open while SMTP or
 * DNS I/O is in progress. See README, Delivery.
 *
 * The worker owns its event loop, database connections, resolver, sched,
 * DKIM keys, the queue table (admission), the node registry entry
 * (registry.c) and the session_env that the sessions share; it keeps every
 * configuration a running session may still point into until exit. */
#include "worker.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admission.h"
#include "db.h"
#include "destination.h"
#include "dkim.h"
#include "verp.h"
#include "dns.h"
#include "log.h"
#include "mta_sts.h"
#include "queue.h"
#include "priority.h"
#include "registry.h"
#include "sched.h"
#include "session.h"
#include "srcip.h"
#include "session_claims.h"
#include "session_finish.h"
#include "smtp_client.h"
#include "tlsrpt.h"
#include "unsub.h"
#include "util.h"

/* Delivery sessions per process at most. */
#define WORKER_MAX_SESSIONS 512
/* Sessions started per queue per scheduler tick (ramp-up). */
#define WORKER_START_PER_TICK 4
#define WORKER_HEARTBEAT_MS 5000
/* How long the exit waits for node_stop to be recorded. */
#define WORKER_STOP_WAIT_MS 3000
/* Queues asked for per poll. */
#define WORKER_READY_LIMIT 100
/* Housekeeping (purging finished messages and empty queues, accounting
 * partitions, rate buckets) runs in one process per node: index 0 of the
 * default pipe. Concurrent runs on several nodes are safe. */
#define WORKER_HOUSEKEEPING_MS 30000
/* How long a finish waits for others to share its statement (see
 * session_finish.h): short beside an SMTP transaction, long enough for the
 * sessions of one poll to meet. */
#define WORKER_FINISH_DELAY_MS 3

struct worker {
    struct event_base *base;
    struct conf *conf;
    struct conf **old_confs;
    size_t nold_confs;
    char *pipe;
    unsigned index;
    char *node_label; /* "node-name/pipe/index" for accounting */
    struct db **dbs;
    size_t ndbs;
    struct registry *registry;
    struct session_env env;
    struct admission *queues;
    struct tlsrpt *tlsrpt; /* the housekeeping process only */
    long long last_prune;  /* monotonic ms */
    struct event *ev_tick;
    struct event *ev_housekeeping;
    struct event *ev_deadline;
    struct event *ev_signals[3];
    uint64_t poll_ms;
    bool tick_inflight;
    bool stopping;
    bool exiting;
    int exit_status;
};

static void worker_schedule_tick(struct worker *w, uint64_t ms);

static void
worker_ignore_result(const PGresult *res, void *arg)
{
    (void)arg;
    if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("event=statement-failed error=\"%s\"", PQresultErrorMessage(res));
}

/* ---- the tick: which queues have work, which may start a session ---- */

/* A queue offered that this process cannot serve now, for a reason of the
 * queue itself (not of the process): postponed in the database, so that the
 * rotation of ready queues moves on (mta.queue_postpone). */
static void
worker_postpone(struct worker *w, const struct admission_queue *q, unsigned why, long long now)
{
    long long ms = 0;
    if (why & ADMISSION_LIMIT_THROTTLED)
        ms = q->throttle_until - now;
    else if (why & ADMISSION_LIMIT_HOLD)
        ms = q->hold_until - now;
    else if (why & (ADMISSION_LIMIT_CONNS | ADMISSION_LIMIT_PROBING))
        ms = SESSION_SLOT_RETRY_MS;
    struct db *db = ms > 0 ? session_env_db(&w->env) : NULL;
    if (db)
        queue_postpone(db, w->pipe, q->domain, q->vmta, ms);
}

static void
worker_admit(struct worker *w, struct admission_queue *q, const struct conf_domain *dom,
             long long now)
{
    for (int k = 0; k < WORKER_START_PER_TICK; k++) {
        /* More than one session per tick, or one beside a claim in flight,
         * only for a queue whose last claim came back full. */
        if ((k > 0 || q->claiming) && !q->more_work)
            return;
        struct admission_process p = {
            .sessions = w->env.nsessions,
            .max_sessions = WORKER_MAX_SESSIONS,
            .content_bytes = w->env.content_bytes,
            .content_budget = SESSION_CONTENT_BUDGET,
            .slots_db_ready = sched_ready(w->env.sched),
            .stopping = w->stopping,
        };
        unsigned why = admission_check(q, dom, &p, now);
        if (why) {
            if (log_threshold >= LOG_TRACE) {
                char reasons[128];
                admission_reasons(why, reasons, sizeof reasons);
                log_trace("queue=%s event=not-admitted reasons=%s", q->name, reasons);
            }
            if (k == 0)
                worker_postpone(w, q, why, now);
            return;
        }
        session_start(&w->env, q, dom);
    }
}

static void
worker_on_ready_queues(const PGresult *res, void *arg)
{
    struct worker *w = arg;
    w->tick_inflight = false;
    if (w->stopping)
        return;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (res)
            log_warn("pipe=%s event=ready-queues-failed error=\"%s\"", w->pipe,
                     PQresultErrorMessage(res));
        worker_schedule_tick(w, w->conf->poll_interval_ms);
        return;
    }
    int n = PQntuples(res);
    long long now = admission_now_ms();
    unsigned started0 = w->env.nsessions;
    for (int i = 0; i < n; i++) {
        const char *domain = PQgetvalue(res, i, 0);
        const char *vmta = PQgetvalue(res, i, 1);
        struct admission_queue *q = admission_queue(w->queues, domain, vmta);
        q->backoff = PQgetvalue(res, i, 2)[0] == 't';
        long prio = PQgetisnull(res, i, 3) ? 0 : strtol(PQgetvalue(res, i, 3), NULL, 10);
        q->ready_prio = prio < 0 ? 0 : prio > 100 ? 100 : (unsigned)prio;
        q->last_active = now;
        worker_admit(w, q, conf_domain_lookup(w->conf, domain), now);
    }
    if (now - w->last_prune >= ADMISSION_IDLE_MS) {
        w->last_prune = now;
        size_t gone = admission_prune(w->queues, now);
        if (gone)
            log_debug("pipe=%s event=queues-pruned removed=%zu left=%zu", w->pipe, gone,
                      admission_count(w->queues));
    }
    log_debug("pipe=%s event=poll offered=%d sessions=%u->%u content=%zu next_ms=%u", w->pipe, n,
              started0, w->env.nsessions, w->env.content_bytes,
              (unsigned)(n > 0 ? SESSION_FAST_POLL_MS : w->poll_ms * 2));
    if (n > 0) {
        w->poll_ms = SESSION_FAST_POLL_MS;
    } else {
        w->poll_ms = w->poll_ms * 2;
        if (w->poll_ms > w->conf->poll_interval_ms)
            w->poll_ms = w->conf->poll_interval_ms;
    }
    worker_schedule_tick(w, w->poll_ms);
}

/* How many queues to ask for: as many as the process can start sessions
 * for now. A queue offered and refused for a reason of the process (its
 * sessions, its content budget) is not postponed and loses its turn in the
 * rotation of ready queues until the next round: with a long tail of
 * destinations, that was most of the end of a drain. */
static unsigned
worker_room(const struct worker *w)
{
    const struct session_env *e = &w->env;
    unsigned room = WORKER_READY_LIMIT;
    unsigned sessions = e->nsessions < WORKER_MAX_SESSIONS ? WORKER_MAX_SESSIONS - e->nsessions : 0;
    if (sessions < room)
        room = sessions;
    if (e->content_bytes > 0) {
        size_t left = e->content_bytes < SESSION_CONTENT_BUDGET
                          ? SESSION_CONTENT_BUDGET - e->content_bytes
                          : 0;
        if (left / SESSION_CLAIM_MIN_BYTES < room)
            room = (unsigned)(left / SESSION_CLAIM_MIN_BYTES);
    }
    return room;
}

static void
worker_on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    if (w->stopping || w->tick_inflight)
        return;
    if (w->env.node_id == 0) {
        worker_schedule_tick(w, 200);
        return;
    }
    unsigned room = worker_room(w);
    if (room == 0) {
        worker_schedule_tick(w, SESSION_FAST_POLL_MS);
        return;
    }
    char lim[16];
    snprintf(lim, sizeof lim, "%u", room);
    const char *values[2] = {w->pipe, lim};
    struct db *db = session_env_db(&w->env);
    /* In flight before the call: the answer may come before it returns. */
    w->tick_inflight = true;
    if (!db ||
        db_exec(db, "ready_queues", 2, values, NULL, NULL, 0, worker_on_ready_queues, w) < 0) {
        w->tick_inflight = false;
        worker_schedule_tick(w, 500);
    }
}

static void
worker_schedule_tick(struct worker *w, uint64_t ms)
{
    if (w->stopping)
        return;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(w->ev_tick, &tv);
}

/* ---- registry, slots, housekeeping ---- */

static struct db *
worker_pick_db(void *arg)
{
    struct worker *w = arg;
    return session_env_db(&w->env);
}

static void
worker_on_registered(long long node_id, void *arg)
{
    struct worker *w = arg;
    if (node_id == 0)
        return; /* retried on the next ready callback */
    w->env.node_id = node_id;
    sched_set_node_id(w->env.sched, node_id);
    worker_schedule_tick(w, 0);
}

static void
worker_on_db_ready(struct db *db, void *arg)
{
    struct worker *w = arg;
    if (!w->stopping)
        registry_db_ready(w->registry, db);
}

static void
worker_on_slots_lost(void *arg)
{
    struct worker *w = arg;
    /* PostgreSQL released our slots with the connection: open connections
     * finish their batch and quit; new ones wait for the slot connection. */
    log_warn("pipe=%s index=%u event=slots-lost sessions=%u", w->pipe, w->index, w->env.nsessions);
    session_slots_lost(&w->env);
}

static void
worker_on_housekeeping(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    static const char *const stmts[] = {
        "purge_messages", "purge_queues",         "acct_partitions", "purge_rate_buckets",
        "backoff_expire", "inject_count_compact", "warmup_advance"};
    struct db *db = session_env_db(&w->env);
    if (!db || w->env.node_id == 0)
        return;
    for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
        db_exec(db, stmts[i], 0, NULL, NULL, NULL, 0, worker_ignore_result, NULL);
}

/* ---- shutdown and reload ---- */

static void
worker_on_stopped(bool ok, void *arg)
{
    (void)ok;
    struct worker *w = arg;
    event_base_loopexit(w->base, NULL);
}

static void
worker_exit_now(struct worker *w)
{
    if (w->exiting)
        return;
    w->exiting = true;
    registry_stop(w->registry, WORKER_STOP_WAIT_MS, worker_on_stopped, w);
}

static void
worker_on_session_freed(void *arg)
{
    struct worker *w = arg;
    if (w->stopping && w->env.nsessions == 0)
        worker_exit_now(w);
}

static void
worker_on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    log_warn("pipe=%s index=%u event=shutdown-deadline sessions=%u", w->pipe, w->index,
             w->env.nsessions);
    /* In-flight recipients are released by node_stop (their lease is
     * cleared), so another node delivers them; a delivery that had already
     * reached the receiver may be duplicated, never lost. */
    session_end_all(&w->env);
    worker_exit_now(w);
}

static void
worker_stop(struct worker *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    w->env.stopping = true;
    evtimer_del(w->ev_tick);
    log_info("pipe=%s index=%u event=stopping sessions=%u", w->pipe, w->index, w->env.nsessions);
    struct timeval tv = {(time_t)(w->conf->shutdown_timeout_ms / 1000),
                         (suseconds_t)((w->conf->shutdown_timeout_ms % 1000) * 1000)};
    evtimer_add(w->ev_deadline, &tv);
    /* Sessions finish their batch and stop. */
    worker_on_session_freed(w);
}

static void
worker_reload(struct worker *w)
{
    char err[1024];
    struct conf *c = conf_load(w->conf->path, err, sizeof err);
    if (!c) {
        log_error("pipe=%s event=reload-failed error=\"%s\" keeping=old", w->pipe, err);
        return;
    }
    struct dkim *keys = dkim_new(c, err, sizeof err);
    if (!keys) {
        log_error("pipe=%s event=reload-failed error=\"%s\" keeping=old", w->pipe, err);
        conf_free(c);
        return;
    }
    struct unsub *unsub = unsub_new(c, err, sizeof err);
    if (!unsub) {
        log_error("pipe=%s event=reload-failed error=\"%s\" keeping=old", w->pipe, err);
        dkim_free(keys);
        conf_free(c);
        return;
    }
    dkim_free(w->env.dkim);
    w->env.dkim = keys;
    unsub_free(w->env.unsub);
    w->env.unsub = unsub;
    /* read only while a claim is decoded: freeing the old rules is safe */
    verp_free(w->env.verp);
    w->env.verp = verp_new(c);
    /* Sessions keep pointers into the old configuration: keep it until
     * exit (reloads are rare). */
    w->old_confs = xrealloc(w->old_confs, (w->nold_confs + 1) * sizeof *w->old_confs);
    w->old_confs[w->nold_confs++] = w->conf;
    w->conf = c;
    w->env.conf = c;
    log_info("pipe=%s event=reloaded", w->pipe);
}

static void
worker_on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct worker *w = arg;
    if (sig == SIGHUP)
        worker_reload(w);
    else
        worker_stop(w);
}

/* ---- statements ---- */

static void
worker_prepare(struct db *db)
{
    registry_prepare(db);
    queue_prepare(db);
    mta_sts_prepare(db);
    srcip_prepare(db);
    priority_prepare(db);
    tlsrpt_prepare(db);
    db_prepare(db, "ready_queues",
               "SELECT domain, vmta, backoff, priority FROM mta.ready_queues($1, $2::int)", 2);
    db_prepare(db, "purge_messages", "SELECT mta.purge_messages(10000)", 0);
    db_prepare(db, "purge_queues", "SELECT mta.purge_queues()", 0);
    db_prepare(db, "acct_partitions", "SELECT mta.acct_ensure_partitions(7)", 0);
    db_prepare(db, "purge_rate_buckets", "SELECT mta.purge_rate_buckets()", 0);
    db_prepare(db, "backoff_expire", "SELECT mta.backoff_expire()", 0);
    db_prepare(db, "inject_count_compact", "SELECT mta.inject_count_compact()", 0);
}

/* libevent's own messages, as our log lines. A forked child's new event
 * base takes over the signals from the root's base (whose descriptors the
 * child closed); libevent warns about that once, which is expected here. */
static void
worker_libevent_log(int severity, const char *msg)
{
    if (strncmp(msg, "Added a signal to event base", 28) == 0) {
        log_debug("libevent: %s", msg);
        return;
    }
    log_msg(severity >= EVENT_LOG_ERR    ? LOG_ERROR
            : severity >= EVENT_LOG_WARN ? LOG_WARN
            : severity >= EVENT_LOG_MSG  ? LOG_INFO
                                         : LOG_DEBUG,
            "libevent: %s", msg);
}

/* Strict receivers answer every RCPT with 504 to a HELO that is not a fully
 * qualified domain name, and the mail bounces: say so at start. */
static void
worker_check_helo(const struct conf *c, const char *pipe)
{
    if (!destination_helo_is_fqdn(c->node_name))
        log_warn("pipe=%s event=helo-not-fqdn helo=\"%s\" hint=\"set node-name, or helo per "
                 "virtual MTA, to a fully qualified domain name\"",
                 pipe, c->node_name);
    for (size_t i = 0; i < c->nvmtas; i++)
        if (c->vmtas[i].helo && !destination_helo_is_fqdn(c->vmtas[i].helo))
            log_warn("pipe=%s event=helo-not-fqdn vmta=%s helo=\"%s\"", pipe, c->vmtas[i].name,
                     c->vmtas[i].helo);
}

int
worker_run(struct conf *conf, const char *pipe_name, unsigned index)
{
    event_set_log_callback(worker_libevent_log);
    struct worker *w = xcalloc(1, sizeof *w);
    srandom((unsigned)(getpid() ^ time(NULL)));
    signal(SIGPIPE, SIG_IGN);
    w->base = event_base_new();
    w->conf = conf;
    w->pipe = xstrdup(pipe_name);
    w->index = index;
    w->node_label = xasprintf("%s/%s/%u", conf->node_name, pipe_name, index);
    w->poll_ms = SESSION_FAST_POLL_MS;
    w->queues = admission_new();
    worker_check_helo(conf, pipe_name);
    struct session_env *e = &w->env;
    e->avg_row_bytes = SESSION_ROW_BYTES_START;
    e->avg_claim_rows = SESSION_BATCH_MAX;
    e->base = w->base;
    e->finish = session_finish_new(w->base, WORKER_FINISH_DELAY_MS, worker_pick_db, w);
    e->claims = session_claims_new(w->base, worker_pick_db, w);
    e->srcip = srcip_new(w->base, 1000, worker_pick_db, w);
    e->conf = conf;
    e->pipe = w->pipe;
    e->node_label = w->node_label;
    e->on_freed = worker_on_session_freed;
    e->arg = w;
    char err[512];
    e->dkim = dkim_new(conf, err, sizeof err);
    if (!e->dkim) {
        log_error("pipe=%s event=dkim-init-failed error=\"%s\"", pipe_name, err);
        return 2;
    }
    e->unsub = unsub_new(conf, err, sizeof err);
    if (!e->unsub) {
        log_error("pipe=%s event=unsubscribe-init-failed error=\"%s\"", pipe_name, err);
        return 2;
    }
    e->verp = verp_new(conf);
    e->dns = dns_new(w->base, (const char *const *)conf->dns_servers, conf->ndns_servers,
                     conf->dns_timeout_ms, err, sizeof err);
    if (!e->dns) {
        log_error("pipe=%s event=dns-init-failed error=\"%s\"", pipe_name, err);
        return 1;
    }
    dns_set_dnssec(e->dns, conf->dns_dnssec);
    e->sts = mta_sts_new(w->base, e->dns, worker_pick_db, w, w->node_label,
                         conf->tls_ca_file ? conf->tls_ca_file : getenv("PGMTA_TLS_CA_FILE"));
    e->sched = sched_new(w->base, conf->database_url, w->node_label);
    sched_set_lost_cb(e->sched, worker_on_slots_lost, w);
    char *label = xasprintf("pipe=%s", pipe_name);
    w->registry = registry_new(w->base, conf->node_name, pipe_name, index, WORKER_HEARTBEAT_MS,
                               label, worker_pick_db, worker_on_registered, w);
    free(label);
    w->ndbs = conf->database_connections ? conf->database_connections : 1;
    w->dbs = xcalloc(w->ndbs, sizeof *w->dbs);
    e->dbs = w->dbs;
    e->ndbs = w->ndbs;
    for (size_t i = 0; i < w->ndbs; i++) {
        char *name = xasprintf("pgmtad-%s-%u-%zu", pipe_name, index, i);
        w->dbs[i] = db_new(w->base, conf->database_url, name);
        free(name);
        worker_prepare(w->dbs[i]);
        db_set_ready_cb(w->dbs[i], worker_on_db_ready, w);
        db_connect(w->dbs[i]);
    }
    w->ev_tick = evtimer_new(w->base, worker_on_tick, w);
    w->ev_deadline = evtimer_new(w->base, worker_on_deadline, w);
    w->ev_housekeeping = event_new(w->base, -1, EV_PERSIST, worker_on_housekeeping, w);
    if (index == 0 && conf->default_pipe && strcmp(pipe_name, conf->default_pipe) == 0) {
        /* PGMTA_HOUSEKEEPING_MS overrides the interval (tests, tuning). */
        const char *env = getenv("PGMTA_HOUSEKEEPING_MS");
        long ms = env ? strtol(env, NULL, 10) : WORKER_HOUSEKEEPING_MS;
        if (ms <= 0)
            ms = WORKER_HOUSEKEEPING_MS;
        struct timeval hk = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(w->ev_housekeeping, &hk);
        w->tlsrpt = tlsrpt_new(w->base, e->dns, worker_pick_db, w, conf, w->node_label);
    }
    int sigs[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        w->ev_signals[i] = evsignal_new(w->base, sigs[i], worker_on_signal, w);
        evsignal_add(w->ev_signals[i], NULL);
    }
    log_info("pipe=%s index=%u event=started", pipe_name, index);

    event_base_dispatch(w->base);

    w->exiting = true;
    int status = w->exit_status;
    log_info("pipe=%s index=%u event=exit status=%d", w->pipe, w->index, status);
    e->on_freed = NULL;
    session_end_all(e);
    /* Run what the last loop turn left (deferred frees included). */
    event_base_loop(w->base, EVLOOP_NONBLOCK);
    util_defer_run(w->base);
    session_finish_free(e->finish);
    e->finish = NULL;
    session_claims_free(e->claims);
    e->claims = NULL;
    util_defer_run(w->base);
    registry_free(w->registry);
    tlsrpt_stop(w->tlsrpt);
    sched_free(e->sched);
    dkim_free(e->dkim);
    unsub_free(e->unsub);
    verp_free(e->verp);
    for (size_t i = 0; i < w->ndbs; i++)
        db_free(w->dbs[i]);
    free(w->dbs);
    srcip_free(e->srcip);
    mta_sts_free(e->sts);
    e->sts = NULL;
    tlsrpt_free(w->tlsrpt);
    dns_free(e->dns);
    for (int i = 0; i < 3; i++)
        event_free(w->ev_signals[i]);
    event_free(w->ev_tick);
    event_free(w->ev_deadline);
    event_free(w->ev_housekeeping);
    admission_free(w->queues);
    util_defer_base_free(w->base);
    event_base_free(w->base);
    for (size_t i = 0; i < w->nold_confs; i++)
        conf_free(w->old_confs[i]);
    free(w->old_confs);
    conf_free(w->conf);
    free(w->pipe);
    free(w->node_label);
    free(w);
    smtp_client_tls_cleanup();
    return status;
}
