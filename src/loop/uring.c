#ifdef AX_HAVE_URING
/*
 * io_uring backend, readiness only (IORING_OP_POLL_ADD).
 *
 * Level-triggered interest is a single-shot poll, re-armed after each
 * completion; AX_IO_EDGE is a multishot poll (IORING_POLL_ADD_MULTI), which
 * posts a completion per wake-up, like EPOLLET. user_data is gen << 32 | fd,
 * so completions of an older registration of a reused fd are recognised and
 * dropped here.
 *
 * Quirks:
 * - completions are not tied one-to-one to our state: after a change of
 *   interest (remove + add under the same user_data) the old poll may still
 *   complete with a real event that raced the remove. So each fd counts the
 *   polls it has in the kernel (every poll ends with exactly one completion
 *   without IORING_CQE_F_MORE), and is re-armed only when that count drops to
 *   zero. A remove only needs to target the poll armed last: older ones
 *   were targeted by earlier removes, which the kernel processed first. So
 *   a change costs two SQEs, whatever came before. Removes carry their own
 *   user_data, so their completions (0, -ENOENT) are told apart and ignored.
 * - a level poll is re-armed in wait() but only submitted by the next wait(),
 *   after the callbacks ran: submitted at once it would complete again
 *   before the user had a chance to read, and report the fd twice.
 * - an armed poll holds a reference to the file, so a close() after stop
 *   would not really close a socket (no EOF for the peer) until the remove
 *   is processed. Removals are therefore submitted at once, with
 *   GETEVENTS: with DEFER_TASKRUN the cancelled poll lets go of the file
 *   only when its deferred task work runs.
 * - a poll on a closed fd fails asynchronously (-EBADF), not at ctl time, so
 *   ctl checks a new fd with fcntl() to fail like epoll_ctl would. A poll
 *   that fails anyway is reported once as AX_ERROR and not re-armed until
 *   the core calls ctl again (re-arming it would spin).
 * - SINGLE_ISSUER + DEFER_TASKRUN bind the ring to one thread. A loop may be
 *   created on one thread and run on another, so the ring starts disabled
 *   (R_DISABLED) and is enabled, binding it, by the first submission,
 *   normally the first wait() of ax_loop_run().
 * - kernels before 5.13 lack multishot poll; init refuses them (-ENOSYS)
 *   and the core falls back to epoll, which is as good there.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <string.h>

#include "loop_int.h"

#define RING_ENTRIES 256
#define CQE_BATCH 64
/* user_data of our poll removes; as gen << 32 | fd it would be fd -1. */
#define UD_REMOVE UINT64_MAX

/* One fd's state. */
struct slot {
  uint32_t gen;      /* io->gen at registration: high half of user_data */
  uint32_t want;     /* AX_READABLE | AX_WRITABLE | AX_IO_EDGE; 0: unwatched */
  uint32_t inflight; /* polls of this gen the kernel has not ended yet */
  int evidx;         /* where this fd's event sits in loop->ev, if any */
  bool armed;        /* a poll added since the last remove may be live */
  bool dead;         /* poll failed and was reported: not re-armed */
};

struct uring {
  struct io_uring ring;
  bool enabled;      /* the R_DISABLED ring was enabled (thread bound) */
  struct slot *slot; /* indexed by fd */
  int cap;
  int watched;       /* slots with want != 0: bounds the events of a wait */
};

static uint64_t ud_of(uint32_t gen, int fd) {
  return (uint64_t)gen << 32 | (uint32_t)fd;
}

static unsigned to_poll(uint32_t want) {
  unsigned ev = 0;
  if (want & AX_READABLE)
    ev |= POLLIN | POLLRDHUP;
  if (want & AX_WRITABLE)
    ev |= POLLOUT;
  return ev;
}

static uint32_t from_poll(unsigned re, uint32_t want) {
  uint32_t r = 0;
  if (re & POLLIN)
    r |= AX_READABLE;
  if (re & POLLOUT)
    r |= AX_WRITABLE;
  if (re & POLLERR)
    r |= AX_ERROR;
  /* Readers learn about a hang-up by reading EOF. */
  if (re & (POLLHUP | POLLRDHUP))
    r |= AX_HANGUP | AX_READABLE;
  return r & ((want & (AX_READABLE | AX_WRITABLE)) | AX_ERROR | AX_HANGUP);
}

/* ---- ring set-up -------------------------------------------------------- */

/* Best flags first; a kernel that does not know one says -EINVAL. */
static int ring_setup(struct uring *u) {
  static const unsigned tiers[] = {
      /* 6.1+ */
      IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
          IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
          IORING_SETUP_R_DISABLED,
      /* 5.19+ */
      IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
      0,
  };
  int r = -EINVAL;
  for (size_t i = 0; i < sizeof(tiers) / sizeof(tiers[0]) && r == -EINVAL;
       i++) {
    r = io_uring_queue_init(RING_ENTRIES, &u->ring, tiers[i]);
    u->enabled = !(tiers[i] & IORING_SETUP_R_DISABLED);
  }
  if (r < 0)
    return r;
  /* RSRC_TAGS came with 5.13, as did multishot poll. */
  if (!(u->ring.features & IORING_FEAT_RSRC_TAGS)) {
    io_uring_queue_exit(&u->ring);
    return -ENOSYS;
  }
  return 0;
}

