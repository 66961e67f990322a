/*
 * skynet — the actor-tree benchmark: the root spawns 10 children, each of
 * them 10 more, down to N leaves (1,000,000: 1,111,111 actors). A leaf
 * sends its number to its parent; a parent sends the sum of its children
 * up; the root's sum must be N(N-1)/2 (exit status 1 otherwise).
 *
 *   skynet [-n LEAVES (a power of 10)] [--workers W]
 *
 * The root's children go to the workers in turn; below them every actor
 * spawns on its own worker, so the tree's sends are same-worker sends.
 */
#include <axon/axon.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { START = 1, SUM };

struct job { uint64_t num, size; };
struct node { ax_aid_t parent; uint64_t sum; unsigned left; };

static uint64_t leaves = 1000000, result;

static void up(ax_actor_t *self, ax_aid_t parent, uint64_t sum) {
  if (parent) (void)ax_send(self, parent, SUM, &sum, sizeof sum);
  else result = sum, ax_rt_stop(ax_actor_rt(self)); /* the root: done */
  ax_exit(self, AX_EXIT_NORMAL);
}

static void skynet(ax_actor_t *self, void *state, ax_msg_t *m) {
  static const ax_behaviour_t beh = {sizeof(struct node), NULL, skynet, NULL, "skynet"};
  struct node *n = state;
  if (m->tag == SUM) {
    uint64_t v;
    memcpy(&v, m->data, sizeof v);
    n->sum += v;
    if (--n->left == 0) up(self, n->parent, n->sum);
    return;
  }
  struct job j;
  memcpy(&j, m->data, sizeof j);
  n->parent = m->from;
  if (j.size == 1) return up(self, n->parent, j.num);
  ax_rt_t *rt = ax_actor_rt(self);
  for (unsigned i = 0; i < 10; i++) {
    ax_spawn_options_t so = {.worker = n->parent ? AX_WORKER_SELF : (int)(i % ax_rt_workers(rt))};
    struct job c = {j.num + i * (j.size / 10), j.size / 10};
    ax_aid_t kid;
    if (ax_spawn(rt, &beh, NULL, &so, &kid) < 0 || ax_send(self, kid, START, &c, sizeof c) < 0)
      return ax_rt_stop(rt); /* result stays 0: a wrong sum */
    n->left++;
  }
}

int main(int argc, char **argv) {
  static const ax_behaviour_t beh = {sizeof(struct node), NULL, skynet, NULL, "skynet"};
  ax_rt_options_t o = {.workers = 2};
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "-n") == 0) leaves = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--workers") == 0) o.workers = (unsigned)atoi(argv[i + 1]);
    else return fprintf(stderr, "usage: skynet [-n LEAVES] [--workers W]\n"), 2;
  }
  uint64_t p = 1;
  while (p < leaves) p *= 10;
  if (p != leaves) return fprintf(stderr, "skynet: -n must be a power of 10\n"), 2;
  struct timespec t0, t1;
  struct job root = {0, leaves};
  ax_rt_t *rt;
  ax_aid_t id;
  int rc;
  if ((rc = ax_rt_new(&o, &rt)) == 0) clock_gettime(CLOCK_MONOTONIC, &t0); /* workers up */
  if (rc || (rc = ax_spawn(rt, &beh, NULL, NULL, &id)) ||
      (rc = ax_rt_send(rt, id, START, &root, sizeof root))) {
    fprintf(stderr, "skynet: %s\n", ax_strerror(rc));
    return 1;
  }
  ax_rt_join(rt); /* until the root has its sum */
  clock_gettime(CLOCK_MONOTONIC, &t1);
  ax_rt_free(rt);
  uint64_t want = leaves * (leaves - 1) / 2;
  printf("sum %llu in %.0f ms\n", (unsigned long long)result,
         (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
  if (result != want) fprintf(stderr, "skynet: wrong sum, want %llu\n", (unsigned long long)want);
  return result == want ? 0 : 1;
}
