"""ELMURModule: the ELMUR backbone as a TorchRL recurrent module, a drop-in for GRUModule/LSTMModule."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key, unravel_key_list
from torch import Tensor
from torchrl.data import Composite, Unbounded
from torchrl.envs.transforms import TensorDictPrimer
from torchrl.modules import recurrent_mode as _global_recurrent_mode

from ..core import ELMURBackbone, ELMURConfig, ELMURState
from ..core.state import check_layout, check_tensor
from .fast_steps import FastSteps
from .trajectories import trajectory_layout

DEFAULT_STATE_KEY = "recurrent_state"  # as GRUModule's


def _autocast_dtype(value: Tensor) -> torch.dtype | None:
    """The dtype ``torch.autocast`` computes in on ``value``'s device, or None outside autocast."""
    device = value.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None


def state_groups(layout: str, n_keys: int) -> list[tuple[str, ...]]:
    """Which state fields each of ``n_keys`` state keys holds: one key holds them all (GRUModule's
    layout); two keys (LSTMModule's ``h, c`` layout) hold the long-term memory and the current segment.

    Examples:
        >>> state_groups("tokens", 1)
        [('memory', 'memory_time', 'tokens', 'step')]
        >>> state_groups("cache", 2)
        [('memory', 'memory_time'), ('cache', 'step')]
    """
    names = ELMURState.field_names(layout)
    if n_keys == 1:
        return [names]
    if n_keys == 2:
        return [names[:2], names[2:]]
    raise ValueError(f"state_groups: ELMUR's state goes under 1 or 2 keys, received {n_keys}.")


# GRUModule / LSTMModule keywords that describe an RNN: the value that is true of ELMUR too (None: none
# is) and what ELMUR does instead. A matching value is accepted (it states what ELMUR does anyway).
RNN_KEYWORDS: dict[str, tuple[object, str]] = {
    "bias": (True, "ELMUR's linear layers always have biases"),
    "batch_first": (True, "ELMURModule is batch-first (time is the tensordict's last batch dim), as GRUModule"),
    "bidirectional": (False, "ELMUR is causal: a step sees only the past"),
    "proj_size": (0, "the output width is hidden_size; put a Linear after the module to project it"),
    "python_based": (None, "ELMUR is pure PyTorch already (no cuDNN kernel to avoid); like every attention "
                           "model here it still does not run under torch.vmap (see ELMURModule's note)"),
    "recurrent_backend": (None, "recurrent mode always runs ELMUR's segment-parallel sequence path"),
    "recurrent_compute_dtype": (None, "ELMUR computes in its parameters' dtype: call .double() / .to(dtype) on the module"),
    "recurrent_recompute": (None, "ELMUR has no recompute option; pass segment_len=... to bound a call's memory"),
    "recurrent_matmul_precision": (None, "use torch.backends.cuda.matmul / torch.set_float32_matmul_precision"),
    "gru": (None, "ELMURModule builds its own backbone: pass config=ELMURConfig(...) or the size arguments"),
    "lstm": (None, "ELMURModule builds its own backbone: pass config=ELMURConfig(...) or the size arguments"),
}


def _check_rnn_keywords(fields: dict) -> None:
    for name in [k for k in fields if k in RNN_KEYWORDS]:
        allowed, instead = RNN_KEYWORDS[name]
        value = fields.pop(name)
        if allowed is None or value != allowed:
            accepted = "" if allowed is None else f" (only {name}={allowed!r} is accepted)"
            raise ValueError(f"ELMURModule: {name}={value!r} is a GRUModule/LSTMModule option with no ELMUR "
                             f"counterpart{accepted}: {instead}. Remove it from the call.")


