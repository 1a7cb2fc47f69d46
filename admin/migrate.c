/* migrate: "pgmta migrate". Applies every migrations/NNNN_name.sql not yet
 * recorded in mta.schema_migrations (each in its own transaction together
 * with its record), then re-applies every sql/ *.sql file in one transaction,
 * all under a session advisory lock so concurrent runs take turns. The file
 * lists and contents are owned here and freed before returning. */
#include "admin.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util.h"

struct sql_file {
    long version; /* migrations only */
    char *name;   /* file name without ".sql", e.g. "0001_init" */
    char *path;
};

struct file_list {
    struct sql_file *v;
    size_t n;
};

static const char migrate_usage[] =
    "usage: pgmta migrate [--db URL] [--sql-dir DIR]\n"
    "\n"
    "Applies the pending schema migrations (DIR/migrations/NNNN_name.sql, each once,\n"
    "in numeric order, recorded in mta.schema_migrations), then the SQL API\n"
    "(DIR/sql/ *.sql, every time, in name order). Safe to run concurrently and\n"
    "repeatedly. Nothing of a failing file is applied.\n"
    "\n"
    "DIR is --sql-dir, else $PGMTA_SHARE_DIR, else ../share/pgmta beside the pgmta\n"
    "binary, else the source tree pgmta was built from (unless\n"
    "$PGMTA_NO_SOURCE_TREE is set), else " PGMTA_DATADIR ".\n";

static bool
is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool
has_migrations(const char *dir)
{
    char *mig = xasprintf("%s/migrations", dir);
    bool ok = is_dir(mig);
    free(mig);
    return ok;
}

/* The directory holding migrations/ and sql/, or NULL. */
static char *
find_share_dir(const char *opt)
{
    const char *env = getenv("PGMTA_SHARE_DIR");
    const char *chosen = opt ? opt : (env && *env ? env : NULL);
    if (chosen) {
        if (has_migrations(chosen))
            return xstrdup(chosen);
        admin_err("%s/migrations: no such directory", chosen);
        return NULL;
    }
    /* Installed (a package, or cmake --install --prefix P with any P): the
     * files are in P/share/pgmta beside P/bin/pgmta, and they are the ones
     * that go with this binary even where its source tree exists. */
    char *rel = util_exe_relative("../share/pgmta");
    if (rel && has_migrations(rel))
        return rel;
    free(rel);
    const char *no_src = getenv("PGMTA_NO_SOURCE_TREE");
    if (!(no_src && *no_src) && has_migrations(PGMTA_SOURCE_DIR))
        return xstrdup(PGMTA_SOURCE_DIR);
    if (has_migrations(PGMTA_DATADIR))
        return xstrdup(PGMTA_DATADIR);
    admin_err("no migrations/ directory found in %s (use --sql-dir or PGMTA_SHARE_DIR)",
              PGMTA_DATADIR);
    return NULL;
}

static void
file_list_free(struct file_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].name);
        free(l->v[i].path);
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int
cmp_version(const void *a, const void *b)
{
    const struct sql_file *x = a, *y = b;
    return x->version < y->version ? -1 : x->version > y->version;
}

