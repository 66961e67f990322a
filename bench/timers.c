/*
 * bench/timers.c — libuv's million_timers workload on axon, libuv, libev and
 * (bench `timers_candidates`) heap4, the 4-ary heap candidate in heap4.c.
 *
 * Usage: timers -b NAME -n N [-c] [-r REPS] IMPL...
 *   NAME  name printed as bench=NAME (timers_10m, timers_1m, timers_candidates)
 *   N     timers; timer i has timeout 1 + i/1000 ms (integer division), no
 *         repeat, and a callback that only counts (and checks, see on_fire)
 *   -c    add the cancel phase (key cancel_ms)
 *   REPS  runs per implementation, interleaved A B C A B C ...; each key is
 *         the median over the runs (default 1)
 *   IMPL  axon | libuv | libev | heap4
 *
 * Each run of each implementation happens in its own forked child, so RSS
 * and allocator state are not shared; the child sends its numbers back over
 * a pipe and the parent prints, on stdout, one line per implementation:
 *
 *   bench=NAME impl=IMPL schedule_ms= dispatch_cpu_ms= cleanup_ms=
 *       [cancel_ms=] bytes_per_timer= max_late_ms= max_late_steady_ms=
 *       p99_late_steady_ms= dispatch_wall_ms=
 *
 * then, for each other implementation PEER, a ratio line
 *
 *   bench=NAME impl=axon_vs_PEER <same keys>=<axon value / PEER value>
 *
 * Every key is a time, a size or a lateness: for all of them LOWER IS BETTER,
 * so a ratio below 1 means axon wins. A key whose PEER value is 0 is left out
 * of the ratio line. Keys:
 *
 *   schedule_ms        wall time to create and start all N timers
 *   dispatch_cpu_ms    user+sys CPU (getrusage) of running the loop until
 *                      every timer fired; the wall time of that phase is at
 *                      least the largest timeout by construction, so CPU is
 *                      the meaningful cost
 *   cleanup_ms         wall time to release every timer and the loop
 *                      (axon: ax_loop_free, which releases every source still
 *                      attached — the documented way to drop them all; libuv: uv_close
 *                      each, uv_run, uv_loop_close, free the array; libev:
 *                      ev_timer_stop is a no-op after firing, so free the array
 *                      and ev_loop_destroy; heap4: free both arrays)
 *   cancel_ms          (-c) separate phase on a fresh loop: N more timers, same
 *                      timeouts, created and started untimed; then the wall
 *                      time to stop all of them in start order (ax_source_stop,
 *                      uv_timer_stop, ev_timer_stop, heap4_stop)
 *   bytes_per_timer    (peak RSS during schedule+dispatch − RSS before
 *                      schedule) / N. Peak = max of VmHWM and /proc/self/statm
 *                      samples. For libuv, libev and heap4 this includes the
 *                      timer structs the benchmark allocates (axon allocates
 *                      its own). Not included: the benchmark's own bookkeeping,
 *                      pre-faulted before the baseline — the fired-bitmap
 *                      (all impls) and, for axon, the array of N source
 *                      handles (8 B/timer) needed to free them afterwards.
 *   max_late_ms        max over timers of (fire time − deadline), ms. Deadline
 *                      = base + timeout, where base is the loop's own notion
 *                      of the start time, read right after refreshing the loop
 *                      clock just before scheduling: ax_loop_now() for axon,
 *                      uv_now() for libuv (both whole ms of CLOCK_MONOTONIC),
 *                      heap4's clock (same), and for libev CLOCK_MONOTONIC read
 *                      just before ev_now_update() (libev's monotonic base is
 *                      not public; ev_now() is wall-clock). Fire time is
 *                      CLOCK_MONOTONIC. This includes the timers that became
 *                      due while the N timers were still being scheduled, so
 *                      it is at least about schedule_ms by construction.
 *   max_late_steady_ms the same, over the timers due after the loop first
 *                      caught up with the backlog (the timers that expired
 *                      while scheduling): the end of a timer phase whose
 *                      latest fired deadline was < 1 ms old. This is the
 *                      loop's own lateness (wake-up granularity, dispatch and
 *                      cascade costs, falling behind when a fire costs more
 *                      than the 1 µs per timer this workload allows). Left
 *                      out if the loop never caught up. On this shared VM a
 *                      single preemption or steal episode sets the max, so:
 *   p99_late_steady_ms 99th percentile of the same (1 µs bins below 100 ms,
 *                      1 ms bins above; each group counts with its upper
 *                      bound, see below).
 *   dispatch_wall_ms   wall time of the dispatch phase (sanity: ≈ max timeout)
 *
 * How lateness is measured without a clock read per callback (37 ns each on
 * this VM, more than some implementations' whole dispatch cost): callbacks
 * are grouped; a group ends every FLUSH_EVERY callbacks and at the end of
 * each loop iteration's timer phase (axon: a deferred call queued by the
 * first timer callback of the iteration — the deferred phase runs after the
 * timer phase; libuv: a prepare handle, run after timers and before the
 * poll; libev: a prepare watcher, run before the poll; heap4: after each
 * heap4_run). At a group's end the clock is read once: every timer of the
 * group fired at or before that instant, so (now − earliest deadline of the
 * group) bounds each one's lateness from above, tightly (a group spans at
 * most FLUSH_EVERY callbacks and never a sleep); and if (now − latest
 * deadline) is negative, some timer certainly fired early, which the parent
 * reports as an error after printing the numbers.
 *
 * Correctness checks (the child exits non-zero with a message): each
 * callback's identity, every timer fires exactly once (bitmap), the loop
 * returns only after all N fired, every axon call returns 0, and for axon the
 * loop's own counters (ax_loop_info) and ax_loop_verify() in the cancel phase.
 * Every child runs under alarm() (4 × the largest timeout + 60 s).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <axon/axon.h>
#include <ev.h>
#include <uv.h>

#include "heap4.h"

#define FLUSH_EVERY 16 /* callbacks per lateness group, at most */
#define MAX_IMPLS 8
#define MAX_REPS 15

