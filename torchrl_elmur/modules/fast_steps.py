"""How :class:`~torchrl_elmur.ELMURModule` steps fast: the speed plumbing, apart from the TorchRL contract.

:mod:`torchrl_elmur.modules.elmur_module` holds the contract (keys, specs, primer, the two modes,
resets); this module holds how a step without autograd is run fast, as :class:`FastSteps`, a
mixin of the module, and the context managers that switch it for a whole policy:

- a ``"tokens"`` step at one token's cost, through the derived segment cache
  (:class:`~torchrl_elmur.modules.segment_cache.SegmentCache`, :meth:`FastSteps._derived_step`);
- compiled steps (:meth:`FastSteps.compile_step`, :func:`compile_steps`): the backbone's
  compiled token path and segment write, or a GPU's whole-step graph;
- in-place steps for loops that store no state (:func:`inplace_steps`) and a layout switch for
  evaluation (:func:`set_state_layout`).

Each gives the eager step's outputs (``tests/test_fast_paths.py``, ``tests/test_segment_cache.py``).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from ..core import ELMURState
from .segment_cache import SegmentCache


class FastSteps:
    """The step machinery of :class:`~torchrl_elmur.ELMURModule` (a mixin: it reads the module's
    ``backbone``, ``config`` and ``state_layout``)."""

    def _init_fast_steps(self) -> None:
        self._compile_mode: str | None = None  # set by compile_step
        self._compiled_step = None
        self._inplace_steps = False  # set by inplace_steps()
        self._segment_cache = SegmentCache(self.backbone)  # the derived cache of "tokens" steps (never stored)

    def compile_step(self, mode: str | None = "auto") -> "ELMURModule":
        """Run step mode through a ``torch.compile``-d backbone step (:meth:`ELMURBackbone.compiled_step`).

        ``mode``: ``"auto"`` (the default) is ``"reduce-overhead"`` when the weights are on a GPU
        (the whole sync-free step as one CUDA graph; it computes the segment write for every row
        at every step, the price of having no data-dependent branch) and ``"default"`` otherwise
        (the backbone's :meth:`~ELMURBackbone.compiled_paths`, with inductor's C++ wrapper: on a
        CPU it cuts the per-step op overhead, ``benchmarks/step_cost.py``); any ``torch.compile``
        mode; ``None`` switches back to eager. Used only without autograd (inference, collection); with autograd on, and in
        recurrent mode, the eager paths run. Compilation happens on the first calls, once per
        batch size (tens of seconds on a CPU). Modes other than ``"reduce-overhead"`` work with
        either state layout: a ``"tokens"`` state steps its derived segment cache through the
        compiled token path and segment write; ``"reduce-overhead"`` needs ``state_layout="cache"``.

        Returns:
            ``self``.
        """
        if mode == "auto":
            mode = "reduce-overhead" if self.backbone.memory_init.is_cuda else "default"
        if mode == "reduce-overhead" and self.state_layout != "cache":
            raise ValueError("ELMURModule.compile_step: mode 'reduce-overhead' (the whole static step as one graph) needs "
                             f"state_layout='cache', received {self.state_layout!r}: build the module with "
                             "state_layout='cache' (or set it first), or compile mode 'default'.")
        self._compile_mode = mode
        self._compiled_step = self._compile(mode)
        return self

    def _compile(self, mode: str | None):
        """The compiled callable of ``mode``: the whole static step for ``"reduce-overhead"`` (CUDA
        graphs), else the backbone's :meth:`~ELMURBackbone.compiled_paths`, which its unchecked
        step runs (the module has checked its inputs already); None for eager."""
        if mode is None:
            return None
        return self.backbone.compiled_step(mode) if mode == "reduce-overhead" else self.backbone.compiled_paths(mode)

    def __getstate__(self):  # a compiled function does not pickle (workers compile again), nor does the derived cache
        return {**self.__dict__, "_compiled_step": None, "_segment_cache": None}

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        self._compiled_step = self._compile(self._compile_mode)
        self._segment_cache = SegmentCache(self.backbone)

    def _cache_step(self, value: Tensor, state: ELMURState) -> tuple[Tensor, ELMURState]:
        """A step of a ``"cache"`` state whose value and fields the module has checked: the compiled
        whole step (``"reduce-overhead"``), else the backbone's unchecked step with the compiled paths
        (other modes) and in place inside :func:`inplace_steps`; compiled and in-place steps only
        without autograd."""
        no_grad = not torch.is_grad_enabled()
        compiled = self._compiled_step if no_grad else None  # compiled paths are for inference only
        if compiled is not None and self._compile_mode == "reduce-overhead":  # the whole static step, one graph
            return compiled(value, state)
        return self.backbone._step(value, state, inplace=self._inplace_steps and no_grad, compiled=compiled)

    def _derived_step(self, value: Tensor, incoming: ELMURState, state: ELMURState) -> tuple[Tensor, ELMURState]:
        """A step of a ``"tokens"`` state at the cost of a ``"cache"`` step: the segment's keys,
        values and outputs come from the module's derived cache (:class:`SegmentCache`, rebuilt from
        the tokens where it does not continue ``incoming``), and the next state stores the tokens."""
        K = self.config.segment_len
        p = state.step % K  # [N]: this token's slot in its segment
        compiled = self._compiled_step if self._compile_mode not in (None, "reduce-overhead") else None
        cache, constants, weights, mode = self._segment_cache.continue_state(incoming, state, p,
                                                                             constants=compiled is None)
        y, new = self.backbone._step(value, ELMURState(state.memory, state.memory_time, cache, state.step),
                                     own_cache=True, compiled=compiled, constants=constants)
        tokens = state.tokens
        if K > 1:  # this token joins the segment's inputs, unless it completed the segment
            tokens = tokens.clone()
            tokens[torch.arange(tokens.shape[0], device=tokens.device), p.clamp(max=K - 2)] = value
            tokens.masked_fill_((p == K - 1)[:, None, None], 0.0)
        new = ELMURState(new.memory, new.memory_time, None, new.step, tokens=tokens)
        self._segment_cache.remember(cache, new, weights, constants, mode)
        return y, new


def compile_steps(module: torch.nn.Module, mode: str | None = "auto") -> torch.nn.Module:
    """Every :class:`~torchrl_elmur.ELMURModule` inside ``module`` (a policy) steps through
    :meth:`FastSteps.compile_step` with ``mode``, in the cache layout (for inference and
    evaluation, which store no state: it steps fastest, also in place under :func:`inplace_steps`,
    and a GPU's whole-step graph needs it; to store a compact state, call ``compile_step()`` on
    the modules instead). ``mode=None``: eager steps, in the cache layout. Returns ``module``.

    Examples:
        >>> from torchrl_elmur import ELMURModule
        >>> policy = torch.nn.Sequential(ELMURModule(3, 8, num_heads=2, in_key="x", out_key="y"))
        >>> m = compile_steps(policy)[0]
        >>> m.state_layout, m._compile_mode
        ('cache', 'default')
    """
    for m in module.modules():
        if isinstance(m, FastSteps):
            m.state_layout = "cache"
            m.compile_step(mode)
    return module


@contextmanager
def inplace_steps(module: torch.nn.Module):
    """Within the block, every :class:`~torchrl_elmur.ELMURModule` inside ``module`` that steps with
    ``state_layout="cache"`` and autograd off updates the incoming state's tensors in place and
    writes those same tensors as the next state (:meth:`ELMURBackbone.step` with ``inplace=True``),
    instead of writing a new state every step: it saves a copy of the segment cache
    (``[*B, H, K, L, 3, D/H]``, 3 MB at T-Maze size and batch 100) per step, and the allocation
    that comes with it.

    Only for loops that never read a state again after the step that consumed it (evaluation
    loops that store nothing, as :func:`~torchrl_elmur.training.evaluate.first_episode_returns`):
    a rollout, a collector or a replay buffer keeps every step's state, and those would all be
    the same tensors. Outputs are the same as without it, to the bit.

    Examples:
        >>> from torchrl_elmur import ELMURModule
        >>> m = ELMURModule(3, 8, num_heads=2, in_key="x", out_key="y", state_layout="cache")
        >>> with inplace_steps(m):
        ...     m._inplace_steps
        True
        >>> m._inplace_steps
        False
    """
    with _set_within(module, "_inplace_steps", True):
        yield module


@contextmanager
def set_state_layout(module: torch.nn.Module, layout: str):
    """Within the block, every :class:`~torchrl_elmur.ELMURModule` inside ``module`` (a policy, a loss...) uses
    ``state_layout=layout``; the previous layouts come back after it. Weights are shared, and the
    outputs are the same to float rounding.

    For evaluation loops that store nothing: ``"cache"`` steps do one token's work where
    ``"tokens"`` steps recompute the segment so far. Build the env's primers inside the block
    (the state specs follow the layout).

    Examples:
        >>> from torchrl_elmur import ELMURModule
        >>> m = ELMURModule(3, 8, num_heads=2, in_key="x", out_key="y")
        >>> with set_state_layout(m, "cache"):
        ...     m.state_layout, sorted(m.state_spec()["recurrent_state"].keys())
        ('cache', ['cache', 'memory', 'memory_time', 'step'])
        >>> m.state_layout
        'tokens'
    """
    with _set_within(module, "state_layout", layout):
        yield module


@contextmanager
def _set_within(module: torch.nn.Module, name: str, value):
    """Set attribute ``name`` of every :class:`~torchrl_elmur.ELMURModule` inside ``module`` to ``value`` for the
    block; the previous values come back after it (also when setting one of them raises)."""
    modules = [m for m in module.modules() if isinstance(m, FastSteps)]
    previous = [getattr(m, name) for m in modules]
    try:
        for m in modules:
            setattr(m, name, value)
        yield
    finally:
        for m, old in zip(modules, previous):
            setattr(m, name, old)
