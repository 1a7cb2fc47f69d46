/* session: the delivery session state machine (see session.h).
 *
 * Ownership: a session owns its batch (the claim result and everything
 * decoded from it), its SMTP client, its DNS and MTA-STS requests (both
 * cancelled when it ends), an MX answer it keeps while the policy is due,
 * and its timer. The session_env (the worker's) owns the list of sessions;
 * the queue (admission) outlives its sessions. A request function may call its
 * callback before it returns or later: "pending" is set before each
 * request, the callback clears it, and a session that ended meanwhile is
 * freed by that callback instead of at the end of the loop turn. */
#include "session.h"
#include "session_int.h"
#include "session_finish.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "batch.h"
#include "db.h"
#include "destination.h"
#include "dns.h"
#include "log.h"
#include "metrics.h"
#include "mta_sts.h"
#include "policy.h"
#include "priority.h"
#include "queue.h"
#include "rollup.h"
#include "sched.h"
#include "smtp_client.h"
#include "srcip.h"
#include "util.h"
#include "warmup.h"

static const char *const state_names[] = {"rollup",
                                          "warmup",
                                          "ip-slot",
                                          "ip-connect-token",
                                          "slot",
                                          "slot+claim",
                                          "slot+tokens+claim",
                                          "connect-token",
                                          "tokens",
                                          "tokens+claim",
                                          "wait",
                                          "claim-queued",
                                          "claim",
                                          "policy+resolve",
                                          "resolve",
                                          "send",
                                          "finish",
                                          "finish-wait",
                                          "done"};
static const char *const event_names[] = {"warmup",     "slot",           "tokens", "claim-turn",
                                          "claimed",    "tokens-claimed", "policy", "resolved",
                                          "batch-done", "finished",       "timer"};

/* The wall clock, for what is stored (retry times, expiry against
 * queued_at, backoff end); deadlines use admission_now_ms. */
static long long
wall_us(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000000LL + tv.tv_usec;
}

struct db *
session_env_db(struct session_env *e)
{
    return queue_pick_db(e->dbs, e->ndbs, &e->rr);
}

/* ---- lifetime ---- */

void
session_unreserve(struct session *s)
{
    s->e->content_bytes -= s->reserved;
    s->reserved = 0;
}

static void
session_clear_batch(struct session *s)
{
    s->e->content_bytes -= batch_clear(&s->batch);
}

/* An MX answer kept beyond its callback (SESSION_POLICY_RESOLVE). */
static struct dns_result *
dns_result_dup(const struct dns_result *res)
{
    struct dns_result *c = xcalloc(1, sizeof *c);
    c->status = res->status;
    c->error = res->error ? xstrdup(res->error) : NULL;
    c->nhosts = res->nhosts;
    if (res->nhosts)
        c->hosts = xcalloc(res->nhosts, sizeof *c->hosts);
    for (size_t i = 0; i < res->nhosts; i++) {
        const struct dns_host *h = &res->hosts[i];
        c->hosts[i] = *h;
        c->hosts[i].name = h->name ? xstrdup(h->name) : NULL;
        c->hosts[i].addrs = NULL;
        if (h->naddrs) {
            c->hosts[i].addrs = xcalloc(h->naddrs, sizeof *h->addrs);
            memcpy(c->hosts[i].addrs, h->addrs, h->naddrs * sizeof *h->addrs);
        }
    }
    return c;
}

static void
dns_result_free(struct dns_result *res)
{
    if (!res)
        return;
    for (size_t i = 0; i < res->nhosts; i++) {
        free(res->hosts[i].name);
        free(res->hosts[i].addrs);
    }
    free(res->hosts);
    free(res->error);
    free(res);
}

static void
session_destroy(struct session *s)
{
    struct session_env *e = s->e;
    session_unreserve(s);
    session_clear_batch(s);
    free(s->limit_domain);
    free(s->ip_key);
    free(s->pattern_reply);
    mta_sts_policy_clear(&s->sts);
    dns_result_free(s->resolved);
    dns_result_free(s->dane_resolved);
    dane_set_clear(&s->dane);
    if (s->ev_timer)
        event_free(s->ev_timer);
    free(s);
    if (e->on_freed)
        e->on_freed(e->arg);
}

static void
session_free_cb(void *arg)
{
    session_destroy(arg);
}

/* First thing in every database or sched answer: false when the session
 * ended meanwhile (it is freed here, the answer ignored). */
bool
session_returned(struct session *s)
{
    s->pending--;
    if (s->state != SESSION_DONE)
        return true;
    if (s->pending == 0)
        session_destroy(s);
    return false;
}

/* Unlinks the session, gives back what it holds outside itself, and frees
 * it at the end of this loop turn (or from the answer it waits for). */
