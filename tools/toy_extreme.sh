#!/usr/bin/env bash
# Beyond 7x on the shipped toy weights: the planner's RALU schedules (plan:X) against the Euler and UniPC step
# cuts of the same FLOPs at about 10x, 12.5x and 16.7x (5, 4 and 3 steps), on held-out captions, each its own
# noise (seed 0). WORK may be a tools/toy_study.sh folder: its 50-step baseline images are reused.
#
#   bash tools/toy_extreme.sh WORK [CAPTIONS]     # CAPTIONS: default 256; about 9 min on two CPU cores with the baseline on disk
set -euo pipefail
work=${1:?usage: bash tools/toy_extreme.sh WORK [CAPTIONS]}
captions=${2:-256}
ralu=${RALU:-ralu}
methods="baseline:50"
pairs=()
for cost in "10 5" "12.5 4" "16.7 3"; do
  set -- $cost
  methods="$methods plan:$1 steps:$2 unipc:$2"
  pairs+=(--pair "plan:$1=steps:$2" --pair "plan:$1=unipc:$2")
done
pairs+=(--pair "steps:5=baseline:50" --pair "steps:3=baseline:50")
$ralu eval generate toy --methods $methods --prompts "toy:$captions" --seeds 1 --batch-size 32 --out "$work"
$ralu eval score "$work" --metrics toy_readback toy_edges toy_fid psnr "${pairs[@]}"
$ralu eval report "$work" --title "${TITLE:-Toy study beyond 7x: $captions held-out captions, seed 0}" \
  --plot set:toy_fid/kid/vs_truth toy_readback.all
