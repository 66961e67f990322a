/*
 * poll(2) event bits <-> axon readiness bits, shared by the poll and
 * io_uring backends (IORING_OP_POLL_ADD takes and returns poll bits).
 */
#ifndef AXON_POLLBITS_H
#define AXON_POLLBITS_H

#include <poll.h>

#include "loop/loop_int.h"

/* Interest: POLLRDHUP with reading, so a half-close is seen without a read. */
static inline unsigned ax__to_poll(uint32_t want) {
  unsigned ev = 0;
  if (want & AX_READABLE)
    ev |= POLLIN | POLLRDHUP;
  if (want & AX_WRITABLE)
    ev |= POLLOUT;
  return ev;
}

/* Readiness, masked by the interest; errors and hang-ups always pass. */
static inline uint32_t ax__from_poll(unsigned re, uint32_t want) {
  uint32_t r = 0;
  if (re & POLLIN)
    r |= AX_READABLE;
  if (re & POLLOUT)
    r |= AX_WRITABLE;
  if (re & POLLERR)
    r |= AX_ERROR;
  /* Readers learn about a hang-up by reading EOF. */
  if (re & (POLLHUP | POLLRDHUP))
    r |= AX_HANGUP | AX_READABLE;
  return r & ((want & (AX_READABLE | AX_WRITABLE)) | AX_ERROR | AX_HANGUP);
}

#endif /* AXON_POLLBITS_H */
