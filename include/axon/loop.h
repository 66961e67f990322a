/*
 * axon — the run loop (reactor).
 *
 * One loop per thread. A loop owns sources: I/O watchers, timers, wall-clock
 * date timers, deferred calls, signal watchers, file-system watchers and wake
 * sources. Every source belongs to exactly one loop, and only the thread that
 * runs that loop may touch the loop or its sources. The few functions callable
 * from other threads say so in their comment ("Thread-safe"); every other
 * function here is not thread-safe.
 *
 * Sources are opaque handles allocated by the loop: create one with the kind's
 * ax_*_new(), arm it with the kind's ax_*_start(), disarm it with
 * ax_source_stop(), release it with ax_source_free(). A callback may stop or
 * free any source, including the one it runs for, create new sources, or stop
 * the loop: memory of a freed source is reclaimed at the end of the current
 * iteration, never while a callback could still reach it.
 *
 * Errors: functions return 0 or a negative code (see axon/error.h). A function
 * that takes a callback and returns an error never calls that callback.
 */
#ifndef AXON_LOOP_H
#define AXON_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <axon/error.h>
#include <axon/mailbox.h>
#include <axon/version.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ax_loop ax_loop_t;
typedef struct ax_source ax_source_t;

/* ------------------------------------------------------------------------ */
/* Loop creation                                                             */
/* ------------------------------------------------------------------------ */

/** Readiness backends. AX_BACKEND_AUTO picks $AXON_BACKEND, else the best. */
typedef enum ax_backend {
  AX_BACKEND_AUTO = 0,
  AX_BACKEND_EPOLL,
  AX_BACKEND_POLL,
  AX_BACKEND_SELECT,
  AX_BACKEND_URING
} ax_backend_t;

/**
 * Memory hooks. Every allocation a loop makes for itself and its sources
 * goes through them; the mailbox (256 bytes, allocated by ax_loop_new) and
 * the messages other threads queue (ax_loop_post, ax_io_handoff) use malloc,
 * since they are created or freed on other threads. @realloc
 * with size 0 is never called; @free is never called with NULL. A hook that
 * returns NULL makes the calling axon function fail with -ENOMEM.
 */
typedef struct ax_allocator {
  void *(*malloc)(size_t size, void *ctx);
  void *(*realloc)(void *ptr, size_t size, void *ctx);
  void (*free)(void *ptr, void *ctx);
  void *ctx;
} ax_allocator_t;

/** Options for ax_loop_new(). Initialise with ax_loop_options_init(). */
typedef struct ax_loop_options {
  /** Backend to use. AUTO: the AXON_BACKEND environment variable ("epoll",
   *  "poll", "select", "io_uring") if set, else epoll. An io_uring request
   *  on a kernel that refuses io_uring (disabled by sysctl or seccomp, too
   *  old) or a build without liburing falls back to epoll, and
   *  ax_loop_info() says why. */
  ax_backend_t backend;
  /** Memory hooks; NULL for malloc/realloc/free. Copied; the hooks must stay
   *  valid for the life of the loop. */
  const ax_allocator_t *allocator;
  /** Wall clock used by date timers, in ms since the epoch; NULL for
   *  CLOCK_REALTIME. Meant for tests that simulate clock steps (pair it with
   *  ax_loop_clock_changed()). Called on the loop's thread only. */
  int64_t (*realtime_ms)(void *ctx);
  void *clock_ctx;
  /** Most callbacks and handoffs queued in the loop's mailbox at once;
   *  past it ax_loop_post() returns -EAGAIN (handoffs and stops always get
   *  through). 0: AX_MAILBOX_DEFAULT_CAPACITY (1,048,576); at most 2^30
   *  (more: ax_loop_new returns -EINVAL); AX_MAILBOX_UNBOUNDED: no bound. */
  uint32_t post_capacity;
  /** Before blocking, busy-wait up to this many nanoseconds for a posted
   *  message (never longer than the next timer). A message caught by the
   *  spin costs no system call on either thread; the price is CPU burnt
   *  while idle. 0 (the default): never spin. While spinning the loop does
   *  not look at I/O; after a catch it skips at most 64 waits in a row
   *  before polling I/O again. */
  uint32_t spin_ns;
  /** Run (in AX_RUN_DEFAULT) until ax_loop_stop() even with nothing live:
   *  for loops fed only by other threads' posts and handoffs. */
  bool persistent;
} ax_loop_options_t;

