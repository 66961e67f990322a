/*
 * Streams: the API, the write queue with backpressure and a deadline, read
 * delivery through filters, errors, and close. How bytes reach the kernel
 * is the driver's business (stream_rd.c: readiness; stream_uring.c: native
 * io_uring); this file calls it through ax__sdrv(s).
 *
 * Rules kept here:
 * - no user callback runs inside the API call that caused it: write and
 *   close completions, and errors found inside an API call, are queued for
 *   the reaper (px.c);
 * - every write request completes exactly once: 0, the stream's error, or
 *   -ECANCELED at close;
 * - AX_EOF and the stream's error reach the read callback at most once each.
 */
#include <fcntl.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proactor/proactor_int.h"

#define DEFAULT_HIGH (64 * 1024)

static void streams_fini(struct ax__px *px);

/* ---- small helpers ------------------------------------------------------ */

struct ax__sext *ax__stream_ext(ax_stream_t *s) {
  struct ax__sext *e = s->ext;
  if (e != NULL)
    return e;
  if ((e = ax__alloc(s->loop, sizeof(*e))) == NULL)
    return NULL;
  memset(e, 0, sizeof(*e));
  s->ext = e;
  return e;
}

bool ax__stream_wants_read(const ax_stream_t *s) {
  return (s->flags & (AX__S_READING | AX__S_EOF | AX__S_FAILED |
                      AX__S_CLOSING | AX__S_CONNECTING |
                      AX__S_SPLICE_FROM)) == AX__S_READING &&
         (s->ext == NULL || s->ext->fn == 0);
}

uint64_t ax__stream_data_run(const ax_stream_t *s) {
  uint64_t run = 0;
  for (const struct ax__wreq *r = s->wq_head; r && r->kind == AX__W_DATA;
       r = r->next)
    run += r->left;
  return run;
}

ssize_t ax__stream_send(ax_stream_t *s, const struct iovec *iov, int n) {
  ssize_t r;
  do {
    if (s->flags & AX__S_SOCKET) {
      struct msghdr m = {.msg_iov = (struct iovec *)iov,
                         .msg_iovlen = (size_t)n};
      r = sendmsg(s->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      r = writev(s->fd, iov, n);
    }
  } while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : r;
}

/* ---- timers: connect timeout and write deadline ------------------------- */

static int64_t timer_cb(ax_source_t *t, void *data) {
  ax_stream_t *s = data;
  (void)t;
  if (s->flags & AX__S_CONNECTING)
    ax__stream_on_connect(s, -ETIMEDOUT);
  else if (s->wq_head != NULL)
    ax__stream_fail(s, -ETIMEDOUT);
  return AX_TIMER_CONTINUE;
}

/* The timer exists only while it runs, so an idle stream holds none. */
static int timer_arm(ax_stream_t *s, uint64_t ms) {
  int r;
  if (s->timer == NULL &&
      (r = ax_timer_new(s->loop, timer_cb, s, &s->timer)) < 0)
    return r;
  return ax_timer_start(s->timer, ms, 0);
}

static void timer_drop(ax_stream_t *s) {
  if (s->timer != NULL) {
    ax_source_free(s->timer);
    s->timer = NULL;
  }
}

/* The queue made progress or changed: restart or drop the deadline. */
static void deadline_update(ax_stream_t *s) {
  if (s->flags & AX__S_CONNECTING)
    return;
  if (s->wtimeout_ms && s->wq_head != NULL && !(s->flags & AX__S_FAILED)) {
    if (timer_arm(s, s->wtimeout_ms) < 0)
      timer_drop(s); /* ENOMEM: no deadline rather than a stale one */
  } else {
    timer_drop(s);
  }
}

/* ---- creation ----------------------------------------------------------- */

static int classify(int fd, uint32_t *flags) {
  struct stat st;
  int proto;
  socklen_t len = sizeof(proto);
  if (fstat(fd, &st) < 0)
    return -errno;
  if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))
    return AX_ENOTPOLLABLE;
  if (S_ISSOCK(st.st_mode)) {
    *flags |= AX__S_SOCKET;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) == 0 &&
        proto == IPPROTO_TCP)
      *flags |= AX__S_TCP;
  }
  return 0;
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0)
    return -errno;
  if (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return -errno;
  return 0;
}

