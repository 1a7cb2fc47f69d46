/* conf_fields: the table of every directive (name, value type, offset in
 * struct conf or in a list entry) and the generic operations on values
 * described by it: free and deep copy. The tables are read-only data. */
#include "conf_int.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>

#define C_OFF(m) offsetof(struct conf, m)
#define D_OFF(m) offsetof(struct conf_domain, m)

static const struct field pipe_fields[] = {
    {.name = "name", .type = F_NAME, .off = offsetof(struct conf_pipe, name), .flags = FL_KEY},
    {.name = "processes",
     .type = F_UINT,
     .off = offsetof(struct conf_pipe, processes),
     .min = 1,
     .max = 1024},
    {0},
};

static const struct field vmta_fields[] = {
    {.name = "name", .type = F_NAME, .off = offsetof(struct conf_vmta, name), .flags = FL_KEY},
    {.name = "smtp-source-host", .type = F_IP, .off = offsetof(struct conf_vmta, smtp_source_host)},
    {.name = "helo", .type = F_STRING, .off = offsetof(struct conf_vmta, helo)},
    /* priorities (README, Priorities) */
    {.name = "queue-priority",
     .type = F_UINT,
     .off = offsetof(struct conf_vmta, queue_priority),
     .max = 100},
    /* IP warm-up (warmup.h) */
    {.name = "warmup", .type = F_BOOL, .off = offsetof(struct conf_vmta, warmup)},
    {.name = "warmup-overflow-pool",
     .type = F_STRING,
     .off = offsetof(struct conf_vmta, warmup_overflow_pool)},
    /* per-source-IP limits (README, "Per-source-IP limits") */
    {.name = "source-ip-max-smtp-out",
     .type = F_UINT_UNLIMITED,
     .off = offsetof(struct conf_vmta, source_ip_max_smtp_out),
     .min = 1},
    {.name = "source-ip-max-connect-rate",
     .type = F_RATE,
     .off = offsetof(struct conf_vmta, source_ip_max_connect_rate)},
    {.name = "source-ip-max-msg-rate",
     .type = F_RATE,
     .off = offsetof(struct conf_vmta, source_ip_max_msg_rate)},
    {0},
};

const struct field conf_pool_fields[] = {
    {.name = "name", .type = F_NAME, .off = offsetof(struct conf_vmta_pool, name), .flags = FL_KEY},
    {.name = "virtual-mtas",
     .type = F_STRING_LIST,
     .off = offsetof(struct conf_vmta_pool, members),
     .count_off = offsetof(struct conf_vmta_pool, nmembers),
     .flags = FL_REQUIRED},
    {0},
};

