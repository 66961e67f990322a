/*
 * Buffers, the read pool and buffer lists (axon/buf.h, src/proactor/buf.c).
 *
 * Buffers: references, wrapped memory whose free function runs exactly
 * once (never on an error), copies, sub-slices for every window of a
 * slice. The pool: outstanding and idle counts, the keep bound, recycling,
 * a pool freed while buffers are out (the last release frees it: under
 * ASan, no leak and no use-after-free), the loop's own pool. Allocator
 * hooks: a counting allocator sees every block freed; each allocation of a
 * scenario fails in turn and every call then returns -ENOMEM, leaves its
 * object as documented and leaks nothing. Buffer lists: 100 000 random
 * operations (push, push_copy, consume, take, peek, iov, find, at, clear)
 * against a reference byte array, with buffers of the three kinds shared
 * between slices and their reference counts checked against the list;
 * empty slices ignored.
 */
#include "testutil.h"

#include "proactor/proactor_int.h"

#include "memfx.h"

static uint64_t rng = 0x2545f4914f6cdd1du;
static size_t rnd(size_t n) { return (size_t)(xorshift(&rng) % n); }

/* ---- buffers -------------------------------------------------------------- */

static void test_buf_refs(void **state) {
  fx_t *fx = *state;
  ax_loop_t *loops[] = {NULL, fx->loop};
  ax_buf_t *b = NULL;
  for (int l = 0; l < 2; l++) {
    long before = mem.live;
    assert_int_equal(ax_buf_new(loops[l], 100, &b), 0);
    assert_int_equal(mem.live - before, l); /* through the hooks, or malloc */
    assert_int_equal(ax_buf_refs(b), 1);
    assert_int_equal(ax_buf_cap(b), 100);
    memset(ax_buf_data(b), 7, 100); /* all of it is ours (ASan) */
    assert_ptr_equal(ax_buf_ref(b), b);
    assert_int_equal(ax_buf_refs(b), 2);
    ax_buf_unref(b);
    assert_int_equal(ax_buf_refs(b), 1);
    ax_buf_unref(b);
    assert_int_equal(mem.live, before);
  }
  ax_buf_unref(NULL);
  assert_int_equal(ax_buf_new(NULL, 0, &b), -EINVAL);
  assert_int_equal(ax_buf_new(NULL, ((size_t)1 << 31) + 1, &b), -EINVAL);
  assert_int_equal(ax_buf_new(NULL, 1, NULL), -EINVAL);
  assert_balanced(fx);
}

static int wrap_calls;
static void *wrap_data, *wrap_ctx;
static void wrap_free(void *data, void *ctx) {
  wrap_calls++;
  wrap_data = data;
  wrap_ctx = ctx;
}

/* The free function runs once, at the last release, with its arguments;
 * never when the wrap fails. */
static void test_buf_wrap(void **state) {
  fx_t *fx = *state;
  static char mem1[32] = "wrapped";
  ax_buf_t *b;
  int ctx;
  wrap_calls = 0;
  assert_int_equal(ax_buf_wrap(fx->loop, mem1, sizeof mem1, wrap_free, &ctx,
                               &b),
                   0);
  assert_int_equal(mem.live, fx->base + 1); /* the header, through the hooks */
  assert_ptr_equal(ax_buf_data(b), mem1);
  assert_int_equal(ax_buf_cap(b), sizeof mem1);
  ax_buf_ref(b);
  ax_buf_ref(b);
  ax_buf_unref(b);
  ax_buf_unref(b);
  assert_int_equal(wrap_calls, 0);
  ax_buf_unref(b);
  assert_int_equal(wrap_calls, 1);
  assert_ptr_equal(wrap_data, mem1);
  assert_ptr_equal(wrap_ctx, &ctx);
  assert_balanced(fx);
  /* No free function: static data. */
  assert_int_equal(ax_buf_wrap(NULL, mem1, 3, NULL, NULL, &b), 0);
  ax_buf_unref(b);
  /* Errors call nothing. */
  assert_int_equal(ax_buf_wrap(NULL, NULL, 3, wrap_free, NULL, &b), -EINVAL);
  assert_int_equal(ax_buf_wrap(NULL, mem1, 3, wrap_free, NULL, NULL), -EINVAL);
  mem.n = 0;
  mem.fail_at = 0;
  assert_int_equal(ax_buf_wrap(fx->loop, mem1, 3, wrap_free, NULL, &b),
                   -ENOMEM);
  mem.fail_at = -1;
  assert_int_equal(wrap_calls, 1);
  assert_balanced(fx);
}

