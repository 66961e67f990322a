/*
 * The proactor's per-loop state: created on first use, freed by the loop's
 * px_fini hook. It also owns the reaper, a deferred call that runs
 * completions owed to users (write callbacks, close callbacks) outside the
 * functions that caused them, so no user callback ever runs inside the
 * call that asked for the operation.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "proactor/proactor_int.h"

/* A write completion owed to a user. */
struct ax__wdone {
  struct ax__wdone *next;
  ax_stream_t *s;
  ax_write_cb cb;
  void *ud;
  int status;
};

#define WREQ_KEEP 256   /* recycled requests kept per loop */
#define SCHUNK_SLOTS 64 /* streams per slab chunk */

struct ax__schunk {
  struct ax__schunk *next;
  uint64_t pad_; /* slots stay 16-byte aligned */
  ax_stream_t slot[SCHUNK_SLOTS];
};

ax_stream_t *ax__stream_slot(struct ax__px *px) {
  ax_stream_t *s = px->sfree;
  if (s == NULL) {
    struct ax__schunk *c = ax__alloc(px->loop, sizeof(*c));
    if (c == NULL)
      return NULL;
    c->next = px->schunks;
    px->schunks = c;
    for (int i = SCHUNK_SLOTS - 1; i >= 0; i--) {
      c->slot[i].pnext = px->sfree;
      px->sfree = &c->slot[i];
    }
    s = px->sfree;
  }
  px->sfree = s->pnext;
  return s;
}

void ax__stream_slot_free(struct ax__px *px, ax_stream_t *s) {
  s->pnext = px->sfree;
  px->sfree = s;
}

static void px_fini(ax_loop_t *loop);
static void reap(ax_source_t *src, void *data);

struct ax__px *ax__px(ax_loop_t *loop) {
  struct ax__px *px = loop->px;
  if (px != NULL)
    return px;
  if ((px = ax__alloc(loop, sizeof(*px))) == NULL)
    return NULL;
  memset(px, 0, sizeof(*px));
  px->loop = loop;
  ax__list_init(&px->streams);
  ax__list_init(&px->closing);
  ax__list_init(&px->done);
  ax__list_init(&px->listeners);
  ax__list_init(&px->udps);
  if (ax_defer_new(loop, reap, px, &px->reaper) < 0) {
    ax__free(loop, px);
    return NULL;
  }
#ifdef AX_HAVE_URING
  ax__uring_px_init(px);
#endif
  loop->px = px;
  loop->px_fini = px_fini;
  return px;
}

void ax__px_kick(struct ax__px *px) {
  if (!ax_source_is_active(px->reaper))
    ax_defer_start(px->reaper); /* cannot fail on an existing defer */
}

struct ax__wreq *ax__wreq_new(struct ax__px *px) {
  struct ax__wreq *r = px->wreq_free;
  if (r != NULL) {
    px->wreq_free = r->next;
    px->nwreq_free--;
  } else if ((r = ax__alloc(px->loop, sizeof(*r))) == NULL) {
    return NULL;
  }
  memset(r, 0, sizeof(*r));
  return r;
}

void ax__wreq_free(struct ax__px *px, struct ax__wreq *r) {
  if (px->nwreq_free >= WREQ_KEEP) {
    ax__free(px->loop, r);
    return;
  }
  r->next = px->wreq_free;
  px->wreq_free = r;
  px->nwreq_free++;
}

int ax__px_complete(struct ax__px *px, ax_stream_t *s, ax_write_cb cb,
                    void *ud, int status) {
  struct ax__wdone *d;
  if (cb == NULL)
    return 0;
  /* Same size as a request: recycle those. */
  _Static_assert(sizeof(struct ax__wdone) <= sizeof(struct ax__wreq),
                 "a completion fits in a request's memory");
  if ((d = (struct ax__wdone *)ax__wreq_new(px)) == NULL)
    return -ENOMEM;
  *d = (struct ax__wdone){.s = s, .cb = cb, .ud = ud, .status = status};
  if (px->wdone_tail)
    px->wdone_tail->next = d;
  else
    px->wdone_head = d;
  px->wdone_tail = d;
  ax__px_kick(px);
  return 0;
}

/* Run what is owed, in order: write completions first (a stream's writes
 * complete before its close callback), then read deliveries owed (frames
 * held while reading was stopped, errors), then close callbacks. Work queued
 * by these callbacks runs in this same pass. */
static void reap(ax_source_t *src, void *data) {
  struct ax__px *px = data;
  (void)src;
  for (;;) {
    struct ax__wdone *d = px->wdone_head;
    if (d != NULL) {
      px->wdone_head = d->next;
      if (px->wdone_head == NULL)
        px->wdone_tail = NULL;
      struct ax__wdone c = *d;
      ax__wreq_free(px, (struct ax__wreq *)d);
      c.cb(c.s, c.status, c.ud);
      continue;
    }
    if (px->rdpend != NULL) {
      ax__streams_deliver(px);
      continue;
    }
    if (!ax__list_empty(&px->done)) {
      ax_stream_t *s =
          ax__container_of(px->done.next, struct ax_stream, link);
      ax__list_unlink(&s->link);
      if (s->close_cb)
        s->close_cb(s, s->ud);
      ax__stream_free(s);
      continue;
    }
    break;
  }
}

void ax__ignore_sigpipe(void) {
  static int done;
  struct sigaction sa;
  if (ck_pr_load_int(&done))
    return;
  /* Only when nobody chose a disposition: a program with its own SIGPIPE
   * handler keeps it (and then sees EPIPE as well). */
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL &&
      !(sa.sa_flags & SA_SIGINFO))
    signal(SIGPIPE, SIG_IGN);
  ck_pr_store_int(&done, 1);
}

/* From ax_loop_free, after the mailbox drained, before sources go. */
static void px_fini(ax_loop_t *loop) {
  struct ax__px *px = loop->px;
  /* Modules in order: users of the native driver and of files first. */
  for (int m = 0; m < AX__PXM_COUNT; m++)
    if (px->fini[m])
      px->fini[m](px);
  /* Completions still owed run now: their streams' memory is still here. */
  reap(px->reaper, px);
  ax_source_free(px->reaper);
  while (px->wreq_free) {
    struct ax__wreq *r = px->wreq_free;
    px->wreq_free = r->next;
    ax__free(loop, r);
  }
  ax__bufpool_fini(loop);
  while (px->schunks) {
    struct ax__schunk *c = px->schunks;
    px->schunks = c->next;
    ax__free(loop, c);
  }
  ax__free(loop, px);
  loop->px = NULL;
  loop->px_fini = NULL;
}

int ax_proactor_info(ax_loop_t *loop, ax_proactor_info_t *out) {
  struct ax__px *px;
  ax_bufpool_t *pool;
  if (loop == NULL || out == NULL)
    return -EINVAL;
  if ((px = ax__px(loop)) == NULL)
    return -ENOMEM;
  memset(out, 0, sizeof(*out));
  out->native = px->native;
  out->streams = px->nstreams;
  out->file_ops_pool = px->file_ops_pool;
  out->file_ops_native = px->file_ops_native;
  out->bytes_in = loop->px_bytes_in;
  out->bytes_out = loop->px_bytes_out;
  if ((pool = ax_loop_bufpool(loop)) != NULL) {
    out->read_bufs_out = ax_bufpool_outstanding(pool);
    out->read_bufs_idle = ax_bufpool_idle(pool);
  }
  if (px->info)
    px->info(px, out);
  return 0;
}
