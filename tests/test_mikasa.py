"""MIKASA-Robo (ManiSkill 3): the TorchRL env, the visual-only hiding fix, the oracles, the dataset, ELMUR through a
Collector, the ParallelEnv evaluation and a smoke run of the benchmark. Skipped, with the reason, where SAPIEN finds
no render device (every ManiSkill env needs one) or MIKASA-Robo is not installed."""
import json

import numpy as np
import pytest
import torch
from torchrl.collectors import Collector
from torchrl.envs.utils import check_env_specs
from torchrl.modules import set_recurrent_mode
from torchrl.modules.utils import get_primers_from_module

from torchrl_elmur import ELMURConfig
from torchrl_elmur.envs.mikasa_env import MIKASA_TASKS, ManiSkillEnv, make_mikasa_env, mikasa_task, render_device_error
from torchrl_elmur.modules import PixelEncoder
from torchrl_elmur.training.policies import make_bc_actor

SIZE = 36  # the smallest image the encoder takes: rendering costs the same, the tests' tensors are smaller
pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_render = pytest.mark.skipif(render_device_error() is not None, reason=f"MIKASA-Robo: {render_device_error()}")


def test_unknown_task_names_the_valid_ids():
    with pytest.raises(ValueError, match=r"unknown task 'RememberColor4-v0'.*Did you mean.*RememberColor"):
        mikasa_task("RememberColor4-v0")


