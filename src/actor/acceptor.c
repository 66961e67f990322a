/*
 * The acceptor: a listener on one worker (or one per worker with
 * SO_REUSEPORT) that spawns a connection actor per accepted socket.
 *
 * Hand-off (gwrl's accept loop that passes clients to worker threads): the
 * listener's worker picks the destination; for itself it opens the stream
 * and spawns at once, for another worker it posts the bare fd as a control
 * message (never refused for capacity), and that worker opens the stream
 * on its own loop and spawns there. A connection actor owns its streams:
 * they close after its terminate, unless given away with ax_stream_give(),
 * which moves the fd the same way.
 */
#include "actor/actor_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

struct ax__lnode {
  struct ax__lnode *next; /* the worker's listeners */
  ax_acceptor_t *acc;
  struct ax__worker *w;
  ax_listener_t *l;
  unsigned rr;
  ax_post_t close_post; /* ax_acceptor_close() from another thread */
};

struct ax_acceptor {
  struct ax_acceptor *next; /* rt->acceptors */
  ax_rt_t *rt;
  const ax_behaviour_t *beh;
  ax_acceptor_options_t o;
  ax_addr_t addr;
  uint64_t accepted; /* ck_pr */
  unsigned closed;   /* ck_pr: ax_acceptor_close() was called */
  unsigned *pending; /* per worker: fds handed over, not yet arrived (ck) */
  unsigned nl;
  struct ax__lnode ln[];
};

void ax_acceptor_options_init(ax_acceptor_options_t *o) {
  memset(o, 0, sizeof *o);
}

/* ---- connection actors ----------------------------------------------------- */

static int streams_add(ax_actor_t *a, ax_stream_t *s) {
  struct ax__ext *x = ax__ext(a);
  if (!x)
    return -ENOMEM;
  if (x->nstreams == x->capstreams) {
    uint32_t nc = x->capstreams ? x->capstreams * 2 : 1;
    ax_stream_t **nv = realloc(x->streams, nc * sizeof *nv);
    if (!nv)
      return -ENOMEM;
    x->streams = nv;
    x->capstreams = nc;
  }
  x->streams[x->nstreams++] = s;
  ax_stream_set_data(s, a);
  return 0;
}

/* Open @fd on @w and spawn a connection actor for it (owner thread). */
static void conn_start(struct ax__worker *w, ax_acceptor_t *acc, int fd,
                       const ax_addr_t *peer) {
  ax_stream_t *s;
  if (ax_stream_open(w->loop, fd, NULL, &s) < 0) {
    close(fd);
    return;
  }
  ax_conn_t *c = malloc(sizeof *c);
  uint32_t slot, gen;
  if (!c || ax__slot_reserve(w, &slot, &gen) != 0) {
    free(c);
    ax_stream_close(s, NULL);
    return;
  }
  c->stream = s;
  c->arg = acc->o.arg;
  if (peer) {
    c->peer = *peer;
  } else {
    c->peer.len = sizeof c->peer.u;
    if (getpeername(fd, &c->peer.u.sa, &c->peer.len) < 0)
      memset(&c->peer, 0, sizeof c->peer);
  }
  struct ax__spawn sp = {acc->beh, c, acc->o.capacity, AX__AF_CONN};
  ax_actor_t *a = ax__actor_alloc(w, slot, gen, &sp);
  if (!a) {
    free(c);
    ax_stream_close(s, NULL);
    return;
  }
  if (streams_add(a, s) < 0)
    ax_stream_close(s, NULL); /* init sees it; the actor ends on its own */
  ax__actor_start(a);
}

void ax__conn_init_done(ax_actor_t *a, void *arg) {
  (void)a;
  free(arg); /* the ax_conn_t */
}

void ax__conn_exit(ax_actor_t *a) {
  struct ax__ext *x = a->ext;
  for (uint32_t i = 0; i < x->nstreams; i++) {
    /* Completions owed after this (-ECANCELED writes, a drain) must not
     * see the actor, which is about to be freed. */
    ax_stream_set_data(x->streams[i], NULL);
    (void)ax_stream_close(x->streams[i], NULL);
  }
  x->nstreams = 0;
  free(x->streams);
  x->streams = NULL;
}