/** ax_loop_options_init() - fill @opts with the defaults (all zero/NULL). */
AX_API void ax_loop_options_init(ax_loop_options_t *opts);

/**
 * ax_loop_new() - create a loop.
 * @opts: options, or NULL for the defaults. Read during the call only.
 * @out:  receives the loop on success; untouched on failure.
 *
 * The loop belongs to the thread that runs it; create as many as you like,
 * in as many threads. Returns 0, -EINVAL (bad option, unknown AXON_BACKEND
 * value), -ENOMEM, or the errno of the failing backend set-up (e.g. -EMFILE).
 */
AX_API int ax_loop_new(const ax_loop_options_t *opts, ax_loop_t **out);

/**
 * ax_loop_free() - destroy a loop and every source still attached to it.
 *
 * Remaining sources are released without their callbacks being called. File
 * descriptors the caller gave to I/O sources are NOT closed (the caller owns
 * them); fds the loop created itself are. Returns -EBUSY (and does nothing)
 * when called from inside ax_loop_run() on this loop, else 0. NULL is a no-op.
 */
AX_API int ax_loop_free(ax_loop_t *loop);

/* ------------------------------------------------------------------------ */
/* Running                                                                   */
/* ------------------------------------------------------------------------ */

typedef enum ax_run_mode {
  /** Run until ax_loop_stop() or until no active, referenced source is left. */
  AX_RUN_DEFAULT = 0,
  /** Block until at least one callback has run (or the loop is stopped or
   *  has nothing live), then finish that iteration. Usually one iteration;
   *  a wait that ends with nothing to do (the wheel's timeout hint is a lower
   *  bound for timers more than 256 ms away) is followed by another. */
  AX_RUN_ONCE,
  /** One iteration; never block. */
  AX_RUN_NOWAIT
} ax_run_mode_t;

/**
 * ax_loop_run() - run the loop on the calling thread.
 *
 * An iteration: wait for I/O (not at all if deferred calls are pending; no
 * longer than the next timer), dispatch ready I/O, signal and fs-watch events,
 * run due timers and date timers, run deferred calls, reclaim freed sources.
 * Returns 0 when stopped, when nothing live is left, or when the ONCE/NOWAIT
 * round is over; -EBUSY if the loop is already running (a nested call);
 * -EINVAL for a bad mode; or a negative errno if the backend fails (the loop
 * stays usable). EINTR is handled inside and never returned.
 */
AX_API int ax_loop_run(ax_loop_t *loop, ax_run_mode_t mode);

/**
 * ax_loop_stop() - make ax_loop_run() return after the current iteration.
 * Thread-safe. Called on the loop's own thread while it runs (from a
 * callback), it takes effect at the end of the current iteration. From any
 * other thread, or while the loop is not running, it travels as a control
 * message through the loop's mailbox (never refused, never allocates), in
 * FIFO order with the sender's posts: the loop returns after the iteration
 * that receives it — if it is not running, in the next ax_loop_run(), after
 * the posts queued before it. Stops sent while one is still in flight
 * coalesce into it. NULL is a no-op.
 */
AX_API void ax_loop_stop(ax_loop_t *loop);

/**
 * ax_loop_alive() - true while an active, referenced source exists, a posted
 * callback or handoff is waiting in the mailbox, or the loop is persistent
 * (see ax_loop_options_t). Not thread-safe.
 */
AX_API bool ax_loop_alive(const ax_loop_t *loop);

/**
 * ax_loop_now() - the loop's cached monotonic time, in ms (CLOCK_MONOTONIC).
 * Updated once per iteration; timers are relative to it.
 */
AX_API uint64_t ax_loop_now(const ax_loop_t *loop);

/** ax_loop_update_time() - refresh the cached time from the clock now. */
AX_API void ax_loop_update_time(ax_loop_t *loop);

