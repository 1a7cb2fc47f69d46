/* addr: the one e-mail address validator, with exactly the limits and
 * forms of mta.address_domain_full() in sql/010_validate.sql, so that an
 * address the listener or the HTTP API accepts is one that SQL stores, and
 * the other way round. A pure function: no allocation.
 *
 * Accepted (RFC 5321 §4.1.2 and §4.5.3.1, with RFC 6531's UTF-8):
 *   local@domain          local is a dot-atom: any octet but controls,
 *                         space and ()<>[]:;@\," , non-ASCII allowed,
 *                         parts separated by single dots
 *   "quoted local"@domain quoted local parts are accepted (as SQL does):
 *                         \ only as a quoted pair of a printable character,
 *                         never '<' or '>'
 *   local@[192.0.2.1]     an IPv4 address literal, or [IPv6:...]
 * Limits: address <= 254 octets, local part <= 64 octets (quotes counted,
 * as SQL counts them), domain <= 255 octets, labels 1..63 octets of letters,
 * digits, '-' (not first or last) or non-ASCII octets; no CR, LF, NUL or
 * other control character, no '<' or '>', no trailing dot. */
#ifndef PGMTA_ADDR_H
#define PGMTA_ADDR_H

#include <stdbool.h>
#include <stddef.h>

#define ADDR_MAX 254
#define ADDR_LOCAL_MAX 64
#define ADDR_DOMAIN_MAX 255

struct addr_parts {
    size_t local_len;  /* local part: s[0 .. local_len) (quotes included) */
    size_t domain_off; /* domain: s[domain_off .. domain_off + domain_len) */
    size_t domain_len;
    bool quoted;  /* the local part is a quoted string */
    bool literal; /* the domain is an address literal */
};

/* Checks S (LEN bytes). Returns true and fills OUT (may be NULL), or false
 * with *why (may be NULL) set to the reason SQL gives for the same address
 * (static text). */
bool addr_validate(const char *s, size_t len, struct addr_parts *out, const char **why);
bool addr_validate_str(const char *s, struct addr_parts *out, const char **why);

#endif