ax_stream_t *ax_actor_stream(const ax_actor_t *self) {
  return self && self->ext && self->ext->nstreams ? self->ext->streams[0]
                                                  : NULL;
}

static int fd_of(const struct ax__msg *m) {
  int fd;
  memcpy(&fd, m->u.inl, sizeof fd);
  return fd;
}

void ax__conn_arrive(struct ax__worker *w, struct ax__msg *m) {
  ax_acceptor_t *acc = m->u.e.p;
  int fd = fd_of(m);
  ax__msg_free(w, m);
  ck_pr_dec_uint(&acc->pending[w->idx]);
  if (w->stopping)
    close(fd);
  else
    conn_start(w, acc, fd, NULL);
}

void ax__stream_arrive(struct ax__worker *w, ax_actor_t *a, struct ax__msg *m) {
  int fd = fd_of(m);
  ax_stream_t *s = NULL;
  if (ax_stream_open(w->loop, fd, a, &s) < 0) {
    close(fd);
  } else if (streams_add(a, s) < 0) {
    ax_stream_close(s, NULL);
  } else {
    m->u.e.p = s;
    m->m.data = &m->u.e.p;
    m->m.len = sizeof s;
    a->beh->receive(a, a->state, &m->m);
  }
  ax__msg_free(w, m);
}

int ax_stream_give(ax_actor_t *self, ax_stream_t *s, ax_aid_t to,
                   uint32_t tag) {
  if (!self || !s || tag >= AX_TAG_SYSTEM)
    return -EINVAL;
  struct ax__ext *x = self->ext;
  uint32_t i = 0;
  while (x && i < x->nstreams && x->streams[i] != s)
    i++;
  if (!x || i == x->nstreams)
    return -ENOENT;
  ax_rt_t *rt = self->w->rt;
  unsigned wi = ax__aid_worker(to);
  if (!to || wi >= rt->nworkers)
    return -ESRCH;
  struct ax__slot *slot = ax__slot_get(rt->w[wi], ax__aid_slot(to));
  if (!slot || ck_pr_load_32(&slot->gen) != ax__aid_gen(to))
    return -ESRCH;
  struct ax__msg *m = ax__msg_new(self->w);
  if (!m)
    return -ENOMEM;
  int fd;
  ax_stream_set_data(s, NULL); /* owed completions: no longer self's */
  int rc = ax_stream_detach(s, &fd);
  if (rc) {
    ax_stream_set_data(s, self);
    ax__msg_free(self->w, m);
    return rc;
  }
  x->streams[i] = x->streams[--x->nstreams]; /* keep [0] if it stays */
  m->kind = AX__MK_STREAM;
  m->flags = AX__MF_CONTROL;
  m->to = to;
  m->m.from = self->id;
  m->m.tag = tag;
  memcpy(m->u.inl, &fd, sizeof fd);
  if (rt->w[wi] == self->w) {
    ax__deliver(self->w, m); /* a gone receiver closes the fd */
    return 0;
  }
  rc = ax__post(rt, self->w, m);
  if (rc) { /* only while the runtime closes: the connection is closed */
    close(fd);
    ax__msg_free(self->w, m);
  }
  return rc;
}

/* ---- listeners -------------------------------------------------------------- */

static struct ax__worker *pick(ax_acceptor_t *acc, struct ax__lnode *ln) {
  ax_rt_t *rt = acc->rt;
  if (acc->o.place == AX_PLACE_REUSEPORT || rt->nworkers == 1)
    return ln->w;
  if (acc->o.place == AX_PLACE_LEAST_CONN) {
    struct ax__worker *best = NULL;
    uint64_t least = UINT64_MAX;
    /* Start after the last choice so ties rotate. */
    for (unsigned k = 1; k <= rt->nworkers; k++) {
      struct ax__worker *w = rt->w[(ln->rr + k) % rt->nworkers];
      uint64_t load = ck_pr_load_64(&w->st.connections) +
                      ck_pr_load_uint(&acc->pending[w->idx]);
      if (load < least) {
        least = load;
        best = w;
      }
    }
    ln->rr = best->idx;
    return best;
  }
  return rt->w[ln->rr++ % rt->nworkers];
}

