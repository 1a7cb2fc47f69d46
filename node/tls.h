/* tls: the outbound side of TLS. Process-wide OpenSSL client contexts (one
 * per CA file, created on first use, TLS 1.2 minimum so TLS 1.3 is
 * negotiated whenever the peer has it), the libevent OpenSSL filter that
 * smtp_client puts on top of its socket bufferevent after STARTTLS, and the
 * verifying OpenSSL socket bufferevent of the webhook sender's https. */
#ifndef PGMTA_TLS_H
#define PGMTA_TLS_H

#include <stdbool.h>
#include <stddef.h>

struct bufferevent;
struct event_base;

/* How a client handshake treats the peer certificate: not at all
 * (opportunistic TLS), checked without failing the handshake (MTA-STS
 * testing: tls_client_failure_type says what was wrong), or required to
 * chain to the CA file and match the host name. */
enum tls_verify { TLS_VERIFY_NONE = 0, TLS_VERIFY_CHECK, TLS_VERIFY_REQUIRE };

/* Starts a client handshake on top of BEV: SNI = host (unless it is an IP
 * literal); per verify, the peer certificate is checked against ca_file (or
 * the system's default CA paths when NULL) and host. Returns the filter
 * bufferevent, which owns BEV and the SSL object (freeing it frees both), or
 * NULL with a reason in err (BEV untouched). The filter reports
 * BEV_EVENT_CONNECTED when the handshake is done. */
struct bufferevent *tls_client_start(struct event_base *base, struct bufferevent *bev,
                                     const char *host, enum tls_verify verify, const char *ca_file,
                                     char *err, size_t errlen);
/* As tls_client_start, authenticated by DANE (RFC 7672 3): the peer must
 * match one of the TLSA records (usable ones, see dane.h); DANE-TA also
 * checks HOST, the MX host name. */
struct dns_tlsa;
struct bufferevent *tls_client_start_dane(struct event_base *base, struct bufferevent *bev,
                                          const char *host, const struct dns_tlsa *tlsa,
                                          size_t ntlsa, char *err, size_t errlen);
/* A socket bufferevent (no socket yet: evhttp connects it) that starts a
 * verified client handshake once connected: SNI, the chain to ca_file (or the
 * system's default CA paths when NULL), the host name or IP SAN. It owns the
 * SSL object. NULL with a reason in err. */
struct bufferevent *tls_client_socket_new(struct event_base *base, const char *host,
                                          const char *ca_file, char *err, size_t errlen);
/* Why the handshake on FILTER failed: the certificate verification result
 * or OpenSSL's first error, else the socket error. */
void tls_client_failure(struct bufferevent *filter, char *out, size_t outlen);
/* The RFC 8460 result type of FILTER's certificate check
 * ("certificate-host-mismatch", "certificate-expired",
 * "certificate-not-trusted", "validation-failure"), NULL when it passed;
 * "validation-failure" too for a handshake that failed otherwise. */
const char *tls_client_failure_type(struct bufferevent *filter);
/* Negotiated protocol ("TLSv1.3") and cipher of an established FILTER. */
void tls_client_info(struct bufferevent *filter, char *proto, size_t protolen, char *cipher,
                     size_t cipherlen);
/* Frees the client contexts (at exit, for leak checkers). */
void tls_client_cleanup(void);

#endif
