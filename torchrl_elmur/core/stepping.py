"""How the backbone's streaming step runs: the speed plumbing, apart from the model.

:mod:`torchrl_elmur.core.backbone` holds the model: what one step computes
(:meth:`~torchrl_elmur.core.ELMURBackbone.step`, its token path
:meth:`~torchrl_elmur.core.ELMURBackbone._token_path`, the segment commit). This module holds how
a step is run fast, as :class:`Stepping`, a mixin of :class:`~torchrl_elmur.core.ELMURBackbone`:

- the write of the token's cache entry into a new cache, or into the input's own cache
  (``inplace``, or a cache the caller owns: ``own_cache``);
- the memory commit of only the rows whose segment completes (a gather), of all rows in step
  with each other (no gather), or of every row kept where done (``static``: no host sync, no
  data-dependent shape);
- ``torch.compile`` of the parts every row runs at every step (:meth:`Stepping.compiled_paths`)
  or of the whole static step (:meth:`Stepping.compiled_step`).

Every combination gives the eager step's outputs (``tests/test_backbone.py``,
``tests/test_fast_paths.py``).

Glossary: B batch, K segment length, L layers, H heads, d = D / H, M slots, p = position in the
current segment (``step % K``).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from .attention import merge_heads
from .state import CACHE_OUTPUT, ELMURState, layer_cache


class CompiledPaths(NamedTuple):
    """The compiled parts of a step that :meth:`ELMURBackbone._step` runs instead of the eager
    ones (:meth:`ELMURBackbone.compiled_paths`): the token path (every row, every step; used by
    in-place steps), the token path with the write into a new cache (the other steps) and the
    segment write of the rows whose segment completes (every K steps)."""

    token_path: Callable
    token_write: Callable
    segment_write: Callable


class Stepping:
    """The step machinery of :class:`~torchrl_elmur.core.ELMURBackbone` (a mixin: it reads the
    backbone's ``config``, ``_token_path``, ``commit_segment``, ``_start_call`` and checks)."""

    def _checked_step(self, x: Tensor, state: ELMURState | None, static: bool, inplace: bool,
                      compiled: CompiledPaths | None = None) -> tuple[Tensor, ELMURState]:
        """:meth:`step`'s checks, then the step (``compiled``: see :meth:`_step`)."""
        self._check_tokens(x, 2, "step")
        if isinstance(state, ELMURState) and state.layout == "tokens":
            if static or inplace or compiled is not None:
                raise ValueError(f"ELMURBackbone.step: static=True, inplace=True and the compiled step need a state of "
                                 f"layout 'cache', received layout 'tokens' (static={static}, inplace={inplace}).")
            y, state = self.forward(x.unsqueeze(1), state)
            return y[:, 0], state
        if inplace and (static or torch.is_grad_enabled() or state is None):
            raise ValueError(
                "ELMURBackbone.step: inplace=True needs a given state, autograd off (torch.no_grad()) and "
                f"static=False; received state={'None' if state is None else 'given'}, "
                f"grad enabled={torch.is_grad_enabled()}, static={static}."
            )
        return self._step(x, self._prepare(x, state, "step"), static, inplace, compiled)

    def _token_write(self, x: Tensor, memory: Tensor, memory_time: Tensor, cache: Tensor, step: Tensor,
                     inplace: bool = False, token_path=None, constants=None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """:meth:`_token_path` (or ``token_path``, e.g. its compiled form) and the write of its
        entry at slot ``p = step % K`` of the next cache: a new one, or ``cache`` itself with
        ``inplace``. The part of a step that every row does at every step; compiled as one graph
        for steps that are not in place (a compiled in-place write could copy the cache back).
        ``constants``: :meth:`~torchrl_elmur.core.ELMURBackbone.step_constants` for the eager token path.

        Returns:
            ``(y [B, D], next cache, p [B], done [B])``: ``done``: whether this token completes its
            row's segment.
        """
        K = self.config.segment_len
        p = step % K  # [B]: this token's slot in the segment
        if constants is None:
            y, entry = (token_path or self._token_path)(x, memory, memory_time, cache, step, p)
        else:
            y, entry = self._token_path(x, memory, memory_time, cache, step, p, constants)
        if not inplace:
            cache = cache.clone()
        cache[torch.arange(x.shape[0], device=x.device), :, p] = entry.to(cache.dtype)  # (bf16 under autocast)
        return y, cache, p, p == K - 1

    def _segment_write(self, memory: Tensor, memory_time: Tensor, cache: Tensor, step: Tensor,
                       p: Tensor) -> tuple[Tensor, Tensor]:
        """The memory commit of ``b`` rows whose segment the current token completes (what
        :meth:`compiled_paths` compiles): ``memory [b, L, M, D]``, ``memory_time [b, L, M]``, their
        ``cache [b, H, K, L, 3, d]`` with this token written, its ``step`` and slot ``p`` ``[b]``.

        Returns:
            ``(memory, memory_time)`` after :meth:`commit_segment`.
        """
        K = self.config.segment_len
        seg_stamp = (step - p + 1)[:, None] + torch.arange(K, device=step.device)  # [b, K]
        outs = [merge_heads(layer_cache(cache, i, CACHE_OUTPUT)) for i in range(self.config.num_layers)]  # [b, K, D]
        return self.commit_segment(memory, memory_time, outs, seg_stamp)

    def _step(self, x: Tensor, state: ELMURState, static: bool = False, inplace: bool = False,
              compiled: CompiledPaths | None = None, own_cache: bool = False,
              constants=None) -> tuple[Tensor, ELMURState]:
        """:meth:`step` without its input checks: ``x [B, token_size]`` and a validated state of
        layout ``"cache"`` (for callers that checked both, e.g. :class:`~torchrl_elmur.ELMURModule`).
        ``compiled``: the compiled token path, token write and segment write
        (:meth:`compiled_paths`), else the eager ones. ``own_cache``: the caller owns
        ``state.cache`` (a derived cache, see :class:`~torchrl_elmur.ELMURModule`): it is written in
        place and returned, while memory, stamps and step are new tensors, as without ``inplace``.
        ``constants``: :meth:`~torchrl_elmur.core.ELMURBackbone.step_constants` of ``state`` kept by the
        caller (eager steps only: ``compiled`` must be None)."""
        if constants is not None and compiled is not None:
            raise ValueError("ELMURBackbone._step: constants are for the eager token path; received compiled paths too.")
        self._start_call(1)
        token_path, token_write, segment_write = compiled or (self._token_path, self._token_write, self._segment_write)
        memory, memory_time, cache, step = state.memory, state.memory_time, state.cache, state.step
        if inplace or own_cache:  # the (compiled) token path, its entry written eagerly into the input's cache
            y, cache, p, done = self._token_write(x, memory, memory_time, cache, step, True, token_path, constants)
        elif constants is not None:
            y, cache, p, done = self._token_write(x, memory, memory_time, cache, step, constants=constants)
        else:
            y, cache, p, done = token_write(x, memory, memory_time, cache, step)
        if static:  # write every row, keep it where done
            mem, time = segment_write(memory, memory_time, cache, step, p)
            memory = torch.where(done[:, None, None, None], mem, memory)
            memory_time = torch.where(done[:, None, None], time, memory_time)
            cache = torch.where(done[:, None, None, None, None, None], torch.zeros_like(cache), cache)
        elif bool(done.any()):
            if bool(done.all()):  # every row (batched envs in step with each other): no gather
                mem, time = segment_write(memory, memory_time, cache, step, p)
                if inplace:
                    memory.copy_(mem), memory_time.copy_(time), cache.zero_()
                else:
                    memory, memory_time = mem, time
                    cache = cache.zero_() if own_cache else torch.zeros_like(cache)
            else:  # write the done rows only
                rows = done.nonzero().squeeze(-1)
                mem, time = segment_write(memory[rows], memory_time[rows], cache[rows], step[rows], p[rows])
                index_copy = torch.Tensor.index_copy_ if inplace else torch.Tensor.index_copy
                memory = index_copy(memory, 0, rows, mem)
                memory_time = index_copy(memory_time, 0, rows, time)
                cache[rows] = 0.0  # the next segment starts with an empty cache
        return y, ELMURState(memory, memory_time, cache, step.add_(1) if inplace else step + 1)

    def compiled_step(self, mode: str = "reduce-overhead"):
        """A ``torch.compile``-d :meth:`step`: call it like :meth:`step` (state layout ``"cache"``).
        Compilation happens on the first calls, once per batch size (tens of seconds on a CPU).

        - ``mode="reduce-overhead"`` (GPUs: CUDA graphs): the whole static step (``static=True``)
          as one graph, with no host sync.
        - any other mode (``"default"``: CPUs): every row's work at every step (the token path
          with the write into a new cache, :meth:`_token_write`; with ``inplace=True`` the token
          path, :meth:`_token_path`, and an eager write into the input's cache) and the segment
          write of the rows that complete a segment (:meth:`_segment_write`) compiled
          (:meth:`compiled_paths`); the choice of those rows stays eager.

        Parameters are inputs of the compiled graphs, not constants: weight updates are seen.
        """
        if mode == "reduce-overhead":
            return torch.compile(functools.partial(self.step, static=True), mode=mode)
        compiled = self.compiled_paths(mode)

        def step(x: Tensor, state: ELMURState | None = None, *, inplace: bool = False) -> tuple[Tensor, ELMURState]:
            return self._checked_step(x, state, False, inplace, compiled)

        return step

    def compiled_paths(self, mode: str = "default") -> CompiledPaths:
        """``torch.compile`` of :meth:`_token_path` and :meth:`_token_write` (fixed shapes per
        batch size) and of :meth:`_segment_write` (its batch dynamic after a second row count: how
        many rows complete a segment together varies), to pass as ``compiled`` to :meth:`_step` (what
        :meth:`compiled_step` does for modes other than ``"reduce-overhead"``).

        ``mode="default"`` with the weights on a CPU compiles with inductor's C++ wrapper
        (``cpp_wrapper=True``): the generated code calls its kernels from C++ instead of Python
        (T-Maze config, batch 1, this project's 2-core CPU: token path 0.27 instead of 0.35 ms);
        the first compile takes longer (about 30 s instead of 5 per graph)."""
        if mode == "default" and self.memory_init.device.type == "cpu":
            compile_ = functools.partial(torch.compile, options={"cpp_wrapper": True})
        else:
            compile_ = functools.partial(torch.compile, mode=mode)
        return CompiledPaths(compile_(self._token_path, dynamic=False), compile_(self._token_write, dynamic=False),
                             compile_(self._segment_write))
