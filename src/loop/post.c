/*
 * The loop's mailbox: callbacks posted from other threads, I/O sources
 * handed over from other loops, and stop requests. Everything another thread
 * may do to a loop comes through here (threading rule 2).
 *
 * Each message is an ax_post_t; its fn says what it is. The loop drains the
 * mailbox once per iteration, after I/O, in batches (posts_run). A loop about
 * to block announces it to the mailbox first; a poster that sees the
 * announcement writes the loop's eventfd (mailbox_wake), the only system
 * call a post can cost.
 */
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "loop/loop_int.h"
#include "mailbox/mailbox_int.h"

/* Messages run per iteration, so a flood of posts cannot starve I/O. */
#define POST_BATCH 1024

/* A post made by ax_loop_post(): the node comes from malloc (posters are
 * other threads; the loop's allocator hooks are not assumed thread-safe). */
struct fn_post {
  ax_post_t post;
  ax_post_fn fn;
  void *arg;
};

/* A source on its way to another loop. */
struct handoff {
  ax_post_t post;
  ax_loop_t *dest;
  int fd;
  uint32_t events; /* interest and mode, 0 if the source was inactive */
  bool ref;
  ax_io_cb io_cb;
  void *io_data;
  ax_handoff_cb cb;
  void *data;
};

static void run_fn_post(ax_post_t *p);
static void run_handoff(ax_post_t *p);
static void run_stop(ax_post_t *p);

/* ---- waking ------------------------------------------------------------- */

/* The mailbox's wake function: runs on a poster's thread when the loop
 * announced it is blocking. The eventfd's counter is the kernel's to
 * serialise. */
static void mailbox_wake(void *ctx) {
  int fd = (int)(intptr_t)ctx; /* the fd itself: no loop memory is read */
  uint64_t one = 1;
  while (write(fd, &one, sizeof one) < 0 && errno == EINTR)
    ;
  /* EAGAIN: the counter is saturated, a wake is pending anyway. */
}

/* The eventfd fired. The messages are drained by posts_run. Watched
 * edge-triggered where the backend can (every write is an edge), the
 * counter need not be reset: that saves a read(), a system call per wake.
 * Level-triggered backends must read it, or it would stay ready. */
static void efd_readable(ax_loop_t *loop, struct ax__io *io, unsigned revents) {
  (void)loop;
  (void)revents;
  if (io->events & AX_IO_EDGE)
    return;
  uint64_t count;
  while (read(io->fd, &count, sizeof count) < 0 && errno == EINTR)
    ;
}

int ax__post_init(ax_loop_t *loop, const ax_loop_options_t *o) {
  loop->spin_ns = o->spin_ns;
  loop->persistent = o->persistent;
  loop->stop_post.fn = run_stop;
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0)
    return -errno;
  int rc = ax__io_internal(loop, fd, efd_readable, &loop->post_io);
  if (rc) {
    close(fd);
    return rc;
  }
  /* Edge-triggered if possible (see efd_readable). A counter that is never
   * read saturates only after 2^64 - 2 wakes. */
  if (loop->be->edge &&
      (rc = ax__io_arm(loop->post_io, AX_READABLE | AX_IO_EDGE)) != 0)
    return rc;
  ax_mailbox_options_t mo;
  ax_mailbox_options_init(&mo);
  mo.capacity = o->post_capacity;
  mo.wake = mailbox_wake;
  mo.wake_ctx = (void *)(intptr_t)fd;
  return ax_mailbox_new(&mo, &loop->mb);
}

/* Run everything still queued (posts run, handoffs are cancelled) after
 * closing the mailbox, then release it. Called by ax_loop_free. */