/** Counters and facts about a loop; see ax_loop_info(). */
typedef struct ax_loop_info {
  const char *backend;         /* backend in use: "epoll", "io_uring", ... */
  const char *requested;       /* backend asked for, by option or by
                                  $AXON_BACKEND; "auto" if neither */
  const char *fallback_reason; /* why the requested one is not used, or NULL */
  uint64_t iterations;         /* completed iterations */
  uint64_t io_events;          /* I/O readiness events delivered */
  uint64_t stale_events;       /* events dropped: source gone or fd reused */
  uint64_t timers_fired;       /* timer and date callbacks run */
  uint64_t defers_run;         /* deferred calls run */
  uint64_t signals;            /* signal callbacks run */
  uint64_t fs_events;          /* fs-watch callbacks run */
  uint64_t wakeups;            /* wake callbacks run */
  uint64_t posts_run;          /* posted callbacks run (ax_loop_post*) */
  uint64_t handoffs_adopted;   /* I/O sources adopted by handoff (from
                                  another loop or this one) */
  uint64_t handoffs_failed;    /* handoffs that closed the fd instead */
  uint64_t mailbox_wakes;      /* sleeps a poster interrupted (one wake
                                  system call each) */
  size_t mailbox_depth;        /* messages waiting in the mailbox */
  size_t sources;              /* sources allocated (not yet freed) */
  size_t active;               /* of which active */
  size_t referenced;           /* of which active and referenced */
} ax_loop_info_t;

/**
 * ax_loop_info() - copy counters and backend facts into @info. The strings
 * are owned by the loop and valid until it is freed. Returns 0 or -EINVAL.
 */
AX_API int ax_loop_info(const ax_loop_t *loop, ax_loop_info_t *info);

/** ax_loop_backend() - name of the backend in use ("epoll", "io_uring", ...). */
AX_API const char *ax_loop_backend(const ax_loop_t *loop);

/**
 * ax_loop_dump() - print every source of the loop, one per line, with its
 * kind, state and parameters, then the counters. For debugging.
 */
AX_API void ax_loop_dump(const ax_loop_t *loop, FILE *out);

/**
 * ax_loop_verify() - check the loop's internal structures: timer wheel order
 * and bitmaps, list links, fd table, counts and reference totals.
 * @why: buffer that receives a description of the first broken invariant
 *       (may be NULL); @why_len: its size.
 * Returns 0 if all hold, AX_ECORRUPT otherwise. Cost is linear in the number
 * of sources; meant for tests and debugging.
 */
AX_API int ax_loop_verify(const ax_loop_t *loop, char *why, size_t why_len);

/**
 * ax_loop_clock_changed() - re-evaluate date timers now, as the loop does by
 * itself when the kernel reports a wall-clock step (timerfd cancel-on-set).
 * Useful with an injected clock (see ax_loop_options_t).
 */
AX_API void ax_loop_clock_changed(ax_loop_t *loop);

/* ------------------------------------------------------------------------ */
/* Sources: operations common to every kind                                 */
/* ------------------------------------------------------------------------ */

typedef enum ax_source_kind {
  AX_SOURCE_IO = 1,
  AX_SOURCE_TIMER,
  AX_SOURCE_DATE,
  AX_SOURCE_DEFER,
  AX_SOURCE_SIGNAL,
  AX_SOURCE_FSWATCH,
  AX_SOURCE_WAKE
} ax_source_kind_t;

/**
 * ax_source_stop() - disarm a source; it keeps its settings and can be
 * started again. Stopping an inactive source is a no-op. Safe inside any
 * callback, including the source's own. Returns 0 or -EINVAL (NULL).
 */
AX_API int ax_source_stop(ax_source_t *src);

/**
 * ax_source_free() - stop and release a source. The handle is invalid after
 * the call; no callback of it runs any more. Safe inside any callback,
 * including its own. Does not close a caller-supplied fd. NULL is a no-op.
 */
AX_API void ax_source_free(ax_source_t *src);

/**
 * ax_source_unref() / ax_source_ref() - whether the source, while active,
 * keeps ax_loop_run(AX_RUN_DEFAULT) running. Sources are referenced when
 * created. Idempotent.
 */
