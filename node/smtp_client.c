/* smtp_client: the outbound SMTP client. One explicit state machine per
 * connection: smtp_enter() performs the entry actions of a state (write a
 * command, arm the timer), smtp_react() handles one named event (connected,
 * reply, timeout, closed, protocol error, TLS done/failed, batch handed
 * over). libevent callbacks only translate I/O into these events.
 *
 * Ownership: the session owns its copy of the configuration strings and of
 * the host list, its bufferevent (socket, or the OpenSSL filter on top of
 * it) and its timer. Messages of a batch belong to the caller until the
 * batch callback returns. Per-recipient results are owned by the session and
 * valid only during the callback. The session is freed by a deferred event
 * at the end of the loop turn, never inside one of its own callbacks. TLS
 * contexts and the OpenSSL filter come from the tls module. */
#include "smtp_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/util.h>

#include "addr.h"
#include "log.h"
#include "dane.h"
#include "tls.h"
#include "util.h"

/* Reads stop when this much is buffered and unprocessed; a reply is never
 * longer than SMTP_MAX_REPLY, so this only bounds what a flooding server can
 * make us hold. */
#define SMTP_READ_HIGH_WATER (64 * 1024)
/* How long QUIT waits for 221 at most. */
#define SMTP_QUIT_TIMEOUT_MS 2000

enum smtp_state {
    SMTP_ST_CONNECTING = 0,
    SMTP_ST_GREETING,
    SMTP_ST_EHLO,
    SMTP_ST_HELO,
    SMTP_ST_STARTTLS,
    SMTP_ST_TLS_HANDSHAKE,
    SMTP_ST_READY,
    SMTP_ST_RSET,
    SMTP_ST_MAIL,
    SMTP_ST_RCPT,
    SMTP_ST_DATA,
    SMTP_ST_DOT,
    SMTP_ST_QUIT,
    SMTP_ST_DEAD,
};

static const char *const state_names[] = {
    "connecting", "greeting", "ehlo", "helo", "starttls", "tls-handshake", "ready",
    "rset",       "mail",     "rcpt", "data", "dot",      "quit",          "dead",
};

enum smtp_event {
    SMTP_EV_CONNECTED = 0, /* TCP connection established */
    SMTP_EV_REPLY,         /* a complete reply is in c->reply_* */
    SMTP_EV_TIMEOUT,       /* the state's timer expired */
    SMTP_EV_CLOSED,        /* EOF, reset or connect failure; c->io_error says what */
    SMTP_EV_PROTOCOL,      /* malformed or oversized reply; c->io_error says what */
    SMTP_EV_TLS_DONE,      /* handshake completed */
    SMTP_EV_TLS_FAILED,    /* handshake failed; c->io_error says why */
    SMTP_EV_BATCH,         /* smtp_client_send handed over a batch */
    SMTP_EV_FLUSHED,       /* output buffer drained */
};

static const char *const event_names[] = {
    "connected", "reply",      "timeout", "closed",  "protocol-error",
    "tls-done",  "tls-failed", "batch",   "flushed",
};

struct rcpt_state {
    bool done;
    bool accepted;
    bool at_rcpt; /* refused by its RCPT reply */
    enum smtp_outcome outcome;
    int code;
    char status[16];
    char *reply;
};

struct smtp_client {
    unsigned long sid;
    struct event_base *base;

    /* configuration (strings owned) */
    char *id;
    char *helo_name;
    char *tls_ca_file;
    char *tls_policy_name;
    struct sockaddr_storage source;
    socklen_t source_len;
    bool use_starttls, require_starttls, tls_verify, tls_check;
    struct dane_set dane; /* a copy of the session's */
    uint64_t connect_timeout_ms, command_timeout_ms, data_timeout_ms;

    struct dns_host *hosts; /* owned deep copy */
    size_t nhosts;
    size_t host_i, addr_i; /* address being tried */
    bool plain_retry;      /* reconnect to this address without STARTTLS */

    enum smtp_state state;
    struct bufferevent *bev;
    struct event *timer;
    struct event *notify;  /* deferred batch start */
    struct event *free_ev; /* deferred free */
    bool freeing;
    bool ever_ready;
    bool tls_active;

    /* reply being read */
    struct buf rtext;
    int rcode;
    size_t rlines;
    size_t rbytes;
    /* last complete reply */
    int reply_code;
    char reply_status[16];
    char *reply_text;

    char io_error[768];

    /* capabilities from the last EHLO */
    bool cap_pipelining, cap_8bitmime, cap_starttls, cap_smtputf8, cap_dsn, cap_enhanced;
    uint64_t cap_size;

    /* last error, for recipients when no host works */
    enum smtp_outcome err_outcome;
    int err_code;
    char err_status[16];
    char *err_text;

    /* accounting facts */
    char info_host[256];
    char info_ip[INET6_ADDRSTRLEN];
    char info_source[INET6_ADDRSTRLEN];
    char info_tls_protocol[32];
    char info_tls_cipher[128];
    const char *info_tls_failure; /* static RFC 8460 result type, or NULL */
    const char *info_tls_policy;  /* "tlsa" when DANE applied to the connection */

    /* current batch */
    bool have_batch;
    bool batch_started;
    const struct smtp_message *msgs;
    size_t nmsgs;
    struct rcpt_state **res;
    smtp_batch_cb cb;
    void *cb_arg;
    size_t cur;    /* current message */
    size_t *order; /* recipients of the current message that are sent */
    size_t norder;
    size_t pos;      /* RCPT reply expected for order[pos] */
    size_t accepted; /* recipients accepted by RCPT */
    bool mail_ok;
    bool pipelined_txn;
    bool discard_dot; /* 354 without accepted recipients: "." alone */
    bool rset_needed;
};

static unsigned long smtp_next_sid = 1;

static void smtp_enter(struct smtp_client *c, enum smtp_state st);
static void smtp_react(struct smtp_client *c, enum smtp_event ev);

/* ---------------------------------------------------------------------------
 * Dot-stuffing and reply parsing (pure functions, fuzzed and unit tested)
 */

typedef void (*emit_fn)(void *ctx, const void *p, size_t n);

static void
emit_buf(void *ctx, const void *p, size_t n)
{
    buf_append(ctx, p, n);
}

static void
emit_evbuffer(void *ctx, const void *p, size_t n)
{
    if (evbuffer_add(ctx, p, n) != 0)
        util_panic(__func__, "evbuffer_add failed");
}

/* Every line ending (CRLF, bare CR, bare LF) becomes CRLF; a line starting
 * with "." gets a second one. Runs of ordinary bytes are emitted in one go. */
static void
dotstuff(emit_fn emit, void *ctx, const unsigned char *msg, size_t len)
{
    bool bol = true;
    size_t i = 0;
    while (i < len) {
        unsigned char ch = msg[i];
        if (ch == '\r' || ch == '\n') {
            emit(ctx, "\r\n", 2);
            i += (ch == '\r' && i + 1 < len && msg[i + 1] == '\n') ? 2 : 1;
            bol = true;
            continue;
        }
        if (bol && ch == '.')
            emit(ctx, ".", 1);
        size_t j = i;
        while (j < len && msg[j] != '\r' && msg[j] != '\n')
            j++;
        emit(ctx, msg + i, j - i);
        i = j;
        bol = false;
    }
    if (!bol)
        emit(ctx, "\r\n", 2);
}

void
smtp_client_dotstuff(struct buf *out, const unsigned char *msg, size_t len)
{
    dotstuff(emit_buf, out, msg, len);
}

/* A reply code is three digits, the first 2..5 (RFC 5321 4.2; the second
 * digit is not restricted to 0..5 as some servers use others). */
