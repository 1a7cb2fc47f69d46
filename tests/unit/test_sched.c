/* Unit tests of sched without a database: unlimited limits answer from the
 * next loop turn (never inside the call), and with the database unreachable (a loopback port nobody
 * listens on) every request is answered exactly once with a failure and no slot is ever believed
 * held. The database paths are tested in tests/integration/test_sched.py against a real PostgreSQL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conf.h"
#include "sched.h"
#include "util.h"

struct answers {
    int calls;
    int slot;
    unsigned granted, wait_ms;
};

static void
on_slot(int slot, void *arg)
{
    struct answers *a = arg;
    a->calls++;
    a->slot = slot;
}

static void
on_tokens(unsigned granted, unsigned wait_ms, void *arg)
{
    struct answers *a = arg;
    a->calls++;
    a->granted = granted;
    a->wait_ms = wait_ms;
}

static int lost_calls;

static void
on_lost(void *arg)
{
    (void)arg;
    lost_calls++;
}

/* A loopback port with nobody listening: bound once, then closed. */
static char *
dead_url(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    socklen_t len = sizeof sin;
    getsockname(fd, (struct sockaddr *)&sin, &len);
    close(fd);
    return xasprintf("postgresql://nobody@127.0.0.1:%u/pgmta", ntohs(sin.sin_port));
}

static void
run_ms(struct event_base *base, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

/* One loop turn without waiting. */
static void
turn(struct event_base *base)
{
    event_base_loop(base, EVLOOP_NONBLOCK);
}

static void
test_unlimited_answers_from_the_loop(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    char *url = dead_url();
    struct sched *s = sched_new(base, url, "unit");
    struct answers a = {0};
    sched_take_slot(s, "example.test", NULL, CONF_UNLIMITED, on_slot, &a);
    assert_int_equal(a.calls, 0); /* the callback rule */
    turn(base);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.slot, 0);
    assert_int_equal(sched_slots_held(s, "example.test", NULL), 0);
    sched_release_slot(s, "example.test", NULL, 0); /* ignored */

    struct conf_rate unlimited = {CONF_UNLIMITED, 0};
    struct answers t = {0};
    sched_take_tokens(s, "example.test", "", SCHED_MSG, &unlimited, 7, on_tokens, &t);
    assert_int_equal(t.calls, 0);
    turn(base);
    assert_int_equal(t.calls, 1);
    assert_int_equal(t.granted, 7);
    assert_int_equal(t.wait_ms, 0);

    struct answers z = {0};
    sched_take_slot(s, "example.test", NULL, 0, on_slot, &z);
    assert_int_equal(z.calls, 0);
    turn(base);
    assert_int_equal(z.calls, 1);
    assert_int_equal(z.slot, -1);
    sched_free(s);
    event_base_free(base);
    free(url);
}

static void
test_unreachable_database_fails_once(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    char *url = dead_url();
    struct sched *s = sched_new(base, url, "unit");
    lost_calls = 0;
    sched_set_lost_cb(s, on_lost, NULL);
    sched_set_node_id(s, 42);
    run_ms(base, 300);
    assert_false(sched_ready(s));

    struct answers a = {0};
    sched_take_slot(s, "example.test", "vmta-a", 3, on_slot, &a);
    assert_int_equal(a.calls, 0);
    run_ms(base, 50);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.slot, -1);
    assert_int_equal(sched_slots_held(s, "example.test", "vmta-a"), 0);

    struct conf_rate rate = {600, 60000};
    struct answers t = {0};
    sched_take_tokens(s, "example.test", "vmta-a", SCHED_CONNECT, &rate, 2, on_tokens, &t);
    assert_int_equal(t.calls, 0);
    run_ms(base, 50);
    assert_int_equal(t.calls, 1);
    assert_int_equal(t.granted, 0);
    assert_int_equal(t.wait_ms, 1000);
    /* Asked again at once: told to wait the rest, without another try. */
    struct answers t2 = {0};
    sched_take_tokens(s, "example.test", "vmta-a", SCHED_CONNECT, &rate, 2, on_tokens, &t2);
    assert_int_equal(t2.calls, 0);
    turn(base);
    assert_int_equal(t2.calls, 1);
    assert_int_equal(t2.granted, 0);
    assert_true(t2.wait_ms > 0 && t2.wait_ms <= 1000);

    sched_release_slot(s, "example.test", "vmta-a", 1); /* never held: ignored */
    assert_int_equal(lost_calls, 0);                    /* never had a session */
    sched_free(s);
    event_base_free(base);
    free(url);
}

