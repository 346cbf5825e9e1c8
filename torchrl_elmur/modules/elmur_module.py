"""ELMURModule: the ELMUR backbone as a TorchRL recurrent module, a drop-in for GRUModule/LSTMModule."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey, unravel_key, unravel_key_list
from torch import Tensor
from torchrl.data import Unbounded
from torchrl.envs.transforms import TensorDictPrimer
from torchrl.modules import recurrent_mode as _global_recurrent_mode

from ..core import ELMURBackbone, ELMURConfig, ELMURState
from ..core.state import check_tensor
from .trajectories import trajectory_layout

STATE_FIELDS = tuple(f.name for f in dataclasses.fields(ELMURState))  # memory, memory_time, cache, step: key order


class ELMURModule(TensorDictModuleBase):
    """ELMUR (External Layer Memory with Update/Rewrite) as a TorchRL recurrent module.

    Reads a value (one token per environment step), writes the ELMUR output, and keeps the layer
    memory, its LRU timestamps, the current segment's cache and the episode step as recurrent
    state keys in the TensorDict, exactly as :class:`~torchrl.modules.GRUModule` keeps its hidden
    state. Collectors, replay buffers and losses drive it unchanged.

    Recurrent state keys (``<p>`` = ``state_prefix``, default ``"elmur"``; per environment):

    ========================  ================================  =========================================
    key                       shape, dtype                       meaning
    ========================  ================================  =========================================
    ``<p>_memory``            ``[*B, L, M, D]`` float            layer memory (zeros in empty slots)
    ``<p>_memory_time``       ``[*B, L, M]`` int64               LRU timestamps: 0 = empty, else 1 + the
                                                                 episode step of the last step of the
                                                                 segment that wrote the slot
    ``<p>_cache``             ``[*B, H, K, L, 3, D/H]`` float    keys, values, layer outputs of the current
                                                                 segment's earlier tokens
    ``<p>_step``              ``[*B, 1]`` int64                  episode step of the next token
    ========================  ================================  =========================================

    All zeros is a fresh episode. ``in_keys = [value, *state keys, "is_init"]`` and
    ``out_keys = [output, *("next", state key)]``.

    Args:
        input_size: width F of the value (projected to ``hidden_size`` if it differs).
        hidden_size: model width D (the output width).
        num_layers: L (default: :class:`ELMURConfig`'s).

    Keyword Args:
        num_heads, memory_slots, segment_len, lru_blend: H, M, K, lambda (defaults: ELMURConfig's).
        config: an :class:`ELMURConfig`, exclusive with the size arguments above.
        in_key / in_keys: the value key (state keys then come from ``state_prefix``), or the full
            list ``[value, memory, memory_time, cache, step]`` (``"is_init"`` is appended).
        out_key / out_keys: the output key, or ``[output, ("next", memory), ..., ("next", step)]``.
        state_prefix: prefix of the default state keys; give an actor and a critic in one
            tensordict different prefixes.
        device: where the weights are created.
        default_recurrent_mode: recurrent mode when no :func:`torchrl.modules.set_recurrent_mode`
            context is active (default ``False``: step mode).
        **config_fields: any other :class:`ELMURConfig` field (``dropout``, ``write_rule``, ...).

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
        >>> module.in_keys
        ['obs', 'elmur_memory', 'elmur_memory_time', 'elmur_cache', 'elmur_step', 'is_init']
        >>> td = TensorDict({"obs": torch.randn(2, 3), "is_init": torch.ones(2, 1, dtype=torch.bool)}, [2])
        >>> td = module(td)
        >>> td["h"].shape, td["next", "elmur_memory"].shape, td["next", "elmur_step"].squeeze(-1).tolist()
        (torch.Size([2, 16]), torch.Size([2, 2, 2, 16]), [1, 1])
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
        state_prefix: str = "elmur",
        device: torch.device | str | None = None,
        default_recurrent_mode: bool | None = None,
        **config_fields,
    ) -> None:
        super().__init__()
        self.config = self._make_config(
            config, dict(input_size=input_size, d_model=hidden_size, num_layers=num_layers, num_heads=num_heads,
                         memory_slots=memory_slots, segment_len=segment_len, lru_blend=lru_blend), config_fields
        )
        self.in_keys, self.out_keys = self._make_keys(in_key, in_keys, out_key, out_keys, state_prefix)
        self.backbone = ELMURBackbone(self.config)
        if device is not None:
            self.backbone.to(device)
        self._recurrent_mode = default_recurrent_mode
        self._compile_mode: str | None = None  # set by compile_step
        self._compiled_step = None

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
        return ELMURConfig(**{**given, **fields})

    @staticmethod
    def _make_keys(in_key, in_keys, out_key, out_keys, prefix: str) -> tuple[list, list]:
        if (in_key is None) == (in_keys is None):
            raise ValueError(f"ELMURModule: give exactly one of in_key or in_keys; received in_key={in_key!r}, in_keys={in_keys!r}.")
        if (out_key is None) == (out_keys is None):
            raise ValueError(f"ELMURModule: give exactly one of out_key or out_keys; received out_key={out_key!r}, out_keys={out_keys!r}.")
        n = 1 + len(STATE_FIELDS)
        if in_keys is None:
            in_keys = [in_key, *(f"{prefix}_{name}" for name in STATE_FIELDS)]
        in_keys = unravel_key_list(list(in_keys))
        if in_keys[-1] == "is_init":
            in_keys = in_keys[:-1]
        if len(in_keys) != n:
            raise ValueError(
                f"ELMURModule: in_keys must be [value, memory, memory_time, cache, step] (+ 'is_init'); received {in_keys}."
            )
        if out_keys is None:
            out_keys = [out_key, *(("next", *(k if isinstance(k, tuple) else (k,))) for k in in_keys[1:])]
        out_keys = unravel_key_list(list(out_keys))
        if len(out_keys) != n:
            raise ValueError(
                f"ELMURModule: out_keys must be [output, ('next', memory), ..., ('next', step)]; received {out_keys}."
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
        """Per-environment shape and dtype of each state field (no batch dims); the step counter
        gets a trailing dim of 1 in the TensorDict (``[*B, 1]``, like ``is_init``)."""
        specs = ELMURState.field_specs(self.config, self.dtype)
        return {name: (shape or (1,), dtype) for name, (shape, dtype) in specs.items()}

    def make_tensordict_primer(self) -> TensorDictPrimer:
        """A :class:`~torchrl.envs.transforms.TensorDictPrimer` that declares the state keys to the env
        (all zeros at reset), so that collectors carry the state from step to step."""
        for key, next_key in zip(self.state_keys, self.next_state_keys):
            if unravel_key(next_key) != unravel_key(("next", key)):
                raise RuntimeError(
                    f"ELMURModule.make_tensordict_primer: out state key {next_key!r} must be ('next', {key!r}); "
                    f"received in_keys={self.in_keys}, out_keys={self.out_keys}."
                )
        specs = {
            key: Unbounded(shape=shape, dtype=dtype)
            for key, (shape, dtype) in zip(self.state_keys, self.state_feature_shapes().values())
        }
        return TensorDictPrimer(specs, expand_specs=True)

    # ------------------------------------------------------------------ compiled step mode
    def compile_step(self, mode: str | None = "reduce-overhead") -> "ELMURModule":
        """Run step mode through ``torch.compile`` of the backbone's sync-free step
        (:meth:`ELMURBackbone.compiled_step`; with the default mode, CUDA graphs on a GPU).

        Used only without autograd (inference, collection); with autograd on, and in recurrent
        mode, the eager paths run. The compiled step computes the segment write for every row at
        every step (the price of having no data-dependent branch): worth it on a GPU, where a
        step is bound by kernel launches; on a CPU it is slower. ``mode=None`` switches back to
        eager. Compilation happens on the first calls; each batch size compiles once.

        Returns:
            ``self``.
        """
        self._compile_mode = mode
        self._compiled_step = None if mode is None else self.backbone.compiled_step(mode)
        return self

    def __getstate__(self):  # a compiled function does not pickle: workers compile again
        return {**self.__dict__, "_compiled_step": None}

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if self._compile_mode is not None:
            self._compiled_step = self.backbone.compiled_step(self._compile_mode)

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
        expected = (*td.batch_size, self.config.token_size)
        if not value.is_floating_point() or value.dtype != self.dtype:
            raise ValueError(f"ELMURModule: {key!r} must have dtype {self.dtype}, received {value.dtype}.")
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

    def _state_tensors(self, td: TensorDictBase) -> list[Tensor | None]:
        """The stored state tensors ``[*batch, *feature]`` (None where a key is missing: fresh)."""
        tensors = []
        for key, (shape, dtype) in zip(self.state_keys, self.state_feature_shapes().values()):
            value = td.get(key, None)
            if value is not None:
                check_tensor(f"ELMURModule: state {key!r}", value, (*td.batch_size, *shape), dtype,
                             hint=" (a state from another config?)")
            tensors.append(value)
        return tensors

    def _to_state(self, tensors: list[Tensor | None], batch: int, device) -> ELMURState:
        """An :class:`ELMURState` of ``batch`` rows from stored tensors (zeros where missing)."""
        if any(t is None for t in tensors):
            fresh = ELMURState.zeros(self.config, batch, dtype=self.dtype, device=device)
            tensors = [getattr(fresh, name) if t is None else t for name, t in zip(STATE_FIELDS, tensors)]
        shapes = ELMURState.shapes(self.config, batch)
        return ELMURState(**{name: t.reshape(shapes[name]) for name, t in zip(STATE_FIELDS, tensors)})

    def _write(self, td: TensorDictBase, output: Tensor, state_fields: list[Tensor]) -> TensorDictBase:
        td.set(self.out_keys[0], output)
        for key, value in zip(self.next_state_keys, state_fields):
            td.set(key, value)
        return td

    # ------------------------------------------------------------------ forward
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.recurrent_mode:
            return self._forward_recurrent(tensordict)
        return self._forward_step(tensordict)

    def _forward_step(self, td: TensorDictBase) -> TensorDictBase:
        shape = td.batch_size
        flat = td.reshape(-1)  # [N]
        value, is_init = self._value(flat), self._is_init(flat)
        state = self._to_state(self._state_tensors(flat), flat.shape[0], value.device)
        if bool(is_init.any()):  # reset those rows to the fresh (all zeros) state
            state = state.map(lambda t: torch.where(is_init.view(-1, *([1] * (t.ndim - 1))), torch.zeros_like(t), t))
        compiled = self._compiled_step is not None and not torch.is_grad_enabled()
        y, new = (self._compiled_step if compiled else self.backbone.step)(value, state)
        feats = self.state_feature_shapes()
        return self._write(
            td, y.reshape(*shape, -1),
            [getattr(new, name).reshape(*shape, *feats[name][0]) for name in STATE_FIELDS],
        )

    def _forward_recurrent(self, td: TensorDictBase) -> TensorDictBase:
        if td.ndim == 0:
            raise ValueError("ELMURModule in recurrent mode needs at least one batch dim (time); received a 0-d tensordict.")
        shaped = td.unsqueeze(0) if td.ndim == 1 else td.reshape(-1, td.shape[-1])  # [N, T]
        n, t = shaped.shape
        value, is_init = self._value(shaped), self._is_init(shaped)
        layout = trajectory_layout(is_init)
        stored = [None if s is None else s.reshape(n * t, *s.shape[2:])[layout.starts] for s in self._state_tensors(shaped)]
        start_state = self._to_state(stored, len(layout.starts), value.device)
        x = value.reshape(n * t, -1)[layout.gather]  # [S, T_max, F]
        y, final = self.backbone(x, start_state, layout.lengths)  # [S, T_max, D]
        y = y[layout.valid]  # [N * T, D]: trajectories are contiguous and in row-major order
        feats = self.state_feature_shapes()
        next_fields = []
        for name in STATE_FIELDS:
            final_value = getattr(final, name).reshape(len(layout.starts), *feats[name][0])
            at_ends = final_value.new_zeros(n * t, *feats[name][0]).index_copy(0, layout.ends, final_value)
            next_fields.append(at_ends.reshape(*td.batch_size, *feats[name][0]))
        return self._write(td, y.reshape(*td.batch_size, -1), next_fields)
