/* json_parse: a strict RFC 8259 JSON parser for request bodies (the HTTP
 * injection API). The whole text must be one value with optional white
 * space around it; strings must be valid UTF-8 (no overlong forms, no
 * surrogates, nothing above U+10FFFF), \u escapes are decoded (surrogate
 * pairs combined, a lone surrogate refused). Nesting depth and the number
 * of values are bounded, so neither the stack nor memory grows with a
 * hostile input beyond those bounds. Duplicate object keys are kept; the
 * lookup returns the first. */
#ifndef PGMTA_JSON_PARSE_H
#define PGMTA_JSON_PARSE_H

#include <stdbool.h>
#include <stddef.h>

#define JSON_MAX_DEPTH 64
#define JSON_MAX_VALUES 4000000

enum json_type {
    JSON_NULL,
    JSON_FALSE,
    JSON_TRUE,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT
};

struct json_value {
    enum json_type type;
    /* JSON_STRING: the decoded UTF-8 text (NUL-terminated; it may contain
     * NUL from \u0000, hence len). JSON_NUMBER: the literal as written. */
    char *str;
    size_t len;
    /* JSON_ARRAY: n items. JSON_OBJECT: n members, keys[i] -> items[i]. */
    struct json_value *items;
    char **keys;
    size_t *keylens;
    size_t n;
};

/* Parses TEXT (LEN bytes, NUL bytes are not JSON). Returns the root value
 * (free with json_free) or NULL with "offset N: reason" in err. */
struct json_value *json_parse(const char *text, size_t len, char *err, size_t errlen);
void json_free(struct json_value *v);

/* The member KEY of an object, or NULL (also when v is not an object). */
const struct json_value *json_get(const struct json_value *v, const char *key);
/* The name of a type for error messages ("a string", "an object", ...). */
const char *json_type_name(enum json_type t);
/* True when the string V has no NUL byte. */
bool json_string_is_text(const struct json_value *v);

#endif
