/* pipe: process supervision in pgmtad's root process (see pipe.h).
 *
 * The supervisor owns a list of struct pipe_proc, one per (kind, name,
 * index): a pipe process (kind PIPE, the pipe's name) or an smtp-in process
 * (kind SMTP_IN, the name "smtp-in"). Both kinds are started, restarted,
 * signalled and stopped the same way; only the child function and the
 * number wanted differ. An
 * entry's state is one of: running (a live pid), waiting (no process, a
 * restart timer pending) or stopping (SIGTERM sent, removed once reaped; a
 * timer sends SIGKILL at the deadline). Entries are freed only from
 * pipe_sup_reap, pipe_sup_apply, pipe_sup_stop and the restart timer, never
 * from inside their own timer callback while still referenced.
 *
 * Children are plain forks: the child drops every file descriptor the root
 * holds (listeners, the root's event loop), restores default signal
 * dispositions and runs the child function with its copy of the
 * configuration. PR_SET_PDEATHSIG makes a child stop gracefully if the root
 * dies. */
#include "pipe.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "util.h"

enum proc_state {
    PROC_RUNNING,
    PROC_WAITING,
    PROC_STOPPING,
};

struct pipe_proc {
    struct pipe_sup *sup;
    enum pipe_kind kind;
    char *pipe;  /* the pipe's name, or "smtp-in" */
    char *label; /* for the log: "pipe=NAME" or "proc=smtp-in" */
    unsigned index;
    enum proc_state state;
    pid_t pid;           /* 0 when no process exists */
    unsigned failures;   /* consecutive unexpected exits, for the backoff */
    uint64_t started_at; /* monotonic ms of the last fork */
    struct event *timer; /* restart (waiting) or SIGKILL deadline (stopping) */
    struct pipe_proc *next;
};

struct pipe_sup {
    struct event_base *base;
    pipe_child_fn child_fn[PIPE_NKINDS];
    const struct conf *conf; /* borrowed, see pipe_sup_apply */
    struct pipe_proc *procs;
    pid_t root_pid;
    bool stopping;
    uint64_t kill_after_ms;
    pipe_stopped_cb done;
    void *done_arg;
    struct event *done_ev; /* fires done from the loop, not from inside a call */
};

static void proc_timer_cb(evutil_socket_t fd, short what, void *arg);

uint64_t
pipe_restart_delay_ms(unsigned failures)
{
    if (failures <= 1)
        return PIPE_RESTART_MIN_MS;
    uint64_t d = PIPE_RESTART_MIN_MS;
    for (unsigned i = 1; i < failures && d < PIPE_RESTART_MAX_MS; i++)
        d *= 2;
    return d > PIPE_RESTART_MAX_MS ? PIPE_RESTART_MAX_MS : d;
}

static void
arm_timer(struct pipe_proc *p, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(p->timer, &tv);
}

static struct pipe_proc *
proc_new(struct pipe_sup *s, enum pipe_kind kind, const char *pipe, unsigned index)
{
    struct pipe_proc *p = xcalloc(1, sizeof *p);
    p->sup = s;
    p->kind = kind;
    p->pipe = xstrdup(pipe);
    p->label = xasprintf("%s=%s", kind == PIPE_KIND_PIPE ? "pipe" : "proc", pipe);
    p->index = index;
    p->state = PROC_WAITING;
    p->timer = evtimer_new(s->base, proc_timer_cb, p);
    PGMTA_ASSERT(p->timer != NULL);
    p->next = s->procs;
    s->procs = p;
    return p;
}

static void
proc_free(struct pipe_proc *p)
{
    struct pipe_proc **pp = &p->sup->procs;
    while (*pp && *pp != p)
        pp = &(*pp)->next;
    PGMTA_ASSERT(*pp == p);
    *pp = p->next;
    event_free(p->timer);
    free(p->pipe);
    free(p->label);
    free(p);
}

/* In the child: become a fresh process and run the pipe. Never returns. */
static void __attribute__((noreturn)) child_main(struct pipe_sup *s, struct pipe_proc *p)
{
    /* If the root goes away, stop gracefully. The root may already have
     * died between fork and prctl: then we were reparented. */
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0 || getppid() != s->root_pid)
        _exit(1);

    /* Default dispositions for everything the root (or libevent in the
     * root) changed, and nothing blocked: worker_run installs its own. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &sa, NULL);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* Drop the root's descriptors (event loop, signal pipe, listeners);
     * stdin, stdout and stderr stay. */
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
        long max = sysconf(_SC_OPEN_MAX);
        for (long fd = 3; fd < (max > 0 ? max : 1024); fd++)
            close((int)fd);
    }

    char ident[96];
    snprintf(ident, sizeof ident, "pgmtad[%s/%u]", p->pipe, p->index);
    log_set_ident(ident);
    metrics_proc_attach(p->kind == PIPE_KIND_PIPE      ? METRICS_PROC_PIPE
                        : p->kind == PIPE_KIND_SMTP_IN ? METRICS_PROC_SMTP_IN
                                                       : METRICS_PROC_WEBHOOK,
                        p->kind == PIPE_KIND_PIPE ? p->pipe : "", p->index);

    /* The child's copy of the configuration and of the pipe name; the
     * root's memory is not touched again in this process. */
    struct conf *conf = (struct conf *)s->conf;
    int rc = s->child_fn[p->kind](conf, p->pipe, p->index);
    _exit(rc & 0xff);
}

