/* log: one line per event, "key=value" pairs, starting with the object id
 * (queue, session, request). Lines go to stderr, which the root process and
 * systemd capture. */
#ifndef PGMTA_LOG_H
#define PGMTA_LOG_H

#include <stddef.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG, LOG_TRACE };

/* Current threshold; messages above it are dropped. Default LOG_INFO,
 * overridden by PGMTA_LOG_LEVEL=error|warn|info|debug|trace or by config. */
extern enum log_level log_threshold;
/* Prefix for every line, e.g. "pgmtad[bulk/1]". */
void log_set_ident(const char *ident);
int log_level_parse(const char *s, enum log_level *out);
/* src[0..len) into dst (capacity cap, NUL-terminated) with CR, LF, TAB and
 * backslash as \r \n \t \\ and other control characters as \xNN; stops
 * before a character that does not fit. Returns the length written. log_msg
 * applies it to every record. */
size_t log_escape(char *dst, size_t cap, const char *src, size_t len);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_threshold >= LOG_DEBUG)                                                            \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)
#define log_trace(...)                                                                             \
    do {                                                                                           \
        if (log_threshold >= LOG_TRACE)                                                            \
            log_msg(LOG_TRACE, __VA_ARGS__);                                                       \
    } while (0)

#endif
