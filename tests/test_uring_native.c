/*
 * The native io_uring stream driver (src/proactor/stream_uring.c), through
 * the public API on loops created with AX_BACKEND_URING. Skipped, with the
 * reason, when the kernel or the environment gives no native proactor.
 *
 * Echo of 16 MB in random write sizes over a socketpair and over TCP
 * (ax_connect), checked byte for byte; read_stop/read_start while data
 * flows (completions posted after the stop are held, delivered in order);
 * close with a recv and a send in the kernel (one close callback, queued
 * writes -ECANCELED, the peer reads EOF, the fd is gone); 1,000 streams
 * closed at once; the buffer ring exhausted by a user keeping every buffer
 * (reads go on through the pool, the ring refills on release); buffers kept
 * past the callback are not overwritten; sendfile on a full socket,
 * shutdown, splice, a pipe (readiness driver); detach right after
 * read_stop, and from the read callback in the middle of a burst (-EBUSY
 * while bytes are posted, else the rest is in the fd: none lost); a loop
 * freed with streams open, sending, connecting and closing (clean under
 * ASan, peers see EOF at once); a loop run by one thread, then by another
 * (the ring is replaced) while echoing; AXON_PROACTOR=readiness.
 *
 * Listeners (src/proactor/listener_uring.c, multishot accept): up to 1,024
 * connections accepted in rounds, in order and with the right peer
 * address; close from the first callback with 49 connections pending (no
 * callback after it, the port free at once, every client sees its end,
 * no fd left); pause before the first run and from a callback (nothing
 * accepted, or what the kernel had accepted held and handed over after the
 * resume, in order, never inside it); EMFILE in a child whose
 * RLIMIT_NOFILE leaves room for 6 fds (one report, connections shed, a
 * handful of iterations per second, recovery); ax_loop_free with a
 * listener open, one closed from its callback and one paused with
 * connections held; a loop run by one thread, then another (the accept is
 * armed again on the new ring).
 */
#include "testutil.h"

#include <poll.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>

/* ---- helpers ------------------------------------------------------------ */

static ax_loop_t *uloop(void) { return ax_test_loop_on(AX_BACKEND_URING); }

static ax_proactor_info_t pinfo(ax_loop_t *loop) {
  ax_proactor_info_t i;
  assert_int_equal(ax_proactor_info(loop, &i), 0);
  return i;
}

/* Skip the test (with the reason) when the loop's proactor is not native. */
#define NEED_NATIVE(loop)                                                      \
  do {                                                                         \
    if (!pinfo(loop).native) {                                                 \
      AX_FREE_LOOP(loop);                                                      \
      printf("native proactor not available\n");                               \
      skip();                                                                  \
    }                                                                          \
  } while (0)

/* Byte @i of every test stream. */
static uint8_t pat(uint64_t i) {
  return (uint8_t)((i * 2654435761u) >> 11 ^ i >> 17);
}

static void fill(uint8_t *p, uint64_t from, size_t n) {
  for (size_t k = 0; k < n; k++)
    p[k] = pat(from + k);
}

static bool check(const uint8_t *p, uint64_t from, size_t n) {
  for (size_t k = 0; k < n; k++)
    if (p[k] != pat(from + k))
      return false;
  return true;
}

static void closed_cb(ax_stream_t *s, void *ud) {
  (void)s;
  ++*(int *)ud;
}

/* A stream on a new socketpair; the other end is returned in *@peer. */
static ax_stream_t *sp_stream(ax_loop_t *loop, int *peer, void *ud) {
  int sv[2];
  ax_stream_t *s;
  sp_new(sv);
  assert_int_equal(ax_stream_open(loop, sv[0], ud, &s), 0);
  *peer = sv[1];
  return s;
}

static void set_blocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  assert_int_equal(fcntl(fd, F_SETFL, fl & ~O_NONBLOCK), 0);
}

/* Read @fd until EOF within @ms; returns the bytes read, -1 on timeout. */
static long drain_to_eof(int fd, int ms) {
  char buf[65536];
  long total = 0;
  uint64_t end = mono_ms() + (uint64_t)ms;
  for (;;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    ssize_t n;
    if (mono_ms() > end)
      return -1;
    if (poll(&p, 1, 50) <= 0)
      continue;
    n = read(fd, buf, sizeof buf);
    if (n == 0)
      return total;
    if (n > 0)
      total += n;
    else if (errno != EAGAIN && errno != EINTR)
      return total; /* ECONNRESET counts as the end too */
  }
}

/* ---- echo ----------------------------------------------------------------- */

#define ECHO_BYTES ((uint64_t)16 << 20)

typedef struct echo {
  ax_stream_t *cli, *srv;
  uint64_t sent, recvd, rng;
  uint8_t *chunk;
  bool bad, done, connected;
  int closed;
} echo_t;

static void cli_pump(ax_stream_t *s, int status, void *ud) {
  echo_t *e = ud;
  (void)status;
  while (e->sent < ECHO_BYTES && ax_stream_writable(s)) {
    size_t n = 1 + xorshift(&e->rng) % 65536;
    if (n > ECHO_BYTES - e->sent)
      n = (size_t)(ECHO_BYTES - e->sent);
    fill(e->chunk, e->sent, n);
    assert_int_equal(ax_stream_write(s, e->chunk, n, NULL, NULL), 0);
    e->sent += n;
  }
}

static void cli_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  echo_t *e = ud;
  (void)s;
  if (status <= 0) {
    e->bad = true;
    return;
  }
  if (!check((uint8_t *)ax_slice_ptr(*d), e->recvd, d->len))
    e->bad = true;
  e->recvd += d->len;
  e->done = e->recvd == ECHO_BYTES;
}

static void srv_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud);

static void srv_drain(ax_stream_t *s, int status, void *ud) {
  (void)status, (void)ud;
  assert_int_equal(ax_stream_read_start(s, srv_read), 0);
}

static void srv_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  echo_t *e = ud;
  if (status <= 0 || ax_stream_write_slices(s, d, 1, NULL, NULL) < 0) {
    e->bad = true;
    return;
  }
  if (!ax_stream_writable(s))
    ax_stream_read_stop(s);
}

static void echo_start(echo_t *e) {
  assert_int_equal(ax_stream_set_write_limits(e->srv, 64 * 1024, 0, srv_drain),
                   0);
  assert_int_equal(ax_stream_set_write_limits(e->cli, 256 * 1024, 0, cli_pump),
                   0);
  assert_int_equal(ax_stream_read_start(e->srv, srv_read), 0);
  assert_int_equal(ax_stream_read_start(e->cli, cli_read), 0);
}

