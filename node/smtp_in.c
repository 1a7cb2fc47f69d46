/* smtp_in: one smtp-in process (see smtp_in.h).
 *
 * Ownership: the process owns its event loop, its configuration (replaced
 * on a successful SIGHUP reload), the SMTP server (smtp_server.c, with its
 * listeners, sessions and the batcher's database connection), the HTTP
 * API and dashboard (http.c, on listen.http, shared by every smtp-in
 * process through SO_REUSEPORT), and a second small connection for its
 * row in mta.node. A stop (SIGTERM, SIGINT, or the root going away) closes
 * the listeners at once, lets sessions that are receiving or storing a
 * message finish, and exits when none is left or shutdown-timeout has
 * passed. */
#include "smtp_in.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include "db.h"
#include "dkim.h"
#include "http.h"
#include "log.h"
#include "smtp_server.h"
#include "util.h"

#define SMTP_IN_HEARTBEAT_MS 5000
#define SMTP_IN_STOP_POLL_MS 100
#define SMTP_IN_DB_STOP_WAIT_MS 3000
#define SMTP_IN_ERR_LEN 1024

struct smtp_in {
    struct event_base *base;
    struct conf *conf;
    unsigned index;
    struct smtp_server *smtp;
    struct http *http;
    struct event *signals[3];
    struct event *heartbeat;
    struct event *stop_poll;
    uint64_t stop_deadline;
    bool stopping;
    struct db *db; /* mta.node row */
    long long node_id;
};

struct conf *
smtp_in_conf_load(const char *path, char *err, size_t errlen)
{
    struct conf *c = conf_load(path, err, errlen);
    if (!c)
        return NULL;
    struct dkim *keys = dkim_new(c, err, errlen);
    if (!keys) {
        conf_free(c);
        return NULL;
    }
    dkim_free(keys);
    return c;
}

/* ---- the row in mta.node ---- */

static const char *
first_line(const char *msg, char *out, size_t outlen)
{
    size_t n = msg ? strcspn(msg, "\r\n") : 0;
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, msg ? msg : "", n);
    out[n] = '\0';
    return out;
}

static void
node_registered(const PGresult *res, void *arg)
{
    struct smtp_in *in = arg;
    char msg[256];
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        in->node_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        log_info("smtp-in index=%u event=registered id=%lld", in->index, in->node_id);
    } else {
        log_warn("smtp-in index=%u event=register-failed error=\"%s\"", in->index,
                 res ? first_line(PQresultErrorMessage(res), msg, sizeof msg)
                     : "no database connection");
    }
}

static void
node_db_ready(struct db *db, void *arg)
{
    struct smtp_in *in = arg;
    if (in->node_id != 0 || in->stopping)
        return;
    char pid[16], idx[16], host[256];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    snprintf(idx, sizeof idx, "%u", in->index);
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    const char *values[5] = {in->conf->node_name, "smtp-in", idx, pid, host};
    db_exec(db, "node_register", 5, values, NULL, NULL, 0, node_registered, in);
}

static void
node_heartbeat_done(const PGresult *res, void *arg)
{
    (void)arg;
    char msg[256];
    if (res && PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("smtp-in event=heartbeat-failed error=\"%s\"",
                 first_line(PQresultErrorMessage(res), msg, sizeof msg));
}

static void
on_heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_in *in = arg;
    if (in->node_id == 0 || !db_ready(in->db))
        return;
    char id[32];
    snprintf(id, sizeof id, "%lld", in->node_id);
    const char *values[1] = {id};
    db_exec(in->db, "node_heartbeat", 1, values, NULL, NULL, 0, node_heartbeat_done, in);
}

static void
node_db_start(struct smtp_in *in)
{
    if (!in->conf->database_url)
        return;
    in->db = db_new(in->base, in->conf->database_url, "pgmtad-node-smtp-in");
    db_prepare(in->db, "node_register", "SELECT mta.node_register($1, $2, $3::int, $4::int, $5)",
               5);
    db_prepare(in->db, "node_heartbeat", "SELECT mta.node_heartbeat($1::bigint)", 1);
    db_prepare(in->db, "node_stop", "SELECT mta.node_stop($1::bigint)", 1);
    db_set_ready_cb(in->db, node_db_ready, in);
    db_connect(in->db);
    in->heartbeat = event_new(in->base, -1, EV_PERSIST, on_heartbeat, in);
    struct timeval tv = {SMTP_IN_HEARTBEAT_MS / 1000, (SMTP_IN_HEARTBEAT_MS % 1000) * 1000};
    evtimer_add(in->heartbeat, &tv);
}

static void
node_stopped(const PGresult *res, void *arg)
{
    struct smtp_in *in = arg;
    char msg[256];
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
        log_warn("smtp-in event=stop-unrecorded error=\"%s\"",
                 res ? first_line(PQresultErrorMessage(res), msg, sizeof msg)
                     : "no database connection");
    event_base_loopbreak(in->base);
}

/* Marks the row stopped, then leaves the loop; a database that does not
 * answer within SMTP_IN_DB_STOP_WAIT_MS is not waited for. */
