#ifdef AX_HAVE_URING
/*
 * Listeners on io_uring: one multishot accept (IORING_OP_ACCEPT with
 * IORING_ACCEPT_MULTISHOT, 5.19) per listener. When connections are
 * pending the kernel accepts every one of them and posts a completion each
 * (IORING_CQE_F_MORE while the operation goes on): no readiness event, no
 * accept4 and no poll re-arm per batch. The fd-exhaustion policy and the
 * user's side are listener.c's.
 *
 * - The peer's address: a multishot accept writes every connection's
 *   address into the one buffer it was given, long before the completions
 *   are dispatched, so it gets none, and the address is read with
 *   getpeername when the fd is handed over (one cheap syscall; a peer that
 *   reset meanwhile leaves it empty, and the stream reports the reset).
 * - An error ends the operation (a completion without F_MORE), and so does
 *   a full CQ. Whatever ended it, it is armed again while the listener
 *   accepts; -EMFILE pauses first (listener.c), so a socket full of
 *   connections and a process out of fds do not re-arm and fail in a loop.
 *   A completion with an error and F_MORE would be a kernel of another
 *   mind: the pause cancels it the same.
 * - Pause (the user's or an exhaustion pause) cancels the operation.
 *   Connections the kernel accepted before the cancel took effect cannot go
 *   back to the backlog: they are held, in order, and handed over after
 *   ax_listener_resume, from a deferred call (never inside the resume).
 * - Close cancels the operation and submits the cancel at once when this
 *   thread may submit: the kernel holds the listening socket's file while
 *   the accept is pending, so this is what makes the port free when close
 *   returns. Connections accepted meanwhile are closed when their
 *   completions come; the listener's memory stays until the final one
 *   (ax__listener_busy).
 * - A kernel without multishot accept fails it with -EINVAL: that listener
 *   goes back to readiness (the I/O source listener.c made for it), and so
 *   do the loop's later ones. The native stream driver already needs 6.0,
 *   so this is a fallback, not a path.
 * - Loop free: the final completion will never be dispatched: the loop
 *   hold goes, the fds of completions already posted are closed, and the
 *   ring's teardown (uring.c's fini) ends the operation. The kernel writes
 *   nothing into the listener: its memory goes at once.
 * - Ring replaced (uring.c's ring_move, via stream_uring.c's ur_moved): the
 *   operation died with the old ring; completions it had posted were
 *   recorded, and a final -ECANCELED is added, after which it is armed on
 *   the new ring.
 * - A live operation holds the loop (ax__loop_hold), as the readiness
 *   driver's active I/O source would.
 */
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proactor/proactor_int.h"

#define HELD_FIRST 16

static void ignore_done(ax_loop_t *loop, struct ax__uop *op, int res,
                        uint32_t flags) {
  (void)loop, (void)op, (void)res, (void)flags;
}

/* The completions of cancels: they may come after the listener is gone,
 * so they are routed here. Never written after start-up: shared by every
 * loop and thread. */
static struct ax__uop cancel_op = {.done = ignore_done};

static void accept_done(ax_loop_t *loop, struct ax__uop *op, int res,
                        uint32_t flags);

static int arm(ax_listener_t *l) {
  struct io_uring_sqe *sqe = ax__uring_sqe(l->loop, &l->aop);
  if (sqe == NULL)
    return -EBUSY;
  io_uring_prep_multishot_accept(sqe, l->fd, NULL, NULL,
                                 SOCK_NONBLOCK | SOCK_CLOEXEC);
  l->astate = (l->astate & AX__A_MORE) | AX__A_LIVE;
  ax__loop_hold(l->loop);
  return 0;
}

/* Queue a cancel of the live operation; false when no SQE could be had. */
static bool cancel(ax_listener_t *l) {
  struct io_uring_sqe *sqe;
  if ((l->astate & (AX__A_LIVE | AX__A_CANCEL)) != AX__A_LIVE)
    return true;
  if ((sqe = ax__uring_sqe(l->loop, &cancel_op)) == NULL)
    return false;
  io_uring_prep_cancel64(sqe, ax__uring_ud(&l->aop), 0);
  l->astate |= AX__A_CANCEL;
  return true;
}

/* ---- connections -------------------------------------------------------- */

static void hand_over(ax_listener_t *l, int fd) {
  ax_addr_t peer;
  socklen_t len = sizeof(peer.u);
  if (getpeername(fd, &peer.u.sa, &len) < 0) {
    len = 0; /* reset already: reading will say so */
    peer.u.sa.sa_family = AF_UNSPEC;
  }
  peer.len = len;
  ax__listener_accepted(l, fd, &peer);
}

/* Append @fd to the held ones; false on ENOMEM. */
static bool hold(ax_listener_t *l, int fd) {
  if (l->nheld == l->heldcap && l->hhead > 0) {
    l->nheld -= l->hhead;
    memmove(l->held, l->held + l->hhead, l->nheld * sizeof(*l->held));
    l->hhead = 0;
  }
  if (l->nheld == l->heldcap) {
    uint32_t ncap = l->heldcap ? l->heldcap * 2 : HELD_FIRST;
    int *v = ax__realloc(l->loop, l->held, ncap * sizeof(*v));
    if (v == NULL)
      return false;
    l->held = v;
    l->heldcap = ncap;
  }
  l->held[l->nheld++] = fd;
  return true;
}

static void got_fd(ax_listener_t *l, int fd) {
  if (l->closed) {
    close(fd); /* accepted before the cancel took effect */
    return;
  }
  /* Behind held ones, to keep the order; ENOMEM: handed over now rather
   * than dropped. */
  if ((l->user_paused || l->hhead < l->nheld) && hold(l, fd))
    return;
  hand_over(l, fd);
}