static void echo_finish(ax_loop_t *loop, echo_t *e) {
  assert_true(RUN_UNTIL(loop, e->done || e->bad, 120000));
  assert_false(e->bad);
  assert_int_equal(e->recvd, ECHO_BYTES);
  ax_stream_close(e->cli, closed_cb);
  ax_stream_close(e->srv, closed_cb);
  ax_stream_set_data(e->cli, &e->closed);
  ax_stream_set_data(e->srv, &e->closed);
  assert_true(RUN_UNTIL(loop, e->closed == 2, 5000));
  free(e->chunk);
}

static void test_echo_socketpair(void **state) {
  ax_loop_t *loop = uloop();
  echo_t e = {.rng = 0x9e3779b97f4a7c15u};
  int sv[2];
  (void)state;
  NEED_NATIVE(loop);
  e.chunk = malloc(65536);
  sp_new(sv);
  assert_int_equal(ax_stream_open(loop, sv[0], &e, &e.cli), 0);
  assert_int_equal(ax_stream_open(loop, sv[1], &e, &e.srv), 0);
  echo_start(&e);
  cli_pump(e.cli, 0, &e);
  echo_finish(loop, &e);
  AX_FREE_LOOP(loop);
}

static void on_connected(ax_stream_t *s, int status, void *ud) {
  echo_t *e = ud;
  assert_int_equal(status, 0);
  e->connected = true;
  cli_pump(s, 0, e);
}

static void on_accept(ax_listener_t *l, int status, int fd,
                      const ax_addr_t *peer, void *ud) {
  echo_t *e = ud;
  (void)peer;
  assert_int_equal(status, 0);
  assert_null(e->srv);
  assert_int_equal(ax_stream_open(ax_listener_loop(l), fd, e, &e->srv), 0);
  ax_stream_nodelay(e->srv, true);
  assert_int_equal(
      ax_stream_set_write_limits(e->srv, 64 * 1024, 0, srv_drain), 0);
  assert_int_equal(ax_stream_read_start(e->srv, srv_read), 0);
}

static void test_echo_tcp(void **state) {
  ax_loop_t *loop = uloop();
  echo_t e = {.rng = 12345};
  ax_listener_t *l;
  ax_addr_t a;
  (void)state;
  NEED_NATIVE(loop);
  e.chunk = malloc(65536);
  assert_int_equal(ax_addr_ip("127.0.0.1", 0, &a), 0);
  assert_int_equal(ax_listener_new(loop, &a, NULL, on_accept, &e, &l), 0);
  assert_int_equal(ax_listener_addr(l, &a), 0);
  assert_int_equal(ax_connect(loop, &a, 5000, on_connected, &e, &e.cli), 0);
  assert_int_equal(
      ax_stream_set_write_limits(e.cli, 256 * 1024, 0, cli_pump), 0);
  assert_int_equal(ax_stream_read_start(e.cli, cli_read), 0);
  assert_true(RUN_UNTIL(loop, e.connected && e.srv != NULL, 5000));
  echo_finish(loop, &e);
  ax_listener_close(l);
  AX_FREE_LOOP(loop);
}

/* ---- read_stop / read_start while data flows ---------------------------- */

typedef struct toggle {
  ax_stream_t *s;
  ax_source_t *restart;
  uint64_t recvd, stops;
  bool bad;
} toggle_t;

static void tg_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  toggle_t *t = ud;
  if (status <= 0) {
    t->bad = true;
    return;
  }
  if (!check((uint8_t *)ax_slice_ptr(*d), t->recvd, d->len))
    t->bad = true;
  t->recvd += d->len;
  /* Stop after most callbacks: the completions of this batch (the kernel
   * posts 16 KiB at a time) arrive after the stop and must be kept. */
  if (t->stops++ % 4 != 3) {
    assert_int_equal(ax_stream_read_stop(s), 0);
    assert_int_equal(ax_defer_start(t->restart), 0);
  }
}

static void tg_restart(ax_source_t *src, void *data) {
  toggle_t *t = data;
  (void)src;
  assert_int_equal(ax_stream_read_start(t->s, tg_read), 0);
}

static void test_read_stop_start(void **state) {
  ax_loop_t *loop = uloop();
  toggle_t t = {0};
  uint8_t *buf = malloc(200000);
  uint64_t written = 0;
  int peer;
  (void)state;
  NEED_NATIVE(loop);
  t.s = sp_stream(loop, &peer, &t);
  assert_int_equal(ax_defer_new(loop, tg_restart, &t, &t.restart), 0);
  assert_int_equal(ax_stream_read_start(t.s, tg_read), 0);
  for (int round = 0; round < 40 && !t.bad; round++) {
    /* Several buffers' worth at once, then let the loop take them. */
    size_t n = 20000 + (size_t)round * 3000;
    fill(buf, written, n);
    assert_int_equal(write(peer, buf, n), (ssize_t)n);
    written += n;
    assert_true(RUN_UNTIL(loop, t.recvd == written || t.bad, 5000));
  }
  assert_false(t.bad);
  assert_int_equal(t.recvd, written);
  /* Stopped with nothing in flight: data waits in the socket. */
  ax_source_stop(t.restart);
  assert_int_equal(ax_stream_read_stop(t.s), 0);
  run_for(loop, 20);
  put(peer, 100);
  run_for(loop, 20);
  assert_int_equal(t.recvd, written);
  close(peer);
  ax_stream_close(t.s, NULL);
  ax_source_free(t.restart);
  run_for(loop, 10);
  free(buf);
  AX_FREE_LOOP(loop);
}

/* ---- close with operations in the kernel -------------------------------- */

typedef struct cl {
  int closed, wdone, wcanceled;
  int read_calls;
} cl_t;

static void cl_write(ax_stream_t *s, int status, void *ud) {
  cl_t *c = ud;
  (void)s;
  c->wdone++;
  c->wcanceled += status == -ECANCELED;
}

static void cl_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  (void)s, (void)status, (void)d;
  ((cl_t *)ud)->read_calls++;
}

static void test_close_inflight(void **state) {
  ax_loop_t *loop = uloop();
  cl_t c = {0};
  size_t big = 4 << 20;
  char *data = calloc(1, big);
  int peer, fds;
  ax_stream_t *s;
  (void)state;
  NEED_NATIVE(loop);
  fds = count_fds();
  s = sp_stream(loop, &peer, &c);
  assert_int_equal(count_fds(), fds + 2);
  assert_int_equal(ax_stream_read_start(s, cl_read), 0);
  /* The peer reads nothing: most of this waits in a send in the kernel. */
  assert_int_equal(ax_stream_write(s, data, big, cl_write, &c), 0);
  assert_int_equal(ax_stream_write(s, data, 1000, cl_write, &c), 0);
  run_for(loop, 30);
  assert_true(ax_stream_write_queued(s) > 0);
  assert_int_equal(ax_stream_close(s, closed_cb), 0);
  ax_stream_set_data(s, &c.closed);
  assert_int_equal(ax_stream_close(s, closed_cb), -EALREADY);
  assert_true(RUN_UNTIL(loop, c.closed == 1, 5000));
  run_for(loop, 20);
  assert_int_equal(c.closed, 1);
  assert_int_equal(c.read_calls, 0);
  assert_int_equal(count_fds(), fds + 1);
  /* The peer gets what was sent before the close, then EOF. */
  assert_true(drain_to_eof(peer, 5000) >= 0);
  close(peer);
  free(data);
  AX_FREE_LOOP(loop);
  /* The write callbacks ran before the close callback: both -ECANCELED. */
  assert_int_equal(c.wdone, 2);
  assert_int_equal(c.wcanceled, 2);
}

