/*
 * Actors: the slot table (ids with generations), spawning, the per-worker
 * run queue and scheduler, and exits.
 *
 * A worker runs its ready actors round-robin from a deferred call on its
 * loop: each actor gets at most rt->batch messages per turn, and the whole
 * run hands the thread back to the loop after SCHED_TURNS turns or
 * SCHED_MSGS messages (re-arming the deferred call), so I/O, timers and
 * cross-worker mail get their share however busy the actors are.
 */
#include "actor/actor_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <ck_pr.h>

#define SCHED_TURNS 64
#define SCHED_MSGS 4096

_Thread_local struct ax__worker *ax__tls_worker;

/* ---- slots ---------------------------------------------------------------- */

struct ax__slot *ax__slot_get(struct ax__worker *w, uint32_t idx) {
  uint32_t c = idx >> AX__CHUNK_BITS;
  if (c >= AX__CHUNKS)
    return NULL;
  struct ax__slot *chunk = ck_pr_load_ptr(&w->chunks[c]);
  if (!chunk)
    return NULL;
  AX__TSAN_ACQUIRE(chunk); /* pairs with the release in slot_make() */
  return &chunk[idx & (AX__CHUNK_SLOTS - 1)];
}

/* Make sure the chunk holding @idx exists (any thread). A loser of the
 * publishing race frees its copy. */
static struct ax__slot *slot_make(struct ax__worker *w, uint32_t idx) {
  uint32_t c = idx >> AX__CHUNK_BITS;
  if (c >= AX__CHUNKS)
    return NULL;
  struct ax__slot *chunk = ck_pr_load_ptr(&w->chunks[c]);
  if (!chunk) {
    struct ax__slot *fresh = calloc(AX__CHUNK_SLOTS, sizeof *fresh);
    if (!fresh)
      return NULL;
    /* The zeroed chunk must be visible before its pointer. */
    ck_pr_fence_store();
    AX__TSAN_RELEASE(fresh); /* ck's CAS is invisible to TSan */
    if (ck_pr_cas_ptr_value(&w->chunks[c], NULL, fresh, &chunk)) {
      chunk = fresh;
    } else {
      free(fresh);
    }
  }
  AX__TSAN_ACQUIRE(chunk);
  return &chunk[idx & (AX__CHUNK_SLOTS - 1)];
}

static uint32_t gen_next(uint32_t g) {
  g = (g + 1) & AX__GEN_MASK;
  return g ? g : 1;
}

/*
 * Reserve a slot of @w for a new actor. On @w's own thread a freed slot is
 * reused (its generation moved on at the exit); otherwise, and when none is
 * free, a fresh one is taken by fetch-and-add, so remote spawners never
 * touch the free list. A fresh slot's generation is written here, before
 * the id can reach anyone, so senders see it as alive.
 */
int ax__slot_reserve(struct ax__worker *w, uint32_t *idx, uint32_t *gen) {
  if (ax__tls_worker == w && w->nfree > 0) {
    *idx = w->free_slots[--w->nfree];
    *gen = ax__slot_get(w, *idx)->gen;
    return 0;
  }
  uint32_t i = ck_pr_faa_32(&w->next_slot, 1);
  struct ax__slot *s = slot_make(w, i);
  if (!s)
    return -ENOMEM; /* the index is lost: 16 M per worker is the limit */
  ck_pr_store_32(&s->gen, 1);
  *idx = i;
  *gen = 1;
  return 0;
}

ax_actor_t *ax__actor_lookup(struct ax__worker *w, ax_aid_t aid) {
  struct ax__slot *s = ax__slot_get(w, ax__aid_slot(aid));
  if (!s || !s->a || s->gen != ax__aid_gen(aid))
    return NULL;
  return s->a;
}

/* ---- small id vectors ------------------------------------------------------ */

int ax__aid_push(ax_aid_t **v, uint32_t *n, uint32_t *cap, ax_aid_t id) {
  if (*n == *cap) {
    uint32_t nc = *cap ? *cap * 2 : 4;
    ax_aid_t *nv = realloc(*v, nc * sizeof *nv);
    if (!nv)
      return -ENOMEM;
    *v = nv;
    *cap = nc;
  }
  (*v)[(*n)++] = id;
  return 0;
}

