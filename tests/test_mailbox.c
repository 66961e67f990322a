/*
 * The raw mailbox (axon/mailbox.h), without a loop.
 *
 * Single thread, against the documented contract: argument errors, option
 * defaults, the bound policy (exactly `capacity` pushes succeed on a fresh
 * mailbox, then -EAGAIN with the node untouched; AX_MB_CONTROL passes past
 * the capacity; a model-checked random walk of pushes and pops for small
 * capacities — exact — and for capacities of 1024 or more — within the
 * documented 63-node batching slack), FIFO order, pop/empty on an empty
 * mailbox, close (-ESHUTDOWN for later pushes, queued nodes still pop),
 * free (-EBUSY while not empty), the wake protocol (sleep_prepare,
 * one wake per announced sleep, sleep_finish, ax_mailbox_wakes) and spin
 * (including a push from another thread ending a spin of UINT64_MAX ns).
 *
 * Threads: 4 producers into one consumer with node recycling (each
 * producer owns a small pool; the consumer sends every node back through a
 * per-producer mailbox), both sides sleeping on an eventfd through the wake
 * protocol, with and without a bounded spin: nothing lost, duplicated or
 * reordered per producer, every node back, no lost wakeup. A capacity-64
 * stress with retrying producers and interleaved control messages: all
 * delivered, and the depth never seen above capacity + controls in flight.
 * A ping-pong of one node between two threads that both sleep between
 * visits (the sharpest lost-wakeup test at this level). A close race:
 * every push either returned 0 and was popped, or returned -ESHUTDOWN.
 *
 * Bounded: every threaded test runs under the guard (a hang fails the
 * binary with a message); a consumer that sleeps while a message is queued
 * and gets no wake within seconds counts a lost wakeup instead of hanging.
 * No assertion depends on timing.
 */
#include "testutil.h"

#include <poll.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/eventfd.h>

#ifndef AX_SAN
#define AX_SAN ""
#endif

#define container_of(p, T, m) ((T *)(void *)((char *)(p)-offsetof(T, m)))

/*
 * Work scaling: the sanitizer builds run the threaded stresses with fewer
 * messages — half under ASan+UBSan, a quarter under ThreadSanitizer — to
 * stay well within their time budget (~40 s plain, ~90 s TSan for the
 * binary; measured here: 7-11 s plain, 3-7 s ASan, 8-11 s TSan).
 */
static uint64_t scaled(uint64_t n) {
  if (strcmp(AX_SAN, "thread") == 0)
    return n / 4;
  if (strcmp(AX_SAN, "address") == 0)
    return n / 2;
  return n;
}

/* A numbered message. */
typedef struct msg {
  ax_mbnode_t node;
  uint32_t prod;
  uint32_t ctl; /* pushed with AX_MB_CONTROL */
  uint64_t seq;
} msg_t;

static msg_t *msg_of(ax_mbnode_t *n) { return container_of(n, msg_t, node); }

static ax_mailbox_t *mb_new(uint32_t capacity) {
  ax_mailbox_options_t o;
  ax_mailbox_options_init(&o);
  o.capacity = capacity;
  ax_mailbox_t *mb = NULL;
  assert_int_equal(ax_mailbox_new(&o, &mb), 0);
  assert_non_null(mb);
  return mb;
}

/* ---- arguments and options ---------------------------------------------- */

static void test_args_and_options(void **state) {
  (void)state;
  ax_mailbox_options_t o;
  memset(&o, 0xa5, sizeof o);
  ax_mailbox_options_init(&o);
  assert_int_equal(o.capacity, 0);
  assert_null(o.wake);
  assert_null(o.wake_ctx);

  assert_int_equal(ax_mailbox_new(NULL, NULL), -EINVAL);
  assert_int_equal(ax_mailbox_new(&o, NULL), -EINVAL);

  /* NULL options: the defaults. */
  ax_mailbox_t *mb = NULL;
  assert_int_equal(ax_mailbox_new(NULL, &mb), 0);
  assert_non_null(mb);
  assert_int_equal(ax_mailbox_capacity(mb), AX_MAILBOX_DEFAULT_CAPACITY);
  assert_int_equal(ax_mailbox_depth(mb), 0);
  assert_int_equal(ax_mailbox_wakes(mb), 0);
  assert_true(ax_mailbox_empty(mb));
  assert_null(ax_mailbox_pop(mb));

  /* Bad pushes change nothing. */
  msg_t m = {0};
  assert_int_equal(ax_mailbox_push(NULL, &m.node, 0), -EINVAL);
  assert_int_equal(ax_mailbox_push(mb, NULL, 0), -EINVAL);
  assert_int_equal(ax_mailbox_push(mb, &m.node, 1u << 1), -EINVAL);
  assert_int_equal(ax_mailbox_push(mb, &m.node, ~0u), -EINVAL);
  assert_int_equal(ax_mailbox_push(mb, &m.node, AX_MB_CONTROL | 1u << 7),
                   -EINVAL);
  assert_int_equal(ax_mailbox_depth(mb), 0);
  assert_true(ax_mailbox_empty(mb));
  assert_null(ax_mailbox_pop(mb));
  assert_int_equal(ax_mailbox_free(mb), 0);
  assert_int_equal(ax_mailbox_free(NULL), 0);

  /* Capacity option: 0 is the default, others are kept as given. */
  static const uint32_t caps[] = {1, 2, 63, 64, 1000, 1023, 1024, 65536,
                                  AX_MAILBOX_UNBOUNDED};
  mb = mb_new(0);
  assert_int_equal(ax_mailbox_capacity(mb), AX_MAILBOX_DEFAULT_CAPACITY);
  assert_int_equal(ax_mailbox_free(mb), 0);
  for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
    mb = mb_new(caps[i]);
    assert_int_equal(ax_mailbox_capacity(mb), caps[i]);
    assert_int_equal(ax_mailbox_free(mb), 0);
  }

  /* Capacities above 2^30 (other than UNBOUNDED) are refused, @out left
   * untouched; 2^30 itself is accepted. */
  static const uint32_t too_big[] = {(1u << 30) + 1, 1u << 31,
                                     AX_MAILBOX_UNBOUNDED - 1};
  for (size_t i = 0; i < sizeof too_big / sizeof too_big[0]; i++) {
    o.capacity = too_big[i];
    ax_mailbox_t *sentinel = (ax_mailbox_t *)&o;
    mb = sentinel;
    assert_int_equal(ax_mailbox_new(&o, &mb), -EINVAL);
    assert_ptr_equal(mb, sentinel);
  }
  o.capacity = 1u << 30;
  mb = NULL;
  int rc = ax_mailbox_new(&o, &mb);
  if (rc != 0)
    fail_msg("capacity 2^30 refused (%s); the header refuses only above 2^30",
             ax_err_name(rc));
  assert_int_equal(ax_mailbox_capacity(mb), 1u << 30);
  assert_int_equal(ax_mailbox_free(mb), 0);
}

/* ---- the bound ------------------------------------------------------------ */