static void raise_nofile(void) {
  struct rlimit r;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &r), 0);
  r.rlim_cur = r.rlim_max;
  setrlimit(RLIMIT_NOFILE, &r);
}

static int fd_budget(void) {
  struct rlimit r;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &r), 0);
  return (int)(r.rlim_cur > 100000 ? 100000 : r.rlim_cur) - count_fds() - 64;
}

static void noop_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  (void)s, (void)status, (void)d, (void)ud;
}

static void test_close_many(void **state) {
  ax_loop_t *loop = uloop();
  int n = 1000, closed = 0, eofs = 0;
  ax_stream_t **ss;
  int *peers;
  (void)state;
  NEED_NATIVE(loop);
  if (fd_budget() < 2 * n)
    n = fd_budget() / 2;
  ss = calloc((size_t)n, sizeof(*ss));
  peers = calloc((size_t)n, sizeof(*peers));
  for (int i = 0; i < n; i++) {
    ss[i] = sp_stream(loop, &peers[i], &closed);
    assert_int_equal(ax_stream_read_start(ss[i], noop_read), 0);
  }
  run_for(loop, 20); /* every recv in the kernel */
  assert_int_equal(pinfo(loop).streams, (size_t)n);
  for (int i = 0; i < n; i++)
    assert_int_equal(ax_stream_close(ss[i], closed_cb), 0);
  assert_true(RUN_UNTIL(loop, closed == n, 10000));
  for (int i = 0; i < n; i++) {
    char c;
    eofs += read(peers[i], &c, 1) == 0;
    close(peers[i]);
  }
  assert_int_equal(eofs, n);
  assert_int_equal(pinfo(loop).streams, 0);
  free(ss);
  free(peers);
  AX_FREE_LOOP(loop);
}

/* ---- buffers: exhaustion, kept buffers ---------------------------------- */

typedef struct keep {
  ax_slice_t *kept;
  size_t nkept, cap;
  int *got;        /* per stream: bytes */
  bool hold;       /* keep every buffer */
  bool bad;
} keep_t;

/* The stream's user data is its index; the keeper is global. */
static keep_t *keep_of;

static void keep_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  keep_t *k = keep_of;
  int i = (int)(intptr_t)ud;
  (void)s;
  if (status <= 0) {
    k->bad = true;
    return;
  }
  k->got[i] += (int)d->len;
  if (k->hold) {
    if (k->nkept == k->cap) {
      k->cap = k->cap ? k->cap * 2 : 64;
      k->kept = realloc(k->kept, k->cap * sizeof(*k->kept));
    }
    ax_buf_ref(d->buf);
    k->kept[k->nkept++] = *d;
  }
}

static void keep_release(keep_t *k) {
  for (size_t i = 0; i < k->nkept; i++)
    ax_buf_unref(k->kept[i].buf);
  k->nkept = 0;
}

static bool all_got(const keep_t *k, int n, int want) {
  for (int i = 0; i < n; i++)
    if (k->got[i] != want)
      return false;
  return true;
}

/* Each of @n peers writes @len bytes. */
static void put_all(const int *peers, int n, size_t len) {
  static char buf[1 << 15];
  assert_true(len <= sizeof buf);
  memset(buf, 'y', len);
  for (int i = 0; i < n; i++)
    assert_int_equal(write(peers[i], buf, len), (ssize_t)len);
}

static void test_ring_exhaustion(void **state) {
  ax_loop_t *loop = uloop();
  enum { N = 300, LEN = 20000 }; /* 6 MB: more than the ring's 4 MiB */
  keep_t k = {.hold = true};
  ax_stream_t *ss[N];
  int peers[N];
  ax_proactor_info_t pi;
  (void)state;
  NEED_NATIVE(loop);
  assert_true(pinfo(loop).buf_ring);
  keep_of = &k;
  k.got = calloc(N, sizeof(int));
  for (int i = 0; i < N; i++) {
    ss[i] = sp_stream(loop, &peers[i], (void *)(intptr_t)i);
    assert_int_equal(ax_stream_read_start(ss[i], keep_read), 0);
  }
  run_for(loop, 10);
  put_all(peers, N, LEN);
  /* The user keeps every buffer: the ring runs dry, recvs end in -ENOBUFS,
   * and the reads go on through the loop's pool. */
  assert_true(RUN_UNTIL(loop, all_got(&k, N, LEN) || k.bad, 10000));
  assert_false(k.bad);
  pi = pinfo(loop);
  assert_true(pi.read_bufs_out > 256);
  assert_true(ax_bufpool_outstanding(ax_loop_bufpool(loop)) > 0);
  /* Released: every buffer is back, the ring is full again. */
  keep_release(&k);
  pi = pinfo(loop);
  assert_int_equal(pi.read_bufs_out, 0);
  assert_int_equal(ax_bufpool_outstanding(ax_loop_bufpool(loop)), 0);
  /* And reads come from the ring again, with nobody starving. */
  k.hold = false;
  put_all(peers, N, 50);
  assert_true(RUN_UNTIL(loop, all_got(&k, N, LEN + 50) || k.bad, 10000));
  assert_false(k.bad);
  for (int i = 0; i < N; i++) {
    ax_stream_close(ss[i], NULL);
    close(peers[i]);
  }
  run_for(loop, 20);
  free(k.got);
  free(k.kept);
  AX_FREE_LOOP(loop);
}

/* Buffers kept past the callback keep their bytes while later reads land
 * in other buffers. */
static void test_keep_past_callback(void **state) {
  ax_loop_t *loop = uloop();
  keep_t k = {.hold = true};
  uint8_t buf[3000];
  uint64_t off = 0;
  int peer;
  ax_stream_t *s;
  (void)state;
  NEED_NATIVE(loop);
  keep_of = &k;
  k.got = calloc(1, sizeof(int));
  s = sp_stream(loop, &peer, (void *)(intptr_t)0);
  assert_int_equal(ax_stream_read_start(s, keep_read), 0);
  for (int i = 0; i < 100; i++) {
    size_t n = 1 + (size_t)(i * 37) % sizeof buf;
    fill(buf, off, n);
    assert_int_equal(write(peer, buf, n), (ssize_t)n);
    off += n;
    assert_true(RUN_UNTIL(loop, (uint64_t)k.got[0] == off, 5000));
  }
  /* Everything is still held: the bytes are what was sent. */
  uint64_t at = 0;
  for (size_t i = 0; i < k.nkept; i++) {
    assert_true(check((uint8_t *)ax_slice_ptr(k.kept[i]), at, k.kept[i].len));
    at += k.kept[i].len;
  }
  assert_int_equal(at, off);
  keep_release(&k);
  ax_stream_close(s, NULL);
  close(peer);
  run_for(loop, 10);
  assert_int_equal(pinfo(loop).read_bufs_out, 0);
  free(k.got);
  free(k.kept);
  AX_FREE_LOOP(loop);
}

