/*
 * The actor layer (include/axon/actor.h): runtimes of worker threads,
 * actors, sends, monitors, links, timers, requests, groups, offload.
 *
 * The test thread drives actors with ax_rt_send() and waits on atomic
 * counters the actors update, each wait bounded by a deadline (WAIT: a
 * miss fails the test with the condition); a guard thread bounds every
 * test as a whole, ax_rt_free() included. Assertions check exact counts
 * (messages, frees, terminates, DOWNs), never timing. Orderings that span
 * workers are made deterministic with barriers: a "relay" through a hub
 * actor on the worker that sent something last pushes a marker behind it
 * on the same path (one mailbox, FIFO per producer thread).
 *
 * Sizes are for a 2-core VM: cross-worker traffic is 10^4-10^5 messages,
 * a quarter of that under a sanitizer.
 */
#include "testutil.h"

#include "actor/actor_int.h" /* ax__aid_slot / ax__aid_gen: slot reuse */

#include <limits.h>
#include <sched.h>
#include <stdatomic.h>

#ifndef AX_SAN
#define AX_SAN ""
#endif

static bool under_san(void) { return AX_SAN[0] != '\0'; }
static uint32_t scaled(uint32_t n) { return under_san() ? n / 4 : n; }

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

#define WAIT_MS 8000

/* Wait until @cond holds; a deadline turns a hang into a failure. */
#define WAIT(cond)                                                             \
  do {                                                                         \
    uint64_t t0_ = mono_ms();                                                  \
    while (!(cond)) {                                                          \
      if (mono_ms() - t0_ > WAIT_MS)                                           \
        fail_msg("line %d: still not true after %d ms: %s", __LINE__,          \
                 WAIT_MS, #cond);                                              \
      sleep_ms(1);                                                             \
    }                                                                          \
  } while (0)

static uint64_t test_t0;

static int guard_setup(void **state) {
  (void)state;
  guard_start("an actor test", 60);
  test_t0 = mono_ms();
  return 0;
}

static int guard_teardown(void **state) {
  (void)state;
  guard_stop();
  printf("[   TIME   ] %llu ms\n", (unsigned long long)(mono_ms() - test_t0));
  return 0;
}

static ax_rt_t *rt_new(unsigned workers, unsigned batch) {
  ax_rt_options_t o;
  ax_rt_options_init(&o);
  o.workers = workers;
  o.batch = batch;
  ax_rt_t *rt = NULL;
  int rc = ax_rt_new(&o, &rt);
  if (rc)
    fail_msg("ax_rt_new: %s", ax_strerror(rc));
  assert_int_equal(ax_rt_workers(rt), workers);
  return rt;
}

static ax_aid_t spawn_on(ax_rt_t *rt, const ax_behaviour_t *b, void *arg,
                         int worker) {
  ax_spawn_options_t o;
  ax_spawn_options_init(&o);
  o.worker = worker;
  ax_aid_t id = AX_AID_NONE;
  int rc = ax_spawn(rt, b, arg, &o, &id);
  if (rc)
    fail_msg("ax_spawn: %s", ax_strerror(rc));
  assert_int_equal(ax__aid_worker(id), (unsigned)worker);
  return id;
}

static uint64_t dead_letters(ax_rt_t *rt) {
  uint64_t n = 0;
  for (unsigned i = 0; i < ax_rt_workers(rt); i++) {
    ax_worker_stats_t s;
    assert_int_equal(ax_rt_stats(rt, i, &s), 0);
    n += s.dead_letters;
  }
  return n;
}

/* Moved payloads: every allocation counted, every free counted. */
static atomic_long pl_allocs, pl_frees;

static void *pl_new(size_t n) {
  void *p = malloc(n);
  assert_non_null(p);
  memset(p, 0x5a, n);
  atomic_fetch_add(&pl_allocs, 1);
  return p;
}

static void pl_free(void *p) {
  atomic_fetch_add(&pl_frees, 1);
  free(p);
}

static void pl_reset(void) {
  atomic_store(&pl_allocs, 0);
  atomic_store(&pl_frees, 0);
}

/* Errors seen inside actors (where cmocka cannot fail the test). */
static atomic_int act_errors;
static char act_error_msg[200];

#define ACT_CHECK(cond)                                                        \
  do {                                                                         \
    if (!(cond) && atomic_fetch_add(&act_errors, 1) == 0)                      \
      snprintf(act_error_msg, sizeof act_error_msg, "line %d: %s", __LINE__,   \
               #cond);                                                         \
  } while (0)

static void act_errors_reset(void) {
  atomic_store(&act_errors, 0);
  act_error_msg[0] = '\0';
}

static void assert_no_act_errors(void) {
  if (atomic_load(&act_errors))
    fail_msg("%d error(s) inside actors, first: %s", atomic_load(&act_errors),
             act_error_msg);
}

/* Tags. */
enum {
  T_GO = 1,
  T_DATA,
  T_PING,
  T_EXIT,
  T_MON,
  T_LINK,
  T_UNLINK,
  T_TRAP,
  T_RELAY,
  T_FLUSH,
  T_MOVE,
  T_TAKE,
  T_TAKECOPY,
  T_SPAWN,
  T_REPLY,
  T_NOW,
  T_DONE,
  T_ONCE,
  T_REP,
  T_MARK,
  T_BCAST,
  T_LEAVE,
  T_SENDSKIP,
  T_SENDALL,
  T_STOPRT,
  T_JOIN,
  T_U,
};

/* ======================================================================== */
/* A puppet: does what a command says, records what happens to it.         */
/* ======================================================================== */

typedef struct cmd {
  ax_aid_t aid;
  int v;
} cmd_t;

typedef struct rec {
  atomic_int acks, rc;
  atomic_int pings, flushes, inits, terms, term_reason;
  atomic_int downs, down_reason, exits, exit_reason;
  _Atomic ax_aid_t down_aid, exit_aid, self;
  atomic_int worker;
} rec_t;

static int puppet_init(ax_actor_t *self, void *state, void *arg) {
  rec_t *r = state;
  (void)arg;
  atomic_store(&r->self, ax_self(self));
  atomic_store(&r->worker, (int)ax_actor_worker(self));
  atomic_fetch_add(&r->inits, 1);
  return 0;
}

static void puppet_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  rec_t *r = state;
  cmd_t c = {0, 0};
  ax_down_t d;
  if (m->len == sizeof c)
    memcpy(&c, m->data, sizeof c);
  switch (m->tag) {
  case T_PING:
    atomic_fetch_add(&r->pings, 1);
    return;
  case T_EXIT:
    ax_exit(self, c.v);
    return;
  case T_MON:
    atomic_store(&r->rc, ax_monitor(self, c.aid));
    break;
  case T_LINK:
    atomic_store(&r->rc, ax_link(self, c.aid));
    break;
  case T_UNLINK:
    atomic_store(&r->rc, ax_unlink(self, c.aid));
    break;
  case T_TRAP:
    ax_trap_exit(self, c.v != 0);
    atomic_store(&r->rc, 0);
    break;
  case T_RELAY:
    atomic_store(&r->rc, ax_send(self, c.aid, T_FLUSH, NULL, 0));
    break;
  case T_FLUSH:
    atomic_fetch_add(&r->flushes, 1);
    return;
  case T_STOPRT:
    ax_rt_stop(ax_actor_rt(self));
    atomic_store(&r->rc, 0);
    break;
  case T_JOIN:
    atomic_store(&r->rc, ax_rt_join(ax_actor_rt(self)));
    break;
  case AX_TAG_DOWN:
    ACT_CHECK(m->len == sizeof d);
    memcpy(&d, m->data, sizeof d);
    ACT_CHECK(m->from == d.aid);
    atomic_store(&r->down_aid, d.aid);
    atomic_store(&r->down_reason, d.reason);
    atomic_fetch_add(&r->downs, 1);
    return;
  case AX_TAG_EXIT:
    ACT_CHECK(m->len == sizeof d);
    memcpy(&d, m->data, sizeof d);
    atomic_store(&r->exit_aid, d.aid);
    atomic_store(&r->exit_reason, d.reason);
    atomic_fetch_add(&r->exits, 1);
    return;
  default:
    ACT_CHECK(!"puppet: unexpected tag");
    return;
  }
  atomic_fetch_add(&r->acks, 1);
}

static void puppet_terminate(ax_actor_t *self, void *state, int reason) {
  rec_t *r = state;
  (void)self;
  atomic_store(&r->term_reason, reason);
  atomic_fetch_add(&r->terms, 1);
}

static const ax_behaviour_t puppet = {0, puppet_init, puppet_receive,
                                      puppet_terminate, "puppet"};

/* Send a command; for the acknowledged ones wait for the acknowledgement
 * (the actor has made the call) and return the call's result. */
static int cmd_send(ax_rt_t *rt, rec_t *r, ax_aid_t to, int tag, ax_aid_t aid,
                    int v) {
  cmd_t c = {aid, v};
  int before = atomic_load(&r->acks);
  assert_int_equal(ax_rt_send(rt, to, (uint32_t)tag, &c, sizeof c), 0);
  if (tag == T_EXIT || tag == T_PING)
    return 0;
  WAIT(atomic_load(&r->acks) > before);
  return atomic_load(&r->rc);
}

static ax_aid_t puppet_on(ax_rt_t *rt, rec_t *r, int worker) {
  memset(r, 0, sizeof *r);
  ax_aid_t id = spawn_on(rt, &puppet, r, worker);
  WAIT(atomic_load(&r->inits) == 1);
  return id;
}

/* Hubs: one puppet per worker, to push markers behind earlier traffic. */
#define MAXW 4
static rec_t hub[MAXW];
static ax_aid_t hub_id[MAXW];

static void hubs_new(ax_rt_t *rt) {
  for (unsigned i = 0; i < ax_rt_workers(rt); i++)
    hub_id[i] = puppet_on(rt, &hub[i], (int)i);
}

/* Everything the thread of worker @w sent to @to before now has been
 * handled by @to (a marker sent from @w after it arrives after it). */
static void flush_from(ax_rt_t *rt, unsigned w, rec_t *to, ax_aid_t to_id) {
  int n = atomic_load(&to->flushes);
  assert_int_equal(cmd_send(rt, &hub[w], hub_id[w], T_RELAY, to_id, 0), 0);
  WAIT(atomic_load(&to->flushes) > n);
}

/* ======================================================================== */
/* 1. Cross-worker traffic, N senders, per-sender sequence numbers          */
/* ======================================================================== */

#define NS_ACT 3
#define NS_THR 2
#define NS (NS_ACT + NS_THR)

typedef struct seqmsg {
  uint32_t sender, seq;
} seqmsg_t;

static struct {
  ax_rt_t *rt;
  ax_aid_t recv;
  ax_aid_t sender_aid[NS];
  uint32_t total; /* per sender */
  uint32_t next[NS]; /* receiver only */
  atomic_long received, bad_order, bad_from;
  atomic_int senders_done;
  atomic_long eagain;
} x1;

typedef struct sender {
  uint32_t id, seq;
} sender_t;

static void seqrecv_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)self, (void)state;
  seqmsg_t s;
  ACT_CHECK(m->tag == T_DATA && m->len == sizeof s);
  memcpy(&s, m->data, sizeof s);
  ACT_CHECK(s.sender < NS);
  if (s.sender >= NS)
    return;
  if (s.seq != x1.next[s.sender])
    atomic_fetch_add(&x1.bad_order, 1);
  x1.next[s.sender] = s.seq + 1;
  ax_aid_t want = s.sender < NS_ACT ? x1.sender_aid[s.sender] : AX_AID_NONE;
  if (m->from != want)
    atomic_fetch_add(&x1.bad_from, 1);
  atomic_fetch_add(&x1.received, 1);
}

