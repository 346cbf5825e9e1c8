"""The recurrent state of an ELMUR backbone: fixed shape, all zeros = fresh episode."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .config import ELMURConfig

CACHE_KEY, CACHE_VALUE, CACHE_OUTPUT = 0, 1, 2


@dataclass
class ELMURState:
    """Everything a backbone needs to continue an episode exactly.

    Fields (B batch, L layers, M slots, K segment length, D width):
        memory: float ``[B, L, M, D]``: slot vectors; zeros in empty slots (reads then see the
            backbone's fixed initial vector ``memory_init``).
        memory_time: int64 ``[B, L, M]``: slot stamps, 0 = empty, else 1 + the episode step of
            the last step of the segment that wrote the slot (the LRU timestamps).
        cache: float ``[B, L, 3, H, K, D/H]``: per layer, the self-attention keys (index 0),
            values (1) and layer outputs (2) of the tokens already seen in the current segment,
            split into H heads (the layout attention reads without a copy), at their
            within-segment positions; positions not yet reached hold zeros.
        step: int64 ``[B]``: episode step of the next token (tokens seen since the reset).
            Its position in the current segment is ``step % K``.
    """

    memory: Tensor
    memory_time: Tensor
    cache: Tensor
    step: Tensor

    @staticmethod
    def shapes(config: ELMURConfig, batch: int) -> dict[str, tuple[int, ...]]:
        """Expected shape of every field for a batch of ``batch`` rows."""
        c = config
        return {
            "memory": (batch, c.num_layers, c.memory_slots, c.d_model),
            "memory_time": (batch, c.num_layers, c.memory_slots),
            "cache": (batch, c.num_layers, 3, c.num_heads, c.segment_len, c.head_dim),
            "step": (batch,),
        }

    @classmethod
    def zeros(cls, config: ELMURConfig, batch: int, *, dtype=torch.float32, device=None) -> "ELMURState":
        """The fresh-episode state."""
        shapes = cls.shapes(config, batch)
        as_float = {"memory", "cache"}
        return cls(**{
            name: torch.zeros(shape, dtype=dtype if name in as_float else torch.int64, device=device)
            for name, shape in shapes.items()
        })

    def validate(self, config: ELMURConfig, batch: int, dtype: torch.dtype) -> None:
        """Raise ``ValueError`` naming the field, the expected and the received shape/dtype."""
        for name, shape in self.shapes(config, batch).items():
            value = getattr(self, name)
            expected_dtype = torch.int64 if name in ("memory_time", "step") else dtype
            if not isinstance(value, Tensor):
                raise TypeError(f"ELMURState.{name}: expected a Tensor, received {type(value).__name__}.")
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"ELMURState.{name}: expected shape {list(shape)}, received {list(value.shape)} "
                    f"(does the state come from another ELMURConfig?)."
                )
            if value.dtype != expected_dtype:
                raise ValueError(f"ELMURState.{name}: expected dtype {expected_dtype}, received {value.dtype}.")

    def map(self, fn) -> "ELMURState":
        """Apply ``fn`` to every field (e.g. ``lambda t: t[idx]``)."""
        return ELMURState(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def detach(self) -> "ELMURState":
        return self.map(Tensor.detach)
