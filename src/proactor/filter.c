/*
 * Filter chains and the built-in filters: line, lenprefix (read and
 * write) and xor. Nothing here knows about streams (filter_stream.c holds
 * the public wrappers that attach stages to a stream), so a chain can be
 * driven bare, as the tests do.
 *
 * A chain is a list of stages ending in a sink. Slices travel borrowed:
 * a stage that keeps one takes its own reference, and ax_filter_emit()
 * hands the next stage a slice it may not keep without one. Errors travel
 * back: whatever a stage or the sink returns is what the caller of
 * ax__chain_push() gets.
 *
 * The framing stages (line, lenprefix read) emit zero-copy when a frame
 * lies in one input slice and hold the bytes of an incomplete frame
 * otherwise. Holding a small remainder by reference would pin its whole
 * buffer — a 16 KiB pool buffer per byte for a peer that trickles bytes —
 * so a piece using less than a quarter of its buffer is copied into a
 * small buffer of the stage's own (struct hold). The read-side stages stop
 * for good at their first error (they are out of step with the stream
 * after it); the write-side ones keep no state a refused write could
 * spoil.
 */
#include <stdlib.h>
#include <string.h>

#include "proactor/filter_int.h"

static void *mem_alloc(ax_loop_t *loop, size_t n) {
  return loop ? ax__alloc(loop, n) : malloc(n);
}

static void mem_free(ax_loop_t *loop, void *p) {
  if (loop)
    ax__free(loop, p);
  else
    free(p);
}

/* @len bytes at @off of @s (in range), the empty slice for 0. */
static ax_slice_t piece(ax_slice_t s, size_t off, size_t len) {
  if (len == 0)
    return (ax_slice_t){0};
  return (ax_slice_t){.buf = s.buf, .off = s.off + (uint32_t)off,
                      .len = (uint32_t)len};
}

/* ---- chains -------------------------------------------------------------- */

void ax__chain_init(struct ax__chain *c, ax_loop_t *loop, ax__sink_fn sink,
                    void *ctx) {
  memset(c, 0, sizeof(*c));
  c->sink = sink;
  c->ctx = ctx;
  c->loop = loop;
}

static void stage_destroy(const ax_filter_ops_t *ops, void *state) {
  if (ops != NULL && ops->destroy != NULL)
    ops->destroy(state);
}

int ax__chain_add(struct ax__chain *c, const ax_filter_ops_t *ops,
                  void *state) {
  struct ax_filter *f;
  if (c == NULL || ops == NULL || ops->data == NULL) {
    stage_destroy(ops, state);
    return -EINVAL;
  }
  if ((f = mem_alloc(c->loop, sizeof(*f))) == NULL) {
    stage_destroy(ops, state);
    return -ENOMEM;
  }
  *f = (struct ax_filter){.ops = ops, .state = state, .chain = c};
  if (c->tail != NULL)
    c->tail->next = f;
  else
    c->head = f;
  c->tail = f;
  return 0;
}

int ax__chain_push(struct ax__chain *c, ax_slice_t in) {
  struct ax_filter *f = c->head;
  return f != NULL ? f->ops->data(f, f->state, in) : c->sink(c->ctx, in);
}

int ax__chain_eof(struct ax__chain *c) {
  /* In order: what a stage flushes at EOF reaches the later stages before
   * their own eof. */
  for (struct ax_filter *f = c->head; f != NULL; f = f->next) {
    int r = f->ops->eof != NULL ? f->ops->eof(f, f->state) : 0;
    if (r != 0)
      return r;
  }
  return 0;
}

void ax__chain_fini(struct ax__chain *c) {
  struct ax_filter *f = c->head;
  c->head = c->tail = NULL;
  while (f != NULL) {
    struct ax_filter *next = f->next;
    stage_destroy(f->ops, f->state);
    mem_free(c->loop, f);
    f = next;
  }
}

