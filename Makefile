# Each target bootstraps .venv itself: it is (re)built when missing or older than pyproject.toml
# or requirements.lock. Dependencies install at the exact versions of requirements.lock; jaxlab
# itself installs editable on top (`--no-deps`), which also puts the `jaxlab` command in .venv/bin.
# The installer is uv (pinned, installed into .venv by the venv's own pip): it fetches wheels in
# parallel and compiles their bytecode on every core, 17 s against pip's 38 s for this lock on
# 2 cores. The venv keeps its pip (the wheel test builds with it). Bytecode is compiled at install
# time on purpose: where PYTHONDONTWRITEBYTECODE is set, nothing else would ever cache it.
PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
JAXLAB := $(VENV)/bin/jaxlab
UV_INSTALL := $(VENV)/bin/uv pip install --quiet --python $(PY)

.PHONY: demo test test-fast bench lint format clean lock

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV_INSTALL) --compile-bytecode -r requirements.lock
	$(UV_INSTALL) --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(JAXLAB) demo --workdir=runs/demo

# --durations: the slowest tests, to keep `make test` within 10 minutes on 2 cores. Files run in
# the order tests/conftest.py gives them (slow files first), not xdist's (--no-loadscope-reorder).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow" tests

bench: $(STAMP)
	$(JAXLAB) bench --out=runs/benchmark.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Newest releases within pyproject's ranges -> requirements.lock (README: Upgrading dependencies).
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet '.[test]'
	{ echo "# Exact versions \`make\` installs (pip freeze of a working .venv, CPU)."; \
	  echo "# Regenerate with \`make lock\` (README: Upgrading dependencies)."; \
	  .venv-lock/bin/python -m pip freeze --exclude-editable | grep -v -i '^jaxlab'; \
	} > requirements.lock
	rm -rf .venv-lock

clean:
	rm -rf runs .pytest_cache
