/*
 * echo_uv — the libuv echo server axon's echo servers are measured against
 * (bench/net.sh): one libuv loop, written the way libuv is meant to be used
 * for speed: no allocation per read, and back-pressure.
 *
 *   echo_uv [--port P]           (contract: bench/netpeer.h)
 *
 * Reads land in one loop-wide 64 KiB buffer (read callbacks run one at a
 * time and consume it before they return); each read is echoed with
 * uv_try_write(). What the socket does not take is copied into a uv_write()
 * request, and reading stops on that connection until it completes.
 * Accepted sockets get TCP_NODELAY. SIGTERM or SIGINT closes every handle;
 * the loop then runs dry and the process exits 0.
 */
#include "netpeer.h"

#include <signal.h>
#include <uv.h>

#define RBUF (64 * 1024)

static char rbuf[RBUF];
static int heap_tag; /* handle->data of the connections, which are malloc'd */

struct wreq {
  uv_write_t req;
  char data[];
};

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  (void)h, (void)suggested;
  *b = uv_buf_init(rbuf, sizeof rbuf);
}

static void on_closed(uv_handle_t *h) {
  free(h);
}

static void conn_close(uv_stream_t *s) {
  if (!uv_is_closing((uv_handle_t *)s))
    uv_close((uv_handle_t *)s, on_closed);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void on_written(uv_write_t *req, int status) {
  uv_stream_t *s = req->handle;
  free(req);
  if (status < 0 || uv_is_closing((uv_handle_t *)s))
    conn_close(s);
  else if (uv_read_start(s, on_alloc, on_read) < 0)
    conn_close(s);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  if (n < 0) { /* UV_EOF or an error */
    conn_close(s);
    return;
  }
  if (n == 0)
    return; /* nothing this time (EAGAIN) */
  uv_buf_t out = uv_buf_init(b->base, (unsigned)n);
  int w = uv_try_write(s, &out, 1);
  if (w == n)
    return;
  if (w < 0 && w != UV_EAGAIN) {
    conn_close(s);
    return;
  }
  size_t done = w < 0 ? 0 : (size_t)w, rest = (size_t)n - done;
  struct wreq *r = malloc(sizeof *r + rest);
  if (!r) {
    conn_close(s);
    return;
  }
  memcpy(r->data, b->base + done, rest);
  out = uv_buf_init(r->data, (unsigned)rest);
  uv_read_stop(s);
  if (uv_write(&r->req, s, &out, 1, on_written) < 0) {
    free(r);
    conn_close(s);
  }
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0)
    return;
  uv_tcp_t *c = malloc(sizeof *c);
  if (!c)
    return;
  uv_tcp_init(server->loop, c);
  c->data = &heap_tag;
  if (uv_accept(server, (uv_stream_t *)c) != 0) {
    conn_close((uv_stream_t *)c);
    return;
  }
  uv_tcp_nodelay(c, 1);
  if (uv_read_start((uv_stream_t *)c, on_alloc, on_read) < 0)
    conn_close((uv_stream_t *)c);
}

static void close_one(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, h->data == &heap_tag ? on_closed : NULL);
}

static void on_signal(uv_signal_t *sig, int signo) {
  (void)signo;
  uv_walk(sig->loop, close_one, NULL);
}

int main(int argc, char **argv) {
  unsigned port = peer_port(argc, argv);
  uv_loop_t *loop = uv_default_loop();
  uv_tcp_t server;
  uv_signal_t sigs[2];
  int rc = uv_tcp_init(loop, &server);
  server.data = NULL;
  if (rc == 0)
    rc = uv_tcp_open(&server, peer_listen("echo_uv", port));
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&server, SOMAXCONN, on_connection);
  for (int i = 0; rc == 0 && i < 2; i++) {
    rc = uv_signal_init(loop, &sigs[i]);
    sigs[i].data = NULL;
    if (rc == 0)
      rc = uv_signal_start(&sigs[i], on_signal, i ? SIGINT : SIGTERM);
  }
  if (rc == 0)
    rc = uv_run(loop, UV_RUN_DEFAULT);
  if (rc == 0)
    rc = uv_loop_close(loop);
  if (rc != 0) {
    fprintf(stderr, "echo_uv: %s\n", uv_strerror(rc));
    return 1;
  }
  return 0;
}