/* ------------------------------------------------------------------------ */
/* Results                                                                   */
/* ------------------------------------------------------------------------ */

enum {
  K_SCHEDULE,
  K_DISPATCH_CPU,
  K_CLEANUP,
  K_CANCEL,
  K_BYTES,
  K_LATE,
  K_LATE_STEADY,
  K_P99_STEADY,
  K_DISPATCH_WALL,
  K_COUNT
};

static const struct {
  const char *name;
  const char *fmt;
} keys[K_COUNT] = {
    [K_SCHEDULE] = {"schedule_ms", "%.2f"},
    [K_DISPATCH_CPU] = {"dispatch_cpu_ms", "%.2f"},
    [K_CLEANUP] = {"cleanup_ms", "%.2f"},
    [K_CANCEL] = {"cancel_ms", "%.2f"},
    [K_BYTES] = {"bytes_per_timer", "%.1f"},
    [K_LATE] = {"max_late_ms", "%.3f"},
    [K_LATE_STEADY] = {"max_late_steady_ms", "%.3f"},
    [K_P99_STEADY] = {"p99_late_steady_ms", "%.3f"},
    [K_DISPATCH_WALL] = {"dispatch_wall_ms", "%.1f"},
};

/* What a child sends back to the parent. */
struct result {
  double v[K_COUNT];
  bool has[K_COUNT];
  double early_ms; /* > 0: some timer certainly fired this much early */
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static const char *impl_name = "timers";

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "timers: %s: ", impl_name);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

static void ax_ok(int rc, const char *what) {
  if (__builtin_expect(rc != 0, 0))
    die("%s returned %d (%s: %s)", what, rc, ax_err_name(rc), ax_strerror(rc));
}

static double mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static uint64_t mono_ms_floor(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static double cpu_ms(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0)
    die("getrusage: %s", strerror(errno));
  return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
         (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static size_t rss_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long size, res;
  if (f == NULL || fscanf(f, "%lu %lu", &size, &res) != 2)
    die("cannot read /proc/self/statm");
  fclose(f);
  return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

/* VmHWM: the peak RSS of this process (reset at fork). */
static size_t hwm_bytes(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  unsigned long kb = 0;
  if (f == NULL)
    die("cannot open /proc/self/status");
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "VmHWM: %lu kB", &kb) == 1)
      break;
  fclose(f);
  return (size_t)kb * 1024;
}

/* Allocate and touch, so the pages are resident before the RSS baseline. */
static void *xmalloc_faulted(size_t size) {
  void *p = malloc(size ? size : 1);
  if (p == NULL)
    die("out of memory (%zu bytes)", size);
  memset(p, 0, size);
  return p;
}

static void *xmalloc(size_t size) {
  void *p = malloc(size ? size : 1);
  if (p == NULL)
    die("out of memory (%zu bytes)", size);
  return p;
}

