/*
 * bench/xthread_cand.c — the MPSC mailbox candidates, measured without a
 * loop: producers push caller-owned nodes (a window of XT_WINDOW per
 * producer, recycled as in the axon stream), the consumer busy-polls and
 * never sleeps. Plus ck_ring-spin, the no-loop floor of a cross-core round
 * trip for xthread_pingpong_spin.
 *
 *   axon-ring      ck_ring of node pointers with the multi-producer enqueue
 *                  (CAS on p_head, write the slot, wait for the earlier
 *                  producers' commits, publish p_tail; libck 0.7.1 ships it
 *                  as ck_ring_enqueue_mpsc and as the reserve/commit pair
 *                  used here, see push_ring) and the single-consumer dequeue
 *                  (ck_ring_dequeue_mpsc); XT_WINDOW slots. A full ring is a
 *                  retry (counted).
 *   axon-stack     Treiber stack: ck_stack_push_upmc (CAS loop on the head);
 *                  the consumer takes everything at once
 *                  (ck_stack_batch_pop_upmc, an exchange) and reverses the
 *                  batch to restore FIFO.
 *   axon-exchange  Vyukov's intrusive exchange-based MPSC queue on ck_pr
 *                  (the structure axon's mailbox had first; kept here as
 *                  the measured alternative): a push is one exchange on the
 *                  tail plus a link store; no bound.
 *   axon           axon's mailbox as shipped: ax_mailbox_push (bound +
 *                  CAS on the stack's top) and ax_mailbox_pop, default
 *                  capacity.
 *
 * One run per (forked) process: the run's state is file-static.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <axon/mailbox.h>
#include <ck_ring.h>
#include <ck_stack.h>

#include "xthread.h"

#define container_of(p, type, member)                                         \
  ((type *)(void *)((char *)(p)-offsetof(type, member)))

struct vnode { /* a link of axon-exchange's queue */
  struct vnode *next;
};

/* A node fit for every candidate: 32 bytes, two per cache line. */
struct node {
  union {
    ax_mbnode_t mb;
    ck_stack_entry_t st;
    struct vnode vy;
  } link;
  uint64_t seq;
  struct xt_lane *lane;
  uint64_t pad;
};

/* A commit wait is normally a few ns (the other producer is mid-commit on
 * another CPU); if it lasts, that producer is not running: yield soon. */
#define COMMIT_YIELD_EVERY 16u

/* Between two looks at the clock, the consumer takes this many. */
#define CHUNK 65536u

enum cand { RING, STACK, EXCHANGE, AXON };

/* ---- Vyukov's intrusive MPSC queue (axon-exchange) ---------------------- */

struct vyukov {
  _Alignas(XT_CACHELINE) struct vnode *tail; /* producers exchange here */
  _Alignas(XT_CACHELINE) struct vnode *head; /* consumer only */
  _Alignas(XT_CACHELINE) struct vnode stub;
};

static void vy_init(struct vyukov *q) {
  q->stub.next = NULL;
  q->head = q->tail = &q->stub;
}

static void vy_push(struct vyukov *q, struct vnode *n) {
  ck_pr_store_ptr(&n->next, NULL);
  ck_pr_fence_store_atomic(); /* the message before the publication */
  struct vnode *prev = ck_pr_fas_ptr(&q->tail, n);
  ck_pr_fence_atomic_store();
  ck_pr_store_ptr(&prev->next, n); /* link: now the consumer can reach it */
}

/* NULL when empty or when a producer is between its exchange and its link. */
static struct vnode *vy_pop(struct vyukov *q) {
  struct vnode *head = q->head, *next = ck_pr_load_ptr(&head->next);
  ck_pr_fence_load();
  if (head == &q->stub) {
    if (next == NULL)
      return NULL;
    q->head = head = next;
    next = ck_pr_load_ptr(&head->next);
    ck_pr_fence_load();
  }
  if (next != NULL) {
    q->head = next;
    return head;
  }
  if (head != ck_pr_load_ptr(&q->tail))
    return NULL;
  vy_push(q, &q->stub); /* the last node: put the stub behind it */
  next = ck_pr_load_ptr(&head->next);
  ck_pr_fence_load();
  if (next != NULL) {
    q->head = next;
    return head;
  }
  return NULL;
}

static bool vy_empty(struct vyukov *q) {
  return q->head == &q->stub && ck_pr_load_ptr(&q->tail) == &q->stub;
}

