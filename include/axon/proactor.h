/*
 * axon — the proactor: completion-style I/O on one loop.
 *
 * Ask for an operation, get a callback when it is complete, with the data.
 * On epoll, poll and select the proactor does the read or write itself when
 * the fd is ready; on io_uring it submits the operation to the kernel (recv
 * into provided buffers, send, accept, splice). The same user code runs on
 * every backend.
 *
 * Objects: streams (TCP over IPv4/IPv6, Unix sockets, pipes, ttys),
 * listeners (accepting connections), UDP sockets, and file operations.
 * Every object belongs to the loop it was created on; only that loop's
 * thread may touch it (axon's threading rule 1). To move a connection to
 * another loop, move its fd: ax_stream_detach() then ax_stream_open() there
 * (issue 5's actors do this through the mailbox).
 *
 * Callbacks always run on the loop's thread, from ax_loop_run(), never from
 * inside the function that asked for the operation. A callback may close the
 * object it runs for. After an object's close callback has run, its memory
 * is gone: that is the moment user memory tied to it may be freed.
 *
 * Errors: functions return 0 or a negative code (axon/error.h). A function
 * that returns an error never calls the callback it was given. Errors of the
 * connection itself (peer reset, peer closed, write timeout) arrive once, as
 * a status in a callback; see ax_read_cb.
 */
#ifndef AXON_PROACTOR_H
#define AXON_PROACTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <axon/buf.h>
#include <axon/error.h>
#include <axon/loop.h>
#include <axon/version.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Addresses                                                                 */
/* ------------------------------------------------------------------------ */

/** A socket address: IPv4, IPv6 or a Unix path. */
typedef struct ax_addr {
  union {
    struct sockaddr sa;
    struct sockaddr_in in4;
    struct sockaddr_in6 in6;
    struct sockaddr_un un;
  } u;
  socklen_t len;
} ax_addr_t;

/**
 * Parse a numeric IPv4 ("127.0.0.1") or IPv6 ("::1", "[::1]") address and a
 * port (0-65535) into @out. No name resolution: a loop must not block on
 * DNS. Errors: -EINVAL (not a numeric address), -ERANGE (port).
 */
AX_API int ax_addr_ip(const char *host, unsigned port, ax_addr_t *out);
/** A Unix socket path (a leading '@' makes an abstract name). Errors:
 *  -EINVAL, -ENAMETOOLONG. */
AX_API int ax_addr_unix(const char *path, ax_addr_t *out);
/** Format @a as "1.2.3.4:80", "[::1]:80" or the path into @buf. Returns the
 *  length, or -ENOSPC / -EAFNOSUPPORT. */
AX_API int ax_addr_format(const ax_addr_t *a, char *buf, size_t len);
/** The port of an IP address (0 for a Unix address). */
AX_API unsigned ax_addr_port(const ax_addr_t *a);

/* ------------------------------------------------------------------------ */
/* Streams                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct ax_stream ax_stream_t;

/**
 * ax_read_cb - data arrived, or the read side ended.
 * @status: ≥ 0: @data holds @status bytes (borrowed: the proactor drops its
 *          reference when the callback returns; ax_buf_ref(data->buf) to
 *          keep them). 0 only for an empty frame from a read filter (an
 *          empty line, a zero-length frame); a plain stream never gives 0. AX_EOF: the peer closed its side (shutdown or
 *          close); reading has stopped; writing may continue (half-close).
 *          < 0: the connection failed (-ECONNRESET, -ETIMEDOUT from the
 *          write deadline, -EPIPE, a filter's error...); reading has
 *          stopped and every queued write has completed with the same
 *          status; close the stream. Each of AX_EOF and an error comes at
 *          most once.
 * @data:   the bytes (status > 0), else the empty slice.
 */
typedef void (*ax_read_cb)(ax_stream_t *s, int status, ax_slice_t *data,
                           void *ud);

/** ax_write_cb - a write completed: @status 0 when every byte was handed to
 *  the kernel, or the stream's error, or -ECANCELED when the stream was
 *  closed first. */
typedef void (*ax_write_cb)(ax_stream_t *s, int status, void *ud);

/** ax_stream_cb - connect, shutdown and drain completions; @status 0 or an
 *  error. */
typedef void (*ax_stream_cb)(ax_stream_t *s, int status, void *ud);

