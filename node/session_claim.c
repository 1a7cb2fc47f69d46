/* session_claim: the claim side of a delivery session - the content budget
 * a claim must fit, message tokens in messages, one claim of a queue at a
 * time, the slot and first claim of a new connection in parallel, decoding
 * the claimed rows, and giving back rows that will not be sent. The session
 * (session.c) owns everything; these functions act on it and enter its next
 * state. */
#include <libpq-fe.h>

#include "admission.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "priority.h"
#include "queue.h"
#include "rollup.h"
#include "sched.h"
#include "session_claims.h"
#include "session_int.h"
#include "util.h"

static void session_on_claimed(const PGresult *res, void *arg);

/* The message rate now: the backoff one while the queue is in backoff. */
static const struct conf_rate *
msg_rate(const struct session *s)
{
    return s->q->backoff ? &s->dom->backoff_max_msg_rate : &s->dom->max_msg_rate;
}

/* The source IP's message rate (source-ip-max-msg-rate), or NULL: none, or
 * no key to count it under. */
static const struct conf_rate *
ip_msg_rate(const struct session *s)
{
    return s->ip_key ? rollup_ip_msg_rate(conf_vmta_lookup(s->e->conf, s->source_vmta)) : NULL;
}

/* The queue's claim returned: the next waiting session claims. */
static void
queue_claim_done(struct admission_queue *q)
{
    q->claiming = false;
    struct session *s = admission_claim_next(q);
    if (s)
        session_react(s, &(struct session_event){.type = EV_CLAIM_TURN});
}

/* A claim's answer to the session as EV (res filled in here). */
static void
claim_answer(struct session *s, const PGresult *res, struct session_event *ev)
{
    struct admission_queue *q = s->q;
    session_unreserve(s);
    ev->res = res;
    if (session_returned(s))
        session_react(s, ev);
    /* The next claim of the queue only after this one's rows are decoded. */
    queue_claim_done(q);
}

static void
session_on_claimed(const PGresult *res, void *arg)
{
    claim_answer(arg, res, &(struct session_event){.type = EV_CLAIMED});
}

/* The answer of mta.claim_many_rated: the messages granted and the wait
 * (on every row of the queue), and the messages claimed, whose tokens the
 * statement spent (rows come ordered by message). */
static void
session_on_tokens_claimed(const PGresult *res, void *arg)
{
    struct session *s = arg;
    struct session_event ev = {.type = EV_TOKENS_CLAIMED};
    s->tokens_spent = 0;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0) {
        int c_tokens = PQfnumber(res, "tokens"), c_wait = PQfnumber(res, "wait_ms");
        int c_id = PQfnumber(res, "rcpt_id"), c_mid = PQfnumber(res, "message_id");
        if (c_tokens >= 0 && !PQgetisnull(res, 0, c_tokens))
            ev.granted = (unsigned)db_get_int4(res, 0, c_tokens);
        if (c_wait >= 0 && !PQgetisnull(res, 0, c_wait))
            ev.wait_ms = (unsigned)db_get_int4(res, 0, c_wait);
        long long last = -1;
        for (int row = 0; c_id >= 0 && c_mid >= 0 && row < PQntuples(res); row++) {
            if (PQgetisnull(res, row, c_id) || PQgetisnull(res, row, c_mid))
                continue;
            long long mid = db_get_int8(res, row, c_mid);
            if (mid != last)
                s->tokens_spent++;
            last = mid;
        }
    }
    claim_answer(s, res, &ev);
}

static void
session_set_aside(long long id, long long token, const char *reason, void *arg)
{
    struct session *s = arg;
    struct db *db = session_env_db(s->e);
    log_warn("session=%llu queue=%s event=set-aside rcpt_id=%lld reason=\"%s\"",
             (unsigned long long)s->id, s->q->name, id, reason);
    if (db)
        queue_set_aside(db, id, token, reason);
}

/* Gives back the transactions of the claimed batch beyond KEEP (their
 * recipients become claimable again at once, their attempt not counted);
 * with REFUND, the tokens their claim spent too, in the same statement. */
