/* tls: OpenSSL client contexts and the STARTTLS filter for smtp_client.
 *
 * This module owns the SSL_CTXs (a short list keyed by CA file, living
 * until tls_client_cleanup). Each SSL object belongs to the filter
 * bufferevent created for it (BEV_OPT_CLOSE_ON_FREE), which also owns the
 * socket bufferevent below it. Certificate checks are off unless asked for:
 * opportunistic STARTTLS encrypts without verifying (RFC 7435). The https
 * client of the webhook sender always verifies. */
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "dns.h"
#include "util.h"

struct tls_ctx_entry {
    char *ca_file; /* NULL: system default paths */
    SSL_CTX *ctx;
    struct tls_ctx_entry *next;
};
static struct tls_ctx_entry *tls_ctxs;

static SSL_CTX *
tls_ctx_get(const char *ca_file, char *err, size_t errlen)
{
    for (struct tls_ctx_entry *e = tls_ctxs; e; e = e->next) {
        if ((!ca_file && !e->ca_file) || (ca_file && e->ca_file && !strcmp(ca_file, e->ca_file)))
            return e->ctx;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errlen, "SSL_CTX_new failed");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    int ok = ca_file ? SSL_CTX_load_verify_locations(ctx, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(ctx);
    if (!ok) {
        snprintf(err, errlen, "cannot load CA certificates from %s",
                 ca_file ? ca_file : "default paths");
        ERR_clear_error();
        SSL_CTX_free(ctx);
        return NULL;
    }
    struct tls_ctx_entry *e = xcalloc(1, sizeof *e);
    e->ca_file = ca_file ? xstrdup(ca_file) : NULL;
    e->ctx = ctx;
    e->next = tls_ctxs;
    tls_ctxs = e;
    return ctx;
}

void
tls_client_cleanup(void)
{
    while (tls_ctxs) {
        struct tls_ctx_entry *e = tls_ctxs;
        tls_ctxs = e->next;
        SSL_CTX_free(e->ctx);
        free(e->ca_file);
        free(e);
    }
}

/* An IP address literal, bare ("192.0.2.1", "2001:db8::1") or as in an
 * address ("[192.0.2.1]", "[IPv6:2001:db8::1]"): its text into ip, true. */
static bool
ip_literal(const char *s, char *ip, size_t iplen)
{
    size_t n = strlen(s);
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
        if (n > 5 && strncasecmp(s, "IPv6:", 5) == 0) {
            s += 5;
            n -= 5;
        }
    }
    if (n == 0 || n >= iplen)
        return false;
    memcpy(ip, s, n);
    ip[n] = '\0';
    unsigned char tmp[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, ip, tmp) == 1 || inet_pton(AF_INET6, ip, tmp) == 1;
}

/* A client SSL object: SNI = host (unless an IP literal); with verify, the
 * chain to ca_file (or the default paths) and host (or the IP SAN). */
static SSL *
tls_client_ssl(const char *host, enum tls_verify verify, const char *ca_file, char *err,
               size_t errlen)
{
    char ip[INET6_ADDRSTRLEN + 1];
    bool literal = ip_literal(host, ip, sizeof ip);
    /* An empty name would make OpenSSL check no name at all: verifying
     * needs something to verify against. */
    if (verify && !*host) {
        snprintf(err, errlen, "no host name to verify the certificate against");
        return NULL;
    }
    SSL_CTX *ctx = tls_ctx_get(verify != TLS_VERIFY_NONE ? ca_file : NULL, err, errlen);
    if (!ctx)
        return NULL;
    SSL *ssl = SSL_new(ctx);
    if (!ssl) {
        snprintf(err, errlen, "SSL_new failed");
        return NULL;
    }
    /* SNI carries host names only (RFC 6066 3): none for an IP literal. */
    if (*host && !literal)
        SSL_set_tlsext_host_name(ssl, host);
    if (verify != TLS_VERIFY_NONE) {
        /* CHECK: OpenSSL verifies and keeps the result, the handshake goes
         * on whatever it is */
        SSL_set_verify(ssl, verify == TLS_VERIFY_REQUIRE ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        /* an IP literal is matched against the certificate's IP SANs */
        int ok = literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip)
                         : SSL_set1_host(ssl, host);
        if (!ok) {
            SSL_free(ssl);
            snprintf(err, errlen, "cannot set the host name to verify");
            return NULL;
        }
    } else {
        SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    }
    return ssl;
}

static struct bufferevent *tls_filter_new(struct event_base *base, struct bufferevent *bev,
                                          SSL *ssl, char *err, size_t errlen);

struct bufferevent *
tls_client_start(struct event_base *base, struct bufferevent *bev, const char *host,
                 enum tls_verify verify, const char *ca_file, char *err, size_t errlen)
{
    SSL *ssl = tls_client_ssl(host, verify, ca_file, err, errlen);
    if (!ssl)
        return NULL;
    return tls_filter_new(base, bev, ssl, err, errlen);
}