static const ax_behaviour_t seqrecv = {0, NULL, seqrecv_receive, NULL, "recv"};

static void seqsend_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  sender_t *s = state;
  ACT_CHECK(m->tag == T_GO);
  for (int i = 0; i < 256 && s->seq < x1.total; i++) {
    seqmsg_t msg = {s->id, s->seq};
    int rc = ax_send(self, x1.recv, T_DATA, &msg, sizeof msg);
    if (rc == -EAGAIN) {
      atomic_fetch_add(&x1.eagain, 1);
      break;
    }
    ACT_CHECK(rc == 0);
    if (rc)
      return;
    s->seq++;
  }
  if (s->seq < x1.total)
    ACT_CHECK(ax_send(self, ax_self(self), T_GO, NULL, 0) == 0);
  else
    atomic_fetch_add(&x1.senders_done, 1);
}

static const ax_behaviour_t seqsend = {sizeof(sender_t), NULL,
                                       seqsend_receive, NULL, "sender"};

static int seqsend_init(ax_actor_t *self, void *state, void *arg) {
  (void)self;
  ((sender_t *)state)->id = (uint32_t)(uintptr_t)arg;
  return 0;
}

static void *seqsend_thread(void *arg) {
  uint32_t id = (uint32_t)(uintptr_t)arg;
  uint64_t t0 = mono_ms();
  for (uint32_t seq = 0; seq < x1.total;) {
    seqmsg_t msg = {id, seq};
    int rc = ax_rt_send(x1.rt, x1.recv, T_DATA, &msg, sizeof msg);
    if (rc == -EAGAIN) {
      atomic_fetch_add(&x1.eagain, 1);
      sched_yield();
    } else {
      ACT_CHECK(rc == 0);
      if (rc)
        break;
      seq++;
    }
    if (mono_ms() - t0 > WAIT_MS) {
      ACT_CHECK(!"sender thread: out of time");
      break;
    }
  }
  atomic_fetch_add(&x1.senders_done, 1);
  return NULL;
}

static void test_cross_worker_senders(void **state) {
  (void)state;
  act_errors_reset();
  memset(&x1, 0, sizeof x1);
  x1.total = scaled(20000);
  ax_rt_t *rt = x1.rt = rt_new(3, 0);
  x1.recv = spawn_on(rt, &seqrecv, NULL, 0);
  ax_behaviour_t sb = seqsend;
  sb.init = seqsend_init;
  /* Senders on every worker, the receiver's included. */
  for (uint32_t i = 0; i < NS_ACT; i++)
    x1.sender_aid[i] = spawn_on(rt, &sb, (void *)(uintptr_t)i, (int)i);
  pthread_t thr[NS_THR];
  for (uint32_t i = 0; i < NS_THR; i++)
    assert_int_equal(pthread_create(&thr[i], NULL, seqsend_thread,
                                    (void *)(uintptr_t)(NS_ACT + i)),
                     0);
  for (uint32_t i = 0; i < NS_ACT; i++)
    assert_int_equal(ax_rt_send(rt, x1.sender_aid[i], T_GO, NULL, 0), 0);
  for (uint32_t i = 0; i < NS_THR; i++)
    pthread_join(thr[i], NULL);
  WAIT(atomic_load(&x1.senders_done) == NS);
  long want = (long)x1.total * NS;
  WAIT(atomic_load(&x1.received) >= want);
  /* Quiet now: the counters agree. */
  uint64_t actors = 0, spawned = 0, queued = 0, messages = 0, remote = 0;
  for (unsigned i = 0; i < 3; i++) {
    ax_worker_stats_t s;
    assert_int_equal(ax_rt_stats(rt, i, &s), 0);
    actors += s.actors, spawned += s.spawned, queued += s.queued;
    messages += s.messages, remote += s.remote_in;
  }
  ax_worker_stats_t s;
  assert_int_equal(ax_rt_stats(rt, 3, &s), -EINVAL);
  assert_int_equal(actors, 1 + NS_ACT);
  assert_int_equal(spawned, 1 + NS_ACT);
  assert_int_equal(queued, 0);
  assert_true(messages >= (uint64_t)want);
  assert_true(remote >= (uint64_t)x1.total * (NS - 1)); /* all but w0's */
  ax_rt_free(rt);
  assert_no_act_errors();
  /* After the runtime is gone: nothing more arrived, nothing repeated. */
  assert_int_equal(atomic_load(&x1.received), want);
  assert_int_equal(atomic_load(&x1.bad_order), 0);
  assert_int_equal(atomic_load(&x1.bad_from), 0);
  for (int i = 0; i < NS; i++)
    assert_int_equal(x1.next[i], x1.total);
}

/* ======================================================================== */
/* 2. Same-worker sends: order, copy, move, take                            */
/* ======================================================================== */

#define NSEQ 1000
static const uint32_t seq_sizes[] = {4, 8, AX_MSG_INLINE, AX_MSG_INLINE + 1,
                                     100, 1000};
#define NSIZES (sizeof seq_sizes / sizeof seq_sizes[0])

static uint8_t pat(uint32_t seq, uint32_t i) {
  return (uint8_t)(seq * 31u + i * 7u + 1u);
}

static struct {
  ax_rt_t *rt;
  ax_aid_t a, b, b2;
  uint32_t next;
  void *moved[4]; /* what A moved (B compares pointers) */
  atomic_int bad, moved_ok, taken_ok, takecopy_ok, b2_received, done;
} x2;

static void b_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)self, (void)state;
  switch (m->tag) {
  case T_DATA: {
    uint32_t seq;
    memcpy(&seq, m->data, sizeof seq);
    uint32_t len = seq_sizes[seq % NSIZES];
    if (seq != x2.next++ || m->len != len || m->from != x2.a)
      atomic_fetch_add(&x2.bad, 1);
    const uint8_t *p = m->data;
    for (uint32_t i = 4; i < m->len; i++)
      if (p[i] != pat(seq, i)) {
        atomic_fetch_add(&x2.bad, 1);
        break;
      }
    break;
  }
  case T_MOVE: { /* the buffer itself, freed by the runtime after this */
    uint32_t k = *(uint32_t *)m->data;
    ACT_CHECK(k < 3 && m->data == x2.moved[k] && m->len == 64);
    atomic_fetch_add(&x2.moved_ok, 1);
    break;
  }
  case T_TAKE: { /* kept past the callback: ours to free */
    void *p = ax_msg_take(m);
    ACT_CHECK(p == x2.moved[3] && p != NULL);
    if (p == x2.moved[3])
      atomic_fetch_add(&x2.taken_ok, 1);
    pl_free(p);
    break;
  }
  case T_TAKECOPY: { /* a copied payload: a fresh malloc() block */
    void *p = ax_msg_take(m);
    if (m->len == 0) {
      ACT_CHECK(p == NULL);
    } else { /* an inline copy cannot be handed over: a new block */
      ACT_CHECK(p != NULL && !memcmp(p, m->data, m->len));
      ACT_CHECK(m->len > AX_MSG_INLINE || p != m->data);
    }
    free(p);
    atomic_fetch_add(&x2.takecopy_ok, 1);
    break;
  }
  case T_DONE:
    atomic_store(&x2.done, 1);
    break;
  default:
    ACT_CHECK(!"B: unexpected tag");
  }
}

static const ax_behaviour_t b_beh = {0, NULL, b_receive, NULL, "B"};

static void b2_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)self, (void)state, (void)m;
  atomic_fetch_add(&x2.b2_received, 1);
}

static const ax_behaviour_t b2_beh = {0, NULL, b2_receive, NULL, "B2"};

static void a_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state, (void)m;
  uint8_t buf[1000];
  /* Argument errors. */
  ACT_CHECK(ax_send(self, x2.b, AX_TAG_SYSTEM, NULL, 0) == -EINVAL);
  ACT_CHECK(ax_send(self, x2.b, T_DATA, NULL, 4) == -EINVAL);
  ACT_CHECK(ax_send(NULL, x2.b, T_DATA, NULL, 0) == -EINVAL);
  /* Order and copy: the buffer is scribbled over right after each send. */
  for (uint32_t seq = 0; seq < NSEQ; seq++) {
    uint32_t len = seq_sizes[seq % NSIZES];
    memcpy(buf, &seq, sizeof seq);
    for (uint32_t i = 4; i < len; i++)
      buf[i] = pat(seq, i);
    ACT_CHECK(ax_send(self, x2.b, T_DATA, buf, len) == 0);
    memset(buf, 0xee, sizeof buf);
  }
  /* Move: delivered three times, taken once. */
  for (uint32_t k = 0; k < 4; k++) {
    x2.moved[k] = pl_new(64);
    memcpy(x2.moved[k], &k, sizeof k);
    ACT_CHECK(ax_send_move(self, x2.b, k < 3 ? T_MOVE : T_TAKE, x2.moved[k],
                           64, pl_free) == 0);
  }
  /* ax_msg_take on copies: empty, inline, external. */
  ACT_CHECK(ax_send(self, x2.b, T_TAKECOPY, NULL, 0) == 0);
  ACT_CHECK(ax_send(self, x2.b, T_TAKECOPY, "inline", 7) == 0);
  memset(buf, 'x', 500);
  ACT_CHECK(ax_send(self, x2.b, T_TAKECOPY, buf, 500) == 0);
  /* Moved to an actor killed before it runs: dead letters, freed once;
   * then refused (the caller keeps the buffer). */
  for (int k = 0; k < 3; k++)
    ACT_CHECK(ax_send_move(self, x2.b2, T_MOVE, pl_new(16), 16, pl_free) == 0);
  ACT_CHECK(ax_kill(ax_actor_rt(self), x2.b2) == 0);
  void *keep = malloc(16);
  ACT_CHECK(ax_send_move(self, x2.b2, T_MOVE, keep, 16, pl_free) == -ESRCH);
  ACT_CHECK(ax_send(self, x2.b2, T_DATA, "x", 1) == -ESRCH);
  free(keep); /* still ours: pl_free never saw it */
  ACT_CHECK(ax_send(self, x2.b, T_DONE, NULL, 0) == 0);
}

