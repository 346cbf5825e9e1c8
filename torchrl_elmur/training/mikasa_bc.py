"""The MIKASA-Robo behaviour-cloning recipe: what ``benchmarks/mikasa_robo.py`` trains and measures.

- :func:`mikasa_elmur_config`: ELMUR for a task, the published MIKASA configuration (``"paper"``)
  or a CPU-sized one with its segment length, lambda and sigma (``"cpu"``).
- :func:`make_mikasa_actor`: observation -> memory -> ``bound * tanh`` action head, by
  :func:`~torchrl_elmur.training.policies.make_bc_actor`; the same encoder for every memory:
  ``visible_state`` standardized by the data's statistics, then a linear embedding (joint angles
  in radians sit beside cube positions a few centimetres apart: without the standardization no
  memory learned which cube the cue named), or a :class:`~torchrl_elmur.modules.PixelEncoder` of
  the two cameras (``obs="rgb"``).
- :func:`cue_effect`: whether a trained policy reads its memory on RememberColor.
- :data:`PAPER_PIXELS`: the paper's success rates (from pixels), to print beside a run's.

Examples:
    >>> actor = make_mikasa_actor("RememberColor3-v0", "gru", width=8)
    >>> actor.in_keys[:1], visible_state_size("RememberColor3-v0")
    (['visible_state'], 37)
"""
from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torchrl.modules import set_recurrent_mode

from ..core import ELMURConfig
from ..envs.mikasa_env import (CUE_STEPS, MIKASA_TASKS, PROPRIO_SIZE, episode_length, mikasa_task, num_colours,
                                visible_state_size)
from .policies import fit_standardize, make_bc_actor

ACTION_DIMS = {"pd_ee_delta_pos": 4, "pd_ee_delta_pose": 7}  # the control modes of MIKASA_TASKS
PUBLISHED = {"RememberColor": ELMURConfig.mikasa_remember_color, "TakeItBack": ELMURConfig.mikasa_take_it_back}
# the paper's offline results from two 128x128 cameras, 1000 oracle episodes (../shared/ELMUR.md section 6)
PAPER_PIXELS = {"RememberColor3-v0": {"elmur": 0.89, "mlp": 0.27}, "RememberColor5-v0": {"elmur": 0.19, "mlp": 0.12},
                "RememberColor9-v0": {"elmur": 0.23, "mlp": 0.12}, "TakeItBack-v0": {"elmur": 0.78, "mlp": 0.33}}
# steps of each episode a training row holds, from its start: past the oracle's first success in every one of the
# 1000 recorded episodes (step 20-22 of 60 in RememberColor3, 41-50 of 180 in TakeItBack); evaluation ends an
# episode at its first success, so the steps after it are never played
TRAIN_WINDOW = {"RememberColor": 30, "TakeItBack": 60}
DECISION_STEPS = 3  # RememberColor: the first steps of the reach, the only ones that need the cue (later: the arm's motion)


def mikasa_elmur_config(task: str, preset: Literal["cpu", "paper"] = "cpu", *, width: int = 64,
                        detach_memory: bool = False) -> ELMURConfig:
    """ELMUR for ``task``: ``"paper"``, the published configuration of its family (RememberColor:
    D=128, L=4, M=256, K=20; TakeItBack: D=32, L=2, M=32, K=60); ``"cpu"``, the published segment
    length, lambda and sigma at ``width``, 2 layers, 4 heads, 16 slots (a CPU's budget; 16 slots hold
    every segment of a 180-step episode).

    Examples:
        >>> c = mikasa_elmur_config("TakeItBack-v0")
        >>> c.d_model, c.segment_len, c.memory_slots
        (64, 60, 16)
    """
    published = PUBLISHED[MIKASA_TASKS[mikasa_task(task)][0]]
    if preset == "paper":
        return published(detach_memory=detach_memory)
    if preset != "cpu":
        raise ValueError(f"mikasa_elmur_config: preset={preset!r} is invalid: expected 'cpu' or 'paper'.")
    return published(d_model=width, num_layers=2, num_heads=4, memory_slots=16, detach_memory=detach_memory)


