/*
 * Re-entrancy, on every backend: callbacks that free or stop their own
 * source or another one ready in the same batch, timers cancelled or freed
 * inside their own callback, stopping the loop from a callback, sources
 * created inside callbacks, the nginx fd-reuse case (reliability anchor
 * R05: an event for a closed-and-reused fd number must be dropped), and a
 * callback that frees every source.
 *
 * Bounded: RUN_UNTIL() uses an unreferenced ax timer as watchdog; where no
 * ax timer can be left in the loop (everything freed), a guard thread ends
 * the process with a message after a few seconds.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------ */

static size_t nsources(ax_loop_t *loop) {
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  return info.sources;
}

/* ---- close self --------------------------------------------------------- */

typedef struct self_rec {
  int calls;
  bool stop_instead; /* ax_source_stop() instead of ax_source_free() */
  int64_t ret;       /* timer callbacks: value returned after the free */
} self_rec_t;

/* Count the call, then free @src, or stop it and check it went inactive. */
static void self_close(ax_source_t *src, self_rec_t *r) {
  r->calls++;
  if (r->stop_instead) {
    assert_int_equal(ax_source_stop(src), 0);
    assert_false(ax_source_is_active(src));
  } else {
    ax_source_free(src);
  }
}

static void self_io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)fd;
  (void)revents;
  self_close(src, data);
}

static int64_t self_timer_cb(ax_source_t *src, void *data) {
  self_rec_t *r = data;
  self_close(src, r);
  return r->ret; /* ignored: the callback stopped or freed the source */
}

/* For defers and wake sources (same callback type). */
static void self_cb(ax_source_t *src, void *data) { self_close(src, data); }

/* An io callback frees (or stops) its own source: no further call although
 * the fd stays readable; the loop then has nothing live and returns. */
static void test_close_self_io(void **state) {
  (void)state;
  for (int mode = 0; mode < 2; mode++) {
    ax_loop_t *loop = ax_test_loop();
    int sv[2];
    sp_new(sv);
    put(sv[1], 4); /* never read */
    self_rec_t r = {.stop_instead = mode == 1};
    ax_source_t *s = NULL;
    assert_int_equal(ax_io_new(loop, sv[0], self_io_cb, &r, &s), 0);
    assert_int_equal(ax_io_start(s, AX_READABLE), 0);
    bool fired = false;
    ax_source_t *dog = dog_new(loop, 2000, &fired);
    assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
    assert_false(fired);
    assert_int_equal(r.calls, 1);
    run_for(loop, 30);
    assert_int_equal(r.calls, 1);
    AX_ASSERT_VERIFIED(loop);
    assert_int_equal(nsources(loop), mode == 1 ? 2 : 1); /* + dog */
    if (mode == 1) {
      assert_false(ax_source_is_active(s));
      ax_source_free(s);
    }
    ax_source_free(dog);
    close2(sv);
    AX_FREE_LOOP(loop);
  }
}

