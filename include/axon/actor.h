/*
 * axon — actors on a runtime of worker threads.
 *
 * A runtime (ax_rt_t) starts N worker threads; each owns one loop and its
 * proactor. An actor is a behaviour (init, receive, terminate over a state)
 * plus a mailbox, and lives on one worker for its whole life: every
 * callback of an actor runs on that worker's thread, one at a time, so an
 * actor's state needs no lock. Actors talk only by messages.
 *
 * Identity. An actor is named by an ax_aid_t: worker, slot and generation.
 * A slot is reused after its actor exits, with the next generation, so a
 * stale id never reaches the new tenant: a send to it fails with -ESRCH
 * when the sender can see it is dead, else the message becomes a dead
 * letter (counted, its payload freed once).
 *
 * Messages. A tag (user tags are below AX_TAG_SYSTEM), the sender's id and
 * a payload. ax_send() copies the payload (inside the message up to
 * AX_MSG_INLINE bytes, else into one allocation); ax_send_move() hands a
 * buffer over with its free function. Sends between actors of one worker
 * take no atomic operation; sends to another worker go through its loop's
 * mailbox (a lock-free queue drained in batches; the worker is woken only
 * when it sleeps). Order is kept per sender-receiver pair.
 *
 * Scheduling. A worker runs its ready actors round-robin, at most `batch`
 * messages (default 100) per actor per turn, and hands the thread back to
 * its loop (I/O, timers, cross-worker mail) after at most 64 turns or 4096
 * messages, so neither one busy actor nor a busy worker starves the rest.
 * A message an actor sends to itself may run within the same turn: a
 * sender that loops "send a burst, then a message to self to go on" runs
 * up to `batch` bursts in a row before anyone else does.
 *
 * Mailbox bound. Each actor has a capacity (default 65,536 messages). A
 * user message to a full actor is refused with -EAGAIN and nothing is
 * queued (the sender still owns the payload): exact for senders on the same
 * worker; across workers the "full" state is published by the owner and
 * read by the sender, so up to the messages already in flight may land
 * above it. Control traffic (exits, DOWN, link exits, timer ticks, request
 * timeouts, offload results, moved streams) is never refused.
 *
 * Threading. Functions taking an ax_actor_t *self must be called on that
 * actor's worker, from its callbacks (or from proactor callbacks on that
 * worker's loop). Functions taking an ax_rt_t are thread-safe unless said
 * otherwise. Errors are 0 or a negative errno (ax_strerror()).
 */
#ifndef AXON_ACTOR_H
#define AXON_ACTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <axon/error.h>
#include <axon/loop.h>
#include <axon/proactor.h>
#include <axon/version.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ax_rt ax_rt_t;
/** The running actor, as its own callbacks see it ("self"). */
typedef struct ax_actor ax_actor_t;
/** An actor id: worker (8 bits), generation (24 bits), slot (32 bits). */
typedef uint64_t ax_aid_t;
#define AX_AID_NONE ((ax_aid_t)0)

/** Worker selectors for spawning. */
#define AX_WORKER_SELF (-1) /* the caller's worker (off-worker: like ANY) */
#define AX_WORKER_ANY (-2)  /* the runtime's placement: round-robin */

/** Bytes of payload carried inside the message itself. */
#define AX_MSG_INLINE 24

/* ------------------------------------------------------------------------ */
/* Messages                                                                  */
/* ------------------------------------------------------------------------ */

/** Tags from here up are the runtime's. */
#define AX_TAG_SYSTEM 0xFFFF0000u
/** A monitored actor exited: data is an ax_down_t. */
#define AX_TAG_DOWN (AX_TAG_SYSTEM + 1)
/** A linked actor exited and self traps exits: data is an ax_down_t. */
#define AX_TAG_EXIT (AX_TAG_SYSTEM + 2)
/** No reply to the request m->ref came in time. */
#define AX_TAG_TIMEOUT (AX_TAG_SYSTEM + 3)

