/*
 * netpeer.h — the command line and listening socket shared by the network
 * peers (echo_epoll, echo_uv, sink_epoll), so they keep the contract of
 * axon's example servers that bench/net.sh relies on:
 *   NAME [--port P]    (0 or absent: a free port)
 *   prints "listening on 127.0.0.1:PORT" (flushed) once it accepts,
 *   binds 127.0.0.1 only, exits 0 on SIGTERM or SIGINT.
 */
#ifndef AXON_BENCH_NETPEER_H
#define AXON_BENCH_NETPEER_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The port from "--port P"; exits with a usage line on anything else. */
static inline unsigned peer_port(int argc, char **argv) {
  char *end = NULL;
  unsigned long p = 0;
  if (argc == 3 && strcmp(argv[1], "--port") == 0)
    p = strtoul(argv[2], &end, 10);
  if (argc != 1 && (argc != 3 || !end || *end || end == argv[2] || p > 65535)) {
    fprintf(stderr, "usage: %s [--port P]\n", argv[0]);
    exit(2);
  }
  return (unsigned)p;
}

/* A non-blocking socket listening on 127.0.0.1:@port (backlog: the
 * kernel's maximum); prints the "listening on" line. Exits on failure. */
static inline int peer_listen(const char *name, unsigned port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  int one = 1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
      bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, SOMAXCONN) != 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
    fprintf(stderr, "%s: listen on 127.0.0.1:%u: %s\n", name, port, strerror(errno));
    exit(1);
  }
  printf("listening on 127.0.0.1:%u\n", ntohs(sa.sin_port));
  fflush(stdout);
  return fd;
}

static inline void peer_nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

#endif /* AXON_BENCH_NETPEER_H */
