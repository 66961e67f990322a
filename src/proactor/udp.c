/*
 * UDP sockets: datagrams in with their source address, datagrams out sent
 * at once or queued (copied) while the socket buffer is full.
 */
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proactor/proactor_int.h"

#define DGRAM_MAX 65536
#define RECV_PER_EVENT 32
#define QUEUE_MAX 256

struct dgram {
  ax_addr_t to;
  ax_slice_t data;
};

struct ax_udp {
  struct ax__list link; /* px->udps */
  ax_loop_t *loop;
  ax_source_t *io;
  ax_bufpool_t *pool;   /* DGRAM_MAX buffers */
  int fd;
  void *ud;
  ax_udp_recv_cb cb;
  struct dgram *q;      /* ring of QUEUE_MAX, allocated on first need */
  uint32_t qhead, qn;
  unsigned interest;
  int busy;
  bool closed;
  ax_udp_stats_t st;
};

static void udps_fini(struct ax__px *px);

static void update(ax_udp_t *u) {
  unsigned want = (u->cb ? AX_READABLE : 0) | (u->qn ? AX_WRITABLE : 0);
  if (u->closed || want == u->interest)
    return;
  if (want == 0)
    ax_source_stop(u->io);
  else if (ax_io_start(u->io, want) < 0)
    return; /* registered at creation: only ENOMEM, keep the old interest */
  u->interest = want;
}

static void report(ax_udp_t *u, int err) {
  ax_slice_t none = {0};
  if (u->cb)
    u->cb(u, err, &none, NULL, u->ud);
}

static void do_recv(ax_udp_t *u) {
  for (int i = 0; i < RECV_PER_EVENT && u->cb && !u->closed; i++) {
    ax_buf_t *b;
    ax_addr_t from;
    struct iovec iov;
    struct msghdr m = {0};
    ssize_t n;
    if (ax_bufpool_get(u->pool, &b) < 0) {
      report(u, -ENOMEM);
      return;
    }
    iov.iov_base = ax_buf_data(b);
    iov.iov_len = ax_buf_cap(b);
    memset(&from, 0, sizeof(from));
    m.msg_name = &from.u;
    m.msg_namelen = sizeof(from.u);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    do
      n = recvmsg(u->fd, &m, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      int err = errno;
      ax_buf_unref(b);
      if (err != EAGAIN)
        report(u, -err); /* e.g. ECONNREFUSED from an ICMP: go on */
      if (err == EAGAIN || err == ENOMEM)
        return;
      continue;
    }
    from.len = m.msg_namelen;
    ax_slice_t sl = {.buf = b, .off = 0, .len = (uint32_t)n};
    u->st.received++;
    u->cb(u, (int)n, &sl, &from, u->ud);
    ax_buf_unref(b);
  }
}

static ssize_t send1(ax_udp_t *u, const ax_addr_t *to, const void *p,
                     size_t len) {
  ssize_t n;
  do
    n = sendto(u->fd, p, len, MSG_DONTWAIT | MSG_NOSIGNAL, &to->u.sa, to->len);
  while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : n;
}

static void do_send(ax_udp_t *u) {
  while (u->qn > 0 && !u->closed) {
    struct dgram *d = &u->q[u->qhead];
    ssize_t n = send1(u, &d->to, ax_slice_ptr(d->data), d->data.len);
    if (n == -EAGAIN || n == -ENOBUFS)
      return;
    ax_buf_unref(d->data.buf);
    d->data.buf = NULL;
    u->qhead = (u->qhead + 1) % QUEUE_MAX;
    u->qn--;
    if (n < 0) {
      u->st.send_dropped++;
      report(u, (int)n);
    } else {
      u->st.sent++;
    }
  }
}

static void on_io(ax_source_t *src, int fd, unsigned revents, void *data) {
  ax_udp_t *u = data;
  (void)src;
  (void)fd;
  u->busy++;
  if (revents & (AX_READABLE | AX_ERROR))
    do_recv(u);
  if (!u->closed && (revents & (AX_WRITABLE | AX_ERROR)))
    do_send(u);
  update(u);
  if (--u->busy == 0 && u->closed)
    ax__free(u->loop, u);
}

