/* conf: loads the main libconfig file and every conf.d/ *.conf beside it (in
 * strcmp order), merges them into one struct conf, validates every directive
 * and resolves each domain entry against "*" and the built-in defaults.
 *
 * Every directive is described once in the field tables of conf_fields.c
 * (name, value type, offset); parsing, merging, resolving, freeing and
 * conf_dump all walk the same tables, so a directive cannot be parsed but
 * forgotten by the dump.
 * The struct conf returned by conf_load owns all its strings; the loader
 * state (file names, per-entry bookkeeping) lives only during conf_load. */
#include "conf_int.h"
#include "addr.h"
#include "hostport.h"
#include "log.h"
#include "unsub.h"
#include "util.h"
#include "webhook.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <libconfig.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A place in a configuration file; file points into loader.files. */
struct loc {
    const char *file;
    int line;
};

/* Bookkeeping for one table instance: which fields were set, and where. */
struct meta {
    unsigned gen; /* index of the file that last defined the entry */
    int gen_line; /* where that file defined it */
    struct loc loc;
    uint64_t set; /* bit i: field i was set (CONF_MAX_FIELDS bits) */
    struct loc flocs[CONF_MAX_FIELDS];
};

struct loader {
    struct conf *c;
    char *err;
    size_t errlen;
    bool failed;
    unsigned gen;
    const char *cur_file;
    char **files;
    size_t nfiles;
    struct meta top;
    struct meta groups[CONF_MAX_FIELDS]; /* for top-level F_GROUP fields, by index */
    struct meta *metas[NKINDS];          /* parallel to the conf arrays */
};

/* ---- errors and locations ---------------------------------------------- */

static const char *
intern_file(struct loader *ld, const char *name)
{
    if (!name)
        return ld->cur_file;
    for (size_t i = 0; i < ld->nfiles; i++)
        if (strcmp(ld->files[i], name) == 0)
            return ld->files[i];
    ld->files = xrealloc(ld->files, (ld->nfiles + 1) * sizeof *ld->files);
    ld->files[ld->nfiles] = xstrdup(name);
    return ld->files[ld->nfiles++];
}

static struct loc
setting_loc(struct loader *ld, const config_setting_t *s)
{
    struct loc l = {intern_file(ld, config_setting_source_file(s)),
                    (int)config_setting_source_line(s)};
    return l;
}

static int fail(struct loader *ld, struct loc l, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the first error as "file:line: message"; always returns -1. */
static int
fail(struct loader *ld, struct loc l, const char *fmt, ...)
{
    if (ld->failed)
        return -1;
    ld->failed = true;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ld->errlen > 0)
        snprintf(ld->err, ld->errlen, "%s:%d: %s", l.file ? l.file : "?", l.line, msg);
    return -1;
}

static int fail_at(struct loader *ld, const config_setting_t *s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
fail_at(struct loader *ld, const config_setting_t *s, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return fail(ld, setting_loc(ld, s), "%s", msg);
}

/* ---- syntax checks of string values ------------------------------------- */

static bool
is_name(const char *s)
{
    size_t len = strlen(s);
    if (len == 0 || len > 64)
        return false;
    for (const char *p = s; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '_' || ch == '-'))
            return false;
    }
    return true;
}

/* Addresses and host:port strings: one parser, node/hostport.c. */
static bool
is_ip_literal(const char *s)
{
    struct hostport hp;
    return hostport_parse_str(s, HOSTPORT_IP_ONLY | HOSTPORT_NO_PORT | HOSTPORT_BARE_IPV6, &hp,
                              NULL) &&
           !hp.bracketed;
}

static bool
is_hostname(const char *s)
{
    return hostport_is_hostname(s, strlen(s));
}

/* "ip:port", "[v6]:port", or without the port unless it is required. */
static bool
is_ip_port(const char *s, bool port_required)
{
    struct hostport hp;
    return hostport_parse_str(
        s, HOSTPORT_IP_ONLY | HOSTPORT_BARE_IPV6 | (port_required ? HOSTPORT_PORT_REQUIRED : 0),
        &hp, NULL);
}

/* "host:port" with a name or an address. */
static bool
is_route(const char *s)
{
    struct hostport hp;
    return hostport_parse_str(s, HOSTPORT_PORT_REQUIRED, &hp, NULL);
}

static bool
is_domain_name(const char *s, bool wildcard)
{
    if (wildcard && strcmp(s, "*") == 0)
        return true;
    if (wildcard && strncmp(s, "*.", 2) == 0)
        s += 2;
    return is_hostname(s);
}

/* ---- values ------------------------------------------------------------- */

static int
get_string(struct loader *ld, const config_setting_t *s, const char *name, const char **out)
{
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return fail_at(ld, s, "%s: expected a string", name);
    const char *v = config_setting_get_string(s);
    if (!v || !*v)
        return fail_at(ld, s, "%s: must not be empty", name);
    *out = v;
    return 0;
}

static int
get_uint(struct loader *ld, const config_setting_t *s, const struct field *f, const char *name,
         uint32_t *out)
{
    bool unlimited_ok = f->type == F_UINT_UNLIMITED;
    uint32_t max = f->max ? f->max : (unlimited_ok ? CONF_UNLIMITED - 1 : UINT32_MAX);
    long long v;
    int type = config_setting_type(s);
    if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64) {
        v = config_setting_get_int64(s);
    } else if (type == CONFIG_TYPE_STRING) {
        const char *str = config_setting_get_string(s);
        if (unlimited_ok && strcmp(str, "unlimited") == 0) {
            *out = CONF_UNLIMITED;
            return 0;
        }
        /* Digits only; large values are compared before they can overflow. */
        v = 0;
        if (!*str)
            goto bad;
        for (const char *p = str; *p; p++) {
            if (*p < '0' || *p > '9')
                goto bad;
            v = v * 10 + (*p - '0');
            if (v > (long long)UINT32_MAX)
                return fail_at(ld, s, "%s: %s is out of range (%u..%u)", name, str, f->min, max);
        }
    } else {
        goto bad;
    }
    if (v < (long long)f->min || v > (long long)max)
        return fail_at(ld, s, "%s: %lld is out of range (%u..%u)", name, v, f->min, max);
    *out = (uint32_t)v;
    return 0;