static uint64_t timeout_of(size_t i) { return 1 + (uint64_t)i / 1000; }

/* ------------------------------------------------------------------------ */
/* Callback bookkeeping shared by every implementation                      */
/* ------------------------------------------------------------------------ */

static struct {
  size_t n;
  uint8_t *seen; /* one bit per timer */
  size_t fired;
  double base_ms;      /* deadline base, ms on CLOCK_MONOTONIC */
  uint64_t steady_to;  /* timeouts >= this fall after the run began */
  uint64_t gmin, gmax; /* timeouts of the current group */
  uint64_t smin;       /* its earliest steady timeout */
  unsigned scount;     /* its steady timers */
  unsigned since;      /* callbacks in the current group */
  uint32_t *hist;      /* lateness of steady timers, see hist_add() */
  size_t nsteady;
  double max_late, max_late_steady, max_early;
  bool any_steady;
} R;

static void group_reset(void) {
  R.gmin = R.smin = UINT64_MAX;
  R.gmax = 0;
  R.since = R.scount = 0;
}

/* Lateness histogram: 1 µs bins for [0, 100 ms), 1 ms bins for [100 ms,
 * 100.1 s), then one overflow bin. */
#define HIST_FINE 100000
#define HIST_COARSE 100000
#define HIST_BINS (HIST_FINE + HIST_COARSE + 1)

static void hist_add(double late_ms, unsigned count) {
  size_t b = 0;
  if (late_ms >= 100.0) {
    double c = late_ms - 100.0;
    b = HIST_FINE + (c < HIST_COARSE ? (size_t)c : HIST_COARSE);
  } else if (late_ms > 0) {
    b = (size_t)(late_ms * 1000.0);
  }
  R.hist[b] += count;
  R.nsteady += count;
}

/* Upper edge of the bin holding the @q quantile. */
static double hist_quantile(double q) {
  size_t want = (size_t)(q * (double)R.nsteady), cum = 0;
  if (want == 0)
    want = 1;
  for (size_t b = 0; b < HIST_BINS; b++) {
    cum += R.hist[b];
    if (cum >= want)
      return b < HIST_FINE ? (double)(b + 1) / 1000.0
                           : 100.0 + (double)(b - HIST_FINE + 1);
  }
  return 100.0 + HIST_COARSE;
}

/*
 * End the current group: see "How lateness is measured" above. @phase_end:
 * called at the end of a loop iteration's timer phase. The first such call
 * whose latest-fired deadline is less than 1 ms old means the loop has caught
 * up with the backlog of timers that expired while scheduling: timers due
 * after that instant count as "steady".
 */
static void flush(bool phase_end) {
  if (R.gmax == 0)
    return; /* empty: timeouts are >= 1 */
  double t = mono_ms() - R.base_ms;
  double late = t - (double)R.gmin;
  if (late > R.max_late)
    R.max_late = late;
  if (R.smin != UINT64_MAX) {
    late = t - (double)R.smin;
    if (!R.any_steady || late > R.max_late_steady)
      R.max_late_steady = late;
    R.any_steady = true;
    hist_add(late, R.scount);
  }
  double early = (double)R.gmax - t;
  if (early > R.max_early)
    R.max_early = early;
  if (phase_end && R.steady_to == UINT64_MAX && t - (double)R.gmax < 1.0)
    R.steady_to = (uint64_t)t + 1; /* timeout > t: due after now */
  group_reset();
}

static inline void on_fire(size_t i) {
  if (__builtin_expect(i >= R.n, 0))
    die("callback for an unknown timer (index %zu)", i);
  uint8_t bit = (uint8_t)(1u << (i & 7));
  if (__builtin_expect(R.seen[i >> 3] & bit, 0))
    die("timer %zu fired twice", i);
  R.seen[i >> 3] |= bit;
  R.fired++;
  uint64_t to = timeout_of(i);
  if (to < R.gmin)
    R.gmin = to;
  if (to > R.gmax)
    R.gmax = to;
  if (to >= R.steady_to) {
    R.scount++;
    if (to < R.smin)
      R.smin = to;
  }
  if (++R.since == FLUSH_EVERY)
    flush(false);
}

/* ------------------------------------------------------------------------ */
/* Implementations                                                           */
/* ------------------------------------------------------------------------ */

enum check_point { CHECK_FIRED, CHECK_PENDING, CHECK_STOPPED };

