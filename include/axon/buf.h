/*
 * axon — buffers, slices and buffer lists.
 *
 * An ax_buf_t is a reference-counted block of bytes. An ax_slice_t is a
 * window (offset, length) into one buffer: slicing never copies. An
 * ax_buflist_t is a queue of slices (a chain), used for write queues and
 * for data a filter holds back.
 *
 * Ownership, in one rule: a function that keeps a buffer takes its own
 * reference; the caller's reference stays the caller's. So a read callback
 * that wants to keep its data calls ax_buf_ref(); a write of a slice takes a
 * reference for the write queue and the caller may drop its own at once.
 *
 * Threads: reference counts are plain integers. A buffer belongs to the
 * thread that holds it, like a loop's sources; it may be passed to another
 * thread only by a caller holding the only reference (ax_buf_refs() == 1),
 * and a pooled buffer (from a loop's read pool) must be released on its
 * loop's thread, because its last release returns it to that pool.
 *
 * Lifetime: a buffer allocated through a loop's hooks (ax_buf_new(loop),
 * the loop's read pool, a pool made with that loop) must be released
 * before the loop is freed; with @loop NULL (malloc) it may outlive any
 * loop.
 *
 * Errors: functions return 0 or a negative code (axon/error.h).
 */
#ifndef AXON_BUF_H
#define AXON_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <axon/error.h>
#include <axon/loop.h>
#include <axon/version.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ax_buf ax_buf_t;

/** A window into a buffer. A value type: copying it copies no reference. */
typedef struct ax_slice {
  ax_buf_t *buf; /* NULL for the empty slice */
  uint32_t off;  /* first byte, from the start of the buffer's data */
  uint32_t len;  /* bytes */
} ax_slice_t;

/** Called once when a wrapped buffer's last reference goes. */
typedef void (*ax_buf_free_fn)(void *data, void *ctx);

/**
 * Allocate a buffer of @cap bytes (1 ≤ @cap ≤ 2^31) with one reference,
 * through @loop's allocator hooks (@loop NULL: malloc). The buffer may be
 * released on any thread when its memory comes from malloc (@loop NULL).
 * Errors: -EINVAL (@cap 0 or too large, @out NULL), -ENOMEM.
 */
AX_API int ax_buf_new(ax_loop_t *loop, size_t cap, ax_buf_t **out);

/**
 * A buffer holding a copy of @len bytes at @p (@len may be 0: a 1-byte
 * buffer with an empty slice). On success *@out is a slice over the copy
 * holding one reference. Errors: -EINVAL, -ENOMEM.
 */
AX_API int ax_buf_copy(ax_loop_t *loop, const void *p, size_t len,
                       ax_slice_t *out);

/**
 * Wrap caller memory without copying: @free_fn(@data, @ctx) is called once,
 * when the last reference goes (NULL: nothing to free, e.g. static data).
 * The memory must stay valid and unchanged until then. The header is
 * allocated through @loop's hooks (@loop NULL: malloc). On error nothing is
 * wrapped and @free_fn is not called. Errors: -EINVAL, -ENOMEM.
 */
AX_API int ax_buf_wrap(ax_loop_t *loop, void *data, size_t len,
                       ax_buf_free_fn free_fn, void *ctx, ax_buf_t **out);

/** Add a reference. Returns @buf. */
AX_API ax_buf_t *ax_buf_ref(ax_buf_t *buf);
/** Drop a reference; the last one frees the buffer or returns it to its
 *  pool. NULL is ignored. */
AX_API void ax_buf_unref(ax_buf_t *buf);
/** Current reference count. */
AX_API uint32_t ax_buf_refs(const ax_buf_t *buf);
/** The buffer's bytes and capacity. */
AX_API char *ax_buf_data(const ax_buf_t *buf);
AX_API size_t ax_buf_cap(const ax_buf_t *buf);

/** Pointer to a slice's first byte (NULL for the empty slice). */
static inline char *ax_slice_ptr(ax_slice_t s) {
  return s.buf != NULL ? ax_buf_data(s.buf) + s.off : NULL;
}

/**
 * A sub-slice: @len bytes from @off within @s, sharing its buffer (no
 * reference is taken: ax_buf_ref(out.buf) to keep it). Errors: -ERANGE when
 * the window leaves @s, -EINVAL when @out is NULL.
 */
AX_API int ax_slice_sub(ax_slice_t s, size_t off, size_t len, ax_slice_t *out);

/* ------------------------------------------------------------------------ */
/* Read-buffer pool                                                          */
/* ------------------------------------------------------------------------ */

/**
 * A pool of equal-sized buffers, for reads: a read takes a buffer only when
 * data is ready and the buffer goes back when the last reference is dropped,
 * so an idle connection holds no read buffer. Every loop has one, created on
 * first use (ax_loop_bufpool()); more can be made. Not thread-safe: use and
 * release its buffers on one thread.
 */