bad:
    if (unlimited_ok)
        return fail_at(ld, s, "%s: expected an integer or \"unlimited\"", name);
    return fail_at(ld, s, "%s: expected an integer", name);
}

static int
get_duration(struct loader *ld, const config_setting_t *s, const struct field *f, const char *name,
             uint64_t *out)
{
    int type = config_setting_type(s);
    uint64_t ms;
    if (type == CONFIG_TYPE_INT || type == CONFIG_TYPE_INT64) {
        long long v = config_setting_get_int64(s);
        if (v < 0 || (unsigned long long)v > CONF_DURATION_MAX_MS / 1000)
            return fail_at(ld, s, "%s: bad duration %lld", name, v);
        ms = (uint64_t)v * 1000;
    } else if (type == CONFIG_TYPE_STRING) {
        const char *str = config_setting_get_string(s);
        if (conf_parse_duration(str, &ms) != 0)
            return fail_at(ld, s, "%s: bad duration \"%s\"", name, str);
    } else {
        return fail_at(ld, s, "%s: expected a duration such as \"10m\"", name);
    }
    if (ms == 0 && (f->flags & FL_NONZERO))
        return fail_at(ld, s, "%s: must be longer than 0", name);
    *out = ms;
    return 0;
}

/* A retry schedule: one duration (a number of seconds or a string) or a
 * string list of them. */
static int
get_delays(struct loader *ld, const config_setting_t *s, const struct field *f, const char *name,
           struct conf_delays *out)
{
    if (config_setting_type(s) != CONFIG_TYPE_STRING ||
        !strchr(config_setting_get_string(s), ',')) {
        struct conf_delays one = {.n = 1};
        if (get_duration(ld, s, f, name, &one.ms[0]) != 0)
            return -1;
        *out = one;
        return 0;
    }
    const char *str = config_setting_get_string(s);
    struct conf_delays d;
    char why[96];
    if (conf_parse_delays(str, &d, why, sizeof why) != 0)
        return fail_at(ld, s, "%s: %s (expected durations such as \"5m, 10m, 1h\", at most %d)",
                       name, why, CONF_MAX_DELAYS);
    for (uint32_t i = 0; i < d.n; i++)
        if (d.ms[i] == 0 && (f->flags & FL_NONZERO))
            return fail_at(ld, s, "%s: entry %u must be longer than 0", name, i + 1);
    *out = d;
    return 0;
}

static int
get_rate(struct loader *ld, const config_setting_t *s, const char *name, struct conf_rate *out)
{
    if (config_setting_type(s) != CONFIG_TYPE_STRING)
        return fail_at(ld, s, "%s: expected a rate such as \"100/h\" or \"unlimited\"", name);
    const char *str = config_setting_get_string(s);
    if (conf_parse_rate(str, out) != 0)
        return fail_at(ld, s, "%s: bad rate \"%s\"", name, str);
    return 0;
}

static int
get_string_list(struct loader *ld, const config_setting_t *s, const struct field *f,
                const char *name, char ***out, size_t *nout)
{
    int type = config_setting_type(s);
    if (type != CONFIG_TYPE_ARRAY && type != CONFIG_TYPE_LIST)
        return fail_at(ld, s, "%s: expected a list of strings [ \"...\" ]", name);
    int n = config_setting_length(s);
    char **list = xcalloc((size_t)n + 1, sizeof *list);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        const char *v;
        if (get_string(ld, e, name, &v) != 0)
            goto err;
        bool ok = true;
        if (f->type == F_LISTEN_LIST)
            ok = is_ip_port(v, true);
        else if (f->type == F_DNS_LIST)
            ok = is_ip_port(v, false);
        if (!ok) {
            fail_at(ld, e, "%s: bad address \"%s\" (expected %s)", name, v,
                    f->type == F_LISTEN_LIST ? "\"ip:port\"" : "\"ip\" or \"ip:port\"");
            goto err;
        }
        list[i] = xstrdup(v);
    }
    conf_strings_free(*out, *nout);
    *out = list;
    *nout = (size_t)n;
    return 0;
err:
    conf_strings_free(list, (size_t)n);
    return -1;
}

static int
get_patterns(struct loader *ld, const config_setting_t *s, const char *name,
             struct conf_pattern **out, size_t *nout)
{
    if (config_setting_type(s) != CONFIG_TYPE_LIST)
        return fail_at(ld, s, "%s: expected a list of groups ( { pattern = ...; action = ...; } )",
                       name);
    int n = config_setting_length(s);
    struct conf_pattern *list = xcalloc((size_t)n + 1, sizeof *list);
    size_t done = 0;
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
            fail_at(ld, e, "%s: expected a group { pattern = ...; action = ...; }", name);
            goto err;
        }
        const config_setting_t *pat = NULL, *act = NULL;
        for (int j = 0; j < config_setting_length(e); j++) {
            const config_setting_t *m = config_setting_get_elem(e, (unsigned)j);
            if (strcmp(config_setting_name(m), "pattern") == 0)
                pat = m;
            else if (strcmp(config_setting_name(m), "action") == 0)
                act = m;
            else {
                fail_at(ld, m, "unknown directive \"%s\"", config_setting_name(m));
                goto err;
            }
        }
        if (!pat || !act) {
            fail_at(ld, e, "%s: each entry needs pattern and action", name);
            goto err;
        }
        const char *re, *action;
        if (get_string(ld, pat, "pattern", &re) != 0 || get_string(ld, act, "action", &action) != 0)
            goto err;
        size_t a;
        for (a = 0; a < sizeof conf_pattern_actions / sizeof conf_pattern_actions[0]; a++)
            if (strcmp(action, conf_pattern_actions[a]) == 0)
                break;
        if (a == sizeof conf_pattern_actions / sizeof conf_pattern_actions[0]) {
            fail_at(ld, act,
                    "action: bad action \"%s\" (expected backoff, bounce-rcpt or defer-queue)",
                    action);
            goto err;
        }
        int rc = regcomp(&list[i].re, re, CONF_REGEX_FLAGS);
        if (rc != 0) {
            char why[256];
            regerror(rc, &list[i].re, why, sizeof why);
            fail_at(ld, pat, "pattern: bad regular expression \"%s\": %s", re, why);
            goto err;
        }
        list[i].regex = xstrdup(re);
        list[i].action = (enum conf_pattern_action)a;
        done++;
    }
    conf_patterns_free(*out, *nout);
    *out = list;
    *nout = (size_t)n;
    return 0;
