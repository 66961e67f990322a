/*
 * Shared helpers for axon's cmocka tests. Each test file is one binary,
 * run under `timeout` by tools/run-tests.sh.
 *
 * Backend parametrisation: a behavioural test file declares its tests once
 * and runs them in one cmocka group per backend with AX_RUN_ON_BACKENDS();
 * the group setup sets ax_test_backend, which tests pass to ax_test_loop().
 *
 * Bounded runs: RUN_UNTIL() runs AX_RUN_ONCE iterations with an
 * unreferenced watchdog timer (dog_new) that stops the loop, run_for()
 * bounds every wait with a referenced timer, and guard_start()/guard_stop()
 * cover the runs no ax timer can bound. Below those: clocks, xorshift,
 * socketpair and signal helpers shared by the test files.
 */
#ifndef AXON_TESTUTIL_H
#define AXON_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <axon/axon.h>

static ax_backend_t ax_test_backend = AX_BACKEND_EPOLL;

static inline int ax_test_set_epoll(void **state) {
  (void)state;
  ax_test_backend = AX_BACKEND_EPOLL;
  return 0;
}
static inline int ax_test_set_poll(void **state) {
  (void)state;
  ax_test_backend = AX_BACKEND_POLL;
  return 0;
}
static inline int ax_test_set_select(void **state) {
  (void)state;
  ax_test_backend = AX_BACKEND_SELECT;
  return 0;
}
static inline int ax_test_set_uring(void **state) {
  (void)state;
  ax_test_backend = AX_BACKEND_URING;
  return 0;
}

/* A loop on backend @be; fails the test if it cannot. */
static inline ax_loop_t *ax_test_loop_on(ax_backend_t be) {
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = be;
  ax_loop_t *loop = NULL;
  int rc = ax_loop_new(&o, &loop);
  if (rc != 0)
    fail_msg("ax_loop_new: %s", ax_strerror(rc));
  return loop;
}

/* A loop on the current group's backend; fails the test if it cannot. */
static inline ax_loop_t *ax_test_loop(void) {
  return ax_test_loop_on(ax_test_backend);
}

/* Assert the loop's invariants hold, with the reason if not. */
#define AX_ASSERT_VERIFIED(loop)                                              \
  do {                                                                         \
    char why_[256];                                                            \
    int rc_ = ax_loop_verify((loop), why_, sizeof why_);                       \
    if (rc_ != 0)                                                              \
      fail_msg("ax_loop_verify: %s", why_);                                    \
  } while (0)

/* Free a loop and assert it succeeded. */
#define AX_FREE_LOOP(loop) assert_int_equal(ax_loop_free(loop), 0)

/*
 * Run `tests` once per backend, each group named after it. The io_uring
 * group is skipped, with its reason printed, when the kernel refuses it.
 */
#define AX_RUN_ON_BACKENDS(tests)                                              \
  ({                                                                           \
    int f_ = 0;                                                                \
    f_ += cmocka_run_group_tests_name("epoll", tests, ax_test_set_epoll, NULL);\
    f_ += cmocka_run_group_tests_name("poll", tests, ax_test_set_poll, NULL);  \
    f_ += cmocka_run_group_tests_name("select", tests, ax_test_set_select,     \
                                      NULL);                                   \
    if (ax_test_uring_usable())                                                \
      f_ += cmocka_run_group_tests_name("io_uring", tests, ax_test_set_uring,  \
                                        NULL);                                 \
    f_;                                                                        \
  })

/* True if a loop asked for io_uring really gets it; prints why not. */
static inline int ax_test_uring_usable(void) {
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = AX_BACKEND_URING;
  ax_loop_t *loop = NULL;
  if (ax_loop_new(&o, &loop) != 0)
    return 0;
  ax_loop_info_t info;
  ax_loop_info(loop, &info);
  int ok = info.fallback_reason == NULL;
  if (!ok)
    printf("[  SKIPPED ] io_uring group: %s\n", info.fallback_reason);
  ax_loop_free(loop);
  return ok;
}

/* ---- bounded runs ------------------------------------------------------- */

/* Watchdog timer callback: sets *(bool *)data and stops the loop. */
static inline int64_t dog_cb(ax_source_t *src, void *data) {
  *(bool *)data = true;
  ax_loop_stop(ax_source_loop(src));
  return AX_TIMER_CONTINUE;
}

/* Timer callback that only sets *(bool *)data. */
static inline int64_t flag_cb(ax_source_t *src, void *data) {
  (void)src;
  *(bool *)data = true;
  return AX_TIMER_CONTINUE;
}

/* An unreferenced one-shot timer that sets *fired and stops the loop. */
static inline ax_source_t *dog_new(ax_loop_t *loop, uint64_t ms, bool *fired) {
  ax_source_t *t = NULL;
  *fired = false;
  assert_int_equal(ax_timer_new(loop, dog_cb, fired, &t), 0);
  ax_loop_update_time(loop);
  assert_int_equal(ax_timer_start(t, ms, 0), 0);
  ax_source_unref(t);
  return t;
}

/* Run AX_RUN_ONCE iterations until @cond holds or @ms pass; yields @cond. */
#define RUN_UNTIL(loop, cond, ms)                                              \
  ({                                                                           \
    bool fired_ = false;                                                       \
    ax_source_t *dog_ = dog_new((loop), (ms), &fired_);                        \
    for (long i_ = 0; i_ < 10000000L && !(cond) && !fired_; i_++)              \
      assert_int_equal(ax_loop_run((loop), AX_RUN_ONCE), 0);                   \
    ax_source_free(dog_);                                                      \
    (bool)(cond);                                                              \
  })

