/*
 * Internal structures of the proactor, shared by the files of src/proactor/.
 * Nothing here is public. Files and what they own:
 *   px.c           per-loop proactor state, info, the closing list
 *   buf.c          buffers, the read pool, buffer lists
 *   filter.c       filter chains and the built-in filters
 *   addr.c         ax_addr_*
 *   stream.c       streams: API, write queue, backpressure, deadline, close
 *   stream_rd.c    the readiness driver (epoll, poll, select, io_uring polls)
 *   stream_uring.c the native io_uring driver (recv with a provided buffer
 *                  ring, send, cancellation)
 *   listener.c     listeners, accept batches, the fd-exhaustion policy
 *   listener_uring.c  multishot accept on io_uring
 *   udp.c          UDP sockets
 *   splice.c       ax_splice
 *   file.c         file operations: io_uring or the blocking thread pool
 */
#ifndef AXON_PROACTOR_INT_H
#define AXON_PROACTOR_INT_H

#include <axon/buf.h>
#include <axon/proactor.h>

#include "loop/loop_int.h"

struct ax__px;

/* Add @n to a loop's byte counter (px_bytes_in/out). One writer, the
 * loop's thread, so no read-modify-write is needed; the ck_pr store pairs
 * with ax_rt_stats' ck_pr load only so that a reader never sees a torn
 * value. It orders nothing else: a counter is a snapshot. */
static inline void ax__px_count(uint64_t *c, uint64_t n) { ck_pr_store_64(c, *c + n); }

/* ---- buffers (buf.c) ----------------------------------------------------- */

/* Free the loop's read pool (ax_loop_bufpool) if it was made. */
void ax__bufpool_fini(ax_loop_t *loop);

/* ---- filter chains (filter.c) ------------------------------------------- */

/* Where the last stage's output goes: the user (read chain) or the write
 * queue (write chain). Returns 0 or an error that fails the chain. */
typedef int (*ax__sink_fn)(void *ctx, ax_slice_t s);

struct ax_filter {
  const ax_filter_ops_t *ops;
  void *state;
  struct ax_filter *next;  /* toward the sink */
  struct ax__chain *chain;
};

struct ax__chain {
  struct ax_filter *head, *tail;
  ax__sink_fn sink;
  void *ctx;
  ax_loop_t *loop;         /* allocator of the stages */
};

void ax__chain_init(struct ax__chain *c, ax_loop_t *loop, ax__sink_fn sink,
                    void *ctx);
/* Append a stage; on error @ops->destroy(@state) has been called. */
int ax__chain_add(struct ax__chain *c, const ax_filter_ops_t *ops,
                  void *state);
/* Feed the first stage (or the sink when there is none). @in is borrowed. */
int ax__chain_push(struct ax__chain *c, ax_slice_t in);
/* End of input: each stage's eof in order (a stage may still emit). */
int ax__chain_eof(struct ax__chain *c);
/* Destroy every stage. */
void ax__chain_fini(struct ax__chain *c);
static inline bool ax__chain_empty(const struct ax__chain *c) {
  return c->head == NULL;
}

/* ---- streams -------------------------------------------------------------- */

/* s->flags */
enum {
  AX__S_READING = 0x0001,   /* read_start and not stopped */
  AX__S_CONNECTING = 0x0002,
  AX__S_EOF = 0x0004,       /* AX_EOF delivered (or pending delivery) */
  AX__S_FAILED = 0x0008,    /* s->err set and delivered */
  AX__S_SHUT = 0x0010,      /* shutdown asked: no more writes */
  AX__S_SHUT_DONE = 0x0020, /* shutdown(2) done */
  AX__S_CLOSING = 0x0040,   /* ax_stream_close called */
  AX__S_SOCKET = 0x0080,    /* send with MSG_NOSIGNAL */
  AX__S_TCP = 0x0100,
  AX__S_ABOVE_HIGH = 0x0200, /* went above high water: drain_cb owed */
  AX__S_NATIVE = 0x0400,    /* driven by stream_uring.c (ax__sdrv) */
  AX__S_SPLICE_FROM = 0x0800, /* a splice reads it: the user may not */
  AX__S_IN_CB = 0x1000,     /* delivering to the user */
  AX__S_NOSENDFILE = 0x2000, /* sendfile refused this fd: read+write */
  AX__S_SPLICE_TO = 0x4000, /* a splice writes it: the user may not */
  AX__S_OWED = 0x8000       /* listed in px->rdpend */
};
#define AX__S_SPLICING (AX__S_SPLICE_FROM | AX__S_SPLICE_TO)

/* A write request: a run of bytes in the write queue, a file range, or
 * the shutdown marker. Requests without a callback are merged. */
enum { AX__W_DATA, AX__W_FILE, AX__W_SHUT };

