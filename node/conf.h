/* conf: loads the libconfig file given with -c and every conf.d/ *.conf beside
 * it (name order), merges them, validates every directive and resolves
 * per-domain settings against the "*" defaults. A struct conf is immutable
 * once loaded; a reload builds a new one and swaps it in. */
#ifndef PGMTA_CONF_H
#define PGMTA_CONF_H

#include <regex.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define CONF_UNLIMITED UINT32_MAX
/* Longest accepted duration: 10 years of 365 days. */
#define CONF_DURATION_MAX_MS (3650ULL * 86400000ULL)

/* A rate such as "100/h": count messages per period_ms. count ==
 * CONF_UNLIMITED means "unlimited" (then period_ms is 0); otherwise count >= 1
 * and period_ms >= 1. */
struct conf_rate {
    uint32_t count;
    uint32_t period_ms;
};

/* smtp-pattern-list entry (issue: traffic shaping). */
enum conf_pattern_action {
    CONF_PATTERN_BACKOFF,
    CONF_PATTERN_BOUNCE_RCPT,
    CONF_PATTERN_DEFER_QUEUE,
    CONF_PATTERN_DISABLE_SOURCE_IP
};
struct conf_pattern {
    char *regex; /* POSIX extended, case-insensitive, matched on the reply text */
    enum conf_pattern_action action;
    regex_t re; /* regex compiled with REG_EXTENDED | REG_ICASE | REG_NOSUB */
};

/* A retry schedule: retry-after = "5m, 10m, 1h" (PowerMTA allows 30
 * entries). ms[0] is the first (or only) delay; n is the number of entries
 * given, 0 when the directive was never set (defaults and unset
 * retry-recipients-after). */
#define CONF_MAX_DELAYS 30
struct conf_delays {
    uint64_t ms[CONF_MAX_DELAYS];
    uint32_t n;
};

/* Settings of one domain entry, already merged with "*" (every field set). */
struct conf_domain {
    char *name;  /* "*" or a lower-case domain */
    char *route; /* "host:port" bypassing MX, or NULL */
    uint32_t max_smtp_out;
    struct conf_rate max_msg_rate;
    struct conf_rate max_connect_rate;
    uint32_t max_msg_per_connection;
    uint32_t max_rcpt_per_message;
    union {
        uint64_t retry_after_ms; /* first retry delay (= retry_after.ms[0]) */
        struct conf_delays retry_after;
    };
    uint64_t max_retry_after_ms; /* cap of the backoff */
    uint64_t bounce_after_ms;
    uint64_t notify_of_delay_every_ms; /* NOTIFY=DELAY: a delay DSN this often */
    bool use_starttls;
    bool require_starttls;
    bool tls_verify;
    bool mta_sts; /* look up and apply the domain's MTA-STS policy (default on) */
    bool dane;    /* TLSA records of DNSSEC-validated MX hosts apply (default on) */
    uint64_t connect_timeout_ms;
    uint64_t command_timeout_ms; /* greeting, EHLO, MAIL, RCPT, RSET, QUIT */
    uint64_t data_timeout_ms;    /* final "." reply */
    struct conf_rate backoff_max_msg_rate;
    union {
        uint64_t backoff_retry_after_ms; /* = backoff_retry_after.ms[0] */
        struct conf_delays backoff_retry_after;
    };
    uint64_t backoff_to_normal_after_ms;
    struct conf_pattern *patterns;
    size_t npatterns;
    /* mx-rollup (README, "Traffic shaping, cluster-wide"): a name (the
     * configured rollup "rollup:NAME"), false (mx_rollup_off: the domain is
     * its own limit key) or true / unset (automatic: the key is derived from
     * the MX set, rollup.h) */
    char *mx_rollup;    /* rollup name or NULL */
    bool mx_rollup_off; /* mx-rollup = false */
    /* retry schedules (see README, Scheduling) */
    struct conf_delays retry_recipients_after; /* 4xx at RCPT; n = 0: retry-after */
    uint64_t reenable_after_ms;                /* disable-source-ip lasts this long */
    /* priorities (README, Priorities) */
    uint32_t queue_priority;          /* 0-100, default 0 */
    bool allow_priority_interruption; /* a higher queue waiting for the key ends
                                       * this queue's connections */
    int line;                         /* where the entry was defined, 0 for built-in defaults */
    char *file;
};

