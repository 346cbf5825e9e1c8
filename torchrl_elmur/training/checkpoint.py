"""Policies saved with what rebuilds them: one call to save, one call to load in a fresh process.

The package's factories (:func:`~torchrl_elmur.training.policies.make_bc_actor`,
:func:`~torchrl_elmur.training.policies.make_actor_critic`) record on the modules they return how
they were called (:data:`BUILD_ATTR`: the factory's name and its arguments, an
:class:`~torchrl_elmur.ELMURConfig` included). :func:`save_policy` writes that record beside the
weights, with a format name and version; :func:`load_policy` calls the same factory again and loads
the weights, and :func:`load_into` loads a file into modules built by the caller, after checking that
they were built the same way. A file that does not match the code gets an error that names what
differs: the format version, the factory's arguments (``config.d_model: file 128, module 64``),
missing or unexpected weights, shapes.

Writes are atomic (:func:`atomic_save`): the file is written beside its destination and renamed over
it, so a run killed mid-write leaves the previous file whole. The training loop's own state (weights,
optimizer, step, sampler and random generators: what resumes a run exactly) uses the same writes
(:func:`~torchrl_elmur.training.bc.train_bc`'s ``checkpoint``). TorchRL users who keep ``state_dict``s keep doing so: the
weights are also in the file as plain state dicts (``torch.load(path)["state_dicts"]``).

Examples:
    >>> import tempfile, torch
    >>> from torchrl_elmur.training.policies import make_bc_actor
    >>> actor = make_bc_actor("gru", 5, num_actions=3, width=8)
    >>> path = save_policy(tempfile.mkdtemp() + "/gru.pt", actor)
    >>> again = load_policy(path)
    >>> all(torch.equal(a, b) for a, b in zip(actor.parameters(), again.parameters()))
    True
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from ..core.config import ELMURConfig, MoEConfig

FORMAT = "torchrl_elmur.policy"
TRAINING_FORMAT = "torchrl_elmur.training_state"
VERSION = 1
BUILD_ATTR = "_torchrl_elmur_build"  # {"builder": name, "args": [...], "kwargs": {...}, "part": i of the builder's outputs}


def record_build(modules, builder: str, args: tuple, kwargs: dict):
    """Record on ``modules`` (one module or a tuple of them, as ``builder`` returns) the call that built
    them; returns ``modules``. Arguments must be plain values or an :class:`~torchrl_elmur.ELMURConfig`."""
    parts = modules if isinstance(modules, tuple) else (modules,)
    for i, module in enumerate(parts):
        setattr(module, BUILD_ATTR, {"builder": builder, "args": list(args), "kwargs": dict(kwargs),
                                     "part": i if isinstance(modules, tuple) else None})
    return modules


def _encode(value):
    if isinstance(value, ELMURConfig):
        return {"ELMURConfig": dataclasses.asdict(value)}  # the nested MoEConfig becomes a dict too
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"save_policy: cannot record a factory argument of type {type(value).__name__} ({value!r}).")


def _decode(value):
    if isinstance(value, dict) and set(value) == {"ELMURConfig"}:
        fields = dict(value["ELMURConfig"])
        if fields.get("moe") is not None:
            fields["moe"] = MoEConfig(**fields["moe"])
        return ELMURConfig(**fields)
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


def _builders() -> dict:
    from .policies import make_actor_critic, make_bc_actor

    return {"make_bc_actor": make_bc_actor, "make_actor_critic": make_actor_critic}


def _build_record(modules: tuple[nn.Module, ...]) -> dict:
    records = [getattr(m, BUILD_ATTR, None) for m in modules]
    if any(r is None for r in records):
        raise ValueError("save_policy: a module was not built by a package factory that records its call "
                         f"({', '.join(_builders())}); save its weights with torch.save(module.state_dict(), path).")
    first = {k: v for k, v in records[0].items() if k != "part"}
    if any({k: v for k, v in r.items() if k != "part"} != first for r in records):
        raise ValueError("save_policy: the modules come from different factory calls; save each on its own.")
    parts = [r["part"] for r in records]
    if parts != ([None] if parts == [None] else list(range(len(parts)))):
        raise ValueError(f"save_policy: give every output of {first['builder']} in its order (parts {parts}).")
    return first


def save_policy(path: str | Path, *modules: nn.Module, extra: dict | None = None) -> Path:
    """Write ``modules`` (what one factory call returned: a BC actor, or ``actor, critic``) to ``path``,
    atomically, with the factory call that rebuilds them; ``extra``: anything else to keep beside them
    (e.g. the run's arguments, an optimizer's state). Returns the path."""
    record = _build_record(modules)
    payload = {"format": FORMAT, "version": VERSION, "builder": record["builder"], "args": _encode(record["args"]),
               "kwargs": _encode(record["kwargs"]), "state_dicts": [m.state_dict() for m in modules],
               "extra": extra or {}}
    return atomic_save(payload, path)


def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save(obj, path)`` written beside ``path`` and renamed over it: a reader (or a run killed
    mid-write) sees the previous file or the new one, never half of one. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(obj, partial)
        os.replace(partial, path)  # atomic on POSIX
    finally:
        partial.unlink(missing_ok=True)  # an interrupted write leaves nothing beside the previous file
    return path


def rng_states() -> dict:
    """Every random number generator a training loop may draw from: torch's (CPU and CUDA), numpy's
    global one and Python's ``random``."""
    import random

    import numpy as np

    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_states(states: dict) -> None:
    """Restore :func:`rng_states`."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def _read(path: Path, fmt: str, what: str, writer: str, hint: str = "") -> dict:
    """The file's contents, checked for format and version: a truncated or corrupt file, another format
    or another version gets an error that says which (writes are atomic: a killed run leaves the previous file)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # truncated, corrupt, not a torch file
        raise ValueError(f"{what} {path} is not readable ({type(err).__name__}: {err}); the file is truncated, "
                         "corrupt or not a torch file.") from err
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        plain = isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values())
        raise ValueError(f"{what} {path}: expected a {fmt!r} file ({writer}), received "
                         f"{'a plain state_dict' if plain else f'a {type(payload).__name__}'}{hint}.")
    if payload.get("version") != VERSION:
        raise ValueError(f"{what} {path}: format version {payload.get('version')!r}, this code reads version {VERSION}.")
    return payload


