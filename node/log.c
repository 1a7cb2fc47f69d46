/* log: formatted single-line log records on stderr. Every record is one
 * line: control characters in the formatted text (CR, LF, TAB, ESC, DEL and
 * the rest, which a remote reply or a user name can carry) are escaped here,
 * at the sink, as \r, \n, \t or \xNN, and a backslash as \\. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum log_level log_threshold = LOG_INFO;
static char log_ident[64] = "pgmta";
static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

void
log_set_ident(const char *ident)
{
    snprintf(log_ident, sizeof log_ident, "%s", ident);
    const char *env = getenv("PGMTA_LOG_LEVEL");
    if (env)
        log_level_parse(env, &log_threshold);
}

int
log_level_parse(const char *s, enum log_level *out)
{
    for (int i = 0; i <= LOG_TRACE; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

size_t
log_escape(char *dst, size_t cap, const char *src, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        char esc[4];
        size_t k = 0;
        if (c == '\r' || c == '\n' || c == '\t' || c == '\\') {
            esc[k++] = '\\';
            esc[k++] = c == '\r' ? 'r' : c == '\n' ? 'n' : c == '\t' ? 't' : '\\';
        } else if (c < 0x20 || c == 0x7f) {
            esc[k++] = '\\';
            esc[k++] = 'x';
            esc[k++] = hex[c >> 4];
            esc[k++] = hex[c & 15];
        } else {
            esc[k++] = (char)c;
        }
        if (o + k > cap - 1)
            break;
        memcpy(dst + o, esc, k);
        o += k;
    }
    dst[o] = '\0';
    return o;
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
    if (level > log_threshold)
        return;
    char line[4096];
    char text[3072];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(tv.tv_usec / 1000), log_ident, (int)getpid(), level_names[level]);
    if (n < 0 || (size_t)n >= sizeof line)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    size_t tlen = m < 0 ? 0 : (size_t)m >= sizeof text ? sizeof text - 1 : (size_t)m;
    size_t len = log_escape(line + n, sizeof line - (size_t)n - 1, text, tlen) + (size_t)n;
    line[len++] = '\n';
    /* One write per record so lines from several processes do not interleave. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
