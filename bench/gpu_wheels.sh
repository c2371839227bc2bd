#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it has PyTorch, numpy, scipy, scikit-image,
# pandas, numba, safetensors, psutil, nvidia-ml-py, but no dask, zarr or dask-cuda and no
# registry) into .whl/ (ignored by git), for Python 3.12 on x86-64. Versions: the main
# environment's. Then `bench/gpu_run.sh` on the device with `.whl` carried.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    dask==2026.1.1 distributed==2026.1.1 dask-cuda==26.2.0 rapids-dask-dependency==26.2.0 \
    zarr==2.18.7 numcodecs==0.15.2 asciitree==1.0.0 fasteners==0.20 tblib==3.2.2 zict==3.0.0 \
    locket==1.0.0 partd==1.4.2 tornado==6.6.1 zstandard==0.25.0
du -sh .whl
