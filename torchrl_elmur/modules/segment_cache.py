"""The derived segment cache of a compact (``"tokens"``) ELMUR state: never stored, rebuilt when stale.

Glossary: N rows (environments), K segment length, L layers, H heads, d = D / H,
p = position in the current segment (``step % K``).

A state of layout ``"tokens"`` keeps the current segment's earlier *inputs* (``(K-1) F`` numbers
per row); stepping it from those alone recomputes the segment so far at every step (up to K tokens
of work). The keys, values and layer outputs of those earlier tokens (the ``"cache"`` layout,
``3 K L D`` numbers per row) are a function of the state and of the weights, so the module can keep
them for itself instead of storing them: :class:`SegmentCache` holds the cache that continues the
last state the module wrote, and a step reuses it for every row whose incoming state is that state
and whose weights have not changed since; other rows with ``p > 0`` are rebuilt from their tokens
(:meth:`~torchrl_elmur.core.ELMURBackbone.cache_from_tokens`), which is what the tokens layout
computes anyway. The outputs are therefore the tokens layout's, to float rounding, whatever
happens between two calls: a state from a replay buffer or another process, rows reset by
``is_init``, another batch size, a weight update.

How a row is known to continue the last written state (cheapest first):

1. the incoming tensors are the ones the module wrote (same storage) and their version counters
   have not moved (no in-place write since): the usual case of a rollout loop;
2. else, row by row, the incoming fields equal the written ones (one comparison per field); if
   the written tensors were edited in place, no row is reused. (Under ``torch.inference_mode``
   tensors have no version counter: the module keeps a copy of the written state to compare.)

Weights: a fingerprint of the token path's weights (the norm of every parameter and buffer it
reads, :func:`token_path_slots`, :func:`token_path_fingerprint`), compared at every step. Version counters are not enough:
TorchRL's multi-process collectors write new weights into shared memory from another process,
and ``tensor.data`` writes bypass them; a norm changes with any real update. (A change that keeps
every tensor's norm to the bit, such as a permutation of a tensor's entries, is not seen.)

Step constants: beside the cache, the module keeps the backbone's
:meth:`~torchrl_elmur.core.ELMURBackbone.step_constants` (each layer's position keys or their folded
projection, kept while the fingerprint stays; what each memory read takes from the slots, its keys
and values or those folded into its projections, per row, recomputed for rows at a
segment's start or not continued). Everything kept is dropped when ``torch.inference_mode`` or
``torch.autocast`` changes between two steps (:func:`grad_mode`): tensors of one mode are neither
writable nor of the right dtype in the other.

The cache never leaves the module: it is dropped on pickling and copying, so collector workers
start with none and build their own.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core import ELMURBackbone, ELMURState
from ..core.backbone import StepConstants


def token_path_slots(backbone: ELMURBackbone) -> list[tuple[dict, str]]:
    """Where the tensors that a step's token path reads live, as ``(module._parameters or
    module._buffers, name)``: the Transformer-XL biases, the initial memory, the time-gap tables,
    and every tensor of the input projection, the final norm and each layer's self-attention,
    memory read, feed-forward net and their norms. The write path (write attention, memory FFN)
    is left out: it reads the cache, it is not stored in it. Looked up through the dicts at every
    step, so that tensors swapped in later (``TensorDict.to_module``) are the ones read."""
    slots = [(backbone._parameters, "u"), (backbone._parameters, "v"), (backbone._buffers, "memory_init")]
    slots += [(layer._parameters, "gap_bias") for layer in backbone.layers]
    modules = [backbone.in_proj, backbone.final_norm]
    for layer in backbone.layers:
        modules += [layer.self_attn, layer.read, layer.ffn, layer.res_self, layer.res_read, layer.res_ff]
    for sub in (sub for module in modules for sub in module.modules()):
        slots += [(sub._parameters, name) for name in sub._parameters]
        slots += [(sub._buffers, name) for name in sub._buffers]
    return [(where, name) for where, name in slots if where[name] is not None]  # bias=False registers None


def token_path_fingerprint(tensors: list[Tensor]) -> Tensor:
    """The norm of every tensor ``[len(tensors)]`` (call it without autograd).

    Examples:
        >>> token_path_fingerprint([torch.ones(4), torch.zeros(2, 2)]).tolist()
        [2.0, 0.0]
    """
    return torch.stack(torch._foreach_norm(tensors))


def _same_tensor(a: Tensor, b: Tensor) -> bool:
    """``a`` views the same data as ``b`` (storage, shape, strides)."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def rows_equal(a: ELMURState, b: ELMURState) -> Tensor:
    """Bool ``[N]``: True where every field of row ``n`` of ``a`` equals that of ``b`` (same layout, N).

    Examples:
        >>> from torchrl_elmur.core import ELMURConfig
        >>> a = ELMURState.zeros(ELMURConfig(d_model=4, num_heads=2, segment_len=3), 3, layout="tokens")
        >>> b = a.map(torch.clone)
        >>> b.tokens[1, 0, 2] = 1.0
        >>> rows_equal(a, b).tolist()
        [True, False, True]
    """
    equal = a.step == b.step
    for name in ("memory_time", "memory", a.layout):
        equal = equal & (getattr(a, name) == getattr(b, name)).flatten(1).all(1)
    return equal


