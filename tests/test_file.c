/*
 * File operations (ax_file_read, ax_file_write, ax_file_sync), on every
 * backend: natively on io_uring, on the blocking pool elsewhere.
 *
 * Argument errors (the callback is never called); write then read back
 * random data of 1 byte to 1 MiB at offsets, checked byte for byte and
 * against pread; a read past the end (short count, then 0 with the empty
 * slice) and of 0 bytes; a bad fd and a read-only fd (-EBADF in the
 * status); fsync and fdatasync; the callback never runs inside the call
 * and a kept buffer (ax_buf_ref) outlives it; ax_loop_run(DEFAULT) runs
 * while operations are pending and returns when they are done; 1,000
 * reads and 1,000 writes in flight at once, each completing exactly once
 * with its own data, in whatever order (a large read queued first does not
 * hold up the small ones' results); ax_loop_free with operations pending
 * (never run, and after one iteration so that they are in the kernel or
 * on a worker): every callback once with -ECANCELED, new operations
 * refused with -ESHUTDOWN, nothing leaked (ASan); the counters of
 * ax_proactor_info (native on io_uring, pool elsewhere); the pool's
 * threads are gone once the last loop using them is freed; 4 loops on 4
 * threads issuing chains of write/read-back/fsync concurrently (TSan).
 *
 * Bounded: every run that no ax timer bounds is under the guard.
 */
#include "testutil.h"

#include <dirent.h>
#include <limits.h>

#ifndef AX_SAN
#define AX_SAN ""
#endif

static bool under_san(void) { return AX_SAN[0] != '\0'; }

static bool on_uring(void) { return ax_test_backend == AX_BACKEND_URING; }

/* An unlinked temporary file, open for reading and writing. */
static int tmp_fd(void) {
  const char *dir = getenv("TMPDIR");
  char path[512];
  snprintf(path, sizeof path, "%s/axon-file-XXXXXX", dir ? dir : "/tmp");
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  unlink(path);
  return fd;
}

static void fill(uint8_t *p, size_t n, uint64_t seed) {
  uint64_t s = seed * 0x9e3779b97f4a7c15u + 1;
  for (size_t i = 0; i < n; i++)
    p[i] = (uint8_t)(xorshift(&s) >> 24);
}

/* Run until nothing is pending; the guard catches a hang. */
static void run_all(ax_loop_t *loop) {
  guard_start("ax_loop_run with file operations pending", 60);
  assert_int_equal(ax_loop_run(loop, AX_RUN_DEFAULT), 0);
  guard_stop();
}

/* ---- one operation's record ------------------------------------------------ */

struct op {
  ax_loop_t *loop;
  const uint8_t *expect; /* reads: the bytes the file holds there */
  size_t expect_len;     /* reads: bytes to expect */
  int calls;
  int status;
  bool bad;              /* wrong loop, wrong data or a bad slice */
  int order;             /* completion rank */
};

static int completed; /* completion counter, for ranks */

static void op_cb(ax_loop_t *loop, int status, ax_slice_t *data, void *ud) {
  struct op *o = ud;
  o->calls++;
  o->status = status;
  o->order = completed++;
  if (loop != o->loop || data == NULL)
    o->bad = true;
  else if (status <= 0 || o->expect == NULL)
    o->bad |= data->buf != NULL || data->len != 0;
  else
    o->bad |= data->buf == NULL || data->len != (uint32_t)status ||
              (size_t)status != o->expect_len ||
              memcmp(ax_slice_ptr(*data), o->expect, o->expect_len) != 0;
}

static void never_cb(ax_loop_t *loop, int status, ax_slice_t *data, void *ud) {
  (void)loop, (void)status, (void)data, (void)ud;
  fail_msg("a callback ran for an operation that was refused");
}

static ax_proactor_info_t pinfo(ax_loop_t *loop) {
  ax_proactor_info_t pi;
  assert_int_equal(ax_proactor_info(loop, &pi), 0);
  return pi;
}

/* ---- arguments --------------------------------------------------------------- */

