/*
 * Filter chains and the built-in filters (src/proactor/filter.c) on bare
 * chains, no stream: a recording sink keeps a copy of every emitted slice.
 *
 * Framing across read boundaries: fixed streams of lines and of
 * length-prefixed frames (hdr 1, 2, 4) split in two at every position, then
 * random streams against a reference parser in random pieces, 1-byte
 * pieces included; each piece is fed either in a buffer of its own or
 * inside a larger one, so both ways a stage holds bytes (by reference,
 * copied) are taken. The output must not depend on the split. Zero-copy:
 * a line or frame inside one input slice comes out on the same buffer.
 * Errors: -EMSGSIZE (line and frame bounds, the "\r" rule), -EPROTO at
 * every truncation point, errors of the sink propagated back and sticky,
 * every allocation failed in turn (-ENOMEM, nothing leaked). lenprefix
 * write then read for hdr 1, 2, 4 and the header's own bound; xor twice is
 * the identity, the input is untouched, the key carries across calls and
 * does not move on a refused write; chains of two stages and EOF order.
 *
 * Accounting: every buffer and stage comes from a loop whose allocator
 * counts live blocks; after each test the count is back where it started,
 * so every reference a stage took was dropped. Inputs are unreferenced
 * right after each push, so a stage that kept one without its own
 * reference is a use-after-free under ASan.
 */
#include "testutil.h"

#include "proactor/filter_int.h"

/* ---- counting allocator ------------------------------------------------- */

#include "memfx.h"

/* ---- recording sink ---------------------------------------------------- */

typedef struct rec {
  int n;            /* slices received */
  int cap;
  char **bytes;     /* copies */
  size_t *len;
  ax_buf_t **buf;   /* the slice's buffer (not referenced: identity only) */
  char *all;        /* every byte, concatenated */
  size_t alllen, allcap;
  int fail_at;      /* return fail_rc for slice number fail_at (-1: never) */
  int fail_rc;
} rec_t;

static void rec_init(rec_t *r) {
  memset(r, 0, sizeof(*r));
  r->fail_at = -1;
}

static void rec_free(rec_t *r) {
  for (int i = 0; i < r->n; i++)
    free(r->bytes[i]);
  free(r->bytes);
  free(r->len);
  free(r->buf);
  free(r->all);
  rec_init(r);
}

static int rec_sink(void *ctx, ax_slice_t s) {
  rec_t *r = ctx;
  if (s.len > 0) {
    assert_non_null(s.buf);
    assert_true(ax_buf_refs(s.buf) >= 1);
    assert_true((uint64_t)s.off + s.len <= ax_buf_cap(s.buf));
  }
  if (r->fail_at == r->n) {
    r->fail_at = -1;
    return r->fail_rc;
  }
  if (r->n == r->cap) {
    r->cap = r->cap ? 2 * r->cap : 16;
    r->bytes = realloc(r->bytes, (size_t)r->cap * sizeof(*r->bytes));
    r->len = realloc(r->len, (size_t)r->cap * sizeof(*r->len));
    r->buf = realloc(r->buf, (size_t)r->cap * sizeof(*r->buf));
    assert_true(r->bytes && r->len && r->buf);
  }
  r->bytes[r->n] = malloc(s.len + 1);
  assert_non_null(r->bytes[r->n]);
  if (s.len)
    memcpy(r->bytes[r->n], ax_slice_ptr(s), s.len);
  r->len[r->n] = s.len;
  r->buf[r->n] = s.buf;
  r->n++;
  if (r->alllen + s.len > r->allcap) {
    r->allcap = (r->alllen + s.len) * 2 + 64;
    r->all = realloc(r->all, r->allcap);
    assert_non_null(r->all);
  }
  if (s.len)
    memcpy(r->all + r->alllen, ax_slice_ptr(s), s.len);
  r->alllen += s.len;
  return 0;
}

/* Expected frames: a list of (bytes, length). */
typedef struct frames {
  int n, cap;
  const char **p;
  size_t *len;
} frames_t;

static void fr_add(frames_t *f, const char *p, size_t len) {
  if (f->n == f->cap) {
    f->cap = f->cap ? 2 * f->cap : 16;
    f->p = realloc(f->p, (size_t)f->cap * sizeof(*f->p));
    f->len = realloc(f->len, (size_t)f->cap * sizeof(*f->len));
    assert_true(f->p && f->len);
  }
  f->p[f->n] = p;
  f->len[f->n++] = len;
}

static void fr_free(frames_t *f) {
  free(f->p);
  free(f->len);
  memset(f, 0, sizeof(*f));
}

static void assert_frames(const rec_t *r, const frames_t *f, const char *ctx) {
  if (r->n != f->n)
    fail_msg("%s: %d frames, expected %d", ctx, r->n, f->n);
  for (int i = 0; i < f->n; i++)
    if (r->len[i] != f->len[i] || memcmp(r->bytes[i], f->p[i], f->len[i]))
      fail_msg("%s: frame %d is \"%.*s\" (%zu), expected \"%.*s\" (%zu)", ctx,
               i, (int)r->len[i], r->bytes[i], r->len[i], (int)f->len[i],
               f->p[i], f->len[i]);
}

/* ---- feeding ------------------------------------------------------------- */

/* A chain's stages, built by the test. */
typedef void (*build_fn)(struct ax__chain *c, ax_loop_t *loop, const void *arg);

/* Ways to put a piece into a buffer. */
enum { PAD_NONE, PAD_BIG, PAD_RANDOM };

static uint64_t rng = 0x9e3779b97f4a7c15u;

static size_t rnd(size_t n) { return (size_t)(xorshift(&rng) % n); }

/*
 * Push @len bytes at @p as one slice, in a buffer of its own (PAD_NONE) or
 * in the middle of a larger one (PAD_BIG: 16 KiB, like a read buffer), and
 * drop the caller's reference at once: the stage owns what it keeps.
 */
