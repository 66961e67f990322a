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
#include "testutil.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EXAMPLE(name) AX_BUILD_DIR "/examples/" name

extern char **environ;

/* The backend under test; ax_test_backend is epoll for the default run. */
static const char *backend_name(void) {
  return ax_test_backend_name(ax_test_backend);
}

/* mono_ms() as a signed value, for deadline arithmetic. */
static int64_t now_ms(void) { return (int64_t)mono_ms(); }

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* ------------------------------------------------------------------------ */
/* Children                                                                  */
/* ------------------------------------------------------------------------ */

struct child {
  bool used; /* slot taken; the fields below are valid */
  pid_t pid; /* 0 once reaped */
  int in;    /* write end of the child's stdin pipe, or -1 */
  int out;   /* read end of the child's stdout pipe, or -1 */
  char *acc; /* stdout read so far and not consumed: acc[0, len) */
  size_t len, cap;
  bool eof;
};

#define MAX_CHILDREN 4
static struct child children[MAX_CHILDREN];

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void child_release(struct child *c) {
  if (!c->used) return;
  close_fd(&c->in);
  close_fd(&c->out);
  free(c->acc);
  memset(c, 0, sizeof *c);
}

static const char *status_str(int st, char *buf, size_t len) {
  if (WIFEXITED(st))
    snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
  else if (WIFSIGNALED(st))
    snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
  else
    snprintf(buf, len, "wait status 0x%x", st);
  return buf;
}

/*
 * Start @argv[0] with a stdout pipe, stdin from a pipe (@stdin_path NULL) or
 * from @stdin_path; @env_add ("NAME=value") added to the environment if not
 * NULL; RLIMIT_NOFILE set to @nofile if > 0.
 */
static struct child *spawn(char *const argv[], const char *stdin_path, const char *env_add,
                           rlim_t nofile) {
  struct child *c = NULL;
  for (int i = 0; i < MAX_CHILDREN && !c; i++)
    if (!children[i].used) c = &children[i];
  assert_non_null(c);
  if (access(argv[0], X_OK) != 0)
    fail_msg("%s: %s (build the examples first)", argv[0], strerror(errno));

  size_t n = 0;
  while (environ[n]) n++;
  char **envp = calloc(n + 2, sizeof *envp);
  assert_non_null(envp);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "AXON_BACKEND=", 13) != 0) envp[k++] = environ[i];
  if (env_add) envp[k++] = (char *)env_add;

  int in[2] = {-1, -1}, out[2] = {-1, -1};
  if (stdin_path)
    in[0] = open(stdin_path, O_RDONLY | O_CLOEXEC);
  else if (pipe2(in, O_CLOEXEC) != 0)
    in[0] = -1;
  if (in[0] < 0 || pipe2(out, O_CLOEXEC) != 0) {
    int err = errno;
    free(envp);
    close_fd(&in[0]);
    close_fd(&in[1]);
    fail_msg("pipes for child: %s", strerror(err));
  }

  pid_t pid = fork();
  if (pid == 0) {
    /* The examples must cope with SIGPIPE at its default (deadly) action and
     * with no signal blocked, whatever the test process does. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    struct rlimit rl = {nofile, nofile};
    if (nofile > 0 && setrlimit(RLIMIT_NOFILE, &rl) != 0) _exit(126);
    if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0) _exit(126);
    execve(argv[0], argv, envp);
    _exit(127);
  }
  int err = errno;
  free(envp);
  close(in[0]);
  close(out[1]);
  if (pid < 0) {
    close_fd(&in[1]);
    close(out[0]);
    fail_msg("fork: %s", strerror(err));
  }
  c->used = true;
  c->pid = pid;
  c->in = in[1];
  c->out = out[0];
  return c;
}

/* Wait up to @timeout_ms for @c to exit; on time-out kill it and fail. */
static int child_wait(struct child *c, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(c->pid, &st, WNOHANG);
    if (r == c->pid) break;
    if (r < 0 && errno != EINTR) fail_msg("waitpid: %s", strerror(errno));
    if (now_ms() > deadline) {
      kill(c->pid, SIGKILL);
      waitpid(c->pid, &st, 0);
      child_release(c);
      fail_msg("child did not exit within %d ms: killed", timeout_ms);
    }
    sleep_ms(5);
  }
  c->pid = 0;
  return st;
}