static int
cmp_name(const void *a, const void *b)
{
    const struct sql_file *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static bool
ends_with_sql(const char *s)
{
    size_t n = strlen(s);
    return n > 4 && !strcmp(s + n - 4, ".sql");
}

/* Lists DIR/SUB/ *.sql. For migrations, names must be NNNN_name.sql with
 * distinct numbers. Returns 0, or -1 with a message printed. */
static int
list_files(const char *dir, const char *sub, bool migrations, struct file_list *out)
{
    char *path = xasprintf("%s/%s", dir, sub);
    out->v = NULL;
    out->n = 0;
    DIR *d = opendir(path);
    if (!d) {
        if (errno == ENOENT && !migrations) {
            free(path);
            return 0;
        }
        admin_err("%s: %s", path, strerror(errno));
        free(path);
        return -1;
    }
    size_t cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !ends_with_sql(e->d_name))
            continue;
        long version = 0;
        if (migrations) {
            char *end;
            errno = 0;
            version = strtol(e->d_name, &end, 10);
            if (end == e->d_name || *end != '_' || errno || version < 0 || version > 2147483647L) {
                admin_err("%s/%s: a migration must be named NNNN_name.sql", path, e->d_name);
                rc = -1;
                break;
            }
        }
        if (out->n == cap) {
            cap = cap ? cap * 2 : 16;
            out->v = xrealloc(out->v, cap * sizeof *out->v);
        }
        struct sql_file *f = &out->v[out->n++];
        f->version = version;
        f->name = xstrndup(e->d_name, strlen(e->d_name) - 4);
        f->path = xasprintf("%s/%s", path, e->d_name);
    }
    closedir(d);
    if (rc == 0 && out->n > 1) {
        qsort(out->v, out->n, sizeof *out->v, migrations ? cmp_version : cmp_name);
        for (size_t i = 1; migrations && i < out->n; i++) {
            if (out->v[i].version == out->v[i - 1].version) {
                admin_err("%s and %s have the same number", out->v[i - 1].path, out->v[i].path);
                rc = -1;
                break;
            }
        }
    }
    free(path);
    if (rc)
        file_list_free(out);
    return rc;
}

/* Whole file as a NUL-terminated string, or NULL (message printed). */
static char *
read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        admin_err("%s: %s", path, strerror(errno));
        return NULL;
    }
    struct buf b;
    buf_init(&b);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        buf_append(&b, chunk, n);
    bool bad = ferror(f) != 0;
    fclose(f);
    if (bad) {
        admin_err("%s: read error", path);
        buf_free(&b);
        return NULL;
    }
    if (memchr(b.data ? b.data : "", '\0', b.len)) {
        admin_err("%s: file contains a NUL byte", path);
        buf_free(&b);
        return NULL;
    }
    if (!b.data)
        return xstrdup("");
    return b.data;
}

static bool
simple(PGconn *conn, const char *what, const char *sql)
{
    PGresult *r = admin_exec(conn, what, sql, 0, NULL);
    PQclear(r);
    return r != NULL;
}

static void
rollback(PGconn *conn)
{
    PQclear(PQexec(conn, "ROLLBACK"));
}

/* Runs the content of f; reports errors as "FILE: line N: ERROR: ...". */
static bool
run_file(PGconn *conn, const struct sql_file *f, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
    if (!ok)
        admin_report_pg_error(f->path, r, sql);
    PQclear(r);
    return ok;
}

static bool
apply_migration(PGconn *conn, const struct sql_file *f)
{
    char *sql = read_file(f->path);
    if (!sql)
        return false;
    bool ok = simple(conn, "BEGIN", "BEGIN") && run_file(conn, f, sql);
    free(sql);
    if (ok) {
        char version[24];
        snprintf(version, sizeof version, "%ld", f->version);
        const char *params[] = {version, f->name};
        PGresult *r = admin_exec(conn, f->path,
                                 "INSERT INTO mta.schema_migrations (version, name) "
                                 "VALUES ($1, $2)",
                                 2, params);
        ok = r != NULL;
        PQclear(r);
    }
    if (ok)
        ok = simple(conn, f->path, "COMMIT");
    if (!ok) {
        rollback(conn);
        admin_err("migration %s failed, nothing of it was applied", f->name);
        return false;
    }
    printf("applied %s\n", f->name);
    fflush(stdout);
    return true;
}

static bool
apply_sql_api(PGconn *conn, const struct file_list *files)
{
    if (!simple(conn, "BEGIN", "BEGIN"))
        return false;
    for (size_t i = 0; i < files->n; i++) {
        char *sql = read_file(files->v[i].path);
        bool ok = sql && run_file(conn, &files->v[i], sql);
        free(sql);
        if (!ok) {
            rollback(conn);
            admin_err("SQL API not applied (%s failed); the schema migrations stay applied",
                      files->v[i].name);
            return false;
        }
    }
    if (!simple(conn, "COMMIT", "COMMIT")) {
        rollback(conn);
        return false;
    }
    printf("sql api: %zu files applied\n", files->n);
    return true;
}

