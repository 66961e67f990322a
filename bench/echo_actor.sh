#!/usr/bin/env bash
# The echo_actor benchmark: bench/net.sh's echo workload through
# examples/echo_actor (acceptor + one actor per connection, 2 workers)
# against examples/echo_proactor (one loop) and the libuv echo server,
# loaded by tools/axload.
#   bash bench/echo_actor.sh <dir with the bench binaries>
# (the build directory is its parent: tools/axload and examples/ are there;
# echo_uv is built by `make bench`).
#
# Protocol (net.sh's): the server pinned to $SERVER_CPUS (default
# $SERVER_CPU, 0: echo_actor's 2 workers then share that CPU with each
# other, as the single-loop servers have it alone; set SERVER_CPUS=0,2 on a
# machine with a third CPU to give them one each), axload to $CLIENT_CPU (1);
# one server at a time, started for one axload run and stopped by its pid
# (SIGTERM, SIGKILL after 3 s), its port from its "listening on" line. Each
# pair holds $NET_LOCK (/tmp/bench.lock) so it overlaps no other benchmark
# that honours the lock. For C in $NET_CONNS (100 1000) and each impl:
# axload -m echo -s 64 -p 1 -c C -r 0 -w $NET_WARM -d $NET_SECS; $NET_ROUNDS
# (3) rounds, the impls interleaved in each round, the order rotating by one
# every round. Medians of rps and p99_us.
#
# Output (stdout, nothing else):
#   bench=echo_actor impl=<axon-actor|axon-proactor|libuv> conns=C rps=<median> p99_us=<median>
#   bench=echo_actor impl=axon-actor_vs_<peer> conns=C rps=<a/b> p99_us=<a/b>
# rps: higher is better (a ratio > 1 favours echo_actor); p99_us: lower is
# better. Notes go to stderr, server output to the log directory it names.
# Exit status non-zero if any run failed (left out of the medians).
#
# Knobs (environment): NET_ROUNDS (3) NET_CONNS ("100 1000") NET_WARM (1)
# NET_SECS (5) NET_LOCK (/tmp/bench.lock; "" for none) SERVER_CPU (0)
# SERVER_CPUS CLIENT_CPU (1) ACTOR_WORKERS (2).
# Wall time: 2 x 3 x 3 runs of ~7.5 s = ~2.5 min (NET_SECS=2: ~1.2 min).
set -euo pipefail

dir=${1:?usage: echo_actor.sh BENCH_DIR}
build=$(cd "$dir/.." && pwd)
axload=$build/tools/axload
ex=$build/examples
SERVER_CPU=${SERVER_CPU:-0}
SERVER_CPUS=${SERVER_CPUS:-$SERVER_CPU}
CLIENT_CPU=${CLIENT_CPU:-1}
rounds=${NET_ROUNDS:-3} conns_list=${NET_CONNS:-"100 1000"}
warm=${NET_WARM:-1} secs=${NET_SECS:-5}
workers=${ACTOR_WORKERS:-2}
lock=${NET_LOCK-/tmp/bench.lock}

note() { echo "echo_actor.sh: $*" >&2; }

for bin in "$axload" "$ex/echo_actor" "$ex/echo_proactor" "$dir/echo_uv"; do
  [[ -x $bin ]] || { note "$bin not built"; exit 2; }
done

logdir=$(mktemp -d /tmp/axon-echo-actor.XXXXXX)
note "server logs in $logdir; load average $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
spid='' port='' lock_fd='' result=''

server_cmd() {
  case $1 in
  axon-actor) echo "$ex/echo_actor --port 0 --workers $workers --backend epoll --place rr" ;;
  axon-proactor) echo "$ex/echo_proactor --port 0 --backend epoll" ;;
  libuv) echo "$dir/echo_uv --port 0" ;;
  *) note "unknown impl $1"; return 1 ;;
  esac
}

lock_take() {
  [[ -n $lock ]] || return 0
  exec {lock_fd}>>"$lock"
  flock -w 900 "$lock_fd" || note "$lock still held after 900 s: running anyway"
}
lock_drop() {
  [[ -n $lock && -n $lock_fd ]] || return 0
  exec {lock_fd}>&-
  lock_fd=
}

