/*
 * Messages: allocation, the send paths, arrival on the owner's thread and
 * dispatch to the receive callback.
 *
 * Same worker: a node from the worker's cache goes straight onto the
 * actor's queue (plain stores; the whole path is owned by one thread).
 * Other worker: the node is posted to the destination loop's mailbox (one
 * CAS; the loop drains it in batches and is woken only when it sleeps),
 * and lands on the actor's queue when the loop drains it. Per sender and
 * receiver there is one path, so their order holds.
 */
#include "actor/actor_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ck_pr.h>


/* ---- nodes ---------------------------------------------------------------- */

/*
 * Nodes of a worker come from its own slabs of SLAB_NODES and stay its own:
 * freed on another worker they travel home in batches (node_free), so no
 * node is malloc'ed on one thread and freed on another, and the heap never
 * grows and shrinks with the traffic. Slabs go with the runtime; a worker
 * holds as many nodes as it ever had in flight at once. Other threads
 * malloc their nodes (origin 0) and whoever frees them frees them.
 */
#define SLAB_NODES 256

struct ax__slab_hdr {
  struct ax__slab_hdr *next;
  _Alignas(16) unsigned char nodes[];
};

static bool slab_grow(struct ax__worker *w) {
  struct ax__slab_hdr *h =
      malloc(sizeof *h + SLAB_NODES * sizeof(struct ax__msg));
  if (!h)
    return false;
  h->next = w->slabs;
  w->slabs = h;
  struct ax__msg *v = (struct ax__msg *)h->nodes;
  for (unsigned i = 0; i < SLAB_NODES; i++) {
    v[i].origin = (uint16_t)(w->idx + 1);
    v[i].post.node.next = (ax_mbnode_t *)w->mcache;
    w->mcache = &v[i];
  }
  w->mcache_n += SLAB_NODES;
  return true;
}

void ax__slabs_free(struct ax__worker *w) {
  while (w->slabs) {
    struct ax__slab_hdr *h = w->slabs;
    w->slabs = h->next;
    free(h);
  }
  w->mcache = NULL;
  w->mcache_n = 0;
}

/* A node for a send made on @here's thread (NULL: not a worker). */
struct ax__msg *ax__msg_new(struct ax__worker *here) {
  struct ax__msg *m;
  if (here) {
    if (!here->mcache && !slab_grow(here))
      return NULL;
    m = here->mcache;
    here->mcache = (struct ax__msg *)m->post.node.next;
    here->mcache_n--;
  } else if ((m = malloc(sizeof *m)) != NULL) {
    m->origin = 0;
  } else {
    return NULL;
  }
  m->m.from = AX_AID_NONE;
  m->m.ref = 0;
  m->m.data = NULL;
  m->m.len = 0;
  m->m.tag = 0;
  m->kind = AX__MK_USER;
  m->flags = 0;
  return m;
}

void ax__shared_unref(struct ax__shared *s) {
  AX__TSAN_RELEASE(s);
  if (ck_pr_faa_uint(&s->refs, (unsigned)-1) == 1) {
    ck_pr_fence_load(); /* the other holders' reads come first */
    AX__TSAN_ACQUIRE(s);
    free(s);
  }
}

static void payload_free(struct ax__msg *m) {
  if ((m->flags & AX__MF_EXT) && m->u.e.free_fn)
    m->u.e.free_fn(m->m.data);
  else if (m->flags & AX__MF_SHARED)
    ax__shared_unref(m->u.e.p);
  m->flags &= ~(AX__MF_EXT | AX__MF_SHARED);
}

static void cache_put(struct ax__worker *w, struct ax__msg *m) {
  m->post.node.next = (ax_mbnode_t *)w->mcache;
  w->mcache = m;
  w->mcache_n++;
}

/* Nodes coming home (on their owner's thread). */
static void nodes_home(ax_post_t *p) {
  struct ax__msg *m = ax__container_of(p, struct ax__msg, post);
  struct ax__worker *w = ax__tls_worker;
  while (m) {
    struct ax__msg *next = m->bnext;
    cache_put(w, m);
    m = next;
  }
}

