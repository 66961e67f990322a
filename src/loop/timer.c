/*
 * Monotonic timers on a hierarchical timing wheel with 1 ms ticks.
 *
 * Why a wheel: start and stop are O(1) list operations on the timer itself
 * (no array to grow, no sift), which a heap cannot match for cancel-heavy
 * workloads (timeouts that rarely fire); bench/timers_candidates measures the
 * wheel against a 4-ary heap on the same workload (see the README).
 *
 * Layout: 6 levels of 256 slots; level k slot s holds timers whose deadline D
 * differs from the wheel time T first in the 8-bit digit k, with digit k of D
 * equal to s. Invariant (checked by ax__wheel_verify): for every linked timer
 * level_of(D, T) is its level, i.e. D's digits above its level equal T's, so
 * D lies in a later level-k block than T but the same level-(k+1) block.
 * Consequences:
 *  - every timer of level j < k is due before every timer of level k, so the
 *    earliest deadline is in the lowest non-empty level, first set bit;
 *  - when T enters a level-k block, the timers of that slot move down
 *    (cascade) — each timer moves at most once per level, in deadline order
 *    for equal deadlines (FIFO), so timers due together fire in start order.
 * Why 8-bit digits, not 6: a cascade moves one slot's timers at once, and
 * its cost delays the timers due at that moment. With 6-bit digits a level-2
 * slot spans 4096 ms; 10 M timers spread over 10 s put ~4 M timers in one
 * slot and a ~100 ms stall every 4 s (measured by bench/timers_10m). With 8
 * bits a level-1 slot spans 256 ms, so the same load cascades ~256 k timers
 * at a time, and a 10 s timer moves once instead of twice. The price is
 * 24 KiB of slot heads per loop. A bitmap per level finds non-empty slots.
 *
 * Known cost, left as is: when the wheel time crosses a level-2 boundary
 * (every 65.5 s) every timer due in the next 65.5 s block that was started
 * before the crossing cascades at once — with 10 M timers spread over 10 s,
 * a one-off ~70 ms delay if the boundary falls inside the run. Placing
 * timers by distance (D - T) instead of by digit bounds every cascade to
 * 256 ms of deadlines, but breaks the "equal deadlines fire in start order"
 * guarantee (tried: the model test catches it); keeping both needs a start
 * sequence in each timer (64 instead of 56 bytes).
 */
#include <assert.h>
#include <string.h>

#include "loop/loop_int.h"

#define POS_NONE 0xfffeu /* not linked: inactive or being fired */
#define MASK (AX__WHEEL_SLOTS - 1u)

static void bit_set(uint64_t *bm, unsigned slot) {
  bm[slot / 64] |= UINT64_C(1) << (slot % 64);
}
static void bit_clear(uint64_t *bm, unsigned slot) {
  bm[slot / 64] &= ~(UINT64_C(1) << (slot % 64));
}
static bool bit_test(const uint64_t *bm, unsigned slot) {
  return (bm[slot / 64] >> (slot % 64)) & 1u;
}
/* Lowest set slot, or -1. */
static int bit_first(const uint64_t *bm) {
  for (unsigned i = 0; i < AX__WHEEL_WORDS; i++)
    if (bm[i])
      return (int)(i * 64 + (unsigned)__builtin_ctzll(bm[i]));
  return -1;
}

static unsigned level_of(uint64_t deadline, uint64_t now) {
  uint64_t x = deadline ^ now; /* deadline > now, so x != 0 */
  return (unsigned)(63 - __builtin_clzll(x)) / AX__WHEEL_BITS;
}

static struct ax__timer *timer_of(struct ax__list *l) {
  return ax__container_of(l, struct ax__timer, link);
}

void ax__wheel_init(struct ax__wheel *w, uint64_t now) {
  memset(w, 0, sizeof *w);
  w->time = now;
  for (unsigned l = 0; l < AX__WHEEL_LEVELS; l++)
    for (unsigned s = 0; s < AX__WHEEL_SLOTS; s++)
      ax__list_init(&w->slot[l][s]);
  ax__list_init(&w->due);
}

