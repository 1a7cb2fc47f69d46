/* priority: queue priorities and preemption checks (see priority.h). */
#include "priority.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>

#include "conf.h"
#include "db.h"
#include "util.h"

unsigned
priority_of_queue(const struct conf *c, const struct conf_domain *d, const char *vmta)
{
    unsigned p = d ? d->queue_priority : 0;
    const struct conf_vmta *v = vmta && *vmta ? conf_vmta_lookup(c, vmta) : NULL;
    if (v && v->queue_priority > p)
        p = v->queue_priority;
    return p > 100 ? 100 : p;
}

unsigned
priority_effective(unsigned queue_prio, unsigned ready_prio)
{
    unsigned p = ready_prio > queue_prio ? ready_prio : queue_prio;
    return p > 100 ? 100 : p;
}

void
priority_prepare(struct db *db)
{
    db_prepare(db, "priority_waiting",
               "SELECT priority FROM mta.slot_waiting(ARRAY[$1::text], ARRAY[$2::text],"
               " ARRAY[$3::int])",
               3);
}

struct check {
    priority_cb cb;
    void *arg;
};

static void
on_waiting(const PGresult *res, void *arg)
{
    struct check *c = arg;
    bool waiting = res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0;
    priority_cb cb = c->cb;
    void *cb_arg = c->arg;
    free(c);
    cb(waiting, cb_arg);
}

int
priority_check(struct db *db, const char *key_domain, const char *key_vmta, unsigned prio,
               priority_cb cb, void *arg)
{
    if (!db)
        return -1;
    char prio_s[16];
    snprintf(prio_s, sizeof prio_s, "%u", prio);
    const char *values[] = {key_domain, key_vmta ? key_vmta : "", prio_s};
    struct check *c = xmalloc(sizeof *c);
    c->cb = cb;
    c->arg = arg;
    if (db_exec(db, "priority_waiting", 3, values, NULL, NULL, 0, on_waiting, c) == 0)
        return 0;
    free(c);
    return -1;
}
