/* Unit tests of the node's shared metrics segment (node/metrics.c): the
 * counters per queue label set and bounce category, the cap on label sets
 * with everything beyond it under "other", the histograms' buckets
 * (upper bounds inclusive, cumulative in the snapshot), counts made by a
 * forked process, and the process slots (attach, detach when reaped). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "metrics.h"

static struct metrics_snap *
snap(void)
{
    struct metrics_snap *s = calloc(1, sizeof *s);
    assert_non_null(s);
    metrics_snapshot(s);
    return s;
}

static const struct metrics_queue_counts *
find(const struct metrics_snap *s, const char *domain, const char *vmta, const char *pipe)
{
    for (size_t i = 0; i < s->nqueues; i++)
        if (!strcmp(s->queues[i].domain, domain) && !strcmp(s->queues[i].vmta, vmta) &&
            !strcmp(s->queues[i].pipe, pipe))
            return &s->queues[i];
    return NULL;
}

static void
test_disabled_before_init(void **state)
{
    (void)state;
    /* runs first: nothing mapped, every call is a no-op */
    metrics_count_outcome("a.test", "", "bulk", 'd', NULL);
    metrics_observe(METRICS_H_CLAIM, 3);
    struct metrics_snap *s = snap();
    assert_false(s->enabled);
    assert_int_equal(s->nqueues, 0);
    assert_int_equal(s->claim.count, 0);
    free(s);
}

static void
test_outcomes_per_queue_and_category(void **state)
{
    (void)state;
    assert_int_equal(metrics_init(), 0);
    for (int i = 0; i < 3; i++)
        metrics_count_outcome("a.test", "", "bulk", 'd', NULL);
    metrics_count_outcome("a.test", "", "bulk", 'b', "bad-mailbox");
    metrics_count_outcome("a.test", "", "bulk", 'b', "no-such-category");
    metrics_count_outcome("a.test", "", "bulk", 't', "quota-issues");
    metrics_count_outcome("a.test", "v1", "bulk", 'd', NULL);
    metrics_count_outcome("a.test", "", "transactional", 'd', NULL);
    metrics_count_injected(METRICS_DOOR_SMTP, 4, 1);
    metrics_count_injected(METRICS_DOOR_HTTP, 2, 0);
    struct metrics_snap *s = snap();
    assert_true(s->enabled);
    assert_int_equal(s->nqueues, 3);
    assert_false(s->other);
    const struct metrics_queue_counts *q = find(s, "a.test", "", "bulk");
    assert_non_null(q);
    assert_int_equal(q->delivered, 3);
    assert_int_equal(q->deferred, 1);
    assert_int_equal(q->bounced[metrics_category_index("bad-mailbox")], 1);
    assert_int_equal(q->bounced[METRICS_NCATS - 1], 1); /* unknown: "other" */
    assert_string_equal(metrics_categories[METRICS_NCATS - 1], "other");
    assert_int_equal(find(s, "a.test", "v1", "bulk")->delivered, 1);
    assert_int_equal(find(s, "a.test", "", "transactional")->delivered, 1);
    assert_int_equal(s->injected[METRICS_DOOR_SMTP], 4);
    assert_int_equal(s->suppressed[METRICS_DOOR_SMTP], 1);
    assert_int_equal(s->injected[METRICS_DOOR_HTTP], 2);
    free(s);
}

static void
test_cap_puts_the_rest_under_other(void **state)
{
    (void)state;
    assert_int_equal(metrics_init(), 0);
    char d[32];
    for (int i = 0; i < METRICS_QUEUES + 5; i++) {
        snprintf(d, sizeof d, "q%03d.test", i);
        metrics_count_outcome(d, "", "bulk", 'd', NULL);
    }
    /* a label set named before the cap stays named */
    metrics_count_outcome("q000.test", "", "bulk", 'd', NULL);
    /* a key too long for a slot is counted, under "other" */
    char longvmta[METRICS_NAME_MAX + 8];
    memset(longvmta, 'v', sizeof longvmta - 1);
    longvmta[sizeof longvmta - 1] = '\0';
    metrics_count_outcome("q000.test", longvmta, "bulk", 'd', NULL);
    struct metrics_snap *s = snap();
    assert_int_equal(s->nqueues, METRICS_QUEUES + 1);
    assert_true(s->other);
    const struct metrics_queue_counts *o = &s->queues[s->nqueues - 1];
    assert_string_equal(o->domain, "other");
    assert_string_equal(o->pipe, "");
    assert_int_equal(o->delivered, 6);
    assert_int_equal(find(s, "q000.test", "", "bulk")->delivered, 2);
    uint64_t total = 0;
    for (size_t i = 0; i < s->nqueues; i++)
        total += s->queues[i].delivered;
    assert_int_equal(total, METRICS_QUEUES + 5 + 2);
    free(s);
}

