/*
 * Cross-thread posts through the loop's mailbox (ax_loop_post,
 * ax_loop_post_node), ax_loop_stop from other threads, and the loop options
 * post_capacity, spin_ns and persistent.
 *
 * Single thread: argument errors and option defaults; posts made before a
 * run run in its first iteration, in order, counted in posts_run and
 * mailbox_depth; ONCE, NOWAIT and DEFAULT run them; ax_loop_alive is true
 * while one waits; posts made by the loop's own callbacks (a chain of 3,000
 * takes at least 3 iterations: batches of at most 1,024); an endless
 * self-reposting callback does not starve a timer or an fd; post_capacity
 * refuses plain posts with -EAGAIN while a stop (a control message) still
 * gets in; ax_loop_free runs the posts still queued (ASan checks their
 * nodes are freed) and refuses posts made meanwhile with -ESHUTDOWN.
 *
 * On every backend: ax_loop_stop from another thread stops a loop blocked
 * in its backend (with a far timer, and persistent with no source), at
 * varied moments; a stop sent while the loop is not running ends the next
 * run after one iteration, stops in flight coalesce; a short ping-pong.
 *
 * Threads: a persistent loop runs with no source until stopped from
 * another thread; 4 threads post numbered ax_loop_post_node messages whose
 * nodes come back through per-producer mailboxes, and the same with
 * ax_loop_post (malloc per post, a small post_capacity so producers retry):
 * nothing lost, duplicated or reordered per producer; 1,000,000 single
 * message round trips between two loops on two threads, each sleeping in
 * its backend between messages (a lost wakeup hangs the ball: a stall
 * detector fails the binary with the count); the same with spin_ns; stops
 * racing with posts from several threads: every post runs in the run that
 * was stopped or in the next one, none lost.
 *
 * Bounded: the guard covers every run no ax timer bounds; no assertion
 * depends on timing.
 */
#include "testutil.h"

#include <dirent.h>
#include <poll.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/eventfd.h>

#ifndef AX_SAN
#define AX_SAN ""
#endif

#define container_of(p, T, m) ((T *)(void *)((char *)(p)-offsetof(T, m)))

static bool under_san(void) { return AX_SAN[0] != '\0'; }

/*
 * Work scaling for the threaded tests: the sanitizer builds use a quarter
 * of the messages (ASan+UBSan and TSan alike); the long ping-pong uses a
 * tenth (1,000,000 round trips plain, 100,000 under either sanitizer).
 * Measured here: 12-36 s plain (the 1,000,000 round trips alone take 5-23 s
 * depending on the load), 4-5 s ASan, 7-8 s TSan.
 */
static uint64_t scaled(uint64_t n) { return under_san() ? n / 4 : n; }

static void sleep_us(long us) {
  struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
  nanosleep(&ts, NULL);
}

/* ---- a recorder: what ran, in which iteration ---------------------------- */

#define LOGMAX 4096

static struct {
  ax_loop_t *loop; /* NULL: do not read the iteration (loop being freed) */
  int n;
  int v[LOGMAX];
  uint64_t iter[LOGMAX];
} rec;

static void rec_reset(ax_loop_t *loop) {
  memset(&rec, 0, sizeof rec);
  rec.loop = loop;
}

static void rec_fn(void *arg) {
  if (rec.n < LOGMAX) {
    rec.v[rec.n] = (int)(intptr_t)arg;
    rec.iter[rec.n] = rec.loop ? iterations(rec.loop) : 0;
  }
  rec.n++;
}

/* A caller-owned post carrying a value; frees itself if on the heap. */
typedef struct npost {
  ax_post_t post;
  int v;
  bool heap;
} npost_t;

static void npost_fn(ax_post_t *p) {
  npost_t *n = container_of(p, npost_t, post);
  rec_fn((void *)(intptr_t)n->v);
  if (n->heap)
    free(n);
}

static void assert_rec(int n) {
  assert_int_equal(rec.n, n);
  for (int i = 0; i < n; i++)
    if (rec.v[i] != i)
      fail_msg("post %d ran as number %d", rec.v[i], i);
}

/* ---- arguments, options, info -------------------------------------------- */

static void test_args(void **state) {
  (void)state;
  ax_loop_options_t o;
  memset(&o, 0xff, sizeof o);
  ax_loop_options_init(&o);
  assert_int_equal(o.post_capacity, 0);
  assert_int_equal(o.spin_ns, 0);
  assert_false(o.persistent);

  ax_loop_t *loop = ax_test_loop();
  ax_loop_info_t info = info_of(loop);
  assert_int_equal(info.posts_run, 0);
  assert_int_equal(info.mailbox_wakes, 0);
  assert_int_equal(info.mailbox_depth, 0);
  assert_int_equal(info.handoffs_adopted, 0);
  assert_int_equal(info.handoffs_failed, 0);
  assert_int_equal(info.sources, 0);
  assert_false(ax_loop_alive(loop));

  rec_reset(loop);
  npost_t n = {.v = 0};
  assert_int_equal(ax_loop_post(NULL, rec_fn, NULL), -EINVAL);
  assert_int_equal(ax_loop_post(loop, NULL, NULL), -EINVAL);
  n.post.fn = npost_fn;
  assert_int_equal(ax_loop_post_node(NULL, &n.post), -EINVAL);
  assert_int_equal(ax_loop_post_node(loop, NULL), -EINVAL);
  n.post.fn = NULL;
  assert_int_equal(ax_loop_post_node(loop, &n.post), -EINVAL);
  ax_loop_stop(NULL); /* a no-op */
  assert_false(ax_loop_alive(loop));
  assert_int_equal(info_of(loop).mailbox_depth, 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(rec.n, 0);
  assert_int_equal(info_of(loop).posts_run, 0);
  AX_FREE_LOOP(loop);

  /* A post_capacity the mailbox cannot hold (above 2^30, other than
   * AX_MAILBOX_UNBOUNDED) is a bad option. */
  o.post_capacity = (1u << 30) + 1;
  ax_loop_t *untouched = (ax_loop_t *)&o;
  loop = untouched;
  int fds = count_fds();
  assert_int_equal(ax_loop_new(&o, &loop), -EINVAL);
  assert_ptr_equal(loop, untouched);
  assert_int_equal(count_fds(), fds); /* nothing leaked on the way out */

  /* Every new option is accepted. */
  static const uint32_t caps[] = {1, 2, 1000, 1u << 20, AX_MAILBOX_UNBOUNDED};
  for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
    loop = ax_test_loop_opts(AX_BACKEND_EPOLL, caps[i], 1000, i % 2 == 0);
    assert_int_equal(ax_loop_alive(loop), i % 2 == 0);
    AX_FREE_LOOP(loop);
  }
}

/* ---- posts made before a run ---------------------------------------------- */

