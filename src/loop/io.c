/*
 * I/O readiness sources, wake sources and the loop's own fd watchers: all
 * live in the fd table (one source per fd) and are armed through the
 * backend.
 *
 * Stale events: each arm from the inactive state takes a new generation,
 * which the backend stores with its registration and reports back with each
 * event. Dispatch drops an event whose generation is not the one of the
 * source now in the table for that fd — the nginx "instance bit" made exact:
 * a source freed, its fd closed and reused by a new source in the same
 * batch never receives the old source's event.
 */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <unistd.h>

#include "loop/loop_int.h"

#define IO_INTEREST (AX_READABLE | AX_WRITABLE)
#define IO_MODES (AX_IO_EDGE | AX_IO_ONESHOT)

int ax__fdtab_reserve(ax_loop_t *loop, int fd) {
  if (fd < loop->fdcap)
    return 0;
  int cap = loop->fdcap ? loop->fdcap : 64;
  while (cap <= fd)
    cap = cap > INT32_MAX / 2 ? fd + 1 : cap * 2;
  struct ax__io **t = ax__realloc(loop, loop->fdtab, (size_t)cap * sizeof *t);
  if (!t)
    return -ENOMEM;
  memset(t + loop->fdcap, 0, (size_t)(cap - loop->fdcap) * sizeof *t);
  loop->fdtab = t;
  loop->fdcap = cap;
  return 0;
}

int ax__evbuf_reserve(ax_loop_t *loop, int n) {
  if (n <= loop->evcap)
    return 0;
  int cap = loop->evcap ? loop->evcap : 64;
  while (cap < n)
    cap *= 2;
  struct ax__event *ev = ax__realloc(loop, loop->ev, (size_t)cap * sizeof *ev);
  if (!ev)
    return -ENOMEM;
  loop->ev = ev;
  loop->evcap = cap;
  return 0;
}

/* Claim the fd's table slot for a new source of @kind. */
static int io_new(ax_loop_t *loop, int kind, int fd, void (*cb)(void),
                  void *data, struct ax__io **out) {
  if (fd < 0)
    return -EINVAL;
  if (loop->be->id == AX_BACKEND_SELECT && fd >= FD_SETSIZE)
    return AX_EFDTOOBIG;
  if (fd < loop->fdcap && loop->fdtab[fd])
    return -EEXIST;
  int rc = ax__fdtab_reserve(loop, fd);
  if (rc)
    return rc;
  ax_source_t *src;
  rc = ax__source_new(loop, kind, cb, data, &src);
  if (rc)
    return rc;
  struct ax__io *io = (struct ax__io *)src;
  io->fd = fd;
  loop->fdtab[fd] = io;
  *out = io;
  return 0;
}

int ax__io_arm(struct ax__io *io, uint32_t events) {
  ax_loop_t *loop = io->h.loop;
  bool active = io->h.flags & AX__F_ACTIVE;
  uint32_t old = active ? io->events : 0;
  if (active && old == events)
    return 0;
  if (!active)
    io->gen = ++loop->gen_next ? loop->gen_next : ++loop->gen_next; /* never 0 */
  int rc = loop->be->ctl(loop, io, old, events);
  if (rc)
    return rc; /* the backend left the old registration in place */
  io->events = events;
  ax__source_activate(&io->h);
  return 0;
}

void ax__io_disarm(struct ax__io *io) {
  if (!(io->h.flags & AX__F_ACTIVE))
    return;
  ax_loop_t *loop = io->h.loop;
  (void)loop->be->ctl(loop, io, io->events, 0);
  io->events = 0;
  ax__source_deactivate(&io->h);
}

void ax__io_forget(struct ax__io *io, bool close_fd) {
  ax_loop_t *loop = io->h.loop;
  if (io->fd >= 0 && io->fd < loop->fdcap && loop->fdtab[io->fd] == io)
    loop->fdtab[io->fd] = NULL;
  if (close_fd && io->fd >= 0)
    close(io->fd);
  io->fd = -1;
}

int ax__io_internal(ax_loop_t *loop, int fd, ax__internal_cb cb,
                    struct ax__io **out) {
  struct ax__io *io;
  int rc = io_new(loop, AX__KIND_INTERNAL, fd, (void (*)(void))cb, NULL, &io);
  if (rc)
    return rc;
  rc = ax__io_arm(io, AX_READABLE);
  if (rc) {
    io->fd = -1; /* the caller still owns and closes the fd */
    loop->fdtab[fd] = NULL;
    ax__source_destroy(&io->h);
    return rc;
  }
  *out = io;
  return 0;
}

/* ---- public: I/O sources ------------------------------------------------ */

int ax_io_new(ax_loop_t *loop, int fd, ax_io_cb cb, void *data,
              ax_source_t **out) {
  if (!loop || !cb || !out)
    return -EINVAL;
  struct ax__io *io;
  int rc = io_new(loop, AX_SOURCE_IO, fd, (void (*)(void))cb, data, &io);
  if (rc == 0)
    *out = &io->h;
  return rc;
}