struct ops {
  const char *name;
  void (*init)(size_t n);      /* benchmark bookkeeping (untimed) */
  void (*loop_new)(void);      /* loop + end-of-timer-phase hook (untimed) */
  double (*update_time)(void); /* refresh the loop clock; return the base */
  void (*schedule)(size_t n);  /* create + start timer i = 0..n-1 */
  void (*run)(void);           /* run until every timer fired */
  void (*cleanup)(size_t n);   /* release every timer and the loop */
  void (*stop_all)(size_t n);  /* cancel phase: stop every timer */
  void (*check)(enum check_point at, size_t n); /* untimed; may be NULL */
  void (*fini)(void);
};

/* ---- axon ---------------------------------------------------------------- */

static struct {
  ax_loop_t *loop;
  ax_source_t **h; /* bookkeeping: handle of timer i */
  ax_source_t *flushd;
  bool queued;
} AXS;

static void axon_init(size_t n) { AXS.h = xmalloc_faulted(n * sizeof(*AXS.h)); }
static void axon_fini(void) { free(AXS.h); }

static void axon_flush_cb(ax_source_t *src, void *data) {
  (void)src;
  (void)data;
  AXS.queued = false;
  flush(true);
}

static void axon_loop_new(void) {
  ax_ok(ax_loop_new(NULL, &AXS.loop), "ax_loop_new");
  ax_ok(ax_defer_new(AXS.loop, axon_flush_cb, NULL, &AXS.flushd), "ax_defer_new");
  AXS.queued = false;
}

static double axon_update_time(void) {
  ax_loop_update_time(AXS.loop);
  return (double)ax_loop_now(AXS.loop);
}

static int64_t axon_fire(ax_source_t *src, void *data) {
  size_t i = (uintptr_t)data;
  if (i >= R.n || AXS.h[i] != src)
    die("timer callback with a mismatched source/data pair (data %zu)", i);
  on_fire(i);
  if (!AXS.queued) {
    ax_ok(ax_defer_start(AXS.flushd), "ax_defer_start");
    AXS.queued = true;
  }
  return AX_TIMER_CONTINUE;
}

static void axon_schedule(size_t n) {
  for (size_t i = 0; i < n; i++) {
    ax_ok(ax_timer_new(AXS.loop, axon_fire, (void *)(uintptr_t)i, &AXS.h[i]),
          "ax_timer_new");
    ax_ok(ax_timer_start(AXS.h[i], timeout_of(i), 0), "ax_timer_start");
  }
}

static void axon_run(void) { ax_ok(ax_loop_run(AXS.loop, AX_RUN_DEFAULT), "ax_loop_run"); }

static void axon_cleanup(size_t n) {
  (void)n; /* ax_loop_free releases the N timers and the flush defer */
  ax_ok(ax_loop_free(AXS.loop), "ax_loop_free");
}

static void axon_stop_all(size_t n) {
  for (size_t i = 0; i < n; i++)
    ax_ok(ax_source_stop(AXS.h[i]), "ax_source_stop");
}

static void axon_check(enum check_point at, size_t n) {
  static const char *const names[] = {"after dispatch", "after scheduling",
                                      "after stopping"};
  ax_loop_info_t info;
  char why[256] = "";
  ax_ok(ax_loop_info(AXS.loop, &info), "ax_loop_info");
  size_t want_active = at == CHECK_PENDING ? n : 0;
  if (info.active != want_active)
    die("%s: ax_loop_info active=%zu, expected %zu", names[at], info.active,
        want_active);
  if (info.sources != n + 1) /* the timers + the flush deferred call */
    die("%s: ax_loop_info sources=%zu, expected %zu", names[at], info.sources,
        n + 1);
  if (at == CHECK_FIRED && info.timers_fired != n)
    die("%s: ax_loop_info timers_fired=%llu, expected %zu", names[at],
        (unsigned long long)info.timers_fired, n);
  if (ax_loop_alive(AXS.loop) != (want_active != 0))
    die("%s: ax_loop_alive()=%d with %zu active timers", names[at],
        (int)ax_loop_alive(AXS.loop), want_active);
  if (at != CHECK_FIRED) { /* linear: kept out of the dispatch run */
    int rc = ax_loop_verify(AXS.loop, why, sizeof why);
    if (rc != 0)
      die("%s: ax_loop_verify returned %d (%s): %s", names[at], rc,
          ax_err_name(rc), why);
  }
}