static void test_post_before_run(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  rec_reset(loop);
  npost_t nodes[3];
  /* Mixed kinds from one thread: they run in the order posted. */
  for (int v = 0; v < 6; v++) {
    if (v % 2) {
      nodes[v / 2] = (npost_t){.post.fn = npost_fn, .v = v};
      assert_int_equal(ax_loop_post_node(loop, &nodes[v / 2].post), 0);
    } else {
      assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)v), 0);
    }
    assert_true(ax_loop_alive(loop));
  }
  ax_loop_info_t info = info_of(loop);
  assert_int_equal(info.mailbox_depth, 6);
  assert_int_equal(info.posts_run, 0);
  assert_int_equal(rec.n, 0);
  AX_ASSERT_VERIFIED(loop);
  char *dump = NULL;
  size_t dump_len = 0;
  FILE *f = open_memstream(&dump, &dump_len);
  assert_non_null(f);
  ax_loop_dump(loop, f);
  fclose(f);
  assert_non_null(strstr(dump, "depth=6"));
  free(dump);

  /* ONCE: all run in the first iteration. */
  assert_int_equal(ax_loop_run(loop, AX_RUN_ONCE), 0);
  assert_rec(6);
  for (int i = 0; i < 6; i++)
    assert_int_equal(rec.iter[i], 0);
  assert_int_equal(iterations(loop), 1);
  info = info_of(loop);
  assert_int_equal(info.posts_run, 6);
  assert_int_equal(info.mailbox_depth, 0);
  assert_false(ax_loop_alive(loop));
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(rec.n, 6);

  /* NOWAIT runs them too. */
  rec_reset(loop);
  for (int v = 0; v < 3; v++)
    assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)v), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_rec(3);
  assert_false(ax_loop_alive(loop));

  /* DEFAULT on a loop with nothing but posts: runs them and returns. */
  rec_reset(loop);
  for (int v = 0; v < 3; v++)
    assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)v), 0);
  guard_start("DEFAULT with posts only", 30);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  guard_stop();
  assert_rec(3);
  assert_int_equal(info_of(loop).posts_run, 12);

  /* An unreferenced active source does not keep it alive; a post does. */
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 60000, &fired);
  assert_false(ax_loop_alive(loop));
  assert_int_equal(ax_loop_post(loop, rec_fn, NULL), 0);
  assert_true(ax_loop_alive(loop));
  assert_int_equal(ax_loop_run(loop, AX_RUN_ONCE), 0);
  assert_false(ax_loop_alive(loop));
  ax_source_free(dog);
  AX_FREE_LOOP(loop);
}

static int order_log[8], order_n;

static void order_io(ax_source_t *src, int fd, unsigned revents, void *d) {
  (void)fd, (void)revents, (void)d;
  if (order_n < 8)
    order_log[order_n++] = 'I';
  ax_source_stop(src);
}

static void order_post(void *arg) {
  (void)arg;
  if (order_n < 8)
    order_log[order_n++] = 'P';
}

/* The mailbox is drained after I/O, in the same iteration. */
static void test_posts_after_io(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  put(sv[1], 1);
  ax_source_t *io = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], order_io, NULL, &io), 0);
  assert_int_equal(ax_io_start(io, AX_READABLE), 0);
  order_n = 0;
  assert_int_equal(ax_loop_post(loop, order_post, NULL), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(order_n, 2);
  assert_int_equal(order_log[0], 'I');
  assert_int_equal(order_log[1], 'P');
  assert_int_equal(iterations(loop), 1);
  ax_source_free(io);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* ---- posts made on the loop's own thread ----------------------------------- */

static struct {
  ax_loop_t *loop;
  ax_post_t post;
  int left, ran, err;
} chain;

static void chain_fn(ax_post_t *p) {
  chain.ran++;
  if (--chain.left > 0 && ax_loop_post_node(chain.loop, p) != 0)
    chain.err++;
}

static int64_t post_from_timer(ax_source_t *src, void *data) {
  (void)data;
  if (ax_loop_post_node(ax_source_loop(src), &chain.post) != 0)
    chain.err++;
  return AX_TIMER_CONTINUE;
}

/* A chain of 3,000 posts, each posted by the previous one, started from a
 * timer callback: all run; at most 1,024 per iteration. */
static void test_post_from_loop_thread(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  memset(&chain, 0, sizeof chain);
  chain.loop = loop;
  chain.left = 3000;
  chain.post.fn = chain_fn;
  ax_source_t *t = NULL;
  assert_int_equal(ax_timer_new(loop, post_from_timer, NULL, &t), 0);
  assert_int_equal(ax_timer_start(t, 1, 0), 0);
  guard_start("post chain", 60);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  guard_stop();
  assert_int_equal(chain.err, 0);
  assert_int_equal(chain.ran, 3000);
  ax_loop_info_t info = info_of(loop);
  assert_int_equal(info.posts_run, 3000);
  /* The timer's iteration plus at least ceil(3000 / 1024) = 3 more. */
  if (info.iterations < 4)
    fail_msg("3000 chained posts ran in %llu iterations (batches of at most "
             "1024)",
             (unsigned long long)info.iterations);
  ax_source_free(t);
  AX_FREE_LOOP(loop);
}

static struct {
  ax_loop_t *loop;
  ax_post_t post;
  bool timer_fired, io_fired;
  long reposts;
  int err;
} starve;

static void starve_fn(ax_post_t *p) {
  starve.reposts++;
  if (!(starve.timer_fired && starve.io_fired) &&
      ax_loop_post_node(starve.loop, p) != 0)
    starve.err++;
}

static void starve_io(ax_source_t *src, int fd, unsigned revents, void *d) {
  (void)fd, (void)revents, (void)d;
  starve.io_fired = true;
  ax_source_stop(src);
}

/* A callback that re-posts itself forever would starve a loop that drained
 * its mailbox to the end: the batch bound lets timers and I/O run. A hang
 * here (the guard) is the failure. */
static void test_no_starvation(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  memset(&starve, 0, sizeof starve);
  starve.loop = loop;
  starve.post.fn = starve_fn;
  int sv[2];
  sp_new(sv);
  put(sv[1], 1);
  ax_source_t *io = NULL, *t = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], starve_io, NULL, &io), 0);
  assert_int_equal(ax_io_start(io, AX_READABLE), 0);
  assert_int_equal(ax_timer_new(loop, flag_cb, &starve.timer_fired, &t), 0);
  assert_int_equal(ax_timer_start(t, 5, 0), 0);
  assert_int_equal(ax_loop_post_node(loop, &starve.post), 0);
  guard_start("self-reposting callback vs timer and I/O", 60);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  guard_stop();
  assert_true(starve.timer_fired);
  assert_true(starve.io_fired);
  assert_int_equal(starve.err, 0);
  print_message("  %ld reposts before the timer and the fd got their turn\n",
                starve.reposts);
  ax_source_free(io);
  ax_source_free(t);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* ---- threads running loops ------------------------------------------------- */

typedef struct runner {
  ax_loop_t *loop;
  ax_run_mode_t mode;
  int rc;
  atomic_bool returned;
  pthread_t thr;
} runner_t;

static void *runner_main(void *arg) {
  runner_t *r = arg;
  r->rc = ax_loop_run(r->loop, r->mode);
  atomic_store(&r->returned, true);
  return NULL;
}