static int stream_new(ax_loop_t *loop, int fd, void *ud, uint32_t flags,
                      ax_stream_t **out) {
  struct ax__px *px;
  ax_stream_t *s;
  int r;
  if ((r = classify(fd, &flags)) < 0 || (r = set_nonblock(fd)) < 0)
    return r;
  if ((px = ax__px(loop)) == NULL || (s = ax__stream_slot(px)) == NULL)
    return -ENOMEM;
  memset(s, 0, sizeof(*s));
  s->loop = loop;
  s->fd = fd;
  s->ud = ud;
  s->flags = flags | (px->native ? AX__S_NATIVE : 0);
  s->high = DEFAULT_HIGH;
  ax_buflist_init(&s->wq, loop);
  if ((r = ax__sdrv(s)->attach(s)) < 0) {
    ax__stream_slot_free(px, s);
    return r;
  }
  if (!(flags & AX__S_SOCKET))
    ax__ignore_sigpipe();
  ax__list_append(&px->streams, &s->link);
  px->nstreams++;
  px->fini[AX__PXM_STREAMS] = streams_fini;
  *out = s;
  return 0;
}

int ax_stream_open(ax_loop_t *loop, int fd, void *ud, ax_stream_t **out) {
  if (loop == NULL || fd < 0 || out == NULL)
    return -EINVAL;
  return stream_new(loop, fd, ud, 0, out);
}

int ax_connect(ax_loop_t *loop, const ax_addr_t *to, uint64_t timeout_ms,
               ax_stream_cb cb, void *ud, ax_stream_t **out) {
  ax_stream_t *s;
  int fd, r;
  if (loop == NULL || to == NULL || cb == NULL || out == NULL ||
      to->len == 0 || to->len > sizeof(to->u))
    return -EINVAL;
  fd = socket(to->u.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
              0);
  if (fd < 0)
    return -errno;
  if (connect(fd, &to->u.sa, to->len) < 0 && errno != EINPROGRESS) {
    r = -errno;
    close(fd);
    return r;
  }
  if ((r = stream_new(loop, fd, ud, AX__S_CONNECTING, &s)) < 0) {
    close(fd);
    return r;
  }
  /* Even a connection made at once (Unix sockets) completes through the
   * driver, so the callback never runs inside this call. */
  ax_loop_update_time(loop); /* the timeout counts from now */
  if (ax__stream_ext(s) == NULL ||
      (timeout_ms && (r = timer_arm(s, timeout_ms)) < 0) ||
      (r = ax__sdrv(s)->connect_wait(s)) < 0) {
    r = r < 0 ? r : -ENOMEM;
    s->flags &= ~AX__S_CONNECTING;
    ax_stream_close(s, NULL); /* closes fd; no callback to run */
    return r;
  }
  s->ext->connect_cb = cb;
  *out = s;
  return 0;
}

void ax__stream_on_connect(ax_stream_t *s, int status) {
  struct ax__sext *e = s->ext;
  if (!(s->flags & AX__S_CONNECTING))
    return;
  s->flags &= ~AX__S_CONNECTING;
  timer_drop(s);
  if (status < 0) {
    ax__stream_fail(s, status); /* queued writes complete with it */
  } else {
    deadline_update(s);
    if (s->wq_head)
      ax__sdrv(s)->flush(s);
    if (s->flags & AX__S_READING)
      ax__sdrv(s)->read_start(s);
  }
  if (e->connect_cb)
    e->connect_cb(s, status, s->ud);
}

/* ---- reading ------------------------------------------------------------ */

/* Frames owed to a user who is not reading right now (filters only). */
static int frames_push(ax_stream_t *s, ax_slice_t f) {
  struct ax__sext *e = s->ext;
  if (e->fn == e->fcap) {
    uint32_t ncap = e->fcap ? e->fcap * 2 : 8;
    ax_slice_t *v = ax__alloc(s->loop, ncap * sizeof(*v));
    if (v == NULL)
      return -ENOMEM;
    for (uint32_t i = 0; i < e->fn; i++)
      v[i] = e->frames[(e->fhead + i) & (e->fcap - 1)];
    if (e->frames)
      ax__free(s->loop, e->frames);
    e->frames = v;
    e->fcap = ncap;
    e->fhead = 0;
  }
  if (f.buf)
    ax_buf_ref(f.buf);
  e->frames[(e->fhead + e->fn) & (e->fcap - 1)] = f;
  e->fn++;
  return 0;
}

static void frames_clear(ax_stream_t *s) {
  struct ax__sext *e = s->ext;
  if (e == NULL)
    return;
  for (; e->fn > 0; e->fn--, e->fhead = (e->fhead + 1) & (e->fcap - 1))
    ax_buf_unref(e->frames[e->fhead].buf);
  if (e->frames)
    ax__free(s->loop, e->frames);
  e->frames = NULL;
  e->fcap = e->fhead = 0;
  e->feof = false;
}