static const ax_behaviour_t a_beh = {0, NULL, a_receive, NULL, "A"};

static void test_same_worker_sends(void **state) {
  (void)state;
  act_errors_reset();
  pl_reset();
  memset(&x2, 0, sizeof x2);
  ax_rt_t *rt = x2.rt = rt_new(1, 0);
  x2.a = spawn_on(rt, &a_beh, NULL, 0);
  x2.b = spawn_on(rt, &b_beh, NULL, 0);
  x2.b2 = spawn_on(rt, &b2_beh, NULL, 0);
  assert_int_equal(ax_rt_send(rt, x2.a, T_GO, NULL, 0), 0);
  WAIT(atomic_load(&x2.done) == 1);
  WAIT(atomic_load(&pl_frees) == 7);
  assert_int_equal(dead_letters(rt), 3);
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(x2.next, NSEQ);
  assert_int_equal(atomic_load(&x2.bad), 0);
  assert_int_equal(atomic_load(&x2.moved_ok), 3);
  assert_int_equal(atomic_load(&x2.taken_ok), 1);
  assert_int_equal(atomic_load(&x2.takecopy_ok), 3);
  assert_int_equal(atomic_load(&x2.b2_received), 0);
  assert_int_equal(atomic_load(&pl_allocs), 7);
  assert_int_equal(atomic_load(&pl_frees), 7);
}

/* ======================================================================== */
/* 3. A stale id whose slot was reused                                       */
/* ======================================================================== */

#define K3 16

static struct {
  ax_rt_t *rt;
  _Atomic ax_aid_t v, w, s, v2;
  atomic_int v_blocking, s_sent, v_data, v2_data, v2_pings;
  atomic_int w_srch, w_move_srch, s_srch, same_slot, other_gen;
} x3;

static void v_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  if (m->tag != T_GO) {
    atomic_fetch_add(&x3.v_data, 1);
    return;
  }
  /* Hold this worker until S's messages wait in its loop's mailbox. */
  atomic_store(&x3.v_blocking, 1);
  uint64_t t0 = mono_ms();
  while (!atomic_load(&x3.s_sent) && mono_ms() - t0 < 5000)
    sched_yield();
  ACT_CHECK(atomic_load(&x3.s_sent));
  /* W runs right after this turn, in the same pass of the scheduler: it
   * respawns into this slot before the mailbox is drained. */
  ACT_CHECK(ax_send(self, atomic_load(&x3.w), T_SPAWN, NULL, 0) == 0);
  ax_exit(self, AX_EXIT_NORMAL);
}

static const ax_behaviour_t v_beh = {0, NULL, v_receive, NULL, "V"};

static void v2_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)self, (void)state;
  if (m->tag == T_PING)
    atomic_fetch_add(&x3.v2_pings, 1);
  else
    atomic_fetch_add(&x3.v2_data, 1);
}

static const ax_behaviour_t v2_beh = {0, NULL, v2_receive, NULL, "V2"};

static void w_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state, (void)m;
  ax_aid_t old = atomic_load(&x3.v), nv = AX_AID_NONE;
  ACT_CHECK(ax_spawn(ax_actor_rt(self), &v2_beh, NULL, NULL, &nv) == 0);
  atomic_store(&x3.same_slot, ax__aid_slot(nv) == ax__aid_slot(old) &&
                                  ax__aid_worker(nv) == ax__aid_worker(old));
  atomic_store(&x3.other_gen, ax__aid_gen(nv) != ax__aid_gen(old));
  /* Known dead from here (same worker): refused, the payload stays ours. */
  atomic_store(&x3.w_srch, ax_send(self, old, T_DATA, "x", 1) == -ESRCH);
  void *p = malloc(8);
  atomic_store(&x3.w_move_srch,
               ax_send_move(self, old, T_DATA, p, 8, pl_free) == -ESRCH);
  free(p);
  atomic_store(&x3.v2, nv);
}

static const ax_behaviour_t w_beh = {0, NULL, w_receive, NULL, "W"};

static void s_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  ax_aid_t old = atomic_load(&x3.v);
  if (m->tag == T_GO) {
    for (int i = 0; i < K3; i++)
      ACT_CHECK(ax_send_move(self, old, T_DATA, pl_new(32), 32, pl_free) == 0);
    atomic_store(&x3.s_sent, 1);
  } else { /* after the reuse: the generation tells, from another worker */
    atomic_store(&x3.s_srch, ax_send(self, old, T_DATA, "x", 1) == -ESRCH);
  }
}

static const ax_behaviour_t s_beh = {0, NULL, s_receive, NULL, "S"};

static void test_stale_id_reused_slot(void **state) {
  (void)state;
  act_errors_reset();
  pl_reset();
  memset(&x3, 0, sizeof x3);
  ax_rt_t *rt = x3.rt = rt_new(2, 0);
  ax_aid_t w = spawn_on(rt, &w_beh, NULL, 0);
  ax_aid_t s = spawn_on(rt, &s_beh, NULL, 1);
  ax_aid_t v = spawn_on(rt, &v_beh, NULL, 0);
  atomic_store(&x3.w, w);
  atomic_store(&x3.s, s);
  atomic_store(&x3.v, v);
  uint64_t dl0 = dead_letters(rt);
  assert_int_equal(ax_rt_send(rt, v, T_GO, NULL, 0), 0);
  WAIT(atomic_load(&x3.v_blocking));
  assert_int_equal(ax_rt_send(rt, s, T_GO, NULL, 0), 0);
  WAIT(atomic_load(&x3.v2) != AX_AID_NONE);
  ax_aid_t v2 = atomic_load(&x3.v2);
  assert_true(atomic_load(&x3.same_slot));
  assert_true(atomic_load(&x3.other_gen));
  assert_true(atomic_load(&x3.w_srch));
  assert_true(atomic_load(&x3.w_move_srch));
  /* S's messages were in flight: each a dead letter, freed once. */
  WAIT(atomic_load(&pl_frees) == K3);
  assert_int_equal(dead_letters(rt) - dl0, K3);
  /* The old id, from another worker and from off the runtime. */
  assert_int_equal(ax_rt_send(rt, s, T_PING, NULL, 0), 0);
  WAIT(atomic_load(&x3.s_srch));
  assert_int_equal(ax_rt_send(rt, v, T_DATA, "x", 1), -ESRCH);
  assert_int_equal(ax_kill(rt, v), -ESRCH);
  /* The new tenant works, and saw none of it. */
  assert_int_equal(ax_rt_send(rt, v2, T_PING, NULL, 0), 0);
  WAIT(atomic_load(&x3.v2_pings) == 1);
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(atomic_load(&x3.v_data), 0);
  assert_int_equal(atomic_load(&x3.v2_data), 0);
  assert_int_equal(atomic_load(&x3.v2_pings), 1);
  assert_int_equal(atomic_load(&pl_allocs), K3);
  assert_int_equal(atomic_load(&pl_frees), K3);
}

/* ======================================================================== */
/* 4. Monitors and links                                                    */
/* ======================================================================== */

static void test_monitors(void **state) {
  (void)state;
  act_errors_reset();
  ax_rt_t *rt = rt_new(2, 0);
  hubs_new(rt);
  static rec_t w, t[5];
  ax_aid_t wid = puppet_on(rt, &w, 0);
  const int reasons[] = {AX_EXIT_NORMAL, AX_EXIT_ERROR, 42};
  /* Exits with a reason, on the other worker and on the same one. */
  for (int i = 0; i < 3; i++) {
    ax_aid_t tid = puppet_on(rt, &t[i], i % 2 ? 0 : 1);
    assert_int_equal(cmd_send(rt, &w, wid, T_MON, tid, 0), 0);
    int downs = atomic_load(&w.downs);
    cmd_send(rt, &t[i], tid, T_EXIT, 0, reasons[i]);
    WAIT(atomic_load(&w.downs) == downs + 1);
    assert_int_equal(atomic_load(&w.down_aid), tid);
    assert_int_equal(atomic_load(&w.down_reason), reasons[i]);
    assert_int_equal(atomic_load(&t[i].terms), 1);
    assert_int_equal(atomic_load(&t[i].term_reason), reasons[i]);
  }
  /* Killed; monitored twice: two DOWNs. */
  ax_aid_t tid = puppet_on(rt, &t[3], 1);
  assert_int_equal(cmd_send(rt, &w, wid, T_MON, tid, 0), 0);
  assert_int_equal(cmd_send(rt, &w, wid, T_MON, tid, 0), 0);
  assert_int_equal(ax_kill(rt, tid), 0);
  WAIT(atomic_load(&w.downs) == 5);
  assert_int_equal(atomic_load(&w.down_reason), AX_EXIT_KILLED);
  assert_int_equal(atomic_load(&t[3].term_reason), AX_EXIT_KILLED);
  /* Already gone, on either worker: NOPROC at once. */
  flush_from(rt, 1, &w, wid);
  for (int i = 0; i < 2; i++) {
    ax_aid_t gone = i ? tid : atomic_load(&t[1].self); /* w1, w0 */
    assert_int_equal(cmd_send(rt, &w, wid, T_MON, gone, 0), 0);
    WAIT(atomic_load(&w.downs) == 6 + i);
    assert_int_equal(atomic_load(&w.down_aid), gone);
    assert_int_equal(atomic_load(&w.down_reason), AX_EXIT_NOPROC);
  }
  /* No DOWN came twice: markers from both workers arrive, count holds. */
  flush_from(rt, 0, &w, wid);
  flush_from(rt, 1, &w, wid);
  assert_int_equal(atomic_load(&w.downs), 7);
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(atomic_load(&w.downs), 7);
  assert_int_equal(atomic_load(&w.terms), 1);
  assert_int_equal(atomic_load(&w.term_reason), AX_EXIT_SHUTDOWN);
}

/* Two fresh puppets @x (worker @wx) and @y (worker @wy), @x linked to @y. */
static void linked_pair(ax_rt_t *rt, rec_t *x, ax_aid_t *xid, int wx, rec_t *y,
                        ax_aid_t *yid, int wy) {
  *xid = puppet_on(rt, x, wx);
  *yid = puppet_on(rt, y, wy);
  assert_int_equal(cmd_send(rt, x, *xid, T_LINK, *yid, 0), 0);
  /* The link request reached y before anything later from the test. */
  flush_from(rt, (unsigned)wx, y, *yid);
}

