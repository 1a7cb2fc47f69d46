/* smtp_server: the SMTP injection listener, run by each smtp-in process.
 *
 * One state machine per session: session_enter() performs the entry
 * actions of a state (arm the timer, log the transition), session_react()
 * handles one named event (input, timeout, closed, TLS done/failed, enqueue
 * result, output flushed). libevent callbacks only translate I/O into these
 * events.
 *
 * Ownership: the server owns its listeners, its settings (copied from the
 * configuration, replaced whole on reload; a session reads the current
 * ones), the batcher (smtp_in_batch.c, which owns the database
 * connection) and the list of sessions. A session owns
 * its bufferevent (the socket, or the OpenSSL filter on top of it), its
 * timers and the message being received. Sessions are freed by a deferred
 * event at the end of the loop turn, never inside their own callbacks. An
 * enqueue result finds its session by id and sequence number, so a result
 * for a session that has gone or timed out is only logged. Password checks
 * run on the worker threads of the server's auth pool (smtp_in_auth_pool.c,
 * started at the first AUTH) and their results find their session by id
 * too; the failed-AUTH table is the node's, shared by its smtp-in processes
 * (smtp_in_auth.c), or the server's own without one. The parsers
 * (commands, paths, DATA, headers) are in smtp_server_parse.c. */
#include "smtp_server.h"

#include "smtp_in_auth.h"
#include "smtp_in_auth_pool.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "db.h"
#include "log.h"
#include "inbound.h"
#include "smtp_in_batch.h"
#include "smtp_in_settings.h"

/* Reading stops while this much input is buffered and not yet processed
 * (e.g. pipelined commands while an enqueue is in flight). */
#define SESSION_READ_HIGH_WATER (64 * 1024)
/* Output backpressure: no command is read while more than this much reply
 * text is unsent (a client that sends and never reads); reading resumes
 * once the output has drained below the low mark. */
#define SESSION_WRITE_HIGH_WATER (64 * 1024)
#define SESSION_WRITE_LOW_WATER (16 * 1024)
/* Accepting pauses this long after EMFILE, ENFILE, ENOBUFS or ENOMEM. */
#define ACCEPT_PAUSE_MS 500
/* An over-long command line is skipped up to its end; one that goes on for
 * longer than this closes the session. */
#define SESSION_SKIP_LIMIT (64 * 1024)
/* Protocol errors tolerated per session before it is closed. */
#define SESSION_MAX_ERRORS 20
#define SESSION_TLS_TIMEOUT_MS 30000
#define SESSION_ENQUEUE_TIMEOUT_MS 120000
#define SESSION_CLOSE_WAIT_MS 2000
#define SESSION_CLOSE_POLL_MS 20

/* ---------------------------------------------------------------------------
 * Server and settings
 */

struct listener {
    char *addr;
    struct evconnlistener *lev;
};

struct session;

struct smtp_server {
    struct event_base *base;
    struct smtp_in_batch *batch; /* group commit; owns the database connection */
    struct smtp_in_settings *set;
    struct listener *listeners;
    size_t nlisteners;
    struct session *sessions; /* doubly linked */
    size_t nsessions;
    size_t nrefused;             /* sessions told 421 at connect, closing */
    struct event *accept_resume; /* re-enables accepting after EMFILE and the like */
    bool accept_paused;
    unsigned long accept_pauses;
    unsigned long next_sid;
    bool stopping;                       /* no new sessions; idle ones are told 421 */
    struct smtp_in_auth_table *auth;     /* failed AUTH per client address */
    bool auth_owned;                     /* auth is this server's, not the node's */
    struct smtp_in_auth_pool *auth_pool; /* password checks, from the first AUTH */
    bool inbound;                        /* the listener for bounces and reports */
    struct inbound *in;                  /* inbound: parses and stores (inbound.c) */
};

/* ---------------------------------------------------------------------------
 * Sessions
 */

enum session_state {
    SS_CMD = 0,         /* waiting for a command */
    SS_AUTH_PLAIN,      /* AUTH PLAIN: waiting for the response */
    SS_AUTH_LOGIN_USER, /* AUTH LOGIN: waiting for the user name */
    SS_AUTH_LOGIN_PASS, /* AUTH LOGIN: waiting for the password */
    SS_AUTH_CHECK,      /* the password being checked (auth pool) */
    SS_AUTH_DELAY,      /* AUTH answer delayed: not reading, 535 (or 235) when the timer fires */
    SS_DATA,            /* reading message content */
    SS_TLS,             /* TLS handshake after STARTTLS */
    SS_ENQUEUE,         /* waiting for the message's batch to commit */
    SS_CLOSING,         /* last reply being flushed */
    SS_DEAD,            /* freed at the end of the loop turn */
};

static const char *const state_names[] = {
    "cmd",  "auth-plain", "auth-login-user", "auth-login-pass", "auth-check", "auth-delay",
    "data", "tls",        "enqueue",         "closing",         "dead",
};

enum session_event {
    SE_INPUT = 0,  /* bytes arrived */
    SE_TIMEOUT,    /* the state's timer expired */
    SE_CLOSED,     /* EOF or error from the peer */
    SE_TLS_DONE,   /* handshake completed */
    SE_TLS_FAILED, /* handshake failed */
    SE_ENQUEUED,   /* the enqueue result is in s->result */
    SE_FLUSHED,    /* output buffer drained */
};

static const char *const event_names[] = {
    "input", "timeout", "closed", "tls-done", "tls-failed", "enqueued", "flushed",
};

struct session {
    unsigned long id;
    struct smtp_server *srv;
    struct session *prev, *next;
    enum session_state state;
    struct bufferevent *bev;
    struct event *timer;
    struct event *free_ev;

    char ip[INET6_ADDRSTRLEN];
    int family;
    unsigned char addr[16];
    bool allowed_by_addr;
    bool tls;
    char *auth_user;
    char *helo;
    bool esmtp;
    unsigned errors;
    unsigned auth_failures; /* in this session */
    uint64_t auth_delay_ms; /* of the answer being delayed (SS_AUTH_DELAY) */
    char *auth_pending;     /* the user whose password is being checked */
    bool auth_ok;           /* the delayed answer is a success (SS_AUTH_DELAY) */
    bool skipping;          /* inside an over-long command line */
    size_t skipped;
    uint64_t close_deadline;

    /* the transaction */
    bool have_mail;
    char *mail_from;
    char **rcpts;
    size_t nrcpts;
    struct smtp_server_mail_dsn mail_dsn;
    signed char *notify; /* per recipient, -1 none (NULL until one has NOTIFY) */
    char **orcpt;        /* per recipient or NULL (NULL until one has ORCPT) */
    struct buf content;
    size_t header_start; /* where the client's content begins (after Received) */
    struct smtp_server_data data;
    uint64_t data_deadline; /* monotonic ms: the end of DATA at the latest */

    /* the enqueue in flight */
    unsigned long seq;
    const struct smtp_in_result *result; /* valid during SE_ENQUEUED only */
    bool read_paused;                    /* output backpressure */
    bool refused;                        /* told 421 at connect */
    char auth_login_name[256];
};

static void session_enter(struct session *s, enum session_state st);
static void session_react(struct session *s, enum session_event ev);
static void session_process_input(struct session *s);
static void session_setup_bev(struct session *s);

static void reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
reply(struct session *s, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1;
    log_debug("smtp-in session=%lu reply=\"%.*s\"", s->id, n, line);
    struct evbuffer *out = bufferevent_get_output(s->bev);
    evbuffer_add(out, line, (size_t)n);
    evbuffer_add(out, "\r\n", 2);
}

