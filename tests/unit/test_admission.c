/* Unit tests of admission (node/admission.c): the queue table (hash table
 * lookups, growth, pruning of idle queues), the reasons admission_check
 * gives, holds, and the dead-destination feedback: throttled after a run of
 * connection failures, one probe after retry-after, a failed probe doubles
 * the wait up to max-retry-after, a successful one opens the queue. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "admission.h"
#include "conf.h"

static struct conf_domain
domain(void)
{
    struct conf_domain d;
    memset(&d, 0, sizeof d);
    d.max_smtp_out = 2;
    d.retry_after_ms = 10000;
    d.max_retry_after_ms = 35000;
    return d;
}

static struct admission_process
process(void)
{
    return (struct admission_process){.sessions = 0,
                                      .max_sessions = 10,
                                      .content_bytes = 0,
                                      .content_budget = 1000,
                                      .slots_db_ready = true,
                                      .stopping = false};
}

static void
test_table(void **state)
{
    (void)state;
    struct admission *a = admission_new();
    char dom[64];
    for (int i = 0; i < 5000; i++) {
        snprintf(dom, sizeof dom, "d%d.test", i);
        struct admission_queue *q = admission_queue(a, dom, i % 3 ? "" : "vmta-a");
        assert_non_null(q);
        assert_string_equal(q->domain, dom);
    }
    assert_int_equal(admission_count(a), 5000);
    /* the same key gives the same queue; vmta is part of the key */
    struct admission_queue *q1 = admission_queue(a, "d1.test", "");
    assert_ptr_equal(q1, admission_find(a, "d1.test", ""));
    assert_null(admission_find(a, "d1.test", "vmta-a"));
    assert_string_equal(admission_find(a, "d3.test", "vmta-a")->name, "d3.test/vmta-a");
    assert_int_equal(admission_count(a), 5000);
    admission_free(a);
}

static void
test_prune(void **state)
{
    (void)state;
    struct admission *a = admission_new();
    struct admission_queue *busy = admission_queue(a, "busy.test", "");
    struct admission_queue *held = admission_queue(a, "held.test", "");
    struct admission_queue *idle = admission_queue(a, "idle.test", "");
    struct admission_queue *recent = admission_queue(a, "recent.test", "");
    long long t = 1000000;
    busy->last_active = held->last_active = idle->last_active = t;
    recent->last_active = t + ADMISSION_IDLE_MS;
    busy->active = 1;
    admission_hold(held, t, 10 * ADMISSION_IDLE_MS);
    long long now = t + ADMISSION_IDLE_MS + 1;
    assert_int_equal(admission_prune(a, now), 1);
    assert_null(admission_find(a, "idle.test", ""));
    assert_non_null(admission_find(a, "busy.test", ""));
    assert_non_null(admission_find(a, "held.test", ""));
    assert_non_null(admission_find(a, "recent.test", ""));
    busy->active = 0;
    assert_int_equal(admission_prune(a, now), 1);
    assert_int_equal(admission_count(a), 2);
    admission_free(a);
}

