/*
 * The readiness driver: one I/O source per stream, level-triggered, whose
 * interest follows what the stream needs (read while the user reads,
 * write while the queue holds bytes). The proactor reads and writes itself
 * when the loop says the fd is ready. Used on epoll, poll and select, and on
 * io_uring when the native driver is not available.
 *
 * Reads go into a buffer from the loop's pool taken only when the fd is
 * readable, so an idle stream holds no read buffer. A readable event reads
 * at most READS_PER_EVENT times, so one busy stream cannot starve the
 * others (level-triggered: the loop comes back to it).
 */
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proactor/proactor_int.h"

#define READS_PER_EVENT 4
#define IOV_MAX_BATCH 64
#define SENDFILE_CHUNK ((size_t)1 << 30)
#define COPY_CHUNK ((size_t)64 * 1024)

static void update(ax_stream_t *s);

/* The stream's I/O source lives in drv_data (see struct ax_stream). */
static ax_source_t *io_of(const ax_stream_t *s) { return s->drv_data; }

/* ---- reading ------------------------------------------------------------ */

static void do_read(ax_stream_t *s) {
  ax_bufpool_t *pool = ax_loop_bufpool(s->loop);
  for (int i = 0; i < READS_PER_EVENT && ax__stream_wants_read(s); i++) {
    ax_buf_t *b;
    ssize_t n;
    if (pool == NULL || ax_bufpool_get(pool, &b) < 0) {
      ax__stream_fail(s, -ENOMEM);
      return;
    }
    do
      n = read(s->fd, ax_buf_data(b), ax_buf_cap(b));
    while (n < 0 && errno == EINTR);
    if (n > 0) {
      ax_slice_t sl = {.buf = b, .off = 0, .len = (uint32_t)n};
      bool full = (size_t)n == ax_buf_cap(b);
      ax__stream_on_data(s, sl);
      ax_buf_unref(b);
      if (!full)
        break; /* drained, most likely: save a read that would EAGAIN */
      continue;
    }
    ax_buf_unref(b);
    if (n == 0)
      ax__stream_on_eof(s);
    else if (errno != EAGAIN)
      ax__stream_fail(s, -errno);
    return;
  }
}

/* ---- writing ------------------------------------------------------------ */

/* The head request is a file range sendfile(2) refused: copy it through a
 * buffer. A short send re-reads the rest next time: correct, if wasteful,
 * and only for fds sendfile cannot serve. */
static ssize_t copy_file(ax_stream_t *s, struct ax__wreq *r) {
  char buf[16 * 1024];
  size_t want = r->left < sizeof(buf) ? (size_t)r->left : sizeof(buf);
  ssize_t n;
  do
    n = pread(r->file_fd, buf, want, (off_t)r->off);
  while (n < 0 && errno == EINTR);
  if (n <= 0)
    return n == 0 ? -EIO : -errno; /* the file ended before the range */
  struct iovec iov = {.iov_base = buf, .iov_len = (size_t)n};
  return ax__stream_send(s, &iov, 1);
}

static ssize_t send_file(ax_stream_t *s, struct ax__wreq *r) {
  off_t off = (off_t)r->off;
  size_t want = r->left < SENDFILE_CHUNK ? (size_t)r->left : SENDFILE_CHUNK;
  ssize_t n;
  if (s->flags & AX__S_NOSENDFILE)
    return copy_file(s, r);
  do
    n = sendfile(s->fd, r->file_fd, &off, want);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EINVAL || errno == ENOSYS)) {
    s->flags |= AX__S_NOSENDFILE;
    return copy_file(s, r);
  }
  if (n == 0)
    return -EIO; /* the file is shorter than the range */
  return n < 0 ? -errno : n;
}

static ssize_t send_data(ax_stream_t *s) {
  struct iovec iov[IOV_MAX_BATCH];
  uint64_t run = ax__stream_data_run(s), sum = 0;
  int n = ax_buflist_iov(&s->wq, iov, IOV_MAX_BATCH), k;
  /* Only the data ahead of the next file range or shutdown. */
  for (k = 0; k < n && sum < run; k++) {
    if (sum + iov[k].iov_len > run)
      iov[k].iov_len = (size_t)(run - sum);
    sum += iov[k].iov_len;
  }
  return ax__stream_send(s, iov, k);
}