/* ---- sendfile, shutdown, splice, pipes, detach --------------------------- */

static void count_cb(ax_stream_t *s, int status, void *ud) {
  (void)s;
  *(int *)ud = status == 0 ? 1 : status;
}

static void test_sendfile_shutdown(void **state) {
  ax_loop_t *loop = uloop();
  char path[] = "/tmp/axon-native-XXXXXX";
  size_t len = 3 << 20;
  uint8_t *data = malloc(len), *got = malloc(len);
  int f = mkstemp(path), peer, sent = 0, shut = 0;
  size_t have = 0;
  ax_stream_t *s;
  (void)state;
  NEED_NATIVE(loop);
  assert_true(f >= 0);
  unlink(path);
  fill(data, 0, len);
  assert_int_equal(write(f, data, len), (ssize_t)len);
  s = sp_stream(loop, &peer, NULL);
  assert_int_equal(ax_stream_write(s, data, 1000, NULL, NULL), 0);
  assert_int_equal(ax_stream_sendfile(s, f, 1000, len - 2000, count_cb,
                                      &sent), 0);
  assert_int_equal(ax_stream_write(s, data + len - 1000, 1000, NULL, NULL), 0);
  ax_stream_set_data(s, &shut); /* the shutdown callback's */
  assert_int_equal(ax_stream_shutdown(s, count_cb), 0);
  /* The peer reads slowly: the socket fills, the file waits for room. */
  while (have < len) {
    ssize_t n;
    run_for(loop, 1);
    n = read(peer, got + have, len - have < 100000 ? len - have : 100000);
    if (n > 0)
      have += (size_t)n;
    else
      assert_true(n < 0 && errno == EAGAIN);
  }
  assert_memory_equal(got, data, len);
  assert_true(RUN_UNTIL(loop, sent == 1 && shut == 1, 5000));
  assert_int_equal(drain_to_eof(peer, 2000), 0);
  ax_stream_close(s, NULL);
  run_for(loop, 5);
  close(peer);
  close(f);
  free(data);
  free(got);
  AX_FREE_LOOP(loop);
}

static void spliced(ax_stream_t *from, ax_stream_t *to, int status,
                    uint64_t bytes, void *ud) {
  (void)from, (void)to;
  *(uint64_t *)ud = status == AX_EOF ? bytes : 1;
}

static void test_splice(void **state) {
  ax_loop_t *loop = uloop();
  size_t len = 2 << 20, have = 0, put_ = 0;
  uint8_t *data = malloc(len), *got = malloc(len);
  uint64_t done = 0;
  int pa, pb;
  ax_stream_t *a, *b;
  (void)state;
  NEED_NATIVE(loop);
  fill(data, 0, len);
  a = sp_stream(loop, &pa, NULL);
  b = sp_stream(loop, &pb, NULL);
  assert_int_equal(ax_splice(a, b, spliced, &done), 0);
  while (have < len) {
    ssize_t n;
    if (put_ < len) {
      n = write(pa, data + put_, len - put_ < 50000 ? len - put_ : 50000);
      if (n > 0)
        put_ += (size_t)n;
      if (put_ == len)
        shutdown(pa, SHUT_WR);
    }
    run_for(loop, 1);
    n = read(pb, got + have, len - have);
    if (n > 0)
      have += (size_t)n;
  }
  assert_memory_equal(got, data, len);
  assert_true(RUN_UNTIL(loop, done != 0, 5000));
  assert_int_equal(done, len);
  ax_stream_close(a, NULL);
  ax_stream_close(b, NULL);
  run_for(loop, 5);
  close(pa);
  close(pb);
  free(data);
  free(got);
  AX_FREE_LOOP(loop);
}

static void pipe_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  (void)s, (void)d;
  *(int *)ud += status > 0 ? status : 0;
}

static void test_pipe_and_detach(void **state) {
  ax_loop_t *loop = uloop();
  int p[2], got = 0, peer, fd = -1;
  ax_stream_t *s;
  (void)state;
  NEED_NATIVE(loop);
  /* A pipe: the readiness driver, on the same ring. */
  assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
  assert_int_equal(ax_stream_open(loop, p[0], NULL, &s), 0);
  assert_int_equal(ax_stream_read_start(s, pipe_read), 0);
  ax_stream_set_data(s, &got);
  put(p[1], 300);
  assert_true(RUN_UNTIL(loop, got == 300, 5000));
  ax_stream_close(s, NULL);
  close(p[1]);
  /* Detach right after read_stop, the recv still in the kernel. */
  s = sp_stream(loop, &peer, &got);
  assert_int_equal(ax_stream_read_start(s, pipe_read), 0);
  run_for(loop, 5);
  assert_int_equal(ax_stream_read_stop(s), 0);
  assert_int_equal(ax_stream_detach(s, &fd), 0);
  /* The fd is open and nothing of ours reads it any more. */
  put(peer, 10);
  run_for(loop, 10);
  char c[16];
  assert_int_equal(read(fd, c, sizeof c), 10);
  close(fd);
  close(peer);
  run_for(loop, 5);
  AX_FREE_LOOP(loop);
}

/* Detach from the read callback while more of the same burst is posted:
 * either -EBUSY (bytes to read first, delivered on read_start) or the fd
 * goes with the rest still in the socket. No byte is lost either way. */
typedef struct dcb {
  ax_stream_t *s;
  size_t got;
  int fd, rc;
  bool tried;
} dcb_t;

static void dcb_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  dcb_t *x = ud;
  if (status <= 0)
    return;
  x->got += d->len;
  if (!x->tried) {
    x->tried = true;
    assert_int_equal(ax_stream_read_stop(s), 0);
    x->rc = ax_stream_detach(s, &x->fd);
  }
}