static void
test_histogram_buckets(void **state)
{
    (void)state;
    assert_int_equal(metrics_init(), 0);
    metrics_observe(METRICS_H_CLAIM, 0);
    metrics_observe(METRICS_H_CLAIM, 1); /* le="1" holds 1 */
    metrics_observe(METRICS_H_CLAIM, 2);
    metrics_observe(METRICS_H_CLAIM, 7);
    metrics_observe(METRICS_H_CLAIM, 1000000); /* +Inf only */
    struct metrics_snap *s = snap();
    const struct metrics_hist_snap *h = &s->claim;
    assert_int_equal(h->count, 5);
    assert_int_equal(h->sum, 1000010);
    assert_int_equal(h->bounds[0], 1);
    assert_int_equal(h->buckets[0], 2);
    assert_int_equal(h->buckets[1], 3); /* le="2" */
    for (size_t i = 1; i < h->nbounds; i++)
        assert_true(h->buckets[i] >= h->buckets[i - 1]);
    assert_int_equal(h->buckets[h->nbounds - 1], 4);
    assert_int_equal(s->delivery.count, 0);
    free(s);
}

/* A forked process counts into the same segment; its process slot is
 * there while it lives and gone once the root detaches it. */
static void
test_counts_across_fork_and_process_slots(void **state)
{
    (void)state;
    assert_int_equal(metrics_init(), 0);
    metrics_proc_attach(METRICS_PROC_ROOT, "", 0);
    int ready[2], go[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(go), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        metrics_proc_attach(METRICS_PROC_PIPE, "bulk", 3);
        metrics_smtp_connections(2);
        metrics_count_outcome("f.test", "", "bulk", 'd', NULL);
        metrics_observe(METRICS_H_DB, 1500); /* labelled with this process's kind */
        char c = 'x';
        if (write(ready[1], &c, 1) != 1 || read(go[0], &c, 1) != 1)
            _exit(2);
        _exit(0);
    }
    char c;
    assert_int_equal(read(ready[0], &c, 1), 1);
    struct metrics_snap *s = snap();
    assert_int_equal(find(s, "f.test", "", "bulk")->delivered, 1);
    assert_int_equal(s->db[METRICS_PROC_PIPE].count, 1);
    assert_int_equal(s->db[METRICS_PROC_ROOT].count, 0);
    assert_int_equal(s->nprocs, 2);
    const struct metrics_proc_snap *child = NULL;
    for (size_t i = 0; i < s->nprocs; i++)
        if (s->procs[i].pid == pid)
            child = &s->procs[i];
    assert_non_null(child);
    assert_int_equal(child->kind, METRICS_PROC_PIPE);
    assert_string_equal(child->name, "bulk");
    assert_int_equal(child->index, 3);
    assert_int_equal(child->smtp_connections, 2);
    assert_true(child->usage);
    assert_true(child->rss_bytes > 0);
    free(s);
    assert_int_equal(write(go[1], "x", 1), 1);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    metrics_proc_detach(pid);
    s = snap();
    assert_int_equal(s->nprocs, 1);
    assert_int_equal(s->procs[0].kind, METRICS_PROC_ROOT);
    /* what the dead process counted stays */
    assert_int_equal(find(s, "f.test", "", "bulk")->delivered, 1);
    free(s);
    close(ready[0]);
    close(ready[1]);
    close(go[0]);
    close(go[1]);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_disabled_before_init),
        cmocka_unit_test(test_outcomes_per_queue_and_category),
        cmocka_unit_test(test_cap_puts_the_rest_under_other),
        cmocka_unit_test(test_histogram_buckets),
        cmocka_unit_test(test_counts_across_fork_and_process_slots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
