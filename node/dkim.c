/* dkim: DKIM-Signature (RFC 6376, relaxed/relaxed; rsa-sha256 and the
 * ed25519-sha256 of RFC 8463) and BIMI-Selector headers per sender domain.
 *
 * The sender domain is the domain of the From: address (DMARC alignment),
 * else the envelope sender's. The stored content may end lines with bare LF
 * or bare CR: smtp_client sends every such ending as CRLF, so canonicalization
 * treats them as CRLF too and the signature holds for what is on the wire.
 *
 * struct dkim owns copies of the configured names and the EVP_PKEY of every
 * key; it is read-only after dkim_new. dkim_headers returns a string the
 * caller owns. */
#include "dkim.h"
#include "conf.h"
#include "hdr.h"
#include "log.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

/* DKIM-Signature lines are folded before this column. */
#define DKIM_FOLD_COLUMN 76
/* Instances of one header name signed at most (bottom-up, RFC 6376 §5.4.2). */
#define DKIM_MAX_PER_NAME 8
/* A PEM private key is a few kB; anything much larger is not one. */
#define DKIM_KEY_FILE_MAX (256 * 1024)

enum dkim_alg { DKIM_RSA_SHA256, DKIM_ED25519_SHA256 };

struct dkim_key {
    char *domain;
    char *selector;
    enum dkim_alg alg;
    EVP_PKEY *pkey;
};

struct dkim_bimi {
    char *domain;
    char *value;
};

struct dkim {
    struct dkim_key *keys;
    size_t nkeys;
    struct dkim_bimi *bimi;
    size_t nbimi;
};

/* Header fields signed when present, in h= order; From is always listed and
 * listed once more than it occurs, so that no From can be added later. */
static const char *const signed_names[] = {"from",
                                           "to",
                                           "cc",
                                           "subject",
                                           "date",
                                           "message-id",
                                           "mime-version",
                                           "content-type",
                                           "content-transfer-encoding",
                                           "reply-to",
                                           "list-unsubscribe",
                                           "list-unsubscribe-post",
                                           "bimi-selector"};
#define NSIGNED_NAMES (sizeof signed_names / sizeof signed_names[0])

/* One header field of the message: name, colon, value and any continuation
 * lines, without the final line ending. */
struct field {
    const char *p;
    size_t len;
    bool used;
};

static bool
is_wsp(int c)
{
    return c == ' ' || c == '\t';
}

/* Length of the line starting at msg[pos] without its ending (CRLF, LF or
 * CR); *next is where the following line starts. */
static size_t
line_at(const unsigned char *msg, size_t len, size_t pos, size_t *next)
{
    size_t i = pos;
    while (i < len && msg[i] != '\r' && msg[i] != '\n')
        i++;
    size_t n = i - pos;
    if (i < len)
        i += (msg[i] == '\r' && i + 1 < len && msg[i + 1] == '\n') ? 2 : 1;
    *next = i;
    return n;
}

/* ---- canonicalization --------------------------------------------------- */

/* Copies SRC to W without CR and LF, WSP runs as one SP and none at
 * either end (lower-cased if asked); returns the end of what it wrote. */
static char *
squeeze_wsp(char *w, const char *src, size_t len, bool lower)
{
    char *start = w;
    bool sp = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '\r' || c == '\n')
            continue;
        if (is_wsp(c)) {
            sp = true;
            continue;
        }
        if (sp && w > start)
            *w++ = ' ';
        sp = false;
        *w++ = (char)(lower ? tolower(c) : c);
    }
    return w;
}

int
dkim_canon_header(struct buf *out, const char *field, size_t len)
{
    const char *colon = memchr(field, ':', len);
    if (!colon)
        return -1;
    size_t namelen = (size_t)(colon - field);
    buf_reserve(out, len + 1);
    char *w = out->data + out->len;
    /* Name: lower case, WSP runs to one SP, none before the colon. */
    w = squeeze_wsp(w, field, namelen, true);
    *w++ = ':';
    /* Value: unfolded, WSP runs to one SP, none at either end. */
    w = squeeze_wsp(w, field + namelen + 1, len - namelen - 1, false);
    out->len = (size_t)(w - out->data);
    out->data[out->len] = '\0';
    return 0;
}

