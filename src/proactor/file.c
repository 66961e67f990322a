/*
 * File operations: ax_file_read, ax_file_write, ax_file_sync.
 *
 * Two paths, chosen per operation:
 * - native: on an io_uring loop, IORING_OP_READ / WRITE / FSYNC through
 *   ax__uring_sqe(); completions reach native_done() on the loop thread.
 * - pool: everywhere else (and when the SQ cannot be made room for), a
 *   pool of POOL_THREADS blocking threads shared by every loop of the
 *   process runs pread / pwrite / fsync / fdatasync. A regular file is
 *   always "ready" to epoll (it refuses them: AX_ENOTPOLLABLE), so without
 *   io_uring a read that misses the page cache can only block a thread.
 * Reads and writes loop until every byte moved or a read hit the end of
 * the file (short transfers on the native path are resubmitted), so a
 * short count means end of file, as with the pool's pread loop.
 *
 * How pool results come back. Not through the loop's mailbox: ax_loop_free
 * closes and frees the mailbox (ax__post_fini) *before* the proactor's
 * finalizer runs, so a worker finishing just then could push into freed
 * memory, and nothing on our side runs early enough to stop it. Instead
 * each loop's file state has a done list under its own mutex and an
 * unreferenced wake source; a worker appends under the mutex and sends a
 * wake only when the list goes from empty to non-empty (one eventfd write
 * per batch). The finalizer waits until no worker holds a job of its loop
 * (files.running, under pool.mu): after that no thread touches the state,
 * the wake source or the loop, and both can go.
 *
 * Why a mutex and condition variables for the pool, not ck: its threads
 * must sleep while there is no work, and a blocking queue needs a sleep
 * that cannot miss a push. A lock-free queue would still need that
 * (futex or condvar) beside it, and the work behind each job is a system
 * call of microseconds or more, so one uncontended lock per job is noise.
 *
 * The pool is this file's one piece of process-global state, on purpose:
 * the header promises one pool shared by every loop.
 * Pool lifetime: started by the first loop that queues a pool job (4
 * threads; fewer if some cannot be created), stopped and joined when the
 * last loop that used it is freed (pool.users). No thread outlives the
 * loops that need it (valgrind, dlclose and LeakSanitizer see none), at
 * the cost of restarting the threads when a program frees its last loop
 * and makes another. Workers block every signal, so process-directed
 * signals go to the loops' own threads (signal sources use signalfd).
 * Not fork-safe: a child forked while the pool runs has no workers.
 *
 * ax_loop_free with operations pending (files_fini): every callback runs
 * once, with -ECANCELED, from inside ax_loop_free. The operation may still
 * have taken effect (a write may have reached the file): -ECANCELED says
 * the loop went first, not that nothing happened.
 * - pool jobs still queued are taken out of the queue and never start;
 *   jobs running on a worker are waited for, so no pread/pwrite/fsync
 *   reaches the fd after its callback ran (the caller may close it then,
 *   and its number may be reused at once). That wait is bounded by one
 *   system call per worker; jobs finished but not delivered are in the
 *   done list. A job changes hands only under a mutex (the queue under
 *   pool.mu, the done list under files.mu) and the finalizer owns every
 *   job once the wait is over, so no atomic job state has to decide who
 *   frees it, and a worker never sees a cancelled job.
 * - native operations: the ring goes only in the backend's fini, after
 *   this, and the kernel may write into a read buffer until an operation's
 *   completion is posted. So each one gets an ASYNC_CANCEL, and we reap
 *   (loop->be->wait, then only our entries of loop->ucq: other modules'
 *   entries stay where they are) until every one has completed, for at
 *   most REAP_MS. An operation still out after that — or whose ring was
 *   replaced by ring_move (see uring.c: a free on another thread than the
 *   ring's) — is abandoned: its callback runs, and its job and buffer are
 *   leaked on purpose (a kernel write into freed memory is worse).
 *   A late completion of an abandoned job is ignored (native_done).
 *
 * Buffers: a native read lands in a buffer allocated through the loop's
 * hooks; a pool read in one the worker allocates with malloc (ax_buf_new
 * NULL): the hooks are not assumed thread-safe, and memory is taken only
 * when the read runs, not while it is queued. Either reaches the callback
 * as a borrowed slice (ax_buf_ref to keep it; a native one must then be
 * released before the loop is freed, as buf.h says). A write copies the
 * caller's bytes into the job first.
 *
 * Sizes: at most INT_MAX bytes per operation, since the status is an int
 * (2^31 itself would not fit). Offsets above INT64_MAX are refused (off_t
 * is signed; io_uring would read -1 as "the current position").
 *
 * Counters: each operation counts once, in file_ops_native or
 * file_ops_pool, by the path it was first given to (a native operation
 * whose rest falls back to the pool still counts as native).
 */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef AX_HAVE_URING
