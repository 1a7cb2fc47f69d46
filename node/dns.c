/* dns: MX and address resolution with c-ares on the caller's libevent loop,
 * with a TTL cache.
 *
 * Three layers, each owning its own memory:
 *  - struct dns owns the c-ares channel, one libevent event per c-ares socket
 *    (struct watcher) and one timer for c-ares timeouts.
 *  - struct record is one (query type, lower-cased name): the cached answer
 *    (struct rrset, with its expiry) and, while a query is in flight, the list
 *    of waiters. Waiters name their request by id, never by pointer, so a
 *    cancelled request simply is not found when the answer arrives. Records
 *    live in a hash table and on an age list (oldest first) that bounds the
 *    cache; a record is never freed while its query is in flight or while an
 *    answer is being handed out (pinned).
 *  - struct dns_request is one caller's dns_resolve_mx/dns_resolve_host: it
 *    asks for the MX record, then for A and AAAA of each MX host (all in
 *    parallel), builds the struct dns_result, calls back once and is freed.
 *    Requests are found by id in their own hash table.
 *
 * Answers are parsed here (not with ares_parse_*_reply) because the cache
 * needs the TTL of MX records and the SOA minimum of negative answers.
 * Temporary failures (SERVFAIL, REFUSED, timeouts) are not cached; concurrent
 * requests for a name share one query in flight.
 *
 * MX hosts that are IP literals (RFC 5321 §5.1 wants names) are skipped
 * without a query. Domain literals "[1.2.3.4]" given to dns_resolve_mx, and
 * IP literals given to dns_resolve_host, resolve to themselves at once.
 *
 * The callback rule: dns_resolve_* never call back before they return. A
 * request that completes inside the call (cache hits, literals, invalid
 * names, c-ares answering at once) is put on the ready list by id and
 * answered by one event (ev_ready) from the next loop turn; a request
 * cancelled meanwhile is simply not found. The deadline timer of a ready
 * request is stopped, so it cannot answer twice.
 *
 * dns_free from inside a callback is deferred until the callback returns. */
#include "dns.h"

#include "hostport.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <ares.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define DNS_T_A 1
#define DNS_T_SOA 6
#define DNS_T_MX 15
#define DNS_T_TXT 16
#define DNS_T_TLSA 52
#define DNS_T_AAAA 28
#define DNS_C_IN 1

#define CACHE_MAX_RECORDS 10000
#define RECORD_BUCKETS 16384
#define REQUEST_BUCKETS 4096
#define TTL_MIN_S 1
#define TTL_MAX_S 86400
#define NEG_TTL_DEFAULT_S 300
/* MX records kept per cached answer (best preferences); each lookup resolves
 * at most DNS_MAX_HOSTS of them. */
#define MX_KEEP 64

enum rr_status { RR_OK = 0, RR_NXDOMAIN, RR_NODATA, RR_TEMPFAIL };
static const char *const rr_status_names[] = {"OK", "NXDOMAIN", "NODATA", "TEMPFAIL"};
static const char *const dns_status_names[] = {"OK", "NXDOMAIN", "NULL_MX", "NO_HOSTS", "TEMPFAIL"};

struct mx_rr {
    uint16_t pref;
    char *name; /* lower case, no trailing dot; "" for the root (null MX) */
};

/* One parsed answer. */
struct rrset {
    enum rr_status status;
    char *error; /* TEMPFAIL reason */
    uint32_t ttl;
    size_t n;
    struct mx_rr *mx;      /* DNS_T_MX */
    struct in_addr *a;     /* DNS_T_A */
    struct in6_addr *aaaa; /* DNS_T_AAAA */
    char **txt;            /* DNS_T_TXT: each record's strings joined */
    struct dns_tlsa *tlsa; /* DNS_T_TLSA */
    bool ad;               /* the validating resolver's AD bit (RFC 4035 3.2.3) */
};

struct waiter {
    uint64_t req_id;
    int slot;
};

struct record {
    struct dns *d;
    int qtype;
    char *name;
    uint32_t hash;
    struct record *hnext;
    struct record *older, *newer; /* age list */
    struct rrset *rr;             /* last answer, NULL before the first */
    uint64_t expires_ms;
    bool inflight;
    int pinned;
    struct waiter *waiters;
    size_t nwaiters, capwaiters;
};

struct watcher {
    struct dns *d;
    ares_socket_t fd;
    struct event *ev;
    int flags;
    struct watcher *next;
};

/* What a request collects for one MX host. */
struct req_host {
    char *name;
    uint16_t pref;
    bool done[2]; /* A, AAAA answered */
    bool ad[2];   /* ... with the AD bit */
    enum rr_status st[2];
    char *error;
    struct in_addr a[DNS_MAX_ADDRS];
    size_t na;
    struct in6_addr aaaa[DNS_MAX_ADDRS];
    size_t naaaa;
};

enum req_kind { REQ_MX, REQ_HOST };
enum req_stage { STAGE_MX, STAGE_ADDR };

struct dns_request {
    uint64_t id;
    struct dns *d;
    struct dns_request *hnext;
    enum req_kind kind;
    enum req_stage stage;
    char *name;
    uint16_t port;
    dns_cb cb;
    void *arg;
    int pending;  /* lookups outstanding (+1 while lookups are being issued) */
    uint32_t ttl; /* smallest TTL of the answers used */
    struct event *deadline;
    /* MX stage outcome */
    enum rr_status mx_status;
    char *mx_error;
    bool null_mx;
    bool implicit_mx;
    bool mx_ad;
    struct req_host *hosts;
    size_t nhosts;
    uint64_t started_ms;
    /* Answer known when the request was made (invalid name) */
    bool fixed;
    enum dns_status fixed_status;
    char *fixed_error;
    bool ready; /* on the ready list */
};

struct dns {
    struct event_base *base;
    ares_channel channel;
    bool channel_ok;
    struct event *timer;
    struct watcher *watchers;
    uint64_t timeout_ms;
    struct record *buckets[RECORD_BUCKETS];
    struct record *oldest, *newest;
    size_t nrecords;
    struct dns_request *requests[REQUEST_BUCKETS];
    size_t nrequests;
    uint64_t next_id;
    uint64_t rng;
    int busy;      /* depth of calls into this module that may run callbacks */
    int resolving; /* depth of dns_resolve_* calls: answers wait for ev_ready */
    struct event *ev_ready;
    uint64_t *ready; /* ids of requests answered at once, in order */
    size_t nready, capready;
    bool freeing; /* dns_free called while busy */
    bool destroying;
    bool dnssec;                   /* queries ask for the AD bit */
    struct tlsa_entry *tlsa_cache; /* newest first, at most TLSA_CACHE_MAX */
    size_t ntlsa_cache;
    struct dns_txt_request *txts; /* TXT lookups in flight or answered */
};

static void lookup(struct dns *d, int qtype, const char *name, uint64_t req_id, int slot);
static void request_release(struct dns_request *r);
static void tlsa_cache_clear(struct dns *d);

/* ---- small helpers ------------------------------------------------------ */

static uint64_t
rng_next(struct dns *d)
{
    /* xorshift64*: only for shuffling equal MX preferences */
    uint64_t x = d->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    d->rng = x;
    return x * 2685821657736338717ULL;
}

