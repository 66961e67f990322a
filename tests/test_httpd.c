/*
 * test_httpd — examples/httpd run as a child process: exact responses to
 * GET / and HEAD (the Date line's value checked once), keep-alive, 50
 * pipelined requests in one write and the same split in small pieces,
 * /file/NAME (a 3 MB file byte-exact, between other responses), bad names,
 * malformed requests (400 or 431 or 505, then a close), the header
 * deadline, HTTP/1.0, 100 concurrent clients on two workers, SIGINT with
 * connections open; and the libFuzzer target of the
 * parser (build/fuzz/fuzz_http, built with ASan+UBSan; run from the plain
 * variant) for 20 s.
 *
 * Every wait is bounded (10 s per read, an alarm per test that kills the
 * children); no timing is asserted. Only 127.0.0.1 is used.
 */
#include "childutil.h"

#include <stdlib.h>
#include <time.h>

#define HTTPD AX_BUILD_DIR "/examples/httpd"
#define FUZZER "build/fuzz/fuzz_http"
#define TEST_LIMIT_S 90
#define WAIT_MS 10000
#define BIG (3u * 1024u * 1024u + 17u)

/* Every response has a Date line after its status line: its 29 bytes
 * (IMF-fixdate) are \001 in the expected text, which recv_exact matches
 * with any date character; test_get_root checks one date's value. */
#define DATE "Date: \001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\001\r\n"
#define TYPE "Content-Type: text/plain\r\n"
#define OCTET "Content-Type: application/octet-stream\r\n"
#define ALLOW "Allow: GET, HEAD\r\n"

#define REQ(path) "GET " path " HTTP/1.1\r\nHost: t\r\n\r\n"
#define REQ_CLOSE(path) "GET " path " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
#define HELLO "HTTP/1.1 200 OK\r\n" DATE TYPE "Content-Length: 13\r\n\r\nHello, World!"
#define HELLO_CLOSE "HTTP/1.1 200 OK\r\n" DATE TYPE "Content-Length: 13\r\nConnection: close\r\n\r\nHello, World!"
#define NOT_FOUND "HTTP/1.1 404 Not Found\r\n" DATE TYPE "Content-Length: 10\r\n\r\nnot found\n"
#define FORBIDDEN "HTTP/1.1 403 Forbidden\r\n" DATE TYPE "Content-Length: 10\r\n\r\nforbidden\n"
#define BAD "HTTP/1.1 400 Bad Request\r\n" DATE TYPE "Content-Length: 12\r\nConnection: close\r\n\r\nbad request\n"

static struct child *g_srv;    /* the server, NULL when none */
static pid_t g_child;          /* the fuzzer, 0 when none */
static char g_dir[64];         /* the temporary directory, "" when none */
static unsigned char *g_big;   /* the big file's bytes */

/* ------------------------------------------------------------------------ */
/* The server                                                                */
/* ------------------------------------------------------------------------ */

/* Start httpd with @extra arguments (NULL-terminated, at most 6) and return
 * its port, read from its "listening on 127.0.0.1:PORT" line (childutil.h's
 * start_server: within 10 s). */
static unsigned start(const char *const *extra) {
  char *argv[12] = {HTTPD, "--port", "0"};
  int n = 3;
  while (extra && *extra && n < 10) argv[n++] = (char *)*extra++;
  argv[n] = NULL;
  unsigned port = 0;
  g_srv = start_server(argv, 0, false, &port);
  return port;
}

/* @signo must end the server with exit status 0 within 10 s. */
static void stop(int signo) {
  stop_server(g_srv, signo);
  g_srv = NULL;
}

static void watchdog_fire(int signo) {
  static const char msg[] = "ERROR: test_httpd: a test ran past its alarm\n";
  (void)signo;
  if (g_child > 0) kill(g_child, SIGKILL);
  watchdog_exit(msg, sizeof msg - 1);
}

static int setup(void **state) {
  (void)state;
  alarm(TEST_LIMIT_S);
  return 0;
}