/* Assert @c exits with status 0 within @timeout_ms, then release it. */
static void child_expect_exit0(struct child *c, int timeout_ms) {
  char buf[96];
  int st = child_wait(c, timeout_ms);
  child_release(c);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("child ended with %s, want exit status 0", status_str(st, buf, sizeof buf));
}

/* What a failed test may leave behind, released by cleanup(). */
static struct client *g_clients;
static struct pollfd *g_pollfds;
static size_t g_nclients;
static char g_tmpdir[64];
static void clients_free(void);

/* The teardown of every test: kill and reap every child still registered
 * (by pid), close every client, remove the temporary files. */
static int cleanup(void **state) {
  (void)state;
  for (int i = 0; i < MAX_CHILDREN; i++) {
    if (children[i].used && children[i].pid > 0) {
      kill(children[i].pid, SIGKILL);
      waitpid(children[i].pid, NULL, 0);
    }
    child_release(&children[i]);
  }
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

/* Read what the child printed, waiting at most until @deadline; false on
 * time-out. Stops at EOF (c->eof). */
static bool child_read(struct child *c, int64_t deadline) {
  if (c->cap - c->len < 4096) {
    c->cap = c->cap ? c->cap * 2 : 65536;
    c->acc = realloc(c->acc, c->cap);
    assert_non_null(c->acc);
  }
  int64_t left = deadline - now_ms();
  if (left < 0) return false;
  struct pollfd p = {.fd = c->out, .events = POLLIN};
  int r = poll(&p, 1, (int)left);
  if (r < 0 && errno == EINTR) return true;
  if (r < 0) fail_msg("poll: %s", strerror(errno));
  if (r == 0) return false;
  ssize_t n = read(c->out, c->acc + c->len, c->cap - c->len);
  if (n < 0 && errno != EINTR) fail_msg("read child stdout: %s", strerror(errno));
  if (n == 0) c->eof = true;
  if (n > 0) c->len += (size_t)n;
  return true;
}

/* The next line the child prints (without '\n'), into @buf; fails on EOF or
 * time-out. */
static void child_line(struct child *c, char *buf, size_t size, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  for (;;) {
    char *nl = c->acc ? memchr(c->acc, '\n', c->len) : NULL;
    if (nl) {
      size_t n = (size_t)(nl - c->acc);
      snprintf(buf, size, "%.*s", (int)n, c->acc);
      c->len -= n + 1;
      memmove(c->acc, nl + 1, c->len);
      return;
    }
    if (c->eof) fail_msg("child closed stdout before a full line (%zu bytes)", c->len);
    if (!child_read(c, deadline)) fail_msg("no line from child within %d ms", timeout_ms);
  }
}

/* Everything the child prints until it closes stdout. */
static void child_read_all(struct child *c, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  while (!c->eof)
    if (!child_read(c, deadline)) fail_msg("child stdout still open after %d ms", timeout_ms);
}

/* ------------------------------------------------------------------------ */
/* Echo server and clients                                                   */
/* ------------------------------------------------------------------------ */

/* Start an echo server example (@argv ends with NULL) and read its port
 * from the "listening on" line every echo example prints. */
static struct child *start_server(char **argv, rlim_t nofile, unsigned *port) {
  struct child *c = spawn(argv, "/dev/null", NULL, nofile);
  char line[128];
  child_line(c, line, sizeof line, 10000);
  int used = 0;
  if (sscanf(line, "listening on 127.0.0.1:%u%n", port, &used) != 1 || line[used] != 0 ||
      *port == 0)
    fail_msg("unexpected first line from %s: \"%s\"", argv[0], line);
  return c;
}

static struct child *start_echo(rlim_t nofile, unsigned *port) {
  char *argv[] = {EXAMPLE("echo_reactor"), "--port", "0", "--backend",
                  (char *)backend_name(),  NULL};
  return start_server(argv, nofile, port);
}

/* SIGTERM (or @signo) must end the server with status 0 within 10 s. */
static void stop_echo(struct child *c, int signo) {
  assert_int_equal(kill(c->pid, signo), 0);
  child_expect_exit0(c, 10000);
}

static void assert_alive(struct child *c) {
  int st;
  char buf[96];
  pid_t r = waitpid(c->pid, &st, WNOHANG);
  if (r == c->pid) {
    c->pid = 0;
    fail_msg("echo_reactor died: %s", status_str(st, buf, sizeof buf));
  }
}

struct client {
  int fd;
  unsigned char *data; /* what we send, and so what must come back */
  size_t size, sent, recvd;
  bool connected, half_close, shut, done;
};

static void clients_free(void) {
  for (size_t i = 0; i < g_nclients; i++) {
    close_fd(&g_clients[i].fd);
    free(g_clients[i].data);
  }
  free(g_clients);
  free(g_pollfds);
  g_clients = NULL;
  g_pollfds = NULL;
  g_nclients = 0;
}

/* A non-blocking connect to 127.0.0.1:@port. */
static int connect_nb(unsigned port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) fail_msg("socket: %s", strerror(errno));
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
    int err = errno;
    close(fd);
    fail_msg("connect 127.0.0.1:%u: %s", port, strerror(err));
  }
  return fd;
}

