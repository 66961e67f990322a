/*
 * echo_reactor — a TCP echo server on the reactor alone.
 *
 *   echo_reactor [--port P] [--backend epoll|poll|select|io_uring]
 *
 * With readiness you do the I/O yourself: read when readable, write what you
 * can, keep the rest and wait for writability. The parts a real server needs
 * and a toy forgets are here: back-pressure (a client that sends and never
 * reads must not make us buffer without limit), half-close, resets, accept
 * failing with EMFILE, and a clean exit on SIGINT/SIGTERM.
 */
#include <axon/axon.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HIGH_WATER (64 * 1024) /* stop reading above this many unsent bytes */
#define CHUNK (16 * 1024)      /* one read; pending <= HIGH_WATER + CHUNK */
#define ACCEPT_RETRY_MS 100    /* back-off after EMFILE/ENFILE/ENOBUFS */

struct conn {
  struct conn *prev, *next; /* all connections, to free them at exit */
  ax_source_t *io;
  int fd;
  unsigned interest; /* what io is started with */
  bool eof;          /* the peer half-closed: flush, then close */
  char *buf;         /* unsent bytes are buf[off, len) */
  size_t off, len, cap;
};

static struct conn *conns;

static void conn_close(struct conn *c) {
  ax_source_free(c->io);
  close(c->fd);
  if (c->prev) c->prev->next = c->next;
  else conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c->buf);
  free(c);
}

/* Send what is pending; false if the connection is dead (reset, EPIPE). */
static bool conn_flush(struct conn *c) {
  while (c->off < c->len) {
    /* MSG_NOSIGNAL: a peer that went away must cost an EPIPE, not SIGPIPE. */
    ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
    if (n < 0)
      return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    c->off += (size_t)n;
  }
  c->off = c->len = 0;
  return true;
}

static bool conn_keep(struct conn *c, const char *p, size_t n) {
  if (n == 0) return true;
  if (c->off > 0) { /* compact first: the buffer is reused, not grown */
    memmove(c->buf, c->buf + c->off, c->len - c->off);
    c->len -= c->off;
    c->off = 0;
  }
  if (c->len + n > c->cap) {
    size_t cap = c->len + n < HIGH_WATER + CHUNK ? HIGH_WATER + CHUNK : c->len + n;
    char *b = realloc(c->buf, cap);
    if (!b) return false;
    c->buf = b;
    c->cap = cap;
  }
  memcpy(c->buf + c->len, p, n);
  c->len += n;
  return true;
}

/* Read one chunk and echo it; what the socket does not take is kept. */
static bool conn_read(struct conn *c) {
  char tmp[CHUNK];
  ssize_t n = recv(c->fd, tmp, sizeof tmp, 0);
  if (n == 0) c->eof = true;
  if (n <= 0) return n == 0 || errno == EAGAIN || errno == EINTR;
  if (c->len == c->off) { /* nothing queued: try the socket directly */
    ssize_t w = send(c->fd, tmp, (size_t)n, MSG_NOSIGNAL);
    if (w < 0 && errno != EAGAIN && errno != EINTR) return false;
    if (w < 0) w = 0;
    return conn_keep(c, tmp + w, (size_t)(n - w));
  }
  return conn_keep(c, tmp, (size_t)n);
}

static void conn_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  struct conn *c = data;
  (void)src, (void)fd;
  bool ok = true;
  /* Errors and hang-ups are reported whatever we asked for: a read or a
   * write turns them into an errno, so treat them as both. */
  if ((revents & (AX_READABLE | AX_ERROR | AX_HANGUP)) && !c->eof &&
      c->len - c->off < HIGH_WATER)
    ok = conn_read(c);
  if (ok && (revents & (AX_WRITABLE | AX_ERROR | AX_HANGUP))) ok = conn_flush(c);
  size_t pending = c->len - c->off;
  unsigned want = (!c->eof && pending < HIGH_WATER ? AX_READABLE : 0) |
                  (pending ? AX_WRITABLE : 0);
  if (!ok || want == 0) { /* dead, or half-closed and fully echoed */
    conn_close(c);
    return;
  }
  if (want != c->interest) {
    int rc = ax_io_start(c->io, want);
    if (rc < 0) {
      fprintf(stderr, "echo_reactor: ax_io_start: %s\n", ax_strerror(rc));
      conn_close(c);
      return;
    }
    c->interest = want;
  }
}

static void conn_new(ax_loop_t *loop, int fd) {
  struct conn *c = calloc(1, sizeof *c);
  int rc = c ? ax_io_new(loop, fd, conn_cb, c, &c->io) : -ENOMEM;
  if (rc == 0) rc = ax_io_start(c->io, AX_READABLE);
  if (rc < 0) { /* e.g. AX_EFDTOOBIG on select: refuse this client only */
    fprintf(stderr, "echo_reactor: dropping client: %s\n", ax_strerror(rc));
    if (c) ax_source_free(c->io);
    free(c);
    close(fd);
    return;
  }
  c->fd = fd;
  c->interest = AX_READABLE;
  c->next = conns;
  if (conns) conns->prev = c;
  conns = c;
}

struct server {
  int lfd;
  ax_source_t *listener, *retry;
};