int
smtp_reply_parse_line(const char *line, size_t len, int *code, bool *last)
{
    if (len < 3 || memchr(line, '\0', len))
        return -1;
    if (line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' || line[2] < '0' ||
        line[2] > '9')
        return -1;
    if (len > 3 && line[3] != ' ' && line[3] != '-')
        return -1;
    *code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    *last = len == 3 || line[3] == ' ';
    return 0;
}

/* Counts 1 to MAX digits at *p; returns how many. */
static size_t
count_digits(const char *p, size_t max)
{
    size_t n = 0;
    while (n < max && p[n] >= '0' && p[n] <= '9')
        n++;
    return n;
}

int
smtp_reply_enhanced_status(const char *text, char *out, size_t outlen)
{
    const char *p = text;
    /* Accept the reply line itself ("550 5.1.1 ...") as well as its text. */
    if (count_digits(p, 3) == 3 && (p[3] == ' ' || p[3] == '-'))
        p += 4;
    if (*p != '2' && *p != '4' && *p != '5')
        return -1;
    if (p[1] != '.')
        return -1;
    size_t n1 = count_digits(p + 2, 3);
    if (n1 == 0 || p[2 + n1] != '.')
        return -1;
    size_t n2 = count_digits(p + 3 + n1, 3);
    if (n2 == 0 || count_digits(p + 3 + n1 + n2, 1) != 0)
        return -1;
    char end = p[3 + n1 + n2];
    if (end != '\0' && end != ' ' && end != '\t' && end != '\n' && end != '\r')
        return -1;
    size_t total = 3 + n1 + n2;
    if (outlen < total + 1)
        return -1;
    memcpy(out, p, total);
    out[total] = '\0';
    return 0;
}

void
smtp_client_tls_cleanup(void)
{
    tls_client_cleanup();
}

/* ---------------------------------------------------------------------------
 * Small helpers
 */

static const char *
cid(const struct smtp_client *c)
{
    return c->id ? c->id : "-";
}

static const struct dns_host *
cur_host(const struct smtp_client *c)
{
    return c->host_i < c->nhosts ? &c->hosts[c->host_i] : NULL;
}

/* The current host's DANE requirement (RFC 7672), NULL when none. */
static const struct dane_host *
cur_dane(const struct smtp_client *c)
{
    const struct dns_host *h = cur_host(c);
    const struct dane_host *d = h ? dane_find(&c->dane, h->name) : NULL;
    return d && d->state != DANE_NONE ? d : NULL;
}

void
smtp_client_set_dane(struct smtp_client *c, const struct dane_set *dane)
{
    dane_set_clear(&c->dane);
    dane_set_copy(&c->dane, dane);
}

static const struct dns_addr *
cur_addr(const struct smtp_client *c)
{
    const struct dns_host *h = cur_host(c);
    return h && c->addr_i < h->naddrs ? &h->addrs[c->addr_i] : NULL;
}

/* The enhanced status of a reply: the one in its text when present (with
 * or without ENHANCEDSTATUSCODES) and of the same class, else derived from
 * the reply code. */
static void
derive_status(int code, const char *text, char *out, size_t outlen)
{
    char tmp[16];
    if (smtp_reply_enhanced_status(text, tmp, sizeof tmp) == 0 && tmp[0] - '0' == code / 100) {
        snprintf(out, outlen, "%s", tmp);
        return;
    }
    int cls = code / 100;
    if (cls != 2 && cls != 5)
        cls = 4;
    snprintf(out, outlen, "%d.0.0", cls);
}

static enum smtp_outcome
outcome_of(int code)
{
    if (code >= 200 && code < 300)
        return SMTP_DELIVERED;
    if (code >= 500 && code < 600)
        return SMTP_PERMANENT;
    return SMTP_TRANSIENT;
}

/* Remembers the last error: used for every recipient if no host works. */
static void set_error(struct smtp_client *c, enum smtp_outcome outcome, int code,
                      const char *status, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void
set_error(struct smtp_client *c, enum smtp_outcome outcome, int code, const char *status,
          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *text = NULL;
    if (vasprintf(&text, fmt, ap) < 0)
        util_panic(__func__, "out of memory");
    va_end(ap);
    if (strlen(text) > SMTP_MAX_REPLY)
        text[SMTP_MAX_REPLY] = '\0';
    free(c->err_text);
    c->err_text = text;
    c->err_outcome = outcome;
    c->err_code = code;
    snprintf(c->err_status, sizeof c->err_status, "%s", status);
}

/* The last error is the server's reply. */
static void
set_error_reply(struct smtp_client *c)
{
    set_error(c, outcome_of(c->reply_code) == SMTP_PERMANENT ? SMTP_PERMANENT : SMTP_TRANSIENT,
              c->reply_code, c->reply_status, "%s", c->reply_text);
}

static void
rcpt_resolve(struct rcpt_state *r, enum smtp_outcome outcome, int code, const char *status,
             const char *text)
{
    if (r->done)
        return;
    r->done = true;
    r->outcome = outcome;
    r->code = code;
    snprintf(r->status, sizeof r->status, "%s", status);
    r->reply = xstrdup(text);
}

static void
rcpt_resolve_reply(struct smtp_client *c, struct rcpt_state *r)
{
    rcpt_resolve(r, outcome_of(c->reply_code), c->reply_code, c->reply_status, c->reply_text);
}

static void send_cmd(struct smtp_client *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void
send_cmd(struct smtp_client *c, const char *fmt, ...)
{
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 2, fmt, ap);
    va_end(ap);
    PGMTA_ASSERT(n >= 0 && (size_t)n < sizeof line - 2);
    log_trace("%s session=%lu send=\"%s\"", cid(c), c->sid, line);
    line[n++] = '\r';
    line[n++] = '\n';
    if (bufferevent_write(c->bev, line, (size_t)n) != 0)
        util_panic(__func__, "bufferevent_write failed");
}

static void
arm_timer(struct smtp_client *c, uint64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* An address is acceptable in a command when the SQL API would have taken
 * it (addr.c: no controls or angle brackets, a quoted local part may hold
 * spaces). Enqueue refuses the rest; this is a last line of defence against
 * command injection. */
static bool
address_ok(const char *a, bool allow_empty)
{
    if (!*a)
        return allow_empty;
    return addr_validate_str(a, NULL, NULL);
}

#define SMTP_ORCPT_MAX 500 /* RFC 3461 4.2 */

/* xtext (RFC 3461) for ENVID and ORCPT. */
static void
xtext(char *out, size_t outlen, const char *in)
{
    size_t o = 0;
    for (; *in && o + 4 < outlen; in++) {
        unsigned char ch = (unsigned char)*in;
        if (ch >= '!' && ch <= '~' && ch != '+' && ch != '=')
            out[o++] = (char)ch;
        else
            o += (size_t)snprintf(out + o, outlen - o, "+%02X", ch);
    }
    out[o] = '\0';
}

/* Whether IN as xtext fits in OUTLEN bytes with xtext()'s margin. */
static bool
xtext_fits(const char *in, size_t outlen)
{
    size_t o = 0;
    for (; *in; in++) {
        unsigned char ch = (unsigned char)*in;
        o += ch >= '!' && ch <= '~' && ch != '+' && ch != '=' ? 1 : 3;
        if (o + 4 >= outlen)
            return false;
    }
    return true;
}

/* ---------------------------------------------------------------------------
 * Connection handling
 */

static void
close_conn(struct smtp_client *c)
{
    if (c->bev) {
        bufferevent_free(c->bev); /* also frees the SSL and the socket bufferevent */
        c->bev = NULL;
    }
    evtimer_del(c->timer);
    c->tls_active = false;
    c->cap_pipelining = c->cap_8bitmime = c->cap_starttls = false;
    c->cap_smtputf8 = c->cap_dsn = c->cap_enhanced = false;
    c->cap_size = 0;
    buf_reset(&c->rtext);
    c->rlines = c->rbytes = 0;
    c->rset_needed = false;
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

/* Starts a connection to the current address. Returns false (with the error
 * recorded) if it could not even be started. */
static bool
start_connect(struct smtp_client *c)
{
    const struct dns_host *h = cur_host(c);
    const struct dns_addr *a = cur_addr(c);
    const struct sockaddr *sa = (const struct sockaddr *)&a->sa;
    snprintf(c->info_host, sizeof c->info_host, "%s", h->name ? h->name : "");
    c->info_ip[0] = c->info_source[0] = '\0';
    c->info_tls_protocol[0] = c->info_tls_cipher[0] = '\0';
    if (!c->plain_retry)
        c->info_tls_failure = NULL; /* kept for the clear-text retry it caused */
    c->info_tls_policy = NULL;
    const void *addr = sa->sa_family == AF_INET6
                           ? (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr
                           : (const void *)&((const struct sockaddr_in *)sa)->sin_addr;
    inet_ntop(sa->sa_family, addr, c->info_ip, sizeof c->info_ip);

    if (c->source_len && ((const struct sockaddr *)&c->source)->sa_family != sa->sa_family) {
        set_error(c, SMTP_TRANSIENT, 0, "4.4.1",
                  "connect to %s[%s]: no source address of its family", c->info_host, c->info_ip);
        return false;
    }
    evutil_socket_t fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        set_error(c, SMTP_TRANSIENT, 0, "4.4.1", "socket: %s", strerror(errno));
        return false;
    }
    if (evutil_make_socket_nonblocking(fd) != 0) {
        set_error(c, SMTP_TRANSIENT, 0, "4.4.1", "nonblocking socket: %s", strerror(errno));
        close(fd);
        return false;
    }
    if (c->source_len && bind(fd, (const struct sockaddr *)&c->source, c->source_len) != 0) {
        set_error(c, SMTP_TRANSIENT, 0, "4.4.1", "bind to source address: %s", strerror(errno));
        close(fd);
        return false;
    }
    c->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        close(fd);
        set_error(c, SMTP_TRANSIENT, 0, "4.4.1", "bufferevent_socket_new failed");
        return false;
    }
    bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
    bufferevent_setwatermark(c->bev, EV_READ, 0, SMTP_READ_HIGH_WATER);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->bev, sa, a->salen) != 0) {
        set_error(c, SMTP_TRANSIENT, 0, "4.4.1", "connect to %s[%s]: %s", c->info_host, c->info_ip,
                  strerror(errno));
        bufferevent_free(c->bev);
        c->bev = NULL;
        return false;
    }
    log_debug("%s session=%lu connecting host=%s ip=%s%s", cid(c), c->sid, c->info_host, c->info_ip,
              c->plain_retry ? " tls=off-after-failure" : "");
    return true;
}