struct conf_vmta {
    char *name;
    char *smtp_source_host;  /* IP address to bind, or NULL */
    char *helo;              /* HELO/EHLO name, or NULL for node-name/host name */
    uint32_t queue_priority; /* 0-100: the queues of this vmta are at least this */
    /* IP warm-up (warmup.h): sessions from this vmta follow its source
     * IP's plans; over the allowance they go out from a member of
     * warmup_overflow_pool (when set) instead of waiting */
    bool warmup;
    char *warmup_overflow_pool;
    /* limits of the source IP across every destination, cluster-wide
     * (README, "Per-source-IP limits"); CONF_UNLIMITED by default */
    uint32_t source_ip_max_smtp_out;
    struct conf_rate source_ip_max_connect_rate;
    struct conf_rate source_ip_max_msg_rate;
};

struct conf_vmta_pool {
    char *name;
    char **members; /* vmta names */
    size_t nmembers;
};

/* providers entry: domains whose lowest-preference MX hosts all end in one
 * of mx_suffix share the limit key "provider:NAME" and these limits (unset
 * ones are the "*" domain's). See rollup.h. */
struct conf_provider {
    char *name;
    char **mx_suffix; /* as configured; matched case-insensitively, dots trimmed */
    size_t nmx_suffix;
    uint32_t max_smtp_out;
    struct conf_rate max_msg_rate;
    struct conf_rate max_connect_rate;
    uint32_t max_msg_per_connection;
};

struct conf_pipe {
    char *name;
    uint32_t processes;
};

struct conf_dkim {
    char *domain;
    char *selector;
    char *key_file;
};

struct conf_bimi {
    char *domain;
    char *selector;
};

/* webhooks entry: a consumer of mta.acct events (see README, Webhooks). */
struct conf_webhook {
    char *name;
    char *url;             /* http[s]://host[:port]/path */
    char *secret_file;     /* the HMAC-SHA256 key, the file's first line */
    char *types;           /* event type letters, e.g. "d,b"; NULL: every type */
    char *job_prefix;      /* only events whose job_id starts with it; NULL: all */
    uint32_t batch;        /* events per POST; 0: WEBHOOK_DEFAULT_BATCH */
    uint64_t timeout_ms;   /* per POST; 0: WEBHOOK_DEFAULT_TIMEOUT_MS */
    uint64_t max_retry_ms; /* backoff cap; 0: WEBHOOK_DEFAULT_MAX_RETRY_MS */
    char *ca_file;         /* https: the CAs (PEM) to verify with; NULL: the system's */
};

/* list-unsubscribe entry: the List-Unsubscribe headers (RFC 8058) added to
 * the mail of one sender domain, optionally of the jobs whose id starts with
 * job_prefix (see README, One-click unsubscribe). */
struct conf_list_unsubscribe {
    char *name;
    char *domain;            /* sender domain (From:, else MAIL FROM), lower case */
    char *job_prefix;        /* NULL: every job, and mail without one */
    char *url;               /* https base URL, the token appended */
    char *mailto;            /* address of the mailto: URI, or NULL */
    char *suppression_scope; /* "global" (NULL) or "job-prefix" */
};

/* verp entry: which mail gets a VERP envelope sender (see README, VERP).
 * sender-domain and job-prefix both set: both must match; the first
 * matching entry wins. */
struct conf_verp {
    char *name;
    char *sender_domain; /* of the original envelope sender; NULL: any */
    char *job_prefix;    /* NULL: any job, or none */
    char *bounce_domain; /* the VERP address's domain */
    char *prefix;        /* local part before '+'; NULL: "bounces" */
};

/* smtp-listener.users entry: who may AUTH on the injection listener. */
struct conf_smtp_user {
    char *name;
    char *password; /* plain text, or "{SHA256}" and the hex digest */
};

