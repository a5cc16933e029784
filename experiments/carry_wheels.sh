#!/usr/bin/env bash
# Gathers what experiments/accelerator_check.sh needs on a machine that has JAX with a GPU
# or TPU backend but no network: wheels of the packages such an image lacks (TFDS and
# the parts of its dependencies that the array_record path imports; not TensorFlow, not
# pyarrow) and the four MNIST IDX files, into experiments/carry/ (git-ignored; it prints
# its size). Run it here, where the package index is reachable, then carry that folder.
#
#   bash experiments/carry_wheels.sh [PYTHON_VERSION, default 3.12] [MNIST_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
mnist=${2:-${JAXMNIST_DATA_DIR:-../shared/datasets/mnist}}
carry=experiments/carry
rm -rf "$carry"
mkdir -p "$carry/wheels" "$carry/mnist"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$carry/wheels" \
  tensorflow-datasets importlib_resources array_record dm-tree immutabledict simple-parsing \
  docstring_parser tensorflow-metadata googleapis-common-protos termcolor toml
# promise is published only as a source archive: build its (pure Python) wheel here.
python3 -m pip wheel --quiet --no-deps -w "$carry/wheels" promise
cp "$mnist"/*-ubyte.gz "$carry/mnist/"
du -sh "$carry"
ls "$carry/wheels"
