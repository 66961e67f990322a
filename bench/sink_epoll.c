/*
 * sink_epoll — the raw-epoll discard server examples/sink is measured
 * against (bench/net.sh): one thread, level-triggered, no library.
 *
 *   sink_epoll [--port P]        (contract: bench/netpeer.h)
 *
 * Reads into one shared 256 KiB buffer, up to 4 reads per readiness event
 * (so one busy connection cannot starve the rest), and drops the bytes.
 * SIGTERM or SIGINT (a signalfd in the epoll set) ends it with status 0 and
 * "sink_epoll: N connections, M bytes" on stdout.
 */
#include "netpeer.h"

#include <signal.h>
#include <stdbool.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>

#define RBUF (256 * 1024)
#define READS_PER_EVENT 4
#define MAX_EVENTS 512
#define ACCEPT_BATCH 64

static int ep;
static unsigned long long accepted, bytes;

static bool watch(int fd) {
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
  return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0;
}

static void on_accept(int lfd) {
  for (int i = 0; i < ACCEPT_BATCH; i++) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
      return;
    if (watch(fd))
      accepted++;
    else
      close(fd);
  }
}

static void on_readable(int fd, char *buf) {
  for (int i = 0; i < READS_PER_EVENT; i++) {
    ssize_t n = recv(fd, buf, RBUF, 0);
    if (n > 0) {
      bytes += (unsigned long long)n;
      if (n < RBUF)
        return; /* drained */
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
      return;
    close(fd); /* EOF or error */
    return;
  }
}

int main(int argc, char **argv) {
  unsigned port = peer_port(argc, argv);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigprocmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  ep = epoll_create1(EPOLL_CLOEXEC);
  if (sfd < 0 || ep < 0) {
    fprintf(stderr, "sink_epoll: set-up: %s\n", strerror(errno));
    return 1;
  }
  int lfd = peer_listen("sink_epoll", port);
  if (!watch(lfd) || !watch(sfd)) {
    fprintf(stderr, "sink_epoll: epoll_ctl: %s\n", strerror(errno));
    return 1;
  }
  static char buf[RBUF];
  struct epoll_event evs[MAX_EVENTS];
  for (bool stop = false; !stop;) {
    int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
    if (n < 0 && errno != EINTR) {
      fprintf(stderr, "sink_epoll: epoll_wait: %s\n", strerror(errno));
      return 1;
    }
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == lfd)
        on_accept(lfd);
      else if (fd == sfd)
        stop = true;
      else
        on_readable(fd, buf);
    }
  }
  printf("sink_epoll: %llu connections, %llu bytes\n", accepted, bytes);
  return 0;
}