/* Fill a fresh mailbox of capacity @cap (NULL options if @cap is 0): exactly
 * cap pushes succeed, the next is refused with the node untouched, control
 * messages still get in; pops then make room (exactly for small capacities,
 * within the 63-node slack from 1024 on). */
static void fill_once(uint32_t cap) {
  ax_mailbox_t *mb = NULL;
  if (cap == 0) {
    assert_int_equal(ax_mailbox_new(NULL, &mb), 0);
    cap = AX_MAILBOX_DEFAULT_CAPACITY;
  } else {
    mb = mb_new(cap);
  }
  msg_t *m = calloc((size_t)cap + 200, sizeof *m);
  assert_non_null(m);
  for (uint32_t i = 0; i < cap; i++) {
    m[i].seq = i;
    int rc = ax_mailbox_push(mb, &m[i].node, 0);
    if (rc != 0)
      fail_msg("capacity %u: push %u returned %s", cap, i, ax_err_name(rc));
    if (cap <= 4096 || i + 1 == cap)
      assert_int_equal(ax_mailbox_depth(mb), (size_t)i + 1);
  }
  assert_false(ax_mailbox_empty(mb));

  /* Full: refused, node untouched, depth unchanged. */
  msg_t extra, copy;
  memset(&extra, 0x5a, sizeof extra);
  memcpy(&copy, &extra, sizeof copy);
  assert_int_equal(ax_mailbox_push(mb, &extra.node, 0), -EAGAIN);
  assert_memory_equal(&extra, &copy, sizeof extra);
  assert_int_equal(ax_mailbox_push(mb, &extra.node, 0), -EAGAIN);
  assert_memory_equal(&extra, &copy, sizeof extra);
  assert_int_equal(ax_mailbox_depth(mb), cap);

  /* Control messages pass the capacity; plain ones are still refused. */
  msg_t *ctl = &m[cap];
  for (int i = 0; i < 3; i++) {
    ctl[i].seq = cap + (uint64_t)i;
    assert_int_equal(ax_mailbox_push(mb, &ctl[i].node, AX_MB_CONTROL), 0);
    assert_int_equal(ax_mailbox_depth(mb), (size_t)cap + 1 + (size_t)i);
  }
  assert_int_equal(ax_mailbox_push(mb, &extra.node, 0), -EAGAIN);
  assert_memory_equal(&extra, &copy, sizeof extra);

  uint64_t next = 0; /* FIFO: next seq to pop */
  if (cap < 1024) {
    /* No batching: room shows at once. Depth cap + 3: three pops reach
     * cap, the fourth makes room for exactly one. */
    for (int i = 0; i < 3; i++) {
      ax_mbnode_t *n = ax_mailbox_pop(mb);
      assert_non_null(n);
      assert_int_equal(msg_of(n)->seq, next++);
      assert_int_equal(ax_mailbox_depth(mb), (size_t)cap + 2 - (size_t)i);
      assert_int_equal(ax_mailbox_push(mb, &extra.node, 0), -EAGAIN);
    }
    ax_mbnode_t *n = ax_mailbox_pop(mb);
    assert_non_null(n);
    assert_int_equal(msg_of(n)->seq, next++);
    assert_int_equal(ax_mailbox_depth(mb), cap - 1);
    extra.seq = cap + 3;
    assert_int_equal(ax_mailbox_push(mb, &extra.node, 0), 0);
    assert_int_equal(ax_mailbox_depth(mb), cap);
    msg_t extra2 = {.seq = 999999999};
    assert_int_equal(ax_mailbox_push(mb, &extra2.node, 0), -EAGAIN);
  } else {
    /* Batched pops: after 3 + 64 pops the true depth is cap - 64; at least
     * one push must succeed (63 slack at most), at most 64. */
    for (int i = 0; i < 3 + 64; i++) {
      ax_mbnode_t *n = ax_mailbox_pop(mb);
      assert_non_null(n);
      assert_int_equal(msg_of(n)->seq, next++);
      size_t d = ax_mailbox_depth(mb), truth = (size_t)cap + 2 - (size_t)i;
      if (d < truth || d > truth + 63)
        fail_msg("capacity %u: depth %zu, true depth %zu", cap, d, truth);
    }
    int ok = 0;
    msg_t *more = &m[cap + 3];
    for (int i = 0; i < 100; i++) {
      more[i].seq = cap + 3 + (uint64_t)i;
      int rc = ax_mailbox_push(mb, &more[i].node, 0);
      if (rc == -EAGAIN)
        break;
      assert_int_equal(rc, 0);
      ok++;
    }
    if (ok < 1 || ok > 64)
      fail_msg("capacity %u: %d pushes after 64 pops (expected 1..64)", cap,
               ok);
    extra.seq = 0;
  }

  /* Drain everything in FIFO order. */
  ax_mbnode_t *n;
  while ((n = ax_mailbox_pop(mb)) != NULL) {
    if (msg_of(n)->seq != next)
      fail_msg("capacity %u: popped seq %llu, expected %llu", cap,
               (unsigned long long)msg_of(n)->seq, (unsigned long long)next);
    next++;
  }
  assert_true(ax_mailbox_empty(mb));
  assert_int_equal(ax_mailbox_free(mb), 0);
  free(m);
}

static void test_capacity_fill(void **state) {
  (void)state;
  static const uint32_t caps[] = {1, 2, 3, 5, 64, 1000, 1023, 1024, 1025,
                                  5000};
  for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
    fill_once(caps[i]);
  fill_once(0); /* the default: 1,048,576 */
}

/*
 * Random walk of pushes (some AX_MB_CONTROL) and pops against a model
 * queue. Below 1024 the bound is exact: a plain push succeeds iff the true
 * depth is below the capacity, and depth() is the true depth. From 1024 on,
 * up to 63 unpublished pops may make the mailbox look fuller: a plain push
 * must succeed below cap - 63, must fail at cap or above, and depth() lies
 * in [true, true + 63].
 */