static void owe_delivery(ax_stream_t *s) {
  struct ax__px *px = s->loop->px;
  if (!(s->flags & AX__S_OWED)) {
    s->flags |= AX__S_OWED;
    s->pnext = px->rdpend;
    px->rdpend = s;
  }
  ax__px_kick(px);
}

/* The user's end of the read chain. */
static int deliver(void *ctx, ax_slice_t f) {
  ax_stream_t *s = ctx;
  if (s->flags & (AX__S_CLOSING | AX__S_FAILED))
    return 0;
  if (!(s->flags & AX__S_READING) || (s->ext && s->ext->fn > 0))
    return frames_push(s, f); /* keep order behind frames already owed */
  s->read_cb(s, (int)f.len, &f, s->ud);
  return 0;
}

void ax__stream_on_data(ax_stream_t *s, ax_slice_t data) {
  int r;
  s->bytes_read += data.len;
  ax__px_count(&s->loop->px_bytes_in, data.len);
  if (s->ext && !ax__chain_empty(&s->ext->rchain)) {
    if ((r = ax__chain_push(&s->ext->rchain, data)) < 0)
      ax__stream_fail(s, r);
    return;
  }
  s->read_cb(s, (int)data.len, &data, s->ud);
}

static void deliver_eof(ax_stream_t *s) {
  ax_slice_t none = {0};
  if (s->ext && s->ext->fn > 0) {
    s->ext->feof = true;
    return;
  }
  if (!(s->flags & AX__S_READING)) {
    ax__stream_ext(s); /* ENOMEM: EOF is still reported by read_start */
    if (s->ext)
      s->ext->feof = true;
    return;
  }
  s->read_cb(s, AX_EOF, &none, s->ud);
}

void ax__stream_on_eof(ax_stream_t *s) {
  int r;
  if (s->flags & (AX__S_EOF | AX__S_FAILED | AX__S_CLOSING))
    return;
  s->flags |= AX__S_EOF;
  ax__sdrv(s)->read_stop(s);
  if (s->ext && !ax__chain_empty(&s->ext->rchain)) {
    if ((r = ax__chain_eof(&s->ext->rchain)) < 0) {
      s->flags &= ~AX__S_EOF;
      ax__stream_fail(s, r);
      return;
    }
    if (s->flags & (AX__S_CLOSING | AX__S_FAILED))
      return;
  }
  deliver_eof(s);
}

/* From the reaper: frames, then EOF, then an error, while the user reads. */
static void deliver_owed(ax_stream_t *s) {
  struct ax__sext *e = s->ext;
  ax_slice_t none = {0};
  while (e && e->fn > 0 && (s->flags & AX__S_READING) &&
         !(s->flags & (AX__S_CLOSING | AX__S_FAILED))) {
    ax_slice_t f = e->frames[e->fhead];
    e->fhead = (e->fhead + 1) & (e->fcap - 1);
    e->fn--;
    s->read_cb(s, (int)f.len, &f, s->ud);
    ax_buf_unref(f.buf);
  }
  if (s->flags & AX__S_CLOSING)
    return;
  if (s->flags & AX__S_FAILED) {
    if ((s->flags & AX__S_READING) && s->err != 0) {
      int err = s->err;
      s->flags &= ~AX__S_READING;
      s->read_cb(s, err, &none, s->ud);
    }
    return;
  }
  if (e && e->fn == 0 && e->feof && (s->flags & AX__S_READING)) {
    e->feof = false;
    s->flags &= ~AX__S_READING;
    s->read_cb(s, AX_EOF, &none, s->ud);
    return;
  }
  /* Frames drained and the user still reads: back to the socket. */
  if (e && e->fn == 0 && ax__stream_wants_read(s))
    ax__sdrv(s)->read_start(s);
}

/* A stream closed while listed stays listed (its memory goes only after
 * this list is empty: see the reaper) and is skipped here. */
void ax__streams_deliver(struct ax__px *px) {
  while (px->rdpend != NULL) {
    ax_stream_t *s = px->rdpend;
    px->rdpend = s->pnext;
    s->flags &= ~AX__S_OWED;
    deliver_owed(s);
  }
}

