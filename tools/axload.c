/*
 * axload — the project's TCP load generator: echo, push and hold loads on
 * HOST:PORT, one epoll loop per thread.
 *
 *   axload [-t N] [-c C] [-r R] [-d SECS] [-w SECS] [-m echo|push|hold]
 *          [-s SIZE] [-p DEPTH] [-q] HOST:PORT
 *
 * It shares no code with the servers it measures: raw epoll and pthreads,
 * nothing from libaxon. HOST is numeric (127.0.0.1, ::1, [::1]): no lookup.
 *
 * Timeline. From the start each thread opens its share of the C connections
 * at R per second (-r 0: as fast as it can), never more than 256 connects in
 * flight, and traffic starts on a connection as soon as it is connected. The
 * first -w seconds are warm-up, the next -d seconds are measured, then every
 * thread closes its connections and the summary is printed. A connect still
 * pending after 5 s fails with ETIMEDOUT. SIGINT or SIGTERM ends the run
 * early (the window ends there), and so does having nothing left open or to
 * open. The workers get 5 s of grace past the end to stop; a worker that
 * does not is reported and left out of the latencies.
 *
 * Modes.
 *   echo  each connection sends SIZE-byte messages and keeps up to DEPTH
 *         outstanding; a message counts when its last byte has come back,
 *         its latency runs from the send() of its first byte to the recv()
 *         of its last. The bytes of connection i are a deterministic stream
 *         (byte k is pattern[(phase_i + k) mod 65521]), so every byte that
 *         comes back is compared with the byte sent at that stream offset; a
 *         wrong byte, or one more than was sent, is a mismatch.
 *   push  writes SIZE-byte chunks as fast as the kernel accepts them and
 *         never reads; mb_per_s counts the bytes send() accepted in the window.
 *   hold  opens the connections and keeps them idle; held= says how many are
 *         still open at the end (closed by the server, or failed: not held).
 *         40 bytes of memory per connection.
 *
 * Many connections. Raise RLIMIT_NOFILE's hard limit for more than it
 * allows (the soft limit is raised to it at the start). Past ~14,000
 * connections to one destination, connect() itself slows to ~1,000 a
 * second: Linux tries every even ephemeral port before any odd one, and
 * scans them all once the even ones are taken. Give such runs the time.
 *
 * Output. A progress line on stderr about 4 times a second, only when stderr
 * is a terminal and -q is not given; one stderr line per kind of error
 * ("axload: connect 127.0.0.1:1: connection refused (x 3)"); and exactly one
 * line on stdout:
 *   axload mode=echo conns=100 threads=1 secs=5.00 reqs=.. rps=.. mb_per_s=..
 *     p50_us=.. p99_us=.. errors=0 mismatches=0 connect_failed=0 held=100
 * reqs: echo messages completed / push chunks accepted in the window;
 * mb_per_s: payload bytes (10^6) echoed back / accepted, one direction;
 * errors: established connections lost (reset, closed by the server);
 * mismatches: wrong or surplus bytes; held: connections open at the end.
 *
 * Exit status: 0; 1 when a connect failed, a byte mismatched or, in echo and
 * push modes, a connection was lost; 2 for usage and set-up errors.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAT_PERIOD 65521u /* a prime: the stream's period */
#define PAT_SPAN 65536u   /* longest piece taken from the pattern at once */
#define RBUF_SIZE 65536u  /* one recv; <= PAT_SPAN: one memcmp checks it */
#define MAX_INFLIGHT 256  /* connects in flight per thread */
#define MAX_EVENTS 256
#define PUSH_BURST 16   /* sends per writable event in push mode */
#define MAX_WAIT_MS 100 /* how late a worker may notice a signal */
#define NS_PER_S 1000000000ull
#define CONNECT_TIMEOUT_NS (5 * NS_PER_S)
#define GRACE_NS (5 * NS_PER_S)

enum mode { M_ECHO, M_PUSH, M_HOLD };
static const char *const mode_names[] = {"echo", "push", "hold"};

struct opts {
  int threads, conns;
  double rate, secs, warm;
  enum mode mode;
  uint32_t size, depth;
  bool quiet;
  struct sockaddr_storage addr;
  socklen_t addrlen;
  char target[80]; /* "127.0.0.1:80" or "[::1]:80", for messages */
};