/* Moves to the next address (or the next host); false when none is left. */
static bool
advance_address(struct smtp_client *c)
{
    if (c->plain_retry)
        return true; /* the same address once more, in clear text */
    c->addr_i++;
    while (c->host_i < c->nhosts && c->addr_i >= c->hosts[c->host_i].naddrs) {
        c->host_i++;
        c->addr_i = 0;
    }
    return c->host_i < c->nhosts;
}

/* Connects to the current address or the following ones; DEAD if none. */
static void
connect_from_current(struct smtp_client *c)
{
    while (cur_addr(c)) {
        if (start_connect(c)) {
            smtp_enter(c, SMTP_ST_CONNECTING);
            return;
        }
        log_info("%s session=%lu host=%s ip=%s error=\"%s\"", cid(c), c->sid, c->info_host,
                 c->info_ip, c->err_text);
        c->plain_retry = false;
        if (!advance_address(c))
            break;
    }
    smtp_enter(c, SMTP_ST_DEAD);
}

/* The current host could not be used (setup phase): try the next address. */
static void
host_failed(struct smtp_client *c)
{
    log_info("%s session=%lu host=%s ip=%s state=%s error=\"%s\"", cid(c), c->sid, c->info_host,
             c->info_ip, state_names[c->state], c->err_text);
    close_conn(c);
    if (!advance_address(c)) {
        smtp_enter(c, SMTP_ST_DEAD);
        return;
    }
    connect_from_current(c);
}

/* ---------------------------------------------------------------------------
 * Batches
 */

static void
batch_release(struct smtp_client *c)
{
    if (c->res) {
        for (size_t i = 0; i < c->nmsgs; i++) {
            for (size_t j = 0; c->res[i] && j < c->msgs[i].nrcpts; j++)
                free(c->res[i][j].reply);
            free(c->res[i]);
        }
        free(c->res);
    }
    free(c->order);
    c->res = NULL;
    c->order = NULL;
    c->norder = 0;
    c->msgs = NULL;
    c->nmsgs = 0;
    c->have_batch = false;
    c->batch_started = false;
    c->cb = NULL;
    c->cb_arg = NULL;
}

/* Every recipient not yet resolved gets the last error. */
static void
batch_fail_rest(struct smtp_client *c)
{
    for (size_t i = 0; i < c->nmsgs; i++)
        for (size_t j = 0; j < c->msgs[i].nrcpts; j++)
            rcpt_resolve(&c->res[i][j], c->err_outcome, c->err_code, c->err_status, c->err_text);
}

/* Reports the batch and forgets it. The callback may call smtp_client_send,
 * smtp_client_quit or smtp_client_free; nothing here touches the batch
 * after it returns. */
static void
batch_complete(struct smtp_client *c, bool usable)
{
    PGMTA_ASSERT(c->have_batch);
    size_t nmsgs = c->nmsgs;
    const struct smtp_message *msgs = c->msgs;
    struct rcpt_state **res = c->res;
    smtp_batch_cb cb = c->cb;
    void *arg = c->cb_arg;
    free(c->order);
    c->order = NULL;
    c->res = NULL;
    c->msgs = NULL;
    c->nmsgs = 0;
    c->have_batch = false;
    c->batch_started = false;
    c->cb = NULL;
    c->cb_arg = NULL;

    struct smtp_rcpt_result **pub = xcalloc(nmsgs ? nmsgs : 1, sizeof *pub);
    size_t delivered = 0, transient = 0, permanent = 0;
    for (size_t i = 0; i < nmsgs; i++) {
        pub[i] = xcalloc(msgs[i].nrcpts ? msgs[i].nrcpts : 1, sizeof **pub);
        for (size_t j = 0; j < msgs[i].nrcpts; j++) {
            struct rcpt_state *r = &res[i][j];
            PGMTA_ASSERT(r->done);
            pub[i][j].outcome = r->outcome;
            pub[i][j].code = r->code;
            pub[i][j].status = r->status;
            pub[i][j].reply = r->reply ? r->reply : "";
            pub[i][j].at_rcpt = r->at_rcpt;
            if (r->outcome == SMTP_DELIVERED)
                delivered++;
            else if (r->outcome == SMTP_TRANSIENT)
                transient++;
            else
                permanent++;
        }
    }
    log_debug("%s session=%lu batch done messages=%zu delivered=%zu transient=%zu permanent=%zu "
              "usable=%d",
              cid(c), c->sid, nmsgs, delivered, transient, permanent, usable);
    struct smtp_conn_info info = {
        .host = c->info_host[0] ? c->info_host : NULL,
        .ip = c->info_ip[0] ? c->info_ip : NULL,
        .source_ip = c->info_source[0] ? c->info_source : NULL,
        .tls_protocol = c->info_tls_protocol[0] ? c->info_tls_protocol : NULL,
        .tls_cipher = c->info_tls_cipher[0] ? c->info_tls_cipher : NULL,
        .tls_failure = c->info_tls_failure,
        .tls_policy = c->info_tls_policy,
        .dsn = c->cap_dsn,
    };
    if (cb && !c->freeing)
        cb(c, (const struct smtp_rcpt_result *const *)pub, &info, usable, arg);
    for (size_t i = 0; i < nmsgs; i++) {
        for (size_t j = 0; j < msgs[i].nrcpts; j++)
            free(res[i][j].reply);
        free(res[i]);
        free(pub[i]);
    }
    free(res);
    free(pub);
}

