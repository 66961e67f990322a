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
# SERVER_CPUS CLIENT_CPU (1) ACTOR_WORKERS (2). The machinery: bench/netlib.sh.
# Wall time: 2 x 3 x 3 runs of ~7.5 s = ~2.5 min (NET_SECS=2: ~1.2 min).
set -euo pipefail

dir=${1:?usage: echo_actor.sh BENCH_DIR}
# shellcheck source=bench/netlib.sh
. "$(dirname "${BASH_SOURCE[0]}")/netlib.sh" echo_actor.sh
build=$(cd "$dir/.." && pwd)
axload=$build/tools/axload
ex=$build/examples
SERVER_CPUS=${SERVER_CPUS:-$SERVER_CPU}
server_cpus=$SERVER_CPUS
rounds=${NET_ROUNDS:-3} conns_list=${NET_CONNS:-"100 1000"}
warm=${NET_WARM:-1} secs=${NET_SECS:-5}
workers=${ACTOR_WORKERS:-2}
lock=${NET_LOCK-/tmp/bench.lock}

for bin in "$axload" "$ex/echo_actor" "$ex/echo_proactor" "$dir/echo_uv"; do
  [[ -x $bin ]] || { note "$bin not built"; exit 2; }
done

logdir=$(mktemp -d /tmp/axon-echo-actor.XXXXXX)
note "server logs in $logdir; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# The command line of impl $1 (for netlib's server_start).
server_cmd() {
  case $1 in
  axon-actor) echo "$ex/echo_actor --port 0 --workers $workers --backend epoll --place rr" ;;
  axon-proactor) echo "$ex/echo_proactor --port 0 --backend epoll" ;;
  libuv) echo "$dir/echo_uv --port 0" ;;
  *) note "unknown impl $1"; return 1 ;;
  esac
}

# The rounds, medians and ratio lines: netlib.sh's echo_bench.
echo_bench echo_actor "axon-actor axon-proactor libuv" "axon-actor:axon-proactor axon-actor:libuv"
exit $status
