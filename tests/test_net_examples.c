/*
 * test_net_examples — the proactor's network examples run as child
 * processes, on every backend: echo_proactor (exact bytes for 1 and 1,000
 * clients, half-close, SIGINT with data in flight, bounded memory against a
 * client that sends 50 MB and reads nothing, resets), proxy in front of
 * echo_proactor (8 MB exact, 100 clients, half-close both ways, a refused
 * upstream, SIGINT; --xor on the wire, in front of echo and chained twice)
 * and sendfile_server (20 clients, a slow reader, the write timeout, an
 * empty file).
 *
 * The child and client helpers are test_examples.c's, adapted: clients may
 * expect bytes they did not send (sendfile), and an alarm per test kills
 * every child and ends the process if a test hangs past the deadlines its
 * waits already have. Every child is registered when spawned and killed by
 * pid in the teardown. Only 127.0.0.1 is used.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define EXAMPLE(name) AX_BUILD_DIR "/examples/" name
#define MIB (1024u * 1024u)
#define XOR_KEY "s3cr3t!" /* 7 bytes: chunk sizes are never a multiple */
#define TEST_LIMIT_S 90   /* the alarm of one test */

extern char **environ;

static const char *backend_name(void) { return ax_test_backend_name(ax_test_backend); }

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

/* Start @argv[0] (argv ends with NULL) with stdin from /dev/null and a
 * stdout pipe, without AXON_BACKEND in its environment. */
static struct child *spawn(char *const argv[]) {
  struct child *c = NULL;
  for (int i = 0; i < MAX_CHILDREN && !c; i++)
    if (!children[i].used) c = &children[i];
  assert_non_null(c);
  if (access(argv[0], X_OK) != 0)
    fail_msg("%s: %s (build the examples first)", argv[0], strerror(errno));
  size_t n = 0, k = 0;
  while (environ[n]) n++;
  char **envp = calloc(n + 1, sizeof *envp);
  assert_non_null(envp);
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "AXON_BACKEND=", 13) != 0) envp[k++] = environ[i];
  int in = open("/dev/null", O_RDONLY | O_CLOEXEC), out[2] = {-1, -1};
  if (in < 0 || pipe2(out, O_CLOEXEC) != 0) {
    int err = errno;
    free(envp);
    close_fd(&in);
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
    if (dup2(in, 0) < 0 || dup2(out[1], 1) < 0) _exit(126);
    execve(argv[0], argv, envp);
    _exit(127);
  }
  int err = errno;
  free(envp);
  close(in);
  close(out[1]);
  if (pid < 0) {
    close(out[0]);
    fail_msg("fork: %s", strerror(err));
  }
  c->used = true;
  c->pid = pid;
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
      c->pid = 0;
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

