/*
 * The mailbox: an intrusive multi-producer, single-consumer queue on ck_pr
 * atomics, with a bound and the sleep/wake protocol documented in
 * include/axon/mailbox.h.
 *
 * Structure: a Treiber stack plus a depth counter. A producer checks the
 * depth, pushes its node with one CAS on the top, then counts it. The
 * consumer takes the whole stack with one exchange and pops its private
 * copy without atomics: the newest TAKE_VEC nodes are read into an array
 * (popped from its end, oldest first), an older rest of a long take is
 * reversed in place. Either way pops come out in exact push order, so FIFO
 * holds per producer and across producers. Closing sets the top's low bit:
 * a push's CAS then fails and sees the mark.
 *
 * Why this structure: `make bench BENCH=mailbox_candidates`
 * (bench/xthread_cand.c: the consumer busy-polls, producers on CPU 1, the
 * consumer on CPU 0, this 2-core VM; msgs/s, medians of 3, 2026-11-22;
 * figures move by +-30 % between runs here):
 *
 *   candidate                                     1 -> 1    2 -> 1
 *   axon: this file (bounded stack)                7.3 M     6.8 M
 *   exchange-based intrusive queue (Vyukov)       14.6 M    18.9 M
 *   Treiber stack, ck_stack, no bound             18.1 M    13.7 M
 *   ck_ring, ck's MPSC enqueue (reserve/commit)    4.0 M     0.55 M
 *
 * The bare exchange queue and the bare stack are close; both are about
 * twice as fast as any bounded version we built, because the bound costs a
 * second locked instruction per push (measured: the same code without the
 * count runs at 14-19 M). We tried four ways to pay less: a CAS on the
 * count before the push (7-8 M), an exchange queue with that CAS (7.9 M),
 * the top and the count in one double-width CAS (6-7 M), and the count
 * after the push (this file, 7-10 M across runs). We keep the stack over
 * the exchange queue because of what the bound needs around it: it publishes
 * with one CAS that can also see the closed mark (the exchange queue's
 * exchange cannot refuse, so closing needs a reservation counted before
 * the push), and its consumer never finds a published node it cannot reach
 * (the exchange queue has a window between a producer's exchange and its
 * link). ck_ring's MPSC enqueue makes a producer wait for the commit of the
 * one before it: one preempted producer stalls the others for a time slice.
 * Through a loop (bench xthread_throughput) axon and libuv's mutex +
 * uv_async move about the same, 9-13 M msgs/s (0.8-1.2x across runs).
 *
 * Progress: a push is lock-free (its CAS fails only because another push,
 * a take or the close succeeded); a pop is wait-free. A node is visible to
 * the consumer from the instant its push's CAS succeeds.
 *
 * Layout: the top, the count, the sleep flag and the consumer's state each
 * in their own 128-byte block (LINE): Intel's adjacent-line prefetcher
 * fetches 64-byte lines in pairs, so 64 bytes apart is not apart enough.
 * The sleep block is read by every push but written only when the consumer
 * goes to sleep or wakes, so it stays shared in the producers' caches. The
 * consumer never writes to a node of a short take: a producer reusing the
 * node gets its line back without a transfer from the consumer's cache.
 *
 * Memory ordering: every atomic below says what it orders and what it pairs
 * with. ck's atomics are inline assembly, invisible to ThreadSanitizer:
 * under TSan the hand-over of each node is declared with __tsan_release /
 * __tsan_acquire on the node.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ck_pr.h>

#include "mailbox/mailbox_int.h"


#if defined(__SANITIZE_THREAD__)
#define AX_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define AX_TSAN 1
#endif
#endif

#ifdef AX_TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define TSAN_RELEASE(p) __tsan_release(p)
#define TSAN_ACQUIRE(p) __tsan_acquire(p)
#else
#define TSAN_RELEASE(p) ((void)(p))
#define TSAN_ACQUIRE(p) ((void)(p))
#endif

/* Distance between the parts written by different threads (see Layout). */
#define LINE 128

/* The closed mark: the top's low bit (nodes hold a pointer, so their
 * addresses are even). */
#define CLOSED_BIT ((uintptr_t)1)

static inline bool is_closed(const ax_mbnode_t *top) {
  return (uintptr_t)top & CLOSED_BIT;
}
static inline ax_mbnode_t *strip(ax_mbnode_t *top) {
  return (ax_mbnode_t *)((uintptr_t)top & ~CLOSED_BIT);
}
#define CAPACITY_MAX (UINT32_C(1) << 30)

/* Consumer pops are published in batches of this size when the capacity is
 * large enough for the slack not to matter (see the header's policy). */
#define POP_BATCH 64u
#define POP_BATCH_MIN_CAP 1024u