def _tensors(constants: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """The tensors of a step-constants field: itself, or those of its folded form (a NamedTuple)."""
    return (constants,) if isinstance(constants, Tensor) else tuple(constants)


def grad_mode(device: torch.device) -> tuple:
    """What the kept tensors depend on besides the state and the weights: ``torch.inference_mode``
    (tensors made under it cannot be written outside it) and ``torch.autocast`` on ``device`` (the
    keys' dtype and rounding).

    Examples:
        >>> grad_mode(torch.device("cpu"))
        (False, None)
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     grad_mode(torch.device("cpu"))
        (False, torch.bfloat16)
    """
    autocast = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
    return torch.is_inference_mode_enabled(), autocast


@dataclass
class _Entry:
    cache: Tensor  # [N, H, K, L, 3, d], written in place by the steps that continue it
    state: ELMURState  # the tokens-layout state it continues: the module's last written next state
    weights: Tensor  # token_path_fingerprint when it was last used
    versions: tuple[int, ...] | None  # the state fields' version counters (None: inference tensors, kept as copies)
    constants: StepConstants | None  # the backbone's step_constants: for these weights, and for the memory of
    # the rows of `state` not at a segment's start (rows at p = 0 may have just committed: recomputed); None:
    # not computed (compiled steps compute them inside)
    mode: tuple  # grad_mode() when it was written (inference mode, autocast) and the backbone's constant forms
    # (folds_positions, folds_read); another mode starts afresh

    def state_unchanged(self) -> bool:
        """No in-place write into the written state since (it is in the caller's tensordict)."""
        return self.versions is None or self.versions == tuple(t._version for t in self.state.fields().values())


class SegmentCache:
    """The derived cache of one :class:`~torchrl_elmur.ELMURModule` (see the module docstring).

    Args:
        backbone: the module's backbone.

    :meth:`continue_state` returns a cache ``[N, H, K, L, 3, d]`` valid for an incoming state
    (before ``is_init`` resets; rows at ``p = 0``, reset rows among them, need no earlier token)
    and the backbone's :meth:`~torchrl_elmur.core.ELMURBackbone.step_constants` for it (the position
    constants, kept while the weights stay; the memory read's, kept per row inside a segment and
    recomputed for rows at ``p = 0`` or not continued); :meth:`remember` keeps them
    with the next state after the step wrote into the cache.
    """

    def __init__(self, backbone: ELMURBackbone) -> None:
        self.backbone = backbone
        self._slots = token_path_slots(backbone)
        self._row_shape = ELMURState.field_specs(backbone.config, layout="cache")["cache"][0]  # [H, K, L, 3, d]
        self._entry: _Entry | None = None
        self.rebuilt_rows = 0  # rows rebuilt from their tokens so far (tests read it)

    def continue_state(self, incoming: ELMURState, state: ELMURState, p: Tensor,
                       constants: bool = True) -> tuple[Tensor, StepConstants | None, Tensor, tuple]:
        """The cache and (``constants=True``) the step constants for ``state`` (the incoming state
        after ``is_init`` resets; ``p = step % K`` of its rows), the weights' fingerprint and the
        :func:`grad_mode` with the backbone's constant forms, to hand to :meth:`remember`; ``incoming``: the state as read from the
        tensordict (before the resets)."""
        backbone, entry = self.backbone, self._entry
        self._entry = None  # the step writes into the cache: until remember(), it continues no state
        weights = token_path_fingerprint([where[name] for where, name in self._slots])
        n, like = state.memory.shape[0], state.memory
        shape = (n, *self._row_shape)
        mode = (*grad_mode(like.device), backbone.folds_positions, backbone.folds_read)  # constants of other forms: afresh
        fresh = (entry is None or entry.cache.shape != shape or entry.cache.dtype != like.dtype
                 or entry.cache.device != like.device or entry.weights.device != weights.device or entry.mode != mode)
        # which rows the kept cache continues: none (None), all (True: the usual rollout loop, no
        # tensor work) or some (a bool [N] tensor). Host syncs: the weights' comparison and one
        # any/all below.
        weights_kept = not fresh and torch.equal(weights, entry.weights)
        if fresh:
            cache, reuse = like.new_zeros(shape), None
        else:
            cache = entry.cache
            if not weights_kept or not entry.state_unchanged():  # new weights, or the written state edited in place
                reuse = None
            elif entry.versions is not None and all(
                    _same_tensor(a, b) for a, b in zip(incoming.fields().values(), entry.state.fields().values())):
                reuse = True
            else:
                reuse = rows_equal(incoming, entry.state)
        start = p == 0
        if reuse is None:  # every row at p > 0 rebuilt, every row's read keys and values recomputed
            stale, unread = ~start, None
            any_stale, any_unread, all_unread = bool(stale.any()), True, True
        elif reuse is True:  # only rows at a segment's start (maybe just committed) need their read recomputed
            stale, unread = None, start
            count = int(start.sum()) if constants else 0  # (a compiled step needs no constants)
            any_stale, any_unread, all_unread = False, count > 0, count == n
        else:
            stale = ~start & ~reuse  # rows whose earlier tokens are missing from the cache
            unread = start | ~reuse  # rows whose memory's read keys and values are not kept
            any_stale, any_unread, all_unread = torch.stack([stale.any(), unread.any(), unread.all()]).tolist()
        if any_stale:
            rows = stale.nonzero().squeeze(-1)
            cache[rows] = backbone.cache_from_tokens(state.map(lambda t: t[rows]))
            self.rebuilt_rows += rows.numel()
        if not constants:
            return cache, None, weights, mode
        kept = None if fresh else entry.constants
        if kept is None:  # nothing kept: compute both
            return cache, backbone.step_constants(state.memory, state.memory_time), weights, mode
        positions = kept.positions if weights_kept else backbone.position_constants()
        if all_unread:
            read = backbone.read_constants(state.memory, state.memory_time)
        else:
            read = kept.read  # some row was kept
            if any_unread:
                rows = unread.nonzero().squeeze(-1)
                fresh_rows = backbone.read_constants(state.memory[rows], state.memory_time[rows])
                for kept_layer, fresh_layer in zip(read, fresh_rows):  # per layer: kv, or the folded pair
                    for kept_t, fresh_t in zip(_tensors(kept_layer), _tensors(fresh_layer)):
                        kept_t[rows] = fresh_t
        return cache, StepConstants(positions, read), weights, mode

    def remember(self, cache: Tensor, next_state: ELMURState, weights: Tensor, constants: StepConstants | None,
                 mode: tuple) -> None:
        """Keep ``cache`` (already stepped) and the step's ``constants`` as those that continue
        ``next_state`` (the fields as written into the tensordict), made in ``mode`` (:func:`grad_mode`)."""
        fields = next_state.fields().values()
        if any(t.is_inference() for t in fields):  # no version counters: keep a copy to compare with
            next_state, versions = next_state.map(torch.clone), None
        else:
            versions = tuple(t._version for t in fields)
        self._entry = _Entry(cache, next_state, weights, versions, constants, mode)