/** ax_close_cb - the stream is closed and its memory is about to go. */
typedef void (*ax_close_cb)(ax_stream_t *s, void *ud);

/**
 * ax_stream_open() - wrap a connected fd: a TCP or Unix stream socket, a
 * pipe end, a tty or a character device that can be polled. The stream owns
 * the fd from now on (closing the stream closes it; on error it is left
 * open for the caller). The fd is made non-blocking. @ud is passed to every
 * callback and can be changed with ax_stream_set_data().
 * Errors: -EINVAL, -EBADF, -ENOMEM, AX_ENOTPOLLABLE (a regular file: use
 * file I/O), -EEXIST (the loop already watches @fd).
 */
AX_API int ax_stream_open(ax_loop_t *loop, int fd, void *ud,
                          ax_stream_t **out);

/**
 * ax_connect() - open a TCP (IPv4/IPv6) or Unix stream connection to @to.
 * @cb runs once: status 0 (connected), or -ECONNREFUSED, -ETIMEDOUT
 * (@timeout_ms elapsed; 0: no timeout but the kernel's), ... After an error
 * status the stream must be closed. Writes issued before the connection is
 * made are queued. Errors (returned): -EINVAL, -ENOMEM, -EMFILE...
 */
AX_API int ax_connect(ax_loop_t *loop, const ax_addr_t *to, uint64_t timeout_ms,
                      ax_stream_cb cb, void *ud, ax_stream_t **out);

/**
 * ax_stream_read_start() - deliver data to @cb as it arrives, until
 * read_stop, AX_EOF or an error. A read buffer is taken from the loop's pool
 * only when data is ready, so a stream that is not receiving holds none.
 * Calling it again replaces the callback. Errors: -EINVAL, -ENOTCONN
 * (connect pending is fine; after EOF or an error it is refused with the
 * status already delivered: AX_EOF or the error).
 */
AX_API int ax_stream_read_start(ax_stream_t *s, ax_read_cb cb);
/** Stop delivering data (no callback after this returns). */
AX_API int ax_stream_read_stop(ax_stream_t *s);

/**
 * ax_stream_write() - queue @len bytes, copied (the caller's memory is
 * free again when this returns). When nothing is queued ahead the bytes
 * are written at once and only the rest is copied. @cb (may be NULL) runs
 * when all of them are handed to the kernel, or with the error that stopped
 * them. Writes complete in order. Errors (nothing queued, @cb not called):
 * -EINVAL, -ENOMEM, -ENOBUFS (the write limit would be passed), -EPIPE
 * (after shutdown), the stream's error once it has failed.
 * SIGPIPE never fires: sockets are written with MSG_NOSIGNAL and pipes have
 * it ignored by the library at the first stream open.
 */
AX_API int ax_stream_write(ax_stream_t *s, const void *p, size_t len,
                           ax_write_cb cb, void *ud);
/** ax_stream_write_slices() - like ax_stream_write() for @n slices, without
 *  copying: the write queue takes its own reference to each buffer. */
AX_API int ax_stream_write_slices(ax_stream_t *s, const ax_slice_t *v, int n,
                                  ax_write_cb cb, void *ud);
/**
 * ax_stream_sendfile() - queue @len bytes of the file @file_fd from @offset,
 * sent with sendfile(2) in order with the other writes (partial progress
 * continues where it stopped). The caller keeps @file_fd open until @cb.
 * Falls back to read+write for streams sendfile refuses. Filters are
 * bypassed (the bytes never enter user space): an error -EINVAL when the
 * stream has write filters.
 */
AX_API int ax_stream_sendfile(ax_stream_t *s, int file_fd, off_t offset,
                              size_t len, ax_write_cb cb, void *ud);

/** Bytes waiting in the write queue (after write filters). */
AX_API size_t ax_stream_write_queued(const ax_stream_t *s);

/**
 * Backpressure. When the queue holds more than @high bytes, ax_stream_writable()
 * turns false; once it has drained to @high / 2 or below, @drain_cb runs once
 * (status 0) and ax_stream_writable() is true again. If the stream fails
 * meanwhile (the write deadline, a reset) while reading is stopped,
 * @drain_cb runs with the error instead: nobody else would hear of it
 * until the next read_start (which then delivers it). @limit (0: none) is a hard cap: a
 * write that would pass it fails with -ENOBUFS and queues nothing. Defaults:
 * high 64 KiB, no drain callback, no limit.
 */
