/*
 * httpd — a small HTTP/1.1 server: one actor per connection.
 *
 *   httpd [--port P] [--workers N] [--dir D] [--header-timeout-ms MS]
 *
 * GET / answers "Hello, World!"; GET /file/NAME sends NAME from D (default
 * .) with sendfile. Keep-alive; pipelined requests are answered in order,
 * the responses to the requests of one read in one write (a file's bytes
 * follow its head in the queue). A head must arrive within the header
 * timeout (10 s) of the previous response, or the connection closes. Bodies
 * are refused (400 and close); GET and HEAD only. Every response carries
 * Date (RFC 9110 asks it of a server with a clock) and Content-Length, and
 * Content-Type when it has a body. SIGINT/SIGTERM stop it.
 */
#include <axon/axon.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http_parse.h"

#define HEAD_MAX 8192
#define TEXT "text/plain"
enum { DEADLINE = 1 };
static struct { int dir; uint64_t timeout_ms; } cfg = {AT_FDCWD, 10000};
static _Thread_local struct { size_t n; char b[65536]; } out; /* one batch */

struct conn {
  ax_stream_t *s;
  struct http_req r;
  int64_t deadline;              /* loop time (ms) by which the next head must be in */
  bool closing, shut, sent, eof; /* last response queued; shutdown asked, done; peer's EOF */
  size_t len;                    /* the unfinished request in buf */
  char buf[HEAD_MAX];
};

static void flush(struct conn *c) {
  if (out.n && ax_stream_write(c->s, out.b, out.n, NULL, NULL) < 0) c->closing = true;
  out.n = 0;
}

/* The Date field's value, made again when the second changes. */
static const char *date_now(void) {
  static _Thread_local struct { time_t t; char s[32]; } d;
  time_t t = time(NULL);
  struct tm tm;
  if (t != d.t && gmtime_r(&t, &tm)) strftime(d.s, sizeof d.s, "%a, %d %b %Y %H:%M:%S GMT", &tm), d.t = t;
  return d.s;
}

static void put(const char *s, size_t n) { memcpy(out.b + out.n, s, n), out.n += n; }
#define PUT(lit) put(lit, sizeof lit - 1)

/* Queue a response (head, and the body unless @head) into the batch. */
static void respond(struct conn *c, int code, const char *type, const char *body, size_t len, bool head) {
  char num[20], *d = num + sizeof num;
  size_t v = len;
  if (out.n > sizeof out.b - 512 - (body ? len : 0)) flush(c);
  const char *line = code == 200 ? "200 OK" : code == 404 ? "404 Not Found" : code == 403 ? "403 Forbidden"
                   : code == 405 ? "405 Method Not Allowed" : code == 431 ? "431 Request Header Fields Too Large"
                   : code == 505 ? "505 HTTP Version Not Supported" : "400 Bad Request";
  PUT("HTTP/1.1 "), put(line, strlen(line)), PUT("\r\nDate: "), put(date_now(), 29);
  if (code == 405) PUT("\r\nAllow: GET, HEAD");
  if (type) PUT("\r\nContent-Type: "), put(type, strlen(type));
  do *--d = (char)('0' + v % 10); while (v /= 10);
  PUT("\r\nContent-Length: "), put(d, (size_t)(num + sizeof num - d));
  if (c->closing) PUT("\r\nConnection: close");
  else if (!c->r.minor) PUT("\r\nConnection: keep-alive");
  PUT("\r\n\r\n");
  if (body && !head) put(body, len);
}

static void file_sent(ax_stream_t *s, int status, void *fd) { (void)s, (void)status, close((int)(intptr_t)fd); }

