/*
 * Deferred calls: run once, after the current callback returns and before
 * the loop next blocks (gwrl's "function call").
 */
#include "loop/loop_int.h"

int ax_defer_new(ax_loop_t *loop, ax_defer_cb cb, void *data,
                 ax_source_t **out) {
  int rc = ax__source_new(loop, AX_SOURCE_DEFER, (void (*)(void))cb, data, out);
  if (rc == 0)
    ax__list_init(&((struct ax__defer *)*out)->link);
  return rc;
}

int ax_defer_start(ax_source_t *src) {
  int rc = ax__source_check(src, AX_SOURCE_DEFER);
  if (rc)
    return rc;
  if (src->flags & AX__F_ACTIVE)
    return 0; /* already queued: one run */
  ax__list_append(&src->loop->defers, &((struct ax__defer *)src)->link);
  ax__source_activate(src);
  return 0;
}

void ax__defer_unlink(struct ax__defer *d) { ax__list_unlink(&d->link); }

/*
 * Run the calls queued so far. They move to a private list first, so a call
 * that queues itself (or another) again runs in the next round, not in this
 * one: the phase always ends.
 */
void ax__defers_run(ax_loop_t *loop) {
  struct ax__list batch;
  ax__list_init(&batch);
  ax__list_splice(&batch, &loop->defers);
  while (!ax__list_empty(&batch)) {
    struct ax__defer *d = ax__container_of(batch.next, struct ax__defer, link);
    ax__list_unlink(&d->link);
    ax__source_deactivate(&d->h);
    loop->stats.defers_run++;
    ((ax_defer_cb)d->h.cb)(&d->h, d->h.data);
  }
}
