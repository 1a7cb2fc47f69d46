/* libFuzzer target for the header-field iterator: fields are contiguous
 * from offset 0, each within the buffer with its name and value inside it,
 * valid names hold no ':' or WSP, the iteration ends after at most one step
 * per line, and the body offset agrees with hdr_body_offset; with and
 * without HDR_BARE_CR. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hdr.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_hdr: %s\n", what);
        abort();
    }
}

static void
run(const uint8_t *data, size_t size, unsigned flags)
{
    const char *b = (const char *)data;
    struct hdr_iter it;
    struct hdr_field f;
    hdr_iter_init_flags(&it, b, size, flags);
    size_t expect = 0, steps = 0;
    while (hdr_next(&it, &f)) {
        check(++steps <= size, "more fields than octets");
        check(f.off == expect, "fields not contiguous");
        check(f.len > 0 && f.off + f.len <= f.end && f.end <= size, "field bounds");
        if (f.valid) {
            check(f.name == b + f.off && f.name_len > 0, "name position");
            check(f.value >= f.name + f.name_len && f.value + f.value_len == b + f.off + f.len,
                  "value bounds");
            for (size_t i = 0; i < f.name_len; i++)
                check(f.name[i] > 0x20 && f.name[i] < 0x7f && f.name[i] != ':', "name octet");
            check(f.value[-1] == ':', "value not after the colon");
        }
        expect = f.end;
    }
    check(it.body >= expect && it.body <= size, "body offset");
    if (!flags)
        check(hdr_body_offset(b, size) == it.body, "body offsets disagree");
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (unsigned flags = 0; flags <= HDR_BARE_CR; flags++)
        run(data, size, flags);
    return 0;
}
