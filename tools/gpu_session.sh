#!/usr/bin/env bash
# Everything a lent GPU is for, as one prepared command that ends inside one device call:
#   1. issue 16: `ralu bench speed` at FLUX.1-dev's real depth (19 double + 38 single blocks, hidden 3072, random
#      weights) in bfloat16 at 512, 768 and 1024 px, CUDA-synchronised, 3 repetitions, with its calibration;
#   2. issue 11: `tools/gpu_debug.py` (checks of the toy's training on the device, then the training, continued
#      from the shipped weights, for the minutes left, then the read-back of its 50-step baseline).
#
#   bash tools/gpu_session.sh fetch        # here, once: diffusers' wheels into .whl/ (git ignores it)
#   bash tools/gpu_session.sh [SECONDS]    # on the device (the run tool, carry [".whl"]); SECONDS=450 in all
#
# PARTS="speed train" (the default) picks and orders the parts: the 2026-12-04 lease ran the speed part
# (docs/performance-h200/), so the next one should start with PARTS="train speed" or PARTS=train.
# Each part runs whatever the other did. Writes to $OUT: gpu.txt (device and versions), speed/ (performance.md,
# .json, efficiency.png), toy.tar (the trained weights and training.json), readback.txt and session.log:
# at most 8 files, as the device tool brings back. A CPU smoke test of the speed part: DEVICE=cpu SPEED_ARGS="--sizes
# 64 --reps 1 --baseline-steps 4 --calibration-seconds 0" OUT=/tmp/g bash tools/gpu_session.sh 100 (the training
# part then runs batch 128 on the CPU: stop it).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = fetch ]; then
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl diffusers==0.42.1 importlib_metadata==8.7.0
    ls .whl
    exit 0
fi
start=$SECONDS
budget=${1:-450}
out=${OUT:-gpu-session}
mkdir -p "$out"
exec > >(tee "$out/session.log") 2>&1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
} | tee "$out/gpu.txt"

speed() {
    local args=${SPEED_ARGS:-"--sizes 512 768 1024 --double 19 --single 38 --dtype bfloat16 --baseline-steps 50 \
--presets flux-dev-4x flux-dev-5x flux-dev-7x --calibration-seconds 1"}
    # shellcheck disable=SC2086
    timeout "$1" python3 -m ralu.bench.speed $args ${DEVICE:+--device $DEVICE} --out "$out/speed" \
        | grep -v '^|' || echo "speed benchmark failed or ran out of time (rc $?)"
}

train() {
    local left=$(($1 - 90))  # the checks, the read-back and the packing take about 1.5 minutes
    local minutes
    minutes=$(python3 -c "print(max(0.5, round($left / 60 - 0.5, 2)))")
    echo "training for $minutes min"
    # tools/gpu_debug.py: the checks that found NaN on 2026-12-04's H200, then training with the first finite setting
    python3 tools/gpu_debug.py "$out/train" "$minutes" "${DEVICE:-cuda}" || echo "training failed (rc $?)"
    if [ -d "$out/train/toy" ]; then
        tar -C "$out/train" -cf "$out/toy.tar" toy && cp "$out/train/readback.txt" "$out/readback.txt" 2>/dev/null
        rm -rf "$out/train"
    fi
}

read -r -a parts <<< "${PARTS:-speed train}"
for i in "${!parts[@]}"; do
    left=$((budget - (SECONDS - start)))
    # the speed part takes 45% of the budget when it comes first; the last part takes what is left
    if [ "$i" -lt $((${#parts[@]} - 1)) ] && [ "${parts[$i]}" = speed ]; then share=$((budget * 45 / 100));
    elif [ "$i" -lt $((${#parts[@]} - 1)) ]; then share=$((left * 55 / 100)); else share=$left; fi
    case "${parts[$i]}" in
        speed) speed "$share" ;;
        train) train "$share" ;;
        *) echo "PARTS: unknown part ${parts[$i]} (speed, train)" ;;
    esac
done
echo "session: $((SECONDS - start)) s"