static void
exit_loop(struct smtp_in *in)
{
    if (in->heartbeat)
        evtimer_del(in->heartbeat);
    char id[32];
    snprintf(id, sizeof id, "%lld", in->node_id);
    const char *values[1] = {id};
    if (in->node_id == 0 || !in->db || !db_ready(in->db) ||
        db_exec(in->db, "node_stop", 1, values, NULL, NULL, 0, node_stopped, in) < 0) {
        event_base_loopbreak(in->base);
        return;
    }
    struct timeval tv = {SMTP_IN_DB_STOP_WAIT_MS / 1000, (SMTP_IN_DB_STOP_WAIT_MS % 1000) * 1000};
    event_base_loopexit(in->base, &tv);
}

/* ---- stop and reload ---- */

static void
on_stop_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_in *in = arg;
    size_t left = smtp_server_sessions(in->smtp);
    if (left == 0 || util_now_ms() >= in->stop_deadline) {
        log_info("smtp-in index=%u event=stopped sessions-left=%zu", in->index, left);
        evtimer_del(in->stop_poll);
        exit_loop(in);
    }
}

static void
smtp_in_stop(struct smtp_in *in, const char *why)
{
    if (in->stopping)
        return;
    in->stopping = true;
    log_info("smtp-in index=%u event=stopping signal=%s sessions=%zu", in->index, why,
             smtp_server_sessions(in->smtp));
    smtp_server_stop_accepting(in->smtp);
    http_stop(in->http);
    in->stop_deadline = util_now_ms() + in->conf->shutdown_timeout_ms;
    struct timeval tv = {0, SMTP_IN_STOP_POLL_MS * 1000};
    evtimer_add(in->stop_poll, &tv);
}

static void
smtp_in_reload(struct smtp_in *in)
{
    char err[SMTP_IN_ERR_LEN] = "";
    struct conf *fresh = smtp_in_conf_load(in->conf->path, err, sizeof err);
    if (!fresh) {
        log_error("smtp-in index=%u event=reload-failed keeping=old error=\"%s\"", in->index, err);
        return;
    }
    if (smtp_server_reload(in->smtp, fresh, err, sizeof err) != 0)
        log_error("smtp-in index=%u event=smtp-listener-reload-failed error=\"%s\"", in->index,
                  err);
    if (in->http)
        http_apply(in->http, fresh);
    conf_free(in->conf);
    in->conf = fresh;
    log_info("smtp-in index=%u event=reloaded", in->index);
}

/* POST /api/reload in an smtp-in process: the root owns reloads, so the
 * configuration is only checked here; when it loads, the root gets SIGHUP
 * and forwards it to every child, this one included. */
static int
reload_via_root(void *arg, char *err, size_t errlen)
{
    struct smtp_in *in = arg;
    struct conf *c = smtp_in_conf_load(in->conf->path, err, errlen);
    if (!c)
        return -1;
    conf_free(c);
    if (kill(getppid(), SIGHUP) != 0) {
        snprintf(err, errlen, "cannot signal the root process");
        return -1;
    }
    log_info("smtp-in index=%u event=reload source=http", in->index);
    return 0;
}

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct smtp_in *in = arg;
    if (sig == SIGHUP) {
        if (!in->stopping)
            smtp_in_reload(in);
        return;
    }
    smtp_in_stop(in, sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

int
smtp_in_run(struct conf *conf, const char *name, unsigned index)
{
    (void)name;
    /* Writes to vanished peers must return EPIPE. */
    signal(SIGPIPE, SIG_IGN);
    struct smtp_in in = {.conf = conf, .index = index};
    in.base = event_base_new();
    if (!in.base) {
        log_error("smtp-in index=%u event=event-base-failed", index);
        conf_free(conf);
        return 1;
    }
    static const int sigs[3] = {SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < 3; i++) {
        in.signals[i] = evsignal_new(in.base, sigs[i], on_signal, &in);
        PGMTA_ASSERT(in.signals[i] != NULL && evsignal_add(in.signals[i], NULL) == 0);
    }
    in.stop_poll = event_new(in.base, -1, EV_PERSIST, on_stop_poll, &in);
    PGMTA_ASSERT(in.stop_poll != NULL);

    char err[SMTP_IN_ERR_LEN] = "";
    in.smtp = smtp_server_new(in.base, conf, err, sizeof err);
    int status = 0;
    if (!in.smtp) {
        /* e.g. the address is taken: exit, the root retries with backoff */
        log_error("smtp-in index=%u event=smtp-listener-failed error=\"%s\"", index, err);
        status = 1;
    } else {
        in.http = http_new(in.base, reload_via_root, &in);
        http_apply(in.http, conf);
        node_db_start(&in);
        log_info("smtp-in index=%u event=started pid=%d", index, (int)getpid());
        event_base_dispatch(in.base);
    }

    smtp_server_free(in.smtp);
    http_free(in.http);
    if (in.heartbeat)
        event_free(in.heartbeat);
    db_free(in.db);
    event_free(in.stop_poll);
    for (size_t i = 0; i < 3; i++)
        event_free(in.signals[i]);
    event_base_free(in.base);
    conf_free(in.conf);
    return status;
}