void
session_end(struct session *s)
{
    struct session_env *e = s->e;
    if (s->state == SESSION_DONE)
        return;
    enum session_state was = s->state;
    session_enter(s, SESSION_DONE);
    if (s->dnsreq) {
        dns_cancel(s->dnsreq);
        s->dnsreq = NULL;
    }
    mta_sts_cancel(s->stsreq);
    s->stsreq = NULL;
    s->sts_pending = false;
    dane_cancel(s->danereq);
    s->danereq = NULL;
    s->resolving = false;
    if (s->ev_timer)
        evtimer_del(s->ev_timer);
    if (was == SESSION_CLAIM_QUEUED)
        admission_claim_leave(s->q, &s->claim_turn);
    if (s->warmup_ip && s->warmup_left)
        warmup_refund(session_env_db(e), s->warmup_ip, s->limit_domain, s->warmup_left);
    s->warmup_left = 0;
    if (s->slot >= 0) {
        sched_release_slot(e->sched, s->limit_domain, s->source_vmta, s->slot);
        s->slot = -1;
    }
    if (s->ip_slot >= 0) {
        sched_release_slot(e->sched, s->ip_key, NULL, s->ip_slot);
        s->ip_slot = -1;
    }
    if (s->smtp) {
        if (s->usable)
            smtp_client_quit(s->smtp);
        else
            smtp_client_free(s->smtp);
        s->smtp = NULL;
        metrics_smtp_connections(-1);
    }
    for (struct session **pp = &e->sessions; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    e->nsessions--;
    s->q->active--;
    s->q->last_active = admission_now_ms();
    if (s->pending)
        return; /* freed by the answer */
    util_defer_free(e->base, session_free_cb, s);
}

static void
session_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_react(arg, &(struct session_event){.type = EV_TIMER});
}

/* The session's one timer (token and budget waits, finish retries). */
static void
session_timer(struct session *s, unsigned ms)
{
    if (!s->ev_timer)
        s->ev_timer = evtimer_new(s->e->base, session_on_timer, s);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(s->ev_timer, &tv);
}

/* The queue cannot be served for MS: rate tokens exhausted (the wait is
 * known), every slot taken cluster-wide, the destination throttled or
 * deferred. Held here, and postponed in the database so that no node is
 * offered it meanwhile (mta.queue_postpone). */
void
session_postpone(struct session *s, long long ms)
{
    if (ms <= 0)
        return;
    admission_hold(s->q, admission_now_ms(), ms);
    struct db *db = session_env_db(s->e);
    if (db)
        queue_postpone(db, s->e->pipe, s->q->domain, s->q->vmta, ms);
}

/* The source IP of virtual MTA NAME, or NULL. */
static const char *
vmta_source_ip(const struct conf *c, const char *name)
{
    const struct conf_vmta *v = name && name[0] ? conf_vmta_lookup(c, name) : NULL;
    return v ? v->smtp_source_host : NULL;
}

/* ---- outcomes ---- */

static double
draw_random(void)
{
    return (double)random() / (double)RAND_MAX;
}

/* Applies one failure to every recipient of the batch (see policy.h). */
static void
session_fail_all(struct session *s, bool permanent, int code, const char *status, const char *diag)
{
    policy_fail_all(s->dom, &s->batch, s->q->backoff, permanent, code, status, diag, wall_us(),
                    draw_random);
}

/* Makes the pattern effects of a batch known: backoff in the database (all
 * nodes see it, and it ends by itself backoff-to-normal-after after the last
 * matching reply), defer-queue in the database too (no node claims from the
 * queue for retry-after, the first entry of a list) and as a hold here. */
static void
session_after_patterns(struct session *s)
{
    if (s->pattern_effects & POLICY_EFFECT_BACKOFF) {
        s->q->backoff = true;
        struct db *db = session_env_db(s->e);
        if (db)
            queue_enter_backoff(db, s->q->domain, s->q->vmta,
                                wall_us() + (long long)s->dom->backoff_to_normal_after_ms * 1000LL,
                                s->pattern_reply);
        log_info("session=%llu queue=%s event=backoff until_s=%llu reply=\"%s\"",
                 (unsigned long long)s->id, s->q->name,
                 (unsigned long long)(s->dom->backoff_to_normal_after_ms / 1000),
                 s->pattern_reply ? s->pattern_reply : "");
    }
    if (s->pattern_effects & POLICY_EFFECT_DEFER_QUEUE) {
        session_postpone(s, (long long)s->dom->retry_after_ms);
        struct db *db = session_env_db(s->e);
        if (db)
            queue_defer(db, s->q->domain, s->q->vmta, (long long)s->dom->retry_after_ms,
                        s->pattern_reply);
        s->no_reuse = true;
        log_info("session=%llu queue=%s event=defer-queue for_s=%llu", (unsigned long long)s->id,
                 s->q->name, (unsigned long long)(s->dom->retry_after_ms / 1000));
    }
    if (s->pattern_effects & POLICY_EFFECT_DISABLE_SOURCE_IP) {
        const char *ip = vmta_source_ip(s->e->conf, s->source_vmta);
        if (ip && s->e->srcip) {
            long long ms = (long long)s->dom->reenable_after_ms;
            srcip_disable(s->e->srcip, session_env_db(s->e), s->q->domain, ip,
                          wall_us() + ms * 1000LL, ms, s->pattern_reply);
            s->no_reuse = true;
        }
        log_info("session=%llu queue=%s event=disable-source-ip source_ip=%s for_s=%llu",
                 (unsigned long long)s->id, s->q->name, ip ? ip : "(none)",
                 (unsigned long long)(s->dom->reenable_after_ms / 1000));
    }
    s->pattern_effects = 0;
    free(s->pattern_reply);
    s->pattern_reply = NULL;
}

