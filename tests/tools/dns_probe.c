/* dns_probe: drives the dns module against a DNS server and prints one line
 * per result, for the integration tests and for looking at a zone by hand.
 *
 *   dns_probe --server 127.0.0.1:PORT [--timeout-ms N] [--port 25]
 *             [--repeat N] [--interval-ms N] [--parallel] [--cancel-first]
 *             [--free-after-ms N] [--free-in-callback N] [--route] NAME...
 *
 * Each NAME is resolved with dns_resolve_mx (dns_resolve_host with --route),
 * one after the other, the whole list --repeat times with one struct dns (so
 * later rounds may come from the cache), sleeping --interval-ms between
 * rounds. --parallel starts every lookup of a round at once; --cancel-first
 * then cancels the first one straight away (it must print nothing).
 * --free-after-ms N frees the resolver N ms after starting the lookups and
 * --free-in-callback N frees it inside the Nth callback; either way it
 * prints "freed outstanding=K" and no later results may appear.
 *
 * Output, one line per result, in the order results arrive:
 *   NAME status=OK ms=N hosts=HOST/PREF/ADDR:PORT,ADDR:PORT;HOST/...
 *   NAME status=NXDOMAIN ms=N error=TEXT
 * IPv6 addresses print as [ADDR]:PORT. Exit status 0, 2 on bad usage. */
#include "dns.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const status_names[] = {"OK", "NXDOMAIN", "NULL_MX", "NO_HOSTS", "TEMPFAIL"};

struct probe {
    const char *name;
    uint64_t started;
    bool done;
    int *outstanding;
};

static struct dns *resolver;
static unsigned long free_in_callback; /* free in the Nth callback */
static unsigned long callbacks;

static void
print_addr(const struct dns_addr *a)
{
    char ip[INET6_ADDRSTRLEN];
    if (a->sa.ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)&a->sa;
        inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip);
        printf("%s:%u", ip, ntohs(sin->sin_port));
    } else {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)&a->sa;
        inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip);
        printf("[%s]:%u", ip, ntohs(sin6->sin6_port));
    }
}

static void
on_result(const struct dns_result *res, void *arg)
{
    struct probe *p = arg;
    printf("%s status=%s ms=%llu", p->name, status_names[res->status],
           (unsigned long long)(util_now_ms() - p->started));
    if (res->status == DNS_OK) {
        printf(" hosts=");
        for (size_t i = 0; i < res->nhosts; i++) {
            const struct dns_host *h = &res->hosts[i];
            printf("%s%s/%u/", i ? ";" : "", h->name, h->preference);
            for (size_t k = 0; k < h->naddrs; k++) {
                if (k)
                    putchar(',');
                print_addr(&h->addrs[k]);
            }
        }
    }
    if (res->error)
        printf(" error=%s", res->error);
    putchar('\n');
    fflush(stdout);
    p->done = true;
    (*p->outstanding)--;
    if (++callbacks == free_in_callback && resolver) {
        printf("freed outstanding=%d\n", *p->outstanding);
        fflush(stdout);
        dns_free(resolver);
        resolver = NULL;
        *p->outstanding = 0;
    }
}

/* Runs the loop for ms milliseconds. */
static void
run_for(struct event_base *base, unsigned long ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
}

static void
usage(void)
{
    fprintf(stderr, "usage: dns_probe --server IP[:PORT] [--timeout-ms N] [--port N] "
                    "[--repeat N] [--interval-ms N] [--parallel] [--cancel-first] "
                    "[--free-after-ms N] [--free-in-callback N] [--route] NAME...\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    const char *servers[8];
    size_t nservers = 0;
    unsigned long timeout_ms = 5000, port = 25, repeat = 1, interval_ms = 0, free_after_ms = 0;
    bool route = false, parallel = false, cancel_first = false;
    int i;
    log_set_ident("dns_probe");
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--server") == 0 && i + 1 < argc) {
            if (nservers == sizeof servers / sizeof servers[0])
                usage();
            servers[nservers++] = argv[++i];
        } else if (strcmp(a, "--timeout-ms") == 0 && i + 1 < argc) {
            timeout_ms = strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--port") == 0 && i + 1 < argc) {
            port = strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--repeat") == 0 && i + 1 < argc) {
            repeat = strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--interval-ms") == 0 && i + 1 < argc) {
            interval_ms = strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--route") == 0) {
            route = true;
        } else if (strcmp(a, "--parallel") == 0) {
            parallel = true;
        } else if (strcmp(a, "--cancel-first") == 0) {
            cancel_first = true;
        } else if (strcmp(a, "--free-after-ms") == 0 && i + 1 < argc) {
            free_after_ms = strtoul(argv[++i], NULL, 10);
            parallel = true;
        } else if (strcmp(a, "--free-in-callback") == 0 && i + 1 < argc) {
            free_in_callback = strtoul(argv[++i], NULL, 10);
        } else if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (a[0] == '-' && a[1] == '-') {
            usage();
        } else {
            break;
        }
    }
    int nnames = argc - i;
    if (nnames <= 0 || port > 65535)
        usage();
    char **names = argv + i;

    struct event_base *base = event_base_new();
    char err[256];
    struct dns *d = dns_new(base, servers, nservers, timeout_ms, err, sizeof err);
    if (!d) {
        fprintf(stderr, "dns_probe: %s\n", err);
        event_base_free(base);
        return 2;
    }
    struct probe *probes = xcalloc((size_t)nnames, sizeof *probes);
    resolver = d;
    for (unsigned long round = 0; round < repeat && resolver; round++) {
        if (round > 0 && interval_ms > 0) {
            struct timespec ts = {(time_t)(interval_ms / 1000),
                                  (long)(interval_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        int outstanding = 0;
        for (int k = 0; k < nnames; k++) {
            struct probe *p = &probes[k];
            p->name = names[k];
            p->done = false;
            p->outstanding = &outstanding;
            p->started = util_now_ms();
            if (!resolver)
                break;
            outstanding++;
            struct dns_request *r =
                route ? dns_resolve_host(resolver, names[k], (uint16_t)port, on_result, p)
                      : dns_resolve_mx(resolver, names[k], (uint16_t)port, on_result, p);
            if (r && parallel && cancel_first && k == 0) {
                dns_cancel(r);
                outstanding--;
            }
            if (!parallel)
                while (outstanding > 0)
                    event_base_loop(base, EVLOOP_ONCE);
        }
        if (free_after_ms > 0 && resolver) {
            run_for(base, free_after_ms);
            printf("freed outstanding=%d\n", outstanding);
            fflush(stdout);
            dns_free(resolver);
            resolver = NULL;
            outstanding = 0;
        }
        while (outstanding > 0)
            event_base_loop(base, EVLOOP_ONCE);
    }
    /* give answers to cancelled or freed lookups time to arrive (and be
     * ignored) */
    if (cancel_first || !resolver)
        run_for(base, 300);
    dns_free(resolver);
    free(probes);
    util_defer_base_free(base); /* the socket events dns retired */
    event_base_free(base);
    return 0;
}
