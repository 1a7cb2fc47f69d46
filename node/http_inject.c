/* http_inject: request body -> one mta.inject_request call -> reply (see
 * http_inject.h).
 *
 * Ownership: an inject_batch owns the parsed JSON tree (recipient strings
 * point into it), the built messages and the binary array parameters; the
 * caller (http.c) owns the batch until http_inject_free. Templates are
 * expanded per recipient only when the content has a "{{": without one,
 * every recipient shares one message. */
#include "http_inject.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <zlib.h>

#include "json.h"
#include "json_parse.h"
#include "conf.h"
#include "metrics.h"
#include "mime.h"
#include "smtp_server.h"
#include "util.h"

/* What http_inject_configure() took from the configuration: hop-count-limit
 * and the names "vmta" may give (virtual MTAs and pools; NULL before the
 * first call: not checked). Process-wide, replaced whole. */
static unsigned http_inject_hop_limit = 50;
static char **http_inject_vmtas;
static size_t http_inject_nvmtas;

void
http_inject_configure(const struct conf *conf)
{
    for (size_t i = 0; i < http_inject_nvmtas; i++)
        free(http_inject_vmtas[i]);
    free(http_inject_vmtas);
    http_inject_hop_limit = conf->hop_count_limit ? conf->hop_count_limit : 50;
    http_inject_nvmtas = 0;
    http_inject_vmtas = xcalloc(conf->nvmtas + conf->nvmta_pools + 1, sizeof *http_inject_vmtas);
    for (size_t i = 0; i < conf->nvmtas; i++)
        http_inject_vmtas[http_inject_nvmtas++] = xstrdup(conf->vmtas[i].name);
    for (size_t i = 0; i < conf->nvmta_pools; i++)
        http_inject_vmtas[http_inject_nvmtas++] = xstrdup(conf->vmta_pools[i].name);
}

static bool
vmta_known(const char *name)
{
    if (!http_inject_vmtas)
        return true;
    for (size_t i = 0; i < http_inject_nvmtas; i++)
        if (strcmp(http_inject_vmtas[i], name) == 0)
            return true;
    return false;
}

#define OID_BYTEA 17
#define OID_INT4 23
#define OID_TEXT 25
#define MAX_ATTACHMENTS 100
#define MAX_HEADERS 200

struct rcpt {
    const struct json_value *email, *name, *subs, *meta;
};

/* Metadata limits, per object (the request's and each recipient's; see
 * README, "Over HTTP"). */
#define META_MAX_KEYS 32
#define META_MAX_KEY 64
#define META_MAX_VALUE 1024
#define META_MAX_BYTES 4096

struct inject_batch {
    struct json_value *root;
    const char *mail_from;
    const char *job_id, *vmta, *pipe, *envid;
    struct rcpt *rcpts;
    size_t nrcpts;
    int *rcpt_msg; /* 0-based message of each recipient */
    size_t nmsgs;
    size_t *msg_first;                      /* first recipient of each message */
    struct buf contents, rcpt_arr, msg_arr; /* binary arrays */
    int contents_len, rcpt_len, msg_len;
    struct buf meta;  /* the request's metadata as JSON; empty: none */
    struct buf rmeta; /* text[] of each recipient's metadata; empty: none has any */
    int rmeta_len;
};

/* What the content object says, templates pointing into the JSON tree. */
struct content {
    const struct json_value *raw;
    struct mime_address from, reply_to;
    const struct json_value *subject, *text, *html;
    const char *hnames[MAX_HEADERS];
    const struct json_value *hvalues[MAX_HEADERS];
    size_t nheaders;
    struct mime_attachment atts[MAX_ATTACHMENTS];
    struct buf att_data[MAX_ATTACHMENTS];
    size_t natts;
};

/* ---- errors --------------------------------------------------------------------- */

struct ctx {
    char err[512];
    int status;
};

static bool __attribute__((format(printf, 3, 4)))
bad(struct ctx *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    c->status = status;
    return false;
}

static void
error_body(struct buf *out, const char *msg)
{
    buf_puts(out, "{\"error\": ");
    json_append_string(out, msg);
    buf_puts(out, ", \"success_count\": 0}\n");
}

/* ---- field checks --------------------------------------------------------------- */

static bool
want_string(struct ctx *c, const struct json_value *v, const char *field, bool nonempty)
{
    if (v->type != JSON_STRING)
        return bad(c, 400, "%s: a string expected, got %s", field, json_type_name(v->type));
    if (!json_string_is_text(v))
        return bad(c, 400, "%s: NUL character", field);
    if (nonempty && v->len == 0)
        return bad(c, 400, "%s: empty", field);
    return true;
}

