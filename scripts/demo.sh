#!/usr/bin/env bash
# The embedded default: install what is missing, build, make a small base model and two small
# autoregressive reward models (random weights, real Llama-2 tokenizer), then decode the same prompt
# base-only and under each ARM, and score every continuation with both ARMs.
#
# The models are random until the project's trained demo models ship, so the text itself is noise;
# what the demo shows is the mechanism: a continuation guided by an ARM earns a higher reward under
# that ARM (sum of its token log-probs) than the base model's own continuation.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build=${BUILD_DIR:-build}
bin=$build/tools
models=$build/demo-models
tok=$build/fixtures/tokenizers/llama2
mkdir -p "$models"

make_model() { # dir seed dim layers ffn std
  [ -f "$models/$1/config.json" ] && return 0
  "$bin/genarm-make-model" --arch llama --out "$models/$1" --seed "$2" --dim "$3" --layers "$4" \
    --heads 4 --kv-heads 2 --ffn "$5" --std "$6" --dtype bf16 --tokenizer-from "$tok" >/dev/null
}
make_model base 11 256 4 688 0.05
make_model arm-a 22 128 2 344 0.08
make_model arm-b 33 128 2 344 0.08

prompt="Once upon a time, in a quiet village,"
common=(--prompt "$prompt" --max-tokens 32 --temperature 0.7 --seed 7 --no-stream)
beta=0.25

run() { # label, extra generate args...
  local label=$1; shift
  local text
  text=$("$bin/genarm" generate --model "$models/base" "$@" "${common[@]}" 2>/dev/null)
  local ra rb
  ra=$("$bin/genarm" score --arm "$models/arm-a" --prompt "$prompt" --response "$text" 2>/dev/null | awk '/^total/ {print $2}')
  rb=$("$bin/genarm" score --arm "$models/arm-b" --prompt "$prompt" --response "$text" 2>/dev/null | awk '/^total/ {print $2}')
  printf '\n== %s\n%s%s\n   reward under arm-a: %s   under arm-b: %s\n' "$label" "$prompt" "$text" "$ra" "$rb"
}

echo "GenARM demo: prompt \"$prompt\", T=0.7, seed 7, beta=$beta (random-weight models, Llama-2 tokenizer)"
run "base only"
run "guided by arm-a (weight 1)" --arm "$models/arm-a:1" --beta "$beta"
run "guided by arm-b (weight 1)" --arm "$models/arm-b:1" --beta "$beta"
run "guided by arm-a and arm-b (0.5 each)" --arm "$models/arm-a:0.5" --arm "$models/arm-b:0.5" --beta "$beta"
echo
echo "Streaming, guided by arm-a:"
"$bin/genarm" generate --model "$models/base" --arm "$models/arm-a:1" --beta "$beta" \
  --prompt "$prompt" --max-tokens 32 --temperature 0.7 --seed 7
echo