static void accept_cb(ax_source_t *src, int lfd, unsigned revents, void *data) {
  struct server *s = data;
  (void)revents;
  for (int i = 0; i < 64; i++) { /* bounded: let established clients run */
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      conn_new(ax_source_loop(src), fd);
    } else if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
               errno == ENOMEM) {
      /* The pending connection stays queued and the listener stays readable:
       * watching it now would spin. Pause it until some fds are freed. */
      int rc = ax_timer_start(s->retry, ACCEPT_RETRY_MS, 0);
      if (rc < 0) /* keep accepting: a spin beats a deaf server */
        fprintf(stderr, "echo_reactor: retry timer: %s\n", ax_strerror(rc));
      else
        ax_source_stop(src);
      return;
    } else if (errno != EINTR && errno != ECONNABORTED) {
      return; /* EAGAIN: queue drained */
    }
  }
}

static int64_t retry_cb(ax_source_t *src, void *data) {
  struct server *s = data;
  int rc = ax_io_start(s->listener, AX_READABLE);
  if (rc < 0) fprintf(stderr, "echo_reactor: listener: %s\n", ax_strerror(rc));
  (void)src;
  return rc < 0 ? ACCEPT_RETRY_MS : AX_TIMER_CONTINUE;
}

static void signal_cb(ax_source_t *src, int signo, void *data) {
  (void)signo, (void)data;
  ax_loop_stop(ax_source_loop(src));
}

/* Print why setup step @what failed; pass @rc through. */
static int step(int rc, const char *what) {
  if (rc < 0) fprintf(stderr, "echo_reactor: %s: %s\n", what, ax_strerror(rc));
  return rc;
}

static int listen_on(unsigned port, int *out) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  int one = 1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, SOMAXCONN) < 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
    int err = -errno;
    if (fd >= 0) close(fd);
    return err;
  }
  printf("listening on 127.0.0.1:%u\n", ntohs(sa.sin_port));
  fflush(stdout);
  *out = fd;
  return 0;
}

static int parse_args(int argc, char **argv, unsigned *port, ax_backend_t *be) {
  static const struct { const char *name; ax_backend_t be; } backends[] = {
      {"epoll", AX_BACKEND_EPOLL}, {"poll", AX_BACKEND_POLL},
      {"select", AX_BACKEND_SELECT}, {"io_uring", AX_BACKEND_URING}};
  if (argc % 2 == 0) return -1; /* options come in pairs */
  for (int i = 1; i + 1 < argc; i += 2) {
    char *end;
    if (strcmp(argv[i], "--port") == 0) {
      unsigned long p = strtoul(argv[i + 1], &end, 10);
      if (*end || end == argv[i + 1] || p > 65535) return -1;
      *port = (unsigned)p;
    } else if (strcmp(argv[i], "--backend") == 0) {
      size_t b = 0, n = sizeof backends / sizeof backends[0];
      while (b < n && strcmp(argv[i + 1], backends[b].name) != 0) b++;
      if (b == n) return -1;
      *be = backends[b].be;
    } else {
      return -1;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  ax_loop_options_t opts;
  ax_loop_options_init(&opts);
  unsigned port = 0;
  if (parse_args(argc, argv, &port, &opts.backend) < 0) {
    fprintf(stderr, "usage: %s [--port P] [--backend epoll|poll|select|io_uring]\n", argv[0]);
    return 2;
  }
  /* Blocked before the loop (and any thread) exists, so the signals can only
   * arrive as loop events, never interrupt us asynchronously. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int rc = -pthread_sigmask(SIG_BLOCK, &set, NULL);
  step(rc, "pthread_sigmask");

  struct server s = {.lfd = -1};
  ax_loop_t *loop = NULL;
  ax_source_t *sig[2] = {NULL, NULL};
  if (rc == 0) rc = step(ax_loop_new(&opts, &loop), "ax_loop_new");
  ax_loop_info_t info; /* e.g. io_uring asked for but refused by the kernel */
  if (rc == 0 && ax_loop_info(loop, &info) == 0 && info.fallback_reason)
    fprintf(stderr, "echo_reactor: using %s: %s\n", info.backend, info.fallback_reason);
  if (rc == 0) rc = step(ax_signal_new(loop, signal_cb, NULL, &sig[0]), "ax_signal_new");
  if (rc == 0) rc = step(ax_signal_new(loop, signal_cb, NULL, &sig[1]), "ax_signal_new");
  if (rc == 0) rc = step(ax_signal_start(sig[0], SIGINT), "SIGINT");
  if (rc == 0) rc = step(ax_signal_start(sig[1], SIGTERM), "SIGTERM");
  if (rc == 0) rc = step(ax_timer_new(loop, retry_cb, &s, &s.retry), "ax_timer_new");
  if (rc == 0) rc = step(listen_on(port, &s.lfd), "listen on 127.0.0.1");
  if (rc == 0) rc = step(ax_io_new(loop, s.lfd, accept_cb, &s, &s.listener), "ax_io_new");
  if (rc == 0) rc = step(ax_io_start(s.listener, AX_READABLE), "ax_io_start");
  if (rc == 0) rc = step(ax_loop_run(loop, AX_RUN_DEFAULT), "ax_loop_run");

  while (conns) conn_close(conns);
  ax_loop_free(loop); /* also frees the listener, timer and signal sources */
  if (s.lfd >= 0) close(s.lfd);
  return rc < 0 ? 1 : 0;
}