static int push_piece(struct ax__chain *c, ax_loop_t *loop, const char *p,
                      size_t len, int pad) {
  ax_slice_t s;
  int r;
  if (pad == PAD_RANDOM)
    pad = rnd(2) ? PAD_BIG : PAD_NONE;
  if (pad == PAD_NONE || len > 4096) {
    if ((r = ax_buf_copy(loop, p, len, &s)) < 0)
      return r;
  } else {
    ax_buf_t *b;
    size_t off = 1 + rnd(64);
    if ((r = ax_buf_new(loop, 16384, &b)) < 0)
      return r;
    memset(ax_buf_data(b), '\n', 16384); /* garbage around the piece */
    memcpy(ax_buf_data(b) + off, p, len);
    s = (ax_slice_t){.buf = b, .off = (uint32_t)off, .len = (uint32_t)len};
  }
  r = ax__chain_push(c, s);
  ax_buf_unref(s.buf);
  return r;
}

/*
 * Build a chain, feed @data cut at @cuts (ncuts offsets, increasing), then
 * EOF; returns the first error. The chain is finalized before returning.
 */
static int run(ax_loop_t *loop, build_fn build, const void *arg,
               const char *data, size_t len, const size_t *cuts, int ncuts,
               int pad, rec_t *rec) {
  struct ax__chain c;
  size_t at = 0;
  int r = 0;
  ax__chain_init(&c, loop, rec_sink, rec);
  build(&c, loop, arg);
  for (int i = 0; i <= ncuts && r == 0; i++) {
    size_t end = i < ncuts ? cuts[i] : len;
    r = push_piece(&c, loop, data + at, end - at, pad);
    at = end;
  }
  if (r == 0)
    r = ax__chain_eof(&c);
  ax__chain_fini(&c);
  return r;
}

/* Random cuts: pieces of 1 byte (often) to @maxpiece bytes. */
static int random_cuts(size_t len, size_t maxpiece, size_t *cuts, int max) {
  int n = 0;
  size_t at = 0;
  for (;;) {
    size_t k = rnd(4) == 0 ? 1 : 1 + rnd(maxpiece);
    if (at + k >= len || n == max)
      return n;
    at += k;
    cuts[n++] = at;
  }
}

/* Run at every two-piece split and for @iters random splits; every run must
 * give @want frames and status @rc. */
static void run_all_splits(const fx_t *fx, build_fn build, const void *arg,
                           const char *data, size_t len, const frames_t *want,
                           int rc, int iters, const char *what) {
  static size_t cuts[1 << 16];
  char ctx[160];
  for (size_t i = 0; i <= len; i++) {
    for (int pad = PAD_NONE; pad <= PAD_BIG; pad++) {
      rec_t rec;
      rec_init(&rec);
      snprintf(ctx, sizeof ctx, "%s, split at %zu, pad %d", what, i, pad);
      int r = run(fx->loop, build, arg, data, len, &i, 1, pad, &rec);
      if (r != rc)
        fail_msg("%s: status %d, expected %d", ctx, r, rc);
      assert_frames(&rec, want, ctx);
      rec_free(&rec);
      assert_balanced(fx);
    }
  }
  for (int it = 0; it < iters; it++) {
    rec_t rec;
    rec_init(&rec);
    int n = random_cuts(len, it % 2 ? 3 : 40, cuts, 1 << 16);
    snprintf(ctx, sizeof ctx, "%s, random split %d (%d pieces)", what, it,
             n + 1);
    int r = run(fx->loop, build, arg, data, len, cuts, n, PAD_RANDOM, &rec);
    if (r != rc)
      fail_msg("%s: status %d, expected %d", ctx, r, rc);
    assert_frames(&rec, want, ctx);
    rec_free(&rec);
    assert_balanced(fx);
  }
}

/* ---- stage builders ---------------------------------------------------------- */

/* Add the stage a constructor returned (@rc its status) through *@ops and
 * *@st: pointers, since the call's arguments are evaluated in any order. */
static void add(struct ax__chain *c, int rc, const ax_filter_ops_t **ops,
                void **st) {
  assert_int_equal(rc, 0);
  assert_int_equal(ax__chain_add(c, *ops, *st), 0);
}

static void build_line(struct ax__chain *c, ax_loop_t *loop, const void *arg) {
  const ax_filter_ops_t *ops;
  void *st;
  add(c, ax__filter_line_new(loop, *(const size_t *)arg, &ops, &st), &ops, &st);
}

typedef struct lp_arg {
  unsigned hdr;
  size_t max;
} lp_arg_t;

static void build_lp_read(struct ax__chain *c, ax_loop_t *loop,
                          const void *arg) {
  const lp_arg_t *a = arg;
  const ax_filter_ops_t *ops;
  void *st;
  add(c, ax__filter_lenprefix_new(loop, AX_FILTER_READ, a->hdr, a->max, &ops,
                                  &st),
      &ops, &st);
}

static void build_lp_write(struct ax__chain *c, ax_loop_t *loop,
                           const void *arg) {
  const lp_arg_t *a = arg;
  const ax_filter_ops_t *ops;
  void *st;
  add(c, ax__filter_lenprefix_new(loop, AX_FILTER_WRITE, a->hdr, a->max, &ops,
                                  &st),
      &ops, &st);
}

typedef struct xor_arg {
  const char *key;
  size_t keylen;
} xor_arg_t;

static void build_xor(struct ax__chain *c, ax_loop_t *loop, const void *arg) {
  const xor_arg_t *a = arg;
  const ax_filter_ops_t *ops;
  void *st;
  add(c, ax__filter_xor_new(loop, a->key, a->keylen, &ops, &st), &ops, &st);
}

static void build_xor2(struct ax__chain *c, ax_loop_t *loop, const void *arg) {
  build_xor(c, loop, arg);
  build_xor(c, loop, arg);
}

typedef struct xl_arg {
  xor_arg_t x;
  size_t max;
} xl_arg_t;

