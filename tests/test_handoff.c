/*
 * Cross-thread I/O source handoff (ax_io_handoff), on every backend:
 *
 *   basic        a watched socketpair end moves from loop A (main thread) to
 *                loop B on thread TB: the handoff callback runs on TB with
 *                status 0 and a new source for the same fd, bytes pending at
 *                the handoff are reported by B, the io callback runs on TB
 *                with the same data; A loses the source at once.
 *   modes        interest and trigger mode survive the move: readable|
 *                writable, AX_IO_EDGE (epoll, io_uring; an edge A already
 *                consumed is reported again by B), AX_IO_ONESHOT; inactive
 *                sources (never started, stopped, oneshot already fired) are
 *                adopted inactive and can be started on B.
 *   errors       NULL arguments (-EINVAL), other kinds (AX_EKIND), a source
 *                freed in its own callback (-EINVAL), a destination being
 *                freed (-ESHUTDOWN, from a post run by ax_loop_free): the
 *                callback is never called and the source still works on A.
 *   traffic      a writer thread streams numbered bytes over a socketpair or
 *                a TCP loopback connection; the reading end hops between
 *                three loops on three threads every few reads (from its io
 *                callback, and every 7th arrival straight from the handoff
 *                callback): every byte arrives once and in order; level and
 *                edge; also across three different backends, and with
 *                spinning loops (spin_ns).
 *   other        a callback hands off another source whose event is in the
 *                same batch: that event is not delivered on A, B reports it.
 *   loop gone    the old loop is freed before the destination adopts.
 *   fan-in       two threads hand 100 sources each to one running loop at
 *                the same time: all adopted, each reports its own readiness.
 *   dest freed   a handoff to a loop that never runs (or ran and stopped),
 *                then ax_loop_free(): callback once with -ECANCELED, src
 *                NULL, fd closed (right after the free, and already in the
 *                callback); a handoff racing with a stop; 1000 handoffs
 *                cancelled at once, with sentinel fds re-opened on the closed
 *                numbers inside the callbacks to catch a second close.
 *   dest full    a mailbox at its post_capacity still takes a handoff; posts
 *                queued before it run first.
 *   failures     fd >= FD_SETSIZE to a select loop (AX_EFDTOOBIG, fd
 *                closed; adopted by the other backends); -EEXIST when the
 *                destination already watches the fd number (fd closed);
 *                the destination's backend refusing the interest (AX_IO_EDGE
 *                from epoll to poll/select: -ENOTSUP; a regular file from
 *                poll to epoll: AX_ENOTPOLLABLE); -ENOMEM from the
 *                destination's allocator. A sentinel fd re-opened on the
 *                closed number inside the callback checks it is closed once.
 *   same loop    a handoff to the source's own loop, from outside a run and
 *                from inside the source's callback while AX_RUN_DEFAULT runs.
 *
 * ax_loop_info's handoffs_adopted / handoffs_failed are checked throughout.
 *
 * Threads: worker threads never call cmocka; they record what they saw and
 * the main thread checks it after joining them. Cross-thread waits poll an
 * atomic with a generous bound (a hang bound, not a timing check), and every
 * threaded test runs under the guard watchdog.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef AX_SAN
#define AX_SAN ""
#endif

/* ---- helpers ------------------------------------------------------------ */

/* Which thread is running: the main thread is TL_MAIN, loop threads 1.. */
#define TL_MAIN 100
static _Thread_local int tl_idx = -1;

/* @n for the plain build, less under the sanitizers. */
static size_t scaled(size_t n) {
  if (strcmp(AX_SAN, "thread") == 0)
    return n / 4;
  if (strcmp(AX_SAN, "address") == 0)
    return n / 2;
  return n;
}

static bool fd_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

static bool fd_closed(int fd) {
  errno = 0;
  return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

/* Poll *@v (1 ms naps) until it reaches @want or @secs seconds pass. The
 * bound only turns a hang into a failure; nothing depends on speed. */
static bool wait_ge(atomic_int *v, int want, int secs) {
  uint64_t end = mono_ms() + (uint64_t)secs * 1000u;
  while (atomic_load(v) < want) {
    if (mono_ms() > end)
      return false;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  return true;
}

/* Raise the soft RLIMIT_NOFILE to at least @want; false if impossible. */
static bool nofile_at_least(rlim_t want, struct rlimit *old) {
  assert_int_equal(getrlimit(RLIMIT_NOFILE, old), 0);
  if (old->rlim_cur == RLIM_INFINITY || old->rlim_cur >= want)
    return true;
  if (old->rlim_max != RLIM_INFINITY && old->rlim_max < want)
    return false;
  struct rlimit rl = *old;
  rl.rlim_cur = want;
  return setrlimit(RLIMIT_NOFILE, &rl) == 0;
}

/* A connected TCP pair over 127.0.0.1, both ends non-blocking. */
static void tcp_pair(int sv[2]) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(l >= 0);
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  assert_int_equal(bind(l, (struct sockaddr *)&addr, sizeof addr), 0);
  assert_int_equal(listen(l, 1), 0);
  assert_int_equal(getsockname(l, (struct sockaddr *)&addr, &len), 0);
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(c >= 0);
  assert_int_equal(connect(c, (struct sockaddr *)&addr, sizeof addr), 0);
  int s = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  assert_true(s >= 0);
  assert_int_equal(fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK), 0);
  close(l);
  sv[0] = s;
  sv[1] = c;
}

/* ---- a loop on its own thread ------------------------------------------- */

typedef struct lthr {
  ax_loop_t *loop;
  pthread_t thr;
  int idx; /* tl_idx of the thread */
  int rc;  /* ax_loop_run's result */
} lthr_t;

static void *lthr_main(void *arg) {
  lthr_t *t = arg;
  tl_idx = t->idx;
  t->rc = ax_loop_run(t->loop, AX_RUN_DEFAULT);
  return NULL;
}

/* Run @loop (persistent: until stopped) on a new thread. */
static void lthr_start(lthr_t *t, ax_loop_t *loop, int idx) {
  t->loop = loop;
  t->idx = idx;
  t->rc = -1;
  assert_int_equal(pthread_create(&t->thr, NULL, lthr_main, t), 0);
}

/* Stop the loop (thread-safe) and join its thread; ax_loop_run's result. */
static int lthr_stop(lthr_t *t) {
  ax_loop_stop(t->loop);
  pthread_join(t->thr, NULL);
  return t->rc;
}

/* ---- recorders ---------------------------------------------------------- */

/* What a handoff callback saw. The fields are written before @calls is
 * incremented; read them once @calls says the call happened. */
typedef struct hrec {
  atomic_int calls;
  int status;
  ax_source_t *src;
  pthread_t thr;
  int tl;
  ax_loop_t *loop;
  int fd;
  bool active;
  void *src_data;
  int kind;
  /* If set: whether check_fd was already closed when the callback ran. */
  bool check;
  int check_fd;
  bool closed_in_cb;
  /* If set too: re-open check_fd's number at once (a dup of spare), so a
   * second close by the library would hit this sentinel. */
  bool sentinel;
  int spare;
  bool sentinel_up;
  /* If set: *watch is copied into watched during the call. */
  const int *watch;
  int watched;
} hrec_t;

static void hcb(ax_source_t *src, int status, void *data) {
  hrec_t *h = data;
  h->status = status;
  h->src = src;
  h->thr = pthread_self();
  h->tl = tl_idx;
  if (src != NULL) {
    h->loop = ax_source_loop(src);
    h->fd = ax_io_fd(src);
    h->active = ax_source_is_active(src);
    h->src_data = ax_source_data(src);
    h->kind = (int)ax_source_kind(src);
  }
  if (h->check) {
    h->closed_in_cb = fd_closed(h->check_fd);
    if (h->sentinel && h->closed_in_cb)
      h->sentinel_up = dup3(h->spare, h->check_fd, O_CLOEXEC) == h->check_fd;
  }
  if (h->watch)
    h->watched = *h->watch;
  atomic_fetch_add(&h->calls, 1);
}

/* What an io callback saw (atomics: it may run on another thread). */
typedef struct irec {
  atomic_int calls;
  atomic_int on_main; /* calls on the main thread */
  atomic_uint all;    /* OR of every revents */
  atomic_int tl;      /* thread of the last call */
  atomic_int fd;
  _Atomic(ax_source_t *) src;
  atomic_int bad; /* ax_source_data(src) was not this record */
  bool drain;     /* read everything on readable/hang-up */
} irec_t;

static void icb(ax_source_t *src, int fd, unsigned revents, void *data) {
  irec_t *r = data;
  if (ax_source_data(src) != data)
    atomic_fetch_add(&r->bad, 1);
  if (r->drain && (revents & (AX_READABLE | AX_HANGUP))) {
    char buf[4096];
    while (read(fd, buf, sizeof buf) > 0) {
    }
  }
  atomic_store(&r->src, src);
  atomic_store(&r->fd, fd);
  atomic_store(&r->tl, tl_idx);
  atomic_fetch_or(&r->all, revents);
  if (tl_idx == TL_MAIN)
    atomic_fetch_add(&r->on_main, 1);
  atomic_fetch_add(&r->calls, 1);
}

static ax_source_t *io_on(ax_loop_t *loop, int fd, irec_t *r, unsigned ev) {
  ax_source_t *s = NULL;
  assert_int_equal(ax_io_new(loop, fd, icb, r, &s), 0);
  if (ev)
    assert_int_equal(ax_io_start(s, ev), 0);
  return s;
}