AX_API int ax_stream_set_write_limits(ax_stream_t *s, size_t high,
                                      size_t limit, ax_stream_cb drain_cb);
/** False while the write queue is above the high-water mark. */
AX_API bool ax_stream_writable(const ax_stream_t *s);

/**
 * ax_stream_set_write_timeout() - fail the stream with -ETIMEDOUT when
 * queued bytes make no progress for @ms (0: never, the default): a peer that
 * never reads is cut off instead of holding memory for ever. The error is
 * delivered like any other (ax_read_cb, write callbacks).
 */
AX_API int ax_stream_set_write_timeout(ax_stream_t *s, uint64_t ms);

/**
 * ax_stream_shutdown() - half-close: once every queued byte is written,
 * shut the write side (the peer reads EOF). @cb (may be NULL) runs then, or
 * with the error that prevented it. Writes after this fail with -EPIPE.
 * Errors: -EINVAL, -EALREADY.
 */
AX_API int ax_stream_shutdown(ax_stream_t *s, ax_stream_cb cb);

/**
 * ax_stream_close() - close now: reading stops, queued writes complete
 * with -ECANCELED (use ax_stream_shutdown() first to flush), operations in
 * the kernel are cancelled, the fd is closed, and then @cb (may be NULL)
 * runs from the loop; the stream's memory is freed when it returns. Closing
 * twice is -EALREADY. Nothing else may be called on @s after close.
 * ax_loop_free() closes the streams still open: their queued writes
 * complete with -ECANCELED from inside it, and no close callback runs (the
 * user asked for none), so free what you tied to them after it returns.
 */
AX_API int ax_stream_close(ax_stream_t *s, ax_close_cb cb);

/**
 * ax_stream_detach() - take the fd out of the stream, e.g. to move the
 * connection to another loop. Allowed only while the stream is idle:
 * nothing queued, no read callback pending on io_uring (read stopped), no
 * filter holding data: else -EBUSY. The stream is freed (no close
 * callback), the fd is returned in *@fd, still open and non-blocking.
 */
AX_API int ax_stream_detach(ax_stream_t *s, int *fd);

/** The stream's fd (still owned by the stream), loop, and user data. */
AX_API int ax_stream_fd(const ax_stream_t *s);
AX_API ax_loop_t *ax_stream_loop(const ax_stream_t *s);
AX_API void *ax_stream_data(const ax_stream_t *s);
AX_API void ax_stream_set_data(ax_stream_t *s, void *ud);
/** TCP_NODELAY on or off (a no-op -ENOTSUP on non-TCP streams). */
AX_API int ax_stream_nodelay(ax_stream_t *s, bool on);
/** Local and peer addresses. */
AX_API int ax_stream_sockname(const ax_stream_t *s, ax_addr_t *out);
AX_API int ax_stream_peername(const ax_stream_t *s, ax_addr_t *out);

/** Counters of one stream. */
typedef struct ax_stream_stats {
  uint64_t bytes_read, bytes_written;
} ax_stream_stats_t;
AX_API int ax_stream_stats(const ax_stream_t *s, ax_stream_stats_t *out);

/* ------------------------------------------------------------------------ */
/* Filters                                                                   */
/* ------------------------------------------------------------------------ */

/**
 * A filter is a stage in a stream's read chain (applied to data after a
 * read, before ax_read_cb) or write chain (applied to data before it is
 * queued). A stage gets slices, and passes zero or more slices on with
 * ax_filter_emit(): it may transform them, split them (framing), or hold
 * them back until more arrive.
 */
typedef struct ax_filter ax_filter_t;

typedef struct ax_filter_ops {
  const char *name;
  /* Data for this stage. @in is borrowed: take a reference to keep it.
   * Return 0, or a negative code that fails the stream (read chain: the
   * read callback gets it; write chain: the write call returns it and
   * nothing of that write is queued... past this stage). */
  int (*data)(ax_filter_t *f, void *state, ax_slice_t in);
  /* The read side ended (AX_EOF): pass on or drop what is held. Return 0,
   * or an error (e.g. -EPROTO for a truncated frame) delivered instead of
   * AX_EOF. May be NULL. */
  int (*eof)(ax_filter_t *f, void *state);
  /* The stream is closing: free @state. May be NULL. */
  void (*destroy)(void *state);
} ax_filter_ops_t;

