/*
 * Internals of the actor layer, shared by the files of src/actor.
 *
 * Ownership: a worker (one thread, one loop) owns its actors, its slot
 * table's actor pointers, its run queue and its message cache. Other threads
 * reach a worker only by posting messages to its loop's mailbox; the one
 * exception is the slot table's generation and "full" words, which other
 * threads read (and which only the owner writes, except the generation of a
 * fresh slot reserved by a remote spawner, written before the id escapes).
 */
#ifndef AX_ACTOR_INT_H
#define AX_ACTOR_INT_H

#include <axon/actor.h>

#include <pthread.h>
#include <stdatomic.h>

#include "loop/loop_int.h"

/* ck_pr operations are inline assembly, which ThreadSanitizer does not see:
 * where one orders memory (a refcount's last drop), say so to TSan. */
#if defined(__SANITIZE_THREAD__)
#define AX__TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define AX__TSAN 1
#endif
#endif
#ifdef AX__TSAN
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define AX__TSAN_RELEASE(p) __tsan_release(p)
#define AX__TSAN_ACQUIRE(p) __tsan_acquire(p)
#else
#define AX__TSAN_RELEASE(p) ((void)(p))
#define AX__TSAN_ACQUIRE(p) ((void)(p))
#endif

/* ---- ids ---------------------------------------------------------------- */

#define AX__WORKERS_MAX 256
#define AX__GEN_BITS 24
#define AX__GEN_MASK ((1u << AX__GEN_BITS) - 1)
#define AX__CHUNK_BITS 12
#define AX__CHUNK_SLOTS (1u << AX__CHUNK_BITS)
#define AX__CHUNKS 4096 /* 16 M actors per worker */

static inline ax_aid_t ax__aid(unsigned w, uint32_t gen, uint32_t slot) {
  return ((ax_aid_t)w << 56) | ((ax_aid_t)(gen & AX__GEN_MASK) << 32) | slot;
}
static inline unsigned ax__aid_worker(ax_aid_t a) { return (unsigned)(a >> 56); }
static inline uint32_t ax__aid_gen(ax_aid_t a) {
  return (uint32_t)(a >> 32) & AX__GEN_MASK;
}
static inline uint32_t ax__aid_slot(ax_aid_t a) { return (uint32_t)a; }

/* A slot: the actor (owner only), its generation and whether its mailbox is
 * full (read by other threads with ck_pr loads). gen 0: never used.
 *
 * Atomics in this layer: the ck_pr loads, stores and increments of slot
 * words (gen, full), of counters (worker stats, acceptor counts, the
 * placement cursor) and of flags (rt->stopping, stop_posted) are single
 * words read as hints: they order nothing, and a stale read costs at most
 * a message that becomes a dead letter, one that lands over a capacity, or
 * a placement off by one. Memory changes hands only through the loop
 * mailboxes (their push/take pair orders the message and everything
 * written before it, see mailbox.c), the slot chunks' publishing CAS
 * (actor.c) and the shared payloads' reference count (send.c). */
struct ax__slot {
  ax_actor_t *a;
  uint32_t gen;
  uint32_t full;
};

/* ---- messages ----------------------------------------------------------- */

enum ax__mkind {
  AX__MK_USER,     /* a user message (a request when m.ref != 0) */
  AX__MK_REPLY,    /* answer to a request of the receiver */
  AX__MK_TICK,     /* a timer of the receiver (x = timer id) */
  AX__MK_TIMEOUT,  /* a request of the receiver timed out */
  AX__MK_DOWN,     /* a monitored actor exited (payload ax_down_t) */
  AX__MK_LINKEXIT, /* a linked actor exited (payload ax_down_t) */
  AX__MK_KILL,     /* end the receiver now */
  AX__MK_MONITOR,  /* m.from starts monitoring the receiver */
  AX__MK_LINK,     /* m.from links to the receiver */
  AX__MK_UNLINK,   /* m.from unlinks */
  AX__MK_SPAWN,    /* create the receiver (payload struct ax__spawn) */
  AX__MK_OFFLOAD,  /* an offload job's result (moved payload) */
  AX__MK_STREAM,   /* a connection fd moved to the receiver */
  AX__MK_CONN,     /* an accepted fd: spawn a connection actor for it */
};

enum {
  AX__MF_EXT = 1u << 0,     /* m.data is external: e.free_fn frees it */
  AX__MF_SHARED = 1u << 1,  /* m.data is in a refcounted struct ax__shared */
  AX__MF_CONTROL = 1u << 2, /* never refused for capacity */
};

struct ax__shared {
  unsigned refs; /* ck_pr */
  uint32_t len;
  unsigned char data[];
};

