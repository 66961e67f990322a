/*
 * Internal mailbox calls for the loop (src/loop/post.c). Not public.
 */
#ifndef AXON_MAILBOX_INT_H
#define AXON_MAILBOX_INT_H

#include <axon/mailbox.h>

/* Closed (ax_mailbox_close)? Thread-safe; a snapshot. A source handoff asks
 * before it removes the source from its loop, so that a refusal leaves the
 * source where it was. */
bool ax__mailbox_closed(const ax_mailbox_t *mb);

/* The depth as the consumer knows it: exact, counting the pops it has not
 * published yet. Consumer only (ax_loop_info runs on the loop's thread). */
size_t ax__mailbox_depth_exact(const ax_mailbox_t *mb);

#endif /* AXON_MAILBOX_INT_H */
