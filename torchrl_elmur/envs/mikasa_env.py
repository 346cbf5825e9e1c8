"""MIKASA-Robo (ManiSkill 3) tasks as TorchRL envs: pixels from two cameras, success tracked per episode.

MIKASA-Robo (``pip install -e .[maniskill]``, then ``pip install --no-deps mikasa-robo-suite==1.0.0``;
CPU rendering needs Mesa 25's Vulkan driver, see the README) builds memory tasks on ManiSkill 3.
TorchRL has no ManiSkill wrapper; :class:`ManiSkillEnv` is one, for one CPU-simulated env per
process (the CPU simulator allows ``num_envs=1``). Several processes: a ``ParallelEnv`` of
:func:`make_mikasa_env`.

Keys (``obs_mode="rgb"``): ``pixels`` uint8 ``[6, H, W]`` (``base_camera`` RGB then
``hand_camera`` RGB, channels first, as in the paper), ``proprio`` float32 ``[25]`` (joint
positions 9, joint velocities 9, TCP pose 7); ``obs_mode="state"``: ``state`` float32 (the task's
privileged state vector, cue included); ``obs_mode="visible_state"``: ``visible_state`` float32
(:func:`visible_state`: the privileged state restricted to what the two cameras show at this
step, nothing rendered; a CPU's memory benchmark). Always: ``action`` float32 in ``[-1, 1]``, ``("next",
"reward")`` ``[1]``, ``done / terminated / truncated`` ``[1]``, ``success`` (this step) and
``success_once`` (any step of the episode so far) bool ``[1]``, ``step_count`` int64 ``[1]``.

Episodes run their full length (``max_episode_steps``, 60 for RememberColor, 180 for TakeItBack)
and end truncated, as in the authors' data collection, which ignores ManiSkill's
terminate-on-success; ``terminate_on_success=True`` ends them at the first success instead (an
evaluation that only reads ``success_once`` needs nothing after it).

RememberColor as shipped is broken on CPU physics (``../shared/MIKASA.md``): its ``evaluate()``
hides the cubes by moving them to z = 1000, which on the CPU simulator moves the real bodies, so
they fall back from there and the table is empty when the choice comes. :class:`ManiSkillEnv`
keeps the hiding visual: the real poses are kept aside when ``evaluate()`` hides and put back
before every physics step (:func:`keep_hiding_visual`).
"""
from __future__ import annotations

import difflib
import functools
import types

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Binary, Bounded, Composite, Unbounded
from torchrl.envs import EnvBase

# task id -> (family, the control mode this project's oracles and policies use)
PROPRIO_SIZE = 25  # the "proprio" observation (rgb mode): qpos 9, qvel 9, TCP pose 7
CUE_STEPS = 10  # RememberColor: the cue is shown (steps 0-4), then hidden (5-9); the oracle holds still

MIKASA_TASKS = {
    "RememberColor3-v0": ("RememberColor", "pd_ee_delta_pos"),
    "RememberColor5-v0": ("RememberColor", "pd_ee_delta_pos"),
    "RememberColor9-v0": ("RememberColor", "pd_ee_delta_pos"),
    "TakeItBack-v0": ("TakeItBack", "pd_ee_delta_pose"),
}
OBS_MODES = ("rgb", "state", "visible_state")
HIDDEN_Z = 10.0  # the tasks hide an object from the cameras by moving it to z = 1000 (m)
ROBOT_SIZE = 16  # visible_state's robot part: joint positions 9, TCP pose 7
CAMERAS = ("base_camera", "hand_camera")


def mikasa_task(task: str) -> str:
    """``task`` checked against :data:`MIKASA_TASKS` (the ones with an oracle here).

    Examples:
        >>> mikasa_task("RememberColor3-v0")
        'RememberColor3-v0'
    """
    if not isinstance(task, str) or task not in MIKASA_TASKS:
        close = difflib.get_close_matches(str(task), list(MIKASA_TASKS), n=2)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(f"MIKASA task: unknown task {task!r}.{hint} Valid ids: {sorted(MIKASA_TASKS)}.")
    return task