/* Resumed: the held connections, in order, until the user pauses again. */
static void kick_cb(ax_source_t *src, void *data) {
  ax_listener_t *l = data;
  (void)src;
  l->busy++;
  while (l->hhead < l->nheld && !l->closed && !l->user_paused)
    hand_over(l, l->held[l->hhead++]); /* listed no more: close skips it */
  if (l->hhead == l->nheld)
    l->hhead = l->nheld = 0;
  l->busy--;
  ax__listener_release(l);
}

/* Readiness from now on, for @l and the loop's later listeners. */
static void fall_back(ax_listener_t *l) {
  struct ax__px *px = l->loop->px;
  if (px->ldrv == &ax__ldrv_uring)
    px->ldrv = NULL;
  l->drv = &ax__ldrv_rd; /* armed by the sync after the final completion */
}

static void accept_done(ax_loop_t *loop, struct ax__uop *op, int res,
                        uint32_t flags) {
  ax_listener_t *l = ax__container_of(op, struct ax_listener, aop);
  bool more = flags & IORING_CQE_F_MORE;
  (void)loop;
  /* Still live while the user runs (a close then keeps the memory), but
   * nothing left to cancel if this is the last completion. */
  l->astate |= more ? AX__A_MORE : AX__A_CANCEL;
  if (res >= 0)
    got_fd(l, res);
  else if (res == -EINVAL && !more && !(l->astate & AX__A_MORE))
    fall_back(l); /* never went multishot: the kernel has none */
  else if (res != -ECANCELED && !l->closed)
    ax__listener_failed(l, res); /* a pause cancels it if it goes on */
  if (more)
    return;
  l->astate &= ~(AX__A_LIVE | AX__A_CANCEL);
  ax__loop_release(l->loop);
  if (l->closed)
    ax__listener_release(l);
  else
    l->drv->sync(l); /* armed again if it accepts */
}

/* ---- the driver --------------------------------------------------------- */

static int ur_init(ax_listener_t *l) {
  int r;
  l->aop.done = accept_done;
  if ((r = ax_defer_new(l->loop, kick_cb, l, &l->kick)) < 0)
    return r;
  return arm(l); /* the error path of ax_listener_new frees the defer */
}

static void ur_sync(ax_listener_t *l) {
  if (!ax__listener_wanted(l)) {
    cancel(l); /* no SQE: what it accepts meanwhile is held */
    return;
  }
  if (l->hhead < l->nheld)
    ax_defer_start(l->kick); /* cannot fail on an existing defer */
  /* Being cancelled: armed again by its final completion. */
  if (!(l->astate & AX__A_LIVE) && arm(l) < 0)
    ax__listener_backoff(l); /* no SQE now: try again after a pause */
}

static void ur_close(ax_listener_t *l) {
  while (l->hhead < l->nheld)
    close(l->held[l->hhead++]);
  l->hhead = l->nheld = 0;
  /* No SQE for the cancel: a listening socket that is shut down fails the
   * accept, which ends it. */
  if (!cancel(l))
    shutdown(l->fd, SHUT_RDWR);
  /* At once, when this thread may submit (it owns the ring, enabled);
   * else with the next wait. */
  if (l->astate & AX__A_LIVE)
    io_uring_submit_and_get_events(ax__uring(l->loop));
}

/* Completions posted for @l that will never be dispatched: the fds they
 * carry are closed (the CQEs themselves go with the ring). */
static void close_posted(ax_listener_t *l) {
  ax_loop_t *loop = l->loop;
  struct io_uring_cqe *cqe;
  uint64_t ud = ax__uring_ud(&l->aop);
  unsigned head;
  for (size_t i = loop->ucq_next; i < loop->nucq; i++)
    if (loop->ucq[i].op == &l->aop && loop->ucq[i].res >= 0)
      close(loop->ucq[i].res);
  io_uring_for_each_cqe(ax__uring(loop), head, cqe) {
    if (cqe->user_data == ud && cqe->res >= 0)
      close(cqe->res);
  }
}

static void ur_fini(ax_listener_t *l) {
  if (!(l->astate & AX__A_LIVE))
    return;
  close_posted(l);
  l->astate &= ~(AX__A_LIVE | AX__A_CANCEL);
  ax__loop_release(l->loop);
}

const struct ax__ldrv ax__ldrv_uring = {
    .init = ur_init,
    .sync = ur_sync,
    .close = ur_close,
    .fini = ur_fini,
};

/* Called by stream_uring.c's ur_moved, outside any dispatch: a live
 * operation whose final completion the old ring had not posted gets one. */
void ax__accept_moved(struct ax__px *px) {
  ax_loop_t *loop = px->loop;
  for (struct ax__list *n = px->listeners.next; n != &px->listeners;
       n = n->next) {
    ax_listener_t *l = ax__container_of(n, struct ax_listener, link);
    bool ended = false;
    if (!(l->astate & AX__A_LIVE))
      continue;
    for (size_t i = 0; i < loop->nucq && !ended; i++)
      ended = loop->ucq[i].op == &l->aop &&
              !(loop->ucq[i].flags & IORING_CQE_F_MORE);
    /* ENOMEM: it never ends; the listener accepts no more until the loop
     * is freed, as a stream's operation would. */
    if (!ended)
      ax__ucq_push(loop, &l->aop, -ECANCELED, 0);
  }
}

#endif /* AX_HAVE_URING */
