/*
 * proxy — a TCP proxy on the proactor.
 *
 *   proxy --port P --to HOST:PORT [--backend epoll|poll|select|io_uring] [--xor KEY]
 *
 * Each client gets its own upstream connection (ax_connect, 5 s), then one
 * splice each way moves the bytes through a kernel pipe: they never enter
 * this process. When a direction ends (AX_EOF), the write side of the stream
 * it fed is shut, so the EOF travels on (half-close); when both are done, or
 * on any error, both streams close.
 *
 * --xor KEY (1-64 bytes) obfuscates the upstream side: bytes toward it are
 * XORed with the repeating KEY, bytes from it XORed back, each direction at
 * its own key position. XOR undoes itself, so in front of an echo server the
 * client reads back what it sent, and two proxies chained with the same key
 * (client → proxy → proxy → server) carry XORed bytes between them and plain
 * bytes at both ends. These bytes go through user space: read from one side,
 * written to the other, reading paused while the other side's queue is above
 * its high-water mark and resumed on its drain. The XOR itself is the
 * ax_filter_xor() stage on the upstream stream's write and read chains:
 * this file only moves slices.
 */
#include <axon/axon.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 5000
enum { CLIENT, UPSTREAM };

struct proxy {
  ax_addr_t to;
  const char *key; /* --xor, or NULL: splice */
  size_t keylen;
  struct conn *conns; /* not closed yet: at exit, ax_loop_free() closes their
                         streams without calling us, and main() frees them */
  unsigned long long nconns, bytes;
};

struct conn {
  struct proxy *px;
  struct conn *prev, *next;
  ax_stream_t *s[2];
  int open, done; /* streams not closed yet; directions whose EOF was passed on */
  bool closing;
};

static void conn_free(struct conn *c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    c->px->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
}

static void on_close(ax_stream_t *s, void *ud) {
  struct conn *c = ud;
  (void)s;
  if (--c->open == 0) conn_free(c);
}

/* Close both streams; @c goes with the last close callback. (Inside
 * ax_loop_free() they are closed already: no callback, main() frees @c.) */
static void conn_close(struct conn *c) {
  if (c->closing) return;
  c->closing = true;
  for (int i = 0; i < 2; i++)
    if (c->s[i]) ax_stream_close(c->s[i], on_close);
}

static ax_stream_t *peer(struct conn *c, ax_stream_t *s) {
  return c->s[s == c->s[CLIENT] ? UPSTREAM : CLIENT];
}

static void on_shut(ax_stream_t *s, int status, void *ud) {
  struct conn *c = ud;
  (void)s;
  if (status < 0 || ++c->done == 2) conn_close(c);
}

static void pass_eof(struct conn *c, ax_stream_t *to) { /* after what is queued */
  if (ax_stream_shutdown(to, on_shut) < 0) conn_close(c);
}

static void on_spliced(ax_stream_t *from, ax_stream_t *to, int status, uint64_t n, void *ud) {
  struct conn *c = ud;
  (void)from;
  c->px->bytes += n;
  if (status == AX_EOF)
    pass_eof(c, to);
  else
    conn_close(c); /* an error, or -ECANCELED: closing already */
}

static void on_read(ax_stream_t *s, int status, ax_slice_t *data, void *ud) {
  struct conn *c = ud;
  ax_stream_t *to = peer(c, s);
  if (status == AX_EOF) {
    pass_eof(c, to);
  } else if (status < 0 || ax_stream_write_slices(to, data, 1, NULL, NULL) < 0) {
    conn_close(c);
  } else {
    c->px->bytes += (unsigned)status;
    if (!ax_stream_writable(to)) ax_stream_read_stop(s); /* resumed by on_drain */
  }
}

static void on_drain(ax_stream_t *s, int status, void *ud) {
  struct conn *c = ud;
  int rc = c->closing ? 0 : ax_stream_read_start(peer(c, s), on_read);
  (void)status;
  if (rc < 0 && rc != AX_EOF) conn_close(c); /* AX_EOF: that side is done */
}

static void on_connected(ax_stream_t *up, int status, void *ud) {
  struct conn *c = ud;
  int rc = status;
  if (rc == 0 && c->px->key && /* XORed toward the upstream, and back */
      (rc = ax_filter_xor(up, AX_FILTER_WRITE, c->px->key, c->px->keylen)) == 0)
    rc = ax_filter_xor(up, AX_FILTER_READ, c->px->key, c->px->keylen);
  for (int i = 0; i < 2 && rc == 0 && c->px->key; i++)
    if ((rc = ax_stream_set_write_limits(c->s[i], 64 * 1024, 0, on_drain)) == 0)
      rc = ax_stream_read_start(c->s[i], on_read);
  if (rc == 0 && !c->px->key && (rc = ax_splice(c->s[CLIENT], up, on_spliced, c)) == 0)
    rc = ax_splice(up, c->s[CLIENT], on_spliced, c);
  if (rc < 0) {
    fprintf(stderr, "proxy: upstream: %s\n", ax_strerror(rc));
    conn_close(c);
  }
}

