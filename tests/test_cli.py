"""parse_dataclass: the command line read by tyro from a dataclass (one option per field, help from the
field's comment), with the COMMON_RANGES and script checks on top."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from dataclasses import dataclass, field
from typing import Literal

import pytest

from torchrl_elmur.training.cli import parse_dataclass

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


def flat(text: str) -> str:
    """tyro's help and errors without the box drawing and the line wrapping: words separated by one space."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", text).split())


def test_defaults_and_values():
    assert parse_dataclass(Args, argv=[]) == Args()
    args = parse_dataclass(Args, argv=["--policy", "gru", "--steps", "5", "--lr", "3e-4", "--lengths", "1", "2", "3",
                                       "--betas", "0.5", "0.6", "--compare", "--no-wandb-on", "--limit", "7"])
    assert args == Args("gru", 5, 3e-4, [1, 2, 3], (0.5, 0.6), True, False, 7)
    assert parse_dataclass(Args, argv=["--limit", "7", "--limit", "None"]).limit is None  # tyro's spelling
    assert parse_dataclass(Args, argv=["--limit", "none"]).limit is None  # the spelling before tyro
    assert parse_dataclass(Args, argv=["--no-compare", "--wandb-on"]) == Args()  # tyro's pairs: both spellings


def test_help_comes_from_the_comments(capsys):
    with pytest.raises(SystemExit) as end:
        parse_dataclass(Args, "demo", argv=["--help"])
    text = flat(capsys.readouterr().out)
    assert end.value.code == 0 and "demo" in text
    assert "--steps INT gradient steps (default: 300)" in text and "corridor lengths (default: 30 100)" in text
    assert "--wandb-on, --no-wandb-on log to wandb (default: True)" in text


def test_errs(capsys):
    with pytest.raises(SystemExit) as err:  # a bad choice: tyro's message names the flag and the value
        parse_dataclass(Args, argv=["--policy", "lstm"])
    text = flat(capsys.readouterr().err)
    assert err.value.code == 2 and "invalid choice 'lstm' for argument '--policy'" in text, text
    with pytest.raises(SystemExit) as err:  # a bad type
        parse_dataclass(Args, argv=["--steps", "x"])
    text = flat(capsys.readouterr().err)
    assert err.value.code == 2 and "--steps" in text and "'x'" in text, text
    with pytest.raises(SystemExit) as err:  # too few values for a tuple
        parse_dataclass(Args, argv=["--betas", "0.5"])
    assert err.value.code == 2 and "--betas" in flat(capsys.readouterr().err)
    with pytest.raises(SystemExit) as err:  # the script's own check
        parse_dataclass(Args, argv=["--steps", "7"], check=lambda a: "--steps must be even" if a.steps % 2 else None)
    assert err.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        f"{os.path.basename(sys.argv[0])}: error: --steps must be even"]  # one line
    with pytest.raises(SystemExit) as err:  # a common name's interval (COMMON_RANGES), before the script's check
        parse_dataclass(Args, argv=["--steps", "0"], check=lambda a: "never reached")
    assert err.value.code == 2 and capsys.readouterr().err.strip().endswith("--steps must be in [1, inf), received 0")
    with pytest.raises(SystemExit) as err:  # a list left empty (tyro takes no values; before tyro one or more)
        parse_dataclass(Args, argv=["--lengths"])
    assert err.value.code == 2 and capsys.readouterr().err.strip().endswith(
        "--lengths expects one or more values, received none")
    with pytest.raises(TypeError, match="expected a dataclass"):
        parse_dataclass(dict)


SCRIPTS = sorted(str(p.relative_to(ROOT)) for d in ("tutorials", "benchmarks") for p in (ROOT / d).glob("*.py")
                 if "class Args" in p.read_text())