static void test_detach_in_callback(void **state) {
  ax_loop_t *loop = uloop();
  static char big[100000];
  dcb_t x = {.fd = -1};
  int peer;
  (void)state;
  NEED_NATIVE(loop);
  int detached = 0;
  for (int round = 0; round < 20; round++) {
    /* Odd rounds: one small completion, then more bytes after it. */
    size_t first = round % 2 ? 1000 : sizeof big, total = first, rest = 0;
    x = (dcb_t){.fd = -1};
    x.s = sp_stream(loop, &peer, &x);
    assert_int_equal(ax_stream_read_start(x.s, dcb_read), 0);
    run_for(loop, 2);
    assert_int_equal(write(peer, big, first), (ssize_t)first);
    assert_true(RUN_UNTIL(loop, x.tried, 5000));
    if (round % 2) {
      assert_int_equal(write(peer, big, 5000), 5000);
      total += 5000;
    }
    if (x.rc == 0) {
      detached++;
      run_for(loop, 5); /* the fd is ours now: nothing reads it */
      for (ssize_t n; (n = read(x.fd, big, sizeof big)) > 0;)
        rest += (size_t)n;
      close(x.fd);
    } else {
      assert_int_equal(x.rc, -EBUSY);
      assert_int_equal(ax_stream_read_start(x.s, dcb_read), 0);
      assert_true(RUN_UNTIL(loop, x.got == total, 5000));
      ax_stream_close(x.s, NULL);
    }
    assert_int_equal(x.got + rest, total);
    close(peer);
  }
  assert_true(detached > 0);
  run_for(loop, 5);
  AX_FREE_LOOP(loop);
}

/* ---- loop freed with streams in every state ------------------------------ */

typedef struct lf {
  int closed;
  ax_slice_t kept;
} lf_t;

static void lf_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  lf_t *l = ud;
  (void)s;
  if (status > 0 && l->kept.buf == NULL) {
    ax_buf_ref(d->buf);
    l->kept = *d;
  }
}

static void lf_closed(ax_stream_t *s, void *ud) {
  lf_t *l = ud;
  (void)s;
  l->closed++;
  /* A buffer kept until the close callback, even during ax_loop_free. */
  if (l->kept.buf != NULL) {
    ax_buf_unref(l->kept.buf);
    l->kept.buf = NULL;
  }
}

static void lf_connected(ax_stream_t *s, int status, void *ud) {
  (void)s, (void)status, (void)ud;
}

static void test_loop_free_open(void **state) {
  int fds = count_fds();
  ax_loop_t *loop = uloop();
  lf_t l = {0};
  size_t big = 2 << 20;
  char *data = calloc(1, big);
  int peers[4], lfd;
  ax_stream_t *s[5];
  ax_addr_t a;
  socklen_t alen = sizeof(a.u);
  (void)state;
  NEED_NATIVE(loop);
  /* Reading, with a buffer kept. */
  s[0] = sp_stream(loop, &peers[0], &l);
  assert_int_equal(ax_stream_read_start(s[0], lf_read), 0);
  put(peers[0], 100);
  /* Sending to a peer that does not read. */
  s[1] = sp_stream(loop, &peers[1], &l);
  assert_int_equal(ax_stream_write(s[1], data, big, NULL, NULL), 0);
  assert_int_equal(ax_stream_read_start(s[1], lf_read), 0);
  /* Closing, its cancel not even submitted. */
  s[2] = sp_stream(loop, &peers[2], &l);
  assert_int_equal(ax_stream_read_start(s[2], lf_read), 0);
  /* Idle. */
  s[3] = sp_stream(loop, &peers[3], &l);
  /* Connecting to a listening socket nobody accepts from. */
  lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_int_equal(ax_addr_ip("127.0.0.1", 0, &a), 0);
  assert_int_equal(bind(lfd, &a.u.sa, a.len), 0);
  assert_int_equal(listen(lfd, 4), 0);
  assert_int_equal(getsockname(lfd, &a.u.sa, &alen), 0);
  a.len = alen;
  assert_int_equal(ax_connect(loop, &a, 0, lf_connected, &l, &s[4]), 0);
  run_for(loop, 20);
  assert_non_null(l.kept.buf);
  for (int i = 0; i < 5; i++)
    ax_stream_set_data(s[i], &l);
  assert_int_equal(ax_stream_close(s[2], lf_closed), 0);
  for (int i = 0; i < 5; i++)
    if (i != 2)
      assert_int_equal(ax_stream_close(s[i], lf_closed), 0);
  /* Nothing ran: every close waits for cancellations. */
  AX_FREE_LOOP(loop);
  assert_int_equal(l.closed, 5);
  assert_null(l.kept.buf);
  for (int i = 0; i < 4; i++)
    close(peers[i]);
  close(lfd);
  free(data);
  /* The ring is gone, and the files its requests held with it. */
  assert_int_equal(count_fds(), fds);
}

/* Streams left open at ax_loop_free are closed by it. */
static void test_loop_free_unclosed(void **state) {
  ax_loop_t *loop = uloop();
  int peers[3];
  (void)state;
  NEED_NATIVE(loop);
  for (int i = 0; i < 3; i++) {
    ax_stream_t *s = sp_stream(loop, &peers[i], NULL);
    assert_int_equal(ax_stream_read_start(s, noop_read), 0);
    assert_int_equal(ax_stream_write(s, "abc", 3, NULL, NULL), 0);
  }
  run_for(loop, 10);
  AX_FREE_LOOP(loop);
  /* The bytes, then EOF: the fds are closed, and the ring that held the
   * files of their recvs is gone. */
  for (int i = 0; i < 3; i++) {
    char c[8];
    assert_int_equal(read(peers[i], c, sizeof c), 3);
    assert_int_equal(read(peers[i], c, sizeof c), 0);
    close(peers[i]);
  }
}

/* ---- a loop run by one thread, then by another --------------------------- */

#define MOVE_BYTES ((uint64_t)8 << 20)

typedef struct mv {
  ax_loop_t *loop;
  ax_stream_t *s;
  int peer;
  _Atomic uint64_t recvd;   /* by the stream (loop thread) */
  _Atomic uint64_t echoed;  /* read back by the peer's reader */
  _Atomic bool bad;
  uint64_t stop_at;         /* the loop thread stops there (0: never) */
  bool stopping;
} mv_t;

static void mv_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud);

static void mv_drain(ax_stream_t *s, int status, void *ud) {
  (void)status, (void)ud;
  assert_int_equal(ax_stream_read_start(s, mv_read), 0);
}

static void mv_read(ax_stream_t *s, int status, ax_slice_t *d, void *ud) {
  mv_t *m = ud;
  uint64_t at = atomic_load(&m->recvd);
  if (status <= 0 || !check((uint8_t *)ax_slice_ptr(*d), at, d->len) ||
      ax_stream_write_slices(s, d, 1, NULL, NULL) < 0) {
    atomic_store(&m->bad, true);
    ax_loop_stop(m->loop);
    return;
  }
  atomic_store(&m->recvd, at + d->len);
  if (!ax_stream_writable(s))
    ax_stream_read_stop(s);
  if (m->stop_at && at + d->len >= m->stop_at && !m->stopping) {
    m->stopping = true;
    ax_loop_stop(m->loop);
  }
}