static uint32_t
hash_str(int qtype, const char *s)
{
    uint32_t h = 2166136261u ^ (uint32_t)qtype;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

/* Lower-cased copy without the trailing dot; NULL if not a plausible name. */
static char *
normalize_name(const char *in)
{
    size_t len = strlen(in);
    if (len > 0 && in[len - 1] == '.')
        len--;
    if (len == 0 || len > 253)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c <= 0x20 || c >= 0x7f || c == '\\' || c == '"' || c == '(' || c == ')' || c == ';' ||
            c == '@' || c == '$')
            return NULL;
        if (c == '.' && (i == 0 || in[i - 1] == '.'))
            return NULL;
    }
    char *out = xstrndup(in, len);
    return util_strlower(out);
}

/* Parses "1.2.3.4", "::1", "[1.2.3.4]", "[::1]", "[IPv6:::1]" into sa
 * (node/hostport.c, the one parser of addresses). */
static bool
parse_ip_literal(const char *s, uint16_t port, struct dns_addr *out)
{
    struct hostport hp;
    memset(out, 0, sizeof *out);
    return hostport_parse_str(s, HOSTPORT_IP_ONLY | HOSTPORT_NO_PORT | HOSTPORT_BARE_IPV6, &hp,
                              NULL) &&
           hostport_sockaddr(&hp, port, &out->sa, &out->salen);
}

static bool
is_ip_literal(const char *s)
{
    struct dns_addr a;
    return parse_ip_literal(s, 0, &a);
}

static void
rrset_free(struct rrset *rr)
{
    if (!rr)
        return;
    for (size_t i = 0; rr->mx && i < rr->n; i++)
        free(rr->mx[i].name);
    free(rr->mx);
    free(rr->a);
    free(rr->aaaa);
    for (size_t i = 0; rr->txt && i < rr->n; i++)
        free(rr->txt[i]);
    free(rr->txt);
    for (size_t i = 0; rr->tlsa && i < rr->n; i++)
        free(rr->tlsa[i].data);
    free(rr->tlsa);
    free(rr->error);
    free(rr);
}

/* ---- answer parsing ----------------------------------------------------- */

static bool
rd16(const unsigned char *buf, int len, int off, uint16_t *v)
{
    if (off < 0 || off + 2 > len)
        return false;
    *v = (uint16_t)((buf[off] << 8) | buf[off + 1]);
    return true;
}

static bool
rd32(const unsigned char *buf, int len, int off, uint32_t *v)
{
    if (off < 0 || off + 4 > len)
        return false;
    *v = ((uint32_t)buf[off] << 24) | ((uint32_t)buf[off + 1] << 16) |
         ((uint32_t)buf[off + 2] << 8) | buf[off + 3];
    return true;
}

/* Skips (or, with out, expands) the name at off; returns its encoded length. */
static bool
read_name(const unsigned char *buf, int len, int off, char **out, long *enclen)
{
    char *name = NULL;
    if (off < 0 || off >= len)
        return false;
    if (ares_expand_name(buf + off, buf, len, &name, enclen) != ARES_SUCCESS)
        return false;
    if (out) {
        size_t n = strlen(name);
        if (n > 0 && name[n - 1] == '.')
            name[--n] = '\0';
        *out = util_strlower(xstrdup(name));
    }
    ares_free_string(name);
    return true;
}

static int
mx_cmp(const void *a, const void *b)
{
    const struct mx_rr *x = a, *y = b;
    return (int)x->pref - (int)y->pref;
}

static void
shuffle_equal_prefs(struct dns *d, struct mx_rr *mx, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i + 1;
        while (j < n && mx[j].pref == mx[i].pref)
            j++;
        for (size_t k = j - 1; k > i; k--) {
            size_t m = i + (size_t)(rng_next(d) % (k - i + 1));
            struct mx_rr t = mx[k];
            mx[k] = mx[m];
            mx[m] = t;
        }
        i = j;
    }
}

