#!/usr/bin/env bash
# The README's quality study on the shipped toy weights: the 50-step baseline, the RALU presets (paper's Euler
# steps, solver="unipc", noise_downsample="nearest") and every same-cost alternative (Euler and UniPC step cuts,
# MrFlow's recipe) at about 4x, 5x and 7x fewer FLOPs, on held-out captions, each its own noise (seed 0).
# With beyond7x: the planner's RALU schedules (plan:X) against the Euler and UniPC step cuts of the same FLOPs
# at about 10x, 12.5x and 16.7x (5, 4 and 3 steps); run in a copy of the study's WORK, it reuses the baseline.
#
#   bash tools/toy_study.sh WORK [CAPTIONS] [beyond7x]   # CAPTIONS: default 256; about 35 min (beyond7x: 9)
#                                                        # on two CPU cores
# WORK gets the images, scores.jsonl, report.md, summary.json and quality_vs_speedup.png.
set -euo pipefail
work=${1:?usage: bash tools/toy_study.sh WORK [CAPTIONS] [beyond7x]}
captions=${2:-256}
part=${3:-presets}
ralu=${RALU:-ralu}
methods="baseline:50"
pairs=()
if [ "$part" = beyond7x ]; then
  for cost in "10 5" "12.5 4" "16.7 3"; do
    set -- $cost
    methods="$methods plan:$1 steps:$2 unipc:$2"
    pairs+=(--pair "plan:$1=steps:$2" --pair "plan:$1=unipc:$2")
  done
  pairs+=(--pair "steps:5=baseline:50" --pair "steps:3=baseline:50")
  title="Toy study beyond 7x: $captions held-out captions, seed 0"
  plots="set:toy_fid/kid/vs_truth toy_readback.all"
else
  for cost in "4 11 42" "5 9 33" "7 6 23"; do
    set -- $cost
    preset=flux-dev-$1x
    methods="$methods $preset $preset@solver=unipc $preset@noise_downsample=nearest steps:$2 unipc:$2 mrflow:$3:0.4:1"
    for other in steps:$2 unipc:$2 mrflow:$3:0.4:1; do
      pairs+=(--pair "$preset=$other" --pair "$preset@solver=unipc=$other")
    done
    pairs+=(--pair "$preset@noise_downsample=nearest=$preset" --pair "$preset@solver=unipc=$preset")
  done
  title="Toy quality study: $captions held-out captions, seed 0"
  plots="set:toy_fid/kid/vs_truth toy_readback.all toy_readback.relation"
fi
$ralu eval generate toy --methods $methods --prompts "toy:$captions" --seeds 1 --batch-size 32 --out "$work"
$ralu eval score "$work" --metrics toy_readback toy_edges toy_fid psnr "${pairs[@]}"
$ralu eval report "$work" --title "${TITLE:-$title}" --plot $plots
[ "$part" = beyond7x ] && exit 0
# the demo's read-back column (ralu demo): copy to src/ralu/data/toy/study.json when these weights ship
python -c "import json, sys; from ralu.demo.run import study_record; \
print(json.dumps(study_record(json.load(open(sys.argv[1])), sys.argv[2]), indent=1))" \
  "$work/summary.json" "${SOURCE:-docs/toy256-COMMIT}" > "$work/study.json"