#include <liburing.h>
#endif

#include "proactor/proactor_int.h"

#define POOL_THREADS 4
#define REAP_MS 5000 /* longest ax_loop_free waits for native operations */
#define REAP_WAIT_MS 50

enum { OP_READ, OP_WRITE, OP_FSYNC, OP_FDATASYNC };

struct files;

/* One operation. Allocated and freed on the loop thread (loop hooks); a
 * worker reads and writes its fields only between taking it from the
 * queue and appending it to the done list, both under a mutex. */
struct fjob {
  struct ax__uop uop;   /* native: its completions */
  struct ax__list link; /* pool.queue, f->done, f->native or f->reaped */
  struct files *f;      /* NULL: abandoned at free (native, leaked) */
  ax_file_cb cb;
  void *ud;
  ax_buf_t *buf;        /* read: the bytes (pool: NULL until it runs) */
  char *wdata;          /* write: the copy, after the job */
  uint64_t off;
  uint64_t ud64;        /* native: the SQE's user_data, for the cancel */
  uint32_t len;
  uint32_t done;        /* bytes moved so far */
  int fd;
  int res;              /* pool: the final status */
  int op;
};

/* A loop's file state (px->files). */
struct files {
  ax_loop_t *loop;
  /* Loop thread only. */
  struct ax__list native;   /* native operations in the kernel */
  struct ax__list reaped;   /* files_fini: native ones whose end came */
  bool reaping;             /* files_fini is reaping: park completions */
  bool pool_user;           /* counted in pool.users */
  ax_source_t *wake;        /* pool results arrive through it */
  /* Shared with the workers. */
  pthread_mutex_t mu;       /* guards done */
  struct ax__list done;     /* pool jobs finished, not yet delivered */
  size_t running;           /* pool.mu: jobs of this loop on a worker */
  bool closing;             /* pool.mu: files_fini waits for running 0 */
};

/* The process's pool. Lock order: life, then mu. */
static struct pool {
  pthread_mutex_t life;   /* serialises starting and stopping threads */
  pthread_mutex_t mu;     /* guards what follows, and files.running */
  pthread_cond_t work;    /* a job was queued, or stop */
  pthread_cond_t idle;    /* a closing loop's last running job ended */
  struct ax__list queue;  /* jobs not started, FIFO across loops */
  bool stop;
  size_t users;           /* life: loops whose file state uses the pool */
  int nthreads;           /* life */
  pthread_t thr[POOL_THREADS];
} pool = {
    .life = PTHREAD_MUTEX_INITIALIZER,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .work = PTHREAD_COND_INITIALIZER,
    .idle = PTHREAD_COND_INITIALIZER,
    .queue = {&pool.queue, &pool.queue},
};

static void files_fini(struct ax__px *px);

/* ---- jobs ----------------------------------------------------------------- */

static struct fjob *job_of(struct ax__list *l) {
  return ax__container_of(l, struct fjob, link);
}

static void job_free(ax_loop_t *loop, struct fjob *j) {
  ax_buf_unref(j->buf);
  ax__free(loop, j);
}

/* The status an operation ends with: bytes moved (a read's short count at
 * end of file), 0 for a sync, or the error — unless bytes moved first:
 * then their count, like read(2) after a partial transfer. */
static int job_status(const struct fjob *j, int err) {
  if (j->op >= OP_FSYNC)
    return err;
  return err < 0 && j->done == 0 ? err : (int)j->done;
}

/* Run the callback with @status, then let go of the job and of the loop's
 * hold. The data slice is borrowed: its buffer goes with the job unless
 * the callback took a reference. */
static void job_complete(ax_loop_t *loop, struct fjob *j, int status) {
  ax_slice_t data = {0};
  if (j->op == OP_READ && status > 0)
    data = (ax_slice_t){.buf = j->buf, .off = 0, .len = (uint32_t)status};
  j->cb(loop, status, &data, j->ud);
  job_free(loop, j);
  ax__loop_release(loop);
}