static void rm_dir(void) {
  static const char *names[] = {"big", "small", "link", "a..b", "sub"};
  char path[128];
  for (size_t i = 0; g_dir[0] && i < sizeof names / sizeof *names; i++) {
    snprintf(path, sizeof path, "%s/%s", g_dir, names[i]);
    if (unlink(path) != 0) rmdir(path);
  }
  if (g_dir[0]) rmdir(g_dir);
  g_dir[0] = 0;
}

static int cleanup(void **state) {
  (void)state;
  alarm(0);
  children_reap();
  g_srv = NULL;
  if (g_child > 0) {
    kill(g_child, SIGKILL);
    waitpid(g_child, NULL, 0);
  }
  g_child = 0;
  rm_dir();
  free(g_big);
  g_big = NULL;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Clients                                                                   */
/* ------------------------------------------------------------------------ */

static int dial(unsigned port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  assert_true(fd >= 0);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
    fail_msg("connect 127.0.0.1:%u: %s", port, strerror(errno));
  return fd;
}

static void send_all(int fd, const void *p, size_t len) {
  for (size_t off = 0; off < len;) {
    ssize_t w = send(fd, (const char *)p + off, len - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) fail_msg("send: %s", strerror(errno));
    off += (size_t)w;
  }
}

/* Byte @g matches @w: equal, or a date character where @w is \001. */
static bool same(char g, char w) {
  return g == w || (w == '\001' && g && strchr("0123456789 ,:ADFGJMNOSTWabceghilnoprtuvy", g));
}

/* Receive exactly @len bytes equal to @want (each read waits ≤ 10 s);
 * \001 in @want stands for a date character (DATE). */
static void recv_exact(int fd, const void *want, size_t len) {
  static char buf[65536];
  for (size_t got = 0; got < len;) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, WAIT_MS) != 1) fail_msg("nothing for 10 s after %zu of %zu bytes", got, len);
    size_t ask = len - got < sizeof buf ? len - got : sizeof buf;
    ssize_t r = recv(fd, buf, ask, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      fail_msg("%s after %zu of %zu bytes (want \"%.60s\")", r ? strerror(errno) : "EOF", got, len,
               (const char *)want + got);
    size_t i = 0;
    while (i < (size_t)r && same(buf[i], ((const char *)want)[got + i])) i++;
    if (i < (size_t)r) {
      fail_msg("byte %zu differs: got \"%.*s\", want \"%.40s\"", got + i,
               (int)((size_t)r - i < 40 ? (size_t)r - i : 40), buf + i, (const char *)want + got + i);
    }
    got += (size_t)r;
  }
}

/* The server must close: EOF (or a reset) within 10 s, no byte before. */
static void expect_eof(int fd) {
  char b;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  if (poll(&p, 1, WAIT_MS) != 1) fail_msg("the server did not close within 10 s");
  ssize_t r = recv(fd, &b, 1, 0);
  if (r > 0) fail_msg("a byte 0x%02x where the server should have closed", (unsigned char)b);
  close(fd);
}

/* One connection: send @req, expect @want; then EOF if @eof, else the
 * connection is returned open. */
