/*
 * Integrity under random use, on every backend.
 *
 *  - test_random_ops: seeded random sequences (20,000 steps) of new / start
 *    / stop / free / ref / unref across every source kind (io on
 *    socketpairs, timers, dates, defers, signals, fs-watch on a temp dir,
 *    wake), pokes that make them fire, and ax_loop_run(AX_RUN_NOWAIT);
 *    callbacks sometimes stop or free a random source (their own included).
 *    After every step: ax_loop_verify(), ax_loop_info() counts and every
 *    source's ax_source_is_active() against a shadow model; a callback for
 *    a source the model says is freed or inactive fails the test.
 *  - test_timer_order_vs_shadow: random start / stop / restart of 2,000
 *    timers, ax_timer_due_in() checked against the model, then the fire
 *    order must equal the model sorted by (deadline, start sequence).
 *  - test_alloc_failures: an allocator that fails every Nth allocation;
 *    every call succeeds or returns -ENOMEM (outputs untouched), the loop
 *    verifies after each step, and after ax_loop_free() no block is live
 *    (counted here; ASan checks the same in the address build).
 *
 * The seed is printed; AX_SEED=<n> replays it. SIGUSR1/SIGUSR2 are blocked
 * in main() so raising them is safe whatever the sources do.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t rnd_state;

static uint64_t rnd(void) { return xorshift(&rnd_state); }

static uint64_t seed_for(const char *what) {
  static uint64_t base;
  if (base == 0) {
    const char *env = getenv("AX_SEED");
    base = env != NULL
               ? strtoull(env, NULL, 0)
               : ((uint64_t)time(NULL) * 2654435761u) ^ (uint64_t)getpid();
    if (base == 0)
      base = 1;
  }
  printf("  %s: seed %llu (AX_SEED=%llu to replay)\n", what,
         (unsigned long long)base, (unsigned long long)base);
  return base;
}

/* ======================================================================== */
/* Random operations against a shadow model                                 */
/* ======================================================================== */

enum { K_IO, K_TIMER, K_DATE, K_DEFER, K_SIGNAL, K_FSWATCH, K_WAKE, K_N };
static const ax_source_kind_t kind_of[K_N] = {
    AX_SOURCE_IO,     AX_SOURCE_TIMER,   AX_SOURCE_DATE, AX_SOURCE_DEFER,
    AX_SOURCE_SIGNAL, AX_SOURCE_FSWATCH, AX_SOURCE_WAKE};

#define NSLOT 48
#define NSTEPS 20000

struct ictx;

typedef struct slot {
  struct ictx *ctx;
  ax_source_t *src; /* NULL: empty */
  int kind;
  bool active, refd;
  uint64_t repeat;    /* timer */
  unsigned io_events; /* io */
  int sv[2];          /* io */
  long calls;
} slot_t;

typedef struct ictx {
  ax_loop_t *loop;
  slot_t slot[NSLOT];
  char dir[64];
  char wpath[96];
  bool w_exists;
  bool files[8];
  char err[512]; /* first error seen inside a callback */
  long step;
  long callbacks, chaos;
} ictx_t;

static void ierr(ictx_t *c, const char *fmt, const char *what, long n) {
  if (c->err[0] == '\0')
    snprintf(c->err, sizeof c->err, fmt, what, n);
}

static void slot_release(ictx_t *c, slot_t *s) {
  ax_source_free(s->src);
  if (s->kind == K_IO) {
    close(s->sv[0]);
    close(s->sv[1]);
    s->sv[0] = s->sv[1] = -1;
  }
  s->src = NULL;
  s->active = false;
  (void)c;
}

/* Common entry of every callback: the model must say the source is live. */
static slot_t *cb_enter(void *data, ax_source_t *src, const char *kind) {
  slot_t *s = data;
  ictx_t *c = s->ctx;
  c->callbacks++;
  if (s->src != src)
    ierr(c, "%s callback for a freed source (step %ld)", kind, c->step);
  else if (!s->active)
    ierr(c, "%s callback for a stopped source (step %ld)", kind, c->step);
  s->calls++;
  return s;
}