static void build_xor_line(struct ax__chain *c, ax_loop_t *loop,
                           const void *arg) {
  const xl_arg_t *a = arg;
  build_xor(c, loop, &a->x);
  build_line(c, loop, &a->max);
}

/* ---- reference parsers ---------------------------------------------------- */

/* Lines of @d as the line filter must give them; returns the status. */
static int ref_lines(const char *d, size_t len, size_t max, frames_t *out) {
  size_t at = 0;
  while (at < len) {
    const char *nl = memchr(d + at, '\n', len - at);
    if (nl == NULL) {
      if (len - at > max)
        return -EMSGSIZE;
      fr_add(out, d + at, len - at); /* as is */
      return 0;
    }
    size_t n = (size_t)(nl - d) - at;
    size_t k = n > 0 && d[at + n - 1] == '\r' ? n - 1 : n;
    if (k > max)
      return -EMSGSIZE;
    fr_add(out, d + at, k);
    at += n + 1;
  }
  return 0;
}

/* Frames of @d as the lenprefix reader must give them. */
static int ref_frames(const unsigned char *d, size_t len, unsigned hdr,
                      size_t max, frames_t *out) {
  size_t at = 0;
  while (at < len) {
    if (len - at < hdr)
      return -EPROTO;
    size_t n = 0;
    for (unsigned i = 0; i < hdr; i++)
      n = n << 8 | d[at + i];
    at += hdr;
    if (n > max)
      return -EMSGSIZE;
    if (len - at < n)
      return -EPROTO;
    fr_add(out, (const char *)d + at, n);
    at += n;
  }
  return 0;
}

/* Append a frame with a @hdr-byte big-endian header to @d at *@len. */
static void put_frame(unsigned char *d, size_t *len, unsigned hdr,
                      const void *p, size_t n) {
  for (unsigned i = 0; i < hdr; i++)
    d[(*len)++] = (unsigned char)(n >> (8 * (hdr - 1 - i)));
  memcpy(d + *len, p, n);
  *len += n;
}

/* ---- line ------------------------------------------------------------------ */

static void test_line_every_split(void **state) {
  fx_t *fx = *state;
  static const char data[] = "alpha\nbeta\r\n\n\r\ngamma delta\nr\rin\r\n"
                             "x\r\r\n\r\rlast";
  frames_t want = {0};
  size_t max = 64, len = sizeof data - 1;
  assert_int_equal(ref_lines(data, len, max, &want), 0);
  assert_int_equal(want.n, 8);
  assert_int_equal(want.len[5], 4); /* "r\rin": an inner "\r" stays */
  assert_int_equal(want.len[6], 2); /* "x\r": only one "\r" is cut */
  assert_int_equal(want.len[7], 6); /* "\r\rlast": as is at EOF */
  run_all_splits(fx, build_line, &max, data, len, &want, 0, 200, "line");
  fr_free(&want);
  /* Ending with a newline: nothing more at EOF. */
  static const char two[] = "one\ntwo\n";
  frames_t w2 = {0};
  ref_lines(two, 8, max, &w2);
  assert_int_equal(w2.n, 2);
  run_all_splits(fx, build_line, &max, two, 8, &w2, 0, 20, "line2");
  fr_free(&w2);
}

/* Random text of lines (with "\r" here and there) in random pieces, against
 * the reference, with small bounds so that some lines are too long. */
static void test_line_random(void **state) {
  fx_t *fx = *state;
  static char data[2048];
  static size_t cuts[2048];
  char ctx[64];
  for (int it = 0; it < 400; it++) {
    size_t len = rnd(sizeof data), max = 1 + rnd(it % 4 ? 300 : 20);
    for (size_t i = 0; i < len; i++) {
      size_t k = rnd(40);
      data[i] = k == 0 ? '\n' : k == 1 ? '\r' : (char)('a' + k % 26);
    }
    frames_t want = {0};
    int rc = ref_lines(data, len, max, &want);
    int n = random_cuts(len, it % 3 ? 64 : 4, cuts, 2048);
    rec_t rec;
    rec_init(&rec);
    snprintf(ctx, sizeof ctx, "line random %d (max %zu)", it, max);
    int r = run(fx->loop, build_line, &max, data, len, cuts, n, PAD_RANDOM,
                &rec);
    if (r != rc)
      fail_msg("%s: status %d, expected %d", ctx, r, rc);
    assert_frames(&rec, &want, ctx);
    rec_free(&rec);
    fr_free(&want);
    assert_balanced(fx);
  }
}

/* The bound counts the line as delivered: "\r\n" is not part of it. */
static void test_line_max(void **state) {
  fx_t *fx = *state;
  static const struct {
    const char *in;
    int rc;
    int n; /* lines delivered */
  } cases[] = {
      {"12345\n", 0, 1},        {"12345\r\n", 0, 1},
      {"ok\n123456\n", -EMSGSIZE, 1}, {"ok\n123456\r\n", -EMSGSIZE, 1},
      {"ok\n1234567", -EMSGSIZE, 1},  {"ok\n12345\r", -EMSGSIZE, 1},
      {"1234\r", 0, 1},         {"12345", 0, 1},
      {"a\n\n123456789012\n", -EMSGSIZE, 2},
  };
  size_t max = 5;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    frames_t want = {0};
    size_t len = strlen(cases[i].in);
    assert_int_equal(ref_lines(cases[i].in, len, max, &want), cases[i].rc);
    assert_int_equal(want.n, cases[i].n);
    run_all_splits(fx, build_line, &max, cases[i].in, len, &want, cases[i].rc,
                   10, cases[i].in);
    fr_free(&want);
  }
}

/* A line inside one input slice is the input's own buffer; a line across
 * slices is assembled, once. */
