/*
 * ax_splice: socket to socket through a kernel pipe, without user space.
 *
 * Bytes go from @from into the pipe (splice 1) and from the pipe into @to
 * (splice 2). Each side moves when its fd is ready: @from is waited on for
 * readability while the pipe has room and @from has not ended, @to for
 * writability while the pipe holds bytes. So a slow @to fills the pipe and
 * reading @from stops (backpressure), and every partial move continues where
 * it stopped. The streams' own drivers do the waiting (see proactor_int.h),
 * so a stream can be the source of one splice and the sink of another at the
 * same time: a proxy runs one splice each way over the same two streams.
 */
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "proactor/proactor_int.h"

struct ax__splice {
  ax_stream_t *from, *to;
  int pipe[2];
  size_t inpipe;   /* bytes in the pipe */
  size_t cap;      /* pipe capacity */
  uint64_t bytes;  /* bytes written to @to */
  ax_splice_cb cb;
  void *ud;
  int status;      /* final status, once ended */
  bool from_eof;
};

static void splice_end(struct ax__splice *sp, int status, bool defer);

static bool needs(const ax_stream_t *s, const struct ax__splice *sp) {
  return sp != NULL && sp->status == 0 && s != NULL;
}

unsigned ax__splice_interest(const ax_stream_t *s) {
  unsigned want = 0;
  const struct ax__splice *out = s->ext ? s->ext->sp_out : NULL;
  const struct ax__splice *in = s->ext ? s->ext->sp_in : NULL;
  if (needs(s, out) && !out->from_eof && out->inpipe < out->cap)
    want |= AX_READABLE;
  if (needs(s, in) && in->inpipe > 0)
    want |= AX_WRITABLE;
  return want;
}

static void refresh(struct ax__splice *sp) {
  ax__sdrv(sp->from)->flush(sp->from);
  ax__sdrv(sp->to)->flush(sp->to);
}

