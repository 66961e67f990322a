/*
 * sendfile_server — every connection gets one file, then a FIN.
 *
 *   sendfile_server --port P --file PATH [--backend epoll|poll|select|io_uring]
 *                   [--write-timeout MS]
 *
 * The file is opened once. Each connection queues the whole file with
 * ax_stream_sendfile() (the kernel copies it from the page cache, in as many
 * partial sends as the client's pace asks for) and a shutdown behind it
 * (writes complete in order); the connection closes when the shutdown has
 * completed, or failed: a client that stops reading is cut once the queue
 * made no progress for the write timeout (10 s unless --write-timeout).
 */
#include <axon/axon.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct file {
  int fd;
  size_t size;
  unsigned long timeout_ms; /* write timeout */
};

static void on_shut(ax_stream_t *s, int status, void *ud) {
  (void)status, (void)ud; /* sent and shut, or the client's error: done */
  ax_stream_close(s, NULL);
}

/* What a client sends is read and dropped: bytes left unread at close would
 * turn our FIN into a reset, which may discard the end of the file. Errors
 * reach on_shut too. */
static void on_read(ax_stream_t *s, int status, ax_slice_t *data, void *ud) {
  (void)s, (void)status, (void)data, (void)ud;
}

static void on_accept(ax_listener_t *l, int status, int fd, const ax_addr_t *peer, void *ud) {
  const struct file *f = ud;
  ax_stream_t *s;
  int rc;
  (void)peer;
  if (status < 0) { /* EMFILE: the listener sheds and pauses by itself */
    fprintf(stderr, "sendfile_server: accept: %s\n", ax_strerror(status));
    return;
  }
  if ((rc = ax_stream_open(ax_listener_loop(l), fd, NULL, &s)) < 0) {
    fprintf(stderr, "sendfile_server: dropping client: %s\n", ax_strerror(rc));
    close(fd);
    return;
  }
  if ((rc = ax_stream_set_write_timeout(s, f->timeout_ms)) < 0 ||
      (rc = ax_stream_read_start(s, on_read)) < 0 ||
      (rc = ax_stream_sendfile(s, f->fd, 0, f->size, NULL, NULL)) < 0 ||
      (rc = ax_stream_shutdown(s, on_shut)) < 0) {
    fprintf(stderr, "sendfile_server: %s\n", ax_strerror(rc));
    ax_stream_close(s, NULL);
  }
}

static void on_signal(ax_source_t *src, int signo, void *data) {
  (void)signo, (void)data;
  ax_loop_stop(ax_source_loop(src));
}

static int parse_args(int argc, char **argv, unsigned long *port, const char **path,
                      unsigned long *timeout_ms, ax_backend_t *be) {
  static const char *names[] = {"epoll", "poll", "select", "io_uring"};
  static const ax_backend_t ids[] = {AX_BACKEND_EPOLL, AX_BACKEND_POLL, AX_BACKEND_SELECT,
                                     AX_BACKEND_URING};
  for (int i = 1; i < argc; i += 2) {
    const char *opt = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
    char *end = NULL;
    size_t b = 0;
    if (strcmp(opt, "--file") == 0 && *v) {
      *path = v;
    } else if (strcmp(opt, "--backend") == 0) {
      while (b < 4 && strcmp(v, names[b]) != 0) b++;
      if (b == 4) return -1;
      *be = ids[b];
    } else if (strcmp(opt, "--port") == 0) {
      if ((*port = strtoul(v, &end, 10)) > 65535 || *end || end == v) return -1;
    } else if (strcmp(opt, "--write-timeout") == 0) {
      if ((*timeout_ms = strtoul(v, &end, 10)) == 0 || *end || end == v) return -1;
    } else {
      return -1;
    }
  }
  return *path ? 0 : -1;
}

static int step(int rc, const char *what) {
  if (rc < 0) fprintf(stderr, "sendfile_server: %s: %s\n", what, ax_strerror(rc));
  return rc;
}

int main(int argc, char **argv) {
  ax_loop_options_t opts;
  ax_loop_options_init(&opts);
  unsigned long port = 0;
  const char *path = NULL;
  struct file f = {.fd = -1, .timeout_ms = 10000};
  if (parse_args(argc, argv, &port, &path, &f.timeout_ms, &opts.backend) < 0) {
    fprintf(stderr,
            "usage: %s --port P --file PATH [--backend epoll|poll|select|io_uring]"
            " [--write-timeout MS]\n",
            argv[0]);
    return 2;
  }
  struct stat st;
  int rc = 0;
  if ((f.fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(f.fd, &st) < 0)
    rc = step(-errno, path);
  else if (!S_ISREG(st.st_mode))
    rc = step(-EINVAL, "not a regular file");
  f.size = rc == 0 ? (size_t)st.st_size : 0;
  sigset_t set; /* signals arrive as loop events only */
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  if (rc == 0) rc = step(-pthread_sigmask(SIG_BLOCK, &set, NULL), "pthread_sigmask");

  ax_loop_t *loop = NULL;
  ax_source_t *sig;
  ax_listener_t *l = NULL;
  ax_addr_t addr;
  if (rc == 0) rc = step(ax_loop_new(&opts, &loop), "ax_loop_new");
  for (int i = 0; i < 2 && rc == 0; i++)
    if ((rc = step(ax_signal_new(loop, on_signal, NULL, &sig), "signal")) == 0)
      rc = step(ax_signal_start(sig, i ? SIGTERM : SIGINT), "signal");
  if (rc == 0) rc = step(ax_addr_ip("127.0.0.1", (unsigned)port, &addr), "address");
  if (rc == 0) rc = step(ax_listener_new(loop, &addr, NULL, on_accept, &f, &l), "listen");
  if (rc == 0) rc = step(ax_listener_addr(l, &addr), "listener address");
  if (rc == 0) {
    printf("listening on 127.0.0.1:%u\n", ax_addr_port(&addr));
    fflush(stdout);
    rc = step(ax_loop_run(loop, AX_RUN_DEFAULT), "ax_loop_run");
  }
  ax_loop_free(loop); /* closes every connection: their sendfiles end */
  if (f.fd >= 0) close(f.fd);
  return rc < 0 ? 1 : 0;
}
