/*
 * Signals delivered as loop events through signalfd (Linux).
 *
 * Quirks of the mechanism: signalfd only reads signals that are blocked, and
 * a process-directed signal goes to any thread that does not block it, so
 * the signal must be blocked in every thread (see ax_signal_start). One
 * signalfd per loop reads exactly the signals that loop watches, so two loops
 * watching different signals each get their own. Standard signals coalesce
 * while pending: one event may stand for several raises.
 */
#include <pthread.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "loop/loop_int.h"

static bool list_has_signo(const struct ax__list *head, int signo) {
  for (const struct ax__list *l = head->next; l != head; l = l->next)
    if (ax__container_of(l, const struct ax__signal, link)->signo == signo)
      return true;
  return false;
}

/* Active sources sit in loop->signals, or in the batch being delivered. */
static bool signo_watched(const ax_loop_t *loop, int signo) {
  return list_has_signo(&loop->signals, signo) ||
         (loop->sig_batch && list_has_signo(loop->sig_batch, signo));
}

/* Call every active source of @signo. Sources are moved back to the loop's
 * list one at a time, so a callback may stop or free any of them safely. */
static void signal_deliver(ax_loop_t *loop, int signo) {
  struct ax__list batch;
  ax__list_init(&batch);
  ax__list_splice(&batch, &loop->signals);
  loop->sig_batch = &batch;
  while (!ax__list_empty(&batch)) {
    struct ax__signal *s = ax__container_of(batch.next, struct ax__signal, link);
    ax__list_unlink(&s->link);
    ax__list_append(&loop->signals, &s->link);
    if (s->signo != signo)
      continue;
    loop->stats.signals++;
    ((ax_signal_cb)s->h.cb)(&s->h, signo, s->h.data);
  }
  loop->sig_batch = NULL;
}

static void sigfd_event(ax_loop_t *loop, struct ax__io *io, unsigned revents) {
  (void)revents;
  struct signalfd_siginfo si[16];
  for (int round = 0; round < 64; round++) { /* bounded: fairness to others */
    ssize_t n = read(io->fd, si, sizeof si);
    if (n < (ssize_t)sizeof si[0])
      return; /* EAGAIN (drained), EINTR: level-triggered, we come back */
    for (size_t i = 0; i < (size_t)n / sizeof si[0]; i++)
      signal_deliver(loop, (int)si[i].ssi_signo);
  }
}

static int sigfd_update(ax_loop_t *loop) {
  if (!loop->sigfd) {
    int fd = signalfd(-1, &loop->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
      return -errno;
    int rc = ax__io_internal(loop, fd, sigfd_event, &loop->sigfd);
    if (rc)
      close(fd);
    return rc;
  }
  return signalfd(loop->sigfd->fd, &loop->sigmask, 0) < 0 ? -errno : 0;
}

/* Block @signo in this thread, remembering that we did. */
static void block_signal(ax_loop_t *loop, int signo) {
  sigset_t set, old;
  sigemptyset(&set);
  sigaddset(&set, signo);
  pthread_sigmask(SIG_BLOCK, &set, &old);
  if (!sigismember(&old, signo))
    sigaddset(&loop->sigblocked, signo);
}

static void unblock_signal(ax_loop_t *loop, int signo) {
  if (!sigismember(&loop->sigblocked, signo))
    return;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signo);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  sigdelset(&loop->sigblocked, signo);
}

int ax_signal_new(ax_loop_t *loop, ax_signal_cb cb, void *data,
                  ax_source_t **out) {
  int rc = ax__source_new(loop, AX_SOURCE_SIGNAL, (void (*)(void))cb, data, out);
  if (rc == 0)
    ax__list_init(&((struct ax__signal *)*out)->link);
  return rc;
}

int ax_signal_start(ax_source_t *src, int signo) {
  int rc = ax__source_check(src, AX_SOURCE_SIGNAL);
  if (rc)
    return rc;
  if (signo <= 0 || signo >= NSIG || signo == SIGKILL || signo == SIGSTOP)
    return -EINVAL;
  ax_loop_t *loop = src->loop;
  struct ax__signal *s = (struct ax__signal *)src;
  if ((src->flags & AX__F_ACTIVE) && s->signo == signo)
    return 0;
  ax_source_stop(src);
  if (!sigismember(&loop->sigmask, signo)) {
    sigaddset(&loop->sigmask, signo);
    /* Block before the signalfd watches it, so no raise in between reaches
     * the default action. */
    block_signal(loop, signo);
    rc = sigfd_update(loop);
    if (rc) {
      sigdelset(&loop->sigmask, signo);
      unblock_signal(loop, signo);
      return rc;
    }
  }
  s->signo = signo;
  ax__list_append(&loop->signals, &s->link);
  ax__source_activate(src);
  return 0;
}

void ax__signal_stop(ax_loop_t *loop, struct ax__signal *s) {
  if (!(s->h.flags & AX__F_ACTIVE))
    return;
  ax__list_unlink(&s->link);
  if (signo_watched(loop, s->signo))
    return;
  sigdelset(&loop->sigmask, s->signo);
  if (loop->sigfd)
    (void)sigfd_update(loop);
  unblock_signal(loop, s->signo);
}

void ax__signal_fini(ax_loop_t *loop) {
  for (int signo = 1; signo < NSIG; signo++)
    unblock_signal(loop, signo);
  if (loop->sigfd)
    ax__source_destroy(&loop->sigfd->h);
  loop->sigfd = NULL;
}
