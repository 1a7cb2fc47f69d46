/* batch: claim decoding and finish encoding for one delivery session (see
 * batch.h). The batch owns its PGresult (content is read in place), the
 * recipient and transaction arrays, the signed copies and the connection
 * facts; the session owns the batch. Nothing here does I/O. */
#include "batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "addr.h"
#include "db.h"
#include "dkim.h"
#include "log.h"
#include "unsub.h"
#include "util.h"
#include "verp.h"

static char *
col_text(const PGresult *res, int row, int col)
{
    if (col < 0 || PQgetisnull(res, row, col))
        return NULL;
    return xstrndup(PQgetvalue(res, row, col), (size_t)PQgetlength(res, row, col));
}

/* A binary smallint column; NULL reads as -1. */
static int
col_int2(const PGresult *res, int row, int col)
{
    if (col < 0 || PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 2)
        return -1;
    const unsigned char *v = (const unsigned char *)PQgetvalue(res, row, col);
    return (int16_t)(v[0] << 8 | v[1]);
}

/* A binary boolean column; NULL reads as false. */
static bool
col_bool(const PGresult *res, int row, int col)
{
    return col >= 0 && !PQgetisnull(res, row, col) && PQgetlength(res, row, col) == 1 &&
           PQgetvalue(res, row, col)[0] != 0;
}

/* The same rules as the SQL API's address checks (addr.c), so a row that
 * enqueue would have refused is set aside instead of reaching a command
 * line, and a quoted local part that enqueue took is sent. */
static bool
address_sane(const char *a, bool allow_empty)
{
    if (!a)
        return false;
    if (!*a)
        return allow_empty;
    return addr_validate_str(a, NULL, NULL);
}

/* Why the content of a message (its first claimed row) cannot be sent, or
 * NULL when it can. */
static const char *
content_nonsense(const PGresult *res, int row, int c_content, int c_missing)
{
    if (col_bool(res, row, c_missing) || PQgetisnull(res, row, c_content))
        return "message content missing";
    if (PQgetlength(res, row, c_content) == 0)
        return "message content empty";
    if ((unsigned)PQgetlength(res, row, c_content) > BATCH_MAX_CONTENT)
        return "message content too large";
    return NULL;
}

/* Why a claimed recipient row cannot be delivered, or NULL when it can. */
static const char *
row_nonsense(const PGresult *res, int row, int c_rcpt, int c_from, int c_att)
{
    if (PQgetisnull(res, row, c_rcpt) || !address_sane(PQgetvalue(res, row, c_rcpt), false))
        return "invalid recipient address";
    if (PQgetisnull(res, row, c_from) || !address_sane(PQgetvalue(res, row, c_from), true))
        return "invalid sender address";
    if (db_get_int4(res, row, c_att) < 1)
        return "invalid attempt count";
    return NULL;
}