/* Connection trouble after the session was established: every unfinished
 * recipient gets the last error and the batch (if any) is reported with
 * usable=false. */
static void
conn_failed(struct smtp_client *c)
{
    log_info("%s session=%lu host=%s ip=%s state=%s error=\"%s\"", cid(c), c->sid, c->info_host,
             c->info_ip, state_names[c->state], c->err_text);
    smtp_enter(c, SMTP_ST_DEAD);
}

/* Resolves the recipients of message i that cannot be sent at all. Returns
 * true if something is left to send. */
static bool
msg_prepare(struct smtp_client *c, size_t i)
{
    const struct smtp_message *m = &c->msgs[i];
    struct rcpt_state *rs = c->res[i];
    const char *fail_status = NULL, *fail_text = NULL;
    if (!address_ok(m->mail_from, true)) {
        fail_status = "5.1.7";
        fail_text = "invalid sender address";
    } else if (m->smtputf8 && !c->cap_smtputf8) {
        fail_status = "5.6.7";
        fail_text = "SMTPUTF8 required but not offered by host";
    } else if (c->cap_size && m->prefix_len + m->content_len > c->cap_size) {
        fail_status = "5.3.4";
        fail_text = "message size exceeds the limit announced by host";
    }
    if (fail_status) {
        for (size_t j = 0; j < m->nrcpts; j++)
            rcpt_resolve(&rs[j], SMTP_PERMANENT, 0, fail_status, fail_text);
        return false;
    }
    free(c->order);
    c->order = xcalloc(m->nrcpts ? m->nrcpts : 1, sizeof *c->order);
    c->norder = 0;
    for (size_t j = 0; j < m->nrcpts; j++) {
        if (!address_ok(m->rcpts[j], false))
            rcpt_resolve(&rs[j], SMTP_PERMANENT, 0, "5.1.3", "invalid recipient address");
        else
            c->order[c->norder++] = j;
    }
    return c->norder > 0;
}

static void
write_mail(struct smtp_client *c)
{
    const struct smtp_message *m = &c->msgs[c->cur];
    char params[400] = "";
    size_t n = 0;
    if (c->cap_size)
        n += (size_t)snprintf(params + n, sizeof params - n, " SIZE=%zu",
                              m->prefix_len + m->content_len);
    if (m->eightbit && c->cap_8bitmime)
        n += (size_t)snprintf(params + n, sizeof params - n, " BODY=8BITMIME");
    if (m->smtputf8 && c->cap_smtputf8)
        n += (size_t)snprintf(params + n, sizeof params - n, " SMTPUTF8");
    if (m->ret && c->cap_dsn)
        n += (size_t)snprintf(params + n, sizeof params - n, " RET=%s",
                              m->ret == 'H' ? "HDRS" : "FULL");
    if (m->envid && *m->envid && c->cap_dsn) {
        char x[200];
        xtext(x, sizeof x, m->envid);
        snprintf(params + n, sizeof params - n, " ENVID=%s", x);
    }
    send_cmd(c, "MAIL FROM:<%s>%s", m->mail_from, params);
}

static void
write_rcpt(struct smtp_client *c, size_t k)
{
    const struct smtp_message *m = &c->msgs[c->cur];
    size_t j = c->order[k];
    char params[600] = "";
    size_t n = 0;
    if (c->cap_dsn && m->notify && m->notify[j] >= 0) {
        int v = m->notify[j];
        if (v == 0)
            n += (size_t)snprintf(params, sizeof params, " NOTIFY=NEVER");
        else
            n += (size_t)snprintf(params, sizeof params, " NOTIFY=%s%s%s%s%s",
                                  v & 1 ? "SUCCESS" : "", v & 1 && v & 6 ? "," : "",
                                  v & 2 ? "FAILURE" : "", v & 2 && v & 4 ? "," : "",
                                  v & 4 ? "DELAY" : "");
    }
    const char *semi = c->cap_dsn && m->orcpt && m->orcpt[j] ? strchr(m->orcpt[j], ';') : NULL;
    if (semi && semi > m->orcpt[j] && semi - m->orcpt[j] < 64) {
        /* RFC 3461 bounds the parameter to 500 characters; a longer one
         * once encoded is left out rather than cut */
        char x[SMTP_ORCPT_MAX + 4];
        xtext(x, sizeof x, semi + 1);
        size_t tlen = (size_t)(semi - m->orcpt[j]);
        if (tlen + 1 + strlen(x) <= SMTP_ORCPT_MAX && xtext_fits(semi + 1, sizeof x))
            snprintf(params + n, sizeof params - n, " ORCPT=%.*s;%s", (int)tlen, m->orcpt[j], x);
    }
    send_cmd(c, "RCPT TO:<%s>%s", m->rcpts[j], params);
}

/* Starts the next message that has something to send, or completes the
 * batch when none is left. */
static void
msg_next(struct smtp_client *c)
{
    while (c->cur < c->nmsgs && !msg_prepare(c, c->cur))
        c->cur++;
    if (c->cur >= c->nmsgs) {
        smtp_enter(c, SMTP_ST_READY);
        batch_complete(c, true);
        return;
    }
    c->pos = 0;
    c->accepted = 0;
    c->mail_ok = false;
    c->discard_dot = false;
    c->pipelined_txn = c->cap_pipelining;
    if (c->pipelined_txn) {
        /* RFC 2920: RSET, MAIL, RCPTs and DATA in one write. */
        if (c->rset_needed)
            send_cmd(c, "RSET");
        write_mail(c);
        for (size_t k = 0; k < c->norder; k++)
            write_rcpt(c, k);
        send_cmd(c, "DATA");
    }
    smtp_enter(c, c->rset_needed ? SMTP_ST_RSET : SMTP_ST_MAIL);
}

/* The current message is finished (whatever its outcome). */
static void
msg_done(struct smtp_client *c)
{
    c->cur++;
    msg_next(c);
}

static void
batch_start(struct smtp_client *c)
{
    c->batch_started = true;
    c->cur = 0;
    msg_next(c);
}

/* ---------------------------------------------------------------------------
 * EHLO capabilities
 */

