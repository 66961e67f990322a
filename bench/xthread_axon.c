/*
 * bench/xthread_axon.c — axon's side of the cross-thread benchmarks (see
 * xthread.c for the workloads): producers posting to a consumer loop with
 * ax_loop_post_node() (caller-owned nodes) or ax_loop_post() (a malloc'd
 * node each), and one node bounced between two loops.
 *
 * One run per (forked) process, so the run's state is a file-static struct:
 * posted callbacks reach it without carrying a pointer in every message.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <axon/axon.h>

#include "xthread.h"

#define container_of(p, type, member)                                         \
  ((type *)(void *)((char *)(p)-offsetof(type, member)))

static void ax_ok(int rc, const char *what) {
  if (__builtin_expect(rc != 0, 0))
    xt_die("axon: %s returned %d (%s: %s)", what, rc, ax_err_name(rc),
           ax_strerror(rc));
}

static ax_loop_t *new_loop(uint32_t spin_ns) {
  ax_loop_options_t opts;
  ax_loop_t *loop;
  ax_loop_options_init(&opts);
  opts.persistent = true; /* fed only by posts: run until ax_loop_stop */
  opts.spin_ns = spin_ns;
  ax_ok(ax_loop_new(&opts, &loop), "ax_loop_new");
  return loop;
}

static void loop_counters(ax_loop_t *loop, uint64_t posts, const char *who,
                          uint64_t *wakes, uint64_t *iterations) {
  ax_loop_info_t info;
  ax_ok(ax_loop_info(loop, &info), "ax_loop_info");
  if (info.posts_run != posts)
    xt_die("axon: %s: ax_loop_info posts_run=%llu, expected %llu", who,
           (unsigned long long)info.posts_run, (unsigned long long)posts);
  *wakes = info.mailbox_wakes;
  *iterations = info.iterations;
}

/* ------------------------------------------------------------------------ */
/* Streams: producers → one consumer loop                                    */
/* ------------------------------------------------------------------------ */

/* A caller-owned message: 32 bytes, two per cache line. */
struct msg {
  ax_post_t post;
  uint64_t seq;
  struct xt_lane *lane;
};

static struct {
  ax_loop_t *loop;
  struct xt_lane *lanes;
  uint64_t n, left, t1;
  int producers;
  bool by_node; /* ax_loop_post_node (true) or ax_loop_post */
  pthread_barrier_t start;
} st;

static void last_message(void) {
  st.t1 = xt_now_ns();
  ax_loop_stop(st.loop); /* from a callback: ends this iteration */
}

static void on_node(ax_post_t *post) {
  struct msg *m = container_of(post, struct msg, post);
  xt_lane_take(m->lane, m->seq); /* m may be reused from here on */
  if (--st.left == 0)
    last_message();
}

/* ax_loop_post's argument: the lane in the top byte, the seq below. */
#define LANE_SHIFT 56
static void on_post(void *arg) {
  uint64_t v = (uint64_t)(uintptr_t)arg;
  xt_lane_take(&st.lanes[v >> LANE_SHIFT], v & ((1ull << LANE_SHIFT) - 1));
  if (--st.left == 0)
    last_message();
}

static void post_node(struct xt_lane *l, struct msg *m) {
  unsigned rounds = 0;
  int rc;
  while ((rc = ax_loop_post_node(st.loop, &m->post)) == -EAGAIN) {
    l->retries++; /* the mailbox is at post_capacity */
    xt_backoff(&rounds, XT_YIELD_EVERY);
  }
  ax_ok(rc, "ax_loop_post_node");
}

static void produce_nodes(struct xt_lane *l) {
  struct msg *nodes = aligned_alloc(XT_CACHELINE, XT_WINDOW * sizeof *nodes);
  if (nodes == NULL)
    xt_die("out of memory (nodes)");
  memset(nodes, 0, XT_WINDOW * sizeof *nodes); /* fault them in now */
  pthread_barrier_wait(&st.start);
  for (uint64_t seq = 1; seq <= st.n; seq++) {
    xt_lane_wait(l, seq);
    struct msg *m = &nodes[seq % XT_WINDOW];
    m->post.fn = on_node;
    m->seq = seq;
    m->lane = l;
    post_node(l, m);
  }
  /* The nodes are freed by the consumer thread after the join: the last
   * ones may still be queued here. */
  l->nodes = nodes;
}

static void produce_posts(struct xt_lane *l) {
  uint64_t tag = (uint64_t)l->id << LANE_SHIFT;
  pthread_barrier_wait(&st.start);
  for (uint64_t seq = 1; seq <= st.n; seq++) {
    void *arg = (void *)(uintptr_t)(tag | seq);
    unsigned rounds = 0;
    int rc;
    while ((rc = ax_loop_post(st.loop, on_post, arg)) == -EAGAIN) {
      l->retries++; /* the mailbox is at post_capacity */
      xt_backoff(&rounds, XT_YIELD_EVERY);
    }
    ax_ok(rc, "ax_loop_post");
  }
}

static void *producer(void *arg) {
  struct xt_lane *l = arg;
  xt_pin(1);
  if (st.by_node)
    produce_nodes(l);
  else
    produce_posts(l);
  return NULL;
}