/* Timers, defers and wake sources freeing or stopping themselves. */
static void test_close_self_other_kinds(void **state) {
  (void)state;
  for (int mode = 0; mode < 2; mode++) {
    ax_loop_t *loop = ax_test_loop();
    self_rec_t rt = {.stop_instead = mode == 1, .ret = 0};
    self_rec_t ri = {.stop_instead = mode == 1, .ret = 5};
    self_rec_t rd = {.stop_instead = mode == 1};
    self_rec_t rw = {.stop_instead = mode == 1};
    ax_source_t *t = NULL, *ti = NULL, *d = NULL, *w = NULL;
    assert_int_equal(ax_timer_new(loop, self_timer_cb, &rt, &t), 0);
    assert_int_equal(ax_timer_start(t, 1, 0), 0);
    assert_int_equal(ax_timer_new(loop, self_timer_cb, &ri, &ti), 0);
    assert_int_equal(ax_timer_start(ti, 2, 2), 0); /* interval */
    assert_int_equal(ax_defer_new(loop, self_cb, &rd, &d), 0);
    assert_int_equal(ax_defer_start(d), 0);
    assert_int_equal(ax_wake_new(loop, self_cb, &rw, &w), 0);
    assert_int_equal(ax_wake_start(w), 0);
    assert_int_equal(ax_wake_send(w), 0);
    bool fired = false;
    ax_source_t *dog = dog_new(loop, 2000, &fired);
    /* Returns once all four ran and stopped/freed themselves. */
    assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
    assert_false(fired);
    run_for(loop, 30);
    assert_int_equal(rt.calls, 1);
    assert_int_equal(ri.calls, 1);
    assert_int_equal(rd.calls, 1);
    assert_int_equal(rw.calls, 1);
    AX_ASSERT_VERIFIED(loop);
    ax_loop_info_t info;
    assert_int_equal(ax_loop_info(loop, &info), 0);
    assert_int_equal(info.sources, mode == 1 ? 5u : 1u);
    assert_int_equal(info.active, 1); /* the watchdog */
    if (mode == 1) {
      assert_false(ax_source_is_active(t));
      assert_false(ax_source_is_active(ti));
      assert_false(ax_source_is_active(d));
      assert_false(ax_source_is_active(w));
      ax_source_free(t);
      ax_source_free(ti);
      ax_source_free(d);
      ax_source_free(w);
    }
    ax_source_free(dog);
    AX_FREE_LOOP(loop);
  }
}

/* ---- close other -------------------------------------------------------- */

typedef struct pair_ctx {
  ax_source_t *src[2];
  int calls[2];
  int first;
  bool stop_instead;
} pair_ctx_t;

typedef struct pair_arg {
  pair_ctx_t *ctx;
  int idx;
} pair_arg_t;

static void pair_io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)src;
  (void)fd;
  (void)revents;
  pair_arg_t *a = data;
  pair_ctx_t *c = a->ctx;
  c->calls[a->idx]++;
  if (c->first < 0) {
    c->first = a->idx;
    int o = 1 - a->idx;
    if (c->stop_instead) {
      assert_int_equal(ax_source_stop(c->src[o]), 0);
    } else {
      ax_source_free(c->src[o]);
      c->src[o] = NULL;
    }
  }
}

/* Both ready in one batch; whichever runs first frees (or stops) the other,
 * whose callback must not run. */
static void test_close_other_io(void **state) {
  (void)state;
  for (int mode = 0; mode < 2; mode++) {
    ax_loop_t *loop = ax_test_loop();
    int sv[2][2];
    pair_ctx_t c = {.first = -1, .stop_instead = mode == 1};
    pair_arg_t arg[2] = {{&c, 0}, {&c, 1}};
    for (int i = 0; i < 2; i++) {
      sp_new(sv[i]);
      put(sv[i][1], 1); /* never read: stays readable */
      assert_int_equal(
          ax_io_new(loop, sv[i][0], pair_io_cb, &arg[i], &c.src[i]), 0);
      assert_int_equal(ax_io_start(c.src[i], AX_READABLE), 0);
    }
    assert_true(RUN_UNTIL(loop, c.first >= 0, 2000));
    int f = c.first, o = 1 - f;
    assert_int_equal(c.calls[o], 0);
    run_for(loop, 30);
    assert_int_equal(c.calls[o], 0);
    assert_true(c.calls[f] >= 2); /* the survivor keeps being reported */
    AX_ASSERT_VERIFIED(loop);
    if (mode == 1) {
      assert_false(ax_source_is_active(c.src[o]));
      ax_source_free(c.src[o]);
    } else {
      assert_null(c.src[o]);
    }
    ax_source_free(c.src[f]);
    assert_int_equal(nsources(loop), 0);
    close2(sv[0]);
    close2(sv[1]);
    AX_FREE_LOOP(loop);
  }
}

typedef struct tpair {
  ax_source_t *other;
  int *order;
  int *n;
  int id;
  int mode; /* 0 free other, 1 stop other, 2 nothing */
} tpair_t;

static int64_t tpair_cb(ax_source_t *src, void *data) {
  (void)src;
  tpair_t *t = data;
  t->order[(*t->n)++] = t->id;
  if (t->other != NULL && t->mode == 0) {
    ax_source_free(t->other);
    t->other = NULL;
  } else if (t->other != NULL && t->mode == 1) {
    assert_int_equal(ax_source_stop(t->other), 0);
  }
  return AX_TIMER_CONTINUE;
}

