/*
 * Broadcast groups. Membership changes are rare and take a mutex; a
 * broadcast copies the member list under it, makes one shared copy of the
 * payload (reference-counted, read-only) and sends it with one mailbox push
 * per worker, whose loop then queues it to each of its members: N members
 * on W workers cost W cross-thread pushes, not N.
 *
 * A group is reference-counted by its members, so ax_group_free() may run
 * while actors still belong to it: the memory goes with the last of them.
 */
#include "actor/actor_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <ck_pr.h>

struct ax_group {
  ax_rt_t *rt;
  pthread_mutex_t lock;
  ax_aid_t *members;
  uint32_t n, cap;
  unsigned refs; /* the user's and one per member; under lock */
};

/* One worker's share of a broadcast. */
struct gpost {
  ax_post_t post;
  struct ax__shared *sh;
  ax_aid_t from;
  uint32_t tag;
  uint32_t n;
  ax_aid_t to[];
};

int ax_group_new(ax_rt_t *rt, ax_group_t **out) {
  if (!rt || !out)
    return -EINVAL;
  ax_group_t *g = calloc(1, sizeof *g);
  if (!g)
    return -ENOMEM;
  g->rt = rt;
  g->refs = 1;
  pthread_mutex_init(&g->lock, NULL);
  *out = g;
  return 0;
}

static void group_unref_locked(ax_group_t *g) {
  if (--g->refs == 0) {
    pthread_mutex_unlock(&g->lock);
    pthread_mutex_destroy(&g->lock);
    free(g->members);
    free(g);
    return;
  }
  pthread_mutex_unlock(&g->lock);
}

void ax_group_free(ax_group_t *g) {
  if (!g)
    return;
  pthread_mutex_lock(&g->lock);
  group_unref_locked(g);
}

unsigned ax_group_size(const ax_group_t *g) {
  ax_group_t *mg = (ax_group_t *)g;
  pthread_mutex_lock(&mg->lock);
  unsigned n = mg->n;
  pthread_mutex_unlock(&mg->lock);
  return n;
}

int ax_group_join(ax_group_t *g, ax_actor_t *self) {
  if (!g || !self)
    return -EINVAL;
  struct ax__ext *x = ax__ext(self);
  if (!x)
    return -ENOMEM;
  for (uint32_t i = 0; i < x->ngroups; i++)
    if (x->groups[i] == g)
      return -EEXIST;
  if (x->ngroups == x->capgroups) {
    uint32_t nc = x->capgroups ? x->capgroups * 2 : 2;
    ax_group_t **nv = realloc(x->groups, nc * sizeof *nv);
    if (!nv)
      return -ENOMEM;
    x->groups = nv;
    x->capgroups = nc;
  }
  pthread_mutex_lock(&g->lock);
  int rc = ax__aid_push(&g->members, &g->n, &g->cap, self->id);
  if (rc == 0)
    g->refs++;
  pthread_mutex_unlock(&g->lock);
  if (rc == 0)
    x->groups[x->ngroups++] = g;
  return rc;
}

static void member_remove(ax_group_t *g, ax_aid_t id) {
  pthread_mutex_lock(&g->lock);
  (void)ax__aid_remove(g->members, &g->n, id);
  group_unref_locked(g);
}

int ax_group_leave(ax_group_t *g, ax_actor_t *self) {
  if (!g || !self)
    return -EINVAL;
  struct ax__ext *x = self->ext;
  for (uint32_t i = 0; x && i < x->ngroups; i++) {
    if (x->groups[i] == g) {
      x->groups[i] = x->groups[--x->ngroups];
      member_remove(g, self->id);
      return 0;
    }
  }
  return -ENOENT;
}

void ax__groups_leave_all(ax_actor_t *a) {
  struct ax__ext *x = a->ext;
  while (x->ngroups)
    member_remove(x->groups[--x->ngroups], a->id);
}

/* ---- broadcast ------------------------------------------------------------ */

/* Queue the shared payload to member @to of @w (its owner's thread).
 * Returns 1 if it was queued. */
