/* smtp_in_auth_pool: password checks of the SMTP listener off its event loop
 * (see README, Security). A crypt(3) hash such as yescrypt costs
 * milliseconds of CPU by design; run in the loop, it would stall every other
 * session of the smtp-in process. A few worker threads run the checks from
 * a bounded queue; each result goes back to the loop through an eventfd and
 * is handed to the callback there, with the request's id, so that it can
 * find its session (or learn that the session has gone). */
#ifndef PGMTA_SMTP_IN_AUTH_POOL_H
#define PGMTA_SMTP_IN_AUTH_POOL_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct smtp_in_auth_pool;

/* Worker threads per smtp-in process, and checks waiting or running at most
 * (beyond that an AUTH is answered 454). */
#define SMTP_IN_AUTH_THREADS 2
#define SMTP_IN_AUTH_MAX_QUEUED 32

/* The request that the result belongs to, as given to submit. */
struct smtp_in_auth_req {
    unsigned long id;       /* the session */
    int family;             /* the client's address (AF_INET or AF_INET6) */
    unsigned char addr[16]; /* 4 or 16 bytes by family */
};

/* Called in the event loop for each finished check; ok tells whether the
 * password matched. */
typedef void (*smtp_in_auth_pool_cb)(const struct smtp_in_auth_req *req, bool ok, void *arg);

/* Starts THREADS workers (at least 1); at most MAX_QUEUED checks waiting,
 * running or with their result not yet delivered. */
struct smtp_in_auth_pool *smtp_in_auth_pool_new(struct event_base *base, unsigned threads,
                                                size_t max_queued, smtp_in_auth_pool_cb cb,
                                                void *arg);
/* Stops the workers (a check being run is finished first and its result
 * dropped, as are the queued ones, without calling cb). NULL is ignored. */
void smtp_in_auth_pool_free(struct smtp_in_auth_pool *p);
/* Queues the check of GIVEN (givenlen bytes) against STORED (a stored form,
 * see smtp_in_password_ok; NULL: no such user, the result is false). Both
 * are copied; the copy of the password is wiped once checked or dropped.
 * Returns false, queuing nothing, when the queue is full. cb is never called
 * from inside this function. */
bool smtp_in_auth_pool_submit(struct smtp_in_auth_pool *p, const struct smtp_in_auth_req *req,
                              const char *stored, const char *given, size_t givenlen);
/* Checks waiting, running or with their result not yet delivered. */
size_t smtp_in_auth_pool_pending(const struct smtp_in_auth_pool *p);

#endif