static void test_line_zero_copy(void **state) {
  fx_t *fx = *state;
  size_t max = 100;
  struct ax__chain c;
  rec_t rec;
  ax_slice_t a, b;
  rec_init(&rec);
  ax__chain_init(&c, fx->loop, rec_sink, &rec);
  build_line(&c, fx->loop, &max);
  assert_int_equal(ax_buf_copy(fx->loop, "abc\ndef\r\nghijk", 14, &a), 0);
  assert_int_equal(ax__chain_push(&c, a), 0);
  assert_int_equal(rec.n, 2);
  assert_ptr_equal(rec.buf[0], a.buf);
  assert_ptr_equal(rec.buf[1], a.buf);
  /* "ghijk" is held by reference: it is more than a quarter of its buffer */
  assert_int_equal(ax_buf_refs(a.buf), 2);
  ax_buf_unref(a.buf);
  assert_int_equal(ax_buf_copy(fx->loop, "l\njk\n", 5, &b), 0);
  assert_int_equal(ax__chain_push(&c, b), 0);
  assert_int_equal(rec.n, 4);
  assert_int_equal(rec.len[2], 6);
  assert_memory_equal(rec.bytes[2], "ghijkl", 6);
  assert_ptr_not_equal(rec.buf[2], a.buf);
  assert_ptr_not_equal(rec.buf[2], b.buf);
  assert_ptr_equal(rec.buf[3], b.buf);
  assert_int_equal(ax_buf_refs(b.buf), 1); /* nothing held */
  ax_buf_unref(b.buf);
  ax__chain_fini(&c);
  rec_free(&rec);
  assert_balanced(fx);
}

/* A peer trickling bytes must not pin a read buffer per byte: a small piece
 * of a large buffer is copied, the buffer goes back at once. */
static void test_line_trickle(void **state) {
  fx_t *fx = *state;
  size_t max = 10000;
  struct ax__chain c;
  rec_t rec;
  rec_init(&rec);
  ax__chain_init(&c, fx->loop, rec_sink, &rec);
  build_line(&c, fx->loop, &max);
  long before = mem.live;
  for (int i = 0; i < 5000; i++) {
    ax_buf_t *b;
    assert_int_equal(ax_buf_new(fx->loop, 16384, &b), 0);
    ax_buf_data(b)[100] = (char)('a' + i % 26);
    assert_int_equal(ax__chain_push(&c, (ax_slice_t){b, 100, 1}), 0);
    assert_int_equal(ax_buf_refs(b), 1);
    ax_buf_unref(b);
  }
  /* 5000 bytes held in 4 KiB copy buffers: a few blocks, not 5000. */
  assert_true(mem.live - before < 10);
  assert_int_equal(rec.n, 0);
  assert_int_equal(ax__chain_eof(&c), 0);
  assert_int_equal(rec.n, 1);
  assert_int_equal(rec.len[0], 5000);
  for (int i = 0; i < 5000; i++)
    assert_int_equal(rec.bytes[0][i], 'a' + i % 26);
  ax__chain_fini(&c);
  rec_free(&rec);
  assert_balanced(fx);
}

/* ---- lenprefix ------------------------------------------------------------- */

