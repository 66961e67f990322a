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
 * - a poll that ended is re-armed by the next wait(), after the callbacks
 *   ran. Re-armed at once, a level poll on an fd the user is about to read
 *   would complete again and report it once too often; and reaping would
 *   chase its own tail when a full SQ forces a submit in the middle.
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
 *   normally the first wait() of ax_loop_run(). A loop later run by yet
 *   another thread gets a new ring (ring_move).
 * - closing a ring makes the kernel send task work, with a signal-like
 *   notification, to every thread that used it: that thread's next
 *   epoll_wait/poll/select may return EINTR once, a few ms after
 *   ax_loop_free(). Nothing to do about it here.
 * - with DEFER_TASKRUN, completions of polls woken after they were armed
 *   are task work run when we enter the kernel to wait, and the kernel runs
 *   only ~20 items per entry (IO_LOCAL_TW_DEFAULT_MAX, 6.1x), so a wait
 *   would see 20 ready fds at most. TASKRUN_FLAG makes the kernel say when
 *   task work is pending (IORING_SQ_TASKRUN), and liburing's peek then
 *   enters again: reap() loops until the CQ stays empty.
 * - kernels before 5.13 lack multishot poll; init refuses them (-ENOSYS)
 *   and the core falls back to epoll, which is as good there.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "loop/pollbits.h"

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
  bool pending;      /* listed in uring.pend */
};

struct uring {
  struct io_uring ring;
  bool enabled;      /* the R_DISABLED ring was enabled (thread bound) */
  bool single;       /* SINGLE_ISSUER: only @owner may submit */
  pid_t owner;       /* thread that enabled the ring */
  struct slot *slot; /* indexed by fd */
  int cap;
  int watched;       /* slots with want != 0: bounds the events of a wait */
  int *pend;         /* fds whose polls all ended: re-armed by next wait */
  int npend, pendcap; /* pendcap >= watched */
  ax_loop_t *loop;   /* for ring_move: native completions and the hook */
};

/* Polls carry 31 bits of the generation: the top bit of user_data marks a
 * native operation of a higher layer (UD_NATIVE | struct ax__uop *). */
#define UD_NATIVE (UINT64_C(1) << 63)
#define GEN_MASK 0x7fffffffu

static uint64_t ud_of(uint32_t gen, int fd) {
  return (uint64_t)(gen & GEN_MASK) << 32 | (uint32_t)fd;
}

/* ---- ring set-up -------------------------------------------------------- */

