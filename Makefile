# UPS: every target installs what it needs itself (idempotent), starting from Python 3.11 + pip.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.ups-installed
BUDGET ?=
PYTEST_ARGS ?=

.PHONY: install demo test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first (the local CPU build of 2.13.0), then the package with the extras tests need (wandb: the
# offline W&B test; it does not depend on torch, so it cannot pull in another one).
$(STAMP): $(PY) pyproject.toml Makefile
	$(PIP) install "torch==2.13.0"
	$(PIP) install -e ".[dev,baselines,wandb]"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/ups demo

test: install
	OMP_NUM_THREADS=2 $(PY) -m pytest $(PYTEST_ARGS)

bench: install
	OMP_NUM_THREADS=2 $(PY) benchmarks/run_all.py $(if $(BUDGET),--budget $(BUDGET),)
	$(PY) benchmarks/summarize.py --readme README.md

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
