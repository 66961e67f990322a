/*
 * Child-process and TCP client helpers shared by the test files that run
 * the built examples as children (test_examples.c, test_net_examples.c,
 * test_acceptor.c); include after testutil.h.
 *
 * Children: spawn() starts a program with a stdout pipe and registers it
 * in children[], so that a teardown can kill and reap whatever a failed
 * test left behind (children_reap()); every wait has a deadline, after
 * which the child is killed. start_server() reads the port from the
 * "listening on 127.0.0.1:PORT" line every server example prints.
 *
 * Clients: g_clients, run all at once against 127.0.0.1 with poll() by
 * clients_run(), each checking every byte it gets back; plus blocking
 * clients (connect_to) and the abusive ones (abandon, reset in
 * CLOSE_WAIT, pending data). Then /proc readings of a child (RSS, fds).
 * Only 127.0.0.1 is used.
 */
#ifndef AXON_CHILDUTIL_H
#define AXON_CHILDUTIL_H

#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

extern char **environ;

/* ---- time --------------------------------------------------------------- */

/* mono_ms() as a signed value, for deadline arithmetic. */
static inline int64_t now_ms(void) { return (int64_t)mono_ms(); }

/* Sleep @ms milliseconds, resuming after signals. */
static inline void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* The backend under test, by the name the examples' --backend takes. */
static inline const char *backend_name(void) {
  return ax_test_backend_name(ax_test_backend);
}

/* ---- children ----------------------------------------------------------- */

struct child {
  bool used; /* slot taken; the fields below are valid */
  pid_t pid; /* 0 once reaped */
  int in;    /* write end of the child's stdin pipe, or -1 */
  int out;   /* read end of the child's stdout pipe, or -1 */
  char *acc; /* stdout read so far and not consumed: acc[0, len) */
  size_t len, cap;
  bool eof;
  char err[64];  /* the file the child's stderr goes to, or "" */
  char name[32]; /* the program's base name, for messages */
};

#define MAX_CHILDREN 4
static struct child children[MAX_CHILDREN] __attribute__((unused));

/* Close *@fd if open and set it to -1. */
static inline void close_fd(int *fd) {
  if (*fd >= 0)
    close(*fd);
  *fd = -1;
}

/* Close a child's pipes, remove its stderr file and free its slot (the
 * process itself must be reaped already, or be reaped by pid). */
static inline void child_release(struct child *c) {
  if (!c->used)
    return;
  close_fd(&c->in);
  close_fd(&c->out);
  if (c->err[0])
    unlink(c->err);
  free(c->acc);
  memset(c, 0, sizeof *c);
}

/* A wait status in words, into @buf. */
static inline const char *status_str(int st, char *buf, size_t len) {
  if (WIFEXITED(st))
    snprintf(buf, len, "exit status %d", WEXITSTATUS(st));
  else if (WIFSIGNALED(st))
    snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
  else
    snprintf(buf, len, "wait status 0x%x", st);
  return buf;
}

/* In a forked child before exec: no signal blocked and SIGPIPE at its
 * default (deadly) action, whatever the test process does; the examples
 * must cope with both. */
static inline void child_reset_signals(void) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  signal(SIGPIPE, SIG_DFL);
}

/*
 * Start @argv[0] (argv ends with NULL) without AXON_BACKEND in its
 * environment, with a stdout pipe and stdin from a pipe (@stdin_path NULL)
 * or from @stdin_path; @env_add ("NAME=value") added to the environment if
 * not NULL; RLIMIT_NOFILE set to @nofile if > 0; stderr to a temporary
 * file (c->err) if @err_file, else inherited.
 */
