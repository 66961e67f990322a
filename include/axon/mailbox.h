/*
 * axon — the mailbox: a lock-free multi-producer, single-consumer queue of
 * intrusive nodes with a sleep/wake protocol. Built on Concurrency Kit only;
 * it knows nothing of loops. Every loop owns one (ax_loop_post() and source
 * handoffs travel through it); the actor layer builds on it too.
 *
 * Nodes: the caller embeds an ax_mbnode_t in its own message and owns the
 * memory. A push never allocates and never blocks. Between a successful push
 * and the pop that returns it, the node belongs to the mailbox: do not touch
 * it. After the pop it is the consumer's again (free it, reuse it, push it
 * anywhere).
 *
 * Order: FIFO per producer thread. Pushes from different threads interleave
 * in the order of their atomic publication (a CAS on the top of a stack
 * that the consumer takes whole and pops in push order).
 *
 * Threads: ax_mailbox_push(), ax_mailbox_depth(), ax_mailbox_capacity() and
 * ax_mailbox_wakes() are thread-safe. Everything else is for the single consumer thread (or for
 * whoever owns the mailbox when no other thread can reach it: new, free).
 *
 * Bound policy: a mailbox has a capacity (options.capacity). A push that
 * finds the depth at the capacity returns -EAGAIN and leaves the node with
 * the caller: nothing is dropped silently, the producer decides (retry
 * later, slow down, report). A push flagged AX_MB_CONTROL is never refused
 * for capacity: control messages (source handoffs, stop requests, exit
 * notices) always get through and may take the depth past the capacity.
 * The check and the push are two steps (an atomic check-and-count per push
 * halved the push rate: see src/mailbox/mailbox.c), so producers that pass
 * the check together can go past the capacity by fewer than their number —
 * with one producer the bound is exact. The depth counts nodes pushed and
 * not yet popped; with a capacity of 1024 or more the consumer publishes its
 * pops in batches of 64, so a producer may see the mailbox full up to 63
 * nodes early and ax_mailbox_depth() may count up to 63 nodes already
 * popped; it is exact again after ax_mailbox_sleep_prepare() or
 * ax_mailbox_close(). Below a capacity of 1024 every pop is published at
 * once.
 *
 * Wake protocol (why a sleeping consumer never misses a message, and why a
 * busy one costs producers no system call):
 *   consumer: drain until empty; optionally spin for a bounded time
 *             (ax_mailbox_spin); announce sleep (sleeping = 1, full fence),
 *             re-check the queue (ax_mailbox_sleep_prepare): if a message
 *             slipped in, withdraw and drain again; else block on its wake
 *             source; on waking, ax_mailbox_sleep_finish().
 *   producer: publish the node (a CAS on the top, a full fence), then read
 *             sleeping; only if it is 1 and this producer is the one
 *             that swaps it back to 0 does it call the wake function.
 * Each side stores then loads with a full fence between (Dekker's pattern),
 * so at least one of them sees the other: either the consumer's re-check
 * sees the node or the producer sees the announcement. At most one wake is
 * sent per announced sleep. The protocol is modelled in tests/model/
 * (Promela, checked with spin in `make test`).
 *
 * Progress: push is lock-free (its CAS fails only when another push, the
 * consumer's take or the close succeeded in between); pop is wait-free. A
 * node can be popped from the instant its push's CAS succeeds: pop returns
 * NULL only when the mailbox is empty.
 *
 * Lifetime: a push touches the mailbox (atomically) after publishing its
 * node, so the mailbox must outlive every producer that may still push:
 * close it, and free it only once they are known to be done (joined, or
 * told to stop through some other channel).
 *
 * Errors: 0 or a negative errno (see axon/error.h).
 */
#ifndef AXON_MAILBOX_H
#define AXON_MAILBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <axon/error.h>
#include <axon/version.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Intrusive link: embed one in each message. Fields are private. */
typedef struct ax_mbnode {
  struct ax_mbnode *next;
} ax_mbnode_t;

typedef struct ax_mailbox ax_mailbox_t;

/** Capacity used when the option is 0. */
#define AX_MAILBOX_DEFAULT_CAPACITY (1u << 20)
/** Capacity that never refuses a push (memory is the only bound). */
#define AX_MAILBOX_UNBOUNDED UINT32_MAX

/** Push flags. */
enum {
  /** A control message: never refused for capacity (see the bound policy). */
  AX_MB_CONTROL = 1u << 0
};

/**
 * Called by the producer whose push finds the consumer asleep: it must make
 * the consumer's blocking wait return (write an eventfd, signal a condition
 * variable...). Runs on the producer's thread, at most once per sleep.
 */
typedef void (*ax_mailbox_wake_fn)(void *ctx);

