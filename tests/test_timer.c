/*
 * Monotonic timers, deferred calls and run modes, on every backend:
 * one-shot and interval timers, rescheduling by return value,
 * AX_TIMER_CONTINUE, same-deadline order, restarts, ax_timer_due_in,
 * -ERANGE, 10,000 random timers in deadline order, defers (once per start,
 * FIFO, no recursion, no blocking while queued), AX_RUN_NOWAIT / ONCE /
 * DEFAULT, ax_loop_alive and ax_source_unref, ax_loop_now / update_time.
 *
 * Bounded: an unreferenced ax timer (watchdog) stops every run that could
 * block; an empty loop's AX_RUN_DEFAULT is bounded by a guard thread.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------ */

/* A timer that records when (loop time) and in which iteration it fired,
 * and returns rets[i] on its i-th call (AX_TIMER_CONTINUE past the list). */
#define MAXFIRE 16

typedef struct trec {
  ax_source_t *src;
  int calls;
  uint64_t at[MAXFIRE];
  uint64_t iter[MAXFIRE];
  int64_t rets[MAXFIRE];
  int nrets;
  int stop_after; /* stop the source at this many calls (0: never) */
  bool active_in_cb;
} trec_t;

static int64_t trec_cb(ax_source_t *src, void *data) {
  trec_t *t = data;
  if (src != t->src)
    fail_msg("timer callback with a wrong source");
  int i = t->calls++;
  if (i < MAXFIRE) {
    t->at[i] = ax_loop_now(ax_source_loop(src));
    t->iter[i] = iterations(ax_source_loop(src));
  }
  t->active_in_cb = ax_source_is_active(src);
  if (t->stop_after && t->calls >= t->stop_after)
    ax_source_stop(src);
  return i < t->nrets ? t->rets[i] : AX_TIMER_CONTINUE;
}

static ax_source_t *trec_new(ax_loop_t *loop, trec_t *t) {
  assert_int_equal(ax_timer_new(loop, trec_cb, t, &t->src), 0);
  assert_int_equal(ax_source_kind(t->src), AX_SOURCE_TIMER);
  assert_false(ax_source_is_active(t->src));
  return t->src;
}

/* ---- one-shot, interval, return values ---------------------------------- */

static void test_timeout_once(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  trec_t t = {0};
  trec_new(loop, &t);
  ax_loop_update_time(loop);
  uint64_t t0 = ax_loop_now(loop), m0 = mono_ms();
  assert_int_equal(ax_timer_start(t.src, 50, 0), 0);
  assert_true(ax_source_is_active(t.src));
  assert_true(ax_loop_alive(loop));
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0); /* nothing left */
  assert_false(fired);
  uint64_t m1 = mono_ms();
  assert_int_equal(t.calls, 1);
  if (t.at[0] < t0 + 50)
    fail_msg("fired at loop time +%llu ms, expected >= 50",
             (unsigned long long)(t.at[0] - t0));
  assert_true(m1 - m0 >= 49); /* 1 ms of slack: ms clocks floor */
  assert_true(m1 - m0 < 2000);
  assert_false(ax_source_is_active(t.src));
  assert_false(ax_loop_alive(loop));
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.timers_fired, 1);
  run_for(loop, 60);
  assert_int_equal(t.calls, 1);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  ax_source_free(t.src);
  AX_FREE_LOOP(loop);
}