/* ---- callbacks: arguments to events ---- */

void
session_on_slot(int slot, void *arg)
{
    struct session *s = arg;
    /* A slot granted to a session that ended meanwhile goes back at once. */
    if (s->state == SESSION_DONE && slot >= 0)
        sched_release_slot(s->e->sched, s->limit_domain, s->source_vmta, slot);
    if (session_returned(s))
        session_react(s, &(struct session_event){.type = EV_SLOT, .slot = slot});
}

/* The source IP's slot (rollup.h). */
static void
session_on_ip_slot(int slot, void *arg)
{
    struct session *s = arg;
    if (s->state == SESSION_DONE && slot >= 0)
        sched_release_slot(s->e->sched, s->ip_key, NULL, slot);
    if (session_returned(s))
        session_react(s, &(struct session_event){.type = EV_SLOT, .slot = slot});
}

void
session_on_tokens(unsigned granted, unsigned wait_ms, void *arg)
{
    struct session *s = arg;
    if (session_returned(s))
        session_react(
            s, &(struct session_event){.type = EV_TOKENS, .granted = granted, .wait_ms = wait_ms});
}

static void
session_on_dns(const struct dns_result *res, void *arg)
{
    struct session *s = arg;
    s->dnsreq = NULL;
    s->resolving = false;
    session_react(s, &(struct session_event){.type = EV_RESOLVED, .dns = res});
}

static void
session_on_policy(const struct mta_sts_result *r, void *arg)
{
    struct session *s = arg;
    s->stsreq = NULL;
    s->sts_pending = false;
    session_react(s, &(struct session_event){.type = EV_POLICY, .sts = r});
}

static void
session_on_batch(struct smtp_client *c, const struct smtp_rcpt_result *const *results,
                 const struct smtp_conn_info *info, bool usable, void *arg)
{
    (void)c;
    session_react(arg,
                  &(struct session_event){
                      .type = EV_BATCH_DONE, .results = results, .info = info, .usable = usable});
}

static void
session_on_finished(const PGresult *res, void *arg)
{
    struct session *s = arg;
    /* counted even when the session ended meanwhile (its batch is held) */
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK)
        metrics_count_finished(&s->batch, s->q->domain, s->q->vmta, s->e->pipe, wall_us());
    if (session_returned(s))
        session_react(s, &(struct session_event){.type = EV_FINISHED, .res = res});
}

/* ---- claim ---- */

/* ---- entering a state ---- */

static void session_enter_queue_slot(struct session *s);

/* A new connection's first state: its source IP's slot when limited, then
 * the queue's. The IP's key also serves its message rate (claims). */
static void
enter_first(struct session *s)
{
    const struct conf_vmta *vm = conf_vmta_lookup(s->e->conf, s->source_vmta);
    free(s->ip_key);
    s->ip_key = rollup_ip_key(vm);
    if (s->ip_key && rollup_ip_limits_connections(vm)) {
        session_enter(s, SESSION_IP_SLOT);
        return;
    }
    session_enter_queue_slot(s);
}

/* With the limit key known: the warm-up reservation of a warming source
 * IP, else the first slot. */
static void
session_begin(struct session *s)
{
    const struct conf_vmta *vm =
        s->source_vmta[0] ? conf_vmta_lookup(s->e->conf, s->source_vmta) : NULL;
    if (warmup_source_ip(vm))
        session_enter(s, SESSION_WARMUP);
    else
        enter_first(s);
}

/* The domain's MX set, for its automatic rollup key: through the DNS
 * cache, which the connection's own lookup then hits. */
static void
enter_rollup(struct session *s)
{
    s->resolving = true;
    struct dns_request *req =
        dns_resolve_mx(s->e->dns, s->q->domain, (uint16_t)s->e->conf->smtp_port, session_on_dns, s);
    if (s->resolving)
        s->dnsreq = req;
}

/* The key from the MX answer; any failure leaves the domain's own key (the
 * connection's lookup reports it). */
