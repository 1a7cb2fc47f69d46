/* conf_dump: prints a struct conf in libconfig syntax, walking the directive
 * tables in their order, every value in canonical form, so that the output
 * is stable (golden tests, pgmtad --check) and loads again unchanged. */
#include "conf_int.h"

#include <stdint.h>
#include <stdio.h>

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

static void dump_table(FILE *out, const struct field *table, const void *base, int depth);

static void
dump_field(FILE *out, const struct field *f, const void *base, int depth)
{
    const void *p = CONF_FIELD_PTR((void *)(uintptr_t)base, f->off);
    char buf[64];
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
    case F_RATE:
        conf_format_rate(p, buf, sizeof buf);
        put_string(out, buf);
        break;
    case F_BOOL:
        fputs(*(const bool *)p ? "true" : "false", out);
        break;
    case F_STRING:
    case F_LOG_LEVEL:
    case F_ROUTE:
    case F_LISTEN:
    case F_IP:
    case F_NAME:
    case F_DOMAIN:
        put_string(out, *(char *const *)p);
        break;
    case F_STRING_LIST:
    case F_LISTEN_LIST:
    case F_DNS_LIST: {
        char *const *list = *(char **const *)p;
        size_t n = *(const size_t *)CONF_FIELD_PTR((void *)(uintptr_t)base, f->count_off);
        fputs("[", out);
        for (size_t i = 0; i < n; i++) {
            fputs(i ? ", " : " ", out);
            put_string(out, list[i]);
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
