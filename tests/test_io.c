/*
 * I/O readiness sources on every backend: readable/writable readiness on
 * socketpairs and pipes, level-triggered re-reports, AX_IO_ONESHOT,
 * AX_IO_EDGE, hang-ups, changing interest, -EEXIST / -EINVAL / -EBADF,
 * regular files (AX_ENOTPOLLABLE on epoll), fds >= FD_SETSIZE on select
 * (AX_EFDTOOBIG) and many fds at once.
 *
 * Every wait is bounded: RUN_UNTIL() runs AX_RUN_ONCE iterations with an
 * unreferenced ax timer as watchdog (it stops the loop; the test then fails
 * on the unmet condition), and run_for() bounds each wait with a referenced
 * timer when a test checks that nothing happens.
 */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>


/* ---- helpers ------------------------------------------------------------ */

static void pipe_new(int p[2]) {
  assert_int_equal(pipe2(p, O_NONBLOCK | O_CLOEXEC), 0);
}

/* What an io callback saw. */
typedef struct io_rec {
  ax_source_t *src; /* expected source */
  int calls;
  int fd;            /* last fd */
  unsigned revents;  /* last revents */
  unsigned all;      /* OR of every revents */
  int drain;         /* bytes to read per readable call: 0 none, -1 all */
  int eof;           /* reads that returned 0 */
  bool wrong_src;    /* called with another source than @src */
  bool active_in_cb; /* ax_source_is_active() during the last call */
  unsigned restart;  /* if set: ax_io_start(src, restart) once, in the cb */
  int restart_rc;
  bool stop_loop;
} io_rec_t;

static void io_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  io_rec_t *r = data;
  r->calls++;
  r->fd = fd;
  r->revents = revents;
  r->all |= revents;
  if (r->src != NULL && src != r->src)
    r->wrong_src = true;
  r->active_in_cb = ax_source_is_active(src);
  if (r->drain != 0 && (revents & (AX_READABLE | AX_HANGUP))) {
    char buf[4096];
    size_t want = r->drain < 0 ? sizeof buf : (size_t)r->drain;
    ssize_t n = read(fd, buf, want);
    if (n == 0)
      r->eof++;
  }
  if (r->restart) {
    r->restart_rc = ax_io_start(src, r->restart);
    r->restart = 0;
  }
  if (r->stop_loop)
    ax_loop_stop(ax_source_loop(src));
}

static ax_source_t *io_new_started(ax_loop_t *loop, int fd, io_rec_t *r,
                                   unsigned events) {
  ax_source_t *s = NULL;
  assert_int_equal(ax_io_new(loop, fd, io_cb, r, &s), 0);
  assert_non_null(s);
  r->src = s;
  assert_int_equal(ax_io_start(s, events), 0);
  assert_true(ax_source_is_active(s));
  return s;
}

/* ---- readiness ---------------------------------------------------------- */

/* @rfd becomes readable once @wfd is written to, and only then. */
static void check_readable(ax_loop_t *loop, int rfd, int wfd) {
  io_rec_t r = {.drain = -1};
  ax_source_t *s = NULL;
  assert_int_equal(ax_io_new(loop, rfd, io_cb, &r, &s), 0);
  r.src = s;
  assert_false(ax_source_is_active(s));
  assert_int_equal(ax_source_kind(s), AX_SOURCE_IO);
  assert_int_equal(ax_io_fd(s), rfd);
  assert_ptr_equal(ax_source_data(s), &r);
  assert_ptr_equal(ax_source_loop(s), loop);
  assert_int_equal(ax_io_start(s, AX_READABLE), 0);
  assert_true(ax_source_is_active(s));
  AX_ASSERT_VERIFIED(loop);

  run_for(loop, 30);
  assert_int_equal(r.calls, 0); /* nothing to read yet */

  ax_loop_info_t before, after;
  assert_int_equal(ax_loop_info(loop, &before), 0);
  put(wfd, 5);
  assert_true(RUN_UNTIL(loop, r.calls > 0, 2000));
  assert_int_equal(r.calls, 1);
  assert_false(r.wrong_src);
  assert_int_equal(r.fd, rfd);
  assert_true(r.revents & AX_READABLE);
  assert_false(r.revents & AX_WRITABLE); /* not asked for */
  assert_int_equal(ax_loop_info(loop, &after), 0);
  assert_true(after.io_events > before.io_events);

  run_for(loop, 20); /* drained: level-triggered source stays quiet */
  assert_int_equal(r.calls, 1);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(s);
  AX_ASSERT_VERIFIED(loop);
}