static void test_args(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  char b[4] = "abc";
  assert_int_equal(ax_file_read(NULL, fd, 0, 1, never_cb, NULL), -EINVAL);
  assert_int_equal(ax_file_read(loop, fd, 0, 1, NULL, NULL), -EINVAL);
  assert_int_equal(ax_file_read(loop, -1, 0, 1, never_cb, NULL), -EINVAL);
  assert_int_equal(ax_file_read(loop, fd, 0, (size_t)INT_MAX + 1, never_cb, NULL),
                   -EINVAL);
  assert_int_equal(ax_file_read(loop, fd, (uint64_t)INT64_MAX + 1, 1, never_cb,
                                NULL),
                   -EINVAL);
  assert_int_equal(ax_file_write(loop, fd, 0, NULL, 1, never_cb, NULL), -EINVAL);
  assert_int_equal(ax_file_write(loop, -5, 0, b, 3, never_cb, NULL), -EINVAL);
  assert_int_equal(ax_file_write(loop, fd, 0, b, 3, NULL, NULL), -EINVAL);
  assert_int_equal(ax_file_sync(NULL, fd, false, never_cb, NULL), -EINVAL);
  assert_int_equal(ax_file_sync(loop, -1, true, never_cb, NULL), -EINVAL);
  assert_int_equal(ax_file_sync(loop, fd, true, NULL, NULL), -EINVAL);
  assert_false(ax_loop_alive(loop));
  ax_proactor_info_t pi = pinfo(loop);
  assert_int_equal(pi.file_ops_pool + pi.file_ops_native, 0);
  assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  close(fd);
  AX_FREE_LOOP(loop);
}

/* ---- write, then read back ---------------------------------------------------- */

static const size_t sizes[] = {1, 2, 100, 4095, 4096, 4097, 65539, 1u << 20};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void test_write_read_back(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  uint8_t *data[NSIZES];
  uint64_t off[NSIZES];
  struct op w[NSIZES], r[NSIZES];
  uint64_t at = 7; /* odd offsets, with gaps between the regions */
  for (size_t i = 0; i < NSIZES; i++) {
    data[i] = malloc(sizes[i]);
    assert_non_null(data[i]);
    fill(data[i], sizes[i], i + 1);
    off[i] = at;
    at += sizes[i] + 13;
    w[i] = (struct op){.loop = loop};
    assert_int_equal(
        ax_file_write(loop, fd, off[i], data[i], sizes[i], op_cb, &w[i]), 0);
  }
  /* The write copied the bytes: scribbling on ours changes nothing. */
  for (size_t i = 0; i < NSIZES; i++)
    data[i][0] ^= 0xff;
  run_all(loop);
  for (size_t i = 0; i < NSIZES; i++) {
    data[i][0] ^= 0xff;
    assert_int_equal(w[i].calls, 1);
    assert_int_equal(w[i].status, (int)sizes[i]);
    assert_false(w[i].bad);
  }
  /* What the file holds, by pread. */
  for (size_t i = 0; i < NSIZES; i++) {
    uint8_t *chk = malloc(sizes[i]);
    assert_int_equal(pread(fd, chk, sizes[i], (off_t)off[i]), (ssize_t)sizes[i]);
    assert_memory_equal(chk, data[i], sizes[i]);
    free(chk);
  }
  for (size_t i = 0; i < NSIZES; i++) {
    r[i] = (struct op){.loop = loop, .expect = data[i], .expect_len = sizes[i]};
    assert_int_equal(ax_file_read(loop, fd, off[i], sizes[i], op_cb, &r[i]), 0);
  }
  run_all(loop);
  for (size_t i = 0; i < NSIZES; i++) {
    assert_int_equal(r[i].calls, 1);
    assert_int_equal(r[i].status, (int)sizes[i]);
    assert_false(r[i].bad);
    free(data[i]);
  }
  close(fd);
  AX_FREE_LOOP(loop);
}

/* ---- end of file, 0 bytes ------------------------------------------------------- */

static void test_read_past_eof(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  uint8_t buf[1000];
  fill(buf, sizeof buf, 42);
  assert_int_equal(pwrite(fd, buf, sizeof buf, 0), (ssize_t)sizeof buf);
  struct op tail = {.loop = loop, .expect = buf + 990, .expect_len = 10};
  struct op at_end = {.loop = loop};
  struct op beyond = {.loop = loop};
  struct op none = {.loop = loop};
  assert_int_equal(ax_file_read(loop, fd, 990, 100, op_cb, &tail), 0);
  assert_int_equal(ax_file_read(loop, fd, 1000, 100, op_cb, &at_end), 0);
  assert_int_equal(ax_file_read(loop, fd, 1u << 30, 10, op_cb, &beyond), 0);
  assert_int_equal(ax_file_read(loop, fd, 0, 0, op_cb, &none), 0);
  run_all(loop);
  assert_int_equal(tail.calls, 1);
  assert_int_equal(tail.status, 10);
  assert_false(tail.bad);
  struct op *zero[] = {&at_end, &beyond, &none};
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(zero[i]->calls, 1);
    assert_int_equal(zero[i]->status, 0);
    assert_false(zero[i]->bad); /* the empty slice */
  }
  close(fd);
  AX_FREE_LOOP(loop);
}