static void assert_alive(struct child *c) {
  int st;
  char buf[96];
  pid_t r = waitpid(c->pid, &st, WNOHANG);
  if (r == c->pid) {
    c->pid = 0;
    fail_msg("server died: %s", status_str(st, buf, sizeof buf));
  }
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

/* Start a server example (@argv ends with NULL) and read its port from the
 * "listening on 127.0.0.1:PORT" line. */
static struct child *start_server(char **argv, unsigned *port) {
  struct child *c = spawn(argv);
  char line[128];
  child_line(c, line, sizeof line, 10000);
  int used = 0;
  if (sscanf(line, "listening on 127.0.0.1:%u%n", port, &used) != 1 || line[used] != 0 ||
      *port == 0)
    fail_msg("unexpected first line from %s: \"%s\"", argv[0], line);
  return c;
}

static struct child *start_echo(unsigned *port) {
  char *argv[] = {EXAMPLE("echo_proactor"), "--port", "0", "--backend",
                  (char *)backend_name(),   NULL};
  return start_server(argv, port);
}

/* proxy --to 127.0.0.1:@to [--xor @key]. */
static struct child *start_proxy(unsigned to, const char *key, unsigned *port) {
  char dest[32];
  snprintf(dest, sizeof dest, "127.0.0.1:%u", to);
  char *argv[] = {
      EXAMPLE("proxy"),     "--port",    "0", "--to", dest, "--backend", (char *)backend_name(),
      key ? "--xor" : NULL, (char *)key, NULL};
  return start_server(argv, port);
}

/* @signo must end the server with status 0 within 10 s. */
static void stop_server(struct child *c, int signo) {
  assert_int_equal(kill(c->pid, signo), 0);
  child_expect_exit0(c, 10000);
}

/* Stop a proxy with @signo: it must print its counts and exit 0. @bytes
 * (unless -1) is checked too. */
static void stop_proxy(struct child *c, int signo, unsigned long long conns, long long bytes) {
  char line[128];
  unsigned long long n = 0, b = 0;
  int used = 0;
  assert_int_equal(kill(c->pid, signo), 0);
  child_line(c, line, sizeof line, 10000);
  if (sscanf(line, "proxy: %llu connections, %llu bytes%n", &n, &b, &used) != 2 || line[used])
    fail_msg("unexpected last line from proxy: \"%s\"", line);
  if (n != conns || (bytes >= 0 && b != (unsigned long long)bytes))
    fail_msg("proxy counted %llu connections and %llu bytes, want %llu and %lld", n, b, conns,
             bytes);
  child_expect_exit0(c, 10000);
}

/* ------------------------------------------------------------------------ */
/* Watchdog, teardown                                                        */
/* ------------------------------------------------------------------------ */

static char g_tmpdir[64];
static unsigned char *g_file; /* the sendfile tests' file, in memory */
static size_t g_file_size;
static void clients_free(void);

/* A test past its alarm has hung despite the bounded waits: kill every
 * child (async-signal-safe) and end the process, which fails the run. */
static void watchdog_fire(int signo) {
  static const char msg[] = "ERROR: test_net_examples: a test ran past its alarm\n";
  (void)signo;
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i].used && children[i].pid > 0) kill(children[i].pid, SIGKILL);
  if (write(2, msg, sizeof msg - 1) < 0) _exit(4);
  _exit(3);
}

static int setup(void **state) {
  (void)state;
  alarm(TEST_LIMIT_S);
  return 0;
}

/* The teardown of every test: kill and reap every child still registered
 * (by pid), close every client, remove the temporary file. */