/* Builds an rrset from a reply of qtype (abuf may be NULL on transport errors). */
static struct rrset *
parse_reply(struct dns *d, int qtype, int ares_status, const unsigned char *buf, int len)
{
    struct rrset *rr = xcalloc(1, sizeof *rr);
    if (!buf || len < 12) {
        rr->status = RR_TEMPFAIL;
        rr->error = xasprintf("%s", ares_strerror(ares_status));
        return rr;
    }
    int rcode = buf[3] & 0x0f;
    rr->ad = (buf[3] & 0x20) != 0;
    uint16_t qd = 0, an = 0, ns = 0;
    rd16(buf, len, 4, &qd);
    rd16(buf, len, 6, &an);
    rd16(buf, len, 8, &ns);
    if (rcode != 0 && rcode != 3) {
        rr->status = RR_TEMPFAIL;
        rr->error = rcode == 2   ? xstrdup("SERVFAIL")
                    : rcode == 5 ? xstrdup("REFUSED")
                                 : xasprintf("DNS error rcode=%d", rcode);
        return rr;
    }
    if (buf[2] & 0x02) {
        rr->status = RR_TEMPFAIL;
        rr->error = xstrdup("truncated answer");
        return rr;
    }
    int off = 12;
    for (unsigned i = 0; i < qd; i++) {
        long el;
        if (!read_name(buf, len, off, NULL, &el))
            goto bad;
        off += (int)el + 4;
    }
    uint32_t min_ttl = UINT32_MAX;
    size_t cap = 0;
    for (unsigned i = 0; i < an; i++) {
        long el;
        uint16_t type, class, rdlen;
        uint32_t ttl;
        if (!read_name(buf, len, off, NULL, &el))
            goto bad;
        off += (int)el;
        if (!rd16(buf, len, off, &type) || !rd16(buf, len, off + 2, &class) ||
            !rd32(buf, len, off + 4, &ttl) || !rd16(buf, len, off + 8, &rdlen))
            goto bad;
        off += 10;
        if (off + rdlen > len)
            goto bad;
        if (ttl > 0x7fffffff)
            ttl = 0;
        if (class == DNS_C_IN && ttl < min_ttl)
            min_ttl = ttl;
        if (class == DNS_C_IN && type == qtype) {
            if (rr->n == cap) {
                cap = cap ? cap * 2 : 8;
                if (qtype == DNS_T_MX)
                    rr->mx = xrealloc(rr->mx, cap * sizeof *rr->mx);
                else if (qtype == DNS_T_TXT)
                    rr->txt = xrealloc(rr->txt, cap * sizeof *rr->txt);
                else if (qtype == DNS_T_TLSA)
                    rr->tlsa = xrealloc(rr->tlsa, cap * sizeof *rr->tlsa);
                else if (qtype == DNS_T_A)
                    rr->a = xrealloc(rr->a, cap * sizeof *rr->a);
                else
                    rr->aaaa = xrealloc(rr->aaaa, cap * sizeof *rr->aaaa);
            }
            if (qtype == DNS_T_MX) {
                uint16_t pref;
                char *name;
                if (rdlen < 3 || !rd16(buf, len, off, &pref) ||
                    !read_name(buf, len, off + 2, &name, &el))
                    goto bad;
                rr->mx[rr->n].pref = pref;
                rr->mx[rr->n].name = name;
                rr->n++;
            } else if (qtype == DNS_T_TXT) {
                /* character-strings, joined (RFC 8461 3.1, as RFC 7208 3.3) */
                if (rr->n >= DNS_MAX_TXT)
                    goto next;
                struct buf t;
                buf_init(&t);
                for (int p = off; p < off + rdlen;) {
                    int sl = buf[p];
                    if (p + 1 + sl > off + rdlen) {
                        buf_free(&t);
                        goto bad;
                    }
                    if (t.len + (size_t)sl <= DNS_MAX_TXT_LEN)
                        buf_append(&t, buf + p + 1, (size_t)sl);
                    p += 1 + sl;
                }
                rr->txt[rr->n++] = t.data ? t.data : xstrdup("");
            } else if (qtype == DNS_T_TLSA) {
                if (rr->n >= DNS_MAX_TLSA || rdlen < 3)
                    goto next;
                struct dns_tlsa *t = &rr->tlsa[rr->n++];
                t->usage = buf[off];
                t->selector = buf[off + 1];
                t->mtype = buf[off + 2];
                t->len = (size_t)rdlen - 3;
                t->data = xmalloc(t->len ? t->len : 1);
                memcpy(t->data, buf + off + 3, t->len);
            } else if (qtype == DNS_T_A && rdlen == 4) {
                memcpy(&rr->a[rr->n++], buf + off, 4);
            } else if (qtype == DNS_T_AAAA && rdlen == 16) {
                memcpy(&rr->aaaa[rr->n++], buf + off, 16);
            }
        }
    next:
        off += rdlen;
    }
    if (rcode == 0 && rr->n > 0) {
        rr->status = RR_OK;
        rr->ttl = min_ttl == UINT32_MAX ? NEG_TTL_DEFAULT_S : min_ttl;
        if (qtype == DNS_T_MX) {
            /* random order before sorting by preference and keeping the
             * best MX_KEEP, so ties at the cut are broken at random */
            for (size_t i = rr->n; i > 1; i--) {
                size_t j = (size_t)(rng_next(d) % i);
                struct mx_rr t = rr->mx[i - 1];
                rr->mx[i - 1] = rr->mx[j];
                rr->mx[j] = t;
            }
            qsort(rr->mx, rr->n, sizeof *rr->mx, mx_cmp);
            while (rr->n > MX_KEEP)
                free(rr->mx[--rr->n].name);
        }
        return rr;
    }
    /* negative answer: TTL from the SOA in the authority section (RFC 2308) */
    rr->status = rcode == 3 ? RR_NXDOMAIN : RR_NODATA;
    rr->ttl = NEG_TTL_DEFAULT_S;
    for (unsigned i = 0; i < ns; i++) {
        long el;
        uint16_t type, class, rdlen;
        uint32_t ttl;
        if (!read_name(buf, len, off, NULL, &el))
            break;
        off += (int)el;
        if (!rd16(buf, len, off, &type) || !rd16(buf, len, off + 2, &class) ||
            !rd32(buf, len, off + 4, &ttl) || !rd16(buf, len, off + 8, &rdlen))
            break;
        off += 10;
        if (off + rdlen > len)
            break;
        if (type == DNS_T_SOA) {
            int p = off;
            uint32_t minimum;
            if (read_name(buf, len, p, NULL, &el)) {
                p += (int)el;
                if (read_name(buf, len, p, NULL, &el)) {
                    p += (int)el;
                    if (rd32(buf, len, p + 16, &minimum)) {
                        if (ttl > 0x7fffffff)
                            ttl = 0;
                        rr->ttl = minimum < ttl ? minimum : ttl;
                    }
                }
            }
            break;
        }
        off += rdlen;
    }
    return rr;
bad:
    for (size_t i = 0; rr->mx && i < rr->n; i++)
        free(rr->mx[i].name);
    for (size_t i = 0; rr->txt && i < rr->n; i++)
        free(rr->txt[i]);
    free(rr->txt);
    free(rr->mx);
    free(rr->a);
    free(rr->aaaa);
    memset(rr, 0, sizeof *rr);
    rr->status = RR_TEMPFAIL;
    rr->error = xstrdup("malformed DNS answer");
    return rr;
}

int
dns_parse_reply(int qtype, const unsigned char *buf, int len, uint64_t seed,
                void (*each)(uint16_t pref, const char *name, const void *addr, void *arg),
                void *arg, size_t *n, uint32_t *ttl, char **error)
{
    struct dns *d = xcalloc(1, sizeof *d);
    d->rng = seed | 1;
    struct rrset *rr = parse_reply(d, qtype, 0, buf, len);
    free(d);
    for (size_t i = 0; each && rr->status == RR_OK && i < rr->n; i++) {
        if (qtype == DNS_T_MX)
            each(rr->mx[i].pref, rr->mx[i].name, NULL, arg);
        else if (qtype == DNS_T_A)
            each(0, NULL, &rr->a[i], arg);
        else if (qtype == DNS_T_TXT)
            each(0, rr->txt[i], NULL, arg);
        else if (qtype == DNS_T_TLSA)
            each(0, NULL, &rr->tlsa[i], arg);
        else
            each(0, NULL, &rr->aaaa[i], arg);
    }
    int st = (int)rr->status;
    *n = rr->n;
    *ttl = rr->ttl;
    *error = rr->error ? xstrdup(rr->error) : NULL;
    rrset_free(rr);
    return st;
}

/* ---- c-ares on libevent --------------------------------------------------- */

static void
reschedule_timer(struct dns *d)
{
    if (d->destroying)
        return;
    struct timeval tvbuf, *tv = ares_timeout(d->channel, NULL, &tvbuf);
    if (tv)
        evtimer_add(d->timer, tv);
    else
        evtimer_del(d->timer);
}

static void dns_destroy(struct dns *d);

static void
enter(struct dns *d)
{
    d->busy++;
}

/* Leaves a module entry point; returns false if d was destroyed. */
static bool
leave(struct dns *d)
{
    PGMTA_ASSERT(d->busy > 0);
    if (--d->busy == 0 && d->freeing) {
        dns_destroy(d);
        return false;
    }
    if (d->busy == 0)
        reschedule_timer(d);
    return true;
}

static void
event_free_cb(void *ev)
{
    event_free(ev);
}

/* The event of a closed c-ares socket: the socket may close inside its own
 * event's callback, so the event is freed at the end of the loop turn
 * (util_defer_free). */
static void
retire_event(struct dns *d, struct event *ev)
{
    event_del(ev);
    util_defer_free(d->base, event_free_cb, ev);
}

static void
on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    struct watcher *w = arg;
    struct dns *d = w->d;
    enter(d);
    ares_process_fd(d->channel, (what & EV_READ) ? (ares_socket_t)fd : ARES_SOCKET_BAD,
                    (what & EV_WRITE) ? (ares_socket_t)fd : ARES_SOCKET_BAD);
    leave(d);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dns *d = arg;
    enter(d);
    ares_process_fd(d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    leave(d);
}

static void
on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns *d = data;
    struct watcher **pw = &d->watchers, *w;
    while ((w = *pw) && w->fd != fd)
        pw = &w->next;
    int flags = (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0);
    if (!flags) {
        if (w) {
            retire_event(d, w->ev);
            *pw = w->next;
            free(w);
        }
        return;
    }
    if (w && w->flags == flags)
        return;
    if (!w) {
        w = xcalloc(1, sizeof *w);
        w->d = d;
        w->fd = fd;
        w->next = d->watchers;
        d->watchers = w;
    } else {
        retire_event(d, w->ev);
    }
    w->flags = flags;
    w->ev = event_new(d->base, fd, (short)(flags | EV_PERSIST), on_socket_event, w);
    PGMTA_ASSERT(w->ev != NULL);
    event_add(w->ev, NULL);
}

