#!/usr/bin/env bash
# Start a Dask scheduler and one dask-cuda worker process per GPU on this node, each advertising
# GPU=1, then wait. Ctrl-C stops both. Run it in the codexdask environment (pip install
# '.[mesmer,gpu]' from a checkout), then, from another shell:
#   codexdask segment /abs/path/slide.zarr --out /abs/path/results --scheduler tcp://HOST:8786
#
# Usage: start-cluster.sh [PORT]
# Environment: HOST (address the scheduler listens on and the workers and the driver use; default
#   127.0.0.1, this node only: a Dask scheduler runs any code it is sent. Set it to the node's
#   address only on a private network, and see deploy/README.md for TLS),
#   DASHBOARD_PORT (default 8787), NTHREADS (threads per worker, default: cores / GPUs),
#   MEMORY_LIMIT (host memory per worker, default auto), CUDA_VISIBLE_DEVICES (which GPUs).
set -euo pipefail

PORT="${1:-8786}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8787}"
HOST="${HOST:-127.0.0.1}"
MEMORY_LIMIT="${MEMORY_LIMIT:-auto}"

if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
  NGPUS="${#visible[@]}"
else
  NGPUS="$(nvidia-smi --list-gpus | wc -l)"
fi
if (( NGPUS < 1 )); then
  echo "start-cluster.sh: no GPU found (nvidia-smi --list-gpus); use 'dask worker' for CPUs" >&2
  exit 1
fi
NTHREADS="${NTHREADS:-$(( $(nproc) / NGPUS ))}"
(( NTHREADS >= 1 )) || NTHREADS=1

SCHEDULER="tcp://${HOST}:${PORT}"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

dask scheduler --port "$PORT" --host "$HOST" --dashboard-address "${HOST}:${DASHBOARD_PORT}" &
pids+=("$!")
# Workers retry until the scheduler listens. dask-cuda starts one process per visible GPU and
# gives each its own CUDA_VISIBLE_DEVICES; every process advertises GPU=1.
dask cuda worker "$SCHEDULER" --resources "GPU=1" --nthreads "$NTHREADS" \
  --memory-limit "$MEMORY_LIMIT" &
pids+=("$!")

echo "scheduler: $SCHEDULER (dashboard http://${HOST}:${DASHBOARD_PORT}/status)"
echo "workers:   $NGPUS x GPU=1, $NTHREADS threads each"
echo "run:       codexdask segment STORE --out DIR --scheduler $SCHEDULER"
wait
