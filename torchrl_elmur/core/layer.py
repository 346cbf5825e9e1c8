"""One ELMUR layer: token path (self-attention, memory read, FFN) and memory write path.

Glossary: B batch, n tokens in this call, K segment length, M slots, D width.

The layer is stateless: the caller (``backbone.py``) owns the memory and the segment cache and
decides when to write. Residual + norm placement is chosen once, in :class:`Residual`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import FoldedPositions, FoldedRead, RelativeSelfAttention, TimeGapCrossAttention, dropout
from .config import ELMURConfig
from .feedforward import MoEFeedForward, make_feedforward

NORM_CLASSES = {"layernorm": nn.LayerNorm, "rmsnorm": nn.RMSNorm}


def make_norm(config: ELMURConfig) -> nn.Module:
    return NORM_CLASSES[config.norm](config.d_model, eps=config.norm_eps)


class Residual(nn.Module):
    """Residual connection with its norm, post-LN (``norm(x + f(x))``) or pre-LN (``x + f(norm(x))``).

    ``inp(x)`` is what the sublayer reads; ``out(x, y)`` joins the sublayer output ``y`` back.
    """

    def __init__(self, config: ELMURConfig, dropout: float) -> None:
        super().__init__()
        self.norm = make_norm(config)
        self.pre = config.norm_position == "pre"
        self.drop = nn.Dropout(dropout)

    def inp(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre else x

    def out(self, x: Tensor, y: Tensor) -> Tensor:
        y = x + dropout(y, self.drop.p, self.training)
        return y if self.pre else self.norm(y)


def xavier_blocks_(linear: nn.Linear, blocks: int = 1) -> None:
    """Xavier-uniform init of a linear layer's weight, separately for each of ``blocks`` equal row
    blocks (a fused projection then has the statistics of ``blocks`` separate ones); zero bias."""
    for block in linear.weight.data.chunk(blocks, 0):
        nn.init.xavier_uniform_(block)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class ELMURLayer(nn.Module):
    """A transformer layer with its own memory bank (memory tensors are passed in).

    Token path for ``n`` new tokens::

        q, k, v = self_attn.project(res_self.inp(h))        # plus the segment's cached k, v
        h1  = res_self.out(h, self_attn.attend(...))
        h2  = res_read.out(h1, read(res_read.inp(h1), memory, gap = tok_stamp - slot_stamp))
        out = res_ff.out(h2, ffn(res_ff.inp(h2)))

    Write path for one complete segment (outputs ``[B, K, D]``)::

        c1 = res_write.out(mem, write(res_write.inp(mem), outputs, gap = slot_stamp - tok_stamp))
        u  = res_mem_ff.out(c1, mem_ffn(res_mem_ff.inp(c1)))   # one candidate per slot
        u  = dropout(u, candidate_dropout)                      # dropout_placement="released" only

    ``ffn`` / ``mem_ffn`` are MLPs or mixtures of experts (``config.moe``); the write path's
    residual dropout is ``memory_dropout`` (``dropout_placement="residual"``) or ``dropout``
    (``"released"``, which moves ``memory_dropout`` onto the final candidate).
    """

    def __init__(self, config: ELMURConfig) -> None:
        super().__init__()
        d, h = config.d_model, config.num_heads
        released_dropout = config.dropout_placement == "released"
        self.self_attn = RelativeSelfAttention(d, h, config.segment_len, config.attn_dropout)
        self.read = TimeGapCrossAttention(d, h, config.attn_dropout, out_bias=config.cross_attn_out_bias)
        self.write = TimeGapCrossAttention(d, h, config.attn_dropout, out_bias=config.cross_attn_out_bias)
        self.ffn = make_feedforward(config)
        self.mem_ffn = make_feedforward(config)
        self.res_self = Residual(config, config.dropout)
        self.res_read = Residual(config, config.dropout)
        self.res_ff = Residual(config, config.dropout)
        write_dropout = config.dropout if released_dropout else config.memory_dropout
        self.res_write = Residual(config, write_dropout)
        self.res_mem_ff = Residual(config, write_dropout)
        self.candidate_dropout = config.memory_dropout if released_dropout else 0.0
        # learned bias per clipped time gap in [-(G-1), G-1], per head; shared by read and write
        self.gap_bias = nn.Parameter(torch.zeros(2 * config.max_time_gap - 1, h))
        if config.init == "released":
            self.reset_parameters_released()

    def reset_parameters_released(self) -> None:
        """The released code's init: xavier-uniform weights and zero biases in the attention
        and feed-forward nets (fused q/k/v blocks of the cross-attentions initialised as the
        separate projections they replace; the self-attention's qkv is fused there too), and the
        time-gap table from N(0, 1). Norms keep weight 1, bias 0."""
        attn = self.self_attn
        for linear in (attn.qkv, attn.r_proj, attn.out):
            xavier_blocks_(linear)
        for cross in (self.read, self.write):
            xavier_blocks_(cross.q)
            xavier_blocks_(cross.kv, 2)
            xavier_blocks_(cross.out)
        for ffn in (self.ffn, self.mem_ffn):
            if isinstance(ffn, MoEFeedForward):
                ffn.reset_parameters("released")
            else:
                for linear in ffn:
                    if isinstance(linear, nn.Linear):
                        xavier_blocks_(linear)
        nn.init.normal_(self.gap_bias, 0.0, 1.0)

    def project(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention queries, keys, values of the tokens ``h [B, n, D]``."""
        return self.self_attn.project(self.res_self.inp(h))

    def project_step(self, h: Tensor, positions: Tensor | FoldedPositions | None
                     ) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor | None, Tensor | None]:
        """:meth:`project` of one token per row ``h [B, D]`` and what :meth:`token_step` takes of the
        positions: ``((q, k, v), pos, r)``; with folded positions (a
        :class:`~torchrl_elmur.core.backbone.StepConstants` form) their scores ``pos [B, H, K]`` come
        out of the same matmul and ``r`` is None, else ``pos`` is None and ``r`` is ``positions``
        (the relative keys ``[H, K, d]``, or None: computed in the step)."""
        if not isinstance(positions, FoldedPositions):
            return self.project(h), None, positions
        D = h.shape[-1]
        q, k, v, pos = F.linear(self.res_self.inp(h), *positions).split([D, D, D, positions.weight.shape[0] - 3 * D], -1)
        return (q, k, v), pos.view(h.shape[0], self.self_attn.num_heads, -1), None

    def token_output(
        self, h: Tensor, q: Tensor, segment: tuple, u: Tensor, v_bias: Tensor,
        memory: Tensor, tok_stamp: Tensor, slot_stamp: Tensor, position_mask: Tensor | None = None,
    ) -> Tensor:
        """Layer output of ``n`` tokens.

        Args:
            h: layer input ``[B, n, D]``; q: its queries ``[B, n, D]``.
            segment: ``(k, v, geometry)``, the segment's keys and values so far (this token's
                included) and their geometry, see :meth:`RelativeSelfAttention.attend`.
            u, v_bias: shared Transformer-XL biases ``[H, d]``.
            memory: slot vectors the read sees ``[B, M, D]`` (initial vector in empty slots).
            tok_stamp: int64 ``[B, n]`` = 1 + episode step of each token.
            slot_stamp: int64 ``[B, M]`` (0 = empty).
            position_mask: optional dropout mask ``[K, D]`` of the relative position embedding.

        Returns:
            ``[B, n, D]``.
        """
        h1 = self.res_self.out(h, self.self_attn.attend(q, *segment, u, v_bias, position_mask))
        gap = tok_stamp.unsqueeze(-1) - slot_stamp.unsqueeze(-2)  # [B, n, M]
        return self.read_and_feed_forward(h1, memory, gap)

    def token_step(
        self, h: Tensor, qkv: tuple[Tensor, Tensor, Tensor], cache_k: Tensor, cache_v: Tensor, distance: Tensor,
        unseen: Tensor, u: Tensor, v_bias: Tensor, memory: Tensor, gap: Tensor, position_mask: Tensor | None = None,
        r: Tensor | None = None, read: Tensor | FoldedRead | None = None, pos: Tensor | None = None,
    ) -> Tensor:
        """:meth:`token_output` of one token per row (the streaming step), attending over the
        cached earlier tokens of its segment (:meth:`RelativeSelfAttention.attend_one`).

        Args:
            h: layer input ``[B, D]``; qkv: its :meth:`project` ``([B, D],) * 3``.
            cache_k, cache_v: the segment's cached keys and values ``[B, H, K, d]``.
            distance, unseen: see :meth:`RelativeSelfAttention.attend_one`.
            memory: ``[B, M, D]``; gap: int64 ``[B, M]`` = token stamp - slot stamp.
            r, read, pos: what the step can take from :meth:`~torchrl_elmur.core.ELMURBackbone.step_constants`
                (the relative keys ``[H, K, d]``; the read's ``kv(memory)`` ``[B, M, 2D]`` or those keys
                folded, :class:`~torchrl_elmur.core.attention.FoldedRead`; the position scores ``[B, H, K]``
                from :meth:`project_step`); else computed here.

        Returns:
            ``[B, D]``.
        """
        attended = self.self_attn.attend_one(*qkv, cache_k, cache_v, distance, unseen, u, v_bias, position_mask, r, pos)
        h1 = self.res_self.out(h, attended)
        return self.read_and_feed_forward(h1.unsqueeze(1), memory, gap.unsqueeze(1), read).squeeze(1)

    def read_and_feed_forward(self, h1: Tensor, memory: Tensor | None, gap: Tensor,
                              read: Tensor | FoldedRead | None = None) -> Tensor:
        """The token path after self-attention: memory read (``gap`` int64 ``[B, n, M]``; ``read``: see
        :meth:`token_step`; when it is given, ``memory`` is not read) and FFN, ``[B, n, D]``."""
        h2 = self.res_read.out(h1, self.read(self.res_read.inp(h1), memory, gap, self.gap_bias, read))
        return self.res_ff.out(h2, self.ffn(self.res_ff.inp(h2)))

    def write_candidates(self, memory: Tensor, slot_stamp: Tensor, outputs: Tensor, tok_stamp: Tensor) -> Tensor:
        """One candidate vector per slot from a complete segment.

        Args:
            memory: ``[B, M, D]`` slot vectors (initial vector in empty slots).
            slot_stamp: int64 ``[B, M]``.
            outputs: this layer's token outputs of the segment ``[B, K, D]``.
            tok_stamp: int64 ``[B, K]``.

        Returns:
            ``[B, M, D]``.
        """
        gap = slot_stamp.unsqueeze(-1) - tok_stamp.unsqueeze(-2)  # [B, M, K]
        c1 = self.res_write.out(memory, self.write(self.res_write.inp(memory), outputs, gap, self.gap_bias))
        candidate = self.res_mem_ff.out(c1, self.mem_ffn(self.res_mem_ff.inp(c1)))
        return dropout(candidate, self.candidate_dropout, self.training)
