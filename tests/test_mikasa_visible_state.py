"""MIKASA-Robo's ``visible_state`` observation: what the two cameras show, as a vector, with no rendering.

Checked against the rendered frames (each object the vector says is shown is in the picture where the
camera projects its position; nothing else is), and for what it must not carry: RememberColor's
target colour after the cue (two episodes that differ only in the cue are the same from step 5 on)
and TakeItBack's hidden initial region (moving it changes no observation, only the success).
Skipped, with the reason, where SAPIEN finds no render device or MIKASA-Robo is not installed."""
import numpy as np
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import check_env_specs

from torchrl_elmur.envs.mikasa_env import ManiSkillEnv, render_device_error, visible_state, visible_state_size
from torchrl_elmur.envs.mikasa_oracles import make_oracle

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(render_device_error() is not None, reason=f"MIKASA-Robo: {render_device_error()}")]


def project(raw, camera: str, position) -> np.ndarray:
    """Pixel ``(u, v)`` where ``camera`` sees the world point ``position`` ``[3]``."""
    params = raw.scene.sensors[camera].get_params()
    K, E = params["intrinsic_cv"][0].numpy(), params["extrinsic_cv"][0].numpy()
    u = K @ (E @ np.append(np.asarray(position, dtype=np.float64), 1.0))
    return u[:2] / u[2]


def blob(frame: np.ndarray, rgb: tuple[int, int, int], tol: int = 60) -> np.ndarray | None:
    """Centre ``(u, v)`` of the pixels of ``frame`` ``[H, W, 3]`` within ``tol`` of colour ``rgb``, or None."""
    near = (np.abs(frame.astype(int) - np.array(rgb)).max(-1) < tol).nonzero()
    return None if len(near[0]) == 0 else np.array([near[1].mean() + 0.5, near[0].mean() + 0.5])


RED, LIME, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
GOAL_RED, PURPLE = (204, 71, 76), (180, 3, 212)  # the goal disc as rendered, flat (lit: purple); the table is near the red


def test_specs_sizes_and_bad_modes():
    env = ManiSkillEnv("RememberColor5-v0", obs_mode="visible_state", seed=0)
    try:
        check_env_specs(env)
        td = env.rollout(3)
        assert td["visible_state"].shape == (3, visible_state_size("RememberColor5-v0")) == (3, 61)
        assert "pixels" not in td.keys() and td["visible_state"].dtype == torch.float32
    finally:
        env.close()
    with pytest.raises(ValueError, match=r"obs_mode='visible' is invalid: expected one of \('rgb', 'state', 'visible_state'\)"):
        ManiSkillEnv("RememberColor3-v0", obs_mode="visible")


def test_remember_color_vector_is_what_the_cameras_show():
    """RememberColor3 rendered (64 px) and read as a vector at once: at every step, a cube is shown in the
    vector iff its colour is in the base camera's frame, at the pixel where the camera projects the
    vector's position (within 1.5 px); only the target at steps 0-4 (at the centre), none at 5-9, all
    three from 10."""
    env = ManiSkillEnv("RememberColor3-v0", image_size=64, seed=1)
    raw = env.raw.unwrapped
    try:
        td = env.reset()
        target = int(raw.true_color_indices.reshape(-1)[0])
        for t in range(13):
            v = visible_state(raw)
            proprio = td["proprio"]  # qpos 9, qvel 9, TCP pose 7: the robot part is all but the velocities
            assert torch.equal(v[:9], proprio[:9]) and torch.equal(v[9:16], proprio[18:25])
            frame = td["pixels"][:3].permute(1, 2, 0).numpy()
            shown = []
            for k, colour in enumerate((RED, LIME, BLUE)):
                flag, position, onehot = v[16 + 7 * k], v[17 + 7 * k:20 + 7 * k], v[20 + 7 * k:23 + 7 * k]
                assert onehot.tolist() == [float(i == k) for i in range(3)]
                seen = blob(frame, colour)
                assert (seen is not None) == bool(flag), (t, k, seen, flag)
                if flag:
                    assert np.abs(seen - project(raw, "base_camera", position.numpy())).max() < 1.5, (t, k)
                else:
                    assert position.abs().max() == 0  # nothing about a hidden cube
                shown.append(int(flag))
            expected = [int(k == target) for k in range(3)] if t < 5 else [0, 0, 0] if t < 10 else [1, 1, 1]
            assert shown == expected, (t, shown)
            if t < 5:
                assert v[17 + 7 * target:19 + 7 * target].abs().max() < 1e-6  # the cue stands at the centre
            td = env.step(td.set("action", torch.zeros(4)))["next"]
    finally:
        env.close()


