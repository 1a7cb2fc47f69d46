/* smtp_in_auth: failed-AUTH bookkeeping per client address and password
 * checks for the SMTP listener (see smtp_in_auth.h). The table is a fixed
 * array scanned linearly (it is small and touched only on a failure or an
 * AUTH), entries expire SMTP_IN_AUTH_FORGET_MS after their last failure,
 * and a full table replaces its oldest entry. Every access holds the
 * table's mutex for one scan, microseconds.
 *
 * Ownership: the node's shared table is created by the root process in a
 * MAP_SHARED | MAP_ANONYMOUS mapping before it forks the smtp-in processes,
 * so all of them, and any restarted later, see the same counts; it lives as
 * long as the node. Its mutex is process-shared and robust: when a process
 * dies holding it (kill -9), the next locker is told so (EOWNERDEAD), marks
 * it consistent and goes on; an entry caught half-written holds bounded
 * values (a count and a time) and at worst loses one failure. A private
 * table (smtp_in_auth_table_new) belongs to its caller. Times are
 * CLOCK_MONOTONIC milliseconds, the same in every process of the machine. */
#include "smtp_in_auth.h"

#include <crypt.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "log.h"
#include "util.h"

struct entry {
    int family; /* 0: free */
    unsigned char addr[16];
    unsigned failures;
    uint64_t last_ms;
};

struct smtp_in_auth_table {
    bool shared; /* in a shared mapping: unmapped, not freed */
    pthread_mutex_t mu;
    struct entry e[SMTP_IN_AUTH_TABLE_SIZE];
};

static struct smtp_in_auth_table *node_table; /* inherited across fork */

struct smtp_in_auth_table *
smtp_in_auth_table_new(void)
{
    struct smtp_in_auth_table *t = xcalloc(1, sizeof *t);
    PGMTA_ASSERT(pthread_mutex_init(&t->mu, NULL) == 0);
    return t;
}

struct smtp_in_auth_table *
smtp_in_auth_table_new_shared(void)
{
    void *m = mmap(NULL, sizeof(struct smtp_in_auth_table), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    struct smtp_in_auth_table *t = m; /* zero-filled */
    t->shared = true;
    pthread_mutexattr_t a;
    bool ok = pthread_mutexattr_init(&a) == 0 &&
              pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) == 0 &&
              pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) == 0 &&
              pthread_mutex_init(&t->mu, &a) == 0;
    pthread_mutexattr_destroy(&a);
    if (!ok) {
        munmap(m, sizeof *t);
        return NULL;
    }
    return t;
}

void
smtp_in_auth_table_free(struct smtp_in_auth_table *t)
{
    if (!t)
        return;
    if (t->shared) {
        if (t == node_table)
            node_table = NULL;
        munmap(t, sizeof *t);
        return;
    }
    pthread_mutex_destroy(&t->mu);
    free(t);
}

void
smtp_in_auth_shared_init(void)
{
    if (node_table)
        return;
    node_table = smtp_in_auth_table_new_shared();
    if (!node_table)
        log_warn("root event=auth-table-not-shared error=\"%s\" (each smtp-in process keeps "
                 "its own failed-AUTH table)",
                 strerror(errno));
}

struct smtp_in_auth_table *
smtp_in_auth_shared(void)
{
    return node_table;
}

static void
table_lock(struct smtp_in_auth_table *t)
{
    int rc = pthread_mutex_lock(&t->mu);
    if (rc == EOWNERDEAD) {
        /* A process died holding the lock: the table is still usable. */
        log_warn("smtp-in event=auth-table-recovered");
        rc = pthread_mutex_consistent(&t->mu);
    }
    PGMTA_ASSERT(rc == 0);
}

static void
table_unlock(struct smtp_in_auth_table *t)
{
    pthread_mutex_unlock(&t->mu);
}

static size_t
addr_len(int family)
{
    return family == 4 || family == 2 ? 4 : 16; /* AF_INET is 2 */
}

static bool
live(const struct entry *e, uint64_t now_ms)
{
    return e->family && now_ms - e->last_ms < SMTP_IN_AUTH_FORGET_MS;
}