static void *mv_writer(void *arg) {
  mv_t *m = arg;
  uint8_t buf[4096];
  uint64_t off = 0, rng = 7;
  while (off < MOVE_BYTES && !atomic_load(&m->bad)) {
    size_t n = 1 + xorshift(&rng) % sizeof buf;
    if (n > MOVE_BYTES - off)
      n = (size_t)(MOVE_BYTES - off);
    fill(buf, off, n);
    ssize_t w = write(m->peer, buf, n);
    if (w < 0)
      break;
    off += (uint64_t)w;
  }
  return NULL;
}

static void *mv_reader(void *arg) {
  mv_t *m = arg;
  uint8_t buf[65536];
  uint64_t off = 0;
  while (off < MOVE_BYTES) {
    ssize_t n = read(m->peer, buf, sizeof buf);
    if (n <= 0 || !check(buf, off, (size_t)n)) {
      atomic_store(&m->bad, true);
      break;
    }
    off += (uint64_t)n;
    atomic_store(&m->echoed, off);
  }
  ax_loop_stop(m->loop); /* thread-safe */
  return NULL;
}

static void *mv_run(void *arg) {
  mv_t *m = arg;
  assert_int_equal(ax_loop_run(m->loop, AX_RUN_DEFAULT), 0);
  return NULL;
}

static void test_ring_move(void **state) {
  mv_t m = {.loop = uloop(), .stop_at = MOVE_BYTES / 3};
  pthread_t w, r, t;
  (void)state;
  NEED_NATIVE(m.loop);
  m.s = sp_stream(m.loop, &m.peer, &m);
  set_blocking(m.peer);
  assert_int_equal(ax_stream_set_write_limits(m.s, 64 * 1024, 0, mv_drain), 0);
  assert_int_equal(ax_stream_read_start(m.s, mv_read), 0);
  guard_start("the ring-move echo", 60);
  assert_int_equal(pthread_create(&w, NULL, mv_writer, &m), 0);
  assert_int_equal(pthread_create(&r, NULL, mv_reader, &m), 0);
  /* Thread A runs the loop for a third of the bytes... */
  assert_int_equal(pthread_create(&t, NULL, mv_run, &m), 0);
  pthread_join(t, NULL);
  /* ...thread B, whose ring replaces A's, for the rest. */
  m.stop_at = 0;
  assert_int_equal(pthread_create(&t, NULL, mv_run, &m), 0);
  pthread_join(t, NULL);
  pthread_join(r, NULL);
  pthread_join(w, NULL);
  guard_stop();
  assert_false(atomic_load(&m.bad));
  assert_int_equal(atomic_load(&m.echoed), MOVE_BYTES);
  assert_true(pinfo(m.loop).native);
  ax_stream_close(m.s, NULL);
  run_for(m.loop, 5);
  close(m.peer);
  AX_FREE_LOOP(m.loop);
}

/* ---- listeners: multishot accept ----------------------------------------- */

#define ACC_MAX 1024

/* What an accept callback saw: the fds (kept open unless @drop), the peer
 * ports, in order. */
typedef struct acc {
  ax_listener_t *l;
  int n, errors, emfile;
  int fds[ACC_MAX];
  unsigned ports[ACC_MAX];
  int close_at, pause_at, stop_at; /* on the callback of that accept */
  bool closed, bad, drop, rebound;
  ax_addr_t addr;
} acc_t;

/* A plain listening socket on @a, as a test that the port is free. */
static bool port_free(const ax_addr_t *a) {
  int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool ok;
  assert_true(fd >= 0);
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  ok = bind(fd, &a->u.sa, a->len) == 0 && listen(fd, 1) == 0;
  close(fd);
  return ok;
}

static void acc_cb(ax_listener_t *l, int status, int fd, const ax_addr_t *peer,
                   void *ud) {
  acc_t *a = ud;
  if (status < 0) {
    a->errors++;
    a->emfile += status == -EMFILE;
    return;
  }
  if (a->closed || a->n == ACC_MAX || fd < 0 || peer == NULL ||
      peer->u.sa.sa_family != AF_INET) {
    a->bad = true; /* no callback after close; a real peer address */
    close(fd);
    return;
  }
  a->ports[a->n] = ax_addr_port(peer);
  a->fds[a->n++] = a->drop ? (close(fd), -1) : fd;
  if (a->n == a->pause_at)
    assert_int_equal(ax_listener_pause(l), 0);
  if (a->n == a->close_at) {
    ax_listener_close(l);
    a->closed = true;
    a->rebound = port_free(&a->addr); /* the socket is gone at once */
  }
  if (a->n == a->stop_at)
    ax_loop_stop(ax_listener_loop(l));
}

static void acc_listen(ax_loop_t *loop, acc_t *a) {
  ax_listen_options_t o;
  ax_listen_options_init(&o);
  o.backlog = 4096;
  assert_int_equal(ax_addr_ip("127.0.0.1", 0, &a->addr), 0);
  assert_int_equal(ax_listener_new(loop, &a->addr, &o, acc_cb, a, &a->l), 0);
  assert_int_equal(ax_listener_addr(a->l, &a->addr), 0);
}

/* A client connecting to @a (non-blocking: the kernel completes it into
 * the backlog); its local port in *@port. */
static int acc_client(const ax_addr_t *a, unsigned *port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  ax_addr_t me;
  socklen_t len = sizeof(me.u);
  assert_true(fd >= 0);
  assert_true(connect(fd, &a->u.sa, a->len) == 0 || errno == EINPROGRESS);
  assert_int_equal(getsockname(fd, &me.u.sa, &len), 0);
  me.len = len;
  *port = ax_addr_port(&me);
  return fd;
}

static void acc_close_fds(acc_t *a) {
  for (int i = 0; i < a->n; i++)
    if (a->fds[i] >= 0)
      close(a->fds[i]);
  a->n = 0;
}

/* Each client sees its connection end (EOF or a reset) within @ms. */
static void clients_end(const int *cl, int n, int ms) {
  for (int i = 0; i < n; i++) {
    struct pollfd p = {.fd = cl[i], .events = POLLIN};
    char c;
    assert_int_equal(poll(&p, 1, ms), 1);
    assert_true(read(cl[i], &c, 1) <= 0);
  }
}