static void runner_start(runner_t *r, ax_loop_t *loop, ax_run_mode_t mode) {
  r->loop = loop;
  r->mode = mode;
  r->rc = -1;
  atomic_store(&r->returned, false);
  assert_int_equal(pthread_create(&r->thr, NULL, runner_main, r), 0);
}

static atomic_int counter;
static void count_fn(void *arg) {
  (void)arg;
  atomic_fetch_add(&counter, 1);
}

static void stop_fn(void *arg) { ax_loop_stop(arg); }

/* Wait (the guard bounds it) until @c reaches @n. */
static void wait_count(atomic_int *c, int n) {
  while (atomic_load(c) < n)
    sleep_us(200);
}

/* A persistent loop with no source runs until ax_loop_stop from another
 * thread; from its own callback a stop ends the iteration. */
static void test_persistent(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop_opts(AX_BACKEND_EPOLL, 0, 0, true);
  assert_true(ax_loop_alive(loop));
  atomic_store(&counter, 0);
  guard_start("persistent loop", 60);
  runner_t r;
  runner_start(&r, loop, AX_RUN_DEFAULT);
  for (int i = 0; i < 10; i++) {
    assert_int_equal(ax_loop_post(loop, count_fn, NULL), 0);
    sleep_us(i * 300);
  }
  wait_count(&counter, 10);
  /* Idle with nothing live: still running (it could only return early). */
  sleep_us(30000);
  assert_false(atomic_load(&r.returned));
  ax_loop_stop(loop);
  pthread_join(r.thr, NULL);
  guard_stop();
  assert_int_equal(r.rc, 0);
  assert_int_equal(atomic_load(&counter), 10);
  ax_loop_info_t info = info_of(loop);
  assert_int_equal(info.posts_run, 10);
  assert_true(ax_loop_alive(loop));
  guard_stop();
  guard_start("persistent loop, ONCE and stop from a callback", 60);

  /* ONCE blocks until a post from another thread has run. */
  ax_source_t *far = NULL;
  bool far_fired = false;
  assert_int_equal(ax_timer_new(loop, flag_cb, &far_fired, &far), 0);
  assert_int_equal(ax_timer_start(far, 60000, 0), 0);
  runner_start(&r, loop, AX_RUN_ONCE);
  sleep_us(2000);
  assert_int_equal(ax_loop_post(loop, count_fn, NULL), 0);
  pthread_join(r.thr, NULL);
  assert_int_equal(r.rc, 0);
  assert_int_equal(atomic_load(&counter), 11);
  assert_false(far_fired);
  ax_source_free(far);

  /* On its own thread: a posted callback stops it. */
  assert_int_equal(ax_loop_post(loop, stop_fn, loop), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  /* ONCE returns after the post ran. */
  assert_int_equal(ax_loop_post(loop, count_fn, NULL), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_ONCE), 0);
  guard_stop();
  assert_int_equal(atomic_load(&counter), 12);
  AX_ASSERT_VERIFIED(loop);
  AX_FREE_LOOP(loop);
}

static atomic_int started;
static void started_fn(void *arg) {
  (void)arg;
  atomic_fetch_add(&started, 1);
}

/* ax_loop_stop from another thread ends a run blocked in the backend: with
 * a referenced 60 s timer, and persistent with no source; the stop is sent
 * at varied moments after the loop began (from at once to 20 ms). */
static void test_stop_blocked(void **state) {
  (void)state;
  static const long delay_us[] = {0, 0, 20, 100, 500, 2000, 5000, 20000};
  uint64_t wakes = 0;
  guard_start("stop from another thread", 120);
  for (int kind = 0; kind < 2; kind++) {
    for (size_t k = 0; k < sizeof delay_us / sizeof delay_us[0]; k++) {
      ax_loop_t *loop = ax_test_loop_opts(ax_test_backend, 0, 0, kind == 1);
      bool fired = false;
      ax_source_t *t = NULL;
      if (kind == 0) {
        assert_int_equal(ax_timer_new(loop, flag_cb, &fired, &t), 0);
        assert_int_equal(ax_timer_start(t, 60000, 0), 0);
      }
      atomic_store(&started, 0);
      assert_int_equal(ax_loop_post(loop, started_fn, NULL), 0);
      runner_t r;
      runner_start(&r, loop, AX_RUN_DEFAULT);
      wait_count(&started, 1);
      sleep_us(delay_us[k]);
      ax_loop_stop(loop);
      pthread_join(r.thr, NULL);
      assert_int_equal(r.rc, 0);
      assert_false(fired);
      wakes += info_of(loop).mailbox_wakes;
      if (t)
        ax_source_free(t);
      AX_FREE_LOOP(loop);
    }
  }
  guard_stop();
  print_message("  16 stops, %llu of them woke a sleeping loop\n",
                (unsigned long long)wakes);
}

static void *stop_thread_main(void *arg) {
  ax_loop_stop(arg);
  return NULL;
}

/* A stop sent while the loop is not running ends the next run after its
 * first iteration (without waiting for the 60 s timer); stops in flight
 * coalesce; a NOWAIT run consumes it too. */
static void test_stop_not_running(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  bool fired = false, short_fired = false;
  ax_source_t *t = NULL, *t2 = NULL;
  assert_int_equal(ax_timer_new(loop, flag_cb, &fired, &t), 0);
  assert_int_equal(ax_timer_start(t, 60000, 0), 0);
  assert_int_equal(ax_timer_new(loop, flag_cb, &short_fired, &t2), 0);
  guard_start("stop while not running", 60);

  /* From this (the loop's) thread. */
  ax_loop_stop(loop);
  assert_int_equal(info_of(loop).mailbox_depth, 1);
  uint64_t it = iterations(loop);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_int_equal(iterations(loop), it + 1);
  assert_false(fired);
  assert_int_equal(info_of(loop).mailbox_depth, 0);

  /* From another thread. */
  pthread_t thr;
  assert_int_equal(pthread_create(&thr, NULL, stop_thread_main, loop), 0);
  pthread_join(thr, NULL);
  it = iterations(loop);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_int_equal(iterations(loop), it + 1);
  assert_false(fired);

  /* Three stops coalesce into one: the run after the stopped one is not
   * stopped — it lasts until the 5 ms timer ends it (the 60 s one is
   * stopped meanwhile). */
  ax_loop_stop(loop);
  ax_loop_stop(loop);
  ax_loop_stop(loop);
  assert_int_equal(info_of(loop).mailbox_depth, 1);
  it = iterations(loop);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_int_equal(iterations(loop), it + 1);
  assert_int_equal(ax_source_stop(t), 0);
  assert_int_equal(ax_timer_start(t2, 5, 0), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_true(short_fired);

  /* Posts queued before the stop run in the stopped iteration. */
  rec_reset(loop);
  assert_int_equal(ax_timer_start(t, 60000, 0), 0);
  for (int v = 0; v < 3; v++)
    assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)v), 0);
  ax_loop_stop(loop);
  it = iterations(loop);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_int_equal(iterations(loop), it + 1);
  assert_rec(3);

  /* More than one batch queued before the stop: the run ends after the
   * iteration that receives the stop (the second), all of them run. */
  rec_reset(loop);
  rec.loop = NULL;
  for (int v = 0; v < 1500; v++)
    assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)v), 0);
  ax_loop_stop(loop);
  it = iterations(loop);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_rec(1500);
  assert_int_equal(iterations(loop), it + 2);

  /* A NOWAIT run takes the stop; the DEFAULT run after it is not stopped. */
  ax_loop_stop(loop);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(info_of(loop).mailbox_depth, 0);
  short_fired = false;
  assert_int_equal(ax_source_stop(t), 0);
  assert_int_equal(ax_timer_start(t2, 5, 0), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_true(short_fired);
  guard_stop();
  assert_false(fired);
  ax_source_free(t);
  ax_source_free(t2);
  AX_FREE_LOOP(loop);
}