/* Frames of 0, 1, 5 and up to the bound, plus the bound's neighbours. */
static size_t lp_stream(unsigned char *d, unsigned hdr, size_t max) {
  static const char text[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  static char big[300];
  size_t len = 0;
  for (size_t i = 0; i < sizeof big; i++)
    big[i] = (char)i;
  put_frame(d, &len, hdr, "hello", 5);
  put_frame(d, &len, hdr, "", 0);
  put_frame(d, &len, hdr, "x", 1);
  put_frame(d, &len, hdr, text, sizeof text - 1);
  put_frame(d, &len, hdr, big, max < sizeof big ? max : sizeof big);
  put_frame(d, &len, hdr, "", 0);
  put_frame(d, &len, hdr, "\n\0\r", 3);
  return len;
}

static void test_lenprefix_every_split(void **state) {
  fx_t *fx = *state;
  static unsigned char d[1024];
  static const unsigned hdrs[] = {1, 2, 4};
  for (int h = 0; h < 3; h++) {
    lp_arg_t a = {hdrs[h], 200};
    size_t len = lp_stream(d, a.hdr, a.max);
    frames_t want = {0};
    char what[32];
    assert_int_equal(ref_frames(d, len, a.hdr, a.max, &want), 0);
    assert_int_equal(want.n, 7);
    assert_int_equal(want.len[1], 0); /* empty frames are delivered */
    assert_int_equal(want.len[4], 200);
    snprintf(what, sizeof what, "lenprefix hdr %u", a.hdr);
    run_all_splits(fx, build_lp_read, &a, (const char *)d, len, &want, 0, 100,
                   what);
    fr_free(&want);
  }
}

/* Every truncation point: 0 at a frame boundary, else -EPROTO; the frames
 * before it delivered in both cases. A header past the bound: -EMSGSIZE as
 * soon as the header is in, whatever follows. */
static void test_lenprefix_truncated(void **state) {
  fx_t *fx = *state;
  static unsigned char d[1024];
  static const unsigned hdrs[] = {1, 2, 4};
  for (int h = 0; h < 3; h++) {
    lp_arg_t a = {hdrs[h], 200};
    size_t len = lp_stream(d, a.hdr, a.max);
    int bounds = 0, protos = 0;
    for (size_t cut = 0; cut <= len; cut++) {
      frames_t want = {0};
      int rc = ref_frames(d, cut, a.hdr, a.max, &want);
      bounds += rc == 0;
      protos += rc == -EPROTO;
      for (int pad = PAD_NONE; pad <= PAD_BIG; pad++) {
        rec_t rec;
        size_t mid = cut / 2;
        rec_init(&rec);
        assert_int_equal(run(fx->loop, build_lp_read, &a, (const char *)d, cut,
                             &mid, 1, pad, &rec),
                         rc);
        assert_frames(&rec, &want, "truncated");
        rec_free(&rec);
      }
      fr_free(&want);
      assert_balanced(fx);
    }
    assert_int_equal(bounds, 8); /* the empty stream and 7 frame ends */
    assert_int_equal(protos, (int)len + 1 - 8);
    /* Over the bound: 201 announced, only 3 bytes follow. */
    size_t n = 0;
    frames_t want = {0};
    put_frame(d, &n, a.hdr, "ok", 2);
    for (unsigned i = 0; i < a.hdr; i++)
      d[n++] = (unsigned char)(201u >> (8 * (a.hdr - 1 - i)));
    memcpy(d + n, "abc", 3);
    n += 3;
    assert_int_equal(ref_frames(d, n, a.hdr, a.max, &want), -EMSGSIZE);
    run_all_splits(fx, build_lp_read, &a, (const char *)d, n, &want,
                   -EMSGSIZE, 10, "lenprefix over max");
    fr_free(&want);
  }
}

/* Random frames in random pieces, against the reference. */
static void test_lenprefix_random(void **state) {
  fx_t *fx = *state;
  static unsigned char d[8192], body[600];
  static size_t cuts[8192];
  static const unsigned hdrs[] = {1, 2, 4};
  char ctx[64];
  for (size_t i = 0; i < sizeof body; i++)
    body[i] = (unsigned char)rnd(256);
  for (int it = 0; it < 300; it++) {
    lp_arg_t a = {hdrs[it % 3], 1 + rnd(it % 5 ? 600 : 50)};
    size_t len = 0;
    while (len < 4000) {
      size_t n = rnd(4) == 0 ? 0 : rnd(a.hdr == 1 ? 256 : sizeof body);
      put_frame(d, &len, a.hdr, body + rnd(sizeof body - n + 1), n);
    }
    len -= rnd(3) == 0 ? rnd(8) : 0; /* sometimes truncated */
    frames_t want = {0};
    int rc = ref_frames(d, len, a.hdr, a.max, &want);
    int n = random_cuts(len, it % 2 ? 5 : 300, cuts, 8192);
    rec_t rec;
    rec_init(&rec);
    snprintf(ctx, sizeof ctx, "lenprefix random %d (hdr %u, max %zu)", it,
             a.hdr, a.max);
    int r = run(fx->loop, build_lp_read, &a, (const char *)d, len, cuts, n,
                PAD_RANDOM, &rec);
    if (r != rc)
      fail_msg("%s: status %d, expected %d", ctx, r, rc);
    assert_frames(&rec, &want, ctx);
    rec_free(&rec);
    fr_free(&want);
    assert_balanced(fx);
  }
}

/* A frame inside one input slice is the input's own buffer. */
static void test_lenprefix_zero_copy(void **state) {
  fx_t *fx = *state;
  lp_arg_t a = {2, 100};
  unsigned char d[64];
  size_t len = 0;
  struct ax__chain c;
  rec_t rec;
  ax_slice_t s;
  put_frame(d, &len, 2, "first", 5);
  put_frame(d, &len, 2, "second", 6);
  rec_init(&rec);
  ax__chain_init(&c, fx->loop, rec_sink, &rec);
  build_lp_read(&c, fx->loop, &a);
  assert_int_equal(ax_buf_copy(fx->loop, d, len, &s), 0);
  assert_int_equal(ax__chain_push(&c, s), 0);
  assert_int_equal(rec.n, 2);
  assert_ptr_equal(rec.buf[0], s.buf);
  assert_ptr_equal(rec.buf[1], s.buf);
  assert_int_equal(ax_buf_refs(s.buf), 1);
  ax_buf_unref(s.buf);
  assert_int_equal(ax__chain_eof(&c), 0);
  ax__chain_fini(&c);
  rec_free(&rec);
  assert_balanced(fx);
}

/* Write side: one frame per call, header then the payload itself. */
static int lp_write(const fx_t *fx, struct ax__chain *c, const void *p,
                    size_t n) {
  ax_slice_t s;
  assert_int_equal(ax_buf_copy(fx->loop, p, n, &s), 0);
  int r = ax__chain_push(c, s);
  ax_buf_unref(s.buf);
  return r;
}

/* Write then read, hdr 1, 2, 4, with the header's own bound: hdr 1 cannot
 * say 256 even with max 1000, hdr 2 cannot say 65536. */
static void test_lenprefix_roundtrip(void **state) {
  fx_t *fx = *state;
  static const struct {
    unsigned hdr;
    size_t max, ok, too_big;
  } cases[] = {{1, 1000, 255, 256}, {2, 100000, 65535, 65536},
               {4, 70000, 70000, 70001}, {1, 10, 10, 11}};
  static char body[70001];
  static size_t cuts[4096];
  for (size_t i = 0; i < sizeof body; i++)
    body[i] = (char)rnd(256);
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    lp_arg_t a = {cases[k].hdr, cases[k].max};
    struct ax__chain c;
    rec_t w;
    frames_t want = {0};
    rec_init(&w);
    ax__chain_init(&c, fx->loop, rec_sink, &w);
    build_lp_write(&c, fx->loop, &a);
    /* The payload goes on zero-copy, after a header of its own. */
    ax_slice_t s;
    assert_int_equal(ax_buf_copy(fx->loop, "abc", 3, &s), 0);
    assert_int_equal(ax__chain_push(&c, s), 0);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.len[0], a.hdr);
    assert_ptr_equal(w.buf[1], s.buf);
    assert_ptr_not_equal(w.buf[0], s.buf);
    ax_buf_unref(s.buf);
    fr_add(&want, "abc", 3);
    /* An empty frame is a header alone. */
    assert_int_equal(lp_write(fx, &c, "", 0), 0);
    assert_int_equal(w.n, 3);
    fr_add(&want, "", 0);
    for (int i = 0; i < 20; i++) {
      size_t lim = i % 4 && cases[k].ok > 100 ? 100 : cases[k].ok;
      size_t n = rnd(lim + 1);
      assert_int_equal(lp_write(fx, &c, body, n), 0);
      fr_add(&want, body, n);
    }
    assert_int_equal(lp_write(fx, &c, body, cases[k].ok), 0);
    fr_add(&want, body, cases[k].ok);
    int before = w.n;
    assert_int_equal(lp_write(fx, &c, body, cases[k].too_big), -EMSGSIZE);
    assert_int_equal(w.n, before); /* nothing emitted, stage still usable */
    assert_int_equal(lp_write(fx, &c, "end", 3), 0);
    fr_add(&want, "end", 3);
    assert_int_equal(ax__chain_eof(&c), 0);
    ax__chain_fini(&c);
    assert_balanced(fx);
    /* Read it back in random pieces. */
    for (int it = 0; it < 10; it++) {
      rec_t r;
      rec_init(&r);
      int n = random_cuts(w.alllen, it % 2 ? 7 : 5000, cuts, 4096);
      assert_int_equal(run(fx->loop, build_lp_read, &a, w.all, w.alllen, cuts,
                           n, PAD_RANDOM, &r),
                       0);
      assert_frames(&r, &want, "roundtrip");
      rec_free(&r);
      assert_balanced(fx);
    }
    fr_free(&want);
    rec_free(&w);
  }
}

