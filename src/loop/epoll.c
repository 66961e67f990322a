/*
 * epoll backend (Linux default).
 *
 * Quirks of the mechanism: epoll refuses regular files and directories
 * (EPERM) because they are always ready — reported as AX_ENOTPOLLABLE. A
 * registration belongs to the open file description, not the fd number: if
 * the user closes an fd without stopping its source, the kernel drops the
 * registration by itself (when no dup of it remains) and a later DEL fails
 * with EBADF/ENOENT, which is harmless. event.data carries (generation, fd)
 * so the core can drop events of a registration that has been replaced.
 * EPOLLRDHUP is requested with reading so a half-close is seen without a read.
 */
#include <sys/epoll.h>
#include <unistd.h>

#include "loop/loop_int.h"

#define EPOLL_BATCH 1024

struct epoll_state {
  int epfd;
  struct epoll_event evs[EPOLL_BATCH];
};

static int ep_init(ax_loop_t *loop) {
  struct epoll_state *st = ax__alloc(loop, sizeof *st);
  if (!st)
    return -ENOMEM;
  st->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (st->epfd < 0) {
    int rc = -errno;
    ax__free(loop, st);
    return rc;
  }
  loop->be_data = st;
  return ax__evbuf_reserve(loop, EPOLL_BATCH);
}

static void ep_fini(ax_loop_t *loop) {
  struct epoll_state *st = loop->be_data;
  if (!st)
    return;
  close(st->epfd);
  ax__free(loop, st);
  loop->be_data = NULL;
}

static uint32_t ep_mask(uint32_t events) {
  uint32_t m = 0;
  if (events & AX_READABLE)
    m |= EPOLLIN | EPOLLRDHUP;
  if (events & AX_WRITABLE)
    m |= EPOLLOUT;
  if (events & AX_IO_EDGE)
    m |= EPOLLET;
  return m;
}

static int ep_ctl(ax_loop_t *loop, struct ax__io *io, uint32_t old,
                  uint32_t events) {
  struct epoll_state *st = loop->be_data;
  struct epoll_event ev = {.events = ep_mask(events),
                           .data.u64 = (uint64_t)io->gen << 32 | (uint32_t)io->fd};
  if (!events) {
    if (epoll_ctl(st->epfd, EPOLL_CTL_DEL, io->fd, &ev) < 0 && errno != ENOENT &&
        errno != EBADF)
      return -errno;
    return 0;
  }
  int op = old ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
  if (epoll_ctl(st->epfd, op, io->fd, &ev) == 0)
    return 0;
  /* The kernel forgot a closed-and-reopened fd (MOD → ENOENT), or still
   * holds one we never removed (ADD → EEXIST): retry with the other op. */
  if ((op == EPOLL_CTL_MOD && errno == ENOENT) ||
      (op == EPOLL_CTL_ADD && errno == EEXIST)) {
    op = op == EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
    if (epoll_ctl(st->epfd, op, io->fd, &ev) == 0)
      return 0;
  }
  return errno == EPERM ? AX_ENOTPOLLABLE : -errno;
}

static uint32_t ep_revents(uint32_t m) {
  uint32_t r = 0;
  if (m & EPOLLIN)
    r |= AX_READABLE;
  if (m & EPOLLOUT)
    r |= AX_WRITABLE;
  if (m & EPOLLERR)
    r |= AX_ERROR;
  if (m & (EPOLLHUP | EPOLLRDHUP))
    r |= AX_HANGUP | AX_READABLE; /* a reader must read to see EOF */
  return r;
}

static int ep_wait(ax_loop_t *loop, int timeout_ms) {
  struct epoll_state *st = loop->be_data;
  int n = epoll_wait(st->epfd, st->evs, EPOLL_BATCH, timeout_ms);
  if (n < 0)
    return errno == EINTR ? 0 : -errno;
  for (int i = 0; i < n; i++) {
    loop->ev[i].fd = (int)(uint32_t)st->evs[i].data.u64;
    loop->ev[i].gen = (uint32_t)(st->evs[i].data.u64 >> 32);
    loop->ev[i].revents = ep_revents(st->evs[i].events);
  }
  loop->nev = n;
  return 0;
}

const struct ax__backend ax__backend_epoll = {
    .name = "epoll",
    .id = AX_BACKEND_EPOLL,
    .edge = true,
    .init = ep_init,
    .fini = ep_fini,
    .ctl = ep_ctl,
    .wait = ep_wait,
};
