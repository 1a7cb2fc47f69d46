/* policy: what happens to a recipient after a delivery attempt, as pure
 * functions of the domain's settings, the attempt and the clock values the
 * caller passes in (no I/O, no global state, no clock reads): the retry
 * schedule (a list, or exponential backoff with a cap, and jitter), expiry after
 * bounce-after, and the actions of smtp-pattern-list. */
#ifndef PGMTA_POLICY_H
#define PGMTA_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "conf.h"
#include "smtp_client.h"

/* Jitter applied to a retry delay: the delay times a factor in
 * [1 - POLICY_JITTER, 1 + POLICY_JITTER]. */
#define POLICY_JITTER 0.2

/* The delay after attempt ATTEMPT (1 = the first attempt) on schedule SCH,
 * no jitter. A list of two or more entries: entry ATTEMPT, the last one
 * repeating, as written. A single value: that value doubled per attempt,
 * at most MAX_MS (max-retry-after); a value already above MAX_MS stays as it
 * is (never doubled). ATTEMPT below 1 counts as 1. */
uint64_t policy_schedule_delay_ms(const struct conf_delays *sch, uint64_t max_ms, int attempt);
/* The schedule that applies: backoff-retry-after in backoff mode, else
 * retry-recipients-after for a 4xx at RCPT when set, else retry-after. */
const struct conf_delays *policy_schedule(const struct conf_domain *d, bool backoff, bool at_rcpt);
/* The delay before retry number ATTEMPT on retry-after (backoff-retry-after
 * in backoff mode). */
uint64_t policy_retry_delay_ms(const struct conf_domain *d, int attempt, bool backoff);

/* Whether a recipient queued at QUEUED_AT_US (wall clock, microseconds) has
 * expired at NOW_US: bounce-after has passed. */
bool policy_expired(const struct conf_domain *d, long long queued_at_us, long long now_us);

/* When to retry (wall clock, microseconds): NOW_US plus the delay with
 * jitter from U (0 <= U <= 1: factor 1 - POLICY_JITTER + 2 * POLICY_JITTER * U),
 * but never after the expiry time (queued_at + bounce-after). */
long long policy_retry_at_us(const struct conf_domain *d, int attempt, bool backoff,
                             long long queued_at_us, long long now_us, double u);
/* The same for a recipient refused at RCPT when AT_RCPT (see policy_schedule). */
long long policy_retry_at_rcpt_us(const struct conf_domain *d, int attempt, bool backoff,
                                  bool at_rcpt, long long queued_at_us, long long now_us, double u);

/* Effects of smtp-pattern-list on the queue (bit mask). */
enum {
    POLICY_EFFECT_BACKOFF = 1u << 0,           /* switch the queue into backoff mode */
    POLICY_EFFECT_DEFER_QUEUE = 1u << 1,       /* stop sending to the queue for retry-after */
    POLICY_EFFECT_DISABLE_SOURCE_IP = 1u << 2, /* this source IP, this domain: reenable-after */
};

/* The outcome for a recipient whose reply was REPLY with OUTCOME, after the
 * domain's smtp-pattern-list: bounce-rcpt makes it permanent, backoff and
 * defer-queue make it transient and add their effect to *EFFECTS. A
 * delivered recipient or a reply no pattern matches keeps its outcome. */
enum smtp_outcome policy_apply_patterns(const struct conf_domain *d, enum smtp_outcome outcome,
                                        const char *reply, unsigned *effects);

/* ---- applying outcomes to a claimed batch ---- */

struct batch;
struct batch_rcpt;

/* A random draw in [0, 1] for retry jitter (random() in the node; tests
 * pass fixed values). */
typedef double (*policy_draw_fn)(void);

/* A transient failure of R at NOW_US (wall clock): retry with backoff and
 * jitter, or bounce with 4.4.7 (message-expired) once bounce-after has
 * passed. The row carries a bounce category either way. */
void policy_rcpt_transient(const struct conf_domain *d, struct batch_rcpt *r, bool backoff,
                           int code, const char *status, const char *diag, long long now_us,
                           policy_draw_fn draw);
/* A permanent failure: bounced, with its bounce category. */
void policy_rcpt_permanent(struct batch_rcpt *r, int code, const char *status, const char *diag);
/* One failure for every recipient of B. */
void policy_fail_all(const struct conf_domain *d, struct batch *b, bool backoff, bool permanent,
                     int code, const char *status, const char *diag, long long now_us,
                     policy_draw_fn draw);
/* The SMTP results of B (results[m][k] for transaction m, recipient k):
 * delivered, bounced or retried after smtp-pattern-list, in backoff mode
 * when BACKOFF or when a reply switched the queue into it. Collects the
 * pattern effects in *EFFECTS and the first matching reply in *REPLY (the
 * caller frees it). Returns true when any MX answered at all (a reply code
 * for some recipient): the connection worked. */
bool policy_batch_outcomes(const struct conf_domain *d, struct batch *b,
                           const struct smtp_rcpt_result *const *results, bool backoff,
                           long long now_us, policy_draw_fn draw, unsigned *effects, char **reply);

#endif
