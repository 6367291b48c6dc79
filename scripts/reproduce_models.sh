#!/usr/bin/env bash
# Trains the embedded default models from scratch (about 30 minutes on 2 cores: 4.5 for the AR base, 25 for the fine-tune):
#   models/tasks-ar      AR pretraining on the synthetic tasks (the baseline)
#   models/tasks-fdllm2  the AR base fine-tuned with the Fast-dLLM v2 recipe (+pad +CM, token
#                        shift, block 8, the per-block linear schedule)
# Same seeds and thread count give the same weights.
set -euo pipefail
source "$(dirname "$0")/build_cli.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
out="${OUT:-models}"
$bin train --task mix --examples 50000 --preset tasks --objective ar --context 64 --batch 16 \
  --steps "${AR_STEPS:-4000}" --lr 2e-3 --warmup 200 --decay cosine --seed 1 --out "$out/tasks-ar" --overwrite
$bin train --task mix --examples 50000 --init "$out/tasks-ar" --objective fdllm2 --block 8 --context 64 --batch 8 \
  --steps "${FT_STEPS:-12000}" --lr 1e-3 --warmup 100 --decay cosine --seed 2 --out "$out/tasks-fdllm2" --overwrite
