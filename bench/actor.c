/*
 * bench/actor.c — the actor runtime's benchmarks (the workloads of
 * /work/shared/peers/actors/README.md, measured the same way).
 *
 * Usage: actor -b NAME [-n N] [-r REPS]
 *
 *   NAME                      what                                key (better)
 *   actor_local_send          a sender actor sends N messages to a ns_per_msg (lower)
 *                             receiver on the same worker, N =
 *                             10,000,000, in a window of 2 x 1,000
 *                             (the receiver acks every 1,000)
 *   actor_xthread_throughput  sender on worker 0 -> receiver on   msgs_per_s (higher)
 *                             worker 1, N = 10,000,000, bursts of
 *                             4,096; -EAGAIN (receiver full) ends
 *                             the burst and a 1 ms timer retries
 *   actor_pingpong            one message between two actors on   rt_per_s (higher)
 *                             workers 0 and 1, N round trips
 *                             (200,000); then the same with
 *                             spin_ns = 50,000 on both workers (N
 *                             = 1,000,000), printed as
 *                             bench=actor_pingpong_spin
 *   actor_ring                1,000 actors on one worker, a token hops_per_s (higher)
 *                             passed N = 10,000,000 hops
 *   skynet                    the 1,111,111-actor tree (N = 10^6   wall_ms (lower)
 *                             leaves) on 2 workers, the root's
 *                             children spread over both
 *   spawn_idle                one actor spawns N = 1,000,000 idle  ns_per_spawn,
 *                             actors on its worker (each holds the bytes_per_actor
 *                             previous one's id); the clock stops  (lower)
 *                             when the last one's init has run.
 *                             bytes: VmRSS delta / N (malloc's own
 *                             count, mallinfo2, goes to stderr)
 *
 * Each rep is a forked child (a fresh runtime and a fresh heap: the RSS
 * figures need it) under a 120 s alarm; REPS (default 3) reps, the median
 * of each key is printed. stdout carries only
 *   bench=NAME impl=axon KEY=VALUE
 * notes (every rep, checks) go to stderr. Exit status 1 if a run failed or
 * computed a wrong result (a count, a sum, the order of messages).
 */
#include <axon/axon.h>

#include <malloc.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXKEYS 2
#define MAXREPS 15

enum { GO = 1, MORE, ACK, DATA, BALL, START, SUM };

static uint64_t N;              /* the size of the run */
static uint64_t t_start, t_end; /* ns, monotonic */
static uint64_t count, sum, retries;
static int bad;
static sem_t done_sem;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "actor: %s: %s\n", what, ax_strerror(rc));
  _exit(1);
}

static ax_rt_t *rt_start(unsigned workers, uint32_t spin_ns) {
  ax_rt_options_t o = {.workers = workers, .spin_ns = spin_ns};
  ax_rt_t *rt;
  int rc = ax_rt_new(&o, &rt);
  if (rc) die("ax_rt_new", rc);
  return rt;
}

static ax_aid_t spawn_on(ax_rt_t *rt, const ax_behaviour_t *b, void *arg, int worker) {
  ax_spawn_options_t so = {.worker = worker};
  ax_aid_t id;
  int rc = ax_spawn(rt, b, arg, &so, &id);
  if (rc) die("ax_spawn", rc);
  return id;
}

static void rt_go(ax_rt_t *rt, ax_aid_t to, const void *p, size_t len) {
  int rc = ax_rt_send(rt, to, GO, p, len);
  if (rc) die("ax_rt_send", rc);
  ax_rt_join(rt);
  ax_rt_free(rt);
}

/* ---- a counting receiver (local send, cross-thread throughput) ---------- */

static uint64_t sent, burst;

/* Counts and checks 1..N; with a non-NULL state (same worker) it answers
 * every burst with ACK: the sender's window. */
static void receiver(ax_actor_t *self, void *state, ax_msg_t *m) {
  uint64_t v;
  memcpy(&v, m->data, sizeof v);
  bad |= v != ++count; /* in order, none lost */
  sum += v;
  if (state && count % burst == 0 && count < N && ax_send(self, m->from, ACK, NULL, 0) < 0)
    die("receiver: ack", 0);
  if (count == N) {
    t_end = now_ns();
    ax_rt_stop(ax_actor_rt(self));
  }
}

/*
 * Sends 1..N to the receiver whose id is the state. Across workers: @burst
 * per callback, then a message to self for the next burst; a refusal
 * (-EAGAIN: the receiver is full) ends the burst and a 1 ms timer brings
 * the next one. Same worker: a window of two bursts, one more per ACK (a
 * message to self would run at once, inside the same turn, and outrun the
 * receiver's 100 messages per turn).
 */
