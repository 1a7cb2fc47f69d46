/* hostport: the one parser of "host:port" strings and IP address literals
 * used by configuration (routes, listen addresses, DNS servers), the
 * resolver and the delivery path. A pure function: no allocation, no I/O.
 *
 * Forms, and what each gives:
 *   1.2.3.4        1.2.3.4:25        IPv4, port 0 (none) or 25
 *   [1.2.3.4]      [1.2.3.4]:25      IPv4 address literal (bracketed)
 *   [::1]          [::1]:25          IPv6 (bracketed)
 *   [IPv6:::1]     [IPv6:::1]:25     IPv6 address literal as RFC 5321 writes it
 *   ::1                              bare IPv6, never with a port (only with
 *                                    HOSTPORT_BARE_IPV6)
 *   mx.example     mx.example:25     host name (not with HOSTPORT_IP_ONLY)
 * A host name is labels of letters, digits, '-' and '_' of 1..63 octets,
 * separated by single dots, 253 octets at most, no leading or trailing dot
 * or '-'. A port is 1..65535 in decimal digits (at most 5). Brackets hold an
 * IP address only, never a name. */
#ifndef PGMTA_HOSTPORT_H
#define PGMTA_HOSTPORT_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum hostport_kind { HOSTPORT_NAME = 0, HOSTPORT_IPV4, HOSTPORT_IPV6 };

#define HOSTPORT_HOST_MAX 253

struct hostport {
    enum hostport_kind kind;
    /* The name as written, or the address without brackets and "IPv6:". */
    char host[HOSTPORT_HOST_MAX + 1];
    uint16_t port; /* 0: none given */
    bool bracketed;
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } addr; /* for HOSTPORT_IPV4 / HOSTPORT_IPV6 */
};

/* Flags of hostport_parse. */
#define HOSTPORT_PORT_REQUIRED 0x1 /* "host" without a port is an error */
#define HOSTPORT_NO_PORT 0x2       /* a port is an error */
#define HOSTPORT_IP_ONLY 0x4       /* a host name is an error */
#define HOSTPORT_BARE_IPV6 0x8     /* accept "::1" without brackets */

/* Parses S (LEN bytes, no NUL needed) into OUT. Returns true, or false with
 * *why (when why is not NULL) set to a static reason. */
bool hostport_parse(const char *s, size_t len, unsigned flags, struct hostport *out,
                    const char **why);
/* The same for a NUL-terminated string. */
bool hostport_parse_str(const char *s, unsigned flags, struct hostport *out, const char **why);

/* True for an IP address, bare ("1.2.3.4", "::1") or bracketed ("[::1]",
 * "[IPv6:::1]", "[1.2.3.4]"), without a port. */
bool hostport_is_ip_literal(const char *s);
/* True for a host name as described above (no port, no address). */
bool hostport_is_hostname(const char *s, size_t len);

/* The socket address of an IP hostport; port: HP's port, or default_port
 * when HP has none. False for a name. */
bool hostport_sockaddr(const struct hostport *hp, uint16_t default_port,
                       struct sockaddr_storage *sa, socklen_t *salen);
/* Writes "1.2.3.4:25", "[::1]:25", "name:25" (without ":port" when port is
 * 0) to OUT; returns OUT. outlen >= HOSTPORT_HOST_MAX + 9 is always enough. */
char *hostport_format(const struct hostport *hp, uint16_t port, char *out, size_t outlen);

#endif