static void test_interval(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  trec_t t = {.stop_after = 5};
  trec_new(loop, &t);
  ax_loop_update_time(loop);
  uint64_t t0 = ax_loop_now(loop);
  assert_int_equal(ax_timer_start(t.src, 10, 10), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(t.calls, 5);
  for (int i = 0; i < 5; i++) {
    if (t.at[i] < t0 + 10 * (uint64_t)(i + 1))
      fail_msg("fire %d at +%llu ms, expected >= %d", i,
               (unsigned long long)(t.at[i] - t0), 10 * (i + 1));
    if (i > 0 && t.iter[i] <= t.iter[i - 1])
      fail_msg("interval fired twice in one iteration");
  }
  assert_false(ax_source_is_active(t.src));
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  ax_source_free(t.src);
  AX_FREE_LOOP(loop);
}

/* A one-shot timer rescheduled by its return value, then CONTINUE. */
static void test_reschedule_by_return(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  trec_t t = {.rets = {20, 30}, .nrets = 2};
  trec_new(loop, &t);
  assert_int_equal(ax_timer_start(t.src, 1, 0), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(t.calls, 3);
  assert_true(t.at[1] >= t.at[0] + 20);
  assert_true(t.at[2] >= t.at[1] + 30);
  assert_false(ax_source_is_active(t.src));

  /* An interval timer: a returned delay overrides the next fire only. */
  trec_t iv = {.rets = {100}, .nrets = 1, .stop_after = 3};
  trec_new(loop, &iv);
  assert_int_equal(ax_timer_start(iv.src, 5, 10), 0);
  ax_source_free(dog);
  dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(iv.calls, 3);
  if (iv.at[1] < iv.at[0] + 100)
    fail_msg("returned delay 100 ignored: next fire after %llu ms",
             (unsigned long long)(iv.at[1] - iv.at[0]));
  /* Then the 10 ms interval again, counted from the fire time or from the
   * previous deadline (drift-free): both readings of "every repeat_ms". */
  assert_true(iv.at[2] >= iv.at[0] + 100 + 10);
  assert_true(iv.at[2] < iv.at[1] + 100);

  /* Returning 0: again in the next iteration, never in the same one. */
  trec_t z = {.rets = {0, 0, 0}, .nrets = 3};
  trec_new(loop, &z);
  assert_int_equal(ax_timer_start(z.src, 0, 0), 0);
  ax_source_free(dog);
  dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(z.calls, 4);
  for (int i = 1; i < 4; i++)
    if (z.iter[i] <= z.iter[i - 1])
      fail_msg("delay 0 re-ran the timer within the same iteration");
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  ax_source_free(t.src);
  ax_source_free(iv.src);
  ax_source_free(z.src);
  AX_FREE_LOOP(loop);
}

/* AX_TIMER_CONTINUE keeps the configured behaviour. */
static void test_continue_semantics(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  trec_t once = {0}, iv = {0};
  trec_new(loop, &once);
  trec_new(loop, &iv);
  assert_int_equal(ax_timer_start(once.src, 5, 0), 0);
  assert_int_equal(ax_timer_start(iv.src, 5, 5), 0);
  assert_true(RUN_UNTIL(loop, iv.calls >= 4, 3000));
  assert_int_equal(once.calls, 1);
  assert_false(ax_source_is_active(once.src));
  assert_true(ax_source_is_active(iv.src));
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(once.src);
  ax_source_free(iv.src);
  AX_FREE_LOOP(loop);
}

/* Timers due at the same time fire in start order. */
typedef struct order {
  int seq[256];
  int n;
} order_t;

typedef struct oarg {
  order_t *o;
  int id;
} oarg_t;

static int64_t order_cb(ax_source_t *src, void *data) {
  (void)src;
  oarg_t *a = data;
  if (a->o->n < 256)
    a->o->seq[a->o->n] = a->id;
  a->o->n++;
  return AX_TIMER_CONTINUE;
}

static void test_same_deadline_order(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  enum { N = 100 };
  static oarg_t arg[N];
  static ax_source_t *src[N];
  order_t o = {0};
  for (int i = 0; i < N; i++) {
    arg[i] = (oarg_t){&o, i};
    assert_int_equal(ax_timer_new(loop, order_cb, &arg[i], &src[i]), 0);
  }
  /* Started in a scrambled order; no update of the loop time in between, so
   * all share one deadline: they must fire in the order started. */
  int perm[N];
  for (int i = 0; i < N; i++)
    perm[i] = (i * 37) % N;
  ax_loop_update_time(loop);
  for (int i = 0; i < N; i++)
    assert_int_equal(ax_timer_start(src[perm[i]], 15, 0), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(o.n, N);
  for (int i = 0; i < N; i++)
    if (o.seq[i] != perm[i])
      fail_msg("position %d: timer %d fired, expected %d", i, o.seq[i],
               perm[i]);

  /* Mixed deadlines, with ties: 20,10,20,10,0 -> ids 4, 1, 3, 0, 2 ... */
  o.n = 0;
  static const uint64_t tmo[5] = {20, 10, 20, 10, 0};
  ax_loop_update_time(loop);
  for (int i = 0; i < 5; i++)
    assert_int_equal(ax_timer_start(src[i], tmo[i], 0), 0);
  /* ... but restarting 1 with the same timeout moves it behind 3: the
   * order is that of the last start. Expected: 4, 3, 1, 0, 2. */
  assert_int_equal(ax_timer_start(src[1], 10, 0), 0);
  ax_source_free(dog);
  dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(o.n, 5);
  static const int want[5] = {4, 3, 1, 0, 2};
  for (int i = 0; i < 5; i++)
    if (o.seq[i] != want[i])
      fail_msg("mixed: position %d is timer %d, expected %d", i, o.seq[i],
               want[i]);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  for (int i = 0; i < N; i++)
    ax_source_free(src[i]);
  AX_FREE_LOOP(loop);
}

/* Restarting an active timer re-arms it (earlier or later), firing once. */
static void test_restart_active(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  trec_t t = {0};
  trec_new(loop, &t);
  ax_loop_update_time(loop);
  uint64_t t0 = ax_loop_now(loop);
  assert_int_equal(ax_timer_start(t.src, 10000, 0), 0);
  assert_int_equal(ax_timer_start(t.src, 20, 0), 0); /* earlier */
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(t.calls, 1);
  assert_true(t.at[0] >= t0 + 20 && t.at[0] < t0 + 3000);

  ax_loop_update_time(loop);
  t0 = ax_loop_now(loop);
  assert_int_equal(ax_timer_start(t.src, 10, 0), 0);
  assert_int_equal(ax_timer_start(t.src, 80, 0), 0); /* later */
  ax_source_free(dog);
  dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(t.calls, 2);
  if (t.at[1] < t0 + 80)
    fail_msg("restarted timer fired at +%llu, expected >= 80 (old deadline "
             "kept?)",
             (unsigned long long)(t.at[1] - t0));

  /* Interval restarted as a one-shot: fires once. */
  assert_int_equal(ax_timer_start(t.src, 5, 5), 0);
  assert_int_equal(ax_timer_start(t.src, 5, 0), 0);
  ax_source_free(dog);
  dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(t.calls, 3);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  ax_source_free(t.src);
  AX_FREE_LOOP(loop);
}

static void test_due_in(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  trec_t t = {0};
  trec_new(loop, &t);
  uint64_t ms = 12345;
  assert_int_equal(ax_timer_due_in(t.src, &ms), -EINVAL); /* inactive */
  ax_loop_update_time(loop);
  assert_int_equal(ax_timer_start(t.src, 500, 0), 0);
  assert_int_equal(ax_timer_due_in(t.src, &ms), 0);
  assert_in_range(ms, 450, 500);
  assert_int_equal(ax_timer_start(t.src, 0, 0), 0);
  ms = 12345;
  assert_int_equal(ax_timer_due_in(t.src, &ms), 0);
  assert_int_equal(ms, 0);

  /* Huge timeouts are accepted and do not fire. */
  assert_int_equal(ax_timer_start(t.src, UINT64_MAX, 0), 0);
  assert_int_equal(ax_timer_due_in(t.src, &ms), 0);
  assert_true(ms > (uint64_t)1000 * 3600 * 24 * 365);
  assert_int_equal(ax_timer_start(t.src, (uint64_t)1 << 40, 0), 0);
  assert_int_equal(ax_timer_due_in(t.src, &ms), 0);
  assert_true(ms > ((uint64_t)1 << 40) - 1000);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(t.calls, 0);
  AX_ASSERT_VERIFIED(loop);

  assert_int_equal(ax_source_stop(t.src), 0);
  assert_int_equal(ax_timer_due_in(t.src, &ms), -EINVAL);

  ax_source_free(t.src);
  AX_FREE_LOOP(loop);
}

static void noop_defer_cb(ax_source_t *src, void *data) {
  (void)src;
  (void)data;
}

static void test_due_in_kinds(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  ax_source_t *d = NULL;
  assert_int_equal(ax_defer_new(loop, noop_defer_cb, NULL, &d), 0);
  assert_int_equal(ax_defer_start(d), 0);
  uint64_t ms = 0;
  assert_int_equal(ax_timer_due_in(d, &ms), AX_EKIND);
  assert_int_equal(ax_timer_due_in(NULL, &ms), -EINVAL);
  /* Date timers: ms until the wall-clock date. */
  trec_t dt = {0};
  assert_int_equal(ax_date_new(loop, trec_cb, &dt, &dt.src), 0);
  assert_int_equal(ax_date_start(dt.src, ax_realtime_ms(loop) + 5000), 0);
  assert_int_equal(ax_timer_due_in(dt.src, &ms), 0);
  assert_in_range(ms, 4000, 5000);
  ax_source_free(dt.src);
  ax_source_free(d);
  AX_FREE_LOOP(loop);
}

static void test_erange(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  trec_t t = {0};
  trec_new(loop, &t);
  assert_int_equal(ax_timer_start(t.src, 1, (uint64_t)UINT32_MAX + 1), -ERANGE);
  assert_false(ax_source_is_active(t.src));
  assert_int_equal(ax_timer_start(t.src, 1, UINT64_MAX), -ERANGE);
  assert_false(ax_source_is_active(t.src));
  assert_int_equal(ax_timer_start(NULL, 1, 0), -EINVAL);
  run_for(loop, 20);
  assert_int_equal(t.calls, 0); /* an error never calls the callback */
  assert_int_equal(ax_timer_start(t.src, 100000, UINT32_MAX), 0);
  assert_true(ax_source_is_active(t.src));
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(t.src);
  AX_FREE_LOOP(loop);
}

/* 10,000 timers with random timeouts fire in deadline order. */
#define NT 10000

typedef struct fire {
  uint64_t deadline, at;
  int id;
} fire_t;

typedef struct many {
  fire_t log[NT];
  int n;
  uint64_t deadline[NT];
  uint32_t seq[NT];
} many_t;

typedef struct marg {
  many_t *m;
  int id;
} marg_t;

static int64_t many_cb(ax_source_t *src, void *data) {
  marg_t *a = data;
  many_t *m = a->m;
  if (m->n < NT)
    m->log[m->n] =
        (fire_t){m->deadline[a->id], ax_loop_now(ax_source_loop(src)), a->id};
  m->n++;
  return AX_TIMER_CONTINUE;
}

static void test_many_random(void **state) {
  (void)state;
  static many_t m;
  static marg_t arg[NT];
  static ax_source_t *src[NT];
  memset(&m, 0, sizeof m);
  uint64_t seed = (uint64_t)time(NULL) ^ 0x9e3779b97f4a7c15u;
  const char *env = getenv("AX_SEED");
  if (env != NULL)
    seed = strtoull(env, NULL, 0);
  printf("  seed %llu (AX_SEED to replay)\n", (unsigned long long)seed);
  uint64_t rng = seed | 1;
  ax_loop_t *loop = ax_test_loop();
  ax_loop_update_time(loop);
  for (int i = 0; i < NT; i++) {
    arg[i] = (marg_t){&m, i};
    assert_int_equal(ax_timer_new(loop, many_cb, &arg[i], &src[i]), 0);
  }
  /* Started in three waves with the loop time refreshed between them, so
   * deadlines interleave across wheel levels; some restarted. */
  for (int i = 0; i < NT; i++) {
    if (i % 3333 == 0)
      ax_loop_update_time(loop);
    uint64_t r = xorshift(&rng);
    uint64_t tmo = (r & 7) == 0 ? (r >> 8) % 5 : (r >> 8) % 300;
    assert_int_equal(ax_timer_start(src[i], tmo, 0), 0);
    m.deadline[i] = ax_loop_now(loop) + tmo;
    m.seq[i] = (uint32_t)i;
  }
  uint32_t seq = NT;
  for (int k = 0; k < NT / 10; k++) {
    int i = (int)(xorshift(&rng) % NT);
    uint64_t tmo = xorshift(&rng) % 300;
    assert_int_equal(ax_timer_start(src[i], tmo, 0), 0);
    m.deadline[i] = ax_loop_now(loop) + tmo;
    m.seq[i] = seq++;
  }
  AX_ASSERT_VERIFIED(loop);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 10000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(m.n, NT);
  static bool seen[NT];
  memset(seen, 0, sizeof seen);
  for (int k = 0; k < NT; k++) {
    fire_t *f = &m.log[k];
    if (seen[f->id])
      fail_msg("timer %d fired twice", f->id);
    seen[f->id] = true;
    if (f->at < f->deadline)
      fail_msg("timer %d fired at %llu before its deadline %llu", f->id,
               (unsigned long long)f->at, (unsigned long long)f->deadline);
    if (k > 0) {
      fire_t *p = &m.log[k - 1];
      if (f->deadline < p->deadline)
        fail_msg("fire %d: deadline %llu after deadline %llu (seed %llu)", k,
                 (unsigned long long)f->deadline,
                 (unsigned long long)p->deadline, (unsigned long long)seed);
      if (f->deadline == p->deadline && m.seq[f->id] < m.seq[p->id])
        fail_msg("fire %d: equal deadlines out of start order (seed %llu)", k,
                 (unsigned long long)seed);
      if (f->at < p->at)
        fail_msg("fire %d: loop time went backwards", k);
    }
  }
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  for (int i = 0; i < NT; i++)
    ax_source_free(src[i]);
  AX_FREE_LOOP(loop);
}

/* ---- defers ------------------------------------------------------------- */

typedef struct drec {
  int order[64];
  int n;
  int calls[8];
  uint64_t iter[8];
  int depth, max_depth;
  int restarts; /* times the callback restarts itself */
} drec_t;

typedef struct darg {
  drec_t *d;
  int id;
} darg_t;

static void drec_cb(ax_source_t *src, void *data) {
  darg_t *a = data;
  drec_t *d = a->d;
  d->depth++;
  if (d->depth > d->max_depth)
    d->max_depth = d->depth;
  if (d->n < 64)
    d->order[d->n] = a->id;
  d->n++;
  if (d->calls[a->id] < 8)
    d->iter[d->calls[a->id]] = iterations(ax_source_loop(src));
  d->calls[a->id]++;
  if (ax_source_is_active(src))
    fail_msg("a running deferred call is still active");
  if (d->restarts > 0) {
    d->restarts--;
    assert_int_equal(ax_defer_start(src), 0);
    assert_true(ax_source_is_active(src));
  }
  d->depth--;
}

static void test_defer_once_per_start(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  drec_t d = {0};
  darg_t a = {&d, 0};
  ax_source_t *s = NULL;
  assert_int_equal(ax_defer_new(loop, drec_cb, &a, &s), 0);
  assert_int_equal(ax_source_kind(s), AX_SOURCE_DEFER);
  assert_false(ax_source_is_active(s));
  assert_int_equal(ax_defer_start(s), 0);
  assert_int_equal(ax_defer_start(s), 0); /* queued: no-op */
  assert_true(ax_source_is_active(s));
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.calls[0], 1);
  assert_false(ax_source_is_active(s));
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.calls[0], 1);
  assert_int_equal(ax_defer_start(s), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.calls[0], 2);
  /* Stopped while queued: does not run. */
  assert_int_equal(ax_defer_start(s), 0);
  assert_int_equal(ax_source_stop(s), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.calls[0], 2);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.defers_run, 2);
  assert_int_equal(ax_defer_start(NULL), -EINVAL);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(s);
  AX_FREE_LOOP(loop);
}