static int cleanup(void **state) {
  (void)state;
  alarm(0);
  for (int i = 0; i < MAX_CHILDREN; i++) {
    if (children[i].used && children[i].pid > 0) {
      kill(children[i].pid, SIGKILL);
      waitpid(children[i].pid, NULL, 0);
    }
    child_release(&children[i]);
  }
  clients_free();
  free(g_file);
  g_file = NULL;
  if (g_tmpdir[0]) {
    char path[128];
    snprintf(path, sizeof path, "%s/f", g_tmpdir);
    unlink(path);
    rmdir(g_tmpdir);
    g_tmpdir[0] = 0;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Clients                                                                   */
/* ------------------------------------------------------------------------ */

struct client {
  int fd;
  unsigned char *data;       /* what we send (owned), or NULL */
  const unsigned char *want; /* what must come back */
  size_t tosend, sent, expect, recvd;
  bool connected, half_close, want_eof, shut, done;
};

static struct client *g_clients;
static struct pollfd *g_pollfds;
static size_t g_nclients;

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

static void clients_alloc(size_t n) {
  clients_free();
  g_clients = calloc(n, sizeof *g_clients);
  g_pollfds = calloc(n, sizeof *g_pollfds);
  assert_non_null(g_clients);
  assert_non_null(g_pollfds);
  for (size_t i = 0; i < n; i++) g_clients[i].fd = -1;
  g_nclients = n;
}

/* @n echo clients with distinct pseudo-random data of @min..@max bytes.
 * half: 0 none, 1 every client, 2 every other client half-closes after
 * sending (and then expects the full echo followed by EOF). */
static void clients_make(size_t n, size_t min, size_t max, uint64_t seed, int half) {
  clients_alloc(n);
  for (size_t i = 0; i < n; i++) {
    struct client *cl = &g_clients[i];
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + i + 1;
    cl->tosend = cl->expect = min + (max > min ? xorshift(&s) % (max - min + 1) : 0);
    cl->data = malloc(cl->tosend ? cl->tosend : 1);
    assert_non_null(cl->data);
    for (size_t j = 0; j < cl->tosend; j++) cl->data[j] = (unsigned char)(xorshift(&s) >> 24);
    cl->want = cl->data;
    cl->half_close = cl->want_eof = half == 1 || (half == 2 && i % 2 == 1);
  }
}

/* @n clients that send nothing and expect @size bytes of @want, then EOF. */
static void clients_make_readers(size_t n, const unsigned char *want, size_t size) {
  clients_alloc(n);
  for (size_t i = 0; i < n; i++) {
    g_clients[i].want = want;
    g_clients[i].expect = size;
    g_clients[i].want_eof = true;
  }
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

static void client_send(struct client *cl, size_t i) {
  size_t left = cl->tosend - cl->sent;
  ssize_t w =
      left ? send(cl->fd, cl->data + cl->sent, left < 65536 ? left : 65536, MSG_NOSIGNAL) : 0;
  if (w < 0 && errno != EAGAIN && errno != EINTR)
    fail_msg("client %zu: send after %zu bytes: %s", i, cl->sent, strerror(errno));
  if (w > 0) cl->sent += (size_t)w;
  if (cl->sent == cl->tosend && cl->half_close && !cl->shut) {
    if (shutdown(cl->fd, SHUT_WR) != 0) fail_msg("client %zu: shutdown: %s", i, strerror(errno));
    cl->shut = true;
  }
}

static void client_recv(struct client *cl, size_t i) {
  static unsigned char buf[65536];
  ssize_t r = recv(cl->fd, buf, sizeof buf, 0);
  if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (r < 0)
    fail_msg("client %zu: recv after %zu of %zu bytes: %s", i, cl->recvd, cl->expect,
             strerror(errno));
  if (r == 0) {
    if (!cl->want_eof || cl->recvd != cl->expect)
      fail_msg("client %zu: EOF after %zu of %zu bytes%s", i, cl->recvd, cl->expect,
               cl->want_eof ? "" : " (the server closed a connection we kept open)");
    cl->done = true;
    return;
  }
  if (cl->recvd + (size_t)r > cl->expect)
    fail_msg("client %zu: %zu bytes received, only %zu expected", i, cl->recvd + (size_t)r,
             cl->expect);
  for (ssize_t j = 0; j < r; j++)
    if (buf[j] != cl->want[cl->recvd + (size_t)j])
      fail_msg("client %zu: byte %zu is 0x%02x, want 0x%02x", i, cl->recvd + (size_t)j, buf[j],
               cl->want[cl->recvd + (size_t)j]);
  cl->recvd += (size_t)r;
  if (cl->recvd == cl->expect && !cl->want_eof) cl->done = true;
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
      p[i].events = !cl->connected || cl->sent < cl->tosend ? POLLOUT : 0;
      if (cl->connected) p[i].events |= POLLIN;
      p[i].revents = 0;
    }
    int64_t wait = deadline - now_ms();
    int r = wait < 0 ? 0 : poll(p, n, wait > 1000 ? 1000 : (int)wait);
    if (r < 0 && errno != EINTR) fail_msg("poll: %s", strerror(errno));
    if (wait < 0) {
      size_t i = 0;
      while (g_clients[i].done) i++;
      fail_msg("%zu of %zu clients unfinished after %d ms (client %zu: sent %zu of %zu, got "
               "%zu of %zu)",
               left, n, timeout_ms, i, g_clients[i].sent, g_clients[i].tosend, g_clients[i].recvd,
               g_clients[i].expect);
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
        client_send(cl, i); /* a reader shuts at once if it must */
      }
      if ((p[i].revents & POLLOUT) && cl->sent < cl->tosend) client_send(cl, i);
      if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) client_recv(cl, i);
      if (cl->done) {
        close_fd(&cl->fd);
        left--;
      }
    }
  }
}

