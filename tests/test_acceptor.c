/*
 * test_acceptor — the acceptor and connection actors (ax_listen), in
 * process and through examples/echo_actor run as a child process.
 *
 * In process, on a runtime of the group's backend: placement (round-robin
 * within ±10% of even over 1,000 connections; least-connections, checked
 * step by step: every connection waits for its actor's hello, so the
 * counts the acceptor sees are exact; REUSEPORT: every worker gets some),
 * a connection given to an actor on another worker (and on the same one)
 * while the client keeps streaming a pattern (every byte echoed once, in
 * order, the two actors' counts add up), a connection actor's exit closes
 * its socket, and stopping the runtime with live connections and accepts
 * in flight (no leak under ASan; terminate once each).
 *
 * echo_actor as a child (helpers from childutil.h, with stderr to a
 * file checked for the per-worker dump): exact bytes for 1 client on every
 * placement and backend and for 1,000 clients, half-close, a client that
 * never reads (the server's RSS stays bounded), fd exhaustion (a child with
 * RLIMIT_NOFILE 64 and 150 clients keeps serving once they go). Each is
 * stopped with SIGTERM or SIGINT and must exit 0. Only 127.0.0.1 is used;
 * no assertion depends on how fast anything runs.
 */
#include "childutil.h"

#include <stdatomic.h>

#define EXAMPLE(name) AX_BUILD_DIR "/examples/" name
#define MIB (1024u * 1024u)
#define TEST_LIMIT_S 60 /* the alarm of one test */
#define MAXW 8

/* Children and clients: childutil.h (stderr of a child to a file, a fd
 * limit). */

/* ------------------------------------------------------------------------ */
/* @fd reads EOF within @ms, with no byte before it. */
static void expect_eof(int fd, int ms, const char *who) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  char b;
  if (poll(&p, 1, ms) != 1)
    fail_msg("%s: no EOF within %d ms", who, ms);
  ssize_t r = recv(fd, &b, 1, MSG_DONTWAIT);
  if (r != 0)
    fail_msg("%s: want EOF, recv returned %zd (%s)", who, r,
             r < 0 ? strerror(errno) : "a byte");
}
/* ------------------------------------------------------------------------ */
/* In process: a runtime, an acceptor, blocking clients                      */
/* ------------------------------------------------------------------------ */

/* What the connection actors of one test report. */
struct env {
  atomic_uint born[MAXW]; /* connection actors started, per worker */
  atomic_uint ended;      /* terminate calls */
  atomic_uint bad;        /* an actor saw something wrong (no cmocka there) */
};

static ax_rt_t *rt_start(unsigned workers) {
  ax_rt_options_t o;
  ax_rt_options_init(&o);
  o.workers = workers;
  o.backend = ax_test_backend;
  ax_rt_t *rt = NULL;
  int rc = ax_rt_new(&o, &rt);
  if (rc)
    fail_msg("ax_rt_new: %s", ax_strerror(rc));
  return rt;
}

/* ax_listen on 127.0.0.1:0; returns the acceptor, its port in *@port. */
static ax_acceptor_t *listen_local_rt(ax_rt_t *rt, ax_place_t place,
                                      const ax_behaviour_t *b, void *arg,
                                      unsigned *port) {
  ax_acceptor_options_t o;
  ax_acceptor_options_init(&o);
  o.place = place;
  o.arg = arg;
  ax_addr_t a;
  ax_acceptor_t *acc = NULL;
  assert_int_equal(ax_addr_ip("127.0.0.1", 0, &a), 0);
  int rc = ax_listen(rt, &a, b, &o, &acc);
  if (rc)
    fail_msg("ax_listen: %s", ax_strerror(rc));
  assert_int_equal(ax_acceptor_addr(acc, &a), 0);
  *port = ax_addr_port(&a);
  assert_true(*port > 0);
  return acc;
}

/* The next byte on @fd within @ms; fails on EOF, error or time-out. */
static unsigned char read_byte(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  unsigned char b;
  if (poll(&p, 1, ms) != 1)
    fail_msg("no byte within %d ms", ms);
  ssize_t r = recv(fd, &b, 1, MSG_DONTWAIT);
  if (r != 1)
    fail_msg("want a byte, recv returned %zd (%s)", r, r < 0 ? strerror(errno) : "EOF");
  return b;
}

/* Wait up to @ms for *@v to reach @want; returns its last value. */
static unsigned wait_count(atomic_uint *v, unsigned want, int ms) {
  int64_t deadline = now_ms() + ms;
  unsigned have;
  while ((have = atomic_load(v)) < want && now_ms() < deadline)
    sleep_ms(2);
  return have;
}

/* Connection actors alive on worker @i, per ax_rt_stats. */
static uint64_t conns_on(ax_rt_t *rt, unsigned i) {
  ax_worker_stats_t st;
  assert_int_equal(ax_rt_stats(rt, i, &st), 0);
  return st.connections;
}

/* Wait up to @ms until worker @i has @n connection actors. */
static void conns_settle(ax_rt_t *rt, unsigned i, uint64_t n, int ms) {
  int64_t deadline = now_ms() + ms;
  while (conns_on(rt, i) != n) {
    if (now_ms() > deadline)
      fail_msg("worker %u: %llu connection actors after %d ms, want %llu", i,
               (unsigned long long)conns_on(rt, i), ms, (unsigned long long)n);
    sleep_ms(2);
  }
}