static void test_buf_copy(void **state) {
  fx_t *fx = *state;
  ax_slice_t s;
  char src[50];
  for (size_t i = 0; i < sizeof src; i++)
    src[i] = (char)(i * 7);
  assert_int_equal(ax_buf_copy(fx->loop, src, sizeof src, &s), 0);
  assert_int_equal(s.off, 0);
  assert_int_equal(s.len, sizeof src);
  assert_int_equal(ax_buf_refs(s.buf), 1);
  assert_ptr_not_equal(ax_slice_ptr(s), src);
  assert_memory_equal(ax_slice_ptr(s), src, sizeof src);
  ax_buf_unref(s.buf);
  /* Zero bytes: a buffer with an empty slice. */
  assert_int_equal(ax_buf_copy(fx->loop, NULL, 0, &s), 0);
  assert_non_null(s.buf);
  assert_int_equal(s.len, 0);
  assert_int_equal(ax_buf_refs(s.buf), 1);
  ax_buf_unref(s.buf);
  assert_int_equal(ax_buf_copy(NULL, NULL, 1, &s), -EINVAL);
  assert_int_equal(ax_buf_copy(NULL, src, 1, NULL), -EINVAL);
  assert_null(ax_slice_ptr((ax_slice_t){0}));
  assert_balanced(fx);
}

/* Every window of a slice: inside it is a slice of the same buffer, without
 * a reference; outside it is -ERANGE and *out is untouched. */
static void test_slice_sub(void **state) {
  fx_t *fx = *state;
  ax_buf_t *b;
  assert_int_equal(ax_buf_new(fx->loop, 16, &b), 0);
  ax_slice_t s = {b, 3, 8}, out;
  const ax_slice_t mark = {(ax_buf_t *)&out, 99, 99};
  for (size_t off = 0; off <= 11; off++) {
    for (size_t len = 0; len <= 11; len++) {
      out = mark;
      int r = ax_slice_sub(s, off, len, &out);
      if (off + len > s.len) {
        assert_int_equal(r, -ERANGE);
        assert_memory_equal(&out, &mark, sizeof out);
        continue;
      }
      assert_int_equal(r, 0);
      assert_int_equal(out.len, len);
      if (len == 0) {
        assert_null(out.buf); /* the empty slice */
      } else {
        assert_ptr_equal(out.buf, b);
        assert_int_equal(out.off, 3 + off);
        assert_ptr_equal(ax_slice_ptr(out), ax_buf_data(b) + 3 + off);
      }
      assert_int_equal(ax_buf_refs(b), 1);
    }
  }
  assert_int_equal(ax_slice_sub(s, SIZE_MAX, 1, &out), -ERANGE);
  assert_int_equal(ax_slice_sub(s, 1, SIZE_MAX, &out), -ERANGE);
  assert_int_equal(ax_slice_sub((ax_slice_t){0}, 0, 0, &out), 0);
  assert_int_equal(ax_slice_sub((ax_slice_t){0}, 0, 1, &out), -ERANGE);
  ax_buf_unref(b);
  assert_balanced(fx);
}

/* ---- pool ----------------------------------------------------------------- */

