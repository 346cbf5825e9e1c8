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
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``F.dropout(x, p)`` in training, ``x`` itself otherwise and where ``p = 0`` (a dropout call
    costs a CPU step several microseconds even then; it draws no random numbers at ``p = 0``, so
    skipping it changes nothing). Every dropout of the model goes through here.

    Examples:
        >>> x = torch.ones(3)
        >>> dropout(x, 0.0, True) is x, dropout(x, 0.5, False) is x
        (True, True)
    """
    return F.dropout(x, p) if training and p > 0 else x


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
        dim: embedding width D.

    Returns:
        ``[n, D]``: ``[sin(d * f_0), ..., sin(d * f_{ceil(D/2)-1}), cos(d * f_0), ..., cos(d * f_{floor(D/2)-1})]``
        with ``f_i = 10000^(-2i / D)``; for an odd D the last cosine is left out.

    Examples:
        >>> sinusoid_embedding(torch.tensor([0.0]), 4).tolist()
        [[0.0, 0.0, 1.0, 1.0]]
        >>> sinusoid_embedding(torch.tensor([0.0]), 3).tolist()
        [[0.0, 0.0, 1.0]]
    """
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = distances.to(torch.float64)[:, None] * inv_freq[None, :]
    return torch.cat([angles.sin(), angles.cos()[:, : dim // 2]], dim=-1)


RelativeGeometry = tuple[Tensor, Tensor]  # (index, blocked), see relative_geometry


class FoldedPositions(NamedTuple):
    """A self-attention's query, key and value projection extended by its position scores
    (:meth:`RelativeSelfAttention.fold_positions`): ``F.linear(x, weight, bias)`` is
    ``[q, k, v, pos]`` with ``pos [H * K]`` the scores ``(q_h + v_bias_h) . r_{h, delta}`` by distance."""

    weight: Tensor  # [3D + H*K, D]
    bias: Tensor  # [3D + H*K] (zero for q, k, v)


class FoldedRead(NamedTuple):
    """A cross-attention's keys folded into its query and output projections, for one query per
    row over fixed keys (:meth:`TimeGapCrossAttention.fold_keys`)."""

    scores: Tensor  # [B, D, S*H]: x @ scores = the scores of query x over the S keys and H heads (scaled by 1/sqrt(d))
    values: Tensor  # [B, S*H, D]: each key's value through its head's block of the output projection


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

    def relative_keys(self, dtype: torch.dtype, position_mask: Tensor | None = None) -> Tensor:
        """``W_r sinusoid(delta)`` for delta = 0 .. K-1, split into heads: ``[1, H, K, d]``.

        ``position_mask`` (``[K, D]``, a dropout mask already scaled by 1/(1-p)) multiplies the
        sinusoid first (position-embedding dropout). Computed at every call; a caller that keeps
        the result must notice weight changes that no version counter sees (another process
        writing the weights in shared memory, as TorchRL's multi-process collectors do): the
        derived segment cache compares a fingerprint of the weights' values.
        """
        if position_mask is not None:
            emb = self.distance_embedding.to(dtype) * position_mask
            return split_heads(self.r_proj(emb).unsqueeze(0), self.num_heads)
        return split_heads(self.r_proj(self.distance_embedding.to(dtype)).unsqueeze(0), self.num_heads)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, n, D]`` -> queries, keys, values, each ``[B, n, D]``."""
        return self.qkv(x).chunk(3, dim=-1)

    def fold_positions(self, r: Tensor, v_bias: Tensor) -> FoldedPositions:
        """The projection that gives a token's position scores with its queries, keys and values.

        The position score of head ``h`` at distance ``delta`` is
        ``(q_h + v_bias_h) . r_{h,delta} = x . (W_q,h^T r_{h,delta}) + v_bias_h . r_{h,delta}`` for
        ``q = W_q x``: a linear function of ``x``, so its rows join the ``qkv`` projection. One matmul
        per token then replaces a projection and a per-head product (``H*K*D`` more multiply-adds:
        worth it where ``H*K`` is small beside ``D``, see :attr:`~torchrl_elmur.core.ELMURBackbone.folds_positions`).

        Args:
            r: :meth:`relative_keys` ``[H, K, d]``; v_bias: ``[H, d]``.

        Returns:
            :class:`FoldedPositions`, for :meth:`attend_one`'s ``pos``:
            ``q, k, v, pos = F.linear(x, *folded).split([D, D, D, H*K], -1)``.

        Examples:
            >>> att = RelativeSelfAttention(4, 2, 3, 0.0)
            >>> r, v_bias, x = att.relative_keys(torch.float32)[0], torch.randn(2, 2), torch.randn(1, 4)
            >>> *_, pos = F.linear(x, *att.fold_positions(r, v_bias)).split([4, 4, 4, 6], -1)
            >>> q = att.project(x)[0].view(1, 2, 2)
            >>> torch.allclose(pos.view(1, 2, 3), torch.einsum("bhd,hkd->bhk", q + v_bias, r), atol=1e-6)
            True
        """
        h, k, d = r.shape
        qkv = self.qkv.weight  # [3D, D]: the query rows first
        weight = torch.einsum("hdi,hkd->hki", qkv[: h * d].view(h, d, -1), r).reshape(h * k, -1)  # [H*K, D]
        bias = torch.einsum("hd,hkd->hk", v_bias, r).reshape(h * k)
        return FoldedPositions(torch.cat([qkv, weight]), torch.cat([bias.new_zeros(qkv.shape[0]), bias]))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, geometry: RelativeGeometry, u: Tensor, v_bias: Tensor,
               position_mask: Tensor | None = None) -> Tensor:
        """Attention of ``n`` queries over the ``S`` keys of their segment so far.

        Args:
            q: ``[B, n, D]``.
            k, v: ``[B, H, S, d]`` (heads split; any strides whose batch dims B and H fold into
                one, as in the state's cache, are read without a copy).
            geometry: :func:`relative_geometry` of the queries and keys, computed once and shared
                by all layers.
            u, v_bias: shared Transformer-XL biases ``[H, d]``.
            position_mask: optional dropout mask of the position embedding, see :meth:`relative_keys`.

        Returns:
            ``[B, n, D]`` (after the output projection).
        """
        index, blocked = geometry
        qh = split_heads(q, self.num_heads)  # [B, H, n, d]
        b, h, n, d = qh.shape
        r = self.relative_keys(q.dtype, position_mask)[0]  # [H, K, d]
        # position scores by distance [B, H, n, K]; batched over heads (r is never copied per row)
        pos_scores = torch.einsum("bhnd,hkd->bhnk", qh + v_bias[None, :, None, :], r)
        # the position term and the causal mask enter the fused kernel as an additive mask: softmax((q + u) k / sqrt(d) + bias)
        bias = torch.gather(pos_scores, -1, index.expand(b, h, n, index.shape[-1])).masked_fill(blocked, float("-inf"))
        y = F.scaled_dot_product_attention(qh + u[None, :, None, :], k, v, attn_mask=(bias / math.sqrt(d)).to(k.dtype),
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return self.out(merge_heads(y))  # [B, H, n, d] -> [B, n, D]

    def attend_one(self, q: Tensor, k: Tensor, v: Tensor, cache_k: Tensor, cache_v: Tensor, distance: Tensor,
                   unseen: Tensor, u: Tensor, v_bias: Tensor, position_mask: Tensor | None = None,
                   r: Tensor | None = None, pos: Tensor | None = None) -> Tensor:
        """:meth:`attend` for one new token per row (the streaming step): the same scores, over the
        segment's earlier tokens (read from the cache where they are, not copied into it first)
        and the token itself, as elementwise products instead of batched matmuls (one query per
        row: a ``[B*H, 1, d] @ [B*H, d, K]`` bmm costs a kernel per row and head, and needs the
        cache's strided view contiguous).

        Args:
            q, k, v: this token's query, key and value ``[B, D]``.
            cache_k, cache_v: the segment's cached keys and values ``[B, H, K, d]`` (any strides);
                slots where ``unseen`` is True are masked out.
            distance: int64 ``[B, K]``: ``p - j`` (clamped to ``[0, K-1]``), the distance from cache
                slot ``j`` to this token at slot ``p``.
            unseen: bool ``[B, 1, K]``: True for the slots from ``p`` on (no earlier token of this
                segment there); computed once per step for all layers.
            u, v_bias, position_mask: as in :meth:`attend`.
            r: :meth:`relative_keys` ``[H, K, d]`` if the caller has it (it changes only with the
                weights, see :meth:`~torchrl_elmur.core.ELMURBackbone.step_constants`); else computed here.
            pos: the position scores by distance ``[B, H, K]`` if the caller has them (from the
                projection of :meth:`fold_positions`); then ``r`` and ``v_bias`` are not read.

        Returns:
            ``[B, D]`` (after the output projection).
        """
        b, h, K = q.shape[0], self.num_heads, cache_k.shape[2]
        qh, kh, vh = q.view(b, h, -1), k.view(b, h, -1), v.view(b, h, -1)  # [B, H, d]
        if pos is None:
            if r is None:
                r = self.relative_keys(q.dtype, position_mask)[0]  # [H, K, d], by distance
            pos = torch.einsum("bhd,hkd->bhk", qh + v_bias, r)  # [B, H, K] position score by distance
        qu = (qh + u).unsqueeze(2)  # [B, H, 1, d]
        earlier_scores = (qu * cache_k).sum(-1) + torch.gather(pos, -1, distance.unsqueeze(1).expand(b, h, K))
        own_score = (qu[:, :, 0] * kh).sum(-1, keepdim=True) + pos[..., :1]  # [B, H, 1]: distance 0
        scores = torch.cat([earlier_scores.masked_fill(unseen, float("-inf")), own_score], -1) / math.sqrt(qh.shape[-1])
        probs = torch.softmax(scores, -1)  # [B, H, K + 1]
        probs = dropout(probs, self.attn_dropout, self.training)
        out = (probs[..., :K, None] * cache_v).sum(-2) + probs[..., K:] * vh  # [B, H, d]
        return self.out(out.reshape(b, -1))


def relative_geometry(q_pos: Tensor, k_pos: Tensor, key_valid: Tensor | None, max_distance: int) -> RelativeGeometry:
    """Within-segment distance and visibility of a block of keys for ``n`` queries.

    The same for every layer and head: computed once per step (or chunk) and passed to
    :meth:`RelativeSelfAttention.attend`.

    Args:
        q_pos: int64 query positions ``[B, n]`` or ``[n]``.
        k_pos: int64 key positions ``[B, S]`` or ``[S]``.
        key_valid: bool, same shape as ``k_pos``: False for keys that do not exist yet (empty
            cache slots); ``None``: all exist.
        max_distance: K, the number of relative position embeddings.

    Returns:
        ``(index, blocked)``: ``index`` int64 ``[B|1, 1, n, S]`` the distance clipped to
        ``[0, K-1]``; ``blocked`` bool of the same shape, True where the key is in the future or
        does not exist.

    Examples:
        >>> index, blocked = relative_geometry(torch.arange(3), torch.arange(3), None, 3)
        >>> index[0, 0].tolist()
        [[0, 0, 0], [1, 0, 0], [2, 1, 0]]
        >>> blocked[0, 0].tolist()
        [[False, True, True], [False, False, True], [False, False, False]]
    """
    distance = q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)  # [B?, n, S]
    distance = distance.reshape(-1, *distance.shape[-2:]).unsqueeze(1)  # [B|1, 1, n, S]
    blocked = distance < 0
    if key_valid is not None:
        valid = key_valid.unsqueeze(-2)  # [B?, 1, S]
        blocked = blocked | ~valid.reshape(-1, *valid.shape[-2:]).unsqueeze(1)
    return distance.clamp(0, max_distance - 1), blocked


class TimeGapCrossAttention(nn.Module):
    """Multi-head cross-attention with an additive per-head bias looked up by time gap.

    The bias table (``[2G-1, H]``) belongs to the layer and is shared by its read and write; it
    is passed to :meth:`forward`. Query, key and value projections have no bias; the output
    projection has one when ``out_bias`` (as in the released code).
    """

    def __init__(self, d_model: int, num_heads: int, attn_dropout: float, out_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=out_bias)
        self.attn_dropout = attn_dropout

    def forward(self, queries: Tensor, keys: Tensor | None, gap: Tensor, gap_table: Tensor,
                kv: Tensor | FoldedRead | None = None) -> Tensor:
        """Args:
            queries: ``[B, n, D]``; keys: ``[B, S, D]`` (keys and values come from the same vectors;
                not read when ``kv`` is given).
            gap: int64 time gaps ``[B, n, S]``, clipped here to the table.
            gap_table: ``[2G-1, H]`` learned bias.
            kv: for one query per row only (the streaming step's read, whose keys, the memory, are
                frozen inside a segment), what the caller kept of the keys: ``self.kv(keys)``
                ``[B, S, 2D]``, or :meth:`fold_keys` of it.

        Returns:
            ``[B, n, D]``.
        """
        h = self.num_heads
        max_gap = (gap_table.shape[0] - 1) // 2
        bias = gap_table[gap.clamp(-max_gap, max_gap) + max_gap]  # [B, n, S, H]
        if kv is not None and queries.shape[1] != 1:
            raise ValueError(f"TimeGapCrossAttention: kv is for one query per row, received {queries.shape[1]} queries.")
        if isinstance(kv, FoldedRead):
            return self._attend_folded(queries, kv, bias)
        if queries.shape[1] == 1:  # one query per row (the streaming step): see _attend_one
            return self.out(self._attend_one(queries, self.kv(keys) if kv is None else kv, bias))
        qh = split_heads(self.q(queries), h)  # [B, H, n, d]
        kh, vh = (split_heads(t, h) for t in self.kv(keys).chunk(2, dim=-1))  # [B, H, S, d]
        y = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=bias.permute(0, 3, 1, 2).to(qh.dtype),
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        return self.out(merge_heads(y))

    def _attend_one(self, queries: Tensor, kv: Tensor, bias: Tensor) -> Tensor:
        """:meth:`forward`'s attention for one query per row (``queries [B, 1, D]``, the keys'
        projection ``kv [B, S, 2D]``, ``bias [B, 1, S, H]``), before the output projection: the same softmax as elementwise products
        and sums, which a compiled step fuses into one kernel instead of calling the attention
        kernel (T-Maze config, batch 1 and 100, this project's 2-core CPU: the compiled token
        step about 9% faster). Returns ``[B, 1, D]``."""
        b, h = queries.shape[0], self.num_heads
        qh = self.q(queries).view(b, 1, h, -1)  # [B, 1, H, d]
        kh, vh = (t.unflatten(-1, (h, -1)) for t in kv.chunk(2, dim=-1))  # [B, S, H, d]
        scores = (qh * kh).sum(-1) / math.sqrt(qh.shape[-1]) + bias[:, 0]  # [B, S, H]
        probs = torch.softmax(scores, 1)
        probs = dropout(probs, self.attn_dropout, self.training)
        return (probs.unsqueeze(-1) * vh).sum(1).view(b, 1, -1)  # [B, H, d] -> [B, 1, D]

    def fold_keys(self, kv: Tensor) -> FoldedRead:
        """Fixed keys folded into the query and output projections (``kv = self.kv(keys)`` ``[B, S, 2D]``).

        For a query token ``x``, head ``h`` and key ``s``: the score
        ``(W_q x)_h . k_{s,h} / sqrt(d) = x . (W_q,h^T k_{s,h}) / sqrt(d)`` and the output
        ``W_o concat_h(sum_s p_{s,h} v_{s,h}) = sum_{s,h} p_{s,h} (W_o,h v_{s,h})`` (+ the output bias),
        ``W_q,h`` / ``W_o,h`` the head's rows of ``W_q`` / columns of ``W_o``. With the keys fixed
        (the streaming step's memory, inside a segment) a read is then two batched matmuls and a
        softmax (:meth:`forward` with ``kv=``): ``2 S H D`` multiply-adds per query against the
        ``2 D^2 + 2 S D`` of the projections and products, for ``2 S D^2`` more once per set of
        keys (when that pays: :attr:`~torchrl_elmur.core.ELMURBackbone.folds_read`).

        Examples:
            >>> att = TimeGapCrossAttention(8, 2, 0.0).eval()
            >>> x, keys, gap, table = torch.randn(3, 1, 8), torch.randn(3, 4, 8), torch.zeros(3, 1, 4, dtype=torch.long), torch.randn(5, 2)
            >>> folded = att.fold_keys(att.kv(keys))
            >>> [list(t.shape) for t in folded]                     # [B, D, S*H], [B, S*H, D]
            [[3, 8, 8], [3, 8, 8]]
            >>> torch.allclose(att(x, None, gap, table, folded), att(x, keys, gap, table), atol=1e-6)
            True
        """
        b, s, _ = kv.shape
        h = self.num_heads
        k, v = (t.unflatten(-1, (h, -1)) for t in kv.chunk(2, dim=-1))  # [B, S, H, d]
        d = k.shape[-1]
        scores = torch.einsum("bshd,hdi->bish", k, self.q.weight.view(h, d, -1)) / math.sqrt(d)  # [B, D, S, H]
        values = torch.einsum("bshd,ihd->bshi", v, self.out.weight.view(-1, h, d))  # [B, S, H, D]
        return FoldedRead(scores.reshape(b, -1, s * h), values.reshape(b, s * h, -1))

    def _attend_folded(self, queries: Tensor, folded: FoldedRead, bias: Tensor) -> Tensor:
        """:meth:`forward` of one query per row (``queries [B, 1, D]``, ``bias [B, 1, S, H]``) over
        folded keys (:meth:`fold_keys`), the output projection included: ``[B, 1, D]``."""
        b, _, s, h = bias.shape
        scores = torch.baddbmm(bias.reshape(b, 1, s * h), queries, folded.scores)  # [B, 1, S*H]
        probs = torch.softmax(scores.view(b, s, h), 1)
        probs = dropout(probs, self.attn_dropout, self.training)
        if self.out.bias is None:
            return torch.bmm(probs.view(b, 1, s * h), folded.values)
        return torch.baddbmm(self.out.bias.expand(b, 1, -1), probs.view(b, 1, s * h), folded.values)
