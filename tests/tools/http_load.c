/* http_load: load generator for pgmta's HTTP injection API (the benchmark's
 * "HTTP inject -> out" row, see tests/bench/README.md).
 *
 *   http_load --port N [--host 127.0.0.1] --token TOKEN [--path /api/inject/v1]
 *             [--connections 8] [--batch 50] --recipients TOTAL
 *             [--domains 100] [--domain-format d%02d.bench.test]
 *             [--sender sender@bench.example] --content FILE [--content FILE2 ...]
 *             [--timeout-ms 60000]
 *
 * Opens --connections keep-alive connections and POSTs, over each, one
 * request after the other (the next one once the reply is read) until
 * TOTAL recipients have been posted in requests of --batch recipients. A
 * request is JSON in KumoMTA's shape:
 *   {"envelope_sender": "...", "content": "<raw RFC 5322 text>",
 *    "recipients": [{"email": "u17@d03.bench.test"}, ...]}
 * Request j takes content file j mod F (F files given) and its recipients'
 * domains so that domain i always gets file i mod F: with the benchmark's two
 * files (1 KB and 10 KB) and an even --domains, even domains get 1 KB and odd
 * ones 10 KB, as in the rest of the benchmark. Recipients are unique
 * (u<n>@domain, n counting from 0).
 *
 * Output, one line at the end:
 *   requests=R ok=X failed=Y not_found=Z recipients_ok=N seconds=S first_error="..."
 * Exit status: 0 if every request got 200, 3 if the endpoint answered 404
 * (not there), 1 on any other failure, 2 on bad usage. Plain sockets and
 * poll(2): the program owns its connections and buffers, nothing else. */
#include <getopt.h>
#include <poll.h>
#include <strings.h>

#include "load_util.h"

#define MAX_CONTENT 8
#define MAX_CONN 1024
#define RESP_MAX (1024 * 1024)

struct conn {
    int fd;
    struct buf out;   /* request being sent */
    size_t sent;      /* octets of out already written */
    struct buf in;    /* reply being read */
    int busy;         /* a request is in flight */
    long recipients;  /* recipients of the request in flight */
    int64_t deadline; /* ms, monotonic */
};

struct opts {
    const char *host, *token, *path, *domain_format, *sender;
    int port, connections, batch, domains, timeout_ms;
    long total;
    const char *content_files[MAX_CONTENT];
    int ncontent;
};

static char *contents_json[MAX_CONTENT]; /* JSON string literals, quotes included */
static long next_request, requests_done, ok, failed, not_found, recipients_ok, posted;

/* The file's bytes as a JSON string literal. */
static char *
json_string_of_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        die("%s: %s", path, strerror(errno));
    struct buf b = {0};
    buf_add(&b, "\"", 1);
    int c;
    while ((c = getc(f)) != EOF) {
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            buf_add(&b, e, 2);
        } else if (c == '\r') {
            buf_add(&b, "\\r", 2);
        } else if (c == '\n') {
            buf_add(&b, "\\n", 2);
        } else if (c == '\t') {
            buf_add(&b, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f) {
            buf_printf(&b, "\\u%04x", c);
        } else {
            char ch = (char)c;
            buf_add(&b, &ch, 1);
        }
    }
    fclose(f);
    buf_add(&b, "\"", 1);
    return b.p;
}

/* Builds request j (recipients [j*batch, j*batch+count)) into c->out. */
static void
build_request(const struct opts *o, struct conn *c, long j)
{
    long first = j * o->batch;
    long count = o->total - first < o->batch ? o->total - first : o->batch;
    int file = (int)(j % o->ncontent);
    struct buf body = {0};
    buf_add(&body, "{\"envelope_sender\": \"", 21);
    buf_add(&body, o->sender, strlen(o->sender));
    buf_add(&body, "\", \"content\": ", 14);
    buf_add(&body, contents_json[file], strlen(contents_json[file]));
    buf_add(&body, ", \"recipients\": [", 17);
    for (long k = 0; k < count; k++) {
        /* domain i gets file i mod F; consecutive requests of one file move
         * on through the domains so every domain gets its share */
        long slot = (j / o->ncontent) * o->batch + k;
        long dom = (slot * o->ncontent + file) % o->domains;
        char domain[256];
        int n = snprintf(domain, sizeof domain, o->domain_format, (int)dom);
        if (n < 0 || (size_t)n >= sizeof domain)
            die("--domain-format gives a name too long");
        buf_printf(&body, "%s{\"email\": \"u%ld@%s\"}", k ? ", " : "", first + k, domain);
    }
    buf_add(&body, "]}", 2);
    c->out.len = 0;
    buf_printf(&c->out,
               "POST %s HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
               o->path, o->host, o->port, o->token, body.len);
    buf_add(&c->out, body.p, body.len);
    free(body.p);
    c->sent = 0;
    c->in.len = 0;
    c->busy = 1;
    c->recipients = count;
    c->deadline = now_ms() + o->timeout_ms;
    posted += count;
}