/* "whoami": a connection actor that writes its worker's index (one byte),
 * then reads: a 'q' or the end of the stream ends it. */
static void who_read(ax_stream_t *s, int status, ax_slice_t *data, void *ud) {
  (void)s;
  if (status < 0 || (data->len && memchr(ax_slice_ptr(*data), 'q', data->len)))
    ax_exit(ud, AX_EXIT_NORMAL);
}

static int who_init(ax_actor_t *self, void *state, void *arg) {
  struct env *env = state;
  ax_stream_t *s = ((ax_conn_t *)arg)->stream;
  unsigned char w = (unsigned char)ax_actor_worker(self);
  if (ax_actor_stream(self) != s || ax_stream_data(s) != self)
    atomic_fetch_add(&env->bad, 1);
  atomic_fetch_add(&env->born[w], 1);
  int rc = ax_stream_write(s, &w, 1, NULL, NULL);
  return rc ? rc : ax_stream_read_start(s, who_read);
}

static void who_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)self, (void)state, (void)m;
}

static void who_terminate(ax_actor_t *self, void *state, int reason) {
  struct env *env = state;
  (void)self, (void)reason;
  atomic_fetch_add(&env->ended, 1);
}

static const ax_behaviour_t who = {
    .init = who_init, .receive = who_receive, .terminate = who_terminate, .name = "who"};

/* Connect to @port and return the worker its actor said it lives on. */
static unsigned who_connect(unsigned port, unsigned workers, int *fd_out) {
  int fd = connect_to(port, 0);
  unsigned w = read_byte(fd, 10000);
  if (w >= workers)
    fail_msg("actor on worker %u of %u", w, workers);
  if (fd_out)
    *fd_out = fd;
  else
    close(fd);
  return w;
}

/* Round-robin: 1,000 connections, each worker within ±10% of even. */
static void test_rr_distribution(void **state) {
  (void)state;
  enum { W = 4, N = 1000 };
  struct env env = {0};
  unsigned port, count[W] = {0};
  ax_rt_t *rt = rt_start(W);
  ax_acceptor_t *acc = listen_local_rt(rt, AX_PLACE_ROUND_ROBIN, &who, &env, &port);
  for (int i = 0; i < N; i++)
    count[who_connect(port, W, NULL)]++;
  for (unsigned w = 0; w < W; w++)
    if (count[w] < N / W * 9 / 10 || count[w] > N / W * 11 / 10)
      fail_msg("round-robin: worker %u got %u of %u connections", w, count[w], N);
  assert_int_equal(ax_acceptor_accepted(acc), N);
  if (wait_count(&env.ended, N, 10000) != N)
    fail_msg("%u of %d connection actors ended after their clients closed",
             atomic_load(&env.ended), N);
  for (unsigned w = 0; w < W; w++) {
    assert_int_equal(atomic_load(&env.born[w]), count[w]);
    conns_settle(rt, w, 0, 5000);
  }
  assert_int_equal(atomic_load(&env.bad), 0);
  ax_rt_free(rt);
}

/* Least connections: 30 held connections on 3 workers land 10 on each;
 * once worker 1's close, the next 10 all go to worker 1. Every connect
 * waits for its actor's byte, so what the acceptor sees is exact. */
static void test_least_conn(void **state) {
  (void)state;
  enum { W = 3, K = 10 };
  struct env env = {0};
  unsigned port, count[W] = {0};
  int fds[W * K], where[W * K];
  ax_rt_t *rt = rt_start(W);
  listen_local_rt(rt, AX_PLACE_LEAST_CONN, &who, &env, &port);
  for (int i = 0; i < W * K; i++)
    count[where[i] = (int)who_connect(port, W, &fds[i])]++;
  for (unsigned w = 0; w < W; w++)
    if (count[w] != K)
      fail_msg("least-conn: worker %u got %u of %d connections", w, count[w], W * K);
  for (int i = 0; i < W * K; i++)
    if (where[i] == 1)
      close(fds[i]), fds[i] = -1;
  conns_settle(rt, 1, 0, 5000);
  for (int i = 0, j = 0; i < K; i++) {
    while (fds[j] >= 0)
      j++;
    unsigned w = who_connect(port, W, &fds[j]);
    if (w != 1)
      fail_msg("least-conn: connection %d after worker 1 emptied went to worker %u", i,
               w);
  }
  for (unsigned w = 0; w < W; w++)
    assert_int_equal(conns_on(rt, w), K);
  for (int i = 0; i < W * K; i++)
    close(fds[i]);
  assert_int_equal(atomic_load(&env.bad), 0);
  ax_rt_free(rt);
}

/* SO_REUSEPORT: a listener per worker, the kernel spreads by a hash of the
 * client's address and port: with 200 connections on 4 workers, every
 * worker gets some (missing one by chance: (3/4)^200). */
