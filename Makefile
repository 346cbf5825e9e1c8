# Set-up and the two commands of the README. Everything lives in a local, git-ignored venv.
# TORCH_SPEC is installed before anything else so that pip never resolves a bare `torch`
# (a multi-GB CUDA build); override it for a CUDA build, e.g. TORCH_SPEC="torch==2.13.0+cu128".
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test docs install clean render-deps

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)" -e ".[dev,popgym,maniskill,docs]"
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps "mikasa-robo-suite==1.0.0"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) tutorials/offline_bc.py

test: render-deps $(VENV)/.installed
	$(PY) -m pytest -q

# The documentation site (Sphinx + MyST + furo, the `docs` extra) into docs/_build/html, warnings as
# errors; `make test` builds it too (tests/test_docs.py). Tutorials are rendered, never run.
docs: $(VENV)/.installed
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

# CPU rendering for ManiSkill (MIKASA-Robo): SAPIEN refuses Debian 12's Mesa 22 Vulkan; Mesa 25 from
# bookworm-backports works. `make test` runs it first. Needs root (apt); skipped when it is installed
# already. If it cannot install (no root, no apt) it warns and goes on: the MIKASA tests then skip and
# say why.
render-deps:
	@if dpkg-query -W -f='$${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q '^25'; then \
		echo "render-deps: Mesa 25 Vulkan already installed"; \
	else \
		{ printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
			> /etc/apt/sources.list.d/bookworm-backports.sources && \
		  apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null; } 2>/dev/null || \
		echo "render-deps: WARNING: Mesa 25 Vulkan could not be installed; the MIKASA-Robo tests will skip (see their reason)"; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache docs/_build docs/tutorials/generated