/** Which chain. */
enum { AX_FILTER_READ = 1, AX_FILTER_WRITE = 2 };

/**
 * ax_stream_filter_add() - append a stage to the read or write chain (the
 * read chain runs in the order added, from the socket to the user; the write
 * chain runs in the order added, from the user to the socket). @state is
 * owned by the stage from now on (ops->destroy frees it on close; on error it
 * is destroyed at once). Add filters before data flows. Errors: -EINVAL,
 * -ENOMEM.
 */
AX_API int ax_stream_filter_add(ax_stream_t *s, int chain,
                                const ax_filter_ops_t *ops, void *state);

/** Pass a slice to the next stage (or to the user / the socket). The next
 *  stage takes its own reference if it keeps it. Returns its status. */
AX_API int ax_filter_emit(ax_filter_t *f, ax_slice_t out);

/**
 * Built-in stages.
 * - line: read chain; delivers one line per callback, without its "\n"
 *   (and "\r"), in one slice (zero-copy when a line lies in one read
 *   buffer). A line longer than @max bytes fails the stream with -EMSGSIZE.
 *   At EOF an unterminated last line is delivered as is.
 * - lenprefix: a big-endian length header of @hdr bytes (1, 2 or 4). On the
 *   read chain it delivers one frame (without header) per callback and
 *   fails with -EMSGSIZE past @max and -EPROTO on a truncated last frame;
 *   on the write chain every write becomes one frame (-EMSGSIZE past
 *   @max or what @hdr can encode).
 * - xor: XORs every byte with a repeating key of 1-64 bytes (both chains;
 *   used by examples/proxy to obfuscate one side).
 */
AX_API int ax_filter_line(ax_stream_t *s, size_t max);
AX_API int ax_filter_lenprefix(ax_stream_t *s, int chain, unsigned hdr,
                               size_t max);
AX_API int ax_filter_xor(ax_stream_t *s, int chain, const void *key,
                         size_t keylen);

/* ------------------------------------------------------------------------ */
/* Splice: socket to socket without user space                               */
/* ------------------------------------------------------------------------ */

/**
 * ax_splice_cb - a splice ended: @status AX_EOF when @from reached its end
 * (every byte read from it was written to @to), else the error of either
 * side or -ECANCELED. @bytes: bytes moved.
 */
typedef void (*ax_splice_cb)(ax_stream_t *from, ax_stream_t *to, int status,
                             uint64_t bytes, void *ud);

/**
 * ax_splice() - move every byte read from @from to @to through a kernel
 * pipe (splice(2)), with partial progress on both sides and backpressure
 * (a pipe full of bytes @to does not accept stops reading @from). @from
 * must not be reading and neither may have filters or a splice running;
 * @to's write queue must be empty. Call ax_splice_stop() or close either
 * stream to end it early (@cb runs with -ECANCELED). Errors: -EINVAL,
 * -EBUSY, -EMFILE (no fds for the pipe).
 */
AX_API int ax_splice(ax_stream_t *from, ax_stream_t *to, ax_splice_cb cb,
                     void *ud);
/**
 * ax_splice_stop() - end the splice reading @from, on @from's loop thread.
 * The callback runs with -ECANCELED and the bytes moved so far, after
 * this call returns (inside it only when memory to defer it is lacking).
 * Bytes already read from @from but still in the kernel pipe (at most the
 * pipe's capacity) are dropped, not written to the destination: stop a
 * splice to abandon the transfer, not to pause it. Both streams stay open.
 * Errors: -EINVAL (NULL or closing stream), -EALREADY (@from is not
 * splicing).
 */
AX_API int ax_splice_stop(ax_stream_t *from);

/* ------------------------------------------------------------------------ */
/* Listeners                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct ax_listener ax_listener_t;

/**
 * ax_accept_cb - a connection was accepted: @fd is a connected,
 * non-blocking socket, owned by the callee (wrap it with ax_stream_open(),
 * hand it to another loop, or close it); @peer is its address, borrowed for
 * the call (on io_uring it is read as the fd is handed over: len 0 if the
 * peer is gone already, which reading the stream then reports). @status <
 * 0 (then @fd is -1, @peer NULL) reports an accept failure the listener is
 * handling: -EMFILE / -ENFILE (see the fd-exhaustion policy below) once
 * per episode, or another error (-ENOMEM, -ENOBUFS...) after which the
 * listener pauses the same way and then accepts again.
 */
