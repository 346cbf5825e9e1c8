"""Scripted privileged oracles for the MIKASA-Robo tasks of :data:`~torchrl_elmur.envs.mikasa_env.MIKASA_TASKS`.

An oracle reads the raw ManiSkill env (``ManiSkillEnv.raw.unwrapped``: the object poses, the
target colour, the hidden initial region) and returns the next action in the task's control mode
(:data:`~torchrl_elmur.envs.mikasa_env.MIKASA_TASKS`). They are proportional controllers on
end-effector targets, not learned agents: deterministic, a few lines per phase, and
``>= 0.9`` success (measured in ``tests/test_mikasa.py`` and ``benchmarks/mikasa_robo.py``).

- RememberColor (``pd_ee_delta_pos``, 4-D): hold still while the cue is shown and hidden
  (the first ``TIME_OFFSET + DELTA_TIME`` = 10 steps; the oracle knows the target from the start
  but a policy cannot, so acting then would teach something no observation explains), then
  servo the TCP to ``hover`` above the target cube's real position and stay there (success: TCP
  within 5 cm of the cube's centre and the arm static).
- TakeItBack (``pd_ee_delta_pose``, 7-D): grasp the cube, lift it, carry it over the goal
  region with the gripper tilted forward (a vertical gripper cannot reach the goal's far x, so the
  carry stalls short of it), then carry it back over its initial region, now hidden from the
  cameras, and hold.

Examples:
    >>> rc_action(np.zeros(3), np.array([0.02, 0.0, 0.0]), hover=0.0, gain=1.0).astype(float).round(3).tolist()
    [0.2, 0.0, 0.0, 1.0]
"""
from __future__ import annotations

import numpy as np
import torch

POSITION_SCALE = 0.1  # pd_ee_delta_*: an action of 1 moves the TCP target by 0.1 m (rotation: 0.1 rad)


def _clip(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -1.0, 1.0)


def rc_action(tcp: np.ndarray, target: np.ndarray, *, hover: float, gain: float, gripper: float = 1.0) -> np.ndarray:
    """``pd_ee_delta_pos`` action moving the TCP ``[3]`` toward ``hover`` m above ``target`` ``[3]``."""
    error = target + np.array([0.0, 0.0, hover]) - tcp
    return np.concatenate([_clip(gain * error / POSITION_SCALE), [gripper]]).astype(np.float32)


def _pos(pose) -> np.ndarray:
    return pose.p.reshape(-1, 3)[0].cpu().numpy().astype(np.float64)


def _quat(pose) -> np.ndarray:
    return pose.q.reshape(-1, 4)[0].cpu().numpy().astype(np.float64)  # wxyz


class RememberColorOracle:
    """Hold still for the cue's 10 steps, then hover above the cube of the cue's colour."""

    def __init__(self, hover: float = 0.03, gain: float = 0.6) -> None:
        self.hover, self.gain = hover, gain

    def reset(self, raw) -> None:
        pass

    def __call__(self, raw) -> torch.Tensor:
        if int(raw.elapsed_steps.reshape(-1)[0]) < raw.TIME_OFFSET + raw.DELTA_TIME:
            return torch.tensor([0.0, 0.0, 0.0, 1.0])
        target = int(raw.true_color_indices.reshape(-1)[0])
        cube = raw.initial_poses[target].reshape(-1, 3)[0].cpu().numpy()  # its real place (cubes stay put)
        return torch.as_tensor(rc_action(_pos(raw.agent.tcp.pose), cube, hover=self.hover, gain=self.gain))


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def rotation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Axis-angle ``[3]`` (world frame) of the rotation taking matrix ``current`` to ``target``.

    Examples:
        >>> rotation_error(np.eye(3), np.eye(3)).tolist()
        [0.0, 0.0, 0.0]
    """
    r = target @ current.T
    angle = np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (2.0 * np.sin(angle))
    return axis * angle


class TakeItBackOracle:
    """Grasp, lift, carry over the goal (gripper tilted forward), carry back over the start, hold.

    Args:
        tilt: gripper tilt about the world y axis during the carry (rad; 0 = pointing down).
        lift: carry height of the cube's centre (m).
        gain: proportional gain on the position error (per 0.1 m of action).
    """

    def __init__(self, tilt: float = 0.6, lift: float = 0.05, gain: float = 0.6, rot_gain: float = 0.5) -> None:
        self.tilt, self.lift, self.gain, self.rot_gain = tilt, lift, gain, rot_gain
        self.phase, self.timer, self.down = "approach", 0, None

    def reset(self, raw) -> None:
        self.phase, self.timer, self.down = "approach", 0, None

    def _orientation(self, tilt: float) -> np.ndarray:
        c, s = np.cos(tilt), np.sin(-tilt)  # about -y: the fingers turn toward +x (away from the robot)
        rot_y = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
        return rot_y @ self.down

    def __call__(self, raw) -> torch.Tensor:
        tcp_pose = raw.agent.tcp.pose
        tcp, rot = _pos(tcp_pose), _quat_to_matrix(_quat(tcp_pose))
        if self.down is None:
            self.down = rot  # the starting orientation (gripper down) is the reference
        cube = _pos(raw.cube.pose)
        goal = _pos(raw.goal_region.pose)
        start = raw.oracle_info.reshape(-1, 3)[0].cpu().numpy().astype(np.float64)
        reached = bool(raw.goal_reached_status.reshape(-1)[0])
        gripper, tilt = 1.0, 0.0
        if self.phase == "approach":
            target = cube + np.array([0.0, 0.0, 0.08])
            if np.linalg.norm(target - tcp) < 0.01:
                self.phase = "descend"
        if self.phase == "descend":
            target = cube.copy()
            if np.linalg.norm(target - tcp) < 0.008:
                self.phase, self.timer = "grasp", 0
        if self.phase == "grasp":
            target, gripper = cube.copy(), -1.0
            self.timer += 1
            if self.timer >= 5:
                self.phase, self.timer = "tilt", 0
        if self.phase == "tilt":  # lift and tilt in place: at the far end of the carry the arm could not
            gripper, tilt = -1.0, self.tilt
            target = np.array([tcp[0], tcp[1], self.lift])
            self.timer += 1
            if np.linalg.norm(rotation_error(rot, self._orientation(tilt))) < 0.1 or self.timer >= 20:
                self.phase = "carry"
        if self.phase in ("carry", "return"):
            gripper = -1.0
            if self.phase == "carry" and reached:
                self.phase = "return"
            goal_xy = goal[:2] if self.phase == "carry" else start[:2]
            tilt = self.tilt
            target = np.array([goal_xy[0], goal_xy[1], self.lift]) - (cube - tcp) * np.array([1.0, 1.0, 0.0])
            target[2] = self.lift
        position = _clip(self.gain * (target - tcp) / POSITION_SCALE)
        rotation = _clip(-self.rot_gain * rotation_error(rot, self._orientation(tilt)) / POSITION_SCALE)
        return torch.as_tensor(np.concatenate([position, rotation, [gripper]]).astype(np.float32))


ORACLES = {"RememberColor": RememberColorOracle, "TakeItBack": TakeItBackOracle}


def make_oracle(task: str):
    """A fresh oracle for a task id of :data:`~torchrl_elmur.envs.mikasa_env.MIKASA_TASKS`."""
    from .mikasa_env import MIKASA_TASKS, mikasa_task

    return ORACLES[MIKASA_TASKS[mikasa_task(task)][0]]()