int ax_stream_read_start(ax_stream_t *s, ax_read_cb cb) {
  if (s == NULL || cb == NULL || (s->flags & AX__S_CLOSING))
    return -EINVAL;
  if (s->flags & AX__S_FAILED)
    return s->err;
  if (s->flags & AX__S_SPLICE_FROM)
    return -EBUSY;
  s->read_cb = cb;
  if (s->flags & AX__S_EOF) {
    /* Frames and EOF still owed: deliver them; else it was delivered. */
    if (s->ext && (s->ext->fn > 0 || s->ext->feof)) {
      s->flags |= AX__S_READING;
      owe_delivery(s);
      return 0;
    }
    return AX_EOF;
  }
  s->flags |= AX__S_READING;
  if (s->ext && s->ext->fn > 0) {
    owe_delivery(s);
    return 0;
  }
  if (s->flags & AX__S_CONNECTING)
    return 0; /* reading starts when connected */
  return ax__sdrv(s)->read_start(s);
}

int ax_stream_read_stop(ax_stream_t *s) {
  if (s == NULL || (s->flags & AX__S_CLOSING))
    return -EINVAL;
  if (!(s->flags & AX__S_READING))
    return 0;
  s->flags &= ~AX__S_READING;
  ax__sdrv(s)->read_stop(s);
  return 0;
}

/* ---- failing ------------------------------------------------------------ */

/* Complete every queued request with @status (deferred) and empty the
 * queue. */
static void queue_fail(ax_stream_t *s, int status) {
  struct ax__px *px = s->loop->px;
  struct ax__wreq *r;
  while ((r = s->wq_head) != NULL) {
    s->wq_head = r->next;
    if (r->cb && ax__px_complete(px, s, r->cb, r->ud, status) < 0)
      r->cb(s, status, r->ud); /* ENOMEM: at once rather than never */
    ax__wreq_free(px, r);
  }
  s->wq_tail = NULL;
  s->queued = 0;
  ax_buflist_clear(&s->wq);
}

void ax__stream_fail(ax_stream_t *s, int err) {
  if (s->flags & (AX__S_FAILED | AX__S_CLOSING))
    return;
  assert(err < 0);
  /* A user waiting for the drain with reading stopped (the usual way to
   * push back) would hear of the failure from nobody: tell the drain
   * callback, with the error. */
  bool waiting = (s->flags & AX__S_ABOVE_HIGH) && !(s->flags & AX__S_READING) &&
                 s->drain_cb;
  s->flags |= AX__S_FAILED;
  s->err = err;
  s->flags &= ~AX__S_ABOVE_HIGH;
  if (waiting)
    ax__px_complete(s->loop->px, s, (ax_write_cb)s->drain_cb, s->ud, err);
  queue_fail(s, err);
  deadline_update(s);
  frames_clear(s);
  ax__sdrv(s)->read_stop(s);
  /* The driver sees an empty queue now: it stops writing. */
  ax__sdrv(s)->flush(s);
  if (s->flags & AX__S_READING)
    owe_delivery(s);
}

/* ---- writing ------------------------------------------------------------ */

static int write_check(const ax_stream_t *s, size_t len) {
  if (s->flags & AX__S_CLOSING)
    return -EINVAL;
  if (s->flags & AX__S_FAILED)
    return s->err;
  if (s->flags & AX__S_SHUT)
    return -EPIPE;
  if (s->flags & AX__S_SPLICE_TO)
    return -EBUSY;
  if (s->limit && s->queued + len > s->limit)
    return -ENOBUFS;
  return 0;
}

/* Append a request of @len bytes (already in s->wq, or a file range). */
static int req_add(ax_stream_t *s, int kind, uint64_t len, ax_write_cb cb,
                   void *ud) {
  struct ax__px *px = s->loop->px;
  struct ax__wreq *t = s->wq_tail, *r;
  if (kind == AX__W_DATA && cb == NULL && t && t->kind == AX__W_DATA &&
      t->cb == NULL) {
    t->left += len; /* merged: no callback to keep apart */
  } else {
    if ((r = ax__wreq_new(px)) == NULL)
      return -ENOMEM;
    r->kind = (uint8_t)kind;
    r->left = len;
    r->cb = cb;
    r->ud = ud;
    if (t)
      t->next = r;
    else
      s->wq_head = r;
    s->wq_tail = r;
  }
  s->queued += len;
  if (s->queued > s->high)
    s->flags |= AX__S_ABOVE_HIGH;
  return 0;
}

/* The queue went from empty to not empty, or grew. */
static void queue_kick(ax_stream_t *s, bool was_empty) {
  if (was_empty)
    deadline_update(s);
  if (!(s->flags & AX__S_CONNECTING))
    ax__sdrv(s)->flush(s);
}

/* Try to write @iov at once: only when nothing is queued ahead and the
 * driver has nothing in flight (an empty queue says so). Returns bytes
 * written (maybe 0) or an error that failed the stream. */
