/*
 * axon — a message-passing actor runtime for C11 on per-thread event loops.
 * Include this one header to get the whole public API.
 */
#ifndef AXON_AXON_H
#define AXON_AXON_H

#include <axon/version.h>
#include <axon/error.h>
#include <axon/mailbox.h>
#include <axon/loop.h>
#include <axon/buf.h>
#include <axon/proactor.h>
#include <axon/actor.h>

#endif /* AXON_AXON_H */
