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