static int dialog(unsigned port, const char *req, const char *want, bool eof) {
  int fd = dial(port);
  send_all(fd, req, strlen(req));
  recv_exact(fd, want, strlen(want));
  if (!eof) return fd;
  expect_eof(fd);
  return -1;
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */
/* ------------------------------------------------------------------------ */

static void test_get_root(void **state) {
  (void)state;
  unsigned port = start(NULL);
  int fd = dial(port);
  char got[sizeof HELLO] = {0};
  struct tm tm = {0};
  send_all(fd, REQ("/"), strlen(REQ("/")));
  time_t before = time(NULL);
  for (size_t n = 0; n < strlen(HELLO);) { /* the date's value: now, in GMT */
    ssize_t r = recv(fd, got + n, strlen(HELLO) - n, 0);
    assert_true(r > 0 || (r < 0 && errno == EINTR));
    n += r > 0 ? (size_t)r : 0;
  }
  const char *d = strstr(got, "\r\nDate: ");
  assert_non_null(d);
  const char *end = strptime(d + 8, "%a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  assert_non_null(end);
  assert_int_equal(end - got, strstr(HELLO, "Content-Type") - HELLO);
  assert_true(llabs((long long)(timegm(&tm) - before)) <= 5);
  for (size_t i = 0; i < strlen(HELLO); i++) assert_true(same(got[i], HELLO[i]));
  send_all(fd, REQ("/?q=1"), strlen(REQ("/?q=1")));
  recv_exact(fd, HELLO, strlen(HELLO));
  const char *head = "HEAD / HTTP/1.1\r\nHost: t\r\n\r\n";
  send_all(fd, head, strlen(head));
  recv_exact(fd, HELLO, strlen(HELLO) - 13); /* the head only */
  const char *post = "DELETE / HTTP/1.1\r\nHost: t\r\n\r\n";
  send_all(fd, post, strlen(post));
  const char *no = "HTTP/1.1 405 Method Not Allowed\r\n" DATE ALLOW "Content-Length: 0\r\n\r\n";
  recv_exact(fd, no, strlen(no));
  send_all(fd, REQ_CLOSE("/"), strlen(REQ_CLOSE("/")));
  recv_exact(fd, HELLO_CLOSE, strlen(HELLO_CLOSE));
  expect_eof(fd);
  stop(SIGTERM);
}

static void test_keepalive(void **state) {
  (void)state;
  unsigned port = start(NULL);
  int fd = dial(port);
  for (int i = 0; i < 20; i++) {
    const char *req = i % 3 == 2 ? REQ("/nope") : REQ("/");
    const char *want = i % 3 == 2 ? NOT_FOUND : HELLO;
    send_all(fd, req, strlen(req));
    recv_exact(fd, want, strlen(want));
  }
  send_all(fd, REQ_CLOSE("/nope"), strlen(REQ_CLOSE("/nope")));
  recv_exact(fd, "HTTP/1.1 404 Not Found\r\n" DATE TYPE "Content-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
             strlen("HTTP/1.1 404 Not Found\r\n" DATE TYPE "Content-Length: 10\r\nConnection: close\r\n\r\nnot found\n"));
  expect_eof(fd);
  stop(SIGTERM);
}

/* 50 requests (hello and 404 in turn) and a closing one; @piece 0: all in
 * one write, else in writes of 1..@piece bytes. */
static void pipeline(unsigned port, size_t piece) {
  static char req[8192], want[16384];
  size_t rn = 0, wn = 0;
  for (int i = 0; i < 50; i++) {
    const char *q = i % 2 ? REQ("/missing") : REQ("/");
    const char *a = i % 2 ? NOT_FOUND : HELLO;
    memcpy(req + rn, q, strlen(q)), rn += strlen(q);
    memcpy(want + wn, a, strlen(a)), wn += strlen(a);
  }
  memcpy(req + rn, REQ_CLOSE("/"), strlen(REQ_CLOSE("/"))), rn += strlen(REQ_CLOSE("/"));
  memcpy(want + wn, HELLO_CLOSE, strlen(HELLO_CLOSE)), wn += strlen(HELLO_CLOSE);
  int fd = dial(port);
  uint64_t seed = 7;
  for (size_t off = 0; off < rn;) {
    size_t k = piece ? 1 + xorshift(&seed) % piece : rn;
    k = k < rn - off ? k : rn - off;
    send_all(fd, req + off, k);
    off += k;
    if (piece && off % 5 == 0) sleep_ms(1); /* let some pieces go alone */
  }
  recv_exact(fd, want, wn); /* exactly one response each, in order */
  expect_eof(fd);
}

static void test_pipelined(void **state) {
  (void)state;
  unsigned port = start(NULL);
  pipeline(port, 0);
  pipeline(port, 13);
  pipeline(port, 1);
  stop(SIGTERM);
}

/* A directory with big (BIG random bytes), small, a subdirectory, a
 * symbolic link and a file named "a..b". */
static void make_dir(void) {
  snprintf(g_dir, sizeof g_dir, "/tmp/axon-httpd-XXXXXX");
  assert_non_null(mkdtemp(g_dir));
  g_big = malloc(BIG);
  assert_non_null(g_big);
  uint64_t seed = 42;
  for (size_t i = 0; i < BIG; i++) g_big[i] = (unsigned char)(xorshift(&seed) >> 24);
  for (size_t i = 0; i < BIG; i++) g_big[i] += g_big[i] == 1; /* \001 is DATE's wildcard */
  char path[128];
  snprintf(path, sizeof path, "%s/big", g_dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, g_big, BIG), (ssize_t)BIG);
  close(fd);
  snprintf(path, sizeof path, "%s/small", g_dir);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, "small file\n", 11), 11);
  close(fd);
  snprintf(path, sizeof path, "%s/sub", g_dir);
  assert_int_equal(mkdir(path, 0700), 0);
  snprintf(path, sizeof path, "%s/link", g_dir);
  assert_int_equal(symlink("big", path), 0);
  snprintf(path, sizeof path, "%s/a..b", g_dir);
  assert_int_equal(close(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600)), 0);
}