/* ---- errors of the system calls ----------------------------------------------- */

static void test_bad_fd(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  /* A closed fd number far above the others: lowest-first allocation
   * will not hand it out again while the test runs. */
  int closed = fcntl(fd, F_DUPFD, 1000);
  assert_true(closed >= 1000);
  close(closed);
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int ro = open(path, O_RDONLY);
  assert_true(ro >= 0);
  struct op r = {.loop = loop}, w = {.loop = loop}, s = {.loop = loop},
            d = {.loop = loop}, wro = {.loop = loop};
  assert_int_equal(ax_file_read(loop, closed, 0, 10, op_cb, &r), 0);
  assert_int_equal(ax_file_write(loop, closed, 0, "x", 1, op_cb, &w), 0);
  assert_int_equal(ax_file_sync(loop, closed, false, op_cb, &s), 0);
  assert_int_equal(ax_file_sync(loop, closed, true, op_cb, &d), 0);
  assert_int_equal(ax_file_write(loop, ro, 0, "x", 1, op_cb, &wro), 0);
  run_all(loop);
  struct op *all[] = {&r, &w, &s, &d, &wro};
  for (size_t i = 0; i < 5; i++) {
    assert_int_equal(all[i]->calls, 1);
    assert_int_equal(all[i]->status, -EBADF);
    assert_false(all[i]->bad);
  }
  close(ro);
  close(fd);
  AX_FREE_LOOP(loop);
}

static void test_sync(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  struct op w = {.loop = loop}, s = {.loop = loop}, d = {.loop = loop};
  assert_int_equal(ax_file_write(loop, fd, 0, "hello", 5, op_cb, &w), 0);
  run_all(loop);
  assert_int_equal(w.status, 5);
  assert_int_equal(ax_file_sync(loop, fd, false, op_cb, &s), 0);
  assert_int_equal(ax_file_sync(loop, fd, true, op_cb, &d), 0);
  run_all(loop);
  assert_int_equal(s.calls, 1);
  assert_int_equal(s.status, 0);
  assert_int_equal(d.calls, 1);
  assert_int_equal(d.status, 0);
  assert_false(s.bad || d.bad);
  close(fd);
  AX_FREE_LOOP(loop);
}

/* ---- when callbacks run; the loop stays alive ----------------------------------- */

static ax_slice_t kept;

static void keep_cb(ax_loop_t *loop, int status, ax_slice_t *data, void *ud) {
  op_cb(loop, status, data, ud);
  if (status > 0) {
    ax_buf_ref(data->buf);
    kept = *data;
  }
}

static void test_alive_and_deferred(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  uint8_t buf[3000];
  fill(buf, sizeof buf, 7);
  assert_int_equal(pwrite(fd, buf, sizeof buf, 0), (ssize_t)sizeof buf);
  struct op r = {.loop = loop, .expect = buf + 100, .expect_len = 2000};
  assert_false(ax_loop_alive(loop));
  assert_int_equal(ax_file_read(loop, fd, 100, 2000, keep_cb, &r), 0);
  assert_int_equal(r.calls, 0); /* never from inside the call */
  assert_true(ax_loop_alive(loop));
  run_all(loop); /* no source at all: only the pending read keeps it going */
  assert_int_equal(r.calls, 1);
  assert_int_equal(r.status, 2000);
  assert_false(r.bad);
  assert_false(ax_loop_alive(loop));
  /* The kept buffer outlived the callback. */
  assert_non_null(kept.buf);
  assert_int_equal(ax_buf_refs(kept.buf), 1);
  assert_int_equal(kept.len, 2000);
  assert_memory_equal(ax_slice_ptr(kept), buf + 100, 2000);
  ax_buf_unref(kept.buf);
  kept = (ax_slice_t){0};
  close(fd);
  AX_FREE_LOOP(loop);
}

