"""What the oracle datasets of every family share: the seed rule, one cache on disk, one replay buffer.

The seed rule, everywhere in the package, its tutorials and benchmarks: a dataset of ``N`` episodes
made with ``seed`` plays seeds ``seed .. seed + N - 1`` (all below :data:`EVAL_SEED`); evaluation
episode ``i`` plays seed ``EVAL_SEED + i``, whatever the training seed (every run of a benchmark is
scored on the same episodes); validation episodes (checkpoint selection during training) play
``VALIDATION_SEED + i``. The three ranges are disjoint for fewer than 500,000 evaluation episodes.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage, TensorDictReplayBuffer, TensorStorage

from .episode_sampler import EpisodeStartSampler

EVAL_SEED = 1_000_000  # evaluation episodes use seeds EVAL_SEED + i; datasets must stay below
VALIDATION_SEED = 1_500_000  # validation episodes (checkpoint selection) use seeds VALIDATION_SEED + i


def cached_dataset(folder: str | Path | None, meta: dict, build: Callable[[], TensorDict],
                   extra: Callable[[TensorDict], dict] | None = None) -> TensorDict:
    """``build()``'s flat TensorDict, stored once in a TorchRL ``LazyMemmapStorage`` under ``folder``.

    A later call whose ``meta`` matches the stored ``meta.json`` loads the memory-mapped copy
    instead; an outdated or interrupted build is removed first. ``meta.json`` is written last (its
    presence marks a complete build), with ``extra(data)`` beside ``meta`` (e.g. the oracle's
    success, build seconds: recorded, not compared). ``folder=None``: build in memory, store nothing.
    """
    if folder is None:
        return build()
    folder = Path(folder)
    meta_file = folder / "meta.json"
    if meta_file.exists():
        stored = json.loads(meta_file.read_text())
        if {k: stored.get(k) for k in meta} == meta:
            return TensorDict.load_memmap(folder / "storage")  # the storage's files, memory-mapped
    data = build()
    if folder.is_file():  # a cache of the old format (one torch.save file at this path)
        folder.unlink()
    elif folder.exists():
        shutil.rmtree(folder)
    storage = LazyMemmapStorage(len(data), scratch_dir=folder / "storage")
    storage.set(torch.arange(len(data)), data)
    meta_file.write_text(json.dumps({**meta, **(extra(data) if extra is not None else {})}))
    return TensorDict.load_memmap(folder / "storage")


def make_offline_replay_buffer(data: TensorDict, batch_size: int, seq_len: int, seed: int | None = None) -> TensorDictReplayBuffer:
    """A replay buffer over ``data`` that samples ``[batch_size * seq_len]`` episode-aligned
    transitions; ``rb.sample().reshape(batch_size, seq_len)`` gives ``[B, T]``."""
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return TensorDictReplayBuffer(
        storage=TensorStorage(data), sampler=EpisodeStartSampler(seq_len, generator=generator),
        batch_size=batch_size * seq_len,
    )
