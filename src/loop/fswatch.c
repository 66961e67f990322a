/*
 * File-system watch through inotify (Linux), gwrl's "vnode" source.
 *
 * Quirks of the mechanism: one inotify fd per loop; the kernel returns the
 * same watch descriptor for one inode however often it is added, so sources
 * watching the same path share a descriptor (struct ax__wd), installed with
 * the union of their masks, and each source filters by its own mask. When the
 * watched path goes away the kernel sends IN_IGNORED and drops the watch: the
 * sources get AX_FS_ENDED and become inactive. A full kernel queue gives one
 * IN_Q_OVERFLOW event with wd -1: every source gets AX_FS_OVERFLOW. Watches
 * are kept in a small array searched linearly: meant for tens of paths.
 */
#include <limits.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "loop/loop_int.h"

static uint32_t to_inotify(unsigned mask) {
  uint32_t m = IN_DELETE_SELF | IN_MOVE_SELF; /* needed for ENDED / renames */
  if (mask & AX_FS_CHANGE)
    m |= IN_MODIFY;
  if (mask & AX_FS_ATTRIB)
    m |= IN_ATTRIB;
  if (mask & AX_FS_DELETE)
    m |= IN_DELETE;
  if (mask & AX_FS_RENAME)
    m |= IN_MOVED_FROM | IN_MOVED_TO;
  if (mask & AX_FS_CREATE)
    m |= IN_CREATE;
  return m;
}

static unsigned from_inotify(uint32_t m) {
  unsigned ev = 0;
  if (m & IN_MODIFY)
    ev |= AX_FS_CHANGE;
  if (m & IN_ATTRIB)
    ev |= AX_FS_ATTRIB;
  if (m & (IN_DELETE | IN_DELETE_SELF))
    ev |= AX_FS_DELETE;
  if (m & (IN_MOVED_FROM | IN_MOVED_TO | IN_MOVE_SELF))
    ev |= AX_FS_RENAME;
  if (m & IN_CREATE)
    ev |= AX_FS_CREATE;
  if (m & IN_Q_OVERFLOW)
    ev |= AX_FS_OVERFLOW;
  if (m & (IN_IGNORED | IN_UNMOUNT))
    ev |= AX_FS_ENDED;
  return ev;
}

static struct ax__wd *wd_find(const ax_loop_t *loop, int wd) {
  for (size_t i = 0; i < loop->nwds; i++)
    if (loop->wds[i]->wd == wd)
      return loop->wds[i];
  return NULL;
}

static void wd_remove(ax_loop_t *loop, struct ax__wd *w, bool kernel_dropped) {
  for (size_t i = 0; i < loop->nwds; i++)
    if (loop->wds[i] == w) {
      loop->wds[i] = loop->wds[--loop->nwds];
      break;
    }
  if (!kernel_dropped && loop->inotify)
    inotify_rm_watch(loop->inotify->fd, w->wd);
  ax__free(loop, w);
}

/* A descriptor is released once no source uses it and no delivery walks it. */
static void wd_maybe_release(ax_loop_t *loop, struct ax__wd *w, bool dropped) {
  if (ax__list_empty(&w->sources) && !w->busy)
    wd_remove(loop, w, dropped || w->dropped);
}

static void fs_call(ax_loop_t *loop, struct ax__fswatch *f, unsigned ev,
                    const char *name) {
  loop->stats.fs_events++;
  ((ax_fswatch_cb)f->h.cb)(&f->h, ev, name, f->h.data);
}

/* Deliver to every source of @w; a callback may stop or free any of them. */
static void wd_deliver(ax_loop_t *loop, struct ax__wd *w, unsigned ev,
                       const char *name) {
  struct ax__list batch;
  ax__list_init(&batch);
  ax__list_splice(&batch, &w->sources);
  w->busy++;
  while (!ax__list_empty(&batch)) {
    struct ax__fswatch *f = ax__container_of(batch.next, struct ax__fswatch, link);
    ax__list_unlink(&f->link);
    unsigned mine = ev & (f->h.aux | AX_FS_OVERFLOW | AX_FS_ENDED);
    if (ev & AX_FS_ENDED) { /* the kernel dropped the watch: stop first */
      f->wd = NULL;
      ax__source_deactivate(&f->h);
    } else {
      ax__list_append(&w->sources, &f->link);
    }
    if (mine)
      fs_call(loop, f, mine, name);
  }
  w->busy--;
  if (ev & AX_FS_ENDED)
    w->dropped = true;
  wd_maybe_release(loop, w, false);
}