/* Place a timer by its deadline relative to the wheel time (count unchanged). */
static void wheel_place(struct ax__wheel *w, struct ax__timer *t) {
  if (t->deadline <= w->time) {
    ax__list_append(&w->due, &t->link);
    t->h.pos = AX__POS_DUE;
    return;
  }
  /* Clamp to the wheel's span (about 4,000 years or more). */
  if ((t->deadline ^ w->time) > AX__WHEEL_MAX)
    t->deadline = w->time | AX__WHEEL_MAX;
  unsigned lvl = level_of(t->deadline, w->time);
  unsigned slot = (unsigned)(t->deadline >> (lvl * AX__WHEEL_BITS)) & MASK;
  ax__list_append(&w->slot[lvl][slot], &t->link);
  bit_set(w->bitmap[lvl], slot);
  t->h.pos = (uint16_t)(lvl << 8 | slot);
}

void ax__timer_link(ax_loop_t *loop, struct ax__timer *t) {
  wheel_place(&loop->wheel, t);
  loop->wheel.count++;
}

void ax__timer_unlink(ax_loop_t *loop, struct ax__timer *t) {
  struct ax__wheel *w = &loop->wheel;
  t->h.flags &= (uint8_t)~AX__F_FIRED; /* "callback touched it" */
  if (t->h.pos == POS_NONE)
    return;
  ax__list_unlink(&t->link);
  if (t->h.pos != AX__POS_DUE) {
    unsigned lvl = t->h.pos >> 8, slot = t->h.pos & 0xffu;
    if (ax__list_empty(&w->slot[lvl][slot]))
      bit_clear(w->bitmap[lvl], slot);
  }
  t->h.pos = POS_NONE;
  w->count--;
}

/* Empty the slots of @lvl entered when its digit goes from a to b (a < b)
 * into @todo, in the order they are entered. */
static void take_entered(struct ax__wheel *w, unsigned lvl, uint64_t a, uint64_t b,
                         struct ax__list *todo) {
  uint64_t n = b - a < AX__WHEEL_SLOTS ? b - a : AX__WHEEL_SLOTS;
  for (uint64_t i = 1; i <= n; i++) {
    unsigned slot = (unsigned)(a + i) & MASK;
    if (bit_test(w->bitmap[lvl], slot)) {
      ax__list_splice(todo, &w->slot[lvl][slot]);
      bit_clear(w->bitmap[lvl], slot);
    }
  }
}

/* Stable merge sort of the due list by deadline; needed only after a jump
 * that expired timers from several slots at once. */
static struct ax__list *merge_sort(struct ax__list *head, size_t n) {
  if (n <= 1) {
    if (head)
      head->next = NULL;
    return head;
  }
  struct ax__list *mid = head;
  for (size_t i = 1; i < n / 2; i++)
    mid = mid->next;
  struct ax__list *right = mid->next;
  mid->next = NULL;
  struct ax__list *a = merge_sort(head, n / 2), *b = merge_sort(right, n - n / 2);
  struct ax__list out, *tail = &out;
  while (a && b) {
    struct ax__list **take = timer_of(b)->deadline < timer_of(a)->deadline ? &b : &a;
    tail->next = *take;
    tail = *take;
    *take = (*take)->next;
  }
  tail->next = a ? a : b;
  return out.next;
}

static void sort_due(struct ax__list *due) {
  size_t n = 0;
  bool sorted = true;
  for (struct ax__list *l = due->next; l != due; l = l->next, n++)
    if (l->next != due && timer_of(l->next)->deadline < timer_of(l)->deadline)
      sorted = false;
  if (sorted)
    return;
  due->prev->next = NULL;
  struct ax__list *prev = due;
  due->next = merge_sort(due->next, n);
  for (struct ax__list *l = due->next; l; prev = l, l = l->next)
    l->prev = prev;
  prev->next = due;
  due->prev = prev;
}

/*
 * Move the wheel time to @now: every slot entered on the way is emptied and
 * its timers re-placed, which moves them down a level or into the due list.
 */
static void wheel_advance(struct ax__wheel *w, uint64_t now) {
  if (now <= w->time)
    return;
  struct ax__list todo;
  ax__list_init(&todo);
  for (unsigned lvl = 0; lvl < AX__WHEEL_LEVELS; lvl++) {
    unsigned shift = lvl * AX__WHEEL_BITS;
    uint64_t a = w->time >> shift, b = now >> shift;
    if (a == b)
      break; /* higher digits did not change either */
    take_entered(w, lvl, a, b, &todo);
  }
  w->time = now;
  while (!ax__list_empty(&todo)) {
    struct ax__list *l = todo.next;
    ax__list_unlink(l);
    wheel_place(w, timer_of(l));
  }
  sort_due(&w->due);
}