static void test_reuseport(void **state) {
  (void)state;
  enum { W = 4, N = 200 };
  struct env env = {0};
  unsigned port, count[W] = {0};
  ax_rt_t *rt = rt_start(W);
  ax_acceptor_t *acc = listen_local_rt(rt, AX_PLACE_REUSEPORT, &who, &env, &port);
  for (int i = 0; i < N; i++)
    count[who_connect(port, W, NULL)]++;
  for (unsigned w = 0; w < W; w++)
    if (count[w] == 0)
      fail_msg("reuseport: worker %u got none of %d connections", w, N);
  assert_int_equal(ax_acceptor_accepted(acc), N);
  assert_int_equal(atomic_load(&env.bad), 0);
  ax_rt_free(rt);
}

/* A connection actor's exit closes its socket: the client reads EOF, on
 * the acceptor's worker and on the other one. */
static void test_conn_exit_closes(void **state) {
  (void)state;
  struct env env = {0};
  unsigned port;
  int fd[2];
  ax_rt_t *rt = rt_start(2);
  listen_local_rt(rt, AX_PLACE_ROUND_ROBIN, &who, &env, &port);
  bool seen[2] = {false, false};
  for (int i = 0; i < 2; i++)
    seen[who_connect(port, 2, &fd[i])] = true;
  assert_true(seen[0] && seen[1]); /* round-robin: one each */
  for (int i = 0; i < 2; i++) {
    assert_int_equal(send(fd[i], "q", 1, MSG_NOSIGNAL), 1);
    expect_eof(fd[i], 10000, "client after its actor exited");
    close(fd[i]);
  }
  assert_int_equal(wait_count(&env.ended, 2, 5000), 2);
  conns_settle(rt, 0, 0, 5000);
  conns_settle(rt, 1, 0, 5000);
  assert_int_equal(atomic_load(&env.bad), 0);
  ax_rt_free(rt);
}

/* ax_acceptor_close(): new connections are refused (within a bounded
 * wait: the listener on the other worker closes at its next drain), the
 * ones already accepted go on, a second close is -EALREADY. Called from
 * this thread for round-robin, and from an actor for REUSEPORT. */
static bool refused_now(unsigned port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  assert_true(fd >= 0);
  int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  int err = errno;
  close(fd);
  return rc != 0 && err == ECONNREFUSED;
}

/* Wait until every accepted connection has its actor (init ran): 5 s. */
static unsigned born_settle(struct env *env, uint64_t accepted) {
  int64_t deadline = now_ms() + 5000;
  unsigned born;
  while ((born = atomic_load(&env->born[0]) + atomic_load(&env->born[1])) != accepted) {
    if (now_ms() > deadline)
      fail_msg("%u connection actors for %llu accepted connections", born,
               (unsigned long long)accepted);
    sleep_ms(2);
  }
  assert_true(born >= 2);
  return born;
}

static void acceptor_close_check(ax_rt_t *rt, ax_acceptor_t *acc, unsigned port,
                                 struct env *env) {
  int fd[2];
  for (int i = 0; i < 2; i++)
    (void)who_connect(port, 2, &fd[i]);
  assert_int_equal(ax_acceptor_close(acc), 0);
  assert_int_equal(ax_acceptor_close(acc), -EALREADY);
  int64_t deadline = now_ms() + 5000;
  while (!refused_now(port)) {
    if (now_ms() > deadline)
      fail_msg("127.0.0.1:%u still accepts 5 s after ax_acceptor_close", port);
    sleep_ms(5);
  }
  uint64_t accepted = ax_acceptor_accepted(acc);
  for (int i = 0; i < 2; i++) { /* the actors still serve their clients */
    assert_int_equal(send(fd[i], "q", 1, MSG_NOSIGNAL), 1);
    expect_eof(fd[i], 10000, "client of a closed acceptor");
    close(fd[i]);
  }
  /* A probe that got in before the close has an actor too (it ended at
   * the probe's close): every actor born ends, and none is born after. */
  unsigned born = born_settle(env, accepted);
  assert_int_equal(wait_count(&env->ended, born, 5000), born);
  assert_true(ax_acceptor_accepted(acc) == accepted);
  assert_int_equal(atomic_load(&env->bad), 0);
  (void)rt;
}

static void test_acceptor_close(void **state) {
  (void)state;
  struct env env = {0};
  unsigned port;
  ax_rt_t *rt = rt_start(2);
  ax_acceptor_t *acc = listen_local_rt(rt, AX_PLACE_ROUND_ROBIN, &who, &env, &port);
  acceptor_close_check(rt, acc, port, &env);
  ax_rt_free(rt);
}

/* The same with a listener per worker, closed from inside an actor (one
 * listener there at once, the other by a post). */
static void closer_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)self, (void)state;
  atomic_int *rc = *(atomic_int **)m->data;
  atomic_store(rc, ax_acceptor_close(*(ax_acceptor_t **)((char *)m->data + sizeof rc)));
}