/* Make @n clients with distinct pseudo-random data of @min..@max bytes.
 * half: 0 none, 1 every client, 2 every other client half-closes after
 * sending (and then expects the full echo followed by EOF). */
static void clients_make(size_t n, size_t min, size_t max, uint64_t seed, int half) {
  clients_free();
  g_clients = calloc(n, sizeof *g_clients);
  g_pollfds = calloc(n, sizeof *g_pollfds);
  assert_non_null(g_clients);
  assert_non_null(g_pollfds);
  for (size_t i = 0; i < n; i++) g_clients[i].fd = -1;
  g_nclients = n;
  for (size_t i = 0; i < n; i++) {
    struct client *cl = &g_clients[i];
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + i + 1;
    cl->size = min + (max > min ? xorshift(&s) % (max - min + 1) : 0);
    cl->data = malloc(cl->size);
    assert_non_null(cl->data);
    for (size_t j = 0; j < cl->size; j++) cl->data[j] = (unsigned char)(xorshift(&s) >> 24);
    cl->half_close = half == 1 || (half == 2 && i % 2 == 1);
  }
}

static void client_send(struct client *cl, size_t i) {
  size_t want = cl->size - cl->sent < 65536 ? cl->size - cl->sent : 65536;
  ssize_t w = send(cl->fd, cl->data + cl->sent, want, MSG_NOSIGNAL);
  if (w < 0 && errno != EAGAIN && errno != EINTR)
    fail_msg("client %zu: send after %zu bytes: %s", i, cl->sent, strerror(errno));
  if (w > 0) cl->sent += (size_t)w;
  if (cl->sent == cl->size && cl->half_close && !cl->shut) {
    if (shutdown(cl->fd, SHUT_WR) != 0) fail_msg("client %zu: shutdown: %s", i, strerror(errno));
    cl->shut = true;
  }
}

static void client_recv(struct client *cl, size_t i) {
  static unsigned char buf[65536];
  ssize_t r = recv(cl->fd, buf, sizeof buf, 0);
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (r < 0)
    fail_msg("client %zu: recv after %zu of %zu bytes: %s", i, cl->recvd, cl->size,
             strerror(errno));
  if (r == 0) {
    if (!cl->half_close || cl->recvd != cl->size)
      fail_msg("client %zu: EOF after %zu of %zu bytes%s", i, cl->recvd, cl->size,
               cl->half_close ? "" : " (server closed a connection we kept open)");
    cl->done = true;
    return;
  }
  if (cl->recvd + (size_t)r > cl->size)
    fail_msg("client %zu: %zu bytes echoed, only %zu sent", i, cl->recvd + (size_t)r, cl->size);
  for (ssize_t j = 0; j < r; j++)
    if (buf[j] != cl->data[cl->recvd + (size_t)j])
      fail_msg("client %zu: byte %zu is 0x%02x, sent 0x%02x", i, cl->recvd + (size_t)j, buf[j],
               cl->data[cl->recvd + (size_t)j]);
  cl->recvd += (size_t)r;
  /* A client that keeps its side open is done with the full echo; a
   * half-closed one waits for the server's EOF too. */
  if (cl->recvd == cl->size && !cl->half_close) cl->done = true;
}