const struct field conf_domain_fields[] = {
    {.name = "name", .type = F_DOMAIN, .off = D_OFF(name), .flags = FL_KEY | FL_WILDCARD},
    {.name = "route", .type = F_ROUTE, .off = D_OFF(route)},
    {.name = "mx-rollup",
     .type = F_ROLLUP,
     .off = D_OFF(mx_rollup),
     .count_off = D_OFF(mx_rollup_off)},
    {.name = "max-smtp-out", .type = F_UINT_UNLIMITED, .off = D_OFF(max_smtp_out), .min = 1},
    {.name = "max-msg-rate", .type = F_RATE, .off = D_OFF(max_msg_rate)},
    {.name = "max-connect-rate", .type = F_RATE, .off = D_OFF(max_connect_rate)},
    {.name = "max-msg-per-connection",
     .type = F_UINT_UNLIMITED,
     .off = D_OFF(max_msg_per_connection),
     .min = 1},
    {.name = "max-rcpt-per-message",
     .type = F_UINT,
     .off = D_OFF(max_rcpt_per_message),
     .min = 1,
     .max = 100000},
    {.name = "retry-after", .type = F_DELAYS, .off = D_OFF(retry_after), .flags = FL_NONZERO},
    {.name = "max-retry-after",
     .type = F_DURATION,
     .off = D_OFF(max_retry_after_ms),
     .flags = FL_NONZERO},
    {.name = "bounce-after", .type = F_DURATION, .off = D_OFF(bounce_after_ms)},
    {.name = "notify-of-delay-every",
     .type = F_DURATION,
     .off = D_OFF(notify_of_delay_every_ms),
     .flags = FL_NONZERO},
    {.name = "use-starttls", .type = F_BOOL, .off = D_OFF(use_starttls)},
    {.name = "require-starttls", .type = F_BOOL, .off = D_OFF(require_starttls)},
    {.name = "tls-verify", .type = F_BOOL, .off = D_OFF(tls_verify)},
    {.name = "mta-sts", .type = F_BOOL, .off = D_OFF(mta_sts)},
    /* DANE */
    {.name = "dane", .type = F_BOOL, .off = D_OFF(dane)},
    {.name = "connect-timeout",
     .type = F_DURATION,
     .off = D_OFF(connect_timeout_ms),
     .flags = FL_NONZERO},
    {.name = "command-timeout",
     .type = F_DURATION,
     .off = D_OFF(command_timeout_ms),
     .flags = FL_NONZERO},
    {.name = "data-timeout",
     .type = F_DURATION,
     .off = D_OFF(data_timeout_ms),
     .flags = FL_NONZERO},
    {.name = "backoff-max-msg-rate", .type = F_RATE, .off = D_OFF(backoff_max_msg_rate)},
    {.name = "backoff-retry-after",
     .type = F_DELAYS,
     .off = D_OFF(backoff_retry_after),
     .flags = FL_NONZERO},
    {.name = "backoff-to-normal-after",
     .type = F_DURATION,
     .off = D_OFF(backoff_to_normal_after_ms),
     .flags = FL_NONZERO},
    {.name = "smtp-pattern-list",
     .type = F_PATTERNS,
     .off = D_OFF(patterns),
     .count_off = D_OFF(npatterns)},
    /* retry schedules */
    {.name = "retry-recipients-after",
     .type = F_DELAYS,
     .off = D_OFF(retry_recipients_after),
     .flags = FL_NONZERO},
    {.name = "reenable-after",
     .type = F_DURATION,
     .off = D_OFF(reenable_after_ms),
     .flags = FL_NONZERO},
    /* priorities (README, Priorities) */
    {.name = "queue-priority", .type = F_UINT, .off = D_OFF(queue_priority), .max = 100},
    {.name = "allow-priority-interruption",
     .type = F_BOOL,
     .off = D_OFF(allow_priority_interruption)},
    {0},
};

#define P_OFF(m) offsetof(struct conf_provider, m)
const struct field conf_provider_fields[] = {
    {.name = "name", .type = F_NAME, .off = P_OFF(name), .flags = FL_KEY},
    {.name = "mx-suffix",
     .type = F_STRING_LIST,
     .off = P_OFF(mx_suffix),
     .count_off = P_OFF(nmx_suffix),
     .flags = FL_REQUIRED},
    {.name = "max-smtp-out", .type = F_UINT_UNLIMITED, .off = P_OFF(max_smtp_out), .min = 1},
    {.name = "max-msg-rate", .type = F_RATE, .off = P_OFF(max_msg_rate)},
    {.name = "max-connect-rate", .type = F_RATE, .off = P_OFF(max_connect_rate)},
    {.name = "max-msg-per-connection",
     .type = F_UINT_UNLIMITED,
     .off = P_OFF(max_msg_per_connection),
     .min = 1},
    {0},
};

static const struct field dkim_fields[] = {
    {.name = "domain",
     .type = F_DOMAIN,
     .off = offsetof(struct conf_dkim, domain),
     .flags = FL_KEY},
    {.name = "selector",
     .type = F_STRING,
     .off = offsetof(struct conf_dkim, selector),
     .flags = FL_KEY},
    {.name = "key-file",
     .type = F_STRING,
     .off = offsetof(struct conf_dkim, key_file),
     .flags = FL_REQUIRED},
    {0},
};

static const struct field bimi_fields[] = {
    {.name = "domain",
     .type = F_DOMAIN,
     .off = offsetof(struct conf_bimi, domain),
     .flags = FL_KEY},
    {.name = "selector",
     .type = F_STRING,
     .off = offsetof(struct conf_bimi, selector),
     .flags = FL_REQUIRED},
    {0},
};

