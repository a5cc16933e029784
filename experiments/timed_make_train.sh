#!/usr/bin/env bash
# `make train` (the default recipe, 20 epochs), or another make target such as
# `train-fast`, timed end to end on an otherwise idle machine:
#   bash experiments/timed_make_train.sh [TARGET]
# Writes experiments/results/<recipe>/ (the run, replacing the committed one) and
# experiments/results/studies/timing/make_<TARGET>.log (the run's output and the wall time of
# the whole command, TFDS preparation included).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-train}
case $target in
  train) recipe=default ;;
  train-*) recipe=${target#train-} ;;
  *) echo "$0: not a training target: $target" >&2; exit 2 ;;
esac
out=experiments/results
mkdir -p "$out/studies/timing"
rm -rf "${out:?}/$recipe"
{
  echo "\$ make $target ARGS=\"--out $out --no-progress\"  ($(date -u +%FT%TZ), $(nproc) cores)"
  SECONDS=0
  make --no-print-directory "$target" ARGS="--out $out --no-progress" 2>&1
  echo "make $target wall time: ${SECONDS} s"
} | tee "$out/studies/timing/make_$target.log"