static void sender(ax_actor_t *self, void *state, ax_msg_t *m) {
  ax_aid_t to = (ax_aid_t)(uintptr_t)state;
  bool local = ax_rt_workers(ax_actor_rt(self)) == 1;
  int rc = 0;
  if (m->tag == GO) t_start = now_ns();
  for (uint64_t i = 0; i < (local && m->tag == GO ? 2 : 1) * burst && sent < N; i++) {
    uint64_t v = sent + 1;
    if ((rc = ax_send(self, to, DATA, &v, sizeof v)) < 0) break;
    sent = v;
  }
  if (sent == N) return;
  if (rc == -EAGAIN && ++retries > 100000) die("sender: still refused after 100,000 retries", rc);
  if (rc == -EAGAIN)
    rc = ax_after(self, 1, MORE, NULL); /* let the receiver drain */
  else if (rc == 0 && !local)
    rc = ax_send(self, ax_self(self), MORE, NULL, 0);
  if (rc < 0) die("sender", rc);
}

static void run_send(double *out, unsigned workers, int to_worker, uint64_t b) {
  static const ax_behaviour_t rb = {.receive = receiver}, sb = {.receive = sender};
  ax_rt_t *rt = rt_start(workers, 0);
  burst = b;
  ax_aid_t r = spawn_on(rt, &rb, workers == 1 ? &burst : NULL, to_worker);
  ax_aid_t s = spawn_on(rt, &sb, (void *)(uintptr_t)r, 0);
  rt_go(rt, s, NULL, 0);
  if (bad || count != N || sum != N * (N + 1) / 2) die("receiver: wrong count, sum or order", 0);
  out[0] = (double)(t_end - t_start);
  fprintf(stderr, "actor: %llu messages, %llu retries after -EAGAIN\n", (unsigned long long)count,
          (unsigned long long)retries);
}

static void b_local_send(double *out) {
  run_send(out, 1, 0, 1000);
  out[0] /= (double)N;
}

static void b_xthread(double *out) {
  run_send(out, 2, 1, 4096);
  out[0] = (double)N * 1e9 / out[0];
}

/* ---- pingpong ------------------------------------------------------------ */

static void ponger(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  int rc = ax_send(self, m->from, BALL, m->data, m->len);
  if (rc) die("ponger", rc);
}

static void pinger(ax_actor_t *self, void *state, ax_msg_t *m) {
  uint64_t i = 0;
  if (m->tag == GO) {
    t_start = now_ns();
  } else {
    memcpy(&i, m->data, sizeof i);
    bad |= i != count + 1;
    count = i;
  }
  if (i == N) {
    t_end = now_ns();
    ax_rt_stop(ax_actor_rt(self));
    return;
  }
  i++;
  int rc = ax_send(self, (ax_aid_t)(uintptr_t)state, BALL, &i, sizeof i);
  if (rc) die("pinger", rc);
}

static void run_pingpong(double *out, uint32_t spin_ns) {
  static const ax_behaviour_t pb = {.receive = pinger}, qb = {.receive = ponger};
  ax_rt_t *rt = rt_start(2, spin_ns);
  ax_aid_t q = spawn_on(rt, &qb, NULL, 1);
  ax_aid_t p = spawn_on(rt, &pb, (void *)(uintptr_t)q, 0);
  rt_go(rt, p, NULL, 0);
  if (bad || count != N) die("pingpong: wrong reply or count", 0);
  out[0] = (double)N * 1e9 / (double)(t_end - t_start);
}

static void b_pingpong(double *out) { run_pingpong(out, 0); }
static void b_pingpong_spin(double *out) { run_pingpong(out, 50000); }

/* ---- ring ---------------------------------------------------------------- */

#define RING 1000
static ax_aid_t ring[RING];

static void member(ax_actor_t *self, void *state, ax_msg_t *m) {
  uint64_t i = (uintptr_t)state, h;
  memcpy(&h, m->data, sizeof h);
  if (h == N) {
    t_end = now_ns();
    bad |= i != N % RING;
    count = h;
    ax_rt_stop(ax_actor_rt(self));
    return;
  }
  h++;
  int rc = ax_send(self, ring[(i + 1) % RING], DATA, &h, sizeof h);
  if (rc) die("ring", rc);
}

static void b_ring(double *out) {
  static const ax_behaviour_t mb = {.receive = member};
  ax_rt_t *rt = rt_start(1, 0);
  for (uintptr_t i = 0; i < RING; i++)
    ring[i] = spawn_on(rt, &mb, (void *)i, 0);
  uint64_t h = 0;
  t_start = now_ns();
  rt_go(rt, ring[0], &h, sizeof h);
  if (bad || count != N) die("ring: the last hop went to the wrong actor", 0);
  out[0] = (double)N * 1e9 / (double)(t_end - t_start);
}