static void on_accept(ax_listener_t *l, int status, int fd,
                      const ax_addr_t *peer, void *ud) {
  struct ax__lnode *ln = ud;
  ax_acceptor_t *acc = ln->acc;
  (void)l;
  if (status < 0)
    return; /* fd exhaustion: the listener sheds and pauses by itself */
  ck_pr_inc_64(&acc->accepted);
  struct ax__worker *t = pick(acc, ln);
  if (t == ln->w) {
    conn_start(t, acc, fd, peer);
    return;
  }
  struct ax__msg *m = ax__msg_new(ln->w);
  if (!m) {
    close(fd);
    return;
  }
  m->kind = AX__MK_CONN;
  m->flags = AX__MF_CONTROL;
  m->to = ax__aid(t->idx, 0, 0); /* routing only: no actor yet */
  memcpy(m->u.inl, &fd, sizeof fd);
  m->u.e.p = acc;
  ck_pr_inc_uint(&acc->pending[t->idx]);
  if (ax__post(acc->rt, ln->w, m) != 0) {
    ck_pr_dec_uint(&acc->pending[t->idx]);
    close(fd);
    ax__msg_free(ln->w, m);
  }
}

/* Close @ln's listener, on its worker; connections stay. */
static void lnode_close(struct ax__lnode *ln) {
  struct ax__worker *w = ln->w;
  for (struct ax__lnode **p = &w->listeners; *p; p = &(*p)->next) {
    if (*p == ln) {
      *p = ln->next;
      ax_listener_close(ln->l);
      ln->l = NULL;
      return;
    }
  }
}

static void lnode_close_post(ax_post_t *p) {
  lnode_close(ax__container_of(p, struct ax__lnode, close_post));
}

int ax_acceptor_close(ax_acceptor_t *a) {
  if (!a)
    return -EINVAL;
  /* Only the first call posts: the posts' nodes live in the acceptor. */
  if (!ck_pr_cas_uint(&a->closed, 0, 1))
    return -EALREADY;
  struct ax__worker *here = ax__here(a->rt);
  for (unsigned i = 0; i < a->nl; i++) {
    struct ax__lnode *ln = &a->ln[i];
    if (ln->w == here) {
      lnode_close(ln);
    } else {
      ln->close_post.fn = lnode_close_post;
      /* Control: never refused. -ESHUTDOWN: the runtime is being freed,
       * and its stop closed the listener already. */
      (void)ax_mailbox_push(ln->w->loop->mb, &ln->close_post.node,
                            AX_MB_CONTROL);
    }
  }
  return 0;
}

void ax__acceptors_close_worker(struct ax__worker *w) {
  while (w->listeners) {
    struct ax__lnode *ln = w->listeners;
    w->listeners = ln->next;
    ax_listener_close(ln->l);
    ln->l = NULL;
  }
}

/* Listener set-up runs on the listener's worker; the caller waits. */
struct setup {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  struct ax__lnode *ln;
  ax_addr_t addr;
  int rc;
  bool done, abandoned;
};

