#!/usr/bin/env bash
# The evaluation command: samples the held-out prompts (models/prompts/eval.txt) from the committed
# demo base model alone and guided by its ARMs, scores every sample with the transparent scorers
# (eval/scorers.h) and writes a table (results.md, results.csv, winrates.json) and PNG plots
# (reward_vs_beta.png, front.png) to OUT (default models/eval), plus the raw samples.jsonl.
#
# Configurations (weights for ARM 1 = arm-positive, ARM 2 = arm-concise, then @beta):
#   base-only; each single ARM at beta 2, 1, 0.5 (the default), 0.25; the two-ARM sweep
#   (w, 1-w) for w = 0, 0.25, 0.5, 0.75, 1 at beta 0.5.
# 4 samples per prompt and configuration, 32 tokens, T=1, seeds 1..4 in every configuration.
#   BUILD_DIR  build folder (default build)   MODELS  model folder (default models)
#   OUT        output folder (default $MODELS/eval)   N  samples per prompt (default 4)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
models=${MODELS:-models}
out=${OUT:-$models/eval}
beta=0.5
mkdir -p "$out"
cfg=(--config base)
for b in 2 1 0.5 0.25; do cfg+=(--config "1,0@$b" --config "0,1@$b"); done
cfg+=(--config "0.75,0.25@$beta" --config "0.5,0.5@$beta" --config "0.25,0.75@$beta")
"$build/tools/genarm-eval" --model "$models/base" --arm "$models/arm-positive" --arm "$models/arm-concise" \
  --prompts models/prompts/eval.txt --lexicon eval/afinn-165.tsv --out "$out/samples.jsonl" \
  "${cfg[@]}" -n "${N:-4}" --max-tokens 32 --temperature 1 --seed 1 --threads 1
/usr/bin/python3 eval/summarize.py "$out/samples.jsonl" --out "$out" --default-beta $beta \
  --arm-names sentiment,concise