static void
parse_ehlo(struct smtp_client *c)
{
    c->cap_pipelining = c->cap_8bitmime = c->cap_starttls = false;
    c->cap_smtputf8 = c->cap_dsn = c->cap_enhanced = false;
    c->cap_size = 0;
    const char *p = c->reply_text;
    const char *nl = strchr(p, '\n'); /* the first line is the greeting text */
    while (nl) {
        p = nl + 1;
        nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (len <= 4)
            continue;
        char kw[64];
        size_t kl = len - 4 < sizeof kw - 1 ? len - 4 : sizeof kw - 1;
        memcpy(kw, p + 4, kl);
        kw[kl] = '\0';
        char *arg = strchr(kw, ' ');
        if (arg)
            *arg++ = '\0';
        if (!strcasecmp(kw, "PIPELINING"))
            c->cap_pipelining = true;
        else if (!strcasecmp(kw, "8BITMIME"))
            c->cap_8bitmime = true;
        else if (!strcasecmp(kw, "STARTTLS"))
            c->cap_starttls = true;
        else if (!strcasecmp(kw, "SMTPUTF8"))
            c->cap_smtputf8 = true;
        else if (!strcasecmp(kw, "DSN"))
            c->cap_dsn = true;
        else if (!strcasecmp(kw, "ENHANCEDSTATUSCODES"))
            c->cap_enhanced = true;
        else if (!strcasecmp(kw, "SIZE") && arg) {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(arg, &end, 10);
            if (!errno && end != arg && *end == '\0')
                c->cap_size = v;
        }
    }
    log_debug("%s session=%lu ehlo pipelining=%d size=%llu 8bitmime=%d starttls=%d smtputf8=%d "
              "dsn=%d enhancedstatuscodes=%d tls=%d",
              cid(c), c->sid, c->cap_pipelining, (unsigned long long)c->cap_size, c->cap_8bitmime,
              c->cap_starttls, c->cap_smtputf8, c->cap_dsn, c->cap_enhanced, c->tls_active);
}

/* ---------------------------------------------------------------------------
 * TLS
 */

/* Puts the OpenSSL filter on top of the socket bufferevent. */
static bool
tls_start(struct smtp_client *c)
{
    char err[200];
    const struct dane_host *dh = cur_dane(c);
    /* No host name (a route to an address): the certificate is checked
     * against the address connected to, never against nothing. */
    struct bufferevent *f =
        dh ? tls_client_start_dane(c->base, c->bev, c->info_host, dh->tlsa, dh->ntlsa, err,
                                   sizeof err)
           : tls_client_start(c->base, c->bev, c->info_host[0] ? c->info_host : c->info_ip,
                              c->tls_verify  ? TLS_VERIFY_REQUIRE
                              : c->tls_check ? TLS_VERIFY_CHECK
                                             : TLS_VERIFY_NONE,
                              c->tls_ca_file, err, sizeof err);
    if (!f) {
        snprintf(c->io_error, sizeof c->io_error, "%s", err);
        return false;
    }
    c->bev = f;
    bufferevent_setcb(f, on_read, on_write, on_event, c);
    bufferevent_setwatermark(f, EV_READ, 0, SMTP_READ_HIGH_WATER);
    bufferevent_enable(f, EV_READ | EV_WRITE);
    return true;
}

/* ---------------------------------------------------------------------------
 * libevent callbacks: translate I/O into events
 */

/* Feeds one reply line; returns false on a protocol error (io_error set). */
static bool
reply_line(struct smtp_client *c, const char *line, size_t len)
{
    int code;
    bool last;
    if (smtp_reply_parse_line(line, len, &code, &last) != 0) {
        snprintf(c->io_error, sizeof c->io_error, "malformed reply line from %s[%s]", c->info_host,
                 c->info_ip);
        return false;
    }
    if (c->rlines > 0 && code != c->rcode) {
        snprintf(c->io_error, sizeof c->io_error, "inconsistent reply codes from %s[%s]",
                 c->info_host, c->info_ip);
        return false;
    }
    c->rcode = code;
    c->rlines++;
    c->rbytes += len + 2;
    if (c->rlines > SMTP_MAX_REPLY_LINES || c->rbytes > SMTP_MAX_REPLY) {
        snprintf(c->io_error, sizeof c->io_error, "reply from %s[%s] too long", c->info_host,
                 c->info_ip);
        return false;
    }
    if (c->rtext.len)
        buf_append(&c->rtext, "\n", 1);
    buf_append(&c->rtext, line, len);
    if (!last)
        return true;
    free(c->reply_text);
    c->reply_text = xstrndup(c->rtext.data, c->rtext.len);
    c->reply_code = code;
    derive_status(code, c->reply_text, c->reply_status, sizeof c->reply_status);
    buf_reset(&c->rtext);
    c->rlines = c->rbytes = 0;
    log_trace("%s session=%lu reply=\"%.200s\"", cid(c), c->sid, c->reply_text);
    smtp_react(c, SMTP_EV_REPLY);
    return true;
}

static void
on_read(struct bufferevent *bev, void *arg)
{
    struct smtp_client *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    while (c->bev == bev && !c->freeing && c->state != SMTP_ST_DEAD) {
        size_t avail = evbuffer_get_length(in);
        if (avail == 0)
            return;
        size_t eol_len = 0;
        struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
        if (eol.pos < 0) {
            if (avail > SMTP_MAX_REPLY) {
                snprintf(c->io_error, sizeof c->io_error, "reply line from %s[%s] too long",
                         c->info_host, c->info_ip);
                smtp_react(c, SMTP_EV_PROTOCOL);
            }
            return;
        }
        if ((size_t)eol.pos > SMTP_MAX_REPLY) {
            snprintf(c->io_error, sizeof c->io_error, "reply line from %s[%s] too long",
                     c->info_host, c->info_ip);
            smtp_react(c, SMTP_EV_PROTOCOL);
            return;
        }
        char line[SMTP_MAX_REPLY + 1];
        size_t len = (size_t)eol.pos;
        evbuffer_remove(in, line, len);
        evbuffer_drain(in, eol_len);
        line[len] = '\0';
        if (!reply_line(c, line, len)) {
            smtp_react(c, SMTP_EV_PROTOCOL);
            return;
        }
    }
}

static void
on_write(struct bufferevent *bev, void *arg)
{
    struct smtp_client *c = arg;
    if (c->bev == bev && !c->freeing)
        smtp_react(c, SMTP_EV_FLUSHED);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
    struct smtp_client *c = arg;
    if (c->bev != bev || c->freeing)
        return;
    if (what & BEV_EVENT_CONNECTED) {
        smtp_react(c, c->state == SMTP_ST_TLS_HANDSHAKE ? SMTP_EV_TLS_DONE : SMTP_EV_CONNECTED);
        return;
    }
    if (c->state == SMTP_ST_TLS_HANDSHAKE) {
        char detail[200];
        tls_client_failure(bev, detail, sizeof detail);
        if (c->tls_verify || c->tls_check)
            c->info_tls_failure = tls_client_failure_type(bev);
        snprintf(c->io_error, sizeof c->io_error, "TLS handshake with %s[%s] failed: %s",
                 c->info_host, c->info_ip, detail);
        smtp_react(c, SMTP_EV_TLS_FAILED);
        return;
    }
    int err = EVUTIL_SOCKET_ERROR();
    if (what & BEV_EVENT_EOF)
        snprintf(c->io_error, sizeof c->io_error, "connection closed by %s[%s]", c->info_host,
                 c->info_ip);
    else if (c->state == SMTP_ST_CONNECTING)
        snprintf(c->io_error, sizeof c->io_error, "connect to %s[%s]: %s", c->info_host, c->info_ip,
                 err ? strerror(err) : "failed");
    else
        snprintf(c->io_error, sizeof c->io_error, "lost connection with %s[%s]: %s", c->info_host,
                 c->info_ip, err ? strerror(err) : "error");
    smtp_react(c, SMTP_EV_CLOSED);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_client *c = arg;
    if (!c->freeing)
        smtp_react(c, SMTP_EV_TIMEOUT);
}

static void
on_notify(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_client *c = arg;
    if (!c->freeing && c->have_batch && !c->batch_started)
        smtp_react(c, SMTP_EV_BATCH);
}