static int uring_init(ax_loop_t *loop) {
  struct uring *u = ax__alloc(loop, sizeof(*u));
  int r;
  if (u == NULL)
    return -ENOMEM;
  memset(u, 0, sizeof(*u));
  if ((r = ring_setup(u)) < 0) {
    ax__free(loop, u);
    return r;
  }
  loop->be_data = u;
  return 0;
}

static void uring_fini(ax_loop_t *loop) {
  struct uring *u = loop->be_data;
  if (u == NULL)
    return;
  io_uring_queue_exit(&u->ring); /* cancels every poll */
  if (u->slot)
    ax__free(loop, u->slot);
  ax__free(loop, u);
  loop->be_data = NULL;
}

/* ---- submission --------------------------------------------------------- */

/* The first submission binds a SINGLE_ISSUER ring to the calling thread. */
static int enable(struct uring *u) {
  int r;
  if (u->enabled)
    return 0;
  if ((r = io_uring_enable_rings(&u->ring)) < 0)
    return r;
  u->enabled = true;
  return 0;
}

/* Make room for @n SQEs, so that what follows cannot fail half-way. */
static int sq_reserve(struct uring *u, unsigned n) {
  int r;
  if (io_uring_sq_space_left(&u->ring) >= n)
    return 0;
  /* SQ full: hand the batch to the kernel. */
  if ((r = enable(u)) < 0 || (r = io_uring_submit(&u->ring)) < 0)
    return r;
  return io_uring_sq_space_left(&u->ring) >= n ? 0 : -EBUSY;
}

/* Needs one SQE reserved. */
static void arm(struct uring *u, struct slot *s, int fd) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (s->want & AX_IO_EDGE)
    io_uring_prep_poll_multishot(sqe, fd, to_poll(s->want));
  else
    io_uring_prep_poll_add(sqe, fd, to_poll(s->want));
  io_uring_sqe_set_data64(sqe, ud_of(s->gen, fd));
  s->inflight++;
  s->armed = true;
}

/* Needs one SQE reserved. The remove cancels the poll armed last; older
 * ones were the target of earlier removes, queued before it. If that poll
 * has ended already, the remove gets -ENOENT: harmless. */
static void disarm(struct uring *u, struct slot *s, int fd) {
  struct io_uring_sqe *sqe;
  if (!s->armed)
    return;
  sqe = io_uring_get_sqe(&u->ring);
  io_uring_prep_poll_remove(sqe, ud_of(s->gen, fd));
  io_uring_sqe_set_data64(sqe, UD_REMOVE);
  s->armed = false;
}

/* ---- ctl ---------------------------------------------------------------- */

static int slots_reserve(ax_loop_t *loop, struct uring *u, int fd) {
  int ncap;
  struct slot *p;
  if (fd < u->cap)
    return 0;
  ncap = u->cap ? u->cap : 64;
  while (ncap <= fd)
    ncap *= 2;
  /* ax__realloc's hook may not accept NULL */
  p = u->slot ? ax__realloc(loop, u->slot, (size_t)ncap * sizeof(*p))
              : ax__alloc(loop, (size_t)ncap * sizeof(*p));
  if (p == NULL)
    return -ENOMEM;
  memset(p + u->cap, 0, (size_t)(ncap - u->cap) * sizeof(*p));
  u->slot = p;
  u->cap = ncap;
  return 0;
}

static int unwatch(struct uring *u, int fd) {
  struct slot *s;
  int r;
  if (fd >= u->cap || u->slot[fd].want == 0)
    return 0;
  s = &u->slot[fd];
  /* From now on its completions report nothing, even if the remove cannot
   * be queued: a single-shot poll then ends by itself. */
  s->want = 0;
  s->dead = false;
  u->watched--;
  if (!s->armed)
    return 0;
  if ((r = sq_reserve(u, 1)) < 0)
    return r;
  disarm(u, s, fd);
  /* At once, so that the file is released: see the top of the file. */
  io_uring_submit_and_get_events(&u->ring);
  return 0;
}

/* Checks for an fd not watched yet; nothing changes if one fails. */
static int watch_check(ax_loop_t *loop, struct uring *u, int fd) {
  int r;
  if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
    return -EBADF;
  if ((r = slots_reserve(loop, u, fd)) < 0 ||
      (r = ax__evbuf_reserve(loop, u->watched + 1)) < 0)
    return r;
  return 0;
}

