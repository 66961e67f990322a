/*
 * Listeners: accept connections, hand each fd to the user. Two drivers
 * (struct ax__ldrv): readiness here, an I/O source and accept4 in batches
 * of o.batch per event, on every backend; and a multishot accept on
 * io_uring (listener_uring.c), where the kernel accepts every pending
 * connection and posts one completion each. The policy below is shared.
 *
 * Fd exhaustion (EMFILE/ENFILE): a level-triggered listening socket with a
 * pending connection stays readable, and accept keeps failing: a naive
 * loop spins at 100% CPU (a multishot accept would end at once, every time
 * it is armed). The policy here:
 *  1. the listener holds a reserve fd (/dev/null); on EMFILE it closes it,
 *     accepts one pending connection and closes that at once (the peer sees
 *     a close instead of hanging in the backlog), and re-opens the reserve;
 *  2. it stops accepting for a pause (emfile_pause_ms, doubling up to 1 s
 *     while the condition lasts) and then tries again;
 *  3. the user hears of it once per episode (status -EMFILE / -ENFILE),
 *     and an episode ends with the next successful accept.
 * ENOMEM / ENOBUFS from accept pause the same way, without the reserve, as
 * does any error that is not about one connection (which would repeat).
 *
 * Memory: a listener is freed when it is closed and no longer busy: no
 * accept callback runs (ax_listener_close may be called from one) and no
 * operation of it is in the kernel (a cancelled multishot accept still
 * posts its last completion). Until then it stays on px->listeners.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proactor/proactor_int.h"

#define MAX_PAUSE_MS 1000

static void listeners_fini(struct ax__px *px);

void ax_listen_options_init(ax_listen_options_t *o) {
  if (o == NULL)
    return;
  memset(o, 0, sizeof(*o));
}

/* ---- the policy, shared by the drivers ----------------------------------- */

bool ax__listener_wanted(const ax_listener_t *l) {
  return !l->closed && !l->user_paused && !l->emfile_paused;
}

bool ax__listener_busy(const ax_listener_t *l) {
  return l->busy > 0 || (l->astate & AX__A_LIVE);
}

static void listener_free(ax_listener_t *l) {
  ax__list_unlink(&l->link);
  ax__free(l->loop, l->held);
  ax__free(l->loop, l);
}

void ax__listener_release(ax_listener_t *l) {
  if (!l->closed || ax__listener_busy(l))
    return;
  listener_free(l);
}

void ax__listener_backoff(ax_listener_t *l) {
  l->emfile_paused = true;
  l->st.pauses++;
  ax_timer_start(l->timer, l->pause_ms, 0);
  l->pause_ms = l->pause_ms * 2 > MAX_PAUSE_MS ? MAX_PAUSE_MS : l->pause_ms * 2;
  l->drv->sync(l);
}

/* Out of fds: give the reserve up to take one connection off the backlog
 * and close it. */
static void shed(ax_listener_t *l) {
  if (l->reserve >= 0) {
    close(l->reserve);
    l->reserve = -1;
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) {
      close(fd);
      l->st.shed++;
    }
  }
  if (l->reserve < 0)
    l->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC); /* may fail: later */
}

static void report(ax_listener_t *l, int err) {
  if (l->reported)
    return;
  l->reported = true;
  l->busy++;
  l->cb(l, err, -1, NULL, l->ud);
  l->busy--;
}

void ax__listener_accepted(ax_listener_t *l, int fd, const ax_addr_t *peer) {
  l->st.accepted++;
  l->reported = false; /* the episode, if there was one, is over */
  l->pause_ms = l->o.emfile_pause_ms;
  if (l->reserve < 0)
    l->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
  l->busy++;
  l->cb(l, 0, fd, peer, l->ud);
  l->busy--;
}

bool ax__listener_failed(ax_listener_t *l, int err) {
  if (err == -EINTR || err == -ECONNABORTED || err == -EPROTO)
    return false; /* that connection is gone; the next may be fine */
  if (err == -EMFILE || err == -ENFILE)
    shed(l);
  report(l, err);
  if (!l->closed)
    ax__listener_backoff(l);
  return true;
}

static int64_t on_pause_end(ax_source_t *t, void *data) {
  ax_listener_t *l = data;
  (void)t;
  l->emfile_paused = false;
  l->drv->sync(l);
  return AX_TIMER_CONTINUE;
}

/* ---- the readiness driver ------------------------------------------------ */

static void on_ready(ax_source_t *src, int fd, unsigned revents, void *data) {
  ax_listener_t *l = data;
  (void)src;
  (void)fd;
  (void)revents;
  l->busy++;
  for (unsigned i = 0; i < l->o.batch && ax__listener_wanted(l); i++) {
    ax_addr_t peer;
    socklen_t len = sizeof(peer.u);
    int c = accept4(l->fd, &peer.u.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c >= 0) {
      peer.len = len;
      ax__listener_accepted(l, c, &peer);
    } else if (errno == EAGAIN || ax__listener_failed(l, -errno)) {
      break;
    }
  }
  l->busy--;
  ax__listener_release(l);
}

static int rd_init(ax_listener_t *l) {
  return ax_io_start(l->io, AX_READABLE);
}

static void rd_sync(ax_listener_t *l) {
  if (l->closed)
    return; /* the I/O source is gone */
  if (ax__listener_wanted(l))
    ax_io_start(l->io, AX_READABLE); /* registered before: cannot fail */
  else
    ax_source_stop(l->io);
}

