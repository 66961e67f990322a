/*
 * Internal structures of the run loop, shared by the files of src/loop/.
 * Nothing here is public; names are ax__ (shared across files) or static.
 */
#ifndef AXON_LOOP_INT_H
#define AXON_LOOP_INT_H

#include <assert.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include <ck_pr.h>

#include <axon/loop.h>

/* ---- intrusive circular doubly-linked list with a sentinel ------------- */

struct ax__list {
  struct ax__list *next, *prev;
};

static inline void ax__list_init(struct ax__list *h) { h->next = h->prev = h; }
static inline bool ax__list_empty(const struct ax__list *h) {
  return h->next == h;
}
static inline void ax__list_append(struct ax__list *h, struct ax__list *n) {
  n->prev = h->prev;
  n->next = h;
  h->prev->next = n;
  h->prev = n;
}
static inline void ax__list_unlink(struct ax__list *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->next = n->prev = n;
}
/* Move every node of @from to the end of @to; @from becomes empty. */
static inline void ax__list_splice(struct ax__list *to, struct ax__list *from) {
  if (ax__list_empty(from))
    return;
  from->next->prev = to->prev;
  to->prev->next = from->next;
  from->prev->next = to;
  to->prev = from->prev;
  ax__list_init(from);
}

#define ax__container_of(p, type, member)                                      \
  ((type *)(void *)((char *)(p)-offsetof(type, member)))

/* ---- sources ------------------------------------------------------------ */

/* Kinds beyond the public ones: slots of the loop's own fds. */
enum {
  AX__KIND_FREE = 0,         /* slab slot not in use */
  AX__KIND_INTERNAL = 8,     /* an fd the loop watches for itself */
  AX__KIND_COUNT = 9
};

enum {
  AX__F_ACTIVE = 0x01,  /* started and not stopped */
  AX__F_REF = 0x02,     /* counts towards ax_loop_alive() while active */
  AX__F_CLOSING = 0x04, /* freed by the user; memory reclaimed later */
  AX__F_FIRED = 0x08    /* timer/date: fired, callback has not touched it */
};

/*
 * Common header of every source (32 bytes). Kind-specific structs embed it
 * first. @cb is the kind's callback type, stored type-erased and cast back to
 * that exact type before every call.
 */
struct ax_source {
  ax_loop_t *loop; /* while free in a slab: next free slot */
  void *data;
  void (*cb)(void);
  uint8_t kind;
  uint8_t flags;
  uint16_t pos;  /* timer: wheel position (level << 8 | slot) */
  uint32_t aux;  /* timer: repeat in ms; fswatch: interest mask */
};

/* Timers and date timers (56 bytes: the 4-slot link, deadline). */
struct ax__timer {
  struct ax_source h;
  struct ax__list link;
  uint64_t deadline; /* timer: ms on the loop clock; date: ms since epoch */
};

/* The documented cost of a timer (README, bench): keep it. */
_Static_assert(sizeof(struct ax__timer) == 56, "a timer is 56 bytes");

/* I/O, wake and internal fd watchers: anything that sits in the fd table. */
struct ax__io {
  struct ax_source h;
  int fd;
  uint32_t events; /* AX_READABLE | AX_WRITABLE | AX_IO_* while active */
  uint32_t gen;    /* registration generation: stale events are dropped */
  uint32_t be;     /* backend-private bits */
};

/* Handler of an internal fd watcher (signalfd, inotify, timerfd). */
typedef void (*ax__internal_cb)(ax_loop_t *loop, struct ax__io *io,
                                unsigned revents);

struct ax__defer {
  struct ax_source h;
  struct ax__list link;
};

struct ax__signal {
  struct ax_source h;
  struct ax__list link; /* loop->signals, in start order */
  int signo;
};

struct ax__fswatch {
  struct ax_source h;
  struct ax__list link; /* the watch descriptor's list of sources */
  struct ax__wd *wd;    /* NULL while inactive */
  char *path;
};

/* One inotify watch descriptor and the sources that share it. */
struct ax__wd {
  int wd;
  int busy;      /* deliveries walking it: release afterwards */
  bool dropped;  /* the kernel removed the watch (IN_IGNORED) */
  struct ax__list sources;
};

/* ---- slab of same-sized source objects --------------------------------- */

struct ax__chunk {
  struct ax__chunk *next;
  uint32_t nobj; /* capacity */
  uint32_t used; /* objects handed out so far (bump pointer) */
  /* objects follow, aligned to 16 */
};