/* An optional string field of OBJ; *out stays NULL when absent or null. */
static bool
opt_string(struct ctx *c, const struct json_value *obj, const char *key, const char *prefix,
           const char **out)
{
    const struct json_value *v = json_get(obj, key);
    *out = NULL;
    if (!v || v->type == JSON_NULL)
        return true;
    char field[128];
    snprintf(field, sizeof field, "%s%s", prefix, key);
    if (!want_string(c, v, field, true))
        return false;
    if (v->len > 1000)
        return bad(c, 400, "%s: longer than 1000 bytes", field);
    *out = v->str;
    return true;
}

/* Every key of OBJ is one of KEYS (NULL-terminated). */
static bool
known_keys(struct ctx *c, const struct json_value *obj, const char *prefix, const char *const *keys)
{
    for (size_t i = 0; i < obj->n; i++) {
        bool ok = false;
        for (const char *const *k = keys; *k && !ok; k++)
            ok = strlen(*k) == obj->keylens[i] && !memcmp(*k, obj->keys[i], obj->keylens[i]);
        if (!ok)
            return bad(c, 400, "%s%.100s: unknown field", prefix, obj->keys[i]);
    }
    return true;
}

static bool
check_subs(struct ctx *c, const struct json_value *v, const char *field)
{
    if (v->type != JSON_OBJECT)
        return bad(c, 400, "%s: an object expected, got %s", field, json_type_name(v->type));
    for (size_t i = 0; i < v->n; i++) {
        const struct json_value *x = &v->items[i];
        if (x->type == JSON_ARRAY || x->type == JSON_OBJECT ||
            (x->type == JSON_STRING && !json_string_is_text(x)))
            return bad(c, 400, "%s.%.100s: a string, number, boolean or null expected", field,
                       v->keys[i]);
    }
    return true;
}

/* Metadata: an object of at most META_MAX_KEYS distinct non-empty keys with
 * string, number or boolean values, written as JSON into OUT. */
static bool
check_meta(struct ctx *c, const struct json_value *v, const char *field, struct buf *out)
{
    if (v->type != JSON_OBJECT)
        return bad(c, 400, "%s: an object expected, got %s", field, json_type_name(v->type));
    if (v->n > META_MAX_KEYS)
        return bad(c, 400, "%s: more than %d keys", field, META_MAX_KEYS);
    buf_puts(out, "{");
    for (size_t i = 0; i < v->n; i++) {
        const struct json_value *x = &v->items[i];
        const char *k = v->keys[i];
        size_t kl = v->keylens[i];
        if (kl == 0 || strlen(k) != kl)
            return bad(c, 400, "%s: a key is empty or holds a NUL character", field);
        if (kl > META_MAX_KEY)
            return bad(c, 400, "%s.%.64s: key longer than %d bytes", field, k, META_MAX_KEY);
        for (size_t j = 0; j < i; j++)
            if (v->keylens[j] == kl && !memcmp(v->keys[j], k, kl))
                return bad(c, 400, "%s.%.64s: duplicate key", field, k);
        if (x->type == JSON_STRING) {
            if (!json_string_is_text(x))
                return bad(c, 400, "%s.%.64s: NUL character", field, k);
            if (x->len > META_MAX_VALUE)
                return bad(c, 400, "%s.%.64s: value longer than %d bytes", field, k,
                           META_MAX_VALUE);
        } else if (x->type == JSON_NUMBER) {
            double d = strtod(x->str, NULL);
            if (x->len > 40 || d != d || d > 1e300 || d < -1e300)
                return bad(c, 400, "%s.%.64s: number out of range", field, k);
        } else if (x->type != JSON_TRUE && x->type != JSON_FALSE) {
            return bad(c, 400, "%s.%.64s: a string, number or boolean expected, got %s", field, k,
                       json_type_name(x->type));
        }
        if (i)
            buf_puts(out, ",");
        json_append_string(out, k);
        buf_puts(out, ":");
        if (x->type == JSON_STRING)
            json_append_string(out, x->str);
        else if (x->type == JSON_NUMBER)
            buf_append(out, x->str, x->len);
        else
            buf_puts(out, x->type == JSON_TRUE ? "true" : "false");
    }
    buf_puts(out, "}");
    if (out->len > META_MAX_BYTES)
        return bad(c, 400, "%s: larger than %d bytes as JSON", field, META_MAX_BYTES);
    return true;
}

static bool
parse_address(struct ctx *c, const struct json_value *v, const char *field, struct mime_address *a)
{
    char f[64];
    if (v->type == JSON_STRING) {
        if (!want_string(c, v, field, true))
            return false;
        a->email = v->str;
        return true;
    }
    if (v->type != JSON_OBJECT)
        return bad(c, 400, "%s: an object {email, name} expected", field);
    static const char *const keys[] = {"email", "name", NULL};
    snprintf(f, sizeof f, "%s.", field);
    if (!known_keys(c, v, f, keys) || !opt_string(c, v, "email", f, &a->email) ||
        !opt_string(c, v, "name", f, &a->name))
        return false;
    if (!a->email)
        return bad(c, 400, "%s.email: missing", field);
    return true;
}

