/* libFuzzer target for the resolver's reply parser (dns_parse_reply): the
 * first byte picks the query type (A, MX, AAAA; 0xff TXT), the rest is the
 * reply. TXT texts are bounded (DNS_MAX_TXT of DNS_MAX_TXT_LEN bytes). The
 * outcome is one of the four, records are found only with outcome 0 and then
 * at least one, MX names are lower case without a trailing dot in preference
 * order and at most 64 are kept, a TTL never exceeds 2^31-1, a temporary
 * failure always says why, and the same reply parses the same way twice. */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_dns_reply: %s\n", what);
        abort();
    }
}

struct seen {
    size_t n;
    int last_pref;
    int mx;
    int txt;
};

static void
on_record(uint16_t pref, const char *name, const void *addr, void *arg)
{
    struct seen *s = arg;
    s->n++;
    if (s->txt) {
        check(name != NULL && addr == NULL, "TXT record without text");
        check(strlen(name) <= DNS_MAX_TXT_LEN, "TXT text over its limit");
    } else if (s->mx) {
        check(name != NULL && addr == NULL, "MX record without a name");
        check((int)pref >= s->last_pref, "MX records not in preference order");
        s->last_pref = pref;
        size_t l = strlen(name);
        check(l == 0 || name[l - 1] != '.', "MX name with a trailing dot");
        for (size_t i = 0; i < l; i++)
            check(!isupper((unsigned char)name[i]), "MX name not lower case");
    } else {
        check(name == NULL && addr != NULL, "address record without an address");
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    static const int qtypes[3] = {1, 15, 28};
    int qtype = data[0] == 0xff ? 16 : qtypes[data[0] % 3];
    const unsigned char *buf = data + 1;
    int len = (int)size - 1;
    size_t n[2];
    uint32_t ttl[2];
    char *err[2];
    int st[2];
    for (int k = 0; k < 2; k++) {
        struct seen s = {0, -1, qtype == 15, qtype == 16};
        st[k] = dns_parse_reply(qtype, buf, len, 42 + (uint64_t)k, on_record, &s, &n[k], &ttl[k],
                                &err[k]);
        check(st[k] >= 0 && st[k] <= 3, "unknown outcome");
        check(st[k] != 0 || (n[k] >= 1 && s.n == n[k]), "records without outcome 0");
        check(st[k] == 0 || s.n == 0, "records reported with a negative outcome");
        check(qtype != 15 || n[k] <= 64, "more than 64 MX kept");
        check(qtype != 16 || n[k] <= DNS_MAX_TXT, "too many TXT records kept");
        check(ttl[k] <= 0x7fffffffu, "TTL over 2^31-1");
        check(st[k] != 3 || (err[k] && *err[k]), "temporary failure without a reason");
    }
    check(st[0] == st[1] && n[0] == n[1] && ttl[0] == ttl[1], "same reply parsed differently");
    free(err[0]);
    free(err[1]);
    return 0;
}
