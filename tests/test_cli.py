"""parse_dataclass: one option per dataclass field, help from the field's comment."""
import json
import os
import subprocess
import sys
from pathlib import Path
from dataclasses import dataclass, field
from typing import Literal

import pytest

from torchrl_elmur.training.cli import make_parser, parse_dataclass

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(SystemExit) as err:  # the script's own check
        parse_dataclass(Args, argv=["--steps", "7"], check=lambda a: "--steps must be even" if a.steps % 2 else None)
    assert err.value.code == 2 and "--steps must be even" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:  # a common name's interval (COMMON_RANGES), before the script's check
        parse_dataclass(Args, argv=["--steps", "0"], check=lambda a: "never reached")
    assert err.value.code == 2 and capsys.readouterr().err.strip().endswith("--steps must be in [1, inf), received 0")
    with pytest.raises(TypeError, match="expected a dataclass"):
        make_parser(dict)


SCRIPTS = sorted(str(p.relative_to(ROOT)) for d in ("tutorials", "benchmarks") for p in (ROOT / d).glob("*.py")
                 if "class Args" in p.read_text())


def test_every_script_reads_its_command_line_with_parse_dataclass():
    """So that the checks below are the ones its command line gets."""
    assert [s for s in SCRIPTS if "parse_dataclass(Args" not in (ROOT / s).read_text()] == []


def test_every_script_refuses_bad_values_of_every_common_flag(tmp_path):
    """Each script's Args, loaded as its main() would (one subprocess for all: no import side effects
    here), refuses for every field named in COMMON_RANGES a value outside the interval (and nan for
    floats), and a wrong choice for every choice field: argparse's exit 2 with one line naming the flag."""
    probe = tmp_path / "probe.py"
    probe.write_text(f"""
import contextlib, dataclasses, importlib.util, io, json, sys, typing
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
from torchrl_elmur.training.cli import COMMON_RANGES, _strip_optional, parse_dataclass
out = {{}}
for script in {SCRIPTS!r}:
    name = "probe_" + script.replace("/", "_")[:-3]  # a module name other than __main__: main() does not run
    spec = importlib.util.spec_from_file_location(name, {str(ROOT)!r} + "/" + script)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Args = module.Args
    hints = typing.get_type_hints(Args)
    cases = []
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        tp = _strip_optional(hints[f.name])[0]
        inner = _strip_optional(typing.get_args(tp)[0] if typing.get_origin(tp) in (list, tuple) else tp)[0]
        if typing.get_origin(inner) is typing.Literal:
            cases.append((flag, "no-such-choice", "invalid choice"))
        if f.name in COMMON_RANGES:
            interval = COMMON_RANGES[f.name]
            low = float(interval[1:].split(",")[0])
            bad = low - 1 if interval[0] == "[" else low
            if inner is int:
                cases.append((flag, str(int(bad)), flag + " must be in"))
            else:
                cases += [(flag, repr(bad), flag + " must be in"), (flag, "nan", flag + " must be in")]
    for flag, value, expected in cases:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                parse_dataclass(Args, argv=[flag, value])
                code = 0
            except SystemExit as e:
                code = e.code
        lines = err.getvalue().strip().splitlines()
        out.setdefault(script, []).append([flag, value, code, lines[-1] if lines else "", expected])
print(json.dumps(out))
""")
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == set(SCRIPTS) and len(SCRIPTS) >= 16
    bad = [(s, flag, value, code, line) for s, cases in results.items() for flag, value, code, line, expected in cases
           if code != 2 or expected not in line or "error:" not in line]
    assert not bad, bad
    assert sum(len(c) for c in results.values()) > 150  # every script has several such flags