size_t
batch_decode(struct batch *b, const PGresult *res, unsigned max_rcpt, const struct unsub *unsub,
             batch_reject_cb reject, void *arg, int *lease_left_ms)
{
    int n = PQntuples(res);
    *lease_left_ms = 0;
    if (n == 0)
        return 0;
    int c_id = PQfnumber(res, "rcpt_id"), c_tok = PQfnumber(res, "lease_token"),
        c_mid = PQfnumber(res, "message_id"), c_from = PQfnumber(res, "mail_from"),
        c_rcpt = PQfnumber(res, "rcpt"), c_content = PQfnumber(res, "content"),
        c_att = PQfnumber(res, "attempt"), c_envid = PQfnumber(res, "envid"),
        c_qat = PQfnumber(res, "queued_at"), c_first = PQfnumber(res, "content_first"),
        c_missing = PQfnumber(res, "message_missing"), c_left = PQfnumber(res, "lease_left_ms"),
        c_job = PQfnumber(res, "job_id"), c_notify = PQfnumber(res, "dsn_notify"),
        c_orcpt = PQfnumber(res, "dsn_orcpt"), c_ret = PQfnumber(res, "dsn_ret");
    b->rcpts = xcalloc((size_t)n, sizeof *b->rcpts);
    b->msgs = xcalloc((size_t)n, sizeof *b->msgs);
    *lease_left_ms = c_left >= 0 ? db_get_int4(res, 0, c_left) : 0;
    /* Rows come ordered by message, its content on the first row only. */
    struct batch_msg *cur = NULL;
    long long content_mid = -1; /* the message whose content is below */
    const unsigned char *content = NULL;
    size_t content_len = 0;
    const char *content_why = NULL;
    const struct unsub_entry *content_unsub = NULL;
    long owner = -1;
    size_t held = 0;
    for (int i = 0; i < n; i++) {
        long long mid = db_get_int8(res, i, c_mid);
        if (mid != content_mid) {
            content_mid = mid;
            owner = -1;
            content_why = col_bool(res, i, c_first) ? content_nonsense(res, i, c_content, c_missing)
                                                    : "message content missing";
            content = content_why ? NULL : (const unsigned char *)PQgetvalue(res, i, c_content);
            content_len = content_why ? 0 : (size_t)PQgetlength(res, i, c_content);
            /* List-Unsubscribe carries a token per recipient: one
             * transaction (one body) per recipient. */
            content_unsub =
                content && unsub
                    ? unsub_match(
                          unsub, PQgetisnull(res, i, c_from) ? NULL : PQgetvalue(res, i, c_from),
                          c_job >= 0 && !PQgetisnull(res, i, c_job) ? PQgetvalue(res, i, c_job)
                                                                    : NULL,
                          content, content_len)
                    : NULL;
        }
        const char *why = content_why ? content_why : row_nonsense(res, i, c_rcpt, c_from, c_att);
        if (why) {
            reject(db_get_int8(res, i, c_id), db_get_int8(res, i, c_tok), why, arg);
            continue;
        }
        struct batch_rcpt *r = &b->rcpts[b->nrcpts++];
        r->id = db_get_int8(res, i, c_id);
        r->token = db_get_int8(res, i, c_tok);
        r->message_id = mid;
        r->rcpt = col_text(res, i, c_rcpt);
        r->attempt = db_get_int4(res, i, c_att);
        r->queued_at_us = db_get_timestamptz_us(res, i, c_qat);
        if (!r->rcpt)
            r->rcpt = xstrdup("");
        /* VERP: the envelope names the recipient, so one per transaction. */
        char *verp = b->verp ? verp_sender(b->verp, PQgetvalue(res, i, c_from),
                                           c_job >= 0 && !PQgetisnull(res, i, c_job)
                                               ? PQgetvalue(res, i, c_job)
                                               : NULL,
                                           r->id)
                             : NULL;
        if (verp || !cur || cur->message_id != r->message_id ||
            cur->nrcpts >= (content_unsub ? 1 : max_rcpt)) {
            cur = &b->msgs[b->nmsgs++];
            cur->message_id = r->message_id;
            cur->mail_from = col_text(res, i, c_from);
            if (!cur->mail_from)
                cur->mail_from = xstrdup("");
            if (verp) {
                cur->orig_from = cur->mail_from;
                cur->mail_from = verp;
            }
            cur->envid = col_text(res, i, c_envid);
            cur->job_id = col_text(res, i, c_job);
            cur->unsub = content_unsub != NULL;
            if (c_ret >= 0 && !PQgetisnull(res, i, c_ret))
                cur->ret = PQgetvalue(res, i, c_ret)[0];
            cur->content = content;
            cur->content_len = content_len;
            cur->owner = owner;
            if (owner < 0) {
                /* The first transaction of this message holds its content. */
                owner = (long)(b->nmsgs - 1);
                held += content_len;
            }
            cur->first = b->nrcpts - 1;
            cur->rcpt_ptrs = xcalloc((size_t)n, sizeof(char *));
        }
        int notify = col_int2(res, i, c_notify);
        const char *orcpt =
            c_orcpt >= 0 && !PQgetisnull(res, i, c_orcpt) ? PQgetvalue(res, i, c_orcpt) : NULL;
        if ((notify >= 0 || orcpt) && !cur->notify) {
            cur->notify = xmalloc((size_t)n);
            memset(cur->notify, -1, (size_t)n);
            cur->orcpt = xcalloc((size_t)n, sizeof(char *));
        }
        if (cur->notify) {
            cur->notify[cur->nrcpts] = (signed char)(notify >= 0 && notify <= 7 ? notify : -1);
            cur->orcpt[cur->nrcpts] = orcpt;
        }
        cur->rcpt_ptrs[cur->nrcpts++] = r->rcpt;
    }
    b->res = db_take_result(res);
    return held;
}

