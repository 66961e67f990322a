/*
 * test_examples — run the built examples as child processes and check what
 * they print and how they behave: the echo server (per backend) against
 * exact bytes, many concurrent clients, half-close, resets, EMFILE and
 * signals; stdin with split and unterminated lines; timers' order; fswatch.
 *
 * Every child is registered when spawned and killed by pid in the teardown,
 * so a failed assertion never leaves one behind; every wait has a deadline,
 * after which the child is killed. Only 127.0.0.1 is used.
 */
#include "childutil.h"

#define EXAMPLE(name) AX_BUILD_DIR "/examples/" name

/* ------------------------------------------------------------------------ */
/* Children (spawn, child_line, the clients and the rest: childutil.h)      */
/* ------------------------------------------------------------------------ */

/* What a failed test may leave behind besides children and clients,
 * released by cleanup(). */
static char g_tmpdir[64];

/* The teardown of every test: kill and reap every child still registered
 * (by pid), close every client, remove the temporary files. */
static int cleanup(void **state) {
  (void)state;
  children_reap();
  clients_free();
  if (g_tmpdir[0]) {
    char path[128];
    static const char *names[] = {"f", "newfile", "input"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
      snprintf(path, sizeof path, "%s/%s", g_tmpdir, names[i]);
      unlink(path);
    }
    rmdir(g_tmpdir);
    g_tmpdir[0] = 0;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Echo server and clients                                                   */
/* ------------------------------------------------------------------------ */

static struct child *start_echo(rlim_t nofile, unsigned *port) {
  char *argv[] = {EXAMPLE("echo_reactor"), "--port", "0", "--backend",
                  (char *)backend_name(),  NULL};
  return start_server(argv, nofile, false, port);
}

static void test_echo_one(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(0, &port);
  echo_roundtrip(port, 1, 1, 1, 0);                   /* one byte */
  echo_roundtrip(port, 1, 300 * 1024, 300 * 1024, 0); /* > the server's 64 KiB */
  stop_server(srv, SIGTERM);
}

static void test_echo_many(void **state) {
  (void)state;
  skip_unless_nofile(600, "500 connections need 600 fds");
  unsigned port;
  struct child *srv = start_echo(0, &port);
  echo_roundtrip(port, 500, 4096, 64 * 1024, 2);
  stop_server(srv, SIGTERM);
}

static void test_echo_half_close(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(0, &port);
  echo_roundtrip(port, 1, 5, 5, 1);
  /* Half-closed while the server holds more than it buffers: it must still
   * read the rest, echo it, and only then close. */
  echo_roundtrip(port, 3, 200 * 1024, 400 * 1024, 1);
  stop_server(srv, SIGTERM);
}

static void test_echo_reset(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(0, &port);
  client_abandon(port, 0, true);            /* reset right after connecting */
  client_abandon(port, 16, true);           /* with a little data */
  client_abandon(port, 1024 * 1024, true);  /* with the server stalled */
  client_abandon(port, 1024 * 1024, false); /* unread data: the kernel resets */
  for (int i = 0; i < 3; i++) {
    client_reset_in_close_wait(port);
    sleep_ms(50);
    assert_alive(srv);
  }
  sleep_ms(300);
  assert_alive(srv);
  echo_roundtrip(port, 4, 1000, 100 * 1024, 2); /* still serving */
  assert_alive(srv);
  stop_server(srv, SIGTERM);
}

/* SIGINT with connections open and data pending: exit 0 (and, under ASan,
 * no leak: every connection is freed). */
static void test_echo_sigint(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(0, &port);
  clients_pending(port, 3, 7);
  stop_server(srv, SIGINT);
  clients_free();
}

/* A client that sends and never reads must not make the server buffer
 * without limit: once the kernel's buffers are full, our sends block. */
static void test_echo_bounded(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(0, &port);
  long before = rss_kib(srv->pid);
  int fd = connect_to(port, 4096);
  size_t size = 64u << 20, sent = send_until_stalled(fd, size);
  sleep_ms(100);
  long grown = rss_kib(srv->pid) - before;
  set_linger0(fd);
  close(fd);
  if (grown > 16 * 1024)
    fail_msg("server grew by %ld KiB while a client sent %zu bytes and read none", grown, sent);
  assert_alive(srv);
  stop_server(srv, SIGTERM);
}

/* CPU time (user + system) the process has used, in clock ticks. */
static long cpu_ticks(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) fail_msg("%s: %s", path, strerror(errno));
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may hold spaces */
  unsigned long ut = 0, st = 0; /* fail_msg does not return, but clang cannot tell */
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
    fail_msg("cannot parse %s", path);
  return (long)(ut + st);
}

/* Which clients got their byte echoed within @ms. */
static size_t collect_echoes(bool *got, size_t n, int ms) {
  int64_t deadline = now_ms() + ms;
  size_t count = 0;
  for (size_t i = 0; i < n; i++) count += got[i];
  while (now_ms() < deadline && count < n) {
    for (size_t i = 0; i < n; i++) {
      char b;
      if (!got[i] && recv(g_clients[i].fd, &b, 1, 0) == 1) {
        if (b != 'x') fail_msg("client %zu: got 0x%02x, sent 'x'", i, (unsigned char)b);
        got[i] = true;
        count++;
      }
    }
    sleep_ms(10);
  }
  return count;
}

/* With the fd limit reached, accept fails with EMFILE and the pending
 * connection stays queued: the server must neither spin on the readable
 * listener nor drop the queue, and must serve it once fds are free. */
static void test_echo_emfile(void **state) {
  (void)state;
  enum { NOFILE = 32, N = 48 };
  unsigned port;
  struct child *srv = start_echo(NOFILE, &port);
  clients_make(N, 1, 1, 1, 0);
  for (size_t i = 0; i < N; i++) {
    g_clients[i].fd = connect_nb(port);
    struct pollfd p = {.fd = g_clients[i].fd, .events = POLLOUT};
    assert_int_equal(poll(&p, 1, 5000), 1);
    assert_int_equal(send(g_clients[i].fd, "x", 1, MSG_NOSIGNAL), 1);
  }
  bool got[N] = {false};
  size_t first = collect_echoes(got, N, 1000);
  if (first == 0) fail_msg("no client served (limit %d fds)", NOFILE);
  if (first == N)
    fail_msg("all %d clients served under a %d-fd limit: EMFILE never hit", N, NOFILE);
  long before = cpu_ticks(srv->pid);
  sleep_ms(1000);
  long used = cpu_ticks(srv->pid) - before;
  long hz = sysconf(_SC_CLK_TCK);
  if (used * 4 > hz) /* a spinning server burns the whole second */
    fail_msg("server used %ld ticks of CPU in 1 s at EMFILE (%ld/s): spinning?", used, hz);
  assert_alive(srv);
  for (size_t i = 0; i < N; i++)
    if (got[i]) close_fd(&g_clients[i].fd);
  /* Closing the served clients frees server fds: the queued ones, skipped
   * until now, must be served (got[] still marks the first ones). */
  size_t all = collect_echoes(got, N, 5000);
  if (all != N)
    fail_msg("%zu of %zu queued clients served after fds were freed", all - first, N - first);
  stop_server(srv, SIGTERM);
  clients_free();
}

/* ------------------------------------------------------------------------ */
/* timers                                                                    */
/* ------------------------------------------------------------------------ */

static void test_timers(void **state) {
  (void)state;
  static const char *want[] = {
      "defer: runs before any timer",
      "backoff: returns 100 ms",
      "timeout: one-shot, 100 ms",
      "defer: queued by the timeout, runs right after it",
      "backoff: returns 200 ms",
      "interval: tick 1 of 3, every 200 ms",
      "date: wall clock reached start + 300 ms",
      "backoff: returns 400 ms",
      "interval: tick 2 of 3, every 200 ms",
      "interval: tick 3 of 3, every 200 ms",
      "backoff: done, returns CONTINUE (one-shot: stops)",
      "loop: no live source left, ax_loop_run() returned",
  };
  size_t nwant = sizeof want / sizeof want[0];
  char env[64];
  snprintf(env, sizeof env, "AXON_BACKEND=%s", backend_name());
  char *argv[] = {EXAMPLE("timers"), NULL};
  int64_t start = now_ms();
  struct child *c = spawn(argv, "/dev/null", env, 0, false);
  char line[256];
  unsigned long long prev = 0;
  for (size_t i = 0; i < nwant; i++) {
    int64_t left = start + 5000 - now_ms();
    child_line(c, line, sizeof line, left > 0 ? (int)left : 0);
    unsigned long long t;
    int at = 0;
    if (sscanf(line, "t=+%llums %n", &t, &at) != 1 || at == 0)
      fail_msg("line %zu: \"%s\" is not \"t=+%%4llums what\"", i + 1, line);
    if (strcmp(line + at, want[i]) != 0)
      fail_msg("line %zu: got \"%s\", want \"%s\"", i + 1, line + at, want[i]);
    if (t < prev) fail_msg("line %zu: time went back (%llu after %llu)", i + 1, t, prev);
    prev = t;
  }
  int64_t left = start + 5000 - now_ms();
  child_read_all(c, left > 0 ? (int)left : 0);
  if (c->len) fail_msg("extra output: \"%.*s\"", (int)c->len, c->acc);
  left = start + 5000 - now_ms();
  child_expect_exit0(c, left > 0 ? (int)left : 0);
}

/* The README's example: four ticks, then a clean exit. */
static void test_hello(void **state) {
  (void)state;
  char env[64];
  snprintf(env, sizeof env, "AXON_BACKEND=%s", backend_name());
  char *argv[] = {EXAMPLE("hello"), NULL};
  struct child *c = spawn(argv, "/dev/null", env, 0, false);
  child_read_all(c, 5000);
  const char want[] = "tick 1\ntick 2\ntick 3\ntick 4\n";
  if (c->len != sizeof want - 1 || memcmp(c->acc, want, sizeof want - 1) != 0)
    fail_msg("hello printed \"%.*s\"", (int)c->len, c->acc);
  child_expect_exit0(c, 5000);
}

/* The README's actor example: six hits alternating between the workers,
 * then the runtime stops itself and the process exits 0. */
static void test_hello_actor(void **state) {
  (void)state;
  char env[64];
  snprintf(env, sizeof env, "AXON_BACKEND=%s", backend_name());
  char *argv[] = {EXAMPLE("hello_actor"), NULL};
  struct child *c = spawn(argv, "/dev/null", env, 0, false);
  child_read_all(c, 5000);
  const char want[] = "ping hits 1 on worker 0\npong hits 2 on worker 1\n"
                      "ping hits 3 on worker 0\npong hits 4 on worker 1\n"
                      "ping hits 5 on worker 0\npong hits 6 on worker 1\n";
  if (c->len != sizeof want - 1 || memcmp(c->acc, want, sizeof want - 1) != 0)
    fail_msg("hello_actor printed \"%.*s\"", (int)c->len, c->acc);
  child_expect_exit0(c, 5000);
}

/* ------------------------------------------------------------------------ */
/* stdin                                                                     */
/* ------------------------------------------------------------------------ */

/* Feed @pieces to the stdin example (with a pause after each, so reads
 * split where the pieces do), then EOF; compare all it prints to @want. */
static void stdin_expect(const char *const *pieces, size_t npieces, const char *want) {
  char env[64];
  snprintf(env, sizeof env, "AXON_BACKEND=%s", backend_name());
  char *argv[] = {EXAMPLE("stdin"), NULL};
  struct child *c = spawn(argv, NULL, env, 0, false);
  int fl = fcntl(c->in, F_GETFL);
  assert_int_equal(fcntl(c->in, F_SETFL, fl | O_NONBLOCK), 0);
  int64_t deadline = now_ms() + 10000;
  for (size_t i = 0; i < npieces; i++) {
    const char *p = pieces[i];
    size_t left = strlen(p);
    while (left > 0) { /* read its output as we write: neither pipe may fill */
      ssize_t w = write(c->in, p, left);
      if (w > 0)
        p += w, left -= (size_t)w;
      else if (errno != EAGAIN)
        fail_msg("write to stdin example: %s", strerror(errno));
      else if (!child_read(c, now_ms() + 10) && now_ms() > deadline)
        fail_msg("stdin example stopped reading");
    }
    int64_t pause = now_ms() + 50;
    while (now_ms() < pause && !c->eof) child_read(c, pause);
  }
  close_fd(&c->in);
  child_read_all(c, 10000);
  size_t wlen = strlen(want);
  if (c->len != wlen || memcmp(c->acc, want, wlen) != 0)
    fail_msg("stdin printed %zu bytes \"%.*s\", want %zu bytes \"%.*s\"", c->len,
             (int)(c->len > 300 ? 300 : c->len), c->acc, wlen, (int)(wlen > 300 ? 300 : wlen),
             want);
  child_expect_exit0(c, 5000);
}

static void test_stdin_pipe(void **state) {
  (void)state;
  static const char *const pieces[] = {"alpha\nbe", "ta\n\ngam", "ma\n", "last without newline"};
  stdin_expect(pieces, 4, "1: alpha\n2: beta\n3: \n4: gamma\n5: last without newline\n");
  static const char *const none[] = {""};
  stdin_expect(none, 1, "");
  static const char *const one[] = {"x"};
  stdin_expect(one, 1, "1: x\n");
}

static void test_stdin_long_line(void **state) {
  (void)state;
  enum { LONG = 300000 };
  char *in = malloc(LONG + 16), *want = malloc(LONG + 32);
  assert_non_null(in);
  assert_non_null(want);
  for (size_t i = 0; i < LONG; i++) in[i] = (char)('a' + i % 26);
  memcpy(in + LONG, "\nshort\n", 8);
  memcpy(want, "1: ", 3);
  memcpy(want + 3, in, LONG);
  memcpy(want + 3 + LONG, "\n2: short\n", 11);
  const char *pieces[] = {in};
  stdin_expect(pieces, 1, want);
  free(in);
  free(want);
}

/* A regular file (epoll refuses it) and /dev/null as stdin. */
static void test_stdin_file(void **state) {
  (void)state;
  char env[64];
  snprintf(env, sizeof env, "AXON_BACKEND=%s", backend_name());
  snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/axon-test-XXXXXX");
  assert_non_null(mkdtemp(g_tmpdir));
  char path[128];
  snprintf(path, sizeof path, "%s/input", g_tmpdir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs("one\ntwo", f);
  assert_int_equal(fclose(f), 0);
  const char *inputs[] = {path, "/dev/null"};
  const char *wants[] = {"1: one\n2: two\n", ""};
  for (int i = 0; i < 2; i++) {
    char *argv[] = {EXAMPLE("stdin"), NULL};
    struct child *c = spawn(argv, inputs[i], env, 0, false);
    child_read_all(c, 10000);
    if (c->len != strlen(wants[i]) || memcmp(c->acc, wants[i], c->len) != 0)
      fail_msg("stdin < %s printed \"%.*s\", want \"%s\"", inputs[i], (int)c->len,
               c->acc ? c->acc : "", wants[i]);
    child_expect_exit0(c, 5000);
  }
}

/* ------------------------------------------------------------------------ */
/* fswatch                                                                   */
/* ------------------------------------------------------------------------ */

static struct child *start_fswatch(const char *path, const char *count) {
  char env[64];
  snprintf(env, sizeof env, "AXON_BACKEND=%s", backend_name());
  char *argv[] = {EXAMPLE("fswatch"), (char *)path, count ? "--count" : NULL, (char *)count, NULL};
  struct child *c = spawn(argv, "/dev/null", env, 0, false);
  char line[256], want[256];
  snprintf(want, sizeof want, "watching %s", path);
  child_line(c, line, sizeof line, 10000);
  if (strcmp(line, want) != 0) fail_msg("fswatch said \"%s\", want \"%s\"", line, want);
  return c;
}

/* A write to a watched file is reported as "change"; --count 1 then exits. */
static void test_fswatch_file(void **state) {
  (void)state;
  snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/axon-test-XXXXXX");
  assert_non_null(mkdtemp(g_tmpdir));
  char path[128], line[256];
  snprintf(path, sizeof path, "%s/f", g_tmpdir);
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  close(fd);
  struct child *c = start_fswatch(path, "1");
  fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "hello\n", 6), 6);
  close(fd);
  child_line(c, line, sizeof line, 5000);
  assert_string_equal(line, "change");
  child_expect_exit0(c, 5000);
}