struct ax__wreq {
  struct ax__wreq *next;
  ax_write_cb cb;  /* ax_stream_cb for AX__W_SHUT (cast back) */
  void *ud;
  uint64_t left;   /* bytes still to write */
  uint64_t off;    /* AX__W_FILE: file offset of the next byte */
  int file_fd;     /* AX__W_FILE */
  uint8_t kind;
};

/* What only some streams need (filters, connect, splices, frames owed),
 * allocated on first use: an echo server's streams never need it. */
struct ax__sext {
  ax_stream_cb connect_cb;
  struct ax__chain rchain, wchain;
  struct ax__splice *sp_out;  /* running splice reading this stream */
  struct ax__splice *sp_in;   /* running splice writing this stream */
  /* Frames a read filter emitted after the user stopped reading, delivered
   * when reading starts again (a ring of @fcap slots). */
  ax_slice_t *frames;
  uint32_t fhead, fn, fcap;
  bool feof;                  /* AX_EOF owed after the frames */
};

/* Driver of a stream: how operations reach the kernel. */
struct ax__sdrv {
  const char *name;
  int (*attach)(ax_stream_t *s);     /* fd set: register what is needed */
  int (*read_start)(ax_stream_t *s);
  void (*read_stop)(ax_stream_t *s);
  /* The write queue is not empty (or holds a shutdown): write. May
   * complete requests at once (their callbacks run deferred, see
   * stream.c). */
  void (*flush)(ax_stream_t *s);
  /* Readiness wanted for connect completion. */
  int (*connect_wait)(ax_stream_t *s);
  /* Release the fd's registrations and cancel operations in flight; call
   * ax__stream_released() when the last one has ended (maybe at once). Does
   * not close the fd. */
  void (*close)(ax_stream_t *s);
  /* Release the fd's registrations at once for ax_stream_detach, or
   * -EBUSY when an operation is in flight. */
  int (*detach)(ax_stream_t *s);
};

extern const struct ax__sdrv ax__sdrv_rd;
#ifdef AX_HAVE_URING
extern const struct ax__sdrv ax__sdrv_uring;
#endif

struct ax_stream {
  struct ax__list link;        /* px->streams, px->closing or px->done */
  ax_stream_t *pnext;          /* px->rdpend while AX__S_OWED; free slots */
  ax_loop_t *loop;
  void *ud;
  union {                      /* the read callback until close, then the */
    ax_read_cb read_cb;        /* close callback: no read callback runs */
    ax_close_cb close_cb;      /* once closing */
  };
  ax_stream_cb drain_cb;
  ax_source_t *timer;          /* connect timeout or write deadline, while
                                  one is running */
  struct ax__sext *ext;        /* NULL until needed */
  ax_buflist_t wq;             /* queued data bytes */
  struct ax__wreq *wq_head, *wq_tail;
  uint64_t queued;             /* bytes of every request (data + file) */
  uint64_t bytes_read, bytes_written;
  void *drv_data;              /* driver-private: the readiness driver's I/O
                                  source, the native driver's state */
  uint32_t high, limit;        /* write queue: high water, hard limit (0) */
  uint32_t wtimeout_ms;        /* write deadline (0: none) */
  int fd;
  uint32_t flags;              /* AX__S_NATIVE names the driver */
  /* The stream's error, once failed: -errno (above -4096) or an AX_E*
   * code (-2000x). 16 bits, with drv_state, keep the stream at 184 bytes. */
  int16_t err;
  uint16_t drv_state;          /* driver-private */
};

_Static_assert(AX_EOF >= INT16_MIN && AX_ENOTPOLLABLE >= INT16_MIN &&
                   AX_EFDTOOBIG >= INT16_MIN && AX_ECORRUPT >= INT16_MIN &&
                   AX_EKIND >= INT16_MIN,
               "every error a stream keeps fits its 16-bit err");

/* The documented cost of an idle stream (README, conn_scale): 184 bytes in
 * the loop's stream slab + a 48-byte I/O source + an 8-byte fd-table slot
 * = 240 on the readiness driver. Every byte counts 20,000 times there: the
 * driver is a flag rather than a pointer, err and drv_state are 16 bits. */
_Static_assert(sizeof(struct ax_stream) <= 184, "a stream is 184 bytes");

/* The stream's driver: stream_uring.c's while AX__S_NATIVE is set (from
 * stream_new to the free), else the readiness driver. */
#ifdef AX_HAVE_URING
#define AX__SDRV_NATIVE (&ax__sdrv_uring)
#else
#define AX__SDRV_NATIVE (&ax__sdrv_rd)
#endif
static inline const struct ax__sdrv *ax__sdrv(const ax_stream_t *s) {
  return (s->flags & AX__S_NATIVE) ? AX__SDRV_NATIVE : &ax__sdrv_rd;
}

