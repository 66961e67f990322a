/*
 * echo_threads — a TCP echo server: one acceptor loop hands each connection
 * to one of W worker loops, each on its own thread (the runtime's shape,
 * built from loops and mailboxes alone).
 *
 *   echo_threads [--port P] [--workers W] [--backend epoll|poll|select|io_uring]
 *
 * The acceptor creates an I/O source for each connected socket, then moves
 * it with ax_io_handoff() to the next worker, round-robin: the worker adopts
 * the fd into its own backend and from then on only the worker touches the
 * connection. SIGINT/SIGTERM: the acceptor stops the workers with
 * ax_loop_stop() (thread-safe), joins them, and each closes its connections.
 */
#include <axon/axon.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_WORKERS 64

struct worker {
  ax_loop_t *loop;
  pthread_t thread;
  bool started;
  struct conn *conns; /* this worker's connections (its thread only) */
  unsigned long adopted;
};

struct conn {
  struct conn *prev, *next;
  struct worker *w;
  ax_source_t *io;
  int fd;
  size_t off, len; /* unsent bytes: buf[off, len) */
  char buf[16384];
};

static void conn_close(struct conn *c) {
  ax_source_free(c->io);
  close(c->fd);
  if (c->prev) c->prev->next = c->next;
  else c->w->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
}

/* Read only when nothing is pending: at most one buffer per connection, and
 * a client that never reads stops being read from (back-pressure). */
static void conn_io(ax_source_t *io, int fd, unsigned revents, void *data) {
  struct conn *c = data;
  (void)io;
  (void)revents;
  if (c->len == 0) {
    ssize_t n = read(fd, c->buf, sizeof c->buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) { conn_close(c); return; } /* EOF (all echoed) or error */
    c->off = 0;
    c->len = (size_t)n;
  }
  ssize_t n = send(fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
  if (n < 0 && errno != EAGAIN && errno != EINTR) { conn_close(c); return; }
  if (n > 0) c->off += (size_t)n;
  if (c->off == c->len) c->off = c->len = 0;
  ax_io_start(c->io, c->len ? AX_WRITABLE : AX_READABLE);
}

/* On the worker's thread: the connection is ours now. */
static void adopted(ax_source_t *src, int status, void *data) {
  struct conn *c = data;
  if (status < 0) { /* axon closed the fd */
    fprintf(stderr, "echo_threads: handoff failed: %s\n", ax_strerror(status));
    free(c);
    return;
  }
  c->io = src;
  c->next = c->w->conns;
  if (c->next) c->next->prev = c;
  c->w->conns = c;
  c->w->adopted++;
}

static struct worker workers[MAX_WORKERS];
static int nworkers = 2, next_worker;
static ax_loop_t *acceptor;

static void on_accept(ax_source_t *src, int lfd, unsigned revents, void *data) {
  (void)src; (void)revents; (void)data;
  int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return; /* EAGAIN, or EMFILE: try again on the next event */
  struct conn *c = calloc(1, sizeof *c);
  ax_source_t *io = NULL;
  int rc = c ? ax_io_new(acceptor, fd, conn_io, c, &io) : -ENOMEM;
  if (!rc) {
    c->w = &workers[next_worker];
    c->fd = fd;
  }
  if (!rc) rc = ax_io_start(io, AX_READABLE);
  if (!rc) rc = ax_io_handoff(io, c->w->loop, adopted, c);
  if (rc) {
    fprintf(stderr, "echo_threads: %s\n", ax_strerror(rc));
    ax_source_free(io);
    close(fd);
    free(c);
    return;
  }
  next_worker = (next_worker + 1) % nworkers;
}

static void on_signal(ax_source_t *src, int signo, void *data) {
  (void)src; (void)signo; (void)data;
  for (int i = 0; i < nworkers; i++) ax_loop_stop(workers[i].loop);
  ax_loop_stop(acceptor);
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  int rc = ax_loop_run(w->loop, AX_RUN_DEFAULT);
  if (rc) fprintf(stderr, "echo_threads: worker: %s\n", ax_strerror(rc));
  while (w->conns) conn_close(w->conns);
  return NULL;
}

static int listen_on(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
      bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 511) ||
      getsockname(fd, (struct sockaddr *)&a, &len)) {
    perror("echo_threads: listen");
    return -1;
  }
  printf("listening on 127.0.0.1:%d\n", ntohs(a.sin_port));
  fflush(stdout);
  return fd;
}

int main(int argc, char **argv) {
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  int port = 0, rc = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--workers")) nworkers = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--backend")) setenv("AXON_BACKEND", argv[i + 1], 1);
    else { fprintf(stderr, "usage: %s [--port P] [--workers W] [--backend B]\n", argv[0]); return 2; }
  }
  if (nworkers < 1 || nworkers > MAX_WORKERS) { fprintf(stderr, "echo_threads: 1..64 workers\n"); return 2; }
  ax_source_t *lsrc, *sigint, *sigterm;
  int lfd = listen_on(port);
  if (lfd < 0) return 1;
  /* Signal sources first: they block SIGINT/SIGTERM in this thread, and the
   * worker threads inherit that mask, so the signals reach the acceptor. */
  if ((rc = ax_loop_new(NULL, &acceptor)) || (rc = ax_signal_new(acceptor, on_signal, NULL, &sigint)) ||
      (rc = ax_signal_start(sigint, SIGINT)) || (rc = ax_signal_new(acceptor, on_signal, NULL, &sigterm)) ||
      (rc = ax_signal_start(sigterm, SIGTERM)) || (rc = ax_io_new(acceptor, lfd, on_accept, NULL, &lsrc)) ||
      (rc = ax_io_start(lsrc, AX_READABLE))) goto out;
  o.persistent = true; /* workers live on handoffs alone */
  for (int i = 0; i < nworkers; i++) {
    if ((rc = ax_loop_new(&o, &workers[i].loop))) goto out;
    if ((rc = -pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]))) goto out;
    workers[i].started = true;
  }
  rc = ax_loop_run(acceptor, AX_RUN_DEFAULT);
out:
  if (rc) fprintf(stderr, "echo_threads: %s\n", ax_strerror(rc));
  for (int i = 0; i < nworkers && workers[i].loop; i++) {
    ax_loop_stop(workers[i].loop);
    if (workers[i].started) pthread_join(workers[i].thread, NULL);
    printf("worker %d: %lu connections\n", i, workers[i].adopted);
    ax_loop_free(workers[i].loop);
  }
  ax_loop_free(acceptor);
  close(lfd);
  return rc ? 1 : 0;
}