/* Nodes of a take kept in an array (see vec). */
#define TAKE_VEC 256u

struct ax_mailbox {
  /* the stack: pushed by producers, taken whole by the consumer */
  _Alignas(LINE) ax_mbnode_t *top;
  /* depth: pushes counted minus pops published; may dip below 0 for an
   * instant (a node popped before its producer counted it) */
  _Alignas(LINE) int64_t count;

  /* the sleep block: written rarely, read by every push */
  _Alignas(LINE) unsigned sleeping; /* 1: consumer announced it blocks */
  uint32_t capacity;
  ax_mailbox_wake_fn wake;
  void *wake_ctx;
  uint64_t wakes; /* wake functions called (producers, atomically) */

  /* the consumer's block */
  _Alignas(LINE) ax_mbnode_t *first; /* older part of a long take, FIFO */
  unsigned vlen;                      /* nodes left in vec */
  unsigned unpublished;              /* pops not yet subtracted from depth */
  unsigned pop_batch;
  bool closed; /* the consumer closed it (the top carries the mark) */
  void *alloc; /* what malloc returned (the struct is aligned inside) */
  /* The newest nodes of the last take, newest first (popped from the
   * end). Kept here rather than reversing the list in place so the
   * consumer only reads the nodes: writing each node's link would pull its
   * line over in exclusive state, and the producer that reuses the node
   * would pay a full transfer back. */
  _Alignas(LINE) ax_mbnode_t *vec[TAKE_VEC];
};

void ax_mailbox_options_init(ax_mailbox_options_t *opts) {
  if (opts)
    memset(opts, 0, sizeof *opts);
}

int ax_mailbox_new(const ax_mailbox_options_t *opts, ax_mailbox_t **out) {
  ax_mailbox_options_t defaults;
  ax_mailbox_options_init(&defaults);
  const ax_mailbox_options_t *o = opts ? opts : &defaults;
  if (!out)
    return -EINVAL;
  uint32_t cap = o->capacity ? o->capacity : AX_MAILBOX_DEFAULT_CAPACITY;
  if (cap != AX_MAILBOX_UNBOUNDED && cap > CAPACITY_MAX)
    return -EINVAL;
  /* Over-allocate and align by hand: each part on its own cache line. */
  void *raw = malloc(sizeof(struct ax_mailbox) + LINE);
  if (!raw)
    return -ENOMEM;
  ax_mailbox_t *mb =
      (ax_mailbox_t *)(((uintptr_t)raw + LINE - 1) & ~(uintptr_t)(LINE - 1));
  memset(mb, 0, sizeof *mb);
  mb->alloc = raw;
  mb->capacity = cap;
  mb->wake = o->wake;
  mb->wake_ctx = o->wake_ctx;
  mb->pop_batch =
      cap != AX_MAILBOX_UNBOUNDED && cap < POP_BATCH_MIN_CAP ? 1 : POP_BATCH;
  /* Publishing the mailbox pointer to other threads is the caller's job
   * (thread creation, a mutex...), which orders these plain stores. */
  *out = mb;
  return 0;
}

int ax_mailbox_free(ax_mailbox_t *mb) {
  if (!mb)
    return 0;
  if (!ax_mailbox_empty(mb))
    return -EBUSY;
  free(mb->alloc);
  return 0;
}

/* ---- producers ---------------------------------------------------------- */

/* Room for one more? A plain look at the count (its line is usually in
 * this producer's cache). The push counts itself only after publishing,
 * so concurrent producers can together go past the bound by fewer than
 * their number; see the bound policy in the header. */
static int room(const ax_mailbox_t *mb, unsigned flags) {
  if ((flags & AX_MB_CONTROL) || mb->capacity == AX_MAILBOX_UNBOUNDED)
    return 0;
  int64_t d = (int64_t)ck_pr_load_64((const uint64_t *)&mb->count);
  return d >= (int64_t)mb->capacity ? -EAGAIN : 0;
}

/* The producer's half of the wake protocol: after the push, look at the
 * sleep flag; wake the consumer if this push is the one that claims it. */
static void maybe_wake(ax_mailbox_t *mb, ax_mailbox_wake_fn wake,
                       void *wake_ctx) {
  /* Dekker's store->load pair, producer side: orders the CAS that published
   * the node (our "store") before this load of sleeping. Pairs with the
   * consumer's fas on sleeping followed by ck_pr_fence_atomic_load() in
   * ax_mailbox_sleep_prepare(): one of the two sides sees the other. On x86
   * the locked CAS is already a full barrier; the fence is a compiler one. */
  ck_pr_fence_atomic_load();
  if (!ck_pr_load_uint(&mb->sleeping))
    return;
  /* Claim the sleep: only the producer that swaps 1 -> 0 wakes, so a sleep
   * gets at most one wake. Pairs with the consumer's swaps in
   * sleep_prepare (withdrawal) and sleep_finish. */
  if (ck_pr_fas_uint(&mb->sleeping, 0) != 1)
    return;
  ck_pr_inc_64(&mb->wakes); /* a statistic; orders nothing */
  if (wake)
    wake(wake_ctx);
}