void
dkim_canon_body(struct buf *out, const unsigned char *body, size_t len)
{
    size_t pos = 0, empty = 0;
    while (pos < len) {
        size_t next, n = line_at(body, len, pos, &next);
        const unsigned char *l = body + pos;
        pos = next;
        while (n && is_wsp(l[n - 1]))
            n--;
        if (n == 0) {
            empty++; /* kept only if a non-empty line follows */
            continue;
        }
        buf_reserve(out, 2 * empty + n + 2);
        char *w = out->data + out->len;
        for (; empty; empty--) {
            *w++ = '\r';
            *w++ = '\n';
        }
        bool sp = false;
        for (size_t i = 0; i < n; i++) {
            if (is_wsp(l[i])) {
                if (!sp)
                    *w++ = ' ';
                sp = true;
            } else {
                *w++ = (char)l[i];
                sp = false;
            }
        }
        *w++ = '\r';
        *w++ = '\n';
        out->len = (size_t)(w - out->data);
        out->data[out->len] = '\0';
    }
}

/* ---- message parsing ---------------------------------------------------- */

/* Splits the header block into fields with the header iterator (node/hdr.c;
 * a lone CR ends a line, as the wire will show it); returns the offset of
 * the body (len when there is no empty line). *fields is allocated (caller
 * frees). */
static size_t
parse_fields(const unsigned char *msg, size_t len, struct field **fields, size_t *nfields)
{
    struct field *f = NULL;
    size_t n = 0, cap = 0;
    struct hdr_iter it;
    struct hdr_field hf;
    hdr_iter_init_flags(&it, (const char *)msg, len, HDR_BARE_CR);
    while (hdr_next(&it, &hf)) {
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            f = xrealloc(f, cap * sizeof *f);
        }
        f[n].p = (const char *)msg + hf.off;
        f[n].len = hf.len;
        f[n].used = false;
        n++;
    }
    *fields = f;
    *nfields = n;
    return it.body;
}

/* Does field F have the name NAME (lower case)? WSP before the colon is
 * ignored, as the relaxed canonicalization does. */
static bool
field_is(const struct field *f, const char *name)
{
    size_t nl = strlen(name);
    if (f->len <= nl || strncasecmp(f->p, name, nl) != 0)
        return false;
    for (size_t i = nl; i < f->len; i++) {
        if (f->p[i] == ':')
            return true;
        if (!is_wsp((unsigned char)f->p[i]))
            return false;
    }
    return false;
}

/* The lower-case domain of an address "local@domain" (S, N bytes, may have
 * WSP around it), or NULL when there is none or it is not a host name. */
static char *
addr_domain(const char *s, size_t n)
{
    const char *at = NULL;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '@')
            at = s + i;
    if (!at)
        return NULL;
    const char *d = at + 1;
    size_t dl = (size_t)(s + n - d);
    while (dl && is_wsp((unsigned char)*d)) {
        d++;
        dl--;
    }
    while (dl && is_wsp((unsigned char)d[dl - 1]))
        dl--;
    if (dl && d[dl - 1] == '.')
        dl--;
    if (dl == 0 || dl > 253 || d[0] == '.')
        return NULL;
    for (size_t i = 0; i < dl; i++) {
        unsigned char c = (unsigned char)d[i];
        if (!isalnum(c) && c != '-' && c != '.' && c != '_')
            return NULL;
        if (c == '.' && i + 1 < dl && d[i + 1] == '.')
            return NULL;
    }
    return util_strlower(xstrndup(d, dl));
}

/* Domain of the (first) address in a From: field. Comments are dropped and
 * quoted strings blanked, so that "<" or "@" in a display name do not
 * count. */