def read_training_state(path: str | Path) -> dict:
    """A training state written by :func:`save_training_state` (e.g. by
    :func:`~torchrl_elmur.training.bc.train_bc`'s ``checkpoint``), checked for format and version."""
    return _read(Path(path), TRAINING_FORMAT, "training state", "save_training_state")


def read_policy_file(path: str | Path) -> dict:
    """A policy file written by :func:`save_policy`, checked for format and version."""
    return _read(Path(path), FORMAT, "checkpoint", "save_policy", hint="; load a state_dict into modules you build "
                 "with module.load_state_dict(torch.load(path))")


def _load_weights(modules: tuple[nn.Module, ...], state_dicts: list[dict], path: Path) -> None:
    if len(modules) != len(state_dicts):
        raise ValueError(f"checkpoint {path}: {len(state_dicts)} state dicts for {len(modules)} modules.")
    for i, (module, state) in enumerate(zip(modules, state_dicts)):
        own = module.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = [f"{k}: file {tuple(state[k].shape)}, module {tuple(own[k].shape)}" for k in own
                  if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"checkpoint {path}, module {i}: the weights do not match the module: missing {missing}, "
                             f"unexpected {unexpected}, other shapes {shapes}.")
        module.load_state_dict(state)


def load_policy(path: str | Path, map_location: str | torch.device = "cpu"):
    """The modules saved by :func:`save_policy`, rebuilt by the factory call recorded in the file and
    with its weights: one module, or a tuple as the factory returns (``actor, critic``)."""
    path = Path(path)
    payload = read_policy_file(path)
    builders = _builders()
    if payload["builder"] not in builders:
        raise ValueError(f"checkpoint {path}: factory {payload['builder']!r} is unknown to this code "
                         f"(expected one of {list(builders)}).")
    built = builders[payload["builder"]](*_decode(payload["args"]), **_decode(payload["kwargs"]))
    modules = built if isinstance(built, tuple) else (built,)
    _load_weights(modules, payload["state_dicts"], path)
    for module in modules:
        module.to(map_location)
    return built


def _differences(file: dict, module: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(file) | set(module)):
        a, b = file.get(key, "<absent>"), module.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: file {a!r}, module {b!r}")
    return out


def load_into(path: str | Path, *modules: nn.Module) -> dict:
    """Load the weights of ``path`` into ``modules`` built by the caller, after checking that the
    same factory call built them (an error lists every argument that differs, e.g. ``config.d_model:
    file 128, module 64``). Returns the file's ``extra``."""
    path = Path(path)
    payload = read_policy_file(path)
    record = _build_record(modules)
    file = {"builder": payload["builder"], "args": dict(enumerate(payload["args"])), **payload["kwargs"]}
    mine = {"builder": record["builder"], "args": dict(enumerate(_encode(record["args"]))), **_encode(record["kwargs"])}
    flat = lambda d: {k: (v["ELMURConfig"] if isinstance(v, dict) and set(v) == {"ELMURConfig"} else v)  # noqa: E731
                      for k, v in d.items()}
    diff = _differences(flat(file), flat(mine))
    if diff:
        raise ValueError(f"checkpoint {path} was built otherwise than these modules: " + "; ".join(diff) + ".")
    _load_weights(modules, payload["state_dicts"], path)
    return payload["extra"]