/* ---- records (cache entries and queries in flight) ------------------------ */

static void
age_unlink(struct dns *d, struct record *rec)
{
    if (rec->older)
        rec->older->newer = rec->newer;
    else
        d->oldest = rec->newer;
    if (rec->newer)
        rec->newer->older = rec->older;
    else
        d->newest = rec->older;
    rec->older = rec->newer = NULL;
}

static void
age_append(struct dns *d, struct record *rec)
{
    rec->older = d->newest;
    rec->newer = NULL;
    if (d->newest)
        d->newest->newer = rec;
    else
        d->oldest = rec;
    d->newest = rec;
}

static void
record_free(struct dns *d, struct record *rec)
{
    struct record **p = &d->buckets[rec->hash % RECORD_BUCKETS];
    while (*p != rec)
        p = &(*p)->hnext;
    *p = rec->hnext;
    age_unlink(d, rec);
    d->nrecords--;
    rrset_free(rec->rr);
    free(rec->waiters);
    free(rec->name);
    free(rec);
}

static bool
record_busy(const struct record *rec)
{
    return rec->inflight || rec->pinned > 0;
}

static void
cache_evict(struct dns *d)
{
    struct record *rec = d->oldest;
    while (d->nrecords > CACHE_MAX_RECORDS && rec) {
        struct record *next = rec->newer;
        if (!record_busy(rec))
            record_free(d, rec);
        rec = next;
    }
}

static struct record *
record_get(struct dns *d, int qtype, const char *name)
{
    uint32_t h = hash_str(qtype, name);
    for (struct record *rec = d->buckets[h % RECORD_BUCKETS]; rec; rec = rec->hnext)
        if (rec->hash == h && rec->qtype == qtype && strcmp(rec->name, name) == 0)
            return rec;
    cache_evict(d);
    struct record *rec = xcalloc(1, sizeof *rec);
    rec->d = d;
    rec->qtype = qtype;
    rec->name = xstrdup(name);
    rec->hash = h;
    rec->hnext = d->buckets[h % RECORD_BUCKETS];
    d->buckets[h % RECORD_BUCKETS] = rec;
    age_append(d, rec);
    d->nrecords++;
    return rec;
}

/* ---- requests ----------------------------------------------------------- */

static struct dns_request *
request_find(struct dns *d, uint64_t id)
{
    for (struct dns_request *r = d->requests[id % REQUEST_BUCKETS]; r; r = r->hnext)
        if (r->id == id)
            return r;
    return NULL;
}

static void
request_unlink(struct dns_request *r)
{
    struct dns *d = r->d;
    struct dns_request **p = &d->requests[r->id % REQUEST_BUCKETS];
    while (*p && *p != r)
        p = &(*p)->hnext;
    if (*p) {
        *p = r->hnext;
        d->nrequests--;
    }
}

static void
request_free(struct dns_request *r)
{
    request_unlink(r);
    if (r->deadline)
        event_free(r->deadline);
    for (size_t i = 0; i < r->nhosts; i++) {
        free(r->hosts[i].name);
        free(r->hosts[i].error);
    }
    free(r->hosts);
    free(r->mx_error);
    free(r->fixed_error);
    free(r->name);
    free(r);
}

static void
request_note_ttl(struct dns_request *r, const struct record *rec)
{
    uint64_t now = util_now_ms();
    uint32_t left = rec->expires_ms > now ? (uint32_t)((rec->expires_ms - now + 999) / 1000) : 0;
    if (left < r->ttl)
        r->ttl = left;
}

static void
result_free(struct dns_result *res)
{
    for (size_t i = 0; i < res->nhosts; i++) {
        free(res->hosts[i].name);
        free(res->hosts[i].addrs);
    }
    free(res->hosts);
    free(res->error);
}

static void
set_addr4(struct dns_addr *out, const struct in_addr *a, uint16_t port)
{
    memset(out, 0, sizeof *out);
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->sa;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr = *a;
    out->salen = sizeof *sin;
}

static void
set_addr6(struct dns_addr *out, const struct in6_addr *a, uint16_t port)
{
    memset(out, 0, sizeof *out);
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->sa;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    sin6->sin6_addr = *a;
    out->salen = sizeof *sin6;
}

/* Builds the result from what the request collected. */
static void
request_build_result(struct dns_request *r, struct dns_result *res)
{
    memset(res, 0, sizeof *res);
    if (r->fixed) {
        res->status = r->fixed_status;
        res->error = r->fixed_error ? xstrdup(r->fixed_error) : NULL;
        return;
    }
    if (r->kind == REQ_MX && r->mx_status == RR_TEMPFAIL) {
        res->status = DNS_TEMPFAIL;
        res->error = xasprintf("MX lookup for %s failed: %s", r->name,
                               r->mx_error ? r->mx_error : "temporary failure");
        return;
    }
    if (r->kind == REQ_MX && r->mx_status == RR_NXDOMAIN) {
        res->status = DNS_NXDOMAIN;
        res->error = xasprintf("domain %s does not exist (NXDOMAIN)", r->name);
        return;
    }
    if (r->null_mx) {
        res->status = DNS_NULL_MX;
        res->error = xasprintf("domain %s does not accept mail (null MX)", r->name);
        return;
    }
    res->hosts = xcalloc(r->nhosts ? r->nhosts : 1, sizeof *res->hosts);
    bool tempfail = false, all_nx = r->nhosts > 0;
    const char *reason = NULL;
    for (size_t i = 0; i < r->nhosts; i++) {
        struct req_host *h = &r->hosts[i];
        size_t n = h->na + h->naaaa;
        if (n == 0) {
            for (int f = 0; f < 2; f++) {
                if (h->st[f] == RR_TEMPFAIL) {
                    tempfail = true;
                    if (!reason)
                        reason = h->error;
                }
                if (h->st[f] != RR_NXDOMAIN)
                    all_nx = false;
            }
            continue;
        }
        all_nx = false;
        if (n > DNS_MAX_ADDRS)
            n = DNS_MAX_ADDRS;
        struct dns_host *out = &res->hosts[res->nhosts++];
        out->dnssec = r->d->dnssec && r->kind == REQ_MX && r->mx_ad;
        for (int f = 0; f < 2; f++)
            if (!h->ad[f] || (h->st[f] != RR_OK && h->st[f] != RR_NODATA))
                out->dnssec = false;
        out->name = xstrdup(h->name);
        out->preference = h->pref;
        out->addrs = xcalloc(n, sizeof *out->addrs);
        for (size_t k = 0; k < h->na && out->naddrs < n; k++)
            set_addr4(&out->addrs[out->naddrs++], &h->a[k], r->port);
        for (size_t k = 0; k < h->naaaa && out->naddrs < n; k++)
            set_addr6(&out->addrs[out->naddrs++], &h->aaaa[k], r->port);
    }
    if (res->nhosts > 0) {
        res->status = DNS_OK;
        return;
    }
    if (tempfail) {
        res->status = DNS_TEMPFAIL;
        res->error = xasprintf("address lookup for %s failed: %s",
                               r->kind == REQ_MX && !r->implicit_mx ? "the MX hosts" : r->name,
                               reason ? reason : "temporary failure");
    } else if (r->kind == REQ_HOST && all_nx) {
        res->status = DNS_NXDOMAIN;
        res->error = xasprintf("host %s does not exist (NXDOMAIN)", r->name);
    } else if (r->kind == REQ_HOST) {
        res->status = DNS_NO_HOSTS;
        res->error = xasprintf("host %s has no A/AAAA records", r->name);
    } else if (r->implicit_mx) {
        res->status = DNS_NO_HOSTS;
        res->error = xasprintf("domain %s has no MX and no A/AAAA records", r->name);
    } else {
        res->status = DNS_NO_HOSTS;
        res->error = xasprintf("no MX host of %s has an address", r->name);
    }
}

