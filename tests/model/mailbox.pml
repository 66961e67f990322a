/*
 * axon — a Promela model of the mailbox's sleep/wake protocol (the "Wake
 * protocol" paragraph of include/axon/mailbox.h), checked with spin by
 * tests/test_model.c in `make test`.
 *
 * What is modelled: NPROD producers each push K messages; one consumer
 * drains, announces sleep, re-checks, blocks on its wake source (an eventfd
 * counter) and finishes the sleep. Each shared access is one Promela step, so
 * spin explores every interleaving of them; d_step is used only where the C
 * code is one atomic instruction (the exchange on the tail, a swap of
 * `sleeping`, the eventfd read) or to reset dead locals and update ghost
 * counters inside such a step. Interleaving steps is sequentially consistent
 * execution, which is what the protocol's full fences buy (Dekker's
 * pattern): without them a store could be delayed past the next load, which
 * is what the BUG mutant below models explicitly.
 *
 * Checked (spin -a; cc -DSAFETY pan.c; ./pan):
 *   1. no invalid end state: the consumer's blocking wait has no `end`
 *      label, and the consumer only blocks while messages are still to come,
 *      so a consumer blocked once every producer has finished (a lost wake:
 *      a message pushed and never consumed) is reported;
 *   2. at its end the consumer has consumed exactly NPROD*K messages;
 *   3. at most one wake per sleep: a counter of the wakes claimed for the
 *      current announcement, reset at each announcement, never exceeds 1.
 *      (Summed over announcements: wakes sent <= sleeps announced.)
 *
 * Mutants (spin -DNAME -a mailbox.pml), each must make spin report an error:
 *   BUG            the producer reads `sleeping` BEFORE its exchange on the
 *                  tail (the classic lost wakeup; also what a missing fence
 *                  allows): invalid end state, the consumer blocks forever.
 *   BUG_NO_RECHECK the consumer blocks right after announcing, without the
 *                  re-check: invalid end state.
 *   BUG_NO_CLAIM   a producer that sees sleeping == 1 wakes without winning
 *                  the swap: two producers wake one sleep, assertion 3.
 *
 * The state space is finite (every counter is bounded by NPROD*K, dead
 * locals are reset), so the check terminates. Its size grows fast: NPROD=3,
 * K=2 is about 1.4 million states, NPROD=3, K=3 about 12 million.
 */

#ifndef NPROD
#define NPROD 3                 /* producer threads */
#endif
#ifndef K
#define K 2                     /* messages each producer pushes */
#endif
#define TOTAL (NPROD * K)

/* ---- shared state of the mailbox ------------------------------------- */

byte pushed = 0;      /* nodes whose exchange on the tail has happened */
bit  linked[TOTAL];   /* node i (exchange order) linked: prev->next = node */
byte popped = 0;      /* nodes the consumer popped (written by it only) */
bit  sleeping = 0;    /* mb->sleeping: the consumer announced a sleep */
byte efd = 0;         /* the consumer's wake source: an eventfd counter */

/* ---- ghost state for property 3 (no counterpart in the C code) -------- */

byte claims = 0;      /* wakes claimed for the current announcement */

/* ---- producer: ax_mailbox_push() and the wake function it calls -------- */

active [NPROD] proctype producer()
{
  byte k = 0;         /* messages pushed so far */
  byte me = 0;        /* index of this push's node in exchange order */
  bit s = 0;          /* the value of sleeping this producer saw */

  do
  :: k < K ->
#ifdef BUG
    s = sleeping;                  /* BUG: load sleeping before publishing */
#endif
    /* prev = ck_pr_fas_ptr(&mb->tail, node): the node is published, the
     * consumer's ax_mailbox_empty() is false from here on */
    d_step { me = pushed; pushed++; k++ }
    /* ck_pr_store_ptr(&prev->next, node): ax_mailbox_pop() can reach it
     * (me = 0: the local is dead now; reset so states compare equal) */
    d_step { linked[me] = 1; me = 0 }
    /* ck_pr_fence_atomic_load() after the exchange (maybe_wake): the
     * publication is ordered before the load below */
#ifndef BUG
    s = sleeping;                  /* ck_pr_load_uint(&mb->sleeping) */
#endif
    if
    :: s == 1 ->
#ifdef BUG_NO_CLAIM
      /* BUG_NO_CLAIM: wake on the plain load, without the swap */
      d_step { claims++; assert(claims <= 1) }
#else
      /* s = ck_pr_fas_uint(&mb->sleeping, 0): try to claim the sleep. The
       * ghost counter is updated in the same atomic step, so a claim is
       * charged to the very announcement it swapped away (the write to
       * the eventfd may come later, after the consumer announced again) */
      d_step {
        s = sleeping; sleeping = 0;
        if
        :: s == 1 -> claims++; assert(claims <= 1)
        :: else -> skip
        fi
      }
#endif
      if
      :: s == 1 -> d_step { efd++; s = 0 }  /* wake(ctx): write(efd, 1) */
      :: else -> skip              /* the consumer withdrew, or another
                                      producer claimed this sleep */
      fi
    :: else -> skip                /* consumer awake: no system call */
    fi
  :: else -> break
  od
}

/* ---- consumer: the loop around pop / sleep_prepare / sleep_finish ------ */

active proctype consumer()
{
  do
  :: /* drain: while ((n = ax_mailbox_pop(mb)) != NULL) handle(n);
      * pop returns the oldest node once it is linked, NULL otherwise (the
      * mailbox is empty, or the oldest node's producer is between its
      * exchange and its link: see Progress in mailbox.h) */
    do
    :: popped < TOTAL && linked[popped] -> popped++
    :: else -> break
    od;
    /* model only: stop once every message of every producer has been
     * consumed (the real consumer runs forever). So the consumer below
     * only ever blocks while a message is still to come. */
    if
    :: popped == TOTAL -> break
    :: else -> skip
    fi;
    /* ax_mailbox_sleep_prepare(): ck_pr_fas_uint(&mb->sleeping, 1);
     * ck_pr_fence_atomic_load(). claims = 0: a new sleep (ghost) */
    d_step { sleeping = 1; claims = 0 }
#ifndef BUG_NO_RECHECK
    if
    :: popped < pushed ->
      /* the re-check: !ax_mailbox_empty(mb), a node slipped in. Withdraw
       * with ck_pr_fas_uint(&mb->sleeping, 0) and drain again; sleep_prepare
       * returns -EAGAIN. (Had a producer claimed the sleep already, the swap
       * returns 0 and its wake still arrives: the next blocking wait returns
       * at once, harmlessly. The result is not needed here.) */
      sleeping = 0
    :: else ->
#endif
      /* sleep_prepare returned 0: block in read(efd) until efd > 0, which
       * resets it. No `end` label: a consumer stuck here is an invalid end
       * state */
      d_step { efd > 0 -> efd = 0 }
      /* ax_mailbox_sleep_finish(): ck_pr_fas_uint(&mb->sleeping, 0) (its
       * result, whether a producer claimed this sleep, is not needed) */
      sleeping = 0
#ifndef BUG_NO_RECHECK
    fi
#endif
  od;
  assert(popped == TOTAL && pushed == TOTAL)
}