int64_t ax__timers_next(const ax_loop_t *loop) {
  const struct ax__wheel *w = &loop->wheel;
  if (!ax__list_empty(&w->due))
    return 0;
  for (unsigned lvl = 0; lvl < AX__WHEEL_LEVELS; lvl++) {
    int first = bit_first(w->bitmap[lvl]);
    if (first < 0)
      continue;
    unsigned shift = lvl * AX__WHEEL_BITS;
    uint64_t slot = (uint64_t)first;
    uint64_t block = (w->time >> (shift + AX__WHEEL_BITS)) << (shift + AX__WHEEL_BITS);
    uint64_t at = block | slot << shift; /* exact on level 0, else a lower bound */
    return at > loop->now ? (int64_t)(at - loop->now) : 0;
  }
  return -1;
}

/* ---- firing ------------------------------------------------------------- */

static void timer_rearm(ax_loop_t *loop, struct ax__timer *t, uint64_t deadline) {
  t->deadline = deadline;
  if (t->h.kind == AX_SOURCE_TIMER)
    ax__timer_link(loop, t);
  else
    ax__date_link(loop, t);
}

/*
 * The FIRED flag marks "fired, untouched": ax_timer_start, ax_date_start,
 * stop and free clear it, so after the callback we know whether to apply its
 * return value or leave the source as the callback set it.
 */
void ax__timer_fire(ax_loop_t *loop, struct ax__timer *t) {
  t->h.flags |= AX__F_FIRED;
  loop->stats.timers_fired++;
  int64_t again = ((ax_timer_cb)t->h.cb)(&t->h, t->h.data);
  if (!(t->h.flags & AX__F_FIRED))
    return;
  t->h.flags &= (uint8_t)~AX__F_FIRED;
  bool date = t->h.kind == AX_SOURCE_DATE;
  uint64_t base = date ? (uint64_t)ax_realtime_ms(loop) : loop->now;
  if (again >= 0) {
    timer_rearm(loop, t, base + (uint64_t)again);
  } else if (t->h.aux) {
    /* No drift and no burst after a stall (libev's rule). */
    uint64_t next = t->deadline + t->h.aux;
    timer_rearm(loop, t, next > base ? next : base);
  } else {
    ax__source_deactivate(&t->h);
  }
}

void ax__timers_run(ax_loop_t *loop) {
  struct ax__wheel *w = &loop->wheel;
  wheel_advance(w, loop->now);
  if (ax__list_empty(&w->due))
    return;
  /* Fire from a private list: timers re-armed for "now" by their callbacks
   * land in w->due and fire in the next iteration, not in this loop. */
  struct ax__list firing;
  ax__list_init(&firing);
  ax__list_splice(&firing, &w->due);
  w->firing = &firing;
  while (!ax__list_empty(&firing)) {
    struct ax__timer *t = timer_of(firing.next);
    ax__list_unlink(&t->link);
    t->h.pos = POS_NONE;
    w->count--;
    ax__timer_fire(loop, t);
  }
  w->firing = NULL;
}

/* ---- public ------------------------------------------------------------- */

int ax_timer_new(ax_loop_t *loop, ax_timer_cb cb, void *data,
                 ax_source_t **out) {
  int rc = ax__source_new(loop, AX_SOURCE_TIMER, (void (*)(void))cb, data, out);
  if (rc == 0)
    (*out)->pos = POS_NONE;
  return rc;
}

int ax_timer_start(ax_source_t *src, uint64_t timeout_ms, uint64_t repeat_ms) {
  int rc = ax__source_check(src, AX_SOURCE_TIMER);
  if (rc)
    return rc;
  if (repeat_ms > UINT32_MAX)
    return -ERANGE;
  ax_loop_t *loop = src->loop;
  struct ax__timer *t = (struct ax__timer *)src;
  ax__timer_unlink(loop, t);
  t->h.aux = (uint32_t)repeat_ms;
  t->deadline = timeout_ms > UINT64_MAX - loop->now ? UINT64_MAX : loop->now + timeout_ms;
  ax__timer_link(loop, t);
  ax__source_activate(src);
  return 0;
}