struct conf {
    char *path; /* the main file */
    char *node_name;
    char *database_url;
    uint32_t database_connections;
    char **dns_servers; /* "ip" or "ip:port"; empty: /etc/resolv.conf */
    size_t ndns_servers;
    uint64_t dns_timeout_ms;
    bool dns_dnssec; /* the resolver validates: its AD bit enables DANE */
    char **listen_smtp;
    size_t nlisten_smtp;
    char *listen_http; /* NULL: no HTTP API */
    char *http_token;
    char *http_dashboard_dir;  /* NULL: the built-in default (see http.h) */
    char **http_allowed_hosts; /* Host names accepted besides loopback and listen.http */
    size_t nhttp_allowed_hosts;
    char **http_inject_tokens; /* Bearer tokens of POST /api/inject/v1 only */
    size_t nhttp_inject_tokens;
    uint32_t http_max_body_size;   /* bytes of a request body, inflated too */
    uint32_t http_max_connections; /* open HTTP connections; more wait */
    uint64_t http_header_timeout_ms;
    uint64_t http_request_timeout_ms;
    uint32_t smtp_port;
    char *tls_ca_file; /* CA certificates for MX hosts and MTA-STS servers; NULL: system */
    struct conf_pipe *pipes;
    size_t npipes;
    char *default_pipe;
    struct conf_vmta *vmtas;
    size_t nvmtas;
    struct conf_vmta_pool *vmta_pools;
    size_t nvmta_pools;
    struct conf_domain *domains; /* domains[0] is always "*" */
    size_t ndomains;
    struct conf_provider *providers; /* in configuration order: the first match wins */
    size_t nproviders;
    struct conf_dkim *dkim;
    size_t ndkim;
    struct conf_bimi *bimi;
    size_t nbimi;
    struct conf_webhook *webhooks;
    size_t nwebhooks;
    struct conf_list_unsubscribe *list_unsubscribe;
    size_t nlist_unsubscribe;
    char *unsubscribe_secret_file;         /* the HMAC key of the tokens */
    char *listen_unsubscribe;              /* "ip:port" of POST /u/TOKEN, or NULL */
    struct conf_rate unsubscribe_max_rate; /* requests per client address */
    struct conf_verp *verp;
    size_t nverp;
    char *verp_secret; /* the key of the VERP tag (HMAC-SHA256) */
    /* inbound { ... }: the listener for bounces and feedback reports
     * (listen.inbound; see README, Inbound bounces and feedback) */
    char **listen_inbound;
    size_t nlisten_inbound;
    char **inbound_bounce_domains; /* besides every verp bounce-domain */
    size_t ninbound_bounce_domains;
    char **inbound_feedback_domains;
    size_t ninbound_feedback_domains;
    char *inbound_unsubscribe_local_part; /* NULL: no mailto: unsubscribes */
    uint32_t inbound_max_sessions;
    uint32_t inbound_max_sessions_per_client;
    uint32_t inbound_max_message_size;
    uint64_t inbound_idle_timeout_ms;
    uint64_t inbound_data_timeout_ms;
    uint64_t inbound_max_data_time_ms;
    /* tls-report { ... }: daily TLS-RPT reports (see README, TLS-RPT); off
     * while organization-name is NULL */
    char *tls_report_org;
    char *tls_report_contact;        /* NULL: the organization name */
    char *tls_report_submitter;      /* TLS-Report-Submitter; NULL: node-name */
    char *tls_report_from;           /* sender of mailto: reports; required when on */
    uint64_t tls_report_interval_ms; /* how often a node looks for reports due */
    bool generate_bounces;
    uint64_t lease_ms;         /* how long a claim is valid */
    uint64_t poll_interval_ms; /* upper bound of the idle poll backoff */
    uint64_t shutdown_timeout_ms;
    char *log_level;
    /* smtp-listener { ... }: the SMTP injection listener (listen.smtp) */
    char *smtp_listener_tls_cert; /* PEM files; both or neither */
    char *smtp_listener_tls_key;
    char **smtp_listener_allow; /* "ip/prefix" allowed without AUTH */
    size_t nsmtp_listener_allow;
    struct conf_smtp_user *smtp_listener_users;
    size_t nsmtp_listener_users;
    uint32_t smtp_listener_max_sessions;
    uint32_t smtp_listener_max_message_size;        /* bytes */
    uint32_t smtp_listener_max_rcpt;                /* recipients per message */
    uint64_t smtp_listener_idle_timeout_ms;         /* waiting for a command */
    uint64_t smtp_listener_data_timeout_ms;         /* silence during DATA */
    uint32_t smtp_listener_processes;               /* smtp-in processes; 0: one per core */
    uint32_t smtp_listener_max_sessions_per_client; /* per address not in allow */
    uint32_t smtp_listener_reserved_sessions;       /* for addresses in allow only */
    uint64_t smtp_listener_max_data_time_ms;        /* the whole of DATA */
    uint32_t smtp_listener_batch_max_messages;      /* group commit: messages per COMMIT */
    uint32_t smtp_listener_batch_max_bytes;         /* group commit: content bytes */
    uint64_t smtp_listener_batch_max_wait_ms;       /* group commit: wait after the first */
    uint32_t hop_count_limit;                 /* Received: fields at injection, then 554 5.4.6 */
    uint32_t smtp_listener_max_auth_failures; /* per session, then closed */
    uint64_t smtp_listener_auth_failure_delay_ms; /* first delay; doubles per failure */
};