static void
react_rollup(struct session *s, const struct dns_result *res)
{
    const struct conf_provider *p = NULL;
    char *key = res && res->status == DNS_OK
                    ? rollup_mx_key(s->e->conf, s->q->domain, res->hosts, res->nhosts, &p)
                    : NULL;
    if (key) {
        free(s->limit_domain);
        s->limit_domain = key;
    }
    if (p) {
        rollup_apply_provider(&s->provider_dom, s->dom, p);
        s->dom = &s->provider_dom;
    }
    log_debug("session=%llu queue=%s event=rollup key=%s provider=%s", (unsigned long long)s->id,
              s->q->name, s->limit_domain, p ? p->name : "-");
    session_begin(s);
}

/* The queue's slot, with its first claim when that may go in parallel. */
static void
session_enter_queue_slot(struct session *s)
{
    session_enter(s, session_may_slot_tokens_claim(s) ? SESSION_SLOT_TOKENS_CLAIM
                     : session_may_slot_claim(s)      ? SESSION_SLOT_CLAIM
                                                      : SESSION_SLOT);
}

static void
session_on_warmup(const PGresult *res, void *arg)
{
    struct session *s = arg;
    if (session_returned(s))
        session_react(s, &(struct session_event){.type = EV_WARMUP, .res = res});
}

/* The session's source vmta is warming: reserve as many messages as the
 * connection may send. */
static void
enter_warmup(struct session *s)
{
    const struct conf_vmta *vm = conf_vmta_lookup(s->e->conf, s->source_vmta);
    struct db *db = session_env_db(s->e);
    unsigned want = s->dom->max_msg_per_connection ? s->dom->max_msg_per_connection : 1;
    s->pending++;
    if (!db ||
        warmup_take(db, warmup_source_ip(vm), s->limit_domain, want, session_on_warmup, s) < 0) {
        s->pending--;
        session_postpone(s, SESSION_SLOT_RETRY_MS);
        session_end(s);
    }
}

/* The reservation came back: within the plan, over it (to the overflow
 * pool, or wait for the next hour's allowance), or no plan applies. */
static void
react_warmup(struct session *s, const PGresult *res)
{
    unsigned granted = 0;
    bool warming = false;
    const struct conf_vmta *vm = conf_vmta_lookup(s->e->conf, s->source_vmta);
    if (!warmup_parse(res, &granted, &warming)) {
        log_warn("session=%llu queue=%s event=warmup-failed error=\"%s\"",
                 (unsigned long long)s->id, s->q->name,
                 res ? PQresultErrorMessage(res) : "no database connection");
        session_postpone(s, SESSION_SLOT_RETRY_MS);
        session_end(s);
        return;
    }
    if (warming && granted > 0) {
        s->warmup_ip = warmup_source_ip(vm);
        s->warmup_left = granted;
    } else if (warming) {
        const char *m = warmup_overflow_member(s->e->conf, vm, &s->q->pool_next);
        log_info("session=%llu queue=%s event=warmup-overflow from=%s to=%s",
                 (unsigned long long)s->id, s->q->name, s->source_vmta, m ? m : "-");
        if (!m) {
            session_postpone(s, 60000);
            session_end(s);
            return;
        }
        s->source_vmta = m;
    }
    enter_first(s);
}

static void
start_resolve(struct session *s)
{
    struct session_env *e = s->e;
    struct dns_request *req;
    s->resolving = true;
    if (s->dom->route) {
        char host[256];
        unsigned port;
        destination_parse_route(s->dom->route, host, sizeof host, 25, &port);
        req = dns_resolve_host(e->dns, host, (uint16_t)port, session_on_dns, s);
    } else {
        req = dns_resolve_mx(e->dns, s->q->domain, (uint16_t)e->conf->smtp_port, session_on_dns, s);
    }
    /* The answer may have come already (a cached one). */
    if (s->resolving)
        s->dnsreq = req;
}

/* The domain's MTA-STS policy, once per session, for MX deliveries only (a
 * route names its host: no MX to check), asked for together with the MX
 * hosts: a new domain's connection waits for the slower of the two answers,
 * not for their sum. The policy filters the hosts once both are there. */
static void
enter_policy_resolve(struct session *s)
{
    s->sts_pending = true;
    struct mta_sts_request *r = mta_sts_get(s->e->sts, s->q->domain, session_on_policy, s);
    if (s->sts_pending)
        s->stsreq = r;
    start_resolve(s);
}

static void
enter_resolve(struct session *s)
{
    if (!s->sts_done && s->e->sts && s->dom->mta_sts && !s->dom->route)
        session_enter(s, SESSION_POLICY_RESOLVE);
    else
        start_resolve(s);
}

static void
enter_send(struct session *s)
{
    if (!s->smtp_started_us)
        s->smtp_started_us = metrics_now_us();
    s->e->content_bytes += batch_smtp_messages(&s->batch, s->e->dkim, s->e->unsub);
    /* The client reads the array until the batch callback. */
    smtp_client_send(s->smtp, s->batch.smtp_msgs, s->batch.nmsgs, session_on_batch, s);
}