static void
session_give_back(struct session *s, size_t keep, bool refund)
{
    if (s->batch.nmsgs <= keep)
        return;
    struct buf ids, tokens;
    buf_init(&ids);
    buf_init(&tokens);
    size_t before = s->batch.nrcpts;
    s->e->content_bytes -= batch_trim(&s->batch, keep, &ids, &tokens);
    log_debug("session=%llu queue=%s event=trim rcpts=%zu refund_msgs=%u refund_connect=%d",
              (unsigned long long)s->id, s->q->name, before - s->batch.nrcpts,
              refund ? s->tokens_spent : 0, refund && s->connect_token);
    struct db *db = session_env_db(s->e);
    if (db && refund)
        queue_release_refund(db, s->e->node_id, ids.data, tokens.data, s->limit_domain,
                             s->source_vmta, s->tokens_spent, s->connect_token ? 1 : 0,
                             s->ip_msg_tokens ? s->ip_key : NULL);
    else if (db)
        queue_release(db, s->e->node_id, ids.data, tokens.data);
    buf_free(&ids);
    buf_free(&tokens);
}

static void
session_trim(struct session *s, size_t keep)
{
    session_give_back(s, keep, false);
}

/* Decodes the claimed rows; false when there is nothing to deliver. */
bool
session_take_claim(struct session *s, const PGresult *res)
{
    struct session_env *e = s->e;
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
        log_warn("session=%llu queue=%s event=claim-failed error=\"%s\"", (unsigned long long)s->id,
                 s->q->name, res ? PQresultErrorMessage(res) : "no database connection");
        return false;
    }
    int lease_left_ms;
    /* A short claim means the queue had no more ready rows for us: the
     * session ends after this batch instead of claiming nothing, and the
     * worker starts no second session for the queue on this evidence. */
    unsigned rows = (unsigned)PQntuples(res);
    int c_id = PQfnumber(res, "rcpt_id");
    if (rows == 1 && c_id >= 0 && PQgetisnull(res, 0, c_id))
        rows = 0; /* the one row of a rated claim that claimed nothing */
    int c_capped = PQfnumber(res, "capped");
    bool capped = rows > 0 && c_capped >= 0 && !PQgetisnull(res, 0, c_capped) &&
                  PQgetvalue(res, 0, c_capped)[0] != 0;
    s->drained = rows < s->claim_limit && !capped;
    if (!capped)
        e->avg_claim_rows = 0.9 * e->avg_claim_rows + 0.1 * (double)rows;
    metrics_observe(METRICS_H_CLAIM, rows);
    s->q->more_work = !s->drained;
    if (rows == 0)
        return false;
    s->batch.verp = e->verp;
    size_t held = batch_decode(&s->batch, res, s->dom->max_rcpt_per_message, e->unsub,
                               session_set_aside, s, &lease_left_ms);
    s->batch.notify_delay_every_s = (unsigned)(s->dom->notify_of_delay_every_ms / 1000);
    e->content_bytes += held;
    /* The lease deadline is the server's (lease_until, as time left when
     * the rows were sent), on our monotonic clock. */
    s->lease_deadline_ms = admission_now_ms() + lease_left_ms;
    struct batch *b = &s->batch;
    batch_learn(b, held, &e->avg_row_bytes);
    /* Fewer rows than asked for, but more messages than this connection
     * takes now (an interruptible one takes one at a time): the rest,
     * given back below, are there for its next claim. */
    if (s->drained && b->nmsgs > s->tokens) {
        s->drained = false;
        s->q->more_work = true;
    }
    session_trim(s, s->tokens);
    if (s->warmup_ip)
        s->warmup_left -= b->nmsgs < s->warmup_left ? (unsigned)b->nmsgs : s->warmup_left;
    log_debug("session=%llu queue=%s event=claimed rcpts=%zu messages=%zu",
              (unsigned long long)s->id, s->q->name, b->nrcpts, b->nmsgs);
    return b->nrcpts > 0;
}

/* Whether the content budget lets a claim go now: its smallest
 * reservation fits beside what is held and reserved, or nothing is
 * (progress). */
static bool
claim_fits(const struct session_env *e)
{
    return e->content_bytes == 0 ||
           e->content_bytes + SESSION_CLAIM_MIN_BYTES <= SESSION_CONTENT_BUDGET;
}

/* What a claim of up to ROWS of queue Q reserves, and so may bring: a
 * full claim for a queue whose last claim came back full, else twice the
 * rows claims bring on average (a long tail of one- or two-message queues
 * then costs little each); within what the budget has left, at least the
 * smallest reservation. Guessing low costs a second claim, never memory:
 * the database returns no more than reserved. */