/* Answers the request now, or from ev_ready when a dns_resolve_* call is on
 * the stack (the callback rule). */
static void
request_finish(struct dns_request *r)
{
    struct dns *d = r->d;
    if (d->resolving > 0) {
        if (r->ready)
            return;
        r->ready = true;
        evtimer_del(r->deadline);
        if (d->nready == d->capready) {
            d->capready = d->capready ? d->capready * 2 : 16;
            d->ready = xrealloc(d->ready, d->capready * sizeof *d->ready);
        }
        d->ready[d->nready++] = r->id;
        /* a zero timer: the next loop turn, after I/O */
        static const struct timeval zero = {0, 0};
        if (!event_pending(d->ev_ready, EV_TIMEOUT, NULL))
            evtimer_add(d->ev_ready, &zero);
        return;
    }
    struct dns_result res;
    request_build_result(r, &res);
    request_unlink(r);
    log_debug("dns domain=%s status=%s hosts=%zu dnssec=%d ttl=%u ms=%llu%s%s", r->name,
              dns_status_names[res.status], res.nhosts, res.nhosts && res.hosts[0].dnssec,
              r->ttl == UINT32_MAX ? 0 : r->ttl,
              (unsigned long long)(util_now_ms() - r->started_ms), res.error ? " error=" : "",
              res.error ? res.error : "");
    r->cb(&res, r->arg);
    result_free(&res);
    request_free(r);
}

static void
request_add_host(struct dns_request *r, const char *name, uint16_t pref)
{
    struct req_host *h = &r->hosts[r->nhosts++];
    memset(h, 0, sizeof *h);
    h->name = xstrdup(name);
    h->pref = pref;
}

/* Starts the A and AAAA lookups of every host. */
static void
request_start_addrs(struct dns_request *r)
{
    r->stage = STAGE_ADDR;
    r->pending++;
    uint64_t id = r->id;
    for (size_t i = 0; i < r->nhosts; i++) {
        r->pending += 2;
        lookup(r->d, DNS_T_A, r->hosts[i].name, id, (int)(i * 2));
        lookup(r->d, DNS_T_AAAA, r->hosts[i].name, id, (int)(i * 2 + 1));
    }
    request_release(r);
}

static void
request_on_mx(struct dns_request *r, const struct rrset *rr)
{
    r->mx_status = rr->status;
    r->mx_ad = rr->ad;
    if (rr->status == RR_TEMPFAIL) {
        r->mx_error = xstrdup(rr->error ? rr->error : "temporary failure");
        return;
    }
    if (rr->status == RR_NXDOMAIN)
        return;
    if (rr->status == RR_NODATA) {
        /* RFC 5321 §5.1: no MX, the domain itself is the implicit MX */
        r->implicit_mx = true;
        r->hosts = xcalloc(1, sizeof *r->hosts);
        request_add_host(r, r->name, 0);
        request_start_addrs(r);
        return;
    }
    size_t real = 0;
    for (size_t i = 0; i < rr->n; i++)
        if (rr->mx[i].name[0] != '\0')
            real++;
    if (real == 0) {
        /* RFC 7505: "MX 0 ." (a root exchange) means no mail service */
        r->null_mx = true;
        return;
    }
    struct mx_rr *list = xcalloc(real, sizeof *list);
    size_t n = 0;
    for (size_t i = 0; i < rr->n; i++)
        if (rr->mx[i].name[0] != '\0')
            list[n++] = rr->mx[i];
    shuffle_equal_prefs(r->d, list, n);
    r->hosts = xcalloc(n < DNS_MAX_HOSTS ? n : DNS_MAX_HOSTS, sizeof *r->hosts);
    for (size_t i = 0; i < n && r->nhosts < DNS_MAX_HOSTS; i++) {
        bool dup = false;
        for (size_t k = 0; k < r->nhosts; k++)
            if (strcmp(r->hosts[k].name, list[i].name) == 0)
                dup = true;
        if (dup)
            continue;
        if (is_ip_literal(list[i].name)) {
            log_debug("dns domain=%s skip_mx=%s reason=ip_literal", r->name, list[i].name);
            continue;
        }
        char *norm = normalize_name(list[i].name);
        bool valid = norm != NULL;
        free(norm);
        if (!valid) {
            log_debug("dns domain=%s skip_mx=%s reason=bad_name", r->name, list[i].name);
            continue;
        }
        request_add_host(r, list[i].name, list[i].pref);
    }
    free(list);
    if (r->nhosts > 0)
        request_start_addrs(r);
}

static void
request_on_addr(struct dns_request *r, int slot, int qtype, const struct rrset *rr)
{
    size_t i = (size_t)slot / 2;
    int f = slot % 2;
    PGMTA_ASSERT(i < r->nhosts);
    struct req_host *h = &r->hosts[i];
    PGMTA_ASSERT(!h->done[f]);
    h->done[f] = true;
    h->st[f] = rr->status;
    h->ad[f] = rr->ad;
    if (rr->status == RR_TEMPFAIL && !h->error)
        h->error = xstrdup(rr->error ? rr->error : "temporary failure");
    if (rr->status != RR_OK)
        return;
    if (qtype == DNS_T_A)
        for (size_t k = 0; k < rr->n && h->na < DNS_MAX_ADDRS; k++)
            h->a[h->na++] = rr->a[k];
    else
        for (size_t k = 0; k < rr->n && h->naaaa < DNS_MAX_ADDRS; k++)
            h->aaaa[h->naaaa++] = rr->aaaa[k];
}

static void
request_release(struct dns_request *r)
{
    PGMTA_ASSERT(r->pending > 0);
    if (--r->pending > 0)
        return;
    request_finish(r);
}

/* Hands the answer of rec to the waiting request (if it still exists). */
static void
deliver(struct dns *d, struct record *rec, uint64_t req_id, int slot)
{
    struct dns_request *r = request_find(d, req_id);
    if (!r)
        return;
    request_note_ttl(r, rec);
    if (slot < 0) {
        PGMTA_ASSERT(r->stage == STAGE_MX);
        request_on_mx(r, rec->rr);
    } else {
        request_on_addr(r, slot, rec->qtype, rec->rr);
    }
    request_release(r);
}