typedef void (*ax_accept_cb)(ax_listener_t *l, int status, int fd,
                             const ax_addr_t *peer, void *ud);

typedef struct ax_listen_options {
  int backlog;       /* listen(2) backlog; 0: SOMAXCONN */
  bool reuseport;    /* SO_REUSEPORT (one listener per loop) */
  bool v6only;       /* IPV6_V6ONLY on an IPv6 address */
  unsigned batch;    /* accepts per readiness event; 0: 64. On io_uring
                      * the kernel accepts every pending connection
                      * (multishot accept): no batches. */
  /* Fd exhaustion policy: on EMFILE/ENFILE the listener closes a reserve
   * fd it holds, accepts one pending connection and closes it at once (the
   * peer sees a close, not a hang), then pauses accepting for
   * @emfile_pause_ms (0: 100), doubling up to 1 s while the condition lasts,
   * and re-opens its reserve. It never spins. */
  uint32_t emfile_pause_ms;
} ax_listen_options_t;

/** Defaults. */
AX_API void ax_listen_options_init(ax_listen_options_t *o);

/**
 * ax_listener_new() - bind @addr (SO_REUSEADDR on), listen and start
 * accepting (@opts NULL: defaults). A port 0 picks a free one: see
 * ax_listener_addr(). Errors: -EINVAL, -EADDRINUSE, -EACCES, -ENOMEM,
 * -EMFILE...
 */
AX_API int ax_listener_new(ax_loop_t *loop, const ax_addr_t *addr,
                           const ax_listen_options_t *opts, ax_accept_cb cb,
                           void *ud, ax_listener_t **out);
/** The bound address (the real port when 0 was asked). */
AX_API int ax_listener_addr(const ax_listener_t *l, ax_addr_t *out);
/** The listener's loop. */
AX_API ax_loop_t *ax_listener_loop(const ax_listener_t *l);
/** Pause and resume accepting (connections wait in the backlog). On
 *  io_uring, connections the kernel had accepted before the pause took
 *  effect are held and handed over, in order, after the resume (never
 *  inside it). */
AX_API int ax_listener_pause(ax_listener_t *l);
AX_API int ax_listener_resume(ax_listener_t *l);
/** Counters: accepted, refused for fd exhaustion (accepted and closed by
 *  the reserve fd), pauses. */
typedef struct ax_listener_stats {
  uint64_t accepted, shed, pauses;
} ax_listener_stats_t;
AX_API int ax_listener_stats(const ax_listener_t *l, ax_listener_stats_t *out);
/** Close the listening socket; no callback runs after this returns. May be
 *  called from the accept callback (the rest of the batch is left in the
 *  backlog, and closed with the socket; on io_uring, connections the kernel
 *  accepted already are closed too). */
AX_API void ax_listener_close(ax_listener_t *l);

/* ------------------------------------------------------------------------ */
/* UDP                                                                       */
/* ------------------------------------------------------------------------ */

typedef struct ax_udp ax_udp_t;

/** A datagram arrived from @from (borrowed, like ax_read_cb's data), or
 *  @status < 0 reports a socket error (e.g. -ECONNREFUSED after an ICMP
 *  port-unreachable): receiving goes on. */
typedef void (*ax_udp_recv_cb)(ax_udp_t *u, int status, ax_slice_t *data,
                               const ax_addr_t *from, void *ud);

/**
 * ax_udp_new() - a UDP socket bound to @bind (port 0: any), of its family.
 * Errors: -EINVAL, -EADDRINUSE, -ENOMEM...
 */
AX_API int ax_udp_new(ax_loop_t *loop, const ax_addr_t *bind, void *ud,
                      ax_udp_t **out);
/** Deliver datagrams to @cb (any size up to 64 KiB; each in its own
 *  buffer from a small per-socket pool). */