/* ---- the pool's threads --------------------------------------------------- */

/* pread/pwrite until every byte moved, end of file, or an error; EINTR is
 * retried. One call even for 0 bytes, so that a bad fd says so. */
static int rw_all(struct fjob *j) {
  char *p = j->op == OP_READ ? ax_buf_data(j->buf) : j->wdata;
  do {
    ssize_t n = j->op == OP_READ
                    ? pread(j->fd, p + j->done, j->len - j->done,
                            (off_t)(j->off + j->done))
                    : pwrite(j->fd, p + j->done, j->len - j->done,
                             (off_t)(j->off + j->done));
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      break; /* end of file (a write of 0 bytes would loop for ever) */
    j->done += (uint32_t)n;
  } while (j->done < j->len);
  return 0;
}

static int sync_fd(const struct fjob *j) {
  int r;
  do
    r = j->op == OP_FDATASYNC ? fdatasync(j->fd) : fsync(j->fd);
  while (r < 0 && errno == EINTR);
  return r < 0 ? -errno : 0;
}

/* On a worker: the system calls, and the result in j->res. */
static void job_run(struct fjob *j) {
  int err = 0;
  if (j->op >= OP_FSYNC)
    err = sync_fd(j);
  else if (j->op == OP_READ && j->buf == NULL &&
           ax_buf_new(NULL, j->len ? j->len : 1, &j->buf) < 0)
    err = -ENOMEM;
  else
    err = rw_all(j);
  j->res = job_status(j, err);
}

/* On a worker: hand the finished job to its loop. The wake goes only on the
 * transition from empty (the loop takes the whole list at once, so every
 * append that finds it empty comes after a take and needs a new wake); it
 * is sent under the mutex, which files_fini's wait (pool.idle) orders
 * before the source is freed. */
static void job_deliver(struct files *f, struct fjob *j) {
  pthread_mutex_lock(&f->mu);
  bool was_empty = ax__list_empty(&f->done);
  ax__list_append(&f->done, &j->link);
  if (was_empty)
    (void)ax_wake_send(f->wake); /* only fails with a bad source */
  pthread_mutex_unlock(&f->mu);
}

static void *worker_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&pool.mu);
  for (;;) {
    while (ax__list_empty(&pool.queue) && !pool.stop)
      pthread_cond_wait(&pool.work, &pool.mu);
    if (ax__list_empty(&pool.queue))
      break; /* stop: no loop uses the pool, so nothing is queued */
    struct fjob *j = job_of(pool.queue.next);
    struct files *f = j->f; /* j may be gone once delivered */
    ax__list_unlink(&j->link);
    f->running++;
    pthread_mutex_unlock(&pool.mu);
    job_run(j);
    job_deliver(f, j);
    pthread_mutex_lock(&pool.mu);
    /* After this, this thread no longer touches f (files_fini frees it). */
    if (--f->running == 0 && f->closing)
      pthread_cond_broadcast(&pool.idle);
  }
  pthread_mutex_unlock(&pool.mu);
  return NULL;
}

/* Start the threads (pool.life held). Returns how many started. */
static int pool_start(void) {
  sigset_t all, old;
  sigfillset(&all);
  /* Threads inherit the mask: blocking all here keeps signals off them. */
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_mutex_lock(&pool.mu);
  pool.stop = false;
  pthread_mutex_unlock(&pool.mu);
  for (int i = pool.nthreads; i < POOL_THREADS; i++) {
    if (pthread_create(&pool.thr[i], NULL, worker_main, NULL) != 0)
      break;
    pthread_setname_np(pool.thr[i], "axon-file");
    pool.nthreads++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return pool.nthreads;
}

/* A loop starts using the pool; the first one starts the threads. */
static int pool_acquire(void) {
  int rc = 0;
  pthread_mutex_lock(&pool.life);
  if (pool.users == 0 && pool_start() == 0)
    rc = -ENOMEM; /* pthread_create: EAGAIN, out of memory or threads */
  else
    pool.users++;
  pthread_mutex_unlock(&pool.life);
  return rc;
}

/* A loop is done with the pool; the last one stops and joins the threads
 * (they are idle: every user's jobs have ended). */
static void pool_release(void) {
  pthread_mutex_lock(&pool.life);
  if (--pool.users == 0) {
    pthread_mutex_lock(&pool.mu);
    pool.stop = true;
    pthread_cond_broadcast(&pool.work);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < pool.nthreads; i++)
      pthread_join(pool.thr[i], NULL);
    pool.nthreads = 0;
  }
  pthread_mutex_unlock(&pool.life);
}