err:
    conf_patterns_free(list, done);
    return -1;
}

/* ---- applying a group of settings to a table ------------------------------ */

static int apply_list(struct loader *ld, const config_setting_t *s, const struct field *f,
                      void *base, const char *name);

static int
apply_field(struct loader *ld, const config_setting_t *s, const struct field *f, void *base,
            const char *name)
{
    void *p = CONF_FIELD_PTR(base, f->off);
    const char *str;
    switch (f->type) {
    case F_UINT:
    case F_UINT_UNLIMITED:
        return get_uint(ld, s, f, name, p);
    case F_DURATION:
        return get_duration(ld, s, f, name, p);
    case F_DELAYS:
        return get_delays(ld, s, f, name, p);
    case F_RATE:
        return get_rate(ld, s, name, p);
    case F_BOOL:
        if (config_setting_type(s) != CONFIG_TYPE_BOOL)
            return fail_at(ld, s, "%s: expected true or false", name);
        *(bool *)p = config_setting_get_bool(s) != 0;
        return 0;
    case F_ROLLUP:
        /* a name, or true (automatic) / false (off) */
        free(*(char **)p);
        *(char **)p = NULL;
        if (config_setting_type(s) == CONFIG_TYPE_BOOL) {
            *(bool *)CONF_FIELD_PTR(base, f->count_off) = config_setting_get_bool(s) == 0;
            return 0;
        }
        if (config_setting_type(s) != CONFIG_TYPE_STRING || !is_name(config_setting_get_string(s)))
            return fail_at(ld, s,
                           "%s: expected a rollup name (letters, digits, \".\", \"_\", \"-\"), "
                           "true or false",
                           name);
        *(char **)p = xstrdup(config_setting_get_string(s));
        *(bool *)CONF_FIELD_PTR(base, f->count_off) = false;
        return 0;
    case F_STRING:
    case F_LOG_LEVEL:
    case F_ROUTE:
    case F_LISTEN:
    case F_IP:
    case F_NAME:
    case F_DOMAIN:
        if (get_string(ld, s, name, &str) != 0)
            return -1;
        if (f->type == F_LOG_LEVEL) {
            enum log_level lvl;
            if (log_level_parse(str, &lvl) != 0)
                return fail_at(ld, s,
                               "%s: bad log level \"%s\" (expected error, warn, info, "
                               "debug or trace)",
                               name, str);
        } else if (f->type == F_ROUTE && !is_route(str)) {
            return fail_at(ld, s, "%s: bad route \"%s\" (expected \"host:port\")", name, str);
        } else if (f->type == F_LISTEN && !is_ip_port(str, true)) {
            return fail_at(ld, s, "%s: bad address \"%s\" (expected \"ip:port\")", name, str);
        } else if (f->type == F_NAME && !is_name(str)) {
            return fail_at(ld, s, "%s: bad name \"%s\" (letters, digits, \".\", \"_\", \"-\")",
                           name, str);
        } else if (f->type == F_IP && !is_ip_literal(str)) {
            return fail_at(ld, s, "%s: bad IP address \"%s\"", name, str);
        }
        free(*(char **)p);
        *(char **)p = xstrdup(str);
        if (f->type == F_DOMAIN) {
            util_strlower(*(char **)p);
            if (!is_domain_name(*(char **)p, f->flags & FL_WILDCARD))
                return fail_at(ld, s, "%s: bad domain name \"%s\"", name, str);
        }
        return 0;
    case F_STRING_LIST:
    case F_LISTEN_LIST:
    case F_DNS_LIST:
        return get_string_list(ld, s, f, name, p, CONF_FIELD_PTR(base, f->count_off));
    case F_PATTERNS:
        return get_patterns(ld, s, name, p, CONF_FIELD_PTR(base, f->count_off));
    case F_LIST:
        return apply_list(ld, s, f, base, name);
    case F_GROUP:
        break;
    }
    PGMTA_ASSERT(!"unhandled field type");
    return -1;
}

/* Applies every member of group G to base through table. Key fields of list
 * entries were already applied by apply_list and are only recorded here.
 * prefix ("database.") qualifies names in messages. */
static int
apply_table(struct loader *ld, const config_setting_t *g, const struct field *table, void *base,
            struct meta *m, const char *prefix)
{
    for (int i = 0; i < config_setting_length(g); i++) {
        const config_setting_t *s = config_setting_get_elem(g, (unsigned)i);
        const char *sname = config_setting_name(s);
        int idx = conf_field_index(table, sname);
        if (idx < 0)
            return fail_at(ld, s, "unknown directive \"%s\"", sname);
        PGMTA_ASSERT(idx < CONF_MAX_FIELDS);
        const struct field *f = &table[idx];
        char name[128];
        snprintf(name, sizeof name, "%s%s", prefix, f->name);
        m->set |= UINT64_C(1) << idx;
        m->flocs[idx] = setting_loc(ld, s);
        if (f->flags & FL_KEY)
            continue;
        if (f->type == F_GROUP) {
            if (config_setting_type(s) != CONFIG_TYPE_GROUP)
                return fail_at(ld, s, "%s: expected a group { ... }", name);
            char sub[sizeof name + 1];
            snprintf(sub, sizeof sub, "%s.", name);
            if (apply_table(ld, s, f->sub, base, &ld->groups[idx], sub) != 0)
                return -1;
            continue;
        }
        if (apply_field(ld, s, f, base, name) != 0)
            return -1;
    }
    return 0;
}

static bool
keys_equal(const struct field *table, const void *a, const void *b)
{
    for (const struct field *f = table; f->name; f++) {
        if (!(f->flags & FL_KEY))
            continue;
        const char *x = *(char *const *)CONF_FIELD_PTR((void *)(uintptr_t)a, f->off);
        const char *y = *(char *const *)CONF_FIELD_PTR((void *)(uintptr_t)b, f->off);
        if (strcmp(x, y) != 0)
            return false;
    }
    return true;
}

