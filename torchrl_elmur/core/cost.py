"""Arithmetic floors: multiply-adds per environment step of ELMUR and of TorchRL's GRU / LSTM.

What a streaming step has to compute at the least, counted from the configuration (matrix
products and attention dot products; norms, activations and softmaxes are left out). Benchmarks
divide measured times by these to show how far a path is from its floor.

Glossary: F input width, D width, L layers, H heads, M slots, K segment length, d_ff the
feed-forward width.
"""
from __future__ import annotations

from .config import ELMURConfig


def _ffn_macs(c: ELMURConfig) -> int:
    """One token through a token or memory feed-forward net (MLP or mixture of experts)."""
    D = c.d_model
    if c.moe is None:
        return 2 * D * c.ff_dim
    expert_ff, shared_ff = c.moe.widths(D)
    return D * c.moe.num_experts + 3 * D * (c.moe.top_k * expert_ff + c.moe.num_shared * shared_ff)


def folds_read(config: ELMURConfig) -> bool:
    """Whether the streaming step's kept read constants take the folded form
    (:meth:`~torchrl_elmur.core.attention.TimeGapCrossAttention.fold_keys`): where it costs fewer
    multiply-adds per step, the per-segment fold averaged in (``2 M H D + 4 M D^2 / K`` against
    ``2 D^2 + 2 M D + 2 M D^2 / K``, i.e. ``M H + M D / K < D + M``).

    Examples:
        >>> folds_read(ELMURConfig(d_model=128, num_heads=2, memory_slots=2, segment_len=10))
        True
        >>> folds_read(ELMURConfig(d_model=32, num_heads=16, memory_slots=32, segment_len=60))   # MIKASA TakeItBack
        False
    """
    c = config
    return c.memory_slots * c.num_heads + c.memory_slots * c.d_model / c.segment_len < c.d_model + c.memory_slots


def folds_positions(config: ELMURConfig) -> bool:
    """Whether the kept position constants take the folded form
    (:meth:`~torchrl_elmur.core.attention.RelativeSelfAttention.fold_positions`): where its ``H K D``
    extra multiply-adds per step are at most a third of the qkv projection's (``H K <= D``).

    Examples:
        >>> folds_positions(ELMURConfig(d_model=128, num_heads=2, segment_len=10))
        True
    """
    return config.num_heads * config.segment_len <= config.d_model


def elmur_step_macs(config: ELMURConfig) -> float:
    """Multiply-adds of one streaming step, averaged over a segment (the write happens once per K steps).

    Per layer and step: the self-attention's q, k, v and output projections (4 D^2), its position
    term ((q + v) against the K relative keys, which change only with the weights: K D), the
    attention over the segment (<= K keys: 2 K D), the memory read, the feed-forward net; once per
    segment (divided by K): what the read takes from the memory (frozen inside a segment), and the
    write (queries and output of M slots 2 M D^2, keys and values of the K outputs 2 K D^2,
    attention 2 M K D, the memory FFN for M slots). The read, the cheaper of its two forms: its
    query and output projections (2 D^2) and attention (2 M D) per step, the slots' keys and values
    (2 M D^2) per segment; or those keys and values folded into the projections
    (:meth:`~torchrl_elmur.core.attention.TimeGapCrossAttention.fold_keys`): 2 M H D per step,
    4 M D^2 per segment. Plus the input projection (F D) when F != D.

    Examples:
        >>> c = ELMURConfig(d_model=128, num_layers=2, segment_len=10, memory_slots=2, input_size=64)
        >>> round(elmur_step_macs(c))
        569446
    """
    c = config
    D, K, M, H = c.d_model, c.segment_len, c.memory_slots, c.num_heads
    ffn = _ffn_macs(c)
    read_step, read_segment = (2 * M * H * D, 4 * M * D * D) if folds_read(c) else (2 * D * D + 2 * M * D, 2 * M * D * D)
    per_step = 4 * D * D + K * D + 2 * K * D + read_step + ffn
    per_segment = read_segment + (2 * M * D * D + 2 * K * D * D + 2 * M * K * D + M * ffn)
    in_proj = c.token_size * D if c.token_size != D else 0
    return in_proj + c.num_layers * (per_step + per_segment / K)


def rnn_step_macs(input_size: int, hidden_size: int, num_layers: int = 1, gates: int = 3) -> int:
    """Multiply-adds of one step of a GRU (``gates=3``) or an LSTM (``gates=4``).

    Examples:
        >>> rnn_step_macs(64, 128)               # GRUModule(input_size=64, hidden_size=128)
        73728
        >>> rnn_step_macs(64, 128, gates=4)      # LSTMModule
        98304
    """
    first = gates * (input_size + hidden_size) * hidden_size
    return first + (num_layers - 1) * gates * 2 * hidden_size * hidden_size