/** Exit reasons. */
enum {
  AX_EXIT_NORMAL = 0,   /* ax_exit(self, AX_EXIT_NORMAL): links survive it */
  AX_EXIT_ERROR = 1,    /* a failure (init failed, ax_exit with it) */
  AX_EXIT_KILLED = 2,   /* ax_kill(), or a linked actor's abnormal exit */
  AX_EXIT_SHUTDOWN = 3, /* the runtime stopped */
  AX_EXIT_NOPROC = 4    /* (DOWN only) the actor was already gone */
};

/** Payload of AX_TAG_DOWN and AX_TAG_EXIT. */
typedef struct ax_down {
  ax_aid_t aid; /* who exited */
  int reason;   /* AX_EXIT_* */
} ax_down_t;

/**
 * A message as the receive callback sees it. @data points to @len bytes
 * that stay valid until the callback returns; a moved payload is then
 * freed with its free function unless the receiver took it with
 * ax_msg_take(). @ref is non-zero on a request (pass the message to
 * ax_reply()), on a reply (the value ax_request() gave) and on
 * AX_TAG_TIMEOUT.
 */
typedef struct ax_msg {
  ax_aid_t from; /* the sending actor, or AX_AID_NONE */
  uint64_t ref;
  void *data;
  uint32_t len;
  uint32_t tag;
} ax_msg_t;

/**
 * ax_msg_take() - keep a message's payload past the receive callback.
 * Returns the payload, now owned by the caller: a moved payload as it was
 * sent (free it with its free function), a copied one in a malloc() block
 * (free() it; a copy of more than AX_MSG_INLINE bytes is handed over as
 * is, a smaller one is copied out of the message). NULL for an empty
 * payload or when out of memory (then the message keeps it). Call from the
 * receive callback only.
 */
AX_API void *ax_msg_take(ax_msg_t *m);

/* ------------------------------------------------------------------------ */
/* Behaviours                                                                */
/* ------------------------------------------------------------------------ */

/**
 * What an actor does. Every callback runs on the actor's worker.
 * @state_size: bytes of state allocated with the actor and zeroed (0: the
 *   state pointer is the spawn argument itself).
 * @init: runs first, before any message, with the spawn argument; return
 *   < 0 to fail: the actor exits with AX_EXIT_ERROR (terminate still runs).
 *   It runs exactly once for every successful ax_spawn(), even when the
 *   actor is killed or its worker stops before its first turn (it is where
 *   the argument is taken over); the exit follows right after. May be
 *   NULL.
 * @receive: one message. Required.
 * @terminate: runs exactly once when the actor ends, whatever the reason
 *   (its exit, a kill, a link, the runtime's stop), after which its
 *   timers, monitors, links, group memberships and queued messages are
 *   gone. May be NULL.
 * @name: shown by ax_rt_dump(); may be NULL.
 */
typedef struct ax_behaviour {
  size_t state_size;
  int (*init)(ax_actor_t *self, void *state, void *arg);
  void (*receive)(ax_actor_t *self, void *state, ax_msg_t *m);
  void (*terminate)(ax_actor_t *self, void *state, int reason);
  const char *name;
} ax_behaviour_t;

/* ------------------------------------------------------------------------ */
/* Runtime                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct ax_rt_options {
  unsigned workers;       /* worker threads; 0: the number of online CPUs */
  bool pin;               /* pin worker i to CPU i mod CPUs */
  ax_backend_t backend;   /* every worker's loop backend (default: auto) */
  uint32_t capacity;      /* default per-actor mailbox capacity; 0: 65536 */
  unsigned batch;         /* messages per actor turn; 0: 100 */
  unsigned offload_threads; /* ax_offload() pool size; 0: 2 (made on use) */
  /** Before sleeping, a worker busy-waits up to this many ns for mail from
   *  other workers (the loop option spin_ns): cross-worker round trips
   *  then cost no system call, at the price of CPU burnt while idle. 0
   *  (default): never spin. */
  uint32_t spin_ns;
  /** Stop the runtime on SIGINT and SIGTERM (blocked in every thread of the
   *  runtime and in the caller of ax_rt_new(), delivered through the first
   *  worker's loop). */
  bool stop_on_signals;
} ax_rt_options_t;

/** Defaults (all zero). */
AX_API void ax_rt_options_init(ax_rt_options_t *o);

