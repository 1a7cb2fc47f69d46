/* rollup: the source IP's limit key and limits of a virtual MTA (see
 * rollup.h). Pure functions of the configuration; owns nothing. */
#include "rollup.h"

#include "conf.h"
#include "util.h"

static bool
has_source(const struct conf_vmta *vm)
{
    return vm && vm->smtp_source_host && vm->smtp_source_host[0];
}

uint32_t
rollup_ip_max_smtp_out(const struct conf_vmta *vm)
{
    if (!vm || vm->source_ip_max_smtp_out == 0)
        return CONF_UNLIMITED;
    return vm->source_ip_max_smtp_out;
}

const struct conf_rate *
rollup_ip_connect_rate(const struct conf_vmta *vm)
{
    if (!vm || vm->source_ip_max_connect_rate.count == 0 ||
        vm->source_ip_max_connect_rate.count == CONF_UNLIMITED)
        return NULL;
    return &vm->source_ip_max_connect_rate;
}

const struct conf_rate *
rollup_ip_msg_rate(const struct conf_vmta *vm)
{
    if (!has_source(vm) || vm->source_ip_max_msg_rate.count == 0 ||
        vm->source_ip_max_msg_rate.count == CONF_UNLIMITED)
        return NULL;
    return &vm->source_ip_max_msg_rate;
}

bool
rollup_ip_limits_connections(const struct conf_vmta *vm)
{
    return has_source(vm) &&
           (rollup_ip_max_smtp_out(vm) != CONF_UNLIMITED || rollup_ip_connect_rate(vm));
}

char *
rollup_ip_key(const struct conf_vmta *vm)
{
    if (!rollup_ip_limits_connections(vm) && !rollup_ip_msg_rate(vm))
        return NULL;
    return xasprintf("ip:%s", vm->smtp_source_host);
}