AX_API int ax_udp_recv_start(ax_udp_t *u, ax_udp_recv_cb cb);
AX_API int ax_udp_recv_stop(ax_udp_t *u);
/**
 * ax_udp_send() - send one datagram of @len bytes to @to. Sent at once when
 * the socket takes it; else copied and queued (at most 256 datagrams:
 * -ENOBUFS past that) and sent in order when the socket is writable. UDP
 * is best effort: a queued datagram the kernel refuses later is dropped,
 * counted, and its error reported to the receive callback if one is set.
 * Errors: -EINVAL, -EMSGSIZE, -ENOBUFS, a send error (-ENETUNREACH...).
 */
AX_API int ax_udp_send(ax_udp_t *u, const ax_addr_t *to, const void *p,
                       size_t len);
/** Datagrams sent, received, and dropped after being queued. */
typedef struct ax_udp_stats {
  uint64_t sent, received, send_dropped;
} ax_udp_stats_t;
AX_API int ax_udp_stats(const ax_udp_t *u, ax_udp_stats_t *out);
AX_API int ax_udp_addr(const ax_udp_t *u, ax_addr_t *out);
AX_API int ax_udp_fd(const ax_udp_t *u);
/** Close; queued datagrams are dropped. No callback runs after this
 *  returns; may be called from the receive callback. */
AX_API void ax_udp_close(ax_udp_t *u);

/* ------------------------------------------------------------------------ */
/* Files                                                                     */
/* ------------------------------------------------------------------------ */

/**
 * ax_file_cb - a file operation completed. @status: bytes read or written
 * (a short count at end of file), or a negative error. For reads @data
 * holds the bytes (borrowed, like ax_read_cb's).
 */
typedef void (*ax_file_cb)(ax_loop_t *loop, int status, ax_slice_t *data,
                           void *ud);

/**
 * ax_file_read() / ax_file_write() - read @len bytes at @offset of @fd, or
 * write a copy of @len bytes there, without blocking the loop: native on
 * io_uring, otherwise on a small pool of blocking threads (shared by all
 * loops, started on first use) whose results come back to the loop through
 * a done list and a wake source (an eventfd). The caller keeps @fd open
 * until @cb. The loop stays alive while an operation is pending. @len ≤ INT_MAX. Errors: -EINVAL, -ENOMEM,
 * -ESHUTDOWN. If the loop is freed with operations pending, their callbacks
 * run from ax_loop_free() with -ECANCELED — which says the loop went first,
 * not that nothing happened (a write may have reached the file);
 * ax_loop_free() waits for pool system calls already running on that
 * loop's behalf, so none touches @fd after its callback. Read data on
 * io_uring comes from the loop's allocator: a kept buffer must be released
 * before the loop is freed (buf.h).
 */
AX_API int ax_file_read(ax_loop_t *loop, int fd, uint64_t offset, size_t len,
                        ax_file_cb cb, void *ud);
AX_API int ax_file_write(ax_loop_t *loop, int fd, uint64_t offset,
                         const void *p, size_t len, ax_file_cb cb, void *ud);
/** fsync(2) (@datasync: fdatasync) off the loop, like ax_file_write. */
AX_API int ax_file_sync(ax_loop_t *loop, int fd, bool datasync, ax_file_cb cb,
                        void *ud);

/* ------------------------------------------------------------------------ */
/* Proactor facts                                                            */
/* ------------------------------------------------------------------------ */

typedef struct ax_proactor_info {
  bool native;               /* operations submitted to io_uring */
  bool buf_ring;             /* reads use a provided buffer ring */
  bool multishot_accept;     /* listeners use multishot accept */
  size_t streams;            /* open streams */
  size_t read_bufs_out;      /* read buffers held by users or in flight */
  size_t read_bufs_idle;     /* read buffers pooled */
  uint64_t file_ops_pool;    /* file operations run on the thread pool */
  uint64_t file_ops_native;  /* file operations run on io_uring */
  uint64_t bytes_in;         /* stream bytes read on this loop, ever */
  uint64_t bytes_out;        /* stream bytes written on this loop, ever */
} ax_proactor_info_t;

/** Facts about @loop's proactor (created on first use). A loop on
 *  io_uring drives its streams natively when the kernel allows it (6.0:
 *  multishot recv, provided buffer rings), and its listeners accept with a
 *  multishot accept, unless AXON_PROACTOR=readiness is in the environment
 *  when the proactor is created (for comparisons). */
AX_API int ax_proactor_info(ax_loop_t *loop, ax_proactor_info_t *out);

#ifdef __cplusplus
}
#endif
#endif /* AXON_PROACTOR_H */
