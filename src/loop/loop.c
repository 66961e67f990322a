/*
 * The loop: creation, backend choice, the run function and time.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loop/loop_int.h"
#include "mailbox/mailbox_int.h"

/* ---- memory ------------------------------------------------------------- */

static void *libc_malloc(size_t n, void *ctx) {
  (void)ctx;
  return malloc(n);
}
static void *libc_realloc(void *p, size_t n, void *ctx) {
  (void)ctx;
  return realloc(p, n);
}
static void libc_free(void *p, void *ctx) {
  (void)ctx;
  free(p);
}
static const ax_allocator_t libc_allocator = {libc_malloc, libc_realloc,
                                              libc_free, NULL};

void *ax__alloc(ax_loop_t *loop, size_t size) {
  return loop->alloc.malloc(size ? size : 1, loop->alloc.ctx);
}

void *ax__realloc(ax_loop_t *loop, void *p, size_t size) {
  if (!p)
    return ax__alloc(loop, size);
  return loop->alloc.realloc(p, size ? size : 1, loop->alloc.ctx);
}

void ax__free(ax_loop_t *loop, void *p) {
  if (p)
    loop->alloc.free(p, loop->alloc.ctx);
}

/* ---- time --------------------------------------------------------------- */

uint64_t ax__monotonic_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t ax_loop_now(const ax_loop_t *loop) { return loop ? loop->now : 0; }

void ax_loop_update_time(ax_loop_t *loop) {
  if (loop)
    loop->now = ax__monotonic_ms();
}

/* ---- backends ----------------------------------------------------------- */

static const struct ax__backend *backend_of(ax_backend_t id) {
  switch (id) {
  case AX_BACKEND_EPOLL:
    return &ax__backend_epoll;
  case AX_BACKEND_POLL:
    return &ax__backend_poll;
  case AX_BACKEND_SELECT:
    return &ax__backend_select;
#ifdef AX_HAVE_URING
  case AX_BACKEND_URING:
    return &ax__backend_uring;
#endif
  default:
    return NULL;
  }
}

static const char *backend_name(ax_backend_t id) {
  static const char *const names[] = {"auto", "epoll", "poll", "select", "io_uring"};
  return (unsigned)id < sizeof names / sizeof names[0] ? names[id] : "?";
}

/* The option, else $AXON_BACKEND, else AUTO (which start resolves). */
static int backend_requested(const ax_loop_options_t *o, ax_backend_t *out) {
  if (o->backend != AX_BACKEND_AUTO) {
    if ((unsigned)o->backend > AX_BACKEND_URING)
      return -EINVAL;
    *out = o->backend;
    return 0;
  }
  const char *env = getenv("AXON_BACKEND");
  *out = AX_BACKEND_AUTO;
  if (!env || !*env)
    return 0;
  for (int id = AX_BACKEND_EPOLL; id <= AX_BACKEND_URING; id++)
    if (strcmp(env, backend_name((ax_backend_t)id)) == 0) {
      *out = (ax_backend_t)id;
      return 0;
    }
  if (strcmp(env, "uring") == 0) {
    *out = AX_BACKEND_URING;
    return 0;
  }
  return -EINVAL;
}

/*
 * Start the requested backend; io_uring falls back to epoll with a reason.
 * AUTO is epoll: the best readiness backend here (io_uring's strength,
 * completion I/O, belongs to the proactor; as a readiness backend it needs a
 * poll request per event).
 */
static int backend_start(ax_loop_t *loop, ax_backend_t id) {
  loop->requested = id;
  if (id == AX_BACKEND_AUTO)
    id = AX_BACKEND_EPOLL;
  loop->be = backend_of(id);
  if (!loop->be) {
    snprintf(loop->fallback, sizeof loop->fallback,
             "io_uring: axon was built without liburing; using epoll");
    loop->be = &ax__backend_epoll;
    return loop->be->init(loop);
  }
  int rc = loop->be->init(loop);
  if (rc && id == AX_BACKEND_URING && rc != -ENOMEM) {
    snprintf(loop->fallback, sizeof loop->fallback,
             "io_uring unavailable (%s: %s); using epoll", ax_err_name(rc),
             ax_strerror(rc));
    loop->be->fini(loop);
    loop->be = &ax__backend_epoll;
    rc = loop->be->init(loop);
  }
  return rc;
}

/* ---- create / destroy --------------------------------------------------- */