static void
txn_reset(struct session *s)
{
    s->have_mail = false;
    free(s->mail_from);
    s->mail_from = NULL;
    for (size_t i = 0; i < s->nrcpts; i++)
        free(s->rcpts[i]);
    free(s->rcpts);
    s->rcpts = NULL;
    if (s->orcpt)
        for (size_t i = 0; i < s->nrcpts; i++)
            free(s->orcpt[i]);
    free(s->orcpt);
    s->orcpt = NULL;
    free(s->notify);
    s->notify = NULL;
    s->nrcpts = 0;
    buf_free(&s->content);
    buf_init(&s->content);
}

static void
session_free(struct session *s)
{
    struct smtp_server *srv = s->srv;
    if (s->prev)
        s->prev->next = s->next;
    else
        srv->sessions = s->next;
    if (s->next)
        s->next->prev = s->prev;
    srv->nsessions--;
    if (s->refused)
        srv->nrefused--;
    txn_reset(s);
    if (s->bev)
        bufferevent_free(s->bev);
    event_free(s->timer);
    event_free(s->free_ev);
    free(s->auth_user);
    free(s->auth_pending);
    free(s->helo);
    free(s);
}

static void
on_free(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_free(arg);
}

static void
arm_timer(struct session *s, uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(s->timer, &tv);
}

/* DATA: the silence timeout, but never beyond the deadline for the whole
 * of DATA (a client trickling a byte at a time is cut off all the same). */
static void
arm_data_timer(struct session *s)
{
    uint64_t now = util_now_ms();
    uint64_t left = s->data_deadline > now ? s->data_deadline - now : 0;
    arm_timer(s, left < s->srv->set->data_ms ? left : s->srv->set->data_ms);
}

static bool
session_allowed(const struct session *s)
{
    return s->allowed_by_addr || s->auth_user != NULL;
}

static void
session_enter(struct session *s, enum session_state st)
{
    const struct smtp_in_settings *set = s->srv->set;
    log_trace("smtp-in session=%lu state=%s->%s", s->id, state_names[s->state], state_names[st]);
    s->state = st;
    evtimer_del(s->timer);
    switch (st) {
    case SS_CMD:
    case SS_AUTH_PLAIN:
    case SS_AUTH_LOGIN_USER:
    case SS_AUTH_LOGIN_PASS:
        arm_timer(s, set->idle_ms);
        break;
    case SS_DATA:
        s->data_deadline = util_now_ms() + set->data_max_ms;
        arm_data_timer(s);
        break;
    case SS_AUTH_CHECK:
        /* Input is buffered, not processed, until the result is in (so a
         * client that goes away meanwhile is seen and its session freed);
         * the check always ends, so no timer. */
        break;
    case SS_AUTH_DELAY:
        /* Nothing is read, so nothing pipelined behind the failed attempt
         * is answered before the delay is over. */
        bufferevent_disable(s->bev, EV_READ);
        arm_timer(s, s->auth_delay_ms);
        break;
    case SS_TLS:
        arm_timer(s, SESSION_TLS_TIMEOUT_MS);
        break;
    case SS_ENQUEUE:
        arm_timer(s, SESSION_ENQUEUE_TIMEOUT_MS);
        break;
    case SS_CLOSING:
        /* Nothing more is read; the last reply goes out, then the socket
         * closes (bounded by SESSION_CLOSE_WAIT_MS). */
        bufferevent_disable(s->bev, EV_READ);
        s->close_deadline = util_now_ms() + SESSION_CLOSE_WAIT_MS;
        arm_timer(s, 0);
        break;
    case SS_DEAD:
        bufferevent_disable(s->bev, EV_READ | EV_WRITE);
        event_active(s->free_ev, EV_TIMEOUT, 0);
        break;
    }
}

/* Has every byte of output left the process? With TLS, the filter hands
 * its records to the socket bufferevent below it. */
static bool
output_flushed(struct session *s)
{
    if (evbuffer_get_length(bufferevent_get_output(s->bev)) > 0)
        return false;
    struct bufferevent *under = bufferevent_get_underlying(s->bev);
    return !under || evbuffer_get_length(bufferevent_get_output(under)) == 0;
}

static void
session_close(struct session *s, const char *why)
{
    log_info("smtp-in session=%lu from=%s event=close reason=%s", s->id, s->ip, why);
    session_enter(s, SS_CLOSING);
}

static void
protocol_error(struct session *s)
{
    if (++s->errors >= SESSION_MAX_ERRORS) {
        reply(s, "421 4.7.0 %s Too many errors, closing connection", s->srv->set->hostname);
        session_close(s, "too-many-errors");
    }
}

/* ---- the enqueue -------------------------------------------------------- */

/* A result from the batcher; it finds its session by id and sequence, so a
 * session that went away or timed out meanwhile is only logged. */
static void
enqueue_done(void *arg, unsigned long sid, unsigned long seq, const struct smtp_in_result *r)
{
    struct smtp_server *srv = arg;
    struct session *s = srv->sessions;
    while (s && s->id != sid)
        s = s->next;
    if (!s || s->state != SS_ENQUEUE || s->seq != seq) {
        if (r->status == SMTP_IN_STORED)
            log_warn("smtp-in session=%lu event=stored-without-reply msg=%s rcpts=%zu size=%zu",
                     sid, r->id, r->nrcpts, r->size);
        return;
    }
    s->result = r;
    session_react(s, SE_ENQUEUED);
    s->result = NULL;
}

static void
enqueue_result(struct session *s)
{
    const struct smtp_in_result *r = s->result;
    if (r->status == SMTP_IN_STORED && s->srv->inbound) {
        reply(s, "250 2.0.0 Ok: %s", r->id);
        log_info("smtp-in inbound session=%lu from=%s outcome=\"%s\" size=%zu", s->id, s->ip, r->id,
                 r->size);
    } else if (r->status == SMTP_IN_STORED) {
        if (strcmp(r->id, SMTP_IN_ID_SUPPRESSED) == 0)
            reply(s, "250 2.0.0 Ok: not queued, every recipient is suppressed");
        else
            reply(s, "250 2.0.0 Ok: queued as %s", r->id);
        log_info("smtp-in session=%lu from=%s msg=%s rcpts=%zu size=%zu batch=%zu%s%s", s->id,
                 s->ip, r->id, r->nrcpts, r->size, r->batch, s->auth_user ? " user=" : "",
                 s->auth_user ? s->auth_user : "");
    } else if (r->status == SMTP_IN_REFUSED) {
        const char *state = r->sqlstate;
        /* Data exceptions (22xxx), integrity (23xxx), program limits
         * (54000: e.g. an index row too large) and raised errors (P0001)
         * are about this message: refused for good. Anything else may pass:
         * try again later. */
        if (state && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
                      strcmp(state, "54000") == 0 || strcmp(state, "P0001") == 0)) {
            reply(s, "554 5.6.0 Message refused: %s", r->error);
            log_info("smtp-in session=%lu from=%s event=refused sqlstate=%s error=\"%s\"", s->id,
                     s->ip, state, r->error);
        } else {
            reply(s, "451 4.3.0 Temporary failure, try again later");
            log_warn("smtp-in session=%lu from=%s event=enqueue-failed sqlstate=%s error=\"%s\"",
                     s->id, s->ip, state ? state : "-", r->error);
        }
    } else {
        reply(s, "451 4.3.0 Database unavailable, try again later");
        log_warn("smtp-in session=%lu from=%s event=enqueue-failed error=\"%s\"", s->id, s->ip,
                 r->error ? r->error : "connection lost");
    }
    txn_reset(s);
}

/* Hands the message to the batcher. The session is in SS_ENQUEUE before
 * that, so a result (even an immediate failure, delivered from the next
 * loop turn) always finds it waiting. */
