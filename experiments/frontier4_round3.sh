#!/usr/bin/env bash
# Frontier 4, round 3 (issue 43): `nano` with no head layer (`--head none`: the last
# block's 10 channels, averaged, are the logits), so that the 140 parameters of its
# 14 -> 10 head go to depth: separable blocks of 10 channels, one of them shared. On the
# validation split. And two more seeds of `micro` with a leaky ReLU (round micro-4's
# one seed was 0.16 points over `micro`'s). --tta 8 records the single pass and 4 and 8
# shifts from one evaluation. No checkpoints are committed.
#
#   bash experiments/frontier4_round3.sh [DATA_DIR]     (two queues, one run each at a time)
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
  run nano-9 c4-dc10x3 --recipe nano --head none --arch "c4 p dc10 dc10 p dc10x3"
  run nano-9 c4-dc10x3-seed1 --recipe nano --head none --arch "c4 p dc10 dc10 p dc10x3" --seed 1
  run micro-4 leaky-seed1 --recipe micro --activation leaky_relu --seed 1
}
queue_b() {
  run nano-9 c6-dc10x2-dc10x3 --recipe nano --head none --arch "c6 p dc10 dc10x2 p dc10x3"
  run nano-9 c6-dc10x2-dc10x3-seed1 --recipe nano --head none \
    --arch "c6 p dc10 dc10x2 p dc10x3" --seed 1
  run micro-4 leaky-seed2 --recipe micro --activation leaky_relu --seed 2
}
queue_a > /tmp/frontier4-r3a.log 2>&1 &
queue_b > /tmp/frontier4-r3b.log 2>&1 &
wait