static int
conn_open(const struct opts *o, struct conn *c)
{
    c->fd = load_connect(o->host, o->port);
    return c->fd < 0 ? -1 : 0;
}

static void
conn_close(struct conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

/* One reply is complete in c->in: returns its status, sets *close_after;
 * 0 while incomplete, -1 if malformed. */
static int
reply_complete(struct conn *c, int *close_after)
{
    char *end = strstr(c->in.p, "\r\n\r\n");
    if (!end)
        return c->in.len > 65536 ? -1 : 0;
    int status;
    if (sscanf(c->in.p, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    size_t head = (size_t)(end - c->in.p) + 4;
    long length = -1;
    *close_after = 0;
    for (char *line = strstr(c->in.p, "\r\n") + 2; line < end; line = strstr(line, "\r\n") + 2) {
        if (!strncasecmp(line, "Content-Length:", 15))
            length = strtol(line + 15, NULL, 10);
        else if (!strncasecmp(line, "Connection:", 11) && strstr(line, "close") &&
                 strstr(line, "close") < strstr(line, "\r\n"))
            *close_after = 1;
        else if (!strncasecmp(line, "Transfer-Encoding:", 18))
            return -1; /* the API answers with Content-Length */
    }
    if (length < 0)
        return -1;
    if (c->in.len < head + (size_t)length)
        return 0;
    return status;
}

static void
finish_request(struct conn *c, int status)
{
    requests_done++;
    c->busy = 0;
    if (status == 200) {
        ok++;
        recipients_ok += c->recipients;
    } else if (status == 404) {
        not_found++;
        error_once("HTTP 404 (endpoint missing)");
    } else {
        failed++;
        char *body = strstr(c->in.p, "\r\n\r\n");
        error_once("HTTP %d: %.150s", status, body ? body + 4 : "");
    }
}

static void
fail_request(struct conn *c, const char *why)
{
    if (c->busy) {
        requests_done++;
        failed++;
        error_once("%s", why);
    }
    c->busy = 0;
    conn_close(c);
}

static void
usage(void)
{
    fputs("usage: http_load --port N [--host IP] --token T [--path P] [--connections N]\n"
          "  [--batch M] --recipients TOTAL [--domains D] [--domain-format FMT]\n"
          "  [--sender ADDR] --content FILE [--content FILE ...] [--timeout-ms MS]\n",
          stderr);
    exit(2);
}

static void
parse_args(int argc, char **argv, struct opts *o)
{
    static const struct option lo[] = {{"host", required_argument, NULL, 'h'},
                                       {"port", required_argument, NULL, 'p'},
                                       {"token", required_argument, NULL, 't'},
                                       {"path", required_argument, NULL, 'P'},
                                       {"connections", required_argument, NULL, 'c'},
                                       {"batch", required_argument, NULL, 'b'},
                                       {"recipients", required_argument, NULL, 'n'},
                                       {"domains", required_argument, NULL, 'd'},
                                       {"domain-format", required_argument, NULL, 'f'},
                                       {"sender", required_argument, NULL, 's'},
                                       {"content", required_argument, NULL, 'C'},
                                       {"timeout-ms", required_argument, NULL, 'T'},
                                       {NULL, 0, NULL, 0}};
    *o = (struct opts){.host = "127.0.0.1",
                       .path = "/api/inject/v1",
                       .domain_format = "d%02d.bench.test",
                       .sender = "sender@bench.example",
                       .connections = 8,
                       .batch = 50,
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
        case 't':
            o->token = optarg;
            break;
        case 'P':
            o->path = optarg;
            break;
        case 'c':
            o->connections = atoi(optarg);
            break;
        case 'b':
            o->batch = atoi(optarg);
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
    if (optind != argc || o->port <= 0 || o->port > 65535 || !o->token || o->total <= 0 ||
        o->ncontent == 0 || o->connections <= 0 || o->connections > MAX_CONN || o->batch <= 0 ||
        o->domains <= 0 || o->timeout_ms <= 0)
        usage();
    for (const char *t = o->token; *t; t++)
        if (*t < 0x21 || *t > 0x7e)
            die("--token must be printable ASCII without spaces");
}

int
main(int argc, char **argv)
{
    struct opts o;
    load_prog = "http_load";
    parse_args(argc, argv, &o);
    for (int i = 0; i < o.ncontent; i++)
        contents_json[i] = json_string_of_file(o.content_files[i]);
    long nrequests = (o.total + o.batch - 1) / o.batch;
    int nconn = o.connections < nrequests ? o.connections : (int)nrequests;
    static struct conn conns[MAX_CONN];
    static struct pollfd pfd[MAX_CONN];
    int64_t t0 = now_ms();
    for (int i = 0; i < nconn; i++)
        conns[i].fd = -1;

    while (requests_done < nrequests) {
        /* give every idle connection the next request, opening if needed */
        for (int i = 0; i < nconn; i++) {
            struct conn *c = &conns[i];
            if (c->busy || next_request >= nrequests)
                continue;
            if (c->fd < 0 && conn_open(&o, c) < 0) {
                requests_done++;
                failed++;
                next_request++;
                continue;
            }
            build_request(&o, c, next_request++);
        }
        int n = 0;
        int64_t now = now_ms();
        for (int i = 0; i < nconn; i++) {
            struct conn *c = &conns[i];
            pfd[i] = (struct pollfd){.fd = -1};
            if (!c->busy)
                continue;
            if (now > c->deadline) {
                fail_request(c, "timeout waiting for the reply");
                continue;
            }
            pfd[i].fd = c->fd;
            pfd[i].events = c->sent < c->out.len ? POLLOUT : POLLIN;
            n++;
        }
        if (n == 0)
            continue;
        if (poll(pfd, (nfds_t)nconn, 1000) < 0) {
            if (errno == EINTR)
                continue;
            die("poll: %s", strerror(errno));
        }
        for (int i = 0; i < nconn; i++) {
            struct conn *c = &conns[i];
            if (pfd[i].fd < 0 || !pfd[i].revents)
                continue;
            if (c->sent < c->out.len) {
                ssize_t w = send(c->fd, c->out.p + c->sent, c->out.len - c->sent, MSG_NOSIGNAL);
                if (w < 0 && errno != EAGAIN && errno != EINTR) {
                    fail_request(c, "send failed (connection closed by the server)");
                    continue;
                }
                if (w > 0)
                    c->sent += (size_t)w;
                if (c->sent < c->out.len || !(pfd[i].revents & POLLIN))
                    continue;
            }
            char tmp[65536];
            ssize_t r = recv(c->fd, tmp, sizeof tmp, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                fail_request(c, "connection closed before the reply");
                continue;
            }
            if (c->in.len + (size_t)r > RESP_MAX) {
                fail_request(c, "reply too large");
                continue;
            }
            buf_add(&c->in, tmp, (size_t)r);
            int close_after = 0;
            int status = reply_complete(c, &close_after);
            if (status < 0) {
                fail_request(c, "malformed HTTP reply");
            } else if (status > 0) {
                finish_request(c, status);
                if (close_after)
                    conn_close(c);
            }
        }
    }
    double seconds = (double)(now_ms() - t0) / 1000.0;
    printf("requests=%ld ok=%ld failed=%ld not_found=%ld recipients_ok=%ld seconds=%.3f "
           "first_error=\"%s\"\n",
           nrequests, ok, failed, not_found, recipients_ok, seconds, first_error);
    for (int i = 0; i < nconn; i++) {
        conn_close(&conns[i]);
        free(conns[i].out.p);
        free(conns[i].in.p);
    }
    for (int i = 0; i < o.ncontent; i++)
        free(contents_json[i]);
    if (ok == nrequests && posted == o.total)
        return 0;
    return not_found > 0 && failed == 0 ? 3 : 1;
}
