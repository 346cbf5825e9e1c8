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

from ..modules import set_state_layout


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
        greedy: eval mode and deterministic actions (training mode restored afterwards).
        on_step: called with each step's tensordict (after the step, before the reset), e.g. to
            record the policy's memory.

    Returns:
        float ``[N]``: each env's first-episode return.
    """
    if len(env.batch_size) != 1:
        raise ValueError(f"first_episode_returns: expected an env with one batch dim [N], received {list(env.batch_size)}.")
    n = env.batch_size[0]
    was_training = policy.training
    if greedy:
        policy.eval()
    returns = torch.zeros(n, device=env.device)
    finished = torch.zeros(n, dtype=torch.bool, device=env.device)
    exploration = set_exploration_type(ExplorationType.DETERMINISTIC) if greedy else contextlib.nullcontext()
    try:
        with exploration, set_state_layout(policy, "cache"), torch.no_grad():
            with warnings.catch_warnings():  # a memoryless policy has none: nothing to warn about
                warnings.simplefilter("ignore")
                primers = get_primers_from_module(policy)
            if primers is not None:  # a new TransformedEnv on the same base env
                env = TransformedEnv(env, primers)
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
    finally:
        policy.train(was_training)
    if not bool(finished.all()):
        raise RuntimeError(f"first_episode_returns: envs {(~finished).nonzero().squeeze(-1).tolist()} had not finished "
                           f"an episode after max_steps={max_steps}.")
    return returns


def popgym_returns(policy: TensorDictModuleBase, task: str, episodes: int, *, progress: bool = False,
                   desc: str = "eval") -> torch.Tensor:
    """Greedy returns ``[episodes]`` of ``policy`` on a POPGym task, one episode per env of a batch,
    on the evaluation seeds ``EVAL_SEED + i`` (disjoint from every dataset's); bounded by the
    task's episode length."""
    from ..data.popgym_dataset import EVAL_SEED
    from ..envs.popgym_env import make_popgym_env, make_popgym_gym

    raw = make_popgym_gym(task).unwrapped
    max_steps = int(getattr(raw, "max_episode_length", None) or 2048) + 1
    env = make_popgym_env(task, num_envs=episodes)
    env.set_seed(EVAL_SEED)
    try:
        return first_episode_returns(policy, env, max_steps, progress=progress, desc=desc)
    finally:
        env.close()
