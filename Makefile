# jaxmnist: `make test`, `make train`. The first target that needs it creates .venv.
PYTHON ?= python3
VENV   := .venv
ifeq ($(NO_VENV),1)
# $(PYTHON)'s own environment instead of .venv (e.g. Colab's, whose jax drives its TPU).
PY        := $(PYTHON)
STAMP     := .installed-no-venv
DEV_STAMP := .installed-no-venv-dev
else
PY        := $(VENV)/bin/python
STAMP     := $(VENV)/.installed
DEV_STAMP := $(STAMP)
endif

# Offline MNIST: a folder with the four IDX .gz files; by default the local copy beside
# the checkout, where there is one. Unset and absent, TFDS downloads it.
JAXMNIST_DATA_DIR ?= $(wildcard ../shared/datasets/mnist)
export JAXMNIST_DATA_DIR

ARGS ?=

# The oldest versions tested: a Python whose jax is the floor (as a runtime brings its
# own), jaxmnist installed into it keeping that jax, everything else pinned to the floors;
# every test, the slow ones too.
FLOORS_VENV := .venv-floors
FLOORS      := .ci/floors.txt

.PHONY: $(if $(filter 1,$(NO_VENV)),$(STAMP) $(DEV_STAMP)) install test test-slow test-floors train train-tiny train-micro train-nano train-teacher serve train-fast train-seed backprop bench lint clean

ifeq ($(NO_VENV),1)
# Keeps the runtime's own jax, jaxlib and libtpu (jaxmnist/runtime_install.py); the test
# tools only for the targets that need them. Checked every time (an import is quick).
$(STAMP):
	$(PY) -c "import jaxmnist, flax, tensorflow_datasets" 2>/dev/null \
	  || $(PY) -m jaxmnist.runtime_install --quiet
$(DEV_STAMP):
	$(PY) -c "import jaxmnist, flax, tensorflow_datasets, pytest, xdist, ruff, nbclient" 2>/dev/null \
	  || $(PY) -m jaxmnist.runtime_install --target '.[dev]' --quiet
else
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@
endif

install: $(STAMP)

# The suite without the slow end-to-end tests (a few minutes on 2 cores; its 15 slowest
# tests are listed at the end, so that the time budget stays visible), in two worker
# processes (pytest-xdist: measured 1.34x as fast on 2 cores, most of a test being XLA's
# compilation, on one core) ...
test: $(DEV_STAMP)
	$(PY) -m pytest -m "not slow" -n 2 --durations=15

# ... and those: several processes, kill and resume, the notebook, the browser, real-data runs.
test-slow: $(DEV_STAMP)
	$(PY) -m pytest -m slow

test-floors:
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOORS_VENV)/bin/python -m pip install --quiet -c $(FLOORS) jax jaxlib
	$(FLOORS_VENV)/bin/python -m jaxmnist.runtime_install --target '.[dev]' --quiet -c $(FLOORS)
	$(FLOORS_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|chex|orbax-checkpoint|tensorflow-datasets|numpy) '
	$(FLOORS_VENV)/bin/python -m pytest -m "not slow" -n 2 $(FLOORS_PYTEST_ARGS)
	$(FLOORS_VENV)/bin/python -m pytest -m slow $(FLOORS_PYTEST_ARGS)

train: $(STAMP)
	$(PY) -m jaxmnist.train --recipe default $(ARGS)

train-fast: $(STAMP)
	$(PY) -m jaxmnist.train --recipe fast $(ARGS)

train-tiny: $(STAMP)
	$(PY) -m jaxmnist.train --recipe tiny $(ARGS)

train-micro: $(STAMP)
	$(PY) -m jaxmnist.train --recipe micro $(ARGS)

train-nano: $(STAMP)
	$(PY) -m jaxmnist.train --recipe nano $(ARGS)

# The teacher the small recipes distil from (the committed one is experiments/results/teacher).
train-teacher: $(STAMP)
	$(PY) -m jaxmnist.train --recipe teacher $(ARGS)

train-seed: $(STAMP)
	$(PY) -m jaxmnist.train --recipe seed $(ARGS)

# Part A's study into runs/backprop/; OUT=experiments/results/backprop refreshes the committed one.
backprop: $(STAMP)
	$(PY) -m jaxmnist.backprop --lrs 0.1,0.2,0.5,0.8,1,2 --out $(or $(OUT),runs/backprop)

# Draw a digit for a trained run: RUN=runs/default make serve (default: the committed run).
RUN ?= experiments/results/default
serve: $(STAMP)
	$(PY) -m jaxmnist.serve --run $(RUN) $(ARGS)

# Appends to runs/bench.jsonl; OUT=experiments/results/studies/bench.jsonl records a committed figure.
bench: $(STAMP)
	$(PY) -m jaxmnist.bench --out $(or $(OUT),runs/bench.jsonl) $(ARGS)

lint: $(DEV_STAMP)
	$(PY) -m ruff check jaxmnist tests experiments

clean:
	rm -rf $(VENV) $(FLOORS_VENV) build *.egg-info .pytest_cache .ruff_cache