#define W_OFF(m) offsetof(struct conf_webhook, m)
static const struct field webhook_fields[] = {
    {.name = "name", .type = F_NAME, .off = W_OFF(name), .flags = FL_KEY},
    {.name = "url", .type = F_STRING, .off = W_OFF(url), .flags = FL_REQUIRED},
    {.name = "secret-file", .type = F_STRING, .off = W_OFF(secret_file), .flags = FL_REQUIRED},
    {.name = "types", .type = F_STRING, .off = W_OFF(types)},
    {.name = "job-prefix", .type = F_STRING, .off = W_OFF(job_prefix)},
    {.name = "batch", .type = F_UINT, .off = W_OFF(batch), .min = 1, .max = 10000},
    {.name = "timeout", .type = F_DURATION, .off = W_OFF(timeout_ms), .flags = FL_NONZERO},
    {.name = "max-retry-after",
     .type = F_DURATION,
     .off = W_OFF(max_retry_ms),
     .flags = FL_NONZERO},
    {.name = "ca-file", .type = F_STRING, .off = W_OFF(ca_file)},
    {0},
};

static const struct list_kind webhook_kind = {K_WEBHOOK, "webhook", sizeof(struct conf_webhook),
                                              webhook_fields};

#define U_OFF(m) offsetof(struct conf_list_unsubscribe, m)
static const struct field list_unsub_fields[] = {
    {.name = "name", .type = F_NAME, .off = U_OFF(name), .flags = FL_KEY},
    {.name = "domain", .type = F_DOMAIN, .off = U_OFF(domain), .flags = FL_REQUIRED},
    {.name = "job-prefix", .type = F_STRING, .off = U_OFF(job_prefix)},
    {.name = "url", .type = F_STRING, .off = U_OFF(url), .flags = FL_REQUIRED},
    {.name = "mailto", .type = F_STRING, .off = U_OFF(mailto)},
    {.name = "suppression-scope", .type = F_STRING, .off = U_OFF(suppression_scope)},
    {0},
};

static const struct list_kind list_unsub_kind = {K_LIST_UNSUB, "list-unsubscribe entry",
                                                 sizeof(struct conf_list_unsubscribe),
                                                 list_unsub_fields};
#define V_OFF(m) offsetof(struct conf_verp, m)
static const struct field verp_fields[] = {
    {.name = "name", .type = F_NAME, .off = V_OFF(name), .flags = FL_KEY},
    {.name = "sender-domain", .type = F_DOMAIN, .off = V_OFF(sender_domain)},
    {.name = "job-prefix", .type = F_STRING, .off = V_OFF(job_prefix)},
    {.name = "bounce-domain", .type = F_DOMAIN, .off = V_OFF(bounce_domain), .flags = FL_REQUIRED},
    {.name = "prefix", .type = F_NAME, .off = V_OFF(prefix)},
    {0},
};

static const struct list_kind verp_kind = {K_VERP, "verp entry", sizeof(struct conf_verp),
                                           verp_fields};

static const struct field smtp_user_fields[] = {
    {.name = "name",
     .type = F_STRING,
     .off = offsetof(struct conf_smtp_user, name),
     .flags = FL_KEY},
    {.name = "password",
     .type = F_STRING,
     .off = offsetof(struct conf_smtp_user, password),
     .flags = FL_REQUIRED | FL_SECRET},
    {0},
};

static const struct list_kind smtp_user_kind = {K_SMTP_USER, "SMTP user",
                                                sizeof(struct conf_smtp_user), smtp_user_fields};

static const struct list_kind pipe_kind = {K_PIPE, "pipe", sizeof(struct conf_pipe), pipe_fields};
static const struct list_kind vmta_kind = {K_VMTA, "virtual MTA", sizeof(struct conf_vmta),
                                           vmta_fields};
static const struct list_kind pool_kind = {K_POOL, "virtual MTA pool",
                                           sizeof(struct conf_vmta_pool), conf_pool_fields};
static const struct list_kind domain_kind = {K_DOMAIN, "domain", sizeof(struct conf_domain),
                                             conf_domain_fields};
static const struct list_kind provider_kind = {K_PROVIDER, "provider", sizeof(struct conf_provider),
                                               conf_provider_fields};
static const struct list_kind dkim_kind = {K_DKIM, "DKIM key", sizeof(struct conf_dkim),
                                           dkim_fields};
static const struct list_kind bimi_kind = {K_BIMI, "BIMI entry", sizeof(struct conf_bimi),
                                           bimi_fields};

static const struct field database_fields[] = {
    {.name = "url", .type = F_STRING, .off = C_OFF(database_url), .flags = FL_URL},
    {.name = "connections",
     .type = F_UINT,
     .off = C_OFF(database_connections),
     .min = 1,
     .max = 1000},
    {0},
};