void ax_loop_options_init(ax_loop_options_t *opts) {
  if (opts)
    memset(opts, 0, sizeof *opts);
}

static void loop_init_fields(ax_loop_t *loop, const ax_loop_options_t *o) {
  loop->now = ax__monotonic_ms();
  loop->realtime_ms = o->realtime_ms;
  loop->clock_ctx = o->clock_ctx;
  ax__wheel_init(&loop->wheel, loop->now);
  ax__list_init(&loop->defers);
  ax__list_init(&loop->dates);
  ax__list_init(&loop->signals);
  sigemptyset(&loop->sigmask);
  sigemptyset(&loop->sigblocked);
  ax__slab_init(loop);
}

int ax_loop_new(const ax_loop_options_t *opts, ax_loop_t **out) {
  ax_loop_options_t defaults;
  ax_loop_options_init(&defaults);
  const ax_loop_options_t *o = opts ? opts : &defaults;
  if (!out)
    return -EINVAL;
  const ax_allocator_t *a = o->allocator ? o->allocator : &libc_allocator;
  if (!a->malloc || !a->realloc || !a->free)
    return -EINVAL;
  ax_backend_t id;
  int rc = backend_requested(o, &id);
  if (rc)
    return rc;
  ax_loop_t *loop = a->malloc(sizeof *loop, a->ctx);
  if (!loop)
    return -ENOMEM;
  memset(loop, 0, sizeof *loop);
  loop->alloc = *a;
  loop->libc_alloc = a == &libc_allocator;
  loop_init_fields(loop, o);
  rc = backend_start(loop, id);
  if (rc == 0)
    rc = ax__post_init(loop, o);
  if (rc) {
    ax__post_fini(loop);
    loop->be->fini(loop);
    ax__slab_release_all(loop);
    ax__free(loop, loop->fdtab);
    ax__free(loop, loop->ev);
    a->free(loop, a->ctx);
    return rc;
  }
  *out = loop;
  return 0;
}

static void destroy_one(const struct ax_source *src, void *ctx) {
  (void)ctx;
  if (!(src->flags & AX__F_CLOSING))
    ax__source_destroy((struct ax_source *)(uintptr_t)src);
}

int ax_loop_free(ax_loop_t *loop) {
  if (!loop)
    return 0;
  if (loop->running)
    return -EBUSY;
  /* First the mailbox: queued posts run while every source still exists;
   * queued handoffs close their fds. */
  ax__post_fini(loop);
  /* Then the proactor, while the sources it uses still exist. */
  if (loop->px_fini)
    loop->px_fini(loop);
  /* Only sources holding more than their slab slot (fds, registrations,
   * paths) need a visit; timers, dates and defers go with their chunks, so
   * freeing a loop with 10 M timers costs O(chunks), not O(timers). */
  static const int kinds[] = {AX_SOURCE_IO, AX_SOURCE_WAKE, AX_SOURCE_SIGNAL,
                              AX_SOURCE_FSWATCH};
  for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
    ax__slab_foreach(loop, kinds[i], destroy_one, NULL);
  ax__signal_fini(loop);
  ax__fswatch_fini(loop);
  ax__clock_fini(loop);
  loop->be->fini(loop);
  ax__slab_release_all(loop);
  ax__free(loop, loop->fdtab);
  ax__free(loop, loop->ev);
  if (loop->ucq)
    ax__free(loop, loop->ucq);
  ax_allocator_t a = loop->alloc;
  a.free(loop, a.ctx);
  return 0;
}

/* ---- running ------------------------------------------------------------ */

bool ax_loop_alive(const ax_loop_t *loop) {
  return loop && (loop->nrefd > 0 || loop->holds > 0 || loop->persistent ||
                  ax__posts_pending(loop));
}

/* The loop this thread is running right now (innermost), if any. */
static _Thread_local ax_loop_t *tl_running;

/* Thread-safe: on the running loop's own thread the flag is set directly
 * (the iteration ends with it); anywhere else the request is a message. */
void ax_loop_stop(ax_loop_t *loop) {
  if (!loop)
    return;
  if (tl_running == loop)
    loop->stop = true;
  else
    ax__stop_post(loop);
}

static int64_t min_timeout(int64_t a, int64_t b) {
  if (a < 0)
    return b;
  if (b < 0)
    return a;
  return a < b ? a : b;
}

