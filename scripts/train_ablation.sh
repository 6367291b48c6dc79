#!/usr/bin/env bash
# The training ablation of the paper's Table 2 at this scale: from the same AR base and the same
# budget (steps, batch, learning rate, seed), fine-tune
#   naive token shift     no padding, one view            (--no-pad --no-complementary)
#   + pad                 block-aligned [MASK] padding     (--no-complementary)
#   + pad + CM            padding and complementary views  (the paper's recipe)
#   + pad + CM, no shift  position i predicted from i      (--no-token-shift)
# and evaluate each on the held-out split at threshold 1.0 and 0.9 (block 8, sub-block 4,
# hierarchical cache). Writes results/train_ablation/train_ablation.csv.
#
#   STEPS=600 N=200 bash scripts/train_ablation.sh
set -euo pipefail
source "$(dirname "$0")/build_cli.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
out="${OUT:-results/train_ablation}"
mkdir -p "$out"
csv="$out/train_ablation.csv"
echo "recipe,threshold,accuracy,tokens_per_forward,tokens_per_second,final_loss" > "$csv"
variants=("naive-token-shift:--no-pad --no-complementary" "pad:--no-complementary" "pad-cm:" "pad-cm-no-shift:--no-token-shift")
for v in "${variants[@]}"; do
  name="${v%%:*}"; flags="${v#*:}"
  echo "== $name ($flags)" >&2
  # shellcheck disable=SC2086
  $bin train --task mix --examples 50000 --init models/tasks-ar --objective fdllm2 --block 8 $flags --context 64 \
    --batch 8 --steps "${STEPS:-600}" --lr 1e-3 --warmup 50 --decay cosine --seed 2 --out "$out/$name" --overwrite --quiet >/dev/null
  loss=$(tail -n 20 "$out/$name/loss.csv" | awk -F, '{s += $2} END {printf "%.4f", s / NR}')
  for thr in 1.0 0.9; do
    r=$($bin eval --model "$out/$name" --task mix --n "${N:-200}" --block 8 --sub-block 4 --cache hierarchical \
        --threshold "$thr" --json)
    /usr/bin/python3 - "$r" "$name" "$thr" "$loss" >> "$csv" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print(f"{sys.argv[2]},{sys.argv[3]},{r['accuracy']:.4f},{r['tokens_per_forward']:.3f},{r['tokens_per_second']:.0f},{sys.argv[4]}")
PY
  done
done
/usr/bin/python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"{'recipe':<20} {'loss (last 20)':>14} {'acc @1.0':>9} {'acc @0.9':>9} {'tok/fwd @0.9':>13}")
for name in dict.fromkeys(r["recipe"] for r in rows):
    a = {r["threshold"]: r for r in rows if r["recipe"] == name}
    print(f"{name:<20} {float(a['1.0']['final_loss']):>14.4f} {100 * float(a['1.0']['accuracy']):>8.1f}% "
          f"{100 * float(a['0.9']['accuracy']):>8.1f}% {float(a['0.9']['tokens_per_forward']):>13.2f}")
print(f"wrote {sys.argv[1]}")
PY