/*
 * Put @node on top of the stack, then count it. Returns -ESHUTDOWN if the
 * mailbox is closed (the node is not queued).
 *
 * Why count after publishing: a locked instruction waits for the stores
 * before it (the caller's message, the link) to reach the cache. Counting
 * first put two such waits in a row, the second one for the top's line,
 * which the consumer takes away at every take — measured: it halved the
 * push rate (bench mailbox_candidates). Published first, the CAS's wait
 * for the node's line and its miss on the top's line overlap, and the
 * count's add finds its line at hand.
 */
static int push_top(ax_mailbox_t *mb, ax_mbnode_t *node) {
  ax_mbnode_t *top = ck_pr_load_ptr(&mb->top); /* a guess; the CAS checks */
  for (;;) {
    if (is_closed(top))
      return -ESHUTDOWN;
    ck_pr_store_ptr(&node->next, top);
    TSAN_RELEASE(node);
    /* Orders the caller's writes to the message and the link above before
     * the CAS that makes the node reachable; pairs with the
     * ck_pr_fence_atomic_load() after the consumer's take. */
    ck_pr_fence_store_atomic();
    /* The linearisation point of the push. On failure @top receives the
     * current top (another push, a take or the close won) and we retry. */
    if (ck_pr_cas_ptr_value(&mb->top, top, node, &top))
      break;
  }
  /* A statistic and the bound's input: orders nothing (the node is already
   * published). Atomic with the consumer's subtraction in publish_pops. */
  ck_pr_inc_64((uint64_t *)&mb->count);
  return 0;
}

int ax_mailbox_push(ax_mailbox_t *mb, ax_mbnode_t *node, unsigned flags) {
  if (!mb || !node || (flags & ~(unsigned)AX_MB_CONTROL))
    return -EINVAL;
  /* Read the wake function before the node is published: once it is, the
   * consumer may pop it and, if nothing else can reach the mailbox, free
   * it; only atomics on the mailbox follow the publication (which is why
   * a mailbox must outlive its producers). */
  ax_mailbox_wake_fn wake = mb->wake;
  void *wake_ctx = mb->wake_ctx;
  int rc = room(mb, flags);
  if (rc == 0)
    rc = push_top(mb, node);
  if (rc == 0)
    maybe_wake(mb, wake, wake_ctx);
  return rc;
}

/* ---- the consumer ------------------------------------------------------- */

/* Subtract the pops made since the last call from the depth. */
static void publish_pops(ax_mailbox_t *mb) {
  if (mb->unpublished) {
    /* Atomic with the producers' add; orders nothing else (the nodes
     * were taken out by the consumer alone). */
    ck_pr_sub_64((uint64_t *)&mb->count, mb->unpublished);
    mb->unpublished = 0;
  }
}

/* Take the whole stack; the newest TAKE_VEC nodes go to vec, an older rest
 * is reversed in place into first. False if the stack was empty. */
static bool take(ax_mailbox_t *mb) {
  /* A plain look first: an empty mailbox costs no RMW on the producers'
   * line (the consumer polls it every loop iteration). */
  if (!strip(ck_pr_load_ptr(&mb->top)))
    return false;
  /* Detaches every pushed node at once. Pairs with the producers' CAS in
   * push_top(); the fence after it orders our reads of the nodes (links and
   * messages) after the take — acquire; a compiler barrier on x86, where
   * the exchange is a full barrier. */
  ax_mbnode_t *n = strip(ck_pr_fas_ptr(
      &mb->top, (ax_mbnode_t *)(mb->closed ? CLOSED_BIT : 0)));
  ax_mbnode_t *fifo = NULL;
  ck_pr_fence_atomic_load();
  unsigned i = 0;
  while (n && i < TAKE_VEC) { /* newest first */
    mb->vec[i++] = n;
    n = ck_pr_load_ptr(&n->next);
  }
  mb->vlen = i;
  while (n) { /* a long take: reverse the older rest in place */
    ax_mbnode_t *next = ck_pr_load_ptr(&n->next);
    TSAN_ACQUIRE(n); /* we write to it: it is ours from the take on */
    n->next = fifo;
    fifo = n;
    n = next;
  }
  mb->first = fifo;
  return i > 0;
}