def episode_length(task: str) -> int:
    """The task's episode length (ManiSkill's registered ``max_episode_steps``: 60 / 180)."""
    _import_mikasa()
    from mani_skill.utils.registration import REGISTERED_ENVS

    return int(REGISTERED_ENVS[mikasa_task(task)].max_episode_steps)


@functools.cache
def render_device_error() -> str | None:
    """``None`` when SAPIEN finds a render device (Vulkan), else why not: every ManiSkill env needs
    one, even in state mode. Cached per process."""
    try:
        import mani_skill.envs  # noqa: F401
        import mikasa_robo_suite.rl.memory_envs  # noqa: F401
        import sapien
    except ImportError as err:
        return (f"MIKASA-Robo is not installed ({err}): pip install -e '.[maniskill]' && "
                "pip install --no-deps mikasa-robo-suite==1.0.0")
    try:
        sapien.render.RenderSystem()
    except RuntimeError as err:
        return (f"SAPIEN found no render device ({err}); on a CPU machine install Mesa 25's Vulkan driver "
                "(Debian 12: apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1)")
    return None


def _import_mikasa() -> None:
    error = render_device_error()
    if error is not None:
        raise RuntimeError(f"ManiSkillEnv: {error}")


def keep_hiding_visual(raw) -> None:
    """Make a RememberColor env's hiding of the cubes visual only (on this instance).

    Its ``evaluate()`` (run after every physics step and at reset, before the observation is
    rendered) sets hidden cubes' poses to z = 1000. Here the real poses are saved just before it
    and put back before the next physics step (``_before_control_step``) and at every new episode,
    so the rendered frames hide the cubes while the bodies stay where they are.
    """
    cubes = raw.cubes
    evaluate, before_control, initialize = raw.evaluate, raw._before_control_step, raw._initialize_episode
    state = {"real": None}  # the real poses while the cubes are hidden, else None

    def restore():
        if state["real"] is not None:
            for key, pose in state["real"].items():
                cubes[key].pose = pose
            state["real"] = None

    def patched_evaluate(self):
        restore()  # evaluate() twice without a physics step in between must see the real poses
        real = {key: cube.pose.raw_pose.clone() for key, cube in cubes.items()}
        info = evaluate()
        state["real"] = real
        return info

    def patched_before_control(self):
        restore()
        return before_control()

    def patched_initialize(self, env_idx, options):
        state["real"] = None  # a new episode sets new poses
        return initialize(env_idx, options)

    raw.evaluate = types.MethodType(patched_evaluate, raw)
    raw._before_control_step = types.MethodType(patched_before_control, raw)
    raw._initialize_episode = types.MethodType(patched_initialize, raw)


def num_colours(task: str) -> int:
    """How many cube colours a RememberColor task shows (3, 5 or 9); 0 for the other tasks.

    Examples:
        >>> num_colours("RememberColor5-v0"), num_colours("TakeItBack-v0")
        (5, 0)
    """
    family = MIKASA_TASKS[mikasa_task(task)][0]
    return int(task.removeprefix("RememberColor").split("-")[0]) if family == "RememberColor" else 0


def allow_cue_choice(raw) -> None:
    """Let ``raw.reset(options={"cue": k})`` choose a RememberColor episode's cue colour ``k``.

    The layout (where each colour's cube stands) is drawn from the seed as before; only the colour
    shown as the cue, and so the cube to reach, is replaced. Without the option the episode is the
    task's own draw.
    """
    initialize = raw._initialize_episode

    def patched_initialize(self, env_idx, options):
        out = initialize(env_idx, options)
        cue = (options or {}).get("cue")
        if cue is not None:
            self.true_color_indices = torch.full_like(self.true_color_indices, int(cue))
            self.oracle_info = self.true_color_indices
        return out

    raw._initialize_episode = types.MethodType(patched_initialize, raw)


def visible_state_size(task: str) -> int:
    """Width of :func:`visible_state` for ``task``: 16 (robot) + ``n * (4 + n)`` for RememberColor
    with ``n`` colours, 16 + 11 for TakeItBack.

    Examples:
        >>> visible_state_size("RememberColor3-v0"), visible_state_size("RememberColor9-v0"), visible_state_size("TakeItBack-v0")
        (37, 133, 27)
    """
    n = num_colours(task)
    return ROBOT_SIZE + (n * (4 + n) if n else 11)


