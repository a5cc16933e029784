# jaxmnist: `make test`, `make train`. The first target that needs it creates .venv.
PYTHON ?= python3
VENV   := .venv
ifeq ($(NO_VENV),1)
# Use $(PYTHON)'s own environment instead of .venv (e.g. Colab's, whose jax drives its TPU).
BIN    := $(patsubst %/,%,$(dir $(PYTHON)))
STAMP  := .installed-no-venv
else
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
endif

# Offline MNIST: a folder with the four IDX .gz files. Unset and absent, TFDS downloads it.
JAXMNIST_DATA_DIR ?= $(wildcard ../shared/datasets/mnist)
export JAXMNIST_DATA_DIR

ARGS ?=

# The oldest versions tested: a Python whose jax is the floor (as a runtime brings its
# own), jaxmnist installed into it keeping that jax, everything else pinned to the floors.
FLOORS_VENV := .venv-floors
FLOORS      := .ci/floors.txt

.PHONY: install test test-floors train train-tiny serve train-fast train-seed backprop bench compare lint clean

ifeq ($(NO_VENV),1)
# Keeps the runtime's own jax, jaxlib and libtpu (jaxmnist/runtime_install.py).
$(STAMP):
	$(PYTHON) -c "import flax, tensorflow_datasets" 2>/dev/null \
	  || $(PYTHON) -m jaxmnist.runtime_install --quiet
else
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@
endif

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

test-floors:
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOORS_VENV)/bin/python -m pip install --quiet -c $(FLOORS) jax jaxlib
	$(FLOORS_VENV)/bin/python -m jaxmnist.runtime_install --target '.[dev]' --quiet -c $(FLOORS)
	$(FLOORS_VENV)/bin/python -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|flax|optax|chex|orbax-checkpoint|tensorflow-datasets|numpy) '
	$(FLOORS_VENV)/bin/python -m pytest $(FLOORS_PYTEST_ARGS)

train: $(STAMP)
	$(BIN)/python -m jaxmnist.train --recipe default $(ARGS)

train-fast: $(STAMP)
	$(BIN)/python -m jaxmnist.train --recipe fast $(ARGS)

train-tiny: $(STAMP)
	$(BIN)/python -m jaxmnist.train --recipe tiny $(ARGS)

train-seed: $(STAMP)
	$(BIN)/python -m jaxmnist.train --recipe seed $(ARGS)

# Part A's study into runs/backprop/; OUT=experiments/results/backprop refreshes the committed one.
backprop: $(STAMP)
	$(BIN)/python -m jaxmnist.backprop --lrs 0.1,0.2,0.5,0.8,1,2 --out $(or $(OUT),runs/backprop)

# Draw a digit for a trained run: RUN=runs/default make serve (default: the committed run).
RUN ?= experiments/results/default
serve: $(STAMP)
	$(BIN)/python -m jaxmnist.serve --run $(RUN) $(ARGS)

bench: $(STAMP)
	$(BIN)/python -m jaxmnist.bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check jaxmnist tests experiments

clean:
	rm -rf $(VENV) $(FLOORS_VENV) build *.egg-info .pytest_cache .ruff_cache