/* Sometimes stop or free a random source, possibly the running one. */
static void cb_chaos(ictx_t *c) {
  uint64_t r = rnd();
  if (r % 10 != 0)
    return;
  slot_t *o = &c->slot[(r >> 8) % NSLOT];
  if (o->src == NULL)
    return;
  c->chaos++;
  if ((r >> 20) & 1) {
    if (ax_source_stop(o->src) != 0)
      ierr(c, "%s: ax_source_stop failed in a callback (step %ld)", "chaos",
           c->step);
    o->active = false;
  } else {
    slot_release(c, o);
  }
}

static void i_io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  slot_t *s = cb_enter(data, src, "io");
  if (s->io_events & AX_IO_ONESHOT)
    s->active = false;
  if (revents & ~(AX_READABLE | AX_WRITABLE | AX_ERROR | AX_HANGUP))
    ierr(s->ctx, "%s: unknown revents bits (step %ld)", "io", s->ctx->step);
  if (revents & AX_READABLE) {
    char buf[256];
    while (read(fd, buf, sizeof buf) > 0) {
    }
  }
  cb_chaos(s->ctx);
}

static int64_t i_timer_cb(ax_source_t *src, void *data) {
  slot_t *s =
      cb_enter(data, src, ((slot_t *)data)->kind == K_DATE ? "date" : "timer");
  uint64_t r = rnd();
  int64_t ret;
  if (r % 4 == 0) { /* re-arm by return value */
    ret = (int64_t)((r >> 8) % 20);
    s->active = true;
  } else {
    ret = AX_TIMER_CONTINUE;
    s->active = s->kind == K_TIMER && s->repeat != 0;
  }
  cb_chaos(s->ctx); /* a stop or free of itself makes @ret ignored */
  return ret;
}

static void i_defer_cb(ax_source_t *src, void *data) {
  slot_t *s = cb_enter(data, src, "defer");
  s->active = false;
  cb_chaos(s->ctx);
}

static void i_signal_cb(ax_source_t *src, int signo, void *data) {
  slot_t *s = cb_enter(data, src, "signal");
  if (signo != SIGUSR1 && signo != SIGUSR2)
    ierr(s->ctx, "%s: unexpected signo (step %ld)", "signal", s->ctx->step);
  cb_chaos(s->ctx);
}

static void i_fs_cb(ax_source_t *src, unsigned events, const char *name,
                    void *data) {
  (void)name;
  slot_t *s = cb_enter(data, src, "fswatch");
  if (events & AX_FS_ENDED)
    s->active = false; /* stopped before the callback */
  if (events == 0 || (events & ~0x7fu))
    ierr(s->ctx, "%s: bad event bits (step %ld)", "fswatch", s->ctx->step);
  cb_chaos(s->ctx);
}

static void i_wake_cb(ax_source_t *src, void *data) {
  slot_t *s = cb_enter(data, src, "wake");
  cb_chaos(s->ctx);
}

static int new_of_kind(ax_loop_t *loop, int k, void *data, int sv[2],
                       ax_source_t **out) {
  switch (k) {
  case K_IO:
    return ax_io_new(loop, sv[0], i_io_cb, data, out);
  case K_TIMER:
    return ax_timer_new(loop, i_timer_cb, data, out);
  case K_DATE:
    return ax_date_new(loop, i_timer_cb, data, out);
  case K_DEFER:
    return ax_defer_new(loop, i_defer_cb, data, out);
  case K_SIGNAL:
    return ax_signal_new(loop, i_signal_cb, data, out);
  case K_FSWATCH:
    return ax_fswatch_new(loop, i_fs_cb, data, out);
  default:
    return ax_wake_new(loop, i_wake_cb, data, out);
  }
}

static void op_new(ictx_t *c, slot_t *s, uint64_t r) {
  if (s->src != NULL)
    return;
  int k = (int)(r % K_N);
  s->sv[0] = s->sv[1] = -1;
  if (k == K_IO)
    sp_new(s->sv);
  ax_source_t *out = NULL;
  int rc = new_of_kind(c->loop, k, s, s->sv, &out);
  if (rc != 0)
    fail_msg("step %ld: new %s: %s", c->step, ax_source_kind_name(kind_of[k]),
             ax_strerror(rc));
  s->src = out;
  s->kind = k;
  s->active = false;
  s->refd = true;
  s->repeat = 0;
  s->io_events = 0;
  s->calls = 0;
  assert_int_equal(ax_source_kind(out), kind_of[k]);
  assert_ptr_equal(ax_source_data(out), s);
  assert_ptr_equal(ax_source_loop(out), c->loop);
}