static void
enqueue_start(struct session *s, char *job_id, char *vmta)
{
    if (!s->srv->batch) {
        free(job_id);
        free(vmta);
        reply(s, "451 4.3.0 Database unavailable, try again later");
        log_warn("smtp-in session=%lu from=%s event=enqueue-failed error=\"no database\"", s->id,
                 s->ip);
        txn_reset(s);
        session_enter(s, SS_CMD);
        return;
    }
    struct smtp_in_msg m = {
        .mail_from = s->mail_from,
        .rcpts = s->rcpts,
        .nrcpts = s->nrcpts,
        .content = s->content,
        .job_id = job_id,
        .vmta = vmta,
        .envid = s->mail_dsn.envid[0] ? xstrdup(s->mail_dsn.envid) : NULL,
        .ret = s->mail_dsn.ret,
        .notify = s->notify,
        .orcpt = s->orcpt,
        .sid = s->id,
        .seq = ++s->seq,
    };
    s->mail_from = NULL;
    s->rcpts = NULL;
    s->notify = NULL;
    s->orcpt = NULL;
    s->nrcpts = 0;
    buf_init(&s->content);
    session_enter(s, SS_ENQUEUE);
    smtp_in_batch_add(s->srv->batch, &m);
}

/* An inbound report to parse and store; the reply waits for the commit,
 * as an enqueue's does. */
static void
inbound_start(struct session *s)
{
    struct inbound_msg m = {
        .mail_from = s->mail_from,
        .rcpts = s->rcpts,
        .nrcpts = s->nrcpts,
        .client_ip = s->ip,
        .content = s->content.data ? s->content.data : "",
        .len = s->content.len,
        .sid = s->id,
        .seq = ++s->seq,
    };
    session_enter(s, SS_ENQUEUE);
    inbound_store(s->srv->in, &m);
    buf_free(&s->content);
    buf_init(&s->content);
}

/* ---- DATA --------------------------------------------------------------- */

static void
received_header(struct session *s)
{
    const struct smtp_in_settings *set = s->srv->set;
    char date[64];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
    const char *proto = !s->esmtp ? "SMTP"
                        : s->tls  ? (s->auth_user ? "ESMTPSA" : "ESMTPS")
                                  : (s->auth_user ? "ESMTPA" : "ESMTP");
    buf_printf(&s->content, "Received: from %s (%s%s%s)\r\n\tby %s (pgmta) with %s;\r\n\t%s\r\n",
               s->helo ? s->helo : "unknown", s->family == AF_INET6 ? "[IPv6:" : "[", s->ip, "]",
               set->hostname, proto, date);
    s->header_start = s->content.len;
}

static void
data_finished(struct session *s)
{
    if (s->data.overflow) {
        reply(s, "552 5.3.4 Message size exceeds fixed maximum message size");
        log_info("smtp-in session=%lu from=%s event=too-big size=%llu max=%u", s->id, s->ip,
                 (unsigned long long)s->data.total, s->srv->set->max_size);
        txn_reset(s);
        session_enter(s, SS_CMD);
        return;
    }
    if (smtp_server_hop_count(s->content.data + s->header_start, s->content.len - s->header_start,
                              s->srv->set->hop_limit) >= s->srv->set->hop_limit) {
        reply(s, "554 5.4.6 Too many hops (%u Received: fields), mail loop?",
              s->srv->set->hop_limit);
        log_info("smtp-in session=%lu from=%s event=refused reason=too-many-hops limit=%u", s->id,
                 s->ip, s->srv->set->hop_limit);
        txn_reset(s);
        session_enter(s, SS_CMD);
        return;
    }
    if (s->srv->inbound) {
        inbound_start(s);
        return;
    }
    char *job = NULL, *vmta = NULL;
    smtp_server_take_headers(&s->content, s->header_start, &job, &vmta);
    if (vmta && *vmta && !smtp_in_settings_vmta_known(s->srv->set, vmta)) {
        /* never sent from the default address instead */
        reply(s, "554 5.6.0 Message refused: X-Virtual-MTA names no configured virtual MTA or "
                 "pool");
        log_info("smtp-in session=%lu from=%s event=refused reason=unknown-vmta vmta=\"%s\"", s->id,
                 s->ip, vmta);
        free(job);
        free(vmta);
        txn_reset(s);
        session_enter(s, SS_CMD);
        return;
    }
    enqueue_start(s, job, vmta);
}

/* ---- commands ----------------------------------------------------------- */

static void
cmd_ehlo(struct session *s, const struct smtp_server_cmd *c, bool esmtp)
{
    const struct smtp_in_settings *set = s->srv->set;
    if (c->arglen == 0 || memchr(c->arg, ' ', c->arglen) || c->arglen > 255) {
        reply(s, "501 5.5.4 Syntax: %s hostname", esmtp ? "EHLO" : "HELO");
        protocol_error(s);
        return;
    }
    free(s->helo);
    s->helo = xstrndup(c->arg, c->arglen);
    s->esmtp = esmtp;
    txn_reset(s);
    if (!esmtp) {
        reply(s, "250 %s", set->hostname);
        return;
    }
    const char *caps[8];
    char size[32];
    size_t n = 0;
    snprintf(size, sizeof size, "SIZE %u", set->max_size);
    caps[n++] = "PIPELINING";
    caps[n++] = size;
    caps[n++] = "8BITMIME";
    caps[n++] = "ENHANCEDSTATUSCODES";
    caps[n++] = "DSN";
    if (set->tls && !s->tls)
        caps[n++] = "STARTTLS";
    if (s->tls && set->nusers > 0)
        caps[n++] = "AUTH PLAIN LOGIN";
    reply(s, "250-%s Hello %s [%s]", set->hostname, s->helo, s->ip);
    for (size_t i = 0; i < n; i++)
        reply(s, "250%c%s", i + 1 < n ? '-' : ' ', caps[i]);
}

static void
cmd_mail(struct session *s, const struct smtp_server_cmd *c)
{
    if (!s->helo) {
        reply(s, "503 5.5.1 Error: send HELO/EHLO first");
        protocol_error(s);
        return;
    }
    if (s->have_mail) {
        reply(s, "503 5.5.1 Error: nested MAIL command");
        protocol_error(s);
        return;
    }
    char addr[SMTP_SERVER_MAX_ADDR];
    const char *params;
    const char *err = smtp_server_parse_path(c->arg, c->arglen, true, addr, sizeof addr, &params);
    uint64_t declared = 0;
    if (!err) {
        /* params points into the line, which ends at arg + arglen. */
        char p[SMTP_SERVER_MAX_LINE + 1];
        size_t plen = (size_t)(c->arg + c->arglen - params);
        memcpy(p, params, plen);
        p[plen] = '\0';
        err = smtp_server_mail_params(p, s->srv->set->max_size, &declared, &s->mail_dsn);
    }
    if (err) {
        reply(s, "%s", err);
        protocol_error(s);
        return;
    }
    s->have_mail = true;
    s->mail_from = xstrdup(addr);
    reply(s, "250 2.1.0 Ok");
}

