/*
 * Date timers, signals, file-system watches and wake sources, on every
 * backend.
 *
 * Dates: a real date 100 ms ahead and one in the past; with an injected
 * clock (ax_loop_options_t.realtime_ms) a simulated +1 h step followed by
 * ax_loop_clock_changed() fires a date an hour away at once, a -1 h step
 * delays one. The loop's own path for real steps of CLOCK_REALTIME (timerfd
 * with TFD_TIMER_CANCEL_ON_SET reporting ECANCELED) cannot be exercised here:
 * it needs the machine's clock changed (clock_settime, CAP_SYS_TIME), which
 * a test must not do; reliability anchor R18 keeps it for a VM run.
 *
 * Signals: SIGUSR1 and SIGUSR2 are blocked in main() before any thread
 * exists (as ax_signal_start requires), so no thread takes them by default
 * action; every test consumes what it raises.
 *
 * Bounded: RUN_UNTIL() and the thread loops use unreferenced ax timers as
 * watchdogs that stop the loop; tests then fail on the unmet condition.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------ */

static int64_t real_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- date timers -------------------------------------------------------- */

typedef struct drec {
  ax_source_t *src;
  int calls;
  int64_t wall[8]; /* the loop's wall clock at each call */
  int64_t real[8]; /* CLOCK_REALTIME at each call */
  uint64_t mono[8];
  int64_t rets[8];
  int nrets;
  bool active_in_cb;
} drec_t;

static int64_t date_cb(ax_source_t *src, void *data) {
  drec_t *d = data;
  int i = d->calls++;
  if (i < 8) {
    d->wall[i] = ax_realtime_ms(ax_source_loop(src));
    d->real[i] = real_ms();
    d->mono[i] = mono_ms();
  }
  d->active_in_cb = ax_source_is_active(src);
  return i < d->nrets ? d->rets[i] : AX_TIMER_CONTINUE;
}

static void test_date_real_clock(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int64_t diff = ax_realtime_ms(loop) - real_ms();
  assert_true(diff > -50 && diff < 50);
  drec_t d = {0};
  assert_int_equal(ax_date_new(loop, date_cb, &d, &d.src), 0);
  assert_int_equal(ax_source_kind(d.src), AX_SOURCE_DATE);
  int64_t when = real_ms() + 100;
  assert_int_equal(ax_date_start(d.src, when), 0);
  assert_true(ax_source_is_active(d.src));
  assert_true(ax_loop_alive(loop));
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(d.calls, 1);
  if (d.real[0] < when)
    fail_msg("date fired %lld ms early (CLOCK_REALTIME)",
             (long long)(when - d.real[0]));
  assert_true(d.real[0] < when + 1000);
  assert_false(ax_source_is_active(d.src));
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.timers_fired, 1);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  ax_source_free(d.src);
  AX_FREE_LOOP(loop);
}

static void test_date_in_past(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  drec_t d = {0};
  assert_int_equal(ax_date_new(loop, date_cb, &d, &d.src), 0);
  assert_int_equal(ax_date_start(d.src, real_ms() - 10000), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.calls, 1);
  assert_false(ax_source_is_active(d.src));
  assert_int_equal(ax_date_start(d.src, 0), 0); /* the epoch */
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.calls, 2);
  assert_int_equal(ax_date_start(NULL, 0), -EINVAL);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(d.src);
  AX_FREE_LOOP(loop);
}

/* Injected wall clock: CLOCK_MONOTONIC plus an offset the test steps. */
typedef struct fake_clock {
  int64_t base;   /* wall time the fake clock starts at */
  int64_t offset; /* simulated steps */
  uint64_t mono0;
  int calls;
} fake_clock_t;

static int64_t fake_now(void *ctx) {
  fake_clock_t *c = ctx;
  c->calls++;
  return c->base + (int64_t)(mono_ms() - c->mono0) + c->offset;
}

static ax_loop_t *fake_loop(fake_clock_t *c) {
  c->base = 1700000000000; /* far from the real clock on purpose */
  c->offset = 0;
  c->mono0 = mono_ms();
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = ax_test_backend;
  o.realtime_ms = fake_now;
  o.clock_ctx = c;
  ax_loop_t *loop = NULL;
  assert_int_equal(ax_loop_new(&o, &loop), 0);
  return loop;
}

typedef struct stepper {
  fake_clock_t *clock;
  int64_t step;
  uint64_t at_mono;
  drec_t *watch; /* calls of the date when the step happened */
  int calls_at_step;
} stepper_t;

static int64_t step_cb(ax_source_t *src, void *data) {
  stepper_t *s = data;
  s->calls_at_step = s->watch->calls;
  s->clock->offset += s->step;
  s->at_mono = mono_ms();
  ax_loop_clock_changed(ax_source_loop(src));
  return AX_TIMER_CONTINUE;
}