class ELMURModule(FastSteps, TensorDictModuleBase):
    """ELMUR (External Layer Memory with Update/Rewrite) as a TorchRL recurrent module.

    Reads a value (one token per environment step), writes the ELMUR output, and keeps the layer
    memory, its LRU timestamps, the current segment and the episode step under one recurrent
    state key of the TensorDict, as :class:`~torchrl.modules.GRUModule` keeps its hidden state.
    Collectors, replay buffers and losses drive it unchanged.

    Recurrent state: one key (default ``"recurrent_state"``, as GRUModule) holding a TensorDict
    with the ELMUR state of each environment (``[*B]`` batch dims, then):

    =================  ===================================  ============================================
    field              shape, dtype                         meaning
    =================  ===================================  ============================================
    ``memory``         ``[*B, L, M, D]`` float              layer memory (zeros in empty slots)
    ``memory_time``    ``[*B, L, M]`` int64                 LRU timestamps: 0 = empty, else 1 + the
                                                            episode step of the last step of the
                                                            segment that wrote the slot
    ``tokens``         ``[*B, K-1, F]`` float               the current segment's earlier inputs
                                                            (``state_layout="tokens"``, the default)
    ``cache``          ``[*B, H, K, L, 3, D/H]`` float      or their keys, values and layer outputs
                                                            (``state_layout="cache"``)
    ``step``           ``[*B, 1]`` int64                    episode step of the next token
    =================  ===================================  ============================================

    All zeros is a fresh episode (so is a missing state key, or a plain tensor of zeros in its
    place, as code written for GRUModule initialises it). ``in_keys = [value, state key, "is_init"]`` and
    ``out_keys = [output, ("next", state key)]``, as GRUModule. Two state keys (LSTMModule's
    ``h, c`` layout: ``in_keys=[value, k1, k2]``) split the state into the memory
    (``memory, memory_time``) and the current segment (``tokens`` or ``cache``, ``step``).

    ``state_layout`` says what the stored state holds of the current segment, with the same
    outputs either way (to float rounding): ``"tokens"`` (default) its inputs, ``"cache"`` their
    keys, values and layer outputs, for 4.9x the bytes at T-Maze size (D = F = 128, L = 2, K = 10,
    M = 2: 6.7 KB against 32.8 KB per state; a collected or stored transition holds the state
    twice, at the root and under ``"next"``). Without autograd (collectors, evaluation) a
    ``"tokens"`` step costs one token's work as a ``"cache"`` step does: the module keeps the
    segment's keys, values and outputs for itself, a derived cache that is never stored
    (:class:`~torchrl_elmur.modules.segment_cache.SegmentCache`). It is reused for the rows whose
    incoming state is the one the module wrote last, with the same token-path weights, and
    rebuilt from the stored tokens for any other row (a state from a replay buffer or another
    process, after a weight update, after pickling): outputs never depend on what happened
    between two calls. With autograd on, a step recomputes the segment so far from its tokens in
    the graph (<= K tokens of work), so that gradients reach the earlier tokens. ``"cache"``
    remains for in-place evaluation (:func:`inplace_steps`, :func:`set_state_layout`) and for the
    GPU's whole-step graph (:meth:`compile_step` with ``"reduce-overhead"``); on a CPU
    :meth:`compile_step` compiles either layout's step.

    Args:
        input_size: width F of the value (projected to ``hidden_size`` if it differs).
        hidden_size: model width D (the output width).
        num_layers: L (default: :class:`ELMURConfig`'s).

    Keyword Args:
        num_heads, memory_slots, segment_len, lru_blend: H, M, K, lambda (defaults: ELMURConfig's).
            Everything else is ELMURConfig's default too: LayerNorm, PyTorch init, MLP FFN, no
            dropout, gradients through memory across segments (``detach_memory=False``); chosen
            on the project's three benchmark families (:class:`ELMURConfig` says how).
        config: an :class:`ELMURConfig`, exclusive with the size arguments above (e.g. a
            published preset, ``ELMURConfig.tmaze_released(input_size=64)``).
        in_key / in_keys: the value key (the state key is then ``state_key``), or the full list
            ``[value, state key]`` or ``[value, k1, k2]`` (``"is_init"`` is appended if absent).
        out_key / out_keys: the output key (the next state then goes to ``("next", state key)``),
            or ``[output, ("next", state key), ...]``.
        state_key: the state key used with ``in_key`` (default ``"recurrent_state"``); give an
            actor and a critic in one tensordict different keys.
        state_layout: ``"tokens"`` (default: the compact state, stepped through the derived cache)
            or ``"cache"``, see above.
        device: where the weights are created.
        default_recurrent_mode: recurrent mode when no :func:`torchrl.modules.set_recurrent_mode`
            context is active (default ``False``: step mode).
        **config_fields: any other :class:`ELMURConfig` field (``dropout``, ``write_rule``, ...).
            ``dropout`` is ELMUR's (residual branches and feed-forward nets; unlike GRU's it
            acts with one layer too). GRUModule/LSTMModule options that have no ELMUR
            counterpart (``recurrent_backend``, ``python_based``, ``bidirectional=True``, ...)
            raise an error saying what ELMUR does instead.

    Widths: any ``hidden_size >= 1``. Without ``num_heads`` (and without ``config``), H is
    ELMURConfig's default where it divides ``hidden_size`` and their gcd otherwise (1 for odd
    widths).

    Modes (read from :func:`torchrl.modules.recurrent_mode` on every call):

    - step mode: input ``[*B]``; where ``is_init`` is True the incoming state is reset to zeros.
      Cost per call is independent of the episode step.
    - recurrent mode: time is the last batch dim (``[T]`` is ``[1, T]``, ``[*B, T]`` is flattened).
      Each row restarts from the state *stored* at ``t = 0`` and at every ``is_init=True`` position
      (as GRUModule), so a slice that starts mid-episode continues exactly from its stored state.
      Trajectories split by ``is_init`` never see each other. ``("next", state)`` holds the final
      state at the last step of each trajectory and zeros elsewhere.

    .. note:: The module cannot run under ``torch.vmap``: over data it hits data-dependent checks,
        over parameters (IQL's Q-net copies) CPU attention has no vmap gradient for the learned
        time-gap bias. Pass ``deactivate_vmap=True`` to ``IQLLoss`` and ``GAE``; for
        ``DiscreteIQLLoss`` set ``loss.deactivate_vmap = True`` then call ``loss._make_vmap()``
        after construction. ``BCLoss`` and ``ClipPPOLoss`` need nothing.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.modules import set_recurrent_mode
        >>> module = ELMURModule(input_size=3, hidden_size=16, num_heads=2, segment_len=4, in_key="obs", out_key="h")
        >>> module.in_keys, module.out_keys
        (['obs', 'recurrent_state', 'is_init'], ['h', ('next', 'recurrent_state')])
        >>> td = TensorDict({"obs": torch.randn(2, 3), "is_init": torch.ones(2, 1, dtype=torch.bool)}, [2])
        >>> td = module(td)
        >>> state = td["next", "recurrent_state"]
        >>> td["h"].shape, state["memory"].shape, state["tokens"].shape, state["step"].squeeze(-1).tolist()
        (torch.Size([2, 16]), torch.Size([2, 2, 2, 16]), torch.Size([2, 3, 3]), [1, 1])
        >>> seq = TensorDict({"obs": torch.randn(2, 9, 3), "is_init": torch.zeros(2, 9, 1, dtype=torch.bool)}, [2, 9])
        >>> with set_recurrent_mode(True):
        ...     seq = module(seq)
        >>> seq["h"].shape
        torch.Size([2, 9, 16])
    """

    def __init__(
        self,
        input_size: int | None = None,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        *,
        num_heads: int | None = None,
        memory_slots: int | None = None,
        segment_len: int | None = None,
        lru_blend: float | None = None,
        config: ELMURConfig | None = None,
        in_key: NestedKey | None = None,
        in_keys: Sequence[NestedKey] | None = None,
        out_key: NestedKey | None = None,
        out_keys: Sequence[NestedKey] | None = None,
        state_key: NestedKey = DEFAULT_STATE_KEY,
        state_layout: str = "tokens",
        device: torch.device | str | None = None,
        default_recurrent_mode: bool | None = None,
        **config_fields,
    ) -> None:
        super().__init__()
        _check_rnn_keywords(config_fields)
        self._spec_cache = None  # see _spec
        self.config = self._make_config(
            config, dict(input_size=input_size, d_model=hidden_size, num_layers=num_layers, num_heads=num_heads,
                         memory_slots=memory_slots, segment_len=segment_len, lru_blend=lru_blend), config_fields
        )
        self.state_layout = state_layout
        self.in_keys, self.out_keys = self._make_keys(in_key, in_keys, out_key, out_keys, state_key)
        self.backbone = ELMURBackbone(self.config)
        if device is not None:
            self.backbone.to(device)
        self._recurrent_mode = default_recurrent_mode
        self._init_fast_steps()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _make_config(config: ELMURConfig | None, sizes: dict, fields: dict) -> ELMURConfig:
        given = {k: v for k, v in sizes.items() if v is not None}
        if config is not None:
            if not isinstance(config, ELMURConfig):
                raise TypeError(f"ELMURModule: config must be an ELMURConfig, received {type(config).__name__}.")
            if given or fields:
                names = ["hidden_size" if k == "d_model" else k for k in {**given, **fields}]
                raise ValueError(f"ELMURModule: pass either config= or size arguments, not both; received config and {names}.")
            return config
        if "d_model" not in given:
            raise ValueError("ELMURModule: hidden_size is required (or pass config=ELMURConfig(...)).")
        if "num_heads" not in given and isinstance(given["d_model"], int) and given["d_model"] >= 1:
            given["num_heads"] = math.gcd(ELMURConfig.num_heads, given["d_model"])  # any width works, as GRUModule's
        return ELMURConfig(**{**given, **fields})

    @staticmethod
    def _key_list(name: str, keys) -> list:
        if isinstance(keys, str) or not isinstance(keys, Sequence):  # as GRUModule: a string is not a key list
            hint = f" (did you mean {name[:-1]}={keys!r}?)" if isinstance(keys, str) else ""
            raise TypeError(f"ELMURModule: {name} must be a list of keys, received {type(keys).__name__} {keys!r}{hint}.")
        return unravel_key_list(list(keys))

    @staticmethod
    def _make_keys(in_key, in_keys, out_key, out_keys, state_key) -> tuple[list, list]:
        if (in_key is None) == (in_keys is None):
            raise ValueError(f"ELMURModule: give exactly one of in_key or in_keys; received in_key={in_key!r}, in_keys={in_keys!r}.")
        if (out_key is None) == (out_keys is None):
            raise ValueError(f"ELMURModule: give exactly one of out_key or out_keys; received out_key={out_key!r}, out_keys={out_keys!r}.")
        in_keys = [in_key, state_key] if in_keys is None else ELMURModule._key_list("in_keys", in_keys)
        in_keys = unravel_key_list(in_keys)
        if in_keys and in_keys[-1] == "is_init":
            in_keys = in_keys[:-1]
        if len(in_keys) not in (2, 3) or "is_init" in in_keys:
            raise ValueError(
                "ELMURModule: in_keys must be [value, state] or [value, state_1, state_2] (+ 'is_init' last), as "
                f"GRUModule / LSTMModule; received {in_keys}."
            )
        if out_keys is None:
            out_keys = [out_key, *(("next", *(k if isinstance(k, tuple) else (k,))) for k in in_keys[1:])]
        out_keys = ELMURModule._key_list("out_keys", out_keys)
        if len(out_keys) != len(in_keys):
            raise ValueError(
                f"ELMURModule: out_keys must be [output, *('next', state key)] with one next key per state key of "
                f"in_keys={in_keys}; received {out_keys}."
            )
        return [*in_keys, "is_init"], out_keys

    # ------------------------------------------------------------------ keys and specs
    @property
    def value_key(self) -> NestedKey:
        return self.in_keys[0]

    @property
    def state_keys(self) -> list[NestedKey]:
        return self.in_keys[1:-1]

    @property
    def next_state_keys(self) -> list[NestedKey]:
        return self.out_keys[1:]

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.dtype

    def state_feature_shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Per-environment shape and dtype of each state field (no batch dims), in field order; the
        step counter gets a trailing dim of 1 in the TensorDict (``[*B, 1]``, like ``is_init``)."""
        specs = ELMURState.field_specs(self.config, self.dtype, self.state_layout)
        return {name: (shape or (1,), dtype) for name, (shape, dtype) in specs.items()}

    def _groups(self) -> list[tuple[NestedKey, NestedKey, tuple[str, ...]]]:
        """``(state key, next state key, fields)`` per state key."""
        groups = state_groups(self.state_layout, len(self.state_keys))
        return list(zip(self.state_keys, self.next_state_keys, groups))

    def _spec(self) -> tuple[dict, list]:
        """``(state_feature_shapes(), _groups())``, derived once per layout and dtype: every call
        in step mode needs both, and they only change with ``state_layout`` or ``.to(dtype)``."""
        key = (self.state_layout, self.dtype)
        if self._spec_cache is None or self._spec_cache[0] != key:
            self._spec_cache = (key, (self.state_feature_shapes(), self._groups()))
        return self._spec_cache[1]

    def state_spec(self) -> Composite:
        """The state keys' specs without batch dims: one :class:`~torchrl.data.Composite` per state key."""
        feats, groups = self._spec()
        return Composite({
            key: Composite({name: Unbounded(shape=feats[name][0], dtype=feats[name][1]) for name in names}, shape=())
            for key, _, names in groups
        })

    def make_tensordict_primer(self) -> TensorDictPrimer:
        """A :class:`~torchrl.envs.transforms.TensorDictPrimer` that declares the state keys to the env
        (all zeros at reset), so that collectors carry the state from step to step."""
        for key, next_key in zip(self.state_keys, self.next_state_keys):
            if unravel_key(next_key) != unravel_key(("next", key)):
                raise RuntimeError(
                    f"ELMURModule.make_tensordict_primer: out state key {next_key!r} must be ('next', {key!r}); "
                    f"received in_keys={self.in_keys}, out_keys={self.out_keys}."
                )
        return TensorDictPrimer(self.state_spec(), expand_specs=True)

    @property
    def state_layout(self) -> str:
        """``"tokens"`` or ``"cache"`` (see the class docstring); :func:`set_state_layout` changes it for a while."""
        return self._state_layout

    @state_layout.setter
    def state_layout(self, layout: str) -> None:
        check_layout(layout, "ELMURModule", "state_layout")
        if layout != "cache" and getattr(self, "_compile_mode", None) == "reduce-overhead":
            raise ValueError(f"ELMURModule: state_layout={layout!r} with a compiled step of mode 'reduce-overhead': that "
                             "step needs 'cache'; call compile_step(None) first, or compile another mode.")
        self._state_layout = layout

    # ------------------------------------------------------------------ recurrent mode
    @property
    def recurrent_mode(self) -> bool:
        mode = _global_recurrent_mode()
        return bool(self._recurrent_mode) if mode is None else bool(mode)

    @recurrent_mode.setter
    def recurrent_mode(self, value) -> None:
        raise RuntimeError(
            "ELMURModule.recurrent_mode cannot be changed in-place. Use the torchrl.modules.set_recurrent_mode "
            "context manager or the default_recurrent_mode constructor argument."
        )

    def set_recurrent_mode(self, mode: bool = True):
        raise RuntimeError(
            "ELMURModule.set_recurrent_mode() does not exist (as in TorchRL's RNN modules since v0.8): use the "
            "torchrl.modules.set_recurrent_mode context manager or the default_recurrent_mode constructor argument."
        )

    # ------------------------------------------------------------------ reading inputs
    def _value(self, td: TensorDictBase) -> Tensor:
        key = self.value_key
        value = td.get(key, None)
        if value is None:
            raise KeyError(f"ELMURModule: input key {key!r} not found in the tensordict (keys: {list(td.keys(True, True))}).")
        expected, dtype = (*td.batch_size, self.config.token_size), self.dtype
        if value.dtype != dtype:
            if not (value.is_floating_point() and _autocast_dtype(value) == value.dtype):
                raise ValueError(f"ELMURModule: {key!r} must have dtype {dtype}, received {value.dtype}.")
            value = value.to(dtype)  # an encoder's output under torch.autocast: the state keeps the model's dtype
        if tuple(value.shape) != expected:
            raise ValueError(
                f"ELMURModule: {key!r} must have shape [*batch, F] = {list(expected)}, received {list(value.shape)}."
            )
        if bool(torch.isnan(value).any()):
            raise ValueError(f"ELMURModule: {key!r} contains NaN values.")
        return value

    @staticmethod
    def _is_init(td: TensorDictBase) -> Tensor:
        is_init = td.get("is_init", None)
        if is_init is None:
            raise KeyError(
                "ELMURModule: 'is_init' not found in the tensordict: add torchrl.envs.InitTracker() to the env "
                "(GymEnv(..., policy=...) and Collector(..., auto_register_policy_transforms=True) do it)."
            )
        if is_init.shape == (*td.batch_size, 1):
            is_init = is_init.squeeze(-1)
        if is_init.shape != td.batch_size:
            raise ValueError(f"ELMURModule: 'is_init' must have shape {[*td.batch_size, 1]}, received {list(is_init.shape)}.")
        return is_init.bool()

    def _state_tensors(self, td: TensorDictBase) -> dict[str, Tensor | None]:
        """The stored state fields ``[*batch, *feature]`` (None where a state key is missing: fresh)."""
        feats, groups = self._spec()
        tensors: dict[str, Tensor | None] = {}
        for key, _, names in groups:
            sub = td.get(key, None)
            if sub is None:
                tensors.update(dict.fromkeys(names))
                continue
            if isinstance(sub, Tensor) and not bool(sub.any()):  # an RNN-style zero hidden state: a fresh episode
                tensors.update(dict.fromkeys(names))
                continue
            if not isinstance(sub, TensorDictBase):
                raise ValueError(
                    f"ELMURModule: state {key!r} must be a TensorDict with fields {list(names)} (ELMUR's state, "
                    f"see ELMURModule's docstring), received {type(sub).__name__}"
                    f"{' of shape ' + str(list(sub.shape)) if isinstance(sub, Tensor) else ''}. Declare it with "
                    "module.make_tensordict_primer(), or leave the key out for a fresh state."
                )
            for name in names:
                value = sub.get(name, None)
                if value is None:
                    raise KeyError(f"ELMURModule: state {key!r} has no field {name!r} (fields: {list(sub.keys())}; "
                                   f"expected {list(names)} for state_layout={self.state_layout!r}).")
                shape, dtype = feats[name]
                check_tensor(f"ELMURModule: state {key!r} field {name!r}", value, (*td.batch_size, *shape), dtype,
                             hint=" (a state from another config or state_layout?)")
                tensors[name] = value
        return tensors

    def _to_state(self, tensors: dict[str, Tensor | None], batch: int, device) -> ELMURState:
        """An :class:`ELMURState` of ``batch`` rows from stored fields (zeros where missing)."""
        if any(t is None for t in tensors.values()):
            fresh = ELMURState.zeros(self.config, batch, dtype=self.dtype, device=device, layout=self.state_layout)
            tensors = {name: getattr(fresh, name) if t is None else t for name, t in tensors.items()}
        feats, _ = self._spec()  # per-row shapes; the step counter is [1] in the tensordict, () in the state
        return ELMURState(**{name: t.reshape(batch, *feats[name][0]) if name != "step" else t.reshape(batch)
                             for name, t in tensors.items()})

    def _write(self, td: TensorDictBase, output: Tensor, fields: dict[str, Tensor]) -> TensorDictBase:
        """The output and, per next state key, one TensorDict of its ``fields`` ``[*batch, *feature]``
        (one write per key instead of one per field)."""
        td.set(self.out_keys[0], output)
        for _, next_key, names in self._spec()[1]:
            td.set(next_key, TensorDict({name: fields[name] for name in names}, batch_size=td.batch_size))
        return td

    # ------------------------------------------------------------------ forward
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.recurrent_mode:
            return self._forward_recurrent(tensordict)
        return self._forward_step(tensordict)

    def _forward_step(self, td: TensorDictBase) -> TensorDictBase:
        shape = td.batch_size
        flat = td if td.ndim == 1 else td.reshape(-1)  # [N]
        value, is_init = self._value(flat), self._is_init(flat)
        incoming = self._to_state(self._state_tensors(flat), flat.shape[0], value.device)  # fields checked there
        state = incoming
        if bool(is_init.any()):  # reset those rows to the fresh (all zeros) state
            state = state.map(lambda t: torch.where(is_init.view(-1, *([1] * (t.ndim - 1))), torch.zeros_like(t), t))
        if self.state_layout == "tokens" and not torch.is_grad_enabled():  # one token's work: the derived cache
            y, new = self._derived_step(value, incoming, state)
        elif self.state_layout == "tokens":  # with autograd: the segment so far recomputed from its tokens, in the graph
            y, new = self.backbone(value.unsqueeze(1), state)
            y = y[:, 0]
        else:  # eager, compiled or in place: see fast_steps
            y, new = self._cache_step(value, state)
        feats, _ = self._spec()
        return self._write(td, y.reshape(*shape, -1),
                           {name: t.reshape(*shape, *feats[name][0]) for name, t in new.fields().items()})

    def _forward_recurrent(self, td: TensorDictBase) -> TensorDictBase:
        if td.ndim == 0:
            raise ValueError("ELMURModule in recurrent mode needs at least one batch dim (time); received a 0-d tensordict.")
        shaped = td.unsqueeze(0) if td.ndim == 1 else td.reshape(-1, td.shape[-1])  # [N, T]
        n, t = shaped.shape
        value, is_init = self._value(shaped), self._is_init(shaped)
        layout = trajectory_layout(is_init)
        stored = {name: None if s is None else s.reshape(n * t, *s.shape[2:])[layout.starts]
                  for name, s in self._state_tensors(shaped).items()}
        start_state = self._to_state(stored, len(layout.starts), value.device)
        x = value.reshape(n * t, -1)[layout.gather]  # [S, T_max, F]
        y, final = self.backbone(x, start_state, layout.lengths)  # [S, T_max, D]
        y = y[layout.valid]  # [N * T, D]: trajectories are contiguous and in row-major order
        feats, _ = self._spec()
        next_fields = {}
        for name, final_value in final.fields().items():
            final_value = final_value.reshape(len(layout.starts), *feats[name][0])
            at_ends = final_value.new_zeros(n * t, *feats[name][0]).index_copy(0, layout.ends, final_value)
            next_fields[name] = at_ends.reshape(*td.batch_size, *feats[name][0])
        return self._write(td, y.reshape(*td.batch_size, -1), next_fields)