/* Hand @s to @b (run on this thread) and return the adopted source. */
static ax_source_t *move_to(ax_source_t *s, ax_loop_t *b, hrec_t *h) {
  assert_int_equal(ax_io_handoff(s, b, hcb, h), 0);
  assert_int_equal(atomic_load(&h->calls), 0); /* never synchronous */
  assert_true(RUN_UNTIL(b, atomic_load(&h->calls) >= 1, 5000));
  assert_int_equal(atomic_load(&h->calls), 1);
  assert_int_equal(h->status, 0);
  assert_non_null(h->src);
  assert_ptr_equal(h->loop, b);
  assert_int_equal(h->kind, AX_SOURCE_IO);
  assert_int_equal(h->tl, TL_MAIN);
  return h->src;
}

/* ---- basic -------------------------------------------------------------- */

static void test_basic(void **state) {
  (void)state;
  guard_start("test_basic", 60);
  ax_loop_t *a = ax_test_loop();
  ax_loop_t *b = ax_test_loop_opts(ax_test_backend, 0, 0, true);
  int sv[2];
  sp_new(sv);
  irec_t r = {.drain = true};
  ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE);
  put(sv[1], 3);
  assert_true(RUN_UNTIL(a, atomic_load(&r.calls) >= 1, 5000));
  assert_int_equal(atomic_load(&r.tl), TL_MAIN);
  assert_ptr_equal(atomic_load(&r.src), s);
  ax_loop_info_t ia0 = info_of(a);

  lthr_t tb;
  lthr_start(&tb, b, 1);
  put(sv[1], 2); /* unread at the handoff: B must report it */
  hrec_t h = {.fd = -1};
  assert_int_equal(ax_io_handoff(s, b, hcb, &h), 0);
  /* Gone from A at once. */
  ax_loop_info_t ia1 = info_of(a);
  assert_int_equal(ia1.sources, ia0.sources - 1);
  assert_int_equal(ia1.active, ia0.active - 1);
  assert_int_equal(ia1.referenced, ia0.referenced - 1);
  AX_ASSERT_VERIFIED(a);

  bool adopted = wait_ge(&h.calls, 1, 20);
  bool pending_seen = adopted && wait_ge(&r.calls, 2, 20);
  run_for(a, 20); /* A has nothing for the fd any more */
  put(sv[1], 1);
  bool fresh_seen = pending_seen && wait_ge(&r.calls, 3, 20);
  int rc = lthr_stop(&tb);
  assert_true(adopted);
  assert_true(pending_seen);
  assert_true(fresh_seen);
  assert_int_equal(rc, 0);

  assert_int_equal(atomic_load(&h.calls), 1);
  assert_int_equal(h.status, 0);
  assert_non_null(h.src);
  assert_true(pthread_equal(h.thr, tb.thr));
  assert_false(pthread_equal(h.thr, pthread_self()));
  assert_int_equal(h.tl, 1);
  assert_ptr_equal(h.loop, b);
  assert_int_equal(h.fd, sv[0]);
  assert_true(h.active);
  assert_ptr_equal(h.src_data, &r);
  assert_int_equal(h.kind, AX_SOURCE_IO);

  assert_int_equal(atomic_load(&r.calls), 3);
  assert_int_equal(atomic_load(&r.on_main), 1);
  assert_int_equal(atomic_load(&r.tl), 1);
  assert_ptr_equal(atomic_load(&r.src), h.src);
  assert_int_equal(atomic_load(&r.fd), sv[0]);
  assert_int_equal(atomic_load(&r.bad), 0);
  assert_false(atomic_load(&r.all) & AX_WRITABLE); /* interest: readable */

  ax_loop_info_t ib = info_of(b);
  assert_int_equal(ib.sources, 1);
  assert_int_equal(ib.active, 1);
  assert_int_equal(ib.handoffs_adopted, 1);
  assert_int_equal(ib.handoffs_failed, 0);
  AX_ASSERT_VERIFIED(b);
  ax_loop_info_t ia2 = info_of(a);
  assert_int_equal(ia2.handoffs_adopted, 0);
  assert_int_equal(ia2.handoffs_failed, 0);
  assert_int_equal(ia2.sources, 0);
  AX_ASSERT_VERIFIED(a);

  ax_source_free(h.src);
  AX_ASSERT_VERIFIED(b);
  AX_FREE_LOOP(b);
  AX_FREE_LOOP(a);
  assert_true(fd_open(sv[0])); /* the caller's fd, not the loop's */
  close2(sv);
  guard_stop();
}

/* ---- interest and mode -------------------------------------------------- */

static void test_modes(void **state) {
  (void)state;
  ax_loop_t *a = ax_test_loop();
  ax_loop_t *b = ax_test_loop();
  int sv[2];

  /* readable | writable */
  {
    sp_new(sv);
    irec_t r = {.drain = true};
    ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE | AX_WRITABLE);
    hrec_t h = {.fd = -1};
    ax_source_t *n = move_to(s, b, &h);
    assert_true(h.active);
    assert_int_equal(h.fd, sv[0]);
    assert_ptr_equal(h.src_data, &r);
    assert_true(RUN_UNTIL(b, atomic_load(&r.calls) >= 2, 5000));
    assert_true(atomic_load(&r.all) & AX_WRITABLE);
    put(sv[1], 1);
    assert_true(RUN_UNTIL(b, atomic_load(&r.all) & AX_READABLE, 5000));
    assert_ptr_equal(atomic_load(&r.src), n);
    assert_int_equal(atomic_load(&r.bad), 0);
    ax_source_free(n);
    close2(sv);
  }

  /* edge-triggered: an edge A already reported, undrained, is reported
   * again by B (the bytes are still there); then one call per new edge */
  if (edge_backend()) {
    sp_new(sv);
    irec_t r = {0}; /* never reads */
    ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE | AX_IO_EDGE);
    put(sv[1], 1);
    assert_true(RUN_UNTIL(a, atomic_load(&r.calls) >= 1, 5000));
    run_for(a, 20);
    assert_int_equal(atomic_load(&r.calls), 1);
    hrec_t h = {.fd = -1};
    ax_source_t *n = move_to(s, b, &h);
    assert_true(h.active);
    assert_true(RUN_UNTIL(b, atomic_load(&r.calls) >= 2, 5000));
    run_for(b, 30);
    assert_int_equal(atomic_load(&r.calls), 2); /* level would repeat */
    put(sv[1], 1);
    assert_true(RUN_UNTIL(b, atomic_load(&r.calls) >= 3, 5000));
    run_for(b, 30);
    assert_int_equal(atomic_load(&r.calls), 3);
    assert_ptr_equal(atomic_load(&r.src), n);
    assert_true(ax_source_is_active(n));
    ax_source_free(n);
    close2(sv);
  }

  /* oneshot: one report on B, then inactive until started again */
  {
    sp_new(sv);
    irec_t r = {0};
    ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE | AX_IO_ONESHOT);
    put(sv[1], 1);
    hrec_t h = {.fd = -1};
    ax_source_t *n = move_to(s, b, &h);
    assert_true(h.active);
    assert_true(RUN_UNTIL(b, atomic_load(&r.calls) >= 1, 5000));
    assert_false(ax_source_is_active(n));
    run_for(b, 30);
    assert_int_equal(atomic_load(&r.calls), 1);
    assert_int_equal(ax_io_start(n, AX_READABLE | AX_IO_ONESHOT), 0);
    assert_true(RUN_UNTIL(b, atomic_load(&r.calls) >= 2, 5000));
    assert_false(ax_source_is_active(n));
    assert_ptr_equal(atomic_load(&r.src), n);
    ax_source_free(n);
    close2(sv);
  }

  /* inactive: never started / started then stopped / oneshot fired on A */
  for (int v = 0; v < 3; v++) {
    sp_new(sv);
    irec_t r = {.drain = true};
    ax_source_t *s = io_on(a, sv[0], &r, 0);
    if (v == 1) {
      assert_int_equal(ax_io_start(s, AX_READABLE | AX_WRITABLE), 0);
      assert_int_equal(ax_source_stop(s), 0);
    } else if (v == 2) {
      assert_int_equal(ax_io_start(s, AX_READABLE | AX_IO_ONESHOT), 0);
      put(sv[1], 1);
      assert_true(RUN_UNTIL(a, atomic_load(&r.calls) >= 1, 5000));
    }
    assert_false(ax_source_is_active(s));
    int before = atomic_load(&r.calls);
    put(sv[1], 1); /* pending, but nobody asked */
    ax_loop_info_t ib0 = info_of(b);
    hrec_t h = {.fd = -1};
    ax_source_t *n = move_to(s, b, &h);
    assert_false(h.active);
    assert_false(ax_source_is_active(n));
    assert_int_equal(h.fd, sv[0]);
    ax_loop_info_t ib1 = info_of(b);
    assert_int_equal(ib1.sources, ib0.sources + 1);
    assert_int_equal(ib1.active, ib0.active);
    assert_false(ax_loop_alive(b));
    AX_ASSERT_VERIFIED(b);
    run_for(b, 30);
    assert_int_equal(atomic_load(&r.calls), before);
    assert_int_equal(ax_io_start(n, AX_READABLE), 0);
    assert_true(RUN_UNTIL(b, atomic_load(&r.calls) > before, 5000));
    assert_ptr_equal(atomic_load(&r.src), n);
    assert_true(atomic_load(&r.all) & AX_READABLE);
    ax_source_free(n);
    close2(sv);
  }

  ax_loop_info_t ib = info_of(b);
  assert_int_equal(ib.handoffs_adopted, edge_backend() ? 6 : 5);
  assert_int_equal(ib.handoffs_failed, 0);
  assert_int_equal(ib.sources, 0);
  AX_ASSERT_VERIFIED(a);
  AX_ASSERT_VERIFIED(b);
  AX_FREE_LOOP(b);
  AX_FREE_LOOP(a);
}

