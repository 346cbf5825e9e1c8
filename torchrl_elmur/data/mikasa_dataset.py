"""Offline MIKASA-Robo data: the scripted oracle acts on privileged state while the env records what a policy sees.

Same offline format as the T-Maze and POPGym data: one flat TensorDict ``[N]`` of transitions,
episode after episode, with the observation (``obs_mode="rgb"``: ``pixels``, uint8 ``[6, H, W]``,
stored as uint8, and ``proprio``; ``obs_mode="visible_state"``: ``visible_state``, see
:func:`~torchrl_elmur.envs.mikasa_env.visible_state`),
``action`` (float32, the task's control mode, see :data:`~torchrl_elmur.envs.MIKASA_TASKS`),
``is_init`` (True at each episode's first step), ``episode`` (int64 id) and ``("next", reward /
done / terminated / truncated / success / success_once)``. No next pixels: behaviour cloning reads
none, and they would double the storage. Episodes run their full length (60 steps for
RememberColor, 180 for TakeItBack), as in the authors' data.

Episode ``i`` is played from seed ``seed + i``; evaluation uses seeds from :data:`EVAL_SEED` on.
``cues_per_layout = c > 1`` (RememberColor) plays every seed's layout ``c`` times, with its own
cue colour and ``c - 1`` others (all of them when ``c`` is the number of colours): episodes that
differ only in the cue, so the reach cannot be fitted from the layout alone.
``action_noise = sigma > 0`` (RememberColor, DART-style): during the reach (steps
:data:`NOISE_STEPS`) the env executes the oracle's action plus Gaussian noise on its position
dims, while ``action`` stores the oracle's clean action at the state actually visited. The arm's
path then no longer gives the target away frame by frame (behaviour cloning's copycat shortcut)
and the data show how to come back from a wrong direction.
Rendering is the cost in rgb (about 8 steps/s per process on this project's 2-core CPU, either image
size; visible_state renders nothing: about 150-190 steps/s, oracle included): ``workers`` processes
play disjoint seed ranges.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import random
import time
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.envs.utils import step_mdp
from tqdm import tqdm

from ..envs.mikasa_env import CUE_STEPS, ManiSkillEnv, mikasa_task, num_colours
from ..processes import in_processes
from .storage import EVAL_SEED, cached_dataset

FORMAT_VERSION = 1  # bump when the stored format or the oracles change
STEP_KEYS = {"rgb": ("pixels", "proprio"), "state": ("state",), "visible_state": ("visible_state",)}  # recorded per obs_mode
NEXT_KEYS = ("reward", "done", "terminated", "truncated", "success", "success_once")
NOISE_STEPS = (CUE_STEPS, 30)  # RememberColor: the steps whose executed action gets ``action_noise`` (after the cue's 10, the reach)


def perturb(action: torch.Tensor, sigma: float, generator: torch.Generator, dims: int = 3) -> torch.Tensor:
    """``action`` with ``N(0, sigma^2)`` noise added to its first ``dims`` entries (the end-effector
    position deltas of ``pd_ee_delta_pos``), clipped to ``[-1, 1]``; the rest (the gripper) unchanged.

    Examples:
        >>> a = torch.tensor([0.5, -0.2, 0.0, 1.0])
        >>> torch.equal(perturb(a, 0.0, torch.Generator()), a)
        True
        >>> b = perturb(torch.tensor([0.9, 0.0, 0.0, 1.0]), 10.0, torch.Generator().manual_seed(0))
        >>> bool(b[:3].abs().max() <= 1), float(b[3])
        (True, 1.0)
    """
    noisy = action.clone()
    noisy[:dims] = (action[:dims] + sigma * torch.randn(dims, generator=generator)).clamp(-1.0, 1.0)
    return noisy


def check_action_noise(task: str, action_noise: float) -> None:
    """``action_noise`` is a finite float >= 0, and 0 unless ``task`` is a RememberColor task."""
    if isinstance(action_noise, bool) or not isinstance(action_noise, (int, float)) or not 0 <= action_noise < float("inf"):
        raise ValueError(f"action_noise must be a finite float >= 0 (the noise's standard deviation), "
                         f"received {action_noise!r}.")
    if action_noise and not num_colours(task):
        raise ValueError(f"action_noise must be 0 for {task}: it is defined for RememberColor's reach "
                         f"(steps {NOISE_STEPS[0]}-{NOISE_STEPS[1] - 1}) only, received {action_noise!r}.")


def layout_cues(drawn: int, colours: int, cues_per_layout: int, seed: int) -> list[int | None]:
    """The cue colours one layout is played with: ``None`` (the task's own draw, ``drawn``) first,
    then ``cues_per_layout - 1`` of the other colours (chosen from ``seed``; all, ascending, when
    ``cues_per_layout == colours``).

    Examples:
        >>> layout_cues(1, 3, 3, seed=0)
        [None, 0, 2]
        >>> layout_cues(1, 3, 1, seed=0)
        [None]
    """
    others = [c for c in range(colours) if c != drawn]
    if cues_per_layout - 1 < len(others):
        others = sorted(random.Random(seed).sample(others, cues_per_layout - 1))
    return [None, *others]


def check_cues_per_layout(task: str, num_episodes: int, cues_per_layout: int) -> None:
    """``cues_per_layout`` is an int in ``[1, colours]`` that divides ``num_episodes`` (1 for TakeItBack)."""
    colours = max(num_colours(task), 1)
    if isinstance(cues_per_layout, bool) or not isinstance(cues_per_layout, int) or not 1 <= cues_per_layout <= colours:
        raise ValueError(f"cues_per_layout must be an int in [1, {colours}] for {task} (its number of cue colours), "
                         f"received {cues_per_layout!r}.")
    if num_episodes % cues_per_layout:
        raise ValueError(f"num_episodes ({num_episodes}) must be a multiple of cues_per_layout ({cues_per_layout}): "
                         "every layout is played with each of its cues.")


def play_mikasa_episodes(task: str, num_episodes: int, seed: int = 0, *, image_size: int = 64, obs_mode: str = "rgb",
                         terminate_on_success: bool = False, progress: bool = True, report=None,
                         cues_per_layout: int = 1, action_noise: float = 0.0) -> TensorDict:
    """Play ``num_episodes`` oracle episodes of ``task`` (seeds ``seed, seed + 1, ...``) in one process.

    Args:
        cues_per_layout: RememberColor: play each seed's layout with this many cue colours
            (:func:`layout_cues`): ``num_episodes / cues_per_layout`` layouts (seeds), episode ids
            ``layout_seed * cues_per_layout + j``. Must divide ``num_episodes``.
        action_noise: RememberColor: standard deviation of the noise on the executed reach
            (:func:`perturb`, steps :data:`NOISE_STEPS`; drawn from a generator seeded with the
            episode id, so the data do not depend on ``workers``); ``action`` stays the oracle's.
        obs_mode: ``"rgb"`` records ``pixels`` and ``proprio``; ``"visible_state"`` renders nothing
            and records ``visible_state``; ``"state"`` (the oracle's own success rate) records ``state``.
        terminate_on_success: end each episode at its first success.
        report: optional callable, called with 1 after each episode (progress across processes).

    Returns:
        the flat TensorDict ``[N]`` of the module docstring.
    """
    from ..envs.mikasa_oracles import make_oracle

    check_cues_per_layout(task, num_episodes, cues_per_layout)
    check_action_noise(task, action_noise)
    torch.set_num_threads(1)
    env = ManiSkillEnv(task, image_size=image_size, seed=seed, obs_mode=obs_mode, terminate_on_success=terminate_on_success)
    keys = STEP_KEYS[obs_mode]
    oracle = make_oracle(task)
    episodes = []

    def play(cue: int | None, episode: int) -> TensorDict:
        td = env.reset(None if cue is None else TensorDict({"cue": torch.tensor(cue)}, []))
        oracle.reset(env.raw.unwrapped)
        generator = torch.Generator().manual_seed(episode)
        steps = []
        while True:
            label = oracle(env.raw.unwrapped)
            noisy = action_noise and NOISE_STEPS[0] <= len(steps) < NOISE_STEPS[1]
            td.set("action", perturb(label, action_noise, generator) if noisy else label)
            td = env.step(td)
            steps.append(td.select(*keys, *[("next", k) for k in NEXT_KEYS]).set("action", label))
            td = step_mdp(td)
            if bool(steps[-1]["next", "done"]):
                break
        rows = torch.stack(steps)
        rows.set("is_init", torch.arange(len(rows)).eq(0).unsqueeze(-1))
        return rows

    try:
        bar = tqdm(total=num_episodes, desc=f"{task} episodes", disable=not progress, dynamic_ncols=True)
        for layout in range(num_episodes // cues_per_layout):
            cues = [None]
            for j in range(cues_per_layout):
                if j == 1:  # the layout's own cue was played: now the others, on the same seed
                    cues = layout_cues(int(env.raw.unwrapped.true_color_indices.reshape(-1)[0]), num_colours(task),
                                       cues_per_layout, seed + layout)
                env.set_seed(seed + layout)
                episode = (seed + layout) * cues_per_layout + j
                rows = play(cues[j], episode)
                rows.set("episode", torch.full((len(rows),), episode, dtype=torch.int64))
                episodes.append(rows)
                bar.update(1)
                if report is not None:
                    report(1)
        bar.close()
    finally:
        env.close()
    return torch.cat(episodes)


def _play_shard(count: int, seed: int, task: str, image_size: int, obs_mode: str, cues: int, noise: float,
                done_queue) -> TensorDict:
    return play_mikasa_episodes(task, count, seed, image_size=image_size, obs_mode=obs_mode, progress=False,
                                report=done_queue.put, cues_per_layout=cues, action_noise=noise)


def make_mikasa_dataset(task: str, num_episodes: int = 100, seed: int = 0, *, image_size: int = 64, workers: int = 1,
                        cache_dir: str | Path | None = "outputs/cache/mikasa", progress: bool = True,
                        cues_per_layout: int = 1, action_noise: float = 0.0, obs_mode: str = "rgb") -> TensorDict:
    """Oracle episodes of a MIKASA-Robo task, stored in a ``LazyMemmapStorage`` under ``cache_dir``.

    ``obs_mode``: ``"rgb"`` (two cameras at ``image_size``) or ``"visible_state"`` (what the cameras
    show as a vector, nothing rendered; ``image_size`` unused).
    Built once per (task, episodes, seed, obs mode, image size, cues per layout, format); later calls load
    the memory-mapped copy. ``workers > 1`` plays contiguous seed ranges in that many processes
    (spawned). ``cache_dir=None``: build in memory, store nothing. ``cues_per_layout``: see
    :func:`play_mikasa_episodes` (``num_episodes`` counts every episode, layouts are
    ``num_episodes / cues_per_layout`` seeds); ``action_noise``: see :func:`play_mikasa_episodes`.

    Returns:
        the flat TensorDict ``[N]`` of the module docstring, ``N = num_episodes * episode length``.
    """
    task = mikasa_task(task)
    for name, value, low in (("num_episodes", num_episodes, 1), ("workers", workers, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"make_mikasa_dataset: {name} must be an int >= {low}, received {value!r}.")
    if obs_mode not in ("rgb", "visible_state"):
        raise ValueError(f"make_mikasa_dataset: obs_mode={obs_mode!r} is invalid: expected 'rgb' or 'visible_state' "
                         "(the observations a policy may learn from).")
    check_cues_per_layout(task, num_episodes, cues_per_layout)
    check_action_noise(task, action_noise)
    layouts = num_episodes // cues_per_layout
    if seed + layouts > EVAL_SEED:
        raise ValueError(f"make_mikasa_dataset: seed + layouts must be <= {EVAL_SEED} (evaluation seeds start "
                         f"there), received seed={seed}, layouts={layouts}.")
    meta = {"task": task, "num_episodes": num_episodes, "seed": seed, "image_size": image_size, "format": FORMAT_VERSION}
    name = f"{task}_{num_episodes}_{seed}_{image_size}px"
    if obs_mode != "rgb":  # (absent for rgb: the caches built before the option stay valid)
        meta["obs_mode"], name = obs_mode, f"{task}_{num_episodes}_{seed}_{obs_mode}"
        del meta["image_size"]
    if cues_per_layout > 1:  # (absent when 1: the caches built before the option stay valid)
        meta["cues_per_layout"], name = cues_per_layout, f"{name}_{cues_per_layout}cues"
    if action_noise:  # (likewise)
        meta["action_noise"], name = float(action_noise), f"{name}_noise{action_noise:g}"
    folder = None if cache_dir is None else Path(cache_dir) / name
    start = time.perf_counter()
    return cached_dataset(folder, meta, lambda: _build(task, num_episodes, seed, image_size, obs_mode, workers, progress,
                                                       cues_per_layout, float(action_noise)),
                          extra=lambda data: {"oracle_success": oracle_success(data),
                                              "build_seconds": time.perf_counter() - start})


def _build(task: str, num_episodes: int, seed: int, image_size: int, obs_mode: str, workers: int, progress: bool,
           cues: int, noise: float) -> TensorDict:
    layouts = num_episodes // cues
    workers = min(workers, layouts)
    if workers == 1:
        return play_mikasa_episodes(task, num_episodes, seed, image_size=image_size, obs_mode=obs_mode, progress=progress,
                                    cues_per_layout=cues, action_noise=noise)
    bounds = [round(i * layouts / workers) for i in range(workers + 1)]  # layouts per worker
    shards = [((bounds[i + 1] - bounds[i]) * cues, seed + bounds[i]) for i in range(workers)]  # (episodes, first seed)
    with mp.get_context("spawn").Manager() as manager, tqdm(
            total=num_episodes, desc=f"{task} episodes ({workers} processes)", disable=not progress,
            dynamic_ncols=True) as bar:
        done_queue = manager.Queue()  # one item per finished episode, from every worker

        def show_done() -> None:
            while True:
                try:
                    bar.update(done_queue.get_nowait())
                except queue.Empty:
                    return

        played = dict(in_processes(_play_shard, shards, workers, task, image_size, obs_mode, cues, noise, done_queue,
                                   on_wait=show_done))  # a shard's error ends the others at once
        show_done()
    return torch.cat([played[shard] for shard in shards])


def oracle_eval_success(task: str, episodes: int, progress: bool = False) -> float:
    """The oracle's success rate on the evaluation seeds ``EVAL_SEED + i`` (state mode: nothing rendered)."""
    data = play_mikasa_episodes(task, episodes, EVAL_SEED, obs_mode="state", terminate_on_success=True,
                                progress=progress)
    return oracle_success(data)


def oracle_success(data: TensorDict) -> float:
    """Fraction of the stored episodes whose ``success_once`` is True at their last step."""
    last = data["next", "done"].reshape(-1)
    return data["next", "success_once"].reshape(-1)[last].float().mean().item()