/* ---- skynet -------------------------------------------------------------- */

struct job { uint64_t num, size; };
struct node { ax_aid_t parent; uint64_t sum; unsigned left; };

static void sky_up(ax_actor_t *self, ax_aid_t parent, uint64_t v) {
  if (parent) {
    int rc = ax_send(self, parent, SUM, &v, sizeof v);
    if (rc) die("skynet: send up", rc);
  } else {
    sum = v;
    t_end = now_ns();
    ax_rt_stop(ax_actor_rt(self));
  }
  ax_exit(self, AX_EXIT_NORMAL);
}

static void sky(ax_actor_t *self, void *state, ax_msg_t *m) {
  static const ax_behaviour_t b = {sizeof(struct node), NULL, sky, NULL, "skynet"};
  struct node *n = state;
  uint64_t v;
  struct job j;
  if (m->tag == SUM) {
    memcpy(&v, m->data, sizeof v);
    n->sum += v;
    if (--n->left == 0) sky_up(self, n->parent, n->sum);
    return;
  }
  memcpy(&j, m->data, sizeof j);
  n->parent = m->from;
  if (j.size == 1) return sky_up(self, n->parent, j.num);
  ax_rt_t *rt = ax_actor_rt(self);
  for (unsigned i = 0; i < 10; i++) {
    struct job c = {j.num + i * (j.size / 10), j.size / 10};
    ax_aid_t kid = spawn_on(rt, &b, NULL, n->parent ? AX_WORKER_SELF : (int)(i % 2));
    int rc = ax_send(self, kid, START, &c, sizeof c);
    if (rc) die("skynet: send down", rc);
    n->left++;
  }
}

static void b_skynet(double *out) {
  static const ax_behaviour_t b = {sizeof(struct node), NULL, sky, NULL, "skynet"};
  ax_rt_t *rt = rt_start(2, 0);
  struct job root = {0, N};
  t_start = now_ns();
  ax_aid_t r = spawn_on(rt, &b, NULL, 0);
  int rc = ax_rt_send(rt, r, START, &root, sizeof root);
  if (rc) die("skynet: start", rc);
  ax_rt_join(rt);
  ax_rt_free(rt);
  if (sum != N * (N - 1) / 2) die("skynet: wrong sum", 0);
  out[0] = (double)(t_end - t_start) / 1e6;
}

/* ---- spawn_idle ------------------------------------------------------------ */

static long rss_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
  if (f) fclose(f);
  return kb;
}

/* An idle actor: its state pointer is the previous actor's id. */
static int idle_init(ax_actor_t *self, void *state, void *arg) {
  (void)self, (void)state, (void)arg;
  if (++count == N) {
    t_end = now_ns();
    sem_post(&done_sem);
  }
  return 0;
}

/* Teardown: k+1 goes to the predecessor, the first actor reports. */
static void idle(ax_actor_t *self, void *state, ax_msg_t *m) {
  ax_aid_t prev = (ax_aid_t)(uintptr_t)state;
  uint64_t k;
  memcpy(&k, m->data, sizeof k);
  k++;
  if (!prev) {
    sum = k;
    sem_post(&done_sem);
  } else if (ax_send(self, prev, DATA, &k, sizeof k) < 0) {
    die("spawn_idle: teardown", 0);
  }
  ax_exit(self, AX_EXIT_NORMAL);
}

static ax_aid_t last;
static void spawner(ax_actor_t *self, void *state, ax_msg_t *m) {
  static const ax_behaviour_t b = {.init = idle_init, .receive = idle, .name = "idle"};
  ax_aid_t prev = AX_AID_NONE;
  (void)state, (void)m;
  t_start = now_ns();
  for (uint64_t i = 0; i < N; i++)
    prev = spawn_on(ax_actor_rt(self), &b, (void *)(uintptr_t)prev, AX_WORKER_SELF);
  last = prev;
}