int ax_filter_emit(ax_filter_t *f, ax_slice_t out) {
  struct ax_filter *n;
  /* A malformed slice from a user's stage fails here, not in the sink. */
  if (f == NULL || (out.len > 0 && (out.buf == NULL ||
                                    (uint64_t)out.off + out.len >
                                        ax_buf_cap(out.buf))))
    return -EINVAL;
  if ((n = f->next) != NULL)
    return n->ops->data(n, n->state, out);
  return f->chain->sink(f->chain->ctx, out);
}

/* ---- held bytes ------------------------------------------------------------ */

#define ACC_SIZE 4096 /* the copy buffer, unless less can be needed */

/*
 * The bytes of an incomplete frame: the slices of @bl, then the bytes
 * [acc_start, acc_end) of the copy buffer @acc not yet pushed to @bl.
 * @acc's bytes past acc_end belong to nobody yet, so they may be written
 * even while slices of @acc are shared.
 */
struct hold {
  ax_buflist_t bl;
  ax_buf_t *acc; /* one reference, or NULL */
  uint32_t acc_start, acc_end;
  ax_loop_t *loop;
};

static void hold_init(struct hold *h, ax_loop_t *loop) {
  ax_buflist_init(&h->bl, loop);
  h->acc = NULL;
  h->acc_start = h->acc_end = 0;
  h->loop = loop;
}

static size_t hold_bytes(const struct hold *h) {
  return ax_buflist_bytes(&h->bl) + (h->acc_end - h->acc_start);
}

static void hold_drop_acc(struct hold *h) {
  ax_buf_unref(h->acc);
  h->acc = NULL;
  h->acc_start = h->acc_end = 0;
}

static void hold_clear(struct hold *h) {
  ax_buflist_clear(&h->bl);
  hold_drop_acc(h);
}

/* Move the copy buffer's pending bytes to the list (order is kept). */
static int hold_flush(struct hold *h) {
  int r;
  if (h->acc_end == h->acc_start)
    return 0;
  ax_slice_t s = {.buf = h->acc, .off = h->acc_start,
                  .len = h->acc_end - h->acc_start};
  if ((r = ax_buflist_push(&h->bl, s)) < 0)
    return r;
  h->acc_start = h->acc_end;
  return 0;
}

/*
 * Append @s (borrowed). By reference when it fills a quarter of its buffer
 * or more, else copied, so held memory stays within about four times the
 * bytes held plus one copy buffer. @room: the most bytes this hold can
 * still need (≥ @s.len), to size the copy buffer.
 */
static int hold_add(struct hold *h, ax_slice_t s, size_t room) {
  int r;
  if (s.len == 0)
    return 0;
  if ((size_t)s.len * 4 >= ax_buf_cap(s.buf)) {
    if ((r = hold_flush(h)) < 0)
      return r;
    return ax_buflist_push(&h->bl, s);
  }
  if (h->acc == NULL || ax_buf_cap(h->acc) - h->acc_end < s.len) {
    size_t cap = room < ACC_SIZE ? room : ACC_SIZE;
    ax_buf_t *b;
    if ((r = hold_flush(h)) < 0 ||
        (r = ax_buf_new(h->loop, cap > s.len ? cap : s.len, &b)) < 0)
      return r;
    hold_drop_acc(h); /* its pending bytes are in the list now */
    h->acc = b;
  }
  memcpy(ax_buf_data(h->acc) + h->acc_end, ax_slice_ptr(s), s.len);
  h->acc_end += s.len;
  return 0;
}

/*
 * The held bytes followed by @tail (borrowed), as one slice holding one
 * reference; the hold is empty afterwards. On error the hold is in an
 * unspecified state: the stages stop at their first error and clear it.
 */