unsigned
batch_claim_rows(unsigned max_rcpt, unsigned tokens, unsigned max_rows)
{
    unsigned long long rows = (unsigned long long)tokens * (max_rcpt ? max_rcpt : 1);
    return rows > max_rows ? max_rows : rows < 1 ? 1 : (unsigned)rows;
}

void
batch_learn(const struct batch *b, size_t held, double *avg_row_bytes)
{
    if (b->nrcpts == 0)
        return;
    double sample = (double)held / (double)b->nrcpts;
    *avg_row_bytes = sample > *avg_row_bytes ? sample : 0.5 * *avg_row_bytes + 0.5 * sample;
}

/* Frees what transaction M owns; returns the content bytes released. */
static size_t
msg_release(struct batch_msg *m)
{
    size_t released = m->prefix_len;
    if (m->owner < 0) {
        released += m->content_len + m->signed_len;
        free(m->signed_content);
    }
    free(m->prefix);
    free(m->mail_from);
    free(m->orig_from);
    free(m->envid);
    free(m->job_id);
    free(m->rcpt_ptrs);
    free(m->notify);
    free(m->orcpt);
    return released;
}

size_t
batch_trim(struct batch *b, size_t keep, struct buf *ids, struct buf *tokens)
{
    buf_puts(ids, "{");
    buf_puts(tokens, "{");
    size_t released = 0;
    if (b->nmsgs > keep) {
        size_t first = b->msgs[keep].first;
        for (size_t i = first; i < b->nrcpts; i++) {
            buf_printf(ids, "%s%lld", i > first ? "," : "", b->rcpts[i].id);
            buf_printf(tokens, "%s%lld", i > first ? "," : "", b->rcpts[i].token);
            free(b->rcpts[i].rcpt);
            free(b->rcpts[i].diag);
        }
        b->nrcpts = first;
        for (size_t i = keep; i < b->nmsgs; i++)
            released += msg_release(&b->msgs[i]);
        b->nmsgs = keep;
    }
    buf_puts(ids, "}");
    buf_puts(tokens, "}");
    return released;
}

size_t
batch_clear(struct batch *b)
{
    size_t released = 0;
    for (size_t i = 0; i < b->nrcpts; i++) {
        free(b->rcpts[i].rcpt);
        free(b->rcpts[i].diag);
    }
    free(b->rcpts);
    for (size_t i = 0; i < b->nmsgs; i++)
        released += msg_release(&b->msgs[i]);
    free(b->msgs);
    free(b->smtp_msgs);
    if (b->res)
        PQclear(b->res);
    free(b->dsn_mta);
    free(b->source_ip);
    free(b->dest_ip);
    free(b->tls_protocol);
    free(b->tls_cipher);
    free(b->tls_policy);
    free(b->tls_failure);
    free(b->tls_policy_domain);
    memset(b, 0, sizeof *b);
    return released;
}

static bool
has_8bit(const unsigned char *p, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (p[k] & 0x80)
            return true;
    return false;
}

/* The List-Unsubscribe headers of a one-recipient transaction and the DKIM
 * signature over them and the content, in msg->prefix. Returns the bytes
 * now held. */
