/*
 * The runtime: worker threads, each running one persistent loop; stopping,
 * joining and freeing; counters.
 *
 * Stopping is a control post to every worker (never refused, at most one in
 * flight per worker). A worker that gets it ends all its actors there and
 * then (terminate once each, reason AX_EXIT_SHUTDOWN), closes its
 * acceptors, lets its loop run the close callbacks that follow, and leaves.
 * Mail that reaches it afterwards waits in its loop's mailbox until
 * ax_rt_free(), which frees the loops one by one with the runtime marked
 * closed: deliveries then find every actor gone and free their payloads
 * (dead letters), and nothing is posted any more.
 */
#include "actor/actor_int.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ck_pr.h>


void ax_rt_options_init(ax_rt_options_t *o) { memset(o, 0, sizeof *o); }

unsigned ax_rt_workers(const ax_rt_t *rt) { return rt ? rt->nworkers : 0; }

ax_loop_t *ax_rt_loop(const ax_rt_t *rt, unsigned i) {
  return rt && i < rt->nworkers ? rt->w[i]->loop : NULL;
}

int ax_rt_current_worker(const ax_rt_t *rt) {
  struct ax__worker *w = ax__here(rt);
  return w ? (int)w->idx : -1;
}

/* ---- stop ------------------------------------------------------------------ */

static void worker_stop(ax_post_t *p) {
  struct ax__worker *w = ax__container_of(p, struct ax__worker, stop_post);
  if (w->stopping)
    return;
  w->stopping = true;
  ax__acceptors_close_worker(w);
  /* Nothing runs any more: empty the run queue (sched_push is off now). */
  for (ax_actor_t *a = w->rq_head; a; a = a->rq_next)
    a->flags &= ~AX__AF_QUEUED;
  w->rq_head = w->rq_tail = NULL;
  uint32_t n = ck_pr_load_32(&w->next_slot);
  for (uint32_t i = 0; i < n; i++) {
    struct ax__slot *s = ax__slot_get(w, i);
    if (s && s->a) {
      s->a->reason = AX_EXIT_SHUTDOWN;
      ax__actor_exit_now(s->a);
    }
  }
  ax__flush(w); /* the exits' notices to other workers */
  ax_loop_stop(w->loop);
}

void ax_rt_stop(ax_rt_t *rt) {
  if (!rt)
    return;
  ck_pr_store_uint(&rt->stopping, 1);
  for (unsigned i = 0; i < rt->nworkers; i++) {
    struct ax__worker *w = rt->w[i];
    if (!ck_pr_cas_uint(&w->stop_posted, 0, 1))
      continue; /* already on its way */
    (void)ax_mailbox_push(w->loop->mb, &w->stop_post.node, AX_MB_CONTROL);
  }
}

static void on_signal(ax_source_t *src, int signo, void *data) {
  (void)src, (void)signo;
  ax_rt_stop(data);
}

/* ---- workers ---------------------------------------------------------------- */

static void *worker_main(void *arg) {
  struct ax__worker *w = arg;
  ax__tls_worker = w;
  if (w->rt->opts.pin) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((int)(w->idx % (unsigned)(ncpu > 0 ? ncpu : 1)), &set);
    (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  }
  (void)ax_loop_run(w->loop, AX_RUN_DEFAULT);
  /* Close callbacks and the proactor's deferred work of the streams the
   * exits closed: a few rounds are enough (each is non-blocking). */
  for (int i = 0; i < 8; i++)
    (void)ax_loop_run(w->loop, AX_RUN_NOWAIT);
  ax__flush(w);
  ax__tls_worker = NULL;
  return NULL;
}

static int worker_new(ax_rt_t *rt, unsigned idx, struct ax__worker **out) {
  struct ax__worker *w = calloc(1, sizeof *w);
  if (!w)
    return -ENOMEM;
  w->rt = rt;
  w->idx = idx;
  w->stop_post.fn = worker_stop;
  ax_loop_options_t lo;
  ax_loop_options_init(&lo);
  lo.backend = rt->opts.backend;
  lo.persistent = true;
  lo.spin_ns = rt->opts.spin_ns;
  w->out = calloc(rt->nworkers, sizeof *w->out);
  w->dirty = calloc(rt->nworkers, sizeof *w->dirty);
  w->ret = calloc(rt->nworkers, sizeof *w->ret);
  int rc = w->out && w->dirty && w->ret ? ax_loop_new(&lo, &w->loop) : -ENOMEM;
  if (rc == 0)
    rc = ax_defer_new(w->loop, ax__worker_sched, w, &w->sched);
  if (rc == 0)
    rc = ax_defer_new(w->loop, ax__flush_cb, w, &w->flush);
  if (rc == 0 && rt->opts.stop_on_signals && idx == 0) {
    rc = ax_signal_new(w->loop, on_signal, rt, &w->sig_int);
    if (rc == 0)
      rc = ax_signal_start(w->sig_int, SIGINT);
    if (rc == 0)
      rc = ax_signal_new(w->loop, on_signal, rt, &w->sig_term);
    if (rc == 0)
      rc = ax_signal_start(w->sig_term, SIGTERM);
  }
  if (rc) {
    if (w->loop)
      ax_loop_free(w->loop);
    free(w->out);
    free(w->dirty);
    free(w->ret);
    free(w);
    return rc;
  }
  *out = w;
  return 0;
}

