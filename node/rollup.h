/* rollup: limit keys shared by several queues (README, "Per-source-IP
 * limits"). A virtual MTA with source-ip-max-smtp-out takes, besides its
 * queue's slot, a slot of the key "ip:ADDR" (its smtp-source-host), so that
 * the limit holds for the source IP across every destination, cluster-wide;
 * source-ip-max-connect-rate takes a connect token of that key after it,
 * and source-ip-max-msg-rate message tokens of that key in the statement
 * that claims the queue's messages (mta.claim_many_rated), together with
 * the queue's own.
 * The IP slot is taken first, then the queue's: both are try-locks (a slot
 * is granted or refused at once), so no order of two sessions can deadlock,
 * and a session releases what it holds on every path (session_end). */
#ifndef PGMTA_ROLLUP_H
#define PGMTA_ROLLUP_H

#include <stdbool.h>
#include <stdint.h>

struct conf_vmta;

/* The limit key of VM's source IP ("ip:ADDR", to free), or NULL when VM is
 * NULL, has no source address or none of source-ip-max-smtp-out,
 * source-ip-max-connect-rate and source-ip-max-msg-rate. */
char *rollup_ip_key(const struct conf_vmta *vm);
/* Whether VM's new connections take the IP's slot and connect token first
 * (source-ip-max-smtp-out or source-ip-max-connect-rate set). */
bool rollup_ip_limits_connections(const struct conf_vmta *vm);
/* VM's source-ip-max-smtp-out (CONF_UNLIMITED when not set). */
uint32_t rollup_ip_max_smtp_out(const struct conf_vmta *vm);
/* VM's source-ip-max-connect-rate, or NULL when not set. */
const struct conf_rate *rollup_ip_connect_rate(const struct conf_vmta *vm);
/* VM's source-ip-max-msg-rate, or NULL when not set or VM has no source
 * address. */
const struct conf_rate *rollup_ip_msg_rate(const struct conf_vmta *vm);

#endif
