"""Build, on a machine with PyPI and Debian access, what ``benchmarks/mikasa_gpu.sh`` needs on a GPU machine without
a network: Python 3.12 wheels and the Vulkan/EGL loader .debs, split in two folders of at most ~60 MiB each (the
device tool carries 64 MiB per call).

- ``.mikasa_a/``: sapien 3.0.3 (51 MB) and the loader .debs;
- ``.mikasa_b/``: torchrl, tensordict, gymnasium, mikasa-robo-suite (its envs), the small pure-python dependencies
  of mani-skill that a PyTorch image lacks, and mani-skill 3.0.1 reduced to what these tasks load (the wheel is
  101 MB with every robot's meshes and two HDR environment maps that no Python code of it references).

    python benchmarks/mikasa_gpu_bundle.py          # then: echo /.mikasa_a/ >> .git/info/exclude (and _b)

Never committed (the folders are git-ignored through .git/info/exclude). Prints each folder's size.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ["--ignore-requires-python", "--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:", "--platform",
            "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
PART_A = ["sapien==3.0.3"]
PART_B = ["mikasa-robo-suite==1.0.0", "torchrl==0.14.1", "tensordict==0.14.3", "gymnasium==1.4.0",
          "farama-notifications", "pyvers", "orjson", "importlib_metadata", "dacite", "defusedxml", "transforms3d",
          "trimesh", "pytorch-kinematics", "arm-pytorch-utilities", "pytorch-seed", "tyro", "docstring-parser",
          "shtab", "typeguard", "ipython", "traitlets", "jedi", "parso", "prompt_toolkit", "wcwidth", "pexpect",
          "ptyprocess", "decorator", "matplotlib-inline", "stack_data", "executing", "asttokens", "pure_eval",
          "importlib_resources", "pyperclip", "GitPython", "gitdb", "smmap"]
DEBS = ["libvulkan1", "libegl1", "libglvnd0", "libopengl0", "libgl1", "libglx0", "libgles2"]
DROP = ("mani_skill/assets/environment_maps/", "mani_skill/assets/maniskill2-", "mani_skill/envs/tasks/humanoid/assets/",
        "mani_skill/utils/scene_builder/kitchen_counter/assets/", "mani_skill/assets/robots/panda/sciurus17_description/")
# RememberColor and TakeItBack load panda_wristcam: franka_description's meshes and the D415 camera mesh
REALSENSE = "mani_skill/assets/robots/panda/realsense2_description/"


def keep(name: str) -> bool:
    """Whether a file of the mani-skill wheel goes into the reduced one.

    Examples:
        >>> keep("mani_skill/assets/robots/xarm7/x.stl"), keep("mani_skill/assets/robots/panda/panda_v2.urdf")
        (False, True)
        >>> keep(REALSENSE + "meshes/d415.stl"), keep(REALSENSE + "meshes/d435.dae")
        (True, False)
        >>> keep("mani_skill/utils/scene_builder/replicacad/scene_builder.py"), keep("mani_skill/x/sky_4k.hdr")
        (True, False)
    """
    parts = name.split("/")
    if parts[:3] == ["mani_skill", "assets", "robots"] and len(parts) > 4 and parts[3] != "panda":
        return False  # another robot's files
    if name.startswith(REALSENSE):
        return name == REALSENSE + "meshes/d415.stl"
    return not name.startswith(DROP) and not name.endswith(".hdr")  # HDR maps: no Python code of it loads one


def run(*cmd: str, cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=cwd)


def reduced_maniskill(folder: Path) -> None:
    run(sys.executable, "-m", "pip", "download", "--no-deps", *PLATFORM, "-d", str(folder / "full"), "mani-skill==3.0.1")
    wheel = next((folder / "full").glob("mani_skill-*.whl"))
    out = folder / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if keep(item.filename):
                dst.writestr(item, src.read(item))
    shutil.rmtree(folder / "full")


def main() -> None:
    a, b = ROOT / ".mikasa_a", ROOT / ".mikasa_b"
    for folder in (a, b):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    run(sys.executable, "-m", "pip", "download", "--no-deps", *PLATFORM, "-d", str(a), *PART_A)
    run("apt-get", "download", *DEBS, cwd=a)
    run(sys.executable, "-m", "pip", "download", "--no-deps", *PLATFORM, "-d", str(b), *PART_B)
    reduced_maniskill(b)
    for folder in (a, b):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{folder.name}: {size / 2**20:.1f} MiB in {len(list(folder.iterdir()))} files")


if __name__ == "__main__":
    main()