static void test_pool_counts(void **state) {
  fx_t *fx = *state;
  ax_bufpool_t *p;
  ax_buf_t *b[5];
  assert_int_equal(ax_bufpool_new(fx->loop, 63, 2, &p), -EINVAL);
  assert_int_equal(ax_bufpool_new(fx->loop, 64, 2, NULL), -EINVAL);
  assert_int_equal(ax_bufpool_new(fx->loop, 256, 2, &p), 0);
  assert_int_equal(ax_bufpool_bufsize(p), 256);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(ax_bufpool_get(p, &b[i]), 0);
    assert_int_equal(ax_buf_refs(b[i]), 1);
    assert_int_equal(ax_buf_cap(b[i]), 256);
    memset(ax_buf_data(b[i]), i, 256);
  }
  assert_int_equal(ax_bufpool_outstanding(p), 5);
  assert_int_equal(ax_bufpool_idle(p), 0);
  assert_int_equal(mem.live, fx->base + 6);
  /* Extra references keep a buffer out. */
  ax_buf_ref(b[0]);
  ax_buf_unref(b[0]);
  assert_int_equal(ax_bufpool_outstanding(p), 5);
  for (int i = 0; i < 5; i++) {
    ax_buf_unref(b[i]);
    assert_int_equal(ax_bufpool_outstanding(p), 4 - i);
    assert_int_equal(ax_bufpool_idle(p), i < 2 ? i + 1 : 2); /* keep: 2 */
  }
  assert_int_equal(mem.live, fx->base + 3); /* the pool and 2 kept */
  /* Kept buffers are handed out again, before any new one. */
  ax_buf_t *x, *y, *z;
  assert_int_equal(ax_bufpool_get(p, &x), 0);
  assert_int_equal(ax_bufpool_get(p, &y), 0);
  assert_true((x == b[0] || x == b[1]) && (y == b[0] || y == b[1]) && x != y);
  assert_int_equal(ax_bufpool_idle(p), 0);
  assert_int_equal(ax_buf_refs(x), 1);
  assert_int_equal(ax_bufpool_get(p, &z), 0);
  assert_int_equal(mem.live, fx->base + 4);
  ax_buf_unref(x);
  ax_buf_unref(y);
  ax_buf_unref(z);
  ax_bufpool_free(p);
  assert_balanced(fx);
  /* keep 0: nothing is kept. */
  assert_int_equal(ax_bufpool_new(NULL, 64, 0, &p), 0);
  assert_int_equal(ax_bufpool_get(p, &x), 0);
  ax_buf_unref(x);
  assert_int_equal(ax_bufpool_idle(p), 0);
  ax_bufpool_free(p);
  ax_bufpool_free(NULL);
}

/* Freed while buffers are out: they stay usable and the last one back frees
 * the pool (ASan: no leak, no use-after-free). */
static void test_pool_freed_while_out(void **state) {
  fx_t *fx = *state;
  ax_loop_t *loops[] = {NULL, fx->loop};
  for (int l = 0; l < 2; l++) {
    ax_bufpool_t *p;
    ax_buf_t *b[3];
    assert_int_equal(ax_bufpool_new(loops[l], 128, 8, &p), 0);
    for (int i = 0; i < 3; i++)
      assert_int_equal(ax_bufpool_get(p, &b[i]), 0);
    ax_buf_unref(b[0]); /* one idle */
    ax_buf_ref(b[2]);
    ax_bufpool_free(p);
    if (loops[l])
      assert_int_equal(mem.live, fx->base + 3); /* the pool, 2 out */
    memset(ax_buf_data(b[1]), 1, 128);
    memset(ax_buf_data(b[2]), 2, 128);
    ax_buf_unref(b[1]);
    ax_buf_unref(b[2]);
    assert_int_equal(ax_buf_data(b[2])[127], 2); /* still referenced */
    ax_buf_unref(b[2]);
    assert_balanced(fx);
  }
}

/* The loop's read pool: made once, 16 KiB buffers, freed with the loop
 * (the teardown's count proves it). */
static void test_loop_pool(void **state) {
  fx_t *fx = *state;
  ax_bufpool_t *p = ax_loop_bufpool(fx->loop);
  ax_buf_t *b;
  ax_proactor_info_t info;
  assert_non_null(p);
  assert_ptr_equal(ax_loop_bufpool(fx->loop), p);
  assert_int_equal(ax_bufpool_bufsize(p), 16384);
  assert_null(ax_loop_bufpool(NULL));
  assert_int_equal(ax_bufpool_get(p, &b), 0);
  assert_int_equal(ax_proactor_info(fx->loop, &info), 0);
  assert_int_equal(info.read_bufs_out, 1);
  ax_buf_unref(b);
  assert_int_equal(ax_proactor_info(fx->loop, &info), 0);
  assert_int_equal(info.read_bufs_out, 0);
  assert_int_equal(info.read_bufs_idle, 1);
  fx->base = mem.live; /* the proactor's state stays until the loop goes */
}

/* ---- allocation failures --------------------------------------------------- */

/*
 * One pass through every call that allocates. Returns 0 when it got to the
 * end, else -ENOMEM after checking that the call that failed left its
 * object as documented; either way everything is released.
 */