static void model_walk(uint32_t cap, long ops, uint64_t seed) {
  ax_mailbox_t *mb = mb_new(cap);
  size_t pool_n = (size_t)cap * 2 + 2048;
  msg_t *pool = calloc(pool_n, sizeof *pool);
  msg_t **freel = malloc(pool_n * sizeof *freel);
  msg_t **q = malloc(pool_n * sizeof *q); /* model: ring of queued nodes */
  assert_non_null(pool);
  assert_non_null(freel);
  assert_non_null(q);
  size_t nfree = pool_n, qh = 0, qn = 0;
  for (size_t i = 0; i < pool_n; i++)
    freel[i] = &pool[i];
  bool batched = cap >= 1024;
  uint64_t s = seed, seq = 0;
  long refused = 0, accepted = 0, controls = 0;
  for (long op = 0; op < ops; op++) {
    /* Alternate push-heavy and pop-heavy phases so every capacity is hit. */
    long phase_len = (long)cap * 3 + 64;
    bool push_heavy = (op / phase_len) % 2 == 0;
    uint64_t r = xorshift(&s) % 100;
    bool do_push = push_heavy ? r < 70 : r < 30;
    if (nfree == 0)
      do_push = false;
    if (do_push) {
      bool ctl = xorshift(&s) % 16 == 0;
      msg_t *m = freel[nfree - 1];
      m->seq = seq;
      int rc = ax_mailbox_push(mb, &m->node, ctl ? AX_MB_CONTROL : 0);
      bool must_ok = ctl || qn + (batched ? 63 : 0) < cap;
      bool must_fail = !ctl && qn >= cap;
      if (rc == 0) {
        if (must_fail)
          fail_msg("cap %u op %ld: push accepted at true depth %zu", cap, op,
                   qn);
        nfree--;
        q[(qh + qn) % pool_n] = m;
        qn++;
        seq++;
        accepted++;
        controls += ctl;
      } else if (rc == -EAGAIN) {
        if (must_ok)
          fail_msg("cap %u op %ld: push refused at true depth %zu%s", cap, op,
                   qn, ctl ? " (control)" : "");
        refused++;
      } else {
        fail_msg("cap %u op %ld: push returned %s", cap, op, ax_err_name(rc));
      }
    } else {
      ax_mbnode_t *n = ax_mailbox_pop(mb);
      if (qn == 0) {
        if (n != NULL)
          fail_msg("cap %u op %ld: pop returned a node from an empty queue",
                   cap, op);
        assert_true(ax_mailbox_empty(mb));
      } else {
        if (n != &q[qh]->node)
          fail_msg("cap %u op %ld: pop returned %p, expected seq %llu", cap,
                   op, (void *)n, (unsigned long long)q[qh]->seq);
        freel[nfree++] = q[qh];
        qh = (qh + 1) % pool_n;
        qn--;
      }
    }
    size_t d = ax_mailbox_depth(mb);
    if (d < qn || d > qn + (batched ? 63 : 0))
      fail_msg("cap %u op %ld: depth() %zu, true depth %zu", cap, op, d, qn);
    if (ax_mailbox_empty(mb) != (qn == 0))
      fail_msg("cap %u op %ld: empty() %d with %zu queued", cap, op,
               ax_mailbox_empty(mb), qn);
  }
  /* Every capacity must have been reached and exceeded by controls. */
  if (refused == 0 || controls == 0)
    fail_msg("cap %u: walk never filled the mailbox (%ld refused, %ld "
             "controls)",
             cap, refused, controls);
  while (qn > 0) {
    assert_ptr_equal(ax_mailbox_pop(mb), &q[qh]->node);
    qh = (qh + 1) % pool_n;
    qn--;
  }
  assert_null(ax_mailbox_pop(mb));
  assert_true(ax_mailbox_empty(mb));
  assert_int_equal(ax_mailbox_free(mb), 0);
  free(pool);
  free(freel);
  free(q);
  (void)accepted;
}

static void test_capacity_model(void **state) {
  (void)state;
  static const uint32_t caps[] = {1, 2, 3, 7, 64, 1023, 1024, 1500, 4096};
  for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++)
    model_walk(caps[i], 200000, 0x9e3779b97f4a7c15ull + i);
}

/* ---- FIFO, empty, close, free ---------------------------------------------- */

static void test_fifo(void **state) {
  (void)state;
  enum { N = 20000 };
  ax_mailbox_t *mb = mb_new(AX_MAILBOX_UNBOUNDED);
  msg_t *m = calloc(N, sizeof *m);
  assert_non_null(m);
  /* All in, all out. */
  for (int i = 0; i < N; i++) {
    m[i].seq = (uint64_t)i;
    assert_int_equal(ax_mailbox_push(mb, &m[i].node, i % 7 ? 0 : AX_MB_CONTROL),
                     0);
  }
  assert_int_equal(ax_mailbox_depth(mb), N);
  for (int i = 0; i < N; i++) {
    ax_mbnode_t *n = ax_mailbox_pop(mb);
    assert_ptr_equal(n, &m[i].node);
    assert_int_equal(msg_of(n)->seq, (uint64_t)i);
  }
  assert_null(ax_mailbox_pop(mb));
  assert_true(ax_mailbox_empty(mb));
  /* Interleaved: push two, pop one; nodes reused after their pop. */
  uint64_t s = 12345, in = 0, out = 0;
  int head = 0, tail = 0; /* ring over m[] */
  for (int k = 0; k < 200000; k++) {
    bool push = (xorshift(&s) % 3 != 0) && (tail - head) < N;
    if (push) {
      msg_t *x = &m[tail % N];
      x->seq = in++;
      assert_int_equal(ax_mailbox_push(mb, &x->node, 0), 0);
      tail++;
    } else {
      ax_mbnode_t *n = ax_mailbox_pop(mb);
      if (head == tail) {
        assert_null(n);
        continue;
      }
      assert_ptr_equal(n, &m[head % N].node);
      assert_int_equal(msg_of(n)->seq, out++);
      head++;
    }
  }
  while (head < tail) {
    ax_mbnode_t *n = ax_mailbox_pop(mb);
    assert_non_null(n);
    assert_int_equal(msg_of(n)->seq, out++);
    head++;
  }
  assert_int_equal(in, out);
  assert_null(ax_mailbox_pop(mb));
  assert_true(ax_mailbox_empty(mb));
  assert_int_equal(ax_mailbox_free(mb), 0);
  free(m);
}

static void test_empty(void **state) {
  (void)state;
  ax_mailbox_t *mb = mb_new(8);
  msg_t a = {.seq = 1}, b = {.seq = 2};
  for (int round = 0; round < 3; round++) {
    assert_true(ax_mailbox_empty(mb));
    assert_null(ax_mailbox_pop(mb));
    assert_null(ax_mailbox_pop(mb));
    assert_int_equal(ax_mailbox_depth(mb), 0);
    assert_int_equal(ax_mailbox_push(mb, &a.node, 0), 0);
    assert_false(ax_mailbox_empty(mb));
    assert_int_equal(ax_mailbox_push(mb, &b.node, 0), 0);
    assert_int_equal(ax_mailbox_depth(mb), 2);
    assert_ptr_equal(ax_mailbox_pop(mb), &a.node);
    assert_false(ax_mailbox_empty(mb));
    assert_ptr_equal(ax_mailbox_pop(mb), &b.node);
    assert_true(ax_mailbox_empty(mb));
    assert_null(ax_mailbox_pop(mb));
    /* A single node pushed again after its pop (the stub case). */
    assert_int_equal(ax_mailbox_push(mb, &a.node, 0), 0);
    assert_ptr_equal(ax_mailbox_pop(mb), &a.node);
    assert_null(ax_mailbox_pop(mb));
  }
  assert_int_equal(ax_mailbox_free(mb), 0);
}

