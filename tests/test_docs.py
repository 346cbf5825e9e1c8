"""The documentation site builds with warnings as errors, and the README's front page holds: its code
runs, its relative links resolve, it stays a front page (<= 10 KB).

The build is `make docs`'s command into a temporary folder (Sphinx, MyST, furo: the `docs` extra);
it renders the tutorials without running them. About 20 s on the project's 2-core CPU.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def run_python(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs_html")
    doctrees = tmp_path_factory.mktemp("doctrees")
    result = run_python(["-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(doctrees), "docs", str(out)],
                        ROOT, timeout=300)
    assert result.returncode == 0, f"sphinx-build failed (warnings are errors):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return out


def test_docs_build_with_warnings_as_errors(site):
    for page in ("index.html", "getting_started.html", "reproduction.html", "concepts/state.html",
                 "howto/online_ppo.html", "results/tmaze.html", "api/index.html", "tutorials/generated/index.html"):
        assert (site / page).is_file(), page


def test_api_pages_document_the_public_modules(site):
    modules = (site / "api" / "modules.html").read_text()
    assert 'id="torchrl_elmur.modules.ELMURModule"' in modules
    text = re.sub(r"<[^>]+>", "", modules)
    assert "ELMURModule(input_size=None, hidden_size=None" in text  # the constructor's signature, not (*args, **kwargs)
    for package, name in (("core", "ELMURConfig"), ("envs", "TMazeEnv"), ("data", "RowStartStates"),
                          ("objectives", "RecurrentTD0Estimator"), ("training", "train_bc")):
        assert f'id="torchrl_elmur.{package}.{name}"' in (site / "api" / f"{package}.html").read_text(), name


def test_every_tutorial_is_a_page_with_its_code(site):
    for script in sorted((ROOT / "tutorials").glob("*.py")):
        page = re.sub(r"<[^>]+>", "", (site / "tutorials" / "generated" / f"{script.stem}.html").read_text())
        assert "def main(" in page, script.name  # the code, by literalinclude


def test_results_pages_show_their_tables_and_figures(site):
    tmaze = (site / "results" / "tmaze.html").read_text()
    assert "1,000,000" in tmaze and "<table" in tmaze  # the horizon table, included from benchmarks/results
    for page in ("tmaze", "popgym", "mikasa", "online_ppo"):
        html = (site / "results" / f"{page}.html").read_text()
        for src in re.findall(r'<img [^>]*src="([^"]+)"', html):
            assert (site / "results" / src).resolve().is_file(), (page, src)
        assert "<img " in html, page


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_is_a_front_page_and_its_links_resolve():
    assert README.stat().st_size <= 10_000, "README.md is a front page (<= 10 KB): move detail to docs/"
    text = README.read_text()
    assert "make test" in text and "make demo" in text
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"


@pytest.mark.parametrize("index", range(len(readme_python_blocks())))
def test_readme_python_snippets_run(index, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(readme_python_blocks()[index])
    result = run_python([str(script)], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