/* What every thread reads; only `end` changes once the threads run. */
struct run {
  struct opts o;
  const unsigned char *pat; /* PAT_PERIOD + PAT_SPAN bytes, periodic */
  uint64_t t0, meas;        /* start, start of the window (CLOCK_MONOTONIC ns) */
  _Atomic uint64_t end;     /* end of the window: main moves it earlier on a
                             * signal; workers poll it (relaxed: a late look
                             * costs at most one MAX_WAIT_MS wait) */
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------------------------------ */
/* Latency histogram: log-linear, 32 buckets per power of two (~3%), in ns    */
/* ------------------------------------------------------------------------ */

#define H_SUB_BITS 5
#define H_SUB (1u << H_SUB_BITS)
#define H_BUCKETS ((64 - H_SUB_BITS + 1) * H_SUB)

struct hist {
  uint64_t n, b[H_BUCKETS];
};

static unsigned hist_bucket(uint64_t v) {
  if (v < H_SUB)
    return (unsigned)v;
  unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= H_SUB_BITS */
  unsigned sub = (unsigned)(v >> (e - H_SUB_BITS)) & (H_SUB - 1);
  return (e - H_SUB_BITS + 1) * H_SUB + sub;
}

/* The middle of bucket @b. */
static double hist_value(unsigned b) {
  if (b < H_SUB)
    return b;
  unsigned shift = b / H_SUB - 1;
  double lo = (double)((uint64_t)(H_SUB + b % H_SUB) << shift);
  return lo + (double)(1ull << shift) / 2;
}

/* The @q quantile (0 < q <= 1), in ns; 0 when empty. */
static double hist_quantile(const struct hist *h, double q) {
  if (h->n == 0)
    return 0;
  uint64_t rank = (uint64_t)(q * (double)h->n + 0.999999), cum = 0;
  if (rank < 1)
    rank = 1;
  for (unsigned b = 0; b < H_BUCKETS; b++)
    if ((cum += h->b[b]) >= rank)
      return hist_value(b);
  return hist_value(H_BUCKETS - 1);
}

/* ------------------------------------------------------------------------ */
/* Workers                                                                   */
/* ------------------------------------------------------------------------ */

enum cstate { C_IDLE, C_CONNECTING, C_OPEN, C_DONE };

/* One connection: 40 bytes, the whole cost of a held connection here. */
struct conn {
  uint64_t tx, rx;  /* stream offsets: bytes sent, bytes received */
  uint64_t t_start; /* connect started (ns), for the time-out */
  uint32_t phase;   /* where this connection's stream starts in the pattern */
  uint32_t events;  /* epoll interest now (0: not registered) */
  int fd;
  uint8_t state;
};

/* Counters a worker owns; [K_REQS, K_BYTES] count in the window only. */
enum {
  K_REQS,
  K_BYTES,
  K_OPEN,
  K_CONNECTING,
  K_TRIED,
  K_FAILED,
  K_LOST,
  K_MISM,
  K_COUNT
};

enum op { OP_CONNECT, OP_SEND, OP_RECV, OP_CLOSED };
#define ERR_KINDS 8
struct errkind {
  int op, err;
  uint64_t n;
};

struct worker {
  struct run *r;
  pthread_t thr;
  int ep;
  uint32_t nconns, next; /* connections; the next one to open */
  struct conn *conns;
  uint64_t *sent_ns; /* echo: depth send times per connection */
  unsigned char *rbuf;
  struct hist *hist;
  uint64_t end;                   /* r->end as of this iteration */
  uint64_t c[K_COUNT];            /* read by main only after the join */
  _Atomic uint64_t pub[K_COUNT];  /* c[] as of the last iteration: progress
                                   * line and a worker that missed the grace */
  struct errkind errs[ERR_KINDS]; /* the last one also takes any overflow */
  char first_bad[160];            /* the first mismatch, described */
  bool joined;
};

static void note_err(struct worker *w, int op, int err) {
  struct errkind *k = w->errs;
  while (k < w->errs + ERR_KINDS - 1 && k->n && (k->op != op || k->err != err))
    k++;
  if (!k->n)
    k->op = op, k->err = err;
  k->n++;
}

static void publish(struct worker *w) {
  for (int i = 0; i < K_COUNT; i++)
    atomic_store_explicit(&w->pub[i], w->c[i], memory_order_relaxed);
}

static bool measuring(const struct worker *w, uint64_t t) {
  return t >= w->r->meas && t < w->end;
}

/* Set the connection's epoll interest; 0 or an errno. */
static int interest(struct worker *w, struct conn *c, uint32_t events) {
  if (c->events == events)
    return 0;
  struct epoll_event ev = {.events = events, .data.ptr = c};
  if (epoll_ctl(w->ep, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &ev) != 0)
    return errno;
  c->events = events;
  return 0;
}

static void conn_close(struct worker *w, struct conn *c) {
  if (c->state == C_OPEN)
    w->c[K_OPEN]--;
  if (c->state == C_CONNECTING)
    w->c[K_CONNECTING]--;
  if (c->fd >= 0)
    close(c->fd); /* also leaves the epoll set */
  c->fd = -1;
  c->state = C_DONE;
}

static void connect_failed(struct worker *w, struct conn *c, int err) {
  conn_close(w, c);
  w->c[K_FAILED]++;
  note_err(w, OP_CONNECT, err);
}

/* An established connection went away: reset, error, or the server's EOF. */
static void conn_lost(struct worker *w, struct conn *c, int op, int err) {
  conn_close(w, c);
  w->c[K_LOST]++;
  note_err(w, op, err);
}

static void conn_open(struct worker *w, struct conn *c, uint64_t now) {
  const struct opts *o = &w->r->o;
  int one = 1, err;
  w->c[K_TRIED]++;
  c->fd = socket(o->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) { /* EMFILE, ENFILE, ENOBUFS... */
    connect_failed(w, c, errno);
    return;
  }
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->t_start = now;
  if (connect(c->fd, (const struct sockaddr *)&o->addr, o->addrlen) != 0 &&
      errno != EINPROGRESS) {
    connect_failed(w, c, errno); /* loopback may refuse at once */
    return;
  }
  c->state = C_CONNECTING;
  w->c[K_CONNECTING]++;
  if ((err = interest(w, c, EPOLLOUT)) != 0)
    connect_failed(w, c, err);
}

/* Open connections while the rate and the in-flight bound allow. */
static void open_more(struct worker *w, uint64_t now) {
  const struct opts *o = &w->r->o;
  uint64_t target = w->nconns;
  if (o->rate > 0) {
    double allowed = o->rate * (double)(now - w->r->t0) / NS_PER_S + 1;
    if (allowed < (double)target)
      target = (uint64_t)allowed;
  }
  while (w->next < target && w->c[K_CONNECTING] < MAX_INFLIGHT)
    conn_open(w, &w->conns[w->next++], now);
}

static void expire_connects(struct worker *w, uint64_t now) {
  for (uint32_t i = 0; i < w->next; i++) {
    struct conn *c = &w->conns[i];
    if (c->state == C_CONNECTING && now - c->t_start >= CONNECT_TIMEOUT_NS)
      connect_failed(w, c, ETIMEDOUT);
  }
}

static const unsigned char *stream_at(const struct worker *w, const struct conn *c,
                                      uint64_t off) {
  return w->r->pat + (c->phase + off) % PAT_PERIOD;
}

/* ---- echo ---------------------------------------------------------------- */

/* Note the send time of every message whose first byte is in the @n bytes
 * just sent from c->tx. */
static void stamp_starts(struct worker *w, struct conn *c, uint64_t n, uint64_t now) {
  const struct opts *o = &w->r->o;
  uint64_t *ts = w->sent_ns + (size_t)(c - w->conns) * o->depth;
  for (uint64_t m = (c->tx + o->size - 1) / o->size; m * o->size < c->tx + n; m++)
    ts[m % o->depth] = now;
}

/* Send until DEPTH messages are outstanding or the socket is full. */
static void echo_send(struct worker *w, struct conn *c) {
  const struct opts *o = &w->r->o;
  uint64_t limit = (c->rx / o->size + o->depth) * o->size;
  while (c->tx < limit) {
    size_t len = limit - c->tx < PAT_SPAN ? (size_t)(limit - c->tx) : PAT_SPAN;
    ssize_t n = send(c->fd, stream_at(w, c, c->tx), len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      break;
    if (n < 0) {
      conn_lost(w, c, OP_SEND, errno);
      return;
    }
    stamp_starts(w, c, (uint64_t)n, now_ns());
    c->tx += (uint64_t)n;
    if ((size_t)n < len)
      break; /* the socket is full */
  }
  int err = interest(w, c, EPOLLIN | (c->tx < limit ? EPOLLOUT : 0));
  if (err)
    conn_lost(w, c, OP_SEND, err);
}

/* Compare @n received bytes with the stream at c->rx. */
static void echo_verify(struct worker *w, struct conn *c, const unsigned char *p,
                        size_t n) {
  const unsigned char *want = stream_at(w, c, c->rx);
  if (memcmp(p, want, n) == 0)
    return;
  for (size_t i = 0; i < n; i++) {
    if (p[i] == want[i])
      continue;
    if (!w->c[K_MISM] && !w->first_bad[0])
      snprintf(w->first_bad, sizeof w->first_bad,
               "connection %u, stream offset %llu: got 0x%02x, sent 0x%02x",
               (unsigned)(c - w->conns), (unsigned long long)(c->rx + i), p[i], want[i]);
    w->c[K_MISM]++;
  }
}

static void echo_recv(struct worker *w, struct conn *c) {
  const struct opts *o = &w->r->o;
  ssize_t n = recv(c->fd, w->rbuf, RBUF_SIZE, 0);
  if (n <= 0) {
    if (n == 0)
      conn_lost(w, c, OP_CLOSED, 0);
    else if (errno != EAGAIN && errno != EINTR)
      conn_lost(w, c, OP_RECV, errno);
    return;
  }
  uint64_t now = now_ns(), good = (uint64_t)n, surplus = 0;
  if (c->rx + good > c->tx) { /* more than we ever sent */
    surplus = c->rx + good - c->tx;
    good -= surplus;
  }
  echo_verify(w, c, w->rbuf, (size_t)good);
  uint64_t m = c->rx / o->size;
  c->rx += good;
  bool meas = measuring(w, now);
  const uint64_t *ts = w->sent_ns + (size_t)(c - w->conns) * o->depth;
  for (; meas && m < c->rx / o->size; m++) {
    w->hist->b[hist_bucket(now - ts[m % o->depth])]++;
    w->hist->n++;
    w->c[K_REQS]++;
  }
  if (meas)
    w->c[K_BYTES] += good;
  if (surplus) {
    if (!w->first_bad[0])
      snprintf(w->first_bad, sizeof w->first_bad,
               "connection %u: %llu bytes more than were sent", (unsigned)(c - w->conns),
               (unsigned long long)surplus);
    w->c[K_MISM] += surplus;
    conn_close(w, c); /* out of step for good */
    return;
  }
  echo_send(w, c);
}

/* ---- push and hold ------------------------------------------------------- */

static void push_send(struct worker *w, struct conn *c) {
  const struct opts *o = &w->r->o;
  for (int i = 0; i < PUSH_BURST; i++) {
    uint64_t left = o->size - c->tx % o->size; /* of the current chunk */
    size_t len = left < PAT_SPAN ? (size_t)left : PAT_SPAN;
    ssize_t n = send(c->fd, stream_at(w, c, c->tx), len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && errno == EAGAIN)
      return;
    if (n < 0) {
      conn_lost(w, c, OP_SEND, errno);
      return;
    }
    if (measuring(w, now_ns())) {
      w->c[K_BYTES] += (uint64_t)n;
      w->c[K_REQS] += (c->tx + (uint64_t)n) / o->size - c->tx / o->size;
    }
    c->tx += (uint64_t)n;
    if ((size_t)n < len)
      return;
  }
}

/* A held connection is readable: the server closed it, or sent something
 * (dropped). */
static void hold_recv(struct worker *w, struct conn *c) {
  ssize_t n = recv(c->fd, w->rbuf, RBUF_SIZE, 0);
  if (n == 0)
    conn_lost(w, c, OP_CLOSED, 0);
  else if (n < 0 && errno != EAGAIN && errno != EINTR)
    conn_lost(w, c, OP_RECV, errno);
}

/* ---- the loop ------------------------------------------------------------ */

static void conn_connected(struct worker *w, struct conn *c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
    err = errno;
  if (err) {
    connect_failed(w, c, err);
    return;
  }
  w->c[K_CONNECTING]--;
  w->c[K_OPEN]++;
  c->state = C_OPEN;
  if (w->r->o.mode == M_ECHO) {
    echo_send(w, c);
  } else if ((err = interest(w, c,
                             w->r->o.mode == M_PUSH ? EPOLLOUT : EPOLLIN | EPOLLRDHUP))) {
    conn_lost(w, c, OP_RECV, err);
  } else if (w->r->o.mode == M_PUSH) {
    push_send(w, c);
  }
}

static void on_event(struct worker *w, struct conn *c, uint32_t events) {
  if (c->state == C_CONNECTING) {
    conn_connected(w, c);
    return;
  }
  if (c->state != C_OPEN)
    return; /* closed earlier in this batch */
  if (w->r->o.mode == M_PUSH) {
    push_send(w, c); /* errors and hang-ups show up as a failing send */
  } else if (w->r->o.mode == M_HOLD) {
    hold_recv(w, c);
  } else {
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP))
      echo_recv(w, c);
    if (c->state == C_OPEN && (events & EPOLLOUT))
      echo_send(w, c);
  }
}