/* ---- the pool, loop side -------------------------------------------------- */

/* The wake source: deliver what the workers finished. The list is taken
 * whole, so callbacks that queue more work do not extend this pass. */
static void pool_wake(ax_source_t *src, void *data) {
  struct files *f = data;
  struct ax__list got;
  (void)src;
  ax__list_init(&got);
  pthread_mutex_lock(&f->mu);
  ax__list_splice(&got, &f->done);
  pthread_mutex_unlock(&f->mu);
  while (!ax__list_empty(&got)) {
    struct fjob *j = job_of(got.next);
    ax__list_unlink(&j->link);
    job_complete(f->loop, j, j->res);
  }
}

/* First pool use by this loop: the wake source, then a place in the pool. */
static int pool_setup(struct files *f) {
  int rc;
  if (f->pool_user)
    return 0;
  if ((rc = ax_wake_new(f->loop, pool_wake, f, &f->wake)) < 0)
    return rc;
  if ((rc = ax_wake_start(f->wake)) < 0 || (rc = pool_acquire()) < 0) {
    ax_source_free(f->wake);
    f->wake = NULL;
    return rc;
  }
  ax_source_unref(f->wake); /* the jobs' holds keep the loop alive */
  f->pool_user = true;
  return 0;
}

static int pool_submit(struct fjob *j) {
  int rc = pool_setup(j->f);
  if (rc < 0)
    return rc;
  pthread_mutex_lock(&pool.mu);
  ax__list_append(&pool.queue, &j->link);
  pthread_cond_signal(&pool.work);
  pthread_mutex_unlock(&pool.mu);
  return 0;
}

/* files_fini: take this loop's jobs out of the queue, wait for those on a
 * worker, and collect every job not delivered yet into @out. */
static void pool_fini(struct files *f, struct ax__list *out) {
  struct ax__list *l, *next;
  pthread_mutex_lock(&pool.mu);
  for (l = pool.queue.next; l != &pool.queue; l = next) {
    next = l->next;
    if (job_of(l)->f == f) {
      ax__list_unlink(l);
      ax__list_append(out, l);
    }
  }
  f->closing = true;
  while (f->running > 0)
    pthread_cond_wait(&pool.idle, &pool.mu);
  pthread_mutex_unlock(&pool.mu);
  pthread_mutex_lock(&f->mu);
  ax__list_splice(out, &f->done);
  pthread_mutex_unlock(&f->mu);
}

/* ---- native (io_uring) ---------------------------------------------------- */

#ifdef AX_HAVE_URING

static bool native_loop(ax_loop_t *loop) { return ax__uring(loop) != NULL; }

static void native_done(ax_loop_t *loop, struct ax__uop *op, int res,
                        uint32_t flags);

/* The cancels' completions: nothing to do. Static, so that one reaped
 * after the file state is gone still points at valid memory. */
static void cancel_done(ax_loop_t *loop, struct ax__uop *op, int res,
                        uint32_t flags) {
  (void)loop, (void)op, (void)res, (void)flags;
}
static struct ax__uop cancel_op = {cancel_done};

/* Submit the rest of @j. -EBUSY: no SQE (the caller falls back). */
static int native_submit(struct fjob *j) {
  struct io_uring_sqe *sqe = ax__uring_sqe(j->f->loop, &j->uop);
  uint32_t n = j->len - j->done;
  uint64_t off = j->off + j->done;
  if (sqe == NULL)
    return -EBUSY;
  j->uop.done = native_done;
  if (j->op == OP_READ)
    io_uring_prep_read(sqe, j->fd, ax_buf_data(j->buf) + j->done, n, off);
  else if (j->op == OP_WRITE)
    io_uring_prep_write(sqe, j->fd, j->wdata + j->done, n, off);
  else
    io_uring_prep_fsync(sqe, j->fd,
                        j->op == OP_FDATASYNC ? IORING_FSYNC_DATASYNC : 0);
  j->ud64 = sqe->user_data; /* set by ax__uring_sqe, kept by the preps */
  ax__list_append(&j->f->native, &j->link);
  return 0;
}