static void
proc_start(struct pipe_proc *p)
{
    struct pipe_sup *s = p->sup;
    PGMTA_ASSERT(p->pid == 0 && s->conf != NULL);
    /* Output buffered in stdio would otherwise be written twice. */
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        p->failures++;
        uint64_t delay = pipe_restart_delay_ms(p->failures);
        log_error("%s index=%u fork failed error=\"%s\" restart_in=%llus", p->label, p->index,
                  strerror(errno), (unsigned long long)(delay / 1000));
        p->state = PROC_WAITING;
        arm_timer(p, delay);
        return;
    }
    if (pid == 0)
        child_main(s, p);
    p->pid = pid;
    p->state = PROC_RUNNING;
    p->started_at = util_now_ms();
    log_info("%s index=%u pid=%d started", p->label, p->index, (int)pid);
}

/* Asks a child to stop for good; the entry goes when it is reaped. */
static void
proc_retire(struct pipe_proc *p, uint64_t kill_after_ms)
{
    if (p->state == PROC_STOPPING)
        return;
    evtimer_del(p->timer);
    if (p->pid == 0) {
        proc_free(p);
        return;
    }
    p->state = PROC_STOPPING;
    log_info("%s index=%u pid=%d stopping kill_in=%llums", p->label, p->index, (int)p->pid,
             (unsigned long long)kill_after_ms);
    kill(p->pid, SIGTERM);
    arm_timer(p, kill_after_ms);
}

static void
sup_check_done(struct pipe_sup *s)
{
    if (s->stopping && s->procs == NULL && s->done) {
        struct timeval now = {0, 0};
        evtimer_add(s->done_ev, &now);
    }
}

static void
done_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pipe_sup *s = arg;
    pipe_stopped_cb done = s->done;
    s->done = NULL;
    if (done)
        done(s->done_arg);
}

static void
proc_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pipe_proc *p = arg;
    switch (p->state) {
    case PROC_WAITING:
        proc_start(p);
        break;
    case PROC_STOPPING:
        if (p->pid > 0) {
            log_warn("%s index=%u pid=%d did not stop in time, killing", p->label, p->index,
                     (int)p->pid);
            kill(p->pid, SIGKILL);
        }
        break;
    case PROC_RUNNING:
        break;
    }
}

struct pipe_sup *
pipe_sup_new(struct event_base *base, pipe_child_fn pipe_fn, pipe_child_fn smtp_in_fn)
{
    struct pipe_sup *s = xcalloc(1, sizeof *s);
    s->base = base;
    s->child_fn[PIPE_KIND_PIPE] = pipe_fn;
    s->child_fn[PIPE_KIND_SMTP_IN] = smtp_in_fn;
    s->root_pid = getpid();
    s->done_ev = evtimer_new(base, done_cb, s);
    PGMTA_ASSERT(s->done_ev != NULL);
    return s;
}

void
pipe_sup_set_webhook_fn(struct pipe_sup *s, pipe_child_fn fn)
{
    s->child_fn[PIPE_KIND_WEBHOOK] = fn;
}

static unsigned
webhook_wanted(const struct pipe_sup *s, const struct conf *conf)
{
    return s->child_fn[PIPE_KIND_WEBHOOK] && conf->nwebhooks > 0 && conf->database_url ? 1u : 0u;
}

void
pipe_sup_free(struct pipe_sup *s)
{
    if (!s)
        return;
    while (s->procs)
        proc_free(s->procs);
    event_free(s->done_ev);
    free(s);
}

static struct pipe_proc *
find_proc(struct pipe_sup *s, enum pipe_kind kind, const char *pipe, unsigned index)
{
    for (struct pipe_proc *p = s->procs; p; p = p->next) {
        if (p->state != PROC_STOPPING && p->kind == kind && p->index == index &&
            strcmp(p->pipe, pipe) == 0)
            return p;
    }
    return NULL;
}

unsigned
pipe_smtp_in_wanted(const struct conf *conf)
{
    if (conf->nlisten_smtp == 0 && conf->nlisten_inbound == 0 && !conf->listen_http &&
        !conf->listen_unsubscribe)
        return 0;
    if (conf->smtp_listener_processes > 0)
        return conf->smtp_listener_processes;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1u : n > 256 ? 256u : (unsigned)n;
}

/* How many processes of P's kind and name CONF wants. */
static unsigned
wanted(const struct pipe_sup *s, const struct conf *conf, const struct pipe_proc *p)
{
    if (p->kind == PIPE_KIND_SMTP_IN)
        return s->child_fn[PIPE_KIND_SMTP_IN] ? pipe_smtp_in_wanted(conf) : 0;
    if (p->kind == PIPE_KIND_WEBHOOK)
        return webhook_wanted(s, conf);
    const struct conf_pipe *cp = conf_pipe_lookup(conf, p->pipe);
    return cp ? cp->processes : 0;
}

