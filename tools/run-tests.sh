#!/usr/bin/env bash
# Runs every test binary of the given build directories, each under a
# timeout (a hang is a failure), and ends with one aggregate line:
#   tests: N passed, N failed
# Counts are cmocka test cases; a binary that crashes, hangs or exits
# non-zero without reporting a failed case counts as one failure.
# Usage: tools/run-tests.sh BUILD_DIR [BUILD_DIR...]
set -uo pipefail
cd "$(dirname "$0")/.."

limit=${AX_TEST_TIMEOUT:-240}
passed=0 failed=0 skipped=0
failures=()
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
supp=$PWD/tests/tsan.supp
[[ -f $supp ]] || supp=""
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1${supp:+:suppressions=$supp}}

for dir in "$@"; do
  variant=${dir#build}; variant=${variant#/}; variant=${variant:-plain}
  for t in "$dir"/tests/test_*; do
    [[ -x $t ]] || continue
    name=$(basename "$t")
    log="$dir/tests/$name.log"
    start=$(date +%s.%N)
    timeout -k 5 "$limit" "$t" >"$log" 2>&1
    rc=$?
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
    p=$(grep -Eo '^\[  PASSED  \] [0-9]+' "$log" | awk '{s+=$4} END{print s+0}')
    f=$(grep -Eo '^\[  FAILED  \] [0-9]+ test' "$log" | awk '{s+=$4} END{print s+0}')
    # cmocka names a skipped case three times; its summary line counts once.
    s=$(grep -Eo '^\[  SKIPPED \] [0-9]+ test' "$log" | awk '{s+=$4} END{print s+0}')
    if [[ $rc -ne 0 && $f -eq 0 ]]; then
      f=1
      [[ $rc -eq 124 || $rc -eq 137 ]] && why="timed out after ${limit}s" || why="exit $rc"
    else
      why="exit $rc"
    fi
    passed=$((passed + p)); failed=$((failed + f)); skipped=$((skipped + s))
    if [[ $f -gt 0 ]]; then
      echo "FAIL  $variant/$name ($p passed, $f failed, $why, ${secs}s) — log: $log"
      grep -E '^\[  (FAILED|ERROR)|^\[ +ERROR|Assertion|ERROR: |runtime error|WARNING: ThreadSanitizer' "$log" | head -15 | sed 's/^/      /'
      failures+=("$variant/$name")
    else
      skip_note=
      [[ $s -gt 0 ]] && skip_note=", $s skipped"
      echo "ok    $variant/$name ($p passed$skip_note, ${secs}s)"
    fi
  done
done

[[ ${#failures[@]} -gt 0 ]] && echo "failed: ${failures[*]}"
echo "tests: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