static void setup_run(void *arg) {
  struct setup *s = arg;
  pthread_mutex_lock(&s->mu);
  if (s->abandoned) {
    pthread_mutex_unlock(&s->mu);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
    return;
  }
  struct ax__lnode *ln = s->ln;
  struct ax__worker *w = ln->w;
  if (w->stopping) {
    s->rc = -ESHUTDOWN;
  } else {
    ax_listen_options_t lo;
    ax_listen_options_init(&lo);
    lo.backlog = ln->acc->o.backlog;
    lo.reuseport = ln->acc->o.place == AX_PLACE_REUSEPORT;
    s->rc = ax_listener_new(w->loop, &s->addr, &lo, on_accept, ln, &ln->l);
    if (s->rc == 0) {
      (void)ax_listener_addr(ln->l, &s->addr);
      ln->next = w->listeners;
      w->listeners = ln;
    }
  }
  s->done = true;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* Make the listener of @ln on its worker, bound to *@addr (updated with
 * the real address). Waits for it unless on that worker already. */
static int listener_setup(struct ax__lnode *ln, ax_addr_t *addr) {
  struct setup *s = calloc(1, sizeof *s);
  if (!s)
    return -ENOMEM;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->ln = ln;
  s->addr = *addr;
  struct ax__worker *w = ln->w;
  if (ax__tls_worker == w) {
    setup_run(s);
  } else {
    int rc = ax_loop_post(w->loop, setup_run, s);
    if (rc) {
      pthread_cond_destroy(&s->cv);
      pthread_mutex_destroy(&s->mu);
      free(s);
      return rc;
    }
    pthread_mutex_lock(&s->mu);
    while (!s->done) {
      /* A worker that stops before it gets there would leave us waiting:
       * look at it every 20 ms and give up (the post frees s later). */
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 20 * 1000 * 1000;
      if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
      }
      (void)pthread_cond_timedwait(&s->cv, &s->mu, &ts);
      if (!s->done && ck_pr_load_uint(&w->rt->stopping)) {
        s->abandoned = true;
        pthread_mutex_unlock(&s->mu);
        return -ESHUTDOWN;
      }
    }
    pthread_mutex_unlock(&s->mu);
  }
  int rc = s->rc;
  *addr = s->addr;
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free(s);
  return rc;
}

int ax_listen(ax_rt_t *rt, const ax_addr_t *addr, const ax_behaviour_t *conn,
              const ax_acceptor_options_t *opts, ax_acceptor_t **out) {
  ax_acceptor_options_t def;
  if (!opts) {
    ax_acceptor_options_init(&def);
    opts = &def;
  }
  if (!rt || !addr || !conn || !conn->receive || !out ||
      opts->place > AX_PLACE_REUSEPORT ||
      (opts->place != AX_PLACE_REUSEPORT &&
       (opts->worker < 0 || (unsigned)opts->worker >= rt->nworkers)))
    return -EINVAL;
  if (ck_pr_load_uint(&rt->stopping))
    return -ESHUTDOWN;
  struct ax__worker *here = ax__here(rt);
  bool rp = opts->place == AX_PLACE_REUSEPORT;
  if (here && (rp || here != rt->w[opts->worker]))
    return -EDEADLK; /* would block a worker on another */
  unsigned nl = rp ? rt->nworkers : 1;
  ax_acceptor_t *acc = calloc(1, sizeof *acc + nl * sizeof acc->ln[0]);
  unsigned *pending = calloc(rt->nworkers, sizeof *pending);
  if (!acc || !pending) {
    free(acc);
    free(pending);
    return -ENOMEM;
  }
  acc->rt = rt;
  acc->beh = conn;
  acc->o = *opts;
  acc->pending = pending;
  acc->nl = nl;
  ax_addr_t a = *addr;
  int rc = 0;
  for (unsigned i = 0; i < nl && rc == 0; i++) {
    acc->ln[i].acc = acc;
    acc->ln[i].w = rt->w[rp ? i : (unsigned)opts->worker];
    rc = listener_setup(&acc->ln[i], &a); /* then the others take its port */
  }
  /* Registered even on failure: listeners made before it stay until the
   * runtime stops, and the memory goes with the runtime. */
  pthread_mutex_lock(&rt->lock);
  acc->next = rt->acceptors;
  rt->acceptors = acc;
  pthread_mutex_unlock(&rt->lock);
  if (rc)
    return rc;
  acc->addr = a;
  *out = acc;
  return 0;
}

int ax_acceptor_addr(const ax_acceptor_t *a, ax_addr_t *out) {
  if (!a || !out)
    return -EINVAL;
  *out = a->addr;
  return 0;
}

uint64_t ax_acceptor_accepted(const ax_acceptor_t *a) {
  return a ? ck_pr_load_64((uint64_t *)&a->accepted) : 0;
}

void ax__acceptors_free(ax_rt_t *rt) {
  while (rt->acceptors) {
    ax_acceptor_t *a = rt->acceptors;
    rt->acceptors = a->next;
    free(a->pending);
    free(a);
  }
}
