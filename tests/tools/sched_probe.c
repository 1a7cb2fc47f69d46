/* sched_probe: drives the sched module against a PostgreSQL database, for the
 * integration tests and for watching slots and rates by hand.
 *
 *   sched_probe --db URL --domain D [--vmta V] [--node NAME]
 *               [--for-domain QD [--for-vmta QV]]
 *               --max N --slots K --hold-ms T [--linger-ms L] [--retake]
 *   sched_probe --db URL --domain D [--vmta V] --tokens W --rate RATE
 *               --for-ms T [--kind msg|connect]
 *
 * --node NAME registers the process in mta.node (mta.node_register, pipe
 * "bulk") and hands the id to sched, so mta.connections names it.
 *
 * Slot mode asks for K slots of the queue with max-smtp-out N (N may be
 * "unlimited"), all at once, and prints one line per answer. With
 * --for-domain, (D, V) is the key the slots are held under (an mx-rollup's
 * "rollup:NAME", a pool member) and (QD, QV) the queue they serve
 * (sched_take_slot_for); without it, sched_take_slot:
 *   slot=S            (S = -1: no slot free)
 * then "held=H" once all are answered, holds them T ms, releases them,
 * prints "released", stays connected L ms more (default 0) and exits.
 *
 * Token mode asks for W tokens at RATE ("600/m", "unlimited") again and
 * again for T ms, honouring the wait it is told, and prints one line per
 * grant and a total:
 *   tokens=N t_ms=MS unix_ms=U  (MS since the start, U wall clock)
 *   total=N
 * A lost slot session prints "lost"; with --retake the probe then waits for
 * the session to come back and asks for the K slots again (same output,
 * "held=" again), holding them T ms from then on. Exit status 0, 2 on bad usage, 1 when
 * the database could not be reached within 10 s. */
#include "conf.h"
#include "log.h"
#include "sched.h"
#include "util.h"

#include <event2/event.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

static struct event_base *base;
static struct sched *sched;
static const char *domain, *vmta = "";
static const char *for_domain, *for_vmta = "";
static uint32_t max_slots;
static unsigned nslots, answered;
static int *slots;
static long hold_ms, linger_ms, for_ms = 1000;
static unsigned want;
static struct conf_rate rate;
static enum sched_kind kind = SCHED_MSG;
static uint64_t started;
static unsigned long total;
static bool token_mode, retake;
static struct event *hold_timer;

static void
usage(void)
{
    fprintf(stderr, "usage: sched_probe --db URL --domain D [--vmta V] [--node NAME]\n"
                    "         (--max N --slots K --hold-ms T [--linger-ms L] [--retake]\n"
                    "          [--for-domain QD [--for-vmta QV]]\n"
                    "         | --tokens W --rate RATE --for-ms T [--kind msg|connect])\n");
    exit(2);
}

static void
after(long ms, event_callback_fn fn)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    event_base_once(base, -1, EV_TIMEOUT, fn, NULL, &tv);
}

static void take_slots(void);

static void
on_retake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (!sched_ready(sched)) {
        after(50, on_retake);
        return;
    }
    take_slots();
}

static void
on_lost(void *arg)
{
    (void)arg;
    printf("lost\n");
    fflush(stdout);
    if (retake && !token_mode && answered == nslots) {
        evtimer_del(hold_timer);
        after(50, on_retake);
    }
}

/* ---- slots ---- */

static void
on_linger_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    event_base_loopexit(base, NULL);
}

static void
on_hold_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    for (unsigned i = 0; i < nslots; i++)
        sched_release_slot(sched, domain, vmta, slots[i]);
    printf("released\n");
    fflush(stdout);
    after(linger_ms, on_linger_done);
}

static void
on_slot(int slot, void *arg)
{
    unsigned i = (unsigned)(uintptr_t)arg;
    slots[i] = slot;
    printf("slot=%d\n", slot);
    if (++answered == nslots) {
        printf("held=%u\n", sched_slots_held(sched, domain, vmta));
        fflush(stdout);
        struct timeval tv = {hold_ms / 1000, (hold_ms % 1000) * 1000};
        evtimer_add(hold_timer, &tv);
    }
    fflush(stdout);
}

/* ---- tokens ---- */

static void take_more(evutil_socket_t fd, short what, void *arg);

static void
on_tokens(unsigned granted, unsigned wait_ms, void *arg)
{
    (void)arg;
    uint64_t t = util_now_ms() - started;
    if (granted) {
        total += granted;
        struct timeval now;
        gettimeofday(&now, NULL);
        printf("tokens=%u t_ms=%llu unix_ms=%lld\n", granted, (unsigned long long)t,
               (long long)now.tv_sec * 1000 + now.tv_usec / 1000);
    }
    if ((long)t >= for_ms) {
        printf("total=%lu\n", total);
        fflush(stdout);
        event_base_loopexit(base, NULL);
        return;
    }
    /* Never ask again from inside the callback: the answer may come at once. */
    after(granted ? 0 : (long)wait_ms, take_more);
}