static void test_accept_many(void **state) {
  int fds0 = count_fds(), n, *cl;
  unsigned *ports;
  ax_loop_t *loop = uloop();
  acc_t *a = calloc(1, sizeof(*a));
  ax_listener_stats_t st;
  (void)state;
  NEED_NATIVE(loop);
  assert_true(pinfo(loop).multishot_accept);
  n = fd_budget() / 2;
  n = n > ACC_MAX ? ACC_MAX : n;
  assert_true(n >= 100);
  cl = calloc((size_t)n, sizeof(*cl));
  ports = calloc((size_t)n, sizeof(*ports));
  acc_listen(loop, a);
  /* In rounds, while the loop runs: the one operation accepts them all. */
  for (int r = 0, k = 0; r < 10; r++) {
    for (; k < n * (r + 1) / 10; k++)
      cl[k] = acc_client(&a->addr, &ports[k]);
    assert_true(RUN_UNTIL(loop, a->n == k || a->bad, 10000));
  }
  assert_false(a->bad);
  assert_int_equal(a->n, n);
  for (int i = 0; i < n; i++)
    assert_int_equal(a->ports[i], ports[i]); /* in order, the right peer */
  assert_int_equal(ax_listener_stats(a->l, &st), 0);
  assert_int_equal(st.accepted, (uint64_t)n);
  assert_int_equal(st.shed, 0);
  assert_int_equal(a->errors, 0);
  ax_listener_close(a->l);
  acc_close_fds(a);
  for (int i = 0; i < n; i++)
    close(cl[i]);
  run_for(loop, 10);
  AX_FREE_LOOP(loop);
  assert_int_equal(count_fds(), fds0);
  free(cl), free(ports), free(a);
}

/* Closed from the first callback with connections pending: no callback
 * after, the port free when close returns, every other client's
 * connection ends, nothing leaks. */
static void test_accept_close_in_cb(void **state) {
  enum { N = 50 };
  int fds0 = count_fds(), cl[N];
  unsigned port;
  ax_loop_t *loop = uloop();
  acc_t a = {.close_at = 1};
  (void)state;
  NEED_NATIVE(loop);
  acc_listen(loop, &a);
  for (int i = 0; i < N; i++)
    cl[i] = acc_client(&a.addr, &port);
  assert_true(RUN_UNTIL(loop, a.closed, 5000));
  assert_true(a.rebound);
  run_for(loop, 50); /* the rest of the completions, the final one */
  assert_false(a.bad);
  assert_int_equal(a.n, 1);
  acc_close_fds(&a);
  clients_end(cl, N, 2000);
  for (int i = 0; i < N; i++)
    close(cl[i]);
  assert_false(ax_loop_alive(loop)); /* the operation ended */
  AX_FREE_LOOP(loop);
  assert_int_equal(count_fds(), fds0);
}

static void test_accept_pause_resume(void **state) {
  enum { N1 = 20, N2 = 40, N3 = 45 };
  int cl[N3];
  unsigned ports[N3];
  ax_loop_t *loop = uloop();
  acc_t a = {.pause_at = 25};
  ax_listener_stats_t st;
  (void)state;
  NEED_NATIVE(loop);
  acc_listen(loop, &a);
  /* Paused before it ever ran: nothing is accepted. */
  assert_int_equal(ax_listener_pause(a.l), 0);
  for (int i = 0; i < N1; i++)
    cl[i] = acc_client(&a.addr, &ports[i]);
  run_for(loop, 50);
  assert_int_equal(a.n, 0);
  assert_int_equal(ax_listener_resume(a.l), 0);
  assert_true(RUN_UNTIL(loop, a.n == N1, 5000));
  /* Paused from the 25th callback, the kernel has accepted more already:
   * held, handed over after the resume, after its call returned, in
   * order. */
  for (int i = N1; i < N2; i++)
    cl[i] = acc_client(&a.addr, &ports[i]);
  assert_true(RUN_UNTIL(loop, a.n == 25, 5000));
  run_for(loop, 50);
  assert_int_equal(a.n, 25);
  assert_int_equal(ax_listener_resume(a.l), 0);
  assert_int_equal(a.n, 25); /* no callback inside the resume */
  assert_true(RUN_UNTIL(loop, a.n == N2, 5000));
  run_for(loop, 20);
  assert_false(a.bad);
  assert_int_equal(a.n, N2);
  for (int i = 0; i < N2; i++)
    assert_int_equal(a.ports[i], ports[i]);
  assert_int_equal(ax_listener_stats(a.l, &st), 0);
  assert_int_equal(st.accepted, N2);
  /* Paused again with connections held: close closes them. */
  a.pause_at = N2 + 1;
  for (int i = N2; i < N3; i++)
    cl[i] = acc_client(&a.addr, &ports[i]);
  assert_true(RUN_UNTIL(loop, a.n == N2 + 1, 5000));
  run_for(loop, 20);
  ax_listener_close(a.l);
  acc_close_fds(&a);
  clients_end(cl, N3, 2000);
  for (int i = 0; i < N3; i++)
    close(cl[i]);
  run_for(loop, 10);
  AX_FREE_LOOP(loop);
}

static uint64_t accepted_of(const ax_listener_t *l) {
  ax_listener_stats_t st;
  assert_int_equal(ax_listener_stats(l, &st), 0);
  return st.accepted;
}

/* The highest open fd of this process. */
static int max_fd(void) {
  int top = -1;
  DIR *d = opendir("/proc/self/fd");
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (e->d_name[0] != '.' && atoi(e->d_name) > top)
      top = atoi(e->d_name);
  closedir(d);
  return top;
}