static void send_file(struct conn *c, const char *name, size_t n, bool head) {
  char path[256];
  struct stat st;
  int fd = -1;
  if (n >= sizeof path || memchr(name, '/', n) || memmem(name, n, "..", 2))
    return respond(c, 403, TEXT, "forbidden\n", 10, head); /* no way out of the directory */
  snprintf(path, sizeof path, "%.*s", (int)n, name);
  if ((fd = openat(cfg.dir, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0 || fstat(fd, &st) < 0 ||
      !S_ISREG(st.st_mode)) {
    if (fd >= 0) close(fd);
    return respond(c, 404, TEXT, "not found\n", 10, head);
  }
  respond(c, 200, "application/octet-stream", NULL, (size_t)st.st_size, head);
  flush(c);
  if (head || ax_stream_sendfile(c->s, fd, 0, (size_t)st.st_size, file_sent, (void *)(intptr_t)fd) < 0) {
    c->closing |= !head; /* the head promised bytes that will not come */
    close(fd);
  }
}

/* Answer the complete requests in [p, p+n); returns the bytes used. */
static size_t serve(struct conn *c, const char *p, size_t n) {
  size_t used = 0;
  long rc;
  while (!c->closing && (rc = http_parse(&c->r, p + used, n - used, HEAD_MAX)) != 0) {
    struct http_req *r = &c->r;
    bool head = rc > 0 && r->method_len == 4 && !memcmp(r->method, "HEAD", 4);
    c->closing = rc < 0 || !r->keep_alive || r->te || r->content_length;
    if (rc < 0 || r->te || r->content_length) respond(c, rc < 0 ? (int)-rc : 400, TEXT, "bad request\n", 12, false);
    else if (!head && (r->method_len != 3 || memcmp(r->method, "GET", 3))) respond(c, 405, NULL, "", 0, false);
    else if (r->path_len == 1) respond(c, 200, TEXT, "Hello, World!", 13, head);
    else if (r->path_len > 6 && !memcmp(r->target, "/file/", 6)) send_file(c, r->target + 6, r->path_len - 6, head);
    else respond(c, 404, TEXT, "not found\n", 10, head);
    used += rc > 0 ? (size_t)rc : 0;
    http_req_init(&c->r);
    c->deadline = (int64_t)ax_loop_now(ax_stream_loop(c->s)) + (int64_t)cfg.timeout_ms;
  }
  return used;
}

/* A closing connection ends once its responses are out and the peer has
 * closed too (closing first would reset it, and could lose them). */
static void on_shut(ax_stream_t *s, int status, void *ud) {
  ax_actor_t *self = ax_stream_data(s); /* not ud: NULL once the actor has ended */
  (void)ud;
  if (!self) return;
  struct conn *c = ax_actor_state(self);
  c->sent = true;
  if (status < 0 || c->eof) ax_exit(self, AX_EXIT_NORMAL);
}

static void shut(ax_actor_t *self, struct conn *c) {
  c->shut = true;
  if (ax_stream_shutdown(c->s, on_shut) < 0) ax_exit(self, AX_EXIT_NORMAL);
}

static void on_read(ax_stream_t *s, int status, ax_slice_t *data, void *self) {
  struct conn *c = ax_actor_state(self);
  const char *p = ax_slice_ptr(*data);
  size_t n = status > 0 ? (size_t)status : 0;
  if (status < 0 && status != AX_EOF) return ax_exit(self, AX_EXIT_NORMAL);
  if (status == AX_EOF && (c->eof = true) && !c->shut) return shut(self, c);
  if (c->eof && c->sent) return ax_exit(self, AX_EXIT_NORMAL);
  while (n && !c->closing) { /* parse in place; keep the unfinished rest in c->buf */
    size_t k = c->len ? (n < HEAD_MAX - c->len ? n : HEAD_MAX - c->len) : n;
    const char *in = c->len ? memcpy(c->buf + c->len, p, k), c->buf : p;
    size_t have = c->len + k, used = serve(c, in, have);
    p += k, n -= k;
    if (!c->closing) memmove(c->buf, in + used, c->len = have - used);
  }
  flush(c);
  if (c->closing && !c->shut) shut(self, c);
  else if (!ax_stream_writable(s)) ax_stream_read_stop(s); /* a client that does not read */
}

static void on_drain(ax_stream_t *s, int status, void *self) {
  (void)status, (void)self;
  ax_stream_read_start(s, on_read);
}

static int conn_init(ax_actor_t *self, void *state, void *arg) {
  struct conn *c = state;
  c->s = ((ax_conn_t *)arg)->stream;
  c->deadline = (int64_t)ax_loop_now(ax_actor_loop(self)) + (int64_t)cfg.timeout_ms;
  ax_stream_nodelay(c->s, true);
  ax_stream_set_write_limits(c->s, 256 * 1024, 0, on_drain);
  ax_stream_set_write_timeout(c->s, cfg.timeout_ms);
  return ax_after(self, cfg.timeout_ms, DEADLINE, NULL) < 0 ? -1 : ax_stream_read_start(c->s, on_read);
}

/* No complete head by the deadline (and nothing left to send: the write
 * timeout guards that), or a closing peer that did not close: end it. */
static void conn_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  struct conn *c = state;
  int64_t left = c->deadline - (int64_t)ax_loop_now(ax_actor_loop(self));
  if (ax_stream_write_queued(c->s)) left = (int64_t)cfg.timeout_ms;
  if (m->tag == DEADLINE && (left <= 0 || ax_after(self, (uint64_t)left, DEADLINE, NULL) < 0))
    ax_exit(self, AX_EXIT_NORMAL);
}

int main(int argc, char **argv) {
  ax_rt_options_t o = {.workers = 1, .stop_on_signals = true};
  static const ax_behaviour_t conn = {sizeof(struct conn), conn_init, conn_receive, NULL, "http"};
  unsigned long port = 0;
  for (int i = 1; i < argc; i += 2) {
    const char *k = argv[i], *val = i + 1 < argc ? argv[i + 1] : "";
    char *end;
    unsigned long v = strtoul(val, &end, 10);
    bool num = *val && !*end, ok = true;
    if (!strcmp(k, "--dir") && *val && cfg.dir == AT_FDCWD) cfg.dir = open(val, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    else if (!strcmp(k, "--port") && num && v <= 65535) port = v;
    else if (!strcmp(k, "--workers") && num && v >= 1 && v <= 256) o.workers = (unsigned)v;
    else if (!strcmp(k, "--header-timeout-ms") && num && v >= 1) cfg.timeout_ms = v;
    else ok = false;
    if (!ok || cfg.dir == -1) {
      fprintf(stderr, "usage: %s [--port P] [--workers N] [--dir D] [--header-timeout-ms MS]\n", argv[0]);
      return 2;
    }
  }
  ax_rt_t *rt;
  ax_acceptor_t *acc;
  ax_addr_t addr;
  int rc;
  if ((rc = ax_addr_ip("127.0.0.1", (unsigned)port, &addr)) || (rc = ax_rt_new(&o, &rt)) ||
      (rc = ax_listen(rt, &addr, &conn, NULL, &acc)) || (rc = ax_acceptor_addr(acc, &addr))) {
    fprintf(stderr, "httpd: %s\n", ax_strerror(rc));
    return 1;
  }
  printf("listening on 127.0.0.1:%u\n", ax_addr_port(&addr));
  fflush(stdout);
  ax_rt_join(rt); /* until SIGINT or SIGTERM */
  ax_rt_free(rt);
  return 0;
}