/* How long epoll_wait may sleep: until the end, the next rate-limited
 * connect, or MAX_WAIT_MS. */
static int wait_ms(const struct worker *w, uint64_t now) {
  uint64_t until = w->end;
  const struct opts *o = &w->r->o;
  if (o->rate > 0 && w->next < w->nconns && w->c[K_CONNECTING] < MAX_INFLIGHT) {
    uint64_t due = w->r->t0 + (uint64_t)((double)w->next * NS_PER_S / o->rate);
    if (due < until)
      until = due;
  }
  uint64_t ms = until > now ? (until - now + 999999) / 1000000 : 0;
  return ms > MAX_WAIT_MS ? MAX_WAIT_MS : (int)ms;
}

/* Take in what is pending without waiting (bounded): a held connection the
 * server closed just before the end must not count as held. */
static void drain_events(struct worker *w) {
  struct epoll_event ev[MAX_EVENTS];
  for (int round = 0; round < 1000; round++) {
    int n = epoll_wait(w->ep, ev, MAX_EVENTS, 0);
    for (int i = 0; i < n; i++)
      on_event(w, ev[i].data.ptr, ev[i].events);
    if (n < MAX_EVENTS)
      break;
  }
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  struct epoll_event ev[MAX_EVENTS];
  uint64_t last_sweep = 0;
  for (;;) {
    uint64_t now = now_ns();
    w->end = atomic_load_explicit(&w->r->end, memory_order_relaxed);
    if (now >= w->end)
      break;
    open_more(w, now);
    if (w->c[K_CONNECTING] && now - last_sweep >= NS_PER_S / 10) {
      expire_connects(w, now);
      last_sweep = now;
    }
    publish(w);
    int n = epoll_wait(w->ep, ev, MAX_EVENTS, wait_ms(w, now));
    for (int i = 0; i < n; i++)
      on_event(w, ev[i].data.ptr, ev[i].events);
  }
  if (w->r->o.mode == M_HOLD)
    drain_events(w);
  /* c[K_OPEN] stays as it was: the held count. */
  for (uint32_t i = 0; i < w->next; i++)
    if (w->conns[i].fd >= 0)
      close(w->conns[i].fd);
  publish(w);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Set-up                                                                    */
/* ------------------------------------------------------------------------ */

static void usage(FILE *f) {
  fprintf(f,
          "usage: axload [options] HOST:PORT   (HOST numeric: 127.0.0.1, ::1)\n"
          "  -t N      threads, one epoll loop each (default 1)\n"
          "  -c C      connections in total, split over the threads (default 1)\n"
          "  -r R      connects per second per thread (default 128; 0: as fast as\n"
          "            possible, at most 256 in flight per thread)\n"
          "  -d SECS   measured duration (default 5)\n"
          "  -w SECS   warm-up before the measured window (default 1)\n"
          "  -m MODE   echo (verified echo, latency), push (send only), hold (idle)\n"
          "  -s SIZE   message or chunk size in bytes (default 64)\n"
          "  -p DEPTH  echo messages outstanding per connection (default 1)\n"
          "  -q        no progress line\n"
          "Prints one line: axload mode=.. conns=.. threads=.. secs=.. reqs=.. rps=..\n"
          "  mb_per_s=.. p50_us=.. p99_us=.. errors=.. mismatches=.. connect_failed=..\n"
          "  held=..  Exit: 0 ok, 1 failures (see stderr), 2 usage.\n");
}

static bool parse_num(const char *s, double lo, double hi, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= lo && v <= hi))
    return false;
  *out = v;
  return true;
}

