/*
 * echo_epoll — the raw-epoll echo server axon's echo servers are measured
 * against (bench/net.sh): one thread, level-triggered, no library.
 *
 *   echo_epoll [--port P]        (contract: bench/netpeer.h)
 *
 * A readable connection gets one recv into a shared 64 KiB buffer, sent back
 * at once. What the socket does not take is kept in the connection's own
 * buffer and the connection then waits for EPOLLOUT alone: no reads until
 * the rest is out (back-pressure; at most one read's worth held per
 * connection). Accepted sockets get TCP_NODELAY. EMFILE is not handled (the
 * bench stays below the fd limit). SIGTERM or SIGINT, read from a signalfd in
 * the same epoll set, ends it with status 0.
 */
#include "netpeer.h"

#include <signal.h>
#include <stdbool.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>

#define RBUF (64 * 1024)
#define MAX_EVENTS 512
#define ACCEPT_BATCH 64

struct conn {
  char *rest; /* unsent bytes rest[off, len), or NULL: reading */
  uint32_t off, len;
};

static struct conn *conns; /* indexed by fd */
static size_t nslots;      /* the fd limit */
static int ep;

static bool watch(int fd, uint32_t events, int op) {
  struct epoll_event ev = {.events = events, .data.fd = fd};
  return epoll_ctl(ep, op, fd, &ev) == 0;
}

static void conn_close(int fd) {
  close(fd); /* leaves the epoll set too */
  free(conns[fd].rest);
  conns[fd] = (struct conn){0};
}

static void on_accept(int lfd) {
  for (int i = 0; i < ACCEPT_BATCH; i++) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return; /* EAGAIN: drained */
    if ((size_t)fd >= nslots || !watch(fd, EPOLLIN, EPOLL_CTL_ADD)) {
      close(fd);
      continue;
    }
    peer_nodelay(fd);
  }
}

/* Send what is kept; reading resumes once it is all out. */
static void on_writable(int fd) {
  struct conn *c = &conns[fd];
  ssize_t n = send(fd, c->rest + c->off, c->len - c->off, MSG_NOSIGNAL);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n < 0) {
    conn_close(fd);
    return;
  }
  c->off += (uint32_t)n;
  if (c->off < c->len)
    return;
  free(c->rest);
  *c = (struct conn){0};
  if (!watch(fd, EPOLLIN, EPOLL_CTL_MOD))
    conn_close(fd);
}

static void on_readable(int fd, char *buf) {
  ssize_t n = recv(fd, buf, RBUF, 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR))
    return;
  if (n <= 0) { /* EOF or error */
    conn_close(fd);
    return;
  }
  ssize_t w = send(fd, buf, (size_t)n, MSG_NOSIGNAL);
  if (w == n)
    return;
  if (w < 0 && errno != EAGAIN && errno != EINTR) {
    conn_close(fd);
    return;
  }
  if (w < 0)
    w = 0;
  struct conn *c = &conns[fd];
  c->len = (uint32_t)(n - w);
  c->rest = malloc(c->len);
  if (!c->rest || !watch(fd, EPOLLOUT, EPOLL_CTL_MOD)) {
    conn_close(fd);
    return;
  }
  memcpy(c->rest, buf + w, c->len);
}

int main(int argc, char **argv) {
  unsigned port = peer_port(argc, argv);
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  nslots =
      rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 20) ? 1u << 20 : rl.rlim_cur;
  conns = calloc(nslots, sizeof *conns);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (!conns || sfd < 0 || ep < 0) {
    fprintf(stderr, "echo_epoll: set-up: %s\n", strerror(errno));
    return 1;
  }
  int lfd = peer_listen("echo_epoll", port);
  if (!watch(lfd, EPOLLIN, EPOLL_CTL_ADD) || !watch(sfd, EPOLLIN, EPOLL_CTL_ADD)) {
    fprintf(stderr, "echo_epoll: epoll_ctl: %s\n", strerror(errno));
    return 1;
  }
  static char buf[RBUF];
  struct epoll_event evs[MAX_EVENTS];
  for (bool stop = false; !stop;) {
    int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
    if (n < 0 && errno != EINTR) {
      fprintf(stderr, "echo_epoll: epoll_wait: %s\n", strerror(errno));
      return 1;
    }
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd)
        on_accept(lfd);
      else if (fd == sfd)
        stop = true;
      else if (conns[fd].rest)
        on_writable(fd);
      else
        on_readable(fd, buf);
    }
  }
  for (size_t fd = 0; fd < nslots; fd++)
    free(conns[fd].rest);
  free(conns);
  return 0;
}