static void op_start(ictx_t *c, slot_t *s, uint64_t r) {
  if (s->src == NULL)
    return;
  int rc = 0, want = 0;
  switch (s->kind) {
  case K_IO: {
    unsigned ev = (unsigned)(r >> 8) & 3u;
    if (ev == 0)
      ev = AX_READABLE;
    unsigned m = (unsigned)((r >> 12) % 16);
    if (m == 0) {
      ev |= AX_IO_ONESHOT;
    } else if (m == 1) {
      ev |= AX_IO_EDGE;
    } else if (m == 2) {
      ev |= AX_IO_EDGE | AX_IO_ONESHOT;
      want = -EINVAL;
    } else if (m == 3) {
      ev = AX_IO_ONESHOT;
      want = -EINVAL;
    }
    if (want == 0 && (ev & AX_IO_EDGE) && !edge_backend())
      want = -ENOTSUP;
    rc = ax_io_start(s->src, ev);
    if (rc == 0)
      s->io_events = ev;
    break;
  }
  case K_TIMER: {
    uint64_t tmo = (r >> 8) % 30;
    uint64_t rep = (r >> 16) % 3 == 0 ? 1 + (r >> 24) % 15 : 0;
    if ((r >> 32) % 50 == 0) {
      rep = (uint64_t)UINT32_MAX + 1 + ((r >> 40) & 0xff);
      want = -ERANGE;
    }
    rc = ax_timer_start(s->src, tmo, rep);
    if (rc == 0)
      s->repeat = rep;
    break;
  }
  case K_DATE:
    if (s->active)
      return; /* re-arming an active date is not documented */
    rc = ax_date_start(s->src,
                       ax_realtime_ms(c->loop) + (int64_t)((r >> 8) % 60) - 20);
    break;
  case K_DEFER:
    rc = ax_defer_start(s->src);
    break;
  case K_SIGNAL:
    if (s->active)
      return;
    if ((r >> 8) % 40 == 0) {
      rc = ax_signal_start(s->src, 0);
      want = -EINVAL;
    } else {
      rc = ax_signal_start(s->src, (r >> 16) & 1 ? SIGUSR1 : SIGUSR2);
    }
    break;
  case K_FSWATCH: {
    if (s->active)
      return;
    bool file = (r >> 8) & 1;
    unsigned mask =
        (r >> 12) % 3 == 0 ? 0 : (unsigned)((r >> 16) % AX_FS_ALL) + 1;
    if (file && !c->w_exists)
      want = -ENOENT;
    rc = ax_fswatch_start(s->src, file ? c->wpath : c->dir, mask);
    break;
  }
  default:
    if (s->active)
      return;
    rc = ax_wake_start(s->src);
    break;
  }
  if (rc != want)
    fail_msg("step %ld: start %s: got %d (%s), expected %d (%s)", c->step,
             ax_source_kind_name(kind_of[s->kind]), rc, ax_err_name(rc), want,
             ax_err_name(want));
  if (rc == 0)
    s->active = true;
}

static slot_t *pick_kind(ictx_t *c, int k, uint64_t r) {
  for (int i = 0; i < NSLOT; i++) {
    slot_t *s = &c->slot[(r + (uint64_t)i) % NSLOT];
    if (s->src != NULL && s->kind == k)
      return s;
  }
  return NULL;
}