struct ax__slab {
  struct ax__chunk *chunks;
  struct ax_source *free; /* free list through h.loop */
  uint32_t objsize;
  uint32_t next_nobj; /* objects in the next chunk: grows to a bound */
  size_t live;
};

/* ---- timer wheel -------------------------------------------------------- */

#define AX__WHEEL_BITS 8
#define AX__WHEEL_SLOTS (1u << AX__WHEEL_BITS)
#define AX__WHEEL_WORDS (AX__WHEEL_SLOTS / 64u)
#define AX__WHEEL_LEVELS 6 /* 6 x 8 = 48 bits of ms: ~8900 years */
#define AX__WHEEL_MAX ((UINT64_C(1) << (AX__WHEEL_BITS * AX__WHEEL_LEVELS)) - 1)
#define AX__POS_DUE 0xffffu /* pos of a timer waiting in the due list */

struct ax__wheel {
  uint64_t time; /* every deadline <= time has been moved to due */
  uint64_t bitmap[AX__WHEEL_LEVELS][AX__WHEEL_WORDS]; /* non-empty slots */
  struct ax__list slot[AX__WHEEL_LEVELS][AX__WHEEL_SLOTS];
  struct ax__list due; /* expired, waiting to fire, in deadline order */
  struct ax__list *firing; /* list being fired right now, or NULL */
  size_t count;        /* timers linked (wheel + due + firing) */
};

/* ---- backends ----------------------------------------------------------- */

/* One readiness event collected by a backend's wait. */
struct ax__event {
  int fd;
  uint32_t gen;     /* generation the backend registered the fd with */
  uint32_t revents; /* AX_READABLE | AX_WRITABLE | AX_ERROR | AX_HANGUP */
};

/*
 * A readiness backend. Each fills loop->ev[0..nev) in wait(); the loop core
 * dispatches them afterwards, so callbacks never run while a backend walks
 * its own structures. Mode flags (AX_IO_EDGE / AX_IO_ONESHOT) arrive in
 * @events; ONESHOT is emulated by the core (it calls ctl with 0 before the
 * callback), so a backend may treat it like level-triggered.
 */
struct ax__backend {
  const char *name;
  ax_backend_t id;
  bool edge; /* supports AX_IO_EDGE */
  /* Set up loop->be_data. Returns 0 or -errno (-ENOSYS etc. → fallback). */
  int (*init)(ax_loop_t *loop);
  void (*fini)(ax_loop_t *loop);
  /* Register, change or (@events == 0) remove interest for io->fd. @old is
   * the interest currently registered (0: none). The fd may already be
   * closed when removing: ignore EBADF/ENOENT then. */
  int (*ctl)(ax_loop_t *loop, struct ax__io *io, uint32_t old,
             uint32_t events);
  /* Wait up to @timeout_ms (-1: forever, 0: poll) and fill loop->ev.
   * EINTR counts as "no events" and returns 0. */
  int (*wait)(ax_loop_t *loop, int timeout_ms);
};

extern const struct ax__backend ax__backend_epoll;
extern const struct ax__backend ax__backend_poll;
extern const struct ax__backend ax__backend_select;
#ifdef AX_HAVE_URING
extern const struct ax__backend ax__backend_uring;
#endif

/* ---- the loop ----------------------------------------------------------- */

struct ax_loop {
  const struct ax__backend *be;
  void *be_data;
  ax_allocator_t alloc;
  bool libc_alloc; /* alloc is malloc/realloc/free (no user hooks) */

  uint64_t now; /* cached CLOCK_MONOTONIC in ms */
  int64_t (*realtime_ms)(void *ctx);
  void *clock_ctx;

  /* fd table: the io source watching each fd, or NULL. */
  struct ax__io **fdtab;
  int fdcap;
  uint32_t gen_next;

  /* events collected by the backend's last wait */
  struct ax__event *ev;
  int nev, evcap;

  struct ax__wheel wheel;
  struct ax__list defers;  /* queued deferred calls */
  struct ax__list dates;   /* active date timers by deadline */
  struct ax__io *clockfd;  /* timerfd reporting wall-clock steps */

  struct ax__list signals; /* active signal sources */
  struct ax__list *sig_batch; /* sources being delivered to, or NULL */
  struct ax__io *sigfd;    /* signalfd, created on first use */
  sigset_t sigmask;        /* signals the signalfd reads */
  sigset_t sigblocked;     /* signals this loop blocked itself */

  struct ax__io *inotify;  /* inotify fd, created on first use */
  struct ax__wd **wds;
  size_t nwds, wdcap;