def test_pixel_encoder_checks_shapes():
    enc = PixelEncoder(6, SIZE, width=8, proprio_size=3)
    assert enc(torch.zeros(2, 4, 6, SIZE, SIZE, dtype=torch.uint8), torch.zeros(2, 4, 3)).shape == (2, 4, 8)
    with pytest.raises(ValueError, match=r"'pixels' must end in \[6, 36, 36\], received \[2, 3, 36, 36\]"):
        enc(torch.zeros(2, 3, SIZE, SIZE, dtype=torch.uint8), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"'proprio' must end in 3, received None"):
        enc(torch.zeros(2, 6, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="image_size must be >= 36"):
        PixelEncoder(6, 32, width=8)


def pixel_actor(memory, task="RememberColor3-v0"):
    config = ELMURConfig.mikasa_remember_color(d_model=16, num_layers=1, num_heads=2, memory_slots=4, segment_len=5,
                                               detach_memory=False)
    return make_bc_actor(memory, 0, action_dim=4, width=16, config=config if memory == "elmur" else None,
                         encoder=PixelEncoder(6, SIZE, width=16), in_keys=("pixels",))


@needs_render
def test_specs_rollout_and_argument_errors():
    env = ManiSkillEnv("RememberColor3-v0", image_size=SIZE, seed=0)
    try:
        check_env_specs(env)
        td = env.rollout(4)
        assert td["pixels"].shape == (4, 6, SIZE, SIZE) and td["pixels"].dtype == torch.uint8
        assert td["proprio"].shape == (4, 25) and env.action_spec.shape == (4,)
        assert td["next", "step_count"].reshape(-1).tolist() == [1, 2, 3, 4]
        assert not td["next", "done"].any()
        with pytest.raises(ValueError, match=r"'action' must have shape \[4\], received \[7\]"):
            env.step(env.reset().set("action", torch.zeros(7)))
        with pytest.raises(ValueError, match=r"'action' must be finite, received \[nan, 0.0, 0.0, 0.0\]"):
            env.step(env.reset().set("action", torch.tensor([float("nan"), 0.0, 0.0, 0.0])))
    finally:
        env.close()
    with pytest.raises(ValueError, match="obs_mode='depth' is invalid"):
        ManiSkillEnv("RememberColor3-v0", obs_mode="depth")
    with pytest.raises(ValueError, match="image_size must be an int in"):
        ManiSkillEnv("RememberColor3-v0", image_size=8)


@needs_render
def test_hiding_is_visual_the_cubes_stay_on_the_table():
    """As shipped, RememberColor's hiding moves the real bodies to z = 1000 on CPU physics, from where they
    fall: here they stay at their places (z = half size) while the frames of steps 5-9 show no cube and
    those of step 10 on show all of them."""
    env = ManiSkillEnv("RememberColor3-v0", image_size=64, seed=1)
    raw = env.raw.unwrapped
    try:
        td = env.reset()
        frames = {}
        for t in range(1, 13):
            td = env.step(td.set("action", torch.zeros(4)))["next"]
            frames[t] = td["pixels"][:3].permute(1, 2, 0).numpy().astype(int)  # base camera [H, W, 3]
        real = [cube.pose.p.reshape(3) for cube in raw.cubes.values()]  # step 12: shown again, real poses
        assert all(abs(p[2].item() - raw.CUBE_HALFSIZE) < 5e-3 for p in real), real

        def saturated(frame):  # pixels of a pure red, green or blue cube (the table is brown, the robot grey)
            return int(((frame.max(-1) > 120) & (frame.min(-1) < 40) & (np.sort(frame, -1)[..., 1] < 60)).sum())

        assert saturated(frames[7]) == 0 and saturated(frames[12]) > 0
    finally:
        env.close()


@needs_render
@pytest.mark.parametrize("task, obs_mode, episodes", [("RememberColor3-v0", "rgb", 1), ("RememberColor9-v0", "state", 2),
                                                      ("TakeItBack-v0", "state", 2)])
def test_oracle_succeeds(task, obs_mode, episodes):
    from torchrl_elmur.data.mikasa_dataset import oracle_success, play_mikasa_episodes

    data = play_mikasa_episodes(task, episodes, seed=7, image_size=SIZE, obs_mode=obs_mode, progress=False)
    assert oracle_success(data) == 1.0
    assert data.batch_size[0] == episodes * {"RememberColor": 60, "TakeItBack": 180}[MIKASA_TASKS[task][0]]


@needs_render
def test_dataset_on_disk_keeps_uint8_and_reloads(tmp_path):
    from torchrl_elmur.data import make_mikasa_dataset

    data = make_mikasa_dataset("RememberColor3-v0", 2, seed=3, image_size=SIZE, workers=2, cache_dir=tmp_path,
                               progress=False)
    assert data.batch_size == (120,)
    assert data["pixels"].dtype == torch.uint8 and data["pixels"].shape == (120, 6, SIZE, SIZE)
    assert data["action"].dtype == torch.float32 and data["action"].shape == (120, 4)
    assert data["is_init"].reshape(-1).nonzero().reshape(-1).tolist() == [0, 60]
    assert data["episode"].unique().tolist() == [3, 4]  # seeds 3 and 4, one per worker
    assert data["next", "done"].reshape(-1).nonzero().reshape(-1).tolist() == [59, 119]
    folder = next(tmp_path.iterdir())
    assert (folder / "storage" / "pixels.memmap").stat().st_size == 120 * 6 * SIZE * SIZE  # one byte per value on disk
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["oracle_success"] == 1.0 and meta["image_size"] == SIZE
    again = make_mikasa_dataset("RememberColor3-v0", 2, seed=3, image_size=SIZE, cache_dir=tmp_path, progress=False)
    assert again["pixels"].dtype == torch.uint8 and torch.equal(again["pixels"][:], data["pixels"][:])
    with pytest.raises(ValueError, match="seed \\+ layouts must be <= 1000000"):
        make_mikasa_dataset("RememberColor3-v0", 2, seed=999_999, cache_dir=None)
    with pytest.raises(ValueError, match="num_episodes \\(4\\) must be a multiple of cues_per_layout \\(3\\)"):
        make_mikasa_dataset("RememberColor3-v0", 4, cues_per_layout=3, cache_dir=None)
    with pytest.raises(ValueError, match="cues_per_layout must be an int in \\[1, 1\\] for TakeItBack-v0"):
        make_mikasa_dataset("TakeItBack-v0", 4, cues_per_layout=2, cache_dir=None)


@needs_render
def test_a_chosen_cue_keeps_the_layout_and_shows_its_colour():
    """reset with a 'cue' on one seed: the same cube places, the chosen colour as the target and in the
    cue frame (RememberColor3: 0 red, 1 green, 2 blue), and an error naming the key for a bad cue."""
    from tensordict import TensorDict

    env = ManiSkillEnv("RememberColor3-v0", image_size=64, seed=5)
    raw = env.raw.unwrapped
    try:
        places = []
        for cue in range(3):
            env.set_seed(5)
            pixels = env.reset(TensorDict({"cue": torch.tensor(cue)}, []))["pixels"]
            assert int(raw.true_color_indices.reshape(-1)[0]) == cue and env.episode_seed == 5
            places.append(torch.stack([raw.initial_poses[k].reshape(3) for k in range(3)]))
            frames = pixels.reshape(2, 3, -1).permute(0, 2, 1).reshape(-1, 3).int()  # both cameras' pixels [P, 3]
            top, _ = frames.sort(-1)
            saturated = (top[:, 2] > 120) & (top[:, 1] < 60) & (top[:, 0] < 40)  # pure red, green or blue
            counts = torch.bincount(frames[saturated].argmax(-1), minlength=3)
            assert counts[cue] > 10 and counts.sum() == counts[cue], (cue, counts)
        assert all(torch.equal(places[0], p) for p in places[1:])
        with pytest.raises(ValueError, match="'cue' must be an integer in \\[0, 3\\) for RememberColor3-v0, received 3"):
            env.reset(TensorDict({"cue": torch.tensor(3)}, []))
    finally:
        env.close()


@needs_render
def test_dataset_plays_each_layout_with_every_cue():
    """cues_per_layout=3: one seed's layout three times, once per colour (the drawn one first); the oracle
    reaches a different cube each time and succeeds in all three (recorded as the default visible_state:
    nothing rendered; the cue step shows a different cube each time)."""
    from torchrl_elmur.data.mikasa_dataset import layout_cues, oracle_success, play_mikasa_episodes

    data = play_mikasa_episodes("RememberColor3-v0", 3, seed=4, obs_mode="visible_state", progress=False,
                                cues_per_layout=3)
    assert data.batch_size == (180,) and oracle_success(data) == 1.0
    assert data["episode"].unique().tolist() == [12, 13, 14]  # seed 4 x 3 cues + j
    episodes = data.reshape(3, 60)
    cue_frames = episodes["visible_state"][:, 0]
    shown = cue_frames[:, 16::7][:, :3]  # each cube's "visible" flag at the cue step: only the target's is set
    assert sorted(shown.argmax(-1).tolist()) == [0, 1, 2] and shown.sum().item() == 3
    assert not torch.equal(cue_frames[0], cue_frames[1]) and not torch.equal(cue_frames[1], cue_frames[2])
    reach = episodes["action"][:, 10:14, :2]  # the first steps of the reach, towards three different cubes
    assert (reach[0] - reach[1]).abs().max() > 0.1 and (reach[1] - reach[2]).abs().max() > 0.1
    assert layout_cues(2, 9, 3, seed=1) == layout_cues(2, 9, 3, seed=1) and len(layout_cues(2, 9, 3, seed=1)) == 3


@pytest.mark.slow  # ~40 s of rendering; DART-style noise is an option of the pixel recipe, off by default
@needs_render
def test_action_noise_moves_the_arm_but_keeps_the_oracles_labels():
    """action_noise (DART-style): the same seed with and without noise is the same episode up to the
    first noisy step (10); from the next frame on the arm is elsewhere; the stored action at step 10
    (same state in both) is the oracle's clean one, not the executed noisy one."""
    from torchrl_elmur.data.mikasa_dataset import NOISE_STEPS, play_mikasa_episodes

    clean, noisy = (play_mikasa_episodes("RememberColor3-v0", 1, seed=4, image_size=SIZE, progress=False,
                                         action_noise=sigma) for sigma in (0.0, 0.3))
    first = NOISE_STEPS[0]
    assert torch.equal(clean["proprio"][:first + 1], noisy["proprio"][:first + 1])
    assert torch.equal(clean["action"][:first + 1], noisy["action"][:first + 1])  # step 10: the clean label
    assert (clean["proprio"][first + 1:first + 5, -7:-4] - noisy["proprio"][first + 1:first + 5, -7:-4]).abs().max() > 1e-3
    assert not torch.equal(clean["action"][first + 1:], noisy["action"][first + 1:])  # labels of other states
    assert noisy["pixels"].dtype == torch.uint8 and noisy.batch_size == clean.batch_size == (60,)


def test_action_noise_errors_name_the_value(load_script):
    from torchrl_elmur.data import make_mikasa_dataset

    for bad in (-0.1, float("nan"), float("inf"), True, "0.3"):
        with pytest.raises(ValueError, match="action_noise must be a finite float >= 0"):
            make_mikasa_dataset("RememberColor3-v0", 2, action_noise=bad, cache_dir=None)
    with pytest.raises(ValueError, match="action_noise must be 0 for TakeItBack-v0: .* received 0.3"):
        make_mikasa_dataset("TakeItBack-v0", 2, action_noise=0.3, cache_dir=None)
    mr = load_script("benchmarks/mikasa_robo.py")

    assert mr.check(mr.Args(action_noise=-1.0)).startswith("--action-noise: action_noise must be a finite float")
    assert mr.check(mr.Args(tasks=["TakeItBack-v0"], action_noise=0.3)).startswith("--action-noise: action_noise must be 0")
    assert mr.check(mr.Args(action_noise=0.3)) is None


@needs_render
def test_elmur_policy_through_a_collector_replays_exactly():
    """A TorchRL Collector streams a pixel ELMUR policy through the env (state carried by the primer); the
    collected actions come back in recurrent mode over the whole rollout."""
    actor = pixel_actor("elmur").eval()
    env = make_mikasa_env("RememberColor3-v0", image_size=SIZE, seed=0)
    env.append_transform(get_primers_from_module(actor))
    collector = Collector(env, actor, frames_per_batch=12, total_frames=12)
    try:
        batch = next(iter(collector))
    finally:
        collector.shutdown()
    assert batch["pixels"].shape == (12, 6, SIZE, SIZE) and batch["is_init"][0].item()
    with torch.no_grad(), set_recurrent_mode(True):
        replay = actor(batch.exclude("action").unsqueeze(0))["action"][0]
    torch.testing.assert_close(replay, batch["action"], atol=1e-5, rtol=1e-5)


@needs_render
@pytest.mark.parametrize("obs", ["visible_state", pytest.param("rgb", marks=pytest.mark.slow)])  # rgb: ~80 s of rendering
def test_parallel_evaluation(obs):
    """mikasa_success streams a policy through a ParallelEnv of two processes: one bool per episode, and
    this process's torch threads as they were (ParallelEnv changes them when it starts and closes)."""
    from torchrl_elmur.training.evaluate import mikasa_success
    from torchrl_elmur.training.mikasa_bc import make_mikasa_actor

    threads = torch.get_num_threads()
    actor = pixel_actor("mlp") if obs == "rgb" else make_mikasa_actor("RememberColor3-v0", "gru", width=8)
    success = mikasa_success(actor, "RememberColor3-v0", 2, obs_mode=obs, image_size=SIZE, workers=2)
    assert success.shape == (2,) and success.dtype == torch.bool
    assert torch.get_num_threads() == threads


def test_benchmark_rejects_unknown_task():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "benchmarks/mikasa_robo.py"), "--tasks", "RememberColour3-v0"],
                          capture_output=True, text=True, cwd=root)
    assert proc.returncode == 2 and "--tasks: MIKASA task: unknown task 'RememberColour3-v0'" in proc.stderr