static void test_date_clock_step_forward(void **state) {
  (void)state;
  fake_clock_t c = {0};
  ax_loop_t *loop = fake_loop(&c);
  int64_t w0 = ax_realtime_ms(loop);
  assert_true(c.calls > 0); /* the injected clock is used */
  assert_true(w0 >= c.base && w0 < c.base + 1000);

  drec_t d = {0};
  assert_int_equal(ax_date_new(loop, date_cb, &d, &d.src), 0);
  int64_t when = w0 + 3600 * 1000;
  assert_int_equal(ax_date_start(d.src, when), 0);
  uint64_t ms = 0;
  assert_int_equal(ax_timer_due_in(d.src, &ms), 0);
  assert_in_range(ms, 3590 * 1000, 3600 * 1000);

  stepper_t st = {.clock = &c, .step = 3600 * 1000, .watch = &d};
  ax_source_t *step = NULL;
  assert_int_equal(ax_timer_new(loop, step_cb, &st, &step), 0);
  assert_int_equal(ax_timer_start(step, 30, 0), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  uint64_t m0 = mono_ms();
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  uint64_t m1 = mono_ms();
  assert_false(fired);
  assert_int_equal(st.calls_at_step, 0); /* not before the step */
  assert_int_equal(d.calls, 1);
  assert_true(d.wall[0] >= when);
  if (d.mono[0] - st.at_mono > 200)
    fail_msg("date fired %llu ms after the +1 h step",
             (unsigned long long)(d.mono[0] - st.at_mono));
  assert_true(m1 - m0 < 1000);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  ax_source_free(step);
  ax_source_free(d.src);
  AX_FREE_LOOP(loop);
}

static void test_date_clock_step_backward(void **state) {
  (void)state;
  fake_clock_t c = {0};
  ax_loop_t *loop = fake_loop(&c);
  drec_t d = {0};
  assert_int_equal(ax_date_new(loop, date_cb, &d, &d.src), 0);
  int64_t when = ax_realtime_ms(loop) + 100;
  assert_int_equal(ax_date_start(d.src, when), 0);

  /* At 20 ms the clock steps back an hour: the date is an hour away again. */
  stepper_t back = {.clock = &c, .step = -3600 * 1000, .watch = &d};
  ax_source_t *tb = NULL;
  assert_int_equal(ax_timer_new(loop, step_cb, &back, &tb), 0);
  assert_int_equal(ax_timer_start(tb, 20, 0), 0);
  /* At 400 ms it steps forward again: the date is then past and fires. */
  stepper_t fwd = {.clock = &c, .step = 3600 * 1000, .watch = &d};
  ax_source_t *tf = NULL;
  assert_int_equal(ax_timer_new(loop, step_cb, &fwd, &tf), 0);
  assert_int_equal(ax_timer_start(tf, 400, 0), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(back.calls_at_step, 0);
  if (fwd.calls_at_step != 0)
    fail_msg("date fired although the clock had stepped back an hour");
  assert_int_equal(d.calls, 1);
  assert_true(d.wall[0] >= when);
  assert_true(d.mono[0] >= fwd.at_mono);
  assert_true(d.mono[0] - fwd.at_mono < 200);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  ax_source_free(tb);
  ax_source_free(tf);
  ax_source_free(d.src);
  AX_FREE_LOOP(loop);
}

/* A delay returned by a date callback re-arms it at wall-clock now + delay. */
static void test_date_rearm_by_return(void **state) {
  (void)state;
  fake_clock_t c = {0};
  ax_loop_t *loop = fake_loop(&c);
  drec_t d = {.rets = {50}, .nrets = 1};
  assert_int_equal(ax_date_new(loop, date_cb, &d, &d.src), 0);
  assert_int_equal(ax_date_start(d.src, ax_realtime_ms(loop) + 10), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(d.calls, 2);
  assert_true(d.wall[1] >= d.wall[0] + 50);
  assert_false(ax_source_is_active(d.src));
  ax_source_free(dog);
  ax_source_free(d.src);
  AX_FREE_LOOP(loop);
}

/* Dates fire in date order, whatever the start order. */
static void test_date_order(void **state) {
  (void)state;
  fake_clock_t c = {0};
  ax_loop_t *loop = fake_loop(&c);
  enum { N = 6 };
  drec_t d[N];
  memset(d, 0, sizeof d);
  static const int64_t off[N] = {60, 10, 40, 0, 20, 10};
  int64_t w = ax_realtime_ms(loop);
  for (int i = 0; i < N; i++) {
    assert_int_equal(ax_date_new(loop, date_cb, &d[i], &d[i].src), 0);
    assert_int_equal(ax_date_start(d[i].src, w + off[i]), 0);
  }
  AX_ASSERT_VERIFIED(loop);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  for (int i = 0; i < N; i++) {
    assert_int_equal(d[i].calls, 1);
    assert_true(d[i].wall[0] >= w + off[i]);
    for (int j = 0; j < N; j++)
      if (off[i] < off[j] && d[i].mono[0] > d[j].mono[0])
        fail_msg("date +%lld fired after date +%lld", (long long)off[i],
                 (long long)off[j]);
  }
  ax_source_free(dog);
  for (int i = 0; i < N; i++)
    ax_source_free(d[i].src);
  AX_FREE_LOOP(loop);
}

/* ---- signals ------------------------------------------------------------ */

typedef struct srec {
  ax_source_t *src;
  int calls;
  int last_signo;
  int wrong;
} srec_t;

static void sig_cb(ax_source_t *src, int signo, void *data) {
  srec_t *r = data;
  if (src != r->src)
    r->wrong++;
  r->calls++;
  r->last_signo = signo;
}

/* Two sources for one signal in one loop: both are called. */
static void test_signal_two_sources(void **state) {
  (void)state;
  drain_signals();
  ax_loop_t *loop = ax_test_loop();
  srec_t a = {0}, b = {0}, other = {0};
  assert_int_equal(ax_signal_new(loop, sig_cb, &a, &a.src), 0);
  assert_int_equal(ax_signal_new(loop, sig_cb, &b, &b.src), 0);
  assert_int_equal(ax_signal_new(loop, sig_cb, &other, &other.src), 0);
  assert_int_equal(ax_source_kind(a.src), AX_SOURCE_SIGNAL);
  assert_int_equal(ax_signal_start(a.src, SIGUSR1), 0);
  assert_int_equal(ax_signal_start(b.src, SIGUSR1), 0);
  assert_int_equal(ax_signal_start(other.src, SIGUSR2), 0);
  AX_ASSERT_VERIFIED(loop);
  assert_int_equal(kill(getpid(), SIGUSR1), 0);
  assert_true(RUN_UNTIL(loop, a.calls >= 1 && b.calls >= 1, 2000));
  run_for(loop, 30);
  assert_int_equal(a.calls, 1);
  assert_int_equal(b.calls, 1);
  assert_int_equal(other.calls, 0);
  assert_int_equal(a.last_signo, SIGUSR1);
  assert_int_equal(b.last_signo, SIGUSR1);
  assert_int_equal(a.wrong + b.wrong, 0);

  /* Raised three times before the loop reads it: one event per source. */
  for (int i = 0; i < 3; i++)
    assert_int_equal(kill(getpid(), SIGUSR2), 0);
  assert_true(RUN_UNTIL(loop, other.calls >= 1, 2000));
  run_for(loop, 30);
  assert_int_equal(other.calls, 1);
  assert_int_equal(other.last_signo, SIGUSR2);
  assert_int_equal(a.calls, 1);

  /* A stopped source is not called; the other one still is. */
  assert_int_equal(ax_source_stop(a.src), 0);
  assert_int_equal(kill(getpid(), SIGUSR1), 0);
  assert_true(RUN_UNTIL(loop, b.calls >= 2, 2000));
  run_for(loop, 30);
  assert_int_equal(a.calls, 1);
  assert_int_equal(b.calls, 2);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.signals, 1 + 1 + 1 + 1);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(a.src);
  ax_source_free(b.src);
  ax_source_free(other.src);
  AX_FREE_LOOP(loop);
  /* Blocked by main() before the loop: must stay blocked. */
  assert_true(is_blocked(SIGUSR1));
  assert_true(is_blocked(SIGUSR2));
  drain_signals();
}

static void test_signal_einval(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  srec_t r = {0};
  assert_int_equal(ax_signal_new(loop, sig_cb, &r, &r.src), 0);
  static const int bad[] = {0, -1, SIGKILL, SIGSTOP, 65, 1000};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = ax_signal_start(r.src, bad[i]);
    if (rc != -EINVAL)
      fail_msg("ax_signal_start(%d) = %d, expected -EINVAL", bad[i], rc);
    assert_false(ax_source_is_active(r.src));
  }
  assert_int_equal(ax_signal_start(NULL, SIGUSR1), -EINVAL);
  ax_source_t *s = (ax_source_t *)0x1;
  assert_int_equal(ax_signal_new(loop, NULL, &r, &s), -EINVAL);
  assert_int_equal(ax_signal_new(NULL, sig_cb, &r, &s), -EINVAL);
  assert_int_equal(ax_signal_new(loop, sig_cb, &r, NULL), -EINVAL);
  assert_ptr_equal(s, (ax_source_t *)0x1);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(r.src);
  AX_FREE_LOOP(loop);
}

/* Two loops in two threads, one watching SIGUSR1 and one SIGUSR2. */
typedef struct sigthr {
  int signo;
  pthread_barrier_t *bar;
  int counts[3]; /* [1] SIGUSR1, [2] SIGUSR2, [0] anything else */
  int err;       /* first failing axon call, as its code */
  bool dog_fired;
  ax_source_t *settle;
  bool settling;
} sigthr_t;

static int64_t settle_cb(ax_source_t *src, void *data) {
  (void)data;
  ax_loop_stop(ax_source_loop(src));
  return AX_TIMER_CONTINUE;
}

static void sigthr_cb(ax_source_t *src, int signo, void *data) {
  (void)src;
  sigthr_t *t = data;
  t->counts[signo == SIGUSR1 ? 1 : signo == SIGUSR2 ? 2 : 0]++;
  if (!t->settling) { /* keep listening 150 ms for a wrong delivery */
    t->settling = true;
    if (ax_timer_start(t->settle, 150, 0) != 0)
      t->err = -1;
  }
}

static void *sigthr_main(void *arg) {
  sigthr_t *t = arg;
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = ax_test_backend;
  ax_loop_t *loop = NULL;
  ax_source_t *s = NULL, *dog = NULL;
  int rc = ax_loop_new(&o, &loop);
  if (rc == 0)
    rc = ax_signal_new(loop, sigthr_cb, t, &s);
  if (rc == 0)
    rc = ax_signal_start(s, t->signo);
  if (rc == 0)
    rc = ax_timer_new(loop, settle_cb, t, &t->settle);
  if (rc == 0)
    rc = ax_timer_new(loop, dog_cb, &t->dog_fired, &dog);
  if (rc == 0)
    rc = ax_timer_start(dog, 3000, 0);
  t->err = rc;
  if (dog != NULL)
    ax_source_unref(dog);
  pthread_barrier_wait(t->bar);
  if (rc == 0)
    rc = ax_loop_run(loop, AX_RUN_DEFAULT);
  if (rc != 0 && t->err == 0)
    t->err = rc;
  ax_loop_free(loop);
  return NULL;
}

static void test_signal_two_loops_two_threads(void **state) {
  (void)state;
  drain_signals();
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, 3);
  sigthr_t a = {.signo = SIGUSR1, .bar = &bar};
  sigthr_t b = {.signo = SIGUSR2, .bar = &bar};
  pthread_t ta, tb;
  assert_int_equal(pthread_create(&ta, NULL, sigthr_main, &a), 0);
  assert_int_equal(pthread_create(&tb, NULL, sigthr_main, &b), 0);
  pthread_barrier_wait(&bar);
  assert_int_equal(kill(getpid(), SIGUSR1), 0);
  assert_int_equal(kill(getpid(), SIGUSR2), 0);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  pthread_barrier_destroy(&bar);
  if (a.err || b.err)
    fail_msg("thread loops: %s / %s", ax_strerror(a.err), ax_strerror(b.err));
  assert_false(a.dog_fired);
  assert_false(b.dog_fired);
  assert_int_equal(a.counts[1], 1);
  assert_int_equal(a.counts[2], 0);
  assert_int_equal(a.counts[0], 0);
  assert_int_equal(b.counts[2], 1);
  assert_int_equal(b.counts[1], 0);
  assert_int_equal(b.counts[0], 0);
  drain_signals();
}