/**
 * ax_rt_new() - start a runtime: its workers run until ax_rt_stop().
 * @opts NULL: defaults. Errors: -EINVAL (more than 256 workers), -ENOMEM,
 * -EAGAIN (a thread could not be started), a loop creation error.
 */
AX_API int ax_rt_new(const ax_rt_options_t *opts, ax_rt_t **out);

/**
 * ax_rt_stop() - stop every worker: each one ends its actors (terminate
 * runs once each, with AX_EXIT_SHUTDOWN; their connections close; queued
 * messages are freed as dead letters), closes its acceptors and leaves its
 * loop. Messages and spawns that reach a stopped worker are dead letters.
 * Thread-safe, idempotent, never blocks; callable from an actor.
 */
AX_API void ax_rt_stop(ax_rt_t *rt);

/**
 * ax_rt_join() - wait until every worker has stopped, and the offload
 * pool's running jobs with them. Not from a worker thread (-EDEADLK).
 */
AX_API int ax_rt_join(ax_rt_t *rt);

/**
 * ax_rt_free() - stop, join and free the runtime: the messages still
 * queued anywhere are freed, the loops closed (a backlog of millions of
 * messages takes seconds to free: a mailbox bound is per actor, and
 * senders are not limited in how many actors they fill). Not from a worker
 * thread. No other thread may use @rt once this begins.
 */
AX_API void ax_rt_free(ax_rt_t *rt);

/** Number of workers. */
AX_API unsigned ax_rt_workers(const ax_rt_t *rt);

/** Worker @i's loop (for sources and streams of actors living there: use
 *  it only from that worker's thread). NULL if out of range. */
AX_API ax_loop_t *ax_rt_loop(const ax_rt_t *rt, unsigned i);

/** The worker the calling thread is, or -1 on any other thread. */
AX_API int ax_rt_current_worker(const ax_rt_t *rt);

/* ------------------------------------------------------------------------ */
/* Actors                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct ax_spawn_options {
  int worker;          /* an index, AX_WORKER_SELF (default) or _ANY */
  uint32_t capacity;   /* mailbox capacity; 0: the runtime's */
  bool trap_exit;      /* linked exits arrive as AX_TAG_EXIT messages */
  ax_aid_t link;       /* link to this actor at birth (or AX_AID_NONE) */
  ax_aid_t monitor_by; /* this actor monitors the new one from birth */
} ax_spawn_options_t;

/** Defaults: the caller's worker, the runtime's capacity, no link. */
AX_API void ax_spawn_options_init(ax_spawn_options_t *o);

/**
 * ax_spawn() - create an actor with behaviour @b (which must outlive it)
 * and argument @arg, and return its id in @out at once: messages may be
 * sent to it right away (they queue behind its init). init runs on the
 * actor's worker before any message. Thread-safe.
 * A spawn is a control message: never refused for capacity.
 * Errors: -EINVAL (no receive, bad worker), -ENOMEM (also: the worker's
 * 16 M slots are used up), -ESHUTDOWN (the runtime is stopping).
 */
AX_API int ax_spawn(ax_rt_t *rt, const ax_behaviour_t *b, void *arg,
                    const ax_spawn_options_t *opts, ax_aid_t *out);

/** The running actor's id, runtime, worker index, loop and state. */
AX_API ax_aid_t ax_self(const ax_actor_t *self);
AX_API ax_rt_t *ax_actor_rt(const ax_actor_t *self);
AX_API unsigned ax_actor_worker(const ax_actor_t *self);
AX_API ax_loop_t *ax_actor_loop(const ax_actor_t *self);
AX_API void *ax_actor_state(const ax_actor_t *self);

/**
 * ax_exit() - end self after the current callback returns, with @reason
 * (AX_EXIT_*, or any other int > 0 for an error of your own). Messages
 * still queued are dropped (dead letters). Idempotent: the first reason
 * counts.
 */
AX_API void ax_exit(ax_actor_t *self, int reason);

/**
 * ax_kill() - end actor @aid with AX_EXIT_KILLED, wherever it lives; it
 * runs no further message, then its terminate. Thread-safe. A control
 * message: never refused for capacity. -ESRCH if it is known to be gone.
 */
AX_API int ax_kill(ax_rt_t *rt, ax_aid_t aid);