/* @fd is writable at once, and reports only AX_WRITABLE. */
static void check_writable(ax_loop_t *loop, int fd) {
  io_rec_t r = {0};
  ax_source_t *s = io_new_started(loop, fd, &r, AX_WRITABLE);
  assert_true(RUN_UNTIL(loop, r.calls >= 3, 2000)); /* level: every time */
  assert_int_equal(r.fd, fd);
  assert_true(r.all & AX_WRITABLE);
  assert_false(r.all & AX_READABLE);
  assert_false(r.wrong_src);
  ax_source_free(s);
  AX_ASSERT_VERIFIED(loop);
}

static void test_readiness_socketpair(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  check_readable(loop, sv[0], sv[1]);
  check_readable(loop, sv[1], sv[0]);
  check_writable(loop, sv[0]);
  check_writable(loop, sv[1]);
  close2(sv);
  AX_FREE_LOOP(loop);
}

static void test_readiness_pipe(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int p[2];
  pipe_new(p);
  check_readable(loop, p[0], p[1]);
  check_writable(loop, p[1]);
  close2(p);
  AX_FREE_LOOP(loop);
}

/* Level-triggered: a readable fd is reported again until it is drained. */
static void test_level_rereports(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  io_rec_t r = {.drain = 1}; /* one byte per callback */
  ax_source_t *s = io_new_started(loop, sv[0], &r, AX_READABLE);
  put(sv[1], 3);
  assert_true(RUN_UNTIL(loop, r.calls >= 3, 2000));
  run_for(loop, 40);
  assert_int_equal(r.calls, 3); /* three bytes, three reports, then quiet */
  assert_true(r.all & AX_READABLE);

  /* Not reading at all: reported on every iteration. */
  r.drain = 0;
  put(sv[1], 1);
  assert_true(RUN_UNTIL(loop, r.calls >= 3 + 5, 2000));
  ax_source_free(s);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* A stopped source is not reported; starting it again reports pending data. */
static void test_stop_then_start(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  io_rec_t r = {0};
  ax_source_t *s = io_new_started(loop, sv[0], &r, AX_READABLE);
  assert_int_equal(ax_source_stop(s), 0);
  assert_false(ax_source_is_active(s));
  assert_int_equal(ax_source_stop(s), 0); /* stopping again: no-op */
  put(sv[1], 1);
  run_for(loop, 30);
  assert_int_equal(r.calls, 0);
  assert_int_equal(ax_io_start(s, AX_READABLE), 0);
  r.drain = -1;
  assert_true(RUN_UNTIL(loop, r.calls == 1, 2000));
  assert_true(r.revents & AX_READABLE);
  ax_source_free(s);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* AX_IO_ONESHOT: one report, then inactive; can be started again, also
 * from inside its own callback (the reading tested: the source is stopped
 * before its callback runs, so a start in the callback sticks). */
static void test_oneshot(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  io_rec_t r = {0}; /* never reads: the fd stays readable */
  ax_source_t *s = io_new_started(loop, sv[0], &r, AX_READABLE | AX_IO_ONESHOT);
  put(sv[1], 2);
  assert_true(RUN_UNTIL(loop, r.calls >= 1, 2000));
  run_for(loop, 40);
  assert_int_equal(r.calls, 1);
  assert_true(r.revents & AX_READABLE);
  assert_false(ax_source_is_active(s));
  assert_false(r.active_in_cb);
  AX_ASSERT_VERIFIED(loop);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.active, 0);

  /* Restart from outside. */
  assert_int_equal(ax_io_start(s, AX_READABLE | AX_IO_ONESHOT), 0);
  assert_true(ax_source_is_active(s));
  assert_true(RUN_UNTIL(loop, r.calls >= 2, 2000));
  run_for(loop, 30);
  assert_int_equal(r.calls, 2);
  assert_false(ax_source_is_active(s));

  /* Restart from inside the callback: exactly one more report follows. */
  assert_int_equal(ax_io_start(s, AX_READABLE | AX_IO_ONESHOT), 0);
  r.restart = AX_READABLE | AX_IO_ONESHOT;
  r.restart_rc = -12345;
  assert_true(RUN_UNTIL(loop, r.calls >= 4, 2000));
  assert_int_equal(r.restart_rc, 0);
  run_for(loop, 30);
  assert_int_equal(r.calls, 4);
  assert_false(ax_source_is_active(s));
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(s);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* AX_IO_EDGE: once per new data on epoll/io_uring; -ENOTSUP on poll/select. */
static void test_edge(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  io_rec_t r = {0}; /* never reads */
  ax_source_t *s = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], io_cb, &r, &s), 0);
  r.src = s;
  if (!edge_backend()) {
    assert_int_equal(ax_io_start(s, AX_READABLE | AX_IO_EDGE), -ENOTSUP);
    assert_false(ax_source_is_active(s));
    put(sv[1], 1);
    run_for(loop, 30);
    assert_int_equal(r.calls, 0);
    /* An active level source stays as it was after a refused change. */
    assert_int_equal(ax_io_start(s, AX_READABLE), 0);
    assert_int_equal(ax_io_start(s, AX_WRITABLE | AX_IO_EDGE), -ENOTSUP);
    assert_true(ax_source_is_active(s));
    r.drain = -1;
    assert_true(RUN_UNTIL(loop, r.calls >= 1, 2000));
    assert_true(r.all & AX_READABLE);
    assert_false(r.all & AX_WRITABLE);
    ax_source_free(s);
    close2(sv);
    AX_FREE_LOOP(loop);
    return;
  }
  assert_int_equal(ax_io_start(s, AX_READABLE | AX_IO_EDGE), 0);
  run_for(loop, 20);
  assert_int_equal(r.calls, 0);
  put(sv[1], 1);
  assert_true(RUN_UNTIL(loop, r.calls >= 1, 2000));
  run_for(loop, 40); /* data still unread: no new edge */
  assert_int_equal(r.calls, 1);
  assert_true(r.revents & AX_READABLE);
  put(sv[1], 1); /* new data: a new edge */
  assert_true(RUN_UNTIL(loop, r.calls >= 2, 2000));
  run_for(loop, 40);
  assert_int_equal(r.calls, 2);
  assert_true(ax_source_is_active(s)); /* edge is not oneshot */

  /* Writable, edge-triggered: reported once, not on every iteration. */
  io_rec_t w = {0};
  int sv2[2];
  sp_new(sv2);
  ax_source_t *ws = io_new_started(loop, sv2[0], &w, AX_WRITABLE | AX_IO_EDGE);
  assert_true(RUN_UNTIL(loop, w.calls >= 1, 2000));
  run_for(loop, 40);
  assert_int_equal(w.calls, 1);
  assert_true(w.revents & AX_WRITABLE);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(ws);
  ax_source_free(s);
  close2(sv2);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* The peer closing is reported: AX_HANGUP, or readable with read() == 0. */