static const struct entry *
find(const struct smtp_in_auth_table *t, int family, const unsigned char *addr, uint64_t now_ms)
{
    for (size_t i = 0; i < SMTP_IN_AUTH_TABLE_SIZE; i++) {
        const struct entry *e = &t->e[i];
        if (e->family == family && live(e, now_ms) && memcmp(e->addr, addr, addr_len(family)) == 0)
            return e;
    }
    return NULL;
}

unsigned
smtp_in_auth_failures(struct smtp_in_auth_table *t, int family, const unsigned char *addr,
                      uint64_t now_ms)
{
    table_lock(t);
    const struct entry *e = find(t, family, addr, now_ms);
    unsigned n = e ? e->failures : 0;
    table_unlock(t);
    return n;
}

unsigned
smtp_in_auth_failed(struct smtp_in_auth_table *t, int family, const unsigned char *addr,
                    uint64_t now_ms)
{
    table_lock(t);
    struct entry *e = (struct entry *)find(t, family, addr, now_ms);
    if (!e) {
        /* a free or expired slot, else the oldest */
        struct entry *oldest = &t->e[0];
        for (size_t i = 0; i < SMTP_IN_AUTH_TABLE_SIZE; i++) {
            struct entry *c = &t->e[i];
            if (!live(c, now_ms)) {
                oldest = c;
                break;
            }
            if (c->last_ms < oldest->last_ms)
                oldest = c;
        }
        e = oldest;
        memset(e, 0, sizeof *e);
        e->family = family;
        memcpy(e->addr, addr, addr_len(family));
    }
    if (e->failures < UINT32_MAX)
        e->failures++;
    e->last_ms = now_ms;
    unsigned n = e->failures;
    table_unlock(t);
    return n;
}

uint64_t
smtp_in_auth_delay_ms(uint64_t base_ms, unsigned failures)
{
    unsigned shift = failures ? failures - 1 : 0;
    if (shift > SMTP_IN_AUTH_MAX_SHIFT)
        shift = SMTP_IN_AUTH_MAX_SHIFT;
    return base_ms << shift;
}

/* ---- passwords ---------------------------------------------------------- */

static const char sha_tag[] = "{SHA256}";

enum smtp_in_password_form
smtp_in_password_form(const char *stored)
{
    if (strncmp(stored, sha_tag, sizeof sha_tag - 1) == 0)
        return SMTP_IN_PW_SHA256;
    /* "$id$..." as crypt(3) writes it, long enough to carry a salt */
    if (stored[0] == '$' && strchr(stored + 1, '$') && strlen(stored) >= 20)
        return SMTP_IN_PW_CRYPT;
    return SMTP_IN_PW_PLAIN;
}

static int
hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool
smtp_in_password_ok(const char *stored, const char *given, size_t givenlen)
{
    switch (smtp_in_password_form(stored)) {
    case SMTP_IN_PW_CRYPT: {
        char pw[1024];
        if (givenlen >= sizeof pw || memchr(given, '\0', givenlen))
            return false;
        memcpy(pw, given, givenlen);
        pw[givenlen] = '\0';
        struct crypt_data *cd = xcalloc(1, sizeof *cd);
        const char *h = crypt_rn(pw, stored, cd, (int)sizeof *cd);
        size_t slen = strlen(stored);
        bool ok = h && h[0] != '*' && strlen(h) == slen && CRYPTO_memcmp(h, stored, slen) == 0;
        OPENSSL_cleanse(pw, sizeof pw);
        OPENSSL_cleanse(cd, sizeof *cd);
        free(cd);
        return ok;
    }
    case SMTP_IN_PW_SHA256: {
        const char *hex = stored + sizeof sha_tag - 1;
        unsigned char want[32], got[32];
        if (strlen(hex) != 64)
            return false;
        for (int i = 0; i < 32; i++) {
            int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
            if (hi < 0 || lo < 0)
                return false;
            want[i] = (unsigned char)(hi << 4 | lo);
        }
        unsigned int len = 0;
        if (!EVP_Digest(given, givenlen, got, &len, EVP_sha256(), NULL) || len != 32)
            return false;
        return CRYPTO_memcmp(want, got, 32) == 0;
    }
    case SMTP_IN_PW_PLAIN:
        break;
    }
    size_t clen = strlen(stored);
    return clen == givenlen && CRYPTO_memcmp(stored, given, clen) == 0;
}