/* The child of test_accept_emfile; returns its exit status. */
static int emfile_child(void) {
  enum { N = 100, SLACK = 6 };
  ax_loop_t *loop = uloop();
  static acc_t a;
  ax_listener_stats_t st;
  struct rlimit rl;
  uint64_t it0;
  enum { FILL_MAX = 4096 };
  static int fill[FILL_MAX];
  int cl[N], nfill = 0;
  uint64_t accepted;
  unsigned port;
  if (!pinfo(loop).native)
    return 77;
  acc_listen(loop, &a);
  for (int i = 0; i < N; i++)
    cl[i] = acc_client(&a.addr, &port);
  /* Room for SLACK more fds: then the kernel's accept fails with EMFILE
   * (its limit is read when the accept is armed, at the first wait). The
   * free numbers below the highest fd are filled first. */
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
  rl.rlim_cur = (rlim_t)max_fd() + 1;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
  while (nfill < FILL_MAX &&
         (fill[nfill] = open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0)
    nfill++;
  rl.rlim_cur += SLACK;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
  if (!RUN_UNTIL(loop, a.emfile > 0, 5000)) {
    printf("[  INFO    ] no EMFILE: %d accepted, %d errors, max fd %d, "
           "limit %d\n",
           a.n, a.errors, max_fd(), (int)rl.rlim_cur);
    fflush(stdout);
    return 10;
  }
  /* A second of the episode: no spin, one report, connections shed. */
  it0 = iterations(loop);
  run_for(loop, 1000);
  assert_int_equal(ax_listener_stats(a.l, &st), 0);
  printf("[  INFO    ] accept emfile: %llu iterations in 1 s, %d accepted, "
         "%llu shed, %llu pauses\n",
         (unsigned long long)(iterations(loop) - it0), a.n,
         (unsigned long long)st.shed, (unsigned long long)st.pauses);
  fflush(stdout);
  if (iterations(loop) - it0 >= 1000)
    return 11;
  if (a.emfile != 1 || a.errors != 1)
    return 12;
  if (st.shed == 0 || st.pauses == 0 || a.n == 0 || a.n > SLACK)
    return 13;
  /* Recovery: fds come back, accepting goes on. */
  accepted = st.accepted;
  acc_close_fds(&a);
  if (!RUN_UNTIL(loop, accepted_of(a.l) > accepted, 5000))
    return 14;
  acc_close_fds(&a);
  ax_listener_close(a.l);
  for (int i = 0; i < N; i++)
    close(cl[i]);
  for (int i = 0; i < nfill; i++)
    close(fill[i]);
  AX_FREE_LOOP(loop);
  return a.bad ? 15 : 0;
}

static void test_accept_emfile(void **state) {
  pid_t pid;
  int st;
  (void)state;
  fflush(stdout);
  pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    setenv("CMOCKA_TEST_ABORT", "1", 1);
    alarm(30);
    _exit(emfile_child());
  }
  assert_int_equal(waitpid(pid, &st, 0), pid);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
    printf("native proactor not available\n");
    skip();
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("the child failed: %s %d", WIFEXITED(st) ? "exit" : "signal",
             WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

/* ax_loop_free with a listener open and connections waiting, one closed
 * from its callback (its last completion not dispatched), one paused with
 * connections held: no fd left, no memory (ASan), peers see the end. */
static void test_accept_loop_free(void **state) {
  enum { N = 10 };
  int fds0 = count_fds(), cl[3][N];
  unsigned port;
  acc_t a[3] = {{.stop_at = 2},
                {.close_at = 1, .stop_at = 1},
                {.pause_at = 1, .stop_at = 1}};
  ax_loop_t *loop = uloop();
  (void)state;
  NEED_NATIVE(loop);
  for (int k = 0; k < 3; k++) {
    acc_listen(loop, &a[k]);
    for (int i = 0; i < N; i++)
      cl[k][i] = acc_client(&a[k].addr, &port);
  }
  /* Until each has accepted (and stopped the loop) once or twice. */
  assert_true(RUN_UNTIL(loop, a[0].n >= 2 && a[1].n >= 1 && a[2].n >= 1,
                        5000));
  AX_FREE_LOOP(loop);
  for (int k = 0; k < 3; k++) {
    assert_false(a[k].bad);
    acc_close_fds(&a[k]);
    clients_end(cl[k], N, 2000);
    for (int i = 0; i < N; i++)
      close(cl[k][i]);
  }
  assert_int_equal(count_fds(), fds0);
}

/* The loop run by one thread, then by another (the ring is replaced):
 * the accept is armed again on the new ring. */
typedef struct amv {
  ax_loop_t *loop;
  acc_t a;
} amv_t;

static void *amv_run(void *arg) {
  amv_t *m = arg;
  assert_int_equal(ax_loop_run(m->loop, AX_RUN_DEFAULT), 0);
  return NULL;
}

static void test_accept_ring_move(void **state) {
  enum { N = 20 };
  int fds0 = count_fds(), cl[N];
  amv_t m = {.loop = uloop(), .a = {.stop_at = N / 2}};
  unsigned port;
  pthread_t t;
  (void)state;
  NEED_NATIVE(m.loop);
  acc_listen(m.loop, &m.a);
  guard_start("the accept ring move", 30);
  for (int i = 0; i < N / 2; i++)
    cl[i] = acc_client(&m.a.addr, &port);
  assert_int_equal(pthread_create(&t, NULL, amv_run, &m), 0);
  pthread_join(t, NULL);
  assert_int_equal(m.a.n, N / 2);
  for (int i = N / 2; i < N; i++)
    cl[i] = acc_client(&m.a.addr, &port);
  m.a.stop_at = N;
  assert_int_equal(pthread_create(&t, NULL, amv_run, &m), 0);
  pthread_join(t, NULL);
  guard_stop();
  assert_false(m.a.bad);
  assert_int_equal(m.a.n, N);
  assert_true(pinfo(m.loop).multishot_accept);
  ax_listener_close(m.a.l);
  acc_close_fds(&m.a);
  for (int i = 0; i < N; i++)
    close(cl[i]);
  run_for(m.loop, 10);
  AX_FREE_LOOP(m.loop);
  assert_int_equal(count_fds(), fds0);
}

/* ---- the readiness driver on demand --------------------------------------- */

static void test_env_readiness(void **state) {
  ax_loop_t *loop;
  ax_proactor_info_t pi;
  acc_t a = {0};
  unsigned port;
  int cl;
  (void)state;
  setenv("AXON_PROACTOR", "readiness", 1);
  loop = uloop();
  pi = pinfo(loop);
  unsetenv("AXON_PROACTOR");
  assert_false(pi.native);
  assert_false(pi.buf_ring);
  assert_false(pi.multishot_accept);
  /* Listeners accept through readiness (poll requests) on the ring. */
  acc_listen(loop, &a);
  cl = acc_client(&a.addr, &port);
  assert_true(RUN_UNTIL(loop, a.n == 1, 5000));
  assert_int_equal(a.ports[0], port);
  ax_listener_close(a.l);
  acc_close_fds(&a);
  close(cl);
  AX_FREE_LOOP(loop);
  loop = ax_test_loop_on(AX_BACKEND_EPOLL);
  assert_false(pinfo(loop).native);
  AX_FREE_LOOP(loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_env_readiness),
      cmocka_unit_test(test_echo_socketpair),
      cmocka_unit_test(test_echo_tcp),
      cmocka_unit_test(test_read_stop_start),
      cmocka_unit_test(test_close_inflight),
      cmocka_unit_test(test_close_many),
      cmocka_unit_test(test_ring_exhaustion),
      cmocka_unit_test(test_keep_past_callback),
      cmocka_unit_test(test_sendfile_shutdown),
      cmocka_unit_test(test_splice),
      cmocka_unit_test(test_pipe_and_detach),
      cmocka_unit_test(test_detach_in_callback),
      cmocka_unit_test(test_loop_free_open),
      cmocka_unit_test(test_loop_free_unclosed),
      cmocka_unit_test(test_ring_move),
      cmocka_unit_test(test_accept_many),
      cmocka_unit_test(test_accept_close_in_cb),
      cmocka_unit_test(test_accept_pause_resume),
      cmocka_unit_test(test_accept_emfile),
      cmocka_unit_test(test_accept_loop_free),
      cmocka_unit_test(test_accept_ring_move),
  };
  if (!ax_test_uring_usable()) {
    printf("[  SKIPPED ] test_uring_native: no io_uring loop\n");
    return 0;
  }
  raise_nofile();
  return cmocka_run_group_tests_name("uring_native", tests, NULL, NULL);
}