static void check_hangup(ax_loop_t *loop, int rfd, int *peer) {
  io_rec_t r = {.drain = -1};
  ax_source_t *s = io_new_started(loop, rfd, &r, AX_READABLE);
  run_for(loop, 20);
  assert_int_equal(r.calls, 0);
  close(*peer);
  *peer = -1;
  assert_true(RUN_UNTIL(loop, r.calls >= 1, 2000));
  if (!(r.all & AX_HANGUP)) {
    assert_true(r.all & AX_READABLE);
    assert_true(r.eof > 0);
  }
  assert_false(r.all & AX_WRITABLE);
  ax_source_free(s);
  AX_ASSERT_VERIFIED(loop);
}

static void test_hangup(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2], p[2];
  sp_new(sv);
  check_hangup(loop, sv[0], &sv[1]);
  pipe_new(p);
  check_hangup(loop, p[0], &p[1]);

  /* Hang-up with data still queued: the data is readable first. */
  int sv2[2];
  sp_new(sv2);
  put(sv2[1], 3);
  io_rec_t r = {.drain = -1};
  ax_source_t *s = io_new_started(loop, sv2[0], &r, AX_READABLE);
  close(sv2[1]);
  sv2[1] = -1;
  assert_true(RUN_UNTIL(loop, r.eof > 0 || (r.all & AX_HANGUP), 2000));
  assert_true(r.all & (AX_READABLE | AX_HANGUP));
  ax_source_free(s);
  close2(sv2);
  close2(sv);
  close2(p);
  AX_FREE_LOOP(loop);
}

