#!/usr/bin/env bash
# The main job on the default model: AR decoding against Fast-dLLM v2 block-diffusion decoding,
# over the paper's thresholds and the three cache strategies.
#
# The trained default model is not shipped yet: this demo creates a small random checkpoint
# with `blockdiff init` (peaked next-token distributions, so parallel decoding accepts several
# tokens in some steps) and says so. Random weights make tokens/s and forwards per token
# meaningful; accuracy is not.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
export CCACHE_DIR="${CCACHE_DIR:-$PWD/.cache/ccache}"
cmake --preset host >/dev/null
cmake --build --preset host --target blockdiff_cli -j "$(nproc)"
bin=build/host/examples/blockdiff
model=.cache/demo-model
echo "blockdiff demo: no trained default model yet; creating a random 'tiny' checkpoint in $model"
$bin init --out "$model" --preset tiny --seed 1 >/dev/null
prompt="41,48,55,62,69,76,83,90,97,104,111"
printf '\n%-34s %8s %10s %12s %10s\n' "decoder" "tokens" "forwards" "tok/forward" "tok/s"
ar=$($bin ar --model "$model" --prompt-ids "$prompt" --max-new-tokens 256 --ignore-eos --json)
/usr/bin/python3 - "$ar" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); n = len(r["tokens"]); f = r["nfe"]["prefill"] + r["nfe"]["decode"]
print(f"{'AR (greedy, KV cache)':<34} {n:8d} {f:10d} {n / f:12.2f} {n / r['seconds']:10.0f}")
PY
for cache in none block hierarchical; do
  for thr in 1.0 0.9 0.7 0.5; do
    out=$($bin generate --model "$model" --prompt-ids "$prompt" --max-new-tokens 256 --block 32 --sub-block 8 \
          --threshold "$thr" --cache "$cache" --ignore-eos --json)
    /usr/bin/python3 - "$out" "$cache" "$thr" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); n = len(r["tokens"]); nfe = r["nfe"]
print(f"{'fdllm2 ' + sys.argv[2] + ' thr ' + sys.argv[3]:<34} {n:8d} {sum(nfe.values()):10d} {r['tokens_per_forward']:12.2f} {n / r['seconds']:10.0f}")
PY
  done
done
echo
$bin generate --model "$model" --prompt-ids "$prompt" --max-new-tokens 32 --threshold 0.7 --show-order --json >/dev/null
