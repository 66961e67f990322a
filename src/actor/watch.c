/*
 * Per-actor timers, requests with timeouts, monitors and links.
 *
 * All of it lives in the actor's ext block on its own worker: timers and
 * request deadlines are loop timers of that worker, whose callbacks queue a
 * message to the actor (never refused for capacity). Cancelling drops a
 * tick already queued: the tick carries the timer id, and a tick whose id
 * is no longer listed is dropped at dispatch.
 */
#include "actor/actor_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct ax__timer_ent {
  struct ax__timer_ent *next;
  ax_actor_t *a;
  ax_source_t *src;
  uint64_t id;
  uint32_t tag;
  bool every;
  bool pending; /* a tick of it waits in the mailbox */
};

struct ax__req {
  struct ax__req *next;
  ax_actor_t *a;
  ax_source_t *timer; /* NULL: no timeout */
  uint64_t ref;
};

/* A message from @a to itself, queued past the capacity check. */
static struct ax__msg *self_msg(ax_actor_t *a, int kind) {
  struct ax__msg *m = ax__msg_new(a->w);
  if (!m)
    return NULL;
  m->kind = (uint8_t)kind;
  m->flags = AX__MF_CONTROL;
  m->to = a->id;
  m->m.from = a->id;
  return m;
}

/* ---- timers --------------------------------------------------------------- */

static int64_t timer_fired(ax_source_t *src, void *data) {
  struct ax__timer_ent *t = data;
  (void)src;
  if (t->pending)
    return AX_TIMER_CONTINUE; /* the last tick is still unread */
  struct ax__msg *m = self_msg(t->a, AX__MK_TICK);
  if (!m)
    return t->every ? AX_TIMER_CONTINUE : 0; /* out of memory: retry */
  m->m.tag = t->tag;
  m->u.e.x = t->id;
  t->pending = true;
  ax__enqueue(t->a, m);
  return AX_TIMER_CONTINUE;
}

static int timer_add(ax_actor_t *self, uint64_t ms, uint32_t tag, bool every,
                     uint64_t *id) {
  if (!self || tag >= AX_TAG_SYSTEM || (every && ms == 0))
    return -EINVAL;
  struct ax__ext *x = ax__ext(self);
  struct ax__timer_ent *t = x ? calloc(1, sizeof *t) : NULL;
  if (!t)
    return -ENOMEM;
  int rc = ax_timer_new(self->w->loop, timer_fired, t, &t->src);
  if (rc == 0)
    rc = ax_timer_start(t->src, ms, every ? ms : 0);
  if (rc) {
    ax_source_free(t->src);
    free(t);
    return rc;
  }
  ax_source_unref(t->src); /* actors keep the worker alive, not timers */
  t->a = self;
  t->id = ++x->next_id;
  t->tag = tag;
  t->every = every;
  t->next = x->timers;
  x->timers = t;
  if (id)
    *id = t->id;
  return 0;
}

int ax_after(ax_actor_t *self, uint64_t ms, uint32_t tag, uint64_t *id) {
  return timer_add(self, ms, tag, false, id);
}

int ax_every(ax_actor_t *self, uint64_t ms, uint32_t tag, uint64_t *id) {
  return timer_add(self, ms, tag, true, id);
}

static struct ax__timer_ent **timer_find(ax_actor_t *a, uint64_t id) {
  if (!a->ext)
    return NULL;
  for (struct ax__timer_ent **p = &a->ext->timers; *p; p = &(*p)->next)
    if ((*p)->id == id)
      return p;
  return NULL;
}

static void timer_drop(struct ax__timer_ent **p) {
  struct ax__timer_ent *t = *p;
  *p = t->next;
  ax_source_free(t->src);
  free(t);
}

int ax_cancel_timer(ax_actor_t *self, uint64_t id) {
  struct ax__timer_ent **p = self ? timer_find(self, id) : NULL;
  if (!p)
    return -ENOENT;
  timer_drop(p);
  return 0;
}

bool ax__tick_live(ax_actor_t *a, struct ax__msg *m) {
  struct ax__timer_ent **p = timer_find(a, m->u.e.x);
  if (!p)
    return false;
  m->m.data = NULL;
  if ((*p)->every)
    (*p)->pending = false;
  else
    timer_drop(p); /* spent */
  return true;
}

/* ---- requests -------------------------------------------------------------- */

static struct ax__req **req_find(ax_actor_t *a, uint64_t ref) {
  if (!a->ext)
    return NULL;
  for (struct ax__req **p = &a->ext->reqs; *p; p = &(*p)->next)
    if ((*p)->ref == ref)
      return p;
  return NULL;
}

static void req_drop(struct ax__req **p) {
  struct ax__req *r = *p;
  *p = r->next;
  ax_source_free(r->timer);
  free(r);
}

static int64_t req_expired(ax_source_t *src, void *data) {
  struct ax__req *r = data;
  ax_actor_t *a = r->a;
  uint64_t ref = r->ref;
  (void)src;
  struct ax__msg *m = self_msg(a, AX__MK_TIMEOUT);
  if (!m)
    return 10; /* out of memory: try again shortly, never lose it */
  req_drop(req_find(a, ref));
  m->m.ref = ref;
  ax__enqueue(a, m);
  return AX_TIMER_CONTINUE;
}

