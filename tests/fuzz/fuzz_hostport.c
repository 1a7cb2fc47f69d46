/* libFuzzer target for hostport_parse: with every combination of flags, a
 * parse that succeeds obeys the flags, its host is non-empty and within
 * limits, an IP parses back to the same address, and the formatted form
 * parses back to the same kind, host and port. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hostport.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_hostport: %s\n", what);
        abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (unsigned flags = 0; flags < 16; flags++) {
        struct hostport hp;
        const char *why = NULL;
        if (!hostport_parse((const char *)data, size, flags, &hp, &why)) {
            check(why != NULL, "refusal without a reason");
            continue;
        }
        size_t hl = strlen(hp.host);
        check(hl > 0 && hl <= HOSTPORT_HOST_MAX, "host length");
        check(!(flags & HOSTPORT_NO_PORT) || hp.port == 0, "port despite NO_PORT");
        check(!(flags & HOSTPORT_PORT_REQUIRED) || hp.port != 0, "no port despite PORT_REQUIRED");
        check(!(flags & HOSTPORT_IP_ONLY) || hp.kind != HOSTPORT_NAME, "name despite IP_ONLY");
        if (hp.kind == HOSTPORT_NAME)
            check(hostport_is_hostname(hp.host, hl), "name that is no host name");
        else
            check(hostport_is_ip_literal(hp.host), "address that is no literal");
        char out[HOSTPORT_HOST_MAX + 16];
        hostport_format(&hp, 0, out, sizeof out);
        struct hostport back;
        check(hostport_parse_str(out, 0, &back, NULL), "formatted form refused");
        check(back.kind == hp.kind && back.port == hp.port, "formatted form differs");
        if (hp.kind == HOSTPORT_NAME)
            check(strcmp(back.host, hp.host) == 0, "formatted name differs");
        else if (hp.kind == HOSTPORT_IPV4)
            check(memcmp(&back.addr.v4, &hp.addr.v4, sizeof hp.addr.v4) == 0, "v4 differs");
        else
            check(memcmp(&back.addr.v6, &hp.addr.v6, sizeof hp.addr.v6) == 0, "v6 differs");
    }
    return 0;
}
