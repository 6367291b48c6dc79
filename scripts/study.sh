#!/usr/bin/env bash
# The main job: the ablation study on the embedded default models (models/tasks-ar, the AR base,
# and models/tasks-fdllm2, its Fast-dLLM v2 fine-tune). AR decoding against block-diffusion
# decoding over thresholds, caches, sub-block sizes, unmasking policies and inference block
# sizes, on the held-out split of the synthetic tasks, then the same prompts as multiple choice
# scored by log-likelihood (the paper's MMLU protocol). Prints the tables; writes
# results/study/study.csv, results/study/choices.csv and results/study/study.svg (accuracy
# against tokens/s).
#
#   N=200 BATCH=1 bash scripts/study.sh
set -euo pipefail
source "$(dirname "$0")/build_cli.sh"
# One thread: the embedded model's products are a few microseconds each, less than a second
# thread costs to wake (docs/performance.md); set OMP_NUM_THREADS to override.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
"$bin" study --ar-model models/tasks-ar --model models/tasks-fdllm2 --task mix \
  --n "${N:-200}" --batch "${BATCH:-1}" --block 8 --sub-block 4 --out "${OUT:-results/study}"
