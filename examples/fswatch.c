/*
 * fswatch — print the changes made to a file or a directory.
 *
 *   fswatch PATH [--count N]
 *
 * Prints `watching PATH` once the watch is in place, then one line per event:
 * `change`, `attrib`, `delete`, `rename`, `create` (followed by the entry
 * name when PATH is a directory), `overflow` (events were lost) or `ended`
 * (PATH went away; we exit). Exits after N events with --count, or on
 * SIGINT/SIGTERM, with status 0.
 */
#include <axon/axon.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct watch {
  long left; /* events still to print; -1: no limit */
};

static void fs_cb(ax_source_t *src, unsigned events, const char *name, void *data) {
  static const struct { unsigned bit; const char *what; } names[] = {
      {AX_FS_CREATE, "create"}, {AX_FS_CHANGE, "change"},
      {AX_FS_ATTRIB, "attrib"}, {AX_FS_RENAME, "rename"},
      {AX_FS_DELETE, "delete"}, {AX_FS_OVERFLOW, "overflow"},
      {AX_FS_ENDED, "ended"}};
  struct watch *w = data;
  /* One callback may carry several bits: one line, and one count, each. */
  for (size_t i = 0; i < sizeof names / sizeof names[0] && w->left != 0; i++) {
    if (!(events & names[i].bit)) continue;
    if (name) printf("%s %s\n", names[i].what, name);
    else puts(names[i].what);
    if (w->left > 0) w->left--;
  }
  fflush(stdout); /* whoever reads our pipe sees each event as it happens */
  /* ENDED: the source is already stopped; only the signal watchers remain,
   * and they would keep the loop running forever. */
  if (w->left == 0 || (events & AX_FS_ENDED)) ax_loop_stop(ax_source_loop(src));
}

static void signal_cb(ax_source_t *src, int signo, void *data) {
  (void)signo, (void)data;
  ax_loop_stop(ax_source_loop(src));
}

/* Print why @what failed; pass @rc through. */
static int step(int rc, const char *what) {
  if (rc < 0) fprintf(stderr, "fswatch: %s: %s\n", what, ax_strerror(rc));
  return rc;
}

int main(int argc, char **argv) {
  struct watch w = {.left = -1};
  char *end = NULL;
  if (argc == 4 && strcmp(argv[2], "--count") == 0)
    w.left = strtol(argv[3], &end, 10);
  if (!(argc == 2 || (argc == 4 && end && !*end && w.left > 0))) {
    fprintf(stderr, "usage: %s PATH [--count N]\n", argv[0]);
    return 2;
  }
  /* Blocked before the loop exists: the signals then only arrive as loop
   * events (see ax_signal_start). */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int rc = step(-pthread_sigmask(SIG_BLOCK, &set, NULL), "pthread_sigmask");

  ax_loop_t *loop = NULL;
  ax_source_t *fs = NULL, *sigint = NULL, *sigterm = NULL;
  if (rc == 0) rc = step(ax_loop_new(NULL, &loop), "ax_loop_new");
  if (rc == 0) rc = step(ax_signal_new(loop, signal_cb, NULL, &sigint), "ax_signal_new");
  if (rc == 0) rc = step(ax_signal_new(loop, signal_cb, NULL, &sigterm), "ax_signal_new");
  if (rc == 0) rc = step(ax_signal_start(sigint, SIGINT), "SIGINT");
  if (rc == 0) rc = step(ax_signal_start(sigterm, SIGTERM), "SIGTERM");
  if (rc == 0) rc = step(ax_fswatch_new(loop, fs_cb, &w, &fs), "ax_fswatch_new");
  if (rc == 0) rc = step(ax_fswatch_start(fs, argv[1], 0), argv[1]);
  if (rc == 0) {
    printf("watching %s\n", argv[1]);
    fflush(stdout);
    rc = step(ax_loop_run(loop, AX_RUN_DEFAULT), "ax_loop_run");
  }
  ax_loop_free(loop); /* frees the sources too */
  return rc < 0 ? 1 : 0;
}