size_t ax__mailbox_depth_exact(const ax_mailbox_t *mb) {
  /* A snapshot of the count (producers add to it concurrently); orders
   * nothing. */
  int64_t d = (int64_t)ck_pr_load_64((const uint64_t *)&mb->count) -
              (int64_t)mb->unpublished;
  return d > 0 ? (size_t)d : 0;
}

bool ax__mailbox_closed(const ax_mailbox_t *mb) {
  /* A snapshot of the mark; orders nothing (the push that follows sees the
   * mark itself, in its CAS, if a close came in between). */
  return is_closed(ck_pr_load_ptr(&mb->top));
}

ax_mbnode_t *ax_mailbox_pop(ax_mailbox_t *mb) {
  if (!mb->first && !mb->vlen && !take(mb)) {
    /* Empty. Make the depth exact only if it is due anyway or the mailbox
     * is closed (nothing will come: be exact): a consumer that keeps up
     * with its producers finds the mailbox empty after nearly every
     * message, and an atomic on the count's line each time would cost
     * them a cache-line transfer per message. */
    if (mb->unpublished >= mb->pop_batch || mb->closed)
      publish_pops(mb);
    return NULL;
  }
  ax_mbnode_t *node;
  if (mb->first) { /* the oldest part of a long take comes first */
    node = mb->first;
    mb->first = node->next;
  } else {
    node = mb->vec[--mb->vlen];
  }
  TSAN_ACQUIRE(node);
  if (++mb->unpublished >= mb->pop_batch)
    publish_pops(mb);
  return node;
}

bool ax_mailbox_empty(const ax_mailbox_t *mb) {
  /* The top load pairs with the producers' CAS in push_top(). */
  if (mb->first || mb->vlen)
    return false;
  return !strip(ck_pr_load_ptr(&mb->top));
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

bool ax_mailbox_spin(const ax_mailbox_t *mb, uint64_t ns) {
  if (!ax_mailbox_empty(mb))
    return true;
  if (!ns)
    return false;
  uint64_t start = now_ns();
  for (unsigned i = 1;; i++) {
    ck_pr_stall(); /* "pause": yields the core's pipeline to its sibling */
    if (!ax_mailbox_empty(mb))
      return true;
    /* Elapsed, not a deadline: start + ns may wrap. The clock costs more
     * than a look at the top, so read it every 64 looks. */
    if (i % 64 == 0 && now_ns() - start >= ns)
      return false;
  }
}

int ax_mailbox_sleep_prepare(ax_mailbox_t *mb) {
  publish_pops(mb);
  /* Announce the sleep. Dekker's store->load pair, consumer side: the
   * swap plus the fence order this store before the re-check's load of the
   * top. Pairs with the producer's CAS on the top followed by
   * ck_pr_fence_atomic_load() and its load of sleeping in maybe_wake(). */
  ck_pr_fas_uint(&mb->sleeping, 1);
  ck_pr_fence_atomic_load();
  if (ax_mailbox_empty(mb))
    return 0;
  /* Withdraw. If a producer already swapped the flag to 0, its wake is on
   * its way and will make one wait return early: harmless. */
  ck_pr_fas_uint(&mb->sleeping, 0);
  return -EAGAIN;
}

bool ax_mailbox_sleep_finish(ax_mailbox_t *mb) {
  /* Clear the announcement. A 0 here means a producer claimed this sleep
   * (and called, or is calling, the wake function). Pairs with the fas in
   * maybe_wake(). */
  return ck_pr_fas_uint(&mb->sleeping, 0) == 0;
}

void ax_mailbox_close(ax_mailbox_t *mb) {
  if (!mb || mb->closed)
    return;
  mb->closed = true;
  /* Set the mark on the top, keeping the nodes under it. A push is a CAS on
   * the top: each one either landed before this CAS (its node is queued and
   * will be popped) or sees the mark and is refused. Orders nothing else. */
  ax_mbnode_t *top = ck_pr_load_ptr(&mb->top);
  while (!ck_pr_cas_ptr_value(&mb->top, top,
                              (ax_mbnode_t *)((uintptr_t)top | CLOSED_BIT),
                              &top))
    ;
  publish_pops(mb);
}

size_t ax_mailbox_depth(const ax_mailbox_t *mb) {
  if (!mb)
    return 0;
  /* A snapshot; orders nothing. Below 0 for an instant when a node was
   * popped before its producer counted it. */
  int64_t d = (int64_t)ck_pr_load_64((const uint64_t *)&mb->count);
  return d > 0 ? (size_t)d : 0;
}

uint32_t ax_mailbox_capacity(const ax_mailbox_t *mb) {
  return mb ? mb->capacity : 0;
}

uint64_t ax_mailbox_wakes(const ax_mailbox_t *mb) {
  return mb ? ck_pr_load_64(&mb->wakes) : 0; /* a snapshot */
}