typedef struct ax_bufpool ax_bufpool_t;

/**
 * A pool of @bufsize-byte buffers (≥ 64) keeping at most @keep free ones
 * (the rest go back to the allocator), allocating through @loop's hooks.
 * Errors: -EINVAL, -ENOMEM.
 */
AX_API int ax_bufpool_new(ax_loop_t *loop, size_t bufsize, size_t keep,
                          ax_bufpool_t **out);
/**
 * Free the pool. Buffers still referenced stay valid and are freed, not
 * pooled, on their last release.
 */
AX_API void ax_bufpool_free(ax_bufpool_t *pool);
/** Take a buffer (one reference). Errors: -ENOMEM. */
AX_API int ax_bufpool_get(ax_bufpool_t *pool, ax_buf_t **out);
/** Buffer size, buffers handed out and not yet returned, buffers free. */
AX_API size_t ax_bufpool_bufsize(const ax_bufpool_t *pool);
AX_API size_t ax_bufpool_outstanding(const ax_bufpool_t *pool);
AX_API size_t ax_bufpool_idle(const ax_bufpool_t *pool);

/**
 * The loop's read pool (16 KiB buffers, 64 kept), created on first call and
 * freed with the loop. Returns NULL only when it cannot be allocated.
 */
AX_API ax_bufpool_t *ax_loop_bufpool(ax_loop_t *loop);

/* ------------------------------------------------------------------------ */
/* Buffer lists                                                              */
/* ------------------------------------------------------------------------ */

/**
 * A FIFO of slices. The struct is public so it can live inside other
 * structs; its fields are private. Initialise with ax_buflist_init(), release
 * with ax_buflist_clear(). Not thread-safe.
 */
typedef struct ax_buflist {
  ax_slice_t *v;   /* ring of cap slots */
  uint32_t head;   /* index of the first slice */
  uint32_t n;      /* slices queued */
  uint32_t cap;    /* slots (a power of two, or 0) */
  uint32_t pad_;
  size_t bytes;    /* total length of the queued slices */
  ax_loop_t *loop; /* allocator of the ring; NULL: malloc */
} ax_buflist_t;

/** An empty list whose ring is allocated through @loop's hooks (NULL:
 *  malloc). Allocates nothing yet. */
AX_API void ax_buflist_init(ax_buflist_t *bl, ax_loop_t *loop);
/** Drop every slice's reference and free the ring. The list is empty and
 *  usable again afterwards. */
AX_API void ax_buflist_clear(ax_buflist_t *bl);
/** Append @s (an empty slice is ignored), taking a reference to its
 *  buffer. Errors: -ENOMEM (nothing appended). */
AX_API int ax_buflist_push(ax_buflist_t *bl, ax_slice_t s);
/** Append a copy of @len bytes (into a new buffer). Errors: -ENOMEM. */
AX_API int ax_buflist_push_copy(ax_buflist_t *bl, const void *p, size_t len);
/** Bytes queued. */
static inline size_t ax_buflist_bytes(const ax_buflist_t *bl) {
  return bl->bytes;
}
/** Slices queued. */
static inline size_t ax_buflist_count(const ax_buflist_t *bl) { return bl->n; }
/** The @i-th slice (0: the first), borrowed. @i must be < count. */
AX_API ax_slice_t ax_buflist_at(const ax_buflist_t *bl, size_t i);
/**
 * Fill up to @max iovecs with the first slices, for writev(). Returns the
 * number filled.
 */
AX_API int ax_buflist_iov(const ax_buflist_t *bl, struct iovec *iov, int max);
/** Remove the first @len bytes (≤ bytes queued), dropping the references
 *  of slices wholly consumed; a partly consumed slice is trimmed. */
AX_API void ax_buflist_consume(ax_buflist_t *bl, size_t len);
/** Copy the first @len bytes (≤ bytes queued) to @dst without removing
 *  them. */
AX_API void ax_buflist_peek(const ax_buflist_t *bl, void *dst, size_t len);
/**
 * Remove the first @len bytes (1 ≤ @len ≤ bytes queued) as one slice
 * holding one reference: zero-copy when they lie in one slice, else copied
 * into a new buffer. Errors: -EINVAL, -ENOMEM (the list is unchanged).
 */
AX_API int ax_buflist_take(ax_buflist_t *bl, size_t len, ax_slice_t *out);
/**
 * Offset of the first byte equal to @c within the first @limit bytes, or -1.
 * Used by framing filters.
 */
AX_API ptrdiff_t ax_buflist_find(const ax_buflist_t *bl, int c, size_t limit);

#ifdef __cplusplus
}
#endif
#endif /* AXON_BUF_H */
