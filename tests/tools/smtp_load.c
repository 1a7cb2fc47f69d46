/* smtp_load: SMTP load generator for the benchmark's "SMTP in -> out" rows
 * when recipients spread over many domains (tests/bench/run --long-tail),
 * which smtp-source cannot do (one recipient domain per process).
 *
 *   smtp_load --port N [--host 127.0.0.1] [--connections 100]
 *             [--per-connection 0] --messages TOTAL [--domains 100]
 *             [--domain-format d%02d.bench.test] [--sender ADDR]
 *             [--helo bench.example] --content FILE [--content FILE2 ...]
 *             [--timeout-ms 60000]
 *
 * Keeps --connections sessions open; each sends one message after the
 * other (MAIL, RCPT and DATA pipelined, then the content), one recipient per
 * message, until TOTAL messages have been sent; with --per-connection K a
 * session ends with QUIT after K messages and a new one takes its place (0:
 * as many as it gets, like smtp-source -d). Message n goes to u<n>@ domain
 * (n mod D) with content file (n mod D) mod F: with the benchmark's two files
 * (1 KB and 10 KB) even domains get 1 KB and odd ones 10 KB, as in the rest
 * of the benchmark. The files are sent as they are (CRLF, dot-stuffed here).
 *
 * Output, one line at the end:
 *   messages=N ok=X failed=Y sessions=S seconds=T first_error="..."
 * Exit status: 0 if every message got 250 after its data, 1 otherwise, 2 on
 * bad usage. Plain sockets and poll(2), as http_load. */
#include <getopt.h>
#include <poll.h>

#include "load_util.h"

#define MAX_CONTENT 8
#define MAX_CONN 1024
#define REPLY_MAX 65536

enum state { S_GREETING, S_EHLO, S_ENVELOPE, S_DATA, S_QUIT };

struct conn {
    int fd;
    enum state st;
    struct buf out;   /* commands or content being sent */
    size_t sent;      /* octets of out already written */
    struct buf in;    /* replies being read */
    int replies;      /* replies still expected in this state */
    int bad;          /* an envelope reply was not the expected one */
    int done_here;    /* messages sent on this session */
    long msg;         /* the message in flight, -1 if none */
    int64_t deadline; /* ms, monotonic */
};

struct opts {
    const char *host, *domain_format, *sender, *helo;
    int port, connections, per_connection, domains, timeout_ms;
    long total;
    const char *content_files[MAX_CONTENT];
    int ncontent;
};

static struct buf contents[MAX_CONTENT]; /* dot-stuffed, ending in CRLF.CRLF */
static long next_msg, finished, ok, failed, sessions;

/* The file as DATA: lines end in CRLF, a leading dot doubled, then ".". */
static void
load_content(const char *path, struct buf *b)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("%s: %s", path, strerror(errno));
    int c, bol = 1;
    while ((c = getc(f)) != EOF) {
        if (c == '\r')
            continue;
        if (bol && c == '.')
            buf_add(b, ".", 1);
        if (c == '\n') {
            buf_add(b, "\r\n", 2);
            bol = 1;
            continue;
        }
        char ch = (char)c;
        buf_add(b, &ch, 1);
        bol = 0;
    }
    fclose(f);
    if (!bol)
        buf_add(b, "\r\n", 2);
    buf_add(b, ".\r\n", 3);
}

static void
send_text(struct conn *c, const struct opts *o, enum state st, int replies)
{
    c->st = st;
    c->sent = 0;
    c->replies = replies;
    c->deadline = now_ms() + o->timeout_ms;
}

static void
conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->out.len = 0;
    c->in.len = 0;
}

static void
message_done(struct conn *c, int good)
{
    if (c->msg < 0)
        return;
    finished++;
    if (good)
        ok++;
    else
        failed++;
    c->msg = -1;
}

static void
conn_fail(struct conn *c, const char *why)
{
    error_once("%s", why);
    message_done(c, 0);
    conn_close(c);
}

/* Starts the next message on an idle session (or QUIT when the session has
 * had its share or nothing is left). */
static void
next_or_quit(const struct opts *o, struct conn *c)
{
    c->out.len = 0;
    if (next_msg >= o->total || (o->per_connection && c->done_here >= o->per_connection)) {
        buf_add(&c->out, "QUIT\r\n", 6);
        send_text(c, o, S_QUIT, 1);
        return;
    }
    long n = next_msg++;
    char domain[256];
    int len = snprintf(domain, sizeof domain, o->domain_format, (int)(n % o->domains));
    if (len < 0 || (size_t)len >= sizeof domain)
        die("--domain-format gives a name too long");
    c->msg = n;
    c->bad = 0;
    c->done_here++;
    buf_printf(&c->out, "MAIL FROM:<%s>\r\nRCPT TO:<u%ld@%s>\r\nDATA\r\n", o->sender, n, domain);
    send_text(c, o, S_ENVELOPE, 3);
}

