#!/usr/bin/env bash
# GPU checks, no network needed: exactness on CUDA, the step-cost and throughput tables (with
# torch.compile), and with HORIZON=1 the quick T-Maze horizon (training on the CPU, evaluation on
# the GPU). At most 410 s of stages (the time limits); the last run of the earlier set took 315 s
# on one H100. Tables go to $1 (default outputs/gpu_check), one log per stage.
#
#   bash benchmarks/gpu_check.sh [out_dir]
#
# Python packages: the project's own set (torch with CUDA, torchrl, tensordict, gymnasium, tqdm,
# matplotlib). Where they are missing and no network is reachable, put their wheels in .whl/ and
# they are installed into /tmp/site first. For a Python 3.12 image with CUDA torch, from a machine
# with PyPI access (.whl is git-ignored via .git/info/exclude, never committed):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     torchrl==0.14.1 tensordict==0.14.3 gymnasium==1.4.0 farama-notifications hoptorch pyvers orjson importlib_metadata
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-outputs/gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
PY=${PYTHON:-python3}
$PY -c "import torch, torchrl, tensordict; print('torch', torch.__version__, 'torchrl', torchrl.__version__, 'tensordict', tensordict.__version__, 'device', torch.cuda.get_device_name())" | tee "$out/versions.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$out/versions.txt" 2>/dev/null || true

stage() {  # stage NAME seconds command...: runs one check, keeps going if it fails
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "=== $name"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  grep -v -e Warning -e 'warnings.warn' "$out/$name.log" | tail -n 40
  echo "=== $name: exit $rc, $((SECONDS - t0)) s"
}

stage device_parity 60 $PY benchmarks/device_parity.py --device cuda
# issue 14's table on the GPU: actors eager and with compile_step() (CUDA graphs), batch 1 and 256
stage step_cost 200 $PY benchmarks/step_cost.py --device cuda --batches 1 256 --out "$out"
stage throughput 150 $PY benchmarks/throughput.py --device cuda --compile --out "$out"
if [ "${HORIZON:-0}" = 1 ]; then  # HORIZON=1: also the quick T-Maze horizon (about 5 more minutes)
  stage tmaze_horizon_quick 300 $PY benchmarks/tmaze_horizon.py --quick --device cuda --threads 0 --checkpoints "$out/none" --out "$out"
fi
echo "done in $SECONDS s; tables in $out"