static void
on_ares_reply(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    struct record *rec = arg;
    struct dns *d = rec->d;
    rec->inflight = false;
    if (d->destroying || status == ARES_EDESTRUCTION || status == ARES_ECANCELLED)
        return;
    struct rrset *rr = parse_reply(d, rec->qtype, status, abuf, alen);
    uint64_t now = util_now_ms();
    uint32_t ttl = rr->ttl < TTL_MIN_S ? TTL_MIN_S : rr->ttl > TTL_MAX_S ? TTL_MAX_S : rr->ttl;
    rrset_free(rec->rr);
    rec->rr = rr;
    /* temporary failures reach only the requests already waiting */
    rec->expires_ms = rr->status == RR_TEMPFAIL ? now : now + (uint64_t)ttl * 1000;
    if (rr->status == RR_TEMPFAIL)
        rr->ttl = 0;
    else
        rr->ttl = ttl;
    age_unlink(d, rec);
    age_append(d, rec);
    log_trace("dns query=%s type=%s status=%s n=%zu ttl=%u%s%s", rec->name,
              rec->qtype == DNS_T_MX  ? "MX"
              : rec->qtype == DNS_T_A ? "A"
                                      : "AAAA",
              rr_status_names[rr->status], rr->n, rr->ttl, rr->error ? " error=" : "",
              rr->error ? rr->error : "");

    struct waiter *w = rec->waiters;
    size_t nw = rec->nwaiters;
    rec->waiters = NULL;
    rec->nwaiters = rec->capwaiters = 0;
    rec->pinned++;
    for (size_t i = 0; i < nw; i++)
        deliver(d, rec, w[i].req_id, w[i].slot);
    rec->pinned--;
    free(w);
    if (rec->rr->status == RR_TEMPFAIL && !record_busy(rec))
        record_free(d, rec);
    else
        cache_evict(d);
}

/* Sends the query; with dns.dnssec it carries the AD bit, which asks a
 * validating resolver to report what it validated (RFC 6840 5.7). */
static void
send_query(struct dns *d, const char *name, int qtype, ares_callback cb, void *arg)
{
    unsigned char *q;
    int qlen;
    if (!d->dnssec ||
        ares_create_query(name, DNS_C_IN, qtype, 0, 1, &q, &qlen, 0) != ARES_SUCCESS) {
        ares_query(d->channel, name, DNS_C_IN, qtype, cb, arg);
        return;
    }
    q[3] |= 0x20;
    ares_send(d->channel, q, qlen, cb, arg); /* copies the query, sets its id */
    ares_free_string(q);
}

void
dns_set_dnssec(struct dns *d, bool on)
{
    d->dnssec = on;
}

/* Asks for (qtype, name) on behalf of request req_id; the answer comes to
 * deliver(), at once on a cache hit. The request's pending count was already
 * raised by the caller. */
static void
lookup(struct dns *d, int qtype, const char *name, uint64_t req_id, int slot)
{
    struct record *rec = record_get(d, qtype, name);
    if (rec->rr && rec->expires_ms > util_now_ms()) {
        rec->pinned++;
        deliver(d, rec, req_id, slot);
        rec->pinned--;
        return;
    }
    if (rec->nwaiters == rec->capwaiters) {
        rec->capwaiters = rec->capwaiters ? rec->capwaiters * 2 : 4;
        rec->waiters = xrealloc(rec->waiters, rec->capwaiters * sizeof *rec->waiters);
    }
    rec->waiters[rec->nwaiters++] = (struct waiter){req_id, slot};
    if (!rec->inflight) {
        rec->inflight = true;
        /* may call on_ares_reply before returning (e.g. no servers) */
        send_query(d, name, qtype, on_ares_reply, rec);
    }
}

/* ---- public API ----------------------------------------------------------- */

static void
on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dns_request *r = arg;
    struct dns *d = r->d;
    enter(d);
    /* give up: the result says TEMPFAIL whatever is still outstanding */
    if (r->kind == REQ_MX && r->stage == STAGE_MX) {
        r->mx_status = RR_TEMPFAIL;
        r->mx_error = xasprintf("timed out after %llu ms", (unsigned long long)d->timeout_ms);
    } else {
        for (size_t i = 0; i < r->nhosts; i++)
            for (int f = 0; f < 2; f++)
                if (!r->hosts[i].done[f]) {
                    r->hosts[i].st[f] = RR_TEMPFAIL;
                    if (!r->hosts[i].error)
                        r->hosts[i].error =
                            xasprintf("timed out after %llu ms", (unsigned long long)d->timeout_ms);
                }
    }
    request_finish(r);
    leave(d);
}

static struct dns_request *
request_new(struct dns *d, enum req_kind kind, char *name, uint16_t port, dns_cb cb, void *arg)
{
    struct dns_request *r = xcalloc(1, sizeof *r);
    r->id = ++d->next_id;
    r->d = d;
    r->kind = kind;
    r->name = name;
    r->port = port;
    r->cb = cb;
    r->arg = arg;
    r->ttl = UINT32_MAX;
    r->started_ms = util_now_ms();
    r->hnext = d->requests[r->id % REQUEST_BUCKETS];
    d->requests[r->id % REQUEST_BUCKETS] = r;
    d->nrequests++;
    r->deadline = evtimer_new(d->base, on_deadline, r);
    PGMTA_ASSERT(r->deadline != NULL);
    struct timeval tv = {(time_t)(d->timeout_ms / 1000),
                         (suseconds_t)(d->timeout_ms % 1000) * 1000};
    evtimer_add(r->deadline, &tv);
    return r;
}

/* Answers the requests that completed inside a dns_resolve_* call. */
static void
on_ready(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dns *d = arg;
    uint64_t *ids = d->ready;
    size_t n = d->nready;
    d->ready = NULL;
    d->nready = d->capready = 0;
    enter(d);
    for (size_t i = 0; i < n && !d->freeing; i++) {
        struct dns_request *r = request_find(d, ids[i]);
        if (r && r->ready)
            request_finish(r);
    }
    free(ids);
    leave(d);
}

/* A request whose answer is known now: an IP literal (one host, one
 * address) or an invalid name. Answered from ev_ready. */
static void
resolve_known(struct dns *d, struct dns_request *r, const struct dns_addr *lit)
{
    if (lit) {
        r->hosts = xcalloc(1, sizeof *r->hosts);
        request_add_host(r, r->name, 0);
        struct req_host *h = &r->hosts[0];
        h->done[0] = h->done[1] = true;
        if (lit->sa.ss_family == AF_INET)
            h->a[h->na++] = ((const struct sockaddr_in *)&lit->sa)->sin_addr;
        else
            h->aaaa[h->naaaa++] = ((const struct sockaddr_in6 *)&lit->sa)->sin6_addr;
        h->st[1] = h->st[0] = RR_OK;
    }
    log_debug("dns domain=%s status=%s literal=%d", r->name,
              dns_status_names[lit ? DNS_OK : r->fixed_status], lit ? 1 : 0);
    d->resolving++;
    request_finish(r);
    d->resolving--;
}