static void
enter_finish(struct session *s)
{
    struct session_env *e = s->e;
    struct db *db = session_env_db(e);
    s->pending++;
    int rc;
    if (db && e->finish && !e->stopping) {
        session_finish_add(e->finish, e->node_id, e->node_label, &s->batch,
                           e->conf->generate_bounces, session_on_finished, s);
        rc = 0;
    } else {
        rc = db ? queue_finish(db, e->node_id, e->node_label, &s->batch, e->conf->generate_bounces,
                               session_on_finished, s)
                : -1;
    }
    if (rc < 0) {
        s->pending--;
        session_react(s, &(struct session_event){.type = EV_FINISHED, .res = NULL});
    }
}

void
session_enter(struct session *s, enum session_state st)
{
    log_trace("session=%llu queue=%s event=state from=%s to=%s", (unsigned long long)s->id,
              s->q->name, state_names[s->state], state_names[st]);
    s->state = st;
    struct session_env *e = s->e;
    switch (st) {
    case SESSION_ROLLUP:
        enter_rollup(s);
        break;
    case SESSION_WARMUP:
        enter_warmup(s);
        break;
    case SESSION_IP_SLOT:
        s->pending++;
        sched_take_slot(e->sched, s->ip_key, NULL,
                        rollup_ip_max_smtp_out(conf_vmta_lookup(e->conf, s->source_vmta)),
                        session_on_ip_slot, s);
        break;
    case SESSION_IP_CONNECT_TOKEN:
        s->pending++;
        sched_take_tokens(e->sched, s->ip_key, NULL, SCHED_CONNECT,
                          rollup_ip_connect_rate(conf_vmta_lookup(e->conf, s->source_vmta)), 1,
                          session_on_tokens, s);
        break;
    case SESSION_SLOT_CLAIM:
    case SESSION_SLOT_TOKENS_CLAIM:
        session_enter_slot_claim(s);
        break;
    case SESSION_TOKENS_CLAIM:
        session_enter_tokens_claim(s);
        break;
    case SESSION_SLOT:
        s->pending++;
        sched_take_slot_prio(e->sched, s->limit_domain, s->source_vmta, s->q->domain, s->q->vmta,
                             s->dom->max_smtp_out, session_priority(s), session_on_slot, s);
        break;
    case SESSION_CONNECT_TOKEN:
        s->pending++;
        sched_take_tokens(e->sched, s->limit_domain, s->source_vmta, SCHED_CONNECT,
                          &s->dom->max_connect_rate, 1, session_on_tokens, s);
        break;
    case SESSION_TOKENS:
        session_enter_tokens(s);
        break;
    case SESSION_WAIT:
    case SESSION_FINISH_WAIT:
        session_timer(s, st == SESSION_WAIT ? s->timer_ms : 1000);
        break;
    case SESSION_CLAIM_QUEUED:
        admission_claim_wait(s->q, &s->claim_turn, s);
        break;
    case SESSION_CLAIM:
        session_enter_claim(s);
        break;
    case SESSION_POLICY_RESOLVE:
        enter_policy_resolve(s);
        break;
    case SESSION_RESOLVE:
        enter_resolve(s);
        break;
    case SESSION_SEND:
        enter_send(s);
        break;
    case SESSION_FINISH:
        enter_finish(s);
        break;
    case SESSION_DONE:
        break;
    }
}

/* ---- reacting to an event ---- */

/* The TLS policy facts of this session's attempts (mta.acct, TLS-RPT):
 * INFO with the policy, its domain and a failure the client did not see
 * (an MX host outside a testing policy). */
static struct smtp_conn_info
session_tls_info(const struct session *s, const struct smtp_conn_info *info)
{
    struct smtp_conn_info out = info ? *info : (struct smtp_conn_info){0};
    if (out.tls_policy) {
        /* DANE applied (RFC 8461 2: it wins over MTA-STS) */
        out.tls_policy_domain = s->q->domain;
        return out;
    }
    if (!s->sts_looked_up)
        return out;
    out.tls_policy_domain = s->q->domain;
    if (s->sts.mode == MTA_STS_NONE) {
        out.tls_policy = "no-policy-found";
        if (!out.tls_failure)
            out.tls_failure = s->sts_failure;
        return out;
    }
    out.tls_policy = "sts";
    if (!out.tls_failure && out.host && !mta_sts_policy_allows(&s->sts, out.host))
        out.tls_failure = "validation-failure";
    return out;
}

static void
react_policy(struct session *s, const struct mta_sts_result *r)
{
    s->sts_done = true;
    s->sts_looked_up = true;
    mta_sts_policy_clear(&s->sts);
    if (r->mode != MTA_STS_NONE)
        mta_sts_policy_copy(&s->sts, r->policy);
    s->sts_failure = r->failure;
    log_debug("session=%llu queue=%s event=mta-sts mode=%s failure=%s", (unsigned long long)s->id,
              s->q->name, mta_sts_mode_name(s->sts.mode), r->failure ? r->failure : "-");
}

static void react_resolved(struct session *s, const struct dns_result *res);

