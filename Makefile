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

.PHONY: install test train train-fast train-seed backprop bench compare lint clean

ifeq ($(NO_VENV),1)
$(STAMP):
	$(PYTHON) -c "import jaxmnist" 2>/dev/null || $(PYTHON) -m pip install --quiet -e .
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

train: $(STAMP)
	$(BIN)/python -m jaxmnist.train --recipe default $(ARGS)

train-fast: $(STAMP)
	$(BIN)/python -m jaxmnist.train --recipe fast $(ARGS)

train-seed: $(STAMP)
	$(BIN)/python -m jaxmnist.train --recipe seed $(ARGS)

backprop: $(STAMP)
	$(BIN)/python -m jaxmnist.backprop --lrs 0.1,0.2,0.5,0.8,1,2 --out experiments/results/backprop \
	| tee experiments/results/backprop/final_error.txt

bench: $(STAMP)
	$(BIN)/python -m jaxmnist.bench $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check jaxmnist tests experiments

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