static void test_links(void **state) {
  (void)state;
  act_errors_reset();
  ax_rt_t *rt = rt_new(2, 0);
  hubs_new(rt);
  static rec_t x, y;
  ax_aid_t xid, yid;

  /* Abnormal exit of the linked side kills the linker... */
  linked_pair(rt, &x, &xid, 0, &y, &yid, 1);
  cmd_send(rt, &y, yid, T_EXIT, 0, AX_EXIT_ERROR);
  WAIT(atomic_load(&x.terms) == 1);
  assert_int_equal(atomic_load(&x.term_reason), AX_EXIT_KILLED);
  assert_int_equal(atomic_load(&y.term_reason), AX_EXIT_ERROR);

  /* ...and of the linker kills the linked side (the other way). */
  linked_pair(rt, &x, &xid, 0, &y, &yid, 1);
  assert_int_equal(ax_kill(rt, xid), 0);
  WAIT(atomic_load(&y.terms) == 1);
  assert_int_equal(atomic_load(&y.term_reason), AX_EXIT_KILLED);
  assert_int_equal(atomic_load(&x.term_reason), AX_EXIT_KILLED);

  /* Same worker, a link to self is refused. */
  linked_pair(rt, &x, &xid, 1, &y, &yid, 1);
  assert_int_equal(cmd_send(rt, &x, xid, T_LINK, xid, 0), -EINVAL);
  cmd_send(rt, &x, xid, T_EXIT, 0, 7);
  WAIT(atomic_load(&y.terms) == 1);
  assert_int_equal(atomic_load(&y.term_reason), AX_EXIT_KILLED);

  /* A normal exit does not cross a link. */
  linked_pair(rt, &x, &xid, 0, &y, &yid, 1);
  cmd_send(rt, &y, yid, T_EXIT, 0, AX_EXIT_NORMAL);
  WAIT(atomic_load(&y.terms) == 1);
  flush_from(rt, 1, &x, xid);
  assert_int_equal(atomic_load(&x.terms), 0);
  assert_int_equal(atomic_load(&x.exits), 0);

  /* Trapping: exits arrive as AX_TAG_EXIT, normal ones too; x lives. */
  static rec_t z;
  ax_aid_t zid = puppet_on(rt, &z, 1);
  assert_int_equal(cmd_send(rt, &x, xid, T_TRAP, 0, 1), 0);
  assert_int_equal(cmd_send(rt, &x, xid, T_LINK, zid, 0), 0);
  flush_from(rt, 0, &z, zid);
  assert_int_equal(ax_kill(rt, zid), 0);
  WAIT(atomic_load(&x.exits) == 1);
  assert_int_equal(atomic_load(&x.exit_aid), zid);
  assert_int_equal(atomic_load(&x.exit_reason), AX_EXIT_KILLED);
  zid = puppet_on(rt, &z, 1);
  assert_int_equal(cmd_send(rt, &x, xid, T_LINK, zid, 0), 0);
  flush_from(rt, 0, &z, zid);
  cmd_send(rt, &z, zid, T_EXIT, 0, AX_EXIT_NORMAL);
  WAIT(atomic_load(&x.exits) == 2);
  assert_int_equal(atomic_load(&x.exit_reason), AX_EXIT_NORMAL);
  flush_from(rt, 1, &x, xid); /* z fully gone (its slot moved on) */
  /* A link to a gone actor: as if it just exited with NOPROC. */
  assert_int_equal(cmd_send(rt, &x, xid, T_LINK, zid, 0), 0);
  WAIT(atomic_load(&x.exits) == 3);
  assert_int_equal(atomic_load(&x.exit_aid), zid);
  assert_int_equal(atomic_load(&x.exit_reason), AX_EXIT_NOPROC);

  /* Unlinked: nothing crosses, trapped or not. */
  zid = puppet_on(rt, &z, 1);
  assert_int_equal(cmd_send(rt, &x, xid, T_LINK, zid, 0), 0);
  assert_int_equal(cmd_send(rt, &x, xid, T_UNLINK, zid, 0), 0);
  assert_int_equal(cmd_send(rt, &x, xid, T_UNLINK, zid, 0), -ENOENT);
  flush_from(rt, 0, &z, zid);
  cmd_send(rt, &z, zid, T_EXIT, 0, AX_EXIT_ERROR);
  WAIT(atomic_load(&z.terms) == 1);
  flush_from(rt, 1, &x, xid);
  assert_int_equal(atomic_load(&x.exits), 3);
  assert_int_equal(cmd_send(rt, &x, xid, T_TRAP, 0, 0), 0);
  zid = puppet_on(rt, &z, 1);
  assert_int_equal(cmd_send(rt, &x, xid, T_LINK, zid, 0), 0);
  assert_int_equal(cmd_send(rt, &x, xid, T_UNLINK, zid, 0), 0);
  flush_from(rt, 0, &z, zid);
  assert_int_equal(ax_kill(rt, zid), 0);
  WAIT(atomic_load(&z.terms) == 1);
  flush_from(rt, 1, &x, xid);
  assert_int_equal(atomic_load(&x.terms), 0);
  assert_int_equal(atomic_load(&x.exits), 3);

  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(atomic_load(&x.terms), 1);
  assert_int_equal(atomic_load(&x.term_reason), AX_EXIT_SHUTDOWN);
}

/* Exit during a send storm: senders on the other workers keep sending
 * moved payloads to the target until they are told it is gone. */
static struct {
  _Atomic ax_aid_t target, tenant;
  atomic_long sent, received, tenant_data;
  atomic_int senders_done, same_slot;
} x4;

/* The next tenant of the target's slot, spawned the moment it is free
 * while the storm's messages are still in flight: none may reach it. */
static void tenant_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)self, (void)state, (void)m;
  atomic_fetch_add(&x4.tenant_data, 1);
}

static const ax_behaviour_t tenant = {0, NULL, tenant_receive, NULL, "tenant"};

static int respawner_init(ax_actor_t *self, void *state, void *arg) {
  (void)state, (void)arg;
  return ax_monitor(self, atomic_load(&x4.target));
}

static void respawner_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  ACT_CHECK(m->tag == AX_TAG_DOWN);
  ax_aid_t old = atomic_load(&x4.target), id = AX_AID_NONE;
  ACT_CHECK(ax_spawn(ax_actor_rt(self), &tenant, NULL, NULL, &id) == 0);
  atomic_store(&x4.same_slot, ax__aid_slot(id) == ax__aid_slot(old) &&
                                  ax__aid_worker(id) == ax__aid_worker(old));
  atomic_store(&x4.tenant, id);
}

static const ax_behaviour_t respawner = {0, respawner_init, respawner_receive,
                                         NULL, "respawner"};

static void storm_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  if (m->tag != T_GO) {
    atomic_fetch_add(&x4.received, 1);
    return;
  }
  ax_aid_t to = atomic_load(&x4.target);
  for (int i = 0; i < 64; i++) {
    void *p = pl_new(40);
    int rc = ax_send_move(self, to, T_DATA, p, 40, pl_free);
    if (rc == 0) {
      atomic_fetch_add(&x4.sent, 1);
      continue;
    }
    pl_free(p); /* refused: still ours */
    if (rc == -ESRCH) {
      atomic_fetch_add(&x4.senders_done, 1);
      return;
    }
    ACT_CHECK(rc == -EAGAIN);
    break;
  }
  ACT_CHECK(ax_send(self, ax_self(self), T_GO, NULL, 0) == 0);
}

static const ax_behaviour_t storm = {0, NULL, storm_receive, NULL, "storm"};

static void test_exit_during_storm(void **state) {
  (void)state;
  act_errors_reset();
  pl_reset();
  memset(&x4, 0, sizeof x4);
  ax_rt_t *rt = rt_new(3, 0);
  hubs_new(rt);
  static rec_t w;
  ax_aid_t wid = puppet_on(rt, &w, 2);
  ax_aid_t target = spawn_on(rt, &storm, NULL, 0);
  atomic_store(&x4.target, target);
  assert_int_equal(cmd_send(rt, &w, wid, T_MON, target, 0), 0);
  spawn_on(rt, &respawner, NULL, 0);
  ax_aid_t snd[4];
  for (int i = 0; i < 4; i++) {
    snd[i] = spawn_on(rt, &storm, NULL, 1 + i % 2);
    assert_int_equal(ax_rt_send(rt, snd[i], T_GO, NULL, 0), 0);
  }
  WAIT(atomic_load(&x4.received) >= 2000);
  assert_int_equal(ax_kill(rt, target), 0);
  WAIT(atomic_load(&x4.senders_done) == 4);
  WAIT(atomic_load(&w.downs) == 1);
  assert_int_equal(atomic_load(&w.down_reason), AX_EXIT_KILLED);
  WAIT(atomic_load(&x4.tenant) != AX_AID_NONE);
  assert_true(atomic_load(&x4.same_slot));
  /* Every sent payload delivered or dead, freed once either way. */
  WAIT(atomic_load(&pl_frees) == atomic_load(&pl_allocs));
  long dl = (long)dead_letters(rt);
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(atomic_load(&w.downs), 1);
  assert_int_equal(atomic_load(&x4.tenant_data), 0);
  assert_int_equal(atomic_load(&pl_frees), atomic_load(&pl_allocs));
  long sent = atomic_load(&x4.sent), recv = atomic_load(&x4.received);
  assert_true(recv <= sent);
  assert_true(dl >= sent - recv);
}

/* ======================================================================== */
/* 5. Mailbox bound                                                          */
/* ======================================================================== */

static struct {
  _Atomic ax_aid_t t;
  atomic_int got, step1, step2, refused_ok, move_refused_ok;
} x5a;

static void counter_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)self, (void)state, (void)m;
  atomic_fetch_add(&x5a.got, 1);
}

static const ax_behaviour_t counter = {0, NULL, counter_receive, NULL, "cnt"};

static void filler_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  ax_aid_t t = atomic_load(&x5a.t);
  int ok = 0;
  for (int i = 0; i < 4; i++)
    ok += ax_send(self, t, T_DATA, &i, sizeof i) == 0;
  ax_worker_stats_t s0, s1;
  ax_rt_stats(ax_actor_rt(self), 0, &s0);
  int rc = ax_send(self, t, T_DATA, "y", 1);
  void *p = pl_new(100);
  int rc2 = ax_send_move(self, t, T_DATA, p, 100, pl_free);
  ax_rt_stats(ax_actor_rt(self), 0, &s1);
  pl_free(p); /* refused: still ours */
  atomic_store(&x5a.refused_ok, ok == 4 && rc == -EAGAIN &&
                                    s1.refused == s0.refused + 2);
  atomic_store(&x5a.move_refused_ok, rc2 == -EAGAIN);
  atomic_store(m->tag == T_GO ? &x5a.step1 : &x5a.step2, 1);
}

static const ax_behaviour_t filler = {0, NULL, filler_receive, NULL, "fill"};

/* A cycler keeps its own mailbox (capacity 1) full: one T_U message to
 * itself always waits there, so whatever else arrives finds it full. */
static struct {
  atomic_int ticks, downs, eagain, user, terms, term_reason;
  _Atomic ax_aid_t watch;
  bool u_pending; /* cycler only */
} x5;

static int cycler_init(ax_actor_t *self, void *state, void *arg) {
  (void)state, (void)arg;
  ax_monitor(self, atomic_load(&x5.watch));
  ax_every(self, 1, T_REP, NULL);
  return 0;
}