int ax_io_start(ax_source_t *src, unsigned events) {
  int rc = ax__source_check(src, AX_SOURCE_IO);
  if (rc)
    return rc;
  if (!(events & IO_INTEREST) || (events & ~(IO_INTEREST | IO_MODES)) ||
      (events & IO_MODES) == IO_MODES)
    return -EINVAL;
  if ((events & AX_IO_EDGE) && !src->loop->be->edge)
    return -ENOTSUP;
  return ax__io_arm((struct ax__io *)src, events);
}

int ax_io_fd(const ax_source_t *src) {
  int rc = ax__source_check(src, AX_SOURCE_IO);
  return rc ? rc : ((const struct ax__io *)src)->fd;
}

/* ---- public: wake sources ----------------------------------------------- */

int ax_wake_new(ax_loop_t *loop, ax_wake_cb cb, void *data,
                ax_source_t **out) {
  if (!loop || !cb || !out)
    return -EINVAL;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0)
    return -errno;
  struct ax__io *io;
  int rc = io_new(loop, AX_SOURCE_WAKE, fd, (void (*)(void))cb, data, &io);
  if (rc) {
    close(fd);
    return rc;
  }
  *out = &io->h;
  return 0;
}

int ax_wake_start(ax_source_t *src) {
  int rc = ax__source_check(src, AX_SOURCE_WAKE);
  return rc ? rc : ax__io_arm((struct ax__io *)src, AX_READABLE);
}

/*
 * Thread-safe: reads only fields fixed at creation (kind, fd) and writes the
 * eventfd, whose counter the kernel serialises. EAGAIN means the counter is
 * saturated, i.e. a wake is already pending: nothing is lost.
 */
int ax_wake_send(ax_source_t *src) {
  if (!src)
    return -EINVAL;
  if (src->kind != AX_SOURCE_WAKE)
    return AX_EKIND;
  uint64_t one = 1;
  ssize_t n;
  do
    n = write(((struct ax__io *)src)->fd, &one, sizeof one);
  while (n < 0 && errno == EINTR);
  return n < 0 && errno != EAGAIN ? -errno : 0;
}

/* ---- dispatch ----------------------------------------------------------- */

static void io_call(ax_loop_t *loop, struct ax__io *io, unsigned revents) {
  switch (io->h.kind) {
  case AX_SOURCE_IO:
    loop->stats.io_events++;
    ((ax_io_cb)io->h.cb)(&io->h, io->fd, revents, io->h.data);
    break;
  case AX_SOURCE_WAKE: {
    uint64_t count;
    while (read(io->fd, &count, sizeof count) < 0 && errno == EINTR)
      ;
    loop->stats.wakeups++;
    ((ax_wake_cb)io->h.cb)(&io->h, io->h.data);
    break;
  }
  default:
    ((ax__internal_cb)io->h.cb)(loop, io, revents);
    break;
  }
}

/*
 * Deliver the batch the backend collected. Callbacks may stop, free or
 * create any source: each event is re-validated against the fd table (and
 * the generation) just before its callback, so it never reaches a source
 * that went away or replaced the one it was meant for.
 */
void ax__io_dispatch(ax_loop_t *loop) {
  int n = loop->nev;
  loop->nev = 0;
  for (int i = 0; i < n; i++) {
    const struct ax__event ev = loop->ev[i];
    struct ax__io *io = ev.fd < loop->fdcap ? loop->fdtab[ev.fd] : NULL;
    if (!io || io->gen != ev.gen || !(io->h.flags & AX__F_ACTIVE)) {
      loop->stats.stale_events++;
      continue;
    }
    unsigned revents = ev.revents & ((io->events & IO_INTEREST) |
                                     AX_ERROR | AX_HANGUP);
    if (!revents)
      continue;
    if (io->events & AX_IO_ONESHOT)
      ax__io_disarm(io);
    io_call(loop, io, revents);
  }
}

bool ax__ucq_push(ax_loop_t *loop, struct ax__uop *op, int res,
                  uint32_t flags) {
  if (loop->nucq == loop->ucqcap) {
    size_t ncap = loop->ucqcap ? loop->ucqcap * 2 : 256;
    struct ax__ucqe *p = ax__realloc(loop, loop->ucq, ncap * sizeof(*p));
    if (p == NULL)
      return false;
    loop->ucq = p;
    loop->ucqcap = ncap;
  }
  loop->ucq[loop->nucq++] = (struct ax__ucqe){.op = op, .res = res,
                                              .flags = flags};
  return true;
}

/* Native completions, in the order the kernel posted them. A callback may
 * submit more operations; their completions are reaped by the next wait, so
 * the array does not grow under this loop. The position is kept in the
 * loop (ucq_next), so that a callback can see what is still to come. */
void ax__ucq_dispatch(ax_loop_t *loop) {
  while (loop->ucq_next < loop->nucq) {
    struct ax__ucqe c = loop->ucq[loop->ucq_next++];
    loop->stats.io_events++;
    c.op->done(loop, c.op, c.res, c.flags);
  }
  loop->nucq = loop->ucq_next = 0;
}
