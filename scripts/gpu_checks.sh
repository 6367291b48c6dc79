#!/usr/bin/env bash
# The checks that need a GPU, for a machine that has one but may lack a compiler.
#
#   bash scripts/gpu_checks.sh pack            # here: build the CUDA binaries into build/gpu/
#   bash scripts/gpu_checks.sh STAGE [STAGE..] # there, from the repository root, with build/gpu/
#
# Stages, in the order worth running them (each writes <stage>.log under $OUT, or results/gpu):
#   first       for a session with one short call: every CUDA test, the program's --device cuda,
#               and bench_cuda_decode's forward shapes and end-to-end runs (under 8.5 minutes)
#   parity      every CUDA test: operations, whole models and decodes, sampling, training; and the
#               blockdiff program's --device cuda against --device host (generate, eval)
#   bench       bench_cuda_decode (BF16 weights) and bench_cuda_study (the study's headline on the
#               embedded models)
#   bench-train bench_cuda_train
#   bench-f32   bench_cuda_decode's forwards and end-to-end runs with f32 weights
#   memcheck    compute-sanitizer memcheck over every case but the whole decodes, and over the
#               decode benchmark's recorded graphs
#   memcheck-decodes   memcheck over the whole decodes, graphs off, then on with blocking launches
#   racecheck   compute-sanitizer racecheck over every case but the whole decodes
# Each stage stays under 10 minutes. The exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=build/gpu
out="${OUT:-results/gpu}"

if [ "${1:-}" = "pack" ]; then
  set -e
  export CCACHE_DIR="${CCACHE_DIR:-$PWD/.cache/ccache}"
  cmake --preset host -DBLOCKDIFF_BUILD_BENCH=ON >/dev/null
  cmake --build --preset host --target test_cuda_parity bench_cuda_decode bench_cuda_study bench_cuda_train blockdiff_cli
  mkdir -p "$bin/lib"
  cp build/host/tests/test_cuda_parity build/host/bench/bench_cuda_{decode,study,train} build/host/examples/blockdiff \
    build/host/examples/blockdiff-cuda.so "$bin/"
  # The shared libraries the device machine may not have: Google Benchmark's, and the tokenizer's.
  for lib in $(ldd "$bin/bench_cuda_decode" "$bin/blockdiff" | awk '/libbenchmark|libutf8proc|libpcre2/ {print $3}' | sort -u); do
    cp -L "$lib" "$bin/lib/"
  done
  du -sh "$bin"
  echo "carry build/gpu, then run: bash scripts/gpu_checks.sh first (or parity bench, then bench-train, bench-f32, memcheck, memcheck-decodes, racecheck)"
  exit 0
fi

for stage in "$@"; do
  case "$stage" in first | parity | bench | bench-train | bench-f32 | memcheck | memcheck-decodes | racecheck) ;;
    *) echo "unknown stage \"$stage\" (pack, or: first, parity, bench, bench-train, bench-f32, memcheck, memcheck-decodes, racecheck)" >&2
       exit 2 ;;
  esac
done
[ $# -gt 0 ] || { sed -n '2,20p' "$0"; exit 2; }
[ -x "$bin/test_cuda_parity" ] || { echo "no $bin/test_cuda_parity: run 'bash scripts/gpu_checks.sh pack' first" >&2; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "no GPU here" >&2; exit 77; }
mkdir -p "$out"
export BLOCKDIFF_TEST_DATA="$PWD/tests/data" LD_LIBRARY_PATH="$PWD/$bin/lib:${LD_LIBRARY_PATH:-}"
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
status=0

# run LOG LIMIT_S COMMAND...: appends the command's output to LOG, with its status and time.
run() {
  local name=$1 log="$out/$1" limit=$2
  shift 2
  echo "\$ $*" >>"$log"
  local start=$SECONDS
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "exit $rc after $((SECONDS - start)) s" >>"$log"
  local cmd="$*"
  echo "$name: ${cmd//$PWD\//} ... exit $rc, $((SECONDS - start)) s"
  [ $rc -eq 0 ] || [ $status -ne 0 ] || status=$rc
  return 0
}
summary() { grep -E "$2" "$out/$1" | tail -n "${3:-6}"; }

for stage in "$@"; do
  case "$stage" in
    first)
      run first.log 240 "$bin/test_cuda_parity"
      run first.log 90 bash scripts/device_cli_check.sh "$bin/blockdiff"
      run first.log 180 "$bin/bench_cuda_decode" --benchmark_filter='forward_shapes/context:256/(graphs|direct)$|end_to_end'
      summary first.log "test cases|assertions|FAILED|ERROR|device_cli|cuda/forward_shapes|cuda/end_to_end|exit" 30 ;;
    parity)
      run parity.log 300 "$bin/test_cuda_parity"
      run parity.log 120 bash scripts/device_cli_check.sh "$bin/blockdiff"
      summary parity.log "test cases|assertions|FAILED|ERROR|device_cli" 8 ;;
    memcheck)
      [ -n "$sanitizer" ] || { echo "no compute-sanitizer" >&2; status=2; continue; }
      run memcheck.log 360 "$sanitizer" --tool memcheck "$bin/test_cuda_parity" -tce="*whole decodes*"
      run memcheck.log 200 env BLOCKDIFF_BENCH_PRESET=qwen2.5-0.5b "$sanitizer" --tool memcheck "$bin/bench_cuda_decode" \
        --benchmark_filter='forward_shapes/context:256/graphs$'
      summary memcheck.log "ERROR SUMMARY|test cases|exit" 8 ;;
    memcheck-decodes)
      [ -n "$sanitizer" ] || { echo "no compute-sanitizer" >&2; status=2; continue; }
      run memcheck-decodes.log 280 env BLOCKDIFF_CUDA_GRAPHS=0 "$sanitizer" --tool memcheck "$bin/test_cuda_parity" \
        -tc="*whole decodes*"
      run memcheck-decodes.log 280 "$sanitizer" --tool memcheck --force-blocking-launches "$bin/test_cuda_parity" \
        -tc="*whole decodes*"
      summary memcheck-decodes.log "ERROR SUMMARY|test cases|exit" 8 ;;
    racecheck)
      [ -n "$sanitizer" ] || { echo "no compute-sanitizer" >&2; status=2; continue; }
      run racecheck.log 540 "$sanitizer" --tool racecheck "$bin/test_cuda_parity" -tce="*whole decodes*"
      summary racecheck.log "RACECHECK SUMMARY|test cases|exit" ;;
    bench)
      run bench.log 330 "$bin/bench_cuda_decode"
      run bench.log 150 env BLOCKDIFF_MODELS="$PWD/models" "$bin/bench_cuda_study"
      summary bench.log "cuda/forward_shapes|cuda/attention|cuda/unmask|cuda/end_to_end|study/|ERROR|exit" 60 ;;
    bench-train)
      run bench-train.log 180 "$bin/bench_cuda_train"
      summary bench-train.log "train_step|ERROR|exit" 12 ;;
    bench-f32)
      run bench-f32.log 240 env BLOCKDIFF_BENCH_WEIGHTS=f32 "$bin/bench_cuda_decode" --benchmark_filter='forward_shapes/context:256/(graphs|direct)$|end_to_end'
      summary bench-f32.log "cuda/forward_shapes|cuda/end_to_end|ERROR|exit" 12 ;;
  esac
done
exit $status
