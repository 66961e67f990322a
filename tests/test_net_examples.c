/*
 * test_net_examples — the proactor's network examples run as child
 * processes, on every backend: echo_proactor (exact bytes for 1 and 1,000
 * clients, half-close, SIGINT with data in flight, bounded memory against a
 * client that sends 50 MB and reads nothing, resets), proxy in front of
 * echo_proactor (8 MB exact, 100 clients, half-close both ways, a refused
 * upstream, SIGINT; --xor on the wire, in front of echo and chained twice)
 * and sendfile_server (20 clients, a slow reader, the write timeout, an
 * empty file).
 *
 * The child and client helpers are childutil.h's (clients may expect bytes
 * they did not send: sendfile), and an alarm per test kills
 * every child and ends the process if a test hangs past the deadlines its
 * waits already have. Every child is registered when spawned and killed by
 * pid in the teardown. Only 127.0.0.1 is used.
 */
#include "childutil.h"

#define EXAMPLE(name) AX_BUILD_DIR "/examples/" name
#define MIB (1024u * 1024u)
#define XOR_KEY "s3cr3t!" /* 7 bytes: chunk sizes are never a multiple */
#define TEST_LIMIT_S 90   /* the alarm of one test */

/* ------------------------------------------------------------------------ */
/* Children (spawn, start_server and the rest: childutil.h)                 */
/* ------------------------------------------------------------------------ */

static struct child *start_echo(unsigned *port) {
  char *argv[] = {EXAMPLE("echo_proactor"), "--port", "0", "--backend",
                  (char *)backend_name(),   NULL};
  return start_server(argv, 0, false, port);
}

/* proxy --to 127.0.0.1:@to [--xor @key]. */
static struct child *start_proxy(unsigned to, const char *key, unsigned *port) {
  char dest[32];
  snprintf(dest, sizeof dest, "127.0.0.1:%u", to);
  char *argv[] = {
      EXAMPLE("proxy"),     "--port",    "0", "--to", dest, "--backend", (char *)backend_name(),
      key ? "--xor" : NULL, (char *)key, NULL};
  return start_server(argv, 0, false, port);
}

/* Stop a proxy with @signo: it must print its counts and exit 0. @bytes
 * (unless -1) is checked too. */
static void stop_proxy(struct child *c, int signo, unsigned long long conns, long long bytes) {
  char line[128];
  unsigned long long n = 0, b = 0;
  int used = 0;
  assert_int_equal(kill(c->pid, signo), 0);
  child_line(c, line, sizeof line, 10000);
  if (sscanf(line, "proxy: %llu connections, %llu bytes%n", &n, &b, &used) != 2 || line[used])
    fail_msg("unexpected last line from proxy: \"%s\"", line);
  if (n != conns || (bytes >= 0 && b != (unsigned long long)bytes))
    fail_msg("proxy counted %llu connections and %llu bytes, want %llu and %lld", n, b, conns,
             bytes);
  child_expect_exit0(c, 10000);
}

/* ------------------------------------------------------------------------ */
/* Watchdog, teardown                                                        */
/* ------------------------------------------------------------------------ */

static char g_tmpdir[64];
static unsigned char *g_file; /* the sendfile tests' file, in memory */
static size_t g_file_size;

/* A test past its alarm has hung despite the bounded waits: kill every
 * child (async-signal-safe) and end the process, which fails the run. */
static void watchdog_fire(int signo) {
  static const char msg[] = "ERROR: test_net_examples: a test ran past its alarm\n";
  (void)signo;
  watchdog_exit(msg, sizeof msg - 1);
}

static int setup(void **state) {
  (void)state;
  alarm(TEST_LIMIT_S);
  return 0;
}

/* The teardown of every test: kill and reap every child still registered
 * (by pid), close every client, remove the temporary file. */
