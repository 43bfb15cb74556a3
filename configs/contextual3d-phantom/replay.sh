#!/usr/bin/env bash
# Replays the two stages that made weights/contextual3d-phantom, in order (its README, "How it was
# made"; docs/grounding.md has the figures of both stages and of the baselines).
#
#   bash configs/contextual3d-phantom/replay.sh       # exports go to runs/export/<name>
#   OUT=/data/ctx-replay bash configs/contextual3d-phantom/replay.sh
#   DRY=1 bash configs/contextual3d-phantom/replay.sh # print the commands only
#
# Stage 2 starts from stage 1 by name: the replay exports stage 1 as contextual3d-phantom-s1 and
# points stage 2's model.init at it (--set), on MMTOK_WEIGHTS=$OUT:weights, so nothing under
# weights/ is written or read in its place. A stage whose export exists is skipped. The result is
# $OUT/contextual3d-phantom. Wall time: about 53 + 45 minutes on one CPU thread.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/export}
export MMTOK_WEIGHTS="$OUT:weights"
C=configs/contextual3d-phantom

run() { if [ -n "${DRY:-}" ]; then echo "$*"; else "$@"; fi; }
train() {  # train EXPORT_NAME CONFIG [mmtok train options]
  local name=$1 config=$2
  shift 2
  if [ -z "${DRY:-}" ] && [ -f "$OUT/$name/model.safetensors" ]; then echo "replay: $OUT/$name exists"; return; fi
  run mmtok train "$config" --export "$OUT/$name" "$@"
}

train contextual3d-phantom-s1 $C/contextual3d-phantom.yaml      # 1: 2,000 steps, 40 phantoms
train contextual3d-phantom $C/contextual3d-phantom-contrast400.yaml \
    --set model.init=contextual3d-phantom-s1                    # 2: + level-2 gate, contrastive pairs, 400 phantoms