static int deliver_shared(struct ax__worker *w, ax_aid_t to, ax_aid_t from,
                          uint32_t tag, struct ax__shared *sh) {
  ax_actor_t *a = ax__actor_lookup(w, to);
  if (!a || (a->flags & AX__AF_EXITING))
    return 0; /* left meanwhile */
  if (a->queued >= a->cap) {
    ck_pr_inc_64(&w->st.refused);
    return 0;
  }
  struct ax__msg *m = ax__msg_new(w);
  if (!m)
    return 0;
  ck_pr_inc_uint(&sh->refs);
  m->to = to;
  m->m.from = from;
  m->m.tag = tag;
  m->m.data = sh->data;
  m->m.len = sh->len;
  m->flags = AX__MF_SHARED;
  m->u.e.p = sh;
  ax__enqueue(a, m);
  return 1;
}

static void gpost_arrive(ax_post_t *p) {
  struct gpost *gp = ax__container_of(p, struct gpost, post);
  struct ax__worker *w = ax__tls_worker;
  AX__STAT_ADD(w, remote_in, 1);
  for (uint32_t i = 0; i < gp->n; i++)
    (void)deliver_shared(w, gp->to[i], gp->from, gp->tag, gp->sh);
  ax__shared_unref(gp->sh);
  free(gp);
}

static int cmp_aid(const void *a, const void *b) {
  ax_aid_t x = *(const ax_aid_t *)a, y = *(const ax_aid_t *)b;
  return x < y ? -1 : x > y;
}

int ax_group_send(ax_group_t *g, ax_actor_t *self, bool skip_self,
                  uint32_t tag, const void *data, size_t len) {
  if (!g || tag >= AX_TAG_SYSTEM || (!data && len) || len > UINT32_MAX)
    return -EINVAL;
  ax_rt_t *rt = g->rt;
  if (ck_pr_load_uint(&rt->stopping))
    return -ESHUTDOWN;
  struct ax__worker *here = ax__here(rt);
  ax_aid_t from = self ? self->id : AX_AID_NONE;

  pthread_mutex_lock(&g->lock);
  uint32_t n = g->n;
  ax_aid_t *to = n ? malloc(n * sizeof *to) : NULL;
  if (to)
    memcpy(to, g->members, n * sizeof *to);
  pthread_mutex_unlock(&g->lock);
  if (n && !to)
    return -ENOMEM;
  struct ax__shared *sh = malloc(sizeof *sh + len);
  if (!sh) {
    free(to);
    return -ENOMEM;
  }
  sh->refs = 1; /* ours, dropped at the end */
  sh->len = (uint32_t)len;
  if (len)
    memcpy(sh->data, data, len);
  /* Sorted ids are grouped by worker (the worker is the top byte). */
  qsort(to, n, sizeof *to, cmp_aid);
  int reached = 0;
  for (uint32_t i = 0; i < n;) {
    unsigned wi = ax__aid_worker(to[i]);
    uint32_t j = i;
    while (j < n && ax__aid_worker(to[j]) == wi)
      j++;
    struct ax__worker *w = wi < rt->nworkers ? rt->w[wi] : NULL;
    if (w && w == here) {
      for (uint32_t k = i; k < j; k++)
        if (!(skip_self && to[k] == from))
          reached += deliver_shared(w, to[k], from, tag, sh);
    } else if (w && !rt->closed) {
      struct gpost *gp = malloc(sizeof *gp + (j - i) * sizeof gp->to[0]);
      if (gp) {
        gp->post.fn = gpost_arrive;
        gp->sh = sh;
        gp->from = from;
        gp->tag = tag;
        gp->n = 0;
        for (uint32_t k = i; k < j; k++)
          if (!(skip_self && to[k] == from))
            gp->to[gp->n++] = to[k];
        ck_pr_inc_uint(&sh->refs);
        uint32_t sent = gp->n; /* once posted, gp is the other worker's */
        if (ax_loop_post_node(w->loop, &gp->post) == 0) {
          reached += (int)sent;
        } else {
          ck_pr_inc_64(&w->st.refused);
          ax__shared_unref(sh);
          free(gp);
        }
      }
    }
    i = j;
  }
  ax__shared_unref(sh);
  free(to);
  return reached;
}
