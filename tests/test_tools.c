/*
 * test_tools — tools/axload against real servers: echo_reactor (echo with
 * 1 and 200 connections, pipelined large messages, hold, SIGINT),
 * examples/sink (push and hold, on epoll and io_uring), and tiny
 * servers forked by this test that discard, corrupt one byte, or close
 * early — the last two prove the verifier and the error accounting can
 * fail. Also: a refused port, and usage errors.
 *
 * Every child is registered when it starts and killed by pid in the
 * teardown; every wait has a deadline. The forked servers end themselves
 * after 30 s in any case. Only 127.0.0.1 is used.
 */
#include "childutil.h"

#define AXLOAD AX_BUILD_DIR "/tools/axload"
#define ECHO_REACTOR AX_BUILD_DIR "/examples/echo_reactor"
#define SINK AX_BUILD_DIR "/examples/sink"

/* The forked servers: what they do to the bytes of each connection. */
enum srv_mode { SRV_SINK, SRV_FLIP, SRV_CLOSE };
#define FLIP_AT 1000    /* stream offset of the one byte SRV_FLIP corrupts */
#define CLOSE_AFTER 640 /* SRV_CLOSE echoes this many bytes, then half-closes */
#define SRV_LIFE_MS 30000

/* ------------------------------------------------------------------------ */
/* Children, by pid (now_ms, sleep_ms, child_reset_signals: childutil.h)   */
/* ------------------------------------------------------------------------ */

#define MAX_PIDS 4
static pid_t pids[MAX_PIDS];

static void child_add(pid_t pid) {
  for (int i = 0; i < MAX_PIDS; i++)
    if (pids[i] == 0) {
      pids[i] = pid;
      return;
    }
  kill(pid, SIGKILL);
  waitpid(pid, NULL, 0);
  fail_msg("more than %d children", MAX_PIDS);
}

static void child_forget(pid_t pid) {
  for (int i = 0; i < MAX_PIDS; i++)
    if (pids[i] == pid)
      pids[i] = 0;
}

/* Teardown: kill and reap, by pid, every child still registered. */
static int cleanup(void **state) {
  (void)state;
  for (int i = 0; i < MAX_PIDS; i++)
    if (pids[i] > 0) {
      kill(pids[i], SIGKILL);
      waitpid(pids[i], NULL, 0);
      pids[i] = 0;
    }
  return 0;
}

/* Wait up to @ms for @pid; on time-out kill it and fail. */
static int pid_wait(pid_t pid, int ms) {
  int64_t deadline = now_ms() + ms;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == pid)
      break;
    if (r < 0 && errno != EINTR)
      fail_msg("waitpid: %s", strerror(errno));
    if (now_ms() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      child_forget(pid);
      fail_msg("pid %d did not exit within %d ms: killed", (int)pid, ms);
    }
    sleep_ms(5);
  }
  child_forget(pid);
  return st;
}

/* Start @argv with stdin from /dev/null and pipes on stdout (and stderr if
 * @err is not NULL); SIGPIPE at its default and no signal blocked. */
static pid_t spawn_pid(char *const argv[], int *out, int *err) {
  int o[2], e[2] = {-1, -1};
  if (access(argv[0], X_OK) != 0)
    fail_msg("%s: %s (build it first)", argv[0], strerror(errno));
  assert_int_equal(pipe2(o, O_CLOEXEC), 0);
  if (err)
    assert_int_equal(pipe2(e, O_CLOEXEC), 0);
  pid_t pid = fork();
  if (pid == 0) {
    child_reset_signals();
    int in = open("/dev/null", O_RDONLY);
    if (in < 0 || dup2(in, 0) < 0 || dup2(o[1], 1) < 0 || (err && dup2(e[1], 2) < 0))
      _exit(126);
    execv(argv[0], argv);
    _exit(127);
  }
  close(o[1]);
  if (err)
    close(e[1]);
  if (pid < 0)
    fail_msg("fork: %s", strerror(errno));
  child_add(pid);
  *out = o[0];
  if (err)
    *err = e[0];
  return pid;
}