static void test_close(void **state) {
  (void)state;
  ax_mailbox_t *mb = mb_new(8);
  msg_t m[3] = {{.seq = 0}, {.seq = 1}, {.seq = 2}};
  for (int i = 0; i < 3; i++)
    assert_int_equal(ax_mailbox_push(mb, &m[i].node, 0), 0);
  ax_mailbox_close(mb);

  msg_t late, copy;
  memset(&late, 0x77, sizeof late);
  memcpy(&copy, &late, sizeof copy);
  assert_int_equal(ax_mailbox_push(mb, &late.node, 0), -ESHUTDOWN);
  assert_memory_equal(&late, &copy, sizeof late);
  assert_int_equal(ax_mailbox_push(mb, &late.node, AX_MB_CONTROL), -ESHUTDOWN);
  assert_memory_equal(&late, &copy, sizeof late);
  assert_int_equal(ax_mailbox_push(mb, NULL, 0), -EINVAL);
  assert_int_equal(ax_mailbox_depth(mb), 3);
  assert_false(ax_mailbox_empty(mb));

  /* Not empty: free refuses and frees nothing. */
  assert_int_equal(ax_mailbox_free(mb), -EBUSY);
  for (int i = 0; i < 3; i++) {
    ax_mbnode_t *n = ax_mailbox_pop(mb);
    assert_ptr_equal(n, &m[i].node);
    assert_int_equal(ax_mailbox_push(mb, n, 0), -ESHUTDOWN);
  }
  assert_null(ax_mailbox_pop(mb));
  assert_true(ax_mailbox_empty(mb));
  assert_int_equal(ax_mailbox_depth(mb), 0);
  assert_int_equal(ax_mailbox_push(mb, &late.node, 0), -ESHUTDOWN);
  assert_int_equal(ax_mailbox_free(mb), 0);

  /* Closing an empty mailbox, then freeing it. */
  mb = mb_new(0);
  ax_mailbox_close(mb);
  assert_int_equal(ax_mailbox_push(mb, &m[0].node, 0), -ESHUTDOWN);
  assert_true(ax_mailbox_empty(mb));
  assert_int_equal(ax_mailbox_free(mb), 0);
}

static void test_free_busy(void **state) {
  (void)state;
  ax_mailbox_t *mb = mb_new(0);
  msg_t a = {0}, b = {0};
  assert_int_equal(ax_mailbox_push(mb, &a.node, 0), 0);
  assert_int_equal(ax_mailbox_free(mb), -EBUSY);
  /* Still usable after the refused free. */
  assert_int_equal(ax_mailbox_push(mb, &b.node, AX_MB_CONTROL), 0);
  assert_int_equal(ax_mailbox_free(mb), -EBUSY);
  assert_ptr_equal(ax_mailbox_pop(mb), &a.node);
  assert_int_equal(ax_mailbox_free(mb), -EBUSY);
  assert_ptr_equal(ax_mailbox_pop(mb), &b.node);
  assert_int_equal(ax_mailbox_free(mb), 0);
}

/* ---- wake protocol, single thread ---------------------------------------- */

static void count_wake(void *ctx) { (*(int *)ctx)++; }

static void test_wakes(void **state) {
  (void)state;
  int calls = 0;
  ax_mailbox_options_t o;
  ax_mailbox_options_init(&o);
  o.capacity = 4;
  o.wake = count_wake;
  o.wake_ctx = &calls;
  ax_mailbox_t *mb = NULL;
  assert_int_equal(ax_mailbox_new(&o, &mb), 0);
  msg_t m[8];
  memset(m, 0, sizeof m);

  /* Announced sleep on an empty mailbox: the first push wakes, once. */
  assert_int_equal(ax_mailbox_sleep_prepare(mb), 0);
  assert_int_equal(calls, 0);
  assert_int_equal(ax_mailbox_wakes(mb), 0);
  assert_int_equal(ax_mailbox_push(mb, &m[0].node, 0), 0);
  assert_int_equal(calls, 1);
  assert_int_equal(ax_mailbox_wakes(mb), 1);
  assert_int_equal(ax_mailbox_push(mb, &m[1].node, 0), 0);
  assert_int_equal(ax_mailbox_push(mb, &m[2].node, AX_MB_CONTROL), 0);
  assert_int_equal(calls, 1);
  assert_int_equal(ax_mailbox_wakes(mb), 1);
  assert_true(ax_mailbox_sleep_finish(mb));
  /* Awake: pushes wake nobody. */
  assert_int_equal(ax_mailbox_push(mb, &m[3].node, 0), 0);
  assert_int_equal(calls, 1);
  for (int i = 0; i < 4; i++)
    assert_ptr_equal(ax_mailbox_pop(mb), &m[i].node);
  assert_null(ax_mailbox_pop(mb));

  /* A sleep nobody interrupts: finish says so; later pushes wake nobody. */
  assert_int_equal(ax_mailbox_sleep_prepare(mb), 0);
  assert_false(ax_mailbox_sleep_finish(mb));
  assert_int_equal(ax_mailbox_push(mb, &m[0].node, 0), 0);
  assert_int_equal(calls, 1);
  assert_int_equal(ax_mailbox_wakes(mb), 1);

  /* Non-empty: prepare refuses (announcement withdrawn), no wake follows. */
  assert_int_equal(ax_mailbox_sleep_prepare(mb), -EAGAIN);
  assert_int_equal(ax_mailbox_push(mb, &m[1].node, 0), 0);
  assert_int_equal(ax_mailbox_push(mb, &m[2].node, AX_MB_CONTROL), 0);
  assert_int_equal(calls, 1);
  assert_int_equal(ax_mailbox_sleep_prepare(mb), -EAGAIN);
  assert_int_equal(calls, 1);
  for (int i = 0; i < 3; i++)
    assert_ptr_equal(ax_mailbox_pop(mb), &m[i].node);
  assert_true(ax_mailbox_empty(mb));

  /* Each announced sleep gets its own wake; a control push wakes too. */
  for (int k = 0; k < 5; k++) {
    assert_int_equal(ax_mailbox_sleep_prepare(mb), 0);
    assert_int_equal(
        ax_mailbox_push(mb, &m[0].node, k % 2 ? AX_MB_CONTROL : 0), 0);
    assert_int_equal(calls, 2 + k);
    assert_int_equal(ax_mailbox_wakes(mb), (uint64_t)(2 + k));
    assert_true(ax_mailbox_sleep_finish(mb));
    assert_ptr_equal(ax_mailbox_pop(mb), &m[0].node);
  }
  assert_int_equal(ax_mailbox_free(mb), 0);
}

/* ---- spin ------------------------------------------------------------------ */

typedef struct late_push {
  ax_mailbox_t *mb;
  msg_t m;
} late_push_t;

static void *late_push_main(void *arg) {
  late_push_t *lp = arg;
  struct timespec ts = {0, 20 * 1000 * 1000};
  nanosleep(&ts, NULL);
  lp->m.seq = 42;
  if (ax_mailbox_push(lp->mb, &lp->m.node, 0) != 0)
    abort();
  return NULL;
}

