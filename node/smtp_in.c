/* smtp_in: one smtp-in process (see smtp_in.h).
 *
 * Ownership: the process owns its event loop, its configuration (replaced
 * on a successful SIGHUP reload), the SMTP server (smtp_server.c, with its
 * listeners, sessions and the batcher's database connection), the HTTP
 * API and dashboard (http.c, on listen.http, shared by every smtp-in
 * process through SO_REUSEPORT), the one-click unsubscribe listener
 * (unsub_http.c, on listen.unsubscribe, shared the same way), and a
 * second small connection for its row in mta.node. A stop (SIGTERM,
 * SIGINT, or the root going away) closes the listeners at once, lets
 * sessions that are receiving or storing a message finish, and exits when
 * none is left or shutdown-timeout has passed. */
#include "smtp_in.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "db.h"
#include "dkim.h"
#include "http.h"
#include "http_inject.h"
#include "log.h"
#include "smtp_server.h"
#include "registry.h"
#include "unsub_http.h"
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
    struct smtp_server *inbound; /* listen.inbound: bounces and reports; NULL: none */
    struct http *http;
    struct unsub_http *unsub; /* listen.unsubscribe */
    struct event *signals[3];
    struct event *stop_poll;
    uint64_t stop_deadline;
    bool stopping;
    struct db *db;             /* for the mta.node row */
    struct registry *registry; /* the mta.node row */
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

/* ---- the row in mta.node (registry.c) ---- */

static struct db *
node_db_pick(void *arg)
{
    struct smtp_in *in = arg;
    return in->db && db_ready(in->db) ? in->db : NULL;
}

static void
node_db_ready(struct db *db, void *arg)
{
    struct smtp_in *in = arg;
    if (!in->stopping)
        registry_db_ready(in->registry, db);
}

static void
node_db_start(struct smtp_in *in)
{
    if (!in->conf->database_url)
        return;
    in->registry = registry_new(in->base, in->conf->node_name, "smtp-in", in->index,
                                SMTP_IN_HEARTBEAT_MS, "smtp-in", node_db_pick, NULL, in);
    in->db = db_new(in->base, in->conf->database_url, "pgmtad-node-smtp-in");
    registry_prepare(in->db);
    db_set_ready_cb(in->db, node_db_ready, in);
    db_connect(in->db);
}

static void
node_stopped(bool ok, void *arg)
{
    (void)ok; /* the registry logged it */
    struct smtp_in *in = arg;
    event_base_loopbreak(in->base);
}

/* Marks the row stopped, then leaves the loop; a database that does not
 * answer within SMTP_IN_DB_STOP_WAIT_MS is not waited for. */
static void
exit_loop(struct smtp_in *in)
{
    if (!in->registry) {
        event_base_loopbreak(in->base);
        return;
    }
    registry_stop(in->registry, SMTP_IN_DB_STOP_WAIT_MS, node_stopped, in);
}

/* ---- stop and reload ---- */

static void
on_stop_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_in *in = arg;
    size_t left = smtp_server_sessions(in->smtp) + smtp_server_sessions(in->inbound);
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
    smtp_server_stop_accepting(in->inbound);
    http_stop(in->http);
    unsub_http_stop(in->unsub);
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
    if (!in->inbound && fresh->nlisten_inbound > 0) {
        in->inbound = smtp_server_new_inbound(in->base, fresh, err, sizeof err);
        if (!in->inbound)
            log_error("smtp-in index=%u event=inbound-listener-failed error=\"%s\"", in->index,
                      err);
    } else if (smtp_server_reload(in->inbound, fresh, err, sizeof err) != 0) {
        log_error("smtp-in index=%u event=inbound-listener-reload-failed error=\"%s\"", in->index,
                  err);
    }
    if (in->http)
        http_apply(in->http, fresh);
    if (in->unsub)
        unsub_http_apply(in->unsub, fresh);
    http_inject_configure(fresh);
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
    if (in.smtp && conf->nlisten_inbound > 0) {
        in.inbound = smtp_server_new_inbound(in.base, conf, err, sizeof err);
        if (!in.inbound) {
            smtp_server_free(in.smtp);
            in.smtp = NULL;
        }
    }
    int status = 0;
    if (!in.smtp) {
        /* e.g. the address is taken: exit, the root retries with backoff */
        log_error("smtp-in index=%u event=smtp-listener-failed error=\"%s\"", index, err);
        status = 1;
    } else {
        in.http = http_new(in.base, reload_via_root, &in);
        http_apply(in.http, conf);
        in.unsub = unsub_http_new(in.base);
        unsub_http_apply(in.unsub, conf);
        http_inject_configure(conf);
        node_db_start(&in);
        log_info("smtp-in index=%u event=started pid=%d", index, (int)getpid());
        event_base_dispatch(in.base);
    }

    smtp_server_free(in.inbound);
    smtp_server_free(in.smtp);
    http_free(in.http);
    unsub_http_free(in.unsub);
    registry_free(in.registry);
    db_free(in.db);
    event_free(in.stop_poll);
    for (size_t i = 0; i < 3; i++)
        event_free(in.signals[i]);
    util_defer_base_free(in.base);
    event_base_free(in.base);
    conf_free(in.conf);
    return status;
}