def make_mikasa_actor(task: str, memory: str, *, obs: Literal["visible_state", "rgb"] = "visible_state",
                      data: TensorDictBase | None = None, preset: Literal["cpu", "paper"] = "cpu", width: int = 64,
                      detach_memory: bool = False, image_size: int = 64, proprio: bool = False) -> TensorDictModuleBase:
    """A BC actor for ``task``: reads ``visible_state`` ``[*B, D]`` (or ``pixels`` ``[*B, 6, H, W]``
    and, with ``proprio``, ``proprio`` ``[*B, 25]``), writes ``action`` ``[*B, A]`` in ``[-1, 1]``
    (A = 4 for RememberColor's ``pd_ee_delta_pos``, 7 for TakeItBack's ``pd_ee_delta_pose``).

    Every memory gets ELMUR's width (:func:`mikasa_elmur_config`) and the same encoder: only the
    memory differs. ``memory``: ``"elmur"``, ``"gru"``, ``"lstm"`` or ``"mlp"`` (none).
    ``data``: the training set (visible_state): its per-feature mean and standard deviation
    standardize the observation (buffers saved with the policy; without ``data``, the identity).
    """
    config = mikasa_elmur_config(task, preset, width=width, detach_memory=detach_memory)
    action_dim = ACTION_DIMS[MIKASA_TASKS[task][1]]
    elmur = config if memory == "elmur" else None
    if obs == "visible_state":
        actor = make_bc_actor(memory, visible_state_size(task), action_dim=action_dim, width=config.d_model,
                              config=elmur, in_keys=("visible_state",), standardize=True)
        return actor if data is None else fit_standardize(actor, data["visible_state"][:])
    if obs != "rgb":
        raise ValueError(f"make_mikasa_actor: obs={obs!r} is invalid: expected 'visible_state' or 'rgb'.")
    from ..modules import PixelEncoder

    encoder = PixelEncoder(6, image_size, width=config.d_model, proprio_size=PROPRIO_SIZE if proprio else 0)
    keys = ("pixels", "proprio") if proprio else ("pixels",)
    return make_bc_actor(memory, 0, action_dim=action_dim, width=config.d_model, config=elmur, encoder=encoder,
                         in_keys=keys)


def train_window(task: str) -> int:
    """The default training row length of ``task`` (:data:`TRAIN_WINDOW`).

    Examples:
        >>> train_window("RememberColor9-v0"), train_window("TakeItBack-v0")
        (30, 60)
    """
    return TRAIN_WINDOW[MIKASA_TASKS[mikasa_task(task)][0]]


def step_weights(task: str, decision_weight: float, window: int | None = None) -> torch.Tensor | None:
    """Per-step BC loss weights ``[window]`` (default the whole episode): ``decision_weight`` on
    RememberColor's first :data:`DECISION_STEPS` reach steps, 1 elsewhere; None when all would be 1.

    Examples:
        >>> step_weights("RememberColor3-v0", 4.0, 30)[8:14].tolist()
        [1.0, 1.0, 4.0, 4.0, 4.0, 1.0]
        >>> step_weights("TakeItBack-v0", 4.0) is None
        True
    """
    if decision_weight == 1.0 or not num_colours(task):
        return None
    w = torch.ones(window or episode_length(task))
    w[CUE_STEPS:CUE_STEPS + DECISION_STEPS] = decision_weight
    return w


def chance(task: str) -> float | None:
    """Success of a policy that picks one cube uniformly (RememberColor); ``None`` for TakeItBack,
    which has no such guess (tables print ``-`` and plots draw no line for it).

    Examples:
        >>> chance("RememberColor5-v0"), chance("TakeItBack-v0")
        (0.2, None)
    """
    colours = num_colours(task)
    return 1.0 / colours if colours else None


@torch.no_grad()
def cue_effect(actor: TensorDictModuleBase, data: TensorDictBase, task: str, key: str = "visible_state",
               pairs: int = 50) -> dict:
    """Whether a policy reads its memory: on ``pairs`` pairs of training episodes, the cue steps
    (the first :data:`CUE_STEPS` observations under ``key``) of episode ``b`` replaced by those of
    episode ``a``, the mean absolute change of ``b``'s actions over the 10 steps after the cue (the
    reach, where the action carries the choice of cube), beside the oracle's mean absolute action
    there for scale (all action dims). A policy that acts on the cue changes its reach in the swaps
    whose colours differ (2 of 3 in RememberColor3); a memoryless one cannot change at all (0
    exactly). Empty for TakeItBack (no separable cue) or fewer than 2 episodes.

    Args:
        data: flat ``[N]`` episodes of ``task``, whole and in order (as the datasets store them).
    """
    T = episode_length(task)
    n = data.shape[0] // T
    k = min(pairs, n // 2)
    if not num_colours(task) or k < 1:
        return {}
    episodes = data.reshape(n, T)
    reach = slice(CUE_STEPS, CUE_STEPS + 10)
    own = episodes[:k].clone()  # in memory; the actor writes its actions over the oracle's in it
    reach_action = own["action"][:, reach].abs().mean().item()
    swapped = own.clone()
    swapped[key][:, :CUE_STEPS] = episodes[k:2 * k][key][:, :CUE_STEPS]
    was_training = actor.training
    actor.eval()
    try:
        with set_recurrent_mode(True):
            change = actor(swapped)["action"] - actor(own)["action"]
    finally:
        actor.train(was_training)
    return {"cue_effect": change[:, reach].abs().mean().item(), "reach_action": reach_action}