AX_API void ax_source_unref(ax_source_t *src);
AX_API void ax_source_ref(ax_source_t *src);

/** ax_source_is_active() - true between a successful start and a stop. */
AX_API bool ax_source_is_active(const ax_source_t *src);

/** ax_source_data() / ax_source_set_data() - the user data pointer. */
AX_API void *ax_source_data(const ax_source_t *src);
AX_API void ax_source_set_data(ax_source_t *src, void *data);

/** ax_source_loop() - the loop a source belongs to. */
AX_API ax_loop_t *ax_source_loop(const ax_source_t *src);

/** ax_source_kind() - the kind of a source. */
AX_API ax_source_kind_t ax_source_kind(const ax_source_t *src);

/** ax_source_kind_name() - "io", "timer", ... ; "?" for an unknown value. */
AX_API const char *ax_source_kind_name(ax_source_kind_t kind);

/* ------------------------------------------------------------------------ */
/* I/O readiness                                                             */
/* ------------------------------------------------------------------------ */

/* Interest (ax_io_start) and readiness (callback) bits. */
#define AX_READABLE 0x01u
#define AX_WRITABLE 0x02u
#define AX_ERROR 0x04u  /* readiness only: error on the fd (always reported) */
#define AX_HANGUP 0x08u /* readiness only: peer hung up (always reported) */
/* Trigger modes (ax_io_start). The default is level-triggered. */
#define AX_IO_EDGE 0x100u    /* edge-triggered (epoll, io_uring only) */
#define AX_IO_ONESHOT 0x200u /* stop the source after one event */

/**
 * ax_io_cb - called on the loop's thread when @fd is ready.
 * @revents: AX_READABLE / AX_WRITABLE / AX_ERROR / AX_HANGUP bits.
 */
typedef void (*ax_io_cb)(ax_source_t *src, int fd, unsigned revents,
                         void *data);

/**
 * ax_io_new() - create an I/O readiness source for @fd (inactive).
 * @fd: open descriptor; stays owned by the caller, who closes it after
 *      ax_source_stop() or ax_source_free(). Set it non-blocking yourself.
 * One I/O source per fd per loop: a second one for an fd that already has one
 * fails with -EEXIST. Returns 0, -EINVAL (fd < 0, NULL cb/out), -EEXIST,
 * -ENOMEM, or AX_EFDTOOBIG (select backend, fd >= FD_SETSIZE).
 */
AX_API int ax_io_new(ax_loop_t *loop, int fd, ax_io_cb cb, void *data,
                     ax_source_t **out);

/**
 * ax_io_start() - watch the fd for @events, or change what is watched.
 * @events: AX_READABLE and/or AX_WRITABLE, optionally AX_IO_EDGE or
 *          AX_IO_ONESHOT. Errors and hang-ups are always reported.
 * Returns 0; -EINVAL (no interest bit, unknown bit, both EDGE and ONESHOT);
 * -ENOTSUP (AX_IO_EDGE on poll or select); AX_ENOTPOLLABLE (epoll refuses the
 * fd: regular files, directories and devices without poll support such as
 * /dev/null — they are always ready; use poll or select, or file I/O);
 * -EBADF (fd closed); -ENOMEM.
 */
AX_API int ax_io_start(ax_source_t *src, unsigned events);

/** ax_io_fd() - the fd of an I/O source, or AX_EKIND / -EINVAL. */
AX_API int ax_io_fd(const ax_source_t *src);

/* ------------------------------------------------------------------------ */
/* Timers (monotonic) and date timers (wall clock)                          */
/* ------------------------------------------------------------------------ */

/** Return this from a timer callback to keep the configured behaviour. */
#define AX_TIMER_CONTINUE ((int64_t)-1)

/**
 * ax_timer_cb - called when a timer or date timer is due.
 * Return AX_TIMER_CONTINUE to keep the configured behaviour (an interval
 * timer re-arms, a one-shot one stops), or a delay >= 0 in ms to re-arm the
 * source that far from now (0: the next iteration) — the redis/ae pattern.
 * The return value is ignored if the callback stopped, restarted or freed
 * the source.
 */
