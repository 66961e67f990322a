/*
 * test_actor_examples — the actor examples run as child processes with
 * small sizes: pingpong, ring (the hop count and who got the last hop),
 * skynet (the sum), timers_actor (what fired, and nothing after the
 * cancel) and the chat server (two clients in one room get each other's
 * lines exactly, a third in another room gets none of them, /join moves
 * it, SIGTERM ends the server with status 0).
 *
 * No timing thresholds: every wait has a generous deadline (sanitizer
 * builds are slow) after which the child is killed and the test fails.
 * The child's pid is kept so the teardown kills it whatever happened.
 * Only 127.0.0.1 is used.
 */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/wait.h>

#define EXAMPLE(name) AX_BUILD_DIR "/examples/" name
#define DEADLINE_MS 60000

static pid_t child = 0; /* the running child, 0 if none */
static int child_out = -1;

static int teardown(void **state) {
  (void)state;
  if (child > 0) {
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
  }
  child = 0;
  if (child_out >= 0) close(child_out);
  child_out = -1;
  return 0;
}

/* Start @argv[0] with its stdout on a pipe (child_out). */
static void start(char *const argv[]) {
  int p[2];
  if (access(argv[0], X_OK) != 0) fail_msg("%s: %s (build the examples first)", argv[0], strerror(errno));
  assert_int_equal(pipe2(p, O_CLOEXEC), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(p[1], 1) < 0) _exit(126);
    execv(argv[0], argv);
    _exit(127);
  }
  close(p[1]);
  child = pid;
  child_out = p[0];
}

/* Read from @fd into @buf (NUL-terminated) until it holds @want bytes, EOF
 * or the deadline. Returns the bytes held. */
static size_t read_upto(int fd, char *buf, size_t cap, size_t have, size_t want, int64_t until) {
  while (have < want && have + 1 < cap) {
    int64_t left = until - (int64_t)mono_ms();
    struct pollfd pfd = {fd, POLLIN, 0};
    if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) break;
    ssize_t n = read(fd, buf + have, cap - 1 - have);
    if (n <= 0) break;
    have += (size_t)n;
  }
  buf[have] = 0;
  return have;
}

/* Run @argv to the end: its whole stdout in @out, its exit status returned
 * (-1 if it had to be killed at the deadline). */
static int run(char *const argv[], char *out, size_t cap) {
  start(argv);
  int64_t until = (int64_t)mono_ms() + DEADLINE_MS;
  (void)read_upto(child_out, out, cap, 0, cap, until);
  int st = 0;
  while (waitpid(child, &st, WNOHANG) == 0) {
    if ((int64_t)mono_ms() > until) {
      kill(child, SIGKILL);
      waitpid(child, NULL, 0);
      child = 0;
      return -1;
    }
    usleep(1000);
  }
  child = 0;
  fprintf(stderr, "%s", out);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void test_pingpong(void **state) {
  (void)state;
  char out[4096];
  char *argv[] = {EXAMPLE("pingpong"), "-n", "2000", NULL};
  assert_int_equal(run(argv, out, sizeof out), 0);
  assert_non_null(strstr(out, "2000 round trips in "));
  char *spin[] = {EXAMPLE("pingpong"), "-n", "2000", "--spin", "20000", NULL};
  assert_int_equal(run(spin, out, sizeof out), 0);
  assert_non_null(strstr(out, " round trips/s\n"));
}

static void test_ring(void **state) {
  (void)state;
  char out[4096];
  char *argv[] = {EXAMPLE("ring"), "-a", "100", "-m", "12345", "--workers", "2", NULL};
  assert_int_equal(run(argv, out, sizeof out), 0);
  assert_non_null(strstr(out, "100 actors, 12345 hops in "));
  char *odd[] = {EXAMPLE("ring"), "-a", "7", "-m", "1000", "--workers", "3", NULL};
  assert_int_equal(run(odd, out, sizeof out), 0);
  assert_non_null(strstr(out, "7 actors, 1000 hops in "));
  char *one[] = {EXAMPLE("ring"), "-a", "1", "-m", "500", "--workers", "1", NULL};
  assert_int_equal(run(one, out, sizeof out), 0);
  assert_non_null(strstr(out, "1 actors, 500 hops in "));
}

static void test_skynet(void **state) {
  (void)state;
  char out[4096];
  char *argv[] = {EXAMPLE("skynet"), "-n", "10000", NULL};
  assert_int_equal(run(argv, out, sizeof out), 0);
  assert_non_null(strstr(out, "sum 49995000 in "));
  char *three[] = {EXAMPLE("skynet"), "-n", "1000", "--workers", "3", NULL};
  assert_int_equal(run(three, out, sizeof out), 0);
  assert_non_null(strstr(out, "sum 499500 in "));
  char *bad[] = {EXAMPLE("skynet"), "-n", "12", NULL};
  assert_int_equal(run(bad, out, sizeof out), 2); /* not a power of 10 */
}

static void test_timers_actor(void **state) {
  (void)state;
  char out[4096];
  char *argv[] = {EXAMPLE("timers_actor"), NULL};
  assert_int_equal(run(argv, out, sizeof out), 0);
  static const char *want[] = {"one-shot timer\n", "interval tick 4\n", "interval cancelled: 0\n",
                               "reply to the fast request\n", "timeout of the slow request\n",
                               "done: all as expected\n"};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(out, want[i])) fail_msg("timers_actor: no \"%s\"", want[i]);
  assert_null(strstr(out, "interval tick 5"));
  assert_null(strstr(out, "reply to the slow"));
  assert_null(strstr(out, "timeout of the fast"));
}