static void
format_key(const struct field *table, const void *elem, char *out, size_t outlen)
{
    size_t used = 0;
    out[0] = '\0';
    for (const struct field *f = table; f->name; f++) {
        if (!(f->flags & FL_KEY))
            continue;
        const char *v = *(char *const *)CONF_FIELD_PTR((void *)(uintptr_t)elem, f->off);
        int w = snprintf(out + used, outlen - used, "%s%s", used ? " selector " : "", v);
        if (w < 0 || (size_t)w >= outlen - used)
            return;
        used += (size_t)w;
    }
}

/* Adds or extends the entries of a list directive (domains, pipes, ...). */
static int
apply_list(struct loader *ld, const config_setting_t *s, const struct field *f, void *base,
           const char *name)
{
    const struct list_kind *k = f->kind;
    char **arrp = CONF_FIELD_PTR(base, f->off);
    size_t *np = CONF_FIELD_PTR(base, f->count_off);
    if (config_setting_type(s) != CONFIG_TYPE_LIST)
        return fail_at(ld, s, "%s: expected a list of groups ( { ... }, ... )", name);
    for (int i = 0; i < config_setting_length(s); i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_GROUP)
            return fail_at(ld, e, "%s: expected a group { ... }", name);
        /* The key fields, read into a scratch entry to find the entry. */
        char *scratch = xcalloc(1, k->elem_size);
        for (const struct field *kf = k->fields; kf->name; kf++) {
            if (!(kf->flags & FL_KEY))
                continue;
            const config_setting_t *ks = config_setting_get_member(e, kf->name);
            if (!ks) {
                conf_fields_free(k->fields, scratch);
                free(scratch);
                return fail_at(ld, e, "%s: entry without %s", name, kf->name);
            }
            if (apply_field(ld, ks, kf, scratch, kf->name) != 0) {
                conf_fields_free(k->fields, scratch);
                free(scratch);
                return -1;
            }
        }
        size_t idx;
        for (idx = 0; idx < *np; idx++)
            if (keys_equal(k->fields, *arrp + idx * k->elem_size, scratch))
                break;
        struct meta *metas = ld->metas[k->id];
        if (idx < *np && metas[idx].gen == ld->gen) {
            char key[512];
            format_key(k->fields, scratch, key, sizeof key);
            conf_fields_free(k->fields, scratch);
            free(scratch);
            return fail_at(ld, e, "duplicate %s \"%s\" (also at line %d)", k->what, key,
                           metas[idx].gen_line);
        }
        if (idx == *np) {
            *arrp = xrealloc(*arrp, (*np + 1) * k->elem_size);
            memcpy(*arrp + idx * k->elem_size, scratch, k->elem_size);
            ld->metas[k->id] = metas = xrealloc(metas, (*np + 1) * sizeof *metas);
            memset(&metas[idx], 0, sizeof metas[idx]);
            metas[idx].loc = setting_loc(ld, e);
            if (k->id == K_PIPE)
                ((struct conf_pipe *)(void *)(*arrp + idx * k->elem_size))->processes = 1;
            if (k->id == K_VMTA) {
                struct conf_vmta *vm = (void *)(*arrp + idx * k->elem_size);
                vm->source_ip_max_smtp_out = CONF_UNLIMITED;
                vm->source_ip_max_connect_rate = (struct conf_rate){CONF_UNLIMITED, 0};
                vm->source_ip_max_msg_rate = (struct conf_rate){CONF_UNLIMITED, 0};
            }
            (*np)++;
        } else {
            conf_fields_free(k->fields, scratch);
        }
        free(scratch);
        metas[idx].gen = ld->gen;
        metas[idx].gen_line = (int)config_setting_source_line(e);
        if (apply_table(ld, e, k->fields, *arrp + idx * k->elem_size, &metas[idx], "") != 0)
            return -1;
    }
    return 0;
}

/* ---- files ----------------------------------------------------------------- */

static int
load_file(struct loader *ld, const char *path)
{
    ld->cur_file = intern_file(ld, path);
    FILE *fp = fopen(path, "r");
    if (!fp) {
        struct loc l = {ld->cur_file, 0};
        return fail(ld, l, "cannot read: %s", strerror(errno));
    }
    fclose(fp);
    config_t cfg;
    config_init(&cfg);
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    config_set_include_dir(&cfg, slash ? (dir[0] ? dir : "/") : ".");
    int rc = 0;
    if (!config_read_file(&cfg, path)) {
        struct loc l = {intern_file(ld, config_error_file(&cfg)), config_error_line(&cfg)};
        rc = fail(ld, l, "%s", config_error_text(&cfg));
    } else {
        rc = apply_table(ld, config_root_setting(&cfg), conf_top_fields, ld->c, &ld->top, "");
    }
    config_destroy(&cfg);
    free(dir);
    ld->gen++;
    return rc;
}

static int
cmp_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int
load_conf_d(struct loader *ld, const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? xasprintf("%.*s/conf.d", (int)(slash - path), path) : xstrdup("conf.d");
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        int rc = 0;
        if (e != ENOENT) {
            struct loc l = {intern_file(ld, dir), 0};
            rc = fail(ld, l, "cannot read directory: %s", strerror(e));
        }
        free(dir);
        return rc;
    }
    char **names = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (de->d_name[0] == '.' || len <= 5 || strcmp(de->d_name + len - 5, ".conf") != 0)
            continue;
        char *full = xasprintf("%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(full, &st) != 0 || !S_ISREG(st.st_mode)) {
            free(full);
            continue;
        }
        names = xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = full;
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof *names, cmp_strings);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = load_file(ld, names[i]);
    conf_strings_free(names, n);
    free(dir);
    return rc;
}

/* ---- resolution and validation --------------------------------------------- */

