"""A command line from a dataclass: each option is declared once, as a field with its comment.

The scripts' ``Args`` dataclasses are their whole configuration (CleanRL's pattern, which reads
them with ``tyro``); :func:`parse_dataclass` builds the ``argparse`` parser from the fields, so
a field is never repeated as an ``add_argument`` line:

- ``name: T = default  # help text`` becomes ``--name`` (underscores as dashes) with that help;
- ``bool`` fields are flags: ``--name`` when the default is False, ``--no-name`` when it is True
  (its help reads "turns off: <comment>");
- ``list[T]`` takes one or more values, ``tuple[T, ...]`` of fixed length that many;
- ``Literal[...]`` (or ``T | None`` of those) restricts the choices; ``T | None`` accepts ``none``.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

T = TypeVar("T")


def field_comments(cls: type) -> dict[str, str]:
    """``{field: its trailing # comment}`` from the class source (``{}`` when the source cannot
    be read, e.g. for a class typed into an interactive session)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def _strip_optional(tp) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _scalar(tp, optional: bool) -> dict:
    if typing.get_origin(tp) is Literal:
        choices = list(typing.get_args(tp))
        kind = type(choices[0])
        return {"type": kind, "choices": choices}
    if tp not in (int, float, str):
        raise TypeError(f"parse_dataclass: unsupported field type {tp!r} (use int, float, str, bool, list, tuple, Literal).")
    if optional:
        return {"type": lambda text: None if text.lower() == "none" else tp(text)}
    return {"type": tp}


def _argument(name: str, tp, default, help_text: str) -> tuple[list[str], dict]:
    flag = "--" + name.replace("_", "-")
    tp, optional = _strip_optional(tp)
    if tp is bool:
        if default:
            off = f"turns off: {help_text}" if help_text else "turns it off"
            return ["--no-" + name.replace("_", "-")], {"dest": name, "action": "store_false", "help": off}
        return [flag], {"dest": name, "action": "store_true", "help": help_text}
    kwargs: dict = {"dest": name, "default": default}
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            kwargs["nargs"] = len(args)
        else:
            kwargs["nargs"] = "+"
        kwargs.update(_scalar(args[0], False))
    else:
        kwargs.update(_scalar(tp, optional))
    shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
    kwargs["help"] = f"{help_text} (default: {shown})" if help_text else f"(default: {shown})"
    return [flag], kwargs


