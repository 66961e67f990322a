/*
 * bench/xthread.c — cross-thread benchmarks: posts between loops on two
 * threads, against libuv's async + locked queue, and the mailbox candidates
 * measured without a loop. The workloads live in xthread_axon.c (axon),
 * xthread_uv.c (libuv) and xthread_cand.c (candidates, ck_ring baseline).
 *
 * Usage: xthread -b NAME [-n N] [-r REPS] [-s SPIN_NS] [-t LIMIT_S]
 *                [-d DEADLINE_S] IMPL...
 *
 *   NAME                    IMPLs                       key (better)
 *   xthread_throughput      axon axon-post libuv        msgs_per_s (higher)
 *   xthread_fanin           axon axon-post libuv        msgs_per_s (higher)
 *   xthread_pingpong_sleep  axon libuv                  rt_per_s   (higher)
 *   xthread_pingpong_spin   axon ck_ring-spin           rt_ns      (lower)
 *   mailbox_candidates      axon axon-exchange     msgs_per_s (higher)
 *                           axon-ring axon-stack
 *
 *   N        throughput: messages (default 10,000,000); fanin: messages per
 *            producer, 2 producers (5,000,000); pingpong_*: round trips
 *            (200,000 sleep, 1,000,000 spin); mailbox_candidates: messages
 *            of the 1→1 phase, the 2→1 phase (printed as
 *            bench=mailbox_candidates_fanin) sends N/2 per producer
 *            (10,000,000)
 *   REPS     runs per implementation, interleaved A B C A B C ...; the
 *            median is printed (default 3)
 *   SPIN_NS  options.spin_ns of both axon loops in pingpong_spin (default
 *            50,000: the research's spin budget, far above a round trip,
 *            so a spinning loop should never reach its eventfd)
 *   LIMIT_S  a run that takes longer is killed and reported (default 60)
 *   DEADLINE_S  mailbox_candidates only: a run still going after this long
 *            stops its producers, drains what they pushed and reports
 *            messages delivered / time (stderr says STOPPED); default 0,
 *            no deadline. It exists for axon-ring's fan-in, see
 *            xthread_cand.c: with both producers on one CPU, ck_ring's
 *            ordered commit turns into a convoy of one context switch per
 *            message.
 *
 * The impls:
 *   axon          producer → ax_loop_post_node() with caller-owned nodes: a
 *                 window of XT_WINDOW nodes per producer, recycled when the
 *                 consumer's published count says they are free; the
 *                 consumer is a persistent loop that stops itself after the
 *                 last message. -EAGAIN is retried after ck_pr_stall()
 *                 (and a sched_yield() every 1024 tries).
 *                 Ping-pong: one node bounced between two persistent loops.
 *   axon-post     the same with ax_loop_post(loop, fn, arg): a malloc'd node
 *                 per message (the convenient API's cost)
 *   libuv         libuv's own idiom, as in the actor peers' uv_bench: a
 *                 mutex-protected growable int64 array + uv_async_t per
 *                 receiving loop; send = lock, append, unlock,
 *                 uv_async_send; the async callback swaps the array out
 *                 under the lock and processes it outside
 *   ck_ring-spin  two threads busy-polling two ck_ring SPSC rings: the
 *                 floor for a cross-core round trip with no loop at all
 *   axon-ring     ck_ring of node pointers, ck_ring_enqueue_mpsc /
 *                 ck_ring_dequeue_mpsc, XT_WINDOW slots
 *   axon-stack    Treiber stack: ck_stack_push_upmc, and the consumer takes
 *                 everything with ck_stack_batch_pop_upmc and reverses it
 *   axon-exchange Vyukov's intrusive exchange-based queue (the structure
 *                 axon's mailbox had first), built here on ck_pr
 *   axon          axon's mailbox as shipped (ax_mailbox_push /
 *                 ax_mailbox_pop), default capacity; the consumer busy-polls,
 *                 never sleeps
 *
 * Every message carries its producer and a sequence number; the consumer
 * checks per-producer order and the final counts (and, for axon, the loop's
 * posts_run). Pinning: the consumer (loop A) runs on CPU 0, the producers
 * (loop B) on CPU 1 — the same for every impl; with fewer than two usable
 * CPUs everything runs unpinned and stderr says so. Each run is a forked
 * child under a time limit. stdout carries only
 *
 *   bench=NAME impl=IMPL KEY=<median>
 *   bench=NAME impl=REF_vs_PEER KEY=<REF median / PEER median>
 *
 * with REF = axon; notes, per-run figures
 * (retries, wake system calls, loop iterations) and errors go to stderr.
 * Exit status: 0, or 1 if any run failed or gave a wrong result.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "xthread.h"

#define MAX_IMPLS 4
#define MAX_REPS 15
#define MAX_PHASES 2

/* ------------------------------------------------------------------------ */
/* Helpers shared with the workload files                                     */
/* ------------------------------------------------------------------------ */