/* A whole number in [lo, hi] into *out. */
static bool parse_int(const char *s, long lo, long hi, long *out) {
  double v;
  if (!parse_num(s, (double)lo, (double)hi, &v) || v != (double)(long)v)
    return false;
  *out = (long)v;
  return true;
}

/* "127.0.0.1:80", "::1:80" or "[::1]:80" into o->addr. */
static bool parse_target(const char *arg, struct opts *o) {
  const char *colon = strrchr(arg, ':');
  long port;
  char host[INET6_ADDRSTRLEN + 2];
  size_t len = colon ? (size_t)(colon - arg) : 0;
  if (!colon || len == 0 || len >= sizeof host ||
      !parse_int(colon + 1, 1, 65535, &port)) {
    fprintf(stderr, "axload: '%s' is not HOST:PORT\n", arg);
    return false;
  }
  memcpy(host, arg, len);
  host[len] = 0;
  if (host[0] == '[' && len > 2 && host[len - 1] == ']') {
    memmove(host, host + 1, len - 2);
    host[len - 2] = 0;
  }
  struct sockaddr_in *in4 = (struct sockaddr_in *)&o->addr;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&o->addr;
  memset(&o->addr, 0, sizeof o->addr);
  if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((uint16_t)port);
    o->addrlen = sizeof *in4;
    snprintf(o->target, sizeof o->target, "%s:%d", host, (int)port);
  } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((uint16_t)port);
    o->addrlen = sizeof *in6;
    snprintf(o->target, sizeof o->target, "[%s]:%d", host, (int)port);
  } else {
    fprintf(stderr,
            "axload: '%s' is not a numeric IPv4 or IPv6 address (no name lookup)\n",
            host);
    return false;
  }
  return true;
}

