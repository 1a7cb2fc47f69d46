/* inbound: what the inbound listener does with a message it received for
 * a bounce or feedback domain (see README, Inbound bounces and feedback):
 * parses it (report.c), checks the VERP address it names (verp.c) and
 * stores the outcome with one call of mta.inbound_report() on its own
 * database connection; the listener answers 250 only after that commit.
 *
 * The callback rule of db.c holds: inbound_store never calls its callback
 * before it returns; a failure found at once comes from the next loop
 * turn. */
#ifndef PGMTA_INBOUND_H
#define PGMTA_INBOUND_H

#include <stddef.h>

#include "conf.h"
#include "smtp_in_batch.h"

struct event_base;
struct inbound;

#define INBOUND_STMT "inbound_report"
/* Raw message text kept with an unmatched report. */
#define INBOUND_HEADERS_MAX (16 * 1024)

/* NULL when CONF has no listen.inbound or no database. */
struct inbound *inbound_new(struct event_base *base, const struct conf *conf, smtp_in_batch_cb cb,
                            void *arg);
/* Takes the key and domains of a reloaded configuration. */
void inbound_configure(struct inbound *in, const struct conf *conf);
/* Pending requests get their callback with TEMPFAIL first. NULL ignored. */
void inbound_free(struct inbound *in);

struct inbound_msg {
    const char *mail_from;
    char *const *rcpts;
    size_t nrcpts;
    const char *client_ip;
    const char *content; /* the message as received, Received: field first */
    size_t len;
    unsigned long sid, seq;
};
/* Parses, checks and stores M; the callback gets SMTP_IN_STORED with id
 * "rb", "f" or "unmatched: REASON", or SMTP_IN_TEMPFAIL. M is copied as
 * needed: the caller may free it on return. */
void inbound_store(struct inbound *in, const struct inbound_msg *m);

/* Is RCPT at a bounce or feedback domain (the only mail the listener
 * takes)? */
int inbound_accepts(const struct inbound *in, const char *rcpt);
/* Is RCPT the configured unsubscribe address (LOCAL@a bounce or feedback
 * domain)? The listener accepts it like a report; inbound_store hands it
 * to inbound_unsubscribe. */
int inbound_is_unsubscribe(const struct inbound *in, const char *rcpt);
/* A mailto: unsubscribe: the token is the Subject after "unsubscribe-"
 * (node/unsub.h). NULL when it verifies, with *RCPT, *JOB and *SCOPE set
 * (NULL when the token has none; the caller frees), for
 * mta.inbound_report to write the suppression; else the reason it is kept
 * unmatched (static text). */
const char *inbound_unsubscribe(const struct inbound *in, const char *subject, char **rcpt,
                                char **job, char **scope);

#endif