static size_t
unsub_prefix(struct batch_msg *msg, struct dkim *keys, const struct unsub *unsub,
             const struct unsub_entry *e)
{
    char *lu = unsub_headers(unsub, e, msg->rcpt_ptrs[0], msg->job_id);
    if (!lu) {
        log_warn("message=%lld event=no-list-unsubscribe error=\"job id longer than %d octets\"",
                 msg->message_id, UNSUB_JOB_MAX);
        return 0;
    }
    size_t ll = strlen(lu);
    char *hdr =
        keys ? dkim_headers_extra(keys, msg->mail_from, lu, ll, msg->content, msg->content_len)
             : NULL;
    size_t hl = hdr ? strlen(hdr) : 0;
    msg->prefix = xmalloc(hl + ll);
    if (hl)
        memcpy(msg->prefix, hdr, hl);
    memcpy(msg->prefix + hl, lu, ll);
    msg->prefix_len = hl + ll;
    free(hdr);
    free(lu);
    return msg->prefix_len;
}

size_t
batch_smtp_messages(struct batch *b, struct dkim *keys, const struct unsub *unsub)
{
    size_t added = 0;
    struct smtp_message *m = xcalloc(b->nmsgs ? b->nmsgs : 1, sizeof *m);
    /* The entry of the current message, matched again: the one found at
     * decoding may have gone with a reload since. */
    const struct unsub_entry *ue = NULL;
    for (size_t i = 0; i < b->nmsgs; i++) {
        struct batch_msg *msg = &b->msgs[i];
        if (msg->owner < 0)
            ue = msg->unsub ? unsub_match(unsub, msg->mail_from, msg->job_id, msg->content,
                                          msg->content_len)
                            : NULL;
        m[i].mail_from = msg->mail_from;
        m[i].envid = msg->envid;
        m[i].ret = msg->ret;
        m[i].notify = msg->notify;
        m[i].orcpt = msg->orcpt;
        m[i].rcpts = msg->rcpt_ptrs;
        m[i].nrcpts = msg->nrcpts;
        bool utf8 = false;
        for (const char *p = msg->mail_from; *p; p++)
            utf8 |= (*p & 0x80) != 0;
        for (size_t k = 0; k < msg->nrcpts; k++)
            for (const char *p = msg->rcpt_ptrs[k]; *p; p++)
                utf8 |= (*p & 0x80) != 0;
        m[i].smtputf8 = utf8;
        if (ue) {
            /* Headers of this recipient before the stored content, which
             * every transaction of the message shares unchanged. */
            added += unsub_prefix(msg, keys, unsub, ue);
            m[i].prefix = msg->prefix;
            m[i].prefix_len = msg->prefix_len;
        }
        if (msg->owner >= 0) {
            /* A later transaction of the same message: the same bytes. */
            m[i].content = m[msg->owner].content;
            m[i].content_len = m[msg->owner].content_len;
            m[i].eightbit = m[msg->owner].eightbit;
            continue;
        }
        m[i].content = msg->content;
        m[i].content_len = msg->content_len;
        if (ue) {
            m[i].eightbit = has_8bit(msg->content, msg->content_len);
            continue;
        }
        /* DKIM signature and BIMI-Selector of the sender domain, once per
         * message (not per recipient or transaction). */
        const char *sender = msg->orig_from ? msg->orig_from : msg->mail_from;
        char *hdr = keys ? dkim_headers(keys, sender, msg->content, msg->content_len) : NULL;
        if (hdr) {
            size_t hl = strlen(hdr);
            msg->signed_content = xmalloc(hl + msg->content_len);
            memcpy(msg->signed_content, hdr, hl);
            memcpy(msg->signed_content + hl, msg->content, msg->content_len);
            m[i].content = msg->signed_content;
            m[i].content_len = hl + msg->content_len;
            msg->signed_len = m[i].content_len;
            added += msg->signed_len;
            free(hdr);
        }
        m[i].eightbit = has_8bit(msg->content, msg->content_len);
    }
    free(b->smtp_msgs);
    b->smtp_msgs = m;
    return added;
}