/* A loop that blocked a signal itself unblocks it when its last source of
 * that signal stops (or is freed, or the loop is freed). Runs in a thread
 * whose mask the test controls; nothing raises the signal meanwhile. */
typedef struct unblock {
  bool before, started, second, stopped_one, stopped, freed, loop_freed;
  int err;
} unblock_t;

static void *unblock_main(void *arg) {
  unblock_t *u = arg;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR2);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  u->before = is_blocked(SIGUSR2);
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = ax_test_backend;
  ax_loop_t *loop = NULL;
  srec_t r1 = {0}, r2 = {0};
  int rc = ax_loop_new(&o, &loop);
  if (rc == 0)
    rc = ax_signal_new(loop, sig_cb, &r1, &r1.src);
  if (rc == 0)
    rc = ax_signal_new(loop, sig_cb, &r2, &r2.src);
  if (rc == 0)
    rc = ax_signal_start(r1.src, SIGUSR2);
  u->started = is_blocked(SIGUSR2);
  if (rc == 0)
    rc = ax_signal_start(r2.src, SIGUSR2);
  u->second = is_blocked(SIGUSR2);
  if (rc == 0)
    rc = ax_source_stop(r1.src);
  u->stopped_one = is_blocked(SIGUSR2); /* r2 still watches: blocked */
  if (rc == 0)
    rc = ax_source_stop(r2.src);
  u->stopped = is_blocked(SIGUSR2);
  if (rc == 0)
    rc = ax_signal_start(r1.src, SIGUSR2);
  ax_source_free(r1.src);
  u->freed = is_blocked(SIGUSR2);
  if (rc == 0)
    rc = ax_signal_start(r2.src, SIGUSR2);
  ax_loop_free(loop); /* releases r2, still started */
  u->loop_freed = is_blocked(SIGUSR2);
  u->err = rc;
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  return NULL;
}