static bool parse_args(int argc, char **argv, struct opts *o) {
  *o = (struct opts){.threads = 1,
                     .conns = 1,
                     .rate = 128,
                     .secs = 5,
                     .warm = 1,
                     .mode = M_ECHO,
                     .size = 64,
                     .depth = 1};
  long v = 0;
  int ch;
  while ((ch = getopt(argc, argv, "t:c:r:d:w:m:s:p:qh")) != -1) {
    bool ok = true;
    switch (ch) {
    case 't':
      ok = parse_int(optarg, 1, 256, &v);
      o->threads = (int)v;
      break;
    case 'c':
      ok = parse_int(optarg, 1, 10000000, &v);
      o->conns = (int)v;
      break;
    case 'r':
      ok = parse_num(optarg, 0, 1e9, &o->rate);
      break;
    case 'd':
      ok = parse_num(optarg, 0.01, 86400, &o->secs);
      break;
    case 'w':
      ok = parse_num(optarg, 0, 3600, &o->warm);
      break;
    case 's':
      ok = parse_int(optarg, 1, 1 << 30, &v);
      o->size = (uint32_t)v;
      break;
    case 'p':
      ok = parse_int(optarg, 1, 1024, &v);
      o->depth = (uint32_t)v;
      break;
    case 'q':
      o->quiet = true;
      break;
    case 'm':
      for (o->mode = M_ECHO; o->mode <= M_HOLD; o->mode++)
        if (strcmp(optarg, mode_names[o->mode]) == 0)
          break;
      ok = o->mode <= M_HOLD;
      break;
    case 'h':
      usage(stdout);
      exit(0);
    default:
      usage(stderr);
      return false;
    }
    if (!ok) {
      fprintf(stderr, "axload: bad value for -%c: '%s'\n", ch, optarg);
      return false;
    }
  }
  if (optind != argc - 1) {
    usage(stderr);
    return false;
  }
  if (o->threads > o->conns)
    o->threads = o->conns;
  return parse_target(argv[optind], o);
}