/* @n clients of @min..@max bytes through 127.0.0.1:@port; returns the bytes
 * sent (each comes back once). */
static size_t echo_roundtrip(unsigned port, size_t n, size_t min, size_t max, int half) {
  static uint64_t seed; /* distinct data for every round, same every run */
  size_t total = 0;
  clients_make(n, min, max, ++seed, half);
  clients_run(port, 60000);
  for (size_t i = 0; i < n; i++) total += g_clients[i].tosend;
  clients_free();
  return total;
}

/* A blocking client socket connected to 127.0.0.1:@port, with a receive
 * buffer of @rcvbuf bytes when > 0. */
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

/* Send 6 MiB, half-close, read the echo slowly and reset once the server's
 * kernel has our FIN: the server's next send then fails with EPIPE or
 * ECONNRESET (see test_examples.c for the whole story). */
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
      break;
    if (recv(fd, buf, 16384, MSG_DONTWAIT) < 0 && errno != EAGAIN)
      fail_msg("recv: %s", strerror(errno));
    sleep_ms(1);
  }
  set_linger0(fd);
  close(fd);
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

/* Open fds of a process. */
static int fds_of(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (!d) fail_msg("%s: %s", path, strerror(errno));
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* Wait up to @ms for @pid to hold @n fds; returns the last count. */
static int fds_settle(pid_t pid, int n, int ms) {
  int64_t deadline = now_ms() + ms;
  int have;
  while ((have = fds_of(pid)) != n && now_ms() < deadline) sleep_ms(10);
  return have;
}

/* ------------------------------------------------------------------------ */
/* Raw sockets of the test itself (an upstream for the proxy)                */
/* ------------------------------------------------------------------------ */

static int listen_local(unsigned *port) {
  struct sockaddr_in sa = {.sin_family = AF_INET};
  socklen_t len = sizeof sa;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(listen(fd, 16), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  *port = ntohs(sa.sin_port);
  return fd;
}

static int accept_within(int lfd, int ms) {
  struct pollfd p = {.fd = lfd, .events = POLLIN};
  if (poll(&p, 1, ms) != 1) fail_msg("no connection within %d ms", ms);
  int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  if (fd < 0) fail_msg("accept: %s", strerror(errno));
  return fd;
}

/* Send @n bytes on @from while receiving them on @to (both may block the
 * other: loopback buffers are finite), into @got. */
static void pump(int from, const unsigned char *p, size_t n, int to, unsigned char *got) {
  size_t sent = 0, recvd = 0;
  int64_t deadline = now_ms() + 20000;
  while (recvd < n) {
    struct pollfd pf[2] = {{.fd = from, .events = sent < n ? POLLOUT : 0},
                           {.fd = to, .events = POLLIN}};
    if (now_ms() > deadline) fail_msg("pump: %zu of %zu bytes through in 20 s", recvd, n);
    if (poll(pf, 2, 1000) < 0 && errno != EINTR) fail_msg("poll: %s", strerror(errno));
    if (pf[0].revents & POLLOUT) {
      ssize_t w = send(from, p + sent, n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0 && errno != EAGAIN) fail_msg("pump: send: %s", strerror(errno));
      if (w > 0) sent += (size_t)w;
    }
    if (pf[1].revents) {
      ssize_t r = recv(to, got + recvd, n - recvd, MSG_DONTWAIT);
      if (r == 0) fail_msg("pump: EOF after %zu of %zu bytes", recvd, n);
      if (r < 0 && errno != EAGAIN) fail_msg("pump: recv: %s", strerror(errno));
      if (r > 0) recvd += (size_t)r;
    }
  }
}

/* @fd reads EOF within @ms, with no byte before it. */
static void expect_eof(int fd, int ms, const char *who) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  char b;
  if (poll(&p, 1, ms) != 1) fail_msg("%s: no EOF within %d ms", who, ms);
  ssize_t r = recv(fd, &b, 1, MSG_DONTWAIT);
  if (r != 0)
    fail_msg("%s: want EOF, recv returned %zd (%s)", who, r, r < 0 ? strerror(errno) : "a byte");
}

/* @n pseudo-random bytes. */
static unsigned char *random_bytes(size_t n, uint64_t seed) {
  unsigned char *p = malloc(n ? n : 1);
  assert_non_null(p);
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(xorshift(&seed) >> 24);
  return p;
}

/* XOR @n bytes with the repeating key from position *@pos (which advances);
 * @key NULL leaves them as they are. */
static void xor_key(unsigned char *p, size_t n, const char *key, size_t *pos) {
  size_t len = key ? strlen(key) : 0;
  for (size_t i = 0; len && i < n; i++, *pos = (*pos + 1) % len) p[i] ^= (unsigned char)key[*pos];
}

/* ------------------------------------------------------------------------ */
/* echo_proactor                                                             */
/* ------------------------------------------------------------------------ */

static void test_echo_one(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  echo_roundtrip(port, 1, 1, 1, 0);               /* one byte */
  echo_roundtrip(port, 1, 64 * 1024, 2 * MIB, 0); /* random size, > the 64 KiB high water */
  stop_server(srv, SIGTERM);
}

static void test_echo_thousand(void **state) {
  (void)state;
  struct rlimit rl;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 1100) {
    printf("[  SKIPPED ] 1,000 connections need 1,100 fds; RLIMIT_NOFILE is %llu\n",
           (unsigned long long)rl.rlim_cur);
    skip();
  }
  unsigned port;
  struct child *srv = start_echo(&port);
  echo_roundtrip(port, 1000, 1, 32 * 1024, 2);
  stop_server(srv, SIGTERM);
}

