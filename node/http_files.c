/* http_files: the dashboard's static files (see http_files.h).
 *
 * Ownership: nothing is kept between requests. A file's descriptor is
 * handed to the reply's evbuffer (evbuffer_add_file), which closes it once
 * the file is sent; the evhttp request belongs to libevent. Names are
 * never decoded or joined with subdirectories, so no path leaves DIR. */
#include "http_files.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "http_reply.h"
#include "log.h"
#include "util.h"

#ifndef PGMTA_DASHBOARD_SOURCE_DIR
#define PGMTA_DASHBOARD_SOURCE_DIR ""
#endif
#ifndef PGMTA_DASHBOARD_DIR
#define PGMTA_DASHBOARD_DIR "/usr/local/share/pgmta/dashboard"
#endif

static const char *
content_type(const char *name)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
    };
    const char *dot = strrchr(name, '.');
    if (!dot)
        return NULL;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(dot, types[i].ext))
            return types[i].type;
    return NULL;
}

/* Only plain names directly in the dashboard directory: letters, digits,
 * '.', '_', '-', not starting with '.'; percent-encoded paths are never
 * decoded, so "%2e%2e" stays a name that does not exist. */
bool
http_files_valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > HTTP_FILES_MAX_NAME || name[0] == '.' || strstr(name, ".."))
        return false;
    return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

void
http_files_serve(const char *dir, struct evhttp_request *req, const char *path)
{
    if (!(evhttp_request_get_command(req) & (EVHTTP_REQ_GET | EVHTTP_REQ_HEAD))) {
        http_reply_405(req, "GET, HEAD");
        return;
    }
    const char *name = strcmp(path, "/") == 0 ? "index.html" : path + 1;
    const char *ctype = path[0] == '/' && http_files_valid_name(name) ? content_type(name) : NULL;
    if (!ctype || !dir) {
        http_reply_error(req, 404, "not found");
        return;
    }
    char *file = xasprintf("%s/%s", dir, name);
    int fd = open(file, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    free(file);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > HTTP_FILES_MAX_SIZE) {
        if (fd >= 0)
            close(fd);
        http_reply_error(req, 404, "not found");
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", ctype);
    evhttp_add_header(out, "Cache-Control", "no-cache");
    evhttp_add_header(out, "X-Content-Type-Options", "nosniff");
    evhttp_add_header(out, "X-Frame-Options", "DENY");
    evhttp_add_header(out, "Referrer-Policy", "no-referrer");
    evhttp_add_header(out, "Content-Security-Policy",
                      "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                      "form-action 'self'");
    struct evbuffer *b = evbuffer_new();
    PGMTA_ASSERT(b != NULL);
    if (st.st_size > 0 && evbuffer_add_file(b, fd, 0, st.st_size) != 0) {
        evbuffer_free(b);
        http_reply_error(req, 500, "cannot read file");
        return;
    }
    if (st.st_size == 0)
        close(fd);
    log_debug("http event=reply method=%s uri=\"%s\" status=200 bytes=%lld",
              http_method_name(evhttp_request_get_command(req)), evhttp_request_get_uri(req),
              (long long)st.st_size);
    evhttp_send_reply(req, 200, "OK", b);
    evbuffer_free(b);
}

static bool
has_index(const char *dir)
{
    struct stat st;
    char *index = xasprintf("%s/index.html", dir);
    bool ok = dir[0] && stat(index, &st) == 0;
    free(index);
    return ok;
}

char *
http_files_default_dir(void)
{
    /* An installed pgmtad (a package, or cmake --install with any prefix)
     * serves the files installed with it, ../share/pgmta/dashboard beside
     * its binary, even where the source tree it was built from exists. */
    char *rel = util_exe_relative("../share/pgmta/dashboard");
    if (rel && has_index(rel))
        return rel;
    free(rel);
    return xstrdup(has_index(PGMTA_DASHBOARD_SOURCE_DIR) ? PGMTA_DASHBOARD_SOURCE_DIR
                                                         : PGMTA_DASHBOARD_DIR);
}