/* ---- many in flight ---------------------------------------------------------- */

#define NMANY 1000
#define REC 1024 /* bytes per record */

static size_t many_len(size_t i) { return 1 + (i * 37) % REC; }

static void test_many_in_flight(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  uint8_t *img = malloc((size_t)NMANY * REC);
  struct op *ops = calloc(NMANY, sizeof *ops);
  assert_non_null(img);
  assert_non_null(ops);
  fill(img, (size_t)NMANY * REC, 99);
  /* 1,000 writes at once, each its own record. */
  for (size_t i = 0; i < NMANY; i++) {
    ops[i] = (struct op){.loop = loop};
    assert_int_equal(ax_file_write(loop, fd, i * REC, img + i * REC, REC, op_cb,
                                   &ops[i]),
                     0);
  }
  run_all(loop);
  for (size_t i = 0; i < NMANY; i++) {
    assert_int_equal(ops[i].calls, 1);
    assert_int_equal(ops[i].status, REC);
  }
  uint8_t *chk = malloc((size_t)NMANY * REC);
  assert_int_equal(pread(fd, chk, (size_t)NMANY * REC, 0), (ssize_t)NMANY * REC);
  assert_memory_equal(chk, img, (size_t)NMANY * REC);
  free(chk);
  /* 1,000 reads of varied lengths at once, in reverse order of offset. */
  for (size_t k = 0; k < NMANY; k++) {
    size_t i = NMANY - 1 - k;
    size_t len = many_len(i) < REC - 3 ? many_len(i) : REC - 3;
    ops[i] = (struct op){.loop = loop, .expect = img + i * REC + 3,
                         .expect_len = len};
    assert_int_equal(ax_file_read(loop, fd, i * REC + 3, ops[i].expect_len,
                                  op_cb, &ops[i]),
                     0);
  }
  assert_true(ax_loop_alive(loop));
  run_all(loop);
  for (size_t i = 0; i < NMANY; i++) {
    assert_int_equal(ops[i].calls, 1);
    assert_int_equal(ops[i].status, (int)ops[i].expect_len);
    assert_false(ops[i].bad);
  }
  ax_proactor_info_t pi = pinfo(loop);
  assert_int_equal(pi.file_ops_pool + pi.file_ops_native, 2 * NMANY);
  free(ops);
  free(img);
  close(fd);
  AX_FREE_LOOP(loop);
}

/* Results are matched to their operations whatever the order: a 1 MiB read
 * queued first, then 40 small ones; each gets its own bytes. No order is
 * asserted: the pool runs 4 at once, the kernel as it likes. */
static void test_order_independent(void **state) {
  (void)state;
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  size_t n = 1u << 20;
  uint8_t *img = malloc(n);
  fill(img, n, 5);
  assert_int_equal(pwrite(fd, img, n, 0), (ssize_t)n);
  struct op big = {.loop = loop, .expect = img, .expect_len = n};
  struct op small[40];
  completed = 0;
  assert_int_equal(ax_file_read(loop, fd, 0, n, op_cb, &big), 0);
  for (size_t i = 0; i < 40; i++) {
    small[i] = (struct op){.loop = loop, .expect = img + i * 4099,
                           .expect_len = 10 + i};
    assert_int_equal(ax_file_read(loop, fd, i * 4099, 10 + i, op_cb, &small[i]),
                     0);
  }
  run_all(loop);
  int seen[41] = {0};
  assert_int_equal(big.calls, 1);
  assert_false(big.bad);
  seen[big.order]++;
  for (size_t i = 0; i < 40; i++) {
    assert_int_equal(small[i].calls, 1);
    assert_false(small[i].bad);
    assert_true(small[i].order >= 0 && small[i].order < 41);
    seen[small[i].order]++;
  }
  for (size_t i = 0; i < 41; i++)
    assert_int_equal(seen[i], 1); /* ranks are a permutation */
  free(img);
  close(fd);
  AX_FREE_LOOP(loop);
}

/* ---- ax_loop_free with operations pending ------------------------------------ */

struct cancel {
  int calls;
  int status;
  int resubmit; /* what a new operation from the callback returned */
};

static int cancel_fd = -1;