/* Loads PATH plus conf.d/ *.conf beside it. On error returns NULL and writes
 * "file:line: reason" into err (line 0 when the problem concerns the file as
 * a whole, e.g. it cannot be read). Scalars of later files override earlier
 * ones; list entries (domains, virtual-mtas, virtual-mta-pools, pipes, dkim,
 * bimi) with the name of an existing entry extend it field by field, others
 * are added. Without any pipes entry the pipes are "transactional" and
 * "bulk" with one process each. */
struct conf *conf_load(const char *path, char *err, size_t errlen);
void conf_free(struct conf *c);

/* Effective settings for DOMAIN (lower case): the exact entry, else a
 * wildcard entry "*.parent" (longest match), else "*". Never NULL. */
const struct conf_domain *conf_domain_lookup(const struct conf *c, const char *domain);
const struct conf_vmta *conf_vmta_lookup(const struct conf *c, const char *name);
const struct conf_pipe *conf_pipe_lookup(const struct conf *c, const char *name);
const struct conf_vmta_pool *conf_vmta_pool_lookup(const struct conf *c, const char *name);
/* Index of the first smtp-pattern-list entry of D matching TEXT, or -1. */
int conf_domain_match_pattern(const struct conf_domain *d, const char *text);

/* Prints the merged effective configuration in libconfig syntax, in a stable
 * order (used by pgmtad --check and golden tests); conf_load reads the output
 * back to the same configuration. Secrets (database.url, http.token) are
 * printed as configured. */
void conf_dump(const struct conf *c, FILE *out);

/* Value parsers shared with the rest of the node (0 on success, -1 on error).
 * Durations: "30", "30s", "10m", "4d12h", "1h30m", "500ms"; a bare number is
 * seconds. Rates: "100/h", "10/m", "5/s", "1000/d", "unlimited", "20/10m". */
int conf_parse_duration(const char *s, uint64_t *ms);
int conf_parse_rate(const char *s, struct conf_rate *out);
/* Formats back into the shortest canonical form ("4d12h", "600/h"). */
void conf_format_duration(uint64_t ms, char *out, size_t outlen);
void conf_format_rate(const struct conf_rate *r, char *out, size_t outlen);
/* Retry schedules: "5m, 10m, 30m" (1 to CONF_MAX_DELAYS durations separated
 * by commas). On error *WHY says which entry. Formatting writes the list
 * back ("5m, 10m, 30m"); an unset schedule (n = 0) prints ms[0]. */
int conf_parse_delays(const char *s, struct conf_delays *out, char *why, size_t whylen);
void conf_format_delays(const struct conf_delays *d, char *out, size_t outlen);

#endif
