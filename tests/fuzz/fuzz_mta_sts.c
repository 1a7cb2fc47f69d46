/* libFuzzer target for the MTA-STS parsers: a policy that parses is within
 * its bounds (mode, max_age, at most MTA_STS_MAX_MX valid lower-case
 * patterns that match themselves), and its patterns survive being copied;
 * a TXT record that parses has an id of 1 to 32 letters and digits. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mta_sts_policy.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_mta_sts: %s\n", what);
        abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mta_sts_policy p;
    char why[200];
    if (mta_sts_policy_parse((const char *)data, size, &p, why, sizeof why) == 0) {
        check(p.mode <= MTA_STS_ENFORCE, "mode");
        check(p.max_age_s <= MTA_STS_MAX_AGE_S, "max_age");
        check(p.nmx <= MTA_STS_MAX_MX, "mx count");
        check(p.mode == MTA_STS_NONE || p.nmx > 0, "no mx");
        for (size_t i = 0; i < p.nmx; i++) {
            for (const char *c = p.mx[i]; *c; c++)
                check(!isupper((unsigned char)*c), "upper case pattern");
            const char *host = p.mx[i][0] == '*' ? NULL : p.mx[i];
            if (host)
                check(mta_sts_mx_match(p.mx[i], host), "pattern does not match itself");
        }
        struct mta_sts_policy copy;
        mta_sts_policy_copy(&copy, &p);
        check(copy.nmx == p.nmx, "copy");
        mta_sts_policy_clear(&copy);
        mta_sts_policy_clear(&p);
    } else {
        check(why[0] != '\0', "refusal without a reason");
    }
    char *txt = malloc(size + 1);
    memcpy(txt, data, size);
    txt[size] = '\0';
    char id[MTA_STS_ID_MAX + 1];
    bool not_sts;
    const char *reason = NULL;
    if (mta_sts_txt_parse(txt, size, id, &not_sts, &reason)) {
        size_t n = strlen(id);
        check(n >= 1 && n <= MTA_STS_ID_MAX, "id length");
        for (size_t i = 0; i < n; i++)
            check(isalnum((unsigned char)id[i]), "id character");
    } else {
        check(reason != NULL, "txt refusal without a reason");
    }
    if (size > 0)
        (void)mta_sts_mx_match("*.example.com", txt);
    free(txt);
    return 0;
}
