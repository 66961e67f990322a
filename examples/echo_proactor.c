/*
 * echo_proactor — the echo server of echo_reactor, on the proactor.
 *
 *   echo_proactor [--port P] [--backend epoll|poll|select|io_uring]
 *
 * The proactor reads into pooled buffers and hands them over; echoing is
 * writing the same slice back (no copy). What echo_reactor does by hand is
 * one call each here: back-pressure (stop reading while the write queue is
 * above its high-water mark, resume on drain), a deadline for a client that
 * never reads, half-close (flush, then close), and accept under EMFILE.
 */
#include <axon/axon.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WRITE_TIMEOUT_MS 10000 /* a client that reads nothing for 10 s goes */

static void on_close(ax_stream_t *s, void *ud) { (void)s, (void)ud; }

static void on_flushed(ax_stream_t *s, int status, void *ud) {
  (void)status, (void)ud;
  ax_stream_close(s, on_close);
}

static void on_read(ax_stream_t *s, int status, ax_slice_t *data, void *ud) {
  (void)ud;
  if (status == AX_EOF) { /* half-closed: echo what is queued, then close */
    if (ax_stream_shutdown(s, on_flushed) < 0) ax_stream_close(s, on_close);
    return;
  }
  if (status < 0 || ax_stream_write_slices(s, data, 1, NULL, NULL) < 0) {
    ax_stream_close(s, on_close); /* reset, timeout, ... */
    return;
  }
  if (!ax_stream_writable(s)) ax_stream_read_stop(s); /* resumed by on_drain */
}

static void on_drain(ax_stream_t *s, int status, void *ud) {
  (void)status, (void)ud;
  ax_stream_read_start(s, on_read);
}

static void on_accept(ax_listener_t *l, int status, int fd,
                      const ax_addr_t *peer, void *ud) {
  ax_stream_t *s;
  (void)peer, (void)ud;
  if (status < 0) { /* EMFILE: the listener sheds and pauses by itself */
    fprintf(stderr, "echo_proactor: accept: %s\n", ax_strerror(status));
    return;
  }
  int rc = ax_stream_open(ax_listener_loop(l), fd, NULL, &s);
  if (rc < 0) {
    fprintf(stderr, "echo_proactor: dropping client: %s\n", ax_strerror(rc));
    close(fd);
    return;
  }
  ax_stream_nodelay(s, true);
  ax_stream_set_write_limits(s, 64 * 1024, 0, on_drain);
  ax_stream_set_write_timeout(s, WRITE_TIMEOUT_MS);
  if (ax_stream_read_start(s, on_read) < 0) ax_stream_close(s, on_close);
}

static void on_signal(ax_source_t *src, int signo, void *data) {
  (void)signo, (void)data;
  ax_loop_stop(ax_source_loop(src));
}

static int parse_args(int argc, char **argv, unsigned *port, ax_backend_t *be) {
  static const char *names[] = {"epoll", "poll", "select", "io_uring"};
  static const ax_backend_t ids[] = {AX_BACKEND_EPOLL, AX_BACKEND_POLL,
                                     AX_BACKEND_SELECT, AX_BACKEND_URING};
  if (argc % 2 == 0) return -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    char *end;
    if (strcmp(argv[i], "--port") == 0) {
      unsigned long p = strtoul(argv[i + 1], &end, 10);
      if (*end || end == argv[i + 1] || p > 65535) return -1;
      *port = (unsigned)p;
    } else if (strcmp(argv[i], "--backend") == 0) {
      size_t b = 0;
      while (b < 4 && strcmp(argv[i + 1], names[b]) != 0) b++;
      if (b == 4) return -1;
      *be = ids[b];
    } else {
      return -1;
    }
  }
  return 0;
}

static int step(int rc, const char *what) {
  if (rc < 0) fprintf(stderr, "echo_proactor: %s: %s\n", what, ax_strerror(rc));
  return rc;
}

int main(int argc, char **argv) {
  ax_loop_options_t opts;
  ax_loop_options_init(&opts);
  unsigned port = 0;
  if (parse_args(argc, argv, &port, &opts.backend) < 0) {
    fprintf(stderr, "usage: %s [--port P] [--backend epoll|poll|select|io_uring]\n", argv[0]);
    return 2;
  }
  sigset_t set; /* signals arrive as loop events only */
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int rc = step(-pthread_sigmask(SIG_BLOCK, &set, NULL), "pthread_sigmask");

  ax_loop_t *loop = NULL;
  ax_source_t *sig[2] = {NULL, NULL};
  ax_listener_t *l = NULL;
  ax_addr_t addr;
  if (rc == 0) rc = step(ax_loop_new(&opts, &loop), "ax_loop_new");
  if (rc == 0) rc = step(ax_signal_new(loop, on_signal, NULL, &sig[0]), "signal");
  if (rc == 0) rc = step(ax_signal_new(loop, on_signal, NULL, &sig[1]), "signal");
  if (rc == 0) rc = step(ax_signal_start(sig[0], SIGINT), "SIGINT");
  if (rc == 0) rc = step(ax_signal_start(sig[1], SIGTERM), "SIGTERM");
  if (rc == 0) rc = step(ax_addr_ip("127.0.0.1", port, &addr), "address");
  if (rc == 0) rc = step(ax_listener_new(loop, &addr, NULL, on_accept, NULL, &l), "listen");
  if (rc == 0) rc = step(ax_listener_addr(l, &addr), "listener address");
  if (rc == 0) {
    printf("listening on 127.0.0.1:%u\n", ax_addr_port(&addr));
    fflush(stdout);
    rc = step(ax_loop_run(loop, AX_RUN_DEFAULT), "ax_loop_run");
  }
  ax_loop_free(loop); /* closes the listener and every connection */
  return rc < 0 ? 1 : 0;
}
