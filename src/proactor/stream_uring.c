#ifdef AX_HAVE_URING
/*
 * The native io_uring stream driver: the kernel reads and writes, the loop
 * gets completions (struct ax__uop, dispatched after the wait).
 *
 * - Reads are one multishot recv per reading stream, into a provided buffer
 *   ring shared by the loop's streams (BUF_COUNT x BUF_SIZE, group BGID).
 *   A completion names the buffer; its bytes are wrapped as an ax_buf_t
 *   and the buffer goes back into the ring when its last slice is
 *   released. An idle stream holds no buffer: the kernel picks one only
 *   when data is there (an attempt at arm time that finds nothing takes
 *   none; POLL_FIRST is not used: see recv_start).
 * - With incremental consumption (6.12, IOU_PBUF_RING_INC) a recv takes
 *   only the bytes it needs from the buffer at the ring's head, so 64-byte
 *   messages on a thousand connections share a few buffers instead of
 *   needing a thousand; IORING_CQE_F_BUF_MORE says the kernel will go on
 *   filling that buffer, and it goes back only once the kernel is done and
 *   every slice of it is released. Older kernels consume whole buffers.
 * - A recv that finds the ring empty ends with -ENOBUFS. The stream is
 *   listed and looked at in the deferred phase of the same iteration, after
 *   every completion of the wait was handled (and its buffer most likely
 *   returned): if the ring has buffers again it is re-armed; if users hold
 *   every buffer past their callbacks (a filter waiting for the rest of a
 *   big frame may), one read goes into a buffer of the loop's pool instead,
 *   as the readiness driver reads, so that no stream waits for buffers only
 *   it could free. -ENOBUFS needs data waiting, so each round moves bytes:
 *   nothing spins.
 * - read_stop cancels the recv, but completions already posted still come.
 *   Their data (and an EOF or error after it) is held and delivered in order
 *   when reading starts again, from the deferred phase (never inside
 *   ax_stream_read_start).
 * - Writes: one send (one slice) or sendmsg (several) of the head run of the
 *   queue at a time, MSG_NOSIGNAL, holding a reference to each buffer it
 *   points into: a close or an error empties the queue while the kernel may
 *   still be reading them. File ranges and shutdown are done by the shared
 *   write step (sendfile, shutdown(2): neither blocks) when they reach the
 *   head, with a poll for writability when the socket is full.
 * - Connect and splices wait with one-shot polls (splice.c moves the bytes).
 * - The kernel does not cancel requests when an fd is closed, and holds the
 *   file while one is pending (the peer would see no EOF). So close cancels
 *   every operation of the stream and closes the fd only once each has
 *   posted its last completion.
 * - Every live operation holds the loop (ax__loop_hold), as an active I/O
 *   source would.
 * - Streams that are not sockets (pipes, ttys) use the readiness driver on
 *   the same ring: recv, send and multishot recv need a socket, and such
 *   streams are rare where the native path pays (servers).
 * - The ring is replaced when the loop is run by another thread (uring.c,
 *   ring_move): what the old ring had posted is recorded, every other
 *   operation gets a final -ECANCELED (ur_moved), and the handlers re-arm
 *   what is still wanted. A send cancelled before it ran moved no byte, so
 *   it is simply sent again. The buffer ring is registered with the new
 *   ring, holding every buffer that is not out.
 * - Loop free: px.c's fini runs before the backend's, while the kernel may
 *   still write into the buffers and read the sends' memory. Streams still
 *   closing are released at once; the memory the kernel may touch (buffers,
 *   the ring, sends in flight) is freed by uring.c's fini after the ring is
 *   torn down (loop->uring_gone). Like every buffer made through a loop's
 *   hooks (buf.h), read buffers must be released before ax_loop_free.
 *
 * Memory per idle reading stream: struct ax_stream (184 bytes) + struct ns
 * (40). The loop's ring: BUF_COUNT x BUF_SIZE (4 MiB of address space; pages
 * are touched as data lands) + 4 KiB of ring entries.
 */
#include <liburing.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "loop/pollbits.h"
#include "proactor/proactor_int.h"

#define BUF_COUNT 256u           /* buffers in the ring: a power of two */
#define BUF_SIZE (16u * 1024)    /* as the readiness driver's pool */
#define BGID 1                   /* buffer group of stream reads */
#define IOV_BATCH 16             /* slices per sendmsg */
#define WCTX_KEEP 64             /* send contexts kept for reuse */
#define PAGE 4096u

/* s->drv_state. *_LIVE: the operation is in the kernel (one at most of
 * each kind); *_CANCEL: its cancel was queued, or it has ended. */
enum {
  R_LIVE = 0x0001,    /* ns.rop: multishot recv */
  R_CANCEL = 0x0002,
  W_LIVE = 0x0004,    /* ns.w: send, sendmsg or a poll for writability */
  P_LIVE = 0x0008,    /* ns.pop: poll for a connect or a splice */
  P_CANCEL = 0x0010,
  P_CONNECT = 0x0020,
  P_RD = 0x0040,      /* the splice poll waits for AX_READABLE */
  P_WR = 0x0080,      /* ... for AX_WRITABLE */
  T_LISTED = 0x0100,  /* in ur.todo */
  T_STARVED = 0x0200, /* recv ended with -ENOBUFS */
  T_HELD = 0x0400,    /* held completions to deliver */
  Q_R = 0x1000,       /* ur_moved: a final completion is recorded */
  Q_W = 0x2000,
  Q_P = 0x4000
};
#define LIVE (R_LIVE | W_LIVE | P_LIVE)
_Static_assert(Q_P <= UINT16_MAX, "the state fits s->drv_state");

/* Incremental consumption (6.12): a recv takes only what it needs of the
 * buffer at the ring's head, and the CQE says when the kernel is not done
 * with the buffer. Not in liburing 2.3's headers. */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif

/* Buffer states. */
enum {
  B_RING, /* in the kernel's ring (maybe partly consumed already) */
  B_PEND, /* ring_move: a recorded completion ends the kernel's use */
  B_OUT   /* the kernel is done with it; users hold slices of it */
};

/* One buffer: completions take consecutive pieces of it (one piece, the
 * whole buffer, without incremental consumption); it goes back into the
 * ring once the kernel is done with it and no slice of it is held. */
