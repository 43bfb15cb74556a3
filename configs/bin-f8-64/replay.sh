#!/usr/bin/env bash
# Replays the ten stages that made weights/bin-f8-64, in order: the commands of its README ("How it
# was made"), which says what each stage changed (docs/log/tokenizers-trials.md: why).
#
#   bash configs/bin-f8-64/replay.sh                  # exports go to runs/export/<name>
#   OUT=/data/bin-replay bash configs/bin-f8-64/replay.sh
#   DRY=1 bash configs/bin-f8-64/replay.sh            # print the commands only
#
# Each stage starts from the one before by name (model.init), looked up on MMTOK_WEIGHTS=$OUT:weights,
# so the replay builds on its own exports, and nothing under weights/ is written. Where a config's
# init names a model that changed meaning along the way (`bin-f8-64` was stage 4 for stage 5, and
# stage 7 for stage 8), --set model.init names the replayed stage. A stage whose export exists is
# skipped, so a killed replay continues when run again. The result is $OUT/bin-f8-64 (copy its
# model.safetensors and config.json to weights/bin-f8-64/ to ship it). Wall time: stages 1-2 took 7
# minutes on one H200; the rest about 20 hours on one CPU thread (weights/bin-f8-64/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/export}
export MMTOK_WEIGHTS="$OUT:weights"
C=configs/bin-f8-64

run() { if [ -n "${DRY:-}" ]; then echo "$*"; else "$@"; fi; }
train() {  # train EXPORT_NAME CONFIG [mmtok train options]
  local name=$1 config=$2
  shift 2
  if [ -z "${DRY:-}" ] && [ -f "$OUT/$name/model.safetensors" ]; then echo "replay: $OUT/$name exists"; return; fi
  run mmtok train "$config" --export "$OUT/$name" "$@"
}
average() {  # average EXPORT_NAME INGREDIENT... [--require-equal PREFIX]
  local name=$1
  shift
  if [ -z "${DRY:-}" ] && [ -f "$OUT/$name/model.safetensors" ]; then echo "replay: $OUT/$name exists"; return; fi
  run python scripts/average_weights.py "$OUT/$name" "$@"
}

train bin-f8-64-s1 $C/bin-f8-64-s1.yaml --max-steps 2900        # 1: whole model, from scratch
train bin-f8-64-gpu2 $C/bin-f8-64.yaml --max-steps 2200         # 2: whole model
train bin-f8-64-dec $C/bin-f8-64-dec.yaml                       # 3: decoder alone, L2 loss
train bin-f8-64-hue $C/bin-f8-64-hue.yaml                       # 4: whole model, hue-rotated shapes
train bin-f8-64-b32 $C/bin-f8-64-b32.yaml --set model.init=bin-f8-64-hue   # 5: widened to 32 bits
train percept-shapes64 configs/percept-shapes64.yaml            # the perceptual network
train bin-f8-64-b32-percept $C/bin-f8-64-b32-percept.yaml       # 6: whole model, + perceptual
train bin-f8-64-b32-consist2 $C/bin-f8-64-b32-consist2.yaml     # 7a: decoder, + consistency (all heads)
train bin-f8-64-b32-consist-shape $C/bin-f8-64-b32-consist-shape.yaml   # 7b: (shape head)
average bin-f8-64-s7 bin-f8-64-b32-percept bin-f8-64-b32-consist2 bin-f8-64-b32-consist-shape \
    --require-equal encoder.                                    # 7: the average of three decoders
S7=(--set model.init=bin-f8-64-s7)
train bin-f8-64-b32-consist-palette $C/bin-f8-64-b32-consist-palette.yaml "${S7[@]}"   # 8a
train bin-f8-64-b32-consist-palette2 $C/bin-f8-64-b32-consist-palette2.yaml            # 8b: 8a again
train bin-f8-64-b32-consist-palette-w1 $C/bin-f8-64-b32-consist-palette-w1.yaml "${S7[@]}"   # 8c
train bin-f8-64-b32-consist-mixcrowd-acc4 $C/bin-f8-64-b32-consist-mixcrowd-acc4.yaml "${S7[@]}"   # 8d
average bin-f8-64-s8 bin-f8-64-s7 bin-f8-64-b32-consist-palette bin-f8-64-b32-consist-palette2 \
    bin-f8-64-b32-consist-palette-w1 bin-f8-64-b32-consist-mixcrowd-acc4 --require-equal encoder.   # 8
train percept-shapes64-hue configs/percept-shapes64-hue.yaml    # 9a: the hue-trained perceptual network
RUNS=(dualpercept dualpercept-hc dualpercept2 dualpercept-hc2                 # 9b-9e: stage 9's four
    dualpercept3 dualpercept-hc3 dualpercept4 dualpercept-hc4)                # 10a-10d: four more seeds
for r in "${RUNS[@]}"; do train "bin-f8-64-$r" "$C/bin-f8-64-$r.yaml"; done   # whole model, from stage 8
average bin-f8-64 "${RUNS[@]/#/bin-f8-64-}"                     # 10: the average of the eight (shipped)
