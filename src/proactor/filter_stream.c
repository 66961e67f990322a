/*
 * Filters on streams: the public calls that attach a stage to a stream's
 * read or write chain. The chains themselves and the built-in stages are in
 * filter.c; the stream owns its chains (ax__stream_chain, stream.c), runs
 * them and finalizes them on close.
 */
#include "proactor/filter_int.h"

int ax_stream_filter_add(ax_stream_t *s, int chain, const ax_filter_ops_t *ops,
                         void *state) {
  struct ax__chain *c;
  /* The state is the stage's from the call on: every error destroys it. */
  if (s == NULL || ops == NULL || ops->data == NULL ||
      (chain != AX_FILTER_READ && chain != AX_FILTER_WRITE)) {
    if (ops != NULL && ops->destroy != NULL)
      ops->destroy(state);
    return -EINVAL;
  }
  if ((c = ax__stream_chain(s, chain)) == NULL) {
    if (ops->destroy != NULL)
      ops->destroy(state);
    return -ENOMEM;
  }
  return ax__chain_add(c, ops, state);
}

int ax_filter_line(ax_stream_t *s, size_t max) {
  const ax_filter_ops_t *ops;
  void *state;
  int r;
  if (s == NULL)
    return -EINVAL;
  if ((r = ax__filter_line_new(ax_stream_loop(s), max, &ops, &state)) < 0)
    return r;
  return ax_stream_filter_add(s, AX_FILTER_READ, ops, state);
}

int ax_filter_lenprefix(ax_stream_t *s, int chain, unsigned hdr, size_t max) {
  const ax_filter_ops_t *ops;
  void *state;
  int r;
  if (s == NULL)
    return -EINVAL;
  if ((r = ax__filter_lenprefix_new(ax_stream_loop(s), chain, hdr, max, &ops,
                                    &state)) < 0)
    return r;
  return ax_stream_filter_add(s, chain, ops, state);
}

int ax_filter_xor(ax_stream_t *s, int chain, const void *key, size_t keylen) {
  const ax_filter_ops_t *ops;
  void *state;
  int r;
  if (s == NULL || (chain != AX_FILTER_READ && chain != AX_FILTER_WRITE))
    return -EINVAL;
  if ((r = ax__filter_xor_new(ax_stream_loop(s), key, keylen, &ops, &state)) <
      0)
    return r;
  return ax_stream_filter_add(s, chain, ops, state);
}