typedef struct flood_arg {
  ax_loop_t *loop;
  int n, errors;
} flood_arg_t;

static void *flood_main(void *arg) {
  flood_arg_t *a = arg;
  for (int i = 0; i < a->n; i++) {
    int rc;
    while ((rc = ax_loop_post(a->loop, count_fn, NULL)) == -EAGAIN)
      sched_yield();
    if (rc != 0)
      a->errors++;
  }
  return NULL;
}

/* A loop that never blocks (NOWAIT runs only) never announces a sleep, so
 * posting to it costs no wake at all. */
static void test_busy_loop_no_wakes(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  atomic_store(&counter, 0);
  flood_arg_t a = {loop, (int)scaled(100000), 0};
  guard_start("busy loop", 60);
  pthread_t thr;
  assert_int_equal(pthread_create(&thr, NULL, flood_main, &a), 0);
  while (atomic_load(&counter) < a.n)
    assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  pthread_join(thr, NULL);
  guard_stop();
  assert_int_equal(a.errors, 0);
  ax_loop_info_t info = info_of(loop);
  assert_int_equal(info.posts_run, (uint64_t)a.n);
  assert_int_equal(info.mailbox_wakes, 0);
  AX_FREE_LOOP(loop);
}

/* ---- post_capacity --------------------------------------------------------- */

static void test_post_capacity(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop_opts(AX_BACKEND_EPOLL, 4, 0, false);
  rec_reset(loop);
  bool fired = false;
  ax_source_t *t = NULL;
  assert_int_equal(ax_timer_new(loop, flag_cb, &fired, &t), 0);
  assert_int_equal(ax_timer_start(t, 60000, 0), 0);
  npost_t nodes[3];
  for (int v = 0; v < 4; v++) {
    if (v % 2) {
      nodes[v / 2] = (npost_t){.post.fn = npost_fn, .v = v};
      assert_int_equal(ax_loop_post_node(loop, &nodes[v / 2].post), 0);
    } else {
      assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)v), 0);
    }
  }
  /* Full: plain posts are refused (nothing queued, nothing leaked). */
  for (int i = 0; i < 3; i++)
    assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)100),
                     -EAGAIN);
  nodes[2] = (npost_t){.post.fn = npost_fn, .v = 200};
  assert_int_equal(ax_loop_post_node(loop, &nodes[2].post), -EAGAIN);
  assert_ptr_equal(nodes[2].post.fn, npost_fn);
  assert_int_equal(info_of(loop).mailbox_depth, 4);
  /* A stop is a control message: it gets in past the capacity. */
  ax_loop_stop(loop);
  assert_int_equal(info_of(loop).mailbox_depth, 5);
  assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)100), -EAGAIN);

  guard_start("post_capacity", 60);
  uint64_t it = iterations(loop);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  guard_stop();
  assert_int_equal(iterations(loop), it + 1);
  assert_rec(4);
  assert_false(fired);
  assert_int_equal(info_of(loop).posts_run, 4);
  assert_int_equal(info_of(loop).mailbox_depth, 0);

  /* Room again: the refused node can be posted now. */
  assert_int_equal(ax_loop_post_node(loop, &nodes[2].post), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(rec.n, 5);
  assert_int_equal(rec.v[4], 200);
  ax_source_free(t);
  AX_FREE_LOOP(loop);

  /* Capacity 1. */
  loop = ax_test_loop_opts(AX_BACKEND_EPOLL, 1, 0, false);
  rec_reset(loop);
  assert_int_equal(ax_loop_post(loop, rec_fn, (void *)0), 0);
  assert_int_equal(ax_loop_post(loop, rec_fn, (void *)1), -EAGAIN);
  ax_loop_stop(loop);
  ax_loop_stop(loop);
  assert_int_equal(info_of(loop).mailbox_depth, 2);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_rec(1);
  AX_FREE_LOOP(loop);

  /* Unbounded. */
  loop = ax_test_loop_opts(AX_BACKEND_EPOLL, AX_MAILBOX_UNBOUNDED, 0, false);
  rec_reset(loop);
  for (int v = 0; v < 3000; v++)
    assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)v), 0);
  assert_int_equal(info_of(loop).mailbox_depth, 3000);
  guard_start("unbounded posts", 60);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  guard_stop();
  assert_rec(3000);
  AX_FREE_LOOP(loop);
}

/* ---- ax_loop_free with posts queued ---------------------------------------- */

static struct {
  ax_loop_t *loop;
  int ran, shutdown, other;
} fr;

/* Runs inside ax_loop_free: the mailbox is closed, so posting to the loop
 * being freed is refused (and the refused node is not leaked). */
static void free_time_fn(void *arg) {
  (void)arg;
  fr.ran++;
  int rc = ax_loop_post(fr.loop, count_fn, NULL);
  fr.shutdown += rc == -ESHUTDOWN;
  fr.other += rc != -ESHUTDOWN;
  npost_t n = {.post.fn = npost_fn};
  rc = ax_loop_post_node(fr.loop, &n.post);
  fr.shutdown += rc == -ESHUTDOWN;
  fr.other += rc != -ESHUTDOWN;
  ax_loop_stop(fr.loop); /* harmless */
}

typedef struct poster_arg {
  ax_loop_t *loop;
  int n;
} poster_arg_t;

static void *free_poster_main(void *arg) {
  poster_arg_t *a = arg;
  for (int i = 0; i < a->n; i++) {
    npost_t *n = malloc(sizeof *n);
    if (!n)
      abort();
    *n = (npost_t){.post.fn = npost_fn, .v = 1000 + i, .heap = true};
    if (ax_loop_post_node(a->loop, &n->post) != 0)
      abort();
    if (ax_loop_post(a->loop, rec_fn, (void *)(intptr_t)(2000 + i)) != 0)
      abort();
  }
  return NULL;
}