static void
conn_open(const struct opts *o, struct conn *c)
{
    c->fd = load_connect(o->host, o->port);
    if (c->fd < 0) {
        /* a message not started cannot be failed; count the attempt */
        failed++;
        finished++;
        next_msg++;
        return;
    }
    sessions++;
    c->done_here = 0;
    c->msg = -1;
    c->out.len = 0;
    c->in.len = 0;
    send_text(c, o, S_GREETING, 1);
}

/* One complete reply at the start of c->in: its code, and it is consumed;
 * 0 while incomplete, -1 if malformed. */
static int
take_reply(struct conn *c)
{
    size_t pos = 0;
    while (pos < c->in.len) {
        char *eol = memchr(c->in.p + pos, '\n', c->in.len - pos);
        if (!eol)
            return c->in.len > REPLY_MAX ? -1 : 0;
        size_t line = pos;
        pos = (size_t)(eol - c->in.p) + 1;
        if (pos - line < 4)
            return -1;
        if (c->in.p[line + 3] == ' ' || c->in.p[line + 3] == '\r' || c->in.p[line + 3] == '\n') {
            int code = atoi(c->in.p + line);
            memmove(c->in.p, c->in.p + pos, c->in.len - pos);
            c->in.len -= pos;
            c->in.p[c->in.len] = '\0';
            return code;
        }
        if (c->in.p[line + 3] != '-')
            return -1;
    }
    return 0;
}

/* A reply arrived in state c->st. */
static void
on_reply(const struct opts *o, struct conn *c, int code)
{
    char why[160];
    switch (c->st) {
    case S_GREETING:
        if (code != 220) {
            snprintf(why, sizeof why, "greeting %d", code);
            conn_fail(c, why);
            return;
        }
        c->out.len = 0;
        buf_printf(&c->out, "EHLO %s\r\n", o->helo);
        send_text(c, o, S_EHLO, 1);
        return;
    case S_EHLO:
        if (code != 250) {
            snprintf(why, sizeof why, "EHLO answered %d", code);
            conn_fail(c, why);
            return;
        }
        next_or_quit(o, c);
        return;
    case S_ENVELOPE:
        /* MAIL 250, RCPT 250, DATA 354: anything else and the session has
         * no message to send; it ends (RSET is not worth it in a bench) */
        c->replies--;
        if (code != (c->replies ? 250 : 354)) {
            if (!c->bad) {
                snprintf(why, sizeof why, "envelope reply %d", code);
                error_once("%s", why);
            }
            c->bad = 1;
        }
        if (c->replies)
            return;
        if (c->bad) {
            conn_fail(c, "envelope refused");
            return;
        }
        c->out.len = 0;
        {
            int file = (int)((c->msg % o->domains) % o->ncontent);
            buf_add(&c->out, contents[file].p, contents[file].len);
        }
        send_text(c, o, S_DATA, 1);
        return;
    case S_DATA:
        if (code != 250) {
            snprintf(why, sizeof why, "end of data answered %d", code);
            error_once("%s", why);
        }
        message_done(c, code == 250);
        next_or_quit(o, c);
        return;
    case S_QUIT:
        conn_close(c);
        return;
    }
}

static void
usage(void)
{
    fputs("usage: smtp_load --port N [--host IP] [--connections N] [--per-connection K]\n"
          "  --messages TOTAL [--domains D] [--domain-format FMT] [--sender ADDR]\n"
          "  [--helo NAME] --content FILE [--content FILE ...] [--timeout-ms MS]\n",
          stderr);
    exit(2);
}

