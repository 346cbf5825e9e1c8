"""Sphinx configuration: MyST prose pages, autodoc API pages, tutorials rendered (not executed) as pages.

Build: ``make docs`` (warnings are errors). The tutorial pages are generated at build time from
``tutorials/*.py`` by ``write_tutorial_pages`` below: the module docstring as prose, then the code
through ``literalinclude``. Nothing is executed.
"""
from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")

project = "torchrl_elmur"
author = "torchrl_elmur contributors"
copyright = "2026, torchrl_elmur contributors"
release = version = "0.1.0"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # the package's docstrings use Google style (Args:, Keyword Args:, Examples:)
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# the result files under benchmarks/results/ title their tables with ###; they are included one level
# lower (:heading-offset: 1) so that a table's caption reads smaller than the section that holds it
suppress_warnings = ["myst.header"]

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# ELMURConfig groups its fields under these two headings, written as Args sections
napoleon_custom_sections = [("Transformer", "params_style"), ("Memory", "params_style")]
# only this package's own docstrings: overrides without one do not pull in gymnasium's or torch's
autodoc_inherit_docstrings = False

html_theme = "furo"
html_title = "torchrl_elmur"
html_static_path: list[str] = []
pygments_style = "sphinx"
smartquotes_action = "qe"  # quotes and ellipses only: "--flag" in prose stays two hyphens


# ------------------------------------------------------------------------------------------------
# Tutorials as pages: docstring as prose, code by literalinclude (never executed)
# ------------------------------------------------------------------------------------------------
# sidebar titles, in this order; any other tutorials/*.py gets a page too, listed after these
TUTORIALS = {"quickstart": "Tutorial: quickstart", "offline_bc": "Tutorial: offline BC (T-Maze)",
             "offline_iql": "Tutorial: offline IQL (T-Maze)", "online_ppo": "Tutorial: online PPO (POPGym)"}


def docstring_to_markdown(doc: str) -> str:
    """A tutorial's module docstring as Markdown: paragraphs stay prose; indented command lines
    become a bash block; the aligned "reads top to bottom" outline stays a text block."""
    out: list[str] = []
    blocks: list[list[str]] = [[]]
    for line in doc.strip("\n").splitlines():
        if line.strip():
            blocks[-1].append(line.rstrip())
        elif blocks[-1]:
            blocks.append([])
    for block in filter(None, blocks):
        if all(line.startswith("    ") for line in block):
            out += ["```bash", *(line[4:] for line in block), "```"]
        elif any(line.startswith("  ") for line in block[1:]):
            head, rest = (block[0], block[1:]) if not block[0].startswith(" ") else ("", block)
            if head:
                out.append(head)
                out.append("")
            out += ["```text", *rest, "```"]
        else:
            out.append(" ".join(line.strip() for line in block))
        out.append("")
    return "\n".join(out)


def tutorial_page(name: str) -> str:
    path = ROOT / "tutorials" / f"{name}.py"
    source = path.read_text()
    tree = ast.parse(source)
    doc = ast.get_docstring(tree, clean=True) or ""
    first_code_line = tree.body[0].end_lineno + 1 if doc else 1
    title, _, body = doc.partition("\n")
    return "\n".join([
        f"# {TUTORIALS.get(name, f'Tutorial: {name}')}",
        "",
        f"**{title.strip().rstrip('.')}.**",
        "",
        f"`tutorials/{name}.py`, rendered here to read top to bottom (the docs build does not run it).",
        "",
        docstring_to_markdown(body),
        *code_sections(name, source, first_code_line),
    ])


def code_sections(name: str, source: str, first_line: int) -> list[str]:
    """The script after its docstring, cut at its numbered banners (a dashed comment line, then
    ``# 1. Args ...``) into one section each; a script without banners is one section."""
    lines = source.splitlines()
    starts = [(i + 1, re.match(r"# (\d+\. .*)", lines[i + 1]).group(1))  # 1-based line of the dashes, title
              for i in range(len(lines) - 1)
              if i + 1 >= first_line and re.fullmatch(r"# -{20,}", lines[i]) and re.match(r"# \d+\. ", lines[i + 1])]
    bounds = [(first_line, "Imports" if starts else "The script")] + starts
    out: list[str] = []
    for (begin, title), end in zip(bounds, [b for b, _ in bounds[1:]] + [len(lines) + 1]):
        if not any(line.strip() for line in lines[begin - 1:end - 1]):
            continue
        short = re.split(r"[:(]", title)[0].strip().rstrip(".")
        out += [f"## {short}", "", f"```{{literalinclude}} ../../../tutorials/{name}.py", ":language: python",
                f":lines: {begin}-{end - 1}", f":lineno-start: {begin}", "```", ""]
    return out


def write_tutorial_pages() -> None:
    out = DOCS / "tutorials" / "generated"
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(path.stem for path in (ROOT / "tutorials").glob("*.py"))
    for stale in out.glob("*.md"):
        if stale.stem not in names and stale.stem != "index":
            stale.unlink()
    order = [name for name in TUTORIALS if name in names] + [name for name in names if name not in TUTORIALS]
    pages = {"index": "\n".join([
        "# Tutorials", "",
        "Each tutorial is one script in `tutorials/` that reads top to bottom, its flags in an `Args` "
        "dataclass (`--help` lists them). These pages show the scripts as they are; the docs build "
        "does not run them.", "",
        "```{toctree}", ":maxdepth: 1", "", *order, "```", ""])}
    pages.update({name: tutorial_page(name) for name in names})
    for name, text in pages.items():
        page = out / f"{name}.md"
        if not page.exists() or page.read_text() != text:  # unchanged pages keep their mtime: no rebuild
            page.write_text(text)


write_tutorial_pages()


# ------------------------------------------------------------------------------------------------
# TorchRL's TensorDictModuleBase defines __new__(cls, *args, **kwargs), which autodoc shows as the
# class signature: show the class's own __init__ signature instead.
# ------------------------------------------------------------------------------------------------
def init_signature(app, what, name, obj, options, signature, return_annotation):
    import inspect

    if what == "class" and signature == "(*args, **kwargs)" and "__init__" in vars(obj):
        sig = inspect.signature(obj.__init__)
        params = [p.replace(annotation=inspect.Parameter.empty) for p in list(sig.parameters.values())[1:]]  # no self
        return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty)), None
    return None


def setup(app):
    app.connect("autodoc-process-signature", init_signature)
