/* conf_dump: prints a struct conf in libconfig syntax, walking the directive
 * tables in their order, every value in canonical form, so that the output
 * is stable (golden tests, pgmtad --check) and loads again unchanged.
 * Secrets (FL_SECRET: tokens, SMTP user passwords) are printed as "***" and
 * the password of database.url (FL_URL) is masked: the dump is meant to be
 * shown, pasted and diffed (see README, Security). */
#include "conf_int.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- dump --------------------------------------------------------------------- */

static void
put_indent(FILE *out, int depth)
{
    for (int i = 0; i < depth; i++)
        fputs("    ", out);
}

/* A libconfig string literal. */
static void
put_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"':
            fputs("\\\"", out);
            break;
        case '\\':
            fputs("\\\\", out);
            break;
        case '\n':
            fputs("\\n", out);
            break;
        case '\r':
            fputs("\\r", out);
            break;
        case '\t':
            fputs("\\t", out);
            break;
        case '\f':
            fputs("\\f", out);
            break;
        default:
            if (*p < 0x20 || *p == 0x7f)
                fprintf(out, "\\x%02x", *p);
            else
                fputc(*p, out);
        }
    }
    fputc('"', out);
}

#define REDACTED "***"

/* Copies the value of a password in a libpq connection string, from p up to
 * its end, as "***"; returns where the value ends. */
static const char *
skip_value(const char *p, bool keyword_form)
{
    if (keyword_form && *p == '\'') {
        for (p++; *p && *p != '\''; p++)
            if (*p == '\\' && p[1])
                p++;
        return *p ? p + 1 : p;
    }
    while (*p && *p != (keyword_form ? ' ' : '&') && !(keyword_form && *p == '\t'))
        p++;
    return p;
}

/* A libpq connection string (URI or keyword=value form) with every password
 * replaced by "***". Returns a malloc'd string, NULL on allocation failure. */
static char *
redact_url(const char *url)
{
    size_t len = strlen(url);
    char *out = malloc(len + sizeof REDACTED * 4 + 1);
    if (!out)
        return NULL;
    char *o = out;
    const char *p = url;
    const char *scheme = strstr(url, "://");
    bool uri =
        scheme && (strncmp(url, "postgresql://", 13) == 0 || strncmp(url, "postgres://", 11) == 0);
    if (uri) {
        /* postgresql://user:password@host/db?password=... */
        const char *auth = scheme + 3;
        const char *end = auth + strcspn(auth, "/?");
        const char *at = NULL;
        for (const char *q = auth; q < end; q++)
            if (*q == '@')
                at = q;
        const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        if (colon) {
            memcpy(o, url, (size_t)(colon + 1 - url));
            o += colon + 1 - url;
            memcpy(o, REDACTED, sizeof REDACTED - 1);
            o += sizeof REDACTED - 1;
            p = at;
        }
    }
    /* password=... as a keyword or a URI query parameter (one is masked per
     * occurrence; a connection string has at most a few). */
    while (*p) {
        bool start =
            p == url || (uri ? (p[-1] == '?' || p[-1] == '&') : (p[-1] == ' ' || p[-1] == '\t'));
        if (start && strncasecmp(p, "password", 8) == 0) {
            const char *q = p + 8;
            while (!uri && (*q == ' ' || *q == '\t'))
                q++;
            if (*q == '=') {
                q++;
                while (!uri && (*q == ' ' || *q == '\t'))
                    q++;
                memcpy(o, p, (size_t)(q - p));
                o += q - p;
                if ((size_t)(o - out) + sizeof REDACTED > len + sizeof REDACTED * 4)
                    break;
                memcpy(o, REDACTED, sizeof REDACTED - 1);
                o += sizeof REDACTED - 1;
                p = skip_value(q, !uri);
                continue;
            }
        }
        if ((size_t)(o - out) >= len + sizeof REDACTED * 4)
            break;
        *o++ = *p++;
    }
    *o = '\0';
    return out;
}

static void dump_table(FILE *out, const struct field *table, const void *base, int depth);