static void op_poke(ictx_t *c, uint64_t r) {
  slot_t *s;
  switch (r % 4) {
  case 0:
    if ((s = pick_kind(c, K_IO, r >> 8)) != NULL)
      (void)!write(s->sv[1], "p", 1);
    break;
  case 1:
    kill(getpid(), (r >> 8) & 1 ? SIGUSR1 : SIGUSR2);
    break;
  case 2:
    if ((s = pick_kind(c, K_WAKE, r >> 8)) != NULL && ax_wake_send(s->src) != 0)
      fail_msg("step %ld: ax_wake_send failed", c->step);
    break;
  default:
    if ((r >> 8) % 4 == 0) {
      if (c->w_exists) {
        unlink(c->wpath);
      } else {
        int fd = open(c->wpath, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        close(fd);
      }
      c->w_exists = !c->w_exists;
    } else {
      int i = (int)((r >> 12) % 8);
      char p[128];
      snprintf(p, sizeof p, "%s/f%d", c->dir, i);
      if (c->files[i]) {
        unlink(p);
      } else {
        int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        assert_true(fd >= 0);
        (void)!write(fd, "x", 1);
        close(fd);
      }
      c->files[i] = !c->files[i];
    }
    break;
  }
}

static void check_model(ictx_t *c) {
  AX_ASSERT_VERIFIED(c->loop);
  if (c->err[0] != '\0')
    fail_msg("%s", c->err);
  size_t n = 0, act = 0, ref = 0;
  for (int i = 0; i < NSLOT; i++) {
    slot_t *s = &c->slot[i];
    if (s->src == NULL)
      continue;
    n++;
    act += s->active;
    ref += s->active && s->refd;
    if (ax_source_is_active(s->src) != s->active)
      fail_msg("step %ld: %s source in slot %d is %sactive, model says %s",
               c->step, ax_source_kind_name(kind_of[s->kind]), i,
               ax_source_is_active(s->src) ? "" : "in",
               s->active ? "active" : "inactive");
  }
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(c->loop, &info), 0);
  if (info.sources != n || info.active != act || info.referenced != ref)
    fail_msg("step %ld: info sources/active/referenced %zu/%zu/%zu, model "
             "%zu/%zu/%zu",
             c->step, info.sources, info.active, info.referenced, n, act, ref);
  if (ax_loop_alive(c->loop) != (ref > 0))
    fail_msg("step %ld: ax_loop_alive disagrees with the model", c->step);
}

static void test_random_ops(void **state) {
  (void)state;
  static ictx_t c;
  memset(&c, 0, sizeof c);
  rnd_state = seed_for("random ops") | 1;
  drain_signals();
  c.loop = ax_test_loop();
  snprintf(c.dir, sizeof c.dir, "/tmp/axon-int-XXXXXX");
  assert_non_null(mkdtemp(c.dir));
  snprintf(c.wpath, sizeof c.wpath, "%s/w", c.dir);
  for (int i = 0; i < NSLOT; i++) {
    c.slot[i].ctx = &c;
    c.slot[i].sv[0] = c.slot[i].sv[1] = -1;
  }
  long runs = 0;
  for (c.step = 0; c.step < NSTEPS; c.step++) {
    uint64_t r = rnd();
    slot_t *s = &c.slot[(r >> 8) % NSLOT];
    unsigned op = (unsigned)(r % 100);
    uint64_t arg = rnd();
    if (op < 18) {
      op_new(&c, s, arg);
    } else if (op < 42) {
      op_start(&c, s, arg);
    } else if (op < 50) {
      if (s->src != NULL) {
        assert_int_equal(ax_source_stop(s->src), 0);
        s->active = false;
      }
    } else if (op < 58) {
      if (s->src != NULL)
        slot_release(&c, s);
    } else if (op < 63) {
      if (s->src != NULL) {
        if (s->refd)
          ax_source_unref(s->src);
        else
          ax_source_ref(s->src);
        s->refd = !s->refd;
      }
    } else if (op < 75) {
      op_poke(&c, arg);
    } else if (op < 77) {
      ax_loop_update_time(c.loop);
    } else {
      int rc = ax_loop_run(c.loop, AX_RUN_NOWAIT);
      if (rc != 0)
        fail_msg("step %ld: ax_loop_run(NOWAIT) = %s", c.step, ax_strerror(rc));
      runs++;
    }
    check_model(&c);
  }
  printf("  %d steps, %ld runs, %ld callbacks (%ld chaos stops/frees)\n",
         NSTEPS, runs, c.callbacks, c.chaos);
  assert_true(c.callbacks > 1000); /* the sequence did exercise dispatch */
  for (int i = 0; i < NSLOT; i++)
    if (c.slot[i].src != NULL)
      slot_release(&c, &c.slot[i]);
  check_model(&c);
  AX_FREE_LOOP(c.loop);
  for (int i = 0; i < 8; i++) {
    char p[128];
    snprintf(p, sizeof p, "%s/f%d", c.dir, i);
    unlink(p);
  }
  unlink(c.wpath);
  assert_int_equal(rmdir(c.dir), 0);
  drain_signals();
}

/* ======================================================================== */
/* Timer order under random insert / cancel                                  */
/* ======================================================================== */

#define NTO 2000
#define TO_STEPS 20000

typedef struct tshadow {
  bool active;
  uint64_t deadline;
  uint64_t seq;
} tshadow_t;

static tshadow_t tsh[NTO];
static int tlog[NTO * 2];
static int tlog_n;

