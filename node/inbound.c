/* inbound: parse, check and store one inbound report (see inbound.h).
 *
 * Ownership: an inbound object owns its database connection, copies of
 * the VERP key, the accepted domains, the unsubscribe local part and the
 * unsubscribe token key (replaced on reload), and each request in flight (its JSON and header
 * text, freed once the statement was sent; the request record when its
 * answer came). */
#include "inbound.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "db.h"
#include "json.h"
#include "log.h"
#include "report.h"
#include "unsub.h"
#include "util.h"
#include "verp.h"

struct inbound {
    struct event_base *base;
    struct db *db;
    smtp_in_batch_cb cb;
    void *arg;
    char *key;
    char **domains; /* lower case */
    size_t ndomains;
    char **bounce_domains; /* where a VERP address may be */
    size_t nbounce_domains;
    char *unsub_local;
    struct unsub *unsub; /* checks mailto: tokens; NULL if its secret is unreadable */
};

struct inbound_req {
    struct inbound *in;
    unsigned long sid, seq;
    size_t size;
};

static void
names_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static void
names_add(char ***v, size_t *n, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (strcasecmp((*v)[i], name) == 0)
            return;
    *v = xrealloc(*v, (*n + 1) * sizeof **v);
    (*v)[(*n)++] = util_strlower(xstrdup(name));
}

void
inbound_configure(struct inbound *in, const struct conf *c)
{
    char err[256];
    unsub_free(in->unsub);
    in->unsub = unsub_new(c, err, sizeof err);
    if (!in->unsub)
        log_error("inbound event=unsubscribe-key-unreadable error=\"%s\"", err);
    if (in->key)
        OPENSSL_cleanse(in->key, strlen(in->key));
    free(in->key);
    names_free(in->domains, in->ndomains);
    names_free(in->bounce_domains, in->nbounce_domains);
    free(in->unsub_local);
    in->domains = in->bounce_domains = NULL;
    in->ndomains = in->nbounce_domains = 0;
    in->key = xstrdup(c->verp_secret ? c->verp_secret : "");
    for (size_t i = 0; i < c->nverp; i++) {
        names_add(&in->domains, &in->ndomains, c->verp[i].bounce_domain);
        names_add(&in->bounce_domains, &in->nbounce_domains, c->verp[i].bounce_domain);
    }
    for (size_t i = 0; i < c->ninbound_bounce_domains; i++) {
        names_add(&in->domains, &in->ndomains, c->inbound_bounce_domains[i]);
        names_add(&in->bounce_domains, &in->nbounce_domains, c->inbound_bounce_domains[i]);
    }
    for (size_t i = 0; i < c->ninbound_feedback_domains; i++)
        names_add(&in->domains, &in->ndomains, c->inbound_feedback_domains[i]);
    in->unsub_local =
        c->inbound_unsubscribe_local_part ? xstrdup(c->inbound_unsubscribe_local_part) : NULL;
}

struct inbound *
inbound_new(struct event_base *base, const struct conf *conf, smtp_in_batch_cb cb, void *arg)
{
    if (conf->nlisten_inbound == 0 || !conf->database_url)
        return NULL;
    struct inbound *in = xcalloc(1, sizeof *in);
    in->base = base;
    in->cb = cb;
    in->arg = arg;
    in->db = db_new(base, conf->database_url, "pgmtad-inbound");
    db_prepare(in->db, INBOUND_STMT, "SELECT mta.inbound_report($1::jsonb, $2)", 2);
    db_connect(in->db);
    inbound_configure(in, conf);
    return in;
}

void
inbound_free(struct inbound *in)
{
    if (!in)
        return;
    db_free(in->db); /* pending requests: callbacks with NULL */
    if (in->key)
        OPENSSL_cleanse(in->key, strlen(in->key));
    free(in->key);
    names_free(in->domains, in->ndomains);
    names_free(in->bounce_domains, in->nbounce_domains);
    free(in->unsub_local);
    unsub_free(in->unsub);
    free(in);
}

static const char *
domain_of(const char *addr)
{
    const char *at = addr ? strrchr(addr, '@') : NULL;
    return at ? at + 1 : NULL;
}