static void cycler_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  switch (m->tag) {
  case T_U:
    x5.u_pending = false;
    break;
  case T_REP:
    atomic_fetch_add(&x5.ticks, 1);
    break;
  case AX_TAG_DOWN:
    atomic_fetch_add(&x5.downs, 1);
    break;
  default:
    atomic_fetch_add(&x5.user, 1);
  }
  if (!x5.u_pending) {
    int rc = ax_send(self, ax_self(self), T_U, NULL, 0);
    if (rc == 0)
      x5.u_pending = true;
    else if (rc == -EAGAIN)
      atomic_fetch_add(&x5.eagain, 1); /* full: resent after the next one */
    else
      ACT_CHECK(!"cycler: send to self");
  }
}

static void cycler_terminate(ax_actor_t *self, void *state, int reason) {
  (void)self, (void)state;
  atomic_store(&x5.term_reason, reason);
  atomic_fetch_add(&x5.terms, 1);
}

static const ax_behaviour_t cycler = {0, cycler_init, cycler_receive,
                                      cycler_terminate, "cycler"};

static void test_mailbox_bound(void **state) {
  (void)state;
  act_errors_reset();
  pl_reset();
  memset(&x5a, 0, sizeof x5a);
  memset(&x5, 0, sizeof x5);
  ax_rt_t *rt = rt_new(2, 0);
  /* Local sender: exactly the capacity goes in, the next is refused. */
  ax_spawn_options_t o;
  ax_spawn_options_init(&o);
  o.worker = 0;
  o.capacity = 4;
  ax_aid_t t;
  assert_int_equal(ax_spawn(rt, &counter, NULL, &o, &t), 0);
  atomic_store(&x5a.t, t);
  ax_aid_t f = spawn_on(rt, &filler, NULL, 0);
  assert_int_equal(ax_rt_send(rt, f, T_GO, NULL, 0), 0);
  WAIT(atomic_load(&x5a.step1));
  assert_true(atomic_load(&x5a.refused_ok));
  assert_true(atomic_load(&x5a.move_refused_ok));
  WAIT(atomic_load(&x5a.got) == 4);
  /* Drained: open again, exactly as much. */
  assert_int_equal(ax_rt_send(rt, f, T_PING, NULL, 0), 0);
  WAIT(atomic_load(&x5a.step2));
  assert_true(atomic_load(&x5a.refused_ok));
  WAIT(atomic_load(&x5a.got) == 8);

  /* A full mailbox still takes ticks, DOWNs and a kill. */
  static rec_t watched;
  ax_aid_t wid = puppet_on(rt, &watched, 0);
  atomic_store(&x5.watch, wid);
  o.worker = 1;
  o.capacity = 1;
  ax_aid_t c;
  assert_int_equal(ax_spawn(rt, &cycler, NULL, &o, &c), 0);
  /* Its first tick starts the cycle. */
  WAIT(atomic_load(&x5.ticks) >= 3);
  /* Cross-worker sender: eventually refused (messages already in flight
   * may land above the bound; every one that got in is received). */
  long ok = 0;
  bool refused = false;
  uint64_t t0 = mono_ms();
  while (!refused && mono_ms() - t0 < WAIT_MS) {
    int rc = ax_rt_send(rt, c, T_DATA, NULL, 0);
    if (rc == 0)
      ok++;
    else if (rc == -EAGAIN)
      refused = true;
    else
      fail_msg("ax_rt_send: %s", ax_strerror(rc));
  }
  assert_true(refused);
  assert_int_equal(ax_kill(rt, wid), 0);
  WAIT(atomic_load(&x5.downs) == 1);
  int ticks = atomic_load(&x5.ticks);
  WAIT(atomic_load(&x5.ticks) >= ticks + 3);
  assert_int_equal(ax_kill(rt, c), 0);
  WAIT(atomic_load(&x5.terms) == 1);
  assert_int_equal(atomic_load(&x5.term_reason), AX_EXIT_KILLED);
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_true(atomic_load(&x5.eagain) > 0); /* it really was full */
  assert_int_equal(atomic_load(&x5.downs), 1);
  assert_int_equal(atomic_load(&x5.user), ok);
  assert_int_equal(atomic_load(&pl_frees), atomic_load(&pl_allocs));
}

/* ======================================================================== */
/* 6. Shutdown during traffic                                                */
/* ======================================================================== */

#define NCHAT 48

static struct {
  _Atomic ax_aid_t peers[NCHAT];
  atomic_long spawned, inits, terms, sent, received, kills;
  atomic_long bad_reason;
  long spawn_budget, kill_budget, send_budget;
  bool expect_shutdown; /* every terminate reason is SHUTDOWN */
} xc;

typedef struct chat {
  uint64_t rnd;
} chat_t;

static const ax_behaviour_t chatter;

static int chat_init(ax_actor_t *self, void *state, void *arg) {
  chat_t *c = state;
  (void)arg;
  c->rnd = ax_self(self) * 0x9e3779b97f4a7c15ull | 1;
  atomic_fetch_add(&xc.inits, 1);
  return 0;
}

static void chat_spawn(ax_actor_t *self, uint64_t r) {
  if (atomic_fetch_add(&xc.spawned, 1) >= xc.spawn_budget) {
    atomic_fetch_sub(&xc.spawned, 1);
    return;
  }
  ax_spawn_options_t o;
  ax_spawn_options_init(&o);
  o.worker = AX_WORKER_ANY;
  ax_aid_t id;
  int rc = ax_spawn(ax_actor_rt(self), &chatter, NULL, &o, &id);
  if (rc) {
    atomic_fetch_sub(&xc.spawned, 1);
    ACT_CHECK(rc == -ESHUTDOWN);
    return;
  }
  atomic_store(&xc.peers[r % NCHAT], id);
  (void)ax_send(self, id, T_GO, NULL, 0);
}

static void chat_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  chat_t *c = state;
  if (m->tag != T_GO) {
    atomic_fetch_add(&xc.received, 1);
    return;
  }
  /* Flow control: a bounded backlog, so a shutdown has a bounded amount
   * of mail to free (the traffic itself never stops). */
  int burst = atomic_load(&xc.sent) - atomic_load(&xc.received) < 8192 ? 32 : 0;
  for (int i = 0; i < burst; i++) {
    ax_aid_t to = atomic_load(&xc.peers[xorshift(&c->rnd) % NCHAT]);
    int rc;
    if (i & 1) {
      void *p = pl_new(48);
      rc = ax_send_move(self, to, T_DATA, p, 48, pl_free);
      if (rc)
        pl_free(p);
    } else {
      rc = ax_send(self, to, T_DATA, &i, sizeof i);
    }
    if (rc == 0)
      atomic_fetch_add(&xc.sent, 1);
    else
      ACT_CHECK(rc == -ESRCH || rc == -EAGAIN || rc == -ESHUTDOWN);
  }
  uint64_t r = xorshift(&c->rnd);
  if (r % 8 == 0)
    chat_spawn(self, r >> 8);
  if (r % 16 == 1 && atomic_fetch_add(&xc.kills, 1) < xc.kill_budget) {
    int rc = ax_kill(ax_actor_rt(self), atomic_load(&xc.peers[(r >> 8) % NCHAT]));
    ACT_CHECK(rc == 0 || rc == -ESRCH);
  }
  if (atomic_load(&xc.sent) < xc.send_budget)
    (void)ax_send(self, ax_self(self), T_GO, NULL, 0);
}

static void chat_terminate(ax_actor_t *self, void *state, int reason) {
  (void)self, (void)state;
  if (xc.expect_shutdown && reason != AX_EXIT_SHUTDOWN)
    atomic_fetch_add(&xc.bad_reason, 1);
  if (!xc.expect_shutdown && reason != AX_EXIT_SHUTDOWN &&
      reason != AX_EXIT_KILLED)
    atomic_fetch_add(&xc.bad_reason, 1);
  atomic_fetch_add(&xc.terms, 1);
}

static const ax_behaviour_t chatter = {sizeof(chat_t), chat_init,
                                       chat_receive, chat_terminate, "chat"};

static void chat_reset(long spawn_budget, long kill_budget, long send_budget,
                       bool expect_shutdown) {
  memset(&xc, 0, sizeof xc);
  xc.spawn_budget = spawn_budget;
  xc.kill_budget = kill_budget;
  xc.send_budget = send_budget;
  xc.expect_shutdown = expect_shutdown;
}

/* The first NCHAT chatters, spread over the workers from the test thread. */
static void chat_start(ax_rt_t *rt) {
  ax_aid_t ids[NCHAT];
  for (int i = 0; i < NCHAT; i++) {
    atomic_fetch_add(&xc.spawned, 1);
    ids[i] = spawn_on(rt, &chatter, NULL, i % (int)ax_rt_workers(rt));
    atomic_store(&xc.peers[i], ids[i]);
  }
  for (int i = 0; i < NCHAT; i++) { /* some may be killed already */
    int rc = ax_rt_send(rt, ids[i], T_GO, NULL, 0);
    if (rc != 0 && rc != -ESRCH)
      fail_msg("ax_rt_send: %s", ax_strerror(rc));
  }
}

static void test_shutdown_during_traffic(void **state) {
  (void)state;
  act_errors_reset();
  pl_reset();
  chat_reset(NCHAT + 200, 0, LONG_MAX, true);
  ax_rt_t *rt = rt_new(3, 0);
  chat_start(rt);
  WAIT(atomic_load(&xc.received) >= scaled(40000));
  ax_rt_free(rt); /* while everyone is still sending */
  assert_no_act_errors();
  long spawned = atomic_load(&xc.spawned);
  assert_true(spawned > NCHAT);
  assert_int_equal(atomic_load(&xc.terms), spawned);
  assert_true(atomic_load(&xc.inits) <= spawned);
  assert_int_equal(atomic_load(&xc.bad_reason), 0);
  assert_int_equal(atomic_load(&pl_frees), atomic_load(&pl_allocs));
  assert_true(atomic_load(&xc.received) <= atomic_load(&xc.sent));
}

/* ======================================================================== */
/* 7. Requests                                                               */
/* ======================================================================== */

#define NREQ 50

static struct {
  _Atomic ax_aid_t echo, slow, gone;
  uint64_t refs[NREQ], slow_ref;
  atomic_int got[NREQ];
  atomic_int bad, timeouts_slow, timeouts_other, late, flush, setup_ok;
  ax_msg_t held; /* the slow server's request */
} x7;

static void echo_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  uint32_t v;
  ACT_CHECK(m->ref != 0 && m->len == sizeof v);
  memcpy(&v, m->data, sizeof v);
  v *= 3;
  ACT_CHECK(ax_reply(self, m, T_REPLY, &v, sizeof v) == 0);
}

static const ax_behaviour_t echo = {0, NULL, echo_receive, NULL, "echo"};

