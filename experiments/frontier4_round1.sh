#!/usr/bin/env bash
# Frontier 4, round 1 (issue 43): test-time augmentation on every small recipe, and
# `fast` with one epoch fewer or airbench's label smoothing, all on the validation split
# (the last 5,000 training images). Each run with --tta 8 records the accuracy of 0, 4
# and 8 shifts from the same evaluation (metrics.jsonl: val_accuracy_by_shifts), so one
# run measures the single pass and both counts of shifts. No checkpoints are committed.
#
#   bash experiments/frontier4_round1.sh [DATA_DIR]     (two queues, one run each at a time)
set -u
cd "$(dirname "$0")/.."
DATA=${1:-${JAXMNIST_DATA_DIR:-../shared/datasets/mnist}}
SEL=experiments/results/selection
run() {  # ROUND NAME FLAGS...
  local round=$1 name=$2; shift 2
  .venv/bin/python -m jaxmnist.train --validation 5000 --data-dir "$DATA" --no-progress \
    --out "$SEL/$round" --name "$name" "$@" || echo "FAILED $round/$name" >&2
}
queue_a() {
  run fast-14 tta8 --recipe fast --tta 8
  run fast-14 tta8-seed1 --recipe fast --tta 8 --seed 1
  run fast-14 tta8-seed2 --recipe fast --tta 8 --seed 2
  run fast-14 ls0.2-tta8 --recipe fast --tta 8 --label-smoothing 0.2
  run tiny-11 tta8 --recipe tiny --tta 8
  run tiny-11 tta8-seed2 --recipe tiny --tta 8 --seed 2
  run micro-3 tta8-seed1 --recipe micro --tta 8 --seed 1
  run nano-7 tta8-seed1 --recipe nano --tta 8 --seed 1
}
queue_b() {
  run fast-14 e3-tta8 --recipe fast --epochs 3 --tta 8
  run fast-14 e3-tta8-seed1 --recipe fast --epochs 3 --tta 8 --seed 1
  run fast-14 e3-tta8-seed2 --recipe fast --epochs 3 --tta 8 --seed 2
  run fast-14 ls0.2-tta8-seed1 --recipe fast --tta 8 --label-smoothing 0.2 --seed 1
  run tiny-11 tta8-seed1 --recipe tiny --tta 8 --seed 1
  run micro-3 tta8 --recipe micro --tta 8
  run nano-7 tta8 --recipe nano --tta 8
}
queue_a > /tmp/frontier4-a.log 2>&1 &
queue_b > /tmp/frontier4-b.log 2>&1 &
wait