/* Creates today's and the coming accounting partitions when the SQL API has
 * the function for it. */
static bool
ensure_partitions(PGconn *conn)
{
    PGresult *r = admin_exec(conn, "acct partitions",
                             "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = "
                             "p.pronamespace WHERE n.nspname = 'mta' AND p.proname = "
                             "'acct_ensure_partitions'",
                             0, NULL);
    if (!r)
        return false;
    bool exists = PQntuples(r) > 0;
    PQclear(r);
    return !exists ||
           simple(conn, "mta.acct_ensure_partitions()", "SELECT mta.acct_ensure_partitions()");
}

static int
migrate(PGconn *conn, const char *dir)
{
    struct file_list migs, api;
    if (list_files(dir, "migrations", true, &migs) < 0)
        return ADMIN_EXIT_ERROR;
    if (list_files(dir, "sql", false, &api) < 0) {
        file_list_free(&migs);
        return ADMIN_EXIT_ERROR;
    }
    int status = ADMIN_EXIT_ERROR;
    bool *applied = xcalloc(migs.n ? migs.n : 1, sizeof *applied);
    /* The lock is held until the connection closes. */
    if (!simple(conn, "advisory lock", "SELECT pg_advisory_lock(hashtext('pgmta-migrate'))") ||
        !simple(conn, "creating mta.schema_migrations",
                "CREATE SCHEMA IF NOT EXISTS mta; "
                "CREATE TABLE IF NOT EXISTS mta.schema_migrations ("
                "version int PRIMARY KEY, name text NOT NULL, "
                "applied_at timestamptz NOT NULL DEFAULT now())"))
        goto out;
    PGresult *r =
        admin_exec(conn, "reading mta.schema_migrations",
                   "SELECT version, name FROM mta.schema_migrations ORDER BY version", 0, NULL);
    if (!r)
        goto out;
    for (int i = 0; i < PQntuples(r); i++) {
        long v = atol(PQgetvalue(r, i, 0));
        bool known = false;
        for (size_t k = 0; k < migs.n; k++)
            if (migs.v[k].version == v)
                applied[k] = known = true;
        if (!known)
            admin_err("warning: the database has migration %s, which is not in %s/migrations "
                      "(is this pgmta older than the database?)",
                      PQgetvalue(r, i, 1), dir);
    }
    PQclear(r);
    size_t done = 0;
    for (size_t k = 0; k < migs.n; k++) {
        if (applied[k])
            continue;
        if (!apply_migration(conn, &migs.v[k]))
            goto out;
        done++;
    }
    if (done == 0)
        printf("up to date\n");
    if (!apply_sql_api(conn, &api) || !ensure_partitions(conn))
        goto out;
    status = ADMIN_EXIT_OK;
out:
    free(applied);
    file_list_free(&migs);
    file_list_free(&api);
    return status;
}

int
admin_cmd_migrate(int argc, char **argv)
{
    static const struct option longopts[] = {{"db", required_argument, NULL, 'd'},
                                             {"sql-dir", required_argument, NULL, 's'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    struct admin_opts opts = {0};
    const char *sql_dir = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "+h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            opts.db = optarg;
            break;
        case 's':
            sql_dir = optarg;
            break;
        case 'h':
            fputs(migrate_usage, stdout);
            return ADMIN_EXIT_OK;
        default:
            fputs(migrate_usage, stderr);
            return ADMIN_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        admin_err("migrate: unexpected argument '%s'", argv[optind]);
        fputs(migrate_usage, stderr);
        return ADMIN_EXIT_USAGE;
    }
    char *dir = find_share_dir(sql_dir);
    if (!dir)
        return ADMIN_EXIT_ERROR;
    PGconn *conn = admin_connect(&opts);
    if (!conn) {
        free(dir);
        return ADMIN_EXIT_ERROR;
    }
    int status = migrate(conn, dir);
    PQfinish(conn);
    free(dir);
    return status;
}
