/*
 * Shared helpers for axon's cmocka tests. Each test file is one binary,
 * run under `timeout` by tools/run-tests.sh.
 *
 * Backend parametrisation: a behavioural test file declares its tests once
 * and runs them in one cmocka group per backend with AX_RUN_ON_BACKENDS();
 * the group setup sets ax_test_backend, which tests pass to ax_test_loop().
 */
#ifndef AXON_TESTUTIL_H
#define AXON_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* A loop on the current group's backend; fails the test if it cannot. */
static inline ax_loop_t *ax_test_loop(void) {
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = ax_test_backend;
  ax_loop_t *loop = NULL;
  int rc = ax_loop_new(&o, &loop);
  if (rc != 0)
    fail_msg("ax_loop_new: %s", ax_strerror(rc));
  return loop;
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

#endif /* AXON_TESTUTIL_H */
