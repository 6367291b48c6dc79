#!/usr/bin/env bash
# The blockdiff program on the GPU against itself on the host: `generate` on the f32 golden model
# (block/sub-block 32/8, each cache, thresholds 0.9 and 1.0, with and without the commit forward)
# and `ar` must give the same tokens and forward counts, `logits` the same values within f32
# rounding, `chat` the same replies, and `eval` and `study` on the embedded models the same
# accuracy, tokens and forwards. Run by scripts/gpu_checks.sh (parity) on a machine with a GPU.
#
#   bash scripts/device_cli_check.sh path/to/blockdiff
set -uo pipefail
cd "$(dirname "$0")/.."
exe=${1:?usage: device_cli_check.sh path/to/blockdiff}
model=tests/data/golden/model-f32-tied
fails=0 cases=0

# One case: what `show host` prints must equal what `show cuda` prints.
check() {
  local what=$1 show=$2
  local host cuda
  host=$($show host)
  cuda=$($show cuda)
  cases=$((cases + 1))
  if [ "$host" != "$cuda" ]; then
    fails=$((fails + 1))
    echo "device_cli: $what differs"
    echo "  host: $host"
    echo "  cuda: $cuda"
  fi
}

# A command's JSON, with the fields that must agree: everything but wall-clock time and the
# device's name.
json_of() {
  "$exe" "${command[@]}" --device "$1" --json 2>&1 | sed -E 's/"(seconds|tokens_per_second|device)":[^,}]*,?//g'
}
same() {
  local what=$1
  shift
  command=("$@")
  check "$what" json_of
}

for cache in none block hierarchical; do
  for tau in 0.9 1.0; do
    for commit in "" --no-commit; do
      same "generate --cache $cache --threshold $tau $commit" generate --model "$model" --prompt-ids 41,48,55,62 \
        --block 32 --sub-block 8 --cache "$cache" --threshold "$tau" $commit --max-new-tokens 48 --ignore-eos
    done
  done
done
same "ar" ar --model "$model" --prompt-ids 41,48,55,62 --max-new-tokens 48 --ignore-eos

# logits: f32 arithmetic in another order, so every value within 2e-5 of the largest host value.
close() {
  local what=$1
  shift
  local host cuda
  host=$("$exe" "$@" --device host --json 2>&1 | tr -c '0-9eE.+-' '\n' | grep -v '^$')
  cuda=$("$exe" "$@" --device cuda --json 2>&1 | tr -c '0-9eE.+-' '\n' | grep -v '^$')
  cases=$((cases + 1))
  if [ "$(echo "$host" | wc -l)" != "$(echo "$cuda" | wc -l)" ] ||
    ! paste <(echo "$host") <(echo "$cuda") |
      awk '{ d = $1 - $2; if (d < 0) d = -d; if (d > e) e = d; a = $1 < 0 ? -$1 : $1; if (a > m) m = a }
           END { exit !(e <= 2e-5 * m) }'; then
    fails=$((fails + 1))
    echo "device_cli: $what differs beyond 2e-5 of the largest logit"
  fi
}
ids=$(seq -s, 3 7 170)
close "logits causal" logits --model "$model" --ids "$ids"
close "logits block-causal 8" logits --model "$model" --ids "$ids" --mask block-causal --block 8
close "logits block-causal 32" logits --model "$model" --ids "$ids" --mask block-causal --block 32

# chat streams the same replies.
chat() {
  printf 'a:47+8-5+9=\n/reset\na:12-3+4=\n/quit\n' |
    "$exe" chat --model models/tasks-fdllm2 --raw --block 8 --sub-block 4 --max-new-tokens 24 --device "$1" 2>&1
}
check "chat" chat

same "eval --ar" eval --model models/tasks-ar --ar --n 40 --batch 4 --max-new-tokens 64
same "eval 8/4 hierarchical" eval --model models/tasks-fdllm2 --n 40 --batch 4 --block 8 --sub-block 4 \
  --cache hierarchical --max-new-tokens 64
# study: every configuration the GPU compiles (threshold at 8/4: 32 of the host's rows) must give
# the host's accuracy, tokens and forwards.
study_dir=$(mktemp -d)
for device in host cuda; do
  "$exe" study --ar-model models/tasks-ar --model models/tasks-fdllm2 --n 40 --batch 4 --repeats 1 --no-plot \
    --device "$device" --out "$study_dir/$device" >/dev/null 2>&1
done
counts() { cut -d, -f1-9,13-15,18 "$study_dir/$1/study.csv" 2>/dev/null | sort; }
cases=$((cases + 1))
missing=$(comm -13 <(counts host) <(counts cuda))
if [ "$(counts cuda | wc -l)" != 33 ] || [ -n "$missing" ]; then  # 32 rows and the header
  fails=$((fails + 1))
  echo "device_cli: study --device cuda has $(counts cuda | wc -l) lines; not among the host's:"
  echo "$missing"
fi

echo "device_cli: $cases cases, $fails differ"
[ "$fails" -eq 0 ]
