/* conf_int: the directive tables shared by the conf modules (conf.c loads
 * and merges, conf_fields.c describes and frees, conf_dump.c prints). Not
 * for use outside node/conf*.c. */
#ifndef PGMTA_CONF_INT_H
#define PGMTA_CONF_INT_H

#include "conf.h"

#include <stddef.h>

#define CONF_MAX_FIELDS 64
#define CONF_REGEX_FLAGS (REG_EXTENDED | REG_ICASE | REG_NOSUB)

enum ftype {
    F_UINT,           /* uint32_t, int or digit string, min..max */
    F_UINT_UNLIMITED, /* uint32_t, also "unlimited" = CONF_UNLIMITED */
    F_DURATION,       /* uint64_t milliseconds */
    F_DELAYS,         /* struct conf_delays: one duration or a list "5m, 10m" */
    F_RATE,           /* struct conf_rate */
    F_BOOL,           /* bool */
    F_STRING,         /* char *, non-empty */
    F_LOG_LEVEL,      /* char *, a log level name */
    F_ROUTE,          /* char *, "host:port" */
    F_LISTEN,         /* char *, "ip:port" */
    F_IP,             /* char *, an IP literal */
    F_NAME,           /* char *, a name: letters, digits, ".", "_", "-" */
    F_DOMAIN,         /* char *, lower-cased domain name */
    F_STRING_LIST,    /* char **, count at count_off */
    F_LISTEN_LIST,    /* char **, each "ip:port" */
    F_DNS_LIST,       /* char **, each "ip" or "ip:port" */
    F_PATTERNS,       /* struct conf_pattern *, count at count_off */
    F_ROLLUP,         /* mx-rollup: char * name, or true/false into the bool at count_off */
    F_GROUP,          /* a group whose fields (sub) are offsets into the same base */
    F_LIST,           /* a list of groups described by kind */
};

enum {
    FL_KEY = 1,      /* identifies a list entry; merged entries match on it */
    FL_NONZERO = 2,  /* durations: 0 is refused */
    FL_WILDCARD = 4, /* domain names: "*" and "*.suffix" allowed */
    FL_REQUIRED = 8, /* list entries: must be set once merged */
    FL_SECRET = 16,  /* conf_dump prints "***" instead of the value */
    FL_URL = 32,     /* conf_dump prints a connection string without its password */
};

struct list_kind;

struct field {
    const char *name;
    enum ftype type;
    size_t off;
    size_t count_off;
    unsigned flags;
    uint32_t min, max; /* F_UINT*; max 0 means the type's maximum */
    const struct field *sub;
    const struct list_kind *kind;
};

enum kind_id {
    K_PIPE,
    K_VMTA,
    K_POOL,
    K_DOMAIN,
    K_DKIM,
    K_BIMI,
    K_SMTP_USER,
    K_WEBHOOK,
    K_LIST_UNSUB,
    K_VERP,
    K_PROVIDER,
    NKINDS
};

struct list_kind {
    enum kind_id id;
    const char *what; /* for messages: "duplicate domain ..." */
    size_t elem_size;
    const struct field *fields;
};

#define CONF_FIELD_PTR(base, off) ((void *)((char *)(base) + (off)))

/* The tables: top level (struct conf) and per list entry. */
extern const struct field conf_top_fields[];
extern const struct field conf_domain_fields[];
extern const struct field conf_pool_fields[];
extern const struct field conf_provider_fields[];
extern const char *const conf_pattern_actions[4];

/* Index of NAME in TABLE or -1. */
int conf_field_index(const struct field *table, const char *name);
void conf_strings_free(char **list, size_t n);
void conf_patterns_free(struct conf_pattern *p, size_t n);
/* Frees every owned value of the fields of TABLE in BASE (recursively). */
void conf_fields_free(const struct field *table, void *base);
void conf_domain_free_fields(struct conf_domain *d);
void conf_list_free(const struct field *f, void *base);
/* Deep-copies one value field from SRC to DST (same table). */
void conf_field_copy(const struct field *f, void *dst, const void *src);

#endif
