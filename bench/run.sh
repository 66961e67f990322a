#!/usr/bin/env bash
# Runs axon's benchmarks; called by `make bench [BENCH=name]`.
#   bash bench/run.sh <dir with the bench binaries> [NAME]
# NAME: timers_1m | timers_candidates | loop_iter | timers_10m |
#       xthread_throughput | xthread_fanin | xthread_pingpong_sleep |
#       xthread_pingpong_spin | mailbox_candidates | echo | sink | conn_scale |
#       actor_local_send | actor_xthread_throughput | actor_pingpong |
#       actor_ring | skynet | spawn_idle | echo_actor | http
# (default: all, in that order; mailbox_candidates prints both
# bench=mailbox_candidates and bench=mailbox_candidates_fanin lines;
# actor_pingpong prints bench=actor_pingpong and bench=actor_pingpong_spin;
# echo_actor and http run bench/echo_actor.sh and bench/http.sh, and are a
# note on stderr while those scripts are not there).
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
# Actors (bench/actor.c has the workloads; 3 reps, medians): ~1 + 6 + 25 +
# 1 + 1 + 1 s on an idle machine (actor_pingpong's sleeping round trips
# cost 30-40 us each when the other vCPU halts). Beside axon, the peers of /work/shared/peers/actors (same
# workloads, same sizes) where bench/Makefile could build them: impl=go
# (GOMAXPROCS=2), impl=erlang (+S 2:2), impl=caf (2 threads), one run each;
# a missing peer is a note on stderr. For actor_pingpong they are their
# cross-thread variants (go locked, erlang pingpong-bound, caf detached):
# axon's two actors are on two workers. Keys: ns_per_msg, wall_ms,
# ns_per_spawn, bytes_per_actor lower is better; msgs_per_s, rt_per_s,
# hops_per_s higher is better. actor_local_send has no peer.
set -euo pipefail

dir=${1:?usage: run.sh BENCH_DIR [NAME] (see the header for the names)}
only=${2:-}
all=(timers_1m timers_candidates loop_iter timers_10m
  xthread_throughput xthread_fanin xthread_pingpong_sleep
  xthread_pingpong_spin mailbox_candidates echo sink conn_scale
  actor_local_send actor_xthread_throughput actor_pingpong actor_ring skynet
  spawn_idle echo_actor http)

for bin in timers loop_iter xthread actor; do
  [[ -x $dir/$bin ]] || { echo "run.sh: $dir/$bin not built" >&2; exit 2; }
done

# peer_run PEER ARGS...: an actor peer's result line (workload=... result=OK),
# or a note on stderr and status 1 when it is not built or failed.
peer_run() {
  local peer=$1 line cmd
  shift
  case $peer in
  go) cmd=(env GOMAXPROCS=2 "$dir/go_bench") ;;
  erlang) cmd=(erl +S 2:2 +P 2097152 -noshell -noinput -pa "$dir" -run bench main) ;;
  caf) cmd=("$dir/caf_bench") ;;
  esac
  if [[ ! -x $dir/go_bench && $peer == go ]] ||
    [[ ! -x $dir/caf_bench && $peer == caf ]] ||
    [[ $peer == erlang && ( ! -f $dir/bench.beam || -z $(command -v erl) ) ]]; then
    echo "run.sh: actor peer $peer not built: skipped" >&2
    return 1
  fi
  line=$(timeout 300 "${cmd[@]}" "$@" 2>/dev/null | grep '^workload=' || true)
  if [[ $line != *result=OK* ]]; then
    echo "run.sh: actor peer $peer ($*) failed: ${line:-no output}" >&2
    return 1
  fi
  echo "$line"
}

# actor_bench NAME 'KEY=AWK_EXPR ...' 'PEER ARGS' ...: axon's lines, then per
# peer its figures (AWK_EXPR over the fields f["name"] of its line) and the
# ratios impl=axon_vs_PEER KEY=<axon / peer>. No spaces inside an AWK_EXPR.
actor_bench() {
  local name=$1 out line peer key expr pv av spec ke
  local -a specs args
  read -ra specs <<<"$2"
  shift 2
  out=$(timeout 900 "$dir/actor" -b "$name") || { printf '%s\n' "$out"; return 1; }
  printf '%s\n' "$out"
  for spec in "$@"; do
    read -ra args <<<"$spec"
    peer=${args[0]}
    line=$(peer_run "${args[@]}") || continue
    for ke in "${specs[@]}"; do
      key=${ke%%=*} expr=${ke#*=}
      pv=$(awk -v l="$line" 'BEGIN { n = split(l, a, " ");
        for (i = 1; i <= n; i++) { split(a[i], kv, "="); f[kv[1]] = kv[2] }
        printf "%.1f", '"$expr"' }')
      av=$(sed -n "s/^bench=$name impl=axon $key=//p" <<<"$out")
      echo "bench=$name impl=$peer $key=$pv"
      if [[ -n $av ]]; then
        awk -v a="$av" -v p="$pv" -v n="$name" -v q="$peer" -v k="$key" \
          'BEGIN { if (p > 0) printf "bench=%s impl=axon_vs_%s %s=%.3f\n", n, q, k, a / p }'
      fi
    done
  done
}

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
  actor_local_send) # 10,000,000 same-worker messages; no peer does this
    timeout 300 "$dir/actor" -b actor_local_send ;;
  actor_xthread_throughput) # worker 0 -> worker 1, 10,000,000 messages
    actor_bench actor_xthread_throughput 'msgs_per_s=f["msgs_per_s"]' \
      'go throughput 10000000' 'erlang throughput 10000000' \
      'caf throughput 10000000' ;;
  actor_pingpong) # 200,000 round trips across workers; then spinning, 1,000,000
    actor_bench actor_pingpong 'rt_per_s=f["rt_per_s"]' \
      'go pingpong 200000 locked' 'erlang pingpong-bound 200000' \
      'caf pingpong 200000 detached' ;;
  actor_ring) # 1,000 actors, 10,000,000 hops
    actor_bench actor_ring 'hops_per_s=f["hops_per_s"]' \
      'go ring 1000 10000000' 'erlang ring 1000 10000000' \
      'caf ring 1000 10000000' ;;
  skynet) # 1,000,000 leaves, fanout 10: 1,111,111 actors
    actor_bench skynet 'wall_ms=f["wall_s"]*1000' \
      'go skynet 1000000 10' 'erlang skynet 1000000 10' 'caf skynet 1000000 10' ;;
  spawn_idle) # 1,000,000 idle actors
    actor_bench spawn_idle \
      'ns_per_spawn=f["spawn_s"]*1e9/f["n"] bytes_per_actor=f["bytes_per_actor"]' \
      'go spawn-idle 1000000' 'erlang spawn-idle 1000000' 'caf spawn-idle 1000000' ;;
  echo_actor) # bench/echo_actor.sh, once it is there
    [[ -f $(dirname "$0")/echo_actor.sh ]] ||
      { echo "run.sh: bench/echo_actor.sh not present: echo_actor skipped" >&2; return 0; }
    timeout 900 bash "$(dirname "$0")/echo_actor.sh" "$dir" ;;
  http) # bench/http.sh, once it is there
    [[ -f $(dirname "$0")/http.sh ]] ||
      { echo "run.sh: bench/http.sh not present: http skipped" >&2; return 0; }
    timeout 600 bash "$(dirname "$0")/http.sh" "$dir/.." ;; # takes the build dir
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
