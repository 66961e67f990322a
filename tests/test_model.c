/*
 * The mailbox's sleep/wake protocol, model-checked: tests/model/mailbox.pml
 * (Promela) through spin. Each test runs, in a fresh directory under /tmp,
 *   spin [-DX] -a tests/model/mailbox.pml; cc -DSAFETY pan.c; ./pan
 * each step under `timeout` (a hang is a failure). The correct protocol must
 * give "errors: 0" with a complete search (no "max search depth too small",
 * no memory bound reached), in two configurations (3 producers x 2 messages,
 * 2 producers x 3 messages). Each mutant (lost wakeup: the producer reads
 * `sleeping` before its exchange; no re-check after announcing; a wake
 * without the claiming swap) must make spin report the expected error, which
 * shows the model can fail.
 *
 * Checked once, in the plain build: skipped when AX_SAN is non-empty. spin is
 * required (tools/deps.sh test installs it): missing, the tests fail.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef AX_SAN
#define AX_SAN ""
#endif

/* Per step (spin -a, cc, pan), in seconds. */
#define STEP_TIMEOUT "120"
/* pan's bounds: search depth (the models reach ~320) and memory (MB). */
#define PAN_DEPTH "100000"
#define PAN_MEMLIM "2048"

#define MODEL_REL "tests/model/mailbox.pml"

/* ---- helpers ------------------------------------------------------------ */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Skip outside the plain build; fail if spin or cc is missing. */
static void prelude(void) {
  if (AX_SAN[0] != '\0')
    skip(); /* the model is checked once, in the plain build */
  if (system("command -v spin >/dev/null 2>&1") != 0)
    fail_msg("spin not found: install it with `sudo apt-get install spin` "
             "(tools/deps.sh test does)");
  if (system("command -v cc >/dev/null 2>&1") != 0)
    fail_msg("cc not found: needed to compile spin's verifier (pan.c)");
}

/* Absolute path of the model, into @out (PATH_MAX). The tests run with the
 * repo root as cwd (tools/run-tests.sh); failing that, next to __FILE__. */
static void model_path(char *out) {
  if (realpath(MODEL_REL, out) != NULL)
    return;
  char alt[PATH_MAX];
  const char *slash = strrchr(__FILE__, '/');
  int n = slash ? (int)(slash - __FILE__) : 0;
  snprintf(alt, sizeof alt, "%.*s%smodel/mailbox.pml", n, __FILE__,
           slash ? "/" : "");
  if (realpath(alt, out) != NULL)
    return;
  fail_msg("model not found: %s (cwd must be the repo root) nor %s: %s",
           MODEL_REL, alt, strerror(errno));
}

/* Run @cmd through the shell; returns its output (stdout + stderr, malloc'd,
 * never NULL) and its exit code in *@rc (-1 if it did not exit normally). */
static char *run(const char *cmd, int *rc) {
  size_t cap = 8192, len = 0;
  char *buf = malloc(cap);
  assert_non_null(buf);
  buf[0] = '\0';
  FILE *p = popen(cmd, "r");
  if (p == NULL) {
    *rc = -1;
    snprintf(buf, cap, "popen: %s", strerror(errno));
    return buf;
  }
  size_t got;
  while ((got = fread(buf + len, 1, cap - len - 1, p)) > 0) {
    len += got;
    if (cap - len - 1 == 0) {
      cap *= 2;
      char *nb = realloc(buf, cap);
      assert_non_null(nb);
      buf = nb;
    }
  }
  buf[len] = '\0';
  int st = pclose(p);
  *rc = (st != -1 && WIFEXITED(st)) ? WEXITSTATUS(st) : -1;
  return buf;
}

/* The last ~@max characters of @s, from a line start. */
static const char *tail(const char *s, size_t max) {
  size_t n = strlen(s);
  if (n <= max)
    return s;
  const char *t = s + n - max;
  const char *nl = strchr(t, '\n');
  return nl ? nl + 1 : t;
}

/* Remove the (flat) work directory and everything in it. */
static void rm_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (d != NULL) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
      if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
        unlinkat(dirfd(d), e->d_name, 0);
    closedir(d);
  }
  rmdir(dir);
}

/* The line of @out containing @key, into @line (for the report). */
static void line_of(const char *out, const char *key, char *line, size_t cap) {
  const char *k = strstr(out, key);
  line[0] = '\0';
  if (k == NULL)
    return;
  const char *b = k;
  while (b > out && b[-1] != '\n')
    b--;
  const char *e = strchr(k, '\n');
  size_t n = e ? (size_t)(e - b) : strlen(b);
  while (n > 0 && (*b == ' ' || *b == '\t'))
    b++, n--;
  snprintf(line, cap, "%.*s", (int)n, b);
}

/*
 * Check the model built with @defines (spin -D flags, "" for none).
 * @expect: NULL, the search must be complete and find no error; otherwise
 * spin must find an error and its report must contain @expect (which error:
 * "invalid end state", "assertion violated ...").
 * On failure the details (spin's output, a counterexample) go to stderr —
 * cmocka cuts its own messages at 1 KiB — and the test fails with a summary.
 */