/* Entries of a watched directory come with their name; SIGTERM exits 0. */
static void test_fswatch_dir(void **state) {
  (void)state;
  snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/axon-test-XXXXXX");
  assert_non_null(mkdtemp(g_tmpdir));
  char path[128], line[256];
  snprintf(path, sizeof path, "%s/newfile", g_tmpdir);
  struct child *c = start_fswatch(g_tmpdir, NULL);
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  close(fd);
  child_line(c, line, sizeof line, 5000);
  assert_string_equal(line, "create newfile");
  assert_int_equal(unlink(path), 0);
  for (int i = 0;; i++) { /* open/close may add "change"/"attrib" lines */
    child_line(c, line, sizeof line, 5000);
    if (strcmp(line, "delete newfile") == 0) break;
    if (i == 5 || strstr(line, "newfile") == NULL)
      fail_msg("unexpected \"%s\" before the delete", line);
  }
  assert_int_equal(kill(c->pid, SIGTERM), 0);
  child_expect_exit0(c, 5000);
}

/* ------------------------------------------------------------------------ */
/* echo_threads: an acceptor loop hands connections to worker loops          */
/* ------------------------------------------------------------------------ */

static struct child *start_echo_threads(unsigned *port) {
  char *argv[] = {EXAMPLE("echo_threads"), "--port",    "0", "--workers", "3",
                  "--backend",             (char *)backend_name(), NULL};
  return start_server(argv, 0, false, port);
}