static struct {
  enum cand kind;
  int stop; /* the deadline passed: producers stop (they read it per push) */
  struct xt_lane *lanes;
  uint64_t n;
  pthread_barrier_t start;
  /* The shared structures, each on its own lines (ck_ring pads its own
   * producer and consumer indices apart). */
  _Alignas(XT_CACHELINE) struct ck_ring ring;
  struct ck_ring_buffer *slots;
  _Alignas(XT_CACHELINE) struct ck_stack stack;
  _Alignas(XT_CACHELINE) ax_mailbox_t *mb;
  _Alignas(XT_CACHELINE) struct vyukov vy;
} cs;

/* ck_ring's MPSC enqueue, split as ck offers it (reserve, write, commit)
 * so that the wait for our turn can yield: ck_ring_enqueue_mpsc() spins
 * until the producers holding the earlier tickets have committed, and with
 * both producers on one CPU that one may be preempted — each of them then
 * waits a whole time slice for the other, message after message. */
static void push_ring(struct xt_lane *l, struct node *m) {
  unsigned rounds = 0, ticket;
  void **slot;
  while ((slot = ck_ring_enqueue_reserve_mpsc(&cs.ring, cs.slots, &ticket)) ==
         NULL) {
    l->retries++; /* ring full */
    xt_backoff(&rounds, XT_YIELD_EVERY);
  }
  *slot = m;
  /* Earlier tickets first (p_tail is ck_ring's public commit counter; the
   * commit below re-checks it and then publishes our slot). */
  rounds = 0;
  while (ck_pr_load_uint(&cs.ring.p_tail) != ticket)
    xt_backoff(&rounds, COMMIT_YIELD_EVERY);
  ck_ring_enqueue_commit_mpsc(&cs.ring, ticket);
}

static void push(struct xt_lane *l, struct node *m) {
  switch (cs.kind) {
  case RING:
    push_ring(l, m);
    break;
  case STACK:
    ck_stack_push_upmc(&cs.stack, &m->link.st);
    break;
  case EXCHANGE:
    vy_push(&cs.vy, &m->link.vy);
    break;
  case AXON: {
    unsigned rounds = 0;
    int rc;
    while ((rc = ax_mailbox_push(cs.mb, &m->link.mb, 0)) == -EAGAIN) {
      l->retries++; /* at capacity */
      xt_backoff(&rounds, XT_YIELD_EVERY);
    }
    if (rc != 0)
      xt_die("ax_mailbox_push returned %d (%s)", rc, ax_strerror(rc));
    break;
  }
  }
}

static void *producer(void *arg) {
  struct xt_lane *l = arg;
  xt_pin(1);
  struct node *nodes = aligned_alloc(XT_CACHELINE, XT_WINDOW * sizeof *nodes);
  if (nodes == NULL)
    xt_die("out of memory (nodes)");
  memset(nodes, 0, XT_WINDOW * sizeof *nodes); /* fault them in now */
  l->nodes = nodes;
  pthread_barrier_wait(&cs.start);
  for (uint64_t seq = 1; seq <= cs.n; seq++) {
    if (ck_pr_load_int(&cs.stop)) /* the consumer's deadline passed */
      break;
    xt_lane_wait(l, seq);
    struct node *m = &nodes[seq % XT_WINDOW];
    m->seq = seq;
    m->lane = l;
    push(l, m);
    /* On our own line, read by the consumer only after the deadline. */
    ck_pr_store_64(&l->sent, seq);
  }
  ck_pr_fence_store(); /* sent before done; pairs with stop_and_drain() */
  ck_pr_store_int(&l->done, 1);
  return NULL;
}

/* The consumer loops, one per candidate: each takes at least @want nodes
 * (the stack may take a few more: it takes whole batches) and returns how
 * many. xt_lane_take checks the order and may free the node. */
static uint64_t consume_ring(uint64_t want) {
  uint64_t total = want;
  while (total > 0) {
    void *v;
    if (!ck_ring_dequeue_mpsc(&cs.ring, cs.slots, &v)) {
      ck_pr_stall();
      continue;
    }
    struct node *m = v;
    xt_lane_take(m->lane, m->seq);
    total--;
  }
  return want;
}

static uint64_t consume_stack(uint64_t want) {
  uint64_t got = 0;
  while (got < want) {
    ck_stack_entry_t *e = ck_stack_batch_pop_upmc(&cs.stack), *fifo = NULL;
    if (e == NULL) {
      ck_pr_stall();
      continue;
    }
    while (e != NULL) { /* newest first: reverse */
      ck_stack_entry_t *next = e->next;
      e->next = fifo;
      fifo = e;
      e = next;
    }
    for (e = fifo; e != NULL;) {
      struct node *m = container_of(e, struct node, link.st);
      e = e->next; /* before the take: it may free the node */
      xt_lane_take(m->lane, m->seq);
      got++;
    }
  }
  return got;
}

