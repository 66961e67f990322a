/*
 * bench/xthread_uv.c — libuv's side of the cross-thread benchmarks: the
 * design of the actor peers' uv_bench (shared/peers/actors/src/c), written
 * afresh. Each receiving loop has a queue: a mutex-protected growable array
 * of int64 plus a uv_async_t. Send = lock, append, unlock, uv_async_send
 * (libuv coalesces sends while one is pending). The async callback swaps the
 * array for a spare under the lock and processes the batch outside it.
 * Queues are unbounded, as in the peer.
 *
 * One run per (forked) process: the run's state is file-static.
 */
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "xthread.h"

static void uv_ok(int rc, const char *what) {
  if (rc != 0)
    xt_die("libuv: %s returned %d (%s)", what, rc, uv_strerror(rc));
}

/* ------------------------------------------------------------------------ */
/* The queue                                                                 */
/* ------------------------------------------------------------------------ */

#define QUEUE_INITIAL 1024

struct queue {
  uv_mutex_t mu;
  int64_t *buf; /* guarded by mu */
  size_t len, cap;
  int64_t *spare; /* the receiving loop's thread only */
  size_t spare_cap;
  uv_async_t async;
};

static int64_t *alloc_values(size_t n) {
  int64_t *v = malloc(n * sizeof *v);
  if (v == NULL)
    xt_die("libuv: out of memory (queue)");
  return v;
}

static void queue_init(struct queue *q, uv_loop_t *loop, uv_async_cb cb) {
  memset(q, 0, sizeof *q);
  uv_ok(uv_mutex_init(&q->mu), "uv_mutex_init");
  uv_ok(uv_async_init(loop, &q->async, cb), "uv_async_init");
  q->async.data = q;
  q->cap = q->spare_cap = QUEUE_INITIAL;
  q->buf = alloc_values(q->cap);
  q->spare = alloc_values(q->spare_cap);
}

static void queue_send(struct queue *q, int64_t v) {
  uv_mutex_lock(&q->mu);
  if (q->len == q->cap) {
    int64_t *b = realloc(q->buf, 2 * q->cap * sizeof *b);
    if (b == NULL)
      xt_die("libuv: out of memory (queue growth)");
    q->buf = b;
    q->cap *= 2;
  }
  q->buf[q->len++] = v;
  uv_mutex_unlock(&q->mu);
  uv_ok(uv_async_send(&q->async), "uv_async_send");
}

/* Swaps the pending values out; the batch stays valid until the next take. */
static size_t queue_take(struct queue *q, int64_t **batch) {
  uv_mutex_lock(&q->mu);
  int64_t *b = q->buf;
  size_t n = q->len, cap = q->cap;
  q->buf = q->spare;
  q->cap = q->spare_cap;
  q->len = 0;
  uv_mutex_unlock(&q->mu);
  q->spare = b;
  q->spare_cap = cap;
  *batch = b;
  return n;
}

/* After the async handle is closed and no thread sends any more. */
static void queue_destroy(struct queue *q) {
  uv_mutex_destroy(&q->mu);
  free(q->buf);
  free(q->spare);
}

static void loop_close(uv_loop_t *loop) {
  uv_ok(uv_run(loop, UV_RUN_DEFAULT), "uv_run (closing)");
  uv_ok(uv_loop_close(loop), "uv_loop_close");
}

/* ------------------------------------------------------------------------ */
/* Streams: producers → one consumer loop                                    */
/* ------------------------------------------------------------------------ */

#define LANE_SHIFT 56

static struct {
  uv_loop_t loop;
  struct queue q;
  struct xt_lane *lanes;
  uint64_t n, left, t1;
  pthread_barrier_t start;
} st;

static void on_batch(uv_async_t *h) {
  struct queue *q = h->data;
  int64_t *batch;
  size_t k = queue_take(q, &batch);
  for (size_t i = 0; i < k; i++) {
    uint64_t v = (uint64_t)batch[i];
    xt_lane_take(&st.lanes[v >> LANE_SHIFT], v & ((1ull << LANE_SHIFT) - 1));
  }
  st.left -= k;
  if (st.left == 0 && !uv_is_closing((uv_handle_t *)h)) {
    st.t1 = xt_now_ns();
    uv_close((uv_handle_t *)h, NULL); /* nothing left: uv_run returns */
  }
}

static void *producer(void *arg) {
  struct xt_lane *l = arg;
  uint64_t tag = (uint64_t)l->id << LANE_SHIFT;
  xt_pin(1);
  pthread_barrier_wait(&st.start);
  for (uint64_t seq = 1; seq <= st.n; seq++)
    queue_send(&st.q, (int64_t)(tag | seq));
  return NULL;
}

