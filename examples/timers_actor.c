/*
 * timers_actor — per-actor timers: a one-shot (ax_after), an interval
 * (ax_every) cancelled after its 4th tick (ax_cancel_timer), and two
 * requests to a slow server with a timeout (ax_request): one answered in
 * time, one that times out (its late reply is dropped by the runtime).
 * Prints what fires when; ends by itself after about 1 s. Exit status 1
 * if anything came that should not have (or did not come).
 */
#include <axon/axon.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

enum { ONCE = 1, TICK, DONE, ASK, ANSWER, DUE = 100 };

struct server { ax_msg_t pending[2]; unsigned n; };       /* requests held */
struct client { ax_aid_t server; uint64_t tick_id, fast, slow; int ticks, once, replies, timeouts; };

static struct timespec t0;
static int ok;

static long ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
}

/* Answers request k after the delay it asks for, from a one-shot timer. */
static void server(ax_actor_t *self, void *state, ax_msg_t *m) {
  struct server *s = state;
  uint64_t delay;
  if (m->tag == ASK && s->n < 2) {
    memcpy(&delay, m->data, sizeof delay);
    s->pending[s->n] = *m; /* ax_reply needs only from and ref */
    (void)ax_after(self, delay, DUE + s->n++, NULL);
  } else if (m->tag >= DUE) {
    (void)ax_reply(self, &s->pending[m->tag - DUE], ANSWER, NULL, 0);
  }
}

static void client(ax_actor_t *self, void *state, ax_msg_t *m) {
  struct client *c = state;
  uint64_t fast = 50, slow = 400;
  switch (m->tag) {
  case ASK: /* start: m->data is the server's id */
    memcpy(&c->server, m->data, sizeof c->server);
    (void)ax_after(self, 100, ONCE, NULL);
    (void)ax_every(self, 150, TICK, &c->tick_id);
    (void)ax_after(self, 1000, DONE, NULL);
    (void)ax_request(self, c->server, ASK, &fast, sizeof fast, 200, &c->fast);
    (void)ax_request(self, c->server, ASK, &slow, sizeof slow, 250, &c->slow);
    printf("%4ld ms  start: once in 100 ms, every 150 ms, two requests\n", ms());
    break;
  case ONCE:
    printf("%4ld ms  one-shot timer\n", ms()), c->once++;
    break;
  case TICK:
    printf("%4ld ms  interval tick %d\n", ms(), ++c->ticks);
    if (c->ticks == 4) printf("%4ld ms  interval cancelled: %d\n", ms(), ax_cancel_timer(self, c->tick_id));
    break;
  case ANSWER:
    printf("%4ld ms  reply to the %s request\n", ms(), m->ref == c->fast ? "fast" : "slow"), c->replies++;
    break;
  case AX_TAG_TIMEOUT:
    printf("%4ld ms  timeout of the %s request\n", ms(), m->ref == c->slow ? "slow" : "fast"), c->timeouts++;
    break;
  case DONE:
    ok = c->once == 1 && c->ticks == 4 && c->replies == 1 && c->timeouts == 1;
    printf("%4ld ms  done: %s\n", ms(), ok ? "all as expected" : "WRONG");
    ax_rt_stop(ax_actor_rt(self));
  }
}

int main(void) {
  static const ax_behaviour_t sb = {.state_size = sizeof(struct server), .receive = server};
  static const ax_behaviour_t cb = {.state_size = sizeof(struct client), .receive = client};
  ax_rt_options_t o = {.workers = 1};
  ax_rt_t *rt;
  ax_aid_t s, c;
  int rc;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if ((rc = ax_rt_new(&o, &rt)) || (rc = ax_spawn(rt, &sb, NULL, NULL, &s)) ||
      (rc = ax_spawn(rt, &cb, NULL, NULL, &c)) || (rc = ax_rt_send(rt, c, ASK, &s, sizeof s))) {
    fprintf(stderr, "timers_actor: %s\n", ax_strerror(rc));
    return 1;
  }
  ax_rt_join(rt);
  ax_rt_free(rt);
  return ok ? 0 : 1;
}
