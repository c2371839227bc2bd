#!/usr/bin/env bash
# The prepared GPU call (about 8 minutes on one H100/H200 with 16 cores): install the carried
# wheels (bench/gpu_wheels.sh), then the headline slide (9777 x 14239) in fp32 and in tf32 and
# the GPU check's throughput part. Results go to $OUT (the device's return folder), or gpu_out/.
#   device run: carry [".whl"], command "bash bench/gpu_run.sh", timeout_s 590
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
timeout 230 python3 bench/headline.py --device cuda --work-dir /tmp > "$out/headline_fp32.log" 2>&1
timeout 150 python3 bench/headline.py --device cuda --precision tf32 --work-dir /tmp \
    > "$out/headline_tf32.log" 2>&1
timeout 120 python3 bench/gpu_check.py "$out/check" --budget-s 90 > "$out/gpu_check.log" 2>&1
for f in "$out"/headline_*.log; do echo "== $f"; tail -n 1 "$f"; done