int ax_request(ax_actor_t *self, ax_aid_t to, uint32_t tag, const void *data,
               size_t len, uint64_t timeout_ms, uint64_t *ref) {
  if (!self || !ref)
    return -EINVAL;
  struct ax__ext *x = ax__ext(self);
  struct ax__req *r = x ? calloc(1, sizeof *r) : NULL;
  if (!r)
    return -ENOMEM;
  r->a = self;
  r->ref = ++x->next_id;
  int rc = 0;
  if (timeout_ms) {
    rc = ax_timer_new(self->w->loop, req_expired, r, &r->timer);
    if (rc == 0)
      rc = ax_timer_start(r->timer, timeout_ms, 0);
    if (rc == 0)
      ax_source_unref(r->timer);
  }
  if (rc == 0)
    rc = ax__send_request(self, to, tag, data, len, r->ref);
  if (rc) {
    ax_source_free(r->timer);
    free(r);
    return rc;
  }
  r->next = x->reqs;
  x->reqs = r;
  *ref = r->ref;
  return 0;
}

bool ax__reply_take(ax_actor_t *a, uint64_t ref) {
  struct ax__req **p = req_find(a, ref);
  if (!p)
    return false;
  req_drop(p);
  return true;
}

/* ---- monitors and links ------------------------------------------------------ */

void ax__monitor_add(ax_actor_t *a, ax_aid_t watcher) {
  struct ax__ext *x = ax__ext(a);
  if (!x || ax__aid_push(&x->watchers, &x->nwatch, &x->capwatch, watcher)) {
    /* Out of memory: the watcher must not wait forever; tell it now. */
    ax_down_t d = {a->id, AX_EXIT_ERROR};
    (void)ax__send_ctl(a->w->rt, a->w, watcher, a->id, AX__MK_DOWN, &d,
                       sizeof d);
  }
}

int ax_monitor(ax_actor_t *self, ax_aid_t target) {
  if (!self || !target)
    return -EINVAL;
  int rc = ax__send_ctl(self->w->rt, self->w, target, self->id,
                        AX__MK_MONITOR, NULL, 0);
  return rc == -ESRCH ? 0 : rc; /* the DOWN (noproc) is on its way */
}

bool ax__link_has(ax_actor_t *a, ax_aid_t other) {
  if (!a->ext)
    return false;
  for (uint32_t i = 0; i < a->ext->nlinks; i++)
    if (a->ext->links[i] == other)
      return true;
  return false;
}

void ax__link_add(ax_actor_t *a, ax_aid_t other) {
  if (ax__link_has(a, other))
    return;
  struct ax__ext *x = ax__ext(a);
  if (!x || ax__aid_push(&x->links, &x->nlinks, &x->caplinks, other)) {
    /* Out of memory: the link cannot hold; break it from this side as if
     * this actor had failed, so neither side trusts a link that is not. */
    ax_down_t d = {a->id, AX_EXIT_ERROR};
    (void)ax__send_ctl(a->w->rt, a->w, other, a->id, AX__MK_LINKEXIT, &d,
                       sizeof d);
  }
}

void ax__link_remove(ax_actor_t *a, ax_aid_t other) {
  if (a->ext)
    (void)ax__aid_remove(a->ext->links, &a->ext->nlinks, other);
}

int ax_link(ax_actor_t *self, ax_aid_t other) {
  if (!self || !other || other == self->id)
    return -EINVAL;
  if (ax__link_has(self, other))
    return 0;
  struct ax__ext *x = ax__ext(self);
  if (!x || ax__aid_push(&x->links, &x->nlinks, &x->caplinks, other))
    return -ENOMEM;
  int rc = ax__send_ctl(self->w->rt, self->w, other, self->id, AX__MK_LINK,
                        NULL, 0);
  if (rc && rc != -ESRCH) { /* -ESRCH: the noproc exit is on its way */
    ax__link_remove(self, other);
    return rc;
  }
  return 0;
}

int ax_unlink(ax_actor_t *self, ax_aid_t other) {
  if (!self || !other)
    return -EINVAL;
  if (!ax__link_has(self, other))
    return -ENOENT;
  ax__link_remove(self, other);
  (void)ax__send_ctl(self->w->rt, self->w, other, self->id, AX__MK_UNLINK,
                     NULL, 0);
  return 0;
}

/* ---- exit ----------------------------------------------------------------- */

/* @a is ending: drop its timers and requests, tell its watchers and links. */
void ax__ext_exit(ax_actor_t *a) {
  struct ax__ext *x = a->ext;
  while (x->timers)
    timer_drop(&x->timers);
  while (x->reqs)
    req_drop(&x->reqs);
  ax_down_t d = {a->id, a->reason};
  ax_rt_t *rt = a->w->rt;
  for (uint32_t i = 0; i < x->nwatch; i++)
    (void)ax__send_ctl(rt, a->w, x->watchers[i], a->id, AX__MK_DOWN, &d,
                       sizeof d);
  /* Links are taken out first so an exit that comes back finds none. */
  uint32_t n = x->nlinks;
  x->nlinks = 0;
  for (uint32_t i = 0; i < n; i++)
    (void)ax__send_ctl(rt, a->w, x->links[i], a->id, AX__MK_LINKEXIT, &d,
                       sizeof d);
  x->nwatch = 0;
}
