"""The ELMUR backbone: L layers with layer memory, and its two exact execution paths.

Glossary: B batch, T time steps in a call, K segment length, L layers, M slots, D width,
p = position in the current segment (``step % K``).

- :meth:`ELMURBackbone.forward` (sequence path, training): ``[B, T]`` tokens from any state,
  even mid-segment and with a different phase per row. Rows are shifted on a segment-aligned
  timeline (row ``b``'s token ``t`` sits at slot ``p_b + t``; the slots before hold its cached
  tokens), processed one segment-chunk at a time with full causal attention, and memory is
  committed at every segment boundary a row crosses.
- :meth:`ELMURBackbone.step` (streaming path, inference): one token per call; cost O(K + M)
  attention per layer, independent of the episode step. The token attends over the cache's
  slots 0..p-1 and itself (:meth:`~.attention.RelativeSelfAttention.attend_one`); then its keys,
  values and outputs of all layers go into the next state's cache at slot p, in one write. The
  next state is a new one (one copy of the cache per step) unless ``inplace=True``. The part
  every row does at every step (:meth:`ELMURBackbone._token_path`) has no data-dependent shape
  or branch. How a step is run fast (in place, without host syncs, compiled) is
  :mod:`torchrl_elmur.core.stepping`'s :class:`~torchrl_elmur.core.stepping.Stepping`, which the
  backbone inherits: this file is the model.
- :func:`torchrl_elmur.core.reference.window_recompute` is the slow reference both are tested
  against.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ELMURConfig
from .cost import folds_positions, folds_read
from .attention import FoldedPositions, FoldedRead, dropout, merge_heads, relative_geometry, split_heads
from .feedforward import MoEFeedForward
from .layer import ELMURLayer, make_norm
from .lru import lru_commit
from .state import CACHE_KEY, CACHE_OUTPUT, CACHE_VALUE, ELMURState, layer_cache, pack_cache
from .stepping import Stepping


class StepConstants(NamedTuple):
    """What :meth:`ELMURBackbone.step_constants` returns (the forms depend on the backbone's
    :attr:`~ELMURBackbone.folds_positions` and :attr:`~ELMURBackbone.folds_read`)."""

    positions: tuple[Tensor | FoldedPositions, ...]  # one per layer, change with the weights: the relative keys
    # [H, K, d], or the qkv projection extended by the position scores (weight [3D + H*K, D], bias [3D + H*K])
    read: tuple[Tensor | FoldedRead, ...]  # one per layer, change at a commit (and with the weights): the read's keys
    # and values of the memory [B, M, 2D], or those keys folded into its projections (scores [B, D, M*H], values [B, M*H, D])


class ELMURBackbone(Stepping, nn.Module):
    """External Layer Memory with Update/Rewrite, pure torch (no TensorDict).

    Args:
        config: an :class:`ELMURConfig`.

    Shapes: tokens ``[B, T, config.token_size]`` (sequence) or ``[B, token_size]`` (step);
    outputs ``[B, T, D]`` / ``[B, D]``; state: :class:`ELMURState`.

    Attributes:
        folds_read, folds_positions: whether :meth:`step_constants` fold the memory's keys into the
            read's projections (``M H + M D / K < D + M``) and the position scores into the self-attention's
            projection (``H K <= D``); chosen from the config, where folding costs few or no extra
            multiply-adds (streaming steps that keep the constants run fewer ops).

    .. note:: With ``config.detach_memory=False`` (the default) gradients flow through memory
        across all segments of one call, so the write path is trained. With ``True`` (as
        published, and in the published presets) memory committed at a segment boundary carries
        no gradient: later segments train the read, not the write of earlier ones.

    Examples:
        >>> _ = torch.manual_seed(0)
        >>> net = ELMURBackbone(ELMURConfig(d_model=16, num_heads=2, segment_len=3, input_size=5)).eval()
        >>> x = torch.randn(4, 7, 5)                   # [B, T, input_size]
        >>> y, state = net(x)                           # sequence path from a fresh state
        >>> y.shape, state.memory.shape, state.step.tolist()
        (torch.Size([4, 7, 16]), torch.Size([4, 2, 2, 16]), [7, 7, 7, 7])
        >>> s = net.initial_state(4)
        >>> ys = []
        >>> for t in range(7):                          # streaming path, one step at a time
        ...     y_t, s = net.step(x[:, t], s)
        ...     ys.append(y_t)
        >>> torch.allclose(torch.stack(ys, 1), y, atol=1e-5)
        True
    """

    def __init__(self, config: ELMURConfig) -> None:
        super().__init__()
        if not isinstance(config, ELMURConfig):
            raise TypeError(f"ELMURBackbone: expected an ELMURConfig, received {type(config).__name__}.")
        self.config = config
        c = config
        self.in_proj = nn.Linear(c.token_size, c.d_model) if c.token_size != c.d_model else nn.Identity()
        self.layers = nn.ModuleList(ELMURLayer(c) for _ in range(c.num_layers))
        # Transformer-XL content (u) and position (v) biases, shared by all layers
        self.u = nn.Parameter(torch.zeros(c.num_heads, c.head_dim))
        self.v = nn.Parameter(torch.zeros(c.num_heads, c.head_dim))
        if c.init == "released":  # the layers initialise themselves (ELMURLayer.reset_parameters_released)
            nn.init.normal_(self.u, 0.0, 0.02)
            nn.init.normal_(self.v, 0.0, 0.02)
        self.final_norm = make_norm(c) if c.norm_position == "pre" else nn.Identity()
        # what empty slots show to reads and writes: drawn once, saved with the weights
        self.register_buffer("memory_init", torch.randn(c.num_layers, c.memory_slots, c.d_model) * c.memory_init_std)
        self._moe = [m for m in self.modules() if isinstance(m, MoEFeedForward)]
        self._moe_segments = 0  # segments processed by the last call (moe_loss averages over them)
        self.folds_read, self.folds_positions = folds_read(c), folds_positions(c)  # step_constants' forms (core/cost.py)

    # ------------------------------------------------------------------ mixture-of-experts loss
    def moe_loss(self) -> Tensor:
        """The load-balancing loss of the last training call (``config.moe``; 0 without MoE).

        As in the released code, per segment: the sum over layers of the token and memory
        feed-forward nets' losses (each with its coefficient); averaged here over the segments
        that call processed. Add it to the training loss
        (:class:`~torchrl_elmur.objectives.SequenceCrossEntropyLoss` does).
        """
        losses = [loss for m in self._moe for loss in m.aux_losses]
        if not losses:
            return self.memory_init.new_zeros(())
        return torch.stack(losses).sum() / max(1, self._moe_segments)

    def _start_call(self, segments: int) -> None:
        if self._moe:  # nothing to do (no state touched in the hot path) without MoE
            for m in self._moe:
                m.aux_losses = []
            self._moe_segments = segments

    def _input_tokens(self, x: Tensor) -> Tensor:
        """``in_proj(x)``, with token dropout in training under ``dropout_placement="released"``."""
        h = self.in_proj(x)
        return dropout(h, self.config.dropout, self.training and self.config.dropout_placement == "released")

    def _position_mask(self, dtype: torch.dtype, device) -> Tensor | None:
        """A dropout mask ``[K, D]`` (scaled) of the relative position embedding, drawn once per segment
        and shared by all layers as in the released code; ``None`` outside training or without
        ``dropout_placement="released"``."""
        c = self.config
        if not (self.training and c.dropout_placement == "released" and c.dropout > 0):
            return None
        return F.dropout(torch.ones(c.segment_len, c.d_model, dtype=dtype, device=device), c.dropout)

    # ------------------------------------------------------------------ state helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.memory_init.dtype

    def initial_state(self, batch: int, layout: str = "cache") -> ELMURState:
        """The fresh-episode (all zeros) state for ``batch`` rows, on this module's device/dtype.

        ``layout``: how the state holds the current segment (:class:`ELMURState`): ``"cache"``
        (fast steps) or ``"tokens"`` (small, for storage)."""
        return ELMURState.zeros(self.config, batch, dtype=self.dtype, device=self.memory_init.device, layout=layout)

    def memory_view(self, memory: Tensor, memory_time: Tensor) -> Tensor:
        """Slot vectors of all layers as reads and writes see them ``[B, L, M, D]``: the stored
        vector, or the fixed initial vector in empty slots (``memory_time == 0``)."""
        empty = (memory_time == 0).unsqueeze(-1)
        return torch.where(empty, self.memory_init.to(memory.dtype), memory)

    def commit_segment(
        self, memory: Tensor, memory_time: Tensor, outputs: list[Tensor], tok_stamp: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Write one complete segment into every layer's memory (the LRU rule).

        Args:
            memory: ``[B, L, M, D]``; memory_time: ``[B, L, M]``.
            outputs: per layer, the token outputs of the whole segment ``[B, K, D]``.
            tok_stamp: int64 ``[B, K]`` = 1 + episode step of each token of the segment.

        Returns:
            ``(memory, memory_time)`` after the commit.
        """
        c = self.config
        new_memory, new_time = [], []
        seen = self.memory_view(memory, memory_time)  # [B, L, M, D]
        for i, layer in enumerate(self.layers):
            mem = seen[:, i]
            candidate = layer.write_candidates(mem, memory_time[:, i], outputs[i], tok_stamp)
            m, t = lru_commit(mem, memory_time[:, i], candidate, tok_stamp[:, -1], c.lru_blend, c.write_rule)
            new_memory.append(m)
            new_time.append(t)
        memory = torch.stack(new_memory, 1)
        return (memory.detach() if c.detach_memory else memory), torch.stack(new_time, 1)

    # ------------------------------------------------------------------ input checks
    def _check_tokens(self, x: Tensor, ndim: int, what: str) -> None:
        expected = "[B, T, F]" if ndim == 3 else "[B, F]"
        if not isinstance(x, Tensor):
            raise TypeError(f"ELMURBackbone.{what}: tokens must be a Tensor, received {type(x).__name__}.")
        if not x.is_floating_point():
            raise TypeError(f"ELMURBackbone.{what}: tokens must be floating point, received dtype {x.dtype}.")
        if x.ndim != ndim or x.shape[-1] != self.config.token_size:
            raise ValueError(
                f"ELMURBackbone.{what}: tokens must have shape {expected} with F={self.config.token_size}, "
                f"received shape {list(x.shape)}."
            )

    def _prepare(self, x: Tensor, state: ELMURState | None, what: str) -> ELMURState:
        if state is None:
            return self.initial_state(x.shape[0])
        if not isinstance(state, ELMURState):
            raise TypeError(f"ELMURBackbone.{what}: state must be an ELMURState, received {type(state).__name__}.")
        state.validate(self.config, x.shape[0], self.dtype)
        return state

    # ------------------------------------------------------------------ streaming path
    def step(
        self, x: Tensor, state: ELMURState | None = None, *, static: bool = False, inplace: bool = False
    ) -> tuple[Tensor, ELMURState]:
        """Process one token per row.

        Args:
            x: ``[B, token_size]``.
            state: the state before this token (``None``: fresh). Rows may be at different steps.
            static: compute the segment write for every row and keep it only where a segment
                completes, instead of picking those rows first. Same result, no host sync and no
                data-dependent shapes: the form ``torch.compile`` / CUDA graphs can capture whole
                (see :meth:`~torchrl_elmur.core.stepping.Stepping.compiled_step`); more work when M is large.
            inplace: update ``state``'s tensors in place and return them, instead of copying the
                segment cache (``[B, H, K, L, 3, d]``) into a new state every step: for inference
                loops that never read a state again once it has been stepped (``state =
                step(x, state)[1]``). Needs autograd off; not with ``static``. Saves one copy of
                the whole cache per step (memory traffic O(K) per row). :class:`~torchrl_elmur.ELMURModule`
                uses it only inside :func:`~torchrl_elmur.inplace_steps` (evaluation loops): TorchRL
                rollouts and collectors keep every step's state.

        A state of layout ``"tokens"`` (:class:`ELMURState`) is stepped by the sequence path
        (``forward(x[:, None], state)``): the segment so far is recomputed from its tokens, and
        the next state has the same layout. ``static`` and ``inplace`` need the ``"cache"`` layout.

        Returns:
            ``(y [B, D], next_state)``. The input state is not modified (unless ``inplace``).
        """
        return self._checked_step(x, state, static, inplace)

    def step_constants(self, memory: Tensor, memory_time: Tensor) -> StepConstants:
        """What a streaming step reads that does not change from step to step: per layer, the
        position keys (they change only with the weights; :meth:`position_constants`) and what the
        memory read takes from the slots (it changes only when a segment is committed;
        :meth:`read_constants`). A caller that keeps them (:class:`~torchrl_elmur.ELMURModule`'s
        derived segment cache) passes them to the step to skip that work at every step; the step
        computes the unfolded forms itself when not given.

        The forms: with :attr:`folds_positions` (``H K <= D``) the self-attention's qkv projection
        extended by the position scores (:meth:`~.attention.RelativeSelfAttention.fold_positions`),
        else the relative keys; with :attr:`folds_read` (``M H + M D / K < D + M``) the memory's keys folded
        into the read's projections (:meth:`~.attention.TimeGapCrossAttention.fold_keys`), else
        the read's keys and values. Outputs are the same to float rounding either way.

        Args:
            memory: ``[B, L, M, D]``; memory_time: int64 ``[B, L, M]``.

        Examples:
            >>> net = ELMURBackbone(ELMURConfig(d_model=16, num_heads=2, segment_len=4, memory_slots=3)).eval()
            >>> s = net.initial_state(5)
            >>> positions, read = net.step_constants(s.memory, s.memory_time)
            >>> len(positions), len(read)                                   # one per layer
            (2, 2)
            >>> net.folds_positions, [list(t.shape) for t in positions[0]]  # H K = 8 <= D: [3D + H K, D], [3D + H K]
            (True, [[56, 16], [56]])
            >>> net.folds_read, [list(t.shape) for t in read[0]]            # M H + M D / K = 18 < D + M: [B, D, M H], [B, M H, D]
            (True, [[5, 16, 6], [5, 6, 16]])
            >>> ELMURBackbone(ELMURConfig(d_model=8, num_heads=2, segment_len=4, memory_slots=3)).folds_read   # 12 > 11
            False
        """
        return StepConstants(self.position_constants(), self.read_constants(memory, memory_time))

    def position_constants(self) -> tuple[Tensor | FoldedPositions, ...]:
        """:class:`StepConstants` ``positions``, per layer: its
        :meth:`~.attention.RelativeSelfAttention.relative_keys` ``[H, K, d]`` (no dropout), or with
        :attr:`folds_positions` its :meth:`~.attention.RelativeSelfAttention.fold_positions`."""
        keys = [layer.self_attn.relative_keys(self.dtype)[0] for layer in self.layers]
        if not self.folds_positions:
            return tuple(keys)
        return tuple(layer.self_attn.fold_positions(r, self.v) for layer, r in zip(self.layers, keys))

    def read_constants(self, memory: Tensor, memory_time: Tensor) -> tuple[Tensor | FoldedRead, ...]:
        """:class:`StepConstants` ``read``, per layer: the memory read's keys and values of the slots
        as reads see them, ``[B, M, 2D]``, or with :attr:`folds_read` those folded into the read's
        projections (:meth:`~.attention.TimeGapCrossAttention.fold_keys`)."""
        seen = self.memory_view(memory, memory_time)  # [B, L, M, D]
        kv = [layer.read.kv(seen[:, i]) for i, layer in enumerate(self.layers)]
        if not self.folds_read:
            return tuple(kv)
        return tuple(layer.read.fold_keys(t) for layer, t in zip(self.layers, kv))

    def _token_path(self, x: Tensor, memory: Tensor, memory_time: Tensor, cache: Tensor, step: Tensor,
                    p: Tensor, constants: StepConstants | None = None) -> tuple[Tensor, Tensor]:
        """The part of a step that every row does at every step, with no data-dependent shape or
        branch (what :meth:`~torchrl_elmur.core.stepping.Stepping.compiled_step` compiles): all layers' token outputs for ``x [B, F]``
        at slots ``p = step % K`` (computed once by :meth:`_step`). ``constants``: :meth:`step_constants`
        of ``memory``, if the caller keeps them; else computed inside the step (the relative keys
        always are in training with position dropout, whose mask is drawn per segment).

        Returns:
            ``(y [B, D], entry [B, H, L, 3, d])``: the output (after the final norm) and this
            token's keys, values and layer outputs, the cache entry of its slot ``p = step % K``.
        """
        c = self.config
        B, K, H, L = x.shape[0], c.segment_len, c.num_heads, c.num_layers
        h = self._input_tokens(x)  # [B, D]
        position_mask = self._position_mask(h.dtype, h.device)
        slots = torch.arange(K, device=x.device)
        distance = (p[:, None] - slots).clamp_(min=0)  # [B, K]: from each cache slot to this token (slots >= p unused)
        unseen = (slots >= p[:, None]).unsqueeze(1)  # [B, 1, K]: slots not holding this segment's earlier tokens
        positions, read = constants or (None, None)
        if position_mask is not None:  # training with position dropout: the relative keys are drawn per segment
            positions = None
        seen = self.memory_view(memory, memory_time) if read is None else None  # [B, L, M, D]
        gap = (step + 1)[:, None, None] - memory_time  # [B, L, M]: this token's stamp - each slot's, for the reads
        entries = []  # per layer: this token's key, value, output [B, D]
        for i, layer in enumerate(self.layers):
            qkv, pos, r = layer.project_step(h, None if positions is None else positions[i])  # ([B, D],) * 3, [B, H, K]
            h = layer.token_step(h, qkv, layer_cache(cache, i, CACHE_KEY), layer_cache(cache, i, CACHE_VALUE),
                                 distance, unseen, self.u, self.v, None if seen is None else seen[:, i], gap[:, i], position_mask,
                                 r, None if read is None else read[i], pos)
            entries += [qkv[1], qkv[2], h]
        entry = torch.stack(entries, 1).view(B, L, 3, H, -1).permute(0, 3, 1, 2, 4)  # [B, H, L, 3, d]
        return self.final_norm(h), entry

    def cache_from_tokens(self, state: ELMURState) -> Tensor:
        """The segment cache ``[B, H, K, L, 3, d]`` (layout ``"cache"``) that continues ``state``, a
        state of layout ``"tokens"``: its ``p = step % K`` stored tokens run from the segment's start
        (the memory is frozen inside a segment, so no commit happens). Equal to the cache the
        streaming path would have built step by step, to float rounding.

        Examples:
            >>> net = ELMURBackbone(ELMURConfig(d_model=8, num_heads=2, segment_len=4)).eval()
            >>> x = torch.randn(2, 6, 8)
            >>> _, cached = net(x, net.initial_state(2, "cache"))
            >>> _, compact = net(x, net.initial_state(2, "tokens"))
            >>> torch.allclose(net.cache_from_tokens(compact), cached.cache, atol=1e-6)
            True
        """
        K = self.config.segment_len
        p = state.step % K
        start = ELMURState(state.memory, state.memory_time, self.initial_state(len(p), "cache").cache, state.step - p)
        if K == 1:  # no earlier tokens in a segment of one
            return start.cache
        return self.forward(state.tokens, start, lengths=p)[1].cache

    # ------------------------------------------------------------------ sequence path
    def forward(
        self, x: Tensor, state: ELMURState | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, ELMURState]:
        """Process ``T`` tokens per row, committing memory at every segment boundary crossed.

        Args:
            x: ``[B, T, token_size]``.
            state: the state before ``x[:, 0]`` (``None``: fresh, layout ``"cache"``). May be
                mid-segment; rows may be at different steps. Either layout: with ``"tokens"`` the
                segment's earlier tokens are recomputed in the first chunk.
            lengths: optional int ``[B]``: row ``b`` has ``lengths[b] <= T`` real tokens followed by
                padding. Outputs at padded positions are unspecified; the returned state is the
                one after each row's last real token.

        Returns:
            ``(y [B, T, D], state after the last real token of each row)``, in the input state's layout.
        """
        self._check_tokens(x, 3, "forward")
        state = self._prepare(x, state, "forward")
        B, T, _ = x.shape
        K, D, H = self.config.segment_len, self.config.d_model, self.config.num_heads
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.int64, device=x.device)
        elif lengths.shape != (B,) or bool(((lengths < 0) | (lengths > T)).any()):
            raise ValueError(f"ELMURBackbone.forward: lengths must be [B]={[B]} in [0, {T}], received {lengths.tolist()}.")
        lengths = lengths.to(torch.int64)
        p = state.step % K  # [B]
        p_max = int(p.max())  # one host sync, used twice
        n_chunks = max(1, -(-(p_max + T) // K))
        self._start_call(n_chunks)
        slots = torch.arange(n_chunks * K, device=x.device)  # segment-aligned timeline
        src = slots[None] - p[:, None]  # [B, S]: token index at each timeline slot (<0: earlier in the segment)
        use_cache = state.layout == "cache"
        h_in = self._input_tokens(x)  # [B, T, D]
        if use_cache:  # slots before p: their keys, values and outputs come from the cache
            gathered = torch.gather(h_in, 1, src.clamp(0, T - 1)[..., None].expand(-1, -1, D))
            h_line = torch.where(((src >= 0) & (src < T))[..., None], gathered, torch.zeros_like(gathered))
        else:  # slots before p: the stored tokens, recomputed with this call's tokens
            index = torch.where(src < 0, slots[None], src + (K - 1))  # into [tokens, x]: tokens[:, j] sits at slot j
            valid = (src < T)[..., None]
            x_all = torch.cat([state.tokens, x], 1)  # [B, K-1+T, F]
            x_line = torch.gather(x_all, 1, index.clamp(max=x_all.shape[1] - 1)[..., None].expand(-1, -1, x.shape[-1]))
            x_line = torch.where(valid, x_line, torch.zeros_like(x_line))  # [B, S, F]: raw inputs, for the final state
            # the prefix goes through the input projection only when there is one, so that a call from a
            # segment boundary draws the same dropout masks as with the cache layout
            h_prefix = self._input_tokens(state.tokens) if p_max > 0 else h_in.new_zeros(B, K - 1, D)
            h_all = torch.cat([h_prefix, h_in], 1)  # [B, K-1+T, D]
            gathered = torch.gather(h_all, 1, index.clamp(max=h_all.shape[1] - 1)[..., None].expand(-1, -1, D))
            h_line = torch.where(valid, gathered, torch.zeros_like(gathered))
        stamp_line = (state.step - p)[:, None] + slots[None] + 1  # [B, S]
        end = p + lengths  # [B]: first timeline slot after each row's last token
        cached = (src < 0)[..., None]  # [B, S, 1]
        cached_heads = cached[:, None]  # [B, 1, S, 1]

        pos = torch.arange(K, device=x.device)
        causal = relative_geometry(pos, pos, None, K)  # full causal attention within a segment chunk
        memory, memory_time = state.memory, state.memory_time
        final_segment = torch.zeros_like(state.cache if use_cache else state.tokens)
        y_chunks = []
        for c in range(n_chunks):
            window = slice(c * K, (c + 1) * K)
            h, stamps, first = h_line[:, window], stamp_line[:, window], c == 0
            chunk_entries = []
            seen = self.memory_view(memory, memory_time)  # [B, L, M, D]
            position_mask = self._position_mask(h.dtype, h.device)
            for i, layer in enumerate(self.layers):
                q, k, v = layer.project(h)  # [B, K, D]
                k, v = split_heads(k, H), split_heads(v, H)  # [B, H, K, d]
                if first and use_cache:  # slots before p hold tokens of earlier calls: use their cache
                    k = torch.where(cached_heads[:, :, window], layer_cache(state.cache, i, CACHE_KEY), k)
                    v = torch.where(cached_heads[:, :, window], layer_cache(state.cache, i, CACHE_VALUE), v)
                elif first:  # the same memory layout as the line above: both layouts round alike
                    k, v = k.contiguous(), v.contiguous()
                h = layer.token_output(
                    h, q, (k, v, causal), self.u, self.v,
                    seen[:, i], stamps, memory_time[:, i], position_mask,
                )
                if first and use_cache:
                    h = torch.where(cached[:, window], merge_heads(layer_cache(state.cache, i, CACHE_OUTPUT)), h)
                chunk_entries.append((k, v, h))
            y_chunks.append(self.final_norm(h))

            complete = end >= (c + 1) * K  # [B]
            if bool(complete.any()):
                new_memory, new_time = self.commit_segment(memory, memory_time, [o for _, _, o in chunk_entries], stamps)
                memory = torch.where(complete[:, None, None, None], new_memory, memory)
                memory_time = torch.where(complete[:, None, None], new_time, memory_time)
            ends_inside = (end > c * K) & (end < (c + 1) * K)  # row stops mid-segment: keep a cache
            if bool(ends_inside.any()):
                filled = pos[None] < (end - c * K)[:, None]  # [B, K]
                if use_cache:
                    chunk = pack_cache([(k, v, split_heads(o, H)) for k, v, o in chunk_entries])  # [B, H, K, L, 3, d]
                    filled = filled[:, None, :, None, None, None]  # [B, 1, K, 1, 1, 1]
                else:
                    chunk, filled = x_line[:, c * K : c * K + K - 1], filled[:, : K - 1, None]  # [B, K-1, F]
                chunk = torch.where(filled, chunk, torch.zeros_like(chunk))
                final_segment = torch.where(ends_inside.view(-1, *[1] * (chunk.ndim - 1)), chunk, final_segment)

        y_line = torch.cat(y_chunks, 1)  # [B, S, D]
        index = (p[:, None] + torch.arange(T, device=x.device)[None]).clamp(max=y_line.shape[1] - 1)
        y = torch.gather(y_line, 1, index[..., None].expand(-1, -1, D))
        if use_cache:
            return y, ELMURState(memory, memory_time, final_segment, state.step + lengths)
        return y, ELMURState(memory, memory_time, None, state.step + lengths, tokens=final_segment)
