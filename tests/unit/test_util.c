/* Unit tests of the deferred calls (util_defer_call / util_defer_free): a
 * call runs from the loop after the caller returned, in order, a call
 * queued by a deferred call waits for the next activation, one event per
 * event_base, and util_defer_base_free runs what is left. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <stdlib.h>

#include "util.h"

static int trace[64], ntrace;
static struct event_base *base, *requeue_base;

static void
record(void *arg)
{
    trace[ntrace++] = (int)(intptr_t)arg;
}

static void
requeue(void *arg)
{
    record(arg);
    util_defer_call(requeue_base, record, (void *)(intptr_t)((int)(intptr_t)arg + 100));
}

static int freed;

static void
count_free(void *p)
{
    freed++;
    free(p);
}

static void
test_order_and_turns(void **state)
{
    (void)state;
    base = requeue_base = event_base_new();
    ntrace = 0;
    util_defer_call(base, record, (void *)1);
    util_defer_call(base, requeue, (void *)2);
    util_defer_call(base, record, (void *)3);
    assert_int_equal(ntrace, 0); /* nothing inside the call */
    assert_int_equal(util_defer_pending(base), 3);
    event_base_loop(base, EVLOOP_NONBLOCK | EVLOOP_ONCE);
    assert_int_equal(ntrace, 3);
    assert_int_equal(trace[0], 1);
    assert_int_equal(trace[1], 2);
    assert_int_equal(trace[2], 3);
    assert_int_equal(util_defer_pending(base), 1); /* queued by requeue */
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(ntrace, 4);
    assert_int_equal(trace[3], 102);
    util_defer_base_free(base);
    event_base_free(base);
}

static void
test_free_and_base_free(void **state)
{
    (void)state;
    base = event_base_new();
    struct event_base *other = event_base_new();
    freed = 0;
    util_defer_free(base, count_free, malloc(10));
    util_defer_free(base, NULL, malloc(10)); /* plain free(3) */
    util_defer_free(base, count_free, NULL); /* nothing */
    util_defer_free(other, count_free, malloc(10));
    assert_int_equal(util_defer_pending(base), 2);
    assert_int_equal(util_defer_pending(other), 1);
    event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(freed, 1);
    assert_int_equal(util_defer_pending(other), 1); /* other base untouched */
    ntrace = 0;
    requeue_base = other;
    util_defer_call(other, requeue, (void *)7);
    util_defer_base_free(other); /* runs everything, queued-meanwhile too */
    assert_int_equal(freed, 2);
    assert_int_equal(ntrace, 2);
    assert_int_equal(trace[1], 107);
    assert_int_equal(util_defer_pending(other), 0);
    event_base_free(other);
    util_defer_base_free(base);
    event_base_free(base);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_turns),
        cmocka_unit_test(test_free_and_base_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
