/*
 * bench/loop_iter.c — iterations per second of an otherwise idle loop
 * (libuv's loop_count benchmark: one uv_idle_t counting its calls).
 *
 * Usage: loop_iter -n N [-r REPS] IMPL...      IMPL: axon | libuv | libev
 *
 *   axon   one deferred call whose callback re-queues itself with
 *          ax_defer_start(self): one run per loop iteration
 *   libuv  a uv_idle_t (exactly loop_count)
 *   libev  an ev_idle
 *
 * Each callback counts; at the N-th call it stops its source and the loop
 * (ax_loop_stop, uv_stop, ev_break). iters_per_s = N / wall time of the run.
 * Runs are interleaved (A B C A B C ...) and the median of REPS is printed:
 *
 *   bench=loop_iter impl=IMPL iters_per_s=
 *   bench=loop_iter impl=axon_vs_PEER iters_per_s=<axon / PEER>
 *
 * HIGHER IS BETTER for iters_per_s, so a ratio above 1 means axon wins.
 * For axon the loop's own iteration counter (ax_loop_info) must agree with
 * the number of calls, or the comparison would not be one call per
 * iteration: a mismatch is an error. Every run is bounded by N and by an
 * alarm() watchdog.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <axon/axon.h>
#include <ev.h>
#include <uv.h>

#define MAX_IMPLS 3
#define MAX_REPS 15
#define WATCHDOG_S 300

static uint64_t count, target;
static int status; /* exit status: 1 after a reported mismatch */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  va_list ap;
  fputs("loop_iter: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

static void ax_ok(int rc, const char *what) {
  if (__builtin_expect(rc != 0, 0))
    die("axon: %s returned %d (%s: %s)", what, rc, ax_err_name(rc),
        ax_strerror(rc));
}

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- axon ---------------------------------------------------------------- */

static void axon_cb(ax_source_t *src, void *data) {
  ax_loop_t *loop = data;
  if (++count >= target) {
    ax_loop_stop(loop);
    return;
  }
  ax_ok(ax_defer_start(src), "ax_defer_start");
}

static double axon_run(void) {
  ax_loop_t *loop;
  ax_source_t *d;
  ax_loop_info_t info;
  ax_ok(ax_loop_new(NULL, &loop), "ax_loop_new");
  ax_ok(ax_defer_new(loop, axon_cb, loop, &d), "ax_defer_new");
  ax_ok(ax_defer_start(d), "ax_defer_start");
  double t0 = mono_s();
  ax_ok(ax_loop_run(loop, AX_RUN_DEFAULT), "ax_loop_run");
  double t1 = mono_s();
  ax_ok(ax_loop_info(loop, &info), "ax_loop_info");
  if (count != target)
    die("axon: ax_loop_run returned after %llu of %llu calls",
        (unsigned long long)count, (unsigned long long)target);
  if (info.defers_run != target)
    die("axon: ax_loop_info defers_run=%llu, expected %llu",
        (unsigned long long)info.defers_run, (unsigned long long)target);
  /* One call per iteration; allow the few iterations around start/stop.
   * Reported (and the exit status set), but the number is still printed. */
  if (info.iterations + 2 < target || info.iterations > target + 2) {
    fprintf(stderr,
            "loop_iter: axon: ERROR: %llu deferred calls ran in %llu loop "
            "iterations (expected one per iteration)\n",
            (unsigned long long)target, (unsigned long long)info.iterations);
    status = 1;
  }
  static bool said;
  if (!said)
    fprintf(stderr, "loop_iter: axon backend=%s requested=%s%s%s\n",
            info.backend, info.requested,
            info.fallback_reason ? " fallback: " : "",
            info.fallback_reason ? info.fallback_reason : "");
  said = true;
  ax_source_free(d);
  ax_ok(ax_loop_free(loop), "ax_loop_free");
  return t1 - t0;
}

/* ---- libuv --------------------------------------------------------------- */

static void libuv_cb(uv_idle_t *h) {
  if (++count >= target) {
    uv_idle_stop(h);
    uv_stop(h->loop);
  }
}

static void uv_ok(int rc, const char *what) {
  if (rc != 0)
    die("libuv: %s returned %d (%s)", what, rc, uv_strerror(rc));
}

static double libuv_run(void) {
  uv_loop_t loop;
  uv_idle_t idle;
  uv_ok(uv_loop_init(&loop), "uv_loop_init");
  uv_ok(uv_idle_init(&loop, &idle), "uv_idle_init");
  uv_ok(uv_idle_start(&idle, libuv_cb), "uv_idle_start");
  double t0 = mono_s();
  uv_run(&loop, UV_RUN_DEFAULT); /* non-zero after uv_stop: expected */
  double t1 = mono_s();
  if (count != target)
    die("libuv: uv_run returned after %llu of %llu calls",
        (unsigned long long)count, (unsigned long long)target);
  uv_close((uv_handle_t *)&idle, NULL);
  uv_ok(uv_run(&loop, UV_RUN_DEFAULT), "uv_run (closing)");
  uv_ok(uv_loop_close(&loop), "uv_loop_close");
  return t1 - t0;
}

/* ---- libev --------------------------------------------------------------- */

static void libev_cb(struct ev_loop *loop, ev_idle *w, int revents) {
  (void)revents;
  if (++count >= target) {
    ev_idle_stop(loop, w);
    ev_break(loop, EVBREAK_ALL);
  }
}

static double libev_run(void) {
  struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
  ev_idle idle;
  if (loop == NULL)
    die("libev: ev_loop_new failed");
  ev_idle_init(&idle, libev_cb);
  ev_idle_start(loop, &idle);
  double t0 = mono_s();
  ev_run(loop, 0);
  double t1 = mono_s();
  if (count != target)
    die("libev: ev_run returned after %llu of %llu calls",
        (unsigned long long)count, (unsigned long long)target);
  ev_loop_destroy(loop);
  return t1 - t0;
}

/* ------------------------------------------------------------------------ */

static const struct {
  const char *name;
  double (*run)(void);
} impls[] = {{"axon", axon_run}, {"libuv", libuv_run}, {"libev", libev_run}};

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void usage(void) {
  fprintf(stderr, "usage: loop_iter -n N [-r REPS] axon|libuv|libev...\n");
  exit(2);
}

int main(int argc, char **argv) {
  int reps = 1, opt;
  while ((opt = getopt(argc, argv, "n:r:")) != -1) {
    switch (opt) {
    case 'n':
      target = strtoull(optarg, NULL, 10);
      break;
    case 'r':
      reps = atoi(optarg);
      break;
    default:
      usage();
    }
  }
  int nimpl = argc - optind, sel[MAX_IMPLS], axon = -1;
  if (target == 0 || reps < 1 || reps > MAX_REPS || nimpl < 1 ||
      nimpl > MAX_IMPLS)
    usage();
  for (int i = 0; i < nimpl; i++) {
    sel[i] = -1;
    for (int j = 0; j < MAX_IMPLS; j++)
      if (strcmp(argv[optind + i], impls[j].name) == 0)
        sel[i] = j;
    if (sel[i] < 0) {
      fprintf(stderr, "loop_iter: unknown implementation '%s'\n",
              argv[optind + i]);
      usage();
    }
    if (sel[i] == 0)
      axon = i;
  }
  alarm(WATCHDOG_S); /* default action: terminate */

  double rate[MAX_IMPLS][MAX_REPS], med[MAX_IMPLS];
  for (int r = 0; r < reps; r++) /* interleaved: A B C A B C ... */
    for (int i = 0; i < nimpl; i++) {
      count = 0;
      rate[i][r] = (double)target / impls[sel[i]].run();
    }
  for (int i = 0; i < nimpl; i++) {
    qsort(rate[i], (size_t)reps, sizeof(double), cmp_double);
    med[i] = reps % 2 ? rate[i][reps / 2]
                      : (rate[i][reps / 2 - 1] + rate[i][reps / 2]) / 2;
    printf("bench=loop_iter impl=%s iters_per_s=%.0f\n", impls[sel[i]].name,
           med[i]);
  }
  /* Ratio lines: axon / peer; HIGHER is better for iters_per_s. */
  for (int i = 0; axon >= 0 && i < nimpl; i++)
    if (i != axon)
      printf("bench=loop_iter impl=axon_vs_%s iters_per_s=%.3f\n",
             impls[sel[i]].name, med[axon] / med[i]);
  return status;
}
