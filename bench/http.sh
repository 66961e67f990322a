#!/usr/bin/env bash
# HTTP benchmark: examples/httpd --workers 1 against nginx with one worker
# process returning the same body, loaded by wrk.
#   bash bench/http.sh [BUILD_DIR]        (default: build; make first)
#
# Protocol (net.sh's): the server pinned to CPU $SERVER_CPU (0), wrk to CPU
# $CLIENT_CPU (1); one server at a time, started for one wrk run and stopped
# by its pid (SIGTERM, SIGKILL after 3 s); each server+wrk pair holds
# $HTTP_LOCK (/tmp/bench.lock, "" for none). Each round runs both impls,
# the order alternating between rounds; medians over $HTTP_ROUNDS (3) of
#   wrk -t$HTTP_THREADS -c$HTTP_CONNS -d${HTTP_SECS}s --latency  (1, 100, 10)
# on GET / ("Hello, World!", keep-alive), for each pipelining depth in
# $HTTP_DEPTHS ("1 16"): depth 1 is wrk's default (one request in flight
# per connection), depth 16 writes 16 requests at a time
# (bench/http_pipeline.lua; TechEmpower's plaintext shape). nginx: its own
# config in a temp dir on a loopback port, pid and logs there, daemon off,
# access log off, keepalive_requests high enough that wrk's connections are
# never closed.
#
# Besides wrk's rate and p99, each run reads the CPU time the server (all
# its processes and threads) and wrk used: srv_us_per_req is the server's
# CPU µs per answered request, client_cpu_pct wrk's CPU over the run. With
# client_cpu_pct near 100 the rate is wrk's, not the server's: compare
# srv_us_per_req then.
# Prints, per depth,
#   bench=http impl=axon|nginx conns=… depth=… rps=… p99_us=… srv_us_per_req=… client_cpu_pct=…
#   bench=http impl=axon_vs_nginx conns=… depth=… rps=<axon/nginx> p99_us=… srv_us_per_req=…
# Without wrk or nginx (tools/deps.sh bench installs them: wrk,
# nginx-light) it prints a note and exits 0. The lock, server start/stop
# and medians are bench/netlib.sh's.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/netlib.sh
. "$root/bench/netlib.sh" http.sh
build=$(cd "${1:-$root/build}" && pwd)
httpd=$build/examples/httpd
rounds=${HTTP_ROUNDS:-3} secs=${HTTP_SECS:-10} conns=${HTTP_CONNS:-100} threads=${HTTP_THREADS:-1}
depths=${HTTP_DEPTHS:-1 16}
lock=${HTTP_LOCK-/tmp/bench.lock}

nginx=$(command -v nginx || echo /usr/sbin/nginx)
if ! command -v wrk >/dev/null || [[ ! -x $nginx ]]; then
  bash "$root/tools/deps.sh" bench >&2 || true
  nginx=$(command -v nginx || echo /usr/sbin/nginx)
fi
if ! command -v wrk >/dev/null || [[ ! -x $nginx ]]; then
  note "skipped: needs wrk and nginx (Debian: apt-get install wrk nginx-light)"
  exit 0
fi
[[ -x $httpd ]] || { note "$httpd not built (make first)"; exit 2; }

logdir=$(mktemp -d /tmp/axon-http.XXXXXX)
note "logs in $logdir; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# A loopback port nobody listens on, below the ephemeral range (wrk's
# connections of the previous run may hold ports there): nginx is given
# one, httpd picks its own.
free_port() {
  local p lo
  lo=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  for _ in $(seq 50); do
    p=$((10000 + RANDOM % (lo - 10000)))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
  done
  return 1
}

nginx_conf() { # nginx_conf <port>
  mkdir -p "$logdir/nginx"
  cat >"$logdir/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $logdir/nginx/nginx.pid;
error_log $logdir/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type text/plain;
  keepalive_requests 100000000;
  keepalive_timeout 75s;
  client_body_temp_path $logdir/nginx/body;
  proxy_temp_path $logdir/nginx/proxy;
  fastcgi_temp_path $logdir/nginx/fastcgi;
  uwsgi_temp_path $logdir/nginx/uwsgi;
  scgi_temp_path $logdir/nginx/scgi;
  server {
    listen 127.0.0.1:$1;
    location = / { return 200 "Hello, World!"; }
  }
}
EOF
}

# Start impl $1 pinned; sets spid and port. Waits up to 5 s until it accepts
# (netlib.sh's server_spawn and server_wait; nginx's master takes its worker
# down with it on server_stop's SIGTERM).
server_start() {
  port=
  case $1 in
  axon) server_spawn axon "$SERVER_CPU" "$httpd" --port 0 --workers 1 ;;
  nginx)
    port=$(free_port) || { note "no free port"; return 1; }
    nginx_conf "$port"
    server_spawn nginx "$SERVER_CPU" "$nginx" -p "$logdir/nginx" -c "$logdir/nginx/nginx.conf" \
      -e "$logdir/nginx/error.log"
    ;;
  esac
  server_wait "$1" connect
}