static void test_free_runs_queued(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  rec_reset(NULL);
  for (int v = 0; v < 10; v++) {
    npost_t *n = malloc(sizeof *n);
    assert_non_null(n);
    *n = (npost_t){.post.fn = npost_fn, .v = 2 * v, .heap = true};
    assert_int_equal(ax_loop_post_node(loop, &n->post), 0);
    assert_int_equal(ax_loop_post(loop, rec_fn, (void *)(intptr_t)(2 * v + 1)),
                     0);
  }
  ax_loop_stop(loop);
  /* Posts queued by another thread that has finished. */
  poster_arg_t a = {loop, 5};
  pthread_t thr;
  assert_int_equal(pthread_create(&thr, NULL, free_poster_main, &a), 0);
  pthread_join(thr, NULL);
  memset(&fr, 0, sizeof fr);
  fr.loop = loop;
  assert_int_equal(ax_loop_post(loop, free_time_fn, NULL), 0);
  atomic_store(&counter, 0);
  AX_FREE_LOOP(loop);
  /* 20 from here, 10 from the thread, the free-time callback. */
  assert_int_equal(rec.n, 30);
  for (int i = 0; i < 20; i++)
    assert_int_equal(rec.v[i], i);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(rec.v[20 + 2 * i], 1000 + i);
    assert_int_equal(rec.v[21 + 2 * i], 2000 + i);
  }
  assert_int_equal(fr.ran, 1);
  assert_int_equal(fr.shutdown, 2);
  assert_int_equal(fr.other, 0);
  assert_int_equal(atomic_load(&counter), 0);
}

/* ---- a sleeping consumer of a raw mailbox (producers' return path) --------- */

#define LOST_MS 3000

typedef struct sleeper {
  ax_mailbox_t *mb;
  int efd;
  uint64_t sleeps, lost;
} sleeper_t;

static void efd_wake(void *ctx) {
  uint64_t one = 1;
  if (write(*(const int *)ctx, &one, sizeof one) != (ssize_t)sizeof one)
    abort();
}

static void sleeper_init(sleeper_t *s) {
  memset(s, 0, sizeof *s);
  s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  assert_true(s->efd >= 0);
  ax_mailbox_options_t o;
  ax_mailbox_options_init(&o);
  o.wake = efd_wake;
  o.wake_ctx = &s->efd;
  assert_int_equal(ax_mailbox_new(&o, &s->mb), 0);
}

static void sleeper_fini(sleeper_t *s) {
  assert_null(ax_mailbox_pop(s->mb));
  assert_int_equal(ax_mailbox_free(s->mb), 0);
  close(s->efd);
}

/* After a pop returned NULL: wait (through the wake protocol) until a
 * message may be there; a second LOST_MS timeout with one queued is a lost
 * wakeup. */
static void sleeper_wait(sleeper_t *s) {
  if (!ax_mailbox_empty(s->mb)) {
    sched_yield();
    return;
  }
  if (ax_mailbox_sleep_prepare(s->mb) != 0)
    return;
  s->sleeps++;
  struct pollfd p = {.fd = s->efd, .events = POLLIN};
  if (poll(&p, 1, LOST_MS) == 0 && !ax_mailbox_empty(s->mb) &&
      poll(&p, 1, LOST_MS) == 0 && !ax_mailbox_empty(s->mb)) {
    s->lost++;
    fprintf(stderr, "lost wakeup in a return mailbox\n");
  }
  uint64_t v;
  if (read(s->efd, &v, sizeof v) < 0 && errno != EAGAIN)
    abort();
  ax_mailbox_sleep_finish(s->mb);
}

/* ---- stress: 4 threads post numbered nodes, recycled ------------------------ */

#define NPROD 4
#define POOL 32

typedef struct smsg {
  ax_post_t post;
  uint32_t prod;
  uint64_t seq;
} smsg_t;

typedef struct stress stress_t;

typedef struct sprod {
  stress_t *st;
  int id;
  sleeper_t ret;
  smsg_t pool[POOL];
  bool inflight[POOL];
  uint64_t sent, back, errors, eagain;
  pthread_t thr;
} sprod_t;

struct stress {
  ax_loop_t *loop;
  uint64_t per_prod;
  sprod_t prod[NPROD];
  atomic_bool consumer_done;
  /* the loop thread's tally */
  uint8_t *seen[NPROD];
  uint64_t next[NPROD];
  uint64_t got, want, dup, ooo, bad, lost, ret_errors;
};

static stress_t *g_stress; /* for ax_loop_post's callback */

/* Count one message on the loop thread; stop the loop after the last. */
static void stress_tally(stress_t *st, uint64_t prod, uint64_t seq) {
  if (prod >= NPROD || seq >= st->per_prod) {
    st->bad++;
    return;
  }
  if (st->seen[prod][seq])
    st->dup++;
  st->seen[prod][seq] = 1;
  if (seq != st->next[prod])
    st->ooo++;
  st->next[prod] = seq + 1;
  if (++st->got == st->want)
    ax_loop_stop(st->loop);
}

static void smsg_fn(ax_post_t *p) {
  smsg_t *m = container_of(p, smsg_t, post);
  stress_t *st = g_stress;
  uint32_t prod = m->prod;
  stress_tally(st, prod, m->seq);
  if (prod < NPROD && ax_mailbox_push(st->prod[prod].ret.mb, &p->node, 0))
    st->ret_errors++;
}

/* Take back one node (or wait for one); false once none can come. */
static bool sprod_take_back(sprod_t *p, smsg_t **freel, int *nfree,
                            bool wait) {
  ax_mbnode_t *n = ax_mailbox_pop(p->ret.mb);
  if (!n) {
    if (!wait)
      return false;
    if (atomic_load(&p->st->consumer_done) && ax_mailbox_empty(p->ret.mb))
      return false;
    sleeper_wait(&p->ret);
    return true;
  }
  smsg_t *m = container_of(n, smsg_t, post.node);
  ptrdiff_t i = m - p->pool;
  if (i < 0 || i >= POOL || !p->inflight[i]) {
    p->errors++;
    return true;
  }
  p->inflight[i] = false;
  p->back++;
  freel[(*nfree)++] = m;
  return true;
}

static void *sprod_main(void *arg) {
  sprod_t *p = arg;
  stress_t *st = p->st;
  smsg_t *freel[POOL];
  int nfree = POOL;
  for (int i = 0; i < POOL; i++) {
    freel[i] = &p->pool[i];
    p->pool[i].post.fn = smsg_fn;
  }
  for (uint64_t seq = 0; seq < st->per_prod; seq++) {
    bool stuck = false;
    while (nfree == 0 && !stuck)
      stuck = !sprod_take_back(p, freel, &nfree, true);
    if (stuck)
      break;
    smsg_t *m = freel[--nfree];
    p->inflight[m - p->pool] = true;
    m->prod = (uint32_t)p->id;
    m->seq = seq;
    int rc = ax_loop_post_node(st->loop, &m->post);
    if (rc != 0) {
      p->errors++;
      p->inflight[m - p->pool] = false;
      break;
    }
    p->sent++;
    if ((seq & 7) == 0)
      sprod_take_back(p, freel, &nfree, false);
  }
  while (nfree < POOL)
    if (!sprod_take_back(p, freel, &nfree, true))
      break;
  return NULL;
}

static void stress_setup(stress_t *st, ax_loop_t *loop, uint64_t total) {
  memset(st, 0, sizeof *st);
  st->loop = loop;
  st->per_prod = total / NPROD;
  st->want = st->per_prod * NPROD;
  for (int p = 0; p < NPROD; p++) {
    st->seen[p] = calloc(st->per_prod, 1);
    assert_non_null(st->seen[p]);
  }
  g_stress = st;
}

