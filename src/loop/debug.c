/*
 * ax_loop_dump() and ax_loop_verify(): the loop's structures in a readable
 * list (lua-t's show) and a check of every invariant (gwrl's structure
 * integrity idea). Both walk the slabs, so they see every source.
 */
#include <stdarg.h>
#include <string.h>

#include "loop/loop_int.h"

int ax__corrupt(char *why, size_t len, const char *fmt, ...) {
  if (why && len) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, len, fmt, ap);
    va_end(ap);
  }
  return AX_ECORRUPT;
}

/* ---- dump --------------------------------------------------------------- */

static void dump_io(FILE *out, const struct ax__io *io) {
  fprintf(out, " fd=%d events=%s%s%s%s gen=%u", io->fd,
          io->events & AX_READABLE ? "r" : "-", io->events & AX_WRITABLE ? "w" : "-",
          io->events & AX_IO_EDGE ? " edge" : "",
          io->events & AX_IO_ONESHOT ? " oneshot" : "", io->gen);
}

static void dump_one(const struct ax_source *src, void *ctx) {
  FILE *out = ctx;
  const ax_loop_t *loop = src->loop;
  if (src->flags & AX__F_CLOSING)
    return;
  fprintf(out, "  %-8s %p %s %s data=%p", ax_source_kind_name((ax_source_kind_t)src->kind),
          (const void *)src, src->flags & AX__F_ACTIVE ? "active  " : "inactive",
          src->kind == AX__KIND_INTERNAL ? "internal" : src->flags & AX__F_REF ? "ref  " : "unref",
          src->data);
  switch (src->kind) {
  case AX_SOURCE_IO:
  case AX_SOURCE_WAKE:
  case AX__KIND_INTERNAL:
    dump_io(out, (const struct ax__io *)src);
    break;
  case AX_SOURCE_TIMER: {
    const struct ax__timer *t = (const struct ax__timer *)src;
    if (src->flags & AX__F_ACTIVE)
      fprintf(out, " due_in=%lldms", (long long)(t->deadline - loop->now));
    fprintf(out, " repeat=%ums", src->aux);
    break;
  }
  case AX_SOURCE_DATE:
    fprintf(out, " when=%llums", (unsigned long long)((const struct ax__timer *)src)->deadline);
    break;
  case AX_SOURCE_SIGNAL:
    fprintf(out, " signo=%d", ((const struct ax__signal *)src)->signo);
    break;
  case AX_SOURCE_FSWATCH: {
    const struct ax__fswatch *f = (const struct ax__fswatch *)src;
    fprintf(out, " path=%s mask=%#x wd=%d", f->path ? f->path : "-", src->aux,
            f->wd ? f->wd->wd : -1);
    break;
  }
  default:
    break;
  }
  fputc('\n', out);
}

void ax_loop_dump(const ax_loop_t *loop, FILE *out) {
  if (!loop || !out)
    return;
  ax_loop_info_t in;
  ax_loop_info(loop, &in);
  fprintf(out, "loop %p backend=%s now=%llums running=%s alive=%s\n",
          (const void *)loop, in.backend, (unsigned long long)loop->now,
          loop->running ? "yes" : "no", ax_loop_alive(loop) ? "yes" : "no");
  if (in.fallback_reason)
    fprintf(out, "  fallback: %s\n", in.fallback_reason);
  for (int k = 1; k < AX__KIND_COUNT; k++)
    ax__slab_foreach(loop, k, dump_one, out);
  fprintf(out,
          "  sources=%zu active=%zu referenced=%zu timers_linked=%zu\n"
          "  iterations=%llu io_events=%llu stale_events=%llu timers_fired=%llu "
          "defers_run=%llu signals=%llu fs_events=%llu wakeups=%llu\n",
          in.sources, in.active, in.referenced, loop->wheel.count,
          (unsigned long long)in.iterations, (unsigned long long)in.io_events,
          (unsigned long long)in.stale_events, (unsigned long long)in.timers_fired,
          (unsigned long long)in.defers_run, (unsigned long long)in.signals,
          (unsigned long long)in.fs_events, (unsigned long long)in.wakeups);
  fprintf(out,
          "  mailbox: depth=%zu capacity=%u posts_run=%llu mailbox_wakes=%llu "
          "handoffs_adopted=%llu handoffs_failed=%llu spin_ns=%u%s\n",
          in.mailbox_depth, ax_mailbox_capacity(loop->mb),
          (unsigned long long)in.posts_run,
          (unsigned long long)in.mailbox_wakes,
          (unsigned long long)in.handoffs_adopted,
          (unsigned long long)in.handoffs_failed, loop->spin_ns,
          loop->persistent ? " persistent" : "");
}