static const struct field dns_fields[] = {
    {.name = "servers",
     .type = F_DNS_LIST,
     .off = C_OFF(dns_servers),
     .count_off = C_OFF(ndns_servers)},
    {.name = "timeout", .type = F_DURATION, .off = C_OFF(dns_timeout_ms), .flags = FL_NONZERO},
    /* DANE: the resolver validates and is trusted (its AD bit counts) */
    {.name = "dnssec", .type = F_BOOL, .off = C_OFF(dns_dnssec)},
    {0},
};

static const struct field listen_fields[] = {
    {.name = "smtp",
     .type = F_LISTEN_LIST,
     .off = C_OFF(listen_smtp),
     .count_off = C_OFF(nlisten_smtp)},
    {.name = "http", .type = F_LISTEN, .off = C_OFF(listen_http)},
    {.name = "unsubscribe", .type = F_LISTEN, .off = C_OFF(listen_unsubscribe)},
    {.name = "inbound",
     .type = F_LISTEN_LIST,
     .off = C_OFF(listen_inbound),
     .count_off = C_OFF(nlisten_inbound)},
    {0},
};

static const struct field http_fields[] = {
    {.name = "token", .type = F_STRING, .off = C_OFF(http_token), .flags = FL_SECRET},
    {.name = "dashboard-dir", .type = F_STRING, .off = C_OFF(http_dashboard_dir)},
    {.name = "allowed-hosts",
     .type = F_STRING_LIST,
     .off = C_OFF(http_allowed_hosts),
     .count_off = C_OFF(nhttp_allowed_hosts)},
    {.name = "inject-tokens",
     .type = F_STRING_LIST,
     .off = C_OFF(http_inject_tokens),
     .count_off = C_OFF(nhttp_inject_tokens),
     .flags = FL_SECRET},
    {.name = "max-body-size",
     .type = F_UINT,
     .off = C_OFF(http_max_body_size),
     .min = 65536,
     .max = 1073741824},
    {.name = "max-connections",
     .type = F_UINT,
     .off = C_OFF(http_max_connections),
     .min = 1,
     .max = 1000000},
    {.name = "header-timeout",
     .type = F_DURATION,
     .off = C_OFF(http_header_timeout_ms),
     .flags = FL_NONZERO},
    {.name = "request-timeout",
     .type = F_DURATION,
     .off = C_OFF(http_request_timeout_ms),
     .flags = FL_NONZERO},
    {0},
};

/* The SMTP injection listener (smtp_server.c). The message size stays below
 * the 64 MB that mta.enqueue accepts, leaving room for the Received field. */
static const struct field smtp_listener_fields[] = {
    {.name = "tls-cert", .type = F_STRING, .off = C_OFF(smtp_listener_tls_cert)},
    {.name = "tls-key", .type = F_STRING, .off = C_OFF(smtp_listener_tls_key)},
    {.name = "allow",
     .type = F_STRING_LIST,
     .off = C_OFF(smtp_listener_allow),
     .count_off = C_OFF(nsmtp_listener_allow)},
    {.name = "users",
     .type = F_LIST,
     .off = C_OFF(smtp_listener_users),
     .count_off = C_OFF(nsmtp_listener_users),
     .kind = &smtp_user_kind},
    {.name = "max-sessions",
     .type = F_UINT,
     .off = C_OFF(smtp_listener_max_sessions),
     .min = 1,
     .max = 100000},
    {.name = "max-message-size",
     .type = F_UINT,
     .off = C_OFF(smtp_listener_max_message_size),
     .min = 1024,
     .max = 66060288},
    {.name = "max-rcpt-per-message",
     .type = F_UINT,
     .off = C_OFF(smtp_listener_max_rcpt),
     .min = 1,
     .max = 100000},
    {.name = "idle-timeout",
     .type = F_DURATION,
     .off = C_OFF(smtp_listener_idle_timeout_ms),
     .flags = FL_NONZERO},
    {.name = "data-timeout",
     .type = F_DURATION,
     .off = C_OFF(smtp_listener_data_timeout_ms),
     .flags = FL_NONZERO},
    /* smtp-in processes, group commit and the limits against clients that
     * hold sessions (see README, Over SMTP) */
    {.name = "processes",
     .type = F_UINT,
     .off = C_OFF(smtp_listener_processes),
     .min = 0,
     .max = 256},
    {.name = "max-sessions-per-client",
     .type = F_UINT,
     .off = C_OFF(smtp_listener_max_sessions_per_client),
     .min = 1,
     .max = 100000},
    {.name = "reserved-sessions",
     .type = F_UINT,
     .off = C_OFF(smtp_listener_reserved_sessions),
     .min = 0,
     .max = 100000},
    {.name = "max-data-time",
     .type = F_DURATION,
     .off = C_OFF(smtp_listener_max_data_time_ms),
     .flags = FL_NONZERO},
    /* failed AUTH: delay, closing and per-address backoff (see README,
     * Security) */
    {.name = "max-auth-failures",
     .type = F_UINT,
     .off = C_OFF(smtp_listener_max_auth_failures),
     .min = 1,
     .max = 100},
    {.name = "auth-failure-delay",
     .type = F_DURATION,
     .off = C_OFF(smtp_listener_auth_failure_delay_ms),
     .flags = FL_NONZERO},
    {.name = "batch-max-messages",
     .type = F_UINT,
     .off = C_OFF(smtp_listener_batch_max_messages),
     .min = 1,
     .max = 1000},
    {.name = "batch-max-bytes",
     .type = F_UINT,
     .off = C_OFF(smtp_listener_batch_max_bytes),
     .min = 1,
     .max = 1073741823},
    {.name = "batch-max-wait", .type = F_DURATION, .off = C_OFF(smtp_listener_batch_max_wait_ms)},
    {0},
};