static bool pinned; /* decided once in main, inherited by the children */

void xt_die(const char *fmt, ...) {
  va_list ap;
  fputs("xthread: ", stderr);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  /* Called from any thread of a child (or the parent before it printed
   * anything): leave at once, without running atexit handlers under the
   * feet of the other threads. */
  _exit(1);
}

uint64_t xt_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void xt_pin(int cpu) {
  if (!pinned)
    return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  if (rc != 0)
    xt_die("pthread_setaffinity_np(CPU %d): %s", cpu, strerror(rc));
}

void xt_thread_start(pthread_t *t, void *(*fn)(void *), void *arg) {
  int rc = pthread_create(t, NULL, fn, arg);
  if (rc != 0)
    xt_die("pthread_create: %s", strerror(rc));
}

void xt_thread_join(pthread_t t) {
  int rc = pthread_join(t, NULL);
  if (rc != 0)
    xt_die("pthread_join: %s", strerror(rc));
}

struct xt_lane *xt_lanes_new(int n) {
  struct xt_lane *l = aligned_alloc(XT_CACHELINE, (size_t)n * sizeof *l);
  if (l == NULL)
    xt_die("out of memory (lanes)");
  memset(l, 0, (size_t)n * sizeof *l);
  for (int i = 0; i < n; i++) {
    l[i].id = i;
    l[i].expected = 1;
  }
  return l;
}

/* ------------------------------------------------------------------------ */
/* Benchmarks and impls                                                      */
/* ------------------------------------------------------------------------ */

typedef void (*run_fn)(const struct xt_params *, struct xt_result *);

struct impl {
  const char *name;
  run_fn run;
};

enum key { MSGS_PER_S, RT_PER_S, RT_NS };
static const char *const key_name[] = {"msgs_per_s", "rt_per_s", "rt_ns"};

struct phase {
  const char *name; /* printed as bench=NAME */
  int producers;
  int n_div; /* n of the phase = N / n_div */
};

struct bench {
  const char *name;
  enum key key;
  uint64_t default_n;
  const char *ref; /* impl the ratio lines divide by the others */
  struct phase phases[MAX_PHASES];
  struct impl impls[MAX_IMPLS];
};

static const struct bench benches[] = {
    {"xthread_throughput",
     MSGS_PER_S,
     10000000,
     "axon",
     {{"xthread_throughput", 1, 1}},
     {{"axon", xt_axon_stream},
      {"axon-post", xt_axon_post_stream},
      {"libuv", xt_uv_stream}}},
    {"xthread_fanin",
     MSGS_PER_S,
     5000000,
     "axon",
     {{"xthread_fanin", 2, 1}},
     {{"axon", xt_axon_stream},
      {"axon-post", xt_axon_post_stream},
      {"libuv", xt_uv_stream}}},
    {"xthread_pingpong_sleep",
     RT_PER_S,
     200000,
     "axon",
     {{"xthread_pingpong_sleep", 1, 1}},
     {{"axon", xt_axon_pingpong}, {"libuv", xt_uv_pingpong}}},
    {"xthread_pingpong_spin",
     RT_NS,
     1000000,
     "axon",
     {{"xthread_pingpong_spin", 1, 1}},
     {{"axon", xt_axon_pingpong}, {"ck_ring-spin", xt_ckring_pingpong}}},
    {"mailbox_candidates",
     MSGS_PER_S,
     10000000,
     "axon",
     {{"mailbox_candidates", 1, 1}, {"mailbox_candidates_fanin", 2, 2}},
     {{"axon", xt_cand_axon},
      {"axon-exchange", xt_cand_exchange},
      {"axon-ring", xt_cand_ring},
      {"axon-stack", xt_cand_stack}}},
};