/* ---- errors ------------------------------------------------------------- */

/* An io callback that frees its own source, then tries to hand it off. */
typedef struct freed_ctx {
  ax_loop_t *dest;
  hrec_t *h;
  int calls;
  int rc;
} freed_ctx_t;

static void free_then_handoff_cb(ax_source_t *src, int fd, unsigned revents,
                                 void *data) {
  (void)fd;
  (void)revents;
  freed_ctx_t *c = data;
  c->calls++;
  ax_source_free(src);
  c->rc = ax_io_handoff(src, c->dest, hcb, c->h);
}

/* A post that runs inside ax_loop_free(dest) and tries to reach dest. */
typedef struct shut_ctx {
  ax_source_t *src;
  ax_loop_t *dest;
  hrec_t *h;
  int ran;
  int rc;
  int post_rc;
} shut_ctx_t;

static void noop_post(void *arg) { (void)arg; }

static void shut_post(void *arg) {
  shut_ctx_t *c = arg;
  c->ran++;
  c->rc = ax_io_handoff(c->src, c->dest, hcb, c->h);
  c->post_rc = ax_loop_post(c->dest, noop_post, NULL);
}

static int64_t never_cb(ax_source_t *src, void *data) {
  (void)src;
  (void)data;
  return AX_TIMER_CONTINUE;
}
static void never_wake(ax_source_t *src, void *data) {
  (void)src;
  (void)data;
}

/* @s still belongs to @a, active, and reports there with the same handle. */
static void still_on_a(ax_loop_t *a, ax_source_t *s, int rfd, int wfd,
                       irec_t *r) {
  assert_ptr_equal(ax_source_loop(s), a);
  assert_true(ax_source_is_active(s));
  assert_int_equal(ax_io_fd(s), rfd);
  assert_ptr_equal(ax_source_data(s), r);
  int before = atomic_load(&r->calls);
  put(wfd, 1);
  assert_true(RUN_UNTIL(a, atomic_load(&r->calls) > before, 5000));
  assert_ptr_equal(atomic_load(&r->src), s);
  assert_int_equal(atomic_load(&r->tl), TL_MAIN);
  AX_ASSERT_VERIFIED(a);
}

static void test_errors(void **state) {
  (void)state;
  ax_loop_t *a = ax_test_loop();
  ax_loop_t *b = ax_test_loop();
  int sv[2];
  sp_new(sv);
  irec_t r = {.drain = true};
  ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE);
  hrec_t h = {.fd = -1};
  ax_loop_info_t ia0 = info_of(a);

  assert_int_equal(ax_io_handoff(NULL, b, hcb, &h), -EINVAL);
  assert_int_equal(ax_io_handoff(s, NULL, hcb, &h), -EINVAL);
  assert_int_equal(ax_io_handoff(s, b, NULL, &h), -EINVAL);

  ax_source_t *t = NULL, *w = NULL;
  assert_int_equal(ax_timer_new(a, never_cb, NULL, &t), 0);
  assert_int_equal(ax_timer_start(t, 100000, 0), 0);
  assert_int_equal(ax_io_handoff(t, b, hcb, &h), AX_EKIND);
  assert_true(ax_source_is_active(t));
  assert_ptr_equal(ax_source_loop(t), a);
  assert_int_equal(ax_wake_new(a, never_wake, NULL, &w), 0);
  assert_int_equal(ax_io_handoff(w, b, hcb, &h), AX_EKIND);
  assert_ptr_equal(ax_source_loop(w), a);
  ax_source_free(t);
  ax_source_free(w);

  ax_loop_info_t ia1 = info_of(a);
  assert_int_equal(ia1.sources, ia0.sources);
  assert_int_equal(ia1.active, ia0.active);
  still_on_a(a, s, sv[0], sv[1], &r);

  /* A source freed in its own callback cannot leave. */
  {
    int p[2];
    sp_new(p);
    hrec_t hf = {.fd = -1};
    freed_ctx_t c = {.dest = b, .h = &hf};
    ax_source_t *f = NULL;
    assert_int_equal(ax_io_new(a, p[0], free_then_handoff_cb, &c, &f), 0);
    assert_int_equal(ax_io_start(f, AX_READABLE), 0);
    put(p[1], 1);
    assert_true(RUN_UNTIL(a, c.calls >= 1, 5000));
    assert_int_equal(c.calls, 1);
    assert_int_equal(c.rc, -EINVAL);
    run_for(b, 20);
    assert_int_equal(atomic_load(&hf.calls), 0);
    assert_true(fd_open(p[0]));
    close2(p);
  }

  /* A destination being freed: -ESHUTDOWN, nothing moved. */
  {
    ax_loop_t *d = ax_test_loop();
    hrec_t hd = {.fd = -1};
    shut_ctx_t c = {.src = s, .dest = d, .h = &hd};
    assert_int_equal(ax_loop_post(d, shut_post, &c), 0);
    AX_FREE_LOOP(d);
    assert_int_equal(c.ran, 1);
    assert_int_equal(c.rc, -ESHUTDOWN);
    assert_int_equal(c.post_rc, -ESHUTDOWN);
    assert_int_equal(atomic_load(&hd.calls), 0);
  }
  still_on_a(a, s, sv[0], sv[1], &r);

  run_for(b, 20);
  assert_int_equal(atomic_load(&h.calls), 0);
  ax_loop_info_t ib = info_of(b);
  assert_int_equal(ib.handoffs_adopted, 0);
  assert_int_equal(ib.handoffs_failed, 0);
  assert_int_equal(ib.sources, 0);
  assert_int_equal(atomic_load(&r.on_main), atomic_load(&r.calls));

  /* And after all that, the source still moves. */
  ax_source_t *n = move_to(s, b, &h);
  put(sv[1], 1);
  int before = atomic_load(&r.calls);
  assert_true(RUN_UNTIL(b, atomic_load(&r.calls) > before, 5000));
  assert_ptr_equal(atomic_load(&r.src), n);
  ax_source_free(n);
  AX_ASSERT_VERIFIED(a);
  AX_ASSERT_VERIFIED(b);
  AX_FREE_LOOP(b);
  AX_FREE_LOOP(a);
  close2(sv);
}

/* ---- traffic while moving ----------------------------------------------- */

#define TR_LOOPS 3

/* Byte @i of the stream: a shifted, duplicated or dropped piece shows. */
static unsigned char stream_byte(size_t i) {
  return (unsigned char)(((uint64_t)i * UINT64_C(0x9E3779B97F4A7C15)) >> 56);
}

typedef struct traffic {
  /* set before the threads start; read-only afterwards */
  ax_loop_t *loops[TR_LOOPS];
  int fd;
  bool edge;
  size_t total;
  int per_owner; /* reads on one loop before moving on */
  /* owned by whoever owns the source: the handoff is the only edge */
  int owner; /* index of the loop that owns the source */
  int next;  /* destination of the handoff in flight */
  int reads; /* since the source arrived */
  size_t pos;
  uint64_t rng;
  uint64_t handoffs, forwarded, arrivals[TR_LOOPS], io_calls, reads_total;
  uint64_t arrivals_total;
  bool fd_lost; /* a failed handoff closed it */
  int errors;
  char err[240];
  atomic_int done;
} traffic_t;

static void tr_fail(traffic_t *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void tr_fail(traffic_t *t, const char *fmt, ...) {
  if (t->errors++ == 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->err, sizeof t->err, fmt, ap);
    va_end(ap);
  }
}

/* End the run from the owner's thread. */
static void tr_end(traffic_t *t, ax_source_t *src) {
  if (src)
    ax_source_free(src);
  atomic_store(&t->done, 1);
}

static void tr_handoff_cb(ax_source_t *src, int status, void *data);

/* Hand the source to the next loop. After a 0 return @t belongs to the new
 * owner: the caller must not touch it any more. */
static int tr_pass(traffic_t *t, ax_source_t *src) {
  int next = (t->owner + 1) % TR_LOOPS;
  t->next = next;
  t->handoffs++;
  t->reads = 0;
  int rc = ax_io_handoff(src, t->loops[next], tr_handoff_cb, t);
  if (rc != 0) {
    t->handoffs--;
    tr_fail(t, "ax_io_handoff: %s", ax_err_name(rc));
    tr_end(t, src);
  }
  return rc;
}

static void tr_handoff_cb(ax_source_t *src, int status, void *data) {
  traffic_t *t = data;
  if (status != 0 || src == NULL) {
    t->fd_lost = true;
    tr_fail(t, "handoff %llu failed: %s", (unsigned long long)t->handoffs,
            ax_err_name(status));
    tr_end(t, NULL);
    return;
  }
  if (tl_idx != t->next + 1)
    tr_fail(t, "handoff callback on thread %d, expected %d", tl_idx,
            t->next + 1);
  if (ax_source_loop(src) != t->loops[t->next])
    tr_fail(t, "adopted source in the wrong loop");
  if (ax_io_fd(src) != t->fd)
    tr_fail(t, "adopted fd %d, expected %d", ax_io_fd(src), t->fd);
  if (!ax_source_is_active(src))
    tr_fail(t, "adopted source inactive");
  if (ax_source_data(src) != t)
    tr_fail(t, "adopted source lost its data");
  if (t->errors) {
    tr_end(t, src);
    return;
  }
  t->owner = t->next;
  t->arrivals[t->owner]++;
  /* Every 7th arrival moves straight on, from the handoff callback. */
  if (t->arrivals_total++ % 7 == 6) {
    t->forwarded++;
    tr_pass(t, src);
  }
}