static char *
from_domain(const struct field *f)
{
    const char *colon = memchr(f->p, ':', f->len);
    if (!colon)
        return NULL;
    const char *v = colon + 1;
    size_t vl = f->len - (size_t)(v - f->p);
    char *clean = xmalloc(vl + 1);
    size_t n = 0;
    int depth = 0;
    bool quoted = false;
    for (size_t i = 0; i < vl; i++) {
        char c = v[i];
        if (c == '\r' || c == '\n')
            continue;
        if (c == '\\' && (quoted || depth > 0)) {
            i++;
            if (quoted)
                clean[n++] = 'x';
            continue;
        }
        if (quoted) {
            if (c == '"')
                quoted = false;
            clean[n++] = c == '"' ? '"' : 'x';
        } else if (depth > 0) {
            if (c == '(')
                depth++;
            else if (c == ')')
                depth--;
        } else if (c == '(') {
            depth = 1;
            clean[n++] = ' ';
        } else {
            if (c == '"')
                quoted = true;
            clean[n++] = c;
        }
    }
    clean[n] = '\0';
    const char *a = clean;
    size_t al = n;
    char *lt = memchr(clean, '<', n);
    if (lt) {
        a = lt + 1;
        char *gt = memchr(a, '>', n - (size_t)(a - clean));
        al = gt ? (size_t)(gt - a) : n - (size_t)(a - clean);
    } else {
        char *comma = memchr(clean, ',', n);
        if (comma)
            al = (size_t)(comma - clean);
    }
    char *dom = addr_domain(a, al);
    free(clean);
    return dom;
}

char *
dkim_sender_domain(const char *mail_from, const unsigned char *msg, size_t len)
{
    struct field *fields;
    size_t nfields;
    parse_fields(msg, len, &fields, &nfields);
    char *dom = NULL;
    for (size_t i = 0; i < nfields; i++) {
        if (field_is(&fields[i], "from")) {
            dom = from_domain(&fields[i]);
            break;
        }
    }
    free(fields);
    if (!dom && mail_from)
        dom = addr_domain(mail_from, strlen(mail_from));
    return dom;
}

/* ---- keys ----------------------------------------------------------------- */

static int
no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    (void)u;
    return -1;
}

static int
load_key(struct dkim_key *k, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot open DKIM key: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: DKIM key is not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_mode & S_IRWXO) {
        snprintf(err, errlen,
                 "%s: DKIM key is accessible by others (mode %04o); allow only the "
                 "daemon's user (chmod 600)",
                 path, (unsigned)(st.st_mode & 07777));
        close(fd);
        return -1;
    }
    if (st.st_size > DKIM_KEY_FILE_MAX) {
        snprintf(err, errlen, "%s: DKIM key file too large", path);
        close(fd);
        return -1;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *data = xmalloc(cap);
    for (;;) {
        ssize_t r = read(fd, data + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            snprintf(err, errlen, "%s: cannot read DKIM key: %s", path, strerror(errno));
            OPENSSL_cleanse(data, cap);
            free(data);
            close(fd);
            return -1;
        }
        if (r == 0 || (n += (size_t)r) == cap)
            break;
    }
    close(fd);
    BIO *bio = BIO_new_mem_buf(data, (int)n);
    PGMTA_ASSERT(bio != NULL);
    EVP_PKEY *pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    OPENSSL_cleanse(data, cap);
    free(data);
    if (!pkey) {
        ERR_clear_error();
        snprintf(err, errlen,
                 "%s: not a PEM private key (or one protected by a passphrase, which is not "
                 "supported)",
                 path);
        return -1;
    }
    if (EVP_PKEY_is_a(pkey, "RSA")) {
        int bits = EVP_PKEY_get_bits(pkey);
        if (bits < 1024) {
            snprintf(err, errlen, "%s: RSA key of %d bits; DKIM wants at least 1024", path, bits);
            EVP_PKEY_free(pkey);
            return -1;
        }
        k->alg = DKIM_RSA_SHA256;
    } else if (EVP_PKEY_is_a(pkey, "ED25519")) {
        k->alg = DKIM_ED25519_SHA256;
    } else {
        const char *t = EVP_PKEY_get0_type_name(pkey);
        snprintf(err, errlen, "%s: unsupported key type %s (RSA or Ed25519 wanted)", path,
                 t ? t : "unknown");
        EVP_PKEY_free(pkey);
        return -1;
    }
    k->pkey = pkey;
    return 0;
}

/* Selector and domain go into a header and a DNS name: letters, digits, '-',
 * '_' and '.' only. */
static bool
valid_name(const char *s)
{
    if (!s || !*s || strlen(s) > 253)
        return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
            return false;
    return true;
}