typedef struct ax_mailbox_options {
  /** Most nodes queued at once (see the bound policy). 0: the default,
   *  AX_MAILBOX_DEFAULT_CAPACITY; at most 2^30 (room is kept above it for
   *  control messages); AX_MAILBOX_UNBOUNDED: no bound but memory. */
  uint32_t capacity;
  /** Wake function and its argument; NULL if the consumer never sleeps
   *  through ax_mailbox_sleep_prepare(). */
  ax_mailbox_wake_fn wake;
  void *wake_ctx;
} ax_mailbox_options_t;

/** ax_mailbox_options_init() - fill @opts with the defaults (all zero). */
AX_API void ax_mailbox_options_init(ax_mailbox_options_t *opts);

/**
 * ax_mailbox_new() - create an empty mailbox.
 * @opts: NULL for the defaults; read during the call only.
 * @out:  receives the mailbox; untouched on failure.
 * Returns 0, -EINVAL (NULL @out, capacity above 2^30) or -ENOMEM. Not
 * thread-safe (nobody else can see the mailbox yet).
 */
AX_API int ax_mailbox_new(const ax_mailbox_options_t *opts,
                          ax_mailbox_t **out);

/**
 * ax_mailbox_free() - release a mailbox. It must be empty and no producer
 * may use it any more: returns -EBUSY (and frees nothing) if a node is still
 * queued — pop them first, they are yours. NULL is a no-op (returns 0).
 */
AX_API int ax_mailbox_free(ax_mailbox_t *mb);

/**
 * ax_mailbox_push() - append @node. Thread-safe; never blocks; never
 * allocates.
 * @flags: 0 or AX_MB_CONTROL.
 * Returns 0 (the node now belongs to the mailbox until popped), -EAGAIN
 * (full; the node is still the caller's), -ESHUTDOWN (closed; the node is
 * still the caller's) or -EINVAL (NULL argument, unknown flag).
 * If the consumer announced sleep, this call runs the wake function after
 * publishing the node.
 */
AX_API int ax_mailbox_push(ax_mailbox_t *mb, ax_mbnode_t *node,
                           unsigned flags);

/**
 * ax_mailbox_pop() - take the oldest node. Consumer only.
 * Returns the node, or NULL if the mailbox is empty.
 */
AX_API ax_mbnode_t *ax_mailbox_pop(ax_mailbox_t *mb);

/**
 * ax_mailbox_empty() - true if no pushed node is waiting. Consumer only. A
 * false answer means the next pop returns a node.
 */
AX_API bool ax_mailbox_empty(const ax_mailbox_t *mb);

/**
 * ax_mailbox_spin() - busy-wait up to @ns nanoseconds for a message.
 * Consumer only. Returns true as soon as the mailbox is not empty, false
 * after @ns. Meant for the moment before sleeping: a message that arrives
 * within the spin costs no wake (no system call on either side).
 */
AX_API bool ax_mailbox_spin(const ax_mailbox_t *mb, uint64_t ns);

/**
 * ax_mailbox_sleep_prepare() - announce that the consumer is about to block.
 * Consumer only. Returns 0: the mailbox was empty after the announcement, so
 * block now — any later push calls the wake function; or -EAGAIN: a message
 * is there (the announcement is withdrawn), do not block, drain. After a 0,
 * call ax_mailbox_sleep_finish() once the blocking wait returns.
 */
AX_API int ax_mailbox_sleep_prepare(ax_mailbox_t *mb);

/**
 * ax_mailbox_sleep_finish() - the consumer is awake again. Consumer only.
 * Returns true if a producer sent a wake for this sleep (its wake may still
 * be in flight: the consumer's wake source may fire once more, harmlessly).
 */
AX_API bool ax_mailbox_sleep_finish(ax_mailbox_t *mb);

/**
 * ax_mailbox_close() - refuse every later push with -ESHUTDOWN. Consumer
 * only. Nodes already queued stay and can still be popped. Pushes racing
 * with the close either get in (and are popped) or are refused; none is
 * lost. The depth is exact afterwards.
 */
AX_API void ax_mailbox_close(ax_mailbox_t *mb);

/**
 * ax_mailbox_depth() - nodes pushed and not yet popped (see the bound policy
 * for the batching slack). Thread-safe; a snapshot.
 */
AX_API size_t ax_mailbox_depth(const ax_mailbox_t *mb);

/** ax_mailbox_capacity() - the capacity in force. Thread-safe. */
AX_API uint32_t ax_mailbox_capacity(const ax_mailbox_t *mb);

/**
 * ax_mailbox_wakes() - wake functions called so far (one per sleep that a
 * producer interrupted). Thread-safe; a snapshot.
 */
AX_API uint64_t ax_mailbox_wakes(const ax_mailbox_t *mb);

#ifdef __cplusplus
}
#endif

#endif /* AXON_MAILBOX_H */