static void rd_nothing(ax_listener_t *l) { (void)l; }

const struct ax__ldrv ax__ldrv_rd = {
    .init = rd_init,
    .sync = rd_sync,
    .close = rd_nothing,
    .fini = rd_nothing,
};

/* ---- listeners ----------------------------------------------------------- */

static int setup_socket(const ax_addr_t *a, const ax_listen_options_t *o,
                        int *out) {
  int fd, one = 1, r;
  fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
              0);
  if (fd < 0)
    return -errno;
  if (a->u.sa.sa_family != AF_UNIX) {
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        (o->reuseport &&
         setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) ||
        (a->u.sa.sa_family == AF_INET6 && o->v6only &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0))
      goto fail;
  }
  if (bind(fd, &a->u.sa, a->len) < 0 ||
      listen(fd, o->backlog > 0 ? o->backlog : SOMAXCONN) < 0)
    goto fail;
  *out = fd;
  return 0;
fail:
  r = -errno;
  close(fd);
  return r;
}

int ax_listener_new(ax_loop_t *loop, const ax_addr_t *addr,
                    const ax_listen_options_t *opts, ax_accept_cb cb, void *ud,
                    ax_listener_t **out) {
  ax_listen_options_t o;
  struct ax__px *px;
  ax_listener_t *l;
  int r, fd = -1;
  if (loop == NULL || addr == NULL || cb == NULL || out == NULL ||
      addr->len == 0 || addr->len > sizeof(addr->u))
    return -EINVAL;
  ax_listen_options_init(&o);
  if (opts)
    o = *opts;
  if (o.batch == 0)
    o.batch = 64;
  if (o.emfile_pause_ms == 0)
    o.emfile_pause_ms = 100;
  if ((px = ax__px(loop)) == NULL || (l = ax__alloc(loop, sizeof(*l))) == NULL)
    return -ENOMEM;
  memset(l, 0, sizeof(*l));
  if ((r = setup_socket(addr, &o, &fd)) < 0) {
    ax__free(loop, l);
    return r;
  }
  l->loop = loop;
  l->fd = fd;
  l->cb = cb;
  l->ud = ud;
  l->o = o;
  l->pause_ms = o.emfile_pause_ms;
  l->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
  l->drv = px->ldrv != NULL ? px->ldrv : &ax__ldrv_rd;
  /* The I/O source exists on io_uring too: the way back to readiness if
   * the kernel refuses multishot accept (listener_uring.c). */
  if ((r = ax_io_new(loop, fd, on_ready, l, &l->io)) < 0 ||
      (r = ax_timer_new(loop, on_pause_end, l, &l->timer)) < 0 ||
      (r = l->drv->init(l)) < 0) {
    if (l->io)
      ax_source_free(l->io);
    if (l->timer)
      ax_source_free(l->timer);
    if (l->kick)
      ax_source_free(l->kick);
    if (l->reserve >= 0)
      close(l->reserve);
    close(fd);
    ax__free(loop, l);
    return r;
  }
  /* The pause timer must not keep a loop alive on its own. */
  ax_source_unref(l->timer);
  ax__list_append(&px->listeners, &l->link);
  px->fini[AX__PXM_LISTENERS] = listeners_fini;
  *out = l;
  return 0;
}

int ax_listener_addr(const ax_listener_t *l, ax_addr_t *out) {
  socklen_t len = sizeof(out->u);
  if (l == NULL || out == NULL || l->closed)
    return -EINVAL;
  memset(out, 0, sizeof(*out));
  if (getsockname(l->fd, &out->u.sa, &len) < 0)
    return -errno;
  out->len = len;
  return 0;
}

ax_loop_t *ax_listener_loop(const ax_listener_t *l) {
  return l ? l->loop : NULL;
}

int ax_listener_pause(ax_listener_t *l) {
  if (l == NULL || l->closed)
    return -EINVAL;
  l->user_paused = true;
  l->drv->sync(l);
  return 0;
}

int ax_listener_resume(ax_listener_t *l) {
  if (l == NULL || l->closed)
    return -EINVAL;
  l->user_paused = false;
  l->drv->sync(l);
  return 0;
}

int ax_listener_stats(const ax_listener_t *l, ax_listener_stats_t *out) {
  if (l == NULL || out == NULL)
    return -EINVAL;
  *out = l->st;
  return 0;
}

void ax_listener_close(ax_listener_t *l) {
  if (l == NULL || l->closed)
    return;
  l->closed = true;
  ax_source_free(l->io);
  ax_source_free(l->timer);
  if (l->kick)
    ax_source_free(l->kick); /* safe from its own callback */
  l->kick = NULL;
  l->drv->close(l); /* before the fd goes: see listener_uring.c */
  close(l->fd);
  if (l->reserve >= 0)
    close(l->reserve);
  ax__listener_release(l); /* or later, when no longer busy */
}

/* From ax_loop_free: close what users left open; what is still busy (a
 * multishot accept whose last completion will never be dispatched) is
 * ended by its driver. */
static void listeners_fini(struct ax__px *px) {
  while (!ax__list_empty(&px->listeners)) {
    ax_listener_t *l =
        ax__container_of(px->listeners.next, struct ax_listener, link);
    if (!l->closed) {
      ax_listener_close(l); /* freed, or still listed and closed */
      continue;
    }
    /* No callback runs inside ax_loop_free: only the kernel's side is
     * left, and it ends here. */
    l->drv->fini(l);
    listener_free(l);
  }
}