/** Whether linked exits arrive as messages (AX_TAG_EXIT) for self. */
AX_API void ax_trap_exit(ax_actor_t *self, bool on);

/* ------------------------------------------------------------------------ */
/* Sending                                                                   */
/* ------------------------------------------------------------------------ */

/**
 * ax_send() - send @tag with a copy of @len bytes at @data to @to.
 * @self: the sending actor, or NULL from any other code (then the message
 * has no sender; use ax_rt_send() off the runtime's workers).
 * Errors: -EINVAL (tag ≥ AX_TAG_SYSTEM, NULL data with len), -ESRCH (@to
 * is known to be gone), -EAGAIN (its mailbox, or its worker's, is full:
 * nothing was sent), -ENOMEM, -ESHUTDOWN.
 */
AX_API int ax_send(ax_actor_t *self, ax_aid_t to, uint32_t tag,
                   const void *data, size_t len);

/**
 * ax_send_move() - send @data itself: on success the message owns it and
 * it is freed with @free_fn (NULL: not freed) after the receiver is done
 * with it, or when it cannot be delivered. On error the caller keeps it.
 */
AX_API int ax_send_move(ax_actor_t *self, ax_aid_t to, uint32_t tag,
                        void *data, size_t len, void (*free_fn)(void *));

/** ax_rt_send() - ax_send() from any thread (no sender id). */
AX_API int ax_rt_send(ax_rt_t *rt, ax_aid_t to, uint32_t tag,
                      const void *data, size_t len);

/**
 * ax_request() - send @tag to @to as a request: the receiver answers with
 * ax_reply(); self then receives the reply with m->ref == *ref, or an
 * AX_TAG_TIMEOUT message with that ref after @timeout_ms (0: no timeout) —
 * exactly one of the two. A reply after the timeout is dropped.
 */
AX_API int ax_request(ax_actor_t *self, ax_aid_t to, uint32_t tag,
                      const void *data, size_t len, uint64_t timeout_ms,
                      uint64_t *ref);

/** ax_reply() - answer request @req (as received) with @tag and a copy of
 *  @data. -EINVAL if @req is not a request. */
AX_API int ax_reply(ax_actor_t *self, const ax_msg_t *req, uint32_t tag,
                    const void *data, size_t len);

/* ------------------------------------------------------------------------ */
/* Timers, monitors, links                                                   */
/* ------------------------------------------------------------------------ */

/**
 * ax_after() / ax_every() - self receives @tag (empty payload, from itself)
 * after @ms, or every @ms. Returns a timer id (> 0) in @id for
 * ax_cancel_timer(); timers die with the actor. Tick messages are never
 * refused for capacity; an interval does not queue a second tick while
 * one is still waiting in the mailbox.
 */
AX_API int ax_after(ax_actor_t *self, uint64_t ms, uint32_t tag, uint64_t *id);
AX_API int ax_every(ax_actor_t *self, uint64_t ms, uint32_t tag, uint64_t *id);
/** Cancel a timer of self: no tick of it arrives after this returns
 *  (a tick already queued is dropped). -ENOENT if unknown or spent. */
AX_API int ax_cancel_timer(ax_actor_t *self, uint64_t id);

/**
 * ax_monitor() - self receives one AX_TAG_DOWN (ax_down_t) when @target
 * exits, with its reason; at once with AX_EXIT_NOPROC if it is already
 * gone. Monitoring twice gives two DOWNs.
 */
AX_API int ax_monitor(ax_actor_t *self, ax_aid_t target);

/**
 * ax_link() - link self and @other both ways: when one exits with a reason
 * other than AX_EXIT_NORMAL, the other is killed with AX_EXIT_KILLED —
 * unless it traps exits, then it receives AX_TAG_EXIT (as it does for a
 * normal exit). Linking to a gone actor acts as if it just exited with
 * AX_EXIT_NOPROC.
 */
AX_API int ax_link(ax_actor_t *self, ax_aid_t other);
/** Remove a link both ways (no exit crosses it afterwards). -ENOENT if
 *  there is no such link. */
AX_API int ax_unlink(ax_actor_t *self, ax_aid_t other);

