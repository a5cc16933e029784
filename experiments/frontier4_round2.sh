#!/usr/bin/env bash
# Frontier 4, round 2 (issue 43): the small nets with a leaky ReLU (slope 0.01) or a
# PReLU (one learned slope a block, +1 param each) in the ReLU's place, on the
# validation split; --tta 8 records the single pass and 4 and 8 shifts from one
# evaluation. No checkpoints are committed.
#
#   bash experiments/frontier4_round2.sh [DATA_DIR]     (two queues, one run each at a time)
set -u
cd "$(dirname "$0")/.."
DATA=${1:-${JAXMNIST_DATA_DIR:-../shared/datasets/mnist}}
SEL=experiments/results/selection
run() {  # ROUND NAME FLAGS...
  local round=$1 name=$2; shift 2
  .venv/bin/python -m jaxmnist.train --validation 5000 --data-dir "$DATA" --no-progress \
    --out "$SEL/$round" --name "$name" --tta 8 "$@" || echo "FAILED $round/$name" >&2
}
queue_a() {
  run tiny-12 prelu --recipe tiny --activation prelu
  run tiny-12 prelu-seed1 --recipe tiny --activation prelu --seed 1
  run micro-4 prelu --recipe micro --activation prelu
  run micro-4 prelu-seed1 --recipe micro --activation prelu --seed 1
  run nano-8 leaky --recipe nano --activation leaky_relu
}
queue_b() {
  run tiny-12 leaky --recipe tiny --activation leaky_relu
  run tiny-12 leaky-seed1 --recipe tiny --activation leaky_relu --seed 1
  run micro-4 leaky --recipe micro --activation leaky_relu
  run nano-8 leaky-seed1 --recipe nano --activation leaky_relu --seed 1
}
queue_a > /tmp/frontier4-r2a.log 2>&1 &
queue_b > /tmp/frontier4-r2b.log 2>&1 &
wait