#define SMALL "HTTP/1.1 200 OK\r\n" DATE OCTET "Content-Length: 11\r\n\r\nsmall file\n"

static void test_file(void **state) {
  (void)state;
  make_dir();
  const char *args[] = {"--dir", g_dir, NULL};
  unsigned port = start(args);
  char head[128];
  snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\n" DATE OCTET "Content-Length: %u\r\n\r\n", BIG);
  /* Alone, then between other responses, pipelined in one write. */
  int fd = dialog(port, REQ("/file/big"), head, false);
  recv_exact(fd, g_big, BIG);
  const char *req = REQ("/file/small") REQ("/") REQ("/file/big") "HEAD /file/small HTTP/1.1\r\nHost: t\r\n\r\n"
      REQ_CLOSE("/file/small");
  send_all(fd, req, strlen(req));
  recv_exact(fd, SMALL HELLO, strlen(SMALL HELLO));
  recv_exact(fd, head, strlen(head));
  recv_exact(fd, g_big, BIG);
  recv_exact(fd, SMALL, strlen(SMALL) - 11);
  const char *last = "HTTP/1.1 200 OK\r\n" DATE OCTET "Content-Length: 11\r\nConnection: close\r\n\r\nsmall file\n";
  recv_exact(fd, last, strlen(last));
  expect_eof(fd);
  stop(SIGTERM);
}

static void test_bad_names(void **state) {
  (void)state;
  make_dir();
  const char *args[] = {"--dir", g_dir, NULL};
  unsigned port = start(args);
  const char *req = REQ("/file/..") REQ("/file/../big") REQ("/file/sub/../big") REQ("/file/a..b")
      REQ("/file/%2e%2e") REQ("/file/missing") REQ("/file/sub") REQ("/file/link") REQ("/file/")
      REQ("/file/small");
  const char *want = FORBIDDEN FORBIDDEN FORBIDDEN FORBIDDEN NOT_FOUND NOT_FOUND NOT_FOUND NOT_FOUND
      NOT_FOUND SMALL;
  close(dialog(port, req, want, false));
  stop(SIGTERM);
}

static void test_malformed(void **state) {
  (void)state;
  unsigned port = start(NULL);
  dialog(port, "GARBAGE\r\n\r\n", BAD, true);
  dialog(port, "GET / HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n", BAD, true);
  dialog(port, "GET / HTTP/1.1\r\n\r\n", BAD, true); /* 1.1 without Host */
  dialog(port, "GET / HTTP/1.1\nHost: t\n\n", BAD, true);
  dialog(port, "GET http://t/ HTTP/1.1\r\nHost: t\r\n\r\n", BAD, true);
  dialog(port, "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc", BAD, true);
  dialog(port, "GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", BAD, true);
  dialog(port, REQ("/") "BAD\r\n\r\n" REQ("/"), HELLO BAD, true); /* answered up to the error */
  dialog(port, "GET / HTTP/2.0\r\nHost: t\r\n\r\n",
         "HTTP/1.1 505 HTTP Version Not Supported\r\n" DATE TYPE "Content-Length: 12\r\nConnection: close\r\n\r\n"
         "bad request\n",
         true);
  /* A head past 8 KiB, with and without its end. */
  static char big[20000];
  int n = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: t\r\nX: ");
  memset(big + n, 'a', sizeof big - (size_t)n - 5);
  memcpy(big + sizeof big - 5, "\r\n\r\n", 5);
  const char *too = "HTTP/1.1 431 Request Header Fields Too Large\r\n" DATE TYPE "Content-Length: 12\r\n"
                    "Connection: close\r\n\r\nbad request\n";
  int fd = dial(port);
  send_all(fd, big, 9000);
  recv_exact(fd, too, strlen(too));
  expect_eof(fd);
  fd = dial(port);
  send_all(fd, big, strlen(big));
  recv_exact(fd, too, strlen(too));
  expect_eof(fd);
  close(dialog(port, REQ("/"), HELLO, false)); /* still serving */
  stop(SIGTERM);
}