static void
parse_args(int argc, char **argv, struct opts *o)
{
    static const struct option lo[] = {{"host", required_argument, NULL, 'h'},
                                       {"port", required_argument, NULL, 'p'},
                                       {"connections", required_argument, NULL, 'c'},
                                       {"per-connection", required_argument, NULL, 'k'},
                                       {"messages", required_argument, NULL, 'n'},
                                       {"domains", required_argument, NULL, 'd'},
                                       {"domain-format", required_argument, NULL, 'f'},
                                       {"sender", required_argument, NULL, 's'},
                                       {"helo", required_argument, NULL, 'H'},
                                       {"content", required_argument, NULL, 'C'},
                                       {"timeout-ms", required_argument, NULL, 'T'},
                                       {NULL, 0, NULL, 0}};
    *o = (struct opts){.host = "127.0.0.1",
                       .domain_format = "d%02d.bench.test",
                       .sender = "sender@bench.example",
                       .helo = "bench.example",
                       .connections = 100,
                       .domains = 100,
                       .timeout_ms = 60000};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'h':
            o->host = optarg;
            break;
        case 'p':
            o->port = atoi(optarg);
            break;
        case 'c':
            o->connections = atoi(optarg);
            break;
        case 'k':
            o->per_connection = atoi(optarg);
            break;
        case 'n':
            o->total = atol(optarg);
            break;
        case 'd':
            o->domains = atoi(optarg);
            break;
        case 'f':
            o->domain_format = optarg;
            break;
        case 's':
            o->sender = optarg;
            break;
        case 'H':
            o->helo = optarg;
            break;
        case 'C':
            if (o->ncontent == MAX_CONTENT)
                die("at most %d --content files", MAX_CONTENT);
            o->content_files[o->ncontent++] = optarg;
            break;
        case 'T':
            o->timeout_ms = atoi(optarg);
            break;
        default:
            usage();
        }
    }
    if (optind != argc || o->port <= 0 || o->port > 65535 || o->total <= 0 || o->ncontent == 0 ||
        o->connections <= 0 || o->connections > MAX_CONN || o->per_connection < 0 ||
        o->domains <= 0 || o->timeout_ms <= 0)
        usage();
    for (const char *s = o->sender; *s; s++)
        if (*s < 0x21 || *s > 0x7e || *s == '<' || *s == '>')
            die("--sender must be a plain address");
}

int
main(int argc, char **argv)
{
    struct opts o;
    load_prog = "smtp_load";
    parse_args(argc, argv, &o);
    for (int i = 0; i < o.ncontent; i++)
        load_content(o.content_files[i], &contents[i]);
    int nconn = o.connections < o.total ? o.connections : (int)o.total;
    static struct conn conns[MAX_CONN];
    static struct pollfd pfd[MAX_CONN];
    int64_t t0 = now_ms();
    for (int i = 0; i < nconn; i++) {
        conns[i].fd = -1;
        conns[i].msg = -1;
    }

    for (;;) {
        int open = 0;
        for (int i = 0; i < nconn; i++) {
            if (conns[i].fd < 0 && next_msg < o.total)
                conn_open(&o, &conns[i]);
            if (conns[i].fd >= 0)
                open++;
        }
        if (!open) {
            if (next_msg >= o.total)
                break;
            continue; /* every connect failed: the next ones count them */
        }
        int64_t now = now_ms();
        for (int i = 0; i < nconn; i++) {
            struct conn *c = &conns[i];
            pfd[i] = (struct pollfd){.fd = -1};
            if (c->fd < 0)
                continue;
            if (now > c->deadline) {
                conn_fail(c, "timeout waiting for a reply");
                continue;
            }
            pfd[i].fd = c->fd;
            pfd[i].events = POLLIN | (c->sent < c->out.len ? POLLOUT : 0);
        }
        if (poll(pfd, (nfds_t)nconn, 1000) < 0) {
            if (errno == EINTR)
                continue;
            die("poll: %s", strerror(errno));
        }
        for (int i = 0; i < nconn; i++) {
            struct conn *c = &conns[i];
            if (pfd[i].fd < 0 || !pfd[i].revents || c->fd < 0)
                continue;
            if ((pfd[i].revents & POLLOUT) && c->sent < c->out.len) {
                ssize_t w = send(c->fd, c->out.p + c->sent, c->out.len - c->sent, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    conn_fail(c, "send failed (connection closed by the server)");
                    continue;
                }
                if (w > 0)
                    c->sent += (size_t)w;
            }
            if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char tmp[16384];
            ssize_t r = recv(c->fd, tmp, sizeof tmp, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                if (c->st == S_QUIT)
                    conn_close(c);
                else
                    conn_fail(c, "connection closed by the server");
                continue;
            }
            if (c->in.len + (size_t)r > REPLY_MAX) {
                conn_fail(c, "reply too large");
                continue;
            }
            buf_add(&c->in, tmp, (size_t)r);
            int code;
            while (c->fd >= 0 && (code = take_reply(c)) != 0) {
                if (code < 0) {
                    conn_fail(c, "malformed SMTP reply");
                    break;
                }
                on_reply(&o, c, code);
            }
        }
    }
    double seconds = (double)(now_ms() - t0) / 1000.0;
    printf("messages=%ld ok=%ld failed=%ld sessions=%ld seconds=%.3f first_error=\"%s\"\n", o.total,
           ok, failed, sessions, seconds, first_error);
    for (int i = 0; i < nconn; i++) {
        conn_close(&conns[i]);
        free(conns[i].out.p);
        free(conns[i].in.p);
    }
    for (int i = 0; i < o.ncontent; i++)
        free(contents[i].p);
    return ok == o.total && finished == o.total ? 0 : 1;
}