  /* Cross-thread traffic (post.c). Other threads touch only mb (through
   * its thread-safe functions, which write the eventfd whose number is the
   * mailbox's wake argument) and stop_posted/stop_post (atomically). */
  ax_mailbox_t *mb;
  struct ax__io *post_io;  /* the eventfd posters write to wake the loop */
  unsigned stop_posted;    /* 1 while stop_post is in the mailbox */
  ax_post_t stop_post;     /* the loop's own stop message: never allocated */
  uint32_t spin_ns;
  unsigned skipped_waits;  /* waits skipped in a row after a spin's catch */
  bool persistent;
  bool freeing;            /* ax_loop_free is draining the mailbox */

  struct ax__slab slabs[AX__KIND_COUNT];
  ax_source_t *closing;    /* freed during a run; reclaimed per iteration */

  bool running;
  bool stop;
  bool clock_dirty;        /* re-evaluate date timers without blocking */

  size_t nactive, nrefd;
  size_t holds;            /* operations of higher layers that keep the
                              loop alive (ax__loop_hold) */

  /* The proactor's per-loop state (src/proactor), created on first use;
   * px_fini frees it from ax_loop_free, after the mailbox is drained and
   * before the sources go. The loop knows nothing else of it. */
  void *px;
  void (*px_fini)(ax_loop_t *loop);
  /* Stream bytes read and written on this loop (src/proactor): the loop's
   * thread adds with ck_pr stores (ax__px_count), any thread reads with
   * ck_pr loads (ax_rt_stats); untorn values, no ordering. Here rather than
   * in px so that they exist, as zeros, before the proactor does. */
  uint64_t px_bytes_in, px_bytes_out;

  /* Completions of native io_uring operations (ax__uop), reaped by the
   * backend's wait and dispatched after readiness events. */
  struct ax__ucqe *ucq;
  size_t nucq, ucqcap;
  size_t ucq_next;         /* next to dispatch: ucq[ucq_next..nucq) are
                              still to come (a detach looks at them) */

  /* What the io_uring backend tells the owner of native operations (the
   * proactor's native driver), NULL when nobody listens. uring_moved:
   * ring_move() replaced the ring (the loop is run by another thread):
   * operations in flight on the old ring are gone and will post nothing
   * (the completions it had already posted were recorded first); the new
   * ring is bound to the calling thread. uring_gone: the backend's fini tore
   * the ring down: the kernel no longer touches memory that operations
   * pointed at, so it may be freed now. Both get @uring_ctx. */
  void (*uring_moved)(ax_loop_t *loop, void *ctx);
  void (*uring_gone)(ax_loop_t *loop, void *ctx);
  void *uring_ctx;

  ax_backend_t requested;
  char fallback[160];
  ax_loop_info_t stats;    /* counters only; the rest is filled on demand */
};

/* ---- native io_uring operations (for src/proactor) --------------------- */

/*
 * An operation a higher layer submits to the loop's ring itself (recv, send,
 * accept, splice, read, write, cancel...). Embed it; @done runs once per
 * completion on the loop's thread, from the I/O phase, never from inside
 * the backend: @flags are the CQE's (IORING_CQE_F_MORE: more will come for
 * a multishot operation; IORING_CQE_F_BUFFER: buffer id in flags >> 16).
 */
struct ax__uop {
  void (*done)(ax_loop_t *loop, struct ax__uop *op, int res, uint32_t flags);
};

struct ax__ucqe {
  struct ax__uop *op;
  int res;
  uint32_t flags;
};

/* Run the completions reaped by the last wait (io.c). */
void ax__ucq_dispatch(ax_loop_t *loop);
/* Record a completion for the next dispatch (io.c). False on ENOMEM. Not
 * while ax__ucq_dispatch runs: the backend's wait and ring_move only. */
bool ax__ucq_push(ax_loop_t *loop, struct ax__uop *op, int res,
                  uint32_t flags);

#ifdef AX_HAVE_URING
struct io_uring;
struct io_uring_sqe;
/* The loop's ring when its backend is io_uring, else NULL (uring.c). */
struct io_uring *ax__uring(ax_loop_t *loop);
/* An SQE whose completion will reach @op->done, or NULL when the loop is
 * not on io_uring or the SQ cannot be made room for (the caller falls back
 * or reports -EBUSY). The caller fills it in (keeping its user_data). */