/* How long the next wait may block: never while work is queued, never past
 * the next timer or date, forever only when nothing but I/O can happen. */
static int poll_timeout(ax_loop_t *loop, ax_run_mode_t mode) {
  if (mode == AX_RUN_NOWAIT || loop->stop || loop->clock_dirty ||
      !ax__list_empty(&loop->defers) || !ax_loop_alive(loop) ||
      ax__posts_pending(loop))
    return 0;
  ax_loop_update_time(loop);
  int64_t t = min_timeout(ax__timers_next(loop), ax__dates_next(loop));
  return t > INT_MAX ? INT_MAX : (int)t;
}

/* One iteration: wait, then the phases in a fixed order. */
static int iterate(ax_loop_t *loop, ax_run_mode_t mode) {
  int timeout = poll_timeout(loop, mode);
  bool slept = false, skip = false;
  if (timeout != 0)
    timeout = ax__posts_before_wait(loop, timeout, &slept, &skip);
  int rc = 0;
  if (!skip) {
    rc = loop->be->wait(loop, timeout);
    loop->skipped_waits = 0;
  }
  if (slept)
    ax__posts_awake(loop);
  ax_loop_update_time(loop);
  if (rc == 0) {
    ax__io_dispatch(loop);
    ax__ucq_dispatch(loop);
  }
  ax__posts_run(loop);
  ax__timers_run(loop);
  ax__dates_run(loop);
  ax__defers_run(loop);
  ax__reclaim(loop);
  loop->stats.iterations++;
  return rc;
}

/* Callbacks run so far: tells ONCE whether an iteration did something. */
static uint64_t progress(const ax_loop_t *loop) {
  const ax_loop_info_t *s = &loop->stats;
  return s->io_events + s->timers_fired + s->defers_run + s->signals +
         s->fs_events + s->wakeups + s->posts_run + s->handoffs_adopted +
         s->handoffs_failed;
}

/* DEFAULT runs while something live is left. ONCE runs until a callback
 * ran: a wait can end with nothing to do — at a timer wheel boundary (the
 * timeout is a lower bound above the first level), on a stale event or a
 * clock-step notice — and "once" means one round of work, not one wait. */
static bool run_more(ax_loop_t *loop, ax_run_mode_t mode, uint64_t before) {
  if (loop->stop || !ax_loop_alive(loop))
    return false;
  if (mode == AX_RUN_DEFAULT)
    return true;
  return mode == AX_RUN_ONCE && progress(loop) == before;
}

int ax_loop_run(ax_loop_t *loop, ax_run_mode_t mode) {
  if (!loop || (unsigned)mode > AX_RUN_NOWAIT)
    return -EINVAL;
  if (loop->running)
    return -EBUSY;
  loop->running = true;
  ax_loop_t *outer = tl_running;
  tl_running = loop;
  ax_loop_update_time(loop);
  int rc = 0;
  uint64_t before = progress(loop);
  bool more = mode != AX_RUN_DEFAULT || ax_loop_alive(loop) || loop->stop;
  while (more) {
    rc = iterate(loop, mode);
    more = rc == 0 && run_more(loop, mode, before);
  }
  loop->stop = false;
  loop->running = false;
  tl_running = outer;
  return rc;
}

/* ---- introspection ------------------------------------------------------ */

const char *ax_loop_backend(const ax_loop_t *loop) {
  return loop ? loop->be->name : NULL;
}

static void count_one(const struct ax_source *src, void *ctx) {
  if (!(src->flags & AX__F_CLOSING))
    ++*(size_t *)ctx;
}

int ax_loop_info(const ax_loop_t *loop, ax_loop_info_t *info) {
  if (!loop || !info)
    return -EINVAL;
  *info = loop->stats;
  info->backend = loop->be->name;
  info->requested = backend_name(loop->requested);
  info->fallback_reason = loop->fallback[0] ? loop->fallback : NULL;
  info->sources = 0;
  for (int k = 1; k < AX__KIND_COUNT; k++)
    if (k != AX__KIND_INTERNAL)
      ax__slab_foreach(loop, k, count_one, &info->sources);
  info->mailbox_wakes = ax_mailbox_wakes(loop->mb);
  info->mailbox_depth = ax__mailbox_depth_exact(loop->mb);
  info->active = loop->nactive;
  info->referenced = loop->nrefd;
  return 0;
}