static void stream(const struct xt_params *p, struct xt_result *r,
                   bool by_node) {
  pthread_t t[XT_MAX_PRODUCERS];
  xt_pin(0);
  st.loop = new_loop(0);
  st.lanes = xt_lanes_new(p->producers);
  st.n = p->n;
  st.producers = p->producers;
  st.left = p->n * (uint64_t)p->producers;
  st.by_node = by_node;
  pthread_barrier_init(&st.start, NULL, (unsigned)p->producers + 1);
  for (int i = 0; i < p->producers; i++)
    xt_thread_start(&t[i], producer, &st.lanes[i]);
  pthread_barrier_wait(&st.start);
  uint64_t t0 = xt_now_ns();
  ax_ok(ax_loop_run(st.loop, AX_RUN_DEFAULT), "ax_loop_run");
  if (st.left != 0)
    xt_die("axon: the loop returned with %llu messages missing",
           (unsigned long long)st.left);
  r->seconds = (double)(st.t1 - t0) / 1e9;
  for (int i = 0; i < p->producers; i++) {
    xt_thread_join(t[i]);
    if (st.lanes[i].expected != p->n + 1)
      xt_die("axon: producer %d: %llu of %llu messages", i,
             (unsigned long long)st.lanes[i].expected - 1,
             (unsigned long long)p->n);
    r->retries += st.lanes[i].retries;
    r->window_full += st.lanes[i].window_full;
    free(st.lanes[i].nodes);
  }
  loop_counters(st.loop, st.n * (uint64_t)p->producers, "consumer",
                &r->wakes[0], &r->iterations[0]);
  r->has_wakes = r->has_iterations = true;
  ax_ok(ax_loop_free(st.loop), "ax_loop_free");
  pthread_barrier_destroy(&st.start);
  free(st.lanes);
}

void xt_axon_stream(const struct xt_params *p, struct xt_result *r) {
  stream(p, r, true);
}

void xt_axon_post_stream(const struct xt_params *p, struct xt_result *r) {
  stream(p, r, false);
}

/* ------------------------------------------------------------------------ */
/* Ping-pong: one node between loop A (this thread) and loop B               */
/* ------------------------------------------------------------------------ */

/* @hops counts the posts so far: odd ones go to B, even ones to A. */
struct ball {
  ax_post_t post;
  uint64_t hops;
};

static struct {
  ax_loop_t *a, *b;
  struct ball ball;
  uint64_t n, rt, t1;
  pthread_barrier_t start;
} pp;

static void on_a(ax_post_t *post);

static void on_b(ax_post_t *post) {
  struct ball *m = container_of(post, struct ball, post);
  if (m->hops % 2 != 1)
    xt_die("axon: loop B got hop %llu", (unsigned long long)m->hops);
  m->hops++;
  m->post.fn = on_a;
  ax_ok(ax_loop_post_node(pp.a, &m->post), "ax_loop_post_node (to A)");
}

static void on_a(ax_post_t *post) {
  struct ball *m = container_of(post, struct ball, post);
  if (m->hops != 2 * (pp.rt + 1))
    xt_die("axon: loop A got hop %llu after %llu round trips",
           (unsigned long long)m->hops, (unsigned long long)pp.rt);
  if (++pp.rt == pp.n) {
    pp.t1 = xt_now_ns();
    ax_loop_stop(pp.b); /* a control message: B wakes and returns */
    ax_loop_stop(pp.a);
    return;
  }
  m->hops++;
  m->post.fn = on_b;
  ax_ok(ax_loop_post_node(pp.b, &m->post), "ax_loop_post_node (to B)");
}

static void *loop_b(void *arg) {
  (void)arg;
  xt_pin(1);
  pthread_barrier_wait(&pp.start);
  ax_ok(ax_loop_run(pp.b, AX_RUN_DEFAULT), "ax_loop_run (B)");
  return NULL;
}

/* Both loops sleep between messages when @spin_ns is 0 (pingpong_sleep),
 * else spin up to that long before sleeping (pingpong_spin). */
static void pingpong(const struct xt_params *p, struct xt_result *r,
                     uint32_t spin_ns) {
  pthread_t tb;
  xt_pin(0);
  pp.a = new_loop(spin_ns);
  pp.b = new_loop(spin_ns);
  pp.n = p->n;
  pthread_barrier_init(&pp.start, NULL, 2);
  xt_thread_start(&tb, loop_b, NULL);
  pthread_barrier_wait(&pp.start);
  uint64_t t0 = xt_now_ns();
  pp.ball.hops = 1;
  pp.ball.post.fn = on_b;
  ax_ok(ax_loop_post_node(pp.b, &pp.ball.post), "ax_loop_post_node (first)");
  ax_ok(ax_loop_run(pp.a, AX_RUN_DEFAULT), "ax_loop_run (A)");
  xt_thread_join(tb);
  if (pp.rt != p->n)
    xt_die("axon: loop A returned after %llu of %llu round trips",
           (unsigned long long)pp.rt, (unsigned long long)p->n);
  r->seconds = (double)(pp.t1 - t0) / 1e9;
  loop_counters(pp.a, p->n, "loop A", &r->wakes[0], &r->iterations[0]);
  loop_counters(pp.b, p->n, "loop B", &r->wakes[1], &r->iterations[1]);
  r->has_wakes = r->has_iterations = true;
  ax_ok(ax_loop_free(pp.a), "ax_loop_free (A)");
  ax_ok(ax_loop_free(pp.b), "ax_loop_free (B)");
  pthread_barrier_destroy(&pp.start);
}

void xt_axon_pingpong(const struct xt_params *p, struct xt_result *r) {
  pingpong(p, r, p->spin_ns);
}