/* A slot of a key for another queue (an mx-rollup, a pool member): the same
 * callback rule, the slot counted under the key, and a request still queued
 * when sched_free runs is failed and freed with its queue names (the
 * sanitizer build checks the leak). */
static void
test_slot_for_queue_under_key(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    char *url = dead_url();
    struct sched *s = sched_new(base, url, "unit");
    run_ms(base, 300);
    assert_false(sched_ready(s));

    struct answers a = {0};
    sched_take_slot_for(s, "rollup:big", "ip2", "r1.test", "pool-a", 2, on_slot, &a);
    assert_int_equal(a.calls, 0);
    run_ms(base, 50);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.slot, -1);
    assert_int_equal(sched_slots_held(s, "rollup:big", "ip2"), 0);
    assert_int_equal(sched_slots_held(s, "r1.test", "pool-a"), 0);

    struct answers u = {0};
    sched_take_slot_for(s, "rollup:big", NULL, "r2.test", NULL, CONF_UNLIMITED, on_slot, &u);
    assert_int_equal(u.calls, 0);
    turn(base);
    assert_int_equal(u.calls, 1);
    assert_int_equal(u.slot, 0);

    struct answers f = {0};
    sched_take_slot_for(s, "rollup:big", "", "r1.test", "", 3, on_slot, &f);
    assert_int_equal(f.calls, 0);
    sched_free(s);
    assert_int_equal(f.calls, 1);
    assert_int_equal(f.slot, -1);
    event_base_free(base);
    free(url);
}

/* Many answers known at once: one loop turn delivers all of them, in order. */
static int order_next, order_bad;

static void
on_ordered(int slot, void *arg)
{
    (void)slot;
    if ((int)(intptr_t)arg != order_next++)
        order_bad++;
}

static void
test_many_answers_one_turn(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    char *url = dead_url();
    struct sched *s = sched_new(base, url, "unit");
    order_next = order_bad = 0;
    for (int i = 0; i < 5000; i++)
        sched_take_slot(s, "example.test", NULL, CONF_UNLIMITED, on_ordered, (void *)(intptr_t)i);
    assert_int_equal(order_next, 0);
    turn(base);
    assert_int_equal(order_next, 5000);
    assert_int_equal(order_bad, 0);
    sched_free(s);
    event_base_free(base);
    free(url);
}

/* sched_free from inside an answer: the answers still queued are failed,
 * each exactly once, and nothing touches the freed sched (ASan). */
static struct sched *free_me;
static int freed_calls, failed_calls;

static void
on_slot_free(int slot, void *arg)
{
    (void)arg;
    freed_calls++;
    if (slot < 0)
        failed_calls++;
    if (free_me) {
        struct sched *s = free_me;
        free_me = NULL;
        sched_free(s);
    }
}

static void
test_free_inside_answer(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    char *url = dead_url();
    free_me = sched_new(base, url, "unit");
    freed_calls = failed_calls = 0;
    for (int i = 0; i < 3; i++)
        sched_take_slot(free_me, "example.test", NULL, CONF_UNLIMITED, on_slot_free, NULL);
    turn(base);
    assert_null(free_me);
    assert_int_equal(freed_calls, 3);
    assert_int_equal(failed_calls, 2); /* the first got its slot 0 */
    event_base_free(base);
    free(url);
}

/* sched_free with answers not yet delivered: failures, once each. */
static void
test_free_with_queued_answers(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    char *url = dead_url();
    struct sched *s = sched_new(base, url, "unit");
    struct answers a = {0}, t = {0};
    struct conf_rate unlimited = {CONF_UNLIMITED, 0};
    sched_take_slot(s, "example.test", NULL, CONF_UNLIMITED, on_slot, &a);
    sched_take_tokens(s, "example.test", NULL, SCHED_MSG, &unlimited, 3, on_tokens, &t);
    sched_free(s);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.slot, -1);
    assert_int_equal(t.calls, 1);
    assert_int_equal(t.granted, 0);
    turn(base);
    assert_int_equal(a.calls, 1);
    assert_int_equal(t.calls, 1);
    event_base_free(base);
    free(url);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unlimited_answers_from_the_loop),
        cmocka_unit_test(test_many_answers_one_turn),
        cmocka_unit_test(test_free_inside_answer),
        cmocka_unit_test(test_free_with_queued_answers),
        cmocka_unit_test(test_unreachable_database_fails_once),
        cmocka_unit_test(test_slot_for_queue_under_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