/* The inbound listener for bounces and feedback reports (smtp_server.c
 * in its inbound mode, report.c, inbound.c). */
static const struct field inbound_fields[] = {
    {.name = "bounce-domains",
     .type = F_STRING_LIST,
     .off = C_OFF(inbound_bounce_domains),
     .count_off = C_OFF(ninbound_bounce_domains)},
    {.name = "feedback-domains",
     .type = F_STRING_LIST,
     .off = C_OFF(inbound_feedback_domains),
     .count_off = C_OFF(ninbound_feedback_domains)},
    {.name = "unsubscribe-local-part",
     .type = F_NAME,
     .off = C_OFF(inbound_unsubscribe_local_part)},
    {.name = "max-sessions",
     .type = F_UINT,
     .off = C_OFF(inbound_max_sessions),
     .min = 1,
     .max = 100000},
    {.name = "max-sessions-per-client",
     .type = F_UINT,
     .off = C_OFF(inbound_max_sessions_per_client),
     .min = 1,
     .max = 100000},
    {.name = "max-message-size",
     .type = F_UINT,
     .off = C_OFF(inbound_max_message_size),
     .min = 1024,
     .max = 66060288},
    {.name = "idle-timeout",
     .type = F_DURATION,
     .off = C_OFF(inbound_idle_timeout_ms),
     .flags = FL_NONZERO},
    {.name = "data-timeout",
     .type = F_DURATION,
     .off = C_OFF(inbound_data_timeout_ms),
     .flags = FL_NONZERO},
    {.name = "max-data-time",
     .type = F_DURATION,
     .off = C_OFF(inbound_max_data_time_ms),
     .flags = FL_NONZERO},
    {0},
};

/* tls-report { ... } (see README, TLS-RPT) */
static const struct field tls_report_fields[] = {
    {.name = "organization-name", .type = F_STRING, .off = C_OFF(tls_report_org)},
    {.name = "contact-info", .type = F_STRING, .off = C_OFF(tls_report_contact)},
    {.name = "submitter", .type = F_STRING, .off = C_OFF(tls_report_submitter)},
    {.name = "from", .type = F_STRING, .off = C_OFF(tls_report_from)},
    {.name = "interval",
     .type = F_DURATION,
     .off = C_OFF(tls_report_interval_ms),
     .flags = FL_NONZERO},
    {0},
};