static void stress_check(stress_t *st, const char *what, uint64_t ms) {
  for (int p = 0; p < NPROD; p++) {
    for (uint64_t i = 0; i < st->per_prod; i++)
      st->lost += !st->seen[p][i];
    free(st->seen[p]);
  }
  ax_loop_info_t info = info_of(st->loop);
  print_message("  %s: %llu posts in %llu ms, %llu iterations, %llu wakes\n",
                what, (unsigned long long)st->want, (unsigned long long)ms,
                (unsigned long long)info.iterations,
                (unsigned long long)info.mailbox_wakes);
  if (st->lost || st->dup || st->ooo || st->bad || st->ret_errors)
    fail_msg("%s: lost %llu, duplicated %llu, out of order %llu, bad %llu, "
             "return errors %llu",
             what, (unsigned long long)st->lost, (unsigned long long)st->dup,
             (unsigned long long)st->ooo, (unsigned long long)st->bad,
             (unsigned long long)st->ret_errors);
  assert_int_equal(st->got, st->want);
  assert_int_equal(info.posts_run, st->want);
}

/* 4 threads x 250,000 ax_loop_post_node (scaled), 32 nodes each, every node
 * returned through the producer's own mailbox. */
static void test_stress_post_node(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop_opts(AX_BACKEND_EPOLL, 0, 0, true);
  stress_t *st = calloc(1, sizeof *st);
  assert_non_null(st);
  stress_setup(st, loop, scaled(1000000));
  for (int p = 0; p < NPROD; p++) {
    st->prod[p].st = st;
    st->prod[p].id = p;
    sleeper_init(&st->prod[p].ret);
  }
  guard_start("post_node stress", 200);
  uint64_t t0 = mono_ms();
  for (int p = 0; p < NPROD; p++)
    assert_int_equal(
        pthread_create(&st->prod[p].thr, NULL, sprod_main, &st->prod[p]), 0);
  int rc = ax_loop_run(loop, AX_RUN_DEFAULT); /* stops after the last */
  atomic_store(&st->consumer_done, true);
  for (int p = 0; p < NPROD; p++)
    pthread_join(st->prod[p].thr, NULL);
  uint64_t ms = mono_ms() - t0;
  guard_stop();
  assert_int_equal(rc, 0);
  uint64_t errors = 0, lost_wakes = 0;
  for (int p = 0; p < NPROD; p++) {
    sprod_t *pr = &st->prod[p];
    errors += pr->errors;
    lost_wakes += pr->ret.lost;
    assert_int_equal(pr->sent, st->per_prod);
    assert_int_equal(pr->back, st->per_prod);
    for (int i = 0; i < POOL; i++)
      if (pr->inflight[i])
        fail_msg("producer %d: node %d never came back", p, i);
    sleeper_fini(&pr->ret);
  }
  assert_int_equal(errors, 0);
  assert_int_equal(lost_wakes, 0);
  stress_check(st, "ax_loop_post_node", ms);
  free(st);
  AX_FREE_LOOP(loop);
}

static void spost_fn(void *arg) {
  uintptr_t v = (uintptr_t)arg;
  stress_tally(g_stress, v >> 40, v & ((1ull << 40) - 1));
}

typedef struct spost_arg {
  stress_t *st;
  int id;
  uint64_t eagain, errors;
  pthread_t thr;
} spost_arg_t;

static void *spost_main(void *arg) {
  spost_arg_t *a = arg;
  for (uint64_t seq = 0; seq < a->st->per_prod; seq++) {
    uintptr_t v = ((uintptr_t)a->id << 40) | seq;
    for (;;) {
      int rc = ax_loop_post(a->st->loop, spost_fn, (void *)v);
      if (rc == 0)
        break;
      if (rc != -EAGAIN) {
        a->errors++;
        return NULL;
      }
      a->eagain++;
      sched_yield();
    }
  }
  return NULL;
}

/* 4 threads x 125,000 ax_loop_post (scaled) into a loop whose post_capacity
 * of 256 makes them retry on -EAGAIN. */
static void test_stress_post_malloc(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop_opts(AX_BACKEND_EPOLL, 256, 0, true);
  stress_t *st = calloc(1, sizeof *st);
  assert_non_null(st);
  stress_setup(st, loop, scaled(500000));
  spost_arg_t a[NPROD];
  guard_start("ax_loop_post stress", 200);
  uint64_t t0 = mono_ms();
  for (int p = 0; p < NPROD; p++) {
    a[p] = (spost_arg_t){.st = st, .id = p};
    assert_int_equal(pthread_create(&a[p].thr, NULL, spost_main, &a[p]), 0);
  }
  int rc = ax_loop_run(loop, AX_RUN_DEFAULT);
  for (int p = 0; p < NPROD; p++)
    pthread_join(a[p].thr, NULL);
  uint64_t ms = mono_ms() - t0;
  guard_stop();
  assert_int_equal(rc, 0);
  uint64_t eagain = 0;
  for (int p = 0; p < NPROD; p++) {
    assert_int_equal(a[p].errors, 0);
    eagain += a[p].eagain;
  }
  print_message("  %llu refusals retried\n", (unsigned long long)eagain);
  stress_check(st, "ax_loop_post", ms);
  assert_int_equal(info_of(loop).mailbox_depth, 0);
  free(st);
  AX_FREE_LOOP(loop);
}

/* ---- ping-pong between two loops: lost wakeups ------------------------------ */

/* A stall detector: fails the binary, with the count, if *progress does not
 * move for STALL_S seconds. Finer than the guard: says where it hung. */
#define STALL_S 20

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool on;
  const atomic_ulong *progress;
  const atomic_int *where;
  const char *what;
  pthread_t thr;
} stall = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false,
           NULL, NULL, NULL, 0};

static void *stall_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&stall.mu);
  unsigned long last = atomic_load(stall.progress);
  int still = 0;
  while (stall.on) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    pthread_cond_timedwait(&stall.cv, &stall.mu, &until);
    if (!stall.on)
      break;
    unsigned long now = atomic_load(stall.progress);
    still = now == last ? still + 1 : 0;
    last = now;
    if (still >= STALL_S) {
      fprintf(stderr,
              "ERROR: lost wakeup: %s stalled at round trip %lu for %d s, "
              "ball posted to loop %c\n",
              stall.what, now, STALL_S, atomic_load(stall.where) ? 'B' : 'A');
      fflush(stderr);
      _exit(3);
    }
  }
  pthread_mutex_unlock(&stall.mu);
  return NULL;
}

static void stall_start(const char *what, const atomic_ulong *progress,
                        const atomic_int *where) {
  stall.on = true;
  stall.what = what;
  stall.progress = progress;
  stall.where = where;
  assert_int_equal(pthread_create(&stall.thr, NULL, stall_main, NULL), 0);
}

static void stall_stop(void) {
  pthread_mutex_lock(&stall.mu);
  stall.on = false;
  pthread_cond_signal(&stall.cv);
  pthread_mutex_unlock(&stall.mu);
  pthread_join(stall.thr, NULL);
}

