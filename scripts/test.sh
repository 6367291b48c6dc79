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
# elsewhere the host build keeps compiling the benchmarks so that they cannot rot.
bench=ON; [ "${CI:-}" = "true" ] && bench=OFF
cmake --preset host -DBLOCKDIFF_BUILD_BENCH=$bench >/dev/null
cmake --build --preset host -j "$jobs"
ctest --preset host -j "$jobs" | tee .cache/ctest-host.log | tail -n 25

cmake --preset sanitize >/dev/null
cmake --build --preset sanitize -j "$jobs"
ctest --preset sanitize -j "$jobs" | tee .cache/ctest-sanitize.log | tail -n 8

cmake --preset fuzz >/dev/null
cmake --build --preset fuzz -j "$jobs"
ctest --preset fuzz -j "$jobs" | tee .cache/ctest-fuzz.log | tail -n 8

# What a failing test printed (the logs above show only their tails): 80 lines from each failure.
for log in .cache/ctest-host.log .cache/ctest-sanitize.log .cache/ctest-fuzz.log; do
  awk '/\*\*\*(Failed|Exception|Timeout)/ { left = 80; print "--- " FILENAME } left > 0 { print; left-- }' "$log"
done

# The closing line, over all three runs.
passed=0; failed=0; total=0
for log in .cache/ctest-host.log .cache/ctest-sanitize.log .cache/ctest-fuzz.log; do
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$log" | tail -n 1)
  f=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
  t=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/' <<<"$line")
  failed=$((failed + f)); total=$((total + t))
done
passed=$((total - failed))
echo "all runs: ${passed} passed, ${failed} failed"
[ "$failed" -eq 0 ]