static void
session_destroy(struct smtp_client *c)
{
    log_trace("%s session=%lu freed", cid(c), c->sid);
    close_conn(c);
    batch_release(c);
    event_free(c->timer);
    event_free(c->notify);
    event_free(c->free_ev);
    for (size_t i = 0; i < c->nhosts; i++) {
        free(c->hosts[i].name);
        free(c->hosts[i].addrs);
    }
    free(c->hosts);
    buf_free(&c->rtext);
    free(c->reply_text);
    free(c->err_text);
    free(c->id);
    free(c->helo_name);
    free(c->tls_ca_file);
    free(c->tls_policy_name);
    dane_set_clear(&c->dane);
    free(c);
}

static void
on_free(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_destroy(arg);
}

/* Marks the session for freeing at the end of the loop turn. */
static void
schedule_free(struct smtp_client *c)
{
    if (c->freeing)
        return;
    c->freeing = true;
    c->cb = NULL;
    if (c->bev)
        bufferevent_disable(c->bev, EV_READ | EV_WRITE);
    evtimer_del(c->timer);
    event_active(c->free_ev, EV_TIMEOUT, 0);
}

/* ---------------------------------------------------------------------------
 * The state machine
 */

static void
smtp_enter(struct smtp_client *c, enum smtp_state st)
{
    log_trace("%s session=%lu state=%s->%s", cid(c), c->sid, state_names[c->state],
              state_names[st]);
    c->state = st;
    evtimer_del(c->timer);
    switch (st) {
    case SMTP_ST_CONNECTING:
        arm_timer(c, c->connect_timeout_ms);
        break;
    case SMTP_ST_GREETING:
        arm_timer(c, c->command_timeout_ms);
        break;
    case SMTP_ST_EHLO:
        send_cmd(c, "EHLO %s", c->helo_name);
        arm_timer(c, c->command_timeout_ms);
        break;
    case SMTP_ST_HELO:
        send_cmd(c, "HELO %s", c->helo_name);
        arm_timer(c, c->command_timeout_ms);
        break;
    case SMTP_ST_STARTTLS:
        send_cmd(c, "STARTTLS");
        arm_timer(c, c->command_timeout_ms);
        break;
    case SMTP_ST_TLS_HANDSHAKE:
        arm_timer(c, c->command_timeout_ms);
        break;
    case SMTP_ST_READY:
        if (!c->ever_ready) {
            c->ever_ready = true;
            log_debug("%s session=%lu ready host=%s ip=%s source=%s tls=%s", cid(c), c->sid,
                      c->info_host, c->info_ip, c->info_source,
                      c->tls_active ? c->info_tls_protocol : "none");
        }
        if (c->have_batch && !c->batch_started)
            batch_start(c);
        break;
    case SMTP_ST_RSET:
        if (!c->pipelined_txn)
            send_cmd(c, "RSET");
        arm_timer(c, c->command_timeout_ms);
        break;
    case SMTP_ST_MAIL:
        if (!c->pipelined_txn)
            write_mail(c);
        arm_timer(c, c->command_timeout_ms);
        break;
    case SMTP_ST_RCPT:
        if (!c->pipelined_txn)
            write_rcpt(c, c->pos);
        arm_timer(c, c->command_timeout_ms);
        break;
    case SMTP_ST_DATA:
        if (!c->pipelined_txn)
            send_cmd(c, "DATA");
        arm_timer(c, c->command_timeout_ms);
        break;
    case SMTP_ST_DOT: {
        struct evbuffer *out = bufferevent_get_output(c->bev);
        if (!c->discard_dot) {
            const struct smtp_message *m = &c->msgs[c->cur];
            if (m->prefix_len)
                dotstuff(emit_evbuffer, out, m->prefix, m->prefix_len);
            dotstuff(emit_evbuffer, out, m->content, m->content_len);
        }
        evbuffer_add(out, ".\r\n", 3);
        log_trace("%s session=%lu send=<body> discard=%d", cid(c), c->sid, c->discard_dot);
        arm_timer(c, c->data_timeout_ms);
        break;
    }
    case SMTP_ST_QUIT:
        send_cmd(c, "QUIT");
        arm_timer(c, c->command_timeout_ms < SMTP_QUIT_TIMEOUT_MS ? c->command_timeout_ms
                                                                  : SMTP_QUIT_TIMEOUT_MS);
        break;
    case SMTP_ST_DEAD:
        close_conn(c);
        if (c->have_batch) {
            batch_fail_rest(c);
            batch_complete(c, false);
        }
        break;
    }
}

/* Setup phase (before READY): anything going wrong moves to the next
 * address. Returns true if the event was handled here. */
static bool
react_setup_failure(struct smtp_client *c, enum smtp_event ev)
{
    switch (ev) {
    case SMTP_EV_TIMEOUT:
        if (c->state == SMTP_ST_CONNECTING)
            set_error(c, SMTP_TRANSIENT, 0, "4.4.1", "connect to %s[%s]: timed out", c->info_host,
                      c->info_ip);
        else
            set_error(c, SMTP_TRANSIENT, 0, "4.4.2", "timeout in state %s with %s[%s]",
                      state_names[c->state], c->info_host, c->info_ip);
        break;
    case SMTP_EV_CLOSED:
        set_error(c, SMTP_TRANSIENT, 0, c->state == SMTP_ST_CONNECTING ? "4.4.1" : "4.4.2", "%s",
                  c->io_error);
        break;
    case SMTP_EV_PROTOCOL:
        set_error(c, SMTP_TRANSIENT, 0, "4.4.2", "%s", c->io_error);
        break;
    default:
        return false;
    }
    c->plain_retry = false;
    host_failed(c);
    return true;
}

/* The TLS handshake failed (reason in io_error). Required TLS: next
 * address. Opportunistic TLS: once more to the same address in clear text
 * (RFC 7435), then the next address. */
static const char *
tls_status(const struct smtp_client *c)
{
    return c->tls_policy_name || cur_dane(c) ? "4.7.5" : "4.7.10";
}

static const char *
tls_prefix(const struct smtp_client *c, char *buf, size_t len)
{
    const char *name = cur_dane(c) ? "DANE" : c->tls_policy_name;
    snprintf(buf, len, "%s%s", name ? name : "", name ? ": " : "");
    return buf;
}

static void
tls_failed(struct smtp_client *c)
{
    char pfx[40];
    set_error(c, SMTP_TRANSIENT, 0, tls_status(c), "%s%s", tls_prefix(c, pfx, sizeof pfx),
              c->io_error);
    c->plain_retry = !(c->require_starttls || c->tls_verify || cur_dane(c));
    if (cur_dane(c))
        c->info_tls_failure = "tlsa-invalid";
    host_failed(c);
}