const struct field conf_top_fields[] = {
    {.name = "node-name", .type = F_STRING, .off = C_OFF(node_name)},
    {.name = "log-level", .type = F_LOG_LEVEL, .off = C_OFF(log_level)},
    {.name = "database", .type = F_GROUP, .sub = database_fields},
    {.name = "dns", .type = F_GROUP, .sub = dns_fields},
    {.name = "listen", .type = F_GROUP, .sub = listen_fields},
    {.name = "http", .type = F_GROUP, .sub = http_fields},
    {.name = "smtp-listener", .type = F_GROUP, .sub = smtp_listener_fields},
    {.name = "smtp-port", .type = F_UINT, .off = C_OFF(smtp_port), .min = 1, .max = 65535},
    {.name = "tls-ca-file", .type = F_STRING, .off = C_OFF(tls_ca_file)},
    {.name = "generate-bounces", .type = F_BOOL, .off = C_OFF(generate_bounces)},
    {.name = "lease-time", .type = F_DURATION, .off = C_OFF(lease_ms), .flags = FL_NONZERO},
    {.name = "poll-interval",
     .type = F_DURATION,
     .off = C_OFF(poll_interval_ms),
     .flags = FL_NONZERO},
    {.name = "shutdown-timeout", .type = F_DURATION, .off = C_OFF(shutdown_timeout_ms)},
    {.name = "pipes",
     .type = F_LIST,
     .off = C_OFF(pipes),
     .count_off = C_OFF(npipes),
     .kind = &pipe_kind},
    {.name = "default-pipe", .type = F_NAME, .off = C_OFF(default_pipe)},
    /* mail loops: Received: fields at injection (see README, Security) */
    {.name = "hop-count-limit",
     .type = F_UINT,
     .off = C_OFF(hop_count_limit),
     .min = 1,
     .max = 1000},
    {.name = "virtual-mtas",
     .type = F_LIST,
     .off = C_OFF(vmtas),
     .count_off = C_OFF(nvmtas),
     .kind = &vmta_kind},
    {.name = "virtual-mta-pools",
     .type = F_LIST,
     .off = C_OFF(vmta_pools),
     .count_off = C_OFF(nvmta_pools),
     .kind = &pool_kind},
    {.name = "domains",
     .type = F_LIST,
     .off = C_OFF(domains),
     .count_off = C_OFF(ndomains),
     .kind = &domain_kind},
    {.name = "providers",
     .type = F_LIST,
     .off = C_OFF(providers),
     .count_off = C_OFF(nproviders),
     .kind = &provider_kind},
    {.name = "dkim",
     .type = F_LIST,
     .off = C_OFF(dkim),
     .count_off = C_OFF(ndkim),
     .kind = &dkim_kind},
    {.name = "bimi",
     .type = F_LIST,
     .off = C_OFF(bimi),
     .count_off = C_OFF(nbimi),
     .kind = &bimi_kind},
    {.name = "webhooks",
     .type = F_LIST,
     .off = C_OFF(webhooks),
     .count_off = C_OFF(nwebhooks),
     .kind = &webhook_kind},
    {.name = "list-unsubscribe",
     .type = F_LIST,
     .off = C_OFF(list_unsubscribe),
     .count_off = C_OFF(nlist_unsubscribe),
     .kind = &list_unsub_kind},
    {.name = "unsubscribe-secret-file", .type = F_STRING, .off = C_OFF(unsubscribe_secret_file)},
    {.name = "unsubscribe-max-rate-per-client", .type = F_RATE, .off = C_OFF(unsubscribe_max_rate)},
    {.name = "verp",
     .type = F_LIST,
     .off = C_OFF(verp),
     .count_off = C_OFF(nverp),
     .kind = &verp_kind},
    {.name = "verp-secret", .type = F_STRING, .off = C_OFF(verp_secret), .flags = FL_SECRET},
    {.name = "inbound", .type = F_GROUP, .sub = inbound_fields},
    {.name = "tls-report", .type = F_GROUP, .sub = tls_report_fields},
    {0},
};

const char *const conf_pattern_actions[] = {
    [CONF_PATTERN_BACKOFF] = "backoff",
    [CONF_PATTERN_BOUNCE_RCPT] = "bounce-rcpt",
    [CONF_PATTERN_DEFER_QUEUE] = "defer-queue",
    [CONF_PATTERN_DISABLE_SOURCE_IP] = "disable-source-ip",
};

void
conf_strings_free(char **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

void
conf_patterns_free(struct conf_pattern *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(p[i].regex);
        regfree(&p[i].re);
    }
    free(p);
}

int
conf_field_index(const struct field *table, const char *name)
{
    for (int i = 0; table[i].name; i++)
        if (strcmp(table[i].name, name) == 0)
            return i;
    return -1;
}

/* ---- tables: free, copy --------------------------------------------------- */

