/* registry: this process's row in mta.node - register once the database is
 * up, heartbeat while running, mark stopped at exit - shared by the root
 * process and the pipe processes.
 *
 * The registry does not own database connections: the owner prepares the
 * statements on each of its connections (registry_prepare), calls
 * registry_db_ready from its ready callback, and lends a connection for
 * each heartbeat through the pick callback. Callbacks run from the loop,
 * never before the function that started the request returns. */
#ifndef PGMTA_REGISTRY_H
#define PGMTA_REGISTRY_H

#include <event2/event.h>
#include <stdbool.h>

struct db;
struct registry;

/* A ready connection to use now, or NULL. */
typedef struct db *(*registry_pick_cb)(void *arg);
/* Registration done: node_id > 0, or 0 when it failed (retried on the next
 * registry_db_ready). */
typedef void (*registry_registered_cb)(long long node_id, void *arg);
/* node_stop answered (ok) or failed / timed out (not ok). */
typedef void (*registry_stopped_cb)(bool ok, void *arg);

/* PIPE NULL for the root process (index 0). Heartbeats every HEARTBEAT_MS
 * once registered. LABEL prefixes log lines ("root", "pipe=bulk").
 * REGISTERED may be NULL. */
struct registry *registry_new(struct event_base *base, const char *node_name, const char *pipe,
                              unsigned index, unsigned heartbeat_ms, const char *label,
                              registry_pick_cb pick, registry_registered_cb registered, void *arg);
void registry_free(struct registry *r);
/* Prepares node_register, node_heartbeat and node_stop on DB. */
void registry_prepare(struct db *db);
/* From the owner's db ready callback: registers unless registered or
 * registering. */
void registry_db_ready(struct registry *r, struct db *db);
long long registry_node_id(const struct registry *r);
/* Records the stop (node_stop releases this process's leases) and calls
 * DONE once: when the database answered, or after WAIT_MS without an
 * answer, or on the next loop turn when there is nothing to record. */
void registry_stop(struct registry *r, unsigned wait_ms, registry_stopped_cb done, void *arg);

#endif