typedef int64_t (*ax_timer_cb)(ax_source_t *src, void *data);

/**
 * ax_timer_new() - create a monotonic timer (inactive).
 * Returns 0, -EINVAL or -ENOMEM.
 */
AX_API int ax_timer_new(ax_loop_t *loop, ax_timer_cb cb, void *data,
                        ax_source_t **out);

/**
 * ax_timer_start() - (re)arm a timer @timeout_ms after ax_loop_now(); if
 * @repeat_ms is non-zero it then fires every @repeat_ms. Timers due at the
 * same time fire in the order they were started. Restarting an active timer
 * re-arms it. Returns 0, -EINVAL, or -ERANGE (@repeat_ms > UINT32_MAX; use a
 * callback that returns the delay for longer periods).
 */
AX_API int ax_timer_start(ax_source_t *src, uint64_t timeout_ms,
                          uint64_t repeat_ms);

/**
 * ax_timer_due_in() - ms until an active timer or date timer fires (0 if
 * due). Returns 0 and sets *@ms; -EINVAL if inactive; AX_EKIND otherwise.
 */
AX_API int ax_timer_due_in(const ax_source_t *src, uint64_t *ms);

/**
 * ax_date_new() - create a date timer (inactive): fires when the wall clock
 * (CLOCK_REALTIME) reaches a date, even if the clock is stepped meanwhile.
 * Uses the timer callback type. Returns 0, -EINVAL or -ENOMEM.
 */
AX_API int ax_date_new(ax_loop_t *loop, ax_timer_cb cb, void *data,
                       ax_source_t **out);

/**
 * ax_date_start() - arm a date timer for @when_ms, in ms since the epoch.
 * A date in the past fires on the next iteration. A delay returned by the
 * callback re-arms it at wall-clock now + delay. Date timers are kept in a
 * sorted list: meant for tens of dates, not millions (use timers for those).
 * Returns 0, -EINVAL, or the errno of creating the clock-step watcher.
 */
AX_API int ax_date_start(ax_source_t *src, int64_t when_ms);

/** ax_realtime_ms() - the loop's wall clock (injected or CLOCK_REALTIME). */
AX_API int64_t ax_realtime_ms(const ax_loop_t *loop);

/* ------------------------------------------------------------------------ */
/* Deferred calls                                                            */
/* ------------------------------------------------------------------------ */

typedef void (*ax_defer_cb)(ax_source_t *src, void *data);

/** ax_defer_new() - create a deferred call (inactive). 0/-EINVAL/-ENOMEM. */
AX_API int ax_defer_new(ax_loop_t *loop, ax_defer_cb cb, void *data,
                        ax_source_t **out);

/**
 * ax_defer_start() - queue the call once: it runs after the current callback
 * returns, in this iteration's deferred phase if queued before it, else in
 * the next; never recursively inside the deferred phase that queued it. While
 * queued the loop does not block. Queuing a queued call is a no-op (one run).
 * Afterwards the source is inactive again. Returns 0 or -EINVAL.
 */
AX_API int ax_defer_start(ax_source_t *src);

/* ------------------------------------------------------------------------ */
/* Signals                                                                   */
/* ------------------------------------------------------------------------ */

typedef void (*ax_signal_cb)(ax_source_t *src, int signo, void *data);

/** ax_signal_new() - create a signal watcher (inactive). */
AX_API int ax_signal_new(ax_loop_t *loop, ax_signal_cb cb, void *data,
                         ax_source_t **out);

/**
 * ax_signal_start() - deliver @signo to this loop as an event: the callback
 * runs on the loop's thread, never in signal context (signalfd). Several
 * sources of one loop may watch the same signal; each is called.
 *
 * The signal is blocked in the calling thread (the loop's). It must be
 * blocked in every other thread of the process too, or the kernel may hand
 * it to a thread that does not block it: block it before creating threads
 * (they inherit the mask). If two loops watch the same signal, each
 * occurrence reaches one of them. Standard signals raised several times
 * before the loop reads them coalesce into one event.
 * When the last source of a signal stops, the signal is unblocked again in
 * the loop's thread if the loop was the one that blocked it.
 * Returns 0, -EINVAL (bad signo, SIGKILL, SIGSTOP), or the errno of signalfd.
 */