/* ------------------------------------------------------------------------ */
/* Servers                                                                   */
/* ------------------------------------------------------------------------ */

/* Read from @fd until @buf holds a full line or @ms pass; fails on EOF or
 * time-out. The line (without '\n') is left in @buf. */
static void read_line(int fd, char *buf, size_t cap, int ms, const char *who) {
  size_t len = 0;
  int64_t deadline = now_ms() + ms;
  while (!memchr(buf, '\n', len)) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t left = deadline - now_ms();
    if (len == cap - 1 || left <= 0 || poll(&p, 1, (int)left) <= 0)
      fail_msg("%s: no full line within %d ms", who, ms);
    ssize_t n = read(fd, buf + len, 1); /* byte by byte: nothing past the line */
    if (n <= 0)
      fail_msg("%s: stdout closed before a full line", who);
    len += (size_t)n;
  }
  buf[len - 1] = 0;
}

/* Start a server example (@argv ends with NULL) and read its port from the
 * "listening on" line; its stdout stays open in *@out (NULL: closed). */
static pid_t start_server_pid(char **argv, unsigned *port, int *out) {
  int fd;
  pid_t pid = spawn_pid(argv, &fd, NULL);
  char line[128];
  read_line(fd, line, sizeof line, 10000, argv[0]);
  int used = 0;
  if (sscanf(line, "listening on 127.0.0.1:%u%n", port, &used) != 1 || line[used] ||
      *port == 0)
    fail_msg("%s said \"%s\"", argv[0], line);
  if (out)
    *out = fd;
  else
    close(fd);
  return pid;
}

static pid_t start_echo(unsigned *port) {
  char *argv[] = {ECHO_REACTOR, "--port", "0", "--backend", "epoll", NULL};
  return start_server_pid(argv, port, NULL);
}

/* A listening socket on 127.0.0.1, port picked by the kernel. */
static int listen_any(unsigned *port, bool do_listen) {
  struct sockaddr_in sa = {.sin_family = AF_INET};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  if (do_listen)
    assert_int_equal(listen(fd, 128), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  *port = ntohs(sa.sin_port);
  return fd;
}

static bool write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w <= 0)
      return false;
    p += w, n -= (size_t)w;
  }
  return true;
}

/* What a forked server does with @n bytes read at stream offset @seen:
 * false when the connection is to be closed. */
static bool serve_bytes(int fd, enum srv_mode mode, char *buf, size_t n, uint64_t seen) {
  if (mode == SRV_SINK)
    return true;
  if (mode == SRV_FLIP) {
    if (seen <= FLIP_AT && FLIP_AT < seen + n)
      buf[FLIP_AT - seen] ^= 0x20;
    return write_all(fd, buf, n);
  }
  size_t keep = seen >= CLOSE_AFTER ? 0 : CLOSE_AFTER - seen < n ? CLOSE_AFTER - seen : n;
  if (!write_all(fd, buf, keep))
    return false;
  /* Half-close and go on reading: the client sees a clean EOF, never a
   * reset for bytes it sent after our close. */
  if (seen < CLOSE_AFTER && seen + n >= CLOSE_AFTER)
    shutdown(fd, SHUT_WR);
  return true;
}

/* The forked server's body: poll, accept (blocking sockets: the client
 * always reads), serve. Ends itself after SRV_LIFE_MS. */