/* Give the node back, from the thread of worker @here (NULL: another
 * thread): to @here's cache if it is @here's, else towards its home. */
static void node_free(struct ax__worker *here, struct ax__msg *m) {
  unsigned home = m->origin;
  if (home == 0) {
    free(m);
    return;
  }
  if (!here || here->rt->closed)
    return; /* a slab node: the runtime frees its slabs */
  if (home == here->idx + 1) {
    cache_put(here, m);
    return;
  }
  struct ax__outbox *r = &here->ret[home - 1];
  m->bnext = r->head;
  r->head = m;
  if (++r->n < AX__RET_BATCH)
    return;
  struct ax__msg *head = r->head;
  r->head = NULL;
  r->n = 0;
  head->post.fn = nodes_home;
  /* Cannot fail while the runtime is open (control, and the loops live
   * until ax_rt_free closes it). */
  (void)ax_mailbox_push(here->rt->w[home - 1]->loop->mb, &head->post.node,
                        AX_MB_CONTROL);
}

void ax__msg_free(struct ax__worker *here, struct ax__msg *m) {
  payload_free(m);
  node_free(here, m);
}

/* Fill @m's payload with a copy of @data. */
static int payload_copy(struct ax__msg *m, const void *data, size_t len) {
  m->m.len = (uint32_t)len;
  if (len <= AX_MSG_INLINE) {
    m->m.data = m->u.inl;
    if (len)
      memcpy(m->u.inl, data, len);
    return 0;
  }
  void *p = malloc(len);
  if (!p)
    return -ENOMEM;
  memcpy(p, data, len);
  m->m.data = p;
  m->flags |= AX__MF_EXT;
  m->u.e.free_fn = free;
  return 0;
}

/* ---- dead letters ----------------------------------------------------------- */

/* What the death of the receiver answers to a control message from @m's
 * sender: a monitor gets DOWN, a link gets a link exit, both "noproc". */
static void ctl_noproc(ax_rt_t *rt, struct ax__worker *here,
                       const struct ax__msg *m) {
  ax_down_t d = {m->to, AX_EXIT_NOPROC};
  if (m->kind == AX__MK_MONITOR)
    (void)ax__send_ctl(rt, here, m->m.from, m->to, AX__MK_DOWN, &d, sizeof d);
  else if (m->kind == AX__MK_LINK)
    (void)ax__send_ctl(rt, here, m->m.from, m->to, AX__MK_LINKEXIT, &d,
                       sizeof d);
}

/* Resources a message carries besides its payload (a moved fd). */
static void carried_close(struct ax__msg *m) {
  if (m->kind == AX__MK_STREAM || m->kind == AX__MK_CONN) {
    int fd;
    memcpy(&fd, m->u.inl, sizeof fd);
    if (fd >= 0)
      close(fd);
  }
}

/* @m cannot be delivered (its actor is gone): on the owner's thread @w. */
void ax__msg_dead(struct ax__worker *w, struct ax__msg *m) {
  AX__STAT_ADD(w, dead_letters, 1);
  ctl_noproc(w->rt, w, m);
  carried_close(m);
  ax__msg_free(w, m);
}

/* ---- paths -------------------------------------------------------------- */

/* A batch from another worker (or a lone message from any other thread)
 * arrives: deliver its messages in the order they were sent. */
static void remote_arrive(ax_post_t *p) {
  struct ax__msg *m = ax__container_of(p, struct ax__msg, post);
  struct ax__worker *w = ax__tls_worker;
  uint64_t n = 0;
  while (m) {
    struct ax__msg *next = m->bnext;
    n++;
    ax__deliver(w, m);
    m = next;
  }
  AX__STAT_ADD(w, remote_in, n);
}

/* Push the batch @head..: one mailbox push, as control (its messages were
 * accepted when sent; a batch is never refused). On failure (the runtime is
 * being freed) they are dropped. */
static void batch_push(ax_rt_t *rt, struct ax__worker *here, unsigned dst,
                       struct ax__msg *head) {
  head->post.fn = remote_arrive;
  if (!rt->closed &&
      ax_mailbox_push(rt->w[dst]->loop->mb, &head->post.node, AX_MB_CONTROL) == 0)
    return;
  while (head) {
    struct ax__msg *next = head->bnext;
    carried_close(head);
    ax__msg_free(here, head);
    head = next;
  }
}

