/*
 * echo_actor — the echo server on actors: an acceptor spreads connections
 * over the runtime's workers and each one gets an actor of its own.
 *
 *   echo_actor [--port P] [--workers N] [--backend epoll|poll|select|io_uring]
 *              [--place rr|least|reuseport]
 *
 * The connection actor owns its stream; the proactor's callbacks run on the
 * actor's worker, with the actor as user data. Same contract as
 * echo_proactor: back-pressure (stop reading above the high-water mark,
 * resume on drain), a write deadline, half-close (flush, then end). Ending
 * the actor closes the connection. SIGINT/SIGTERM stop the runtime; the
 * per-worker counters go to stderr.
 */
#include <axon/axon.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WRITE_TIMEOUT_MS 10000 /* a client that reads nothing for 10 s goes */

/* A callback owed after the actor ended sees NULL user data: nothing to do. */
static void finish(ax_stream_t *s, int status, void *ud) {
  ax_actor_t *self = ax_stream_data(s);
  (void)status, (void)ud;
  if (self) ax_exit(self, AX_EXIT_NORMAL); /* its stream closes after it */
}

static void on_queued(ax_stream_t *s, int status, void *ud) {
  if (status < 0) finish(s, status, ud); /* failed while reading was stopped */
}

static void on_read(ax_stream_t *s, int status, ax_slice_t *data, void *self) {
  if (status == AX_EOF) { /* half-closed: echo what is queued, then end */
    if (ax_stream_shutdown(s, finish) < 0) ax_exit(self, AX_EXIT_NORMAL);
  } else if (status < 0 || ax_stream_write_slices(s, data, 1, NULL, NULL) < 0) {
    ax_exit(self, AX_EXIT_NORMAL); /* reset, write timeout, ... */
  } else if (!ax_stream_writable(s)) { /* resumed by on_drain */
    ax_stream_read_stop(s);
    ax_stream_write(s, NULL, 0, on_queued, NULL); /* completes after the queue */
  }
}

static void on_drain(ax_stream_t *s, int status, void *ud) {
  if (ax_stream_data(s) && ax_stream_read_start(s, on_read) < 0) finish(s, status, ud);
}

static int conn_init(ax_actor_t *self, void *state, void *arg) {
  ax_stream_t *s = ((ax_conn_t *)arg)->stream;
  (void)self, (void)state;
  ax_stream_nodelay(s, true);
  ax_stream_set_write_limits(s, 64 * 1024, 0, on_drain);
  ax_stream_set_write_timeout(s, WRITE_TIMEOUT_MS);
  return ax_stream_read_start(s, on_read); /* < 0: the actor ends at once */
}

/* Nobody sends it anything: the stream's callbacks do the work. */
static void conn_receive(ax_actor_t *self, void *st, ax_msg_t *m) {
  (void)self, (void)st, (void)m;
}

/* The index of @v in @names (NULL-terminated), or -1. */
static int lookup(const char *v, const char *const *names) {
  for (int k = 0; names[k]; k++)
    if (strcmp(v, names[k]) == 0) return k;
  return -1;
}

static int parse_args(int argc, char **argv, unsigned *port, ax_rt_options_t *ro,
                      ax_place_t *place) {
  /* In the enums' order (ax_backend_t after AX_BACKEND_AUTO, ax_place_t). */
  static const char *const be[] = {"epoll", "poll", "select", "io_uring", NULL};
  static const char *const pl[] = {"rr", "least", "reuseport", NULL};
  for (int i = 1; i + 1 < argc; i += 2) {
    char *v = argv[i + 1], *e;
    unsigned long n = strtoul(v, &e, 10);
    int k;
    if (strcmp(argv[i], "--port") == 0 && !*e && e != v && n <= 65535)
      *port = (unsigned)n;
    else if (strcmp(argv[i], "--workers") == 0 && !*e && n >= 1 && n <= 256)
      ro->workers = (unsigned)n;
    else if (strcmp(argv[i], "--backend") == 0 && (k = lookup(v, be)) >= 0)
      ro->backend = (ax_backend_t)(AX_BACKEND_EPOLL + k);
    else if (strcmp(argv[i], "--place") == 0 && (k = lookup(v, pl)) >= 0)
      *place = (ax_place_t)k;
    else
      return -1;
  }
  return argc % 2 ? 0 : -1;
}

int main(int argc, char **argv) {
  static const ax_behaviour_t conn = {
      .init = conn_init, .receive = conn_receive, .name = "echo"};
  ax_rt_options_t ro;
  ax_acceptor_options_t ao;
  ax_rt_options_init(&ro);
  ax_acceptor_options_init(&ao);
  unsigned port = 0;
  if (parse_args(argc, argv, &port, &ro, &ao.place) < 0) {
    fprintf(stderr, "usage: %s [--port P] [--workers N] [--backend epoll|poll|select|"
                    "io_uring] [--place rr|least|reuseport]\n", argv[0]);
    return 2;
  }
  ro.stop_on_signals = true; /* SIGINT, SIGTERM: ax_rt_stop(), then join returns */
  ax_rt_t *rt = NULL;
  ax_acceptor_t *acc;
  ax_addr_t addr;
  int rc = ax_rt_new(&ro, &rt);
  if (rc == 0 && (rc = ax_addr_ip("127.0.0.1", port, &addr)) == 0 &&
      (rc = ax_listen(rt, &addr, &conn, &ao, &acc)) == 0 &&
      (rc = ax_acceptor_addr(acc, &addr)) == 0) {
    printf("listening on 127.0.0.1:%u\n", ax_addr_port(&addr));
    fflush(stdout);
    rc = ax_rt_join(rt); /* until a signal stops the runtime */
    ax_rt_dump(rt, stderr);
  }
  if (rc < 0) fprintf(stderr, "echo_actor: %s\n", ax_strerror(rc));
  ax_rt_free(rt); /* ends the actors left, and their connections */
  return rc < 0 ? 1 : 0;
}
