/* smtp_send: drives one smtp_client session for integration tests.
 *
 *   smtp_send --host 127.0.0.1 [--name mx.test] --port N [--host ... ]
 *             [--starttls] [--require-tls] [--tls-verify --ca FILE]
 *             [--source 127.0.0.2] [--helo NAME] [--timeout-ms N]
 *             [--data-timeout-ms N] [--batches K] [--envid ID]
 *             --from A --to B [--to C] [--msg FILE] [--to D --msg FILE2] ...
 *
 * Every --host starts a new MX host (tried in the order given); --name sets
 * the latest host's name (default: its address), --port the port of hosts
 * given without ":PORT". A message is made of the current --from and the
 * --to options since the previous --msg (or the previous message's
 * recipients if none), and ends with --msg FILE; trailing --to options make a
 * last message with a small default body. The batch of messages is sent K
 * times on one connection (a new session if one becomes unusable). Output:
 * one line per recipient
 *   rcpt=<addr> outcome=delivered|transient|permanent code=250 status=2.0.0 reply="..." batch=N
 * and per batch
 *   conn host=... ip=... source=... tls=TLSv1.3|none cipher=...|none usable=1
 * The session owns nothing of ours; this program owns the messages. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "dns.h"
#include "log.h"
#include "smtp_client.h"
#include "util.h"

#define MAX_ITEMS 256

struct tool {
    struct event_base *base;
    struct smtp_client_config cfg;
    struct dns_host hosts[16];
    size_t nhosts;
    struct smtp_message msgs[MAX_ITEMS];
    size_t nmsgs;
    int batches;
    int batch;
    struct smtp_client *client;
};

static void
usage(void)
{
    fprintf(stderr, "usage: smtp_send --host IP [--name NAME] --port N [--starttls] "
                    "[--require-tls] [--tls-verify --ca FILE] [--source IP] [--helo NAME] "
                    "[--timeout-ms N] [--data-timeout-ms N] [--batches K] --from A --to B "
                    "[--to C] [--msg FILE]...\n");
    exit(2);
}

static int
parse_ip(const char *s, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, s, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        *len = sizeof *in;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        *len = sizeof *in6;
        return 0;
    }
    return -1;
}

static unsigned char *
read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    struct buf b;
    buf_init(&b);
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
        buf_append(&b, tmp, n);
    fclose(f);
    *len = b.len;
    return (unsigned char *)(b.data ? b.data : xstrdup(""));
}

static bool
has_8bit(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] & 0x80)
            return true;
    return false;
}

static void
print_quoted(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", stdout);
        else if (*s == '\r')
            fputs("\\r", stdout);
        else
            putchar(*s);
    }
    putchar('"');
}

static void start_batch(struct tool *t);

static void
on_batch(struct smtp_client *c, const struct smtp_rcpt_result *const *results,
         const struct smtp_conn_info *info, bool usable, void *arg)
{
    struct tool *t = arg;
    static const char *const names[] = {"delivered", "transient", "permanent"};
    for (size_t i = 0; i < t->nmsgs; i++) {
        for (size_t j = 0; j < t->msgs[i].nrcpts; j++) {
            const struct smtp_rcpt_result *r = &results[i][j];
            printf("rcpt=%s outcome=%s code=%d status=%s reply=", t->msgs[i].rcpts[j],
                   names[r->outcome], r->code, r->status);
            print_quoted(r->reply);
            printf(" batch=%d msg=%zu\n", t->batch, i);
        }
    }
    printf("conn host=%s ip=%s source=%s tls=%s cipher=%s usable=%d batch=%d\n",
           info->host ? info->host : "none", info->ip ? info->ip : "none",
           info->source_ip ? info->source_ip : "none",
           info->tls_protocol ? info->tls_protocol : "none",
           info->tls_cipher ? info->tls_cipher : "none", usable, t->batch);
    fflush(stdout);
    t->batch++;
    if (!usable) {
        smtp_client_free(c);
        t->client = NULL;
    }
    if (t->batch >= t->batches) {
        if (t->client)
            smtp_client_quit(t->client);
        t->client = NULL;
        return;
    }
    start_batch(t);
}

static void
start_batch(struct tool *t)
{
    if (!t->client)
        t->client = smtp_client_new(t->base, &t->cfg, t->hosts, t->nhosts);
    smtp_client_send(t->client, t->msgs, t->nmsgs, on_batch, t);
}

int
main(int argc, char **argv)
{
    static struct tool t;
    static const char *tos[MAX_ITEMS];
    static bool owned[MAX_ITEMS];
    size_t ntos = 0, first_to = 0;
    const char *from = "";
    const char *envid = NULL;
    uint16_t port = 25;
    struct sockaddr_storage source;
    socklen_t source_len = 0;
    uint64_t timeout = 10000, data_timeout = 0;
    char *host_ips[16];
    int host_ports[16];

    signal(SIGPIPE, SIG_IGN);
    log_set_ident("smtp_send");
    t.batches = 1;
    t.cfg.helo_name = "client.test";
    t.cfg.id = "smtp_send";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_ARG                                                                                   \
    do {                                                                                           \
        if (!v)                                                                                    \
            usage();                                                                               \
        i++;                                                                                       \
    } while (0)
        if (!strcmp(a, "--host")) {
            NEED_ARG;
            if (t.nhosts >= 16)
                usage();
            char *h = xstrdup(v);
            int hp = -1;
            char *colon = strrchr(h, ':');
            if (h[0] == '[') {
                char *rb = strchr(h, ']');
                if (!rb)
                    usage();
                *rb = '\0';
                if (rb[1] == ':')
                    hp = atoi(rb + 2);
                memmove(h, h + 1, strlen(h));
            } else if (colon && strchr(h, ':') == colon) {
                *colon = '\0';
                hp = atoi(colon + 1);
            }
            host_ips[t.nhosts] = h;
            host_ports[t.nhosts] = hp;
            t.hosts[t.nhosts].name = h;
            t.nhosts++;
        } else if (!strcmp(a, "--name")) {
            NEED_ARG;
            if (!t.nhosts)
                usage();
            t.hosts[t.nhosts - 1].name = (char *)v;
        } else if (!strcmp(a, "--port")) {
            NEED_ARG;
            port = (uint16_t)atoi(v);
        } else if (!strcmp(a, "--starttls")) {
            t.cfg.use_starttls = true;
        } else if (!strcmp(a, "--require-tls")) {
            t.cfg.use_starttls = true;
            t.cfg.require_starttls = true;
        } else if (!strcmp(a, "--tls-verify")) {
            t.cfg.tls_verify = true;
        } else if (!strcmp(a, "--ca")) {
            NEED_ARG;
            t.cfg.tls_ca_file = v;
        } else if (!strcmp(a, "--source")) {
            NEED_ARG;
            if (parse_ip(v, 0, &source, &source_len) != 0)
                usage();
        } else if (!strcmp(a, "--helo")) {
            NEED_ARG;
            t.cfg.helo_name = v;
        } else if (!strcmp(a, "--timeout-ms")) {
            NEED_ARG;
            timeout = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--data-timeout-ms")) {
            NEED_ARG;
            data_timeout = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--batches")) {
            NEED_ARG;
            t.batches = atoi(v);
        } else if (!strcmp(a, "--envid")) {
            NEED_ARG;
            envid = v;
        } else if (!strcmp(a, "--from")) {
            NEED_ARG;
            from = v;
        } else if (!strcmp(a, "--to")) {
            NEED_ARG;
            if (ntos >= MAX_ITEMS)
                usage();
            tos[ntos++] = v;
        } else if (!strcmp(a, "--msg")) {
            NEED_ARG;
            if (t.nmsgs >= MAX_ITEMS)
                usage();
            struct smtp_message *m = &t.msgs[t.nmsgs];
            if (ntos == first_to && t.nmsgs == 0)
                usage();
            if (ntos == first_to) { /* same recipients as the previous message */
                *m = t.msgs[t.nmsgs - 1];
            } else {
                m->rcpts = &tos[first_to];
                m->nrcpts = ntos - first_to;
            }
            first_to = ntos;
            m->mail_from = from;
            m->content = read_file(v, &m->content_len);
            owned[t.nmsgs++] = true;
        } else {
            usage();
        }