static int alloc_scenario(ax_loop_t *loop) {
  ax_buf_t *b = NULL, *w = NULL, *pb = NULL;
  ax_bufpool_t *p = NULL;
  ax_buflist_t bl;
  ax_slice_t s = {0}, t;
  char bytes[64];
  int r, calls = wrap_calls;
  ax_buflist_init(&bl, loop);
  memset(bytes, 'q', sizeof bytes);
  if ((r = ax_buf_new(loop, 40, &b)) < 0)
    goto out;
  memset(ax_buf_data(b), 'b', 40);
  if ((r = ax_buf_wrap(loop, bytes, sizeof bytes, wrap_free, NULL, &w)) < 0) {
    assert_int_equal(wrap_calls, calls); /* not called on error */
    goto out;
  }
  if ((r = ax_buf_copy(loop, "copy", 4, &s)) < 0)
    goto out;
  /* Pushes: the ring grows at 0 and 8 slices. */
  for (int i = 0; i < 12; i++) {
    size_t n = ax_buflist_count(&bl), bytes_before = ax_buflist_bytes(&bl);
    uint32_t refs = ax_buf_refs(b);
    if ((r = ax_buflist_push(&bl, (ax_slice_t){b, (uint32_t)i, 2})) < 0) {
      assert_int_equal(ax_buflist_count(&bl), n); /* nothing appended */
      assert_int_equal(ax_buflist_bytes(&bl), bytes_before);
      assert_int_equal(ax_buf_refs(b), refs);
      goto out;
    }
  }
  if ((r = ax_buflist_push(&bl, (ax_slice_t){w, 0, 10})) < 0 ||
      (r = ax_buflist_push(&bl, s)) < 0)
    goto out;
  size_t n = ax_buflist_count(&bl), nb = ax_buflist_bytes(&bl);
  if ((r = ax_buflist_push_copy(&bl, "tail", 4)) < 0) {
    assert_int_equal(ax_buflist_count(&bl), n);
    assert_int_equal(ax_buflist_bytes(&bl), nb);
    goto out;
  }
  /* A take across slices copies; on failure the list is unchanged. */
  if ((r = ax_buflist_take(&bl, 5, &t)) < 0) {
    char head[5];
    assert_int_equal(ax_buflist_bytes(&bl), nb + 4);
    ax_buflist_peek(&bl, head, 5);
    assert_memory_equal(head, "bbbbb", 5);
    goto out;
  }
  assert_memory_equal(ax_slice_ptr(t), "bbbbb", 5);
  ax_buf_unref(t.buf);
  if ((r = ax_bufpool_new(loop, 64, 1, &p)) < 0)
    goto out;
  if ((r = ax_bufpool_get(p, &pb)) < 0) {
    assert_int_equal(ax_bufpool_outstanding(p), 0);
    goto out;
  }
  ax_buf_unref(pb);
  pb = NULL;
  r = ax_bufpool_get(p, &pb); /* from the idle list: cannot fail */
  assert_int_equal(r, 0);
out:
  ax_buflist_clear(&bl);
  ax_buf_unref(pb);
  ax_bufpool_free(p);
  ax_buf_unref(s.buf);
  ax_buf_unref(w);
  ax_buf_unref(b);
  return r;
}

static void test_alloc_failures(void **state) {
  fx_t *fx = *state;
  int done = 0;
  wrap_calls = 0;
  for (long k = 0; k < 100 && !done; k++) {
    mem.n = 0;
    mem.fail_at = k;
    int r = alloc_scenario(fx->loop);
    done = mem.n <= k; /* allocation k never came: the scenario succeeded */
    mem.fail_at = -1;
    assert_int_equal(r, done ? 0 : -ENOMEM);
    assert_balanced(fx);
  }
  assert_true(done);
  /* Every wrap that succeeded was freed once. */
  assert_true(wrap_calls > 0);
}

/* ---- buffer lists -------------------------------------------------------- */

static void test_buflist_empty(void **state) {
  fx_t *fx = *state;
  ax_buflist_t bl;
  ax_slice_t s, t;
  struct iovec iov[2];
  ax_buflist_init(&bl, fx->loop);
  assert_int_equal(ax_buf_copy(fx->loop, NULL, 0, &s), 0);
  long before = mem.live;
  assert_int_equal(ax_buflist_push(&bl, s), 0);
  assert_int_equal(ax_buflist_push(&bl, (ax_slice_t){0}), 0);
  assert_int_equal(ax_buflist_push_copy(&bl, "x", 0), 0);
  assert_int_equal(ax_buflist_count(&bl), 0);
  assert_int_equal(ax_buflist_bytes(&bl), 0);
  assert_int_equal(mem.live, before); /* no ring for nothing */
  assert_int_equal(ax_buf_refs(s.buf), 1);
  assert_int_equal(ax_buflist_take(&bl, 0, &t), -EINVAL);
  assert_int_equal(ax_buflist_take(&bl, 1, &t), -EINVAL);
  assert_int_equal(ax_buflist_find(&bl, 'x', 100), -1);
  assert_int_equal(ax_buflist_iov(&bl, iov, 2), 0);
  ax_buflist_consume(&bl, 0);
  ax_buflist_peek(&bl, NULL, 0);
  ax_buflist_clear(&bl);
  /* After a clear the list is usable again. */
  assert_int_equal(ax_buflist_push_copy(&bl, "abc", 3), 0);
  assert_int_equal(ax_buflist_take(&bl, 4, &t), -EINVAL);
  assert_int_equal(ax_buflist_take(&bl, 3, NULL), -EINVAL);
  assert_int_equal(ax_buflist_bytes(&bl), 3);
  ax_buflist_clear(&bl);
  assert_int_equal(ax_buflist_count(&bl), 0);
  ax_buf_unref(s.buf);
  assert_balanced(fx);
}

