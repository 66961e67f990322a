/*
 * axon — error codes.
 *
 * Every public function that can fail returns 0 (or a non-negative count)
 * on success and a negative number on failure: either a negated errno value
 * (-EINVAL, -ENOMEM, ...) or one of the axon-specific codes below, which lie
 * outside the errno range. ax_strerror() and ax_err_name() describe both.
 *
 * A function that takes a callback and returns an error never calls that
 * callback.
 */
#ifndef AXON_ERROR_H
#define AXON_ERROR_H

#include <errno.h>
#include <axon/version.h>

#ifdef __cplusplus
extern "C" {
#endif

/* axon-specific codes (negative, below any errno value). */
#define AX_ENOTPOLLABLE (-20001) /* the backend cannot watch this fd type */
#define AX_EFDTOOBIG (-20002)    /* fd number beyond the backend's limit */
#define AX_ECORRUPT (-20003)     /* ax_loop_verify found a broken invariant */
#define AX_EKIND (-20004)        /* call made on a source of another kind */
#define AX_EOF (-20005)          /* end of stream: the peer closed its side */

/*
 * The one list every error description comes from: X(name, message).
 * errno entries carry the negated errno value; axon entries carry their own.
 */
#define AX_ERRNO_MAP(X)                                                        \
  X(EPERM, -EPERM, "operation not permitted")                                  \
  X(ENOENT, -ENOENT, "no such file or directory")                              \
  X(ESRCH, -ESRCH, "no such process")                                          \
  X(EINTR, -EINTR, "interrupted system call")                                  \
  X(EIO, -EIO, "i/o error")                                                    \
  X(EBADF, -EBADF, "bad file descriptor")                                      \
  X(ECHILD, -ECHILD, "no child processes")                                     \
  X(EAGAIN, -EAGAIN, "resource temporarily unavailable")                       \
  X(ENOMEM, -ENOMEM, "not enough memory")                                      \
  X(EACCES, -EACCES, "permission denied")                                      \
  X(EFAULT, -EFAULT, "bad address")                                            \
  X(EBUSY, -EBUSY, "resource busy or locked")                                  \
  X(EEXIST, -EEXIST, "already exists")                                         \
  X(EXDEV, -EXDEV, "cross-device link not permitted")                          \
  X(ENODEV, -ENODEV, "no such device")                                         \
  X(ENOTDIR, -ENOTDIR, "not a directory")                                      \
  X(EISDIR, -EISDIR, "is a directory")                                         \
  X(EINVAL, -EINVAL, "invalid argument")                                       \
  X(ENFILE, -ENFILE, "file table overflow (system-wide fd limit)")             \
  X(EMFILE, -EMFILE, "too many open files (process fd limit)")                 \
  X(ENOSPC, -ENOSPC, "no space left on device (or watch limit reached)")       \
  X(EPIPE, -EPIPE, "broken pipe")                                              \
  X(ERANGE, -ERANGE, "result or argument out of range")                        \
  X(ENAMETOOLONG, -ENAMETOOLONG, "name too long")                              \
  X(ENOSYS, -ENOSYS, "function not implemented by the kernel")                 \
  X(ELOOP, -ELOOP, "too many symbolic links encountered")                      \
  X(ENOTSUP, -ENOTSUP, "operation not supported")                              \
  X(EOVERFLOW, -EOVERFLOW, "value too large for defined data type")            \
  X(ECANCELED, -ECANCELED, "operation canceled")                               \
  X(ETIMEDOUT, -ETIMEDOUT, "operation timed out")                              \
  X(ECONNREFUSED, -ECONNREFUSED, "connection refused")                         \
  X(ECONNRESET, -ECONNRESET, "connection reset by peer")                       \
  X(EADDRINUSE, -EADDRINUSE, "address already in use")                         \
  X(EADDRNOTAVAIL, -EADDRNOTAVAIL, "address not available")                    \
  X(ENOTCONN, -ENOTCONN, "socket is not connected")                            \
  X(ENOTSOCK, -ENOTSOCK, "socket operation on non-socket")                     \
  X(EALREADY, -EALREADY, "operation already in progress")                      \
  X(ESHUTDOWN, -ESHUTDOWN, "destination is shut down (loop or mailbox closed)") \
  X(ENOBUFS, -ENOBUFS, "no buffer space available (queue limit reached)")       \
  X(EMSGSIZE, -EMSGSIZE, "message too long")                                   \
  X(EPROTO, -EPROTO, "protocol error (malformed data from the peer)")         \
  X(ECONNABORTED, -ECONNABORTED, "connection aborted")                         \
  X(EINPROGRESS, -EINPROGRESS, "operation now in progress")                    \
  X(ENETUNREACH, -ENETUNREACH, "network is unreachable")                       \
  X(EHOSTUNREACH, -EHOSTUNREACH, "no route to host")                           \
  X(EAFNOSUPPORT, -EAFNOSUPPORT, "address family not supported")               \
  X(EDESTADDRREQ, -EDESTADDRREQ, "destination address required")               \
  X(ENOTPOLLABLE, AX_ENOTPOLLABLE,                                             \
    "this backend cannot watch the fd's type (epoll refuses regular files "    \
    "and directories; use the poll or select backend, or file I/O)")           \
  X(EFDTOOBIG, AX_EFDTOOBIG,                                                   \
    "fd number too large for this backend (select handles fds below "          \
    "FD_SETSIZE only; use epoll or poll)")                                     \
  X(ECORRUPT, AX_ECORRUPT, "internal structure check failed")                  \
  X(EKIND, AX_EKIND, "function does not apply to this kind of source")         \
  X(EOF, AX_EOF, "end of stream (the peer closed its side)")

/**
 * ax_strerror() - describe an error code.
 * @err: a negative code returned by an axon function (0 is accepted too).
 *
 * Returns a static, read-only English message; never NULL. Unknown codes give
 * "unknown error". Thread-safe: uses no shared state.
 */
AX_API const char *ax_strerror(int err);

/**
 * ax_err_name() - the symbolic name of an error code ("EINVAL",
 * "ENOTPOLLABLE", "OK" for 0, "UNKNOWN" otherwise). Static string; thread-safe.
 */
AX_API const char *ax_err_name(int err);

#ifdef __cplusplus
}
#endif
#endif /* AXON_ERROR_H */
