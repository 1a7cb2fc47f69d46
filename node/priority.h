/* priority: queue priorities and preemption (see README, Priorities).
 *
 * A queue's priority (0-100) is the larger of its domain entry's and its
 * virtual MTA's queue-priority, raised to the highest priority of its ready
 * messages (priority_effective). It orders the queues that share a limit key
 * (a rollup, a pool member): a queue that finds every slot of the key taken
 * waits in the database (mta.take_slot_prio, through sched), and no queue
 * below it takes a slot of the key meanwhile. With allow-priority-
 * interruption, a connection asks before each message whether a queue above
 * it waits for its key (priority_check) and quits if one does. */
#ifndef PGMTA_PRIORITY_H
#define PGMTA_PRIORITY_H

#include <stdbool.h>

struct conf;
struct conf_domain;
struct db;

/* How long a waiting queue holds lower ones back after its last try: a
 * waiter that stopped asking (its node died) blocks the key no longer. */
#define PRIORITY_WAIT_MS 1000

/* The priority of the queue of domain entry D and virtual MTA VMTA (NULL or
 * "": none; a pool or an unknown name counts as none). */
unsigned priority_of_queue(const struct conf *c, const struct conf_domain *d, const char *vmta);

/* The priority a queue competes with for the slots of its key: the larger
 * of its queue priority QUEUE_PRIO and READY_PRIO, the highest priority of
 * its ready recipients (message priority, mta.ready_queues), at most 100. */
unsigned priority_effective(unsigned queue_prio, unsigned ready_prio);

/* Prepares priority_check's statement on DB. */
void priority_prepare(struct db *db);

/* waiting: a queue of higher priority than the one asking waits for the
 * key now (false too when the database failed: nobody is interrupted on a
 * guess). */
typedef void (*priority_cb)(bool waiting, void *arg);

/* Asks whether a queue above PRIO waits for the key (KEY_DOMAIN, KEY_VMTA;
 * vmta NULL or "" = none). 0: CB is called once, after this returns; -1:
 * not sent, CB will not be called. */
int priority_check(struct db *db, const char *key_domain, const char *key_vmta, unsigned prio,
                   priority_cb cb, void *arg);

#endif