static ssize_t write_now(ax_stream_t *s, const struct iovec *iov, int n) {
  ssize_t w;
  if (s->wq_head != NULL || (s->flags & AX__S_CONNECTING))
    return 0;
  w = ax__stream_send(s, iov, n);
  if (w == -EAGAIN)
    return 0;
  if (w < 0) {
    ax__stream_fail(s, (int)w);
    return w;
  }
  s->bytes_written += (uint64_t)w;
  ax__px_count(&s->loop->px_bytes_out, (uint64_t)w);
  return w;
}

/* Data that went through the write chain lands here. */
static int wq_sink(void *ctx, ax_slice_t out) {
  ax_stream_t *s = ctx;
  return ax_buflist_push(&s->wq, out);
}

/* Queue slices through the write filters; the request counts what they
 * emitted. */
static int write_filtered(ax_stream_t *s, const ax_slice_t *v, int n,
                          ax_write_cb cb, void *ud) {
  size_t before = ax_buflist_bytes(&s->wq);
  bool was_empty = s->wq_head == NULL;
  int r = 0;
  if (n > 1) {
    /* One write is one call into the chain (one frame for lenprefix):
     * several slices are joined first. */
    ax_buflist_t tmp;
    ax_slice_t one;
    ax_buflist_init(&tmp, s->loop);
    for (int i = 0; i < n && r == 0; i++)
      r = ax_buflist_push(&tmp, v[i]);
    if (r == 0 && ax_buflist_bytes(&tmp) > 0)
      r = ax_buflist_take(&tmp, ax_buflist_bytes(&tmp), &one);
    else
      one = (ax_slice_t){0};
    ax_buflist_clear(&tmp);
    if (r < 0)
      return r;
    r = ax__chain_push(&s->ext->wchain, one);
    ax_buf_unref(one.buf);
  } else if (n == 1) {
    r = ax__chain_push(&s->ext->wchain, v[0]);
  } else {
    r = ax__chain_push(&s->ext->wchain, (ax_slice_t){0});
  }
  size_t added = ax_buflist_bytes(&s->wq) - before;
  if (r < 0) {
    /* What the chain emitted before the error is on the wire's way
     * already (a frame header, say): the stream cannot be kept
     * consistent, so it fails. */
    if (added > 0 && req_add(s, AX__W_DATA, added, NULL, NULL) == 0)
      ax__stream_fail(s, r);
    return r;
  }
  if (added == 0 && was_empty) /* held by a filter, or empty */
    return cb ? ax__px_complete(s->loop->px, s, cb, ud, 0) : 0;
  if ((r = req_add(s, AX__W_DATA, added, cb, ud)) < 0) {
    ax__stream_fail(s, r);
    return r;
  }
  queue_kick(s, was_empty);
  return 0;
}

static bool filtered(const ax_stream_t *s) {
  return s->ext && !ax__chain_empty(&s->ext->wchain);
}

int ax_stream_write(ax_stream_t *s, const void *p, size_t len, ax_write_cb cb,
                    void *ud) {
  ax_slice_t sl;
  ssize_t w = 0;
  bool was_empty;
  int r;
  if (s == NULL || (p == NULL && len > 0) || len > INT32_MAX)
    return -EINVAL;
  if ((r = write_check(s, len)) < 0)
    return r;
  if (filtered(s)) {
    if ((r = ax_buf_copy(s->loop, p, len, &sl)) < 0)
      return r;
    r = write_filtered(s, &sl, 1, cb, ud);
    ax_buf_unref(sl.buf);
    return r;
  }
  was_empty = s->wq_head == NULL;
  if (len > 0) {
    struct iovec iov = {.iov_base = (void *)p, .iov_len = len};
    if ((w = write_now(s, &iov, 1)) < 0)
      return (int)w;
  }
  if ((size_t)w == len && (len > 0 || was_empty))
    return cb ? ax__px_complete(s->loop->px, s, cb, ud, 0) : 0;
  if (len == 0) /* behind queued bytes: completes in its turn */
    return cb ? req_add(s, AX__W_DATA, 0, cb, ud) : 0;
  if ((r = ax_buflist_push_copy(&s->wq, (const char *)p + w,
                                len - (size_t)w)) < 0)
    goto partial;
  if ((r = req_add(s, AX__W_DATA, len - (size_t)w, cb, ud)) < 0) {
    if (was_empty) { /* the copy is all the list holds: undo it */
      ax_buflist_clear(&s->wq);
      goto partial;
    }
    ax__stream_fail(s, r); /* bytes no request accounts for */
    return r;
  }
  queue_kick(s, was_empty);
  return 0;
partial:
  /* Part of the bytes left already: the stream cannot continue. */
  if (w > 0)
    ax__stream_fail(s, r);
  return r;
}

