/* hostport: parses "host:port" strings and IP address literals (see
 * hostport.h). Owns nothing: every function works on the caller's buffers,
 * in time linear in the input, and never reads past LEN. */
#include "hostport.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool
fail(const char **why, const char *reason)
{
    if (why)
        *why = reason;
    return false;
}

bool
hostport_is_hostname(const char *s, size_t len)
{
    if (len == 0 || len > HOSTPORT_HOST_MAX)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        if (!ok || (c == '-' && label == 0) || ++label > 63)
            return false;
    }
    return label > 0 && s[len - 1] != '-';
}

/* An IP address of LEN bytes (no brackets) into out->addr. */
static bool
parse_ip(const char *s, size_t len, bool v6_only, struct hostport *out)
{
    char tmp[INET6_ADDRSTRLEN + 1];
    if (len == 0 || len >= sizeof tmp)
        return false;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    if (!v6_only && inet_pton(AF_INET, tmp, &out->addr.v4) == 1) {
        out->kind = HOSTPORT_IPV4;
    } else if (inet_pton(AF_INET6, tmp, &out->addr.v6) == 1) {
        out->kind = HOSTPORT_IPV6;
    } else {
        return false;
    }
    memcpy(out->host, tmp, len + 1);
    return true;
}

static bool
parse_port(const char *s, size_t len, uint16_t *port)
{
    if (len == 0 || len > 5)
        return false;
    unsigned v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return false;
    *port = (uint16_t)v;
    return true;
}

bool
hostport_parse(const char *s, size_t len, unsigned flags, struct hostport *out, const char **why)
{
    memset(out, 0, sizeof *out);
    if (!s || len == 0)
        return fail(why, "empty");
    if (memchr(s, '\0', len))
        return fail(why, "contains a NUL byte");
    const char *host = s, *port = NULL;
    size_t hlen = len, plen = 0;
    if (s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close)
            return fail(why, "'[' without ']'");
        host = s + 1;
        hlen = (size_t)(close - host);
        size_t rest = len - (size_t)(close + 1 - s);
        if (rest > 0) {
            if (close[1] != ':')
                return fail(why, "unexpected text after ']'");
            port = close + 2;
            plen = rest - 1;
        }
        bool tagged = hlen > 5 && strncasecmp(host, "IPv6:", 5) == 0;
        if (tagged) {
            host += 5;
            hlen -= 5;
        }
        if (!parse_ip(host, hlen, tagged, out))
            return fail(why, tagged ? "bad IPv6 address literal" : "brackets hold no IP address");
        out->bracketed = true;
    } else {
        const char *colon = memchr(s, ':', len);
        const char *second = colon ? memchr(colon + 1, ':', len - (size_t)(colon + 1 - s)) : NULL;
        if (second) {
            /* two colons: a bare IPv6 address, which cannot carry a port */
            if (!(flags & HOSTPORT_BARE_IPV6))
                return fail(why, "IPv6 address without brackets");
            if (!parse_ip(s, len, true, out))
                return fail(why, "bad IPv6 address");
        } else {
            if (colon) {
                hlen = (size_t)(colon - s);
                port = colon + 1;
                plen = len - hlen - 1;
            }
            if (hlen == 0)
                return fail(why, "empty host");
            if (!parse_ip(host, hlen, false, out)) {
                if (flags & HOSTPORT_IP_ONLY)
                    return fail(why, "not an IP address");
                if (!hostport_is_hostname(host, hlen))
                    return fail(why, "bad host name");
                out->kind = HOSTPORT_NAME;
                memcpy(out->host, host, hlen);
                out->host[hlen] = '\0';
            }
        }
    }
    if (port) {
        if (flags & HOSTPORT_NO_PORT)
            return fail(why, "a port is not allowed here");
        if (!parse_port(port, plen, &out->port))
            return fail(why, "bad port (want 1..65535)");
    } else if (flags & HOSTPORT_PORT_REQUIRED) {
        return fail(why, "no port");
    }
    return true;
}

bool
hostport_parse_str(const char *s, unsigned flags, struct hostport *out, const char **why)
{
    return hostport_parse(s, s ? strlen(s) : 0, flags, out, why);
}

bool
hostport_is_ip_literal(const char *s)
{
    struct hostport hp;
    return hostport_parse_str(s, HOSTPORT_NO_PORT | HOSTPORT_IP_ONLY | HOSTPORT_BARE_IPV6, &hp,
                              NULL);
}

bool
hostport_sockaddr(const struct hostport *hp, uint16_t default_port, struct sockaddr_storage *sa,
                  socklen_t *salen)
{
    uint16_t port = hp->port ? hp->port : default_port;
    memset(sa, 0, sizeof *sa);
    if (hp->kind == HOSTPORT_IPV4) {
        struct sockaddr_in *sin = (struct sockaddr_in *)sa;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        sin->sin_addr = hp->addr.v4;
        *salen = sizeof *sin;
        return true;
    }
    if (hp->kind == HOSTPORT_IPV6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)sa;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        sin6->sin6_addr = hp->addr.v6;
        *salen = sizeof *sin6;
        return true;
    }
    return false;
}

char *
hostport_format(const struct hostport *hp, uint16_t port, char *out, size_t outlen)
{
    if (!port)
        port = hp->port;
    bool v6 = hp->kind == HOSTPORT_IPV6;
    if (port)
        snprintf(out, outlen, "%s%s%s:%u", v6 ? "[" : "", hp->host, v6 ? "]" : "", port);
    else
        snprintf(out, outlen, "%s%s%s", v6 ? "[" : "", hp->host, v6 ? "]" : "");
    return out;
}
