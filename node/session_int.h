/* session_int: what the files of the session module share (session.c, the
 * state machine; session_claim.c, the claim side): the states, the events
 * and struct session. Nothing outside the session module includes it. */
#ifndef PGMTA_SESSION_INT_H
#define PGMTA_SESSION_INT_H

#include <libpq-fe.h>
#include <stdbool.h>

#include "batch.h"
#include "dane.h"
#include "dns.h"
#include "mta_sts.h"
#include "session.h"
#include "smtp_client.h"

enum session_state {
    SESSION_ROLLUP,           /* the MX set, for the limit key (rollup.h) */
    SESSION_WARMUP,           /* a warming source IP reserves its messages (warmup.h) */
    SESSION_IP_SLOT,          /* the source IP's own slot (source-ip-max-smtp-out) */
    SESSION_IP_CONNECT_TOKEN, /* its connect token (source-ip-max-connect-rate) */
    SESSION_SLOT,
    SESSION_SLOT_CLAIM, /* a new connection's slot and first claim, in parallel */
    /* a rate-limited queue's new connection: the slot, and in parallel one
     * statement with the connect token, the message tokens and the claim */
    SESSION_SLOT_TOKENS_CLAIM,
    SESSION_CONNECT_TOKEN,
    SESSION_TOKENS,
    SESSION_TOKENS_CLAIM, /* a rate-limited queue's next claim, with its tokens */
    SESSION_WAIT,         /* for tokens or budget, on the timer */
    SESSION_CLAIM_QUEUED,
    SESSION_CLAIM,
    /* a new connection's MTA-STS policy and MX lookup, in parallel */
    SESSION_POLICY_RESOLVE,
    SESSION_RESOLVE,
    SESSION_SEND,
    SESSION_FINISH,
    SESSION_FINISH_WAIT,
    SESSION_DONE
};

enum session_event_type {
    EV_WARMUP,
    EV_SLOT,
    EV_TOKENS,
    EV_CLAIM_TURN,
    EV_CLAIMED,
    EV_TOKENS_CLAIMED, /* the answer of a claim with its tokens: rows, granted, wait_ms */
    EV_POLICY,
    EV_RESOLVED,
    EV_BATCH_DONE,
    EV_FINISHED,
    EV_TIMER
};

struct session_event {
    enum session_event_type type;
    int slot;
    unsigned granted, wait_ms;
    const PGresult *res;
    const struct dns_result *dns;
    const struct mta_sts_result *sts;
    const struct smtp_rcpt_result *const *results;
    const struct smtp_conn_info *info;
    bool usable;
};

struct session {
    uint64_t id;
    struct session_env *e;
    struct admission_queue *q;
    const struct conf_domain *dom;
    enum session_state state;
    struct smtp_client *smtp;
    struct dns_request *dnsreq;
    bool resolving;
    /* SESSION_POLICY_RESOLVE: the MX answer that came before the policy */
    struct dns_result *resolved;
    /* MTA-STS: looked up once per session (sts_done), the policy kept */
    struct mta_sts_request *stsreq;
    bool sts_pending; /* stsreq's answer is due */
    bool sts_done;
    bool sts_looked_up;        /* false: mta-sts off or a route */
    struct mta_sts_policy sts; /* mode NONE: none applies */
    const char *sts_failure;   /* why none could be had, for TLS-RPT */
    /* DANE: the TLSA records of the validated MX hosts of this connection */
    struct dane_request *danereq;
    struct dns_result *dane_resolved; /* the MX answer waiting for them */
    struct dane_set dane;
    struct event *ev_timer;
    unsigned timer_ms; /* for SESSION_WAIT */
    struct batch batch;
    size_t reserved; /* content budget reserved for a claim in flight */
    unsigned sent;   /* transactions on this connection */
    bool usable;
    long long lease_deadline_ms; /* monotonic, from the server's lease_until */
    /* Shaping key: limits are per (destination, source virtual MTA); the
     * destination is the domain's rollup key (rollup.h): "rollup:NAME",
     * "provider:NAME", "mx:..." or the domain itself. */
    char *limit_domain;
    /* A provider's limits over the domain's settings; dom points here then */
    struct conf_domain provider_dom;
    const char *source_vmta; /* member of a pool, or the queue's vmta; "" none */
    int slot;                /* connection slot held, -1 none */
    int ip_slot;             /* source IP's slot ("ip:ADDR", rollup.h), -1 none */
    char *ip_key;            /* that key, or NULL when the IP has no limit */
    const char *warmup_ip;   /* a warming source IP's plan limits this session, or NULL */
    unsigned warmup_left;    /* messages of its reservation not yet claimed */
    unsigned tokens;         /* message tokens granted for the next claim */
    unsigned claim_limit;    /* rows asked for by the claim in flight */
    bool drained;            /* the last claim came back short: no reuse */
    unsigned token_waited_ms;
    bool no_reuse;            /* quit after the current batch */
    unsigned pattern_effects; /* POLICY_EFFECT_* of this batch's replies */
    char *pattern_reply;
    unsigned pending;                   /* database or sched answers due */
    int slot_answer;                    /* SESSION_SLOT_(TOKENS_)CLAIM: -2 none yet */
    bool claim_answered, claim_ok;      /* SESSION_SLOT_CLAIM, SESSION_SLOT_TOKENS_CLAIM */
    unsigned claim_wait_ms;             /* SESSION_SLOT_TOKENS_CLAIM: tokens exhausted */
    bool connect_token;                 /* the rated claim in flight takes a connect token */
    bool ip_msg_tokens;                 /* ... and message tokens of the source IP (ip_key) */
    unsigned tokens_spent;              /* message tokens the last rated claim spent */
    bool connect_reported;              /* admission_connected was told about this connection */
    uint64_t smtp_started_us;           /* metrics: the batch's (or connect's) start, 0 none */
    struct admission_waiter claim_turn; /* in q's claim line */
    struct session *next;
};

/* session.c */
void session_enter(struct session *s, enum session_state st);
void session_react(struct session *s, const struct session_event *ev);
void session_end(struct session *s);
bool session_returned(struct session *s);
void session_unreserve(struct session *s);
void session_postpone(struct session *s, long long ms);
void session_on_tokens(unsigned granted, unsigned wait_ms, void *arg);
void session_on_slot(int slot, void *arg);
/* A token wait as the session uses it: 20 ms .. 1 s. */
unsigned session_token_wait_ms(unsigned wait_ms);

/* session_claim.c */
void session_enter_tokens(struct session *s);
void session_enter_claim(struct session *s);
void session_enter_slot_claim(struct session *s);
void session_slot_claim_step(struct session *s);
bool session_may_slot_claim(const struct session *s);
void session_enter_tokens_claim(struct session *s);
/* Whether the queue or its source IP (source-ip-max-msg-rate) has a rate
 * limit, so that its claims take their tokens in the same statement
 * (mta.claim_many_rated). */
bool session_rated(const struct session *s);
bool session_may_slot_tokens_claim(const struct session *s);
/* Decodes the claimed rows; false when there is nothing to deliver. */
bool session_take_claim(struct session *s, const PGresult *res);
/* The queue's priority for its slots: max(queue-priority, the highest
 * priority of its ready recipients at the last poll). */
unsigned session_priority(const struct session *s);

#endif