static void test_deadline(void **state) {
  (void)state;
  const char *args[] = {"--header-timeout-ms", "300", NULL};
  unsigned port = start(args);
  int slow = dial(port), idle = dial(port);
  send_all(slow, "GET / HTTP/1.1\r\nHost:", 21);
  expect_eof(slow);
  expect_eof(idle);
  /* After a response the next head has its own deadline. */
  int fd = dialog(port, REQ("/"), HELLO, false);
  send_all(fd, "GET /", 5);
  expect_eof(fd);
  stop(SIGTERM);
}

static void test_http10(void **state) {
  (void)state;
  unsigned port = start(NULL);
  dialog(port, "GET / HTTP/1.0\r\n\r\n", HELLO_CLOSE, true);
  int fd = dialog(port, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
                  "HTTP/1.1 200 OK\r\n" DATE TYPE "Content-Length: 13\r\nConnection: keep-alive\r\n\r\nHello, World!",
                  false);
  send_all(fd, "GET /x HTTP/1.0\r\n\r\n", 19);
  recv_exact(fd, "HTTP/1.1 404 Not Found\r\n" DATE TYPE "Content-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
             strlen("HTTP/1.1 404 Not Found\r\n" DATE TYPE "Content-Length: 10\r\nConnection: close\r\n\r\nnot found\n"));
  expect_eof(fd);
  stop(SIGTERM);
}

/* 100 clients connected at once on two workers, each with 5 requests in
 * flight before any response is read. */
static void test_concurrent(void **state) {
  (void)state;
  const char *args[] = {"--workers", "2", NULL};
  unsigned port = start(args);
  enum { N = 100 };
  int fds[N];
  const char *req = REQ("/") REQ("/a") REQ("/") REQ("/b") REQ_CLOSE("/");
  const char *want = HELLO NOT_FOUND HELLO NOT_FOUND HELLO_CLOSE;
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < N; i++) fds[i] = dial(port);
    for (int i = 0; i < N; i++) send_all(fds[i], req, strlen(req));
    for (int i = N - 1; i >= 0; i--) {
      recv_exact(fds[i], want, strlen(want));
      expect_eof(fds[i]);
    }
  }
  stop(SIGTERM);
}

/* SIGINT with connections open, idle and mid-request: exit status 0. */
static void test_sigint(void **state) {
  (void)state;
  const char *args[] = {"--workers", "2", NULL};
  unsigned port = start(args);
  int a = dial(port), b = dialog(port, REQ("/"), HELLO, false), c = dial(port);
  send_all(c, "GET / HT", 8);
  stop(SIGINT);
  close(a), close(b), close(c);
  port = start(NULL);
  close(dialog(port, REQ("/"), HELLO, false));
  stop(SIGTERM);
}

/* ------------------------------------------------------------------------ */
/* The fuzzer                                                                */
/* ------------------------------------------------------------------------ */

static void write_file(const char *dir, const char *name, const char *text, size_t len) {
  char path[128];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, len), (ssize_t)len);
  close(fd);
}

/* Remove @dir and the files in it (the corpus libFuzzer grew). */
static void rm_tree(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char path[512];
  while (d && (e = readdir(d)))
    if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      if (unlink(path) != 0) rm_tree(path);
    }
  if (d) closedir(d);
  rmdir(dir);
}