/* ---- verify ------------------------------------------------------------- */

struct census {
  char *why;
  size_t len;
  int rc;
  size_t active, refd, timers;
};

static int verify_fd_source(const ax_loop_t *loop, const struct ax__io *io,
                            char *why, size_t len) {
  if (io->fd < 0 || io->fd >= loop->fdcap || loop->fdtab[io->fd] != io)
    return ax__corrupt(why, len, "%s %p: fd %d not in the fd table",
                       ax_source_kind_name((ax_source_kind_t)io->h.kind),
                       (const void *)io, io->fd);
  bool active = io->h.flags & AX__F_ACTIVE;
  if (active != (io->events != 0))
    return ax__corrupt(why, len, "io %p: active=%d but events=%#x",
                       (const void *)io, active, io->events);
  return 0;
}

static void census_one(const struct ax_source *src, void *ctx) {
  struct census *c = ctx;
  if (c->rc || (src->flags & AX__F_CLOSING))
    return;
  const ax_loop_t *loop = src->loop;
  bool active = src->flags & AX__F_ACTIVE;
  if (src->kind != AX__KIND_INTERNAL && active) {
    c->active++;
    c->refd += (src->flags & AX__F_REF) != 0;
  }
  switch (src->kind) {
  case AX_SOURCE_IO:
  case AX_SOURCE_WAKE:
  case AX__KIND_INTERNAL:
    c->rc = verify_fd_source(loop, (const struct ax__io *)src, c->why, c->len);
    break;
  case AX_SOURCE_TIMER:
    if (active && src->pos != 0xfffeu)
      c->timers++;
    else if (!active && src->pos != 0xfffeu)
      c->rc = ax__corrupt(c->why, c->len, "inactive timer %p still linked",
                          (const void *)src);
    break;
  default:
    break;
  }
}

static int verify_fdtab(const ax_loop_t *loop, char *why, size_t len) {
  for (int fd = 0; fd < loop->fdcap; fd++) {
    const struct ax__io *io = loop->fdtab[fd];
    if (io && (io->fd != fd || (io->h.flags & AX__F_CLOSING) ||
               io->h.kind == AX__KIND_FREE))
      return ax__corrupt(why, len, "fd table slot %d holds %p (fd %d, kind %d)", fd,
                         (const void *)io, io->fd, io->h.kind);
  }
  return 0;
}

int ax_loop_verify(const ax_loop_t *loop, char *why, size_t why_len) {
  if (!loop)
    return -EINVAL;
  if (why && why_len)
    why[0] = '\0';
  int rc = ax__wheel_verify(loop, why, why_len);
  if (!rc)
    rc = ax__dates_verify(loop, why, why_len);
  if (!rc)
    rc = verify_fdtab(loop, why, why_len);
  struct census c = {why, why_len, rc, 0, 0, 0};
  for (int k = 1; !c.rc && k < AX__KIND_COUNT; k++)
    ax__slab_foreach(loop, k, census_one, &c);
  if (c.rc)
    return c.rc;
  if (c.active != loop->nactive || c.refd != loop->nrefd)
    return ax__corrupt(why, why_len, "counts: %zu active / %zu referenced found, "
                       "loop says %zu / %zu", c.active, c.refd, loop->nactive, loop->nrefd);
  if (c.timers != loop->wheel.count)
    return ax__corrupt(why, why_len, "%zu linked timers found, wheel counts %zu",
                       c.timers, loop->wheel.count);
  return 0;
}