/* ------------------------------------------------------------------------ */
/* Groups                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct ax_group ax_group_t;

/** A broadcast group of actors on any workers. Thread-safe throughout. */
AX_API int ax_group_new(ax_rt_t *rt, ax_group_t **out);
/** Free a group (its members are not told). Not while another thread uses
 *  it. */
AX_API void ax_group_free(ax_group_t *g);
/** Add or remove a member; an actor that exits leaves its groups. -EEXIST /
 *  -ENOENT. Joining from the member itself (self) is the usual way. */
AX_API int ax_group_join(ax_group_t *g, ax_actor_t *self);
AX_API int ax_group_leave(ax_group_t *g, ax_actor_t *self);
/**
 * ax_group_send() - send @tag and a copy of @data to every member (the
 * sender @self included if it is a member, unless @skip_self). One copy of
 * the payload is shared by all (read-only), and one mailbox push per
 * worker carries it there. Members whose mailbox is full miss it (counted
 * as refused). @self may be NULL. Returns the number of members it was
 * sent to (for members on other workers: handed to their worker; one that
 * left or is full by the time it arrives misses it), or a negative error.
 */
AX_API int ax_group_send(ax_group_t *g, ax_actor_t *self, bool skip_self,
                         uint32_t tag, const void *data, size_t len);
/** Members right now. */
AX_API unsigned ax_group_size(const ax_group_t *g);

/* ------------------------------------------------------------------------ */
/* Offload                                                                   */
/* ------------------------------------------------------------------------ */

/**
 * ax_offload() - run @fn(@arg) on the runtime's blocking pool; then self
 * receives @tag with m->data == @arg (moved: freed with @free_fn after the
 * receive callback unless taken). If self is gone by then, @arg is freed
 * with @free_fn. Jobs not started when the runtime stops are not run: @arg
 * is freed. Errors: -EINVAL, -ENOMEM, -ESHUTDOWN, -EAGAIN (no pool thread
 * could be started).
 */
AX_API int ax_offload(ax_actor_t *self, void (*fn)(void *arg), void *arg,
                      void (*free_fn)(void *), uint32_t tag);

/* ------------------------------------------------------------------------ */
/* Acceptor and connection actors                                            */
/* ------------------------------------------------------------------------ */

/** How accepted connections are spread over workers. */
typedef enum ax_place {
  AX_PLACE_ROUND_ROBIN = 0, /* one acceptor, workers in turn */
  AX_PLACE_LEAST_CONN,      /* one acceptor, the worker with fewest
                               connection actors */
  AX_PLACE_REUSEPORT        /* a listener per worker (SO_REUSEPORT): the
                               kernel spreads, no hand-off */
} ax_place_t;

/**
 * What a connection actor's init receives as its argument. @stream is the
 * connection, opened on the actor's own loop; the actor owns it: the
 * runtime closes it after terminate unless it was given away, so do not
 * ax_stream_close() it yourself — end the actor (ax_exit()) instead. The
 * stream's user data (ax_stream_data(), and the ud of read and drain
 * callbacks) is the actor until the actor ends or gives the stream away,
 * then NULL. Completions still owed at that point run later — a write's or
 * a shutdown's -ECANCELED, a drain — and the ud a write or shutdown
 * callback receives is the one it was given when it was asked for, which
 * may name the ended actor: in those callbacks find the actor with
 * ax_stream_data(s) (NULL: it has ended, do nothing). Valid during init
 * only; keep @stream, not this.
 */
typedef struct ax_conn {
  ax_stream_t *stream;
  ax_addr_t peer;
  void *arg; /* ax_acceptor_options_t.arg */
} ax_conn_t;

typedef struct ax_acceptor_options {
  ax_place_t place;
  int backlog;          /* 0: SOMAXCONN */
  int worker;           /* the acceptor's worker (not for REUSEPORT); 0 */
  void *arg;            /* passed to every connection actor in ax_conn_t */
  uint32_t capacity;    /* connection actors' mailbox capacity; 0: default */
} ax_acceptor_options_t;

/** Defaults (all zero): AX_PLACE_ROUND_ROBIN, SOMAXCONN,
 *  the acceptor on worker 0, no argument, the runtime's capacity. */