@needs_render
def test_benchmark_visible_state_records_rows_and_a_rerun_skips_them(tmp_path):
    """The default observation end to end at a tiny size, two training seeds: the paper-form table (mean ± std
    over seeds, the paper's pixel numbers beside), every file, a second run of the same command that
    trains nothing (the rows come back from <out>/mikasa_robo.rows.jsonl as they were), and the same rows
    from --jobs 1."""
    from test_tutorials import run_script

    flags = ["--tasks", "RememberColor3-v0", "--episodes", "2", "--steps", "2", "--batch", "1", "--eval-episodes", "1",
             "--workers", "1", "--policies", "elmur", "mlp", "--seeds", "0", "1", "--out", str(tmp_path / "out"),
             "--cache", str(tmp_path / "cache"), "--no-progress"]
    first = json.loads(run_script("benchmarks/mikasa_robo.py", *flags, timeout=600)[-1])
    row = first["tasks"]["RememberColor3-v0"]
    assert first["obs"] == "visible_state" and row["oracle"] == 1.0 and abs(row["chance"] - 1 / 3) < 1e-9
    assert [(r["policy"], r["seed"]) for r in first["rows"]] == [("elmur", 0), ("mlp", 0), ("elmur", 1), ("mlp", 1)]
    values = [r["success"] for r in first["rows"] if r["policy"] == "elmur"]
    assert row["elmur"] == sum(values) / 2 and row["elmur_text"] == f"{row['elmur']:.2f} ± {row['elmur_std']:.2f}"
    assert row["paper_elmur"] == 0.89 and row["paper_mlp"] == 0.27
    assert [r["cue_effect"] for r in first["rows"] if r["policy"] == "mlp"] == [0.0, 0.0]
    for ext in ("csv", "md", "png", "json", "rows.jsonl"):
        assert (tmp_path / "out" / f"mikasa_robo.{ext}").stat().st_size > 0
    assert "± " in (tmp_path / "out" / "mikasa_robo.md").read_text()
    again = json.loads(run_script("benchmarks/mikasa_robo.py", *flags, timeout=600)[-1])
    assert again["rows"] == first["rows"]  # train and eval seconds included: nothing ran again
    # the rows ran two at a time in processes of their own (--jobs 2, the default); one after another in this
    # process they are the same to the bit, but for the seconds
    flags[flags.index("--out") + 1] = str(tmp_path / "one")
    serial = json.loads(run_script("benchmarks/mikasa_robo.py", *flags, "--jobs", "1", timeout=600)[-1])
    untimed = [[{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in run["rows"]] for run in (first, serial)]
    assert untimed[0] == untimed[1]


@pytest.mark.slow  # the pixel benchmark end to end (~80 s); its parts have their own tests
@needs_render
def test_benchmark_smoke(tmp_path):
    from test_tutorials import run_script

    flags = ["--obs", "rgb", "--tasks", "RememberColor3-v0", "--seeds", "0", "--episodes", "2", "--steps", "2", "--batch",
             "1", "--eval-episodes", "1", "--workers", "1", "--image-size", str(SIZE), "--policies", "elmur", "--out",
             str(tmp_path / "out"),
             "--cache", str(tmp_path / "cache"), "--no-progress"]
    result = json.loads(run_script("benchmarks/mikasa_robo.py", *flags, timeout=600)[-1])
    row = result["tasks"]["RememberColor3-v0"]
    assert row["oracle"] == 1.0 and abs(row["chance"] - 1 / 3) < 1e-9 and 0.0 <= row["elmur"] <= 1.0
    assert [r["policy"] for r in result["rows"]] == ["elmur"] and result["rows"][0]["episodes"] == 1
    assert result["rows"][0]["cue_effect"] > 0 and result["rows"][0]["reach_action"] > 0  # one swapped pair of episodes
    for ext in ("csv", "md", "png", "json"):
        assert (tmp_path / "out" / f"mikasa_robo.{ext}").stat().st_size > 0


@pytest.mark.parametrize("obs", ["visible_state", "rgb"])
def test_cue_effect_is_zero_without_memory(obs):
    """cue_effect on synthetic episodes: a memoryless MLP's actions after the cue cannot depend on the
    cue steps (exactly 0); ELMUR's can (> 0 with random weights); one episode: no pair, no number."""
    from tensordict import TensorDict

    from torchrl_elmur.training.mikasa_bc import cue_effect, make_mikasa_actor

    task = "RememberColor3-v0"
    T, n = 60, 4
    torch.manual_seed(0)
    key = "pixels" if obs == "rgb" else "visible_state"
    x = (torch.randint(0, 256, (n * T, 6, SIZE, SIZE), dtype=torch.uint8) if obs == "rgb"
         else torch.randn(n * T, 37))
    data = TensorDict({key: x, "action": torch.randn(n * T, 4), "is_init": (torch.arange(n * T) % T == 0).unsqueeze(-1)},
                      [n * T])
    actors = {m: make_mikasa_actor(task, m, obs=obs, image_size=SIZE, width=16) for m in ("mlp", "elmur")}
    effects = {m: cue_effect(actor, data, task, key=key) for m, actor in actors.items()}
    assert effects["mlp"]["cue_effect"] == 0.0
    assert effects["elmur"]["cue_effect"] > 1e-4
    assert effects["mlp"]["reach_action"] == effects["elmur"]["reach_action"] > 0
    assert cue_effect(actors["mlp"], data[:T], task, key=key) == {}