static inline struct child *spawn(char *const argv[], const char *stdin_path,
                                  const char *env_add, rlim_t nofile, bool err_file) {
  struct child *c = NULL;
  for (int i = 0; i < MAX_CHILDREN && !c; i++)
    if (!children[i].used)
      c = &children[i];
  assert_non_null(c);
  if (access(argv[0], X_OK) != 0)
    fail_msg("%s: %s (build the examples first)", argv[0], strerror(errno));

  size_t n = 0;
  while (environ[n])
    n++;
  char **envp = calloc(n + 2, sizeof *envp);
  assert_non_null(envp);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "AXON_BACKEND=", 13) != 0)
      envp[k++] = environ[i];
  if (env_add)
    envp[k++] = (char *)env_add;

  int in[2] = {-1, -1}, out[2] = {-1, -1}, efd = -1;
  c->err[0] = 0;
  if (err_file) {
    snprintf(c->err, sizeof c->err, "/tmp/axon-child-err-XXXXXX");
    efd = mkostemp(c->err, O_CLOEXEC);
  }
  if (stdin_path)
    in[0] = open(stdin_path, O_RDONLY | O_CLOEXEC);
  else if (pipe2(in, O_CLOEXEC) != 0)
    in[0] = -1;
  if ((err_file && efd < 0) || in[0] < 0 || pipe2(out, O_CLOEXEC) != 0) {
    int err = errno;
    free(envp);
    close_fd(&in[0]);
    close_fd(&in[1]);
    close_fd(&efd);
    if (c->err[0])
      unlink(c->err);
    c->err[0] = 0;
    fail_msg("pipes for child: %s", strerror(err));
  }

  pid_t pid = fork();
  if (pid == 0) {
    child_reset_signals();
    struct rlimit rl = {nofile, nofile};
    if (nofile > 0 && setrlimit(RLIMIT_NOFILE, &rl) != 0)
      _exit(125);
    if (dup2(in[0], 0) < 0 || dup2(out[1], 1) < 0 || (efd >= 0 && dup2(efd, 2) < 0))
      _exit(126);
    execve(argv[0], argv, envp);
    _exit(127);
  }
  int err = errno;
  free(envp);
  close(in[0]);
  close(out[1]);
  close_fd(&efd);
  if (pid < 0) {
    close_fd(&in[1]);
    close(out[0]);
    if (c->err[0])
      unlink(c->err);
    c->err[0] = 0;
    fail_msg("fork: %s", strerror(err));
  }
  const char *base = strrchr(argv[0], '/');
  snprintf(c->name, sizeof c->name, "%s", base ? base + 1 : argv[0]);
  c->used = true;
  c->pid = pid;
  c->in = in[1];
  c->out = out[0];
  return c;
}

/* Wait up to @timeout_ms for @c to exit and return its wait status; on
 * time-out kill it, release it and fail. */
