#!/usr/bin/env bash
# `make train` (the default recipe, 20 epochs) timed end to end on an otherwise idle
# machine: bash experiments/timed_make_train.sh
# Writes experiments/results/default/ (the run, replacing the committed one) and
# experiments/results/timing/make_train.log (the run's output and the wall time of the
# whole command, TFDS preparation included).
set -euo pipefail
cd "$(dirname "$0")/.."
out=experiments/results
mkdir -p "$out/timing"
rm -rf "$out/default"
{
  echo "\$ make train ARGS=\"--out $out --no-progress\"  ($(date -u +%FT%TZ), $(nproc) cores)"
  SECONDS=0
  make --no-print-directory train ARGS="--out $out --no-progress" 2>&1
  echo "make train wall time: ${SECONDS} s"
} | tee "$out/timing/make_train.log"