static bool
parse_attachment(struct ctx *c, const struct json_value *v, size_t i, struct mime_attachment *a,
                 struct buf *data)
{
    char p[64];
    snprintf(p, sizeof p, "content.attachments[%zu].", i);
    static const char *const keys[] = {"data",      "base64",     "content_type",
                                       "file_name", "content_id", NULL};
    if (v->type != JSON_OBJECT)
        return bad(c, 400, "content.attachments[%zu]: an object expected", i);
    if (!known_keys(c, v, p, keys))
        return false;
    const struct json_value *d = json_get(v, "data"), *b64 = json_get(v, "base64");
    if (!d)
        return bad(c, 400, "%sdata: missing", p);
    if (d->type != JSON_STRING)
        return bad(c, 400, "%sdata: a string expected", p);
    if (b64 && b64->type != JSON_TRUE && b64->type != JSON_FALSE && b64->type != JSON_NULL)
        return bad(c, 400, "%sbase64: a boolean expected", p);
    if (b64 && b64->type == JSON_TRUE) {
        if (mime_base64_decode(data, d->str, d->len) < 0)
            return bad(c, 400, "%sdata: not valid base64", p);
    } else {
        buf_append(data, d->str, d->len);
    }
    a->data = data->data;
    a->len = data->len;
    return opt_string(c, v, "content_type", p, &a->content_type) &&
           opt_string(c, v, "file_name", p, &a->file_name) &&
           opt_string(c, v, "content_id", p, &a->content_id);
}

static bool
opt_template(struct ctx *c, const struct json_value *obj, const char *key,
             const struct json_value **out)
{
    const struct json_value *v = json_get(obj, key);
    *out = NULL;
    if (!v || v->type == JSON_NULL)
        return true;
    char field[64];
    snprintf(field, sizeof field, "content.%s", key);
    if (!want_string(c, v, field, false))
        return false;
    *out = v;
    return true;
}

static bool
parse_content(struct ctx *c, const struct json_value *v, struct content *ct)
{
    if (v->type == JSON_STRING) {
        if (!want_string(c, v, "content", true))
            return false;
        ct->raw = v;
        return true;
    }
    if (v->type != JSON_OBJECT)
        return bad(c, 400, "content: a string (raw message) or an object expected, got %s",
                   json_type_name(v->type));
    static const char *const keys[] = {"from",      "reply_to",  "subject",     "headers",
                                       "text_body", "html_body", "attachments", NULL};
    if (!known_keys(c, v, "content.", keys))
        return false;
    const struct json_value *x;
    if ((x = json_get(v, "from")) && x->type != JSON_NULL &&
        !parse_address(c, x, "content.from", &ct->from))
        return false;
    if ((x = json_get(v, "reply_to")) && x->type != JSON_NULL &&
        !parse_address(c, x, "content.reply_to", &ct->reply_to))
        return false;
    if (!opt_template(c, v, "subject", &ct->subject) ||
        !opt_template(c, v, "text_body", &ct->text) || !opt_template(c, v, "html_body", &ct->html))
        return false;
    if (!ct->text && !ct->html)
        return bad(c, 400, "content: text_body or html_body is required");
    if ((x = json_get(v, "headers")) && x->type != JSON_NULL) {
        if (x->type != JSON_OBJECT)
            return bad(c, 400, "content.headers: an object expected");
        if (x->n > MAX_HEADERS)
            return bad(c, 400, "content.headers: more than %d fields", MAX_HEADERS);
        for (size_t i = 0; i < x->n; i++) {
            char f[160];
            snprintf(f, sizeof f, "content.headers.%.100s", x->keys[i]);
            if (strlen(x->keys[i]) != x->keylens[i] || !mime_field_name_ok(x->keys[i]))
                return bad(c, 400, "%s: not a header field name", f);
            if (!want_string(c, &x->items[i], f, false))
                return false;
            ct->hnames[i] = x->keys[i];
            ct->hvalues[i] = &x->items[i];
        }
        ct->nheaders = x->n;
    }
    if ((x = json_get(v, "attachments")) && x->type != JSON_NULL) {
        if (x->type != JSON_ARRAY)
            return bad(c, 400, "content.attachments: an array expected");
        if (x->n > MAX_ATTACHMENTS)
            return bad(c, 400, "content.attachments: more than %d", MAX_ATTACHMENTS);
        for (size_t i = 0; i < x->n; i++) {
            buf_init(&ct->att_data[i]);
            ct->natts = i + 1;
            if (!parse_attachment(c, &x->items[i], i, &ct->atts[i], &ct->att_data[i]))
                return false;
        }
    }
    return true;
}

static void
content_free(struct content *ct)
{
    for (size_t i = 0; i < ct->natts; i++)
        buf_free(&ct->att_data[i]);
}

/* ---- templates ------------------------------------------------------------------ */

struct vars {
    const struct json_value *global, *rcpt;
    const char *email, *name;
};

static bool
has_template(const struct json_value *v)
{
    return v && memmem(v->str, v->len, "{{", 2) != NULL;
}

