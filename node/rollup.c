#include "rollup.h"

#include "conf.h"
#include "util.h"

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

char *
rollup_ip_key(const struct conf_vmta *vm)
{
    if (!vm || !vm->smtp_source_host || !vm->smtp_source_host[0] ||
        (rollup_ip_max_smtp_out(vm) == CONF_UNLIMITED && !rollup_ip_connect_rate(vm)))
        return NULL;
    return xasprintf("ip:%s", vm->smtp_source_host);
}