static void tr_io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)revents;
  traffic_t *t = data;
  if (tl_idx != t->owner + 1 || ax_source_loop(src) != t->loops[t->owner] ||
      fd != t->fd) {
    tr_fail(t, "io callback on thread %d (fd %d) while loop %d owns it",
            tl_idx, fd, t->owner);
    tr_end(t, src);
    return;
  }
  t->io_calls++;
  unsigned char buf[4096];
  for (;;) {
    if (t->reads >= t->per_owner) {
      tr_pass(t, src);
      return;
    }
    size_t want = 1 + (size_t)(xorshift(&t->rng) % sizeof buf);
    ssize_t n = read(fd, buf, want);
    if (n > 0) {
      if ((size_t)n > t->total - t->pos) {
        tr_fail(t, "%zd bytes at %zu: past the end (%zu)", n, t->pos,
                t->total);
        tr_end(t, src);
        return;
      }
      for (ssize_t i = 0; i < n; i++) {
        if (buf[i] != stream_byte(t->pos + (size_t)i)) {
          tr_fail(t, "byte %zu: got %u, expected %u", t->pos + (size_t)i,
                  buf[i], stream_byte(t->pos + (size_t)i));
          tr_end(t, src);
          return;
        }
      }
      t->pos += (size_t)n;
      t->reads++;
      t->reads_total++;
      if (t->pos == t->total) {
        tr_end(t, src);
        return;
      }
      if (!t->edge)
        return; /* level: one read per call */
      continue;
    }
    if (n == 0) {
      tr_fail(t, "EOF at %zu of %zu", t->pos, t->total);
      tr_end(t, src);
      return;
    }
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN) {
      tr_fail(t, "read: %s", strerror(errno));
      tr_end(t, src);
    }
    return;
  }
}

typedef struct writer {
  int fd;
  size_t total;
  size_t written;
  int err;
  uint64_t seed;
  atomic_int abort;
} writer_t;

static void *writer_main(void *arg) {
  writer_t *w = arg;
  static _Thread_local unsigned char buf[16384];
  uint64_t rng = w->seed;
  while (w->written < w->total) {
    size_t n = 1 + (size_t)(xorshift(&rng) % sizeof buf);
    if (n > w->total - w->written)
      n = w->total - w->written;
    for (size_t i = 0; i < n; i++)
      buf[i] = stream_byte(w->written + i);
    size_t off = 0;
    while (off < n) {
      if (atomic_load(&w->abort))
        return NULL;
      ssize_t k = send(w->fd, buf + off, n - off, MSG_NOSIGNAL);
      if (k > 0) {
        off += (size_t)k;
      } else if (k < 0 && errno == EAGAIN) {
        struct pollfd p = {.fd = w->fd, .events = POLLOUT};
        poll(&p, 1, 100);
      } else if (!(k < 0 && errno == EINTR)) {
        w->err = k < 0 ? errno : EIO;
        return NULL;
      }
    }
    w->written += n;
  }
  return NULL;
}

/* True if an io_uring loop really gets io_uring (quietly). */
static bool uring_ok(void) {
  static int ok = -1;
  if (ok < 0) {
    ax_loop_t *l = NULL;
    ax_loop_options_t o;
    ax_loop_options_init(&o);
    o.backend = AX_BACKEND_URING;
    ok = 0;
    if (ax_loop_new(&o, &l) == 0) {
      ax_loop_info_t in;
      ax_loop_info(l, &in);
      ok = in.fallback_reason == NULL;
      ax_loop_free(l);
    }
  }
  return ok == 1;
}

/* @mixed: the three loops use three different backends, starting with the
 * group's (level only: poll and select have no edge mode). @spin_ns: the
 * loops busy-wait that long for a message before blocking. */
static void run_traffic(bool edge, bool tcp, bool mixed, uint32_t spin_ns) {
  const char *be = ax_test_backend_name(ax_test_backend);
  if (edge && !edge_backend()) {
    printf("  (%s: no edge-triggered mode; covered by level)\n", be);
    return;
  }
  ax_backend_t bes[TR_LOOPS];
  char names[64] = "";
  {
    ax_backend_t all[4] = {AX_BACKEND_EPOLL, AX_BACKEND_POLL,
                           AX_BACKEND_SELECT, AX_BACKEND_URING};
    int n = uring_ok() ? 4 : 3, g = 0;
    for (int i = 0; i < n; i++)
      if (all[i] == ax_test_backend)
        g = i;
    for (int i = 0; i < TR_LOOPS; i++) {
      bes[i] = mixed ? all[(g + i) % n] : ax_test_backend;
      if (mixed)
        snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s",
                 i ? "+" : "", ax_test_backend_name(bes[i]));
    }
    if (mixed)
      be = names;
  }
  guard_start("traffic", 150);
  static traffic_t t;
  memset(&t, 0, sizeof t);
  int sv[2];
  if (tcp)
    tcp_pair(sv);
  else
    sp_new(sv);
  for (int i = 0; i < TR_LOOPS; i++) {
    ax_loop_options_t o;
    ax_loop_options_init(&o);
    o.backend = bes[i];
    o.persistent = true;
    o.spin_ns = spin_ns;
    assert_int_equal(ax_loop_new(&o, &t.loops[i]), 0);
  }
  t.fd = sv[0];
  t.edge = edge;
  t.total = scaled((size_t)16 << 20);
  t.per_owner = 4;
  t.rng = UINT64_C(0x2545F4914F6CDD1D);
  ax_source_t *s = NULL;
  assert_int_equal(ax_io_new(t.loops[0], sv[0], tr_io_cb, &t, &s), 0);
  assert_int_equal(ax_io_start(s, AX_READABLE | (edge ? AX_IO_EDGE : 0)), 0);

  lthr_t th[TR_LOOPS];
  for (int i = 0; i < TR_LOOPS; i++)
    lthr_start(&th[i], t.loops[i], i + 1);
  writer_t w = {.fd = sv[1], .total = t.total, .seed = 77};
  pthread_t wt;
  assert_int_equal(pthread_create(&wt, NULL, writer_main, &w), 0);

  bool ok = wait_ge(&t.done, 1, 120);
  if (!ok)
    atomic_store(&w.abort, 1);
  int rcs[TR_LOOPS];
  for (int i = 0; i < TR_LOOPS; i++)
    rcs[i] = lthr_stop(&th[i]);
  atomic_store(&w.abort, 1);
  pthread_join(wt, NULL);
  /* Every thread is joined: the main thread may read everything now. */
  if (!ok)
    fail_msg("traffic did not finish: %zu of %zu bytes, %llu handoffs, "
             "owner %d, next %d",
             t.pos, t.total, (unsigned long long)t.handoffs, t.owner, t.next);
  if (t.errors)
    fail_msg("%d error(s), first: %s", t.errors, t.err);
  for (int i = 0; i < TR_LOOPS; i++)
    assert_int_equal(rcs[i], 0);
  assert_int_equal(w.err, 0);
  assert_int_equal(w.written, t.total);
  assert_int_equal(t.pos, t.total);
  /* A handoff after every per_owner reads (bar the last stretch), plus the
   * forwarded ones. */
  assert_true(t.handoffs + 1 >= t.reads_total / (uint64_t)t.per_owner);
  assert_true(t.handoffs >= t.total / (4096u * (size_t)t.per_owner) - 1);
  assert_true(t.forwarded > 0);
  uint64_t adopted = 0, arrived = 0;
  for (int i = 0; i < TR_LOOPS; i++) {
    ax_loop_info_t in = info_of(t.loops[i]);
    adopted += in.handoffs_adopted;
    arrived += t.arrivals[i];
    assert_int_equal(in.handoffs_adopted, t.arrivals[i]);
    assert_int_equal(in.handoffs_failed, 0);
    assert_int_equal(in.sources, 0);
    assert_true(t.arrivals[i] > 0);
    AX_ASSERT_VERIFIED(t.loops[i]);
    AX_FREE_LOOP(t.loops[i]);
  }
  assert_int_equal(adopted, t.handoffs);
  assert_int_equal(arrived, t.handoffs);
  printf("  %s %s %s%s: %zu bytes in %llu reads, %llu handoffs "
         "(%llu from a handoff callback)\n",
         be, tcp ? "tcp" : "socketpair", edge ? "edge" : "level",
         spin_ns ? " spin" : "", t.pos,
         (unsigned long long)t.reads_total, (unsigned long long)t.handoffs,
         (unsigned long long)t.forwarded);
  if (t.fd_lost)
    sv[0] = -1;
  close2(sv);
  guard_stop();
}

static void test_traffic_level(void **state) {
  (void)state;
  run_traffic(false, false, false, 0);
}
static void test_traffic_edge(void **state) {
  (void)state;
  run_traffic(true, false, false, 0);
}
static void test_traffic_tcp_level(void **state) {
  (void)state;
  run_traffic(false, true, false, 0);
}
static void test_traffic_tcp_edge(void **state) {
  (void)state;
  run_traffic(true, true, false, 0);
}
static void test_traffic_spin(void **state) {
  (void)state;
  run_traffic(edge_backend(), false, false, 20000);
}
static void test_traffic_mixed(void **state) {
  (void)state;
  run_traffic(false, false, true, 0);
}