struct bst {
  uint32_t off;   /* bytes the kernel has filled, as completions said */
  uint32_t pend;  /* ring_move: bytes named by recorded completions */
  uint16_t users; /* slices of it delivered and not yet released */
  uint8_t state;
};

/* Completions that came while the user was not reading, and how the read
 * side ended after them (0, AX_EOF or an error). */
struct held {
  ax_buflist_t q;
  int end;
};

/* A write in the kernel: the iovecs and msghdr must stay put until the
 * SQE is submitted (at the next wait), and the buffers until it ends. */
struct wctx {
  struct ax__uop op;
  ax_stream_t *s;     /* NULL once the stream is gone (loop free) */
  struct wctx *next;  /* free list, or the list of the dead */
  bool poll;          /* a poll for writability, not a send */
  uint8_t nbuf;
  struct msghdr msg;
  ax_buf_t *buf[IOV_BATCH];
  struct iovec iov[IOV_BATCH];
};

/* Per stream (s->drv_data). A stream detached while its recv or poll was
 * being cancelled leaves this behind, with @s NULL, until they end. */
struct ns {
  struct ax__uop rop;  /* recv */
  struct ax__uop pop;  /* poll: connect, splice */
  ax_stream_t *s;      /* NULL: detached */
  union {
    struct wctx *w;    /* the write in flight */
    unsigned zlive;    /* detached: operations still in the kernel */
  };
  struct held *held;   /* NULL but after a read_stop with data in flight */
};

_Static_assert(sizeof(struct ns) == 40, "per-stream state stays small");

/* Per loop (px->uring). */
struct ur {
  ax_loop_t *loop;
  struct ax__px *px;
  struct io_uring_buf_ring *br; /* page-aligned inside br_mem */
  void *br_mem;
  char *mem;                    /* the buffers */
  struct bst *b;                /* per buffer */
  unsigned in_ring;             /* buffers in state B_RING */
  unsigned held;                /* buffers users hold slices of */
  bool ring_ok;                 /* the buffer ring is registered */
  bool inc;                     /* ... with incremental consumption */
  bool dead;                    /* px fini ran: the ring is going away */
  ax_source_t *kick;            /* defer: runs todo */
  ax_stream_t **todo;
  size_t ntodo, todocap;
  struct wctx *wfree, *dead_w;  /* free list; writes in flight at loop free */
  unsigned nwfree;
  struct ns **zomb;             /* detached, operations still in the kernel */
  size_t nzomb, zombcap;
  struct ax__uop ignore;        /* cancels' own completions */
};

static void recv_done(ax_loop_t *loop, struct ax__uop *op, int res,
                      uint32_t flags);
static void w_done(ax_loop_t *loop, struct ax__uop *op, int res,
                   uint32_t flags);
static void p_done(ax_loop_t *loop, struct ax__uop *op, int res,
                   uint32_t flags);
static void w_next(ax_stream_t *s);
static void maybe_release(ax_stream_t *s);
static void zombie_done(struct ur *ur, struct ns *n, int res, uint32_t flags);

static struct ur *ur_of(ax_loop_t *loop) {
  return ((struct ax__px *)loop->px)->uring;
}

static struct ns *ns_of(const ax_stream_t *s) { return s->drv_data; }

/* An operation entered or left the kernel: it keeps the loop alive. */
static void live_set(ax_stream_t *s, uint32_t bit) {
  s->drv_state |= bit;
  ax__loop_hold(s->loop);
}

static void live_clr(ax_stream_t *s, uint32_t bit) {
  assert(s->drv_state & bit);
  s->drv_state &= ~bit;
  ax__loop_release(s->loop);
}

/* Queue a cancel of @op; false when no SQE could be had. */
static bool cancel(ax_stream_t *s, struct ax__uop *op) {
  struct ur *ur = ur_of(s->loop);
  struct io_uring_sqe *sqe = ax__uring_sqe(s->loop, &ur->ignore);
  if (sqe == NULL)
    return false;
  io_uring_prep_cancel64(sqe, ax__uring_ud(op), 0);
  return true;
}

static void ignore_done(ax_loop_t *loop, struct ax__uop *op, int res,
                        uint32_t flags) {
  (void)loop, (void)op, (void)res, (void)flags;
}

/* ---- the buffer ring ---------------------------------------------------- */

static char *buf_at(const struct ur *ur, unsigned bid) {
  return ur->mem + (size_t)bid * BUF_SIZE;
}

/* The rest of buffer @bid, from @off, as entry @k past the tail. */
static void ring_add(struct ur *ur, unsigned bid, uint32_t off, int k) {
  io_uring_buf_ring_add(ur->br, buf_at(ur, bid) + off, BUF_SIZE - off,
                        (unsigned short)bid,
                        io_uring_buf_ring_mask(BUF_COUNT), k);
}

/* Back into the ring, whole, if the kernel and the users are done. */
static void buf_recycle(struct ur *ur, unsigned bid) {
  struct bst *b = &ur->b[bid];
  if (b->state != B_OUT || b->users > 0)
    return;
  b->state = B_RING;
  b->off = 0;
  ur->in_ring++;
  if (!ur->dead) {
    ring_add(ur, bid, 0, 0);
    io_uring_buf_ring_advance(ur->br, 1); /* store-release of the tail */
  }
}

/* A slice's last reference went (ax_buf_wrap's free function). */
static void buf_back(void *data, void *ctx) {
  struct ur *ur = ctx;
  unsigned bid = (unsigned)(((char *)data - ur->mem) / BUF_SIZE);
  struct bst *b = &ur->b[bid];
  assert(bid < BUF_COUNT && b->users > 0); /* data is one of ours */
  if (--b->users == 0)
    ur->held--;
  buf_recycle(ur, bid);
}

/* A completion named buffer @bid: @res bytes were put at its current
 * offset (returned, NULL if none), and unless @more the kernel is done
 * with it. The caller owns one use of the bytes until buf_back. NULL for
 * an id the kernel should not have named (never, unless it misbehaves). */