static int64_t to_cb(ax_source_t *src, void *data) {
  (void)src;
  if (tlog_n < NTO * 2)
    tlog[tlog_n] = (int)(intptr_t)data;
  tlog_n++;
  return AX_TIMER_CONTINUE;
}

static int by_deadline(const void *a, const void *b) {
  const tshadow_t *x = &tsh[*(const int *)a], *y = &tsh[*(const int *)b];
  if (x->deadline != y->deadline)
    return x->deadline < y->deadline ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void test_timer_order_vs_shadow(void **state) {
  (void)state;
  static ax_source_t *src[NTO];
  rnd_state = seed_for("timer order") | 1;
  ax_loop_t *loop = ax_test_loop();
  memset(tsh, 0, sizeof tsh);
  tlog_n = 0;
  for (int i = 0; i < NTO; i++)
    assert_int_equal(ax_timer_new(loop, to_cb, (void *)(intptr_t)i, &src[i]),
                     0);
  ax_loop_update_time(loop);
  uint64_t seq = 0;
  for (long step = 0; step < TO_STEPS; step++) {
    uint64_t r = rnd();
    int i = (int)(r % NTO);
    unsigned op = (unsigned)((r >> 16) % 10);
    uint64_t now = ax_loop_now(loop);
    if (op < 6) {
      uint64_t a = rnd();
      uint64_t tmo =
          a % 8 == 0 ? ((uint64_t)1 << 20) + (a >> 24) : (a >> 8) % 250;
      assert_int_equal(ax_timer_start(src[i], tmo, 0), 0);
      tsh[i] = (tshadow_t){true, now + tmo, seq++};
    } else if (op < 8) {
      assert_int_equal(ax_source_stop(src[i]), 0);
      tsh[i].active = false;
    } else if (op < 9) {
      ax_loop_update_time(loop);
    } else {
      uint64_t ms = 0;
      int rc = ax_timer_due_in(src[i], &ms);
      if (!tsh[i].active) {
        assert_int_equal(rc, -EINVAL);
      } else {
        assert_int_equal(rc, 0);
        uint64_t want = tsh[i].deadline > now ? tsh[i].deadline - now : 0;
        uint64_t slack = mono_ms() - now + 1; /* if it reads the clock */
        if (ms > want || ms + slack < want)
          fail_msg("step %ld: due_in %llu, model %llu", step,
                   (unsigned long long)ms, (unsigned long long)want);
      }
    }
    assert_int_equal(ax_source_is_active(src[i]), tsh[i].active);
    if (step % 16 == 0)
      AX_ASSERT_VERIFIED(loop);
  }
  /* Stop the far ones, then everything left must fire in model order. */
  uint64_t now = ax_loop_now(loop);
  static int order[NTO];
  int n = 0;
  for (int i = 0; i < NTO; i++) {
    if (tsh[i].active && tsh[i].deadline > now + 1000) {
      assert_int_equal(ax_source_stop(src[i]), 0);
      tsh[i].active = false;
    }
    if (tsh[i].active)
      order[n++] = i;
  }
  qsort(order, (size_t)n, sizeof order[0], by_deadline);
  AX_ASSERT_VERIFIED(loop);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.active, (size_t)n);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 5000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(tlog_n, n);
  for (int k = 0; k < n; k++)
    if (tlog[k] != order[k])
      fail_msg("fire %d: timer %d (deadline %llu seq %llu), model says %d "
               "(deadline %llu seq %llu)",
               k, tlog[k], (unsigned long long)tsh[tlog[k]].deadline,
               (unsigned long long)tsh[tlog[k]].seq, order[k],
               (unsigned long long)tsh[order[k]].deadline,
               (unsigned long long)tsh[order[k]].seq);
  printf("  %d timers fired in model order\n", n);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(dog);
  for (int i = 0; i < NTO; i++)
    ax_source_free(src[i]);
  AX_FREE_LOOP(loop);
}

/* ======================================================================== */
/* Allocation failures                                                       */
/* ======================================================================== */

typedef struct falloc {
  unsigned long count, every, fails;
  long live;
  bool on;
  int bad; /* realloc(.., 0) or free(NULL): the header says never */
} falloc_t;

static bool fa_fail(falloc_t *f) {
  f->count++;
  if (f->on && f->every && f->count % f->every == 0) {
    f->fails++;
    return true;
  }
  return false;
}