static uint64_t
kill_deadline_ms(const struct conf *conf)
{
    return (conf ? conf->shutdown_timeout_ms : 0) + PIPE_KILL_GRACE_MS;
}

void
pipe_sup_apply(struct pipe_sup *s, const struct conf *conf, bool forward_hup)
{
    if (s->stopping)
        return;
    s->conf = conf;

    /* Stop what the configuration no longer has. */
    struct pipe_proc *next;
    for (struct pipe_proc *p = s->procs; p; p = next) {
        next = p->next;
        if (p->state == PROC_STOPPING)
            continue;
        if (p->index >= wanted(s, conf, p)) {
            log_info("%s index=%u removed from the configuration", p->label, p->index);
            proc_retire(p, kill_deadline_ms(conf));
        } else if (forward_hup && p->state == PROC_RUNNING) {
            kill(p->pid, SIGHUP);
        }
    }

    /* Start what is missing, in configuration order. */
    for (size_t i = 0; i < conf->npipes; i++) {
        const struct conf_pipe *cp = &conf->pipes[i];
        for (unsigned k = 0; k < cp->processes; k++) {
            if (!find_proc(s, PIPE_KIND_PIPE, cp->name, k))
                proc_start(proc_new(s, PIPE_KIND_PIPE, cp->name, k));
        }
    }
    unsigned nin = s->child_fn[PIPE_KIND_SMTP_IN] ? pipe_smtp_in_wanted(conf) : 0;
    for (unsigned k = 0; k < nin; k++) {
        if (!find_proc(s, PIPE_KIND_SMTP_IN, PIPE_SMTP_IN_NAME, k))
            proc_start(proc_new(s, PIPE_KIND_SMTP_IN, PIPE_SMTP_IN_NAME, k));
    }
    if (webhook_wanted(s, conf) && !find_proc(s, PIPE_KIND_WEBHOOK, PIPE_WEBHOOK_NAME, 0))
        proc_start(proc_new(s, PIPE_KIND_WEBHOOK, PIPE_WEBHOOK_NAME, 0));
}

static void
describe_status(int status, char *out, size_t outlen)
{
    if (WIFEXITED(status)) {
        snprintf(out, outlen, "%d", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
        const char *name = sigabbrev_np(WTERMSIG(status));
        if (name)
            snprintf(out, outlen, "SIG%s%s", name, WCOREDUMP(status) ? "+core" : "");
        else
            snprintf(out, outlen, "signal%d", WTERMSIG(status));
    } else {
        snprintf(out, outlen, "0x%x", (unsigned)status);
    }
}

static void
proc_exited(struct pipe_proc *p, int status)
{
    char desc[48];
    describe_status(status, desc, sizeof desc);
    pid_t pid = p->pid;
    p->pid = 0;
    metrics_proc_detach(pid);

    if (p->state == PROC_STOPPING) {
        log_info("%s index=%u pid=%d stopped status=%s", p->label, p->index, (int)pid, desc);
        proc_free(p);
        return;
    }

    /* Not asked to exit: restart. A failure (non-zero status or a signal)
     * grows the backoff unless the child had run long enough to count as
     * healthy; a clean exit restarts after the minimum delay. */
    bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    uint64_t ran_ms = util_now_ms() - p->started_at;
    if (ran_ms >= PIPE_HEALTHY_AFTER_MS || !failed)
        p->failures = 0;
    if (failed)
        p->failures++;
    uint64_t delay = pipe_restart_delay_ms(p->failures);
    log_warn("%s index=%u pid=%d exited status=%s ran=%llums restart_in=%llus", p->label, p->index,
             (int)pid, desc, (unsigned long long)ran_ms, (unsigned long long)(delay / 1000));
    p->state = PROC_WAITING;
    arm_timer(p, delay);
}

void
pipe_sup_reap(struct pipe_sup *s)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == 0)
            break;
        if (pid < 0) {
            if (errno == EINTR)
                continue;
            break; /* ECHILD: nothing left */
        }
        struct pipe_proc *p = s->procs;
        while (p && p->pid != pid)
            p = p->next;
        if (!p) {
            log_debug("pid=%d reaped, not a pipe process", (int)pid);
            continue;
        }
        proc_exited(p, status);
    }
    sup_check_done(s);
}

void
pipe_sup_stop(struct pipe_sup *s, uint64_t kill_after_ms, pipe_stopped_cb done, void *arg)
{
    if (s->stopping)
        return;
    s->stopping = true;
    s->kill_after_ms = kill_after_ms;
    s->done = done;
    s->done_arg = arg;
    struct pipe_proc *next;
    for (struct pipe_proc *p = s->procs; p; p = next) {
        next = p->next;
        proc_retire(p, kill_after_ms);
    }
    sup_check_done(s);
}

size_t
pipe_sup_running(const struct pipe_sup *s)
{
    size_t n = 0;
    for (const struct pipe_proc *p = s->procs; p; p = p->next)
        n += p->pid > 0;
    return n;
}
