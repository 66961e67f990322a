/*
 * The API surface, not parametrised over backends: error names and
 * messages, the version, NULL and wrong-kind arguments of every public
 * function, the AXON_BACKEND variable, ax_loop_dump(), the exported symbols
 * of libaxon.so (nm -D), ax_loop_free() with sources attached (memory,
 * internal fds, signal mask), and -EBUSY for freeing or re-running a loop
 * from inside its own callbacks.
 */
#include "testutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------ */

/* Callbacks that only count: none may run after an error. */
static int calls;
static void c_io(ax_source_t *s, int fd, unsigned ev, void *d) {
  (void)s, (void)fd, (void)ev, (void)d;
  calls++;
}
static int64_t c_timer(ax_source_t *s, void *d) {
  (void)s, (void)d;
  calls++;
  return AX_TIMER_CONTINUE;
}
static void c_defer(ax_source_t *s, void *d) {
  (void)s, (void)d;
  calls++;
}
static void c_signal(ax_source_t *s, int signo, void *d) {
  (void)s, (void)signo, (void)d;
  calls++;
}
static void c_fs(ax_source_t *s, unsigned ev, const char *name, void *d) {
  (void)s, (void)ev, (void)name, (void)d;
  calls++;
}

/* ---- errors and version ------------------------------------------------- */

static void check_err(const char *name, int code, const char *msg) {
  if (strcmp(ax_err_name(code), name) != 0)
    fail_msg("ax_err_name(%d) = \"%s\", expected \"%s\"", code,
             ax_err_name(code), name);
  if (strcmp(ax_strerror(code), msg) != 0)
    fail_msg("ax_strerror(%d) = \"%s\", expected \"%s\"", code,
             ax_strerror(code), msg);
}

static void test_errors(void **state) {
  (void)state;
#define X(name, code, msg) check_err(#name, code, msg);
  AX_ERRNO_MAP(X)
#undef X
  assert_string_equal(ax_err_name(0), "OK");
  assert_non_null(ax_strerror(0));
  assert_true(strlen(ax_strerror(0)) > 0);
  assert_string_not_equal(ax_strerror(0), "unknown error");
  static const int unknown[] = {-4000,  -20000,  -20006,
                                -99999, INT_MIN, -INT_MAX};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    assert_string_equal(ax_strerror(unknown[i]), "unknown error");
    assert_string_equal(ax_err_name(unknown[i]), "UNKNOWN");
  }
  /* The axon codes lie outside the errno range and are distinct. */
  assert_true(AX_ENOTPOLLABLE < -4095 && AX_EFDTOOBIG < -4095);
  assert_true(AX_ECORRUPT < -4095 && AX_EKIND < -4095 && AX_EOF < -4095);
  assert_non_null(strstr(ax_strerror(AX_ENOTPOLLABLE), "epoll"));
  assert_non_null(strstr(ax_strerror(AX_EFDTOOBIG), "select"));
}

static void test_version(void **state) {
  (void)state;
  assert_non_null(ax_version_string());
  assert_string_equal(ax_version_string(), AX_VERSION_STRING);
  char want[32];
  snprintf(want, sizeof want, "%d.%d.%d", AX_VERSION_MAJOR, AX_VERSION_MINOR,
           AX_VERSION_PATCH);
  assert_string_equal(ax_version_string(), want);
}

static void test_kind_names(void **state) {
  (void)state;
  assert_string_equal(ax_source_kind_name(AX_SOURCE_IO), "io");
  assert_string_equal(ax_source_kind_name(AX_SOURCE_TIMER), "timer");
  for (int k = AX_SOURCE_IO; k <= AX_SOURCE_WAKE; k++) {
    const char *n = ax_source_kind_name((ax_source_kind_t)k);
    assert_non_null(n);
    assert_string_not_equal(n, "?");
    for (int j = AX_SOURCE_IO; j < k; j++)
      assert_string_not_equal(n, ax_source_kind_name((ax_source_kind_t)j));
  }
  assert_string_equal(ax_source_kind_name((ax_source_kind_t)0), "?");
  assert_string_equal(ax_source_kind_name((ax_source_kind_t)99), "?");
  assert_string_equal(ax_source_kind_name((ax_source_kind_t)-1), "?");
}