static char *buf_take(struct ur *ur, unsigned bid, int res, bool more) {
  struct bst *b;
  char *p = NULL;
  if (bid >= BUF_COUNT || (b = &ur->b[bid])->state == B_OUT)
    return NULL;
  if (res > 0) {
    p = buf_at(ur, bid) + b->off;
    b->off += (uint32_t)res;
    b->pend -= b->pend < (uint32_t)res ? b->pend : (uint32_t)res;
    if (b->users++ == 0)
      ur->held++;
    /* A completion without bytes says nothing of the buffer's end (the
     * kernel put it back, unconsumed). */
    if (!more) {
      if (b->state == B_RING)
        ur->in_ring--;
      b->state = B_OUT;
    }
  }
  return p;
}

/* Fill the ring with what the kernel may still use of every buffer and
 * register it with the loop's current ring: with incremental consumption
 * if the kernel has it, else whole buffers. */
static int ring_register(struct ur *ur) {
  struct io_uring_buf_reg reg;
  int k = 0, r;
  io_uring_buf_ring_init(ur->br);
  for (unsigned bid = 0; bid < BUF_COUNT; bid++) {
    struct bst *b = &ur->b[bid];
    if (b->state == B_RING && b->off + b->pend < BUF_SIZE)
      ring_add(ur, bid, b->off + b->pend, k++);
  }
  io_uring_buf_ring_advance(ur->br, k);
  memset(&reg, 0, sizeof(reg));
  reg.ring_addr = (uint64_t)(uintptr_t)ur->br;
  reg.ring_entries = BUF_COUNT;
  reg.bgid = BGID;
  reg.pad = ur->inc ? IOU_PBUF_RING_INC : 0; /* "flags" in newer headers */
  r = io_uring_register_buf_ring(ax__uring(ur->loop), &reg, 0);
  if (r == -EINVAL && ur->inc) {
    ur->inc = false;
    return ring_register(ur);
  }
  return r;
}

/* ---- work for the deferred phase ---------------------------------------- */

static int todo_add(ax_stream_t *s, uint32_t why) {
  struct ur *ur = ur_of(s->loop);
  if (!(s->drv_state & T_LISTED)) {
    if (ur->ntodo == ur->todocap) {
      size_t ncap = ur->todocap ? ur->todocap * 2 : 16;
      ax_stream_t **v = ax__realloc(s->loop, ur->todo, ncap * sizeof(*v));
      if (v == NULL)
        return -ENOMEM;
      ur->todo = v;
      ur->todocap = ncap;
    }
    ur->todo[ur->ntodo++] = s;
    s->drv_state |= T_LISTED;
  }
  s->drv_state |= why;
  ax_defer_start(ur->kick); /* cannot fail on an existing defer */
  return 0;
}

/* The stream goes: its entry must not outlive it. Rare (a close between
 * the completion and the deferred phase), so a scan does. */
static void todo_forget(ax_stream_t *s) {
  struct ur *ur = ur_of(s->loop);
  if (!(s->drv_state & T_LISTED))
    return;
  for (size_t i = 0; i < ur->ntodo; i++)
    if (ur->todo[i] == s)
      ur->todo[i] = NULL;
  s->drv_state &= ~(T_LISTED | T_STARVED | T_HELD);
}

/* ---- reading ------------------------------------------------------------ */

static void held_free(ax_stream_t *s) {
  struct ns *n = ns_of(s);
  if (n->held == NULL)
    return;
  ax_buflist_clear(&n->held->q);
  ax__free(s->loop, n->held);
  n->held = NULL;
}

static struct held *held_get(ax_stream_t *s) {
  struct ns *n = ns_of(s);
  if (n->held == NULL && (n->held = ax__alloc(s->loop, sizeof(*n->held)))) {
    ax_buflist_init(&n->held->q, s->loop);
    n->held->end = 0;
  }
  return n->held;
}

/* The user reads and nothing is owed before new data. */
static bool reading_now(const ax_stream_t *s) {
  return (s->flags & (AX__S_READING | AX__S_CLOSING | AX__S_FAILED |
                      AX__S_EOF)) == AX__S_READING &&
         ns_of(s)->held == NULL;
}

static void end_now(ax_stream_t *s, int end) {
  if (end == AX_EOF)
    ax__stream_on_eof(s);
  else
    ax__stream_fail(s, end);
}

/* @sl holds the caller's reference. */
static void got_data(ax_stream_t *s, ax_slice_t sl) {
  struct held *h;
  if (s->flags & (AX__S_CLOSING | AX__S_FAILED | AX__S_EOF))
    return;
  if (reading_now(s))
    ax__stream_on_data(s, sl);
  else if ((h = held_get(s)) == NULL || ax_buflist_push(&h->q, sl) < 0)
    ax__stream_fail(s, -ENOMEM); /* bytes lost: the stream cannot go on */
}

/* The read side ended: EOF or an error, after whatever is held. */
static void got_end(ax_stream_t *s, int end) {
  struct ns *n = ns_of(s);
  if (s->flags & (AX__S_CLOSING | AX__S_FAILED | AX__S_EOF))
    return;
  if (n->held == NULL)
    end_now(s, end);
  else if (n->held->end == 0)
    n->held->end = end;
}

static void got_buffer(ax_stream_t *s, struct ur *ur, char *p, int res) {
  ax_buf_t *b;
  if (s->flags & (AX__S_CLOSING | AX__S_FAILED | AX__S_EOF)) {
    buf_back(p, ur);
    return;
  }
  if (ax_buf_wrap(s->loop, p, (size_t)res, buf_back, ur, &b) < 0) {
    buf_back(p, ur);
    ax__stream_fail(s, -ENOMEM);
    return;
  }
  got_data(s, (ax_slice_t){.buf = b, .off = 0, .len = (uint32_t)res});
  ax_buf_unref(b);
}

