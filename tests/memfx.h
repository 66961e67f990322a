/*
 * A loop fixture with a counting allocator that can fail allocation number
 * N: shared by test_buf.c and test_filter.c. fx_teardown fails a test that
 * leaves any block behind, in its loop or after ax_loop_free.
 */
#ifndef AXON_TEST_MEMFX_H
#define AXON_TEST_MEMFX_H

#include <stdio.h>
#include <stdlib.h>

#include <axon/axon.h>

static struct {
  long live;    /* blocks allocated and not freed */
  long n;       /* allocations while failure injection is on */
  long fail_at; /* fail allocation number fail_at (-1: none) */
} mem = {0, 0, -1};

static void *c_malloc(size_t size, void *ctx) {
  (void)ctx;
  if (mem.fail_at >= 0 && mem.n++ == mem.fail_at)
    return NULL;
  void *p = malloc(size);
  mem.live += p != NULL;
  return p;
}

static void *c_realloc(void *p, size_t size, void *ctx) {
  (void)ctx;
  if (mem.fail_at >= 0 && mem.n++ == mem.fail_at)
    return NULL;
  return realloc(p, size);
}

static void c_free(void *p, void *ctx) {
  (void)ctx;
  mem.live--;
  free(p);
}

static const ax_allocator_t counting = {c_malloc, c_realloc, c_free, NULL};

typedef struct fx {
  ax_loop_t *loop;
  long base; /* live blocks of the loop itself */
} fx_t;

static int fx_setup(void **state) {
  static fx_t fx;
  ax_loop_options_t o;
  ax_loop_options_init(&o);
  o.allocator = &counting;
  mem.fail_at = -1;
  if (ax_loop_new(&o, &fx.loop) != 0)
    return -1;
  fx.base = mem.live;
  *state = &fx;
  return 0;
}

static int fx_teardown(void **state) {
  fx_t *fx = *state;
  mem.fail_at = -1;
  long leaked = mem.live - fx->base;
  ax_loop_free(fx->loop);
  if (leaked != 0 || mem.live != 0) {
    fprintf(stderr, "leak: %ld blocks after the test, %ld after the loop\n",
            leaked, mem.live);
    mem.live = 0; /* do not blame the next test */
    return -1;
  }
  return 0;
}

/* Every block the test allocated is back. */
static void assert_balanced(const fx_t *fx) {
  assert_int_equal(mem.live, fx->base);
}

#endif /* AXON_TEST_MEMFX_H */
