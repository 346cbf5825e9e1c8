"""A replay-buffer sampler whose rows start at episode starts: ``[B, T]`` episode-aligned batches."""
from __future__ import annotations

from typing import Any

import torch
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.data.replay_buffers.storages import Storage


class EpisodeStartSampler(Sampler):
    """Samples ``B`` rows of ``T`` consecutive transitions, each row starting at an episode start.

    A row continues past the end of its episode into the next stored ones (wrapping at the end
    of the storage), so every transition is real data and rows can be packed without padding;
    ``is_init`` (True at every stored episode start) tells a recurrent module where each new
    episode begins. ``batch_size`` (as given to the replay buffer) must be a multiple of
    ``seq_len``; reshape a sample with ``.reshape(-1, seq_len)``.

    Args:
        seq_len: T, the steps of each row.
        start_key: bool key marking episode starts (default ``"is_init"``).
        generator: optional ``torch.Generator`` for reproducible sampling.
    """

    def __init__(self, seq_len: int, start_key: str = "is_init", generator: torch.Generator | None = None) -> None:
        super().__init__()
        if seq_len < 1:
            raise ValueError(f"EpisodeStartSampler: seq_len must be >= 1, received {seq_len}.")
        self.seq_len = seq_len
        self.start_key = start_key
        self.generator = generator
        self._starts: torch.Tensor | None = None
        self._cached_len = -1

    def _episode_starts(self, storage: Storage) -> torch.Tensor:
        n = len(storage)
        if self._starts is None or self._cached_len != n:
            flags = storage[:n].get(self.start_key).reshape(n, -1)[:, 0]
            starts = flags.nonzero().squeeze(-1)
            if starts.numel() == 0:
                raise RuntimeError(f"EpisodeStartSampler: no True entry under {self.start_key!r} in the storage.")
            self._starts, self._cached_len = starts, n
        return self._starts

    def sample(self, storage: Storage, batch_size: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if batch_size % self.seq_len:
            raise ValueError(f"EpisodeStartSampler: batch_size={batch_size} must be a multiple of seq_len={self.seq_len}.")
        starts = self._episode_starts(storage)
        rows = batch_size // self.seq_len
        pick = torch.randint(len(starts), (rows,), generator=self.generator)
        index = (starts[pick, None] + torch.arange(self.seq_len)) % len(storage)  # [B, T]
        return index.reshape(-1), {}

    def _empty(self) -> None:
        self._starts, self._cached_len = None, -1

    def dumps(self, path) -> None:  # stateless apart from a cache
        return None

    def loads(self, path) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        """``seq_len`` and the generator's state (None without a generator): what continues the
        sequence of samples exactly after :meth:`load_state_dict` (a resumed training run)."""
        return {"seq_len": self.seq_len, "generator": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seq_len = state_dict["seq_len"]
        if state_dict.get("generator") is not None:
            if self.generator is None:
                self.generator = torch.Generator()
            self.generator.set_state(state_dict["generator"])