static int recv_start(ax_stream_t *s) {
  struct io_uring_sqe *sqe = ax__uring_sqe(s->loop, &ns_of(s)->rop);
  if (sqe == NULL)
    return -EBUSY;
  io_uring_prep_recv_multishot(sqe, s->fd, NULL, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = BGID;
  /* No IORING_RECVSEND_POLL_FIRST: with it, on 6.18, a multishot recv
   * armed on a socket whose data and EOF both arrived already delivers the
   * data and never the EOF (tests/test_stream.c, test_filter_lenprefix:
   * a hang). A buffer is only taken when data is there either way. */
  live_set(s, R_LIVE);
  return 0;
}

/* Arm the recv if the user reads and nothing stands in the way. */
static void recv_resume(ax_stream_t *s) {
  int r;
  if ((s->drv_state & (R_LIVE | T_STARVED)) || ns_of(s)->held != NULL ||
      !ax__stream_wants_read(s))
    return;
  if ((r = recv_start(s)) < 0)
    ax__stream_fail(s, r);
}

static void recv_done(ax_loop_t *loop, struct ax__uop *op, int res,
                      uint32_t flags) {
  struct ns *n = ax__container_of(op, struct ns, rop);
  ax_stream_t *s = n->s;
  struct ur *ur = ur_of(loop);
  bool more = flags & IORING_CQE_F_MORE;
  char *p = NULL;
  if (s == NULL) {
    zombie_done(ur, n, res, flags);
    return;
  }
  /* Still live while the user runs (a close then cannot release the
   * stream under us), but nothing left to cancel if this is the last. */
  if (!more)
    s->drv_state |= R_CANCEL;
  if (flags & IORING_CQE_F_BUFFER)
    p = buf_take(ur, flags >> IORING_CQE_BUFFER_SHIFT, res,
                 flags & IORING_CQE_F_BUF_MORE);
  if (res > 0 && p != NULL) {
    got_buffer(s, ur, p, res);
  } else if (res > 0) {
    ax__stream_fail(s, -EIO); /* bytes in no buffer of ours: a gap */
  } else {
    if (res == 0)
      got_end(s, AX_EOF);
    else if (res == -ENOBUFS && !(s->flags & AX__S_CLOSING) &&
             todo_add(s, T_STARVED) < 0)
      ax__stream_fail(s, -ENOMEM);
    else if (res < 0 && res != -ENOBUFS && res != -ECANCELED)
      got_end(s, res);
  }
  if (more)
    return;
  s->drv_state &= ~R_CANCEL;
  live_clr(s, R_LIVE);
  if (s->flags & AX__S_CLOSING)
    maybe_release(s);
  else if (!(s->drv_state & T_STARVED))
    recv_resume(s);
}

/* Every buffer is held by users past their callbacks: one read into a
 * buffer of the loop's pool, so that the stream moves on without them. */
static void read_fallback(ax_stream_t *s) {
  ax_bufpool_t *pool = ax_loop_bufpool(s->loop);
  ax_buf_t *b;
  ssize_t n;
  if (pool == NULL || ax_bufpool_get(pool, &b) < 0) {
    ax__stream_fail(s, -ENOMEM);
    return;
  }
  do
    n = recv(s->fd, ax_buf_data(b), ax_buf_cap(b), MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n > 0)
    ax__stream_on_data(s, (ax_slice_t){.buf = b, .len = (uint32_t)n});
  else if (n == 0)
    ax__stream_on_eof(s);
  else if (errno != EAGAIN)
    ax__stream_fail(s, -errno);
  ax_buf_unref(b);
}

/* Reading started again: what was held, in order, then its end. */
static void held_deliver(ax_stream_t *s) {
  for (;;) {
    struct held *h;
    ax_slice_t sl;
    if ((s->flags & (AX__S_READING | AX__S_CLOSING | AX__S_FAILED |
                     AX__S_EOF)) != AX__S_READING ||
        (h = ns_of(s)->held) == NULL)
      return;
    if (ax_buflist_count(&h->q) == 0) {
      int end = h->end;
      held_free(s);
      if (end != 0)
        end_now(s, end);
      return;
    }
    sl = ax_buflist_at(&h->q, 0);
    ax_buf_ref(sl.buf);
    ax_buflist_consume(&h->q, sl.len);
    ax__stream_on_data(s, sl);
    ax_buf_unref(sl.buf);
  }
}

static void todo_run(struct ur *ur, ax_stream_t *s) {
  uint32_t why = s->drv_state & (T_STARVED | T_HELD);
  s->drv_state &= ~why;
  if (ns_of(s)->held != NULL)
    held_deliver(s);
  if (s->flags & AX__S_CLOSING)
    return;
  if ((why & T_STARVED) && (ur->in_ring == 0 || !ur->ring_ok) &&
      !(s->drv_state & R_LIVE) && reading_now(s)) {
    read_fallback(s);
    if (s->flags & AX__S_CLOSING)
      return;
  }
  recv_resume(s);
}

static void kick_cb(ax_source_t *src, void *data) {
  struct ur *ur = data;
  size_t n = ur->ntodo, i, k = 0;
  (void)src;
  for (i = 0; i < n; i++) {
    ax_stream_t *s = ur->todo[i];
    if (s == NULL)
      continue;
    ur->todo[i] = NULL;
    s->drv_state &= ~T_LISTED;
    todo_run(ur, s); /* may list streams again: after n */
  }
  for (; i < ur->ntodo; i++)
    if (ur->todo[i] != NULL)
      ur->todo[k++] = ur->todo[i];
  ur->ntodo = k;
}

/* ---- writing ------------------------------------------------------------ */

static struct wctx *wctx_get(struct ur *ur) {
  struct wctx *w = ur->wfree;
  if (w != NULL) {
    ur->wfree = w->next;
    ur->nwfree--;
  } else if ((w = ax__alloc(ur->loop, sizeof(*w))) == NULL) {
    return NULL;
  }
  w->op.done = w_done;
  w->s = NULL;
  w->next = NULL;
  w->poll = false;
  w->nbuf = 0;
  return w;
}

static void wctx_drop(struct wctx *w) {
  for (int i = 0; i < w->nbuf; i++)
    ax_buf_unref(w->buf[i]);
  w->nbuf = 0;
}

static void wctx_put(struct ur *ur, struct wctx *w) {
  wctx_drop(w);
  if (ur->nwfree >= WCTX_KEEP || ur->dead) {
    ax__free(ur->loop, w);
    return;
  }
  w->next = ur->wfree;
  ur->wfree = w;
  ur->nwfree++;
}

static void w_submit(ax_stream_t *s, struct wctx *w) {
  w->s = s;
  ns_of(s)->w = w;
  live_set(s, W_LIVE);
}

/* The head run of data: one send, or one sendmsg of up to IOV_BATCH
 * slices. */
static void w_send(ax_stream_t *s) {
  struct ur *ur = ur_of(s->loop);
  uint64_t run = ax__stream_data_run(s), sum = 0;
  struct io_uring_sqe *sqe;
  struct wctx *w;
  int k, i;
  if (run == 0)
    return; /* an empty request ahead of a file range: nothing to send */
  if ((w = wctx_get(ur)) == NULL) {
    ax__stream_fail(s, -ENOMEM);
    return;
  }
  k = ax_buflist_iov(&s->wq, w->iov, IOV_BATCH);
  for (i = 0; i < k && sum < run; i++) {
    if (sum + w->iov[i].iov_len > run)
      w->iov[i].iov_len = (size_t)(run - sum);
    sum += w->iov[i].iov_len;
    w->buf[i] = ax_buf_ref(ax_buflist_at(&s->wq, (size_t)i).buf);
  }
  w->nbuf = (uint8_t)i;
  if ((sqe = ax__uring_sqe(s->loop, &w->op)) == NULL) {
    wctx_put(ur, w);
    ax__stream_fail(s, -EBUSY);
    return;
  }
  if (i == 1) {
    io_uring_prep_send(sqe, s->fd, w->iov[0].iov_base, w->iov[0].iov_len,
                       MSG_NOSIGNAL);
  } else {
    memset(&w->msg, 0, sizeof(w->msg));
    w->msg.msg_iov = w->iov;
    w->msg.msg_iovlen = (size_t)i;
    io_uring_prep_sendmsg(sqe, s->fd, &w->msg, MSG_NOSIGNAL);
  }
  w_submit(s, w);
}

/* Wait until the socket takes more (a file range hit a full socket). */
static void w_poll(ax_stream_t *s) {
  struct ur *ur = ur_of(s->loop);
  struct io_uring_sqe *sqe;
  struct wctx *w;
  if ((w = wctx_get(ur)) == NULL) {
    ax__stream_fail(s, -ENOMEM);
    return;
  }
  if ((sqe = ax__uring_sqe(s->loop, &w->op)) == NULL) {
    wctx_put(ur, w);
    ax__stream_fail(s, -EBUSY);
    return;
  }
  io_uring_prep_poll_add(sqe, s->fd, POLLOUT);
  w->poll = true;
  w_submit(s, w);
}

/* Start the next write unless one is in the kernel. */
static void w_next(ax_stream_t *s) {
  struct ax__wreq *r;
  while ((r = s->wq_head) != NULL) {
    if ((s->flags & (AX__S_CLOSING | AX__S_FAILED | AX__S_CONNECTING)) ||
        (s->drv_state & W_LIVE))
      return;
    if (r->kind == AX__W_DATA) {
      w_send(s);
      return;
    }
    /* A file range or the shutdown: done here (sendfile, shutdown(2)),
     * with whatever data follows, until the socket is full. */
    if (!ax__stream_write_some(s))
      return;
    if (s->wq_head->kind != AX__W_DATA) {
      w_poll(s);
      return;
    }
  }
}

static void w_done(ax_loop_t *loop, struct ax__uop *op, int res,
                   uint32_t flags) {
  struct wctx *w = ax__container_of(op, struct wctx, op);
  ax_stream_t *s = w->s;
  bool poll = w->poll;
  (void)flags;
  wctx_put(ur_of(loop), w);
  ns_of(s)->w = NULL;
  live_clr(s, W_LIVE);
  if (s->flags & AX__S_CLOSING) {
    maybe_release(s);
    return;
  }
  if (s->flags & AX__S_FAILED)
    return;
  /* -ECANCELED: the ring was replaced before the send ran (ur_moved); it
   * moved no byte. A poll's result is for the write step to find out. */
  if (!poll && res >= 0)
    ax__stream_on_written(s, (uint64_t)res);
  else if (!poll && res == -EAGAIN) {
    w_poll(s);
    return;
  } else if (!poll && res != -ECANCELED && res != -EINTR) {
    ax__stream_fail(s, res);
    return;
  }
  w_next(s);
}

/* ---- polls: connect and splice ------------------------------------------ */

static int p_arm(ax_stream_t *s, unsigned pollmask, uint32_t bits) {
  struct io_uring_sqe *sqe = ax__uring_sqe(s->loop, &ns_of(s)->pop);
  if (sqe == NULL)
    return -EBUSY;
  io_uring_prep_poll_add(sqe, s->fd, pollmask);
  live_set(s, P_LIVE);
  s->drv_state |= bits;
  return 0;
}

/* Make the splice poll wait for what the splices need now. */
static void p_sync(ax_stream_t *s) {
  uint32_t st = s->drv_state, want = 0, bits;
  int r;
  if ((s->flags & AX__S_SPLICING) &&
      !(s->flags & (AX__S_CLOSING | AX__S_FAILED)))
    want = ax__splice_interest(s) & (AX_READABLE | AX_WRITABLE);
  bits = (want & AX_READABLE ? P_RD : 0) | (want & AX_WRITABLE ? P_WR : 0);
  if (st & P_LIVE) {
    /* Another interest: end this poll; its completion arms the next. */
    if (!(st & (P_CONNECT | P_CANCEL)) && (st & (P_RD | P_WR)) != bits &&
        cancel(s, &ns_of(s)->pop))
      s->drv_state |= P_CANCEL;
    return;
  }
  if (want != 0 && (r = p_arm(s, ax__to_poll(want), bits)) < 0)
    ax__stream_fail(s, r);
}

static int connect_status(int fd) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    return -errno;
  return -err;
}

