/* hdr: the one iterator over the header section of an RFC 5322 message.
 * It walks fields in order and says where each starts and ends, with its
 * name and its value including continuation lines (folding kept); the
 * caller copies, compares or removes what it needs. Lines end with CRLF or
 * a bare LF; a CR elsewhere is an ordinary octet, unless the iterator is
 * started with HDR_BARE_CR, which makes a lone CR a line ending too (how the
 * SMTP client's CRLF normalisation puts it on the wire: DKIM signs that). The header section ends
 * at the first empty line, or at the end of the buffer. A pure iterator:
 * no allocation, each octet looked at a bounded number of times (linear
 * time whatever the input: no field limit is needed for time, callers
 * bound the count they keep).
 *
 * A line that does not start with WSP starts a new field. A field is valid
 * when its name is 1..HDR_NAME_MAX printable ASCII octets other than ':',
 * optionally followed by WSP, then ':' (RFC 5322 §3.6.8, with the obsolete
 * WSP before the colon of §4.5.3). Other lines (no colon, a space in the
 * name, a continuation line before any field) are returned too, with
 * valid = false, so a caller can keep them, drop them or refuse the
 * message. */
#ifndef PGMTA_HDR_H
#define PGMTA_HDR_H

#include <stdbool.h>
#include <stddef.h>

#define HDR_NAME_MAX 996 /* RFC 5322 line limit minus ':' and CRLF */

struct hdr_field {
    size_t off;       /* first octet of the field */
    size_t len;       /* the field without its final line ending */
    size_t end;       /* just past the final line ending (next field) */
    const char *name; /* valid: the name, without WSP before the colon */
    size_t name_len;
    const char *value; /* valid: after the colon, through the last
                          continuation line (folding kept) */
    size_t value_len;
    bool valid;
};

#define HDR_BARE_CR 0x1

struct hdr_iter {
    const char *buf;
    size_t len;
    size_t pos;
    unsigned flags;
    size_t body; /* offset of the body once the end was reached */
    bool done;
};

void hdr_iter_init(struct hdr_iter *it, const char *buf, size_t len);
void hdr_iter_init_flags(struct hdr_iter *it, const char *buf, size_t len, unsigned flags);
/* The next field into F: true, or false at the end of the header section
 * (it->body is then the offset just past the empty line, or len). */
bool hdr_next(struct hdr_iter *it, struct hdr_field *f);
/* Offset of the body (iterates to the end if needed). */
size_t hdr_body_offset(const char *buf, size_t len);
/* Case-insensitive name comparison (ASCII). */
bool hdr_name_is(const struct hdr_field *f, const char *name);

#endif