/* Timers due in the same iteration: A (started first) frees or stops B. */
static void test_close_other_timer(void **state) {
  (void)state;
  for (int mode = 0; mode < 2; mode++) {
    ax_loop_t *loop = ax_test_loop();
    int order[8], n = 0;
    tpair_t a = {.order = order, .n = &n, .id = 1, .mode = mode};
    tpair_t b = {.order = order, .n = &n, .id = 2, .mode = 2};
    ax_source_t *ta = NULL, *tb = NULL;
    assert_int_equal(ax_timer_new(loop, tpair_cb, &a, &ta), 0);
    assert_int_equal(ax_timer_new(loop, tpair_cb, &b, &tb), 0);
    a.other = tb;
    assert_int_equal(ax_timer_start(ta, 5, 0), 0);
    assert_int_equal(ax_timer_start(tb, 5, 0), 0); /* same deadline */
    bool fired = false;
    ax_source_t *dog = dog_new(loop, 2000, &fired);
    assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
    assert_false(fired);
    assert_int_equal(n, 1);
    assert_int_equal(order[0], 1);
    AX_ASSERT_VERIFIED(loop);
    if (mode == 1) {
      assert_false(ax_source_is_active(tb));
      ax_source_free(tb);
    }
    ax_source_free(ta);
    ax_source_free(dog);
    assert_int_equal(nsources(loop), 0);
    AX_FREE_LOOP(loop);
  }
}

/* An io callback frees a timer that is already due: it must not fire. */
typedef struct cross {
  ax_source_t *timer;
  int io_calls, timer_calls;
} cross_t;

static void cross_io_cb(ax_source_t *src, int fd, unsigned revents,
                        void *data) {
  (void)fd;
  (void)revents;
  cross_t *c = data;
  c->io_calls++;
  if (c->timer != NULL) {
    ax_source_free(c->timer);
    c->timer = NULL;
  }
  ax_source_free(src);
}

static int64_t cross_timer_cb(ax_source_t *src, void *data) {
  (void)src;
  ((cross_t *)data)->timer_calls++;
  return AX_TIMER_CONTINUE;
}

static void test_close_other_cross_kind(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  put(sv[1], 1);
  cross_t c = {0};
  ax_source_t *io = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], cross_io_cb, &c, &io), 0);
  assert_int_equal(ax_io_start(io, AX_READABLE), 0);
  assert_int_equal(ax_timer_new(loop, cross_timer_cb, &c, &c.timer), 0);
  assert_int_equal(ax_timer_start(c.timer, 0, 0), 0);
  ax_loop_update_time(loop);
  /* The io is ready before the wait; the timer is due in this iteration.
   * I/O is dispatched before timers, so the io callback frees the timer
   * before its turn. */
  assert_int_equal(ax_loop_run(loop, AX_RUN_ONCE), 0);
  assert_int_equal(c.io_calls, 1);
  assert_int_equal(c.timer_calls, 0);
  AX_ASSERT_VERIFIED(loop);
  assert_int_equal(nsources(loop), 0);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* Defers: the first frees the second, queued after it in the same phase. */
typedef struct dpair {
  ax_source_t *second;
  int calls1, calls2;
} dpair_t;

static void dfirst_cb(ax_source_t *src, void *data) {
  (void)src;
  dpair_t *d = data;
  d->calls1++;
  ax_source_free(d->second);
  d->second = NULL;
}

static void dsecond_cb(ax_source_t *src, void *data) {
  (void)src;
  ((dpair_t *)data)->calls2++;
}

