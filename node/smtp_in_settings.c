/* smtp_in_settings: builds and frees the SMTP listener's settings (see
 * smtp_in_settings.h). A settings object owns deep copies of everything it
 * holds (allow networks, users and passwords, the TLS context, the host
 * name); nothing points back into the configuration. */
#include "smtp_in_settings.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>
#include <openssl/err.h>

#include "log.h"
#include "smtp_in_auth.h"
#include "util.h"

void
smtp_in_settings_free(struct smtp_in_settings *st)
{
    if (!st)
        return;
    if (st->tls)
        SSL_CTX_free(st->tls);
    free(st->allow);
    for (size_t i = 0; i < st->nusers; i++) {
        free(st->users[i].name);
        if (st->users[i].password)
            OPENSSL_cleanse(st->users[i].password, strlen(st->users[i].password));
        free(st->users[i].password);
    }
    free(st->users);
    free(st->hostname);
    free(st->db_url);
    for (size_t i = 0; i < st->nvmtas; i++)
        free(st->vmtas[i]);
    free(st->vmtas);
    free(st);
}

bool
smtp_in_settings_vmta_known(const struct smtp_in_settings *st, const char *name)
{
    for (size_t i = 0; i < st->nvmtas; i++)
        if (strcmp(st->vmtas[i], name) == 0)
            return true;
    return false;
}

static SSL_CTX *
tls_server_ctx(const char *cert, const char *key, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* The private key, as DKIM keys: only the daemon's user may read it. */
    struct stat st;
    if (stat(key, &st) == 0 && (st.st_mode & S_IRWXO)) {
        snprintf(err, errlen,
                 "%s: smtp-listener.tls-key is accessible by others (mode %04o); allow only "
                 "the daemon's user (chmod 600)",
                 key, (unsigned)(st.st_mode & 07777));
        SSL_CTX_free(ctx);
        return NULL;
    }
    const char *what = NULL;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
        what = "cannot load smtp-listener.tls-cert";
    else if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        what = "cannot load smtp-listener.tls-key";
    else if (SSL_CTX_check_private_key(ctx) != 1)
        what = "smtp-listener.tls-key does not match tls-cert";
    if (what) {
        char why[256];
        ERR_error_string_n(ERR_get_error(), why, sizeof why);
        ERR_clear_error();
        snprintf(err, errlen, "%s: %s", what, why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* New settings with the listener's STARTTLS context (both listeners offer
 * the same certificate), or NULL with the reason. */
static struct smtp_in_settings *
settings_with_tls(const struct conf *conf, char *err, size_t errlen)
{
    struct smtp_in_settings *st = xcalloc(1, sizeof *st);
    if (conf->smtp_listener_tls_cert && conf->smtp_listener_tls_key) {
        st->tls =
            tls_server_ctx(conf->smtp_listener_tls_cert, conf->smtp_listener_tls_key, err, errlen);
        if (!st->tls) {
            smtp_in_settings_free(st);
            return NULL;
        }
    }
    return st;
}

struct smtp_in_settings *
smtp_in_settings_new(const struct conf *conf, char *err, size_t errlen)
{
    struct smtp_in_settings *st = settings_with_tls(conf, err, errlen);
    if (!st)
        return NULL;
    st->allow = xcalloc(conf->nsmtp_listener_allow + 1, sizeof *st->allow);
    for (size_t i = 0; i < conf->nsmtp_listener_allow; i++) {
        if (smtp_server_parse_cidr(conf->smtp_listener_allow[i], &st->allow[st->nallow]) != 0) {
            snprintf(err, errlen, "smtp-listener.allow: bad network \"%s\"",
                     conf->smtp_listener_allow[i]);
            smtp_in_settings_free(st);
            return NULL;
        }
        st->nallow++;
    }
    st->users = xcalloc(conf->nsmtp_listener_users + 1, sizeof *st->users);
    for (size_t i = 0; i < conf->nsmtp_listener_users; i++) {
        st->users[i].name = xstrdup(conf->smtp_listener_users[i].name);
        st->users[i].password = xstrdup(conf->smtp_listener_users[i].password);
        enum smtp_in_password_form form = smtp_in_password_form(st->users[i].password);
        if (form != SMTP_IN_PW_CRYPT)
            log_warn("smtp-listener user=\"%s\" event=weak-password-form form=%s: store a "
                     "crypt(3) hash (pgmta passwd)",
                     st->users[i].name, form == SMTP_IN_PW_SHA256 ? "{SHA256}" : "clear-text");
        st->nusers++;
    }
    st->max_sessions = conf->smtp_listener_max_sessions;
    st->max_size = conf->smtp_listener_max_message_size;
    st->max_rcpt = conf->smtp_listener_max_rcpt;
    st->idle_ms = conf->smtp_listener_idle_timeout_ms;
    st->data_ms = conf->smtp_listener_data_timeout_ms;
    st->data_max_ms = conf->smtp_listener_max_data_time_ms;
    st->max_per_client = conf->smtp_listener_max_sessions_per_client;
    st->reserved = conf->smtp_listener_reserved_sessions;
    st->max_auth_failures = conf->smtp_listener_max_auth_failures;
    st->hop_limit = conf->hop_count_limit;
    /* never less than a second, whatever the configuration says */
    st->auth_delay_ms = conf->smtp_listener_auth_failure_delay_ms < 1000
                            ? 1000
                            : conf->smtp_listener_auth_failure_delay_ms;
    st->batch.max_messages = conf->smtp_listener_batch_max_messages;
    st->batch.max_bytes = conf->smtp_listener_batch_max_bytes;
    st->batch.max_wait_ms = conf->smtp_listener_batch_max_wait_ms;
    /* group-commit batches in flight: one per connection of
     * database.connections */
    st->batch.connections = conf->database_connections ? conf->database_connections : 1;
    st->db_url = conf->database_url ? xstrdup(conf->database_url) : NULL;
    st->batch.db_url = st->db_url;
    st->hostname = xstrdup(conf->node_name ? conf->node_name : "localhost");
    st->vmtas = xcalloc(conf->nvmtas + conf->nvmta_pools + 1, sizeof *st->vmtas);
    for (size_t i = 0; i < conf->nvmtas; i++)
        st->vmtas[st->nvmtas++] = xstrdup(conf->vmtas[i].name);
    for (size_t i = 0; i < conf->nvmta_pools; i++)
        st->vmtas[st->nvmtas++] = xstrdup(conf->vmta_pools[i].name);
    return st;
}

struct smtp_in_settings *
smtp_in_settings_new_inbound(const struct conf *conf, char *err, size_t errlen)
{
    struct smtp_in_settings *st = settings_with_tls(conf, err, errlen);
    if (!st)
        return NULL;
    st->max_sessions = conf->inbound_max_sessions;
    st->max_per_client = conf->inbound_max_sessions_per_client;
    st->max_size = conf->inbound_max_message_size;
    /* a report goes to one address; a few more are harmless */
    st->max_rcpt = 10;
    st->idle_ms = conf->inbound_idle_timeout_ms;
    st->data_ms = conf->inbound_data_timeout_ms;
    st->data_max_ms = conf->inbound_max_data_time_ms;
    st->max_auth_failures = 1;
    st->auth_delay_ms = 1000;
    st->hop_limit = conf->hop_count_limit;
    st->hostname = xstrdup(conf->node_name ? conf->node_name : "localhost");
    return st;
}
