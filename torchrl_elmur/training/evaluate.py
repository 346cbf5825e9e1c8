"""Evaluate a TorchRL policy by streaming it through a batched env: one episode per env, one step at a time."""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules.utils import get_primers_from_module
from tqdm import trange

from ..modules import inplace_steps, set_state_layout


def first_episode_returns(policy: TensorDictModuleBase, env: EnvBase, max_steps: int, *, greedy: bool = True,
                          progress: bool = False, desc: str = "eval",
                          on_step: Callable[[TensorDictBase], None] | None = None) -> torch.Tensor:
    """The return of the first episode of every env of a batched ``env`` (batch size ``[N]``).

    The policy runs in step mode, its recurrent state carried from step to step by TorchRL
    (``env.step_and_maybe_reset``, as collectors do, so envs whose episode ended are reset and
    keep running until all have finished one). Nothing is stored, so ELMURModules step with
    ``state_layout="cache"``; the policy's primers (``get_primers_from_module``) are added here.

    Args:
        env: a batched env ``[N]`` with ``InitTracker``, without the policy's primers. Seed it
            first (``env.set_seed``).
        max_steps: bound on the episode length (an error names the envs still running after it).
        greedy: eval mode and deterministic actions (training mode restored afterwards; see :func:`streaming`).
        on_step: called with each step's tensordict (after the step, before the reset), e.g. to
            record the policy's memory (clone what you keep: ELMUR's state is updated in place).

    Returns:
        float ``[N]``: each env's first-episode return.
    """
    if len(env.batch_size) != 1:
        raise ValueError(f"first_episode_returns: expected an env with one batch dim [N], received {list(env.batch_size)}.")
    n = env.batch_size[0]
    returns = torch.zeros(n, device=env.device)
    finished = torch.zeros(n, dtype=torch.bool, device=env.device)
    with streaming(policy, env, greedy) as env:
        td = env.reset()
        for _ in trange(max_steps, desc=desc, leave=False, dynamic_ncols=True, disable=not progress, mininterval=2.0):
            td, root = env.step_and_maybe_reset(policy(td))
            if on_step is not None:
                on_step(td)
            returns += torch.where(finished, 0.0, td["next", "reward"].reshape(n).to(returns.dtype))
            finished |= td["next", "done"].reshape(n)
            if bool(finished.all()):
                break
            td = root
    if not bool(finished.all()):
        raise RuntimeError(f"first_episode_returns: envs {(~finished).nonzero().squeeze(-1).tolist()} had not finished "
                           f"an episode after max_steps={max_steps}.")
    return returns


@contextlib.contextmanager
def streaming(policy: TensorDictModuleBase, env: EnvBase, greedy: bool = True):
    """Run ``policy`` step by step in ``env``: yields ``env`` with the policy's primers added
    (``get_primers_from_module``), under no-grad, ELMUR's ``"cache"`` state layout stepped in
    place (:func:`~torchrl_elmur.modules.inplace_steps`: nothing here keeps a state, so a step
    updates its state instead of copying it; a callback that keeps a state must clone it) and,
    with ``greedy``, eval mode and deterministic actions (training mode restored afterwards)."""
    was_training = policy.training
    if greedy:
        policy.eval()
    exploration = set_exploration_type(ExplorationType.DETERMINISTIC) if greedy else contextlib.nullcontext()
    try:
        with exploration, set_state_layout(policy, "cache"), inplace_steps(policy), torch.no_grad():
            with warnings.catch_warnings():  # a memoryless policy has none: nothing to warn about
                warnings.simplefilter("ignore")
                primers = get_primers_from_module(policy)
            yield env if primers is None else TransformedEnv(env, primers)  # a new TransformedEnv on the same base env
    finally:
        policy.train(was_training)