static void test_signal_unblock_on_stop(void **state) {
  (void)state;
  drain_signals();
  unblock_t u = {0};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, unblock_main, &u), 0);
  pthread_join(t, NULL);
  if (u.err)
    fail_msg("%s", ax_strerror(u.err));
  assert_false(u.before);
  assert_true(u.started);
  assert_true(u.second);
  assert_true(u.stopped_one);
  if (u.stopped)
    fail_msg("SIGUSR2 still blocked after the last source stopped");
  if (u.freed)
    fail_msg("SIGUSR2 still blocked after the last source was freed");
  if (u.loop_freed)
    fail_msg("SIGUSR2 still blocked after ax_loop_free released its "
             "last source");
  /* In main, where the test blocked them first, they stay blocked. */
  assert_true(is_blocked(SIGUSR1));
  assert_true(is_blocked(SIGUSR2));
}

/* ---- file-system watch -------------------------------------------------- */

#define MAXFS 256

typedef struct fsev {
  unsigned bits;
  bool has_name;
  char name[64];
  bool active; /* ax_source_is_active() during the call */
} fsev_t;

typedef struct fsrec {
  ax_source_t *src;
  fsev_t ev[MAXFS];
  int n;
  unsigned all;
  int bad_bits, wrong;
} fsrec_t;