static void test_spin(void **state) {
  (void)state;
  ax_mailbox_t *mb = mb_new(0);
  assert_false(ax_mailbox_spin(mb, 0));
  assert_false(ax_mailbox_spin(mb, 1000));
  assert_false(ax_mailbox_spin(mb, 2 * 1000 * 1000)); /* 2 ms */
  msg_t a = {0};
  assert_int_equal(ax_mailbox_push(mb, &a.node, 0), 0);
  assert_true(ax_mailbox_spin(mb, 0));
  assert_true(ax_mailbox_spin(mb, 1000));
  /* Spinning does not consume. */
  assert_ptr_equal(ax_mailbox_pop(mb), &a.node);
  assert_false(ax_mailbox_spin(mb, 1000));

  /* A push from another thread ends a long spin (20 s bound: a spin that
   * missed the push would return false). */
  guard_start("test_spin", 60);
  late_push_t lp = {.mb = mb};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, late_push_main, &lp), 0);
  bool got = ax_mailbox_spin(mb, 20ull * 1000 * 1000 * 1000);
  pthread_join(t, NULL);
  assert_true(got);
  ax_mbnode_t *n = ax_mailbox_pop(mb);
  assert_ptr_equal(n, &lp.m.node);
  assert_int_equal(msg_of(n)->seq, 42);

  /* The longest spin there is ("until a message comes") must not end at
   * once: a deadline computed as now + ns would wrap around. */
  memset(&lp.m, 0, sizeof lp.m);
  assert_int_equal(pthread_create(&t, NULL, late_push_main, &lp), 0);
  got = ax_mailbox_spin(mb, UINT64_MAX);
  pthread_join(t, NULL);
  guard_stop();
  n = ax_mailbox_pop(mb);
  assert_int_equal(ax_mailbox_free(mb), 0);
  assert_ptr_equal(n, &lp.m.node);
  if (!got)
    fail_msg("ax_mailbox_spin(UINT64_MAX) returned false before the push");
}

/* ---- a sleeping consumer (eventfd + the wake protocol) --------------------- */

/* A poll that times out while a message is queued is retried once; a
 * second timeout with the message still queued is a lost wakeup. */
#define LOST_MS 3000

typedef struct sleeper {
  ax_mailbox_t *mb;
  int efd;
  uint64_t spin_ns;
  uint64_t sleeps, woken, spin_hits, lost;
} sleeper_t;

static void efd_wake(void *ctx) {
  uint64_t one = 1;
  if (write(*(const int *)ctx, &one, sizeof one) != (ssize_t)sizeof one)
    abort();
}

static void sleeper_init(sleeper_t *s, uint32_t cap, uint64_t spin_ns) {
  memset(s, 0, sizeof *s);
  s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  assert_true(s->efd >= 0);
  s->spin_ns = spin_ns;
  ax_mailbox_options_t o;
  ax_mailbox_options_init(&o);
  o.capacity = cap;
  o.wake = efd_wake;
  o.wake_ctx = &s->efd;
  assert_int_equal(ax_mailbox_new(&o, &s->mb), 0);
}

/* Drained: nothing to pop, empty, and (after the close, which publishes
 * any batched pops) a depth of 0. */
static void sleeper_fini(sleeper_t *s) {
  assert_null(ax_mailbox_pop(s->mb));
  assert_true(ax_mailbox_empty(s->mb));
  ax_mailbox_close(s->mb);
  assert_int_equal(ax_mailbox_depth(s->mb), 0);
  assert_int_equal(ax_mailbox_free(s->mb), 0);
  close(s->efd);
}

/* Consumer side, after a pop returned NULL: wait until a message may be
 * there. Spins first if asked, then sleeps through the protocol. Returns
 * after at most ~2 * LOST_MS even if nothing came. */
static void sleeper_wait(sleeper_t *s) {
  if (!ax_mailbox_empty(s->mb)) { /* a producer between its two steps */
    sched_yield();
    return;
  }
  if (s->spin_ns && ax_mailbox_spin(s->mb, s->spin_ns)) {
    s->spin_hits++;
    return;
  }
  if (ax_mailbox_sleep_prepare(s->mb) != 0)
    return;
  s->sleeps++;
  struct pollfd p = {.fd = s->efd, .events = POLLIN};
  int r = poll(&p, 1, LOST_MS);
  if (r == 0 && !ax_mailbox_empty(s->mb)) {
    r = poll(&p, 1, LOST_MS);
    if (r == 0 && !ax_mailbox_empty(s->mb)) {
      s->lost++;
      fprintf(stderr, "lost wakeup: slept %d ms with a message queued\n",
              2 * LOST_MS);
    }
  }
  uint64_t v;
  if (read(s->efd, &v, sizeof v) < 0 && errno != EAGAIN)
    abort();
  if (ax_mailbox_sleep_finish(s->mb))
    s->woken++;
}

/* ---- stress: 4 producers, node recycling ---------------------------------- */

#define NPROD 4
#define POOL 32

typedef struct rig rig_t;

typedef struct prod {
  int id;
  rig_t *rig;
  sleeper_t ret; /* nodes coming back; this producer is its consumer */
  msg_t pool[POOL];
  bool inflight[POOL];
  uint64_t sent, back, errors;
  pthread_t thr;
} prod_t;

struct rig {
  sleeper_t in; /* the consumer's mailbox */
  prod_t prod[NPROD];
  uint64_t per_prod;
  atomic_int sent_done;     /* producers that pushed all their messages */
  atomic_bool consumer_done; /* the consumer has returned its last node */
};

/* Take back one returned node (or wait for one). False if none can come. */
static bool prod_take_back(prod_t *p, msg_t **freel, int *nfree) {
  ax_mbnode_t *n = ax_mailbox_pop(p->ret.mb);
  if (!n) {
    if (atomic_load(&p->rig->consumer_done) && ax_mailbox_empty(p->ret.mb))
      return false;
    sleeper_wait(&p->ret);
    return true;
  }
  msg_t *m = msg_of(n);
  ptrdiff_t i = m - p->pool;
  if (i < 0 || i >= POOL || m->prod != (uint32_t)p->id || !p->inflight[i]) {
    p->errors++;
    return true;
  }
  p->inflight[i] = false;
  p->back++;
  freel[(*nfree)++] = m;
  return true;
}

static void *prod_main(void *arg) {
  prod_t *p = arg;
  rig_t *rig = p->rig;
  msg_t *freel[POOL];
  int nfree = POOL;
  for (int i = 0; i < POOL; i++)
    freel[i] = &p->pool[i];
  for (uint64_t seq = 0; seq < rig->per_prod; seq++) {
    bool stuck = false;
    while (nfree == 0 && !stuck)
      stuck = !prod_take_back(p, freel, &nfree);
    if (stuck)
      break;
    msg_t *m = freel[--nfree];
    p->inflight[m - p->pool] = true;
    m->prod = (uint32_t)p->id;
    m->seq = seq;
    int rc = ax_mailbox_push(rig->in.mb, &m->node, 0);
    if (rc != 0) {
      p->inflight[m - p->pool] = false;
      freel[nfree++] = m;
      p->errors++;
      break;
    }
    p->sent++;
    /* Take back what is there already, without waiting. */
    ax_mbnode_t *n;
    if ((seq & 7) == 0 && (n = ax_mailbox_pop(p->ret.mb)) != NULL) {
      msg_t *r = msg_of(n);
      ptrdiff_t i = r - p->pool;
      if (i < 0 || i >= POOL || !p->inflight[i]) {
        p->errors++;
      } else {
        p->inflight[i] = false;
        p->back++;
        freel[nfree++] = r;
      }
    }
  }
  atomic_fetch_add(&rig->sent_done, 1);
  /* Wait for every node to come back (gives up once the consumer is done
   * and nothing is left to take: the missing ones are reported). */
  while (nfree < POOL)
    if (!prod_take_back(p, freel, &nfree))
      break;
  return NULL;
}