static void test_close_other_defer(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  dpair_t d = {0};
  ax_source_t *a = NULL;
  assert_int_equal(ax_defer_new(loop, dfirst_cb, &d, &a), 0);
  assert_int_equal(ax_defer_new(loop, dsecond_cb, &d, &d.second), 0);
  assert_int_equal(ax_defer_start(a), 0);
  assert_int_equal(ax_defer_start(d.second), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.calls1, 1);
  assert_int_equal(d.calls2, 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(d.calls2, 0);
  AX_ASSERT_VERIFIED(loop);
  assert_int_equal(nsources(loop), 1);
  ax_source_free(a);
  AX_FREE_LOOP(loop);
}

/* ---- timers cancelled / freed in their own callback --------------------- */

typedef struct tself {
  int calls;
  int action; /* 0 stop, 1 free, 2 restart(50) */
  uint64_t at[4];
  ax_source_t *src;
} tself_t;

static int64_t tself_cb(ax_source_t *src, void *data) {
  tself_t *t = data;
  if (t->calls < 4)
    t->at[t->calls] = ax_loop_now(ax_source_loop(src));
  t->calls++;
  if (t->action == 0) {
    assert_int_equal(ax_source_stop(src), 0);
    return 0; /* ignored */
  }
  if (t->action == 1) {
    ax_source_free(src);
    t->src = NULL;
    return 0; /* ignored */
  }
  if (t->calls == 1) {
    assert_int_equal(ax_timer_start(src, 50, 0), 0);
    return 0; /* ignored: the source was restarted */
  }
  return AX_TIMER_CONTINUE;
}

static void test_timer_cancel_in_own_cb(void **state) {
  (void)state;
  for (int action = 0; action < 3; action++) {
    ax_loop_t *loop = ax_test_loop();
    tself_t t = {.action = action};
    assert_int_equal(ax_timer_new(loop, tself_cb, &t, &t.src), 0);
    /* An interval timer: without the stop it would keep firing. */
    assert_int_equal(ax_timer_start(t.src, 2, action == 2 ? 0 : 2), 0);
    bool fired = false;
    ax_source_t *dog = dog_new(loop, 2000, &fired);
    assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
    assert_false(fired);
    if (action == 2) {
      assert_int_equal(t.calls, 2);
      if (t.at[1] < t.at[0] + 50)
        fail_msg("restarted timer fired after %llu ms, expected >= 50",
                 (unsigned long long)(t.at[1] - t.at[0]));
    } else {
      run_for(loop, 30);
      assert_int_equal(t.calls, 1);
    }
    AX_ASSERT_VERIFIED(loop);
    if (action == 1) {
      assert_null(t.src);
      assert_int_equal(nsources(loop), 1);
    } else {
      assert_false(ax_source_is_active(t.src));
      ax_source_free(t.src);
    }
    ax_source_free(dog);
    AX_FREE_LOOP(loop);
  }
}

/* ---- stopping the loop -------------------------------------------------- */

typedef struct stopper {
  int calls;
  int stop_at;
} stopper_t;

static void stopper_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)fd;
  (void)revents;
  stopper_t *s = data;
  s->calls++;
  if (s->calls % s->stop_at == 0)
    ax_loop_stop(ax_source_loop(src));
}

static void test_stop_in_callback(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  put(sv[1], 1); /* level-triggered and never read: once per iteration */
  stopper_t st = {.stop_at = 3};
  ax_source_t *s = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], stopper_cb, &st, &s), 0);
  assert_int_equal(ax_io_start(s, AX_READABLE), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(st.calls, 3);
  AX_ASSERT_VERIFIED(loop);

  /* Reusable: runs again until the next stop. */
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(st.calls, 6);

  /* A stop requested while not running: the next run does one iteration. */
  ax_loop_stop(loop);
  uint64_t it0 = iterations(loop);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(st.calls, 7);
  assert_int_equal(iterations(loop), it0 + 1);

  /* ...and that stop is consumed: the following run goes to the next one. */
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(st.calls, 9);
  ax_source_free(dog);
  ax_source_free(s);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* ---- sources created inside callbacks ----------------------------------- */

typedef struct adder {
  ax_loop_t *loop;
  int sv2[2];
  ax_source_t *made[4];
  int io_calls, timer_calls, defer_calls, io2_calls, nested_calls;
  uint64_t io_iter, defer_iter;
} adder_t;

static int64_t add_timer_cb(ax_source_t *src, void *data) {
  (void)src;
  ((adder_t *)data)->timer_calls++;
  return AX_TIMER_CONTINUE;
}

static void add_nested_defer_cb(ax_source_t *src, void *data) {
  (void)src;
  ((adder_t *)data)->nested_calls++;
}

static void add_defer_cb(ax_source_t *src, void *data) {
  adder_t *a = data;
  a->defer_calls++;
  a->defer_iter = iterations(ax_source_loop(src));
  /* A defer created in the deferred phase runs in a later iteration. */
  assert_int_equal(ax_defer_new(a->loop, add_nested_defer_cb, a, &a->made[3]),
                   0);
  assert_int_equal(ax_defer_start(a->made[3]), 0);
}

static void add_io2_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)src;
  (void)revents;
  char buf[16];
  (void)!read(fd, buf, sizeof buf);
  ((adder_t *)data)->io2_calls++;
}

