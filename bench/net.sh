#!/usr/bin/env bash
# Network benchmarks: axon's servers against raw epoll and libuv, loaded by
# tools/axload. Called by bench/run.sh as
#   bash bench/net.sh <dir with the bench binaries> echo|sink|conn_scale
# (the build directory is its parent: tools/axload and examples/ are there).
#
# Protocol (every workload): the server pinned to CPU $SERVER_CPU (0),
# axload to CPU $CLIENT_CPU (1); one server at a time, started for one
# axload run and stopped by its pid (SIGTERM, SIGKILL after 3 s); its port
# from its "listening on 127.0.0.1:PORT" line. Each server+client pair holds
# $NET_LOCK (the peers harness's /tmp/bench.lock; "" for none) so it does not
# overlap another benchmark that honours the lock. Everything is bounded by
# `timeout`. The machinery (lock, servers, pairs, medians) is bench/netlib.sh.
#
#   echo        for C in 1 100 1000 10000 and each impl (axon-epoll,
#               axon-uring, raw-epoll, libuv): axload -m echo -s 64 -p 1
#               -c C -r 0 -w 1 -d 5; 3 rounds, the impls interleaved inside
#               each round (the order rotates by one every round, so no impl
#               always runs right after the 10000-connection run of another).
#               Medians of rps and p99_us.
#   sink        100 connections, axload -m push -s 16384 -w 1 -d 5, into
#               examples/sink (axon-epoll, axon-uring) and sink_epoll
#               (raw-epoll); 3 interleaved rounds, median mb_per_s.
#   conn_scale  one server (axon: $AXON_ECHO --backend epoll; then raw-epoll
#               and libuv for scale), axload -m hold with as many
#               connections as the server's open-files limit allows (limit
#               - 100: ~19,900 under 20,000); the server's VmRSS before and
#               while holding. bytes_per_conn = RSS growth / connections the
#               server holds at that moment (= held when all are held). RSS
#               is user space only: the socket buffers and the kernel's
#               per-socket structures are kernel memory and not in it.
#               (raw-epoll keeps nothing per connection in user space: its
#               0 is the floor, no ratio is taken against it.) The hold
#               lasts 15 s: past ~14,000 connections to one destination
#               connect() slows to ~1,000/s on Linux (it scans every even
#               ephemeral port before it tries the odd ones), so the last
#               ~6,000 take ~6 s; the RSS is read once the server's fd count
#               reaches the target or stops growing for 1 s.
#
# Output (stdout, nothing else):
#   bench=echo impl=<impl> conns=<C> rps=<median> p99_us=<median>
#   bench=echo impl=<a>_vs_<b> conns=<C> rps=<a/b> p99_us=<a/b>
#   bench=sink impl=<impl> mb_per_s=<median>   (+ _vs_ ratio lines)
#   bench=conn_scale impl=<impl> held=<N> bytes_per_conn=<B> rss_before_kib=..
#     rss_held_kib=..                           (+ impl=axon_vs_libuv)
# rps and mb_per_s: higher is better (ratio > 1 favours the first); p99_us
# and bytes_per_conn: lower is better. Notes go to stderr; server output to
# the log directory it names. Exit status non-zero if any run failed (a
# failed run is left out of the medians and named on stderr).
#
# Knobs (environment):
#   AXON_ECHO    the axon echo server (default: examples/echo_proactor, or
#                examples/echo_reactor as a stand-in when it is not built)
#   AXON_SINK    the axon sink (default: examples/sink)
#   NET_SHORT=1  a quick look: 1 round, conns "1 100", -w 0.5 -d 1
#   NET_ROUNDS (3)  NET_CONNS ("1 100 1000 10000")  NET_WARM (1)
#   NET_SECS (5)  NET_HOLD_SECS (15)  NET_LOCK (/tmp/bench.lock)
# Wall time: echo ~48 runs x ~7.5 s = 6 min; sink ~1 min; conn_scale ~1 min.
set -euo pipefail

dir=${1:?usage: net.sh BENCH_DIR echo|sink|conn_scale}
what=${2:?usage: net.sh BENCH_DIR echo|sink|conn_scale}
# shellcheck source=bench/netlib.sh
. "$(dirname "${BASH_SOURCE[0]}")/netlib.sh" net.sh
build=$(cd "$dir/.." && pwd)
axload=$build/tools/axload
ex=$build/examples
if [[ ${NET_SHORT:-} == 1 ]]; then
  rounds=${NET_ROUNDS:-1} conns_list=${NET_CONNS:-"1 100"}
  warm=${NET_WARM:-0.5} secs=${NET_SECS:-1}
else
  rounds=${NET_ROUNDS:-3} conns_list=${NET_CONNS:-"1 100 1000 10000"}
  warm=${NET_WARM:-1} secs=${NET_SECS:-5}
fi
hold_secs=${NET_HOLD_SECS:-15}
lock=${NET_LOCK-/tmp/bench.lock}

axon_echo=${AXON_ECHO:-$ex/echo_proactor}
if [[ -z ${AXON_ECHO:-} && ! -x $axon_echo ]]; then
  axon_echo=$ex/echo_reactor
  note "examples/echo_proactor is not built: echo_reactor stands in for axon"
fi
axon_sink=${AXON_SINK:-$ex/sink}
for bin in "$axload" "$axon_echo" "$dir/echo_epoll" "$dir/echo_uv" "$dir/sink_epoll"; do
  [[ -x $bin ]] || { note "$bin not built"; exit 2; }