int ax_timer_due_in(const ax_source_t *src, uint64_t *ms) {
  if (!src || !ms || (src->flags & AX__F_CLOSING))
    return -EINVAL;
  if (src->kind != AX_SOURCE_TIMER && src->kind != AX_SOURCE_DATE)
    return AX_EKIND;
  if (!(src->flags & AX__F_ACTIVE))
    return -EINVAL;
  const struct ax__timer *t = (const struct ax__timer *)src;
  uint64_t now = src->kind == AX_SOURCE_TIMER ? src->loop->now
                                              : (uint64_t)ax_realtime_ms(src->loop);
  *ms = t->deadline > now ? t->deadline - now : 0;
  return 0;
}

/* ---- verification ------------------------------------------------------- */

static int verify_list(const struct ax__list *head, const char *what, char *why,
                       size_t len, size_t *n) {
  const struct ax__list *l = head;
  do {
    if (l->next->prev != l)
      return ax__corrupt(why, len, "%s: broken link after node %p", what, (void *)l);
    l = l->next;
    if (l != head)
      ++*n;
    if (*n > (size_t)1 << 40)
      return ax__corrupt(why, len, "%s: list does not close", what);
  } while (l != head);
  return 0;
}

static int verify_timer(const struct ax__wheel *w, const struct ax__timer *t,
                        unsigned lvl, unsigned slot, char *why, size_t len) {
  if (t->h.kind != AX_SOURCE_TIMER || !(t->h.flags & AX__F_ACTIVE))
    return ax__corrupt(why, len, "timer %p in wheel is not an active timer", (void *)t);
  if (t->h.pos != (lvl << 8 | slot))
    return ax__corrupt(why, len, "timer %p: pos %#x, found at level %u slot %u",
                       (void *)t, t->h.pos, lvl, slot);
  if (t->deadline <= w->time || level_of(t->deadline, w->time) != lvl ||
      ((t->deadline >> (lvl * AX__WHEEL_BITS)) & MASK) != slot)
    return ax__corrupt(why, len,
                       "timer %p: deadline %llu misplaced at level %u slot %u "
                       "(wheel time %llu)",
                       (void *)t, (unsigned long long)t->deadline, lvl, slot,
                       (unsigned long long)w->time);
  return 0;
}

static int verify_due(const struct ax__wheel *w, const struct ax__list *head,
                      char *why, size_t len, size_t *n) {
  int rc = verify_list(head, "due list", why, len, n);
  uint64_t prev = 0;
  for (const struct ax__list *l = head->next; !rc && l != head; l = l->next) {
    const struct ax__timer *t = ax__container_of(l, const struct ax__timer, link);
    if (t->h.pos != AX__POS_DUE || t->deadline > w->time)
      rc = ax__corrupt(why, len, "due timer %p: pos %#x deadline %llu > time %llu",
                       (void *)t, t->h.pos, (unsigned long long)t->deadline,
                       (unsigned long long)w->time);
    else if (head == &w->due && t->deadline < prev)
      rc = ax__corrupt(why, len, "due list out of deadline order at %p", (void *)t);
    prev = t->deadline;
  }
  return rc;
}

int ax__wheel_verify(const ax_loop_t *loop, char *why, size_t len) {
  const struct ax__wheel *w = &loop->wheel;
  size_t n = 0;
  int rc = verify_due(w, &w->due, why, len, &n);
  if (!rc && w->firing)
    rc = verify_due(w, w->firing, why, len, &n);
  for (unsigned lvl = 0; !rc && lvl < AX__WHEEL_LEVELS; lvl++) {
    for (unsigned s = 0; !rc && s < AX__WHEEL_SLOTS; s++) {
      const struct ax__list *head = &w->slot[lvl][s];
      bool bit = bit_test(w->bitmap[lvl], s);
      if (bit == ax__list_empty(head))
        return ax__corrupt(why, len, "level %u slot %u: bitmap bit %d, list %s",
                           lvl, s, bit, bit ? "empty" : "not empty");
      rc = verify_list(head, "wheel slot", why, len, &n);
      for (const struct ax__list *l = head->next; !rc && l != head; l = l->next)
        rc = verify_timer(w, ax__container_of(l, const struct ax__timer, link),
                          lvl, s, why, len);
    }
  }
  if (!rc && n != w->count)
    rc = ax__corrupt(why, len, "wheel count %zu, %zu timers linked", w->count, n);
  return rc;
}