/* After EHLO/HELO: STARTTLS per policy, or READY. */
static void
after_hello(struct smtp_client *c)
{
    const struct dane_host *dh = cur_dane(c);
    if (dh)
        c->info_tls_policy = "tlsa";
    if (dh && dh->state == DANE_BOGUS) {
        /* a validated MX host whose TLSA lookup failed: maybe a downgrade */
        c->info_tls_failure = "dnssec-invalid";
        set_error(c, SMTP_TRANSIENT, 0, "4.7.5",
                  "DANE: TLSA lookup for host %s failed (DNSSEC), not used", c->info_host);
        c->plain_retry = false;
        host_failed(c);
        return;
    }
    bool want_tls = c->use_starttls || c->require_starttls || c->tls_verify || c->tls_check || dh;
    if (!c->tls_active && c->cap_starttls && want_tls && (!c->plain_retry || dh)) {
        smtp_enter(c, SMTP_ST_STARTTLS);
        return;
    }
    if (!c->tls_active && !c->cap_starttls && (c->tls_verify || c->tls_check || dh))
        c->info_tls_failure = "starttls-not-supported";
    if (!c->tls_active && (c->require_starttls || c->tls_verify || dh)) {
        char pfx[40];
        set_error(c, SMTP_TRANSIENT, 0, tls_status(c),
                  "%sTLS required but not offered by host %s[%s]", tls_prefix(c, pfx, sizeof pfx),
                  c->info_host, c->info_ip);
        c->plain_retry = false;
        host_failed(c); /* nothing more is sent on this connection */
        return;
    }
    c->plain_retry = false;
    smtp_enter(c, SMTP_ST_READY);
}

/* A reply during a transaction (RSET/MAIL/RCPT/DATA/DOT). */
static void
react_txn_reply(struct smtp_client *c)
{
    const struct smtp_message *m = &c->msgs[c->cur];
    struct rcpt_state *rs = c->res[c->cur];
    int code = c->reply_code;
    if (code == 421) {
        set_error_reply(c);
        c->err_outcome = SMTP_TRANSIENT;
        conn_failed(c);
        return;
    }
    switch (c->state) {
    case SMTP_ST_RSET:
        if (code / 100 != 2) {
            set_error(c, SMTP_TRANSIENT, code, c->reply_status, "%s", c->reply_text);
            conn_failed(c);
            return;
        }
        c->rset_needed = false;
        smtp_enter(c, SMTP_ST_MAIL);
        return;
    case SMTP_ST_MAIL:
        c->mail_ok = code / 100 == 2;
        if (!c->mail_ok) {
            for (size_t j = 0; j < m->nrcpts; j++)
                rcpt_resolve_reply(c, &rs[j]);
            c->rset_needed = true;
            if (!c->pipelined_txn) {
                msg_done(c);
                return;
            }
        }
        smtp_enter(c, SMTP_ST_RCPT);
        return;
    case SMTP_ST_RCPT:
        if (c->mail_ok) {
            struct rcpt_state *r = &rs[c->order[c->pos]];
            if (code / 100 == 2) {
                r->accepted = true;
                c->accepted++;
            } else {
                r->at_rcpt = !r->done;
                rcpt_resolve_reply(c, r);
            }
        }
        c->pos++;
        if (c->pos < c->norder) {
            smtp_enter(c, SMTP_ST_RCPT);
            return;
        }
        if (!c->pipelined_txn && c->accepted == 0) {
            c->rset_needed = true;
            msg_done(c);
            return;
        }
        smtp_enter(c, SMTP_ST_DATA);
        return;
    case SMTP_ST_DATA:
        if (code == 354) {
            c->discard_dot = !(c->mail_ok && c->accepted > 0);
            smtp_enter(c, SMTP_ST_DOT);
            return;
        }
        for (size_t k = 0; k < c->norder; k++) {
            struct rcpt_state *r = &rs[c->order[k]];
            if (r->accepted)
                rcpt_resolve(r, code / 100 == 5 ? SMTP_PERMANENT : SMTP_TRANSIENT, code,
                             c->reply_status, c->reply_text);
        }
        c->rset_needed = true;
        msg_done(c);
        return;
    case SMTP_ST_DOT:
        if (!c->discard_dot) {
            for (size_t k = 0; k < c->norder; k++) {
                struct rcpt_state *r = &rs[c->order[k]];
                if (r->accepted)
                    rcpt_resolve_reply(c, r);
            }
        }
        c->rset_needed = false;
        msg_done(c);
        return;
    default:
        PGMTA_ASSERT(!"not a transaction state");
    }
}

static void
smtp_react(struct smtp_client *c, enum smtp_event ev)
{
    log_trace("%s session=%lu state=%s event=%s", cid(c), c->sid, state_names[c->state],
              event_names[ev]);
    if (ev == SMTP_EV_FLUSHED) {
        if (c->state == SMTP_ST_DOT)
            arm_timer(c, c->data_timeout_ms); /* the body is out: wait for the reply */
        return;
    }
    if (ev == SMTP_EV_BATCH) {
        if (c->state == SMTP_ST_READY)
            batch_start(c);
        else if (c->state == SMTP_ST_DEAD)
            smtp_enter(c, SMTP_ST_DEAD); /* reports the batch with the last error */
        return;                          /* otherwise started when READY */
    }
    switch (c->state) {
    case SMTP_ST_CONNECTING:
        if (ev == SMTP_EV_CONNECTED) {
            struct sockaddr_storage ss;
            socklen_t sl = sizeof ss;
            evutil_socket_t fd = bufferevent_getfd(c->bev);
            if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
                const void *a = ss.ss_family == AF_INET6
                                    ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                                    : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
                inet_ntop(ss.ss_family, a, c->info_source, sizeof c->info_source);
            }
            smtp_enter(c, SMTP_ST_GREETING);
            return;
        }
        react_setup_failure(c, ev);
        return;
    case SMTP_ST_GREETING:
        if (ev != SMTP_EV_REPLY) {
            react_setup_failure(c, ev);
            return;
        }
        if (c->reply_code != 220) {
            set_error_reply(c);
            c->plain_retry = false;
            host_failed(c);
            return;
        }
        smtp_enter(c, SMTP_ST_EHLO);
        return;
    case SMTP_ST_EHLO:
    case SMTP_ST_HELO:
        if (ev != SMTP_EV_REPLY) {
            react_setup_failure(c, ev);
            return;
        }
        if (c->reply_code / 100 == 2) {
            if (c->state == SMTP_ST_EHLO)
                parse_ehlo(c);
            after_hello(c);
            return;
        }
        if (c->state == SMTP_ST_EHLO && c->reply_code / 100 == 5 && !c->tls_active) {
            smtp_enter(c, SMTP_ST_HELO);
            return;
        }
        set_error_reply(c);
        c->plain_retry = false;
        host_failed(c);
        return;
    case SMTP_ST_STARTTLS:
        if (ev != SMTP_EV_REPLY) {
            react_setup_failure(c, ev);
            return;
        }
        if (c->reply_code == 220) {
            if (evbuffer_get_length(bufferevent_get_input(c->bev)) > 0) {
                /* CVE-2011-0411 class: bytes after 220 would be taken as
                 * protected by TLS. */
                set_error(c, SMTP_TRANSIENT, 0, "4.4.2",
                          "protocol error: data after the 220 reply to STARTTLS from %s[%s]",
                          c->info_host, c->info_ip);
                c->plain_retry = false;
                host_failed(c);
                return;
            }
            if (!tls_start(c)) {
                tls_failed(c);
                return;
            }
            smtp_enter(c, SMTP_ST_TLS_HANDSHAKE);
            return;
        }
        if (c->tls_verify || c->tls_check || cur_dane(c))
            c->info_tls_failure = "starttls-not-supported";
        if (c->reply_code == 421 || c->require_starttls || c->tls_verify || cur_dane(c)) {
            set_error_reply(c);
            char pfx[40];
            if (c->reply_code != 421)
                set_error(c, SMTP_TRANSIENT, c->reply_code, tls_status(c),
                          "%sTLS required but STARTTLS refused by host %s[%s]: %s",
                          tls_prefix(c, pfx, sizeof pfx), c->info_host, c->info_ip, c->reply_text);
            host_failed(c);
            return;
        }
        smtp_enter(c, SMTP_ST_READY); /* opportunistic: carry on in clear text */
        return;
    case SMTP_ST_TLS_HANDSHAKE:
        if (ev == SMTP_EV_TLS_DONE) {
            c->tls_active = true;
            tls_client_info(c->bev, c->info_tls_protocol, sizeof c->info_tls_protocol,
                            c->info_tls_cipher, sizeof c->info_tls_cipher);
            if (c->tls_check && !c->tls_verify && !cur_dane(c)) /* DANE verified it */
                c->info_tls_failure = tls_client_failure_type(c->bev);
            log_debug("%s session=%lu tls host=%s protocol=%s cipher=%s verified=%d", cid(c),
                      c->sid, c->info_host, c->info_tls_protocol, c->info_tls_cipher,
                      c->tls_verify);
            smtp_enter(c, SMTP_ST_EHLO); /* capabilities are re-read under TLS */
            return;
        }
        if (ev == SMTP_EV_TLS_FAILED || ev == SMTP_EV_TIMEOUT || ev == SMTP_EV_CLOSED ||
            ev == SMTP_EV_PROTOCOL) {
            if (ev == SMTP_EV_TIMEOUT)
                snprintf(c->io_error, sizeof c->io_error, "TLS handshake with %s[%s] timed out",
                         c->info_host, c->info_ip);
            tls_failed(c);
            return;
        }
        return;
    case SMTP_ST_READY:
        /* Nothing is expected: an unsolicited reply (e.g. 421 on idle
         * timeout) or the end of the connection. */
        if (ev == SMTP_EV_REPLY)
            set_error(c, SMTP_TRANSIENT, c->reply_code, "4.4.2", "%s", c->reply_text);
        else if (ev == SMTP_EV_CLOSED || ev == SMTP_EV_PROTOCOL)
            set_error(c, SMTP_TRANSIENT, 0, "4.4.2", "%s", c->io_error);
        else
            return;
        conn_failed(c);
        return;
    case SMTP_ST_RSET:
    case SMTP_ST_MAIL:
    case SMTP_ST_RCPT:
    case SMTP_ST_DATA:
    case SMTP_ST_DOT:
        switch (ev) {
        case SMTP_EV_REPLY:
            react_txn_reply(c);
            return;
        case SMTP_EV_TIMEOUT:
            set_error(c, SMTP_TRANSIENT, 0, "4.4.2",
                      "timeout waiting for the reply to %s from %s[%s]",
                      c->state == SMTP_ST_DOT ? "end of data" : state_names[c->state], c->info_host,
                      c->info_ip);
            conn_failed(c);
            return;
        case SMTP_EV_CLOSED:
        case SMTP_EV_PROTOCOL:
            set_error(c, SMTP_TRANSIENT, 0, "4.4.2", "%s", c->io_error);
            conn_failed(c);
            return;
        default:
            return;
        }
    case SMTP_ST_QUIT:
        if (ev == SMTP_EV_REPLY || ev == SMTP_EV_TIMEOUT || ev == SMTP_EV_CLOSED ||
            ev == SMTP_EV_PROTOCOL)
            schedule_free(c);
        return;
    case SMTP_ST_DEAD:
        return;
    }
}

