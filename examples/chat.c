/*
 * chat — a TCP chat server: an acceptor spawns one actor per client; each
 * room is a group; every line a client sends goes to the others in its
 * room. "/join ROOM" moves the client (it starts in "lobby"); the server
 * answers "* joined ROOM" once the move is done. SIGINT or SIGTERM stops it.
 *
 *   chat [--port P] [--workers W]     prints "listening on 127.0.0.1:PORT"
 */
#include <axon/axon.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { LINE = 1 };
#define ROOMS 64

static struct { char name[32]; ax_group_t *g; } rooms[ROOMS];
static pthread_mutex_t rooms_lock = PTHREAD_MUTEX_INITIALIZER;
static ax_rt_t *rt;

struct client { ax_stream_t *s; ax_group_t *room; };

/* The group of room @name, made on first use (any worker: hence the lock). */
static ax_group_t *room(const char *name, size_t len) {
  ax_group_t *g = NULL;
  if (len == 0 || len >= sizeof rooms[0].name) return NULL;
  pthread_mutex_lock(&rooms_lock);
  for (int i = 0; i < ROOMS && !g; i++) {
    if (!rooms[i].g && ax_group_new(rt, &rooms[i].g) == 0) memcpy(rooms[i].name, name, len);
    if (rooms[i].g && strncmp(rooms[i].name, name, len) == 0 && !rooms[i].name[len]) g = rooms[i].g;
  }
  pthread_mutex_unlock(&rooms_lock);
  return g;
}

static void join(ax_actor_t *self, struct client *c, const char *name, size_t len) {
  char msg[64];
  ax_group_t *g = room(name, len);
  if (!g) return (void)ax_stream_write(c->s, "* no such room\n", 15, NULL, NULL);
  if (c->room) ax_group_leave(c->room, self);
  ax_group_join(c->room = g, self);
  int n = snprintf(msg, sizeof msg, "* joined %.*s\n", (int)len, name);
  ax_stream_write(c->s, msg, (size_t)n, NULL, NULL);
}

/* A line from the client (proactor callback on the actor's worker). */
static void on_line(ax_stream_t *s, int status, ax_slice_t *data, void *ud) {
  ax_actor_t *self = ud;
  struct client *c = ax_actor_state(self);
  char line[1025];
  (void)s;
  if (status < 0) return ax_exit(self, AX_EXIT_NORMAL); /* EOF or error: the stream closes */
  memcpy(line, ax_slice_ptr(*data), (size_t)status);
  if (status > 6 && memcmp(line, "/join ", 6) == 0) return join(self, c, line + 6, (size_t)status - 6);
  line[status] = '\n';
  ax_group_send(c->room, self, true, LINE, line, (size_t)status + 1);
}

static int client_init(ax_actor_t *self, void *state, void *arg) {
  struct client *c = state;
  c->s = ((ax_conn_t *)arg)->stream;
  if (ax_filter_line(c->s, 1024) < 0 || ax_stream_read_start(c->s, on_line) < 0) return -1;
  join(self, c, "lobby", 5);
  return 0;
}

static void client(ax_actor_t *self, void *state, ax_msg_t *m) {
  struct client *c = state;
  if (m->tag == LINE && ax_stream_write(c->s, m->data, m->len, NULL, NULL) < 0) ax_exit(self, AX_EXIT_NORMAL);
}

int main(int argc, char **argv) {
  static const ax_behaviour_t beh = {sizeof(struct client), client_init, client, NULL, "client"};
  ax_rt_options_t o = {.workers = 2, .stop_on_signals = true};
  unsigned port = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--port") == 0) port = (unsigned)atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--workers") == 0) o.workers = (unsigned)atoi(argv[i + 1]);
    else return fprintf(stderr, "usage: chat [--port P] [--workers W]\n"), 2;
  }
  ax_addr_t addr;
  ax_acceptor_t *acc;
  int rc;
  if ((rc = ax_addr_ip("127.0.0.1", port, &addr)) || (rc = ax_rt_new(&o, &rt)) ||
      (rc = ax_listen(rt, &addr, &beh, NULL, &acc)) || (rc = ax_acceptor_addr(acc, &addr))) {
    fprintf(stderr, "chat: %s\n", ax_strerror(rc));
    return 1;
  }
  printf("listening on 127.0.0.1:%u\n", ax_addr_port(&addr));
  fflush(stdout);
  ax_rt_join(rt); /* until SIGINT or SIGTERM */
  ax_rt_free(rt);
  for (int i = 0; i < ROOMS; i++) ax_group_free(rooms[i].g);
  return 0;
}
