/* libFuzzer target for unsub_token_verify and unsub_subject_token: any
 * input is refused or yields an address and job that a token made from them
 * spells exactly as the input (one spelling per token), and the one-click
 * body check reads only what it is given. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unsub.h"
#include "unsub_http.h"
#include "util.h"

#define FUZZ_KEY "fuzzing secret of 32 characters!"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_unsub_token: %s\n", what);
        abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct unsub *u;
    if (!u)
        u = unsub_new_key(FUZZ_KEY, strlen(FUZZ_KEY));
    char *s = xstrndup((const char *)data, size);
    char *rcpt, *job, *scope;
    if (unsub_token_verify(u, s, &rcpt, &job, &scope) == 0) {
        check(rcpt != NULL && (scope == NULL || job != NULL), "verified without fields");
        size_t sl = scope ? strlen(scope) : 0;
        check(!scope || strncmp(job, scope, sl) == 0, "scope not a prefix of the job");
        char *again = unsub_token_make(u, rcpt, job, sl);
        check(again && strcmp(again, s) == 0, "a verified token with another spelling");
        free(again);
        free(rcpt);
        free(job);
        free(scope);
    }
    size_t n = 0;
    const char *t = unsub_subject_token(s, &n);
    check(!t || (t >= s && t + n <= s + strlen(s)), "subject token outside the subject");
    (void)unsub_http_one_click(size && data[0] & 1 ? "multipart/form-data" : NULL,
                               (const char *)data, size);
    free(s);
    return 0;
}