/* ---- NULL and bad arguments --------------------------------------------- */

static void test_null_loop_functions(void **state) {
  (void)state;
  ax_loop_options_init(NULL); /* no-op */
  ax_loop_options_t o;
  memset(&o, 0xff, sizeof o);
  ax_loop_options_init(&o);
  assert_int_equal(o.backend, AX_BACKEND_AUTO);
  assert_null(o.allocator);
  assert_null(o.realtime_ms);
  assert_null(o.clock_ctx);

  assert_int_equal(ax_loop_new(NULL, NULL), -EINVAL);
  assert_int_equal(ax_loop_new(&o, NULL), -EINVAL);
  assert_int_equal(ax_loop_free(NULL), 0);
  assert_int_equal(ax_loop_run(NULL, AX_RUN_DEFAULT), -EINVAL);
  assert_int_equal(ax_loop_run(NULL, AX_RUN_NOWAIT), -EINVAL);
  ax_loop_stop(NULL);
  assert_false(ax_loop_alive(NULL));
  (void)ax_loop_now(NULL);
  ax_loop_update_time(NULL);
  ax_loop_clock_changed(NULL);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(NULL, &info), -EINVAL);
  (void)ax_loop_backend(NULL);
  ax_loop_dump(NULL, stderr);
  char why[64];
  assert_int_not_equal(ax_loop_verify(NULL, why, sizeof why), 0);
  (void)ax_realtime_ms(NULL);

  ax_loop_t *loop = NULL;
  assert_int_equal(ax_loop_new(NULL, &loop), 0); /* NULL opts: defaults */
  assert_int_equal(ax_loop_info(loop, NULL), -EINVAL);
  ax_loop_dump(loop, NULL); /* no-op */
  assert_int_equal(ax_loop_verify(loop, NULL, 0), 0);
  assert_int_equal(ax_loop_verify(loop, why, 0), 0);
  /* Bad run modes. */
  assert_int_equal(ax_loop_run(loop, (ax_run_mode_t)3), -EINVAL);
  assert_int_equal(ax_loop_run(loop, (ax_run_mode_t)-1), -EINVAL);
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.iterations, 0);
  AX_FREE_LOOP(loop);

  /* Bad options: out untouched. */
  ax_loop_t *sentinel = (ax_loop_t *)0x1;
  loop = sentinel;
  ax_loop_options_init(&o);
  o.backend = (ax_backend_t)99;
  assert_int_equal(ax_loop_new(&o, &loop), -EINVAL);
  assert_ptr_equal(loop, sentinel);
  /* An allocator without hooks is a bad option (the reading tested). */
  ax_allocator_t empty = {NULL, NULL, NULL, NULL};
  ax_loop_options_init(&o);
  o.allocator = &empty;
  assert_int_equal(ax_loop_new(&o, &loop), -EINVAL);
  assert_ptr_equal(loop, sentinel);
}