struct io_uring_sqe *ax__uring_sqe(ax_loop_t *loop, struct ax__uop *op);
/* The user_data ax__uring_sqe gave @op's SQE: the key that cancels it
 * (IORING_OP_ASYNC_CANCEL). */
uint64_t ax__uring_ud(const struct ax__uop *op);
#endif

/* Keep the loop alive while a higher layer has work pending (file I/O on
 * the pool, native operations). Loop thread only. */
static inline void ax__loop_hold(ax_loop_t *loop) { loop->holds++; }
static inline void ax__loop_release(ax_loop_t *loop) {
  assert(loop->holds > 0);
  loop->holds--;
}

/* ---- shared internal functions ----------------------------------------- */

void *ax__alloc(ax_loop_t *loop, size_t size);
void *ax__realloc(ax_loop_t *loop, void *p, size_t size); /* p NULL: allocates */
void ax__free(ax_loop_t *loop, void *p);

/* Sources: allocate/reclaim slab objects, state transitions. */
int ax__source_new(ax_loop_t *loop, int kind, void (*cb)(void), void *data,
                   ax_source_t **out);
void ax__source_activate(ax_source_t *src);
void ax__source_deactivate(ax_source_t *src);
void ax__source_destroy(ax_source_t *src); /* stop, release, reclaim (later) */
int ax__source_check(const ax_source_t *src, int kind);
void ax__reclaim(ax_loop_t *loop);
void ax__slab_init(ax_loop_t *loop);
void ax__slab_release_all(ax_loop_t *loop);
void ax__slab_foreach(const ax_loop_t *loop, int kind,
                      void (*fn)(const struct ax_source *, void *), void *ctx);

/* fd table (io.c). */
int ax__io_register(ax_loop_t *loop, struct ax__io *io);
int ax__io_internal(ax_loop_t *loop, int fd, ax__internal_cb cb,
                    struct ax__io **out);
int ax__io_arm(struct ax__io *io, uint32_t events);
void ax__io_disarm(struct ax__io *io);
void ax__io_forget(struct ax__io *io, bool close_fd); /* leave the fd table */
void ax__io_dispatch(ax_loop_t *loop);
int ax__fdtab_reserve(ax_loop_t *loop, int fd);
int ax__evbuf_reserve(ax_loop_t *loop, int n);

/* Timer wheel (timer.c). */
void ax__wheel_init(struct ax__wheel *w, uint64_t now);
void ax__timer_link(ax_loop_t *loop, struct ax__timer *t);
void ax__timer_unlink(ax_loop_t *loop, struct ax__timer *t);
void ax__timers_run(ax_loop_t *loop);
int64_t ax__timers_next(const ax_loop_t *loop); /* ms, -1 if none */
int ax__wheel_verify(const ax_loop_t *loop, char *why, size_t len);

/* Per-kind stop hooks and runners. */
void ax__defer_unlink(struct ax__defer *d);
void ax__defers_run(ax_loop_t *loop);
int64_t ax__dates_next(ax_loop_t *loop); /* ms, -1 if none */
void ax__dates_run(ax_loop_t *loop);
void ax__date_unlink(ax_loop_t *loop, struct ax__timer *t);
void ax__date_link(ax_loop_t *loop, struct ax__timer *t);
int ax__dates_verify(const ax_loop_t *loop, char *why, size_t len);
void ax__signal_stop(ax_loop_t *loop, struct ax__signal *s);
void ax__signal_fini(ax_loop_t *loop);
void ax__fswatch_stop(ax_loop_t *loop, struct ax__fswatch *f);
void ax__fswatch_release(ax_loop_t *loop, struct ax__fswatch *f);
void ax__fswatch_fini(ax_loop_t *loop);
void ax__clock_fini(ax_loop_t *loop);

/* Mailbox (post.c). */
int ax__post_init(ax_loop_t *loop, const ax_loop_options_t *o);
void ax__post_fini(ax_loop_t *loop);
bool ax__posts_pending(const ax_loop_t *loop);
void ax__posts_run(ax_loop_t *loop);
int ax__posts_before_wait(ax_loop_t *loop, int timeout_ms, bool *slept,
                          bool *skip);
void ax__posts_awake(ax_loop_t *loop);
void ax__stop_post(ax_loop_t *loop);

/* Run a timer or date callback and apply its return value. */
void ax__timer_fire(ax_loop_t *loop, struct ax__timer *t);


uint64_t ax__monotonic_ms(void);

/* snprintf into a verify buffer; always returns AX_ECORRUPT. */
int ax__corrupt(char *why, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* AXON_LOOP_INT_H */