static void cancel_cb(ax_loop_t *loop, int status, ax_slice_t *data, void *ud) {
  struct cancel *c = ud;
  c->calls++;
  c->status = status;
  if (status == -ECANCELED) {
    assert_null(data->buf);
    c->resubmit = ax_file_read(loop, cancel_fd, 0, 1, never_cb, NULL);
  }
}

#define NCANCEL 300

static void free_pending(int iterations) {
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  static uint8_t blob[65536];
  static struct cancel c[NCANCEL];
  static int before[NCANCEL];
  cancel_fd = fd;
  fill(blob, sizeof blob, 3);
  assert_int_equal(pwrite(fd, blob, sizeof blob, 0), (ssize_t)sizeof blob);
  for (size_t i = 0; i < NCANCEL; i++) {
    c[i] = (struct cancel){0};
    int rc;
    if (i % 3 == 0)
      rc = ax_file_read(loop, fd, 0, sizeof blob, cancel_cb, &c[i]);
    else if (i % 3 == 1)
      rc = ax_file_write(loop, fd, i * 100, blob, 4096, cancel_cb, &c[i]);
    else
      rc = ax_file_sync(loop, fd, i % 2, cancel_cb, &c[i]);
    assert_int_equal(rc, 0);
  }
  for (int i = 0; i < iterations; i++)
    assert_int_equal(ax_loop_run(loop, AX_RUN_NOWAIT), 0);
  if (iterations > 0)
    usleep(300); /* let the workers (or the kernel) get going */
  for (size_t i = 0; i < NCANCEL; i++)
    before[i] = c[i].calls;
  guard_start("ax_loop_free with file operations pending", 30);
  AX_FREE_LOOP(loop);
  guard_stop();
  for (size_t i = 0; i < NCANCEL; i++) {
    assert_int_equal(c[i].calls, 1); /* exactly once, before or in the free */
    if (before[i] == 0) {
      assert_int_equal(c[i].status, -ECANCELED);
      assert_int_equal(c[i].resubmit, -ESHUTDOWN);
    } else {
      assert_true(c[i].status >= 0); /* completed in the iteration */
    }
  }
  close(fd);
}

/* Never run: on io_uring the SQEs are not even submitted yet. */
static void test_free_pending(void **state) {
  (void)state;
  free_pending(0);
}

/* After one iteration and a short pause: queued, in the kernel, running on
 * a worker (ax_loop_free waits for its system call), or done and not yet
 * delivered. Which mix a run gets depends on timing; each is counted the
 * same way. */
static void test_free_in_flight(void **state) {
  (void)state;
  free_pending(1);
}

/* ---- counters and the pool's threads ------------------------------------------- */

