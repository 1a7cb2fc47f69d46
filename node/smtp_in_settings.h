/* smtp_in_settings: the SMTP listener's settings, copied from the
 * configuration (smtp-listener.*) and replaced whole on reload; sessions
 * read the current ones. Internal to the listener (smtp_server.c). */
#ifndef PGMTA_SMTP_IN_SETTINGS_H
#define PGMTA_SMTP_IN_SETTINGS_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "conf.h"
#include "smtp_in_batch.h"
#include "smtp_server.h"

struct smtp_in_settings {
    SSL_CTX *tls; /* NULL: no STARTTLS */
    struct smtp_server_cidr *allow;
    size_t nallow;
    struct conf_smtp_user *users; /* deep copy */
    size_t nusers;
    uint32_t max_sessions;
    uint32_t max_per_client; /* sessions per address not in allow */
    uint32_t reserved;       /* sessions only allowed addresses may use */
    uint32_t max_size;
    uint32_t max_rcpt;
    uint64_t idle_ms;
    uint64_t data_ms;     /* silence during DATA */
    uint64_t data_max_ms; /* the whole of DATA */
    uint32_t max_auth_failures;
    uint32_t hop_limit;     /* Received: fields a message may carry in */
    uint64_t auth_delay_ms; /* after the first failed AUTH; doubles per failure */
    struct smtp_in_batch_limits batch;
    char *hostname;
    char *db_url; /* database.url, for the batcher's extra connections */
    char **vmtas; /* names of the virtual MTAs and pools X-Virtual-MTA may name */
    size_t nvmtas;
};

/* NULL with a reason in err when the TLS files cannot be loaded or an
 * allow entry does not parse. */
/* Does the configuration know the virtual MTA or pool NAME? */
bool smtp_in_settings_vmta_known(const struct smtp_in_settings *st, const char *name);
struct smtp_in_settings *smtp_in_settings_new(const struct conf *conf, char *err, size_t errlen);
/* The inbound listener's: inbound.* limits, smtp-listener's TLS files,
 * no allow list and no users. */
struct smtp_in_settings *smtp_in_settings_new_inbound(const struct conf *conf, char *err,
                                                      size_t errlen);
/* Frees (passwords are wiped first). NULL is ignored. */
void smtp_in_settings_free(struct smtp_in_settings *st);

#endif
