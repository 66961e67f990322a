/*
 * pingpong — two actors on two workers bounce a counter N times; prints
 * round trips per second. Exits 1 if a reply comes back wrong.
 *
 *   pingpong [-n ROUND_TRIPS] [--spin NS]
 *
 * --spin sets ax_rt_options.spin_ns: an idle worker busy-waits that long
 * for mail before it sleeps (cheaper round trips, CPU burnt while idle).
 */
#include <axon/axon.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { SERVE = 1, BALL };

static uint64_t rounds = 100000, done;
static double secs;
static int bad;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void ponger(ax_actor_t *self, void *state, ax_msg_t *m) {
  (void)state; /* answer every ball with the same number */
  if (ax_send(self, m->from, BALL, m->data, m->len) < 0) ax_rt_stop(ax_actor_rt(self));
}

static void pinger(ax_actor_t *self, void *state, ax_msg_t *m) {
  static ax_aid_t peer;
  static double t0;
  uint64_t i = 0;
  (void)state;
  if (m->tag == SERVE) { /* the first ball: data is the ponger's id */
    memcpy(&peer, m->data, sizeof peer);
    t0 = now_s();
  } else {
    memcpy(&i, m->data, sizeof i);
    bad |= i != done + 1;
    done = i;
  }
  if (i == rounds || bad) {
    secs = now_s() - t0;
    ax_rt_stop(ax_actor_rt(self));
    return;
  }
  i++;
  if (ax_send(self, peer, BALL, &i, sizeof i) < 0) ax_rt_stop(ax_actor_rt(self));
}

int main(int argc, char **argv) {
  static const ax_behaviour_t ping = {.receive = pinger, .name = "ping"};
  static const ax_behaviour_t pong = {.receive = ponger, .name = "pong"};
  ax_rt_options_t o = {.workers = 2};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "-n") == 0) rounds = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--spin") == 0) o.spin_ns = (uint32_t)strtoul(argv[i + 1], NULL, 10);
    else return fprintf(stderr, "usage: pingpong [-n N] [--spin NS]\n"), 2;
  }
  ax_spawn_options_t on0 = {.worker = 0}, on1 = {.worker = 1};
  ax_rt_t *rt;
  ax_aid_t a, b;
  int rc;
  if ((rc = ax_rt_new(&o, &rt)) || (rc = ax_spawn(rt, &ping, NULL, &on0, &a)) ||
      (rc = ax_spawn(rt, &pong, NULL, &on1, &b)) || (rc = ax_rt_send(rt, a, SERVE, &b, sizeof b))) {
    fprintf(stderr, "pingpong: %s\n", ax_strerror(rc));
    return 1;
  }
  ax_rt_join(rt); /* until the pinger stops it */
  ax_rt_free(rt);
  if (bad || done != rounds) {
    fprintf(stderr, "pingpong: %llu of %llu round trips, %s\n", (unsigned long long)done,
            (unsigned long long)rounds, bad ? "a wrong reply" : "stopped early");
    return 1;
  }
  printf("%llu round trips in %.3f s: %.0f round trips/s\n", (unsigned long long)rounds, secs,
         rounds / secs);
  return 0;
}