bool ax__aid_remove(ax_aid_t *v, uint32_t *n, ax_aid_t id) {
  for (uint32_t i = 0; i < *n; i++) {
    if (v[i] == id) {
      v[i] = v[--*n];
      return true;
    }
  }
  return false;
}

struct ax__ext *ax__ext(ax_actor_t *a) {
  if (!a->ext)
    a->ext = calloc(1, sizeof *a->ext);
  return a->ext;
}

/* ---- spawn -------------------------------------------------------------- */

/* Make the actor of a reserved slot on its owner's thread (not started). */
ax_actor_t *ax__actor_alloc(struct ax__worker *w, uint32_t slot, uint32_t gen,
                            const struct ax__spawn *sp) {
  size_t ss = sp->b->state_size;
  ax_actor_t *a = malloc(sizeof *a + ss);
  if (!a)
    return NULL;
  memset(a, 0, sizeof *a);
  a->beh = sp->b;
  a->w = w;
  a->id = ax__aid(w->idx, gen, slot);
  a->cap = sp->capacity ? sp->capacity : w->rt->capacity;
  a->flags = AX__AF_INIT | (sp->flags & (AX__AF_TRAP | AX__AF_CONN));
  if (ss) {
    a->flags |= AX__AF_STATE;
    a->state = a + 1;
    memset(a->state, 0, ss);
  } else if (a->flags & AX__AF_CONN) {
    a->state = ((ax_conn_t *)sp->arg)->arg;
  } else {
    a->state = sp->arg;
  }
  a->arg = sp->arg;
  ax__slot_get(w, slot)->a = a;
  AX__STAT_ADD(w, actors, 1);
  AX__STAT_ADD(w, spawned, 1);
  if (a->flags & AX__AF_CONN)
    AX__STAT_ADD(w, connections, 1);
  return a;
}

/* Let it run; on a stopping worker it ends at once (terminate included).
 * Returns false then. */
bool ax__actor_start(ax_actor_t *a) {
  if (a->w->stopping) {
    a->reason = AX_EXIT_SHUTDOWN;
    ax__actor_exit_now(a);
    return false;
  }
  ax__sched_push(a->w, a);
  return true;
}

/* A birth link and monitor (or AX_AID_NONE) go in before the actor can run,
 * so even an init that fails at once is seen by them. The other side of the
 * link is told from here, as ax_link() does: any exit of the new actor
 * leaves this thread after it, so it cannot overtake it. */
static void actor_birth(ax_actor_t *a, ax_aid_t link, ax_aid_t monitor_by) {
  if (link) {
    ax__link_add(a, link);
    (void)ax__send_ctl(a->w->rt, a->w, link, a->id, AX__MK_LINK, NULL, 0);
  }
  if (monitor_by)
    ax__monitor_add(a, monitor_by);
}

ax_actor_t *ax__actor_create(struct ax__worker *w, uint32_t slot, uint32_t gen,
                             const struct ax__spawn *sp, ax_aid_t link,
                             ax_aid_t monitor_by) {
  ax_actor_t *a = ax__actor_alloc(w, slot, gen, sp);
  if (!a)
    return NULL;
  actor_birth(a, link, monitor_by);
  return ax__actor_start(a) ? a : NULL;
}

void ax_spawn_options_init(ax_spawn_options_t *o) {
  memset(o, 0, sizeof *o);
  o->worker = AX_WORKER_SELF;
}

static int pick_worker(ax_rt_t *rt, struct ax__worker *here, int sel) {
  if (sel >= 0)
    return sel < (int)rt->nworkers ? sel : -1;
  if (sel == AX_WORKER_SELF && here)
    return (int)here->idx;
  if (sel != AX_WORKER_SELF && sel != AX_WORKER_ANY)
    return -1;
  return (int)(ck_pr_faa_uint(&rt->rr, 1) % rt->nworkers);
}