void ax__post_fini(ax_loop_t *loop) {
  if (loop->mb) {
    loop->freeing = true;
    /* After the close every push either is queued already or is refused
     * (a push is one CAS that sees the closed mark): popping until empty
     * drains everything that will ever come. Posts made by these callbacks
     * are refused with -ESHUTDOWN. */
    ax_mailbox_close(loop->mb);
    for (ax_mbnode_t *n; (n = ax_mailbox_pop(loop->mb));) {
      ax_post_t *p = ax__container_of(n, ax_post_t, node);
      p->fn(p);
    }
    int rc = ax_mailbox_free(loop->mb);
    assert(rc == 0);
    (void)rc;
    loop->mb = NULL;
  }
  if (loop->post_io) {
    ax__source_destroy(&loop->post_io->h); /* closes the eventfd */
    loop->post_io = NULL;
  }
}

/* ---- the loop's side ---------------------------------------------------- */

bool ax__posts_pending(const ax_loop_t *loop) {
  return !ax_mailbox_empty(loop->mb);
}

void ax__posts_run(ax_loop_t *loop) {
  for (int i = 0; i < POST_BATCH; i++) {
    ax_mbnode_t *n = ax_mailbox_pop(loop->mb);
    if (!n)
      return;
    ax_post_t *p = ax__container_of(n, ax_post_t, node);
    if (p->fn != run_handoff && p->fn != run_stop)
      loop->stats.posts_run++;
    p->fn(p);
  }
}

/*
 * Called before a blocking wait of @timeout_ms (> 0, or -1 for no limit).
 * Returns the timeout to use: 0 if a message is there (or came during the
 * spin), else @timeout_ms with the sleep announced (*slept = true: call
 * ax__posts_awake after the wait). *skip: the spin caught a message, so
 * the wait can be skipped altogether (no system call), at most 64 times in
 * a row so I/O is still polled.
 */
int ax__posts_before_wait(ax_loop_t *loop, int timeout_ms, bool *slept,
                          bool *skip) {
  *slept = *skip = false;
  if (loop->spin_ns) {
    uint64_t ns = loop->spin_ns;
    if (timeout_ms >= 0 && (uint64_t)timeout_ms * 1000000u < ns)
      ns = (uint64_t)timeout_ms * 1000000u;
    uint64_t start = loop->now; /* poll_timeout just updated it */
    if (ax_mailbox_spin(loop->mb, ns)) {
      if (loop->skipped_waits < 64) {
        loop->skipped_waits++;
        *skip = true;
      }
      return 0;
    }
    /* The spin used part of the time to the next timer. */
    uint64_t spent = ax__monotonic_ms() - start;
    if (timeout_ms > 0)
      timeout_ms = spent >= (uint64_t)timeout_ms ? 0 : timeout_ms - (int)spent;
    if (timeout_ms == 0)
      return 0;
  }
  if (ax_mailbox_sleep_prepare(loop->mb) != 0)
    return 0;
  *slept = true;
  return timeout_ms;
}

void ax__posts_awake(ax_loop_t *loop) { ax_mailbox_sleep_finish(loop->mb); }

/* ---- posts -------------------------------------------------------------- */

static void run_fn_post(ax_post_t *p) {
  struct fn_post *fp = (struct fn_post *)p;
  ax_post_fn fn = fp->fn;
  void *arg = fp->arg;
  free(fp);
  fn(arg);
}

int ax_loop_post_node(ax_loop_t *loop, ax_post_t *post) {
  if (!loop || !post || !post->fn)
    return -EINVAL;
  return ax_mailbox_push(loop->mb, &post->node, 0);
}

int ax_loop_post(ax_loop_t *loop, ax_post_fn fn, void *arg) {
  if (!loop || !fn)
    return -EINVAL;
  struct fn_post *fp = malloc(sizeof *fp);
  if (!fp)
    return -ENOMEM;
  fp->post.fn = run_fn_post;
  fp->fn = fn;
  fp->arg = arg;
  int rc = ax_mailbox_push(loop->mb, &fp->post.node, 0);
  if (rc)
    free(fp);
  return rc;
}