/* ax_io_start on an active source changes what is watched. */
static void test_change_interest(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  put(sv[1], 1);
  io_rec_t r = {0}; /* never reads: stays readable */
  ax_source_t *s = io_new_started(loop, sv[0], &r, AX_READABLE);
  assert_true(RUN_UNTIL(loop, r.calls >= 2, 2000));
  assert_int_equal(r.all & (AX_READABLE | AX_WRITABLE), AX_READABLE);

  assert_int_equal(ax_io_start(s, AX_WRITABLE), 0);
  assert_true(ax_source_is_active(s));
  memset(&r, 0, sizeof r);
  r.src = s;
  assert_true(RUN_UNTIL(loop, r.calls >= 2, 2000));
  assert_int_equal(r.all & (AX_READABLE | AX_WRITABLE), AX_WRITABLE);

  assert_int_equal(ax_io_start(s, AX_READABLE | AX_WRITABLE), 0);
  memset(&r, 0, sizeof r);
  r.src = s;
  assert_true(RUN_UNTIL(loop, r.calls >= 1, 2000));
  assert_int_equal(r.revents & (AX_READABLE | AX_WRITABLE),
                   AX_READABLE | AX_WRITABLE);

  /* Back to readable only, drained: quiet although the fd is writable. */
  assert_int_equal(ax_io_start(s, AX_READABLE), 0);
  char buf[16];
  assert_int_equal(read(sv[0], buf, sizeof buf), 1);
  memset(&r, 0, sizeof r);
  r.src = s;
  run_for(loop, 40);
  assert_int_equal(r.calls, 0);
  AX_ASSERT_VERIFIED(loop);

  /* Changing interest from inside the callback. */
  put(sv[1], 1);
  r.restart = AX_WRITABLE;
  assert_true(RUN_UNTIL(loop, r.calls >= 3, 2000));
  assert_int_equal(r.restart_rc, 0);
  assert_true(r.all & AX_WRITABLE);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.active, 1);
  ax_source_free(s);
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* One I/O source per fd per loop. */
static void test_eexist(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  io_rec_t r = {0};
  ax_source_t *a = NULL, *b = (ax_source_t *)0x1;
  assert_int_equal(ax_io_new(loop, sv[0], io_cb, &r, &a), 0);
  assert_int_equal(ax_io_new(loop, sv[0], io_cb, &r, &b), -EEXIST);
  assert_ptr_equal(b, (ax_source_t *)0x1); /* untouched on failure */
  assert_int_equal(ax_io_start(a, AX_READABLE), 0);
  assert_int_equal(ax_io_new(loop, sv[0], io_cb, &r, &b), -EEXIST);
  assert_int_equal(ax_source_stop(a), 0); /* stopped still holds the fd */
  assert_int_equal(ax_io_new(loop, sv[0], io_cb, &r, &b), -EEXIST);
  assert_ptr_equal(b, (ax_source_t *)0x1);
  AX_ASSERT_VERIFIED(loop);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.sources, 1);

  /* After a free the fd may be watched again. */
  ax_source_free(a);
  b = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], io_cb, &r, &b), 0);
  r.src = b;
  r.drain = -1;
  assert_int_equal(ax_io_start(b, AX_READABLE), 0);
  put(sv[1], 1);
  assert_true(RUN_UNTIL(loop, r.calls == 1, 2000));
  assert_false(r.wrong_src);
  ax_source_free(b);
  close2(sv);
  AX_FREE_LOOP(loop);
}

static void never_io_cb(ax_source_t *src, int fd, unsigned revents,
                        void *data) {
  (void)src;
  (void)fd;
  (void)revents;
  (*(int *)data)++;
}

static int64_t never_timer_cb(ax_source_t *src, void *data) {
  (void)src;
  (*(int *)data)++;
  return AX_TIMER_CONTINUE;
}