/* ---- handing off another source of the same batch ----------------------- */

/* Two sources of A are ready in the same wait; whichever callback runs first
 * hands the other one to B (on its thread). The event A already collected
 * for it must not be delivered on A; B reports the bytes instead. */
typedef struct pair_ctx {
  ax_source_t *src[2];
  irec_t rec[2];
  bool moved[2];
  int rc;
  ax_loop_t *dest;
  hrec_t *h;
  int first; /* index of the source whose callback ran first on A */
} pair_ctx_t;

typedef struct pair_side {
  pair_ctx_t *c;
  int i;
} pair_side_t;

static void pair_cb(ax_source_t *src, int fd, unsigned revents, void *data);

/* The io data is the side; the record of the side is c->rec[i]. */
static void pair_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  pair_side_t *sd = data;
  pair_ctx_t *c = sd->c;
  irec_t *r = &c->rec[sd->i];
  char buf[64];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  atomic_store(&r->src, src);
  atomic_store(&r->tl, tl_idx);
  atomic_fetch_or(&r->all, revents);
  if (tl_idx == TL_MAIN) {
    atomic_fetch_add(&r->on_main, 1);
    int other = 1 - sd->i;
    if (c->first < 0) {
      c->first = sd->i;
      c->moved[other] = true;
      c->rc = ax_io_handoff(c->src[other], c->dest, hcb, c->h);
    }
  }
  atomic_fetch_add(&r->calls, 1);
}

static void test_other_in_batch(void **state) {
  (void)state;
  guard_start("test_other_in_batch", 60);
  ax_loop_t *a = ax_test_loop();
  ax_loop_t *b = ax_test_loop_opts(ax_test_backend, 0, 0, true);
  lthr_t tb;
  lthr_start(&tb, b, 1);
  int sv[2][2];
  hrec_t h = {.fd = -1};
  static pair_ctx_t c;
  memset(&c, 0, sizeof c);
  c.first = -1;
  c.dest = b;
  c.h = &h;
  pair_side_t side[2] = {{&c, 0}, {&c, 1}};
  for (int i = 0; i < 2; i++) {
    sp_new(sv[i]);
    assert_int_equal(ax_io_new(a, sv[i][0], pair_cb, &side[i], &c.src[i]), 0);
    assert_int_equal(ax_io_start(c.src[i], AX_READABLE), 0);
    put(sv[i][1], 1);
  }
  /* Both are ready before the wait: one batch. */
  assert_int_equal(ax_loop_run(a, AX_RUN_ONCE), 0);
  run_for(a, 30);
  int first = c.first;
  bool adopted = wait_ge(&h.calls, 1, 20);
  bool reported = first >= 0 && adopted &&
                  wait_ge(&c.rec[1 - first].calls, 1, 20);
  int rc = lthr_stop(&tb);
  assert_int_equal(rc, 0);
  assert_true(first >= 0);
  int other = 1 - first;
  assert_int_equal(c.rc, 0);
  assert_true(adopted);
  assert_true(reported);
  assert_int_equal(h.status, 0);
  assert_int_equal(h.fd, sv[other][0]);
  assert_ptr_equal(h.src_data, &side[other]);
  /* The moved source never ran on A, ran once on B. */
  assert_int_equal(atomic_load(&c.rec[other].on_main), 0);
  assert_int_equal(atomic_load(&c.rec[other].calls), 1);
  assert_int_equal(atomic_load(&c.rec[other].tl), 1);
  assert_ptr_equal(atomic_load(&c.rec[other].src), h.src);
  assert_int_equal(atomic_load(&c.rec[first].calls), 1);
  assert_int_equal(atomic_load(&c.rec[first].on_main), 1);
  ax_loop_info_t ia = info_of(a);
  assert_int_equal(ia.sources, 1);
  AX_ASSERT_VERIFIED(a);
  AX_ASSERT_VERIFIED(b);
  assert_int_equal(info_of(b).handoffs_adopted, 1);
  ax_source_free(c.src[first]);
  ax_source_free(h.src);
  AX_FREE_LOOP(b);
  AX_FREE_LOOP(a);
  close2(sv[0]);
  close2(sv[1]);
  guard_stop();
}

/* The source's old loop is freed before the destination adopts it: the
 * message carries everything, nothing refers back to the old loop. */
static void test_src_loop_gone(void **state) {
  (void)state;
  ax_loop_t *a = ax_test_loop();
  ax_loop_t *b = ax_test_loop();
  int sv[2];
  sp_new(sv);
  put(sv[1], 1);
  irec_t r = {.drain = true};
  ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE | AX_WRITABLE);
  hrec_t h = {.fd = -1};
  assert_int_equal(ax_io_handoff(s, b, hcb, &h), 0);
  AX_FREE_LOOP(a);
  assert_true(fd_open(sv[0]));
  assert_true(RUN_UNTIL(b,
                        atomic_load(&h.calls) >= 1 &&
                            (atomic_load(&r.all) & AX_READABLE),
                        5000));
  assert_int_equal(h.status, 0);
  assert_true(h.active);
  assert_int_equal(h.fd, sv[0]);
  assert_true(atomic_load(&r.all) & AX_WRITABLE);
  assert_ptr_equal(atomic_load(&r.src), h.src);
  AX_ASSERT_VERIFIED(b);
  ax_source_free(h.src);
  AX_FREE_LOOP(b);
  close2(sv);
}

/* ---- fan-in: two threads hand sources to one running loop at once ------- */

#define FAN_PER 100
#define FAN_SENDERS 2

typedef struct fan_slot {
  int fd, peer;
  ax_source_t *src; /* on the sender's loop, then the adopted one */
  int status;
  int tl;
  ax_loop_t *dest;
  atomic_int io;
  atomic_int *adopted, *failed, *io_total, *bad;
} fan_slot_t;

static void fan_hcb(ax_source_t *src, int status, void *data) {
  fan_slot_t *sl = data;
  sl->status = status;
  sl->src = src;
  sl->tl = tl_idx;
  if (status == 0 && (ax_source_loop(src) != sl->dest ||
                      ax_io_fd(src) != sl->fd || ax_source_data(src) != sl))
    atomic_fetch_add(sl->bad, 1);
  atomic_fetch_add(status == 0 ? sl->adopted : sl->failed, 1);
}

static void fan_io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  fan_slot_t *sl = data;
  if (tl_idx != 1 || fd != sl->fd || ax_source_loop(src) != sl->dest ||
      !(revents & AX_READABLE))
    atomic_fetch_add(sl->bad, 1);
  char buf[16];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  atomic_fetch_add(&sl->io, 1);
  atomic_fetch_add(sl->io_total, 1);
}

typedef struct sender {
  ax_loop_t *dest;
  fan_slot_t *slots;
  pthread_barrier_t *bar;
  int idx;
  int errors;
} sender_t;

static void *sender_main(void *arg) {
  sender_t *sd = arg;
  tl_idx = sd->idx;
  pthread_barrier_wait(sd->bar);
  for (int i = 0; i < FAN_PER; i++)
    if (ax_io_handoff(sd->slots[i].src, sd->dest, fan_hcb, &sd->slots[i]) != 0)
      sd->errors++;
  return NULL;
}

static void test_fan_in(void **state) {
  (void)state;
  guard_start("test_fan_in", 60);
  static fan_slot_t slots[FAN_SENDERS][FAN_PER];
  atomic_int adopted = 0, failed = 0, io_total = 0, bad = 0;
  ax_loop_t *b = ax_test_loop_opts(ax_test_backend, 0, 0, true);
  ax_loop_t *a[FAN_SENDERS];
  for (int k = 0; k < FAN_SENDERS; k++) {
    a[k] = ax_test_loop();
    for (int i = 0; i < FAN_PER; i++) {
      fan_slot_t *sl = &slots[k][i];
      memset(sl, 0, sizeof *sl);
      int sv[2];
      sp_new(sv);
      sl->fd = sv[0];
      sl->peer = sv[1];
      sl->dest = b;
      sl->adopted = &adopted;
      sl->failed = &failed;
      sl->io_total = &io_total;
      sl->bad = &bad;
      assert_int_equal(ax_io_new(a[k], sl->fd, fan_io_cb, sl, &sl->src), 0);
      assert_int_equal(ax_io_start(sl->src, AX_READABLE), 0);
    }
  }
  lthr_t tb;
  lthr_start(&tb, b, 1);
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, FAN_SENDERS);
  sender_t sd[FAN_SENDERS];
  pthread_t st[FAN_SENDERS];
  for (int k = 0; k < FAN_SENDERS; k++) {
    sd[k] = (sender_t){.dest = b, .slots = slots[k], .bar = &bar,
                       .idx = 10 + k};
    assert_int_equal(pthread_create(&st[k], NULL, sender_main, &sd[k]), 0);
  }
  for (int k = 0; k < FAN_SENDERS; k++)
    pthread_join(st[k], NULL);
  pthread_barrier_destroy(&bar);
  const int total = FAN_SENDERS * FAN_PER;
  bool all_in = wait_ge(&adopted, total, 20);
  for (int k = 0; k < FAN_SENDERS; k++)
    for (int i = 0; i < FAN_PER; i++)
      put(slots[k][i].peer, 1);
  bool all_io = all_in && wait_ge(&io_total, total, 20);
  int rc = lthr_stop(&tb);
  for (int k = 0; k < FAN_SENDERS; k++) {
    assert_int_equal(sd[k].errors, 0);
    ax_loop_info_t ia = info_of(a[k]);
    assert_int_equal(ia.sources, 0);
    AX_ASSERT_VERIFIED(a[k]);
    AX_FREE_LOOP(a[k]);
  }
  assert_true(all_in);
  assert_true(all_io);
  assert_int_equal(rc, 0);
  assert_int_equal(atomic_load(&failed), 0);
  assert_int_equal(atomic_load(&bad), 0);
  for (int k = 0; k < FAN_SENDERS; k++)
    for (int i = 0; i < FAN_PER; i++) {
      assert_int_equal(slots[k][i].status, 0);
      assert_int_equal(slots[k][i].tl, 1);
      assert_int_equal(atomic_load(&slots[k][i].io), 1);
    }
  ax_loop_info_t ib = info_of(b);
  assert_int_equal(ib.handoffs_adopted, total);
  assert_int_equal(ib.handoffs_failed, 0);
  assert_int_equal(ib.sources, total);
  assert_int_equal(ib.active, total);
  AX_ASSERT_VERIFIED(b);
  AX_FREE_LOOP(b); /* frees the adopted sources, leaves the fds */
  for (int k = 0; k < FAN_SENDERS; k++)
    for (int i = 0; i < FAN_PER; i++) {
      assert_true(fd_open(slots[k][i].fd));
      close(slots[k][i].fd);
      close(slots[k][i].peer);
    }
  guard_stop();
}

