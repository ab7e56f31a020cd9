# Targets the README and CI use. Everything runs from a local virtual environment (.venv).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default (local Ray, SQLite, a local folder; untrained weights
# unless imported): start the service, analyse a real video through it, keep serving the UI.
DEMO_MEDIA ?= ../shared/data/videos/liveportrait_d0.mp4
demo: install
	bash scripts/demo.sh $(DEMO_MEDIA)

# Fast suite (everything not marked slow); starts the services the tests use.
test: install
	bash scripts/ensure-services.sh
	bash scripts/ensure-browser.sh
	$(PY) -m pytest

# Everything, including the full-size ensemble.
test-all: install
	bash scripts/ensure-services.sh
	bash scripts/ensure-browser.sh
	$(PY) -m pytest -m 'slow or not slow'

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