done

logdir=$(mktemp -d /tmp/axon-net.XXXXXX)
note "$what: server logs in $logdir; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# The command line of server implementation $1 (for netlib's server_start).
server_cmd() {
  case $1 in
  axon-epoll) echo "$axon_echo --port 0 --backend epoll" ;;
  axon-uring) echo "$axon_echo --port 0 --backend io_uring" ;;
  raw-epoll) echo "$dir/echo_epoll --port 0" ;;
  libuv) echo "$dir/echo_uv --port 0" ;;
  sink-axon-epoll) echo "$axon_sink --port 0 --backend epoll" ;;
  sink-axon-uring) echo "$axon_sink --port 0 --backend io_uring" ;;
  sink-raw-epoll) echo "$dir/sink_epoll --port 0" ;;
  *) note "unknown impl $1"; return 1 ;;
  esac
}

# Echo: every impl, the axon ones against raw epoll and libuv (netlib.sh).
bench_echo() {
  echo_bench echo "axon-epoll axon-uring raw-epoll libuv" \
    "axon-epoll:libuv axon-epoll:raw-epoll axon-uring:libuv axon-uring:raw-epoll axon-uring:axon-epoll"
}

bench_sink() {
  local impls="axon-epoll axon-uring raw-epoll" r impl line
  [[ -x $axon_sink ]] || { note "$axon_sink not built"; return 2; }
  local -A mb
  for ((r = 0; r < rounds; r++)); do
    for impl in $(rotate "$impls" "$r"); do
      pair "sink-$impl" -m push -s 16384 -c 100 -r 0 -w "$warm" -d "$secs"
      line=$result
      [[ -n $line ]] || continue
      note "round $((r + 1)) $impl: $line"
      mb[$impl]+="$(kv "$line" mb_per_s) "
    done
  done
  for impl in $impls; do
    mb[$impl]=$(median "${mb[$impl]:-}")
    echo "bench=sink impl=$impl mb_per_s=${mb[$impl]}"
  done
  echo "bench=sink impl=axon-epoll_vs_raw-epoll mb_per_s=$(ratio "${mb[axon-epoll]}" "${mb[raw-epoll]}")"
  echo "bench=sink impl=axon-uring_vs_raw-epoll mb_per_s=$(ratio "${mb[axon-uring]}" "${mb[raw-epoll]}")"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
nfds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# One conn_scale run on impl $1 (an echo impl); sets `result` to the result
# line, or to nothing (status 1) when it failed.
scale_one() {
  local impl=$1 soft n base rss0 rss1 held=0 fds prev=-1 still=0 line apid out rc=0
  result=
  pair_begin "$impl" || return 0
  soft=$(awk '/^Max open files/ { print $4 }' "/proc/$spid/limits")
  [[ $soft == unlimited ]] && soft=20000
  n=$((soft - 100))
  base=$(nfds "$spid")
  rss0=$(rss_kib "$spid")
  out=$logdir/hold.out
  timeout -k 2 $((hold_secs + 15)) taskset -c "$CLIENT_CPU" "$axload" -q -m hold -c "$n" -r 0 \
    -w 0 -d "$hold_secs" "127.0.0.1:$port" >"$out" 2>"$logdir/axload.err" &
  apid=$!
  # Sample once the server's fd count stops growing (all accepted), at the
  # latest 2 s before axload lets go.
  local deadline=$((SECONDS + hold_secs - 2))
  while ((SECONDS < deadline)); do
    sleep 0.25
    fds=$(($(nfds "$spid") - base))
    if ((fds >= n || (fds == prev && fds > 0))); then
      ((++still >= 4 || fds >= n)) && break
    else
      still=0
    fi
    prev=$fds
  done
  rss1=$(rss_kib "$spid")
  fds=$(($(nfds "$spid") - base))
  wait "$apid" || rc=$?
  pair_end
  line=$(cat "$out")
  [[ $rc -ne 0 || -z $line ]] &&
    run_failed "conn_scale $impl: axload exit $rc: $line" "$logdir/axload.err"
  held=$(kv "$line" held)
  [[ -n $held && $held != "$fds" ]] &&
    note "conn_scale $impl: axload held $held, the server had $fds at the sample"
  if ((fds <= 0)); then
    note "conn_scale $impl: the server held no connection"
    status=1
    return 0
  fi
  result="bench=conn_scale impl=$impl held=${held:-NA} bytes_per_conn=$(
    awk -v a="$rss0" -v b="$rss1" -v n="$fds" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')"
  result+=" rss_before_kib=$rss0 rss_held_kib=$rss1"
}

bench_conn_scale() {
  local impl line
  local -A bpc
  for impl in axon-epoll raw-epoll libuv; do
    scale_one "$impl"
    line=$result
    [[ -n $line ]] || continue
    echo "${line/impl=axon-epoll/impl=axon}"
    bpc[$impl]=$(kv "$line" bytes_per_conn)
  done
  echo "bench=conn_scale impl=axon_vs_libuv bytes_per_conn=$(ratio "${bpc[axon-epoll]:-NA}" "${bpc[libuv]:-NA}")"
}

case $what in
echo) bench_echo ;;
sink) bench_sink || status=$? ;;
conn_scale) bench_conn_scale ;;
*) note "unknown benchmark '$what' (echo, sink, conn_scale)"; exit 2 ;;
esac
exit $status