/* Raise the soft fd limit to the hard one; warn when C cannot fit. */
static void raise_nofile(int conns) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)conns + 16 > rl.rlim_cur)
    fprintf(stderr,
            "axload: warning: %d connections, but the open-files limit is %llu: "
            "expect EMFILE\n",
            conns, (unsigned long long)rl.rlim_cur);
}

/* The pattern: PAT_PERIOD pseudo-random bytes, then its first PAT_SPAN
 * again, so that any PAT_SPAN bytes of the stream are one contiguous run. */
static unsigned char *make_pattern(void) {
  unsigned char *p = malloc(PAT_PERIOD + PAT_SPAN);
  uint64_t x = 0x2545F4914F6CDD1Dull;
  for (size_t i = 0; p && i < PAT_PERIOD + PAT_SPAN; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    p[i] = i < PAT_PERIOD ? (unsigned char)(x >> 32) : p[i - PAT_PERIOD];
  }
  return p;
}

static bool worker_init(struct worker *w, struct run *r, int idx) {
  const struct opts *o = &r->o;
  w->r = r;
  w->nconns = (uint32_t)(o->conns / o->threads + (idx < o->conns % o->threads));
  w->ep = epoll_create1(EPOLL_CLOEXEC);
  w->conns = calloc(w->nconns, sizeof *w->conns);
  w->rbuf = malloc(RBUF_SIZE);
  w->hist = calloc(1, sizeof *w->hist);
  if (o->mode == M_ECHO)
    w->sent_ns = calloc((size_t)w->nconns * o->depth, sizeof *w->sent_ns);
  if (w->ep < 0 || !w->conns || !w->rbuf || !w->hist ||
      (o->mode == M_ECHO && !w->sent_ns)) {
    fprintf(stderr, "axload: thread set-up: %s\n", strerror(errno));
    return false;
  }
  for (uint32_t i = 0; i < w->nconns; i++) {
    uint64_t id = (uint64_t)i * (uint64_t)o->threads + (uint64_t)idx;
    w->conns[i].fd = -1;
    w->conns[i].phase = (uint32_t)(id * 7919u % PAT_PERIOD); /* distinct below 65521 */
  }
  return true;
}

static void worker_fini(struct worker *w) {
  if (w->ep >= 0)
    close(w->ep);
  free(w->conns);
  free(w->sent_ns);
  free(w->rbuf);
  free(w->hist);
}

/* ------------------------------------------------------------------------ */
/* Supervision and the summary                                               */
/* ------------------------------------------------------------------------ */