static int hold_take(struct hold *h, ax_slice_t tail, ax_slice_t *out) {
  size_t total = hold_bytes(h) + tail.len;
  int r;
  if (ax_buflist_bytes(&h->bl) == 0 && h->acc != NULL &&
      ax_buf_cap(h->acc) - h->acc_end >= tail.len) {
    /* All held bytes are in the copy buffer and the tail fits after them:
     * one copy, and the buffer's reference moves to *out. */
    if (tail.len > 0)
      memcpy(ax_buf_data(h->acc) + h->acc_end, ax_slice_ptr(tail), tail.len);
    *out = (ax_slice_t){.buf = h->acc, .off = h->acc_start,
                        .len = (uint32_t)total};
    h->acc = NULL;
    h->acc_start = h->acc_end = 0;
    return 0;
  }
  if (total == 0) {
    *out = (ax_slice_t){0};
    return 0;
  }
  if ((r = hold_flush(h)) < 0 || (r = ax_buflist_push(&h->bl, tail)) < 0 ||
      (r = ax_buflist_take(&h->bl, total, out)) < 0)
    return r;
  hold_drop_acc(h);
  return 0;
}

/* ---- line ----------------------------------------------------------------- */

struct line {
  struct hold h; /* bytes of the current line, no "\n" among them */
  size_t max;
  int err;       /* first error: returned from then on */
  ax_loop_t *loop;
};

static int line_stop(struct line *st, int r) {
  if (r != 0 && st->err == 0) {
    st->err = r;
    hold_clear(&st->h);
  }
  return r;
}

/* Emit line @s (its "\n" already cut): drop a final "\r", check the bound. */
static int line_out(ax_filter_t *f, const struct line *st, ax_slice_t s) {
  if (s.len > 0 && ax_slice_ptr(s)[s.len - 1] == '\r')
    s.len--;
  if (s.len > st->max)
    return -EMSGSIZE;
  return ax_filter_emit(f, s.len > 0 ? s : (ax_slice_t){0});
}

/* A line that ends in @in at @n bytes from @pos, after the held bytes. */
static int line_end(ax_filter_t *f, struct line *st, ax_slice_t in,
                    size_t pos, size_t n) {
  size_t held = hold_bytes(&st->h);
  ax_slice_t s;
  int r;
  if (held == 0)
    return line_out(f, st, piece(in, pos, n)); /* zero-copy */
  if (held + n > st->max + 1)
    return -EMSGSIZE; /* too long even without a "\r": do not copy it */
  if ((r = hold_take(&st->h, piece(in, pos, n), &s)) < 0)
    return r;
  r = line_out(f, st, s);
  ax_buf_unref(s.buf);
  return r;
}

static int line_data(ax_filter_t *f, void *state, ax_slice_t in) {
  struct line *st = state;
  const char *p = ax_slice_ptr(in);
  size_t pos = 0;
  int r = st->err;
  while (r == 0 && pos < in.len) {
    const char *nl = memchr(p + pos, '\n', in.len - pos);
    if (nl == NULL) {
      /* No newline yet: hold the rest, unless no "\r\n" can make the line
       * short enough any more. */
      size_t held = hold_bytes(&st->h), rest = in.len - pos;
      if (held + rest > st->max + 1)
        r = -EMSGSIZE;
      else
        r = hold_add(&st->h, piece(in, pos, rest), st->max + 1 - held);
      break;
    }
    size_t n = (size_t)(nl - p) - pos;
    r = line_end(f, st, in, pos, n);
    pos += n + 1;
  }
  return line_stop(st, r);
}

static int line_eof(ax_filter_t *f, void *state) {
  struct line *st = state;
  size_t held = hold_bytes(&st->h);
  ax_slice_t s;
  int r = st->err;
  if (r != 0 || held == 0)
    return r;
  /* An unterminated last line, as is: a "\r" ends no line here. */
  if (held > st->max)
    return line_stop(st, -EMSGSIZE);
  if ((r = hold_take(&st->h, (ax_slice_t){0}, &s)) == 0) {
    r = ax_filter_emit(f, s);
    ax_buf_unref(s.buf);
  }
  return line_stop(st, r);
}

static void line_destroy(void *state) {
  struct line *st = state;
  hold_clear(&st->h);
  mem_free(st->loop, st);
}

static const ax_filter_ops_t line_ops = {
    .name = "line", .data = line_data, .eof = line_eof,
    .destroy = line_destroy};