/* The client shuts its write side: it gets every byte back, then EOF. */
static void test_echo_half_close(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  echo_roundtrip(port, 1, 5, 5, 1);
  echo_roundtrip(port, 3, 200 * 1024, 400 * 1024, 1); /* more than the server buffers */
  echo_roundtrip(port, 1, 0, 0, 1);                   /* nothing sent: EOF at once */
  stop_server(srv, SIGTERM);
}

/* SIGINT with connections open and data in flight: exit 0 (and, under
 * ASan, no leak). */
static void test_echo_sigint(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  clients_pending(port, 3, 7);
  stop_server(srv, SIGINT);
  clients_free();
}

/* A client that sends 50 MB and reads nothing: once the kernel buffers and
 * the server's 64 KiB queue are full, the server stops reading, so its
 * memory stays bounded and our sends block. */
static void test_echo_bounded(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  echo_roundtrip(port, 1, 100 * 1024, 100 * 1024, 0); /* warm up the read pool */
  long before = rss_kib(srv->pid);
  int fd = connect_to(port, 4096);
  static char junk[65536];
  size_t size = 50 * MIB, sent = 0;
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
  if (sent >= size) fail_msg("all %zu bytes sent to a client that reads nothing", sent);
  if (grown > 16 * 1024)
    fail_msg("echo_proactor grew by %ld KiB while a client sent %zu bytes and read none", grown,
             sent);
  set_linger0(fd);
  close(fd);
  assert_alive(srv);
  echo_roundtrip(port, 2, 1000, 100 * 1024, 2); /* still serving */
  stop_server(srv, SIGTERM);
}

/* Resets (SO_LINGER 0) at every stage do not kill the server. */
static void test_echo_reset(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  client_abandon(port, 0, true);            /* reset right after connecting */
  client_abandon(port, 16, true);           /* with a little data */
  client_abandon(port, 1024 * 1024, true);  /* with the server stalled */
  client_abandon(port, 1024 * 1024, false); /* unread data: the kernel resets */
  for (int i = 0; i < 3; i++) {
    client_reset_in_close_wait(port);
    sleep_ms(50);
    assert_alive(srv);
  }
  sleep_ms(200);
  assert_alive(srv);
  echo_roundtrip(port, 4, 1000, 100 * 1024, 2); /* still serving */
  stop_server(srv, SIGTERM);
}