static void *fa_malloc(size_t n, void *ctx) {
  falloc_t *f = ctx;
  if (fa_fail(f))
    return NULL;
  void *p = malloc(n ? n : 1);
  if (p != NULL)
    f->live++;
  return p;
}

static void *fa_realloc(void *p, size_t n, void *ctx) {
  falloc_t *f = ctx;
  if (n == 0)
    f->bad++;
  if (fa_fail(f))
    return NULL;
  void *q = realloc(p, n ? n : 1);
  if (q != NULL && p == NULL)
    f->live++;
  return q;
}

static void fa_free(void *p, void *ctx) {
  falloc_t *f = ctx;
  if (p == NULL) {
    f->bad++;
    return;
  }
  f->live--;
  free(p);
}

static void a_io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)src;
  (void)data;
  char buf[64];
  if (revents & AX_READABLE)
    while (read(fd, buf, sizeof buf) > 0) {
    }
}
static int64_t a_timer_cb(ax_source_t *src, void *data) {
  (void)src;
  (void)data;
  return AX_TIMER_CONTINUE;
}
static void a_defer_cb(ax_source_t *src, void *data) {
  (void)src;
  (void)data;
}
static void a_signal_cb(ax_source_t *src, int signo, void *data) {
  (void)src;
  (void)signo;
  (void)data;
}
static void a_fs_cb(ax_source_t *src, unsigned ev, const char *name,
                    void *data) {
  (void)src;
  (void)ev;
  (void)name;
  (void)data;
}

#define NA 16

typedef struct aslot {
  ax_source_t *src;
  int kind;
  int sv[2];
} aslot_t;

static void nomem_ok(int rc, const char *what, long step) {
  if (rc != 0 && rc != -ENOMEM)
    fail_msg("step %ld: %s returned %d (%s): only 0 or -ENOMEM expected", step,
             what, rc, ax_err_name(rc));
}

static int a_new(ax_loop_t *loop, aslot_t *s, int k, ax_source_t **out) {
  switch (k) {
  case K_IO:
    return ax_io_new(loop, s->sv[0], a_io_cb, s, out);
  case K_TIMER:
    return ax_timer_new(loop, a_timer_cb, s, out);
  case K_DATE:
    return ax_date_new(loop, a_timer_cb, s, out);
  case K_DEFER:
    return ax_defer_new(loop, a_defer_cb, s, out);
  case K_SIGNAL:
    return ax_signal_new(loop, a_signal_cb, s, out);
  case K_FSWATCH:
    return ax_fswatch_new(loop, a_fs_cb, s, out);
  default:
    return ax_wake_new(loop, a_defer_cb, s, out);
  }
}

static int a_start(ax_loop_t *loop, aslot_t *s, const char *dir, uint64_t r) {
  switch (s->kind) {
  case K_IO:
    return ax_io_start(s->src,
                       (r & 1) ? AX_READABLE : AX_READABLE | AX_WRITABLE);
  case K_TIMER:
    return ax_timer_start(s->src, r % 5, (r >> 8) % 2);
  case K_DATE:
    return ax_date_start(s->src, ax_realtime_ms(loop) + (int64_t)(r % 5));
  case K_DEFER:
    return ax_defer_start(s->src);
  case K_SIGNAL:
    return ax_signal_start(s->src, (r & 1) ? SIGUSR1 : SIGUSR2);
  case K_FSWATCH:
    return ax_fswatch_start(s->src, dir, 0);
  default:
    return ax_wake_start(s->src);
  }
}

