"""What the on-disk oracle datasets share: the evaluation seeds they stay clear of, and one cache on disk."""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from tensordict import TensorDict
from torchrl.data import LazyMemmapStorage

EVAL_SEED = 1_000_000  # evaluation episodes use seeds EVAL_SEED + i; datasets must stay below


def cached_dataset(folder: Path | None, meta: dict, build: Callable[[], TensorDict],
                   extra: Callable[[TensorDict], dict] | None = None) -> TensorDict:
    """``build()``'s flat TensorDict, stored once in a TorchRL ``LazyMemmapStorage`` under ``folder``.

    A later call whose ``meta`` matches the stored ``meta.json`` loads the memory-mapped copy
    instead; an outdated or interrupted build is removed first. ``meta.json`` is written last (its
    presence marks a complete build), with ``extra(data)`` beside ``meta`` (e.g. the oracle's
    success, build seconds: recorded, not compared). ``folder=None``: build in memory, store nothing.
    """
    if folder is None:
        return build()
    meta_file = folder / "meta.json"
    if meta_file.exists():
        stored = json.loads(meta_file.read_text())
        if {k: stored.get(k) for k in meta} == meta:
            return TensorDict.load_memmap(folder / "storage")  # the storage's files, memory-mapped
    data = build()
    if folder.exists():
        shutil.rmtree(folder)
    storage = LazyMemmapStorage(len(data), scratch_dir=folder / "storage")
    storage.set(torch.arange(len(data)), data)
    meta_file.write_text(json.dumps({**meta, **(extra(data) if extra is not None else {})}))
    return TensorDict.load_memmap(folder / "storage")
