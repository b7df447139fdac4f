#!/usr/bin/env bash
# The embedded default: install what is missing, build, then decode with the project's trained demo
# models (models/, made by scripts/train_demo.sh): a small base model trained on the Debian `fortunes`
# corpus, and two autoregressive reward models trained from preference pairs of the base model's own
# samples: arm-positive (AFINN-165 sentiment) and arm-concise (fewer words per sentence).
#
# For one prompt it shows a base-only continuation and one under each profile (same seed), scored by
# the two transparent scoring functions (eval/scorers.h), then the mean scores of each profile over
# 16 samples, then the same through the `genarm` CLI with the ARM reward of each continuation. The models are tiny
# (1.2M parameters, 32 generated tokens), so expect fortune-cookie English, not fluent prose; what
# the demo shows is that guidance moves the text the way each profile's preferences say.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
build=${BUILD_DIR:-build}
bin=$build/tools
models=models
prompt=${DEMO_PROMPT:-"Life is a"}
beta=0.5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '%s\n' "$prompt" >"$tmp/prompt.txt"

echo "GenARM demo: prompt \"$prompt\", T=1, beta=$beta, 32 tokens (trained demo models, models/README.md)"
echo "Scores: sentiment = sum of AFINN-165 word valences (higher = more positive);"
echo "        words per sentence (lower = more concise)."
"$bin/genarm-eval" --model "$models/base" --arm "$models/arm-positive" --arm "$models/arm-concise" \
  --prompts "$tmp/prompt.txt" --lexicon eval/afinn-165.tsv --show -n 16 --max-tokens 32 \
  --temperature 1 --seed 7 --threads 0 \
  --config "base only=base" \
  --config "guided by arm-positive (weights 1, 0)=1,0@$beta" \
  --config "guided by arm-concise (weights 0, 1)=0,1@$beta" \
  --config "guided by both (weights 0.5, 0.5)=0.5,0.5@$beta"
echo
echo "The same through the genarm CLI (generate, then score: an ARM's reward is the sum of its token log-probs):"
for arm in "" arm-positive; do
  args=()
  [ -n "$arm" ] && args=(--arm "$models/$arm:1" --beta "$beta")
  text=$("$bin/genarm" generate --model "$models/base" "${args[@]}" --prompt "$prompt" --max-tokens 32 \
    --temperature 1 --seed 7 --no-stream 2>/dev/null)
  r=$("$bin/genarm" score --arm "$models/arm-positive" --prompt "$prompt" --response "$text" 2>/dev/null |
    awk '/^total/ {print $2}')
  printf '\n  %s:\n  %s%s\n  reward under arm-positive: %s\n' "${arm:-base only}" "$prompt" "$text" "$r"
done
echo
echo "Full evaluation (60 held-out prompts, beta sweep, two-ARM front): eval/run_eval.sh -> models/eval/"
echo "Retrain every model from scratch (about 7 minutes on one core): scripts/train_demo.sh"

echo
echo "The same models served on this machine: redis-server, base_worker, two reward_workers and the"
echo "coordinator on loopback (deploy/run_local.sh), the prompt answered under each tenant profile (T=0):"
deploy/run_local.sh --build "$build" --base models/base --arm1 models/arm-positive --arm2 models/arm-concise \
  --names positive,concise --prompt "$prompt" --max-tokens 32
