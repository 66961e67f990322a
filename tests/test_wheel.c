/*
 * The timer wheel against a brute-force model, with the loop's clock driven
 * by the test: random starts (timeouts spread over every wheel level),
 * cancels, restarts from callbacks, small steps and large jumps of time.
 * After each step the fired set and order must equal the model's — every
 * timer with deadline <= now, ordered by (deadline, start sequence) — and
 * ax_loop_verify must hold. The seed is printed; AX_SEED=n replays one.
 */
#include <time.h>

#include "testutil.h"

#include "loop/loop_int.h"

#define NT 512

struct tm_timer {
  ax_source_t *src;
  uint64_t deadline;
  uint64_t seq;
  bool active;
  int64_t again; /* what the callback returns (AX_TIMER_CONTINUE or delay) */
  int cancel;    /* index of a timer the callback stops, or -1 */
};

static struct tm_timer T[NT];
static uint64_t seq_next;
static int fired[NT * 4], nfired;
static ax_loop_t *L;
static uint64_t rng;

static uint64_t rnd(void) { return xorshift(&rng); }

/* Timeouts on every level: 0, a few ms, seconds, hours, years. */
static uint64_t rnd_timeout(void) {
  unsigned bits = (unsigned)(rnd() % 40);
  return bits == 0 ? 0 : rnd() % (UINT64_C(1) << bits);
}

static void model_start(int i, uint64_t timeout) {
  T[i].deadline = L->now + timeout;
  T[i].seq = seq_next++;
  T[i].active = true;
}

static int64_t on_timer(ax_source_t *src, void *data) {
  int i = (int)(intptr_t)data;
  (void)src;
  assert_true(T[i].active);
  assert_true(nfired < NT * 4);
  fired[nfired++] = i;
  T[i].active = false;
  int c = T[i].cancel;
  if (c >= 0 && c != i && T[c].src) {
    ax_source_stop(T[c].src);
    T[c].active = false;
  }
  if (T[i].again >= 0)
    model_start(i, (uint64_t)T[i].again);
  return T[i].again;
}

/* Expected firing order for the wheel advancing to @now. */
static int expect(uint64_t now, int *out) {
  int n = 0;
  for (int i = 0; i < NT; i++)
    if (T[i].active && T[i].deadline <= now)
      out[n++] = i;
  for (int a = 1; a < n; a++) /* insertion sort by (deadline, seq) */
    for (int b = a; b > 0; b--) {
      struct tm_timer *x = &T[out[b - 1]], *y = &T[out[b]];
      if (x->deadline < y->deadline || (x->deadline == y->deadline && x->seq < y->seq))
        break;
      int t = out[b];
      out[b] = out[b - 1];
      out[b - 1] = t;
    }
  return n;
}

static void step(void) {
  int i = (int)(rnd() % NT);
  unsigned op = (unsigned)(rnd() % 10);
  if (op < 4) {
    uint64_t to = rnd_timeout();
    T[i].again = rnd() % 4 == 0 ? (int64_t)(rnd() % 100) : AX_TIMER_CONTINUE;
    T[i].cancel = rnd() % 4 == 0 ? (int)(rnd() % NT) : -1;
    assert_int_equal(ax_timer_start(T[i].src, to, 0), 0);
    model_start(i, to);
  } else if (op < 6) {
    assert_int_equal(ax_source_stop(T[i].src), 0);
    T[i].active = false;
  } else {
    /* Mostly small steps, sometimes a jump over several levels. */
    uint64_t dt = rnd() % 8 == 0 ? rnd() % (UINT64_C(1) << (rnd() % 34)) : rnd() % 70;
    L->now += dt;
    int want[NT];
    int nwant = expect(L->now, want);
    /* A callback that cancels a timer due in the same batch removes it from
     * the expected list: replay the model in order to get the exact list. */
    nfired = 0;
    ax__timers_run(L);
    int k = 0;
    for (int w = 0; w < nwant; w++) {
      if (k < nfired && fired[k] == want[w]) {
        k++;
        continue;
      }
      /* Skipped: legal only if an earlier callback in this batch stopped it. */
      bool cancelled = false;
      for (int f = 0; f < k; f++)
        cancelled |= T[fired[f]].cancel == want[w];
      if (!cancelled) {
        const struct ax__timer *t = (const struct ax__timer *)T[want[w]].src;
        fail_msg("timer %d (deadline %llu) did not fire at %llu (wheel: flags %#x "
                 "pos %#x deadline %llu time %llu)",
                 want[w], (unsigned long long)T[want[w]].deadline,
                 (unsigned long long)L->now, t->h.flags, t->h.pos,
                 (unsigned long long)t->deadline, (unsigned long long)L->wheel.time);
      }
    }
    if (k != nfired)
      fail_msg("%d unexpected firings at %llu (first: timer %d)", nfired - k,
               (unsigned long long)L->now, fired[k]);
  }
  AX_ASSERT_VERIFIED(L);
}

