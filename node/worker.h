/* worker: the body of one pipe process. It owns an event loop, database
 * connections, a DNS resolver and SMTP sessions, and claims, delivers and
 * finishes the recipients of its pipe (DESIGN §4). */
#ifndef PGMTA_WORKER_H
#define PGMTA_WORKER_H

#include "conf.h"

/* Runs until SIGTERM/SIGINT (graceful: stop claiming, finish or release
 * in-flight work within conf->shutdown_timeout_ms). SIGHUP reloads the
 * configuration from conf->path (kept on error). Takes ownership of conf.
 * Returns the process exit status (0 on a clean stop). The caller has not
 * installed any signal handlers in the process. */
int worker_run(struct conf *conf, const char *pipe_name, unsigned index);

#endif