AX_API int ax_signal_start(ax_source_t *src, int signo);

/* ------------------------------------------------------------------------ */
/* File-system watch                                                         */
/* ------------------------------------------------------------------------ */

#define AX_FS_CHANGE 0x01u   /* contents written */
#define AX_FS_ATTRIB 0x02u   /* metadata (mode, owner, times, links) */
#define AX_FS_DELETE 0x04u   /* the path, or an entry of a watched dir */
#define AX_FS_RENAME 0x08u   /* moved: the path, or an entry of the dir */
#define AX_FS_CREATE 0x10u   /* an entry created in a watched directory */
#define AX_FS_OVERFLOW 0x20u /* events were lost: rescan (kernel queue full) */
#define AX_FS_ENDED 0x40u    /* watch ended (path deleted or unmounted);
                                the source is stopped before the callback */
#define AX_FS_ALL 0x1fu

/**
 * ax_fswatch_cb - @events is a set of AX_FS_* bits; @name is the entry name
 * inside a watched directory, or NULL when the event is about the path
 * itself. @name is valid during the call only.
 */
typedef void (*ax_fswatch_cb)(ax_source_t *src, unsigned events,
                              const char *name, void *data);

/** ax_fswatch_new() - create a file-system watcher (inactive). */
AX_API int ax_fswatch_new(ax_loop_t *loop, ax_fswatch_cb cb, void *data,
                          ax_source_t **out);

/**
 * ax_fswatch_start() - watch @path (a file or a directory; not recursive)
 * for the AX_FS_* events in @mask (0 means AX_FS_ALL). The path is copied.
 * AX_FS_OVERFLOW and AX_FS_ENDED are always reported. Returns 0, -EINVAL,
 * -ENOENT, -EACCES, -ENOSPC (watch limit), -ENOMEM, or another errno of
 * inotify.
 */
AX_API int ax_fswatch_start(ax_source_t *src, const char *path,
                            unsigned mask);

/* ------------------------------------------------------------------------ */
/* Wake                                                                      */
/* ------------------------------------------------------------------------ */

typedef void (*ax_wake_cb)(ax_source_t *src, void *data);

/**
 * ax_wake_new() - create a wake source: an eventfd other threads can signal
 * with ax_wake_send(); the callback then runs on the loop's thread. Several
 * sends before the loop reacts coalesce into one callback. Created inactive;
 * unreference it (ax_source_unref) if it should not keep the loop running.
 * Returns 0, -EINVAL, -ENOMEM, or the errno of eventfd (-EMFILE, ...).
 */
AX_API int ax_wake_new(ax_loop_t *loop, ax_wake_cb cb, void *data,
                       ax_source_t **out);

/** ax_wake_start() - arm a wake source. Returns 0, -EINVAL or -ENOMEM. */
AX_API int ax_wake_start(ax_source_t *src);

/**
 * ax_wake_send() - wake the loop. Thread-safe and async-signal-safe; never
 * blocks. The caller must make sure the source is not freed concurrently.
 * A send to an inactive source is remembered until it is started.
 * Returns 0, AX_EKIND, or -EINVAL.
 */
AX_API int ax_wake_send(ax_source_t *src);

/* ------------------------------------------------------------------------ */
/* Cross-thread: posts and source handoff                                    */
/* ------------------------------------------------------------------------ */
/*
 * Every loop owns one mailbox (axon/mailbox.h). Other threads reach the
 * loop only through it: ax_loop_post() and ax_loop_post_node() queue a
 * callback, ax_io_handoff() moves an I/O source into it, ax_loop_stop()
 * stops it. These four, with ax_wake_send(), are the thread-safe functions
 * of this header. They never block the caller on the loop. The loop drains
 * its mailbox once per iteration, after I/O, in batches of at most 1024;
 * a loop asleep in its backend is woken by an eventfd write only when it
 * announced the sleep (see the wake protocol in axon/mailbox.h).
 *
 * A loop must outlive every thread that may still post to it: stop the
 * posting threads (or make them stop posting) before ax_loop_free(). That
 * call closes the mailbox — later posts get -ESHUTDOWN — then runs the
 * callbacks still queued and cancels the handoffs still queued (their fds
 * are closed, their callbacks see -ECANCELED), so nothing queued is lost.
 */

