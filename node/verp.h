/* verp: the VERP envelope sender of delivered mail and its check on the
 * way back (see README, VERP).
 *
 * A VERP address is PREFIX+RCPTID-TAG@BOUNCE-DOMAIN: RCPTID the recipient
 * row's id (mta.recipients.id, kept as mta.acct.rcpt_id), TAG the first
 * VERP_TAG_LEN hex digits of HMAC-SHA256(verp-secret, RCPTID), so that a
 * report naming a made-up or altered address is not believed. The rules
 * (the verp list) and the key are copied from the configuration. */
#ifndef PGMTA_VERP_H
#define PGMTA_VERP_H

#include <stdbool.h>
#include <stddef.h>

#include "conf.h"

#define VERP_TAG_LEN 10
#define VERP_DEFAULT_PREFIX "bounces"

struct verp;

/* NULL when the configuration has no verp entry. */
struct verp *verp_new(const struct conf *c);
void verp_free(struct verp *v);

/* The envelope sender for recipient RCPT_ID of a message from FROM in job
 * JOB_ID (NULL: none): a VERP address when an entry matches, else NULL
 * (the caller keeps FROM). The null sender <> never gets one. Caller frees. */
char *verp_sender(const struct verp *v, const char *from, const char *job_id, long long rcpt_id);

enum verp_check {
    VERP_NONE = 0, /* not of the form PREFIX+ID-TAG@domain */
    VERP_OK,       /* *rcpt_id is the recipient */
    VERP_FORGED,   /* the form, with a tag that does not match */
};
/* Reads ADDR (the local part's form only; the caller checks the domain).
 * KEY of KEYLEN bytes. */
enum verp_check verp_check(const char *addr, const char *key, size_t keylen, long long *rcpt_id);
/* Writes the tag of RCPT_ID (VERP_TAG_LEN hex digits and NUL) into out. */
void verp_tag(const char *key, size_t keylen, long long rcpt_id, char out[VERP_TAG_LEN + 1]);

#endif