static const struct ops axon_ops = {
    "axon",         axon_init,    axon_loop_new,  axon_update_time,
    axon_schedule,  axon_run,     axon_cleanup,   axon_stop_all,
    axon_check,     axon_fini,
};

/* ---- libuv --------------------------------------------------------------- */

static struct {
  uv_loop_t loop;
  uv_timer_t *t;
  uv_prepare_t prep;
} UVS;

static void uv_ok(int rc, const char *what) {
  if (__builtin_expect(rc != 0, 0))
    die("%s returned %d (%s)", what, rc, uv_strerror(rc));
}

static void libuv_init(size_t n) { (void)n; }
static void libuv_fini(void) {}

static void libuv_prep_cb(uv_prepare_t *p) {
  (void)p;
  flush(true);
}

static void libuv_loop_new(void) {
  uv_ok(uv_loop_init(&UVS.loop), "uv_loop_init");
  uv_ok(uv_prepare_init(&UVS.loop, &UVS.prep), "uv_prepare_init");
  uv_ok(uv_prepare_start(&UVS.prep, libuv_prep_cb), "uv_prepare_start");
  uv_unref((uv_handle_t *)&UVS.prep);
}

static double libuv_update_time(void) {
  uv_update_time(&UVS.loop);
  return (double)uv_now(&UVS.loop);
}

static void libuv_fire(uv_timer_t *t) { on_fire((size_t)(t - UVS.t)); }

static void libuv_schedule(size_t n) {
  UVS.t = xmalloc(n * sizeof(*UVS.t));
  for (size_t i = 0; i < n; i++) {
    uv_ok(uv_timer_init(&UVS.loop, &UVS.t[i]), "uv_timer_init");
    uv_ok(uv_timer_start(&UVS.t[i], libuv_fire, timeout_of(i), 0),
          "uv_timer_start");
  }
}

static void libuv_run(void) { uv_ok(uv_run(&UVS.loop, UV_RUN_DEFAULT), "uv_run"); }

static void libuv_cleanup(size_t n) {
  for (size_t i = 0; i < n; i++)
    uv_close((uv_handle_t *)&UVS.t[i], NULL);
  uv_close((uv_handle_t *)&UVS.prep, NULL);
  uv_ok(uv_run(&UVS.loop, UV_RUN_DEFAULT), "uv_run (closing)");
  uv_ok(uv_loop_close(&UVS.loop), "uv_loop_close");
  free(UVS.t);
}

static void libuv_stop_all(size_t n) {
  for (size_t i = 0; i < n; i++)
    uv_ok(uv_timer_stop(&UVS.t[i]), "uv_timer_stop");
}

static const struct ops libuv_ops = {
    "libuv",        libuv_init,   libuv_loop_new, libuv_update_time,
    libuv_schedule, libuv_run,    libuv_cleanup,  libuv_stop_all,
    NULL,           libuv_fini,
};

/* ---- libev --------------------------------------------------------------- */

static struct {
  struct ev_loop *loop;
  ev_timer *t;
  ev_prepare prep;
} EVS;

static void libev_init(size_t n) { (void)n; }
static void libev_fini(void) {}

static void libev_prep_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
  (void)loop;
  (void)w;
  (void)revents;
  flush(true);
}

static void libev_loop_new(void) {
  EVS.loop = ev_loop_new(EVFLAG_AUTO);
  if (EVS.loop == NULL)
    die("ev_loop_new failed");
  ev_prepare_init(&EVS.prep, libev_prep_cb);
  ev_prepare_start(EVS.loop, &EVS.prep);
  ev_unref(EVS.loop); /* the prepare watcher must not keep the loop alive */
}

/* libev's monotonic base (mn_now) is not public: read CLOCK_MONOTONIC just
 * before ev_now_update(), so base <= mn_now and lateness is never
 * under-estimated (the difference is well below a microsecond). */
static double libev_update_time(void) {
  double base = mono_ms();
  ev_now_update(EVS.loop);
  return base;
}

static void libev_fire(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  if (!(revents & EV_TIMER))
    die("timer callback with revents 0x%x", (unsigned)revents);
  on_fire((size_t)(w - EVS.t));
}

static void libev_schedule(size_t n) {
  EVS.t = xmalloc(n * sizeof(*EVS.t));
  for (size_t i = 0; i < n; i++) {
    ev_timer_init(&EVS.t[i], libev_fire, (double)timeout_of(i) / 1e3, 0.);
    ev_timer_start(EVS.loop, &EVS.t[i]);
  }
}