/* Every check comes first: on error the old registration is untouched. */
static int uring_ctl(ax_loop_t *loop, struct ax__io *io, uint32_t old,
                     uint32_t events) {
  struct uring *u = loop->be_data;
  uint32_t want = events & (AX_READABLE | AX_WRITABLE | AX_IO_EDGE);
  int fd = io->fd, r;
  struct slot *s;
  bool fresh = fd >= u->cap || u->slot[fd].want == 0;
  (void)old; /* the slot knows better, polls still in flight included */
  if (want == 0)
    return unwatch(u, fd);
  if (fresh && (r = watch_check(loop, u, fd)) < 0)
    return r;
  s = &u->slot[fd];
  if (s->gen == io->gen && s->armed && s->want == want && !s->dead)
    return 0; /* armed as asked already */
  if ((r = sq_reserve(u, 2)) < 0)
    return r;
  disarm(u, s, fd);
  if (s->gen != io->gen) {
    /* An older registration's polls: their completions carry the old gen
     * and are dropped, so they no longer count. */
    s->gen = io->gen;
    s->inflight = 0;
  }
  s->want = want;
  s->dead = false;
  u->watched += fresh;
  arm(u, s, fd);
  return 0;
}

/* ---- wait --------------------------------------------------------------- */

static bool has_event(const ax_loop_t *loop, const struct slot *s, int fd) {
  return s->evidx < loop->nev && loop->ev[s->evidx].fd == fd;
}

/* One event per fd per wait: a multishot poll may have completed twice. */
static void report(ax_loop_t *loop, struct slot *s, int fd, uint32_t r) {
  struct ax__event *ev;
  if (has_event(loop, s, fd)) {
    loop->ev[s->evidx].revents |= r;
    return;
  }
  s->evidx = loop->nev++;
  ev = &loop->ev[s->evidx];
  ev->fd = fd;
  ev->gen = s->gen;
  ev->revents = r;
}

/* The slot a completion belongs to, or NULL if it is none of our business:
 * a remove, or a poll of an older registration of the fd. */
static struct slot *slot_of(struct uring *u, uint64_t ud) {
  int fd = (int)(uint32_t)ud;
  if (ud == UD_REMOVE || fd < 0 || fd >= u->cap)
    return NULL;
  if (u->slot[fd].gen != (uint32_t)(ud >> 32))
    return NULL;
  return &u->slot[fd];
}

/* Handle one completion. Returns false, leaving it in the ring, if it needs
 * an event and loop->ev is full (it cannot be while evcap >= watched). */
static bool complete(ax_loop_t *loop, struct uring *u,
                     const struct io_uring_cqe *cqe) {
  struct slot *s = slot_of(u, cqe->user_data);
  int fd = (int)(uint32_t)cqe->user_data;
  uint32_t r = 0;
  if (s == NULL)
    return true;
  if (s->want && loop->nev >= loop->evcap && !has_event(loop, s, fd))
    return false;
  if (!(cqe->flags & IORING_CQE_F_MORE) && s->inflight > 0 &&
      --s->inflight == 0)
    s->armed = false;
  if (s->want == 0)
    return true; /* removed meanwhile */
  if (cqe->res >= 0) {
    r = from_poll((unsigned)cqe->res, s->want);
  } else if (cqe->res != -ECANCELED && cqe->res != -ENOENT) {
    s->dead = true;
    r = AX_ERROR;
  }
  /* Re-arm once every poll has ended, so that two never run at once. */
  if (s->inflight == 0 && !s->dead) {
    if (sq_reserve(u, 1) == 0) {
      arm(u, s, fd);
    } else {
      s->dead = true;
      r |= AX_ERROR;
    }
  }
  if (r)
    report(loop, s, fd, r);
  return true;
}

static void reap(ax_loop_t *loop, struct uring *u) {
  struct io_uring_cqe *cqes[CQE_BATCH];
  unsigned n, i;
  do {
    n = io_uring_peek_batch_cqe(&u->ring, cqes, CQE_BATCH);
    for (i = 0; i < n && complete(loop, u, cqes[i]); i++)
      ;
    io_uring_cq_advance(&u->ring, i);
  } while (n == CQE_BATCH && i == n);
}

static int uring_wait(ax_loop_t *loop, int timeout_ms) {
  struct uring *u = loop->be_data;
  struct __kernel_timespec ts, *tsp = NULL;
  struct io_uring_cqe *cqe;
  int r;
  loop->nev = 0;
  if ((r = enable(u)) < 0)
    return r;
  if (timeout_ms >= 0) {
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = (long long)(timeout_ms % 1000) * 1000000;
    tsp = &ts;
  }
  r = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, tsp, NULL);
  /* -ETIME: timed out; -EINTR: a signal; -EBUSY / -EAGAIN: the kernel wants
   * the CQ drained first. In all cases, reaping is what to do next. */
  if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN)
    return r;
  reap(loop, u);
  return 0;
}

const struct ax__backend ax__backend_uring = {
    .name = "io_uring",
    .id = AX_BACKEND_URING,
    .edge = true,
    .init = uring_init,
    .fini = uring_fini,
    .ctl = uring_ctl,
    .wait = uring_wait,
};

#endif /* AX_HAVE_URING */