static void test_acceptor_close_reuseport(void **state) {
  (void)state;
  struct env env = {0};
  unsigned port;
  ax_rt_t *rt = rt_start(2);
  ax_acceptor_t *acc = listen_local_rt(rt, AX_PLACE_REUSEPORT, &who, &env, &port);
  int fd[2];
  for (int i = 0; i < 2; i++)
    (void)who_connect(port, 2, &fd[i]);
  static const ax_behaviour_t closer = {.receive = closer_receive, .name = "closer"};
  ax_spawn_options_t so;
  ax_spawn_options_init(&so);
  so.worker = 1;
  ax_aid_t id;
  assert_int_equal(ax_spawn(rt, &closer, NULL, &so, &id), 0);
  atomic_int rc = 1;
  struct { atomic_int *rc; ax_acceptor_t *acc; } req = {&rc, acc};
  assert_int_equal(ax_rt_send(rt, id, 1, &req, sizeof req), 0);
  int64_t deadline = now_ms() + 5000;
  while (atomic_load(&rc) == 1 && now_ms() < deadline)
    sleep_ms(2);
  assert_int_equal(atomic_load(&rc), 0);
  while (!refused_now(port)) {
    if (now_ms() > deadline)
      fail_msg("127.0.0.1:%u still accepts after ax_acceptor_close", port);
    sleep_ms(5);
  }
  for (int i = 0; i < 2; i++) {
    assert_int_equal(send(fd[i], "q", 1, MSG_NOSIGNAL), 1);
    expect_eof(fd[i], 10000, "client of a closed acceptor");
    close(fd[i]);
  }
  unsigned born = born_settle(&env, ax_acceptor_accepted(acc));
  assert_int_equal(wait_count(&env.ended, born, 5000), born);
  assert_int_equal(ax_acceptor_close(acc), -EALREADY);
  ax_rt_free(rt);
}

/* Stopping the runtime with connections open, unread data in their kernel
 * buffers, and a client thread still connecting (accepts and hand-offs in
 * flight): every terminate runs once, the clients read EOF or a reset,
 * ax_rt_free returns, and ASan finds nothing leaked. */
struct dialer {
  unsigned port;
  atomic_bool stop;
  pthread_t thr;
};

static void *dialer_main(void *arg) {
  struct dialer *d = arg;
  int fds[64];
  unsigned n = 0;
  while (!atomic_load(&d->stop)) {
    if (n == 64) { /* keep a bounded number open */
      for (unsigned i = 0; i < n; i++)
        close(fds[i]);
      n = 0;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)d->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
      break;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
      close(fd);
      sleep_ms(1); /* refused once the listener is gone */
      continue;
    }
    fds[n++] = fd;
  }
  for (unsigned i = 0; i < n; i++)
    close(fds[i]);
  return NULL;
}

static void test_rt_stop_live(void **state) {
  (void)state;
  enum { N = 20 };
  struct env env = {0};
  unsigned port;
  int fd[N];
  static char junk[100 * 1024];
  ax_rt_t *rt = rt_start(2);
  ax_acceptor_t *acc = listen_local_rt(rt, AX_PLACE_ROUND_ROBIN, &who, &env, &port);
  for (int i = 0; i < N; i++) {
    who_connect(port, 2, &fd[i]);
    ssize_t w = send(fd[i], junk, sizeof junk, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w <= 0)
      fail_msg("client %d: send: %s", i, strerror(errno));
  }
  struct dialer d = {.port = port};
  assert_int_equal(pthread_create(&d.thr, NULL, dialer_main, &d), 0);
  int64_t deadline = now_ms() + 10000;
  while (ax_acceptor_accepted(acc) < N + 50 && now_ms() < deadline)
    sleep_ms(1);
  ax_rt_stop(rt);
  assert_int_equal(ax_rt_join(rt), 0);
  uint64_t spawned = 0; /* terminate runs for each, init or not */
  for (unsigned w = 0; w < 2; w++) {
    ax_worker_stats_t st;
    assert_int_equal(ax_rt_stats(rt, w, &st), 0);
    spawned += st.spawned;
    assert_int_equal(st.actors, 0);
    assert_int_equal(st.connections, 0);
  }
  if (atomic_load(&env.ended) != spawned)
    fail_msg("%llu connection actors spawned, %u terminated", (unsigned long long)spawned,
             atomic_load(&env.ended));
  ax_rt_free(rt);
  atomic_store(&d.stop, true);
  pthread_join(d.thr, NULL);
  for (int i = 0; i < N; i++) {
    struct pollfd p = {.fd = fd[i], .events = POLLIN};
    char b;
    if (poll(&p, 1, 5000) != 1)
      fail_msg("client %d: nothing within 5 s of the stop", i);
    ssize_t r = recv(fd[i], &b, 1, MSG_DONTWAIT);
    if (r > 0)
      fail_msg("client %d: a byte after the stop", i);
    close(fd[i]);
  }
}

/* ------------------------------------------------------------------------ */
/* ax_stream_give while the client streams                                   */
/* ------------------------------------------------------------------------ */

enum { TAG_STREAM = 1, TAG_RETRY };
#define GIVE_AFTER (256u * 1024u) /* the first actor echoes this much, then gives */
#define GIVE_TOTAL (4u * MIB)

struct genv {
  ax_aid_t taker[2]; /* one per worker */
  bool other;        /* give to the other worker's taker (else the same) */
  atomic_uint gave;  /* bytes the first actor echoed; set when it gave */
  atomic_uint taken; /* bytes the taker echoed; set when it shut down */
  atomic_int giver_w, taker_w;
  atomic_int err;   /* first error seen by an actor */
  atomic_uint busy; /* gives refused with -EBUSY (then retried) */
};

struct mover {
  struct genv *env;
  ax_stream_t *s;
  unsigned echoed;
};

static void genv_err(struct genv *env, int rc) {
  int zero = 0;
  atomic_compare_exchange_strong(&env->err, &zero, rc);
}