bool ax__stream_write_some(ax_stream_t *s) {
  struct ax__wreq *r;
  while ((r = s->wq_head) != NULL && !(s->flags & AX__S_FAILED)) {
    ssize_t n;
    if (r->kind == AX__W_SHUT) {
      /* A pipe has no half-close (-ENOTSOCK → -ENOTSUP): closing the
       * stream is its EOF. */
      int st = shutdown(s->fd, SHUT_WR) < 0 ? -errno : 0;
      ax__stream_on_shutdown(s, st == -ENOTSOCK ? -ENOTSUP : st);
      continue;
    }
    n = r->kind == AX__W_FILE ? send_file(s, r) : send_data(s);
    if (n == -EAGAIN)
      return true;
    if (n < 0) {
      ax__stream_fail(s, (int)n);
      return false;
    }
    ax__stream_on_written(s, (uint64_t)n);
  }
  return s->wq_head != NULL;
}

/* ---- events ------------------------------------------------------------- */

static int connect_status(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    return -errno;
  return -err;
}

static void io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  ax_stream_t *s = data;
  (void)src;
  (void)fd;
  if (s->flags & AX__S_CONNECTING) {
    ax__stream_on_connect(s, connect_status(s->fd));
  } else {
    if (s->flags & AX__S_SPLICING)
      ax__splice_ready(s, revents);
    if (s->flags & AX__S_CLOSING)
      return;
    if ((revents & (AX_READABLE | AX_HANGUP | AX_ERROR)) &&
        ax__stream_wants_read(s))
      do_read(s);
    if (!(s->flags & AX__S_CLOSING) && s->wq_head != NULL &&
        (revents & (AX_WRITABLE | AX_ERROR | AX_HANGUP)))
      ax__stream_write_some(s);
  }
  update(s);
}

/* Make the source's interest what the stream needs now. */
static void update(ax_stream_t *s) {
  unsigned want = 0;
  int r;
  if (s->flags & AX__S_CLOSING)
    return;
  if (s->flags & AX__S_CONNECTING) {
    want = AX_WRITABLE;
  } else if (!(s->flags & AX__S_FAILED)) {
    if (ax__stream_wants_read(s))
      want |= AX_READABLE;
    if (s->wq_head != NULL)
      want |= AX_WRITABLE;
    if (s->flags & AX__S_SPLICING)
      want |= ax__splice_interest(s);
  }
  if (want == s->drv_state)
    return;
  if (want == 0) {
    ax_source_stop(io_of(s));
    s->drv_state = 0;
    return;
  }
  if ((r = ax_io_start(io_of(s), want)) < 0) {
    ax__stream_fail(s, r); /* leaves want 0: no recursion */
    return;
  }
  s->drv_state = want;
}

/* ---- the driver --------------------------------------------------------- */

static int rd_attach(ax_stream_t *s) {
  ax_source_t *io;
  int r = ax_io_new(s->loop, s->fd, io_cb, s, &io);
  if (r == 0)
    s->drv_data = io;
  return r;
}

static int rd_read_start(ax_stream_t *s) {
  update(s);
  return (s->flags & AX__S_FAILED) ? s->err : 0;
}

static void rd_read_stop(ax_stream_t *s) { update(s); }

/* Bytes were queued: writability will drain them. The queue is written
 * inline only when it was empty (stream.c), so order holds. */
static void rd_flush(ax_stream_t *s) { update(s); }

static int rd_connect_wait(ax_stream_t *s) {
  update(s);
  return (s->flags & AX__S_FAILED) ? s->err : 0;
}

static void rd_close(ax_stream_t *s) {
  ax_source_free(io_of(s));
  s->drv_data = NULL;
  s->drv_state = 0;
  ax__stream_released(s);
}

static int rd_detach(ax_stream_t *s) {
  ax_source_free(io_of(s));
  s->drv_data = NULL;
  s->drv_state = 0;
  return 0;
}

const struct ax__sdrv ax__sdrv_rd = {
    .name = "readiness",
    .attach = rd_attach,
    .read_start = rd_read_start,
    .read_stop = rd_read_stop,
    .flush = rd_flush,
    .connect_wait = rd_connect_wait,
    .close = rd_close,
    .detach = rd_detach,
};