int ax_spawn(ax_rt_t *rt, const ax_behaviour_t *b, void *arg,
             const ax_spawn_options_t *opts, ax_aid_t *out) {
  ax_spawn_options_t def;
  if (!opts) {
    ax_spawn_options_init(&def);
    opts = &def;
  }
  if (!rt || !b || !b->receive || !out)
    return -EINVAL;
  if (ck_pr_load_uint(&rt->stopping))
    return -ESHUTDOWN;
  struct ax__worker *here = ax__here(rt);
  int wi = pick_worker(rt, here, opts->worker);
  if (wi < 0)
    return -EINVAL;
  struct ax__worker *w = rt->w[wi];
  struct ax__spawn sp = {b, arg, opts->capacity,
                         opts->trap_exit ? AX__AF_TRAP : 0};
  uint32_t slot, gen;
  int rc = ax__slot_reserve(w, &slot, &gen);
  if (rc)
    return rc;
  ax_aid_t id = ax__aid(w->idx, gen, slot);
  if (w == here) {
    ax_actor_t *a = ax__actor_alloc(w, slot, gen, &sp);
    if (!a)
      return -ENOMEM; /* the slot is retired (rare: a lost index) */
    actor_birth(a, opts->link, opts->monitor_by);
    (void)ax__actor_start(a);
  } else {
    struct ax__msg *m = ax__msg_new(here);
    if (!m)
      return -ENOMEM; /* the fresh slot stays unused */
    m->kind = AX__MK_SPAWN;
    m->flags = AX__MF_CONTROL;
    m->to = id;
    m->m.from = opts->monitor_by; /* installed at birth, see deliver */
    m->m.ref = opts->link;
    memcpy(m->u.inl, &sp, sizeof sp);
    /* Pushed now, not batched: the id may travel (in a message through
     * another worker) and come back to the new actor's worker before our
     * batch would; the spawn must be there first. What we sent there
     * before goes ahead of it (pair order). */
    if (here)
      ax__flush_one(here, (unsigned)wi);
    rc = ax__post(rt, NULL, m);
    if (rc) {
      ax__msg_free(here, m);
      return rc;
    }
  }
  *out = id;
  return 0;
}

/* ---- accessors ------------------------------------------------------------ */

ax_aid_t ax_self(const ax_actor_t *self) { return self->id; }
ax_rt_t *ax_actor_rt(const ax_actor_t *self) { return self->w->rt; }
unsigned ax_actor_worker(const ax_actor_t *self) { return self->w->idx; }
ax_loop_t *ax_actor_loop(const ax_actor_t *self) { return self->w->loop; }
void *ax_actor_state(const ax_actor_t *self) { return self->state; }

void ax_trap_exit(ax_actor_t *self, bool on) {
  if (on)
    self->flags |= AX__AF_TRAP;
  else
    self->flags &= ~AX__AF_TRAP;
}

/* ---- run queue ------------------------------------------------------------ */

/* Put @a at the back of the run queue (its QUEUED flag is the caller's). */
static void rq_append(struct ax__worker *w, ax_actor_t *a) {
  a->rq_next = NULL;
  if (w->rq_tail)
    w->rq_tail->rq_next = a;
  else
    w->rq_head = a;
  w->rq_tail = a;
}

void ax__sched_push(struct ax__worker *w, ax_actor_t *a) {
  /* A stopping worker runs nothing: its actors are being ended one by one
   * and must not be left in a queue that outlives them. */
  if ((a->flags & AX__AF_QUEUED) || w->stopping)
    return;
  a->flags |= AX__AF_QUEUED;
  rq_append(w, a);
  if (!w->in_sched)
    ax_defer_start(w->sched);
}

static ax_actor_t *rq_pop(struct ax__worker *w) {
  ax_actor_t *a = w->rq_head;
  if (a) {
    w->rq_head = a->rq_next;
    if (!w->rq_head)
      w->rq_tail = NULL;
  }
  return a;
}

void ax__actor_mark_exit(ax_actor_t *a, int reason) {
  if (a->flags & AX__AF_EXITING)
    return;
  a->flags |= AX__AF_EXITING;
  a->reason = reason;
  ax__sched_push(a->w, a);
}

void ax_exit(ax_actor_t *self, int reason) {
  if (self)
    ax__actor_mark_exit(self, reason < 0 ? AX_EXIT_ERROR : reason);
}

static void run_init(ax_actor_t *a) {
  a->flags &= ~AX__AF_INIT;
  void *arg = a->arg;
  a->arg = NULL;
  if (a->beh->init && a->beh->init(a, a->state, arg) < 0)
    ax__actor_mark_exit(a, AX_EXIT_ERROR);
  if (a->flags & AX__AF_CONN)
    ax__conn_init_done(a, arg);
}