static void inotify_event(ax_loop_t *loop, struct ax__io *io, unsigned revents) {
  (void)revents;
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  for (int round = 0; round < 16; round++) { /* bounded: fairness */
    ssize_t n = read(io->fd, buf, sizeof buf);
    if (n <= 0)
      return;
    for (char *p = buf; p < buf + n;) {
      const struct inotify_event *e = (const struct inotify_event *)(void *)p;
      p += sizeof *e + e->len;
      unsigned ev = from_inotify(e->mask);
      if (e->mask & IN_Q_OVERFLOW) {
        for (size_t i = 0; i < loop->nwds; i++)
          wd_deliver(loop, loop->wds[i], AX_FS_OVERFLOW, NULL);
        continue;
      }
      struct ax__wd *w = wd_find(loop, e->wd);
      if (w && ev)
        wd_deliver(loop, w, ev, e->len ? e->name : NULL);
    }
  }
}

static int inotify_open(ax_loop_t *loop) {
  if (loop->inotify)
    return 0;
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd < 0)
    return -errno;
  int rc = ax__io_internal(loop, fd, inotify_event, &loop->inotify);
  if (rc)
    close(fd);
  return rc;
}

static int wd_get(ax_loop_t *loop, const char *path, unsigned mask,
                  struct ax__wd **out) {
  int wd = inotify_add_watch(loop->inotify->fd, path, to_inotify(mask) | IN_MASK_ADD);
  if (wd < 0)
    return -errno;
  struct ax__wd *w = wd_find(loop, wd);
  if (!w) {
    if (loop->nwds == loop->wdcap) {
      size_t cap = loop->wdcap ? loop->wdcap * 2 : 8;
      struct ax__wd **a = ax__realloc(loop, loop->wds, cap * sizeof *a);
      if (!a)
        goto nomem;
      loop->wds = a;
      loop->wdcap = cap;
    }
    if (!(w = ax__alloc(loop, sizeof *w)))
      goto nomem;
    memset(w, 0, sizeof *w);
    w->wd = wd;
    ax__list_init(&w->sources);
    loop->wds[loop->nwds++] = w;
  }
  *out = w;
  return 0;
nomem:
  inotify_rm_watch(loop->inotify->fd, wd);
  return -ENOMEM;
}

int ax_fswatch_new(ax_loop_t *loop, ax_fswatch_cb cb, void *data,
                   ax_source_t **out) {
  int rc = ax__source_new(loop, AX_SOURCE_FSWATCH, (void (*)(void))cb, data, out);
  if (rc == 0)
    ax__list_init(&((struct ax__fswatch *)*out)->link);
  return rc;
}

int ax_fswatch_start(ax_source_t *src, const char *path, unsigned mask) {
  int rc = ax__source_check(src, AX_SOURCE_FSWATCH);
  if (rc)
    return rc;
  if (!path || !*path || (mask & ~AX_FS_ALL))
    return -EINVAL;
  size_t len = strlen(path);
  if (len >= PATH_MAX)
    return -ENAMETOOLONG;
  ax_loop_t *loop = src->loop;
  struct ax__fswatch *f = (struct ax__fswatch *)src;
  char *copy = ax__alloc(loop, len + 1);
  if (!copy)
    return -ENOMEM;
  memcpy(copy, path, len + 1);
  struct ax__wd *w = NULL;
  if ((rc = inotify_open(loop)) == 0)
    rc = wd_get(loop, path, mask ? mask : AX_FS_ALL, &w);
  if (rc) {
    ax__free(loop, copy);
    return rc;
  }
  w->busy++; /* restarting on the same path must not drop the shared watch */
  ax_source_stop(src);
  w->busy--;
  ax__fswatch_release(loop, f);
  f->path = copy;
  f->h.aux = mask ? mask : AX_FS_ALL;
  f->wd = w;
  ax__list_append(&w->sources, &f->link);
  ax__source_activate(src);
  return 0;
}

void ax__fswatch_stop(ax_loop_t *loop, struct ax__fswatch *f) {
  ax__list_unlink(&f->link);
  struct ax__wd *w = f->wd;
  f->wd = NULL;
  if (w)
    wd_maybe_release(loop, w, false);
}

void ax__fswatch_release(ax_loop_t *loop, struct ax__fswatch *f) {
  if (f->path)
    ax__free(loop, f->path);
  f->path = NULL;
}

void ax__fswatch_fini(ax_loop_t *loop) {
  while (loop->nwds)
    wd_remove(loop, loop->wds[0], false);
  ax__free(loop, loop->wds);
  loop->wds = NULL;
  loop->wdcap = 0;
  if (loop->inotify)
    ax__source_destroy(&loop->inotify->h);
  loop->inotify = NULL;
}