def checkpoint_due(done: int, steps: int, every: int) -> bool:
    """Whether a loop writes its state after ``done`` of ``steps`` updates: every ``every`` (0: never)
    and after the last.

    Examples:
        >>> [d for d in range(1, 8) if checkpoint_due(d, 7, 3)]
        [3, 6, 7]
    """
    return bool(every and done % every == 0) or done == steps


def save_training_state(path: str | Path, *, step: int, steps: int, parts: dict, extra: dict | None = None,
                        config: dict | None = None) -> Path:
    """Write a training loop's state after ``step`` of ``steps`` updates, atomically: the state dicts
    of ``parts`` (name -> anything with ``state_dict``: modules, optimizers, loss modules, a replay
    sampler), every random generator (:func:`rng_states`), ``extra`` (e.g. a history) and
    ``config``: plain values that decide the run (e.g. a script's arguments), which
    :func:`load_training_state` compares with the resuming run's."""
    return atomic_save({"format": TRAINING_FORMAT, "version": VERSION, "step": step, "steps": steps,
                        "parts": {name: part.state_dict() for name, part in parts.items()}, "rng": rng_states(),
                        "extra": extra or {}, "config": config or {}}, path)


class ResumeMismatch(ValueError):
    """A training state that the run resuming from it does not match (another run length, other
    parts, other optimizer settings or another config): :func:`load_training_state` raises it
    before loading anything; scripts turn it into a one-line error (:func:`~torchrl_elmur.training.cli.cli_errors`)."""


def optimizer_settings(state: dict) -> list[dict]:
    """An optimizer's hyper-parameters per parameter group, from its ``state_dict()`` (``lr`` as the
    group started, ``initial_lr``, where a scheduler has moved it).

    Examples:
        >>> opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
        >>> optimizer_settings(opt.state_dict())[0]["lr"], "params" in optimizer_settings(opt.state_dict())[0]
        (0.1, False)
    """
    groups = []
    for group in state["param_groups"]:
        settings = {k: v for k, v in group.items() if k != "params"}
        if "initial_lr" in settings:
            settings["lr"] = settings.pop("initial_lr")
        groups.append(settings)
    return groups


def differences(saved: dict, current: dict) -> list[str]:
    """``"key: A there, B here"`` for every key whose value differs between ``saved`` and ``current``.

    Examples:
        >>> differences({"lr": 0.001, "batch": 32}, {"lr": 0.0003, "batch": 32, "seed": 1})
        ['lr: 0.001 there, 0.0003 here', 'seed: (none) there, 1 here']
    """
    missing = object()

    def shown(value) -> str:
        return "(none)" if value is missing else repr(value)

    return [f"{k}: {shown(saved.get(k, missing))} there, {shown(current.get(k, missing))} here"
            for k in dict.fromkeys([*saved, *current]) if saved.get(k, missing) != current.get(k, missing)]


def load_training_state(path: str | Path, *, steps: int, parts: dict, config: dict | None = None) -> tuple[int, dict]:
    """Restore :func:`save_training_state`'s file into ``parts`` (the same names) and the random
    generators; returns ``(step, extra)``. Refused, before anything is loaded, with an error that
    names what differs: a file of another run length or other parts, an optimizer with other
    hyper-parameters (its state would override the ones given now, e.g. a new learning rate), or
    (``config`` given) another ``config`` than the one saved with the file."""
    state = read_training_state(path)
    if state["steps"] != steps:
        raise ResumeMismatch(f"training state {path} is a run of {state['steps']} steps, this one has {steps}.")
    if set(state["parts"]) != set(parts):
        raise ResumeMismatch(f"training state {path} holds {sorted(state['parts'])}, this loop has {sorted(parts)}.")
    problems = []
    for name, part in parts.items():
        if isinstance(part, torch.optim.Optimizer):
            saved, current = optimizer_settings(state["parts"][name]), optimizer_settings(part.state_dict())
            if len(saved) != len(current):
                problems.append(f"optimizer {name!r}: {len(saved)} parameter groups there, {len(current)} here")
            for i, (a, b) in enumerate(zip(saved, current)):  # the keys both have (a torch upgrade may add some)
                common = a.keys() & b.keys()
                problems += [f"optimizer {name!r} group {i} {d}" for d in
                             differences({k: a[k] for k in common}, {k: b[k] for k in common})]
    if config is not None and "config" in state:  # (a state written before configs were saved has none to compare)
        problems += differences(state["config"], config)
    if problems:
        raise ResumeMismatch(f"training state {path} is a run with other settings; resume with the same ones, or start "
                         f"again without resuming: " + "; ".join(problems) + ".")
    for name, part in parts.items():
        part.load_state_dict(state["parts"][name])
    set_rng_states(state["rng"])
    return state["step"], state["extra"]
