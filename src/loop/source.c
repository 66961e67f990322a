/*
 * Sources: slab allocation, state accounting and the operations common to
 * every kind.
 *
 * Each kind has a slab of same-sized objects. Chunks grow geometrically (32
 * objects, doubling up to 262144) and are handed out with a bump pointer, so
 * memory is touched only when used; freed objects go to a LIFO free list and
 * are reused first. Chunks are returned to the allocator when the loop is
 * freed. A timer costs sizeof(struct ax__timer) = 56 bytes plus its share of
 * a chunk header, and nothing else: the wheel links it in place.
 *
 * Chunks of 2 MiB and more (a loop with ~40 k sources of one kind) are
 * offered to transparent huge pages when the memory comes from libc: page
 * faults, not our code, dominate creating millions of timers (one fault per
 * 73 timers with 4 KiB pages; bench/timers_10m). The slab also lets ax_loop_dump() and
 * ax_loop_verify() enumerate every live source without a global list.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "loop/loop_int.h"

#define CHUNK_FIRST 32u
#define CHUNK_MAX 262144u
#define HUGE_PAGE ((size_t)2 << 20)
#define CHUNK_HDR ((sizeof(struct ax__chunk) + 15u) & ~(size_t)15u)

static size_t kind_size(int kind) {
  switch (kind) {
  case AX_SOURCE_IO:
  case AX_SOURCE_WAKE:
  case AX__KIND_INTERNAL:
    return sizeof(struct ax__io);
  case AX_SOURCE_TIMER:
  case AX_SOURCE_DATE:
    return sizeof(struct ax__timer);
  case AX_SOURCE_DEFER:
    return sizeof(struct ax__defer);
  case AX_SOURCE_SIGNAL:
    return sizeof(struct ax__signal);
  case AX_SOURCE_FSWATCH:
    return sizeof(struct ax__fswatch);
  default:
    return 0;
  }
}

/* Objects are 8-aligned: every member is at most 8-aligned. */
static size_t slot_size(int kind) { return (kind_size(kind) + 7u) & ~(size_t)7u; }

static char *chunk_objects(struct ax__chunk *c) { return (char *)c + CHUNK_HDR; }

/* Advise THP on the 2 MiB-aligned part of a big chunk; a hint, errors are
 * harmless (THP off, or "never"). Only for libc memory: a user allocator's
 * memory is the user's to advise. */