static void
session_on_dane(void *arg)
{
    struct session *s = arg;
    s->danereq = NULL;
    struct dns_result *res = s->dane_resolved;
    react_resolved(s, res);
    s->dane_resolved = NULL;
    dns_result_free(res);
}

/* RFC 7672 2.2: the TLSA records of the validated MX hosts, before the
 * connection; true when they are being looked up (RES is kept). */
static bool
dane_start(struct session *s, const struct dns_result *res)
{
    if (s->dane_resolved == res)
        return false; /* they are there */
    dane_set_clear(&s->dane);
    if (!s->dom->dane || s->dom->route || !dane_wanted(res))
        return false;
    s->dane_resolved = dns_result_dup(res);
    s->danereq = dane_lookup(s->e->dns, res, &s->dane, session_on_dane, s);
    return true;
}

static void
react_resolved(struct session *s, const struct dns_result *res)
{
    struct session_env *e = s->e;
    struct destination_failure f;
    if (dane_start(s, res))
        return;
    s->smtp_started_us = metrics_now_us(); /* the connect counts for its first batch */
    s->smtp = destination_connect(e->base, e->conf, s->dom, s->source_vmta, s->q->domain,
                                  s->q->name, res, s->sts_looked_up ? &s->sts : NULL, &s->dane, &f);
    if (!s->smtp) {
        struct smtp_conn_info info = session_tls_info(s, NULL);
        if (f.tls_failure)
            info.tls_failure = f.tls_failure;
        batch_set_connection(&s->batch, &info);
        session_fail_all(s, f.permanent, f.code, f.status, f.diag);
        free(f.diag);
        session_enter(s, SESSION_FINISH);
        return;
    }
    smtp_client_set_dane(s->smtp, &s->dane);
    metrics_smtp_connections(1);
    s->usable = true;
    s->connect_reported = false;
    session_enter(s, SESSION_SEND);
}

/* SESSION_POLICY_RESOLVE: the policy and the MX answer come in either
 * order; the MX answer is kept until the policy is there, then the session
 * connects as from SESSION_RESOLVE. */
static void
react_policy_resolve(struct session *s, const struct session_event *ev)
{
    if (ev->type == EV_RESOLVED) {
        if (s->sts_pending)
            s->resolved = dns_result_dup(ev->dns);
        else
            react_resolved(s, ev->dns);
        return;
    }
    react_policy(s, ev->sts);
    if (s->resolving)
        return; /* the MX answer is due */
    struct dns_result *res = s->resolved;
    PGMTA_ASSERT(res != NULL); /* neither answer comes before its request returned */
    s->resolved = NULL;
    react_resolved(s, res);
    dns_result_free(res);
}

static void
react_batch_done(struct session *s, const struct session_event *ev)
{
    struct batch *b = &s->batch;
    s->usable = ev->usable;
    struct smtp_conn_info info = session_tls_info(s, ev->info);
    batch_set_connection(b, &info);
    for (size_t i = 0; i < b->nmsgs; i++)
        metrics_observe_since(METRICS_H_DELIVERY, s->smtp_started_us);
    s->smtp_started_us = 0;
    bool answered = policy_batch_outcomes(s->dom, b, ev->results, s->q->backoff, wall_us(),
                                          draw_random, &s->pattern_effects, &s->pattern_reply);
    s->sent += (unsigned)b->nmsgs;
    if (!s->connect_reported) {
        /* Feedback for admission: did any MX answer at all? */
        s->connect_reported = true;
        long long now = admission_now_ms();
        if (admission_connected(s->q, s->dom, answered, now))
            session_postpone(s, s->q->throttle_until - now);
    }
    session_after_patterns(s);
    if (!ev->usable) {
        smtp_client_free(s->smtp);
        s->smtp = NULL;
        metrics_smtp_connections(-1);
    }
    session_enter(s, SESSION_FINISH);
}