static void test_einval(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  int called = 0;
  ax_source_t *s = (ax_source_t *)0x1;
  assert_int_equal(ax_io_new(loop, -1, never_io_cb, &called, &s), -EINVAL);
  assert_int_equal(ax_io_new(loop, -7, never_io_cb, &called, &s), -EINVAL);
  assert_int_equal(ax_io_new(loop, sv[0], NULL, &called, &s), -EINVAL);
  assert_int_equal(ax_io_new(loop, sv[0], never_io_cb, &called, NULL), -EINVAL);
  assert_int_equal(ax_io_new(NULL, sv[0], never_io_cb, &called, &s), -EINVAL);
  assert_ptr_equal(s, (ax_source_t *)0x1);

  s = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], never_io_cb, &called, &s), 0);
  static const unsigned bad[] = {
      0,                                        /* no interest */
      AX_IO_ONESHOT,                            /* mode, no interest */
      AX_IO_EDGE,                               /* mode, no interest */
      AX_ERROR,                                 /* readiness-only bit */
      AX_HANGUP,                                /* readiness-only bit */
      AX_READABLE | 0x1000u,                    /* unknown bit */
      AX_READABLE | 0x80000000u,                /* unknown bit */
      AX_READABLE | AX_IO_EDGE | AX_IO_ONESHOT, /* both modes */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = ax_io_start(s, bad[i]);
    if (rc != -EINVAL)
      fail_msg("ax_io_start(0x%x) = %d (%s), expected -EINVAL", bad[i], rc,
               ax_err_name(rc));
    assert_false(ax_source_is_active(s));
  }
  assert_int_equal(ax_io_start(NULL, AX_READABLE), -EINVAL);
  assert_int_equal(ax_io_fd(NULL), -EINVAL);

  /* A failed change leaves an active source as it was. */
  assert_int_equal(ax_io_start(s, AX_WRITABLE), 0);
  assert_int_equal(ax_io_start(s, 0), -EINVAL);
  assert_true(ax_source_is_active(s));

  /* Kind checks. ax_io_fd documents AX_EKIND; ax_io_start does not list it,
   * AX_EKIND (or -EINVAL) is the reasonable answer for a timer. */
  ax_source_t *t = NULL;
  assert_int_equal(ax_timer_new(loop, never_timer_cb, &called, &t), 0);
  assert_int_equal(ax_io_fd(t), AX_EKIND);
  int rc = ax_io_start(t, AX_READABLE);
  if (rc != AX_EKIND && rc != -EINVAL)
    fail_msg("ax_io_start(timer) = %d (%s)", rc, ax_err_name(rc));
  assert_false(ax_source_is_active(t));
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(t);
  ax_source_free(s);
  run_for(loop, 10);
  assert_int_equal(called, 0); /* no callback after an error */
  close2(sv);
  AX_FREE_LOOP(loop);
}

/* Starting a source whose fd was closed: -EBADF. */
static void test_ebadf(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  int called = 0;
  ax_source_t *s = NULL;
  assert_int_equal(ax_io_new(loop, sv[0], never_io_cb, &called, &s), 0);
  close2(sv);
  assert_int_equal(ax_io_start(s, AX_READABLE), -EBADF);
  assert_false(ax_source_is_active(s));
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(s);
  AX_FREE_LOOP(loop);
}

/* Regular files and directories: epoll refuses them with AX_ENOTPOLLABLE;
 * poll and select accept them and report them ready (as the kernel does). */