void ax__flush_one(struct ax__worker *w, unsigned dst) {
  struct ax__outbox *o = &w->out[dst];
  struct ax__msg *head = o->head;
  if (!head)
    return;
  o->head = o->tail = NULL;
  batch_push(w->rt, w, dst, head);
}

void ax__flush(struct ax__worker *w) {
  for (uint32_t i = 0; i < w->ndirty; i++) {
    w->out[w->dirty[i]].listed = false;
    ax__flush_one(w, w->dirty[i]);
  }
  w->ndirty = 0;
}

void ax__flush_cb(ax_source_t *src, void *data) {
  (void)src;
  ax__flush(data);
}

/*
 * Send @m to its destination worker. From a worker thread it joins that
 * worker's outbox for the destination (flushed as one batch when the
 * scheduler's run or the current loop phase ends: one push, one wake at
 * most, per destination); from any other thread it is pushed alone.
 * Control messages are never refused; user messages from other threads may
 * be (-EAGAIN: the destination loop's mailbox is full). On error nothing
 * was queued and @m is still the caller's.
 */
int ax__post(ax_rt_t *rt, struct ax__worker *here, struct ax__msg *m) {
  if (rt->closed)
    return -ESHUTDOWN;
  unsigned dst = ax__aid_worker(m->to);
  m->bnext = NULL;
  if (here) {
    struct ax__outbox *o = &here->out[dst];
    if (o->tail) {
      o->tail->bnext = m;
    } else {
      o->head = m;
      if (!o->listed) { /* a flush_one() may have emptied it, still listed */
        o->listed = true;
        here->dirty[here->ndirty++] = dst;
      }
      if (!here->in_sched)
        ax_defer_start(here->flush);
    }
    o->tail = m;
    return 0;
  }
  struct ax__worker *w = rt->w[dst];
  m->post.fn = remote_arrive;
  if (m->flags & AX__MF_CONTROL)
    return ax_mailbox_push(w->loop->mb, &m->post.node, AX_MB_CONTROL);
  return ax_loop_post_node(w->loop, &m->post);
}

void ax__enqueue(ax_actor_t *a, struct ax__msg *m) {
  m->post.node.next = NULL;
  if (a->tail)
    a->tail->post.node.next = &m->post.node;
  else
    a->head = m;
  a->tail = m;
  AX__STAT_ADD(a->w, queued, 1);
  if (++a->queued == a->cap) /* full: tell remote senders */
    ck_pr_store_32(&ax__slot_get(a->w, ax__aid_slot(a->id))->full, 1);
  if (!(a->flags & AX__AF_QUEUED))
    ax__sched_push(a->w, a);
}

/* Arrival on the owner's thread: control acts at once, the rest queues. */
void ax__deliver(struct ax__worker *w, struct ax__msg *m) {
  if (m->kind == AX__MK_SPAWN) {
    struct ax__spawn sp;
    ax_aid_t id = m->to;
    ax_aid_t link = (ax_aid_t)m->m.ref, monitor_by = m->m.from;
    memcpy(&sp, m->u.inl, sizeof sp);
    ax__msg_free(w, m);
    (void)ax__actor_create(w, ax__aid_slot(id), ax__aid_gen(id), &sp, link,
                           monitor_by);
    return;
  }
  if (m->kind == AX__MK_CONN) {
    ax__conn_arrive(w, m);
    return;
  }
  ax_actor_t *a = ax__actor_lookup(w, m->to);
  if (!a) {
    ax__msg_dead(w, m);
    return;
  }
  ax_down_t d;
  switch (m->kind) {
  case AX__MK_KILL:
    ax__actor_mark_exit(a, AX_EXIT_KILLED);
    break;
  case AX__MK_MONITOR:
    ax__monitor_add(a, m->m.from);
    break;
  case AX__MK_LINK:
    ax__link_add(a, m->m.from);
    break;
  case AX__MK_UNLINK:
    ax__link_remove(a, m->m.from);
    break;
  case AX__MK_LINKEXIT:
    memcpy(&d, m->u.inl, sizeof d);
    if (!ax__link_has(a, m->m.from))
      break; /* unlinked meanwhile */
    ax__link_remove(a, m->m.from);
    if (a->flags & AX__AF_TRAP) {
      m->m.tag = AX_TAG_EXIT;
      m->m.data = m->u.inl;
      m->m.len = sizeof d;
      ax__enqueue(a, m);
      return;
    }
    if (d.reason != AX_EXIT_NORMAL)
      ax__actor_mark_exit(a, AX_EXIT_KILLED);
    break;
  default:
    ax__enqueue(a, m);
    return;
  }
  ax__msg_free(w, m);
}