def test_episodes_that_differ_only_in_the_cue_are_the_same_from_step_5():
    """One seed's layout with cue 0 and with cue 2, the same actions: the observations differ at steps
    0-4 (the cube shown) and are equal from step 5 on: the target's identity never enters the vector."""
    env = ManiSkillEnv("RememberColor3-v0", obs_mode="visible_state", seed=3)
    actions = torch.rand(30, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    runs = []
    try:
        for cue in (0, 2):
            env.set_seed(3)
            td = env.reset(TensorDict({"cue": torch.tensor(cue)}, []))
            observations = [td["visible_state"]]
            for a in actions:
                td = env.step(td.set("action", a))["next"]
                observations.append(td["visible_state"])
            runs.append(torch.stack(observations))
    finally:
        env.close()
    differ = (runs[0] != runs[1]).any(-1)
    assert differ[:5].all() and not differ[5:].any(), differ.nonzero().reshape(-1).tolist()


def test_take_it_back_vector_is_what_the_cameras_show():
    """TakeItBack rendered and read at once, the oracle acting: the cube where the camera sees green, the
    goal disc red until the cube has reached it and purple after (the vector's last entry), both at
    their projected places."""
    env = ManiSkillEnv("TakeItBack-v0", image_size=64, seed=2)
    raw = env.raw.unwrapped
    oracle = make_oracle("TakeItBack-v0")
    try:
        td = env.reset()
        oracle.reset(raw)
        lit_steps = []
        for t in range(70):
            v = visible_state(raw)
            frame = td["pixels"][:3].permute(1, 2, 0).numpy()
            cube, goal, lit = v[16:19].numpy(), v[23:26].numpy(), bool(v[26])
            seen = blob(frame, LIME, tol=90)  # the cube: seen where projected, unless the gripper hides it
            assert (seen is not None or t > 0) and (seen is None or np.abs(seen - project(raw, "base_camera", cube)).max() < 2.5), (t, seen)
            disc = blob(frame, PURPLE if lit else GOAL_RED, tol=15)
            assert disc is not None and np.abs(disc - project(raw, "base_camera", goal)).max() < 3.0, (t, lit, disc)
            assert blob(frame, GOAL_RED if lit else PURPLE, tol=15) is None, (t, lit)
            lit_steps.append(lit)
            td = env.step(td.set("action", oracle(raw)))["next"]
        assert not lit_steps[0] and lit_steps[-1] and lit_steps.index(True) > 10  # lit once the cube got there
    finally:
        env.close()


def test_take_it_back_hidden_start_leaves_no_trace():
    """The same seed twice, the oracle's actions of the first run replayed in the second, where the
    initial region (hidden from the cameras) and the oracle's copy of it are moved after the reset:
    every observation is equal, only the success differs (the cube went back to the first place)."""
    envs = [ManiSkillEnv("TakeItBack-v0", obs_mode="visible_state", seed=4) for _ in range(2)]
    try:
        tds = [env.reset() for env in envs]
        moved = envs[1].raw.unwrapped
        pose = moved.initial_region.pose.raw_pose.clone()
        pose[:, 1] += 0.2  # another place on the table, far from where the cube started
        moved.initial_region.pose = pose
        moved.oracle_info = moved.oracle_info + torch.tensor([0.0, 0.2, 0.0])
        oracle = make_oracle("TakeItBack-v0")
        oracle.reset(envs[0].raw.unwrapped)
        for t in range(90):
            assert torch.equal(tds[0]["visible_state"], tds[1]["visible_state"]), t
            action = oracle(envs[0].raw.unwrapped)
            tds = [env.step(td.set("action", action))["next"] for env, td in zip(envs, tds)]
        assert tds[0]["success_once"].item() and not tds[1]["success_once"].item()
    finally:
        for env in envs:
            env.close()


@pytest.mark.parametrize("task", ["RememberColor9-v0", "TakeItBack-v0"])
def test_oracle_and_dataset_in_visible_state(tmp_path, task):
    """The oracle records visible_state episodes (full length, every one a success), cached and reloaded;
    an obs mode a policy may not learn from is refused by name."""
    from torchrl_elmur.data import make_mikasa_dataset
    from torchrl_elmur.data.mikasa_dataset import oracle_success

    data = make_mikasa_dataset(task, 2, seed=5, obs_mode="visible_state", cache_dir=tmp_path, progress=False)
    T = {"RememberColor9-v0": 60, "TakeItBack-v0": 180}[task]
    assert data.batch_size == (2 * T,) and oracle_success(data) == 1.0
    assert data["visible_state"].shape == (2 * T, visible_state_size(task)) and "pixels" not in data.keys()
    folder = next(tmp_path.iterdir())
    assert folder.name == f"{task}_2_5_visible_state"
    again = make_mikasa_dataset(task, 2, seed=5, obs_mode="visible_state", cache_dir=tmp_path, progress=False)
    assert torch.equal(again["visible_state"][:], data["visible_state"][:])
    with pytest.raises(ValueError, match="obs_mode='state' is invalid: expected 'rgb' or 'visible_state'"):
        make_mikasa_dataset(task, 2, obs_mode="state", cache_dir=None)