/* After SIGTERM: one "worker i: N connections" line per worker; every
 * connection was adopted by some worker and round-robin reached them all. */
static void expect_worker_lines(struct child *c, unsigned long total) {
  unsigned long sum = 0;
  for (int i = 0; i < 3; i++) {
    char line[128];
    int w = -1, used = 0;
    unsigned long n = 0;
    child_line(c, line, sizeof line, 10000);
    if (sscanf(line, "worker %d: %lu connections%n", &w, &n, &used) != 2 || line[used] || w != i)
      fail_msg("unexpected line from echo_threads: \"%s\"", line);
    if (total >= 3 && n == 0) fail_msg("worker %d got no connection of %lu", i, total);
    sum += n;
  }
  if (sum != total) fail_msg("workers adopted %lu connections, %lu were made", sum, total);
}

static void test_threads_echo(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo_threads(&port);
  echo_roundtrip(port, 1, 1, 1, 0);
  echo_roundtrip(port, 1, 300 * 1024, 300 * 1024, 1);
  echo_roundtrip(port, 100, 1024, 64 * 1024, 2);
  assert_int_equal(kill(srv->pid, SIGTERM), 0);
  expect_worker_lines(srv, 102);
  child_expect_exit0(srv, 10000);
}

/* SIGINT with connections open on the workers and data in flight: the
 * acceptor stops the workers from its thread; exit 0, nothing leaked. */
