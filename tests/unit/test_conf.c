/* Unit tests of conf: duration and rate syntax (tables of good and bad
 * values, overflow), canonical formatting, the conf.d/ merge against a golden
 * dump (PGMTA_UPDATE_GOLDEN=1 rewrites it), the dump/load round trip, domain
 * lookup, and the golden error messages of tests/data/conf/errors/. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "util.h"

#define DATA PGMTA_TEST_DATA "/conf"

/* ---- helpers ---------------------------------------------------------- */

static char *
read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct buf b;
    buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    fclose(f);
    return b.data ? b.data : xstrdup("");
}

static void
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static char *
dump_to_string(const struct conf *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    conf_dump(c, f);
    fclose(f);
    return text;
}

/* A fresh directory (without conf.d/) for generated configurations. */
static char *
make_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char *tmpl = xasprintf("%s/pgmta-conf-XXXXXX", base ? base : "/tmp");
    assert_non_null(mkdtemp(tmpl));
    return tmpl;
}

static void
remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char *p = xasprintf("%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(p);
        else
            unlink(p);
        free(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* Loads TEXT as the only file of a temporary directory. */
static struct conf *
load_text(const char *text, char *err, size_t errlen)
{
    char *dir = make_tmpdir();
    char *path = xasprintf("%s/pgmta.conf", dir);
    write_file(path, text);
    struct conf *c = conf_load(path, err, errlen);
    remove_tree(dir);
    free(path);
    free(dir);
    return c;
}

/* ---- durations and rates ------------------------------------------------ */

static void
test_duration_good(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        uint64_t ms;
    } cases[] = {
        {"0", 0},
        {"0s", 0},
        {"30", 30000},
        {"30s", 30000},
        {"10m", 600000},
        {"1h", 3600000},
        {"4d12h", (4 * 24 + 12) * 3600000ULL},
        {"1h30m", 5400000},
        {"500ms", 500},
        {"1s500ms", 1500},
        {"1d1h1m1s1ms", 86400000ULL + 3600000 + 60000 + 1000 + 1},
        {"90m", 5400000},
        {"007s", 7000},
        {"3650d", CONF_DURATION_MAX_MS},
        {"315360000", CONF_DURATION_MAX_MS},
        {"315360000s", CONF_DURATION_MAX_MS},
        {"3649d24h", CONF_DURATION_MAX_MS},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t ms = 12345;
        if (conf_parse_duration(cases[i].in, &ms) != 0)
            fail_msg("duration \"%s\" refused", cases[i].in);
        if (ms != cases[i].ms)
            fail_msg("duration \"%s\": %llu, want %llu", cases[i].in, (unsigned long long)ms,
                     (unsigned long long)cases[i].ms);
    }
}

static void
test_duration_bad(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "",
        "s",
        "10x",
        "10 s",
        " 10s",
        "10s ",
        "-1s",
        "+1s",
        "1.5h",
        "1h30",      /* a bare number only as the whole value */
        "30m1h",     /* units in descending order */
        "1h1h",      /* each unit once */
        "1ms1s",     /* ms is the smallest */
        "10M",       /* units are lower case */
        "1y",        /* no such unit */
        "3651d",     /* longer than 10 years */
        "3650d1ms",  /* just over */
        "315360001", /* just over, in seconds */
        "87600h1s",  /* just over, in hours */
        "99999999999999999999999d",
        "18446744073709551616ms", /* 2^64 */
        "18446744073709551615",
        "0x10s",
        "1d ",
        "h1",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint64_t ms = 777;
        if (conf_parse_duration(cases[i], &ms) == 0)
            fail_msg("duration \"%s\" accepted as %llu ms", cases[i], (unsigned long long)ms);
        assert_int_equal(ms, 777);
    }
    uint64_t ms;
    assert_int_equal(conf_parse_duration(NULL, &ms), -1);
}

