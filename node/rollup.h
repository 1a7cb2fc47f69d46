/* rollup: limit keys shared by several queues.
 *
 * MX rollup (README, "Traffic shaping, cluster-wide"): the connection
 * slots and rate buckets of a session are those of its limit key. A domain
 * with mx-rollup = "NAME" uses "rollup:NAME"; with mx-rollup = false, or a
 * route, its own name. Otherwise (automatic, the default) the key comes
 * from the domain's MX set, looked up (through the node's DNS cache) before
 * the session takes its slot: "provider:NAME" when every lowest-preference
 * MX host ends in an mx-suffix of one providers entry (that entry's limits
 * then apply), else "mx:" and the sorted lowest-preference MX host names
 * joined by "," (or "mx:" and a SHA-256 prefix in hex when that is longer
 * than ROLLUP_KEY_MAX). A domain whose MX set is only itself (or that has no
 * MX: implicit MX) keeps its own name, and so does one whose lookup failed:
 * the key never holds a delivery back.
 *
 * Source IP (README, "Per-source-IP limits"). A virtual MTA with source-ip-max-smtp-out takes,
 * besides its queue's slot, a slot of the key "ip:ADDR" (its smtp-source-host), so that the limit
 * holds for the source IP across every destination, cluster-wide; source-ip-max-connect-rate takes
 * a connect token of that key after it, and source-ip-max-msg-rate message tokens of that key in
 * the statement that claims the queue's messages (mta.claim_many_rated), together with the queue's
 * own. The IP slot is taken first, then the queue's: both are try-locks (a slot is granted or
 * refused at once), so no order of two sessions can deadlock, and a session releases what it holds
 * on every path (session_end). */
#ifndef PGMTA_ROLLUP_H
#define PGMTA_ROLLUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conf;
struct conf_domain;
struct conf_provider;
struct conf_vmta;
struct dns_host;

/* Longest "mx:" key kept as names; longer ones are hashed. */
#define ROLLUP_KEY_MAX 100

/* True when D's key is derived from its MX set (rollup_mx_key): no
 * configured mx-rollup, not opted out, not routed. */
bool rollup_automatic(const struct conf_domain *d);
/* The key of a domain that is not automatic: "rollup:NAME" or DOMAIN (to
 * free). */
char *rollup_static_key(const struct conf_domain *d, const char *domain);
/* The key of DOMAIN from its MX hosts (as resolved, any order), to free,
 * or NULL when the domain keeps its own key. *provider: the matching
 * providers entry of C, or NULL. */
char *rollup_mx_key(const struct conf *c, const char *domain, const struct dns_host *hosts,
                    size_t nhosts, const struct conf_provider **provider);
/* HOST (an MX name) ends in SUFFIX: case-insensitive, leading and trailing
 * dots ignored, on a label boundary (".google.com" and "google.com" both
 * match "aspmx.l.google.com" and "google.com", not "xgoogle.com"). */
bool rollup_suffix_match(const char *host, const char *suffix);
/* D with the limits of provider P (max-smtp-out, max-msg-rate,
 * max-connect-rate, max-msg-per-connection) in OUT; OUT shares D's
 * strings, so it lives no longer than the configuration. */
void rollup_apply_provider(struct conf_domain *out, const struct conf_domain *d,
                           const struct conf_provider *p);

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