static void test_threads_sigint(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo_threads(&port);
  clients_pending(port, 4, 11);
  assert_int_equal(kill(srv->pid, SIGINT), 0);
  expect_worker_lines(srv, 4);
  child_expect_exit0(srv, 10000);
  clients_free();
}

int main(void) {
  /* Writes to a child's closed stdin must fail with EPIPE, not kill us. The
   * children get SIGPIPE back at its default before exec. */
  signal(SIGPIPE, SIG_IGN);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 2048) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 2048 ? 2048 : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) perror("setrlimit(RLIMIT_NOFILE)");
  }
  const struct CMUnitTest per_backend[] = {
      cmocka_unit_test_teardown(test_echo_one, cleanup),
      cmocka_unit_test_teardown(test_echo_many, cleanup),
      cmocka_unit_test_teardown(test_echo_half_close, cleanup),
      cmocka_unit_test_teardown(test_echo_reset, cleanup),
      cmocka_unit_test_teardown(test_echo_sigint, cleanup),
      cmocka_unit_test_teardown(test_echo_bounded, cleanup),
      cmocka_unit_test_teardown(test_echo_emfile, cleanup),
      cmocka_unit_test_teardown(test_threads_echo, cleanup),
      cmocka_unit_test_teardown(test_threads_sigint, cleanup),
      cmocka_unit_test_teardown(test_timers, cleanup),
      cmocka_unit_test_teardown(test_hello, cleanup),
      cmocka_unit_test_teardown(test_hello_actor, cleanup),
      cmocka_unit_test_teardown(test_stdin_pipe, cleanup),
      cmocka_unit_test_teardown(test_stdin_long_line, cleanup),
      cmocka_unit_test_teardown(test_stdin_file, cleanup),
      cmocka_unit_test_teardown(test_fswatch_file, cleanup),
      cmocka_unit_test_teardown(test_fswatch_dir, cleanup),
  };
  return AX_RUN_ON_BACKENDS(per_backend) ? 1 : 0;
}