static uint64_t consume_vyukov(uint64_t want) {
  uint64_t total = want;
  while (total > 0) {
    struct vnode *nd = vy_pop(&cs.vy);
    if (nd == NULL) { /* empty, or a producer between its two steps */
      ck_pr_stall();
      continue;
    }
    struct node *m = container_of(nd, struct node, link.vy);
    xt_lane_take(m->lane, m->seq);
    total--;
  }
  return want;
}

static uint64_t consume_exchange(uint64_t want) {
  uint64_t total = want;
  while (total > 0) {
    ax_mbnode_t *nd = ax_mailbox_pop(cs.mb);
    if (nd == NULL) { /* empty, or a producer between its two steps */
      ck_pr_stall();
      continue;
    }
    struct node *m = container_of(nd, struct node, link.mb);
    xt_lane_take(m->lane, m->seq);
    total--;
  }
  return want;
}

static uint64_t consume(uint64_t want) {
  switch (cs.kind) {
  case RING:
    return consume_ring(want);
  case STACK:
    return consume_stack(want);
  case EXCHANGE:
    return consume_vyukov(want);
  case AXON:
    break;
  }
  return consume_exchange(want);
}

/* The deadline passed after @got messages: stop the producers, take what
 * they pushed before they saw it. Returns the final count. */
static uint64_t stop_and_drain(int producers, uint64_t got) {
  ck_pr_store_int(&cs.stop, 1);
  for (;;) {
    int done = 0;
    uint64_t sent = 0;
    for (int i = 0; i < producers; i++)
      done += ck_pr_load_int(&cs.lanes[i].done);
    ck_pr_fence_load(); /* done before sent: pairs with the producer */
    for (int i = 0; i < producers; i++)
      sent += ck_pr_load_64(&cs.lanes[i].sent);
    if (got < sent) /* pushed, so a pop will find them */
      got += consume(sent - got);
    else if (done == producers)
      return got;
    else
      ck_pr_stall();
  }
}

/* Consume @total messages, or stop at @deadline (ns, 0: none) and return
 * how many were taken by then. */
static uint64_t consume_until(int producers, uint64_t total,
                              uint64_t deadline) {
  uint64_t got = 0;
  while (got < total) {
    uint64_t chunk = total - got < CHUNK ? total - got : CHUNK;
    got += consume(chunk);
    if (deadline && got < total && xt_now_ns() >= deadline)
      return stop_and_drain(producers, got);
  }
  return got;
}

static void setup(enum cand kind) {
  cs.kind = kind;
  switch (kind) {
  case RING:
    cs.slots = aligned_alloc(XT_CACHELINE, XT_WINDOW * sizeof *cs.slots);
    if (cs.slots == NULL)
      xt_die("out of memory (ring)");
    memset(cs.slots, 0, XT_WINDOW * sizeof *cs.slots);
    ck_ring_init(&cs.ring, XT_WINDOW);
    break;
  case STACK:
    ck_stack_init(&cs.stack);
    break;
  case EXCHANGE:
    vy_init(&cs.vy);
    break;
  case AXON: {
    int rc = ax_mailbox_new(NULL, &cs.mb);
    if (rc != 0)
      xt_die("ax_mailbox_new returned %d (%s)", rc, ax_strerror(rc));
    break;
  }
  }
}

static void teardown(void) {
  switch (cs.kind) {
  case RING:
    if (ck_ring_size(&cs.ring) != 0)
      xt_die("axon-ring: %u entries left", ck_ring_size(&cs.ring));
    free(cs.slots);
    break;
  case STACK:
    if (!CK_STACK_ISEMPTY(&cs.stack))
      xt_die("axon-stack: entries left");
    break;
  case EXCHANGE:
    if (!vy_empty(&cs.vy))
      xt_die("axon-exchange: queue not empty");
    break;
  case AXON: {
    /* Not ax_mailbox_depth(): pops are published in batches of 64, so a
     * drained mailbox may still report up to 63. */
    if (!ax_mailbox_empty(cs.mb))
      xt_die("axon: mailbox not empty");
    int rc = ax_mailbox_free(cs.mb); /* -EBUSY if a node is left */
    if (rc != 0)
      xt_die("ax_mailbox_free returned %d (%s)", rc, ax_strerror(rc));
    break;
  }
  }
}