/* ------------------------------------------------------------------------ */
/* proxy                                                                     */
/* ------------------------------------------------------------------------ */

/* 8 MB through proxy → echo_proactor and back, byte-exact; the proxy counts
 * every byte both ways. */
static void test_proxy_exact(void **state) {
  (void)state;
  unsigned eport, pport;
  struct child *echo = start_echo(&eport);
  struct child *px = start_proxy(eport, NULL, &pport);
  size_t n = echo_roundtrip(pport, 1, 1, 1, 0);
  n += echo_roundtrip(pport, 1, 8 * MIB, 8 * MIB, 0);
  n += echo_roundtrip(pport, 1, 8 * MIB, 8 * MIB, 1); /* and with a half-close */
  stop_proxy(px, SIGTERM, 3, (long long)(2 * n));
  stop_server(echo, SIGTERM);
}

static void test_proxy_many(void **state) {
  (void)state;
  unsigned eport, pport;
  struct child *echo = start_echo(&eport);
  struct child *px = start_proxy(eport, NULL, &pport);
  size_t n = echo_roundtrip(pport, 100, 1, 256 * 1024, 2);
  stop_proxy(px, SIGTERM, 100, (long long)(2 * n));
  stop_server(echo, SIGTERM);
}

/*
 * Through a proxy to an upstream the test plays itself: the bytes on the
 * upstream's wire are the client's (XORed with @key when given) and back,
 * and half-close travels both ways: the upstream shuts first, the client
 * reads everything then EOF and can still send; then the client shuts and
 * the upstream reads EOF.
 */
static void upstream_dialog(const char *key) {
  unsigned uport, pport;
  int lfd = listen_local(&uport);
  struct child *px = start_proxy(uport, key, &pport);
  int cfd = connect_to(pport, 0);
  int ufd = accept_within(lfd, 5000);
  close(lfd);
  size_t na = 300 * 1024 + 1, nb = 200 * 1024 + 3, nc = 10 * 1024 + 5;
  size_t pos_up = 0, pos_down = 0; /* key positions of each direction */
  unsigned char *a = random_bytes(na, 1), *b = random_bytes(nb, 2), *c = random_bytes(nc, 3);
  unsigned char *got = malloc(na), *want = malloc(na);
  assert_non_null(got);
  assert_non_null(want);

  pump(cfd, a, na, ufd, got); /* client → upstream */
  memcpy(want, a, na);
  xor_key(want, na, key, &pos_up);
  if (memcmp(got, want, na) != 0)
    fail_msg("the upstream got other bytes than sent%s", key ? " XORed" : "");
  pump(ufd, b, nb, cfd, got); /* upstream → client */
  memcpy(want, b, nb);
  xor_key(want, nb, key, &pos_down);
  if (memcmp(got, want, nb) != 0) fail_msg("the client got other bytes than the upstream sent");

  assert_int_equal(shutdown(ufd, SHUT_WR), 0); /* the upstream is done talking */
  expect_eof(cfd, 5000, "client after the upstream's shutdown");
  pump(cfd, c, nc, ufd, got); /* the client may still send */
  memcpy(want, c, nc);
  xor_key(want, nc, key, &pos_up);
  if (memcmp(got, want, nc) != 0) fail_msg("bytes after the half-close differ");
  assert_int_equal(shutdown(cfd, SHUT_WR), 0);
  expect_eof(ufd, 5000, "upstream after the client's shutdown");
  close(cfd);
  close(ufd);
  free(a);
  free(b);
  free(c);
  free(got);
  free(want);
  stop_proxy(px, SIGTERM, 1, (long long)(na + nb + nc));
}

