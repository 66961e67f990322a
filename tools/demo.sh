#!/usr/bin/env bash
# A short, unattended tour of the examples (`make demo`, ~10 s): echo_actor
# under axload with its per-worker counters first, then timers (the actor
# version when built) and the loop and proactor examples. Every wait is
# bounded and every background process is stopped by its pid on exit.
# Usage: tools/demo.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/.."

build=${1:-build}
ex=$build/examples
for name in echo_actor timers stdin echo_reactor echo_threads fswatch echo_proactor sink; do
  [[ -x $ex/$name ]] || { echo "demo: $ex/$name is missing; run make first" >&2; exit 1; }
done
# The actor version of the timers tour when the tree has it.
timers=$ex/timers
[[ -x $ex/timers_actor ]] && timers=$ex/timers_actor
axload=$build/tools/axload
[[ -x $axload ]] || { echo "demo: $axload is missing; run make first" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/axon-demo.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

section() { printf '\n== %s ==\n' "$*"; }

# wait_for FILE PATTERN: until a line of FILE matches, at most 5 s.
wait_for() {
  for _ in $(seq 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "demo: timed out waiting for '$2' in $1" >&2
  return 1
}

section "echo_actor: one actor per connection on 2 workers, under axload for 3 s"
"$ex/echo_actor" --port 0 --workers 2 >"$tmp/ea.out" 2>"$tmp/ea.err" &
echo_pid=$!
pids+=("$echo_pid")
wait_for "$tmp/ea.out" '^listening on '
cat "$tmp/ea.out"
port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/ea.out")
# 100 connections spread round-robin over the workers, 64-byte ping-pong,
# every byte verified; the progress line shows when this runs on a terminal.
timeout 20 "$axload" -m echo -c 100 -r 0 -w 0 -d 3 "127.0.0.1:$port" || echo "demo: axload failed" >&2
kill -TERM "$echo_pid"
status=0
wait "$echo_pid" || status=$?
echo "SIGTERM: echo_actor exited with status $status; its per-worker counters (ax_rt_dump):"
sed 's/^/  /' "$tmp/ea.err"
echo "  (read after shutdown: spawned is the round-robin split of the 100 connections,"
echo "   bytes_in/bytes_out the echoed bytes; they flow through stream callbacks,"
echo "   not actor messages, so messages stays 0)"
pids=()

if [[ ${timers##*/} == timers_actor ]]; then
  section "timers_actor: per-actor one-shot and interval timers, a request with a timeout"
else
  section "timers: timeout, interval, date, deferred call, reschedule-by-return"
fi
timeout 10 "$timers"

section "stdin: lines read through the loop (the last one has no newline)"
printf 'first line\nsecond line\nno newline at the end' | timeout 10 "$ex/stdin"

section "echo_reactor: a TCP echo server on the reactor"
"$ex/echo_reactor" --port 0 >"$tmp/echo.out" &
echo_pid=$!
pids+=("$echo_pid")
wait_for "$tmp/echo.out" '^listening on '
cat "$tmp/echo.out"
port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/echo.out")
exec 3<>"/dev/tcp/127.0.0.1/$port"
for msg in "hello, axon" "echo, echo"; do
  printf '%s\n' "$msg" >&3
  IFS= read -r -t 5 reply <&3
  printf 'sent "%s", got back "%s"\n' "$msg" "$reply"
done
exec 3>&-
kill -TERM "$echo_pid"
status=0
wait "$echo_pid" || status=$?
echo "SIGTERM: echo_reactor exited with status $status"
pids=()

section "echo_threads: an acceptor loop hands each connection to a worker loop"
"$ex/echo_threads" --port 0 --workers 2 >"$tmp/threads.out" &
echo_pid=$!
pids+=("$echo_pid")
wait_for "$tmp/threads.out" '^listening on '
port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/threads.out")
for i in 1 2 3 4; do
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'connection %d\n' "$i" >&3
  IFS= read -r -t 5 reply <&3
  printf 'sent "connection %d", got back "%s"\n' "$i" "$reply"
  exec 3>&-
done
kill -TERM "$echo_pid"
status=0
wait "$echo_pid" || status=$?
sed -n 's/^worker/  worker/p' "$tmp/threads.out"
echo "SIGTERM: echo_threads exited with status $status"
pids=()

section "echo_proactor: the echo server on the proactor, under axload for 2 s"
"$ex/echo_proactor" --port 0 >"$tmp/ep.out" &
echo_pid=$!
pids+=("$echo_pid")
wait_for "$tmp/ep.out" '^listening on '
cat "$tmp/ep.out"
port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/ep.out")
# 100 connections, 64-byte ping-pong, every byte verified; a live progress
# line when this runs on a terminal, one summary line at the end.
timeout 20 "$axload" -m echo -c 100 -r 0 -w 0 -d 2 "127.0.0.1:$port" || echo "demo: axload failed" >&2
kill -TERM "$echo_pid"
status=0
wait "$echo_pid" || status=$?
echo "SIGTERM: echo_proactor exited with status $status"
pids=()

section "sink: axload pushes 16 KiB writes into the sink for 1 s"
"$ex/sink" --port 0 >"$tmp/sink.out" &
sink_pid=$!
pids+=("$sink_pid")
wait_for "$tmp/sink.out" '^listening on '
port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/sink.out")
timeout 20 "$axload" -m push -s 16384 -c 10 -r 0 -w 0 -d 1 "127.0.0.1:$port" || echo "demo: axload failed" >&2
kill -TERM "$sink_pid"
status=0
wait "$sink_pid" || status=$?
tail -n 1 "$tmp/sink.out"
pids=()

section "fswatch: changes in a watched directory"
mkdir "$tmp/dir"
"$ex/fswatch" "$tmp/dir" >"$tmp/fs.out" &
fs_pid=$!
pids+=("$fs_pid")
wait_for "$tmp/fs.out" '^watching '
echo "data" >"$tmp/dir/note.txt"
mv "$tmp/dir/note.txt" "$tmp/dir/renamed.txt"
rm "$tmp/dir/renamed.txt"
wait_for "$tmp/fs.out" 'delete renamed.txt'
kill -TERM "$fs_pid"
status=0
wait "$fs_pid" || status=$?
pids=()
sed "s|$tmp/|\$TMP/|" "$tmp/fs.out"
echo "SIGTERM: fswatch exited with status $status"

section "done"