static void add_io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)revents;
  adder_t *a = data;
  char buf[16];
  (void)!read(fd, buf, sizeof buf);
  a->io_calls++;
  if (a->io_calls > 1)
    return;
  a->io_iter = iterations(ax_source_loop(src));
  assert_int_equal(ax_timer_new(a->loop, add_timer_cb, a, &a->made[0]), 0);
  assert_int_equal(ax_timer_start(a->made[0], 0, 0), 0);
  assert_int_equal(ax_defer_new(a->loop, add_defer_cb, a, &a->made[1]), 0);
  assert_int_equal(ax_defer_start(a->made[1]), 0);
  sp_new(a->sv2);
  put(a->sv2[1], 1);
  assert_int_equal(ax_io_new(a->loop, a->sv2[0], add_io2_cb, a, &a->made[2]),
                   0);
  assert_int_equal(ax_io_start(a->made[2], AX_READABLE), 0);
}

static void test_add_in_callback(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  adder_t a = {.loop = loop};
  int sv[2];
  sp_new(sv);
  put(sv[1], 1);
  ax_source_t *s = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], add_io_cb, &a, &s), 0);
  assert_int_equal(ax_io_start(s, AX_READABLE), 0);
  assert_true(RUN_UNTIL(
      loop, a.timer_calls && a.defer_calls && a.io2_calls && a.nested_calls,
      2000));
  /* Queued in the I/O phase: runs in the same iteration's deferred phase. */
  assert_int_equal(a.defer_iter, a.io_iter);
  run_for(loop, 30);
  assert_int_equal(a.timer_calls, 1);
  assert_int_equal(a.defer_calls, 1);
  assert_int_equal(a.nested_calls, 1);
  assert_int_equal(a.io2_calls, 1);
  AX_ASSERT_VERIFIED(loop);
  assert_int_equal(nsources(loop), 5);
  for (int i = 0; i < 4; i++)
    ax_source_free(a.made[i]);
  ax_source_free(s);
  close2(sv);
  close2(a.sv2);
  AX_FREE_LOOP(loop);
}

/* ---- fd reuse in one batch (R05) ---------------------------------------- */

typedef struct reuse {
  ax_loop_t *loop;
  int sv[2][2];
  ax_source_t *src[2];
  int calls[2];
  int first; /* whose callback ran first, -1 before */
  int reused_fd;
  int nsv[2]; /* new socketpair: nsv[0] has the reused number */
  ax_source_t *nsrc;
  int ncalls;
  unsigned nrevents;
  uint64_t swap_iter, new_iter;
  bool keep_fd; /* variant: free and re-watch the same, still open fd */
} reuse_t;

typedef struct reuse_arg {
  reuse_t *r;
  int idx;
} reuse_arg_t;

static void reuse_new_cb(ax_source_t *src, int fd, unsigned revents,
                         void *data) {
  reuse_t *r = data;
  r->ncalls++;
  r->nrevents |= revents;
  if (r->ncalls == 1)
    r->new_iter = iterations(ax_source_loop(src));
  char buf[16];
  (void)!read(fd, buf, sizeof buf);
}