/* ---- destination freed first -------------------------------------------- */

static void test_dest_freed(void **state) {
  (void)state;
  guard_start("test_dest_freed", 60);
  /* v 0: B never runs; 1: B ran on a thread that has stopped */
  for (int v = 0; v < 2; v++) {
    ax_loop_t *a = ax_test_loop();
    ax_loop_t *b = ax_test_loop_opts(ax_test_backend, 0, 0, v == 1);
    if (v == 1) {
      lthr_t tb;
      lthr_start(&tb, b, 1);
      assert_int_equal(lthr_stop(&tb), 0);
    }
    int sv[2];
    sp_new(sv);
    put(sv[1], 1);
    irec_t r = {.drain = true};
    ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE);
    hrec_t h = {.fd = -1, .check = true, .check_fd = sv[0]};
    assert_int_equal(ax_io_handoff(s, b, hcb, &h), 0);
    assert_int_equal(info_of(a).sources, 0);
    AX_ASSERT_VERIFIED(a);
    ax_loop_info_t ib = info_of(b);
    assert_int_equal(ib.mailbox_depth, 1);
    assert_true(ax_loop_alive(b)); /* the handoff waiting counts */
    assert_int_equal(atomic_load(&h.calls), 0);
    AX_FREE_LOOP(b);
    /* Nothing opened since: the number cannot have been reused. */
    bool closed = fd_closed(sv[0]);
    assert_true(closed);
    sv[0] = -1;
    assert_int_equal(atomic_load(&h.calls), 1);
    assert_int_equal(h.status, -ECANCELED);
    assert_null(h.src);
    assert_int_equal(h.tl, TL_MAIN); /* on the thread that freed B */
    assert_true(h.closed_in_cb);
    assert_int_equal(atomic_load(&r.calls), 0);
    AX_ASSERT_VERIFIED(a);
    AX_FREE_LOOP(a);
    close2(sv);
  }

  /* A handoff racing with a stop (sent after it on even rounds, before it
   * on odd ones): adopted, or cancelled by the free; the callback runs once
   * either way and the fd is closed only if cancelled. */
  int adopted = 0, cancelled = 0;
  ax_loop_t *a = ax_test_loop();
  for (int round = 0; round < 40; round++) {
    ax_loop_t *b = ax_test_loop_opts(ax_test_backend, 0, 0, true);
    lthr_t tb;
    lthr_start(&tb, b, 1);
    int sv[2];
    sp_new(sv);
    irec_t r = {.drain = true};
    ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE);
    hrec_t h = {.fd = -1};
    if (round % 2)
      ax_loop_stop(b);
    assert_int_equal(ax_io_handoff(s, b, hcb, &h), 0);
    assert_int_equal(lthr_stop(&tb), 0);
    int before = atomic_load(&h.calls);
    assert_true(before <= 1);
    if (before == 1)
      AX_ASSERT_VERIFIED(b);
    AX_FREE_LOOP(b);
    assert_int_equal(atomic_load(&h.calls), 1);
    if (h.status == 0) {
      assert_int_equal(before, 1);
      assert_true(fd_open(sv[0]));
      adopted++;
    } else {
      assert_int_equal(h.status, -ECANCELED);
      assert_null(h.src);
      assert_true(fd_closed(sv[0]));
      sv[0] = -1;
      cancelled++;
    }
    close2(sv);
  }
  AX_FREE_LOOP(a);
  printf("  handoff then stop: %d adopted, %d cancelled\n", adopted,
         cancelled);
  guard_stop();
}

/* Many handoffs cancelled at once; every other callback re-opens the
 * closed number at once (a sentinel), which a second close would hit. */
#define NMANY 1000

typedef struct many_slot {
  int fd;
  int spare;
  bool sentinel;
  int calls;
  int status;
  ax_source_t *src;
  int tl;
  bool closed_in_cb;
  bool sentinel_up;
} many_slot_t;

static void many_hcb(ax_source_t *src, int status, void *data) {
  many_slot_t *sl = data;
  sl->calls++;
  sl->status = status;
  sl->src = src;
  sl->tl = tl_idx;
  sl->closed_in_cb = fd_closed(sl->fd);
  if (sl->sentinel && sl->closed_in_cb)
    sl->sentinel_up = dup3(sl->spare, sl->fd, O_CLOEXEC) == sl->fd;
}

static void test_dest_freed_many(void **state) {
  (void)state;
  struct rlimit old;
  if (!nofile_at_least(NMANY + 256, &old)) {
    printf("  skipped: cannot raise RLIMIT_NOFILE to %d\n", NMANY + 256);
    skip();
  }
  guard_start("test_dest_freed_many", 60);
  static many_slot_t slot[NMANY];
  static ax_source_t *src[NMANY];
  /* A on epoll: the numbers may pass FD_SETSIZE. */
  ax_loop_t *a = ax_test_loop_on(AX_BACKEND_EPOLL);
  ax_loop_t *b = ax_test_loop();
  int sv[2];
  sp_new(sv);
  irec_t r = {0};
  for (int i = 0; i < NMANY; i++) {
    int fd = fcntl(sv[0], F_DUPFD_CLOEXEC, 0);
    assert_true(fd >= 0);
    slot[i] = (many_slot_t){.fd = fd, .spare = sv[1], .sentinel = i % 2 == 0};
    src[i] = io_on(a, fd, &r, i % 3 ? AX_READABLE : 0);
  }
  for (int i = 0; i < NMANY; i++)
    assert_int_equal(ax_io_handoff(src[i], b, many_hcb, &slot[i]), 0);
  ax_loop_info_t ia = info_of(a);
  assert_int_equal(ia.sources, 0);
  assert_int_equal(ia.active, 0);
  AX_ASSERT_VERIFIED(a);
  assert_int_equal(info_of(b).mailbox_depth, NMANY);
  AX_FREE_LOOP(b);
  for (int i = 0; i < NMANY; i++) {
    many_slot_t *sl = &slot[i];
    if (sl->calls != 1 || sl->status != -ECANCELED || sl->src != NULL ||
        sl->tl != TL_MAIN || !sl->closed_in_cb)
      fail_msg("handoff %d (fd %d): %d calls, status %s, src %p, thread %d, "
               "%s in the callback",
               i, sl->fd, sl->calls, ax_err_name(sl->status),
               (void *)sl->src, sl->tl, sl->closed_in_cb ? "closed" : "open");
    if (sl->sentinel) {
      assert_true(sl->sentinel_up);
      if (!fd_open(sl->fd))
        fail_msg("fd %d closed a second time after its callback", sl->fd);
    } else if (!fd_closed(sl->fd)) {
      fail_msg("fd %d still open after ax_loop_free", sl->fd);
    }
  }
  for (int i = 0; i < NMANY; i++)
    if (slot[i].sentinel)
      close(slot[i].fd);
  assert_int_equal(atomic_load(&r.calls), 0);
  AX_FREE_LOOP(a);
  close2(sv);
  guard_stop();
  setrlimit(RLIMIT_NOFILE, &old);
}

/* ---- destination full --------------------------------------------------- */

static void count_post(void *arg) { ++*(int *)arg; }

