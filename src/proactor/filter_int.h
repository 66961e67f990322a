/*
 * The built-in filters' constructors (filter.c), usable without a stream:
 * each returns the stage's operations and a fresh state, ready for
 * ax__chain_add() (which owns the state from then on) or for ops->destroy()
 * to free. State memory comes from @loop's hooks (NULL: malloc).
 *
 * Limits: a frame or line is one buffer, and buffers hold at most 2^31
 * bytes, so a @max above 2^31 - 1 is treated as 2^31 - 1.
 */
#ifndef AXON_FILTER_INT_H
#define AXON_FILTER_INT_H

#include "proactor/proactor_int.h"

/* The largest frame or line a built-in filter delivers (see above). */
#define AX__FILTER_MAX ((size_t)INT32_MAX)

/*
 * line (read chain): one line per emitted slice, without its "\n" and a
 * "\r" before it; an empty line is an empty slice. @max (≥ 1) bounds the
 * line as delivered: -EMSGSIZE as soon as the bytes seen without a
 * newline can no longer make a line of ≤ @max bytes (so at most @max + 1
 * bytes are held: a final "\r" may still be part of the terminator). At
 * EOF an unterminated last line is emitted as is ("\r" included), or
 * -EMSGSIZE if it is longer than @max. Errors: -EINVAL, -ENOMEM.
 */
int ax__filter_line_new(ax_loop_t *loop, size_t max,
                        const ax_filter_ops_t **ops, void **state);

/*
 * lenprefix: a big-endian length header of @hdr bytes (1, 2 or 4).
 * @chain AX_FILTER_READ: one frame per emitted slice, without its header;
 * a zero-length frame is emitted as an empty slice (protocols use empty
 * frames as markers). -EMSGSIZE as soon as a header announces more than
 * @max (≥ 1) bytes; at EOF -EPROTO when a header or frame is incomplete.
 * @chain AX_FILTER_WRITE: each data call is one frame: the header (a new
 * small buffer) is emitted, then the payload slice itself (zero-copy; not
 * emitted when empty). -EMSGSIZE past @max or what @hdr can encode; the
 * stage keeps no state between calls, so a refused write leaves it usable.
 * It must be the last framing stage of a write chain: the next stage gets
 * the header and the payload as two calls. Errors: -EINVAL, -ENOMEM.
 */
int ax__filter_lenprefix_new(ax_loop_t *loop, int chain, unsigned hdr,
                             size_t max, const ax_filter_ops_t **ops,
                             void **state);

/*
 * xor (either chain): each byte XORed with a repeating key of @keylen
 * (1-64) bytes, copied; the position in the key carries across calls (a
 * stream cipher over the byte stream) and advances only when the next
 * stage accepted the output, so a refused write does not desynchronise
 * it. The output is a new buffer: the input, borrowed and maybe shared, is
 * never modified. An empty slice is passed on as is. Errors: -EINVAL,
 * -ENOMEM.
 */
int ax__filter_xor_new(ax_loop_t *loop, const void *key, size_t keylen,
                       const ax_filter_ops_t **ops, void **state);

#endif /* AXON_FILTER_INT_H */