static void test_null_source_functions(void **state) {
  (void)state;
  calls = 0;
  assert_int_equal(ax_source_stop(NULL), -EINVAL);
  ax_source_free(NULL);
  ax_source_ref(NULL);
  ax_source_unref(NULL);
  assert_false(ax_source_is_active(NULL));
  assert_null(ax_source_data(NULL));
  ax_source_set_data(NULL, &calls);
  assert_null(ax_source_loop(NULL));
  (void)ax_source_kind(NULL);

  ax_loop_t *loop = ax_test_loop_on(AX_BACKEND_AUTO);
  int sv[2];
  assert_int_equal(
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv),
      0);
  ax_source_t *const sentinel = (ax_source_t *)0x1;
  ax_source_t *s = sentinel;
  /* Every constructor: NULL loop, NULL callback, NULL out. */
  assert_int_equal(ax_io_new(NULL, sv[0], c_io, NULL, &s), -EINVAL);
  assert_int_equal(ax_io_new(loop, sv[0], NULL, NULL, &s), -EINVAL);
  assert_int_equal(ax_io_new(loop, sv[0], c_io, NULL, NULL), -EINVAL);
  assert_int_equal(ax_timer_new(NULL, c_timer, NULL, &s), -EINVAL);
  assert_int_equal(ax_timer_new(loop, NULL, NULL, &s), -EINVAL);
  assert_int_equal(ax_timer_new(loop, c_timer, NULL, NULL), -EINVAL);
  assert_int_equal(ax_date_new(NULL, c_timer, NULL, &s), -EINVAL);
  assert_int_equal(ax_date_new(loop, NULL, NULL, &s), -EINVAL);
  assert_int_equal(ax_date_new(loop, c_timer, NULL, NULL), -EINVAL);
  assert_int_equal(ax_defer_new(NULL, c_defer, NULL, &s), -EINVAL);
  assert_int_equal(ax_defer_new(loop, NULL, NULL, &s), -EINVAL);
  assert_int_equal(ax_defer_new(loop, c_defer, NULL, NULL), -EINVAL);
  assert_int_equal(ax_signal_new(NULL, c_signal, NULL, &s), -EINVAL);
  assert_int_equal(ax_signal_new(loop, NULL, NULL, &s), -EINVAL);
  assert_int_equal(ax_signal_new(loop, c_signal, NULL, NULL), -EINVAL);
  assert_int_equal(ax_fswatch_new(NULL, c_fs, NULL, &s), -EINVAL);
  assert_int_equal(ax_fswatch_new(loop, NULL, NULL, &s), -EINVAL);
  assert_int_equal(ax_fswatch_new(loop, c_fs, NULL, NULL), -EINVAL);
  assert_int_equal(ax_wake_new(NULL, c_defer, NULL, &s), -EINVAL);
  assert_int_equal(ax_wake_new(loop, NULL, NULL, &s), -EINVAL);
  assert_int_equal(ax_wake_new(loop, c_defer, NULL, NULL), -EINVAL);
  assert_ptr_equal(s, sentinel);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.sources, 0);

  /* Every start/query with a NULL source. */
  uint64_t ms = 0;
  assert_int_equal(ax_io_start(NULL, AX_READABLE), -EINVAL);
  assert_int_equal(ax_io_fd(NULL), -EINVAL);
  assert_int_equal(ax_timer_start(NULL, 1, 0), -EINVAL);
  assert_int_equal(ax_timer_due_in(NULL, &ms), -EINVAL);
  assert_int_equal(ax_date_start(NULL, 0), -EINVAL);
  assert_int_equal(ax_defer_start(NULL), -EINVAL);
  assert_int_equal(ax_signal_start(NULL, SIGUSR1), -EINVAL);
  assert_int_equal(ax_fswatch_start(NULL, "/tmp", 0), -EINVAL);
  assert_int_equal(ax_wake_start(NULL), -EINVAL);
  assert_int_equal(ax_wake_send(NULL), -EINVAL);

  /* NULL second pointers. */
  ax_source_t *t = NULL, *f = NULL;
  assert_int_equal(ax_timer_new(loop, c_timer, NULL, &t), 0);
  assert_int_equal(ax_timer_start(t, 1000, 0), 0);
  assert_int_equal(ax_timer_due_in(t, NULL), -EINVAL);
  assert_int_equal(ax_fswatch_new(loop, c_fs, NULL, &f), 0);
  assert_int_equal(ax_fswatch_start(f, NULL, 0), -EINVAL);
  assert_false(ax_source_is_active(f));
  ax_source_set_data(t, &calls);
  assert_ptr_equal(ax_source_data(t), &calls);
  ax_source_set_data(t, NULL);
  assert_null(ax_source_data(t));

  /* Wrong kinds: the documented AX_EKIND where listed; elsewhere AX_EKIND
   * or -EINVAL (the header lists only -EINVAL for those). */
  ax_source_t *d = NULL;
  assert_int_equal(ax_defer_new(loop, c_defer, NULL, &d), 0);
  assert_int_equal(ax_io_fd(d), AX_EKIND);
  assert_int_equal(ax_timer_due_in(d, &ms), AX_EKIND);
  assert_int_equal(ax_wake_send(d), AX_EKIND);
  int rcs[7];
  rcs[0] = ax_io_start(d, AX_READABLE);
  rcs[1] = ax_timer_start(d, 1, 0);
  rcs[2] = ax_date_start(d, 0);
  rcs[3] = ax_signal_start(d, SIGUSR1);
  rcs[4] = ax_fswatch_start(d, "/tmp", 0);
  rcs[5] = ax_wake_start(d);
  rcs[6] = ax_defer_start(t);
  for (int i = 0; i < 7; i++)
    if (rcs[i] != AX_EKIND && rcs[i] != -EINVAL)
      fail_msg("wrong-kind call %d returned %d (%s)", i, rcs[i],
               ax_err_name(rcs[i]));
  assert_false(ax_source_is_active(d));
  assert_true(ax_source_is_active(t));
  assert_false(is_blocked(SIGUSR1));
  AX_ASSERT_VERIFIED(loop);

  /* No callback of a failed call ever runs. */
  assert_int_equal(ax_source_stop(t), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(calls, 0);
  ax_source_free(d);
  ax_source_free(f);
  ax_source_free(t);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* ---- AXON_BACKEND ------------------------------------------------------- */

static void test_env_backend(void **state) {
  (void)state;
  static const struct {
    const char *env, *name;
  } cases[] = {{"epoll", "epoll"}, {"poll", "poll"}, {"select", "select"}};
  ax_loop_info_t info;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(setenv("AXON_BACKEND", cases[i].env, 1), 0);
    ax_loop_t *loop = NULL;
    assert_int_equal(ax_loop_new(NULL, &loop), 0);
    assert_string_equal(ax_loop_backend(loop), cases[i].name);
    AX_FREE_LOOP(loop);
    loop = ax_test_loop_on(AX_BACKEND_AUTO);
    assert_string_equal(ax_loop_backend(loop), cases[i].name);
    assert_int_equal(ax_loop_info(loop, &info), 0);
    assert_string_equal(info.backend, cases[i].name);
    AX_FREE_LOOP(loop);
  }
  /* io_uring: used, or epoll with a reason. */
  assert_int_equal(setenv("AXON_BACKEND", "io_uring", 1), 0);
  ax_loop_t *loop = ax_test_loop_on(AX_BACKEND_AUTO);
  assert_int_equal(ax_loop_info(loop, &info), 0);
  if (strcmp(info.backend, "io_uring") != 0) {
    assert_string_equal(info.backend, "epoll");
    assert_non_null(info.fallback_reason);
  } else {
    assert_null(info.fallback_reason);
  }
  AX_FREE_LOOP(loop);

  /* An explicit backend wins over the variable. */
  assert_int_equal(setenv("AXON_BACKEND", "select", 1), 0);
  loop = ax_test_loop_on(AX_BACKEND_POLL);
  assert_string_equal(ax_loop_backend(loop), "poll");
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_string_equal(info.requested, "poll");
  AX_FREE_LOOP(loop);

  /* Unknown value: -EINVAL, out untouched. */
  assert_int_equal(setenv("AXON_BACKEND", "kqueue-please", 1), 0);
  ax_loop_t *sentinel = (ax_loop_t *)0x1;
  loop = sentinel;
  assert_int_equal(ax_loop_new(NULL, &loop), -EINVAL);
  assert_ptr_equal(loop, sentinel);
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  assert_int_equal(ax_loop_new(&o, &loop), -EINVAL);
  assert_ptr_equal(loop, sentinel);

  /* Unset: AUTO means epoll (the header: "$AXON_BACKEND if set, else
   * epoll"), and "auto" is what was requested. */
  assert_int_equal(unsetenv("AXON_BACKEND"), 0);
  loop = ax_test_loop_on(AX_BACKEND_AUTO);
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_string_equal(info.backend, "epoll");
  assert_string_equal(info.requested, "auto");
  assert_null(info.fallback_reason);
  assert_string_equal(ax_loop_backend(loop), info.backend);
  assert_int_equal(info.iterations, 0);
  assert_int_equal(info.sources, 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.iterations, 1);
  AX_FREE_LOOP(loop);
}