/* Send a control message of @kind from @src to @to (any thread). -ESRCH
 * when @to is known to be gone (its answer, if any, is sent). */
int ax__send_ctl(ax_rt_t *rt, struct ax__worker *here, ax_aid_t to,
                 ax_aid_t src, int kind, const void *p, size_t len) {
  unsigned wi = ax__aid_worker(to);
  if (wi >= rt->nworkers || !to)
    return -ESRCH;
  struct ax__worker *w = rt->w[wi];
  struct ax__msg *m = ax__msg_new(here);
  if (!m)
    return -ENOMEM;
  m->kind = (uint8_t)kind;
  m->flags = AX__MF_CONTROL;
  m->to = to;
  m->m.from = src;
  (void)payload_copy(m, p, len); /* len ≤ AX_MSG_INLINE: cannot fail */
  if (w == here) {
    bool alive = ax__actor_lookup(w, to) != NULL;
    ax__deliver(w, m);
    return alive ? 0 : -ESRCH;
  }
  struct ax__slot *s = ax__slot_get(w, ax__aid_slot(to));
  if (!s || ck_pr_load_32(&s->gen) != ax__aid_gen(to)) {
    ctl_noproc(rt, here, m);
    ax__msg_free(here, m);
    return -ESRCH;
  }
  int rc = ax__post(rt, here, m);
  if (rc)
    ax__msg_free(here, m);
  return rc;
}

/*
 * The user send path. @move: @data is handed over with @free_fn, else it
 * is copied. On error nothing is queued and a moved @data stays the
 * caller's.
 */
static int send_user(ax_rt_t *rt, struct ax__worker *here, ax_aid_t from,
                     ax_aid_t to, int kind, uint32_t tag, uint64_t ref,
                     void *data, size_t len, bool move,
                     void (*free_fn)(void *)) {
  if ((tag >= AX_TAG_SYSTEM && kind == AX__MK_USER) || (!data && len) ||
      len > UINT32_MAX)
    return -EINVAL;
  unsigned wi = ax__aid_worker(to);
  if (wi >= rt->nworkers || !to)
    return -ESRCH;
  struct ax__worker *w = rt->w[wi];
  ax_actor_t *a = NULL;
  if (w == here) {
    if (!(a = ax__actor_lookup(w, to)) || (a->flags & AX__AF_EXITING))
      return -ESRCH;
    if (a->queued >= a->cap) {
      ck_pr_inc_64(&w->st.refused);
      return -EAGAIN;
    }
  } else {
    struct ax__slot *s = ax__slot_get(w, ax__aid_slot(to));
    if (!s || ck_pr_load_32(&s->gen) != ax__aid_gen(to))
      return -ESRCH;
    if (ck_pr_load_32(&s->full)) {
      ck_pr_inc_64(&w->st.refused);
      return -EAGAIN;
    }
  }
  struct ax__msg *m = ax__msg_new(here);
  if (!m)
    return -ENOMEM;
  m->kind = (uint8_t)kind;
  m->to = to;
  m->m.from = from;
  m->m.tag = tag;
  m->m.ref = ref;
  if (move) {
    m->m.data = data;
    m->m.len = (uint32_t)len;
    m->flags = AX__MF_EXT;
    m->u.e.free_fn = free_fn;
  } else if (payload_copy(m, data, len)) {
    node_free(here, m);
    return -ENOMEM;
  }
  if (a) {
    ax__enqueue(a, m);
    return 0;
  }
  int rc = ax__post(rt, here, m);
  if (rc) {
    if (move)
      m->flags &= ~AX__MF_EXT; /* the caller keeps it */
    ax__msg_free(here, m);
    if (rc == -EAGAIN)
      ck_pr_inc_64(&w->st.refused);
  }
  return rc;
}