/* Called by drivers. */
/* Data read: through the read chain to the user. @data is borrowed. */
void ax__stream_on_data(ax_stream_t *s, ax_slice_t data);
/* The peer closed its side. */
void ax__stream_on_eof(ax_stream_t *s);
/* A fatal error: stop, fail the queue, deliver once. */
void ax__stream_fail(ax_stream_t *s, int err);
/* @n bytes of the head request(s) were written. */
void ax__stream_on_written(ax_stream_t *s, uint64_t n);
/* The connect finished with @status. */
void ax__stream_on_connect(ax_stream_t *s, int status);
/* The head request is AX__W_SHUT and shutdown(2) returned @status. */
void ax__stream_on_shutdown(ax_stream_t *s, int status);
/* The driver let go of everything: finish the close. */
void ax__stream_released(ax_stream_t *s);
/* Free a released stream's memory (the reaper, after its close callback). */
void ax__stream_free(ax_stream_t *s);
/* Bytes of the head run of AX__W_DATA requests (what writev may take). */
uint64_t ax__stream_data_run(const ax_stream_t *s);
/* Whether reading is wanted now (READING, not EOF/FAILED/CLOSING). */
bool ax__stream_wants_read(const ax_stream_t *s);
/* The readiness driver's shared write step: writev/sendfile/shutdown from
 * the head of the queue until EAGAIN or empty. Returns true when the queue
 * is still not empty (wait for writability). */
bool ax__stream_write_some(ax_stream_t *s);
/* Run the read deliveries owed (px->rdpend), from the reaper. */
void ax__streams_deliver(struct ax__px *px);
/* sendmsg(MSG_NOSIGNAL) on sockets, writev elsewhere; -errno on error. */
ssize_t ax__stream_send(ax_stream_t *s, const struct iovec *iov, int n);
/* Splices (splice.c). Drivers wait for what ax__splice_interest() says
 * (AX_READABLE and/or AX_WRITABLE) besides their own needs, and pass the
 * readiness on with ax__splice_ready(). A splice whose needs change calls
 * s->drv->flush(s) to have them re-read. */
unsigned ax__splice_interest(const ax_stream_t *s);
void ax__splice_ready(ax_stream_t *s, unsigned revents);
/* End every splice @s takes part in (-ECANCELED, callback deferred). */
void ax__splice_abort(ax_stream_t *s);
/* Extension block, allocated on demand; NULL on ENOMEM. */
struct ax__sext *ax__stream_ext(ax_stream_t *s);
/* The read or write chain, created (empty) on first call; NULL on ENOMEM
 * or a bad @chain. */
struct ax__chain *ax__stream_chain(ax_stream_t *s, int chain);

/* ---- listeners (listener.c, listener_uring.c) --------------------------- */

/* How a listener's connections come in: readiness (an I/O source, accept4
 * in batches; listener.c) or a multishot accept (listener_uring.c). */
struct ax__ldrv {
  /* Set up what the driver needs and start accepting (l->fd, the I/O
   * source and the timer exist). On error (-ENOMEM, -EBUSY: no SQE...)
   * nothing is left armed and ax_listener_new fails with it. */
  int (*init)(ax_listener_t *l);
  /* Accept, or stop accepting, as the listener's state says (closed, user
   * paused, exhaustion pause). Never calls the user. */
  void (*sync)(ax_listener_t *l);
  /* ax_listener_close: let go of what is pending, before the fd closes.
   * The listener's memory stays while ax__listener_busy() says so. */
  void (*close)(ax_listener_t *l);
  /* ax_loop_free, after close: end what is still in flight at once. */
  void (*fini)(ax_listener_t *l);
};

extern const struct ax__ldrv ax__ldrv_rd;

/* l->astate: the multishot accept (listener_uring.c). */
enum {
  AX__A_LIVE = 0x01,   /* in the kernel: l->aop gets completions */
  AX__A_CANCEL = 0x02, /* its cancel was queued, or it has ended */
  AX__A_MORE = 0x04    /* it posted a completion with IORING_CQE_F_MORE */
};

struct ax_listener {
  struct ax__list link;   /* px->listeners, until the memory goes */
  ax_loop_t *loop;
  const struct ax__ldrv *drv;
  ax_source_t *io;        /* readiness: the listening socket */
  ax_source_t *timer;     /* end of an exhaustion pause */
  int fd;
  int reserve;            /* /dev/null, given up to shed a connection */
  ax_accept_cb cb;
  void *ud;
  ax_listen_options_t o;
  uint32_t pause_ms;      /* next pause */
  int busy;               /* accept callbacks running */
  bool user_paused, emfile_paused, reported, closed;
  ax_listener_stats_t st;
  /* listener_uring.c */
  struct ax__uop aop;     /* the multishot accept */
  uint32_t astate;        /* AX__A_* */
  ax_source_t *kick;      /* defer: hands over the held fds */
  int *held;              /* accepted while paused: held[hhead..nheld) */
  uint32_t hhead, nheld, heldcap;
};