static void
domain_defaults(struct conf_domain *d)
{
    memset(d, 0, sizeof *d);
    d->name = xstrdup("*");
    d->max_smtp_out = 20;
    d->max_msg_rate = (struct conf_rate){CONF_UNLIMITED, 0};
    d->max_connect_rate = (struct conf_rate){CONF_UNLIMITED, 0};
    d->max_msg_per_connection = 100;
    d->max_rcpt_per_message = 100;
    d->retry_after_ms = 10 * 60000;
    d->max_retry_after_ms = 4 * 3600000;
    d->bounce_after_ms = (4 * 24 + 12) * 3600000ULL;
    d->notify_of_delay_every_ms = 4 * 3600000ULL;
    d->use_starttls = true;
    d->require_starttls = false;
    d->tls_verify = false;
    d->mta_sts = true;
    d->dane = true;
    d->connect_timeout_ms = 30000;
    d->command_timeout_ms = 2 * 60000;
    d->data_timeout_ms = 10 * 60000;
    /* In backoff a queue sends one message a minute, retries every 20
     * minutes and returns to normal after an hour without trouble. */
    d->backoff_max_msg_rate = (struct conf_rate){60, 3600000};
    d->backoff_retry_after_ms = 20 * 60000;
    d->backoff_to_normal_after_ms = 3600000;
    d->reenable_after_ms = 3600000;
    d->patterns = xcalloc(1, sizeof *d->patterns);
}

/* Copies every field that the entry set (per its meta) onto dst. */
static void
overlay_domain(struct conf_domain *dst, const struct conf_domain *src, const struct meta *m)
{
    for (int i = 0; conf_domain_fields[i].name; i++)
        if (!(conf_domain_fields[i].flags & FL_KEY) && (m->set & (UINT64_C(1) << i)))
            conf_field_copy(&conf_domain_fields[i], dst, src);
}

static int
cmp_domains(const void *a, const void *b)
{
    return strcmp(((const struct conf_domain *)a)->name, ((const struct conf_domain *)b)->name);
}

static int
check_domain(struct loader *ld, const struct conf_domain *d, const struct meta *m)
{
    if (d->require_starttls && !d->use_starttls) {
        int req = conf_field_index(conf_domain_fields, "require-starttls");
        int use = conf_field_index(conf_domain_fields, "use-starttls");
        struct loc l = m->loc;
        if (m->set & (UINT64_C(1) << req))
            l = m->flocs[req];
        else if (m->set & (UINT64_C(1) << use))
            l = m->flocs[use];
        return fail(ld, l, "require-starttls = true needs use-starttls = true");
    }
    return 0;
}

static int
resolve_domains(struct loader *ld)
{
    struct conf *c = ld->c;
    struct meta *metas = ld->metas[K_DOMAIN];
    struct conf_domain *out = xcalloc(c->ndomains + 1, sizeof *out);
    size_t n = 1;
    domain_defaults(&out[0]);
    for (size_t i = 0; i < c->ndomains; i++) {
        if (strcmp(c->domains[i].name, "*") == 0) {
            overlay_domain(&out[0], &c->domains[i], &metas[i]);
            out[0].file = xstrdup(metas[i].loc.file);
            out[0].line = metas[i].loc.line;
        }
    }
    for (size_t i = 0; i < c->ndomains; i++) {
        if (strcmp(c->domains[i].name, "*") == 0)
            continue;
        struct conf_domain *d = &out[n++];
        memset(d, 0, sizeof *d);
        for (int j = 0; conf_domain_fields[j].name; j++)
            conf_field_copy(&conf_domain_fields[j], d, &out[0]);
        free(d->name);
        d->name = xstrdup(c->domains[i].name);
        overlay_domain(d, &c->domains[i], &metas[i]);
        d->file = xstrdup(metas[i].loc.file);
        d->line = metas[i].loc.line;
    }
    /* Validate in definition order before sorting, so the first error of
     * the files is the one reported; metas still parallel c->domains. */
    int rc = 0;
    for (size_t i = 0, j = 1; i < c->ndomains && rc == 0; i++) {
        if (strcmp(c->domains[i].name, "*") == 0) {
            rc = check_domain(ld, &out[0], &metas[i]);
        } else {
            rc = check_domain(ld, &out[j++], &metas[i]);
        }
    }
    conf_list_free(&conf_top_fields[conf_field_index(conf_top_fields, "domains")], c);
    c->domains = out;
    c->ndomains = n;
    qsort(c->domains + 1, n - 1, sizeof *c->domains, cmp_domains);
    return rc;
}

/* providers: the limits an entry leaves unset are the "*" domain's; every
 * mx-suffix must name something once its dots are trimmed. */
static int
resolve_providers(struct loader *ld)
{
    struct conf *c = ld->c;
    const struct conf_domain *def = &c->domains[0];
    int isuf = conf_field_index(conf_provider_fields, "mx-suffix");
    for (size_t i = 0; i < c->nproviders; i++) {
        struct conf_provider *p = &c->providers[i];
        const struct meta *m = &ld->metas[K_PROVIDER][i];
#define PROVIDER_SET(n) (m->set & (UINT64_C(1) << conf_field_index(conf_provider_fields, n)))
        if (!PROVIDER_SET("max-smtp-out"))
            p->max_smtp_out = def->max_smtp_out;
        if (!PROVIDER_SET("max-msg-rate"))
            p->max_msg_rate = def->max_msg_rate;
        if (!PROVIDER_SET("max-connect-rate"))
            p->max_connect_rate = def->max_connect_rate;
        if (!PROVIDER_SET("max-msg-per-connection"))
            p->max_msg_per_connection = def->max_msg_per_connection;
#undef PROVIDER_SET
        if (p->nmx_suffix == 0)
            return fail(ld, m->flocs[isuf], "mx-suffix: a provider needs at least one suffix");
        for (size_t j = 0; j < p->nmx_suffix; j++) {
            const char *sfx = p->mx_suffix[j];
            while (*sfx == '.')
                sfx++;
            size_t len = strlen(sfx);
            while (len > 0 && sfx[len - 1] == '.')
                len--;
            if (len == 0 || !hostport_is_hostname(sfx, len))
                return fail(ld, m->flocs[isuf], "mx-suffix: bad suffix \"%s\"", p->mx_suffix[j]);
        }
    }
    return 0;
}