static bool
listed(char *const *v, size_t n, const char *domain)
{
    for (size_t i = 0; domain && i < n; i++)
        if (strcasecmp(v[i], domain) == 0)
            return true;
    return false;
}

int
inbound_accepts(const struct inbound *in, const char *rcpt)
{
    return in && listed(in->domains, in->ndomains, domain_of(rcpt));
}

int
inbound_is_unsubscribe(const struct inbound *in, const char *rcpt)
{
    if (!in || !in->unsub_local || !inbound_accepts(in, rcpt))
        return 0;
    size_t l = strlen(in->unsub_local);
    return strncasecmp(rcpt, in->unsub_local, l) == 0 && rcpt[l] == '@';
}

const char *
inbound_unsubscribe(const struct inbound *in, const char *subject, char **rcpt, char **job,
                    char **scope)
{
    if (!in->unsub || !unsub_has_secret(in->unsub))
        return "mailto: unsubscribe: no unsubscribe-secret-file";
    size_t len = 0;
    const char *t = subject ? unsub_subject_token(subject, &len) : NULL;
    if (!t || len == 0)
        return "mailto: unsubscribe: no token in the Subject";
    char *token = xstrndup(t, len);
    int rc = unsub_token_verify(in->unsub, token, rcpt, job, scope);
    free(token);
    return rc == 0 ? NULL : "mailto: unsubscribe: the token does not verify";
}

/* ---- the request ----------------------------------------------------------- */

static void
deliver(struct inbound_req *q, const struct smtp_in_result *r)
{
    q->in->cb(q->in->arg, q->sid, q->seq, r);
    free(q);
}

static void
on_stored(const PGresult *res, void *arg)
{
    struct inbound_req *q = arg;
    struct smtp_in_result r = {.status = SMTP_IN_TEMPFAIL, .size = q->size, .nrcpts = 1};
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
        r.status = SMTP_IN_STORED;
        r.id = PQgetvalue(res, 0, 0);
    } else {
        /* A report is never refused for good: the sender keeps it and
         * tries again (a 5xx would bounce the bounce). */
        r.error = res ? PQresultErrorMessage(res) : "connection lost";
    }
    deliver(q, &r);
}

static void
on_not_sent(void *arg)
{
    struct inbound_req *q = arg;
    struct smtp_in_result r = {.status = SMTP_IN_TEMPFAIL, .error = "database not ready"};
    deliver(q, &r);
}

static void
add(struct buf *j, const char *name, const char *value)
{
    if (!value)
        return;
    buf_printf(j, ",\"%s\":", name);
    json_append_string(j, value);
}

/* Text fit for the database: NUL and octets above 0x7f become '?'. */
static char *
db_text(const char *p, size_t n)
{
    char *t = xmalloc(n + 1);
    for (size_t i = 0; i < n; i++)
        t[i] = p[i] == '\0' || (unsigned char)p[i] > 0x7f ? '?' : p[i];
    t[n] = '\0';
    return t;
}

/* The VERP address a report names: its envelope recipient at a bounce
 * domain, else the enclosed original's sender. */
static enum verp_check
verp_of(const struct inbound *in, const struct inbound_msg *m, const struct report *r,
        long long *id)
{
    enum verp_check best = VERP_NONE;
    const char *cand[REPORT_MAX_RCPTS + 2];
    size_t n = 0;
    for (size_t i = 0; i < m->nrcpts && n < REPORT_MAX_RCPTS; i++)
        cand[n++] = m->rcpts[i];
    cand[n++] = r->original_mail_from;
    cand[n++] = r->return_path;
    for (size_t i = 0; i < n; i++) {
        if (!cand[i] || !listed(in->bounce_domains, in->nbounce_domains, domain_of(cand[i])))
            continue;
        enum verp_check v = verp_check(cand[i], in->key, strlen(in->key), id);
        if (v == VERP_OK)
            return VERP_OK;
        if (v == VERP_FORGED)
            best = VERP_FORGED;
    }
    return best;
}