static void
cmd_rcpt(struct session *s, const struct smtp_server_cmd *c)
{
    if (!s->have_mail) {
        reply(s, "503 5.5.1 Error: need MAIL command");
        protocol_error(s);
        return;
    }
    char addr[SMTP_SERVER_MAX_ADDR];
    const char *params;
    const char *err = smtp_server_parse_path(c->arg, c->arglen, false, addr, sizeof addr, &params);
    if (err) {
        reply(s, "%s", err);
        protocol_error(s);
        return;
    }
    struct smtp_server_rcpt_dsn dsn;
    char p[SMTP_SERVER_MAX_LINE + 1];
    size_t plen = (size_t)(c->arg + c->arglen - params);
    memcpy(p, params, plen);
    p[plen] = '\0';
    err = smtp_server_rcpt_params(p, &dsn);
    if (err) {
        reply(s, "%s", err);
        return;
    }
    /* The inbound listener takes mail for its own domains only, from
     * anyone; no relay either way. */
    if (s->srv->inbound && !inbound_accepts(s->srv->in, addr)) {
        reply(s, "550 5.7.1 <%s>: Relay access denied", addr);
        log_info("smtp-in inbound session=%lu from=%s event=relay-denied rcpt=\"%s\"", s->id, s->ip,
                 addr);
        return;
    }
    /* No open relay: a client neither in the allow list nor authenticated
     * cannot inject, whatever the address looks like. */
    if (!s->srv->inbound && !session_allowed(s)) {
        reply(s, "550 5.7.1 <%s>: Relay access denied", addr);
        log_info("smtp-in session=%lu from=%s event=relay-denied rcpt=\"%s\"", s->id, s->ip, addr);
        return;
    }
    if (s->nrcpts >= s->srv->set->max_rcpt) {
        reply(s, "452 4.5.3 Too many recipients");
        return;
    }
    s->rcpts = xrealloc(s->rcpts, (s->nrcpts + 1) * sizeof *s->rcpts);
    /* NOTIFY and ORCPT arrays exist once a recipient has one; the earlier
     * recipients have none. */
    if (dsn.notify >= 0 || s->notify) {
        bool first = !s->notify;
        s->notify = xrealloc(s->notify, (s->nrcpts + 1) * sizeof *s->notify);
        if (first)
            memset(s->notify, -1, s->nrcpts * sizeof *s->notify);
        s->notify[s->nrcpts] = (signed char)dsn.notify;
    }
    if (dsn.orcpt[0] || s->orcpt) {
        bool first = !s->orcpt;
        s->orcpt = xrealloc(s->orcpt, (s->nrcpts + 1) * sizeof *s->orcpt);
        if (first)
            memset(s->orcpt, 0, s->nrcpts * sizeof *s->orcpt);
        s->orcpt[s->nrcpts] = dsn.orcpt[0] ? xstrdup(dsn.orcpt) : NULL;
    }
    s->rcpts[s->nrcpts++] = xstrdup(addr);
    reply(s, "250 2.1.5 Ok");
}

static void
cmd_data(struct session *s, const struct smtp_server_cmd *c)
{
    if (c->arglen) {
        reply(s, "501 5.5.4 Syntax: DATA");
        protocol_error(s);
        return;
    }
    if (!s->have_mail) {
        reply(s, "503 5.5.1 Error: need MAIL command");
        protocol_error(s);
        return;
    }
    if (s->nrcpts == 0) {
        reply(s, "554 5.5.1 Error: no valid recipients");
        return;
    }
    buf_free(&s->content);
    buf_init(&s->content);
    received_header(s);
    smtp_server_data_init(&s->data, &s->content, s->srv->set->max_size);
    reply(s, "354 End data with <CR><LF>.<CR><LF>");
    session_enter(s, SS_DATA);
}

