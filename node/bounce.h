/* bounce: classification of failed deliveries into PowerMTA's bounce
 * categories from the enhanced status code and the reply text (table
 * driven), and the text of RFC 3464 delivery status notifications. */
#ifndef PGMTA_BOUNCE_H
#define PGMTA_BOUNCE_H

/* Returns one of: "bad-mailbox", "bad-domain", "inactive-mailbox",
 * "quota-issues", "spam-related", "policy-related", "routing-errors",
 * "protocol-errors", "content-related", "message-expired", "no-answer-from-host",
 * "bad-connection", "other". code may be 0, status and text may be NULL. */
const char *bounce_category(int code, const char *status, const char *text);

#endif