def episode_outcomes(policy: TensorDictModuleBase, env: EnvBase, episodes_per_env: int, *, key: str = "success_once",
                     max_steps: int, greedy: bool = True, progress: bool = False, desc: str = "eval") -> torch.Tensor:
    """``("next", key)`` at the end of each of the first ``episodes_per_env`` episodes of every env of
    a batched ``env`` ``[N]``: ``[N, episodes_per_env]`` (env ``i``'s episodes in the order played).

    The policy streams as in :func:`first_episode_returns`; envs that finished their quota keep
    stepping (their further episodes are not counted) until all have. ``max_steps`` bounds the
    whole loop (an error names the envs short of their quota).
    """
    if len(env.batch_size) != 1:
        raise ValueError(f"episode_outcomes: expected an env with one batch dim [N], received {list(env.batch_size)}.")
    n = env.batch_size[0]
    outcomes = torch.zeros(n, episodes_per_env, dtype=env.full_observation_spec[key].dtype)
    counts = torch.zeros(n, dtype=torch.long)
    with streaming(policy, env, greedy) as env:
        td = env.reset()
        bar = trange(n * episodes_per_env, desc=desc, leave=False, dynamic_ncols=True, disable=not progress)
        for _ in range(max_steps):
            td, root = env.step_and_maybe_reset(policy(td))
            for i in td["next", "done"].reshape(n).nonzero().squeeze(-1).tolist():
                if counts[i] < episodes_per_env:
                    outcomes[i, counts[i]] = td["next", key].reshape(n, -1)[i, 0].cpu()
                    counts[i] += 1
                    bar.update(1)
            if bool((counts >= episodes_per_env).all()):
                break
            td = root
        bar.close()
    if not bool((counts >= episodes_per_env).all()):
        raise RuntimeError(f"episode_outcomes: envs {(counts < episodes_per_env).nonzero().squeeze(-1).tolist()} had not "
                           f"finished {episodes_per_env} episodes after max_steps={max_steps}.")
    return outcomes


def popgym_returns(policy: TensorDictModuleBase, task: str, episodes: int, *, progress: bool = False,
                   desc: str = "eval") -> torch.Tensor:
    """Greedy returns ``[episodes]`` of ``policy`` on a POPGym task, one episode per env of a batch,
    on the evaluation seeds ``EVAL_SEED + i`` (disjoint from every dataset's); bounded by the
    task's episode length."""
    from ..data.storage import EVAL_SEED
    from ..envs.popgym_env import make_popgym_env, make_popgym_gym

    raw = make_popgym_gym(task).unwrapped
    max_steps = int(getattr(raw, "max_episode_length", None) or 2048) + 1
    env = make_popgym_env(task, num_envs=episodes)
    env.set_seed(EVAL_SEED)
    try:
        return first_episode_returns(policy, env, max_steps, progress=progress, desc=desc)
    finally:
        env.close()


def mikasa_success(policy: TensorDictModuleBase, task: str, episodes: int, *, obs_mode: str = "rgb", image_size: int = 64,
                   workers: int = 1, progress: bool = False, desc: str = "eval") -> torch.Tensor:
    """Greedy ``success_once`` (bool ``[episodes]``) of ``policy`` on a MIKASA-Robo task, episode ``i``
    on seed ``EVAL_SEED + i`` (disjoint from every dataset's), in a ``ParallelEnv`` of ``workers``
    CPU processes (worker ``w`` plays seeds ``EVAL_SEED + w, + w + workers, ...``; ``workers=1``: a
    ``SerialEnv`` in this process, with no process to start), observing ``obs_mode`` (``"rgb"`` at
    ``image_size``, or ``"visible_state"``). Episodes end at their first success
    (``terminate_on_success``): nothing after it changes ``success_once``."""
    import functools

    from torchrl.envs import ParallelEnv, SerialEnv

    from ..data.storage import EVAL_SEED
    from ..envs.mikasa_env import episode_length, make_mikasa_env

    workers = max(1, min(workers, episodes))
    per_worker = -(-episodes // workers)
    make = [functools.partial(make_mikasa_env, task, obs_mode=obs_mode, image_size=image_size, seed=EVAL_SEED + w,
                              seed_stride=workers, terminate_on_success=True) for w in range(workers)]
    threads = torch.get_num_threads()  # ParallelEnv changes this process's threads when it starts and closes
    env = SerialEnv(1, make) if workers == 1 else ParallelEnv(workers, make, mp_start_method="spawn", num_threads=threads)
    try:
        outcomes = episode_outcomes(policy, env, per_worker, max_steps=per_worker * episode_length(task) + 1,
                                    progress=progress, desc=desc)
    finally:  # a worker that failed to start has closed it already: keep that error, not a second one
        env.close(raise_if_closed=False)
        torch.set_num_threads(threads)
    # episode k of worker w has seed EVAL_SEED + w + k * workers: order by seed
    return outcomes.T.reshape(-1)[:episodes]