static void test_dest_full(void **state) {
  (void)state;
  ax_loop_t *a = ax_test_loop();
  ax_loop_t *b = ax_test_loop_opts(ax_test_backend, 4, 0, false);
  int ran = 0;
  for (int i = 0; i < 4; i++)
    assert_int_equal(ax_loop_post(b, count_post, &ran), 0);
  assert_int_equal(ax_loop_post(b, count_post, &ran), -EAGAIN);
  int sv[2];
  sp_new(sv);
  put(sv[1], 1);
  irec_t r = {.drain = true};
  ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE);
  hrec_t h = {.fd = -1, .watch = &ran};
  assert_int_equal(ax_io_handoff(s, b, hcb, &h), 0);
  assert_int_equal(info_of(b).mailbox_depth, 5);
  assert_int_equal(ax_loop_post(b, count_post, &ran), -EAGAIN);
  assert_int_equal(ran, 0);
  assert_int_equal(atomic_load(&h.calls), 0);

  assert_true(RUN_UNTIL(b,
                        atomic_load(&h.calls) >= 1 &&
                            atomic_load(&r.calls) >= 1,
                        5000));
  assert_int_equal(ran, 4);
  assert_int_equal(h.watched, 4); /* the posts queued first ran first */
  assert_int_equal(h.status, 0);
  assert_int_equal(h.fd, sv[0]);
  assert_ptr_equal(atomic_load(&r.src), h.src);
  ax_loop_info_t ib = info_of(b);
  assert_int_equal(ib.handoffs_adopted, 1);
  assert_int_equal(ib.posts_run, 4);
  assert_int_equal(ib.mailbox_depth, 0);
  assert_int_equal(ax_loop_post(b, count_post, &ran), 0);
  assert_true(RUN_UNTIL(b, ran >= 5, 5000));
  AX_ASSERT_VERIFIED(b);
  ax_source_free(h.src);
  AX_FREE_LOOP(b);
  AX_FREE_LOOP(a);
  close2(sv);
}

/* ---- adoption failures -------------------------------------------------- */

/* fd >= FD_SETSIZE: a select destination refuses it (AX_EFDTOOBIG, fd
 * closed); the other backends adopt it. */
static void test_fd_too_big(void **state) {
  (void)state;
  const int big = 1500;
  struct rlimit old;
  if (!nofile_at_least(big + 10, &old)) {
    printf("  skipped: cannot raise RLIMIT_NOFILE to %d\n", big + 10);
    skip();
  }
  if (fcntl(big, F_GETFD) != -1) {
    printf("  skipped: fd %d already in use\n", big);
    setrlimit(RLIMIT_NOFILE, &old);
    skip();
  }
  ax_loop_t *a = ax_test_loop_on(AX_BACKEND_EPOLL);
  ax_loop_t *b = ax_test_loop();
  int sv[2];
  sp_new(sv);
  assert_int_equal(dup3(sv[0], big, O_CLOEXEC), big);
  irec_t r = {.drain = true};
  ax_source_t *s = io_on(a, big, &r, AX_READABLE);
  put(sv[1], 1);
  hrec_t h = {.fd = -1, .check = true, .check_fd = big};
  assert_int_equal(ax_io_handoff(s, b, hcb, &h), 0);
  assert_true(RUN_UNTIL(b, atomic_load(&h.calls) >= 1, 5000));
  assert_int_equal(atomic_load(&h.calls), 1);
  ax_loop_info_t ib = info_of(b);
  if (ax_test_backend == AX_BACKEND_SELECT) {
    assert_int_equal(h.status, AX_EFDTOOBIG);
    assert_null(h.src);
    assert_true(h.closed_in_cb);
    assert_true(fd_closed(big));
    assert_true(fd_open(sv[0])); /* only the handed-off number */
    assert_int_equal(ib.handoffs_adopted, 0);
    assert_int_equal(ib.handoffs_failed, 1);
    assert_int_equal(ib.sources, 0);
    run_for(b, 20);
    assert_int_equal(atomic_load(&r.calls), 0);
  } else {
    assert_int_equal(h.status, 0);
    assert_int_equal(h.fd, big);
    assert_false(h.closed_in_cb);
    assert_int_equal(ib.handoffs_adopted, 1);
    assert_int_equal(ib.handoffs_failed, 0);
    assert_true(RUN_UNTIL(b, atomic_load(&r.calls) >= 1, 5000));
    assert_int_equal(atomic_load(&r.fd), big);
    ax_source_free(h.src);
    close(big);
  }
  AX_ASSERT_VERIFIED(a);
  AX_ASSERT_VERIFIED(b);
  AX_FREE_LOOP(b);
  AX_FREE_LOOP(a);
  close2(sv);
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
}

/* The destination already watches that fd number: -EEXIST, fd closed.
 * B's own source then holds a closed fd: free it before opening anything. */
static void test_eexist(void **state) {
  (void)state;
  ax_loop_t *a = ax_test_loop();
  ax_loop_t *b = ax_test_loop();
  int sv[2];
  sp_new(sv);
  irec_t rb = {.drain = true};
  ax_source_t *sb = io_on(b, sv[0], &rb, AX_READABLE);
  irec_t ra = {.drain = true};
  ax_source_t *sa = io_on(a, sv[0], &ra, AX_READABLE);
  hrec_t h = {.fd = -1, .check = true, .check_fd = sv[0]};
  assert_int_equal(ax_io_handoff(sa, b, hcb, &h), 0);
  assert_int_equal(info_of(a).sources, 0);
  assert_true(RUN_UNTIL(b, atomic_load(&h.calls) >= 1, 5000));
  bool closed = fd_closed(sv[0]);
  ax_source_free(sb); /* before anything can reuse the number */
  assert_true(closed);
  sv[0] = -1;
  assert_int_equal(atomic_load(&h.calls), 1);
  assert_int_equal(h.status, -EEXIST);
  assert_null(h.src);
  assert_true(h.closed_in_cb);
  ax_loop_info_t ib = info_of(b);
  assert_int_equal(ib.handoffs_adopted, 0);
  assert_int_equal(ib.handoffs_failed, 1);
  assert_int_equal(ib.sources, 0);
  assert_int_equal(atomic_load(&ra.calls), 0);
  AX_ASSERT_VERIFIED(b);
  AX_ASSERT_VERIFIED(a);

  /* B still works for another fd. */
  int p[2];
  sp_new(p);
  irec_t r2 = {.drain = true};
  ax_source_t *s2 = io_on(b, p[0], &r2, AX_READABLE);
  put(p[1], 1);
  assert_true(RUN_UNTIL(b, atomic_load(&r2.calls) >= 1, 5000));
  assert_ptr_equal(atomic_load(&r2.src), s2);
  ax_source_free(s2);
  close2(p);
  AX_FREE_LOOP(b);
  AX_FREE_LOOP(a);
  close2(sv);
}

/* The destination's backend refuses what the source asks for, so
 * ax_io_start fails after ax_io_new succeeded: AX_IO_EDGE moved from epoll
 * to poll or select (-ENOTSUP), a regular file moved from poll to epoll
 * (AX_ENOTPOLLABLE). The fd is closed once (a sentinel re-opened on its
 * number in the callback must survive) and B is left consistent. Where the
 * destination can do it, the source is adopted instead. */
static void test_adopt_refused(void **state) {
  (void)state;
  ax_loop_t *b = ax_test_loop();
  ax_loop_t *ae = ax_test_loop_on(AX_BACKEND_EPOLL);
  ax_loop_t *ap = ax_test_loop_on(AX_BACKEND_POLL);
  int spare[2];
  sp_new(spare);
  uint64_t failed = 0, adopted = 0;

  /* edge-triggered, from epoll */
  {
    int sv[2];
    sp_new(sv);
    irec_t r = {0}; /* never reads */
    ax_source_t *s = io_on(ae, sv[0], &r, AX_READABLE | AX_IO_EDGE);
    put(sv[1], 1);
    hrec_t h = {.fd = -1, .check = true, .check_fd = sv[0], .sentinel = true,
                .spare = spare[0]};
    assert_int_equal(ax_io_handoff(s, b, hcb, &h), 0);
    assert_true(RUN_UNTIL(b, atomic_load(&h.calls) >= 1, 5000));
    assert_int_equal(atomic_load(&h.calls), 1);
    if (edge_backend()) {
      assert_int_equal(h.status, 0);
      assert_true(h.active);
      adopted++;
      assert_true(RUN_UNTIL(b, atomic_load(&r.calls) >= 1, 5000));
      run_for(b, 30);
      assert_int_equal(atomic_load(&r.calls), 1); /* still edge */
      ax_source_free(h.src);
    } else {
      assert_int_equal(h.status, -ENOTSUP);
      assert_null(h.src);
      assert_true(h.closed_in_cb);
      assert_true(h.sentinel_up);
      failed++;
      run_for(b, 30);
      assert_int_equal(atomic_load(&r.calls), 0);
      assert_true(fd_open(sv[0])); /* the sentinel: closed only once */
    }
    ax_loop_info_t ib = info_of(b);
    assert_int_equal(ib.sources, 0);
    assert_int_equal(ib.handoffs_adopted, adopted);
    assert_int_equal(ib.handoffs_failed, failed);
    AX_ASSERT_VERIFIED(b);
    close2(sv);
  }

  /* a regular file, from poll */
  {
    char path[] = "/tmp/axon-handoff-XXXXXX";
    int fd = mkostemp(path, O_CLOEXEC);
    assert_true(fd >= 0);
    unlink(path);
    irec_t r = {0};
    ax_source_t *s = io_on(ap, fd, &r, AX_READABLE);
    hrec_t h = {.fd = -1, .check = true, .check_fd = fd, .sentinel = true,
                .spare = spare[0]};
    assert_int_equal(ax_io_handoff(s, b, hcb, &h), 0);
    assert_true(RUN_UNTIL(b, atomic_load(&h.calls) >= 1, 5000));
    assert_int_equal(atomic_load(&h.calls), 1);
    if (ax_test_backend == AX_BACKEND_EPOLL ||
        (ax_test_backend == AX_BACKEND_URING && h.status != 0)) {
      assert_int_equal(h.status, AX_ENOTPOLLABLE);
      assert_null(h.src);
      assert_true(h.closed_in_cb);
      assert_true(h.sentinel_up);
      failed++;
      run_for(b, 30);
      assert_int_equal(atomic_load(&r.calls), 0);
      assert_true(fd_open(fd)); /* the sentinel */
    } else {
      assert_int_equal(h.status, 0);
      assert_true(h.active);
      adopted++;
      assert_true(RUN_UNTIL(b, atomic_load(&r.calls) >= 1, 5000));
      assert_ptr_equal(atomic_load(&r.src), h.src);
      ax_source_free(h.src);
    }
    ax_loop_info_t ib = info_of(b);
    assert_int_equal(ib.sources, 0);
    assert_int_equal(ib.handoffs_adopted, adopted);
    assert_int_equal(ib.handoffs_failed, failed);
    AX_ASSERT_VERIFIED(b);
    close(fd);
  }

  /* B still adopts afterwards. */
  {
    int sv[2];
    sp_new(sv);
    irec_t r = {.drain = true};
    ax_source_t *s = io_on(ae, sv[0], &r, AX_READABLE);
    put(sv[1], 1);
    hrec_t h = {.fd = -1};
    ax_source_t *n = move_to(s, b, &h);
    assert_true(RUN_UNTIL(b, atomic_load(&r.calls) >= 1, 5000));
    assert_ptr_equal(atomic_load(&r.src), n);
    ax_source_free(n);
    close2(sv);
  }
  AX_ASSERT_VERIFIED(ae);
  AX_ASSERT_VERIFIED(ap);
  AX_ASSERT_VERIFIED(b);
  AX_FREE_LOOP(ae);
  AX_FREE_LOOP(ap);
  AX_FREE_LOOP(b);
  close2(spare);
}

