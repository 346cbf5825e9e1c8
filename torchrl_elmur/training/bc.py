"""One behaviour-cloning loop for recurrent TorchRL actors on ``[B, T]`` replay samples.

Shared by every behaviour-cloning run of the package (the T-Maze tutorial, the POPGym and
MIKASA-Robo benchmarks): :func:`fit_bc` is the experiment (replay buffer, DDP, AdamW, loop),
:func:`train_bc` the loop. Two update schedules, by ``chunk_len``:

- ``chunk_len=None``: one optimizer step per sampled ``[B, T]`` batch; the memory module runs
  the whole window in recurrent mode (with ``detach_memory=False`` gradients cross its segments).
- ``chunk_len=C`` dividing ``T``: truncated back-propagation (the released ELMUR trainer's
  schedule with ``C`` = its segment length): the window is cut into chunks of ``C`` steps and
  every chunk gets its own optimizer step; each chunk starts from the recurrent state the
  previous chunk ended in (no gradient crosses a chunk boundary). ``chunk_len`` is a training
  schedule, not ELMUR's ``ELMURConfig.segment_len`` (its attention window ``K``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.data import ReplayBuffer
from torchrl.modules import set_recurrent_mode
from torchrl.objectives import LossModule
from tqdm import trange

from ..data.storage import make_offline_replay_buffer
from ..modules.state_keys import state_key_pairs
from .checkpoint import checkpoint_due, load_training_state, save_training_state
from .distributed import DistributedContext, rows_per_rank, shard_rows, wrap_ddp


@dataclass
class BCHistory:
    """What :func:`train_bc` measured: training seconds (probes excluded) and, per probe, the
    training step, the training seconds so far and the probe's result."""

    train_seconds: float = 0.0
    probes: list[dict] = field(default_factory=list)
    selected_step: int | None = None  # the step whose weights were kept (``select``), None: the last

    def first_time(self, key: str, at_least: float = 1.0) -> float | None:
        """Training seconds at the first probe whose ``key`` reached ``at_least`` (None: never)."""
        return next((p["seconds"] for p in self.probes if p["result"].get(key, 0.0) >= at_least), None)


def carry_state(chunk: TensorDictBase, previous: TensorDictBase, pairs: list[tuple]) -> TensorDictBase:
    """``chunk`` ``[B, K]`` with each state key holding, at ``t = 0``, the state ``previous`` (the
    actor's output on the chunk before) ended in, and zeros elsewhere (a fresh state where a new
    episode starts inside the chunk)."""
    chunk = chunk.copy()
    for key, next_key in pairs:
        final = previous.get(next_key)[:, -1]  # [B, *feature] (a tensor, or ELMUR's state TensorDict [B])
        stored = final.unsqueeze(1).expand(*chunk.batch_size, *final.shape[1:]).clone().zero_()  # [B, T, *feature]
        stored[:, 0] = final
        chunk.set(key, stored)
    return chunk


