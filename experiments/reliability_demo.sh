#!/usr/bin/env bash
# Real output for docs/reliability.md (resume, predict, errors, as a user sees them):
#   bash experiments/reliability_demo.sh > experiments/results/studies/reliability_demo.txt 2>&1
# Needs a trained run in experiments/results/default and MNIST (JAXMNIST_DATA_DIR or TFDS).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
show() { echo "\$ $*"; "$@"; echo "[exit code $?]"; echo; }

show $PY -m jaxmnist.predict --run experiments/results/default experiments/digits/*.png
echo "not a picture" > "$tmp/notes.png"
show $PY -m jaxmnist.predict --run experiments/results/default "$tmp/notes.png" \
  experiments/digits/mnist-test-33-label7-light-on-dark.png

echo "\$ $PY -m jaxmnist.train --epochs 2 --max-steps 40 --no-progress --out \$tmp --name demo   # Ctrl-C during epoch 2"
set -m  # job control, so that the background run receives Ctrl-C's SIGINT
$PY -m jaxmnist.train --epochs 2 --max-steps 40 --no-progress --out "$tmp" --name demo &
pid=$!
set +m
until [ -s "$tmp/demo/metrics.jsonl" ]; do sleep 0.1; done
kill -INT $pid; wait $pid; echo "[exit code $?]"; echo
show $PY -m jaxmnist.train --epochs 2 --max-steps 40 --no-progress --out "$tmp" --name demo --resume
show $PY -m jaxmnist.train --epochs 3 --max-steps 40 --no-progress --out "$tmp" --name demo
show $PY -m jaxmnist.train --lr 100 --schedule constant --epochs 1 --max-steps 100 --no-progress --out "$tmp" --name diverge
show $PY -m jaxmnist.train --epochs -3
show $PY -m jaxmnist.train --batch-size 100000 --out "$tmp"
show $PY -m jaxmnist.backprop --lrs 0.1,abc
show $PY -m jaxmnist.bench --steps 0
