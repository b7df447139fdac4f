#!/usr/bin/env bash
# Retrains every committed demo model from scratch, deterministically, and re-runs the evaluation:
#   1. corpus: the Debian package `fortunes` (+ fortunes-min), /usr/share/games/fortunes,
#      turned into paragraphs by models/make_corpus.py (the file list is in that script);
#   2. tokenizer: byte-level BPE, 1200 merges learned from that corpus (genarm-make-tokenizer);
#   3. base model: Llama-style, dim 128, 4 layers, 4 heads / 2 KV heads, ffn 384, trained from
#      random init on the corpus (genarm-train lm, 1000 steps of 16 x 128 tokens);
#   4. the base model's own samples for the training prompts (models/prompts/train.txt,
#      8 per prompt, 32 tokens, T=1), scored by eval/scorers.h;
#   5. preference pairs per objective (eval/make_pairs.py) and two ARMs, full fine-tunes of the
#      base (genarm-train arm): arm-positive (AFINN-165 sentiment) and arm-concise (fewer words
#      per sentence);
#   6. the evaluation on the held-out prompts (eval/run_eval.sh) into models/eval/.
# Writes models/{base,arm-positive,arm-concise}/ and models/eval/. About 15 minutes on one
# core (--threads 1 throughout, so the numbers do not depend on the machine's core count).
#   BUILD_DIR  build folder (default build)    WORK  scratch folder (default $BUILD_DIR/demo-train)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
work=${WORK:-$build/demo-train}
bin=$build/tools
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
for p in fortunes fortunes-min python3-matplotlib; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$p"
done
if [ ! -x "$bin/genarm-eval" ] || [ ! -x "$bin/genarm-train" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" -j 2 --target genarm genarm-train genarm-eval genarm-make-tokenizer >/dev/null

rm -rf "$work"
mkdir -p "$work/tok"
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

step "corpus and prompts"
/usr/bin/python3 models/make_corpus.py "$work/corpus.txt" --prompts "$work/train.txt" "$work/eval.txt"
cmp -s "$work/train.txt" models/prompts/train.txt && cmp -s "$work/eval.txt" models/prompts/eval.txt ||
  echo "note: the prompt files differ from the committed models/prompts/ (fortunes package changed?)"

step "tokenizer"
"$bin/genarm-make-tokenizer" --text "$work/corpus.txt" --merges 1200 --out "$work/tok"

step "base model (genarm-train lm)"
"$bin/genarm-train" lm --init-arch llama --dim 128 --layers 4 --heads 4 --kv-heads 2 --ffn 384 \
  --tokenizer-from "$work/tok" --data "$work/corpus.txt" --out "$work/base" --steps 1000 --batch 16 \
  --seq-len 128 --lr 3e-3 --warmup 50 --wd 0.1 --threads 1 --seed 1 --save-dtype bf16 2>&1 |
  awk '/^step/ && !/^step (1|[0-9]*00)\// {next} {print}'

step "base samples for the training prompts"
"$bin/genarm-eval" --model "$work/base" --prompts models/prompts/train.txt --lexicon eval/afinn-165.tsv \
  --out "$work/samples.jsonl" -n 8 --max-tokens 32 --temperature 1 --seed 1000 --threads 1

for obj in sentiment concise; do
  case $obj in
    sentiment) arm=arm-positive; margin=2 ;;
    concise) arm=arm-concise; margin=3 ;;
  esac
  step "pairs and ARM: $arm ($obj)"
  /usr/bin/python3 eval/make_pairs.py "$work/samples.jsonl" --objective $obj --margin $margin --pairs 2 \
    --out "$work/pairs-$obj.jsonl"
  "$bin/genarm-train" arm --model "$work/base" --pairs "$work/pairs-$obj.jsonl" --beta-r 0.5 \
    --out "$work/$arm" --steps ${ARM_STEPS:-300} --batch 8 --lr 5e-4 --warmup 20 --threads 1 --seed 2 2>&1 |
    awk '/^step/ && !/^step (1|[0-9]*50|[0-9]*00)\// {next} {print}'
done

step "install into models/"
for m in base arm-positive arm-concise; do
  rm -rf "models/$m"
  mkdir -p "models/$m"
  cp "$work/$m"/{config.json,generation_config.json,model.safetensors,tokenizer.json,tokenizer_config.json} \
    "models/$m/"
done

step "evaluation on the held-out prompts"
BUILD_DIR=$build eval/run_eval.sh
step "done"
du -sh models