static struct dns_request *
resolve(struct dns *d, enum req_kind kind, const char *name, uint16_t port, dns_cb cb, void *arg)
{
    PGMTA_ASSERT(d && !d->freeing && name && cb);
    struct dns_addr lit;
    bool bracketed = name[0] == '[';
    if ((kind == REQ_HOST || bracketed) && parse_ip_literal(name, port, &lit)) {
        struct dns_request *r = request_new(d, kind, xstrdup(name), port, cb, arg);
        resolve_known(d, r, &lit);
        return r;
    }
    char *norm = bracketed ? NULL : normalize_name(name);
    if (!norm) {
        struct dns_request *r =
            request_new(d, kind, xstrndup(name, strnlen(name, 255)), port, cb, arg);
        r->fixed = true;
        r->fixed_status = DNS_NXDOMAIN;
        r->fixed_error = xasprintf("invalid domain name \"%.80s\"", name);
        resolve_known(d, r, NULL);
        return r;
    }
    enter(d);
    d->resolving++;
    struct dns_request *r = request_new(d, kind, norm, port, cb, arg);
    uint64_t id = r->id;
    r->pending = 1;
    if (kind == REQ_MX) {
        r->stage = STAGE_MX;
        r->pending++;
        lookup(d, DNS_T_MX, norm, id, -1);
    } else {
        r->hosts = xcalloc(1, sizeof *r->hosts);
        request_add_host(r, norm, 0);
        request_start_addrs(r);
    }
    request_release(r);
    d->resolving--;
    bool alive = leave(d);
    return alive ? request_find(d, id) : NULL;
}

struct dns_request *
dns_resolve_mx(struct dns *d, const char *domain, uint16_t port, dns_cb cb, void *arg)
{
    return resolve(d, REQ_MX, domain, port, cb, arg);
}

struct dns_request *
dns_resolve_host(struct dns *d, const char *host, uint16_t port, dns_cb cb, void *arg)
{
    return resolve(d, REQ_HOST, host, port, cb, arg);
}

void
dns_cancel(struct dns_request *r)
{
    if (!r)
        return;
    log_trace("dns domain=%s cancelled=1", r->name);
    request_free(r);
}

void
dns_cache_clear(struct dns *d)
{
    struct record *rec = d->oldest;
    while (rec) {
        struct record *next = rec->newer;
        if (record_busy(rec))
            rec->expires_ms = 0;
        else
            record_free(d, rec);
        rec = next;
    }
    tlsa_cache_clear(d);
}

/* ---- TXT lookups ---------------------------------------------------------
 *
 * Uncached and outside the record layer: one c-ares query per request. The
 * query's argument is a ticket naming the request by id (freed by the
 * reply, which always comes, also on ares_destroy); the answer reaches the
 * caller from the request's own event, never from inside c-ares. */

struct dns_txt_request {
    struct dns *d;
    uint64_t id;
    char *name;
    int qtype;
    dns_txt_cb cb;
    dns_tlsa_cb tlsa_cb;
    void *arg;
    struct event *ev;
    struct rrset *rr; /* the answer, once it came */
    struct dns_txt_request *next;
};

/* TLSA answers (not temporary failures), kept for their TTL as the record
 * layer keeps MX and address answers. */
#define TLSA_CACHE_MAX 1024
struct tlsa_entry {
    char *name;
    struct rrset *rr;
    uint64_t expires_ms;
    struct tlsa_entry *next;
};

static struct rrset *
tlsa_rrset_dup(const struct rrset *from)
{
    struct rrset *rr = xcalloc(1, sizeof *rr);
    *rr = *from;
    rr->error = from->error ? xstrdup(from->error) : NULL;
    rr->tlsa = from->n ? xcalloc(from->n, sizeof *rr->tlsa) : NULL;
    for (size_t i = 0; i < from->n; i++) {
        rr->tlsa[i] = from->tlsa[i];
        rr->tlsa[i].data = xmalloc(from->tlsa[i].len ? from->tlsa[i].len : 1);
        memcpy(rr->tlsa[i].data, from->tlsa[i].data, from->tlsa[i].len);
    }
    return rr;
}

static void
tlsa_entry_free(struct tlsa_entry *e)
{
    rrset_free(e->rr);
    free(e->name);
    free(e);
}

static void
tlsa_cache_clear(struct dns *d)
{
    while (d->tlsa_cache) {
        struct tlsa_entry *e = d->tlsa_cache;
        d->tlsa_cache = e->next;
        tlsa_entry_free(e);
    }
    d->ntlsa_cache = 0;
}

/* The fresh cached answer for NAME (a copy), or NULL; drops stale ones. */
static struct rrset *
tlsa_cache_get(struct dns *d, const char *name)
{
    uint64_t now = util_now_ms();
    for (struct tlsa_entry **p = &d->tlsa_cache; *p;) {
        struct tlsa_entry *e = *p;
        if (e->expires_ms <= now) {
            *p = e->next;
            tlsa_entry_free(e);
            d->ntlsa_cache--;
            continue;
        }
        if (!strcmp(e->name, name))
            return tlsa_rrset_dup(e->rr);
        p = &e->next;
    }
    return NULL;
}

static void
tlsa_cache_put(struct dns *d, const char *name, const struct rrset *rr)
{
    if (rr->status == RR_TEMPFAIL)
        return;
    uint32_t ttl = rr->ttl < TTL_MIN_S ? TTL_MIN_S : rr->ttl > TTL_MAX_S ? TTL_MAX_S : rr->ttl;
    struct tlsa_entry *e = xcalloc(1, sizeof *e);
    e->name = xstrdup(name);
    e->rr = tlsa_rrset_dup(rr);
    e->expires_ms = util_now_ms() + (uint64_t)ttl * 1000;
    e->next = d->tlsa_cache;
    d->tlsa_cache = e;
    if (++d->ntlsa_cache > TLSA_CACHE_MAX) {
        struct tlsa_entry **p = &d->tlsa_cache;
        while ((*p)->next)
            p = &(*p)->next;
        tlsa_entry_free(*p);
        *p = NULL;
        d->ntlsa_cache--;
    }
}

struct txt_ticket {
    struct dns *d;
    uint64_t id;
};

void
dns_txt_cancel(struct dns_txt_request *r)
{
    if (!r)
        return;
    for (struct dns_txt_request **p = &r->d->txts; *p; p = &(*p)->next) {
        if (*p == r) {
            *p = r->next;
            break;
        }
    }
    event_free(r->ev);
    rrset_free(r->rr);
    free(r->name);
    free(r);
}

static void
on_txt_event(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dns_txt_request *r = arg;
    struct rrset *rr = r->rr;
    if (r->qtype == DNS_T_TLSA) {
        struct dns_tlsa_result tr = {
            .status = rr->status == RR_OK         ? DNS_OK
                      : rr->status == RR_TEMPFAIL ? DNS_TEMPFAIL
                                                  : DNS_NXDOMAIN,
            .error = rr->error,
            .tlsa = rr->tlsa,
            .ntlsa = rr->status == RR_OK ? rr->n : 0,
            .validated = rr->ad,
            .ttl = rr->ttl,
        };
        log_trace("dns query=%s type=TLSA status=%s n=%zu ad=%d", r->name,
                  rr_status_names[rr->status], tr.ntlsa, rr->ad);
        dns_tlsa_cb cb = r->tlsa_cb;
        void *cbarg = r->arg;
        r->rr = NULL;
        dns_txt_cancel(r);
        cb(&tr, cbarg);
        rrset_free(rr);
        return;
    }
    struct dns_txt_result res = {
        .status = rr->status == RR_OK         ? DNS_OK
                  : rr->status == RR_TEMPFAIL ? DNS_TEMPFAIL
                                              : DNS_NXDOMAIN,
        .error = rr->error,
        .texts = rr->txt,
        .ntexts = rr->status == RR_OK ? rr->n : 0,
        .ttl = rr->ttl,
    };
    log_trace("dns query=%s type=TXT status=%s n=%zu ttl=%u", r->name, rr_status_names[rr->status],
              res.ntexts, rr->ttl);
    dns_txt_cb cb = r->cb;
    void *cbarg = r->arg;
    r->rr = NULL;
    dns_txt_cancel(r);
    cb(&res, cbarg);
    rrset_free(rr);
}