AX_API void ax_acceptor_options_init(ax_acceptor_options_t *o);

typedef struct ax_acceptor ax_acceptor_t;

/**
 * ax_listen() - listen on @addr and spawn one actor with behaviour @conn
 * per accepted connection, on the worker @opts->place picks (a fd handed
 * to another worker is registered there with its own loop and proactor).
 * The proactor's fd-exhaustion policy applies (shed and pause, never
 * spin). Waits until the listener(s) are bound, so the address is
 * readable on return (ax_acceptor_addr()). Thread-safe; not from a worker
 * thread for REUSEPORT (-EDEADLK). Errors: those of ax_listener_new(),
 * -ESHUTDOWN.
 */
AX_API int ax_listen(ax_rt_t *rt, const ax_addr_t *addr,
                     const ax_behaviour_t *conn,
                     const ax_acceptor_options_t *opts, ax_acceptor_t **out);

/** The bound address (the real port when 0 was asked). */
AX_API int ax_acceptor_addr(const ax_acceptor_t *a, ax_addr_t *out);

/**
 * ax_acceptor_close() - stop accepting: the listener(s) close on their
 * workers (at once when called there, else at those workers' next mailbox
 * drain); connections already accepted, and their actors, go on. The
 * acceptor's memory stays with the runtime (its address and count remain
 * readable). Thread-safe. -EALREADY on a second call.
 */
AX_API int ax_acceptor_close(ax_acceptor_t *a);

/** Connections accepted so far (all listeners). */
AX_API uint64_t ax_acceptor_accepted(const ax_acceptor_t *a);

/** The connection stream of a connection actor: the first stream self
 *  owns, NULL if none (all given away). */
AX_API ax_stream_t *ax_actor_stream(const ax_actor_t *self);

/**
 * ax_stream_give() - hand @s, a stream self owns, to actor @to on any
 * worker. @s must be idle (read stopped, nothing queued: see
 * ax_stream_detach()); its fd moves and is opened on @to's loop, and @to
 * receives @tag with m->data pointing to the new ax_stream_t * (m->len is
 * the size of a pointer). @to owns it from then on, exactly as a
 * connection actor owns its connection (its user data is @to; the runtime
 * closes it when @to ends). Bytes not yet read stay in the kernel: nothing
 * is lost or reordered. If @to is gone, or the fd cannot be opened there,
 * the connection is closed. On success @s is invalid in the caller.
 * Errors (then @s is untouched and still self's): -EBUSY (not idle),
 * -ENOENT (not self's), -ESRCH (@to is known to be gone), -ENOMEM; and
 * -ESHUTDOWN, after which @s is gone and its connection closed (the
 * runtime is being freed).
 */
AX_API int ax_stream_give(ax_actor_t *self, ax_stream_t *s, ax_aid_t to,
                          uint32_t tag);

/* ------------------------------------------------------------------------ */
/* Introspection                                                             */
/* ------------------------------------------------------------------------ */

typedef struct ax_worker_stats {
  uint64_t actors;       /* alive now */
  uint64_t spawned;      /* ever */
  uint64_t messages;     /* delivered to receive callbacks */
  uint64_t remote_in;    /* arrived from other threads */
  uint64_t queued;       /* waiting in this worker's actor mailboxes now */
  uint64_t dead_letters; /* for gone actors (and dropped at exit) */
  uint64_t refused;      /* -EAGAIN given to senders for its actors */
  uint64_t wakeups;      /* times its loop was woken from sleep */
  uint64_t connections;  /* connection actors alive now */
  uint64_t turns;        /* actor turns run */
  /* Stream bytes read and written on its loop, ever: connections' I/O,
   * which reaches actors as stream callbacks, not messages. */
  uint64_t bytes_in, bytes_out;
} ax_worker_stats_t;

/**
 * ax_rt_stats() - counters of worker @i (sampled without stopping it, so
 * only roughly consistent with each other). Thread-safe. -EINVAL if out of
 * range.
 */
AX_API int ax_rt_stats(const ax_rt_t *rt, unsigned i, ax_worker_stats_t *out);

/** Print one line per worker with its counters. Thread-safe. */
AX_API void ax_rt_dump(const ax_rt_t *rt, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
