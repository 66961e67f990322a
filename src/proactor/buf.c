/*
 * Buffers, the read pool and buffer lists.
 *
 * A buffer is one allocation: a 48-byte header followed by its bytes, or a
 * header pointing at wrapped memory. The header says how the memory goes
 * back: to the allocator it came from, to its pool, or to a user function.
 * Reference counts are plain (see buf.h: one thread at a time).
 */
#include <stdlib.h>
#include <string.h>

#include "proactor/proactor_int.h"

enum { BUF_HEAP, BUF_POOL, BUF_WRAP };

struct ax_buf {
  uint32_t refs;
  uint32_t cap;
  uint8_t kind;
  char *data;
  union {
    ax_loop_t *loop;     /* BUF_HEAP: allocator (NULL: malloc) */
    ax_bufpool_t *pool;  /* BUF_POOL */
    struct {
      ax_buf_free_fn fn; /* BUF_WRAP */
      void *ctx;
    } wrap;
  } u;
  ax_loop_t *hdr_loop; /* BUF_WRAP: allocator of this header */
};

struct ax_bufpool {
  ax_loop_t *loop;
  ax_buf_t *free;     /* free list through data's first word */
  size_t bufsize, keep, idle, out;
  bool dead;          /* freed while buffers were out: last one frees it */
};

#define BUF_MAX ((size_t)1 << 31)
#define POOL_BUFSIZE (16 * 1024)
#define POOL_KEEP 64

static void *mem_alloc(ax_loop_t *loop, size_t n) {
  return loop ? ax__alloc(loop, n) : malloc(n);
}

static void mem_free(ax_loop_t *loop, void *p) {
  if (loop)
    ax__free(loop, p);
  else
    free(p);
}

/* Header and bytes in one allocation. */
static ax_buf_t *heap_new(ax_loop_t *loop, size_t cap) {
  ax_buf_t *b = mem_alloc(loop, sizeof(*b) + cap);
  if (b == NULL)
    return NULL;
  b->refs = 1;
  b->cap = (uint32_t)cap;
  b->kind = BUF_HEAP;
  b->data = (char *)(b + 1);
  b->u.loop = loop;
  b->hdr_loop = loop;
  return b;
}

int ax_buf_new(ax_loop_t *loop, size_t cap, ax_buf_t **out) {
  if (out == NULL || cap == 0 || cap > BUF_MAX)
    return -EINVAL;
  return (*out = heap_new(loop, cap)) != NULL ? 0 : -ENOMEM;
}

int ax_buf_copy(ax_loop_t *loop, const void *p, size_t len, ax_slice_t *out) {
  ax_buf_t *b;
  if (out == NULL || (len > 0 && p == NULL) || len > BUF_MAX)
    return -EINVAL;
  if ((b = heap_new(loop, len ? len : 1)) == NULL)
    return -ENOMEM;
  if (len)
    memcpy(b->data, p, len);
  *out = (ax_slice_t){.buf = b, .off = 0, .len = (uint32_t)len};
  return 0;
}

int ax_buf_wrap(ax_loop_t *loop, void *data, size_t len, ax_buf_free_fn fn,
                void *ctx, ax_buf_t **out) {
  ax_buf_t *b;
  if (out == NULL || (data == NULL && len > 0) || len > BUF_MAX)
    return -EINVAL;
  if ((b = mem_alloc(loop, sizeof(*b))) == NULL)
    return -ENOMEM;
  b->refs = 1;
  b->cap = (uint32_t)len;
  b->kind = BUF_WRAP;
  b->data = data;
  b->u.wrap.fn = fn;
  b->u.wrap.ctx = ctx;
  b->hdr_loop = loop;
  *out = b;
  return 0;
}

ax_buf_t *ax_buf_ref(ax_buf_t *b) {
  assert(b->refs > 0 && b->refs < UINT32_MAX);
  b->refs++;
  return b;
}

uint32_t ax_buf_refs(const ax_buf_t *b) { return b->refs; }
char *ax_buf_data(const ax_buf_t *b) { return b->data; }
size_t ax_buf_cap(const ax_buf_t *b) { return b->cap; }

static void pool_put(ax_bufpool_t *p, ax_buf_t *b);