static _Noreturn void server_main(int lfd, enum srv_mode mode) {
  enum { MAXC = 64 };
  struct pollfd p[MAXC + 1] = {{.fd = lfd, .events = POLLIN}};
  uint64_t seen[MAXC + 1] = {0};
  static char buf[65536];
  int n = 1;
  int64_t end = now_ms() + SRV_LIFE_MS;
  while (now_ms() < end) {
    if (poll(p, (nfds_t)n, 100) <= 0)
      continue;
    for (int i = n - 1; i >= 1; i--) {
      if (!p[i].revents)
        continue;
      ssize_t r = read(p[i].fd, buf, sizeof buf);
      if (r > 0 && serve_bytes(p[i].fd, mode, buf, (size_t)r, seen[i])) {
        seen[i] += (uint64_t)r;
        continue;
      }
      close(p[i].fd); /* EOF or error */
      p[i] = p[--n];
      seen[i] = seen[n];
    }
    if (p[0].revents & POLLIN) {
      int fd = accept(lfd, NULL, NULL);
      if (fd >= 0 && n <= MAXC) {
        p[n] = (struct pollfd){.fd = fd, .events = POLLIN};
        seen[n++] = 0;
      } else if (fd >= 0) {
        close(fd);
      }
    }
  }
  _exit(0);
}

/* Fork a server of @mode; its port in *@port. */
static pid_t start_forked(enum srv_mode mode, unsigned *port) {
  int lfd = listen_any(port, true);
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0)
    server_main(lfd, mode);
  close(lfd);
  if (pid < 0)
    fail_msg("fork: %s", strerror(errno));
  child_add(pid);
  return pid;
}

/* ------------------------------------------------------------------------ */
/* Running axload                                                            */
/* ------------------------------------------------------------------------ */

struct result {
  int status; /* exit status, or -1 when killed by a signal */
  char out[4096], err[4096];
  size_t nout, nerr;
};

/* Append what @fd has to @buf; false at EOF. */
static bool drain(int fd, char *buf, size_t *len, size_t cap) {
  char tmp[4096];
  ssize_t n = read(fd, tmp, sizeof tmp);
  if (n < 0 && errno == EINTR)
    return true;
  if (n <= 0)
    return false;
  size_t take = (size_t)n < cap - 1 - *len ? (size_t)n : cap - 1 - *len;
  memcpy(buf + *len, tmp, take);
  *len += take;
  buf[*len] = 0;
  return true;
}

/* Run axload with @args (NULL-terminated, HOST:PORT last) to the end;
 * @sigint_ms > 0: send it SIGINT after that long. */
