/* unsub: one-click unsubscribe (RFC 8058): the per-recipient token, the
 * List-Unsubscribe and List-Unsubscribe-Post headers added at delivery, and
 * the check of a token that comes back (POST /u/TOKEN on the unsubscribe
 * listener, unsub_http.h, or a mail to the mailto: address).
 *
 * A token is base64url without padding of
 *   version (1 octet, UNSUB_TOKEN_VERSION)
 *   job id length J (1 octet; 0: no job)
 *   scope length S (1 octet, S <= J: the suppression is written for the job
 *     id prefix of S octets; 0: for every job)
 *   the job id (J octets), the recipient address (the rest before the tag)
 *   tag: HMAC-SHA256 with the server secret over everything before it
 *     (UNSUB_TAG_LEN octets)
 * The secret never leaves the node (the database gets the checked address
 * and job). A struct unsub is immutable once built; a reload builds a new
 * one. */
#ifndef PGMTA_UNSUB_H
#define PGMTA_UNSUB_H

#include <stdbool.h>
#include <stddef.h>

struct conf;
struct unsub;
struct unsub_entry;

#define UNSUB_TOKEN_VERSION 1
#define UNSUB_TAG_LEN 32
#define UNSUB_JOB_MAX 255  /* octets of a job id a token carries */
#define UNSUB_RCPT_MAX 254 /* ADDR_MAX */
#define UNSUB_RAW_MAX (3 + UNSUB_JOB_MAX + UNSUB_RCPT_MAX + UNSUB_TAG_LEN)
/* Longest token, in characters: base64url of UNSUB_RAW_MAX octets. */
#define UNSUB_TOKEN_MAX ((UNSUB_RAW_MAX * 4 + 2) / 3)
/* A secret shorter than this is refused (e.g. `openssl rand -hex 32`). */
#define UNSUB_SECRET_MIN 16
/* The subject of the mailto: URI: this prefix, then the token. */
#define UNSUB_MAILTO_SUBJECT "unsubscribe-"

/* Builds the list-unsubscribe entries and reads unsubscribe-secret-file of
 * CONF (both checked by conf_load already). Without entries and without a
 * secret file returns an empty struct (unsub_match finds nothing). NULL with
 * "file: reason" in err when the secret cannot be read now. */
struct unsub *unsub_new(const struct conf *conf, char *err, size_t errlen);
/* A struct with only KEY (KEYLEN octets) and no entries: tests, fuzzing. */
struct unsub *unsub_new_key(const void *key, size_t keylen);
void unsub_free(struct unsub *u);
/* Whether tokens can be checked (a secret is loaded). */
bool unsub_has_secret(const struct unsub *u);

/* The entry for a message (MSG, LEN: its stored content; MAIL_FROM its
 * envelope sender; JOB its job id or NULL), or NULL when none applies or the
 * message carries a List-Unsubscribe header of its own (kept as it is) or
 * has a job id longer than UNSUB_JOB_MAX octets. The
 * sender domain is that of the From: address, else of MAIL_FROM, as for DKIM;
 * among entries of the domain whose job-prefix the job id starts with (or
 * without one) the longest job-prefix wins. */
const struct unsub_entry *unsub_match(const struct unsub *u, const char *mail_from, const char *job,
                                      const unsigned char *msg, size_t len);
/* "List-Unsubscribe: <URL TOKEN>[, <mailto:ADDR?subject=unsubscribe-TOKEN>]"
 * and "List-Unsubscribe-Post: List-Unsubscribe=One-Click", each line ending
 * in CRLF, for recipient RCPT of job JOB (NULL: none). NULL when the token
 * cannot carry them (a job id longer than UNSUB_JOB_MAX octets). The caller
 * frees. */
char *unsub_headers(const struct unsub *u, const struct unsub_entry *e, const char *rcpt,
                    const char *job);

/* The token for RCPT and JOB (NULL: none), the suppression to be written for
 * the first SCOPE_LEN octets of JOB (0: every job). NULL when an argument is
 * out of bounds. The caller frees. */
char *unsub_token_make(const struct unsub *u, const char *rcpt, const char *job, size_t scope_len);
/* Checks TOKEN (a C string: nothing may follow it). 0 with *RCPT, *JOB (NULL
 * when the token has none) and *SCOPE (the job id prefix the suppression is
 * for, NULL: every job) set, each freed by the caller; -1 for anything else
 * (bad characters, truncated, overlong, another version, a tag that does not
 * match: compared in constant time), with nothing set. */
int unsub_token_verify(const struct unsub *u, const char *token, char **rcpt, char **job,
                       char **scope);
/* The token in the Subject of a mail sent to the mailto: address: a pointer
 * into SUBJECT after UNSUB_MAILTO_SUBJECT (case-insensitive, blanks around
 * allowed) and its length in *LEN, or NULL. */
const char *unsub_subject_token(const char *subject, size_t *len);

/* Configuration checks shared with conf_load (0, or -1 with the reason). */
/* The secret in PATH: its first line, at least UNSUB_SECRET_MIN octets, in a
 * file not accessible by others. The caller clears and frees the key. */
char *unsub_read_secret(const char *path, size_t *len, char *err, size_t errlen);
/* An https:// URL that can take a token at its end inside <...>. */
int unsub_url_check(const char *url, char *err, size_t errlen);

#endif