static void test_proxy_half_close(void **state) {
  (void)state;
  upstream_dialog(NULL);
  /* And the other order, through echo: the client shuts first. */
  unsigned eport, pport;
  struct child *echo = start_echo(&eport);
  struct child *px = start_proxy(eport, NULL, &pport);
  echo_roundtrip(pport, 1, 5, 5, 1);
  echo_roundtrip(pport, 3, 200 * 1024, 400 * 1024, 1);
  echo_roundtrip(pport, 1, 0, 0, 1);
  stop_proxy(px, SIGTERM, 5, -1);
  stop_server(echo, SIGTERM);
}

/* --xor: the upstream's wire carries XORed bytes (both ways, the key
 * position running on across reads), half-close included. */
static void test_proxy_xor_wire(void **state) {
  (void)state;
  upstream_dialog(XOR_KEY);
}

/* client → proxy --xor → echo, and client → proxy --xor → proxy --xor →
 * echo: the XOR cancels out, the clients read what they sent. */
static void test_proxy_xor_echo(void **state) {
  (void)state;
  unsigned eport, p1, p2;
  struct child *echo = start_echo(&eport);
  struct child *inner = start_proxy(eport, XOR_KEY, &p1);
  size_t n = echo_roundtrip(p1, 10, 1, 128 * 1024, 2);
  struct child *outer = start_proxy(p1, XOR_KEY, &p2);
  size_t m = echo_roundtrip(p2, 1, 2 * MIB, 2 * MIB, 1);
  m += echo_roundtrip(p2, 20, 1, 128 * 1024, 2);
  stop_proxy(outer, SIGTERM, 21, (long long)(2 * m));
  stop_proxy(inner, SIGTERM, 31, (long long)(2 * (n + m)));
  stop_server(echo, SIGTERM);
}

/* An upstream that refuses: the client is closed, the proxy goes on. */
static void test_proxy_refused(void **state) {
  (void)state;
  unsigned dead, pport;
  close(listen_local(&dead)); /* a port nobody listens on now */
  struct child *px = start_proxy(dead, NULL, &pport);
  for (int i = 0; i < 3; i++) {
    int fd = connect_to(pport, 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char b;
    if (poll(&p, 1, 5000) != 1) fail_msg("client of a refused upstream not closed in 5 s");
    ssize_t r = recv(fd, &b, 1, 0);
    if (r > 0) fail_msg("a byte from a refused upstream");
    close(fd);
  }
  assert_alive(px);
  stop_proxy(px, SIGTERM, 3, 0);
}

/* SIGINT with data in flight, splice and --xor: exit 0, nothing leaked. */
static void test_proxy_sigint(void **state) {
  (void)state;
  unsigned eport, p1, p2;
  struct child *echo = start_echo(&eport);
  struct child *plain = start_proxy(eport, NULL, &p1);
  struct child *xored = start_proxy(eport, XOR_KEY, &p2);
  clients_pending(p1, 3, 5);
  stop_proxy(plain, SIGINT, 3, -1);
  clients_pending(p2, 3, 6);
  stop_proxy(xored, SIGINT, 3, -1);
  clients_free();
  stop_server(echo, SIGINT);
}

/* ------------------------------------------------------------------------ */
/* sendfile_server                                                           */
/* ------------------------------------------------------------------------ */

/* A temporary file of @size pseudo-random bytes (kept in g_file too);
 * returns its path (static). */
static const char *make_file(size_t size) {
  static char path[128];
  snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/axon-test-XXXXXX");
  assert_non_null(mkdtemp(g_tmpdir));
  snprintf(path, sizeof path, "%s/f", g_tmpdir);
  g_file = random_bytes(size, 42);
  g_file_size = size;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, g_file, size), (ssize_t)size);
  assert_int_equal(close(fd), 0);
  return path;
}

static struct child *start_sendfile(const char *path, const char *timeout_ms, unsigned *port) {
  char *argv[] = {EXAMPLE("sendfile_server"),
                  "--port",
                  "0",
                  "--file",
                  (char *)path,
                  "--backend",
                  (char *)backend_name(),
                  timeout_ms ? "--write-timeout" : NULL,
                  (char *)timeout_ms,
                  NULL};
  return start_server(argv, port);
}