/* Shared by the drivers (listener.c). */
/* Whether the listener accepts now: not closed, not paused. */
bool ax__listener_wanted(const ax_listener_t *l);
/* Connection @fd was accepted from @peer: counted, then the user's. */
void ax__listener_accepted(ax_listener_t *l, int fd, const ax_addr_t *peer);
/* An accept failed with @err (not -EAGAIN): the policy at the top of
 * listener.c. False for a lost connection (the next may be fine), true
 * when accepting paused (or the listener was closed). */
bool ax__listener_failed(ax_listener_t *l, int err);
/* Stop accepting for the next pause (emfile_pause_ms, doubling), without
 * a word to the user. */
void ax__listener_backoff(ax_listener_t *l);
/* Its memory is still needed: a callback runs, or an operation is in the
 * kernel. */
bool ax__listener_busy(const ax_listener_t *l);
/* Closed and no longer busy: free it (else nothing). */
void ax__listener_release(ax_listener_t *l);

#ifdef AX_HAVE_URING
extern const struct ax__ldrv ax__ldrv_uring;
/* The ring was replaced (stream_uring.c's ur_moved): multishot accepts in
 * flight on the old one get their final completion. */
void ax__accept_moved(struct ax__px *px);
#endif

/* ---- per-loop state (px.c) ---------------------------------------------- */

/* Modules with per-loop state, finalized in this order by ax_loop_free. A
 * module registers its finalizer (px->fini[m]) when it first sets up its
 * state, so px.c depends on none of them. */
enum {
  AX__PXM_SPLICE,
  AX__PXM_STREAMS,
  AX__PXM_LISTENERS,
  AX__PXM_UDP,
  AX__PXM_FILES,
  AX__PXM_URING,
  AX__PXM_COUNT
};

struct ax__px {
  void (*fini[AX__PXM_COUNT])(struct ax__px *px);
  /* Adds the native driver's facts to ax_proactor_info (or NULL). */
  void (*info)(struct ax__px *px, ax_proactor_info_t *out);
  ax_bufpool_t *pool;          /* ax_loop_bufpool(), buf.c */
  ax_loop_t *loop;
  struct ax__list streams;     /* open */
  struct ax__list closing;     /* closed, waiting for release + close cb */
  struct ax__list done;        /* released: close callbacks to run */
  ax_source_t *reaper;         /* defer: runs deferred completions */
  ax_stream_t *rdpend;         /* streams owed a read delivery (LIFO) */
  ax_stream_t *sfree;          /* free stream slots */
  struct ax__schunk *schunks;  /* the stream slab's chunks */
  struct ax__list listeners;
  /* Driver of new listeners: NULL for readiness, &ax__ldrv_uring on a
   * native loop until the kernel refuses multishot accept. */
  const struct ax__ldrv *ldrv;
  struct ax__list udps;
  size_t nstreams;
  bool native;                 /* new streams get the native io_uring
                                  driver (AX__S_NATIVE) */
  void *uring;                 /* stream_uring.c's state */
  void *files;                 /* file.c's state */
  uint64_t file_ops_pool, file_ops_native;
  /* Write completions owed to users (deferred so that no user callback
   * runs inside the call that caused it). */
  struct ax__wdone *wdone_head, *wdone_tail;
  struct ax__wreq *wreq_free;  /* recycled requests */
  size_t nwreq_free;
};

/* Stream slots, from the loop's stream slab (no allocator header per
 * stream); released slots are reused, chunks go with the loop. */
ax_stream_t *ax__stream_slot(struct ax__px *px);
void ax__stream_slot_free(struct ax__px *px, ax_stream_t *s);

/* The loop's proactor state, created on first use (NULL: ENOMEM). */
struct ax__px *ax__px(ax_loop_t *loop);
/* Arrange for the reaper to run this iteration or the next. */
void ax__px_kick(struct ax__px *px);
/* Requests: allocate and recycle. */
struct ax__wreq *ax__wreq_new(struct ax__px *px);
void ax__wreq_free(struct ax__px *px, struct ax__wreq *r);
/* Queue a write callback (@cb(s, status, ud)) to run from the reaper. */
int ax__px_complete(struct ax__px *px, ax_stream_t *s, ax_write_cb cb,
                    void *ud, int status);
#ifdef AX_HAVE_URING
/* Whether streams of this loop are driven natively (io_uring backend and
 * the kernel has what the driver needs); sets up px->uring and registers
 * its finalizer and info hook (stream_uring.c). */
bool ax__uring_px_init(struct ax__px *px);
#endif

/* SIGPIPE ignored once per process (pipes have no MSG_NOSIGNAL). */
void ax__ignore_sigpipe(void);

#endif /* AXON_PROACTOR_INT_H */