static size_t
claim_reservation(const struct session_env *e, const struct admission_queue *q, unsigned rows)
{
    double expect = q->more_work ? (double)rows : 2.0 * e->avg_claim_rows + 1.0;
    if (expect > (double)rows)
        expect = (double)rows;
    size_t want = (size_t)(expect * e->avg_row_bytes);
    size_t left =
        e->content_bytes < SESSION_CONTENT_BUDGET ? SESSION_CONTENT_BUDGET - e->content_bytes : 0;
    if (want > left)
        want = left;
    return want < SESSION_CLAIM_MIN_BYTES ? SESSION_CLAIM_MIN_BYTES : want;
}

/* The messages a claim of this connection asks for: one at a time for a
 * connection that a queue of higher priority may interrupt (it asks between
 * messages). */
static unsigned
claim_want(const struct session *s)
{
    if (s->dom->allow_priority_interruption)
        return 1;
    unsigned want = s->dom->max_msg_per_connection - s->sent;
    if (s->warmup_ip && want > s->warmup_left)
        want = s->warmup_left; /* a warming IP's reservation (warmup.h) */
    return want > SESSION_BATCH_MAX ? SESSION_BATCH_MAX : want;
}

static void send_claim(struct session *s);

static void session_tokens_go(struct session *s);

/* The queue's priority in the slot order of its key (README, Priorities):
 * its queue-priority, or the highest priority of its ready recipients at
 * the last poll when that is higher. */
unsigned
session_priority(const struct session *s)
{
    return priority_effective(priority_of_queue(s->e->conf, s->dom, s->source_vmta),
                              s->q->ready_prio);
}

/* The answer of priority_check: a queue above ours waits for the key, so
 * this connection quits (its slot goes to that queue), else goes on. */
static void
session_on_priority(bool waiting, void *arg)
{
    struct session *s = arg;
    if (!session_returned(s))
        return;
    if (waiting) {
        log_info("session=%llu queue=%s event=priority-interruption sent=%u",
                 (unsigned long long)s->id, s->q->name, s->sent);
        session_end(s);
        return;
    }
    session_tokens_go(s);
}

void
session_enter_tokens(struct session *s)
{
    /* Between the messages of an interruptible connection: does a queue of
     * higher priority wait for our key? */
    if (s->smtp && s->sent > 0 && s->slot >= 0 && s->dom->allow_priority_interruption &&
        priority_check(session_env_db(s->e), s->limit_domain, s->source_vmta, session_priority(s),
                       session_on_priority, s) == 0) {
        s->pending++;
        return;
    }
    session_tokens_go(s);
}

static void
session_tokens_go(struct session *s)
{
    struct session_env *e = s->e;
    unsigned want = claim_want(s);
    /* Over the budget, a new connection gives up and a connected one waits
     * a little. */
    if (!claim_fits(e)) {
        if (s->smtp && !e->stopping && s->token_waited_ms + 50 <= SESSION_MAX_TOKEN_WAIT_MS) {
            s->token_waited_ms += 50;
            s->timer_ms = 50;
            session_enter(s, SESSION_WAIT);
            return;
        }
        session_end(s);
        return;
    }
    if (session_rated(s)) {
        /* the tokens come with the claim */
        session_enter(s, s->q->claiming ? SESSION_CLAIM_QUEUED : SESSION_TOKENS_CLAIM);
        return;
    }
    s->pending++;
    sched_take_tokens(e->sched, s->limit_domain, s->source_vmta, SCHED_MSG, msg_rate(s), want,
                      session_on_tokens, s);
}

/* Sends the claim for s->tokens messages; with their rate tokens
 * (mta.claim_many_rated) when RATED, and a connect token when CONNECT. */
