#!/usr/bin/env bash
# The blockdiff program on the GPU against itself on the host: `generate` on the f32 golden model
# (block/sub-block 32/8, each cache, thresholds 0.9 and 1.0, with and without the commit forward)
# must give the same tokens and forward counts, and `eval` on the embedded models the same
# accuracy, tokens and forwards. Run by scripts/gpu_checks.sh (parity) on a machine with a GPU.
#
#   bash scripts/device_cli_check.sh path/to/blockdiff
set -uo pipefail
cd "$(dirname "$0")/.."
exe=${1:?usage: device_cli_check.sh path/to/blockdiff}
model=tests/data/golden/model-f32-tied
fails=0 cases=0

# The fields that must agree: everything but wall-clock time and the device's name.
same() {
  local what=$1
  shift
  local host cuda
  host=$("$exe" "$@" --device host --json 2>&1 | sed -E 's/"(seconds|tokens_per_second|device)":[^,}]*,?//g')
  cuda=$("$exe" "$@" --device cuda --json 2>&1 | sed -E 's/"(seconds|tokens_per_second|device)":[^,}]*,?//g')
  cases=$((cases + 1))
  if [ "$host" != "$cuda" ]; then
    fails=$((fails + 1))
    echo "device_cli: $what differs"
    echo "  host: $host"
    echo "  cuda: $cuda"
  fi
}

for cache in none block hierarchical; do
  for tau in 0.9 1.0; do
    for commit in "" --no-commit; do
      same "generate --cache $cache --threshold $tau $commit" generate --model "$model" --prompt-ids 41,48,55,62 \
        --block 32 --sub-block 8 --cache "$cache" --threshold "$tau" $commit --max-new-tokens 48 --ignore-eos
    done
  done
done
same "eval --ar" eval --model models/tasks-ar --ar --n 40 --batch 4 --max-new-tokens 64
same "eval 8/4 hierarchical" eval --model models/tasks-fdllm2 --n 40 --batch 4 --block 8 --sub-block 4 \
  --cache hierarchical --max-new-tokens 64
echo "device_cli: $cases cases, $fails differ"
[ "$fails" -eq 0 ]