def train_bc(
    actor: TensorDictModuleBase,
    loss_module: LossModule,
    buffer: ReplayBuffer,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    batch: int,
    seq_len: int,
    grad_clip: float,
    chunk_len: int | None = None,
    name: str = "policy",
    run=None,
    probe: Callable[[TensorDictModuleBase], dict] | None = None,
    probe_every: int = 0,
    select: str | None = None,
    progress: bool = True,
    ctx: DistributedContext | None = None,
    autocast_dtype: torch.dtype | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    config: dict | None = None,
) -> BCHistory:
    """Behaviour cloning: ``steps`` samples of ``[batch, seq_len]`` from ``buffer``, each trained on.

    Args:
        actor: the policy the loss runs (its training mode is set here).
        loss_module: returns a TensorDict whose ``loss_*`` entries are summed and minimised
            (e.g. :class:`~torchrl_elmur.objectives.SequenceCrossEntropyLoss`: ``loss_bc``, ``loss_moe``).
        buffer: samples ``[batch * seq_len]`` episode-aligned transitions (reshaped to ``[B, T]``).
        grad_clip: max gradient norm.
        chunk_len: steps per back-propagation chunk, dividing ``seq_len`` (see the module
            docstring); None: the whole window, one optimizer step per batch.
        run: a wandb run (``<name>/loss_bc``, the loss's other entries such as ``accuracy``, and
            ``grad_norm``, every 10 steps), or None.
        probe: called as ``probe(actor)`` every ``probe_every`` steps and after the last one,
            outside the timed training; returns a dict of numbers (e.g. success rates). The
            actor's training mode is restored after it.
        select: a key of the probe's results: at the end the actor gets back the weights of the
            probe that scored highest on it (the latest among ties), as the released ELMUR
            trainer keeps its best checkpoint by validation success. None: the last weights.
        ctx: under ``torchrun`` (:func:`~torchrl_elmur.training.distributed.init_distributed`), with
            ``loss_module`` wrapped by ``wrap_ddp``: every rank samples the same global batch of
            ``batch`` rows and trains on its shard (``batch`` must divide by the world size); only
            rank 0 shows progress and probes (and keeps the selected weights).
        checkpoint: a file for the training state, written atomically every ``checkpoint_every``
            steps (after that step's probe) and after the last: the actor's and optimizer's state,
            the step, the history and the selection so far, the sampler's and every random
            generator's state (:mod:`~torchrl_elmur.training.checkpoint`).
        resume: continue from ``checkpoint`` if it exists (else start): the steps after it are the
            steps the uninterrupted run takes (the same samples, dropout masks and updates; float64
            on a CPU: the same weights to the bit). ``buffer`` and ``probe`` must be built as for the
            first run. A run with other settings is refused with an error naming them (the
            optimizer's hyper-parameters, ``batch``, ``seq_len``, ``chunk_len``, ``grad_clip``,
            ``probe_every``, ``select``, ``autocast_dtype`` and ``config``).
        config: plain values that also decide the run (e.g. a script's arguments), saved with the
            training state and compared on resume.
        autocast_dtype: e.g. ``torch.bfloat16``: the loss's forward runs under ``torch.autocast``
            of that dtype on the parameters' device (weights, optimizer and recurrent state stay
            float32; the backward runs outside it, as PyTorch recommends). ``None``: full precision.

    Returns:
        a :class:`BCHistory`.
    """
    if select is not None and probe is None:
        raise ValueError(f"train_bc: select={select!r} needs a probe.")
    if chunk_len is not None and (isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len < 1
                                  or seq_len % chunk_len):
        raise ValueError(f"train_bc: chunk_len must be a positive divisor of seq_len={seq_len} (or None: the whole "
                         f"window), received {chunk_len!r}.")
    chunk_len = chunk_len or seq_len
    ctx = ctx or DistributedContext()
    rows_per_rank(batch, ctx)  # fail before the first step, not at it
    if not ctx.is_main:
        progress, probe, select, run = False, None, None, None
    if checkpoint_every < 0 or (checkpoint_every and checkpoint is None):
        raise ValueError(f"train_bc: checkpoint_every must be >= 0 and needs a checkpoint file, received "
                         f"checkpoint_every={checkpoint_every}, checkpoint={checkpoint!r}.")
    pairs = state_key_pairs(actor)
    history = BCHistory()
    best_score, best_weights = float("-inf"), None
    first = 0
    parts = {"actor": actor, "optimizer": optimizer, "sampler": buffer.sampler}  # what a resumed run continues from
    settings = {"batch": batch, "seq_len": seq_len, "chunk_len": chunk_len, "grad_clip": grad_clip,
                "probe_every": probe_every, "select": select, "autocast_dtype": str(autocast_dtype), **(config or {})}
    if resume and checkpoint is not None and Path(checkpoint).exists():
        first, saved = load_training_state(checkpoint, steps=steps, parts=parts, config=settings)
        history = BCHistory(**saved["history"])
        best_score, best_weights = saved["best_score"], saved["best_weights"]
        if progress and ctx.is_main:
            print(f"train {name}: resumed from {checkpoint} at step {first} of {steps}", flush=True)

    def save_state(done: int) -> None:
        if checkpoint is not None and ctx.is_main:
            save_training_state(checkpoint, step=done, steps=steps, parts=parts, config=settings, extra={
                "history": dataclasses.asdict(history), "best_score": best_score, "best_weights": best_weights})

    params = [p for p in actor.parameters() if p.requires_grad]
    amp = (contextlib.nullcontext() if autocast_dtype is None
           else torch.autocast(params[0].device.type, dtype=autocast_dtype))
    actor.train()
    bar = trange(first, steps, desc=f"train {name}", dynamic_ncols=True, disable=not progress, initial=first, total=steps)
    for step in bar:
        start = time.perf_counter()
        sample = buffer.sample().reshape(batch, seq_len)  # [B, T], each row from an episode start
        sample = shard_rows(sample, ctx)  # this rank's rows (all of them in one process)
        previous = None
        for c in range(seq_len // chunk_len):
            chunk = sample[:, c * chunk_len:(c + 1) * chunk_len]
            if previous is not None:
                chunk = carry_state(chunk, previous, pairs)
            if c < seq_len // chunk_len - 1:  # the state this chunk ends in, for the next one
                with torch.no_grad(), set_recurrent_mode(True):
                    previous = actor(chunk.copy())
            with amp:
                losses = loss_module(chunk)  # runs the actor in recurrent mode
            loss = sum(v for k, v in losses.items() if k.startswith("loss_"))
            optimizer.zero_grad()
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
        history.train_seconds += time.perf_counter() - start
        if step % 10 == 0 or step == steps - 1:
            metrics = {k: v.item() for k, v in losses.items() if not k.startswith("loss_")}  # accuracy, mae, ...
            bar.set_postfix(loss=f"{losses['loss_bc'].item():.3f}", **{k: f"{v:.3f}" for k, v in metrics.items()})
            if run is not None:
                run.log({f"{name}/loss_bc": losses["loss_bc"].item(), **{f"{name}/{k}": v for k, v in metrics.items()},
                         f"{name}/grad_norm": grad_norm.item(), f"{name}/step": step})
        if probe is not None and ((probe_every and (step + 1) % probe_every == 0) or step == steps - 1):
            result = probe(actor)
            actor.train()
            history.probes.append({"step": step + 1, "seconds": history.train_seconds, "result": result})
            if select is not None and result[select] >= best_score:
                best_score, history.selected_step = result[select], step + 1
                best_weights = {k: v.detach().clone() for k, v in actor.state_dict().items()}
            if run is not None:
                run.log({f"{name}/probe_{k}": v for k, v in result.items()} | {f"{name}/step": step})
        if checkpoint_due(step + 1, steps, checkpoint_every):
            save_state(step + 1)
    if select is not None and history.selected_step != steps:
        actor.load_state_dict(best_weights)
    return history


def fit_bc(
    actor: TensorDictModuleBase,
    loss_module: LossModule,
    data: TensorDictBase,
    *,
    steps: int,
    batch: int,
    seq_len: int,
    lr: float,
    seed: int,
    grad_clip: float = 5.0,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
    ctx: DistributedContext | None = None,
    **loop,
) -> BCHistory:
    """A behaviour-cloning experiment, as every family of the package runs it: ``data``'s episodes
    in a replay buffer sampling ``[batch, seq_len]`` rows from episode starts (seeded by ``seed``),
    ``loss_module`` wrapped for DDP under ``torchrun`` (``ctx``), AdamW, then :func:`train_bc`.

    The caller builds the actor (after ``torch.manual_seed``: its initial weights) and the loss,
    and evaluates afterwards; ``loop``: :func:`train_bc`'s keywords (``chunk_len``, ``name``,
    ``run``, ``probe``, ``probe_every``, ``select``, ``progress``, ``autocast_dtype``).

    Args:
        data: a flat TensorDict ``[N]`` of transitions with ``is_init`` marking episode starts
            (e.g. :func:`~torchrl_elmur.data.make_tmaze_dataset`), on the actor's device.
        lr, betas, weight_decay: AdamW's (PyTorch's defaults but ``lr``).
    """
    ctx = ctx or DistributedContext()
    buffer = make_offline_replay_buffer(data, batch, seq_len, seed=seed)
    loss_module = wrap_ddp(loss_module, ctx)  # one process: unchanged
    optimizer = torch.optim.AdamW(actor.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    loop["config"] = {**(loop.get("config") or {}), "seed": seed}  # the sampler's seed (its state is restored on resume)
    return train_bc(actor, loss_module, buffer, optimizer, steps=steps, batch=batch, seq_len=seq_len,
                    grad_clip=grad_clip, ctx=ctx, **loop)