static void test_regular_file(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  char path[] = "/tmp/axon-io-XXXXXX";
  int fd = mkostemp(path, O_CLOEXEC);
  assert_true(fd >= 0);
  unlink(path);
  put(fd, 10);
  lseek(fd, 0, SEEK_SET);
  int dfd = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  assert_true(dfd >= 0);

  io_rec_t r = {0};
  ax_source_t *s = NULL;
  assert_int_equal(ax_io_new(loop, fd, io_cb, &r, &s), 0);
  r.src = s;
  int rc = ax_io_start(s, AX_READABLE);

  if (ax_test_backend == AX_BACKEND_EPOLL) {
    assert_int_equal(rc, AX_ENOTPOLLABLE);
    assert_false(ax_source_is_active(s));
    assert_string_equal(ax_err_name(rc), "ENOTPOLLABLE");
    const char *msg = ax_strerror(rc);
    assert_non_null(strstr(msg, "epoll"));
    assert_non_null(strstr(msg, "regular file"));
    assert_non_null(strstr(msg, "poll or select"));
    io_rec_t dr = {0};
    ax_source_t *ds = NULL;
    assert_int_equal(ax_io_new(loop, dfd, io_cb, &dr, &ds), 0);
    assert_int_equal(ax_io_start(ds, AX_READABLE), AX_ENOTPOLLABLE);
    assert_false(ax_source_is_active(ds));
    AX_ASSERT_VERIFIED(loop);
    run_for(loop, 20);
    assert_int_equal(r.calls + dr.calls, 0);
    ax_source_free(ds);
  } else if (ax_test_backend == AX_BACKEND_URING && rc == AX_ENOTPOLLABLE) {
    /* The header leaves io_uring open; refusing like epoll is acceptable. */
    printf("  (io_uring refuses regular files with AX_ENOTPOLLABLE)\n");
    assert_false(ax_source_is_active(s));
  } else {
    assert_int_equal(rc, 0);
    assert_true(RUN_UNTIL(loop, r.calls >= 1, 2000));
    assert_true(r.revents & AX_READABLE);
    assert_int_equal(r.fd, fd);
    /* Readable and writable at once for an O_RDWR file. */
    assert_int_equal(ax_io_start(s, AX_READABLE | AX_WRITABLE), 0);
    r.calls = 0;
    r.all = 0;
    assert_true(RUN_UNTIL(loop, r.calls >= 1, 2000));
    assert_int_equal(r.revents & (AX_READABLE | AX_WRITABLE),
                     AX_READABLE | AX_WRITABLE);
  }
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(s);
  close(fd);
  close(dfd);
  AX_FREE_LOOP(loop);
}

/* Select handles fds below FD_SETSIZE only: AX_EFDTOOBIG beyond. Other
 * backends take the big fd and report it. */
static void test_fd_too_big(void **state) {
  (void)state;
  const int big = 1100;
  struct rlimit old, rl;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
  if (old.rlim_max != RLIM_INFINITY && old.rlim_max <= (rlim_t)big) {
    printf("  skipped: RLIMIT_NOFILE hard limit %llu <= %d\n",
           (unsigned long long)old.rlim_max, big);
    skip();
  }
  rl = old;
  if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)big + 10) {
    /* already enough */
  } else {
    rl.rlim_cur = (rlim_t)big + 10;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      printf("  skipped: cannot raise RLIMIT_NOFILE: %s\n", strerror(errno));
      skip();
    }
  }
  if (fcntl(big, F_GETFD) != -1 || fcntl(FD_SETSIZE - 1, F_GETFD) != -1) {
    printf("  skipped: fd %d or %d already in use\n", big, FD_SETSIZE - 1);
    setrlimit(RLIMIT_NOFILE, &old);
    skip();
  }

  ax_loop_t *loop = ax_test_loop();
  int sv[2];
  sp_new(sv);
  assert_int_equal(dup3(sv[0], big, O_CLOEXEC), big);
  assert_int_equal(dup3(sv[0], FD_SETSIZE - 1, O_CLOEXEC), FD_SETSIZE - 1);

  io_rec_t r = {.drain = 1};
  ax_source_t *s = (ax_source_t *)0x1;
  int rc = ax_io_new(loop, big, io_cb, &r, &s);
  if (ax_test_backend == AX_BACKEND_SELECT) {
    assert_int_equal(rc, AX_EFDTOOBIG);
    assert_ptr_equal(s, (ax_source_t *)0x1);
    assert_string_equal(ax_err_name(rc), "EFDTOOBIG");
    assert_non_null(strstr(ax_strerror(rc), "FD_SETSIZE"));
    AX_ASSERT_VERIFIED(loop);
    /* The largest fd select can take works. */
    assert_int_equal(ax_io_new(loop, FD_SETSIZE - 1, io_cb, &r, &s), 0);
  } else {
    assert_int_equal(rc, 0);
  }
  r.src = s;
  assert_int_equal(ax_io_start(s, AX_READABLE), 0);
  put(sv[1], 1);
  assert_true(RUN_UNTIL(loop, r.calls >= 1, 2000));
  assert_true(r.revents & AX_READABLE);
  assert_int_equal(r.fd,
                   ax_test_backend == AX_BACKEND_SELECT ? FD_SETSIZE - 1 : big);
  AX_ASSERT_VERIFIED(loop);
  ax_source_free(s);
  close(big);
  close(FD_SETSIZE - 1);
  close2(sv);
  AX_FREE_LOOP(loop);
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
}

