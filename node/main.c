/* main: startup of pgmtad and its root process.
 *
 * Parses the command line, loads the configuration (--check prints it and
 * exits), then runs the root process's event loop: it owns the signals
 * (SIGCHLD, SIGTERM, SIGINT, SIGHUP as libevent signal events), the current
 * configuration, the supervisor of the pipe and smtp-in processes (pipe.c)
 * and the root's row in mta.node (one non-blocking connection, db.c).
 * Reloads build a new configuration and swap it in only when it loads
 * cleanly. The root parses no mail: the SMTP injection listener runs in
 * the smtp-in processes (smtp_in.c), and so does the HTTP API; webhooks
 * are sent by their own process (webhook.c). */
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "conf.h"
#include "dkim.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "pipe.h"
#include "registry.h"
#include "smtp_in.h"
#include "smtp_in_auth.h"
#include "util.h"
#include "webhook.h"
#include "worker.h"

#define CONF_ERR_LEN 1024
#define ROOT_HEARTBEAT_MS 5000
#define ROOT_DB_STOP_WAIT_MS 3000

struct root {
    struct event_base *base;
    struct conf *conf; /* owned; replaced on a successful reload */
    struct pipe_sup *sup;
    struct event *signals[4];
    bool stopping;
    struct db *db;             /* the root's own connection, NULL without database.url */
    struct registry *registry; /* the root's row in mta.node */
};

static void
usage(FILE *out)
{
    fprintf(out, "usage: pgmtad -c FILE [--check] [--foreground]\n"
                 "       pgmtad -V | --version\n"
                 "       pgmtad -h | --help\n"
                 "\n"
                 "  -c, --config FILE  configuration file (conf.d/ *.conf beside it is read too)\n"
                 "      --check        validate the configuration, print the merged result, exit\n"
                 "      --foreground   stay in the foreground (the default; logs go to stderr)\n"
                 "  -V, --version      print the version\n"
                 "  -h, --help         this text\n");
}

/* The config's log-level applies unless PGMTA_LOG_LEVEL overrides it. */
static void
apply_log_level(const struct conf *conf)
{
    if (getenv("PGMTA_LOG_LEVEL") || !conf->log_level)
        return;
    if (log_level_parse(conf->log_level, &log_threshold) != 0)
        log_warn("root event=log-level-unknown log-level=\"%s\"", conf->log_level);
}

/* ---- the root's row in mta.node ----
 * The root registers itself (pipe NULL), heartbeats and marks itself
 * stopped on exit through the shared registry (registry.c) and one
 * non-blocking connection (db.c) driven by the root's event loop. The
 * database being away is never fatal: db.c reconnects by itself and the
 * root registers as soon as the connection is ready. */

static struct db *
root_db_pick(void *arg)
{
    struct root *r = arg;
    return r->db && db_ready(r->db) ? r->db : NULL;
}

static void
root_db_ready(struct db *db, void *arg)
{
    struct root *r = arg;
    if (!r->stopping)
        registry_db_ready(r->registry, db);
}

static void
root_db_start(struct root *r)
{
    if (!r->conf->database_url)
        return;
    r->registry = registry_new(r->base, r->conf->node_name, NULL, 0, ROOT_HEARTBEAT_MS, "root",
                               root_db_pick, NULL, r);
    r->db = db_new(r->base, r->conf->database_url, "pgmtad-root");
    registry_prepare(r->db);
    db_set_ready_cb(r->db, root_db_ready, r);
    db_connect(r->db);
}

static void
root_db_stopped(bool ok, void *arg)
{
    (void)ok; /* the registry logged it */
    struct root *r = arg;
    event_base_loopbreak(r->base);
}

/* Marks the root stopped in mta.node, then leaves the loop; a database that
 * does not answer within ROOT_DB_STOP_WAIT_MS is not waited for. */
static void
root_db_stop_and_exit(struct root *r)
{
    if (!r->registry) {
        event_base_loopbreak(r->base);
        return;
    }
    registry_stop(r->registry, ROOT_DB_STOP_WAIT_MS, root_db_stopped, r);
}

static void
root_stopped(void *arg)
{
    struct root *r = arg;
    log_info("root event=children-stopped");
    root_db_stop_and_exit(r);
}

static void
root_stop(struct root *r, const char *why)
{
    if (r->stopping) {
        log_info("root event=already-stopping signal=%s", why);
        return;
    }
    r->stopping = true;
    uint64_t kill_after = r->conf->shutdown_timeout_ms + PIPE_KILL_GRACE_MS;
    log_info("root event=stopping signal=%s children=%zu kill_after=%llums", why,
             pipe_sup_running(r->sup), (unsigned long long)kill_after);
    /* The smtp-in processes (SMTP and HTTP) stop accepting when they get
     * their SIGTERM. */
    pipe_sup_stop(r->sup, kill_after, root_stopped, r);
}

