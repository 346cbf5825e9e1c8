"""The recurrent state of an ELMUR backbone: fixed shape, all zeros = fresh episode."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .config import ELMURConfig

CACHE_KEY, CACHE_VALUE, CACHE_OUTPUT = 0, 1, 2  # index along the cache's "kind" dim (-2)
INT_FIELDS = ("memory_time", "step")  # int64 whatever the model's dtype


def layer_cache(cache: Tensor, layer: int, kind: int) -> Tensor:
    """One layer's keys, values or outputs from a cache ``[B, H, K, L, 3, d]``: a view
    ``[B, H, K, d]`` whose batch dims (B, H) fold into one, so attention reads it without a copy."""
    return cache[:, :, :, layer, kind]


def pack_cache(per_layer: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """Per layer ``(keys, values, outputs)``, each ``[B, H, n, d]``, as cache entries ``[B, H, n, L, 3, d]``.

    Examples:
        >>> e = [tuple(torch.full((1, 2, 4, 8), 10.0 * i + j) for j in range(3)) for i in range(2)]
        >>> c = pack_cache(e)
        >>> c.shape, layer_cache(c, 1, CACHE_VALUE).unique().item()
        (torch.Size([1, 2, 4, 2, 3, 8]), 11.0)
    """
    return torch.stack([torch.stack(entries, -2) for entries in per_layer], -3)


def check_tensor(label: str, value, shape: tuple[int, ...], dtype: torch.dtype, hint: str = "") -> None:
    """Raise an error naming ``label``, the expected and the received shape or dtype."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{label} must be a Tensor, received {type(value).__name__}.")
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{label} must have shape {list(shape)}, received {list(value.shape)}{hint}.")
    if value.dtype != dtype:
        raise ValueError(f"{label} must have dtype {dtype}, received {value.dtype}.")


@dataclass
class ELMURState:
    """Everything a backbone needs to continue an episode exactly.

    Fields (B batch, L layers, M slots, K segment length, D width):
        memory: float ``[B, L, M, D]``: slot vectors; zeros in empty slots (reads then see the
            backbone's fixed initial vector ``memory_init``).
        memory_time: int64 ``[B, L, M]``: slot stamps, 0 = empty, else 1 + the episode step of
            the last step of the segment that wrote the slot (the LRU timestamps).
        cache: float ``[B, H, K, L, 3, D/H]``: for each head and within-segment position of
            the tokens already seen in the current segment, per layer, the self-attention key
            (kind 0), value (1) and layer output (2); positions not yet reached hold zeros.
            Heads lead so that one layer's keys (:func:`layer_cache`) are read by batched matmuls
            without a copy, and one step writes its token with one indexed copy.
        step: int64 ``[B]``: episode step of the next token (tokens seen since the reset).
            Its position in the current segment is ``step % K``.
    """

    memory: Tensor
    memory_time: Tensor
    cache: Tensor
    step: Tensor

    @staticmethod
    def field_specs(config: ELMURConfig, dtype: torch.dtype = torch.float32) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-row shape (no batch dim) and dtype of every field, in field order: the one place
        that knows the state's layout."""
        c = config
        shapes = {
            "memory": (c.num_layers, c.memory_slots, c.d_model),
            "memory_time": (c.num_layers, c.memory_slots),
            "cache": (c.num_heads, c.segment_len, c.num_layers, 3, c.head_dim),
            "step": (),
        }
        return {name: (shape, torch.int64 if name in INT_FIELDS else dtype) for name, shape in shapes.items()}

    @classmethod
    def shapes(cls, config: ELMURConfig, batch: int) -> dict[str, tuple[int, ...]]:
        """Expected shape of every field for a batch of ``batch`` rows."""
        return {name: (batch, *shape) for name, (shape, _) in cls.field_specs(config).items()}

    @classmethod
    def zeros(cls, config: ELMURConfig, batch: int, *, dtype=torch.float32, device=None) -> "ELMURState":
        """The fresh-episode state."""
        return cls(**{name: torch.zeros((batch, *shape), dtype=dt, device=device)
                      for name, (shape, dt) in cls.field_specs(config, dtype).items()})

    def validate(self, config: ELMURConfig, batch: int, dtype: torch.dtype) -> None:
        """Raise an error naming the field, the expected and the received shape/dtype."""
        for name, (shape, dt) in self.field_specs(config, dtype).items():
            check_tensor(f"ELMURState.{name}", getattr(self, name), (batch, *shape), dt,
                         hint=" (does the state come from another ELMURConfig?)")

    def map(self, fn) -> "ELMURState":
        """Apply ``fn`` to every field (e.g. ``lambda t: t[idx]``)."""
        return ELMURState(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def detach(self) -> "ELMURState":
        return self.map(Tensor.detach)
