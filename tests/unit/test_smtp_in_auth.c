/* Unit tests of the listener's AUTH defences that involve processes and
 * threads: the failed-AUTH table in shared memory seen by a forked process,
 * its robust mutex when a process is killed while holding it, and the
 * password-check pool (results only from the event loop, a bounded queue). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "log.h"
#include "smtp_in_auth.h"
#include "smtp_in_auth_pool.h"
#include "util.h"

static const unsigned char addr_a[16] = {192, 0, 2, 1};

/* Failures recorded by a child process count in the parent, and on. */
static void
test_shared_table_across_fork(void **state)
{
    (void)state;
    struct smtp_in_auth_table *t = smtp_in_auth_table_new_shared();
    assert_non_null(t);
    uint64_t now = util_now_ms();
    assert_int_equal(smtp_in_auth_failed(t, AF_INET, addr_a, now), 1);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        smtp_in_auth_failed(t, AF_INET, addr_a, now);
        smtp_in_auth_failed(t, AF_INET, addr_a, now);
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(smtp_in_auth_failures(t, AF_INET, addr_a, now), 3);
    assert_int_equal(smtp_in_auth_failed(t, AF_INET, addr_a, now), 4);
    smtp_in_auth_table_free(t);
}

/* A process killed (SIGKILL) while it holds the table's lock does not block
 * the others: the child spends nearly all its time inside the lock (every
 * call on a full table scans it twice), so some of the kills land there. */
static void
test_shared_table_owner_killed(void **state)
{
    (void)state;
    struct smtp_in_auth_table *t = smtp_in_auth_table_new_shared();
    assert_non_null(t);
    uint64_t now = util_now_ms();
    unsigned expect = 0;
    for (int round = 0; round < 20; round++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            for (unsigned i = 0;; i++) {
                unsigned char x[16] = {10, (unsigned char)(i >> 16), (unsigned char)(i >> 8),
                                       (unsigned char)i};
                smtp_in_auth_failed(t, AF_INET, x, now + 1);
            }
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));
        /* The lock is taken again (after recovery when the child held it). */
        unsigned n = smtp_in_auth_failed(t, AF_INET, addr_a, now + 2);
        assert_true(n >= 1);
        expect = n;
    }
    assert_int_equal(smtp_in_auth_failures(t, AF_INET, addr_a, now + 2), expect);
    smtp_in_auth_table_free(t);
}

struct results {
    unsigned n;
    unsigned long ids[8];
    bool ok[8];
    struct event_base *base;
};

static void
on_result(const struct smtp_in_auth_req *req, bool ok, void *arg)
{
    struct results *r = arg;
    assert_true(r->n < 8);
    r->ids[r->n] = req->id;
    r->ok[r->n] = ok;
    r->n++;
    assert_int_equal(req->family, AF_INET);
    assert_memory_equal(req->addr, addr_a, 4);
}

static void
test_pool(void **state)
{
    (void)state;
    struct results r = {0};
    r.base = event_base_new();
    assert_non_null(r.base);
    struct smtp_in_auth_pool *p = smtp_in_auth_pool_new(r.base, 1, 3, on_result, &r);
    struct smtp_in_auth_req req = {.id = 1, .family = AF_INET};
    memcpy(req.addr, addr_a, 4);
    assert_true(smtp_in_auth_pool_submit(p, &req, "s3cret", "s3cret", 6));
    req.id = 2;
    assert_true(smtp_in_auth_pool_submit(p, &req, "s3cret", "s3cre", 5));
    req.id = 3;
    assert_true(smtp_in_auth_pool_submit(p, &req, NULL, "s3cret", 6)); /* no such user */
    req.id = 4;
    assert_false(smtp_in_auth_pool_submit(p, &req, "s3cret", "s3cret", 6)); /* full */
    assert_int_equal(smtp_in_auth_pool_pending(p), 3);
    /* Never from inside submit, however fast the worker: only the loop. */
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    assert_int_equal(r.n, 0);
    uint64_t deadline = util_now_ms() + 10000;
    while (r.n < 3 && util_now_ms() < deadline)
        event_base_loop(r.base, EVLOOP_ONCE);
    assert_int_equal(r.n, 3);
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(r.ok[i], r.ids[i] == 1);
    assert_int_equal(smtp_in_auth_pool_pending(p), 0);
    req.id = 5;
    assert_true(smtp_in_auth_pool_submit(p, &req, "s3cret", "s3cret", 6));
    /* Freed with a check pending: dropped, no callback. */
    smtp_in_auth_pool_free(p);
    assert_int_equal(r.n, 3);
    event_base_free(r.base);
}

int
main(void)
{
    log_threshold = LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_table_across_fork),
        cmocka_unit_test(test_shared_table_owner_killed),
        cmocka_unit_test(test_pool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