static void mover_read(ax_stream_t *s, int status, ax_slice_t *data, void *ud);

/* Give the stream, now idle, to the taker chosen. */
static void try_give(ax_actor_t *self) {
  struct mover *st = ax_actor_state(self);
  if (!st->s)
    return; /* given already */
  ax_aid_t to = st->env->taker[(ax_actor_worker(self) + st->env->other) % 2];
  int rc = ax_stream_give(self, st->s, to, TAG_STREAM);
  if (rc == -EBUSY) {
    /* io_uring: a recv completed with bytes before the stop; they must be
     * read (and echoed) first: read again, stop after a read or 5 ms,
     * whichever comes first, and try again. */
    atomic_fetch_add(&st->env->busy, 1);
    rc = ax_stream_read_start(st->s, mover_read);
    if (rc == 0)
      rc = ax_after(self, 5, TAG_RETRY, NULL);
  } else if (rc == 0) {
    st->s = NULL;
    if (ax_actor_stream(self))
      genv_err(st->env, -EEXIST); /* it still owns one */
    atomic_store(&st->env->giver_w, (int)ax_actor_worker(self));
    atomic_store(&st->env->gave, st->echoed);
    ax_exit(self, AX_EXIT_NORMAL); /* owns no stream now: nothing closes */
  }
  if (rc) {
    genv_err(st->env, rc);
    ax_exit(self, AX_EXIT_ERROR);
  }
}

/* The echo queued before the stop is written: the stream is idle. */
static void mover_flushed(ax_stream_t *s, int status, void *ud) {
  ax_actor_t *self = ax_stream_data(s);
  (void)ud;
  if (!self)
    return;
  if (status < 0) {
    genv_err(((struct mover *)ax_actor_state(self))->env, status);
    ax_exit(self, AX_EXIT_ERROR);
    return;
  }
  try_give(self);
}

static void mover_read(ax_stream_t *s, int status, ax_slice_t *data, void *ud) {
  ax_actor_t *self = ud;
  struct mover *st = ax_actor_state(self);
  int rc = status < 0 ? status : ax_stream_write_slices(s, data, 1, NULL, NULL);
  if (rc < 0) {
    genv_err(st->env, rc == AX_EOF ? -EPIPE : rc); /* EOF before the hand-off */
    ax_exit(self, AX_EXIT_ERROR);
    return;
  }
  st->echoed += data->len;
  if (st->echoed >= GIVE_AFTER) {
    ax_stream_read_stop(s); /* the rest stays in the kernel for the taker */
    rc = ax_stream_write(s, NULL, 0, mover_flushed, NULL);
    if (rc)
      genv_err(st->env, rc), ax_exit(self, AX_EXIT_ERROR);
  }
}

static int mover_init(ax_actor_t *self, void *state, void *arg) {
  struct mover *st = state;
  ax_conn_t *c = arg;
  (void)self;
  st->env = c->arg;
  st->s = c->stream;
  return ax_stream_read_start(st->s, mover_read);
}

static void mover_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  struct mover *st = state;
  if (m->tag != TAG_RETRY || !st->s)
    return;
  ax_stream_read_stop(st->s); /* no read came: stop here, flush, give */
  int rc = ax_stream_write(st->s, NULL, 0, mover_flushed, NULL);
  if (rc)
    genv_err(st->env, rc), ax_exit(self, AX_EXIT_ERROR);
}

static const ax_behaviour_t mover = {.state_size = sizeof(struct mover),
                                     .init = mover_init,
                                     .receive = mover_receive,
                                     .name = "mover"};

struct taker {
  struct genv *env;
  unsigned echoed;
};

static void taker_done(ax_stream_t *s, int status, void *ud) {
  ax_actor_t *self = ax_stream_data(s);
  (void)ud;
  if (!self)
    return;
  struct taker *st = ax_actor_state(self);
  if (status < 0)
    genv_err(st->env, status);
  atomic_store(&st->env->taken, st->echoed);
  ax_exit(self, AX_EXIT_NORMAL);
}

static void taker_read(ax_stream_t *s, int status, ax_slice_t *data, void *ud) {
  ax_actor_t *self = ud;
  struct taker *st = ax_actor_state(self);
  int rc;
  if (status == AX_EOF)
    rc = ax_stream_shutdown(s, taker_done); /* the echo flushed, then EOF */
  else if ((rc = status) >= 0 &&
           (rc = ax_stream_write_slices(s, data, 1, NULL, NULL)) == 0)
    st->echoed += data->len;
  if (rc < 0) {
    genv_err(st->env, rc);
    ax_exit(self, AX_EXIT_ERROR);
  }
}

static int taker_init(ax_actor_t *self, void *state, void *arg) {
  (void)self;
  ((struct taker *)state)->env = arg;
  return 0;
}

static void taker_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  struct taker *st = state;
  if (m->tag != TAG_STREAM)
    return;
  ax_stream_t *s = *(ax_stream_t **)m->data;
  if (m->len != sizeof s || ax_stream_data(s) != self ||
      ax_stream_loop(s) != ax_actor_loop(self) || ax_actor_stream(self) != s)
    genv_err(st->env, -EPROTO);
  atomic_store(&st->env->taker_w, (int)ax_actor_worker(self));
  int rc = ax_stream_read_start(s, taker_read);
  if (rc)
    genv_err(st->env, rc), ax_exit(self, AX_EXIT_ERROR);
}