static void
cmd_starttls(struct session *s, const struct smtp_server_cmd *c)
{
    const struct smtp_in_settings *set = s->srv->set;
    if (!set->tls) {
        reply(s, "502 5.5.1 Error: STARTTLS not available");
        protocol_error(s);
        return;
    }
    if (s->tls) {
        reply(s, "503 5.5.1 Error: TLS already active");
        protocol_error(s);
        return;
    }
    if (c->arglen) {
        reply(s, "501 5.5.4 Syntax: STARTTLS");
        protocol_error(s);
        return;
    }
    SSL *ssl = SSL_new(set->tls);
    if (!ssl) {
        reply(s, "454 4.7.0 TLS not available due to temporary reason");
        return;
    }
    reply(s, "220 2.0.0 Ready to start TLS");
    /* CVE-2011-0411: whatever the client sent after STARTTLS in clear text
     * is thrown away, never read as if it had come over TLS. */
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t junk = evbuffer_get_length(in);
    if (junk) {
        evbuffer_drain(in, junk);
        log_info("smtp-in session=%lu from=%s event=starttls-discard bytes=%zu", s->id, s->ip,
                 junk);
    }
    struct bufferevent *f = bufferevent_openssl_filter_new(
        s->srv->base, s->bev, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
    if (!f) {
        SSL_free(ssl);
        session_close(s, "tls-filter-failed");
        return;
    }
    bufferevent_openssl_set_allow_dirty_shutdown(f, 1);
    s->bev = f;
    session_setup_bev(s);
    txn_reset(s);
    free(s->helo);
    s->helo = NULL;
    s->esmtp = false;
    session_enter(s, SS_TLS);
}

/* A failed AUTH: the 535 goes out after a delay that doubles with every
 * failure of the client's address (across its sessions, see smtp_in_auth.h);
 * the session is closed after max_auth_failures (see README, Security). */
static void
auth_failed(struct session *s, const char *user)
{
    const struct smtp_in_settings *set = s->srv->set;
    s->auth_failures++;
    unsigned n = smtp_in_auth_failed(s->srv->auth, s->family, s->addr, util_now_ms());
    s->auth_delay_ms = smtp_in_auth_delay_ms(set->auth_delay_ms, n);
    log_info("smtp-in session=%lu from=%s event=auth-failed user=\"%s\" failures=%u "
             "address-failures=%u delay=%llums",
             s->id, s->ip, user, s->auth_failures, n, (unsigned long long)s->auth_delay_ms);
    session_enter(s, SS_AUTH_DELAY);
}

/* A successful AUTH: 235 and the session goes on as the user. */
static void
auth_succeeded(struct session *s, char *user)
{
    s->auth_user = user;
    reply(s, "235 2.7.0 Authentication successful");
    log_info("smtp-in session=%lu from=%s event=auth user=\"%s\"", s->id, s->ip, user);
    session_enter(s, SS_CMD);
    if (!s->read_paused)
        bufferevent_enable(s->bev, EV_READ);
    session_process_input(s);
}

/* The delay of an AUTH answer is over: 235 for a success; else 535, and the
 * session goes on or, after too many failures, is closed. */
static void
auth_delay_done(struct session *s)
{
    const struct smtp_in_settings *set = s->srv->set;
    if (s->auth_ok) {
        s->auth_ok = false;
        char *user = s->auth_pending;
        s->auth_pending = NULL;
        auth_succeeded(s, user);
        return;
    }
    reply(s, "535 5.7.8 Authentication credentials invalid");
    if (s->auth_failures >= set->max_auth_failures) {
        reply(s, "421 4.7.0 %s Too many authentication failures, closing connection",
              set->hostname);
        session_close(s, "too-many-auth-failures");
        return;
    }
    session_enter(s, SS_CMD);
    if (!s->read_paused)
        bufferevent_enable(s->bev, EV_READ);
    session_process_input(s);
}

/* A check is done (in the loop, from the auth pool): the session, if it is
 * still waiting for it, replies 235 or, after a delay, 535. A failure
 * counts for the client's address even when the session has gone. */
static void
auth_checked(const struct smtp_in_auth_req *req, bool ok, void *arg)
{
    struct smtp_server *srv = arg;
    struct session *s = srv->sessions;
    while (s && s->id != req->id)
        s = s->next;
    if (!s || s->state != SS_AUTH_CHECK) {
        unsigned n = ok ? 0 : smtp_in_auth_failed(srv->auth, req->family, req->addr, util_now_ms());
        log_info("smtp-in session=%lu event=auth-result-dropped ok=%s address-failures=%u", req->id,
                 ok ? "yes" : "no", n);
        return;
    }
    char *user = s->auth_pending;
    s->auth_pending = NULL;
    if (ok) {
        /* From an address with failures, a success waits as long as a
         * failure would: a client that hangs up when no 235 came in time
         * learns nothing sooner than the backoff allows. */
        unsigned n = smtp_in_auth_failures(srv->auth, s->family, s->addr, util_now_ms());
        if (n == 0) {
            auth_succeeded(s, user);
            return;
        }
        s->auth_pending = user;
        s->auth_ok = true;
        s->auth_delay_ms = smtp_in_auth_delay_ms(srv->set->auth_delay_ms, n + 1);
        session_enter(s, SS_AUTH_DELAY);
        return;
    }
    auth_failed(s, user);
    free(user);
}

/* Checks name and password on the auth pool (the result comes to
 * auth_checked); a full pool is answered 454 and counts as nothing. */
static void
auth_check(struct session *s, const char *user, const char *pass, size_t passlen)
{
    struct smtp_server *srv = s->srv;
    const struct smtp_in_settings *set = srv->set;
    const char *stored = NULL;
    for (size_t i = 0; i < set->nusers; i++) {
        if (strcmp(set->users[i].name, user) == 0) {
            stored = set->users[i].password;
            break;
        }
    }
    if (!srv->auth_pool)
        srv->auth_pool = smtp_in_auth_pool_new(srv->base, SMTP_IN_AUTH_THREADS,
                                               SMTP_IN_AUTH_MAX_QUEUED, auth_checked, srv);
    struct smtp_in_auth_req req = {.id = s->id, .family = s->family};
    memcpy(req.addr, s->addr, sizeof req.addr);
    if (!smtp_in_auth_pool_submit(srv->auth_pool, &req, stored, pass, passlen)) {
        reply(s, "454 4.7.0 Temporary authentication failure, try again later");
        log_warn("smtp-in session=%lu from=%s event=auth-busy pending=%zu", s->id, s->ip,
                 smtp_in_auth_pool_pending(srv->auth_pool));
        return;
    }
    free(s->auth_pending);
    s->auth_pending = xstrdup(user);
    session_enter(s, SS_AUTH_CHECK);
}

/* A base64 line in an AUTH exchange into buf (NUL-terminated, may contain
 * NULs). Returns the length or -1 after replying. */
static long
auth_decode(struct session *s, const char *line, size_t len, unsigned char *out, size_t outlen)
{
    if (len == 1 && line[0] == '*') {
        reply(s, "501 5.7.0 Authentication cancelled");
        return -1;
    }
    long n = smtp_server_base64_decode(line, len, out, outlen - 1);
    if (n < 0) {
        reply(s, "501 5.5.2 Cannot decode response");
        protocol_error(s);
        return -1;
    }
    out[n] = '\0';
    return n;
}

static void
auth_plain(struct session *s, const char *line, size_t len)
{
    unsigned char dec[SMTP_SERVER_MAX_LINE];
    long n = auth_decode(s, line, len, dec, sizeof dec);
    if (n < 0)
        return;
    /* authzid NUL authcid NUL passwd */
    const unsigned char *z = dec, *end = dec + n;
    const unsigned char *nul1 = memchr(z, '\0', (size_t)n);
    const unsigned char *nul2 = nul1 ? memchr(nul1 + 1, '\0', (size_t)(end - nul1 - 1)) : NULL;
    if (!nul2 || memchr(nul2 + 1, '\0', (size_t)(end - nul2 - 1))) {
        reply(s, "501 5.5.2 Bad PLAIN response");
        protocol_error(s);
        return;
    }
    const char *authz = (const char *)z, *user = (const char *)nul1 + 1;
    if (*authz && strcmp(authz, user) != 0) {
        OPENSSL_cleanse(dec, sizeof dec);
        auth_failed(s, user);
        return;
    }
    auth_check(s, user, (const char *)nul2 + 1, (size_t)(end - nul2 - 1));
    OPENSSL_cleanse(dec, sizeof dec);
}

static void
cmd_auth(struct session *s, const struct smtp_server_cmd *c)
{
    const struct smtp_in_settings *set = s->srv->set;
    if (!s->tls) {
        reply(s, "538 5.7.11 Encryption required for requested authentication mechanism");
        protocol_error(s);
        return;
    }
    if (set->nusers == 0) {
        reply(s, "503 5.5.1 Error: authentication not enabled");
        protocol_error(s);
        return;
    }
    if (!s->helo) {
        reply(s, "503 5.5.1 Error: send EHLO first");
        protocol_error(s);
        return;
    }
    if (s->auth_user) {
        reply(s, "503 5.5.1 Error: already authenticated");
        protocol_error(s);
        return;
    }
    if (s->have_mail) {
        reply(s, "503 5.5.1 Error: MAIL transaction in progress");
        protocol_error(s);
        return;
    }
    size_t mlen = 0;
    while (mlen < c->arglen && c->arg[mlen] != ' ')
        mlen++;
    const char *ir = c->arg + mlen;
    size_t irlen = c->arglen - mlen;
    while (irlen && *ir == ' ') {
        ir++;
        irlen--;
    }
    if (mlen == 5 && strncasecmp(c->arg, "PLAIN", 5) == 0) {
        if (irlen == 1 && ir[0] == '=') {
            auth_plain(s, "", 0);
        } else if (irlen) {
            auth_plain(s, ir, irlen);
        } else {
            reply(s, "334 ");
            session_enter(s, SS_AUTH_PLAIN);
        }
    } else if (mlen == 5 && strncasecmp(c->arg, "LOGIN", 5) == 0) {
        if (irlen) {
            unsigned char dec[256];
            long n = auth_decode(s, ir, irlen, dec, sizeof dec);
            if (n < 0)
                return;
            snprintf(s->auth_login_name, sizeof s->auth_login_name, "%s", (char *)dec);
            reply(s, "334 UGFzc3dvcmQ6");
            session_enter(s, SS_AUTH_LOGIN_PASS);
        } else {
            reply(s, "334 VXNlcm5hbWU6");
            session_enter(s, SS_AUTH_LOGIN_USER);
        }
    } else {
        reply(s, "504 5.5.4 Unrecognized authentication type");
        protocol_error(s);
    }
}

/* One line in an AUTH exchange. */
static void
auth_line(struct session *s, const char *line, size_t len)
{
    enum session_state st = s->state;
    session_enter(s, SS_CMD);
    if (st == SS_AUTH_PLAIN) {
        auth_plain(s, line, len);
        return;
    }
    unsigned char dec[SMTP_SERVER_MAX_LINE];
    long n = auth_decode(s, line, len, dec, sizeof dec);
    if (n < 0)
        return;
    if (st == SS_AUTH_LOGIN_USER) {
        size_t ulen = strnlen((char *)dec, sizeof s->auth_login_name - 1);
        memcpy(s->auth_login_name, dec, ulen);
        s->auth_login_name[ulen] = '\0';
        reply(s, "334 UGFzc3dvcmQ6");
        session_enter(s, SS_AUTH_LOGIN_PASS);
        return;
    }
    auth_check(s, s->auth_login_name, (const char *)dec, (size_t)n);
    OPENSSL_cleanse(dec, sizeof dec);
}

static void
command(struct session *s, const char *line, size_t len)
{
    if (s->state != SS_CMD) {
        log_debug("smtp-in session=%lu auth-response=(%zu bytes)", s->id, len);
        auth_line(s, line, len);
        return;
    }
    /* An AUTH command carries a credential (the initial response), however
     * it is spelt ("AUTH\tPLAIN ...", "auth  login ..."): only its length is
     * logged, as for the continuation lines after a 334. */
    if (len >= 4 && strncasecmp(line, "AUTH", 4) == 0 &&
        (len == 4 || !isalnum((unsigned char)line[4])))
        log_debug("smtp-in session=%lu command=\"AUTH (%zu bytes, redacted)\"", s->id, len);
    else
        log_debug("smtp-in session=%lu command=\"%.*s\"", s->id, (int)len, line);
    struct smtp_server_cmd c;
    const char *err = smtp_server_parse_command(line, len, &c);
    if (err) {
        reply(s, "%s", err);
        protocol_error(s);
        return;
    }
    switch (c.verb) {
    case SMTP_VERB_EHLO:
        cmd_ehlo(s, &c, true);
        break;
    case SMTP_VERB_HELO:
        cmd_ehlo(s, &c, false);
        break;
    case SMTP_VERB_MAIL:
        cmd_mail(s, &c);
        break;
    case SMTP_VERB_RCPT:
        cmd_rcpt(s, &c);
        break;
    case SMTP_VERB_DATA:
        cmd_data(s, &c);
        break;
    case SMTP_VERB_RSET:
        txn_reset(s);
        reply(s, "250 2.0.0 Ok");
        break;
    case SMTP_VERB_NOOP:
        reply(s, "250 2.0.0 Ok");
        break;
    case SMTP_VERB_QUIT:
        reply(s, "221 2.0.0 Bye");
        session_close(s, "quit");
        break;
    case SMTP_VERB_VRFY:
        reply(s, "252 2.5.2 Cannot VRFY user");
        break;
    case SMTP_VERB_HELP:
        reply(s, "214 2.0.0 See RFC 5321");
        break;
    case SMTP_VERB_STARTTLS:
        cmd_starttls(s, &c);
        break;
    case SMTP_VERB_AUTH:
        cmd_auth(s, &c);
        break;
    case SMTP_VERB_BDAT:
    case SMTP_VERB_UNKNOWN:
        reply(s, "502 5.5.2 Error: command not recognized");
        protocol_error(s);
        break;
    }
}

/* ---- input -------------------------------------------------------------- */

/* Takes one command line out of the input. Returns 1 with the line in
 * LINE (without its ending, CRLF or LF), 0 when more input is needed, -1
 * when an over-long line was dealt with. */
static int
read_line(struct session *s, char *line, size_t *len)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    size_t avail = evbuffer_get_length(in);
    size_t eol_len = 0;
    struct evbuffer_ptr eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
    if (s->skipping) {
        if (eol.pos < 0) {
            s->skipped += avail;
            evbuffer_drain(in, avail);
            if (s->skipped > SESSION_SKIP_LIMIT) {
                reply(s, "500 5.5.2 Line too long");
                session_close(s, "line-too-long");
                return -1;
            }
            return 0;
        }
        evbuffer_drain(in, (size_t)eol.pos + eol_len);
        s->skipping = false;
        reply(s, "500 5.5.2 Line too long");
        protocol_error(s);
        return -1;
    }
    if (eol.pos < 0) {
        if (avail > SMTP_SERVER_MAX_LINE) {
            s->skipping = true;
            s->skipped = avail;
            evbuffer_drain(in, avail);
        }
        return 0;
    }
    if ((size_t)eol.pos > SMTP_SERVER_MAX_LINE) {
        evbuffer_drain(in, (size_t)eol.pos + eol_len);
        reply(s, "500 5.5.2 Line too long");
        protocol_error(s);
        return -1;
    }
    *len = (size_t)eol.pos;
    evbuffer_remove(in, line, *len);
    line[*len] = '\0';
    evbuffer_drain(in, eol_len);
    return 1;
}