#undef NEED_ARG
    }
    if (ntos > first_to) {
        struct smtp_message *m = &t.msgs[t.nmsgs++];
        m->mail_from = from;
        m->rcpts = &tos[first_to];
        m->nrcpts = ntos - first_to;
        static const char body[] = "Subject: test\r\n\r\nhello\r\n";
        m->content = (const unsigned char *)body;
        m->content_len = sizeof body - 1;
    }
    if (!t.nhosts || !t.nmsgs)
        usage();
    for (size_t i = 0; i < t.nmsgs; i++) {
        struct smtp_message *m = &t.msgs[i];
        m->envid = envid;
        m->eightbit = has_8bit(m->content, m->content_len);
        bool utf8 = has_8bit((const unsigned char *)m->mail_from, strlen(m->mail_from));
        for (size_t j = 0; j < m->nrcpts; j++)
            utf8 = utf8 || has_8bit((const unsigned char *)m->rcpts[j], strlen(m->rcpts[j]));
        m->smtputf8 = utf8;
    }
    for (size_t i = 0; i < t.nhosts; i++) {
        struct dns_addr *a = xcalloc(1, sizeof *a);
        uint16_t p = host_ports[i] >= 0 ? (uint16_t)host_ports[i] : port;
        if (parse_ip(host_ips[i], p, &a->sa, &a->salen) != 0) {
            fprintf(stderr, "smtp_send: --host wants an IP address: %s\n", host_ips[i]);
            return 2;
        }
        t.hosts[i].addrs = a;
        t.hosts[i].naddrs = 1;
        t.hosts[i].preference = (uint16_t)(10 * i);
    }
    if (source_len) {
        t.cfg.source = (const struct sockaddr *)&source;
        t.cfg.source_len = source_len;
    }
    t.cfg.connect_timeout_ms = timeout;
    t.cfg.command_timeout_ms = timeout;
    t.cfg.data_timeout_ms = data_timeout ? data_timeout : timeout;

    t.base = event_base_new();
    start_batch(&t);
    event_base_dispatch(t.base);
    event_base_free(t.base);
    smtp_client_tls_cleanup();
    for (size_t i = 0; i < t.nhosts; i++) {
        free(t.hosts[i].addrs);
        free(host_ips[i]);
    }
    for (size_t i = 0; i < t.nmsgs; i++)
        if (owned[i])
            free((void *)t.msgs[i].content);
    return 0;
}