static bool
content_has_template(const struct content *ct)
{
    if (ct->raw)
        return has_template(ct->raw);
    if (has_template(ct->subject) || has_template(ct->text) || has_template(ct->html))
        return true;
    for (size_t i = 0; i < ct->nheaders; i++)
        if (has_template(ct->hvalues[i]))
            return true;
    return false;
}

static const struct json_value *
lookup_in(const struct json_value *obj, const char *name, size_t n)
{
    if (!obj)
        return NULL;
    for (size_t i = 0; i < obj->n; i++) /* the first of duplicates, as json_get */
        if (obj->keylens[i] == n && !memcmp(obj->keys[i], name, n))
            return &obj->items[i];
    return NULL;
}

static void
put_var(struct buf *out, const struct vars *vs, const char *name, size_t n)
{
    if (n == 5 && !memcmp(name, "email", 5) && vs->email) {
        buf_puts(out, vs->email);
        return;
    }
    if (n == 4 && !memcmp(name, "name", 4) && vs->name) {
        buf_puts(out, vs->name);
        return;
    }
    const struct json_value *v = lookup_in(vs->rcpt, name, n);
    if (!v)
        v = lookup_in(vs->global, name, n);
    if (!v) /* undefined: empty, as KumoMTA's default template engine does */
        return;
    switch (v->type) {
    case JSON_STRING:
    case JSON_NUMBER:
        buf_append(out, v->str, v->len);
        break;
    case JSON_TRUE:
        buf_puts(out, "true");
        break;
    case JSON_FALSE:
        buf_puts(out, "false");
        break;
    default:
        break;
    }
}

static bool
is_ident(char ch, bool first)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
           (!first && ch >= '0' && ch <= '9');
}

/* Expands "{{ name }}" in S into OUT. */
static bool
render(struct ctx *c, struct buf *out, const struct json_value *tv, const struct vars *vs,
       const char *field)
{
    const char *s = tv->str, *e = tv->str + tv->len;
    for (;;) {
        const char *o = memmem(s, (size_t)(e - s), "{{", 2);
        if (!o) {
            buf_append(out, s, (size_t)(e - s));
            return true;
        }
        buf_append(out, s, (size_t)(o - s));
        const char *p = o + 2;
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        const char *name = p;
        while (p < e && is_ident(*p, p == name))
            p++;
        size_t n = (size_t)(p - name);
        while (p < e && (*p == ' ' || *p == '\t'))
            p++;
        if (n == 0 || e - p < 2 || p[0] != '}' || p[1] != '}')
            return bad(c, 400, "%s: offset %zu: only {{ name }} substitutions are supported", field,
                       (size_t)(o - tv->str));
        put_var(out, vs, name, n);
        s = p + 2;
    }
}

/* ---- building the messages ------------------------------------------------------ */

/* A domain fit for the right side of a Message-ID: letters, digits, '-'
 * and '.', else NULL. */
