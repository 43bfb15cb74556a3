#!/usr/bin/env bash
# Replays the six stages that made weights/kl-f8-64, in order: the commands of its README ("How it
# was made"); each config's header says what its stage changed (docs/log/tokenizers-trials.md: why).
#
#   bash configs/kl-f8-64/replay.sh                   # exports go to runs/export/<name>
#   OUT=/data/kl-replay bash configs/kl-f8-64/replay.sh
#   DRY=1 bash configs/kl-f8-64/replay.sh             # print the commands only
#
# Each stage starts from the one before by name (model.init), looked up on MMTOK_WEIGHTS=$OUT:weights,
# so the replay builds on its own exports, and nothing under weights/ is written. A stage whose
# export exists is skipped, so a killed replay continues when run again. The result is $OUT/kl-f8-64
# (copy its model.safetensors and config.json to weights/kl-f8-64/ to ship it). Wall time: stages
# 1-2 took 7 minutes on one H200, stages 3-6 about 5 hours on one CPU thread.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/export}
export MMTOK_WEIGHTS="$OUT:weights"
C=configs/kl-f8-64

run() { if [ -n "${DRY:-}" ]; then echo "$*"; else "$@"; fi; }
train() {  # train EXPORT_NAME CONFIG [mmtok train options]
  local name=$1 config=$2
  shift 2
  if [ -z "${DRY:-}" ] && [ -f "$OUT/$name/model.safetensors" ]; then echo "replay: $OUT/$name exists"; return; fi
  run mmtok train "$config" --export "$OUT/$name" "$@"
}

train kl-f8-64-s1 $C/kl-f8-64-s1.yaml --max-steps 2900          # 1: whole model, from scratch
train kl-f8-64-gpu2 $C/kl-f8-64.yaml --max-steps 2200           # 2: whole model (latents fixed here)
train kl-f8-64-dec $C/kl-f8-64-dec.yaml                         # 3: decoder, L1, 1,000 steps
train kl-f8-64-dec2-3000 $C/kl-f8-64-dec2.yaml --max-steps 3000 # 4: decoder, L2, 3,000 steps
train kl-f8-64-dec3 $C/kl-f8-64-dec3.yaml                       # 5: decoder, L2, photos 90%
train kl-f8-64 $C/kl-f8-64-ref-aug.yaml                         # 6: + full-res head, turned photos (shipped)
