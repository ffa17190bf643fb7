#!/usr/bin/env bash
# One GPU session (issue 13), run from the repository root on a machine with an NVIDIA GPU:
#   - installs cupy-cuda12x and array-api-compat (from wheels in .whl/ if present: GPU machines may have no network);
#   - the cupy backend: every algorithm's fused passes against the generic array-API path, and the conformance
#     suite in float64 and float32 (tests/test_cupy_backend.py, reports report-cupy*.json);
#   - the torch backend on CUDA under the suite, both precisions, and jax on the GPU where its CUDA build imports;
#   - benchmarks/speed.py on CUDA: cupy and torch rows, the copy bandwidth and each row's fraction of it.
# Everything is written to $OUT (default benchmarks/results/gpu): the reports, speed-cuda.json/.png and a log.
# Sized for about 12 minutes on one H200; each part runs even if an earlier one failed, and the exit status
# says whether all passed.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 STEPSPEC_REPORTS="$OUT"
status=0
step() {  # step NAME COMMAND...: run, log, remember a failure
    echo "== $1" | tee -a "$OUT/log.txt"
    shift
    "$@" 2>&1 | tee -a "$OUT/log.txt"
    local rc=${PIPESTATUS[0]}
    echo "== exit $rc" | tee -a "$OUT/log.txt"
    [ "$rc" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
else
    python3 -m pip install -q cupy-cuda12x array-api-compat array-api-strict hypothesis pytest pytest-xdist
fi
python3 -m pip install -q --no-deps -e . 2>/dev/null || export PYTHONPATH=$PWD:${PYTHONPATH:-}

step "cupy: fused passes vs the generic path, and the suite (both dtypes)" \
    python3 -m pytest tests/test_cupy_backend.py -rs -p no:cacheprovider -n 0 -q
for backend in torch-cuda torch-cuda-float32; do
    step "conform $backend" python3 -m stepspec conform --backend "$backend" -j 8 --json "$OUT/report-$backend.json"
done
if python3 -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
    for backend in jax jax-float32; do
        step "conform $backend (GPU)" python3 -m stepspec conform --backend "$backend" -j 8 --json "$OUT/report-$backend-gpu.json"
    done
else
    echo "== jax: no CUDA build importable, jax on the GPU not run" | tee -a "$OUT/log.txt"
fi
step "speed on CUDA" python3 benchmarks/speed.py --device cuda --sizes 1e6,1e7,1e8 --tensors 1,100 \
    --algorithms sgd,momentum,nag,adam,adamw,rmsprop,lion,lm_rllc,elra,diagonal_to,rank_one_to \
    --implementations "torch.optim foreach,torch.optim fused,stepspec compiled,stepspec cupy" --out "$OUT"
exit $status