# Start server $1 (an impl), pinned; sets spid and port (5 s at most).
server_start() {
  local out=$logdir/$1.out cmd
  cmd=$(server_cmd "$1") || return 1
  : >"$out"
  # shellcheck disable=SC2086 # the command line is split on purpose
  taskset -c "$SERVER_CPUS" $cmd >"$out" 2>>"$logdir/$1.err" &
  spid=$!
  for _ in $(seq 50); do
    port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$out")
    [[ -n $port ]] && return 0
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  note "$1 did not say 'listening on' within 5 s (see $logdir/$1.err)"
  server_stop
  return 1
}

# Stop the server by its pid: SIGTERM, SIGKILL after 3 s.
server_stop() {
  [[ -n $spid ]] || return 0
  kill -TERM "$spid" 2>/dev/null || true
  for _ in $(seq 30); do
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$spid" 2>/dev/null; then
    note "server pid $spid ignored SIGTERM for 3 s: SIGKILL"
    kill -KILL "$spid" 2>/dev/null || true
  fi
  wait "$spid" 2>/dev/null || true
  spid=
}
trap 'server_stop; lock_drop' EXIT
trap 'exit 130' INT TERM

# One pair: server $1, then axload with the remaining arguments; sets
# `result` to axload's summary line, or to nothing (a note, status 1).
pair() {
  local impl=$1 line rc=0 limit
  shift
  result=
  lock_take
  if ! server_start "$impl"; then
    lock_drop
    status=1
    return 0
  fi
  limit=$(awk -v w="$warm" -v d="$secs" 'BEGIN { printf "%d", w + d + 15 }')
  line=$(timeout -k 2 "$limit" taskset -c "$CLIENT_CPU" "$axload" -q "$@" "127.0.0.1:$port" \
    2>"$logdir/axload.err") || rc=$?
  server_stop
  lock_drop
  if [[ $rc -ne 0 ]]; then
    note "$impl $*: axload exit $rc: $line"
    sed 's/^/echo_actor.sh:   /' "$logdir/axload.err" >&2
    status=1
    return 0
  fi
  result=$line
}

kv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

median() {
  tr ' ' '\n' <<<"$1" | grep . | sort -g |
    awk '{ v[NR] = $1 } END {
      if (NR == 0) print "NA"
      else if (NR % 2) print v[(NR + 1) / 2]
      else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "NA" || b == "NA" || b + 0 == 0) print "NA"; else printf "%.3f\n", a / b }'
}

rotate() {
  local -a v
  read -ra v <<<"$1"
  local n=${#v[@]} i
  for ((i = 0; i < n; i++)); do printf '%s ' "${v[(i + $2) % n]}"; done
}

impls="axon-actor axon-proactor libuv"
declare -A rps p99
for ((r = 0; r < rounds; r++)); do
  for c in $conns_list; do
    for impl in $(rotate "$impls" "$r"); do
      pair "$impl" -m echo -s 64 -p 1 -c "$c" -r 0 -w "$warm" -d "$secs"
      [[ -n $result ]] || continue
      note "round $((r + 1)) $impl: $result"
      rps[$impl $c]+="$(kv "$result" rps) "
      p99[$impl $c]+="$(kv "$result" p99_us) "
    done
  done
done
for c in $conns_list; do
  declare -A mr mp
  for impl in $impls; do
    mr[$impl]=$(median "${rps[$impl $c]:-}")
    mp[$impl]=$(median "${p99[$impl $c]:-}")
    echo "bench=echo_actor impl=$impl conns=$c rps=${mr[$impl]} p99_us=${mp[$impl]}"
  done
  for peer in axon-proactor libuv; do
    echo "bench=echo_actor impl=axon-actor_vs_$peer conns=$c" \
      "rps=$(ratio "${mr[axon-actor]}" "${mr[$peer]}") p99_us=$(ratio "${mp[axon-actor]}" "${mp[$peer]}")"
  done
done
exit $status
