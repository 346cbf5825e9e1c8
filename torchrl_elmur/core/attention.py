"""Attention primitives of ELMUR (pure torch).

Glossary: B batch, H heads, d head width, D = H * d model width, n queries, S keys,
K segment length, M memory slots, G time-gap clip.

- :class:`RelativeSelfAttention`: causal Transformer-XL attention inside a segment, with content
  bias ``u`` and position bias ``v`` and a sinusoidal embedding of the within-segment distance.
- :class:`TimeGapCrossAttention`: cross-attention (tokens -> memory for the read, memory -> tokens
  for the write) plus a learned per-head scalar bias indexed by the clipped time gap.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``[B, n, D] -> [B, H, n, d]``."""
    b, n, _ = x.shape
    return x.view(b, n, num_heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``[B, H, n, d] -> [B, n, D]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def sinusoid_embedding(distances: Tensor, dim: int) -> Tensor:
    """Transformer-XL sinusoidal embedding of (non-negative) distances.

    Args:
        distances: ``[n]`` float or int.
        dim: even embedding width D.

    Returns:
        ``[n, D]``: ``[sin(d * f_0), ..., sin(d * f_{D/2-1}), cos(d * f_0), ...]``.

    Examples:
        >>> sinusoid_embedding(torch.tensor([0.0]), 4).tolist()
        [[0.0, 0.0, 1.0, 1.0]]
    """
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = distances.to(torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class RelativeSelfAttention(nn.Module):
    """Causal multi-head self-attention with Transformer-XL relative positions.

    score(i, j) = [(q_i + u) . k_j + (q_i + v) . r_{pos_i - pos_j}] / sqrt(d), for pos_j <= pos_i,
    where r_delta = W_r sinusoid(delta). Distances are within-segment only (0 .. K-1), so the
    layer is translation invariant in episode time. ``u`` and ``v`` ([H, d]) are passed in: they
    are shared by all layers. Projections have no bias, as in the released code.
    """

    def __init__(self, d_model: int, num_heads: int, max_distance: int, attn_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.r_proj = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.attn_dropout = attn_dropout
        self.register_buffer(
            "distance_embedding", sinusoid_embedding(torch.arange(max_distance), d_model).float(), persistent=False
        )  # [K, D]
        self._r_cache: tuple | None = None  # (key, r) of the last relative keys computed without grad

    def relative_keys(self, dtype: torch.dtype) -> Tensor:
        """``W_r sinusoid(delta)`` for delta = 0 .. K-1, split into heads: ``[1, H, K, d]``.

        Without autograd it is cached until the weights change (their version counter moves).
        """
        if torch.is_grad_enabled():
            return split_heads(self.r_proj(self.distance_embedding.to(dtype)).unsqueeze(0), self.num_heads)
        w = self.r_proj.weight
        key = (dtype, w.device, w.data_ptr(), w._version)
        if self._r_cache is None or self._r_cache[0] != key:
            r = split_heads(self.r_proj(self.distance_embedding.to(dtype)).unsqueeze(0), self.num_heads)
            self._r_cache = (key, r)
        return self._r_cache[1]

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, n, D]`` -> queries, keys, values, each ``[B, n, D]``."""
        return self.qkv(x).chunk(3, dim=-1)

    def attend(
        self, q: Tensor, q_pos: Tensor, blocks: list[tuple[Tensor, Tensor, Tensor, Tensor]], u: Tensor, v_bias: Tensor
    ) -> Tensor:
        """Attention of ``n`` queries over one segment's keys, given as one or more blocks.

        Blocks let the streaming path attend over the cached keys and the new token's key
        without first copying them into one tensor; the softmax runs over all blocks jointly.

        Args:
            q: ``[B, n, D]``.
            q_pos: int64 within-segment positions ``[B, n]`` or ``[n]``.
            blocks: ``(k, v, k_pos, key_valid)`` per block: ``k, v [B, H, S_b, d]`` (heads split),
                ``k_pos`` int64
                ``[B, S_b]`` or ``[S_b]``, ``key_valid`` bool (same shape as ``k_pos``), False for
                keys that do not exist yet (empty cache slots).
            u, v_bias: shared Transformer-XL biases ``[H, d]``.

        Returns:
            ``[B, n, D]`` (after the output projection).
        """
        h = self.num_heads
        qh = split_heads(q, h)  # [B, H, n, d]
        scale = 1.0 / math.sqrt(qh.shape[-1])
        r = self.relative_keys(q.dtype)  # [1, H, K, d]
        pos_scores = (qh + v_bias[None, :, None, :]) @ r.transpose(-1, -2)  # [B, H, n, K], by distance
        content_q = qh + u[None, :, None, :]
        scores, values = [], []
        for kh, vh, k_pos, key_valid in blocks:
            distance = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)  # [B?, n, S_b]
            index = distance.clamp(0, r.shape[-2] - 1)
            index = index.expand(qh.shape[0], *index.shape[-2:]).unsqueeze(1).expand(-1, h, -1, -1)
            s = (content_q @ kh.transpose(-1, -2) + torch.gather(pos_scores, -1, index)) * scale  # [B, H, n, S_b]
            allowed = (distance >= 0) & key_valid.unsqueeze(-2)  # causal and existing
            scores.append(s.masked_fill(~allowed.unsqueeze(-3), float("-inf")))
            values.append(vh)
        probs = F.dropout(torch.softmax(torch.cat(scores, -1), -1), self.attn_dropout, self.training)
        y = sum(p @ vh for p, vh in zip(probs.split([vh.shape[-2] for vh in values], -1), values))  # [B, H, n, d]
        return self.out(merge_heads(y))


class TimeGapCrossAttention(nn.Module):
    """Multi-head cross-attention with an additive per-head bias looked up by time gap.

    The bias table (``[2G-1, H]``, zeros at init) belongs to the layer and is shared by its read
    and write; it is passed to :meth:`forward`.
    """

    def __init__(self, d_model: int, num_heads: int, attn_dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.attn_dropout = attn_dropout

    def forward(self, queries: Tensor, keys: Tensor, gap: Tensor, gap_table: Tensor) -> Tensor:
        """Args:
            queries: ``[B, n, D]``; keys: ``[B, S, D]`` (keys and values come from the same vectors).
            gap: int64 time gaps ``[B, n, S]``, clipped here to the table.
            gap_table: ``[2G-1, H]`` learned bias.

        Returns:
            ``[B, n, D]``.
        """
        h = self.num_heads
        qh = split_heads(self.q(queries), h)  # [B, H, n, d]
        kh, vh = (split_heads(t, h) for t in self.kv(keys).chunk(2, dim=-1))  # [B, H, S, d]
        max_gap = (gap_table.shape[0] - 1) // 2
        bias = gap_table[gap.clamp(-max_gap, max_gap) + max_gap]  # [B, n, S, H]
        y = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=bias.permute(0, 3, 1, 2).to(qh.dtype),
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        return self.out(merge_heads(y))