static unsigned long alloc_round(unsigned long every, const char *dir) {
  falloc_t f = {.every = every, .on = true};
  ax_allocator_t al = {fa_malloc, fa_realloc, fa_free, &f};
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = ax_test_backend;
  o.allocator = &al;
  ax_loop_t *loop = NULL;
  for (int tries = 0; loop == NULL; tries++) {
    if (tries == 20)
      f.on = false; /* needs several blocks in a row: let one through */
    ax_loop_t *sentinel = (ax_loop_t *)0x1, *l = sentinel;
    int rc = ax_loop_new(&o, &l);
    if (rc == 0) {
      loop = l;
      break;
    }
    nomem_ok(rc, "ax_loop_new", -1);
    assert_ptr_equal(l, sentinel);
    if (f.live != 0)
      fail_msg("every %lu: a failed ax_loop_new left %ld blocks", every,
               f.live);
  }
  f.on = true;
  aslot_t sl[NA];
  for (int i = 0; i < NA; i++)
    sl[i] = (aslot_t){NULL, 0, {-1, -1}};
  for (long step = 0; step < 3000; step++) {
    uint64_t r = rnd();
    aslot_t *s = &sl[(r >> 8) % NA];
    unsigned op = (unsigned)(r % 10);
    uint64_t arg = rnd();
    if (op < 3 && s->src == NULL) {
      int k = (int)(arg % K_N);
      if (k == K_IO)
        sp_new(s->sv);
      ax_source_t *sentinel = (ax_source_t *)0x1, *out = sentinel;
      int rc = a_new(loop, s, k, &out);
      nomem_ok(rc, "new", step);
      if (rc == 0) {
        s->src = out;
        s->kind = k;
      } else {
        assert_ptr_equal(out, sentinel);
        if (k == K_IO) {
          close(s->sv[0]);
          close(s->sv[1]);
          s->sv[0] = s->sv[1] = -1;
        }
      }
    } else if (op < 6 && s->src != NULL) {
      bool was = ax_source_is_active(s->src);
      if (was && (s->kind == K_SIGNAL || s->kind == K_FSWATCH ||
                  s->kind == K_WAKE || s->kind == K_DATE))
        continue;
      int rc = a_start(loop, s, dir, arg >> 4);
      nomem_ok(rc, ax_source_kind_name(kind_of[s->kind]), step);
      if (rc != 0 && !was)
        assert_false(ax_source_is_active(s->src));
    } else if (op < 7 && s->src != NULL) {
      assert_int_equal(ax_source_stop(s->src), 0);
    } else if (op < 8 && s->src != NULL) {
      ax_source_free(s->src);
      s->src = NULL;
      if (s->kind == K_IO) {
        close(s->sv[0]);
        close(s->sv[1]);
        s->sv[0] = s->sv[1] = -1;
      }
    } else if (op < 9) {
      switch (arg % 3) {
      case 0:
        kill(getpid(), SIGUSR1);
        break;
      case 1:
        for (int i = 0; i < NA; i++)
          if (sl[i].src != NULL && sl[i].kind == K_IO)
            (void)!write(sl[i].sv[1], "p", 1);
        break;
      default: {
        char p[128];
        snprintf(p, sizeof p, "%s/t%d", dir, (int)((arg >> 4) % 4));
        int fd = open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (fd >= 0)
          close(fd);
        unlink(p);
      }
      }
    } else {
      nomem_ok(ax_loop_run(loop, AX_RUN_NOWAIT), "ax_loop_run", step);
    }
    AX_ASSERT_VERIFIED(loop);
  }
  for (int i = 0; i < NA; i++) {
    if (sl[i].src == NULL)
      continue;
    ax_source_free(sl[i].src);
    if (sl[i].kind == K_IO) {
      close(sl[i].sv[0]);
      close(sl[i].sv[1]);
    }
  }
  AX_ASSERT_VERIFIED(loop);
  AX_FREE_LOOP(loop);
  if (f.live != 0)
    fail_msg("every %lu: %ld blocks still allocated after ax_loop_free", every,
             f.live);
  assert_int_equal(f.bad, 0);
  /* The loop allocates in chunks, so a round may make fewer than @every
   * allocations; the rounds with small @every always inject failures. */
  if (f.count >= 2 * every)
    assert_true(f.fails > 0);
  return f.fails;
}

static void test_alloc_failures(void **state) {
  (void)state;
  rnd_state = seed_for("alloc failures") | 1;
  drain_signals();
  char dir[] = "/tmp/axon-nomem-XXXXXX";
  assert_non_null(mkdtemp(dir));
  static const unsigned long every[] = {2, 3, 4, 5, 7, 11, 17, 31, 64};
  unsigned long injected = 0;
  for (size_t i = 0; i < sizeof every / sizeof every[0]; i++)
    injected += alloc_round(every[i], dir);
  print_message("  %lu allocation failures injected\n", injected);
  assert_true(injected > 0);
  rmdir(dir);
  drain_signals();
}

int main(void) {
  block_usr_signals();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_random_ops),
      cmocka_unit_test(test_timer_order_vs_shadow),
      cmocka_unit_test(test_alloc_failures),
  };
  return AX_RUN_ON_BACKENDS(tests);
}
