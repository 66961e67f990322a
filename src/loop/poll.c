/*
 * poll(2) backend.
 *
 * The portable fallback: level-triggered only, O(n) per wait in the number
 * of watched fds, but it watches anything poll() accepts, regular files
 * included (they are always ready).
 *
 * Quirks:
 * - the kernel needs one dense array, so we keep a dense struct pollfd array
 *   plus an fd -> index map; removal swaps the last entry into the hole,
 *   which keeps ctl O(1) at the price of an unstable order.
 * - POLLERR / POLLHUP / POLLNVAL are reported whether asked for or not.
 * - POLLNVAL means the fd was closed while still watched. poll() would
 *   report it again at once, forever, so we report AX_ERROR once and park
 *   the entry (fd -1, which poll() skips) until the core changes or removes
 *   it. epoll silently forgets closed fds; this is the closest we get.
 * - POLLRDHUP (peer shut down its writing side) is only reported when asked
 *   for; we ask whenever the fd is watched for reading, as epoll users
 *   expect a hang-up to be visible.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>

#include "loop/pollbits.h"

/* What we remember about one entry of the pollfd array. */
struct entry {
  int fd;        /* real fd, even while the pollfd is parked at -1 */
  uint32_t gen;  /* io->gen at registration: reported with each event */
  uint32_t want; /* AX_READABLE | AX_WRITABLE */
};

struct pollbe {
  struct pollfd *pfd;  /* dense, handed to poll() */
  struct entry *ent;   /* parallel to pfd */
  int n, cap;
  int *index;          /* fd -> position in pfd, or -1 */
  int icap;
};

static int poll_init(ax_loop_t *loop) {
  struct pollbe *pb = ax__alloc(loop, sizeof(*pb));
  if (pb == NULL)
    return -ENOMEM;
  memset(pb, 0, sizeof(*pb));
  loop->be_data = pb;
  return 0;
}

static void poll_fini(ax_loop_t *loop) {
  struct pollbe *pb = loop->be_data;
  if (pb == NULL)
    return;
  if (pb->pfd)
    ax__free(loop, pb->pfd);
  if (pb->ent)
    ax__free(loop, pb->ent);
  if (pb->index)
    ax__free(loop, pb->index);
  ax__free(loop, pb);
  loop->be_data = NULL;
}

static int index_reserve(ax_loop_t *loop, struct pollbe *pb, int fd) {
  int ncap, *p;
  if (fd < pb->icap)
    return 0;
  ncap = pb->icap ? pb->icap : 64;
  while (ncap <= fd)
    ncap *= 2;
  p = ax__realloc(loop, pb->index, (size_t)ncap * sizeof(*p));
  if (p == NULL)
    return -ENOMEM;
  for (int i = pb->icap; i < ncap; i++)
    p[i] = -1;
  pb->index = p;
  pb->icap = ncap;
  return 0;
}

/* Room for one more entry, in both parallel arrays. If the second grow
 * fails the first one is kept but cap is not raised: harmless. */
static int entries_reserve(ax_loop_t *loop, struct pollbe *pb) {
  int ncap;
  struct pollfd *p;
  struct entry *e;
  if (pb->n < pb->cap)
    return 0;
  ncap = pb->cap ? pb->cap * 2 : 16;
  p = ax__realloc(loop, pb->pfd, (size_t)ncap * sizeof(*p));
  if (p == NULL)
    return -ENOMEM;
  pb->pfd = p;
  e = ax__realloc(loop, pb->ent, (size_t)ncap * sizeof(*e));
  if (e == NULL)
    return -ENOMEM;
  pb->ent = e;
  pb->cap = ncap;
  return 0;
}

static void entry_set(struct pollbe *pb, int i, struct ax__io *io,
                      uint32_t want) {
  pb->pfd[i].fd = io->fd; /* also un-parks a POLLNVAL entry */
  pb->pfd[i].events = (short)ax__to_poll(want);
  pb->pfd[i].revents = 0;
  pb->ent[i].fd = io->fd;
  pb->ent[i].gen = io->gen;
  pb->ent[i].want = want;
}

static int entry_add(ax_loop_t *loop, struct pollbe *pb, struct ax__io *io,
                     uint32_t want) {
  int r;
  /* poll() would only say POLLNVAL later; epoll says EBADF now. */
  if (fcntl(io->fd, F_GETFD) < 0 && errno == EBADF)
    return -EBADF;
  if ((r = index_reserve(loop, pb, io->fd)) < 0 ||
      (r = entries_reserve(loop, pb)) < 0 ||
      (r = ax__evbuf_reserve(loop, pb->n + 1)) < 0)
    return r;
  entry_set(pb, pb->n, io, want);
  pb->index[io->fd] = pb->n++;
  return 0;
}

/* Swap the last entry into the hole so the array stays dense. */
static void entry_del(struct pollbe *pb, int fd) {
  int i = pb->index[fd], last = --pb->n;
  if (i != last) {
    pb->pfd[i] = pb->pfd[last];
    pb->ent[i] = pb->ent[last];
    pb->index[pb->ent[i].fd] = i;
  }
  pb->index[fd] = -1;
}

static int poll_ctl(ax_loop_t *loop, struct ax__io *io, uint32_t old,
                    uint32_t events) {
  struct pollbe *pb = loop->be_data;
  uint32_t want = events & (AX_READABLE | AX_WRITABLE);
  int fd = io->fd;
  bool known = fd < pb->icap && pb->index[fd] >= 0;
  (void)old; /* our own table knows better, e.g. after a failed add */
  if (want == 0) {
    if (known)
      entry_del(pb, fd);
    return 0;
  }
  if (!known)
    return entry_add(loop, pb, io, want);
  entry_set(pb, pb->index[fd], io, want);
  return 0;
}

static void collect(ax_loop_t *loop, struct pollbe *pb, int i) {
  struct pollfd *p = &pb->pfd[i];
  struct entry *e = &pb->ent[i];
  uint32_t r;
  if (p->revents & POLLNVAL) {
    p->fd = -1; /* parked: see the top of the file */
    r = AX_ERROR;
  } else {
    r = ax__from_poll((unsigned short)p->revents, e->want);
  }
  if (r == 0 || loop->nev >= loop->evcap)
    return;
  loop->ev[loop->nev].fd = e->fd;
  loop->ev[loop->nev].gen = e->gen;
  loop->ev[loop->nev].revents = r;
  loop->nev++;
}

static int poll_wait(ax_loop_t *loop, int timeout_ms) {
  struct pollbe *pb = loop->be_data;
  int ready;
  loop->nev = 0;
  ready = poll(pb->pfd, (nfds_t)pb->n, timeout_ms);
  if (ready < 0)
    return errno == EINTR ? 0 : -errno;
  for (int i = 0; i < pb->n && ready > 0; i++) {
    if (pb->pfd[i].revents == 0)
      continue;
    ready--;
    collect(loop, pb, i);
  }
  return 0;
}

const struct ax__backend ax__backend_poll = {
    .name = "poll",
    .id = AX_BACKEND_POLL,
    .edge = false,
    .init = poll_init,
    .fini = poll_fini,
    .ctl = poll_ctl,
    .wait = poll_wait,
};