/* Allocation hooks that fail on demand. */
typedef struct failloc {
  bool fail;
  int refused;
} failloc_t;

static void *fl_malloc(size_t n, void *ctx) {
  failloc_t *f = ctx;
  if (f->fail) {
    f->refused++;
    return NULL;
  }
  return malloc(n);
}
static void *fl_realloc(void *p, size_t n, void *ctx) {
  failloc_t *f = ctx;
  if (f->fail) {
    f->refused++;
    return NULL;
  }
  return realloc(p, n);
}
static void fl_free(void *p, void *ctx) {
  (void)ctx;
  free(p);
}

/* The destination cannot allocate the source: -ENOMEM, fd closed once. */
static void test_adopt_enomem(void **state) {
  (void)state;
  failloc_t fl = {0};
  ax_allocator_t al = {fl_malloc, fl_realloc, fl_free, &fl};
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = ax_test_backend;
  o.allocator = &al;
  ax_loop_t *b = NULL;
  assert_int_equal(ax_loop_new(&o, &b), 0);
  ax_loop_t *a = ax_test_loop();
  int spare[2], sv[2];
  sp_new(spare);
  sp_new(sv);
  irec_t r = {.drain = true};
  ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE);
  hrec_t h = {.fd = -1, .check = true, .check_fd = sv[0], .sentinel = true,
              .spare = spare[0]};
  assert_int_equal(ax_io_handoff(s, b, hcb, &h), 0);
  /* The handoff is queued already (this thread pushed it): one NOWAIT
   * iteration drains it while B cannot allocate. */
  fl.fail = true;
  assert_int_equal(ax_loop_run(b, AX_RUN_NOWAIT), 0);
  fl.fail = false;
  assert_int_equal(atomic_load(&h.calls), 1);
  if (h.status == 0) {
    /* Nothing to allocate after all (a free slab slot): not this test's
     * case, but it must then be a proper adoption. */
    assert_int_equal(fl.refused, 0);
    printf("  (adoption needed no allocation)\n");
    ax_source_free(h.src);
  } else {
    assert_true(fl.refused > 0);
    assert_int_equal(h.status, -ENOMEM);
    assert_null(h.src);
    assert_true(h.closed_in_cb);
    assert_true(h.sentinel_up);
    ax_loop_info_t ib = info_of(b);
    assert_int_equal(ib.handoffs_failed, 1);
    assert_int_equal(ib.handoffs_adopted, 0);
    assert_int_equal(ib.sources, 0);
    AX_ASSERT_VERIFIED(b);
    run_for(b, 20);
    assert_true(fd_open(sv[0])); /* the sentinel: closed only once */
  }
  AX_ASSERT_VERIFIED(b);
  /* With memory back, B adopts. */
  int p[2];
  sp_new(p);
  irec_t r2 = {.drain = true};
  ax_source_t *s2 = io_on(a, p[0], &r2, AX_READABLE);
  put(p[1], 1);
  hrec_t h2 = {.fd = -1};
  ax_source_t *n = move_to(s2, b, &h2);
  assert_true(RUN_UNTIL(b, atomic_load(&r2.calls) >= 1, 5000));
  assert_ptr_equal(atomic_load(&r2.src), n);
  ax_source_free(n);
  AX_ASSERT_VERIFIED(b);
  AX_FREE_LOOP(b);
  AX_FREE_LOOP(a);
  close2(p);
  close2(sv);
  close2(spare);
}

/* ---- same loop ---------------------------------------------------------- */

/* Hands its source to its own loop on the first call; reads and frees the
 * adopted one on the second. */
typedef struct self_ctx {
  hrec_t *h;
  int calls;
  int rc;
  ax_source_t *first, *second;
} self_ctx_t;

static void self_handoff_cb(ax_source_t *src, int fd, unsigned revents,
                            void *data) {
  (void)revents;
  self_ctx_t *c = data;
  if (++c->calls == 1) {
    c->first = src;
    c->rc = ax_io_handoff(src, ax_source_loop(src), hcb, c->h);
    return; /* nothing read: the adopted source must report it */
  }
  c->second = src;
  char buf[64];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  ax_source_free(src);
}

static void test_same_loop(void **state) {
  (void)state;
  ax_loop_t *a = ax_test_loop();
  int sv[2];
  sp_new(sv);

  /* From outside a run. */
  put(sv[1], 1);
  irec_t r = {.drain = true};
  ax_source_t *s = io_on(a, sv[0], &r, AX_READABLE);
  hrec_t h = {.fd = -1};
  assert_int_equal(ax_io_handoff(s, a, hcb, &h), 0);
  assert_int_equal(atomic_load(&h.calls), 0);
  assert_int_equal(info_of(a).sources, 0);
  assert_true(ax_loop_alive(a)); /* the handoff waiting counts */
  assert_true(RUN_UNTIL(a,
                        atomic_load(&h.calls) >= 1 &&
                            atomic_load(&r.calls) >= 1,
                        5000));
  assert_int_equal(atomic_load(&h.calls), 1);
  assert_int_equal(h.status, 0);
  assert_ptr_equal(h.loop, a);
  assert_int_equal(h.fd, sv[0]);
  assert_true(h.active);
  assert_ptr_equal(atomic_load(&r.src), h.src);
  assert_int_equal(info_of(a).handoffs_adopted, 1);
  ax_source_free(h.src);
  AX_ASSERT_VERIFIED(a);

  /* From inside its own callback while AX_RUN_DEFAULT runs: the loop must
   * not end with the source in flight, and ends once it is freed. */
  guard_start("test_same_loop", 30);
  hrec_t h2 = {.fd = -1};
  self_ctx_t c = {.h = &h2};
  ax_source_t *s2 = NULL;
  assert_int_equal(ax_io_new(a, sv[0], self_handoff_cb, &c, &s2), 0);
  assert_int_equal(ax_io_start(s2, AX_READABLE), 0);
  put(sv[1], 1);
  assert_int_equal(ax_loop_run(a, AX_RUN_DEFAULT), 0);
  guard_stop();
  assert_int_equal(c.calls, 2);
  assert_int_equal(c.rc, 0);
  assert_ptr_equal(c.first, s2);
  assert_int_equal(atomic_load(&h2.calls), 1);
  assert_int_equal(h2.status, 0);
  assert_ptr_equal(h2.loop, a);
  assert_ptr_equal(c.second, h2.src);
  ax_loop_info_t ia = info_of(a);
  assert_int_equal(ia.handoffs_adopted, 2);
  assert_int_equal(ia.handoffs_failed, 0);
  assert_int_equal(ia.sources, 0);
  AX_ASSERT_VERIFIED(a);
  AX_FREE_LOOP(a);
  close2(sv);
}

int main(void) {
  tl_idx = TL_MAIN;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_basic),
      cmocka_unit_test(test_modes),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_traffic_level),
      cmocka_unit_test(test_traffic_edge),
      cmocka_unit_test(test_traffic_tcp_level),
      cmocka_unit_test(test_traffic_tcp_edge),
      cmocka_unit_test(test_traffic_mixed),
      cmocka_unit_test(test_traffic_spin),
      cmocka_unit_test(test_other_in_batch),
      cmocka_unit_test(test_src_loop_gone),
      cmocka_unit_test(test_fan_in),
      cmocka_unit_test(test_dest_freed),
      cmocka_unit_test(test_dest_freed_many),
      cmocka_unit_test(test_dest_full),
      cmocka_unit_test(test_fd_too_big),
      cmocka_unit_test(test_eexist),
      cmocka_unit_test(test_adopt_refused),
      cmocka_unit_test(test_adopt_enomem),
      cmocka_unit_test(test_same_loop),
  };
  return AX_RUN_ON_BACKENDS(tests);
}
