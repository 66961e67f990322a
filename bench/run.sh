#!/usr/bin/env bash
# Runs axon's benchmarks; called by `make bench [BENCH=name]`.
#   bash bench/run.sh <dir with the bench binaries> [NAME]
# NAME: timers_1m | timers_candidates | loop_iter | timers_10m (default: all,
# in that order). stdout carries only result lines:
#   bench=<name> impl=<impl> key=value ...
#   bench=<name> impl=axon_vs_<peer> key=<axon/peer> ...
# For every timers key (times, bytes, lateness) lower is better, so a ratio
# below 1 favours axon; for loop_iter's iters_per_s higher is better.
# Notes and errors go to stderr. Exits non-zero if any benchmark failed.
# Wall time on 2 cores: ~10 + 7 + 25 + 40 s; timers_10m cannot be shorter
# than 10 s per implementation (its largest timeout).
set -euo pipefail

dir=${1:?usage: run.sh BENCH_DIR [timers_1m|timers_candidates|loop_iter|timers_10m]}
only=${2:-}
all=(timers_1m timers_candidates loop_iter timers_10m)

for bin in timers loop_iter; do
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
