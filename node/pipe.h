/* pipe: supervision of the pipe processes by pgmtad's root process.
 *
 * The supervisor owns the child table: one entry per (pipe, index) that the
 * configuration asks for. It forks the children, reaps them on SIGCHLD,
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
 * receives its own copy of the configuration (the child's memory). */
typedef int (*pipe_child_fn)(struct conf *conf, const char *pipe_name, unsigned index);

/* Called once when pipe_sup_stop has seen the last child exit. */
typedef void (*pipe_stopped_cb)(void *arg);

struct pipe_sup;

struct pipe_sup *pipe_sup_new(struct event_base *base, pipe_child_fn child_fn);
/* Frees the table without signalling anyone (use pipe_sup_stop first). */
void pipe_sup_free(struct pipe_sup *s);

/* Makes the running children match CONF, which the supervisor borrows until
 * the next pipe_sup_apply (the caller frees an old configuration only after
 * applying the new one). Missing (pipe, index) entries are started; entries
 * whose pipe is gone or whose index is beyond the pipe's process count are
 * stopped. With forward_hup, children that are kept get SIGHUP (they reload
 * the configuration themselves). Ignored once pipe_sup_stop was called. */
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
