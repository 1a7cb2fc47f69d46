/* sched: cluster-wide traffic shaping for one node process (see README,
 * "Traffic shaping, cluster-wide"): connection slots (max-smtp-out) and rate
 * tokens (max-msg-rate, max-connect-rate), enforced through PostgreSQL so
 * that the limits hold for the whole cluster.
 *
 * A slot is a session advisory lock held on a dedicated database connection
 * of this sched (never a pooled one) for as long as the SMTP connection is
 * open. If that connection drops, PostgreSQL has released every slot: sched
 * forgets its slots and calls the lost callback once; slots taken before are
 * then stale (releasing them does nothing) and the owner should open no new
 * connections for them. Slot requests for one queue run one at a time, since
 * advisory locks are re-entrant within a session.
 *
 * Rate tokens come from a token bucket per queue and kind in the database
 * (mta.take_tokens), reserved in small batches (about one second's worth,
 * at least the amount wanted) and kept in a local cache for at most one
 * second, so most requests are answered from the cache without a round
 * trip. A node that dies loses at most its unused batch.
 *
 * Callbacks: every request's callback is called exactly once, and never
 * before the request function has returned: answers known at once
 * (unlimited limits, max-smtp-out 0, cached tokens, a wait still running,
 * database not connected) are delivered from the next loop turn, all of
 * them by one event. A caller may set its "in flight" state after the call.
 * All pending callbacks are called (with failure) by sched_free.
 *
 * Local deadlines (token cache age, waits) use the monotonic clock: a step
 * of the wall clock neither freezes nor floods a throttled queue. */
#ifndef PGMTA_SCHED_H
#define PGMTA_SCHED_H

#include <event2/event.h>
#include <stdint.h>

struct conf_rate;
struct sched;

/* The lock class: first advisory lock key = SCHED_LOCK_CLASS + slot. */
#define SCHED_LOCK_CLASS 0x504D0000
/* Slots per queue; a larger max-smtp-out is clamped to this. */
#define SCHED_MAX_SLOTS 65536

enum sched_kind { SCHED_MSG, SCHED_CONNECT };

/* slot: 0 .. max-1, or -1 when no slot is free or the database failed. */
typedef void (*sched_slot_cb)(int slot, void *arg);
/* granted: 0 .. want. When 0, wait_ms is how long to wait before asking
 * again (the next token, or 1000 ms after a database failure). */
typedef void (*sched_tokens_cb)(unsigned granted, unsigned wait_ms, void *arg);
/* The slot connection was lost: every slot is gone. */
typedef void (*sched_lost_cb)(void *arg);

/* node_label names the database connection (application_name). Connects at
 * once, reconnecting with backoff when the connection drops. */
struct sched *sched_new(struct event_base *base, const char *db_url, const char *node_label);
void sched_free(struct sched *s);
void sched_set_lost_cb(struct sched *s, sched_lost_cb cb, void *arg);
/* mta.node id of this process: registered as the owner of the slot session
 * (mta.node_set_lock_pid) now and after every reconnect, so that
 * mta.connections names this node. */
void sched_set_node_id(struct sched *s, long long node_id);
/* True while the slot connection is up. */
int sched_ready(const struct sched *s);

/* Takes a free slot of the key (key_domain, key_vmta; vmta NULL or "" =
 * none) with at most max_smtp_out slots cluster-wide, for the queue (domain,
 * vmta). The key is what the limit applies to: the queue's own (domain,
 * vmta), the domain's MX rollup key ("rollup:NAME", "provider:NAME",
 * "mx:HOSTS", rollup.h), the member's name as vmta for a pool's session. The database records that
 * the key serves the queue (mta.take_slot), so that mta.connections shows the connection under its
 * key and mta.queues.connections counts it for the queue. domain NULL: the queue is the key itself.
 * CONF_UNLIMITED: no lock, cb(0) from the next loop turn; 0: cb(-1) likewise. Slots are released
 * and counted by key. */
void sched_take_slot_for(struct sched *s, const char *key_domain, const char *key_vmta,
                         const char *domain, const char *vmta, uint32_t max_smtp_out,
                         sched_slot_cb cb, void *arg);
/* sched_take_slot_for for a queue of priority PRIO (0-100, see priority.h):
 * no slot while a queue of higher priority waits for the key; refused, the
 * queue waits for the key itself. sched_take_slot_for is priority 0. */
void sched_take_slot_prio(struct sched *s, const char *key_domain, const char *key_vmta,
                          const char *domain, const char *vmta, uint32_t max_smtp_out,
                          unsigned prio, sched_slot_cb cb, void *arg);
/* sched_take_slot_for with the key as the queue: right for a plain queue;
 * a rollup's or a pool's connections then count for no queue. */
void sched_take_slot(struct sched *s, const char *domain, const char *vmta, uint32_t max_smtp_out,
                     sched_slot_cb cb, void *arg);
/* Gives a slot back (fire and forget). Slot 0 of an unlimited queue, -1 and
 * slots that went stale with a lost connection are ignored. */
void sched_release_slot(struct sched *s, const char *domain, const char *vmta, int slot);
/* Slots this process holds now for the queue. */
unsigned sched_slots_held(struct sched *s, const char *domain, const char *vmta);

/* Takes up to want tokens of the queue's kind bucket at rate (count per
 * period_ms, or CONF_UNLIMITED: cb(want, 0) from the next loop turn). */
void sched_take_tokens(struct sched *s, const char *domain, const char *vmta, enum sched_kind kind,
                       const struct conf_rate *rate, unsigned want, sched_tokens_cb cb, void *arg);

#endif
