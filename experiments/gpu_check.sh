#!/usr/bin/env bash
# The GPU checks of the engine in one run. Its parts are cut off at 270 + 330 s, so it ends within about
# 10 minutes; it has not yet run on a GPU, so how long each part takes there is not known.
#
#   bash experiments/gpu_check.sh [OUT]          # OUT: where logs and results go (default results/gpu)
#   FULL=1 bash experiments/gpu_check.sh [OUT]   # also the whole test suite, to see what else a GPU changes
#
# For a CUDA machine whose python3 already has JAX with CUDA, Flax, Optax, chex, orbax-checkpoint, pytest,
# pytest-xdist and PyTorch Geometric: nothing is installed, jgrad runs from src/. Steps:
#   1. versions and devices (env.txt); stops unless JAX's default device is a GPU;
#   2. the backends on the GPU (tests.log): the Pallas kernels compiled through Triton against segment
#      sums (tests/ops/test_pallas.py), the bucket and Pallas backends against the plain path in float64
#      (every op and reducer, second order, ties, padding, forward mode, vmap), and the common op suite
#      on the plain path;
#   3. `jgrad bench` on Cora and the power-law graph of 10^5 nodes (bench.log, bench.json, bench.md,
#      bench.png): jgrad as users get it (the bucket backend), jgrad_pallas, jgrad_xla, plain JAX,
#      BCOO and PyG on CUDA, interleaved, every result checked against jgrad's before timing.
# Exit status: 0 only if the tests and the benchmark's checks passed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # several test workers share the GPU
python=${PYTHON:-python3}

"$python" - <<'EOF' 2>&1 | tee "$out/env.txt"
import platform, sys
import jax
print("python", sys.version.split()[0], platform.machine())
print("jax", jax.__version__, "default backend", jax.default_backend(), "devices", jax.devices())
if jax.default_backend() != "gpu":
    sys.exit("gpu_check: JAX's default device is not a GPU; nothing to check here")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 2

start=$SECONDS
timeout 270 "$python" -m pytest -q -p no:cacheprovider -n 8 \
    tests/ops/test_pallas.py tests/ops/test_common_suite.py \
    "tests/ops/test_backends.py" "tests/ops/test_engine_softmax.py" "tests/ops/test_vmap_fold.py" \
    -k "not native" 2>&1 | tee "$out/tests.log"
tests=${PIPESTATUS[0]}
echo "gpu_check: tests exit $tests in $((SECONDS - start)) s" | tee -a "$out/tests.log"

start=$SECONDS
timeout 330 "$python" -m jgrad.cli bench --sizes 100000 --no-recompile-check \
    --workloads gcn_fwdbwd sage_fwdbwd gat_fwdbwd gcn_train gat_train \
    --impls jgrad jgrad_pallas jgrad_xla plain_jax bcoo pyg --out "$out" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
echo "gpu_check: bench exit $bench in $((SECONDS - start)) s" | tee -a "$out/bench.log"

full=0
if [ "${FULL:-0}" = 1 ]; then
    timeout 300 "$python" -m pytest -q -p no:cacheprovider -n 8 -x 2>&1 | tail -40 > "$out/full_suite.log"
    full=${PIPESTATUS[0]}
fi
echo "gpu_check: tests exit $tests, bench exit $bench, full suite exit $full (0 when not run); results in $out"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ] && [ "$full" -eq 0 ]