int ax_stream_write_slices(ax_stream_t *s, const ax_slice_t *v, int n,
                           ax_write_cb cb, void *ud) {
  struct iovec iov[64];
  size_t total = 0, skip;
  ssize_t w = 0;
  bool was_empty;
  int r, i, k = 0;
  if (s == NULL || n < 0 || (v == NULL && n > 0))
    return -EINVAL;
  for (i = 0; i < n; i++) {
    if (v[i].len > 0 && (v[i].buf == NULL ||
                         (uint64_t)v[i].off + v[i].len > ax_buf_cap(v[i].buf)))
      return -EINVAL;
    total += v[i].len;
  }
  if ((r = write_check(s, total)) < 0)
    return r;
  if (filtered(s))
    return write_filtered(s, v, n, cb, ud);
  was_empty = s->wq_head == NULL;
  if (was_empty && total > 0 && !(s->flags & AX__S_CONNECTING)) {
    for (i = 0; i < n && k < 64; i++)
      if (v[i].len)
        iov[k++] = (struct iovec){ax_slice_ptr(v[i]), v[i].len};
    if ((w = write_now(s, iov, k)) < 0)
      return (int)w;
  }
  if ((size_t)w == total && (total > 0 || was_empty))
    return cb ? ax__px_complete(s->loop->px, s, cb, ud, 0) : 0;
  if (total == 0) /* behind queued bytes: completes in its turn */
    return cb ? req_add(s, AX__W_DATA, 0, cb, ud) : 0;
  /* Queue what is left: the slices after the bytes written, shared. */
  skip = (size_t)w;
  size_t before = ax_buflist_bytes(&s->wq);
  for (i = 0, r = 0; i < n && r == 0; i++) {
    ax_slice_t sl = v[i];
    if (skip >= sl.len) {
      skip -= sl.len;
      continue;
    }
    sl.off += (uint32_t)skip;
    sl.len -= (uint32_t)skip;
    skip = 0;
    r = ax_buflist_push(&s->wq, sl);
  }
  if (r == 0)
    r = req_add(s, AX__W_DATA, total - (size_t)w, cb, ud);
  if (r < 0) {
    /* Drop what this call queued, when it is all the list holds. */
    size_t mine = ax_buflist_bytes(&s->wq) - before;
    if (was_empty && w == 0)
      ax_buflist_clear(&s->wq);
    else if (mine > 0 || w > 0)
      ax__stream_fail(s, r);
    return r;
  }
  queue_kick(s, was_empty);
  return 0;
}

int ax_stream_sendfile(ax_stream_t *s, int file_fd, off_t offset, size_t len,
                       ax_write_cb cb, void *ud) {
  bool was_empty;
  int r;
  if (s == NULL || file_fd < 0 || offset < 0)
    return -EINVAL;
  if (filtered(s))
    return -EINVAL;
  if ((r = write_check(s, len)) < 0)
    return r;
  if (len == 0)
    return cb ? ax__px_complete(s->loop->px, s, cb, ud, 0) : 0;
  was_empty = s->wq_head == NULL;
  if ((r = req_add(s, AX__W_FILE, len, cb, ud)) < 0)
    return r;
  s->wq_tail->file_fd = file_fd;
  s->wq_tail->off = (uint64_t)offset;
  queue_kick(s, was_empty);
  return 0;
}

/* Requests of no bytes (an empty write behind others) complete when they
 * reach the head: drivers never see one there. */
static void pop_empty(ax_stream_t *s) {
  struct ax__px *px = s->loop->px;
  struct ax__wreq *r;
  while ((r = s->wq_head) != NULL && r->kind == AX__W_DATA && r->left == 0) {
    s->wq_head = r->next;
    if (s->wq_head == NULL)
      s->wq_tail = NULL;
    if (r->cb)
      ax__px_complete(px, s, r->cb, r->ud, 0);
    ax__wreq_free(px, r);
  }
}