/* Run iterations for about @ms; a referenced timer bounds every wait. */
static inline void run_for(ax_loop_t *loop, uint64_t ms) {
  bool done = false;
  ax_source_t *t = NULL;
  assert_int_equal(ax_timer_new(loop, flag_cb, &done, &t), 0);
  ax_loop_update_time(loop);
  assert_int_equal(ax_timer_start(t, ms, 0), 0);
  for (long i = 0; i < 10000000L && !done; i++)
    assert_int_equal(ax_loop_run(loop, AX_RUN_ONCE), 0);
  assert_true(done);
  ax_source_free(t);
}

/* Guard thread for runs no ax timer can bound (an empty loop, or one whose
 * sources were all freed): ends the process with a message on a hang. */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool on;
  const char *what;
  int secs;
  pthread_t thr;
} guard __attribute__((unused)) = {
    PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, NULL, 0, 0};

/* The guard thread's body: _exit(3) unless guard_stop() comes in time. */
static inline void *guard_main(void *arg) {
  (void)arg;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += guard.secs;
  pthread_mutex_lock(&guard.mu);
  while (guard.on) {
    if (pthread_cond_timedwait(&guard.cv, &guard.mu, &until) == ETIMEDOUT &&
        guard.on) {
      fprintf(stderr, "ERROR: hang: %s did not return within %d s\n",
              guard.what, guard.secs);
      fflush(stderr);
      _exit(3);
    }
  }
  pthread_mutex_unlock(&guard.mu);
  return NULL;
}

/* Start the guard: @what must return within @secs seconds. */
static inline void guard_start(const char *what, int secs) {
  guard.on = true;
  guard.what = what;
  guard.secs = secs;
  assert_int_equal(pthread_create(&guard.thr, NULL, guard_main, NULL), 0);
}

/* Stop and join the guard thread. */
static inline void guard_stop(void) {
  pthread_mutex_lock(&guard.mu);
  guard.on = false;
  pthread_cond_signal(&guard.cv);
  pthread_mutex_unlock(&guard.mu);
  pthread_join(guard.thr, NULL);
}

/* ---- loop state, clocks, randomness ------------------------------------- */

/* The loop's iteration count (ax_loop_info). */
static inline uint64_t iterations(const ax_loop_t *loop) {
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  return info.iterations;
}

/* True on backends that support AX_IO_EDGE (epoll, io_uring). */
static inline bool edge_backend(void) {
  return ax_test_backend == AX_BACKEND_EPOLL ||
         ax_test_backend == AX_BACKEND_URING;
}

/* CLOCK_MONOTONIC in milliseconds. */
static inline uint64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* xorshift64 step: advances *s (never 0) and returns it. */
static inline uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

/* ---- fds ---------------------------------------------------------------- */

/* A non-blocking, close-on-exec AF_UNIX stream socketpair. */
static inline void sp_new(int sv[2]) {
  assert_int_equal(
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv),
      0);
}

/* Close both fds of a pair (those >= 0) and set them to -1. */
static inline void close2(int fds[2]) {
  if (fds[0] >= 0)
    close(fds[0]);
  if (fds[1] >= 0)
    close(fds[1]);
  fds[0] = fds[1] = -1;
}

/* Write @n (<= 512) bytes of 'x' to @fd, all at once. */
static inline void put(int fd, size_t n) {
  char buf[512];
  assert_true(n <= sizeof buf);
  memset(buf, 'x', n);
  assert_int_equal(write(fd, buf, n), (ssize_t)n);
}

/* ---- signals ------------------------------------------------------------ */

/* Block SIGUSR1 and SIGUSR2; call in main() before any thread exists, so
 * they stay blocked in every thread and no default action can take them. */
static inline void block_usr_signals(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
}

/* Consume any pending SIGUSR1 / SIGUSR2 without waiting. */
static inline void drain_signals(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGUSR2);
  struct timespec zero = {0, 0};
  while (sigtimedwait(&set, NULL, &zero) > 0) {
  }
}

/* True if @signo is blocked in the calling thread. */
static inline bool is_blocked(int signo) {
  sigset_t cur;
  pthread_sigmask(SIG_BLOCK, NULL, &cur);
  return sigismember(&cur, signo) == 1;
}

/* The name $AXON_BACKEND and ax_loop_backend() use for @be. */
static inline const char *ax_test_backend_name(ax_backend_t be) {
  switch (be) {
  case AX_BACKEND_EPOLL:
    return "epoll";
  case AX_BACKEND_POLL:
    return "poll";
  case AX_BACKEND_SELECT:
    return "select";
  case AX_BACKEND_URING:
    return "io_uring";
  default:
    return "auto";
  }
}

/* A loop on @be with the cross-thread options; fails the test on error. */
static inline ax_loop_t *ax_test_loop_opts(ax_backend_t be, uint32_t cap,
                                           uint32_t spin_ns, bool persistent) {
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = be;
  o.post_capacity = cap;
  o.spin_ns = spin_ns;
  o.persistent = persistent;
  ax_loop_t *loop = NULL;
  int rc = ax_loop_new(&o, &loop);
  if (rc != 0)
    fail_msg("ax_loop_new: %s", ax_strerror(rc));
  return loop;
}

static inline ax_loop_info_t info_of(const ax_loop_t *loop) {
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  return info;
}

/* Open file descriptors of this process. */
static inline int count_fds(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

#endif /* AXON_TESTUTIL_H */
