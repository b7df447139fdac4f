#!/bin/sh
# Regenerates tests/train/fixtures/ref_<arch>.safetensors: the loss and every
# parameter gradient of tiny models on a fixed batch, computed by the
# independent PyTorch reference ref_grad.py. The model flags must match
# k_ref_models in test_train_ref.c (the C test rebuilds the same models with
# gn_make_model, whose output is a function of these flags).
#   usage: tests/train/make_fixtures.sh BUILD_DIR
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: make_fixtures.sh BUILD_DIR}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
common="--dim 16 --layers 2 --heads 4 --kv-heads 2 --ffn 32 --merges 30 --dtype f32 --std 0.2 --seed 3"
for arch in llama qwen2 qwen3 mistral; do
  extra=""
  [ "$arch" = mistral ] && extra="--sliding-window 4"
  "$build/tools/genarm-make-model" --arch "$arch" $common $extra --out "$tmp/$arch"
  /usr/bin/python3 "$here/ref_grad.py" "$tmp/$arch" "$here/fixtures/ref_$arch.safetensors"
done