static void
dump_field(FILE *out, const struct field *f, const void *base, int depth)
{
    const void *p = CONF_FIELD_PTR((void *)(uintptr_t)base, f->off);
    char buf[CONF_MAX_DELAYS * 16];
    switch (f->type) {
    case F_STRING:
    case F_LOG_LEVEL:
    case F_ROUTE:
    case F_LISTEN:
    case F_IP:
    case F_NAME:
    case F_DOMAIN:
        if (!*(char *const *)p)
            return;
        break;
    case F_DELAYS:
        if (((const struct conf_delays *)p)->ms[0] == 0)
            return; /* retry-recipients-after unset: retry-after applies */
        break;
    case F_ROLLUP:
        if (!*(char *const *)p &&
            !*(const bool *)CONF_FIELD_PTR((void *)(uintptr_t)base, f->count_off))
            return; /* automatic, the default */
        break;
    default:
        break;
    }
    put_indent(out, depth);
    fprintf(out, "%s = ", f->name);
    switch (f->type) {
    case F_UINT:
        fprintf(out, "%u", *(const uint32_t *)p);
        break;
    case F_UINT_UNLIMITED:
        if (*(const uint32_t *)p == CONF_UNLIMITED)
            fputs("\"unlimited\"", out);
        else
            fprintf(out, "%u", *(const uint32_t *)p);
        break;
    case F_DURATION:
        conf_format_duration(*(const uint64_t *)p, buf, sizeof buf);
        put_string(out, buf);
        break;
    case F_DELAYS:
        conf_format_delays(p, buf, sizeof buf);
        put_string(out, buf);
        break;
    case F_RATE:
        conf_format_rate(p, buf, sizeof buf);
        put_string(out, buf);
        break;
    case F_BOOL:
        fputs(*(const bool *)p ? "true" : "false", out);
        break;
    case F_ROLLUP:
        if (*(char *const *)p)
            put_string(out, *(char *const *)p);
        else
            fputs("false", out);
        break;
    case F_STRING:
    case F_LOG_LEVEL:
    case F_ROUTE:
    case F_LISTEN:
    case F_IP:
    case F_NAME:
    case F_DOMAIN:
        if (f->flags & FL_SECRET) {
            put_string(out, REDACTED);
        } else if (f->flags & FL_URL) {
            char *r = redact_url(*(char *const *)p);
            put_string(out, r ? r : REDACTED);
            free(r);
        } else {
            put_string(out, *(char *const *)p);
        }
        break;
    case F_STRING_LIST:
    case F_LISTEN_LIST:
    case F_DNS_LIST: {
        char *const *list = *(char **const *)p;
        size_t n = *(const size_t *)CONF_FIELD_PTR((void *)(uintptr_t)base, f->count_off);
        fputs("[", out);
        for (size_t i = 0; i < n; i++) {
            fputs(i ? ", " : " ", out);
            put_string(out, f->flags & FL_SECRET ? REDACTED : list[i]);
        }
        fputs(" ]", out);
        break;
    }
    case F_PATTERNS: {
        const struct conf_pattern *list = *(struct conf_pattern *const *)p;
        size_t n = *(const size_t *)CONF_FIELD_PTR((void *)(uintptr_t)base, f->count_off);
        fputs(n ? "(\n" : "( ", out);
        for (size_t i = 0; i < n; i++) {
            put_indent(out, depth + 1);
            fputs("{ pattern = ", out);
            put_string(out, list[i].regex);
            fprintf(out, "; action = \"%s\"; }%s\n", conf_pattern_actions[list[i].action],
                    i + 1 < n ? "," : "");
        }
        if (n)
            put_indent(out, depth);
        fputs(")", out);
        break;
    }
    case F_GROUP:
        fputs("{\n", out);
        dump_table(out, f->sub, base, depth + 1);
        put_indent(out, depth);
        fputs("}", out);
        break;
    case F_LIST: {
        const char *arr = *(char *const *)p;
        size_t n = *(const size_t *)CONF_FIELD_PTR((void *)(uintptr_t)base, f->count_off);
        fputs(n ? "(\n" : "( ", out);
        for (size_t i = 0; i < n; i++) {
            put_indent(out, depth + 1);
            fputs("{\n", out);
            dump_table(out, f->kind->fields, arr + i * f->kind->elem_size, depth + 2);
            put_indent(out, depth + 1);
            fprintf(out, "}%s\n", i + 1 < n ? "," : "");
        }
        if (n)
            put_indent(out, depth);
        fputs(")", out);
        break;
    }
    }
    fputs(";\n", out);
}

static void
dump_table(FILE *out, const struct field *table, const void *base, int depth)
{
    for (const struct field *f = table; f->name; f++)
        dump_field(out, f, base, depth);
}

void
conf_dump(const struct conf *c, FILE *out)
{
    fputs("# pgmta effective configuration: every default filled in, every domain\n"
          "# resolved against \"*\".\n",
          out);
    dump_table(out, conf_top_fields, c, 0);
}