static void libev_run(void) { ev_run(EVS.loop, 0); }

static void libev_cleanup(size_t n) {
  (void)n; /* fired one-shot timers are already stopped */
  ev_ref(EVS.loop); /* libev: ev_ref before stopping an unref'ed watcher */
  ev_prepare_stop(EVS.loop, &EVS.prep);
  ev_loop_destroy(EVS.loop);
  free(EVS.t);
}

static void libev_stop_all(size_t n) {
  for (size_t i = 0; i < n; i++)
    ev_timer_stop(EVS.loop, &EVS.t[i]);
}

static const struct ops libev_ops = {
    "libev",        libev_init,   libev_loop_new, libev_update_time,
    libev_schedule, libev_run,    libev_cleanup,  libev_stop_all,
    NULL,           libev_fini,
};

/* ---- heap4 (the candidate) ------------------------------------------------ */

/* A minimal real-time loop around the heap: run what is due, then sleep in
 * epoll_wait (on an empty epoll set, as a loop with no I/O would) until the
 * next deadline, computed from a fresh clock read. */
static struct {
  heap4_t h;
  heap4_timer_t *t;
  int ep;
} H4;

static void heap4_b_init(size_t n) { (void)n; }
static void heap4_b_fini(void) {}

static void heap4_b_loop_new(void) {
  heap4_init(&H4.h, mono_ms_floor());
  H4.ep = epoll_create1(EPOLL_CLOEXEC);
  if (H4.ep < 0)
    die("epoll_create1: %s", strerror(errno));
}

static double heap4_b_update_time(void) {
  H4.h.now = mono_ms_floor();
  return (double)H4.h.now;
}

static void heap4_b_fire(heap4_timer_t *t, void *data) {
  (void)data;
  on_fire((size_t)(t - H4.t));
}

static void heap4_b_schedule(size_t n) {
  H4.t = xmalloc(n * sizeof(*H4.t));
  for (size_t i = 0; i < n; i++) {
    heap4_timer_init(&H4.t[i], heap4_b_fire, NULL);
    if (heap4_start(&H4.h, &H4.t[i], timeout_of(i)) != 0)
      die("heap4_start: out of memory");
  }
}

static void heap4_b_run(void) {
  for (;;) {
    heap4_run(&H4.h, mono_ms_floor());
    flush(true);
    int64_t ms = heap4_timeout(&H4.h, mono_ms_floor());
    if (ms < 0)
      return;
    if (ms == 0)
      continue;
    struct epoll_event ev;
    if (epoll_wait(H4.ep, &ev, 1, ms > 1000000 ? 1000000 : (int)ms) < 0 &&
        errno != EINTR)
      die("epoll_wait: %s", strerror(errno));
  }
}

static void heap4_b_cleanup(size_t n) {
  (void)n;
  heap4_fini(&H4.h);
  free(H4.t);
  close(H4.ep);
}

static void heap4_b_stop_all(size_t n) {
  for (size_t i = 0; i < n; i++)
    heap4_stop(&H4.h, &H4.t[i]);
}

static void heap4_b_check(enum check_point at, size_t n) {
  char why[256] = "";
  size_t want = at == CHECK_PENDING ? n : 0;
  if (H4.h.n != want)
    die("heap holds %zu timers, expected %zu", H4.h.n, want);
  if (heap4_verify(&H4.h, why, sizeof why) != 0)
    die("heap4_verify: %s", why);
}

static const struct ops heap4_ops = {
    "heap4",          heap4_b_init,    heap4_b_loop_new, heap4_b_update_time,
    heap4_b_schedule, heap4_b_run,     heap4_b_cleanup,  heap4_b_stop_all,
    heap4_b_check,    heap4_b_fini,
};

static const struct ops *const all_ops[] = {&axon_ops, &libuv_ops, &libev_ops,
                                            &heap4_ops};

/* ------------------------------------------------------------------------ */
/* One measurement (runs in a child)                                         */
/* ------------------------------------------------------------------------ */

