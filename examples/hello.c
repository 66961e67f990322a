/* hello — the README's example: a timer that ticks, then picks its delay. */
#include <axon/axon.h>
#include <stdio.h>

static int64_t tick(ax_source_t *timer, void *data) {
  int *n = data;
  printf("tick %d\n", ++*n);
  if (*n == 4)
    ax_source_stop(timer); /* nothing live is left: ax_loop_run returns */
  return *n == 3 ? 500 : AX_TIMER_CONTINUE; /* 100 ms apart, then 500 ms */
}

int main(void) {
  ax_loop_t *loop;
  ax_source_t *timer;
  int n = 0, rc;
  if ((rc = ax_loop_new(NULL, &loop)) || (rc = ax_timer_new(loop, tick, &n, &timer)) ||
      (rc = ax_timer_start(timer, 100, 100)) || (rc = ax_loop_run(loop, AX_RUN_DEFAULT))) {
    fprintf(stderr, "hello: %s\n", ax_strerror(rc));
    return 1;
  }
  ax_loop_free(loop); /* frees the timer too */
  return n == 4 ? 0 : 1;
}