struct ax__msg {
  ax_post_t post;   /* node.next: the local queue link; fn: remote arrival */
  struct ax__msg *bnext; /* the rest of a cross-worker batch (head only) */
  ax_aid_t to;
  ax_msg_t m;       /* the public part */
  uint8_t kind;
  uint8_t flags;
  uint16_t origin; /* 1 + the worker whose cache it belongs to; 0: none */
  uint32_t aux;
  union {
    unsigned char inl[AX_MSG_INLINE];
    struct {
      void (*free_fn)(void *);
      uint64_t x;
      void *p;
    } e;
  } u;
};

struct ax__spawn {
  const ax_behaviour_t *b;
  void *arg;
  uint32_t capacity;
  uint32_t flags; /* AX__AF_TRAP | AX__AF_CONN */
};
_Static_assert(sizeof(struct ax__spawn) <= AX_MSG_INLINE, "spawn fits inline");

/* ---- actors ------------------------------------------------------------- */

enum {
  AX__AF_QUEUED = 1u << 0,  /* in the run queue or running */
  AX__AF_INIT = 1u << 1,    /* init has not run yet */
  AX__AF_EXITING = 1u << 2, /* exit decided; done at the end of the turn */
  AX__AF_TRAP = 1u << 3,    /* linked exits arrive as messages */
  AX__AF_RUNNING = 1u << 4, /* inside one of its callbacks */
  AX__AF_CONN = 1u << 5,    /* a connection actor (counted per worker) */
  AX__AF_STATE = 1u << 6,   /* state allocated with the actor */
};

struct ax__timer_ent;
struct ax__req;

/* Rarely used parts of an actor, allocated on first use. */
struct ax__ext {
  ax_aid_t *watchers; /* monitors of self (one entry per ax_monitor) */
  uint32_t nwatch, capwatch;
  ax_aid_t *links;
  uint32_t nlinks, caplinks;
  struct ax__timer_ent *timers; /* list */
  struct ax__req *reqs;         /* pending requests, list */
  ax_group_t **groups;
  uint32_t ngroups, capgroups;
  ax_stream_t **streams; /* owned connection streams; [0] is "the" one */
  uint32_t nstreams, capstreams;
  uint64_t next_id;    /* timer ids and request refs */
};

struct ax_actor {
  ax_actor_t *rq_next;
  struct ax__msg *head, *tail;
  const ax_behaviour_t *beh;
  void *state;
  void *arg; /* the spawn argument, until init */
  struct ax__worker *w;
  ax_aid_t id;
  uint32_t queued, cap;
  uint32_t flags;
  int reason;
  struct ax__ext *ext;
};

/* ---- workers and the runtime ------------------------------------------ */

struct ax__worker {
  ax_rt_t *rt;
  unsigned idx;
  ax_loop_t *loop;
  pthread_t thr;
  bool started, stopping;
  ax_source_t *sched; /* defer: runs the run queue */
  ax_source_t *sig_int, *sig_term;
  ax_actor_t *rq_head, *rq_tail;
  bool in_sched;

  /* Slots. chunks[] entries are published with a CAS and never change
   * again; next_slot grows by fetch-and-add (remote spawners reserve fresh
   * slots too); freed slots are reused by the owner only. */
  struct ax__slot *chunks[AX__CHUNKS];
  uint32_t next_slot;
  uint32_t *free_slots;
  uint32_t nfree, capfree;

  /* Cross-worker messages sent from here, per destination worker, pushed
   * as one batch (one mailbox push) at the end of the scheduler's run or
   * of the current loop phase (owner only). */
  struct ax__outbox *out;
  uint32_t *dirty; /* destinations with a non-empty outbox */
  uint32_t ndirty;
  ax_source_t *flush; /* defer: flushes sends made outside the scheduler */

  /* Message nodes freed here, reused by sends from here (owner only). */
  struct ax__msg *mcache;
  unsigned mcache_n;
  struct ax__slab_hdr *slabs;
  /* Nodes of other workers freed here, going home in batches (a node
   * malloc'ed on one thread and freed on another costs both heaps dearly;
   * circulating them costs one mailbox push per AX__RET_BATCH). */
  struct ax__outbox *ret;

  ax_post_t stop_post;
  unsigned stop_posted; /* ck_pr */

  /* Acceptors' listeners living on this worker (owner only). */
  struct ax__lnode *listeners;

  /* Counters: written by the owner with ck_pr stores, read by anyone. */
  ax_worker_stats_t st;
};

struct ax__outbox {
  struct ax__msg *head, *tail;
  uint32_t n;     /* node returns: how many */
  bool listed;    /* outboxes: in the worker's dirty list */
};
#define AX__RET_BATCH 256

struct ax__pool; /* offload */

