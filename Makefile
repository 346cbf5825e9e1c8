# Set-up and the two commands of the README. Everything lives in a local, git-ignored venv.
# TORCH_SPEC is installed before anything else so that pip never resolves a bare `torch`
# (a multi-GB CUDA build); override it for a CUDA build, e.g. TORCH_SPEC="torch==2.13.0+cu128".
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python

.PHONY: demo test install clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,popgym]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) tutorials/offline_bc.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
