# Targets the README and CI use. Everything runs from a local virtual environment (.venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint typecheck clean upgrade pins

# Installs are pinned: every distribution comes at the version deploy/constraints.txt names (the
# same pins the cluster nodes and the container image use), so a new upstream release changes
# nothing here until `make upgrade` moves the pins on purpose.
CONSTRAINTS := deploy/constraints.txt
PIP_INSTALL := -m pip install --quiet -c $(CONSTRAINTS)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP_INSTALL) --upgrade pip
	$(PY) $(PIP_INSTALL) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default (local Ray, SQLite, a local folder; untrained weights
# unless imported): start the service, analyse a real video through it, keep serving the UI.
DEMO_MEDIA ?= ../shared/data/videos/liveportrait_d0.mp4
demo: install
	bash scripts/demo.sh $(DEMO_MEDIA)

# Fast suite (everything not marked slow); starts the services the tests use. Lint first: a
# new upward import between the layers fails here with the offending line.
test: install lint
	bash scripts/ensure-services.sh
	bash scripts/ensure-browser.sh
	$(PY) -m pytest

# Everything, including the full-size ensemble.
test-all: install
	bash scripts/ensure-services.sh
	bash scripts/ensure-browser.sh
	$(PY) -m pytest -m 'slow or not slow'

# Style, formatting and the layers (import-linter contracts in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Write the pins from what .venv holds now (after adding a dependency to pyproject.toml and
# `make install`, which installs a new package at its newest release and pins nothing new).
pins: install
	{ sed '/^# ----/q' $(CONSTRAINTS); $(PY) -m pip freeze --all --exclude-editable; } \
	  > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

# Move every pin to the newest release, on purpose: resolve the newest releases in a scratch
# venv, write deploy/constraints.txt from it, rebuild .venv on the new pins and run the suite.
# Review the diff of deploy/constraints.txt before committing it.
UPGRADE_VENV := .venv-upgrade
upgrade:
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	$(UPGRADE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(UPGRADE_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	{ sed '/^# ----/q' $(CONSTRAINTS); \
	  $(UPGRADE_VENV)/bin/python -m pip freeze --all --exclude-editable; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
	rm -rf $(UPGRADE_VENV) $(VENV)
	$(MAKE) test