/* A header value: printable ASCII and tabs, no line breaks. */
static bool
valid_header_value(const char *s)
{
    if (!s || !*s || strlen(s) > 900)
        return false;
    for (; *s; s++)
        if (*s != '\t' && (*s < 0x20 || *s == 0x7f))
            return false;
    return true;
}

struct dkim *
dkim_new(const struct conf *conf, char *err, size_t errlen)
{
    struct dkim *d = xcalloc(1, sizeof *d);
    const char *cfile = conf->path ? conf->path : "configuration";
    if (conf->ndkim)
        d->keys = xcalloc(conf->ndkim, sizeof *d->keys);
    for (size_t i = 0; i < conf->ndkim; i++) {
        const struct conf_dkim *c = &conf->dkim[i];
        if (!valid_name(c->domain) || !valid_name(c->selector)) {
            snprintf(err, errlen, "%s: dkim entry with a bad domain or selector (%s, %s)", cfile,
                     c->domain ? c->domain : "none", c->selector ? c->selector : "none");
            dkim_free(d);
            return NULL;
        }
        if (!c->key_file) {
            snprintf(err, errlen, "%s: dkim entry for %s without key-file", cfile, c->domain);
            dkim_free(d);
            return NULL;
        }
        struct dkim_key *k = &d->keys[d->nkeys];
        if (load_key(k, c->key_file, err, errlen) != 0) {
            dkim_free(d);
            return NULL;
        }
        k->domain = xstrdup(c->domain);
        k->selector = xstrdup(c->selector);
        d->nkeys++;
    }
    if (conf->nbimi)
        d->bimi = xcalloc(conf->nbimi, sizeof *d->bimi);
    for (size_t i = 0; i < conf->nbimi; i++) {
        const struct conf_bimi *c = &conf->bimi[i];
        if (!valid_name(c->domain) || !valid_header_value(c->selector)) {
            snprintf(err, errlen, "%s: bimi entry with a bad domain or selector (%s)", cfile,
                     c->domain ? c->domain : "none");
            dkim_free(d);
            return NULL;
        }
        d->bimi[d->nbimi].domain = xstrdup(c->domain);
        d->bimi[d->nbimi].value = xstrdup(c->selector);
        d->nbimi++;
    }
    return d;
}

void
dkim_free(struct dkim *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->nkeys; i++) {
        free(d->keys[i].domain);
        free(d->keys[i].selector);
        EVP_PKEY_free(d->keys[i].pkey);
    }
    for (size_t i = 0; i < d->nbimi; i++) {
        free(d->bimi[i].domain);
        free(d->bimi[i].value);
    }
    free(d->keys);
    free(d->bimi);
    free(d);
}

/* ---- signing ------------------------------------------------------------ */

/* Appends atoms to a header, folding with CRLF TAB before DKIM_FOLD_COLUMN. */
struct fold {
    struct buf *b;
    size_t col;
};

static void
fold_add(struct fold *f, const char *sep, const char *atom, size_t n)
{
    size_t sl = strlen(sep);
    if (f->col + sl + n > DKIM_FOLD_COLUMN && f->col > 8) {
        buf_append(f->b, "\r\n\t", 3);
        f->col = 8;
    } else {
        buf_append(f->b, sep, sl);
        f->col += sl;
    }
    buf_append(f->b, atom, n);
    f->col += n;
}