/* ---- dump ---------------------------------------------------------------- */

typedef struct every {
  ax_source_t *src[8];
  int n;
  int sv[2];
  char dir[32];
} every_t;

/* One source of every kind, all started (the extra timer stays inactive). */
static void make_every_kind(ax_loop_t *loop, every_t *e) {
  memset(e, 0, sizeof *e);
  assert_int_equal(
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, e->sv),
      0);
  snprintf(e->dir, sizeof e->dir, "/tmp/axon-api-XXXXXX");
  assert_non_null(mkdtemp(e->dir));
  ax_source_t **s = e->src;
  assert_int_equal(ax_io_new(loop, e->sv[0], c_io, NULL, &s[0]), 0);
  assert_int_equal(ax_io_start(s[0], AX_READABLE), 0);
  assert_int_equal(ax_timer_new(loop, c_timer, NULL, &s[1]), 0);
  assert_int_equal(ax_timer_start(s[1], 60000, 1000), 0);
  assert_int_equal(ax_date_new(loop, c_timer, NULL, &s[2]), 0);
  assert_int_equal(ax_date_start(s[2], ax_realtime_ms(loop) + 3600000), 0);
  assert_int_equal(ax_defer_new(loop, c_defer, NULL, &s[3]), 0);
  assert_int_equal(ax_defer_start(s[3]), 0);
  assert_int_equal(ax_signal_new(loop, c_signal, NULL, &s[4]), 0);
  assert_int_equal(ax_signal_start(s[4], SIGUSR1), 0);
  assert_int_equal(ax_fswatch_new(loop, c_fs, NULL, &s[5]), 0);
  assert_int_equal(ax_fswatch_start(s[5], e->dir, 0), 0);
  assert_int_equal(ax_wake_new(loop, c_defer, NULL, &s[6]), 0);
  assert_int_equal(ax_wake_start(s[6]), 0);
  assert_int_equal(ax_timer_new(loop, c_timer, NULL, &s[7]), 0);
  e->n = 8;
}