static void
report_json(struct buf *j, const struct inbound *in, const struct inbound_msg *m)
{
    struct report r;
    char *text = db_text(m->content, m->len);
    report_parse(&r, text, m->len);
    free(text);
    buf_puts(j, "{\"kind\":");
    const char *unsub = NULL;
    char *u_rcpt = NULL, *u_job = NULL, *u_scope = NULL;
    bool is_unsub = false;
    for (size_t i = 0; i < m->nrcpts && !is_unsub; i++) {
        if (inbound_is_unsubscribe(in, m->rcpts[i])) {
            is_unsub = true;
            unsub = inbound_unsubscribe(in, r.subject, &u_rcpt, &u_job, &u_scope);
        }
    }
    json_append_string(j, is_unsub ? "unsubscribe" : report_kind_name(r.kind));
    long long id = 0;
    enum verp_check v = is_unsub ? VERP_NONE : verp_of(in, m, &r, &id);
    buf_printf(j, ",\"verp\":\"%s\"", v == VERP_OK ? "ok" : v == VERP_FORGED ? "forged" : "none");
    if (v == VERP_OK)
        buf_printf(j, ",\"rcpt_id\":%lld", id);
    if (is_unsub && unsub) {
        add(j, "keep", unsub);
    } else if (is_unsub) {
        /* the token's recipient, job and scope: mta.inbound_report writes
         * the suppression (sql/016_unsubscribe.sql) */
        add(j, "unsub_rcpt", u_rcpt);
        add(j, "unsub_job", u_job);
        add(j, "unsub_scope", u_scope);
    }
    free(u_rcpt);
    free(u_job);
    free(u_scope);
    add(j, "error", r.error);
    char *from = db_text(m->mail_from, strlen(m->mail_from));
    add(j, "mail_from", from);
    free(from);
    if (m->nrcpts > 0) {
        char *to = db_text(m->rcpts[0], strlen(m->rcpts[0]));
        add(j, "rcpt_to", to);
        free(to);
    }
    add(j, "client_ip", m->client_ip);
    add(j, "subject", r.subject);
    add(j, "envid", r.envid);
    add(j, "reporting_mta", r.reporting_mta);
    add(j, "msgid", r.msgid);
    add(j, "return_path", r.return_path);
    add(j, "feedback_type", r.feedback_type);
    add(j, "user_agent", r.user_agent);
    add(j, "version", r.version);
    add(j, "original_mail_from", r.original_mail_from);
    add(j, "original_rcpt_to", r.original_rcpt_to);
    add(j, "arrival_date", r.arrival_date);
    add(j, "source_ip", r.source_ip);
    add(j, "reported_domain", r.reported_domain);
    buf_puts(j, ",\"rcpts\":[");
    for (size_t i = 0; i < r.nrcpts; i++) {
        const struct report_rcpt *rc = &r.rcpts[i];
        buf_puts(j, i ? ",{\"cat\":" : "{\"cat\":");
        json_append_string(j, rc->cat);
        add(j, "rcpt", rc->rcpt);
        add(j, "action", rc->action);
        add(j, "status", rc->status);
        add(j, "diag", rc->diag);
        add(j, "remote_mta", rc->remote_mta);
        buf_puts(j, "}");
    }
    buf_puts(j, "]}");
    log_info("inbound kind=%s verp=%s rcpts=%zu%s%s",
             is_unsub ? "unsubscribe" : report_kind_name(r.kind),
             v == VERP_OK       ? "ok"
             : v == VERP_FORGED ? "forged"
                                : "none",
             r.nrcpts, r.feedback_type ? " feedback-type=" : "",
             r.feedback_type ? r.feedback_type : "");
    report_free(&r);
}

void
inbound_store(struct inbound *in, const struct inbound_msg *m)
{
    struct inbound_req *q = xcalloc(1, sizeof *q);
    q->in = in;
    q->sid = m->sid;
    q->seq = m->seq;
    q->size = m->len;
    struct buf j;
    buf_init(&j);
    report_json(&j, in, m);
    char *headers =
        db_text(m->content, m->len < INBOUND_HEADERS_MAX ? m->len : INBOUND_HEADERS_MAX);
    const char *vals[2] = {j.data, headers};
    if (db_exec(in->db, INBOUND_STMT, 2, vals, NULL, NULL, 0, on_stored, q) != 0)
        util_defer_call(in->base, on_not_sent, q);
    buf_free(&j);
    free(headers);
}
