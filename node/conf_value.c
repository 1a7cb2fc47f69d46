/* conf_value: parsing and canonical formatting of the value syntaxes shared by
 * the configuration and the rest of the node: durations ("4d12h", "500ms",
 * a bare number is seconds) and rates ("600/h", "20/10m", "unlimited").
 * Pure functions on caller-owned buffers; no allocation. */
#include "conf.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Units in descending order; a duration names each unit at most once and in
 * this order ("1h30m", never "30m1h"). */
static const struct {
    const char *name;
    uint64_t ms;
} duration_units[] = {
    {"d", 86400000}, {"h", 3600000}, {"m", 60000}, {"s", 1000}, {"ms", 1},
};
#define NUNITS (sizeof duration_units / sizeof duration_units[0])

static bool
is_digit(char ch)
{
    return ch >= '0' && ch <= '9';
}

/* Reads decimal digits at *p into *out, refusing values above limit. */
static int
read_number(const char **p, uint64_t limit, uint64_t *out)
{
    const char *s = *p;
    uint64_t n = 0;
    if (!is_digit(*s))
        return -1;
    while (is_digit(*s)) {
        /* n <= limit <= CONF_DURATION_MAX_MS keeps n * 10 far from overflow. */
        n = n * 10 + (uint64_t)(*s - '0');
        if (n > limit)
            return -1;
        s++;
    }
    *p = s;
    *out = n;
    return 0;
}

int
conf_parse_duration(const char *s, uint64_t *ms)
{
    if (!s || !*s)
        return -1;
    const char *p = s;
    uint64_t total = 0;
    size_t next_unit = 0; /* index of the largest unit still allowed */
    while (*p) {
        uint64_t n;
        if (read_number(&p, CONF_DURATION_MAX_MS, &n) != 0)
            return -1;
        if (*p == '\0') {
            /* A bare number is seconds, but only as the whole value. */
            if (next_unit != 0 || n > CONF_DURATION_MAX_MS / 1000)
                return -1;
            *ms = n * 1000;
            return 0;
        }
        size_t u;
        for (u = next_unit; u < NUNITS; u++) {
            size_t len = strlen(duration_units[u].name);
            /* "m" must not swallow the "m" of "ms". */
            if (strncmp(p, duration_units[u].name, len) == 0 && !(u == 2 && p[1] == 's'))
                break;
        }
        if (u == NUNITS)
            return -1;
        p += strlen(duration_units[u].name);
        if (n > (CONF_DURATION_MAX_MS - total) / duration_units[u].ms)
            return -1;
        total += n * duration_units[u].ms;
        next_unit = u + 1;
    }
    *ms = total;
    return 0;
}

void
conf_format_duration(uint64_t ms, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    out[0] = '\0';
    if (ms == 0) {
        snprintf(out, outlen, "0s");
        return;
    }
    size_t used = 0;
    for (size_t u = 0; u < NUNITS && ms > 0; u++) {
        uint64_t n = ms / duration_units[u].ms;
        if (n == 0)
            continue;
        ms -= n * duration_units[u].ms;
        int w = snprintf(out + used, outlen - used, "%llu%s", (unsigned long long)n,
                         duration_units[u].name);
        if (w < 0 || (size_t)w >= outlen - used)
            return; /* truncated; out stays NUL-terminated */
        used += (size_t)w;
    }
}

int
conf_parse_rate(const char *s, struct conf_rate *out)
{
    if (!s)
        return -1;
    if (strcmp(s, "unlimited") == 0) {
        out->count = CONF_UNLIMITED;
        out->period_ms = 0;
        return 0;
    }
    const char *p = s;
    uint64_t n;
    if (read_number(&p, (uint64_t)CONF_UNLIMITED - 1, &n) != 0 || n == 0 || *p != '/')
        return -1;
    p++;
    uint64_t period;
    if (strcmp(p, "s") == 0)
        period = 1000;
    else if (strcmp(p, "m") == 0)
        period = 60000;
    else if (strcmp(p, "h") == 0)
        period = 3600000;
    else if (strcmp(p, "d") == 0)
        period = 86400000;
    else if (conf_parse_duration(p, &period) != 0)
        return -1;
    if (period == 0 || period > UINT32_MAX)
        return -1;
    out->count = (uint32_t)n;
    out->period_ms = (uint32_t)period;
    return 0;
}

void
conf_format_rate(const struct conf_rate *r, char *out, size_t outlen)
{
    if (r->count == CONF_UNLIMITED) {
        snprintf(out, outlen, "unlimited");
        return;
    }
    const char *unit = NULL;
    switch (r->period_ms) {
    case 1000:
        unit = "s";
        break;
    case 60000:
        unit = "m";
        break;
    case 3600000:
        unit = "h";
        break;
    case 86400000:
        unit = "d";
        break;
    }
    char period[64];
    if (unit)
        snprintf(period, sizeof period, "%s", unit);
    else
        conf_format_duration(r->period_ms, period, sizeof period);
    snprintf(out, outlen, "%u/%s", r->count, period);
}

int
conf_parse_delays(const char *s, struct conf_delays *out, char *why, size_t whylen)
{
    struct conf_delays d = {.n = 0};
    char entry[32];
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        while (len > 0 && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        if (d.n == CONF_MAX_DELAYS) {
            snprintf(why, whylen, "more than %d entries", CONF_MAX_DELAYS);
            return -1;
        }
        if (len == 0 || len >= sizeof entry) {
            snprintf(why, whylen, "bad entry %u \"%.*s\"", d.n + 1, (int)(len < 40 ? len : 40), p);
            return -1;
        }
        memcpy(entry, p, len);
        entry[len] = '\0';
        if (conf_parse_duration(entry, &d.ms[d.n]) != 0) {
            snprintf(why, whylen, "bad entry %u \"%s\"", d.n + 1, entry);
            return -1;
        }
        d.n++;
        if (!comma)
            break;
        p = comma + 1;
    }
    *out = d;
    return 0;
}

void
conf_format_delays(const struct conf_delays *d, char *out, size_t outlen)
{
    if (outlen == 0)
        return;
    out[0] = '\0';
    size_t used = 0;
    uint32_t n = d->n ? d->n : 1;
    for (uint32_t i = 0; i < n && i < CONF_MAX_DELAYS; i++) {
        char one[32];
        conf_format_duration(d->ms[i], one, sizeof one);
        int w = snprintf(out + used, outlen - used, "%s%s", i ? ", " : "", one);
        if (w < 0 || (size_t)w >= outlen - used)
            return;
        used += (size_t)w;
    }
}