static void p_done(ax_loop_t *loop, struct ax__uop *op, int res,
                   uint32_t flags) {
  struct ns *n = ax__container_of(op, struct ns, pop);
  ax_stream_t *s = n->s;
  uint32_t st, want;
  int r;
  if (s == NULL) {
    zombie_done(ur_of(loop), n, res, flags);
    return;
  }
  st = s->drv_state;
  want = (st & P_RD ? AX_READABLE : 0) | (st & P_WR ? AX_WRITABLE : 0);
  s->drv_state &= ~(P_CANCEL | P_CONNECT | P_RD | P_WR);
  live_clr(s, P_LIVE);
  if (s->flags & AX__S_CLOSING) {
    maybe_release(s);
    return;
  }
  if (st & P_CONNECT) {
    if (!(s->flags & AX__S_CONNECTING))
      return; /* the timeout came first */
    if (res == -ECANCELED) { /* the ring was replaced: wait again */
      if ((r = p_arm(s, POLLOUT, P_CONNECT)) < 0)
        ax__stream_on_connect(s, r);
      return;
    }
    ax__stream_on_connect(s, res < 0 ? res : connect_status(s->fd));
    return;
  }
  if (s->flags & AX__S_SPLICING) {
    if (res > 0)
      ax__splice_ready(s, ax__from_poll((unsigned)res, want));
    else if (res < 0 && res != -ECANCELED)
      ax__splice_ready(s, AX_ERROR);
  }
  if (!(s->flags & AX__S_CLOSING))
    p_sync(s);
}

