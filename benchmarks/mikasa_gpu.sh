#!/usr/bin/env bash
# MIKASA-Robo RememberColor3 toward paper scale on a GPU machine without a network: CPU physics in parallel
# processes (ParallelEnv / spawned collectors), GPU rendering (SAPIEN on the NVIDIA driver's Vulkan), training on
# the GPU. Budget: under 9 minutes (a 500 s time-out on the benchmark itself).
#
#   bash benchmarks/mikasa_gpu.sh install [out_dir]   # install the carried wheels/.debs only (first device call)
#   bash benchmarks/mikasa_gpu.sh run [out_dir]       # install what is carried, then run (second call)
#
# Packages: ManiSkill's 101 MB wheel and sapien's 51 MB do not travel in one 64 MiB call. Build the two halves
# here with `python benchmarks/mikasa_gpu_bundle.py` (.mikasa_a: sapien + the Vulkan/EGL loader .debs, 49.3 MiB;
# .mikasa_b: torchrl, tensordict, gymnasium, mikasa-robo-suite, mani-skill's small dependencies and a reduced
# mani-skill, 33.0 MiB), carry .mikasa_a with `install`, then .mikasa_b with `run` while the machine is warm: both
# install into /tmp/site (Python) and /tmp/gl (loaders), which live as long as the machine.
#
# STATUS: prepared on the CPU machine (bundle built; the reduced mani-skill renders reset frames identical to the
# full one); not yet run on a GPU (none lent to the session that wrote it).
set -uo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"
out="${2:-outputs/mikasa_gpu}"
mkdir -p "$out"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled

for dir in .mikasa_a .mikasa_b; do
  [ -d "$dir" ] || continue
  if ls "$dir"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --ignore-requires-python --upgrade \
      --target /tmp/site "$dir"/*.whl && echo "installed the wheels of $dir into /tmp/site"
  fi
  for deb in "$dir"/*.deb; do [ -e "$deb" ] && dpkg -x "$deb" /tmp/gl; done
done
[ "$mode" = install ] && exit 0

# Vulkan and EGL: the loaders (system ones, or the carried Debian ones in /tmp/gl) and the NVIDIA driver's ICD files
[ -d /tmp/gl/usr/lib/x86_64-linux-gnu ] && export LD_LIBRARY_PATH="/tmp/gl/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
icd=$(ls /usr/share/vulkan/icd.d/nvidia_icd*.json /etc/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -n 1)
egl=$(ls /usr/share/glvnd/egl_vendor.d/*nvidia*.json /etc/glvnd/egl_vendor.d/*nvidia*.json 2>/dev/null | head -n 1)
[ -n "$icd" ] && export VK_DRIVER_FILES="$icd" VK_ICD_FILENAMES="$icd"
[ -n "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$egl"
{ echo "vulkan icd: ${icd:-none found}; egl vendor: ${egl:-none found}"; nvidia-smi --query-gpu=name,driver_version --format=csv 2>/dev/null; } | tee "$out/versions.txt"
$PY -c "from torchrl_elmur.envs.mikasa_env import render_device_error as e; import sys; m = e(); print(m or 'render device: ok'); sys.exit(1 if m else 0)" \
  || { echo "no render device: see $out/versions.txt"; exit 1; }

# RememberColor3: 1000 oracle episodes at 128x128 (the paper's data), the published ELMUR preset, 100 eval seeds.
# Workers: one CPU-physics process per core but two (the main process trains on the GPU).
workers=$(( $(nproc) > 4 ? $(nproc) - 2 : 2 ))
timeout 500 $PY benchmarks/mikasa_robo.py --obs rgb --seeds 0 --tasks RememberColor3-v0 --episodes "${EPISODES:-1000}" --image-size 128 \
  --preset paper --device cuda --steps "${STEPS:-1500}" --batch 64 --eval-episodes 100 --jobs 1 --workers "$workers" \
  --threads 4 --out "$out" --cache /tmp/mikasa_cache --no-progress 2>&1 | grep -v -e Warning -e 'warnings.warn' | tee "$out/mikasa_robo.log"
echo "exit ${PIPESTATUS[0]}"