int ax__filter_line_new(ax_loop_t *loop, size_t max,
                        const ax_filter_ops_t **ops, void **state) {
  struct line *st;
  if (ops == NULL || state == NULL || max == 0)
    return -EINVAL;
  if ((st = mem_alloc(loop, sizeof(*st))) == NULL)
    return -ENOMEM;
  memset(st, 0, sizeof(*st));
  hold_init(&st->h, loop);
  st->max = max < AX__FILTER_MAX ? max : AX__FILTER_MAX;
  st->loop = loop;
  *ops = &line_ops;
  *state = st;
  return 0;
}

/* ---- lenprefix -------------------------------------------------------------- */

struct lenp {
  struct hold h;   /* read: body bytes of the current frame */
  size_t max;
  ax_loop_t *loop;
  uint32_t need;   /* read: body length of the current frame */
  uint8_t hdr;     /* header bytes: 1, 2 or 4 */
  uint8_t hn;      /* read: header bytes seen */
  uint8_t hb[4];   /* read: the header so far */
  bool body;       /* read: header complete, reading the body */
  int err;         /* read: first error */
};

static int lenp_stop(struct lenp *st, int r) {
  if (r != 0 && st->err == 0) {
    st->err = r;
    hold_clear(&st->h);
  }
  return r;
}

/* The header is complete: check the length; an empty frame goes at once. */
static int lenp_header(ax_filter_t *f, struct lenp *st) {
  uint32_t n = 0;
  for (unsigned i = 0; i < st->hdr; i++)
    n = n << 8 | st->hb[i];
  st->hn = 0;
  if (n > st->max)
    return -EMSGSIZE;
  if (n == 0)
    return ax_filter_emit(f, (ax_slice_t){0});
  st->need = n;
  st->body = true;
  return 0;
}

/* Body bytes from @in at *@pos: hold them, or complete the frame. */
static int lenp_body(ax_filter_t *f, struct lenp *st, ax_slice_t in,
                     size_t *pos) {
  size_t held = hold_bytes(&st->h), want = st->need - held;
  size_t k = in.len - *pos < want ? in.len - *pos : want;
  ax_slice_t part = piece(in, *pos, k), s;
  int r;
  *pos += k;
  if (k < want)
    return hold_add(&st->h, part, want);
  st->body = false;
  if (held == 0)
    return ax_filter_emit(f, part); /* zero-copy */
  if ((r = hold_take(&st->h, part, &s)) < 0)
    return r;
  r = ax_filter_emit(f, s);
  ax_buf_unref(s.buf);
  return r;
}

static int lenp_rdata(ax_filter_t *f, void *state, ax_slice_t in) {
  struct lenp *st = state;
  const char *p = ax_slice_ptr(in);
  size_t pos = 0;
  int r = st->err;
  while (r == 0 && pos < in.len) {
    if (st->body) {
      r = lenp_body(f, st, in, &pos);
      continue;
    }
    size_t k = st->hdr - st->hn;
    if (k > in.len - pos)
      k = in.len - pos;
    memcpy(st->hb + st->hn, p + pos, k);
    st->hn += (uint8_t)k;
    pos += k;
    if (st->hn == st->hdr)
      r = lenp_header(f, st);
  }
  return lenp_stop(st, r);
}

static int lenp_reof(ax_filter_t *f, void *state) {
  struct lenp *st = state;
  (void)f;
  if (st->err == 0 && (st->body || st->hn > 0))
    return lenp_stop(st, -EPROTO); /* a truncated header or frame */
  return st->err;
}