void ax_buf_unref(ax_buf_t *b) {
  if (b == NULL)
    return;
  assert(b->refs > 0);
  if (--b->refs > 0)
    return;
  switch (b->kind) {
  case BUF_POOL:
    pool_put(b->u.pool, b);
    break;
  case BUF_WRAP:
    if (b->u.wrap.fn)
      b->u.wrap.fn(b->data, b->u.wrap.ctx);
    mem_free(b->hdr_loop, b);
    break;
  default:
    mem_free(b->u.loop, b);
    break;
  }
}

int ax_slice_sub(ax_slice_t s, size_t off, size_t len, ax_slice_t *out) {
  if (out == NULL)
    return -EINVAL;
  if (off > s.len || len > s.len - off)
    return -ERANGE;
  *out = (ax_slice_t){.buf = len ? s.buf : NULL,
                      .off = len ? s.off + (uint32_t)off : 0,
                      .len = (uint32_t)len};
  return 0;
}

/* ---- pool --------------------------------------------------------------- */

int ax_bufpool_new(ax_loop_t *loop, size_t bufsize, size_t keep,
                   ax_bufpool_t **out) {
  ax_bufpool_t *p;
  if (out == NULL || bufsize < 64 || bufsize > BUF_MAX)
    return -EINVAL;
  if ((p = mem_alloc(loop, sizeof(*p))) == NULL)
    return -ENOMEM;
  memset(p, 0, sizeof(*p));
  p->loop = loop;
  p->bufsize = bufsize;
  p->keep = keep;
  *out = p;
  return 0;
}

static void pool_release(ax_bufpool_t *p) {
  while (p->free) {
    ax_buf_t *b = p->free;
    memcpy(&p->free, b->data, sizeof(p->free));
    mem_free(p->loop, b);
  }
  p->idle = 0;
}

void ax_bufpool_free(ax_bufpool_t *p) {
  if (p == NULL)
    return;
  pool_release(p);
  if (p->out > 0) {
    p->dead = true; /* the last buffer back frees the pool */
    return;
  }
  mem_free(p->loop, p);
}

int ax_bufpool_get(ax_bufpool_t *p, ax_buf_t **out) {
  ax_buf_t *b = p->free;
  if (b != NULL) {
    memcpy(&p->free, b->data, sizeof(p->free));
    p->idle--;
  } else if ((b = heap_new(p->loop, p->bufsize)) == NULL) {
    return -ENOMEM;
  }
  b->refs = 1;
  b->kind = BUF_POOL;
  b->u.pool = p;
  p->out++;
  *out = b;
  return 0;
}

static void pool_put(ax_bufpool_t *p, ax_buf_t *b) {
  p->out--;
  if (p->dead || p->idle >= p->keep) {
    mem_free(p->loop, b);
    if (p->dead && p->out == 0)
      mem_free(p->loop, p);
    return;
  }
  memcpy(b->data, &p->free, sizeof(p->free));
  p->free = b;
  p->idle++;
}

size_t ax_bufpool_bufsize(const ax_bufpool_t *p) { return p->bufsize; }
size_t ax_bufpool_outstanding(const ax_bufpool_t *p) { return p->out; }
size_t ax_bufpool_idle(const ax_bufpool_t *p) { return p->idle; }

ax_bufpool_t *ax_loop_bufpool(ax_loop_t *loop) {
  struct ax__px *px;
  if (loop == NULL || (px = ax__px(loop)) == NULL)
    return NULL;
  if (px->pool == NULL &&
      ax_bufpool_new(loop, POOL_BUFSIZE, POOL_KEEP, &px->pool) < 0)
    return NULL;
  return px->pool;
}

void ax__bufpool_fini(ax_loop_t *loop) {
  struct ax__px *px = loop->px;
  if (px && px->pool) {
    /* Buffers users still hold break buf.h's rule (release them before
     * the loop is freed): their release would reach the freed loop's
     * allocator. Pooled buffers released before this point are freed here. */
    ax_bufpool_free(px->pool);
    px->pool = NULL;
  }
}

/* ---- buffer lists ------------------------------------------------------- */

void ax_buflist_init(ax_buflist_t *bl, ax_loop_t *loop) {
  memset(bl, 0, sizeof(*bl));
  bl->loop = loop;
}

static ax_slice_t *at(const ax_buflist_t *bl, size_t i) {
  return &bl->v[(bl->head + i) & (bl->cap - 1)];
}

void ax_buflist_clear(ax_buflist_t *bl) {
  for (uint32_t i = 0; i < bl->n; i++)
    ax_buf_unref(at(bl, i)->buf);
  if (bl->v)
    mem_free(bl->loop, bl->v);
  ax_loop_t *loop = bl->loop;
  ax_buflist_init(bl, loop);
}