/* ---- chat ------------------------------------------------------------- */

struct peer { int fd; char buf[4096]; size_t len; };

static void peer_connect(struct peer *p, unsigned port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  p->len = 0;
  p->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(p->fd >= 0);
  assert_int_equal(connect(p->fd, (struct sockaddr *)&sa, sizeof sa), 0);
}

static void say(struct peer *p, const char *line) {
  assert_int_equal(write(p->fd, line, strlen(line)), (ssize_t)strlen(line));
}

/* The next bytes @p receives must be exactly @text. */
static void expect(struct peer *p, const char *text) {
  size_t n = strlen(text);
  p->len = read_upto(p->fd, p->buf, sizeof p->buf, p->len, n, (int64_t)mono_ms() + DEADLINE_MS);
  if (p->len < n || memcmp(p->buf, text, n) != 0)
    fail_msg("chat client %d: wanted \"%s\", got \"%s\"", p->fd, text, p->buf);
  memmove(p->buf, p->buf + n, p->len - n + 1);
  p->len -= n;
}

static void test_chat(void **state) {
  (void)state;
  char *argv[] = {EXAMPLE("chat"), "--port", "0", NULL};
  char banner[128] = "";
  start(argv);
  size_t n = 0;
  while (!strchr(banner, '\n') && n < sizeof banner - 1) {
    size_t m = read_upto(child_out, banner, sizeof banner, n, n + 1, (int64_t)mono_ms() + DEADLINE_MS);
    if (m == n) fail_msg("chat: no banner");
    n = m;
  }
  unsigned port = 0;
  assert_int_equal(sscanf(banner, "listening on 127.0.0.1:%u", &port), 1);
  struct peer a, b, c;
  peer_connect(&a, port), peer_connect(&b, port), peer_connect(&c, port);
  expect(&a, "* joined lobby\n"), expect(&b, "* joined lobby\n"), expect(&c, "* joined lobby\n");
  say(&c, "/join side\n");
  expect(&c, "* joined side\n");
  say(&a, "hello from a\n");
  expect(&b, "hello from a\n");
  say(&b, "and hi from b\n");
  expect(&a, "and hi from b\n");
  /* c left before either line was sent: the next thing it hears is the
   * answer to its own /join, nothing of a's or b's. */
  say(&c, "/join lobby\n");
  expect(&c, "* joined lobby\n");
  say(&c, "c is back\n");
  expect(&a, "c is back\n"), expect(&b, "c is back\n");
  say(&a, "welcome\n");
  expect(&b, "welcome\n"), expect(&c, "welcome\n");
  assert_int_equal(a.len + b.len + c.len, 0);
  close(a.fd), close(b.fd), close(c.fd);

  assert_int_equal(kill(child, SIGTERM), 0);
  int st = 0;
  int64_t until = (int64_t)mono_ms() + DEADLINE_MS;
  while (waitpid(child, &st, WNOHANG) == 0) {
    if ((int64_t)mono_ms() > until) fail_msg("chat: still running after SIGTERM");
    usleep(1000);
  }
  child = 0;
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_pingpong, teardown),
      cmocka_unit_test_teardown(test_ring, teardown),
      cmocka_unit_test_teardown(test_skynet, teardown),
      cmocka_unit_test_teardown(test_timers_actor, teardown),
      cmocka_unit_test_teardown(test_chat, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
