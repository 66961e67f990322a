/*
 * stdin — read standard input through the loop, echo it line by line:
 *
 *   $ printf 'a\nb' | stdin
 *   1: a
 *   2: b
 *
 * Reads arrive in arbitrary pieces, so a line may be split across reads; the
 * bytes after the last newline are kept until the rest arrives, and printed
 * as a last line at end of input even without a newline.
 */
#include <axon/axon.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct reader {
  char *buf; /* bytes of the line not yet complete: buf[0, len) */
  size_t len, cap;
  int lines;
  int err; /* 0, or the negative errno that ended the reading */
};

/* fwrite, not %s: a line may hold NUL bytes. */
static void emit(struct reader *r, const char *line, size_t len) {
  printf("%d: ", ++r->lines);
  fwrite(line, 1, len, stdout);
  putchar('\n');
}

/* Print every complete line in buf and keep the incomplete tail. */
static void print_lines(struct reader *r) {
  char *p = r->buf, *end = r->buf + r->len, *nl;
  while ((nl = memchr(p, '\n', (size_t)(end - p))) != NULL) {
    emit(r, p, (size_t)(nl - p));
    p = nl + 1;
  }
  r->len = (size_t)(end - p);
  memmove(r->buf, p, r->len);
}

static void stdin_cb(ax_source_t *src, int fd, unsigned revents, void *data) {
  struct reader *r = data;
  (void)revents;
  if (r->cap - r->len < 4096) { /* room for one more read; long lines grow it */
    size_t cap = r->cap ? r->cap * 2 : 8192;
    char *b = realloc(r->buf, cap);
    if (!b) {
      r->err = -ENOMEM;
      ax_source_free(src);
      return;
    }
    r->buf = b;
    r->cap = cap;
  }
  /* One read per readiness event: fd 0 stays blocking (O_NONBLOCK would be
   * shared with every process using the same terminal or pipe), and a single
   * read after readiness does not block. Level-triggered readiness brings us
   * back for whatever is left. */
  ssize_t n = read(fd, r->buf + r->len, r->cap - r->len);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n > 0) {
    r->len += (size_t)n;
    print_lines(r);
    return;
  }
  if (n < 0) r->err = -errno;
  if (n == 0 && r->len > 0) /* end of input: the last line had no newline */
    emit(r, r->buf, r->len);
  ax_source_free(src); /* nothing live is left: ax_loop_run() returns */
}

/* Create a loop on @backend watching fd 0; 0 or a negative code, with the
 * failing step in *@what. */
static int watch_stdin(ax_backend_t backend, struct reader *r, ax_loop_t **out,
                       const char **what) {
  ax_loop_options_t opts;
  ax_loop_options_init(&opts);
  opts.backend = backend;
  ax_loop_t *loop;
  ax_source_t *io;
  *what = "ax_loop_new";
  int rc = ax_loop_new(&opts, &loop);
  if (rc < 0) return rc;
  *what = "watching standard input";
  rc = ax_io_new(loop, STDIN_FILENO, stdin_cb, r, &io);
  if (rc == 0) rc = ax_io_start(io, AX_READABLE);
  if (rc < 0) {
    ax_loop_free(loop);
    return rc;
  }
  *out = loop;
  return 0;
}

int main(void) {
  struct reader r = {0};
  ax_loop_t *loop = NULL;
  const char *what;
  int rc = watch_stdin(AX_BACKEND_AUTO, &r, &loop, &what);
  /* epoll refuses regular files and fds like /dev/null, which are always
   * "ready" (AX_ENOTPOLLABLE). `stdin < file` is common, so fall back to the
   * poll backend, which reports them readable at once; a read never blocks
   * on them. */
  if (rc == AX_ENOTPOLLABLE)
    rc = watch_stdin(AX_BACKEND_POLL, &r, &loop, &what);
  if (rc < 0) {
    fprintf(stderr, "stdin: %s: %s\n", what, ax_strerror(rc));
    return 1;
  }
  rc = ax_loop_run(loop, AX_RUN_DEFAULT);
  if (rc == 0) rc = r.err;
  if (rc < 0) fprintf(stderr, "stdin: %s\n", ax_strerror(rc));
  ax_loop_free(loop);
  free(r.buf);
  if (fflush(stdout) != 0) {
    perror("stdin: stdout");
    return 1;
  }
  return rc < 0 ? 1 : 0;
}
