/*
 * The mailbox's two-step push, for layers above that must know a push will
 * succeed before they commit to it (a source handoff removes the source from
 * its loop only once the destination has room). Not public: a reservation
 * must be committed, always, and soon — the consumer's close waits for it.
 */
#ifndef AXON_MAILBOX_INT_H
#define AXON_MAILBOX_INT_H

#include <axon/mailbox.h>

/* Take room for one node, as ax_mailbox_push() would (same errors: -EAGAIN,
 * -ESHUTDOWN). After a 0, ax__mailbox_commit() must follow. Thread-safe. */
int ax__mailbox_reserve(ax_mailbox_t *mb, unsigned flags);

/* Publish @node into the room reserved; never fails. Thread-safe. */
void ax__mailbox_commit(ax_mailbox_t *mb, ax_mbnode_t *node);

/* Publish the consumer's batched pops now, so the depth is exact. Consumer
 * only; one atomic on the count's line (the loop calls it once per drain,
 * not once per pop). */
void ax__mailbox_settle(ax_mailbox_t *mb);

#endif /* AXON_MAILBOX_INT_H */
