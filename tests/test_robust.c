/*
 * Robustness: the io_uring fallback when the kernel refuses io_uring
 * (simulated with a seccomp filter in a child process — the machine's
 * sysctls are never touched), and an EINTR storm during waits on every
 * backend (a 200 µs interval timer with a handler installed without
 * SA_RESTART, as in the reliability matrix's R20).
 */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif

/* In the child: make io_uring_setup fail with @err, as a seccomp policy or
 * kernel.io_uring_disabled would. */
static int deny_io_uring(int err) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof f / sizeof f[0], .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    return -1;
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
}

/* Child body: exit 0 if the loop fell back to epoll, said why, and works. */
static int child_fallback(int err) {
  if (deny_io_uring(err) != 0)
    return 10;
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = AX_BACKEND_URING;
  ax_loop_t *loop;
  if (ax_loop_new(&o, &loop) != 0)
    return 11;
  ax_loop_info_t info;
  ax_loop_info(loop, &info);
  int rc = 0;
  if (strcmp(info.backend, "epoll") != 0)
    rc = 12;
  else if (!info.fallback_reason || !strstr(info.fallback_reason, "io_uring"))
    rc = 13;
  else if (strcmp(info.requested, "io_uring") != 0)
    rc = 14;
  printf("fallback: %s\n", info.fallback_reason ? info.fallback_reason : "(none)");
  fflush(stdout);
  ax_loop_free(loop);
  return rc;
}

static void check_fallback(int err) {
  fflush(stdout);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    _exit(child_fallback(err));
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_uring_refused_eperm(void **state) {
  (void)state;
  check_fallback(EPERM); /* io_uring_disabled=2 or a seccomp policy */
}

static void test_uring_refused_enosys(void **state) {
  (void)state;
  check_fallback(ENOSYS); /* kernel without io_uring */
}

/* ---- EINTR storm -------------------------------------------------------- */

static volatile sig_atomic_t alarms;
static void on_alarm(int signo) {
  (void)signo;
  alarms++;
}

static int fires;
static int64_t storm_tick(ax_source_t *src, void *data) {
  (void)src;
  (void)data;
  if (++fires == 5)
    ax_source_stop(src); /* the loop then has nothing referenced: run returns */
  return AX_TIMER_CONTINUE;
}

static void never_ready(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)src, (void)fd, (void)data;
  fail_msg("idle pipe reported ready (%#x)", revents);
}

static void test_eintr_storm(void **state) {
  (void)state;
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm; /* no SA_RESTART: every wait gets EINTR */
  sigemptyset(&sa.sa_mask);
  assert_int_equal(sigaction(SIGALRM, &sa, &old), 0);
  ax_loop_t *loop = ax_test_loop();
  int p[2];
  assert_int_equal(pipe(p), 0);
  ax_source_t *idle, *tick;
  assert_int_equal(ax_io_new(loop, p[0], never_ready, NULL, &idle), 0);
  assert_int_equal(ax_io_start(idle, AX_READABLE), 0);
  ax_source_unref(idle);
  assert_int_equal(ax_timer_new(loop, storm_tick, NULL, &tick), 0);
  assert_int_equal(ax_timer_start(tick, 20, 20), 0);
  fires = 0;
  alarms = 0;
  struct itimerval it = {{0, 200}, {0, 200}};
  assert_int_equal(setitimer(ITIMER_REAL, &it, NULL), 0);
  int rc = ax_loop_run(loop, AX_RUN_DEFAULT);
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  sigaction(SIGALRM, &old, NULL);
  assert_int_equal(rc, 0);
  assert_int_equal(fires, 5);
  assert_true(alarms > 0);
  AX_ASSERT_VERIFIED(loop);
  AX_FREE_LOOP(loop);
  close2(p);
}

int main(void) {
  const struct CMUnitTest fallback[] = {
      cmocka_unit_test(test_uring_refused_eperm),
      cmocka_unit_test(test_uring_refused_enosys),
  };
  const struct CMUnitTest storm[] = {
      cmocka_unit_test(test_eintr_storm),
  };
  int failed = cmocka_run_group_tests_name("fallback", fallback, NULL, NULL);
  return failed + AX_RUN_ON_BACKENDS(storm);
}