static void slow_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  if (m->tag == T_DATA) {
    ACT_CHECK(m->ref != 0);
    x7.held = *m;
    x7.held.data = NULL;
    x7.held.len = 0;
  } else { /* T_NOW: the late reply, then a marker behind it */
    ACT_CHECK(ax_reply(self, &x7.held, T_REPLY, NULL, 0) == 0);
    ACT_CHECK(ax_send(self, x7.held.from, T_FLUSH, NULL, 0) == 0);
  }
}

static const ax_behaviour_t slow = {0, NULL, slow_receive, NULL, "slow"};

static void client_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  switch (m->tag) {
  case T_GO: {
    bool ok = ax_reply(self, m, T_REPLY, NULL, 0) == -EINVAL; /* no request */
    uint64_t ref = 0;
    ok &= ax_request(self, atomic_load(&x7.gone), T_DATA, NULL, 0, 100,
                     &ref) == -ESRCH;
    for (uint32_t i = 0; i < NREQ; i++) {
      ok &= ax_request(self, atomic_load(&x7.echo), T_DATA, &i, sizeof i,
                       5000, &x7.refs[i]) == 0;
      for (uint32_t j = 0; j < i; j++)
        ok &= x7.refs[j] != x7.refs[i];
    }
    ok &= ax_request(self, atomic_load(&x7.slow), T_DATA, NULL, 0, 20,
                     &x7.slow_ref) == 0;
    atomic_store(&x7.setup_ok, ok ? 1 : -1);
    return;
  }
  case T_REPLY: {
    if (m->ref == x7.slow_ref) {
      atomic_fetch_add(&x7.late, 1);
      return;
    }
    uint32_t v;
    memcpy(&v, m->data, sizeof v);
    for (uint32_t i = 0; i < NREQ; i++)
      if (x7.refs[i] == m->ref) {
        if (v != i * 3 || m->from != atomic_load(&x7.echo))
          atomic_fetch_add(&x7.bad, 1);
        atomic_fetch_add(&x7.got[i], 1);
        return;
      }
    atomic_fetch_add(&x7.bad, 1);
    return;
  }
  case AX_TAG_TIMEOUT:
    if (m->ref == x7.slow_ref) {
      atomic_fetch_add(&x7.timeouts_slow, 1);
      ACT_CHECK(ax_send(self, atomic_load(&x7.slow), T_NOW, NULL, 0) == 0);
    } else {
      atomic_fetch_add(&x7.timeouts_other, 1);
    }
    return;
  case T_FLUSH:
    atomic_fetch_add(&x7.flush, 1);
    return;
  default:
    ACT_CHECK(!"client: unexpected tag");
  }
}

static const ax_behaviour_t client = {0, NULL, client_receive, NULL, "client"};

static void test_requests(void **state) {
  (void)state;
  act_errors_reset();
  memset(&x7, 0, sizeof x7);
  ax_rt_t *rt = rt_new(2, 0);
  static rec_t g;
  ax_aid_t gone = puppet_on(rt, &g, 0);
  cmd_send(rt, &g, gone, T_EXIT, 0, AX_EXIT_NORMAL);
  WAIT(atomic_load(&g.terms) == 1);
  /* Its slot's generation moves on right after terminate returns. */
  WAIT(ax_rt_send(rt, gone, T_PING, NULL, 0) == -ESRCH);
  atomic_store(&x7.gone, gone);
  atomic_store(&x7.echo, spawn_on(rt, &echo, NULL, 1));
  atomic_store(&x7.slow, spawn_on(rt, &slow, NULL, 1));
  ax_aid_t c = spawn_on(rt, &client, NULL, 0);
  assert_int_equal(ax_rt_send(rt, c, T_GO, NULL, 0), 0);
  WAIT(atomic_load(&x7.setup_ok) != 0);
  assert_int_equal(atomic_load(&x7.setup_ok), 1);
  for (int i = 0; i < NREQ; i++)
    WAIT(atomic_load(&x7.got[i]) == 1);
  WAIT(atomic_load(&x7.flush) == 1);
  ax_rt_free(rt);
  assert_no_act_errors();
  for (int i = 0; i < NREQ; i++)
    assert_int_equal(atomic_load(&x7.got[i]), 1);
  assert_int_equal(atomic_load(&x7.bad), 0);
  assert_int_equal(atomic_load(&x7.timeouts_slow), 1);
  assert_int_equal(atomic_load(&x7.timeouts_other), 0);
  assert_int_equal(atomic_load(&x7.late), 0);
}

/* ======================================================================== */
/* 8. Offload                                                                */
/* ======================================================================== */

#define NJOBS 10

typedef struct job {
  uint32_t x, y;
  int worker; /* where fn ran: -1, off the workers */
  bool gate;  /* wait for x8.open */
} job_t;

static struct {
  ax_rt_t *rt;
  job_t *jobs[NJOBS];
  atomic_int done, bad, taken, o2_done, o2_terms, open, setup_ok;
} x8;

static void job_fn(void *arg) {
  job_t *j = arg;
  if (j->gate) {
    uint64_t t0 = mono_ms();
    while (!atomic_load(&x8.open) && mono_ms() - t0 < 5000)
      sleep_ms(1);
  }
  j->y = j->x * 2;
  j->worker = ax_rt_current_worker(x8.rt);
}

static void off_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  if (m->tag == T_GO) {
    bool ok = true;
    for (uint32_t i = 0; i < NJOBS; i++) {
      job_t *j = x8.jobs[i] = pl_new(sizeof *j);
      memset(j, 0, sizeof *j);
      j->x = i + 1;
      ok &= ax_offload(self, job_fn, j, pl_free, T_DONE) == 0;
    }
    ok &= ax_offload(self, job_fn, NULL, NULL, AX_TAG_SYSTEM) == -EINVAL;
    atomic_store(&x8.setup_ok, ok ? 1 : -1);
    return;
  }
  ACT_CHECK(m->tag == T_DONE);
  job_t *j = m->data;
  uint32_t i = j->x - 1;
  if (i >= NJOBS || j != x8.jobs[i] || m->len != 0 || j->y != j->x * 2 ||
      j->worker != -1 || m->from != AX_AID_NONE || ax_actor_worker(self) != 1)
    atomic_fetch_add(&x8.bad, 1);
  if (i % 2) { /* take every other one: then it is ours to free */
    void *p = ax_msg_take(m);
    ACT_CHECK(p == j);
    atomic_fetch_add(&x8.taken, 1);
    pl_free(p);
  }
  atomic_fetch_add(&x8.done, 1);
}

static const ax_behaviour_t off = {0, NULL, off_receive, NULL, "off"};

static void off2_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  if (m->tag == T_GO) {
    job_t *j = pl_new(sizeof *j);
    memset(j, 0, sizeof *j);
    j->gate = true;
    ACT_CHECK(ax_offload(self, job_fn, j, pl_free, T_DONE) == 0);
    ax_exit(self, AX_EXIT_NORMAL); /* before the job can complete */
  } else {
    atomic_fetch_add(&x8.o2_done, 1);
  }
}

static void off2_terminate(ax_actor_t *self, void *state, int reason) {
  (void)self, (void)state, (void)reason;
  atomic_fetch_add(&x8.o2_terms, 1);
}

static const ax_behaviour_t off2 = {0, NULL, off2_receive, off2_terminate,
                                    "off2"};

static void test_offload(void **state) {
  (void)state;
  act_errors_reset();
  pl_reset();
  memset(&x8, 0, sizeof x8);
  ax_rt_t *rt = x8.rt = rt_new(2, 0);
  ax_aid_t o = spawn_on(rt, &off, NULL, 1);
  assert_int_equal(ax_rt_send(rt, o, T_GO, NULL, 0), 0);
  WAIT(atomic_load(&x8.setup_ok) != 0);
  assert_int_equal(atomic_load(&x8.setup_ok), 1);
  WAIT(atomic_load(&x8.done) == NJOBS);
  WAIT(atomic_load(&pl_frees) == NJOBS);
  /* The actor exits before its job completes: the argument is freed. */
  ax_aid_t o2 = spawn_on(rt, &off2, NULL, 0);
  assert_int_equal(ax_rt_send(rt, o2, T_GO, NULL, 0), 0);
  WAIT(atomic_load(&x8.o2_terms) == 1);
  atomic_store(&x8.open, 1);
  WAIT(atomic_load(&pl_frees) == NJOBS + 1);
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(atomic_load(&x8.bad), 0);
  assert_int_equal(atomic_load(&x8.taken), NJOBS / 2);
  assert_int_equal(atomic_load(&x8.o2_done), 0);
  assert_int_equal(atomic_load(&pl_allocs), NJOBS + 1);
  assert_int_equal(atomic_load(&pl_frees), NJOBS + 1);
}

/* Jobs queued behind a long one when the runtime stops: each argument is
 * freed exactly once, whether its job ran (the result then reaches a
 * stopped worker) or not. */
static struct {
  atomic_int started, open, ran;
} x8b;

static void gated_fn(void *arg) {
  (void)arg;
  if (atomic_fetch_add(&x8b.started, 1) == 0) {
    uint64_t t0 = mono_ms();
    while (!atomic_load(&x8b.open) && mono_ms() - t0 < 5000)
      sleep_ms(1);
  }
  atomic_fetch_add(&x8b.ran, 1);
}

static void off3_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  if (m->tag == T_GO)
    for (int i = 0; i < 5; i++)
      ACT_CHECK(ax_offload(self, gated_fn, pl_new(8), pl_free, T_DONE) == 0);
}

static const ax_behaviour_t off3 = {0, NULL, off3_receive, NULL, "off3"};

static void test_offload_at_shutdown(void **state) {
  (void)state;
  act_errors_reset();
  pl_reset();
  memset(&x8b, 0, sizeof x8b);
  ax_rt_options_t o;
  ax_rt_options_init(&o);
  o.workers = 2;
  o.offload_threads = 1;
  ax_rt_t *rt = NULL;
  assert_int_equal(ax_rt_new(&o, &rt), 0);
  ax_aid_t a = spawn_on(rt, &off3, NULL, 1);
  assert_int_equal(ax_rt_send(rt, a, T_GO, NULL, 0), 0);
  WAIT(atomic_load(&x8b.started) == 1 && atomic_load(&pl_allocs) == 5);
  ax_rt_stop(rt);
  atomic_store(&x8b.open, 1);
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_true(atomic_load(&x8b.ran) >= 1);
  assert_int_equal(atomic_load(&pl_frees), 5);
}

/* ======================================================================== */
/* 9. Timers                                                                 */
/* ======================================================================== */

static struct {
  uint64_t once_id, rep_id, race_id[2];
  atomic_int once, rep, rep_at_mark, mark, spent_enoent, cancel_ok, args_ok;
  atomic_int race_got, race_after_cancel;
  int race_winner; /* actor only */
  atomic_int d_ticks, d_terms;
} x9;