void ax__stream_on_written(ax_stream_t *s, uint64_t n) {
  struct ax__px *px = s->loop->px;
  uint64_t total = n;
  while (n > 0) {
    struct ax__wreq *r = s->wq_head;
    uint64_t k;
    assert(r != NULL && r->kind != AX__W_SHUT);
    k = n < r->left ? n : r->left;
    if (r->kind == AX__W_DATA)
      ax_buflist_consume(&s->wq, k);
    else
      r->off += k;
    r->left -= k;
    n -= k;
    if (r->left == 0) {
      s->wq_head = r->next;
      if (s->wq_head == NULL)
        s->wq_tail = NULL;
      if (r->cb)
        ax__px_complete(px, s, r->cb, r->ud, 0);
      ax__wreq_free(px, r);
    }
  }
  pop_empty(s);
  s->queued -= total;
  s->bytes_written += total;
  ax__px_count(&s->loop->px_bytes_out, total);
  if (s->wq_head == NULL && ax_buflist_count(&s->wq) == 0)
    ax_buflist_clear(&s->wq); /* an idle stream holds no ring */
  deadline_update(s);
  if ((s->flags & AX__S_ABOVE_HIGH) && s->queued <= s->high / 2) {
    s->flags &= ~AX__S_ABOVE_HIGH;
    if (s->drain_cb)
      ax__px_complete(px, s, (ax_write_cb)s->drain_cb, s->ud, 0);
  }
}

void ax__stream_on_shutdown(ax_stream_t *s, int status) {
  struct ax__px *px = s->loop->px;
  struct ax__wreq *r = s->wq_head;
  assert(r != NULL && r->kind == AX__W_SHUT);
  s->wq_head = r->next;
  if (s->wq_head == NULL)
    s->wq_tail = NULL;
  s->flags |= AX__S_SHUT_DONE;
  if (r->cb)
    ax__px_complete(px, s, r->cb, r->ud, status);
  ax__wreq_free(px, r);
  pop_empty(s);
  deadline_update(s);
  /* -ENOTCONN: the peer is gone already; -ENOTSUP: a pipe. Neither
   * breaks the stream; other errors do. */
  if (status < 0 && status != -ENOTCONN && status != -ENOTSUP)
    ax__stream_fail(s, status);
}

int ax_stream_shutdown(ax_stream_t *s, ax_stream_cb cb) {
  bool was_empty;
  int r;
  if (s == NULL || (s->flags & AX__S_CLOSING))
    return -EINVAL;
  if (s->flags & AX__S_SHUT)
    return -EALREADY;
  if (s->flags & AX__S_FAILED)
    return s->err;
  was_empty = s->wq_head == NULL;
  if ((r = req_add(s, AX__W_SHUT, 0, (ax_write_cb)cb, s->ud)) < 0)
    return r;
  s->flags |= AX__S_SHUT;
  queue_kick(s, was_empty);
  return 0;
}

size_t ax_stream_write_queued(const ax_stream_t *s) {
  return s ? (size_t)s->queued : 0;
}

bool ax_stream_writable(const ax_stream_t *s) {
  return s && !(s->flags & AX__S_ABOVE_HIGH);
}

int ax_stream_set_write_limits(ax_stream_t *s, size_t high, size_t limit,
                               ax_stream_cb drain_cb) {
  if (s == NULL || high == 0 || (limit && limit < high) ||
      (s->flags & AX__S_CLOSING))
    return -EINVAL;
  if (high > UINT32_MAX || limit > UINT32_MAX)
    return -ERANGE;
  s->high = (uint32_t)high;
  s->limit = (uint32_t)limit;
  s->drain_cb = drain_cb;
  if (s->queued > high)
    s->flags |= AX__S_ABOVE_HIGH;
  return 0;
}

int ax_stream_set_write_timeout(ax_stream_t *s, uint64_t ms) {
  if (s == NULL || (s->flags & AX__S_CLOSING))
    return -EINVAL;
  if (ms > UINT32_MAX)
    return -ERANGE;
  s->wtimeout_ms = (uint32_t)ms;
  deadline_update(s);
  return 0;
}

/* ---- close and detach --------------------------------------------------- */

static void ext_release(ax_stream_t *s) {
  struct ax__sext *e = s->ext;
  if (e == NULL)
    return;
  frames_clear(s);
  ax__chain_fini(&e->rchain);
  ax__chain_fini(&e->wchain);
  ax__free(s->loop, e);
  s->ext = NULL;
}

/* From the reaper, after the close callback. */
void ax__stream_free(ax_stream_t *s) {
  ext_release(s);
  ax_buflist_clear(&s->wq);
  ax__stream_slot_free(s->loop->px, s);
}

void ax__stream_released(ax_stream_t *s) {
  struct ax__px *px = s->loop->px;
  if (s->fd >= 0)
    close(s->fd);
  s->fd = -1;
  ax__list_unlink(&s->link);
  ax__list_append(&px->done, &s->link);
  ax__px_kick(px);
}

