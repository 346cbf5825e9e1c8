"""parse_dataclass: one option per dataclass field, help from the field's comment."""
from dataclasses import dataclass, field
from typing import Literal

import pytest

from torchrl_elmur.training.cli import make_parser, parse_dataclass


@dataclass
class Args:
    policy: Literal["elmur", "gru"] = "elmur"  # memory module
    steps: int = 300  # gradient steps
    lr: float = 1e-3
    lengths: list[int] = field(default_factory=lambda: [30, 100])  # corridor lengths
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    compare: bool = False  # all policies
    wandb_on: bool = True  # log to wandb
    limit: int | None = None  # optional cap


def test_defaults_and_values():
    assert parse_dataclass(Args, argv=[]) == Args()
    args = parse_dataclass(Args, argv=["--policy", "gru", "--steps", "5", "--lr", "3e-4", "--lengths", "1", "2", "3",
                                       "--betas", "0.5", "0.6", "--compare", "--no-wandb-on", "--limit", "7"])
    assert args == Args("gru", 5, 3e-4, [1, 2, 3], (0.5, 0.6), True, False, 7)
    assert parse_dataclass(Args, argv=["--limit", "none"]).limit is None


def test_help_comes_from_the_comments():
    text = make_parser(Args, "demo").format_help()
    assert "gradient steps (default: 300)" in text and "corridor lengths (default: 30 100)" in text
    assert "--no-wandb-on" in text and "turns off: log to wandb" in text


def test_errs(capsys):
    with pytest.raises(SystemExit) as err:
        parse_dataclass(Args, argv=["--policy", "lstm"])
    assert err.value.code == 2 and "invalid choice: 'lstm'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_dataclass(Args, argv=["--betas", "0.5"])
    with pytest.raises(SystemExit) as err:
        parse_dataclass(Args, argv=["--steps", "0"], check=lambda a: "--steps must be >= 1" if a.steps < 1 else None)
    assert "--steps must be >= 1" in capsys.readouterr().err
    with pytest.raises(TypeError, match="expected a dataclass"):
        make_parser(dict)