/* ---- close and release -------------------------------------------------- */

static void ns_free(ax_stream_t *s) {
  held_free(s);
  todo_forget(s);
  ax__free(s->loop, s->drv_data);
  s->drv_data = NULL;
  s->drv_state = 0;
}

/* Closing, and the last operation has ended: the fd may go. */
static void maybe_release(ax_stream_t *s) {
  if (s->drv_state & LIVE)
    return;
  ns_free(s);
  ax__stream_released(s);
}

/* ---- the driver --------------------------------------------------------- */

static int ur_attach(ax_stream_t *s) {
  ax_loop_t *loop = s->loop;
  struct ns *n;
  if (!(s->flags & AX__S_SOCKET)) {
    s->flags &= ~AX__S_NATIVE; /* see the top of the file */
    return ax__sdrv_rd.attach(s);
  }
  if (s->fd < loop->fdcap && loop->fdtab[s->fd] != NULL)
    return -EEXIST; /* watched by the loop: as the readiness driver says */
  if ((n = ax__alloc(loop, sizeof(*n))) == NULL)
    return -ENOMEM;
  n->rop.done = recv_done;
  n->pop.done = p_done;
  n->s = s;
  n->w = NULL;
  n->held = NULL;
  s->drv_data = n;
  s->drv_state = 0;
  return 0;
}

static int ur_read_start(ax_stream_t *s) {
  int r;
  if (ns_of(s)->held != NULL)
    return todo_add(s, T_HELD); /* delivered from the deferred phase */
  if ((s->drv_state & (R_LIVE | T_STARVED)) || !ax__stream_wants_read(s))
    return 0; /* a recv being cancelled is re-armed when it ends */
  if ((r = recv_start(s)) < 0)
    ax__stream_fail(s, r);
  return r;
}

static void ur_read_stop(ax_stream_t *s) {
  if ((s->drv_state & (R_LIVE | R_CANCEL)) == R_LIVE &&
      cancel(s, &ns_of(s)->rop))
    s->drv_state |= R_CANCEL;
  if (s->flags & (AX__S_FAILED | AX__S_CLOSING))
    held_free(s);
}

static void ur_flush(ax_stream_t *s) {
  if (s->flags & AX__S_CLOSING)
    return;
  p_sync(s);
  w_next(s);
}

static int ur_connect_wait(ax_stream_t *s) {
  return p_arm(s, POLLOUT, P_CONNECT);
}

static void ur_close(ax_stream_t *s) {
  struct ns *n = ns_of(s);
  uint32_t st = s->drv_state;
  bool stuck = false;
  held_free(s);
  todo_forget(s);
  if ((st & (R_LIVE | R_CANCEL)) == R_LIVE) {
    stuck |= !cancel(s, &n->rop);
    s->drv_state |= R_CANCEL;
  }
  if (st & W_LIVE)
    stuck |= !cancel(s, &n->w->op);
  if ((st & (P_LIVE | P_CANCEL)) == P_LIVE) {
    stuck |= !cancel(s, &n->pop);
    s->drv_state |= P_CANCEL;
  }
  /* No SQE for a cancel: a shutdown ends whatever waits on the socket. */
  if (stuck)
    shutdown(s->fd, SHUT_RDWR);
  maybe_release(s);
}

/* Whether a completion of @op with bytes is posted and not dispatched yet:
 * in the CQ, or recorded and still to come in this dispatch. */
static bool data_pending(ax_loop_t *loop, const struct ax__uop *op) {
  struct io_uring_cqe *cqe;
  unsigned head;
  uint64_t ud = ax__uring_ud(op);
  for (size_t i = loop->ucq_next; i < loop->nucq; i++)
    if (loop->ucq[i].op == op && loop->ucq[i].res > 0)
      return true;
  io_uring_for_each_cqe(ax__uring(loop), head, cqe) {
    if (cqe->user_data == ud && cqe->res > 0)
      return true;
  }
  return false;
}

/* Detached with a recv or a poll still in the kernel (the common case
 * right after read_stop): their cancels are submitted now, and as a
 * cancelled recv takes nothing more from the socket, the fd can go at once
 * if no completion with bytes is waiting to be delivered. The per-stream
 * state stays until the operations end (zombie_done). */
static int detach_live(ax_stream_t *s) {
  struct ur *ur = ur_of(s->loop);
  struct ns *n = ns_of(s);
  uint32_t st = s->drv_state;
  if (((st & (R_LIVE | R_CANCEL)) == R_LIVE && !cancel(s, &n->rop)) ||
      ((st & (P_LIVE | P_CANCEL)) == P_LIVE && !cancel(s, &n->pop)))
    return -EBUSY; /* no SQE: the next try may get one */
  s->drv_state |= (st & R_LIVE ? R_CANCEL : 0) | (st & P_LIVE ? P_CANCEL : 0);
  /* Processed in order: the cancels before any recv the next wait would
   * run. At once when this thread may submit (it owns the ring, which is
   * enabled), else they go first with the next wait: either way no recv of
   * this stream consumes data after this point. */
  io_uring_submit(ax__uring(s->loop));
  if (data_pending(s->loop, &n->rop))
    return -EBUSY; /* bytes the user must read first */
  if (ur->nzomb == ur->zombcap) {
    size_t ncap = ur->zombcap ? ur->zombcap * 2 : 8;
    struct ns **v = ax__realloc(s->loop, ur->zomb, ncap * sizeof(*v));
    if (v == NULL)
      return -ENOMEM;
    ur->zomb = v;
    ur->zombcap = ncap;
  }
  ur->zomb[ur->nzomb++] = n;
  n->s = NULL;
  n->zlive = !!(st & R_LIVE) + !!(st & P_LIVE); /* their holds stay */
  s->drv_data = NULL;
  s->drv_state = 0;
  return 0;
}