static double key_value(enum key k, const struct xt_params *p,
                        const struct xt_result *r) {
  double s = r->seconds;
  switch (k) {
  case MSGS_PER_S:
    return r->stopped ? (double)r->messages / s
                      : (double)p->n * p->producers / s;
  case RT_PER_S:
    return (double)p->n / s;
  case RT_NS:
    return s * 1e9 / (double)p->n;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* One run in a child                                                        */
/* ------------------------------------------------------------------------ */

static bool read_full(int fd, void *buf, size_t len, int limit_ms) {
  uint64_t deadline = xt_now_ns() + (uint64_t)limit_ms * 1000000u;
  char *p = buf;
  while (len > 0) {
    uint64_t now = xt_now_ns();
    if (now >= deadline)
      return false;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int rc = poll(&pfd, 1, (int)((deadline - now) / 1000000u) + 1);
    if (rc < 0 && errno == EINTR)
      continue;
    if (rc <= 0)
      return false; /* timeout (or a poll error) */
    ssize_t got = read(fd, p, len);
    if (got < 0 && errno == EINTR)
      continue;
    if (got <= 0)
      return false; /* the child died before reporting */
    p += got;
    len -= (size_t)got;
  }
  return true;
}

static void child(run_fn run, const struct xt_params *p, int fd) {
  /* If the parent dies (run.sh's timeout), do not linger pinned and
   * spinning. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct xt_result r;
  memset(&r, 0, sizeof r);
  run(p, &r);
  if (write(fd, &r, sizeof r) != (ssize_t)sizeof r)
    xt_die("cannot report to the parent: %s", strerror(errno));
  _exit(0);
}

/* Runs @run in a forked child bounded by @limit_s seconds. Returns true and
 * fills @r if the child reported and exited 0. */
static bool run_child(run_fn run, const struct xt_params *p, int limit_s,
                      struct xt_result *r) {
  int fds[2];
  fflush(NULL);
  if (pipe2(fds, O_CLOEXEC) != 0)
    xt_die("pipe2: %s", strerror(errno));
  pid_t pid = fork();
  if (pid < 0)
    xt_die("fork: %s", strerror(errno));
  if (pid == 0) {
    close(fds[0]);
    child(run, p, fds[1]);
  }
  close(fds[1]);
  bool got = read_full(fds[0], r, sizeof *r, limit_s * 1000);
  close(fds[0]);
  if (!got && kill(pid, 0) == 0) {
    /* Still there after the limit (or it reported garbage): kill it. */
    kill(pid, SIGKILL);
  }
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR)
      xt_die("waitpid: %s", strerror(errno));
  if (WIFSIGNALED(st)) {
    fprintf(stderr, "xthread: run killed by signal %d (%s)%s\n",
            WTERMSIG(st), strsignal(WTERMSIG(st)),
            !got ? ": it exceeded the time limit or crashed" : "");
    return false;
  }
  if (WEXITSTATUS(st) != 0) {
    fprintf(stderr, "xthread: run failed (exit %d)\n", WEXITSTATUS(st));
    return false;
  }
  if (!got) {
    fprintf(stderr, "xthread: run exited without a result\n");
    return false;
  }
  return true;
}

/* ------------------------------------------------------------------------ */
/* Driver                                                                    */
/* ------------------------------------------------------------------------ */

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static void note_run(const char *bench, const char *impl, int rep, int reps,
                     enum key k, const struct xt_result *r) {
  fprintf(stderr, "xthread: %s %s run %d/%d: %s=%.*f in %.3f s", bench, impl,
          rep + 1, reps, key_name[k], k == RT_NS ? 1 : 0, r->value,
          r->seconds);
  if (r->retries || r->window_full)
    fprintf(stderr, " retries=%llu window_full=%llu",
            (unsigned long long)r->retries,
            (unsigned long long)r->window_full);
  if (r->stopped)
    fprintf(stderr, " STOPPED at the deadline after %llu messages",
            (unsigned long long)r->messages);
  if (r->has_wakes)
    fprintf(stderr, " wakes=%llu/%llu", (unsigned long long)r->wakes[0],
            (unsigned long long)r->wakes[1]);
  if (r->has_iterations)
    fprintf(stderr, " iterations=%llu/%llu",
            (unsigned long long)r->iterations[0],
            (unsigned long long)r->iterations[1]);
  fputc('\n', stderr);
}

/* Runs one phase: REPS interleaved runs of each impl, then the lines.
 * Returns false if any run failed. */
static bool run_phase(const struct bench *b, const struct phase *ph,
                      const struct impl **impl, int nimpl,
                      const struct xt_params *base, int reps, int limit_s) {
  struct xt_params p = *base;
  p.producers = ph->producers;
  p.n = base->n / (uint64_t)ph->n_div;
  double v[MAX_IMPLS][MAX_REPS], med[MAX_IMPLS];
  bool ok[MAX_IMPLS], all_ok = true;
  for (int i = 0; i < nimpl; i++)
    ok[i] = true;
  for (int r = 0; r < reps; r++) /* interleaved: A B C A B C ... */
    for (int i = 0; i < nimpl; i++) {
      struct xt_result res;
      if (!ok[i])
        continue;
      ok[i] = run_child(impl[i]->run, &p, limit_s, &res);
      if (!ok[i]) {
        fprintf(stderr, "xthread: %s %s: FAILED in run %d\n", ph->name,
                impl[i]->name, r + 1);
        all_ok = false;
        continue;
      }
      res.value = key_value(b->key, &p, &res);
      v[i][r] = res.value;
      note_run(ph->name, impl[i]->name, r, reps, b->key, &res);
    }
  int ref = -1;
  for (int i = 0; i < nimpl; i++) {
    if (!ok[i])
      continue;
    med[i] = median(v[i], reps);
    printf("bench=%s impl=%s %s=%.*f\n", ph->name, impl[i]->name,
           key_name[b->key], b->key == RT_NS ? 1 : 0, med[i]);
    if (strcmp(impl[i]->name, b->ref) == 0)
      ref = i;
  }
  /* Ratio lines: REF / peer. For msgs_per_s and rt_per_s above 1 favours
   * REF; for rt_ns below 1 does. */
  for (int i = 0; ref >= 0 && i < nimpl; i++)
    if (i != ref && ok[i] && med[i] > 0)
      printf("bench=%s impl=%s_vs_%s %s=%.3f\n", ph->name, b->ref,
             impl[i]->name, key_name[b->key], med[ref] / med[i]);
  fflush(stdout);
  return all_ok;
}

static void decide_pinning(void) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) {
    fprintf(stderr, "xthread: sched_getaffinity: %s; running unpinned\n",
            strerror(errno));
    return;
  }
  if (CPU_ISSET(0, &set) && CPU_ISSET(1, &set)) {
    pinned = true;
    fprintf(stderr, "xthread: pinned: consumer / loop A on CPU 0, "
                    "producers / loop B on CPU 1\n");
  } else {
    fprintf(stderr, "xthread: CPUs 0 and 1 are not both usable (%d CPU(s) "
                    "in the affinity mask): running UNPINNED\n",
            CPU_COUNT(&set));
  }
}

