/* smtp_in_auth: the defences of the SMTP listener's AUTH (see README,
 * Security): a per-client-address table of recent failures, bounded in size
 * and expiring, from which the delay before a 535 grows, and the check of a
 * password against its stored form (crypt(3) hash, or the older {SHA256}).
 * The table of a running node is shared by all its smtp-in processes (the
 * root creates it before forking them); the checks themselves run on worker
 * threads (smtp_in_auth_pool.h). */
#ifndef PGMTA_SMTP_IN_AUTH_H
#define PGMTA_SMTP_IN_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Addresses remembered at most; the oldest entry makes room. */
#define SMTP_IN_AUTH_TABLE_SIZE 1024
/* An address is forgotten this long after its last failure. */
#define SMTP_IN_AUTH_FORGET_MS (15 * 60 * 1000)
/* The delay doubles per failure up to base << this. */
#define SMTP_IN_AUTH_MAX_SHIFT 5

struct smtp_in_auth_table;

/* A table private to the calling process. */
struct smtp_in_auth_table *smtp_in_auth_table_new(void);
/* A table in memory shared with the processes forked afterwards, guarded by
 * a process-shared robust mutex (a process that dies holding it does not
 * block the others). NULL when the mapping cannot be made. */
struct smtp_in_auth_table *smtp_in_auth_table_new_shared(void);
/* Frees (or unmaps, in this process) a table. NULL is ignored. */
void smtp_in_auth_table_free(struct smtp_in_auth_table *t);
/* The root process: creates the node's shared table, once, before the
 * smtp-in processes are forked (they and their restarts inherit it). A
 * failure is logged and leaves each process its own table. */
void smtp_in_auth_shared_init(void);
/* The node's shared table, or NULL when there is none (smtp_in_auth_shared_init
 * was not called in this process or an ancestor, or failed). */
struct smtp_in_auth_table *smtp_in_auth_shared(void);
/* Records a failed AUTH from addr (4 or 16 bytes by family) at now_ms;
 * returns the failures of that address not yet forgotten, this one
 * included (at least 1). */
unsigned smtp_in_auth_failed(struct smtp_in_auth_table *t, int family, const unsigned char *addr,
                             uint64_t now_ms);
/* Failures of addr not yet forgotten (0 when unknown). */
unsigned smtp_in_auth_failures(struct smtp_in_auth_table *t, int family, const unsigned char *addr,
                               uint64_t now_ms);
/* The delay before answering the nth failure: base, 2 base, 4 base, ... */
uint64_t smtp_in_auth_delay_ms(uint64_t base_ms, unsigned failures);

/* Stored password forms (see README, Security). */
enum smtp_in_password_form {
    SMTP_IN_PW_CRYPT = 0, /* $y$, $6$, $5$, $2b$, $7$, $gy$ ... from crypt(3) */
    SMTP_IN_PW_SHA256,    /* {SHA256}hex: unsalted, accepted with a warning */
    SMTP_IN_PW_PLAIN,     /* anything else: clear text, accepted with a warning */
};
enum smtp_in_password_form smtp_in_password_form(const char *stored);
/* Is given (givenlen bytes) the password stored? Constant time in the
 * comparison; a crypt(3) hash costs what its parameters say. */
bool smtp_in_password_ok(const char *stored, const char *given, size_t givenlen);

#endif
