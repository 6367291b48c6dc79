#!/usr/bin/env bash
# Runs every test: the host build (with the CUDA backend compiled when nvcc is present; GPU
# tests skip without a GPU), then the AddressSanitizer + UBSan build, then the fuzzers briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export CCACHE_DIR="${CCACHE_DIR:-$PWD/.cache/ccache}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
jobs=$(nproc)
mkdir -p .cache  # the test logs live here, wherever ccache keeps its cache

# CI builds what the tests need and no benchmarks (its budget is compile time on two cores);
# elsewhere the host build keeps compiling the benchmarks so that they cannot rot. Each test
# program compiles as one translation unit (BLOCKDIFF_UNITY_TESTS): a clean build's CPU time is
# what counts here, where an edit-compile loop is better served by the presets' one unit a file.
bench=ON; [ "${CI:-}" = "true" ] && bench=OFF

# Runs the tests of a preset into .cache/ctest-PRESET.log and shows the log's last `lines` lines,
# then 80 lines of what each failing test printed. A failure does not stop the script: the later
# runs still run, and the closing line below counts it.
run_tests() {
  local preset=$1 lines=$2 log=.cache/ctest-$1.log
  ctest --preset "$preset" -j "$jobs" > "$log" 2>&1 || true
  tail -n "$lines" "$log"
  awk '/\*\*\*(Failed|Exception|Timeout)/ { left = 80; print "--- " FILENAME } left > 0 { print; left-- }' "$log"
}

cmake --preset host -DBLOCKDIFF_BUILD_BENCH=$bench -DBLOCKDIFF_UNITY_TESTS=ON >/dev/null
cmake --build --preset host -j "$jobs"
run_tests host 25

cmake --preset sanitize -DBLOCKDIFF_UNITY_TESTS=ON >/dev/null
cmake --build --preset sanitize -j "$jobs"
run_tests sanitize 8

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs"
run_tests fuzz 8

# The closing line, over all three runs.
passed=0; failed=0; total=0
for log in .cache/ctest-host.log .cache/ctest-sanitize.log .cache/ctest-fuzz.log; do
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -n 1) ||
    { echo "$log: ctest printed no summary"; failed=$((failed + 1)); continue; }
  f=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
  t=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/' <<<"$line")
  failed=$((failed + f)); total=$((total + t))
done
passed=$((total - failed))
echo "all runs: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
