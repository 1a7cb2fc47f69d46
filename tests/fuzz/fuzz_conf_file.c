/* libFuzzer target for whole configuration files: the input is written to a
 * private directory (without conf.d/) and loaded. A refused file must come
 * with a "file:line: " message; an accepted one must dump to text that loads
 * again and dumps identically (the round trip pgmtad --check relies on).
 * libconfig 1.5 leaks a string buffer on some syntax errors; fuzz with
 * LSAN_OPTIONS=suppressions=FILE holding "leak:libconfig.so". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "util.h"

static char *dir;

static void
remove_dir(void)
{
    rmdir(dir);
}

static void
check(int ok, const char *what, const char *detail)
{
    if (!ok) {
        fprintf(stderr, "fuzz_conf_file: %s\n%s\n", what, detail ? detail : "");
        abort();
    }
}

static void
write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    check(f != NULL, "cannot write", path);
    check(fwrite(data, 1, size, f) == size, "short write", path);
    check(fclose(f) == 0, "cannot close", path);
}

static char *
dump(const struct conf *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    check(f != NULL, "open_memstream", NULL);
    conf_dump(c, f);
    fclose(f);
    return text;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dir) {
        char tmpl[] = "/tmp/pgmta-fuzz-conf-XXXXXX";
        check(mkdtemp(tmpl) != NULL, "mkdtemp", NULL);
        dir = xstrdup(tmpl);
        atexit(remove_dir);
    }
    char *path = xasprintf("%s/pgmta.conf", dir);
    write_file(path, data, size);
    char err[1024];
    struct conf *c = conf_load(path, err, sizeof err);
    if (!c) {
        size_t plen = strlen(path);
        const char *rest = err + plen;
        int prefixed = strncmp(err, path, plen) == 0 && rest[0] == ':' && rest[1] >= '0' &&
                       rest[1] <= '9' && strstr(rest, ": ") != NULL;
        /* Errors inside an @include name the included file instead. */
        check(prefixed || strstr(err, ":") != NULL, "error without file:line", err);
    } else {
        char *first = dump(c);
        conf_free(c);
        write_file(path, first, strlen(first));
        c = conf_load(path, err, sizeof err);
        check(c != NULL, "dump does not load again", err);
        char *second = dump(c);
        check(strcmp(first, second) == 0, "dump changed by a round trip", second);
        conf_free(c);
        free(first);
        free(second);
    }
    unlink(path);
    free(path);
    return 0;
}