static uint64_t sum_pub(struct worker *ws, int n, int k) {
  uint64_t s = 0;
  for (int i = 0; i < n; i++)
    s += atomic_load_explicit(&ws[i].pub[k], memory_order_relaxed);
  return s;
}

static void end_now(struct run *r) {
  uint64_t now = now_ns();
  if (now < atomic_load(&r->end))
    atomic_store(&r->end, now);
}

/* Wait for the end, a signal, or nothing left to do; draw the progress line. */
static void supervise(struct run *r, struct worker *ws, int n) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  bool progress = !r->o.quiet && isatty(STDERR_FILENO);
  uint64_t last_reqs = 0, last_t = r->t0;
  for (;;) {
    uint64_t now = now_ns(), end = atomic_load(&r->end);
    if (now >= end)
      break;
    uint64_t wait = end - now < NS_PER_S / 4 ? end - now : NS_PER_S / 4;
    struct timespec ts = {(time_t)(wait / NS_PER_S), (long)(wait % NS_PER_S)};
    int sig = sigtimedwait(&set, NULL, &ts);
    if (sig > 0) {
      end_now(r);
      if (progress)
        fputs("\r\033[K", stderr);
      fprintf(stderr, "axload: %s: ending the run early\n", strsignal(sig));
      return;
    }
    if (sum_pub(ws, n, K_TRIED) == (uint64_t)r->o.conns && sum_pub(ws, n, K_OPEN) == 0 &&
        sum_pub(ws, n, K_CONNECTING) == 0) {
      end_now(r); /* every connection failed or was lost */
      break;
    }
    if (!progress)
      continue;
    now = now_ns();
    uint64_t reqs = sum_pub(ws, n, K_REQS);
    double dt = (double)(now - last_t) / NS_PER_S;
    fprintf(stderr,
            "\raxload: %5.1f s %-9s open %llu/%d  rps %.0f  errors %llu  mismatches "
            "%llu\033[K",
            (double)(now - r->t0) / NS_PER_S, now < r->meas ? "warm-up" : "measuring",
            (unsigned long long)sum_pub(ws, n, K_OPEN), r->o.conns,
            dt > 0 ? (double)(reqs - last_reqs) / dt : 0.0,
            (unsigned long long)(sum_pub(ws, n, K_LOST) + sum_pub(ws, n, K_FAILED)),
            (unsigned long long)sum_pub(ws, n, K_MISM));
    last_reqs = reqs, last_t = now;
  }
  if (progress)
    fputs("\r\033[K", stderr);
}

/* Join every worker by the end of the grace period. */
static bool join_all(struct run *r, struct worker *ws, int n) {
  uint64_t deadline = atomic_load(&r->end) + GRACE_NS, now = now_ns();
  struct timespec rt;
  clock_gettime(CLOCK_REALTIME, &rt); /* pthread_timedjoin_np's clock */
  uint64_t abs_ns = (uint64_t)rt.tv_sec * NS_PER_S + (uint64_t)rt.tv_nsec +
                    (deadline > now ? deadline - now : 0);
  struct timespec until = {(time_t)(abs_ns / NS_PER_S), (long)(abs_ns % NS_PER_S)};
  bool all = true;
  for (int i = 0; i < n; i++) {
    ws[i].joined = pthread_timedjoin_np(ws[i].thr, NULL, &until) == 0;
    if (!ws[i].joined)
      fprintf(stderr, "axload: thread %d did not stop within the %llu s grace\n", i,
              (unsigned long long)(GRACE_NS / NS_PER_S));
    all &= ws[i].joined;
  }
  return all;
}

/* strerror with a lower-case first letter, as in "connection refused". */
static const char *reason(int err, char *buf, size_t len) {
  snprintf(buf, len, "%s", strerror(err));
  buf[0] = (char)tolower((unsigned char)buf[0]);
  return buf;
}

/* One stderr line per kind of error, summed over the joined workers. */
static void report_errors(const struct run *r, const struct worker *ws, int n) {
  static const char *const ops[] = {"connect", "send", "recv", NULL};
  struct errkind all[ERR_KINDS * 4] = {{0}};
  size_t used = 0;
  for (int i = 0; i < n; i++) {
    for (int j = 0; ws[i].joined && j < ERR_KINDS && ws[i].errs[j].n; j++) {
      const struct errkind *e = &ws[i].errs[j];
      size_t k = 0;
      while (k < used && (all[k].op != e->op || all[k].err != e->err))
        k++;
      if (k == used && used == sizeof all / sizeof all[0])
        k--; /* fold in */
      if (k == used)
        all[used++] = (struct errkind){e->op, e->err, 0};
      all[k].n += e->n;
    }
    if (ws[i].joined && ws[i].first_bad[0])
      fprintf(stderr, "axload: mismatch on thread %d, %s\n", i, ws[i].first_bad);
  }
  char buf[128];
  for (size_t k = 0; k < used; k++) {
    if (all[k].op == OP_CLOSED)
      fprintf(stderr, "axload: %s: connection closed by the server (x %llu)\n",
              r->o.target, (unsigned long long)all[k].n);
    else
      fprintf(stderr, "axload: %s %s: %s (x %llu)\n", ops[all[k].op], r->o.target,
              reason(all[k].err, buf, sizeof buf), (unsigned long long)all[k].n);
  }
}

