#!/usr/bin/env bash
# The checks a CUDA machine is for, in one run (issue: "run the gpu-marked tests and time kernels, analysis per
# organ and a training step"): the gpu-marked tests (CuPy kernels against their CPU twins), then
# benchmarks/bench_gpu.py (kernels, a training step, analysis per organ of each trained bundle; GPU against CPU),
# then benchmarks/bench_ct.py with a CUDA column (CT organs at their own resolution, outputs on).
#   bash benchmarks/gpu_checks.sh [PYTHON [DATA]]      (default python3, ../shared/data)
# Needs a CUDA GPU with CuPy; prints markdown for benchmarks/README.md.
set -u
PY=${1:-python3}
cd "$(dirname "$0")/.."
DATA=${2:-$(cd .. && pwd)/shared/data}
# from tests/: `python -m pytest` puts its working folder first on sys.path, and the repository root's shapeqc/
# source folder would hide the installed package's mapped shapeqc.transforms / shapeqc.cuda_kernels
(cd tests && "$PY" -m pytest -m gpu test_kernels.py test_voxelize.py -q -p no:cacheprovider -o addopts="" 2>&1 | tail -15)
bundles=()
for dir in bundles/*/; do
    grep -q '"trained": true' "$dir/configs/metadata.json" && bundles+=(--bundle "${dir%/}")
done
"$PY" benchmarks/bench_gpu.py "${bundles[@]}" --data "$DATA" --repeats 5
# CT organs at their stored resolution, outputs on (issue 33): baseline, today on one thread, today on the GPU
"$PY" benchmarks/bench_ct.py --organs 2 --device cuda