/* ---- xor -------------------------------------------------------------------- */

static void xor_ref(const char *in, size_t len, const xor_arg_t *k, char *out) {
  for (size_t i = 0; i < len; i++)
    out[i] = (char)(in[i] ^ k->key[i % k->keylen]);
}

/* Twice is the identity, in any pieces; once is the reference, so the key
 * position carries across calls; the input is never written. */
static void test_xor(void **state) {
  fx_t *fx = *state;
  static char data[3000], enc[3000];
  static size_t cuts[3000];
  static const char key64[] = "0123456789abcdef0123456789ABCDEF"
                              "!@#$%^&*()_+-=[]{};':,./<>?~`|\\";
  const xor_arg_t keys[] = {{"k", 1}, {"k3y", 3}, {key64, 64}, {"\0\1", 2}};
  for (size_t i = 0; i < sizeof data; i++)
    data[i] = (char)rnd(256);
  for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
    for (int it = 0; it < 40; it++) {
      rec_t r1, r2;
      rec_init(&r1);
      rec_init(&r2);
      size_t len = rnd(sizeof data);
      int n = random_cuts(len, it % 2 ? 3 : 200, cuts, 3000);
      assert_int_equal(run(fx->loop, build_xor, &keys[k], data, len, cuts, n,
                           PAD_RANDOM, &r1),
                       0);
      xor_ref(data, len, &keys[k], enc);
      assert_int_equal(r1.alllen, len);
      assert_memory_equal(r1.all, enc, len);
      assert_int_equal(run(fx->loop, build_xor2, &keys[k], data, len, cuts, n,
                           PAD_RANDOM, &r2),
                       0);
      assert_int_equal(r2.alllen, len);
      assert_memory_equal(r2.all, data, len);
      rec_free(&r1);
      rec_free(&r2);
      assert_balanced(fx);
    }
  }
}

/* The input buffer (borrowed, here shared) is untouched; the output is a new
 * buffer; an empty slice passes as is. */
static void test_xor_input_untouched(void **state) {
  fx_t *fx = *state;
  xor_arg_t k = {"key", 3};
  struct ax__chain c;
  rec_t rec;
  ax_slice_t s;
  rec_init(&rec);
  ax__chain_init(&c, fx->loop, rec_sink, &rec);
  build_xor(&c, fx->loop, &k);
  assert_int_equal(ax_buf_copy(fx->loop, "plain text", 10, &s), 0);
  ax_buf_ref(s.buf); /* shared, as a buffer held elsewhere would be */
  assert_int_equal(ax__chain_push(&c, s), 0);
  assert_memory_equal(ax_slice_ptr(s), "plain text", 10);
  assert_int_equal(ax_buf_refs(s.buf), 2);
  assert_int_equal(rec.n, 1);
  assert_ptr_not_equal(rec.buf[0], s.buf);
  assert_int_equal(ax__chain_push(&c, (ax_slice_t){0}), 0);
  assert_int_equal(rec.n, 2);
  assert_int_equal(rec.len[1], 0);
  ax_buf_unref(s.buf);
  ax_buf_unref(s.buf);
  ax__chain_fini(&c);
  rec_free(&rec);
  assert_balanced(fx);
}

/* A refused write does not move the key: the stream stays in step. */
static void test_xor_refused(void **state) {
  fx_t *fx = *state;
  xor_arg_t k = {"abcde", 5};
  struct ax__chain c;
  rec_t rec;
  char want[8];
  rec_init(&rec);
  ax__chain_init(&c, fx->loop, rec_sink, &rec);
  build_xor(&c, fx->loop, &k);
  assert_int_equal(lp_write(fx, &c, "xy", 2), 0);
  rec.fail_at = 1;
  rec.fail_rc = -ENOBUFS;
  assert_int_equal(lp_write(fx, &c, "zzz", 3), -ENOBUFS);
  assert_int_equal(lp_write(fx, &c, "1234", 4), 0);
  assert_int_equal(rec.n, 2);
  xor_ref("xy1234", 6, &k, want);
  assert_int_equal(rec.alllen, 6);
  assert_memory_equal(rec.all, want, 6);
  ax__chain_fini(&c);
  rec_free(&rec);
  assert_balanced(fx);
}

/* ---- chains ------------------------------------------------------------------- */

/* xor then line: lines of an obfuscated stream, any pieces. */
static void test_chain_xor_line(void **state) {
  fx_t *fx = *state;
  static const char plain[] = "GET / HTTP/1.0\r\nHost: x\r\n\r\ntrailing";
  char enc[sizeof plain];
  xl_arg_t a = {{"s3cr3t", 6}, 64};
  frames_t want = {0};
  size_t len = sizeof plain - 1;
  xor_ref(plain, len, &a.x, enc);
  assert_int_equal(ref_lines(plain, len, a.max, &want), 0);
  assert_int_equal(want.n, 4);
  run_all_splits(fx, build_xor_line, &a, enc, len, &want, 0, 100, "xor+line");
  fr_free(&want);
}

