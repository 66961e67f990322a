/*
 * ring — N actors in a ring pass a token M hops; prints hops per second.
 * Actor i forwards to actor i+1 (mod N); the one that sees hop M must be
 * actor M mod N, else the exit status is 1.
 *
 *   ring [-a ACTORS] [-m HOPS] [--workers W]
 *
 * The ring is cut into W contiguous arcs, one per worker, so a lap crosses
 * workers only W times: most hops are same-worker sends.
 */
#include <axon/axon.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { TOKEN = 1 };

static ax_aid_t *ring;
static uint64_t actors = 1000, hops = 1000000, last_actor = UINT64_MAX;
static struct timespec t0, t1;

/* The state pointer is the spawn argument: the actor's index. */
static void member(ax_actor_t *self, void *state, ax_msg_t *m) {
  uint64_t i = (uintptr_t)state, h;
  memcpy(&h, m->data, sizeof h);
  if (h == hops) { /* the last hop: stop and say who got it */
    clock_gettime(CLOCK_MONOTONIC, &t1);
    last_actor = i;
    ax_rt_stop(ax_actor_rt(self));
    return;
  }
  h++;
  if (ax_send(self, ring[(i + 1) % actors], TOKEN, &h, sizeof h) < 0) ax_rt_stop(ax_actor_rt(self));
}

int main(int argc, char **argv) {
  static const ax_behaviour_t beh = {.receive = member, .name = "ring"};
  ax_rt_options_t o = {.workers = 2};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "-a") == 0) actors = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "-m") == 0) hops = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--workers") == 0) o.workers = (unsigned)atoi(argv[i + 1]);
    else return fprintf(stderr, "usage: ring [-a ACTORS] [-m HOPS] [--workers W]\n"), 2;
  }
  ax_rt_t *rt;
  int rc = actors ? ax_rt_new(&o, &rt) : -EINVAL;
  ring = calloc(actors ? actors : 1, sizeof *ring);
  for (uint64_t i = 0; rc == 0 && i < actors; i++) {
    ax_spawn_options_t so = {.worker = (int)(i * ax_rt_workers(rt) / actors)};
    rc = ax_spawn(rt, &beh, (void *)(uintptr_t)i, &so, &ring[i]);
  }
  uint64_t h = 0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  if (rc == 0) rc = ax_rt_send(rt, ring[0], TOKEN, &h, sizeof h); /* the ring is wired */
  if (rc) {
    fprintf(stderr, "ring: %s\n", ax_strerror(rc));
    return 1;
  }
  ax_rt_join(rt);
  ax_rt_free(rt);
  free(ring);
  double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  if (last_actor != hops % actors) {
    fprintf(stderr, "ring: hop %llu ended at actor %lld, not %llu\n", (unsigned long long)hops,
            (long long)last_actor, (unsigned long long)(hops % actors));
    return 1;
  }
  printf("%llu actors, %llu hops in %.3f s: %.0f hops/s\n", (unsigned long long)actors,
         (unsigned long long)hops, s, hops / s);
  return 0;
}
