/* libFuzzer target for addr_validate: an accepted address is within the
 * limits of sql/010_validate.sql (254 / 64 / 255 octets), holds no control
 * octet, '<' or '>', its parts lie inside the input and are separated by
 * '@', and a refusal always has a reason. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_addr: %s\n", what);
        abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    struct addr_parts p;
    const char *why = NULL;
    if (!addr_validate(s, size, &p, &why)) {
        check(why != NULL, "refusal without a reason");
        return 0;
    }
    check(size <= ADDR_MAX, "address too long");
    check(p.local_len > 0 && p.local_len <= ADDR_LOCAL_MAX, "local part length");
    check(p.domain_len > 0 && p.domain_len <= ADDR_DOMAIN_MAX, "domain length");
    check(p.domain_off == p.local_len + 1 && s[p.local_len] == '@', "parts not split at '@'");
    check(p.domain_off + p.domain_len == size, "domain not at the end");
    for (size_t i = 0; i < size; i++) {
        unsigned char c = data[i];
        check(c >= 0x20 && c != 0x7f && c != '<' && c != '>', "forbidden octet accepted");
    }
    check(!memchr(s + p.domain_off, '@', p.domain_len), "'@' in the domain");
    check(p.quoted == (s[0] == '"'), "quoted flag");
    check(p.literal == (s[p.domain_off] == '['), "literal flag");
    return 0;
}
