/* hello_actor — the README's example: two actors on two workers pass a
 * ball back and forth, then one of them stops the runtime. */
#include <axon/axon.h>
#include <stdio.h>

enum { SERVE = 1, BALL };

static void player(ax_actor_t *self, void *name, ax_msg_t *m) {
  int hits = 0;
  ax_aid_t to = m->from; /* a ball goes back where it came from */
  if (m->tag == SERVE) {
    to = *(ax_aid_t *)m->data;
  } else {
    hits = *(int *)m->data + 1;
    printf("%s hits %d on worker %u\n", (char *)name, hits, ax_actor_worker(self));
  }
  if (hits == 6 || ax_send(self, to, BALL, &hits, sizeof hits) < 0)
    ax_rt_stop(ax_actor_rt(self)); /* every actor's terminate runs; join returns */
}

int main(void) {
  static const ax_behaviour_t play = {.receive = player};
  ax_rt_options_t o = {.workers = 2};
  ax_spawn_options_t on0 = {.worker = 0}, on1 = {.worker = 1};
  ax_rt_t *rt;
  ax_aid_t ping, pong;
  int rc;
  if ((rc = ax_rt_new(&o, &rt)) || (rc = ax_spawn(rt, &play, "ping", &on0, &ping)) ||
      (rc = ax_spawn(rt, &play, "pong", &on1, &pong)) ||
      (rc = ax_rt_send(rt, pong, SERVE, &ping, sizeof ping))) {
    fprintf(stderr, "hello_actor: %s\n", ax_strerror(rc));
    return 1;
  }
  ax_rt_join(rt); /* until a player stops it */
  ax_rt_free(rt);
  return 0;
}