/* One write, one frame: a new header buffer, then the payload itself. */
static int lenp_wdata(ax_filter_t *f, void *state, ax_slice_t in) {
  struct lenp *st = state;
  ax_buf_t *b;
  int r;
  if (in.len > st->max || (st->hdr < 4 && in.len >> (8 * st->hdr) != 0))
    return -EMSGSIZE;
  if ((r = ax_buf_new(st->loop, st->hdr, &b)) < 0)
    return r;
  for (unsigned i = 0; i < st->hdr; i++)
    ax_buf_data(b)[i] = (char)(in.len >> (8 * (st->hdr - 1 - i)));
  r = ax_filter_emit(f, (ax_slice_t){.buf = b, .off = 0, .len = st->hdr});
  ax_buf_unref(b);
  if (r == 0 && in.len > 0)
    r = ax_filter_emit(f, in);
  return r;
}

static void lenp_destroy(void *state) {
  struct lenp *st = state;
  hold_clear(&st->h);
  mem_free(st->loop, st);
}

static const ax_filter_ops_t lenp_read_ops = {
    .name = "lenprefix", .data = lenp_rdata, .eof = lenp_reof,
    .destroy = lenp_destroy};
static const ax_filter_ops_t lenp_write_ops = {
    .name = "lenprefix", .data = lenp_wdata, .eof = NULL,
    .destroy = lenp_destroy};

int ax__filter_lenprefix_new(ax_loop_t *loop, int chain, unsigned hdr,
                             size_t max, const ax_filter_ops_t **ops,
                             void **state) {
  struct lenp *st;
  if (ops == NULL || state == NULL || max == 0 ||
      (hdr != 1 && hdr != 2 && hdr != 4) ||
      (chain != AX_FILTER_READ && chain != AX_FILTER_WRITE))
    return -EINVAL;
  if ((st = mem_alloc(loop, sizeof(*st))) == NULL)
    return -ENOMEM;
  memset(st, 0, sizeof(*st));
  hold_init(&st->h, loop);
  st->max = max < AX__FILTER_MAX ? max : AX__FILTER_MAX;
  st->loop = loop;
  st->hdr = (uint8_t)hdr;
  *ops = chain == AX_FILTER_READ ? &lenp_read_ops : &lenp_write_ops;
  *state = st;
  return 0;
}

/* ---- xor -------------------------------------------------------------------- */

struct xor {
  ax_loop_t *loop;
  uint32_t keylen;
  uint32_t pos; /* key index of the next byte of the stream */
  uint8_t key[64];
};

static int xor_data(ax_filter_t *f, void *state, ax_slice_t in) {
  struct xor *st = state;
  ax_buf_t *b;
  uint32_t k = st->pos;
  int r;
  if (in.len == 0)
    return ax_filter_emit(f, in);
  /* Into a new buffer: @in is borrowed and its buffer may be shared. */
  if ((r = ax_buf_new(st->loop, in.len, &b)) < 0)
    return r;
  const uint8_t *src = (const uint8_t *)ax_slice_ptr(in);
  uint8_t *dst = (uint8_t *)ax_buf_data(b);
  for (uint32_t i = 0; i < in.len; i++) {
    dst[i] = src[i] ^ st->key[k];
    if (++k == st->keylen)
      k = 0;
  }
  r = ax_filter_emit(f, (ax_slice_t){.buf = b, .off = 0, .len = in.len});
  ax_buf_unref(b);
  if (r == 0)
    st->pos = k; /* a refused write must not shift the key */
  return r;
}

static void xor_destroy(void *state) {
  struct xor *st = state;
  mem_free(st->loop, st);
}

static const ax_filter_ops_t xor_ops = {
    .name = "xor", .data = xor_data, .eof = NULL, .destroy = xor_destroy};

int ax__filter_xor_new(ax_loop_t *loop, const void *key, size_t keylen,
                       const ax_filter_ops_t **ops, void **state) {
  struct xor *st;
  if (ops == NULL || state == NULL || key == NULL || keylen == 0 ||
      keylen > sizeof st->key)
    return -EINVAL;
  if ((st = mem_alloc(loop, sizeof(*st))) == NULL)
    return -ENOMEM;
  memset(st, 0, sizeof(*st));
  st->loop = loop;
  st->keylen = (uint32_t)keylen;
  memcpy(st->key, key, keylen);
  *ops = &xor_ops;
  *state = st;
  return 0;
}