static void test_dump(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop_on(AX_BACKEND_AUTO);
  every_t e;
  make_every_kind(loop, &e);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  ax_loop_dump(loop, f);
  fclose(f);
  assert_non_null(buf);
  for (int k = AX_SOURCE_IO; k <= AX_SOURCE_WAKE; k++) {
    const char *name = ax_source_kind_name((ax_source_kind_t)k);
    if (strstr(buf, name) == NULL)
      fail_msg("dump does not mention \"%s\":\n%s", name, buf);
  }
  int lines = 0;
  for (const char *p = buf; *p; p++)
    lines += *p == '\n';
  if (lines < e.n)
    fail_msg("dump has %d lines for %d sources:\n%s", lines, e.n, buf);
  free(buf);
  for (int i = 0; i < e.n; i++)
    ax_source_free(e.src[i]);
  close(e.sv[0]);
  close(e.sv[1]);
  rmdir(e.dir);
  AX_FREE_LOOP(loop);
  assert_false(is_blocked(SIGUSR1));
}

/* ---- exported symbols --------------------------------------------------- */

static void test_exports(void **state) {
  (void)state;
  /* The library beside this binary: <build>/tests/test_api -> <build>. */
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  assert_true(n > 0);
  exe[n] = '\0';
  char so[PATH_MAX + 32];
  snprintf(so, sizeof so, "%s/libaxon.so", dirname(dirname(exe)));
  if (access(so, R_OK) != 0) {
    snprintf(so, sizeof so, "%s/libaxon.so", AX_BUILD_DIR);
    if (access(so, R_OK) != 0) {
      printf("  skipped: no libaxon.so beside the test or in %s\n",
             AX_BUILD_DIR);
      skip();
    }
  }
  if (system("command -v nm >/dev/null 2>&1") != 0) {
    printf("  skipped: nm not installed (binutils)\n");
    skip();
  }
  char cmd[PATH_MAX + 64];
  snprintf(cmd, sizeof cmd, "nm -D --defined-only '%s' 2>&1", so);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  char line[512], bad[2048] = "";
  int exported = 0;
  /* Every function the public headers declare. */
  static const char *const api[] = {
      "ax_loop_options_init",  "ax_loop_new",
      "ax_loop_free",          "ax_loop_run",
      "ax_loop_stop",          "ax_loop_alive",
      "ax_loop_now",           "ax_loop_update_time",
      "ax_loop_info",          "ax_loop_backend",
      "ax_loop_dump",          "ax_loop_verify",
      "ax_loop_clock_changed", "ax_source_stop",
      "ax_source_free",        "ax_source_unref",
      "ax_source_ref",         "ax_source_is_active",
      "ax_source_data",        "ax_source_set_data",
      "ax_source_loop",        "ax_source_kind",
      "ax_source_kind_name",   "ax_io_new",
      "ax_io_start",           "ax_io_fd",
      "ax_timer_new",          "ax_timer_start",
      "ax_timer_due_in",       "ax_date_new",
      "ax_date_start",         "ax_realtime_ms",
      "ax_defer_new",          "ax_defer_start",
      "ax_signal_new",         "ax_signal_start",
      "ax_fswatch_new",        "ax_fswatch_start",
      "ax_wake_new",           "ax_wake_start",
      "ax_wake_send",          "ax_strerror",
      "ax_err_name",           "ax_version_string"};
  enum { NAPI = sizeof api / sizeof api[0] };
  bool have[NAPI] = {false};
  while (fgets(line, sizeof line, p) != NULL) {
    char a[128], b[128], c[256];
    int k = sscanf(line, "%127s %127s %255s", a, b, c);
    const char *type, *name;
    if (k == 3) {
      type = b;
      name = c;
    } else if (k == 2) {
      type = a;
      name = b;
    } else {
      continue;
    }
    if (strcmp(type, "U") == 0 || strcmp(type, "w") == 0 ||
        strcmp(type, "v") == 0 || strcmp(type, "A") == 0)
      continue; /* undefined, weak undefined, version nodes */
    char sym[256];
    snprintf(sym, sizeof sym, "%s", name);
    char *at = strchr(sym, '@');
    if (at != NULL)
      *at = '\0';
    if (strncmp(sym, "ax_", 3) != 0 || strncmp(sym, "ax__", 4) == 0) {
      if (strlen(bad) + strlen(sym) + 2 < sizeof bad) {
        strcat(bad, " ");
        strcat(bad, sym);
      }
      continue;
    }
    exported++;
    for (int i = 0; i < NAPI; i++)
      if (strcmp(sym, api[i]) == 0)
        have[i] = true;
  }
  int st = pclose(p);
  assert_int_equal(st, 0);
  if (bad[0] != '\0')
    fail_msg("libaxon.so exports symbols outside ax_ (or internal ax__):%s",
             bad);
  for (int i = 0; i < NAPI; i++)
    if (!have[i])
      fail_msg("%s not exported", api[i]);
  printf("  %d ax_ symbols exported, nothing else\n", exported);
}

