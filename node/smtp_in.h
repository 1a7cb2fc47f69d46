/* smtp_in: the body of one smtp-in process, the SMTP injection listener
 * outside the root (see README, Over SMTP).
 *
 * The root supervises the smtp-in processes like the pipe processes
 * (pipe.c: restart with backoff, SIGTERM then SIGKILL on stop, SIGHUP
 * forwarded on reload). Each one has its own event loop, binds every
 * listen.smtp address itself with SO_REUSEPORT (the kernel spreads new
 * connections over the processes), commits its messages in groups on its
 * own database connection (smtp_in_batch.c) and has its row in mta.node
 * (pipe 'smtp-in', process_index = its index) with a heartbeat. */
#ifndef PGMTA_SMTP_IN_H
#define PGMTA_SMTP_IN_H

#include <stdbool.h>
#include <stddef.h>

#include "conf.h"

/* Runs until SIGTERM/SIGINT: stops accepting, lets sessions that are
 * receiving or storing a message finish (at most shutdown-timeout), then
 * exits. SIGHUP reloads the configuration from conf->path (kept on error).
 * Takes ownership of conf. Returns the exit status. */
int smtp_in_run(struct conf *conf, const char *name, unsigned index);

/* conf_load plus what the configuration points at: the DKIM keys must load
 * (readable, not world-readable, a supported type), so that a bad key is
 * refused at start and on reload like any other configuration error. */
struct conf *smtp_in_conf_load(const char *path, char *err, size_t errlen);

#endif
