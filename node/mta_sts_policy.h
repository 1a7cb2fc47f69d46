/* mta_sts_policy: the pure parts of MTA-STS (RFC 8461): the _mta-sts TXT
 * record, the policy file, and whether an MX host name matches a policy's mx
 * patterns. No I/O; the resolver, the cache and the fetch are in mta_sts. */
#ifndef PGMTA_MTA_STS_POLICY_H
#define PGMTA_MTA_STS_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MTA_STS_MAX_POLICY_BYTES 65536 /* larger policy files are refused */
#define MTA_STS_MAX_MX 64              /* mx patterns kept per policy */
#define MTA_STS_MAX_AGE_S 31557600u    /* RFC 8461 3.2: at most one year */
#define MTA_STS_ID_MAX 32              /* the TXT id: 1 to 32 letters and digits */

enum mta_sts_mode { MTA_STS_NONE = 0, MTA_STS_TESTING, MTA_STS_ENFORCE };

struct mta_sts_policy {
    enum mta_sts_mode mode;
    uint32_t max_age_s;
    char **mx; /* lower case patterns: "mx.example.com" or "*.example.com" */
    size_t nmx;
};

/* "none", "testing", "enforce". */
const char *mta_sts_mode_name(enum mta_sts_mode m);
/* The mode of NAME; false when it is none of the three. */
bool mta_sts_mode_parse(const char *name, enum mta_sts_mode *m);

/* Parses one TXT record's text (its strings joined): "v=STSv1; id=...;".
 * Returns true and the id (NUL-terminated, size MTA_STS_ID_MAX + 1) for a
 * valid STSv1 record; false with *why (static text) otherwise. A record
 * that does not begin with "v=STSv1" sets *not_sts (other TXT records at
 * the name are ignored, RFC 8461 3.1). */
bool mta_sts_txt_parse(const char *txt, size_t len, char *id, bool *not_sts, const char **why);

/* Parses a policy file strictly: version STSv1, one mode, one max_age
 * (0 .. MTA_STS_MAX_AGE_S), mx patterns that are host names or "*." and a
 * host name (at least one unless the mode is none), CRLF or LF line ends,
 * unknown keys ignored. Returns 0 and fills P (free with
 * mta_sts_policy_clear), or -1 with the reason in WHY. */
int mta_sts_policy_parse(const char *text, size_t len, struct mta_sts_policy *p, char *why,
                         size_t whylen);
void mta_sts_policy_clear(struct mta_sts_policy *p);
void mta_sts_policy_copy(struct mta_sts_policy *dst, const struct mta_sts_policy *src);
/* Appends PATTERN (validated, lower-cased); false when invalid or full. */
bool mta_sts_policy_add_mx(struct mta_sts_policy *p, const char *pattern, size_t len);

/* Whether HOST (an MX name, any case, trailing dot allowed) matches
 * PATTERN: exactly, or "*.d" matching one more label to the left of d. */
bool mta_sts_mx_match(const char *pattern, const char *host);
/* Whether HOST matches one of P's patterns. */
bool mta_sts_policy_allows(const struct mta_sts_policy *p, const char *host);

#endif