static void
test_rate_good(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        uint32_t count, period_ms;
    } cases[] = {
        {"unlimited", CONF_UNLIMITED, 0},
        {"100/h", 100, 3600000},
        {"10/m", 10, 60000},
        {"5/s", 5, 1000},
        {"1000/d", 1000, 86400000},
        {"20/10m", 20, 600000},
        {"1/500ms", 1, 500},
        {"3/1h30m", 3, 5400000},
        {"7/90", 7, 90000},
        {"4294967294/s", 4294967294u, 1000},
        {"1/49d17h2m47s295ms", 1, UINT32_MAX},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct conf_rate r = {0, 0};
        if (conf_parse_rate(cases[i].in, &r) != 0)
            fail_msg("rate \"%s\" refused", cases[i].in);
        if (r.count != cases[i].count || r.period_ms != cases[i].period_ms)
            fail_msg("rate \"%s\": %u/%ums", cases[i].in, r.count, r.period_ms);
    }
}

static void
test_rate_bad(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "",
        "0/h", /* a pause is not a rate */
        "-1/h",
        "100",
        "100/",
        "/h",
        "100/x",
        "100/H",
        "100/0s",
        "100/0",
        "100/h/h",
        "100 /h",
        "Unlimited",
        "unlimited/h",
        "4294967295/s", /* CONF_UNLIMITED is reserved */
        "4294967296/s",
        "99999999999999999999/s",
        "1/49d17h2m47s296ms", /* period longer than 2^32-1 ms */
        "1/50d",
        "1.5/h",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct conf_rate r = {42, 43};
        if (conf_parse_rate(cases[i], &r) == 0)
            fail_msg("rate \"%s\" accepted as %u/%ums", cases[i], r.count, r.period_ms);
        assert_int_equal(r.count, 42);
        assert_int_equal(r.period_ms, 43);
    }
}

static void
test_format_round_trip(void **state)
{
    (void)state;
    static const struct {
        uint64_t ms;
        const char *out;
    } durations[] = {
        {0, "0s"},
        {1, "1ms"},
        {1500, "1s500ms"},
        {30000, "30s"},
        {90000, "1m30s"},
        {600000, "10m"},
        {5400000, "1h30m"},
        {(4 * 24 + 12) * 3600000ULL, "4d12h"},
        {86400000ULL + 3600000 + 60000 + 1000 + 1, "1d1h1m1s1ms"},
        {CONF_DURATION_MAX_MS, "3650d"},
    };
    char buf[64];
    for (size_t i = 0; i < sizeof durations / sizeof durations[0]; i++) {
        conf_format_duration(durations[i].ms, buf, sizeof buf);
        assert_string_equal(buf, durations[i].out);
        uint64_t back;
        assert_int_equal(conf_parse_duration(buf, &back), 0);
        assert_true(back == durations[i].ms);
    }
    static const struct {
        struct conf_rate r;
        const char *out;
    } rates[] = {
        {{CONF_UNLIMITED, 0}, "unlimited"},
        {{600, 3600000}, "600/h"},
        {{20, 600000}, "20/10m"},
        {{5, 1000}, "5/s"},
        {{10, 60000}, "10/m"},
        {{1000, 86400000}, "1000/d"},
        {{3, 1500}, "3/1s500ms"},
        {{1, UINT32_MAX}, "1/49d17h2m47s295ms"},
    };
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        conf_format_rate(&rates[i].r, buf, sizeof buf);
        assert_string_equal(buf, rates[i].out);
        struct conf_rate back;
        assert_int_equal(conf_parse_rate(buf, &back), 0);
        assert_int_equal(back.count, rates[i].r.count);
        assert_int_equal(back.period_ms, rates[i].r.period_ms);
    }
    /* "100/1h" and "100/60m" are both printed the canonical way. */
    struct conf_rate r;
    assert_int_equal(conf_parse_rate("100/60m", &r), 0);
    conf_format_rate(&r, buf, sizeof buf);
    assert_string_equal(buf, "100/h");
    /* A short buffer stays NUL-terminated. */
    char small[4];
    conf_format_duration(86400000ULL + 3600000, small, sizeof small);
    assert_true(strlen(small) < sizeof small);
}

