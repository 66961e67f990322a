/*
 * timers — every way the loop can call you later, with what fires when.
 *
 *   +0    defer      a deferred call: runs once the current callback returns
 *   +50   backoff    a one-shot timer whose callback returns its next delay
 *                    (50, 100, 200, 400 ms: fires at +50, +150, +350, +750)
 *   +100  timeout    a one-shot timer; its callback queues the deferred call
 *   +200  interval   a repeating timer (every 200 ms), stopped after 3 ticks
 *   +300  date       a wall-clock date timer set to now + 300 ms
 *
 * Events are at least 50 ms apart, so the order printed is deterministic.
 * Once the last timer is done no live source is left and ax_loop_run()
 * returns by itself.
 */
#include <axon/axon.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

struct demo {
  ax_loop_t *loop;
  uint64_t start; /* ax_loop_now() when we began */
  ax_source_t *defer;
  int defers, ticks;
  int64_t backoff_ms;
};

static void say(struct demo *d, const char *what) {
  printf("t=+%4llums %s\n", (unsigned long long)(ax_loop_now(d->loop) - d->start), what);
}

static void defer_cb(ax_source_t *src, void *data) {
  struct demo *d = data;
  (void)src;
  say(d, ++d->defers == 1 ? "defer: runs before any timer"
                          : "defer: queued by the timeout, runs right after it");
}

static int64_t timeout_cb(ax_source_t *src, void *data) {
  struct demo *d = data;
  (void)src;
  say(d, "timeout: one-shot, 100 ms");
  int rc = ax_defer_start(d->defer);
  if (rc < 0) fprintf(stderr, "timers: ax_defer_start: %s\n", ax_strerror(rc));
  return AX_TIMER_CONTINUE; /* one-shot: stops */
}

static int64_t interval_cb(ax_source_t *src, void *data) {
  struct demo *d = data;
  char what[64];
  snprintf(what, sizeof what, "interval: tick %d of 3, every 200 ms", ++d->ticks);
  say(d, what);
  if (d->ticks == 3) ax_source_stop(src); /* the return value is then ignored */
  return AX_TIMER_CONTINUE;               /* otherwise: keep repeating */
}

static int64_t date_cb(ax_source_t *src, void *data) {
  (void)src;
  say(data, "date: wall clock reached start + 300 ms");
  return AX_TIMER_CONTINUE;
}

static int64_t backoff_cb(ax_source_t *src, void *data) {
  struct demo *d = data;
  char what[64];
  (void)src;
  if (d->backoff_ms >= 400) {
    say(d, "backoff: done, returns CONTINUE (one-shot: stops)");
    return AX_TIMER_CONTINUE;
  }
  d->backoff_ms *= 2; /* the redis/ae pattern: the callback picks its delay */
  snprintf(what, sizeof what, "backoff: returns %" PRId64 " ms", d->backoff_ms);
  say(d, what);
  return d->backoff_ms;
}

/* Print why @what failed; pass @rc through. */
static int step(int rc, const char *what) {
  if (rc < 0) fprintf(stderr, "timers: %s: %s\n", what, ax_strerror(rc));
  return rc;
}

int main(void) {
  struct demo d = {.backoff_ms = 50};
  ax_source_t *timeout = NULL, *interval = NULL, *date = NULL, *backoff = NULL;
  int rc = step(ax_loop_new(NULL, &d.loop), "ax_loop_new");
  if (rc == 0) {
    d.start = ax_loop_now(d.loop);
    rc = step(ax_defer_new(d.loop, defer_cb, &d, &d.defer), "ax_defer_new");
  }
  if (rc == 0) rc = step(ax_timer_new(d.loop, timeout_cb, &d, &timeout), "ax_timer_new");
  if (rc == 0) rc = step(ax_timer_new(d.loop, interval_cb, &d, &interval), "ax_timer_new");
  if (rc == 0) rc = step(ax_timer_new(d.loop, backoff_cb, &d, &backoff), "ax_timer_new");
  if (rc == 0) rc = step(ax_date_new(d.loop, date_cb, &d, &date), "ax_date_new");
  if (rc == 0) rc = step(ax_defer_start(d.defer), "ax_defer_start");
  if (rc == 0) rc = step(ax_timer_start(backoff, 50, 0), "ax_timer_start");
  if (rc == 0) rc = step(ax_timer_start(timeout, 100, 0), "ax_timer_start");
  if (rc == 0) rc = step(ax_timer_start(interval, 200, 200), "ax_timer_start");
  /* A date is absolute wall-clock time: it would still fire at the right
   * moment if the clock were stepped while we wait. */
  if (rc == 0)
    rc = step(ax_date_start(date, ax_realtime_ms(d.loop) + 300), "ax_date_start");
  if (rc == 0) rc = step(ax_loop_run(d.loop, AX_RUN_DEFAULT), "ax_loop_run");
  if (rc == 0) say(&d, "loop: no live source left, ax_loop_run() returned");
  ax_loop_free(d.loop); /* frees the sources too */
  return rc < 0 ? 1 : 0;
}