static void
react_finished(struct session *s, const PGresult *res)
{
    struct session_env *e = s->e;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* Keep the outcome and try again while our leases are valid: the
         * database may be restarting. After that, the leases expire and the
         * recipients are delivered again (a duplicate, never a loss). */
        long long left = s->lease_deadline_ms - admission_now_ms();
        log_warn("session=%llu queue=%s event=finish-failed error=\"%s\" lease_left_ms=%lld",
                 (unsigned long long)s->id, s->q->name,
                 res ? PQresultErrorMessage(res) : "no database connection", left);
        if (left <= 1000)
            session_end(s);
        else
            session_enter(s, SESSION_FINISH_WAIT);
        return;
    }
    long long finished = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    size_t counts[3] = {0, 0, 0};
    for (size_t i = 0; i < s->batch.nrcpts; i++) {
        char t = s->batch.rcpts[i].type;
        counts[t == 'd' ? 0 : t == 'b' ? 1 : 2]++;
    }
    /* The statement is shared by the sessions of a finish group
     * (session_finish.h): its count covers the whole group, so rows fenced
     * off (a lease another node took over) show as a group count below the
     * group's rows, not per session. */
    log_info("session=%llu queue=%s event=finished rcpts=%zu delivered=%zu bounced=%zu "
             "deferred=%zu group-finished=%lld",
             (unsigned long long)s->id, s->q->name, s->batch.nrcpts, counts[0], counts[1],
             counts[2], finished);
    session_clear_batch(s);
    bool warmup_used = s->warmup_ip && s->warmup_left == 0;
    if (s->smtp && s->usable && !s->no_reuse && !s->drained && !e->stopping && !warmup_used &&
        s->sent < s->dom->max_msg_per_connection) {
        session_enter(s, SESSION_TOKENS);
        return;
    }
    if (s->sent >= s->dom->max_msg_per_connection && s->dom->max_smtp_out != CONF_UNLIMITED) {
        /* The connection is used up and its slot goes back: let the other
         * nodes of the cluster have a turn at it before this one asks again
         * (a short random pause, shorter than the fast poll of the others). */
        long long pause_ms = SESSION_FAST_POLL_MS + random() % (3 * SESSION_FAST_POLL_MS);
        admission_hold(s->q, admission_now_ms(), pause_ms);
    }
    session_end(s);
}

unsigned
session_token_wait_ms(unsigned wait_ms)
{
    return wait_ms < 20 ? 20 : wait_ms > 1000 ? 1000 : wait_ms;
}

static void
react_tokens(struct session *s, const struct session_event *ev)
{
    if (ev->granted > 0) {
        s->tokens = ev->granted;
        s->token_waited_ms = 0;
        session_enter(s, SESSION_CLAIM);
        return;
    }
    unsigned wait_ms = session_token_wait_ms(ev->wait_ms);
    /* A connected session waits a little for the rate to allow the next
     * message; an unconnected one gives up its slot at once. */
    if (s->smtp && !s->e->stopping && s->token_waited_ms + wait_ms <= SESSION_MAX_TOKEN_WAIT_MS) {
        s->token_waited_ms += wait_ms;
        s->timer_ms = wait_ms;
        session_enter(s, SESSION_WAIT);
        return;
    }
    session_postpone(s, wait_ms);
    session_end(s);
}

void
session_react(struct session *s, const struct session_event *ev)
{
    log_trace("session=%llu queue=%s event=%s state=%s", (unsigned long long)s->id, s->q->name,
              event_names[ev->type], state_names[s->state]);
    switch (s->state) {
    case SESSION_ROLLUP:
        if (ev->type != EV_RESOLVED)
            break;
        react_rollup(s, ev->dns);
        return;
    case SESSION_WARMUP:
        if (ev->type != EV_WARMUP)
            break;
        react_warmup(s, ev->res);
        return;
    case SESSION_IP_SLOT:
        if (ev->type != EV_SLOT)
            break;
        if (ev->slot < 0) {
            /* Every slot of the source IP is taken in the cluster. */
            session_postpone(s, SESSION_SLOT_RETRY_MS);
            session_end(s);
            return;
        }
        s->ip_slot = ev->slot;
        if (rollup_ip_connect_rate(conf_vmta_lookup(s->e->conf, s->source_vmta)))
            session_enter(s, SESSION_IP_CONNECT_TOKEN);
        else
            session_enter_queue_slot(s);
        return;
    case SESSION_IP_CONNECT_TOKEN:
        if (ev->type != EV_TOKENS)
            break;
        if (ev->granted == 0) {
            session_postpone(s, ev->wait_ms ? ev->wait_ms : 100);
            session_end(s);
            return;
        }
        session_enter_queue_slot(s);
        return;
    case SESSION_SLOT:
        if (ev->type != EV_SLOT)
            break;
        if (ev->slot < 0) {
            /* Every slot of the queue is taken somewhere in the cluster: do
             * not ask again on every scheduler tick. */
            session_postpone(s, SESSION_SLOT_RETRY_MS);
            session_end(s);
            return;
        }
        s->slot = ev->slot;
        session_enter(s, SESSION_CONNECT_TOKEN);
        return;
    case SESSION_SLOT_CLAIM:
    case SESSION_SLOT_TOKENS_CLAIM:
        if (ev->type == EV_SLOT) {
            s->slot_answer = ev->slot;
            s->slot = ev->slot >= 0 ? ev->slot : -1;
        } else if (ev->type == (s->state == SESSION_SLOT_CLAIM ? EV_CLAIMED : EV_TOKENS_CLAIMED)) {
            s->claim_answered = true;
            if (ev->type == EV_TOKENS_CLAIMED) {
                s->tokens = ev->granted;
                s->claim_wait_ms = ev->wait_ms;
            }
            s->claim_ok = session_take_claim(s, ev->res);
        } else {
            break;
        }
        session_slot_claim_step(s);
        return;
    case SESSION_TOKENS_CLAIM:
        if (ev->type != EV_TOKENS_CLAIMED)
            break;
        s->tokens = ev->granted;
        if (session_take_claim(s, ev->res)) {
            s->token_waited_ms = 0;
            session_enter(s, s->smtp ? SESSION_SEND : SESSION_RESOLVE);
        } else if (ev->wait_ms) {
            react_tokens(s, &(struct session_event){.type = EV_TOKENS, .wait_ms = ev->wait_ms});
        } else {
            session_end(s);
        }
        return;
    case SESSION_CONNECT_TOKEN:
        if (ev->type != EV_TOKENS)
            break;
        if (ev->granted == 0) {
            session_postpone(s, ev->wait_ms ? ev->wait_ms : 100);
            session_end(s);
            return;
        }
        session_enter(s, SESSION_TOKENS);
        return;
    case SESSION_TOKENS:
        if (ev->type != EV_TOKENS)
            break;
        react_tokens(s, ev);
        return;
    case SESSION_WAIT:
        if (ev->type != EV_TIMER)
            break;
        session_enter(s, SESSION_TOKENS);
        return;
    case SESSION_CLAIM_QUEUED:
        if (ev->type != EV_CLAIM_TURN)
            break;
        session_enter(s, session_rated(s) ? SESSION_TOKENS_CLAIM : SESSION_CLAIM);
        return;
    case SESSION_CLAIM:
        if (ev->type != EV_CLAIMED)
            break;
        if (!session_take_claim(s, ev->res))
            session_end(s);
        else
            session_enter(s, s->smtp ? SESSION_SEND : SESSION_RESOLVE);
        return;
    case SESSION_POLICY_RESOLVE:
        if (ev->type != EV_POLICY && ev->type != EV_RESOLVED)
            break;
        react_policy_resolve(s, ev);
        return;
    case SESSION_RESOLVE:
        if (ev->type != EV_RESOLVED)
            break;
        react_resolved(s, ev->dns);
        return;
    case SESSION_SEND:
        if (ev->type != EV_BATCH_DONE)
            break;
        react_batch_done(s, ev);
        return;
    case SESSION_FINISH:
        if (ev->type != EV_FINISHED)
            break;
        react_finished(s, ev->res);
        return;
    case SESSION_FINISH_WAIT:
        if (ev->type != EV_TIMER)
            break;
        session_enter(s, SESSION_FINISH);
        return;
    case SESSION_DONE:
        return; /* late events of an ended session are ignored */
    }
    log_error("session=%llu queue=%s event=unexpected got=%s state=%s", (unsigned long long)s->id,
              s->q->name, event_names[ev->type], state_names[s->state]);
    util_panic(__func__, "event not expected in this state");
}