/* Seeds (first byte: the head limit, see fuzz_http.c) and a dictionary. */
static void fuzz_inputs(const char *dir) {
  static const char *seeds[] = {
      "\xff" REQ("/") REQ_CLOSE("/file/x?y=1"),
      "\x40" "GET / HTTP/1.0\r\nConnection: keep-alive, x\r\nContent-Length: 12\r\n\r\n",
      "\xff" "HEAD /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nX:  y \t\r\n\r\n",
      "\x02" "GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "\xff" "GET / HTTP/2.0\r\n\r\nGET /\nHost: t\n\n",
  };
  char name[16], corpus[128];
  snprintf(corpus, sizeof corpus, "%s/corpus", dir);
  assert_int_equal(mkdir(corpus, 0700), 0);
  for (size_t i = 0; i < sizeof seeds / sizeof *seeds; i++) {
    snprintf(name, sizeof name, "seed%zu", i);
    write_file(corpus, name, seeds[i], strlen(seeds[i]));
  }
  static const char dict[] =
      "\"GET\"\n\"HEAD\"\n\"HTTP/1.1\"\n\"HTTP/1.0\"\n\"\\x0d\\x0a\"\n\"\\x0d\\x0a\\x0d\\x0a\"\n"
      "\"Host: \"\n\"Connection: \"\n\"close\"\n\"keep-alive\"\n\"Content-Length: \"\n"
      "\"Transfer-Encoding: \"\n\"/file/\"\n";
  write_file(dir, "dict", dict, sizeof dict - 1);
}

/* build/fuzz/fuzz_http for 20 s: a crash, a leak, an invariant's abort or
 * a slow input fails the test. Prints the runs done. */
static void test_fuzz(void **state) {
  (void)state;
  if (strcmp(AX_SAN, "") != 0) {
    /* The fuzzer is its own binary, built with ASan+UBSan whatever the
     * variant: running it once per `make test` is enough. */
    printf("fuzz: runs once, from the plain variant (%s is built with ASan+UBSan)\n", FUZZER);
    skip();
  }
  if (access(FUZZER, X_OK) != 0) {
    printf("fuzz: %s not built (no clang with libFuzzer here): skipped\n", FUZZER);
    skip();
  }
  char dir[64], corpus[128], dict[128], log[128];
  snprintf(dir, sizeof dir, "/tmp/axon-fuzz-XXXXXX");
  assert_non_null(mkdtemp(dir));
  fuzz_inputs(dir);
  snprintf(corpus, sizeof corpus, "%s/corpus", dir);
  snprintf(dict, sizeof dict, "-dict=%s/dict", dir);
  snprintf(log, sizeof log, "%s/log", dir);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0) _exit(126);
    execl(FUZZER, FUZZER, "-max_total_time=20", "-timeout=5", "-max_len=4096", dict,
          "-print_final_stats=1", corpus, (char *)NULL);
    _exit(127);
  }
  g_child = pid;
  int st = 0;
  int64_t deadline = now_ms() + 80000;
  while (waitpid(pid, &st, WNOHANG) != pid) {
    if (now_ms() > deadline) fail_msg("the fuzzer ran past 80 s (log: %s)", log);
    sleep_ms(50);
  }
  g_child = 0;
  char line[256], done[256] = "";
  FILE *f = fopen(log, "r");
  while (f && fgets(line, sizeof line, f)) {
    if (strncmp(line, "Done ", 5) == 0 || strstr(line, "ERROR") || strstr(line, "invariant"))
      snprintf(done, sizeof done, "%s", line);
  }
  if (f) fclose(f);
  printf("fuzz: %s", done[0] ? done : "no summary line\n");
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || strncmp(done, "Done ", 5) != 0)
    fail_msg("the fuzzer failed (wait status 0x%x): see %s", st, log);
  rm_tree(dir);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, watchdog_fire);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < 1024) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 1024 ? 1024 : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_get_root, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_keepalive, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_pipelined, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_file, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_bad_names, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_malformed, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_deadline, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_http10, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_concurrent, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_sigint, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_fuzz, setup, cleanup),
  };
  return cmocka_run_group_tests_name("httpd", tests, NULL, NULL) ? 1 : 0;
}