/* A stage that holds everything until EOF, then emits it in one slice
 * per input (by reference: it keeps what it was lent with ax_buf_ref). */
typedef struct holder {
  ax_buflist_t bl;
  int destroyed;
} holder_t;

static int holder_data(ax_filter_t *f, void *state, ax_slice_t in) {
  holder_t *h = state;
  (void)f;
  return ax_buflist_push(&h->bl, in);
}

static int holder_eof(ax_filter_t *f, void *state) {
  holder_t *h = state;
  int r = 0;
  for (size_t i = 0; r == 0 && i < ax_buflist_count(&h->bl); i++)
    r = ax_filter_emit(f, ax_buflist_at(&h->bl, i));
  ax_buflist_clear(&h->bl);
  return r;
}

static void holder_destroy(void *state) {
  holder_t *h = state;
  ax_buflist_clear(&h->bl);
  h->destroyed++;
}

static const ax_filter_ops_t holder_ops = {"holder", holder_data, holder_eof,
                                           holder_destroy};

/* EOF runs the stages in order: the holder's flush reaches the line stage
 * before the line stage's own EOF delivers the unterminated line. */
static void test_chain_eof_order(void **state) {
  fx_t *fx = *state;
  holder_t h = {0};
  struct ax__chain c;
  rec_t rec;
  size_t max = 100;
  frames_t want = {0};
  ax_buflist_init(&h.bl, fx->loop);
  rec_init(&rec);
  ax__chain_init(&c, fx->loop, rec_sink, &rec);
  assert_int_equal(ax__chain_add(&c, &holder_ops, &h), 0);
  build_line(&c, fx->loop, &max);
  assert_int_equal(lp_write(fx, &c, "one\ntw", 6), 0);
  assert_int_equal(lp_write(fx, &c, "o\nthree", 7), 0);
  assert_int_equal(rec.n, 0);
  assert_int_equal(ax__chain_eof(&c), 0);
  fr_add(&want, "one", 3);
  fr_add(&want, "two", 3);
  fr_add(&want, "three", 5);
  assert_frames(&rec, &want, "eof order");
  ax__chain_fini(&c);
  assert_int_equal(h.destroyed, 1);
  fr_free(&want);
  rec_free(&rec);
  assert_balanced(fx);
}

static int destroyed;
static void count_destroy(void *state) {
  (void)state;
  destroyed++;
}
static int bad_emit(ax_filter_t *f, void *state, ax_slice_t in) {
  (void)state;
  in.len += 1; /* past the end of the buffer */
  return ax_filter_emit(f, in);
}

/* No stage: straight to the sink. Bad stages are refused and their state
 * destroyed at once, also when the stage cannot be allocated. A malformed
 * slice is refused by ax_filter_emit. */
static void test_chain_edges(void **state) {
  fx_t *fx = *state;
  struct ax__chain c;
  rec_t rec;
  ax_slice_t s;
  static const ax_filter_ops_t no_data = {"nodata", NULL, NULL, count_destroy};
  static const ax_filter_ops_t bad = {"bad", bad_emit, NULL, count_destroy};
  rec_init(&rec);
  ax__chain_init(&c, fx->loop, rec_sink, &rec);
  assert_true(ax__chain_empty(&c));
  assert_int_equal(ax_buf_copy(fx->loop, "raw", 3, &s), 0);
  assert_int_equal(ax__chain_push(&c, s), 0);
  assert_ptr_equal(rec.buf[0], s.buf);
  assert_int_equal(ax__chain_eof(&c), 0);
  destroyed = 0;
  assert_int_equal(ax__chain_add(&c, NULL, NULL), -EINVAL);
  assert_int_equal(ax__chain_add(&c, &no_data, NULL), -EINVAL);
  assert_int_equal(destroyed, 1);
  mem.n = 0;
  mem.fail_at = 0;
  assert_int_equal(ax__chain_add(&c, &bad, NULL), -ENOMEM);
  mem.fail_at = -1;
  assert_int_equal(destroyed, 2);
  assert_true(ax__chain_empty(&c));
  assert_int_equal(ax__chain_add(&c, &bad, NULL), 0);
  assert_false(ax__chain_empty(&c));
  assert_int_equal(ax__chain_push(&c, s), -EINVAL);
  assert_int_equal(rec.n, 1);
  ax__chain_fini(&c);
  assert_int_equal(destroyed, 3);
  assert_true(ax__chain_empty(&c));
  ax__chain_fini(&c); /* twice is harmless */
  ax_buf_unref(s.buf);
  rec_free(&rec);
  assert_balanced(fx);
}

/* The sink's error comes back from push; the framing stages stop there
 * (later pushes and EOF return it) and release what they held. */
static void test_errors_propagate(void **state) {
  fx_t *fx = *state;
  size_t max = 100;
  lp_arg_t a = {1, 100};
  for (int kind = 0; kind < 2; kind++) {
    struct ax__chain c;
    rec_t rec;
    unsigned char d[64];
    size_t len = 0;
    rec_init(&rec);
    ax__chain_init(&c, fx->loop, rec_sink, &rec);
    if (kind == 0) {
      build_line(&c, fx->loop, &max);
      memcpy(d, "a\nb\nc\npartial", 13);
      len = 13;
    } else {
      build_lp_read(&c, fx->loop, &a);
      put_frame(d, &len, 1, "a", 1);
      put_frame(d, &len, 1, "b", 1);
      put_frame(d, &len, 1, "c", 1);
      put_frame(d, &len, 1, "partial", 7);
      len -= 2;
    }
    rec.fail_at = 1;
    rec.fail_rc = -EIO;
    assert_int_equal(push_piece(&c, fx->loop, (const char *)d, len, PAD_BIG),
                     -EIO);
    assert_int_equal(rec.n, 1);
    assert_int_equal(push_piece(&c, fx->loop, "x\n", 2, PAD_NONE), -EIO);
    assert_int_equal(ax__chain_eof(&c), -EIO);
    assert_int_equal(rec.n, 1);
    ax__chain_fini(&c);
    rec_free(&rec);
    assert_balanced(fx);
  }
}

