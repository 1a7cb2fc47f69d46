/* mime: RFC 5322 / MIME messages built from parts (the HTTP injection API's
 * "content" object), and the normalisation of raw messages.
 *
 * Built messages have CRLF line endings only and no line longer than 78
 * octets except where a single header word is longer: text parts are
 * quoted-printable (7bit when pure ASCII with short lines), attachments
 * base64; non-ASCII in Subject, other unstructured headers and display names
 * becomes RFC 2047 encoded-words (UTF-8, "B"); file names use RFC 2231.
 * Structure: multipart/alternative for text + html, multipart/related around
 * it for attachments with a content_id, multipart/mixed for the others.
 * Date, Message-ID and MIME-Version are added (Date and Message-ID only
 * when the given headers lack them). */
#ifndef PGMTA_MIME_H
#define PGMTA_MIME_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct buf;

struct mime_address {
    const char *email; /* NULL: not given */
    const char *name;  /* display name or NULL */
};

struct mime_header {
    const char *name, *value;
};

struct mime_attachment {
    const char *data; /* decoded bytes */
    size_t len;
    const char *content_type; /* NULL: application/octet-stream */
    const char *file_name;    /* or NULL */
    const char *content_id;   /* or NULL: a content_id makes it inline */
};

struct mime_message {
    struct mime_address from, reply_to;
    const char *subject; /* or NULL */
    const struct mime_header *headers;
    size_t nheaders;
    const char *text_body, *html_body; /* at least one; UTF-8, no NUL */
    const struct mime_attachment *attachments;
    size_t nattachments;
    const char *msgid_domain; /* right side of a generated Message-ID */
    time_t date;
};

/* Appends the message to OUT. Returns 0, or -1 with "content.FIELD: reason"
 * in err (then OUT holds garbage). */
int mime_build(struct buf *out, const struct mime_message *m, char *err, size_t errlen);

/* Appends the raw message S (N bytes) with every line ending made CRLF and
 * Date / Message-ID fields added at the top when its header lacks them. */
void mime_raw(struct buf *out, const char *s, size_t n, const char *msgid_domain, time_t date);

/* Decodes base64 (white space ignored, padding optional at the end).
 * Returns 0, or -1 on a character outside the alphabet or bad padding. */
int mime_base64_decode(struct buf *out, const char *s, size_t n);
void mime_base64_encode(struct buf *out, const void *data, size_t n);
/* Quoted-printable of UTF-8 text; LF, CR and CRLF become CRLF line breaks. */
void mime_qp_encode(struct buf *out, const char *s, size_t n);
/* "Name: value" CRLF, folded, with encoded-words when needed. */
void mime_put_header(struct buf *out, const char *name, const char *value);
/* True for a field name of printable ASCII without ':' (RFC 5322 ftext). */
bool mime_field_name_ok(const char *name);

#endif
