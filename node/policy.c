/* policy: outcome policy as pure functions (see policy.h). The session
 * applies them to each recipient of a batch; nothing here reads a clock,
 * draws a random number (the caller passes the draw) or touches the
 * network, so unit tests drive every rule (tests/unit/test_policy.c). The
 * functions own nothing; outcomes are written into the caller's batch.
 * Retry schedules: see README, Scheduling. */
#include "policy.h"

#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "bounce.h"
#include "util.h"

uint64_t
policy_schedule_delay_ms(const struct conf_delays *sch, uint64_t max_ms, int attempt)
{
    if (attempt < 1)
        attempt = 1;
    if (sch->n > 1) {
        /* A list: entry n after attempt n, the last one repeating; the
         * entries are taken as written (max-retry-after does not apply). */
        uint32_t i = (uint32_t)attempt < sch->n ? (uint32_t)attempt - 1 : sch->n - 1;
        return sch->ms[i];
    }
    uint64_t base = sch->ms[0];
    /* The cap: max-retry-after, or the base delay itself when that is
     * longer (backoff-retry-after is often above max-retry-after). */
    uint64_t cap = max_ms > base ? max_ms : base;
    uint64_t delay = base;
    for (int i = 1; i < attempt && delay < cap; i++)
        delay = delay > cap / 2 ? cap : delay * 2;
    return delay < cap ? delay : cap;
}

const struct conf_delays *
policy_schedule(const struct conf_domain *d, bool backoff, bool at_rcpt)
{
    if (backoff)
        return &d->backoff_retry_after;
    if (at_rcpt && d->retry_recipients_after.ms[0] != 0)
        return &d->retry_recipients_after;
    return &d->retry_after;
}

uint64_t
policy_retry_delay_ms(const struct conf_domain *d, int attempt, bool backoff)
{
    return policy_schedule_delay_ms(policy_schedule(d, backoff, false), d->max_retry_after_ms,
                                    attempt);
}

bool
policy_expired(const struct conf_domain *d, long long queued_at_us, long long now_us)
{
    return now_us >= queued_at_us + (long long)d->bounce_after_ms * 1000LL;
}

long long
policy_retry_at_us(const struct conf_domain *d, int attempt, bool backoff, long long queued_at_us,
                   long long now_us, double u)
{
    return policy_retry_at_rcpt_us(d, attempt, backoff, false, queued_at_us, now_us, u);
}

long long
policy_retry_at_rcpt_us(const struct conf_domain *d, int attempt, bool backoff, bool at_rcpt,
                        long long queued_at_us, long long now_us, double u)
{
    if (u < 0)
        u = 0;
    if (u > 1)
        u = 1;
    double factor = 1.0 - POLICY_JITTER + 2.0 * POLICY_JITTER * u;
    uint64_t delay = policy_schedule_delay_ms(policy_schedule(d, backoff, at_rcpt),
                                              d->max_retry_after_ms, attempt);
    long long retry = now_us + (long long)((double)delay * factor) * 1000LL;
    long long expire = queued_at_us + (long long)d->bounce_after_ms * 1000LL;
    return retry > expire ? expire : retry;
}

enum smtp_outcome
policy_apply_patterns(const struct conf_domain *d, enum smtp_outcome outcome, const char *reply,
                      unsigned *effects)
{
    if (outcome == SMTP_DELIVERED || !reply || d->npatterns == 0)
        return outcome;
    int i = conf_domain_match_pattern(d, reply);
    if (i < 0)
        return outcome;
    switch (d->patterns[i].action) {
    case CONF_PATTERN_BACKOFF:
        *effects |= POLICY_EFFECT_BACKOFF;
        break;
    case CONF_PATTERN_DEFER_QUEUE:
        *effects |= POLICY_EFFECT_DEFER_QUEUE;
        break;
    case CONF_PATTERN_DISABLE_SOURCE_IP:
        *effects |= POLICY_EFFECT_DISABLE_SOURCE_IP;
        break;
    case CONF_PATTERN_BOUNCE_RCPT:
        return SMTP_PERMANENT;
    }
    return SMTP_TRANSIENT;
}

/* A transient failure; AT_RCPT: the RCPT reply (retry-recipients-after). */
static void
rcpt_transient(const struct conf_domain *d, struct batch_rcpt *r, bool backoff, bool at_rcpt,
               int code, const char *status, const char *diag, long long now_us,
               policy_draw_fn draw)
{
    if (policy_expired(d, r->queued_at_us, now_us)) {
        char *text = xasprintf("message expired after %llus in queue; last error: %s",
                               (unsigned long long)(d->bounce_after_ms / 1000), diag);
        batch_rcpt_set(r, 'b', "4.4.7", text, "message-expired");
        free(text);
        return;
    }
    batch_rcpt_set(r, 't', status, diag, bounce_category(code, status, diag));
    r->retry_at_us =
        policy_retry_at_rcpt_us(d, r->attempt, backoff, at_rcpt, r->queued_at_us, now_us, draw());
}

void
policy_rcpt_transient(const struct conf_domain *d, struct batch_rcpt *r, bool backoff, int code,
                      const char *status, const char *diag, long long now_us, policy_draw_fn draw)
{
    rcpt_transient(d, r, backoff, false, code, status, diag, now_us, draw);
}

void
policy_rcpt_permanent(struct batch_rcpt *r, int code, const char *status, const char *diag)
{
    batch_rcpt_set(r, 'b', status, diag, bounce_category(code, status, diag));
}

void
policy_fail_all(const struct conf_domain *d, struct batch *b, bool backoff, bool permanent,
                int code, const char *status, const char *diag, long long now_us,
                policy_draw_fn draw)
{
    for (size_t i = 0; i < b->nrcpts; i++) {
        if (permanent)
            policy_rcpt_permanent(&b->rcpts[i], code, status, diag);
        else
            policy_rcpt_transient(d, &b->rcpts[i], backoff, code, status, diag, now_us, draw);
    }
}

bool
policy_batch_outcomes(const struct conf_domain *d, struct batch *b,
                      const struct smtp_rcpt_result *const *results, bool backoff, long long now_us,
                      policy_draw_fn draw, unsigned *effects, char **reply)
{
    bool answered = false;
    for (size_t m = 0; m < b->nmsgs; m++) {
        struct batch_msg *msg = &b->msgs[m];
        for (size_t k = 0; k < msg->nrcpts; k++) {
            const struct smtp_rcpt_result *rr = &results[m][k];
            struct batch_rcpt *r = &b->rcpts[msg->first + k];
            answered |= rr->code != 0 || rr->outcome == SMTP_DELIVERED;
            unsigned before = *effects;
            enum smtp_outcome o = policy_apply_patterns(d, rr->outcome, rr->reply, effects);
            if ((o != rr->outcome || *effects != before) && !*reply && rr->reply)
                *reply = xstrdup(rr->reply);
            char *diag = batch_reply_diag(rr);
            const char *status = rr->status && *rr->status ? rr->status : NULL;
            switch (o) {
            case SMTP_DELIVERED:
                batch_rcpt_set(r, 'd', status ? status : "2.0.0", diag, NULL);
                break;
            case SMTP_PERMANENT:
                policy_rcpt_permanent(r, rr->code, status ? status : "5.0.0", diag);
                break;
            case SMTP_TRANSIENT:
                rcpt_transient(d, r, backoff || (*effects & POLICY_EFFECT_BACKOFF), rr->at_rcpt,
                               rr->code, status ? status : "4.0.0", diag, now_us, draw);
                break;
            }
            free(diag);
        }
    }
    return answered;
}