/* ---- loading ------------------------------------------------------------- */

static void
test_merge_golden(void **state)
{
    (void)state;
    char err[1024];
    struct conf *c = conf_load(DATA "/merge/pgmta.conf", err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    char *got = dump_to_string(c);
    const char *golden = DATA "/merge.expected";
    const char *update = getenv("PGMTA_UPDATE_GOLDEN");
    if (update && strcmp(update, "1") == 0) {
        write_file(golden, got);
        fprintf(stderr, "rewrote %s\n", golden);
    }
    char *want = read_file(golden);
    if (!want)
        fail_msg("%s missing; run with PGMTA_UPDATE_GOLDEN=1 and review it", golden);
    if (strcmp(got, want) != 0) {
        fprintf(stderr, "conf_dump differs from %s; got:\n%s", golden, got);
        fail();
    }
    free(want);
    free(got);
    conf_free(c);
}

/* Spot checks of the merge semantics, independent of the golden file. */
static void
test_merge_values(void **state)
{
    (void)state;
    char err[1024];
    struct conf *c = conf_load(DATA "/merge/pgmta.conf", err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    /* Scalars: the later file wins, field by field inside groups. */
    assert_string_equal(c->database_url, "postgresql://mta@127.0.0.1:5432/mta");
    assert_int_equal(c->database_connections, 6);
    assert_true(c->lease_ms == 120000);
    assert_true(c->poll_interval_ms == 250);
    assert_string_equal(c->default_pipe, "priority");
    /* Lists: entries added, and extended by name. */
    assert_int_equal(c->npipes, 3);
    assert_int_equal(conf_pipe_lookup(c, "transactional")->processes, 2);
    assert_int_equal(conf_pipe_lookup(c, "bulk")->processes, 4);
    assert_int_equal(conf_pipe_lookup(c, "priority")->processes, 1);
    assert_null(conf_pipe_lookup(c, "express"));
    assert_int_equal(c->ndkim, 2);
    assert_string_equal(conf_vmta_lookup(c, "vmta-a")->helo, "a.example.com");
    assert_null(conf_vmta_lookup(c, "vmta-b")->helo);
    assert_int_equal(conf_vmta_pool_lookup(c, "pool-1")->nmembers, 2);
    /* example.test: main file, then 10-domains, then 20-override. */
    const struct conf_domain *d = conf_domain_lookup(c, "example.test");
    assert_string_equal(d->name, "example.test");
    assert_string_equal(d->route, "127.0.0.1:2526");
    assert_int_equal(d->max_smtp_out, 3);
    assert_int_equal(d->max_msg_per_connection, 50);
    assert_int_equal(d->max_msg_rate.count, 600);
    assert_int_equal(d->max_msg_rate.period_ms, 3600000);
    assert_true(d->data_timeout_ms == 5400000);
    assert_true(d->retry_after_ms == 300000); /* from "*" */
    assert_int_equal(d->npatterns, 2);        /* from "*" */
    assert_non_null(strstr(d->file, "merge/pgmta.conf"));
    /* gmail.com: only in conf.d. */
    d = conf_domain_lookup(c, "gmail.com");
    assert_int_equal(d->max_smtp_out, CONF_UNLIMITED);
    assert_true(d->retry_after_ms == 600000);
    assert_true(d->bounce_after_ms == 2 * 86400000ULL);
    assert_true(d->require_starttls && d->use_starttls && d->tls_verify);
    assert_string_equal(d->mx_rollup, "google");
    assert_non_null(strstr(d->file, "conf.d/10-domains.conf"));
    assert_int_equal(d->line, 3);
    /* yahoo.com overrides the pattern list of "*". */
    d = conf_domain_lookup(c, "yahoo.com");
    assert_int_equal(d->npatterns, 1);
    assert_int_equal(conf_domain_match_pattern(d, "421 4.7.0 [TS02] Messages deferred"), 0);
    assert_int_equal(d->patterns[0].action, CONF_PATTERN_DEFER_QUEUE);
    assert_int_equal(conf_domain_match_pattern(d, "421 too many connections"), -1);
    d = conf_domain_lookup(c, "other.test");
    assert_string_equal(d->name, "*");
    assert_int_equal(conf_domain_match_pattern(d, "421 Too Many Messages from you"), 0);
    assert_int_equal(conf_domain_match_pattern(d, "5.1.1 no such user"), 1);
    assert_int_equal(d->patterns[1].action, CONF_PATTERN_BOUNCE_RCPT);
    assert_int_equal(conf_domain_match_pattern(d, "250 ok"), -1);
    conf_free(c);
}

static void
test_conf_d_order(void **state)
{
    (void)state;
    char err[1024];
    struct conf *c = conf_load(DATA "/order/pgmta.conf", err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    /* strcmp order 1-a, 10-b, 2-c: 2-c is read last. */
    assert_string_equal(c->node_name, "c");
    const struct conf_domain *d = conf_domain_lookup(c, "x.test");
    assert_int_equal(d->max_smtp_out, 2);     /* 10-b over 1-a; 2-c leaves it */
    assert_true(d->retry_after_ms == 180000); /* 2-c over 1-a */
    conf_free(c);
}

/* conf_dump output loads again into the same configuration. */
static void
round_trip(const char *path)
{
    char err[1024];
    struct conf *c = conf_load(path, err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    char *first = dump_to_string(c);
    conf_free(c);
    char *dir = make_tmpdir();
    char *copy = xasprintf("%s/dumped.conf", dir);
    write_file(copy, first);
    c = conf_load(copy, err, sizeof err);
    if (!c)
        fail_msg("dump of %s does not load: %s", path, err);
    char *second = dump_to_string(c);
    assert_string_equal(first, second);
    conf_free(c);
    free(first);
    free(second);
    remove_tree(dir);
    free(copy);
    free(dir);
}

static void
test_dump_round_trip(void **state)
{
    (void)state;
    round_trip(DATA "/merge/pgmta.conf");
    round_trip(DATA "/order/pgmta.conf");
}

static void
test_defaults(void **state)
{
    (void)state;
    char err[1024];
    struct conf *c = load_text("database = { url = \"postgresql:///mta\"; };\n", err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    char host[256] = "";
    gethostname(host, sizeof host);
    assert_string_equal(c->node_name, host);
    assert_string_equal(c->log_level, "info");
    assert_int_equal(c->database_connections, 4);
    assert_int_equal(c->ndns_servers, 0);
    assert_true(c->dns_timeout_ms == 5000);
    assert_int_equal(c->nlisten_smtp, 0);
    assert_null(c->listen_http);
    assert_null(c->http_token);
    assert_int_equal(c->smtp_port, 25);
    assert_int_equal(c->npipes, 2);
    assert_string_equal(c->pipes[0].name, "transactional");
    assert_string_equal(c->pipes[1].name, "bulk");
    assert_string_equal(c->default_pipe, "bulk");
    assert_true(c->generate_bounces);
    assert_true(c->lease_ms == 300000);
    assert_true(c->poll_interval_ms == 1000);
    assert_true(c->shutdown_timeout_ms == 30000);
    assert_int_equal(c->ndomains, 1);
    const struct conf_domain *d = conf_domain_lookup(c, "anything.test");
    assert_ptr_equal(d, &c->domains[0]);
    assert_string_equal(d->name, "*");
    assert_null(d->route);
    assert_null(d->file);
    assert_int_equal(d->line, 0);
    assert_int_equal(d->max_smtp_out, 20);
    assert_int_equal(d->max_msg_rate.count, CONF_UNLIMITED);
    assert_int_equal(d->max_connect_rate.count, CONF_UNLIMITED);
    assert_int_equal(d->max_msg_per_connection, 100);
    assert_int_equal(d->max_rcpt_per_message, 100);
    assert_true(d->retry_after_ms == 600000);
    assert_true(d->max_retry_after_ms == 4 * 3600000);
    assert_true(d->bounce_after_ms == 108 * 3600000ULL);
    assert_true(d->use_starttls);
    assert_false(d->require_starttls);
    assert_false(d->tls_verify);
    assert_true(d->connect_timeout_ms == 30000);
    assert_true(d->command_timeout_ms == 120000);
    assert_true(d->data_timeout_ms == 600000);
    assert_int_equal(d->backoff_max_msg_rate.count, 60);
    assert_int_equal(d->backoff_max_msg_rate.period_ms, 3600000);
    assert_true(d->backoff_retry_after_ms == 1200000);
    assert_true(d->backoff_to_normal_after_ms == 3600000);
    assert_int_equal(d->npatterns, 0);
    assert_null(d->mx_rollup);
    conf_free(c);
}

static void
test_lookup(void **state)
{
    (void)state;
    char err[1024];
    struct conf *c = load_text("database = { url = \"postgresql:///mta\"; };\n"
                               "domains = (\n"
                               "  { name = \"*.example.com\"; max-smtp-out = 2; },\n"
                               "  { name = \"*.b.example.com\"; max-smtp-out = 3; },\n"
                               "  { name = \"example.com\"; max-smtp-out = 4; },\n"
                               "  { name = \"x.b.example.com\"; max-smtp-out = 5; },\n"
                               "  { name = \"*\"; max-smtp-out = 6; }\n"
                               ");\n",
                               err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    assert_string_equal(c->domains[0].name, "*");
    assert_int_equal(conf_domain_lookup(c, "example.com")->max_smtp_out, 4);
    assert_int_equal(conf_domain_lookup(c, "a.example.com")->max_smtp_out, 2);
    assert_int_equal(conf_domain_lookup(c, "c.a.example.com")->max_smtp_out, 2);
    assert_int_equal(conf_domain_lookup(c, "b.example.com")->max_smtp_out, 2);
    assert_int_equal(conf_domain_lookup(c, "y.b.example.com")->max_smtp_out, 3);
    assert_int_equal(conf_domain_lookup(c, "z.y.b.example.com")->max_smtp_out, 3);
    assert_int_equal(conf_domain_lookup(c, "x.b.example.com")->max_smtp_out, 5);
    assert_int_equal(conf_domain_lookup(c, "X.B.Example.COM")->max_smtp_out, 5);
    assert_int_equal(conf_domain_lookup(c, "example.org")->max_smtp_out, 6);
    assert_int_equal(conf_domain_lookup(c, "com")->max_smtp_out, 6);
    assert_int_equal(conf_domain_lookup(c, "")->max_smtp_out, 6);
    assert_int_equal(conf_domain_lookup(c, "notexample.com")->max_smtp_out, 6);
    char long_name[400];
    memset(long_name, 'a', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = '\0';
    assert_int_equal(conf_domain_lookup(c, long_name)->max_smtp_out, 6);
    conf_free(c);
}

static void
test_value_forms(void **state)
{
    (void)state;
    char err[1024];
    /* Integers as strings, durations as integers (seconds). */
    struct conf *c = load_text("database = { url = \"postgresql:///mta\"; connections = \"7\"; };\n"
                               "lease-time = 45;\n"
                               "dns = { servers = ( \"127.0.0.1\", \"[::1]:53\" ); };\n"
                               "domains = ( { name = \"*\"; max-smtp-out = \"12\";\n"
                               "  max-msg-per-connection = \"unlimited\"; bounce-after = 0; } );\n",
                               err, sizeof err);
    if (!c)
        fail_msg("%s", err);
    assert_int_equal(c->database_connections, 7);
    assert_true(c->lease_ms == 45000);
    assert_int_equal(c->ndns_servers, 2);
    assert_int_equal(c->domains[0].max_smtp_out, 12);
    assert_int_equal(c->domains[0].max_msg_per_connection, CONF_UNLIMITED);
    assert_true(c->domains[0].bounce_after_ms == 0);
    conf_free(c);

    c = load_text("database = { url = \"postgresql:///mta\"; };\n"
                  "domains = ( { name = \"*\"; max-smtp-out = \"5000000000\"; } );\n",
                  err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "/pgmta.conf:2: max-smtp-out: 5000000000 is out of range"));
    c = load_text("database = { url = \"postgresql:///mta\"; };\n"
                  "domains = ( { name = \"*\"; max-rcpt-per-message = \"unlimited\"; } );\n",
                  err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "/pgmta.conf:2: max-rcpt-per-message: expected an integer"));
    c = load_text("database = { url = \"postgresql:///mta\"; };\n"
                  "lease-time = 315360001;\n",
                  err, sizeof err);
    assert_null(c);
    assert_non_null(strstr(err, "/pgmta.conf:2: lease-time: bad duration 315360001"));
}

static void
test_missing_file(void **state)
{
    (void)state;
    char err[1024];
    const char *path = DATA "/no-such-dir/pgmta.conf";
    assert_null(conf_load(path, err, sizeof err));
    char *want = xasprintf("%s:0: cannot read: No such file or directory", path);
    assert_string_equal(err, want);
    free(want);
    /* A tiny error buffer is left terminated. */
    char tiny[8];
    assert_null(conf_load(path, tiny, sizeof tiny));
    assert_int_equal(strlen(tiny), sizeof tiny - 1);
}

/* One bad configuration: the first line reads "# expect: REL:LINE: text",
 * REL relative to the file's directory; the error must be exactly DIR/REL... */
static int
check_error_case(const char *dir, const char *file)
{
    char *path = xasprintf("%s/%s", dir, file);
    char *text = read_file(path);
    int bad = 0;
    const char *tag = "# expect: ";
    if (!text || strncmp(text, tag, strlen(tag)) != 0) {
        fprintf(stderr, "%s: first line must be \"%s...\"\n", path, tag);
        bad = 1;
        goto out;
    }
    char *nl = strchr(text, '\n');
    if (nl)
        *nl = '\0';
    char *want = xasprintf("%s/%s", dir, text + strlen(tag));
    char err[1024];
    struct conf *c = conf_load(path, err, sizeof err);
    if (c) {
        fprintf(stderr, "%s: loaded, want error \"%s\"\n", path, want);
        conf_free(c);
        bad = 1;
    } else if (strcmp(err, want) != 0) {
        fprintf(stderr, "%s:\n  got  \"%s\"\n  want \"%s\"\n", path, err, want);
        bad = 1;
    }
    free(want);
out:
    free(text);
    free(path);
    return bad;
}

static void
test_error_messages(void **state)
{
    (void)state;
    const char *dir = DATA "/errors";
    DIR *d = opendir(dir);
    assert_non_null(d);
    int failures = 0, cases = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char *p = xasprintf("%s/%s", dir, e->d_name);
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        if (S_ISDIR(st.st_mode)) {
            /* A directory case: its pgmta.conf plus its conf.d/. */
            failures += check_error_case(p, "pgmta.conf");
            cases++;
        } else if (strlen(e->d_name) > 5 &&
                   strcmp(e->d_name + strlen(e->d_name) - 5, ".conf") == 0) {
            failures += check_error_case(dir, e->d_name);
            cases++;
        }
        free(p);
    }
    closedir(d);
    fprintf(stderr, "%d error cases, %d failed\n", cases, failures);
    assert_true(cases >= 20);
    assert_int_equal(failures, 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_good),
        cmocka_unit_test(test_duration_bad),
        cmocka_unit_test(test_rate_good),
        cmocka_unit_test(test_rate_bad),
        cmocka_unit_test(test_format_round_trip),
        cmocka_unit_test(test_merge_golden),
        cmocka_unit_test(test_merge_values),
        cmocka_unit_test(test_conf_d_order),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_value_forms),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_error_messages),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