static const char *
safe_domain(const char *d)
{
    if (!d || !*d || strlen(d) > 253 ||
        strspn(d, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != strlen(d))
        return NULL;
    return d;
}

static const char *
domain_of(const char *addr)
{
    const char *at = addr ? strrchr(addr, '@') : NULL;
    return at ? safe_domain(at + 1) : NULL;
}

static bool
build_one(struct ctx *c, const struct content *ct, const struct vars *vs, const char *domain,
          long long now, struct buf *out)
{
    if (ct->raw) {
        struct buf t;
        buf_init(&t);
        bool ok = render(c, &t, ct->raw, vs, "content");
        if (ok)
            mime_raw(out, t.data, t.len, domain, (time_t)now);
        buf_free(&t);
        /* SMTP carries no line over 998 octets (RFC 5322 2.1.1): refuse
         * here rather than fail at delivery */
        size_t line = 1, col = 0;
        for (size_t i = 0; ok && i < out->len; i++) {
            if (out->data[i] == '\n') {
                line++;
                col = 0;
            } else if (out->data[i] != '\r' && ++col > 998) {
                ok = bad(c, 400, "content: line %zu is longer than 998 octets", line);
            }
        }
        return ok;
    }
    struct buf subj, text, html, hv[MAX_HEADERS];
    struct mime_header hdrs[MAX_HEADERS];
    buf_init(&subj);
    buf_init(&text);
    buf_init(&html);
    bool ok = true;
    size_t nh = 0;
    if (ct->subject)
        ok = render(c, &subj, ct->subject, vs, "content.subject");
    if (ok && ct->text)
        ok = render(c, &text, ct->text, vs, "content.text_body");
    if (ok && ct->html)
        ok = render(c, &html, ct->html, vs, "content.html_body");
    for (; ok && nh < ct->nheaders; nh++) {
        char f[160];
        snprintf(f, sizeof f, "content.headers.%.100s", ct->hnames[nh]);
        buf_init(&hv[nh]);
        ok = render(c, &hv[nh], ct->hvalues[nh], vs, f);
        buf_append(&hv[nh], "", 0);
        hdrs[nh].name = ct->hnames[nh];
        hdrs[nh].value = hv[nh].data;
    }
    if (ok) {
        buf_append(&subj, "", 0);
        buf_append(&text, "", 0);
        buf_append(&html, "", 0);
        if ((ct->text && strlen(text.data) != text.len) ||
            (ct->html && strlen(html.data) != html.len))
            ok = bad(c, 400, "content: NUL character in a body");
    }
    if (ok) {
        struct mime_message m = {.from = ct->from,
                                 .reply_to = ct->reply_to,
                                 .subject = ct->subject ? subj.data : NULL,
                                 .headers = hdrs,
                                 .nheaders = nh,
                                 .text_body = ct->text ? text.data : NULL,
                                 .html_body = ct->html ? html.data : NULL,
                                 .attachments = ct->atts,
                                 .nattachments = ct->natts,
                                 .msgid_domain = domain,
                                 .date = (time_t)now};
        if (mime_build(out, &m, c->err, sizeof c->err) < 0) {
            c->status = 400;
            ok = false;
        }
    }
    for (size_t i = 0; i < nh; i++)
        buf_free(&hv[i]);
    buf_free(&subj);
    buf_free(&text);
    buf_free(&html);
    return ok;
}

static void
put_be32(struct buf *b, uint32_t v)
{
    unsigned char o[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    buf_append(b, o, 4);
}

/* The header of a one-dimensional binary array of N elements. */
static void
array_header(struct buf *b, uint32_t oid, size_t n)
{
    put_be32(b, 1);
    put_be32(b, 0);
    put_be32(b, oid);
    put_be32(b, (uint32_t)n);
    put_be32(b, 1);
}

static bool
parse_recipients(struct ctx *c, struct inject_batch *b, const struct json_value *v)
{
    if (v->type != JSON_ARRAY)
        return bad(c, 400, "recipients: an array expected, got %s", json_type_name(v->type));
    if (v->n == 0)
        return bad(c, 400, "recipients: empty");
    if (v->n > HTTP_INJECT_MAX_RCPT)
        return bad(c, 413, "recipients: more than %d", HTTP_INJECT_MAX_RCPT);
    b->rcpts = xcalloc(v->n, sizeof *b->rcpts);
    b->nrcpts = v->n;
    static const char *const keys[] = {"email", "name", "substitutions", "metadata", NULL};
    for (size_t i = 0; i < v->n; i++) {
        const struct json_value *r = &v->items[i];
        char p[64];
        snprintf(p, sizeof p, "recipients[%zu].", i);
        if (r->type != JSON_OBJECT)
            return bad(c, 400, "recipients[%zu]: an object {email, name, substitutions} expected",
                       i);
        if (!known_keys(c, r, p, keys))
            return false;
        const struct json_value *e = json_get(r, "email"), *n = json_get(r, "name"),
                                *s = json_get(r, "substitutions");
        if (!e)
            return bad(c, 400, "recipients[%zu].email: missing", i);
        char f[80];
        snprintf(f, sizeof f, "recipients[%zu].email", i);
        if (!want_string(c, e, f, true))
            return false;
        if (e->len > 998 || !strchr(e->str, '@'))
            return bad(c, 400, "recipients[%zu].email: not an e-mail address", i);
        if (n && n->type != JSON_NULL) {
            snprintf(f, sizeof f, "recipients[%zu].name", i);
            if (!want_string(c, n, f, false))
                return false;
        } else {
            n = NULL;
        }
        if (s && s->type != JSON_NULL) {
            snprintf(f, sizeof f, "recipients[%zu].substitutions", i);
            if (!check_subs(c, s, f))
                return false;
        } else {
            s = NULL;
        }
        const struct json_value *md = json_get(r, "metadata");
        if (md && md->type == JSON_NULL)
            md = NULL;
        b->rcpts[i] = (struct rcpt){e, n, s, md};
    }
    /* Each recipient's metadata as a text[] (NULL elements for none), only
     * when one has some: the statement then stores nothing more. */
    bool any = false;
    for (size_t i = 0; i < b->nrcpts && !any; i++)
        any = b->rcpts[i].meta != NULL;
    if (!any)
        return true;
    put_be32(&b->rmeta, 1);
    put_be32(&b->rmeta, 1); /* may hold NULLs */
    put_be32(&b->rmeta, OID_TEXT);
    put_be32(&b->rmeta, (uint32_t)b->nrcpts);
    put_be32(&b->rmeta, 1);
    struct buf one;
    buf_init(&one);
    for (size_t i = 0; i < b->nrcpts; i++) {
        if (!b->rcpts[i].meta) {
            put_be32(&b->rmeta, 0xffffffffu);
            continue;
        }
        char f[80];
        snprintf(f, sizeof f, "recipients[%zu].metadata", i);
        buf_reset(&one);
        if (!check_meta(c, b->rcpts[i].meta, f, &one)) {
            buf_free(&one);
            return false;
        }
        put_be32(&b->rmeta, (uint32_t)one.len);
        buf_append(&b->rmeta, one.data, one.len);
    }
    buf_free(&one);
    b->rmeta_len = (int)b->rmeta.len;
    return true;
}

static bool
build_all(struct ctx *c, struct inject_batch *b, const struct content *ct,
          const struct json_value *global, const char *node_name, long long now)
{
    bool per_rcpt = content_has_template(ct);
    const char *domain = domain_of(ct->from.email);
    if (!domain)
        domain = domain_of(b->mail_from);
    if (!domain)
        domain = safe_domain(node_name);
    b->nmsgs = per_rcpt ? b->nrcpts : 1;
    b->rcpt_msg = xcalloc(b->nrcpts, sizeof *b->rcpt_msg);
    b->msg_first = xcalloc(b->nmsgs, sizeof *b->msg_first);
    array_header(&b->contents, OID_BYTEA, b->nmsgs);
    struct buf one;
    buf_init(&one);
    size_t total = 0;
    for (size_t m = 0; m < b->nmsgs; m++) {
        const struct rcpt *r = &b->rcpts[m];
        struct vars vs = {.global = global};
        if (per_rcpt) {
            vs.rcpt = r->subs;
            vs.email = r->email->str;
            vs.name = r->name ? r->name->str : NULL;
        }
        buf_reset(&one);
        if (!build_one(c, ct, &vs, domain, now, &one)) {
            if (per_rcpt && c->status == 400) { /* name the recipient whose values broke it */
                char tmp[sizeof c->err];
                memcpy(tmp, c->err, sizeof tmp);
                int k = snprintf(c->err, sizeof c->err, "recipients[%zu]: ", m);
                if (k > 0 && (size_t)k < sizeof c->err)
                    memcpy(c->err + k, tmp, sizeof c->err - (size_t)k - 1);
                c->err[sizeof c->err - 1] = '\0';
            }
            buf_free(&one);
            return false;
        }
        if (smtp_server_hop_count(one.data, one.len, http_inject_hop_limit) >=
            http_inject_hop_limit) {
            buf_free(&one);
            return bad(c, 400, "content: too many hops (%u Received: fields), mail loop? (5.4.6)",
                       http_inject_hop_limit);
        }
        total += one.len;
        if (total > HTTP_INJECT_MAX_TOTAL || one.len > 67108864) {
            buf_free(&one);
            return bad(c, 413,
                       "content: the messages of this request exceed %u bytes (or one "
                       "message 64 MB)",
                       HTTP_INJECT_MAX_TOTAL);
        }
        put_be32(&b->contents, (uint32_t)one.len);
        buf_append(&b->contents, one.data, one.len);
        b->msg_first[m] = m;
    }
    buf_free(&one);
    array_header(&b->rcpt_arr, OID_TEXT, b->nrcpts);
    array_header(&b->msg_arr, OID_INT4, b->nrcpts);
    for (size_t i = 0; i < b->nrcpts; i++) {
        b->rcpt_msg[i] = per_rcpt ? (int)i : 0;
        put_be32(&b->rcpt_arr, (uint32_t)b->rcpts[i].email->len);
        buf_append(&b->rcpt_arr, b->rcpts[i].email->str, b->rcpts[i].email->len);
        put_be32(&b->msg_arr, 4);
        put_be32(&b->msg_arr, (uint32_t)b->rcpt_msg[i] + 1);
    }
    b->contents_len = (int)b->contents.len;
    b->rcpt_len = (int)b->rcpt_arr.len;
    b->msg_len = (int)b->msg_arr.len;
    return true;
}

static bool
parse_request(struct ctx *c, struct inject_batch *b, const char *node_name, long long now)
{
    const struct json_value *root = b->root, *x;
    if (root->type != JSON_OBJECT)
        return bad(c, 400, "request: a JSON object expected, got %s", json_type_name(root->type));
    static const char *const keys[] = {"envelope_sender", "recipients", "substitutions", "content",
                                       "job_id",          "vmta",       "pipe",          "envid",
                                       "metadata",        NULL};
    if (!known_keys(c, root, "", keys))
        return false;
    if (!(x = json_get(root, "envelope_sender")))
        return bad(c, 400, "envelope_sender: missing");
    if (!want_string(c, x, "envelope_sender", false))
        return false;
    b->mail_from = x->str;
    if (!opt_string(c, root, "job_id", "", &b->job_id) ||
        !opt_string(c, root, "vmta", "", &b->vmta) || !opt_string(c, root, "pipe", "", &b->pipe) ||
        !opt_string(c, root, "envid", "", &b->envid))
        return false;
    /* never sent from the default address instead */
    if (b->vmta && *b->vmta && !vmta_known(b->vmta))
        return bad(c, 400, "vmta: \"%.64s\" is no virtual MTA or pool of the configuration",
                   b->vmta);
    const struct json_value *global = json_get(root, "substitutions");
    if (global && global->type == JSON_NULL)
        global = NULL;
    if (global && !check_subs(c, global, "substitutions"))
        return false;
    if ((x = json_get(root, "metadata")) && x->type != JSON_NULL &&
        !check_meta(c, x, "metadata", &b->meta))
        return false;
    if (!(x = json_get(root, "recipients")))
        return bad(c, 400, "recipients: missing");
    if (!parse_recipients(c, b, x))
        return false;
    if (!(x = json_get(root, "content")))
        return bad(c, 400, "content: missing");
    struct content *ct = xcalloc(1, sizeof *ct);
    bool ok = parse_content(c, x, ct) && build_all(c, b, ct, global, node_name, now);
    content_free(ct);
    free(ct);
    return ok;
}

struct inject_batch *
http_inject_parse(const char *body, size_t len, const char *node_name, long long now,
                  struct buf *errbody, int *status)
{
    struct ctx c = {.status = 400};
    char perr[160];
    struct inject_batch *b = xcalloc(1, sizeof *b);
    buf_init(&b->contents);
    buf_init(&b->rcpt_arr);
    buf_init(&b->msg_arr);
    buf_init(&b->meta);
    buf_init(&b->rmeta);
    b->root = json_parse(body, len, perr, sizeof perr);
    if (!b->root) {
        snprintf(c.err, sizeof c.err, "malformed JSON: %s", perr);
    } else if (parse_request(&c, b, node_name, now)) {
        return b;
    }
    *status = c.status;
    error_body(errbody, c.err);
    http_inject_free(b);
    return NULL;
}

void
http_inject_params(const struct inject_batch *b, const char *values[HTTP_INJECT_NPARAMS],
                   int lengths[HTTP_INJECT_NPARAMS], int formats[HTTP_INJECT_NPARAMS])
{
    const char *v[HTTP_INJECT_NPARAMS] = {b->mail_from,
                                          b->contents.data,
                                          b->rcpt_arr.data,
                                          b->msg_arr.data,
                                          b->job_id,
                                          b->vmta,
                                          b->pipe,
                                          b->envid,
                                          b->meta.len ? b->meta.data : NULL,
                                          b->rmeta.len ? b->rmeta.data : NULL};
    for (int i = 0; i < HTTP_INJECT_NPARAMS; i++) {
        values[i] = v[i];
        lengths[i] = 0;
        formats[i] = 0;
    }
    lengths[1] = b->contents_len;
    lengths[2] = b->rcpt_len;
    lengths[3] = b->msg_len;
    lengths[9] = b->rmeta_len;
    formats[1] = formats[2] = formats[3] = formats[9] = 1;
}

size_t
http_inject_nrecipients(const struct inject_batch *b)
{
    return b->nrcpts;
}

size_t
http_inject_nmessages(const struct inject_batch *b)
{
    return b->nmsgs;
}

/* ---- the reply ------------------------------------------------------------------ */

/* The recipient a refusal concerns: DETAIL "message N", and "rcpt_to[K]"
 * at the start of the message for the K-th recipient of that message. */
static long
fault_recipient(const struct inject_batch *b, const PGresult *res, const char **msg)
{
    const char *d = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    unsigned long m = 0, k = 1;
    if (!d || sscanf(d, "message %lu", &m) != 1 || m == 0 || m > b->nmsgs)
        return -1;
    if (*msg && sscanf(*msg, "rcpt_to[%lu]", &k) == 1) {
        const char *close = strchr(*msg, ']');
        *msg = close + 1;
        while (**msg == ':' || **msg == ' ')
            (*msg)++;
    }
    size_t first = b->msg_first[m - 1];
    size_t idx = first + (k ? k - 1 : 0);
    if (idx >= b->nrcpts || (size_t)b->rcpt_msg[idx] != m - 1)
        idx = first;
    return (long)idx;
}

static int
error_status(const char *st)
{
    if (!st)
        return 500;
    if (!strncmp(st, "22", 2) || !strncmp(st, "23", 2) || !strcmp(st, "54000") ||
        !strncmp(st, "P0", 2))
        return 400;
    /* connection, shutdown, resources, serialization: nothing stored, retry */
    if (!strncmp(st, "08", 2) || !strncmp(st, "57", 2) || !strncmp(st, "53", 2) ||
        !strncmp(st, "40", 2) || !strncmp(st, "25", 2))
        return 503;
    return 500;
}

int
http_inject_reply(const struct inject_batch *b, const PGresult *res, struct buf *out)
{
    if (!res) {
        error_body(out, "database unavailable: nothing was stored");
        return 503;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        int code = error_status(st);
        char text[600];
        if (code == 400) {
            long r = fault_recipient(b, res, &msg);
            if (msg && strstr(msg, "mail_from"))
                snprintf(text, sizeof text, "envelope_sender: %s", msg);
            else if (r >= 0)
                snprintf(text, sizeof text, "recipients[%ld]: %s", r, msg ? msg : "refused");
            else
                snprintf(text, sizeof text, "request: %s", msg ? msg : "refused");
        } else {
            snprintf(text, sizeof text, "%s: nothing was stored",
                     code == 503 ? "database unavailable" : "database error");
        }
        error_body(out, text);
        return code;
    }
    /* "{1,NULL,3}": the message id of each message (NULL: every recipient
     * suppressed); "{2,5}" or NULL: the suppressed recipients, 1-based */
    const char *p = PQgetvalue(res, 0, 0);
    long long *ids = xcalloc(b->nmsgs, sizeof *ids);
    bool *sup = xcalloc(b->nrcpts ? b->nrcpts : 1, sizeof *sup);
    size_t n = 0, nsup = 0;
    if (*p == '{')
        p++;
    while (*p && *p != '}' && n < b->nmsgs) {
        char *end;
        if (!strncmp(p, "NULL", 4)) {
            ids[n++] = 0;
            end = (char *)p + 4;
        } else {
            ids[n++] = strtoll(p, &end, 10);
        }
        p = *end == ',' ? end + 1 : end;
    }
    bool bad = n != b->nmsgs;
    p = PQnfields(res) > 1 && !PQgetisnull(res, 0, 1) ? PQgetvalue(res, 0, 1) : "{}";
    if (*p == '{')
        p++;
    while (*p && *p != '}' && !bad) {
        char *end;
        long k = strtol(p, &end, 10);
        if (end == p || k < 1 || (size_t)k > b->nrcpts) {
            bad = true;
            break;
        }
        if (!sup[k - 1])
            nsup++;
        sup[k - 1] = true;
        p = *end == ',' ? end + 1 : end;
    }
    if (bad) {
        free(ids);
        free(sup);
        error_body(out, "mta.inject_request returned an unexpected result");
        return 500;
    }
    /* KumoMTA's fields: a suppressed recipient is one that failed, named
     * in failed_recipients and errors; pgmta's recipients[] says why. */
    buf_printf(out, "{\"success_count\": %zu, \"fail_count\": %zu, \"failed_recipients\": [",
               b->nrcpts - nsup, nsup);
    for (size_t i = 0, j = 0; i < b->nrcpts; i++)
        if (sup[i]) {
            buf_puts(out, j++ ? ", " : "");
            json_append_string(out, b->rcpts[i].email->str);
        }
    buf_puts(out, "], \"errors\": [");
    for (size_t i = 0, j = 0; i < b->nrcpts; i++)
        if (sup[i])
            buf_printf(out, "%s\"recipients[%zu]: suppressed\"", j++ ? ", " : "", i);
    buf_puts(out, "], \"recipients\": [");
    for (size_t i = 0; i < b->nrcpts; i++) {
        buf_puts(out, i ? ", {\"email\": " : "{\"email\": ");
        json_append_string(out, b->rcpts[i].email->str);
        if (sup[i])
            buf_puts(out, ", \"message_id\": null, \"suppressed\": true}");
        else
            buf_printf(out, ", \"message_id\": %lld}", ids[b->rcpt_msg[i]]);
    }
    buf_puts(out, "]}\n");
    metrics_count_injected(METRICS_DOOR_HTTP, b->nrcpts, nsup);
    free(ids);
    free(sup);
    return 200;
}

void
http_inject_free(struct inject_batch *b)
{
    if (!b)
        return;
    json_free(b->root);
    free(b->rcpts);
    free(b->rcpt_msg);
    free(b->msg_first);
    buf_free(&b->contents);
    buf_free(&b->rcpt_arr);
    buf_free(&b->msg_arr);
    buf_free(&b->meta);
    buf_free(&b->rmeta);
    free(b);
}

/* ---- gzip ----------------------------------------------------------------------- */

int
http_inject_gunzip(const char *in, size_t n, size_t max, struct buf *out)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) /* gzip wrapper only */
        return -1;
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)n;
    int rc = Z_OK;
    unsigned char chunk[65536];
    while (rc != Z_STREAM_END) {
        z.next_out = chunk;
        z.avail_out = sizeof chunk;
        rc = inflate(&z, Z_NO_FLUSH);
        if (rc != Z_OK && rc != Z_STREAM_END) {
            inflateEnd(&z);
            return -1;
        }
        size_t got = sizeof chunk - z.avail_out;
        if (out->len + got > max) {
            inflateEnd(&z);
            return -2;
        }
        buf_append(out, chunk, got);
        if (rc == Z_OK && got == 0 && z.avail_in == 0) { /* truncated */
            inflateEnd(&z);
            return -1;
        }
    }
    bool trailing = z.avail_in != 0;
    inflateEnd(&z);
    if (trailing)
        return -1;
    if (!out->data)
        buf_append(out, "", 0);
    return 0;
}