static void chunk_advise(const ax_loop_t *loop, void *p, size_t size) {
  if (!loop->libc_alloc || size < HUGE_PAGE)
    return;
  uintptr_t lo = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
  uintptr_t hi = ((uintptr_t)p + size) & ~(uintptr_t)(HUGE_PAGE - 1);
  if (hi > lo)
    (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
}

/* Constant sizes let the compiler inline the stores: creating a source is
 * on the hot path of timer-heavy code (a call to memset was ~9% of it). */
static void zero_slot(void *obj, size_t size) {
  switch (size) {
  case 48:
    memset(obj, 0, 48);
    break;
  case 56:
    memset(obj, 0, 56);
    break;
  case 64:
    memset(obj, 0, 64);
    break;
  default:
    memset(obj, 0, size);
  }
}

static struct ax_source *slab_alloc(ax_loop_t *loop, int kind) {
  struct ax__slab *s = &loop->slabs[kind];
  struct ax_source *obj = s->free;
  if (obj) {
    s->free = (struct ax_source *)(void *)obj->loop;
  } else {
    struct ax__chunk *c = s->chunks;
    if (!c || c->used == c->nobj) {
      uint32_t n = s->next_nobj ? s->next_nobj : CHUNK_FIRST;
      size_t bytes = CHUNK_HDR + (size_t)n * s->objsize;
      c = ax__alloc(loop, bytes);
      if (!c)
        return NULL;
      chunk_advise(loop, c, bytes);
      c->next = s->chunks;
      c->nobj = n;
      c->used = 0;
      s->chunks = c;
      s->next_nobj = n < CHUNK_MAX ? n * 2 : CHUNK_MAX;
    }
    obj = (struct ax_source *)(void *)(chunk_objects(c) +
                                       (size_t)c->used++ * s->objsize);
  }
  zero_slot(obj, s->objsize);
  s->live++;
  return obj;
}

static void slab_free(ax_loop_t *loop, struct ax_source *obj) {
  struct ax__slab *s = &loop->slabs[obj->kind];
  obj->kind = AX__KIND_FREE;
  obj->loop = (ax_loop_t *)(void *)s->free;
  s->free = obj;
  s->live--;
}

void ax__slab_release_all(ax_loop_t *loop) {
  for (int k = 0; k < AX__KIND_COUNT; k++) {
    struct ax__slab *s = &loop->slabs[k];
    while (s->chunks) {
      struct ax__chunk *c = s->chunks;
      s->chunks = c->next;
      ax__free(loop, c);
    }
    s->free = NULL;
    s->live = 0;
  }
}

void ax__slab_init(ax_loop_t *loop) {
  for (int k = 0; k < AX__KIND_COUNT; k++) {
    memset(&loop->slabs[k], 0, sizeof loop->slabs[k]);
    loop->slabs[k].objsize = (uint32_t)slot_size(k);
  }
}

void ax__slab_foreach(const ax_loop_t *loop, int kind,
                      void (*fn)(const struct ax_source *, void *), void *ctx) {
  const struct ax__slab *s = &loop->slabs[kind];
  for (const struct ax__chunk *c = s->chunks; c; c = c->next) {
    const char *base = (const char *)c + CHUNK_HDR;
    for (uint32_t i = 0; i < c->used; i++) {
      const struct ax_source *obj =
          (const struct ax_source *)(const void *)(base + (size_t)i * s->objsize);
      if (obj->kind != AX__KIND_FREE)
        fn(obj, ctx);
    }
  }
}

int ax__source_new(ax_loop_t *loop, int kind, void (*cb)(void), void *data,
                   ax_source_t **out) {
  if (!loop || !cb || !out)
    return -EINVAL;
  struct ax_source *src = slab_alloc(loop, kind);
  if (!src)
    return -ENOMEM;
  src->loop = loop;
  src->data = data;
  src->cb = cb;
  src->kind = (uint8_t)kind;
  src->flags = kind == AX__KIND_INTERNAL ? 0 : AX__F_REF;
  *out = src;
  return 0;
}

/* Internal fd watchers are the loop's business: they are not counted. */
void ax__source_activate(ax_source_t *src) {
  if (src->flags & AX__F_ACTIVE)
    return;
  src->flags |= AX__F_ACTIVE;
  if (src->kind == AX__KIND_INTERNAL)
    return;
  src->loop->nactive++;
  if (src->flags & AX__F_REF)
    src->loop->nrefd++;
}

void ax__source_deactivate(ax_source_t *src) {
  if (!(src->flags & AX__F_ACTIVE))
    return;
  src->flags &= (uint8_t)~AX__F_ACTIVE;
  if (src->kind == AX__KIND_INTERNAL)
    return;
  src->loop->nactive--;
  if (src->flags & AX__F_REF)
    src->loop->nrefd--;
}

/* Disarm by kind; the kind's own unlink keeps its structure consistent. */
static void source_stop(ax_source_t *src) {
  ax_loop_t *loop = src->loop;
  switch (src->kind) {
  case AX_SOURCE_IO:
  case AX_SOURCE_WAKE:
  case AX__KIND_INTERNAL:
    ax__io_disarm((struct ax__io *)src);
    break;
  case AX_SOURCE_TIMER:
    ax__timer_unlink(loop, (struct ax__timer *)src);
    break;
  case AX_SOURCE_DATE:
    ax__date_unlink(loop, (struct ax__timer *)src);
    break;
  case AX_SOURCE_DEFER:
    ax__defer_unlink((struct ax__defer *)src);
    break;
  case AX_SOURCE_SIGNAL:
    ax__signal_stop(loop, (struct ax__signal *)src);
    break;
  case AX_SOURCE_FSWATCH:
    ax__fswatch_stop(loop, (struct ax__fswatch *)src);
    break;
  default:
    assert(0 && "source of unknown kind");
  }
  src->flags &= (uint8_t)~AX__F_FIRED;
  ax__source_deactivate(src);
}

int ax_source_stop(ax_source_t *src) {
  if (!src || (src->flags & AX__F_CLOSING))
    return -EINVAL;
  source_stop(src);
  return 0;
}

/* Give back what the kind holds besides its slab slot (fds, paths). */
static void source_release(ax_source_t *src) {
  ax_loop_t *loop = src->loop;
  switch (src->kind) {
  case AX_SOURCE_IO:
    ax__io_forget((struct ax__io *)src, false);
    break;
  case AX_SOURCE_WAKE:
  case AX__KIND_INTERNAL:
    ax__io_forget((struct ax__io *)src, true);
    break;
  case AX_SOURCE_FSWATCH:
    ax__fswatch_release(loop, (struct ax__fswatch *)src);
    break;
  default:
    break;
  }
}

/*
 * While the loop runs, a freed source may still be referenced by the phase
 * that is dispatching (an event batch, a firing list): its memory goes to
 * loop->closing and is reclaimed between iterations. The CLOSING flag makes
 * every later operation on it a no-op.
 */
void ax__source_destroy(ax_source_t *src) {
  ax_loop_t *loop = src->loop;
  source_stop(src);
  source_release(src);
  src->flags |= AX__F_CLOSING;
  src->cb = NULL;
  if (loop->running) {
    src->data = loop->closing;
    loop->closing = src;
  } else {
    slab_free(loop, src);
  }
}

void ax__reclaim(ax_loop_t *loop) {
  while (loop->closing) {
    ax_source_t *src = loop->closing;
    loop->closing = src->data;
    slab_free(loop, src);
  }
}

void ax_source_free(ax_source_t *src) {
  if (!src || (src->flags & AX__F_CLOSING))
    return;
  ax__source_destroy(src);
}

void ax_source_unref(ax_source_t *src) {
  if (!src || !(src->flags & AX__F_REF) || src->kind == AX__KIND_INTERNAL)
    return;
  src->flags &= (uint8_t)~AX__F_REF;
  if (src->flags & AX__F_ACTIVE)
    src->loop->nrefd--;
}

void ax_source_ref(ax_source_t *src) {
  if (!src || (src->flags & AX__F_REF) || src->kind == AX__KIND_INTERNAL)
    return;
  src->flags |= AX__F_REF;
  if (src->flags & AX__F_ACTIVE)
    src->loop->nrefd++;
}

bool ax_source_is_active(const ax_source_t *src) {
  return src && (src->flags & AX__F_ACTIVE);
}

void *ax_source_data(const ax_source_t *src) {
  return src && !(src->flags & AX__F_CLOSING) ? src->data : NULL;
}

void ax_source_set_data(ax_source_t *src, void *data) {
  if (src && !(src->flags & AX__F_CLOSING))
    src->data = data;
}

ax_loop_t *ax_source_loop(const ax_source_t *src) { return src ? src->loop : NULL; }

ax_source_kind_t ax_source_kind(const ax_source_t *src) {
  return src ? (ax_source_kind_t)src->kind : (ax_source_kind_t)0;
}

const char *ax_source_kind_name(ax_source_kind_t kind) {
  switch ((int)kind) {
  case AX_SOURCE_IO:
    return "io";
  case AX_SOURCE_TIMER:
    return "timer";
  case AX_SOURCE_DATE:
    return "date";
  case AX_SOURCE_DEFER:
    return "defer";
  case AX_SOURCE_SIGNAL:
    return "signal";
  case AX_SOURCE_FSWATCH:
    return "fswatch";
  case AX_SOURCE_WAKE:
    return "wake";
  case AX__KIND_INTERNAL:
    return "internal";
  default:
    return "?";
  }
}

/* Kind check shared by the kind-specific entry points. */
int ax__source_check(const ax_source_t *src, int kind) {
  if (!src || (src->flags & AX__F_CLOSING))
    return -EINVAL;
  return src->kind == kind ? 0 : AX_EKIND;
}