/* "ip" or "ip/prefix" (smtp-listener.allow). */
static bool
is_cidr(const char *s)
{
    char ip[64];
    const char *slash = strchr(s, '/');
    size_t len = slash ? (size_t)(slash - s) : strlen(s);
    if (len == 0 || len >= sizeof ip)
        return false;
    memcpy(ip, s, len);
    ip[len] = '\0';
    unsigned char bytes[16];
    unsigned maxp = 32;
    if (inet_pton(AF_INET, ip, bytes) != 1) {
        if (inet_pton(AF_INET6, ip, bytes) != 1)
            return false;
        maxp = 128;
    }
    if (!slash)
        return true;
    const char *p = slash + 1;
    if (!*p || strlen(p) > 3)
        return false;
    unsigned v = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (unsigned)(*p - '0');
    }
    return v <= maxp;
}

/* smtp-listener: allow entries, users' passwords, TLS files in pairs. */
static int
validate_smtp_listener(struct loader *ld)
{
    struct conf *c = ld->c;
    int gi = conf_field_index(conf_top_fields, "smtp-listener");
    const struct field *sub = conf_top_fields[gi].sub;
    const struct meta *gm = &ld->groups[gi];
    struct loc gl = {ld->files[0], 0};
    if (ld->top.set & (UINT64_C(1) << gi))
        gl = ld->top.flocs[gi];
    for (size_t i = 0; i < c->nsmtp_listener_allow; i++) {
        if (!is_cidr(c->smtp_listener_allow[i]))
            return fail(ld, gm->flocs[conf_field_index(sub, "allow")],
                        "smtp-listener.allow: bad network \"%s\" (expected \"ip/prefix\")",
                        c->smtp_listener_allow[i]);
    }
    for (size_t i = 0; i < c->nsmtp_listener_users; i++) {
        const char *pw = c->smtp_listener_users[i].password;
        if (!pw)
            return fail(ld, ld->metas[K_SMTP_USER][i].loc,
                        "smtp-listener.users: entry without password");
        if (strncmp(pw, "{SHA256}", 8) == 0 &&
            (strlen(pw + 8) != 64 || strspn(pw + 8, "0123456789abcdefABCDEF") != 64))
            return fail(ld, ld->metas[K_SMTP_USER][i].loc,
                        "smtp-listener.users: \"{SHA256}\" must be followed by 64 hex digits");
    }
    if (!c->smtp_listener_tls_cert != !c->smtp_listener_tls_key)
        return fail(ld, gl, "smtp-listener: tls-cert and tls-key go together");
    return 0;
}

/* webhooks entries: what the webhook process would refuse when it starts
 * (see webhook.h), refused at load. */
static struct loc
webhook_loc(struct loader *ld, size_t i, const char *field)
{
    const struct field *wf =
        conf_top_fields[conf_field_index(conf_top_fields, "webhooks")].kind->fields;
    const struct meta *m = &ld->metas[K_WEBHOOK][i];
    int j = conf_field_index(wf, field);
    return j >= 0 && (m->set & (UINT64_C(1) << j)) ? m->flocs[j] : m->loc;
}

static int
validate_webhooks(struct loader *ld)
{
    struct conf *c = ld->c;
    char err[512];
    for (size_t i = 0; i < c->nwebhooks; i++) {
        const struct conf_webhook *w = &c->webhooks[i];
        struct webhook_url u;
        if (webhook_url_parse(w->url, &u, err, sizeof err) != 0)
            return fail(ld, webhook_loc(ld, i, "url"), "webhook \"%s\": %s", w->name, err);
        bool https = u.https;
        webhook_url_free(&u);
        size_t len;
        char *key = webhook_read_secret(w->secret_file, &len, err, sizeof err);
        if (!key)
            return fail(ld, webhook_loc(ld, i, "secret-file"), "webhook \"%s\": %s", w->name, err);
        memset(key, 0, len);
        free(key);
        if (w->types && webhook_types_check(w->types, err, sizeof err) != 0)
            return fail(ld, webhook_loc(ld, i, "types"), "webhook \"%s\": %s", w->name, err);
        if (w->timeout_ms > WEBHOOK_MAX_TIMEOUT_MS)
            return fail(ld, webhook_loc(ld, i, "timeout"), "webhook \"%s\": timeout: at most %us",
                        w->name, WEBHOOK_MAX_TIMEOUT_MS / 1000);
        if (w->ca_file && !https)
            return fail(ld, webhook_loc(ld, i, "ca-file"),
                        "webhook \"%s\": ca-file needs an https url", w->name);
        if (w->ca_file && webhook_ca_check(w->ca_file, err, sizeof err) != 0)
            return fail(ld, webhook_loc(ld, i, "ca-file"), "webhook \"%s\": %s", w->name, err);
    }
    return 0;
}

static struct loc
top_loc(struct loader *ld, const char *name)
{
    int idx = conf_field_index(conf_top_fields, name);
    struct loc l = {ld->files[0], 0};
    if (ld->top.set & (UINT64_C(1) << idx))
        l = ld->top.flocs[idx];
    return l;
}

/* list-unsubscribe entries, the secret and the listener (see README,
 * One-click unsubscribe): the secret is read here so that a missing or
 * unreadable file stops the start, not the first delivery. */