/* Run every client against 127.0.0.1:@port at once until all are done. */
static void clients_run(unsigned port, int timeout_ms) {
  size_t n = g_nclients, left = n;
  struct pollfd *p = g_pollfds;
  for (size_t i = 0; i < n; i++) g_clients[i].fd = connect_nb(port);
  int64_t deadline = now_ms() + timeout_ms;
  while (left > 0) {
    for (size_t i = 0; i < n; i++) {
      struct client *cl = &g_clients[i];
      p[i].fd = cl->done ? -1 : cl->fd;
      p[i].events = !cl->connected || cl->sent < cl->size ? POLLOUT : 0;
      if (cl->connected) p[i].events |= POLLIN;
      p[i].revents = 0;
    }
    int64_t wait = deadline - now_ms();
    int r = wait < 0 ? 0 : poll(p, n, wait > 1000 ? 1000 : (int)wait);
    if (r < 0 && errno != EINTR) fail_msg("poll: %s", strerror(errno));
    if (wait < 0) {
      size_t i = 0;
      while (g_clients[i].done) i++;
      fail_msg("%zu of %zu clients unfinished after %d ms (client %zu: sent %zu, got %zu of %zu)",
               left, n, timeout_ms, i, g_clients[i].sent, g_clients[i].recvd, g_clients[i].size);
    }
    for (size_t i = 0; r > 0 && i < n; i++) {
      struct client *cl = &g_clients[i];
      if (!p[i].revents) continue;
      if (!cl->connected) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(cl->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err) fail_msg("client %zu: connect: %s", i, strerror(err));
        cl->connected = true;
      }
      if ((p[i].revents & POLLOUT) && cl->sent < cl->size) client_send(cl, i);
      if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) client_recv(cl, i);
      if (cl->done) {
        close_fd(&cl->fd);
        left--;
      }
    }
  }
}

static void echo_roundtrip(unsigned port, size_t n, size_t min, size_t max, int half) {
  static uint64_t seed; /* distinct data for every round, same every run */
  clients_make(n, min, max, ++seed, half);
  clients_run(port, 60000);
  clients_free();
}

static void test_echo_one(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(0, &port);
  echo_roundtrip(port, 1, 1, 1, 0);                   /* one byte */
  echo_roundtrip(port, 1, 300 * 1024, 300 * 1024, 0); /* > the server's 64 KiB */
  stop_echo(srv, SIGTERM);
}

static void test_echo_many(void **state) {
  (void)state;
  struct rlimit rl;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 600) {
    printf("[  SKIPPED ] 500 connections need 600 fds; RLIMIT_NOFILE is %llu\n",
           (unsigned long long)rl.rlim_cur);
    skip();
  }
  unsigned port;
  struct child *srv = start_echo(0, &port);
  echo_roundtrip(port, 500, 4096, 64 * 1024, 2);
  stop_echo(srv, SIGTERM);
}

/* A blocking client socket connected to 127.0.0.1:@port. */
static int connect_to(unsigned port, int rcvbuf) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  /* Set before connect, so that the advertised window follows. */
  if (rcvbuf > 0)
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    int err = errno;
    close(fd);
    fail_msg("connect 127.0.0.1:%u: %s", port, strerror(err));
  }
  return fd;
}

static void set_linger0(int fd) { /* close() then sends RST, not FIN */
  struct linger lg = {1, 0};
  assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
}

/* Send up to @size bytes within 2 s without reading any echo, then close
 * (@reset: with RST). */
static void client_abandon(unsigned port, size_t size, bool reset) {
  int fd = connect_to(port, 4096);
  static char junk[65536];
  size_t sent = 0;
  int64_t deadline = now_ms() + 2000;
  while (sent < size && now_ms() < deadline) {
    ssize_t w = send(fd, junk, size - sent < sizeof junk ? size - sent : sizeof junk,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0)
      sent += (size_t)w;
    else if (errno == EAGAIN)
      sleep_ms(5); /* the server stopped reading: fine */
    else
      break;
  }
  if (reset) set_linger0(fd);
  close(fd);
}

/*
 * The reset a server forgetting MSG_NOSIGNAL dies of. Our FIN puts the
 * server's socket in CLOSE_WAIT; a RST then makes its next send fail with
 * EPIPE (ECONNRESET otherwise), which raises SIGPIPE. For that send to
 * happen the server must still hold unsent echo when the RST comes: we send
 * 6 MiB and half-close while reading the echo much slower than it is
 * produced (a tiny receive window, at most 16 KiB a millisecond), so the
 * server's socket buffer stays full, and reset as soon as its kernel has
 * acknowledged our FIN. Kernel buffer sizes vary: this provokes the EPIPE
 * often, not always; a correct server survives it either way.
 */