/* The reference: the list's bytes, in order. */
static struct {
  unsigned char d[1 << 16];
  size_t head, len;
} ref;

static unsigned char *ref_at(size_t i) { return ref.d + ref.head + i; }

static void ref_push(const void *p, size_t n) {
  if (ref.head + ref.len + n > sizeof ref.d) {
    memmove(ref.d, ref.d + ref.head, ref.len);
    ref.head = 0;
  }
  memcpy(ref.d + ref.head + ref.len, p, n);
  ref.len += n;
}

static void ref_consume(size_t n) {
  ref.head += n;
  ref.len -= n;
}

#define NSRC 8
#define SRCLEN 256

static int src_freed;
static void src_free(void *data, void *ctx) {
  (void)data;
  (void)ctx;
  src_freed++;
}

/* Reference counts of the sources: ours plus one per slice in the list;
 * no slice is empty (an empty one would hold a reference for nothing). */
static void check_refs(const ax_buflist_t *bl, ax_buf_t *const *src) {
  size_t total = 0;
  for (size_t i = 0; i < ax_buflist_count(bl); i++) {
    assert_true(ax_buflist_at(bl, i).len > 0);
    total += ax_buflist_at(bl, i).len;
  }
  assert_int_equal(total, ax_buflist_bytes(bl));
  for (int j = 0; j < NSRC; j++) {
    uint32_t n = 1;
    for (size_t i = 0; i < ax_buflist_count(bl); i++)
      n += ax_buflist_at(bl, i).buf == src[j];
    assert_int_equal(ax_buf_refs(src[j]), n);
  }
}

/* Lengths: small most of the time, sometimes up to @max. */
static size_t rlen(size_t max) {
  if (max == 0)
    return 0;
  return rnd(4) ? rnd(max < 16 ? max + 1 : 17) : rnd(max + 1);
}