/* One turn: init if due, then up to batch messages. Returns the number of
 * messages run. */
static unsigned run_turn(struct ax__worker *w, ax_actor_t *a) {
  unsigned n = 0, batch = w->rt->batch;
  a->flags |= AX__AF_RUNNING;
  if (a->flags & AX__AF_INIT)
    run_init(a);
  while (n < batch && a->head && !(a->flags & AX__AF_EXITING)) {
    struct ax__msg *m = a->head;
    a->head = (struct ax__msg *)m->post.node.next;
    if (!a->head)
      a->tail = NULL;
    if (a->queued-- == a->cap) /* was full: open it to remote senders */
      ck_pr_store_32(&ax__slot_get(w, ax__aid_slot(a->id))->full, 0);
    n++;
    ax__dispatch(a, m);
  }
  a->flags &= ~AX__AF_RUNNING;
  AX__STAT_ADD(w, queued, -(uint64_t)n);
  return n;
}

void ax__worker_sched(ax_source_t *src, void *data) {
  struct ax__worker *w = data;
  (void)src;
  unsigned turns = 0, msgs = 0;
  w->in_sched = true;
  ax_actor_t *a;
  while (turns < SCHED_TURNS && msgs < SCHED_MSGS && (a = rq_pop(w))) {
    msgs += run_turn(w, a);
    turns++;
    if (a->flags & AX__AF_EXITING)
      ax__actor_exit_now(a);
    else if (a->head)
      rq_append(w, a); /* still QUEUED: back of the line */
    else
      a->flags &= ~AX__AF_QUEUED;
  }
  ax__flush(w); /* one push per destination worker for the whole run */
  w->in_sched = false;
  AX__STAT_ADD(w, turns, turns);
  AX__STAT_ADD(w, messages, msgs);
  if (w->rq_head)
    ax_defer_start(w->sched);
}

/* ---- exit ----------------------------------------------------------------- */

static void slot_free(struct ax__worker *w, ax_actor_t *a) {
  uint32_t idx = ax__aid_slot(a->id);
  struct ax__slot *s = ax__slot_get(w, idx);
  s->a = NULL;
  ck_pr_store_32(&s->full, 0);
  /* The next tenant's generation; stale ids stop matching from here. */
  ck_pr_store_32(&s->gen, gen_next(s->gen));
  if (w->nfree == w->capfree) {
    uint32_t nc = w->capfree ? w->capfree * 2 : 1024;
    uint32_t *nv = realloc(w->free_slots, nc * sizeof *nv);
    if (!nv)
      return; /* the slot is retired: a lost index, not a leak of memory */
    w->free_slots = nv;
    w->capfree = nc;
  }
  w->free_slots[w->nfree++] = idx;
}

/*
 * End @a now (its owner's thread; not inside its own callbacks): terminate
 * once, then timers, requests, monitors, links, groups and the connection,
 * then the queued messages, then the slot and the memory.
 */
void ax__actor_exit_now(ax_actor_t *a) {
  struct ax__worker *w = a->w;
  a->flags |= AX__AF_EXITING | AX__AF_RUNNING;
  /* Every actor's init runs once, even one that ends before its first
   * turn (a kill, a stopping worker): it is where the spawn argument is
   * taken over, so skipping it could leak what the argument holds. */
  if (a->flags & AX__AF_INIT)
    run_init(a);
  if (a->beh->terminate)
    a->beh->terminate(a, a->state, a->reason);
  if (a->ext) {
    ax__ext_exit(a);
    ax__groups_leave_all(a);
    ax__conn_exit(a);
    free(a->ext->watchers);
    free(a->ext->links);
    free(a->ext->groups);
    free(a->ext);
    a->ext = NULL;
  }
  if (a->flags & AX__AF_CONN)
    AX__STAT_ADD(w, connections, (uint64_t)-1);
  uint64_t dropped = 0;
  struct ax__msg *m;
  while ((m = a->head)) {
    a->head = (struct ax__msg *)m->post.node.next;
    dropped++;
    ax__msg_dead(w, m);
  }
  AX__STAT_ADD(w, queued, -dropped);
  slot_free(w, a);
  AX__STAT_ADD(w, actors, (uint64_t)-1);
  free(a);
}