static int ur_detach(ax_stream_t *s) {
  struct held *h = ns_of(s)->held;
  /* An emptied holder is idle (it stays after a delivery until the next
   * read_start); one with bytes or an end in it is not: they would be lost. */
  if (h != NULL && ax_buflist_count(&h->q) == 0 && h->end == 0)
    held_free(s);
  if ((s->drv_state & (W_LIVE | T_LISTED)) || ns_of(s)->held != NULL)
    return -EBUSY;
  if (s->drv_state & LIVE)
    return detach_live(s);
  ns_free(s);
  return 0;
}

/* A completion for a detached stream's operation: its bytes, if any (never
 * after detach_live's check), go back; the last final frees the state. */
static void zombie_done(struct ur *ur, struct ns *n, int res, uint32_t flags) {
  char *p = NULL;
  if (flags & IORING_CQE_F_BUFFER)
    p = buf_take(ur, flags >> IORING_CQE_BUFFER_SHIFT, res,
                 flags & IORING_CQE_F_BUF_MORE);
  if (p != NULL)
    buf_back(p, ur);
  if (flags & IORING_CQE_F_MORE)
    return;
  ax__loop_release(ur->loop);
  if (--n->zlive > 0)
    return;
  for (size_t i = 0; i < ur->nzomb; i++)
    if (ur->zomb[i] == n) {
      ur->zomb[i] = ur->zomb[--ur->nzomb];
      break;
    }
  ax__free(ur->loop, n);
}

const struct ax__sdrv ax__sdrv_uring = {
    .name = "io_uring",
    .attach = ur_attach,
    .read_start = ur_read_start,
    .read_stop = ur_read_stop,
    .flush = ur_flush,
    .connect_wait = ur_connect_wait,
    .close = ur_close,
    .detach = ur_detach,
};

/* ---- the ring was replaced (uring.c's ring_move) ------------------------ */

/* A completion the old ring posted, recorded for dispatch: its operation
 * has a final completion coming, and its buffer is not in the ring. */
static void mark_recorded(struct ur *ur, const struct ax__ucqe *c) {
  if (c->op->done == recv_done) {
    struct ns *n = ax__container_of(c->op, struct ns, rop);
    unsigned bid = c->flags >> IORING_CQE_BUFFER_SHIFT;
    if (!(c->flags & IORING_CQE_F_MORE) && n->s != NULL)
      n->s->drv_state |= Q_R;
    if ((c->flags & IORING_CQE_F_BUFFER) && bid < BUF_COUNT && c->res > 0 &&
        ur->b[bid].state == B_RING) {
      ur->b[bid].pend += (uint32_t)c->res;
      if (!(c->flags & IORING_CQE_F_BUF_MORE)) {
        ur->b[bid].state = B_PEND;
        ur->in_ring--;
      }
    }
  } else if (c->op->done == w_done) {
    ax__container_of(c->op, struct wctx, op)->s->drv_state |= Q_W;
  } else if (c->op->done == p_done) {
    struct ns *n = ax__container_of(c->op, struct ns, pop);
    if (n->s != NULL)
      n->s->drv_state |= Q_P;
  }
}

/* A detached stream's operations: a final completion may be recorded
 * already; the others end here. (Which one ended is of no matter: only
 * their number is counted.) */
static void zombie_finals(ax_loop_t *loop, struct ur *ur) {
  for (size_t z = 0; z < ur->nzomb; z++) {
    struct ns *n = ur->zomb[z];
    unsigned recorded = 0;
    for (size_t i = 0; i < loop->nucq; i++)
      recorded += (loop->ucq[i].op == &n->rop || loop->ucq[i].op == &n->pop) &&
                  !(loop->ucq[i].flags & IORING_CQE_F_MORE);
    for (unsigned k = recorded; k < n->zlive; k++)
      ax__ucq_push(loop, &n->pop, -ECANCELED, 0);
  }
}

/* Every other operation of the streams on @list is gone: it ends with
 * -ECANCELED, and its handler re-arms what is still wanted. */
static void finals(ax_loop_t *loop, struct ax__list *list) {
  for (struct ax__list *l = list->next; l != list; l = l->next) {
    ax_stream_t *s = ax__container_of(l, struct ax_stream, link);
    struct ns *n = s->drv_data;
    uint32_t st = s->drv_state;
    if (!(s->flags & AX__S_NATIVE) || n == NULL)
      continue;
    /* ENOMEM: never ends; the stream stays until the loop is freed. */
    if ((st & R_LIVE) && !(st & Q_R))
      ax__ucq_push(loop, &n->rop, -ECANCELED, 0);
    if ((st & W_LIVE) && !(st & Q_W))
      ax__ucq_push(loop, &n->w->op, -ECANCELED, 0);
    if ((st & P_LIVE) && !(st & Q_P))
      ax__ucq_push(loop, &n->pop, -ECANCELED, 0);
    s->drv_state &= ~(Q_R | Q_W | Q_P);
  }
}

/* Called by ring_move with the new ring bound to this thread, outside any
 * dispatch (the move happens when a wait or a submission finds the ring
 * bound to another thread). Nothing here runs a handler. */
static void ur_moved(ax_loop_t *loop, void *ctx) {
  struct ur *ur = ctx;
  struct ax__px *px = ur->px;
  for (size_t i = 0; i < loop->nucq; i++)
    mark_recorded(ur, &loop->ucq[i]);
  finals(loop, &px->streams);
  finals(loop, &px->closing);
  zombie_finals(loop, ur);
  ax__accept_moved(px); /* the listeners' multishot accepts */
  /* Without its buffers a recv can only end in -ENOBUFS: starved streams
   * then read into the pool (todo_run), slower but on. */
  ur->ring_ok = ring_register(ur) == 0;
}

/* ---- per-loop state ------------------------------------------------------- */

static void ur_free(struct ur *ur) {
  ax_loop_t *loop = ur->loop;
  while (ur->wfree != NULL) {
    struct wctx *w = ur->wfree;
    ur->wfree = w->next;
    ax__free(loop, w);
  }
  ax__free(loop, ur->todo);
  ax__free(loop, ur->zomb);
  ax__free(loop, ur->mem);
  ax__free(loop, ur->br_mem);
  ax__free(loop, ur->b);
  ax__free(loop, ur);
}