/* Many fds: every one delivered, exactly once per readiness. */
#define NPAIRS 300

typedef struct many {
  int hits[NPAIRS];
  int total;
  int bad;
} many_t;

typedef struct many_slot {
  many_t *m;
  int idx;
  int fd;
} many_slot_t;

static void many_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  (void)src;
  many_slot_t *sl = data;
  if (fd != sl->fd || !(revents & AX_READABLE))
    sl->m->bad++;
  char buf[64];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  sl->m->hits[sl->idx]++;
  sl->m->total++;
}

static void test_many_fds(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  static int sv[NPAIRS][2];
  static many_slot_t slot[NPAIRS];
  static ax_source_t *src[NPAIRS];
  static many_t m;
  memset(&m, 0, sizeof m);
  for (int i = 0; i < NPAIRS; i++) {
    sp_new(sv[i]);
    slot[i] = (many_slot_t){&m, i, sv[i][0]};
    assert_int_equal(ax_io_new(loop, sv[i][0], many_cb, &slot[i], &src[i]), 0);
    assert_int_equal(ax_io_start(src[i], AX_READABLE), 0);
  }
  AX_ASSERT_VERIFIED(loop);
  ax_loop_info_t info;
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.sources, NPAIRS);
  assert_int_equal(info.active, NPAIRS);
  assert_int_equal(info.referenced, NPAIRS);
  uint64_t ev0 = info.io_events;

  for (int i = 0; i < NPAIRS; i++)
    put(sv[i][1], 1);
  assert_true(RUN_UNTIL(loop, m.total >= NPAIRS, 5000));
  run_for(loop, 30);
  assert_int_equal(m.total, NPAIRS);
  assert_int_equal(m.bad, 0);
  for (int i = 0; i < NPAIRS; i++)
    if (m.hits[i] != 1)
      fail_msg("pair %d (fd %d): %d reports, expected 1", i, sv[i][0],
               m.hits[i]);
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_true(info.io_events - ev0 >= NPAIRS);

  /* Second round: odd ones only; then stop every third and poke all. */
  memset(&m, 0, sizeof m);
  for (int i = 1; i < NPAIRS; i += 2)
    put(sv[i][1], 1);
  assert_true(RUN_UNTIL(loop, m.total >= NPAIRS / 2, 5000));
  run_for(loop, 30);
  assert_int_equal(m.total, NPAIRS / 2);
  for (int i = 0; i < NPAIRS; i++)
    assert_int_equal(m.hits[i], i % 2);

  memset(&m, 0, sizeof m);
  int expect = 0;
  for (int i = 0; i < NPAIRS; i++) {
    if (i % 3 == 0)
      assert_int_equal(ax_source_stop(src[i]), 0);
    else
      expect++;
    put(sv[i][1], 1);
  }
  assert_true(RUN_UNTIL(loop, m.total >= expect, 5000));
  run_for(loop, 30);
  assert_int_equal(m.total, expect);
  for (int i = 0; i < NPAIRS; i++)
    assert_int_equal(m.hits[i], i % 3 == 0 ? 0 : 1);
  AX_ASSERT_VERIFIED(loop);

  for (int i = 0; i < NPAIRS; i++) {
    ax_source_free(src[i]);
    close2(sv[i]);
  }
  assert_int_equal(ax_loop_info(loop, &info), 0);
  assert_int_equal(info.sources, 0);
  AX_FREE_LOOP(loop);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_readiness_socketpair),
      cmocka_unit_test(test_readiness_pipe),
      cmocka_unit_test(test_level_rereports),
      cmocka_unit_test(test_stop_then_start),
      cmocka_unit_test(test_oneshot),
      cmocka_unit_test(test_edge),
      cmocka_unit_test(test_hangup),
      cmocka_unit_test(test_change_interest),
      cmocka_unit_test(test_eexist),
      cmocka_unit_test(test_einval),
      cmocka_unit_test(test_ebadf),
      cmocka_unit_test(test_regular_file),
      cmocka_unit_test(test_fd_too_big),
      cmocka_unit_test(test_many_fds),
  };
  return AX_RUN_ON_BACKENDS(tests);
}
