/*
 * heap4 — a standalone 4-ary min-heap of timers, the candidate axon's timing
 * wheel is measured against (bench `timers_candidates`).
 *
 * Built the way libev builds its timer heap (ev.c, "4-heap"): an array of
 * {deadline, timer} pairs, so the comparisons of a sift never touch the timer
 * nodes; the root sits at index HEAP4_ROOT (3) so that the four children of a
 * node share one 64-byte cache line, and the array is kept 64-byte aligned
 * for that to hold; every node stores its index in the array, so stopping a
 * timer is O(log n) without a search. Deadlines are integer milliseconds on
 * the caller's clock, like libuv and axon.
 *
 * Ownership: the caller allocates heap4_timer_t nodes and keeps them alive
 * while they are active; the heap allocates only its array. Not thread-safe.
 * Timers with equal deadlines fire in no particular order (axon guarantees
 * start order; a heap does not).
 */
#ifndef AXON_BENCH_HEAP4_H
#define AXON_BENCH_HEAP4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HEAP4_ROOT 3 /* index of the root; 0 marks an inactive timer */

typedef struct heap4_timer heap4_timer_t;
typedef void (*heap4_cb)(heap4_timer_t *t, void *data);

/* A timer node (24 bytes); the deadline lives in the heap array only. */
struct heap4_timer {
  heap4_cb cb;
  void *data;
  size_t index; /* position in the heap array; 0 while inactive */
};

struct heap4_entry {
  uint64_t deadline; /* cached copy: sifts compare these only */
  heap4_timer_t *timer;
};

typedef struct heap4 {
  struct heap4_entry *raw; /* the allocation */
  struct heap4_entry *a;   /* raw + 0..3 entries: 64-byte aligned */
  size_t n;                /* active timers, at a[ROOT .. ROOT+n) */
  size_t cap;              /* room for this many timers */
  uint64_t now;            /* ms; timeouts are relative to it */
} heap4_t;

/** heap4_init() - empty heap whose clock reads @now (ms). Never fails. */
void heap4_init(heap4_t *h, uint64_t now);

/** heap4_fini() - free the array. Active timers are simply forgotten. */
void heap4_fini(heap4_t *h);

/** heap4_timer_init() - make @t an inactive timer calling @cb(@t, @data). */
void heap4_timer_init(heap4_timer_t *t, heap4_cb cb, void *data);

/**
 * heap4_start() - arm @t @timeout_ms after h->now; re-arms an active timer.
 * A timer started from a callback with timeout 0 fires in the same
 * heap4_run() (no "next iteration" rule; the benchmark never does that).
 * Returns 0 or -ENOMEM (the array could not grow; @t stays as it was).
 */
int heap4_start(heap4_t *h, heap4_timer_t *t, uint64_t timeout_ms);

/** heap4_stop() - disarm @t; a no-op if inactive. */
void heap4_stop(heap4_t *h, heap4_timer_t *t);

/** heap4_active() - true while @t is in the heap. */
static inline bool heap4_active(const heap4_timer_t *t) { return t->index != 0; }

/**
 * heap4_run() - set the clock to @now and fire every timer whose deadline is
 * <= @now, earliest first. A timer is removed before its callback runs, which
 * may start or stop any timer. Returns the number of callbacks run.
 */
size_t heap4_run(heap4_t *h, uint64_t now);

/**
 * heap4_timeout() - ms from @now until the earliest deadline: 0 if one is
 * due, -1 if the heap is empty.
 */
int64_t heap4_timeout(const heap4_t *h, uint64_t now);

/**
 * heap4_verify() - check the heap order and every node's index. Linear.
 * Returns 0, or -1 with a description of the first fault in @why.
 */
int heap4_verify(const heap4_t *h, char *why, size_t why_len);

#endif /* AXON_BENCH_HEAP4_H */