/* From the backend's fini, after the ring is gone: the kernel touches none
 * of this memory any more. */
static void ur_gone(ax_loop_t *loop, void *ctx) {
  struct ur *ur = ctx;
  while (ur->dead_w != NULL) {
    struct wctx *w = ur->dead_w;
    ur->dead_w = w->next;
    wctx_drop(w); /* may return ring buffers: ur->dead, counted only */
    ax__free(loop, w);
  }
  loop->uring_gone = NULL;
  loop->uring_ctx = NULL;
  ur_free(ur);
}

/* A closing stream whose operations may never end (loop free): released
 * now; a send in flight keeps its memory until the ring is gone. */
static void force_release(struct ur *ur, ax_stream_t *s) {
  struct ns *n = s->drv_data;
  if (s->drv_state & W_LIVE) {
    n->w->s = NULL;
    n->w->next = ur->dead_w;
    ur->dead_w = n->w;
  }
  for (uint32_t bit = R_LIVE; bit <= P_LIVE; bit <<= 1)
    if ((bit & LIVE) && (s->drv_state & bit))
      live_clr(s, bit);
  maybe_release(s);
}

/* px fini (AX__PXM_URING, after the streams were closed). */
static void ur_fini(struct ax__px *px) {
  struct ur *ur = px->uring;
  ax_loop_t *loop = px->loop;
  while (!ax__list_empty(&px->streams)) /* none: closed by streams_fini */
    ax_stream_close(ax__container_of(px->streams.next, struct ax_stream,
                                     link),
                    NULL);
  /* The cancels the closes queued, at once if this thread may submit:
   * then the files are let go before the fds close, and peers see their
   * EOF now rather than when the ring's teardown gets to it. */
  io_uring_submit_and_get_events(ax__uring(loop));
  for (struct ax__list *l = px->closing.next, *next; l != &px->closing;
       l = next) {
    ax_stream_t *s = ax__container_of(l, struct ax_stream, link);
    next = l->next;
    if ((s->flags & AX__S_NATIVE) && s->drv_data != NULL)
      force_release(ur, s);
  }
  while (ur->nzomb > 0) { /* their memory is not the kernel's: only ud */
    struct ns *n = ur->zomb[--ur->nzomb];
    for (; n->zlive > 0; n->zlive--)
      ax__loop_release(loop);
    ax__free(loop, n);
  }
  ax_source_free(ur->kick);
  ur->kick = NULL;
  ur->ntodo = 0;
  ur->dead = true;
  loop->uring_moved = NULL;
  px->uring = NULL;
  px->info = NULL;
  px->fini[AX__PXM_URING] = NULL;
}

static void ur_info(struct ax__px *px, ax_proactor_info_t *out) {
  struct ur *ur = px->uring;
  out->buf_ring = ur->ring_ok;
  out->multishot_accept = px->ldrv == &ax__ldrv_uring;
  out->read_bufs_out += ur->held;
  out->read_bufs_idle += BUF_COUNT - ur->held;
}

static bool probed_ok;

/* Kernel 6.0 for multishot recv: its marker is IORING_OP_SEND_ZC, also of
 * 6.0 (a probe lists opcodes, not flags). Probed once per process, on a
 * ring of its own: the loop's may be bound to another thread. */
static void probe(void) {
  static const int ops[] = {IORING_OP_RECV,     IORING_OP_SEND,
                            IORING_OP_SENDMSG,  IORING_OP_POLL_ADD,
                            IORING_OP_ASYNC_CANCEL, IORING_OP_SEND_ZC};
  struct io_uring_probe *p = io_uring_get_probe();
  bool ok = p != NULL;
  for (size_t i = 0; ok && i < sizeof(ops) / sizeof(ops[0]); i++)
    ok = io_uring_opcode_supported(p, ops[i]);
  if (p != NULL)
    io_uring_free_probe(p);
  probed_ok = ok;
}

static bool kernel_ok(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, probe);
  return probed_ok;
}

static struct ur *ur_new(struct ax__px *px) {
  ax_loop_t *loop = px->loop;
  struct ur *ur = ax__alloc(loop, sizeof(*ur));
  if (ur == NULL)
    return NULL;
  memset(ur, 0, sizeof(*ur));
  ur->loop = loop;
  ur->px = px;
  ur->ignore.done = ignore_done;
  /* The kernel wants the ring of entries page-aligned. */
  ur->br_mem = ax__alloc(loop, BUF_COUNT * sizeof(struct io_uring_buf) + PAGE);
  ur->mem = ax__alloc(loop, (size_t)BUF_COUNT * BUF_SIZE);
  ur->b = ax__alloc(loop, BUF_COUNT * sizeof(*ur->b));
  if (ur->br_mem == NULL || ur->mem == NULL || ur->b == NULL ||
      ax_defer_new(loop, kick_cb, ur, &ur->kick) < 0) {
    ur_free(ur);
    return NULL;
  }
  ur->br = (struct io_uring_buf_ring *)(((uintptr_t)ur->br_mem + PAGE - 1) &
                                        ~(uintptr_t)(PAGE - 1));
  memset(ur->b, 0, BUF_COUNT * sizeof(*ur->b)); /* B_RING, empty */
  ur->in_ring = BUF_COUNT;
  ur->inc = true;
  /* Refused when the ring is bound to another thread (SINGLE_ISSUER):
   * the loop's streams then use the readiness driver. */
  if (ring_register(ur) < 0) {
    ax_source_free(ur->kick);
    ur_free(ur);
    return NULL;
  }
  ur->ring_ok = true;
  return ur;
}

bool ax__uring_px_init(struct ax__px *px) {
  const char *force = getenv("AXON_PROACTOR");
  ax_loop_t *loop = px->loop;
  struct ur *ur;
  if ((force != NULL && strcmp(force, "readiness") == 0) ||
      ax__uring(loop) == NULL || !kernel_ok() || (ur = ur_new(px)) == NULL)
    return false;
  px->native = true;
  px->ldrv = &ax__ldrv_uring; /* listeners too (listener_uring.c) */
  px->uring = ur;
  px->fini[AX__PXM_URING] = ur_fini;
  px->info = ur_info;
  loop->uring_moved = ur_moved;
  loop->uring_gone = ur_gone;
  loop->uring_ctx = ur;
  return true;
}

#endif /* AX_HAVE_URING */