/* ---- ax_loop_free with sources attached --------------------------------- */

typedef struct counting {
  long live;
  unsigned long total;
} counting_t;

static void *cnt_malloc(size_t n, void *ctx) {
  void *p = malloc(n);
  if (p != NULL) {
    ((counting_t *)ctx)->live++;
    ((counting_t *)ctx)->total++;
  }
  return p;
}
static void *cnt_realloc(void *p, size_t n, void *ctx) {
  void *q = realloc(p, n);
  if (q != NULL && p == NULL) {
    ((counting_t *)ctx)->live++;
    ((counting_t *)ctx)->total++;
  }
  return q;
}
static void cnt_free(void *p, void *ctx) {
  ((counting_t *)ctx)->live--;
  free(p);
}

static void free_with_sources(ax_backend_t be) {
  calls = 0;
  assert_false(is_blocked(SIGUSR1));
  counting_t cnt = {0};
  ax_allocator_t al = {cnt_malloc, cnt_realloc, cnt_free, &cnt};
  int fds_before = count_fds();
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = be;
  o.allocator = &al;
  ax_loop_t *loop = NULL;
  assert_int_equal(ax_loop_new(&o, &loop), 0);
  every_t e;
  make_every_kind(loop, &e);
  /* A few more, some with events pending. */
  assert_int_equal(ax_wake_send(e.src[6]), 0);
  assert_int_equal(write(e.sv[1], "x", 1), 1);
  assert_true(count_fds() > fds_before + 2);
  assert_true(cnt.live > 0);
  assert_int_equal(ax_loop_free(loop), 0);
  assert_int_equal(calls, 0); /* released without callbacks */
  /* The caller's fds stay open; the loop's own are closed. */
  assert_true(fcntl(e.sv[0], F_GETFD) != -1);
  assert_true(fcntl(e.sv[1], F_GETFD) != -1);
  close(e.sv[0]);
  close(e.sv[1]);
  int fds_after = count_fds();
  if (fds_after != fds_before)
    fail_msg("%s: %d fds before the loop, %d after ax_loop_free",
             be == AX_BACKEND_POLL ? "poll" : "default", fds_before, fds_after);
  if (cnt.live != 0)
    fail_msg("%ld of %lu blocks not freed by ax_loop_free", cnt.live,
             cnt.total);
  /* The loop blocked SIGUSR1 for its source; releasing it unblocks it. */
  if (is_blocked(SIGUSR1))
    fail_msg("SIGUSR1 still blocked after ax_loop_free");
  rmdir(e.dir);
}

