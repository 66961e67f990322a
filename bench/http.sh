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
# on GET / ("Hello, World!", keep-alive). nginx: its own config in a temp
# dir on a loopback port, pid and logs there, daemon off, access log off,
# keepalive_requests high enough that wrk's connections are never closed.
# Prints
#   bench=http impl=axon|nginx rps=… p99_us=…
#   bench=http impl=axon_vs_nginx rps=<axon/nginx> p99_us=<axon/nginx>
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

# wrk's 99% latency line in µs.
p99_us() {
  awk '$1 == "99%" {
    v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[a-z]+$/, "", v)
    m = u == "us" ? 1 : u == "ms" ? 1000 : u == "s" ? 1000000 : -1
    if (m < 0) print "NA"; else printf "%.0f\n", v * m }' "$1"
}

# One pair: server $1, then wrk. Sets `result` to "rps p99_us", or to
# nothing (with a note and status 1).
pair() {
  local impl=$1 out=$logdir/wrk-$1.out rc=0 rps p99
  result=
  pair_begin "$impl" || return 0
  timeout -k 2 $((secs + 20)) taskset -c "$CLIENT_CPU" wrk -t"$threads" -c"$conns" -d"${secs}s" \
    --latency "http://127.0.0.1:$port/" >"$out" 2>&1 || rc=$?
  pair_end
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
  p99=$(p99_us "$out")
  if [[ $rc -ne 0 || -z $rps ]]; then
    run_failed "$impl: wrk exit $rc" "$out"
    return 0
  fi
  grep -E 'Non-2xx|Socket errors' "$out" | sed "s/^/http.sh: $impl: /" >&2
  result="$rps $p99"
}

declare -A rps p99
for ((r = 0; r < rounds; r++)); do
  order="axon nginx"
  ((r % 2)) && order="nginx axon"
  for impl in $order; do
    pair "$impl"
    [[ -n $result ]] || continue
    note "round $((r + 1)) $impl: rps=${result% *} p99_us=${result#* }"
    rps[$impl]+="${result% *} "
    p99[$impl]+="${result#* } "
  done
done
for impl in axon nginx; do
  rps[$impl]=$(median "${rps[$impl]:-}")
  p99[$impl]=$(median "${p99[$impl]:-}")
  echo "bench=http impl=$impl conns=$conns rps=${rps[$impl]} p99_us=${p99[$impl]}"
done
echo "bench=http impl=axon_vs_nginx conns=$conns rps=$(ratio "${rps[axon]}" "${rps[nginx]}")" \
  "p99_us=$(ratio "${p99[axon]}" "${p99[nginx]}")"
[[ $status -eq 0 ]] && rm -rf "$logdir"
exit $status