static char *
base64(const unsigned char *p, size_t n)
{
    char *out = xmalloc(4 * ((n + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    return out;
}

/* Signs DATA with K; returns the signature (caller frees) or NULL. */
static unsigned char *
sign_data(const struct dkim_key *k, const unsigned char *data, size_t n, size_t *siglen)
{
    unsigned char hash[EVP_MAX_MD_SIZE];
    unsigned int hlen = 0;
    const EVP_MD *md = EVP_sha256();
    if (k->alg == DKIM_ED25519_SHA256) {
        /* RFC 8463 §3: PureEdDSA over the SHA-256 hash of the data. */
        if (EVP_Digest(data, n, hash, &hlen, EVP_sha256(), NULL) != 1)
            return NULL;
        data = hash;
        n = hlen;
        md = NULL;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    PGMTA_ASSERT(ctx != NULL);
    unsigned char *sig = NULL;
    size_t sl = 0;
    if (EVP_DigestSignInit(ctx, NULL, md, NULL, k->pkey) == 1 &&
        EVP_DigestSign(ctx, NULL, &sl, data, n) == 1) {
        sig = xmalloc(sl);
        if (EVP_DigestSign(ctx, sig, &sl, data, n) != 1) {
            free(sig);
            sig = NULL;
        }
    }
    EVP_MD_CTX_free(ctx);
    *siglen = sl;
    return sig;
}

/* Appends the DKIM-Signature header (ending in CRLF) for the message whose
 * fields are FIELDS (the BIMI-Selector to be added among them) and whose body
 * is BODY; the names in OVERSIGN (NULL-terminated, may be NULL) that occur
 * are listed once more in h=, as From always is. Returns -1 when signing
 * fails. */
static int
sign_message(struct buf *out, const struct dkim_key *k, struct field *fields, size_t nfields,
             const unsigned char *body, size_t bodylen, const char *const *oversign)
{
    /* bh= */
    struct buf cb;
    buf_init(&cb);
    dkim_canon_body(&cb, body, bodylen);
    unsigned char bh[EVP_MAX_MD_SIZE];
    unsigned int bhlen = 0;
    int ok = EVP_Digest(cb.data ? cb.data : "", cb.len, bh, &bhlen, EVP_sha256(), NULL);
    buf_free(&cb);
    if (ok != 1)
        return -1;

    /* h=: every instance of each signed name (bottom-up), From once more. */
    const char *h[NSIGNED_NAMES * (DKIM_MAX_PER_NAME + 1)];
    size_t nh = 0;
    for (size_t i = 0; i < NSIGNED_NAMES; i++) {
        size_t count = 0;
        for (size_t j = 0; j < nfields; j++)
            if (field_is(&fields[j], signed_names[i]))
                count++;
        if (count > DKIM_MAX_PER_NAME)
            count = DKIM_MAX_PER_NAME;
        bool over = i == 0;
        for (const char *const *o = oversign; o && *o && count && !over; o++)
            over = !strcmp(*o, signed_names[i]);
        if (over)
            count++;
        for (size_t c = 0; c < count; c++)
            h[nh++] = signed_names[i];
    }

    struct buf sig;
    buf_init(&sig);
    buf_puts(&sig, "DKIM-Signature:");
    struct fold f = {&sig, sig.len};
    char atom[512];
    int al;
    al = snprintf(atom, sizeof atom, "v=1;");
    fold_add(&f, " ", atom, (size_t)al);
    al = snprintf(atom, sizeof atom, "a=%s;",
                  k->alg == DKIM_RSA_SHA256 ? "rsa-sha256" : "ed25519-sha256");
    fold_add(&f, " ", atom, (size_t)al);
    fold_add(&f, " ", "c=relaxed/relaxed;", 18);
    al = snprintf(atom, sizeof atom, "d=%s;", k->domain);
    fold_add(&f, " ", atom, (size_t)al);
    al = snprintf(atom, sizeof atom, "s=%s;", k->selector);
    fold_add(&f, " ", atom, (size_t)al);
    al = snprintf(atom, sizeof atom, "t=%lld;", (long long)time(NULL));
    fold_add(&f, " ", atom, (size_t)al);
    char *bh64 = base64(bh, bhlen);
    al = snprintf(atom, sizeof atom, "bh=%s;", bh64);
    free(bh64);
    fold_add(&f, " ", atom, (size_t)al);
    for (size_t i = 0; i < nh; i++) {
        al = snprintf(atom, sizeof atom, "%s%s%s", i == 0 ? "h=" : ":", h[i],
                      i + 1 == nh ? ";" : "");
        fold_add(&f, i == 0 ? " " : "", atom, (size_t)al);
    }
    fold_add(&f, " ", "b=", 2);

    /* The signed data: the h= fields, then this header with an empty b=. */
    struct buf data;
    buf_init(&data);
    for (size_t i = 0; i < nh; i++) {
        for (size_t j = nfields; j-- > 0;) {
            if (!fields[j].used && field_is(&fields[j], h[i])) {
                fields[j].used = true;
                dkim_canon_header(&data, fields[j].p, fields[j].len);
                buf_append(&data, "\r\n", 2);
                break;
            }
        }
    }
    dkim_canon_header(&data, sig.data, sig.len);
    size_t siglen = 0;
    unsigned char *s = sign_data(k, (const unsigned char *)data.data, data.len, &siglen);
    buf_free(&data);
    if (!s) {
        ERR_clear_error();
        buf_free(&sig);
        return -1;
    }
    char *b64 = base64(s, siglen);
    free(s);
    size_t left = strlen(b64);
    const char *p = b64;
    while (left) {
        if (f.col >= DKIM_FOLD_COLUMN - 8) {
            buf_append(&sig, "\r\n\t", 3);
            f.col = 8;
        }
        size_t n = DKIM_FOLD_COLUMN - f.col;
        if (n > left)
            n = left;
        buf_append(&sig, p, n);
        f.col += n;
        p += n;
        left -= n;
    }
    free(b64);
    buf_append(&sig, "\r\n", 2);
    buf_append(out, sig.data, sig.len);
    buf_free(&sig);
    return 0;
}

static const struct dkim_key *
find_key(const struct dkim *d, const char *domain)
{
    for (size_t i = 0; i < d->nkeys; i++)
        if (strcasecmp(d->keys[i].domain, domain) == 0)
            return &d->keys[i];
    return NULL;
}

static const struct dkim_bimi *
find_bimi(const struct dkim *d, const char *domain)
{
    for (size_t i = 0; i < d->nbimi; i++)
        if (strcasecmp(d->bimi[i].domain, domain) == 0)
            return &d->bimi[i];
    return NULL;
}

char *
dkim_headers(struct dkim *d, const char *mail_from, const unsigned char *msg, size_t len)
{
    return dkim_headers_extra(d, mail_from, NULL, 0, msg, len);
}

char *
dkim_headers_extra(struct dkim *d, const char *mail_from, const char *extra, size_t extra_len,
                   const unsigned char *msg, size_t len)
{
    if (!d || (d->nkeys == 0 && d->nbimi == 0))
        return NULL;
    char *domain = dkim_sender_domain(mail_from, msg, len);
    if (!domain)
        return NULL;
    const struct dkim_key *k = find_key(d, domain);
    const struct dkim_bimi *bimi = find_bimi(d, domain);
    if (!k && !bimi) {
        free(domain);
        return NULL;
    }
    struct buf out;
    buf_init(&out);
    if (bimi)
        buf_printf(&out, "BIMI-Selector: %s\r\n", bimi->value);
    if (k) {
        struct field *mf, *xf = NULL;
        size_t nmf, nxf = 0;
        size_t body = parse_fields(msg, len, &mf, &nmf);
        if (extra_len)
            parse_fields((const unsigned char *)extra, extra_len, &xf, &nxf);
        /* The fields as the receiver sees them: the added BIMI-Selector
         * first, then EXTRA, then the message's. */
        struct field *fields = xmalloc((nmf + nxf + 1) * sizeof *fields);
        size_t n = 0;
        if (bimi)
            fields[n++] = (struct field){out.data, out.len - 2, false};
        if (nxf)
            memcpy(fields + n, xf, nxf * sizeof *xf);
        n += nxf;
        if (nmf)
            memcpy(fields + n, mf, nmf * sizeof *mf);
        n += nmf;
        free(mf);
        free(xf);
        /* out.data may move while the signature is appended: sign into a
         * separate buffer. */
        struct buf sig;
        buf_init(&sig);
        /* Fields we add are listed once more than they occur, like From:
         * nobody can add a second List-Unsubscribe under the signature. */
        static const char *const added[] = {"list-unsubscribe", "list-unsubscribe-post", NULL};
        if (sign_message(&sig, k, fields, n, msg + body, len - body, nxf ? added : NULL) != 0)
            log_error("dkim domain=%s selector=%s error=\"signing failed\"", k->domain,
                      k->selector);
        else
            buf_append(&out, sig.data, sig.len);
        buf_free(&sig);
        free(fields);
    }
    free(domain);
    if (out.len == 0) {
        buf_free(&out);
        return NULL;
    }
    return out.data;
}