static void test_defer_fifo(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  drec_t d = {0};
  darg_t a[8];
  ax_source_t *s[8];
  for (int i = 0; i < 8; i++) {
    a[i] = (darg_t){&d, i};
    assert_int_equal(ax_defer_new(loop, drec_cb, &a[i], &s[i]), 0);
  }
  static const int start[8] = {5, 2, 7, 0, 1, 6, 3, 4};
  for (int i = 0; i < 8; i++)
    assert_int_equal(ax_defer_start(s[start[i]]), 0);
  assert_int_equal(ax_defer_start(s[5]), 0); /* already queued: stays first */
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.n, 8);
  for (int i = 0; i < 8; i++)
    assert_int_equal(d.order[i], start[i]);
  AX_ASSERT_VERIFIED(loop);
  for (int i = 0; i < 8; i++)
    ax_source_free(s[i]);
  AX_FREE_LOOP(loop);
}

/* A defer restarting itself runs again in a later iteration, not inside the
 * deferred phase that queued it. */
static void test_defer_self_restart(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  drec_t d = {.restarts = 3};
  darg_t a = {&d, 0};
  ax_source_t *s = NULL;
  assert_int_equal(ax_defer_new(loop, drec_cb, &a, &s), 0);
  assert_int_equal(ax_defer_start(s), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.calls[0], 1); /* not re-run within the same phase */
  assert_true(ax_source_is_active(s));
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(d.calls[0], 4);
  assert_int_equal(d.max_depth, 1);
  for (int i = 1; i < 4; i++)
    assert_true(d.iter[i] > d.iter[i - 1]);
  assert_false(ax_source_is_active(s));
  ax_source_free(dog);
  ax_source_free(s);
  AX_FREE_LOOP(loop);
}