/* ---------------------------------------------------------------------------
 * Public interface
 */

struct smtp_client *
smtp_client_new(struct event_base *base, const struct smtp_client_config *cfg,
                const struct dns_host *hosts, size_t nhosts)
{
    struct smtp_client *c = xcalloc(1, sizeof *c);
    c->sid = smtp_next_sid++;
    c->base = base;
    c->id = xstrdup(cfg->id ? cfg->id : "smtp");
    /* A HELO name is one token of at most 255 bytes. */
    const char *helo = cfg->helo_name && *cfg->helo_name ? cfg->helo_name : "localhost";
    size_t hl = 0;
    while (hl < 255 && (unsigned char)helo[hl] > ' ' && helo[hl] != 0x7f)
        hl++;
    c->helo_name = xstrndup(helo, hl ? hl : 0);
    if (!hl) {
        free(c->helo_name);
        c->helo_name = xstrdup("localhost");
    }
    c->tls_ca_file = cfg->tls_ca_file ? xstrdup(cfg->tls_ca_file) : NULL;
    c->tls_policy_name = cfg->tls_policy_name ? xstrdup(cfg->tls_policy_name) : NULL;
    if (cfg->source && cfg->source_len <= sizeof c->source) {
        memcpy(&c->source, cfg->source, cfg->source_len);
        c->source_len = cfg->source_len;
    }
    c->use_starttls = cfg->use_starttls;
    c->require_starttls = cfg->require_starttls;
    c->tls_verify = cfg->tls_verify;
    c->tls_check = cfg->tls_check;
    c->connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 30000;
    c->command_timeout_ms = cfg->command_timeout_ms ? cfg->command_timeout_ms : 300000;
    c->data_timeout_ms = cfg->data_timeout_ms ? cfg->data_timeout_ms : 600000;
    c->hosts = xcalloc(nhosts ? nhosts : 1, sizeof *c->hosts);
    c->nhosts = nhosts;
    for (size_t i = 0; i < nhosts; i++) {
        c->hosts[i].name = xstrdup(hosts[i].name ? hosts[i].name : "");
        c->hosts[i].preference = hosts[i].preference;
        c->hosts[i].naddrs = hosts[i].naddrs;
        c->hosts[i].addrs = xcalloc(hosts[i].naddrs ? hosts[i].naddrs : 1, sizeof(struct dns_addr));
        if (hosts[i].naddrs)
            memcpy(c->hosts[i].addrs, hosts[i].addrs, hosts[i].naddrs * sizeof(struct dns_addr));
    }
    buf_init(&c->rtext);
    c->reply_text = xstrdup("");
    c->timer = evtimer_new(base, on_timer, c);
    c->notify = evtimer_new(base, on_notify, c);
    c->free_ev = evtimer_new(base, on_free, c);
    PGMTA_ASSERT(c->timer && c->notify && c->free_ev);
    set_error(c, SMTP_TRANSIENT, 0, "4.4.1", "no address to connect to");
    c->state = SMTP_ST_CONNECTING;
    log_trace("%s session=%lu new hosts=%zu", cid(c), c->sid, nhosts);
    /* first address: skip hosts without addresses */
    c->host_i = 0;
    c->addr_i = 0;
    while (c->host_i < c->nhosts && c->hosts[c->host_i].naddrs == 0)
        c->host_i++;
    connect_from_current(c);
    return c;
}

void
smtp_client_send(struct smtp_client *c, const struct smtp_message *messages, size_t nmessages,
                 smtp_batch_cb cb, void *arg)
{
    PGMTA_ASSERT(!c->have_batch && !c->freeing);
    c->have_batch = true;
    c->batch_started = false;
    c->msgs = messages;
    c->nmsgs = nmessages;
    c->cb = cb;
    c->cb_arg = arg;
    c->res = xcalloc(nmessages ? nmessages : 1, sizeof *c->res);
    for (size_t i = 0; i < nmessages; i++)
        c->res[i] = xcalloc(messages[i].nrcpts ? messages[i].nrcpts : 1, sizeof **c->res);
    /* Started from the loop, never from inside the caller's stack: the
     * callback can then never run before this returns. */
    event_active(c->notify, EV_TIMEOUT, 0);
}

void
smtp_client_quit(struct smtp_client *c)
{
    if (c->freeing)
        return;
    if (c->state == SMTP_ST_READY && c->bev && !c->have_batch) {
        c->cb = NULL;
        smtp_enter(c, SMTP_ST_QUIT);
        return;
    }
    schedule_free(c);
}

void
smtp_client_free(struct smtp_client *c)
{
    schedule_free(c);
}