/* Best flags first; a kernel that does not know one says -EINVAL. */
static int ring_setup(struct uring *u) {
  static const unsigned tiers[] = {
      /* 6.1+ */
      IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
          IORING_SETUP_TASKRUN_FLAG | IORING_SETUP_SINGLE_ISSUER |
          IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED,
      /* 5.19+ */
      IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN |
          IORING_SETUP_TASKRUN_FLAG,
      0,
  };
  int r = -EINVAL;
  for (size_t i = 0; i < sizeof(tiers) / sizeof(tiers[0]) && r == -EINVAL;
       i++) {
    r = io_uring_queue_init(RING_ENTRIES, &u->ring, tiers[i]);
    u->enabled = !(tiers[i] & IORING_SETUP_R_DISABLED);
    u->single = tiers[i] & IORING_SETUP_SINGLE_ISSUER;
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
  u->loop = loop;
  loop->be_data = u;
  return 0;
}

static void uring_fini(ax_loop_t *loop) {
  struct uring *u = loop->be_data;
  if (u == NULL)
    return;
  io_uring_queue_exit(&u->ring); /* cancels every poll */
  if (loop->uring_gone)
    loop->uring_gone(loop, loop->uring_ctx);
  if (u->slot)
    ax__free(loop, u->slot);
  if (u->pend)
    ax__free(loop, u->pend);
  ax__free(loop, u);
  loop->be_data = NULL;
}

/* ---- submission --------------------------------------------------------- */

/* The kernel thread id, cached: unlike a pthread_t, which a new thread
 * often inherits from a joined one, it tells threads apart. */
static pid_t self(void) {
  static _Thread_local pid_t tid;
  if (tid == 0)
    tid = gettid();
  return tid;
}

/* The first submission binds a SINGLE_ISSUER ring to the calling thread. */
static int enable(struct uring *u) {
  /* Not io_uring_enable_rings(): liburing 2.3's .so does not export it. */
  if (syscall(__NR_io_uring_register, u->ring.ring_fd,
              IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
    return -errno;
  u->enabled = true;
  u->owner = self();
  return 0;
}

/* Forget the per-ring state: nothing is armed, every watched fd (but the
 * dead ones) waits in the pending list to be armed by the next wait. */
static void slots_reset(struct uring *u) {
  while (u->npend > 0)
    u->slot[u->pend[--u->npend]].pending = false;
  for (int fd = 0; fd < u->cap; fd++) {
    struct slot *s = &u->slot[fd];
    s->inflight = 0;
    s->armed = false;
    if (s->want && !s->dead) {
      s->pending = true;
      u->pend[u->npend++] = fd; /* at most watched <= pendcap entries */
    }
  }
}

static bool native(ax_loop_t *loop, const struct io_uring_cqe *cqe);
static bool is_native(uint64_t ud);

/* Native completions the old ring posted and nobody reaped: recorded, so
 * that no byte a recv or send moved goes unreported. Polls are not looked
 * at: slots_reset re-arms them all. Reading the CQ needs no ownership. */
static void keep_native(ax_loop_t *loop, struct io_uring *ring) {
  struct io_uring_cqe *cqe;
  unsigned head, n = 0;
  io_uring_for_each_cqe(ring, head, cqe) {
    if (is_native(cqe->user_data))
      native(loop, cqe); /* ENOMEM: lost, like the ring's own overflow */
    n++;
  }
  io_uring_cq_advance(ring, n);
}

/* The loop is run by another thread than the one the SINGLE_ISSUER ring is
 * bound to (one thread at a time is allowed). A ring cannot be re-bound,
 * so replace it; the old one's polls die with it, and re-arming reports
 * whatever is ready, edge fds included: no event is lost. The old ring is
 * torn down by a kernel worker, so the files its polls held are released
 * a few ms later, not at once as after a removal. Native operations die
 * too: the ones whose completions were posted are kept, and the owner of
 * the others hears of it (loop->uring_moved), after the new ring is bound
 * to this thread so that it can register with it. */
static int ring_move(struct uring *u) {
  struct io_uring old = u->ring;
  int r;
  if ((r = ring_setup(u)) < 0) {
    u->ring = old;
    u->enabled = true;
    u->single = true;
    return r;
  }
  keep_native(u->loop, &old);
  io_uring_queue_exit(&old);
  slots_reset(u);
  r = u->enabled ? 0 : enable(u);
  if (u->loop->uring_moved)
    u->loop->uring_moved(u->loop, u->loop->uring_ctx);
  return r;
}

/* Before submitting: make the ring usable from the calling thread. */
static int own(struct uring *u) {
  if (!u->enabled)
    return enable(u);
  if (u->single && u->owner != self())
    return ring_move(u);
  return 0;
}

/* Make room for @n SQEs, so that what follows cannot fail half-way. */
static int sq_reserve(struct uring *u, unsigned n) {
  int r;
  if (io_uring_sq_space_left(&u->ring) >= n)
    return 0;
  /* SQ full: hand the batch to the kernel. */
  if ((r = own(u)) < 0 || (r = io_uring_submit(&u->ring)) < 0)
    return r;
  return io_uring_sq_space_left(&u->ring) >= n ? 0 : -EBUSY;
}

/* Needs one SQE reserved. */
static void arm(struct uring *u, struct slot *s, int fd) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  if (s->want & AX_IO_EDGE)
    io_uring_prep_poll_multishot(sqe, fd, ax__to_poll(s->want));
  else
    io_uring_prep_poll_add(sqe, fd, ax__to_poll(s->want));
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
  if ((p = ax__realloc(loop, u->slot, (size_t)ncap * sizeof(*p))) == NULL)
    return -ENOMEM;
  memset(p + u->cap, 0, (size_t)(ncap - u->cap) * sizeof(*p));
  u->slot = p;
  u->cap = ncap;
  return 0;
}

static int pend_reserve(ax_loop_t *loop, struct uring *u, int n) {
  int ncap = u->pendcap ? u->pendcap : 64;
  int *p;
  if (n <= u->pendcap)
    return 0;
  while (ncap < n)
    ncap *= 2;
  if ((p = ax__realloc(loop, u->pend, (size_t)ncap * sizeof(*p))) == NULL)
    return -ENOMEM;
  u->pend = p;
  u->pendcap = ncap;
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
  /* At once, so that the file is released: see the top of the file. A
   * ring never enabled has submitted nothing, and holds no file. */
  if (u->enabled && own(u) == 0)
    io_uring_submit_and_get_events(&u->ring);
  return 0;
}

/* Checks for an fd not watched yet; nothing changes if one fails. */
static int watch_check(ax_loop_t *loop, struct uring *u, int fd) {
  int r;
  if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
    return -EBADF;
  if ((r = slots_reserve(loop, u, fd)) < 0 ||
      (r = pend_reserve(loop, u, u->watched + 1)) < 0 ||
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
  if ((u->slot[fd].gen & GEN_MASK) != (uint32_t)(ud >> 32))
    return NULL;
  return &u->slot[fd];
}

/* A native operation's completion: recorded here, dispatched by the loop
 * core after the wait (ax__ucq_dispatch), so that no callback runs while
 * the ring is being reaped. False (left in the CQ) if the record cannot be
 * stored: the next wait tries again. */
static bool native(ax_loop_t *loop, const struct io_uring_cqe *cqe) {
  return ax__ucq_push(
      loop, (struct ax__uop *)(uintptr_t)(cqe->user_data & ~UD_NATIVE),
      cqe->res, cqe->flags);
}

static bool is_native(uint64_t ud) {
  return ud != UD_REMOVE && (ud & UD_NATIVE);
}

/* Handle one completion. Returns false, leaving it in the ring, if it needs
 * an event and loop->ev is full (it cannot be while evcap >= watched). */
static bool complete(ax_loop_t *loop, struct uring *u,
                     const struct io_uring_cqe *cqe) {
  if (is_native(cqe->user_data))
    return native(loop, cqe);
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
    r = ax__from_poll((unsigned)cqe->res, s->want);
  } else if (cqe->res != -ECANCELED && cqe->res != -ENOENT) {
    s->dead = true;
    r = AX_ERROR;
  }
  /* Re-arm once every poll has ended, so that two never run at once; in
   * the next wait: see the top of the file. At most one entry per watched
   * fd, and the list is empty when reaping starts: pendcap suffices. */
  if (s->inflight == 0 && !s->dead && !s->pending) {
    s->pending = true;
    u->pend[u->npend++] = fd;
  }
  if (r)
    report(loop, s, fd, r);
  return true;
}

/* Until the CQ is empty: on an empty CQ with IORING_SQ_TASKRUN set, the
 * peek enters the kernel to run pending task work (see the top of the
 * file). Ended polls are re-armed by the next wait only, so this does not
 * feed itself. */
static void reap(ax_loop_t *loop, struct uring *u) {
  struct io_uring_cqe *cqes[CQE_BATCH];
  unsigned n, i;
  do {
    n = io_uring_peek_batch_cqe(&u->ring, cqes, CQE_BATCH);
    for (i = 0; i < n && complete(loop, u, cqes[i]); i++)
      ;
    io_uring_cq_advance(&u->ring, i);
  } while (n > 0 && i == n);
}

/* Arm the polls that reaping found ended, unless ctl has since removed the
 * fd or armed it itself. */
static int rearm_pending(struct uring *u) {
  int r;
  while (u->npend > 0) {
    int fd = u->pend[u->npend - 1];
    struct slot *s = &u->slot[fd];
    if (s->want && s->inflight == 0 && !s->dead) {
      if ((r = sq_reserve(u, 1)) < 0)
        return r; /* the rest stays listed for the next wait */
      arm(u, s, fd);
    }
    s->pending = false;
    u->npend--;
  }
  return 0;
}

static int uring_wait(ax_loop_t *loop, int timeout_ms) {
  struct uring *u = loop->be_data;
  struct __kernel_timespec ts, *tsp = NULL;
  struct io_uring_cqe *cqe;
  int r;
  loop->nev = 0;
  if ((r = own(u)) < 0 || (r = rearm_pending(u)) < 0)
    return r;
  if (loop->nucq > 0)
    timeout_ms = 0; /* ring_move recorded completions: not a time to sleep */
  if (timeout_ms == 0) {
    /* Non-blocking: submit what is queued and reap. A wait with a zero
     * timeout would cost an extra trip into the kernel ending in -ETIME
     * (bench/loop_iter: ~30x slower than epoll before this). */
    r = io_uring_submit(&u->ring);
    if (r < 0 && r != -EINTR && r != -EBUSY && r != -EAGAIN)
      return r;
    reap(loop, u);
    return 0;
  }
  if (timeout_ms > 0) {
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

/* ---- native operations (src/proactor) ----------------------------------- */

struct io_uring *ax__uring(ax_loop_t *loop) {
  if (loop->be != &ax__backend_uring)
    return NULL;
  return &((struct uring *)loop->be_data)->ring;
}

struct io_uring_sqe *ax__uring_sqe(ax_loop_t *loop, struct ax__uop *op) {
  struct uring *u;
  struct io_uring_sqe *sqe;
  if (loop->be != &ax__backend_uring)
    return NULL;
  u = loop->be_data;
  if (sq_reserve(u, 1) < 0)
    return NULL;
  sqe = io_uring_get_sqe(&u->ring);
  io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)op | UD_NATIVE);
  return sqe;
}

uint64_t ax__uring_ud(const struct ax__uop *op) {
  return (uint64_t)(uintptr_t)op | UD_NATIVE;
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