static void fs_cb(ax_source_t *src, unsigned events, const char *name,
                  void *data) {
  fsrec_t *r = data;
  if (src != r->src)
    r->wrong++;
  if (events == 0 || (events & ~0x7fu))
    r->bad_bits++;
  r->all |= events;
  if (r->n < MAXFS) {
    fsev_t *e = &r->ev[r->n];
    e->bits = events;
    e->has_name = name != NULL;
    if (name != NULL)
      snprintf(e->name, sizeof e->name, "%s", name);
    e->active = ax_source_is_active(src);
  }
  r->n++;
}

/* Is there an event with all of @bits, about @name (NULL: the path)? */
static bool fs_has(const fsrec_t *r, unsigned bits, const char *name) {
  for (int i = 0; i < r->n && i < MAXFS; i++) {
    const fsev_t *e = &r->ev[i];
    if ((e->bits & bits) != bits)
      continue;
    if (name == NULL ? !e->has_name
                     : (e->has_name && strcmp(e->name, name) == 0))
      return true;
  }
  return false;
}

static unsigned fs_bits_for(const fsrec_t *r, const char *name) {
  unsigned b = 0;
  for (int i = 0; i < r->n && i < MAXFS; i++)
    if (name == NULL ? !r->ev[i].has_name
                     : (r->ev[i].has_name && !strcmp(r->ev[i].name, name)))
      b |= r->ev[i].bits;
  return b;
}

static void fs_reset(fsrec_t *r) {
  ax_source_t *s = r->src;
  memset(r, 0, sizeof *r);
  r->src = s;
}

static void dump_fs(const fsrec_t *r) {
  for (int i = 0; i < r->n && i < MAXFS; i++)
    printf("  event 0x%02x %s%s\n", r->ev[i].bits,
           r->ev[i].has_name ? r->ev[i].name : "(path)",
           r->ev[i].active ? "" : " [inactive]");
}

#define FS_EXPECT(loop, r, bits, name)                                         \
  do {                                                                         \
    if (!RUN_UNTIL(loop, fs_has(r, bits, name), 2000)) {                       \
      dump_fs(r);                                                              \
      fail_msg("no event with bits 0x%x for %s", (unsigned)(bits),             \
               (name) ? (const char *)(name) : "(path)");                      \
    }                                                                          \
  } while (0)

static void write_file(const char *path, const char *text, int flags) {
  int fd = open(path, O_WRONLY | O_CLOEXEC | flags, 0644);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
}

