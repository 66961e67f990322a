# Shared machinery of the network benchmarks (bench/net.sh,
# bench/echo_actor.sh, bench/http.sh); sourced, never run:
#   . "$(dirname "${BASH_SOURCE[0]}")/netlib.sh" <script name for notes>
# Sourcing it sets SERVER_CPU (0) and CLIENT_CPU (1) from the environment,
# server_cpus (SERVER_CPU), empty spid, port, lock_fd and result, status 0,
# and the EXIT (stop the server, drop the lock) and INT/TERM traps.
# The sourcing script sets, before it calls these functions:
#   lock    the lock file ("" for none)
#   logdir  the directory for server and client output
#   server_cmd IMPL  (for server_start) prints impl IMPL's command line
#   axload, warm, secs  (for pair) the load generator, its -w and -d
#   rounds, conns_list  (for echo_bench) rounds and connection counts
# Works under `set -euo pipefail` and without -e.
# shellcheck shell=bash disable=SC2034,SC2154 # the variables above are the caller's

netlib_me=${1:?usage: . netlib.sh SCRIPT_NAME}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
server_cpus=$SERVER_CPU
spid='' port='' lock_fd='' result='' status=0

# A note on stderr, prefixed with the script's name.
note() { echo "$netlib_me: $*" >&2; }

# Take $lock (flock, 900 s at most, then run anyway with a note).
lock_take() {
  [[ -n ${lock:-} ]] || return 0
  exec {lock_fd}>>"$lock"
  flock -w 900 "$lock_fd" || note "$lock still held after 900 s: running anyway"
}

# Drop $lock if lock_take holds it.
lock_drop() {
  [[ -n ${lock:-} && -n $lock_fd ]] || return 0
  exec {lock_fd}>&-
  lock_fd=
}

# Run "${@:3}" pinned to CPUs $2 in the background, stdout to $logdir/$1.out
# (emptied first), stderr appended to $logdir/$1.err; sets spid.
server_spawn() {
  local name=$1 cpus=$2
  shift 2
  : >"$logdir/$name.out"
  taskset -c "$cpus" "$@" >"$logdir/$name.out" 2>>"$logdir/$name.err" &
  spid=$!
}

# Wait up to 5 s for server $1 ($spid): its port from its "listening on
# 127.0.0.1:PORT" line unless $port is set, and with $2 = connect until a
# connection to the port succeeds; stops it and returns 1 when it fails.
server_wait() {
  local name=$1 probe=${2:-}
  for _ in $(seq 50); do
    [[ -n $port ]] ||
      port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$logdir/$name.out")
    if [[ -n $port ]]; then
      [[ $probe != connect ]] && return 0
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    fi
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  if [[ $probe == connect ]]; then
    note "$name did not come up within 5 s (see $logdir/$name.err)"
  else
    note "$name did not say 'listening on' within 5 s (see $logdir/$name.err)"
  fi
  server_stop
  return 1
}

# Start impl $1 (the caller's server_cmd), pinned to $server_cpus; sets spid
# and port from its "listening on" line (5 s at most).
server_start() {
  local cmd
  cmd=$(server_cmd "$1") || return 1
  port=
  # shellcheck disable=SC2086 # the command line is split on purpose
  server_spawn "$1" "$server_cpus" $cmd
  server_wait "$1"
}

# Stop the server by its pid: SIGTERM, SIGKILL after 3 s; clears spid, port.
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
  spid='' port=''
}
trap 'server_stop; lock_drop' EXIT
trap 'exit 130' INT TERM

# Take the lock and start server $1; on failure drop the lock, set status 1
# and return 1. (Not inside $(...): spid must stay in this shell.)
pair_begin() {
  lock_take
  server_start "$1" && return 0
  lock_drop
  status=1
  return 1
}

# Stop the server and drop the lock (the end of a pair_begin).
pair_end() {
  server_stop
  lock_drop
}

# A failed client run: note $1, then file $2 indented on stderr; status 1.
run_failed() {
  note "$1"
  sed "s/^/$netlib_me:   /" "$2" >&2
  status=1
}

# One pair: server $1, then axload with the remaining arguments. Sets
# `result` to axload's summary line, or to nothing (with a note and status
# 1) when the run failed.
pair() {
  local impl=$1 line rc=0 limit
  shift
  result=
  pair_begin "$impl" || return 0
  limit=$(awk -v w="$warm" -v d="$secs" 'BEGIN { printf "%d", w + d + 15 }')
  line=$(timeout -k 2 "$limit" taskset -c "$CLIENT_CPU" "$axload" -q "$@" "127.0.0.1:$port" \
    2>"$logdir/axload.err") || rc=$?
  pair_end
  if [[ $rc -ne 0 ]]; then
    run_failed "$impl $*: axload exit $rc: $line" "$logdir/axload.err"
    return 0
  fi
  result=$line
}

# The value of key $2 in summary line $1.
kv() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# Median of the numbers in $1 (space-separated); NA when empty.
median() {
  tr ' ' '\n' <<<"$1" | grep . | sort -g |
    awk '{ v[NR] = $1 } END {
      if (NR == 0) print "NA"
      else if (NR % 2) print v[(NR + 1) / 2]
      else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# $1 / $2 with 3 decimals; NA when either is NA or the divisor is 0.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    if (a == "NA" || b == "NA" || b + 0 == 0) print "NA"; else printf "%.3f\n", a / b }'
}

# Print $1 (a list) rotated left by $2 places.
rotate() {
  local -a v
  read -ra v <<<"$1"
  local n=${#v[@]} i
  for ((i = 0; i < n; i++)); do printf '%s ' "${v[(i + $2) % n]}"; done
}

# The echo workload as bench $1: $rounds rounds over $conns_list of axload
# -m echo -s 64 -p 1 against impls $2 (the order rotating by one a round),
# then per conns the median lines and the a_vs_b lines for the a:b in $3.
echo_bench() {
  local bench=$1 impls=$2 pairs=$3 r c impl ab a b
  local -A rps p99 mr mp
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
    for impl in $impls; do
      mr[$impl]=$(median "${rps[$impl $c]:-}")
      mp[$impl]=$(median "${p99[$impl $c]:-}")
      echo "bench=$bench impl=$impl conns=$c rps=${mr[$impl]} p99_us=${mp[$impl]}"
    done
    for ab in $pairs; do
      a=${ab%%:*} b=${ab#*:}
      echo "bench=$bench impl=${a}_vs_$b conns=$c rps=$(ratio "${mr[$a]}" "${mr[$b]}")" \
        "p99_us=$(ratio "${mp[$a]}" "${mp[$b]}")"
    done
  done
}
