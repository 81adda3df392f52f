# The verbs a person uses. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint bench docs clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing the appliance and its development tools into $(VENV)"
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: start the appliance in dev mode (mock pins, terminal LED, data in .dev-data/); Ctrl-C stops it
run: $(STAMP)
	$(PY) -m appliance run --dev

## test: the whole test suite (no hardware, no internet)
test: $(STAMP)
	$(PY) -m pytest -q

## lint: ruff and mypy --strict
lint: $(STAMP)
	$(VENV)/bin/ruff check appliance provisioning tests bench
	$(VENV)/bin/ruff format --check appliance provisioning tests bench
	$(VENV)/bin/mypy

## bench: speed and memory benchmarks, as ratios against a baseline measured in the same run
bench: $(STAMP)
	$(PY) -m bench

## docs: regenerate docs/reference/config.md from the config models
docs: $(STAMP)
	$(PY) -m appliance.config_reference > docs/reference/config.md

clean:
	rm -rf $(VENV) .dev-data build .pytest_cache .mypy_cache .ruff_cache