def _shown(pose_p: torch.Tensor) -> torch.Tensor:
    """``[1]`` float: 1 when the object is where the cameras can see it (not moved to z = 1000)."""
    return (pose_p.reshape(-1, 3)[:1, 2] < HIDDEN_Z).float()


def visible_state(raw) -> torch.Tensor:
    """The privileged state of a MIKASA-Robo env restricted to what its two cameras show now: ``[D]``
    float32 (:func:`visible_state_size`), read from the raw env (``ManiSkillEnv.raw.unwrapped``)
    after a reset or step, whatever its ``obs_mode``.

    - Robot (all tasks): joint positions 9 and TCP pose 7 (position, wxyz quaternion): the arm's
      posture as a frame shows it. Joint velocities are left out: no single frame shows them (a
      policy infers motion from successive observations, as from pixels), and with them every
      memory learned to copy its own motion (the oracle's action follows the arm's velocity during
      a reach), so that a small error while the oracle holds still grew into a reach.
    - RememberColor (``n`` colours): per cube, in colour order: shown (1 or 0), position ``[3]``
      where it is shown (zeros while hidden), colour one-hot ``[n]``. The task shows only the target
      cube, at the centre of the table, at steps 0-4, no cube at steps 5-9, every cube at its place
      from step 10, and does it by moving hidden cubes to z = 1000: "shown" is exactly that.
      ``true_color_indices`` / ``oracle_info`` (the target) never enter; which cube was shown at
      steps 0-4 is the cue a policy must remember.
    - TakeItBack: cube pose ``[7]``, goal region position ``[3]``, goal lit (1 once the goal turned
      purple: the task swaps the red disc for a purple one from the step after the cube first
      reached it). The initial region (hidden from the cameras, ``oracle_info``) never enters: a
      policy must remember where the cube stood at the start.

    Shown means not hidden by the task; an object the arm happens to occlude still counts as shown.
    """
    agent = raw.agent
    parts = [agent.robot.get_qpos(), agent.tcp.pose.raw_pose]  # [1, 9], [1, 7]
    parts = [p.reshape(-1, p.shape[-1])[:1].reshape(-1) for p in parts]
    if hasattr(raw, "cubes"):  # RememberColor
        n = len(raw.cubes)
        for key in sorted(raw.cubes):
            p = raw.cubes[key].pose.p.reshape(-1, 3)[0]
            shown = _shown(p)
            parts += [shown, p * shown, torch.nn.functional.one_hot(torch.tensor(int(key)), n).float()]
    else:  # TakeItBack
        lit = _shown(raw.changed_goal_region.pose.p)
        goal = raw.changed_goal_region if bool(lit) else raw.goal_region
        parts += [raw.cube.pose.raw_pose.reshape(-1, 7)[0], goal.pose.p.reshape(-1, 3)[0], lit]
    return torch.cat([p.to("cpu", torch.float32) for p in parts])