static int grow(ax_buflist_t *bl) {
  uint32_t ncap = bl->cap ? bl->cap * 2 : 8;
  ax_slice_t *v;
  if (ncap == 0 || ncap > (1u << 28))
    return -ENOMEM;
  if ((v = mem_alloc(bl->loop, ncap * sizeof(*v))) == NULL)
    return -ENOMEM;
  for (uint32_t i = 0; i < bl->n; i++)
    v[i] = *at(bl, i);
  if (bl->v)
    mem_free(bl->loop, bl->v);
  bl->v = v;
  bl->cap = ncap;
  bl->head = 0;
  return 0;
}

int ax_buflist_push(ax_buflist_t *bl, ax_slice_t s) {
  int r;
  if (s.len == 0)
    return 0;
  if (bl->n == bl->cap && (r = grow(bl)) < 0)
    return r;
  *at(bl, bl->n) = s;
  ax_buf_ref(s.buf);
  bl->n++;
  bl->bytes += s.len;
  return 0;
}

int ax_buflist_push_copy(ax_buflist_t *bl, const void *p, size_t len) {
  ax_slice_t s;
  int r;
  if (len == 0)
    return 0;
  if ((r = ax_buf_copy(bl->loop, p, len, &s)) < 0)
    return r;
  r = ax_buflist_push(bl, s);
  ax_buf_unref(s.buf);
  return r;
}

ax_slice_t ax_buflist_at(const ax_buflist_t *bl, size_t i) {
  assert(i < bl->n);
  return *at(bl, i);
}

int ax_buflist_iov(const ax_buflist_t *bl, struct iovec *iov, int max) {
  int n = 0;
  for (; n < max && (uint32_t)n < bl->n; n++) {
    const ax_slice_t *s = at(bl, (size_t)n);
    iov[n].iov_base = ax_buf_data(s->buf) + s->off;
    iov[n].iov_len = s->len;
  }
  return n;
}

void ax_buflist_consume(ax_buflist_t *bl, size_t len) {
  assert(len <= bl->bytes);
  bl->bytes -= len;
  while (len > 0) {
    ax_slice_t *s = at(bl, 0);
    if (len < s->len) {
      s->off += (uint32_t)len;
      s->len -= (uint32_t)len;
      return;
    }
    len -= s->len;
    ax_buf_unref(s->buf);
    bl->head = (bl->head + 1) & (bl->cap - 1);
    bl->n--;
  }
}

void ax_buflist_peek(const ax_buflist_t *bl, void *dst, size_t len) {
  char *d = dst;
  assert(len <= bl->bytes);
  for (size_t i = 0; len > 0; i++) {
    const ax_slice_t *s = at(bl, i);
    size_t k = len < s->len ? len : s->len;
    memcpy(d, ax_buf_data(s->buf) + s->off, k);
    d += k;
    len -= k;
  }
}

int ax_buflist_take(ax_buflist_t *bl, size_t len, ax_slice_t *out) {
  ax_slice_t *s;
  int r;
  if (out == NULL || len == 0 || len > bl->bytes)
    return -EINVAL;
  s = at(bl, 0);
  if (len <= s->len) {
    *out = (ax_slice_t){.buf = ax_buf_ref(s->buf), .off = s->off,
                        .len = (uint32_t)len};
  } else {
    ax_buf_t *b;
    if ((r = ax_buf_new(bl->loop, len, &b)) < 0)
      return r;
    ax_buflist_peek(bl, ax_buf_data(b), len);
    *out = (ax_slice_t){.buf = b, .off = 0, .len = (uint32_t)len};
  }
  ax_buflist_consume(bl, len);
  return 0;
}

ptrdiff_t ax_buflist_find(const ax_buflist_t *bl, int c, size_t limit) {
  size_t base = 0;
  for (uint32_t i = 0; i < bl->n && base < limit; i++) {
    const ax_slice_t *s = at(bl, i);
    size_t k = s->len < limit - base ? s->len : limit - base;
    const char *p = memchr(ax_buf_data(s->buf) + s->off, c, k);
    if (p != NULL)
      return (ptrdiff_t)(base + (size_t)(p - (ax_buf_data(s->buf) + s->off)));
    base += s->len;
  }
  return -1;
}