static void measure(const struct ops *o, size_t n, bool cancel,
                    struct result *res) {
  memset(&R, 0, sizeof R);
  R.n = n;
  R.seen = xmalloc_faulted((n + 7) / 8);
  R.hist = xmalloc_faulted(HIST_BINS * sizeof(*R.hist));
  R.max_late = R.max_early = -1e300;
  group_reset();
  o->init(n);
  o->loop_new();

  size_t rss0 = rss_bytes();
  R.base_ms = o->update_time();
  R.steady_to = UINT64_MAX; /* set once the loop has caught up: flush() */
  double t0 = mono_ms();
  o->schedule(n);
  double t1 = mono_ms();
  size_t rss1 = rss_bytes();

  double c0 = cpu_ms(), w0 = mono_ms();
  o->run();
  double w1 = mono_ms(), c1 = cpu_ms();
  flush(true);
  if (R.fired != n)
    die("the loop returned after %zu of %zu timers fired", R.fired, n);
  if (o->check)
    o->check(CHECK_FIRED, n);
  size_t peak = rss1, rss2 = rss_bytes(), hwm = hwm_bytes();
  if (rss2 > peak)
    peak = rss2;
  if (hwm > peak)
    peak = hwm;

  double t2 = mono_ms();
  o->cleanup(n);
  double t3 = mono_ms();

  memset(res, 0, sizeof *res);
  res->v[K_SCHEDULE] = t1 - t0;
  res->v[K_DISPATCH_CPU] = c1 - c0;
  res->v[K_DISPATCH_WALL] = w1 - w0;
  res->v[K_CLEANUP] = t3 - t2;
  res->v[K_BYTES] = peak > rss0 ? (double)(peak - rss0) / (double)n : 0;
  res->v[K_LATE] = R.max_late;
  res->has[K_SCHEDULE] = res->has[K_DISPATCH_CPU] = res->has[K_DISPATCH_WALL] =
      res->has[K_CLEANUP] = res->has[K_BYTES] = res->has[K_LATE] = true;
  if (R.any_steady) {
    res->v[K_LATE_STEADY] = R.max_late_steady;
    res->v[K_P99_STEADY] = hist_quantile(0.99);
    res->has[K_LATE_STEADY] = res->has[K_P99_STEADY] = true;
  }
  res->early_ms = R.max_early;

  if (cancel) {
    o->loop_new();
    o->update_time();
    o->schedule(n);
    if (o->check)
      o->check(CHECK_PENDING, n);
    double t4 = mono_ms();
    o->stop_all(n);
    double t5 = mono_ms();
    if (o->check)
      o->check(CHECK_STOPPED, n);
    o->cleanup(n);
    res->v[K_CANCEL] = t5 - t4;
    res->has[K_CANCEL] = true;
  }
  o->fini();
  free(R.seen);
  free(R.hist);
}

/* ------------------------------------------------------------------------ */
/* Parent: fork per run, collect, print                                      */
/* ------------------------------------------------------------------------ */