/* ---- stop --------------------------------------------------------------- */

static void run_stop(ax_post_t *p) {
  ax_loop_t *loop = ax__container_of(p, ax_loop_t, stop_post);
  /* Re-open the slot for the next stop; orders nothing else (the node's
   * hand-over was ordered by the mailbox). Pairs with the CAS in
   * ax__stop_post(). */
  ck_pr_store_uint(&loop->stop_posted, 0);
  loop->stop = true;
}

/* Send the loop's own stop node, unless one is in flight already. */
void ax__stop_post(ax_loop_t *loop) {
  /* Claims the single stop node; pairs with the store in run_stop(). */
  if (!ck_pr_cas_uint(&loop->stop_posted, 0, 1))
    return;
  if (ax_mailbox_push(loop->mb, &loop->stop_post.node, AX_MB_CONTROL) != 0)
    ck_pr_store_uint(&loop->stop_posted, 0); /* closed: being freed */
}

/* ---- source handoff ----------------------------------------------------- */

/* Close the fd instead of adopting it, and say why. */
static void handoff_fail(ax_loop_t *loop, struct handoff *h, int status) {
  close(h->fd);
  loop->stats.handoffs_failed++;
  h->cb(NULL, status, h->data);
}

static int adopt(ax_loop_t *loop, struct handoff *h, ax_source_t **out) {
  ax_source_t *src;
  int rc = ax_io_new(loop, h->fd, h->io_cb, h->io_data, &src);
  if (rc)
    return rc;
  if (h->events)
    rc = ax_io_start(src, h->events);
  if (rc) {
    ((struct ax__io *)src)->fd = -1; /* keep the fd: handoff_fail closes it */
    loop->fdtab[h->fd] = NULL;
    ax__source_destroy(src);
    return rc;
  }
  if (!h->ref)
    ax_source_unref(src);
  *out = src;
  return 0;
}

static void run_handoff(ax_post_t *p) {
  struct handoff *h = (struct handoff *)p;
  ax_loop_t *loop = h->dest;
  ax_source_t *src = NULL;
  int rc = loop->freeing ? -ECANCELED : adopt(loop, h, &src);
  if (rc) {
    handoff_fail(loop, h, rc);
  } else {
    loop->stats.handoffs_adopted++;
    h->cb(src, 0, h->data);
  }
  free(h);
}

int ax_io_handoff(ax_source_t *src, ax_loop_t *dest, ax_handoff_cb cb,
                  void *data) {
  if (!dest || !cb)
    return -EINVAL;
  int rc = ax__source_check(src, AX_SOURCE_IO);
  if (rc)
    return rc;
  struct ax__io *io = (struct ax__io *)src;
  struct handoff *h = malloc(sizeof *h);
  if (!h)
    return -ENOMEM;
  *h = (struct handoff){
      .post.fn = run_handoff,
      .dest = dest,
      .fd = io->fd,
      .events = (io->h.flags & AX__F_ACTIVE) ? io->events : 0,
      .ref = io->h.flags & AX__F_REF,
      .io_cb = (ax_io_cb)io->h.cb,
      .io_data = io->h.data,
      .cb = cb,
      .data = data,
  };
  /* Refuse while the source is still untouched if @dest is being freed.
   * Then unregister the fd here before the destination can see it: once
   * the message is out, the fd is the destination's to use and to close.
   * A control message is never refused for capacity, so the push fails
   * only if @dest began ax_loop_free() in between — which the rule that a
   * loop outlives its posters forbids; the fd is closed then. */
  if (ax__mailbox_closed(dest->mb)) {
    free(h);
    return -ESHUTDOWN;
  }
  ax__source_destroy(src); /* unregisters, leaves the fd open */
  rc = ax_mailbox_push(dest->mb, &h->post.node, AX_MB_CONTROL);
  if (rc) {
    close(h->fd);
    free(h);
  }
  return rc;
}