static inline int child_wait(struct child *c, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  int st = 0;
  for (;;) {
    pid_t r = waitpid(c->pid, &st, WNOHANG);
    if (r == c->pid)
      break;
    if (r < 0 && errno != EINTR)
      fail_msg("waitpid: %s", strerror(errno));
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
static inline void child_expect_exit0(struct child *c, int timeout_ms) {
  char buf[96];
  int st = child_wait(c, timeout_ms);
  child_release(c);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("child ended with %s, want exit status 0", status_str(st, buf, sizeof buf));
}

/* Fail (reaping it) if @c has exited. */
static inline void assert_alive(struct child *c) {
  int st;
  char buf[96];
  pid_t r = waitpid(c->pid, &st, WNOHANG);
  if (r == c->pid) {
    c->pid = 0;
    fail_msg("%s died: %s", c->name, status_str(st, buf, sizeof buf));
  }
}

/* SIGKILL every registered child not yet reaped; async-signal-safe, for
 * the alarm handlers. */
static inline void children_kill(void) {
  for (int i = 0; i < MAX_CHILDREN; i++)
    if (children[i].used && children[i].pid > 0)
      kill(children[i].pid, SIGKILL);
}

/* For the teardowns: kill and reap every child still registered (by pid)
 * and release every slot. */
static inline void children_reap(void) {
  for (int i = 0; i < MAX_CHILDREN; i++) {
    if (children[i].used && children[i].pid > 0) {
      kill(children[i].pid, SIGKILL);
      waitpid(children[i].pid, NULL, 0);
    }
    child_release(&children[i]);
  }
}

/* Read what the child printed, waiting at most until @deadline; false on
 * time-out. Stops at EOF (c->eof). */
static inline bool child_read(struct child *c, int64_t deadline) {
  if (c->cap - c->len < 4096) {
    c->cap = c->cap ? c->cap * 2 : 65536;
    c->acc = realloc(c->acc, c->cap);
    assert_non_null(c->acc);
  }
  int64_t left = deadline - now_ms();
  if (left < 0)
    return false;
  struct pollfd p = {.fd = c->out, .events = POLLIN};
  int r = poll(&p, 1, (int)left);
  if (r < 0 && errno == EINTR)
    return true;
  if (r < 0)
    fail_msg("poll: %s", strerror(errno));
  if (r == 0)
    return false;
  ssize_t n = read(c->out, c->acc + c->len, c->cap - c->len);
  if (n < 0 && errno != EINTR)
    fail_msg("read child stdout: %s", strerror(errno));
  if (n == 0)
    c->eof = true;
  if (n > 0)
    c->len += (size_t)n;
  return true;
}

/* The next line the child prints (without '\n'), into @buf; fails on EOF or
 * time-out. */
static inline void child_line(struct child *c, char *buf, size_t size, int timeout_ms) {
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
    if (c->eof)
      fail_msg("child closed stdout before a full line (%zu bytes)", c->len);
    if (!child_read(c, deadline))
      fail_msg("no line from child within %d ms", timeout_ms);
  }
}

/* Everything the child prints until it closes stdout, into c->acc. */
static inline void child_read_all(struct child *c, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  while (!c->eof)
    if (!child_read(c, deadline))
      fail_msg("child stdout still open after %d ms", timeout_ms);
}

/* Start a server example (@argv ends with NULL; stdin /dev/null,
 * RLIMIT_NOFILE @nofile if > 0, stderr to a file if @err_file) and read
 * its port from the "listening on 127.0.0.1:PORT" line. */
static inline struct child *start_server(char **argv, rlim_t nofile, bool err_file,
                                         unsigned *port) {
  struct child *c = spawn(argv, "/dev/null", NULL, nofile, err_file);
  char line[128];
  child_line(c, line, sizeof line, 10000);
  int used = 0;
  if (sscanf(line, "listening on 127.0.0.1:%u%n", port, &used) != 1 || line[used] != 0 ||
      *port == 0)
    fail_msg("unexpected first line from %s: \"%s\"", argv[0], line);
  return c;
}

/* @signo must end the server with status 0 within 10 s. */
static inline void stop_server(struct child *c, int signo) {
  assert_int_equal(kill(c->pid, signo), 0);
  child_expect_exit0(c, 10000);
}

/* ---- clients run together with poll() ----------------------------------- */

struct client {
  int fd;
  unsigned char *data;       /* what we send (owned), or NULL */
  const unsigned char *want; /* what must come back */
  size_t tosend, sent, expect, recvd;
  bool connected, half_close, want_eof, shut, done;
};

static struct client *g_clients __attribute__((unused));
static struct pollfd *g_pollfds __attribute__((unused));
static size_t g_nclients __attribute__((unused));

/* Close and free every client. */
static inline void clients_free(void) {
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

/* @n zeroed clients (fd -1), replacing any others. */
static inline void clients_alloc(size_t n) {
  clients_free();
  g_clients = calloc(n, sizeof *g_clients);
  g_pollfds = calloc(n, sizeof *g_pollfds);
  assert_non_null(g_clients);
  assert_non_null(g_pollfds);
  for (size_t i = 0; i < n; i++)
    g_clients[i].fd = -1;
  g_nclients = n;
}

/* @n echo clients with distinct pseudo-random data of @min..@max bytes.
 * half: 0 none, 1 every client, 2 every other client half-closes after
 * sending (and then expects the full echo followed by EOF). */
static inline void clients_make(size_t n, size_t min, size_t max, uint64_t seed, int half) {
  clients_alloc(n);
  for (size_t i = 0; i < n; i++) {
    struct client *cl = &g_clients[i];
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + i + 1;
    cl->tosend = cl->expect = min + (max > min ? xorshift(&s) % (max - min + 1) : 0);
    cl->data = malloc(cl->tosend ? cl->tosend : 1);
    assert_non_null(cl->data);
    for (size_t j = 0; j < cl->tosend; j++)
      cl->data[j] = (unsigned char)(xorshift(&s) >> 24);
    cl->want = cl->data;
    cl->half_close = cl->want_eof = half == 1 || (half == 2 && i % 2 == 1);
  }
}

/* A non-blocking connect to 127.0.0.1:@port. */
static inline int connect_nb(unsigned port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    fail_msg("socket: %s", strerror(errno));
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
    int err = errno;
    close(fd);
    fail_msg("connect 127.0.0.1:%u: %s", port, strerror(err));
  }
  return fd;
}

/* Send what client @i may send now; half-close once all is sent if it
 * must. */
static inline void client_send(struct client *cl, size_t i) {
  size_t left = cl->tosend - cl->sent;
  ssize_t w =
      left ? send(cl->fd, cl->data + cl->sent, left < 65536 ? left : 65536, MSG_NOSIGNAL)
           : 0;
  if (w < 0 && errno != EAGAIN && errno != EINTR)
    fail_msg("client %zu: send after %zu bytes: %s", i, cl->sent, strerror(errno));
  if (w > 0)
    cl->sent += (size_t)w;
  if (cl->sent == cl->tosend && cl->half_close && !cl->shut) {
    if (shutdown(cl->fd, SHUT_WR) != 0)
      fail_msg("client %zu: shutdown: %s", i, strerror(errno));
    cl->shut = true;
  }
}

/* Receive what client @i has pending and check it byte by byte against
 * what it wants; an EOF is only right after all of it, when wanted. */
static inline void client_recv(struct client *cl, size_t i) {
  static unsigned char buf[65536];
  ssize_t r = recv(cl->fd, buf, sizeof buf, 0);
  if (r < 0 && (errno == EAGAIN || errno == EINTR))
    return;
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
    fail_msg("client %zu: %zu bytes received, only %zu expected", i,
             cl->recvd + (size_t)r, cl->expect);
  for (ssize_t j = 0; j < r; j++)
    if (buf[j] != cl->want[cl->recvd + (size_t)j])
      fail_msg("client %zu: byte %zu is 0x%02x, want 0x%02x", i, cl->recvd + (size_t)j,
               buf[j], cl->want[cl->recvd + (size_t)j]);
  cl->recvd += (size_t)r;
  /* A client that keeps its side open is done with all it wants; a
   * half-closed one waits for the server's EOF too. */
  if (cl->recvd == cl->expect && !cl->want_eof)
    cl->done = true;
}

/* Run every client against 127.0.0.1:@port at once until all are done. */
static inline void clients_run(unsigned port, int timeout_ms) {
  size_t n = g_nclients, left = n;
  struct pollfd *p = g_pollfds;
  for (size_t i = 0; i < n; i++)
    g_clients[i].fd = connect_nb(port);
  int64_t deadline = now_ms() + timeout_ms;
  while (left > 0) {
    for (size_t i = 0; i < n; i++) {
      struct client *cl = &g_clients[i];
      p[i].fd = cl->done ? -1 : cl->fd;
      p[i].events = !cl->connected || cl->sent < cl->tosend ? POLLOUT : 0;
      if (cl->connected)
        p[i].events |= POLLIN;
      p[i].revents = 0;
    }
    int64_t wait = deadline - now_ms();
    int r = wait < 0 ? 0 : poll(p, n, wait > 1000 ? 1000 : (int)wait);
    if (r < 0 && errno != EINTR)
      fail_msg("poll: %s", strerror(errno));
    if (wait < 0) {
      size_t i = 0;
      while (g_clients[i].done)
        i++;
      fail_msg(
          "%zu of %zu clients unfinished after %d ms (client %zu: sent %zu of %zu, got "
          "%zu of %zu)",
          left, n, timeout_ms, i, g_clients[i].sent, g_clients[i].tosend,
          g_clients[i].recvd, g_clients[i].expect);
    }
    for (size_t i = 0; r > 0 && i < n; i++) {
      struct client *cl = &g_clients[i];
      if (!p[i].revents)
        continue;
      if (!cl->connected) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(cl->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
          err = errno;
        if (err)
          fail_msg("client %zu: connect: %s", i, strerror(err));
        cl->connected = true;
        client_send(cl, i); /* a reader shuts at once if it must */
      }
      if ((p[i].revents & POLLOUT) && cl->sent < cl->tosend)
        client_send(cl, i);
      if (p[i].revents & (POLLIN | POLLHUP | POLLERR))
        client_recv(cl, i);
      if (cl->done) {
        close_fd(&cl->fd);
        left--;
      }
    }
  }
}

/* @n clients of @min..@max bytes through 127.0.0.1:@port (60 s); returns
 * the bytes sent (each comes back once). */
static inline size_t echo_roundtrip(unsigned port, size_t n, size_t min, size_t max,
                                    int half) {
  static uint64_t seed; /* distinct data for every round, same every run */
  size_t total = 0;
  clients_make(n, min, max, ++seed, half);
  clients_run(port, 60000);
  for (size_t i = 0; i < n; i++)
    total += g_clients[i].tosend;
  clients_free();
  return total;
}

/* @n clients connect and send one chunk of 200 KiB they never read back,
 * so the server holds connections with data pending; waits 200 ms. */
static inline void clients_pending(unsigned port, size_t n, uint64_t seed) {
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

/* ---- blocking clients --------------------------------------------------- */

/* A blocking client socket connected to 127.0.0.1:@port, with a receive
 * buffer of @rcvbuf bytes when > 0. */
static inline int connect_to(unsigned port, int rcvbuf) {
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

/* Make close(@fd) send RST, not FIN. */
static inline void set_linger0(int fd) {
  struct linger lg = {1, 0};
  assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
}

/* Send up to @size bytes within 2 s without reading any echo, then close
 * (@reset: with RST). */
static inline void client_abandon(unsigned port, size_t size, bool reset) {
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
  if (reset)
    set_linger0(fd);
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
static inline void client_reset_in_close_wait(unsigned port) {
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

/* Send junk on @fd without blocking until @size bytes went, 5 s passed or
 * 500 ms brought no progress (the peer reads nothing and the kernel's
 * buffers are full); returns the bytes sent. */
static inline size_t send_until_stalled(int fd, size_t size) {
  static char junk[65536];
  size_t sent = 0;
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
  return sent;
}

/* ---- test scaffolding --------------------------------------------------- */

/* Skip the test, saying "@what; RLIMIT_NOFILE is N", unless this process
 * may open @need fds. */
static inline void skip_unless_nofile(rlim_t need, const char *what) {
  struct rlimit rl;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
    printf("[  SKIPPED ] %s; RLIMIT_NOFILE is %llu\n", what, (unsigned long long)rl.rlim_cur);
    skip();
  }
}

/* The end of an alarm handler: kill every child (async-signal-safe), say
 * @msg on stderr and end the process with status 3, which fails the run. */
static inline _Noreturn void watchdog_exit(const char *msg, size_t len) {
  children_kill();
  if (write(2, msg, len) < 0)
    _exit(4);
  _exit(3);
}

/* ---- /proc -------------------------------------------------------------- */

/* The resident set size of a process, in KiB. */
static inline long rss_kib(pid_t pid) {
  char path[64], line[256];
  long kib = -1;
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    fail_msg("%s: %s", path, strerror(errno));
  while (kib < 0 && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kib) != 1)
      kib = -1;
  fclose(f);
  if (kib < 0)
    fail_msg("no VmRSS in %s", path);
  return kib;
}

/* Open fds of a process. */
static inline int fds_of(pid_t pid) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(path);
  if (!d)
    fail_msg("%s: %s", path, strerror(errno));
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* Wait up to @ms for @pid to hold @n fds; returns the last count. */
static inline int fds_settle(pid_t pid, int n, int ms) {
  int64_t deadline = now_ms() + ms;
  int have;
  while ((have = fds_of(pid)) != n && now_ms() < deadline)
    sleep_ms(10);
  return have;
}

#endif /* AXON_CHILDUTIL_H */