static void reuse_old_cb(ax_source_t *src, int fd, unsigned revents,
                         void *data) {
  (void)src;
  (void)fd;
  (void)revents;
  reuse_arg_t *a = data;
  reuse_t *r = a->r;
  r->calls[a->idx]++;
  if (r->first >= 0)
    return;
  r->first = a->idx;
  r->swap_iter = iterations(r->loop);
  int o = 1 - a->idx;
  int old = r->sv[o][0];
  r->reused_fd = old;
  ax_source_free(r->src[o]);
  r->src[o] = NULL;
  if (r->keep_fd) {
    /* Same fd, still readable, new source: the old event must not reach it
     * in this batch; it gets its own report in a later iteration. */
    r->nsv[0] = old;
    r->nsv[1] = r->sv[o][1];
    r->sv[o][0] = r->sv[o][1] = -1;
  } else {
    close(old);
    r->sv[o][0] = -1;
    int n[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, n))
      abort();
    /* POSIX hands out the lowest free number: normally n[0] == old. Make it
     * certain (either end will do: a socketpair is symmetric). */
    if (n[1] == old) {
      int t = n[0];
      n[0] = n[1];
      n[1] = t;
    } else if (n[0] != old) {
      if (dup3(n[0], old, O_CLOEXEC) != old)
        abort();
      close(n[0]);
      n[0] = old;
    }
    r->nsv[0] = n[0];
    r->nsv[1] = n[1];
    close(r->sv[o][1]);
    r->sv[o][1] = -1;
  }
  int rc = ax_io_new(r->loop, r->nsv[0], reuse_new_cb, r, &r->nsrc);
  if (rc != 0)
    fail_msg("ax_io_new on the reused fd %d: %s", r->nsv[0], ax_strerror(rc));
  rc = ax_io_start(r->nsrc, AX_READABLE);
  if (rc != 0)
    fail_msg("ax_io_start on the reused fd: %s", ax_strerror(rc));
}

static void reuse_case(bool keep_fd) {
  ax_loop_t *loop = ax_test_loop();
  reuse_t r = {.loop = loop, .first = -1, .keep_fd = keep_fd};
  reuse_arg_t arg[2] = {{&r, 0}, {&r, 1}};
  for (int i = 0; i < 2; i++) {
    sp_new(r.sv[i]);
    put(r.sv[i][1], 1); /* both readable before the wait: one batch */
    assert_int_equal(
        ax_io_new(loop, r.sv[i][0], reuse_old_cb, &arg[i], &r.src[i]), 0);
    assert_int_equal(ax_io_start(r.src[i], AX_READABLE), 0);
  }
  ax_loop_info_t before, after;
  assert_int_equal(ax_loop_info(loop, &before), 0);
  assert_true(RUN_UNTIL(loop, r.first >= 0, 2000));
  int o = 1 - r.first;
  assert_int_equal(r.calls[o], 0); /* the freed source never runs */
  assert_int_equal(ax_loop_info(loop, &after), 0);
  if (keep_fd) {
    /* New source, fd still readable: reported, but only from a later wait. */
    assert_true(RUN_UNTIL(loop, r.ncalls >= 1, 2000));
    if (r.new_iter <= r.swap_iter)
      fail_msg("the new source on fd %d got the old event of the batch "
               "(iteration %llu, swap in %llu)",
               r.reused_fd, (unsigned long long)r.new_iter,
               (unsigned long long)r.swap_iter);
  } else {
    /* The new socket has no data: any call is the old, stale event. */
    if (r.ncalls != 0)
      fail_msg("new source on reused fd %d received the stale event "
               "(revents 0x%x)",
               r.reused_fd, r.nrevents);
    if (after.stale_events <= before.stale_events)
      fail_msg("stale_events did not grow (%llu -> %llu) after the fd reuse",
               (unsigned long long)before.stale_events,
               (unsigned long long)after.stale_events);
    run_for(loop, 30);
    assert_int_equal(r.ncalls, 0);
    assert_int_equal(r.calls[o], 0);
    /* The new source works. */
    put(r.nsv[1], 1);
    assert_true(RUN_UNTIL(loop, r.ncalls >= 1, 2000));
    assert_true(r.nrevents & AX_READABLE);
  }
  AX_ASSERT_VERIFIED(loop);
  assert_int_equal(nsources(loop), 2);
  ax_source_free(r.src[r.first]);
  ax_source_free(r.nsrc);
  close2(r.sv[0]);
  close2(r.sv[1]);
  close2(r.nsv);
  AX_FREE_LOOP(loop);
}