struct ax_rt {
  unsigned nworkers;
  ax_rt_options_t opts;
  uint32_t capacity;
  unsigned batch;
  unsigned rr;        /* placement cursor (ck_pr) */
  unsigned stopping;  /* ck_pr: ax_rt_stop() was called */
  bool closed;        /* workers joined: no more cross-worker posts */
  bool joined;
  pthread_mutex_t lock; /* offload pool creation, acceptor list */
  struct ax__pool *pool;
  struct ax_acceptor *acceptors;
  struct ax__worker *w[];
};

extern _Thread_local struct ax__worker *ax__tls_worker;

/* The calling thread's worker, if it is one of @rt's. */
static inline struct ax__worker *ax__here(const ax_rt_t *rt) {
  struct ax__worker *w = ax__tls_worker;
  return (w && w->rt == rt) ? w : NULL;
}

/* Stats helpers (owner thread writes; anyone reads). */
#define AX__STAT_ADD(w, field, n)                                              \
  ck_pr_store_64(&(w)->st.field, (w)->st.field + (uint64_t)(n))

/* ---- shared between files ------------------------------------------------ */

/* actor.c */
struct ax__slot *ax__slot_get(struct ax__worker *w, uint32_t idx);
ax_actor_t *ax__actor_lookup(struct ax__worker *w, ax_aid_t aid);
int ax__slot_reserve(struct ax__worker *w, uint32_t *idx, uint32_t *gen);
void ax__sched_push(struct ax__worker *w, ax_actor_t *a);
void ax__actor_exit_now(ax_actor_t *a); /* owner thread, not running */
void ax__actor_mark_exit(ax_actor_t *a, int reason);
void ax__worker_sched(ax_source_t *src, void *data);
ax_actor_t *ax__actor_create(struct ax__worker *w, uint32_t slot,
                             uint32_t gen, const struct ax__spawn *sp,
                             ax_aid_t link, ax_aid_t monitor_by);
ax_actor_t *ax__actor_alloc(struct ax__worker *w, uint32_t slot, uint32_t gen,
                            const struct ax__spawn *sp);
bool ax__actor_start(ax_actor_t *a);
struct ax__ext *ax__ext(ax_actor_t *a);
int ax__aid_push(ax_aid_t **v, uint32_t *n, uint32_t *cap, ax_aid_t id);
bool ax__aid_remove(ax_aid_t *v, uint32_t *n, ax_aid_t id);

/* send.c */
struct ax__msg *ax__msg_new(struct ax__worker *w);
void ax__msg_free(struct ax__worker *w, struct ax__msg *m);
void ax__slabs_free(struct ax__worker *w);
void ax__msg_dead(struct ax__worker *w, struct ax__msg *m);
int ax__post(ax_rt_t *rt, struct ax__worker *from, struct ax__msg *m);
void ax__flush(struct ax__worker *w);
void ax__flush_one(struct ax__worker *w, unsigned dst);
void ax__flush_cb(ax_source_t *src, void *data);
void ax__deliver(struct ax__worker *w, struct ax__msg *m);
int ax__send_ctl(ax_rt_t *rt, struct ax__worker *from, ax_aid_t to,
                 ax_aid_t src, int kind, const void *p, size_t len);
void ax__dispatch(ax_actor_t *a, struct ax__msg *m);
void ax__shared_unref(struct ax__shared *s);
void ax__enqueue(ax_actor_t *a, struct ax__msg *m);
int ax__send_request(ax_actor_t *self, ax_aid_t to, uint32_t tag,
                     const void *data, size_t len, uint64_t ref);

/* watch.c: monitors, links, timers, requests */
void ax__ext_exit(ax_actor_t *a); /* cancel timers/requests, notify */
bool ax__tick_live(ax_actor_t *a, struct ax__msg *m);
bool ax__reply_take(ax_actor_t *a, uint64_t ref);
void ax__monitor_add(ax_actor_t *a, ax_aid_t watcher);
void ax__link_add(ax_actor_t *a, ax_aid_t other);
void ax__link_remove(ax_actor_t *a, ax_aid_t other);
bool ax__link_has(ax_actor_t *a, ax_aid_t other);

/* group.c */
void ax__groups_leave_all(ax_actor_t *a);

/* offload.c */
void ax__pool_stop(ax_rt_t *rt); /* cancel queued jobs, join threads */

/* acceptor.c */
void ax__acceptors_close_worker(struct ax__worker *w);
void ax__acceptors_free(ax_rt_t *rt);
void ax__conn_arrive(struct ax__worker *w, struct ax__msg *m);
void ax__stream_arrive(struct ax__worker *w, ax_actor_t *a, struct ax__msg *m);
void ax__conn_exit(ax_actor_t *a);
void ax__conn_init_done(ax_actor_t *a, void *arg);

#endif
