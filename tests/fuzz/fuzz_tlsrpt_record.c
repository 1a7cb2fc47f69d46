/* libFuzzer target for the _smtp._tls TXT record parser: whatever the
 * record, at most MAX rua come back, each non-empty and without a comma,
 * semicolon or blank. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tlsrpt.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *txt = malloc(size + 1);
    if (!txt)
        abort();
    memcpy(txt, data, size);
    txt[size] = '\0';
    char *rua[3];
    int n = tlsrpt_parse_record(txt, rua, 3);
    if (n > 3 || n < -1)
        abort();
    for (int i = 0; i < n; i++) {
        if (!rua[i][0] || strpbrk(rua[i], ",; \t")) {
            fprintf(stderr, "fuzz_tlsrpt_record: bad rua \"%s\"\n", rua[i]);
            abort();
        }
        free(rua[i]);
    }
    free(txt);
    return 0;
}
