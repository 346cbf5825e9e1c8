"""The recurrent state of an ELMUR backbone: fixed shape, all zeros = fresh episode."""
from __future__ import annotations

from dataclasses import dataclass

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


LAYOUTS = ("cache", "tokens")  # how a state holds the current segment's earlier tokens


def check_layout(layout: str, owner: str, name: str = "layout") -> None:
    """Raise an error naming ``owner``'s argument ``name`` unless ``layout`` is one of :data:`LAYOUTS`."""
    if layout not in LAYOUTS:
        raise ValueError(f"{owner}: {name}={layout!r} is invalid: expected one of {LAYOUTS}.")


@dataclass
class ELMURState:
    """Everything a backbone needs to continue an episode exactly.

    Fields (B batch, L layers, M slots, K segment length, D width, F token size):
        memory: float ``[B, L, M, D]``: slot vectors; zeros in empty slots (reads then see the
            backbone's fixed initial vector ``memory_init``).
        memory_time: int64 ``[B, L, M]``: slot stamps, 0 = empty, else 1 + the episode step of
            the last step of the segment that wrote the slot (the LRU timestamps).
        step: int64 ``[B]``: episode step of the next token (tokens seen since the reset).
            Its position in the current segment is ``p = step % K``.

    and the current segment's ``p`` earlier tokens in one of two layouts (exactly one is set):
        cache: float ``[B, H, K, L, 3, D/H]`` (layout ``"cache"``): for each head and
            within-segment position, per layer, the self-attention key (kind 0), value (1) and
            layer output (2); positions not yet reached hold zeros. A step reads it and adds its
            own token: O(1) work per step, ``3 K L D`` numbers per row.
        tokens: float ``[B, K-1, F]`` (layout ``"tokens"``): the backbone's inputs at those
            positions (zeros beyond ``p``). A step recomputes the segment so far from them
            (up to K tokens of work), for ``(K-1) F`` numbers per row: the layout to store, e.g.
            in a replay buffer (at T-Maze size, D = F = 128, L = 2, K = 10: 4.6 KB against the
            cache's 30.7 KB). :class:`~torchrl_elmur.ELMURModule` steps it at a cache step's cost
            by keeping the cache for itself (its derived segment cache, never stored);
            :meth:`~torchrl_elmur.core.ELMURBackbone.cache_from_tokens` rebuilds it.

    Both layouts continue an episode to the same outputs (to float rounding).
    """

    memory: Tensor
    memory_time: Tensor
    cache: Tensor | None = None
    step: Tensor = None  # required (a default only so that ``cache`` may be left out)
    tokens: Tensor | None = None

    def __post_init__(self) -> None:
        if self.step is None:
            raise TypeError("ELMURState: step is required.")
        if (self.cache is None) == (self.tokens is None):
            raise ValueError("ELMURState: exactly one of cache and tokens must be given (the state's layout), "
                             f"received cache={'None' if self.cache is None else 'a tensor'}, "
                             f"tokens={'None' if self.tokens is None else 'a tensor'}.")

    @property
    def layout(self) -> str:
        """``"cache"`` or ``"tokens"``."""
        return "cache" if self.cache is not None else "tokens"

    @staticmethod
    def field_names(layout: str = "cache") -> tuple[str, ...]:
        """The fields of a state of this layout, in order."""
        check_layout(layout, "ELMURState.field_names")
        return ("memory", "memory_time", layout, "step")

    @staticmethod
    def field_specs(
        config: ELMURConfig, dtype: torch.dtype = torch.float32, layout: str = "cache"
    ) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-row shape (no batch dim) and dtype of every field, in field order: the one place
        that knows the state's layout.

        Examples:
            >>> specs = ELMURState.field_specs(ELMURConfig(d_model=16, segment_len=4, input_size=3), layout="tokens")
            >>> {name: shape for name, (shape, _) in specs.items()}
            {'memory': (2, 2, 16), 'memory_time': (2, 2), 'tokens': (3, 3), 'step': ()}
        """
        check_layout(layout, "ELMURState.field_specs")
        c = config
        shapes = {
            "memory": (c.num_layers, c.memory_slots, c.d_model),
            "memory_time": (c.num_layers, c.memory_slots),
            "cache": (c.num_heads, c.segment_len, c.num_layers, 3, c.head_dim),
            "tokens": (c.segment_len - 1, c.token_size),
            "step": (),
        }
        return {name: (shapes[name], torch.int64 if name in INT_FIELDS else dtype)
                for name in ELMURState.field_names(layout)}

    @classmethod
    def zeros(cls, config: ELMURConfig, batch: int, *, dtype=torch.float32, device=None, layout: str = "cache") -> "ELMURState":
        """The fresh-episode state."""
        return cls(**{name: torch.zeros((batch, *shape), dtype=dt, device=device)
                      for name, (shape, dt) in cls.field_specs(config, dtype, layout).items()})

    def validate(self, config: ELMURConfig, batch: int, dtype: torch.dtype) -> None:
        """Raise an error naming the field, the expected and the received shape/dtype."""
        for name, (shape, dt) in self.field_specs(config, dtype, self.layout).items():
            check_tensor(f"ELMURState.{name}", getattr(self, name), (batch, *shape), dt,
                         hint=" (does the state come from another ELMURConfig?)")

    def fields(self) -> dict[str, Tensor]:
        """The set fields, in order (``field_names(self.layout)``)."""
        return {name: getattr(self, name) for name in self.field_names(self.layout)}

    def map(self, fn) -> "ELMURState":
        """Apply ``fn`` to every field (e.g. ``lambda t: t[idx]``)."""
        return ELMURState(**{name: fn(t) for name, t in self.fields().items()})

    def detach(self) -> "ELMURState":
        return self.map(Tensor.detach)