static void test_sendfile_many(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_sendfile(make_file(5 * MIB), NULL, &port);
  clients_make_readers(20, g_file, g_file_size);
  clients_run(port, 60000);
  clients_free();
  stop_server(srv, SIGTERM);
}

/* A client reading 8 KiB at a time with pauses (a small window): the
 * server sends in many partial steps and the file still arrives exactly. */
static void test_sendfile_slow(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_sendfile(make_file(5 * MIB), NULL, &port);
  int fd = connect_to(port, 16 * 1024);
  static unsigned char buf[8192];
  size_t got = 0;
  int64_t deadline = now_ms() + 30000;
  for (;;) {
    if (now_ms() > deadline) fail_msg("slow client: %zu of %zu bytes in 30 s", got, g_file_size);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1) fail_msg("slow client: nothing for 5 s after %zu bytes", got);
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r < 0) fail_msg("slow client: recv after %zu bytes: %s", got, strerror(errno));
    if (r == 0) break;
    if (got + (size_t)r > g_file_size || memcmp(buf, g_file + got, (size_t)r) != 0)
      fail_msg("slow client: bytes %zu..%zu differ from the file", got, got + (size_t)r);
    got += (size_t)r;
    sleep_ms(1);
  }
  close(fd);
  if (got != g_file_size) fail_msg("slow client: EOF after %zu of %zu bytes", got, g_file_size);
  stop_server(srv, SIGTERM);
}

/* --write-timeout: a client that reads nothing is cut (the server's fd for
 * it goes), and the server goes on serving. */
static void test_sendfile_timeout(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_sendfile(make_file(16 * MIB), "300", &port);
  int idle = fds_of(srv->pid);
  int fd = connect_to(port, 4096);
  if (fds_settle(srv->pid, idle + 1, 2000) != idle + 1)
    fail_msg("server did not take the connection");
  int64_t t0 = now_ms();
  int have = fds_settle(srv->pid, idle, 5000);
  if (have != idle)
    fail_msg("a client reading nothing still held after 5 s (%d fds, %d idle)", have, idle);
  if (now_ms() - t0 < 200)
    fail_msg("cut after %lld ms, before the 300 ms timeout", (long long)(now_ms() - t0));
  /* What was sent before the cut is the file's start; the rest never comes. */
  static unsigned char buf[65536];
  size_t got = 0;
  for (ssize_t r; (r = recv(fd, buf, sizeof buf, 0)) > 0; got += (size_t)r)
    if (got + (size_t)r > g_file_size || memcmp(buf, g_file + got, (size_t)r) != 0)
      fail_msg("cut client: bytes %zu..%zu differ from the file", got, got + (size_t)r);
  if (got >= g_file_size) fail_msg("the cut client got the whole file");
  close(fd);
  clients_make_readers(2, g_file, g_file_size);
  clients_run(port, 30000);
  clients_free();
  stop_server(srv, SIGTERM);
}

static void test_sendfile_empty(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_sendfile(make_file(0), NULL, &port);
  clients_make_readers(3, g_file, 0);
  clients_run(port, 10000);
  clients_free();
  stop_server(srv, SIGTERM);
}

int main(void) {
  /* Writes to a closed socket must fail with EPIPE, not kill us. */
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, watchdog_fire);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 2048) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 2048 ? 2048 : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) perror("setrlimit(RLIMIT_NOFILE)");
  }
  const struct CMUnitTest per_backend[] = {
      cmocka_unit_test_setup_teardown(test_echo_one, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_thousand, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_half_close, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_sigint, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_bounded, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_reset, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_exact, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_many, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_half_close, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_xor_wire, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_xor_echo, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_refused, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_sigint, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_sendfile_many, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_sendfile_slow, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_sendfile_timeout, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_sendfile_empty, setup, cleanup),
  };
  return AX_RUN_ON_BACKENDS(per_backend) ? 1 : 0;
}