static void b_spawn_idle(double *out) {
  static const ax_behaviour_t sb = {.receive = spawner};
  sem_init(&done_sem, 0, 0);
  ax_rt_t *rt = rt_start(1, 0);
  ax_aid_t s = spawn_on(rt, &sb, NULL, 0);
  struct mallinfo2 m0 = mallinfo2();
  long r0 = rss_kb();
  int rc = ax_rt_send(rt, s, GO, NULL, 0);
  if (rc) die("spawn_idle: go", rc);
  while (sem_wait(&done_sem) < 0) {
  }
  long r1 = rss_kb();
  struct mallinfo2 m1 = mallinfo2();
  uint64_t t0 = now_ns(), zero = 0;
  if ((rc = ax_rt_send(rt, last, DATA, &zero, sizeof zero))) die("spawn_idle: teardown", rc);
  while (sem_wait(&done_sem) < 0) {
  }
  uint64_t t1 = now_ns();
  ax_rt_free(rt);
  if (count != N || sum != N) die("spawn_idle: not every actor started or answered", 0);
  out[0] = (double)(t_end - t_start) / (double)N;
  out[1] = (double)(r1 - r0) * 1024 / (double)N;
  fprintf(stderr, "actor: spawn_idle: malloc %.1f bytes per actor (mallinfo2), teardown %.0f ms\n",
          (double)(m1.uordblks - m0.uordblks) / (double)N, (t1 - t0) / 1e6);
}

/* ---- driver ---------------------------------------------------------------- */

static const struct bench {
  const char *name;
  void (*fn)(double *out);
  uint64_t n;
  const char *keys[MAXKEYS];
} benches[] = {
    {"actor_local_send", b_local_send, 10000000, {"ns_per_msg"}},
    {"actor_xthread_throughput", b_xthread, 10000000, {"msgs_per_s"}},
    {"actor_pingpong", b_pingpong, 200000, {"rt_per_s"}},
    {"actor_pingpong_spin", b_pingpong_spin, 1000000, {"rt_per_s"}},
    {"actor_ring", b_ring, 10000000, {"hops_per_s"}},
    {"skynet", b_skynet, 1000000, {"wall_ms"}},
    {"spawn_idle", b_spawn_idle, 1000000, {"ns_per_spawn", "bytes_per_actor"}},
};

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* One rep in a child; its figures come back through a pipe. */
static int rep(const struct bench *b, double *out) {
  int p[2];
  if (pipe(p) < 0) return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    alarm(120);
    b->fn(out);
    _exit(write(p[1], out, MAXKEYS * sizeof *out) == (ssize_t)(MAXKEYS * sizeof *out) ? 0 : 1);
  }
  close(p[1]);
  ssize_t got = pid > 0 ? read(p[0], out, MAXKEYS * sizeof *out) : -1;
  close(p[0]);
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 ||
      got != (ssize_t)(MAXKEYS * sizeof *out)) {
    fprintf(stderr, "actor: %s: a run failed (wait status 0x%x)\n", b->name, st);
    return -1;
  }
  return 0;
}

static int run_bench(const struct bench *b, uint64_t n, int reps) {
  double v[MAXKEYS][MAXREPS];
  N = n ? n : b->n;
  for (int r = 0; r < reps; r++) {
    double out[MAXKEYS] = {0};
    if (rep(b, out) < 0) return 1;
    fprintf(stderr, "actor: %s rep %d: %s=%.1f", b->name, r + 1, b->keys[0], out[0]);
    for (int k = 1; k < MAXKEYS && b->keys[k]; k++) fprintf(stderr, " %s=%.1f", b->keys[k], out[k]);
    fputc('\n', stderr);
    for (int k = 0; k < MAXKEYS; k++) v[k][r] = out[k];
  }
  for (int k = 0; k < MAXKEYS && b->keys[k]; k++) {
    qsort(v[k], (size_t)reps, sizeof v[k][0], cmp_double);
    printf("bench=%s impl=axon %s=%.*f\n", b->name, b->keys[k], v[k][reps / 2] < 100 ? 1 : 0,
           v[k][reps / 2]);
  }
  fflush(stdout);
  return 0;
}

int main(int argc, char **argv) {
  const char *name = NULL;
  uint64_t n = 0;
  int reps = 3, opt;
  while ((opt = getopt(argc, argv, "b:n:r:")) != -1) {
    if (opt == 'b') name = optarg;
    else if (opt == 'n') n = strtoull(optarg, NULL, 10);
    else if (opt == 'r') reps = atoi(optarg);
    else name = NULL, optind = argc;
  }
  if (!name || reps < 1 || reps > MAXREPS) {
    fprintf(stderr, "usage: actor -b NAME [-n N] [-r REPS] (names: see the source's header)\n");
    return 2;
  }
  int status = 0, found = 0;
  for (size_t i = 0; i < sizeof benches / sizeof benches[0]; i++) {
    /* -b actor_pingpong runs the spinning variant too */
    if (strcmp(benches[i].name, name) == 0 ||
        (strcmp(name, "actor_pingpong") == 0 && strcmp(benches[i].name, "actor_pingpong_spin") == 0)) {
      found = 1;
      status |= run_bench(&benches[i], n, reps);
    }
  }
  if (!found) fprintf(stderr, "actor: unknown benchmark '%s'\n", name);
  return found ? status : 2;
}