/* Constructors: argument checks, and -ENOMEM leaves nothing behind. */
static void test_constructors(void **state) {
  fx_t *fx = *state;
  const ax_filter_ops_t *ops;
  void *st;
  assert_int_equal(ax__filter_line_new(fx->loop, 0, &ops, &st), -EINVAL);
  assert_int_equal(ax__filter_line_new(fx->loop, 1, NULL, &st), -EINVAL);
  assert_int_equal(ax__filter_lenprefix_new(fx->loop, AX_FILTER_READ, 3, 10,
                                            &ops, &st),
                   -EINVAL);
  assert_int_equal(ax__filter_lenprefix_new(fx->loop, 3, 2, 10, &ops, &st),
                   -EINVAL);
  assert_int_equal(ax__filter_lenprefix_new(fx->loop, AX_FILTER_WRITE, 2, 0,
                                            &ops, &st),
                   -EINVAL);
  assert_int_equal(ax__filter_xor_new(fx->loop, "k", 0, &ops, &st), -EINVAL);
  assert_int_equal(ax__filter_xor_new(fx->loop, NULL, 1, &ops, &st), -EINVAL);
  static const char k65[65] = {0};
  assert_int_equal(ax__filter_xor_new(fx->loop, k65, 65, &ops, &st), -EINVAL);
  assert_int_equal(ax__filter_xor_new(fx->loop, k65, 64, &ops, &st), 0);
  assert_string_equal(ops->name, "xor");
  ops->destroy(st);
  /* No bound is too large: SIZE_MAX means as large as a buffer can be. */
  assert_int_equal(ax__filter_line_new(NULL, SIZE_MAX, &ops, &st), 0);
  ops->destroy(st);
  mem.n = 0;
  mem.fail_at = 0;
  assert_int_equal(ax__filter_line_new(fx->loop, 10, &ops, &st), -ENOMEM);
  mem.n = 0;
  assert_int_equal(ax__filter_lenprefix_new(fx->loop, AX_FILTER_READ, 2, 10,
                                            &ops, &st),
                   -ENOMEM);
  mem.n = 0;
  assert_int_equal(ax__filter_xor_new(fx->loop, "k", 1, &ops, &st), -ENOMEM);
  mem.fail_at = -1;
  assert_balanced(fx);
}

/* Every allocation of a run fails in turn: the run ends with -ENOMEM or
 * succeeds with the right frames, and nothing leaks either way. */
static void fail_each(const fx_t *fx, build_fn build, const void *arg,
                      const char *data, size_t len, const size_t *cuts,
                      int ncuts, int pad, const frames_t *want) {
  int succeeded = 0;
  for (long k = 0; k < 400 && !succeeded; k++) {
    struct ax__chain c;
    rec_t rec;
    size_t at = 0;
    int r = 0;
    rec_init(&rec);
    ax__chain_init(&c, fx->loop, rec_sink, &rec);
    build(&c, fx->loop, arg); /* its allocations are not the ones tested */
    mem.n = 0;
    mem.fail_at = k;
    for (int i = 0; i <= ncuts && r == 0; i++) {
      size_t end = i < ncuts ? cuts[i] : len;
      r = push_piece(&c, fx->loop, data + at, end - at, pad);
      at = end;
    }
    if (r == 0)
      r = ax__chain_eof(&c);
    succeeded = mem.n <= k;
    mem.fail_at = -1;
    ax__chain_fini(&c);
    if (succeeded) {
      assert_int_equal(r, 0);
      assert_frames(&rec, want, "no failure injected");
    } else {
      assert_int_equal(r, -ENOMEM);
    }
    rec_free(&rec);
    assert_balanced(fx);
  }
  assert_true(succeeded);
}

static void test_enomem(void **state) {
  fx_t *fx = *state;
  static const char text[] = "abc\ndefghij\r\nklm\nno";
  size_t max = 50, cuts[] = {2, 5, 6, 9, 14, 15, 19};
  frames_t want = {0};
  ref_lines(text, sizeof text - 1, max, &want);
  for (int pad = PAD_NONE; pad <= PAD_BIG; pad++)
    fail_each(fx, build_line, &max, text, sizeof text - 1, cuts, 7, pad,
              &want);
  fr_free(&want);
  unsigned char d[64];
  size_t len = 0, lcuts[] = {1, 3, 4, 8, 12};
  lp_arg_t a = {2, 50};
  put_frame(d, &len, 2, "hello", 5);
  put_frame(d, &len, 2, "world!", 6);
  ref_frames(d, len, 2, 50, &want);
  for (int pad = PAD_NONE; pad <= PAD_BIG; pad++)
    fail_each(fx, build_lp_read, &a, (const char *)d, len, lcuts, 5, pad,
              &want);
  fr_free(&want);
  fr_add(&want, "\0\5", 2); /* write side: header then payload */
  fr_add(&want, "hello", 5);
  fail_each(fx, build_lp_write, &a, "hello", 5, NULL, 0, PAD_NONE, &want);
  fr_free(&want);
  xor_arg_t x = {"k", 1};
  char enc[5];
  xor_ref("hello", 5, &x, enc);
  fr_add(&want, enc, 5);
  fail_each(fx, build_xor, &x, "hello", 5, NULL, 0, PAD_NONE, &want);
  fr_free(&want);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_line_every_split, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_line_random, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_line_max, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_line_zero_copy, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_line_trickle, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_lenprefix_every_split, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_lenprefix_truncated, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_lenprefix_random, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_lenprefix_zero_copy, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_lenprefix_roundtrip, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_xor, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_xor_input_untouched, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_xor_refused, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_chain_xor_line, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_chain_eof_order, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_chain_edges, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_errors_propagate, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_constructors, fx_setup,
                                      fx_teardown),
      cmocka_unit_test_setup_teardown(test_enomem, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests_name("filter", tests, NULL, NULL);
}