/* While a defer is queued the loop does not block, even with a referenced
 * I/O source that is never ready. */
static void noop_io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)src;
  (void)fd;
  (void)revents;
  (void)data;
}

static void test_defer_no_block(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  assert_int_equal(
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv),
      0);
  ax_source_t *io = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], noop_io_cb, NULL, &io), 0);
  assert_int_equal(ax_io_start(io, AX_READABLE), 0);
  drec_t d = {.restarts = 5};
  darg_t a = {&d, 0};
  ax_source_t *s = NULL;
  assert_int_equal(ax_defer_new(loop, drec_cb, &a, &s), 0);
  assert_int_equal(ax_defer_start(s), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 2000, &fired);
  uint64_t m0 = mono_ms();
  for (int i = 0; i < 6 && !fired; i++)
    assert_int_equal(ax_loop_run(loop, AX_RUN_ONCE), 0);
  uint64_t m1 = mono_ms();
  assert_false(fired);
  assert_int_equal(d.calls[0], 6);
  if (m1 - m0 > 500)
    fail_msg("6 ONCE iterations with a queued defer took %llu ms",
             (unsigned long long)(m1 - m0));
  ax_source_free(dog);
  ax_source_free(s);
  ax_source_free(io);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* ---- run modes, alive, ref ---------------------------------------------- */