static int
validate_unsubscribe(struct loader *ld)
{
    struct conf *c = ld->c;
    char err[512];
    const struct field *uf =
        conf_top_fields[conf_field_index(conf_top_fields, "list-unsubscribe")].kind->fields;
    for (size_t i = 0; i < c->nlist_unsubscribe; i++) {
        const struct conf_list_unsubscribe *e = &c->list_unsubscribe[i];
        const struct meta *m = &ld->metas[K_LIST_UNSUB][i];
        int j = conf_field_index(uf, "url");
        struct loc l = m->set & (UINT64_C(1) << j) ? m->flocs[j] : m->loc;
        if (unsub_url_check(e->url, err, sizeof err) != 0)
            return fail(ld, l, "list-unsubscribe \"%s\": %s", e->name, err);
        if (e->mailto && (!addr_validate_str(e->mailto, NULL, NULL) ||
                          strspn(e->mailto, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                            "0123456789.-_+@") != strlen(e->mailto)))
            return fail(ld, m->loc,
                        "list-unsubscribe \"%s\": mailto: an address of letters, digits and "
                        ".-_+ wanted",
                        e->name);
        if (e->job_prefix && strlen(e->job_prefix) > UNSUB_JOB_MAX)
            return fail(ld, m->loc, "list-unsubscribe \"%s\": job-prefix: at most %d octets",
                        e->name, UNSUB_JOB_MAX);
        const char *sc = e->suppression_scope;
        if (sc && strcmp(sc, "global") != 0 && strcmp(sc, "job-prefix") != 0)
            return fail(ld, m->loc,
                        "list-unsubscribe \"%s\": suppression-scope: \"global\" or "
                        "\"job-prefix\"",
                        e->name);
        if (sc && !strcmp(sc, "job-prefix") && !e->job_prefix)
            return fail(ld, m->loc,
                        "list-unsubscribe \"%s\": suppression-scope \"job-prefix\" needs a "
                        "job-prefix",
                        e->name);
    }
    if ((c->nlist_unsubscribe || c->listen_unsubscribe) && !c->unsubscribe_secret_file) {
        struct loc l = top_loc(ld, c->nlist_unsubscribe ? "list-unsubscribe" : "listen");
        return fail(ld, l, "unsubscribe-secret-file is required by %s",
                    c->nlist_unsubscribe ? "list-unsubscribe" : "listen.unsubscribe");
    }
    if (c->unsubscribe_secret_file) {
        size_t len;
        char *key = unsub_read_secret(c->unsubscribe_secret_file, &len, err, sizeof err);
        if (!key)
            return fail(ld, top_loc(ld, "unsubscribe-secret-file"), "unsubscribe-secret-file: %s",
                        err);
        OPENSSL_cleanse(key, len);
        free(key);
    }
    return 0;
}

static int
validate(struct loader *ld)
{
    struct conf *c = ld->c;
    if (!c->database_url)
        return fail(ld, top_loc(ld, "database"), "database.url is required");
    /* The HTTP API always wants a token (RELIABILITY.md, security defaults). */
    if (c->listen_http && !c->http_token)
        return fail(ld, top_loc(ld, "listen"), "listen.http: the HTTP API needs http.token");
    if (c->tls_ca_file) {
        char err[300];
        if (webhook_ca_check(c->tls_ca_file, err, sizeof err) != 0)
            return fail(ld, top_loc(ld, "tls-ca-file"), "tls-ca-file: %s", err);
    }
    /* The admin token must not inject and an inject token must not steer. */
    for (size_t i = 0; i < c->nhttp_inject_tokens; i++) {
        if (!c->http_inject_tokens[i][0])
            return fail(ld, top_loc(ld, "http"), "http.inject-tokens: empty token");
        if (c->http_token && !strcmp(c->http_inject_tokens[i], c->http_token))
            return fail(ld, top_loc(ld, "http"),
                        "http.inject-tokens: equal to http.token (the admin token must not "
                        "inject)");
    }
    /* Required fields of list entries (checked once all files merged). */
    for (const struct field *f = conf_top_fields; f->name; f++) {
        if (f->type != F_LIST)
            continue;
        const struct list_kind *k = f->kind;
        size_t n = *(size_t *)CONF_FIELD_PTR(c, f->count_off);
        for (size_t i = 0; i < n; i++) {
            for (int j = 0; k->fields[j].name; j++) {
                if ((k->fields[j].flags & FL_REQUIRED) &&
                    !(ld->metas[k->id][i].set & (UINT64_C(1) << j)))
                    return fail(ld, ld->metas[k->id][i].loc, "%s: entry without %s", f->name,
                                k->fields[j].name);
            }
        }
    }
    if (validate_smtp_listener(ld) != 0)
        return -1;
    if (validate_webhooks(ld) != 0)
        return -1;
    if (validate_unsubscribe(ld) != 0)
        return -1;
    /* TLS-RPT reports by mail need a sender; from without the rest is a typo */
    if ((c->tls_report_org != NULL) != (c->tls_report_from != NULL))
        return fail(ld, top_loc(ld, "tls-report"),
                    "tls-report: organization-name and from go together");
    /* A VERP tag nobody can check, or a listener that cannot check one,
     * would let forged bounces suppress addresses. */
    if ((c->nverp > 0 || c->nlisten_inbound > 0) &&
        (!c->verp_secret || strlen(c->verp_secret) < 16))
        return fail(ld, top_loc(ld, c->nverp > 0 ? "verp" : "listen"),
                    "verp-secret: at least 16 characters are needed with verp entries or "
                    "listen.inbound");
    if (c->nlisten_inbound > 0 && c->nverp == 0 && c->ninbound_bounce_domains == 0 &&
        c->ninbound_feedback_domains == 0)
        return fail(ld, top_loc(ld, "listen"),
                    "listen.inbound: no bounce or feedback domain (verp entries, "
                    "inbound.bounce-domains or inbound.feedback-domains)");
    if (c->npipes == 0) {
        c->pipes = xcalloc(2, sizeof *c->pipes);
        c->pipes[0] = (struct conf_pipe){xstrdup("transactional"), 1};
        c->pipes[1] = (struct conf_pipe){xstrdup("bulk"), 1};
        c->npipes = 2;
    }
    if (!conf_pipe_lookup(c, c->default_pipe)) {
        struct loc l = top_loc(ld, "default-pipe");
        if (l.line == 0)
            l = top_loc(ld, "pipes");
        return fail(ld, l, "default-pipe: no pipe named \"%s\"", c->default_pipe);
    }
    for (size_t i = 0; i < c->nvmta_pools; i++) {
        struct conf_vmta_pool *p = &c->vmta_pools[i];
        struct meta *m = &ld->metas[K_POOL][i];
        struct loc l = m->flocs[conf_field_index(conf_pool_fields, "virtual-mtas")];
        if (p->nmembers == 0)
            return fail(ld, l, "virtual-mtas: a pool needs at least one virtual MTA");
        for (size_t j = 0; j < p->nmembers; j++)
            if (!conf_vmta_lookup(c, p->members[j]))
                return fail(ld, l, "virtual-mtas: no virtual MTA named \"%s\"", p->members[j]);
        if (conf_vmta_lookup(c, p->name))
            return fail(ld, m->loc, "virtual MTA pool \"%s\" has the name of a virtual MTA",
                        p->name);
    }
    if (resolve_domains(ld) != 0)
        return -1;
    return resolve_providers(ld);
}

/* ---- public ------------------------------------------------------------------ */