static void test_fswatch_file(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  char dir[] = "/tmp/axon-fs-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char path[128], path2[128];
  snprintf(path, sizeof path, "%s/f", dir);
  snprintf(path2, sizeof path2, "%s/g", dir);
  write_file(path, "one\n", O_CREAT | O_TRUNC);

  fsrec_t r = {0};
  assert_int_equal(ax_fswatch_new(loop, fs_cb, &r, &r.src), 0);
  assert_int_equal(ax_source_kind(r.src), AX_SOURCE_FSWATCH);
  assert_int_equal(ax_fswatch_start(r.src, path, 0), 0);
  assert_true(ax_source_is_active(r.src));
  AX_ASSERT_VERIFIED(loop);

  write_file(path, "two\n", O_APPEND);
  FS_EXPECT(loop, &r, AX_FS_CHANGE, NULL);
  fs_reset(&r);
  assert_int_equal(chmod(path, 0600), 0);
  FS_EXPECT(loop, &r, AX_FS_ATTRIB, NULL);
  fs_reset(&r);
  assert_int_equal(rename(path, path2), 0);
  FS_EXPECT(loop, &r, AX_FS_RENAME, NULL);
  assert_true(ax_source_is_active(r.src)); /* follows the file */
  fs_reset(&r);
  write_file(path2, "three\n", O_APPEND);
  FS_EXPECT(loop, &r, AX_FS_CHANGE, NULL);
  fs_reset(&r);
  assert_int_equal(unlink(path2), 0);
  FS_EXPECT(loop, &r, AX_FS_DELETE, NULL);
  FS_EXPECT(loop, &r, AX_FS_ENDED, NULL);
  for (int i = 0; i < r.n; i++)
    if (r.ev[i].bits & AX_FS_ENDED)
      assert_false(r.ev[i].active); /* stopped before the callback */
  assert_false(ax_source_is_active(r.src));
  assert_int_equal(r.bad_bits, 0);
  assert_int_equal(r.wrong, 0);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_true(info.fs_events >= 5);
  assert_int_equal(info.active, 0);
  /* No event is about an entry: a file watch reports the path itself. */
  fs_reset(&r);
  run_for(loop, 30);
  assert_int_equal(r.n, 0);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(r.src);
  assert_int_equal(rmdir(dir), 0);
  AX_FREE_LOOP(loop);
}

static void test_fswatch_dir(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  char dir[] = "/tmp/axon-fs-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char a[128], b[128], sub[128];
  snprintf(a, sizeof a, "%s/a", dir);
  snprintf(b, sizeof b, "%s/b", dir);
  snprintf(sub, sizeof sub, "%s/sub", dir);

  fsrec_t r = {0};
  assert_int_equal(ax_fswatch_new(loop, fs_cb, &r, &r.src), 0);
  assert_int_equal(ax_fswatch_start(r.src, dir, AX_FS_ALL), 0);

  write_file(a, "x", O_CREAT | O_EXCL);
  FS_EXPECT(loop, &r, AX_FS_CREATE, "a");
  fs_reset(&r);
  write_file(a, "y", O_APPEND);
  FS_EXPECT(loop, &r, AX_FS_CHANGE, "a");
  fs_reset(&r);
  assert_int_equal(chmod(a, 0600), 0);
  FS_EXPECT(loop, &r, AX_FS_ATTRIB, "a");
  fs_reset(&r);
  assert_int_equal(rename(a, b), 0);
  FS_EXPECT(loop, &r, AX_FS_RENAME, "a");
  if (!(fs_bits_for(&r, "b") & (AX_FS_RENAME | AX_FS_CREATE)))
    FS_EXPECT(loop, &r, AX_FS_RENAME, "b");
  fs_reset(&r);
  assert_int_equal(unlink(b), 0);
  FS_EXPECT(loop, &r, AX_FS_DELETE, "b");
  fs_reset(&r);
  assert_int_equal(mkdir(sub, 0700), 0);
  FS_EXPECT(loop, &r, AX_FS_CREATE, "sub");
  assert_int_equal(rmdir(sub), 0);
  FS_EXPECT(loop, &r, AX_FS_DELETE, "sub");
  assert_true(ax_source_is_active(r.src));
  assert_int_equal(r.bad_bits, 0);

  /* Deleting the watched directory ends the watch. */
  fs_reset(&r);
  assert_int_equal(rmdir(dir), 0);
  FS_EXPECT(loop, &r, AX_FS_ENDED, NULL);
  if (!fs_has(&r, AX_FS_DELETE, NULL)) {
    dump_fs(&r);
    fail_msg("watched directory deleted: no AX_FS_DELETE about the path");
  }
  for (int i = 0; i < r.n; i++)
    if (r.ev[i].bits & AX_FS_ENDED)
      assert_false(r.ev[i].active);
  assert_false(ax_source_is_active(r.src));

  /* Can be started again on a new path. */
  assert_int_equal(mkdir(dir, 0700), 0);
  fs_reset(&r);
  assert_int_equal(ax_fswatch_start(r.src, dir, 0), 0);
  write_file(a, "z", O_CREAT | O_EXCL);
  FS_EXPECT(loop, &r, AX_FS_CREATE, "a");
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(r.src);
  unlink(a);
  rmdir(dir);
  AX_FREE_LOOP(loop);
}