typedef struct ball {
  ax_post_t post;
  ax_loop_t *loops[2]; /* A, B */
  int at;              /* the loop the ball was posted to */
  uint64_t trips, target, errors;
  uint64_t b_delay_ns; /* B busy-waits this long before replying */
  atomic_ulong progress;
  atomic_int where;
} ball_t;

/* Runs on A (counts a round trip, sends the ball to B or ends the game) or
 * on B (sends it back). After a successful post the ball is the other
 * loop's: nothing touches it. */
static void ball_fn(ax_post_t *p) {
  ball_t *b = container_of(p, ball_t, post);
  int here = b->at;
  if (here == 0) {
    b->trips++;
    atomic_store_explicit(&b->progress, b->trips, memory_order_relaxed);
    if (b->trips == b->target) {
      ax_loop_stop(b->loops[1]);
      ax_loop_stop(b->loops[0]);
      return;
    }
  }
  if (here == 1 && b->b_delay_ns) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do
      clock_gettime(CLOCK_MONOTONIC, &t1);
    while ((uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000u + (uint64_t)t1.tv_nsec -
               (uint64_t)t0.tv_nsec <
           b->b_delay_ns);
  }
  b->at = !here;
  atomic_store_explicit(&b->where, !here, memory_order_relaxed);
  ax_loop_t *self = b->loops[here], *other = b->loops[!here];
  if (ax_loop_post_node(other, &b->post) != 0) {
    b->at = here;
    b->errors++;
    ax_loop_stop(other);
    ax_loop_stop(self);
  }
}

/* @n round trips B -> A -> B, each loop on its own thread and persistent
 * with no source, so between visits it blocks in its backend (unless
 * @spin_ns lets it catch the ball spinning). */
static void busy_io(ax_source_t *src, int fd, unsigned revents, void *d) {
  (void)src, (void)fd, (void)revents, (void)d; /* never reads: stays ready */
}

/* @busy_fd: A also watches an fd that is always readable, and only A
 * spins; B waits 20 us before each reply, so A's drain has ended and its
 * spin catches the ball: the wait is skipped, but at most 64 times in a
 * row, so A must poll its I/O at least once every 65 iterations. */
static void pingpong_ex(ax_backend_t be, uint64_t n, uint32_t spin_ns,
                        bool busy_fd) {
  ball_t *b = calloc(1, sizeof *b);
  assert_non_null(b);
  b->loops[0] = ax_test_loop_opts(be, 0, spin_ns, true);
  b->loops[1] = ax_test_loop_opts(be, 0, busy_fd ? 0 : spin_ns, true);
  int sv[2] = {-1, -1};
  ax_source_t *io = NULL;
  if (busy_fd) {
    sp_new(sv);
    put(sv[1], 1);
    assert_int_equal(ax_io_new(b->loops[0], sv[0], busy_io, NULL, &io), 0);
    assert_int_equal(ax_io_start(io, AX_READABLE), 0);
  }
  b->target = n;
  b->post.fn = ball_fn;
  b->b_delay_ns = busy_fd ? 20000 : 0;
  char what[96];
  snprintf(what, sizeof what, "ping-pong (%s, spin %u ns%s)",
           ax_loop_backend(b->loops[0]), spin_ns,
           busy_fd ? ", A has a ready fd" : "");
  guard_start("ping-pong", 230);
  stall_start(what, &b->progress, &b->where);
  uint64_t t0 = mono_ms();
  runner_t rb;
  runner_start(&rb, b->loops[1], AX_RUN_DEFAULT);
  /* Serve to B: B returns it n times, A counts n round trips. */
  b->at = 1;
  atomic_store(&b->where, 1);
  assert_int_equal(ax_loop_post_node(b->loops[1], &b->post), 0);
  int rc = ax_loop_run(b->loops[0], AX_RUN_DEFAULT);
  pthread_join(rb.thr, NULL);
  uint64_t ms = mono_ms() - t0;
  stall_stop();
  guard_stop();
  assert_int_equal(rc, 0);
  assert_int_equal(rb.rc, 0);
  assert_int_equal(b->errors, 0);
  assert_int_equal(b->trips, n);
  ax_loop_info_t ia = info_of(b->loops[0]), ib = info_of(b->loops[1]);
  print_message("  %s: %llu round trips in %llu ms; wakes A %llu, B %llu; "
                "iterations A %llu, B %llu\n",
                what, (unsigned long long)n, (unsigned long long)ms,
                (unsigned long long)ia.mailbox_wakes,
                (unsigned long long)ib.mailbox_wakes,
                (unsigned long long)ia.iterations,
                (unsigned long long)ib.iterations);
  assert_int_equal(ia.posts_run, n);
  assert_int_equal(ib.posts_run, n);
  if (busy_fd) {
    print_message("  A: %llu I/O events in %llu iterations\n",
                  (unsigned long long)ia.io_events,
                  (unsigned long long)ia.iterations);
    if (ia.iterations > 65 * ia.io_events + 64)
      fail_msg("a ready fd was polled %llu times in %llu iterations (at "
               "most 64 waits may be skipped in a row)",
               (unsigned long long)ia.io_events,
               (unsigned long long)ia.iterations);
    ax_source_free(io);
    close2(sv);
  }
  AX_ASSERT_VERIFIED(b->loops[0]);
  AX_ASSERT_VERIFIED(b->loops[1]);
  AX_FREE_LOOP(b->loops[0]);
  AX_FREE_LOOP(b->loops[1]);
  free(b);
}

static void pingpong(ax_backend_t be, uint64_t n, uint32_t spin_ns) {
  pingpong_ex(be, n, spin_ns, false);
}

/* 1,000,000 round trips plain; 100,000 under ASan or TSan. */
static void test_pingpong_sleeping(void **state) {
  (void)state;
  pingpong(AX_BACKEND_EPOLL, under_san() ? 100000 : 1000000, 0);
}

/* 50,000 round trips with a 50 us spin before each sleep. */
static void test_pingpong_spin(void **state) {
  (void)state;
  pingpong(AX_BACKEND_EPOLL, scaled(50000), 50000);
}

/* 20,000 round trips (scaled); A spins up to 1 ms and has a ready fd. */
static void test_spin_polls_io(void **state) {
  (void)state;
  pingpong_ex(AX_BACKEND_EPOLL, scaled(20000), 1000000, true);
}

/* Per backend: 50,000 round trips sleeping (scaled). */
static void test_pingpong_short(void **state) {
  (void)state;
  pingpong(ax_test_backend, scaled(50000), 0);
}

/* ---- stop racing with posts ------------------------------------------------- */

#define SR_PROD 3

typedef struct sr sr_t;

typedef struct sr_msg {
  ax_post_t post;
  sr_t *sr;
  uint32_t prod, seq;
} sr_msg_t;

typedef struct sr_prod {
  sr_t *sr;
  int id;
  int errors;
  pthread_t thr;
} sr_prod_t;