typedef void (*ax_post_fn)(void *arg);

/**
 * ax_loop_post() - run @fn(@arg) on @loop's thread, at its next mailbox drain
 * (once per iteration, after I/O; a post made during a drain may run in the
 * same one).
 * Thread-safe; never blocks. Callbacks posted by one thread run in the order
 * they were posted. Allocates one 32-byte node with malloc (the loop's
 * allocator hooks are not assumed thread-safe); ax_loop_post_node() avoids
 * that. Returns 0, -EINVAL (NULL loop or fn), -ENOMEM, -EAGAIN (the mailbox
 * is at its post_capacity: nothing was queued; retry later) or -ESHUTDOWN
 * (ax_loop_free() has begun).
 */
AX_API int ax_loop_post(ax_loop_t *loop, ax_post_fn fn, void *arg);

/**
 * A caller-owned post: embed it in your own message to post without
 * allocating. @fn receives the post (use container_of to reach the
 * message). Set @fn before posting; leave @node alone.
 */
typedef struct ax_post ax_post_t;
struct ax_post {
  ax_mbnode_t node;
  void (*fn)(ax_post_t *post);
};

/**
 * ax_loop_post_node() - queue @post; @post->fn(@post) runs on @loop's
 * thread. Thread-safe; never blocks; never allocates. The post belongs to
 * the loop from a successful call until its fn starts; fn may then free it,
 * reuse it or post it again. Same order and errors as ax_loop_post(), minus
 * -ENOMEM.
 */
AX_API int ax_loop_post_node(ax_loop_t *loop, ax_post_t *post);

/**
 * ax_handoff_cb - runs on the destination loop's thread when a handoff is
 * over (for -ECANCELED: on the thread that calls ax_loop_free() on it).
 * @status 0: @src is the adopted source, registered with the destination's
 * backend with the interest, mode, callback, data and reference state it
 * had (armed if it was active); it belongs to the destination loop now.
 * @status < 0: the fd could not be adopted and has been closed; @src is
 * NULL. Causes: -ECANCELED (the destination was freed first), -ENOMEM,
 * -EEXIST (the destination already watches that fd number), AX_EFDTOOBIG
 * (select backend), -ENOTSUP (edge mode on a backend without it),
 * AX_ENOTPOLLABLE (e.g. a regular file into an epoll loop), or another
 * backend error. @data is the handoff's @data.
 */
typedef void (*ax_handoff_cb)(ax_source_t *src, int status, void *data);

/**
 * ax_io_handoff() - move I/O source @src to loop @dest.
 *
 * Call on the thread of @src's loop. On success @src is removed from its
 * loop at once (its handle is invalid after the call: do not stop or free
 * it; its callback will not run here again), and a control message carries
 * the fd, its interest and mode, its callback and data to @dest, which
 * registers them with its own backend and then calls @cb there. The fd is
 * adopted or closed exactly once, even when @dest is full (a handoff is a
 * control message, never refused for capacity) or is freed before it gets
 * there (@cb sees -ECANCELED). Bytes in flight stay in the kernel's buffers:
 * the new owner sees them as readiness.
 *
 * Returns 0, -EINVAL (NULL argument, or @src is being freed), AX_EKIND (not
 * an I/O source), -ENOMEM (nothing moved) or -ESHUTDOWN (@dest is being
 * freed; nothing moved). On an error @src stays where it was, untouched,
 * and @cb is not called — except if @dest's ax_loop_free() begins during
 * this very call (which the rule above forbids): then -ESHUTDOWN comes
 * after the removal and the fd has been closed. Not thread-safe with respect to @src's own loop
 * (it must be called there); thread-safe with respect to @dest.
 */
AX_API int ax_io_handoff(ax_source_t *src, ax_loop_t *dest, ax_handoff_cb cb,
                         void *data);

#ifdef __cplusplus
}
#endif
#endif /* AXON_LOOP_H */