/* The mask filters; two sources on one path each get their own events. */
static void test_fswatch_mask_and_sharing(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  char dir[] = "/tmp/axon-fs-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char y[128], z[128];
  snprintf(y, sizeof y, "%s/y", dir);
  snprintf(z, sizeof z, "%s/z", dir);
  fsrec_t c = {0}, d = {0};
  assert_int_equal(ax_fswatch_new(loop, fs_cb, &c, &c.src), 0);
  assert_int_equal(ax_fswatch_new(loop, fs_cb, &d, &d.src), 0);
  assert_int_equal(ax_fswatch_start(c.src, dir, AX_FS_CREATE), 0);
  assert_int_equal(ax_fswatch_start(d.src, dir, AX_FS_DELETE), 0);
  AX_ASSERT_VERIFIED(loop);
  write_file(y, "1", O_CREAT | O_EXCL);
  assert_int_equal(unlink(y), 0);
  FS_EXPECT(loop, &c, AX_FS_CREATE, "y");
  FS_EXPECT(loop, &d, AX_FS_DELETE, "y");
  run_for(loop, 30);
  const unsigned always = AX_FS_OVERFLOW | AX_FS_ENDED;
  if (c.all & ~(AX_FS_CREATE | always)) {
    dump_fs(&c);
    fail_msg("CREATE-only watch got bits 0x%x", c.all);
  }
  if (d.all & ~(AX_FS_DELETE | always)) {
    dump_fs(&d);
    fail_msg("DELETE-only watch got bits 0x%x", d.all);
  }

  /* Freeing one leaves the other working. */
  ax_source_free(c.src);
  fs_reset(&d);
  write_file(z, "1", O_CREAT | O_EXCL);
  assert_int_equal(unlink(z), 0);
  FS_EXPECT(loop, &d, AX_FS_DELETE, "z");
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(d.src);
  rmdir(dir);
  AX_FREE_LOOP(loop);
}

static void test_fswatch_errors(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  fsrec_t r = {0};
  assert_int_equal(ax_fswatch_new(loop, fs_cb, &r, &r.src), 0);
  assert_int_equal(ax_fswatch_start(r.src, "/nonexistent-axon/dir", 0),
                   -ENOENT);
  assert_false(ax_source_is_active(r.src));
  assert_int_equal(ax_fswatch_start(r.src, NULL, 0), -EINVAL);
  assert_int_equal(ax_fswatch_start(NULL, "/tmp", 0), -EINVAL);
  ax_source_t *s = (ax_source_t *)0x1;
  assert_int_equal(ax_fswatch_new(loop, NULL, &r, &s), -EINVAL);
  assert_ptr_equal(s, (ax_source_t *)0x1);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(r.src);
  AX_FREE_LOOP(loop);
}

/* ---- wake --------------------------------------------------------------- */

typedef struct wrec {
  ax_source_t *src;
  int calls;
  bool stop_loop;
  _Atomic int *seq;
  int last_seen;
} wrec_t;

static void wake_cb(ax_source_t *src, void *data) {
  wrec_t *w = data;
  w->calls++;
  if (w->seq != NULL)
    w->last_seen = atomic_load_explicit(w->seq, memory_order_acquire);
  if (w->stop_loop)
    ax_loop_stop(ax_source_loop(src));
}

typedef struct sender {
  ax_source_t *src;
  _Atomic int go;
  _Atomic int seq;
  int n;
  int delay_ms;
  int err;
} sender_t;

static void *sender_main(void *arg) {
  sender_t *s = arg;
  for (long i = 0; i < 100000000L && !atomic_load(&s->go); i++)
    sched_yield();
  if (s->delay_ms) {
    struct timespec ts = {0, s->delay_ms * 1000000L};
    nanosleep(&ts, NULL); /* lets the loop go to sleep; not relied upon */
  }
  for (int i = 1; i <= s->n; i++) {
    atomic_store_explicit(&s->seq, i, memory_order_release);
    int rc = ax_wake_send(s->src);
    if (rc != 0 && s->err == 0)
      s->err = rc;
  }
  return NULL;
}

static void test_wake_from_thread(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  wrec_t w = {.stop_loop = true};
  assert_int_equal(ax_wake_new(loop, wake_cb, &w, &w.src), 0);
  assert_int_equal(ax_source_kind(w.src), AX_SOURCE_WAKE);
  assert_int_equal(ax_wake_start(w.src), 0);
  sender_t s = {.src = w.src, .n = 1, .delay_ms = 30};
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, sender_main, &s), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  uint64_t m0 = mono_ms();
  atomic_store(&s.go, 1);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  uint64_t m1 = mono_ms();
  pthread_join(t, NULL);
  assert_int_equal(s.err, 0);
  assert_false(fired);
  assert_int_equal(w.calls, 1);
  assert_true(m1 - m0 < 2000);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.wakeups, 1);
  ax_source_free(dog);
  ax_source_free(w.src);
  AX_FREE_LOOP(loop);
}