def make_parser(cls: type, description: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser with one option per field of the dataclass ``cls``."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"parse_dataclass: expected a dataclass, received {cls!r}.")
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        flags, kwargs = _argument(f.name, hints[f.name], getattr(defaults, f.name), comments.get(f.name, ""))
        parser.add_argument(*flags, **kwargs)
    return parser


def parse_dataclass(cls: type[T], description: str | None = None, argv: Sequence[str] | None = None,
                    check: Callable[[T], str | None] | None = None) -> T:
    """Parse ``argv`` (default: the command line) into an instance of the dataclass ``cls``.

    Args:
        check: optional ``check(args) -> error message or None``; a message exits with argparse's
            usage error (status 2). It runs after the fields named in :data:`COMMON_RANGES` have
            been checked against their intervals.

    Examples:
        >>> @dataclasses.dataclass
        ... class A:
        ...     steps: int = 3  # gradient steps
        ...     lengths: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
        ...     compare: bool = False  # all policies
        >>> parse_dataclass(A, argv=["--steps", "5", "--lengths", "7", "--compare"])
        A(steps=5, lengths=[7], compare=True)
    """
    parser = make_parser(cls, description)
    namespace = parser.parse_args(argv)
    values = {k: (tuple(v) if isinstance(getattr(cls(), k), tuple) and v is not None else v)
              for k, v in vars(namespace).items()}
    args = cls(**values)
    message = common_range_error(args)
    if message is None and check is not None:
        message = check(args)
    if message:
        parser.error(message)
    return args


def init_distributed_cli(batch: int, device: str | None = None):
    """:func:`~torchrl_elmur.training.distributed.init_distributed` for a script whose ``--batch`` is
    split over torchrun's ranks: exits with a ``--batch`` message when it does not divide."""
    from .distributed import init_distributed, rows_per_rank

    ctx = init_distributed(device)
    try:
        rows_per_rank(batch, ctx)
    except ValueError as err:
        raise SystemExit(f"--batch: {err}") from None
    return ctx


def range_error(args, **intervals: str) -> str | None:
    """The first field of ``args`` outside its interval, as a CLI error message (None: all inside).

    ``intervals`` maps a field name to an interval written as in mathematics: ``"(0, inf)"``,
    ``"[0, 1]"``, ``"[1, inf)"``. NaN is never inside; infinity only where the interval is closed
    there. List fields are checked value by value; None (an optional field's default) is skipped.

    Examples:
        >>> @dataclasses.dataclass
        ... class A:
        ...     lr: float = 1e-3
        ...     gamma: float = 0.99
        >>> range_error(A(), lr="(0, inf)", gamma="(0, 1]") is None
        True
        >>> range_error(A(lr=float("nan")), lr="(0, inf)")
        '--lr must be in (0, inf), received nan'
        >>> range_error(A(gamma=0.0), lr="(0, inf)", gamma="(0, 1]")
        '--gamma must be in (0, 1], received 0.0'
    """
    for name, interval in intervals.items():
        match = re.fullmatch(r"\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*", interval)
        if match is None:
            raise ValueError(f"range_error: {name}={interval!r} is not an interval like '(0, inf)' or '[0, 1]'.")
        low, high = float(match.group(2)), float(match.group(3))
        value = getattr(args, name)
        for v in value if isinstance(value, (list, tuple)) else (value,):
            if v is None:  # an optional field left at None ("the default")
                continue
            inside = ((v >= low) if match.group(1) == "[" else (v > low)) and \
                     ((v <= high) if match.group(4) == "]" else (v < high))
            if not inside:
                return f"--{name.replace('_', '-')} must be in {interval}, received {v}"
    return None


# One name means one thing in every script: a field with one of these names must lie in its interval
# (checked by parse_dataclass before the script's own check; list fields value by value). Fields whose
# 0 means "none" or "default" in some script (window, chunk, loop_batch, ...) are not here.
COMMON_RANGES = {
    **dict.fromkeys(("steps", "batch", "seq_len", "episodes", "rounds", "repeats", "epochs", "frames", "rollout",
                     "batches", "frames_per_batch", "slice_len", "train_batch", "train_len", "segment_lens",
                     "lengths", "eval_lengths", "select_every", "width", "hidden", "critic_hidden", "hidden_size",
                     "input_size", "embed", "segment_len", "memory_slots", "num_layers", "image_size", "num_workers",
                     "envs_per_worker", "num_envs", "workers", "jobs", "procs", "minibatch_rows",
                     "cues_per_layout", "num_qvalue_nets", "max_corridor", "train_steps"), "[1, inf)"),
    **dict.fromkeys(("eval_episodes", "threads", "probe_every", "eval_every", "select_corridor"), "[0, inf)"),
    **dict.fromkeys(("seed", "seeds", "popgym_seed"), "[0, 4294967295]"),  # numpy's seed range
    **dict.fromkeys(("lr", "critic_lr", "grad_clip", "max_grad_norm", "clip"), "(0, inf)"),
    **dict.fromkeys(("label_smoothing",), "[0, 1)"),
    **dict.fromkeys(("lru_blend", "lmbda", "action_noise", "wander_noise"), "[0, 1]"),
    **dict.fromkeys(("gamma",), "(0, 1]"),
    **dict.fromkeys(("entropy", "critic_coef", "decision_weight", "temperature"), "[0, inf)"),
}


def common_range_error(args) -> str | None:
    """:func:`range_error` over the fields of ``args`` named in :data:`COMMON_RANGES`.

    Examples:
        >>> @dataclasses.dataclass
        ... class A:
        ...     steps: int = 3
        ...     lr: float = 1e-3
        ...     note: str = "x"
        >>> common_range_error(A()) is None
        True
        >>> common_range_error(A(steps=0))
        '--steps must be in [1, inf), received 0'
    """
    names = [f.name for f in dataclasses.fields(args) if f.name in COMMON_RANGES]  # in the order of --help
    return range_error(args, **{name: COMMON_RANGES[name] for name in names}) if names else None