static void check_model(const char *what, const char *defines,
                        const char *expect) {
  prelude();
  char pml[PATH_MAX];
  model_path(pml);

  char dir[] = "/tmp/axon-model-XXXXXX";
  if (mkdtemp(dir) == NULL)
    fail_msg("mkdtemp: %s", strerror(errno));
  /* Paths reach the shell through the environment: no quoting issues. */
  setenv("AX_MODEL_PML", pml, 1);
  setenv("AX_MODEL_DIR", dir, 1);

  static const char *const stage[] = {"spin -a", "cc pan.c", "./pan"};
  char cmd[3][512];
  snprintf(cmd[0], sizeof cmd[0],
           "cd \"$AX_MODEL_DIR\" && timeout " STEP_TIMEOUT
           " spin %s -a \"$AX_MODEL_PML\" 2>&1",
           defines);
  snprintf(cmd[1], sizeof cmd[1],
           "cd \"$AX_MODEL_DIR\" && timeout " STEP_TIMEOUT
           " cc %s -w -DSAFETY -DMEMLIM=" PAN_MEMLIM " -o pan pan.c 2>&1",
           /* a mutant's error is found in a few hundred states: compile
            * fast; the full searches are worth optimising */
           expect ? "-O0" : "-O2");
  snprintf(cmd[2], sizeof cmd[2],
           "cd \"$AX_MODEL_DIR\" && timeout " STEP_TIMEOUT
           " ./pan -m" PAN_DEPTH " 2>&1");

  char msg[512] = "";      /* the failure summary; empty: success */
  const char *detail = ""; /* the output to show with it */
  char *out = NULL, *trail = NULL;
  double t0 = now_s();
  for (int i = 0; i < 3 && msg[0] == '\0'; i++) {
    free(out);
    int rc;
    out = run(cmd[i], &rc);
    detail = out;
    if (rc == 124)
      snprintf(msg, sizeof msg, "%s: %s timed out after " STEP_TIMEOUT "s",
               what, stage[i]);
    else if (rc != 0)
      snprintf(msg, sizeof msg, "%s: %s failed (exit %d)", what, stage[i], rc);
  }
  double secs = now_s() - t0;

  if (msg[0] == '\0') {
    const char *e = strstr(out, "errors: ");
    long errors = e ? strtol(e + 8, NULL, 10) : -1;
    char states[160], depth[160], found[200];
    line_of(out, "states, stored", states, sizeof states);
    line_of(out, "depth reached", depth, sizeof depth);
    line_of(out, "pan:1: ", found, sizeof found);
    if (e == NULL)
      snprintf(msg, sizeof msg, "%s: no \"errors:\" line in pan's output",
               what);
    else if (strstr(out, "invalid end states\t+") == NULL)
      snprintf(msg, sizeof msg, "%s: pan did not check invalid end states",
               what);
    else if (expect == NULL) {
      if (errors != 0) {
        snprintf(msg, sizeof msg,
                 "%s: spin found %ld error(s) in the protocol: %s", what,
                 errors, found);
        /* Replay the counterexample: the steps and the final state. */
        char replay[512];
        snprintf(replay, sizeof replay,
                 "cd \"$AX_MODEL_DIR\" && timeout " STEP_TIMEOUT
                 " spin %s -t -k mailbox.pml.trail -p -g \"$AX_MODEL_PML\" "
                 "2>&1",
                 defines);
        int rrc;
        trail = run(replay, &rrc);
        fprintf(stderr, "---- counterexample (spin %s -t -p -g) ----\n%s\n",
                defines, tail(trail, 12000));
      } else if (strstr(out, "max search depth too small") != NULL)
        snprintf(msg, sizeof msg,
                 "%s: incomplete search: max search depth too small (raise "
                 "PAN_DEPTH)",
                 what);
      else if (strstr(out, "reached -DMEMLIM bound") != NULL ||
               strstr(out, "out of memory") != NULL)
        snprintf(msg, sizeof msg,
                 "%s: incomplete search: the memory bound was reached", what);
      else
        print_message("%s: no error; %s; %s (%.1fs)\n", what, states, depth,
                      secs);
    } else {
      if (errors <= 0)
        snprintf(msg, sizeof msg,
                 "%s: the mutant passed the check (errors: %ld): the model "
                 "cannot catch this bug",
                 what, errors);
      else if (strstr(out, expect) == NULL)
        snprintf(msg, sizeof msg,
                 "%s: spin found an error, but not the expected \"%s\": %s",
                 what, expect, found);
      else
        print_message("%s: spin reports \"%s\"; %s (%.1fs)\n", what, found,
                      states, secs);
    }
  }

  if (msg[0] != '\0')
    fprintf(stderr, "---- output (tail) ----\n%s\n", tail(detail, 3000));
  free(out);
  free(trail);
  rm_dir(dir);
  if (msg[0] != '\0')
    fail_msg("%s", msg);
}

/* ---- tests -------------------------------------------------------------- */

/* The protocol as specified: no lost wake, all consumed, one wake a sleep. */
static void correct_3x2(void **state) {
  (void)state;
  check_model("protocol, 3 producers x 2 messages", "-DNPROD=3 -DK=2", NULL);
}

static void correct_2x3(void **state) {
  (void)state;
  check_model("protocol, 2 producers x 3 messages", "-DNPROD=2 -DK=3", NULL);
}

/* Producer loads `sleeping` before its exchange: the classic lost wakeup. */
static void mutant_load_before_exchange(void **state) {
  (void)state;
  check_model("mutant BUG (load before exchange)", "-DBUG",
              "invalid end state");
}

/* Consumer blocks right after announcing, without re-checking the queue. */
static void mutant_no_recheck(void **state) {
  (void)state;
  check_model("mutant BUG_NO_RECHECK", "-DBUG_NO_RECHECK",
              "invalid end state");
}

/* Producer wakes on seeing sleeping == 1 without winning the swap. */
static void mutant_no_claim(void **state) {
  (void)state;
  check_model("mutant BUG_NO_CLAIM", "-DBUG_NO_CLAIM",
              "assertion violated (claims<=1)");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(correct_3x2),
      cmocka_unit_test(correct_2x3),
      cmocka_unit_test(mutant_load_before_exchange),
      cmocka_unit_test(mutant_no_recheck),
      cmocka_unit_test(mutant_no_claim),
  };
  return cmocka_run_group_tests_name("model", tests, NULL, NULL);
}