void
conf_fields_free(const struct field *table, void *base)
{
    for (const struct field *f = table; f->name; f++) {
        void *p = CONF_FIELD_PTR(base, f->off);
        switch (f->type) {
        case F_STRING:
        case F_LOG_LEVEL:
        case F_ROUTE:
        case F_LISTEN:
        case F_IP:
        case F_NAME:
        case F_DOMAIN:
        case F_ROLLUP:
            free(*(char **)p);
            *(char **)p = NULL;
            break;
        case F_STRING_LIST:
        case F_LISTEN_LIST:
        case F_DNS_LIST:
            conf_strings_free(*(char ***)p, *(size_t *)CONF_FIELD_PTR(base, f->count_off));
            *(char ***)p = NULL;
            *(size_t *)CONF_FIELD_PTR(base, f->count_off) = 0;
            break;
        case F_PATTERNS:
            conf_patterns_free(*(struct conf_pattern **)p,
                               *(size_t *)CONF_FIELD_PTR(base, f->count_off));
            *(struct conf_pattern **)p = NULL;
            *(size_t *)CONF_FIELD_PTR(base, f->count_off) = 0;
            break;
        case F_GROUP:
            conf_fields_free(f->sub, base);
            break;
        case F_LIST:
            conf_list_free(f, base);
            break;
        default:
            break;
        }
    }
}

void
conf_domain_free_fields(struct conf_domain *d)
{
    conf_fields_free(conf_domain_fields, d);
    free(d->file);
    d->file = NULL;
}

void
conf_list_free(const struct field *f, void *base)
{
    char *arr = *(char **)CONF_FIELD_PTR(base, f->off);
    size_t n = *(size_t *)CONF_FIELD_PTR(base, f->count_off);
    for (size_t i = 0; i < n; i++) {
        if (f->kind->id == K_DOMAIN)
            conf_domain_free_fields((struct conf_domain *)(void *)(arr + i * f->kind->elem_size));
        else
            conf_fields_free(f->kind->fields, arr + i * f->kind->elem_size);
    }
    free(arr);
    *(char **)CONF_FIELD_PTR(base, f->off) = NULL;
    *(size_t *)CONF_FIELD_PTR(base, f->count_off) = 0;
}

/* Deep-copies one scalar field (domain resolution). */
void
conf_field_copy(const struct field *f, void *dst, const void *src)
{
    void *d = CONF_FIELD_PTR(dst, f->off);
    const void *s = CONF_FIELD_PTR((void *)(uintptr_t)src, f->off);
    switch (f->type) {
    case F_UINT:
    case F_UINT_UNLIMITED:
        *(uint32_t *)d = *(const uint32_t *)s;
        break;
    case F_DURATION:
        *(uint64_t *)d = *(const uint64_t *)s;
        break;
    case F_DELAYS:
        *(struct conf_delays *)d = *(const struct conf_delays *)s;
        break;
    case F_RATE:
        *(struct conf_rate *)d = *(const struct conf_rate *)s;
        break;
    case F_BOOL:
        *(bool *)d = *(const bool *)s;
        break;
    case F_STRING:
    case F_ROUTE:
    case F_DOMAIN:
        free(*(char **)d);
        *(char **)d = *(char *const *)s ? xstrdup(*(char *const *)s) : NULL;
        break;
    case F_ROLLUP:
        free(*(char **)d);
        *(char **)d = *(char *const *)s ? xstrdup(*(char *const *)s) : NULL;
        *(bool *)CONF_FIELD_PTR(dst, f->count_off) =
            *(const bool *)CONF_FIELD_PTR((void *)(uintptr_t)src, f->count_off);
        break;
    case F_PATTERNS: {
        size_t *dn = CONF_FIELD_PTR(dst, f->count_off);
        size_t sn = *(const size_t *)CONF_FIELD_PTR((void *)(uintptr_t)src, f->count_off);
        const struct conf_pattern *sp = *(struct conf_pattern *const *)s;
        conf_patterns_free(*(struct conf_pattern **)d, *dn);
        struct conf_pattern *np = xcalloc(sn + 1, sizeof *np);
        for (size_t i = 0; i < sn; i++) {
            np[i].regex = xstrdup(sp[i].regex);
            np[i].action = sp[i].action;
            /* It compiled when it was read; it compiles again. */
            PGMTA_ASSERT(regcomp(&np[i].re, np[i].regex, CONF_REGEX_FLAGS) == 0);
        }
        *(struct conf_pattern **)d = np;
        *dn = sn;
        break;
    }
    default:
        PGMTA_ASSERT(!"field type not copyable");
    }
}