void
batch_set_connection(struct batch *b, const struct smtp_conn_info *info)
{
    free(b->dsn_mta);
    free(b->source_ip);
    free(b->dest_ip);
    free(b->tls_protocol);
    free(b->tls_cipher);
    free(b->tls_policy);
    free(b->tls_failure);
    free(b->tls_policy_domain);
    b->dsn_mta = info->host || info->ip
                     ? xasprintf("%s (%s)", info->host ? info->host : "", info->ip ? info->ip : "")
                     : NULL;
    b->source_ip = info->source_ip ? xstrdup(info->source_ip) : NULL;
    b->dest_ip = info->ip ? xstrdup(info->ip) : NULL;
    b->hop_dsn = info->dsn;
    b->tls_protocol = info->tls_protocol ? xstrdup(info->tls_protocol) : NULL;
    b->tls_cipher = info->tls_cipher ? xstrdup(info->tls_cipher) : NULL;
    b->tls_policy = info->tls_policy ? xstrdup(info->tls_policy) : NULL;
    b->tls_failure = info->tls_failure ? xstrdup(info->tls_failure) : NULL;
    b->tls_policy_domain = info->tls_policy_domain ? xstrdup(info->tls_policy_domain) : NULL;
}

void
batch_rcpt_set(struct batch_rcpt *r, char type, const char *status, const char *diag,
               const char *cat)
{
    r->type = type;
    snprintf(r->status, sizeof r->status, "%s", status ? status : "");
    free(r->diag);
    r->diag = xstrdup(diag ? diag : "");
    r->bounce_cat = cat;
}

char *
batch_reply_diag(const struct smtp_rcpt_result *r)
{
    /* The reply text carries its code on every line already. */
    char *d = r->code ? xasprintf("smtp;%s", r->reply ? r->reply : "")
                      : xasprintf("%s", r->reply ? r->reply : "");
    for (char *p = d; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return d;
}

void
batch_append_ts(struct buf *out, long long us, bool quoted)
{
    time_t t = (time_t)(us / 1000000LL);
    struct tm tm;
    gmtime_r(&t, &tm);
    buf_printf(out, "%s%04d-%02d-%02d %02d:%02d:%02d.%06lld+00%s", quoted ? "\"" : "",
               tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
               us % 1000000LL, quoted ? "\"" : "");
}

void
batch_finish_arrays(const struct batch *b, struct buf *a)
{
    for (int i = 0; i < BATCH_F_N; i++) {
        buf_init(&a[i]);
        buf_puts(&a[i], "{");
    }
    for (size_t i = 0; i < b->nrcpts; i++) {
        const struct batch_rcpt *r = &b->rcpts[i];
        if (i > 0)
            for (int k = 0; k < BATCH_F_N; k++)
                buf_puts(&a[k], ",");
        buf_printf(&a[BATCH_F_IDS], "%lld", r->id);
        buf_printf(&a[BATCH_F_TOKENS], "%lld", r->token);
        buf_printf(&a[BATCH_F_TYPES], "%c", r->type);
        if (r->type == 't')
            batch_append_ts(&a[BATCH_F_RETRY], r->retry_at_us, true);
        else
            buf_puts(&a[BATCH_F_RETRY], "NULL");
        db_array_append_text(&a[BATCH_F_STATUS], r->status);
        db_array_append_text(&a[BATCH_F_DIAG], r->diag);
        db_array_append_text(&a[BATCH_F_MTA], b->dsn_mta);
        db_array_append_text(&a[BATCH_F_CAT], r->type != 'd' ? r->bounce_cat : NULL);
        db_array_append_text(&a[BATCH_F_SRC], b->source_ip);
        db_array_append_text(&a[BATCH_F_DST], b->dest_ip);
        db_array_append_text(&a[BATCH_F_TLSP], b->tls_protocol);
        db_array_append_text(&a[BATCH_F_TLSC], b->tls_cipher);
        db_array_append_text(&a[BATCH_F_TLSPOL], b->tls_policy);
        db_array_append_text(&a[BATCH_F_TLSFAIL], b->tls_failure);
        db_array_append_text(&a[BATCH_F_TLSDOM], b->tls_policy_domain);
        buf_puts(&a[BATCH_F_HOPDSN], b->hop_dsn ? "t" : "f");
        buf_printf(&a[BATCH_F_DELAY], "%u", b->notify_delay_every_s);
    }
    for (int i = 0; i < BATCH_F_N; i++)
        buf_puts(&a[i], "}");
}