int ax_send(ax_actor_t *self, ax_aid_t to, uint32_t tag, const void *data,
            size_t len) {
  if (!self)
    return -EINVAL;
  return send_user(self->w->rt, self->w, self->id, to, AX__MK_USER, tag, 0,
                   (void *)data, len, false, NULL);
}

int ax_send_move(ax_actor_t *self, ax_aid_t to, uint32_t tag, void *data,
                 size_t len, void (*free_fn)(void *)) {
  if (!self)
    return -EINVAL;
  return send_user(self->w->rt, self->w, self->id, to, AX__MK_USER, tag, 0,
                   data, len, true, free_fn);
}

int ax_rt_send(ax_rt_t *rt, ax_aid_t to, uint32_t tag, const void *data,
               size_t len) {
  if (!rt)
    return -EINVAL;
  if (ck_pr_load_uint(&rt->stopping))
    return -ESHUTDOWN;
  return send_user(rt, ax__here(rt), AX_AID_NONE, to, AX__MK_USER, tag, 0,
                   (void *)data, len, false, NULL);
}

int ax__send_request(ax_actor_t *self, ax_aid_t to, uint32_t tag,
                     const void *data, size_t len, uint64_t ref) {
  return send_user(self->w->rt, self->w, self->id, to, AX__MK_USER, tag, ref,
                   (void *)data, len, false, NULL);
}

int ax_reply(ax_actor_t *self, const ax_msg_t *req, uint32_t tag,
             const void *data, size_t len) {
  if (!self || !req || !req->ref || !req->from)
    return -EINVAL;
  if (tag >= AX_TAG_SYSTEM)
    return -EINVAL;
  return send_user(self->w->rt, self->w, self->id, req->from, AX__MK_REPLY,
                   tag, req->ref, (void *)data, len, false, NULL);
}

int ax_kill(ax_rt_t *rt, ax_aid_t aid) {
  if (!rt)
    return -EINVAL;
  struct ax__worker *here = ax__here(rt);
  ax_aid_t from = AX_AID_NONE;
  return ax__send_ctl(rt, here, aid, from, AX__MK_KILL, NULL, 0);
}

/* ---- dispatch -------------------------------------------------------------- */

void *ax_msg_take(ax_msg_t *pm) {
  struct ax__msg *m = ax__container_of(pm, struct ax__msg, m);
  if (!pm->data || (!pm->len && !(m->flags & AX__MF_EXT)))
    return NULL;
  if (m->flags & AX__MF_EXT) {
    m->flags &= ~AX__MF_EXT;
    return pm->data;
  }
  void *p = malloc(pm->len);
  if (!p)
    return NULL;
  memcpy(p, pm->data, pm->len);
  return p;
}

/* Run @m through @a's receive (or the runtime's part of it), then free it. */
void ax__dispatch(ax_actor_t *a, struct ax__msg *m) {
  struct ax__worker *w = a->w;
  switch (m->kind) {
  case AX__MK_USER:
  case AX__MK_OFFLOAD:
    break;
  case AX__MK_REPLY:
    if (!ax__reply_take(a, m->m.ref))
      goto drop; /* late: its timeout came first */
    break;
  case AX__MK_TICK:
    if (!ax__tick_live(a, m))
      goto drop; /* cancelled */
    break;
  case AX__MK_TIMEOUT:
    m->m.tag = AX_TAG_TIMEOUT;
    break;
  case AX__MK_DOWN:
    m->m.tag = AX_TAG_DOWN;
    break;
  case AX__MK_LINKEXIT:
    break; /* AX_TAG_EXIT, set on arrival */
  case AX__MK_STREAM:
    ax__stream_arrive(w, a, m);
    return;
  default:
    goto drop;
  }
  a->beh->receive(a, a->state, &m->m);
drop:
  ax__msg_free(w, m);
}
