/* libFuzzer target for the pure parts of HTTP request handling: the input,
 * as one string, is taken as a Host header value (http_host_name), an
 * Authorization header value (http_bearer_token), a dashboard file name
 * (http_files_valid_name) and a query string or form body (libevent's
 * parser, as the API's parameters are read). A host accepted is non-empty,
 * fits, has no brackets, and parses back to itself; a bearer token lies
 * inside the value, after "Bearer " and without leading spaces; a file
 * name accepted has only the allowed characters, no "..", no leading '.'
 * and no '/'. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "hostport.h"
#include "http.h"
#include "http_files.h"

static void
check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_http_request: %s\n", what);
        abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';

    char name[HOSTPORT_HOST_MAX + 1];
    if (http_host_name(s, name, sizeof name)) {
        size_t n = strlen(name);
        check(n > 0 && n <= HOSTPORT_HOST_MAX, "host length");
        check(!strchr(name, '[') && !strchr(name, ']') && !strchr(name, '/'), "host characters");
        check(strncasecmp(s, "[IPv6:", 6) != 0, "SMTP address literal accepted as Host");
        char again[HOSTPORT_HOST_MAX + 1];
        char v[HOSTPORT_HOST_MAX + 3];
        snprintf(v, sizeof v, strchr(name, ':') ? "[%s]" : "%s", name);
        check(http_host_name(v, again, sizeof again) && !strcmp(again, name), "host round trip");
    }
    char tiny[4];
    if (http_host_name(s, tiny, sizeof tiny))
        check(strlen(tiny) < sizeof tiny, "host overflows its buffer");

    const char *t = http_bearer_token(s);
    if (t) {
        check(t >= s + 7 && t <= s + strlen(s), "token outside the value");
        check(strncasecmp(s, "Bearer ", 7) == 0 && *t != ' ', "token without the scheme");
    }
    check(http_bearer_token(NULL) == NULL, "token of no header");

    if (http_files_valid_name(s)) {
        size_t n = strlen(s);
        check(n > 0 && n <= HTTP_FILES_MAX_NAME, "file name length");
        check(s[0] != '.' && !strstr(s, "..") && !strchr(s, '/') && !strchr(s, '%'),
              "file name that leaves the directory");
    }

    struct evkeyvalq q;
    TAILQ_INIT(&q);
    if (evhttp_parse_query_str(s, &q) == 0)
        for (struct evkeyval *kv = q.tqh_first; kv; kv = kv->next.tqe_next)
            check(kv->key != NULL && kv->value != NULL, "parameter without key or value");
    evhttp_clear_headers(&q);
    free(s);
    return 0;
}
