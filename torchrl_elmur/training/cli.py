"""A command line from a dataclass: each option is declared once, as a field with its comment.

The scripts' ``Args`` dataclasses are their whole configuration, read with ``tyro`` as in CleanRL;
:func:`parse_dataclass` is the one entry point every script calls. ``tyro`` makes

- ``name: T = default  # help text`` into ``--name`` (underscores as dashes) with that help;
- ``bool`` fields into the pair ``--name`` / ``--no-name``;
- ``list[T]`` into ``--name a b c``, ``tuple[T, T]`` into exactly that many values;
- ``Literal[...]`` into a choice; ``T | None`` also accepts ``None`` (and, as before tyro, ``none``).

On top of ``tyro``, :func:`parse_dataclass` checks the fields named in :data:`COMMON_RANGES` and then the
script's own ``check``: a failure is one line on stderr, ``<prog>: error: <message>``, and exit status 2
(the status ``tyro`` gives a bad type or choice).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

import tyro

T = TypeVar("T")

_REGISTRY = tyro.constructors.ConstructorRegistry()


@_REGISTRY.primitive_rule
def _none_rule(type_info: tyro.constructors.PrimitiveTypeInfo) -> tyro.constructors.PrimitiveConstructorSpec | None:
    """``T | None`` takes ``None`` (tyro's spelling) or ``none`` (the spelling before tyro)."""
    if type_info.type is not type(None):
        return None
    return tyro.constructors.PrimitiveConstructorSpec(
        nargs=1, metavar="{None}", choices=("None", "none"), instance_from_str=lambda args: None,
        is_instance=lambda x: x is None, str_from_instance=lambda instance: ["None"])


def parse_dataclass(cls: type[T], description: str | None = None, argv: Sequence[str] | None = None,
                    check: Callable[[T], str | None] | None = None) -> T:
    """Parse ``argv`` (default: the command line) into an instance of the dataclass ``cls`` with ``tyro``.

    Args:
        description: the text ``--help`` shows above the options.
        check: optional ``check(args) -> error message or None``; a message exits with one line on stderr,
            ``<prog>: error: <message>``, and status 2. It runs after the fields named in
            :data:`COMMON_RANGES` have been checked against their intervals (same exit).

    Examples:
        >>> @dataclasses.dataclass
        ... class A:
        ...     steps: int = 3  # gradient steps
        ...     lengths: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
        ...     compare: bool = False  # all policies
        >>> parse_dataclass(A, argv=["--steps", "5", "--lengths", "7", "--compare"])
        A(steps=5, lengths=[7], compare=True)
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"parse_dataclass: expected a dataclass, received {cls!r}.")
    args = tyro.cli(cls, description=description, args=argv, registry=_REGISTRY)
    message = _emptied_list_error(args) or common_range_error(args)
    if message is None and check is not None:
        message = check(args)
    if message:
        cli_error(message)
    return args


def cli_error(message: str) -> NoReturn:
    """End a script with one line on stderr, ``<prog>: error: <message>``, and status 2 (as argparse)."""
    print(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@contextlib.contextmanager
def cli_errors(*errors: type[BaseException]):
    """Within the block, an exception of one of ``errors`` ends the script by :func:`cli_error` with
    its message instead of a traceback (for errors of the user's input found late, e.g. a
    :class:`~torchrl_elmur.training.checkpoint.ResumeMismatch`)."""
    try:
        yield
    except errors as error:
        cli_error(str(error))


def _emptied_list_error(args) -> str | None:
    """tyro lets ``--name`` of a ``list[T]`` field take no values; before tyro one or more were needed. A list
    the command line emptied where the default is not empty is refused (``--merge`` with nothing is the default)."""
    defaults = type(args)()
    for f in dataclasses.fields(args):
        value, default = getattr(args, f.name), getattr(defaults, f.name)
        if isinstance(value, list) and not value and isinstance(default, list) and default:
            return f"{flag(f.name)} expects one or more values, received none"
    return None


def flag(name: str) -> str:
    """The command-line flag of a dataclass field (what tyro reads).

    Examples:
        >>> flag("checkpoint_every")
        '--checkpoint-every'
    """
    return "--" + name.replace("_", "-")


def flag_values(args, leave_out: Sequence[str] = (), fields_of: type | None = None) -> dict:
    """``{flag: value}`` of a script's arguments (a dataclass), but ``leave_out`` (field names); only
    the fields of the dataclass ``fields_of`` if given (e.g. a recipe the script's arguments extend).
    What a training state records so that a run resumed with other flags is refused
    (:func:`~torchrl_elmur.training.checkpoint.load_training_state`'s ``config``)."""
    return {flag(f.name): getattr(args, f.name) for f in dataclasses.fields(fields_of or args) if f.name not in leave_out}


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
                return f"{flag(name)} must be in {interval}, received {v}"
    return None


# One name means one thing in every script: a field with one of these names must lie in its interval
# (checked by parse_dataclass before the script's own check; list fields value by value). Fields whose
# 0 means "none" or "default" in some script (window, chunk, loop_batch, ...) are not here.
COMMON_RANGES = {
    **dict.fromkeys(("steps", "batch", "seq_len", "episodes", "rounds", "repeats", "epochs", "frames", "rollout",
                     "batches", "frames_per_batch", "slice_len", "train_batch", "train_len", "segment_lens",
                     "lengths", "eval_lengths", "select_every", "width", "critic_width", "hidden_size",
                     "input_size", "embed", "segment_len", "memory_slots", "num_layers", "image_size", "num_workers",
                     "envs_per_worker", "num_envs", "workers", "jobs", "procs", "minibatch_rows",
                     "cues_per_layout", "num_qvalue_nets", "max_corridor", "train_steps"), "[1, inf)"),
    **dict.fromkeys(("eval_episodes", "threads", "probe_every", "eval_every", "select_corridor", "checkpoint_every"), "[0, inf)"),
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


def value_error(flags: str, build: Callable[[], object]) -> str | None:
    """``build()``'s ``ValueError`` as a command-line error that names the ``flags`` its inputs came
    from (e.g. an ``ELMURConfig`` built from ``--width``, or a task name); None when it builds.
    Scripts check this way before any work, so a bad value fails in one line, not in a traceback.

    Examples:
        >>> from torchrl_elmur import ELMURConfig
        >>> value_error("--width", lambda: ELMURConfig(d_model=30, num_heads=4))
        '--width: ELMURConfig.d_model=30 is invalid: expected a multiple of num_heads=4.'
        >>> value_error("--width", lambda: ELMURConfig(d_model=32, num_heads=4)) is None
        True
    """
    try:
        build()
    except ValueError as err:
        return f"{flags}: {err}"
    return None