/* Pipe → @to. Returns false when the splice ended. */
static bool drain_pipe(struct ax__splice *sp) {
  while (sp->inpipe > 0) {
    ssize_t n = splice(sp->pipe[0], NULL, sp->to->fd, NULL, sp->inpipe,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return true;
    if (n <= 0) {
      splice_end(sp, n < 0 ? -errno : -EPIPE, false);
      return false;
    }
    sp->inpipe -= (size_t)n;
    sp->bytes += (uint64_t)n;
    sp->to->bytes_written += (uint64_t)n;
    ax__px_count(&sp->to->loop->px_bytes_out, (uint64_t)n);
  }
  if (sp->from_eof) {
    splice_end(sp, AX_EOF, false);
    return false;
  }
  return true;
}

/* @from → pipe, then on to @to at once (the usual case: @to is writable).
 * Returns false when the splice ended (and @sp is gone). */
static bool fill_pipe(struct ax__splice *sp) {
  while (!sp->from_eof && sp->inpipe < sp->cap) {
    ssize_t n = splice(sp->from->fd, NULL, sp->pipe[1], NULL,
                       sp->cap - sp->inpipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      break;
    if (n < 0) {
      splice_end(sp, -errno, false);
      return false;
    }
    if (n == 0) {
      sp->from_eof = true;
      break;
    }
    sp->inpipe += (size_t)n;
    sp->from->bytes_read += (uint64_t)n;
    ax__px_count(&sp->from->loop->px_bytes_in, (uint64_t)n);
    if (!drain_pipe(sp))
      return false;
  }
  if (sp->from_eof)
    return drain_pipe(sp); /* ends the splice once the pipe is empty */
  return true;
}

void ax__splice_ready(ax_stream_t *s, unsigned revents) {
  struct ax__splice *out = s->ext ? s->ext->sp_out : NULL;
  struct ax__splice *in = s->ext ? s->ext->sp_in : NULL;
  /* Error and hang-up bits wake both directions: the system call then
   * says what happened. */
  if (in && (revents & (AX_WRITABLE | AX_ERROR | AX_HANGUP)) &&
      in->inpipe > 0 && drain_pipe(in))
    refresh(in);
  /* @s may be closed by the callback of the splice just ended: re-read. */
  out = (s->flags & AX__S_CLOSING) || !s->ext ? NULL : s->ext->sp_out;
  if (out && (revents & (AX_READABLE | AX_ERROR | AX_HANGUP))) {
    if (fill_pipe(out)) /* an ended splice's memory is gone */
      refresh(out);
  }
}

/* The final callback, from the reaper when the end was asked for inside an
 * API call (stop, close), so that it runs before any close callback. */
static void ended_cb(ax_stream_t *s, int status, void *ud) {
  struct ax__splice *sp = ud;
  (void)s;
  (void)status;
  sp->cb(sp->from, sp->to, sp->status, sp->bytes, sp->ud);
  ax__free(sp->from->loop, sp);
}

static void splice_end(struct ax__splice *sp, int status, bool defer) {
  ax_stream_t *from = sp->from, *to = sp->to;
  sp->status = status;
  close(sp->pipe[0]);
  close(sp->pipe[1]);
  from->ext->sp_out = NULL;
  to->ext->sp_in = NULL;
  from->flags &= ~AX__S_SPLICE_FROM;
  to->flags &= ~AX__S_SPLICE_TO;
  if (!(from->flags & AX__S_CLOSING))
    ax__sdrv(from)->flush(from);
  if (!(to->flags & AX__S_CLOSING))
    ax__sdrv(to)->flush(to);
  if (defer) {
    if (ax__px_complete(from->loop->px, from, ended_cb, sp, status) == 0)
      return;
  }
  ended_cb(from, status, sp); /* no memory to defer it: run it now */
}

void ax__splice_abort(ax_stream_t *s) {
  if (s->ext && s->ext->sp_out)
    splice_end(s->ext->sp_out, -ECANCELED, true);
  if (s->ext && s->ext->sp_in)
    splice_end(s->ext->sp_in, -ECANCELED, true);
}

int ax_splice_stop(ax_stream_t *from) {
  if (from == NULL || (from->flags & AX__S_CLOSING))
    return -EINVAL;
  if (!(from->flags & AX__S_SPLICE_FROM))
    return -EALREADY;
  splice_end(from->ext->sp_out, -ECANCELED, true);
  return 0;
}

int ax_splice(ax_stream_t *from, ax_stream_t *to, ax_splice_cb cb, void *ud) {
  struct ax__splice *sp;
  int r, cap;
  if (from == NULL || to == NULL || cb == NULL || from == to ||
      from->loop != to->loop ||
      ((from->flags | to->flags) & (AX__S_CLOSING | AX__S_FAILED)))
    return -EINVAL;
  if ((from->flags & (AX__S_READING | AX__S_SPLICE_FROM | AX__S_EOF |
                      AX__S_CONNECTING)) ||
      (to->flags & (AX__S_SPLICE_TO | AX__S_SHUT | AX__S_CONNECTING)) ||
      to->wq_head != NULL)
    return -EBUSY;
  if (ax__stream_ext(from) == NULL || ax__stream_ext(to) == NULL)
    return -ENOMEM;
  if (!ax__chain_empty(&from->ext->rchain) ||
      !ax__chain_empty(&to->ext->wchain))
    return -EINVAL; /* the bytes never reach user space */
  if ((sp = ax__alloc(from->loop, sizeof(*sp))) == NULL)
    return -ENOMEM;
  memset(sp, 0, sizeof(*sp));
  if (pipe2(sp->pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
    r = -errno;
    ax__free(from->loop, sp);
    return r;
  }
  cap = fcntl(sp->pipe[0], F_GETPIPE_SZ);
  sp->cap = cap > 0 ? (size_t)cap : 65536;
  sp->from = from;
  sp->to = to;
  sp->cb = cb;
  sp->ud = ud;
  from->ext->sp_out = sp;
  to->ext->sp_in = sp;
  from->flags |= AX__S_SPLICE_FROM;
  to->flags |= AX__S_SPLICE_TO;
  refresh(sp);
  return 0;
}