static void
read_data(struct session *s)
{
    struct evbuffer *in = bufferevent_get_input(s->bev);
    while (s->state == SS_DATA && evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        size_t used = smtp_server_data_feed(&s->data, v.iov_base, v.iov_len);
        evbuffer_drain(in, used);
        if (s->data.done)
            data_finished(s);
    }
}

static void
session_process_input(struct session *s)
{
    char line[SMTP_SERVER_MAX_LINE + 1];
    for (;;) {
        enum session_state st = s->state;
        if (st == SS_DATA) {
            arm_data_timer(s);
            read_data(s);
            if (s->state == SS_DATA)
                return;
            continue;
        }
        if (st != SS_CMD && st != SS_AUTH_PLAIN && st != SS_AUTH_LOGIN_USER &&
            st != SS_AUTH_LOGIN_PASS)
            return;
        if (evbuffer_get_length(bufferevent_get_output(s->bev)) > SESSION_WRITE_HIGH_WATER) {
            /* The client does not read its replies: stop reading its
             * commands until they have gone (SE_FLUSHED resumes). */
            if (!s->read_paused) {
                s->read_paused = true;
                bufferevent_disable(s->bev, EV_READ);
                bufferevent_setwatermark(s->bev, EV_WRITE, SESSION_WRITE_LOW_WATER, 0);
                log_debug("smtp-in session=%lu from=%s event=read-paused unsent=%zu", s->id, s->ip,
                          evbuffer_get_length(bufferevent_get_output(s->bev)));
            }
            return;
        }
        size_t len = 0;
        int r = read_line(s, line, &len);
        if (r == 0)
            return;
        if (r > 0) {
            command(s, line, len);
            OPENSSL_cleanse(line, len);
        }
        if (s->state == SS_CMD)
            arm_timer(s, s->srv->set->idle_ms);
    }
}

static void
session_react(struct session *s, enum session_event ev)
{
    log_trace("smtp-in session=%lu state=%s event=%s", s->id, state_names[s->state],
              event_names[ev]);
    if (s->state == SS_DEAD)
        return;
    switch (ev) {
    case SE_INPUT:
        session_process_input(s);
        break;
    case SE_CLOSED:
        if (s->state != SS_CLOSING)
            log_info("smtp-in session=%lu from=%s event=disconnected state=%s", s->id, s->ip,
                     state_names[s->state]);
        session_enter(s, SS_DEAD);
        break;
    case SE_TIMEOUT:
        if (s->state == SS_CLOSING) {
            if (output_flushed(s) || util_now_ms() >= s->close_deadline)
                session_enter(s, SS_DEAD);
            else
                arm_timer(s, SESSION_CLOSE_POLL_MS);
        } else if (s->state == SS_ENQUEUE) {
            /* The result may still come; it is then only logged. */
            s->seq++;
            reply(s, "451 4.3.0 Timeout waiting for the queue, try again later");
            log_warn("smtp-in session=%lu from=%s event=enqueue-timeout", s->id, s->ip);
            txn_reset(s);
            session_enter(s, SS_CMD);
            session_process_input(s);
        } else if (s->state == SS_AUTH_DELAY) {
            auth_delay_done(s);
        } else if (s->state == SS_TLS) {
            log_info("smtp-in session=%lu from=%s event=tls-timeout", s->id, s->ip);
            session_enter(s, SS_DEAD);
        } else if (s->state == SS_DATA && util_now_ms() >= s->data_deadline) {
            reply(s, "421 4.4.2 %s Error: DATA took too long, closing connection",
                  s->srv->set->hostname);
            log_info("smtp-in session=%lu from=%s event=data-deadline received=%llu", s->id, s->ip,
                     (unsigned long long)s->data.total);
            txn_reset(s);
            session_close(s, "data-deadline");
        } else {
            reply(s, "421 4.4.2 %s Error: timeout exceeded", s->srv->set->hostname);
            session_close(s, "timeout");
        }
        break;
    case SE_TLS_DONE: {
        SSL *ssl = bufferevent_openssl_get_ssl(s->bev);
        const SSL_CIPHER *ci = ssl ? SSL_get_current_cipher(ssl) : NULL;
        log_info("smtp-in session=%lu from=%s event=tls protocol=%s cipher=%s", s->id, s->ip,
                 ssl ? SSL_get_version(ssl) : "-", ci ? SSL_CIPHER_get_name(ci) : "-");
        s->tls = true;
        session_enter(s, SS_CMD);
        session_process_input(s);
        break;
    }
    case SE_TLS_FAILED: {
        unsigned long e = bufferevent_get_openssl_error(s->bev);
        char why[256] = "connection closed";
        if (e)
            ERR_error_string_n(e, why, sizeof why);
        while (bufferevent_get_openssl_error(s->bev))
            ;
        log_info("smtp-in session=%lu from=%s event=tls-failed error=\"%s\"", s->id, s->ip, why);
        session_enter(s, SS_DEAD);
        break;
    }
    case SE_ENQUEUED:
        enqueue_result(s);
        if (s->srv->stopping) {
            reply(s, "421 4.3.2 %s Service shutting down", s->srv->set->hostname);
            session_close(s, "shutdown");
            break;
        }
        session_enter(s, SS_CMD);
        session_process_input(s);
        break;
    case SE_FLUSHED:
        if (s->state == SS_CLOSING && output_flushed(s)) {
            session_enter(s, SS_DEAD);
        } else if (s->read_paused && s->state != SS_CLOSING && s->state != SS_AUTH_DELAY &&
                   evbuffer_get_length(bufferevent_get_output(s->bev)) <= SESSION_WRITE_LOW_WATER) {
            s->read_paused = false;
            bufferevent_setwatermark(s->bev, EV_WRITE, 0, 0);
            bufferevent_enable(s->bev, EV_READ);
            log_debug("smtp-in session=%lu from=%s event=read-resumed", s->id, s->ip);
            session_process_input(s);
        }
        break;
    }
}