static void
take_more(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    sched_take_tokens(sched, domain, vmta, kind, &rate, want, on_tokens, NULL);
}

/* ---- start ---- */

static long long
register_node(const char *url, const char *name)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "sched_probe: %s", PQerrorMessage(c));
        exit(1);
    }
    char pid[16];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    const char *values[] = {name, pid};
    PGresult *r = PQexecParams(c, "SELECT mta.node_register($1, 'bulk', 0, $2::int, 'probe')", 2,
                               NULL, values, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "sched_probe: node_register: %s", PQresultErrorMessage(r));
        exit(1);
    }
    long long id = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    PQfinish(c);
    return id;
}

static void
on_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    if (!sched_ready(sched)) {
        if (util_now_ms() - started > 10000) {
            fprintf(stderr, "sched_probe: database not ready\n");
            exit(1);
        }
        after(10, on_start);
        return;
    }
    started = util_now_ms();
    if (token_mode) {
        take_more(-1, 0, NULL);
        return;
    }
    take_slots();
}

static void
take_slots(void)
{
    answered = 0;
    for (unsigned i = 0; i < nslots; i++)
        if (for_domain)
            sched_take_slot_for(sched, domain, vmta, for_domain, for_vmta, max_slots, on_slot,
                                (void *)(uintptr_t)i);
        else
            sched_take_slot(sched, domain, vmta, max_slots, on_slot, (void *)(uintptr_t)i);
    if (!nslots)
        on_hold_done(-1, 0, NULL);
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"db", required_argument, NULL, 'd'},       {"domain", required_argument, NULL, 'D'},
        {"vmta", required_argument, NULL, 'v'},     {"node", required_argument, NULL, 'n'},
        {"max", required_argument, NULL, 'm'},      {"slots", required_argument, NULL, 'k'},
        {"hold-ms", required_argument, NULL, 'h'},  {"linger-ms", required_argument, NULL, 'l'},
        {"tokens", required_argument, NULL, 't'},   {"rate", required_argument, NULL, 'r'},
        {"for-ms", required_argument, NULL, 'f'},   {"kind", required_argument, NULL, 'K'},
        {"retake", no_argument, NULL, 'R'},         {"for-domain", required_argument, NULL, 'Q'},
        {"for-vmta", required_argument, NULL, 'V'}, {NULL, 0, NULL, 0}};
    const char *url = NULL, *node = NULL, *rate_s = NULL;
    int c;
    log_set_ident("sched_probe");
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            url = optarg;
            break;
        case 'D':
            domain = optarg;
            break;
        case 'v':
            vmta = optarg;
            break;
        case 'n':
            node = optarg;
            break;
        case 'm':
            max_slots =
                strcmp(optarg, "unlimited") ? (uint32_t)strtoul(optarg, NULL, 10) : CONF_UNLIMITED;
            break;
        case 'k':
            nslots = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'h':
            hold_ms = strtol(optarg, NULL, 10);
            break;
        case 'l':
            linger_ms = strtol(optarg, NULL, 10);
            break;
        case 't':
            want = (unsigned)strtoul(optarg, NULL, 10);
            token_mode = true;
            break;
        case 'r':
            rate_s = optarg;
            break;
        case 'f':
            for_ms = strtol(optarg, NULL, 10);
            break;
        case 'R':
            retake = true;
            break;
        case 'Q':
            for_domain = optarg;
            break;
        case 'V':
            for_vmta = optarg;
            break;
        case 'K':
            if (!strcmp(optarg, "msg"))
                kind = SCHED_MSG;
            else if (!strcmp(optarg, "connect"))
                kind = SCHED_CONNECT;
            else
                usage();
            break;
        default:
            usage();
        }
    }
    if (!url || !domain || optind != argc)
        usage();
    if (token_mode && (!rate_s || conf_parse_rate(rate_s, &rate) != 0))
        usage();
    base = event_base_new();
    slots = xcalloc(nslots ? nslots : 1, sizeof *slots);
    hold_timer = evtimer_new(base, on_hold_done, NULL);
    sched = sched_new(base, url, node ? node : "sched_probe");
    sched_set_lost_cb(sched, on_lost, NULL);
    if (node)
        sched_set_node_id(sched, register_node(url, node));
    started = util_now_ms();
    after(0, on_start);
    event_base_dispatch(base);
    sched_free(sched);
    event_free(hold_timer);
    util_defer_base_free(base);
    event_base_free(base);
    free(slots);
    return 0;
}