static void
send_claim_of(struct session *s, bool rated, bool connect)
{
    struct session_env *e = s->e;
    unsigned limit = batch_claim_rows(s->dom->max_rcpt_per_message, s->tokens, SESSION_BATCH_MAX);
    s->claim_limit = limit;
    /* Claims in flight count against the budget until their rows arrive. */
    s->reserved = claim_reservation(e, s->q, limit);
    e->content_bytes += s->reserved;
    s->q->claiming = true;
    s->pending++;
    /* with the claims of other sessions of this loop turn, in one statement */
    if (!rated) {
        session_claims_add(e->claims, e->node_id, e->pipe, s->q->domain, s->q->vmta, limit,
                           e->conf->lease_ms, s->reserved, session_on_claimed, s);
        return;
    }
    s->connect_token = connect && s->dom->max_connect_rate.count != CONF_UNLIMITED;
    const struct conf_rate *ip_rate = ip_msg_rate(s);
    s->ip_msg_tokens = ip_rate != NULL;
    struct session_claims_rate rate = {s->limit_domain,
                                       s->source_vmta,
                                       s->tokens,
                                       msg_rate(s),
                                       s->connect_token ? &s->dom->max_connect_rate : NULL,
                                       ip_rate ? s->ip_key : NULL,
                                       ip_rate};
    session_claims_add_rated(e->claims, e->node_id, e->pipe, s->q->domain, s->q->vmta, limit,
                             e->conf->lease_ms, s->reserved, &rate, session_on_tokens_claimed, s);
}

static void
send_claim(struct session *s)
{
    send_claim_of(s, false, false);
}

/* A rate-limited queue's claim on its connection: the message tokens and
 * the rows in one statement. */
void
session_enter_tokens_claim(struct session *s)
{
    s->tokens = claim_want(s);
    send_claim_of(s, true, false);
}

void
session_enter_claim(struct session *s)
{
    if (s->q->claiming)
        session_enter(s, SESSION_CLAIM_QUEUED); /* one claim of a queue at a time */
    else
        send_claim(s);
}

/* A new connection: the slot and, in parallel, the first claim - one round
 * trip before the first byte. In SESSION_SLOT_TOKENS_CLAIM (a rate-limited
 * queue) the claim's statement takes the connect token and the message
 * tokens too, instead of three more round trips. Rows claimed for a slot
 * that is refused are given back at once, with the tokens they cost. */
void
session_enter_slot_claim(struct session *s)
{
    struct session_env *e = s->e;
    bool rated = s->state == SESSION_SLOT_TOKENS_CLAIM;
    s->slot_answer = -2;
    s->claim_answered = s->claim_ok = false;
    s->claim_wait_ms = 0;
    s->tokens = claim_want(s);
    send_claim_of(s, rated, rated);
    s->pending++;
    sched_take_slot_prio(e->sched, s->limit_domain, s->source_vmta, s->q->domain, s->q->vmta,
                         s->dom->max_smtp_out, session_priority(s), session_on_slot, s);
}

/* Both answers of SESSION_SLOT_CLAIM or SESSION_SLOT_TOKENS_CLAIM are in:
 * go on, or give back. */
void
session_slot_claim_step(struct session *s)
{
    if (s->slot_answer == -2 || !s->claim_answered)
        return;
    if (s->slot_answer < 0) {
        session_postpone(s, SESSION_SLOT_RETRY_MS);
        session_give_back(s, 0, s->state == SESSION_SLOT_TOKENS_CLAIM);
        session_end(s);
    } else if (!s->claim_ok) {
        /* the rate allows nothing yet: no node is offered the queue until
         * its next token is due */
        if (s->claim_wait_ms)
            session_postpone(s, session_token_wait_ms(s->claim_wait_ms));
        session_end(s);
    } else {
        session_enter(s, SESSION_RESOLVE);
    }
}

/* Whether a new session may take its slot and first claim in parallel:
 * the slot costs a round trip, no rate needs tokens first, no claim of the
 * queue is in flight, and the claim fits the budget. */
bool
session_may_slot_claim(const struct session *s)
{
    const struct session_env *e = s->e;
    const struct conf_domain *d = s->dom;
    const struct conf_rate *rate = msg_rate(s);
    return d->max_smtp_out != CONF_UNLIMITED && d->max_connect_rate.count == CONF_UNLIMITED &&
           rate->count == CONF_UNLIMITED && !ip_msg_rate(s) && !s->q->claiming && claim_fits(e);
}

bool
session_rated(const struct session *s)
{
    return msg_rate(s)->count != CONF_UNLIMITED ||
           s->dom->max_connect_rate.count != CONF_UNLIMITED || ip_msg_rate(s) != NULL;
}

/* Whether a new session may take its slot and, in one statement, its
 * tokens and first claim in parallel: a rate applies, no claim of the queue
 * is in flight, and the claim fits the budget. */
bool
session_may_slot_tokens_claim(const struct session *s)
{
    return session_rated(s) && !s->q->claiming && claim_fits(s->e);
}