/* ---- libevent callbacks: I/O into events --------------------------------- */

static void
on_read(struct bufferevent *bev, void *arg)
{
    (void)bev;
    session_react(arg, SE_INPUT);
}

static void
on_write(struct bufferevent *bev, void *arg)
{
    (void)bev;
    session_react(arg, SE_FLUSHED);
}

static void
on_event(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct session *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        if (s->state == SS_TLS)
            session_react(s, SE_TLS_DONE);
        return;
    }
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        session_react(s, s->state == SS_TLS ? SE_TLS_FAILED : SE_CLOSED);
}

static void
on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    session_react(arg, SE_TIMEOUT);
}

static void
session_setup_bev(struct session *s)
{
    bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
    bufferevent_setwatermark(s->bev, EV_READ, 0, SESSION_READ_HIGH_WATER);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

/* May the new session S start? NULL, or the reason it may not. Sessions
 * being refused do not count. Addresses in smtp-listener.allow share every
 * slot; the others (strangers, who may still authenticate) share all but
 * the reserved ones, at most max_per_client per address. */
static const char *
admission(const struct smtp_server *srv, const struct session *s)
{
    const struct smtp_in_settings *set = srv->set;
    if (srv->nsessions - srv->nrefused > set->max_sessions)
        return "max-sessions";
    if (s->allowed_by_addr)
        return NULL;
    size_t strangers = 0, same = 0;
    for (const struct session *o = srv->sessions; o; o = o->next) {
        if (o->refused || o->allowed_by_addr)
            continue;
        strangers++;
        same += o->family == s->family && memcmp(o->addr, s->addr, 16) == 0;
    }
    uint32_t open = set->max_sessions > set->reserved ? set->max_sessions - set->reserved : 0;
    if (strangers > open)
        return "reserved-for-allowed-clients";
    if (same > set->max_per_client)
        return "max-sessions-per-client";
    return NULL;
}

static void
on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int socklen,
          void *arg)
{
    (void)lev;
    (void)socklen;
    struct smtp_server *srv = arg;
    const struct smtp_in_settings *set = srv->set;
    struct session *s = xcalloc(1, sizeof *s);
    s->id = srv->next_sid++;
    s->srv = srv;
    buf_init(&s->content);
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)(void *)sa;
        static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(&a6->sin6_addr, mapped, 12) == 0) {
            s->family = AF_INET;
            memcpy(s->addr, (const unsigned char *)&a6->sin6_addr + 12, 4);
        } else {
            s->family = AF_INET6;
            memcpy(s->addr, &a6->sin6_addr, 16);
        }
    } else {
        s->family = AF_INET;
        memcpy(s->addr, &((struct sockaddr_in *)(void *)sa)->sin_addr, 4);
    }
    inet_ntop(s->family, s->addr, s->ip, sizeof s->ip);
    for (size_t i = 0; i < set->nallow && !s->allowed_by_addr; i++)
        s->allowed_by_addr = smtp_server_cidr_match(&set->allow[i], s->family, s->addr);
    s->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    s->timer = evtimer_new(srv->base, on_timer, s);
    s->free_ev = evtimer_new(srv->base, on_free, s);
    PGMTA_ASSERT(s->bev && s->timer && s->free_ev);
    s->next = srv->sessions;
    if (srv->sessions)
        srv->sessions->prev = s;
    srv->sessions = s;
    srv->nsessions++;
    session_setup_bev(s);
    const char *refuse = admission(srv, s);
    if (refuse) {
        s->refused = true;
        srv->nrefused++;
        reply(s, "421 4.3.2 %s Too many connections, try again later", set->hostname);
        log_warn("smtp-in session=%lu from=%s event=refused reason=%s sessions=%zu", s->id, s->ip,
                 refuse, srv->nsessions - srv->nrefused);
        session_enter(s, SS_CLOSING);
        return;
    }
    log_debug("smtp-in session=%lu from=%s event=connect allowed=%s", s->id, s->ip,
              s->allowed_by_addr ? "yes" : "no");
    reply(s, "220 %s ESMTP pgmta", set->hostname);
    session_enter(s, SS_CMD);
}

/* ---------------------------------------------------------------------------
 * Listeners
 */

/* accept() failed. Out of descriptors or memory: the listening socket stays
 * readable, so accepting again at once would spin. Every listener pauses for
 * ACCEPT_PAUSE_MS (one log line per pause) and resumes from the timer. */
static void
on_accept_error(struct evconnlistener *lev, void *arg)
{
    (void)lev;
    struct smtp_server *srv = arg;
    int e = EVUTIL_SOCKET_ERROR();
    if (e != EMFILE && e != ENFILE && e != ENOBUFS && e != ENOMEM) {
        log_debug("smtp-in event=accept-error error=\"%s\"", strerror(e));
        return;
    }
    if (srv->accept_paused)
        return;
    srv->accept_paused = true;
    srv->accept_pauses++;
    for (size_t i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i].lev)
            evconnlistener_disable(srv->listeners[i].lev);
    log_warn("smtp-in event=accept-paused error=\"%s\" sessions=%zu pause=%dms pauses=%lu",
             strerror(e), srv->nsessions, ACCEPT_PAUSE_MS, srv->accept_pauses);
    struct timeval tv = {ACCEPT_PAUSE_MS / 1000, (ACCEPT_PAUSE_MS % 1000) * 1000};
    evtimer_add(srv->accept_resume, &tv);
}

static void
on_accept_resume(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct smtp_server *srv = arg;
    srv->accept_paused = false;
    if (srv->stopping)
        return;
    for (size_t i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i].lev)
            evconnlistener_enable(srv->listeners[i].lev);
}

/* Every smtp-in process binds the same addresses with SO_REUSEPORT: the
 * kernel spreads new connections over the processes (see README, Over
 * SMTP). */