struct conf *
conf_load(const char *path, char *err, size_t errlen)
{
    struct conf *c = xcalloc(1, sizeof *c);
    struct loader ld = {.c = c, .err = err, .errlen = errlen};
    if (errlen > 0)
        err[0] = '\0';
    c->path = xstrdup(path);
    char host[256];
    if (gethostname(host, sizeof host) != 0 || !host[0])
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    c->node_name = xstrdup(host);
    c->log_level = xstrdup("info");
    c->database_connections = 4;
    c->dns_servers = xcalloc(1, sizeof *c->dns_servers);
    c->dns_timeout_ms = 5000;
    c->listen_smtp = xcalloc(1, sizeof *c->listen_smtp);
    c->listen_inbound = xcalloc(1, sizeof *c->listen_inbound);
    c->inbound_bounce_domains = xcalloc(1, sizeof *c->inbound_bounce_domains);
    c->inbound_feedback_domains = xcalloc(1, sizeof *c->inbound_feedback_domains);
    c->inbound_max_sessions = 200;
    c->inbound_max_sessions_per_client = 10;
    c->inbound_max_message_size = 10 * 1024 * 1024;
    c->inbound_idle_timeout_ms = 5 * 60000;
    c->inbound_data_timeout_ms = 3 * 60000;
    c->inbound_max_data_time_ms = 10 * 60000;
    c->http_allowed_hosts = xcalloc(1, sizeof *c->http_allowed_hosts);
    c->http_inject_tokens = xcalloc(1, sizeof *c->http_inject_tokens);
    c->http_max_body_size = 32 * 1024 * 1024;
    c->http_max_connections = 512;
    c->http_header_timeout_ms = 10000;
    c->http_request_timeout_ms = 120000;
    c->smtp_port = 25;
    c->default_pipe = xstrdup("bulk");
    c->generate_bounces = true;
    c->lease_ms = 5 * 60000;
    c->poll_interval_ms = 1000;
    c->tls_report_interval_ms = 5 * 60000; /* TLSRPT_DEFAULT_INTERVAL_MS */
    c->shutdown_timeout_ms = 30000;
    c->smtp_listener_allow = xcalloc(3, sizeof *c->smtp_listener_allow);
    c->smtp_listener_allow[0] = xstrdup("127.0.0.0/8");
    c->smtp_listener_allow[1] = xstrdup("::1/128");
    c->nsmtp_listener_allow = 2;
    c->smtp_listener_max_sessions = 1000;
    c->smtp_listener_max_message_size = 50 * 1024 * 1024;
    c->smtp_listener_max_rcpt = 1000;
    c->smtp_listener_idle_timeout_ms = 5 * 60000;
    c->smtp_listener_data_timeout_ms = 3 * 60000;
    c->smtp_listener_processes = 0; /* one per core */
    c->smtp_listener_max_sessions_per_client = 20;
    c->smtp_listener_reserved_sessions = 10;
    c->smtp_listener_max_data_time_ms = 10 * 60000;
    c->smtp_listener_batch_max_messages = 64;
    c->smtp_listener_batch_max_bytes = 8 * 1024 * 1024;
    c->smtp_listener_batch_max_wait_ms = 1;
    c->smtp_listener_max_auth_failures = 3;
    c->hop_count_limit = 50;
    c->smtp_listener_auth_failure_delay_ms = 1000;
    /* Mailbox providers post one-click unsubscribes from a few addresses. */
    c->unsubscribe_max_rate = (struct conf_rate){600, 60000};

    int rc = load_file(&ld, path);
    if (rc == 0)
        rc = load_conf_d(&ld, path);
    if (rc == 0)
        rc = validate(&ld);
    for (int k = 0; k < NKINDS; k++)
        free(ld.metas[k]);
    conf_strings_free(ld.files, ld.nfiles);
    if (rc != 0) {
        conf_free(c);
        return NULL;
    }
    return c;
}

void
conf_free(struct conf *c)
{
    if (!c)
        return;
    /* Resolved domains carry a file name beside the table's fields. */
    for (size_t i = 0; i < c->ndomains; i++) {
        free(c->domains[i].file);
        c->domains[i].file = NULL;
    }
    conf_fields_free(conf_top_fields, c);
    free(c->path);
    free(c);
}

const struct conf_domain *
conf_domain_lookup(const struct conf *c, const char *domain)
{
    char name[256];
    size_t len = strlen(domain);
    if (len + 2 > sizeof name)
        return &c->domains[0];
    memcpy(name, domain, len + 1);
    util_strlower(name);
    struct conf_domain key = {.name = name};
    const struct conf_domain *d =
        bsearch(&key, c->domains + 1, c->ndomains - 1, sizeof *c->domains, cmp_domains);
    if (d)
        return d;
    /* "*.example.com" for a.example.com and b.a.example.com; longest first. */
    char wild[258];
    for (const char *p = strchr(name, '.'); p; p = strchr(p + 1, '.')) {
        snprintf(wild, sizeof wild, "*%s", p);
        key.name = wild;
        d = bsearch(&key, c->domains + 1, c->ndomains - 1, sizeof *c->domains, cmp_domains);
        if (d)
            return d;
    }
    return &c->domains[0];
}

const struct conf_vmta *
conf_vmta_lookup(const struct conf *c, const char *name)
{
    for (size_t i = 0; i < c->nvmtas; i++)
        if (strcmp(c->vmtas[i].name, name) == 0)
            return &c->vmtas[i];
    return NULL;
}

const struct conf_vmta_pool *
conf_vmta_pool_lookup(const struct conf *c, const char *name)
{
    for (size_t i = 0; i < c->nvmta_pools; i++)
        if (strcmp(c->vmta_pools[i].name, name) == 0)
            return &c->vmta_pools[i];
    return NULL;
}

const struct conf_pipe *
conf_pipe_lookup(const struct conf *c, const char *name)
{
    for (size_t i = 0; i < c->npipes; i++)
        if (strcmp(c->pipes[i].name, name) == 0)
            return &c->pipes[i];
    return NULL;
}

int
conf_domain_match_pattern(const struct conf_domain *d, const char *text)
{
    for (size_t i = 0; i < d->npatterns; i++)
        if (regexec(&d->patterns[i].re, text, 0, NULL, 0) == 0)
            return (int)i;
    return -1;
}
