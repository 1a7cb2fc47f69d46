/* dkim_sign: applies the dkim module to one message for integration tests.
 *
 *   dkim_sign -c pgmta.conf [--from sender@example.com] < message > signed
 *
 * Loads the configuration and its DKIM keys, then writes the headers that
 * dkim_headers() returns (if any) followed by the message unchanged. A
 * configuration or key error is printed on stderr with exit status 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "dkim.h"
#include "util.h"

static void
usage(void)
{
    fprintf(stderr, "usage: dkim_sign -c pgmta.conf [--from ADDRESS] < message\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    const char *conf_path = NULL, *from = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
            conf_path = argv[++i];
        else if (strcmp(argv[i], "--from") == 0 && i + 1 < argc)
            from = argv[++i];
        else
            usage();
    }
    if (!conf_path)
        usage();

    char err[1024];
    struct conf *conf = conf_load(conf_path, err, sizeof err);
    if (!conf) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    struct dkim *d = dkim_new(conf, err, sizeof err);
    if (!d) {
        fprintf(stderr, "%s\n", err);
        conf_free(conf);
        return 1;
    }

    struct buf msg;
    buf_init(&msg);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        buf_append(&msg, chunk, n);

    char *headers =
        dkim_headers(d, from, (const unsigned char *)(msg.data ? msg.data : ""), msg.len);
    if (headers)
        fputs(headers, stdout);
    fwrite(msg.data ? msg.data : "", 1, msg.len, stdout);
    free(headers);
    buf_free(&msg);
    dkim_free(d);
    conf_free(conf);
    return fflush(stdout) == 0 ? 0 : 1;
}