static void test_wheel_model(void **state) {
  (void)state;
  const char *s = getenv("AX_SEED");
  uint64_t seed = s ? strtoull(s, NULL, 10) : (uint64_t)time(NULL);
  printf("seed %llu\n", (unsigned long long)seed);
  rng = seed * 2654435761u + 1;
  L = ax_test_loop();
  for (int i = 0; i < NT; i++) {
    memset(&T[i], 0, sizeof T[i]);
    T[i].cancel = -1;
    assert_int_equal(ax_timer_new(L, on_timer, (void *)(intptr_t)i, &T[i].src), 0);
  }
  for (int n = 0; n < 60000; n++)
    step();
  AX_FREE_LOOP(L);
}

/* Deterministic corner: a jump far past many levels fires everything in
 * deadline order, equal deadlines in start order. */
static void test_wheel_jump_order(void **state) {
  (void)state;
  L = ax_test_loop();
  static const uint64_t timeouts[] = {5000, 70, 70, 1, 300000, 64, 4096, 63, 70};
  int n = (int)(sizeof timeouts / sizeof timeouts[0]);
  for (int i = 0; i < n; i++) {
    memset(&T[i], 0, sizeof T[i]);
    T[i].cancel = -1;
    T[i].again = AX_TIMER_CONTINUE;
    assert_int_equal(ax_timer_new(L, on_timer, (void *)(intptr_t)i, &T[i].src), 0);
    assert_int_equal(ax_timer_start(T[i].src, timeouts[i], 0), 0);
    model_start(i, timeouts[i]);
  }
  nfired = 0;
  L->now += 1000000;
  ax__timers_run(L);
  static const int order[] = {3, 7, 5, 1, 2, 8, 6, 0, 4};
  assert_int_equal(nfired, n);
  for (int i = 0; i < n; i++)
    assert_int_equal(fired[i], order[i]);
  AX_ASSERT_VERIFIED(L);
  AX_FREE_LOOP(L);
}

/* The next-timeout hint is exact on level 0 and a lower bound above. */
static void test_wheel_next(void **state) {
  (void)state;
  L = ax_test_loop();
  assert_int_equal(ax__timers_next(L), -1);
  ax_source_t *a, *b;
  assert_int_equal(ax_timer_new(L, on_timer, (void *)0, &a), 0);
  assert_int_equal(ax_timer_new(L, on_timer, (void *)1, &b), 0);
  assert_int_equal(ax_timer_start(a, 10000, 0), 0);
  int64_t hint = ax__timers_next(L);
  assert_true(hint > 0 && hint <= 10000);
  assert_int_equal(ax_timer_start(b, 3, 0), 0);
  hint = ax__timers_next(L);
  assert_true(hint > 0 && hint <= 3);
  AX_FREE_LOOP(L);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_wheel_model),
      cmocka_unit_test(test_wheel_jump_order),
      cmocka_unit_test(test_wheel_next),
  };
  return cmocka_run_group_tests_name("wheel", tests, NULL, NULL);
}