typedef struct tally {
  uint8_t *seen[NPROD];
  uint64_t next[NPROD];
  uint64_t got, dup, ooo, bad, lost;
} tally_t;

static void tally_init(tally_t *t, uint64_t per_prod) {
  memset(t, 0, sizeof *t);
  for (int p = 0; p < NPROD; p++) {
    t->seen[p] = calloc(per_prod, 1);
    assert_non_null(t->seen[p]);
  }
}

/* Record one message; false if it is not a valid one. */
static bool tally_add(tally_t *t, const msg_t *m, uint64_t per_prod) {
  if (m->prod >= NPROD || m->seq >= per_prod) {
    t->bad++;
    return false;
  }
  uint32_t p = m->prod;
  if (t->seen[p][m->seq])
    t->dup++;
  t->seen[p][m->seq] = 1;
  if (m->seq != t->next[p])
    t->ooo++;
  t->next[p] = m->seq + 1;
  t->got++;
  return true;
}

/* Count the never-seen messages, free the tables. */
static void tally_fini(tally_t *t, uint64_t per_prod) {
  for (int p = 0; p < NPROD; p++) {
    for (uint64_t i = 0; i < per_prod; i++)
      t->lost += !t->seen[p][i];
    free(t->seen[p]);
  }
}

static void recycle_stress(uint64_t total, uint64_t spin_ns) {
  rig_t *rig = calloc(1, sizeof *rig);
  assert_non_null(rig);
  rig->per_prod = total / NPROD;
  sleeper_init(&rig->in, 0, spin_ns);
  for (int p = 0; p < NPROD; p++) {
    rig->prod[p].id = p;
    rig->prod[p].rig = rig;
    sleeper_init(&rig->prod[p].ret, 0, spin_ns);
  }
  tally_t t;
  tally_init(&t, rig->per_prod);

  guard_start("recycle stress", 200);
  uint64_t t0 = mono_ms();
  for (int p = 0; p < NPROD; p++)
    assert_int_equal(
        pthread_create(&rig->prod[p].thr, NULL, prod_main, &rig->prod[p]), 0);

  /* The consumer: this thread. */
  uint64_t ret_errors = 0, want = rig->per_prod * NPROD;
  while (t.got < want) {
    ax_mbnode_t *n = ax_mailbox_pop(rig->in.mb);
    if (!n) {
      if (atomic_load(&rig->sent_done) == NPROD &&
          ax_mailbox_empty(rig->in.mb))
        break; /* everything pushed has been popped: the rest is lost */
      sleeper_wait(&rig->in);
      continue;
    }
    msg_t *m = msg_of(n);
    if (!tally_add(&t, m, rig->per_prod))
      continue;
    if (ax_mailbox_push(rig->prod[m->prod].ret.mb, n, 0) != 0)
      ret_errors++;
  }
  atomic_store(&rig->consumer_done, true);
  for (int p = 0; p < NPROD; p++)
    pthread_join(rig->prod[p].thr, NULL);
  uint64_t ms = mono_ms() - t0;
  guard_stop();

  tally_fini(&t, rig->per_prod);
  uint64_t lost_wakes = rig->in.lost, prod_errors = 0, sent = 0, back = 0;
  uint64_t sleeps = rig->in.sleeps, woken = rig->in.woken,
           hits = rig->in.spin_hits;
  uint64_t wakes = ax_mailbox_wakes(rig->in.mb);
  for (int p = 0; p < NPROD; p++) {
    prod_t *pr = &rig->prod[p];
    lost_wakes += pr->ret.lost;
    prod_errors += pr->errors;
    sent += pr->sent;
    back += pr->back;
    wakes += ax_mailbox_wakes(pr->ret.mb);
    sleeps += pr->ret.sleeps;
    hits += pr->ret.spin_hits;
    for (int i = 0; i < POOL; i++)
      if (pr->inflight[i])
        fail_msg("producer %d: node %d never came back", p, i);
  }
  print_message("  %llu messages x2 hops in %llu ms (spin %llu ns): %llu "
                "sleeps, %llu wakes, %llu woken consumer sleeps, %llu spin "
                "catches\n",
                (unsigned long long)want, (unsigned long long)ms,
                (unsigned long long)spin_ns, (unsigned long long)sleeps,
                (unsigned long long)wakes, (unsigned long long)woken,
                (unsigned long long)hits);
  if (t.lost || t.dup || t.ooo || t.bad || lost_wakes || prod_errors ||
      ret_errors || sent != want || back != want)
    fail_msg("lost %llu, duplicated %llu, out of order %llu, bad %llu, lost "
             "wakeups %llu, producer errors %llu, return errors %llu, sent "
             "%llu/%llu, back %llu",
             (unsigned long long)t.lost, (unsigned long long)t.dup,
             (unsigned long long)t.ooo, (unsigned long long)t.bad,
             (unsigned long long)lost_wakes, (unsigned long long)prod_errors,
             (unsigned long long)ret_errors, (unsigned long long)sent,
             (unsigned long long)want, (unsigned long long)back);
  assert_int_equal(t.got, want);

  /* Drained: empty, nothing left to pop, depth back to 0. */
  sleeper_fini(&rig->in);
  for (int p = 0; p < NPROD; p++)
    sleeper_fini(&rig->prod[p].ret);
  free(rig);
}

/* 4,000,000 messages (1,000,000 per producer), each recycled node crossing
 * two mailboxes; scaled down under sanitizers (see scaled()). */
static void test_stress_recycle(void **state) {
  (void)state;
  recycle_stress(scaled(4000000), 0);
}

/* Same with a 20 us spin before every sleep, on both sides. */
static void test_stress_recycle_spin(void **state) {
  (void)state;
  recycle_stress(scaled(2000000), 20000);
}

/* ---- stress: small capacity, retries, control messages --------------------- */

#define SMALL_CAP 64

typedef struct cap_rig {
  sleeper_t in;
  uint64_t per_prod;
  msg_t *msgs[NPROD];
  atomic_long ctl_inflight; /* controls pushed (or being pushed), not popped */
  atomic_ulong eagain;
  atomic_int sent_done;
  atomic_ulong errors;
  pthread_t thr[NPROD];
  int ids[NPROD];
} cap_rig_t;

typedef struct cap_arg {
  cap_rig_t *rig;
  int id;
} cap_arg_t;