/* Many sends from a thread: no wakeup is lost (the callback after the last
 * send sees its sequence number), and callbacks never outnumber sends. */
static void test_wake_no_lost_wakeup(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  sender_t s = {.n = 20000};
  wrec_t w = {.seq = &s.seq};
  assert_int_equal(ax_wake_new(loop, wake_cb, &w, &w.src), 0);
  assert_int_equal(ax_wake_start(w.src), 0);
  s.src = w.src;
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, sender_main, &s), 0);
  atomic_store(&s.go, 1);
  bool ok = RUN_UNTIL(loop, w.last_seen == s.n, 5000);
  pthread_join(t, NULL);
  assert_int_equal(s.err, 0);
  if (!ok)
    fail_msg("lost wakeup: last callback saw %d of %d sends", w.last_seen, s.n);
  assert_true(w.calls >= 1 && w.calls <= s.n);
  ax_source_free(w.src);
  AX_FREE_LOOP(loop);
}

static void test_wake_coalesce_and_pending(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  wrec_t w = {0};
  assert_int_equal(ax_wake_new(loop, wake_cb, &w, &w.src), 0);
  /* A send to an inactive source is remembered until it is started. */
  assert_int_equal(ax_wake_send(w.src), 0);
  run_for(loop, 20);
  assert_int_equal(w.calls, 0);
  assert_int_equal(ax_wake_start(w.src), 0);
  assert_true(RUN_UNTIL(loop, w.calls >= 1, 2000));
  run_for(loop, 30);
  assert_int_equal(w.calls, 1);

  /* Several sends before the loop reacts: one callback. */
  for (int i = 0; i < 5; i++)
    assert_int_equal(ax_wake_send(w.src), 0);
  assert_true(RUN_UNTIL(loop, w.calls >= 2, 2000));
  run_for(loop, 30);
  assert_int_equal(w.calls, 2);

  /* Kind and NULL checks. */
  ax_source_t *t = NULL;
  bool dummy = false;
  assert_int_equal(ax_timer_new(loop, flag_cb, &dummy, &t), 0);
  assert_int_equal(ax_wake_send(t), AX_EKIND);
  assert_int_equal(ax_wake_send(NULL), -EINVAL);
  assert_int_equal(ax_wake_start(NULL), -EINVAL);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(t);
  ax_source_free(w.src);
  AX_FREE_LOOP(loop);
}

static void test_wake_unref(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  wrec_t w = {0};
  assert_int_equal(ax_wake_new(loop, wake_cb, &w, &w.src), 0);
  assert_int_equal(ax_wake_start(w.src), 0);
  assert_true(ax_loop_alive(loop));
  ax_source_unref(w.src);
  assert_false(ax_loop_alive(loop));
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 2000, &fired);
  uint64_t m0 = mono_ms();
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_true(mono_ms() - m0 < 500);
  /* Still delivers while the loop runs for something else. */
  assert_int_equal(ax_wake_send(w.src), 0);
  assert_true(RUN_UNTIL(loop, w.calls >= 1, 2000));
  ax_source_free(dog);
  ax_source_free(w.src);
  AX_FREE_LOOP(loop);
}

int main(void) {
  /* Before any thread: the signals stay blocked in every thread. */
  block_usr_signals();

  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_date_real_clock),
      cmocka_unit_test(test_date_in_past),
      cmocka_unit_test(test_date_clock_step_forward),
      cmocka_unit_test(test_date_clock_step_backward),
      cmocka_unit_test(test_date_rearm_by_return),
      cmocka_unit_test(test_date_order),
      cmocka_unit_test(test_signal_two_sources),
      cmocka_unit_test(test_signal_einval),
      cmocka_unit_test(test_signal_two_loops_two_threads),
      cmocka_unit_test(test_signal_unblock_on_stop),
      cmocka_unit_test(test_fswatch_file),
      cmocka_unit_test(test_fswatch_dir),
      cmocka_unit_test(test_fswatch_mask_and_sharing),
      cmocka_unit_test(test_fswatch_errors),
      cmocka_unit_test(test_wake_from_thread),
      cmocka_unit_test(test_wake_no_lost_wakeup),
      cmocka_unit_test(test_wake_coalesce_and_pending),
      cmocka_unit_test(test_wake_unref),
  };
  return AX_RUN_ON_BACKENDS(tests);
}