/* conf_load plus the DKIM keys (see smtp_in.h). */
static struct conf *
load_config(const char *path, char *err, size_t errlen)
{
    return smtp_in_conf_load(path, err, errlen);
}

/* SIGHUP (also sent by an smtp-in process for POST /api/reload): 0 when the new configuration is in
 * place, else -1 with the reason in err and the running configuration kept. */
static int
root_reload(struct root *r, char *err, size_t errlen)
{
    if (r->stopping) {
        snprintf(err, errlen, "the node is stopping");
        return -1;
    }
    struct conf *fresh = load_config(r->conf->path, err, errlen);
    if (!fresh) {
        log_error("root event=reload-failed keeping=old error=\"%s\"", err);
        return -1;
    }
    struct conf *old = r->conf;
    r->conf = fresh;
    apply_log_level(fresh);
    /* The children reload by themselves on the SIGHUP forwarded to them. */
    pipe_sup_apply(r->sup, fresh, true);
    conf_free(old);
    log_info("root event=reloaded path=%s pipes=%zu", fresh->path, fresh->npipes);
    return 0;
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct root *r = arg;
    switch (sig) {
    case SIGCHLD:
        pipe_sup_reap(r->sup);
        break;
    case SIGTERM:
        root_stop(r, "SIGTERM");
        break;
    case SIGINT:
        root_stop(r, "SIGINT");
        break;
    case SIGHUP:
        log_info("root event=reload signal=SIGHUP");
        char err[CONF_ERR_LEN] = "";
        root_reload(r, err, sizeof err);
        break;
    default:
        break;
    }
}

static int
root_run(struct conf *conf)
{
    log_set_ident("pgmtad[root]");
    apply_log_level(conf);
    /* Writes to vanished peers must return EPIPE, not kill the root. */
    signal(SIGPIPE, SIG_IGN);

    struct root r = {.conf = conf};
    r.base = event_base_new();
    if (!r.base) {
        log_error("root event=event-base-failed");
        conf_free(conf);
        return 1;
    }
    static const int sigs[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP};
    for (size_t i = 0; i < 4; i++) {
        r.signals[i] = evsignal_new(r.base, sigs[i], signal_cb, &r);
        PGMTA_ASSERT(r.signals[i] != NULL);
        PGMTA_ASSERT(evsignal_add(r.signals[i], NULL) == 0);
    }

    log_info("root event=starting version=%s node=%s config=%s pipes=%zu", PGMTA_VERSION,
             conf->node_name ? conf->node_name : "-", conf->path, conf->npipes);
    /* The failed-AUTH table of the node, before the smtp-in processes are
     * forked: they, and those restarted later, share it. */
    smtp_in_auth_shared_init();
    /* The node's counters (metrics.h), shared the same way. */
    if (metrics_init() != 0)
        log_warn("root event=metrics-unavailable error=\"cannot map the shared segment\"");
    metrics_proc_attach(METRICS_PROC_ROOT, "", 0);
    /* SIGCHLD is watched before the first fork, so no exit goes unseen. */
    r.sup = pipe_sup_new(r.base, worker_run, smtp_in_run);
    pipe_sup_set_webhook_fn(r.sup, webhook_run);
    pipe_sup_apply(r.sup, conf, false);
    /* After the first fork: the children do not inherit the connection. */
    root_db_start(&r);

    event_base_dispatch(r.base);

    pipe_sup_free(r.sup);
    registry_free(r.registry);
    db_free(r.db);
    for (size_t i = 0; i < 4; i++)
        event_free(r.signals[i]);
    util_defer_base_free(r.base);
    event_base_free(r.base);
    log_info("root event=exit status=0");
    conf_free(r.conf);
    return 0;
}

int
main(int argc, char **argv)
{
    enum { OPT_CHECK = 256, OPT_FOREGROUND };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, OPT_CHECK},
        {"foreground", no_argument, NULL, OPT_FOREGROUND},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    bool check = false;
    int c;
    log_set_ident("pgmtad");
    while ((c = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case OPT_CHECK:
            check = true;
            break;
        case OPT_FOREGROUND:
            break; /* the only mode: supervision belongs to systemd or the caller */
        case 'V':
            printf("pgmtad %s\n", PGMTA_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!path || optind != argc) {
        if (!path)
            fprintf(stderr, "pgmtad: -c FILE is required\n");
        else
            fprintf(stderr, "pgmtad: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    char err[CONF_ERR_LEN] = "";
    struct conf *conf = load_config(path, err, sizeof err);
    if (!conf) {
        fprintf(stderr, "%s\n", err[0] ? err : "configuration could not be loaded");
        return 2;
    }
    if (check) {
        conf_dump(conf, stdout);
        conf_free(conf);
        return fflush(stdout) == 0 ? 0 : 1;
    }
    return root_run(conf);
}
