/*
 * bench/xthread.h — shared by the cross-thread benchmarks (xthread.c, the
 * driver; xthread_axon.c, xthread_uv.c and xthread_cand.c, the workloads).
 *
 * Every run happens in a forked child (see xthread.c): a workload function
 * may die() at the first wrong message, and it fills one struct xt_result.
 * Threads: the child's main thread is the consumer (or loop A of a ping-pong)
 * and is pinned to CPU 0; producers (or loop B) are pinned to CPU 1.
 */
#ifndef AXON_BENCH_XTHREAD_H
#define AXON_BENCH_XTHREAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ck_pr.h>
#include <pthread.h>
#include <sched.h>

#define XT_MAX_PRODUCERS 2
/* Nodes per producer for the node-based impls: a producer reuses node
 * (seq % XT_WINDOW) once the consumer has published a count >= seq - WINDOW
 * (see struct xt_lane). A power of two. */
#define XT_WINDOW 65536u
/* The consumer publishes its per-producer count every XT_PUBLISH messages
 * (one store to a line the producer reads), not after each one. */
#define XT_PUBLISH 64u
#define XT_CACHELINE 64

/* What a workload needs to know. */
struct xt_params {
  uint64_t n;      /* messages per producer, or round trips */
  int producers;   /* 1 or 2 (throughput workloads) */
  uint32_t spin_ns; /* axon loops' options.spin_ns: 0 except in
                       xthread_pingpong_spin */
  uint64_t deadline_s; /* candidates: stop the producers after this long
                          (0: never) and count what arrived */
};

/* What one run reports back to the driver. @value is the key's value
 * (msgs_per_s, rt_per_s or rt_ns); the rest goes to the stderr note. */
struct xt_result {
  double value;
  double seconds;
  uint64_t messages; /* delivered, if not all (0: n × producers) */
  bool stopped;      /* the deadline cut the run short */
  uint64_t retries;     /* -EAGAIN / ring-full retries (producers) */
  uint64_t window_full; /* times a producer waited for its node window */
  uint64_t wakes[2];    /* wake system calls: consumer or loop A, loop B */
  uint64_t iterations[2];
  bool has_wakes, has_iterations;
};

/* One lane per producer: its node window's flow control and the consumer's
 * order check. Three cache lines so that nobody writes a line that another
 * thread reads in its fast path, except @consumed (written every XT_PUBLISH
 * messages by the consumer, read by the producer only when its cached copy
 * says the window is full). */
struct xt_lane {
  _Alignas(XT_CACHELINE) uint64_t consumed; /* consumer → producer */
  _Alignas(XT_CACHELINE) uint64_t expected; /* consumer only: next seq */
  _Alignas(XT_CACHELINE) uint64_t seen;     /* producer only: last consumed
                                               value it read */
  uint64_t sent; /* producer: messages pushed (candidates' deadline) */
  int done;      /* producer: set after its last push */
  uint64_t retries, window_full;
  void *nodes; /* the producer's node window, freed after the join */
  int id;
};

/* xthread.c */
__attribute__((format(printf, 1, 2), noreturn)) void xt_die(const char *fmt,
                                                            ...);
uint64_t xt_now_ns(void);
/* Pin the calling thread to @cpu, or do nothing when the run is unpinned. */
void xt_pin(int cpu);
/* Start @fn(@arg) on a new thread (pinned by @fn itself); dies on failure. */
void xt_thread_start(pthread_t *t, void *(*fn)(void *), void *arg);
void xt_thread_join(pthread_t t);

/* A producer's wait for something only another thread can do (a free node,
 * room in the queue, its turn to commit): pause, and every @every rounds
 * give the CPU away. Both producers of a fan-in share CPU 1: without the
 * yield a producer waiting on the other one (preempted) would spin out its
 * whole time slice. */
static inline void xt_backoff(unsigned *rounds, unsigned every) {
  if (++*rounds % every == 0)
    sched_yield();
  else
    ck_pr_stall();
}
#define XT_YIELD_EVERY 1024u

/* Consumer side of a lane: check that @seq is the next one from this
 * producer, and publish the count every XT_PUBLISH messages. The caller must
 * be done with the message's node before calling (the publish lets the
 * producer reuse it). */
static inline void xt_lane_take(struct xt_lane *l, uint64_t seq) {
  if (__builtin_expect(seq != l->expected, 0))
    xt_die("producer %d: got seq %llu, expected %llu", l->id,
           (unsigned long long)seq, (unsigned long long)l->expected);
  l->expected = seq + 1;
  if (seq % XT_PUBLISH == 0) {
    /* Our reads of the node come before the store that frees it; pairs
     * with the load and acquire fence in xt_lane_wait. */
    ck_pr_fence_release();
    ck_pr_store_64(&l->consumed, seq);
  }
}

/* Producer side: wait until the node for @seq is free again. */
static inline void xt_lane_wait(struct xt_lane *l, uint64_t seq) {
  /* Node seq % WINDOW last carried seq - WINDOW: free once consumed. */
  if (__builtin_expect(seq <= l->seen + XT_WINDOW, 1))
    return;
  unsigned rounds = 0;
  l->window_full++;
  while ((l->seen = ck_pr_load_64(&l->consumed)) + XT_WINDOW < seq)
    xt_backoff(&rounds, XT_YIELD_EVERY);
  /* The consumer read the node before its store; order our reuse after. */
  ck_pr_fence_acquire();
}

/* Lanes live in an aligned array: allocate with this (zeroed, ids set,
 * expected = 1), free with free(). */
struct xt_lane *xt_lanes_new(int n);

/* Workloads: fill @r, return normally; die() on any wrong result. */
void xt_axon_stream(const struct xt_params *p, struct xt_result *r);
void xt_axon_post_stream(const struct xt_params *p, struct xt_result *r);
void xt_axon_pingpong(const struct xt_params *p, struct xt_result *r);
void xt_uv_stream(const struct xt_params *p, struct xt_result *r);
void xt_uv_pingpong(const struct xt_params *p, struct xt_result *r);
void xt_cand_ring(const struct xt_params *p, struct xt_result *r);
void xt_cand_stack(const struct xt_params *p, struct xt_result *r);
void xt_cand_exchange(const struct xt_params *p, struct xt_result *r);
void xt_cand_axon(const struct xt_params *p, struct xt_result *r);
void xt_ckring_pingpong(const struct xt_params *p, struct xt_result *r);

#endif /* AXON_BENCH_XTHREAD_H */