static void test_run_nowait(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  trec_t t = {0};
  trec_new(loop, &t);
  ax_loop_update_time(loop);
  assert_int_equal(ax_timer_start(t.src, 1000, 0), 0);
  uint64_t m0 = mono_ms();
  uint64_t it0 = iterations(loop);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  uint64_t m1 = mono_ms();
  assert_true(m1 - m0 < 200);
  assert_int_equal(t.calls, 0);
  assert_int_equal(iterations(loop), it0 + 1);
  assert_true(ax_source_is_active(t.src));
  ax_source_free(t.src);
  AX_FREE_LOOP(loop);
}

static void test_run_once(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  trec_t t = {0};
  trec_new(loop, &t);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  /* One ONCE iteration blocks until the timer and runs it. 70 and 300 ms:
   * timeouts past the first level of a timing wheel (64 or 256 slots),
   * where a wait bounded by a slot boundary ends before the deadline. */
  static const uint64_t tmo[2] = {70, 300};
  for (int k = 0; k < 2; k++) {
    ax_loop_update_time(loop);
    uint64_t t0 = ax_loop_now(loop), m0 = mono_ms();
    assert_int_equal(ax_timer_start(t.src, tmo[k], 0), 0);
    uint64_t it0 = iterations(loop);
    assert_int_equal(ax_loop_run(loop, AX_RUN_ONCE), 0);
    uint64_t m1 = mono_ms();
    assert_false(fired);
    if (t.calls != k + 1) {
      ax_source_free(dog);
      ax_source_free(t.src);
      AX_FREE_LOOP(loop);
      fail_msg("AX_RUN_ONCE returned after %llu ms without firing the %llu "
               "ms timer",
               (unsigned long long)(m1 - m0), (unsigned long long)tmo[k]);
    }
    assert_true(t.at[k] >= t0 + tmo[k]);
    assert_true(m1 - m0 >= tmo[k] - 1);
    /* ONCE may take more than one wait to get there (the wheel's timeout
     * hint is a lower bound above its first level), never zero. */
    assert_true(iterations(loop) >= it0 + 1);
  }
  ax_source_free(dog);

  /* ONCE with nothing live does not block (only an unreferenced timer). */
  assert_int_equal(ax_timer_start(t.src, 1000, 0), 0);
  ax_source_unref(t.src);
  assert_false(ax_loop_alive(loop));
  dog = dog_new(loop, 3000, &fired);
  uint64_t m0 = mono_ms();
  assert_int_equal(ax_loop_run(loop, AX_RUN_ONCE), 0);
  assert_false(fired);
  assert_true(mono_ms() - m0 < 500);
  assert_int_equal(t.calls, 2);
  ax_source_free(dog);
  ax_source_free(t.src);
  AX_FREE_LOOP(loop);
}