static int cleanup(void **state) {
  (void)state;
  alarm(0);
  children_reap();
  clients_free();
  free(g_file);
  g_file = NULL;
  if (g_tmpdir[0]) {
    char path[128];
    snprintf(path, sizeof path, "%s/f", g_tmpdir);
    unlink(path);
    rmdir(g_tmpdir);
    g_tmpdir[0] = 0;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Clients (the poll() clients and the blocking ones: childutil.h)        */
/* ------------------------------------------------------------------------ */

/* @n clients that send nothing and expect @size bytes of @want, then EOF. */
static void clients_make_readers(size_t n, const unsigned char *want, size_t size) {
  clients_alloc(n);
  for (size_t i = 0; i < n; i++) {
    g_clients[i].want = want;
    g_clients[i].expect = size;
    g_clients[i].want_eof = true;
  }
}

/* ------------------------------------------------------------------------ */
/* Raw sockets of the test itself (an upstream for the proxy)                */
/* ------------------------------------------------------------------------ */

static int listen_local(unsigned *port) {
  struct sockaddr_in sa = {.sin_family = AF_INET};
  socklen_t len = sizeof sa;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(listen(fd, 16), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  *port = ntohs(sa.sin_port);
  return fd;
}

static int accept_within(int lfd, int ms) {
  struct pollfd p = {.fd = lfd, .events = POLLIN};
  if (poll(&p, 1, ms) != 1) fail_msg("no connection within %d ms", ms);
  int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
  if (fd < 0) fail_msg("accept: %s", strerror(errno));
  return fd;
}

/* Send @n bytes on @from while receiving them on @to (both may block the
 * other: loopback buffers are finite), into @got. */
static void pump(int from, const unsigned char *p, size_t n, int to, unsigned char *got) {
  size_t sent = 0, recvd = 0;
  int64_t deadline = now_ms() + 20000;
  while (recvd < n) {
    struct pollfd pf[2] = {{.fd = from, .events = sent < n ? POLLOUT : 0},
                           {.fd = to, .events = POLLIN}};
    if (now_ms() > deadline) fail_msg("pump: %zu of %zu bytes through in 20 s", recvd, n);
    if (poll(pf, 2, 1000) < 0 && errno != EINTR) fail_msg("poll: %s", strerror(errno));
    if (pf[0].revents & POLLOUT) {
      ssize_t w = send(from, p + sent, n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0 && errno != EAGAIN) fail_msg("pump: send: %s", strerror(errno));
      if (w > 0) sent += (size_t)w;
    }
    if (pf[1].revents) {
      ssize_t r = recv(to, got + recvd, n - recvd, MSG_DONTWAIT);
      if (r == 0) fail_msg("pump: EOF after %zu of %zu bytes", recvd, n);
      if (r < 0 && errno != EAGAIN) fail_msg("pump: recv: %s", strerror(errno));
      if (r > 0) recvd += (size_t)r;
    }
  }
}

/* @fd reads EOF within @ms, with no byte before it. */
static void expect_eof(int fd, int ms, const char *who) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  char b;
  if (poll(&p, 1, ms) != 1) fail_msg("%s: no EOF within %d ms", who, ms);
  ssize_t r = recv(fd, &b, 1, MSG_DONTWAIT);
  if (r != 0)
    fail_msg("%s: want EOF, recv returned %zd (%s)", who, r, r < 0 ? strerror(errno) : "a byte");
}

/* @n pseudo-random bytes. */
static unsigned char *random_bytes(size_t n, uint64_t seed) {
  unsigned char *p = malloc(n ? n : 1);
  assert_non_null(p);
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(xorshift(&seed) >> 24);
  return p;
}

/* XOR @n bytes with the repeating key from position *@pos (which advances);
 * @key NULL leaves them as they are. */
static void xor_key(unsigned char *p, size_t n, const char *key, size_t *pos) {
  size_t len = key ? strlen(key) : 0;
  for (size_t i = 0; len && i < n; i++, *pos = (*pos + 1) % len) p[i] ^= (unsigned char)key[*pos];
}

/* ------------------------------------------------------------------------ */
/* echo_proactor                                                             */
/* ------------------------------------------------------------------------ */

static void test_echo_one(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  echo_roundtrip(port, 1, 1, 1, 0);               /* one byte */
  echo_roundtrip(port, 1, 64 * 1024, 2 * MIB, 0); /* random size, > the 64 KiB high water */
  stop_server(srv, SIGTERM);
}

static void test_echo_thousand(void **state) {
  (void)state;
  skip_unless_nofile(1100, "1,000 connections need 1,100 fds");
  unsigned port;
  struct child *srv = start_echo(&port);
  echo_roundtrip(port, 1000, 1, 32 * 1024, 2);
  stop_server(srv, SIGTERM);
}

/* The client shuts its write side: it gets every byte back, then EOF. */
static void test_echo_half_close(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  echo_roundtrip(port, 1, 5, 5, 1);
  echo_roundtrip(port, 3, 200 * 1024, 400 * 1024, 1); /* more than the server buffers */
  echo_roundtrip(port, 1, 0, 0, 1);                   /* nothing sent: EOF at once */
  stop_server(srv, SIGTERM);
}

/* SIGINT with connections open and data in flight: exit 0 (and, under
 * ASan, no leak). */
static void test_echo_sigint(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  clients_pending(port, 3, 7);
  stop_server(srv, SIGINT);
  clients_free();
}

/* A client that sends 50 MB and reads nothing: once the kernel buffers and
 * the server's 64 KiB queue are full, the server stops reading, so its
 * memory stays bounded and our sends block. */
static void test_echo_bounded(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  echo_roundtrip(port, 1, 100 * 1024, 100 * 1024, 0); /* warm up the read pool */
  long before = rss_kib(srv->pid);
  int fd = connect_to(port, 4096);
  size_t size = 50 * MIB, sent = send_until_stalled(fd, size);
  sleep_ms(100);
  long grown = rss_kib(srv->pid) - before;
  if (sent >= size) fail_msg("all %zu bytes sent to a client that reads nothing", sent);
  if (grown > 16 * 1024)
    fail_msg("echo_proactor grew by %ld KiB while a client sent %zu bytes and read none", grown,
             sent);
  set_linger0(fd);
  close(fd);
  assert_alive(srv);
  echo_roundtrip(port, 2, 1000, 100 * 1024, 2); /* still serving */
  stop_server(srv, SIGTERM);
}

/* Resets (SO_LINGER 0) at every stage do not kill the server. */
static void test_echo_reset(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(&port);
  client_abandon(port, 0, true);            /* reset right after connecting */
  client_abandon(port, 16, true);           /* with a little data */
  client_abandon(port, 1024 * 1024, true);  /* with the server stalled */
  client_abandon(port, 1024 * 1024, false); /* unread data: the kernel resets */
  for (int i = 0; i < 3; i++) {
    client_reset_in_close_wait(port);
    sleep_ms(50);
    assert_alive(srv);
  }
  sleep_ms(200);
  assert_alive(srv);
  echo_roundtrip(port, 4, 1000, 100 * 1024, 2); /* still serving */
  stop_server(srv, SIGTERM);
}

/* ------------------------------------------------------------------------ */
/* proxy                                                                     */
/* ------------------------------------------------------------------------ */

/* 8 MB through proxy → echo_proactor and back, byte-exact; the proxy counts
 * every byte both ways. */
static void test_proxy_exact(void **state) {
  (void)state;
  unsigned eport, pport;
  struct child *echo = start_echo(&eport);
  struct child *px = start_proxy(eport, NULL, &pport);
  size_t n = echo_roundtrip(pport, 1, 1, 1, 0);
  n += echo_roundtrip(pport, 1, 8 * MIB, 8 * MIB, 0);
  n += echo_roundtrip(pport, 1, 8 * MIB, 8 * MIB, 1); /* and with a half-close */
  stop_proxy(px, SIGTERM, 3, (long long)(2 * n));
  stop_server(echo, SIGTERM);
}

static void test_proxy_many(void **state) {
  (void)state;
  unsigned eport, pport;
  struct child *echo = start_echo(&eport);
  struct child *px = start_proxy(eport, NULL, &pport);
  size_t n = echo_roundtrip(pport, 100, 1, 256 * 1024, 2);
  stop_proxy(px, SIGTERM, 100, (long long)(2 * n));
  stop_server(echo, SIGTERM);
}

/*
 * Through a proxy to an upstream the test plays itself: the bytes on the
 * upstream's wire are the client's (XORed with @key when given) and back,
 * and half-close travels both ways: the upstream shuts first, the client
 * reads everything then EOF and can still send; then the client shuts and
 * the upstream reads EOF.
 */
static void upstream_dialog(const char *key) {
  unsigned uport, pport;
  int lfd = listen_local(&uport);
  struct child *px = start_proxy(uport, key, &pport);
  int cfd = connect_to(pport, 0);
  int ufd = accept_within(lfd, 5000);
  close(lfd);
  size_t na = 300 * 1024 + 1, nb = 200 * 1024 + 3, nc = 10 * 1024 + 5;
  size_t pos_up = 0, pos_down = 0; /* key positions of each direction */
  unsigned char *a = random_bytes(na, 1), *b = random_bytes(nb, 2), *c = random_bytes(nc, 3);
  unsigned char *got = malloc(na), *want = malloc(na);
  assert_non_null(got);
  assert_non_null(want);

  pump(cfd, a, na, ufd, got); /* client → upstream */
  memcpy(want, a, na);
  xor_key(want, na, key, &pos_up);
  if (memcmp(got, want, na) != 0)
    fail_msg("the upstream got other bytes than sent%s", key ? " XORed" : "");
  pump(ufd, b, nb, cfd, got); /* upstream → client */
  memcpy(want, b, nb);
  xor_key(want, nb, key, &pos_down);
  if (memcmp(got, want, nb) != 0) fail_msg("the client got other bytes than the upstream sent");

  assert_int_equal(shutdown(ufd, SHUT_WR), 0); /* the upstream is done talking */
  expect_eof(cfd, 5000, "client after the upstream's shutdown");
  pump(cfd, c, nc, ufd, got); /* the client may still send */
  memcpy(want, c, nc);
  xor_key(want, nc, key, &pos_up);
  if (memcmp(got, want, nc) != 0) fail_msg("bytes after the half-close differ");
  assert_int_equal(shutdown(cfd, SHUT_WR), 0);
  expect_eof(ufd, 5000, "upstream after the client's shutdown");
  close(cfd);
  close(ufd);
  free(a);
  free(b);
  free(c);
  free(got);
  free(want);
  stop_proxy(px, SIGTERM, 1, (long long)(na + nb + nc));
}

static void test_proxy_half_close(void **state) {
  (void)state;
  upstream_dialog(NULL);
  /* And the other order, through echo: the client shuts first. */
  unsigned eport, pport;
  struct child *echo = start_echo(&eport);
  struct child *px = start_proxy(eport, NULL, &pport);
  echo_roundtrip(pport, 1, 5, 5, 1);
  echo_roundtrip(pport, 3, 200 * 1024, 400 * 1024, 1);
  echo_roundtrip(pport, 1, 0, 0, 1);
  stop_proxy(px, SIGTERM, 5, -1);
  stop_server(echo, SIGTERM);
}

/* --xor: the upstream's wire carries XORed bytes (both ways, the key
 * position running on across reads), half-close included. */
static void test_proxy_xor_wire(void **state) {
  (void)state;
  upstream_dialog(XOR_KEY);
}

/* client → proxy --xor → echo, and client → proxy --xor → proxy --xor →
 * echo: the XOR cancels out, the clients read what they sent. */
static void test_proxy_xor_echo(void **state) {
  (void)state;
  unsigned eport, p1, p2;
  struct child *echo = start_echo(&eport);
  struct child *inner = start_proxy(eport, XOR_KEY, &p1);
  size_t n = echo_roundtrip(p1, 10, 1, 128 * 1024, 2);
  struct child *outer = start_proxy(p1, XOR_KEY, &p2);
  size_t m = echo_roundtrip(p2, 1, 2 * MIB, 2 * MIB, 1);
  m += echo_roundtrip(p2, 20, 1, 128 * 1024, 2);
  stop_proxy(outer, SIGTERM, 21, (long long)(2 * m));
  stop_proxy(inner, SIGTERM, 31, (long long)(2 * (n + m)));
  stop_server(echo, SIGTERM);
}

/* An upstream that refuses: the client is closed, the proxy goes on. */
static void test_proxy_refused(void **state) {
  (void)state;
  unsigned dead, pport;
  close(listen_local(&dead)); /* a port nobody listens on now */
  struct child *px = start_proxy(dead, NULL, &pport);
  for (int i = 0; i < 3; i++) {
    int fd = connect_to(pport, 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char b;
    if (poll(&p, 1, 5000) != 1) fail_msg("client of a refused upstream not closed in 5 s");
    ssize_t r = recv(fd, &b, 1, 0);
    if (r > 0) fail_msg("a byte from a refused upstream");
    close(fd);
  }
  assert_alive(px);
  stop_proxy(px, SIGTERM, 3, 0);
}

/* SIGINT with data in flight, splice and --xor: exit 0, nothing leaked. */
static void test_proxy_sigint(void **state) {
  (void)state;
  unsigned eport, p1, p2;
  struct child *echo = start_echo(&eport);
  struct child *plain = start_proxy(eport, NULL, &p1);
  struct child *xored = start_proxy(eport, XOR_KEY, &p2);
  clients_pending(p1, 3, 5);
  stop_proxy(plain, SIGINT, 3, -1);
  clients_pending(p2, 3, 6);
  stop_proxy(xored, SIGINT, 3, -1);
  clients_free();
  stop_server(echo, SIGINT);
}

/* ------------------------------------------------------------------------ */
/* sendfile_server                                                           */
/* ------------------------------------------------------------------------ */

/* A temporary file of @size pseudo-random bytes (kept in g_file too);
 * returns its path (static). */
static const char *make_file(size_t size) {
  static char path[128];
  snprintf(g_tmpdir, sizeof g_tmpdir, "/tmp/axon-test-XXXXXX");
  assert_non_null(mkdtemp(g_tmpdir));
  snprintf(path, sizeof path, "%s/f", g_tmpdir);
  g_file = random_bytes(size, 42);
  g_file_size = size;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, g_file, size), (ssize_t)size);
  assert_int_equal(close(fd), 0);
  return path;
}

static struct child *start_sendfile(const char *path, const char *timeout_ms, unsigned *port) {
  char *argv[] = {EXAMPLE("sendfile_server"),
                  "--port",
                  "0",
                  "--file",
                  (char *)path,
                  "--backend",
                  (char *)backend_name(),
                  timeout_ms ? "--write-timeout" : NULL,
                  (char *)timeout_ms,
                  NULL};
  return start_server(argv, 0, false, port);
}

static void test_sendfile_many(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_sendfile(make_file(5 * MIB), NULL, &port);
  clients_make_readers(20, g_file, g_file_size);
  clients_run(port, 60000);
  clients_free();
  stop_server(srv, SIGTERM);
}

/* A client reading 8 KiB at a time with pauses (a small window): the
 * server sends in many partial steps and the file still arrives exactly. */
static void test_sendfile_slow(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_sendfile(make_file(5 * MIB), NULL, &port);
  int fd = connect_to(port, 16 * 1024);
  static unsigned char buf[8192];
  size_t got = 0;
  int64_t deadline = now_ms() + 30000;
  for (;;) {
    if (now_ms() > deadline) fail_msg("slow client: %zu of %zu bytes in 30 s", got, g_file_size);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1) fail_msg("slow client: nothing for 5 s after %zu bytes", got);
    ssize_t r = recv(fd, buf, sizeof buf, 0);
    if (r < 0) fail_msg("slow client: recv after %zu bytes: %s", got, strerror(errno));
    if (r == 0) break;
    if (got + (size_t)r > g_file_size || memcmp(buf, g_file + got, (size_t)r) != 0)
      fail_msg("slow client: bytes %zu..%zu differ from the file", got, got + (size_t)r);
    got += (size_t)r;
    sleep_ms(1);
  }
  close(fd);
  if (got != g_file_size) fail_msg("slow client: EOF after %zu of %zu bytes", got, g_file_size);
  stop_server(srv, SIGTERM);
}

