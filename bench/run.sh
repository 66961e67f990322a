#!/usr/bin/env bash
# Runs axon's benchmarks; called by `make bench [BENCH=name]`.
#   bash bench/run.sh <dir with the bench binaries> [NAME]
# NAME: timers_1m | timers_candidates | loop_iter | timers_10m |
#       xthread_throughput | xthread_fanin | xthread_pingpong_sleep |
#       xthread_pingpong_spin | mailbox_candidates | echo | sink | conn_scale
# (default: all, in that order; mailbox_candidates prints both
# bench=mailbox_candidates and bench=mailbox_candidates_fanin lines).
# stdout carries only result lines:
#   bench=<name> impl=<impl> key=value ...
#   bench=<name> impl=axon_vs_<peer> key=<axon/peer> ...
# (for mailbox_candidates too: impl=axon_vs_<candidate>).
# For every timers key (times, bytes, lateness) lower is better, so a ratio
# below 1 favours axon; for loop_iter's iters_per_s and the cross-thread
# msgs_per_s and rt_per_s higher is better; for rt_ns lower is better.
# Notes and errors go to stderr. Exits non-zero if any benchmark failed.
# Wall time on 2 cores: ~10 + 7 + 25 + 40 s; timers_10m cannot be shorter
# than 10 s per implementation (its largest timeout). Cross-thread, pinned
# to CPUs 0 and 1 (run them on an otherwise idle machine): ~12 + 15 + 20 +
# 8 + 30 s. xthread_pingpong_sleep runs 100,000 round trips (the binary's
# default is 200,000): a wake across the two vCPUs costs 10-25 us here.
# Network (bench/net.sh: server on CPU 0, tools/axload on CPU 1; its header
# has the protocol, the output and the knobs, e.g. NET_SHORT=1): echo ~6 min,
# sink ~1 min, conn_scale ~1 min.
set -euo pipefail

dir=${1:?usage: run.sh BENCH_DIR [NAME] (see the header for the names)}
only=${2:-}
all=(timers_1m timers_candidates loop_iter timers_10m
  xthread_throughput xthread_fanin xthread_pingpong_sleep
  xthread_pingpong_spin mailbox_candidates echo sink conn_scale)

for bin in timers loop_iter xthread; do
  [[ -x $dir/$bin ]] || { echo "run.sh: $dir/$bin not built" >&2; exit 2; }
done

run() { # run <name>: the standard sizes; each run is bounded by `timeout`
  case $1 in
  timers_1m) # 1,000,000 timers, 1..1000 ms, plus the cancel phase; 3 runs
    timeout 300 "$dir/timers" -b timers_1m -n 1000000 -c -r 3 axon libuv libev ;;
  timers_candidates) # axon's wheel against the 4-ary heap candidate
    timeout 300 "$dir/timers" -b timers_candidates -n 1000000 -c -r 3 axon heap4 ;;
  loop_iter) # 10,000,000 iterations per run, 3 interleaved runs
    timeout 300 "$dir/loop_iter" -n 10000000 -r 3 axon libuv libev ;;
  timers_10m) # libuv's million_timers: 10,000,000 timers, 1..10000 ms; 1 run
    timeout 600 "$dir/timers" -b timers_10m -n 10000000 axon libuv libev ;;
  xthread_throughput) # 1 producer -> 1 consumer loop, 10,000,000 messages
    timeout 200 "$dir/xthread" -b xthread_throughput -n 10000000 -r 3 \
      axon axon-post libuv ;;
  xthread_fanin) # 2 producers -> 1 consumer loop, 5,000,000 messages each
    timeout 200 "$dir/xthread" -b xthread_fanin -n 5000000 -r 3 \
      axon axon-post libuv ;;
  xthread_pingpong_sleep) # one message between two sleeping loops
    timeout 300 "$dir/xthread" -b xthread_pingpong_sleep -n 100000 -r 3 \
      axon libuv ;;
  xthread_pingpong_spin) # the same with spin_ns=50000 on both loops
    timeout 200 "$dir/xthread" -b xthread_pingpong_spin -n 1000000 -s 50000 \
      -r 3 axon ck_ring-spin ;;
  mailbox_candidates) # no loop: 10,000,000 messages 1->1, then 2 x 5,000,000;
    # a run still going after 3 s stops and counts what arrived (axon-ring's
    # fan-in: its ordered commit convoys when both producers share a CPU)
    timeout 300 "$dir/xthread" -b mailbox_candidates -n 10000000 -d 3 -r 3 \
      axon axon-exchange axon-ring axon-stack ;;
  echo | sink | conn_scale) # servers vs tools/axload; bounded inside net.sh
    timeout 900 bash "$(dirname "$0")/net.sh" "$dir" "$1" ;;
  *)
    echo "run.sh: unknown benchmark '$1' (known: ${all[*]})" >&2
    return 2 ;;
  esac
}

if [[ -n $only ]]; then
  list=("$only")
else
  list=("${all[@]}")
fi

status=0
for b in "${list[@]}"; do
  start=$SECONDS
  if run "$b"; then
    echo "run.sh: $b done in $((SECONDS - start)) s" >&2
  else
    rc=$?
    echo "run.sh: $b FAILED (exit $rc)" >&2
    status=1
  fi
done
exit $status