static void timers_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  switch (m->tag) {
  case T_GO: {
    bool ok = ax_every(self, 0, T_REP, NULL) == -EINVAL;
    ok &= ax_after(self, 1, AX_TAG_SYSTEM, NULL) == -EINVAL;
    ok &= ax_cancel_timer(self, 12345) == -ENOENT;
    ok &= ax_after(self, 5, T_ONCE, &x9.once_id) == 0;
    ok &= ax_every(self, 2, T_REP, &x9.rep_id) == 0;
    /* Two intervals due together: whichever ticks first cancels the
     * other, whose tick may already be queued: it must not arrive. */
    ok &= ax_every(self, 3, T_DATA, &x9.race_id[0]) == 0;
    ok &= ax_every(self, 3, T_PING, &x9.race_id[1]) == 0;
    x9.race_winner = -1;
    atomic_store(&x9.args_ok, ok ? 1 : -1);
    return;
  }
  case T_ONCE:
    atomic_fetch_add(&x9.once, 1);
    atomic_store(&x9.spent_enoent,
                 ax_cancel_timer(self, x9.once_id) == -ENOENT);
    return;
  case T_REP:
    if (atomic_fetch_add(&x9.rep, 1) + 1 == 5) {
      bool ok = ax_cancel_timer(self, x9.rep_id) == 0;
      ok &= ax_cancel_timer(self, x9.rep_id) == -ENOENT;
      atomic_store(&x9.cancel_ok, ok);
      ACT_CHECK(ax_after(self, 30, T_MARK, NULL) == 0);
    }
    return;
  case T_MARK:
    atomic_store(&x9.rep_at_mark, atomic_load(&x9.rep));
    atomic_fetch_add(&x9.mark, 1);
    return;
  case T_DATA:
  case T_PING: {
    int k = m->tag == T_PING;
    if (x9.race_winner < 0) { /* the first tick of either: cancel the other */
      x9.race_winner = k;
      ACT_CHECK(ax_cancel_timer(self, x9.race_id[!k]) == 0);
    }
    if (k != x9.race_winner || atomic_load(&x9.race_got) >= 3) {
      atomic_fetch_add(&x9.race_after_cancel, 1);
      return;
    }
    if (atomic_fetch_add(&x9.race_got, 1) + 1 == 3)
      ACT_CHECK(ax_cancel_timer(self, x9.race_id[k]) == 0);
    return;
  }
  default:
    ACT_CHECK(!"timers: unexpected tag");
  }
}

static const ax_behaviour_t timers = {0, NULL, timers_receive, NULL, "timers"};

static int dying_init(ax_actor_t *self, void *state, void *arg) {
  (void)state, (void)arg;
  ACT_CHECK(ax_every(self, 1, T_REP, NULL) == 0);
  ACT_CHECK(ax_after(self, 20, T_ONCE, NULL) == 0);
  return 0;
}

static void dying_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state;
  ACT_CHECK(m->tag == T_REP || m->tag == T_ONCE);
  if (m->tag == T_REP && atomic_fetch_add(&x9.d_ticks, 1) + 1 == 3)
    ax_exit(self, AX_EXIT_NORMAL);
}

static void dying_terminate(ax_actor_t *self, void *state, int reason) {
  (void)self, (void)state, (void)reason;
  atomic_fetch_add(&x9.d_terms, 1);
}

static const ax_behaviour_t dying = {0, dying_init, dying_receive,
                                     dying_terminate, "dying"};

static void test_timers(void **state) {
  (void)state;
  act_errors_reset();
  memset(&x9, 0, sizeof x9);
  ax_rt_t *rt = rt_new(2, 0);
  ax_aid_t t = spawn_on(rt, &timers, NULL, 1);
  assert_int_equal(ax_rt_send(rt, t, T_GO, NULL, 0), 0);
  WAIT(atomic_load(&x9.args_ok) != 0);
  assert_int_equal(atomic_load(&x9.args_ok), 1);
  WAIT(atomic_load(&x9.mark) == 1);
  WAIT(atomic_load(&x9.once) == 1);
  WAIT(atomic_load(&x9.race_got) == 3);
  /* Timers die with their actor: its every and its after are gone. */
  ax_aid_t d = spawn_on(rt, &dying, NULL, 0);
  (void)d;
  WAIT(atomic_load(&x9.d_terms) == 1);
  sleep_ms(40); /* past the after it had armed: nothing may touch it */
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(atomic_load(&x9.once), 1);
  assert_true(atomic_load(&x9.spent_enoent));
  assert_true(atomic_load(&x9.cancel_ok));
  assert_int_equal(atomic_load(&x9.rep_at_mark), 5);
  assert_int_equal(atomic_load(&x9.rep), 5);
  assert_int_equal(atomic_load(&x9.race_got), 3);
  assert_int_equal(atomic_load(&x9.race_after_cancel), 0);
  assert_int_equal(atomic_load(&x9.d_ticks), 3);
  assert_int_equal(atomic_load(&x9.d_terms), 1);
}

/* ======================================================================== */
/* 10. Groups                                                                */
/* ======================================================================== */

#define GW 3
#define GPER 3
#define GN (GW * GPER)

static struct {
  ax_group_t *g;
  atomic_int got[GN], bad, join_ok, total, leave_ok, sent_rc;
} x10;

static int member_init(ax_actor_t *self, void *state, void *arg) {
  (void)state, (void)arg;
  bool ok = ax_group_join(x10.g, self) == 0;
  ok &= ax_group_join(x10.g, self) == -EEXIST;
  if (ok)
    atomic_fetch_add(&x10.join_ok, 1);
  return 0;
}

static void member_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  int idx = (int)(intptr_t)state;
  switch (m->tag) {
  case T_BCAST:
    if (m->len != 6 || memcmp(m->data, "hello", 6))
      atomic_fetch_add(&x10.bad, 1);
    atomic_fetch_add(&x10.got[idx], 1);
    atomic_fetch_add(&x10.total, 1);
    return;
  case T_LEAVE: {
    bool ok = ax_group_leave(x10.g, self) == 0;
    ok &= ax_group_leave(x10.g, self) == -ENOENT;
    atomic_store(&x10.leave_ok, ok ? 1 : -1);
    return;
  }
  case T_SENDSKIP:
  case T_SENDALL:
    atomic_store(&x10.sent_rc, ax_group_send(x10.g, self, m->tag == T_SENDSKIP,
                                             T_BCAST, "hello", 6) + 1000);
    return;
  default:
    ACT_CHECK(!"member: unexpected tag");
  }
}

static const ax_behaviour_t member = {0, member_init, member_receive, NULL,
                                      "member"};

static void expect_counts(const int *want) {
  int total = 0;
  for (int i = 0; i < GN; i++)
    total += want[i];
  WAIT(atomic_load(&x10.total) == total);
  for (int i = 0; i < GN; i++)
    if (atomic_load(&x10.got[i]) != want[i])
      fail_msg("member %d got %d broadcasts, want %d", i,
               atomic_load(&x10.got[i]), want[i]);
}

static int member_send(ax_rt_t *rt, ax_aid_t id, int tag) {
  atomic_store(&x10.sent_rc, 0);
  assert_int_equal(ax_rt_send(rt, id, (uint32_t)tag, NULL, 0), 0);
  WAIT(atomic_load(&x10.sent_rc) != 0);
  return atomic_load(&x10.sent_rc) - 1000;
}

static void test_groups(void **state) {
  (void)state;
  act_errors_reset();
  memset(&x10, 0, sizeof x10);
  ax_rt_t *rt = rt_new(GW, 0);
  hubs_new(rt);
  assert_int_equal(ax_group_new(rt, &x10.g), 0);
  ax_aid_t id[GN];
  for (int i = 0; i < GN; i++)
    id[i] = spawn_on(rt, &member, (void *)(intptr_t)i, i % GW);
  WAIT(atomic_load(&x10.join_ok) == GN);
  assert_int_equal(ax_group_size(x10.g), GN);
  int want[GN];
  for (int i = 0; i < GN; i++)
    want[i] = 1;
  /* From off the runtime: one copy each, on every worker. */
  assert_int_equal(ax_group_send(x10.g, NULL, false, T_BCAST, "hello", 6), GN);
  expect_counts(want);
  /* From a member, skipping itself, then including itself. */
  assert_int_equal(member_send(rt, id[0], T_SENDSKIP), GN - 1);
  for (int i = 1; i < GN; i++)
    want[i]++;
  expect_counts(want);
  assert_int_equal(member_send(rt, id[4], T_SENDALL), GN);
  for (int i = 0; i < GN; i++)
    want[i]++;
  expect_counts(want);
  /* Exits leave, explicit leaves leave. */
  assert_int_equal(ax_kill(rt, id[2]), 0);
  assert_int_equal(ax_kill(rt, id[5]), 0);
  WAIT(ax_group_size(x10.g) == GN - 2);
  assert_int_equal(ax_rt_send(rt, id[3], T_LEAVE, NULL, 0), 0);
  WAIT(atomic_load(&x10.leave_ok) != 0);
  assert_int_equal(atomic_load(&x10.leave_ok), 1);
  assert_int_equal(ax_group_size(x10.g), GN - 3);
  assert_int_equal(ax_group_send(x10.g, NULL, false, T_BCAST, "hello", 6),
                   GN - 3);
  for (int i = 0; i < GN; i++)
    if (i != 2 && i != 5 && i != 3)
      want[i]++;
  expect_counts(want);
  /* Freed while members remain; they leave it at the shutdown. */
  ax_group_free(x10.g);
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(atomic_load(&x10.bad), 0);
  for (int i = 0; i < GN; i++)
    assert_int_equal(atomic_load(&x10.got[i]), want[i]);
}

/* ======================================================================== */
/* 11. Kill, spawn options, init failure, dump, stop from inside             */
/* ======================================================================== */

static struct {
  atomic_int f_terms, f_reason, f_received;
} x11;

static int failing_init(ax_actor_t *self, void *state, void *arg) {
  (void)self, (void)state, (void)arg;
  return -1;
}

static void failing_receive(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)self, (void)state, (void)m;
  atomic_fetch_add(&x11.f_received, 1);
}

static void failing_terminate(ax_actor_t *self, void *state, int reason) {
  (void)self, (void)state;
  atomic_store(&x11.f_reason, reason);
  atomic_fetch_add(&x11.f_terms, 1);
}

static const ax_behaviour_t failing = {0, failing_init, failing_receive,
                                       failing_terminate, "failing"};