static const ax_behaviour_t taker = {.state_size = sizeof(struct taker),
                                     .init = taker_init,
                                     .receive = taker_receive,
                                     .name = "taker"};

/* Byte @k of the client's stream. */
static unsigned char pattern(uint64_t k) {
  return (unsigned char)((k * 0x9E3779B97F4A7C15ull) >> 56 ^ k);
}

static uint64_t fnv1a(uint64_t h, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

/* Stream GIVE_TOTAL pattern bytes, half-close, read the echo to EOF: every
 * byte in order (checked one by one, and the hashes of both directions).
 * With @hold, sending pauses after 2 x GIVE_AFTER bytes until *@hold is
 * non-zero (reading goes on). */
static void stream_pattern(unsigned port, atomic_uint *hold) {
  int fd = connect_to(port, 0);
  assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
  static unsigned char out[65536], in[65536];
  uint64_t sent = 0, got = 0, hs = 0xcbf29ce484222325ull, hr = hs;
  bool shut = false;
  int64_t deadline = now_ms() + 15000;
  for (;;) {
    if (now_ms() > deadline)
      fail_msg("give: %llu of %u bytes echoed in 15 s", (unsigned long long)got,
               GIVE_TOTAL);
    bool held = hold && sent >= 2 * GIVE_AFTER && atomic_load(hold) == 0;
    struct pollfd p = {.fd = fd,
                       .events = POLLIN | (sent < GIVE_TOTAL && !held ? POLLOUT : 0)};
    if (poll(&p, 1, held ? 5 : 1000) < 0 && errno != EINTR)
      fail_msg("poll: %s", strerror(errno));
    if ((p.revents & POLLOUT) && sent < GIVE_TOTAL && !held) {
      size_t n = GIVE_TOTAL - sent < sizeof out ? GIVE_TOTAL - sent : sizeof out;
      for (size_t i = 0; i < n; i++)
        out[i] = pattern(sent + i);
      ssize_t w = send(fd, out, n, MSG_NOSIGNAL);
      if (w < 0 && errno != EAGAIN)
        fail_msg("give: send: %s", strerror(errno));
      if (w > 0)
        hs = fnv1a(hs, out, (size_t)w), sent += (uint64_t)w;
    }
    if (sent == GIVE_TOTAL && !shut) {
      assert_int_equal(shutdown(fd, SHUT_WR), 0);
      shut = true;
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = recv(fd, in, sizeof in, 0);
      if (r < 0 && errno != EAGAIN)
        fail_msg("give: recv after %llu bytes: %s", (unsigned long long)got,
                 strerror(errno));
      if (r == 0)
        break;
      for (ssize_t i = 0; i < r; i++)
        if (in[i] != pattern(got + (uint64_t)i))
          fail_msg("give: byte %llu is 0x%02x, want 0x%02x",
                   (unsigned long long)(got + (uint64_t)i), in[i],
                   pattern(got + (uint64_t)i));
      if (r > 0)
        hr = fnv1a(hr, in, (size_t)r), got += (uint64_t)r;
    }
  }
  close(fd);
  if (got != GIVE_TOTAL || hr != hs)
    fail_msg("give: %llu of %u bytes back, hash %016llx, sent %016llx",
             (unsigned long long)got, GIVE_TOTAL, (unsigned long long)hr,
             (unsigned long long)hs);
}

static void give_run(bool other) {
  struct genv env = {.other = other};
  unsigned port;
  ax_rt_t *rt = rt_start(2);
  for (int w = 0; w < 2; w++) {
    ax_spawn_options_t o;
    ax_spawn_options_init(&o);
    o.worker = w;
    assert_int_equal(ax_spawn(rt, &taker, &env, &o, &env.taker[w]), 0);
  }
  listen_local_rt(rt, AX_PLACE_ROUND_ROBIN, &mover, &env, &port);
  /* io_uring: a read stopped inside its callback leaves the recv's later
   * bytes held, and once they are read an empty holder that only a new
   * recv clears (stream_uring.c, held_deliver), so while the client keeps
   * sending every try finds bytes held again: the client pauses there. */
  bool uring = ax_test_backend == AX_BACKEND_URING;
  stream_pattern(port, uring ? &env.gave : NULL);
  int64_t deadline = now_ms() + 5000;
  while (atomic_load(&env.taken) == 0 && atomic_load(&env.err) == 0 &&
         now_ms() < deadline)
    sleep_ms(1);
  if (atomic_load(&env.err))
    fail_msg("give: an actor saw %s (%u gives refused)",
             ax_strerror(atomic_load(&env.err)), atomic_load(&env.busy));
  if (atomic_load(&env.taken) == 0)
    fail_msg("give: the taker did not finish (%u gives refused)", atomic_load(&env.busy));
  unsigned gave = atomic_load(&env.gave), taken = atomic_load(&env.taken);
  if (gave < GIVE_AFTER || taken == 0 || gave + taken != GIVE_TOTAL)
    fail_msg("give: the first actor echoed %u, the taker %u, of %u (%u tries refused)",
             gave, taken, GIVE_TOTAL, atomic_load(&env.busy));
  int gw = atomic_load(&env.giver_w), tw = atomic_load(&env.taker_w);
  if ((gw != tw) != other)
    fail_msg("give: from worker %d to worker %d", gw, tw);
  /* Each byte crossed the workers' streams once each way (ax_rt_stats).
   * The client can have the last bytes before their send's completion is
   * counted (io_uring): wait for the counts, 5 s at most. */
  uint64_t in, out;
  for (int64_t until = now_ms() + 5000;; sleep_ms(2)) {
    in = out = 0;
    for (unsigned w = 0; w < 2; w++) {
      ax_worker_stats_t st;
      assert_int_equal(ax_rt_stats(rt, w, &st), 0);
      in += st.bytes_in, out += st.bytes_out;
    }
    if ((in == GIVE_TOTAL && out == GIVE_TOTAL) || now_ms() > until)
      break;
  }
  if (in != GIVE_TOTAL || out != GIVE_TOTAL)
    fail_msg("give: workers counted %llu bytes in and %llu out, want %u each",
             (unsigned long long)in, (unsigned long long)out, GIVE_TOTAL);
  ax_rt_free(rt);
}

static void test_give_other_worker(void **state) {
  (void)state;
  give_run(true);
}

static void test_give_same_worker(void **state) {
  (void)state;
  give_run(false);
}

/* ------------------------------------------------------------------------ */
/* echo_actor as a child process                                             */
/* ------------------------------------------------------------------------ */

/* echo_actor on the group's backend with @workers and @place; RLIMIT_NOFILE
 * @nofile when > 0. */
static struct child *start_echo(unsigned workers, const char *place, int nofile,
                                unsigned *port) {
  char w[16];
  snprintf(w, sizeof w, "%u", workers);
  char *argv[] = {
      EXAMPLE("echo_actor"),  "--port",  "0",           "--workers", w, "--backend",
      (char *)backend_name(), "--place", (char *)place, NULL};
  return start_server(argv, (rlim_t)nofile, true, port);
}

/* @signo must end echo_actor with status 0 within 10 s, after it printed
 * one line per worker (ax_rt_dump) on stderr. */
static void stop_echo(struct child *c, int signo, unsigned workers) {
  char buf[96], want[32];
  assert_int_equal(kill(c->pid, signo), 0);
  int st = child_wait(c, 10000);
  FILE *f = fopen(c->err, "r");
  static char err[16384];
  size_t n = f ? fread(err, 1, sizeof err - 1, f) : 0;
  if (f)
    fclose(f);
  err[n] = 0;
  child_release(c);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail_msg("echo_actor ended with %s, want exit status 0; its stderr:\n%s",
             status_str(st, buf, sizeof buf), err);
  for (unsigned i = 0; i < workers; i++) {
    snprintf(want, sizeof want, "worker %u: actors=", i);
    if (!strstr(err, want))
      fail_msg("no \"%s\" line in echo_actor's stderr:\n%s", want, err);
  }
}

/* A test past its alarm has hung despite the bounded waits: kill every
 * child (async-signal-safe) and end the process, which fails the run. */
static void watchdog_fire(int signo) {
  static const char msg[] = "ERROR: test_acceptor: a test ran past its alarm\n";
  (void)signo;
  watchdog_exit(msg, sizeof msg - 1);
}

static int setup(void **state) {
  (void)state;
  alarm(TEST_LIMIT_S);
  return 0;
}

/* The teardown of every test: kill and reap every child still registered
 * (by pid), close every client. */
static int cleanup(void **state) {
  (void)state;
  alarm(0);
  children_reap();
  clients_free();
  return 0;
}

/* One client, 1 byte then up to 2 MiB (past the 64 KiB high water), on
 * every placement; 2 workers. */
static void test_echo_one(void **state) {
  (void)state;
  static const char *places[] = {"rr", "least", "reuseport"};
  for (int p = 0; p < 3; p++) {
    unsigned port;
    struct child *srv = start_echo(2, places[p], 0, &port);
    echo_roundtrip(port, 1, 1, 1, 0);
    echo_roundtrip(port, 1, 64 * 1024, 2 * MIB, 0);
    echo_roundtrip(port, 4, 1, 64 * 1024, 2); /* on both workers */
    stop_echo(srv, SIGTERM, 2);
  }
}

static void test_echo_thousand(void **state) {
  (void)state;
  skip_unless_nofile(1100, "1,000 connections need 1,100 fds");
  unsigned port;
  struct child *srv = start_echo(4, "rr", 0, &port);
  echo_roundtrip(port, 1000, 1, 16 * 1024, 2);
  stop_echo(srv, SIGTERM, 4);
}

/* The client shuts its write side: every byte back, then EOF. */
static void test_echo_half_close(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(2, "rr", 0, &port);
  echo_roundtrip(port, 1, 5, 5, 1);
  echo_roundtrip(port, 3, 200 * 1024, 400 * 1024, 1); /* more than the server buffers */
  echo_roundtrip(port, 1, 0, 0, 1);                   /* nothing sent: EOF at once */
  stop_echo(srv, SIGINT, 2);
}

/* A client that sends 50 MB and reads nothing: once the kernel buffers and
 * the actor's 64 KiB queue are full it stops reading, so the server's
 * memory stays bounded and our sends block. */
static void test_echo_bounded(void **state) {
  (void)state;
  unsigned port;
  struct child *srv = start_echo(2, "rr", 0, &port);
  echo_roundtrip(port, 2, 100 * 1024, 100 * 1024, 0); /* warm up both read pools */
  long before = rss_kib(srv->pid);
  int fd = connect_to(port, 4096);
  size_t size = 50 * MIB, sent = send_until_stalled(fd, size);
  long grown = rss_kib(srv->pid) - before;
  if (sent >= size)
    fail_msg("all %zu bytes sent to a client that reads nothing", sent);
  if (grown > 16 * 1024)
    fail_msg("echo_actor grew by %ld KiB while a client sent %zu bytes and read none",
             grown, sent);
  set_linger0(fd);
  close(fd);
  assert_alive(srv);
  echo_roundtrip(port, 2, 1000, 100 * 1024, 2); /* still serving */
  stop_echo(srv, SIGTERM, 2);
}

/* Connections waiting in the accept queue of the listener on 127.0.0.1:
 * @port (/proc/net/tcp: rx_queue of a socket in LISTEN), or -1 if none. */
static long backlog_of(unsigned port) {
  FILE *f = fopen("/proc/net/tcp", "r");
  char line[512];
  long q = -1;
  if (!f)
    fail_msg("/proc/net/tcp: %s", strerror(errno));
  while (q < 0 && fgets(line, sizeof line, f)) {
    unsigned lport, st;
    unsigned long tx, rx;
    if (sscanf(line, " %*u: %*x:%x %*x:%*x %x %lx:%lx", &lport, &st, &tx, &rx) == 4 &&
        lport == port && st == 0x0A)
      q = (long)rx;
  }
  fclose(f);
  return q;
}

/* More clients than the server has fds: the listener sheds and pauses
 * (never spins, never dies); once they go, the fds come back and new
 * clients are served. */
static void test_fd_exhaustion(void **state) {
  (void)state;
  enum { NOFILE = 64, N = 150 };
  unsigned port;
  struct child *srv = start_echo(2, "rr", NOFILE, &port);
  echo_roundtrip(port, 2, 1, 1000, 0);
  sleep_ms(200); /* the warm-up's connections go */
  int idle = fds_of(srv->pid);
  int fd[N];
  for (int i = 0; i < N; i++) {
    fd[i] = connect_to(port, 0); /* the backlog takes them all */
    assert_int_equal(send(fd[i], "x", 1, MSG_NOSIGNAL), 1);
  }
  fds_settle(srv->pid, NOFILE, 3000); /* until the server is full, or 3 s */
  /* Some clients get their byte back; not all can (no fd for them): the
   * rest wait in the backlog or were shed (EOF or reset). */
  int served = 0, shed = 0;
  char seen[N] = {0}, b;
  int64_t deadline = now_ms() + 10000;
  for (;;) {
    for (int i = 0; i < N; i++) {
      ssize_t r = seen[i] ? 1 : recv(fd[i], &b, 1, MSG_DONTWAIT);
      if (seen[i] || (r < 0 && errno == EAGAIN))
        continue;
      seen[i] = 1;
      if (r == 1)
        served++;
      else
        shed++;
    }
    if (served > 0 || now_ms() > deadline)
      break;
    sleep_ms(10);
  }
  if (served == 0 || served >= N)
    fail_msg("%d of %d clients served with %d fds (%d shed)", served, N, NOFILE, shed);
  assert_alive(srv);
  for (int i = 0; i < N; i++)
    close(fd[i]);
  /* The server takes what waits in its backlog (each shows EOF) and ends
   * every connection: its backlog empties and its fds fall back to idle. */
  deadline = now_ms() + 15000;
  int have = -1;
  long queued;
  while (((queued = backlog_of(port)) != 0 || (have = fds_of(srv->pid)) != idle) &&
         now_ms() < deadline)
    sleep_ms(20);
  if (queued != 0 || have != idle)
    fail_msg(
        "15 s after its clients left: %ld connections in echo_actor's backlog, %d fds "
        "(%d idle)",
        queued, have, idle);
  assert_alive(srv);
  echo_roundtrip(port, 20, 1, 32 * 1024, 2); /* served again */
  stop_echo(srv, SIGTERM, 2);
}

int main(void) {
  /* Writes to a closed socket must fail with EPIPE, not kill us. */
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, watchdog_fire);
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur < 2048) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > 2048 ? 2048 : rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      perror("setrlimit(RLIMIT_NOFILE)");
  }
  const struct CMUnitTest epoll_only[] = {
      cmocka_unit_test_setup_teardown(test_rr_distribution, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_least_conn, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_reuseport, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_rt_stop_live, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_acceptor_close, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_acceptor_close_reuseport, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_thousand, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_half_close, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_bounded, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_fd_exhaustion, setup, cleanup),
  };
  const struct CMUnitTest per_backend[] = {
      cmocka_unit_test_setup_teardown(test_give_other_worker, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_give_same_worker, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_conn_exit_closes, setup, cleanup),
      cmocka_unit_test_setup_teardown(test_echo_one, setup, cleanup),
  };
  int failed = cmocka_run_group_tests_name("epoll", epoll_only, ax_test_set_epoll, NULL);
  failed += AX_RUN_ON_BACKENDS(per_backend);
  return failed ? 1 : 0;
}