static void test_fd_reuse_same_batch(void **state) {
  (void)state;
  reuse_case(false);
}

static void test_fd_rewatch_same_batch(void **state) {
  (void)state;
  reuse_case(true);
}

/* ---- a callback frees every source -------------------------------------- */

#define NALL 12

typedef struct freeall {
  ax_source_t *src[NALL];
  int n;
  int calls;
  int sv[4][2];
} freeall_t;

static void freeall_do(freeall_t *f) {
  f->calls++;
  for (int i = 0; i < f->n; i++) {
    if (f->src[i] != NULL) {
      ax_source_free(f->src[i]);
      f->src[i] = NULL;
    }
  }
}

static void fa_io_cb(ax_source_t *src, int fd, unsigned rev, void *data) {
  (void)src;
  (void)fd;
  (void)rev;
  freeall_do(data);
}
static int64_t fa_timer_cb(ax_source_t *src, void *data) {
  (void)src;
  freeall_do(data);
  return 0;
}
static void fa_defer_cb(ax_source_t *src, void *data) {
  (void)src;
  freeall_do(data);
}
static void fa_wake_cb(ax_source_t *src, void *data) {
  (void)src;
  freeall_do(data);
}

static void test_free_everything_in_callback(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  freeall_t f = {0};
  for (int i = 0; i < 4; i++) {
    sp_new(f.sv[i]);
    put(f.sv[i][1], 1);
    assert_int_equal(ax_io_new(loop, f.sv[i][0], fa_io_cb, &f, &f.src[f.n]), 0);
    assert_int_equal(ax_io_start(f.src[f.n++], AX_READABLE), 0);
  }
  for (int i = 0; i < 4; i++) {
    assert_int_equal(ax_timer_new(loop, fa_timer_cb, &f, &f.src[f.n]), 0);
    assert_int_equal(ax_timer_start(f.src[f.n++], (uint64_t)i, 1), 0);
  }
  for (int i = 0; i < 2; i++) {
    assert_int_equal(ax_defer_new(loop, fa_defer_cb, &f, &f.src[f.n]), 0);
    assert_int_equal(ax_defer_start(f.src[f.n++]), 0);
  }
  assert_int_equal(ax_wake_new(loop, fa_wake_cb, &f, &f.src[f.n]), 0);
  assert_int_equal(ax_wake_start(f.src[f.n]), 0);
  assert_int_equal(ax_wake_send(f.src[f.n++]), 0);
  assert_int_equal(ax_timer_new(loop, fa_timer_cb, &f, &f.src[f.n]), 0);
  assert_int_equal(ax_timer_start(f.src[f.n++], 100000, 0), 0);
  assert_int_equal(f.n, NALL);

  /* Nothing of the loop is left to bound the run: the guard thread does. */
  guard_start("ax_loop_run(DEFAULT) after a callback freed every source", 10);
  int rc = ax_loop_run(loop, AX_RUN_DEFAULT);
  guard_stop();
  assert_int_equal(rc, 0);
  assert_int_equal(f.calls, 1); /* no callback after the free-all */
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.sources, 0);
  assert_int_equal(info.active, 0);
  assert_int_equal(info.referenced, 0);
  assert_false(ax_loop_alive(loop));
  AX_ASSERT_VERIFIED(loop);
  for (int i = 0; i < 4; i++)
    close2(f.sv[i]);
  AX_FREE_LOOP(loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_close_self_io),
      cmocka_unit_test(test_close_self_other_kinds),
      cmocka_unit_test(test_close_other_io),
      cmocka_unit_test(test_close_other_timer),
      cmocka_unit_test(test_close_other_cross_kind),
      cmocka_unit_test(test_close_other_defer),
      cmocka_unit_test(test_timer_cancel_in_own_cb),
      cmocka_unit_test(test_stop_in_callback),
      cmocka_unit_test(test_add_in_callback),
      cmocka_unit_test(test_fd_reuse_same_batch),
      cmocka_unit_test(test_fd_rewatch_same_batch),
      cmocka_unit_test(test_free_everything_in_callback),
  };
  return AX_RUN_ON_BACKENDS(tests);
}