/* ---- the env's sessions ---- */

/* The next member of POOL in turn whose source IP disable-source-ip has not
 * taken out of use for the queue's domain; when every member is disabled,
 * the next one in turn (the queue keeps moving; see README). */
static const char *
session_pool_member(struct session_env *e, struct admission_queue *q,
                    const struct conf_vmta_pool *pool)
{
    long long now = wall_us();
    for (size_t k = 0; k < pool->nmembers; k++) {
        const char *m = pool->members[(q->pool_next + k) % pool->nmembers];
        if (!srcip_disabled(e->srcip, q->domain, vmta_source_ip(e->conf, m), now)) {
            q->pool_next += (unsigned)k + 1;
            return m;
        }
    }
    return pool->members[q->pool_next++ % pool->nmembers];
}

void
session_start(struct session_env *e, struct admission_queue *q, const struct conf_domain *dom)
{
    struct session *s = xcalloc(1, sizeof *s);
    s->id = ++e->next_id;
    s->e = e;
    s->q = q;
    s->dom = dom;
    s->state = SESSION_SLOT;
    s->slot = -1;
    s->ip_slot = -1;
    s->limit_domain = rollup_static_key(dom, q->domain);
    /* A queue whose virtual MTA is a pool sends through its members in turn;
     * limits then apply per member (per source address). */
    const struct conf_vmta_pool *pool = q->vmta[0] ? conf_vmta_pool_lookup(e->conf, q->vmta) : NULL;
    s->source_vmta = pool && pool->nmembers ? session_pool_member(e, q, pool) : q->vmta;
    s->next = e->sessions;
    e->sessions = s;
    e->nsessions++;
    q->active++;
    q->last_active = admission_now_ms();
    log_debug("session=%llu queue=%s event=start active=%u source=%s", (unsigned long long)s->id,
              q->name, q->active, s->source_vmta);
    if (rollup_automatic(dom) && e->dns) {
        s->state = SESSION_ROLLUP;
        session_enter(s, SESSION_ROLLUP);
    } else {
        session_begin(s);
    }
}

void
session_end_all(struct session_env *e)
{
    while (e->sessions)
        session_end(e->sessions);
}

void
session_slots_lost(struct session_env *e)
{
    for (struct session *s = e->sessions; s; s = s->next) {
        s->slot = -1;
        s->ip_slot = -1;
        s->no_reuse = true;
    }
}