static void client_reset_in_close_wait(unsigned port) {
  int fd = connect_to(port, 4096);
  static char buf[65536];
  size_t size = 6u << 20, sent = 0;
  bool shut = false;
  int64_t deadline = now_ms() + 5000;
  while (now_ms() < deadline) {
    if (sent < size) {
      ssize_t w = send(fd, buf, size - sent < sizeof buf ? size - sent : sizeof buf,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w > 0)
        sent += (size_t)w;
      else if (errno != EAGAIN)
        fail_msg("send after %zu bytes: %s", sent, strerror(errno));
    }
    if (sent == size && !shut) {
      assert_int_equal(shutdown(fd, SHUT_WR), 0);
      shut = true;
    }
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (shut &&
        (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 || ti.tcpi_state == TCP_FIN_WAIT2))
      break; /* the server's kernel has our FIN */
    if (recv(fd, buf, 16384, MSG_DONTWAIT) < 0 && errno != EAGAIN)
      fail_msg("recv: %s", strerror(errno));
    sleep_ms(1);
  }
  set_linger0(fd);
  close(fd);
}

static void test_echo_half_close(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(0, &port);
  echo_roundtrip(port, 1, 5, 5, 1);
  /* Half-closed while the server holds more than it buffers: it must still
   * read the rest, echo it, and only then close. */
  echo_roundtrip(port, 3, 200 * 1024, 400 * 1024, 1);
  stop_echo(srv, SIGTERM);
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
  stop_echo(srv, SIGTERM);
}

/* @n clients connect and send one chunk of 200 KiB they never read back,
 * so the server holds connections with data pending; waits 200 ms. */
static void clients_pending(unsigned port, size_t n, uint64_t seed) {
  clients_make(n, 200 * 1024, 200 * 1024, seed, 0);
  for (size_t i = 0; i < n; i++) {
    g_clients[i].fd = connect_nb(port);
    struct pollfd p = {.fd = g_clients[i].fd, .events = POLLOUT};
    assert_int_equal(poll(&p, 1, 5000), 1);
    g_clients[i].connected = true;
    client_send(&g_clients[i], i);
  }
  sleep_ms(200);
}

/* SIGINT with connections open and data pending: exit 0 (and, under ASan,
 * no leak: every connection is freed). */
static void test_echo_sigint(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(0, &port);
  clients_pending(port, 3, 7);
  stop_echo(srv, SIGINT);
  clients_free();
}

/* The resident set size of a process, in KiB. */
static long rss_kib(pid_t pid) {
  char path[64], line[256];
  long kib = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) fail_msg("%s: %s", path, strerror(errno));
  while (kib < 0 && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kib) != 1) kib = -1;
  fclose(f);
  if (kib < 0) fail_msg("no VmRSS in %s", path);
  return kib;
}

/* A client that sends and never reads must not make the server buffer
 * without limit: once the kernel's buffers are full, our sends block. */
static void test_echo_bounded(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(0, &port);
  long before = rss_kib(srv->pid);
  int fd = connect_to(port, 4096);
  static char junk[65536];
  size_t size = 64u << 20, sent = 0;
  int64_t deadline = now_ms() + 5000, progress = now_ms();
  while (sent < size && now_ms() < deadline && now_ms() - progress < 500) {
    ssize_t w = send(fd, junk, sizeof junk, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      sent += (size_t)w;
      progress = now_ms();
    } else if (errno == EAGAIN) {
      sleep_ms(1);
    } else {
      fail_msg("send after %zu bytes: %s", sent, strerror(errno));
    }
  }
  sleep_ms(100);
  long grown = rss_kib(srv->pid) - before;
  set_linger0(fd);
  close(fd);
  if (grown > 16 * 1024)
    fail_msg("server grew by %ld KiB while a client sent %zu bytes and read none", grown, sent);
  assert_alive(srv);
  stop_echo(srv, SIGTERM);
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
  stop_echo(srv, SIGTERM);
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
  struct child *c = spawn(argv, "/dev/null", env, 0);
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
  struct child *c = spawn(argv, "/dev/null", env, 0);
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
  struct child *c = spawn(argv, "/dev/null", env, 0);
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
  struct child *c = spawn(argv, NULL, env, 0);
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
    struct child *c = spawn(argv, inputs[i], env, 0);
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
  struct child *c = spawn(argv, "/dev/null", env, 0);
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
  return start_server(argv, 0, port);
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
