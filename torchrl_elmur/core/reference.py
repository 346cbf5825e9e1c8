"""The slow, obviously-correct reference: re-run the current segment's window every step.

This is the authors' evaluation procedure: at every step, the partial window of the current
segment is run from scratch (all layers, full causal attention) against the frozen memory; when
the segment is complete, memory is committed from that full-window pass. No cache is used. It
costs O(K) layer passes per step and exists to test the fast paths and to benchmark them.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .attention import relative_geometry, split_heads
from .backbone import ELMURBackbone
from .state import ELMURState, pack_cache


@torch.no_grad()
def window_recompute(backbone: ELMURBackbone, x: Tensor, state: ELMURState | None = None) -> tuple[Tensor, ELMURState]:
    """Outputs of ``backbone`` on ``x [B, T, token_size]`` by per-step window recomputation.

    Args:
        backbone: the model (its weights and config are used, not its fast paths).
        x: ``[B, T, token_size]``.
        state: optional start state; it must be at a segment boundary (empty cache) in every row.

    Returns:
        ``(y [B, T, D], state)``; the returned state's cache is that of the last window.
    """
    backbone._check_tokens(x, 3, "window_recompute")
    state = backbone._prepare(x, state, "window_recompute")
    K = backbone.config.segment_len
    if bool((state.step % K != 0).any()):
        raise ValueError(
            f"window_recompute: the start state must be at a segment boundary, received steps {state.step.tolist()} "
            f"with segment_len={K}."
        )
    B, T, _ = x.shape
    tokens = backbone.in_proj(x)  # [B, T, D]
    memory, memory_time = state.memory, state.memory_time
    ys, cache = [], state.cache
    for t in range(T):
        start = t - t % K  # first step of the current segment (relative to this call)
        h = tokens[:, start : t + 1]  # [B, n, D], the whole partial window
        n = h.shape[1]
        pos = torch.arange(n, device=x.device)
        stamps = (state.step + start + 1)[:, None] + pos  # [B, n]
        causal = relative_geometry(pos, pos, None, K)
        layer_outputs, entries = [], []
        seen = backbone.memory_view(memory, memory_time)  # [B, L, M, D]
        for i, layer in enumerate(backbone.layers):
            q, k, v = layer.project(h)
            k, v = split_heads(k, backbone.config.num_heads), split_heads(v, backbone.config.num_heads)
            h = layer.token_output(
                h, q, (k, v, causal), backbone.u, backbone.v,
                seen[:, i], stamps, memory_time[:, i],
            )
            layer_outputs.append(h)
            entries.append((k, v, split_heads(h, backbone.config.num_heads)))  # [B, H, n, d] each
        ys.append(backbone.final_norm(h[:, -1]))
        cache = torch.zeros_like(state.cache)
        if n == K:
            memory, memory_time = backbone.commit_segment(memory, memory_time, layer_outputs, stamps)
        else:
            cache[:, :, :n] = pack_cache(entries)  # [B, H, n, L, 3, d]
    y = torch.stack(ys, 1) if ys else x.new_zeros(B, 0, backbone.config.d_model)
    return y, ELMURState(memory, memory_time, cache, state.step + T)
