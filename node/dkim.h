/* dkim: DKIM signing (RFC 6376 relaxed/relaxed; rsa-sha256, and ed25519-sha256
 * of RFC 8463) and the BIMI-Selector header, both chosen per sender domain
 * (the domain of the From: address). A struct dkim holds the private keys
 * loaded from the configuration and is immutable afterwards; a reload builds
 * a new one. */
#ifndef PGMTA_DKIM_H
#define PGMTA_DKIM_H

#include <stddef.h>

struct conf;
struct buf;
struct dkim;

/* Loads every dkim key of CONF (PEM private keys: RSA of at least 1024 bits
 * signs with rsa-sha256, Ed25519 with ed25519-sha256; the algorithm comes
 * from the key) and the bimi entries. A key file with any permission bit for
 * "other" is refused. On error returns NULL with "file: reason" in err. */
struct dkim *dkim_new(const struct conf *conf, char *err, size_t errlen);
void dkim_free(struct dkim *d);

/* Header lines to prepend to the message, each ending in CRLF, or NULL when
 * neither DKIM nor BIMI applies: "BIMI-Selector: ..." when a bimi entry
 * matches, then "DKIM-Signature: ..." when a dkim key matches (the added
 * BIMI-Selector is signed too). The domain is that of the From: address, else
 * that of MAIL_FROM; matching is exact and case-insensitive. MSG is the stored
 * content; bare LF and bare CR count as CRLF, as on the wire. The caller
 * frees the result. */
char *dkim_headers(struct dkim *d, const char *mail_from, const unsigned char *msg, size_t len);
/* The same for a message that goes out as EXTRA (EXTRA_LEN octets of header
 * lines, each ending in CRLF, e.g. List-Unsubscribe) followed by MSG: the
 * result goes before EXTRA, and EXTRA's fields are signed as the message's
 * are. EXTRA is not copied into the result. */
char *dkim_headers_extra(struct dkim *d, const char *mail_from, const char *extra, size_t extra_len,
                         const unsigned char *msg, size_t len);

/* Exported for tests and fuzzing. */

/* The sender domain dkim_headers uses (lower case, caller frees), or NULL
 * when neither the From: header nor MAIL_FROM (may be NULL) has one. */
char *dkim_sender_domain(const char *mail_from, const unsigned char *msg, size_t len);
/* Appends the relaxed canonical form "name:value" (RFC 6376 §3.4.2, no line
 * ending) of one header field (name, colon, value with any folding; no final
 * line ending) to OUT. Returns -1 and appends nothing when there is no colon. */
int dkim_canon_header(struct buf *out, const char *field, size_t len);
/* Appends the relaxed canonical form (RFC 6376 §3.4.4) of BODY to OUT; CRLF,
 * bare LF and bare CR end lines. An empty body canonicalizes to nothing. */
void dkim_canon_body(struct buf *out, const unsigned char *body, size_t len);

#endif
