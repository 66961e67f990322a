/*
 * sink — a TCP discard server on the proactor: accept, read, drop, count.
 *   sink [--port P] [--backend epoll|poll|select|io_uring]
 * The listener hands over connected fds, each becomes a stream, and the read
 * callback gets the bytes (borrowed: nothing to free). SIGINT or SIGTERM
 * stops the loop; ax_loop_free() closes the streams still open. Load it with
 * tools/axload -m push.
 */
#include <axon/axon.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned long long conns, bytes;

static void on_read(ax_stream_t *s, int status, ax_slice_t *data, void *ud) {
  (void)data, (void)ud;
  if (status >= 0) bytes += (unsigned long long)status;
  else ax_stream_close(s, NULL); /* AX_EOF or an error */
}

static void on_accept(ax_listener_t *l, int status, int fd, const ax_addr_t *peer,
                      void *ud) {
  ax_stream_t *s;
  (void)peer, (void)ud;
  if (status < 0) return; /* EMFILE: the listener sheds and pauses by itself */
  if (ax_stream_open(ax_listener_loop(l), fd, NULL, &s) < 0) close(fd);
  else if (ax_stream_read_start(s, on_read) < 0) ax_stream_close(s, NULL);
  else conns++;
}

static void on_signal(ax_source_t *src, int signo, void *data) {
  (void)signo, (void)data;
  ax_loop_stop(ax_source_loop(src));
}

static int parse_args(int argc, char **argv, unsigned *port, ax_backend_t *be) {
  static const char *const names[] = {"epoll", "poll", "select", "io_uring"};
  if (argc % 2 == 0) return -1; /* options come in pairs */
  for (int i = 1; i < argc; i += 2) {
    int b = 0;
    while (b < 4 && strcmp(argv[i + 1], names[b]) != 0) b++;
    if (strcmp(argv[i], "--port") == 0) *port = (unsigned)strtoul(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--backend") == 0 && b < 4) *be = AX_BACKEND_EPOLL + b;
    else return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  unsigned port = 0;
  if (parse_args(argc, argv, &port, &o.backend) < 0) {
    fprintf(stderr, "usage: sink [--port P] [--backend epoll|poll|select|io_uring]\n");
    return 2;
  }
  sigset_t set; /* blocked before the loop exists: they come as loop events */
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  ax_loop_t *loop = NULL;
  ax_source_t *sig[2];
  ax_listener_t *l;
  ax_addr_t addr;
  int rc = ax_loop_new(&o, &loop);
  for (int i = 0; rc == 0 && i < 2; i++)
    if ((rc = ax_signal_new(loop, on_signal, NULL, &sig[i])) == 0)
      rc = ax_signal_start(sig[i], i ? SIGTERM : SIGINT);
  if (rc == 0) rc = ax_addr_ip("127.0.0.1", port, &addr);
  if (rc == 0) rc = ax_listener_new(loop, &addr, NULL, on_accept, NULL, &l);
  if (rc == 0) rc = ax_listener_addr(l, &addr);
  if (rc == 0) {
    printf("listening on 127.0.0.1:%u\n", ax_addr_port(&addr));
    fflush(stdout);
    rc = ax_loop_run(loop, AX_RUN_DEFAULT);
  }
  if (rc == 0) printf("sink: %llu connections, %llu bytes\n", conns, bytes);
  else fprintf(stderr, "sink: %s\n", ax_strerror(rc));
  ax_loop_free(loop); /* the listener and open streams go with it */
  return rc == 0 ? 0 : 1;
}
