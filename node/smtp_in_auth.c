/* smtp_in_auth: failed-AUTH bookkeeping per client address and password
 * checks for the SMTP listener (see smtp_in_auth.h). The table is owned by
 * the smtp_server of one smtp-in process: a fixed array scanned linearly
 * (it is small and touched only on a failure or an AUTH), entries expire
 * SMTP_IN_AUTH_FORGET_MS after their last failure, and a full table
 * replaces its oldest entry. */
#include "smtp_in_auth.h"

#include <crypt.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "util.h"

struct entry {
    int family; /* 0: free */
    unsigned char addr[16];
    unsigned failures;
    uint64_t last_ms;
};

struct smtp_in_auth_table {
    struct entry e[SMTP_IN_AUTH_TABLE_SIZE];
};

struct smtp_in_auth_table *
smtp_in_auth_table_new(void)
{
    return xcalloc(1, sizeof(struct smtp_in_auth_table));
}

void
smtp_in_auth_table_free(struct smtp_in_auth_table *t)
{
    free(t);
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
smtp_in_auth_failures(const struct smtp_in_auth_table *t, int family, const unsigned char *addr,
                      uint64_t now_ms)
{
    const struct entry *e = find(t, family, addr, now_ms);
    return e ? e->failures : 0;
}

unsigned
smtp_in_auth_failed(struct smtp_in_auth_table *t, int family, const unsigned char *addr,
                    uint64_t now_ms)
{
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
    return e->failures;
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