/* Runs @o in a child; returns true and fills @res on success. */
static bool run_child(const struct ops *o, size_t n, bool cancel,
                      struct result *res) {
  int fds[2];
  if (pipe(fds) != 0) {
    perror("timers: pipe");
    return false;
  }
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    perror("timers: fork");
    return false;
  }
  if (pid == 0) {
    close(fds[0]);
    impl_name = o->name;
    alarm((unsigned)(4 * (timeout_of(n - 1) / 1000) + 60));
    struct result r;
    measure(o, n, cancel, &r);
    if (write(fds[1], &r, sizeof r) != (ssize_t)sizeof r)
      die("write to parent: %s", strerror(errno));
    _exit(0);
  }
  close(fds[1]);
  size_t got = 0;
  while (got < sizeof *res) {
    ssize_t k = read(fds[0], (char *)res + got, sizeof *res - got);
    if (k < 0 && errno == EINTR)
      continue;
    if (k <= 0)
      break;
    got += (size_t)k;
  }
  close(fds[0]);
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) {
      perror("timers: waitpid");
      return false;
    }
  if (WIFSIGNALED(st)) {
    fprintf(stderr, "timers: %s: child killed by signal %d%s\n", o->name,
            WTERMSIG(st), WTERMSIG(st) == SIGALRM ? " (watchdog timeout)" : "");
    return false;
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || got != sizeof *res) {
    fprintf(stderr, "timers: %s: child failed (exit status %d)\n", o->name,
            WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return false;
  }
  return true;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Median per key over @reps runs. */
static void median(struct result *runs, int reps, struct result *out) {
  memset(out, 0, sizeof *out);
  out->early_ms = -1e300;
  for (int k = 0; k < K_COUNT; k++) {
    double v[MAX_REPS];
    int m = 0;
    for (int r = 0; r < reps; r++)
      if (runs[r].has[k])
        v[m++] = runs[r].v[k];
    if (m == 0)
      continue;
    qsort(v, (size_t)m, sizeof v[0], cmp_double);
    out->v[k] = m % 2 ? v[m / 2] : (v[m / 2 - 1] + v[m / 2]) / 2;
    out->has[k] = true;
  }
  for (int r = 0; r < reps; r++)
    if (runs[r].early_ms > out->early_ms)
      out->early_ms = runs[r].early_ms;
}

static void print_line(const char *bench, const char *impl,
                       const struct result *r) {
  printf("bench=%s impl=%s", bench, impl);
  for (int k = 0; k < K_COUNT; k++) {
    if (!r->has[k])
      continue;
    printf(" %s=", keys[k].name);
    printf(keys[k].fmt, r->v[k]);
  }
  putchar('\n');
  fflush(stdout);
}

static void usage(void) {
  fprintf(stderr, "usage: timers -b NAME -n N [-c] [-r REPS] "
                  "axon|libuv|libev|heap4...\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *bench = NULL;
  size_t n = 0;
  bool cancel = false;
  int reps = 1, opt;
  while ((opt = getopt(argc, argv, "b:n:cr:")) != -1) {
    switch (opt) {
    case 'b':
      bench = optarg;
      break;
    case 'n':
      n = (size_t)strtoull(optarg, NULL, 10);
      break;
    case 'c':
      cancel = true;
      break;
    case 'r':
      reps = atoi(optarg);
      break;
    default:
      usage();
    }
  }
  int nimpl = argc - optind;
  if (bench == NULL || n == 0 || n > 1000000000 || reps < 1 ||
      reps > MAX_REPS || nimpl < 1 || nimpl > MAX_IMPLS)
    usage();

  const struct ops *impl[MAX_IMPLS];
  for (int i = 0; i < nimpl; i++) {
    impl[i] = NULL;
    for (size_t j = 0; j < sizeof all_ops / sizeof all_ops[0]; j++)
      if (strcmp(argv[optind + i], all_ops[j]->name) == 0)
        impl[i] = all_ops[j];
    if (impl[i] == NULL) {
      fprintf(stderr, "timers: unknown implementation '%s'\n", argv[optind + i]);
      usage();
    }
  }

  for (int i = 0; i < nimpl; i++) { /* say which backend axon will use */
    ax_loop_t *probe;
    if (impl[i] == &axon_ops && ax_loop_new(NULL, &probe) == 0) {
      ax_loop_info_t info;
      if (ax_loop_info(probe, &info) == 0)
        fprintf(stderr, "timers: axon backend=%s requested=%s%s%s\n",
                info.backend, info.requested,
                info.fallback_reason ? " fallback: " : "",
                info.fallback_reason ? info.fallback_reason : "");
      ax_loop_free(probe);
    }
  }

  static struct result runs[MAX_IMPLS][MAX_REPS];
  struct result med[MAX_IMPLS];
  bool ok[MAX_IMPLS];
  for (int i = 0; i < nimpl; i++)
    ok[i] = true;
  for (int r = 0; r < reps; r++) /* interleaved: A B C A B C ... */
    for (int i = 0; i < nimpl; i++)
      if (ok[i])
        ok[i] = run_child(impl[i], n, cancel, &runs[i][r]);

  int status = 0, axon = -1;
  for (int i = 0; i < nimpl; i++) {
    if (!ok[i]) {
      status = 1;
      continue;
    }
    median(runs[i], reps, &med[i]);
    print_line(bench, impl[i]->name, &med[i]);
    if (med[i].early_ms > 0) {
      fprintf(stderr,
              "timers: %s: ERROR: a timer fired at least %.3f ms before its "
              "deadline\n",
              impl[i]->name, med[i].early_ms);
      status = 1;
    }
    if (impl[i] == &axon_ops)
      axon = i;
  }
  /* Ratio lines: axon / peer for every key; lower is better for all keys
   * here (times, bytes, lateness). Keys whose peer value is 0 are omitted. */
  for (int i = 0; axon >= 0 && i < nimpl; i++) {
    if (i == axon || !ok[i])
      continue;
    printf("bench=%s impl=axon_vs_%s", bench, impl[i]->name);
    for (int k = 0; k < K_COUNT; k++)
      if (med[axon].has[k] && med[i].has[k] && med[i].v[k] > 0)
        printf(" %s=%.3f", keys[k].name, med[axon].v[k] / med[i].v[k]);
    putchar('\n');
  }
  return status;
}