/* --write-timeout: a client that reads nothing is cut (the server's fd for
 * it goes), and the server goes on serving. */
static void test_sendfile_timeout(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_sendfile(make_file(16 * MIB), "300", &port);
  int idle = fds_of(srv->pid);
  int fd = connect_to(port, 4096);
  if (fds_settle(srv->pid, idle + 1, 2000) != idle + 1)
    fail_msg("server did not take the connection");
  int64_t t0 = now_ms();
  int have = fds_settle(srv->pid, idle, 5000);
  if (have != idle)
    fail_msg("a client reading nothing still held after 5 s (%d fds, %d idle)", have, idle);
  if (now_ms() - t0 < 200)
    fail_msg("cut after %lld ms, before the 300 ms timeout", (long long)(now_ms() - t0));
  /* What was sent before the cut is the file's start; the rest never comes. */
  static unsigned char buf[65536];
  size_t got = 0;
  for (ssize_t r; (r = recv(fd, buf, sizeof buf, 0)) > 0; got += (size_t)r)
    if (got + (size_t)r > g_file_size || memcmp(buf, g_file + got, (size_t)r) != 0)
      fail_msg("cut client: bytes %zu..%zu differ from the file", got, got + (size_t)r);
  if (got >= g_file_size) fail_msg("the cut client got the whole file");
  close(fd);
  clients_make_readers(2, g_file, g_file_size);
  clients_run(port, 30000);
  clients_free();
  stop_server(srv, SIGTERM);
}

static void test_sendfile_empty(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_sendfile(make_file(0), NULL, &port);
  clients_make_readers(3, g_file, 0);
  clients_run(port, 10000);
  clients_free();
  stop_server(srv, SIGTERM);
}

int main(void) {
  /* Writes to a closed socket must fail with EPIPE, not kill us. */
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, watchdog_fire);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 2048) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 2048 ? 2048 : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) perror("setrlimit(RLIMIT_NOFILE)");
  }
  const struct CMUnitTest per_backend[] = {
      cmocka_unit_test_setup_teardown(test_echo_one, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_thousand, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_half_close, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_sigint, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_bounded, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_reset, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_exact, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_many, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_half_close, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_xor_wire, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_xor_echo, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_refused, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_proxy_sigint, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_sendfile_many, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_sendfile_slow, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_sendfile_timeout, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_sendfile_empty, setup, cleanup),
  };
  return AX_RUN_ON_BACKENDS(per_backend) ? 1 : 0;
}