static void *cap_prod_main(void *arg) {
  cap_arg_t *a = arg;
  cap_rig_t *rig = a->rig;
  uint64_t s = 0x1234567u + (uint64_t)a->id * 7919u;
  for (uint64_t seq = 0; seq < rig->per_prod; seq++) {
    msg_t *m = &rig->msgs[a->id][seq];
    m->prod = (uint32_t)a->id;
    m->seq = seq;
    m->ctl = xorshift(&s) % 16 == 0;
    if (m->ctl) {
      atomic_fetch_add(&rig->ctl_inflight, 1);
      if (ax_mailbox_push(rig->in.mb, &m->node, AX_MB_CONTROL) != 0) {
        atomic_fetch_add(&rig->errors, 1);
        atomic_fetch_sub(&rig->ctl_inflight, 1);
      }
      continue;
    }
    for (;;) {
      int rc = ax_mailbox_push(rig->in.mb, &m->node, 0);
      if (rc == 0)
        break;
      if (rc != -EAGAIN) {
        atomic_fetch_add(&rig->errors, 1);
        break;
      }
      atomic_fetch_add(&rig->eagain, 1);
      sched_yield();
    }
  }
  atomic_fetch_add(&rig->sent_done, 1);
  return NULL;
}

/* 4 producers x 100,000 messages (1/16 of them controls) into a capacity of
 * 64; scaled down under sanitizers (see scaled()). */
static void test_stress_capacity(void **state) {
  (void)state;
  cap_rig_t *rig = calloc(1, sizeof *rig);
  assert_non_null(rig);
  rig->per_prod = scaled(400000) / NPROD;
  sleeper_init(&rig->in, SMALL_CAP, 0);
  cap_arg_t args[NPROD];
  for (int p = 0; p < NPROD; p++) {
    rig->msgs[p] = calloc(rig->per_prod, sizeof(msg_t));
    assert_non_null(rig->msgs[p]);
    args[p] = (cap_arg_t){rig, p};
  }
  tally_t t;
  tally_init(&t, rig->per_prod);

  guard_start("capacity stress", 200);
  uint64_t t0 = mono_ms();
  for (int p = 0; p < NPROD; p++)
    assert_int_equal(pthread_create(&rig->thr[p], NULL, cap_prod_main, &args[p]),
                     0);
  /* Let the producers fill the mailbox and be refused before popping. */
  while (ax_mailbox_depth(rig->in.mb) < SMALL_CAP ||
         atomic_load(&rig->eagain) == 0)
    sched_yield();

  uint64_t want = rig->per_prod * NPROD, over = 0, popped_ctl = 0;
  size_t maxd = 0;
  while (t.got < want) {
    ax_mbnode_t *n = ax_mailbox_pop(rig->in.mb);
    if (!n) {
      if (atomic_load(&rig->sent_done) == NPROD &&
          ax_mailbox_empty(rig->in.mb))
        break;
      sleeper_wait(&rig->in);
      continue;
    }
    msg_t *m = msg_of(n);
    if (m->ctl) {
      atomic_fetch_sub(&rig->ctl_inflight, 1);
      popped_ctl++;
    }
    tally_add(&t, m, rig->per_prod);
    /* Depth first, then the controls in flight (only this thread lowers
     * that count, so it cannot have dropped in between). */
    size_t d = ax_mailbox_depth(rig->in.mb);
    long c = atomic_load(&rig->ctl_inflight);
    if (d > maxd)
      maxd = d;
    /* The documented bound: the capacity, plus the controls, plus fewer
     * than the number of producers (each checks the depth, then publishes:
     * producers racing past the check together may all get in). */
    if ((long)d > SMALL_CAP + c + (NPROD - 1)) {
      if (over++ == 0)
        fprintf(stderr,
                "depth %zu > capacity %d + %ld controls in flight + %d\n", d,
                SMALL_CAP, c, NPROD - 1);
    }
  }
  for (int p = 0; p < NPROD; p++)
    pthread_join(rig->thr[p], NULL);
  uint64_t ms = mono_ms() - t0;
  guard_stop();

  tally_fini(&t, rig->per_prod);
  print_message("  %llu messages (%llu controls) in %llu ms: %lu refusals, "
                "max depth seen %zu\n",
                (unsigned long long)want, (unsigned long long)popped_ctl,
                (unsigned long long)ms, atomic_load(&rig->eagain), maxd);
  if (t.lost || t.dup || t.ooo || t.bad || over || rig->in.lost ||
      atomic_load(&rig->errors))
    fail_msg("lost %llu, duplicated %llu, out of order %llu, bad %llu, depth "
             "over bound %llu times, lost wakeups %llu, push errors %lu",
             (unsigned long long)t.lost, (unsigned long long)t.dup,
             (unsigned long long)t.ooo, (unsigned long long)t.bad,
             (unsigned long long)over, (unsigned long long)rig->in.lost,
             atomic_load(&rig->errors));
  assert_int_equal(t.got, want);
  assert_int_equal(atomic_load(&rig->ctl_inflight), 0);
  sleeper_fini(&rig->in);
  for (int p = 0; p < NPROD; p++)
    free(rig->msgs[p]);
  free(rig);
}

/* ---- ping-pong: one message, two sleeping threads -------------------------- */

/*
 * The sharpest lost-wakeup test at this level: a single node bounces
 * between two threads, each sleeping (no spin) on its eventfd between
 * visits, so nearly every push meets a consumer that is announcing or has
 * announced its sleep. A lost wakeup would stall the ball; the sleeper
 * counts it (and the guard bounds the rest).
 */
typedef struct pingpong {
  sleeper_t box[2];
  uint64_t rounds;
  uint64_t visits[2];
  uint64_t errors;
  msg_t ball;
} pingpong_t;

typedef struct pp_arg {
  pingpong_t *pp;
  int side;
} pp_arg_t;

/* Side @side: receive the ball, send it to the other side; side 0 counts
 * round trips and ends the game with seq UINT64_MAX. */
static void *pp_main(void *arg) {
  pp_arg_t *a = arg;
  pingpong_t *pp = a->pp;
  sleeper_t *me = &pp->box[a->side], *other = &pp->box[!a->side];
  for (;;) {
    ax_mbnode_t *n = ax_mailbox_pop(me->mb);
    if (!n) {
      sleeper_wait(me);
      continue;
    }
    msg_t *m = msg_of(n);
    if (m != &pp->ball)
      pp->errors++;
    if (m->seq == UINT64_MAX)
      return NULL; /* side 1: game over */
    pp->visits[a->side]++;
    if (a->side == 1) {
      if (m->seq != pp->visits[1] - 1)
        pp->errors++;
    } else {
      m->seq++;
      if (m->seq == pp->rounds)
        m->seq = UINT64_MAX;
    }
    bool last = m->seq == UINT64_MAX;
    if (ax_mailbox_push(other->mb, n, 0) != 0)
      pp->errors++;
    if (last)
      return NULL;
  }
}

