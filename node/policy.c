/* policy: outcome policy as pure functions (see policy.h). The session
 * applies them to each recipient of a batch; nothing here reads a clock,
 * draws a random number or touches the network, so unit tests drive every
 * rule (tests/unit/test_policy.c). The functions own nothing. */
#include "policy.h"

uint64_t
policy_retry_delay_ms(const struct conf_domain *d, int attempt, bool backoff)
{
    uint64_t base = backoff ? d->backoff_retry_after_ms : d->retry_after_ms;
    /* The cap: max-retry-after, or the base delay itself when that is
     * longer (backoff-retry-after is often above max-retry-after). */
    uint64_t cap = d->max_retry_after_ms > base ? d->max_retry_after_ms : base;
    uint64_t delay = base;
    for (int i = 1; i < attempt && delay < cap; i++)
        delay = delay > cap / 2 ? cap : delay * 2;
    return delay < cap ? delay : cap;
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
    if (u < 0)
        u = 0;
    if (u > 1)
        u = 1;
    double factor = 1.0 - POLICY_JITTER + 2.0 * POLICY_JITTER * u;
    uint64_t delay = policy_retry_delay_ms(d, attempt, backoff);
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
    case CONF_PATTERN_BOUNCE_RCPT:
        return SMTP_PERMANENT;
    }
    return SMTP_TRANSIENT;
}