struct sr {
  ax_loop_t *loop;
  uint32_t per;
  sr_msg_t *msgs[SR_PROD];
  uint8_t *run_of[SR_PROD]; /* the run that ran it (1, 2), 0: not run */
  int stopper;              /* producer that sends the stop; -1: main */
  uint32_t stop_at;         /* ... right after posting this seq */
  atomic_ulong posted;
  atomic_bool run1_done;
  /* loop thread */
  int cur_run;
  uint32_t next[SR_PROD];
  uint64_t dup, ooo, ran[3];
  int rc[3];
  pthread_t thr;
  sr_prod_t prod[SR_PROD];
};

static void sr_fn(ax_post_t *p) {
  sr_msg_t *m = container_of(p, sr_msg_t, post);
  sr_t *sr = m->sr;
  if (sr->run_of[m->prod][m->seq])
    sr->dup++;
  sr->run_of[m->prod][m->seq] = (uint8_t)sr->cur_run;
  if (m->seq != sr->next[m->prod])
    sr->ooo++;
  sr->next[m->prod] = m->seq + 1;
  sr->ran[sr->cur_run]++;
}

static void *sr_loop_main(void *arg) {
  sr_t *sr = arg;
  sr->cur_run = 1;
  sr->rc[1] = ax_loop_run(sr->loop, AX_RUN_DEFAULT);
  atomic_store(&sr->run1_done, true);
  sr->cur_run = 2;
  sr->rc[2] = ax_loop_run(sr->loop, AX_RUN_DEFAULT);
  return NULL;
}

static void *sr_prod_main(void *arg) {
  sr_prod_t *p = arg;
  sr_t *sr = p->sr;
  for (uint32_t seq = 0; seq < sr->per; seq++) {
    sr_msg_t *m = &sr->msgs[p->id][seq];
    m->post.fn = sr_fn;
    m->sr = sr;
    m->prod = (uint32_t)p->id;
    m->seq = seq;
    if (ax_loop_post_node(sr->loop, &m->post) != 0)
      p->errors++;
    atomic_fetch_add(&sr->posted, 1);
    if (p->id == sr->stopper && seq == sr->stop_at)
      ax_loop_stop(sr->loop);
  }
  return NULL;
}

/* 10 rounds of 3 threads x 20,000 posts (scaled) into a persistent loop,
 * stopped mid-stream by the main thread (even rounds) or by one of the
 * posting threads (odd rounds); then run again and stopped after the posts. */
static void test_stop_races_posts(void **state) {
  (void)state;
  uint32_t per = (uint32_t)scaled(20000);
  uint64_t s = 0x5eed;
  uint64_t in_run[3] = {0, 0, 0};
  guard_start("stop racing with posts", 200);
  for (int round = 0; round < 10; round++) {
    sr_t *sr = calloc(1, sizeof *sr);
    assert_non_null(sr);
    sr->loop = ax_test_loop_opts(AX_BACKEND_EPOLL, 0, 0, true);
    sr->per = per;
    for (int p = 0; p < SR_PROD; p++) {
      sr->msgs[p] = calloc(per, sizeof(sr_msg_t));
      sr->run_of[p] = calloc(per, 1);
      assert_non_null(sr->msgs[p]);
      assert_non_null(sr->run_of[p]);
      sr->prod[p] = (sr_prod_t){.sr = sr, .id = p};
    }
    sr->stopper = round % 2 ? (int)(xorshift(&s) % SR_PROD) : -1;
    sr->stop_at = (uint32_t)(xorshift(&s) % per);
    uint64_t stop_after = xorshift(&s) % ((uint64_t)per * SR_PROD);
    assert_int_equal(pthread_create(&sr->thr, NULL, sr_loop_main, sr), 0);
    for (int p = 0; p < SR_PROD; p++)
      assert_int_equal(
          pthread_create(&sr->prod[p].thr, NULL, sr_prod_main, &sr->prod[p]),
          0);
    if (sr->stopper < 0) {
      while (atomic_load(&sr->posted) < stop_after)
        sched_yield();
      ax_loop_stop(sr->loop);
    }
    /* The first stop has been taken: a second one cannot coalesce into it. */
    while (!atomic_load(&sr->run1_done))
      sleep_us(100);
    for (int p = 0; p < SR_PROD; p++)
      pthread_join(sr->prod[p].thr, NULL);
    ax_loop_stop(sr->loop);
    pthread_join(sr->thr, NULL);

    assert_int_equal(sr->rc[1], 0);
    assert_int_equal(sr->rc[2], 0);
    assert_int_equal(sr->dup, 0);
    assert_int_equal(sr->ooo, 0);
    for (int p = 0; p < SR_PROD; p++) {
      assert_int_equal(sr->prod[p].errors, 0);
      for (uint32_t i = 0; i < per; i++) {
        uint8_t r = sr->run_of[p][i];
        if (r == 0)
          fail_msg("round %d: post %d/%u never ran", round, p, i);
        if (i > 0 && r < sr->run_of[p][i - 1])
          fail_msg("round %d: post %d/%u ran in run %d after %d/%u in run %d",
                   round, p, i, r, p, i - 1, sr->run_of[p][i - 1]);
        /* The stopper's posts before its stop ran before the stop. */
        if (p == sr->stopper && i <= sr->stop_at && r != 1)
          fail_msg("round %d: post %d/%u, sent before the stop, ran in run %d",
                   round, p, i, r);
      }
    }
    assert_int_equal(sr->ran[1] + sr->ran[2], (uint64_t)per * SR_PROD);
    assert_int_equal(info_of(sr->loop).posts_run, (uint64_t)per * SR_PROD);
    in_run[1] += sr->ran[1];
    in_run[2] += sr->ran[2];
    AX_FREE_LOOP(sr->loop);
    for (int p = 0; p < SR_PROD; p++) {
      free(sr->msgs[p]);
      free(sr->run_of[p]);
    }
    free(sr);
  }
  guard_stop();
  print_message("  10 rounds: %llu posts ran before the stop, %llu after\n",
                (unsigned long long)in_run[1], (unsigned long long)in_run[2]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_args),
      cmocka_unit_test(test_post_before_run),
      cmocka_unit_test(test_posts_after_io),
      cmocka_unit_test(test_post_from_loop_thread),
      cmocka_unit_test(test_no_starvation),
      cmocka_unit_test(test_persistent),
      cmocka_unit_test(test_busy_loop_no_wakes),
      cmocka_unit_test(test_post_capacity),
      cmocka_unit_test(test_free_runs_queued),
      cmocka_unit_test(test_stress_post_node),
      cmocka_unit_test(test_stress_post_malloc),
      cmocka_unit_test(test_pingpong_sleeping),
      cmocka_unit_test(test_pingpong_spin),
      cmocka_unit_test(test_spin_polls_io),
      cmocka_unit_test(test_stop_races_posts),
  };
  const struct CMUnitTest per_backend[] = {
      cmocka_unit_test(test_stop_blocked),
      cmocka_unit_test(test_stop_not_running),
      cmocka_unit_test(test_pingpong_short),
  };
  int failed = cmocka_run_group_tests_name("post", tests, NULL, NULL);
  failed += AX_RUN_ON_BACKENDS(per_backend);
  return failed;
}
