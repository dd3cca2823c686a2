# Two commands do all the set-up: `make demo` and `make test` create and fill .venv when needed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
WHEEL_CACHE ?= $(HOME)/.cache/hubmap-ftu/wheels
MMCV_VERSION ?= 2.1.0
DEMO_DIR ?= demo
PYTEST_ARGS ?=
# torch's OpenMP threads busy-wait by default: on a loaded 2-core machine one training step
# runs 10-18x slower (benchmarks/train_fastai.py). Passive waiting costs little on free cores.
export OMP_WAIT_POLICY ?= PASSIVE
# albumentations checks PyPI for a newer release on import: never at run time here.
export NO_ALBUMENTATIONS_UPDATE ?= 1

.PHONY: venv demo test test-fast lint bench rehearse clean-demo

# The stamp depends on requirements.txt: a filled venv is not reinstalled, a changed pin is.
$(VENV)/.installed: requirements.txt tools/build_mmcv_wheel.sh
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	MMCV_VERSION=$(MMCV_VERSION) bash tools/build_mmcv_wheel.sh $(PY) $(WHEEL_CACHE)
	$(PY) -m pip install --no-deps $(WHEEL_CACHE)/mmcv-$(MMCV_VERSION)-*.whl
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

demo: venv
	bash tools/demo.sh $(PY) $(DEMO_DIR)

test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit loop: every test but the `slow` ones (those that train a model or run a pipeline end to end).
test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .

# every GPU recipe of both trainers on CPU through train, validation, export, predict and the kernel, on demo data at
# the competition's scale (3-10 minutes a config on 2 cores; as measured in docs/benchmarks.md:
# REHEARSE_ARGS="--whole-image-tiles --grad-checkpointing --max-memory-gib 18"). make test runs its --ci form.
REHEARSE_ARGS ?=
rehearse: venv
	nice -n 10 $(PY) -m benchmarks.rehearse $(REHEARSE_ARGS)

clean-demo:
	rm -rf $(DEMO_DIR)
