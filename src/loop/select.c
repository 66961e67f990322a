/*
 * select(2) backend.
 *
 * The last resort: level-triggered only, fds below FD_SETSIZE (1024) only,
 * O(maxfd) per wait.
 *
 * Quirks:
 * - select() overwrites its sets, so the registered sets are copied into
 *   scratch sets before every call.
 * - it has no error or hang-up bits: a socket error or a peer's close makes
 *   the fd readable (and a socket error writable), and the user finds out
 *   by reading. AX_ERROR / AX_HANGUP are never reported, except below.
 * - one closed fd in a set makes the whole call fail with EBADF, reporting
 *   nothing for the others. We then probe each fd with fcntl(), report the
 *   closed ones as AX_ERROR and park them (take them out of the sets) until
 *   the core changes or removes their interest, so one bad fd cannot wedge
 *   the loop (libev's fd_ebadf does the same).
 * - FD_SET() on fd >= FD_SETSIZE writes out of bounds: ctl refuses those.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/select.h>

#include "loop_int.h"

#define PARKED 0x80u /* in want[]: registered but closed, out of the sets */

struct selbe {
  fd_set rd, wr;   /* registered interest */
  fd_set ord, owr; /* scratch copies handed to select() */
  int maxfd;       /* no fd above is registered; -1: none */
  int count;       /* fds registered */
  uint8_t want[FD_SETSIZE]; /* AX_READABLE | AX_WRITABLE | PARKED, 0: none */
  uint32_t gen[FD_SETSIZE]; /* io->gen at registration */
};

static int select_init(ax_loop_t *loop) {
  struct selbe *sb = ax__alloc(loop, sizeof(*sb));
  if (sb == NULL)
    return -ENOMEM;
  memset(sb, 0, sizeof(*sb));
  FD_ZERO(&sb->rd);
  FD_ZERO(&sb->wr);
  sb->maxfd = -1;
  loop->be_data = sb;
  return 0;
}

static void select_fini(ax_loop_t *loop) {
  if (loop->be_data == NULL)
    return;
  ax__free(loop, loop->be_data);
  loop->be_data = NULL;
}

static void sets_put(struct selbe *sb, int fd, uint32_t want) {
  FD_CLR(fd, &sb->rd);
  FD_CLR(fd, &sb->wr);
  if (want & AX_READABLE)
    FD_SET(fd, &sb->rd);
  if (want & AX_WRITABLE)
    FD_SET(fd, &sb->wr);
}

static int sel_remove(struct selbe *sb, int fd) {
  if (fd < 0 || fd >= FD_SETSIZE || sb->want[fd] == 0)
    return 0;
  sets_put(sb, fd, 0);
  sb->want[fd] = 0;
  sb->count--;
  /* maxfd shrinks lazily, in the next wait */
  return 0;
}

static int sel_add(ax_loop_t *loop, struct selbe *sb, int fd) {
  int r;
  /* select() would fail as a whole later; fail this one fd now instead. */
  if (fcntl(fd, F_GETFD) < 0 && errno == EBADF)
    return -EBADF;
  if ((r = ax__evbuf_reserve(loop, sb->count + 1)) < 0)
    return r;
  sb->count++;
  if (fd > sb->maxfd)
    sb->maxfd = fd;
  return 0;
}

static int select_ctl(ax_loop_t *loop, struct ax__io *io, uint32_t old,
                      uint32_t events) {
  struct selbe *sb = loop->be_data;
  uint32_t want = events & (AX_READABLE | AX_WRITABLE);
  int fd = io->fd, r;
  (void)old; /* want[] knows, even after a failed add */
  if (want == 0)
    return sel_remove(sb, fd);
  if (fd < 0)
    return -EBADF;
  if (fd >= FD_SETSIZE)
    return AX_EFDTOOBIG;
  if (sb->want[fd] == 0 && (r = sel_add(loop, sb, fd)) < 0)
    return r;
  sb->want[fd] = (uint8_t)want; /* also un-parks */
  sb->gen[fd] = io->gen;
  sets_put(sb, fd, want);
  return 0;
}

static void emit(ax_loop_t *loop, struct selbe *sb, int fd, uint32_t r) {
  if (loop->nev >= loop->evcap)
    return;
  loop->ev[loop->nev].fd = fd;
  loop->ev[loop->nev].gen = sb->gen[fd];
  loop->ev[loop->nev].revents = r;
  loop->nev++;
}

/* select() said EBADF: report and park every registered fd that is closed. */
static void park_closed(ax_loop_t *loop, struct selbe *sb) {
  for (int fd = 0; fd <= sb->maxfd; fd++) {
    if (sb->want[fd] == 0 || (sb->want[fd] & PARKED))
      continue;
    if (fcntl(fd, F_GETFD) >= 0 || errno != EBADF)
      continue;
    sets_put(sb, fd, 0);
    sb->want[fd] |= PARKED;
    emit(loop, sb, fd, AX_ERROR);
  }
}

static void collect(ax_loop_t *loop, struct selbe *sb, int ready) {
  for (int fd = 0; fd <= sb->maxfd && ready > 0; fd++) {
    uint32_t r = 0;
    if (FD_ISSET(fd, &sb->ord)) {
      r |= AX_READABLE;
      ready--;
    }
    if (FD_ISSET(fd, &sb->owr)) {
      r |= AX_WRITABLE;
      ready--;
    }
    if (r)
      emit(loop, sb, fd, r);
  }
}

static int select_wait(ax_loop_t *loop, int timeout_ms) {
  struct selbe *sb = loop->be_data;
  struct timeval tv, *tvp = NULL;
  int ready;
  loop->nev = 0;
  while (sb->maxfd >= 0 && sb->want[sb->maxfd] == 0)
    sb->maxfd--;
  if (timeout_ms >= 0) {
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    tvp = &tv;
  }
  sb->ord = sb->rd;
  sb->owr = sb->wr;
  ready = select(sb->maxfd + 1, &sb->ord, &sb->owr, NULL, tvp);
  if (ready >= 0) {
    collect(loop, sb, ready);
    return 0;
  }
  if (errno == EBADF) {
    park_closed(loop, sb);
    return 0;
  }
  return errno == EINTR ? 0 : -errno;
}

const struct ax__backend ax__backend_select = {
    .name = "select",
    .id = AX_BACKEND_SELECT,
    .edge = false,
    .init = select_init,
    .fini = select_fini,
    .ctl = select_ctl,
    .wait = select_wait,
};