static void
test_reasons(void **state)
{
    (void)state;
    struct admission *a = admission_new();
    struct admission_queue *q = admission_queue(a, "x.test", "");
    struct conf_domain d = domain();
    struct admission_process p = process();
    long long now = 5000;
    assert_int_equal(admission_check(q, &d, &p, now), 0);
    q->active = 2;
    assert_int_equal(admission_check(q, &d, &p, now), ADMISSION_LIMIT_CONNS);
    d.max_smtp_out = CONF_UNLIMITED;
    assert_int_equal(admission_check(q, &d, &p, now), 0);
    p.slots_db_ready = false; /* unlimited queues need no slot connection */
    assert_int_equal(admission_check(q, &d, &p, now), 0);
    d.max_smtp_out = 5;
    assert_int_equal(admission_check(q, &d, &p, now), ADMISSION_LIMIT_NO_SLOTS_DB);
    p = process();
    p.sessions = 10;
    p.content_bytes = 1000;
    p.stopping = true;
    assert_int_equal(admission_check(q, &d, &p, now),
                     ADMISSION_LIMIT_PROCESS | ADMISSION_LIMIT_BUDGET | ADMISSION_LIMIT_STOPPING);
    char text[128];
    admission_reasons(ADMISSION_LIMIT_PROCESS | ADMISSION_LIMIT_HOLD, text, sizeof text);
    assert_string_equal(text, "process,hold");
    admission_reasons(0, text, sizeof text);
    assert_string_equal(text, "");
    /* a hold ends by itself; a shorter hold never shortens a longer one */
    p = process();
    admission_hold(q, now, 200);
    admission_hold(q, now, 50);
    assert_int_equal(admission_check(q, &d, &p, now + 199), ADMISSION_LIMIT_HOLD);
    assert_int_equal(admission_check(q, &d, &p, now + 200), 0);
    admission_free(a);
}

static void
test_dead_destination(void **state)
{
    (void)state;
    struct admission *a = admission_new();
    struct admission_queue *q = admission_queue(a, "dead.test", "");
    struct conf_domain d = domain();
    struct admission_process p = process();
    long long t = 100000;
    /* failures below the threshold, or interrupted by a success, do nothing */
    for (int i = 0; i < ADMISSION_DEAD_AFTER - 1; i++)
        assert_false(admission_connected(q, &d, false, t));
    assert_false(admission_connected(q, &d, true, t));
    for (int i = 0; i < ADMISSION_DEAD_AFTER - 1; i++)
        assert_false(admission_connected(q, &d, false, t));
    assert_int_equal(admission_check(q, &d, &p, t), 0);
    /* the run reaches the threshold: throttled for retry-after */
    assert_true(admission_connected(q, &d, false, t));
    assert_int_equal(admission_check(q, &d, &p, t), ADMISSION_LIMIT_THROTTLED);
    assert_int_equal(admission_check(q, &d, &p, t + 9999), ADMISSION_LIMIT_THROTTLED);
    /* sessions started before the throttle fail too: no longer wait */
    assert_false(admission_connected(q, &d, false, t + 10));
    assert_int_equal(q->throttle_until, t + 10000);
    /* then one probe at a time */
    t += 10000;
    assert_int_equal(admission_check(q, &d, &p, t), 0);
    q->active = 1;
    assert_int_equal(admission_check(q, &d, &p, t), ADMISSION_LIMIT_PROBING);
    /* failed probes: 20 s, then 35 s (max-retry-after), and it stays there */
    assert_true(admission_connected(q, &d, false, t));
    q->active = 0;
    assert_int_equal(q->throttle_until, t + 20000);
    t += 20000;
    assert_true(admission_connected(q, &d, false, t));
    assert_int_equal(q->throttle_until, t + 35000);
    t += 35000;
    assert_true(admission_connected(q, &d, false, t));
    assert_int_equal(q->throttle_until, t + 35000);
    /* a probe that reaches the MX opens the queue fully */
    t += 35000;
    q->active = 1;
    assert_false(admission_connected(q, &d, true, t));
    assert_int_equal(admission_check(q, &d, &p, t), 0);
    assert_int_equal(q->throttle_level, 0);
    assert_int_equal(q->fail_run, 0);
    /* a throttled queue is kept until its throttle has long been over */
    q->active = 0;
    for (int i = 0; i < ADMISSION_DEAD_AFTER; i++)
        admission_connected(q, &d, false, t);
    assert_int_equal(admission_prune(a, q->throttle_until + ADMISSION_IDLE_MS - 1), 0);
    assert_int_equal(admission_prune(a, q->throttle_until + ADMISSION_IDLE_MS), 1);
    admission_free(a);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_prune),
        cmocka_unit_test(test_reasons),
        cmocka_unit_test(test_dead_destination),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