/* The STARTTLS filter over BEV, owning SSL (freed on failure). */
static struct bufferevent *
tls_filter_new(struct event_base *base, struct bufferevent *bev, SSL *ssl, char *err, size_t errlen)
{
    struct bufferevent *f = bufferevent_openssl_filter_new(
        base, bev, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
    if (!f) {
        SSL_free(ssl);
        snprintf(err, errlen, "cannot create the TLS filter");
        return NULL;
    }
    /* A peer closing without close_notify is an EOF, not an error. */
    bufferevent_openssl_set_allow_dirty_shutdown(f, 1);
    return f;
}

struct bufferevent *
tls_client_start_dane(struct event_base *base, struct bufferevent *bev, const char *host,
                      const struct dns_tlsa *tlsa, size_t ntlsa, char *err, size_t errlen)
{
    SSL_CTX *ctx = tls_ctx_get(NULL, err, errlen);
    if (!ctx)
        return NULL;
    if (SSL_CTX_dane_enable(ctx) <= 0) {
        snprintf(err, errlen, "cannot enable DANE");
        ERR_clear_error();
        return NULL;
    }
    SSL *ssl = SSL_new(ctx);
    if (!ssl) {
        snprintf(err, errlen, "SSL_new failed");
        return NULL;
    }
    /* the MX host name: SNI and, for DANE-TA(2), the name checked (RFC
     * 7672 3.2.2); DANE-EE(3) matches the key alone (3.2.1) */
    SSL_set_tlsext_host_name(ssl, host);
    SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_dane_enable(ssl, host) <= 0) {
        SSL_free(ssl);
        snprintf(err, errlen, "cannot enable DANE for %s", host);
        ERR_clear_error();
        return NULL;
    }
    SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
    int added = 0;
    for (size_t i = 0; i < ntlsa; i++)
        if (SSL_dane_tlsa_add(ssl, tlsa[i].usage, tlsa[i].selector, tlsa[i].mtype, tlsa[i].data,
                              tlsa[i].len) > 0)
            added++;
    ERR_clear_error();
    if (added == 0) {
        SSL_free(ssl);
        snprintf(err, errlen, "no usable TLSA record for %s", host);
        return NULL;
    }
    SSL_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    return tls_filter_new(base, bev, ssl, err, errlen);
}

struct bufferevent *
tls_client_socket_new(struct event_base *base, const char *host, const char *ca_file, char *err,
                      size_t errlen)
{
    SSL *ssl = tls_client_ssl(host, TLS_VERIFY_REQUIRE, ca_file, err, errlen);
    if (!ssl)
        return NULL;
    struct bufferevent *b = bufferevent_openssl_socket_new(
        base, -1, ssl, BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!b) {
        SSL_free(ssl);
        snprintf(err, errlen, "cannot create the TLS bufferevent");
        return NULL;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(b, 1);
    return b;
}

void
tls_client_failure(struct bufferevent *filter, char *out, size_t outlen)
{
    out[0] = '\0';
    unsigned long e;
    while ((e = bufferevent_get_openssl_error(filter)) != 0) {
        if (!out[0])
            ERR_error_string_n(e, out, outlen);
    }
    SSL *ssl = bufferevent_openssl_get_ssl(filter);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (vr != X509_V_OK) {
        snprintf(out, outlen, "certificate verification failed: %s",
                 X509_verify_cert_error_string(vr));
    } else if (!out[0]) {
        int err = EVUTIL_SOCKET_ERROR();
        snprintf(out, outlen, "%s", err ? strerror(err) : "connection closed");
    }
}

const char *
tls_client_failure_type(struct bufferevent *filter)
{
    SSL *ssl = bufferevent_openssl_get_ssl(filter);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_ERR_UNSPECIFIED;
    switch (vr) {
    case X509_V_OK:
        /* no certificate at all also leaves X509_V_OK */
        return ssl && SSL_get0_peer_certificate(ssl) ? NULL : "validation-failure";
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        return "certificate-host-mismatch";
    case X509_V_ERR_CERT_HAS_EXPIRED:
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return "certificate-expired";
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_CERT_UNTRUSTED:
        return "certificate-not-trusted";
    default:
        return "validation-failure";
    }
}

void
tls_client_info(struct bufferevent *filter, char *proto, size_t protolen, char *cipher,
                size_t cipherlen)
{
    SSL *ssl = bufferevent_openssl_get_ssl(filter);
    const SSL_CIPHER *ci = ssl ? SSL_get_current_cipher(ssl) : NULL;
    snprintf(proto, protolen, "%s", ssl ? SSL_get_version(ssl) : "");
    snprintf(cipher, cipherlen, "%s", ci ? SSL_CIPHER_get_name(ci) : "");
}