static void usage(void) {
  fprintf(stderr, "usage: xthread -b NAME [-n N] [-r REPS] [-s SPIN_NS] "
                  "[-t LIMIT_S] [-d DEADLINE_S] IMPL...\n  NAME:");
  for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++)
    fprintf(stderr, " %s", benches[i].name);
  fputc('\n', stderr);
  exit(2);
}

static const struct bench *find_bench(const char *name) {
  for (size_t i = 0; name && i < sizeof benches / sizeof benches[0]; i++)
    if (strcmp(benches[i].name, name) == 0)
      return &benches[i];
  return NULL;
}

int main(int argc, char **argv) {
  const char *name = NULL;
  struct xt_params p = {.n = 0, .producers = 1, .spin_ns = 50000};
  int reps = 3, limit_s = 60, opt;
  while ((opt = getopt(argc, argv, "b:n:r:s:t:d:")) != -1) {
    switch (opt) {
    case 'b':
      name = optarg;
      break;
    case 'n':
      p.n = strtoull(optarg, NULL, 10);
      break;
    case 'r':
      reps = atoi(optarg);
      break;
    case 's':
      p.spin_ns = (uint32_t)strtoul(optarg, NULL, 10);
      break;
    case 't':
      limit_s = atoi(optarg);
      break;
    case 'd':
      p.deadline_s = strtoull(optarg, NULL, 10);
      break;
    default:
      usage();
    }
  }
  const struct bench *b = find_bench(name);
  int nimpl = argc - optind;
  if (b == NULL || reps < 1 || reps > MAX_REPS || limit_s < 1 || nimpl < 1 ||
      nimpl > MAX_IMPLS)
    usage();
  if (p.n == 0)
    p.n = b->default_n;
  if (p.n < 2 || p.n > (1ull << 40) || p.deadline_s >= (uint64_t)limit_s)
    usage();

  const struct impl *impl[MAX_IMPLS];
  for (int i = 0; i < nimpl; i++) {
    impl[i] = NULL;
    for (int j = 0; j < MAX_IMPLS && b->impls[j].name; j++)
      if (strcmp(argv[optind + i], b->impls[j].name) == 0)
        impl[i] = &b->impls[j];
    if (impl[i] == NULL) {
      fprintf(stderr, "xthread: %s has no implementation '%s'\n", b->name,
              argv[optind + i]);
      usage();
    }
  }

  decide_pinning();
  if (b->key == RT_NS) /* only pingpong_spin spins; the others sleep */
    fprintf(stderr, "xthread: %s: axon loops with options.spin_ns=%u\n",
            b->name, p.spin_ns);
  else
    p.spin_ns = 0;
  int status = 0;
  for (int ph = 0; ph < MAX_PHASES && b->phases[ph].name; ph++)
    if (!run_phase(b, &b->phases[ph], impl, nimpl, &p, reps, limit_s))
      status = 1;
  return status;
}
