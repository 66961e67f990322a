#!/usr/bin/env bash
# Installs what axon needs on a Debian machine, or stops with the exact
# command to run. Usage: tools/deps.sh build|test|bench
#   build: libck-dev (required), liburing-dev (used when present), pkg-config
#   test:  libcmocka-dev, spin (model checking of the wake protocol), clang
#          (libFuzzer, for the HTTP parser's fuzz test)
#   bench: libuv1-dev, libev-dev (peers measured beside axon); wrk and
#          nginx-light (bench/http.sh); golang-go, erlang-base, libcaf-dev
#          (the actor peers)
set -euo pipefail

what=${1:-build}
cc=${CC:-cc}

have_header() { # have_header <header> [lib]
  printf '#include <%s>\nint main(void){return 0;}\n' "$1" |
    "$cc" -x c - -o /dev/null ${2:+-l$2} >/dev/null 2>&1
}

have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_nginx() { have_cmd nginx || [[ -x /usr/sbin/nginx ]]; } # sbin: off a user's PATH

missing=()
need() { # need <package> <check command...>
  local pkg=$1; shift
  "$@" || missing+=("$pkg")
}

case $what in
build)
  need libck-dev have_header ck_pr.h ck
  need liburing-dev have_header liburing.h uring
  need pkg-config have_cmd pkg-config
  ;;
test)
  need libcmocka-dev have_header cmocka_setjmp_stub.h
  need spin have_cmd spin
  need clang have_cmd clang # libFuzzer, for the HTTP parser's fuzz test
  ;;
bench)
  need libuv1-dev have_header uv.h uv
  need libev-dev have_header ev.h ev
  need wrk have_cmd wrk
  need nginx-light have_nginx
  # The actor peers of ../shared/peers/actors (bench/Makefile builds them
  # when they are there): Go, Erlang, CAF.
  need golang-go have_cmd go
  need erlang-base have_cmd erl
  need libcaf-dev test -f /usr/include/caf/all.hpp # C++: not have_header
  ;;
*)
  echo "usage: $0 build|test|bench" >&2
  exit 2
  ;;
esac

# cmocka.h needs stdarg/setjmp first; test it the way cmocka wants.
if [[ $what == test ]]; then
  missing=("${missing[@]/libcmocka-dev/}")
  printf '#include <stdarg.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <setjmp.h>\n#include <cmocka.h>\nint main(void){return 0;}\n' |
    "$cc" -x c - -o /dev/null -lcmocka >/dev/null 2>&1 || missing+=(libcmocka-dev)
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sed '/^$/d')
fi

[[ ${#missing[@]} -eq 0 ]] && exit 0

cmd="apt-get install -y --no-install-recommends ${missing[*]}"
echo "axon: missing for '$what': ${missing[*]}" >&2
if [[ $(id -u) -eq 0 ]]; then
  sudo=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  echo "axon: run this as root, then retry:  sudo $cmd" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "axon: no apt-get here; install the equivalent of: ${missing[*]}" >&2
  exit 1
fi
echo "axon: installing: $cmd" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo $cmd >/dev/null 2>&1 || { $sudo apt-get update -qq && $sudo $cmd; } || {
  echo "axon: install failed; run:  sudo apt-get update && sudo $cmd" >&2
  exit 1
}
