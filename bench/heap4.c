/*
 * heap4 — 4-ary min-heap of timers; see heap4.h.
 *
 * Layout (libev's): entries live at a[3 .. 3+n). The children of node k are
 * a[4k-8 .. 4k-5] and its parent is a[k/4 + 2]; with 16-byte entries and a
 * 64-byte aligned array, each group of four siblings is one cache line, so a
 * sift-down step costs one line for the children plus one write. The three
 * unused slots in front of the root are the price of that alignment.
 */
#include "heap4.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROOT HEAP4_ROOT
#define SLACK 3 /* extra entries so the array can be shifted into alignment */

static size_t parent_of(size_t k) { return k / 4 + 2; }
static size_t first_child(size_t k) { return 4 * k - 8; }

/* Place @he at a[k] and tell its timer where it is. */
static void put(struct heap4_entry *a, size_t k, struct heap4_entry he) {
  a[k] = he;
  he.timer->index = k;
}

static void sift_up(struct heap4_entry *a, size_t k) {
  struct heap4_entry he = a[k];
  while (k > ROOT) {
    size_t p = parent_of(k);
    if (a[p].deadline <= he.deadline)
      break;
    put(a, k, a[p]);
    k = p;
  }
  put(a, k, he);
}

/* Index of the earliest child of k, or 0 if k is a leaf. The common case
 * (four children) is unrolled, as in libev. */
static size_t min_child(const struct heap4_entry *a, size_t end, size_t k) {
  size_t c = first_child(k), m = c;
  if (c + 3 < end) {
    if (a[c + 1].deadline < a[m].deadline)
      m = c + 1;
    if (a[c + 2].deadline < a[m].deadline)
      m = c + 2;
    if (a[c + 3].deadline < a[m].deadline)
      m = c + 3;
    return m;
  }
  if (c >= end)
    return 0;
  for (size_t j = c + 1; j < end; j++)
    if (a[j].deadline < a[m].deadline)
      m = j;
  return m;
}

static void sift_down(struct heap4_entry *a, size_t end, size_t k) {
  struct heap4_entry he = a[k];
  for (;;) {
    size_t m = min_child(a, end, k);
    if (m == 0 || a[m].deadline >= he.deadline)
      break;
    put(a, k, a[m]);
    k = m;
  }
  put(a, k, he);
}

/* Restore the order around a[k] after its deadline changed. */
static void adjust(struct heap4_entry *a, size_t end, size_t k) {
  if (k > ROOT && a[k].deadline < a[parent_of(k)].deadline)
    sift_up(a, k);
  else
    sift_down(a, end, k);
}

static void remove_at(heap4_t *h, size_t k) {
  size_t last = ROOT + --h->n;
  h->a[k].timer->index = 0;
  if (k != last) {
    h->a[k] = h->a[last];
    adjust(h->a, last, k);
  }
}

/* Double the capacity. realloc keeps large arrays in place or moves them
 * with mremap (no copy, no transient doubling of RSS); if the new block's
 * alignment differs from the old one's, shift the entries to match. */
static int grow(heap4_t *h) {
  size_t cap = h->cap ? 2 * h->cap : 64;
  size_t old_shift = h->raw ? (size_t)(h->a - h->raw) : 0;
  struct heap4_entry *raw =
      realloc(h->raw, (cap + ROOT + SLACK) * sizeof(struct heap4_entry));
  if (raw == NULL)
    return -ENOMEM;
  size_t mis = (uintptr_t)raw & 63, shift = 0;
  if (mis % sizeof(struct heap4_entry) == 0)
    shift = ((64 - mis) & 63) / sizeof(struct heap4_entry);
  if (shift != old_shift)
    memmove(raw + shift, raw + old_shift,
            (ROOT + h->n) * sizeof(struct heap4_entry));
  h->raw = raw;
  h->a = raw + shift;
  h->cap = cap;
  return 0;
}

void heap4_init(heap4_t *h, uint64_t now) {
  memset(h, 0, sizeof(*h));
  h->now = now;
}

void heap4_fini(heap4_t *h) {
  free(h->raw);
  memset(h, 0, sizeof(*h));
}

void heap4_timer_init(heap4_timer_t *t, heap4_cb cb, void *data) {
  t->cb = cb;
  t->data = data;
  t->index = 0;
}

int heap4_start(heap4_t *h, heap4_timer_t *t, uint64_t timeout_ms) {
  uint64_t d = h->now + timeout_ms;
  if (d < h->now)
    d = UINT64_MAX; /* saturate instead of wrapping into the past */
  if (t->index != 0) {
    h->a[t->index].deadline = d;
    adjust(h->a, ROOT + h->n, t->index);
    return 0;
  }
  if (h->n == h->cap && grow(h) != 0)
    return -ENOMEM;
  size_t k = ROOT + h->n++;
  h->a[k].deadline = d;
  h->a[k].timer = t;
  sift_up(h->a, k);
  return 0;
}

void heap4_stop(heap4_t *h, heap4_timer_t *t) {
  if (t->index != 0)
    remove_at(h, t->index);
}

size_t heap4_run(heap4_t *h, uint64_t now) {
  size_t fired = 0;
  h->now = now;
  while (h->n != 0 && h->a[ROOT].deadline <= now) {
    heap4_timer_t *t = h->a[ROOT].timer;
    remove_at(h, ROOT);
    t->cb(t, t->data);
    fired++;
  }
  return fired;
}

int64_t heap4_timeout(const heap4_t *h, uint64_t now) {
  if (h->n == 0)
    return -1;
  uint64_t d = h->a[ROOT].deadline;
  if (d <= now)
    return 0;
  return d - now > INT64_MAX ? INT64_MAX : (int64_t)(d - now);
}

int heap4_verify(const heap4_t *h, char *why, size_t why_len) {
  size_t end = ROOT + h->n;
  for (size_t k = ROOT; k < end; k++) {
    if (h->a[k].timer == NULL || h->a[k].timer->index != k) {
      snprintf(why, why_len, "entry %zu: node index does not match", k);
      return -1;
    }
    if (k > ROOT && h->a[parent_of(k)].deadline > h->a[k].deadline) {
      snprintf(why, why_len, "entry %zu: deadline before its parent's", k);
      return -1;
    }
  }
  return 0;
}