static struct evconnlistener *
listen_on(struct smtp_server *srv, const char *addr, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int len = (int)sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &len) != 0) {
        snprintf(err, errlen, "%s: bad address \"%s\"",
                 srv->inbound ? "listen.inbound" : "listen.smtp", addr);
        return NULL;
    }
    unsigned flags =
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE_PORT;
    if (ss.ss_family == AF_INET6)
        flags |= LEV_OPT_BIND_IPV6ONLY;
    struct evconnlistener *lev =
        evconnlistener_new_bind(srv->base, on_accept, srv, flags, 128, (struct sockaddr *)&ss, len);
    if (!lev) {
        snprintf(err, errlen, "%s: cannot listen on %s: %s",
                 srv->inbound ? "listen.inbound" : "listen.smtp", addr, strerror(errno));
        return NULL;
    }
    evconnlistener_set_error_cb(lev, on_accept_error);
    if (srv->accept_paused)
        evconnlistener_disable(lev);
    log_info("smtp-in event=listening address=%s", addr);
    return lev;
}

/* Makes the listeners match LIST; returns -1 with err when one cannot be
 * opened (those opened so far stay). */
static int
listeners_apply(struct smtp_server *srv, char *const *list, size_t n, char *err, size_t errlen)
{
    struct listener *keep = xcalloc(n + 1, sizeof *keep);
    size_t nkeep = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t j = 0; j < srv->nlisteners; j++) {
            if (srv->listeners[j].lev && strcmp(srv->listeners[j].addr, list[i]) == 0) {
                keep[nkeep++] = srv->listeners[j];
                srv->listeners[j].lev = NULL;
                found = true;
                break;
            }
        }
        if (found)
            continue;
        struct evconnlistener *lev = listen_on(srv, list[i], err, errlen);
        if (!lev) {
            rc = -1;
            continue;
        }
        keep[nkeep].addr = xstrdup(list[i]);
        keep[nkeep++].lev = lev;
    }
    for (size_t j = 0; j < srv->nlisteners; j++) {
        if (srv->listeners[j].lev) {
            log_info("smtp-in event=closed-listener address=%s", srv->listeners[j].addr);
            evconnlistener_free(srv->listeners[j].lev);
            free(srv->listeners[j].addr);
        }
    }
    free(srv->listeners);
    srv->listeners = keep;
    srv->nlisteners = nkeep;
    return rc;
}

/* ---------------------------------------------------------------------------
 * Public
 */

/* The listener's connection and its batcher, once there is something to
 * listen on and a database; the URL is read at start only. Without them a
 * message is answered 451 (no batcher: never stored). */
static void
start_db(struct smtp_server *srv, const struct conf *conf)
{
    if (srv->inbound) {
        if (!srv->in)
            srv->in = inbound_new(srv->base, conf, enqueue_done, srv);
        else
            inbound_configure(srv->in, conf);
        return;
    }
    if (srv->batch || conf->nlisten_smtp == 0 || !conf->database_url)
        return;
    struct db *db = db_new(srv->base, conf->database_url, "pgmtad-smtp-in");
    db_prepare(db, SMTP_IN_BATCH_STMT, SMTP_IN_BATCH_SQL, SMTP_IN_BATCH_NPARAMS);
    db_connect(db);
    srv->batch = smtp_in_batch_new(srv->base, db, enqueue_done, srv);
    smtp_in_batch_set_limits(srv->batch, &srv->set->batch);
}

static struct smtp_in_settings *
settings_new(const struct smtp_server *srv, const struct conf *conf, char *err, size_t errlen)
{
    return srv->inbound ? smtp_in_settings_new_inbound(conf, err, errlen)
                        : smtp_in_settings_new(conf, err, errlen);
}

static int
listeners_conf(struct smtp_server *srv, const struct conf *conf, char *err, size_t errlen)
{
    return srv->inbound
               ? listeners_apply(srv, conf->listen_inbound, conf->nlisten_inbound, err, errlen)
               : listeners_apply(srv, conf->listen_smtp, conf->nlisten_smtp, err, errlen);
}

static struct smtp_server *
server_new(struct event_base *base, const struct conf *conf, bool inbound, char *err, size_t errlen)
{
    struct smtp_server *srv = xcalloc(1, sizeof *srv);
    srv->base = base;
    srv->inbound = inbound;
    srv->next_sid = 1;
    srv->accept_resume = evtimer_new(base, on_accept_resume, srv);
    PGMTA_ASSERT(srv->accept_resume != NULL);
    srv->auth = smtp_in_auth_shared();
    if (!srv->auth) {
        srv->auth = smtp_in_auth_table_new();
        srv->auth_owned = true;
    }
    srv->set = settings_new(srv, conf, err, errlen);
    if (!srv->set) {
        event_free(srv->accept_resume);
        if (srv->auth_owned)
            smtp_in_auth_table_free(srv->auth);
        free(srv);
        return NULL;
    }
    if (listeners_conf(srv, conf, err, errlen) != 0) {
        smtp_server_free(srv);
        return NULL;
    }
    start_db(srv, conf);
    return srv;
}

struct smtp_server *
smtp_server_new(struct event_base *base, const struct conf *conf, char *err, size_t errlen)
{
    return server_new(base, conf, false, err, errlen);
}

struct smtp_server *
smtp_server_new_inbound(struct event_base *base, const struct conf *conf, char *err, size_t errlen)
{
    return server_new(base, conf, true, err, errlen);
}

int
smtp_server_reload(struct smtp_server *srv, const struct conf *conf, char *err, size_t errlen)
{
    if (!srv)
        return 0;
    struct smtp_in_settings *fresh = settings_new(srv, conf, err, errlen);
    if (!fresh)
        return -1;
    smtp_in_settings_free(srv->set);
    srv->set = fresh;
    int rc = listeners_conf(srv, conf, err, errlen);
    start_db(srv, conf);
    if (srv->batch) /* none without listen.smtp */
        smtp_in_batch_set_limits(srv->batch, &srv->set->batch);
    return rc;
}

void
smtp_server_stop_accepting(struct smtp_server *srv)
{
    if (!srv)
        return;
    srv->stopping = true;
    listeners_apply(srv, NULL, 0, NULL, 0);
    /* Sessions between commands are told at once; those receiving or
     * storing a message finish it first (SE_ENQUEUED). */
    for (struct session *s = srv->sessions; s; s = s->next) {
        if (s->state == SS_CMD || s->state == SS_AUTH_PLAIN || s->state == SS_AUTH_LOGIN_USER ||
            s->state == SS_AUTH_LOGIN_PASS || s->state == SS_AUTH_CHECK ||
            s->state == SS_AUTH_DELAY) {
            reply(s, "421 4.3.2 %s Service shutting down", s->srv->set->hostname);
            session_close(s, "shutdown");
        }
    }
}

size_t
smtp_server_sessions(const struct smtp_server *srv)
{
    return srv ? srv->nsessions : 0;
}

void
smtp_server_free(struct smtp_server *srv)
{
    if (!srv)
        return;
    listeners_apply(srv, NULL, 0, NULL, 0);
    free(srv->listeners);
    /* A batch in flight completes (451) first: no session is waiting on a
     * freed database. */
    smtp_in_batch_free(srv->batch);
    srv->batch = NULL;
    inbound_free(srv->in);
    srv->in = NULL;
    if (srv->accept_resume)
        event_free(srv->accept_resume);
    while (srv->sessions) {
        struct session *s = srv->sessions;
        event_del(s->free_ev);
        session_free(s);
    }
    /* Results still to come are dropped with the pool, after the sessions
     * they were for. */
    smtp_in_auth_pool_free(srv->auth_pool);
    smtp_in_settings_free(srv->set);
    if (srv->auth_owned)
        smtp_in_auth_table_free(srv->auth);
    free(srv);
}