/* 200,000 round trips (scaled). */
static void test_pingpong_sleeping(void **state) {
  (void)state;
  pingpong_t *pp = calloc(1, sizeof *pp);
  assert_non_null(pp);
  pp->rounds = scaled(200000);
  sleeper_init(&pp->box[0], 0, 0);
  sleeper_init(&pp->box[1], 0, 0);
  pp_arg_t args[2] = {{pp, 0}, {pp, 1}};
  guard_start("raw ping-pong", 200);
  uint64_t t0 = mono_ms();
  pthread_t thr;
  assert_int_equal(pthread_create(&thr, NULL, pp_main, &args[1]), 0);
  pp->ball.seq = 0;
  assert_int_equal(ax_mailbox_push(pp->box[1].mb, &pp->ball.node, 0), 0);
  pp_main(&args[0]);
  pthread_join(thr, NULL);
  uint64_t ms = mono_ms() - t0;
  guard_stop();
  print_message("  %llu round trips in %llu ms: %llu + %llu sleeps, %llu + "
                "%llu wakes\n",
                (unsigned long long)pp->rounds, (unsigned long long)ms,
                (unsigned long long)pp->box[0].sleeps,
                (unsigned long long)pp->box[1].sleeps,
                (unsigned long long)ax_mailbox_wakes(pp->box[0].mb),
                (unsigned long long)ax_mailbox_wakes(pp->box[1].mb));
  assert_int_equal(pp->box[0].lost + pp->box[1].lost, 0);
  assert_int_equal(pp->errors, 0);
  assert_int_equal(pp->visits[0], pp->rounds);
  assert_int_equal(pp->visits[1], pp->rounds);
  sleeper_fini(&pp->box[0]);
  sleeper_fini(&pp->box[1]);
  free(pp);
}

/* ---- close race ------------------------------------------------------------ */

typedef struct close_prod {
  ax_mailbox_t *mb;
  msg_t *msgs;
  int8_t *rc; /* per message: 0 pushed, 1 refused, -1 other error */
  uint64_t n, ok, refused, errors, ok_after_refusal;
  int id;
  pthread_t thr;
} close_prod_t;

static void *close_prod_main(void *arg) {
  close_prod_t *p = arg;
  bool refused = false;
  for (uint64_t i = 0; i < p->n; i++) {
    p->msgs[i].prod = (uint32_t)p->id;
    p->msgs[i].seq = i;
    int rc = ax_mailbox_push(p->mb, &p->msgs[i].node, i % 5 ? 0 : AX_MB_CONTROL);
    if (rc == 0) {
      p->rc[i] = 0;
      p->ok++;
      if (refused)
        p->ok_after_refusal++;
    } else if (rc == -ESHUTDOWN) {
      p->rc[i] = 1;
      p->refused++;
      refused = true;
    } else {
      p->rc[i] = -1;
      p->errors++;
    }
  }
  return NULL;
}

/* 20 rounds (scaled) of 4 producers x 20,000 pushes while this thread pops a
 * random number of them, closes, and drains. */
static void test_close_race(void **state) {
  (void)state;
  const uint64_t per = 20000;
  int rounds = (int)scaled(20);
  if (rounds < 4)
    rounds = 4;
  uint64_t s = 0xc105e;
  uint64_t all_ok = 0, all_refused = 0;
  close_prod_t p[NPROD];
  uint8_t *popped[NPROD];
  for (int k = 0; k < NPROD; k++) {
    p[k].msgs = calloc(per, sizeof(msg_t));
    p[k].rc = malloc(per);
    popped[k] = malloc(per);
    assert_non_null(p[k].msgs);
    assert_non_null(p[k].rc);
    assert_non_null(popped[k]);
  }
  guard_start("close race", 200);
  for (int round = 0; round < rounds; round++) {
    ax_mailbox_t *mb = mb_new(0);
    for (int k = 0; k < NPROD; k++) {
      p[k].mb = mb;
      p[k].n = per;
      p[k].id = k;
      p[k].ok = p[k].refused = p[k].errors = p[k].ok_after_refusal = 0;
      memset(p[k].rc, 2, per);
      memset(popped[k], 0, per);
    }
    /* Close after popping this many (the first round closes at once). */
    uint64_t close_at = round == 0 ? 0 : xorshift(&s) % (per * NPROD / 2);
    for (int k = 0; k < NPROD; k++)
      assert_int_equal(pthread_create(&p[k].thr, NULL, close_prod_main, &p[k]),
                       0);
    uint64_t npopped = 0, bad = 0;
    bool closed = false;
    for (;;) {
      if (!closed && npopped >= close_at) {
        ax_mailbox_close(mb);
        closed = true;
        for (int k = 0; k < NPROD; k++)
          pthread_join(p[k].thr, NULL);
        /* Every push has returned: drain what got in. */
      }
      ax_mbnode_t *n = ax_mailbox_pop(mb);
      if (!n) {
        if (closed && ax_mailbox_empty(mb))
          break;
        sched_yield();
        continue;
      }
      msg_t *m = msg_of(n);
      if (m->prod >= NPROD || m->seq >= per || popped[m->prod][m->seq]++)
        bad++;
      npopped++;
    }
    msg_t late = {0};
    assert_int_equal(ax_mailbox_push(mb, &late.node, 0), -ESHUTDOWN);
    assert_int_equal(ax_mailbox_push(mb, &late.node, AX_MB_CONTROL),
                     -ESHUTDOWN);
    assert_int_equal(bad, 0);
    uint64_t ok = 0, refused = 0;
    for (int k = 0; k < NPROD; k++) {
      assert_int_equal(p[k].errors, 0);
      assert_int_equal(p[k].ok_after_refusal, 0);
      assert_int_equal(p[k].ok + p[k].refused, per);
      for (uint64_t i = 0; i < per; i++)
        if ((p[k].rc[i] == 0) != (popped[k][i] == 1))
          fail_msg("round %d producer %d message %llu: push %s, popped %d "
                   "times",
                   round, k, (unsigned long long)i,
                   p[k].rc[i] == 0 ? "ok" : "refused", popped[k][i]);
      ok += p[k].ok;
      refused += p[k].refused;
    }
    assert_int_equal(ok, npopped);
    assert_int_equal(ok + refused, per * NPROD);
    assert_int_equal(ax_mailbox_depth(mb), 0);
    assert_int_equal(ax_mailbox_free(mb), 0);
    all_ok += ok;
    all_refused += refused;
  }
  guard_stop();
  print_message("  %d rounds: %llu pushes popped, %llu refused\n", rounds,
                (unsigned long long)all_ok, (unsigned long long)all_refused);
  for (int k = 0; k < NPROD; k++) {
    free(p[k].msgs);
    free(p[k].rc);
    free(popped[k]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_args_and_options),
      cmocka_unit_test(test_capacity_fill),
      cmocka_unit_test(test_capacity_model),
      cmocka_unit_test(test_fifo),
      cmocka_unit_test(test_empty),
      cmocka_unit_test(test_close),
      cmocka_unit_test(test_free_busy),
      cmocka_unit_test(test_wakes),
      cmocka_unit_test(test_spin),
      cmocka_unit_test(test_stress_recycle),
      cmocka_unit_test(test_stress_recycle_spin),
      cmocka_unit_test(test_stress_capacity),
      cmocka_unit_test(test_pingpong_sleeping),
      cmocka_unit_test(test_close_race),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