/* A stop from a callback during an AX_RUN_ONCE run does not leak into the
 * next AX_RUN_DEFAULT run (the reading tested: ax_loop_run consumes it). */
static int64_t stop_cb(ax_source_t *src, void *data) {
  (*(int *)data)++;
  ax_loop_stop(ax_source_loop(src));
  return AX_TIMER_CONTINUE;
}

static void test_stop_consumed_by_once(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int n = 0;
  ax_source_t *s = NULL;
  assert_int_equal(ax_timer_new(loop, stop_cb, &n, &s), 0);
  assert_int_equal(ax_timer_start(s, 0, 0), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_ONCE), 0);
  assert_int_equal(n, 1);
  trec_t t = {.stop_after = 3};
  trec_new(loop, &t);
  assert_int_equal(ax_timer_start(t.src, 1, 1), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(t.calls, 3);
  ax_source_free(dog);
  ax_source_free(t.src);
  ax_source_free(s);
  AX_FREE_LOOP(loop);
}

static void test_alive_and_unref(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  assert_false(ax_loop_alive(loop));
  guard_start("ax_loop_run(DEFAULT) on an empty loop", 10);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  guard_stop();

  trec_t t = {0};
  trec_new(loop, &t);
  assert_false(ax_loop_alive(loop)); /* inactive */
  assert_int_equal(ax_timer_start(t.src, 1000, 0), 0);
  assert_true(ax_loop_alive(loop));
  ax_source_unref(t.src);
  ax_source_unref(t.src); /* idempotent */
  assert_false(ax_loop_alive(loop));
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.sources, 1);
  assert_int_equal(info.active, 1);
  assert_int_equal(info.referenced, 0);
  ax_source_ref(t.src);
  assert_true(ax_loop_alive(loop));
  ax_source_ref(t.src);
  ax_source_unref(t.src); /* one unref after two refs: unreferenced */
  assert_false(ax_loop_alive(loop));

  /* An unreferenced active timer alone: DEFAULT returns at once. */
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  uint64_t m0 = mono_ms();
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_true(mono_ms() - m0 < 500);
  assert_int_equal(t.calls, 0);
  assert_true(ax_source_is_active(t.src));

  /* Referenced again: it keeps the loop running until it fired. */
  ax_source_ref(t.src);
  assert_int_equal(ax_timer_start(t.src, 30, 0), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(t.calls, 1);
  assert_false(ax_loop_alive(loop));
  /* Stop of a referenced source: not alive. */
  assert_int_equal(ax_timer_start(t.src, 1000, 0), 0);
  assert_true(ax_loop_alive(loop));
  assert_int_equal(ax_source_stop(t.src), 0);
  assert_false(ax_loop_alive(loop));
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  ax_source_free(t.src);
  AX_FREE_LOOP(loop);
}