static void candidate(enum cand kind, const struct xt_params *p,
                      struct xt_result *r) {
  pthread_t t[XT_MAX_PRODUCERS];
  uint64_t total = p->n * (uint64_t)p->producers;
  xt_pin(0);
  setup(kind);
  cs.lanes = xt_lanes_new(p->producers);
  cs.n = p->n;
  pthread_barrier_init(&cs.start, NULL, (unsigned)p->producers + 1);
  for (int i = 0; i < p->producers; i++)
    xt_thread_start(&t[i], producer, &cs.lanes[i]);
  pthread_barrier_wait(&cs.start);
  uint64_t t0 = xt_now_ns();
  uint64_t deadline = p->deadline_s ? t0 + p->deadline_s * 1000000000u : 0;
  r->messages = consume_until(p->producers, total, deadline);
  r->seconds = (double)(xt_now_ns() - t0) / 1e9;
  r->stopped = r->messages < total;
  for (int i = 0; i < p->producers; i++) {
    struct xt_lane *l = &cs.lanes[i];
    xt_thread_join(t[i]);
    uint64_t want = r->stopped ? l->sent : p->n;
    if (l->expected != want + 1)
      xt_die("producer %d: %llu of %llu messages", i,
             (unsigned long long)l->expected - 1, (unsigned long long)want);
    r->retries += l->retries;
    r->window_full += l->window_full;
    free(l->nodes);
  }
  teardown();
  pthread_barrier_destroy(&cs.start);
  free(cs.lanes);
}

void xt_cand_ring(const struct xt_params *p, struct xt_result *r) {
  candidate(RING, p, r);
}

void xt_cand_stack(const struct xt_params *p, struct xt_result *r) {
  candidate(STACK, p, r);
}

void xt_cand_axon(const struct xt_params *p, struct xt_result *r) {
  candidate(AXON, p, r);
}

void xt_cand_exchange(const struct xt_params *p, struct xt_result *r) {
  candidate(EXCHANGE, p, r);
}

/* ------------------------------------------------------------------------ */
/* ck_ring-spin: the round-trip floor                                        */
/* ------------------------------------------------------------------------ */

#define PP_SLOTS 64

/* Two SPSC rings, A→B and B→A; the value is the hop count. */
static struct {
  _Alignas(XT_CACHELINE) struct ck_ring ab;
  _Alignas(XT_CACHELINE) struct ck_ring ba;
  _Alignas(XT_CACHELINE) struct ck_ring_buffer ab_slots[PP_SLOTS];
  _Alignas(XT_CACHELINE) struct ck_ring_buffer ba_slots[PP_SLOTS];
  uint64_t n;
  pthread_barrier_t start;
} rp;

static uint64_t spin_take(struct ck_ring *ring, struct ck_ring_buffer *slots) {
  void *v;
  while (!ck_ring_dequeue_spsc(ring, slots, &v))
    ck_pr_stall();
  return (uint64_t)(uintptr_t)v;
}

static void spin_give(struct ck_ring *ring, struct ck_ring_buffer *slots,
                      uint64_t v) {
  if (!ck_ring_enqueue_spsc(ring, slots, (void *)(uintptr_t)v))
    xt_die("ck_ring-spin: ring full with one value in flight");
}

static void *ring_b(void *arg) {
  (void)arg;
  xt_pin(1);
  pthread_barrier_wait(&rp.start);
  for (uint64_t rt = 0; rt < rp.n; rt++) {
    uint64_t v = spin_take(&rp.ab, rp.ab_slots);
    if (v != 2 * rt + 1)
      xt_die("ck_ring-spin: B got hop %llu", (unsigned long long)v);
    spin_give(&rp.ba, rp.ba_slots, v + 1);
  }
  return NULL;
}

void xt_ckring_pingpong(const struct xt_params *p, struct xt_result *r) {
  pthread_t tb;
  xt_pin(0);
  ck_ring_init(&rp.ab, PP_SLOTS);
  ck_ring_init(&rp.ba, PP_SLOTS);
  rp.n = p->n;
  pthread_barrier_init(&rp.start, NULL, 2);
  xt_thread_start(&tb, ring_b, NULL);
  pthread_barrier_wait(&rp.start);
  uint64_t t0 = xt_now_ns();
  for (uint64_t rt = 0; rt < rp.n; rt++) {
    spin_give(&rp.ab, rp.ab_slots, 2 * rt + 1);
    uint64_t v = spin_take(&rp.ba, rp.ba_slots);
    if (v != 2 * rt + 2)
      xt_die("ck_ring-spin: A got hop %llu", (unsigned long long)v);
  }
  r->seconds = (double)(xt_now_ns() - t0) / 1e9;
  xt_thread_join(tb);
  pthread_barrier_destroy(&rp.start);
}
