/* pipe: supervision of the child processes by pgmtad's root process: the
 * pipe processes (delivery) and the smtp-in processes (SMTP injection).
 *
 * The supervisor owns the child table: one entry per (kind, pipe, index)
 * that the configuration asks for. It forks the children, reaps them on SIGCHLD,
 * restarts the ones that exit without being asked to, with exponential
 * backoff, and stops them (SIGTERM, then SIGKILL after a deadline) when their
 * pipe disappears from the configuration or the root shuts down. It installs
 * no signal events itself: the root's event loop owns the signals and calls
 * pipe_sup_reap, pipe_sup_apply and pipe_sup_stop. */
#ifndef PGMTA_PIPE_H
#define PGMTA_PIPE_H

#include <event2/event.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "conf.h"

/* Restart backoff: 1 s after the first failure, doubling per consecutive
 * failure up to the cap; a child that ran this long counts as healthy again. */
#define PIPE_RESTART_MIN_MS 1000u
#define PIPE_RESTART_MAX_MS 60000u
#define PIPE_HEALTHY_AFTER_MS 60000u
/* Grace beyond conf->shutdown_timeout_ms before stragglers get SIGKILL. */
#define PIPE_KILL_GRACE_MS 5000u

/* The body of a child process; its return value is the exit status. It
 * receives its own copy of the configuration (the child's memory). For an
 * smtp-in process pipe_name is PIPE_SMTP_IN_NAME. */
typedef int (*pipe_child_fn)(struct conf *conf, const char *pipe_name, unsigned index);

enum pipe_kind { PIPE_KIND_PIPE = 0, PIPE_KIND_SMTP_IN, PIPE_KIND_WEBHOOK, PIPE_NKINDS };
#define PIPE_SMTP_IN_NAME "smtp-in"
#define PIPE_WEBHOOK_NAME "webhooks"

/* Called once when pipe_sup_stop has seen the last child exit. */
typedef void (*pipe_stopped_cb)(void *arg);

struct pipe_sup;

/* PIPE_FN runs a pipe process, SMTP_IN_FN an smtp-in process (NULL: none
 * are started). */
struct pipe_sup *pipe_sup_new(struct event_base *base, pipe_child_fn pipe_fn,
                              pipe_child_fn smtp_in_fn);
/* FN runs the webhook sender process (one per node while the configuration
 * has webhooks and a database; see webhook.h). Call before the first
 * pipe_sup_apply. */
void pipe_sup_set_webhook_fn(struct pipe_sup *s, pipe_child_fn fn);
/* Frees the table without signalling anyone (use pipe_sup_stop first). */
void pipe_sup_free(struct pipe_sup *s);

/* Number of smtp-in processes CONF asks for: smtp-listener.processes, or
 * one per online core when that is 0; none without listen.smtp and
 * listen.http (the smtp-in processes serve both). */
unsigned pipe_smtp_in_wanted(const struct conf *conf);

/* Makes the running children match CONF, which the supervisor borrows until
 * the next pipe_sup_apply (the caller frees an old configuration only after
 * applying the new one). Missing entries are started; entries whose pipe is
 * gone or whose index is beyond the process count wanted are stopped. With forward_hup, children
 * that are kept get SIGHUP (they reload the configuration themselves). Ignored once pipe_sup_stop
 * was called. */
void pipe_sup_apply(struct pipe_sup *s, const struct conf *conf, bool forward_hup);

/* Reaps every exited child (waitpid WNOHANG) and schedules restarts; call
 * on SIGCHLD. */
void pipe_sup_reap(struct pipe_sup *s);

/* Sends SIGTERM to every child, cancels pending restarts and calls done once
 * no child is left; children still running after kill_after_ms get SIGKILL.
 * Calls done at once (from the event loop) if there are no children. */
void pipe_sup_stop(struct pipe_sup *s, uint64_t kill_after_ms, pipe_stopped_cb done, void *arg);

/* Number of live children (forked and not yet reaped). */
size_t pipe_sup_running(const struct pipe_sup *s);

/* Delay before restart number FAILURES (1 for the first failure). */
uint64_t pipe_restart_delay_ms(unsigned failures);

#endif
