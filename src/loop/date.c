/*
 * Date timers: fire when the wall clock (CLOCK_REALTIME) reaches a date.
 *
 * The loop's wait is bounded by the earliest date computed from the wall
 * clock at each iteration, so a date is never waited for on a stale
 * reading. A clock step while the loop sleeps is reported by a timerfd armed
 * with TFD_TIMER_CANCEL_ON_SET: its read fails with ECANCELED, the loop
 * wakes and every date is re-evaluated against the new time (a step forward
 * fires what became due; a step back waits longer). Dates are few by nature,
 * so they sit in one list sorted by date (insertion walks from the end).
 */
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "loop/loop_int.h"

static int64_t clock_realtime_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t ax_realtime_ms(const ax_loop_t *loop) {
  if (loop && loop->realtime_ms)
    return loop->realtime_ms(loop->clock_ctx);
  return clock_realtime_ms();
}

/* Arm far in the future: only the cancel-on-set notification matters. */
static int clockfd_arm(int fd) {
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  its.it_value.tv_sec = (time_t)(clock_realtime_ms() / 1000) + 365 * 86400;
  return timerfd_settime(fd, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, &its,
                         NULL) < 0 ? -errno : 0;
}

static void clockfd_event(ax_loop_t *loop, struct ax__io *io, unsigned revents) {
  (void)revents;
  uint64_t n;
  ssize_t r = read(io->fd, &n, sizeof n);
  /* ECANCELED: the clock was stepped (re-arming clears that state); a full
   * read: the far-future expiry itself passed. Either way, arm again. */
  if ((r < 0 && errno == ECANCELED) || r == (ssize_t)sizeof n)
    (void)clockfd_arm(io->fd);
  loop->clock_dirty = true;
}

static int clockfd_open(ax_loop_t *loop) {
  if (loop->clockfd)
    return 0;
  int fd = timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0)
    return -errno;
  int rc = clockfd_arm(fd);
  if (rc == 0)
    rc = ax__io_internal(loop, fd, clockfd_event, &loop->clockfd);
  if (rc)
    close(fd);
  return rc;
}

void ax__clock_fini(ax_loop_t *loop) {
  if (loop->clockfd)
    ax__source_destroy(&loop->clockfd->h);
  loop->clockfd = NULL;
}

void ax_loop_clock_changed(ax_loop_t *loop) {
  if (loop)
    loop->clock_dirty = true;
}

void ax__date_link(ax_loop_t *loop, struct ax__timer *t) {
  struct ax__list *at = loop->dates.prev;
  while (at != &loop->dates &&
         ax__container_of(at, struct ax__timer, link)->deadline > t->deadline)
    at = at->prev;
  ax__list_append(at->next, &t->link); /* insert before at->next */
  t->h.pos = AX__POS_DUE;              /* "linked" */
}

void ax__date_unlink(ax_loop_t *loop, struct ax__timer *t) {
  (void)loop;
  t->h.flags &= (uint8_t)~AX__F_FIRED;
  ax__list_unlink(&t->link);
  t->h.pos = 0;
}

int ax_date_new(ax_loop_t *loop, ax_timer_cb cb, void *data,
                ax_source_t **out) {
  int rc = ax__source_new(loop, AX_SOURCE_DATE, (void (*)(void))cb, data, out);
  if (rc == 0)
    ax__list_init(&((struct ax__timer *)*out)->link);
  return rc;
}

int ax_date_start(ax_source_t *src, int64_t when_ms) {
  int rc = ax__source_check(src, AX_SOURCE_DATE);
  if (rc)
    return rc;
  if (when_ms < 0)
    return -EINVAL;
  rc = clockfd_open(src->loop);
  if (rc)
    return rc;
  struct ax__timer *t = (struct ax__timer *)src;
  ax__date_unlink(src->loop, t);
  t->deadline = (uint64_t)when_ms;
  ax__date_link(src->loop, t);
  ax__source_activate(src);
  return 0;
}

int64_t ax__dates_next(ax_loop_t *loop) {
  if (ax__list_empty(&loop->dates))
    return -1;
  int64_t first =
      (int64_t)ax__container_of(loop->dates.next, struct ax__timer, link)->deadline;
  int64_t now = ax_realtime_ms(loop);
  return first > now ? first - now : 0;
}

void ax__dates_run(ax_loop_t *loop) {
  loop->clock_dirty = false;
  if (ax__list_empty(&loop->dates))
    return;
  uint64_t now = (uint64_t)ax_realtime_ms(loop);
  struct ax__list firing;
  ax__list_init(&firing);
  while (!ax__list_empty(&loop->dates)) {
    struct ax__list *l = loop->dates.next;
    if (ax__container_of(l, struct ax__timer, link)->deadline > now)
      break;
    ax__list_unlink(l);
    ax__list_append(&firing, l);
  }
  while (!ax__list_empty(&firing)) {
    struct ax__timer *t = ax__container_of(firing.next, struct ax__timer, link);
    ax__list_unlink(&t->link);
    t->h.pos = 0;
    ax__timer_fire(loop, t);
  }
}

int ax__dates_verify(const ax_loop_t *loop, char *why, size_t len) {
  uint64_t prev = 0;
  for (const struct ax__list *l = loop->dates.next; l != &loop->dates; l = l->next) {
    const struct ax__timer *t = ax__container_of(l, const struct ax__timer, link);
    if (l->next->prev != l)
      return ax__corrupt(why, len, "date list: broken link at %p", (void *)t);
    if (t->h.kind != AX_SOURCE_DATE || !(t->h.flags & AX__F_ACTIVE))
      return ax__corrupt(why, len, "date list holds %p, not an active date", (void *)t);
    if (t->deadline < prev)
      return ax__corrupt(why, len, "date list out of order at %p", (void *)t);
    prev = t->deadline;
  }
  return 0;
}