# wrk's 99% latency line in µs; NA for wrk's "0.00us" (its percentiles
# come out 0 when a run records millions of pipelined responses).
p99_us() {
  awk '$1 == "99%" {
    v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
    m = u == "us" ? 1 : u == "ms" ? 1000 : u == "s" ? 1000000 : -1
    if (m < 0 || v * m <= 0) print "NA"; else printf "%.0f\n", v * m }' "$1"
}

# CPU time in clock ticks used so far by process $1 and its children
# (nginx's worker), all threads.
cpu_ticks() {
  local p t=0 v
  for p in "$1" $(pgrep -P "$1"); do
    v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null) && t=$((t + v))
  done
  echo "$t"
}

# One pair: server $1, then wrk at depth $2. Sets `result` to "rps p99_us
# srv_us_per_req client_cpu_pct", or to nothing (with a note and status 1).
pair() {
  local impl=$1 depth=$2 out=$logdir/wrk-$1-$2.out rc=0 rps p99 reqs hz t0 t1 c0 c1 script=()
  result=
  ((depth > 1)) && script=(-s "$root/bench/http_pipeline.lua")
  pair_begin "$impl" || return 0
  hz=$(getconf CLK_TCK)
  c0=$(cpu_ticks "$spid") t0=$(date +%s%N)
  # The subshell's `times` gives wrk's CPU (its waited-for descendants').
  (
    timeout -k 2 $((secs + 20)) taskset -c "$CLIENT_CPU" wrk -t"$threads" -c"$conns" -d"${secs}s" \
      --latency "${script[@]}" "http://127.0.0.1:$port/" ${script:+-- "$depth"} >"$out" 2>&1
    rc=$?
    times >"$out.cpu" # not in a pipeline: a forked `times` has no children
    exit $rc
  ) || rc=$?
  c1=$(cpu_ticks "$spid") t1=$(date +%s%N)
  pair_end
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  reqs=$(awk '$2 == "requests" && $3 == "in" { print $1 }' "$out")
  p99=$(p99_us "$out")
  if [[ $rc -ne 0 || -z $rps || -z $reqs ]]; then
    run_failed "$impl depth $depth: wrk exit $rc" "$out"
    return 0
  fi
  grep -E 'Non-2xx|Socket errors' "$out" | sed "s/^/http.sh: $impl: /" >&2
  result="$rps $p99 $(awk -v c=$((c1 - c0)) -v hz="$hz" -v n="$reqs" \
    'BEGIN { printf "%.3f", n ? c / hz * 1e6 / n : 0 }') $(awk -v t="$(tail -n 1 "$out.cpu")" \
    -v ns=$((t1 - t0)) 'BEGIN { split(t, f, /[ ms]+/); s = f[1] * 60 + f[2] + f[3] * 60 + f[4]
    printf "%.0f", s * 1e11 / ns }')"
}

declare -A res
keys="rps p99_us srv_us_per_req client_cpu_pct"
for ((r = 0; r < rounds; r++)); do
  for depth in $depths; do
    order="axon nginx"
    ((r % 2)) && order="nginx axon"
    for impl in $order; do
      pair "$impl" "$depth"
      [[ -n $result ]] || continue
      read -ra v <<<"$result"
      note "round $((r + 1)) depth $depth $impl: rps=${v[0]} p99_us=${v[1]} srv_us_per_req=${v[2]} client_cpu_pct=${v[3]}"
      i=0
      for k in $keys; do # a median over the rounds that have the figure
        [[ ${v[i]} != NA ]] && res[$impl $depth $k]+="${v[i]} "
        i=$((i + 1))
      done
    done
  done
done
for depth in $depths; do
  declare -A med=()
  for impl in axon nginx; do
    line="bench=http impl=$impl conns=$conns depth=$depth"
    for k in $keys; do
      med[$impl $k]=$(median "${res[$impl $depth $k]:-}")
      line+=" $k=${med[$impl $k]}"
    done
    echo "$line"
  done
  echo "bench=http impl=axon_vs_nginx conns=$conns depth=$depth" \
    "rps=$(ratio "${med[axon rps]}" "${med[nginx rps]}")" \
    "p99_us=$(ratio "${med[axon p99_us]}" "${med[nginx p99_us]}")" \
    "srv_us_per_req=$(ratio "${med[axon srv_us_per_req]}" "${med[nginx srv_us_per_req]}")"
done
[[ $status -eq 0 ]] && rm -rf "$logdir"
exit $status
