/* libFuzzer target for the configuration value syntax: every input is tried
 * as a duration and as a rate; whatever parses must format to a canonical
 * string that parses back to the same value, and format again identically. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "util.h"

static void
check(int ok, const char *what, const char *input)
{
    if (!ok) {
        fprintf(stderr, "fuzz_conf_values: %s for input \"%s\"\n", what, input);
        abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = xmalloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';

    uint64_t ms;
    if (conf_parse_duration(s, &ms) == 0) {
        check(ms <= CONF_DURATION_MAX_MS, "duration above the maximum", s);
        char out[64], again[64];
        conf_format_duration(ms, out, sizeof out);
        uint64_t back;
        check(conf_parse_duration(out, &back) == 0, "formatted duration does not parse", s);
        check(back == ms, "duration changed by format and parse", s);
        conf_format_duration(back, again, sizeof again);
        check(strcmp(out, again) == 0, "duration format not canonical", s);
    }

    struct conf_rate r;
    if (conf_parse_rate(s, &r) == 0) {
        check(r.count == CONF_UNLIMITED ? r.period_ms == 0 : r.count >= 1 && r.period_ms >= 1,
              "rate out of its domain", s);
        char out[96], again[96];
        conf_format_rate(&r, out, sizeof out);
        struct conf_rate back;
        check(conf_parse_rate(out, &back) == 0, "formatted rate does not parse", s);
        check(back.count == r.count && back.period_ms == r.period_ms,
              "rate changed by format and parse", s);
        conf_format_rate(&back, again, sizeof again);
        check(strcmp(out, again) == 0, "rate format not canonical", s);
    }
    free(s);
    return 0;
}