/* Whether a completion leaves work to do: a short transfer short of end of
 * file, or an interrupted one. */
static bool native_more(const struct fjob *j, int res) {
  if (res == -EINTR)
    return true;
  return j->op < OP_FSYNC && res > 0 && j->done < j->len;
}

static void native_done(ax_loop_t *loop, struct ax__uop *op, int res,
                        uint32_t flags) {
  struct fjob *j = ax__container_of(op, struct fjob, uop);
  struct files *f = j->f;
  (void)flags;
  if (f == NULL)
    return; /* abandoned by files_fini: leaked on purpose */
  ax__list_unlink(&j->link);
  if (f->reaping) {
    ax__list_append(&f->reaped, &j->link);
    return;
  }
  if (res > 0 && j->op < OP_FSYNC)
    j->done += (uint32_t)res;
  /* The rest: natively, else on the pool (the buffer is written there but
   * still allocated and freed here), else what was moved so far. */
  if (native_more(j, res) && (native_submit(j) == 0 || pool_submit(j) == 0))
    return;
  job_complete(loop, j, job_status(j, res < 0 ? res : 0));
}

/* Dispatch the completions of ours the last wait reaped; leave the others
 * in loop->ucq, in order. */
static void native_reap(ax_loop_t *loop) {
  size_t keep = 0;
  for (size_t i = 0; i < loop->nucq; i++) {
    struct ax__ucqe c = loop->ucq[i];
    if (c.op->done == native_done || c.op->done == cancel_done)
      c.op->done(loop, c.op, c.res, c.flags);
    else
      loop->ucq[keep++] = c;
  }
  loop->nucq = keep;
}

/* files_fini: cancel every native operation, reap until each has ended (at
 * most REAP_MS), and move the jobs to @out; the ones still out are
 * abandoned to @lost (see the top of the file). */
static void native_fini(struct files *f, struct ax__list *out,
                        struct ax__list *lost) {
  ax_loop_t *loop = f->loop;
  struct io_uring *ring = ax__uring(loop);
  struct ax__list *l;
  int ring_fd;
  uint64_t deadline;
  if (ax__list_empty(&f->native))
    return;
  f->reaping = true;
  for (l = f->native.next; l != &f->native; l = l->next) {
    struct io_uring_sqe *sqe = ax__uring_sqe(loop, &cancel_op);
    if (sqe != NULL) /* else wait: a file operation ends by itself */
      io_uring_prep_cancel64(sqe, job_of(l)->ud64, 0);
  }
  ring_fd = ring->ring_fd;
  deadline = ax__monotonic_ms() + REAP_MS;
  while (!ax__list_empty(&f->native) && ax__monotonic_ms() < deadline) {
    if (loop->be->wait(loop, REAP_WAIT_MS) < 0 || ring->ring_fd != ring_fd)
      break; /* cannot reap, or the ring (and its operations) was replaced */
    native_reap(loop);
  }
  ax__list_splice(out, &f->reaped);
  ax__list_splice(lost, &f->native);
}

#else /* !AX_HAVE_URING */

static bool native_loop(ax_loop_t *loop) {
  (void)loop;
  return false;
}
static int native_submit(struct fjob *j) {
  (void)j;
  return -EBUSY;
}
static void native_fini(struct files *f, struct ax__list *out,
                        struct ax__list *lost) {
  (void)f, (void)out, (void)lost;
}

#endif /* AX_HAVE_URING */

/* ---- per-loop state ------------------------------------------------------- */

static struct files *files_get(ax_loop_t *loop) {
  struct ax__px *px = ax__px(loop);
  struct files *f;
  if (px == NULL)
    return NULL;
  if (px->files != NULL)
    return px->files;
  if ((f = ax__alloc(loop, sizeof(*f))) == NULL)
    return NULL;
  memset(f, 0, sizeof(*f));
  f->loop = loop;
  ax__list_init(&f->native);
  ax__list_init(&f->reaped);
  ax__list_init(&f->done);
  pthread_mutex_init(&f->mu, NULL);
  px->files = f;
  px->fini[AX__PXM_FILES] = files_fini;
  return f;
}

/* From ax_loop_free (px_fini): every pending callback with -ECANCELED.
 * New operations are refused meanwhile (loop->freeing: -ESHUTDOWN). */