static void test_free_with_sources(void **state) {
  (void)state;
  free_with_sources(AX_BACKEND_AUTO);
  free_with_sources(AX_BACKEND_POLL);
  free_with_sources(AX_BACKEND_EPOLL);
  free_with_sources(AX_BACKEND_SELECT);
  free_with_sources(AX_BACKEND_URING); /* or its epoll fallback */
}

/* ---- -EBUSY from inside a callback -------------------------------------- */

typedef struct busy {
  ax_loop_t *other;
  int rc_free, rc_free_other, rc_run[3];
  int calls;
} busy_t;

static int64_t busy_cb(ax_source_t *src, void *data) {
  busy_t *b = data;
  ax_loop_t *loop = ax_source_loop(src);
  b->calls++;
  b->rc_free = ax_loop_free(loop);
  b->rc_run[0] = ax_loop_run(loop, AX_RUN_DEFAULT);
  b->rc_run[1] = ax_loop_run(loop, AX_RUN_ONCE);
  b->rc_run[2] = ax_loop_run(loop, AX_RUN_NOWAIT);
  if (b->other != NULL) {
    b->rc_free_other = ax_loop_free(b->other); /* not running: fine */
    b->other = NULL;
  }
  return AX_TIMER_CONTINUE;
}

static void test_ebusy_in_callback(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop_on(AX_BACKEND_AUTO);
  busy_t b = {.rc_free = 1, .rc_free_other = 1};
  b.other = ax_test_loop_on(AX_BACKEND_POLL);
  ax_source_t *t = NULL;
  assert_int_equal(ax_timer_new(loop, busy_cb, &b, &t), 0);
  assert_int_equal(ax_timer_start(t, 0, 0), 0);
  bool fired = false;
  ax_source_t *dog = dog_new(loop, 3000, &fired);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_false(fired);
  assert_int_equal(b.calls, 1);
  assert_int_equal(b.rc_free, -EBUSY);
  assert_int_equal(b.rc_run[0], -EBUSY);
  assert_int_equal(b.rc_run[1], -EBUSY);
  assert_int_equal(b.rc_run[2], -EBUSY);
  assert_int_equal(b.rc_free_other, 0);
  /* The loop is intact and still runs. */
  AX_ASSERT_VERIFIED(loop);
  assert_int_equal(ax_timer_start(t, 0, 0), 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  assert_int_equal(b.calls, 2);
  assert_int_equal(b.rc_free, -EBUSY);
  ax_source_free(dog);
  ax_source_free(t);
  AX_FREE_LOOP(loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_version),
      cmocka_unit_test(test_kind_names),
      cmocka_unit_test(test_null_loop_functions),
      cmocka_unit_test(test_null_source_functions),
      cmocka_unit_test(test_env_backend),
      cmocka_unit_test(test_dump),
      cmocka_unit_test(test_exports),
      cmocka_unit_test(test_free_with_sources),
      cmocka_unit_test(test_ebusy_in_callback),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