static void test_spawn_options_kill_stop(void **state) {
  (void)state;
  act_errors_reset();
  memset(&x11, 0, sizeof x11);
  ax_rt_t *rt = rt_new(2, 0);
  hubs_new(rt);
  static rec_t p, m, c1, c3;
  ax_aid_t pid = puppet_on(rt, &p, 0);
  ax_aid_t mid = puppet_on(rt, &m, 0);

  /* Argument errors. */
  ax_rt_options_t ro;
  ax_rt_options_init(&ro);
  ro.workers = 257;
  ax_rt_t *bad = NULL;
  assert_int_equal(ax_rt_new(&ro, &bad), -EINVAL);
  assert_null(ax_rt_loop(rt, 2));
  assert_non_null(ax_rt_loop(rt, 1));
  assert_int_equal(ax_rt_current_worker(rt), -1);
  ax_spawn_options_t o;
  ax_spawn_options_init(&o);
  assert_int_equal(o.worker, AX_WORKER_SELF);
  ax_aid_t id;
  ax_behaviour_t nore = {0, NULL, NULL, NULL, NULL};
  assert_int_equal(ax_spawn(rt, &nore, NULL, NULL, &id), -EINVAL);
  o.worker = 2;
  assert_int_equal(ax_spawn(rt, &puppet, &c1, &o, &id), -EINVAL);
  assert_int_equal(ax_rt_send(rt, pid, AX_TAG_SYSTEM, NULL, 0), -EINVAL);

  /* Born linked: the child's kill takes its link with it. */
  memset(&c1, 0, sizeof c1);
  o.worker = 1;
  o.link = pid;
  ax_aid_t c1id;
  assert_int_equal(ax_spawn(rt, &puppet, &c1, &o, &c1id), 0);
  WAIT(atomic_load(&c1.inits) == 1);
  flush_from(rt, 1, &p, pid); /* the birth link reached p */
  assert_int_equal(ax_kill(rt, c1id), 0);
  WAIT(atomic_load(&p.terms) == 1);
  assert_int_equal(atomic_load(&p.term_reason), AX_EXIT_KILLED);
  assert_int_equal(atomic_load(&c1.term_reason), AX_EXIT_KILLED);
  flush_from(rt, 1, &hub[0], hub_id[0]); /* c1 fully gone */
  flush_from(rt, 0, &hub[1], hub_id[1]); /* p too */
  assert_int_equal(ax_kill(rt, c1id), -ESRCH);
  assert_int_equal(ax_kill(rt, pid), -ESRCH);

  /* Born monitored, init fails: AX_EXIT_ERROR, terminate once, and the
   * message sent right after the spawn never reaches receive. */
  ax_spawn_options_init(&o);
  o.worker = 1;
  o.monitor_by = mid;
  ax_aid_t fid;
  assert_int_equal(ax_spawn(rt, &failing, NULL, &o, &fid), 0);
  int rc = ax_rt_send(rt, fid, T_DATA, "x", 1);
  assert_true(rc == 0 || rc == -ESRCH);
  WAIT(atomic_load(&m.downs) == 1);
  assert_int_equal(atomic_load(&m.down_aid), fid);
  assert_int_equal(atomic_load(&m.down_reason), AX_EXIT_ERROR);
  assert_int_equal(atomic_load(&x11.f_terms), 1);
  assert_int_equal(atomic_load(&x11.f_reason), AX_EXIT_ERROR);

  /* Born monitored and linked (trapping), then killed. */
  assert_int_equal(cmd_send(rt, &m, mid, T_TRAP, 0, 1), 0);
  ax_spawn_options_init(&o);
  o.worker = 1;
  o.monitor_by = mid;
  o.link = mid;
  ax_aid_t c3id;
  memset(&c3, 0, sizeof c3);
  assert_int_equal(ax_spawn(rt, &puppet, &c3, &o, &c3id), 0);
  WAIT(atomic_load(&c3.inits) == 1);
  flush_from(rt, 1, &m, mid);
  assert_int_equal(ax_kill(rt, c3id), 0);
  WAIT(atomic_load(&m.downs) == 2 && atomic_load(&m.exits) == 1);
  assert_int_equal(atomic_load(&m.down_reason), AX_EXIT_KILLED);
  assert_int_equal(atomic_load(&m.exit_aid), c3id);
  assert_int_equal(atomic_load(&m.exit_reason), AX_EXIT_KILLED);

  /* Born trapping and linked: the other side's failure is a message. */
  static rec_t q, c4;
  ax_aid_t qid = puppet_on(rt, &q, 0);
  ax_spawn_options_init(&o);
  o.worker = 1;
  o.trap_exit = true;
  o.link = qid;
  ax_aid_t c4id;
  memset(&c4, 0, sizeof c4);
  assert_int_equal(ax_spawn(rt, &puppet, &c4, &o, &c4id), 0);
  WAIT(atomic_load(&c4.inits) == 1);
  flush_from(rt, 1, &q, qid); /* the birth link reached q */
  cmd_send(rt, &q, qid, T_EXIT, 0, AX_EXIT_ERROR);
  WAIT(atomic_load(&c4.exits) == 1);
  assert_int_equal(atomic_load(&c4.exit_aid), qid);
  assert_int_equal(atomic_load(&c4.exit_reason), AX_EXIT_ERROR);
  cmd_send(rt, &c4, c4id, T_PING, 0, 0);
  WAIT(atomic_load(&c4.pings) == 1);
  assert_int_equal(atomic_load(&c4.terms), 0);

  /* ax_rt_dump: a line per worker. */
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_non_null(f);
  ax_rt_dump(rt, f);
  fclose(f);
  assert_non_null(strstr(buf, "worker 0:"));
  assert_non_null(strstr(buf, "worker 1:"));
  assert_null(strstr(buf, "worker 2:"));
  int lines = 0;
  for (char *s = buf; *s; s++)
    lines += *s == '\n';
  assert_int_equal(lines, 2);
  free(buf);

  /* Not from a worker: ax_rt_join refuses. */
  assert_int_equal(cmd_send(rt, &m, mid, T_JOIN, 0, 0), -EDEADLK);

  /* Stop from inside an actor: every worker ends its actors. */
  cmd_send(rt, &m, mid, T_STOPRT, 0, 0);
  assert_int_equal(ax_rt_join(rt), 0);
  assert_int_equal(atomic_load(&m.terms), 1);
  assert_int_equal(atomic_load(&m.term_reason), AX_EXIT_SHUTDOWN);
  for (unsigned w = 0; w < 2; w++) {
    assert_int_equal(atomic_load(&hub[w].terms), 1);
    assert_int_equal(atomic_load(&hub[w].term_reason), AX_EXIT_SHUTDOWN);
  }
  assert_int_equal(ax_spawn(rt, &puppet, &c1, NULL, &id), -ESHUTDOWN);
  assert_int_equal(ax_rt_send(rt, mid, T_PING, NULL, 0), -ESHUTDOWN);
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(atomic_load(&x11.f_terms), 1);
  assert_int_equal(atomic_load(&x11.f_received), 0);
  assert_int_equal(atomic_load(&p.terms), 1);
  assert_int_equal(atomic_load(&m.terms), 1);
}

/* A birth link whose child fails in init at once, many times over: the
 * child's exit must reach the other side of the link (which is told of
 * the link while the child may already be running on its own worker). */
static void test_birth_link_fast_exit(void **state) {
  (void)state;
  act_errors_reset();
  memset(&x11, 0, sizeof x11);
  ax_rt_t *rt = rt_new(2, 0);
  int rounds = (int)scaled(400);
  for (int i = 0; i < rounds; i++) {
    static rec_t p;
    ax_aid_t pid = puppet_on(rt, &p, 0);
    ax_spawn_options_t o;
    ax_spawn_options_init(&o);
    o.worker = 1;
    o.link = pid;
    ax_aid_t fid;
    assert_int_equal(ax_spawn(rt, &failing, NULL, &o, &fid), 0);
    WAIT(atomic_load(&x11.f_terms) == i + 1);
    WAIT(atomic_load(&p.terms) == 1);
    assert_int_equal(atomic_load(&p.term_reason), AX_EXIT_KILLED);
  }
  ax_rt_free(rt);
  assert_no_act_errors();
  assert_int_equal(atomic_load(&x11.f_terms), rounds);
  assert_int_equal(atomic_load(&x11.f_received), 0);
}

/* stop_on_signals: a SIGTERM to the process stops the runtime (main()
 * blocks SIGTERM before any thread exists, as ax_rt_new() does for its
 * caller, so no other thread of this binary can take it). */
static void test_stop_on_signal(void **state) {
  (void)state;
  act_errors_reset();
  ax_rt_options_t o;
  ax_rt_options_init(&o);
  o.workers = 2;
  o.stop_on_signals = true;
  ax_rt_t *rt = NULL;
  assert_int_equal(ax_rt_new(&o, &rt), 0);
  static rec_t a, b;
  puppet_on(rt, &a, 0);
  puppet_on(rt, &b, 1);
  assert_int_equal(kill(getpid(), SIGTERM), 0);
  assert_int_equal(ax_rt_join(rt), 0);
  assert_int_equal(atomic_load(&a.terms), 1);
  assert_int_equal(atomic_load(&a.term_reason), AX_EXIT_SHUTDOWN);
  assert_int_equal(atomic_load(&b.terms), 1);
  assert_int_equal(atomic_load(&b.term_reason), AX_EXIT_SHUTDOWN);
  ax_rt_free(rt);
  assert_no_act_errors();
}

/* ======================================================================== */
/* 12. Stress: spawns across workers, bursts, kills                          */
/* ======================================================================== */

static void test_stress(void **state) {
  (void)state;
  act_errors_reset();
  pl_reset();
  long budget = scaled(400000);
  chat_reset(NCHAT + 2000, 300, budget, false);
  ax_rt_t *rt = rt_new(3, 0);
  chat_start(rt);
  /* Done when the budget is sent or nobody is left to send. */
  WAIT(atomic_load(&xc.sent) >= budget ||
       atomic_load(&xc.terms) == atomic_load(&xc.spawned));
  ax_rt_free(rt);
  assert_no_act_errors();
  long spawned = atomic_load(&xc.spawned);
  assert_int_equal(atomic_load(&xc.terms), spawned);
  assert_int_equal(atomic_load(&xc.bad_reason), 0);
  assert_int_equal(atomic_load(&pl_frees), atomic_load(&pl_allocs));
  assert_true(atomic_load(&xc.received) <= atomic_load(&xc.sent));
  assert_true(atomic_load(&xc.kills) > 0);
}

int main(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_cross_worker_senders, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_same_worker_sends, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_stale_id_reused_slot, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_monitors, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_links, guard_setup, guard_teardown),
      cmocka_unit_test_setup_teardown(test_exit_during_storm, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_mailbox_bound, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_shutdown_during_traffic,
                                      guard_setup, guard_teardown),
      cmocka_unit_test_setup_teardown(test_requests, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_offload, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_offload_at_shutdown, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_timers, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_groups, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_spawn_options_kill_stop,
                                      guard_setup, guard_teardown),
      cmocka_unit_test_setup_teardown(test_birth_link_fast_exit, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_stop_on_signal, guard_setup,
                                      guard_teardown),
      cmocka_unit_test_setup_teardown(test_stress, guard_setup,
                                      guard_teardown),
  };
  return cmocka_run_group_tests_name("actor", tests, NULL, NULL);
}
