"""The T-Maze behaviour-cloning recipe: what ``tutorials/offline_bc.py`` trains, and every benchmark
that trains "by the tutorial's recipe" (``tmaze_horizon``, ``tmaze_fidelity``, ``step_cost``).

- :class:`TMazeBC`: the recipe's settings (data, model, training) with the tutorial's defaults;
  the tutorial's ``Args`` extends it with what only a run needs (policies, evaluation, output).
- :func:`tmaze_elmur_config`: ELMUR's configuration for it (the published T-Maze one, with the
  released code's options).
- :func:`make_tmaze_actor`: encoder -> memory -> logits -> greedy Categorical, by
  :func:`~torchrl_elmur.training.policies.make_bc_actor`.
- :func:`train_tmaze_bc`: oracle data, cross-entropy BC, AdamW, checkpoint selection by
  validation success at a long corridor, by :func:`~torchrl_elmur.training.bc.fit_bc`.

Examples:
    >>> recipe = TMazeBC(width=16, episodes=20, steps=2, batch=4, select_corridor=0)
    >>> actor = make_tmaze_actor("gru", recipe)
    >>> history = train_tmaze_bc(actor, recipe, name="gru", progress=False)
    >>> history.selected_step is None, len(history.probes)
    (True, 0)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tensordict.nn import TensorDictModuleBase

from ..core import ELMURConfig
from ..data import VALIDATION_SEED, make_tmaze_dataset
from ..envs.tmaze_rules import NUM_ACTIONS, OBS_DIM
from ..objectives import SequenceCrossEntropyLoss
from .bc import BCHistory, fit_bc
from .cli import flag_values
from .distributed import DistributedContext
from .policies import make_bc_actor
from .tmaze_eval import tmaze_success_rate


@dataclass
class TMazeBC:
    """The T-Maze BC recipe (defaults: the tutorial's; README: what it reaches)."""

    # data
    episodes: int = 2000  # oracle training episodes
    max_corridor: int = 28  # corridors uniform in 1..max_corridor (episodes of at most 30 steps)
    # model
    width: int = 128  # width of the encoder, the memory module and its output
    segment_len: int = 10  # ELMUR K: attention window of 10 steps
    memory_slots: int = 2  # ELMUR M
    lru_blend: float = 0.79  # ELMUR lambda: every segment blends its write into the least recently used slot
    write_rule: Literal["paper", "official"] = "paper"  # ELMUR: an empty slot takes its first write outright (paper) or blended (official)
    detach_memory: bool = True  # ELMUR: no gradient through memory across segments (published)
    released_options: bool = True  # ELMUR: the released code's init, output biases, dropout sites and MoE FFN (see tmaze_elmur_config)
    # training
    steps: int = 300  # gradient steps
    batch: int = 64  # trajectories per batch
    seq_len: int = 30  # steps per trajectory (3 ELMUR segments)
    lr: float = 1e-3  # one rate for all three; at 3e-4, GRU and LSTM do not learn the cue in 300 steps
    label_smoothing: float = 0.16  # of the cross-entropy BC loss
    grad_clip: float = 5.0  # max gradient norm
    bf16: bool = False  # forward passes under bfloat16 autocast (weights, optimizer and state stay float32); for GPUs
    select_corridor: int = 1000  # keep the weights with the best greedy success at this corridor (validation episodes; 0: the last)
    select_every: int = 50  # probe for select_corridor every this many steps
    select_episodes: int = 20  # validation episodes per probe (even)
    checkpoint_every: int = 50  # write the training state (weights, optimizer, step, sampler, RNGs) every this many steps (0: at the end only)
    seed: int = 0  # initial weights, data and sampling


def tmaze_elmur_config(recipe: TMazeBC) -> ELMURConfig:
    """The published T-Maze configuration (lambda 0.79: a memory that keeps updating, detached
    at segment boundaries as published) with the released code's options on.

    Why the released options: with ``detach_memory=True`` the write path (write attention, memory
    FFN) never receives a gradient, so it stays as initialised, and a memory that blends a new
    write every segment is driven for 100 to 100,000 segments by that untrained map. Under
    PyTorch's default init and an MLP FFN (``released_options=False``) the memory keeps drifting
    away from what the read saw in training (3 training segments) and the policy fails from
    corridor 300-1000 (3 of 3 seeds); with the released code's init, biased output projections,
    dropout sites and mixture-of-experts FFN together it settles within ~10 segments and the
    policy reaches 1.00 up to corridor 10,000 (``benchmarks/tmaze_fidelity.py``: runs, seeds and
    the leave-one-out table).

    Examples:
        >>> tmaze_elmur_config(TMazeBC()).init, tmaze_elmur_config(TMazeBC(released_options=False)).moe is None
        ('released', True)
    """
    preset = ELMURConfig.tmaze_released if recipe.released_options else ELMURConfig.tmaze
    return preset(input_size=recipe.width, d_model=recipe.width, segment_len=recipe.segment_len,
                  memory_slots=recipe.memory_slots, lru_blend=recipe.lru_blend, write_rule=recipe.write_rule,
                  detach_memory=recipe.detach_memory)


def make_tmaze_actor(memory: str, recipe: TMazeBC, config: ELMURConfig | None = None) -> TensorDictModuleBase:
    """``observation [*B, 4]`` -> Linear + GELU -> ``memory`` (``"elmur"``, ``"gru"``, ``"lstm"`` or
    ``"mlp"``) of width ``recipe.width`` -> ``logits [*B, 4]`` -> greedy Categorical ``action``.
    ``config``: ELMUR's, instead of :func:`tmaze_elmur_config` (its width must be the recipe's).

    Examples:
        >>> actor = make_tmaze_actor("elmur", TMazeBC(width=16))
        >>> actor.in_keys
        ['observation', 'recurrent_state', 'is_init']
    """
    if memory == "elmur":
        config = config or tmaze_elmur_config(recipe)
    return make_bc_actor(memory, OBS_DIM, num_actions=NUM_ACTIONS, width=recipe.width,
                         config=config if memory == "elmur" else None)


def train_tmaze_bc(actor: TensorDictModuleBase, recipe: TMazeBC, *, name: str, run=None,
                   ctx: DistributedContext | None = None, progress: bool = True, checkpoint: str | Path | None = None,
                   resume: bool = False) -> BCHistory:
    """Train ``actor`` on ``recipe.episodes`` oracle episodes; with ``select_corridor`` it ends with
    the weights that did best at that corridor on validation episodes (seeds
    :data:`~torchrl_elmur.data.VALIDATION_SEED` on).

    Why select: success beyond the training length is not what the loss measures, and it comes and
    goes during training (at corridor 1000, probes of one run read 1.00, 0.50, 0.50, 1.00 fifty
    steps apart), so the last weights are a lottery; the released ELMUR trainer keeps its best
    checkpoint by validation success at corridor 9600. Corridors above ``select_corridor`` stay
    unseen. ``run``: a wandb run or None; ``ctx``: under ``torchrun``, DDP over the batch's rows.
    ``checkpoint``: the training state's file, written every ``recipe.checkpoint_every`` steps and at
    the end; ``resume``: continue from it (the run then ends as the uninterrupted one would).
    """
    data = make_tmaze_dataset(recipe.episodes, max_corridor=recipe.max_corridor, seed=recipe.seed)
    select = recipe.select_corridor > 0

    def validate(policy) -> dict:
        return {"success": tmaze_success_rate(policy, recipe.select_corridor, recipe.select_episodes,
                                              seed=VALIDATION_SEED, progress=False)}

    return fit_bc(actor, SequenceCrossEntropyLoss(actor, label_smoothing=recipe.label_smoothing), data,
                  steps=recipe.steps, batch=recipe.batch, seq_len=recipe.seq_len, lr=recipe.lr, seed=recipe.seed,
                  grad_clip=recipe.grad_clip, ctx=ctx, name=name, run=run, progress=progress,
                  probe=validate if select else None, probe_every=recipe.select_every,
                  select="success" if select else None,
                  autocast_dtype=torch.bfloat16 if recipe.bf16 else None, checkpoint=checkpoint,
                  checkpoint_every=recipe.checkpoint_every if checkpoint is not None else 0, resume=resume,
                  config=resume_config(recipe))


# checked by fit_bc / train_bc themselves (or free to change when resuming)
_TRAIN_BC_CHECKS = ("steps", "batch", "seq_len", "lr", "grad_clip", "seed", "bf16", "checkpoint_every")


def resume_config(recipe: TMazeBC) -> dict:
    """The recipe's settings that a resumed run must share with the one it continues (by flag name),
    beyond those :func:`~torchrl_elmur.training.bc.fit_bc` checks itself; a script's arguments that
    extend the recipe (output, evaluation, ``--resume``) are not among them.

    Examples:
        >>> resume_config(TMazeBC())["--max-corridor"], "--batch" in resume_config(TMazeBC())
        (28, False)
    """
    return flag_values(recipe, leave_out=_TRAIN_BC_CHECKS, fields_of=TMazeBC)