static void on_accept(ax_listener_t *l, int status, int fd, const ax_addr_t *from, void *ud) {
  struct proxy *px = ud;
  (void)from;
  if (status < 0) { /* EMFILE: the listener sheds and pauses by itself */
    fprintf(stderr, "proxy: accept: %s\n", ax_strerror(status));
    return;
  }
  struct conn *c = calloc(1, sizeof *c);
  int rc = c ? ax_stream_open(ax_listener_loop(l), fd, c, &c->s[CLIENT]) : -ENOMEM;
  if (rc < 0) {
    fprintf(stderr, "proxy: dropping client: %s\n", ax_strerror(rc));
    free(c);
    close(fd);
    return;
  }
  c->px = px;
  c->open = 1;
  c->next = px->conns;
  if (px->conns) px->conns->prev = c;
  px->conns = c;
  px->nconns++;
  ax_stream_nodelay(c->s[CLIENT], true);
  rc = ax_connect(ax_listener_loop(l), &px->to, CONNECT_TIMEOUT_MS, on_connected, c,
                  &c->s[UPSTREAM]);
  if (rc < 0) {
    fprintf(stderr, "proxy: upstream: %s\n", ax_strerror(rc));
    conn_close(c);
    return;
  }
  c->open = 2;
  ax_stream_nodelay(c->s[UPSTREAM], true);
}

static void on_signal(ax_source_t *src, int signo, void *data) {
  (void)signo, (void)data;
  ax_loop_stop(ax_source_loop(src));
}

static int parse_port(const char *s, unsigned *port) {
  char *end;
  unsigned long n = strtoul(s, &end, 10);
  *port = (unsigned)n;
  return *end || end == s || n > 65535 ? -1 : 0;
}

/* Options come in pairs; --to HOST:PORT is a numeric address ("[::1]:7" too). */
static int parse_args(int argc, char **argv, unsigned *port, ax_backend_t *be, struct proxy *px) {
  static const char *names[] = {"epoll", "poll", "select", "io_uring"};
  static const ax_backend_t ids[] = {AX_BACKEND_EPOLL, AX_BACKEND_POLL, AX_BACKEND_SELECT,
                                     AX_BACKEND_URING};
  bool to = false;
  for (int i = 1; i < argc; i += 2) {
    const char *opt = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL, *colon;
    char host[64];
    unsigned p = 0, b = 0;
    if (v == NULL) return -1;
    if (strcmp(opt, "--port") == 0) {
      if (parse_port(v, port) < 0) return -1;
    } else if (strcmp(opt, "--to") == 0) {
      if (!(colon = strrchr(v, ':')) || colon - v >= (int)sizeof host ||
          parse_port(colon + 1, &p) < 0 || p == 0)
        return -1;
      snprintf(host, sizeof host, "%.*s", (int)(colon - v), v);
      if (ax_addr_ip(host, p, &px->to) < 0) return -1;
      to = true;
    } else if (strcmp(opt, "--xor") == 0 && *v && strlen(v) <= 64) {
      px->key = v;
      px->keylen = strlen(v);
    } else if (strcmp(opt, "--backend") == 0) {
      while (b < 4 && strcmp(v, names[b]) != 0) b++;
      if (b == 4) return -1;
      *be = ids[b];
    } else {
      return -1;
    }
  }
  return to ? 0 : -1;
}

static int step(int rc, const char *what) {
  if (rc < 0) fprintf(stderr, "proxy: %s: %s\n", what, ax_strerror(rc));
  return rc;
}

int main(int argc, char **argv) {
  ax_loop_options_t opts;
  ax_loop_options_init(&opts);
  struct proxy px = {.key = NULL};
  unsigned port = 0;
  if (parse_args(argc, argv, &port, &opts.backend, &px) < 0) {
    fprintf(stderr,
            "usage: %s --port P --to HOST:PORT [--backend epoll|poll|select|"
            "io_uring] [--xor KEY]\n",
            argv[0]);
    return 2;
  }
  sigset_t set; /* signals arrive as loop events only */
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int rc = step(-pthread_sigmask(SIG_BLOCK, &set, NULL), "pthread_sigmask");

  ax_loop_t *loop = NULL;
  ax_source_t *sig;
  ax_listener_t *l = NULL;
  ax_addr_t addr;
  if (rc == 0) rc = step(ax_loop_new(&opts, &loop), "ax_loop_new");
  for (int i = 0; i < 2 && rc == 0; i++)
    if ((rc = step(ax_signal_new(loop, on_signal, NULL, &sig), "signal")) == 0)
      rc = step(ax_signal_start(sig, i ? SIGTERM : SIGINT), "signal");
  if (rc == 0) rc = step(ax_addr_ip("127.0.0.1", port, &addr), "address");
  if (rc == 0) rc = step(ax_listener_new(loop, &addr, NULL, on_accept, &px, &l), "listen");
  if (rc == 0) rc = step(ax_listener_addr(l, &addr), "listener address");
  if (rc == 0) {
    printf("listening on 127.0.0.1:%u\n", ax_addr_port(&addr));
    fflush(stdout);
    rc = step(ax_loop_run(loop, AX_RUN_DEFAULT), "ax_loop_run");
  }
  ax_loop_free(loop); /* closes every stream; splices end with -ECANCELED */
  while (px.conns) conn_free(px.conns);
  printf("proxy: %llu connections, %llu bytes\n", px.nconns, px.bytes);
  return rc < 0 ? 1 : 0;
}