/* One random operation, checked against the reference. */
static void model_op(ax_buflist_t *bl, ax_buf_t *const *src, int *zero_copy) {
  size_t bytes = ax_buflist_bytes(bl);
  assert_int_equal(bytes, ref.len);
  switch (rnd(10)) {
  case 0:
  case 1: { /* push a window of a source (maybe empty) */
    if (bytes > 8192)
      break;
    ax_buf_t *b = src[rnd(NSRC)];
    size_t off = rnd(SRCLEN + 1), len = rlen(SRCLEN - off);
    size_t n = ax_buflist_count(bl);
    assert_int_equal(
        ax_buflist_push(bl, (ax_slice_t){b, (uint32_t)off, (uint32_t)len}), 0);
    assert_int_equal(ax_buflist_count(bl), n + (len > 0));
    ref_push(ax_buf_data(b) + off, len);
    break;
  }
  case 2: { /* push a copy */
    if (bytes > 8192)
      break;
    size_t off = rnd(SRCLEN), len = rlen(SRCLEN - off);
    const char *p = ax_buf_data(src[rnd(NSRC)]) + off;
    assert_int_equal(ax_buflist_push_copy(bl, p, len), 0);
    ref_push(p, len);
    break;
  }
  case 3: { /* consume */
    size_t n = rnd(8) == 0 ? bytes : rlen(bytes);
    ax_buflist_consume(bl, n);
    ref_consume(n);
    break;
  }
  case 4: { /* take */
    ax_slice_t t;
    if (bytes == 0) {
      assert_int_equal(ax_buflist_take(bl, 1, &t), -EINVAL);
      break;
    }
    size_t n = 1 + rlen(bytes - 1);
    ax_slice_t first = ax_buflist_at(bl, 0);
    assert_int_equal(ax_buflist_take(bl, n, &t), 0);
    assert_int_equal(t.len, n);
    assert_memory_equal(ax_slice_ptr(t), ref_at(0), n);
    if (n <= first.len) { /* within the first slice: zero-copy */
      assert_ptr_equal(t.buf, first.buf);
      assert_int_equal(t.off, first.off);
      ++*zero_copy;
    } else {
      assert_int_equal(ax_buf_refs(t.buf), 1);
    }
    ax_buf_unref(t.buf);
    ref_consume(n);
    break;
  }
  case 5: { /* peek */
    static unsigned char out[1 << 16];
    size_t n = rlen(bytes);
    ax_buflist_peek(bl, out, n);
    assert_memory_equal(out, ref_at(0), n);
    assert_int_equal(ax_buflist_bytes(bl), bytes);
    break;
  }
  case 6: { /* iov */
    struct iovec iov[8];
    int max = 1 + (int)rnd(8), n = ax_buflist_iov(bl, iov, max);
    size_t at = 0;
    assert_int_equal(n, (int)ax_buflist_count(bl) < max
                            ? (int)ax_buflist_count(bl) : max);
    for (int i = 0; i < n; i++) {
      ax_slice_t s = ax_buflist_at(bl, (size_t)i);
      assert_ptr_equal(iov[i].iov_base, ax_slice_ptr(s));
      assert_int_equal(iov[i].iov_len, s.len);
      assert_memory_equal(iov[i].iov_base, ref_at(at), s.len);
      at += s.len;
    }
    break;
  }
  case 7:
  case 8: { /* find */
    int c = rnd(2) && bytes ? *ref_at(rnd(bytes)) : (int)rnd(256);
    size_t limit = rnd(4) ? rnd(bytes + 10) : SIZE_MAX;
    size_t k = limit < bytes ? limit : bytes;
    const unsigned char *hit = k ? memchr(ref_at(0), c, k) : NULL;
    ptrdiff_t want = hit ? hit - ref_at(0) : -1;
    assert_int_equal(ax_buflist_find(bl, c, limit), want);
    break;
  }
  default:
    if (rnd(200) == 0) { /* clear, rarely */
      ax_buflist_clear(bl);
      ref_consume(ref.len);
    }
    break;
  }
}

static void test_buflist_model(void **state) {
  fx_t *fx = *state;
  static unsigned char wrapped[2][SRCLEN];
  ax_buf_t *src[NSRC];
  ax_bufpool_t *pool;
  ax_buflist_t bl;
  int zero_copy = 0;
  /* Sources of every kind: heap, wrapped, pooled. */
  assert_int_equal(ax_bufpool_new(fx->loop, SRCLEN, 4, &pool), 0);
  for (int j = 0; j < NSRC; j++) {
    if (j < 3)
      assert_int_equal(ax_buf_new(fx->loop, SRCLEN, &src[j]), 0);
    else if (j < 5)
      assert_int_equal(ax_buf_wrap(fx->loop, wrapped[j - 3], SRCLEN, src_free,
                                   NULL, &src[j]),
                       0);
    else
      assert_int_equal(ax_bufpool_get(pool, &src[j]), 0);
    for (int i = 0; i < SRCLEN; i++)
      ax_buf_data(src[j])[i] = (char)rnd(64); /* repeats, for find */
  }
  src_freed = 0;
  ref.head = ref.len = 0;
  ax_buflist_init(&bl, fx->loop);
  for (int op = 0; op < 100000; op++) {
    model_op(&bl, src, &zero_copy);
    size_t n = ax_buflist_count(&bl);
    assert_true(n == 0 || (ax_buflist_at(&bl, 0).len > 0 &&
                           ax_buflist_at(&bl, n - 1).len > 0));
    if (op % 997 == 0)
      check_refs(&bl, src);
  }
  check_refs(&bl, src);
  assert_true(zero_copy > 1000);
  ax_buflist_clear(&bl);
  for (int j = 0; j < NSRC; j++) {
    assert_int_equal(ax_buf_refs(src[j]), 1);
    ax_buf_unref(src[j]);
  }
  assert_int_equal(src_freed, 2);
  assert_int_equal(ax_bufpool_outstanding(pool), 0);
  assert_int_equal(ax_bufpool_idle(pool), 3);
  ax_bufpool_free(pool);
  assert_balanced(fx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_buf_refs, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_buf_wrap, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_buf_copy, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_slice_sub, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_pool_counts, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_pool_freed_while_out, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_loop_pool, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_alloc_failures, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_buflist_empty, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_buflist_model, fx_setup,
                                      fx_teardown),
  };
  return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