/* Print the summary line; returns the exit status. */
static int summarize(struct run *r, struct worker *ws, int n, bool all_joined) {
  uint64_t c[K_COUNT] = {0};
  struct hist *h = calloc(1, sizeof *h);
  for (int i = 0; i < n; i++) {
    for (int k = 0; k < K_COUNT; k++)
      c[k] += ws[i].joined ? ws[i].c[k] : atomic_load(&ws[i].pub[k]);
    for (unsigned b = 0; h && ws[i].joined && b < H_BUCKETS; b++)
      h->b[b] += ws[i].hist->b[b];
    if (h && ws[i].joined)
      h->n += ws[i].hist->n;
  }
  uint64_t end = atomic_load(&r->end);
  double secs = end > r->meas ? (double)(end - r->meas) / NS_PER_S : 0;
  report_errors(r, ws, n);
  if (c[K_MISM])
    fprintf(stderr, "axload: %llu mismatched bytes\n", (unsigned long long)c[K_MISM]);
  printf("axload mode=%s conns=%d threads=%d secs=%.2f reqs=%llu rps=%.0f mb_per_s=%.2f "
         "p50_us=%.1f p99_us=%.1f errors=%llu mismatches=%llu connect_failed=%llu "
         "held=%llu\n",
         mode_names[r->o.mode], r->o.conns, r->o.threads, secs,
         (unsigned long long)c[K_REQS], secs > 0 ? (double)c[K_REQS] / secs : 0.0,
         secs > 0 ? (double)c[K_BYTES] / secs / 1e6 : 0.0,
         h ? hist_quantile(h, 0.50) / 1e3 : 0.0, h ? hist_quantile(h, 0.99) / 1e3 : 0.0,
         (unsigned long long)c[K_LOST], (unsigned long long)c[K_MISM],
         (unsigned long long)c[K_FAILED], (unsigned long long)c[K_OPEN]);
  fflush(stdout);
  free(h);
  bool lost_fails = r->o.mode != M_HOLD && c[K_LOST];
  return c[K_FAILED] || c[K_MISM] || lost_fails || !all_joined ? 1 : 0;
}

int main(int argc, char **argv) {
  struct run r = {0};
  if (!parse_args(argc, argv, &r.o))
    return 2;
  raise_nofile(r.o.conns);
  signal(SIGPIPE, SIG_IGN); /* every send has MSG_NOSIGNAL; belt and braces */
  /* Blocked before any thread exists: only the main thread's sigtimedwait
   * takes them. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);

  unsigned char *pat = make_pattern();
  struct worker *ws = calloc((size_t)r.o.threads, sizeof *ws);
  bool ok = pat && ws;
  for (int i = 0; ok && i < r.o.threads; i++)
    ws[i].ep = -1;
  for (int i = 0; ok && i < r.o.threads; i++)
    ok = worker_init(&ws[i], &r, i);
  if (!ok) {
    fprintf(stderr, "axload: out of memory or fds at set-up\n");
    return 2;
  }
  r.pat = pat;
  r.t0 = now_ns();
  r.meas = r.t0 + (uint64_t)(r.o.warm * NS_PER_S);
  atomic_init(&r.end, r.meas + (uint64_t)(r.o.secs * NS_PER_S));
  int started = 0;
  for (; started < r.o.threads; started++) {
    int rc = pthread_create(&ws[started].thr, NULL, worker_main, &ws[started]);
    if (rc != 0) {
      fprintf(stderr, "axload: pthread_create: %s\n", strerror(rc));
      end_now(&r);
      break;
    }
  }
  if (started == r.o.threads)
    supervise(&r, ws, started);
  bool joined = join_all(&r, ws, started);
  int status = summarize(&r, ws, started, joined);
  if (!joined)
    _exit(1); /* a worker still runs: do not free under it */
  for (int i = 0; i < r.o.threads; i++)
    worker_fini(&ws[i]);
  free(ws);
  free(pat);
  return started == r.o.threads ? status : 2;
}