int ax_stream_close(ax_stream_t *s, ax_close_cb cb) {
  struct ax__px *px;
  if (s == NULL)
    return -EINVAL;
  if (s->flags & AX__S_CLOSING)
    return -EALREADY;
  px = s->loop->px;
  if (s->flags & AX__S_SPLICING)
    ax__splice_abort(s);
  s->flags |= AX__S_CLOSING;
  s->flags &= ~AX__S_READING;
  s->close_cb = cb;
  queue_fail(s, -ECANCELED);
  /* The extension (filters, frames) is freed with the stream: a filter
   * may be running right now, below the callback closing it. */
  frames_clear(s);
  timer_drop(s);
  ax__list_unlink(&s->link);
  ax__list_append(&px->closing, &s->link);
  px->nstreams--;
  ax__sdrv(s)->close(s); /* ax__stream_released, now or later */
  ax__px_kick(px);
  return 0;
}

int ax_stream_detach(ax_stream_t *s, int *fd) {
  struct ax__px *px;
  int r;
  if (s == NULL || fd == NULL || (s->flags & AX__S_CLOSING))
    return -EINVAL;
  if (s->wq_head || (s->flags & (AX__S_SPLICING | AX__S_CONNECTING)) ||
      (s->flags & AX__S_OWED) ||
      (s->ext && (!ax__chain_empty(&s->ext->rchain) ||
                  !ax__chain_empty(&s->ext->wchain) || s->ext->fn > 0)))
    return -EBUSY;
  if ((r = ax__sdrv(s)->detach(s)) < 0)
    return r;
  px = s->loop->px;
  *fd = s->fd;
  s->fd = -1;
  s->flags |= AX__S_CLOSING;
  s->close_cb = NULL;
  ax_buflist_clear(&s->wq);
  ax__list_unlink(&s->link);
  px->nstreams--;
  /* Freed by the reaper like a closed stream, without a callback. */
  ax__list_append(&px->done, &s->link);
  ax__px_kick(px);
  return 0;
}

/* From ax_loop_free: close what users left open. */
static void streams_fini(struct ax__px *px) {
  while (!ax__list_empty(&px->streams)) {
    ax_stream_t *s =
        ax__container_of(px->streams.next, struct ax_stream, link);
    ax_stream_close(s, NULL);
  }
}

/* ---- accessors ---------------------------------------------------------- */

int ax_stream_fd(const ax_stream_t *s) { return s ? s->fd : -EINVAL; }
ax_loop_t *ax_stream_loop(const ax_stream_t *s) { return s ? s->loop : NULL; }
void *ax_stream_data(const ax_stream_t *s) { return s ? s->ud : NULL; }
void ax_stream_set_data(ax_stream_t *s, void *ud) {
  if (s)
    s->ud = ud;
}

int ax_stream_nodelay(ax_stream_t *s, bool on) {
  int v = on;
  if (s == NULL || s->fd < 0)
    return -EINVAL;
  if (!(s->flags & AX__S_TCP))
    return -ENOTSUP;
  if (setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &v, sizeof(v)) < 0)
    return -errno;
  return 0;
}

static int name_of(const ax_stream_t *s, ax_addr_t *out, bool peer) {
  socklen_t len = sizeof(out->u);
  int r;
  if (s == NULL || out == NULL || s->fd < 0)
    return -EINVAL;
  memset(out, 0, sizeof(*out));
  r = peer ? getpeername(s->fd, &out->u.sa, &len)
           : getsockname(s->fd, &out->u.sa, &len);
  if (r < 0)
    return -errno;
  out->len = len;
  return 0;
}

int ax_stream_sockname(const ax_stream_t *s, ax_addr_t *out) {
  return name_of(s, out, false);
}

int ax_stream_peername(const ax_stream_t *s, ax_addr_t *out) {
  return name_of(s, out, true);
}

int ax_stream_stats(const ax_stream_t *s, ax_stream_stats_t *out) {
  if (s == NULL || out == NULL)
    return -EINVAL;
  memset(out, 0, sizeof(*out));
  out->bytes_read = s->bytes_read;
  out->bytes_written = s->bytes_written;
  return 0;
}

struct ax__chain *ax__stream_chain(ax_stream_t *s, int chain) {
  struct ax__sext *e;
  if (chain != AX_FILTER_READ && chain != AX_FILTER_WRITE)
    return NULL;
  if ((e = ax__stream_ext(s)) == NULL)
    return NULL;
  if (chain == AX_FILTER_READ) {
    if (e->rchain.sink == NULL)
      ax__chain_init(&e->rchain, s->loop, deliver, s);
    return &e->rchain;
  }
  if (e->wchain.sink == NULL)
    ax__chain_init(&e->wchain, s->loop, wq_sink, s);
  return &e->wchain;
}