class ManiSkillEnv(EnvBase):
    """One MIKASA-Robo / ManiSkill 3 env (CPU physics, ``num_envs=1``) as a TorchRL env; batch size ``[]``.

    Args:
        task: a task id of :data:`MIKASA_TASKS`.
        obs_mode: ``"rgb"`` (``pixels`` + ``proprio``), ``"state"`` (``state``, cue included) or
            ``"visible_state"`` (``visible_state``: what the cameras show, see :func:`visible_state`;
            nothing is rendered: on this project's 2-core CPU about 150-190 steps/s against about 5 for
            ``"rgb"`` at 64x64, the oracle acting; ``docs/howto/mikasa.md``).
        image_size: camera resolution (square; the paper's 128, 64 for a CPU budget; rgb only).
        control_mode: ManiSkill control mode; default the task's in :data:`MIKASA_TASKS`
            (``pd_ee_delta_pos``, 4-D, for RememberColor; ``pd_ee_delta_pose``, 7-D, for
            TakeItBack, whose oracle tilts the gripper to reach the goal).
        seed: seed of the first episode; episode ``k`` of this env uses ``seed + k * seed_stride``
            (so that the workers of a ``ParallelEnv`` play disjoint seeds:
            ``seed = base + worker, seed_stride = workers``). ``set_seed`` sets it again.
        terminate_on_success: end an episode (terminated) at its first success.
        max_episode_steps: episode length (default the task's).

    The raw ManiSkill env is ``env.raw`` (``env.raw.unwrapped`` holds the privileged state the
    oracles read).

    ``env.reset(TensorDict({"cue": torch.tensor(k)}))`` plays a RememberColor episode with cue
    colour ``k`` on the seed's layout (the same seed with every ``k``: episodes that differ only in
    the cue, see :func:`allow_cue_choice`).

    Example (needs a render device; ``tests/test_mikasa.py`` runs it)::

        env = ManiSkillEnv("RememberColor3-v0", image_size=64, seed=0)
        td = env.rollout(3)  # td["pixels"]: uint8 [3, 6, 64, 64]
    """

    def __init__(self, task: str, *, obs_mode: str = "rgb", image_size: int = 128, control_mode: str | None = None,
                 seed: int = 0, seed_stride: int = 1, terminate_on_success: bool = False,
                 max_episode_steps: int | None = None, device="cpu") -> None:
        task = mikasa_task(task)
        if obs_mode not in OBS_MODES:
            raise ValueError(f"ManiSkillEnv: obs_mode={obs_mode!r} is invalid: expected one of {OBS_MODES}.")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or not 16 <= image_size <= 512:
            raise ValueError(f"ManiSkillEnv: image_size must be an int in [16, 512], received {image_size!r}.")
        if isinstance(seed_stride, bool) or not isinstance(seed_stride, int) or seed_stride < 1:
            raise ValueError(f"ManiSkillEnv: seed_stride must be an int >= 1, received {seed_stride!r}.")
        _import_mikasa()
        import gymnasium as gym

        super().__init__(device=device, batch_size=[])
        self.task, self.obs_mode, self.image_size = task, obs_mode, image_size
        self.control_mode = control_mode or MIKASA_TASKS[task][1]
        self.terminate_on_success = terminate_on_success
        self.seed_stride = seed_stride
        sensors = dict(width=image_size, height=image_size)
        raw_mode = "state_dict" if obs_mode == "visible_state" else obs_mode  # (its obs unused: read from the scene)
        self.raw = gym.make(task, num_envs=1, obs_mode=raw_mode, control_mode=self.control_mode, render_mode=None,
                            sim_backend="cpu", sensor_configs=sensors)
        if MIKASA_TASKS[task][0] == "RememberColor":
            keep_hiding_visual(self.raw.unwrapped)
            allow_cue_choice(self.raw.unwrapped)
        self.max_episode_steps = int(max_episode_steps or episode_length(task))
        self._next_seed = int(seed)
        self._steps = 0
        self._success_once = False
        self.episode_seed: int | None = None  # the seed of the episode being played
        self._make_specs()

    # ------------------------------------------------------------------ specs
    def _make_specs(self) -> None:
        space = self.raw.action_space
        low, high = torch.as_tensor(space.low).reshape(-1), torch.as_tensor(space.high).reshape(-1)
        self.action_spec = Bounded(low, high, shape=low.shape, dtype=torch.float32, device=self.device)
        flag = functools.partial(Binary, n=1, shape=(1,), dtype=torch.bool, device=self.device)
        obs = {"success": flag(), "success_once": flag(),
               "step_count": Unbounded(shape=(1,), dtype=torch.int64, device=self.device)}
        if self.obs_mode == "rgb":
            size = self.image_size
            obs["pixels"] = Bounded(0, 255, shape=(6, size, size), dtype=torch.uint8, device=self.device)
            obs["proprio"] = Unbounded(shape=(PROPRIO_SIZE,), dtype=torch.float32, device=self.device)
        elif self.obs_mode == "visible_state":
            obs["visible_state"] = Unbounded(shape=(visible_state_size(self.task),), dtype=torch.float32, device=self.device)
        else:
            width = int(np.prod(self.raw.observation_space.shape[1:]))
            obs["state"] = Unbounded(shape=(width,), dtype=torch.float32, device=self.device)
        self.observation_spec = Composite(obs, device=self.device)
        self.reward_spec = Unbounded(shape=(1,), dtype=torch.float32, device=self.device)
        self.done_spec = Composite({k: flag() for k in ("done", "terminated", "truncated")}, device=self.device)

    # ------------------------------------------------------------------ observations
    def _observe(self, obs, success: bool) -> dict:
        out = {"success": torch.tensor([success]), "success_once": torch.tensor([self._success_once]),
               "step_count": torch.tensor([self._steps])}
        if self.obs_mode == "rgb":
            frames = [obs["sensor_data"][cam]["rgb"][0] for cam in CAMERAS]  # each [H, W, 3] uint8
            out["pixels"] = torch.cat(frames, dim=-1).permute(2, 0, 1).contiguous()  # [6, H, W]
            out["proprio"] = torch.cat([obs["agent"]["qpos"][0], obs["agent"]["qvel"][0],
                                        obs["extra"]["tcp_pose"][0]]).float()
        elif self.obs_mode == "visible_state":
            out["visible_state"] = visible_state(self.raw.unwrapped)
        else:
            out["state"] = obs[0].reshape(-1).float()
        return out

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        options = {}
        cue = None if tensordict is None else tensordict.get("cue", None)
        if cue is not None:  # RememberColor: this episode's cue colour, chosen (see allow_cue_choice)
            colours = num_colours(self.task)
            if cue.numel() != 1 or cue.dtype.is_floating_point or not 0 <= int(cue) < colours:
                expected = f"an integer in [0, {colours})" if colours else "no 'cue' (only RememberColor has one)"
                raise ValueError(f"ManiSkillEnv.reset: 'cue' must be {expected} for {self.task}, received "
                                 f"{cue.tolist()} ({cue.dtype}).")
            options["cue"] = int(cue)
        self.episode_seed = self._next_seed
        self._next_seed += self.seed_stride
        obs, _ = self.raw.reset(seed=self.episode_seed, options=options)
        self._steps, self._success_once = 0, False
        out = self._observe(obs, False)
        out.update({k: torch.tensor([False]) for k in ("done", "terminated", "truncated")})
        return TensorDict(out, batch_size=[], device=self.device)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")
        if action.shape != self.action_spec.shape:
            raise ValueError(f"ManiSkillEnv: 'action' must have shape {list(self.action_spec.shape)}, received "
                             f"{list(action.shape)}.")
        if not bool(torch.isfinite(action).all()):
            raise ValueError(f"ManiSkillEnv: 'action' must be finite, received {action.tolist()}.")
        obs, reward, _, _, info = self.raw.step(action.detach().to("cpu", torch.float32).reshape(1, -1))
        self._steps += 1
        success = bool(info["success"].reshape(-1)[0])
        self._success_once |= success
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_episode_steps and not terminated
        out = self._observe(obs, success)
        out.update({"reward": torch.as_tensor(reward, dtype=torch.float32).reshape(1),
                    "done": torch.tensor([terminated or truncated]), "terminated": torch.tensor([terminated]),
                    "truncated": torch.tensor([truncated])})
        return TensorDict(out, batch_size=[], device=self.device)

    def _set_seed(self, seed: int | None) -> None:
        if seed is not None:
            self._next_seed = int(seed)

    def close(self, *, raise_if_closed: bool = True) -> None:
        raw = getattr(self, "raw", None)
        if raw is not None:
            raw.close()
            self.raw = None
        super().close(raise_if_closed=raise_if_closed)


def make_mikasa_env(task: str, *, init_tracker: bool = True, **kwargs):
    """:class:`ManiSkillEnv` (keyword arguments passed on) with ``InitTracker`` for recurrent policies.

    Several CPU processes: ``ParallelEnv(n, [functools.partial(make_mikasa_env, task, seed=s + i,
    seed_stride=n) for i in range(n)])`` plays seeds ``s, s + 1, ...`` across the workers.
    """
    from torchrl.envs import InitTracker, TransformedEnv

    env = ManiSkillEnv(task, **kwargs)
    return TransformedEnv(env, InitTracker()) if init_tracker else env