static void test_now_monotonic(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  ax_loop_update_time(loop);
  uint64_t prev = ax_loop_now(loop);
  /* The loop's time is CLOCK_MONOTONIC in ms (coarse clocks allowed). */
  int64_t diff = (int64_t)prev - (int64_t)mono_ms();
  if (diff < -20 || diff > 20)
    fail_msg("ax_loop_now %llu vs CLOCK_MONOTONIC %llu ms",
             (unsigned long long)prev, (unsigned long long)mono_ms());
  for (int i = 0; i < 100000; i++) {
    ax_loop_update_time(loop);
    uint64_t now = ax_loop_now(loop);
    assert_true(now >= prev);
    prev = now;
  }
  /* Cached: unchanged without an update, even as the clock moves on. */
  uint64_t cached = ax_loop_now(loop);
  uint64_t m0 = mono_ms();
  long spins = 0;
  while (mono_ms() - m0 < 25 && spins < 100000000L)
    spins++;
  assert_int_equal(ax_loop_now(loop), cached);
  ax_loop_update_time(loop);
  assert_true(ax_loop_now(loop) >= cached + 20);
  /* Refreshed by an iteration too. */
  cached = ax_loop_now(loop);
  m0 = mono_ms();
  while (mono_ms() - m0 < 15 && spins < 200000000L)
    spins++;
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_true(ax_loop_now(loop) >= cached + 10);
  AX_FREE_LOOP(loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_timeout_once),
      cmocka_unit_test(test_interval),
      cmocka_unit_test(test_reschedule_by_return),
      cmocka_unit_test(test_continue_semantics),
      cmocka_unit_test(test_same_deadline_order),
      cmocka_unit_test(test_restart_active),
      cmocka_unit_test(test_due_in),
      cmocka_unit_test(test_due_in_kinds),
      cmocka_unit_test(test_erange),
      cmocka_unit_test(test_many_random),
      cmocka_unit_test(test_defer_once_per_start),
      cmocka_unit_test(test_defer_fifo),
      cmocka_unit_test(test_defer_self_restart),
      cmocka_unit_test(test_defer_no_block),
      cmocka_unit_test(test_run_nowait),
      cmocka_unit_test(test_run_once),
      cmocka_unit_test(test_stop_consumed_by_once),
      cmocka_unit_test(test_alive_and_unref),
      cmocka_unit_test(test_now_monotonic),
  };
  return AX_RUN_ON_BACKENDS(tests);
}