void xt_uv_stream(const struct xt_params *p, struct xt_result *r) {
  pthread_t t[XT_MAX_PRODUCERS];
  xt_pin(0);
  uv_ok(uv_loop_init(&st.loop), "uv_loop_init");
  queue_init(&st.q, &st.loop, on_batch);
  st.lanes = xt_lanes_new(p->producers);
  st.n = p->n;
  st.left = p->n * (uint64_t)p->producers;
  pthread_barrier_init(&st.start, NULL, (unsigned)p->producers + 1);
  for (int i = 0; i < p->producers; i++)
    xt_thread_start(&t[i], producer, &st.lanes[i]);
  pthread_barrier_wait(&st.start);
  uint64_t t0 = xt_now_ns();
  uv_run(&st.loop, UV_RUN_DEFAULT);
  if (st.left != 0)
    xt_die("libuv: the loop returned with %llu messages missing",
           (unsigned long long)st.left);
  r->seconds = (double)(st.t1 - t0) / 1e9;
  for (int i = 0; i < p->producers; i++) {
    xt_thread_join(t[i]);
    if (st.lanes[i].expected != p->n + 1)
      xt_die("libuv: producer %d: %llu of %llu messages", i,
             (unsigned long long)st.lanes[i].expected - 1,
             (unsigned long long)p->n);
  }
  loop_close(&st.loop); /* after the joins: a late uv_async_send is safe */
  queue_destroy(&st.q);
  pthread_barrier_destroy(&st.start);
  free(st.lanes);
}

/* ------------------------------------------------------------------------ */
/* Ping-pong: loop A (this thread) and loop B, one value bounced             */
/* ------------------------------------------------------------------------ */

#define STOP_VALUE INT64_MIN

/* The value is the hop count: odd ones go to B, even ones to A. */
static struct {
  uv_loop_t a_loop, b_loop;
  struct queue a, b;
  uint64_t n, rt, t1;
  pthread_barrier_t start;
} pp;

static void on_a(uv_async_t *h) {
  int64_t *batch;
  size_t k = queue_take(&pp.a, &batch);
  for (size_t i = 0; i < k; i++) {
    if (batch[i] != (int64_t)(2 * (pp.rt + 1)))
      xt_die("libuv: loop A got hop %lld after %llu round trips",
             (long long)batch[i], (unsigned long long)pp.rt);
    if (++pp.rt == pp.n) {
      pp.t1 = xt_now_ns();
      queue_send(&pp.b, STOP_VALUE);
      uv_close((uv_handle_t *)h, NULL);
      return;
    }
    queue_send(&pp.b, batch[i] + 1);
  }
}

static void on_b(uv_async_t *h) {
  int64_t *batch;
  size_t k = queue_take(&pp.b, &batch);
  for (size_t i = 0; i < k; i++) {
    if (batch[i] == STOP_VALUE) {
      uv_close((uv_handle_t *)h, NULL);
      return;
    }
    if (batch[i] % 2 != 1)
      xt_die("libuv: loop B got hop %lld", (long long)batch[i]);
    queue_send(&pp.a, batch[i] + 1);
  }
}

static void *loop_b(void *arg) {
  (void)arg;
  xt_pin(1);
  pthread_barrier_wait(&pp.start);
  uv_run(&pp.b_loop, UV_RUN_DEFAULT);
  return NULL;
}

void xt_uv_pingpong(const struct xt_params *p, struct xt_result *r) {
  pthread_t tb;
  xt_pin(0);
  uv_ok(uv_loop_init(&pp.a_loop), "uv_loop_init");
  uv_ok(uv_loop_init(&pp.b_loop), "uv_loop_init");
  queue_init(&pp.a, &pp.a_loop, on_a);
  queue_init(&pp.b, &pp.b_loop, on_b);
  pp.n = p->n;
  pthread_barrier_init(&pp.start, NULL, 2);
  xt_thread_start(&tb, loop_b, NULL);
  pthread_barrier_wait(&pp.start);
  uint64_t t0 = xt_now_ns();
  queue_send(&pp.b, 1);
  uv_run(&pp.a_loop, UV_RUN_DEFAULT);
  xt_thread_join(tb);
  if (pp.rt != p->n)
    xt_die("libuv: loop A returned after %llu of %llu round trips",
           (unsigned long long)pp.rt, (unsigned long long)p->n);
  r->seconds = (double)(pp.t1 - t0) / 1e9;
  loop_close(&pp.a_loop);
  loop_close(&pp.b_loop);
  queue_destroy(&pp.a);
  queue_destroy(&pp.b);
  pthread_barrier_destroy(&pp.start);
}