int ax_udp_new(ax_loop_t *loop, const ax_addr_t *bind_to, void *ud,
               ax_udp_t **out) {
  struct ax__px *px;
  ax_udp_t *u;
  int fd, r;
  if (loop == NULL || bind_to == NULL || out == NULL || bind_to->len == 0 ||
      bind_to->len > sizeof(bind_to->u))
    return -EINVAL;
  if ((px = ax__px(loop)) == NULL || (u = ax__alloc(loop, sizeof(*u))) == NULL)
    return -ENOMEM;
  memset(u, 0, sizeof(*u));
  fd = socket(bind_to->u.sa.sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
              0);
  if (fd < 0) {
    r = -errno;
    goto fail;
  }
  if (bind(fd, &bind_to->u.sa, bind_to->len) < 0) {
    r = -errno;
    goto fail;
  }
  u->loop = loop;
  u->fd = fd;
  u->ud = ud;
  if ((r = ax_bufpool_new(loop, DGRAM_MAX, 4, &u->pool)) < 0 ||
      (r = ax_io_new(loop, fd, on_io, u, &u->io)) < 0)
    goto fail;
  ax__list_append(&px->udps, &u->link);
  px->fini[AX__PXM_UDP] = udps_fini;
  *out = u;
  return 0;
fail:
  if (u->pool)
    ax_bufpool_free(u->pool);
  if (fd >= 0)
    close(fd);
  ax__free(loop, u);
  return r;
}

int ax_udp_recv_start(ax_udp_t *u, ax_udp_recv_cb cb) {
  if (u == NULL || cb == NULL || u->closed)
    return -EINVAL;
  u->cb = cb;
  update(u);
  return (u->interest & AX_READABLE) ? 0 : -ENOMEM;
}

int ax_udp_recv_stop(ax_udp_t *u) {
  if (u == NULL || u->closed)
    return -EINVAL;
  u->cb = NULL;
  update(u);
  return 0;
}

int ax_udp_send(ax_udp_t *u, const ax_addr_t *to, const void *p, size_t len) {
  ssize_t n;
  int r;
  if (u == NULL || to == NULL || (p == NULL && len > 0) || u->closed ||
      to->len == 0 || to->len > sizeof(to->u))
    return -EINVAL;
  if (len > DGRAM_MAX)
    return -EMSGSIZE;
  if (u->qn == 0) {
    n = send1(u, to, p, len);
    if (n >= 0) {
      u->st.sent++;
      return 0;
    }
    if (n != -EAGAIN && n != -ENOBUFS)
      return (int)n;
  }
  if (u->qn == QUEUE_MAX)
    return -ENOBUFS;
  if (u->q == NULL &&
      (u->q = ax__alloc(u->loop, QUEUE_MAX * sizeof(*u->q))) == NULL)
    return -ENOMEM;
  struct dgram *d = &u->q[(u->qhead + u->qn) % QUEUE_MAX];
  if ((r = ax_buf_copy(u->loop, p, len, &d->data)) < 0)
    return r;
  d->to = *to;
  u->qn++;
  update(u);
  return 0;
}

int ax_udp_addr(const ax_udp_t *u, ax_addr_t *out) {
  socklen_t len = sizeof(out->u);
  if (u == NULL || out == NULL || u->closed)
    return -EINVAL;
  memset(out, 0, sizeof(*out));
  if (getsockname(u->fd, &out->u.sa, &len) < 0)
    return -errno;
  out->len = len;
  return 0;
}

int ax_udp_fd(const ax_udp_t *u) { return u && !u->closed ? u->fd : -EINVAL; }

int ax_udp_stats(const ax_udp_t *u, ax_udp_stats_t *out) {
  if (u == NULL || out == NULL)
    return -EINVAL;
  *out = u->st;
  return 0;
}

void ax_udp_close(ax_udp_t *u) {
  if (u == NULL || u->closed)
    return;
  u->closed = true;
  u->cb = NULL;
  for (; u->qn > 0; u->qn--, u->qhead = (u->qhead + 1) % QUEUE_MAX)
    ax_buf_unref(u->q[u->qhead].data.buf);
  if (u->q)
    ax__free(u->loop, u->q);
  ax_source_free(u->io);
  close(u->fd);
  /* Buffers the user kept stay valid: a pool freed with buffers out lives
   * until the last one returns. */
  ax_bufpool_free(u->pool);
  ax__list_unlink(&u->link);
  if (u->busy == 0)
    ax__free(u->loop, u);
}

static void udps_fini(struct ax__px *px) {
  while (!ax__list_empty(&px->udps))
    ax_udp_close(ax__container_of(px->udps.next, struct ax_udp, link));
}