def test_every_script_reads_its_command_line_with_parse_dataclass():
    """So that the checks below are the ones its command line gets."""
    assert [s for s in SCRIPTS if "parse_dataclass(Args" not in (ROOT / s).read_text()] == []


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """Each script's Args, loaded as its main() would (one subprocess for all: no import side effects here):
    what parse_dataclass makes of no argv, its --help, the fields' trailing comments, and its answer to a value
    outside the interval for every field named in COMMON_RANGES (and nan for floats) and to a wrong choice for
    every choice field."""
    probe = tmp_path_factory.mktemp("probe") / "probe.py"
    probe.write_text(f"""
import contextlib, dataclasses, importlib.util, inspect, io, json, re, sys, types, typing
from torchrl_elmur.training.cli import COMMON_RANGES, parse_dataclass

def strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp

def run(Args, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parsed, code = parse_dataclass(Args, "probe", argv=argv), 0
        except SystemExit as e:
            parsed, code = None, e.code
    return parsed, code, out.getvalue(), err.getvalue()

out = {{}}
for script in {SCRIPTS!r}:
    name = "probe_" + script.replace("/", "_")[:-3]  # a module name other than __main__: main() does not run
    spec = importlib.util.spec_from_file_location(name, {str(ROOT)!r} + "/" + script)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Args = module.Args
    hints = typing.get_type_hints(Args)
    comments = {{m.group(1): m.group(2).strip() for line in inspect.getsource(Args).splitlines()
                 if (m := re.match(r"\\s+(\\w+)\\s*:[^#]*#\\s*(.*)$", line))}}
    cases = []
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        tp = strip_optional(hints[f.name])
        inner = strip_optional(typing.get_args(tp)[0] if typing.get_origin(tp) in (list, tuple) else tp)
        if typing.get_origin(inner) is typing.Literal:
            cases.append((flag, "no-such-choice", "choice"))
        if f.name in COMMON_RANGES:
            interval = COMMON_RANGES[f.name]
            low = float(interval[1:].split(",")[0])
            bad = low - 1 if interval[0] == "[" else low
            if inner is int:
                cases.append((flag, str(int(bad)), flag + " must be in"))
            else:
                cases += [(flag, repr(bad), flag + " must be in"), (flag, "nan", flag + " must be in")]
    parsed, code, _, err = run(Args, [])
    help_code, help_text = run(Args, ["--help"])[1:3]
    out[script] = {{"defaults": [parsed == Args(), code, err[-500:]], "help": [help_code, help_text],
                   "fields": [[f.name, comments.get(f.name, "")] for f in dataclasses.fields(Args)], "cases": []}}
    for flag, value, expected in cases:
        code, err = run(Args, [flag, value])[1::2]
        out[script]["cases"].append([flag, value, code, err, expected])
print(json.dumps(out))
""")
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(results) == set(SCRIPTS) and len(SCRIPTS) >= 16
    return results


def test_every_script_parses_no_argv_to_its_defaults(probed):
    assert [(s, r["defaults"]) for s, r in probed.items() if r["defaults"][:2] != [True, 0]] == []


def test_every_script_helps_with_every_field_and_its_comment(probed):
    """--help (exit 0) names each field as --kebab-case and shows its trailing # comment."""
    missing = []
    for script, r in probed.items():
        code, text = r["help"]
        assert code == 0 and text.startswith("usage:"), (script, code, text[-500:])
        for name, comment in r["fields"]:
            flag = "--" + name.replace("_", "-")
            if not re.search(re.escape(flag) + r"\b", text) or flat(comment) not in flat(text):
                missing.append((script, flag, comment))
    assert missing == []
    assert sum(bool(comment) for r in probed.values() for _, comment in r["fields"]) > 150


def test_every_script_refuses_bad_values_of_every_common_flag(probed):
    """A value outside a COMMON_RANGES interval: exit 2 and one line "<prog>: error: --flag must be in
    <interval>, received <value>"; a wrong choice: tyro's error (exit 2) naming the flag and the value."""
    bad = []
    for script, r in probed.items():
        for flag, value, code, err, expected in r["cases"]:
            line = err.strip().splitlines()[-1] if err.strip() else ""
            if expected == "choice":
                ok = code == 2 and f"invalid choice '{value}' for argument '{flag}'" in flat(err)
            else:
                ok = code == 2 and expected in line and "error:" in line and line.endswith(f"received {value}")
            if not ok:
                bad.append((script, flag, value, code, err[-300:]))
    assert not bad, bad
    assert sum(len(r["cases"]) for r in probed.values()) > 150  # every script has several such flags
