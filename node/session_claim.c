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
#include "queue.h"
#include "sched.h"
#include "session_claims.h"
#include "session_int.h"
#include "util.h"

static void session_on_claimed(const PGresult *res, void *arg);

/* The queue's claim returned: the next waiting session claims. */
static void
queue_claim_done(struct admission_queue *q)
{
    q->claiming = false;
    struct session *s = admission_claim_next(q);
    if (s)
        session_react(s, &(struct session_event){.type = EV_CLAIM_TURN});
}

static void
session_on_claimed(const PGresult *res, void *arg)
{
    struct session *s = arg;
    struct admission_queue *q = s->q;
    session_unreserve(s);
    bool alive = session_returned(s);
    if (alive)
        session_react(s, &(struct session_event){.type = EV_CLAIMED, .res = res});
    /* The next claim of the queue only after this one's rows are decoded. */
    queue_claim_done(q);
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
 * recipients become claimable again at once, their attempt not counted). */
static void
session_trim(struct session *s, size_t keep)
{
    if (s->batch.nmsgs <= keep)
        return;
    struct buf ids, tokens;
    buf_init(&ids);
    buf_init(&tokens);
    size_t before = s->batch.nrcpts;
    s->e->content_bytes -= batch_trim(&s->batch, keep, &ids, &tokens);
    log_debug("session=%llu queue=%s event=trim rcpts=%zu", (unsigned long long)s->id, s->q->name,
              before - s->batch.nrcpts);
    struct db *db = session_env_db(s->e);
    if (db)
        queue_release(db, s->e->node_id, ids.data, tokens.data);
    buf_free(&ids);
    buf_free(&tokens);
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
    int c_capped = PQfnumber(res, "capped");
    bool capped = rows > 0 && c_capped >= 0 && !PQgetisnull(res, 0, c_capped) &&
                  PQgetvalue(res, 0, c_capped)[0] != 0;
    s->drained = rows < s->claim_limit && !capped;
    if (!capped)
        e->avg_claim_rows = 0.9 * e->avg_claim_rows + 0.1 * (double)rows;
    s->q->more_work = !s->drained;
    size_t held = batch_decode(&s->batch, res, s->dom->max_rcpt_per_message, session_set_aside, s,
                               &lease_left_ms);
    e->content_bytes += held;
    /* The lease deadline is the server's (lease_until, as time left when
     * the rows were sent), on our monotonic clock. */
    s->lease_deadline_ms = admission_now_ms() + lease_left_ms;
    struct batch *b = &s->batch;
    batch_learn(b, held, &e->avg_row_bytes);
    session_trim(s, s->tokens);
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

void
session_enter_tokens(struct session *s)
{
    struct session_env *e = s->e;
    unsigned want = s->dom->max_msg_per_connection - s->sent;
    if (want > SESSION_BATCH_MAX)
        want = SESSION_BATCH_MAX;
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
    const struct conf_rate *rate =
        s->q->backoff ? &s->dom->backoff_max_msg_rate : &s->dom->max_msg_rate;
    s->pending++;
    sched_take_tokens(e->sched, s->limit_domain, s->source_vmta, SCHED_MSG, rate, want,
                      session_on_tokens, s);
}

/* Sends the claim for s->tokens messages. */
static void
send_claim(struct session *s)
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
    session_claims_add(e->claims, e->node_id, e->pipe, s->q->domain, s->q->vmta, limit,
                       e->conf->lease_ms, s->reserved, session_on_claimed, s);
}

void
session_enter_claim(struct session *s)
{
    if (s->q->claiming)
        session_enter(s, SESSION_CLAIM_QUEUED); /* one claim of a queue at a time */
    else
        send_claim(s);
}

/* A new connection of a queue without rate limits: the slot and the first
 * claim in parallel, one round trip before the first byte instead of two.
 * Rows claimed for a slot that is refused are given back at once. */
void
session_enter_slot_claim(struct session *s)
{
    struct session_env *e = s->e;
    s->slot_answer = -2;
    s->claim_answered = s->claim_ok = false;
    s->tokens = s->dom->max_msg_per_connection < SESSION_BATCH_MAX ? s->dom->max_msg_per_connection
                                                                   : SESSION_BATCH_MAX;
    send_claim(s);
    s->pending++;
    sched_take_slot_for(e->sched, s->limit_domain, s->source_vmta, s->q->domain, s->q->vmta,
                        s->dom->max_smtp_out, session_on_slot, s);
}

/* Both answers of SESSION_SLOT_CLAIM are in: go on, or give back. */
void
session_slot_claim_step(struct session *s)
{
    if (s->slot_answer == -2 || !s->claim_answered)
        return;
    if (s->slot_answer < 0) {
        session_postpone(s, SESSION_SLOT_RETRY_MS);
        session_trim(s, 0);
        session_end(s);
    } else if (!s->claim_ok) {
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
    const struct conf_rate *rate = s->q->backoff ? &d->backoff_max_msg_rate : &d->max_msg_rate;
    return d->max_smtp_out != CONF_UNLIMITED && d->max_connect_rate.count == CONF_UNLIMITED &&
           rate->count == CONF_UNLIMITED && !s->q->claiming && claim_fits(e);
}