static void
on_txt_reply(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    struct txt_ticket t = *(struct txt_ticket *)arg;
    free(arg);
    if (t.d->destroying || status == ARES_EDESTRUCTION || status == ARES_ECANCELLED)
        return;
    struct dns_txt_request *r = t.d->txts;
    while (r && r->id != t.id)
        r = r->next;
    if (!r)
        return; /* cancelled */
    r->rr = parse_reply(t.d, r->qtype, status, abuf, alen);
    if (r->qtype == DNS_T_TLSA)
        tlsa_cache_put(t.d, r->name, r->rr);
    event_active(r->ev, 0, 0);
}

static struct dns_txt_request *
resolve_single(struct dns *d, int qtype, const char *name, dns_txt_cb cb, dns_tlsa_cb tlsa_cb,
               void *arg)
{
    PGMTA_ASSERT(d && !d->freeing && name && (cb || tlsa_cb));
    struct dns_txt_request *r = xcalloc(1, sizeof *r);
    r->d = d;
    r->id = ++d->next_id;
    r->qtype = qtype;
    r->cb = cb;
    r->tlsa_cb = tlsa_cb;
    r->arg = arg;
    r->ev = event_new(d->base, -1, 0, on_txt_event, r);
    PGMTA_ASSERT(r->ev != NULL);
    r->next = d->txts;
    d->txts = r;
    r->name = normalize_name(name);
    if (!r->name) {
        r->name = xstrndup(name, strnlen(name, 255));
        r->rr = xcalloc(1, sizeof *r->rr);
        r->rr->status = RR_NXDOMAIN;
        event_active(r->ev, 0, 0);
        return r;
    }
    if (qtype == DNS_T_TLSA && (r->rr = tlsa_cache_get(d, r->name)) != NULL) {
        log_debug("dns query=%s type=TLSA cached=1", r->name);
        event_active(r->ev, 0, 0);
        return r;
    }
    struct txt_ticket *t = xcalloc(1, sizeof *t);
    t->d = d;
    t->id = r->id;
    enter(d);
    /* may call on_txt_reply before returning (e.g. no servers) */
    send_query(d, r->name, r->qtype, on_txt_reply, t);
    bool alive = leave(d);
    PGMTA_ASSERT(alive);
    return r;
}

struct dns_txt_request *
dns_resolve_txt(struct dns *d, const char *name, dns_txt_cb cb, void *arg)
{
    return resolve_single(d, DNS_T_TXT, name, cb, NULL, arg);
}

struct dns_txt_request *
dns_resolve_tlsa(struct dns *d, const char *name, dns_tlsa_cb cb, void *arg)
{
    return resolve_single(d, DNS_T_TLSA, name, NULL, cb, arg);
}

/* Turns the server list into c-ares' "ip:port,[v6]:port" form. */
static bool
servers_csv(const char *const *servers, size_t n, struct buf *out, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        struct hostport hp;
        if (!hostport_parse_str(servers[i], HOSTPORT_IP_ONLY | HOSTPORT_BARE_IPV6, &hp, NULL)) {
            snprintf(err, errlen, "bad DNS server \"%.100s\": want ip, ip:port or [ipv6]:port",
                     servers[i]);
            return false;
        }
        char one[HOSTPORT_HOST_MAX + 16];
        buf_printf(out, "%s%s", i ? "," : "",
                   hostport_format(&hp, hp.port ? 0 : 53, one, sizeof one));
    }
    return true;
}

struct dns *
dns_new(struct event_base *base, const char *const *servers, size_t nservers, uint64_t timeout_ms,
        char *err, size_t errlen)
{
    struct buf csv;
    buf_init(&csv);
    if (!servers_csv(servers, nservers, &csv, err, errlen)) {
        buf_free(&csv);
        return NULL;
    }
    if (timeout_ms == 0)
        timeout_ms = 5000;
    int rc = ares_library_init(ARES_LIB_INIT_ALL);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
        buf_free(&csv);
        return NULL;
    }
    struct dns *d = xcalloc(1, sizeof *d);
    d->base = base;
    d->timeout_ms = timeout_ms;
    uint64_t seed = util_now_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)d;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        uint64_t r;
        if (read(fd, &r, sizeof r) == (ssize_t)sizeof r)
            seed ^= r;
        close(fd);
    }
    d->rng = seed ? seed : 0x9e3779b97f4a7c15ULL;

    struct ares_options o;
    memset(&o, 0, sizeof o);
    /* NOCHECKRESP: SERVFAIL/REFUSED come back to us as answers (TEMPFAIL)
     * instead of being retried on every server; two tries whose doubling
     * timeouts (t + 2t) stay within timeout_ms, which the request deadline
     * enforces for the whole MX + address lookup anyway. */
    o.flags = ARES_FLAG_NOCHECKRESP;
    o.timeout = (int)(timeout_ms / 4 > 50 ? timeout_ms / 4 : 50);
    o.tries = 2;
    o.sock_state_cb = on_sock_state;
    o.sock_state_cb_data = d;
    rc = ares_init_options(&d->channel, &o,
                           ARES_OPT_FLAGS | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
                               ARES_OPT_SOCK_STATE_CB);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares init: %s", ares_strerror(rc));
        free(d);
        buf_free(&csv);
        return NULL;
    }
    d->channel_ok = true;
    if (nservers > 0) {
        rc = ares_set_servers_ports_csv(d->channel, csv.data);
        if (rc != ARES_SUCCESS) {
            snprintf(err, errlen, "DNS servers \"%s\": %s", csv.data, ares_strerror(rc));
            ares_destroy(d->channel);
            free(d);
            buf_free(&csv);
            return NULL;
        }
    }
    buf_free(&csv);
    d->timer = evtimer_new(base, on_timer, d);
    d->ev_ready = event_new(base, -1, 0, on_ready, d);
    PGMTA_ASSERT(d->timer && d->ev_ready);
    return d;
}

static void
dns_destroy(struct dns *d)
{
    /* requests first: ares_destroy's callbacks then find no one to tell */
    for (size_t i = 0; i < REQUEST_BUCKETS; i++)
        while (d->requests[i])
            request_free(d->requests[i]);
    while (d->txts)
        dns_txt_cancel(d->txts);
    d->destroying = true;
    if (d->channel_ok)
        ares_destroy(d->channel);
    while (d->oldest)
        record_free(d, d->oldest);
    tlsa_cache_clear(d);
    while (d->watchers) {
        struct watcher *w = d->watchers;
        d->watchers = w->next;
        event_free(w->ev);
        free(w);
    }
    event_free(d->timer);
    event_free(d->ev_ready);
    free(d->ready);
    free(d);
}

void
dns_free(struct dns *d)
{
    if (!d)
        return;
    if (d->busy > 0) {
        /* inside one of our callbacks: no more callbacks, free on the way out */
        for (size_t i = 0; i < REQUEST_BUCKETS; i++)
            while (d->requests[i])
                request_free(d->requests[i]);
        while (d->txts)
            dns_txt_cancel(d->txts);
        d->freeing = true;
        return;
    }
    dns_destroy(d);
}