static void files_fini(struct ax__px *px) {
  struct files *f = px->files;
  ax_loop_t *loop = f->loop;
  struct ax__list cancelled, lost;
  ax__list_init(&cancelled);
  ax__list_init(&lost);
  native_fini(f, &cancelled, &lost);
  if (f->pool_user)
    pool_fini(f, &cancelled);
  while (!ax__list_empty(&cancelled)) {
    struct fjob *j = job_of(cancelled.next);
    ax__list_unlink(&j->link);
    job_complete(loop, j, -ECANCELED);
  }
  while (!ax__list_empty(&lost)) {
    struct fjob *j = job_of(lost.next);
    ax__list_unlink(&j->link);
    j->f = NULL; /* a late completion is ignored; memory stays */
    j->cb(loop, -ECANCELED, &(ax_slice_t){0}, j->ud);
    ax__loop_release(loop);
  }
  if (f->pool_user) {
    ax_source_free(f->wake);
    pool_release();
  }
  pthread_mutex_destroy(&f->mu);
  ax__free(loop, f);
  px->files = NULL;
  px->fini[AX__PXM_FILES] = NULL;
}

/* ---- operations ----------------------------------------------------------- */

/* A job for @op; a write's bytes are copied after it. */
static struct fjob *job_new(struct files *f, int op, int fd, uint64_t off,
                            const void *p, size_t len, ax_file_cb cb,
                            void *ud) {
  size_t extra = op == OP_WRITE ? len : 0;
  struct fjob *j = ax__alloc(f->loop, sizeof(*j) + extra);
  if (j == NULL)
    return NULL;
  memset(j, 0, sizeof(*j));
  j->f = f;
  j->cb = cb;
  j->ud = ud;
  j->off = off;
  j->len = (uint32_t)len;
  j->fd = fd;
  j->op = op;
  if (op == OP_WRITE) {
    j->wdata = (char *)(j + 1);
    if (len > 0)
      memcpy(j->wdata, p, len);
  }
  return j;
}

/* Natively when the loop is on io_uring and an SQE is there (a read buffer
 * from the loop's hooks first), else on the pool. */
static int job_submit(struct ax__px *px, struct fjob *j) {
  ax_loop_t *loop = px->loop;
  if (native_loop(loop)) {
    if (j->op == OP_READ &&
        ax_buf_new(loop, j->len ? j->len : 1, &j->buf) < 0)
      return -ENOMEM;
    if (native_submit(j) == 0) {
      px->file_ops_native++;
      return 0;
    }
  }
  int rc = pool_submit(j);
  if (rc == 0)
    px->file_ops_pool++;
  return rc;
}

static int file_op(ax_loop_t *loop, int op, int fd, uint64_t off,
                   const void *p, size_t len, ax_file_cb cb, void *ud) {
  struct files *f;
  struct fjob *j;
  int rc;
  /* The status is an int: at most INT_MAX bytes per operation. */
  if (loop == NULL || cb == NULL || fd < 0 || len > INT_MAX ||
      off > INT64_MAX || (op == OP_WRITE && p == NULL && len > 0))
    return -EINVAL;
  if (loop->freeing)
    return -ESHUTDOWN;
  if ((f = files_get(loop)) == NULL ||
      (j = job_new(f, op, fd, off, p, len, cb, ud)) == NULL)
    return -ENOMEM;
  if ((rc = job_submit(loop->px, j)) < 0) {
    job_free(loop, j);
    return rc;
  }
  ax__loop_hold(loop);
  return 0;
}

int ax_file_read(ax_loop_t *loop, int fd, uint64_t offset, size_t len,
                 ax_file_cb cb, void *ud) {
  return file_op(loop, OP_READ, fd, offset, NULL, len, cb, ud);
}

int ax_file_write(ax_loop_t *loop, int fd, uint64_t offset, const void *p,
                  size_t len, ax_file_cb cb, void *ud) {
  return file_op(loop, OP_WRITE, fd, offset, p, len, cb, ud);
}

int ax_file_sync(ax_loop_t *loop, int fd, bool datasync, ax_file_cb cb,
                 void *ud) {
  return file_op(loop, datasync ? OP_FDATASYNC : OP_FSYNC, fd, 0, NULL, 0, cb,
                 ud);
}