static int count_threads(void) {
  int n = 0;
  DIR *d = opendir("/proc/self/task");
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

/* The thread count once it has stayed the same for 3 looks 2 ms apart (a
 * joined thread stays listed for a moment after it woke its joiner). */
static int settled_threads(void) {
  int n = count_threads(), same = 0;
  for (int i = 0; i < 500 && same < 3; i++) {
    usleep(2000);
    int m = count_threads();
    same = m == n ? same + 1 : 0;
    n = m;
  }
  return n;
}

static void test_counters_and_threads(void **state) {
  (void)state;
  int before = settled_threads();
  ax_loop_t *loop = ax_test_loop();
  int fd = tmp_fd();
  struct op o[10];
  for (size_t i = 0; i < 10; i++) {
    o[i] = (struct op){.loop = loop};
    if (i < 4)
      assert_int_equal(ax_file_write(loop, fd, i, "abcd", 1, op_cb, &o[i]), 0);
    else if (i < 8)
      assert_int_equal(ax_file_read(loop, fd, 0, 4, op_cb, &o[i]), 0);
    else
      assert_int_equal(ax_file_sync(loop, fd, i == 9, op_cb, &o[i]), 0);
  }
  ax_proactor_info_t pi = pinfo(loop);
  if (on_uring()) {
    assert_int_equal(pi.file_ops_native, 10);
    assert_int_equal(pi.file_ops_pool, 0);
  } else {
    assert_int_equal(pi.file_ops_native, 0);
    assert_int_equal(pi.file_ops_pool, 10);
    /* The pool's 4 threads started with the first operation. */
    assert_int_equal(settled_threads(), before + 4);
  }
  run_all(loop);
  for (size_t i = 0; i < 10; i++)
    assert_int_equal(o[i].calls, 1);
  close(fd);
  AX_FREE_LOOP(loop);
  if (!on_uring()) {
    /* Stopped and joined with the last loop that used them. */
    assert_int_equal(settled_threads(), before);
  }
}

/* ---- 4 loops on 4 threads ------------------------------------------------------- */

#define SLOOPS 4
#define CHAINS 16

struct chain;

struct sloop {
  pthread_t thr;
  ax_backend_t be;
  ax_loop_t *loop;
  int fd;
  int rounds;          /* per chain */
  size_t completions;
  size_t errors;
  struct chain *chains;
};

struct chain {
  struct sloop *s;
  int id;
  int round;
  int phase; /* 0: write, 1: read back, 2: sync */
  uint64_t seed;
  uint8_t data[512];
  size_t len;
};

static void chain_step(struct chain *c);

static void chain_cb(ax_loop_t *loop, int status, ax_slice_t *data, void *ud) {
  struct chain *c = ud;
  struct sloop *s = c->s;
  s->completions++;
  if (loop != s->loop)
    s->errors++;
  if (c->phase == 0 && status != (int)c->len)
    s->errors++;
  if (c->phase == 1 &&
      (status != (int)c->len || memcmp(ax_slice_ptr(*data), c->data, c->len)))
    s->errors++;
  if (c->phase == 2 && status != 0)
    s->errors++;
  c->phase = (c->phase + 1) % 3;
  if (c->phase == 0)
    c->round++;
  if (c->round < s->rounds)
    chain_step(c);
}

static void chain_step(struct chain *c) {
  struct sloop *s = c->s;
  uint64_t off = (uint64_t)c->id * sizeof c->data;
  int rc;
  if (c->phase == 0) {
    c->len = 1 + xorshift(&c->seed) % sizeof c->data;
    fill(c->data, c->len, c->seed);
    rc = ax_file_write(s->loop, s->fd, off, c->data, c->len, chain_cb, c);
  } else if (c->phase == 1) {
    rc = ax_file_read(s->loop, s->fd, off, c->len, chain_cb, c);
  } else {
    rc = ax_file_sync(s->loop, s->fd, c->round % 2, chain_cb, c);
  }
  if (rc != 0)
    s->errors++;
}

static void *sloop_main(void *arg) {
  struct sloop *s = arg;
  /* Created, run and freed on this thread. */
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.backend = s->be;
  if (ax_loop_new(&o, &s->loop) != 0) {
    s->errors++;
    return NULL;
  }
  for (int i = 0; i < CHAINS; i++) {
    s->chains[i] = (struct chain){.s = s, .id = i, .seed = (uint64_t)i * 7 + 1};
    chain_step(&s->chains[i]);
  }
  if (ax_loop_run(s->loop, AX_RUN_DEFAULT) != 0)
    s->errors++;
  ax_loop_free(s->loop);
  return NULL;
}

static void test_stress_threads(void **state) {
  (void)state;
  struct sloop s[SLOOPS];
  struct chain chains[SLOOPS][CHAINS];
  int rounds = under_san() ? 15 : 60;
  guard_start("4 loops on 4 threads with file operations", 120);
  for (int i = 0; i < SLOOPS; i++) {
    s[i] = (struct sloop){.be = ax_test_backend, .fd = tmp_fd(),
                          .rounds = rounds, .chains = chains[i]};
    assert_int_equal(pthread_create(&s[i].thr, NULL, sloop_main, &s[i]), 0);
  }
  for (int i = 0; i < SLOOPS; i++) {
    pthread_join(s[i].thr, NULL);
    assert_int_equal(s[i].errors, 0);
    assert_int_equal(s[i].completions, (size_t)CHAINS * rounds * 3);
    close(s[i].fd);
  }
  guard_stop();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_args),
      cmocka_unit_test(test_write_read_back),
      cmocka_unit_test(test_read_past_eof),
      cmocka_unit_test(test_bad_fd),
      cmocka_unit_test(test_sync),
      cmocka_unit_test(test_alive_and_deferred),
      cmocka_unit_test(test_many_in_flight),
      cmocka_unit_test(test_order_independent),
      cmocka_unit_test(test_free_pending),
      cmocka_unit_test(test_free_in_flight),
      cmocka_unit_test(test_counters_and_threads),
      cmocka_unit_test(test_stress_threads),
  };
  return AX_RUN_ON_BACKENDS(tests);
}