static void axload(struct result *res, int timeout_ms, int sigint_ms, const char **args) {
  char *argv[24] = {AXLOAD};
  int argc = 1;
  while (*args && argc < 23)
    argv[argc++] = (char *)*args++;
  argv[argc] = NULL;
  memset(res, 0, sizeof *res);
  int out, err;
  int64_t start = now_ms(), deadline = start + timeout_ms;
  pid_t pid = spawn_pid(argv, &out, &err);
  struct pollfd p[2] = {{.fd = out, .events = POLLIN}, {.fd = err, .events = POLLIN}};
  while (p[0].fd >= 0 || p[1].fd >= 0) {
    int64_t left = deadline - now_ms();
    if (sigint_ms > 0 && now_ms() >= start + sigint_ms) {
      kill(pid, SIGINT);
      sigint_ms = 0;
    }
    if (left <= 0)
      break; /* pid_wait kills it and fails */
    int wait = sigint_ms > 0 ? 20 : (int)(left < 1000 ? left : 1000);
    if (poll(p, 2, wait) < 0 && errno != EINTR)
      fail_msg("poll: %s", strerror(errno));
    if ((p[0].revents & (POLLIN | POLLHUP)) &&
        !drain(out, res->out, &res->nout, sizeof res->out))
      p[0].fd = -1;
    if ((p[1].revents & (POLLIN | POLLHUP)) &&
        !drain(err, res->err, &res->nerr, sizeof res->err))
      p[1].fd = -1;
  }
  close(out);
  close(err);
  int left = (int)(deadline - now_ms());
  int st = pid_wait(pid, left > 0 ? left : 1);
  res->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The value of @key in the summary line; fails when it is missing. Checks
 * there is exactly one line, and that it is the summary. */
static double field(const struct result *res, const char *key) {
  if (strncmp(res->out, "axload mode=", 12) != 0 ||
      strchr(res->out, '\n') != res->out + res->nout - 1)
    fail_msg("stdout is not one summary line: \"%s\" (stderr: \"%s\")", res->out,
             res->err);
  char pat[64];
  snprintf(pat, sizeof pat, " %s=", key);
  const char *p = strstr(res->out, pat);
  if (!p)
    fail_msg("no %s= in \"%s\"", key, res->out);
  return strtod(p + strlen(pat), NULL);
}

/* axload must have exited with @status; else fail with what it said. */
static void expect_status(const struct result *res, int status) {
  if (res->status != status)
    fail_msg("axload exited %d, want %d\nstdout: %s\nstderr: %s", res->status, status,
             res->out, res->err);
}

static void target(char *buf, size_t len, unsigned port) {
  snprintf(buf, len, "127.0.0.1:%u", port);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

static void test_echo_one(void **state) {
  (void)state;
  unsigned port;
  char t[32];
  pid_t srv = start_echo(&port);
  target(t, sizeof t, port);
  struct result r;
  axload(&r, 10000, 0,
         (const char *[]){"-q", "-c", "1", "-w", "0.2", "-d", "1", t, NULL});
  expect_status(&r, 0);
  assert_true(field(&r, "reqs") > 0);
  assert_true(field(&r, "p50_us") > 0);
  assert_true(field(&r, "p99_us") >= field(&r, "p50_us"));
  assert_true(field(&r, "mismatches") == 0);
  assert_true(field(&r, "errors") == 0);
  assert_true(field(&r, "held") == 1);
  assert_true(field(&r, "secs") >= 0.99 && field(&r, "secs") <= 1.01);
  kill(srv, SIGTERM);
  assert_int_equal(pid_wait(srv, 10000), 0);
}

static void test_echo_many(void **state) {
  (void)state;
  unsigned port;
  char t[32];
  pid_t srv = start_echo(&port);
  target(t, sizeof t, port);
  struct result r;
  axload(&r, 15000, 0,
         (const char *[]){"-q", "-c", "200", "-r", "0", "-w", "0.3", "-d", "1", t, NULL});
  expect_status(&r, 0);
  assert_true(field(&r, "reqs") > 200);
  assert_true(field(&r, "mismatches") == 0);
  assert_true(field(&r, "connect_failed") == 0);
  assert_true(field(&r, "held") == 200);
  /* Two threads split the connections and their counts add up. */
  axload(&r, 15000, 0,
         (const char *[]){"-q", "-t", "2", "-c", "200", "-r", "0", "-w", "0.3", "-d",
                          "0.5", t, NULL});
  expect_status(&r, 0);
  assert_true(field(&r, "threads") == 2);
  assert_true(field(&r, "held") == 200);
  kill(srv, SIGTERM);
  assert_int_equal(pid_wait(srv, 10000), 0);
}

/* Messages larger than one send or recv, several in flight: every byte is
 * still checked at its stream offset. */
static void test_echo_pipelined_large(void **state) {
  (void)state;
  unsigned port;
  char t[32];
  pid_t srv = start_echo(&port);
  target(t, sizeof t, port);
  struct result r;
  axload(&r, 15000, 0,
         (const char *[]){"-q", "-c", "3", "-r", "0", "-p", "4", "-s", "100000", "-w",
                          "0", "-d", "1", t, NULL});
  expect_status(&r, 0);
  assert_true(field(&r, "reqs") > 0);
  assert_true(field(&r, "mb_per_s") > 0);
  assert_true(field(&r, "mismatches") == 0);
  kill(srv, SIGTERM);
  assert_int_equal(pid_wait(srv, 10000), 0);
}

static void test_push(void **state) {
  (void)state;
  unsigned port;
  char t[32];
  start_forked(SRV_SINK, &port);
  target(t, sizeof t, port);
  struct result r;
  axload(&r, 15000, 0,
         (const char *[]){"-q", "-m", "push", "-s", "16384", "-c", "4", "-r", "0", "-w",
                          "0.2", "-d", "1", t, NULL});
  expect_status(&r, 0);
  assert_true(field(&r, "mb_per_s") > 1);
  assert_true(field(&r, "reqs") > 0);
  assert_true(field(&r, "held") == 4);
  assert_true(field(&r, "errors") == 0);
}

/* examples/sink, the proactor's discard server, under push on each
 * proactor backend: it counts every connection and exits 0 on SIGTERM with
 * the streams still open (under ASan: nothing leaked). */
static void test_push_sink_example(void **state) {
  (void)state;
  static const char *const backends[] = {"epoll", "io_uring"};
  for (int b = 0; b < 2; b++) {
    if (b == 1 && !ax_test_uring_usable())
      continue;
    char *argv[] = {SINK, "--port", "0", "--backend", (char *)backends[b], NULL};
    unsigned port;
    int out;
    char t[32], line[128];
    pid_t srv = start_server_pid(argv, &port, &out);
    target(t, sizeof t, port);
    struct result r;
    axload(&r, 15000, 0,
           (const char *[]){"-q", "-m", "push", "-s", "16384", "-c", "4", "-r", "0", "-w",
                            "0", "-d", "0.5", t, NULL});
    expect_status(&r, 0);
    assert_true(field(&r, "mb_per_s") > 1);
    /* Connections held open across the stop. */
    axload(&r, 15000, 0,
           (const char *[]){"-q", "-m", "hold", "-c", "3", "-r", "0", "-w", "0", "-d",
                            "0.2", t, NULL});
    assert_true(field(&r, "held") == 3);
    assert_int_equal(kill(srv, SIGTERM), 0);
    read_line(out, line, sizeof line, 10000, "sink");
    close(out);
    unsigned long long conns = 0, bytes = 0;
    int used = 0;
    if (sscanf(line, "sink: %llu connections, %llu bytes%n", &conns, &bytes, &used) !=
            2 ||
        line[used])
      fail_msg("sink (%s) said \"%s\"", backends[b], line);
    if (conns != 7 || bytes == 0)
      fail_msg("sink (%s): %llu connections, %llu bytes; want 7 and some", backends[b],
               conns, bytes);
    assert_int_equal(pid_wait(srv, 10000), 0);
  }
}

static void test_hold(void **state) {
  (void)state;
  unsigned port;
  char t[32];
  pid_t srv = start_echo(&port);
  target(t, sizeof t, port);
  struct result r;
  axload(&r, 15000, 0,
         (const char *[]){"-q", "-m", "hold", "-c", "300", "-r", "0", "-w", "0", "-d",
                          "1", t, NULL});
  expect_status(&r, 0);
  assert_true(field(&r, "held") == 300);
  assert_true(field(&r, "connect_failed") == 0);
  /* At 20 connects a second, 0.5 s opens about 11 of 40: the rate holds. */
  axload(&r, 15000, 0,
         (const char *[]){"-q", "-m", "hold", "-c", "40", "-r", "20", "-w", "0", "-d",
                          "0.5", t, NULL});
  expect_status(&r, 0);
  double held = field(&r, "held");
  if (held < 6 || held > 16)
    fail_msg("held %.0f at 20 connects/s for 0.5 s", held);
  kill(srv, SIGTERM);
  assert_int_equal(pid_wait(srv, 10000), 0);
}

/* A bound socket that does not listen: connects are refused. The run ends
 * as soon as nothing is left to try. */
static void test_refused(void **state) {
  (void)state;
  unsigned port;
  char t[32], want[96];
  int fd = listen_any(&port, false);
  target(t, sizeof t, port);
  struct result r;
  int64_t start = now_ms();
  axload(&r, 10000, 0, (const char *[]){"-q", "-c", "3", "-d", "3", t, NULL});
  close(fd);
  expect_status(&r, 1);
  assert_true(now_ms() - start < 2500);
  assert_true(field(&r, "connect_failed") == 3);
  assert_true(field(&r, "held") == 0);
  snprintf(want, sizeof want, "axload: connect %s: connection refused (x 3)\n", t);
  if (!strstr(r.err, want))
    fail_msg("stderr \"%s\" lacks \"%s\"", r.err, want);
}

/* A server that flips one byte per connection: exactly one mismatch each. */
static void test_corrupt(void **state) {
  (void)state;
  unsigned port;
  char t[32];
  start_forked(SRV_FLIP, &port);
  target(t, sizeof t, port);
  struct result r;
  axload(&r, 10000, 0,
         (const char *[]){"-q", "-c", "2", "-r", "0", "-w", "0", "-d", "1", t, NULL});
  expect_status(&r, 1);
  assert_true(field(&r, "mismatches") == 2);
  assert_true(field(&r, "reqs") > 0);
  if (!strstr(r.err, "stream offset 1000"))
    fail_msg("stderr does not name the corrupted offset: \"%s\"", r.err);
}

/* A server that closes mid-stream: echo counts the loss and fails. */
static void test_closed_by_server(void **state) {
  (void)state;
  unsigned port;
  char t[32], want[96];
  start_forked(SRV_CLOSE, &port);
  target(t, sizeof t, port);
  struct result r;
  axload(&r, 10000, 0,
         (const char *[]){"-q", "-c", "2", "-r", "0", "-w", "0", "-d", "2", t, NULL});
  expect_status(&r, 1);
  assert_true(field(&r, "errors") == 2);
  assert_true(field(&r, "mismatches") == 0);
  assert_true(field(&r, "held") == 0);
  snprintf(want, sizeof want, "axload: %s: connection closed by the server (x 2)\n", t);
  if (!strstr(r.err, want))
    fail_msg("stderr \"%s\" lacks \"%s\"", r.err, want);
}

/* SIGINT ends a 30 s run at once and the summary still comes. */
static void test_sigint(void **state) {
  (void)state;
  unsigned port;
  char t[32];
  pid_t srv = start_echo(&port);
  target(t, sizeof t, port);
  struct result r;
  int64_t start = now_ms();
  axload(&r, 10000, 600,
         (const char *[]){"-q", "-c", "10", "-r", "0", "-w", "0", "-d", "30", t, NULL});
  expect_status(&r, 0);
  assert_true(now_ms() - start < 3000);
  assert_true(field(&r, "secs") < 2);
  assert_true(field(&r, "reqs") > 0);
  assert_true(field(&r, "held") == 10);
  kill(srv, SIGTERM);
  assert_int_equal(pid_wait(srv, 10000), 0);
}

static void test_usage(void **state) {
  (void)state;
  struct result r;
  axload(&r, 5000, 0, (const char *[]){NULL});
  expect_status(&r, 2);
  axload(&r, 5000, 0, (const char *[]){"-m", "bogus", "127.0.0.1:1", NULL});
  expect_status(&r, 2);
  axload(&r, 5000, 0, (const char *[]){"localhost:80", NULL});
  expect_status(&r, 2);
  if (!strstr(r.err, "numeric"))
    fail_msg("stderr: \"%s\"", r.err);
  assert_int_equal(r.nout, 0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_echo_one, cleanup),
      cmocka_unit_test_teardown(test_echo_many, cleanup),
      cmocka_unit_test_teardown(test_echo_pipelined_large, cleanup),
      cmocka_unit_test_teardown(test_push, cleanup),
      cmocka_unit_test_teardown(test_push_sink_example, cleanup),
      cmocka_unit_test_teardown(test_hold, cleanup),
      cmocka_unit_test_teardown(test_refused, cleanup),
      cmocka_unit_test_teardown(test_corrupt, cleanup),
      cmocka_unit_test_teardown(test_closed_by_server, cleanup),
      cmocka_unit_test_teardown(test_sigint, cleanup),
      cmocka_unit_test_teardown(test_usage, cleanup),
  };
  return cmocka_run_group_tests_name("axload", tests, NULL, NULL) ? 1 : 0;
}
