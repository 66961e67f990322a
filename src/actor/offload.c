/*
 * The offload pool: a few threads that run blocking or CPU-heavy functions
 * off the workers. Jobs wait in a FIFO under a mutex (they are long by
 * definition: a lock-free queue would buy nothing), and each result goes
 * back to its actor as a control message through its worker's mailbox.
 * The pool starts on the first ax_offload(); ax_rt_join() stops it: jobs
 * not started are dropped (their argument freed), running ones finish.
 */
#include "actor/actor_int.h"

#include <errno.h>
#include <stdlib.h>

struct job {
  struct job *next;
  void (*fn)(void *);
  void *arg;
  void (*free_fn)(void *);
  ax_aid_t to;
  uint32_t tag;
};

struct ax__pool {
  ax_rt_t *rt;
  pthread_mutex_t lock;
  pthread_cond_t cv;
  struct job *head, *tail;
  bool stop;
  unsigned n;
  pthread_t thr[];
};

static void job_drop(struct job *j) {
  if (j->free_fn)
    j->free_fn(j->arg);
  free(j);
}

/* Send @j's result home; if that fails the argument is freed here. */
static void job_done(ax_rt_t *rt, struct job *j) {
  struct ax__msg *m = ax__msg_new(NULL);
  if (!m) {
    job_drop(j);
    return;
  }
  m->kind = AX__MK_OFFLOAD;
  m->flags = AX__MF_CONTROL | AX__MF_EXT;
  m->to = j->to;
  m->m.from = AX_AID_NONE;
  m->m.tag = j->tag;
  m->m.data = j->arg;
  m->u.e.free_fn = j->free_fn;
  if (ax__aid_worker(j->to) >= rt->nworkers || ax__post(rt, NULL, m) != 0)
    ax__msg_free(NULL, m); /* frees the argument */
  free(j);
}

static void *pool_main(void *arg) {
  struct ax__pool *p = arg;
  ax_rt_t *rt = p->rt;
  pthread_mutex_lock(&p->lock);
  for (;;) {
    while (!p->head && !p->stop)
      pthread_cond_wait(&p->cv, &p->lock);
    if (p->stop)
      break;
    struct job *j = p->head;
    p->head = j->next;
    if (!p->head)
      p->tail = NULL;
    pthread_mutex_unlock(&p->lock);
    j->fn(j->arg);
    job_done(rt, j);
    pthread_mutex_lock(&p->lock);
  }
  pthread_mutex_unlock(&p->lock);
  return NULL;
}

/* The pool, started on first use (under rt->lock). */
static struct ax__pool *pool_get(ax_rt_t *rt) {
  pthread_mutex_lock(&rt->lock);
  struct ax__pool *p = rt->pool;
  if (!p && !rt->joined) {
    unsigned n = rt->opts.offload_threads ? rt->opts.offload_threads : 2;
    p = calloc(1, sizeof *p + n * sizeof p->thr[0]);
    if (p) {
      p->rt = rt;
      pthread_mutex_init(&p->lock, NULL);
      pthread_cond_init(&p->cv, NULL);
      rt->pool = p;
      for (; p->n < n; p->n++)
        if (pthread_create(&p->thr[p->n], NULL, pool_main, p) != 0)
          break;
      if (p->n == 0) { /* no thread at all: no pool */
        rt->pool = NULL;
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->lock);
        free(p);
        p = NULL;
      }
    }
  }
  pthread_mutex_unlock(&rt->lock);
  return p;
}

int ax_offload(ax_actor_t *self, void (*fn)(void *arg), void *arg,
               void (*free_fn)(void *), uint32_t tag) {
  if (!self || !fn || tag >= AX_TAG_SYSTEM)
    return -EINVAL;
  ax_rt_t *rt = self->w->rt;
  if (ck_pr_load_uint(&rt->stopping))
    return -ESHUTDOWN;
  struct ax__pool *p = pool_get(rt);
  struct job *j = p ? malloc(sizeof *j) : NULL;
  if (!j)
    return p ? -ENOMEM : -EAGAIN;
  j->next = NULL;
  j->fn = fn;
  j->arg = arg;
  j->free_fn = free_fn;
  j->to = self->id;
  j->tag = tag;
  pthread_mutex_lock(&p->lock);
  bool stopped = p->stop;
  if (!stopped) {
    if (p->tail)
      p->tail->next = j;
    else
      p->head = j;
    p->tail = j;
    pthread_cond_signal(&p->cv);
  }
  pthread_mutex_unlock(&p->lock);
  if (stopped) {
    free(j);
    return -ESHUTDOWN;
  }
  return 0;
}

void ax__pool_stop(ax_rt_t *rt) {
  pthread_mutex_lock(&rt->lock);
  struct ax__pool *p = rt->pool;
  rt->pool = NULL;
  pthread_mutex_unlock(&rt->lock);
  if (!p)
    return;
  pthread_mutex_lock(&p->lock);
  p->stop = true;
  struct job *j = p->head;
  p->head = p->tail = NULL;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->lock);
  for (unsigned i = 0; i < p->n; i++)
    pthread_join(p->thr[i], NULL);
  while (j) {
    struct job *next = j->next;
    job_drop(j);
    j = next;
  }
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->lock);
  free(p);
}
