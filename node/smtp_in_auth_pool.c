/* smtp_in_auth_pool: password checks on worker threads (see
 * smtp_in_auth_pool.h).
 *
 * Ownership: the pool owns its threads, its eventfd and every job from
 * submit until the result has been handed to the callback (or dropped by
 * smtp_in_auth_pool_free). A job is on exactly one of two lists, both under
 * the pool's mutex: "todo" (waiting for a worker; a worker takes it off
 * while it runs the check, touching nothing shared) and "done" (result
 * ready, waiting for the loop). A worker that finishes a job appends it to
 * "done" and writes to the eventfd; the loop's read event takes the whole
 * list and calls the callback once per job, without the mutex held. The
 * threads never touch libevent or a session: only the job they hold. The
 * copy of the password is wiped as soon as it has been checked, and so is
 * that of a job that is dropped. */
#include "smtp_in_auth_pool.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "log.h"
#include "smtp_in_auth.h"
#include "util.h"

struct job {
    struct job *next;
    struct smtp_in_auth_req req;
    char *stored; /* NULL: unknown user */
    char *given;  /* wiped and freed once checked */
    size_t givenlen;
    bool ok;
};

struct smtp_in_auth_pool {
    struct event_base *base;
    smtp_in_auth_pool_cb cb;
    void *arg;
    size_t max_queued;
    size_t pending; /* jobs owned: todo, running, done (loop thread only) */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct job *todo, **todo_tail;
    struct job *done, **done_tail;
    bool stop;
    pthread_t *threads;
    unsigned nthreads;
    int efd;
    struct event *ev;
};

static void
job_wipe(struct job *j)
{
    if (j->given) {
        OPENSSL_cleanse(j->given, j->givenlen);
        free(j->given);
        j->given = NULL;
    }
}

static void
job_free(struct job *j)
{
    job_wipe(j);
    free(j->stored);
    free(j);
}

static void
free_list(struct job *j)
{
    while (j) {
        struct job *next = j->next;
        job_free(j);
        j = next;
    }
}

static void *
worker(void *arg)
{
    struct smtp_in_auth_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && !p->todo)
            pthread_cond_wait(&p->cond, &p->mu);
        if (p->stop)
            break;
        struct job *j = p->todo;
        p->todo = j->next;
        if (!p->todo)
            p->todo_tail = &p->todo;
        j->next = NULL;
        pthread_mutex_unlock(&p->mu);

        j->ok = j->stored && smtp_in_password_ok(j->stored, j->given, j->givenlen);
        job_wipe(j);

        pthread_mutex_lock(&p->mu);
        *p->done_tail = j;
        p->done_tail = &j->next;
        uint64_t one = 1;
        /* The counter cannot overflow here; a failed write would only
         * delay the result until the next one. */
        if (write(p->efd, &one, sizeof one) != (ssize_t)sizeof one)
            log_warn("smtp-in event=auth-pool-wake-failed error=\"%s\"", strerror(errno));
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* In the loop: the results that are ready. */
static void
on_results(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct smtp_in_auth_pool *p = arg;
    uint64_t n;
    if (read(fd, &n, sizeof n) < 0 && errno != EAGAIN)
        log_warn("smtp-in event=auth-pool-read-failed error=\"%s\"", strerror(errno));
    pthread_mutex_lock(&p->mu);
    struct job *list = p->done;
    p->done = NULL;
    p->done_tail = &p->done;
    pthread_mutex_unlock(&p->mu);
    while (list) {
        struct job *j = list;
        list = j->next;
        p->pending--;
        p->cb(&j->req, j->ok, p->arg);
        job_free(j);
    }
}

struct smtp_in_auth_pool *
smtp_in_auth_pool_new(struct event_base *base, unsigned threads, size_t max_queued,
                      smtp_in_auth_pool_cb cb, void *arg)
{
    struct smtp_in_auth_pool *p = xcalloc(1, sizeof *p);
    p->base = base;
    p->cb = cb;
    p->arg = arg;
    p->max_queued = max_queued ? max_queued : 1;
    p->todo_tail = &p->todo;
    p->done_tail = &p->done;
    PGMTA_ASSERT(pthread_mutex_init(&p->mu, NULL) == 0);
    PGMTA_ASSERT(pthread_cond_init(&p->cond, NULL) == 0);
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    PGMTA_ASSERT(p->efd >= 0);
    p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, on_results, p);
    PGMTA_ASSERT(p->ev != NULL && event_add(p->ev, NULL) == 0);

    /* Signals are for the loop's thread (libevent's signal events): the
     * workers start with every signal blocked. */
    sigset_t all, old;
    sigfillset(&all);
    PGMTA_ASSERT(pthread_sigmask(SIG_SETMASK, &all, &old) == 0);
    p->nthreads = threads ? threads : 1;
    p->threads = xcalloc(p->nthreads, sizeof *p->threads);
    for (unsigned i = 0; i < p->nthreads; i++)
        PGMTA_ASSERT(pthread_create(&p->threads[i], NULL, worker, p) == 0);
    PGMTA_ASSERT(pthread_sigmask(SIG_SETMASK, &old, NULL) == 0);
    log_debug("smtp-in event=auth-pool-started threads=%u max-queued=%zu", p->nthreads,
              p->max_queued);
    return p;
}

void
smtp_in_auth_pool_free(struct smtp_in_auth_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    free(p->threads);
    free_list(p->todo);
    free_list(p->done);
    event_free(p->ev);
    close(p->efd);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

bool
smtp_in_auth_pool_submit(struct smtp_in_auth_pool *p, const struct smtp_in_auth_req *req,
                         const char *stored, const char *given, size_t givenlen)
{
    if (p->pending >= p->max_queued)
        return false;
    p->pending++;
    struct job *j = xcalloc(1, sizeof *j);
    j->req = *req;
    j->stored = stored ? xstrdup(stored) : NULL;
    j->given = xmalloc(givenlen + 1);
    memcpy(j->given, given, givenlen);
    j->given[givenlen] = '\0';
    j->givenlen = givenlen;
    pthread_mutex_lock(&p->mu);
    *p->todo_tail = j;
    p->todo_tail = &j->next;
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->mu);
    return true;
}

size_t
smtp_in_auth_pool_pending(const struct smtp_in_auth_pool *p)
{
    return p->pending;
}