/*
 * Free the workers in two passes: first every loop (the deliveries still
 * queued run on this thread, as their worker, and may look at any worker's
 * slots and nodes), then the memory.
 */
static void workers_free(ax_rt_t *rt) {
  for (unsigned i = 0; i < rt->nworkers; i++) {
    struct ax__worker *w = rt->w[i];
    if (!w)
      continue;
    ax__tls_worker = w;
    ax_loop_free(w->loop);
    ax__flush(w); /* the runtime is closed: whatever is left is dropped */
    ax__tls_worker = NULL;
  }
  for (unsigned i = 0; i < rt->nworkers; i++) {
    struct ax__worker *w = rt->w[i];
    if (!w)
      continue;
    free(w->out);
    free(w->dirty);
    free(w->ret); /* slab nodes: they go with the slabs */
    for (unsigned c = 0; c < AX__CHUNKS && w->chunks[c]; c++)
      free(w->chunks[c]);
    ax__slabs_free(w);
    free(w->free_slots);
    free(w);
  }
}

int ax_rt_new(const ax_rt_options_t *opts, ax_rt_t **out) {
  ax_rt_options_t def;
  if (!opts) {
    ax_rt_options_init(&def);
    opts = &def;
  }
  if (!out)
    return -EINVAL;
  unsigned n = opts->workers;
  if (n == 0) {
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    n = c > 0 ? (unsigned)c : 1;
    if (n > AX__WORKERS_MAX)
      n = AX__WORKERS_MAX;
  }
  if (n > AX__WORKERS_MAX)
    return -EINVAL;
  ax_rt_t *rt = calloc(1, sizeof *rt + n * sizeof rt->w[0]);
  if (!rt)
    return -ENOMEM;
  rt->opts = *opts;
  rt->nworkers = n;
  rt->capacity = opts->capacity ? opts->capacity : 65536;
  rt->batch = opts->batch ? opts->batch : 100;
  pthread_mutex_init(&rt->lock, NULL);
  int rc = 0;
  unsigned made = 0;
  for (; made < n && rc == 0; made++)
    if ((rc = worker_new(rt, made, &rt->w[made])) != 0)
      break;
  unsigned started = 0;
  for (; rc == 0 && started < n; started++) {
    rc = -pthread_create(&rt->w[started]->thr, NULL, worker_main,
                         rt->w[started]);
    if (rc == 0)
      rt->w[started]->started = true;
    else
      break;
  }
  if (rc) {
    rt->nworkers = made;
    ax_rt_free(rt);
    return rc == -EAGAIN ? -EAGAIN : rc;
  }
  *out = rt;
  return 0;
}

int ax_rt_join(ax_rt_t *rt) {
  if (!rt)
    return -EINVAL;
  if (ax__here(rt))
    return -EDEADLK;
  if (rt->joined)
    return 0;
  for (unsigned i = 0; i < rt->nworkers; i++)
    if (rt->w[i]->started)
      pthread_join(rt->w[i]->thr, NULL);
  ax__pool_stop(rt);
  rt->joined = true;
  return 0;
}

void ax_rt_free(ax_rt_t *rt) {
  if (!rt || ax__here(rt))
    return;
  ax_rt_stop(rt);
  (void)ax_rt_join(rt);
  rt->closed = true;
  workers_free(rt);
  ax__acceptors_free(rt);
  pthread_mutex_destroy(&rt->lock);
  free(rt);
}

/* ---- counters ------------------------------------------------------------- */

int ax_rt_stats(const ax_rt_t *rt, unsigned i, ax_worker_stats_t *out) {
  if (!rt || i >= rt->nworkers || !out)
    return -EINVAL;
  struct ax__worker *w = rt->w[i];
  const uint64_t *src = (const uint64_t *)&w->st;
  uint64_t *dst = (uint64_t *)out;
  for (size_t k = 0; k < sizeof *out / sizeof(uint64_t); k++)
    dst[k] = ck_pr_load_64(&src[k]);
  out->wakeups = ax_mailbox_wakes(w->loop->mb);
  /* Pairs with ax__px_count's store: whole values, no ordering. */
  out->bytes_in = ck_pr_load_64(&w->loop->px_bytes_in);
  out->bytes_out = ck_pr_load_64(&w->loop->px_bytes_out);
  return 0;
}

void ax_rt_dump(const ax_rt_t *rt, FILE *out) {
  if (!rt || !out)
    return;
  for (unsigned i = 0; i < rt->nworkers; i++) {
    ax_worker_stats_t s;
    (void)ax_rt_stats(rt, i, &s);
    fprintf(out,
            "worker %u: actors=%llu spawned=%llu messages=%llu remote_in=%llu "
            "queued=%llu dead_letters=%llu refused=%llu wakeups=%llu "
            "connections=%llu turns=%llu bytes_in=%llu bytes_out=%llu\n",
            i, (unsigned long long)s.actors, (unsigned long long)s.spawned,
            (unsigned long long)s.messages, (unsigned long long)s.remote_in,
            (unsigned long long)s.queued, (unsigned long long)s.dead_letters,
            (unsigned long long)s.refused, (unsigned long long)s.wakeups,
            (unsigned long long)s.connections, (unsigned long long)s.turns,
            (unsigned long long)s.bytes_in, (unsigned long long)s.bytes_out);
  }
}
